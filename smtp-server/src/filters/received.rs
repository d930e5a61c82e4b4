//! The `Received:` header (RFC 5321 §4.4, protocol names of RFC 3848).

use std::time::SystemTime;

use crate::{Check, ClientName, DataRequest, Decision, SessionInfo};
use smtp_proto::{ForwardPath, HeloName};

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
/// Mail submitted on this machine ([`SessionInfo::local`]) gets
/// `Received: by mx.example.test (mta, from userid 1000); <date>`, as Postfix writes it.
///
/// ```
/// let layer = smtp_server::filter(smtp_server::filters::Received::new("mx.example.test"));
/// # let _ = layer;
/// ```
#[derive(Clone, Debug)]
pub struct Received {
    hostname: String,
}

impl Received {
    /// Our host name for the `by` clause.
    pub fn new(hostname: &str) -> Self {
        Self {
            hostname: hostname.into(),
        }
    }
}

impl Check<DataRequest> for Received {
    fn check(&self, req: &mut DataRequest) -> Option<Decision> {
        let s = &req.session;
        let now = smtp_proto::rfc5322_date(SystemTime::now());
        if s.protocol == SessionInfo::LOCAL {
            // Submitted on this machine (Postfix's pickup writes the same).
            let user = s.authenticated.as_deref().unwrap_or("unknown");
            let user = user.split(' ').map(sanitize).collect::<Vec<_>>().join(" ");
            let value = format!("by {} (mta, from {user});\r\n\t{now}", self.hostname);
            req.prepend_header("Received", &value);
            return None;
        }
        let helo = match &s.helo {
            Some(HeloName::Other(name)) => sanitize(name),
            Some(name) => name.to_string(),
            None => "unknown".into(),
        };
        let ip = match s.peer.ip() {
            std::net::IpAddr::V4(ip) => format!("[{ip}]"),
            std::net::IpAddr::V6(ip) => format!("[IPv6:{ip}]"),
        };
        // With a reverse-DNS filter in the chain: the confirmed name, or `unknown`.
        let client = match s.connection.get::<ClientName>() {
            Some(found) => match found.verified() {
                Some(name) => format!("{} {ip}", sanitize(name)),
                None => format!("unknown {ip}"),
            },
            None => ip,
        };
        let mut value = format!(
            "from {helo} ({client})\r\n\tby {} (mta) with {}",
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
        value.push_str(&format!(";\r\n\t{now}"));
        req.prepend_header("Received", &value);
        None
    }
}

/// Keeps a client-supplied name from breaking the header's syntax.
fn sanitize(text: &str) -> String {
    text.chars()
        .filter(|c| c.is_ascii_graphic() && !matches!(c, ';' | '(' | ')' | '\\'))
        .take(255)
        .collect()
}
