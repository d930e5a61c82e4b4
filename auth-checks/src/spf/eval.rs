//! `check_host()` (RFC 7208 §4): record lookup and selection, the directives left to
//! right, `redirect=`, `exp=`, and the limits of §4.6.4.
//!
//! The directives are evaluated strictly in order (§4.6.2: the first match decides);
//! what one mechanism needs is looked up at once: the addresses of all its MX hosts, and
//! the validation of all its PTR names.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;

use super::SpfLimits;
use super::dns::{Answer, SpfDns, join_all};
use super::macros::{MacroString, Place, Values, query_name};
use super::record::{Mechanism, Qualifier, Record};
use crate::results::SpfResult;

/// What one check is about.
#[derive(Clone, Debug)]
pub(crate) struct Request<'a> {
    /// The client's address (an IPv4-mapped IPv6 address already made IPv4).
    pub(crate) ip: IpAddr,
    /// The sender's local part (`postmaster` for HELO and the null sender).
    pub(crate) local: &'a str,
    /// The sender's domain: the domain checked first.
    pub(crate) domain: &'a str,
    /// The HELO name, for `%{h}`.
    pub(crate) helo: &'a str,
    /// Our host name, for `%{r}`.
    pub(crate) receiver: &'a str,
}

/// The result, and the explanation of a `fail`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Outcome {
    pub(crate) result: SpfResult,
    pub(crate) explanation: Option<String>,
}

impl Outcome {
    fn of(result: SpfResult) -> Self {
        Self {
            result,
            explanation: None,
        }
    }
}

/// An error that ends the evaluation: `temperror` or `permerror`, with the reason.
#[derive(Debug)]
struct Stop(SpfResult, String);

impl Stop {
    fn perm(why: impl Into<String>) -> Self {
        Self(SpfResult::PermError, why.into())
    }
    fn temp(why: impl Into<String>) -> Self {
        Self(SpfResult::TempError, why.into())
    }
}

/// Runs `check_host()` for `request`, within `limits.max_time`.
pub(crate) async fn check_host(dns: &SpfDns, limits: &SpfLimits, request: &Request<'_>) -> Outcome {
    let mut evaluation = Evaluation {
        dns,
        limits,
        request,
        terms: 0,
        voids: 0,
        ptr_names: None,
        validated: HashMap::new(),
    };
    let domain = request.domain.to_owned();
    match tokio::time::timeout(limits.max_time, evaluation.check(domain, true)).await {
        Ok(outcome) => outcome,
        Err(_) => {
            tracing::debug!(domain = request.domain, "SPF: processing time limit");
            Outcome::of(SpfResult::TempError)
        }
    }
}

/// The state of one evaluation: the counters of §4.6.4 are shared by every record
/// reached through `include` and `redirect`.
struct Evaluation<'a> {
    dns: &'a SpfDns,
    limits: &'a SpfLimits,
    request: &'a Request<'a>,
    /// Terms that queried DNS so far.
    terms: usize,
    /// Void lookups so far.
    voids: usize,
    /// The client's PTR names (the first ones, up to the limit), once looked up.
    ptr_names: Option<Answer<String>>,
    /// Whether a name resolves to the client's address, once looked up.
    validated: HashMap<String, bool>,
}

type Boxed<'s, T> = Pin<Box<dyn Future<Output = T> + Send + 's>>;

impl<'a> Evaluation<'a> {
    /// `check_host()` for `domain`; the explanation of a `fail` only when `want_exp`
    /// (not inside `include`, §6.2).
    fn check(&mut self, domain: String, want_exp: bool) -> Boxed<'_, Outcome> {
        Box::pin(async move {
            match self.evaluate(&domain, want_exp).await {
                Ok(outcome) => outcome,
                Err(Stop(result, why)) => {
                    tracing::debug!(domain, %result, why, "SPF");
                    Outcome::of(result)
                }
            }
        })
    }

    async fn evaluate(&mut self, domain: &str, want_exp: bool) -> Result<Outcome, Stop> {
        let Some(record) = self.record(domain).await? else {
            return Ok(Outcome::of(SpfResult::None));
        };
        for directive in &record.directives {
            if directive.mechanism.queries_dns() {
                self.count_term()?;
            }
            if !self.matches(&directive.mechanism, domain).await? {
                continue;
            }
            let result = match directive.qualifier {
                Qualifier::Pass => SpfResult::Pass,
                Qualifier::Fail => SpfResult::Fail,
                Qualifier::SoftFail => SpfResult::SoftFail,
                Qualifier::Neutral => SpfResult::Neutral,
            };
            let explanation = match (&record.exp, result, want_exp) {
                (Some(exp), SpfResult::Fail, true) => self.explain(exp, domain).await,
                _ => None,
            };
            return Ok(Outcome {
                result,
                explanation,
            });
        }
        if let Some(redirect) = &record.redirect {
            self.count_term()?;
            let target = self
                .target(redirect, domain)
                .await
                .ok_or_else(|| Stop::perm("redirect= to no valid domain name"))?;
            let outcome = self.check(target, want_exp).await;
            if outcome.result == SpfResult::None {
                return Err(Stop::perm("redirect= to a domain without SPF record"));
            }
            return Ok(outcome);
        }
        Ok(Outcome::of(SpfResult::Neutral))
    }

    /// The SPF record of `domain` (§4.4, §4.5): `None` when it has none.
    async fn record(&self, domain: &str) -> Result<Option<Arc<Record>>, Stop> {
        let txt = self.dns.txt(domain).await;
        match &txt.answer {
            Answer::Found(_) => txt.spf_record(domain).map_err(Stop::perm),
            Answer::Void => Ok(None),
            Answer::Failed => Err(Stop::temp(format!("TXT lookup of {domain} failed"))),
        }
    }

    /// Counts a term that queries DNS: more than the limit is `permerror`.
    fn count_term(&mut self) -> Result<(), Stop> {
        self.terms += 1;
        if self.terms > self.limits.max_dns_terms {
            return Err(Stop::perm("too many DNS-querying terms"));
        }
        Ok(())
    }

    /// Counts a void lookup: more than the limit is `permerror`.
    fn count_void(&mut self) -> Result<(), Stop> {
        self.voids += 1;
        if self.voids > self.limits.max_void_lookups {
            return Err(Stop::perm("too many void lookups"));
        }
        Ok(())
    }

    /// Whether `mechanism` matches the client (§5).
    async fn matches(&mut self, mechanism: &Mechanism, domain: &str) -> Result<bool, Stop> {
        let ip = self.request.ip;
        Ok(match mechanism {
            Mechanism::All => true,
            Mechanism::Ip4(net, len) => in_network(ip, IpAddr::V4(*net), *len),
            Mechanism::Ip6(net, len) => in_network(ip, IpAddr::V6(*net), *len),
            Mechanism::Include(spec) => {
                let Some(target) = self.target(spec, domain).await else {
                    return Err(Stop::perm("include: of no valid domain name"));
                };
                match self.check(target, false).await.result {
                    SpfResult::Pass => true,
                    SpfResult::Fail | SpfResult::SoftFail | SpfResult::Neutral => false,
                    SpfResult::TempError => return Err(Stop::temp("include: temperror")),
                    SpfResult::PermError | SpfResult::None => {
                        return Err(Stop::perm("include: permerror or no record"));
                    }
                }
            }
            Mechanism::A {
                domain: spec,
                v4,
                v6,
            } => {
                let Some(target) = self.optional_target(spec.as_ref(), domain).await else {
                    return self.void();
                };
                match self.dns.addresses(&target, ip.is_ipv6()).await {
                    Answer::Found(addresses) => {
                        addresses.iter().any(|a| cidr_match(ip, *a, *v4, *v6))
                    }
                    Answer::Void => self.void()?,
                    Answer::Failed => {
                        return Err(Stop::temp(format!("address lookup of {target} failed")));
                    }
                }
            }
            Mechanism::Mx {
                domain: spec,
                v4,
                v6,
            } => {
                let Some(target) = self.optional_target(spec.as_ref(), domain).await else {
                    return self.void();
                };
                let hosts = match self.dns.mx(&target).await {
                    Answer::Found(hosts) => hosts,
                    Answer::Void => return self.void(),
                    Answer::Failed => {
                        return Err(Stop::temp(format!("MX lookup of {target} failed")));
                    }
                };
                if hosts.len() > self.limits.max_mx_names {
                    return Err(Stop::perm(format!(
                        "{target} has more than {} MX records",
                        self.limits.max_mx_names
                    )));
                }
                // A null MX (RFC 7505) names no host.
                let lookups = hosts
                    .iter()
                    .filter(|h| !h.is_empty())
                    .map(|host| self.dns.addresses(host, ip.is_ipv6()))
                    .collect();
                let answers = join_all(lookups).await;
                let matched = answers.iter().any(|answer| {
                    matches!(answer, Answer::Found(addresses) if addresses.iter().any(|a| cidr_match(ip, *a, *v4, *v6)))
                });
                if !matched && answers.contains(&Answer::Failed) {
                    return Err(Stop::temp(format!(
                        "address lookup of an MX host of {target} failed"
                    )));
                }
                matched
            }
            Mechanism::Ptr(spec) => {
                let Some(target) = self.optional_target(spec.as_ref(), domain).await else {
                    return self.void();
                };
                let names = match self.ptr_names().await {
                    Answer::Found(names) => names,
                    // §5.5: a DNS error on the PTR lookup is no match.
                    Answer::Failed => return Ok(false),
                    Answer::Void => return self.void(),
                };
                let target = target.to_ascii_lowercase();
                let candidates: Vec<String> = names
                    .into_iter()
                    .filter(|name| {
                        name == &target
                            || name
                                .strip_suffix(target.as_str())
                                .is_some_and(|head| head.ends_with('.'))
                    })
                    .collect();
                !self.validate(&candidates).await.is_empty()
            }
            Mechanism::Exists(spec) => {
                let Some(target) = self.target(spec, domain).await else {
                    return self.void();
                };
                // §5.7: an A lookup, whatever the client's family.
                match self.dns.addresses(&target, false).await {
                    Answer::Found(_) => true,
                    Answer::Void => self.void()?,
                    Answer::Failed => {
                        return Err(Stop::temp(format!("A lookup of {target} failed")));
                    }
                }
            }
        })
    }

    /// No match, after counting a void lookup.
    fn void(&mut self) -> Result<bool, Stop> {
        self.count_void()?;
        Ok(false)
    }

    /// The target name of a mechanism whose domain-spec is optional.
    async fn optional_target(
        &mut self,
        spec: Option<&MacroString>,
        domain: &str,
    ) -> Option<String> {
        match spec {
            Some(spec) => self.target(spec, domain).await,
            None => Some(domain.to_owned()),
        }
    }

    /// A domain-spec expanded into the name to query; `None` when that is no valid
    /// domain name (treated as a name that does not exist).
    async fn target(&mut self, spec: &MacroString, domain: &str) -> Option<String> {
        let expanded = self.expand(spec, domain).await;
        query_name(&expanded)
    }

    /// A macro string expanded for `domain`.
    async fn expand(&mut self, text: &MacroString, domain: &str) -> String {
        let validated = if text.uses_validated_name() {
            Some(self.validated_name(domain).await)
        } else {
            None
        };
        text.expand(&Values {
            local: self.request.local,
            sender_domain: self.request.domain,
            domain,
            ip: self.request.ip,
            helo: self.request.helo,
            receiver: self.request.receiver,
            validated_name: validated.as_deref(),
        })
    }

    /// The explanation of a `fail` (§6.2): the single TXT record at the expanded
    /// `exp=` name, itself expanded; `None` on any problem (no record, several, a DNS
    /// error, text that is not US-ASCII or not a valid explain-string). The lookup
    /// counts toward no limit.
    async fn explain(&mut self, exp: &MacroString, domain: &str) -> Option<String> {
        let name = self.target(exp, domain).await?;
        let txt = self.dns.txt(&name).await;
        let Answer::Found(records) = &txt.answer else {
            return None;
        };
        let [record] = records.as_slice() else {
            return None;
        };
        if !record.is_ascii() {
            return None;
        }
        let text =
            MacroString::parse(std::str::from_utf8(record).ok()?, Place::Explanation).ok()?;
        Some(self.expand(&text, domain).await)
    }

    /// The client's PTR names, the first [`SpfLimits::max_ptr_names`] of them (§4.6.4).
    async fn ptr_names(&mut self) -> Answer<String> {
        if let Some(names) = &self.ptr_names {
            return names.clone();
        }
        let mut names = self.dns.ptr(self.request.ip).await;
        if let Answer::Found(list) = &mut names {
            list.truncate(self.limits.max_ptr_names);
        }
        self.ptr_names = Some(names.clone());
        names
    }

    /// Those of `names` that resolve to the client's address (§5.5), looked up at
    /// once; a name whose lookup fails is skipped.
    async fn validate(&mut self, names: &[String]) -> Vec<String> {
        let ip = self.request.ip;
        let unknown: Vec<&String> = names
            .iter()
            .filter(|n| !self.validated.contains_key(n.as_str()))
            .collect();
        let dns = self.dns;
        let answers = join_all(
            unknown
                .iter()
                .map(|name| dns.addresses(name, ip.is_ipv6()))
                .collect(),
        )
        .await;
        for (name, answer) in unknown.into_iter().zip(answers) {
            let valid = matches!(answer, Answer::Found(addresses) if addresses.contains(&ip));
            self.validated.insert(name.clone(), valid);
        }
        names
            .iter()
            .filter(|n| self.validated.get(n.as_str()) == Some(&true))
            .cloned()
            .collect()
    }

    /// `%{p}` (§7.3): a validated name of the client, preferably `domain` itself, else
    /// one of its subdomains, else any; `unknown` when there is none.
    async fn validated_name(&mut self, domain: &str) -> String {
        let names = match self.ptr_names().await {
            Answer::Found(names) => names,
            Answer::Void | Answer::Failed => return "unknown".to_owned(),
        };
        let valid = self.validate(&names).await;
        let domain = domain.to_ascii_lowercase();
        let subdomain = format!(".{domain}");
        valid
            .iter()
            .find(|n| **n == domain)
            .or_else(|| valid.iter().find(|n| n.ends_with(&subdomain)))
            .or_else(|| valid.first())
            .cloned()
            .unwrap_or_else(|| "unknown".to_owned())
    }
}

/// Whether `ip` is in `net/len`; an address of the other family never is.
fn in_network(ip: IpAddr, net: IpAddr, len: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(ip), IpAddr::V4(net)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            u32::from(ip) & mask == u32::from(net) & mask
        }
        (IpAddr::V6(ip), IpAddr::V6(net)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            u128::from(ip) & mask == u128::from(net) & mask
        }
        _ => false,
    }
}

/// `a`/`mx` matching with the dual CIDR lengths.
fn cidr_match(ip: IpAddr, address: IpAddr, v4: u8, v6: u8) -> bool {
    let len = if address.is_ipv4() { v4 } else { v6 };
    in_network(ip, address, len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(in_network(ip("1.2.3.4"), ip("1.1.1.1"), 0));
        assert!(in_network(ip("1.2.3.4"), ip("1.2.3.0"), 24));
        assert!(!in_network(ip("1.2.4.4"), ip("1.2.3.0"), 24));
        assert!(in_network(ip("1.2.3.4"), ip("1.2.3.4"), 32));
        assert!(!in_network(ip("1.2.3.4"), ip("::1.1.1.1"), 0));
        assert!(in_network(
            ip("cafe:babe:8000::"),
            ip("cafe:babe:8000::"),
            33
        ));
        assert!(!in_network(ip("cafe:babe::"), ip("cafe:babe:8000::"), 33));
        assert!(in_network(ip("deaf:babe::cab:fee"), ip("::1.1.1.1"), 0));
    }
}
