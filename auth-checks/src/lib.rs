//! # auth-checks
//!
//! Sender authentication for the `mta` workspace, built on mail-auth and offered as
//! layers of the `smtp-server` stage chain:
//!
//! - [`Verifier`]: SPF (RFC 7208, our own evaluator, limits in [`SpfLimits`]), DKIM
//!   (RFC 6376, RSA and Ed25519 per RFC 8463), DMARC
//!   (RFC 7489) and ARC (RFC 8617) against DNS, with results as plain values
//!   ([`results`]) that render as `Authentication-Results` (RFC 8601).
//! - [`AuthChecks`]: the checks as mail-stage and data-stage layers, each `off`, `tag`
//!   or `enforce` ([`Policy`]) (feature `layers`, on by default; without it the crate
//!   does not depend on `smtp-server`).
//! - [`DkimSigner`] / [`DkimSigning`]: DKIM signing of outbound mail; [`ArcSigner`]:
//!   ARC sealing of mail we forward; [`generate_key`]: new keys and their DNS records.
//! - [`bimi`]: BIMI on receipt: after a DMARC pass at an enforcing policy, the author
//!   domain's BIMI record as a `BIMI-Location` header for the mail client (the data
//!   layer does it; [`Verifier::bimi`] on its own), and forged BIMI header fields
//!   removed ([`remove_bimi_headers`]).
//! - DNS defences at the door, sharing the checks' resolver, negative cache and DNS
//!   time budget: [`dnsbl`] (blocklists and allowlists of client addresses, HELO and
//!   sender domains, scored; [`DnsblFilter`]) and [`rdns`] (forward-confirmed reverse
//!   DNS of the client; [`RdnsFilter`]), counted in [`DnsStats`].
//!
//! Repeated senders cost no DNS round trip: DNS answers are kept, parsed, until their TTL
//! ends (at most an hour, and a bounded number of them): SPF's TXT (with the parsed
//! record), A, AAAA, MX and PTR answers; DKIM keys and DMARC and ARC records, and the
//! negative answers of the DMARC tree walk; reverse DNS, whose result for a client whose
//! answers are all known is given at connect without starting a lookup. Negative answers
//! are kept for the negative TTL the zone's SOA gives, failures not at all. Verification
//! results are never cached.
//!
//! No mail-auth type appears in this API, so upgrading mail-auth stays a local change.
//!
//! ```no_run
//! # async fn example(resolver: hickory_resolver::TokioResolver, raw: &[u8]) {
//! use auth_checks::{MessageChecks, Verifier};
//! let verifier = Verifier::new(resolver, "mx.example.net");
//! let spf = verifier.spf("192.0.2.1".parse().unwrap(), "mail.example.org", "alice@example.org").await;
//! let report = verifier.check_message(raw, Some(&spf), MessageChecks::ALL).await;
//! let header = format!("Authentication-Results: {}\r\n", report.header_value("mx.example.net"));
//! # }
//! ```

#![forbid(unsafe_code)]

pub mod bimi;
mod cache;
mod dns;
pub mod dnsbl;
mod error;
#[cfg(feature = "layers")]
mod filter;
mod headers;
mod keygen;
pub mod rdns;
pub mod results;
mod sign;
mod spf;
mod stats;
pub mod verify;

pub use bimi::{BimiRecord, BimiRecordError, BimiResult, BimiVerdict, remove_bimi_headers};
pub use dnsbl::{
    DnsList, Dnsbl, DnsblVerdict, Identity, ListHit, ListKind, ListSyntaxError, ReturnCodes,
};
#[cfg(feature = "layers")]
pub use dnsbl::{DnsblFilter, DnsblSettings};
pub use error::{Cause, Error};
#[cfg(feature = "layers")]
pub use filter::{
    AuthChecks, DkimSigning, MessageFilter, Mode, Policy, QUARANTINE_HEADER, SpfFilter,
};
pub use headers::remove_our_results;
pub use keygen::{GeneratedKey, generate_key};
#[cfg(feature = "layers")]
pub use rdns::{RdnsFilter, RdnsSettings, Require};
pub use rdns::{ReverseDns, ReverseName};
pub use results::{
    ArcResult, ArcVerdict, AuthReport, AuthStats, DkimResult, DkimVerdict, DmarcPolicy,
    DmarcResult, DmarcVerdict, SpfCheck, SpfResult, SpfVerdict,
};
pub use sign::{ArcSigner, DEFAULT_SIGNED_HEADERS, DkimSigner, KeyKind};
pub use spf::SpfLimits;
pub use stats::{DnsStats, ListCounts};
pub use verify::{MessageChecks, Verifier};
