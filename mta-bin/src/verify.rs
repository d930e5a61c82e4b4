//! Recipient verification against the LMTP mailbox server: at RCPT, a recipient in a
//! local domain is asked about to the server that will take the mail (Dovecot), so that
//! an unknown user is refused at once (`550 5.1.1`) instead of accepted and bounced
//! later (backscatter).
//!
//! ```text
//!  RCPT TO:<bob@example.org> ──► cache? ──hit──► accept / the cached refusal
//!                                  │ miss
//!                                  ▼
//!          LMTP server: LHLO, MAIL FROM:<>, RCPT TO:<bob@example.org>, QUIT (never DATA)
//!                                  │
//!        2yz: accept (cached) · 5yz: refuse with its reply (5.1.x cached) · 4yz: defer
//!        no answer in time, refused connection: 451 4.4.3 (our own users: accept)
//! ```
//!
//! The probe runs after the local-recipient list (`[local] mailboxes` and the accounts)
//! when there is one, so it only asks about addresses the list lets through; with
//! `accept_any_user` it is the only check. `docs/mailboxes.md` ("Recipient verification
//! (LMTP)") tells an operator how it behaves and how to set Dovecot up for it.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::Deserialize;
use smtp_client::{ClientError, Connection, Timeouts};
use smtp_proto::{
    ClientConfig, Command, EnhancedStatus, ForwardPath, HeloName, Host, MailParameters,
    RcptParameters, Reply, ReplyCode, ReversePath,
};
use smtp_server::filters::DomainSet;
use smtp_server::{AsyncCheck, CheckFuture, Decision, Flow, RcptRequest, SessionInfo};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::aliases::Aliases;
use crate::config::Config;
use crate::delivery::{Lmtp, LmtpAddress, LocalRoutes, LocalTarget};

/// `[local] verify_recipients`: whether recipients of local domains are verified at
/// RCPT by asking the mailbox server. Unset: `lmtp` when local mail goes over LMTP
/// (`[local] lmtp`, or a `[local.targets]` entry).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VerifyRecipients {
    /// Ask the LMTP server the recipient's mail goes to (a cached RCPT probe).
    Lmtp,
    /// Do not ask: accept what the local-recipient list (or `accept_any_user`) accepts.
    Off,
}

/// How verification behaves: the probe's time limit and the cache.
///
/// ```
/// let settings = mta_bin::verify::VerifySettings::default();
/// assert_eq!(settings.timeout, std::time::Duration::from_secs(10));
/// assert_eq!(settings.cache_size, 100_000);
/// assert_eq!(settings.concurrency, 20);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifySettings {
    /// The whole probe (connect, greeting, LHLO, MAIL, RCPT) at most; default 10 s.
    pub timeout: Duration,
    /// How long an existing mailbox is remembered; default 1 hour. Zero: not cached.
    pub positive_ttl: Duration,
    /// How long an unknown address (a `5.1.x` refusal) is remembered; default 5
    /// minutes, so that a new mailbox is soon found. Zero: not cached.
    pub negative_ttl: Duration,
    /// How many addresses the cache holds at most (the oldest go first); default
    /// 100 000. Zero: no cache.
    pub cache_size: usize,
    /// Probes at once, over all sessions; more wait for one to finish, within
    /// `timeout`. A flood of unknown recipients then costs the mailbox server this
    /// many LMTP sessions at most (Dovecot's LMTP service takes 100 by default), not
    /// one per client. Default 20 (Postfix's default destination concurrency). Zero:
    /// no limit.
    pub concurrency: usize,
}

impl VerifySettings {
    /// The default probe timeout.
    pub const TIMEOUT: Duration = Duration::from_secs(10);
    /// The default time an existing mailbox is remembered.
    pub const POSITIVE_TTL: Duration = Duration::from_secs(3600);
    /// The default time an unknown address is remembered.
    pub const NEGATIVE_TTL: Duration = Duration::from_secs(300);
    /// The default cache size.
    pub const CACHE_SIZE: usize = 100_000;
    /// The default number of probes at once.
    pub const CONCURRENCY: usize = 20;
}

impl Default for VerifySettings {
    fn default() -> Self {
        Self {
            timeout: Self::TIMEOUT,
            positive_ttl: Self::POSITIVE_TTL,
            negative_ttl: Self::NEGATIVE_TTL,
            cache_size: Self::CACHE_SIZE,
            concurrency: Self::CONCURRENCY,
        }
    }
}

/// What recipient verification did so far, for metrics (`docs/metrics.md`): answers
/// by result, and the probes running or waiting for a turn now. Shared across reloads.
///
/// It is a `prometheus_client` `Collector`: `recipient_verifications_total{result,
/// cached}` and the gauges `recipient_verification_probes{state}`.
///
/// ```
/// let stats = mta_bin::verify::VerifyStats::default();
/// assert_eq!(stats.answers(), [0; 6]);
/// ```
#[derive(Debug, Default)]
pub struct VerifyStats {
    /// By [`Outcome`] (its index), from a probe and from the cache.
    probed: [AtomicU64; 6],
    cached: [AtomicU64; 6],
    running: AtomicU64,
    waiting: AtomicU64,
}

/// What a recipient's verification came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    /// The server takes it.
    Exists,
    /// An unknown address (`5.1.x`, cached).
    Unknown,
    /// Another refusal (a full mailbox), passed on.
    Refused,
    /// The server could not be asked (`451 4.4.3`, or accepted for our own users).
    Unavailable,
    /// Not verified: the server refused the probe itself, or a UTF-8 address and no
    /// SMTPUTF8.
    NotVerified,
    /// A `4yz` from the server, passed on.
    Deferred,
}

impl Outcome {
    const ALL: [(Self, &'static str); 6] = [
        (Self::Exists, "exists"),
        (Self::Unknown, "unknown"),
        (Self::Refused, "refused"),
        (Self::Unavailable, "unavailable"),
        (Self::NotVerified, "not_verified"),
        (Self::Deferred, "deferred"),
    ];
}

impl VerifyStats {
    /// Answers so far (probed and cached together), in the order exists, unknown,
    /// refused, unavailable, not verified, deferred.
    pub fn answers(&self) -> [u64; 6] {
        std::array::from_fn(|i| {
            self.probed[i].load(Ordering::Relaxed) + self.cached[i].load(Ordering::Relaxed)
        })
    }

    fn count(&self, outcome: Outcome, cached: bool) {
        let counters = if cached { &self.cached } else { &self.probed };
        counters[outcome as usize].fetch_add(1, Ordering::Relaxed);
    }
}

/// Counts one in `gauge` while it lives.
struct Gauged<'a>(&'a AtomicU64);

impl<'a> Gauged<'a> {
    fn new(gauge: &'a AtomicU64) -> Self {
        gauge.fetch_add(1, Ordering::Relaxed);
        Self(gauge)
    }
}

impl Drop for Gauged<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl prometheus_client::collector::Collector for VerifyStats {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder<'_>,
    ) -> std::fmt::Result {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::MetricType;
        use prometheus_client::metrics::counter::ConstCounter;
        use prometheus_client::metrics::gauge::ConstGauge;

        let mut family = encoder.encode_descriptor(
            "recipient_verifications",
            "Local recipients verified at RCPT against the LMTP server, by result, answered by a probe or from the cache.",
            None,
            MetricType::Counter,
        )?;
        for (i, (_, result)) in Outcome::ALL.iter().enumerate() {
            for (cached, counters) in [("no", &self.probed), ("yes", &self.cached)] {
                ConstCounter::new(counters[i].load(Ordering::Relaxed))
                    .encode(family.encode_family(&[("result", *result), ("cached", cached)])?)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "recipient_verification_probes",
            "Verification probes now: running (connected to the LMTP server, or connecting), or waiting for a turn (verify_concurrency).",
            None,
            MetricType::Gauge,
        )?;
        for (state, gauge) in [("running", &self.running), ("waiting", &self.waiting)] {
            ConstGauge::new(gauge.load(Ordering::Relaxed))
                .encode(family.encode_family(&[("state", state)])?)?;
        }
        Ok(())
    }
}

/// The rcpt-stage check that asks the LMTP server about recipients of local domains.
/// Clones share the cache.
///
/// ```no_run
/// use mta_bin::verify::{LmtpVerifier, VerifySettings};
/// use smtp_server::filters::DomainSet;
///
/// let address = "127.0.0.1:24".to_owned().try_into().unwrap();
/// let verifier = LmtpVerifier::new(
///     address,
///     "mx.example.org",
///     DomainSet::new(["example.org"]),
///     VerifySettings::default(),
/// );
/// let layer = smtp_server::filter_async(verifier);
/// # let _ = layer;
/// ```
#[derive(Clone, Debug)]
pub struct LmtpVerifier {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    servers: Servers,
    /// Addresses that are not mailboxes: aliases and SRS addresses, not asked about.
    aliases: Option<Arc<Aliases>>,
    hostname: HeloName,
    domains: DomainSet,
    settings: VerifySettings,
    cache: Mutex<Cache>,
    /// Probes running now; `None`: no limit.
    probes: Option<tokio::sync::Semaphore>,
    stats: Arc<VerifyStats>,
}

impl LmtpVerifier {
    /// Verification of the recipients of `domains` against the LMTP server at
    /// `address`, introducing ourselves (LHLO) as `hostname`.
    pub fn new(
        address: LmtpAddress,
        hostname: &str,
        domains: DomainSet,
        settings: VerifySettings,
    ) -> Self {
        let target = LocalTarget::Lmtp(Lmtp::new(address.clone(), hostname));
        let servers = Servers {
            routes: LocalRoutes::new(Some(target), ""),
            default: Some(address),
            by_key: HashMap::new(),
        };
        Self::with_servers(servers, None, hostname, domains, settings, Arc::default())
    }

    fn with_servers(
        servers: Servers,
        aliases: Option<Arc<Aliases>>,
        hostname: &str,
        domains: DomainSet,
        settings: VerifySettings,
        stats: Arc<VerifyStats>,
    ) -> Self {
        let hostname = HeloName::parse(hostname).unwrap_or(HeloName::Other("localhost".into()));
        let cache = Mutex::new(Cache::new(settings.cache_size));
        let probes =
            (settings.concurrency > 0).then(|| tokio::sync::Semaphore::new(settings.concurrency));
        Self {
            inner: Arc::new(Inner {
                servers,
                aliases,
                hostname,
                domains,
                settings,
                cache,
                probes,
                stats,
            }),
        }
    }

    /// The verifier `config` asks for: each local recipient whose mail goes over LMTP
    /// (`[local] lmtp`, or the `[local.targets]` entry of its address or domain) is
    /// asked about to that server; the others (Maildir, mbox) are not. `None` when
    /// `[local] verify_recipients` is `off`, or when no local mail goes over LMTP.
    /// `aliases` (`[aliases]`) are not asked about: an alias (or a catch-all's address)
    /// and an SRS address stand for other addresses, and are no mailbox of the server.
    /// `stats` counts what it does (shared across reloads).
    pub fn from_config(
        config: &Config,
        aliases: Option<&Arc<Aliases>>,
        stats: &Arc<VerifyStats>,
    ) -> Option<Self> {
        let local = &config.local;
        if local.verify_recipients == Some(VerifyRecipients::Off) {
            return None;
        }
        let by_key: HashMap<String, LmtpAddress> = local
            .targets
            .iter()
            .filter_map(|(key, t)| Some((key.to_lowercase(), t.lmtp.clone()?)))
            .collect();
        let default = local.lmtp.clone();
        if default.is_none() && by_key.is_empty() {
            return None;
        }
        let servers = Servers {
            routes: LocalRoutes::from_config(config),
            default,
            by_key,
        };
        let defaults = VerifySettings::default();
        let settings = VerifySettings {
            timeout: local.verify_timeout.unwrap_or(defaults.timeout),
            positive_ttl: local.verify_cache_positive.unwrap_or(defaults.positive_ttl),
            negative_ttl: local.verify_cache_negative.unwrap_or(defaults.negative_ttl),
            cache_size: local.verify_cache_size.unwrap_or(defaults.cache_size),
            concurrency: local.verify_concurrency.unwrap_or(defaults.concurrency),
        };
        Some(Self::with_servers(
            servers,
            aliases.cloned(),
            &config.hostname,
            DomainSet::new(&local.domains),
            settings,
            Arc::clone(stats),
        ))
    }

    /// What it did so far.
    pub fn stats(&self) -> &Arc<VerifyStats> {
        &self.inner.stats
    }

    /// How many addresses the cache holds now (expired ones included until met).
    pub fn cached(&self) -> usize {
        self.inner.cache().len()
    }
}

impl AsyncCheck<RcptRequest> for LmtpVerifier {
    fn check(&self, req: RcptRequest) -> CheckFuture<RcptRequest> {
        let inner = Arc::clone(&self.inner);
        Box::pin(async move {
            let Some(key) = inner.local_key(&req.to) else {
                return Ok(Flow::Continue(req));
            };
            if inner.is_alias(&req.to) {
                return Ok(Flow::Continue(req));
            }
            let Some(server) = inner.servers.of(&key).cloned() else {
                return Ok(Flow::Continue(req));
            };
            match inner.cache().lookup(&key, Instant::now()) {
                Some(Cached::Exists) => {
                    tracing::debug!(rcpt = %key, "recipient verification: known (cached)");
                    inner.stats.count(Outcome::Exists, true);
                    return Ok(Flow::Continue(req));
                }
                Some(Cached::Refused(reply)) => {
                    tracing::debug!(rcpt = %key, "recipient verification: refused (cached)");
                    inner.stats.count(Outcome::Unknown, true);
                    return Ok(Flow::Decide(Decision::from_reply(reply)));
                }
                None => {}
            }
            let utf8 = req.to.is_utf8();
            // Waiting for a turn counts in the probe's time.
            let probe = async {
                let _turn = match &inner.probes {
                    Some(probes) => {
                        let _waiting = Gauged::new(&inner.stats.waiting);
                        match probes.acquire().await {
                            Ok(turn) => Some(turn),
                            Err(_) => return Answer::Unavailable("closed".into()),
                        }
                    }
                    None => None,
                };
                let _running = Gauged::new(&inner.stats.running);
                inner.probe(&server, req.to.clone(), utf8).await
            };
            let answer = match tokio::time::timeout(inner.settings.timeout, probe).await {
                Ok(answer) => answer,
                Err(_) => Answer::Unavailable("no answer in time".into()),
            };
            Ok(inner.decide(req, &key, &server, answer))
        })
    }
}

/// Which LMTP server a local recipient's mail goes to: the routes of local delivery,
/// and the LMTP address of each of their keys.
#[derive(Debug)]
struct Servers {
    routes: LocalRoutes,
    /// The default target's, when it is LMTP.
    default: Option<LmtpAddress>,
    /// `[local.targets]` entries that are LMTP, by lower-cased address or domain.
    by_key: HashMap<String, LmtpAddress>,
}

impl Servers {
    /// The LMTP server of `address`, or `None` when its mail does not go over LMTP.
    fn of(&self, address: &str) -> Option<&LmtpAddress> {
        let (key, _) = self.routes.route(address)?;
        if key.is_empty() {
            self.default.as_ref()
        } else {
            self.by_key.get(key)
        }
    }
}

/// What the mailbox server said about a recipient.
#[derive(Debug)]
enum Answer {
    /// Its reply to RCPT.
    Rcpt(Reply),
    /// It could not be asked (connection, greeting, LHLO, MAIL, timeout).
    Unavailable(String),
    /// It cannot be asked about this address (a UTF-8 address, and no SMTPUTF8).
    Unsupported,
}

impl Inner {
    /// The lower-cased address when `to` is in one of our local domains.
    fn local_key(&self, to: &ForwardPath) -> Option<String> {
        let ForwardPath::Mailbox(m) = to else {
            return None;
        };
        let local = match m.host() {
            Host::Domain(domain) => self.domains.contains(domain),
            Host::Address(ip) => self.domains.contains_address(ip),
        };
        local.then(|| m.as_str().to_lowercase())
    }

    /// Whether `to` is an alias or an SRS address (with `[aliases]`).
    fn is_alias(&self, to: &ForwardPath) -> bool {
        let (Some(aliases), ForwardPath::Mailbox(m)) = (&self.aliases, to) else {
            return false;
        };
        aliases.reverse_srs(m).is_some() || aliases.is_alias(m.as_str())
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Connects to the server and asks; the caller bounds the time.
    async fn probe(&self, server: &LmtpAddress, to: ForwardPath, utf8: bool) -> Answer {
        let result = match server {
            LmtpAddress::Tcp(address) => match tokio::net::TcpStream::connect(address).await {
                Ok(stream) => self.ask(stream, to, utf8).await,
                Err(e) => Err(ClientError::Io(e)),
            },
            #[cfg(unix)]
            LmtpAddress::Unix(path) => match tokio::net::UnixStream::connect(path).await {
                Ok(stream) => self.ask(stream, to, utf8).await,
                Err(e) => Err(ClientError::Io(e)),
            },
            #[cfg(not(unix))]
            LmtpAddress::Unix(_) => Err(ClientError::Io(std::io::Error::other(
                "Unix sockets need a Unix system",
            ))),
        };
        result.unwrap_or_else(|e| Answer::Unavailable(e.to_string()))
    }

    /// LHLO, `MAIL FROM:<>`, `RCPT TO:<to>`; then QUIT, in the background.
    async fn ask<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
        &self,
        stream: S,
        to: ForwardPath,
        utf8: bool,
    ) -> Result<Answer, ClientError> {
        let config = ClientConfig {
            lmtp: true,
            ..ClientConfig::default()
        };
        let t = self.settings.timeout;
        let timeouts = Timeouts {
            greeting: t,
            command: t,
            data_start: t,
            data_block: t,
            data_end: t,
        };
        let mut conn = Connection::open(stream, config, timeouts).await?;
        let offers_utf8 = conn.hello(self.hostname.clone()).await?.smtputf8;
        if utf8 && !offers_utf8 {
            tokio::spawn(conn.quit());
            return Ok(Answer::Unsupported);
        }
        let mail = conn
            .command(Command::Mail {
                from: ReversePath::Null,
                params: MailParameters {
                    smtputf8: utf8,
                    ..MailParameters::default()
                },
            })
            .await?;
        if !mail.is_positive_completion() {
            tokio::spawn(conn.quit());
            return Ok(Answer::Unavailable(format!("MAIL FROM:<> refused: {mail}")));
        }
        let rcpt = conn
            .command(Command::Rcpt {
                to,
                params: RcptParameters::default(),
            })
            .await?;
        // QUIT ends the transaction as RSET would; no one waits for its reply.
        tokio::spawn(conn.quit());
        Ok(Answer::Rcpt(rcpt))
    }

    /// The stage's answer to what the server said, remembered when it may be.
    fn decide(
        &self,
        req: RcptRequest,
        key: &str,
        server: &LmtpAddress,
        answer: Answer,
    ) -> Flow<RcptRequest> {
        let now = Instant::now();
        let reply = match answer {
            Answer::Rcpt(reply) => reply,
            Answer::Unsupported => {
                tracing::debug!(rcpt = %key, "recipient verification: UTF-8 address, server without SMTPUTF8; not verified");
                self.stats.count(Outcome::NotVerified, false);
                return Flow::Continue(req);
            }
            Answer::Unavailable(why) => {
                tracing::warn!(rcpt = %key, server = %server, error = %why, "recipient verification unavailable");
                self.stats.count(Outcome::Unavailable, false);
                // Our own users' mail (a login, or handed in on this machine, where no
                // client retries) is queued as without verification; the queue retries.
                let ours = req.session.authenticated.is_some()
                    || req.session.protocol == SessionInfo::LOCAL;
                if ours {
                    return Flow::Continue(req);
                }
                return Flow::Decide(Decision::defer::<451>(
                    EnhancedStatus::new(4, 4, 3).unwrap_or(EnhancedStatus::SYSTEM_TEMPORARY),
                    "Recipient verification unavailable, try again later",
                ));
            }
        };
        if reply.is_positive_completion() {
            tracing::debug!(rcpt = %key, "recipient verification: known");
            self.stats.count(Outcome::Exists, false);
            let ttl = self.settings.positive_ttl;
            self.cache().insert(key, Cached::Exists, now, ttl);
            return Flow::Continue(req);
        }
        if is_protocol_refusal(&reply) {
            // The server did not understand the question: that says nothing about the
            // mailbox, so the mail is taken as without verification.
            tracing::warn!(rcpt = %key, server = %server, %reply, "recipient verification: the server refused the probe itself; not verified");
            self.stats.count(Outcome::NotVerified, false);
            return Flow::Continue(req);
        }
        let passed = passed_on(&reply);
        tracing::info!(rcpt = %key, %reply, "recipient verification: refused by the mailbox server");
        if is_unknown_address(&reply) {
            self.stats.count(Outcome::Unknown, false);
            let ttl = self.settings.negative_ttl;
            self.cache()
                .insert(key, Cached::Refused(passed.clone()), now, ttl);
        } else if reply.code().is_permanent() {
            self.stats.count(Outcome::Refused, false);
        } else {
            self.stats.count(Outcome::Deferred, false);
        }
        Flow::Decide(Decision::from_reply(passed))
    }
}

/// The server's refusal as our client gets it: its code and enhanced status (a default
/// by the code's class when it gave none), its text after `Mailbox server:`.
fn passed_on(reply: &Reply) -> Reply {
    let code = reply.code();
    let status = reply.status().unwrap_or(if code.is_permanent() {
        EnhancedStatus::BAD_DESTINATION_MAILBOX
    } else {
        EnhancedStatus::SYSTEM_TEMPORARY
    });
    let text: String = reply.lines().collect::<Vec<_>>().join(" ");
    let text = format!("Mailbox server: {}", text.trim());
    Reply::from_parts(code, Some(status), text.clone()).unwrap_or_else(|| {
        // A status of another class than the code: the code decides.
        let code = if code.is_permanent() {
            ReplyCode::MAILBOX_UNAVAILABLE
        } else {
            ReplyCode::LOCAL_ERROR
        };
        let class = (code.as_u16() / 100) as u8;
        Reply::new(code, status.with_class(class).unwrap_or(status), text)
    })
}

/// A refusal of the command rather than of the mailbox: `500`–`504`, `555`, `5.5.x`.
fn is_protocol_refusal(reply: &Reply) -> bool {
    let code = reply.code().as_u16();
    matches!(code, 500..=504 | 555)
        || reply
            .status()
            .is_some_and(|s| s.class() == 5 && s.subject() == 5)
}

/// A permanent refusal of the address itself (`5.1.x`, or `550` without a status):
/// what the cache remembers. A full or disabled mailbox (`5.2.x`) may change any
/// moment, and is asked about again.
fn is_unknown_address(reply: &Reply) -> bool {
    reply.is_permanent()
        && match reply.status() {
            Some(s) => s.subject() == 1,
            None => reply.code() == ReplyCode::MAILBOX_UNAVAILABLE,
        }
}

/// What the cache remembers about an address.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Cached {
    /// The mailbox exists.
    Exists,
    /// The server refused it so (the reply as our client gets it).
    Refused(Reply),
}

/// Verdicts by lower-cased address, each until it expires, at most `max` of them: when
/// full, the oldest entry goes (the order of insertion; a verdict renewed counts as
/// new).
#[derive(Debug)]
struct Cache {
    entries: HashMap<String, Entry>,
    /// Insertion order: (address, the entry's sequence number); a pair whose number no
    /// longer matches the entry is stale and skipped.
    order: VecDeque<(String, u64)>,
    next: u64,
    max: usize,
}

#[derive(Debug)]
struct Entry {
    verdict: Cached,
    expires: Instant,
    seq: u64,
}

impl Cache {
    fn new(max: usize) -> Self {
        Self {
            entries: HashMap::new(),
            order: VecDeque::new(),
            next: 0,
            max,
        }
    }

    fn len(&self) -> usize {
        self.entries.len()
    }

    fn lookup(&mut self, key: &str, now: Instant) -> Option<Cached> {
        let entry = self.entries.get(key)?;
        if entry.expires <= now {
            self.entries.remove(key);
            return None;
        }
        Some(entry.verdict.clone())
    }

    fn insert(&mut self, key: &str, verdict: Cached, now: Instant, ttl: Duration) {
        if self.max == 0 || ttl.is_zero() {
            return;
        }
        let Some(expires) = now.checked_add(ttl) else {
            return;
        };
        let seq = self.next;
        self.next += 1;
        self.entries.insert(
            key.to_owned(),
            Entry {
                verdict,
                expires,
                seq,
            },
        );
        self.order.push_back((key.to_owned(), seq));
        // Entries beyond `max` go oldest first; stale pairs in `order` (renewed or
        // expired entries) go with them, so it stays within twice `max`.
        while self.entries.len() > self.max || self.order.len() > 2 * self.max {
            let Some((old, seq)) = self.order.pop_front() else {
                break;
            };
            if self.entries.get(&old).is_some_and(|e| e.seq == seq) {
                self.entries.remove(&old);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(code: u16, status: Option<(u8, u16, u16)>, text: &str) -> Reply {
        let code = ReplyCode::new(code).unwrap();
        let status = status.map(|(c, s, d)| EnhancedStatus::new(c, s, d).unwrap());
        Reply::from_parts(code, status, text.to_owned()).unwrap()
    }

    #[test]
    fn refusals_are_passed_on_with_their_code_and_status() {
        let dovecot = reply(
            550,
            Some((5, 1, 1)),
            "<nobody@example.test> User doesn't exist: nobody@example.test",
        );
        let passed = passed_on(&dovecot);
        assert_eq!(
            passed.to_string(),
            "550 5.1.1 Mailbox server: <nobody@example.test> User doesn't exist: nobody@example.test"
        );
        let full = reply(452, Some((4, 2, 2)), "<bob@example.test> Mailbox is full");
        assert_eq!(
            passed_on(&full).to_string(),
            "452 4.2.2 Mailbox server: <bob@example.test> Mailbox is full"
        );
        let plain = reply(550, None, "no such user\nreally");
        assert_eq!(
            passed_on(&plain).to_string(),
            "550 5.1.1 Mailbox server: no such user really"
        );
    }

    #[test]
    fn what_is_cached_and_what_is_a_protocol_refusal() {
        type Case = (u16, Option<(u8, u16, u16)>, bool, bool);
        let cases: &[Case] = &[
            // code, status, unknown address (cached), protocol refusal
            (550, Some((5, 1, 1)), true, false),
            (550, None, true, false),
            (553, Some((5, 1, 3)), true, false),
            (552, Some((5, 2, 2)), false, false),
            (550, Some((5, 2, 1)), false, false),
            (452, Some((4, 2, 2)), false, false),
            (451, Some((4, 3, 0)), false, false),
            (501, Some((5, 5, 4)), false, true),
            (500, None, false, true),
            (503, Some((5, 5, 1)), false, true),
            (554, Some((5, 7, 1)), false, false),
        ];
        for &(code, status, unknown, protocol) in cases {
            let r = reply(code, status, "x");
            assert_eq!(is_unknown_address(&r), unknown, "{r}");
            assert_eq!(is_protocol_refusal(&r), protocol, "{r}");
        }
    }

    #[test]
    fn the_cache_expires_and_drops_the_oldest() {
        let t0 = Instant::now();
        let hour = Duration::from_secs(3600);
        let mut cache = Cache::new(2);
        cache.insert("a@x", Cached::Exists, t0, hour);
        cache.insert("b@x", Cached::Exists, t0, Duration::from_secs(1));
        assert_eq!(cache.lookup("a@x", t0), Some(Cached::Exists));
        assert_eq!(cache.lookup("b@x", t0 + Duration::from_secs(2)), None);
        cache.insert("b@x", Cached::Exists, t0, hour);
        // Renewing a@x makes b@x the oldest.
        cache.insert("a@x", Cached::Exists, t0, hour);
        let no = Cached::Refused(reply(550, Some((5, 1, 1)), "no"));
        cache.insert("c@x", no.clone(), t0, hour);
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.lookup("b@x", t0), None);
        assert_eq!(cache.lookup("a@x", t0), Some(Cached::Exists));
        assert_eq!(cache.lookup("c@x", t0), Some(no));
        for i in 0..100 {
            cache.insert(&format!("{i}@x"), Cached::Exists, t0, hour);
            assert!(cache.len() <= 2 && cache.order.len() <= 4);
        }
        // A zero TTL or size caches nothing.
        cache.insert("z@x", Cached::Exists, t0, Duration::ZERO);
        assert_eq!(cache.lookup("z@x", t0), None);
        let mut none = Cache::new(0);
        none.insert("a@x", Cached::Exists, t0, hour);
        assert_eq!(none.len(), 0);
    }
}
