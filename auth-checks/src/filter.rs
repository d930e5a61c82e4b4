//! The checks as layers of the `smtp-server` stage chain.
//!
//! | layer | stage | does |
//! | --- | --- | --- |
//! | [`AuthChecks::mail_layer`] | mail | SPF for the HELO and MAIL FROM identities; under `enforce`, `fail` is `550 5.7.23` and `temperror` `451 4.7.24` |
//! | [`AuthChecks::data_layer`] | data | removes forged `Authentication-Results` naming us, checks DKIM, ARC, DMARC, then BIMI after a DMARC pass ([`crate::bimi`]), adds our `Authentication-Results` (and `BIMI-Location`), applies the policies, seals ARC, removes forged BIMI header fields |
//! | [`DkimSigning`] (a [`Check`]: `smtp_server::filter(signing)`) | data | signs mail from authenticated users for the domains it has keys for |
//!
//! Mechanism and policy are apart: each check is `off`, `tag` (header only) or
//! `enforce` ([`Mode`]). Authenticated sessions, sessions from `skip_networks`, and
//! listeners other than the relay listener (port 25) are not checked.

use std::sync::Arc;
use std::time::Duration;

use smtp_proto::{EnhancedStatus, ForwardPath, HeloName, ReversePath};
use smtp_server::filters::{DomainSet, IpNetwork};
use smtp_server::{
    AsyncCheck, Check, CheckFuture, DataRequest, Decision, FilterAsync, Flow, ListenerMode,
    MailRequest, SessionInfo, filter_async,
};
use tracing::{debug, info};

use crate::results::{
    ArcResult, AuthReport, DkimResult, DmarcPolicy, DmarcResult, SpfCheck, SpfResult,
};
use crate::sign::{ArcSigner, DkimSigner};
use crate::verify::{MessageChecks, Verifier};

/// What to do with a check's result.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Do not run the check.
    Off,
    /// Run it and record the result in `Authentication-Results` only.
    #[default]
    Tag,
    /// Run it, record it, and refuse mail the result condemns.
    Enforce,
}

/// The mode of each check (`tag` for all by default), and the time they may wait for
/// DNS (`[auth_checks]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Policy {
    /// SPF (RFC 7208): `enforce` rejects `fail` at MAIL FROM.
    pub spf: Mode,
    /// DKIM (RFC 6376): `enforce` rejects messages whose every signature failed.
    pub dkim: Mode,
    /// DMARC (RFC 7489): `enforce` applies the domain's `p=reject` / `p=quarantine`.
    pub dmarc: Mode,
    /// ARC (RFC 8617): `enforce` rejects messages with a broken chain.
    pub arc: Mode,
    /// BIMI ([`crate::bimi`]): after a DMARC pass at an enforcing policy (so only when
    /// `dmarc` is not `off`), look up the author domain's BIMI record and add a
    /// `BIMI-Location` header and `bimi=` to `Authentication-Results`. One TXT lookup
    /// (two with the organizational domain) within `time_budget`; a DNS failure never
    /// refuses mail. Default on. Forged BIMI header fields are removed whatever this
    /// says.
    pub bimi: bool,
    /// How long the checks of one message may wait for DNS, all told (SPF at MAIL
    /// FROM, then DKIM, ARC and DMARC at the end of data): what is not decided by then
    /// is `temperror`, and the modes apply to that (`tag` records it, `enforce` defers
    /// with `451`). A DNS server that does not answer costs a message this much at
    /// most. Default 5 s.
    #[serde(with = "humantime_serde")]
    pub time_budget: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            spf: Mode::default(),
            dkim: Mode::default(),
            dmarc: Mode::default(),
            arc: Mode::default(),
            bimi: true,
            time_budget: Duration::from_secs(5),
        }
    }
}

/// The time a transaction's SPF check took, for the data stage's share of the budget.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SpfTime(pub(crate) Duration);

/// The time a transaction waited at RCPT for the DNS defences (blocklists, reverse DNS),
/// for the data stage's share of the budget.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct DnsWait(pub(crate) Duration);

impl Policy {
    fn any(&self) -> bool {
        [self.spf, self.dkim, self.dmarc, self.arc]
            .iter()
            .any(|m| *m != Mode::Off)
    }
}

/// The header an MDA or Sieve script can file quarantined mail on (DMARC
/// `p=quarantine` under `enforce`).
pub const QUARANTINE_HEADER: &str = "X-Quarantine";

struct Shared {
    verifier: Verifier,
    policy: Policy,
    skip_networks: Vec<IpNetwork>,
    sealer: Option<(ArcSigner, DomainSet)>,
    stats: Option<Arc<crate::AuthStats>>,
}

impl Shared {
    /// Whether a session is checked: the relay listener, not authenticated, not from
    /// a skipped network.
    fn checks(&self, session: &SessionInfo) -> bool {
        session.mode == ListenerMode::Relay
            && session.authenticated.is_none()
            && !self
                .skip_networks
                .iter()
                .any(|n| n.contains(session.peer.ip()))
    }

    /// Whether a session's mail to other domains is mail we forward, to be ARC-sealed:
    /// it came in on the relay listener, not from a login (from the internet, or from
    /// a trusted host such as a list server relaying through us).
    fn forwarded(&self, session: &SessionInfo) -> bool {
        session.mode == ListenerMode::Relay && session.authenticated.is_none()
    }
}

/// The inbound checks, configured once, giving a mail-stage and a data-stage layer.
///
/// ```no_run
/// # fn example(resolver: hickory_resolver::TokioResolver, queue: smtp_server::StageService<smtp_server::DataRequest>) {
/// use auth_checks::{AuthChecks, Policy, Verifier};
/// let checks = AuthChecks::new(Verifier::new(resolver, "mx.example.net"), Policy::default());
/// let stages = smtp_server::Stages::new(queue)
///     .mail_layer(checks.mail_layer())
///     .data_layer(checks.data_layer());
/// # }
/// ```
#[derive(Clone)]
pub struct AuthChecks {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for AuthChecks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AuthChecks({:?})", self.shared.policy)
    }
}

impl AuthChecks {
    /// Checks with `verifier` (whose host name is the authserv-id of our
    /// `Authentication-Results`) under `policy`.
    pub fn new(verifier: Verifier, policy: Policy) -> Self {
        Self {
            shared: Arc::new(Shared {
                verifier,
                policy,
                skip_networks: Vec::new(),
                sealer: None,
                stats: None,
            }),
        }
    }

    fn edit(mut self, f: impl FnOnce(&mut Shared)) -> Self {
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            f(shared);
        }
        self
    }

    /// Does not check clients from these networks (trusted hosts that relay through us).
    pub fn skip_networks(self, networks: Vec<IpNetwork>) -> Self {
        self.edit(|s| s.skip_networks = networks)
    }

    /// Adds an ARC set to mail we forward: messages from the relay listener (not from
    /// logins; trusted networks included) with a recipient outside `local_domains`,
    /// when the chain they carry can be extended (RFC 8617 §5.1).
    pub fn arc_sealer(self, signer: ArcSigner, local_domains: DomainSet) -> Self {
        self.edit(|s| s.sealer = Some((signer, local_domains)))
    }

    /// Counts every checked message's verdicts in `stats` (shared, so the counts can
    /// outlive this value, e.g. across a configuration reload).
    pub fn count_into(self, stats: Arc<crate::AuthStats>) -> Self {
        self.edit(|s| s.stats = Some(stats))
    }

    /// SPF at MAIL FROM; the verdict is left in the transaction's notes for DMARC.
    pub fn mail_layer(&self) -> FilterAsync<SpfFilter> {
        filter_async(SpfFilter {
            shared: Arc::clone(&self.shared),
        })
    }

    /// DKIM, ARC and DMARC at the end of data, and the `Authentication-Results` header.
    pub fn data_layer(&self) -> FilterAsync<MessageFilter> {
        filter_async(MessageFilter {
            shared: Arc::clone(&self.shared),
        })
    }
}

/// The mail-stage check of [`AuthChecks::mail_layer`]: SPF.
#[derive(Clone)]
pub struct SpfFilter {
    shared: Arc<Shared>,
}

/// The data-stage check of [`AuthChecks::data_layer`]: DKIM, ARC, DMARC.
#[derive(Clone)]
pub struct MessageFilter {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for SpfFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SpfFilter")
    }
}

impl std::fmt::Debug for MessageFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MessageFilter")
    }
}

impl AsyncCheck<MailRequest> for SpfFilter {
    fn check(&self, request: MailRequest) -> CheckFuture<MailRequest> {
        let shared = Arc::clone(&self.shared);
        Box::pin(async move {
            let policy = shared.policy;
            if !shared.checks(&request.session)
                || (policy.spf == Mode::Off && policy.dmarc == Mode::Off)
            {
                return Ok(Flow::Continue(request));
            }
            let helo = match &request.session.helo {
                Some(HeloName::Domain(d)) => d.to_string(),
                Some(HeloName::Other(name)) => name.clone(),
                Some(HeloName::Address(_)) | None => String::new(),
            };
            let from = match &request.from {
                ReversePath::Null => String::new(),
                ReversePath::Mailbox(m) => m.as_str().to_owned(),
            };
            let started = tokio::time::Instant::now();
            let deadline = started + policy.time_budget;
            let check = shared
                .verifier
                .spf_until(request.session.peer.ip(), &helo, &from, Some(deadline))
                .await;
            debug!(spf = %check.mail_from.result, identity = %check.mail_from.identity, "SPF");
            request.notes.insert(check.clone());
            request.notes.insert(SpfTime(started.elapsed()));
            if policy.spf == Mode::Enforce
                && let Some(refusal) = spf_refusal(&check)
            {
                info!(spf = %check.mail_from.result, identity = %check.mail_from.identity, "sender refused by SPF");
                return Ok(Flow::Decide(refusal));
            }
            Ok(Flow::Continue(request))
        })
    }
}

/// The refusal `enforce` gives an SPF verdict, if any: `fail` of either identity is
/// `550 5.7.23`, `temperror` is `451 4.7.24` (RFC 7208 §8.4, §8.6, RFC 7372).
fn spf_refusal(check: &SpfCheck) -> Option<Decision> {
    let failed = [Some(&check.mail_from), check.helo.as_ref()]
        .into_iter()
        .flatten()
        .find(|v| v.result == SpfResult::Fail);
    if let Some(verdict) = failed {
        let mut text = format!(
            "SPF check failed: {} is not allowed to send mail for {}",
            check.ip,
            verdict.domain()
        );
        if let Some(exp) = verdict.explanation.as_deref().filter(|e| !e.is_empty()) {
            text.push_str(": ");
            text.extend(exp.chars().filter(|c| !c.is_control()).take(200));
        }
        return Some(Decision::reject::<550>(EnhancedStatus::SPF_FAILED, text));
    }
    if check.mail_from.result == SpfResult::TempError {
        return Some(Decision::defer::<451>(
            EnhancedStatus::SPF_TEMPORARY,
            format!(
                "SPF check of {} failed temporarily (DNS); try again later",
                check.mail_from.domain()
            ),
        ));
    }
    None
}

impl AsyncCheck<DataRequest> for MessageFilter {
    fn check(&self, mut request: DataRequest) -> CheckFuture<DataRequest> {
        let shared = Arc::clone(&self.shared);
        Box::pin(async move {
            let hostname = shared.verifier.hostname().to_owned();
            // RFC 8601 §5: results that claim to be ours did not come from us.
            if let Some(cleaned) = crate::headers::remove_our_results(&request.body, &hostname) {
                info!("removed Authentication-Results claiming to be ours");
                request.body = smtp_server::Content::from(cleaned);
            }
            let policy = shared.policy;
            let checked = shared.checks(&request.session) && policy.any();
            let sealer = shared.sealer.as_ref().and_then(|(signer, local)| {
                shared
                    .forwarded(&request.session)
                    .then_some(())
                    .filter(|()| {
                        request.envelope.recipients.iter().any(|r| match &r.to {
                            ForwardPath::Mailbox(m) => !local.contains(m.domain()),
                            ForwardPath::Postmaster => false,
                        })
                    })
                    .map(|()| signer)
            });
            if !checked && sealer.is_none() {
                remove_bimi_headers(&shared, &mut request);
                return Ok(Flow::Continue(request));
            }
            let spf = request.notes.get::<SpfCheck>();
            let checks = if checked {
                MessageChecks {
                    dkim: policy.dkim != Mode::Off,
                    arc: policy.arc != Mode::Off,
                    dmarc: policy.dmarc != Mode::Off,
                }
            } else {
                MessageChecks::ALL
            };
            let spent = request
                .notes
                .get::<SpfTime>()
                .map_or(Duration::ZERO, |t| t.0)
                + request
                    .notes
                    .get::<DnsWait>()
                    .map_or(Duration::ZERO, |t| t.0);
            let deadline = tokio::time::Instant::now() + policy.time_budget.saturating_sub(spent);
            let (mut report, seal) = shared
                .verifier
                .check_and_seal(&request.body, spf.as_ref(), checks, sealer, Some(deadline))
                .await;
            if let Some(seal) = seal {
                let mut headers = seal.into_bytes();
                headers.extend_from_slice(&request.added_headers);
                request.added_headers = headers;
            }
            if !checked {
                remove_bimi_headers(&shared, &mut request);
                return Ok(Flow::Continue(request));
            }
            if policy.spf == Mode::Off {
                report.spf = None;
            }
            if policy.dkim == Mode::Off && report.dkim.as_ref().is_some_and(|d| d.is_empty()) {
                report.dkim = None;
            }
            if let Some(stats) = &shared.stats {
                stats.record(&report);
            }
            if let Some(refusal) = message_refusal(&report, &policy) {
                info!(results = %report.header_value(&hostname).replace("\r\n\t", " "), "message refused by sender authentication");
                return Ok(Flow::Decide(refusal));
            }
            if policy.dmarc == Mode::Enforce
                && let Some(dmarc) = &report.dmarc
                && dmarc.result == DmarcResult::Fail
                && dmarc.policy == DmarcPolicy::Quarantine
            {
                request.prepend_header(
                    QUARANTINE_HEADER,
                    &format!("DMARC policy of {} (p=quarantine)", dmarc.header_from),
                );
            }
            let mut results = report.header_value(&hostname);
            if policy.bimi && report.dmarc.is_some() {
                let bimi = shared
                    .verifier
                    .bimi(&request.body, &report, Some(deadline))
                    .await;
                debug!(bimi = %bimi.result, domain = ?bimi.domain, "BIMI");
                // Removed after DKIM and BIMI read the message as it came (§7.8).
                remove_bimi_headers(&shared, &mut request);
                if let Some(location) = bimi.location_value() {
                    request.prepend_header("BIMI-Location", &location);
                }
                bimi.append_to(&mut results);
            } else {
                remove_bimi_headers(&shared, &mut request);
            }
            request.prepend_header("Authentication-Results", &results);
            Ok(Flow::Continue(request))
        })
    }
}

/// Removes the BIMI header fields only we may add (`BIMI-Location`, `BIMI-Indicator`,
/// `BIMI-Logo-Preference`) from a message, unless it comes from `skip_networks` (our
/// own hosts, which may have evaluated BIMI before us): draft-brand-indicators-for-
/// message-identification §5.6, §7.8.
fn remove_bimi_headers(shared: &Shared, request: &mut DataRequest) {
    let peer = request.session.peer.ip();
    if shared.skip_networks.iter().any(|n| n.contains(peer)) {
        return;
    }
    if let Some(cleaned) = crate::bimi::remove_bimi_headers(&request.body) {
        info!("removed BIMI header fields that came with the message");
        request.body = smtp_server::Content::from(cleaned);
    }
}

/// The refusal `enforce` gives a message's verdicts, if any.
fn message_refusal(report: &AuthReport, policy: &Policy) -> Option<Decision> {
    if policy.dmarc == Mode::Enforce
        && let Some(dmarc) = &report.dmarc
    {
        match dmarc.result {
            DmarcResult::Fail if dmarc.policy == DmarcPolicy::Reject => {
                return Some(Decision::reject::<550>(
                    EnhancedStatus::NOT_AUTHORIZED,
                    format!(
                        "Message rejected by the DMARC policy of {}: no aligned SPF or DKIM pass",
                        dmarc.header_from
                    ),
                ));
            }
            DmarcResult::TempError => {
                return Some(Decision::defer::<451>(
                    EnhancedStatus::NOT_AUTHORIZED_TEMPORARY,
                    format!(
                        "DMARC evaluation of {} failed temporarily (DNS); try again later",
                        dmarc.header_from
                    ),
                ));
            }
            _ => {}
        }
    }
    if policy.dkim == Mode::Enforce
        && let Some(dkim) = report.dkim.as_deref()
        && !dkim.is_empty()
        && !dkim.iter().any(|v| v.result == DkimResult::Pass)
    {
        if dkim.iter().any(|v| v.result == DkimResult::TempError) {
            return Some(Decision::defer::<451>(
                EnhancedStatus::CRYPTO_TEMPORARY,
                "DKIM key lookup failed temporarily (DNS); try again later",
            ));
        }
        return Some(Decision::reject::<550>(
            EnhancedStatus::NO_PASSING_DKIM,
            "No passing DKIM signature found",
        ));
    }
    if policy.arc == Mode::Enforce
        && let Some(arc) = &report.arc
        && arc.result == ArcResult::Fail
    {
        if arc.temporary {
            return Some(Decision::defer::<451>(
                EnhancedStatus::ARC_TEMPORARY,
                "ARC validation failed temporarily (DNS); try again later",
            ));
        }
        return Some(Decision::reject::<550>(
            EnhancedStatus::ARC_FAILED,
            "ARC validation failed: the chain of custody is broken",
        ));
    }
    None
}

/// Signs mail from authenticated users (and `trusted` networks) with the key of the
/// author's (RFC 5322 `From`) domain, or of its closest parent domain that has one.
#[derive(Clone, Debug)]
pub struct DkimSigning {
    signers: Arc<Vec<DkimSigner>>,
    trusted: Arc<Vec<IpNetwork>>,
}

impl DkimSigning {
    /// A layer with these signers; sessions from `trusted` networks are signed like
    /// authenticated ones.
    pub fn new(signers: Vec<DkimSigner>, trusted: Vec<IpNetwork>) -> Self {
        Self {
            signers: Arc::new(signers),
            trusted: Arc::new(trusted),
        }
    }
}

impl DkimSigning {
    /// A `DKIM-Signature` field for `message` (header and body, CRLF) with the key of
    /// its author's domain (or closest parent domain with a key); `None` when there is
    /// no such key or signing fails (logged).
    pub fn sign_message(&self, message: &[u8]) -> Option<String> {
        self.sign_parts(&[message])
    }

    /// [`DkimSigning::sign_message`] for a message in parts (header fields added on
    /// top, then the message as it came), without joining them.
    pub fn sign_parts(&self, parts: &[&[u8]]) -> Option<String> {
        let domain = parts.iter().find_map(|p| crate::headers::from_domain(p))?;
        let signer = self.signer_for(&domain)?;
        match signer.sign_parts(parts) {
            Ok(header) => {
                debug!(d = signer.domain(), s = signer.selector(), "DKIM signed");
                Some(header)
            }
            Err(e) => {
                tracing::warn!(error = %e.with_causes(), domain, "DKIM signing failed; sending unsigned");
                None
            }
        }
    }

    fn signer_for(&self, domain: &str) -> Option<&DkimSigner> {
        let mut name = domain;
        loop {
            if let Some(s) = self.signers.iter().find(|s| s.domain() == name) {
                return Some(s);
            }
            name = name.split_once('.')?.1;
        }
    }
}

impl Check<DataRequest> for DkimSigning {
    fn check(&self, request: &mut DataRequest) -> Option<Decision> {
        let session = &request.session;
        let ours = session.authenticated.is_some()
            || self.trusted.iter().any(|n| n.contains(session.peer.ip()));
        if ours && let Some(header) = self.sign_parts(&[&request.added_headers, &request.body]) {
            let mut headers = header.into_bytes();
            headers.extend_from_slice(&request.added_headers);
            request.added_headers = headers;
        }
        None
    }
}
