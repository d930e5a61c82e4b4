//! DNS lookups for `mta check-dns` (and the MTA-STS TXT lookup of remote delivery),
//! each bounded in time: the resolver dns-mx builds
//! (the given nameservers, or the system's), asked for any record type.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use dns_mx::{MxConfig, MxResolver};
use hickory_resolver::TokioResolver;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::rdata::TLSA;
use hickory_resolver::proto::rr::{Name, RData, RecordType};

/// Why a lookup found nothing usable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The name does not exist (NXDOMAIN).
    NoDomain,
    /// No answer within the time allowed.
    TimedOut(Duration),
    /// SERVFAIL, REFUSED, a network error.
    Failed(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NoDomain => f.write_str("no such domain"),
            Self::TimedOut(t) => write!(f, "no answer within {}", humantime::format_duration(*t)),
            Self::Failed(e) => write!(f, "DNS failure: {e}"),
        }
    }
}

/// The records of one name and type; empty when the name has none of that type.
pub(crate) type Answer<T> = Result<Vec<T>, Failure>;

/// A resolver whose every query ends within `timeout`.
#[derive(Clone, Debug)]
pub(crate) struct Dns {
    resolver: TokioResolver,
    timeout: Duration,
}

impl Dns {
    /// Asks `nameservers` (empty: the system's, from `/etc/resolv.conf`).
    pub(crate) fn new(nameservers: Vec<SocketAddr>, timeout: Duration) -> anyhow::Result<Self> {
        let mx = MxResolver::new(MxConfig {
            nameservers,
            timeout,
            ..MxConfig::default()
        })
        .map_err(|e| anyhow::anyhow!("cannot set up the resolver: {e}"))?;
        Ok(Self {
            resolver: mx.resolver().clone(),
            timeout,
        })
    }

    /// Asks through `resolver` (the one remote delivery uses, for MTA-STS).
    pub(crate) fn with_resolver(resolver: TokioResolver, timeout: Duration) -> Self {
        Self { resolver, timeout }
    }

    /// The records of type `rtype` at `name` (other types in the answer, such as the
    /// CNAME records of a chain, are left out).
    pub(crate) async fn query(&self, name: &str, rtype: RecordType) -> Answer<RData> {
        let mut fqdn = Name::from_ascii(name.trim_end_matches('.'))
            .map_err(|e| Failure::Failed(format!("{name:?} is not a domain name: {e}")))?;
        fqdn.set_fqdn(true);
        match tokio::time::timeout(self.timeout, self.resolver.lookup(fqdn, rtype)).await {
            Err(_) => Err(Failure::TimedOut(self.timeout)),
            Ok(Ok(lookup)) => Ok(lookup
                .answers()
                .iter()
                .filter(|r| r.record_type() == rtype)
                .map(|r| r.data.clone())
                .collect()),
            Ok(Err(e)) => match e {
                NetError::Dns(DnsError::NoRecordsFound(no))
                    if no.response_code == ResponseCode::NXDomain =>
                {
                    Err(Failure::NoDomain)
                }
                NetError::Dns(DnsError::NoRecordsFound(_)) => Ok(Vec::new()),
                NetError::Timeout => Err(Failure::TimedOut(self.timeout)),
                other => Err(Failure::Failed(other.to_string())),
            },
        }
    }

    /// The TXT records at `name`, each one's strings joined; none when the name does
    /// not exist.
    pub(crate) async fn txt(&self, name: &str) -> Answer<String> {
        let answer = self.query(name, RecordType::TXT).await;
        no_domain_is_empty(answer).map(|records| {
            records
                .into_iter()
                .filter_map(|r| match r {
                    RData::TXT(txt) => Some(
                        txt.txt_data
                            .iter()
                            .map(|s| String::from_utf8_lossy(s).into_owned())
                            .collect::<String>(),
                    ),
                    _ => None,
                })
                .collect()
        })
    }

    /// The A and AAAA addresses of `host`; none when it does not exist. A failure of
    /// one type counts only when the other found nothing.
    pub(crate) async fn addresses(&self, host: &str) -> Answer<IpAddr> {
        let (a, aaaa) = tokio::join!(
            self.query(host, RecordType::A),
            self.query(host, RecordType::AAAA)
        );
        let mut found = Vec::new();
        let mut failure = None;
        for answer in [a, aaaa] {
            match no_domain_is_empty(answer) {
                Ok(records) => found.extend(records.into_iter().filter_map(|r| match r {
                    RData::A(a) => Some(IpAddr::V4(a.0)),
                    RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                    _ => None,
                })),
                Err(e) => failure = Some(e),
            }
        }
        match failure {
            Some(e) if found.is_empty() => Err(e),
            _ => Ok(found),
        }
    }

    /// The names the PTR records of `ip` give, without the final dot.
    pub(crate) async fn ptr(&self, ip: IpAddr) -> Answer<String> {
        let name = Name::from(ip).to_ascii();
        no_domain_is_empty(self.query(&name, RecordType::PTR).await).map(|records| {
            records
                .into_iter()
                .filter_map(|r| match r {
                    RData::PTR(ptr) => Some(dotless(&ptr.0)),
                    _ => None,
                })
                .collect()
        })
    }

    /// The MX records of `domain`: (preference, exchange without the final dot; `""` for
    /// the root, a null MX).
    pub(crate) async fn mx(&self, domain: &str) -> Answer<(u16, String)> {
        self.query(domain, RecordType::MX).await.map(|records| {
            let mut mx: Vec<(u16, String)> = records
                .into_iter()
                .filter_map(|r| match r {
                    RData::MX(mx) => Some((mx.preference, dotless(&mx.exchange))),
                    _ => None,
                })
                .collect();
            mx.sort();
            mx
        })
    }

    /// The target of a CNAME record at `host`, if it has one.
    pub(crate) async fn cname(&self, host: &str) -> Answer<String> {
        no_domain_is_empty(self.query(host, RecordType::CNAME).await).map(|records| {
            records
                .into_iter()
                .filter_map(|r| match r {
                    RData::CNAME(c) => Some(dotless(&c.0)),
                    _ => None,
                })
                .collect()
        })
    }

    /// The TLSA records at `name`.
    pub(crate) async fn tlsa(&self, name: &str) -> Answer<TLSA> {
        no_domain_is_empty(self.query(name, RecordType::TLSA).await).map(|records| {
            records
                .into_iter()
                .filter_map(|r| match r {
                    RData::TLSA(t) => Some(t),
                    _ => None,
                })
                .collect()
        })
    }
}

fn no_domain_is_empty<T>(answer: Answer<T>) -> Answer<T> {
    match answer {
        Err(Failure::NoDomain) => Ok(Vec::new()),
        other => other,
    }
}

fn dotless(name: &Name) -> String {
    name.to_ascii().trim_end_matches('.').to_ascii_lowercase()
}
