//! `mta`: the mail transfer agent binary.
//!
//! A thin composition of the workspace crates: it reads the configuration, parses the
//! command line and wires listeners, queue and delivery together.

// A command-line program talks to its user on stdout and stderr.
#![allow(clippy::print_stdout, clippy::print_stderr)]
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use mta_bin::config::{Config, EMBEDDED_DEFAULT};
use mta_bin::serve;

/// A mail transfer agent.
#[derive(Parser, Debug)]
#[command(name = "mta", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Receive, queue and deliver mail. Without --config: the embedded default
    /// (127.0.0.1:2525 relay, 127.0.0.1:2587 submission, data in ./mta-data/).
    Serve {
        /// The configuration file (TOML).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Check a configuration file and report every problem with its key and line.
    CheckConfig {
        /// The configuration file (TOML).
        #[arg(long, short)]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve { config } => run_serve(config),
        Command::CheckConfig { config } => check_config(&config),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mta: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run_serve(path: Option<PathBuf>) -> anyhow::Result<()> {
    let config = match &path {
        Some(path) => Config::load(path)?,
        None => Config::parse(EMBEDDED_DEFAULT)?,
    };
    let _log_guard = init_logging();
    for warning in config.warnings() {
        tracing::warn!("{warning}");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(serve::serve(config))
}

fn check_config(path: &std::path::Path) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    for warning in config.warnings() {
        println!("warning: {warning}");
    }
    println!("{}: ok", path.display());
    Ok(())
}

/// Logs go to stderr through a writer thread, so a session never waits for the
/// terminal or the journal; nothing is dropped (the writer blocks when far behind).
/// Keep the returned guard: dropping it flushes what is left.
fn init_logging() -> tracing_appender::non_blocking::WorkerGuard {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .finish(std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(writer)
        .init();
    guard
}
