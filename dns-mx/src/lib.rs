//! # dns-mx
//!
//! Where to deliver mail for a domain: MX lookup in preference order with random order
//! among equal preferences (RFC 5321 §5.1), implicit MX (no MX: the domain's own
//! addresses), null MX (RFC 7505: the domain accepts no mail), address literals
//! (`user@[192.0.2.1]`), and a limit on the hosts tried. Built on hickory-resolver,
//! whose cache honours TTLs.
//!
//! ```text
//!  route("example.test") ─▶ MX lookup ─▶ plan(): null MX? us? order, shuffle, limit
//!                                     └▶ no MX: implicit MX (the domain's A/AAAA)
//!                        ─▶ A/AAAA per host ─▶ Vec<MxHost> (hosts in order, addresses)
//! ```
//!
//! For DANE (RFC 7672), [`DaneResolver`] asks a validating resolver on loopback for
//! the MX and TLSA records with their DNSSEC status ([`Security`]), and says when TLS
//! must be authenticated by TLSA records, when to fall back, and when to defer.
//!
//! Errors say what to do: [`RouteError::is_permanent`] (null MX `556 5.1.10`, no such
//! domain `5.1.2`, mail loop `5.4.6`) bounces at once; anything else (SERVFAIL,
//! timeouts) is temporary and the queue retries.
//!
//! ```no_run
//! # async fn example() -> Result<(), dns_mx::RouteError> {
//! use dns_mx::{MxConfig, MxResolver};
//! let resolver = MxResolver::new(MxConfig::default())?;
//! for host in resolver.route("example.test").await? {
//!     println!("{} (preference {}): {:?}", host.name, host.preference, host.addresses);
//! }
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]

mod dnssec;
mod plan;
mod resolver;
mod stats;
#[cfg(feature = "test-server")]
pub mod testing;

pub use dnssec::{DaneConfig, DaneResolver, Security, TlsaRecord};
pub use plan::{Exchange, plan};
pub use resolver::{MxConfig, MxHost, MxResolver, RouteError};
pub use stats::{LookupStats, Outcome, Query};
