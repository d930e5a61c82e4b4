//! Counts of the DNS lookups made for routing, for metrics (with the `prometheus`
//! feature, a prometheus-client `Collector`).

#[cfg(feature = "prometheus")]
use prometheus_client::{
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{MetricType, counter::ConstCounter},
};
use std::sync::atomic::{AtomicU64, Ordering};

/// What a lookup asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Query {
    /// The MX records of a domain.
    Mx,
    /// The A and AAAA records of a host.
    Address,
}

/// How a lookup ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Records came back.
    Answered,
    /// The name does not exist (NXDOMAIN).
    NoSuchDomain,
    /// The name exists but has no such records.
    NoData,
    /// A timeout, SERVFAIL or network error: the lookup will be tried again later.
    Failed,
}

const QUERIES: [Query; 2] = [Query::Mx, Query::Address];
const OUTCOMES: [Outcome; 4] = [
    Outcome::Answered,
    Outcome::NoSuchDomain,
    Outcome::NoData,
    Outcome::Failed,
];

/// Lookups by query and outcome. One can outlive its resolver: give the same one to
/// the resolver that replaces it (see [`MxResolver::count_into`](crate::MxResolver::count_into)).
/// With the `prometheus` feature it is a prometheus-client `Collector` of
/// `dns_lookups_total{query, result}`.
///
/// ```
/// use dns_mx::{LookupStats, MxConfig, MxResolver};
/// let stats = std::sync::Arc::new(LookupStats::default());
/// let resolver = MxResolver::new(MxConfig::default()).unwrap().count_into(stats.clone());
/// # #[cfg(feature = "prometheus")] {
/// let mut registry = prometheus_client::registry::Registry::with_prefix("mta");
/// registry.register_collector(Box::new(stats));
/// let mut text = String::new();
/// prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
/// assert!(text.contains("mta_dns_lookups_total{query=\"mx\",result=\"answered\"} 0"));
/// # }
/// ```
#[derive(Debug, Default)]
pub struct LookupStats {
    counts: [[AtomicU64; 4]; 2],
}

impl LookupStats {
    pub(crate) fn count(&self, query: Query, outcome: Outcome) {
        let q = QUERIES.iter().position(|x| *x == query).unwrap_or(0);
        let o = OUTCOMES.iter().position(|x| *x == outcome).unwrap_or(0);
        self.counts[q][o].fetch_add(1, Ordering::Relaxed);
    }

    /// `(query, outcome, count)` for every pair: query `mx` or `address`, outcome
    /// `answered`, `nxdomain`, `nodata` or `failed`.
    #[cfg_attr(not(feature = "prometheus"), allow(dead_code))]
    fn snapshot(&self) -> Vec<(&'static str, &'static str, u64)> {
        let mut out = Vec::with_capacity(8);
        for (q, query) in ["mx", "address"].into_iter().enumerate() {
            for (o, outcome) in ["answered", "nxdomain", "nodata", "failed"]
                .into_iter()
                .enumerate()
            {
                out.push((query, outcome, self.counts[q][o].load(Ordering::Relaxed)));
            }
        }
        out
    }
}

#[cfg(feature = "prometheus")]
impl prometheus_client::collector::Collector for LookupStats {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        let mut family = encoder.encode_descriptor(
            "dns_lookups",
            "DNS lookups for routing (MX, then A/AAAA of the hosts), by query and result.",
            None,
            MetricType::Counter,
        )?;
        for (query, result, n) in self.snapshot() {
            let labels = [("query", query), ("result", result)];
            ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}
