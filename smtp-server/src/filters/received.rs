//! The `Received:` header (RFC 5321 §4.4, protocol names of RFC 3848).

use std::time::{SystemTime, UNIX_EPOCH};

use smtp_proto::{ForwardPath, HeloName};
use tower::Layer;

use super::sync_filter_service;
use crate::{DataRequest, Decision};

/// Adds a `Received:` header to every message:
///
/// ```text
/// Received: from client.example ([192.0.2.1])
///         by mx.example.test (mta) with ESMTPSA
///         (using TLSv1.3 with cipher TLS13_AES_256_GCM_SHA384)
///         for <bob@example.test>; Tue, 24 Nov 2026 20:00:00 +0000
/// ```
///
/// `with` names the protocol: ESMTP, ESMTPS under TLS, ESMTPSA when authenticated too.
#[derive(Clone, Debug)]
pub struct ReceivedLayer {
    hostname: std::sync::Arc<str>,
}

impl ReceivedLayer {
    /// Our host name for the `by` clause.
    pub fn new(hostname: &str) -> Self {
        Self {
            hostname: hostname.into(),
        }
    }
}

impl<S> Layer<S> for ReceivedLayer {
    type Service = Received<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Received {
            hostname: self.hostname.clone(),
            inner,
        }
    }
}

/// The service of [`ReceivedLayer`].
#[derive(Clone, Debug)]
pub struct Received<S> {
    hostname: std::sync::Arc<str>,
    inner: S,
}

impl<S> Received<S> {
    fn add(&self, req: &mut DataRequest) -> Option<Decision> {
        let s = &req.session;
        let helo = match &s.helo {
            Some(HeloName::Other(name)) => sanitize(name),
            Some(name) => name.to_string(),
            None => "unknown".into(),
        };
        let ip = match s.peer.ip() {
            std::net::IpAddr::V4(ip) => format!("[{ip}]"),
            std::net::IpAddr::V6(ip) => format!("[IPv6:{ip}]"),
        };
        let mut value = format!(
            "from {helo} ({ip})\r\n\tby {} (mta) with {}",
            self.hostname, s.protocol
        );
        if let Some(tls) = &s.tls {
            value.push_str(&format!(
                "\r\n\t(using {} with cipher {})",
                tls.version, tls.cipher
            ));
        }
        if let [only] = req.envelope.recipients.as_slice()
            && let ForwardPath::Mailbox(m) = &only.to
        {
            value.push_str(&format!("\r\n\tfor <{}>", sanitize(m.as_str())));
        }
        value.push_str(&format!(";\r\n\t{}", rfc5322_date(SystemTime::now())));
        req.prepend_header("Received", &value);
        None
    }
}

sync_filter_service!(Received, DataRequest, |this, request| this.add(request));

/// Keeps a client-supplied name from breaking the header's syntax.
fn sanitize(text: &str) -> String {
    text.chars()
        .filter(|c| c.is_ascii_graphic() && !matches!(c, ';' | '(' | ')' | '\\'))
        .take(255)
        .collect()
}

/// A date in the RFC 5322 §3.3 format, in UTC: `Tue, 24 Nov 2026 20:00:00 +0000`.
pub fn rfc5322_date(time: SystemTime) -> String {
    let secs = time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let days = secs / 86_400;
    let (h, m, s) = ((secs % 86_400) / 3600, (secs % 3600) / 60, secs % 60);
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    let weekday = WEEKDAYS[(days % 7) as usize];
    let month = MONTHS[(month - 1) as usize];
    format!("{weekday}, {day} {month} {year} {h:02}:{m:02}:{s:02} +0000")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn dates() {
        assert_eq!(rfc5322_date(UNIX_EPOCH), "Thu, 1 Jan 1970 00:00:00 +0000");
        assert_eq!(
            rfc5322_date(UNIX_EPOCH + Duration::from_secs(1_795_550_400)),
            "Tue, 24 Nov 2026 20:00:00 +0000"
        );
        assert_eq!(
            rfc5322_date(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "Tue, 29 Feb 2000 00:00:00 +0000"
        );
    }
}
