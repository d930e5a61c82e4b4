//! The resolver: DNS lookups around [`plan`](crate::plan).

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{
    ConnectionConfig, LookupIpStrategy, NameServerConfig, ResolverConfig,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{Name, RData};

use crate::plan::{Exchange, plan};
use crate::stats::{LookupStats, Outcome, Query};

/// Resolver settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MxConfig {
    /// Nameservers to ask (`[dns] nameservers`); empty: the system's (`/etc/resolv.conf`).
    pub nameservers: Vec<SocketAddr>,
    /// Most MX hosts to try per delivery. Default 5 (Postfix's `smtp_mx_address_limit`).
    pub max_hosts: usize,
    /// Our own host names: an MX pointing at us limits the hosts tried (no loops).
    pub our_names: Vec<String>,
    /// Time a query may take. Default 5 s.
    pub timeout: Duration,
}

impl Default for MxConfig {
    fn default() -> Self {
        Self {
            nameservers: Vec::new(),
            max_hosts: 5,
            our_names: Vec::new(),
            timeout: Duration::from_secs(5),
        }
    }
}

/// A host to deliver to, with its addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MxHost {
    /// The host name (the domain itself for an implicit MX; the literal for an address
    /// literal).
    pub name: String,
    /// Its MX preference (0 for implicit MX and literals).
    pub preference: u16,
    /// Its IPv4 and IPv6 addresses; empty when they could not be found.
    pub addresses: Vec<IpAddr>,
}

/// Why there is nowhere to deliver.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RouteError {
    /// The domain publishes a null MX (RFC 7505): it accepts no mail.
    #[error("the domain accepts no mail (null MX)")]
    NullMx,
    /// The domain does not exist (NXDOMAIN).
    #[error("no such domain")]
    NoSuchDomain,
    /// No MX record names a usable host, and the domain has no address either.
    #[error("no mail exchanger or address for the domain")]
    NoUsableMx,
    /// Our own host is the best MX: delivering would loop.
    #[error("mail for the domain loops back to us")]
    Loop,
    /// The domain name is not valid.
    #[error("invalid domain name")]
    InvalidDomain,
    /// A temporary DNS failure (SERVFAIL, REFUSED, timeout, network).
    #[error("temporary DNS failure: {0}")]
    Temporary(String),
    /// A DANE lookup (RFC 7672 §2.2) failed where a secure answer was due (bogus
    /// DNSSEC, SERVFAIL, timeout), or the DANE resolver cannot be trusted: defer
    /// (`451 4.7.5`), never fall back to weaker TLS.
    #[error("{0}")]
    Dane(String),
}

impl RouteError {
    /// Whether retrying cannot help: bounce at once.
    pub fn is_permanent(&self) -> bool {
        !matches!(self, Self::Temporary(_) | Self::Dane(_))
    }

    /// The reply code and enhanced status to record (and put in a bounce).
    pub fn status(&self) -> (u16, &'static str) {
        match self {
            Self::NullMx => (556, "5.1.10"),
            Self::NoSuchDomain | Self::InvalidDomain => (550, "5.1.2"),
            Self::NoUsableMx => (550, "5.4.4"),
            Self::Loop => (554, "5.4.6"),
            Self::Temporary(_) => (451, "4.4.3"),
            Self::Dane(_) => (451, "4.7.5"),
        }
    }
}

/// Finds where mail for a domain goes.
#[derive(Clone, Debug)]
pub struct MxResolver {
    resolver: TokioResolver,
    config: MxConfig,
    seed: std::sync::Arc<AtomicU64>,
    stats: std::sync::Arc<LookupStats>,
}

impl MxResolver {
    /// A resolver with `config`'s nameservers (or the system's).
    pub fn new(config: MxConfig) -> Result<Self, RouteError> {
        let provider = TokioRuntimeProvider::default();
        let mut builder = if config.nameservers.is_empty() {
            TokioResolver::builder(provider)
                .map_err(|e| RouteError::Temporary(format!("system resolver configuration: {e}")))?
        } else {
            let servers = config
                .nameservers
                .iter()
                .map(|s| {
                    let mut udp = ConnectionConfig::udp();
                    udp.port = s.port();
                    let mut tcp = ConnectionConfig::tcp();
                    tcp.port = s.port();
                    NameServerConfig::new(s.ip(), true, vec![udp, tcp])
                })
                .collect();
            TokioResolver::builder_with_config(
                ResolverConfig::from_parts(None, Vec::new(), servers),
                provider,
            )
        };
        let options = builder.options_mut();
        options.timeout = config.timeout;
        options.attempts = 2;
        options.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        options.ndots = 0;
        let resolver = builder
            .build()
            .map_err(|e| RouteError::Temporary(e.to_string()))?;
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
            | 1;
        Ok(Self {
            resolver,
            config,
            seed: std::sync::Arc::new(AtomicU64::new(seed)),
            stats: std::sync::Arc::default(),
        })
    }

    /// Counts this resolver's lookups into `stats` (shared with the resolver it
    /// replaces, so that counts survive a reload).
    pub fn count_into(mut self, stats: std::sync::Arc<LookupStats>) -> Self {
        self.stats = stats;
        self
    }

    /// The counts of the lookups made for routing.
    pub fn stats(&self) -> &std::sync::Arc<LookupStats> {
        &self.stats
    }

    /// The underlying hickory resolver, to share its cache with other lookups (SPF,
    /// DKIM, DMARC).
    pub fn resolver(&self) -> &TokioResolver {
        &self.resolver
    }

    /// The hosts to try for `domain`, best first. `domain` may be an address literal
    /// (`[192.0.2.1]`, `[IPv6:2001:db8::1]`) or an internationalized name.
    pub async fn route(&self, domain: &str) -> Result<Vec<MxHost>, RouteError> {
        if let Some(literal) = domain.strip_prefix('[').and_then(|d| d.strip_suffix(']')) {
            let ip = literal
                .strip_prefix("IPv6:")
                .or_else(|| literal.strip_prefix("ipv6:"))
                .unwrap_or(literal);
            let ip: IpAddr = ip.parse().map_err(|_| RouteError::InvalidDomain)?;
            return Ok(vec![MxHost {
                name: domain.to_owned(),
                preference: 0,
                addresses: vec![ip],
            }]);
        }
        let name =
            Name::from_utf8(domain.trim_end_matches('.')).map_err(|_| RouteError::InvalidDomain)?;
        let name = Name::from_labels(name.iter()).map_err(|_| RouteError::InvalidDomain)?;
        let ascii = name.to_ascii();
        let mut fqdn = name;
        fqdn.set_fqdn(true);
        let answer = self.resolver.mx_lookup(fqdn.clone()).await;
        self.stats.count(Query::Mx, outcome(&answer));
        let exchanges = match answer {
            Ok(lookup) => lookup
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::MX(mx) => Some(Exchange::new(mx.preference, &mx.exchange.to_ascii())),
                    _ => None,
                })
                .collect::<Vec<_>>(),
            Err(e) => match classify(&e) {
                Lookup::NoSuchDomain => return Err(RouteError::NoSuchDomain),
                Lookup::NoData => Vec::new(),
                Lookup::Temporary => return Err(RouteError::Temporary(e.to_string())),
            },
        };
        if exchanges.is_empty() {
            // No MX: the domain itself is the implicit MX (RFC 5321 §5.1).
            let addresses = self.addresses(&ascii).await?;
            if addresses.is_empty() {
                return Err(RouteError::NoUsableMx);
            }
            return Ok(vec![MxHost {
                name: ascii.trim_end_matches('.').to_owned(),
                preference: 0,
                addresses,
            }]);
        }
        let seed = &self.seed;
        let mut random = || {
            let mut x = seed.load(Ordering::Relaxed);
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            seed.store(x, Ordering::Relaxed);
            x
        };
        let planned = plan(
            exchanges,
            &self.config.our_names,
            self.config.max_hosts,
            &mut random,
        )?;
        let mut hosts = Vec::with_capacity(planned.len());
        let mut last_error = None;
        for exchange in planned {
            let addresses = match self.addresses(&exchange.host).await {
                Ok(a) => a,
                Err(e) => {
                    last_error = Some(e);
                    Vec::new()
                }
            };
            hosts.push(MxHost {
                name: exchange.host,
                preference: exchange.preference,
                addresses,
            });
        }
        if hosts.iter().all(|h| h.addresses.is_empty()) {
            return Err(last_error.unwrap_or(RouteError::NoUsableMx));
        }
        Ok(hosts)
    }

    /// The addresses of one host (a relay host name, or an IP address as text), without
    /// MX: for smarthost delivery.
    pub async fn host(&self, host: &str) -> Result<MxHost, RouteError> {
        let addresses = match host.parse::<IpAddr>() {
            Ok(ip) => vec![ip],
            Err(_) => self.addresses(host).await?,
        };
        if addresses.is_empty() {
            return Err(RouteError::NoSuchDomain);
        }
        Ok(MxHost {
            name: host.to_owned(),
            preference: 0,
            addresses,
        })
    }

    /// The A and AAAA addresses of a host name (never an IP given as a name).
    async fn addresses(&self, host: &str) -> Result<Vec<IpAddr>, RouteError> {
        let mut name = Name::from_ascii(host).map_err(|_| RouteError::InvalidDomain)?;
        name.set_fqdn(true);
        let answer = self.resolver.lookup_ip(name).await;
        self.stats.count(Query::Address, outcome(&answer));
        match answer {
            Ok(lookup) => Ok(lookup.iter().collect()),
            Err(e) => match classify(&e) {
                Lookup::NoSuchDomain | Lookup::NoData => Ok(Vec::new()),
                Lookup::Temporary => Err(RouteError::Temporary(e.to_string())),
            },
        }
    }
}

enum Lookup {
    NoSuchDomain,
    NoData,
    Temporary,
}

/// How a lookup ended, for the counters.
fn outcome<T>(answer: &Result<T, NetError>) -> Outcome {
    match answer {
        Ok(_) => Outcome::Answered,
        Err(e) => match classify(e) {
            Lookup::NoSuchDomain => Outcome::NoSuchDomain,
            Lookup::NoData => Outcome::NoData,
            Lookup::Temporary => Outcome::Failed,
        },
    }
}

fn classify(e: &NetError) -> Lookup {
    match e {
        NetError::Dns(DnsError::NoRecordsFound(no))
            if no.response_code == ResponseCode::NXDomain =>
        {
            Lookup::NoSuchDomain
        }
        NetError::Dns(DnsError::NoRecordsFound(_)) => Lookup::NoData,
        _ => Lookup::Temporary,
    }
}
