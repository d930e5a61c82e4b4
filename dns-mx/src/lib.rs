//! # dns-mx
//!
//! Mail routing by DNS for the `mta` workspace: MX lookup in preference order with
//! random order among equal preferences (RFC 5321 section 5.1), implicit MX, null MX
//! (RFC 7505) and address literals, on hickory-resolver.
//!
//! Status: not built yet; it arrives with the outbound delivery work.

#![forbid(unsafe_code)]
