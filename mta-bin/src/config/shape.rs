//! The file's shape: one typed struct per section, deserialized once. Closed sets of
//! words are enums, durations are `Duration`s, networks `IpNetwork`s, addresses and
//! paths their own types; a value of the wrong kind is refused as the file is read,
//! with its line. `docs/configuration.md` describes every key.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use smtp_server::filters::IpNetwork;
use smtp_server::filters::policy::PolicyAddress;
use smtp_server::filters::rspamd::RspamdAddress;

use super::defaults;
use crate::delivery::{LineEndings, LmtpAddress};

/// The whole file: each field is the top-level key or section of the same name
/// (`listeners` is `[[listener]]`, `accounts` is `[[account]]`, `dkim_keys` is
/// `[[dkim_key]]`, `milters` is `[[milter]]`, `policy_services` is
/// `[[policy_service]]`). `Config::parse` reads each on its own, so that a problem in one
/// does not hide those of the others.
#[derive(Debug)]
pub struct Config {
    /// Our host name.
    pub hostname: String,
    /// The user to run as when started as root: listeners are bound first, then the
    /// server becomes this user (with its groups) before it touches the queue or a key.
    pub user: Option<String>,
    /// Where generated files go (the self-signed certificate); default: the queue
    /// directory's parent.
    pub data_dir: Option<PathBuf>,
    /// Listeners.
    pub listeners: Vec<Listener>,
    /// TLS certificate.
    pub tls: Option<Tls>,
    /// The queue.
    pub queue: Queue,
    /// Local delivery.
    pub local: Local,
    /// Logins and local mailboxes.
    pub accounts: Vec<Account>,
    /// Limits.
    pub limits: Limits,
    /// Relay policy.
    pub relay: Relay,
    /// DNS resolution.
    pub dns: Dns,
    /// Outbound delivery.
    pub outbound: Outbound,
    /// Sender authentication checks on the relay listener: `off`, `tag` or `enforce`
    /// for each of `spf`, `dkim`, `dmarc`, `arc` (all `tag` by default), and their time
    /// budget.
    pub auth_checks: auth_checks::Policy,
    /// DKIM signing keys for mail from logins and trusted networks.
    pub dkim_keys: Vec<SigningKey>,
    /// ARC sealing of mail forwarded from the relay listener to other hosts.
    pub arc_seal: Option<SigningKey>,
    /// Prometheus metrics and health checks over HTTP (off when absent).
    pub metrics: Option<Metrics>,
    /// Local submission by users other than root and the server's own user.
    pub sendmail: Sendmail,
    /// Milters (`[[milter]]`), asked in the order of the file.
    pub milters: Vec<MilterHook>,
    /// Postfix policy services (`[[policy_service]]`), asked at RCPT in the order of the
    /// file.
    pub policy_services: Vec<PolicyServiceHook>,
    /// rspamd (`[rspamd]`), asked at the end of DATA.
    pub rspamd: Option<RspamdHook>,
    /// Early-talker triage (`[early_talkers]`): postscreen's pregreet test.
    pub early_talkers: EarlyTalkers,
    /// HELO checks (`[helo_checks]`).
    pub helo_checks: HeloChecks,
}

/// `[[listener]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    /// `address = "127.0.0.1:2525"`
    pub address: SocketAddr,
    /// What it is for.
    pub mode: ListenerMode,
    /// Connections come through load balancers that send the PROXY protocol header
    /// (`proxy_protocol = { load_balancers = ["10.0.0.5/32"], timeout = "5s" }`); absent:
    /// clients connect directly.
    #[serde(default)]
    pub proxy_protocol: Option<ProxyProtocol>,
}

/// `[[listener]] proxy_protocol`: HAProxy's PROXY protocol (v1 or v2) in front of the
/// listener, as Postfix's `smtpd_upstream_proxy_protocol`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyProtocol {
    /// The networks of the load balancers allowed to connect (and to name the client);
    /// every other connection is closed without a greeting. An empty list is refused by
    /// the checks (it would refuse every connection).
    #[serde(default, deserialize_with = "networks")]
    pub load_balancers: Vec<IpNetwork>,
    /// Time for the whole header from the moment of connection (default 5 s).
    #[serde(default = "defaults::proxy_timeout", deserialize_with = "duration")]
    pub timeout: Duration,
}

impl From<&ProxyProtocol> for smtp_server::ProxyProtocol {
    fn from(p: &ProxyProtocol) -> Self {
        Self {
            load_balancers: p.load_balancers.clone(),
            timeout: p.timeout,
        }
    }
}

/// `mode` of the anti-abuse defences (`[early_talkers]`, `[helo_checks]`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DefenceMode {
    /// Not applied.
    Off,
    /// Logged and counted; the client goes on (the default).
    #[default]
    Tag,
    /// Refused.
    Enforce,
}

impl From<DefenceMode> for smtp_server::FilterMode {
    fn from(m: DefenceMode) -> Self {
        match m {
            DefenceMode::Off => Self::Off,
            DefenceMode::Tag => Self::Tag,
            DefenceMode::Enforce => Self::Enforce,
        }
    }
}

impl From<smtp_server::FilterMode> for DefenceMode {
    fn from(m: smtp_server::FilterMode) -> Self {
        match m {
            smtp_server::FilterMode::Off => Self::Off,
            smtp_server::FilterMode::Tag => Self::Tag,
            smtp_server::FilterMode::Enforce => Self::Enforce,
        }
    }
}

/// `[early_talkers]`: early-talker triage (Postfix postscreen's pregreet test and the
/// RFC 2920 pipelining check), with an optional greeting delay. Each unset key takes the
/// default of `smtp_server::EarlyTalkers`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EarlyTalkers {
    /// `off`, `tag` (default) or `enforce` (`554 5.5.0`).
    pub mode: DefenceMode,
    /// How long to wait before the greeting, watching for a client that talks first
    /// (default 0: no wait).
    #[serde(deserialize_with = "duration")]
    pub greeting_delay: Duration,
    /// The kinds of listener triaged (default: relay).
    pub listeners: Vec<ListenerMode>,
    /// How long a client that passed skips the delay (default 1 day).
    #[serde(deserialize_with = "duration")]
    pub pass_ttl: Duration,
    /// How long a client that failed is refused at once in enforce mode (default 10
    /// minutes).
    #[serde(deserialize_with = "duration")]
    pub fail_ttl: Duration,
    /// Client addresses whose verdict is kept (default 100 000).
    pub max_cached: usize,
}

impl EarlyTalkers {
    /// The server's settings.
    pub fn settings(&self) -> smtp_server::EarlyTalkers {
        smtp_server::EarlyTalkers {
            mode: self.mode.into(),
            greeting_delay: self.greeting_delay,
            listeners: self.listeners.iter().map(|&l| l.into()).collect(),
            pass_ttl: self.pass_ttl,
            fail_ttl: self.fail_ttl,
            max_cached: self.max_cached,
        }
    }
}

impl Default for EarlyTalkers {
    fn default() -> Self {
        let d = smtp_server::EarlyTalkers::default();
        Self {
            mode: d.mode.into(),
            greeting_delay: d.greeting_delay,
            listeners: d.listeners.into_iter().map(ListenerMode::from).collect(),
            pass_ttl: d.pass_ttl,
            fail_ttl: d.fail_ttl,
            max_cached: d.max_cached,
        }
    }
}

/// `[helo_checks]`: the name given in HELO/EHLO (a domain with a dot or an address
/// literal, not a bare IP, not our own name or address). Our names are `hostname`;
/// `[relay] trusted_networks` and logins are not checked. Each unset key takes the
/// default of `smtp_server::filters::HeloChecks`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HeloChecks {
    /// `off`, `tag` (default) or `enforce` (`501 5.5.2`, `550 5.7.1`).
    pub mode: DefenceMode,
    /// Our addresses, besides the one each client connected to (default none).
    pub own_addresses: Vec<IpAddr>,
    /// The kinds of listener checked (default: relay).
    pub listeners: Vec<ListenerMode>,
}

impl HeloChecks {
    /// The filter for a server named `hostname` trusting `trusted`.
    pub fn filter(
        &self,
        hostname: &str,
        trusted: Vec<IpNetwork>,
    ) -> smtp_server::filters::HeloChecks {
        smtp_server::filters::HeloChecks {
            mode: self.mode.into(),
            own_addresses: self.own_addresses.clone(),
            listeners: self.listeners.iter().map(|&l| l.into()).collect(),
            trusted,
            ..smtp_server::filters::HeloChecks::new(hostname)
        }
    }
}

impl Default for HeloChecks {
    fn default() -> Self {
        let d = smtp_server::filters::HeloChecks::new("");
        Self {
            mode: d.mode.into(),
            own_addresses: d.own_addresses,
            listeners: d.listeners.into_iter().map(ListenerMode::from).collect(),
        }
    }
}

/// `[[listener]] mode`
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerMode {
    /// Port 25: mail for local domains from anyone, relaying for logins and trusted
    /// networks.
    Relay,
    /// Port 587: STARTTLS, then AUTH, then mail.
    Submission,
    /// Port 465: TLS from the first byte, then as submission.
    Smtps,
}

impl From<smtp_server::ListenerMode> for ListenerMode {
    fn from(mode: smtp_server::ListenerMode) -> Self {
        match mode {
            smtp_server::ListenerMode::Relay => Self::Relay,
            smtp_server::ListenerMode::Submission => Self::Submission,
            smtp_server::ListenerMode::Smtps => Self::Smtps,
        }
    }
}

impl From<ListenerMode> for smtp_server::ListenerMode {
    fn from(mode: ListenerMode) -> Self {
        match mode {
            ListenerMode::Relay => Self::Relay,
            ListenerMode::Submission => Self::Submission,
            ListenerMode::Smtps => Self::Smtps,
        }
    }
}

/// `[tls]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// PEM certificate chain.
    pub certificate: Option<PathBuf>,
    /// PEM private key.
    pub private_key: Option<PathBuf>,
    /// Make (once) and use a self-signed certificate under the data directory.
    #[serde(default)]
    pub self_signed: bool,
}

/// `[queue]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Queue {
    /// Where the queue lives.
    pub path: PathBuf,
    /// Waits between attempts; the last repeats.
    #[serde(deserialize_with = "durations")]
    pub retry_intervals: Vec<Duration>,
    /// Give up after this long.
    #[serde(deserialize_with = "duration")]
    pub max_age: Duration,
    /// The metadata store.
    pub backend: QueueBackend,
    /// Deliveries at once.
    pub max_concurrent_deliveries: usize,
    /// Tell senders once when their message has waited this long (off by default).
    #[serde(deserialize_with = "optional_duration")]
    pub delay_warning: Option<Duration>,
}

/// `[queue] backend`
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueBackend {
    /// sled (the default).
    #[default]
    Sled,
    /// redb.
    Redb,
}

impl From<QueueBackend> for mail_queue::Backend {
    fn from(backend: QueueBackend) -> Self {
        match backend {
            QueueBackend::Sled => Self::Sled,
            QueueBackend::Redb => Self::Redb,
        }
    }
}

/// `[local]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Local {
    /// Domains (and listed address literals) we deliver locally.
    #[serde(default)]
    pub domains: Vec<String>,
    /// Maildir root: mail for `user@domain` lands in `<maildir>/<domain>/<user>/new/`.
    pub maildir: Option<PathBuf>,
    /// Deliver to an LMTP server (`ip:port` or `unix:/path`) instead of Maildir.
    pub lmtp: Option<LmtpAddress>,
    /// Accept any local part of a local domain (the embedded default); otherwise only
    /// accounts, `mailboxes`, postmaster and abuse.
    #[serde(default)]
    pub accept_any_user: bool,
    /// More local mailboxes (full addresses) that are not logins.
    #[serde(default)]
    pub mailboxes: Vec<String>,
    /// How lines end in Maildir files: `lf` (default, as Postfix and Dovecot store
    /// them) or `crlf` (as received).
    #[serde(default)]
    pub maildir_line_endings: LineEndings,
}

/// `[[account]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Account {
    /// The login, also a local mailbox when its domain is local.
    pub username: String,
    /// The password: plain, `$argon2id$...`, or SHA-512-crypt `$6$...`.
    pub password: String,
}

/// `[limits]`: each unset key takes the default of the crate it configures.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest message in octets.
    pub max_message_size: Option<u64>,
    /// A message is held in memory up to this size as it arrives; beyond, in a file.
    pub max_message_memory: Option<u64>,
    /// The memory all sessions together may hold for message content.
    pub max_total_message_memory: Option<u64>,
    /// Recipients per message.
    pub max_recipients: Option<usize>,
    /// Longest command line.
    pub max_line_length: Option<usize>,
    /// Protocol errors before disconnecting.
    pub max_errors: Option<u32>,
    /// Failed logins before disconnecting.
    pub max_auth_failures: Option<u32>,
    /// Time for a whole command.
    #[serde(deserialize_with = "optional_duration")]
    pub command_timeout: Option<Duration>,
    /// Time for message content, earned back at `min_data_rate`.
    #[serde(deserialize_with = "optional_duration")]
    pub data_timeout: Option<Duration>,
    /// The slowest content transfer kept up, in bytes per second (0: no floor).
    pub min_data_rate: Option<u64>,
    /// TLS handshake time limit.
    #[serde(deserialize_with = "optional_duration")]
    pub tls_handshake_timeout: Option<Duration>,
    /// Connections at once.
    pub max_connections: Option<usize>,
    /// Connections at once per client IP.
    pub max_connections_per_ip: Option<usize>,
    /// The listen backlog.
    pub listen_backlog: Option<u32>,
    /// `Received:` headers before a message counts as looping.
    pub max_hops: Option<usize>,
    /// What a bare CR or LF in a message gets.
    pub bare_line_endings: BareLineEndings,
    /// What NUL bytes in a message get.
    pub nul_bytes: NulBytes,
}

/// `[limits] bare_line_endings`
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BareLineEndings {
    /// `550 5.6.11`.
    #[default]
    Reject,
    /// Stored as CRLF.
    Normalize,
}

impl From<BareLineEndings> for smtp_proto::BareLineEndings {
    fn from(b: BareLineEndings) -> Self {
        match b {
            BareLineEndings::Reject => Self::Reject,
            BareLineEndings::Normalize => Self::Normalize,
        }
    }
}

/// `[limits] nul_bytes`
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NulBytes {
    /// `550 5.6.0`.
    #[default]
    Reject,
    /// Accepted without them.
    Remove,
}

impl From<NulBytes> for smtp_proto::NulBytes {
    fn from(n: NulBytes) -> Self {
        match n {
            NulBytes::Reject => Self::Reject,
            NulBytes::Remove => Self::Remove,
        }
    }
}

/// `[relay]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Relay {
    /// Networks allowed to relay without AUTH, e.g. `["127.0.0.0/8"]`.
    #[serde(default, deserialize_with = "networks")]
    pub trusted_networks: Vec<IpNetwork>,
}

/// `[dns]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dns {
    /// Nameservers to ask instead of the system's.
    #[serde(default)]
    pub nameservers: Vec<SocketAddr>,
}

/// `[outbound]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Outbound {
    /// Remote SMTP port.
    pub port: u16,
    /// STARTTLS policy towards other servers.
    pub tls: OutboundTls,
    /// Certificates (PEM) trusted besides the system's roots, or pinned.
    pub ca_file: Option<PathBuf>,
    /// Send all remote mail through this relay (`host` or `host:port`).
    #[serde(deserialize_with = "optional_from_str")]
    pub relay: Option<RelayHost>,
    /// How to speak TLS to the relay.
    pub relay_tls: RelayTls,
    /// Login at the relay (only ever sent under TLS, to a verified certificate).
    pub relay_username: Option<String>,
    /// Its password.
    pub relay_password: Option<String>,
    /// Deliveries at once per destination domain.
    pub max_per_destination: usize,
    /// Messages per connection before it is closed.
    pub max_messages_per_connection: usize,
    /// How long a connection waits for the next message before QUIT.
    #[serde(deserialize_with = "duration")]
    pub idle_timeout: Duration,
}

/// `[outbound] tls`
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutboundTls {
    /// STARTTLS when offered, any certificate.
    #[default]
    Opportunistic,
    /// STARTTLS with a verified certificate, or the mail waits.
    Required,
    /// Never STARTTLS.
    Disabled,
}

impl From<OutboundTls> for smtp_client::TlsPolicy {
    fn from(tls: OutboundTls) -> Self {
        match tls {
            OutboundTls::Opportunistic => Self::Opportunistic,
            OutboundTls::Required => Self::Required,
            OutboundTls::Disabled => Self::Disabled,
        }
    }
}

/// `[outbound] relay_tls`
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RelayTls {
    /// STARTTLS (port 587 style).
    #[default]
    Starttls,
    /// TLS from the first byte (port 465).
    Implicit,
}

/// `[outbound] relay`: a host name or address, with the port (25 when not given).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayHost {
    /// The host name or IP address.
    pub host: String,
    /// The port.
    pub port: u16,
}

impl std::str::FromStr for RelayHost {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (host, port) = match s.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') || h.ends_with(']') => {
                let port = p.parse().map_err(|_| format!("invalid port in {s:?}"))?;
                (h.trim_matches(['[', ']']), port)
            }
            _ => (s, 25),
        };
        if host.is_empty() {
            return Err(format!("no host in {s:?}"));
        }
        Ok(Self {
            host: host.to_owned(),
            port,
        })
    }
}

/// `[[dkim_key]]` and `[arc_seal]`: a domain, a selector and a PEM private key.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SigningKey {
    /// The signing domain (`d=`).
    pub domain: String,
    /// The selector (`s=`): the key is published at `<selector>._domainkey.<domain>`.
    pub selector: String,
    /// The private key (RSA or Ed25519, PEM), as `mta dkim-keygen` writes it.
    pub private_key: PathBuf,
}

/// `[metrics]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metrics {
    /// Where to serve `/metrics`, `/healthz` and `/readyz` (e.g. `127.0.0.1:9187`).
    pub address: SocketAddr,
}

/// `[sendmail]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Sendmail {
    /// A socket on which any local user may hand in a message (and do nothing else),
    /// for `sendmail` run by cron jobs, PHP `mail()` and scripts of other users. The
    /// server records the user id of each. Absent: only root and the server's user can
    /// inject mail (through the control socket in the queue directory).
    pub socket: Option<PathBuf>,
    /// Connections to that socket served at once (more wait): each may hold a message of
    /// the largest size in memory.
    pub max_connections: usize,
}

/// `[[milter]]`: a Sendmail/Postfix milter (OpenDKIM, clamav-milter, ...), as
/// Postfix's `smtpd_milters`. `docs/filters.md` describes it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MilterHook {
    /// The name in logs and in `X-Quarantine`; default: the address.
    #[serde(default)]
    pub name: String,
    /// `inet:host:port`, `inet:port@host`, `unix:/path` or `local:/path`.
    pub address: MilterAddress,
    /// The `{daemon_name}` macro (OpenDKIM's `MTA` setting matches on it).
    #[serde(default = "defaults::milter_daemon_name")]
    pub daemon_name: String,
    /// Time to connect.
    #[serde(
        default = "defaults::milter_connect_timeout",
        deserialize_with = "duration"
    )]
    pub connect_timeout: Duration,
    /// Time to answer each command, header field and body chunk.
    #[serde(
        default = "defaults::milter_command_timeout",
        deserialize_with = "duration"
    )]
    pub command_timeout: Duration,
    /// Time to answer the end of the message.
    #[serde(
        default = "defaults::milter_end_of_message_timeout",
        deserialize_with = "duration"
    )]
    pub end_of_message_timeout: Duration,
    /// What the client gets when the milter is down, late or garbled.
    #[serde(default)]
    pub default_action: MilterDefaultAction,
    /// The stages before DATA the milter is asked at (the end of DATA always is).
    #[serde(default = "MilterStage::all")]
    pub stages: Vec<MilterStage>,
    /// Where the mail comes from for the milter to be asked.
    #[serde(default = "HookListener::smtp")]
    pub listeners: Vec<HookListener>,
}

/// `[[milter]] address`: checked as the file is read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MilterAddress(String);

impl MilterAddress {
    /// The address as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for MilterAddress {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        use smtp_server::filters::milter::{Milter, MilterSettings};
        // The milter parses its address when made, and connects to nothing then.
        Milter::new(MilterSettings {
            address: s.to_owned(),
            ..MilterSettings::default()
        })
        .map(|_| Self(s.to_owned()))
        .map_err(|e| e.to_string())
    }
}

impl<'de> Deserialize<'de> for MilterAddress {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        from_str(d)
    }
}

/// `[[milter]] default_action` (Postfix's `milter_default_action`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MilterDefaultAction {
    /// `451 4.7.1` from then on for the connection.
    #[default]
    Tempfail,
    /// Go on without the milter for the connection, with a warning.
    Accept,
    /// `550 5.7.1` from then on for the connection.
    Reject,
}

impl From<MilterDefaultAction> for smtp_server::filters::milter::DefaultAction {
    fn from(a: MilterDefaultAction) -> Self {
        match a {
            MilterDefaultAction::Tempfail => Self::Tempfail,
            MilterDefaultAction::Accept => Self::Accept,
            MilterDefaultAction::Reject => Self::Reject,
        }
    }
}

/// `[[milter]] stages`: a stage before DATA a milter may be asked at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MilterStage {
    /// The client connected.
    Connect,
    /// HELO/EHLO.
    Helo,
    /// MAIL FROM.
    Mail,
    /// RCPT TO.
    Rcpt,
}

impl MilterStage {
    /// All four (the default).
    pub fn all() -> Vec<Self> {
        vec![Self::Connect, Self::Helo, Self::Mail, Self::Rcpt]
    }

    /// The set the milter takes.
    pub fn set(stages: &[Self]) -> smtp_server::filters::milter::MilterStages {
        smtp_server::filters::milter::MilterStages {
            connect: stages.contains(&Self::Connect),
            helo: stages.contains(&Self::Helo),
            mail: stages.contains(&Self::Mail),
            rcpt: stages.contains(&Self::Rcpt),
        }
    }
}

/// `listeners` of `[[milter]]`, `[[policy_service]]` and `[rspamd]`: where the mail
/// comes from for the hook to be asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HookListener {
    /// `[[listener]] mode = "relay"`.
    Relay,
    /// `[[listener]] mode = "submission"`.
    Submission,
    /// `[[listener]] mode = "smtps"`.
    Smtps,
    /// Mail handed in on this machine (`sendmail`, the control socket), as Postfix's
    /// `non_smtpd_milters`.
    Sendmail,
}

impl HookListener {
    /// The three SMTP listener modes (the default of milters and rspamd).
    pub fn smtp() -> Vec<Self> {
        vec![Self::Relay, Self::Submission, Self::Smtps]
    }

    /// The relay listener only (the default of policy services).
    pub fn relay() -> Vec<Self> {
        vec![Self::Relay]
    }

    /// Where the mail of `session` comes from.
    pub fn of(session: &smtp_server::SessionInfo) -> Self {
        if session.protocol == smtp_server::SessionInfo::LOCAL {
            return Self::Sendmail;
        }
        match session.mode {
            smtp_server::ListenerMode::Relay => Self::Relay,
            smtp_server::ListenerMode::Submission => Self::Submission,
            smtp_server::ListenerMode::Smtps => Self::Smtps,
        }
    }
}

/// `[[policy_service]]`: a Postfix SMTPD access policy service (postgrey,
/// policyd-spf, ...) asked at RCPT, as Postfix's `check_policy_service`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyServiceHook {
    /// `inet:host:port` (`inet:[::1]:port`) or `unix:/path`.
    #[serde(deserialize_with = "from_str")]
    pub address: PolicyAddress,
    /// Time for one query, connecting included.
    #[serde(default = "defaults::policy_timeout", deserialize_with = "duration")]
    pub timeout: Duration,
    /// What the client gets when the service is down, late or garbled.
    #[serde(default)]
    pub default_action: HookFailure,
    /// Sent as `policy_context=`.
    #[serde(default)]
    pub policy_context: String,
    /// Where the mail comes from for the service to be asked.
    #[serde(default = "HookListener::relay")]
    pub listeners: Vec<HookListener>,
    /// Whether logins and `[relay] trusted_networks` are asked too (Postfix's
    /// `permit_sasl_authenticated, permit_mynetworks` before the service skip them).
    #[serde(default)]
    pub ask_trusted: bool,
}

/// `[rspamd]`: rspamd's verdict at the end of DATA.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RspamdHook {
    /// `http://host[:port]`, `host[:port]` or `unix:/path`.
    #[serde(default = "defaults::rspamd_address", deserialize_with = "from_str")]
    pub address: RspamdAddress,
    /// Time for one scan, connecting included.
    #[serde(default = "defaults::rspamd_timeout", deserialize_with = "duration")]
    pub timeout: Duration,
    /// Sent as `Password` (the controller worker wants it).
    pub password: Option<String>,
    /// Larger messages pass unscanned, in octets.
    #[serde(default = "defaults::rspamd_max_size")]
    pub max_size: usize,
    /// What the client gets when rspamd is down, late or garbled.
    #[serde(default)]
    pub on_failure: HookFailure,
    /// Whether to add the `X-Spam-*` headers and rspamd's own.
    #[serde(default = "yes")]
    pub add_headers: bool,
    /// Sent as `Settings-ID`.
    pub settings_id: Option<String>,
    /// Where the mail comes from for rspamd to be asked.
    #[serde(default = "HookListener::smtp")]
    pub listeners: Vec<HookListener>,
}

/// `[[policy_service]] default_action`, `[rspamd] on_failure`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HookFailure {
    /// `451`: the client tries again later.
    #[default]
    Tempfail,
    /// Go on without the hook's verdict, with a warning.
    Accept,
}

impl From<HookFailure> for smtp_server::filters::policy::DefaultAction {
    fn from(f: HookFailure) -> Self {
        match f {
            HookFailure::Tempfail => Self::Tempfail,
            HookFailure::Accept => Self::Accept,
        }
    }
}

impl From<HookFailure> for smtp_server::filters::rspamd::OnFailure {
    fn from(f: HookFailure) -> Self {
        match f {
            HookFailure::Tempfail => Self::Tempfail,
            HookFailure::Accept => Self::Accept,
        }
    }
}

// ---- how values are read ----

/// A duration: `"90s"`, `"5m"`, `"2h"`, `"5d"`, `"1h 30m"` (humantime), or a number of
/// seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if let Ok(seconds) = text.parse::<u64>() {
        return Ok(Duration::from_secs(seconds));
    }
    humantime::parse_duration(text).map_err(|e| format!("invalid duration {text:?}: {e}"))
}

/// What a duration may be written as in the file.
#[derive(Deserialize)]
#[serde(untagged)]
enum DurationValue {
    Seconds(u64),
    Text(String),
}

impl DurationValue {
    fn into_duration<E: serde::de::Error>(self) -> Result<Duration, E> {
        match self {
            Self::Seconds(s) => Ok(Duration::from_secs(s)),
            Self::Text(text) => parse_duration(&text).map_err(E::custom),
        }
    }
}

fn duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    DurationValue::deserialize(d)?.into_duration()
}

fn optional_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    Option::<DurationValue>::deserialize(d)?
        .map(DurationValue::into_duration)
        .transpose()
}

fn durations<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
    Vec::<DurationValue>::deserialize(d)?
        .into_iter()
        .map(DurationValue::into_duration)
        .collect()
}

fn networks<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<IpNetwork>, D::Error> {
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|n| n.parse().map_err(serde::de::Error::custom))
        .collect()
}

fn yes() -> bool {
    true
}

fn from_str<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    String::deserialize(d)?
        .parse()
        .map_err(serde::de::Error::custom)
}

fn optional_from_str<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: std::str::FromStr<Err = String>,
{
    Option::<String>::deserialize(d)?
        .map(|s| s.parse().map_err(serde::de::Error::custom))
        .transpose()
}

impl Default for Queue {
    fn default() -> Self {
        Self {
            path: defaults::queue_path(),
            retry_intervals: defaults::retry_intervals(),
            max_age: defaults::MAX_AGE,
            backend: QueueBackend::default(),
            max_concurrent_deliveries: defaults::MAX_CONCURRENT_DELIVERIES,
            delay_warning: None,
        }
    }
}

impl Default for Outbound {
    fn default() -> Self {
        Self {
            port: 25,
            tls: OutboundTls::default(),
            ca_file: None,
            relay: None,
            relay_tls: RelayTls::default(),
            relay_username: None,
            relay_password: None,
            max_per_destination: defaults::MAX_PER_DESTINATION,
            max_messages_per_connection: defaults::MAX_MESSAGES_PER_CONNECTION,
            idle_timeout: defaults::IDLE_TIMEOUT,
        }
    }
}

impl Default for Sendmail {
    fn default() -> Self {
        Self {
            socket: None,
            max_connections: defaults::SENDMAIL_CONNECTIONS,
        }
    }
}
