//! # smtp-proto
//!
//! The SMTP and LMTP wire protocol with no I/O: bytes in, events and bytes out. It is
//! the shared vocabulary of the `mta` workspace (the server, the client and LMTP
//! delivery all speak through it) and it is usable on its own, with any runtime or
//! none.
//!
//! ```text
//!   server side                                client side
//!   ───────────                                ───────────
//!   bytes ─▶ ServerSession ─▶ Event            Command ─▶ ClientSession ─▶ bytes
//!             │  (Command::parse,               MailTransaction    │ (Command::encode,
//!             │   DataDecoder, SASL)                               │  DataEncoder)
//!   bytes ◀───┘◀─ respond(Reply)               bytes ─▶ ReplyParser ─▶ ClientEvent
//! ```
//!
//! What it does:
//! - [`Command`]: parse and encode every command of RFC 5321 and its extensions (EHLO,
//!   HELO, LHLO, MAIL, RCPT, DATA, BDAT, RSET, VRFY, EXPN, HELP, NOOP, QUIT, STARTTLS,
//!   AUTH), with validated [`ReversePath`], [`ForwardPath`], [`Mailbox`], [`Domain`]
//!   and typed [`MailParameters`] / [`RcptParameters`].
//! - [`Reply`], [`ReplyCode`], [`EnhancedStatus`]: replies as types; [`ReplyParser`]
//!   reads them incrementally; [`Capabilities`] is the EHLO extension list.
//! - [`DataDecoder`] / [`DataEncoder`]: DATA content, dot-stuffing, and an end of data
//!   that is `<CRLF>.<CRLF>` and nothing else (no SMTP smuggling).
//! - [`ServerSession`] and [`ClientSession`]: the two state machines, fed any split of
//!   bytes.
//! - [`Error`]: every protocol error, and ([`Error::reply`]) the one place that maps
//!   them to replies.
//!
//! What it does not do: sockets, TLS, time (timeouts are the caller's: call
//! [`ServerSession::timeout`]), logging, or policy (who may relay, which user exists):
//! that is the caller's answer to each [`Event`].
//!
//! ## Example: a server session fed by hand
//!
//! ```
//! use std::sync::Arc;
//! use smtp_proto::{Event, ReplyCode, Reply, EnhancedStatus, ServerConfig, ServerSession};
//!
//! let mut session = ServerSession::new(Arc::new(ServerConfig::default()));
//! session.poll_event(); // Event::Connect
//! session.accept(); // 220 greeting
//! session.receive(b"HELO client.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<nobody@localhost>\r\n");
//! while let Some(event) = session.poll_event() {
//!     match event {
//!         Event::Rcpt { .. } => session.respond(Reply::new(
//!             ReplyCode::MAILBOX_UNAVAILABLE,
//!             EnhancedStatus::BAD_DESTINATION_MAILBOX,
//!             "No such user",
//!         )),
//!         _ => session.accept(),
//!     }
//! }
//! assert!(String::from_utf8_lossy(session.pending_output()).ends_with("550 5.1.1 No such user\r\n"));
//! ```

// One function uses `unsafe`: calling the AVX2 build of the DATA decoder's bulk check
// after run-time detection (src/data.rs). Everything else is safe code.
#![deny(unsafe_code)]

mod address;
mod client;
mod command;
mod data;
mod date;
mod ehlo;
mod error;
mod params;
mod reply;
mod server;

pub use address::{Domain, ForwardPath, HeloName, Host, MAX_DOMAIN_LEN, Mailbox, ReversePath};
pub use client::{
    ClientConfig, ClientEvent, ClientSession, MailTransaction, TransactionResult, Waiting,
};
pub use command::{Command, Mechanism, SaslData};
pub use data::{DataDecoder, DataEncoder, DataStats, Decoded};
pub use date::{asctime_date, rfc5322_date};
pub use ehlo::Capabilities;
pub use error::Error;
pub use params::{
    Body, MailParameters, Notify, OriginalRecipient, RcptParameters, Ret, xtext_decode,
    xtext_encode,
};
pub use reply::{EnhancedStatus, Reply, ReplyClass, ReplyCode, ReplyLimits, ReplyParser};
pub use server::{
    BareLineEndings, Credentials, Envelope, Event, Extensions, HeloKind, NulBytes, Password,
    Recipient, ServerConfig, ServerSession,
};

/// The README's example is compiled and run as a doc-test.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
