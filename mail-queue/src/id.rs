//! Queue ids: unique, increasing, printable.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// The id of a queued message, shown to clients in the `250` reply and in every log
/// line about the message. It is the time of acceptance in microseconds, bumped when
/// two messages arrive in the same microsecond, so ids sort by arrival.
///
/// ```
/// use mail_queue::QueueId;
/// let id: QueueId = "00062F1A2B3C4D5E".parse().unwrap();
/// assert_eq!(id.to_string(), "00062F1A2B3C4D5E");
/// ```
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct QueueId(pub u64);

impl QueueId {
    /// When the message was accepted, in Unix seconds (read from the id itself).
    ///
    /// ```
    /// use mail_queue::QueueId;
    /// assert_eq!(QueueId(1_795_550_400_123_456).accepted_at(), 1_795_550_400);
    /// ```
    pub fn accepted_at(self) -> u64 {
        self.0 / 1_000_000
    }
}

impl fmt::Display for QueueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016X}", self.0)
    }
}

impl fmt::Debug for QueueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "QueueId({self})")
    }
}

impl std::str::FromStr for QueueId {
    type Err = std::num::ParseIntError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        u64::from_str_radix(s, 16).map(Self)
    }
}

/// Makes ids that never repeat within a process and keep increasing across restarts
/// (seeded with the largest id in the store).
#[derive(Debug, Default)]
pub(crate) struct IdGenerator {
    last: AtomicU64,
}

impl IdGenerator {
    pub(crate) fn new(largest_existing: u64) -> Self {
        Self {
            last: AtomicU64::new(largest_existing),
        }
    }

    pub(crate) fn next(&self) -> QueueId {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        let mut last = self.last.load(Ordering::Relaxed);
        loop {
            let id = now.max(last + 1);
            match self
                .last
                .compare_exchange_weak(last, id, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return QueueId(id),
                Err(current) => last = current,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_increase() {
        let g = IdGenerator::new(u64::MAX / 2);
        let a = g.next();
        let b = g.next();
        assert!(b > a && a.0 > u64::MAX / 2);
        assert_eq!(a.to_string().parse::<QueueId>().unwrap(), a);
    }
}
