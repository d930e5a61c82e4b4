//! The checks: SPF for a transaction, DKIM, ARC and DMARC for a message.
//!
//! SPF is our own evaluator (the private `spf` module); for DKIM, ARC and DMARC mail-auth does the work; this module turns its outputs into the values of
//! [`crate::results`] and corrects one known defect of mail-auth 0.13.3: relaxed body
//! canonicalization keeps whitespace-only lines at the end of the body
//! (`"Hello!\r\n  \r\n\r\n"` becomes `"Hello!\r\n\r\n"`, where RFC 6376 §3.4.4 gives
//! `"Hello!\r\n"`). When a relaxed-body signature fails on its body hash and the body
//! ends in such lines, the message is verified again with those lines removed, which
//! canonicalizes the same under the RFC and correctly under mail-auth. Fixed upstream in
//! mail-auth 0.15; remove `corrected_relaxed_body` with that upgrade.

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_resolver::TokioResolver;
use mail_auth::dkim::{Canonicalization, DkimError};
use mail_auth::{
    ArcOutput, AuthenticatedMessage, AuthenticationResults, DkimOutput, DmarcOutput,
    MessageAuthenticator, Parameters, ResolverCache, SpfOutput, Txt,
    dmarc::verify::DmarcParameters,
};

use crate::cache::TtlCache;
use crate::results::{
    ArcResult, ArcVerdict, AuthReport, DkimResult, DkimVerdict, DmarcPolicy, DmarcResult,
    DmarcVerdict, SpfCheck, SpfResult, SpfVerdict,
};
use crate::spf::{Request, SpfDns, SpfLimits, check_host};

/// Which message checks to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MessageChecks {
    /// DKIM signatures.
    pub dkim: bool,
    /// The ARC chain.
    pub arc: bool,
    /// DMARC (runs DKIM too, since it needs the signatures).
    pub dmarc: bool,
}

impl MessageChecks {
    /// DKIM, ARC and DMARC.
    pub const ALL: Self = Self {
        dkim: true,
        arc: true,
        dmarc: true,
    };
}

/// Runs sender-authentication checks against DNS.
///
/// ```no_run
/// # async fn example(resolver: hickory_resolver::TokioResolver, raw: &[u8]) {
/// use auth_checks::{MessageChecks, Verifier};
/// let verifier = Verifier::new(resolver, "mx.example.net");
/// let ip = "192.0.2.1".parse().unwrap();
/// let spf = verifier.spf(ip, "mail.example.org", "alice@example.org").await;
/// let report = verifier.check_message(raw, Some(&spf), MessageChecks::ALL).await;
/// println!("Authentication-Results: {}", report.header_value("mx.example.net"));
/// # }
/// ```
#[derive(Clone)]
pub struct Verifier {
    auth: Arc<MessageAuthenticator>,
    spf_dns: SpfDns,
    spf_limits: SpfLimits,
    hostname: String,
    failures: Arc<Failures>,
    txt: Arc<TxtCache>,
    /// The `pct` tags of DMARC records by name (see [`Verifier::dmarc_pct`]).
    pcts: Arc<TtlCache<Box<str>, Option<u8>>>,
}

/// How long a domain whose lookups failed (a DNS error, or no answer in time) is
/// remembered: checks that need it again within this time are `temperror` at once,
/// instead of each waiting for DNS again.
pub const NEGATIVE_CACHE_TTL: Duration = Duration::from_secs(30);

/// Most domains remembered at once; beyond, the oldest are forgotten.
const NEGATIVE_CACHE_SIZE: usize = 10_000;

/// The short negative cache: domains whose lookups failed, and when.
#[derive(Debug, Default)]
struct Failures(Mutex<HashMap<String, Instant>>);

impl Failures {
    fn recent(&self, domain: &str) -> bool {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&domain.to_ascii_lowercase())
            .is_some_and(|at| at.elapsed() < NEGATIVE_CACHE_TTL)
    }

    fn note(&self, domain: &str) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= NEGATIVE_CACHE_SIZE {
            map.retain(|_, at| at.elapsed() < NEGATIVE_CACHE_TTL);
            if map.len() >= NEGATIVE_CACHE_SIZE {
                map.clear();
            }
        }
        map.insert(domain.to_ascii_lowercase(), Instant::now());
    }
}

/// Most parsed TXT records (DKIM keys, DMARC and ARC policies) kept at once.
const TXT_CACHE_SIZE: usize = 10_000;

/// TXT records as mail-auth parsed them, until their TTL ends: a DKIM key is then
/// parsed once per TTL, not once per message (with its RSA key's Montgomery setup,
/// which costs about what a verification does).
#[derive(Default)]
struct TxtCache(Mutex<HashMap<Box<str>, (Txt, Instant)>>);

impl ResolverCache<Box<str>, Txt> for TxtCache {
    fn get<Q>(&self, name: &Q) -> Option<Txt>
    where
        Box<str>: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.get(name)
            .filter(|(_, until)| *until > Instant::now())
            .map(|(txt, _)| txt.clone())
    }

    fn remove<Q>(&self, name: &Q) -> Option<Txt>
    where
        Box<str>: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.remove(name).map(|(txt, _)| txt)
    }

    fn insert(&self, key: Box<str>, value: Txt, valid_until: Instant) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= TXT_CACHE_SIZE {
            let now = Instant::now();
            map.retain(|_, (_, until)| *until > now);
            if map.len() >= TXT_CACHE_SIZE {
                map.clear();
            }
        }
        let valid_until = valid_until.min(Instant::now() + crate::cache::MAX_TTL);
        map.insert(key, (value, valid_until));
    }
}

/// The TXT cache of one DMARC check: the shared [`TxtCache`], over answers that count
/// for this check only (DNS errors, negative answers without a negative TTL), so that
/// mail-auth's tree walk finds every answer [`Verifier::prewalk_dmarc`] got, and asks
/// nothing twice.
struct WalkCache<'a> {
    shared: &'a TxtCache,
    local: Mutex<HashMap<Box<str>, Txt>>,
}

impl<'a> WalkCache<'a> {
    fn new(shared: &'a TxtCache) -> Self {
        Self {
            shared,
            local: Mutex::default(),
        }
    }

    fn note_local(&self, key: Box<str>, value: Txt) {
        let mut map = self.local.lock().unwrap_or_else(|e| e.into_inner());
        map.insert(key, value);
    }
}

impl ResolverCache<Box<str>, Txt> for WalkCache<'_> {
    fn get<Q>(&self, name: &Q) -> Option<Txt>
    where
        Box<str>: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        let local = {
            let map = self.local.lock().unwrap_or_else(|e| e.into_inner());
            map.get(name).cloned()
        };
        local.or_else(|| self.shared.get(name))
    }

    fn remove<Q>(&self, name: &Q) -> Option<Txt>
    where
        Box<str>: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        self.shared.remove(name)
    }

    fn insert(&self, key: Box<str>, value: Txt, valid_until: Instant) {
        self.shared.insert(key, value, valid_until);
    }
}

/// Why a check is `temperror` without its lookups.
const TIMED_OUT: &str = "no DNS answer within the time budget";
const FAILED_RECENTLY: &str = "a DNS lookup for the domain failed moments ago";

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Verifier({})", self.hostname)
    }
}

impl Verifier {
    /// Checks through `resolver` (share the delivery resolver so both use one cache);
    /// `hostname` is our name, for SPF's `%{r}` macro.
    pub fn new(resolver: TokioResolver, hostname: impl Into<String>) -> Self {
        Self {
            spf_dns: SpfDns::new(resolver.clone()),
            auth: Arc::new(MessageAuthenticator(resolver)),
            spf_limits: SpfLimits::default(),
            hostname: hostname.into(),
            failures: Arc::default(),
            txt: Arc::default(),
            pcts: Arc::new(TtlCache::new(TXT_CACHE_SIZE)),
        }
    }

    /// The same checks with other SPF processing limits (RFC 7208 §4.6.4; the
    /// defaults are the RFC's).
    pub fn with_spf_limits(mut self, limits: SpfLimits) -> Self {
        self.spf_limits = limits;
        self
    }

    /// The SPF processing limits.
    pub fn spf_limits(&self) -> &SpfLimits {
        &self.spf_limits
    }

    /// The name servers `resolver` asks (as `dns_mx::MxConfig::nameservers`), for the
    /// one SPF answer hickory cannot decode: a TXT answer with a record of no string
    /// (RDLENGTH 0), which SPF asks again of these servers itself and reads record by
    /// record. By default, the system's (`/etc/resolv.conf`), which is what a resolver
    /// built without name servers asks.
    pub fn with_nameservers(mut self, servers: Vec<std::net::SocketAddr>) -> Self {
        self.spf_dns.set_servers(servers);
        self
    }

    /// Our host name.
    pub fn hostname(&self) -> &str {
        &self.hostname
    }

    /// The resolver the checks ask (shared with the DNS defences of [`crate::dnsbl`]
    /// and [`crate::rdns`]).
    pub(crate) fn resolver(&self) -> &TokioResolver {
        &self.auth.0
    }

    /// Whether a lookup for `name` failed less than [`NEGATIVE_CACHE_TTL`] ago (the
    /// negative cache the DNS defences share with the checks).
    pub(crate) fn failed_recently(&self, name: &str) -> bool {
        self.failures.recent(name)
    }

    /// Remembers that a lookup for `name` failed (a DNS error, or no answer in time).
    pub(crate) fn note_failure(&self, name: &str) {
        self.failures.note(name);
    }

    /// SPF for a transaction (RFC 7208): the HELO identity, then the MAIL FROM
    /// identity; `mail_from` empty for the null sender, which is checked as
    /// `postmaster@<helo>`.
    ///
    /// Before evaluation (RFC 7208 §4.3, §5): an IPv4-mapped IPv6 address is checked
    /// (and recorded) as IPv4; a malformed domain (an empty label, a label over 63
    /// octets, a name over 253) is `none` without a lookup; a sender with no local part
    /// is checked as `postmaster@<domain>`. The evaluation itself is ours
    /// (the private `spf` module), within the [`SpfLimits`] of this verifier.
    pub async fn spf(&self, ip: IpAddr, helo: &str, mail_from: &str) -> SpfCheck {
        self.spf_until(ip, helo, mail_from, None).await
    }

    /// [`Verifier::spf`] that gives up at `deadline`: an identity not decided by then is
    /// `temperror`. A domain whose lookups failed (a DNS error or the deadline) is
    /// remembered for [`NEGATIVE_CACHE_TTL`], and is `temperror` at once meanwhile.
    pub async fn spf_until(
        &self,
        ip: IpAddr,
        helo: &str,
        mail_from: &str,
        deadline: Option<tokio::time::Instant>,
    ) -> SpfCheck {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            IpAddr::V4(_) => ip,
        };
        let helo_name = helo.trim_end_matches('.').to_ascii_lowercase();
        let helo_verdict = if is_domain(&helo_name) {
            let request = Request {
                ip,
                local: "postmaster",
                domain: &helo_name,
                helo: &helo_name,
                receiver: &self.hostname,
            };
            let identity = format!("postmaster@{helo_name}");
            Some(self.bounded_spf(&request, identity, deadline).await)
        } else {
            None
        };
        let null_sender = mail_from.is_empty();
        let mail_from_verdict = if null_sender {
            helo_verdict.clone().unwrap_or_else(|| SpfVerdict {
                result: SpfResult::None,
                identity: format!("postmaster@{helo_name}"),
                explanation: None,
            })
        } else {
            match mail_from.rsplit_once('@') {
                Some((local, domain)) if is_domain(domain.trim_end_matches('.')) => {
                    let request = Request {
                        ip,
                        // RFC 7208 §4.3: no local part is "postmaster".
                        local: if local.is_empty() {
                            "postmaster"
                        } else {
                            local
                        },
                        domain: domain.trim_end_matches('.'),
                        helo: &helo_name,
                        receiver: &self.hostname,
                    };
                    self.bounded_spf(&request, mail_from.to_owned(), deadline)
                        .await
                }
                _ => SpfVerdict {
                    result: SpfResult::None,
                    identity: mail_from.to_owned(),
                    explanation: None,
                },
            }
        };
        SpfCheck {
            ip,
            helo_name,
            helo: helo_verdict,
            mail_from: mail_from_verdict,
            null_sender,
        }
    }

    /// One SPF identity, within `deadline`, through the negative cache.
    async fn bounded_spf(
        &self,
        request: &Request<'_>,
        identity: String,
        deadline: Option<tokio::time::Instant>,
    ) -> SpfVerdict {
        let temperror = |why: &str| SpfVerdict {
            result: SpfResult::TempError,
            identity: identity.clone(),
            explanation: Some(why.to_owned()),
        };
        if self.failures.recent(request.domain) {
            return temperror(FAILED_RECENTLY);
        }
        let check = check_host(&self.spf_dns, &self.spf_limits, request);
        let Some(outcome) = until(deadline, check).await else {
            self.failures.note(request.domain);
            return temperror(TIMED_OUT);
        };
        if outcome.result == SpfResult::TempError {
            self.failures.note(request.domain);
        }
        SpfVerdict {
            result: outcome.result,
            identity,
            // RFC 7208 §6.2: only US-ASCII explanations are kept (checked in spf::eval).
            explanation: outcome.explanation,
        }
    }

    /// DKIM, ARC and DMARC for a message (`checks` says which), with the
    /// transaction's SPF verdict (DMARC needs it; without it, SPF does not align).
    pub async fn check_message(
        &self,
        message: &[u8],
        spf: Option<&SpfCheck>,
        checks: MessageChecks,
    ) -> AuthReport {
        self.check_and_seal(message, spf, checks, None, None)
            .await
            .0
    }

    /// As [`check_message`](Self::check_message), and adds an ARC set made with
    /// `sealer` when the chain can be extended (none, or a valid one): the returned
    /// header block goes on top of the message. What is not decided by `deadline` is
    /// `temperror` (no seal then); so is everything at once when every domain the checks
    /// need (the From domains, the signing domains) failed moments ago.
    pub(crate) async fn check_and_seal(
        &self,
        raw: &[u8],
        spf: Option<&SpfCheck>,
        checks: MessageChecks,
        sealer: Option<&crate::sign::ArcSigner>,
        deadline: Option<tokio::time::Instant>,
    ) -> (AuthReport, Option<String>) {
        let Some(message) = AuthenticatedMessage::parse(raw) else {
            return (unparsed_report(spf, checks), None);
        };
        let mut domains: Vec<String> = message
            .from
            .iter()
            .filter_map(|a| a.rsplit_once('@'))
            .map(|(_, d)| d.to_ascii_lowercase())
            .chain(
                message
                    .dkim_headers
                    .iter()
                    .map(|h| h.header.d.to_ascii_lowercase()),
            )
            .collect();
        domains.sort_unstable();
        domains.dedup();
        if !domains.is_empty() && domains.iter().all(|d| self.failures.recent(d)) {
            return (
                temperror_report(&message, spf, checks, FAILED_RECENTLY),
                None,
            );
        }
        let Some((report, seal)) =
            until(deadline, self.run_checks(&message, spf, checks, sealer)).await
        else {
            for domain in &domains {
                self.failures.note(domain);
            }
            return (temperror_report(&message, spf, checks, TIMED_OUT), None);
        };
        for verdict in report.dkim.iter().flatten() {
            if let (DkimResult::TempError, Some(d)) = (verdict.result, &verdict.domain) {
                self.failures.note(d);
            }
        }
        if let Some(dmarc) = report
            .dmarc
            .as_ref()
            .filter(|d| d.result == DmarcResult::TempError)
        {
            self.failures.note(&dmarc.header_from);
        }
        (report, seal)
    }

    /// The checks of a parsed message, and the seal.
    async fn run_checks<'x>(
        &self,
        message: &'x AuthenticatedMessage<'x>,
        spf: Option<&SpfCheck>,
        checks: MessageChecks,
        sealer: Option<&crate::sign::ArcSigner>,
    ) -> (AuthReport, Option<String>) {
        let mut report = AuthReport {
            spf: spf.cloned(),
            ..AuthReport::default()
        };
        // Declared before the outputs that may borrow from them.
        let fixed_raw: Option<Vec<u8>>;
        let fixed: Option<AuthenticatedMessage<'_>>;
        let mut dkim_outputs: Vec<DkimOutput<'_>> = Vec::new();
        let mut corrected = Vec::new();
        if checks.dkim || checks.dmarc {
            dkim_outputs = self
                .auth
                .verify_dkim(Parameters::new(message).with_txt_cache(self.txt.as_ref()))
                .await;
            // The corrected copy is made (and parsed) only for a relaxed-body signature
            // that failed on its body hash.
            {
                let failed = |o: &DkimOutput<'_>| {
                    matches!(
                        o.result(),
                        mail_auth::DkimResult::Neutral(mail_auth::Error::Dkim(
                            DkimError::FailedBodyHashMatch
                        )) | mail_auth::DkimResult::Fail(mail_auth::Error::Dkim(
                            DkimError::FailedBodyHashMatch
                        ))
                    ) && o
                        .signature()
                        .is_some_and(|s| s.cb == Canonicalization::Relaxed)
                };
                fixed_raw = if dkim_outputs.iter().any(failed) {
                    corrected_relaxed_body(message)
                } else {
                    None
                };
                fixed = fixed_raw.as_deref().and_then(AuthenticatedMessage::parse);
                if let Some(fixed) = &fixed {
                    let again = self
                        .auth
                        .verify_dkim(Parameters::new(fixed).with_txt_cache(self.txt.as_ref()))
                        .await;
                    for output in dkim_outputs.iter_mut() {
                        if !failed(output) {
                            continue;
                        }
                        let b = output.signature().map(|s| s.b.clone());
                        if let Some(better) = again.iter().find(|o| {
                            o.signature().map(|s| &s.b) == b.as_ref()
                                && *o.result() == mail_auth::DkimResult::Pass
                        }) {
                            *output = better.clone();
                            corrected.push(b);
                        }
                    }
                }
            }
            report.dkim = Some(
                dkim_outputs
                    .iter()
                    .map(|o| {
                        let was_corrected = corrected
                            .iter()
                            .any(|b| b.as_ref() == o.signature().map(|s| &s.b));
                        dkim_verdict(o, was_corrected)
                    })
                    .collect(),
            );
        }

        // What mail-auth lets through and RFC 8617 does not (see `arc_defect`).
        let arc_defect = arc_defect(message);
        let arc_output = if checks.arc || sealer.is_some() {
            let output = self
                .auth
                .verify_arc(Parameters::new(message).with_txt_cache(self.txt.as_ref()))
                .await;
            if checks.arc {
                let mut verdict = arc_verdict(&output);
                if let Some(defect) = &arc_defect
                    && verdict.result != ArcResult::Fail
                {
                    verdict.result = ArcResult::Fail;
                    verdict.reason = Some(defect.clone());
                    verdict.temporary = false;
                }
                report.arc = Some(verdict);
            }
            Some(output)
        } else {
            None
        };

        let spf_output = spf.map_or_else(
            || SpfOutput::new(String::new()),
            |s| {
                SpfOutput::new(s.mail_from.domain().to_owned()).with_result(
                    match s.mail_from.result {
                        SpfResult::Pass => mail_auth::SpfResult::Pass,
                        SpfResult::Fail => mail_auth::SpfResult::Fail,
                        SpfResult::SoftFail => mail_auth::SpfResult::SoftFail,
                        SpfResult::Neutral => mail_auth::SpfResult::Neutral,
                        SpfResult::None => mail_auth::SpfResult::None,
                        SpfResult::TempError => mail_auth::SpfResult::TempError,
                        SpfResult::PermError => mail_auth::SpfResult::PermError,
                    },
                )
            },
        );
        let mail_from_domain = spf.map_or("", |s| s.mail_from.domain()).to_owned();
        let dmarc_output = if checks.dmarc {
            let (verdict, output) = self
                .dmarc(message, &dkim_outputs, &mail_from_domain, &spf_output)
                .await;
            report.dmarc = Some(verdict);
            Some(output)
        } else {
            None
        };

        let seal = match (sealer, &arc_output) {
            (Some(sealer), Some(arc)) if arc.can_be_sealed() && arc_defect.is_none() => {
                let ip = spf.map_or(IpAddr::from([0, 0, 0, 0]), |s| s.ip);
                let helo = spf.map_or("", |s| s.helo_name.as_str());
                let mut results = AuthenticationResults::new(&self.hostname).with_dkim_results(
                    &dkim_outputs,
                    message.from.first().map_or("", |f| f.as_str()),
                );
                if let Some(spf) = spf {
                    results = results.with_spf_mailfrom_result(
                        &spf_output,
                        ip,
                        if spf.null_sender {
                            ""
                        } else {
                            &spf.mail_from.identity
                        },
                        helo,
                    );
                }
                if let Some(dmarc) = &dmarc_output {
                    results = results.with_dmarc_result(dmarc);
                }
                results = results.with_arc_result(arc, ip);
                sealer.seal(message, &results, arc)
            }
            _ => None,
        };
        (report, seal)
    }

    /// DMARC for `message`, with mail-auth's output for the verdict kept.
    ///
    /// mail-auth 0.13 exempts a From field whose addresses are in more than one domain
    /// (result `none`), so a sender could escape a `p=reject` domain's policy by adding
    /// an address of its own to From. RFC 7489 §6.6.1 checks each of those domains as
    /// the Author Domain and applies the strictest policy among the checks that fail: so
    /// with several From domains, each is evaluated alone and the strictest verdict kept
    /// (a failure with the strictest policy, then temperror, permerror, pass, none).
    async fn dmarc<'x>(
        &self,
        message: &AuthenticatedMessage<'x>,
        dkim_outputs: &[DkimOutput<'x>],
        mail_from_domain: &str,
        spf_output: &SpfOutput,
    ) -> (DmarcVerdict, DmarcOutput) {
        let mut domains: Vec<&str> = Vec::new();
        for domain in message.from.iter().filter_map(|a| a.rsplit_once('@')) {
            if !domains.contains(&domain.1) {
                domains.push(domain.1);
            }
        }
        if domains.len() < 2 {
            let domain = domains.first().copied();
            let output = self
                .dmarc_output(message, domain, dkim_outputs, mail_from_domain, spf_output)
                .await;
            return (self.dmarc_verdict(&output).await, output);
        }
        let mut strictest: Option<(DmarcVerdict, DmarcOutput)> = None;
        for domain in domains {
            let mut single = message.clone();
            single
                .from
                .retain(|a| a.rsplit_once('@').is_some_and(|(_, d)| d == domain));
            let output = self
                .dmarc_output(
                    &single,
                    Some(domain),
                    dkim_outputs,
                    mail_from_domain,
                    spf_output,
                )
                .await;
            let verdict = self.dmarc_verdict(&output).await;
            if strictest
                .as_ref()
                .is_none_or(|(v, _)| strictness(&verdict) > strictness(v))
            {
                strictest = Some((verdict, output));
            }
        }
        strictest.unwrap_or_else(|| (DmarcVerdict::none(""), DmarcOutput::default()))
    }

    /// mail-auth's DMARC output for `message`, whose From is in `domain`: the tree
    /// walk's answers are asked first ([`Verifier::prewalk_dmarc`]), so that mail-auth
    /// reads them all from the cache.
    async fn dmarc_output<'x>(
        &self,
        message: &AuthenticatedMessage<'x>,
        domain: Option<&str>,
        dkim_outputs: &[DkimOutput<'x>],
        mail_from_domain: &str,
        spf_output: &SpfOutput,
    ) -> DmarcOutput {
        let cache = WalkCache::new(&self.txt);
        if let Some(domain) = domain
            && let Some(walk) = self.prewalk_dmarc(domain, &cache).await
        {
            self.prewalk_alignment(
                domain,
                &walk,
                dkim_outputs,
                mail_from_domain,
                spf_output,
                &cache,
            )
            .await;
        }
        self.auth
            .verify_dmarc(
                Parameters::new(DmarcParameters {
                    message,
                    dkim_output: dkim_outputs,
                    dkim2_output: None,
                    rfc5321_mail_from_domain: mail_from_domain,
                    spf_output,
                })
                .with_txt_cache(&cache),
            )
            .await
    }

    /// Asks, in mail-auth's order, the names of the DMARC tree walk (RFC 9989 §4.10)
    /// that mail-auth 0.13's `dmarc_tree_walk` will ask for `domain` (an address's
    /// domain in From), and leaves the answers in `cache`, as mail-auth would read them
    /// from DNS: the walk then reads them all from the cache. mail-auth keeps found
    /// records until their TTL but no negative answer, so every check of a domain with
    /// no record above it (`_dmarc.<tld>`) went through the resolver; here a negative
    /// answer is kept for the negative TTL the resolver reports (none: for this check
    /// only), and an error for this check only. Any name mail-auth would build otherwise
    /// (an invalid name) ends the walk here: mail-auth then asks itself, as before.
    async fn prewalk_dmarc(
        &self,
        domain: &str,
        cache: &WalkCache<'_>,
    ) -> Option<Vec<(String, Arc<mail_auth::dmarc::Dmarc>)>> {
        use mail_auth::common::resolver::{ToFqdn, UnwrapTxtRecord};
        use mail_auth::dmarc::{Dmarc, Psd};
        let mut found = Vec::new();
        let domain = mail_auth::common::to_a_label(domain);
        let total = domain.split('.').filter(|l| !l.is_empty()).count();
        if total < 2 {
            return Some(found);
        }
        let mut count = total;
        loop {
            let name = drop_leftmost_labels(&domain, total - count);
            let key: Box<str> = format!("_dmarc.{name}.").to_fqdn().into();
            let txt = match cache.get::<str>(&key) {
                Some(txt) => txt,
                None => self.dmarc_txt(&key, cache).await?,
            };
            match Dmarc::unwrap_txt(txt) {
                Ok(dmarc) => {
                    let stop = matches!(dmarc.psd, Psd::Yes | Psd::No);
                    found.push((name.to_owned(), dmarc));
                    if stop {
                        return Some(found);
                    }
                }
                Err(mail_auth::Error::Dns(
                    mail_auth::DnsError::RecordNotFound(_) | mail_auth::DnsError::InvalidRecordType,
                )) => {}
                Err(_) => return None,
            }
            if count == 1 {
                return Some(found);
            }
            count = if count >= 8 { 7 } else { count - 1 };
        }
    }

    /// After [`Verifier::prewalk_dmarc`] of the Author Domain (`walk`), the tree walks
    /// mail-auth makes for relaxed alignment (RFC 9989 §4.10.2): of the MAIL FROM domain
    /// when SPF passed (or had a temporary error), and of the domain of each DKIM
    /// signature that passed (or had one) until one aligns, when that domain is another
    /// than the Author Domain but under its Organizational Domain. As mail-auth decides
    /// them; when in doubt (a walk that failed), it stops, and mail-auth asks itself.
    async fn prewalk_alignment(
        &self,
        author: &str,
        walk: &[(String, Arc<mail_auth::dmarc::Dmarc>)],
        dkim_outputs: &[DkimOutput<'_>],
        mail_from_domain: &str,
        spf_output: &SpfOutput,
        cache: &WalkCache<'_>,
    ) {
        use mail_auth::dmarc::Policy;
        let author = mail_auth::common::to_a_label(author);
        let author_org = organizational_domain(walk, &author).unwrap_or(&author);
        let Some((_, record)) = walk
            .iter()
            .find(|(name, _)| *name == *author)
            .or_else(|| walk.iter().find(|(name, _)| name == author_org))
            .or_else(|| walk.last())
        else {
            return;
        };
        if record.p == Policy::Unspecified && record.rua.is_empty() {
            return;
        }
        let mut memo: Vec<(String, String)> = vec![(author.to_string(), author_org.to_owned())];
        if matches!(
            spf_output.result(),
            mail_auth::SpfResult::Pass | mail_auth::SpfResult::TempError
        ) {
            let domain = mail_auth::common::to_a_label(mail_from_domain);
            let aligned = self
                .prewalk_org(&domain, &author, author_org, record.aspf, &mut memo, cache)
                .await;
            if aligned.is_none() {
                return;
            }
        }
        for output in dkim_outputs {
            let (passed, signature) = match (output.result(), output.signature()) {
                (mail_auth::DkimResult::Pass, Some(signature)) => (true, signature),
                (mail_auth::DkimResult::TempError(_), Some(signature)) => (false, signature),
                _ => continue,
            };
            let domain = mail_auth::common::to_a_label(&signature.d);
            match self
                .prewalk_org(&domain, &author, author_org, record.adkim, &mut memo, cache)
                .await
            {
                None => return,
                Some(true) if passed => return,
                Some(_) => {}
            }
        }
    }

    /// Whether `domain` aligns with the Author Domain `author` (Organizational Domain
    /// `author_org`) under `alignment`, walking the tree for `domain`'s Organizational
    /// Domain as mail-auth does (`memo` holds the ones known); `None` when that walk
    /// failed.
    async fn prewalk_org(
        &self,
        domain: &str,
        author: &str,
        author_org: &str,
        alignment: mail_auth::dmarc::Alignment,
        memo: &mut Vec<(String, String)>,
        cache: &WalkCache<'_>,
    ) -> Option<bool> {
        if domain == author {
            return Some(true);
        }
        let under = domain
            .strip_suffix(author_org)
            .is_some_and(|prefix| prefix.is_empty() || prefix.ends_with('.'));
        if alignment != mail_auth::dmarc::Alignment::Relaxed || !under {
            return Some(false);
        }
        if let Some((_, org)) = memo.iter().find(|(d, _)| d == domain) {
            return Some(org == author_org);
        }
        let walk = self.prewalk_dmarc(domain, cache).await?;
        let org = organizational_domain(&walk, domain)
            .unwrap_or(domain)
            .to_owned();
        let aligned = org == author_org;
        memo.push((domain.to_owned(), org));
        Some(aligned)
    }

    /// The DMARC record at `key` (a fully qualified name) as mail-auth's `txt_lookup`
    /// reads it, kept in `cache` (see [`Verifier::prewalk_dmarc`]); `None` when `key`
    /// is no name hickory takes.
    async fn dmarc_txt(&self, key: &str, cache: &WalkCache<'_>) -> Option<Txt> {
        use hickory_resolver::net::{DnsError, NetError};
        use hickory_resolver::proto::op::ResponseCode;
        use hickory_resolver::proto::rr::{Name, RData};
        use mail_auth::common::parse::TxtRecordParser;
        use mail_auth::dmarc::Dmarc;
        let name = Name::from_str_relaxed(key).ok()?;
        match self.auth.0.txt_lookup(name).await {
            Ok(lookup) => {
                // As mail-auth: each record's strings joined; the first that parses.
                let mut result = Err(mail_auth::Error::Dns(
                    mail_auth::DnsError::InvalidRecordType,
                ));
                for record in lookup.answers() {
                    let RData::TXT(txt) = &record.data else {
                        continue;
                    };
                    if txt.txt_data.is_empty() {
                        continue;
                    }
                    let joined: Vec<u8> = txt.txt_data.iter().flatten().copied().collect();
                    result = Dmarc::parse(&joined);
                    if result.is_ok() {
                        break;
                    }
                }
                let txt: Txt = result.into();
                cache.insert(key.into(), txt.clone(), lookup.valid_until());
                Some(txt)
            }
            Err(NetError::Dns(DnsError::NoRecordsFound(no))) => {
                let txt = Txt::Error(mail_auth::Error::Dns(mail_auth::DnsError::RecordNotFound(
                    no.response_code,
                )));
                let negative_ttl = no.negative_ttl.map_or(0, u64::from);
                if matches!(
                    no.response_code,
                    ResponseCode::NXDomain | ResponseCode::NoError
                ) && negative_ttl > 0
                {
                    cache.insert(
                        key.into(),
                        txt.clone(),
                        Instant::now() + Duration::from_secs(negative_ttl),
                    );
                } else {
                    cache.note_local(key.into(), txt.clone());
                }
                Some(txt)
            }
            Err(e) => {
                let txt = Txt::Error(mail_auth::Error::from(e));
                cache.note_local(key.into(), txt.clone());
                Some(txt)
            }
        }
    }

    /// Our DMARC verdict from mail-auth's, with `pct` applied (mail-auth 0.13 follows
    /// DMARCbis, which dropped `pct`; RFC 7489 §6.6.4 still has it).
    async fn dmarc_verdict(&self, output: &DmarcOutput) -> DmarcVerdict {
        let result = match output.result() {
            mail_auth::DmarcResult::Pass => DmarcResult::Pass,
            mail_auth::DmarcResult::Fail(_) => DmarcResult::Fail,
            mail_auth::DmarcResult::TempError(_) => DmarcResult::TempError,
            mail_auth::DmarcResult::PermError(_) => DmarcResult::PermError,
            mail_auth::DmarcResult::None => DmarcResult::None,
        };
        let published = match output.policy() {
            mail_auth::dmarc::Policy::Reject => DmarcPolicy::Reject,
            mail_auth::dmarc::Policy::Quarantine => DmarcPolicy::Quarantine,
            mail_auth::dmarc::Policy::None | mail_auth::dmarc::Policy::Unspecified => {
                DmarcPolicy::None
            }
        };
        let mut verdict = DmarcVerdict {
            result,
            header_from: output.domain().to_owned(),
            published_policy: published,
            policy: published,
            pct: 100,
            spf_aligned: *output.spf_result() == mail_auth::DmarcResult::Pass,
            dkim_aligned: *output.dkim_result() == mail_auth::DmarcResult::Pass,
        };
        if result == DmarcResult::Fail && published != DmarcPolicy::None {
            verdict.pct = self.dmarc_pct(&verdict.header_from).await;
            if !sampled(verdict.pct) {
                verdict.policy = published.demoted();
            }
        }
        verdict
    }

    /// The `pct` tag of the DMARC record found for `domain` (walking up to the
    /// organizational domain, as the policy lookup does); 100 when absent.
    async fn dmarc_pct(&self, domain: &str) -> u8 {
        let mut name = domain.trim_end_matches('.');
        for _ in 0..8 {
            if let Some(pct) = self.pct_at(&format!("_dmarc.{name}.")).await {
                return pct;
            }
            match name.split_once('.') {
                Some((_, parent)) if parent.contains('.') => name = parent,
                _ => break,
            }
        }
        100
    }

    /// The `pct` of the DMARC record at `key` (fully qualified), `None` when there is
    /// none (or the lookup failed); answers kept until their TTL (negative ones for the
    /// negative TTL the resolver reports), failures not at all.
    async fn pct_at(&self, key: &str) -> Option<u8> {
        if let Some(pct) = self.pcts.get(key) {
            return pct;
        }
        match self.auth.0.txt_lookup(key).await {
            Ok(lookup) => {
                let pct = lookup
                    .answers()
                    .iter()
                    .filter_map(|r| match &r.data {
                        hickory_resolver::proto::rr::RData::TXT(txt) => Some(txt),
                        _ => None,
                    })
                    .find_map(|txt| {
                        let text: String = txt
                            .txt_data
                            .iter()
                            .map(|part| String::from_utf8_lossy(part))
                            .collect();
                        record_pct(&text)
                    });
                let ttl = lookup
                    .valid_until()
                    .saturating_duration_since(Instant::now());
                self.pcts.put(key.into(), pct, ttl);
                pct
            }
            Err(e) => {
                if let Some(ttl) = crate::dns::negative_ttl(&e) {
                    self.pcts.put(key.into(), None, ttl);
                }
                None
            }
        }
    }
}

/// How strict a DMARC verdict is, for choosing among several From domains: a failure
/// (by its policy), then temperror, permerror, pass, none.
/// `future`'s output, or `None` when `deadline` comes first.
async fn until<F: std::future::Future>(
    deadline: Option<tokio::time::Instant>,
    future: F,
) -> Option<F::Output> {
    match deadline {
        Some(deadline) => tokio::time::timeout_at(deadline, future).await.ok(),
        None => Some(future.await),
    }
}

/// The Organizational Domain from the records a tree walk from `start` found (longest
/// name first), as mail-auth 0.13 selects it (RFC 9989 §4.10.2).
fn organizational_domain<'x>(
    walk: &'x [(String, Arc<mail_auth::dmarc::Dmarc>)],
    start: &'x str,
) -> Option<&'x str> {
    use mail_auth::dmarc::Psd;
    for (name, record) in walk {
        match record.psd {
            Psd::No => return Some(name),
            Psd::Yes if name != start => {
                // The name one label below the PSD, toward `start`.
                let depth = name.split('.').filter(|l| !l.is_empty()).count() + 1;
                let labels = start.split('.').filter(|l| !l.is_empty()).count();
                return Some(drop_leftmost_labels(start, labels.saturating_sub(depth)));
            }
            _ => {}
        }
    }
    walk.last().map(|(name, _)| name.as_str())
}

/// `domain` without its `n` leftmost labels (as mail-auth's DMARC tree walk builds its
/// names).
fn drop_leftmost_labels(domain: &str, n: usize) -> &str {
    let mut suffix = domain;
    for _ in 0..n {
        match suffix.split_once('.') {
            Some((_, rest)) => suffix = rest,
            None => return "",
        }
    }
    suffix
}

/// The report for a message mail-auth cannot parse: nothing signed, no chain, no
/// author domain.
fn unparsed_report(spf: Option<&SpfCheck>, checks: MessageChecks) -> AuthReport {
    AuthReport {
        spf: spf.cloned(),
        dkim: (checks.dkim || checks.dmarc).then(Vec::new),
        arc: checks.arc.then_some(ArcVerdict {
            result: ArcResult::None,
            sets: 0,
            reason: None,
            temporary: false,
        }),
        dmarc: checks.dmarc.then(|| DmarcVerdict::none("")),
    }
}

/// The report for a message whose checks could not wait for DNS (`why`): each
/// signature, the chain and DMARC are `temperror`; what needs no lookup (no signature,
/// no chain) is `none` as usual.
fn temperror_report(
    message: &AuthenticatedMessage<'_>,
    spf: Option<&SpfCheck>,
    checks: MessageChecks,
    why: &str,
) -> AuthReport {
    let dkim = message
        .dkim_headers
        .iter()
        .map(|h| DkimVerdict {
            result: DkimResult::TempError,
            domain: Some(h.header.d.clone()),
            selector: Some(h.header.s.clone()),
            algorithm: Some(algorithm_name(h.header.a).to_owned()),
            b_prefix: Some(b_prefix(&h.header.b)),
            reason: Some(why.to_owned()),
            corrected_relaxed_body: false,
        })
        .collect();
    let sets = u32::try_from(message.as_headers.len()).unwrap_or(u32::MAX);
    let header_from = message
        .from
        .first()
        .and_then(|a| a.rsplit_once('@'))
        .map_or("", |(_, d)| d);
    AuthReport {
        spf: spf.cloned(),
        dkim: (checks.dkim || checks.dmarc).then_some(dkim),
        arc: checks.arc.then(|| ArcVerdict {
            result: if sets == 0 {
                ArcResult::None
            } else {
                ArcResult::Fail
            },
            sets,
            reason: (sets > 0).then(|| why.to_owned()),
            temporary: sets > 0,
        }),
        dmarc: checks.dmarc.then(|| DmarcVerdict {
            result: DmarcResult::TempError,
            ..DmarcVerdict::none(header_from)
        }),
    }
}

fn strictness(verdict: &DmarcVerdict) -> (u8, DmarcPolicy) {
    let rank = match verdict.result {
        DmarcResult::Fail => 4,
        DmarcResult::TempError => 3,
        DmarcResult::PermError => 2,
        DmarcResult::Pass => 1,
        DmarcResult::None => 0,
    };
    (rank, verdict.policy)
}

/// `Some(pct)` when `record` is a DMARC record (100 when it has no valid `pct`).
fn record_pct(record: &str) -> Option<u8> {
    let mut tags = record.split(';').map(str::trim);
    if !tags
        .next()
        .is_some_and(|v| v.replace(' ', "").eq_ignore_ascii_case("v=DMARC1"))
    {
        return None;
    }
    Some(
        tags.filter_map(|t| t.split_once('='))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("pct"))
            .and_then(|(_, v)| v.trim().parse::<u8>().ok())
            .filter(|p| *p <= 100)
            .unwrap_or(100),
    )
}

/// Whether a message falls in the `pct` percent sample.
fn sampled(pct: u8) -> bool {
    match pct {
        100.. => true,
        0 => false,
        _ => {
            let mut hasher = RandomState::new().build_hasher();
            hasher.write_u64(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as u64),
            );
            hasher.finish() % 100 < u64::from(pct)
        }
    }
}

/// Whether `name` can be an SPF domain: a dotted name, not an address literal, with
/// no empty label, no label over 63 octets and at most 253 octets (RFC 7208 §4.3: a
/// malformed domain is `none`).
fn is_domain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && !name.starts_with('[')
        && name.contains('.')
        && name.split('.').all(|label| (1..=63).contains(&label.len()))
        && name.parse::<IpAddr>().is_err()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_' || b >= 0x80)
}

fn dkim_verdict(output: &DkimOutput<'_>, corrected: bool) -> DkimVerdict {
    let (result, reason) = match output.result() {
        mail_auth::DkimResult::Pass => (DkimResult::Pass, None),
        // mail-auth reports a body hash mismatch as neutral; it is a failed signature.
        mail_auth::DkimResult::Neutral(
            e @ mail_auth::Error::Dkim(DkimError::FailedBodyHashMatch),
        ) => (DkimResult::Fail, Some(e.to_string())),
        mail_auth::DkimResult::Neutral(e) => (DkimResult::Neutral, Some(e.to_string())),
        mail_auth::DkimResult::Fail(e) => (DkimResult::Fail, Some(e.to_string())),
        mail_auth::DkimResult::TempError(e) => (DkimResult::TempError, Some(e.to_string())),
        mail_auth::DkimResult::PermError(e) => (DkimResult::PermError, Some(e.to_string())),
        mail_auth::DkimResult::None => (DkimResult::None, None),
    };
    let signature = output.signature();
    DkimVerdict {
        result,
        domain: signature.map(|s| s.d.clone()),
        selector: signature.map(|s| s.s.clone()),
        algorithm: signature.map(|s| algorithm_name(s.a).to_owned()),
        b_prefix: signature.map(|s| b_prefix(&s.b)),
        reason,
        corrected_relaxed_body: corrected,
    }
}

fn algorithm_name(a: mail_auth::common::crypto::Algorithm) -> &'static str {
    match a {
        mail_auth::common::crypto::Algorithm::RsaSha256 => "rsa-sha256",
        mail_auth::common::crypto::Algorithm::RsaSha1 => "rsa-sha1",
        mail_auth::common::crypto::Algorithm::Ed25519Sha256 => "ed25519-sha256",
    }
}

/// The first 8 base64 characters of a signature (RFC 6008 `header.b`).
fn b_prefix(b: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(8);
    for chunk in b.chunks(3).take(2) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &byte)| n | u32::from(byte) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
        }
    }
    out
}

/// Why the ARC chain of `message` fails under RFC 8617 where mail-auth 0.13.3 passes it
/// (or finds no chain): `None` when we see nothing wrong. Read from the raw header
/// fields:
/// - ARC header fields present but no complete set (an ARC-Seal and its
///   ARC-Authentication-Results without their ARC-Message-Signature): mail-auth counts
///   sets by their AMS and answers `none`; §5.2 makes a broken chain `fail`.
/// - An ARC-Seal or ARC-Message-Signature whose tag-list is invalid under RFC 6376 §3.2
///   (which §4.1.2 and §4.1.3 apply to both): an empty tag-spec (`;;`), a tag name not
///   of the form ALPHA *(ALPHA / DIGIT / "_"), a tag twice, or a required tag missing
///   (tag names are case-sensitive, so `S=` is not `s=`). mail-auth skips bad tags,
///   keeps the last of two, lowercases names and defaults a missing `a=` to rsa-sha256.
/// - `a=rsa-sha1`: RFC 8301 §3.1, verifiers MUST NOT consider such signatures valid.
fn arc_defect(message: &AuthenticatedMessage<'_>) -> Option<String> {
    const SEAL_TAGS: &[&str] = &["a", "b", "cv", "d", "i", "s"];
    const SIGNATURE_TAGS: &[&str] = &["a", "b", "bh", "d", "h", "i", "s"];
    let mut any_arc = false;
    for (name, value) in &message.headers {
        let required = if name.eq_ignore_ascii_case(b"ARC-Seal") {
            SEAL_TAGS
        } else if name.eq_ignore_ascii_case(b"ARC-Message-Signature") {
            SIGNATURE_TAGS
        } else {
            any_arc |= name.eq_ignore_ascii_case(b"ARC-Authentication-Results");
            continue;
        };
        any_arc = true;
        let field = String::from_utf8_lossy(name);
        let tags =
            tag_list(value).ok_or_else(|| format!("{field}: invalid tag-list (RFC 6376 §3.2)"));
        let tags = match tags {
            Ok(tags) => tags,
            Err(why) => return Some(why),
        };
        if let Some(missing) = required.iter().find(|t| !tags.iter().any(|(k, _)| k == *t)) {
            return Some(format!("{field}: no {missing}= tag (RFC 8617 §4.1)"));
        }
        if tags
            .iter()
            .any(|(k, v)| k == "a" && v.eq_ignore_ascii_case("rsa-sha1"))
        {
            return Some(format!("{field}: rsa-sha1 is not valid (RFC 8301 §3.1)"));
        }
    }
    if any_arc && message.ams_headers.is_empty() {
        return Some(
            "ARC header fields without an ARC-Message-Signature (RFC 8617 §5.2)".to_owned(),
        );
    }
    None
}

/// The tags of an RFC 6376 §3.2 tag-list (names as written, values without folding
/// whitespace); `None` when it is not a valid tag-list.
fn tag_list(value: &[u8]) -> Option<Vec<(String, String)>> {
    let text = String::from_utf8_lossy(value);
    let specs: Vec<&str> = text.split(';').collect();
    let mut tags: Vec<(String, String)> = Vec::with_capacity(specs.len());
    for (i, spec) in specs.iter().enumerate() {
        let spec = spec.trim_matches(|c: char| c.is_ascii_whitespace());
        if spec.is_empty() {
            // Only the one after a final ";" may be empty.
            if i + 1 == specs.len() && i > 0 {
                continue;
            }
            return None;
        }
        let (name, value) = spec.split_once('=')?;
        let name = name.trim_end_matches(|c: char| c.is_ascii_whitespace());
        let well_formed = name.as_bytes().first().is_some_and(u8::is_ascii_alphabetic)
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !well_formed || tags.iter().any(|(k, _)| k == name) {
            return None;
        }
        let value: String = value.chars().filter(|c| !c.is_ascii_whitespace()).collect();
        tags.push((name.to_owned(), value));
    }
    Some(tags)
}

fn arc_verdict(output: &ArcOutput<'_>) -> ArcVerdict {
    let (result, reason, temporary) = match output.result() {
        mail_auth::DkimResult::Pass => (ArcResult::Pass, None, false),
        mail_auth::DkimResult::None => (ArcResult::None, None, false),
        mail_auth::DkimResult::TempError(e) => (ArcResult::Fail, Some(e.to_string()), true),
        mail_auth::DkimResult::Fail(e)
        | mail_auth::DkimResult::Neutral(e)
        | mail_auth::DkimResult::PermError(e) => (ArcResult::Fail, Some(e.to_string()), false),
    };
    ArcVerdict {
        result,
        sets: u32::try_from(output.sets().len()).unwrap_or(u32::MAX),
        reason,
        temporary,
    }
}

/// The message without the whitespace-only lines that end its body, when it has any
/// (see the module documentation); `None` when there is nothing to correct.
pub(crate) fn corrected_relaxed_body(message: &AuthenticatedMessage<'_>) -> Option<Vec<u8>> {
    let raw = message.raw_message();
    let offset = message.body_offset();
    let body = raw.get(offset..)?;
    // The end of the last line with content, line break included.
    let keep = match body
        .iter()
        .rposition(|b| !matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
    {
        Some(last) => body[last..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(body.len(), |p| last + p + 1),
        None => 0,
    };
    let tail = &body[keep..];
    if !tail.iter().any(|b| matches!(b, b' ' | b'\t')) {
        return None;
    }
    let mut fixed = Vec::with_capacity(offset + keep);
    fixed.extend_from_slice(&raw[..offset]);
    fixed.extend_from_slice(&body[..keep]);
    Some(fixed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fix(raw: &[u8]) -> Option<Vec<u8>> {
        let message = AuthenticatedMessage::parse(raw)?;
        corrected_relaxed_body(&message)
    }

    #[test]
    fn trailing_whitespace_lines_are_removed() {
        let fixed = fix(b"Subject: x\r\n\r\nHello!\r\n  \r\n\r\n");
        assert_eq!(fixed.as_deref(), Some(&b"Subject: x\r\n\r\nHello!\r\n"[..]));
        let fixed = fix(b"Subject: x\r\n\r\nHello!  \r\n \t \r\n");
        assert_eq!(
            fixed.as_deref(),
            Some(&b"Subject: x\r\n\r\nHello!  \r\n"[..])
        );
        let fixed = fix(b"Subject: x\r\n\r\n \r\n");
        assert_eq!(fixed.as_deref(), Some(&b"Subject: x\r\n\r\n"[..]));
        assert_eq!(fix(b"Subject: x\r\n\r\nHello!  \r\n"), None);
    }

    #[test]
    fn nothing_to_correct() {
        assert_eq!(fix(b"Subject: x\r\n\r\nHello!\r\n\r\n"), None);
        assert_eq!(fix(b"Subject: x\r\n\r\nHello!\r\n"), None);
    }

    #[test]
    fn signature_prefix() {
        assert_eq!(
            b_prefix(&[0xff, 0xee, 0xdd, 0x00, 0x11, 0x22, 0x33]),
            "/+7dABEi"
        );
        assert_eq!(b_prefix(b"Man"), "TWFu");
    }

    #[test]
    fn tag_lists() {
        let tags = tag_list(b" a=rsa-sha256; b=abc\r\n def ;d=example.org;").unwrap();
        assert_eq!(tags.len(), 3);
        assert_eq!(tags[1], ("b".to_owned(), "abcdef".to_owned()));
        for bad in [
            &b"a=1;;b=2"[..],
            b"_=1; a=2",
            b"s=1; s=2",
            b"a",
            b";a=1",
            b"1a=2",
        ] {
            assert!(tag_list(bad).is_none(), "{}", String::from_utf8_lossy(bad));
        }
        // Names are case-sensitive: S= is another tag than s=.
        let tags = tag_list(b"S=sel; s=sel2").unwrap();
        assert_eq!(tags.len(), 2);
    }

    #[test]
    fn arc_defects() {
        let seal = "ARC-Seal: i=1; a=rsa-sha256; cv=none; d=example.org; s=sel; b=AAAA\r\n";
        let defect = |raw: String| {
            let message = AuthenticatedMessage::parse(raw.as_bytes()).unwrap();
            arc_defect(&message)
        };
        let body = "From: a@example.org\r\nSubject: x\r\n\r\nHello\r\n";
        assert_eq!(defect(body.to_owned()), None);
        // A seal without its AMS: a broken chain.
        assert!(defect(format!("{seal}{body}")).is_some());
        let sha1 = seal.replace("rsa-sha256", "rsa-sha1");
        assert!(
            defect(format!("{sha1}{body}"))
                .unwrap()
                .contains("RFC 8301")
        );
        let no_a = seal.replace(" a=rsa-sha256;", "");
        assert!(defect(format!("{no_a}{body}")).unwrap().contains("no a="));
    }

    #[test]
    fn pct_tag() {
        assert_eq!(record_pct("v=DMARC1; p=reject; pct=20"), Some(20));
        assert_eq!(record_pct("v=DMARC1; p=reject"), Some(100));
        assert_eq!(record_pct("v=DMARC1; p=reject; pct=200"), Some(100));
        assert_eq!(record_pct("v=spf1 -all"), None);
        assert!(sampled(100));
        assert!(!sampled(0));
    }
}
