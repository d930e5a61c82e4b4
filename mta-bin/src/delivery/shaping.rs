//! Traffic shaping: a destination that throttles us (`421`, or a `4.7.x` rate-limit
//! reply) is backed off, so it is not hammered while other destinations keep full
//! speed. The state is per destination (the recipient domain); nothing is shared.
//!
//! ```text
//!  throttled ─▶ level += 1, pause = backoff × 2^(level-1) (at most backoff_max):
//!               deliveries to it are deferred without connecting until the pause ends,
//!               then one at a time (concurrency 1) until a success
//!  success ───▶ level -= 1 (step by step back to full speed, level 0)
//! ```
//!
//! A deferred message keeps its normal queue retry.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use smtp_proto::Reply;
use tracing::{info, warn};

/// The longest one delivery in backoff keeps the others of its destination waiting.
const BUSY_LIMIT: Duration = Duration::from_secs(15 * 60);

/// Backoff settings (`[outbound] backoff`, `backoff_max`).
#[derive(Clone, Copy, Debug)]
pub struct ShapingConfig {
    /// The first pause after a throttling reply. Default 30 s.
    pub backoff: Duration,
    /// The longest pause. Default 10 min.
    pub backoff_max: Duration,
}

impl Default for ShapingConfig {
    fn default() -> Self {
        Self {
            backoff: Duration::from_secs(30),
            backoff_max: Duration::from_secs(600),
        }
    }
}

/// What traffic shaping did so far, for metrics (`docs/metrics.md`); kept across
/// reloads. A `prometheus_client` `Collector`: `outbound_throttled_total` and
/// `outbound_shaping_total{action}`.
///
/// ```
/// let stats = mta_bin::delivery::ShapingStats::default();
/// assert_eq!(stats.throttled.load(std::sync::atomic::Ordering::Relaxed), 0);
/// ```
#[derive(Debug, Default)]
pub struct ShapingStats {
    /// Throttling replies from destinations (each backs its destination off further).
    pub throttled: AtomicU64,
    /// Deliveries deferred without connecting: their destination was backing off.
    pub backoff_deferred: AtomicU64,
    /// Messages that waited for their destination's rate (`max_messages_per_minute`).
    pub rate_waited: AtomicU64,
    /// Deliveries deferred by their destination's rate (the wait would have been too
    /// long).
    pub rate_deferred: AtomicU64,
}

impl prometheus_client::collector::Collector for ShapingStats {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder<'_>,
    ) -> std::fmt::Result {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::MetricType;
        use prometheus_client::metrics::counter::ConstCounter;

        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ConstCounter::new(get(&self.throttled)).encode(encoder.encode_descriptor(
            "outbound_throttled",
            "Throttling replies from destinations (421, 4.7.0, 4.7.28, a rate): each backs its destination off.",
            None,
            MetricType::Counter,
        )?)?;
        let mut family = encoder.encode_descriptor(
            "outbound_shaping",
            "Deliveries held by traffic shaping: deferred during a backoff (backoff_deferred), waiting for a destination's rate (rate_waited) or deferred by it (rate_deferred).",
            None,
            MetricType::Counter,
        )?;
        for (action, counter) in [
            ("backoff_deferred", &self.backoff_deferred),
            ("rate_waited", &self.rate_waited),
            ("rate_deferred", &self.rate_deferred),
        ] {
            ConstCounter::new(get(counter)).encode(family.encode_family(&[("action", action)])?)?;
        }
        Ok(())
    }
}

/// The backoff state of every destination.
#[derive(Debug, Default)]
pub struct Shaping {
    config: ShapingConfig,
    states: Mutex<HashMap<String, State>>,
    stats: Arc<ShapingStats>,
}

#[derive(Debug)]
struct State {
    /// How many throttling replies, less successes since.
    level: u32,
    /// No delivery before this.
    until: Instant,
    /// A delivery is under way (in backoff, only one at a time), until this at the
    /// latest (a delivery that never reported, cancelled at shutdown, is forgotten).
    busy: Option<Instant>,
}

/// Leave to deliver to a destination; report how it went with [`Shaping::record`].
#[derive(Debug)]
pub struct Admitted {
    shaped: bool,
}

impl Shaping {
    /// Shaping with these settings.
    pub fn new(config: ShapingConfig) -> Self {
        Self {
            config,
            states: Mutex::default(),
            stats: Arc::default(),
        }
    }

    /// Counts into `stats` (shared across reloads).
    pub fn count_into(mut self, stats: Arc<ShapingStats>) -> Self {
        self.stats = stats;
        self
    }

    /// The counters.
    pub fn stats(&self) -> &ShapingStats {
        &self.stats
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, State>> {
        self.states.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a delivery to `destination` may go now; else the text it is deferred
    /// with (`451 4.7.0 ...`), without connecting.
    pub fn admit(&self, destination: &str) -> Result<Admitted, String> {
        let mut states = self.lock();
        let Some(state) = states.get_mut(destination) else {
            return Ok(Admitted { shaped: false });
        };
        let now = Instant::now();
        if now < state.until {
            self.stats.backoff_deferred.fetch_add(1, Ordering::Relaxed);
            let left = state.until - now;
            return Err(format!(
                "451 4.7.0 {destination}: traffic shaping: backing off for {} s more after a \
                 throttling reply",
                left.as_secs().max(1)
            ));
        }
        if state.busy.is_some_and(|until| now < until) {
            self.stats.backoff_deferred.fetch_add(1, Ordering::Relaxed);
            return Err(format!(
                "451 4.7.0 {destination}: traffic shaping: one delivery at a time after a \
                 throttling reply"
            ));
        }
        state.busy = Some(now + BUSY_LIMIT);
        Ok(Admitted { shaped: true })
    }

    /// Records how a delivery admitted by [`Shaping::admit`] went: `throttled` when
    /// the destination answered with a throttling reply ([`is_throttling`]),
    /// `accepted` when it took the message (for some recipient at least). Neither (a
    /// refused connection, a rejected recipient): the backoff stays where it is.
    pub fn record(&self, destination: &str, admitted: Admitted, throttled: bool, accepted: bool) {
        let mut states = self.lock();
        if throttled {
            self.stats.throttled.fetch_add(1, Ordering::Relaxed);
            let now = Instant::now();
            let state = states.entry(destination.to_owned()).or_insert(State {
                level: 0,
                until: now,
                busy: None,
            });
            state.level = state.level.saturating_add(1);
            let factor = 1u32 << (state.level - 1).min(16);
            let pause = self
                .config
                .backoff
                .saturating_mul(factor)
                .min(self.config.backoff_max);
            state.until = state.until.max(now + pause);
            if admitted.shaped {
                state.busy = None;
            }
            warn!(
                destination,
                level = state.level,
                pause_s = pause.as_secs(),
                "traffic shaping: {destination} throttles us; backing off"
            );
            return;
        }
        let Some(state) = states.get_mut(destination) else {
            return;
        };
        if admitted.shaped {
            state.busy = None;
        }
        if !accepted {
            return;
        }
        state.level = state.level.saturating_sub(1);
        if state.level == 0 {
            states.remove(destination);
            info!(
                destination,
                "traffic shaping: {destination} back to full speed"
            );
        }
    }

    /// The destinations in backoff now, with their levels (for logs and tests).
    pub fn backed_off(&self) -> Vec<(String, u32)> {
        self.lock()
            .iter()
            .map(|(d, s)| (d.clone(), s.level))
            .collect()
    }
}

/// Message rates per destination (`max_messages_per_minute`): a token bucket each,
/// holding a tenth of a minute's messages at most.
#[derive(Debug, Default)]
pub struct Rates {
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl Rates {
    /// Takes a token for one message to `destination` (at most `per_minute` a minute):
    /// how long to wait before sending it; `None` (and nothing taken) when that would
    /// be longer than `max_wait`.
    pub fn reserve(
        &self,
        destination: &str,
        per_minute: u32,
        max_wait: Duration,
    ) -> Option<Duration> {
        let per_minute = f64::from(per_minute.max(1));
        let rate = per_minute / 60.0;
        let capacity = (per_minute / 10.0).max(1.0);
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let (tokens, last) = buckets
            .entry(destination.to_owned())
            .or_insert((capacity, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * rate).min(capacity);
        *last = now;
        let wait = if *tokens >= 1.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((1.0 - *tokens) / rate)
        };
        if wait > max_wait {
            return None;
        }
        *tokens -= 1.0;
        Some(wait)
    }
}

/// Whether `reply` asks us to slow down: `421` (any time), or a `4yz` reply with
/// enhanced status `4.7.0` or `4.7.28` (RFC 7372 "mail flood"), or another `4.7.x`
/// whose text speaks of a rate. Not the TLS and authentication statuses (`4.7.5`,
/// `4.7.8` ... `4.7.11`, `4.7.30`), unless the code is `421`.
pub fn is_throttling(reply: &Reply) -> bool {
    let code = reply.code().as_u16();
    if code == 421 {
        return true;
    }
    if !(400..500).contains(&code) {
        return false;
    }
    let Some(status) = reply.status() else {
        return false;
    };
    if status.class() != 4 || status.subject() != 7 {
        return false;
    }
    match status.detail() {
        0 | 28 => true,
        5 | 8..=11 | 30 => false,
        _ => {
            let text = reply.text().to_ascii_lowercase();
            ["rate", "too many", "throttl", "slow down"]
                .iter()
                .any(|w| text.contains(w))
        }
    }
}

#[cfg(test)]
mod tests {
    use smtp_proto::{EnhancedStatus, ReplyCode};

    use super::*;

    fn reply(code: u16, status: (u8, u16, u16), text: &str) -> Reply {
        Reply::new(
            ReplyCode::new(code).expect("code"),
            EnhancedStatus::new(status.0, status.1, status.2).expect("status"),
            text.to_owned(),
        )
    }

    #[test]
    fn throttling_replies_are_recognised() {
        let table = [
            (421, (4, 7, 0), "Too many messages", true),
            (421, (4, 3, 2), "shutting down", true),
            (451, (4, 7, 0), "try later", true),
            (450, (4, 7, 28), "flood", true),
            (451, (4, 7, 1), "rate limit exceeded", true),
            (451, (4, 7, 1), "greylisted", false),
            (454, (4, 7, 5), "TLS failed", false),
            (454, (4, 7, 8), "rate of auth", false),
            (451, (4, 3, 0), "too many", false),
            (550, (5, 7, 0), "too many", false),
            (250, (2, 0, 0), "ok", false),
        ];
        for (code, status, text, expected) in table {
            assert_eq!(
                is_throttling(&reply(code, status, text)),
                expected,
                "{code} {status:?} {text}"
            );
        }
    }

    #[test]
    fn a_throttled_destination_backs_off_alone_and_recovers() {
        let shaping = Shaping::new(ShapingConfig {
            backoff: Duration::ZERO,
            backoff_max: Duration::ZERO,
        });
        let a = shaping.admit("a.test").expect("admitted");
        shaping.record("a.test", a, true, false);
        shaping.record(
            "a.test",
            shaping.admit("a.test").expect("pause over"),
            true,
            false,
        );
        assert_eq!(shaping.backed_off(), vec![("a.test".to_owned(), 2)]);
        // Concurrency 1 in backoff: a second delivery waits for the first.
        let first = shaping.admit("a.test").expect("one at a time");
        assert!(shaping.admit("a.test").is_err());
        // Another destination is not touched.
        for _ in 0..3 {
            let b = shaping.admit("b.test").expect("b at full speed");
            shaping.record("b.test", b, false, true);
        }
        // A failure that is not throttling changes nothing but frees the turn.
        shaping.record("a.test", first, false, false);
        assert_eq!(shaping.backed_off(), vec![("a.test".to_owned(), 2)]);
        shaping.record(
            "a.test",
            shaping.admit("a.test").expect("admitted"),
            false,
            true,
        );
        assert_eq!(shaping.backed_off(), vec![("a.test".to_owned(), 1)]);
        shaping.record(
            "a.test",
            shaping.admit("a.test").expect("admitted"),
            false,
            true,
        );
        assert!(shaping.backed_off().is_empty());
    }

    #[test]
    fn a_rate_makes_messages_wait_then_defers() {
        let rates = Rates::default();
        let minute = Duration::from_secs(60);
        // 60 a minute: a burst of 6, then one a second.
        for _ in 0..6 {
            assert_eq!(rates.reserve("a.test", 60, minute), Some(Duration::ZERO));
        }
        let wait = rates
            .reserve("a.test", 60, minute)
            .expect("within a minute");
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        assert_eq!(rates.reserve("a.test", 60, Duration::ZERO), None);
        assert_eq!(rates.reserve("b.test", 60, minute), Some(Duration::ZERO));
    }

    #[test]
    fn the_pause_grows_and_defers_without_connecting() {
        let shaping = Shaping::new(ShapingConfig {
            backoff: Duration::from_secs(3600),
            backoff_max: Duration::from_secs(7200),
        });
        let a = shaping.admit("a.test").expect("admitted");
        shaping.record("a.test", a, true, false);
        let text = shaping.admit("a.test").expect_err("backing off");
        assert!(
            text.starts_with("451 4.7.0 a.test: traffic shaping"),
            "{text}"
        );
    }
}
