//! Reverse DNS of the client: the names of its address (PTR), and whether one of them
//! resolves back to it (forward-confirmed reverse DNS, FCrDNS).
//!
//! ```text
//!  connect ──▶ PTR of the address ──▶ A/AAAA of each name (at most 4), in the background
//!                                      └─▶ smtp_server::ClientName in the connection's notes
//!  RCPT ◀──── the result, within the session's DNS time budget (shared with the lists)
//!              enforce: 450 4.7.25 Client host rejected: cannot find your hostname, [IP]
//! ```
//!
//! [`ReverseDns::lookup`] does the lookups on its own; with the `layers` feature,
//! [`RdnsFilter`] runs them as stage layers and leaves the result where `Received:`
//! (smtp-server's filter) and every later filter find it.

use std::net::IpAddr;
use std::sync::Arc;

use hickory_resolver::proto::rr::RecordType;

use crate::dns::{Answer, Dns, Value, is_host_name};
use crate::stats::{DnsStats, RdnsKind};
use crate::verify::Verifier;

/// Most PTR names whose addresses are looked up (Postfix looks at the first only;
/// a few cover hosts with several names).
pub const MAX_NAMES: usize = 4;

/// The reverse DNS of an address.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReverseName {
    /// The names of the address (PTR), valid host names only, lower case.
    pub names: Vec<String>,
    /// The first of them that resolves back to the address.
    pub confirmed: Option<String>,
    /// Whether a lookup failed (a DNS error, or no answer in time): the result may be
    /// incomplete, and is not held against the client.
    pub temporary: bool,
}

impl ReverseName {
    /// The name to show: the confirmed one, else the first PTR name.
    pub fn name(&self) -> Option<&str> {
        self.confirmed
            .as_deref()
            .or(self.names.first().map(String::as_str))
    }
}

/// Reverse-DNS lookups through the checks' resolver and negative cache.
///
/// ```no_run
/// # async fn example(verifier: auth_checks::Verifier) {
/// use auth_checks::ReverseDns;
/// let rdns = ReverseDns::new(&verifier);
/// let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
/// let found = rdns.lookup("192.0.2.1".parse().unwrap(), deadline).await;
/// println!("{:?} confirmed: {}", found.name(), found.confirmed.is_some());
/// # }
/// ```
#[derive(Clone)]
pub struct ReverseDns {
    dns: Dns,
    stats: Arc<DnsStats>,
}

impl std::fmt::Debug for ReverseDns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReverseDns")
    }
}

impl ReverseDns {
    /// Lookups through `verifier`'s resolver and negative cache.
    pub fn new(verifier: &Verifier) -> Self {
        Self {
            dns: Dns::new(verifier),
            stats: Arc::default(),
        }
    }

    /// Counts results in `stats`.
    pub fn count_into(mut self, stats: Arc<DnsStats>) -> Self {
        self.stats = stats;
        self
    }

    /// The names of `ip` and the first that resolves back to it, as far as known by
    /// `deadline`. Counted in the stats. Answered at once, without a query, when the
    /// answers it needs are all cached (within their TTL).
    pub async fn lookup(&self, ip: IpAddr, deadline: tokio::time::Instant) -> ReverseName {
        if let Some(found) = self.cached(ip) {
            return found;
        }
        let found = self.resolve(unmapped(ip), deadline).await;
        self.count(&found);
        found
    }

    /// The result of [`lookup`](Self::lookup) when every answer it needs (the PTR
    /// names, and the addresses of each) is in the cache within its TTL, computed
    /// without a query or a task; `None` otherwise. Counted in the stats when found.
    pub(crate) fn cached(&self, ip: IpAddr) -> Option<ReverseName> {
        let ip = unmapped(ip);
        let ptr = ptr_name(ip);
        let names = ptr_names(self.dns.cached(&ptr, RecordType::PTR)?)?;
        let rtype = address_type(ip);
        let answers: Vec<(usize, Answer)> = names
            .iter()
            .enumerate()
            .map(|(i, name)| Some((i, self.dns.cached(name, rtype)?)))
            .collect::<Option<_>>()?;
        let found = confirm(ip, names, answers.into_iter().map(Some));
        self.count(&found);
        Some(found)
    }

    fn count(&self, found: &ReverseName) {
        self.stats.count_rdns(if found.confirmed.is_some() {
            RdnsKind::Confirmed
        } else if found.temporary {
            RdnsKind::TempError
        } else if found.names.is_empty() {
            RdnsKind::Missing
        } else {
            RdnsKind::Unconfirmed
        });
    }

    async fn resolve(&self, ip: IpAddr, deadline: tokio::time::Instant) -> ReverseName {
        let ptr = ptr_name(ip);
        let (answer, _) = self.dns.query(&ptr, RecordType::PTR, &ptr, deadline).await;
        let Some(names) = ptr_names(answer) else {
            return ReverseName {
                temporary: true,
                ..ReverseName::default()
            };
        };
        let rtype = address_type(ip);
        let mut tasks = tokio::task::JoinSet::new();
        for (i, name) in names.iter().enumerate() {
            let dns = self.dns.clone();
            let name = name.clone();
            tasks.spawn(async move { (i, dns.query(&name, rtype, &name, deadline).await.0) });
        }
        let mut answers = Vec::with_capacity(names.len());
        while let Some(joined) = tasks.join_next().await {
            answers.push(joined.ok());
        }
        confirm(ip, names, answers)
    }
}

/// An IPv4-mapped IPv6 address as IPv4.
fn unmapped(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

/// The record type of `ip`'s family.
fn address_type(ip: IpAddr) -> RecordType {
    match ip {
        IpAddr::V4(_) => RecordType::A,
        IpAddr::V6(_) => RecordType::AAAA,
    }
}

/// The host names of a PTR answer (valid ones, the first [`MAX_NAMES`]); `None` when
/// the lookup failed.
fn ptr_names(answer: Answer) -> Option<Vec<String>> {
    match answer {
        Answer::Found(values) => {
            let mut names: Vec<String> = values
                .into_iter()
                .filter_map(|v| match v {
                    Value::Name(n) if is_host_name(&n) => Some(n),
                    _ => None,
                })
                .collect();
            names.dedup();
            names.truncate(MAX_NAMES);
            Some(names)
        }
        Answer::NotFound => Some(Vec::new()),
        Answer::Failed | Answer::TimedOut | Answer::Skipped => None,
    }
}

/// The result from the address answers of `names` (each with the index of its name;
/// `None` for a lookup that ended without an answer): the first name, in PTR order,
/// that resolves back to `ip`.
fn confirm(
    ip: IpAddr,
    names: Vec<String>,
    answers: impl IntoIterator<Item = Option<(usize, Answer)>>,
) -> ReverseName {
    let mut confirmed: Option<usize> = None;
    let mut temporary = false;
    for answer in answers {
        let Some((i, answer)) = answer else {
            temporary = true;
            continue;
        };
        match answer {
            Answer::Found(values) => {
                let matches = values.iter().any(|v| match (v, ip) {
                    (Value::V4(a), IpAddr::V4(b)) => *a == b,
                    (Value::V6(a), IpAddr::V6(b)) => *a == b,
                    _ => false,
                });
                if matches && confirmed.is_none_or(|c| i < c) {
                    confirmed = Some(i);
                }
            }
            Answer::NotFound => {}
            Answer::Failed | Answer::TimedOut | Answer::Skipped => temporary = true,
        }
    }
    ReverseName {
        confirmed: confirmed.and_then(|i| names.get(i).cloned()),
        temporary: temporary && confirmed.is_none(),
        names,
    }
}

/// The PTR name of an address (RFC 1035 §3.5, RFC 3596 §2.5), without the final dot.
fn ptr_name(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            format!("{d}.{c}.{b}.{a}.in-addr.arpa")
        }
        IpAddr::V6(v6) => {
            let mut labels = Vec::with_capacity(33);
            for byte in v6.octets().iter().rev() {
                labels.push(format!("{:x}", byte & 0x0f));
                labels.push(format!("{:x}", byte >> 4));
            }
            labels.push("ip6.arpa".into());
            labels.join(".")
        }
    }
}

#[cfg(feature = "layers")]
pub use layers::{RdnsFilter, RdnsSettings, Require};

#[cfg(feature = "layers")]
mod layers {
    use std::sync::Arc;
    use std::time::Duration;

    use smtp_proto::EnhancedStatus;
    use smtp_server::filters::IpNetwork;
    use smtp_server::{
        AsyncCheck, Check, CheckFuture, ClientName, ConnectRequest, Decision, Filter, FilterAsync,
        Flow, ListenerMode, RcptRequest, SessionInfo, filter, filter_async,
    };
    use tracing::info;

    use super::{ReverseDns, ReverseName};
    use crate::dns::{Budget, LookupFuture, Pending};
    use crate::filter::Mode;
    use crate::stats::DnsStats;
    use crate::verify::Verifier;

    /// What `enforce` requires of a client.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
    #[serde(rename_all = "lowercase")]
    pub enum Require {
        /// A name (PTR), confirmed or not (Postfix's
        /// `reject_unknown_reverse_client_hostname`). The default.
        #[default]
        Ptr,
        /// A name that resolves back to the address (Postfix's
        /// `reject_unknown_client_hostname`).
        Confirmed,
    }

    /// The reverse-DNS settings (`[reverse_dns]`).
    ///
    /// ```
    /// let settings = auth_checks::RdnsSettings::default();
    /// assert_eq!(settings.mode, auth_checks::Mode::Tag);
    /// assert_eq!(settings.require, auth_checks::Require::Ptr);
    /// ```
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
    #[serde(default, deny_unknown_fields)]
    pub struct RdnsSettings {
        /// `off`: no lookup (`Received:` shows the address only); `tag` (default):
        /// look up, count, show the confirmed name in `Received:` (`unknown`
        /// otherwise); `enforce`: also defer every recipient of a client that lacks
        /// what `require` asks, with `450 4.7.25`. A lookup that failed (DNS trouble,
        /// no answer within the budget) is never held against the client.
        pub mode: Mode,
        /// What `enforce` requires: `ptr` (default) or `confirmed`.
        pub require: Require,
    }

    /// Reverse DNS as stage layers: the lookup starts at connect, in the background,
    /// and leaves a [`ClientName`] in the connection's notes when done; at RCPT the
    /// result is awaited within the session's DNS time budget (shared with the lists),
    /// and under `enforce` a client without a (confirmed) name is deferred. Logins,
    /// `skip_networks` and listeners other than the relay listener are looked up (for
    /// `Received:`) but neither waited for nor refused.
    ///
    /// ```no_run
    /// # fn example(verifier: auth_checks::Verifier, stages: smtp_server::Stages) {
    /// use auth_checks::{RdnsFilter, RdnsSettings};
    /// let rdns = RdnsFilter::new(&verifier, RdnsSettings::default());
    /// let stages = stages.connect_layer(rdns.connect_layer()).rcpt_layer(rdns.rcpt_layer());
    /// # }
    /// ```
    #[derive(Clone, Debug)]
    pub struct RdnsFilter {
        rdns: ReverseDns,
        settings: RdnsSettings,
        budget: Duration,
        skip: Arc<Vec<IpNetwork>>,
    }

    /// The lookup of a connection.
    #[derive(Clone, Debug)]
    struct Lookup(Pending<ReverseName>);

    impl RdnsFilter {
        /// The filter for `settings`, asking through `verifier`'s resolver and
        /// negative cache, with a DNS time budget of 5 s.
        pub fn new(verifier: &Verifier, settings: RdnsSettings) -> Self {
            Self {
                rdns: ReverseDns::new(verifier),
                settings,
                budget: Duration::from_secs(5),
                skip: Arc::default(),
            }
        }

        /// The DNS time budget of a session's defences (see
        /// [`DnsblFilter::time_budget`](crate::DnsblFilter::time_budget)).
        pub fn time_budget(mut self, budget: Duration) -> Self {
            self.budget = budget;
            self
        }

        /// Neither waits for nor refuses clients from these networks.
        pub fn skip_networks(mut self, networks: Vec<IpNetwork>) -> Self {
            self.skip = Arc::new(networks);
            self
        }

        /// Counts results in `stats`.
        pub fn count_into(mut self, stats: Arc<DnsStats>) -> Self {
            self.rdns = self.rdns.count_into(stats);
            self
        }

        /// Starts the lookup.
        pub fn connect_layer(&self) -> Filter<Self> {
            filter(self.clone())
        }

        /// Awaits the result; refuses under `enforce`.
        pub fn rcpt_layer(&self) -> FilterAsync<Self> {
            filter_async(self.clone())
        }

        /// Whether a session's client is waited for (and may be refused).
        fn waits_for(&self, session: &SessionInfo) -> bool {
            session.mode == ListenerMode::Relay
                && session.authenticated.is_none()
                && !self.skip.iter().any(|n| n.contains(session.peer.ip()))
        }
    }

    impl Check<ConnectRequest> for RdnsFilter {
        fn check(&self, request: &mut ConnectRequest) -> Option<Decision> {
            if self.settings.mode == Mode::Off {
                return None;
            }
            let session = &request.session;
            Budget::of(&session.connection);
            let ip = session.peer.ip();
            // Known (every answer cached within its TTL): answered now, no task.
            if let Some(found) = self.rdns.cached(ip) {
                session.connection.insert(ClientName {
                    name: found.name().map(str::to_owned),
                    confirmed: found.confirmed.is_some(),
                });
                session
                    .connection
                    .insert(Lookup(Pending::ready(vec![found])));
                return None;
            }
            let rdns = self.rdns.clone();
            let notes = session.connection.clone();
            let until = tokio::time::Instant::now() + self.budget;
            // The task holds the connection's notes until it ends (by `until`), to
            // leave the name there for every later filter.
            let lookup: LookupFuture<ReverseName> = Box::pin(async move {
                let found = rdns.lookup(ip, until).await;
                notes.insert(ClientName {
                    name: found.name().map(str::to_owned),
                    confirmed: found.confirmed.is_some(),
                });
                found
            });
            session
                .connection
                .insert(Lookup(Pending::spawn(vec![lookup], false)));
            None
        }
    }

    impl AsyncCheck<RcptRequest> for RdnsFilter {
        fn check(&self, request: RcptRequest) -> CheckFuture<RcptRequest> {
            let this = self.clone();
            Box::pin(async move {
                let session = &request.session;
                if this.settings.mode == Mode::Off || !this.waits_for(session) {
                    return Ok(Flow::Continue(request));
                }
                let Some(Lookup(pending)) = session.connection.get::<Lookup>() else {
                    return Ok(Flow::Continue(request));
                };
                let wait = Budget::of(&session.connection).allowance(this.budget, &request.notes);
                let (found, _) = pending.wait(wait.until).await;
                wait.done(&request.notes);
                let Some(Some(found)) = found.into_iter().next() else {
                    // No answer within the budget: not held against the client.
                    return Ok(Flow::Continue(request));
                };
                let lacking = !found.temporary
                    && match this.settings.require {
                        Require::Ptr => found.names.is_empty(),
                        Require::Confirmed => found.confirmed.is_none(),
                    };
                if this.settings.mode == Mode::Enforce && lacking {
                    let ip = session.peer.ip();
                    info!(client = %ip, names = ?found.names, "client refused: no (confirmed) reverse DNS name");
                    this.rdns.stats.count_rdns_refused();
                    return Ok(Flow::Decide(Decision::defer::<450>(
                        EnhancedStatus::REVERSE_DNS_TEMPORARY,
                        format!("Client host rejected: cannot find your hostname, [{ip}]"),
                    )));
                }
                Ok(Flow::Continue(request))
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ptr_names() {
        assert_eq!(
            ptr_name("192.0.2.1".parse().unwrap()),
            "1.2.0.192.in-addr.arpa"
        );
        assert_eq!(
            ptr_name("2001:db8::1".parse().unwrap()),
            "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa"
        );
    }
}
