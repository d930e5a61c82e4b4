//! Counters of the DNS defences: blocklist lookups, hits, errors and verdicts, and
//! reverse-DNS results.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

#[cfg(feature = "prometheus")]
use prometheus_client::{
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{MetricType, counter::ConstCounter},
};

/// Counts of one DNS list.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListCounts {
    /// Lookups made for sessions (answered from the cache or by DNS).
    pub queries: u64,
    /// Lookups whose answer counted (a listing, or for an allowlist an entry).
    pub hits: u64,
    /// Lookups that failed: a DNS error, no answer in time, or skipped because the
    /// list failed moments ago.
    pub errors: u64,
    /// Answers in 127.255.255.0/24: the list refuses us (blocked, over quota, a
    /// public resolver); they never count.
    pub refused: u64,
}

/// Counts of blocklist verdicts and reverse-DNS results, for metrics. Shared (an
/// `Arc`) by the layers that count into it, so the counts outlive a reload. With the
/// `prometheus` feature it is a prometheus-client `Collector` of:
///
/// - `dnsbl_queries_total{list}`, `dnsbl_hits_total{list}`,
///   `dnsbl_errors_total{list,reason="dns"|"refused"}`
/// - `dnsbl_budget_exhausted_total`: verdicts made while a list had not answered in
///   the DNS time budget (a list failing moments ago, skipped at once, does not count)
/// - `dnsbl_verdicts_total{verdict="clean"|"tagged"|"refused"}`: one per checked
///   transaction
/// - `rdns_results_total{result="confirmed"|"unconfirmed"|"missing"|"temperror"}`:
///   one per client looked up (a PTR found is `confirmed` or `unconfirmed`)
/// - `rdns_refused_total`: recipients refused for want of a (confirmed) name
///
/// ```
/// use auth_checks::DnsStats;
/// let stats = DnsStats::default();
/// assert_eq!(stats.list("zen.example").hits, 0);
/// # #[cfg(feature = "prometheus")] {
/// let mut registry = prometheus_client::registry::Registry::default();
/// registry.register_collector(Box::new(stats));
/// let mut text = String::new();
/// prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
/// assert!(text.contains("dnsbl_budget_exhausted_total 0\n"));
/// # }
/// ```
#[derive(Debug, Default)]
pub struct DnsStats {
    lists: Mutex<BTreeMap<String, ListCounts>>,
    budget_exhausted: AtomicU64,
    verdicts: [AtomicU64; 3],
    rdns: [AtomicU64; 4],
    rdns_refused: AtomicU64,
}

/// A transaction's blocklist verdict, for [`DnsStats`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(not(feature = "layers"), allow(dead_code))]
pub(crate) enum VerdictKind {
    Clean = 0,
    Tagged = 1,
    Refused = 2,
}

#[cfg_attr(not(feature = "prometheus"), allow(dead_code))]
const VERDICTS: [&str; 3] = ["clean", "tagged", "refused"];

/// A client's reverse-DNS result, for [`DnsStats`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RdnsKind {
    Confirmed = 0,
    Unconfirmed = 1,
    Missing = 2,
    TempError = 3,
}

#[cfg_attr(not(feature = "prometheus"), allow(dead_code))]
const RDNS: [&str; 4] = ["confirmed", "unconfirmed", "missing", "temperror"];

impl DnsStats {
    /// The counts of the list with this zone.
    pub fn list(&self, zone: &str) -> ListCounts {
        self.lists
            .lock()
            .map(|l| l.get(zone).copied().unwrap_or_default())
            .unwrap_or_default()
    }

    /// Verdicts made while a list had not answered within the DNS time budget.
    pub fn budget_exhausted(&self) -> u64 {
        self.budget_exhausted.load(Ordering::Relaxed)
    }

    /// Checked transactions: `(clean, tagged, refused)` (tagged: listed, under `tag`).
    pub fn verdicts(&self) -> (u64, u64, u64) {
        let n = |i: usize| self.verdicts[i].load(Ordering::Relaxed);
        (n(0), n(1), n(2))
    }

    /// Clients looked up: `(confirmed, unconfirmed, missing, temperror)`.
    pub fn rdns(&self) -> (u64, u64, u64, u64) {
        let n = |i: usize| self.rdns[i].load(Ordering::Relaxed);
        (n(0), n(1), n(2), n(3))
    }

    /// Recipients refused for want of a (confirmed) client name.
    pub fn rdns_refused(&self) -> u64 {
        self.rdns_refused.load(Ordering::Relaxed)
    }

    pub(crate) fn count_list(&self, zone: &str, f: impl FnOnce(&mut ListCounts)) {
        if let Ok(mut lists) = self.lists.lock() {
            f(lists.entry(zone.to_owned()).or_default());
        }
    }

    pub(crate) fn count_budget_exhausted(&self) {
        self.budget_exhausted.fetch_add(1, Ordering::Relaxed);
    }

    #[cfg_attr(not(feature = "layers"), allow(dead_code))]
    pub(crate) fn count_verdict(&self, kind: VerdictKind) {
        self.verdicts[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_rdns(&self, kind: RdnsKind) {
        self.rdns[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    #[cfg_attr(not(feature = "layers"), allow(dead_code))]
    pub(crate) fn count_rdns_refused(&self) {
        self.rdns_refused.fetch_add(1, Ordering::Relaxed);
    }
}

/// A per-list metric: name, help, the count it shows.
#[cfg(feature = "prometheus")]
type PerList = (&'static str, &'static str, fn(&ListCounts) -> u64);

#[cfg(feature = "prometheus")]
impl prometheus_client::collector::Collector for DnsStats {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        let lists: Vec<(String, ListCounts)> = self
            .lists
            .lock()
            .map(|l| l.iter().map(|(k, v)| (k.clone(), *v)).collect())
            .unwrap_or_default();
        let per_list: [PerList; 2] = [
            (
                "dnsbl_queries",
                "DNS list lookups, by list (answered from the cache or by DNS).",
                |c| c.queries,
            ),
            (
                "dnsbl_hits",
                "DNS list lookups whose answer counted, by list.",
                |c| c.hits,
            ),
        ];
        for (name, help, value) in per_list {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (zone, counts) in &lists {
                ConstCounter::new(value(counts))
                    .encode(family.encode_family(&[("list", zone.as_str())])?)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "dnsbl_errors",
            "DNS list lookups that did not count: reason dns (error, no answer in time, list failing) or refused (an answer in 127.255.255.0/24).",
            None,
            MetricType::Counter,
        )?;
        for (zone, counts) in &lists {
            for (reason, n) in [("dns", counts.errors), ("refused", counts.refused)] {
                ConstCounter::new(n).encode(
                    family.encode_family(&[("list", zone.as_str()), ("reason", reason)])?,
                )?;
            }
        }
        let family = encoder.encode_descriptor(
            "dnsbl_budget_exhausted",
            "Blocklist verdicts made while lookups were still unanswered (the DNS time budget ran out).",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(self.budget_exhausted()).encode(family)?;
        let mut family = encoder.encode_descriptor(
            "dnsbl_verdicts",
            "Blocklist verdicts of checked transactions: clean, tagged (listed, tag mode) or refused.",
            None,
            MetricType::Counter,
        )?;
        for (i, verdict) in VERDICTS.iter().enumerate() {
            ConstCounter::new(self.verdicts[i].load(Ordering::Relaxed))
                .encode(family.encode_family(&[("verdict", *verdict)])?)?;
        }
        let mut family = encoder.encode_descriptor(
            "rdns_results",
            "Reverse-DNS results of clients: confirmed (FCrDNS), unconfirmed (a PTR that does not resolve back), missing (no PTR), temperror.",
            None,
            MetricType::Counter,
        )?;
        for (i, result) in RDNS.iter().enumerate() {
            ConstCounter::new(self.rdns[i].load(Ordering::Relaxed))
                .encode(family.encode_family(&[("result", *result)])?)?;
        }
        let family = encoder.encode_descriptor(
            "rdns_refused",
            "Recipients refused because the client has no (confirmed) host name.",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(self.rdns_refused()).encode(family)?;
        Ok(())
    }
}
