//! Relay policy: who may send to which domains.

use std::net::IpAddr;

use super::DomainSet;
use crate::{Check, Decision, RcptRequest};
use smtp_proto::{EnhancedStatus, ForwardPath, Host};

/// An IP network such as `192.0.2.0/24` or `::1/128` (an [`ipnet::IpNet`]), which also
/// holds the IPv4-mapped IPv6 form (`::ffff:192.0.2.1`) of its IPv4 addresses, as a
/// dual-stack socket reports IPv4 clients. A bare address is a network of one.
///
/// ```
/// use smtp_server::filters::IpNetwork;
/// let net: IpNetwork = "192.0.2.0/24".parse().unwrap();
/// assert!(net.contains("192.0.2.77".parse().unwrap()));
/// assert!(net.contains("::ffff:192.0.2.1".parse().unwrap()));
/// assert!(!net.contains("192.0.3.1".parse().unwrap()));
/// assert_eq!("::1".parse::<IpNetwork>().unwrap().to_string(), "::1/128");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IpNetwork(ipnet::IpNet);

impl IpNetwork {
    /// Whether `ip` is inside the network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match (self.0, ip) {
            (ipnet::IpNet::V4(_), IpAddr::V6(v6)) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            _ => ip,
        };
        self.0.contains(&ip)
    }

    /// Whether it holds every address (`0.0.0.0/0`, `::/0`).
    pub fn is_everything(&self) -> bool {
        self.0.prefix_len() == 0
    }
}

impl From<ipnet::IpNet> for IpNetwork {
    fn from(net: ipnet::IpNet) -> Self {
        Self(net)
    }
}

impl std::str::FromStr for IpNetwork {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        s.parse::<ipnet::IpNet>()
            .or_else(|_| s.parse::<IpAddr>().map(ipnet::IpNet::from))
            .map(Self)
            .map_err(|_| {
                format!("invalid network {s:?} (write 192.0.2.0/24, 2001:db8::/32 or an address)")
            })
    }
}

impl std::fmt::Display for IpNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The rcpt-stage relay policy: mail to local domains (and to the bare `<Postmaster>`)
/// is for anyone; mail to any other domain only from authenticated users or trusted
/// networks; everything else is `554 5.7.1 Relay access denied`. No open relay. An
/// address literal (`user@[192.0.2.1]`) is local only when it is listed among the local
/// domains, whatever address the client connected to.
///
/// ```
/// use smtp_server::filters::{DomainSet, RelayPolicy};
/// # let sink = tower::service_fn(|_| async { Ok::<_, smtp_server::BoxError>(smtp_server::Decision::accept()) });
/// let policy = RelayPolicy::new(DomainSet::new(["example.test"]), vec!["192.0.2.0/24".parse().unwrap()]);
/// let stages = smtp_server::Stages::new(sink).relay_policy(smtp_server::filter(policy));
/// ```
#[derive(Clone, Debug)]
pub struct RelayPolicy {
    local_domains: DomainSet,
    trusted: Vec<IpNetwork>,
}

impl RelayPolicy {
    /// The policy for these local domains and trusted networks.
    pub fn new(local_domains: DomainSet, trusted_networks: Vec<IpNetwork>) -> Self {
        Self {
            local_domains,
            trusted: trusted_networks,
        }
    }
}

impl Check<RcptRequest> for RelayPolicy {
    fn check(&self, req: &mut RcptRequest) -> Option<Decision> {
        let local = match &req.to {
            ForwardPath::Postmaster => true,
            ForwardPath::Mailbox(m) => match m.host() {
                Host::Domain(d) => self.local_domains.contains(d),
                Host::Address(ip) => self.local_domains.contains_address(ip),
            },
        };
        let may_relay = req.session.authenticated.is_some()
            || self
                .trusted
                .iter()
                .any(|n| n.contains(req.session.peer.ip()));
        (!local && !may_relay)
            .then(|| Decision::reject::<554>(EnhancedStatus::NOT_AUTHORIZED, "Relay access denied"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks() {
        let n: IpNetwork = "192.0.2.0/24".parse().unwrap();
        assert!(n.contains("192.0.2.77".parse().unwrap()));
        assert!(!n.contains("192.0.3.1".parse().unwrap()));
        assert!(n.contains("::ffff:192.0.2.1".parse().unwrap()));
        let one: IpNetwork = "::1".parse().unwrap();
        assert!(one.contains("::1".parse().unwrap()));
        assert!(!one.contains("::2".parse().unwrap()));
        let all: IpNetwork = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("8.8.8.8".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<IpNetwork>().is_err());
        assert!("nonsense".parse::<IpNetwork>().is_err());
    }
}
