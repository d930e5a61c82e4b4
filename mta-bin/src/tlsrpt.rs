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
//! What it does not do: DANE policies (the events carry a policy type, so a `tlsa`
//! policy is reported as soon as DANE hands its results to the same sink), retrying
//! an `https:` upload that failed (the `mailto:` addresses get the report through the
//! queue, which retries), and `sending-mta-ip` (not known to remote delivery).

use std::collections::BTreeMap;
use std::hash::BuildHasher;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
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
}

/// Everything counted and not reported yet (what `state.json` holds).
#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    /// By the period's start (seconds since 1970).
    periods: BTreeMap<u64, Period>,
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
}

/// One `failure-details` entry.
#[derive(Debug, Serialize, Deserialize)]
struct Detail {
    result_type: String,
    receiving_mx_hostname: String,
    receiving_ip: Option<IpAddr>,
    reason: String,
    count: u64,
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
        let mut starts: Vec<u64> = self.lock().periods.keys().copied().collect();
        starts.push(self.period_of(now));
        starts
            .into_iter()
            .map(|s| UNIX_EPOCH + Duration::from_secs(s + interval) + self.delay(s))
            .min()
            .unwrap_or(now)
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
        self.with_counts(&event.domain, event.policy_type, event.at, |counts| {
            counts.failures += 1;
            let reason: String = event.detail.chars().take(MAX_REASON).collect();
            let same = |d: &&mut Detail| {
                d.result_type == event.result_type.as_str()
                    && d.receiving_mx_hostname == event.mx_host
                    && d.receiving_ip == event.receiving_ip
                    && d.reason == reason
            };
            if let Some(detail) = counts.details.iter_mut().find(same) {
                detail.count += 1;
            } else if counts.details.len() < max {
                counts.details.push(Detail {
                    result_type: event.result_type.as_str().to_owned(),
                    receiving_mx_hostname: event.mx_host.clone(),
                    receiving_ip: event.receiving_ip,
                    reason,
                    count: 1,
                });
            }
        });
    }

    fn success(&self, domain: &str, policy_type: PolicyType, policy: &PolicySummary) {
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
                        if let Some(ip) = d.receiving_ip {
                            detail["receiving-ip"] = serde_json::json!(ip.to_string());
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
            let aggregator = Arc::clone(&self.aggregator);
            let _ = tokio::task::spawn_blocking(move || aggregator.save()).await;
        }
        let aggregator = Arc::clone(&self.aggregator);
        let _ = tokio::task::spawn_blocking(move || aggregator.save()).await;
    }

    /// Sends every report that is due; those that could not be sent for a reason that
    /// may pass are kept (for [`KEEP_UNSENT`] after their period).
    pub async fn send_due(&self) {
        let now = SystemTime::now();
        for (start, reports) in self.aggregator.take_due(now) {
            let mut unsent = Vec::new();
            for report in reports {
                if !self.send(&report).await {
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

    /// Sends one report to its domain's `rua`: `false` when it should be tried again.
    async fn send(&self, report: &Report) -> bool {
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
                Ok(()) => info!(
                    domain = %report.domain,
                    to = %rua.mailto.join(", "),
                    report_id = %report.id(settings),
                    "TLS report queued"
                ),
                Err(e) => {
                    warn!(domain = %report.domain, error = %e, "TLS report not queued; trying later");
                    again = true;
                }
            }
        }
        for url in &rua.https {
            let posted = tokio::time::timeout(
                settings.post_timeout,
                post(&self.resolver, &self.tls, url, &gz),
            )
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {:?}", settings.post_timeout)));
            match posted {
                Ok(status) => info!(domain = %report.domain, url, status, "TLS report posted"),
                Err(e) => warn!(domain = %report.domain, url, error = %e, "TLS report not posted"),
            }
        }
        !again
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

/// `2026-12-06T00:00:00Z` (RFC 3339, UTC) for seconds since 1970.
fn datetime(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Days to civil date (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
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
            detail: "bad".to_owned(),
            at,
        }
    }

    #[test]
    fn datetimes() {
        assert_eq!(datetime(0), "1970-01-01T00:00:00Z");
        assert_eq!(datetime(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(datetime(1_796_601_599), "2026-12-06T23:59:59Z");
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
            ..TlsReporting::default()
        };
        let keys: Vec<&str> = check_settings(&t).into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["interval", "from"]);
        t.interval = Duration::from_secs(2);
        t.from = Some("tls@example.org".to_owned());
        assert!(check_settings(&t).is_empty());
    }
}
