//! Greylisting: the first time a client network sends from a sender to a recipient,
//! the recipient is deferred (`451 4.7.1 Greylisted: try again in N seconds`). A real
//! mail server retries; most spam bots do not. A retry after `delay` and within
//! `retry_window` passes, and so does every later message of the same triplet for
//! `lifetime`.
//!
//! ```text
//!  RCPT ─▶ login, trusted or allowlisted client? ─────────────────────▶ pass
//!          triplet (client /24 or /64, sender, recipient)
//!            new, or its retry window is over ─▶ remember it ─────────▶ 451 4.7.1 try again in <delay>
//!            seen less than `delay` ago ──────────────────────────────▶ 451 4.7.1 try again in <the rest>
//!            seen `delay` ago or more (the retry) ─▶ passed for `lifetime`; the client
//!              network's passes + 1 (after `auto_allowlist_after`: allowlisted) ──▶ pass
//! ```
//!
//! The sender is compared in a normal form (lower case, a BATV `prvs=…=` tag removed,
//! every run of digits one `#`), so that a list server's per-message return path (VERP)
//! does not make each message a new triplet.
//!
//! The state is kept in memory, bounded by [`GreylistSettings::max_entries`] and pruned
//! of expired entries, and, with [`GreylistSettings::state_file`], saved to a file
//! (written to a temporary file and renamed over the old one) every `save_interval`, on
//! [`Greylist::save`], and when the last clone of the filter is dropped; it is read back
//! when the filter is made, so a restart keeps what was learned. A file that cannot be
//! read is logged and ignored (the filter starts empty).
//!
//! Add the filter to the rcpt stage after [`LocalRecipients`](crate::filters::LocalRecipients)
//! (that is, before it in the calls: the last added runs first), so that unknown users
//! are refused at once and never greylisted:
//!
//! ```
//! use std::time::Duration;
//! use smtp_server::filters::greylist::{Greylist, GreylistSettings, FilterMode};
//! use smtp_server::filters::{DomainSet, LocalRecipients};
//! use smtp_server::{Stages, filter};
//! # let sink = tower::service_fn(|_| async { Ok::<_, smtp_server::BoxError>(smtp_server::Decision::accept()) });
//! # let dir = tempfile::tempdir().unwrap();
//! let greylist = Greylist::new(GreylistSettings {
//!     mode: FilterMode::Enforce,
//!     state_file: Some(dir.path().join("greylist.state")),
//!     trusted_networks: vec!["192.0.2.0/24".parse().unwrap()],
//!     ..GreylistSettings::default()
//! });
//! let stages = Stages::new(sink)
//!     .rcpt_layer(filter(greylist.clone()))
//!     .rcpt_layer(filter(LocalRecipients::new(DomainSet::new(["example.test"]), ["ann@example.test"])));
//! let stats = greylist.stats(); // register it with a prometheus Registry (feature `prometheus`)
//! # let _ = (stages, stats);
//! ```

use std::collections::HashMap;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use ipnet::IpNet;
use smtp_proto::{EnhancedStatus, ForwardPath, ReversePath};
use tracing::{info, warn};

use super::IpNetwork;
pub use super::rate::{Clock, FilterMode, ManualClock, SystemClock};
use crate::{Check, Decision, RcptRequest, SessionInfo};

/// The settings of [`Greylist`].
///
/// ```
/// use smtp_server::filters::greylist::{GreylistSettings, FilterMode};
/// let settings = GreylistSettings::default();
/// assert_eq!(settings.mode, FilterMode::Off);
/// assert_eq!(settings.delay.as_secs(), 300);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GreylistSettings {
    /// Off, tag (log and count what would be deferred, defer nothing) or enforce.
    /// Default off: greylisting delays every new correspondent's first message by
    /// `delay`, which a site should choose knowingly.
    pub mode: FilterMode,
    /// How long a new triplet is deferred. Default 5 minutes.
    pub delay: Duration,
    /// How long after the first attempt a retry is accepted (from the first attempt,
    /// so it includes `delay`); a later retry starts over. Default 2 days.
    pub retry_window: Duration,
    /// How long a triplet that passed (and a client network allowlisted automatically)
    /// is remembered after its last message. Default 35 days (a monthly newsletter
    /// stays known).
    pub lifetime: Duration,
    /// Triplets a client network must pass before it is allowlisted (not greylisted
    /// any more, for `lifetime` after its last pass); 0: never. Default 5.
    pub auto_allowlist_after: u32,
    /// Clients never greylisted: your trusted networks. Default none.
    pub trusted_networks: Vec<IpNetwork>,
    /// Other clients never greylisted (known senders' outgoing servers that do not
    /// retry from the same network). Default none.
    pub allowlist: Vec<IpNetwork>,
    /// Where the state is kept across restarts; `None`: in memory only. Default none.
    pub state_file: Option<PathBuf>,
    /// How often a changed state is written (when a tokio runtime runs the filter);
    /// zero: only on [`Greylist::save`] and when dropped. Default 1 minute.
    pub save_interval: Duration,
    /// Triplets kept at most (and client networks at most); beyond, expired entries
    /// are pruned, then the older half of the pending ones (then of the passed ones).
    /// Default 100 000 (a few tens of MB at most).
    pub max_entries: usize,
}

impl Default for GreylistSettings {
    fn default() -> Self {
        Self {
            mode: FilterMode::Off,
            delay: Duration::from_secs(300),
            retry_window: Duration::from_secs(2 * 86_400),
            lifetime: Duration::from_secs(35 * 86_400),
            auto_allowlist_after: 5,
            trusted_networks: Vec::new(),
            allowlist: Vec::new(),
            state_file: None,
            save_interval: Duration::from_secs(60),
            max_entries: 100_000,
        }
    }
}

/// Counters of a [`Greylist`], for metrics. The counters only grow; `entries` and
/// `clients` are gauges.
///
/// With the `prometheus` feature it is a `prometheus_client::collector::Collector`:
/// `smtp_greylist_total{result}` (`deferred`, `passed`, `allowlisted`, `skipped`),
/// `smtp_greylist_auto_allowlisted_total`, `smtp_greylist_save_errors_total`, and the
/// gauges `smtp_greylist_entries` and `smtp_greylist_clients`.
#[derive(Debug, Default)]
pub struct GreylistStats {
    /// Recipients deferred (in tag mode: that would have been).
    pub deferred: AtomicU64,
    /// Recipients whose triplet passed (a retry after the delay, or a known triplet).
    pub passed: AtomicU64,
    /// Recipients let through because the client network is allowlisted automatically.
    pub allowlisted: AtomicU64,
    /// Recipients not looked at: logins, trusted networks, the static allowlist.
    pub skipped: AtomicU64,
    /// Client networks allowlisted automatically.
    pub auto_allowlisted: AtomicU64,
    /// Failed writes of the state file.
    pub save_errors: AtomicU64,
    /// Triplets kept now.
    pub entries: AtomicU64,
    /// Client networks kept now (counting passes, or allowlisted).
    pub clients: AtomicU64,
}

#[cfg(feature = "prometheus")]
impl prometheus_client::collector::Collector for GreylistStats {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder<'_>,
    ) -> std::fmt::Result {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::MetricType::{Counter, Gauge};
        use prometheus_client::metrics::counter::ConstCounter;
        use prometheus_client::metrics::gauge::ConstGauge;

        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut family = encoder.encode_descriptor(
            "smtp_greylist",
            "Recipients seen by greylisting, by result (deferred: in tag mode, would have been).",
            None,
            Counter,
        )?;
        for (result, counter) in [
            ("deferred", &self.deferred),
            ("passed", &self.passed),
            ("allowlisted", &self.allowlisted),
            ("skipped", &self.skipped),
        ] {
            ConstCounter::new(get(counter)).encode(family.encode_family(&[("result", result)])?)?;
        }
        for (name, help, counter) in [
            (
                "smtp_greylist_auto_allowlisted",
                "Client networks allowlisted after passing greylisting often enough.",
                &self.auto_allowlisted,
            ),
            (
                "smtp_greylist_save_errors",
                "Failed writes of the greylisting state file.",
                &self.save_errors,
            ),
        ] {
            ConstCounter::new(get(counter))
                .encode(encoder.encode_descriptor(name, help, None, Counter)?)?;
        }
        for (name, help, gauge) in [
            (
                "smtp_greylist_entries",
                "Triplets (client network, sender, recipient) greylisting keeps now.",
                &self.entries,
            ),
            (
                "smtp_greylist_clients",
                "Client networks greylisting keeps now (passes counted, or allowlisted).",
                &self.clients,
            ),
        ] {
            ConstGauge::new(get(gauge))
                .encode(encoder.encode_descriptor(name, help, None, Gauge)?)?;
        }
        Ok(())
    }
}

/// The greylisting filter (a rcpt-stage [`Check`]); clones share the state. See the
/// [module](self).
#[derive(Clone)]
pub struct Greylist {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Greylist {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Greylist")
            .field("settings", &self.inner.settings)
            .finish_non_exhaustive()
    }
}

impl Greylist {
    /// A greylist with `settings` on the system clock, with the state read from
    /// `settings.state_file` when there is one.
    pub fn new(settings: GreylistSettings) -> Self {
        Self::with_clock(settings, Arc::new(SystemClock))
    }

    /// A greylist with `settings` on `clock` (a [`ManualClock`] in tests).
    pub fn with_clock(settings: GreylistSettings, clock: Arc<dyn Clock>) -> Self {
        let now = millis(clock.now());
        let state = match &settings.state_file {
            Some(path) => load(path, now, &settings),
            None => State::default(),
        };
        let stats = Arc::new(GreylistStats::default());
        state.count(&stats);
        Self {
            inner: Arc::new(Inner {
                settings,
                clock,
                stats,
                state: Mutex::new(state),
                save_lock: Mutex::new(()),
                saver: AtomicBool::new(false),
            }),
        }
    }

    /// The counters.
    pub fn stats(&self) -> Arc<GreylistStats> {
        Arc::clone(&self.inner.stats)
    }

    /// Writes the state file now (nothing without one): to a temporary file in the same
    /// directory, synced, then renamed over the old one, so that a crash leaves the old
    /// state or the new one, never half of one.
    pub fn save(&self) -> std::io::Result<()> {
        self.inner.save()
    }

    /// Drops the expired entries now (done as it goes, every ten minutes).
    pub fn prune(&self) {
        let now = self.inner.now();
        let mut state = lock(&self.inner.state);
        state.prune(now, &self.inner.settings);
        state.count(&self.inner.stats);
    }

    /// Triplets kept now.
    pub fn entries(&self) -> usize {
        lock(&self.inner.state).triplets.len()
    }

    /// Client networks kept now.
    pub fn clients(&self) -> usize {
        lock(&self.inner.state).clients.len()
    }

    /// Starts the periodic save, once, if there is a file, an interval and a runtime.
    fn start_saver(&self) {
        let s = &self.inner.settings;
        if s.state_file.is_none() || s.save_interval.is_zero() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.inner.saver.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak = Arc::downgrade(&self.inner);
        let interval = s.save_interval;
        runtime.spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                let Some(inner) = weak.upgrade() else { break };
                if lock(&inner.state).dirty {
                    let _ = tokio::task::spawn_blocking(move || inner.save_logged()).await;
                }
            }
        });
    }
}

impl Check<RcptRequest> for Greylist {
    fn check(&self, req: &mut RcptRequest) -> Option<Decision> {
        let settings = &self.inner.settings;
        if settings.mode == FilterMode::Off {
            return None;
        }
        self.start_saver();
        let stats = &self.inner.stats;
        let verdict = self.inner.verdict(&req.session, &req.from, &req.to);
        let wait = match verdict {
            Verdict::Skipped => {
                stats.skipped.fetch_add(1, Ordering::Relaxed);
                return None;
            }
            Verdict::Allowlisted => {
                stats.allowlisted.fetch_add(1, Ordering::Relaxed);
                return None;
            }
            Verdict::Passed => {
                stats.passed.fetch_add(1, Ordering::Relaxed);
                return None;
            }
            Verdict::Deferred(wait) => wait,
        };
        stats.deferred.fetch_add(1, Ordering::Relaxed);
        let secs = u64::try_from(wait.as_millis().div_ceil(1000))
            .unwrap_or(u64::MAX)
            .max(1);
        info!(client = %req.session.peer.ip(), from = %req.from, to = %req.to, retry_in = secs, mode = settings.mode.as_str(), "greylisted");
        (settings.mode == FilterMode::Enforce).then(|| {
            Decision::defer::<451>(
                EnhancedStatus::NOT_AUTHORIZED_TEMPORARY,
                format!("Greylisted: try again in {}", super::rate::seconds(secs)),
            )
        })
    }
}

/// The client network greylisting compares: the /24 of an IPv4 address (also when
/// written IPv4-mapped), the /64 of an IPv6 address (a sender's retry may come from
/// another address of its pool).
///
/// ```
/// use smtp_server::filters::greylist::client_network;
/// assert_eq!(client_network("192.0.2.77".parse().unwrap()).to_string(), "192.0.2.0/24");
/// assert_eq!(client_network("::ffff:192.0.2.77".parse().unwrap()).to_string(), "192.0.2.0/24");
/// assert_eq!(client_network("2001:db8:1:2:3::4".parse().unwrap()).to_string(), "2001:db8:1:2::/64");
/// ```
pub fn client_network(ip: IpAddr) -> IpNet {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    let prefix = if ip.is_ipv4() { 24 } else { 64 };
    IpNet::new(ip, prefix).map_or_else(|_| IpNet::from(ip), |n| n.trunc())
}

/// The sender as greylisting compares it: lower case, without a BATV tag
/// (`prvs=1234abcdef=`), each run of digits in the local part one `#`; the null sender
/// is empty.
///
/// ```
/// use smtp_server::filters::greylist::normal_sender;
/// use smtp_server::smtp_proto::ReversePath;
/// let verp = ReversePath::parse("<list-bounce-1234-ann=example.test@Lists.EXAMPLE>").unwrap();
/// assert_eq!(normal_sender(&verp), "list-bounce-#-ann=example.test@lists.example");
/// let batv = ReversePath::parse("<prvs=0123abcdef=Bob@example.net>").unwrap();
/// assert_eq!(normal_sender(&batv), "bob@example.net");
/// assert_eq!(normal_sender(&ReversePath::Null), "");
/// ```
pub fn normal_sender(from: &ReversePath) -> String {
    let Some(m) = from.mailbox() else {
        return String::new();
    };
    let local = m.local_part_unquoted().to_lowercase();
    let local = local
        .strip_prefix("prvs=")
        .and_then(|rest| rest.split_once('=').map(|(_, user)| user))
        .unwrap_or(&local);
    let mut out = String::with_capacity(local.len() + m.domain().len() + 1);
    let mut digits = false;
    for c in local.chars() {
        if c.is_ascii_digit() {
            if !digits {
                out.push('#');
            }
            digits = true;
        } else {
            out.push(c);
            digits = false;
        }
    }
    out.push('@');
    out.push_str(&m.domain().to_ascii_lowercase());
    out
}

/// What greylisting says about one recipient.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    /// Not greylisted: a login, a trusted or allowlisted client.
    Skipped,
    /// The client network is allowlisted automatically.
    Allowlisted,
    /// The triplet passed.
    Passed,
    /// Come back in this long.
    Deferred(Duration),
}

/// The shared state.
struct Inner {
    settings: GreylistSettings,
    clock: Arc<dyn Clock>,
    stats: Arc<GreylistStats>,
    state: Mutex<State>,
    /// One writer of the state file at a time.
    save_lock: Mutex<()>,
    /// Whether the periodic save was started.
    saver: AtomicBool,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if lock(&self.state).dirty {
            self.save_logged();
        }
    }
}

/// How often the state is pruned as it is used, in milliseconds.
const PRUNE_EVERY: u64 = 600_000;

/// The first line of the state file.
const HEADER: &str = "mta-greylist 1";

impl Inner {
    fn now(&self) -> u64 {
        millis(self.clock.now())
    }

    fn verdict(&self, session: &SessionInfo, from: &ReversePath, to: &ForwardPath) -> Verdict {
        let s = &self.settings;
        let ip = session.peer.ip();
        if session.authenticated.is_some()
            || s.trusted_networks.iter().any(|n| n.contains(ip))
            || s.allowlist.iter().any(|n| n.contains(ip))
        {
            return Verdict::Skipped;
        }
        let net = client_network(ip);
        let now = self.now();
        let mut state = lock(&self.state);
        if now.saturating_sub(state.pruned) >= PRUNE_EVERY {
            state.prune(now, s);
        }
        if state
            .clients
            .get(&net)
            .is_some_and(|c| c.allowlisted_until > now)
        {
            return Verdict::Allowlisted;
        }
        let key = Triplet {
            net,
            sender: normal_sender(from),
            recipient: normal_recipient(to),
        };
        let (delay, window, lifetime) =
            (ms(s.delay), ms(s.retry_window.max(s.delay)), ms(s.lifetime));
        let verdict = match state.triplets.get_mut(&key) {
            Some(e) if e.passed && now <= e.last.saturating_add(lifetime) => {
                e.last = now;
                Verdict::Passed
            }
            Some(e) if !e.passed && now <= e.first.saturating_add(window) => {
                let due = e.first.saturating_add(delay);
                e.last = now;
                if now < due {
                    Verdict::Deferred(Duration::from_millis(due - now))
                } else {
                    e.passed = true;
                    state.passed(net, now, s, &self.stats);
                    Verdict::Passed
                }
            }
            _ => {
                state.insert(key, now, s);
                Verdict::Deferred(s.delay)
            }
        };
        state.dirty = true;
        state.count(&self.stats);
        verdict
    }

    fn save(&self) -> std::io::Result<()> {
        let Some(path) = &self.settings.state_file else {
            return Ok(());
        };
        let _one_writer = lock(&self.save_lock);
        let text = {
            let mut state = lock(&self.state);
            state.prune(self.now(), &self.settings);
            state.count(&self.stats);
            state.dirty = false;
            state.serialize()
        };
        write_atomically(path, text.as_bytes()).inspect_err(|_| {
            lock(&self.state).dirty = true;
            self.stats.save_errors.fetch_add(1, Ordering::Relaxed);
        })
    }

    fn save_logged(&self) {
        if let Err(e) = self.save() {
            let path = self.settings.state_file.as_deref().unwrap_or(Path::new(""));
            warn!(path = %path.display(), error = %e, "cannot save the greylisting state");
        }
    }
}

/// A triplet: client network, sender, recipient.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Triplet {
    net: IpNet,
    sender: String,
    recipient: String,
}

/// What is known of a triplet (times in milliseconds since the epoch).
#[derive(Clone, Copy, Debug)]
struct Entry {
    first: u64,
    last: u64,
    passed: bool,
}

/// What is known of a client network.
#[derive(Clone, Copy, Debug, Default)]
struct Client {
    /// Triplets it passed.
    passes: u32,
    /// Allowlisted until then (0: not).
    allowlisted_until: u64,
    /// Its last pass.
    last: u64,
}

#[derive(Debug, Default)]
struct State {
    triplets: HashMap<Triplet, Entry>,
    clients: HashMap<IpNet, Client>,
    /// Changed since the last save.
    dirty: bool,
    /// Last pruned.
    pruned: u64,
}

impl State {
    fn count(&self, stats: &GreylistStats) {
        stats
            .entries
            .store(self.triplets.len() as u64, Ordering::Relaxed);
        stats
            .clients
            .store(self.clients.len() as u64, Ordering::Relaxed);
    }

    /// A new triplet, room made first.
    fn insert(&mut self, key: Triplet, now: u64, s: &GreylistSettings) {
        let max = s.max_entries.max(1);
        if self.triplets.len() >= max {
            self.prune(now, s);
        }
        if self.triplets.len() >= max {
            // The older half of the pending triplets, then of the passed ones.
            for passed in [false, true] {
                let mut times: Vec<u64> = self
                    .triplets
                    .values()
                    .filter(|e| e.passed == passed)
                    .map(|e| e.last)
                    .collect();
                if times.is_empty() {
                    continue;
                }
                let middle = times.len() / 2;
                let median = *times.select_nth_unstable(middle).1;
                self.triplets
                    .retain(|_, e| e.passed != passed || e.last > median);
                warn!(
                    kept = self.triplets.len(),
                    "greylisting table full: dropped older entries"
                );
                if self.triplets.len() < max {
                    break;
                }
            }
        }
        self.triplets.insert(
            key,
            Entry {
                first: now,
                last: now,
                passed: false,
            },
        );
    }

    /// A triplet of `net` passed: count it for the network's allowlisting.
    fn passed(&mut self, net: IpNet, now: u64, s: &GreylistSettings, stats: &GreylistStats) {
        if s.auto_allowlist_after == 0 {
            return;
        }
        let max = s.max_entries.max(1);
        if !self.clients.contains_key(&net) && self.clients.len() >= max {
            self.prune(now, s);
            if self.clients.len() >= max {
                let mut times: Vec<u64> = self.clients.values().map(|c| c.last).collect();
                let middle = times.len() / 2;
                let median = *times.select_nth_unstable(middle).1;
                self.clients.retain(|_, c| c.last > median);
            }
        }
        let client = self.clients.entry(net).or_default();
        client.passes = client.passes.saturating_add(1);
        client.last = now;
        if client.passes >= s.auto_allowlist_after {
            if client.allowlisted_until <= now {
                stats.auto_allowlisted.fetch_add(1, Ordering::Relaxed);
                info!(client = %net, passes = client.passes, "client network allowlisted for greylisting");
            }
            client.allowlisted_until = now.saturating_add(ms(s.lifetime));
        }
    }

    /// Drops what expired: pending triplets past their retry window, passed ones and
    /// client networks not seen for `lifetime`.
    fn prune(&mut self, now: u64, s: &GreylistSettings) {
        let window = ms(s.retry_window.max(s.delay));
        let lifetime = ms(s.lifetime);
        let before = self.triplets.len() + self.clients.len();
        self.triplets.retain(|_, e| {
            if e.passed {
                now <= e.last.saturating_add(lifetime)
            } else {
                now <= e.first.saturating_add(window)
            }
        });
        self.clients
            .retain(|_, c| c.allowlisted_until > now || now <= c.last.saturating_add(lifetime));
        if self.triplets.len() + self.clients.len() != before {
            self.dirty = true;
        }
        self.pruned = now;
    }

    /// The state file's text: a header line, then one line per triplet (`t`) and per
    /// client network (`c`), tab-separated, addresses %-escaped.
    fn serialize(&self) -> String {
        let mut out = String::with_capacity(64 * (self.triplets.len() + self.clients.len() + 1));
        out.push_str(HEADER);
        out.push('\n');
        for (t, e) in &self.triplets {
            out.push_str(&format!(
                "t\t{}\t{}\t{}\t{}\t{}\t{}\n",
                t.net,
                e.first,
                e.last,
                u8::from(e.passed),
                escape(&t.sender),
                escape(&t.recipient)
            ));
        }
        for (net, c) in &self.clients {
            out.push_str(&format!(
                "c\t{net}\t{}\t{}\t{}\n",
                c.passes, c.allowlisted_until, c.last
            ));
        }
        out
    }

    /// The state of a file's text; `Err` with the line number of the first bad line.
    fn parse(text: &str, max: usize) -> Result<Self, usize> {
        let mut lines = text.lines();
        if lines.next() != Some(HEADER) {
            return Err(1);
        }
        let mut state = Self::default();
        for (n, line) in lines.enumerate() {
            let bad = n + 2;
            let fields: Vec<&str> = line.split('\t').collect();
            match fields.as_slice() {
                ["t", net, first, last, passed, sender, recipient] => {
                    if state.triplets.len() >= max {
                        continue;
                    }
                    let key = Triplet {
                        net: net.parse().map_err(|_| bad)?,
                        sender: unescape(sender).ok_or(bad)?,
                        recipient: unescape(recipient).ok_or(bad)?,
                    };
                    let entry = Entry {
                        first: first.parse().map_err(|_| bad)?,
                        last: last.parse().map_err(|_| bad)?,
                        passed: match *passed {
                            "0" => false,
                            "1" => true,
                            _ => return Err(bad),
                        },
                    };
                    state.triplets.insert(key, entry);
                }
                ["c", net, passes, until, last] => {
                    if state.clients.len() >= max {
                        continue;
                    }
                    let client = Client {
                        passes: passes.parse().map_err(|_| bad)?,
                        allowlisted_until: until.parse().map_err(|_| bad)?,
                        last: last.parse().map_err(|_| bad)?,
                    };
                    state.clients.insert(net.parse().map_err(|_| bad)?, client);
                }
                [""] => {}
                _ => return Err(bad),
            }
        }
        Ok(state)
    }
}

/// The state in `path`, without what expired; empty when there is no file, or when it
/// cannot be read (logged).
fn load(path: &Path, now: u64, s: &GreylistSettings) -> State {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return State::default(),
        Err(e) => {
            warn!(path = %path.display(), error = %e, "cannot read the greylisting state; starting empty");
            return State::default();
        }
    };
    match State::parse(&text, s.max_entries.max(1)) {
        Ok(mut state) => {
            state.prune(now, s);
            state.dirty = false;
            info!(path = %path.display(), triplets = state.triplets.len(), clients = state.clients.len(), "greylisting state loaded");
            state
        }
        Err(line) => {
            warn!(path = %path.display(), line, "greylisting state file is corrupt; ignored, starting empty");
            State::default()
        }
    }
}

/// Numbers temporary files, so that two writers in one process never share one.
static TEMP_FILES: AtomicU64 = AtomicU64::new(0);

/// Writes `bytes` to `path` through a synced temporary file renamed over it.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("the state file path has no file name"))?;
    let temp = dir.join(format!(
        ".{}.{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id(),
        TEMP_FILES.fetch_add(1, Ordering::Relaxed)
    ));
    let written = (|| {
        let mut file = std::fs::File::create(&temp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&temp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    written?;
    // The rename itself, durable (best effort: not every system can sync a directory).
    if let Ok(dir) = std::fs::File::open(dir) {
        let _ = dir.sync_all();
    }
    Ok(())
}

/// `%`, tab, CR and LF as `%25`, `%09`, `%0D`, `%0A`.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '%' => out.push_str("%25"),
            '\t' => out.push_str("%09"),
            '\r' => out.push_str("%0D"),
            '\n' => out.push_str("%0A"),
            c => out.push(c),
        }
    }
    out
}

/// The reverse of [`escape`]; `None` for a bad escape.
fn unescape(s: &str) -> Option<String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('%') {
        out.push_str(&rest[..i]);
        let code = rest.get(i + 1..i + 3)?;
        out.push(char::from(u8::from_str_radix(code, 16).ok()?));
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    Some(out)
}

/// The recipient as greylisting compares it: lower case.
fn normal_recipient(to: &ForwardPath) -> String {
    match to.mailbox() {
        Some(m) => format!(
            "{}@{}",
            m.local_part_unquoted().to_lowercase(),
            m.domain().to_ascii_lowercase()
        ),
        None => "postmaster".to_owned(),
    }
}

fn millis(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_round_trip() {
        for s in ["", "a@b", "100%\tx\r\n%", "\"a b\"@c"] {
            assert_eq!(unescape(&escape(s)).as_deref(), Some(s));
        }
        assert_eq!(unescape("%4"), None);
        assert_eq!(unescape("%zz"), None);
    }

    #[test]
    fn state_round_trips_and_rejects_corruption() {
        let mut state = State::default();
        let key = Triplet {
            net: "192.0.2.0/24".parse().unwrap(),
            sender: "a\tb@x".into(),
            recipient: "c@y".into(),
        };
        state.triplets.insert(
            key.clone(),
            Entry {
                first: 1,
                last: 2,
                passed: true,
            },
        );
        state.clients.insert(
            "2001:db8::/64".parse().unwrap(),
            Client {
                passes: 3,
                allowlisted_until: 4,
                last: 5,
            },
        );
        let text = state.serialize();
        let back = State::parse(&text, 10).unwrap();
        assert!(back.triplets[&key].passed);
        assert_eq!(back.clients.len(), 1);
        assert_eq!(State::parse("nonsense\n", 10).unwrap_err(), 1);
        let broken = text.replace("\t1\t", "\tx\t");
        assert!(State::parse(&broken, 10).is_err());
    }

    #[cfg(feature = "prometheus")]
    #[test]
    fn stats_are_a_collector() {
        let stats = Arc::new(GreylistStats::default());
        stats.deferred.fetch_add(2, Ordering::Relaxed);
        stats.entries.store(7, Ordering::Relaxed);
        let mut registry = prometheus_client::registry::Registry::with_prefix("mta");
        registry.register_collector(Box::new(stats));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains("mta_smtp_greylist_total{result=\"deferred\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("mta_smtp_greylist_entries 7\n"), "{text}");
    }
}
