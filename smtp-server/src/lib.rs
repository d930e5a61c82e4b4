//! # smtp-server
//!
//! An SMTP server for tokio and rustls around the sans-IO session of
//! [`smtp_proto`], with policy written as tower middleware: one `Service` per SMTP
//! stage.
//!
//! ```text
//!  TcpListener ─▶ connection task ─▶ smtp_proto::ServerSession (protocol rules)
//!  (relay,        (TLS, timeouts,        │ events
//!   submission,    limits)               ▼
//!   smtps, lmtp)                Stages: connect → ehlo → auth → mail → rcpt → data
//!                                (tower layers: yours and the built-in filters)
//! ```
//!
//! - [`Server`] binds the listeners and runs them; [`ServerConfig`] holds every limit
//!   with a safe default.
//! - [`Stages`] is the middleware chain. A filter is a closure added with a stage's
//!   `*_filter` method ([`filter`](mod@filter) module), a type implementing [`Check`] or
//!   [`AsyncCheck`], or for the rare case a tower layer ([`from_fn`]).
//!   `docs/writing-a-filter.md` teaches it.
//! - [`filters`] holds the built-in policy, written on the same path: relay policy,
//!   local recipients, AUTH, `Received:`, the hop limit, and the hooks for milters,
//!   rspamd and policy services.
//! - An LMTP listener ([`ListenerMode::Lmtp`], RFC 2033) answers each recipient after
//!   the data; a data-stage filter refuses single recipients with
//!   [`DataRequest::refuse_recipient`].
//! - [`StreamServer`] runs sessions on any stream (an in-memory duplex in tests).
//! - At the door, before any stage: the [`proxy`] protocol behind a load balancer
//!   ([`ProxyProtocol`]), and early-talker triage with an optional greeting delay
//!   ([`EarlyTalkers`]).
//!
//! ```no_run
//! use smtp_server::{Decision, ListenerConfig, ListenerMode, Server, ServerConfig, Stages, filter};
//! use smtp_server::filters::{DomainSet, RelayPolicy, Received};
//!
//! # async fn run() -> Result<(), smtp_server::ServerError> {
//! let sink = tower::service_fn(|req: smtp_server::DataRequest| async move {
//!     println!("{} bytes from {}", req.message().len(), req.envelope.from);
//!     Ok::<_, smtp_server::BoxError>(Decision::accept())
//! });
//! let stages = Stages::new(sink)
//!     .data_layer(filter(Received::new("mx.example.test")))
//!     .relay_policy(filter(RelayPolicy::new(DomainSet::new(["example.test"]), vec![])));
//! let config = ServerConfig {
//!     hostname: "mx.example.test".into(),
//!     listeners: vec![ListenerConfig { address: "127.0.0.1:2525".parse().unwrap(), mode: ListenerMode::Relay, proxy: None }],
//!     ..ServerConfig::default()
//! };
//! Server::bind(config, stages).await?.run(std::future::pending()).await;
//! # Ok(()) }
//! ```

#![deny(unsafe_code)]

mod config;
mod connection;
mod content;
mod error;
pub mod filter;
pub mod filters;
mod from_fn;
pub mod proxy;
mod server;
mod stage;
mod stats;
mod stream;
pub mod tls;

/// The protocol core this server speaks through (addresses, replies, parameters), so
/// that one dependency is enough to write a filter. Built for tokio 1, tower 0.5 and
/// rustls 0.23.
pub use smtp_proto;
pub use smtp_proto::{EnhancedStatus, Reply, ReplyCode};

pub use config::{
    EarlyTalkers, FilterMode, Limits, ListenerConfig, ListenerMode, ProxyProtocol, ServerConfig,
};
pub use content::{Content, SpillConfig};
pub use error::ServerError;
pub use filter::{
    AsyncCheck, Check, CheckFuture, Filter, FilterAsync, FilterAsyncService, FilterFuture,
    FilterService, Flow, filter, filter_async,
};
pub use from_fn::{FromFn, FromFnLayer, Next, from_fn};
pub use server::{BoundListeners, Reloader, Server};
pub use stage::{
    AuthRequest, BoxError, ClientName, ConnectRequest, DataRequest, Decision, EhloRequest,
    MailRequest, Notes, RcptRequest, SessionInfo, StageRequest, StageService, Stages, TlsInfo,
};
pub use stats::{ModeStats, ServerStats};
pub use stream::StreamServer;

/// `docs/writing-a-filter.md`, compiled and run with the doc-tests so that it cannot
/// drift from the API.
#[cfg(doctest)]
#[doc = include_str!("../../docs/writing-a-filter.md")]
pub struct WritingAFilter;
