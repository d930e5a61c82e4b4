//! The `mta` program as a library: the configuration file and its embedded default, the
//! wiring of `smtp-server`, `mail-queue` and delivery, and the command line ([`cli`]).
//! The binary (`src/main.rs`) is `MtaBuilder::new().main()`; a custom MTA is the same
//! with filters of its own ([`MtaBuilder::stages`], `examples/custom_mta.rs`).

#![forbid(unsafe_code)]
// This crate is the program itself: it reports to its user on stdout and stderr.
#![allow(clippy::print_stdout, clippy::print_stderr)]

pub mod accounts;
pub mod aliases;
pub mod check_dns;
pub mod cli;
pub mod config;
#[cfg(unix)]
pub mod control;
pub mod delivery;
pub mod hooks;
pub mod log_writer;
pub mod metrics;
#[cfg(unix)]
pub mod notify;
#[cfg(unix)]
pub mod privileges;
#[cfg(unix)]
pub mod queue_cmd;
pub mod quota_check;
#[cfg(unix)]
pub mod send;
#[cfg(unix)]
pub mod sendmail;
pub mod serve;
pub mod tls;
pub mod tlsrpt;
pub mod verify;

pub use serve::{Mta, MtaBuilder};
