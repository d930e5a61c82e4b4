//! Relay policy: who may send to which domains.

use std::net::IpAddr;
use std::sync::Arc;

use smtp_proto::{EnhancedStatus, ForwardPath, Host};
use tower::Layer;

use super::{DomainSet, sync_filter_service};
use crate::{Decision, RcptRequest};

/// An IP network such as `192.0.2.0/24` or `::1/128`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpNetwork {
    addr: IpAddr,
    prefix: u8,
}

impl IpNetwork {
    /// Whether `ip` is inside the network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match (self.addr, ip) {
            (IpAddr::V4(_), IpAddr::V6(v6)) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            _ => ip,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl std::str::FromStr for IpNetwork {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("invalid network address {s:?}"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("invalid prefix in {s:?}"))?,
        };
        Ok(Self { addr, prefix })
    }
}

impl std::fmt::Display for IpNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// The rcpt-stage relay policy: mail to local domains (and to the bare `<Postmaster>`)
/// is for anyone; mail to any other domain only from authenticated users or trusted
/// networks; everything else is `554 5.7.1 Relay access denied`. No open relay. An
/// address literal (`user@[192.0.2.1]`) is local only when it is listed among the local
/// domains, whatever address the client connected to.
#[derive(Clone, Debug)]
pub struct RelayPolicyLayer {
    policy: Arc<Policy>,
}

#[derive(Debug)]
struct Policy {
    local_domains: DomainSet,
    trusted: Vec<IpNetwork>,
}

impl RelayPolicyLayer {
    /// The policy for these local domains and trusted networks.
    pub fn new(local_domains: DomainSet, trusted_networks: Vec<IpNetwork>) -> Self {
        Self {
            policy: Arc::new(Policy {
                local_domains,
                trusted: trusted_networks,
            }),
        }
    }
}

impl<S> Layer<S> for RelayPolicyLayer {
    type Service = RelayPolicy<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RelayPolicy {
            policy: Arc::clone(&self.policy),
            inner,
        }
    }
}

/// The service of [`RelayPolicyLayer`].
#[derive(Clone, Debug)]
pub struct RelayPolicy<S> {
    policy: Arc<Policy>,
    inner: S,
}

impl<S> RelayPolicy<S> {
    fn check(&self, req: &RcptRequest) -> Option<Decision> {
        let local = match &req.to {
            ForwardPath::Postmaster => true,
            ForwardPath::Mailbox(m) => match m.host() {
                Host::Domain(d) => self.policy.local_domains.contains(d),
                Host::Address(ip) => self.policy.local_domains.contains_address(ip),
            },
        };
        let may_relay = req.session.authenticated.is_some()
            || self
                .policy
                .trusted
                .iter()
                .any(|n| n.contains(req.session.peer.ip()));
        (!local && !may_relay)
            .then(|| Decision::reject(554, EnhancedStatus::NOT_AUTHORIZED, "Relay access denied"))
    }
}

sync_filter_service!(RelayPolicy, RcptRequest, |this, request| this
    .check(request));

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
