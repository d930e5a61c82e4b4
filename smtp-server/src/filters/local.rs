//! Local recipients: a local domain's unknown users are refused at RCPT time.

use std::collections::HashSet;

use super::DomainSet;
use crate::{Check, Decision, RcptRequest};
use smtp_proto::{EnhancedStatus, ForwardPath, Host};

/// The rcpt-stage check of local users: for a recipient in a local domain, the address
/// must be a known mailbox (or `postmaster`/`abuse`, which RFC 5321 §4.5.1 and RFC 2142
/// require); otherwise `550 5.1.1 User unknown`. A listed address literal is checked
/// the same way (mailboxes at it are written `user@[192.0.2.1]`). Other domains pass
/// through (the relay policy decides about them). Local parts compare
/// case-insensitively.
///
/// ```
/// use smtp_server::filters::{DomainSet, LocalRecipients};
/// let known = LocalRecipients::new(DomainSet::new(["example.test"]), ["alice@example.test"]);
/// let layer = smtp_server::filter(known);
/// # let _ = layer;
/// ```
#[derive(Clone, Debug)]
pub struct LocalRecipients {
    domains: DomainSet,
    mailboxes: HashSet<String>,
}

impl LocalRecipients {
    /// `mailboxes` are full addresses (`alice@example.test`).
    pub fn new<I: IntoIterator<Item = S>, S: AsRef<str>>(domains: DomainSet, mailboxes: I) -> Self {
        let mailboxes = mailboxes
            .into_iter()
            .map(|m| m.as_ref().to_lowercase())
            .collect();
        Self { domains, mailboxes }
    }
}

impl Check<RcptRequest> for LocalRecipients {
    fn check(&self, req: &mut RcptRequest) -> Option<Decision> {
        let ForwardPath::Mailbox(m) = &req.to else {
            return None;
        };
        let domain = match m.host() {
            Host::Domain(domain) if self.domains.contains(domain) => domain.to_ascii_lowercase(),
            Host::Address(ip) if self.domains.contains_address(ip) => match ip {
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
        (!self.mailboxes.contains(&address)).then(|| {
            Decision::reject::<550>(
                EnhancedStatus::BAD_DESTINATION_MAILBOX,
                "User unknown in local recipient table",
            )
        })
    }
}
