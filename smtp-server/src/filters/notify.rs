//! Which delivery notifications a client may ask for (RFC 3461 `NOTIFY`).

use std::sync::Arc;

use smtp_proto::Notify;
use tower::Layer;

use super::{IpNetwork, sync_filter_service};
use crate::{DataRequest, Decision};

/// Success and delay notifications only for clients that logged in or come from a
/// trusted network. From anyone else, `NOTIFY=SUCCESS` and `DELAY` are dropped from the
/// message's recipients (failures stay as asked): otherwise a stranger could send a
/// local user a message "from" any address with `NOTIFY=SUCCESS` and `RET=FULL`, and we
/// would mail a copy of it to that address (backscatter). RFC 3461 §4.1 leaves which
/// notifications to send to the MTA.
///
/// ```
/// use smtp_server::filters::NotifyPolicyLayer;
/// let layer = NotifyPolicyLayer::new(vec!["192.0.2.0/24".parse().unwrap()]);
/// # let _ = layer;
/// ```
#[derive(Clone, Debug)]
pub struct NotifyPolicyLayer {
    trusted: Arc<Vec<IpNetwork>>,
}

impl NotifyPolicyLayer {
    /// The policy for these trusted networks.
    pub fn new(trusted_networks: Vec<IpNetwork>) -> Self {
        Self {
            trusted: Arc::new(trusted_networks),
        }
    }
}

impl<S> Layer<S> for NotifyPolicyLayer {
    type Service = NotifyPolicy<S>;
    fn layer(&self, inner: S) -> Self::Service {
        NotifyPolicy {
            trusted: Arc::clone(&self.trusted),
            inner,
        }
    }
}

/// The service of [`NotifyPolicyLayer`].
#[derive(Clone, Debug)]
pub struct NotifyPolicy<S> {
    trusted: Arc<Vec<IpNetwork>>,
    inner: S,
}

impl<S> NotifyPolicy<S> {
    fn apply(&self, req: &mut DataRequest) -> Option<Decision> {
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

sync_filter_service!(NotifyPolicy, DataRequest, |this, request| this
    .apply(request));
