//! Delivery status notifications (RFC 3464): the bounce a sender gets when some of its
//! recipients failed (or, when asked with NOTIFY, were delivered or are delayed).
//!
//! ```text
//! multipart/report; report-type=delivery-status
//! ├── text/plain                 what happened, for people
//! ├── message/delivery-status    Reporting-MTA, then per recipient: Final-Recipient,
//! │                              Action, Status, Remote-MTA, Diagnostic-Code
//! └── message/rfc822             the original message (RET=FULL, the default), or
//!     text/rfc822-headers        its header only (RET=HDRS, or an original larger
//!                                than RETURNED_CONTENT_LIMIT, as Postfix's
//!                                bounce_size_limit)
//! ```
//!
//! A DSN is sent with the null reverse-path `<>`, so it can never cause another one.
//!
//! A DSN about a message sent with `REQUIRETLS` (RFC 8689 §5) is itself sent with
//! REQUIRETLS ([`params`]), and returns the original's header only, never its body:
//! the way back to the sender may not be protected as the way out was.

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::message::{MailParams, MessageMeta, RecipientMeta};

/// The largest original returned whole in a failure notice; a larger one is returned
/// as its header only (Postfix's `bounce_size_limit`), so that a notice stays small.
pub const RETURNED_CONTENT_LIMIT: usize = 50_000;

/// What a DSN reports for a recipient (RFC 3464 §2.3.3 `Action`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DsnAction {
    /// The delivery failed for good.
    Failed,
    /// The message was delivered (only when NOTIFY=SUCCESS asked for it).
    Delivered,
    /// The delivery is still being retried (only when NOTIFY=DELAY asked for it).
    Delayed,
}

impl DsnAction {
    fn as_str(self) -> &'static str {
        match self {
            Self::Failed => "failed",
            Self::Delivered => "delivered",
            Self::Delayed => "delayed",
        }
    }

    /// The NOTIFY bit (RFC 3461) that asks for this kind of report.
    fn notify_bit(self) -> u8 {
        match self {
            Self::Delivered => 1,
            Self::Failed => 2,
            Self::Delayed => 4,
        }
    }
}

/// Whether the sender of `message` should get a report of `action` about
/// `recipient`: never for the null sender (a bounce must not bounce), never against
/// the recipient's NOTIFY; without NOTIFY, failures and (when delay warnings are
/// configured at all) delays, as RFC 3461 §4.1 leaves to the MTA.
pub fn wants_report(message: &MessageMeta, recipient: &RecipientMeta, action: DsnAction) -> bool {
    if message.from.is_empty() {
        return false;
    }
    match recipient.dsn.notify {
        Some(bits) => bits & action.notify_bit() != 0,
        None => action != DsnAction::Delivered,
    }
}

/// The MAIL FROM parameters of the DSN about `message`: `REQUIRETLS` when the message
/// had it (RFC 8689 §5: the report travels under the same requirement), nothing else.
///
/// ```
/// use mail_queue::{dsn, MessageMeta};
/// # fn check(original: &MessageMeta) {
/// assert_eq!(dsn::params(original).requiretls, original.params.requiretls);
/// # }
/// ```
pub fn params(message: &MessageMeta) -> MailParams {
    MailParams {
        requiretls: message.params.requiretls,
        ..MailParams::default()
    }
}

/// Builds the DSN for `recipients` (indexes into `message.recipients`, all with the same
/// action), from `reporting_mta` (our host name). Returns the message bytes; the caller
/// enqueues them from `<>` to `message.from`.
pub fn build(
    message: &MessageMeta,
    body: &[u8],
    recipients: &[usize],
    action: DsnAction,
    reporting_mta: &str,
) -> Vec<u8> {
    let now = SystemTime::now();
    let boundary = format!(
        "{}.{}/{reporting_mta}",
        message.id,
        now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos())
    );
    let (subject, intro) = match action {
        DsnAction::Failed => (
            "Undelivered Mail Returned to Sender",
            "I'm sorry to have to inform you that your message could not\r\nbe delivered to one or more recipients. It's attached below.",
        ),
        DsnAction::Delivered => (
            "Successful Mail Delivery Report",
            "Your message was successfully delivered to the destination(s)\r\nlisted below.",
        ),
        DsnAction::Delayed => (
            "Delayed Mail (still being retried)",
            "Your message could not be delivered yet to the recipient(s) below.\r\nIt will be retried until it is too old; you do not need to send it again.",
        ),
    };
    let mut out = String::with_capacity(2048);
    let _ = write!(
        out,
        "From: Mail Delivery System <MAILER-DAEMON@{reporting_mta}>\r\n\
         To: <{to}>\r\n\
         Subject: {subject}\r\n\
         Date: {date}\r\n\
         Message-ID: <{id}.{nanos}.dsn@{reporting_mta}>\r\n\
         Auto-Submitted: auto-replied\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=delivery-status;\r\n\
         \tboundary=\"{boundary}\"\r\n\
         \r\n\
         This is a MIME-encapsulated message.\r\n\
         \r\n\
         --{boundary}\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         Content-Description: Notification\r\n\
         \r\n\
         This is the mail system at host {reporting_mta}.\r\n\
         \r\n\
         {intro}\r\n\
         \r\n",
        to = message.from,
        date = smtp_proto::rfc5322_date(now),
        id = message.id,
        nanos = now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos()),
    );
    for &i in recipients {
        if let Some(r) = message.recipients.get(i) {
            let _ = write!(
                out,
                "<{}>: {}\r\n",
                r.address,
                one_line(r.last_reply.as_deref().unwrap_or("no details"))
            );
        }
    }
    let _ = write!(
        out,
        "\r\n--{boundary}\r\n\
         Content-Type: message/delivery-status\r\n\
         Content-Description: Delivery report\r\n\
         \r\n\
         Reporting-MTA: dns; {reporting_mta}\r\n\
         X-Queue-ID: {id}\r\n",
        id = message.id
    );
    if let Some(envid) = &message.params.envid {
        let _ = write!(out, "Original-Envelope-Id: {}\r\n", one_line(envid));
    }
    let _ = write!(
        out,
        "Arrival-Date: {}\r\n",
        smtp_proto::rfc5322_date(UNIX_EPOCH + std::time::Duration::from_secs(message.received))
    );
    for &i in recipients {
        let Some(r) = message.recipients.get(i) else {
            continue;
        };
        let reply = r.last_reply.as_deref().unwrap_or("");
        let _ = write!(out, "\r\nFinal-Recipient: rfc822; {}\r\n", r.address);
        if let Some((kind, address)) = &r.dsn.orcpt {
            let _ = write!(
                out,
                "Original-Recipient: {}; {}\r\n",
                one_line(kind),
                one_line(address)
            );
        }
        let _ = write!(
            out,
            "Action: {}\r\nStatus: {}\r\n",
            action.as_str(),
            status_of(reply, action)
        );
        if let Some(mta) = remote_mta(reply) {
            let _ = write!(out, "Remote-MTA: dns; {mta}\r\n");
        }
        if let Some(code) = smtp_reply(reply) {
            let _ = write!(out, "Diagnostic-Code: smtp; {}\r\n", one_line(code));
        } else if !reply.is_empty() {
            let _ = write!(out, "Diagnostic-Code: x-local; {}\r\n", one_line(reply));
        }
    }
    let headers_only = message.params.ret == Some(true)
        || message.params.requiretls
        || action != DsnAction::Failed
        || body.len() > RETURNED_CONTENT_LIMIT;
    let mut bytes = out.into_bytes();
    if headers_only {
        let end = header_end(body);
        bytes.extend_from_slice(format!("\r\n--{boundary}\r\nContent-Type: text/rfc822-headers\r\nContent-Description: Undelivered Message Headers\r\n\r\n").as_bytes());
        bytes.extend_from_slice(&body[..end]);
    } else {
        bytes.extend_from_slice(format!("\r\n--{boundary}\r\nContent-Type: message/rfc822\r\nContent-Description: Undelivered Message\r\n\r\n").as_bytes());
        bytes.extend_from_slice(body);
    }
    if !bytes.ends_with(b"\r\n") {
        bytes.extend_from_slice(b"\r\n");
    }
    bytes.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    bytes
}

/// The enhanced status for `Status:`: from the reply when it has one, else a default
/// for the action.
fn status_of(reply: &str, action: DsnAction) -> String {
    if action == DsnAction::Failed && reply.starts_with("expired") {
        return "4.4.7".into(); // RFC 3463: delivery time expired
    }
    let reply = smtp_reply(reply).unwrap_or(reply);
    let found = reply.split_whitespace().take(4).find(|w| {
        let parts: Vec<&str> = w.split('.').collect();
        parts.len() == 3
            && parts
                .iter()
                .all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()))
    });
    match (found, action) {
        (Some(s), _) => s.to_owned(),
        (None, DsnAction::Failed) => "5.0.0".into(),
        (None, DsnAction::Delivered) => "2.0.0".into(),
        (None, DsnAction::Delayed) => "4.0.0".into(),
    }
}

/// `host: 550 5.1.1 ...` or `host[192.0.2.1]:25 (MX 10 of example.net): 550 5.1.1 ...`
/// records a remote server's reply: returns the host and the reply.
fn remote_reply(reply: &str) -> Option<(&str, &str)> {
    let (route, rest) = reply.split_once(": ")?;
    let host = route.split(['[', ' ']).next()?;
    let plain = host.len() == route.len() || route.as_bytes().get(host.len()) == Some(&b'[');
    (rest.as_bytes().first().is_some_and(u8::is_ascii_digit) && !host.is_empty() && plain)
        .then_some((host, rest))
}

fn remote_mta(reply: &str) -> Option<&str> {
    remote_reply(reply).map(|(host, _)| host)
}

/// The SMTP reply in a recorded outcome, when there is one (`550 5.1.1 No such user`).
fn smtp_reply(reply: &str) -> Option<&str> {
    let reply = remote_reply(reply).map_or(reply, |(_, rest)| rest);
    let code = reply.get(..3)?;
    (code.bytes().all(|b| b.is_ascii_digit())
        && matches!(reply.as_bytes().get(3), None | Some(b' ' | b'-')))
    .then_some(reply)
}

/// Text on one header line: no CR or LF.
fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c == '\r' || c == '\n' { ' ' } else { c })
        .collect()
}

/// Where the header section ends (the empty line, or the whole message).
fn header_end(message: &[u8]) -> usize {
    message
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(message.len(), |i| i + 2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conformance::sample;
    use crate::message::RecipientState;

    fn failed_message() -> MessageMeta {
        let mut m = sample(42, 2);
        m.from = "alice@example.test".into();
        m.params.envid = Some("ENV-1".into());
        m.recipients[0].state = RecipientState::Failed;
        m.recipients[0].last_reply =
            Some("mx.dest0.test: 550 5.1.1 <rcpt0@dest0.test>: No such user".into());
        m.recipients[1].state = RecipientState::Delivered;
        m
    }

    #[test]
    fn a_failure_report_has_every_part() {
        let m = failed_message();
        let body = b"Subject: original\r\nFrom: alice@example.test\r\n\r\nthe text\r\n";
        let dsn =
            String::from_utf8(build(&m, body, &[0], DsnAction::Failed, "mx.example.test")).unwrap();
        for needle in [
            "From: Mail Delivery System <MAILER-DAEMON@mx.example.test>\r\n",
            "To: <alice@example.test>\r\n",
            "Auto-Submitted: auto-replied\r\n",
            "Content-Type: multipart/report; report-type=delivery-status;",
            "Content-Type: message/delivery-status\r\n",
            "Reporting-MTA: dns; mx.example.test\r\n",
            "Original-Envelope-Id: ENV-1\r\n",
            "Final-Recipient: rfc822; rcpt0@dest0.test\r\n",
            "Original-Recipient: rfc822; orig0@x.test\r\n",
            "Action: failed\r\nStatus: 5.1.1\r\n",
            "Remote-MTA: dns; mx.dest0.test\r\n",
            "Diagnostic-Code: smtp; 550 5.1.1 <rcpt0@dest0.test>: No such user\r\n",
            "Content-Type: message/rfc822\r\n",
            "Subject: original\r\nFrom: alice@example.test\r\n\r\nthe text\r\n",
        ] {
            assert!(dsn.contains(needle), "missing {needle:?} in\n{dsn}");
        }
        assert!(
            !dsn.contains("rcpt1@"),
            "only the failed recipient is reported"
        );
        // Every line ends in CRLF, and the MIME structure closes.
        assert!(dsn.lines().count() > 20 && !dsn.replace("\r\n", "").contains('\n'));
        assert!(dsn.trim_end().ends_with("--"));
    }

    #[test]
    fn ret_hdrs_returns_headers_only() {
        let mut m = failed_message();
        m.params.ret = Some(true);
        let dsn = String::from_utf8(build(
            &m,
            b"Subject: s\r\n\r\nsecret body\r\n",
            &[0],
            DsnAction::Failed,
            "h",
        ))
        .unwrap();
        assert!(
            dsn.contains("Content-Type: text/rfc822-headers\r\n") && dsn.contains("Subject: s\r\n")
        );
        assert!(!dsn.contains("secret body"));
    }

    /// RFC 8689 §5: the report about a REQUIRETLS message is sent with REQUIRETLS and
    /// returns the header only, even with RET=FULL; other reports carry no REQUIRETLS.
    #[test]
    fn a_requiretls_message_gets_a_requiretls_report_without_its_body() {
        let mut m = failed_message();
        assert!(!params(&m).requiretls);
        m.params.requiretls = true;
        m.params.ret = Some(false);
        let p = params(&m);
        assert!(p.requiretls);
        assert_eq!(p.envid, None, "the report has no ENVID of its own");
        let dsn = String::from_utf8(build(
            &m,
            b"Subject: s\r\n\r\nsecret body\r\n",
            &[0],
            DsnAction::Failed,
            "h",
        ))
        .unwrap();
        assert!(
            dsn.contains("Content-Type: text/rfc822-headers\r\n"),
            "{dsn}"
        );
        assert!(dsn.contains("Subject: s\r\n"), "{dsn}");
        assert!(!dsn.contains("secret body"), "{dsn}");
    }

    #[test]
    fn who_gets_reports() {
        let mut m = failed_message();
        let r = m.recipients[0].clone();
        assert!(
            wants_report(&m, &r, DsnAction::Failed),
            "failures by default"
        );
        assert!(
            !wants_report(&m, &r, DsnAction::Delivered),
            "no success reports unless asked"
        );
        let mut never = r.clone();
        never.dsn.notify = Some(0);
        assert!(!wants_report(&m, &never, DsnAction::Failed), "NOTIFY=NEVER");
        let mut success = r.clone();
        success.dsn.notify = Some(1);
        assert!(
            wants_report(&m, &success, DsnAction::Delivered)
                && !wants_report(&m, &success, DsnAction::Failed)
        );
        m.from = String::new();
        assert!(
            !wants_report(&m, &r, DsnAction::Failed),
            "never to the null sender: a bounce does not bounce"
        );
    }

    #[test]
    fn status_and_remote_mta_parsing() {
        assert_eq!(
            status_of("mx.test: 452 4.2.2 Mailbox full", DsnAction::Failed),
            "4.2.2"
        );
        assert_eq!(
            status_of(
                "expired after 7 attempts: connection refused",
                DsnAction::Failed
            ),
            "4.4.7"
        );
        assert_eq!(status_of("connection refused", DsnAction::Failed), "5.0.0");
        assert_eq!(remote_mta("mx.test: 550 5.1.1 no"), Some("mx.test"));
        let routed = "mx.test[192.0.2.1]:25 (MX 10 of d.test): 550 5.1.1 no";
        assert_eq!(remote_mta(routed), Some("mx.test"));
        assert_eq!(smtp_reply(routed), Some("550 5.1.1 no"));
        assert_eq!(status_of(routed, DsnAction::Failed), "5.1.1");
        assert_eq!(remote_mta("a b: 550 5.1.1 no"), None);
        assert_eq!(remote_mta("556 5.1.10 null MX"), None);
        assert_eq!(smtp_reply("556 5.1.10 null MX"), Some("556 5.1.10 null MX"));
        assert_eq!(smtp_reply("connection refused"), None);
    }
}
