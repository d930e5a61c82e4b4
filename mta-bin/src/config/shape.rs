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
use crate::delivery::{LineEndings, LmtpAddress, SubaddressFolder};

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
    /// for each of `spf`, `dkim`, `dmarc`, `arc` (all `tag` by default), `bimi` (on or
    /// off: `BIMI-Location` after an enforcing DMARC pass; on by default), and their
    /// time budget.
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
    /// Rate limits (`[rate_limits]`): anvil's connection, message and recipient rates,
    /// dictionary attacks, password guessing.
    pub rate_limits: RateLimits,
    /// Greylisting (`[greylist]`), off by default.
    pub greylist: Greylist,
    /// DNS blocklists and allowlists (`[dnsbl]`).
    pub dnsbl: Dnsbl,
    /// Reverse DNS of clients (`[reverse_dns]`).
    pub reverse_dns: ReverseDns,
    /// Aliases, catch-alls, domain aliases and forwarding (`[aliases]`); absent: none.
    pub aliases: Option<Aliases>,
    /// TLS reporting (`[tls_reports]`, RFC 8460): daily reports of the TLS sessions
    /// made under MTA-STS policies, sent to the domains that publish a TLS-RPT record.
    pub tls_reports: TlsReporting,
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
    /// The priority (RFC 6710, -9 to 9) of mail that comes in here, unless a login or a
    /// trusted network asks for another with `MT-PRIORITY`; others may only lower it
    /// (default 0).
    #[serde(default)]
    pub priority: i8,
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

impl From<DefenceMode> for auth_checks::Mode {
    fn from(m: DefenceMode) -> Self {
        match m {
            DefenceMode::Off => Self::Off,
            DefenceMode::Tag => Self::Tag,
            DefenceMode::Enforce => Self::Enforce,
        }
    }
}

impl From<auth_checks::Mode> for DefenceMode {
    fn from(m: auth_checks::Mode) -> Self {
        match m {
            auth_checks::Mode::Off => Self::Off,
            auth_checks::Mode::Tag => Self::Tag,
            auth_checks::Mode::Enforce => Self::Enforce,
        }
    }
}

/// One rate of `[rate_limits]`: `"60/1m"` (60 per minute, enforced), a table
/// `{ max = 60, per = "1m", mode = "tag" }`, or `"off"` (or `0`). A `per` of zero is
/// refused as the file is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    /// How many (0: no limit).
    pub max: u32,
    /// In what time.
    pub per: Duration,
    /// What happens beyond it (`enforce` unless the table says otherwise).
    pub mode: DefenceMode,
}

impl RateLimit {
    /// The library's limit.
    pub fn limit(&self) -> smtp_server::filters::rate::Limit {
        smtp_server::filters::rate::Limit {
            max: self.max,
            per: self.per,
            mode: self.mode.into(),
        }
    }

    /// Whether it limits anything.
    pub fn is_active(&self) -> bool {
        self.limit().is_active()
    }
}

impl From<smtp_server::filters::rate::Limit> for RateLimit {
    fn from(l: smtp_server::filters::rate::Limit) -> Self {
        Self {
            max: l.max,
            per: l.per,
            mode: l.mode.into(),
        }
    }
}

impl std::str::FromStr for RateLimit {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text.eq_ignore_ascii_case("off") || text == "0" {
            return Ok(smtp_server::filters::rate::Limit::OFF.into());
        }
        let (max, per) = text.split_once('/').ok_or_else(|| {
            format!("{text:?}: write how many per how long (\"60/1m\"), or \"off\"")
        })?;
        let max: u32 = max
            .trim()
            .parse()
            .map_err(|_| format!("{text:?}: {:?} is not a whole number", max.trim()))?;
        let per = parse_duration(per)?;
        Self::new(max, per, DefenceMode::Enforce)
    }
}

impl RateLimit {
    fn new(max: u32, per: Duration, mode: DefenceMode) -> Result<Self, String> {
        if per.is_zero() && max > 0 {
            return Err(format!(
                "{max} per 0 seconds: the time must be more than 0 (or write \"off\")"
            ));
        }
        if max == 0 {
            return Ok(smtp_server::filters::rate::Limit::OFF.into());
        }
        Ok(Self { max, per, mode })
    }
}

/// `{ max = 60, per = "1m", mode = "tag" }`
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RateLimitTable {
    max: u32,
    #[serde(deserialize_with = "duration")]
    per: Duration,
    #[serde(default = "enforce")]
    mode: DefenceMode,
}

fn enforce() -> DefenceMode {
    DefenceMode::Enforce
}

impl<'de> Deserialize<'de> for RateLimit {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = RateLimit;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a rate as \"60/1m\", { max = 60, per = \"1m\" }, or \"off\"")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RateLimit, E> {
                v.parse().map_err(E::custom)
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<RateLimit, E> {
                match v {
                    0 => Ok(smtp_server::filters::rate::Limit::OFF.into()),
                    _ => Err(E::custom(format!(
                        "{v}: write how many per how long (\"{v}/1h\"), or \"off\""
                    ))),
                }
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<RateLimit, E> {
                self.visit_i64(i64::try_from(v).unwrap_or(i64::MAX))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<RateLimit, A::Error> {
                let t =
                    RateLimitTable::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                RateLimit::new(t.max, t.per, t.mode).map_err(serde::de::Error::custom)
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// `[rate_limits]`: token buckets per client address, sender domain and login, anvil
/// style, and the dictionary-attack and password-guessing counters. Each unset key takes
/// the default of `smtp_server::filters::rate::RateSettings` (generous: no legitimate
/// client meets them, and the answers are temporary). `[relay] trusted_networks` are
/// never limited.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimits {
    /// New connections per client address (`421 4.7.0` and close). Default `"60/1m"`.
    pub connections_per_ip: RateLimit,
    /// Messages per client address, not logged in (`450 4.7.1`). Default `"600/1h"`.
    pub messages_per_ip: RateLimit,
    /// Accepted recipients per client address, not logged in. Default `"3000/1h"`.
    pub recipients_per_ip: RateLimit,
    /// Messages per MAIL FROM domain, not logged in. Default off.
    pub messages_per_sender_domain: RateLimit,
    /// Recipients per MAIL FROM domain, not logged in. Default off.
    pub recipients_per_sender_domain: RateLimit,
    /// Messages per login. Default `"200/1h"`.
    pub messages_per_login: RateLimit,
    /// Recipients per login. Default `"1000/1h"`.
    pub recipients_per_login: RateLimit,
    /// Refused recipients per client address (dictionary attacks).
    pub failed_rcpts: FailedRcpts,
    /// Refused logins per client address (password guessing).
    pub failed_logins: FailedLogins,
    /// Clients never limited, besides `[relay] trusted_networks`. Default loopback
    /// (`127.0.0.0/8`, `::1`), as Postfix's `smtpd_client_event_limit_exceptions`.
    #[serde(deserialize_with = "networks")]
    pub exempt_networks: Vec<IpNetwork>,
    /// Logins without message and recipient limits. Default none.
    pub exempt_logins: Vec<String>,
    /// Entries each table may hold. Default 100 000.
    pub max_tracked: usize,
}

/// `[rate_limits.failed_rcpts]`: refused recipients per client address, across its
/// sessions: a tarpit, then `421 4.7.0`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FailedRcpts {
    /// Refused recipients in `window` before each RCPT answer is delayed (0: never).
    /// Default 10.
    pub tarpit_after: u32,
    /// Refused recipients in `window` before `421 4.7.0` and close (0: never). Default 30.
    pub disconnect_after: u32,
    /// The window, from the first refused recipient. Default 1 hour.
    #[serde(deserialize_with = "duration")]
    pub window: Duration,
    /// The tarpit's first delay; each further refusal adds one more. Default 1 s.
    #[serde(deserialize_with = "duration")]
    pub tarpit_step: Duration,
    /// The longest delay. Default 10 s.
    #[serde(deserialize_with = "duration")]
    pub tarpit_max: Duration,
    /// `off`, `tag` or `enforce` (the default).
    pub mode: DefenceMode,
}

/// `[rate_limits.failed_logins]`: refused logins per client address, across its
/// sessions: a lockout.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FailedLogins {
    /// Refused logins in `window` before the lockout (0: never). Default 10.
    pub max_failures: u32,
    /// The window, from the first refused login. Default 15 minutes.
    #[serde(deserialize_with = "duration")]
    pub window: Duration,
    /// How long the address is locked out (`454 4.7.0`). Default 30 minutes.
    #[serde(deserialize_with = "duration")]
    pub lockout: Duration,
    /// `off`, `tag` or `enforce` (the default).
    pub mode: DefenceMode,
}

impl RateLimits {
    /// The library's settings, with `trusted` (the trusted networks) exempt too.
    pub fn settings(&self, trusted: &[IpNetwork]) -> smtp_server::filters::rate::RateSettings {
        use smtp_server::filters::rate::{DictionaryLimit, LoginLimit, RateSettings};
        let f = &self.failed_rcpts;
        let l = &self.failed_logins;
        let mut exempt_networks = trusted.to_vec();
        exempt_networks.extend(self.exempt_networks.iter().cloned());
        RateSettings {
            connections_per_ip: self.connections_per_ip.limit(),
            messages_per_ip: self.messages_per_ip.limit(),
            recipients_per_ip: self.recipients_per_ip.limit(),
            messages_per_sender_domain: self.messages_per_sender_domain.limit(),
            recipients_per_sender_domain: self.recipients_per_sender_domain.limit(),
            messages_per_login: self.messages_per_login.limit(),
            recipients_per_login: self.recipients_per_login.limit(),
            failed_rcpts_per_ip: DictionaryLimit {
                tarpit_after: f.tarpit_after,
                disconnect_after: f.disconnect_after,
                window: f.window,
                tarpit_step: f.tarpit_step,
                tarpit_max: f.tarpit_max,
                mode: f.mode.into(),
            },
            failed_logins_per_ip: LoginLimit {
                max_failures: l.max_failures,
                window: l.window,
                lockout: l.lockout,
                mode: l.mode.into(),
            },
            exempt_networks,
            exempt_logins: self.exempt_logins.clone(),
            max_tracked: self.max_tracked,
        }
    }

    /// The limits of the stream of messages and recipients, by key.
    pub fn rates(&self) -> [(&'static str, &RateLimit); 7] {
        [
            ("connections_per_ip", &self.connections_per_ip),
            ("messages_per_ip", &self.messages_per_ip),
            ("recipients_per_ip", &self.recipients_per_ip),
            (
                "messages_per_sender_domain",
                &self.messages_per_sender_domain,
            ),
            (
                "recipients_per_sender_domain",
                &self.recipients_per_sender_domain,
            ),
            ("messages_per_login", &self.messages_per_login),
            ("recipients_per_login", &self.recipients_per_login),
        ]
    }
}

impl Default for RateLimits {
    fn default() -> Self {
        let d = smtp_server::filters::rate::RateSettings::default();
        Self {
            connections_per_ip: d.connections_per_ip.into(),
            messages_per_ip: d.messages_per_ip.into(),
            recipients_per_ip: d.recipients_per_ip.into(),
            messages_per_sender_domain: d.messages_per_sender_domain.into(),
            recipients_per_sender_domain: d.recipients_per_sender_domain.into(),
            messages_per_login: d.messages_per_login.into(),
            recipients_per_login: d.recipients_per_login.into(),
            failed_rcpts: FailedRcpts::default(),
            failed_logins: FailedLogins::default(),
            exempt_networks: defaults::rate_exempt_networks(),
            exempt_logins: d.exempt_logins,
            max_tracked: d.max_tracked,
        }
    }
}

impl Default for FailedRcpts {
    fn default() -> Self {
        let d = smtp_server::filters::rate::DictionaryLimit::default();
        Self {
            tarpit_after: d.tarpit_after,
            disconnect_after: d.disconnect_after,
            window: d.window,
            tarpit_step: d.tarpit_step,
            tarpit_max: d.tarpit_max,
            mode: d.mode.into(),
        }
    }
}

impl Default for FailedLogins {
    fn default() -> Self {
        let d = smtp_server::filters::rate::LoginLimit::default();
        Self {
            max_failures: d.max_failures,
            window: d.window,
            lockout: d.lockout,
            mode: d.mode.into(),
        }
    }
}

/// `[greylist]`: postgrey's triplets (client /24 or /64, sender, recipient), off by
/// default. Logins, `[relay] trusted_networks` and `allowlist` are never greylisted.
/// Each unset key takes the default of
/// `smtp_server::filters::greylist::GreylistSettings` (postgrey's).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Greylist {
    /// `off` (default), `tag` (count what would be deferred) or `enforce` (`451 4.7.1`).
    pub mode: DefenceMode,
    /// How long a new triplet is deferred. Default 5 minutes.
    #[serde(deserialize_with = "duration")]
    pub delay: Duration,
    /// How long after the first attempt a retry is accepted. Default 2 days.
    #[serde(deserialize_with = "duration")]
    pub retry_window: Duration,
    /// How long a triplet that passed is remembered after its last message. Default 35
    /// days.
    #[serde(deserialize_with = "duration")]
    pub lifetime: Duration,
    /// Triplets a client network passes before it is allowlisted (0: never). Default 5.
    pub auto_allowlist_after: u32,
    /// Clients never greylisted, besides the trusted networks. Default none.
    #[serde(deserialize_with = "networks")]
    pub allowlist: Vec<IpNetwork>,
    /// Where the state is kept across restarts; default `<data_dir>/greylist.state`.
    pub state_file: Option<PathBuf>,
    /// How often a changed state is written. Default 1 minute.
    #[serde(deserialize_with = "duration")]
    pub save_interval: Duration,
    /// Triplets kept at most. Default 100 000.
    pub max_entries: usize,
}

impl Greylist {
    /// The library's settings: `state_file` the file to use (`None` when off),
    /// `trusted` the trusted networks.
    pub fn settings(
        &self,
        state_file: Option<PathBuf>,
        trusted: &[IpNetwork],
    ) -> smtp_server::filters::greylist::GreylistSettings {
        smtp_server::filters::greylist::GreylistSettings {
            mode: self.mode.into(),
            delay: self.delay,
            retry_window: self.retry_window,
            lifetime: self.lifetime,
            auto_allowlist_after: self.auto_allowlist_after,
            trusted_networks: trusted.to_vec(),
            allowlist: self.allowlist.clone(),
            state_file,
            save_interval: self.save_interval,
            max_entries: self.max_entries,
        }
    }
}

impl Default for Greylist {
    fn default() -> Self {
        let d = smtp_server::filters::greylist::GreylistSettings::default();
        Self {
            mode: d.mode.into(),
            delay: d.delay,
            retry_window: d.retry_window,
            lifetime: d.lifetime,
            auto_allowlist_after: d.auto_allowlist_after,
            allowlist: d.allowlist,
            state_file: d.state_file,
            save_interval: d.save_interval,
            max_entries: d.max_entries,
        }
    }
}

/// `[dnsbl]`: DNS blocklists and allowlists in postscreen's syntax
/// (`"zen.spamhaus.org=127.0.0.[2..11]*3"`, `"sender:dbl.example"`, a negative weight
/// for an allowlist), a score threshold, and the mode (`enforce`: `554 5.7.1` at RCPT).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Dnsbl {
    /// `off`, `tag` (default: log, count, `X-DNSBL` header) or `enforce`.
    pub mode: DefenceMode,
    /// The score at which a client is listed. Default 1.
    pub threshold: i32,
    /// The lists. Default none.
    #[serde(deserialize_with = "dns_lists")]
    pub lists: Vec<auth_checks::DnsList>,
}

/// `[dnsbl] lists`: each entry told with the whole of it when it does not parse.
fn dns_lists<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Vec<auth_checks::DnsList>, D::Error> {
    /// One entry, read on its own so that a problem has its line.
    struct Entry(auth_checks::DnsList);
    impl<'de> Deserialize<'de> for Entry {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            let text = String::deserialize(d)?;
            text.parse().map(Entry).map_err(|e| {
                serde::de::Error::custom(format!(
                    "{text:?}: {e} (write [helo:|sender:|domain:]zone[=127.0.0.[2..11]][*weight])"
                ))
            })
        }
    }
    Ok(Vec::<Entry>::deserialize(d)?
        .into_iter()
        .map(|e| e.0)
        .collect())
}

impl Dnsbl {
    /// The library's settings.
    pub fn settings(&self) -> auth_checks::DnsblSettings {
        auth_checks::DnsblSettings {
            mode: self.mode.into(),
            lists: self.lists.clone(),
            threshold: self.threshold,
        }
    }
}

impl Default for Dnsbl {
    fn default() -> Self {
        let d = auth_checks::DnsblSettings::default();
        Self {
            mode: d.mode.into(),
            threshold: d.threshold,
            lists: d.lists,
        }
    }
}

/// `[reverse_dns]`: the client's PTR name, confirmed forward (FCrDNS), shown in
/// `Received:`; `enforce` defers clients without one (`450 4.7.25`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReverseDns {
    /// `off`, `tag` (default: look up, show, count) or `enforce`.
    pub mode: DefenceMode,
    /// What `enforce` requires: `ptr` (default) or `confirmed`.
    pub require: auth_checks::Require,
}

impl ReverseDns {
    /// The library's settings.
    pub fn settings(&self) -> auth_checks::RdnsSettings {
        auth_checks::RdnsSettings {
            mode: self.mode.into(),
            require: self.require,
        }
    }
}

impl Default for ReverseDns {
    fn default() -> Self {
        let d = auth_checks::RdnsSettings::default();
        Self {
            mode: d.mode.into(),
            require: d.require,
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
    /// LMTP (RFC 2033): final delivery handed over by another MTA, one reply per
    /// recipient after the data. No authentication: loopback or a private network.
    Lmtp,
}

impl From<smtp_server::ListenerMode> for ListenerMode {
    fn from(mode: smtp_server::ListenerMode) -> Self {
        match mode {
            smtp_server::ListenerMode::Relay => Self::Relay,
            smtp_server::ListenerMode::Submission => Self::Submission,
            smtp_server::ListenerMode::Smtps => Self::Smtps,
            smtp_server::ListenerMode::Lmtp => Self::Lmtp,
        }
    }
}

impl From<ListenerMode> for smtp_server::ListenerMode {
    fn from(mode: ListenerMode) -> Self {
        match mode {
            ListenerMode::Relay => Self::Relay,
            ListenerMode::Submission => Self::Submission,
            ListenerMode::Smtps => Self::Smtps,
            ListenerMode::Lmtp => Self::Lmtp,
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
    /// Start deliveries by priority (RFC 6710 `MT-PRIORITY`, `[[listener]]` and
    /// `[[account]]` `priority`), highest first, when more are due than can start
    /// (default true); false: oldest first, priorities only kept and passed on.
    pub honour_mt_priority: bool,
    /// A message due this long without a delivery slot starts before higher
    /// priorities (default 15 minutes; "0s": priority alone decides).
    #[serde(deserialize_with = "duration")]
    pub priority_max_wait: Duration,
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
    /// mbox root, instead of `maildir`: mail for `user@domain` is appended to the file
    /// `<mbox>/<domain>/<user>` (mboxrd, dot-lock and `fcntl` locking).
    pub mbox: Option<PathBuf>,
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
    /// How delivered Maildir files are made durable: `batch` (default: deliveries
    /// share one `syncfs` per file system), `files` (they share a batch: each file
    /// `fdatasync`ed, each `new/` fsynced once) or `each` (every delivery on its own).
    #[serde(default)]
    pub maildir_sync: crate::delivery::MaildirSync,
    /// With `maildir_sync` `batch` or `files`: a sync starts at most this long after
    /// the previous one started, so that the deliveries arriving meanwhile share it;
    /// default 5 ms, at most 1 s; 0: each sync starts as soon as a delivery waits.
    #[serde(default, deserialize_with = "optional_duration")]
    pub maildir_sync_delay: Option<Duration>,
    /// Sub-addressing: the characters that separate a user from a tag (`bob+news@`
    /// goes to `bob`), as Postfix's `recipient_delimiter`; default `+`, empty: off.
    #[serde(default)]
    pub recipient_delimiter: RecipientDelimiter,
    /// Where sub-addressed mail goes in a Maildir: `off` (INBOX, default), `existing`
    /// (the folder `.tag` when it exists), `create` (the folder, made when missing).
    #[serde(default)]
    pub subaddress_folder: SubaddressFolder,
    /// `[local.quota]`: mailbox quotas (Maildir), counted in `maildirsize` as Dovecot
    /// counts them; absent: none.
    pub quota: Option<crate::delivery::QuotaConfig>,
    /// `[local.targets]`: where the mail of one domain or address goes instead of the
    /// default (`maildir`, `mbox` or `lmtp` above), by domain or address.
    #[serde(default)]
    pub targets: std::collections::BTreeMap<String, LocalTargetConfig>,
    /// Recipient verification at RCPT against the mailbox server: `lmtp` (ask the LMTP
    /// server of `lmtp`, cached) or `off`; unset: `lmtp` when `lmtp` is set.
    pub verify_recipients: Option<crate::verify::VerifyRecipients>,
    /// The verification probe's time limit (connect to RCPT reply); default 10 s.
    #[serde(default, deserialize_with = "optional_duration")]
    pub verify_timeout: Option<Duration>,
    /// How long an existing mailbox is remembered; default 1 hour, 0: not cached.
    #[serde(default, deserialize_with = "optional_duration")]
    pub verify_cache_positive: Option<Duration>,
    /// How long an unknown address is remembered; default 5 minutes, 0: not cached.
    #[serde(default, deserialize_with = "optional_duration")]
    pub verify_cache_negative: Option<Duration>,
    /// How many addresses the verification cache holds; default 100000, 0: no cache.
    pub verify_cache_size: Option<usize>,
    /// Verification probes at once; default 20, 0: no limit.
    pub verify_concurrency: Option<usize>,
}

/// An entry of `[local.targets]`: exactly one of the three (`mta check-config` says so).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalTargetConfig {
    /// A Maildir root: `<maildir>/<domain>/<user>/`.
    pub maildir: Option<PathBuf>,
    /// An mbox root: `<mbox>/<domain>/<user>`.
    pub mbox: Option<PathBuf>,
    /// An LMTP server (`ip:port` or `unix:/path`).
    pub lmtp: Option<LmtpAddress>,
}

/// `[local] recipient_delimiter`: none, one or more of the characters
/// [`RecipientDelimiter::ALLOWED`], each of which starts a sub-address tag.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct RecipientDelimiter(String);

impl RecipientDelimiter {
    /// The characters a delimiter may be: `+` (Dovecot's, Gmail's), `-` (qmail's, Exim's
    /// suffixes) and `_`. Others are refused: `.` and letters split ordinary names,
    /// `/` and `@` are no part of a safe name, and the rest is rarely meant.
    pub const ALLOWED: &str = "+-_";

    /// The delimiter characters (empty: sub-addressing is off).
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for RecipientDelimiter {
    /// `+`: see `docs/mailboxes.md`.
    fn default() -> Self {
        Self("+".into())
    }
}

impl TryFrom<String> for RecipientDelimiter {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        match s.chars().find(|&c| !Self::ALLOWED.contains(c)) {
            Some(c) => Err(format!(
                "{c:?} cannot be a delimiter (use any of \"+\", \"-\", \"_\", or \"\" for none)"
            )),
            None => Ok(Self(s)),
        }
    }
}

/// `[aliases]`: see `crate::aliases` and docs/mailboxes.md, "Aliases and forwarding".
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Aliases {
    /// A TOML file of more entries (top-level keys), read again at every reload.
    #[serde(default)]
    pub file: Option<PathBuf>,
    /// Levels of aliases followed at most (default 10).
    #[serde(default = "defaults::alias_max_depth")]
    pub max_depth: usize,
    /// Addresses one recipient may expand to at most (default 1000).
    #[serde(default = "defaults::alias_max_expansion")]
    pub max_expansion: usize,
    /// The envelope sender of forwarded mail: `srs` (default) or `keep`.
    #[serde(default)]
    pub forward_sender: ForwardSender,
    /// The domain of SRS addresses (one of `[local] domains`); default: `hostname` when
    /// it is a local domain, else the first local domain.
    #[serde(default)]
    pub srs_domain: Option<String>,
    /// The SRS secret (its bytes, trailing white space left out); default: `srs.key` in
    /// the queue directory, made at the first start.
    #[serde(default)]
    pub srs_secret_file: Option<PathBuf>,
    /// The entries: `"sales@example.org" = ["a@example.org", "b@far.test"]`,
    /// `"@example.org" = "catchall@example.org"`, `"@old.example" = "@example.org"`.
    #[serde(default)]
    pub map: std::collections::BTreeMap<String, AliasTargets>,
}

/// The targets of an alias: one address or a list.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(untagged, expecting = "an address or a list of addresses")]
pub enum AliasTargets {
    /// `"a@example.org"`
    One(String),
    /// `["a@example.org", "b@far.test"]`
    Many(Vec<String>),
}

impl AliasTargets {
    /// The targets, as a list.
    pub fn to_vec(&self) -> Vec<String> {
        match self {
            Self::One(one) => vec![one.clone()],
            Self::Many(many) => many.clone(),
        }
    }
}

/// `[aliases] forward_sender`: the envelope sender of mail forwarded to a remote address.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ForwardSender {
    /// The Sender Rewriting Scheme: `SRS0=HHHH=TT=origin.example=alice@srs_domain`, so
    /// that SPF at the next hop checks our domain; bounces come back and are forwarded
    /// to the original sender.
    #[default]
    Srs,
    /// The original sender: SPF at the next hop may fail unless it trusts us (DKIM
    /// signatures survive either way).
    Keep,
}

/// `[[account]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Account {
    /// The login, also a local mailbox when its domain is local.
    pub username: String,
    /// The password: plain, `$argon2id$...`, or SHA-512-crypt `$6$...`.
    pub password: String,
    /// The priority (RFC 6710, -9 to 9) of this login's mail when it gives no
    /// `MT-PRIORITY` (default 0).
    #[serde(default)]
    pub priority: i8,
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
    /// NOOP, RSET, VRFY, EXPN and HELP since the last accepted message before each
    /// counts as an error.
    pub max_junk_commands: Option<u32>,
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
    /// How long a session may last ("0s": no limit).
    #[serde(deserialize_with = "optional_duration")]
    pub max_session_duration: Option<Duration>,
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
    /// MTA-STS (RFC 8461) towards domains that publish a policy (`on` by default).
    pub mta_sts: MtaSts,
    /// Where fetched MTA-STS policies are kept across restarts (default: the
    /// `mta-sts` directory under the queue's path).
    pub mta_sts_cache: Option<PathBuf>,
    /// Time for one domain's MTA-STS lookup and policy fetch (default 60 s).
    #[serde(deserialize_with = "duration")]
    pub mta_sts_timeout: Duration,
    /// The HTTPS port of MTA-STS policy servers (443; another only for tests).
    pub mta_sts_port: u16,
    /// DANE (RFC 7672) towards MX hosts with secure TLSA records (`off` by default,
    /// until a validating resolver is set up in `dane_resolver`).
    pub dane: Dane,
    /// The validating resolver DANE lookups ask, on loopback (its AD bit is trusted).
    pub dane_resolver: SocketAddr,
    /// A name known to be signed, whose DNSKEY `mta check-config` asks
    /// `dane_resolver` for to see that it validates (`.` by default).
    pub dane_self_test: String,
    /// How long one DANE query (MX, address or TLSA records) may take (5 s); when it
    /// passes, the host's TLSA lookup has failed (the host is skipped).
    #[serde(deserialize_with = "duration")]
    pub dane_timeout: Duration,
    /// Traffic shaping: the first pause after a destination throttles us (`421`,
    /// `4.7.x` rate limits); it doubles with each throttling reply (default 30 s).
    #[serde(deserialize_with = "duration")]
    pub backoff: Duration,
    /// The longest traffic-shaping pause (default 10 min).
    #[serde(deserialize_with = "duration")]
    pub backoff_max: Duration,
    /// The local address outbound connections leave from, with its EHLO name.
    pub source: Option<SourceAddress>,
    /// Per-destination policies (`[[outbound.destination]]`), the first match wins.
    pub destination: Vec<DestinationPolicy>,
    /// Source address pools by sender domain (`[[outbound.sender_source]]`).
    pub sender_source: Vec<SenderSource>,
}

/// The problems of the traffic-shaping and source keys of `[outbound]`: (key,
/// sentence) for `mta check-config` (the destinations': [`destination_problems`]).
pub(crate) fn shaping_problems(o: &Outbound) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    if o.backoff.is_zero() || o.backoff > o.backoff_max {
        out.push((
            "backoff",
            "[outbound] backoff: must be more than 0 and at most backoff_max".to_owned(),
        ));
    }
    let mut seen = std::collections::HashSet::new();
    for s in &o.sender_source {
        let at = format!("[[outbound.sender_source]] domain = {:?}", s.domain);
        if s.addresses.is_empty() {
            out.push(("sender_source", format!("{at}: give at least one address")));
        }
        if s.domain.is_empty() || !seen.insert(s.domain.to_ascii_lowercase()) {
            out.push(("sender_source", format!("{at}: empty or given twice")));
        }
    }
    out
}

/// The problems of the `[[outbound.destination]]` entries: (the entry's index,
/// sentence) for `mta check-config`.
pub(crate) fn destination_problems(o: &Outbound) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (i, d) in o.destination.iter().enumerate() {
        let (key, pattern) = match (&d.pattern, &d.mx) {
            (Some(pattern), None) => ("match", pattern),
            (None, Some(pattern)) => ("mx", pattern),
            (both, _) => {
                let which = if both.is_some() {
                    "not both"
                } else {
                    "one of them"
                };
                out.push((
                    i,
                    format!(
                        "[[outbound.destination]] (entry {}): give match (a recipient domain) \
                         or mx (an MX host name), {which}",
                        i + 1
                    ),
                ));
                continue;
            }
        };
        let at = format!("[[outbound.destination]] {key} = {pattern:?}");
        let name = pattern.strip_prefix("*.").unwrap_or(pattern);
        let allowed = if key == "mx" { "-._" } else { "-._[]:" };
        if name.is_empty()
            || name.contains('*')
            || name.starts_with('.')
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || allowed.contains(c))
        {
            let what = if key == "mx" {
                "a host name (mx.example.net) or *.example.net"
            } else {
                "a domain (example.org) or *.example.org"
            };
            out.push((i, format!("{at}: give {what}")));
        }
        if !seen.insert((key, pattern.to_ascii_lowercase())) {
            out.push((i, format!("{at}: given twice")));
        }
        if key == "mx" && d.relay.is_some() {
            out.push((
                i,
                format!(
                    "{at}: relay is for a recipient domain (match); an mx entry applies to \
                     connections to MX hosts already chosen"
                ),
            ));
        }
        if let Some(tls_name) = &d.tls_name {
            let valid = !tls_name.is_empty()
                && tls_name.split('.').all(|label| {
                    !label.is_empty()
                        && label.len() <= 63
                        && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                });
            if !valid {
                out.push((
                    i,
                    format!("{at}: tls_name {tls_name:?}: give a host name (mx.example.net)"),
                ));
            }
            if matches!(
                d.tls,
                Some(OutboundTls::Opportunistic | OutboundTls::Disabled)
            ) {
                out.push((
                    i,
                    format!(
                        "{at}: tls_name needs tls = \"required\" (a certificate is checked \
                         for a name only then)"
                    ),
                ));
            }
        }
        if d.port == Some(0) {
            out.push((i, format!("{at}: port must be from 1 to 65535")));
        }
        if d.max_connections == Some(0) {
            out.push((i, format!("{at}: max_connections must be at least 1")));
        }
        if d.max_messages_per_minute == Some(0) {
            out.push((
                i,
                format!("{at}: max_messages_per_minute must be at least 1"),
            ));
        }
    }
    out
}

/// A local address to connect from, and the EHLO name that belongs to it:
/// `{ address = "192.0.2.2", helo = "out2.example.org" }`, or just `"192.0.2.2"`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum SourceAddress {
    /// An address alone (EHLO with the name otherwise in force).
    Address(IpAddr),
    /// An address and its EHLO name.
    Named {
        /// The local address.
        address: IpAddr,
        /// The EHLO name used from it.
        helo: Option<String>,
    },
}

impl SourceAddress {
    /// The address.
    pub fn address(&self) -> IpAddr {
        match self {
            Self::Address(a) | Self::Named { address: a, .. } => *a,
        }
    }

    /// Its own EHLO name, when given.
    pub fn helo(&self) -> Option<&str> {
        match self {
            Self::Address(_) => None,
            Self::Named { helo, .. } => helo.as_deref(),
        }
    }
}

/// `[[outbound.destination]]`: how mail to matching recipient domains, or over
/// connections to matching MX hosts, leaves. Exactly one of `match` and `mx`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DestinationPolicy {
    /// A recipient domain: `example.org` (that domain) or `*.example.org` (its
    /// subdomains).
    #[serde(rename = "match")]
    pub pattern: Option<String>,
    /// An MX host name: `mx.example.net` or `*.example.net` (its subdomains); the
    /// entry applies to each connection to a matching MX host, whatever the domain.
    pub mx: Option<String>,
    /// STARTTLS policy for it (as `[outbound] tls`).
    pub tls: Option<OutboundTls>,
    /// With `tls = "required"`: the name the certificate must carry instead of the MX
    /// host name.
    pub tls_name: Option<String>,
    /// The port of its MX hosts.
    pub port: Option<u16>,
    /// A relay host for it (`host` or `host:port`) instead of its MX hosts.
    #[serde(default, deserialize_with = "optional_from_str")]
    pub relay: Option<RelayHost>,
    /// Deliveries at once to it (instead of `max_per_destination`).
    pub max_connections: Option<usize>,
    /// Messages a minute to it at most (a message over the rate waits, up to a minute).
    pub max_messages_per_minute: Option<u32>,
    /// The local address its connections leave from.
    pub source: Option<SourceAddress>,
    /// The EHLO name towards it.
    pub helo: Option<String>,
}

/// `[[outbound.sender_source]]`: mail from a sender domain leaves from a pool of
/// local addresses, taken in turn.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SenderSource {
    /// The sender's domain (the envelope sender's, exactly, without case).
    pub domain: String,
    /// The pool.
    pub addresses: Vec<SourceAddress>,
    /// The EHLO name for addresses that do not name their own.
    pub helo: Option<String>,
}

/// `[outbound] dane`
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dane {
    /// Look up TLSA records (through `dane_resolver`) and apply them.
    On,
    /// No DANE.
    #[default]
    Off,
}

/// `[outbound] mta_sts`
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MtaSts {
    /// Look up and apply the policies of destination domains.
    #[default]
    On,
    /// Ignore MTA-STS.
    Off,
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

/// `[tls_reports]`: TLS reporting (RFC 8460), described in docs/transport-security.md.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsReporting {
    /// Send reports (default on: reports exist only while MTA-STS records sessions, and
    /// go only to domains that publish a `_smtp._tls` record).
    pub enabled: bool,
    /// The report period (24 h; periods are aligned to multiples of it since
    /// 1970-01-01 00:00 UTC, so the default is the UTC day). Shorter only for tests.
    #[serde(deserialize_with = "duration")]
    pub interval: Duration,
    /// `organization-name` of the reports; default: `hostname`.
    pub organization_name: Option<String>,
    /// `contact-info` of the reports; default: the `from` address.
    pub contact_info: Option<String>,
    /// The address reports are sent from (header and envelope); default
    /// `postmaster@<hostname>`.
    pub from: Option<String>,
    /// Distinct `failure-details` entries kept per policy and period; more failures
    /// are counted, not detailed.
    pub max_failure_details: usize,
    /// Policy domains kept per period; events for more are dropped (and logged).
    pub max_domains: usize,
    /// Time for one `https:` report upload.
    #[serde(deserialize_with = "duration")]
    pub post_timeout: Duration,
    /// How long after a failed `https:` upload it is tried again (1 h).
    #[serde(deserialize_with = "duration")]
    pub post_retry: Duration,
    /// How long a failed `https:` upload is tried again before it is dropped (24 h;
    /// zero: never tried again).
    #[serde(deserialize_with = "duration")]
    pub post_retry_for: Duration,
}

impl Default for TlsReporting {
    fn default() -> Self {
        Self {
            enabled: true,
            interval: Duration::from_secs(24 * 60 * 60),
            organization_name: None,
            contact_info: None,
            from: None,
            max_failure_details: 100,
            max_domains: 10_000,
            post_timeout: Duration::from_secs(60),
            post_retry: Duration::from_secs(60 * 60),
            post_retry_for: Duration::from_secs(24 * 60 * 60),
        }
    }
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
    /// The largest body the milter may put in place of the message's (bytes); a
    /// larger one is the milter failing.
    #[serde(default = "defaults::milter_max_replaced_body")]
    pub max_replaced_body: usize,
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
    /// `[[listener]] mode = "lmtp"` (not in the defaults: mail handed over for final
    /// delivery was filtered by the MTA that hands it over).
    Lmtp,
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
            smtp_server::ListenerMode::Lmtp => Self::Lmtp,
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
    /// The longest answer read (bytes); a longer one is the service failing.
    #[serde(default = "defaults::policy_max_reply_size")]
    pub max_reply_size: usize,
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
            honour_mt_priority: true,
            priority_max_wait: Duration::from_secs(15 * 60),
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
            mta_sts: MtaSts::default(),
            mta_sts_cache: None,
            // RFC 8461 §3.3 suggests a minute for the fetch.
            mta_sts_timeout: Duration::from_secs(60),
            mta_sts_port: 443,
            dane: Dane::default(),
            dane_resolver: SocketAddr::from(([127, 0, 0, 1], 53)),
            dane_self_test: ".".to_owned(),
            dane_timeout: Duration::from_secs(5),
            backoff: Duration::from_secs(30),
            backoff_max: Duration::from_secs(600),
            source: None,
            destination: Vec::new(),
            sender_source: Vec::new(),
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
