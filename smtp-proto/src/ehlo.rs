//! The EHLO reply: the service extensions a server offers (RFC 5321 §4.1.1.1), as a
//! typed set that servers encode and clients parse.

use std::fmt::Write as _;

use crate::command::Mechanism;
use crate::reply::{Reply, ReplyCode};

/// The extensions listed in an EHLO reply.
///
/// ```
/// use smtp_proto::{Capabilities, Mechanism};
/// let caps = Capabilities {
///     pipelining: true,
///     size: Some(10_485_760),
///     auth: vec![Mechanism::Plain, Mechanism::Login],
///     ..Capabilities::default()
/// };
/// let reply = caps.to_reply("mx.example.test");
/// assert_eq!(reply.to_bytes(), b"250-mx.example.test\r\n250-PIPELINING\r\n250-SIZE 10485760\r\n250 AUTH PLAIN LOGIN\r\n");
/// assert_eq!(Capabilities::from_reply(&reply), caps);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// `PIPELINING` (RFC 2920)
    pub pipelining: bool,
    /// `SIZE n` (RFC 1870); `Some(0)` when SIZE is listed without a fixed limit.
    pub size: Option<u64>,
    /// `8BITMIME` (RFC 6152)
    pub eightbitmime: bool,
    /// `SMTPUTF8` (RFC 6531)
    pub smtputf8: bool,
    /// `ENHANCEDSTATUSCODES` (RFC 2034)
    pub enhanced_status_codes: bool,
    /// `STARTTLS` (RFC 3207)
    pub starttls: bool,
    /// `AUTH mechanisms` (RFC 4954); empty when AUTH is not offered.
    pub auth: Vec<Mechanism>,
    /// `CHUNKING` (RFC 3030)
    pub chunking: bool,
    /// `BINARYMIME` (RFC 3030)
    pub binarymime: bool,
    /// `DSN` (RFC 3461)
    pub dsn: bool,
    /// `REQUIRETLS` (RFC 8689)
    pub requiretls: bool,
    /// `MT-PRIORITY` (RFC 6710 §3). A server advertises the bare keyword: it names no
    /// priority assignment policy (RFC 6710 §9: MIXER, STANAG4406, NSEP), since it
    /// keeps the 19 levels as they are and only orders deliveries by them. A policy name
    /// after the keyword in a reply read with [`Capabilities::from_reply`] is accepted
    /// and not kept.
    pub mt_priority: bool,
    /// Any other keyword, upper-cased, with its parameters as sent.
    pub other: Vec<(String, String)>,
}

impl Capabilities {
    /// The `250` EHLO reply: the host name on the first line, one extension per line.
    pub fn to_reply(&self, hostname: &str) -> Reply {
        let mut text = String::with_capacity(160);
        text.push_str(hostname);
        let mut line = |s: &str| {
            text.push('\n');
            text.push_str(s);
        };
        if self.pipelining {
            line("PIPELINING");
        }
        if let Some(size) = self.size {
            line(&format!("SIZE {size}"));
        }
        if self.eightbitmime {
            line("8BITMIME");
        }
        if self.smtputf8 {
            line("SMTPUTF8");
        }
        if self.enhanced_status_codes {
            line("ENHANCEDSTATUSCODES");
        }
        if self.chunking {
            line("CHUNKING");
        }
        if self.binarymime {
            line("BINARYMIME");
        }
        if self.dsn {
            line("DSN");
        }
        if self.starttls {
            line("STARTTLS");
        }
        if !self.auth.is_empty() {
            let mut auth = String::from("AUTH");
            for m in &self.auth {
                let _ = write!(auth, " {m}");
            }
            line(&auth);
        }
        if self.requiretls {
            line("REQUIRETLS");
        }
        if self.mt_priority {
            line("MT-PRIORITY");
        }
        for (keyword, params) in &self.other {
            if params.is_empty() {
                line(keyword);
            } else {
                line(&format!("{keyword} {params}"));
            }
        }
        Reply::plain(ReplyCode::OK, text)
    }

    /// Reads the extensions from an EHLO (or LHLO) reply; the first line (the server's
    /// name) is skipped. Unknown keywords land in [`Capabilities::other`].
    pub fn from_reply(reply: &Reply) -> Self {
        let mut caps = Self::default();
        for line in reply.lines().skip(1) {
            let line = line.trim();
            let (keyword, params) = match line.find([' ', '=']) {
                Some(i) => (&line[..i], line[i + 1..].trim()),
                None => (line, ""),
            };
            let keyword = keyword.to_ascii_uppercase();
            match keyword.as_str() {
                "PIPELINING" => caps.pipelining = true,
                "SIZE" => caps.size = Some(params.parse().unwrap_or(0)),
                "8BITMIME" => caps.eightbitmime = true,
                "SMTPUTF8" => caps.smtputf8 = true,
                "ENHANCEDSTATUSCODES" => caps.enhanced_status_codes = true,
                "STARTTLS" => caps.starttls = true,
                "CHUNKING" => caps.chunking = true,
                "BINARYMIME" => caps.binarymime = true,
                "DSN" => caps.dsn = true,
                "REQUIRETLS" => caps.requiretls = true,
                "MT-PRIORITY" => caps.mt_priority = true,
                // `AUTH=LOGIN PLAIN` is the pre-RFC form some servers still send.
                "AUTH" => {
                    for m in params.split(' ').filter_map(Mechanism::parse) {
                        if !caps.auth.contains(&m) {
                            caps.auth.push(m);
                        }
                    }
                }
                "" => {}
                _ => caps.other.push((keyword, params.to_owned())),
            }
        }
        caps
    }

    /// Whether `mechanism` is offered.
    pub fn offers_auth(&self, mechanism: &Mechanism) -> bool {
        self.auth.contains(mechanism)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ReplyParser;

    #[test]
    fn parses_real_world_ehlo_replies() {
        let mut parser = ReplyParser::default();
        parser.push(
            b"250-mx.google.com at your service, [192.0.2.1]\r\n250-SIZE 157286400\r\n\
250-8BITMIME\r\n250-STARTTLS\r\n250-ENHANCEDSTATUSCODES\r\n250-PIPELINING\r\n\
250-CHUNKING\r\n250-AUTH=LOGIN PLAIN\r\n250-AUTH LOGIN PLAIN XOAUTH2\r\n250-X-EXPS GSSAPI\r\n250 SMTPUTF8\r\n",
        );
        let reply = parser.next_reply().unwrap().unwrap();
        let caps = Capabilities::from_reply(&reply);
        assert_eq!(caps.size, Some(157_286_400));
        assert!(caps.eightbitmime && caps.starttls && caps.enhanced_status_codes);
        assert!(caps.pipelining && caps.chunking && caps.smtputf8);
        assert!(!caps.dsn && !caps.binarymime);
        assert_eq!(
            caps.auth,
            vec![Mechanism::Login, Mechanism::Plain, Mechanism::XOAuth2]
        );
        assert_eq!(caps.other, vec![("X-EXPS".to_owned(), "GSSAPI".to_owned())]);
    }

    #[test]
    fn mt_priority_with_or_without_a_policy() {
        for line in ["MT-PRIORITY", "MT-PRIORITY MIXER", "mt-priority STANAG4406"] {
            let reply = Reply::plain(ReplyCode::OK, format!("mx\n{line}"));
            let caps = Capabilities::from_reply(&reply);
            assert!(caps.mt_priority, "{line}");
            assert!(caps.other.is_empty(), "{line}");
        }
        let reply = Reply::plain(ReplyCode::OK, "mx\nX-MT-PRIORITY");
        assert!(!Capabilities::from_reply(&reply).mt_priority);
        let caps = Capabilities {
            mt_priority: true,
            ..Capabilities::default()
        };
        assert_eq!(
            caps.to_reply("h").to_bytes(),
            b"250-h\r\n250 MT-PRIORITY\r\n"
        );
    }

    #[test]
    fn size_without_limit() {
        let reply = Reply::plain(ReplyCode::OK, "mx\nSIZE\nsize 0");
        assert_eq!(Capabilities::from_reply(&reply).size, Some(0));
    }

    #[test]
    fn round_trip_everything() {
        let caps = Capabilities {
            pipelining: true,
            size: Some(1),
            eightbitmime: true,
            smtputf8: true,
            enhanced_status_codes: true,
            starttls: true,
            auth: vec![Mechanism::Plain],
            chunking: true,
            binarymime: true,
            dsn: true,
            requiretls: true,
            mt_priority: true,
            other: vec![
                ("XCLIENT".into(), "ADDR NAME".into()),
                ("HELP".into(), String::new()),
            ],
        };
        assert_eq!(Capabilities::from_reply(&caps.to_reply("h")), caps);
    }
}
