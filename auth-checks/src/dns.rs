//! What the DNS defences ([`crate::dnsbl`], [`crate::rdns`]) share: lookups through the
//! checks' resolver and negative cache, a bounded cache of answers that honours their
//! TTL, lookups running in the background while the session goes on, and the session's
//! DNS time budget.

use std::collections::HashMap;
use std::future::Future;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{RData, RecordType};
use tokio::sync::watch;

use crate::verify::Verifier;

/// Most answers kept; beyond, the ones that expire soonest are dropped first.
const CACHE_SIZE: usize = 10_000;

/// Longest an answer is kept, whatever its TTL says.
const MAX_TTL: Duration = Duration::from_secs(3600);

/// One record of an answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Value {
    V4(Ipv4Addr),
    V6(Ipv6Addr),
    Name(String),
}

/// How a lookup ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Answer {
    /// The records of the type asked for.
    Found(Vec<Value>),
    /// NXDOMAIN, or no record of that type.
    NotFound,
    /// A DNS error (SERVFAIL, REFUSED, network).
    Failed,
    /// No answer in time.
    TimedOut,
    /// Not asked: a lookup for the same key failed moments ago (the negative cache).
    Skipped,
}

/// Lookups for the DNS defences, through the checks' resolver and negative cache.
#[derive(Clone)]
pub(crate) struct Dns {
    verifier: Verifier,
    cache: Arc<Cache>,
}

impl Dns {
    pub(crate) fn new(verifier: &Verifier) -> Self {
        Self {
            verifier: verifier.clone(),
            cache: Arc::default(),
        }
    }

    /// The answer for `name` and `rtype` if the cache holds one within its TTL: no
    /// query, no wait.
    pub(crate) fn cached(&self, name: &str, rtype: RecordType) -> Option<Answer> {
        self.cache.get(name, rtype)
    }

    /// Remembers that lookups under `key` failed (a list that did not answer in time).
    pub(crate) fn note_failure(&self, key: &str) {
        self.verifier.note_failure(key);
    }

    /// The records of `rtype` at `name` (absolute, without the final dot), answered
    /// from the cache when it can be, else asked until `until`. A failure (or no answer
    /// by `until`) is noted under `failure_key` in the negative cache, and a key noted
    /// moments ago is [`Answer::Skipped`] without asking. The flag says whether a
    /// query went out.
    pub(crate) async fn query(
        &self,
        name: &str,
        rtype: RecordType,
        failure_key: &str,
        until: tokio::time::Instant,
    ) -> (Answer, bool) {
        if let Some(answer) = self.cache.get(name, rtype) {
            return (answer, false);
        }
        if self.verifier.failed_recently(failure_key) {
            return (Answer::Skipped, false);
        }
        let lookup = self.verifier.resolver().lookup(format!("{name}."), rtype);
        let result = match tokio::time::timeout_at(until, lookup).await {
            Ok(result) => result,
            Err(_) => {
                self.verifier.note_failure(failure_key);
                return (Answer::TimedOut, true);
            }
        };
        let now = Instant::now();
        match result {
            Ok(lookup) => {
                let values: Vec<Value> = lookup
                    .answers()
                    .iter()
                    .filter(|r| r.record_type() == rtype)
                    .filter_map(|r| match &r.data {
                        RData::A(a) => Some(Value::V4(a.0)),
                        RData::AAAA(a) => Some(Value::V6(a.0)),
                        RData::PTR(p) => Some(Value::Name(
                            p.0.to_ascii().trim_end_matches('.').to_ascii_lowercase(),
                        )),
                        _ => None,
                    })
                    .collect();
                let answer = if values.is_empty() {
                    Answer::NotFound
                } else {
                    Answer::Found(values)
                };
                let ttl = lookup.valid_until().saturating_duration_since(now);
                self.cache.put(name, rtype, answer.clone(), ttl);
                (answer, true)
            }
            Err(e) => match negative_ttl(&e) {
                Some(ttl) => {
                    self.cache.put(name, rtype, Answer::NotFound, ttl);
                    (Answer::NotFound, true)
                }
                None => {
                    tracing::debug!(name, error = %e, "DNS lookup failed");
                    self.verifier.note_failure(failure_key);
                    (Answer::Failed, true)
                }
            },
        }
    }
}

/// Answers by name and type, until their TTL runs out (at most [`MAX_TTL`]), at most
/// [`CACHE_SIZE`] of them.
#[derive(Debug, Default)]
struct Cache(Mutex<HashMap<(String, RecordType), (Answer, Instant)>>);

impl Cache {
    fn get(&self, name: &str, rtype: RecordType) -> Option<Answer> {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&(name.to_owned(), rtype))
            .filter(|(_, expires)| *expires > Instant::now())
            .map(|(answer, _)| answer.clone())
    }

    fn put(&self, name: &str, rtype: RecordType, answer: Answer, ttl: Duration) {
        let ttl = ttl.min(MAX_TTL);
        if ttl.is_zero() {
            return;
        }
        let now = Instant::now();
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= CACHE_SIZE {
            map.retain(|_, (_, expires)| *expires > now);
            if map.len() >= CACHE_SIZE {
                // Keep the half that lives longest.
                let mut expiries: Vec<Instant> = map.values().map(|(_, e)| *e).collect();
                expiries.sort_unstable();
                let cut = expiries[expiries.len() / 2];
                map.retain(|_, (_, expires)| *expires > cut);
            }
        }
        map.insert((name.to_owned(), rtype), (answer, now + ttl));
    }
}

/// A lookup future, boxed.
pub(crate) type LookupFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Lookups running in the background (each bounded by its own deadline), whose answers
/// can be awaited, or taken as they are, any number of times.
#[derive(Clone)]
pub(crate) struct Pending<T> {
    answers: watch::Receiver<Vec<Option<T>>>,
    /// Stops the lookups when the last copy goes (the connection ended).
    _tasks: Option<Arc<Tasks>>,
}

impl<T> std::fmt::Debug for Pending<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pending")
    }
}

/// Aborts the lookups it holds when dropped.
struct Tasks(Vec<tokio::task::AbortHandle>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

impl<T: Clone + Send + Sync + 'static> Pending<T> {
    /// Starts `lookups` on the runtime. With `abort_on_drop`, they stop when the last
    /// copy of this value goes.
    pub(crate) fn spawn(lookups: Vec<LookupFuture<T>>, abort_on_drop: bool) -> Self {
        let (tx, rx) = watch::channel(vec![None; lookups.len()]);
        let tx = Arc::new(tx);
        let handles = lookups
            .into_iter()
            .enumerate()
            .map(|(i, lookup)| {
                let tx = Arc::clone(&tx);
                tokio::spawn(async move {
                    let answer = lookup.await;
                    tx.send_modify(|answers| {
                        if let Some(slot) = answers.get_mut(i) {
                            *slot = Some(answer);
                        }
                    });
                })
                .abort_handle()
            })
            .collect();
        Self {
            answers: rx,
            _tasks: abort_on_drop.then(|| Arc::new(Tasks(handles))),
        }
    }

    /// Lookups already answered (from a cache): nothing runs.
    pub(crate) fn ready(answers: Vec<T>) -> Self {
        let (_, rx) = watch::channel(answers.into_iter().map(Some).collect());
        Self {
            answers: rx,
            _tasks: None,
        }
    }

    /// The answers known by `until` (`None` for a lookup still running then), and
    /// whether every lookup had answered.
    pub(crate) async fn wait(&self, until: tokio::time::Instant) -> (Vec<Option<T>>, bool) {
        // All answered already (the usual case for a known client): no timer.
        {
            let answers = self.answers.borrow();
            if answers.iter().all(Option::is_some) {
                return (answers.clone(), true);
            }
        }
        let mut rx = self.answers.clone();
        // An error means the lookups are gone (aborted): take what they left.
        let _ =
            tokio::time::timeout_at(until, rx.wait_for(|a| a.iter().all(Option::is_some))).await;
        let answers = rx.borrow().clone();
        let complete = answers.iter().all(Option::is_some);
        (answers, complete)
    }
}

#[cfg(feature = "layers")]
pub(crate) use budget::Budget;

#[cfg(feature = "layers")]
mod budget {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use smtp_server::Notes;

    use crate::filter::{DnsWait, SpfTime};

    /// The DNS time budget of a session's defences: how long the session has waited
    /// for them so far (shared by the blocklists and reverse DNS through the
    /// connection's notes).
    #[derive(Clone, Debug, Default)]
    pub(crate) struct Budget(Arc<Mutex<Duration>>);

    impl Budget {
        /// The session's budget, made at its first use.
        pub(crate) fn of(connection: &Notes) -> Self {
            if let Some(budget) = connection.get::<Self>() {
                return budget;
            }
            let budget = Self::default();
            connection.insert(budget.clone());
            budget
        }

        /// How long a wait at RCPT may last: what is left of `total` for the session,
        /// and for the message (after its SPF check and earlier waits).
        pub(crate) fn allowance(&self, total: Duration, transaction: &Notes) -> Wait {
            let waited = *self.0.lock().unwrap_or_else(|e| e.into_inner());
            let spent = transaction.get::<SpfTime>().map_or(Duration::ZERO, |t| t.0)
                + transaction.get::<DnsWait>().map_or(Duration::ZERO, |t| t.0);
            let left = total
                .saturating_sub(waited)
                .min(total.saturating_sub(spent));
            Wait {
                budget: self.clone(),
                started: tokio::time::Instant::now(),
                until: tokio::time::Instant::now() + left,
            }
        }
    }

    /// One wait at RCPT, charged to the session and the message when done.
    #[derive(Debug)]
    pub(crate) struct Wait {
        budget: Budget,
        started: tokio::time::Instant,
        /// When to stop waiting.
        pub(crate) until: tokio::time::Instant,
    }

    impl Wait {
        /// Charges the time waited.
        pub(crate) fn done(self, transaction: &Notes) {
            let waited = self.started.elapsed();
            *self.budget.0.lock().unwrap_or_else(|e| e.into_inner()) += waited;
            let before = transaction.get::<DnsWait>().unwrap_or_default().0;
            transaction.insert(DnsWait(before + waited));
        }
    }
}

/// Whether `name` is a host or domain name we can look up: dotted, not an address
/// literal, labels of letters, digits, hyphens and underscores of 1 to 63 octets, at
/// most 253 octets in all.
pub(crate) fn is_domain(name: &str) -> bool {
    name.contains('.') && is_host_name(name)
}

/// [`is_domain`], single labels (`localhost`) allowed.
pub(crate) fn is_host_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.parse::<std::net::IpAddr>().is_err()
        && name.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// How long a negative answer (no such name, or no record of the type) may be kept: the
/// negative TTL the zone's SOA gave (zero without one); `None` for any other failure,
/// which is never kept.
pub(crate) fn negative_ttl(error: &NetError) -> Option<Duration> {
    match error {
        NetError::Dns(DnsError::NoRecordsFound(no))
            if matches!(
                no.response_code,
                ResponseCode::NXDomain | ResponseCode::NoError
            ) =>
        {
            Some(Duration::from_secs(no.negative_ttl.map_or(0, u64::from)))
        }
        _ => None,
    }
}
