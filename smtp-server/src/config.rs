//! Server settings. Every limit has a safe default; `mta-bin` fills these from the
//! configuration file.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use smtp_proto::{BareLineEndings, Extensions, Mechanism, NulBytes};

use crate::filters::IpNetwork;

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
    /// LMTP (RFC 2033), for final delivery handed over by another MTA: LHLO instead of
    /// HELO/EHLO, and after the data one reply per recipient (see
    /// [`DataRequest::refuse_recipient`](crate::DataRequest::refuse_recipient)).
    /// Recipients as for relay (local domains for anyone, others only for trusted
    /// networks); STARTTLS offered when TLS is configured, never required; no AUTH.
    /// LMTP has no authentication of its own: listen on loopback or a private network.
    Lmtp,
}

impl ListenerMode {
    /// The name used in configuration files and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Relay => "relay",
            Self::Submission => "submission",
            Self::Smtps => "smtps",
            Self::Lmtp => "lmtp",
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
            "lmtp" => Ok(Self::Lmtp),
            other => Err(format!(
                "unknown listener mode {other:?} (relay, submission, smtps or lmtp)"
            )),
        }
    }
}

/// One listening socket.
///
/// ```
/// use smtp_server::{ListenerConfig, ListenerMode, ProxyProtocol};
/// // Port 25 behind HAProxy (`send-proxy` or `send-proxy-v2`) at 10.0.0.5.
/// let behind = ListenerConfig {
///     address: "0.0.0.0:25".parse().unwrap(),
///     mode: ListenerMode::Relay,
///     proxy: Some(ProxyProtocol {
///         load_balancers: vec!["10.0.0.5".parse().unwrap()],
///         ..ProxyProtocol::default()
///     }),
/// };
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenerConfig {
    /// Where to listen.
    pub address: SocketAddr,
    /// What for.
    pub mode: ListenerMode,
    /// Connections come through load balancers that send the PROXY protocol header
    /// (HAProxy's, version 1 or 2) first; `None` (the default): clients connect
    /// directly, and a PROXY header is an unknown command like any other.
    pub proxy: Option<ProxyProtocol>,
}

/// The PROXY protocol on a listener (HAProxy's `send-proxy`, `send-proxy-v2`): every
/// connection must start with a header naming the real client, sent by one of
/// `load_balancers`. The client's address then stands for the connection everywhere:
/// [`SessionInfo::peer`](crate::SessionInfo::peer) (and `local`, the address the client
/// connected to), the per-IP connection limit, the early-talker cache and the logs.
///
/// A connection from any other address, with a malformed header, or with no complete
/// header within `timeout` is closed without a greeting, logged and counted
/// (`smtp_proxy_refused_total`). A v1 `UNKNOWN` or v2 `LOCAL` header (health checks)
/// keeps the connection's own addresses. TLVs are skipped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyProtocol {
    /// The load balancers' networks (default none: every connection is refused, until
    /// they are listed).
    pub load_balancers: Vec<IpNetwork>,
    /// Time for the whole header from the moment of connection. Default 5 s.
    pub timeout: Duration,
}

impl Default for ProxyProtocol {
    fn default() -> Self {
        Self {
            load_balancers: Vec::new(),
            timeout: Duration::from_secs(5),
        }
    }
}

/// How a defence acts: not at all, by logging and counting (and marking, where it
/// fits), or by refusing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum FilterMode {
    /// Off.
    Off,
    /// Log and count what it finds; let the client go on.
    #[default]
    Tag,
    /// Refuse.
    Enforce,
}

impl FilterMode {
    /// The name used in configuration files and logs (`off`, `tag`, `enforce`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::Tag => "tag",
            Self::Enforce => "enforce",
        }
    }
}

impl std::str::FromStr for FilterMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "off" => Ok(Self::Off),
            "tag" => Ok(Self::Tag),
            "enforce" => Ok(Self::Enforce),
            other => Err(format!("unknown mode {other:?} (off, tag or enforce)")),
        }
    }
}

/// Early-talker triage (Postfix postscreen's pregreet test) and the synchronisation
/// check of RFC 2920, on the listeners of `listeners` (default: relay only; a
/// submission client is a login to come, and is not triaged).
///
/// - With a `greeting_delay`, the server waits that long before its `220` greeting (it
///   runs the connect stage meanwhile); a client that sends anything before the
///   greeting is an early talker, as spam bots are. Without one, only what has arrived
///   by the time of the greeting counts.
/// - A client that sends a command before the reply to the previous one when that is
///   not allowed (PIPELINING not offered: before EHLO, or after HELO; or after a
///   command that must end a group: EHLO, HELO, DATA, VRFY, EXPN, NOOP) breaks the
///   synchronisation. Logins are not checked.
///
/// `Enforce` answers `554 5.5.0` with a sentence and closes; `Tag` logs and counts
/// (`smtp_early_talkers_total`) and lets the client go on. The verdict is kept per
/// client address: a client that waited quietly skips the delay for `pass_ttl`; one that
/// failed is refused at once (in enforce mode) for `fail_ttl`. At most `max_cached`
/// addresses are kept (expired ones pruned first).
///
/// ```
/// use std::time::Duration;
/// use smtp_server::{EarlyTalkers, FilterMode, ServerConfig};
/// let config = ServerConfig {
///     early_talkers: EarlyTalkers {
///         mode: FilterMode::Enforce,
///         greeting_delay: Duration::from_secs(6),
///         ..EarlyTalkers::default()
///     },
///     ..ServerConfig::default()
/// };
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EarlyTalkers {
    /// Off, tag (default) or enforce.
    pub mode: FilterMode,
    /// How long to wait before the greeting. Default 0: no wait.
    pub greeting_delay: Duration,
    /// The kinds of listener triaged. Default: relay.
    pub listeners: Vec<ListenerMode>,
    /// How long a client that passed skips the delay. Default 1 day.
    pub pass_ttl: Duration,
    /// How long a client that failed is refused at once (enforce). Default 10 min.
    pub fail_ttl: Duration,
    /// Client addresses whose verdict is kept. Default 100 000.
    pub max_cached: usize,
}

impl Default for EarlyTalkers {
    fn default() -> Self {
        Self {
            mode: FilterMode::Tag,
            greeting_delay: Duration::ZERO,
            listeners: vec![ListenerMode::Relay],
            pass_ttl: Duration::from_secs(24 * 3600),
            fail_ttl: Duration::from_secs(600),
            max_cached: 100_000,
        }
    }
}

impl EarlyTalkers {
    /// Whether a listener of `mode` is triaged.
    pub fn applies_to(&self, mode: ListenerMode) -> bool {
        self.mode != FilterMode::Off && self.listeners.contains(&mode)
    }
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
    /// NOOP, RSET, VRFY, EXPN and HELP commands since the last accepted message; each
    /// one beyond counts as a protocol error (Postfix's `smtpd_junk_command_limit`).
    /// Default 100.
    pub max_junk_commands: u32,
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
    /// How long a session may last: once it is over, the next command (or the wait for
    /// one) gets `421 4.4.2` and the connection closes. Message content in progress is
    /// not cut (`data_timeout` and `min_data_rate` bound it); its reply comes first.
    /// Zero: no limit. Default 10 min (Stalwart's `session.duration`).
    pub max_session_duration: Duration,
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
            max_junk_commands: 100,
            max_auth_failures: 3,
            command_timeout: Duration::from_secs(300),
            data_timeout: Duration::from_secs(600),
            min_data_rate: 500,
            tls_handshake_timeout: Duration::from_secs(10),
            max_session_duration: Duration::from_secs(600),
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
    /// Early-talker triage and the greeting delay (default: tag mode on relay
    /// listeners, no delay).
    pub early_talkers: EarlyTalkers,
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
            early_talkers: EarlyTalkers::default(),
        }
    }
}

impl ServerConfig {
    /// The protocol-core configuration of a listener.
    pub(crate) fn session_config(&self, mode: ListenerMode) -> smtp_proto::ServerConfig {
        let l = &self.limits;
        let lmtp = mode == ListenerMode::Lmtp;
        let auth = if self.auth && !lmtp {
            vec![Mechanism::Plain, Mechanism::Login]
        } else {
            Vec::new()
        };
        smtp_proto::ServerConfig {
            hostname: self.hostname.clone(),
            lmtp,
            max_line_length: l.max_line_length,
            max_message_size: l.max_message_size,
            max_recipients: l.max_recipients,
            max_errors: l.max_errors,
            max_junk_commands: l.max_junk_commands,
            max_auth_failures: l.max_auth_failures,
            bare_line_endings: self.bare_line_endings,
            nul_bytes: self.nul_bytes,
            require_auth: matches!(mode, ListenerMode::Submission | ListenerMode::Smtps),
            allow_plaintext_auth: false,
            extensions: Extensions {
                starttls: self.tls.is_some() && mode != ListenerMode::Smtps,
                auth,
                // RFC 6710: offered to everyone; what a client asks for is honoured or
                // lowered by policy after acceptance (docs/configuration.md). No
                // priority matters in final delivery over LMTP.
                mt_priority: !lmtp,
                ..Extensions::default()
            },
            ..smtp_proto::ServerConfig::default()
        }
    }
}
