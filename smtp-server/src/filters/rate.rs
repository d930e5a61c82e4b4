//! Rate limits, anvil-style: how fast one client (an IP address), one sender domain or
//! one login may connect, send messages and name recipients, and what happens to a
//! client that guesses recipients (a dictionary attack) or passwords.
//!
//! ```text
//!  connect ─▶ connections per IP ............................ 421 4.7.0 and close
//!  auth    ─▶ locked out? (failed logins per IP, across sessions) 454 4.7.0 until the reset time
//!             └─ rest of the chain refused the login ─▶ count a failure
//!  mail    ─▶ messages per IP / sender domain / login ....... 450 4.7.1 try again in N seconds
//!  rcpt    ─▶ failed RCPTs per IP: tarpit (delay), then ..... 421 4.7.0 and close
//!             recipients per IP / sender domain / login ..... 450 4.7.1 try again in N seconds
//!             └─ rest of the chain refused the recipient (5yz) ─▶ count a failure
//! ```
//!
//! Each limit is a leaky bucket (a token bucket seen from the other side): `max` units
//! fit, and they drain at `max` per `per`, so a client may burst up to `max` and then
//! goes on at the average rate. Failures (refused recipients, refused logins) are counted
//! in a window that starts at the first failure. Every table is keyed by the client's
//! address (an IPv6 client by its /64, which one host usually holds whole), the sender's
//! domain or the login name; it is bounded ([`RateSettings::max_tracked`]) and pruned of
//! what has drained as it goes.
//!
//! Each limit has a [`FilterMode`]: `off`, `tag` (log it and count it in [`RateStats`], refuse
//! nothing) or `enforce`; a `max` of 0 turns it off. Clients in
//! [`RateSettings::exempt_networks`] (your trusted networks) are never limited; logins
//! in [`RateSettings::exempt_logins`] have no message or recipient limits. A login is
//! counted per login, not per address or sender domain (many users may share one NAT
//! address; a stolen password is what the per-login limit is for).
//!
//! The layers must see the decision of the rest of the chain (to know that a recipient
//! or a login was refused), so add them last, to be outermost:
//!
//! ```
//! use smtp_server::filters::rate::{RateLimits, RateSettings};
//! use smtp_server::filters::{DomainSet, LocalRecipients};
//! use smtp_server::{Stages, filter};
//! # let sink = tower::service_fn(|_| async { Ok::<_, smtp_server::BoxError>(smtp_server::Decision::accept()) });
//! let limits = RateLimits::new(RateSettings {
//!     exempt_networks: vec!["192.0.2.0/24".parse().unwrap()],
//!     ..RateSettings::default()
//! });
//! let stages = Stages::new(sink)
//!     .rcpt_layer(filter(LocalRecipients::new(DomainSet::new(["example.test"]), ["ann@example.test"])));
//! let stages = limits.install(stages);
//! let stats = limits.stats(); // register it with a prometheus Registry (feature `prometheus`)
//! # let _ = (stages, stats);
//! ```

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::marker::PhantomData;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use smtp_proto::{EnhancedStatus, ReversePath};
use tower::{Layer, Service};
use tracing::{info, warn};

use super::IpNetwork;
pub use crate::FilterMode;
use crate::{
    AuthRequest, BoxError, ConnectRequest, Decision, MailRequest, RcptRequest, SessionInfo, Stages,
};

/// Where the defences read the time: the system clock, or in tests a [`ManualClock`]
/// moved by hand so that nothing waits for minutes. Wall-clock time, because greylisting
/// keeps it in its state file; a clock that goes back counts as no time passing.
pub trait Clock: Send + Sync + 'static {
    /// Now.
    fn now(&self) -> SystemTime;
}

/// The system's clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A clock that moves only when told to, for tests; clones share the time.
///
/// ```
/// use std::time::{Duration, UNIX_EPOCH};
/// use smtp_server::filters::rate::{Clock, ManualClock};
/// let clock = ManualClock::new(UNIX_EPOCH + Duration::from_secs(1_000_000));
/// clock.advance(Duration::from_secs(60));
/// assert_eq!(clock.now(), UNIX_EPOCH + Duration::from_secs(1_000_060));
/// ```
#[derive(Clone, Debug)]
pub struct ManualClock(Arc<Mutex<SystemTime>>);

impl ManualClock {
    /// A clock showing `start`.
    pub fn new(start: SystemTime) -> Self {
        Self(Arc::new(Mutex::new(start)))
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let mut now = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *now += by;
    }

    /// Sets the clock to `time`.
    pub fn set(&self, time: SystemTime) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = time;
    }
}

impl Default for ManualClock {
    /// A clock at the system's time now.
    fn default() -> Self {
        Self::new(SystemTime::now())
    }
}

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One rate: at most `max` in any burst, refilled at `max` per `per`. `max: 0` is off.
///
/// ```
/// use std::time::Duration;
/// use smtp_server::filters::rate::{Limit, FilterMode};
/// let limit = Limit::new(100, Duration::from_secs(3600));
/// assert_eq!(limit.mode, FilterMode::Enforce);
/// assert!(!Limit::OFF.is_active());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limit {
    /// How many (connections, messages, recipients); 0: no limit.
    pub max: u32,
    /// In what time.
    pub per: Duration,
    /// What happens beyond it.
    pub mode: FilterMode,
}

impl Limit {
    /// No limit.
    pub const OFF: Self = Self {
        max: 0,
        per: Duration::from_secs(3600),
        mode: FilterMode::Off,
    };

    /// `max` per `per`, enforced.
    pub const fn new(max: u32, per: Duration) -> Self {
        Self {
            max,
            per,
            mode: FilterMode::Enforce,
        }
    }

    /// Whether the limit is checked at all.
    pub fn is_active(&self) -> bool {
        self.max > 0 && !self.per.is_zero() && self.mode != FilterMode::Off
    }

    /// Units drained per second.
    fn rate(&self) -> f64 {
        f64::from(self.max) / self.per.as_secs_f64().max(f64::MIN_POSITIVE)
    }
}

/// Refused recipients per client address, across its sessions (a dictionary attack:
/// Postfix's `smtpd_soft_error_limit` and `smtpd_hard_error_limit`, but per address and
/// not per session). A recipient counts when the rest of the rcpt chain refuses it with
/// a `5yz` (unknown user from
/// [`LocalRecipients`](crate::filters::LocalRecipients), say); the relay policy's
/// refusals come before this layer and are not counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DictionaryLimit {
    /// After this many refused recipients in `window`, every RCPT answer of that
    /// address is delayed (tarpit); 0: no tarpit. Default 10.
    pub tarpit_after: u32,
    /// After this many, the next RCPT gets `421 4.7.0` and the connection closes, and
    /// so does every RCPT of that address until the window ends; 0: never. Default 30.
    pub disconnect_after: u32,
    /// The window, from the first refused recipient. Default 1 hour.
    pub window: Duration,
    /// The tarpit's delay for the first answer past `tarpit_after`; each further one
    /// waits one step more. Default 1 s.
    pub tarpit_step: Duration,
    /// The longest tarpit delay (keep it well under the client's 5 minute RCPT timeout,
    /// RFC 5321 §4.5.3.2.3). Default 10 s.
    pub tarpit_max: Duration,
    /// Off, tag (log and count, no delay, no disconnect) or enforce. Default enforce.
    pub mode: FilterMode,
}

impl Default for DictionaryLimit {
    fn default() -> Self {
        Self {
            tarpit_after: 10,
            disconnect_after: 30,
            window: Duration::from_secs(3600),
            tarpit_step: Duration::from_secs(1),
            tarpit_max: Duration::from_secs(10),
            mode: FilterMode::Enforce,
        }
    }
}

/// Refused logins per client address, across its sessions (password guessing). After
/// `max_failures` refused logins within `window`, the address is locked out for
/// `lockout`: every AUTH from it is answered `454 4.7.0` with the time to come back,
/// without the password being checked, while other addresses still log in. A
/// successful login does not reset the count (a guesser who owns one account could
/// otherwise reset it at will); the count ends with its window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoginLimit {
    /// Refused logins before the lockout; 0: no lockout. Default 10.
    pub max_failures: u32,
    /// The window, from the first refused login. Default 15 minutes.
    pub window: Duration,
    /// How long the lockout lasts. Default 30 minutes.
    pub lockout: Duration,
    /// Off, tag (log and count, no lockout) or enforce. Default enforce.
    pub mode: FilterMode,
}

impl Default for LoginLimit {
    fn default() -> Self {
        Self {
            max_failures: 10,
            window: Duration::from_secs(15 * 60),
            lockout: Duration::from_secs(30 * 60),
            mode: FilterMode::Enforce,
        }
    }
}

/// The settings of [`RateLimits`]. The defaults are generous: no legitimate client
/// meets them, and one that does is told to come back later (`4yz`), never refused.
///
/// ```
/// use std::time::Duration;
/// use smtp_server::filters::rate::{Limit, RateSettings};
/// let settings = RateSettings {
///     messages_per_sender_domain: Limit::new(500, Duration::from_secs(3600)),
///     ..RateSettings::default()
/// };
/// assert_eq!(settings.connections_per_ip.max, 60);
/// # let _ = settings;
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateSettings {
    /// New connections per client address (`421 4.7.0` and close, at the connect
    /// stage). Default 60 per minute.
    pub connections_per_ip: Limit,
    /// Messages (accepted `MAIL FROM`) per client address, for clients not logged in.
    /// Default 600 per hour.
    pub messages_per_ip: Limit,
    /// Accepted recipients per client address, for clients not logged in. Default 3000
    /// per hour.
    pub recipients_per_ip: Limit,
    /// Messages per sender domain (the `MAIL FROM` domain; not the null sender), for
    /// clients not logged in. Default off: the domain is the sender's claim, and big
    /// providers' domains are shared by millions.
    pub messages_per_sender_domain: Limit,
    /// Accepted recipients per sender domain, for clients not logged in. Default off.
    pub recipients_per_sender_domain: Limit,
    /// Messages per login. Default 200 per hour.
    pub messages_per_login: Limit,
    /// Accepted recipients per login. Default 1000 per hour.
    pub recipients_per_login: Limit,
    /// Refused recipients per client address: tarpit, then `421 4.7.0`.
    pub failed_rcpts_per_ip: DictionaryLimit,
    /// Refused logins per client address: lockout.
    pub failed_logins_per_ip: LoginLimit,
    /// Clients never limited (your trusted networks, a monitoring host). Default none.
    pub exempt_networks: Vec<IpNetwork>,
    /// Logins without message and recipient limits (compared without regard to ASCII
    /// case). Default none.
    pub exempt_logins: Vec<String>,
    /// Entries each table (one per limit) may hold; beyond, what has drained is pruned
    /// and then the oldest half is dropped. Default 100 000.
    pub max_tracked: usize,
}

impl Default for RateSettings {
    fn default() -> Self {
        let minute = Duration::from_secs(60);
        let hour = Duration::from_secs(3600);
        Self {
            connections_per_ip: Limit::new(60, minute),
            messages_per_ip: Limit::new(600, hour),
            recipients_per_ip: Limit::new(3000, hour),
            messages_per_sender_domain: Limit::OFF,
            recipients_per_sender_domain: Limit::OFF,
            messages_per_login: Limit::new(200, hour),
            recipients_per_login: Limit::new(1000, hour),
            failed_rcpts_per_ip: DictionaryLimit::default(),
            failed_logins_per_ip: LoginLimit::default(),
            exempt_networks: Vec::new(),
            exempt_logins: Vec::new(),
            max_tracked: 100_000,
        }
    }
}

/// Which limit; the label of its counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LimitKind {
    /// [`RateSettings::connections_per_ip`].
    ConnectionsPerIp,
    /// [`RateSettings::messages_per_ip`].
    MessagesPerIp,
    /// [`RateSettings::recipients_per_ip`].
    RecipientsPerIp,
    /// [`RateSettings::messages_per_sender_domain`].
    MessagesPerSenderDomain,
    /// [`RateSettings::recipients_per_sender_domain`].
    RecipientsPerSenderDomain,
    /// [`RateSettings::messages_per_login`].
    MessagesPerLogin,
    /// [`RateSettings::recipients_per_login`].
    RecipientsPerLogin,
    /// [`RateSettings::failed_rcpts_per_ip`].
    FailedRcptsPerIp,
    /// [`RateSettings::failed_logins_per_ip`].
    FailedLoginsPerIp,
}

impl LimitKind {
    /// Every limit.
    pub const ALL: [Self; 9] = [
        Self::ConnectionsPerIp,
        Self::MessagesPerIp,
        Self::RecipientsPerIp,
        Self::MessagesPerSenderDomain,
        Self::RecipientsPerSenderDomain,
        Self::MessagesPerLogin,
        Self::RecipientsPerLogin,
        Self::FailedRcptsPerIp,
        Self::FailedLoginsPerIp,
    ];

    /// The name in logs and metric labels, as the settings field: `connections_per_ip`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ConnectionsPerIp => "connections_per_ip",
            Self::MessagesPerIp => "messages_per_ip",
            Self::RecipientsPerIp => "recipients_per_ip",
            Self::MessagesPerSenderDomain => "messages_per_sender_domain",
            Self::RecipientsPerSenderDomain => "recipients_per_sender_domain",
            Self::MessagesPerLogin => "messages_per_login",
            Self::RecipientsPerLogin => "recipients_per_login",
            Self::FailedRcptsPerIp => "failed_rcpts_per_ip",
            Self::FailedLoginsPerIp => "failed_logins_per_ip",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The counters of one limit. Every field only grows.
#[derive(Debug, Default)]
pub struct LimitCounters {
    /// Times the limit was reached (in `tag` and `enforce` mode): a connection, message
    /// or recipient over the rate; a RCPT from a tarpitted or cut-off address; an AUTH
    /// from a locked-out address.
    pub hits: AtomicU64,
    /// Times it refused (`enforce` mode): the `421`, `450` and `454` answers.
    pub refusals: AtomicU64,
}

/// Counters of [`RateLimits`], for metrics.
///
/// With the `prometheus` feature it is a `prometheus_client::collector::Collector`:
/// `smtp_rate_limit_hits_total{limit}`, `smtp_rate_limit_refusals_total{limit}`,
/// `smtp_rate_limit_tarpitted_total`, `smtp_rate_limit_lockouts_total` and the gauge
/// `smtp_rate_limit_tracked` (entries in the tables).
///
/// ```
/// use smtp_server::filters::rate::{LimitKind, RateLimits, RateSettings};
/// let stats = RateLimits::new(RateSettings::default()).stats();
/// assert_eq!(stats.limit(LimitKind::ConnectionsPerIp).hits.load(std::sync::atomic::Ordering::Relaxed), 0);
/// ```
#[derive(Debug, Default)]
pub struct RateStats {
    limits: [LimitCounters; 9],
    /// RCPT answers delayed by the tarpit.
    pub tarpitted: AtomicU64,
    /// Addresses locked out for refused logins (in `tag` mode: that would have been).
    pub lockouts: AtomicU64,
    /// Entries in the tables now (kept by the tables as they change).
    pub tracked: Arc<AtomicU64>,
}

impl RateStats {
    /// The counters of `limit`.
    pub fn limit(&self, limit: LimitKind) -> &LimitCounters {
        &self.limits[limit.index()]
    }
}

#[cfg(feature = "prometheus")]
impl prometheus_client::collector::Collector for RateStats {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder<'_>,
    ) -> std::fmt::Result {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::MetricType::{Counter, Gauge};
        use prometheus_client::metrics::counter::ConstCounter;
        use prometheus_client::metrics::gauge::ConstGauge;

        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        type Field = fn(&LimitCounters) -> &AtomicU64;
        let families: [(&str, &str, Field); 2] = [
            (
                "smtp_rate_limit_hits",
                "Times a rate limit was reached (tag and enforce mode), by limit.",
                |c| &c.hits,
            ),
            (
                "smtp_rate_limit_refusals",
                "Commands refused by a rate limit (enforce mode), by limit.",
                |c| &c.refusals,
            ),
        ];
        for (name, help, field) in families {
            let mut family = encoder.encode_descriptor(name, help, None, Counter)?;
            for kind in LimitKind::ALL {
                let labels = [("limit", kind.as_str())];
                ConstCounter::new(get(field(self.limit(kind))))
                    .encode(family.encode_family(&labels)?)?;
            }
        }
        for (name, help, value) in [
            (
                "smtp_rate_limit_tarpitted",
                "RCPT answers delayed because the client had too many refused recipients.",
                &self.tarpitted,
            ),
            (
                "smtp_rate_limit_lockouts",
                "Client addresses locked out after too many refused logins.",
                &self.lockouts,
            ),
        ] {
            ConstCounter::new(get(value))
                .encode(encoder.encode_descriptor(name, help, None, Counter)?)?;
        }
        ConstGauge::new(get(&self.tracked)).encode(encoder.encode_descriptor(
            "smtp_rate_limit_tracked",
            "Clients, sender domains and logins the rate limits keep track of now.",
            None,
            Gauge,
        )?)?;
        Ok(())
    }
}

/// The rate limits: one state shared by the layers of each stage. Cloning shares it.
/// See the [module](self) for what each limit does and how to add the layers.
#[derive(Clone)]
pub struct RateLimits {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RateLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimits")
            .field("settings", &self.inner.settings)
            .finish_non_exhaustive()
    }
}

impl RateLimits {
    /// Limits with `settings` on the system clock.
    pub fn new(settings: RateSettings) -> Self {
        Self::with_clock(settings, Arc::new(SystemClock))
    }

    /// Limits with `settings` on `clock` (a [`ManualClock`] in tests).
    pub fn with_clock(settings: RateSettings, clock: Arc<dyn Clock>) -> Self {
        let max = settings.max_tracked.max(1);
        let exempt_logins = settings
            .exempt_logins
            .iter()
            .map(|l| l.to_ascii_lowercase())
            .collect();
        let start = clock.now();
        let stats = Arc::new(RateStats::default());
        Self {
            inner: Arc::new(Inner {
                settings,
                exempt_logins,
                clock,
                buckets: std::array::from_fn(|_| {
                    Mutex::new(Table::new(max, start, Arc::clone(&stats.tracked)))
                }),
                failed_rcpts: Mutex::new(Table::new(max, start, Arc::clone(&stats.tracked))),
                failed_logins: Mutex::new(Table::new(max, start, Arc::clone(&stats.tracked))),
                stats,
                dictionary_at_relay: AtomicBool::new(false),
            }),
        }
    }

    /// The counters.
    pub fn stats(&self) -> Arc<RateStats> {
        Arc::clone(&self.inner.stats)
    }

    /// The connect-stage layer: connections per address.
    pub fn connect_layer(&self) -> RateLayer<ConnectRequest> {
        self.layer()
    }

    /// The auth-stage layer: the lockout after refused logins. Add it after (outside)
    /// the password check, so that it sees its answer.
    pub fn auth_layer(&self) -> RateLayer<AuthRequest> {
        self.layer()
    }

    /// The mail-stage layer: messages per address, sender domain and login.
    pub fn mail_layer(&self) -> RateLayer<MailRequest> {
        self.layer()
    }

    /// The rcpt-stage layer: the tarpit and cut-off after refused recipients, and
    /// recipients per address, sender domain and login. Add it after (outside) the
    /// filters that refuse recipients ([`LocalRecipients`](crate::filters::LocalRecipients),
    /// greylisting), so that it sees their answers.
    pub fn rcpt_layer(&self) -> RateLayer<RcptRequest> {
        self.layer()
    }

    /// The layer around the relay policy ([`Stages::relay_policy`], which is asked
    /// before the rcpt chain): the dictionary-attack tarpit and cut-off move there from
    /// the rcpt layer, and a relaying refusal counts as a refused recipient, as
    /// Postfix's error counter counts it. Without it, a client that only tries to relay
    /// (an open-relay scanner) would never be slowed down.
    ///
    /// ```
    /// use smtp_server::Stages;
    /// use smtp_server::filters::{DomainSet, RelayPolicy};
    /// use smtp_server::filters::rate::{RateLimits, RateSettings};
    /// use smtp_server::filter;
    /// # let sink = tower::service_fn(|_| async { Ok::<_, smtp_server::BoxError>(smtp_server::Decision::accept()) });
    /// let limits = RateLimits::new(RateSettings::default());
    /// let policy = filter(RelayPolicy::new(DomainSet::new(["example.test"]), Vec::new()));
    /// let stages = Stages::new(sink)
    ///     .rcpt_layer(limits.rcpt_layer())
    ///     .relay_policy(tower::layer::util::Stack::new(policy, limits.relay_layer()));
    /// ```
    pub fn relay_layer(&self) -> RateLayer<Relaying> {
        self.inner
            .dictionary_at_relay
            .store(true, Ordering::Relaxed);
        self.layer()
    }

    /// The layer of any stage (`R` is the stage's request).
    pub fn layer<R>(&self) -> RateLayer<R> {
        RateLayer {
            limits: self.clone(),
            _request: PhantomData,
        }
    }

    /// Adds the four layers to `stages` (connect, auth, mail, rcpt). Call it after the
    /// other filters of those stages are added, so that the limits are outermost.
    pub fn install(&self, stages: Stages) -> Stages {
        stages
            .connect_layer(self.connect_layer())
            .auth_layer(self.auth_layer())
            .mail_layer(self.mail_layer())
            .rcpt_layer(self.rcpt_layer())
    }

    /// Drops every entry that has drained or expired now (done as the tables are used,
    /// at most once a minute each).
    pub fn prune(&self) {
        let now = self.inner.clock.now();
        for table in &self.inner.buckets {
            lock(table).prune(now);
        }
        lock(&self.inner.failed_rcpts).prune(now);
        lock(&self.inner.failed_logins).prune(now);
    }

    /// Entries in the tables now (clients, sender domains and logins tracked).
    pub fn tracked(&self) -> usize {
        self.inner.stats.tracked.load(Ordering::Relaxed) as usize
    }
}

/// The layer of one stage, made by [`RateLimits`]'s `*_layer` methods.
pub struct RateLayer<R> {
    limits: RateLimits,
    _request: PhantomData<fn(R)>,
}

impl<R> Clone for RateLayer<R> {
    fn clone(&self) -> Self {
        Self {
            limits: self.limits.clone(),
            _request: PhantomData,
        }
    }
}

impl<R> std::fmt::Debug for RateLayer<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RateLayer")
    }
}

impl<R, S> Layer<S> for RateLayer<R> {
    type Service = RateService<S, R>;
    fn layer(&self, inner: S) -> Self::Service {
        RateService {
            limits: self.limits.clone(),
            inner,
            _request: PhantomData,
        }
    }
}

/// The service of a [`RateLayer`].
pub struct RateService<S, R> {
    limits: RateLimits,
    inner: S,
    _request: PhantomData<fn(R)>,
}

impl<S: Clone, R> Clone for RateService<S, R> {
    fn clone(&self) -> Self {
        Self {
            limits: self.limits.clone(),
            inner: self.inner.clone(),
            _request: PhantomData,
        }
    }
}

impl<S, R> std::fmt::Debug for RateService<S, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RateService")
    }
}

type BoxFuture = Pin<Box<dyn Future<Output = Result<Decision, BoxError>> + Send>>;

macro_rules! rate_service {
    ($marker:ty, $req:ty, $method:ident) => {
        impl<S> Service<$req> for RateService<S, $marker>
        where
            S: Service<$req, Response = Decision, Error = BoxError> + Clone + Send + 'static,
            S::Future: Send + 'static,
        {
            type Response = Decision;
            type Error = BoxError;
            type Future = BoxFuture;

            fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
                self.inner.poll_ready(cx)
            }

            fn call(&mut self, request: $req) -> BoxFuture {
                // The readied service handles this request; a clone stays for the next.
                let clone = self.inner.clone();
                let inner = std::mem::replace(&mut self.inner, clone);
                let limits = Arc::clone(&self.limits.inner);
                Box::pin(async move { limits.$method(request, inner).await })
            }
        }
    };
}

rate_service!(ConnectRequest, ConnectRequest, connect);
rate_service!(AuthRequest, AuthRequest, auth);
rate_service!(MailRequest, MailRequest, mail);
rate_service!(RcptRequest, RcptRequest, rcpt);
rate_service!(Relaying, RcptRequest, relay);

/// The request marker of the layer around the relay policy ([`RateLimits::relay_layer`]):
/// its service takes [`RcptRequest`]s.
#[derive(Debug)]
pub enum Relaying {}

/// The shared state.
struct Inner {
    settings: RateSettings,
    exempt_logins: Vec<String>,
    clock: Arc<dyn Clock>,
    stats: Arc<RateStats>,
    /// One table per bucket limit, by [`Bucketed`].
    buckets: [Mutex<Table<Key, Bucket>>; 7],
    failed_rcpts: Mutex<Table<Key, Failures>>,
    failed_logins: Mutex<Table<Key, Failures>>,
    /// Set once a [`RelayLayer`] exists: the dictionary check is made there, before
    /// the relay policy, and not again in the rcpt layer.
    dictionary_at_relay: AtomicBool,
}

/// What a table is keyed by.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Key {
    /// A client: its IPv4 address, or its IPv6 /64.
    Client(IpAddr),
    /// A sender domain or a login, lower case.
    Name(String),
}

/// Who the request is from, as the limits see it.
struct Who {
    client: Key,
    login: Option<String>,
    login_exempt: bool,
}

impl Inner {
    /// Not limited: clients of the exempt networks, and mail submitted on this machine
    /// ([`SessionInfo::LOCAL`]: `sendmail` from cron jobs and scripts), which is not a
    /// client on the network.
    fn exempt(&self, session: &SessionInfo) -> bool {
        let ip = session.peer.ip();
        session.protocol == SessionInfo::LOCAL
            || self.settings.exempt_networks.iter().any(|n| n.contains(ip))
    }

    fn who(&self, session: &SessionInfo) -> Who {
        let login = session
            .authenticated
            .as_ref()
            .map(|l| l.to_ascii_lowercase());
        let login_exempt = login
            .as_ref()
            .is_some_and(|l| self.exempt_logins.iter().any(|e| e == l));
        Who {
            client: Key::Client(client_key(session.peer.ip())),
            login,
            login_exempt,
        }
    }

    fn limit(&self, kind: LimitKind) -> &Limit {
        let s = &self.settings;
        match kind {
            LimitKind::ConnectionsPerIp => &s.connections_per_ip,
            LimitKind::MessagesPerIp => &s.messages_per_ip,
            LimitKind::RecipientsPerIp => &s.recipients_per_ip,
            LimitKind::MessagesPerSenderDomain => &s.messages_per_sender_domain,
            LimitKind::RecipientsPerSenderDomain => &s.recipients_per_sender_domain,
            LimitKind::MessagesPerLogin => &s.messages_per_login,
            LimitKind::RecipientsPerLogin => &s.recipients_per_login,
            // Not buckets: they have their own settings.
            LimitKind::FailedRcptsPerIp | LimitKind::FailedLoginsPerIp => &Limit::OFF,
        }
    }

    /// The bucket limits that apply to a message (`recipients: false`) or a recipient
    /// from `who` with sender `from`, with their keys.
    fn applicable(&self, who: &Who, from: &ReversePath, recipients: bool) -> Vec<(LimitKind, Key)> {
        let mut out = Vec::with_capacity(2);
        if let Some(login) = &who.login {
            if !who.login_exempt {
                let kind = if recipients {
                    LimitKind::RecipientsPerLogin
                } else {
                    LimitKind::MessagesPerLogin
                };
                out.push((kind, Key::Name(login.clone())));
            }
        } else {
            let (ip, domain) = if recipients {
                (
                    LimitKind::RecipientsPerIp,
                    LimitKind::RecipientsPerSenderDomain,
                )
            } else {
                (LimitKind::MessagesPerIp, LimitKind::MessagesPerSenderDomain)
            };
            out.push((ip, who.client.clone()));
            if let Some(m) = from.mailbox() {
                out.push((domain, Key::Name(m.domain().to_ascii_lowercase())));
            }
        }
        out.retain(|(kind, _)| self.limit(*kind).is_active());
        out
    }

    /// Whether one more unit fits in every bucket of `checks`; the first that is full
    /// decides (in enforce mode; in tag mode it is logged and counted).
    fn check_buckets(&self, checks: &[(LimitKind, Key)], now: SystemTime) -> Option<Decision> {
        for (kind, key) in checks {
            let limit = self.limit(*kind);
            let wait = {
                let table = lock(&self.buckets[kind.index()]);
                table.get(key).and_then(|b| b.wait(limit, now))
            };
            if let Some(wait) = wait
                && let Some(decision) = self.over(*kind, key, wait)
            {
                return Some(decision);
            }
        }
        None
    }

    /// Counts one unit in every bucket of `checks`.
    fn charge(&self, checks: &[(LimitKind, Key)], now: SystemTime) {
        for (kind, key) in checks {
            let limit = self.limit(*kind);
            let mut table = lock(&self.buckets[kind.index()]);
            table
                .entry(key.clone(), now, || Bucket::new(now))
                .charge(limit, now);
        }
    }

    /// A limit was reached: log and count it; the refusal in enforce mode.
    fn over(&self, kind: LimitKind, key: &Key, wait: Duration) -> Option<Decision> {
        let limit = self.limit(kind);
        let counters = self.stats.limit(kind);
        counters.hits.fetch_add(1, Ordering::Relaxed);
        let secs = whole_seconds(wait);
        info!(limit = kind.as_str(), key = %key, mode = limit.mode.as_str(), retry_in = secs, "rate limit reached");
        if limit.mode != FilterMode::Enforce {
            return None;
        }
        counters.refusals.fetch_add(1, Ordering::Relaxed);
        let what = match kind {
            LimitKind::ConnectionsPerIp => {
                return Some(Decision::disconnect::<421>(
                    EnhancedStatus::SECURITY_TEMPORARY,
                    format!(
                        "Too many connections from your address; try again in {}",
                        seconds(secs)
                    ),
                ));
            }
            LimitKind::MessagesPerIp => "messages from your address",
            LimitKind::RecipientsPerIp => "recipients from your address",
            LimitKind::MessagesPerSenderDomain => "messages from your sender domain",
            LimitKind::RecipientsPerSenderDomain => "recipients from your sender domain",
            LimitKind::MessagesPerLogin => "messages from your login",
            LimitKind::RecipientsPerLogin => "recipients from your login",
            LimitKind::FailedRcptsPerIp | LimitKind::FailedLoginsPerIp => "attempts",
        };
        Some(Decision::defer::<450>(
            EnhancedStatus::NOT_AUTHORIZED_TEMPORARY,
            format!("Too many {what}; try again in {}", seconds(secs)),
        ))
    }

    async fn connect<S>(
        self: Arc<Self>,
        req: ConnectRequest,
        mut next: S,
    ) -> Result<Decision, BoxError>
    where
        S: Service<ConnectRequest, Response = Decision, Error = BoxError>,
    {
        let limit = self.settings.connections_per_ip;
        if limit.is_active() && !self.exempt(&req.session) {
            let now = self.clock.now();
            let checks = [(
                LimitKind::ConnectionsPerIp,
                Key::Client(client_key(req.session.peer.ip())),
            )];
            if let Some(decision) = self.check_buckets(&checks, now) {
                return Ok(decision);
            }
            self.charge(&checks, now);
        }
        next.call(req).await
    }

    async fn auth<S>(self: Arc<Self>, req: AuthRequest, mut next: S) -> Result<Decision, BoxError>
    where
        S: Service<AuthRequest, Response = Decision, Error = BoxError>,
    {
        let limit = self.settings.failed_logins_per_ip;
        if limit.mode == FilterMode::Off || limit.max_failures == 0 || self.exempt(&req.session) {
            return next.call(req).await;
        }
        let key = Key::Client(client_key(req.session.peer.ip()));
        let now = self.clock.now();
        let locked = lock(&self.failed_logins)
            .get(&key)
            .and_then(|f| f.locked_until)
            .filter(|until| *until > now);
        if let Some(until) = locked {
            let counters = self.stats.limit(LimitKind::FailedLoginsPerIp);
            counters.hits.fetch_add(1, Ordering::Relaxed);
            let secs = whole_seconds(until.duration_since(now).unwrap_or_default());
            info!(limit = "failed_logins_per_ip", key = %key, mode = limit.mode.as_str(), retry_in = secs, "login from a locked-out address");
            if limit.mode == FilterMode::Enforce {
                counters.refusals.fetch_add(1, Ordering::Relaxed);
                return Ok(Decision::defer::<454>(
                    EnhancedStatus::SECURITY_TEMPORARY,
                    format!(
                        "Too many failed logins from your address; try again in {} ({})",
                        seconds(secs),
                        smtp_proto::rfc5322_date(until)
                    ),
                ));
            }
        }
        let decision = next.call(req).await?;
        if !decision.is_accept() {
            let now = self.clock.now();
            let mut table = lock(&self.failed_logins);
            let failures = table
                .entry(key.clone(), now, || Failures::new(now, limit.window))
                .record(now, limit.window);
            if failures.count >= limit.max_failures && failures.locked_until.is_none() {
                // Also in tag mode, so that what would be refused is counted.
                let until = now + limit.lockout;
                failures.locked_until = Some(until);
                drop(table);
                self.stats.lockouts.fetch_add(1, Ordering::Relaxed);
                warn!(key = %key, failures = limit.max_failures, mode = limit.mode.as_str(), until = %smtp_proto::rfc5322_date(until), "too many failed logins: address locked out");
            } else {
                drop(table);
            }
        }
        Ok(decision)
    }

    async fn mail<S>(self: Arc<Self>, req: MailRequest, mut next: S) -> Result<Decision, BoxError>
    where
        S: Service<MailRequest, Response = Decision, Error = BoxError>,
    {
        if self.exempt(&req.session) {
            return next.call(req).await;
        }
        let who = self.who(&req.session);
        let checks = self.applicable(&who, &req.from, false);
        if checks.is_empty() {
            return next.call(req).await;
        }
        if let Some(decision) = self.check_buckets(&checks, self.clock.now()) {
            return Ok(decision);
        }
        let decision = next.call(req).await?;
        if decision.is_accept() {
            self.charge(&checks, self.clock.now());
        }
        Ok(decision)
    }

    async fn rcpt<S>(self: Arc<Self>, req: RcptRequest, mut next: S) -> Result<Decision, BoxError>
    where
        S: Service<RcptRequest, Response = Decision, Error = BoxError>,
    {
        if self.exempt(&req.session) {
            return next.call(req).await;
        }
        let who = self.who(&req.session);
        let dict = self.settings.failed_rcpts_per_ip;
        let dict_active = self.dictionary_active();
        if dict_active
            && !self.dictionary_at_relay.load(Ordering::Relaxed)
            && let Some(decision) = self.dictionary(&dict, &who.client).await
        {
            return Ok(decision);
        }
        let checks = self.applicable(&who, &req.from, true);
        if let Some(decision) = self.check_buckets(&checks, self.clock.now()) {
            return Ok(decision);
        }
        let decision = next.call(req).await?;
        if decision.is_accept() {
            if !checks.is_empty() {
                self.charge(&checks, self.clock.now());
            }
        } else if decision.is_reject() && dict_active {
            self.record_failed_rcpt(&who.client);
        }
        Ok(decision)
    }

    /// Around the relay policy ([`RateLimits::relay_layer`]): the dictionary check,
    /// then a relaying refusal counted as a refused recipient.
    async fn relay<S>(self: Arc<Self>, req: RcptRequest, mut next: S) -> Result<Decision, BoxError>
    where
        S: Service<RcptRequest, Response = Decision, Error = BoxError>,
    {
        if self.exempt(&req.session) || !self.dictionary_active() {
            return next.call(req).await;
        }
        let client = self.who(&req.session).client;
        let dict = self.settings.failed_rcpts_per_ip;
        if let Some(decision) = self.dictionary(&dict, &client).await {
            return Ok(decision);
        }
        let decision = next.call(req).await?;
        if decision.is_reject() {
            self.record_failed_rcpt(&client);
        }
        Ok(decision)
    }

    /// Whether the dictionary-attack defence is on.
    fn dictionary_active(&self) -> bool {
        let dict = self.settings.failed_rcpts_per_ip;
        dict.mode != FilterMode::Off && (dict.tarpit_after > 0 || dict.disconnect_after > 0)
    }

    /// One more refused recipient from `client`.
    fn record_failed_rcpt(&self, client: &Key) {
        let window = self.settings.failed_rcpts_per_ip.window;
        let now = self.clock.now();
        lock(&self.failed_rcpts)
            .entry(client.clone(), now, || Failures::new(now, window))
            .record(now, window);
    }

    /// The dictionary-attack defence before a RCPT: the cut-off, or the tarpit's delay.
    async fn dictionary(&self, dict: &DictionaryLimit, client: &Key) -> Option<Decision> {
        let now = self.clock.now();
        let (count, ends) = {
            let table = lock(&self.failed_rcpts);
            let f = table.get(client)?;
            (f.current(now), f.start + dict.window)
        };
        let counters = self.stats.limit(LimitKind::FailedRcptsPerIp);
        let enforce = dict.mode == FilterMode::Enforce;
        if dict.disconnect_after > 0 && count >= dict.disconnect_after {
            counters.hits.fetch_add(1, Ordering::Relaxed);
            let secs = whole_seconds(ends.duration_since(now).unwrap_or_default());
            info!(limit = "failed_rcpts_per_ip", key = %client, failures = count, mode = dict.mode.as_str(), "too many refused recipients: cut off");
            if enforce {
                counters.refusals.fetch_add(1, Ordering::Relaxed);
                return Some(Decision::disconnect::<421>(
                    EnhancedStatus::SECURITY_TEMPORARY,
                    format!(
                        "Too many unknown recipients from your address; try again in {}",
                        seconds(secs)
                    ),
                ));
            }
        } else if dict.tarpit_after > 0 && count >= dict.tarpit_after {
            counters.hits.fetch_add(1, Ordering::Relaxed);
            self.stats.tarpitted.fetch_add(1, Ordering::Relaxed);
            let steps = count - dict.tarpit_after + 1;
            let delay = dict.tarpit_step.saturating_mul(steps).min(dict.tarpit_max);
            info!(limit = "failed_rcpts_per_ip", key = %client, failures = count, mode = dict.mode.as_str(), delay_ms = delay.as_millis() as u64, "too many refused recipients: tarpit");
            if enforce {
                tokio::time::sleep(delay).await;
            }
        }
        None
    }
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Client(IpAddr::V6(v6)) => write!(f, "{v6}/64"),
            Self::Client(ip) => write!(f, "{ip}"),
            Self::Name(name) => f.write_str(name),
        }
    }
}

/// A client address as the per-address limits count it: an IPv4 address (also when
/// written IPv4-mapped), or the /64 of an IPv6 address.
///
/// ```
/// use smtp_server::filters::rate::client_key;
/// assert_eq!(client_key("::ffff:192.0.2.1".parse().unwrap()), "192.0.2.1".parse::<std::net::IpAddr>().unwrap());
/// assert_eq!(client_key("2001:db8:1:2:3:4:5:6".parse().unwrap()), "2001:db8:1:2::".parse::<std::net::IpAddr>().unwrap());
/// ```
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        },
        v4 => v4,
    }
}

/// `1 second`, `N seconds`: a wait in a reply's sentence.
pub(crate) fn seconds(n: u64) -> String {
    if n == 1 {
        "1 second".to_owned()
    } else {
        format!("{n} seconds")
    }
}

/// Seconds to tell a client to wait: `wait` rounded up, at least 1.
fn whole_seconds(wait: Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

fn elapsed(since: SystemTime, now: SystemTime) -> Duration {
    now.duration_since(since).unwrap_or_default()
}

/// A leaky bucket: `level` units at `at`, draining at the limit's rate.
#[derive(Clone, Copy, Debug)]
struct Bucket {
    level: f64,
    at: SystemTime,
    /// When it is empty (and the entry can go).
    empty_at: SystemTime,
}

impl Bucket {
    fn new(now: SystemTime) -> Self {
        Self {
            level: 0.0,
            at: now,
            empty_at: now,
        }
    }

    fn level(&self, limit: &Limit, now: SystemTime) -> f64 {
        (self.level - elapsed(self.at, now).as_secs_f64() * limit.rate()).max(0.0)
    }

    /// How long until one more unit fits; `None` when it fits now.
    fn wait(&self, limit: &Limit, now: SystemTime) -> Option<Duration> {
        let excess = self.level(limit, now) + 1.0 - f64::from(limit.max);
        (excess > 1e-9).then(|| Duration::from_secs_f64((excess / limit.rate()).min(1e9)))
    }

    /// Adds one unit (never beyond `max`: in tag mode the bucket stays full).
    fn charge(&mut self, limit: &Limit, now: SystemTime) {
        self.level = (self.level(limit, now) + 1.0).min(f64::from(limit.max));
        self.at = now;
        let drain = Duration::from_secs_f64((self.level / limit.rate()).min(1e9));
        self.empty_at = now + drain;
    }
}

/// Failures counted in a window from the first, and a lockout.
#[derive(Clone, Copy, Debug)]
struct Failures {
    count: u32,
    start: SystemTime,
    window: Duration,
    locked_until: Option<SystemTime>,
}

impl Failures {
    fn new(now: SystemTime, window: Duration) -> Self {
        Self {
            count: 0,
            start: now,
            window,
            locked_until: None,
        }
    }

    /// Whether the window (or the lockout, when there is one) is over.
    fn expired(&self, now: SystemTime) -> bool {
        match self.locked_until {
            Some(until) => now >= until,
            None => elapsed(self.start, now) >= self.window,
        }
    }

    /// The failures that count now.
    fn current(&self, now: SystemTime) -> u32 {
        if self.expired(now) { 0 } else { self.count }
    }

    /// Counts one failure, starting a new window when the last one is over.
    fn record(&mut self, now: SystemTime, window: Duration) -> &mut Self {
        if self.expired(now) {
            *self = Self::new(now, window);
        }
        self.count = self.count.saturating_add(1);
        self
    }
}

/// What a table entry says about its own expiry.
trait Slot {
    /// Whether the entry says nothing any more (drained, expired).
    fn idle(&self, now: SystemTime) -> bool;
    /// When it was last changed (the oldest go first when the table is full).
    fn touched(&self) -> SystemTime;
}

impl Slot for Bucket {
    fn idle(&self, now: SystemTime) -> bool {
        now >= self.empty_at
    }
    fn touched(&self) -> SystemTime {
        self.at
    }
}

impl Slot for Failures {
    fn idle(&self, now: SystemTime) -> bool {
        self.expired(now)
    }
    fn touched(&self) -> SystemTime {
        self.locked_until.unwrap_or(self.start)
    }
}

/// How often a table is pruned as it is used.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// A bounded map, pruned as it goes; it keeps `tracked` (shared by the tables of one
/// [`RateLimits`]) up to date as entries come and go.
struct Table<K, V> {
    map: HashMap<K, V>,
    max: usize,
    pruned: SystemTime,
    tracked: Arc<AtomicU64>,
}

impl<K: Hash + Eq, V: Slot> Table<K, V> {
    fn new(max: usize, now: SystemTime, tracked: Arc<AtomicU64>) -> Self {
        Self {
            map: HashMap::new(),
            max,
            pruned: now,
            tracked,
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.map.len()
    }

    /// Counts in `tracked` the entries gone since the map had `before`.
    fn shrank(&self, before: usize) {
        let gone = before.saturating_sub(self.map.len()) as u64;
        self.tracked.fetch_sub(gone, Ordering::Relaxed);
    }

    fn get(&self, key: &K) -> Option<&V> {
        self.map.get(key)
    }

    /// The entry of `key`, made with `make` if there is none (room made first).
    fn entry(&mut self, key: K, now: SystemTime, make: impl FnOnce() -> V) -> &mut V {
        if elapsed(self.pruned, now) >= PRUNE_EVERY {
            self.prune(now);
        }
        if !self.map.contains_key(&key) && self.map.len() >= self.max {
            self.prune(now);
            if self.map.len() >= self.max {
                self.evict();
            }
        }
        let tracked = &self.tracked;
        self.map.entry(key).or_insert_with(|| {
            tracked.fetch_add(1, Ordering::Relaxed);
            make()
        })
    }

    fn prune(&mut self, now: SystemTime) {
        let before = self.map.len();
        self.map.retain(|_, v| !v.idle(now));
        self.pruned = now;
        self.shrank(before);
    }

    /// Drops the older half (by last change).
    fn evict(&mut self) {
        let mut times: Vec<SystemTime> = self.map.values().map(Slot::touched).collect();
        let middle = times.len() / 2;
        if times.is_empty() {
            return;
        }
        let (_, median, _) = times.select_nth_unstable(middle);
        let median = *median;
        let before = self.map.len();
        self.map.retain(|_, v| v.touched() > median);
        self.shrank(before);
        warn!(
            kept = self.map.len(),
            "rate limit table full: dropped the older half"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_drains_at_the_rate() {
        let limit = Limit::new(2, Duration::from_secs(60));
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let mut b = Bucket::new(t0);
        assert_eq!(b.wait(&limit, t0), None);
        b.charge(&limit, t0);
        b.charge(&limit, t0);
        let wait = b.wait(&limit, t0).unwrap();
        assert!((29..=30).contains(&wait.as_secs()), "{wait:?}");
        assert_eq!(b.wait(&limit, t0 + Duration::from_secs(30)), None);
        assert!(!b.idle(t0 + Duration::from_secs(59)));
        assert!(b.idle(t0 + Duration::from_secs(60)));
    }

    #[test]
    fn failures_reset_after_the_window() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let w = Duration::from_secs(60);
        let mut f = Failures::new(t0, w);
        f.record(t0, w);
        f.record(t0 + Duration::from_secs(10), w);
        assert_eq!(f.current(t0 + Duration::from_secs(59)), 2);
        assert_eq!(f.current(t0 + Duration::from_secs(60)), 0);
        f.record(t0 + Duration::from_secs(61), w);
        assert_eq!(f.count, 1);
    }

    #[cfg(feature = "prometheus")]
    #[test]
    fn stats_are_a_collector() {
        let stats = Arc::new(RateStats::default());
        let c = stats.limit(LimitKind::MessagesPerIp);
        c.hits.fetch_add(3, Ordering::Relaxed);
        c.refusals.fetch_add(2, Ordering::Relaxed);
        let mut registry = prometheus_client::registry::Registry::with_prefix("mta");
        registry.register_collector(Box::new(stats));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for line in [
            "mta_smtp_rate_limit_hits_total{limit=\"messages_per_ip\"} 3\n",
            "mta_smtp_rate_limit_refusals_total{limit=\"messages_per_ip\"} 2\n",
            "mta_smtp_rate_limit_tarpitted_total 0\n",
            "mta_smtp_rate_limit_tracked 0\n",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
    }

    #[test]
    fn full_table_drops_the_older_half() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let limit = Limit::new(10, Duration::from_secs(3600));
        let mut t: Table<u32, Bucket> = Table::new(4, t0, Arc::default());
        for i in 0..4u32 {
            let now = t0 + Duration::from_secs(u64::from(i));
            t.entry(i, now, || Bucket::new(now)).charge(&limit, now);
        }
        let now = t0 + Duration::from_secs(10);
        t.entry(9, now, || Bucket::new(now)).charge(&limit, now);
        assert!(t.len() <= 3, "{}", t.len());
        assert!(t.get(&0).is_none() && t.get(&3).is_some() && t.get(&9).is_some());
    }
}
