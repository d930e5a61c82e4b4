//! Counters and gauges of the queue, for metrics. With the `prometheus` feature,
//! [`Queue`](crate::Queue) is a prometheus-client `Collector` of all of them.

use std::sync::atomic::{AtomicU64, Ordering};

/// What the queue did so far. Every field only grows.
#[derive(Debug, Default)]
pub struct QueueStats {
    /// Messages made durable by [`Queue::enqueue`](crate::Queue::enqueue) (notifications
    /// included).
    pub enqueued: AtomicU64,
    /// Delivery status notifications queued (failures, delays, successes).
    pub notifications: AtomicU64,
    /// Recipients delivered.
    pub delivered: AtomicU64,
    /// Recipient attempts that failed temporarily (to be retried).
    pub deferred: AtomicU64,
    /// Recipients that failed for good (a permanent error).
    pub failed: AtomicU64,
    /// Recipients given up on after `max_age`.
    pub expired: AtomicU64,
    /// Time from acceptance to delivery of each delivered recipient.
    pub delivery_delay: Histogram,
    /// Recipient attempts by destination domain.
    pub by_domain: DomainCounts,
    /// Journal records replayed into the store when the queue opened (changes a crash
    /// or a kill left in the journal only).
    pub journal_replayed: AtomicU64,
}

/// How many destination domains get counts of their own in [`DomainCounts`].
pub const TRACKED_DOMAINS: usize = 100;

/// Recipient attempts by destination domain and result (delivered, deferred, failed):
/// the first [`TRACKED_DOMAINS`] domains seen each have their own counts, every later
/// one counts as `other`, so a metric labelled by domain stays bounded (and its counts
/// only grow).
#[derive(Debug, Default)]
pub struct DomainCounts {
    counts: std::sync::Mutex<std::collections::BTreeMap<String, [u64; 3]>>,
}

impl DomainCounts {
    /// The name under which domains beyond the first [`TRACKED_DOMAINS`] are counted.
    pub const OTHER: &'static str = "other";

    pub(crate) fn count(&self, domain: &str, outcome: &crate::Outcome) {
        let i = match outcome {
            crate::Outcome::Delivered(_) | crate::Outcome::Sent(_) => 0,
            crate::Outcome::Deferred(_) => 1,
            crate::Outcome::Failed(_) => 2,
        };
        let Ok(mut counts) = self.counts.lock() else {
            return;
        };
        let key = if counts.contains_key(domain) || counts.len() < TRACKED_DOMAINS {
            domain
        } else {
            Self::OTHER
        };
        // Allocates only for a name counted the first time (this runs per recipient).
        match counts.get_mut(key) {
            Some(c) => c[i] += 1,
            None => {
                let mut c = [0; 3];
                c[i] = 1;
                counts.insert(key.to_owned(), c);
            }
        }
    }

    /// `(domain, [delivered, deferred, failed])` for every domain counted, in order.
    #[cfg_attr(not(feature = "prometheus"), allow(dead_code))]
    pub(crate) fn snapshot(&self) -> Vec<(String, [u64; 3])> {
        self.counts
            .lock()
            .map(|c| c.iter().map(|(d, n)| (d.clone(), *n)).collect())
            .unwrap_or_default()
    }
}

/// The upper bounds (seconds) of [`Histogram`]'s buckets; the queue keeps times in whole
/// seconds, so the first bucket holds everything delivered within the second.
pub const DELAY_BUCKETS: [u64; 10] = [1, 5, 10, 30, 60, 300, 900, 3600, 14400, 86400];

/// A histogram of delays in seconds, with the buckets of [`DELAY_BUCKETS`].
#[derive(Debug, Default)]
pub struct Histogram {
    /// Observations per bucket (not cumulative), the last one for longer delays.
    pub buckets: [AtomicU64; DELAY_BUCKETS.len() + 1],
    /// The sum of all observations, seconds.
    pub sum: AtomicU64,
    /// How many observations.
    pub count: AtomicU64,
}

impl Histogram {
    /// Records one delay.
    pub fn observe(&self, seconds: u64) {
        let i = DELAY_BUCKETS
            .iter()
            .position(|&b| seconds < b)
            .unwrap_or(DELAY_BUCKETS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(seconds, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }
}

/// When the oldest message in each state was accepted (Unix seconds; `None`: no
/// message in that state).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Oldest {
    /// The oldest waiting for its next attempt.
    pub waiting: Option<u64>,
    /// The oldest being delivered.
    pub active: Option<u64>,
    /// The oldest on hold.
    pub held: Option<u64>,
}

/// How many messages the queue holds now, by where they stand.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueCounts {
    /// Waiting for their next attempt (or due now).
    pub waiting: u64,
    /// Being delivered (or changed by the administrator) now.
    pub active: u64,
    /// On hold.
    pub held: u64,
}

#[cfg(feature = "prometheus")]
impl prometheus_client::collector::Collector for crate::Queue {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder<'_>,
    ) -> std::fmt::Result {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::MetricType::{Counter, Gauge, Histogram};
        use prometheus_client::metrics::counter::ConstCounter;
        use prometheus_client::metrics::gauge::ConstGauge;

        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let (counts, oldest) = (self.counts(), self.oldest());
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let age = |at: Option<u64>| at.map_or(0, |t| now.saturating_sub(t));
        for (name, help, by_state) in [
            (
                "queue_messages",
                "Messages in the queue, by state.",
                [counts.waiting, counts.active, counts.held],
            ),
            (
                "queue_oldest_message_age_seconds",
                "Age of the oldest message in each state (0 when there is none).",
                [age(oldest.waiting), age(oldest.active), age(oldest.held)],
            ),
        ] {
            let mut family = encoder.encode_descriptor(name, help, None, Gauge)?;
            for (state, n) in ["waiting", "active", "held"].into_iter().zip(by_state) {
                ConstGauge::new(n).encode(family.encode_family(&[("state", state)])?)?;
            }
        }
        let q = self.stats();
        let (commits, jobs) = self.commit_stats();
        for (name, help, n) in [
            (
                "queue_enqueued",
                "Messages made durable in the queue (notifications included).",
                get(&q.enqueued),
            ),
            (
                "queue_notifications",
                "Delivery status notifications queued.",
                get(&q.notifications),
            ),
            (
                "queue_commits",
                "Durable commits of the queue (each one fsync pair).",
                commits,
            ),
            (
                "queue_committed_jobs",
                "Messages and updates made durable by those commits.",
                jobs,
            ),
            (
                "queue_store_syncs",
                "Syncs of the metadata store (the journal before each is no longer needed).",
                self.store_syncs(),
            ),
            (
                "queue_journal_replayed",
                "Journal records replayed into the metadata store when the queue opened (what a crash left in the journal only).",
                get(&q.journal_replayed),
            ),
        ] {
            ConstCounter::new(n).encode(encoder.encode_descriptor(name, help, None, Counter)?)?;
        }
        let mut family = encoder.encode_descriptor(
            "delivery_recipients",
            "Recipient delivery attempts, by result.",
            None,
            Counter,
        )?;
        for (result, n) in [
            ("delivered", &q.delivered),
            ("deferred", &q.deferred),
            ("failed", &q.failed),
            ("expired", &q.expired),
        ] {
            ConstCounter::new(get(n)).encode(family.encode_family(&[("result", result)])?)?;
        }
        let mut family = encoder.encode_descriptor(
            "delivery_recipients_by_domain",
            "Recipient delivery attempts by destination domain (the first 100 domains seen; later ones as other) and result.",
            None,
            Counter,
        )?;
        for (domain, counts) in q.by_domain.snapshot() {
            for (result, n) in ["delivered", "deferred", "failed"].into_iter().zip(counts) {
                let labels = [("domain", domain.as_str()), ("result", result)];
                ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
            }
        }
        let delay = &q.delivery_delay;
        // Per-bucket counts; the encoder sums them and adds +Inf from the count.
        let buckets: Vec<(f64, u64)> = DELAY_BUCKETS
            .iter()
            .zip(&delay.buckets)
            .map(|(bound, n)| (*bound as f64, get(n)))
            .collect();
        encoder
            .encode_descriptor(
                "delivery_delay_seconds",
                "Time from acceptance to delivery of each delivered recipient (whole seconds).",
                None,
                Histogram,
            )?
            .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                get(&delay.sum) as f64,
                get(&delay.count),
                &buckets,
                None,
            )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Outcome;

    #[test]
    fn domains_beyond_the_limit_count_as_other() {
        let counts = DomainCounts::default();
        for n in 0..TRACKED_DOMAINS + 5 {
            counts.count(&format!("d{n}.test"), &Outcome::Delivered(String::new()));
        }
        counts.count("d0.test", &Outcome::Deferred(String::new()));
        counts.count("late.test", &Outcome::Failed(String::new()));
        let snapshot = counts.snapshot();
        assert_eq!(snapshot.len(), TRACKED_DOMAINS + 1, "100 domains and other");
        let get = |d: &str| snapshot.iter().find(|(name, _)| name == d).map(|(_, n)| *n);
        assert_eq!(get("d0.test"), Some([1, 1, 0]));
        assert_eq!(get(DomainCounts::OTHER), Some([5, 0, 1]));
        assert_eq!(get("late.test"), None);
    }
}
