//! Commands (RFC 5321 §4.1 and the extensions): parsing one command line and encoding
//! a command for the wire.
//!
//! [`Command::parse`] is where every command is parsed; the server session calls it
//! for each complete line, and the client encodes with [`Command::encode`].

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

use crate::Error;
use crate::address::{ForwardPath, HeloName, ReversePath, scan_path};
use crate::params::{MailParameters, RcptParameters, split_bytes};
use crate::reply::push_decimal;

/// An SMTP or LMTP command.
///
/// ```
/// use smtp_proto::Command;
/// let cmd = Command::parse(b"MAIL FROM:<alice@example.test> SIZE=1024").unwrap();
/// let Command::Mail { from, params } = &cmd else { unreachable!() };
/// assert_eq!(from.to_string(), "<alice@example.test>");
/// assert_eq!(params.size, Some(1024));
/// assert_eq!(cmd.to_string(), "MAIL FROM:<alice@example.test> SIZE=1024\r\n");
/// ```
#[derive(Clone, PartialEq, Eq)]
pub enum Command {
    /// `EHLO name` (RFC 5321 §4.1.1.1)
    Ehlo(HeloName),
    /// `HELO name`
    Helo(HeloName),
    /// `LHLO name` (LMTP, RFC 2033)
    Lhlo(HeloName),
    /// `MAIL FROM:<reverse-path> [params]` (RFC 5321 §4.1.1.2)
    Mail {
        /// The sender, or `<>`.
        from: ReversePath,
        /// ESMTP parameters.
        params: MailParameters,
    },
    /// `RCPT TO:<forward-path> [params]` (RFC 5321 §4.1.1.3)
    Rcpt {
        /// The recipient.
        to: ForwardPath,
        /// ESMTP parameters.
        params: RcptParameters,
    },
    /// `DATA` (RFC 5321 §4.1.1.4)
    Data,
    /// `BDAT size [LAST]` (RFC 3030): `size` octets follow the command line.
    Bdat {
        /// Octets in the chunk.
        size: u64,
        /// Whether this is the last chunk of the message.
        last: bool,
    },
    /// `RSET` (RFC 5321 §4.1.1.5)
    Rset,
    /// `VRFY string` (RFC 5321 §4.1.1.6)
    Vrfy(String),
    /// `EXPN string` (RFC 5321 §4.1.1.7)
    Expn(String),
    /// `HELP [topic]` (RFC 5321 §4.1.1.8)
    Help(Option<String>),
    /// `NOOP [string]` (RFC 5321 §4.1.1.9); the argument is ignored.
    Noop,
    /// `QUIT` (RFC 5321 §4.1.1.10)
    Quit,
    /// `STARTTLS` (RFC 3207)
    StartTls,
    /// `AUTH mechanism [initial-response]` (RFC 4954 §4)
    Auth {
        /// The SASL mechanism.
        mechanism: Mechanism,
        /// The decoded initial response; `Some(empty)` for `=`.
        initial_response: Option<SaslData>,
    },
}

/// A SASL mechanism name (RFC 4954, RFC 4422).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Mechanism {
    /// `PLAIN` (RFC 4616)
    Plain,
    /// `LOGIN` (the widely deployed draft mechanism)
    Login,
    /// `XOAUTH2`
    XOAuth2,
    /// `OAUTHBEARER` (RFC 7628)
    OAuthBearer,
    /// `CRAM-MD5` (RFC 2195)
    CramMd5,
    /// Any other mechanism, upper-cased.
    Other(String),
}

impl Mechanism {
    /// Parses a mechanism name (case-insensitive).
    pub fn parse(name: &str) -> Option<Self> {
        let valid = !name.is_empty()
            && name.len() <= 20
            && name
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_');
        if !valid {
            return None;
        }
        let upper = name.to_ascii_uppercase();
        Some(match upper.as_str() {
            "PLAIN" => Self::Plain,
            "LOGIN" => Self::Login,
            "XOAUTH2" => Self::XOAuth2,
            "OAUTHBEARER" => Self::OAuthBearer,
            "CRAM-MD5" => Self::CramMd5,
            _ => Self::Other(upper),
        })
    }

    /// The name as advertised.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Plain => "PLAIN",
            Self::Login => "LOGIN",
            Self::XOAuth2 => "XOAUTH2",
            Self::OAuthBearer => "OAUTHBEARER",
            Self::CramMd5 => "CRAM-MD5",
            Self::Other(name) => name,
        }
    }
}

impl fmt::Display for Mechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Decoded SASL data (an initial response or a client response). It may hold a
/// password, so its `Debug` form never shows the bytes.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct SaslData(pub Vec<u8>);

impl SaslData {
    /// Decodes a base64 SASL line; `=` (and the empty line) is the empty response.
    pub fn decode(text: &str) -> Result<Self, Error> {
        if text == "=" || text.is_empty() {
            return Ok(Self(Vec::new()));
        }
        BASE64
            .decode(text)
            .map(Self)
            .map_err(|_| Error::InvalidBase64)
    }

    /// Appends the base64 form (`=` when empty).
    pub fn encode(&self, out: &mut Vec<u8>) {
        if self.0.is_empty() {
            out.push(b'=');
        } else {
            out.extend_from_slice(BASE64.encode(&self.0).as_bytes());
        }
    }
}

impl fmt::Debug for SaslData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SaslData(<{} bytes redacted>)", self.0.len())
    }
}

/// The commands in the four-letter verb space, as little-endian upper-case words.
const fn word(v: &[u8; 4]) -> u32 {
    u32::from_le_bytes(*v)
}
const EHLO: u32 = word(b"EHLO");
const HELO: u32 = word(b"HELO");
const LHLO: u32 = word(b"LHLO");
const MAIL: u32 = word(b"MAIL");
const RCPT: u32 = word(b"RCPT");
const DATA: u32 = word(b"DATA");
const BDAT: u32 = word(b"BDAT");
const RSET: u32 = word(b"RSET");
const VRFY: u32 = word(b"VRFY");
const EXPN: u32 = word(b"EXPN");
const HELP: u32 = word(b"HELP");
const NOOP: u32 = word(b"NOOP");
const QUIT: u32 = word(b"QUIT");
const AUTH: u32 = word(b"AUTH");

impl Command {
    /// Parses one command line, without its CRLF.
    ///
    /// Errors name what was wrong ([`Error::reply`] gives the reply the server sends):
    /// a NUL or bare CR anywhere, bytes that are not UTF-8, an unknown verb, a bad
    /// argument.
    pub fn parse(line: &[u8]) -> Result<Self, Error> {
        if let Some(i) = memchr::memchr3(0, b'\r', b'\n', line) {
            return Err(match line[i] {
                0 => Error::NulByte,
                b'\r' => Error::BareCarriageReturn,
                _ => Error::BareLineFeed,
            });
        }
        let line = std::str::from_utf8(line).map_err(|_| Error::InvalidUtf8)?;
        let (verb, args) = match line.bytes().position(|b| b == b' ') {
            Some(i) => (&line[..i], &line[i + 1..]),
            None => (line, ""),
        };
        let vb = verb.as_bytes();
        if let &[a, b, c, d] = vb {
            // Each arm returns directly: the command is built in place, not copied.
            match u32::from_le_bytes([a, b, c, d]) & 0xDFDF_DFDF {
                MAIL => return parse_mail(args),
                RCPT => return parse_rcpt(args),
                EHLO => return helo_name(args, "EHLO").map(Self::Ehlo),
                HELO => return helo_name(args, "HELO").map(Self::Helo),
                LHLO => return helo_name(args, "LHLO").map(Self::Lhlo),
                DATA => return no_args(args, Self::Data, "DATA"),
                BDAT => return parse_bdat(args),
                RSET => return no_args(args, Self::Rset, "RSET"),
                QUIT => return no_args(args, Self::Quit, "QUIT"),
                NOOP => return Ok(Self::Noop),
                VRFY => return required(args, "VRFY").map(Self::Vrfy),
                EXPN => return required(args, "EXPN").map(Self::Expn),
                HELP => {
                    let topic = Some(args.trim())
                        .filter(|a| !a.is_empty())
                        .map(str::to_owned);
                    return Ok(Self::Help(topic));
                }
                AUTH => return parse_auth(args),
                _ => {}
            }
        }
        if verb.eq_ignore_ascii_case("STARTTLS") {
            return no_args(args, Self::StartTls, "STARTTLS");
        }
        const HTTP_VERBS: [&str; 7] =
            ["GET", "HEAD", "POST", "PUT", "CONNECT", "OPTIONS", "DELETE"];
        if HTTP_VERBS.iter().any(|v| verb.eq_ignore_ascii_case(v)) {
            return Err(Error::ForeignProtocol);
        }
        Err(Error::UnknownCommand)
    }

    /// The verb, upper-case (`"MAIL"`, `"STARTTLS"`, ...).
    pub fn verb(&self) -> &'static str {
        match self {
            Self::Ehlo(_) => "EHLO",
            Self::Helo(_) => "HELO",
            Self::Lhlo(_) => "LHLO",
            Self::Mail { .. } => "MAIL",
            Self::Rcpt { .. } => "RCPT",
            Self::Data => "DATA",
            Self::Bdat { .. } => "BDAT",
            Self::Rset => "RSET",
            Self::Vrfy(_) => "VRFY",
            Self::Expn(_) => "EXPN",
            Self::Help(_) => "HELP",
            Self::Noop => "NOOP",
            Self::Quit => "QUIT",
            Self::StartTls => "STARTTLS",
            Self::Auth { .. } => "AUTH",
        }
    }

    /// Appends the command line, CRLF included.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.verb().as_bytes());
        match self {
            Self::Ehlo(name) | Self::Helo(name) | Self::Lhlo(name) => {
                out.push(b' ');
                out.extend_from_slice(name.to_text().as_bytes());
            }
            Self::Mail { from, params } => {
                out.extend_from_slice(b" FROM:");
                out.extend_from_slice(from.to_string().as_bytes());
                params.encode(out);
            }
            Self::Rcpt { to, params } => {
                out.extend_from_slice(b" TO:");
                out.extend_from_slice(to.to_string().as_bytes());
                params.encode(out);
            }
            Self::Bdat { size, last } => {
                out.push(b' ');
                push_decimal(out, *size);
                if *last {
                    out.extend_from_slice(b" LAST");
                }
            }
            Self::Vrfy(arg) | Self::Expn(arg) | Self::Help(Some(arg)) => {
                out.push(b' ');
                out.extend_from_slice(arg.as_bytes());
            }
            Self::Auth {
                mechanism,
                initial_response,
            } => {
                out.push(b' ');
                out.extend_from_slice(mechanism.as_str().as_bytes());
                if let Some(data) = initial_response {
                    out.push(b' ');
                    data.encode(out);
                }
            }
            Self::Data
            | Self::Rset
            | Self::Help(None)
            | Self::Noop
            | Self::Quit
            | Self::StartTls => {}
        }
        out.extend_from_slice(b"\r\n");
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = Vec::new();
        self.encode(&mut out);
        f.write_str(&String::from_utf8_lossy(&out))
    }
}

impl fmt::Debug for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // The Debug form of SaslData is redacted, so this never shows a secret.
            Self::Auth {
                mechanism,
                initial_response,
            } => f
                .debug_struct("Auth")
                .field("mechanism", mechanism)
                .field("initial_response", initial_response)
                .finish(),
            other => write!(f, "Command({:?})", other.to_string().trim_end()),
        }
    }
}

fn helo_name(args: &str, verb: &'static str) -> Result<HeloName, Error> {
    HeloName::parse(args.trim()).ok_or(Error::MissingArgument(verb))
}

fn no_args(args: &str, cmd: Command, verb: &'static str) -> Result<Command, Error> {
    if args.trim().is_empty() {
        Ok(cmd)
    } else {
        Err(Error::UnexpectedArgument(verb))
    }
}

fn required(args: &str, verb: &'static str) -> Result<String, Error> {
    let args = args.trim();
    if args.is_empty() {
        Err(Error::MissingArgument(verb))
    } else {
        Ok(args.to_owned())
    }
}

/// Strips a case-insensitive prefix such as `FROM:`.
fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

/// Splits `<path> params`: the path, then nothing or a space and the parameters.
fn split_path<'a>(
    args: &'a str,
    keyword: &str,
    forward: bool,
) -> Result<Option<(crate::address::Path, &'a str)>, Error> {
    let Some(rest) = strip_prefix_ci(args, keyword) else {
        return Ok(None);
    };
    // Tolerate `MAIL FROM: <a@b>`: many clients send a space after the colon.
    let rest = rest.strip_prefix(' ').unwrap_or(rest);
    let (path, n) = scan_path(rest, forward)?;
    let tail = &rest[n..];
    if !tail.is_empty() && !tail.starts_with(' ') {
        return Err(Error::InvalidAddress);
    }
    Ok(Some((path, tail)))
}

fn parse_mail(args: &str) -> Result<Command, Error> {
    match split_path(args, "FROM:", false) {
        Ok(Some((path, tail))) => {
            let params = MailParameters::parse(tail)?;
            Ok(Command::Mail {
                from: path.into_reverse(),
                params,
            })
        }
        Ok(None) => Err(Error::MissingArgument("MAIL")),
        Err(_) => Err(Error::InvalidReversePath),
    }
}

fn parse_rcpt(args: &str) -> Result<Command, Error> {
    match split_path(args, "TO:", true) {
        Ok(Some((path, tail))) => {
            let to = path.into_forward()?;
            let params = RcptParameters::parse(tail)?;
            Ok(Command::Rcpt { to, params })
        }
        Ok(None) => Err(Error::MissingArgument("RCPT")),
        Err(_) => Err(Error::InvalidForwardPath),
    }
}

fn parse_bdat(args: &str) -> Result<Command, Error> {
    let mut words = split_bytes(args, b' ');
    let size = words.next().unwrap_or("");
    let last = match (words.next(), words.next()) {
        (None, _) => false,
        (Some(w), None) if w.eq_ignore_ascii_case("LAST") => true,
        _ => return Err(Error::InvalidChunkSize),
    };
    if size.is_empty() || size.len() > 19 || !size.bytes().all(|c| c.is_ascii_digit()) {
        return Err(Error::InvalidChunkSize);
    }
    let size = size.parse().map_err(|_| Error::InvalidChunkSize)?;
    Ok(Command::Bdat { size, last })
}

fn parse_auth(args: &str) -> Result<Command, Error> {
    let mut words = split_bytes(args, b' ');
    let mechanism = words
        .next()
        .filter(|m| !m.is_empty())
        .ok_or(Error::MissingArgument("AUTH"))?;
    let mechanism = Mechanism::parse(mechanism).ok_or(Error::UnexpectedArgument("AUTH"))?;
    let initial_response = match (words.next(), words.next()) {
        (None, _) => None,
        (Some(ir), None) => Some(SaslData::decode(ir)?),
        _ => return Err(Error::UnexpectedArgument("AUTH")),
    };
    Ok(Command::Auth {
        mechanism,
        initial_response,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::address::{Domain, Mailbox};
    use crate::params::{Body, Notify};

    fn mailbox(s: &str) -> Mailbox {
        Mailbox::parse(s).unwrap()
    }

    fn ok(line: &str) -> Command {
        Command::parse(line.as_bytes()).unwrap_or_else(|e| panic!("{line:?}: {e:?}"))
    }

    #[test]
    fn simple_commands() {
        let domain = |d: &str| HeloName::Domain(Domain::parse(d).unwrap());
        let table = [
            (
                "EHLO mx.example.test",
                Command::Ehlo(domain("mx.example.test")),
            ),
            (
                "ehlo mx.example.test",
                Command::Ehlo(domain("mx.example.test")),
            ),
            (
                "HELO relay.example.org",
                Command::Helo(domain("relay.example.org")),
            ),
            ("LHLO lmtp.test", Command::Lhlo(domain("lmtp.test"))),
            ("DATA", Command::Data),
            ("data ", Command::Data),
            ("RSET", Command::Rset),
            ("QUIT", Command::Quit),
            ("NOOP", Command::Noop),
            ("NOOP hi there", Command::Noop),
            ("STARTTLS", Command::StartTls),
            ("StartTLS", Command::StartTls),
            ("HELP", Command::Help(None)),
            ("HELP MAIL", Command::Help(Some("MAIL".into()))),
            ("VRFY Smith", Command::Vrfy("Smith".into())),
            (
                "EXPN Example-People",
                Command::Expn("Example-People".into()),
            ),
            (
                "BDAT 86",
                Command::Bdat {
                    size: 86,
                    last: false,
                },
            ),
            (
                "BDAT 0 LAST",
                Command::Bdat {
                    size: 0,
                    last: true,
                },
            ),
            (
                "bdat 12 last",
                Command::Bdat {
                    size: 12,
                    last: true,
                },
            ),
        ];
        for (line, expected) in table {
            assert_eq!(ok(line), expected, "{line}");
        }
    }

    #[test]
    fn mail_and_rcpt() {
        // RFC 5321 appendix D.1 transcript commands.
        let Command::Mail { from, params } = ok("MAIL FROM:<Smith@bar.com>") else {
            panic!()
        };
        assert_eq!(from, ReversePath::Mailbox(mailbox("Smith@bar.com")));
        assert!(params.is_empty());
        let Command::Rcpt { to, .. } = ok("RCPT TO:<Jones@foo.com>") else {
            panic!()
        };
        assert_eq!(to, ForwardPath::Mailbox(mailbox("Jones@foo.com")));
        let Command::Mail { from, .. } = ok("MAIL FROM:<>") else {
            panic!()
        };
        assert_eq!(from, ReversePath::Null);
        let Command::Mail { from, .. } = ok("mail from: <a@b.test>") else {
            panic!()
        };
        assert_eq!(from.to_string(), "<a@b.test>");
        let Command::Mail { params, .. } = ok("MAIL FROM:<a@b.test> BODY=8BITMIME SIZE=500") else {
            panic!()
        };
        assert_eq!(
            (params.body, params.size),
            (Some(Body::EightBitMime), Some(500))
        );
        let Command::Rcpt { to, params } = ok("RCPT TO:<Postmaster> NOTIFY=NEVER") else {
            panic!()
        };
        assert_eq!(
            (to, params.notify),
            (ForwardPath::Postmaster, Some(Notify::NEVER))
        );
        let Command::Mail { from, .. } = ok("MAIL FROM:<@a.test,@b.test:user@d.test>") else {
            panic!()
        };
        assert_eq!(from.to_string(), "<user@d.test>");
    }

    #[test]
    fn errors() {
        let table: &[(&[u8], Error)] = &[
            (b"FOOBAR", Error::UnknownCommand),
            (b"", Error::UnknownCommand),
            (b"GET / HTTP/1.1", Error::ForeignProtocol),
            (b"POST / HTTP/1.1", Error::ForeignProtocol),
            (b"HELO a\x00b", Error::NulByte),
            (
                b"MAIL FROM:<a@b.test>\rRCPT TO:<x@y>",
                Error::BareCarriageReturn,
            ),
            (b"EHLO \xff", Error::InvalidUtf8),
            (b"EHLO", Error::MissingArgument("EHLO")),
            (b"HELO ", Error::MissingArgument("HELO")),
            (b"RSET x", Error::UnexpectedArgument("RSET")),
            (b"QUIT x", Error::UnexpectedArgument("QUIT")),
            (b"STARTTLS now", Error::UnexpectedArgument("STARTTLS")),
            (b"DATA x", Error::UnexpectedArgument("DATA")),
            (b"MAIL", Error::MissingArgument("MAIL")),
            (b"MAIL TO:<a@b>", Error::MissingArgument("MAIL")),
            (b"MAIL FROM:a@b.test", Error::InvalidReversePath),
            (b"MAIL FROM:<a@b.test>>>", Error::InvalidReversePath),
            (b"MAIL FROM:<a@b.test>SIZE=1", Error::InvalidReversePath),
            (b"RCPT TO:<>", Error::NullRecipient),
            (b"RCPT TO:<a@@b>", Error::InvalidForwardPath),
            (b"RCPT FROM:<a@b>", Error::MissingArgument("RCPT")),
            (
                b"MAIL FROM:<a@b.test> FOO=BAR",
                Error::UnknownParameter("FOO".into()),
            ),
            (b"BDAT", Error::InvalidChunkSize),
            (b"BDAT x", Error::InvalidChunkSize),
            (b"BDAT 12x", Error::InvalidChunkSize),
            (b"BDAT -1", Error::InvalidChunkSize),
            (b"BDAT 99999999999999999999", Error::InvalidChunkSize),
            (b"BDAT 5 LASTX", Error::InvalidChunkSize),
            (b"BDAT 5 LAST x", Error::InvalidChunkSize),
            (b"AUTH", Error::MissingArgument("AUTH")),
            (b"AUTH PLAIN !!!notbase64", Error::InvalidBase64),
            (b"VRFY", Error::MissingArgument("VRFY")),
        ];
        for (line, expected) in table {
            assert_eq!(
                Command::parse(line).as_ref(),
                Err(expected),
                "{:?}",
                String::from_utf8_lossy(line)
            );
        }
    }

    #[test]
    fn auth() {
        let Command::Auth {
            mechanism,
            initial_response,
        } = ok("AUTH PLAIN AGFsaWNlAHNlY3JldA==")
        else {
            panic!()
        };
        assert_eq!(mechanism, Mechanism::Plain);
        assert_eq!(initial_response.unwrap().0, b"\0alice\0secret");
        let Command::Auth {
            initial_response, ..
        } = ok("AUTH PLAIN =")
        else {
            panic!()
        };
        assert_eq!(initial_response, Some(SaslData(Vec::new())));
        let Command::Auth {
            mechanism,
            initial_response,
        } = ok("auth login")
        else {
            panic!()
        };
        assert_eq!((mechanism, initial_response), (Mechanism::Login, None));
        assert_eq!(ok("AUTH FOO").to_string(), "AUTH FOO\r\n");
        let debug = format!("{:?}", ok("AUTH PLAIN AGFsaWNlAHNlY3JldA=="));
        assert!(
            !debug.contains("secret") && !debug.contains("AGFsaWNl"),
            "{debug}"
        );
    }

    #[test]
    fn encode_round_trip_table() {
        for line in [
            "EHLO mx.example.test",
            "HELO [192.0.2.1]",
            "EHLO [IPv6:2001:db8::1]",
            "LHLO x",
            "MAIL FROM:<> SIZE=10 BODY=8BITMIME",
            "MAIL FROM:<\"a b\"@x.test> SMTPUTF8",
            "RCPT TO:<Postmaster>",
            "RCPT TO:<user@[192.0.2.1]> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;user@x.test",
            "DATA",
            "BDAT 1000 LAST",
            "RSET",
            "VRFY x",
            "EXPN y",
            "HELP",
            "HELP DATA",
            "NOOP",
            "QUIT",
            "STARTTLS",
            "AUTH PLAIN AGFsaWNlAHNlY3JldA==",
            "AUTH LOGIN",
            "AUTH PLAIN =",
        ] {
            let cmd = ok(line);
            assert_eq!(cmd.to_string(), format!("{line}\r\n"));
            assert_eq!(ok(cmd.to_string().trim_end()), cmd);
        }
    }
}
