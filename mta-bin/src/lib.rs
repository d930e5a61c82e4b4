//! The composition behind the `mta` binary: the configuration file and its embedded
//! default, and the wiring of `smtp-server`, `mail-queue` and local delivery. It is a
//! library so that tests can parse configurations and build the pieces; the binary
//! (`src/main.rs`) is the command line around it.

#![forbid(unsafe_code)]
// This crate is the program itself: it reports to its user on stdout and stderr.
#![allow(clippy::print_stdout, clippy::print_stderr)]

pub mod accounts;
pub mod config;
#[cfg(unix)]
pub mod control;
pub mod delivery;
pub mod metrics;
#[cfg(unix)]
pub mod notify;
#[cfg(unix)]
pub mod privileges;
#[cfg(unix)]
pub mod queue_cmd;
#[cfg(unix)]
pub mod send;
#[cfg(unix)]
pub mod sendmail;
pub mod serve;
pub mod tls;
