//! Counters and gauges of the queue, for metrics.

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
