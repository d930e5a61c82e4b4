//! # smtp-server
//!
//! The SMTP server of the `mta` workspace: tokio and rustls around the sans-IO
//! [`smtp-proto`](https://docs.rs/smtp-proto) session, with one tower `Service` per SMTP
//! stage (connect, ehlo, auth, mail, rcpt, data) so that policy is written as middleware.
//!
//! Status: not built yet. The listeners, the middleware chain and the built-in policy
//! layers arrive with the inbound MTA work; see `docs/architecture.md`.
