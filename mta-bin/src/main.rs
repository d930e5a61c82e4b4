//! `mta`: the mail transfer agent binary.
//!
//! A thin composition of the workspace crates: it reads the configuration, parses the
//! command line and wires listeners, queue and delivery together.

// A command-line program talks to its user on stdout and stderr.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("serve") => {
            eprintln!("mta serve: not yet built (the inbound MTA lands with the next milestone)");
            ExitCode::from(2)
        }
        Some("--version" | "-V") => {
            println!("mta {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("usage: mta serve [--config FILE]");
            ExitCode::from(2)
        }
    }
}
