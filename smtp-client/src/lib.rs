//! # smtp-client
//!
//! The SMTP and LMTP client of the `mta` workspace: tokio around the sans-IO
//! [`smtp_proto::ClientSession`], which pipelines what the server allows and reports one
//! outcome per recipient.
//!
//! ```text
//!  Connection::open(stream) ─▶ hello() ─▶ send(transaction, body) ─▶ TransactionResult
//!                                                                    (a reply per recipient)
//! ```
//!
//! Errors are [`ClientError`]s that say whether a retry may help
//! ([`ClientError::is_transient`]) and carry the reply to record
//! ([`ClientError::reply`]), which is what a queue needs to choose between retrying and
//! bouncing.
//!
//! Status: connections over any stream (TCP, Unix sockets), EHLO/LHLO with HELO
//! fallback, transactions with PIPELINING and CHUNKING, LMTP. STARTTLS policies, MX
//! routing and smarthost AUTH come with the outbound delivery milestone.

#![forbid(unsafe_code)]

mod connection;
mod error;

pub use connection::{Connection, Timeouts};
pub use error::ClientError;
