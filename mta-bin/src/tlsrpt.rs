//! TLS reporting (RFC 8460): the results of the TLS sessions remote delivery made
//! under a policy (MTA-STS), counted per policy domain and report period, and once a
//! period has ended one aggregate report per domain, sent to the addresses of the
//! domain's TLS-RPT record.
//!
//! ```text
//!  remote delivery ──▶ TlsReports (sts.rs) ──▶ Aggregator ── state.json (queue dir)
//!    success / failure events                  per period, per (domain, policy type)
//!                                                  │ period over (+ random delay)
//!                                                  ▼
//!        TXT _smtp._tls.<domain>: v=TLSRPTv1; rua=mailto:..,https://..
//!          mailto: multipart/report message ─▶ the stages (signing) ─▶ the queue
//!          https:  POST application/tlsrpt+gzip
//! ```
//!
//! Periods are multiples of `[tls_reports] interval` since 1970-01-01 00:00 UTC: with
//! the default of 24 h, the UTC day (RFC 8460 §4.1). A report is sent after the end of
//! its period plus a random delay of up to 1/24 of the interval (an hour for a day),
//! so that reporters do not all send at midnight. The state is written to
//! `<queue>/tlsrpt/state.json` at most a minute after a change, at each report and
//! when the server stops: a crash loses at most a minute of counts.
//!
//! A failure is detailed (`failure-details`) with what remote delivery knew of the
//! connection it happened on: `receiving-mx-hostname`, `receiving-ip`,
//! `sending-mta-ip` (the socket's local address) and `receiving-mx-helo` (the name in
//! the server's greeting); failures are added up per distinct set of these.
//!
//! An `https:` upload that failed (no connection, no answer in time, not 2xx) is kept
//! with the state and tried again after `post_retry` (1 h), then after twice as long
//! each time, until `post_retry_for` (24 h) after the first failure; then it is
//! dropped with a warning (RFC 8460 §5.5). The `mailto:` addresses get the report
//! through the queue, which retries as for any mail; the message says
//! `TLS-Required: No` (RFC 8689), so that a TLS failure at the report address does
//! not stop it (RFC 8460 §5.3).

use std::collections::BTreeMap;
use std::hash::BuildHasher;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use dns_mx::MxResolver;
use serde::{Deserialize, Serialize};
use smtp_client::mta_sts::{PolicySummary, PolicyType, TlsReportEvent, TlsReportSink};
use smtp_server::smtp_proto::{
    Body, Envelope, ForwardPath, MailParameters, RcptParameters, Recipient, ReversePath,
};
use smtp_server::{Content, Notes, SessionInfo, Stages};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::{debug, info, warn};

use crate::check_dns::dns::{Dns, Failure};
use crate::config::{Config, TlsReporting};

/// How often a changed state is written to disk (at most; and at each report).
const SAVE_EVERY: Duration = Duration::from_secs(60);
/// The longest `failure-reason-code` kept.
const MAX_REASON: usize = 256;
/// How long a period whose reports could not be sent (DNS failure, the queue refused)
/// is kept to be tried again, after its end.
const KEEP_UNSENT: Duration = Duration::from_secs(24 * 60 * 60);
/// The largest HTTP response header read from an `https:` report address.
const MAX_RESPONSE: usize = 16 * 1024;
/// The longest `receiving-mx-helo` kept (a DNS name is at most 253 characters).
const MAX_HELO: usize = 255;

/// What `mta check-config` says of `[tls_reports]`: (key, problem).
pub fn check_settings(s: &TlsReporting) -> Vec<(&'static str, String)> {
    let mut problems = Vec::new();
    if s.interval < Duration::from_secs(1) {
        problems.push((
            "interval",
            "[tls_reports] interval: give at least 1s (the RFC 8460 period is 24h)".to_owned(),
        ));
    }
    if s.max_failure_details == 0 {
        problems.push((
            "max_failure_details",
            "[tls_reports] max_failure_details: give at least 1".to_owned(),
        ));
    }
    if s.max_domains == 0 {
        problems.push((
            "max_domains",
            "[tls_reports] max_domains: give at least 1".to_owned(),
        ));
    }
    if s.post_timeout.is_zero() {
        problems.push((
            "post_timeout",
            "[tls_reports] post_timeout: give a time above zero".to_owned(),
        ));
    }
    if s.post_retry < Duration::from_secs(1) {
        problems.push((
            "post_retry",
            "[tls_reports] post_retry: give at least 1s (an hour is usual)".to_owned(),
        ));
    }
    if let Some(from) = &s.from
        && ReversePath::parse(&format!("<{from}>")).is_err()
    {
        problems.push((
            "from",
            format!("[tls_reports] from: {from:?} is not a mail address"),
        ));
    }
    problems
}

/// The reporting settings, from `[tls_reports]` and `hostname`.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The report period.
    pub interval: Duration,
    /// `organization-name`.
    pub organization_name: String,
    /// `contact-info`.
    pub contact_info: String,
    /// The sender of report messages.
    pub from: String,
    /// Our host name: the submitter, and the right side of report ids.
    pub submitter: String,
    /// Distinct `failure-details` per policy and period.
    pub max_failure_details: usize,
    /// Policy domains per period.
    pub max_domains: usize,
    /// Time for one `https:` upload.
    pub post_timeout: Duration,
    /// How long after a failed `https:` upload it is tried again.
    pub post_retry: Duration,
    /// How long a failed `https:` upload is tried again (zero: not at all).
    pub post_retry_for: Duration,
    /// Where the state is kept.
    pub state_file: PathBuf,
}

impl Settings {
    /// The settings of `config`; `None` when reporting is off.
    pub fn from_config(config: &Config) -> Option<Self> {
        let t = &config.tls_reports;
        if !t.enabled {
            return None;
        }
        let from = t
            .from
            .clone()
            .unwrap_or_else(|| format!("postmaster@{}", config.hostname));
        Some(Self {
            interval: t.interval.max(Duration::from_secs(1)),
            organization_name: t
                .organization_name
                .clone()
                .unwrap_or_else(|| config.hostname.clone()),
            contact_info: t.contact_info.clone().unwrap_or_else(|| from.clone()),
            from,
            submitter: config.hostname.clone(),
            max_failure_details: t.max_failure_details.max(1),
            max_domains: t.max_domains.max(1),
            post_timeout: t.post_timeout,
            post_retry: t.post_retry.max(Duration::from_secs(1)),
            post_retry_for: t.post_retry_for,
            state_file: config.queue.path.join("tlsrpt").join("state.json"),
        })
    }
}

/// Counts TLS sessions per report period and policy: the [`TlsReportSink`] remote
/// delivery records into (through `TlsReports::forward_to`).
#[derive(Debug)]
pub struct Aggregator {
    settings: Settings,
    state: Mutex<State>,
    counted: Counted,
}

/// What the aggregator and its reporter did since the start, for metrics
/// (`docs/metrics.md`): sessions counted, reports sent.
#[derive(Debug, Default)]
struct Counted {
    successes: AtomicU64,
    failures: AtomicU64,
    mailed: AtomicU64,
    mail_failed: AtomicU64,
    posted: AtomicU64,
    post_failed: AtomicU64,
}

fn add(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// `tls_report_sessions_total{result}`, `tls_reports_total{via, result}` and the gauge
/// `tls_report_posts_waiting`.
impl prometheus_client::collector::Collector for Aggregator {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder<'_>,
    ) -> std::fmt::Result {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::MetricType;
        use prometheus_client::metrics::counter::ConstCounter;
        use prometheus_client::metrics::gauge::ConstGauge;

        let c = &self.counted;
        let get = |n: &AtomicU64| n.load(Ordering::Relaxed);
        let mut family = encoder.encode_descriptor(
            "tls_report_sessions",
            "Outbound TLS sessions counted for TLS reports (RFC 8460), by result: a policy (MTA-STS, DANE) applied and held, or failed.",
            None,
            MetricType::Counter,
        )?;
        for (result, n) in [("success", &c.successes), ("failure", &c.failures)] {
            ConstCounter::new(get(n)).encode(family.encode_family(&[("result", result)])?)?;
        }
        let mut family = encoder.encode_descriptor(
            "tls_reports",
            "TLS reports sent to the rua of policy domains, by way (mail: queued; https: posted, retries included) and result.",
            None,
            MetricType::Counter,
        )?;
        for (via, result, n) in [
            ("mail", "sent", &c.mailed),
            ("mail", "failed", &c.mail_failed),
            ("https", "sent", &c.posted),
            ("https", "failed", &c.post_failed),
        ] {
            ConstCounter::new(get(n))
                .encode(family.encode_family(&[("via", via), ("result", result)])?)?;
        }
        let waiting = self.lock().posts.len();
        ConstGauge::new(i64::try_from(waiting).unwrap_or(i64::MAX)).encode(
            encoder.encode_descriptor(
                "tls_report_posts_waiting",
                "TLS report uploads that failed and wait to be tried again.",
                None,
                MetricType::Gauge,
            )?,
        )?;
        Ok(())
    }
}

/// Everything counted and not reported yet (what `state.json` holds).
#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    /// By the period's start (seconds since 1970).
    periods: BTreeMap<u64, Period>,
    /// `https:` uploads that failed, to be tried again.
    #[serde(default)]
    posts: Vec<PendingPost>,
    /// Changed since it was last written.
    #[serde(skip)]
    dirty: bool,
}

/// One period: by `"<policy type> <domain>"`.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Period {
    policies: BTreeMap<String, PolicyCounts>,
}

/// The counts of one policy in one period.
#[derive(Debug, Default, Serialize, Deserialize)]
struct PolicyCounts {
    domain: String,
    policy_type: String,
    policy_string: Vec<String>,
    mx_host: Vec<String>,
    successes: u64,
    failures: u64,
    details: Vec<Detail>,
    /// Its report was already POSTed to the `https:` addresses (or kept to be tried
    /// again): a report put back because its message could not be queued is not
    /// POSTed twice.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    posted: bool,
}

/// One `failure-details` entry: the failures with the same result type, connection
/// and reason.
#[derive(Debug, Serialize, Deserialize)]
struct Detail {
    result_type: String,
    receiving_mx_hostname: String,
    receiving_ip: Option<IpAddr>,
    #[serde(default)]
    sending_mta_ip: Option<IpAddr>,
    #[serde(default)]
    receiving_mx_helo: Option<String>,
    reason: String,
    count: u64,
}

/// An `https:` upload that failed, kept to be tried again.
#[derive(Debug, Serialize, Deserialize)]
struct PendingPost {
    /// Where it goes.
    url: String,
    /// The policy domain (for the log).
    domain: String,
    /// The report's `report-id` (for the log).
    report_id: String,
    /// The gzipped report, in base64.
    body: String,
    /// When it is tried next (seconds since 1970).
    next_try: u64,
    /// After when it is no longer tried (seconds since 1970).
    give_up: u64,
    /// The uploads tried so far.
    attempts: u32,
}

impl Aggregator {
    /// An aggregator, with the state `settings.state_file` holds (none when it is
    /// missing or unreadable: logged).
    pub fn open(settings: Settings) -> Self {
        let state = match std::fs::read(&settings.state_file) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                warn!(file = %settings.state_file.display(), error = %e, "TLS report state unreadable; starting anew");
                State::default()
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => State::default(),
            Err(e) => {
                warn!(file = %settings.state_file.display(), error = %e, "TLS report state unreadable; starting anew");
                State::default()
            }
        };
        Self {
            settings,
            state: Mutex::new(state),
            counted: Counted::default(),
        }
    }

    /// The settings it reports with.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The start of the period `at` is in.
    fn period_of(&self, at: SystemTime) -> u64 {
        let secs = at.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        let step = self.settings.interval.as_secs().max(1);
        secs - secs % step
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The counts of `domain`'s policy of `policy_type` in the period of `at`; `None`
    /// when the period already has `max_domains` policies.
    fn with_counts(
        &self,
        domain: &str,
        policy_type: PolicyType,
        at: SystemTime,
        f: impl FnOnce(&mut PolicyCounts),
    ) {
        let period = self.period_of(at);
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        let key = format!("{} {domain}", policy_type.as_str());
        let mut state = self.lock();
        let max = self.settings.max_domains;
        let policies = &mut state.periods.entry(period).or_default().policies;
        if !policies.contains_key(&key) && policies.len() >= max {
            debug!(
                domain,
                "TLS report: too many policy domains this period; not counted"
            );
            return;
        }
        let counts = policies.entry(key).or_insert_with(|| PolicyCounts {
            domain,
            policy_type: policy_type.as_str().to_owned(),
            ..PolicyCounts::default()
        });
        f(counts);
        state.dirty = true;
    }

    /// Writes the state if it changed (atomically: a new file renamed over the old).
    pub fn save(&self) {
        let bytes = {
            let mut state = self.lock();
            if !state.dirty {
                return;
            }
            state.dirty = false;
            serde_json::to_vec(&*state)
        };
        let written = bytes
            .map_err(std::io::Error::other)
            .and_then(|bytes| write_atomically(&self.settings.state_file, &bytes));
        if let Err(e) = written {
            warn!(file = %self.settings.state_file.display(), error = %e, "cannot save the TLS report state");
            self.lock().dirty = true;
        }
    }

    /// Takes the periods that are due at `now` (their end and their delay passed),
    /// with their reports: `(period start, reports)`.
    fn take_due(&self, now: SystemTime) -> Vec<(u64, Vec<Report>)> {
        let current = self.period_of(now);
        let interval = self.settings.interval.as_secs().max(1);
        let now_secs = now
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        let mut state = self.lock();
        let due: Vec<u64> = state
            .periods
            .keys()
            .copied()
            .filter(|&start| {
                start < current
                    && (start + interval) as f64 + self.delay(start).as_secs_f64() <= now_secs
            })
            .collect();
        let mut taken = Vec::new();
        for start in due {
            if let Some(period) = state.periods.remove(&start) {
                state.dirty = true;
                taken.push((start, self.reports(start, period)));
            }
        }
        taken
    }

    /// Puts back the reports of `start` that could not be sent, to be tried again.
    fn put_back(&self, start: u64, unsent: Vec<Report>) {
        if unsent.is_empty() {
            return;
        }
        let mut state = self.lock();
        let period = state.periods.entry(start).or_default();
        for report in unsent {
            for counts in report.policies {
                period
                    .policies
                    .insert(format!("{} {}", counts.policy_type, counts.domain), counts);
            }
        }
        state.dirty = true;
    }

    /// The random delay after the end of `start`'s period before its reports go: up
    /// to 1/24 of the interval, different for each process and period.
    fn delay(&self, start: u64) -> Duration {
        static SEED: std::sync::OnceLock<std::collections::hash_map::RandomState> =
            std::sync::OnceLock::new();
        let random = SEED.get_or_init(Default::default).hash_one(start);
        let max = u64::try_from(self.settings.interval.as_millis() / 24).unwrap_or(u64::MAX);
        Duration::from_millis(random % max.max(1))
    }

    /// The next time something may be due: the end of the current period plus its
    /// delay, or sooner when an older period waits.
    fn next_due(&self, now: SystemTime) -> SystemTime {
        let interval = self.settings.interval.as_secs().max(1);
        let (mut starts, next_post) = {
            let state = self.lock();
            let starts: Vec<u64> = state.periods.keys().copied().collect();
            (starts, state.posts.iter().map(|p| p.next_try).min())
        };
        starts.push(self.period_of(now));
        starts
            .into_iter()
            .map(|s| UNIX_EPOCH + Duration::from_secs(s + interval) + self.delay(s))
            .chain(next_post.map(|at| UNIX_EPOCH + Duration::from_secs(at)))
            .min()
            .unwrap_or(now)
    }

    /// Keeps a failed upload of `report` to `url` to be tried again after
    /// `post_retry`, for `post_retry_for` from `now`; `false` when it is not (no
    /// retries configured, or already `max_domains` waiting).
    fn keep_post(&self, report: &Report, url: &str, gz: &[u8], now: SystemTime) -> bool {
        if self.settings.post_retry_for.is_zero() {
            return false;
        }
        let now = seconds(now);
        let post = PendingPost {
            url: url.to_owned(),
            domain: report.domain.clone(),
            report_id: report.id(&self.settings),
            body: base64::engine::general_purpose::STANDARD.encode(gz),
            next_try: now.saturating_add(backoff(self.settings.post_retry, 1)),
            give_up: now.saturating_add(self.settings.post_retry_for.as_secs()),
            attempts: 1,
        };
        self.put_back_post(post)
    }

    /// Puts back an upload to be tried again; `false` when `max_domains` wait already.
    fn put_back_post(&self, post: PendingPost) -> bool {
        let mut state = self.lock();
        if state.posts.len() >= self.settings.max_domains {
            return false;
        }
        state.posts.push(post);
        state.dirty = true;
        true
    }

    /// Takes the uploads due to be tried again at `now`.
    fn take_due_posts(&self, now: SystemTime) -> Vec<PendingPost> {
        let now = seconds(now);
        let mut state = self.lock();
        if !state.posts.iter().any(|p| p.next_try <= now) {
            return Vec::new();
        }
        let (due, waiting) = std::mem::take(&mut state.posts)
            .into_iter()
            .partition(|p| p.next_try <= now);
        state.posts = waiting;
        state.dirty = true;
        due
    }

    /// The reports of one period, one per policy domain.
    fn reports(&self, start: u64, period: Period) -> Vec<Report> {
        let mut by_domain: BTreeMap<String, Vec<PolicyCounts>> = BTreeMap::new();
        for (_, counts) in period.policies {
            by_domain
                .entry(counts.domain.clone())
                .or_default()
                .push(counts);
        }
        by_domain
            .into_iter()
            .map(|(domain, policies)| Report {
                domain,
                start,
                end: start + self.settings.interval.as_secs().max(1),
                policies,
            })
            .collect()
    }
}

impl TlsReportSink for Aggregator {
    fn record(&self, event: TlsReportEvent) {
        let max = self.settings.max_failure_details;
        add(&self.counted.failures);
        self.with_counts(&event.domain, event.policy_type, event.at, |counts| {
            counts.failures += 1;
            let reason: String = event.detail.chars().take(MAX_REASON).collect();
            let helo: Option<String> = event
                .receiving_mx_helo
                .as_deref()
                .map(|h| h.chars().take(MAX_HELO).collect());
            let same = |d: &&mut Detail| {
                d.result_type == event.result_type.as_str()
                    && d.receiving_mx_hostname == event.mx_host
                    && d.receiving_ip == event.receiving_ip
                    && d.sending_mta_ip == event.sending_mta_ip
                    && d.receiving_mx_helo == helo
                    && d.reason == reason
            };
            if let Some(detail) = counts.details.iter_mut().find(same) {
                detail.count += 1;
            } else if counts.details.len() < max {
                counts.details.push(Detail {
                    result_type: event.result_type.as_str().to_owned(),
                    receiving_mx_hostname: event.mx_host.clone(),
                    receiving_ip: event.receiving_ip,
                    sending_mta_ip: event.sending_mta_ip,
                    receiving_mx_helo: helo,
                    reason,
                    count: 1,
                });
            }
        });
    }

    fn success(&self, domain: &str, policy_type: PolicyType, policy: &PolicySummary) {
        add(&self.counted.successes);
        self.with_counts(domain, policy_type, SystemTime::now(), |counts| {
            counts.successes += 1;
            counts.policy_string.clone_from(&policy.policy_string);
            counts.mx_host.clone_from(&policy.mx_host);
        });
    }

    fn applied(&self, domain: &str, policy_type: PolicyType, policy: &PolicySummary) {
        self.with_counts(domain, policy_type, SystemTime::now(), |counts| {
            counts.policy_string.clone_from(&policy.policy_string);
            counts.mx_host.clone_from(&policy.mx_host);
        });
    }
}

/// The report of one policy domain for one period.
#[derive(Debug)]
struct Report {
    domain: String,
    start: u64,
    end: u64,
    policies: Vec<PolicyCounts>,
}

impl Report {
    /// `<start datetime>+<domain>@<submitter>`: unique per period, domain and
    /// submitter.
    fn id(&self, settings: &Settings) -> String {
        format!(
            "{}+{}@{}",
            datetime(self.start),
            self.domain,
            settings.submitter
        )
    }

    /// The report (RFC 8460 §4.4).
    fn json(&self, settings: &Settings) -> serde_json::Value {
        let policies: Vec<serde_json::Value> = self
            .policies
            .iter()
            .map(|p| {
                let mut policy = serde_json::json!({
                    "policy-type": p.policy_type,
                    "policy-string": p.policy_string,
                    "policy-domain": p.domain,
                });
                if !p.mx_host.is_empty() {
                    policy["mx-host"] = serde_json::json!(p.mx_host);
                }
                let details: Vec<serde_json::Value> = p
                    .details
                    .iter()
                    .map(|d| {
                        let mut detail = serde_json::json!({
                            "result-type": d.result_type,
                            "failed-session-count": d.count,
                        });
                        if !d.receiving_mx_hostname.is_empty() {
                            detail["receiving-mx-hostname"] =
                                serde_json::json!(d.receiving_mx_hostname);
                        }
                        if let Some(ip) = d.sending_mta_ip {
                            detail["sending-mta-ip"] = serde_json::json!(ip.to_string());
                        }
                        if let Some(ip) = d.receiving_ip {
                            detail["receiving-ip"] = serde_json::json!(ip.to_string());
                        }
                        if let Some(helo) = d.receiving_mx_helo.as_deref().filter(|h| !h.is_empty())
                        {
                            detail["receiving-mx-helo"] = serde_json::json!(helo);
                        }
                        if !d.reason.is_empty() {
                            detail["failure-reason-code"] = serde_json::json!(d.reason);
                        }
                        detail
                    })
                    .collect();
                let mut entry = serde_json::json!({
                    "policy": policy,
                    "summary": {
                        "total-successful-session-count": p.successes,
                        "total-failure-session-count": p.failures,
                    },
                });
                if !details.is_empty() {
                    entry["failure-details"] = serde_json::json!(details);
                }
                entry
            })
            .collect();
        serde_json::json!({
            "organization-name": settings.organization_name,
            "date-range": {
                "start-datetime": datetime(self.start),
                "end-datetime": datetime(self.end.saturating_sub(1).max(self.start)),
            },
            "contact-info": settings.contact_info,
            "report-id": self.id(settings),
            "policies": policies,
        })
    }

    /// The gzipped JSON (RFC 8460 §5.2: `application/tlsrpt+gzip`).
    fn gzipped(&self, settings: &Settings) -> std::io::Result<Vec<u8>> {
        let json = serde_json::to_vec(&self.json(settings)).map_err(std::io::Error::other)?;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&json)?;
        gz.finish()
    }

    /// `<submitter>!<policy-domain>!<begin>!<end>!<id>.json.gz` (RFC 8460 §5.1).
    fn filename(&self, settings: &Settings) -> String {
        format!(
            "{}!{}!{}!{}!{}.json.gz",
            settings.submitter,
            self.domain,
            self.start,
            self.end,
            std::process::id()
        )
    }

    /// The report as a message (RFC 8460 §5.3) from `settings.from` to `to`.
    fn message(&self, settings: &Settings, to: &[String], gz: &[u8]) -> Vec<u8> {
        let id = self.id(settings);
        let boundary = format!("tlsrpt-{}-{}", self.start, std::process::id());
        let encoded = base64::engine::general_purpose::STANDARD.encode(gz);
        let mut attachment = String::new();
        for line in encoded.as_bytes().chunks(76) {
            attachment.push_str(&String::from_utf8_lossy(line));
            attachment.push_str("\r\n");
        }
        let date = smtp_server::smtp_proto::rfc5322_date(SystemTime::now());
        let sessions: u64 = self.policies.iter().map(|p| p.successes).sum();
        let failures: u64 = self.policies.iter().map(|p| p.failures).sum();
        format!(
            "From: {from}\r\n\
             To: {to}\r\n\
             Date: {date}\r\n\
             Subject: Report Domain: {domain} Submitter: {submitter} Report-ID: <{id}>\r\n\
             Message-ID: <{message_id}>\r\n\
             TLS-Report-Domain: {domain}\r\n\
             TLS-Report-Submitter: {submitter}\r\n\
             TLS-Required: No\r\n\
             MIME-Version: 1.0\r\n\
             Content-Type: multipart/report; report-type=\"tlsrpt\";\r\n\tboundary=\"{boundary}\"\r\n\
             \r\n\
             This is a TLS report (RFC 8460) in MIME format.\r\n\
             \r\n\
             --{boundary}\r\n\
             Content-Type: text/plain; charset=us-ascii\r\n\
             \r\n\
             This is an aggregate TLS report from {submitter} for {domain},\r\n\
             from {start} to {end}: {sessions} successful and {failures} failed sessions.\r\n\
             \r\n\
             --{boundary}\r\n\
             Content-Type: application/tlsrpt+gzip\r\n\
             Content-Transfer-Encoding: base64\r\n\
             Content-Disposition: attachment;\r\n\tfilename=\"{filename}\"\r\n\
             \r\n\
             {attachment}\
             \r\n\
             --{boundary}--\r\n",
            from = settings.from,
            to = to.join(", "),
            domain = self.domain,
            submitter = settings.submitter,
            message_id = id.replace(['+', ':'], "."),
            start = datetime(self.start),
            end = datetime(self.end),
            filename = self.filename(settings),
        )
        .into_bytes()
    }
}

/// Where reports go: `mailto:` and `https:` addresses of a TLS-RPT record.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rua {
    /// Mail addresses.
    pub mailto: Vec<String>,
    /// HTTPS URLs.
    pub https: Vec<String>,
}

/// Reads the `rua` of a domain's TLS-RPT TXT records (RFC 8460 §3): exactly one
/// record starting `v=TLSRPTv1`, its `rua=` a comma-separated list of `mailto:` and
/// `https:` URIs (others are ignored); `None` when there is none, or more than one.
///
/// ```
/// use mta_bin::tlsrpt::rua;
///
/// let rua = rua(&["v=TLSRPTv1; rua=mailto:tls@example.org,https://r.example.org/v1".to_owned()]).unwrap();
/// assert_eq!(rua.mailto, ["tls@example.org"]);
/// assert_eq!(rua.https, ["https://r.example.org/v1"]);
/// ```
pub fn rua(records: &[String]) -> Option<Rua> {
    const VERSION: &str = "v=TLSRPTv1";
    let found: Vec<&str> = records
        .iter()
        .map(String::as_str)
        .filter(|r| {
            r.get(..VERSION.len())
                .is_some_and(|head| head.eq_ignore_ascii_case(VERSION))
                && matches!(
                    r.as_bytes().get(VERSION.len()),
                    None | Some(b' ' | b';' | b'\t')
                )
        })
        .collect();
    let [record] = found.as_slice() else {
        return None;
    };
    let value = record.split(';').find_map(|part| {
        let (k, v) = part.split_once('=')?;
        k.trim().eq_ignore_ascii_case("rua").then(|| v.trim())
    })?;
    let mut rua = Rua::default();
    for uri in value.split(',').map(str::trim).filter(|u| !u.is_empty()) {
        let lower = uri.to_ascii_lowercase();
        if lower.starts_with("mailto:") {
            let address = percent_decode(&uri["mailto:".len()..]);
            // A `?query` is not an address.
            let address = address.split('?').next().unwrap_or_default().to_owned();
            if ReversePath::parse(&format!("<{address}>")).is_ok() && address.contains('@') {
                rua.mailto.push(address);
            }
        } else if lower.starts_with("https://") {
            rua.https.push(uri.to_owned());
        }
    }
    (!rua.mailto.is_empty() || !rua.https.is_empty()).then_some(rua)
}

/// Sends the reports that are due, and keeps the state on disk, until `stop`.
pub struct Reporter {
    aggregator: Arc<Aggregator>,
    dns: Dns,
    resolver: MxResolver,
    stages: Arc<RwLock<Stages>>,
    tls: Arc<rustls::ClientConfig>,
}

impl Reporter {
    /// A reporter for `aggregator`: TXT lookups and HTTPS hosts through `resolver`
    /// (within `timeout`), messages through `stages` (the chain locally injected mail
    /// goes through), HTTPS with `tls` (one that verifies).
    pub fn new(
        aggregator: Arc<Aggregator>,
        resolver: MxResolver,
        timeout: Duration,
        stages: Arc<RwLock<Stages>>,
        tls: Arc<rustls::ClientConfig>,
    ) -> Self {
        Self {
            dns: Dns::with_resolver(resolver.resolver().clone(), timeout),
            aggregator,
            resolver,
            stages,
            tls,
        }
    }

    /// Runs until `stop`, then saves the state.
    pub async fn run(self, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        loop {
            let now = SystemTime::now();
            let due = self.aggregator.next_due(now);
            let wait = due.duration_since(now).unwrap_or_default().min(SAVE_EVERY);
            tokio::select! {
                () = &mut stop => break,
                () = tokio::time::sleep(wait) => {}
            }
            self.send_due().await;
            self.retry_posts().await;
            let aggregator = Arc::clone(&self.aggregator);
            let _ = tokio::task::spawn_blocking(move || aggregator.save()).await;
        }
        let aggregator = Arc::clone(&self.aggregator);
        let _ = tokio::task::spawn_blocking(move || aggregator.save()).await;
    }

    /// Sends every report that is due; those that could not be sent for a reason that
    /// may pass are kept (for `KEEP_UNSENT` after their period).
    pub async fn send_due(&self) {
        let now = SystemTime::now();
        for (start, reports) in self.aggregator.take_due(now) {
            let mut unsent = Vec::new();
            for mut report in reports {
                if !self.send(&mut report).await {
                    unsent.push(report);
                }
            }
            let end = UNIX_EPOCH
                + Duration::from_secs(start)
                + self.aggregator.settings.interval
                + KEEP_UNSENT;
            if end > now {
                self.aggregator.put_back(start, unsent);
            } else if !unsent.is_empty() {
                warn!(
                    period = datetime(start),
                    "TLS reports given up: {} domains",
                    unsent.len()
                );
            }
        }
    }

    /// Sends one report to its domain's `rua`: `false` when it should be tried again
    /// (its `https:` uploads are then marked done: a failed one waits in the state).
    async fn send(&self, report: &mut Report) -> bool {
        let settings = &self.aggregator.settings;
        let name = format!("_smtp._tls.{}", report.domain);
        let rua = match self.dns.txt(&name).await {
            Ok(records) => rua(&records),
            Err(Failure::NoDomain) => None,
            Err(e) => {
                warn!(domain = %report.domain, error = %e, "TLS report: cannot look up {name}; trying later");
                return false;
            }
        };
        let Some(rua) = rua else {
            debug!(domain = %report.domain, "no TLS-RPT record: no report");
            return true;
        };
        let gz = match report.gzipped(settings) {
            Ok(gz) => gz,
            Err(e) => {
                warn!(domain = %report.domain, error = %e, "TLS report not made");
                return true;
            }
        };
        let mut again = false;
        if !rua.mailto.is_empty() {
            match self.submit(report, &rua.mailto, &gz).await {
                Ok(()) => {
                    add(&self.aggregator.counted.mailed);
                    info!(
                        domain = %report.domain,
                        to = %rua.mailto.join(", "),
                        report_id = %report.id(settings),
                        "TLS report queued"
                    );
                }
                Err(e) => {
                    add(&self.aggregator.counted.mail_failed);
                    warn!(domain = %report.domain, error = %e, "TLS report not queued; trying later");
                    again = true;
                }
            }
        }
        let urls = if report.policies.iter().all(|p| p.posted) {
            &[][..]
        } else {
            &rua.https[..]
        };
        for url in urls {
            match self.post(url, &gz).await {
                Ok(status) => info!(domain = %report.domain, url, status, "TLS report posted"),
                Err(e) => {
                    if self
                        .aggregator
                        .keep_post(report, url, &gz, SystemTime::now())
                    {
                        warn!(
                            domain = %report.domain,
                            url,
                            error = %e,
                            "TLS report not posted; trying again in {}s",
                            settings.post_retry.as_secs()
                        );
                    } else {
                        warn!(domain = %report.domain, url, error = %e, "TLS report not posted (not tried again)");
                    }
                }
            }
        }
        for policy in &mut report.policies {
            policy.posted = true;
        }
        !again
    }

    /// Tries again the `https:` uploads that are due; one that fails again waits
    /// twice as long as the last time, until `post_retry_for` after its first failure
    /// (then it is dropped, with a warning).
    pub async fn retry_posts(&self) {
        let settings = &self.aggregator.settings;
        for mut pending in self.aggregator.take_due_posts(SystemTime::now()) {
            let Ok(gz) = base64::engine::general_purpose::STANDARD.decode(&pending.body) else {
                warn!(url = %pending.url, report_id = %pending.report_id, "TLS report to post again unreadable; dropped");
                continue;
            };
            pending.attempts = pending.attempts.saturating_add(1);
            match self.post(&pending.url, &gz).await {
                Ok(status) => info!(
                    domain = %pending.domain,
                    url = %pending.url,
                    status,
                    report_id = %pending.report_id,
                    attempts = pending.attempts,
                    "TLS report posted"
                ),
                Err(e) => {
                    // Exponential backoff (RFC 8460 §5.5): post_retry, twice that, ...
                    let wait = backoff(settings.post_retry, pending.attempts);
                    let next = seconds(SystemTime::now()).saturating_add(wait);
                    if next > pending.give_up {
                        warn!(
                            domain = %pending.domain,
                            url = %pending.url,
                            error = %e,
                            report_id = %pending.report_id,
                            attempts = pending.attempts,
                            "TLS report not posted; given up"
                        );
                        continue;
                    }
                    warn!(
                        domain = %pending.domain,
                        url = %pending.url,
                        error = %e,
                        attempts = pending.attempts,
                        "TLS report not posted; trying again in {wait}s"
                    );
                    pending.next_try = next;
                    let url = pending.url.clone();
                    if !self.aggregator.put_back_post(pending) {
                        warn!(url, "TLS report not posted; too many waiting: given up");
                    }
                }
            }
        }
    }

    /// One `https:` upload within `post_timeout`: the status (2xx), or why not.
    async fn post(&self, url: &str, gz: &[u8]) -> Result<u16, String> {
        let timeout = self.aggregator.settings.post_timeout;
        let posted = tokio::time::timeout(timeout, post(&self.resolver, &self.tls, url, gz))
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {timeout:?}")));
        let counted = &self.aggregator.counted;
        add(if posted.is_ok() {
            &counted.posted
        } else {
            &counted.post_failed
        });
        posted
    }

    /// Hands the report message to the stages, as mail injected on this machine.
    async fn submit(&self, report: &Report, to: &[String], gz: &[u8]) -> Result<(), String> {
        let settings = &self.aggregator.settings;
        let from = ReversePath::parse(&format!("<{}>", settings.from))
            .map_err(|e| format!("from {:?}: {e}", settings.from))?;
        let recipients = to
            .iter()
            .filter_map(|to| ForwardPath::parse(&format!("<{to}>")).ok())
            .map(|to| Recipient {
                to,
                params: RcptParameters::default(),
            })
            .collect();
        let envelope = Envelope {
            from,
            params: MailParameters {
                body: Some(Body::SevenBit),
                ..MailParameters::default()
            },
            recipients,
        };
        let stages = self
            .stages
            .read()
            .map(|s| s.clone())
            .map_err(|_| "the server's filters are unavailable".to_owned())?;
        let message = report.message(settings, to, gz);
        let decision = stages
            .submit(
                SessionInfo::local("tls-reports"),
                envelope,
                Content::from(message),
                Notes::default(),
            )
            .await
            .map_err(|e| e.to_string())?;
        if decision.is_accept() {
            Ok(())
        } else {
            Err(decision
                .reply()
                .map_or_else(|| "refused".to_owned(), ToString::to_string))
        }
    }
}

/// POSTs `body` as `application/tlsrpt+gzip` to `url` (`https://host[:port]/path`),
/// over TLS verified with `tls`: the status (2xx), or why not.
async fn post(
    resolver: &MxResolver,
    tls: &Arc<rustls::ClientConfig>,
    url: &str,
    body: &[u8],
) -> Result<u16, String> {
    let rest = url
        .get("https://".len()..)
        .ok_or_else(|| format!("{url}: not https"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => match p.parse() {
            Ok(port) => (h, port),
            Err(_) => (authority, 443),
        },
        _ => (authority, 443),
    };
    let host = host.trim_matches(['[', ']']);
    let addresses: Vec<IpAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![ip],
        Err(_) => {
            resolver
                .host(host)
                .await
                .map_err(|e| format!("{host}: {e}"))?
                .addresses
        }
    };
    let mut last = format!("no address for {host}");
    let mut tcp = None;
    for ip in addresses {
        match tokio::net::TcpStream::connect((ip, port)).await {
            Ok(stream) => {
                tcp = Some(stream);
                break;
            }
            Err(e) => last = format!("cannot connect to {ip} port {port}: {e}"),
        }
    }
    let tcp = tcp.ok_or(last)?;
    let name = rustls_pki_types::ServerName::try_from(host.to_owned())
        .map_err(|e| format!("{host:?}: {e}"))?;
    let mut stream = tokio_rustls::TlsConnector::from(Arc::clone(tls))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS with {host}: {e}"))?;
    let header = format!(
        "POST {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: mta\r\nContent-Type: application/tlsrpt+gzip\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let io = |e: std::io::Error| e.to_string();
    stream.write_all(header.as_bytes()).await.map_err(io)?;
    stream.write_all(body).await.map_err(io)?;
    stream.flush().await.map_err(io)?;
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    while !received.windows(2).any(|w| w == b"\r\n") && received.len() < MAX_RESPONSE {
        match stream.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => received.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(e.to_string()),
        }
    }
    let line = String::from_utf8_lossy(&received);
    let status = line
        .split_ascii_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| "no HTTP response".to_owned())?;
    if (200..300).contains(&status) {
        Ok(status)
    } else {
        Err(format!("HTTP {status}"))
    }
}

/// The wait in seconds before the next upload after `attempts` failed ones: `first`
/// after one, doubled after each more (capped at 2^20 times `first`).
fn backoff(first: Duration, attempts: u32) -> u64 {
    let doublings = attempts.saturating_sub(1).min(20);
    first.as_secs().max(1).saturating_mul(1 << doublings)
}

/// Seconds since 1970 (0 before).
fn seconds(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}

/// `2026-12-06T00:00:00Z` (RFC 3339, UTC) for seconds since 1970 (at most the last
/// second of the year 9999, which RFC 3339 can write).
fn datetime(secs: u64) -> String {
    let secs = secs.min(253_402_300_799);
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
    humantime::format_rfc3339_seconds(time).to_string()
}

/// `%XX` decoded (RFC 3986); a bad escape is kept as it is.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = text.get(i + 1..i + 3)
            && let Ok(b) = u8::from_str_radix(hex, 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Writes `bytes` to `path` through a new file renamed over it (its directory made).
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".state.{}.tmp", std::process::id()));
    {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use smtp_client::mta_sts::{Mode, ResultType};

    fn settings(dir: &Path) -> Settings {
        Settings {
            interval: Duration::from_secs(86_400),
            organization_name: "Example".to_owned(),
            contact_info: "tls@sender.test".to_owned(),
            from: "postmaster@sender.test".to_owned(),
            submitter: "mx.sender.test".to_owned(),
            max_failure_details: 2,
            max_domains: 10,
            post_timeout: Duration::from_secs(5),
            post_retry: Duration::from_secs(3600),
            post_retry_for: Duration::from_secs(86_400),
            state_file: dir.join("state.json"),
        }
    }

    fn event(at: SystemTime, result_type: ResultType, mx: &str) -> TlsReportEvent {
        TlsReportEvent {
            domain: "Example.ORG.".to_owned(),
            policy_type: PolicyType::Sts,
            mode: Some(Mode::Testing),
            result_type,
            mx_host: mx.to_owned(),
            receiving_ip: None,
            sending_mta_ip: None,
            receiving_mx_helo: None,
            detail: "bad".to_owned(),
            at,
        }
    }

    #[test]
    fn retries_back_off() {
        let hour = Duration::from_secs(3600);
        let waits: Vec<u64> = (1..=5).map(|n| backoff(hour, n)).collect();
        assert_eq!(waits, [3600, 7200, 14_400, 28_800, 57_600]);
        assert_eq!(backoff(Duration::ZERO, 1), 1);
        assert_eq!(backoff(hour, u32::MAX), 3600 << 20);
    }

    #[test]
    fn datetimes() {
        assert_eq!(datetime(0), "1970-01-01T00:00:00Z");
        assert_eq!(datetime(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(datetime(1_796_601_599), "2026-12-06T23:59:59Z");
        assert_eq!(datetime(u64::MAX), "9999-12-31T23:59:59Z");
    }

    #[test]
    fn rua_records() {
        let r = |s: &[&str]| rua(&s.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>());
        assert_eq!(
            r(&["v=TLSRPTv1;rua=mailto:a%40b@example.org, https://x.example/r ,ftp://no"]),
            Some(Rua {
                // `a@b@example.org` is no address.
                mailto: Vec::new(),
                https: vec!["https://x.example/r".to_owned()],
            })
        );
        assert_eq!(
            r(&["v=TLSRPTv1; rua=mailto:tls@example.org"])
                .unwrap()
                .mailto,
            ["tls@example.org"]
        );
        assert_eq!(r(&["v=spf1 -all"]), None);
        assert_eq!(
            r(&[
                "v=TLSRPTv1; rua=mailto:a@x.org",
                "v=TLSRPTv1; rua=mailto:b@x.org"
            ]),
            None
        );
        assert_eq!(r(&["v=TLSRPTv1; rua=ftp://x"]), None);
        assert_eq!(r(&["v=TLSRPTv10; rua=mailto:a@x.org"]), None);
    }

    #[test]
    fn counts_per_period_with_bounded_details() {
        let dir = tempfile::tempdir().unwrap();
        let a = Aggregator::open(settings(dir.path()));
        let day = UNIX_EPOCH + Duration::from_secs(1_796_515_200); // 2026-12-06
        let summary = PolicySummary {
            policy_string: vec!["version: STSv1".to_owned(), "mode: testing".to_owned()],
            mx_host: vec!["mx.example.org".to_owned()],
        };
        a.with_counts("example.org", PolicyType::Sts, day, |c| c.successes += 3);
        a.applied("example.org", PolicyType::Sts, &summary);
        for mx in ["a", "a", "b", "c"] {
            a.record(event(
                day + Duration::from_secs(60),
                ResultType::CertificateExpired,
                mx,
            ));
        }
        a.save();
        // A new aggregator reads the state back.
        let a = Aggregator::open(settings(dir.path()));
        assert!(a.take_due(day + Duration::from_secs(3600)).is_empty());
        let due = a.take_due(day + Duration::from_secs(2 * 86_400));
        assert_eq!(due.len(), 1);
        let (start, reports) = &due[0];
        assert_eq!(*start, 1_796_515_200);
        assert_eq!(reports.len(), 1);
        let json = reports[0].json(a.settings());
        assert_eq!(json["date-range"]["start-datetime"], "2026-12-06T00:00:00Z");
        assert_eq!(json["date-range"]["end-datetime"], "2026-12-06T23:59:59Z");
        assert_eq!(
            json["report-id"],
            "2026-12-06T00:00:00Z+example.org@mx.sender.test"
        );
        let p = &json["policies"][0];
        assert_eq!(p["policy"]["policy-domain"], "example.org");
        assert_eq!(p["policy"]["policy-type"], "sts");
        assert_eq!(p["summary"]["total-successful-session-count"], 3);
        assert_eq!(p["summary"]["total-failure-session-count"], 4);
        let details = p["failure-details"].as_array().unwrap();
        assert_eq!(details.len(), 2, "bounded by max_failure_details");
        assert_eq!(details[0]["failed-session-count"], 2);
        assert_eq!(details[0]["result-type"], "certificate-expired");
        // Taken once.
        assert!(a.take_due(day + Duration::from_secs(2 * 86_400)).is_empty());
    }

    #[test]
    fn message_shape() {
        let dir = tempfile::tempdir().unwrap();
        let s = settings(dir.path());
        let report = Report {
            domain: "example.org".to_owned(),
            start: 1_796_515_200,
            end: 1_796_601_600,
            policies: vec![PolicyCounts::default()],
        };
        let gz = report.gzipped(&s).unwrap();
        let text =
            String::from_utf8(report.message(&s, &["r@example.org".to_owned()], &gz)).unwrap();
        assert!(text.contains("TLS-Report-Domain: example.org\r\n"));
        assert!(text.contains("TLS-Report-Submitter: mx.sender.test\r\n"));
        // Delivered despite TLS failures at the report address (RFC 8460 §5.3).
        assert!(text.contains("\r\nTLS-Required: No\r\n"));
        assert!(text.contains(
            "Subject: Report Domain: example.org Submitter: mx.sender.test Report-ID: <2026-12-06T00:00:00Z+example.org@mx.sender.test>\r\n"
        ));
        assert!(text.contains("filename=\"mx.sender.test!example.org!1796515200!1796601600!"));
        assert!(text.lines().all(|l| l.len() <= 998));
    }

    #[test]
    fn settings_checked() {
        let mut t = TlsReporting {
            interval: Duration::ZERO,
            from: Some("not an address".to_owned()),
            post_retry: Duration::ZERO,
            ..TlsReporting::default()
        };
        let keys: Vec<&str> = check_settings(&t).into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["interval", "post_retry", "from"]);
        t.interval = Duration::from_secs(2);
        t.from = Some("tls@example.org".to_owned());
        t.post_retry = Duration::from_secs(1);
        t.post_retry_for = Duration::ZERO;
        assert!(check_settings(&t).is_empty());
    }

    /// Failures are detailed per distinct connection (RFC 8460 §4.4): our address,
    /// the server's, its greeting name; the same ones added up.
    #[test]
    fn details_carry_the_connection() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = settings(dir.path());
        s.max_failure_details = 10;
        let a = Aggregator::open(s);
        let day = UNIX_EPOCH + Duration::from_secs(1_796_515_200);
        let on = |ip: &str, helo: Option<&str>| {
            let mut e = event(
                day + Duration::from_secs(60),
                ResultType::CertificateHostMismatch,
                "mx.example.org",
            );
            e.sending_mta_ip = Some("192.0.2.1".parse().unwrap());
            e.receiving_ip = Some(ip.parse().unwrap());
            e.receiving_mx_helo = helo.map(str::to_owned);
            e
        };
        a.record(on("198.51.100.7", Some("mx7.example.org")));
        a.record(on("198.51.100.7", Some("mx7.example.org")));
        a.record(on("198.51.100.8", Some("mx8.example.org")));
        a.record(on("198.51.100.8", None));
        a.save();
        let a = Aggregator::open(settings(dir.path()));
        let due = a.take_due(day + Duration::from_secs(2 * 86_400));
        let json = due[0].1[0].json(a.settings());
        let p = &json["policies"][0];
        assert_eq!(p["summary"]["total-failure-session-count"], 4);
        let details = p["failure-details"].as_array().unwrap();
        assert_eq!(details.len(), 3, "{details:?}");
        let d = &details[0];
        assert_eq!(d["result-type"], "certificate-host-mismatch");
        assert_eq!(d["sending-mta-ip"], "192.0.2.1");
        assert_eq!(d["receiving-ip"], "198.51.100.7");
        assert_eq!(d["receiving-mx-hostname"], "mx.example.org");
        assert_eq!(d["receiving-mx-helo"], "mx7.example.org");
        assert_eq!(d["failed-session-count"], 2);
        assert_eq!(details[1]["receiving-mx-helo"], "mx8.example.org");
        assert!(details[2].get("receiving-mx-helo").is_none(), "{details:?}");
        // Unknown fields are left out, not empty.
        let e = event(day, ResultType::ValidationFailure, "backup.example.org");
        a.record(e);
        let due = a.take_due(day + Duration::from_secs(2 * 86_400));
        let json = due[0].1[0].json(a.settings());
        let d = &json["policies"][0]["failure-details"][0];
        for absent in ["sending-mta-ip", "receiving-ip", "receiving-mx-helo"] {
            assert!(d.get(absent).is_none(), "{absent} in {d}");
        }
    }

    /// A failed upload waits `post_retry`, survives a restart, and is given up
    /// `post_retry_for` after the failure; none is kept when that is zero.
    #[test]
    fn failed_posts_wait_and_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let a = Aggregator::open(settings(dir.path()));
        let report = Report {
            domain: "example.org".to_owned(),
            start: 1_796_515_200,
            end: 1_796_601_600,
            policies: vec![PolicyCounts::default()],
        };
        let failed = UNIX_EPOCH + Duration::from_secs(1_796_605_000);
        assert!(a.keep_post(&report, "https://r.example.org/v1", b"gz", failed));
        assert!(a.take_due_posts(failed).is_empty());
        // The next try is what the reporter waits for.
        assert_eq!(a.next_due(failed), failed + Duration::from_secs(3600));
        a.save();
        let a = Aggregator::open(settings(dir.path()));
        assert!(
            a.take_due_posts(failed + Duration::from_secs(3599))
                .is_empty()
        );
        let due = a.take_due_posts(failed + Duration::from_secs(3600));
        assert_eq!(due.len(), 1);
        let post = &due[0];
        assert_eq!(post.url, "https://r.example.org/v1");
        assert_eq!(post.report_id, report.id(a.settings()));
        assert_eq!(post.give_up, 1_796_605_000 + 86_400);
        assert_eq!(
            base64::engine::general_purpose::STANDARD
                .decode(&post.body)
                .unwrap(),
            b"gz"
        );
        assert!(
            a.take_due_posts(failed + Duration::from_secs(7200))
                .is_empty(),
            "taken once"
        );

        let mut s = settings(dir.path());
        s.post_retry_for = Duration::ZERO;
        let a = Aggregator::open(s);
        assert!(!a.keep_post(&report, "https://r.example.org/v1", b"gz", failed));
    }
}
