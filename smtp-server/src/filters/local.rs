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
/// With a [recipient delimiter](LocalRecipients::recipient_delimiter) (sub-addressing,
/// RFC 5233), `user+tag@domain` is accepted when `user@domain` is known; an address
/// that is itself known is accepted as it is.
///
/// ```
/// use smtp_server::filters::{DomainSet, LocalRecipients};
/// let known = LocalRecipients::new(DomainSet::new(["example.test"]), ["alice@example.test"])
///     .recipient_delimiter("+");
/// let layer = smtp_server::filter(known);
/// # let _ = layer;
/// ```
#[derive(Clone, Debug)]
pub struct LocalRecipients {
    domains: DomainSet,
    mailboxes: HashSet<String>,
    delimiters: String,
}

impl LocalRecipients {
    /// `mailboxes` are full addresses (`alice@example.test`). No sub-addressing.
    pub fn new<I: IntoIterator<Item = S>, S: AsRef<str>>(domains: DomainSet, mailboxes: I) -> Self {
        let mailboxes = mailboxes
            .into_iter()
            .map(|m| m.as_ref().to_lowercase())
            .collect();
        Self {
            domains,
            mailboxes,
            delimiters: String::new(),
        }
    }

    /// Accepts `user<d>tag@domain` for a known `user@domain`, where `<d>` is any one of
    /// the characters of `delimiters` (as Postfix's `recipient_delimiter`); empty: off.
    pub fn recipient_delimiter(mut self, delimiters: &str) -> Self {
        delimiters.clone_into(&mut self.delimiters);
        self
    }

    /// Splits a local part at the first of the `delimiters` characters into the user and
    /// the tag (`"bob+news"` → `("bob", "news")`), as Postfix and Dovecot do; `None` when
    /// there is no delimiter, or nothing before it.
    ///
    /// ```
    /// use smtp_server::filters::LocalRecipients;
    /// assert_eq!(LocalRecipients::split_subaddress("bob+news", "+-"), Some(("bob", "news")));
    /// assert_eq!(LocalRecipients::split_subaddress("bob", "+"), None);
    /// ```
    pub fn split_subaddress<'a>(local: &'a str, delimiters: &str) -> Option<(&'a str, &'a str)> {
        if delimiters.is_empty() {
            return None;
        }
        let at = local.find(|c| delimiters.contains(c))?;
        let (user, rest) = local.split_at(at);
        let delimiter = rest.chars().next()?;
        (!user.is_empty()).then(|| (user, &rest[delimiter.len_utf8()..]))
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
        let known = |local: &str| self.mailboxes.contains(&format!("{local}@{domain}"));
        let subaddress_of_known = || {
            Self::split_subaddress(&local, &self.delimiters).is_some_and(|(user, _)| known(user))
        };
        (!known(&local) && !subaddress_of_known()).then(|| {
            Decision::reject::<550>(
                EnhancedStatus::BAD_DESTINATION_MAILBOX,
                "User unknown in local recipient table",
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::LocalRecipients;

    #[test]
    fn split_subaddress() {
        type Case<'a> = (&'a str, &'a str, Option<(&'a str, &'a str)>);
        let cases: &[Case<'_>] = &[
            ("bob+news", "+", Some(("bob", "news"))),
            ("bob-news", "+-", Some(("bob", "news"))),
            ("bob-news", "+", None),
            ("bob+a+b", "+", Some(("bob", "a+b"))),
            ("bob-a+b", "+-", Some(("bob", "a+b"))),
            ("bob+", "+", Some(("bob", ""))),
            ("+news", "+", None),
            ("bob", "+", None),
            ("bob+news", "", None),
            ("bob+../x", "+", Some(("bob", "../x"))),
        ];
        for &(local, delimiters, expected) in cases {
            assert_eq!(
                LocalRecipients::split_subaddress(local, delimiters),
                expected,
                "{local:?} with {delimiters:?}"
            );
        }
    }
}
