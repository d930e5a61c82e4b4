//! The configuration file (TOML), its embedded default, and its conversion into each
//! crate's own config struct. `docs/configuration.md` describes every key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;

/// The configuration `mta serve` runs with when given no file: unprivileged ports on
/// loopback, a self-signed certificate made at first start, mail for any user at
/// `localhost` delivered under `./mta-data/maildir/`.
pub const EMBEDDED_DEFAULT: &str = r#"
hostname = "localhost"

[[listener]]
address = "127.0.0.1:2525"
mode = "relay"

[[listener]]
address = "127.0.0.1:2587"
mode = "submission"

[tls]
self_signed = true

[queue]
path = "./mta-data/queue"

[local]
domains = ["localhost"]
maildir = "./mta-data/maildir"
accept_any_user = true
"#;

/// Where the configuration of a server installed as `docs/deploying.md` shows lives.
pub const SYSTEM_CONFIG: &str = "/etc/mta/mta.toml";

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Our host name.
    pub hostname: String,
    /// The user to run as when started as root: listeners are bound first, then the
    /// server becomes this user (with its groups) before it touches the queue or a key.
    #[serde(default)]
    pub user: Option<String>,
    /// Where generated files go (the self-signed certificate); default: the queue
    /// directory's parent.
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
    /// Listeners.
    #[serde(default, rename = "listener")]
    pub listeners: Vec<Listener>,
    /// TLS certificate.
    #[serde(default)]
    pub tls: Option<Tls>,
    /// The queue.
    #[serde(default)]
    pub queue: Queue,
    /// Local delivery.
    #[serde(default)]
    pub local: Local,
    /// Logins and local mailboxes.
    #[serde(default, rename = "account")]
    pub accounts: Vec<Account>,
    /// Limits.
    #[serde(default)]
    pub limits: Limits,
    /// Relay policy.
    #[serde(default)]
    pub relay: Relay,
    /// DNS resolution.
    #[serde(default)]
    pub dns: Dns,
    /// Outbound delivery.
    #[serde(default)]
    pub outbound: Outbound,
    /// Sender authentication checks on the relay listener: `off`, `tag` or `enforce`
    /// for each of `spf`, `dkim`, `dmarc`, `arc` (all `tag` by default).
    #[serde(default)]
    pub auth_checks: auth_checks::Policy,
    /// DKIM signing keys for mail from logins and trusted networks.
    #[serde(default, rename = "dkim_key")]
    pub dkim_keys: Vec<SigningKey>,
    /// ARC sealing of mail forwarded from the relay listener to other hosts.
    #[serde(default)]
    pub arc_seal: Option<SigningKey>,
    /// Prometheus metrics and health checks over HTTP (off when absent).
    #[serde(default)]
    pub metrics: Option<Metrics>,
    /// Local submission by users other than root and the server's own user.
    #[serde(default)]
    pub sendmail: Sendmail,
}

/// `[sendmail]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sendmail {
    /// A socket on which any local user may hand in a message (and do nothing else),
    /// for `sendmail` run by cron jobs, PHP `mail()` and scripts of other users. The
    /// server records the user id of each. Absent: only root and the server's user can
    /// inject mail (through the control socket in the queue directory).
    pub socket: Option<PathBuf>,
    /// Connections to that socket served at once (more wait): each may hold a message of
    /// the largest size in memory.
    #[serde(default = "default_sendmail_connections")]
    pub max_connections: usize,
}

impl Default for Sendmail {
    fn default() -> Self {
        Self {
            socket: None,
            max_connections: default_sendmail_connections(),
        }
    }
}

fn default_sendmail_connections() -> usize {
    8
}

/// `[metrics]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metrics {
    /// Where to serve `/metrics`, `/healthz` and `/readyz` (e.g. `127.0.0.1:9187`).
    pub address: SocketAddr,
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

/// `[[listener]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    /// `address = "127.0.0.1:2525"`
    pub address: SocketAddr,
    /// `mode = "relay" | "submission" | "smtps"`
    pub mode: String,
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
#[serde(deny_unknown_fields)]
pub struct Queue {
    /// Where the queue lives.
    #[serde(default = "default_queue_path")]
    pub path: PathBuf,
    /// Waits between attempts; the last repeats.
    #[serde(default = "default_retry_intervals")]
    pub retry_intervals: Vec<String>,
    /// Give up after this long.
    #[serde(default = "default_max_age")]
    pub max_age: String,
    /// `sled` (default) or `redb`.
    #[serde(default = "default_backend")]
    pub backend: String,
    /// Deliveries at once.
    #[serde(default = "default_concurrency")]
    pub max_concurrent_deliveries: usize,
    /// Tell senders once when their message has waited this long (off by default).
    pub delay_warning: Option<String>,
}

impl Default for Queue {
    fn default() -> Self {
        Self {
            path: default_queue_path(),
            retry_intervals: default_retry_intervals(),
            max_age: default_max_age(),
            backend: default_backend(),
            max_concurrent_deliveries: default_concurrency(),
            delay_warning: None,
        }
    }
}

fn default_queue_path() -> PathBuf {
    PathBuf::from("./mta-data/queue")
}
fn default_retry_intervals() -> Vec<String> {
    ["5m", "10m", "30m", "1h", "2h", "4h"]
        .map(String::from)
        .to_vec()
}
fn default_max_age() -> String {
    "5d".into()
}
fn default_backend() -> String {
    "sled".into()
}
fn default_concurrency() -> usize {
    100
}

/// `[local]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Local {
    /// Domains we deliver locally.
    #[serde(default)]
    pub domains: Vec<String>,
    /// Maildir root: mail for `user@domain` lands in `<maildir>/<domain>/<user>/new/`.
    pub maildir: Option<PathBuf>,
    /// Deliver to an LMTP server (`ip:port` or `unix:/path`) instead of Maildir.
    pub lmtp: Option<crate::delivery::LmtpAddress>,
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
    pub maildir_line_endings: crate::delivery::LineEndings,
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

/// `[limits]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
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
    /// Wait for a command, e.g. `"5m"`.
    pub command_timeout: Option<String>,
    /// Time for message content, earned back at `min_data_rate`, e.g. `"10m"`.
    pub data_timeout: Option<String>,
    /// The slowest content transfer kept up, in bytes per second (0: no floor).
    pub min_data_rate: Option<u64>,
    /// TLS handshake time limit.
    pub tls_handshake_timeout: Option<String>,
    /// Connections at once.
    pub max_connections: Option<usize>,
    /// Connections at once per client IP.
    pub max_connections_per_ip: Option<usize>,
    /// The listen backlog.
    pub listen_backlog: Option<u32>,
    /// `Received:` headers before a message counts as looping.
    pub max_hops: Option<usize>,
    /// `reject` (default) or `normalize` bare CR/LF.
    pub bare_line_endings: Option<String>,
    /// `reject` (default) or `remove` NUL bytes in messages.
    #[serde(default)]
    pub nul_bytes: NulBytes,
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
    #[serde(default)]
    pub trusted_networks: Vec<String>,
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
#[serde(deny_unknown_fields)]
pub struct Outbound {
    /// Remote SMTP port.
    #[serde(default = "default_port")]
    pub port: u16,
    /// `opportunistic`, `required` or `disabled`.
    #[serde(default = "default_outbound_tls")]
    pub tls: String,
    /// Certificates (PEM) trusted besides the system's roots, for `tls = "required"`.
    pub ca_file: Option<PathBuf>,
    /// Send all remote mail through this relay (`host` or `host:port`).
    pub relay: Option<String>,
    /// `starttls` (default) or `implicit` (TLS from the first byte, port 465).
    pub relay_tls: Option<String>,
    /// Login at the relay (only ever sent under TLS).
    pub relay_username: Option<String>,
    /// Its password.
    pub relay_password: Option<String>,
    /// Deliveries at once per destination domain.
    pub max_per_destination: Option<usize>,
    /// Messages per connection before it is closed.
    pub max_messages_per_connection: Option<usize>,
    /// How long a connection waits for the next message before QUIT, e.g. `"10s"`.
    pub idle_timeout: Option<String>,
}

impl Default for Outbound {
    fn default() -> Self {
        Self {
            port: default_port(),
            tls: default_outbound_tls(),
            ca_file: None,
            relay: None,
            relay_tls: None,
            relay_username: None,
            relay_password: None,
            max_per_destination: None,
            max_messages_per_connection: None,
            idle_timeout: None,
        }
    }
}

fn default_port() -> u16 {
    25
}
fn default_outbound_tls() -> String {
    "opportunistic".into()
}

/// A TOML error on one line: where, the line itself (which names the key), and why.
fn one_line(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim_end().replace('\n', " ");
    let Some(span) = e.span() else { return message };
    let before = text.get(..span.start).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    let source = text.lines().nth(line - 1).unwrap_or("").trim();
    format!("line {line}, column {column} (`{source}`): {message}")
}

/// Where a problem is in the file.
#[derive(Clone, Copy, Debug)]
enum At<'a> {
    /// A top-level key.
    Top(&'a str),
    /// A key of the table `[name]` (`""`: the table itself).
    Key(&'a str, &'a str),
    /// A key of the n-th `[[name]]` (`""`: the entry itself).
    Entry(&'a str, usize, &'a str),
}

/// The problems of one configuration, each with its line when the key can be found.
#[derive(Debug)]
pub struct Problems {
    lines: Vec<(Option<usize>, String)>,
    text: String,
}

impl Problems {
    fn new(text: &str) -> Self {
        Self {
            lines: Vec::new(),
            text: text.to_owned(),
        }
    }

    fn add(&mut self, at: At<'_>, message: impl Into<String>) {
        let line = locate(&self.text, at);
        self.lines.push((line, message.into()));
    }

    fn into_result(self) -> Result<(), Self> {
        if self.lines.is_empty() {
            Ok(())
        } else {
            Err(self)
        }
    }

    /// Each problem as `line N: message` (or the message alone).
    pub fn each(&self) -> impl Iterator<Item = String> + '_ {
        self.lines.iter().map(|(line, message)| match line {
            Some(n) => format!("line {n}: {message}"),
            None => message.clone(),
        })
    }
}

impl std::fmt::Display for Problems {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let all: Vec<String> = self.each().collect();
        f.write_str(&all.join("\n"))
    }
}

impl std::error::Error for Problems {}

/// The line (from 1) of `at` in `text`: the key's line, else its table's header.
fn locate(text: &str, at: At<'_>) -> Option<usize> {
    let (header, index, key) = match at {
        At::Top(key) => (String::new(), 0, key),
        At::Key(table, key) => (format!("[{table}]"), 0, key),
        At::Entry(array, i, key) => (format!("[[{array}]]"), i, key),
    };
    let mut inside = header.is_empty();
    let mut seen = 0;
    let mut header_line = None;
    for (n, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.starts_with('[') {
            let h: String = t
                .split('#')
                .next()
                .unwrap_or("")
                .chars()
                .filter(|c| !c.is_whitespace())
                .collect();
            inside = h == header && {
                seen += 1;
                seen - 1 == index
            };
            if inside {
                header_line = Some(n + 1);
            }
            continue;
        }
        if inside
            && !key.is_empty()
            && t.strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        {
            return Some(n + 1);
        }
    }
    header_line
}

/// A duration such as `90s`, `5m`, `2h`, `5d` (a bare number is seconds).
pub fn parse_duration(text: &str) -> anyhow::Result<Duration> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .with_context(|| format!("invalid duration {text:?}"))?;
    let seconds = match unit.trim() {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        other => bail!("invalid duration unit {other:?} in {text:?} (use s, m, h or d)"),
    };
    Ok(Duration::from_secs(seconds))
}

impl Config {
    /// Parses a file's text; errors name the key and the line.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let config: Self =
            toml::from_str(text).map_err(|e| anyhow::anyhow!("{}", one_line(text, &e)))?;
        config.validate(text)?;
        Ok(config)
    }

    /// Reads and parses a file.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("in {}", path.display()))
    }

    /// The configuration the client commands (`mta queue`, `mta sendmail`, `mta send`)
    /// use: `path` when given, else `$MTA_CONFIG`, else [`SYSTEM_CONFIG`] when it exists
    /// (cron and PHP run `sendmail` with no option to point elsewhere), else the
    /// embedded default.
    pub fn find(path: Option<&Path>) -> anyhow::Result<Self> {
        let path = path
            .map(Path::to_path_buf)
            .or_else(|| std::env::var_os("MTA_CONFIG").map(PathBuf::from))
            .or_else(|| {
                let system = PathBuf::from(SYSTEM_CONFIG);
                system.exists().then_some(system)
            });
        match path {
            Some(path) => Self::load(&path),
            None => Self::parse(EMBEDDED_DEFAULT),
        }
    }

    /// Checks what the types alone cannot; every problem is reported, with its line
    /// in `text`.
    fn validate(&self, text: &str) -> Result<(), Problems> {
        let mut p = Problems::new(text);
        if self.listeners.is_empty() {
            p.add(At::Top(""), "no [[listener]]: nothing to listen on");
        }
        for (i, l) in self.listeners.iter().enumerate() {
            if let Err(e) = l.mode.parse::<smtp_server::ListenerMode>() {
                p.add(
                    At::Entry("listener", i, "mode"),
                    format!("[[listener]] mode: {e}"),
                );
            }
        }
        for d in &self.queue.retry_intervals {
            if let Err(e) = parse_duration(d) {
                p.add(
                    At::Key("queue", "retry_intervals"),
                    format!("[queue] retry_intervals: {e}"),
                );
            }
        }
        if self.queue.retry_intervals.is_empty() {
            p.add(
                At::Key("queue", "retry_intervals"),
                "[queue] retry_intervals: give at least one interval",
            );
        }
        if let Err(e) = parse_duration(&self.queue.max_age) {
            p.add(At::Key("queue", "max_age"), format!("[queue] max_age: {e}"));
        }
        if let Some(Err(e)) = self.queue.delay_warning.as_deref().map(parse_duration) {
            p.add(
                At::Key("queue", "delay_warning"),
                format!("[queue] delay_warning: {e}"),
            );
        }
        if !matches!(self.queue.backend.as_str(), "sled" | "redb") {
            p.add(
                At::Key("queue", "backend"),
                format!(
                    "[queue] backend: {:?} is not sled or redb",
                    self.queue.backend
                ),
            );
        }
        for (key, value) in [
            ("command_timeout", &self.limits.command_timeout),
            ("data_timeout", &self.limits.data_timeout),
            ("tls_handshake_timeout", &self.limits.tls_handshake_timeout),
        ] {
            if let Some(Err(e)) = value.as_deref().map(parse_duration) {
                p.add(At::Key("limits", key), format!("[limits] {key}: {e}"));
            }
        }
        if let Some(Err(e)) = self.outbound.idle_timeout.as_deref().map(parse_duration) {
            p.add(
                At::Key("outbound", "idle_timeout"),
                format!("[outbound] idle_timeout: {e}"),
            );
        }
        if let Some(v) = &self.limits.bare_line_endings
            && !matches!(v.as_str(), "reject" | "normalize")
        {
            p.add(
                At::Key("limits", "bare_line_endings"),
                format!("[limits] bare_line_endings: {v:?} is not reject or normalize"),
            );
        }
        for n in &self.relay.trusted_networks {
            if let Err(e) = n.parse::<smtp_server::filters::IpNetwork>() {
                p.add(
                    At::Key("relay", "trusted_networks"),
                    format!("[relay] trusted_networks: {e}"),
                );
            }
        }
        let o = &self.outbound;
        if let Some(t) = &o.relay_tls
            && !matches!(t.as_str(), "starttls" | "implicit")
        {
            p.add(
                At::Key("outbound", "relay_tls"),
                format!("[outbound] relay_tls: {t:?} is not starttls or implicit"),
            );
        }
        if o.relay_username.is_some() != o.relay_password.is_some() {
            p.add(
                At::Key("outbound", "relay_username"),
                "[outbound] relay_username and relay_password go together",
            );
        }
        if o.relay_username.is_some() && o.relay.is_none() {
            p.add(
                At::Key("outbound", "relay_username"),
                "[outbound] relay_username needs a relay",
            );
        }
        if !matches!(o.tls.as_str(), "opportunistic" | "required" | "disabled") {
            p.add(
                At::Key("outbound", "tls"),
                format!(
                    "[outbound] tls: {:?} is not opportunistic, required or disabled",
                    o.tls
                ),
            );
        }
        if let Some(tls) = &self.tls
            && !tls.self_signed
            && (tls.certificate.is_none() || tls.private_key.is_none())
        {
            p.add(
                At::Key("tls", ""),
                "[tls]: give certificate and private_key, or self_signed = true",
            );
        }
        if let Some(i) = self.listeners.iter().position(|l| l.mode == "smtps")
            && self.tls.is_none()
        {
            p.add(
                At::Entry("listener", i, "mode"),
                "[[listener]] mode = \"smtps\" needs a [tls] section",
            );
        }
        if !self.local.domains.is_empty()
            && self.local.maildir.is_none()
            && self.local.lmtp.is_none()
        {
            p.add(
                At::Key("local", "domains"),
                "[local]: local domains need maildir or lmtp to deliver to",
            );
        }
        for (i, key) in self.dkim_keys.iter().enumerate() {
            if key.domain.is_empty() || key.selector.is_empty() {
                p.add(
                    At::Entry("dkim_key", i, ""),
                    "[[dkim_key]]: give domain and selector",
                );
            }
        }
        if let Some(key) = &self.arc_seal
            && (key.domain.is_empty() || key.selector.is_empty())
        {
            p.add(
                At::Key("arc_seal", ""),
                "[arc_seal]: give domain and selector",
            );
        }
        for (i, a) in self.accounts.iter().enumerate() {
            if !a.username.contains('@') {
                p.add(
                    At::Entry("account", i, "username"),
                    format!(
                        "[[account]] username {:?}: use a full address (user@domain)",
                        a.username
                    ),
                );
            }
        }
        p.into_result()
    }

    /// What only the system can tell: the user exists, and the certificate and the
    /// signing keys the file names can be read and used. `mta check-config` reports
    /// these with the rest; `mta serve` finds them as it starts.
    pub fn check_files(&self, text: &str) -> Result<(), Problems> {
        let mut p = Problems::new(text);
        #[cfg(unix)]
        if let Some(user) = &self.user
            && let Err(e) = crate::privileges::RunAs::lookup(user)
        {
            p.add(At::Top("user"), format!("{e:#}"));
        }
        if let Some(Tls {
            certificate: Some(cert),
            private_key: Some(key),
            self_signed: false,
        }) = &self.tls
            && let Err(e) = smtp_server::tls::load_pem_files(cert, key)
        {
            p.add(At::Key("tls", "certificate"), format!("[tls]: {e}"));
        }
        for (i, k) in self.dkim_keys.iter().enumerate() {
            if let Err(e) =
                auth_checks::DkimSigner::from_pem_file(&k.domain, &k.selector, &k.private_key)
            {
                p.add(
                    At::Entry("dkim_key", i, "private_key"),
                    format!(
                        "[[dkim_key]] private_key {}: {e:#}",
                        k.private_key.display()
                    ),
                );
            }
        }
        if let Some(k) = &self.arc_seal
            && let Err(e) =
                auth_checks::ArcSigner::from_pem_file(&k.domain, &k.selector, &k.private_key)
        {
            p.add(
                At::Key("arc_seal", "private_key"),
                format!("[arc_seal] private_key {}: {e:#}", k.private_key.display()),
            );
        }
        if let Some(ca) = &self.outbound.ca_file
            && let Err(e) = std::fs::metadata(ca)
        {
            p.add(
                At::Key("outbound", "ca_file"),
                format!("[outbound] ca_file {}: {e}", ca.display()),
            );
        }
        p.into_result()
    }

    /// Risky settings worth a warning.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        for n in &self.relay.trusted_networks {
            if n.ends_with("/0") {
                out.push(format!(
                    "[relay] trusted_networks contains {n}: an open relay"
                ));
            }
        }
        if self.tls.is_none() {
            out.push("no [tls]: no STARTTLS, so no AUTH and no submission logins".into());
        }
        if self.outbound.tls == "disabled" {
            out.push("[outbound] tls = \"disabled\": mail leaves in plaintext".into());
            if self.outbound.relay_username.is_some()
                && self.outbound.relay_tls.as_deref() != Some("implicit")
            {
                out.push(
                    "[outbound] relay_username with tls = \"disabled\": credentials never go \
                     in plaintext, so every login to the relay will fail"
                        .into(),
                );
            }
        }
        if self.accounts.iter().any(|a| !a.password.starts_with('$')) {
            out.push(
                "[[account]] with a plaintext password: prefer an argon2 or SHA-512-crypt hash"
                    .into(),
            );
        }
        out
    }

    /// The directory for generated files (the self-signed certificate): `data_dir`,
    /// else the queue directory's parent.
    pub fn data_dir(&self) -> PathBuf {
        self.data_dir.clone().unwrap_or_else(|| {
            self.queue
                .path
                .parent()
                .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_parses() {
        let c = Config::parse(EMBEDDED_DEFAULT).unwrap();
        assert_eq!(c.listeners.len(), 2);
        assert!(c.local.accept_any_user);
    }

    #[test]
    fn issue_example_keys_parse() {
        let text = r#"
hostname = "mx.example.test"
[[listener]]
address = "127.0.0.1:2525"
mode = "relay"
[tls]
certificate = "/path/cert.pem"
private_key = "/path/key.pem"
[queue]
path = "/path/queue"
retry_intervals = ["5m", "10m", "30m", "1h", "2h", "4h"]
max_age = "5d"
[local]
domains = ["example.test"]
maildir = "/path/maildir"
[[account]]
username = "alice@example.test"
password = "secret"
[limits]
max_message_size = 52428800
max_recipients = 100
[dns]
nameservers = ["127.0.0.1:53"]
[outbound]
port = 25
tls = "opportunistic"
"#;
        let c = Config::parse(text).unwrap();
        assert_eq!(c.hostname, "mx.example.test");
        assert_eq!(c.queue.retry_intervals.len(), 6);
        assert_eq!(c.accounts[0].username, "alice@example.test");
        assert_eq!(c.limits.max_message_size, Some(52_428_800));
        assert_eq!(c.dns.nameservers.len(), 1);
    }

    #[test]
    fn errors_name_key_and_line() {
        let err = Config::parse("hostname = \"x\"\n[[listener]]\naddress = \"127.0.0.1:1\"\nmode = \"relay\"\n[limits]\nmax_recipients = \"many\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("line 6") && err.contains("max_recipients"),
            "{err}"
        );
        let err = Config::parse("hostname = \"x\"\nbogus = 1\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 2") && err.contains("bogus"), "{err}");
        let err = Config::parse(
            "hostname = \"x\"\n[[listener]]\naddress = \"127.0.0.1:1\"\nmode = \"smtp\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("mode"), "{err}");
    }

    #[test]
    fn generated_files_go_to_data_dir_else_beside_the_queue() {
        let base = "hostname = \"x\"\n[[listener]]\naddress = \"127.0.0.1:1\"\nmode = \"relay\"\n\
                    [queue]\npath = \"/var/spool/mta\"\n";
        let c = Config::parse(base).unwrap();
        assert_eq!(c.data_dir(), Path::new("/var/spool"));
        let c = Config::parse(&format!("data_dir = \"/var/lib/mta\"\n{base}")).unwrap();
        assert_eq!(c.data_dir(), Path::new("/var/lib/mta"));
    }

    #[test]
    fn every_problem_is_reported_with_its_line() {
        let text = "hostname = \"x\"\n\
                    [[listener]]\naddress = \"127.0.0.1:1\"\nmode = \"relay\"\n\
                    [[listener]]\naddress = \"127.0.0.1:2\"\nmode = \"smtp\"\n\
                    [queue]\nmax_age = \"5 fortnights\"\n\
                    [outbound]\n# the relay\nrelay_tls = \"sometimes\"\n";
        let err = Config::parse(text).unwrap_err();
        let problems: Vec<String> = err.downcast_ref::<Problems>().unwrap().each().collect();
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(
            problems[0].starts_with("line 7: [[listener]] mode"),
            "{problems:?}"
        );
        assert!(
            problems[1].starts_with("line 9: [queue] max_age"),
            "{problems:?}"
        );
        assert!(
            problems[2].starts_with("line 12: [outbound] relay_tls"),
            "{problems:?}"
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("5d").unwrap(), Duration::from_secs(432_000));
        assert_eq!(parse_duration("7").unwrap(), Duration::from_secs(7));
        assert!(parse_duration("5 weeks").is_err());
        assert!(parse_duration("m").is_err());
    }
}
