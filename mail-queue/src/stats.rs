//! Counters and gauges of the queue, for metrics.

use std::sync::atomic::AtomicU64;

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
