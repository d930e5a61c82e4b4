//! # auth-checks
//!
//! Sender authentication for the `mta` workspace: SPF (RFC 7208), DKIM (RFC 6376),
//! DMARC (RFC 7489) and ARC (RFC 8617) verification, DKIM signing and
//! `Authentication-Results` (RFC 8601), built on mail-auth and offered as middleware.
//!
//! Status: not built yet; it arrives with the sender-authentication work.

#![forbid(unsafe_code)]
