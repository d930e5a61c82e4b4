//! Remote delivery: route by MX (or through a relay host), then SMTP to the hosts in
//! order, with connections reused across messages and a limit per destination.
//!
//! Per-destination policies ([`DestinationPolicy`], `[[outbound.destination]]`): a
//! domain policy is the delivery's (slots, rate and backoff keyed by the domain); an
//! MX policy is each connection's to a host it matches, after MX resolution (slots,
//! rate and backoff keyed `MX <pattern>`, shared by every domain that host serves):
//!
//! ```text
//!  domain ─▶ its slot, rate, backoff ─▶ MX hosts ─▶ each host: an MX policy?
//!                                                    ├─ no: the domain's settings
//!                                                    └─ yes: its slot, rate, backoff;
//!                                                       the domain's settings over its own
//! ```
//!
//! A destination domain with an MTA-STS policy (RFC 8461, `sts.rs`) in `enforce`
//! gets only its listed MX hosts, over TLS with a certificate verified for the MX
//! name, or the mail waits (`4.7.5`); in `testing` the same checks are made and their
//! failures recorded, and the mail goes as it would without a policy.
//!
//! With DANE on (RFC 7672, `[outbound] dane = "on"`), each MX host's TLSA records are
//! looked up first, through the validating resolver (`dns_mx::DaneResolver`):
//!
//! ```text
//!  MX host ─▶ policy(domain, host, port) ─┬─ Some(records): DANE: STARTTLS mandatory,
//!                                         │   certificate judged by the records alone;
//!                                         │   MTA-STS does not apply to this host
//!                                         ├─ None: MTA-STS if the domain has a policy,
//!                                         │   else opportunistic TLS, as without DANE
//!                                         └─ Err: the host is skipped (RFC 7672 §2.2.3);
//!                                             all skipped: the mail waits, 451 4.7.5
//! ```
//!
//! Never for the relay host or an address literal. Failures go to the same
//! [`TlsReports`] as MTA-STS's, with policy type `tlsa`.
//!
//! A message sent with `REQUIRETLS` (RFC 8689 §4.2.1) goes to an MX host (or the relay
//! host) only when all of these hold, else the next host is tried:
//!
//! ```text
//!  the MX is vouched for ── DNSSEC-validated MX RRset (DANE resolver), or the host is
//!                           in the domain's MTA-STS policy; the relay host and address
//!                           literals need no MX lookup
//!  TLS, authenticated ───── DANE (usable TLSA records), else PKIX: a certificate that
//!                           chains to a trusted root and names the host
//!  REQUIRETLS offered ───── after STARTTLS; the MAIL command carries REQUIRETLS
//! ```
//!
//! When every host fails one of these, the message is returned (`550 5.7.10`, or
//! `550 5.7.30` when TLS held but the server does not offer REQUIRETLS); when a host
//! could not be asked at all (connection refused, timeout), it waits.
//!
//! A message with the header field `TLS-Required: No` (RFC 8689 §3, §4.2.2) and no
//! REQUIRETLS asks for delivery over protection: an MTA-STS `enforce` policy is
//! applied as in `testing` (failures recorded, then opportunistic TLS), a DANE host
//! whose TLS fails is tried again with opportunistic TLS, and a host whose TLSA lookup
//! failed is not skipped. STARTTLS is still used when offered.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dns_mx::{DaneResolver, MxHost, MxResolver, RouteError, TlsaRecord};
use mail_queue::{Bytes, DeliveryRequest, MessageMeta, Outcome};
use smtp_client::mta_sts::ReportedSession;
use smtp_client::mta_sts::{
    Mode, Policy, PolicySummary, PolicyType, ResultType, TlsReportEvent, TlsReportSink,
};
use smtp_client::{
    ClientError, DaneTls, OutboundConfig, OutboundMessage, Session, TlsPolicy, Tlsa,
};
use smtp_proto::{
    Body, ForwardPath, MailParameters, Notify, OriginalRecipient, RcptParameters, Reply, Ret,
    ReversePath,
};
use tracing::{Instrument, debug, info, info_span};

use super::shaping::{Admitted, Rates, Shaping, ShapingConfig, is_throttling};
use super::slots::{PrioritySlots, Slot};
use super::sts::{Sts, StsConfig, TlsReports};
use crate::aliases::Forwarding;

/// A relay host all remote mail goes through (a "smarthost").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Relay {
    /// Its host name or IP address.
    pub host: String,
}

/// A local address connections leave from, with the EHLO name that belongs to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Source {
    /// The local address (the port is the system's choice).
    pub address: IpAddr,
    /// Its EHLO name; `None`: the name otherwise in force.
    pub helo: Option<String>,
}

/// How mail to matching recipient domains, or over connections to matching MX hosts,
/// leaves (`[[outbound.destination]]`). Unset fields keep the `[outbound]` settings.
///
/// ```
/// use mta_bin::delivery::{DestinationPolicy, MatchOn};
/// let policy = DestinationPolicy {
///     pattern: "*.example.org".into(),
///     ..DestinationPolicy::default()
/// };
/// assert!(policy.matches("mx.Example.org"));
/// assert!(!policy.matches("example.org"));
/// // Compared with MX host names: for every domain whose MX is under example.net.
/// let outlook = DestinationPolicy {
///     pattern: "*.example.net".into(),
///     on: MatchOn::MxHost,
///     max_connections: Some(1),
///     ..DestinationPolicy::default()
/// };
/// assert!(outlook.matches("mx1.example.net"));
/// ```
#[derive(Clone, Debug, Default)]
pub struct DestinationPolicy {
    /// `example.org` (that name) or `*.example.org` (its subdomains, not itself).
    pub pattern: String,
    /// What the pattern is compared with: the recipient domain or the MX host name.
    pub on: MatchOn,
    /// STARTTLS policy.
    pub tls: Option<TlsPolicy>,
    /// With `tls` required: the name the server's certificate must carry instead of
    /// the MX host name (Postfix's `match=`). Not for MTA-STS, DANE or REQUIRETLS,
    /// which check the MX host name (or the TLSA records) whatever it says.
    pub tls_name: Option<String>,
    /// The port of the MX hosts.
    pub port: Option<u16>,
    /// A relay host (name or address, port) instead of the MX hosts; no login is
    /// sent to it (`[outbound] relay_username` is the global relay's). Domain
    /// policies only.
    pub relay: Option<(String, u16)>,
    /// Deliveries at once (instead of `max_per_destination`); for an MX policy,
    /// connections at once to all the hosts it matches, whatever the domain.
    pub max_connections: Option<usize>,
    /// Messages a minute at most: one over the rate waits (a minute at most) in its
    /// delivery slot, else is deferred. For an MX policy, shared by every domain.
    pub max_messages_per_minute: Option<u32>,
    /// The local address connections leave from.
    pub source: Option<Source>,
    /// The EHLO name.
    pub helo: Option<String>,
}

/// What a [`DestinationPolicy`]'s pattern is compared with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MatchOn {
    /// The recipient domain (`match = ...`): the policy is the delivery's.
    #[default]
    Domain,
    /// The name of an MX host (`mx = ...`), after MX resolution: the policy is each
    /// connection's to a matching host; its limits and traffic-shaping backoff are
    /// shared by every domain whose MX it matches.
    MxHost,
}

impl DestinationPolicy {
    /// Whether the policy is for `name` (a domain, or an MX host name for
    /// [`MatchOn::MxHost`]; compared without case).
    pub fn matches(&self, name: &str) -> bool {
        let name = name.trim_end_matches('.');
        match self.pattern.strip_prefix("*.") {
            Some(parent) => {
                name.len() > parent.len() + 1 && {
                    let (head, tail) = name.split_at(name.len() - parent.len());
                    head.ends_with('.') && tail.eq_ignore_ascii_case(parent)
                }
            }
            None => name.eq_ignore_ascii_case(&self.pattern),
        }
    }
}

/// The first domain policy of `policies` that matches `domain`.
fn domain_policy<'a>(
    policies: &'a [DestinationPolicy],
    domain: &str,
) -> Option<&'a DestinationPolicy> {
    policies
        .iter()
        .find(|p| p.on == MatchOn::Domain && p.matches(domain))
}

/// The first MX policy of `policies` that matches the MX host `host` (never an
/// address literal).
fn mx_policy<'a>(policies: &'a [DestinationPolicy], host: &str) -> Option<&'a DestinationPolicy> {
    if host.starts_with('[') {
        return None;
    }
    policies
        .iter()
        .find(|p| p.on == MatchOn::MxHost && p.matches(host))
}

/// The connection settings of an MX policy under the domain's policy: each the
/// domain's when it sets it, else the MX policy's. Limits are not merged: each
/// policy counts its own.
fn merged(domain: Option<&DestinationPolicy>, mx: &DestinationPolicy) -> DestinationPolicy {
    let d = domain.cloned().unwrap_or_default();
    DestinationPolicy {
        pattern: mx.pattern.clone(),
        on: MatchOn::MxHost,
        tls: d.tls.or(mx.tls),
        tls_name: d.tls_name.or_else(|| mx.tls_name.clone()),
        port: d.port.or(mx.port),
        relay: None,
        max_connections: None,
        max_messages_per_minute: None,
        source: d.source.or_else(|| mx.source.clone()),
        helo: d.helo.or_else(|| mx.helo.clone()),
    }
}

/// Mail from a sender domain leaves from a pool of local addresses, taken in turn
/// (`[[outbound.sender_source]]`).
#[derive(Clone, Debug)]
pub struct SenderPool {
    /// The envelope sender's domain.
    pub domain: String,
    /// The pool (not empty).
    pub sources: Vec<Source>,
}

/// Remote delivery settings.
#[derive(Clone, Debug)]
pub struct RemoteConfig {
    /// How to speak SMTP to other servers.
    pub outbound: OutboundConfig,
    /// Send everything through this host instead of looking up MX records.
    pub relay: Option<Relay>,
    /// Deliveries at once to one destination domain. Default 20 (as Postfix).
    pub max_per_destination: usize,
    /// Messages sent on one connection before it is closed. Default 100.
    pub max_messages_per_connection: usize,
    /// How long an idle connection is kept for reuse; then it is closed with QUIT.
    /// Default 10 s.
    pub idle_timeout: Duration,
    /// The SRS rewriting of the envelope sender of forwarded mail (`[aliases]
    /// forward_sender = "srs"`); `None`: the sender is kept.
    pub forwarding: Option<Forwarding>,
    /// MTA-STS for destination domains (not for the relay host); `None`: off.
    pub mta_sts: Option<StsConfig>,
    /// DANE (RFC 7672) for MX hosts (not for the relay host or address literals):
    /// the validating resolver TLSA records are asked of; `None`: off.
    pub dane: Option<DaneResolver>,
    /// Traffic shaping: how destinations that throttle us are backed off.
    pub shaping: ShapingConfig,
    /// What traffic shaping counts into (kept across reloads).
    pub shaping_stats: Arc<crate::delivery::ShapingStats>,
    /// A delivery waiting this long for a destination's slot goes before higher
    /// priorities (`[queue] priority_max_wait`); `None`: priority alone decides.
    pub priority_max_wait: Option<Duration>,
    /// Per-destination policies: the first domain policy that matches the recipient
    /// domain applies to a delivery, the first MX policy that matches an MX host's
    /// name to each connection to that host.
    pub destinations: Vec<DestinationPolicy>,
    /// Source address pools by sender domain.
    pub sender_pools: Vec<SenderPool>,
    /// The local address connections leave from when neither the destination's policy
    /// nor the sender's pool names one; `None`: the system's choice.
    pub source: Option<Source>,
}

/// How one delivery leaves: the settings of its destination policy and source.
#[derive(Debug)]
struct Plan {
    /// `[outbound]` with the destination's and the source's settings.
    outbound: OutboundConfig,
    /// `outbound` with TLS required and verified (MTA-STS, REQUIRETLS).
    verified: OutboundConfig,
    /// Through a relay host (the global one or the destination's): no MX, MTA-STS
    /// nor DANE.
    relayed: bool,
    /// The relay host: the destination's, else `[outbound] relay`.
    relay_host: Option<String>,
    /// A host answered with a throttling reply (traffic shaping).
    throttled: AtomicBool,
    /// The destination domain.
    domain: String,
    /// With `tls` required, the name the certificate must carry instead of the host's.
    tls_name: Option<String>,
    /// The policy of the destination domain, if any.
    policy: Option<DestinationPolicy>,
    /// The envelope sender (for its domain's source pool).
    sender: String,
    /// The source chosen (the destination's, the sender domain's pool's in turn, or
    /// the global one), kept for the connections under an MX policy.
    source: Option<Source>,
    /// The message's priority (RFC 6710), for delivery slots.
    priority: i8,
}

impl Plan {
    /// Notes a throttling reply in `e`.
    fn note_error(&self, e: &ClientError) {
        if matches!(e, ClientError::Rejected(r) if is_throttling(r)) {
            self.throttled.store(true, Ordering::Relaxed);
        }
    }

    /// Notes a throttling reply among `replies`.
    fn note_replies(&self, replies: &[Reply]) {
        if replies.iter().any(is_throttling) {
            self.throttled.store(true, Ordering::Relaxed);
        }
    }

    /// The idle-pool key of a session to `host` under this plan: a session is reused
    /// only for the same port, source address, EHLO name, STARTTLS policy and name
    /// the certificate was verified for.
    fn pool_key(&self, host: &str) -> String {
        let o = &self.outbound;
        let source = o.source.map(|s| s.to_string()).unwrap_or_default();
        let tls_name = self.tls_name.as_deref().unwrap_or("");
        format!(
            "{host} {} {source} {} {:?} {tls_name}",
            o.port, o.helo_name, o.tls
        )
    }

    /// The name `host`'s certificate is verified for under `tls = "required"`:
    /// `tls_name` when given, else the host's.
    fn tls_name<'a>(&'a self, host: &'a str) -> &'a str {
        match &self.tls_name {
            Some(name) if self.outbound.tls == TlsPolicy::Required => name,
            _ => host,
        }
    }
}

/// The longest a message waits in its delivery slot for its destination's rate.
const RATE_WAIT: Duration = Duration::from_secs(60);

/// One attempt at a host an MX policy matches: the connection settings (the domain's
/// policy over the MX policy's), the MX policy's connection slot (when it limits
/// them), and its leave from traffic shaping, to report on with [`Remote::noted`].
#[derive(Debug)]
struct MxTurn {
    plan: Plan,
    /// The shaping, rate and slot key of the MX policy: `MX <pattern>`.
    key: String,
    admitted: Admitted,
    _slot: Option<Slot>,
}

/// Delivers to other servers.
#[derive(Debug)]
pub struct Remote {
    resolver: MxResolver,
    config: RemoteConfig,
    /// Connections waiting for their next message.
    idle: Arc<IdlePool>,
    /// The delivery slots of each destination domain (and of each MX policy with
    /// `max_connections`, keyed `MX <pattern>`), handed out by priority.
    destinations: Mutex<HashMap<String, Arc<PrioritySlots>>>,
    /// MTA-STS policies, when on.
    sts: Option<Sts>,
    /// Where the TLS report events of MTA-STS and DANE go.
    reports: Arc<TlsReports>,
    /// The backoff of destinations that throttle us.
    shaping: Shaping,
    /// Message rates of destinations with `max_messages_per_minute`.
    rates: Rates,
    /// The next address of the sender pools (round robin).
    next_source: AtomicUsize,
}

/// How TLS is decided for one MX host.
#[derive(Clone, Debug)]
enum HostTls {
    /// No DANE: as the configuration and the domain's MTA-STS policy say.
    Default,
    /// DANE: the host's secure TLSA records (RFC 7672 §2.2).
    Dane(Arc<DaneHost>),
    /// The DANE lookup failed (RFC 7672 §2.2.3): the host is skipped; the text the
    /// mail waits with if no other host takes it.
    Skip(String),
}

/// A host under DANE: the TLS settings that check its records, what a kept-open
/// session must have been checked against to be reused for it, and the records as
/// a TLS report states the policy.
#[derive(Debug)]
struct DaneHost {
    tls: DaneTls,
    key: Arc<DaneKey>,
    summary: PolicySummary,
}

/// What a session's certificate was checked against. A kept-open session is reused
/// only for a delivery that asks no more of it.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Checked {
    /// Nothing (opportunistic TLS, or none).
    Nothing,
    /// WebPKI, for the host's name (`tls = "required"`, MTA-STS `enforce`).
    Name,
    /// DANE, against these records.
    Dane(Arc<DaneKey>),
}

impl Checked {
    /// Whether a session checked as `self` may carry a delivery that needs `need`.
    fn satisfies(&self, need: &Checked) -> bool {
        *need == Checked::Nothing || self == need
    }
}

/// The TLSA records a DANE session was checked against (sorted), and with a DANE-TA
/// record the destination domain (a reference name for the certificate, RFC 7672
/// §3.2.2: the check holds for that domain only).
#[derive(Debug, PartialEq, Eq)]
struct DaneKey {
    records: Vec<TlsaRecord>,
    domain: Option<String>,
}

/// What RFC 8689 asks of one delivery.
#[derive(Clone, Copy, Debug)]
enum Require {
    /// Nothing: TLS as DANE, MTA-STS and `[outbound] tls` say.
    Off,
    /// `REQUIRETLS` (§4.2.1); whether the MX RRset of the destination was validated
    /// (DNSSEC), or needs no validation (the relay host, an address literal).
    Tls { mx_validated: bool },
    /// `TLS-Required: No` (§4.2.2): MTA-STS and DANE failures do not stop delivery.
    Optional,
}

/// Why a host did not take a REQUIRETLS message.
#[derive(Debug)]
enum RequireTlsError {
    /// The host does not meet RFC 8689 §4.2.1: the reply (`550 5.7.10 ...`).
    Unqualified(String),
    /// The host could not be asked (connection, timeout, a refused session).
    Client(ClientError),
}

/// What MTA-STS asks of one delivery.
#[derive(Clone, Copy, Debug)]
enum StsUse<'a> {
    /// No policy (or mode `none`, or a relay host).
    Off,
    /// The policy of the domain, in `enforce` or `testing`.
    Policy(&'a str, &'a Policy),
}

/// Connections waiting for their next message, by host, each with a number its close
/// timer knows it by.
#[derive(Debug, Default)]
struct IdlePool {
    sessions: Mutex<HashMap<String, Waiting>>,
    next: std::sync::atomic::AtomicU64,
}

/// The idle sessions to one host: (number, session, what its certificate was checked
/// against).
type Waiting = Vec<(u64, Session, Checked)>;

/// How long a closing connection waits for the server's `221` to QUIT.
const QUIT_WAIT: Duration = Duration::from_secs(5);

impl IdlePool {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Waiting>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The session numbered `n`, if it is still waiting.
    fn remove(&self, n: u64) -> Option<Session> {
        let mut sessions = self.lock();
        for list in sessions.values_mut() {
            if let Some(i) = list.iter().position(|(m, _, _)| *m == n) {
                return Some(list.swap_remove(i).1);
            }
        }
        None
    }
}

/// QUIT, a short wait for `221`, and close.
async fn close(session: Session) {
    let _ = tokio::time::timeout(QUIT_WAIT, session.quit()).await;
}

impl Remote {
    /// A remote delivery service.
    pub fn new(resolver: MxResolver, config: RemoteConfig) -> Self {
        let reports = Arc::<TlsReports>::default();
        let sts = config.mta_sts.as_ref().map(|sts| {
            Sts::new(
                sts,
                resolver.clone(),
                Arc::clone(&config.outbound.tls_configs.verified),
                Arc::clone(&reports),
            )
        });
        Self {
            resolver,
            shaping: Shaping::new(config.shaping).count_into(Arc::clone(&config.shaping_stats)),
            config,
            idle: Arc::default(),
            destinations: Mutex::default(),
            sts,
            reports,
            rates: Rates::default(),
            next_source: AtomicUsize::new(0),
        }
    }

    /// The TLS report events of MTA-STS and DANE failures (`None` when both are off).
    pub fn tls_reports(&self) -> Option<&Arc<TlsReports>> {
        (self.sts.is_some() || self.config.dane.is_some()).then_some(&self.reports)
    }

    /// Delivers the request's recipients (all of one domain): one outcome each. With
    /// [`RemoteConfig::forwarding`], recipients that came from an alias leave in a
    /// transaction of their own, with the SRS form of the sender.
    ///
    /// The first domain [`DestinationPolicy`] matching `domain` sets its TLS policy,
    /// port, relay host, limits, source address and EHLO name; then each connection to
    /// an MX host an MX policy matches takes that policy's settings where the domain's
    /// sets none, and is counted against its limits too. A destination (a domain, or
    /// an MX policy) that answers with a throttling reply is backed off
    /// ([`Shaping`]): its mail is deferred without connecting for a growing pause, then
    /// goes one at a time until it is accepted again; other destinations are not
    /// affected.
    pub async fn deliver(&self, request: &DeliveryRequest, domain: &str) -> Vec<Outcome> {
        let n = request.recipients.len();
        let policy = domain_policy(&self.config.destinations, domain);
        let limit = policy
            .and_then(|p| p.max_connections)
            .unwrap_or(self.config.max_per_destination);
        let slots = self.slots(domain, limit);
        let priority = request.message.params.priority();
        // A saturated destination serves its waiting messages by priority (RFC 6710).
        let _slot = slots.acquire(priority).await;
        if let Some(rate) = policy.and_then(|p| p.max_messages_per_minute) {
            // Waiting in the slot holds up only this destination.
            match self.rates.reserve(domain, rate, RATE_WAIT) {
                Some(wait) => self.rate_wait(wait).await,
                None => {
                    self.shaping
                        .stats()
                        .rate_deferred
                        .fetch_add(1, Ordering::Relaxed);
                    let text = format!(
                        "451 4.7.0 {domain}: traffic shaping: over {rate} messages a minute"
                    );
                    return vec![Outcome::Deferred(text); n];
                }
            }
        }
        let admitted = match self.shaping.admit(domain) {
            Ok(admitted) => admitted,
            Err(text) => {
                debug!(domain, "{text}");
                return vec![Outcome::Deferred(text); n];
            }
        };
        let plan = self.plan(domain, policy, &request.message.from, priority);
        let outcomes = self.deliver_planned(request, domain, &plan).await;
        let accepted = outcomes.iter().any(|o| matches!(o, Outcome::Sent(_)));
        let throttled = plan.throttled.load(Ordering::Relaxed);
        self.shaping.record(domain, admitted, throttled, accepted);
        outcomes
    }

    /// Waits `wait` for a destination's rate (counted when there is a wait).
    async fn rate_wait(&self, wait: Duration) {
        if !wait.is_zero() {
            self.shaping
                .stats()
                .rate_waited
                .fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(wait).await;
        }
    }

    /// The delivery slots under `key` (a domain, or `MX <pattern>`), `limit` of them.
    fn slots(&self, key: &str, limit: usize) -> Arc<PrioritySlots> {
        let mut map = self.destinations.lock().unwrap_or_else(|e| e.into_inner());
        Arc::clone(map.entry(key.to_owned()).or_insert_with(|| {
            Arc::new(PrioritySlots::new(limit).max_wait(self.config.priority_max_wait))
        }))
    }

    /// How a delivery to a destination under `policy` from `sender` leaves.
    fn plan(
        &self,
        domain: &str,
        policy: Option<&DestinationPolicy>,
        sender: &str,
        priority: i8,
    ) -> Plan {
        let mut outbound = self.config.outbound.clone();
        let mut relayed = self.config.relay.is_some();
        if let Some(policy) = policy {
            match &policy.relay {
                Some((_, port)) => {
                    relayed = true;
                    outbound.port = *port;
                    // The global relay's login and TLS mode are not this host's.
                    outbound.auth = None;
                    outbound.implicit_tls = false;
                }
                None if !relayed => outbound.port = policy.port.unwrap_or(outbound.port),
                None => {}
            }
            if let Some(tls) = policy.tls {
                outbound.tls = tls;
            }
            if let Some(helo) = &policy.helo {
                outbound.helo_name = helo.clone();
            }
        }
        // The destination's source, else the sender domain's pool, else the global one.
        let sender_domain = sender.rsplit_once('@').map(|(_, d)| d).unwrap_or("");
        let pooled = || {
            let pool = self.config.sender_pools.iter().find(|p| {
                !sender_domain.is_empty() && p.domain.eq_ignore_ascii_case(sender_domain)
            })?;
            let i = self.next_source.fetch_add(1, Ordering::Relaxed);
            pool.sources.get(i % pool.sources.len().max(1))
        };
        let source = policy
            .and_then(|p| p.source.as_ref())
            .or_else(pooled)
            .or(self.config.source.as_ref());
        let chosen = source.cloned();
        if let Some(source) = source {
            outbound.source = Some(source.address);
            if let Some(helo) = &source.helo {
                outbound.helo_name = helo.clone();
            }
        }
        let mut verified = outbound.clone();
        verified.tls = TlsPolicy::Required;
        Plan {
            outbound,
            verified,
            relayed,
            throttled: AtomicBool::new(false),
            domain: domain.to_owned(),
            relay_host: policy
                .and_then(|p| p.relay.as_ref().map(|(host, _)| host))
                .or(self.config.relay.as_ref().map(|r| &r.host))
                .cloned(),
            tls_name: policy.and_then(|p| p.tls_name.clone()),
            policy: policy.cloned(),
            sender: sender.to_owned(),
            source: chosen,
            priority,
        }
    }

    /// The port of `host` under `plan`: an MX policy's when it matches the host and
    /// the domain's policy sets none.
    fn host_port(&self, plan: &Plan, host: &str) -> u16 {
        if plan.relayed {
            return plan.outbound.port;
        }
        let domain_port = plan.policy.as_ref().and_then(|p| p.port);
        mx_policy(&self.config.destinations, host)
            .and_then(|mx| domain_port.or(mx.port))
            .unwrap_or(plan.outbound.port)
    }

    /// Leave for one attempt at `host` when an MX policy matches it (never through a
    /// relay host): a connection slot of the policy (waited for, by priority), a token
    /// of its message rate, and traffic shaping's leave; `Ok(None)` when no MX policy
    /// matches (the domain's plan applies), `Err` the text the host is passed over
    /// with (`451 4.7.0 ...`).
    async fn mx_turn(&self, plan: &Plan, host: &MxHost) -> Result<Option<MxTurn>, String> {
        if plan.relayed {
            return Ok(None);
        }
        let Some(mx) = mx_policy(&self.config.destinations, &host.name) else {
            return Ok(None);
        };
        let key = format!("MX {}", mx.pattern.to_ascii_lowercase());
        let slot = match mx.max_connections {
            Some(limit) => {
                debug!(
                    domain = %plan.domain,
                    host = %host.name,
                    "{key}: taking one of its {limit} connection slots"
                );
                Some(self.slots(&key, limit).acquire(plan.priority).await)
            }
            None => None,
        };
        if let Some(rate) = mx.max_messages_per_minute {
            match self.rates.reserve(&key, rate, RATE_WAIT) {
                Some(wait) => self.rate_wait(wait).await,
                None => {
                    self.shaping
                        .stats()
                        .rate_deferred
                        .fetch_add(1, Ordering::Relaxed);
                    return Err(format!(
                        "451 4.7.0 {key}: traffic shaping: over {rate} messages a minute"
                    ));
                }
            }
        }
        let admitted = self.shaping.admit(&key)?;
        let mut settings = merged(plan.policy.as_ref(), mx);
        // The source already chosen for the delivery (a pool's turn is taken once).
        if settings.source.is_none() {
            settings.source = plan.source.clone();
        }
        let mut host_plan = self.plan(&plan.domain, Some(&settings), &plan.sender, plan.priority);
        // The domain's policy is still the one the delivery is under.
        host_plan.policy = plan.policy.clone();
        debug!(host = %host.name, policy = %key, "MX policy");
        Ok(Some(MxTurn {
            plan: host_plan,
            key,
            admitted,
            _slot: slot,
        }))
    }

    /// Notes how an attempt at a host went, for traffic shaping: its replies, or the
    /// error (`None`: an error that is no reply). A throttling reply counts against the
    /// MX policy the attempt was under (`turn`, reported on now), else against the
    /// domain (`plan`, reported on when the delivery ends).
    fn noted(
        &self,
        plan: &Plan,
        turn: Option<MxTurn>,
        sent: Result<&[Reply], Option<&ClientError>>,
    ) {
        let noting = turn.as_ref().map_or(plan, |t| &t.plan);
        match sent {
            Ok(replies) => noting.note_replies(replies),
            Err(Some(e)) => noting.note_error(e),
            Err(None) => {}
        }
        if let Some(turn) = turn {
            let accepted = sent.is_ok_and(|r| r.iter().any(Reply::is_positive_completion));
            let throttled = turn.plan.throttled.load(Ordering::Relaxed);
            self.shaping
                .record(&turn.key, turn.admitted, throttled, accepted);
        }
    }

    /// [`Remote::deliver`] in its slot, admitted by traffic shaping.
    async fn deliver_planned(
        &self,
        request: &DeliveryRequest,
        domain: &str,
        plan: &Plan,
    ) -> Vec<Outcome> {
        let n = request.recipients.len();
        let hosts = match &plan.relay_host {
            Some(relay) => self.resolver.host(relay).await.map(|h| vec![h]),
            None => self.resolver.route(domain).await,
        };
        let hosts = match hosts {
            Ok(hosts) => hosts,
            Err(e) => {
                let (code, status) = e.status();
                let text = format!("{code} {status} {domain}: {e}");
                let outcome = if e.is_permanent() {
                    Outcome::Failed(text)
                } else {
                    Outcome::Deferred(text)
                };
                return vec![outcome; n];
            }
        };
        // RFC 8689: REQUIRETLS, or `TLS-Required: No` (REQUIRETLS wins when both).
        let requiretls = request.message.params.requiretls;
        let optional = !requiretls && tls_required_no(&request.body);
        // MTA-STS: the destination domain's policy (never the relay host's).
        let mut policy = match &self.sts {
            Some(sts) if !plan.relayed && !domain.starts_with('[') => sts.policy(domain).await,
            _ => None,
        };
        if let Some(p) = policy
            .as_mut()
            .filter(|p| optional && p.mode == Mode::Enforce)
        {
            info!(
                domain,
                "TLS-Required: No: the MTA-STS policy is applied as in testing"
            );
            p.mode = Mode::Testing;
        }
        let sts = match &policy {
            Some(p) if p.mode != Mode::None => StsUse::Policy(domain, p),
            _ => StsUse::Off,
        };
        // DANE: each MX host's TLSA records (never the relay host's, nor a literal's).
        let mut hosts = self.dane_hosts(hosts, domain, plan).await;
        if optional {
            // TLS-Required: No: a failed TLSA lookup does not keep the host out.
            for (_, tls) in &mut hosts {
                if matches!(tls, HostTls::Skip(_)) {
                    *tls = HostTls::Default;
                }
            }
        }
        let hosts = match self.sts_hosts(hosts, sts) {
            Ok(hosts) => hosts,
            Err(text) => return vec![Outcome::Deferred(text); n],
        };
        // RFC 8689 §4.2.1: REQUIRETLS (and whether the MX RRset was validated).
        let require = if requiretls {
            Require::Tls {
                mx_validated: self.mx_validated(domain, plan).await,
            }
        } else if optional {
            Require::Optional
        } else {
            Require::Off
        };
        let groups = self.by_sender(request);
        if let [(None, _)] = &groups[..] {
            let message = outbound_message(&request.message, &request.recipients, &request.body);
            return self.send(&hosts, &message, n, sts, require, plan).await;
        }
        // Forwarded and other recipients: one transaction for each sender.
        let mut outcomes: Vec<Option<Outcome>> = vec![None; n];
        for (sender, positions) in groups {
            let indexes: Vec<usize> = positions.iter().map(|&p| request.recipients[p]).collect();
            let mut message = outbound_message(&request.message, &indexes, &request.body);
            if let Some(sender) = sender.and_then(|s| ReversePath::parse(&format!("<{s}>")).ok()) {
                message.from = sender;
            }
            let sent = self
                .send(&hosts, &message, positions.len(), sts, require, plan)
                .await;
            for (p, outcome) in positions.into_iter().zip(sent) {
                outcomes[p] = Some(outcome);
            }
        }
        outcomes
            .into_iter()
            .map(|o| o.unwrap_or_else(|| Outcome::Deferred("4.3.0 not attempted".into())))
            .collect()
    }

    /// Whether the MX RRset of `domain` is known to be genuine for RFC 8689 §4.2.1:
    /// signed and validated (asked of the DANE resolver, which alone reports DNSSEC;
    /// without `[outbound] dane` nothing is known to be validated). The relay host and
    /// an address literal involve no MX lookup: true.
    async fn mx_validated(&self, domain: &str, plan: &Plan) -> bool {
        if plan.relayed || domain.starts_with('[') {
            return true;
        }
        match &self.config.dane {
            Some(dane) => match dane.mx_security(domain).await {
                Ok(security) => security == dns_mx::Security::Secure,
                Err(e) => {
                    debug!(domain, error = %e, "REQUIRETLS: the MX RRset could not be validated");
                    false
                }
            },
            None => false,
        }
    }

    /// Each host with how TLS is decided for it: DANE's answer when DANE is on (and
    /// the destination is a domain reached by MX, not through the relay host nor an
    /// address literal), else [`HostTls::Default`]. A failed lookup is recorded
    /// (`dnssec-invalid`) and the host will be skipped.
    async fn dane_hosts(
        &self,
        hosts: Vec<MxHost>,
        domain: &str,
        plan: &Plan,
    ) -> Vec<(MxHost, HostTls)> {
        let dane = match &self.config.dane {
            Some(dane) if !plan.relayed && !domain.starts_with('[') => dane,
            _ => return hosts.into_iter().map(|h| (h, HostTls::Default)).collect(),
        };
        // The hosts' lookups at once: the slowest bounds the wait, not their sum.
        let mut lookups = tokio::task::JoinSet::new();
        for (i, host) in hosts.iter().enumerate() {
            if host.addresses.is_empty() || host.name.starts_with('[') {
                continue;
            }
            let port = self.host_port(plan, &host.name);
            let (dane, domain, name) = (dane.clone(), domain.to_owned(), host.name.clone());
            lookups.spawn(async move { (i, dane.policy(&domain, &name, port).await) });
        }
        let mut answers = vec![None; hosts.len()];
        while let Some(joined) = lookups.join_next().await {
            if let Ok((i, answer)) = joined {
                answers[i] = Some(answer);
            }
        }
        let mut planned = Vec::with_capacity(hosts.len());
        for (host, answer) in hosts.into_iter().zip(answers) {
            if host.addresses.is_empty() || host.name.starts_with('[') {
                planned.push((host, HostTls::Default));
                continue;
            }
            // A lookup that did not finish (its task failed) is a failed lookup.
            let answer = answer.unwrap_or_else(|| {
                Err(RouteError::Dane(format!(
                    "DANE: the lookup for {} did not finish",
                    host.name
                )))
            });
            let tls = match answer {
                Ok(Some(records)) => self.dane_host(domain, &host.name, records),
                Ok(None) => {
                    debug!(domain, host = %host.name, "no DANE for this host");
                    HostTls::Default
                }
                Err(e) => {
                    self.report_dane(domain, &host.name, ResultType::DnssecInvalid, e.to_string());
                    let (code, status) = e.status();
                    HostTls::Skip(format!("{code} {status} {e}"))
                }
            };
            planned.push((host, tls));
        }
        planned
    }

    /// The TLS settings for `host`, whose secure TLSA RRset is `records`. A set with no
    /// record usable for SMTP is recorded (`tlsa-invalid`): TLS stays mandatory, not
    /// authenticated (RFC 7672 §2.2).
    fn dane_host(&self, domain: &str, host: &str, mut records: Vec<TlsaRecord>) -> HostTls {
        records.sort_by(|a, b| {
            (a.usage, a.selector, a.matching, &a.data)
                .cmp(&(b.usage, b.selector, b.matching, &b.data))
        });
        let summary = PolicySummary {
            policy_string: records.iter().map(presentation).collect(),
            mx_host: vec![host.to_owned()],
        };
        let tlsa = records
            .iter()
            .map(|r| Tlsa::new(r.usage, r.selector, r.matching, r.data.clone()))
            .collect();
        let tls = match DaneTls::new(tlsa, &[host, domain]) {
            Ok(tls) => tls,
            Err(e) => {
                return HostTls::Skip(format!("451 4.7.5 DANE: cannot set up TLS for {host}: {e}"));
            }
        };
        if !tls.is_authenticated() {
            self.reports.applied(domain, PolicyType::Tlsa, &summary);
            self.report_dane(
                domain,
                host,
                ResultType::TlsaInvalid,
                format!(
                    "none of the {} TLSA records of {host} is usable for SMTP (RFC 7672 \
                     §3.1: DANE-TA or DANE-EE): TLS is required but not authenticated",
                    records.len()
                ),
            );
        }
        let trust_anchor = records.iter().any(|r| r.usage == Tlsa::DANE_TA);
        let key = DaneKey {
            records,
            domain: trust_anchor.then(|| domain.to_ascii_lowercase()),
        };
        HostTls::Dane(Arc::new(DaneHost {
            tls,
            key: Arc::new(key),
            summary,
        }))
    }

    /// Records a DANE failure at `host` (policy type `tlsa`).
    fn report_dane(&self, domain: &str, host: &str, result_type: ResultType, detail: String) {
        let session = ReportedSession::default();
        self.report_dane_in(domain, host, result_type, detail, &session);
    }

    /// Records a DANE failure at `host` on the connection `session` tells of (TLS-RPT
    /// `sending-mta-ip`, `receiving-ip`, `receiving-mx-helo`).
    fn report_dane_in(
        &self,
        domain: &str,
        host: &str,
        result_type: ResultType,
        detail: String,
        session: &ReportedSession,
    ) {
        let event = TlsReportEvent {
            domain: domain.to_owned(),
            policy_type: PolicyType::Tlsa,
            mode: None,
            result_type,
            mx_host: host.to_owned(),
            receiving_ip: None,
            sending_mta_ip: None,
            receiving_mx_helo: None,
            detail,
            at: std::time::SystemTime::now(),
        };
        self.reports.record(event.in_session(session));
    }

    /// The MX hosts MTA-STS allows (RFC 8461 §4.1): in `enforce` those the policy
    /// lists, and when none is listed the text the mail waits with; in `testing` all,
    /// the unlisted ones recorded. A host under DANE is not MTA-STS's to judge (RFC
    /// 8461 §2): it is kept.
    fn sts_hosts(
        &self,
        hosts: Vec<(MxHost, HostTls)>,
        sts: StsUse<'_>,
    ) -> Result<Vec<(MxHost, HostTls)>, String> {
        type Planned = Vec<(MxHost, HostTls)>;
        let (StsUse::Policy(domain, policy), Some(state)) = (sts, &self.sts) else {
            return Ok(hosts);
        };
        let (listed, unlisted): (Planned, Planned) = hosts
            .into_iter()
            .partition(|(h, tls)| matches!(tls, HostTls::Dane(_)) || policy.matches(&h.name));
        for (host, _) in &unlisted {
            state.report(
                domain,
                policy,
                ResultType::ValidationFailure,
                &host.name,
                format!(
                    "MX host {} is not in the MTA-STS policy of {domain} (mx: {})",
                    host.name,
                    policy.mx.join(", ")
                ),
            );
        }
        match policy.mode {
            Mode::Enforce if listed.is_empty() => Err(format!(
                "451 4.7.5 MTA-STS: no MX of {domain} matches its policy (mx: {}; MX hosts: {})",
                policy.mx.join(", "),
                unlisted
                    .iter()
                    .map(|(h, _)| h.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            Mode::Enforce => Ok(listed),
            // Testing: every host, in the order of preference.
            _ => {
                let mut all: Planned = listed.into_iter().chain(unlisted).collect();
                all.sort_by_key(|(h, _)| h.preference);
                Ok(all)
            }
        }
    }

    /// The request's recipients (positions in `request.recipients`) by the envelope
    /// sender they leave with: the SRS form for forwarded ones ([`Forwarding`]), `None`
    /// (the message's own) for the others. One group with `None` without forwarding.
    fn by_sender(&self, request: &DeliveryRequest) -> Vec<(Option<String>, Vec<usize>)> {
        let all = (0..request.recipients.len()).collect();
        let Some(forwarding) = &self.config.forwarding else {
            return vec![(None, all)];
        };
        let meta = &request.message;
        let mut groups: Vec<(Option<String>, Vec<usize>)> = Vec::new();
        for (p, &i) in request.recipients.iter().enumerate() {
            let orcpt = meta.recipients.get(i).and_then(|r| r.dsn.orcpt.as_ref());
            let sender = forwarding.sender(&meta.from, orcpt);
            match groups.iter_mut().find(|(s, _)| *s == sender) {
                Some((_, positions)) => positions.push(p),
                None => groups.push((sender, vec![p])),
            }
        }
        if groups.is_empty() {
            return vec![(None, all)];
        }
        groups
    }

    /// Sends `message` (`n` recipients) to the first of `hosts` that takes it: one
    /// outcome for each recipient.
    async fn send(
        &self,
        hosts: &[(MxHost, HostTls)],
        message: &OutboundMessage,
        n: usize,
        sts: StsUse<'_>,
        require: Require,
        plan: &Plan,
    ) -> Vec<Outcome> {
        let domain = plan.domain.as_str();
        if message.recipients.len() != n {
            return vec![
                Outcome::Failed("550 5.1.3 invalid recipient address in the queue".into());
                n
            ];
        }
        if let Require::Tls { mx_validated } = require {
            return self
                .send_requiretls(hosts, message, n, sts, mx_validated, plan)
                .await;
        }
        // The last failure: its text, and whether it is permanent.
        let mut last_error: Option<(String, bool)> = None;
        for (host, tls) in hosts.iter().filter(|(h, _)| !h.addresses.is_empty()) {
            if let HostTls::Skip(text) = tls {
                // RFC 7672 §2.2.3: a host whose TLSA lookup failed is not tried.
                last_error = Some((format!("{}: {text}", host.name), false));
                continue;
            }
            // An MX policy's leave, limits and connection settings.
            let turn = match self.mx_turn(plan, host).await {
                Ok(turn) => turn,
                Err(text) => {
                    last_error = Some((format!("{}: {text}", host.name), false));
                    continue;
                }
            };
            let span = info_span!("smtp.out", host = %host.name, preference = host.preference);
            let sent = self
                .deliver_to(host, tls, message, sts, require, turn_plan(&turn, plan))
                .instrument(span)
                .await;
            match &sent {
                Ok((_, replies)) => self.noted(plan, turn, Ok(replies)),
                Err(e) => self.noted(plan, turn, Err(Some(e))),
            }
            match sent {
                Ok((address, replies)) => {
                    let route = self.route(host, address, domain, plan);
                    return replies.iter().map(|r| outcome(&route, r)).collect();
                }
                Err(e) => {
                    let name = &host.name;
                    let text = match (tls, sts) {
                        (HostTls::Dane(_), _) => format!("{name}: DANE: {}", e.reply()),
                        (_, StsUse::Policy(_, p)) if p.mode == Mode::Enforce => format!(
                            "{name}: MTA-STS policy of {domain} (enforce): {}",
                            e.reply()
                        ),
                        _ => format!("{name}: {}", e.reply()),
                    };
                    last_error = Some((text, e.is_permanent()));
                }
            }
        }
        match last_error {
            Some((text, permanent)) => {
                let outcome = if permanent {
                    Outcome::Failed(text)
                } else {
                    Outcome::Deferred(text)
                };
                vec![outcome; n]
            }
            None => {
                vec![Outcome::Deferred(format!("no address for any mail exchanger of {domain}")); n]
            }
        }
    }

    /// [`Remote::send`] for a REQUIRETLS message (RFC 8689 §4.2.1): each host that
    /// meets the requirements in turn. All failing them: the message is returned with
    /// the last host's reason; a host that could not be asked at all (or whose DANE
    /// lookup failed) makes it wait instead, as it may qualify later.
    async fn send_requiretls(
        &self,
        hosts: &[(MxHost, HostTls)],
        message: &OutboundMessage,
        n: usize,
        sts: StsUse<'_>,
        mx_validated: bool,
        plan: &Plan,
    ) -> Vec<Outcome> {
        let domain = plan.domain.as_str();
        let mut unqualified: Option<String> = None;
        let mut transient: Option<String> = None;
        for (host, tls) in hosts.iter().filter(|(h, _)| !h.addresses.is_empty()) {
            if let HostTls::Skip(text) = tls {
                transient = Some(format!("{}: {text}", host.name));
                continue;
            }
            let turn = match self.mx_turn(plan, host).await {
                Ok(turn) => turn,
                Err(text) => {
                    transient = Some(format!("{}: {text}", host.name));
                    continue;
                }
            };
            let span = info_span!("smtp.out", host = %host.name, preference = host.preference);
            let sent = self
                .deliver_requiretls(
                    host,
                    tls,
                    message,
                    sts,
                    mx_validated,
                    turn_plan(&turn, plan),
                )
                .instrument(span)
                .await;
            match &sent {
                Ok((_, replies)) => self.noted(plan, turn, Ok(replies)),
                Err(RequireTlsError::Client(e)) => self.noted(plan, turn, Err(Some(e))),
                Err(RequireTlsError::Unqualified(_)) => self.noted(plan, turn, Err(None)),
            }
            match sent {
                Ok((address, replies)) => {
                    let route = self.route(host, address, domain, plan);
                    return replies.iter().map(|r| outcome(&route, r)).collect();
                }
                Err(RequireTlsError::Unqualified(text)) => {
                    info!(domain, host = %host.name, "{text}");
                    unqualified = Some(format!("{}: {text}", host.name));
                }
                Err(RequireTlsError::Client(e)) => {
                    let text = format!("{}: {}", host.name, e.reply());
                    if e.is_permanent() {
                        unqualified = Some(text);
                    } else {
                        transient = Some(text);
                    }
                }
            }
        }
        match (transient, unqualified) {
            (Some(text), _) => vec![Outcome::Deferred(text); n],
            (None, Some(text)) => vec![Outcome::Failed(text); n],
            (None, None) => {
                vec![Outcome::Deferred(format!("no address for any mail exchanger of {domain}")); n]
            }
        }
    }

    /// One host for a REQUIRETLS message: checks the MX is vouched for, opens (or
    /// reuses) a session whose certificate was authenticated (DANE, else WebPKI for the
    /// host's name: no opportunistic fallback), and sends only if the server offers
    /// REQUIRETLS under TLS.
    async fn deliver_requiretls(
        &self,
        host: &MxHost,
        tls: &HostTls,
        message: &OutboundMessage,
        sts: StsUse<'_>,
        mx_validated: bool,
        plan: &Plan,
    ) -> Result<(SocketAddr, Vec<Reply>), RequireTlsError> {
        let domain = plan.domain.as_str();
        let name = &host.name;
        let key = plan.pool_key(name);
        let dane = match tls {
            HostTls::Dane(dane) => Some(dane),
            _ => None,
        };
        // A host under DANE was reached through a validated MX RRset.
        let in_policy = matches!(sts, StsUse::Policy(_, p) if p.matches(name));
        if dane.is_none() && !mx_validated && !in_policy {
            return Err(RequireTlsError::Unqualified(format!(
                "550 5.7.10 REQUIRETLS: {name} is not a validated MX host of {domain} (the MX \
                 record is not DNSSEC-validated and no MTA-STS policy lists the host)"
            )));
        }
        if dane.is_some_and(|d| !d.tls.is_authenticated()) {
            return Err(RequireTlsError::Unqualified(format!(
                "550 5.7.10 REQUIRETLS: no TLSA record of {name} is usable, so the server \
                 cannot be authenticated"
            )));
        }
        let need = match dane {
            Some(dane) => Checked::Dane(Arc::clone(&dane.key)),
            None => Checked::Name,
        };
        if let Some((mut session, checked)) = self.take_idle(&key, &need) {
            if session.offers_requiretls() {
                match session.deliver(message).await {
                    Ok(replies) => {
                        let address = session.address();
                        self.put_idle(session, checked, &key);
                        return Ok((address, replies));
                    }
                    Err(e) => {
                        debug!(host = %name, error = %e, "reused connection failed; reconnecting")
                    }
                }
            } else {
                self.put_idle(session, checked, &key);
            }
        }
        let enforce = matches!(sts, StsUse::Policy(_, p) if p.mode == Mode::Enforce);
        let opened = match dane {
            Some(dane) => self.open_dane(host, dane, domain, plan).await,
            // Verified for the name, failures recorded as MTA-STS's.
            None if enforce => self.open(host, sts, plan).await,
            None => Session::open(name, &host.addresses, &plan.verified)
                .await
                .map(|s| (s, Checked::Name)),
        };
        let (mut session, checked) = match opened {
            Ok(opened) => opened,
            Err(e @ ClientError::Tls { .. }) => {
                return Err(RequireTlsError::Unqualified(format!(
                    "550 5.7.10 REQUIRETLS: no authenticated TLS with {name}: {}",
                    e.reply().text().replace('\n', " ")
                )));
            }
            Err(e) => return Err(RequireTlsError::Client(e)),
        };
        if !session.offers_requiretls() {
            self.put_idle(session, checked, &key);
            return Err(RequireTlsError::Unqualified(format!(
                "550 5.7.30 REQUIRETLS support required: {name} does not offer REQUIRETLS"
            )));
        }
        let replies = session
            .deliver(message)
            .await
            .map_err(RequireTlsError::Client)?;
        let address = session.address();
        self.put_idle(session, checked, &key);
        Ok((address, replies))
    }

    /// How a message reached `host` at `address`, for the log and `mta queue`:
    /// `mx1.example.test[192.0.2.1]:25 (MX 10 of example.test)`.
    fn route(&self, host: &MxHost, address: SocketAddr, domain: &str, plan: &Plan) -> String {
        let how = if plan.relayed {
            "the relay host".to_owned()
        } else if host.name.starts_with('[') {
            "an address literal".to_owned()
        } else if host.name.eq_ignore_ascii_case(domain) && host.preference == 0 {
            format!("no MX: the address of {domain}")
        } else {
            format!("MX {} of {domain}", host.preference)
        };
        let name = host.name.trim_matches(['[', ']']);
        format!("{name}[{}]:{} ({how})", address.ip(), address.port())
    }

    /// One host: a reused connection when there is one, else a new one. Returns the
    /// address the message went to, and the replies.
    async fn deliver_to(
        &self,
        host: &MxHost,
        tls: &HostTls,
        message: &OutboundMessage,
        sts: StsUse<'_>,
        require: Require,
        plan: &Plan,
    ) -> Result<(SocketAddr, Vec<Reply>), ClientError> {
        let domain = plan.domain.as_str();
        let key = plan.pool_key(&host.name);
        // Under DANE, only a connection checked against the same records; under
        // `enforce`, only one whose certificate was verified for the name.
        let need = match tls {
            HostTls::Dane(dane) => Checked::Dane(Arc::clone(&dane.key)),
            _ if matches!(sts, StsUse::Policy(_, p) if p.mode == Mode::Enforce) => Checked::Name,
            _ => Checked::Nothing,
        };
        if let Some((mut session, checked)) = self.take_idle(&key, &need) {
            match session.deliver(message).await {
                Ok(replies) => {
                    let address = session.address();
                    self.put_idle(session, checked, &key);
                    return Ok((address, replies));
                }
                // The server may have closed it while it waited: open a new one.
                Err(e) => {
                    debug!(host = %host.name, error = %e, "reused connection failed; reconnecting")
                }
            }
        }
        let (mut session, checked) = match tls {
            HostTls::Dane(dane) => match self.open_dane(host, dane, domain, plan).await {
                // TLS-Required: No: the DANE failure is recorded; opportunistic TLS.
                Err(e @ ClientError::Tls { .. }) if matches!(require, Require::Optional) => {
                    info!(host = %host.name, error = %e, "TLS-Required: No: DANE failed; trying opportunistic TLS");
                    self.open(host, StsUse::Off, plan).await?
                }
                opened => opened?,
            },
            _ => self.open(host, sts, plan).await?,
        };
        let replies = session.deliver(message).await?;
        let address = session.address();
        self.put_idle(session, checked, &key);
        Ok((address, replies))
    }

    /// A new session to `host` under DANE: STARTTLS mandatory, the certificate judged
    /// by the TLSA records (whatever `[outbound] tls` and MTA-STS say). A TLS failure
    /// is recorded (`validation-failure`, `starttls-not-supported`) and returned: the
    /// mail never goes in plaintext, nor to a certificate the records do not match.
    async fn open_dane(
        &self,
        host: &MxHost,
        dane: &DaneHost,
        domain: &str,
        plan: &Plan,
    ) -> Result<(Session, Checked), ClientError> {
        let mut config = plan.outbound.clone();
        config.dane = Some(dane.tls.clone());
        let mut reported = ReportedSession::default();
        match Session::open_reporting(&host.name, &host.addresses, &config, &mut reported).await {
            Ok(session) => {
                info!(
                    domain,
                    host = %host.name,
                    authenticated = dane.tls.is_authenticated(),
                    "DANE: TLS checked against the TLSA records of {}",
                    host.name
                );
                if dane.tls.is_authenticated() {
                    self.reports
                        .success(domain, PolicyType::Tlsa, &dane.summary);
                }
                Ok((session, Checked::Dane(Arc::clone(&dane.key))))
            }
            Err(e @ ClientError::Tls { .. }) => {
                let result_type = match ResultType::of(&e) {
                    ResultType::StarttlsNotSupported => ResultType::StarttlsNotSupported,
                    _ => ResultType::ValidationFailure,
                };
                self.reports
                    .applied(domain, PolicyType::Tlsa, &dane.summary);
                self.report_dane_in(domain, &host.name, result_type, e.to_string(), &reported);
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    /// A new session to `host` as MTA-STS asks; with whether its certificate was
    /// verified for the host's name. `enforce`: TLS required and verified, a failure
    /// is recorded and returned. `testing`: the same is tried first; when TLS fails
    /// the failure is recorded and the host is tried again as without a policy.
    async fn open(
        &self,
        host: &MxHost,
        sts: StsUse<'_>,
        plan: &Plan,
    ) -> Result<(Session, Checked), ClientError> {
        let plain = &plan.outbound;
        // `tls_name`: verified for that name, so not for the host's (as MTA-STS needs).
        let name = plan.tls_name(&host.name);
        let required = if plain.tls == TlsPolicy::Required && name == host.name {
            Checked::Name
        } else {
            Checked::Nothing
        };
        let (StsUse::Policy(domain, policy), Some(state)) = (sts, &self.sts) else {
            return Session::open(name, &host.addresses, plain)
                .await
                .map(|s| (s, required));
        };
        if policy.mode == Mode::Testing && plain.tls == TlsPolicy::Disabled {
            return Session::open(&host.name, &host.addresses, plain)
                .await
                .map(|s| (s, Checked::Nothing));
        }
        let mut reported = ReportedSession::default();
        let verified = &plan.verified;
        match Session::open_reporting(&host.name, &host.addresses, verified, &mut reported).await {
            Ok(session) => {
                state.success(domain, policy);
                Ok((session, Checked::Name))
            }
            Err(e @ ClientError::Tls { .. }) => {
                state.report_in(
                    domain,
                    policy,
                    ResultType::of(&e),
                    &host.name,
                    e.to_string(),
                    &reported,
                );
                match policy.mode {
                    Mode::Enforce => Err(e),
                    _ => Session::open(name, &host.addresses, plain)
                        .await
                        .map(|s| (s, required)),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// An idle session under `key` ([`Plan::pool_key`]) checked as `need` asks (any,
    /// for [`Checked::Nothing`]).
    fn take_idle(&self, key: &str, need: &Checked) -> Option<(Session, Checked)> {
        let mut sessions = self.idle.lock();
        let list = sessions.get_mut(key)?;
        let i = list.iter().rposition(|(_, _, c)| c.satisfies(need))?;
        let (_, session, checked) = list.remove(i);
        Some((session, checked))
    }

    /// Keeps `session` for the next message to its host, for `idle_timeout`: then a
    /// timer says QUIT and closes it (the server need not time us out).
    fn put_idle(&self, session: Session, checked: Checked, key: &str) {
        if session.transactions >= self.config.max_messages_per_connection {
            tokio::spawn(close(session));
            return;
        }
        let n = self
            .idle
            .next
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.idle
            .lock()
            .entry(key.to_owned())
            .or_default()
            .push((n, session, checked));
        let pool = Arc::downgrade(&self.idle);
        let wait = self.config.idle_timeout;
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            let session = pool.upgrade().and_then(|pool| pool.remove(n));
            if let Some(session) = session {
                debug!(host = session.host(), "idle connection closed");
                close(session).await;
            }
        });
    }

    /// Says QUIT on every idle connection and closes it (at shutdown).
    pub async fn close_idle(&self) {
        let sessions: Vec<Session> = self
            .idle
            .lock()
            .drain()
            .flat_map(|(_, list)| list.into_iter().map(|(_, session, _)| session))
            .collect();
        let closing: Vec<_> = sessions
            .into_iter()
            .map(|s| tokio::spawn(close(s)))
            .collect();
        for c in closing {
            let _ = c.await;
        }
    }
}

/// The plan of an attempt: the MX policy's when it is under one, else the domain's.
fn turn_plan<'a>(turn: &'a Option<MxTurn>, plan: &'a Plan) -> &'a Plan {
    turn.as_ref().map_or(plan, |t| &t.plan)
}

/// The most of a message searched for its header section's end by [`tls_required_no`].
const HEAD_SCAN_LIMIT: usize = 1 << 20;

/// Whether the header section of `message` has the field `TLS-Required: No` (RFC 8689
/// §3; the name and, here, the value compared without case; folded lines unfolded).
fn tls_required_no(message: &[u8]) -> bool {
    let is = |field: &[u8]| {
        field.iter().position(|&b| b == b':').is_some_and(|colon| {
            let (name, value) = field.split_at(colon);
            name.trim_ascii().eq_ignore_ascii_case(b"TLS-Required")
                && value[1..].trim_ascii().eq_ignore_ascii_case(b"No")
        })
    };
    let head = &message[..message.len().min(HEAD_SCAN_LIMIT)];
    let mut field: Vec<u8> = Vec::new();
    for line in head.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if matches!(line.first(), Some(b' ' | b'\t')) {
            field.extend_from_slice(line);
            continue;
        }
        if is(&field) {
            return true;
        }
        if line.is_empty() {
            return false;
        }
        field.clear();
        field.extend_from_slice(line);
    }
    false
}

/// `sent to ROUTE: 250 2.0.0 Ok`, or the reply as failed or deferred by its class. A
/// message sent on is the next server's to report on (NOTIFY went with it).
fn outcome(route: &str, reply: &Reply) -> Outcome {
    let text = format!("{route}: {}", reply.to_string().replace('\n', " "));
    if reply.is_positive_completion() {
        Outcome::Sent(format!("sent to {text}"))
    } else if reply.is_permanent() {
        Outcome::Failed(text)
    } else {
        Outcome::Deferred(text)
    }
}

/// A TLSA record in presentation form (`3 1 1 <hex>`), as a TLS report's
/// `policy-string` lists them (RFC 8460 §4.4).
fn presentation(record: &TlsaRecord) -> String {
    let hex: String = record.data.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{} {} {} {hex}",
        record.usage, record.selector, record.matching
    )
}

/// The envelope of a queued message, for SMTP.
fn outbound_message(meta: &MessageMeta, indexes: &[usize], body: &Bytes) -> OutboundMessage {
    let from = if meta.from.is_empty() {
        ReversePath::Null
    } else {
        ReversePath::parse(&format!("<{}>", meta.from)).unwrap_or(ReversePath::Null)
    };
    let p = &meta.params;
    let params = MailParameters {
        body: match p.body {
            mail_queue::BodyType::SevenBit => None,
            mail_queue::BodyType::EightBitMime | mail_queue::BodyType::BinaryMime => {
                Some(Body::EightBitMime)
            }
        },
        smtputf8: p.smtputf8,
        ret: p
            .ret
            .map(|hdrs| if hdrs { Ret::Headers } else { Ret::Full }),
        envid: p.envid.clone(),
        requiretls: p.requiretls,
        // Passed on as RFC 6710 §4.2 asks (the client sends it only where offered).
        mt_priority: (p.priority() != 0).then(|| p.priority()),
        ..MailParameters::default()
    };
    let recipients = indexes
        .iter()
        .filter_map(|&i| meta.recipients.get(i))
        .filter_map(|r| {
            let to = ForwardPath::parse(&format!("<{}>", r.address)).ok()?;
            let notify = r.dsn.notify.map(|bits| {
                [
                    (1, Notify::SUCCESS),
                    (2, Notify::FAILURE),
                    (4, Notify::DELAY),
                ]
                .iter()
                .filter(|(bit, _)| bits & bit != 0)
                .fold(Notify::NEVER, |n, (_, flag)| n.union(*flag))
            });
            let orcpt = r
                .dsn
                .orcpt
                .as_ref()
                .map(|(addr_type, address)| OriginalRecipient {
                    addr_type: addr_type.clone(),
                    address: address.clone(),
                });
            Some((to, RcptParameters { notify, orcpt }))
        })
        .collect();
    OutboundMessage {
        from,
        params,
        recipients,
        body: body.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(data: u8, domain: Option<&str>) -> Arc<DaneKey> {
        Arc::new(DaneKey {
            records: vec![TlsaRecord {
                usage: 3,
                selector: 1,
                matching: 1,
                data: vec![data; 32],
            }],
            domain: domain.map(str::to_owned),
        })
    }

    /// A kept-open session carries a delivery only if it was checked as that delivery
    /// needs: DANE sessions only for the same records (and domain, with DANE-TA).
    #[test]
    fn sessions_are_reused_only_under_the_same_requirement() {
        let dane = Checked::Dane(key(1, None));
        let table = [
            (Checked::Nothing, Checked::Nothing, true),
            (Checked::Name, Checked::Nothing, true),
            (dane.clone(), Checked::Nothing, true),
            (Checked::Nothing, Checked::Name, false),
            (Checked::Name, Checked::Name, true),
            (dane.clone(), Checked::Name, false),
            (Checked::Nothing, dane.clone(), false),
            (Checked::Name, dane.clone(), false),
            (Checked::Dane(key(1, None)), dane.clone(), true),
            (Checked::Dane(key(2, None)), dane, false),
            (
                Checked::Dane(key(1, Some("a.test"))),
                Checked::Dane(key(1, Some("b.test"))),
                false,
            ),
        ];
        for (session, need, reused) in table {
            assert_eq!(session.satisfies(&need), reused, "{session:?} for {need:?}");
        }
    }

    #[test]
    fn destination_patterns_match_the_domain_or_its_subdomains() {
        let table = [
            ("example.org", "example.org", true),
            ("example.org", "EXAMPLE.org.", true),
            ("example.org", "mx.example.org", false),
            ("*.example.org", "mx.example.org", true),
            ("*.example.org", "a.b.Example.ORG", true),
            ("*.example.org", "example.org", false),
            ("*.example.org", "badexample.org", false),
            ("*.example.org", ".example.org", false),
        ];
        for (pattern, domain, expected) in table {
            let policy = DestinationPolicy {
                pattern: pattern.to_owned(),
                ..DestinationPolicy::default()
            };
            assert_eq!(policy.matches(domain), expected, "{pattern} {domain}");
        }
    }

    fn entry(pattern: &str, on: MatchOn, port: u16) -> DestinationPolicy {
        DestinationPolicy {
            pattern: pattern.to_owned(),
            on,
            port: Some(port),
            ..DestinationPolicy::default()
        }
    }

    /// Domain entries are compared with the recipient domain only, MX entries with MX
    /// host names only (never an address literal); the first of each kind wins.
    #[test]
    fn domain_and_mx_entries_match_their_own_names() {
        let policies = [
            entry("*.protection.example", MatchOn::MxHost, 1),
            entry("mail.protection.example", MatchOn::Domain, 2),
            entry("mx.protection.example", MatchOn::MxHost, 3),
            entry("example.org", MatchOn::Domain, 4),
            entry("*.example.org", MatchOn::Domain, 5),
        ];
        let domain = |name| domain_policy(&policies, name).and_then(|p| p.port);
        let mx = |name| mx_policy(&policies, name).and_then(|p| p.port);
        // The first MX entry that matches, not the more specific one after it.
        assert_eq!(mx("mx.protection.example"), Some(1));
        assert_eq!(mx("A.B.Protection.Example."), Some(1));
        // A domain entry never matches an MX host, nor an MX entry a domain.
        assert_eq!(mx("mail.protection.example"), Some(1));
        assert_eq!(domain("mail.protection.example"), Some(2));
        assert_eq!(domain("x.protection.example"), None);
        assert_eq!(mx("example.org"), None);
        assert_eq!(mx("protection.example"), None);
        assert_eq!(domain("example.org"), Some(4));
        assert_eq!(domain("sub.example.org"), Some(5));
        assert_eq!(mx("[192.0.2.1]"), None);
    }

    /// The connection settings under an MX entry: the domain entry's, key by key, over
    /// the MX entry's; limits are each entry's own and not merged.
    #[test]
    fn a_domain_entry_wins_over_an_mx_entry_key_by_key() {
        let mx = DestinationPolicy {
            pattern: "*.mx.example".into(),
            on: MatchOn::MxHost,
            tls: Some(TlsPolicy::Required),
            tls_name: Some("cert.mx.example".into()),
            port: Some(2525),
            max_connections: Some(1),
            max_messages_per_minute: Some(10),
            helo: Some("mx-helo.test".into()),
            ..DestinationPolicy::default()
        };
        let alone = merged(None, &mx);
        assert_eq!(alone.tls, Some(TlsPolicy::Required));
        assert_eq!(alone.tls_name.as_deref(), Some("cert.mx.example"));
        assert_eq!(alone.port, Some(2525));
        assert_eq!(alone.helo.as_deref(), Some("mx-helo.test"));
        let domain = DestinationPolicy {
            pattern: "example.org".into(),
            port: Some(587),
            helo: Some("domain-helo.test".into()),
            max_connections: Some(7),
            ..DestinationPolicy::default()
        };
        let both = merged(Some(&domain), &mx);
        assert_eq!(both.port, Some(587));
        assert_eq!(both.helo.as_deref(), Some("domain-helo.test"));
        assert_eq!(both.tls, Some(TlsPolicy::Required));
        assert_eq!(both.tls_name.as_deref(), Some("cert.mx.example"));
        assert_eq!(
            (both.max_connections, both.max_messages_per_minute),
            (None, None)
        );
        assert_eq!(both.on, MatchOn::MxHost);
    }

    #[test]
    fn tls_required_no_is_read_from_the_header_only() {
        let table: [(&[u8], bool); 8] = [
            (b"Subject: x\r\nTLS-Required: No\r\n\r\nbody\r\n", true),
            (b"tls-required:   no  \r\n\r\n", true),
            (b"TLS-Required:\r\n No\r\n\r\n", true),
            (b"Subject: x\nTLS-Required: No\n\nbody\n", true),
            (b"TLS-Required: Yes\r\n\r\n", false),
            (b"X-TLS-Required: No\r\n\r\n", false),
            (b"Subject: x\r\n\r\nTLS-Required: No\r\n", false),
            (b"Subject: TLS-Required: No\r\n\r\n", false),
        ];
        for (message, expected) in table {
            assert_eq!(
                tls_required_no(message),
                expected,
                "{}",
                String::from_utf8_lossy(message)
            );
        }
    }

    #[test]
    fn tlsa_records_are_written_in_presentation_form() {
        let record = TlsaRecord {
            usage: 3,
            selector: 1,
            matching: 1,
            data: vec![0xab, 0x01],
        };
        assert_eq!(presentation(&record), "3 1 1 ab01");
    }
}
