//! The `mta` command line: `serve`, `reload`, `check-config`, `queue`, `send`,
//! `sendmail`, `dkim-keygen`. The binary is [`run`] with no filters of its own; a
//! custom MTA is [`run`] with its filters ([`MtaBuilder::main`](crate::MtaBuilder::main)).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::MtaBuilder;
use crate::config::{Config, EMBEDDED_DEFAULT};
use crate::serve;

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
        /// Log lines as `text` (for people) or `json` (one object per line, for log
        /// collectors).
        #[arg(long, value_enum, default_value_t = LogFormat::Text)]
        log_format: LogFormat,
    },
    /// Make a running `mta serve` read its configuration file again (as SIGHUP does),
    /// and say whether it took it.
    #[cfg(unix)]
    Reload {
        /// The server's configuration file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Check a configuration file and report every problem with its key and line.
    CheckConfig {
        /// The configuration file (TOML).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Inspect and steer the queue (of a running server through its control socket).
    #[cfg(unix)]
    Queue(crate::queue_cmd::QueueArgs),
    /// Send a message built from the command line (text, attachments), for tests and
    /// scripts.
    #[cfg(unix)]
    Send(crate::send::SendArgs),
    /// Send a message read from standard input, as sendmail does (-t, -i, -f, -F, -bp, -bs);
    /// also what the binary does when invoked as `sendmail`.
    #[cfg(unix)]
    Sendmail {
        /// sendmail's options and the recipients.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Make a DKIM signing key: write the private key and print the DNS record to
    /// publish and the configuration to add.
    DkimKeygen {
        /// The signing domain.
        #[arg(long)]
        domain: String,
        /// The selector (the key is published at <selector>._domainkey.<domain>).
        #[arg(long)]
        selector: String,
        /// The key's algorithm.
        #[arg(long, value_enum, default_value_t = Algorithm::Rsa)]
        algorithm: Algorithm,
        /// Where to write the private key (default: <domain>.<selector>.key here).
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Check a mail domain's DNS before going live: MX, PTR, SPF, DKIM, DMARC, MTA-STS,
    /// TLS-RPT, TLSA, BIMI; one line each (ok, warn or fail, with the fix). Exit code 1
    /// when a check failed.
    CheckDns(crate::check_dns::CheckDnsArgs),
}

/// Runs the command line of `std::env::args()` (as `sendmail` or `mailq` when invoked
/// by those names), serving with the filters of `custom`.
pub fn run(custom: MtaBuilder) -> ExitCode {
    // Invoked as `sendmail` (a link to this binary) or `mailq`: behave as those.
    #[cfg(unix)]
    {
        let mut args = std::env::args();
        let name = args
            .next()
            .map(PathBuf::from)
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_default();
        match name.as_str() {
            "sendmail" => return ExitCode::from(crate::sendmail::run(args.collect(), &custom)),
            "mailq" => {
                let mut rest: Vec<String> = vec!["-bp".to_owned()];
                rest.extend(args);
                return ExitCode::from(crate::sendmail::run(rest, &custom));
            }
            _ => {}
        }
    }
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve { config, log_format } => run_serve(config, log_format, custom),
        #[cfg(unix)]
        Command::Reload { config } => reload(config),
        Command::CheckConfig { config } => check_config(&config),
        #[cfg(unix)]
        Command::Send(args) => return ExitCode::from(crate::send::run(args, &custom)),
        #[cfg(unix)]
        Command::Sendmail { args } => {
            return ExitCode::from(crate::sendmail::run(args, &custom));
        }
        #[cfg(unix)]
        Command::Queue(args) => match crate::queue_cmd::run(args) {
            Ok(true) => Ok(()),
            Ok(false) => return ExitCode::from(1),
            Err(e) => Err(e),
        },
        Command::CheckDns(args) => match crate::check_dns::run(args) {
            Ok(true) => Ok(()),
            Ok(false) => return ExitCode::from(1),
            Err(e) => Err(e),
        },
        Command::DkimKeygen {
            domain,
            selector,
            algorithm,
            output,
        } => dkim_keygen(&domain, &selector, algorithm, output),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mta: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run_serve(
    path: Option<PathBuf>,
    log_format: LogFormat,
    custom: MtaBuilder,
) -> anyhow::Result<()> {
    let config = match &path {
        Some(path) => Config::load(path)?,
        None => Config::parse(EMBEDDED_DEFAULT)?,
    };
    let _log_guard = init_logging(log_format);
    for warning in config.warnings() {
        tracing::warn!("{warning}");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(serve::serve(config, path, custom))
}

#[cfg(unix)]
fn reload(path: PathBuf) -> anyhow::Result<()> {
    use crate::control::{self, Request, Response};
    let config = Config::load(&path)?;
    let socket = control::socket_path(&config.queue.path);
    match control::request(&socket, &Request::Reload)? {
        None => anyhow::bail!(
            "no server is running on the queue {}",
            config.queue.path.display()
        ),
        Some(Response::Reloaded) => {
            println!("{}: reloaded", path.display());
            Ok(())
        }
        Some(Response::Error { message }) => anyhow::bail!("reload refused: {message}"),
        Some(other) => anyhow::bail!("unexpected answer: {other:?}"),
    }
}

/// Every problem of the file, one per line with its line number, then the warnings.
fn check_config(path: &std::path::Path) -> anyhow::Result<()> {
    use crate::config::Problems;
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    let report = |problems: &Problems| {
        for problem in problems.each() {
            eprintln!("{}: {problem}", path.display());
        }
        anyhow::anyhow!("{}: {} problem(s)", path.display(), problems.each().count())
    };
    let config = match Config::parse(&text) {
        Ok(config) => config,
        Err(e) => match e.downcast_ref::<Problems>() {
            Some(problems) => return Err(report(problems)),
            None => return Err(e.context(format!("in {}", path.display()))),
        },
    };
    config.check_files(&text).map_err(|p| report(&p))?;
    let mut warnings = config.warnings();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    warnings.extend(runtime.block_on(crate::serve::check_relay_certificate(&config)));
    for warning in warnings {
        println!("warning: {warning}");
    }
    println!("{}: ok", path.display());
    Ok(())
}

/// `mta dkim-keygen --algorithm`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Algorithm {
    /// RSA, 2048 bits: understood everywhere.
    Rsa,
    /// Ed25519 (RFC 8463): short keys, not yet checked by every receiver.
    Ed25519,
}

fn dkim_keygen(
    domain: &str,
    selector: &str,
    algorithm: Algorithm,
    output: Option<PathBuf>,
) -> anyhow::Result<()> {
    use auth_checks::KeyKind;
    let kind = match algorithm {
        Algorithm::Rsa => KeyKind::Rsa,
        Algorithm::Ed25519 => KeyKind::Ed25519,
    };
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    let valid = |s: &str| {
        !s.is_empty()
            && s.split('.').all(|l| {
                !l.is_empty()
                    && l.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            })
    };
    if !valid(&domain) || !domain.contains('.') {
        anyhow::bail!("--domain {domain:?} is not a domain name");
    }
    if !valid(selector) {
        anyhow::bail!("--selector {selector:?}: use letters, digits, '-', '_' and dots");
    }
    let path = output.unwrap_or_else(|| PathBuf::from(format!("{domain}.{selector}.key")));
    let key = auth_checks::generate_key(kind)?;
    write_private(&path, key.private_pem.as_bytes())?;
    let absolute = std::fs::canonicalize(&path).unwrap_or_else(|_| path.clone());
    println!(
        "Wrote the {} private key to {}",
        kind.algorithm(),
        absolute.display()
    );
    println!();
    println!("Publish this TXT record in DNS:");
    println!();
    println!("{}", key.zone_line(selector, &domain));
    println!();
    println!("Then add to the configuration:");
    println!();
    println!("[[dkim_key]]");
    println!("domain = \"{domain}\"");
    println!("selector = \"{selector}\"");
    println!("private_key = \"{}\"", absolute.display());
    Ok(())
}

/// Writes a new file readable by its owner only; never replaces an existing key.
fn write_private(path: &std::path::Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", path.display()))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    Ok(())
}

/// How log lines look.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// One line of text per event, with its spans (connection, queue id).
    Text,
    /// One JSON object per event: `timestamp`, `level`, `fields`, `target`, and the
    /// spans (`span`, `spans`) with their fields.
    Json,
}

/// The log filter when `RUST_LOG` is not set: `info`, but rustls only at `error`.
/// rustls warns about what clients get wrong in their TLS hello (an IP address as SNI,
/// say), once per connection; each failed handshake is logged at `info` by the server
/// anyway. `RUST_LOG=info,rustls=debug` shows them.
const DEFAULT_LOG_FILTER: &str = "info,rustls=error";

/// Logs go to stderr through a writer thread that writes them in batches (see
/// [`crate::log_writer`]), so a session never waits for the terminal or the journal,
/// nor wakes another thread per line; nothing is dropped (a session blocks when the
/// writer is far behind). Keep the returned guard: dropping it writes what is left.
fn init_logging(format: LogFormat) -> Option<crate::log_writer::LogGuard> {
    let directives = std::env::var("RUST_LOG").ok();
    let filter = log_filter(directives.as_deref());
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let Ok((writer, guard)) = crate::log_writer::start(std::io::stderr()) else {
        // No thread for it: each line is written where it happens.
        install_logging(filter, format, ansi, crate::log_writer::text::Stderr);
        return None;
    };
    install_logging(filter, format, ansi, writer);
    Some(guard)
}

/// Which events are logged: `RUST_LOG`'s directives (or [`DEFAULT_LOG_FILTER`]).
// Made once, at start: its size does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
enum LogFilter {
    /// Levels by target only (`info,rustls=error`): decided once per call site, so
    /// entering and leaving a span costs the filter nothing.
    Targets(tracing_subscriber::filter::Targets),
    /// Anything else `EnvFilter` understands (span and field directives such as
    /// `[smtp.session{peer}]=debug`), which tracks every span entered.
    Env(tracing_subscriber::EnvFilter),
}

/// Reads `RUST_LOG` (`None`: not set) as [`LogFilter::Targets`] when it is only
/// `target=level` and bare levels or targets, else as `EnvFilter` reads it (and
/// [`DEFAULT_LOG_FILTER`] when it cannot).
fn log_filter(directives: Option<&str>) -> LogFilter {
    let directives = directives.unwrap_or(DEFAULT_LOG_FILTER);
    let plain = directives.split(',').all(|d| {
        !d.is_empty()
            && d.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_:=.-".contains(&b))
    });
    if plain && let Ok(targets) = directives.parse() {
        return LogFilter::Targets(targets);
    }
    // A directive `EnvFilter` cannot read: the default, as when `RUST_LOG` is unset.
    LogFilter::Env(
        tracing_subscriber::EnvFilter::try_new(directives)
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER)),
    )
}

/// Makes the global subscriber: `format` lines through `writer`. Text without colours
/// (a file, a pipe, the journal) goes through the lean
/// [`TextLayer`](crate::log_writer::text::TextLayer); colours on a terminal and JSON
/// through `tracing_subscriber::fmt`.
fn install_logging<W>(filter: LogFilter, format: LogFormat, ansi: bool, writer: W)
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w>
        + crate::log_writer::text::LineSink
        + Send
        + Sync
        + 'static,
{
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let fmt = || tracing_subscriber::fmt::layer();
    let output: Box<dyn Layer<tracing_subscriber::Registry> + Send + Sync> = match format {
        LogFormat::Text if !ansi => Box::new(crate::log_writer::text::TextLayer::new(writer)),
        LogFormat::Text => Box::new(fmt().with_ansi(true).with_writer(writer)),
        LogFormat::Json => Box::new(
            fmt()
                .json()
                .with_current_span(true)
                .with_span_list(true)
                .with_writer(writer),
        ),
    };
    let subscriber = tracing_subscriber::registry().with(output);
    match filter {
        LogFilter::Targets(targets) => subscriber.with(targets).init(),
        LogFilter::Env(env) => subscriber.with(env).init(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Levels by target take the cheap filter; whatever else `RUST_LOG` may say, and
    /// what `Targets` would read differently (an empty directive, field lists), goes
    /// to `EnvFilter`.
    #[test]
    fn log_filters_by_target_only_are_static() {
        for plain in [
            None,
            Some("info"),
            Some("warn,mail_queue=debug"),
            Some("info,rustls=error,smtp_server::connection=trace"),
            Some("OFF"),
        ] {
            assert!(
                matches!(log_filter(plain), LogFilter::Targets(_)),
                "{plain:?}"
            );
        }
        for dynamic in [
            "",
            "info,",
            "warn,[smtp.txn]=info",
            "smtp_server[{peer}]=debug",
            "mail_queue[queue.delivery{queue_id=1}]=trace",
            "info, rustls=error",
        ] {
            assert!(
                matches!(log_filter(Some(dynamic)), LogFilter::Env(_)),
                "{dynamic:?}"
            );
        }
    }

    /// A `RUST_LOG` that cannot be read gives the default filter.
    #[test]
    fn unreadable_log_filters_give_the_default() {
        let LogFilter::Env(env) = log_filter(Some("smtp_server=loud")) else {
            panic!("static");
        };
        assert_eq!(
            env.to_string(),
            tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER).to_string()
        );
    }

    /// The default: `info`, rustls only at `error`.
    #[test]
    fn the_default_filter_quiets_rustls() {
        let LogFilter::Targets(targets) = log_filter(None) else {
            panic!("not static");
        };
        assert!(targets.would_enable("smtp_server::connection", &tracing::Level::INFO));
        assert!(!targets.would_enable("smtp_server::connection", &tracing::Level::DEBUG));
        assert!(!targets.would_enable("rustls::server", &tracing::Level::WARN));
        assert!(targets.would_enable("rustls::server", &tracing::Level::ERROR));
    }
}
