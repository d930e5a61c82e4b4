//! Server settings. Every limit has a safe default; `mta-bin` fills these from the
//! configuration file.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use smtp_proto::{BareLineEndings, Extensions, Mechanism, NulBytes};

/// What a listener is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ListenerMode {
    /// Port 25 semantics: mail for local domains from anyone; relaying only for
    /// authenticated users and trusted networks. STARTTLS and (after TLS) AUTH offered.
    Relay,
    /// Port 587 (RFC 6409): AUTH required before MAIL, offered only after STARTTLS.
    Submission,
    /// Port 465 (RFC 8314): TLS from the first byte, then as submission.
    Smtps,
}

impl ListenerMode {
    /// The name used in configuration files and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Relay => "relay",
            Self::Submission => "submission",
            Self::Smtps => "smtps",
        }
    }
}

impl std::str::FromStr for ListenerMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "relay" => Ok(Self::Relay),
            "submission" => Ok(Self::Submission),
            "smtps" => Ok(Self::Smtps),
            other => Err(format!(
                "unknown listener mode {other:?} (relay, submission or smtps)"
            )),
        }
    }
}

/// One listening socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenerConfig {
    /// Where to listen.
    pub address: SocketAddr,
    /// What for.
    pub mode: ListenerMode,
}

/// Limits on what a client may do. Defaults follow RFC 5321 and common practice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest message, advertised with SIZE; `552 5.3.4` beyond. Default 50 MiB.
    pub max_message_size: u64,
    /// A message is held in memory up to this size while it arrives; beyond, its
    /// content goes to [`ServerConfig::spill`] (a file) as it comes. Default 1 MiB.
    pub max_message_memory: u64,
    /// The memory all sessions together may hold for message content. Beyond it,
    /// content goes to the spill directory at once; with none, the message is refused
    /// with `452 4.3.1` (the client tries again later). Default 256 MiB.
    pub max_total_message_memory: u64,
    /// Recipients per message; `452 4.5.3` beyond. Default 100.
    pub max_recipients: usize,
    /// Longest command line (CRLF included); `500 5.5.2` beyond. Default 2048.
    pub max_line_length: usize,
    /// Protocol errors before `421 4.7.0` and close. Default 20.
    pub max_errors: u32,
    /// Failed logins before `421 4.7.0` and close. Default 3.
    pub max_auth_failures: u32,
    /// Time for a whole command, from the end of the previous one (RFC 5321
    /// §4.5.3.2.7: at least 5 minutes); a command that trickles in byte by byte gets no
    /// more. Default 5 min.
    pub command_timeout: Duration,
    /// Time for message content (RFC 5321 §4.5.3.2.5-6: 3 minutes per block, 10 for
    /// the end), earned back by every byte at `min_data_rate`. Default 10 min.
    pub data_timeout: Duration,
    /// The slowest content transfer kept up for long, in bytes per second (Postfix's
    /// `smtpd_min_data_rate`); 0: no floor, only `data_timeout` between reads. Default
    /// 500.
    pub min_data_rate: u64,
    /// Time a TLS handshake may take. Default 10 s.
    pub tls_handshake_timeout: Duration,
    /// Connections at once, over all listeners; the next gets `421 4.7.0`. Default
    /// 1000: far more than two cores can keep busy, with room for a burst (see
    /// `docs/configuration.md`).
    pub max_connections: usize,
    /// Connections at once from one IP address. Default 20, what Postfix opens at most
    /// to one destination.
    pub max_connections_per_ip: usize,
    /// Connections the kernel may queue before we accept them (`listen(2)` backlog,
    /// capped by `net.core.somaxconn`). Default 1024.
    pub listen_backlog: u32,
    /// Delay before answering a failed login, to slow down guessing. Default 1 s.
    pub auth_failure_delay: Duration,
    /// How long a shutdown waits for transactions in flight. Default 30 s.
    pub shutdown_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message_size: 50 * 1024 * 1024,
            max_message_memory: 1024 * 1024,
            max_total_message_memory: 256 * 1024 * 1024,
            max_recipients: 100,
            max_line_length: 2048,
            max_errors: 20,
            max_auth_failures: 3,
            command_timeout: Duration::from_secs(300),
            data_timeout: Duration::from_secs(600),
            min_data_rate: 500,
            tls_handshake_timeout: Duration::from_secs(10),
            max_connections: 1000,
            max_connections_per_ip: 20,
            listen_backlog: 1024,
            auth_failure_delay: Duration::from_secs(1),
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

/// The server's configuration.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Our name: greeting, EHLO reply, `Received:` headers.
    pub hostname: String,
    /// The listeners.
    pub listeners: Vec<ListenerConfig>,
    /// The certificate for STARTTLS and implicit TLS; without it, no STARTTLS is
    /// offered (and so no AUTH) and smtps listeners cannot start.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Limits.
    pub limits: Limits,
    /// Refuse or normalise bare CR/LF in DATA and BDAT content (default: refuse,
    /// `550 5.6.11`).
    pub bare_line_endings: BareLineEndings,
    /// Refuse or remove NUL bytes in DATA and BDAT content (default: refuse,
    /// `550 5.6.0`).
    pub nul_bytes: NulBytes,
    /// Whether logins are possible at all (some account backend is configured): AUTH
    /// PLAIN and LOGIN are then advertised after TLS.
    pub auth: bool,
    /// Where the content of messages larger than `max_message_memory` goes as it
    /// arrives (default none: such messages are held in memory while the server-wide
    /// budget lasts).
    pub spill: Option<crate::SpillConfig>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            hostname: "localhost".into(),
            listeners: Vec::new(),
            tls: None,
            limits: Limits::default(),
            bare_line_endings: BareLineEndings::Reject,
            nul_bytes: NulBytes::Reject,
            auth: false,
            spill: None,
        }
    }
}

impl ServerConfig {
    /// The protocol-core configuration of a listener.
    pub(crate) fn session_config(&self, mode: ListenerMode) -> smtp_proto::ServerConfig {
        let l = &self.limits;
        let auth = if self.auth {
            vec![Mechanism::Plain, Mechanism::Login]
        } else {
            Vec::new()
        };
        smtp_proto::ServerConfig {
            hostname: self.hostname.clone(),
            lmtp: false,
            max_line_length: l.max_line_length,
            max_message_size: l.max_message_size,
            max_recipients: l.max_recipients,
            max_errors: l.max_errors,
            max_auth_failures: l.max_auth_failures,
            bare_line_endings: self.bare_line_endings,
            nul_bytes: self.nul_bytes,
            require_auth: matches!(mode, ListenerMode::Submission | ListenerMode::Smtps),
            allow_plaintext_auth: false,
            extensions: Extensions {
                starttls: self.tls.is_some() && mode != ListenerMode::Smtps,
                auth,
                ..Extensions::default()
            },
            ..smtp_proto::ServerConfig::default()
        }
    }
}
