//! Our SPF evaluator (RFC 7208), behind [`crate::Verifier::spf`].
//!
//! ```text
//!  TXT at <domain> ──► record.rs: select the one "v=spf1" record, parse every term
//!                          │          (any syntax error: permerror)
//!                          ▼
//!                      eval.rs: directives left to right, include/redirect recursing,
//!                          │    exp= on fail; the limits of §4.6.4 and a time bound
//!                          ▼    ├── macros.rs: %{...} expansion of domain-specs and exp text
//!                      dns.rs: TXT / A / AAAA / MX / PTR through the Verifier's
//!                              hickory resolver and its cache
//! ```
//!
//! DMARC is fed the MAIL FROM result exactly as before (mail-auth's `SpfOutput` is
//! built from our verdict in `verify.rs`).

mod dns;
mod eval;
mod macros;
mod record;

use std::time::Duration;

pub(crate) use dns::SpfDns;
pub(crate) use eval::{Request, check_host};

/// The processing limits of one SPF check (RFC 7208 §4.6.4). The defaults are the RFC's.
///
/// ```
/// use std::time::Duration;
/// use auth_checks::SpfLimits;
/// let limits = SpfLimits {
///     max_time: Duration::from_secs(10),
///     ..SpfLimits::default()
/// };
/// assert_eq!(limits.max_dns_terms, 10);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpfLimits {
    /// Most terms that query DNS (`include`, `a`, `mx`, `ptr`, `exists`, `redirect=`)
    /// in one check, includes and redirects counted together; beyond, `permerror`.
    /// Default 10 (a MUST of the RFC).
    pub max_dns_terms: usize,
    /// Most "void lookups" (NXDOMAIN or no answer) in one check; beyond, `permerror`.
    /// Default 2 (the RFC's recommendation).
    pub max_void_lookups: usize,
    /// Most MX records an `mx` mechanism may look up the addresses of; more is
    /// `permerror`. Default 10.
    pub max_mx_names: usize,
    /// Most PTR names the `ptr` mechanism and `%{p}` consider; the others are ignored.
    /// Default 10.
    pub max_ptr_names: usize,
    /// Longest one check may take; beyond, `temperror` (the RFC asks for at least 20
    /// seconds). Default 20 s. A deadline given to [`crate::Verifier::spf_until`] can
    /// end it sooner.
    pub max_time: Duration,
}

impl Default for SpfLimits {
    fn default() -> Self {
        Self {
            max_dns_terms: 10,
            max_void_lookups: 2,
            max_mx_names: 10,
            max_ptr_names: 10,
            max_time: Duration::from_secs(20),
        }
    }
}
