//! # smtp-client
//!
//! The SMTP and LMTP client of the `mta` workspace: tokio and rustls around the sans-IO
//! client session of [`smtp-proto`](https://docs.rs/smtp-proto), with STARTTLS policies,
//! pipelining, CHUNKING and errors that say whether a failure is transient or permanent.
//!
//! Status: not built yet; it arrives with the outbound delivery work.
