//! MTA-STS (RFC 8461) for remote delivery: the policy of a destination domain (TXT
//! lookup, HTTPS fetch, the cache on disk), and where TLS failures under a policy are
//! recorded for TLS reporting.
//!
//! ```text
//!  domain ─▶ TXT _mta-sts.<domain> ─┐                 ┌─ enforce: only listed MX hosts,
//!            A mta-sts.<domain> ────┼─▶ PolicyCache ──┤  verified TLS, else 4.7.5 (waits)
//!            HTTPS GET policy ──────┘   (on disk)     ├─ testing: deliver, record failures
//!                                                     └─ none / no policy: as without
//! ```
//!
//! The library half (parsing, fetch, cache) is [`smtp_client::mta_sts`]; the
//! decisions on MX hosts and connections are in `remote.rs`.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dns_mx::MxResolver;
use smtp_client::mta_sts::ReportedSession;
use smtp_client::mta_sts::{
    FetchConfig, Mode, Policy, PolicyCache, PolicyError, PolicySource, PolicySummary, PolicyType,
    RecordLookup, ResultType, StsRecord, TlsReportEvent, TlsReportSink,
};
use tracing::{debug, warn};

use crate::check_dns::dns::{Dns, Failure};

/// MTA-STS settings of remote delivery (`[outbound] mta_sts*`).
#[derive(Clone, Debug)]
pub struct StsConfig {
    /// Where policies are kept across restarts (`[outbound] mta_sts_cache`).
    pub cache_dir: PathBuf,
    /// Time for one domain's lookup and fetch (`[outbound] mta_sts_timeout`).
    pub timeout: Duration,
    /// The HTTPS port of policy servers (`[outbound] mta_sts_port`, 443).
    pub port: u16,
}

/// The policies of destination domains, and the TLS report events.
#[derive(Debug)]
pub(crate) struct Sts {
    cache: PolicyCache,
    fetch: FetchConfig,
    timeout: Duration,
    dns: Dns,
    resolver: MxResolver,
    reports: Arc<TlsReports>,
    /// One discovery at a time per domain: concurrent deliveries to a domain whose
    /// policy is not cached wait for one fetch rather than each making its own.
    discovering: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Sts {
    /// Opens the cache under `config.cache_dir` (in memory only, with a warning, when
    /// it cannot be used); policies are fetched with `tls`, which verifies.
    /// Failures are recorded in `reports`.
    pub(crate) fn new(
        config: &StsConfig,
        resolver: MxResolver,
        tls: Arc<rustls::ClientConfig>,
        reports: Arc<TlsReports>,
    ) -> Self {
        let cache = PolicyCache::open(&config.cache_dir).unwrap_or_else(|e| {
            warn!(error = %e, "MTA-STS policies are kept in memory only");
            PolicyCache::in_memory()
        });
        let fetch = FetchConfig {
            port: config.port,
            timeout: config.timeout,
            tls,
        };
        Self {
            cache,
            fetch,
            timeout: config.timeout,
            dns: Dns::with_resolver(resolver.resolver().clone(), config.timeout),
            resolver,
            reports,
            discovering: Mutex::default(),
        }
    }

    /// The policy to apply to mail for `domain` now, within the configured time
    /// (RFC 8461 §5.1; `None`: deliver as without MTA-STS). A TXT lookup that fails
    /// with nothing cached is no policy (RFC 8461 §5); a fetch that fails keeps the
    /// cached policy while it has not expired.
    pub(crate) async fn policy(&self, domain: &str) -> Option<Policy> {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        let gate = Arc::clone(
            self.discovering
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(domain.clone())
                .or_default(),
        );
        let discover = async {
            let _turn = gate.lock().await;
            let record = match self.dns.txt(&format!("_mta-sts.{domain}")).await {
                Ok(records) => match StsRecord::select(&records) {
                    Ok(Some(record)) => RecordLookup::Found(record),
                    Ok(None) => RecordLookup::Absent,
                    Err(e) => {
                        debug!(domain, error = %e, "no usable MTA-STS record");
                        RecordLookup::Absent
                    }
                },
                Err(Failure::NoDomain) => RecordLookup::Absent,
                Err(e) => RecordLookup::Failed(e.to_string()),
            };
            self.cache
                .discover(&domain, record, || self.fetch_policy(&domain))
                .await
        };
        let found = tokio::time::timeout(self.timeout, discover).await;
        {
            // The last one out removes the gate.
            let mut discovering = self.discovering.lock().unwrap_or_else(|e| e.into_inner());
            drop(gate);
            if discovering
                .get(&domain)
                .is_some_and(|g| Arc::strong_count(g) == 1)
            {
                discovering.remove(&domain);
            }
        }
        match found {
            Ok(Some((policy, source))) => {
                debug!(
                    domain,
                    mode = policy.mode.as_str(),
                    ?source,
                    "MTA-STS policy"
                );
                if source == PolicySource::Fetched {
                    tracing::info!(
                        domain,
                        mode = policy.mode.as_str(),
                        max_age = policy.max_age,
                        "MTA-STS policy fetched"
                    );
                }
                Some(policy)
            }
            Ok(None) => None,
            Err(_) => {
                warn!(
                    domain,
                    "MTA-STS lookup took too long; using the cached policy, if any"
                );
                self.cache
                    .get(&domain, std::time::SystemTime::now())
                    .map(|c| c.policy)
            }
        }
    }

    /// Fetches the policy of `domain`; a failure is recorded as a TLS report event
    /// (`sts-policy-invalid`, `sts-webpki-invalid` or `sts-policy-fetch-error`).
    async fn fetch_policy(&self, domain: &str) -> Result<Policy, PolicyError> {
        let host = format!("mta-sts.{domain}");
        let fetched = match self.resolver.host(&host).await {
            Ok(found) => {
                smtp_client::mta_sts::fetch_policy(domain, &found.addresses, &self.fetch).await
            }
            Err(e) => Err(PolicyError::Fetch(format!("{host}: {e}"))),
        };
        if let Err(e) = &fetched {
            let result_type = match e {
                PolicyError::BadPolicy(_) => ResultType::StsPolicyInvalid,
                PolicyError::Fetch(text) if text.contains("certificate") => {
                    ResultType::StsWebpkiInvalid
                }
                _ => ResultType::StsPolicyFetchError,
            };
            self.record(
                domain,
                None,
                result_type,
                "",
                e.to_string(),
                &ReportedSession::default(),
            );
        }
        fetched
    }

    /// Records a failure under `policy` of `domain` at `mx_host`.
    pub(crate) fn report(
        &self,
        domain: &str,
        policy: &Policy,
        result_type: ResultType,
        mx_host: &str,
        detail: String,
    ) {
        let session = ReportedSession::default();
        self.report_in(domain, policy, result_type, mx_host, detail, &session);
    }

    /// Records a failure under `policy` of `domain` at `mx_host`, on the connection
    /// `session` tells of (its addresses and greeting name go into the report).
    pub(crate) fn report_in(
        &self,
        domain: &str,
        policy: &Policy,
        result_type: ResultType,
        mx_host: &str,
        detail: String,
        session: &ReportedSession,
    ) {
        self.reports
            .applied(domain, PolicyType::Sts, &PolicySummary::of_sts(policy));
        self.record(
            domain,
            Some(policy.mode),
            result_type,
            mx_host,
            detail,
            session,
        );
    }

    /// Records a session to `domain`'s MX verified as its `policy` wants (TLS-RPT).
    pub(crate) fn success(&self, domain: &str, policy: &Policy) {
        self.reports
            .success(domain, PolicyType::Sts, &PolicySummary::of_sts(policy));
    }

    fn record(
        &self,
        domain: &str,
        mode: Option<Mode>,
        result_type: ResultType,
        mx_host: &str,
        detail: String,
        session: &ReportedSession,
    ) {
        let event = TlsReportEvent {
            domain: domain.to_owned(),
            policy_type: PolicyType::Sts,
            mode,
            result_type,
            mx_host: mx_host.to_owned(),
            receiving_ip: None,
            sending_mta_ip: None,
            receiving_mx_helo: None,
            detail,
            at: std::time::SystemTime::now(),
        };
        self.reports.record(event.in_session(session));
    }
}

/// The TLS report events of this process, MTA-STS's and DANE's (policy type `tlsa`):
/// each logged (a warning), counted by domain, policy type and result type, and the
/// latest kept ([`TlsReports::MAX_KEPT`]); each is also forwarded to the TLS-RPT
/// aggregator that sends the daily reports (RFC 8460, `crate::tlsrpt`).
#[derive(Debug, Default)]
pub struct TlsReports {
    inner: Mutex<ReportsInner>,
    /// Where events go besides: the TLS-RPT aggregator (`crate::tlsrpt`).
    forward: std::sync::OnceLock<Arc<dyn TlsReportSink>>,
}

#[derive(Debug, Default)]
struct ReportsInner {
    counts: HashMap<(String, PolicyType, ResultType), u64>,
    latest: VecDeque<TlsReportEvent>,
}

impl TlsReports {
    /// How many events are kept.
    pub const MAX_KEPT: usize = 1000;

    /// The number of MTA-STS events of `result_type` for `domain`.
    pub fn count(&self, domain: &str, result_type: ResultType) -> u64 {
        self.count_of(domain, PolicyType::Sts, result_type)
    }

    /// The number of events of `policy_type` (`sts`, `tlsa` for DANE) and
    /// `result_type` for `domain`.
    pub fn count_of(&self, domain: &str, policy_type: PolicyType, result_type: ResultType) -> u64 {
        self.lock()
            .counts
            .get(&(domain.to_owned(), policy_type, result_type))
            .copied()
            .unwrap_or(0)
    }

    /// The latest events, oldest first.
    pub fn latest(&self) -> Vec<TlsReportEvent> {
        self.lock().latest.iter().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ReportsInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Hands every event, success and applied policy from now on to `sink` too (the
    /// TLS-RPT aggregator); only the first call counts.
    pub fn forward_to(&self, sink: Arc<dyn TlsReportSink>) {
        let _ = self.forward.set(sink);
    }
}

impl TlsReportSink for TlsReports {
    fn record(&self, event: TlsReportEvent) {
        if event.policy_type == PolicyType::Tlsa {
            // DANE (RFC 7672): the host is skipped after a failed lookup; a set of
            // unusable records still means TLS, unauthenticated; else the mail waits.
            let outcome = match event.result_type {
                ResultType::DnssecInvalid => "host skipped",
                ResultType::TlsaInvalid => "unauthenticated TLS",
                _ => "mail waits",
            };
            warn!(
                domain = %event.domain,
                policy_type = event.policy_type.as_str(),
                result_type = event.result_type.as_str(),
                mx_host = %event.mx_host,
                detail = %event.detail,
                "DANE failure ({outcome})"
            );
        } else {
            let outcome = match event.mode {
                Some(Mode::Enforce) => "mail waits",
                Some(_) => "delivered anyway",
                None => "policy not fetched",
            };
            warn!(
                domain = %event.domain,
                policy_type = event.policy_type.as_str(),
                mode = event.mode.map_or("unknown", Mode::as_str),
                result_type = event.result_type.as_str(),
                mx_host = %event.mx_host,
                detail = %event.detail,
                "MTA-STS failure ({outcome})"
            );
        }
        let mut inner = self.lock();
        *inner
            .counts
            .entry((event.domain.clone(), event.policy_type, event.result_type))
            .or_default() += 1;
        if inner.latest.len() >= Self::MAX_KEPT {
            inner.latest.pop_front();
        }
        inner.latest.push_back(event.clone());
        drop(inner);
        if let Some(sink) = self.forward.get() {
            sink.record(event);
        }
    }

    fn success(&self, domain: &str, policy_type: PolicyType, policy: &PolicySummary) {
        if let Some(sink) = self.forward.get() {
            sink.success(domain, policy_type, policy);
        }
    }

    fn applied(&self, domain: &str, policy_type: PolicyType, policy: &PolicySummary) {
        if let Some(sink) = self.forward.get() {
            sink.applied(domain, policy_type, policy);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(policy_type: PolicyType, result_type: ResultType) -> TlsReportEvent {
        TlsReportEvent {
            domain: "dane.test".into(),
            policy_type,
            mode: None,
            result_type,
            mx_host: "mx.dane.test".into(),
            receiving_ip: None,
            sending_mta_ip: None,
            receiving_mx_helo: None,
            detail: "x".into(),
            at: std::time::SystemTime::now(),
        }
    }

    #[test]
    fn dane_events_are_counted_apart_from_mta_sts_ones() {
        let reports = TlsReports::default();
        reports.record(event(PolicyType::Tlsa, ResultType::ValidationFailure));
        reports.record(event(PolicyType::Tlsa, ResultType::ValidationFailure));
        reports.record(event(PolicyType::Tlsa, ResultType::DnssecInvalid));
        reports.record(event(PolicyType::Sts, ResultType::ValidationFailure));
        let dane = |r| reports.count_of("dane.test", PolicyType::Tlsa, r);
        assert_eq!(dane(ResultType::ValidationFailure), 2);
        assert_eq!(dane(ResultType::DnssecInvalid), 1);
        assert_eq!(dane(ResultType::TlsaInvalid), 0);
        assert_eq!(reports.count("dane.test", ResultType::ValidationFailure), 1);
        assert_eq!(reports.latest().len(), 4);
    }
}
