//! MTA-STS (RFC 8461): the `_mta-sts` TXT record, the policy a domain serves over
//! HTTPS, MX pattern matching, the fetch, and a cache of policies that survives
//! restarts.
//!
//! ```text
//!  TXT _mta-sts.<domain> ─▶ StsRecord { id } ─┐
//!                                             ├─▶ PolicyCache::discover ─▶ Policy { mode, mx, max_age }
//!  https://mta-sts.<domain>/.well-known/      │    (cached while the id is the same and
//!  mta-sts.txt ─▶ fetch_policy ───────────────┘     max_age has not passed; RFC 8461 §5.1)
//! ```
//!
//! What it does not do: DNS (the caller looks up the TXT record and the addresses of
//! `mta-sts.<domain>`), and the SMTP side of enforcement (the caller filters its MX
//! hosts with [`Policy::matches`] and connects with [`crate::TlsPolicy::Required`]).
//! Failures worth a TLS report (RFC 8460) are described by [`TlsReportEvent`] and
//! handed to a [`TlsReportSink`].
//!
//! ```
//! use smtp_client::mta_sts::{Mode, Policy, StsRecord};
//!
//! let record = StsRecord::select(&["v=STSv1; id=20160831085700Z".to_owned()]).unwrap();
//! assert_eq!(record.unwrap().id, "20160831085700Z");
//!
//! let policy = Policy::parse(
//!     "version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.example.net\r\nmax_age: 86400\r\n",
//! )
//! .unwrap();
//! assert_eq!(policy.mode, Mode::Enforce);
//! assert!(policy.matches("mail.example.com"));
//! assert!(policy.matches("backup.example.net"));
//! assert!(!policy.matches("a.b.example.net"));
//! ```

use std::collections::HashMap;
use std::future::Future;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tracing::{debug, warn};

/// The largest `max_age` a policy may have (RFC 8461 §3.2: about a year), in seconds.
pub const MAX_AGE_LIMIT: u64 = 31_557_600;
/// The largest policy body read (RFC 8461 §3.3 lets senders stop at 64 KiB).
pub const MAX_POLICY_SIZE: usize = 64 * 1024;
/// Where a domain serves its policy, on `mta-sts.<domain>` (RFC 8461 §3.3).
pub const WELL_KNOWN_PATH: &str = "/.well-known/mta-sts.txt";
/// The largest HTTP response header read.
const MAX_HEADER: usize = 16 * 1024;

/// Why there is no record, no policy or no cache file: each said for a person.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// The `_mta-sts` TXT record is not usable (RFC 8461 §3.1).
    #[error("bad MTA-STS record: {0}")]
    BadRecord(String),
    /// The policy text is not a valid policy (RFC 8461 §3.2).
    #[error("bad MTA-STS policy: {0}")]
    BadPolicy(String),
    /// The fetch did not end within its time.
    #[error("no answer within {}s", .0.as_secs_f32())]
    TimedOut(Duration),
    /// The fetch failed: connection, TLS (an untrusted certificate), HTTP status,
    /// redirect, content type, size.
    #[error("{0}")]
    Fetch(String),
    /// The cache could not be read or written.
    #[error("MTA-STS cache {path}: {source}")]
    Cache {
        /// The file or directory.
        path: PathBuf,
        /// The system's error.
        source: std::io::Error,
    },
}

/// The `_mta-sts.<domain>` TXT record (RFC 8461 §3.1): `v=STSv1; id=...;`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StsRecord {
    /// The policy's id: 1 to 32 letters and digits; a new id announces a new policy.
    pub id: String,
}

impl StsRecord {
    /// Parses one record. `v=STSv1` must come first; `id` is required; other fields
    /// are ignored.
    ///
    /// ```
    /// use smtp_client::mta_sts::StsRecord;
    /// assert_eq!(StsRecord::parse("v=STSv1; id=2025a;").unwrap().id, "2025a");
    /// assert!(StsRecord::parse("v=STSv1; id=a-b").is_err());
    /// ```
    pub fn parse(text: &str) -> Result<Self, PolicyError> {
        let fields = tags(text);
        match fields.first() {
            Some((k, v)) if k == "v" && v == "STSv1" => {}
            _ => return Err(PolicyError::BadRecord(format!("{text:?}: not v=STSv1"))),
        }
        let id = tag(&fields, "id")
            .ok_or_else(|| PolicyError::BadRecord(format!("{text:?}: no id=")))?;
        if !(1..=32).contains(&id.len()) || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(PolicyError::BadRecord(format!(
                "{text:?}: id={id} is not 1 to 32 letters and digits"
            )));
        }
        Ok(Self { id: id.to_owned() })
    }

    /// The record among the TXT records of `_mta-sts.<domain>` (each one's strings
    /// joined): those not starting with `v=STSv1;` are discarded, and when not exactly
    /// one is left, or it is invalid, there is no policy (RFC 8461 §3.1): `Ok(None)`
    /// when none starts so, an error otherwise.
    pub fn select(records: &[String]) -> Result<Option<Self>, PolicyError> {
        let sts: Vec<&String> = records
            .iter()
            .filter(|r| {
                let r = r.trim_start();
                r.starts_with("v=STSv1;") || r.trim_end() == "v=STSv1"
            })
            .collect();
        match sts.as_slice() {
            [] => Ok(None),
            [one] => Self::parse(one).map(Some),
            many => Err(PolicyError::BadRecord(format!(
                "{} v=STSv1 records (senders ignore them all)",
                many.len()
            ))),
        }
    }
}

/// A policy's `mode` (RFC 8461 §5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Deliver only to a listed MX with a valid certificate; otherwise the mail waits.
    Enforce,
    /// Deliver as without a policy, and report what would have failed (TLS-RPT).
    Testing,
    /// The policy is withdrawn: deliver as without one.
    None,
}

impl Mode {
    /// The word in the policy.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Enforce => "enforce",
            Self::Testing => "testing",
            Self::None => "none",
        }
    }
}

/// The `key: value` lines of a policy as they are, before any check: what `mta
/// check-dns` judges, and what [`Policy::from_fields`] validates. Lines are split on
/// LF (a CR before it is dropped), unknown keys are ignored, and of repeated keys
/// other than `mx` the first counts (RFC 8461 §3.2).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicyFields {
    /// `version`.
    pub version: Option<String>,
    /// `mode`.
    pub mode: Option<String>,
    /// `max_age`.
    pub max_age: Option<String>,
    /// Every `mx`, in order.
    pub mx: Vec<String>,
}

impl PolicyFields {
    /// Reads the fields of `text`.
    pub fn parse(text: &str) -> Self {
        let mut fields = Self::default();
        for line in text.lines() {
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim().to_owned();
            match key.trim() {
                "version" if fields.version.is_none() => fields.version = Some(value),
                "mode" if fields.mode.is_none() => fields.mode = Some(value),
                "max_age" if fields.max_age.is_none() => fields.max_age = Some(value),
                "mx" => fields.mx.push(value),
                _ => {}
            }
        }
        fields
    }
}

/// A valid policy (RFC 8461 §3.2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// What to do.
    pub mode: Mode,
    /// The MX patterns (`mail.example.com`, `*.example.net`); at least one unless
    /// the mode is `none`.
    pub mx: Vec<String>,
    /// How long the policy may be cached, in seconds (at most [`MAX_AGE_LIMIT`]).
    pub max_age: u64,
}

impl Policy {
    /// Parses and validates a policy.
    pub fn parse(text: &str) -> Result<Self, PolicyError> {
        Self::from_fields(&PolicyFields::parse(text))
    }

    /// Validates fields: `version: STSv1`, a known `mode`, `max_age` a number up to
    /// [`MAX_AGE_LIMIT`], and an `mx` unless the mode is `none`.
    pub fn from_fields(fields: &PolicyFields) -> Result<Self, PolicyError> {
        let bad = |s: String| Err(PolicyError::BadPolicy(s));
        if fields.version.as_deref() != Some("STSv1") {
            return bad(format!(
                "version is {}",
                fields.version.as_deref().unwrap_or("missing")
            ));
        }
        let mode = match fields.mode.as_deref() {
            Some("enforce") => Mode::Enforce,
            Some("testing") => Mode::Testing,
            Some("none") => Mode::None,
            Some(other) => return bad(format!("mode {other:?} is not enforce, testing or none")),
            None => return bad("no mode".to_owned()),
        };
        let max_age = match fields.max_age.as_deref() {
            Some(text)
                if !text.is_empty()
                    && text.len() <= 10
                    && text.bytes().all(|b| b.is_ascii_digit()) =>
            {
                match text.parse::<u64>() {
                    Ok(age) if age <= MAX_AGE_LIMIT => age,
                    _ => return bad(format!("max_age {text} is over {MAX_AGE_LIMIT}")),
                }
            }
            Some(text) => return bad(format!("max_age {text:?} is not a number of seconds")),
            None => return bad("no max_age".to_owned()),
        };
        if mode != Mode::None && fields.mx.is_empty() {
            return bad("no mx".to_owned());
        }
        Ok(Self {
            mode,
            mx: fields.mx.clone(),
            max_age,
        })
    }

    /// Whether `host` (an MX host name) matches one of the policy's `mx` patterns.
    pub fn matches(&self, host: &str) -> bool {
        self.mx.iter().any(|p| mx_matches(p, host))
    }

    /// The policy as a policy file (LF lines), which [`Policy::parse`] reads back.
    pub fn to_text(&self) -> String {
        let mut text = format!("version: STSv1\nmode: {}\n", self.mode.as_str());
        for mx in &self.mx {
            text.push_str(&format!("mx: {mx}\n"));
        }
        text.push_str(&format!("max_age: {}\n", self.max_age));
        text
    }
}

/// Whether an `mx` pattern matches `host` (RFC 8461 §4.1): equal (case and a final dot
/// aside), or `*.example.org` matching exactly one more label on the left.
///
/// ```
/// use smtp_client::mta_sts::mx_matches;
/// assert!(mx_matches("*.example.com", "mx1.example.com"));
/// assert!(!mx_matches("*.example.com", "foo.mx1.example.com"));
/// assert!(!mx_matches("*.example.com", "example.com"));
/// ```
pub fn mx_matches(pattern: &str, host: &str) -> bool {
    let pattern = pattern.trim_end_matches('.').to_ascii_lowercase();
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    match pattern.strip_prefix("*.") {
        Some(suffix) => host
            .split_once('.')
            .is_some_and(|(first, rest)| !first.is_empty() && rest == suffix),
        None => !pattern.is_empty() && pattern == host,
    }
}

/// How to fetch policies.
#[derive(Clone, Debug)]
pub struct FetchConfig {
    /// The HTTPS port (443; another only for tests).
    pub port: u16,
    /// The bound on the whole fetch: connection, handshake, request and response.
    /// Default 60 s.
    pub timeout: Duration,
    /// The TLS configuration: one that verifies the certificate for the name
    /// ([`crate::TlsConfigs::verified`]), as RFC 8461 §3.3 requires.
    pub tls: Arc<rustls::ClientConfig>,
}

impl FetchConfig {
    /// Port 443, 60 s, with `tls`.
    pub fn new(tls: Arc<rustls::ClientConfig>) -> Self {
        Self {
            port: 443,
            timeout: Duration::from_secs(60),
            tls,
        }
    }
}

/// An HTTP response (of [`get`]).
#[derive(Clone, Debug)]
pub struct HttpResponse {
    /// The status code.
    pub status: u16,
    /// The `Content-Type` field, if any.
    pub content_type: Option<String>,
    /// The `Location` field, if any (of a redirect).
    pub location: Option<String>,
    /// The body (chunked transfer decoded), at most [`MAX_POLICY_SIZE`] bytes.
    pub body: Vec<u8>,
}

/// An HTTP/1.1 GET of `path` over TLS from `host` (for SNI, the certificate and
/// `Host:`) at `addresses`, tried in turn, on `config.port`, all within
/// `config.timeout`. Redirects are returned, never followed; a body over
/// [`MAX_POLICY_SIZE`] is an error.
pub async fn get(
    host: &str,
    addresses: &[IpAddr],
    path: &str,
    config: &FetchConfig,
) -> Result<HttpResponse, PolicyError> {
    tokio::time::timeout(config.timeout, get_unbounded(host, addresses, path, config))
        .await
        .map_err(|_| PolicyError::TimedOut(config.timeout))?
}

async fn get_unbounded(
    host: &str,
    addresses: &[IpAddr],
    path: &str,
    config: &FetchConfig,
) -> Result<HttpResponse, PolicyError> {
    let fail = |s: String| PolicyError::Fetch(s);
    let mut last = fail(format!("no address for {host}"));
    let mut connected = None;
    for ip in addresses {
        match TcpStream::connect(SocketAddr::new(*ip, config.port)).await {
            Ok(stream) => {
                connected = Some(stream);
                break;
            }
            Err(e) => last = fail(format!("cannot connect to {ip} port {}: {e}", config.port)),
        }
    }
    let Some(tcp) = connected else {
        return Err(last);
    };
    let name = ServerName::try_from(host.to_owned()).map_err(|e| fail(format!("{host:?}: {e}")))?;
    let mut stream = TlsConnector::from(Arc::clone(&config.tls))
        .connect(name, tcp)
        .await
        .map_err(|e| fail(e.to_string()))?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: mta\r\nAccept: text/plain\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| fail(e.to_string()))?;
    stream.flush().await.map_err(|e| fail(e.to_string()))?;
    let mut received = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => {
                received.extend_from_slice(&buf[..n]);
                if received.len() > MAX_HEADER + MAX_POLICY_SIZE + 1024 {
                    break;
                }
                if complete(&received) == Some(true) {
                    break;
                }
            }
            // A server that closes without close_notify: what came is judged as it is.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(fail(e.to_string())),
        }
    }
    parse_response(&received)
}

/// Fetches the policy of `domain` from `https://mta-sts.<domain>/.well-known/mta-sts.txt`
/// at `addresses` (those of `mta-sts.<domain>`): status 200 (a redirect is a failure),
/// `Content-Type: text/plain` (RFC 8461 §3.3), and a valid policy.
pub async fn fetch_policy(
    domain: &str,
    addresses: &[IpAddr],
    config: &FetchConfig,
) -> Result<Policy, PolicyError> {
    let host = format!("mta-sts.{}", domain.trim_end_matches('.'));
    let response = get(&host, addresses, WELL_KNOWN_PATH, config).await?;
    if (300..400).contains(&response.status) {
        return Err(PolicyError::Fetch(format!(
            "https://{host}{WELL_KNOWN_PATH} redirects ({}): not followed (RFC 8461 §3.3)",
            response.status
        )));
    }
    if response.status != 200 {
        return Err(PolicyError::Fetch(format!(
            "https://{host}{WELL_KNOWN_PATH} answered HTTP {}",
            response.status
        )));
    }
    let plain = response.content_type.as_deref().is_some_and(|t| {
        t.split(';')
            .next()
            .is_some_and(|m| m.trim().eq_ignore_ascii_case("text/plain"))
    });
    if !plain {
        return Err(PolicyError::Fetch(format!(
            "https://{host}{WELL_KNOWN_PATH} is served as {}, not text/plain",
            response
                .content_type
                .as_deref()
                .unwrap_or("no Content-Type")
        )));
    }
    let text = std::str::from_utf8(&response.body)
        .map_err(|_| PolicyError::BadPolicy("not UTF-8".to_owned()))?;
    Policy::parse(text)
}

/// A policy as it was fetched: with the record id it was fetched for and when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CachedPolicy {
    /// The `id` of the TXT record when it was fetched.
    pub id: String,
    /// When it was fetched.
    pub fetched: SystemTime,
    /// The policy.
    pub policy: Policy,
}

impl CachedPolicy {
    /// When it stops being usable: `fetched + max_age`.
    pub fn expires(&self) -> SystemTime {
        self.fetched + Duration::from_secs(self.policy.max_age)
    }

    /// Whether it has expired at `now`.
    pub fn is_expired(&self, now: SystemTime) -> bool {
        now >= self.expires()
    }

    /// The cache file: `id:` and `fetched:` (Unix seconds) lines, then the policy.
    fn to_text(&self) -> String {
        let fetched = self
            .fetched
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        format!(
            "id: {}\nfetched: {fetched}\n{}",
            self.id,
            self.policy.to_text()
        )
    }

    fn from_text(text: &str) -> Option<Self> {
        let mut id = None;
        let mut fetched = None;
        for line in text.lines() {
            match line.split_once(':') {
                Some(("id", v)) if id.is_none() => id = Some(v.trim().to_owned()),
                Some(("fetched", v)) if fetched.is_none() => {
                    fetched = v.trim().parse::<u64>().ok();
                }
                _ => {}
            }
        }
        Some(Self {
            id: id?,
            fetched: UNIX_EPOCH + Duration::from_secs(fetched?),
            policy: Policy::parse(text).ok()?,
        })
    }
}

/// What the `_mta-sts` TXT lookup of a domain gave.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecordLookup {
    /// A valid record.
    Found(StsRecord),
    /// No record (or none valid: RFC 8461 §3.1).
    Absent,
    /// The lookup failed (a timeout, SERVFAIL).
    Failed(String),
}

/// Where the policy [`PolicyCache::discover`] returns came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PolicySource {
    /// Fetched now.
    Fetched,
    /// The cache, its id still the record's.
    Cached,
    /// The cache, because the record could not be looked up, is gone, or the fetch
    /// of a new policy failed (RFC 8461 §5.1).
    CachedFallback,
}

/// The policies of domains, in memory and (when it has a directory) one file per
/// domain there, written atomically (a temporary file renamed), so that they survive
/// restarts. Expired policies are discarded.
#[derive(Debug)]
pub struct PolicyCache {
    dir: Option<PathBuf>,
    entries: Mutex<HashMap<String, CachedPolicy>>,
}

impl PolicyCache {
    /// A cache that lives in memory only.
    pub fn in_memory() -> Self {
        Self {
            dir: None,
            entries: Mutex::default(),
        }
    }

    /// A cache persisted under `dir` (created when missing), with the policies found
    /// there that have not expired; expired and unreadable files are removed.
    pub fn open(dir: &Path) -> Result<Self, PolicyError> {
        let cache_error = |source| PolicyError::Cache {
            path: dir.to_owned(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(cache_error)?;
        let now = SystemTime::now();
        let mut entries = HashMap::new();
        for entry in std::fs::read_dir(dir).map_err(cache_error)? {
            let Ok(entry) = entry else { continue };
            let path = entry.path();
            let Some(domain) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".policy"))
                .filter(|d| valid_domain(d))
            else {
                continue;
            };
            match std::fs::read_to_string(&path)
                .ok()
                .and_then(|t| CachedPolicy::from_text(&t))
            {
                Some(cached) if !cached.is_expired(now) => {
                    entries.insert(domain.to_owned(), cached);
                }
                _ => {
                    debug!(path = %path.display(), "expired or unreadable MTA-STS policy removed");
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        Ok(Self {
            dir: Some(dir.to_owned()),
            entries: Mutex::new(entries),
        })
    }

    /// The policies held (not expired at `now`).
    pub fn len(&self, now: SystemTime) -> usize {
        self.lock().values().filter(|c| !c.is_expired(now)).count()
    }

    /// Whether no policy is held.
    pub fn is_empty(&self, now: SystemTime) -> bool {
        self.len(now) == 0
    }

    /// The policy of `domain`, unless it has expired at `now` (then it is discarded).
    pub fn get(&self, domain: &str, now: SystemTime) -> Option<CachedPolicy> {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        let mut entries = self.lock();
        match entries.get(&domain) {
            Some(cached) if !cached.is_expired(now) => Some(cached.clone()),
            Some(_) => {
                entries.remove(&domain);
                drop(entries);
                self.remove_file(&domain);
                None
            }
            None => None,
        }
    }

    /// Keeps `cached` as the policy of `domain`, in memory and on disk. In memory
    /// even when the file cannot be written (the error says so).
    pub fn store(&self, domain: &str, cached: CachedPolicy) -> Result<(), PolicyError> {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        let text = cached.to_text();
        self.lock().insert(domain.clone(), cached);
        let Some(dir) = &self.dir else {
            return Ok(());
        };
        if !valid_domain(&domain) {
            return Ok(());
        }
        let path = dir.join(format!("{domain}.policy"));
        let write = || -> std::io::Result<()> {
            std::fs::create_dir_all(dir)?;
            let mut file = tempfile_in(dir, &domain)?;
            file.1.write_all(text.as_bytes())?;
            file.1.sync_all()?;
            std::fs::rename(&file.0, &path)
        };
        write().map_err(|source| PolicyError::Cache { path, source })
    }

    /// The policy to apply to `domain` now (RFC 8461 §5.1), given what the TXT lookup
    /// said: the cached one while its id is the record's; a fresh one from `fetch`
    /// (then cached) when the id differs or nothing is cached; the cached one (not
    /// expired) when the record cannot be looked up, is gone, or the fetch fails.
    /// `None`: no policy, deliver as without MTA-STS.
    pub async fn discover<F, Fut>(
        &self,
        domain: &str,
        record: RecordLookup,
        fetch: F,
    ) -> Option<(Policy, PolicySource)>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Policy, PolicyError>>,
    {
        let now = SystemTime::now();
        let cached = self.get(domain, now);
        let fallback = |why: &str| {
            if cached.is_some() {
                debug!(domain, why, "using the cached MTA-STS policy");
            }
            cached
                .clone()
                .map(|c| (c.policy, PolicySource::CachedFallback))
        };
        let record = match record {
            RecordLookup::Found(record) => record,
            RecordLookup::Absent => return fallback("no _mta-sts record"),
            RecordLookup::Failed(e) => return fallback(&e),
        };
        if let Some(c) = &cached
            && c.id == record.id
        {
            return Some((c.policy.clone(), PolicySource::Cached));
        }
        match fetch().await {
            Ok(policy) => {
                let entry = CachedPolicy {
                    id: record.id,
                    fetched: SystemTime::now(),
                    policy: policy.clone(),
                };
                if let Err(e) = self.store(domain, entry) {
                    warn!(domain, error = %e, "cannot save the MTA-STS policy");
                }
                Some((policy, PolicySource::Fetched))
            }
            Err(e) => {
                debug!(domain, error = %e, "MTA-STS policy not fetched");
                fallback("the fetch failed")
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, CachedPolicy>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn remove_file(&self, domain: &str) {
        if let Some(dir) = &self.dir
            && valid_domain(domain)
        {
            let _ = std::fs::remove_file(dir.join(format!("{domain}.policy")));
        }
    }
}

/// What kind of policy a [`TlsReportEvent`] is about (RFC 8460 §4.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PolicyType {
    /// An MTA-STS policy.
    Sts,
    /// DANE TLSA records.
    Tlsa,
    /// No policy.
    NoPolicyFound,
}

impl PolicyType {
    /// The word of RFC 8460 §4.3 (`sts`, `tlsa`, `no-policy-found`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sts => "sts",
            Self::Tlsa => "tlsa",
            Self::NoPolicyFound => "no-policy-found",
        }
    }
}

/// Why a TLS session could not be set up as the policy wants (RFC 8460 §4.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ResultType {
    /// The server does not offer STARTTLS.
    StarttlsNotSupported,
    /// The certificate does not name the host.
    CertificateHostMismatch,
    /// The certificate has expired.
    CertificateExpired,
    /// The certificate does not chain to a trusted root.
    CertificateNotTrusted,
    /// Any other failure, such as an MX host the policy does not list.
    ValidationFailure,
    /// The policy could not be fetched over HTTPS because the certificate of
    /// `mta-sts.<domain>` does not verify.
    StsWebpkiInvalid,
    /// The policy could not be fetched.
    StsPolicyFetchError,
    /// The policy is not valid.
    StsPolicyInvalid,
    /// DANE: none of the TLSA records of the MX host is usable (RFC 7672 §3.1).
    TlsaInvalid,
    /// DANE: the validating resolver returned no valid answer (bogus DNSSEC,
    /// SERVFAIL, timeout).
    DnssecInvalid,
    /// DANE required for the MX host, but no DNSSEC-validated TLSA records were found.
    DaneRequired,
}

impl ResultType {
    /// The word of RFC 8460 §4.3.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::StarttlsNotSupported => "starttls-not-supported",
            Self::CertificateHostMismatch => "certificate-host-mismatch",
            Self::CertificateExpired => "certificate-expired",
            Self::CertificateNotTrusted => "certificate-not-trusted",
            Self::ValidationFailure => "validation-failure",
            Self::StsWebpkiInvalid => "sts-webpki-invalid",
            Self::StsPolicyFetchError => "sts-policy-fetch-error",
            Self::StsPolicyInvalid => "sts-policy-invalid",
            Self::TlsaInvalid => "tlsa-invalid",
            Self::DnssecInvalid => "dnssec-invalid",
            Self::DaneRequired => "dane-required",
        }
    }

    /// The result type of a failed connection under a policy: a certificate problem by
    /// its kind, STARTTLS missing or refused, else `validation-failure`.
    pub fn of(error: &crate::ClientError) -> Self {
        let crate::ClientError::Tls { message, source } = error else {
            return Self::ValidationFailure;
        };
        let mut cause: Option<&(dyn std::error::Error + 'static)> = source
            .as_deref()
            .map(|s| s as &(dyn std::error::Error + 'static));
        while let Some(e) = cause {
            if let Some(rustls::Error::InvalidCertificate(c)) = e.downcast_ref::<rustls::Error>() {
                use rustls::CertificateError as C;
                return match c {
                    C::NotValidForName | C::NotValidForNameContext { .. } => {
                        Self::CertificateHostMismatch
                    }
                    C::Expired | C::ExpiredContext { .. } => Self::CertificateExpired,
                    _ => Self::CertificateNotTrusted,
                };
            }
            cause = match e.downcast_ref::<std::io::Error>() {
                Some(io) => io
                    .get_ref()
                    .map(|i| i as &(dyn std::error::Error + 'static)),
                None => e.source(),
            };
        }
        if message.contains("STARTTLS") {
            Self::StarttlsNotSupported
        } else {
            Self::ValidationFailure
        }
    }
}

/// One failure to set up TLS as a policy wants, for TLS reporting (RFC 8460): what a
/// report's `failure-details` are made of. Recorded in every mode (in `testing` the
/// mail was still delivered, in `enforce` it waits).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsReportEvent {
    /// The recipient domain whose policy it is.
    pub domain: String,
    /// The kind of policy.
    pub policy_type: PolicyType,
    /// The policy's mode (`enforce` or `testing`); `None` when no policy could be
    /// fetched.
    pub mode: Option<Mode>,
    /// What failed.
    pub result_type: ResultType,
    /// The MX host tried (empty when the failure is not about one host).
    pub mx_host: String,
    /// Its address, when a connection was made (`receiving-ip`).
    pub receiving_ip: Option<IpAddr>,
    /// Our own address on that connection (`sending-mta-ip`), when one was made.
    pub sending_mta_ip: Option<IpAddr>,
    /// The name the server announced in its greeting (`receiving-mx-helo`), when the
    /// failure came after it.
    pub receiving_mx_helo: Option<String>,
    /// The failure, for people.
    pub detail: String,
    /// When.
    pub at: SystemTime,
}

impl TlsReportEvent {
    /// The event with what `session` knows of the connection the failure happened on
    /// (its `receiving-ip`, `sending-mta-ip` and `receiving-mx-helo`; each only when
    /// known, the others kept).
    ///
    /// ```
    /// use std::net::IpAddr;
    /// use smtp_client::mta_sts::{PolicyType, ReportedSession, ResultType, TlsReportEvent};
    ///
    /// let event = TlsReportEvent {
    ///     domain: "example.org".into(),
    ///     policy_type: PolicyType::Sts,
    ///     mode: None,
    ///     result_type: ResultType::CertificateExpired,
    ///     mx_host: "mx.example.org".into(),
    ///     receiving_ip: None,
    ///     sending_mta_ip: None,
    ///     receiving_mx_helo: None,
    ///     detail: "the certificate has expired".into(),
    ///     at: std::time::SystemTime::now(),
    /// };
    /// let session = ReportedSession {
    ///     sending_mta_ip: Some("192.0.2.1".parse().unwrap()),
    ///     receiving_ip: Some("198.51.100.7".parse().unwrap()),
    ///     receiving_mx_helo: Some("mx7.example.org".into()),
    /// };
    /// let event = event.in_session(&session);
    /// assert_eq!(event.receiving_ip, Some("198.51.100.7".parse::<IpAddr>().unwrap()));
    /// assert_eq!(event.receiving_mx_helo.as_deref(), Some("mx7.example.org"));
    /// ```
    #[must_use]
    pub fn in_session(mut self, session: &ReportedSession) -> Self {
        self.receiving_ip = session.receiving_ip.or(self.receiving_ip);
        self.sending_mta_ip = session.sending_mta_ip.or(self.sending_mta_ip);
        if session.receiving_mx_helo.is_some() {
            self.receiving_mx_helo
                .clone_from(&session.receiving_mx_helo);
        }
        self
    }
}

/// What a TLS report says of the connection a failure happened on (RFC 8460 §4.4
/// `failure-details`): filled in by [`crate::Session::open_reporting`] as the last
/// attempt gets along, so that a failure can be reported with it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReportedSession {
    /// Our address on the connection (`sending-mta-ip`): the socket's local address.
    pub sending_mta_ip: Option<IpAddr>,
    /// The server's address (`receiving-ip`).
    pub receiving_ip: Option<IpAddr>,
    /// The first word of the server's greeting, the name it announces
    /// (`receiving-mx-helo`); `None` before the greeting.
    pub receiving_mx_helo: Option<String>,
}

/// Where [`TlsReportEvent`]s go: a TLS-RPT aggregator, a counter, a log.
///
/// ```
/// use std::sync::Mutex;
/// use smtp_client::mta_sts::{TlsReportEvent, TlsReportSink};
///
/// #[derive(Debug, Default)]
/// struct Collect(Mutex<Vec<TlsReportEvent>>);
/// impl TlsReportSink for Collect {
///     fn record(&self, event: TlsReportEvent) {
///         self.0.lock().unwrap().push(event);
///     }
/// }
/// ```
pub trait TlsReportSink: Send + Sync + std::fmt::Debug {
    /// Records one event. Called on the delivery path: it must not block for long.
    fn record(&self, event: TlsReportEvent);

    /// Records one session to `domain`'s MX whose TLS was set up as its policy of
    /// `policy_type` wants (RFC 8460 §4.4 `total-successful-session-count`), and the
    /// policy that was applied. The default does nothing.
    fn success(&self, domain: &str, policy_type: PolicyType, policy: &PolicySummary) {
        let _ = (domain, policy_type, policy);
    }

    /// Tells which policy of `domain` was applied (for the `policy-string` and
    /// `mx-host` of a report on failures under it). The default does nothing.
    fn applied(&self, domain: &str, policy_type: PolicyType, policy: &PolicySummary) {
        let _ = (domain, policy_type, policy);
    }
}

/// What a TLS report says of an applied policy (RFC 8460 §4.4 `policy-string` and
/// `mx-host`).
///
/// ```
/// use smtp_client::mta_sts::{Policy, PolicySummary};
///
/// let policy = Policy::parse("version: STSv1\nmode: testing\nmx: mx.example.com\nmax_age: 86400\n").unwrap();
/// let summary = PolicySummary::of_sts(&policy);
/// assert_eq!(summary.policy_string[1], "mode: testing");
/// assert_eq!(summary.mx_host, ["mx.example.com"]);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicySummary {
    /// The policy, one string per line (an MTA-STS policy file's lines, or TLSA
    /// records in presentation format).
    pub policy_string: Vec<String>,
    /// The MX host patterns of an MTA-STS policy (empty for others).
    pub mx_host: Vec<String>,
}

impl PolicySummary {
    /// The summary of an MTA-STS policy: its lines as [`Policy::to_text`] writes them.
    pub fn of_sts(policy: &Policy) -> Self {
        Self {
            policy_string: policy.to_text().lines().map(str::to_owned).collect(),
            mx_host: policy.mx.clone(),
        }
    }
}

/// Whether `domain` can name a cache file: letters, digits, `-`, `_` and dots, not
/// starting with a dot.
fn valid_domain(domain: &str) -> bool {
    !domain.is_empty()
        && domain.len() <= 253
        && !domain.starts_with('.')
        && domain
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// A new file in `dir` for `domain`'s policy, to be renamed into place.
fn tempfile_in(dir: &Path, domain: &str) -> std::io::Result<(PathBuf, std::fs::File)> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = dir.join(format!(".{domain}.{}.{n}.tmp", std::process::id()));
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)?;
    Ok((path, file))
}

/// The `tag=value` pairs of a record, tags in lower case (RFC 8461 §3.1 uses the
/// DKIM syntax).
fn tags(record: &str) -> Vec<(String, String)> {
    record
        .split(';')
        .filter_map(|part| {
            let (k, v) = part.split_once('=')?;
            Some((k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        })
        .collect()
}

fn tag<'a>(tags: &'a [(String, String)], name: &str) -> Option<&'a str> {
    tags.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Whether `received` holds a whole response whose length its header gives (`None`:
/// the header is not complete yet, or the body runs to the end of the connection).
fn complete(received: &[u8]) -> Option<bool> {
    let end = find(received, b"\r\n\r\n")?;
    let header = String::from_utf8_lossy(&received[..end]);
    let length = field(&header, "content-length")?.parse::<usize>().ok()?;
    Some(received.len() >= end + 4 + length)
}

fn parse_response(received: &[u8]) -> Result<HttpResponse, PolicyError> {
    let fail = |s: String| Err(PolicyError::Fetch(s));
    let Some(end) = find(received, b"\r\n\r\n") else {
        return fail(if received.len() > MAX_HEADER {
            "the response header is too long".to_owned()
        } else {
            "no complete HTTP response".to_owned()
        });
    };
    let header = String::from_utf8_lossy(&received[..end]);
    let status_line = header.lines().next().unwrap_or_default();
    let mut words = status_line.split_ascii_whitespace();
    let status = match (words.next(), words.next().map(str::parse::<u16>)) {
        (Some(version), Some(Ok(code))) if version.starts_with("HTTP/1.") => code,
        _ => return fail(format!("not an HTTP response: {status_line:?}")),
    };
    let raw = &received[end + 4..];
    let chunked = field(&header, "transfer-encoding")
        .is_some_and(|t| t.to_ascii_lowercase().contains("chunked"));
    let body = if chunked {
        unchunk(raw)?
    } else {
        match field(&header, "content-length").map(|l| l.parse::<usize>()) {
            Some(Ok(length)) if length > MAX_POLICY_SIZE => {
                return fail(format!(
                    "the policy is {length} bytes, over the 64 KiB senders read"
                ));
            }
            Some(Ok(length)) if raw.len() < length => {
                return fail(format!(
                    "the connection closed after {} of {length} bytes",
                    raw.len()
                ));
            }
            Some(Ok(length)) => raw[..length].to_vec(),
            _ => raw.to_vec(),
        }
    };
    if body.len() > MAX_POLICY_SIZE {
        return fail("the policy is over the 64 KiB senders read".to_owned());
    }
    Ok(HttpResponse {
        status,
        content_type: field(&header, "content-type").map(str::to_owned),
        location: field(&header, "location").map(str::to_owned),
        body,
    })
}

/// The value of a header field (the first of that name).
fn field<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.lines().skip(1).find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn unchunk(mut raw: &[u8]) -> Result<Vec<u8>, PolicyError> {
    let bad = || PolicyError::Fetch("bad chunked encoding".to_owned());
    let mut body = Vec::new();
    loop {
        let line_end = find(raw, b"\r\n").ok_or_else(bad)?;
        let size_text = String::from_utf8_lossy(&raw[..line_end]);
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| bad())?;
        raw = &raw[line_end + 2..];
        if size == 0 {
            return Ok(body);
        }
        if size > MAX_POLICY_SIZE || body.len() + size > MAX_POLICY_SIZE {
            return Err(PolicyError::Fetch(
                "the policy is over the 64 KiB senders read".to_owned(),
            ));
        }
        let chunk = raw.get(..size).ok_or_else(bad)?;
        body.extend_from_slice(chunk);
        raw = raw.get(size + 2..).ok_or_else(bad)?;
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The examples of RFC 8461 §3.1 and §3.2.
    #[test]
    fn records_are_parsed_as_the_rfc_shows() {
        let r = StsRecord::select(&["v=STSv1; id=20160831085700Z;".to_owned()]).unwrap();
        assert_eq!(r.unwrap().id, "20160831085700Z");
        // Other TXT records at the name are discarded.
        let r = StsRecord::select(&[
            "some-verification=1".to_owned(),
            "v=STSv1; id=abc".to_owned(),
        ])
        .unwrap();
        assert_eq!(r.unwrap().id, "abc");
        assert_eq!(
            StsRecord::select(&["v=spf1 -all".to_owned()]).unwrap(),
            None
        );
        assert_eq!(StsRecord::select(&[]).unwrap(), None);
        // Two records: no policy.
        assert!(
            StsRecord::select(&["v=STSv1; id=a".to_owned(), "v=STSv1; id=b".to_owned()]).is_err()
        );
        // v= must be first; id is required and alphanumeric, 1 to 32.
        assert!(StsRecord::parse("id=abc; v=STSv1").is_err());
        assert!(StsRecord::parse("v=STSv1;").is_err());
        assert!(StsRecord::parse("v=STSv1; id=").is_err());
        assert!(StsRecord::parse(&format!("v=STSv1; id={}", "a".repeat(33))).is_err());
        assert!(StsRecord::parse("v=STSv1; id=a b").is_err());
        assert_eq!(StsRecord::parse("v=STSv1; id=x; ext=1").unwrap().id, "x");
    }

    #[test]
    fn policies_are_parsed_and_checked() {
        let p = Policy::parse(
            "version: STSv1\nmode: enforce\nmx: mail.example.com\nmx: *.example.net\nmx: backupmx.example.com\nmax_age: 604800\n",
        )
        .unwrap();
        assert_eq!(p.mode, Mode::Enforce);
        assert_eq!(
            p.mx,
            ["mail.example.com", "*.example.net", "backupmx.example.com"]
        );
        assert_eq!(p.max_age, 604_800);
        // CRLF lines, unknown keys, repeated keys (the first counts), spaces.
        let p = Policy::parse(
            "version: STSv1\r\nmode:testing\r\nfuture: x\r\nmode: enforce\r\nmx:  a.example\r\nmax_age: 0\r\n",
        )
        .unwrap();
        assert_eq!(
            (p.mode, p.max_age, p.mx.as_slice()),
            (Mode::Testing, 0, &["a.example".to_owned()][..])
        );
        // mode none needs no mx.
        assert_eq!(
            Policy::parse("version: STSv1\nmode: none\nmax_age: 1\n")
                .unwrap()
                .mode,
            Mode::None
        );
        for bad in [
            "mode: enforce\nmx: a\nmax_age: 5\n",
            "version: STSv2\nmode: enforce\nmx: a\nmax_age: 5\n",
            "version: STSv1\nmode: strict\nmx: a\nmax_age: 5\n",
            "version: STSv1\nmx: a\nmax_age: 5\n",
            "version: STSv1\nmode: enforce\nmax_age: 5\n",
            "version: STSv1\nmode: enforce\nmx: a\n",
            "version: STSv1\nmode: enforce\nmx: a\nmax_age: 31557601\n",
            "version: STSv1\nmode: enforce\nmx: a\nmax_age: -1\n",
            "version: STSv1\nmode: enforce\nmx: a\nmax_age: 99999999999999999999\n",
        ] {
            assert!(Policy::parse(bad).is_err(), "{bad:?}");
        }
        let p = Policy::parse("version: STSv1\nmode: enforce\nmx: a\nmax_age: 31557600\n").unwrap();
        assert_eq!(Policy::parse(&p.to_text()).unwrap(), p);
    }

    /// RFC 8461 §4.1: a wildcard matches exactly one label.
    #[test]
    fn mx_patterns_match_one_label() {
        assert!(mx_matches("mail.example.com", "MAIL.example.com."));
        assert!(mx_matches("*.example.com", "mx1.example.com"));
        assert!(!mx_matches("*.example.com", "foo.mx1.example.com"));
        assert!(!mx_matches("*.example.com", "example.com"));
        assert!(!mx_matches("*.example.com", ".example.com"));
        assert!(!mx_matches("mail.example.com", "mail2.example.com"));
        assert!(!mx_matches("", ""));
    }

    #[test]
    fn responses_are_parsed() {
        let r = parse_response(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello",
        )
        .unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"hello"[..]));
        assert_eq!(r.content_type.as_deref(), Some("text/plain"));
        let r = parse_response(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhel\r\n2;x=y\r\nlo\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!(r.body, b"hello");
        let r = parse_response(b"HTTP/1.0 301 Moved\r\nLocation: https://x/\r\n\r\n").unwrap();
        assert_eq!((r.status, r.location.as_deref()), (301, Some("https://x/")));
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello").is_err());
        assert!(parse_response(b"SSH-2.0-OpenSSH\r\n\r\n").is_err());
        let huge = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
            MAX_POLICY_SIZE + 1
        );
        assert!(parse_response(huge.as_bytes()).is_err());
        assert_eq!(
            complete(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nh"),
            Some(false)
        );
        assert_eq!(
            complete(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"),
            Some(true)
        );
    }

    fn policy(mode: Mode, mx: &str) -> Policy {
        Policy {
            mode,
            mx: vec![mx.to_owned()],
            max_age: 3600,
        }
    }

    fn found(id: &str) -> RecordLookup {
        RecordLookup::Found(StsRecord { id: id.to_owned() })
    }

    /// RFC 8461 §5.1 over a cache on disk: fetched once per id, the cached policy when
    /// the record or the fetch fails, reloaded after a "restart", expired ones dropped.
    #[tokio::test]
    async fn the_cache_follows_the_record_id_and_survives_a_restart() {
        let dir = tempfile_dir();
        let cache = PolicyCache::open(&dir).unwrap();
        let a = policy(Mode::Enforce, "a.example");
        let b = policy(Mode::Testing, "b.example");
        // Nothing cached, the fetch fails: no policy.
        let got = cache
            .discover("example.org", found("1"), || async {
                Err(PolicyError::Fetch("down".into()))
            })
            .await;
        assert_eq!(got, None);
        let got = cache
            .discover("example.org", found("1"), || async { Ok(a.clone()) })
            .await;
        assert_eq!(got, Some((a.clone(), PolicySource::Fetched)));
        // Same id: not fetched again.
        let got = cache
            .discover("example.org", found("1"), || async {
                unreachable!("fetched twice")
            })
            .await;
        assert_eq!(got, Some((a.clone(), PolicySource::Cached)));
        // A lookup failure, no record, a failed fetch of a new id: the cached one.
        for record in [
            RecordLookup::Failed("SERVFAIL".into()),
            RecordLookup::Absent,
            found("2"),
        ] {
            let got = cache
                .discover("example.org", record, || async {
                    Err(PolicyError::Fetch("down".into()))
                })
                .await;
            assert_eq!(got, Some((a.clone(), PolicySource::CachedFallback)));
        }
        // Restart: the policy is read back from disk.
        drop(cache);
        let cache = PolicyCache::open(&dir).unwrap();
        let got = cache
            .discover("Example.ORG.", RecordLookup::Failed("x".into()), || async {
                unreachable!()
            })
            .await;
        assert_eq!(got, Some((a.clone(), PolicySource::CachedFallback)));
        // A new id: fetched again, and the new one is what a restart finds.
        let got = cache
            .discover("example.org", found("2"), || async { Ok(b.clone()) })
            .await;
        assert_eq!(got, Some((b.clone(), PolicySource::Fetched)));
        drop(cache);
        let cache = PolicyCache::open(&dir).unwrap();
        let got = cache.get("example.org", SystemTime::now()).unwrap();
        assert_eq!((got.id.as_str(), &got.policy), ("2", &b));
        // Expired: discarded, and its file removed.
        let old = CachedPolicy {
            id: "3".into(),
            fetched: SystemTime::now() - Duration::from_secs(7200),
            policy: a.clone(),
        };
        cache.store("old.example", old).unwrap();
        assert!(dir.join("old.example.policy").exists());
        assert_eq!(cache.get("old.example", SystemTime::now()), None);
        assert!(!dir.join("old.example.policy").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A failure is reported with the connection it happened on: our source address,
    /// the server's address and the name in its greeting.
    #[tokio::test]
    async fn a_failed_open_tells_where_it_got() {
        use tokio::io::{AsyncBufReadExt, BufReader};
        let listener = tokio::net::TcpListener::bind("127.0.0.2:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let (read, mut write) = tcp.into_split();
            let mut read = BufReader::new(read);
            write
                .write_all(b"220 mx7.example.test ESMTP\r\n")
                .await
                .unwrap();
            let mut line = String::new();
            while read.read_line(&mut line).await.unwrap_or(0) > 0 {
                let reply: &[u8] = if line.starts_with("EHLO") {
                    b"250 mx7.example.test\r\n"
                } else {
                    b"221 bye\r\n"
                };
                write.write_all(reply).await.unwrap();
                line.clear();
            }
        });
        let mut config =
            crate::OutboundConfig::new("client.test", crate::TlsConfigs::new(Vec::new()).unwrap());
        config.port = port;
        config.tls = crate::TlsPolicy::Required;
        config.source = Some("127.0.0.3".parse().unwrap());
        let mut reported = ReportedSession::default();
        let addresses = ["127.0.0.2".parse().unwrap()];
        let err =
            crate::Session::open_reporting("mx7.example.test", &addresses, &config, &mut reported)
                .await
                .unwrap_err();
        assert_eq!(
            ResultType::of(&err),
            ResultType::StarttlsNotSupported,
            "{err}"
        );
        assert_eq!(
            reported,
            ReportedSession {
                sending_mta_ip: Some("127.0.0.3".parse().unwrap()),
                receiving_ip: Some("127.0.0.2".parse().unwrap()),
                receiving_mx_helo: Some("mx7.example.test".to_owned()),
            }
        );
    }

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "mta-sts-test-{}-{}",
            std::process::id(),
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
