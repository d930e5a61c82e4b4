//! Which delivery notifications a client may ask for (RFC 3461 `NOTIFY`).

use smtp_proto::Notify;

use super::IpNetwork;
use crate::{Check, DataRequest, Decision};

/// Success and delay notifications only for clients that logged in or come from a
/// trusted network. From anyone else, `NOTIFY=SUCCESS` and `DELAY` are dropped from the
/// message's recipients (failures stay as asked): otherwise a stranger could send a
/// local user a message "from" any address with `NOTIFY=SUCCESS` and `RET=FULL`, and we
/// would mail a copy of it to that address (backscatter). RFC 3461 §4.1 leaves which
/// notifications to send to the MTA.
///
/// ```
/// use smtp_server::filters::NotifyPolicy;
/// let layer = smtp_server::filter(NotifyPolicy::new(vec!["192.0.2.0/24".parse().unwrap()]));
/// # let _ = layer;
/// ```
#[derive(Clone, Debug)]
pub struct NotifyPolicy {
    trusted: Vec<IpNetwork>,
}

impl NotifyPolicy {
    /// The policy for these trusted networks.
    pub fn new(trusted_networks: Vec<IpNetwork>) -> Self {
        Self {
            trusted: trusted_networks,
        }
    }
}

impl Check<DataRequest> for NotifyPolicy {
    fn check(&self, req: &mut DataRequest) -> Option<Decision> {
        let peer = req.session.peer.ip();
        if req.session.authenticated.is_some() || self.trusted.iter().any(|n| n.contains(peer)) {
            return None;
        }
        for recipient in &mut req.envelope.recipients {
            if let Some(notify) = recipient.params.notify.as_mut() {
                *notify = notify.without(Notify::SUCCESS.union(Notify::DELAY));
            }
        }
        None
    }
}
