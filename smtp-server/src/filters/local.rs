//! Local recipients: a local domain's unknown users are refused at RCPT time.

use std::collections::HashSet;
use std::sync::Arc;

use smtp_proto::{EnhancedStatus, ForwardPath, Host};
use tower::Layer;

use super::{DomainSet, sync_filter_service};
use crate::{Decision, RcptRequest};

/// The rcpt-stage check of local users: for a recipient in a local domain, the address
/// must be a known mailbox (or `postmaster`/`abuse`, which RFC 5321 §4.5.1 and RFC 2142
/// require); otherwise `550 5.1.1 User unknown`. A listed address literal is checked
/// the same way (mailboxes at it are written `user@[192.0.2.1]`). Other domains pass
/// through (the relay policy decides about them). Local parts compare
/// case-insensitively.
#[derive(Clone, Debug)]
pub struct LocalRecipientsLayer {
    known: Arc<Known>,
}

#[derive(Debug)]
struct Known {
    domains: DomainSet,
    mailboxes: HashSet<String>,
}

impl LocalRecipientsLayer {
    /// `mailboxes` are full addresses (`alice@example.test`).
    pub fn new<I: IntoIterator<Item = S>, S: AsRef<str>>(domains: DomainSet, mailboxes: I) -> Self {
        let mailboxes = mailboxes
            .into_iter()
            .map(|m| m.as_ref().to_lowercase())
            .collect();
        Self {
            known: Arc::new(Known { domains, mailboxes }),
        }
    }
}

impl<S> Layer<S> for LocalRecipientsLayer {
    type Service = LocalRecipients<S>;
    fn layer(&self, inner: S) -> Self::Service {
        LocalRecipients {
            known: Arc::clone(&self.known),
            inner,
        }
    }
}

/// The service of [`LocalRecipientsLayer`].
#[derive(Clone, Debug)]
pub struct LocalRecipients<S> {
    known: Arc<Known>,
    inner: S,
}

impl<S> LocalRecipients<S> {
    fn check(&self, req: &RcptRequest) -> Option<Decision> {
        let ForwardPath::Mailbox(m) = &req.to else {
            return None;
        };
        let domain = match m.host() {
            Host::Domain(domain) if self.known.domains.contains(domain) => {
                domain.to_ascii_lowercase()
            }
            Host::Address(ip) if self.known.domains.contains_address(ip) => match ip {
                std::net::IpAddr::V4(v4) => format!("[{v4}]"),
                std::net::IpAddr::V6(v6) => format!("[ipv6:{v6}]"),
            },
            _ => return None,
        };
        let local = m.local_part_unquoted().to_lowercase();
        if local == "postmaster" || local == "abuse" {
            return None;
        }
        let address = format!("{local}@{domain}");
        (!self.known.mailboxes.contains(&address)).then(|| {
            Decision::reject::<550>(
                EnhancedStatus::BAD_DESTINATION_MAILBOX,
                "User unknown in local recipient table",
            )
        })
    }
}

sync_filter_service!(LocalRecipients, RcptRequest, |this, request| this
    .check(request));
