//! Delivery status notifications (RFC 3464): the bounce a sender gets when some of its
//! recipients failed (or, when asked with NOTIFY, were delivered or are delayed).
//!
//! ```text
//! multipart/report; report-type=delivery-status
//! ├── text/plain                 what happened, for people
//! ├── message/delivery-status    Reporting-MTA, then per recipient: Final-Recipient,
//! │                              Action, Status, Remote-MTA, Diagnostic-Code
//! └── message/rfc822             the original message (RET=FULL, the default), or
//!     text/rfc822-headers        its header only (RET=HDRS)
//! ```
//!
//! A DSN is sent with the null reverse-path `<>`, so it can never cause another one.

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::message::{MessageMeta, RecipientMeta};

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
/// the recipient's NOTIFY; without NOTIFY, failures only (RFC 3461 §4.1).
pub fn wants_report(message: &MessageMeta, recipient: &RecipientMeta, action: DsnAction) -> bool {
    if message.from.is_empty() {
        return false;
    }
    match recipient.dsn.notify {
        Some(bits) => bits & action.notify_bit() != 0,
        None => action == DsnAction::Failed,
    }
}

/// Builds the DSN for `recipients` (indexes into `message.recipients`, all with the same
/// action), from `reporting_mta` (our host name). Returns the message bytes; the caller
/// enqueues them from `<>` to `message.from`.
pub fn build(message: &MessageMeta, body: &[u8], recipients: &[usize], action: DsnAction, reporting_mta: &str) -> Vec<u8> {
    let now = SystemTime::now();
    let boundary = format!("{}.{}/{reporting_mta}", message.id, now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    let (subject, intro) = match action {
        DsnAction::Failed => (
            "Undelivered Mail Returned to Sender",
            "I'm sorry to have to inform you that your message could not\r\nbe delivered to one or more recipients. It's attached below.",
        ),
        DsnAction::Delivered => ("Successful Mail Delivery Report", "Your message was successfully delivered to the destination(s)\r\nlisted below."),
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
        date = rfc5322_date(now),
        id = message.id,
        nanos = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos()),
    );
    for &i in recipients {
        if let Some(r) = message.recipients.get(i) {
            let _ = write!(out, "<{}>: {}\r\n", r.address, one_line(r.last_reply.as_deref().unwrap_or("no details")));
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
    let _ = write!(out, "Arrival-Date: {}\r\n", rfc5322_date(UNIX_EPOCH + std::time::Duration::from_secs(message.received)));
    for &i in recipients {
        let Some(r) = message.recipients.get(i) else { continue };
        let reply = r.last_reply.as_deref().unwrap_or("");
        let _ = write!(out, "\r\nFinal-Recipient: rfc822; {}\r\n", r.address);
        if let Some((kind, address)) = &r.dsn.orcpt {
            let _ = write!(out, "Original-Recipient: {}; {}\r\n", one_line(kind), one_line(address));
        }
        let _ = write!(out, "Action: {}\r\nStatus: {}\r\n", action.as_str(), status_of(reply, action));
        if let Some(mta) = remote_mta(reply) {
            let _ = write!(out, "Remote-MTA: dns; {mta}\r\n");
        }
        if let Some(code) = smtp_reply(reply) {
            let _ = write!(out, "Diagnostic-Code: smtp; {}\r\n", one_line(code));
        } else if !reply.is_empty() {
            let _ = write!(out, "Diagnostic-Code: x-local; {}\r\n", one_line(reply));
        }
    }
    let headers_only = message.params.ret == Some(true) || action != DsnAction::Failed;
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
    let found = reply.split_whitespace().take(4).find(|w| {
        let parts: Vec<&str> = w.split('.').collect();
        parts.len() == 3 && parts.iter().all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()))
    });
    match (found, action) {
        (Some(s), _) => s.to_owned(),
        (None, DsnAction::Failed) => "5.0.0".into(),
        (None, DsnAction::Delivered) => "2.0.0".into(),
        (None, DsnAction::Delayed) => "4.0.0".into(),
    }
}

/// `host: 550 5.1.1 ...` records a remote server's reply; returns the host.
fn remote_mta(reply: &str) -> Option<&str> {
    let (host, rest) = reply.split_once(": ")?;
    (rest.as_bytes().first().is_some_and(u8::is_ascii_digit) && !host.contains(' ')).then_some(host)
}

/// The SMTP reply in a recorded outcome, when there is one (`550 5.1.1 No such user`).
fn smtp_reply(reply: &str) -> Option<&str> {
    let reply = remote_mta(reply).map_or(reply, |host| &reply[host.len() + 2..]);
    let code = reply.get(..3)?;
    (code.bytes().all(|b| b.is_ascii_digit()) && matches!(reply.as_bytes().get(3), None | Some(b' ' | b'-'))).then_some(reply)
}

/// Text on one header line: no CR or LF.
fn one_line(text: &str) -> String {
    text.chars().map(|c| if c == '\r' || c == '\n' { ' ' } else { c }).collect()
}

/// Where the header section ends (the empty line, or the whole message).
fn header_end(message: &[u8]) -> usize {
    message.windows(4).position(|w| w == b"\r\n\r\n").map_or(message.len(), |i| i + 2)
}

/// A date in the RFC 5322 format, in UTC.
fn rfc5322_date(time: SystemTime) -> String {
    let secs = time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let days = secs / 86_400;
    let (h, m, s) = ((secs % 86_400) / 3600, (secs % 3600) / 60, secs % 60);
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    format!(
        "{}, {day} {} {year} {h:02}:{m:02}:{s:02} +0000",
        WEEKDAYS[(days % 7) as usize],
        MONTHS[(month - 1) as usize]
    )
}
