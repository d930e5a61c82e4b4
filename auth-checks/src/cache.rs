//! A small map of DNS-derived values kept until their TTL ends: bounded in entries and
//! in lifetime, shared by the SPF lookups ([`crate::spf`]) and others. A value is never
//! kept longer than the answer it came from said, nor longer than [`MAX_TTL`].
//!
//! The point is speed for repeated senders: a domain seen a moment ago is a hash lookup,
//! not a trip through the resolver (and, for records we parse, not a parse either).

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Longest a value is kept, whatever its TTL says.
pub(crate) const MAX_TTL: Duration = Duration::from_secs(3600);

/// Values by key until their TTL runs out (at most [`MAX_TTL`]), at most `capacity` of
/// them: beyond, the expired ones go, then the half that expires soonest.
#[derive(Debug)]
pub(crate) struct TtlCache<K, V> {
    map: Mutex<HashMap<K, (V, Instant)>>,
    capacity: usize,
}

impl<K: Hash + Eq, V: Clone> TtlCache<K, V> {
    /// An empty cache of at most `capacity` entries.
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
            capacity,
        }
    }

    /// The value under `key`, if it has not expired.
    pub(crate) fn get<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.get(key)
            .filter(|(_, expires)| *expires > Instant::now())
            .map(|(value, _)| value.clone())
    }

    /// Keeps `value` under `key` for `ttl` (at most [`MAX_TTL`]); a zero TTL keeps
    /// nothing.
    pub(crate) fn put(&self, key: K, value: V, ttl: Duration) {
        let ttl = ttl.min(MAX_TTL);
        if ttl.is_zero() || self.capacity == 0 {
            return;
        }
        let now = Instant::now();
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= self.capacity && !map.contains_key(&key) {
            map.retain(|_, (_, expires)| *expires > now);
            if map.len() >= self.capacity {
                // Keep the half that lives longest.
                let mut expiries: Vec<Instant> = map.values().map(|(_, e)| *e).collect();
                expiries.sort_unstable();
                let cut = expiries[expiries.len() / 2];
                map.retain(|_, (_, expires)| *expires > cut);
            }
        }
        map.insert(key, (value, now + ttl));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_and_bounds() {
        let cache: TtlCache<String, u32> = TtlCache::new(4);
        cache.put("a".into(), 1, Duration::from_secs(60));
        assert_eq!(cache.get("a"), Some(1));
        cache.put("zero".into(), 2, Duration::ZERO);
        assert_eq!(cache.get("zero"), None);
        cache.put("gone".into(), 3, Duration::from_nanos(1));
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(cache.get("gone"), None);
        for i in 0..100 {
            cache.put(format!("k{i}"), i, Duration::from_secs(10 + u64::from(i)));
        }
        assert!(cache.map.lock().unwrap().len() <= 4);
        assert_eq!(cache.get("k99"), Some(99));
    }
}
