//! Replies: reply codes (RFC 5321 §4.2), enhanced status codes (RFC 3463, RFC 2034),
//! single- and multi-line replies, and an incremental reply parser for clients.

use std::borrow::Cow;
use std::fmt;

use crate::Error;

/// A three-digit SMTP reply code (RFC 5321 §4.2.1), validated on construction.
///
/// The first digit is the class (2 positive completion, 3 positive intermediate,
/// 4 transient negative, 5 permanent negative), the second a category (0 to 5),
/// the third any digit.
///
/// ```
/// use smtp_proto::ReplyCode;
/// let code = ReplyCode::new(250).unwrap();
/// assert!(code.is_positive_completion());
/// assert!(ReplyCode::new(260).is_none());
/// assert!(ReplyCode::new(199).is_none());
/// ```
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ReplyCode(u16);

impl ReplyCode {
    /// `211` System status.
    pub const SYSTEM_STATUS: Self = Self::valid(211);
    /// `214` Help message.
    pub const HELP: Self = Self::valid(214);
    /// `220` Service ready.
    pub const SERVICE_READY: Self = Self::valid(220);
    /// `221` Service closing transmission channel.
    pub const CLOSING: Self = Self::valid(221);
    /// `235` Authentication succeeded (RFC 4954).
    pub const AUTH_SUCCEEDED: Self = Self::valid(235);
    /// `250` Requested action okay, completed.
    pub const OK: Self = Self::valid(250);
    /// `251` User not local; will forward.
    pub const WILL_FORWARD: Self = Self::valid(251);
    /// `252` Cannot VRFY user, but will accept the message.
    pub const CANNOT_VERIFY: Self = Self::valid(252);
    /// `334` Server challenge during AUTH (RFC 4954).
    pub const AUTH_CONTINUE: Self = Self::valid(334);
    /// `354` Start mail input; end with `<CRLF>.<CRLF>`.
    pub const START_DATA: Self = Self::valid(354);
    /// `421` Service not available, closing transmission channel.
    pub const SERVICE_UNAVAILABLE: Self = Self::valid(421);
    /// `450` Mailbox unavailable (temporary).
    pub const MAILBOX_BUSY: Self = Self::valid(450);
    /// `451` Local error in processing.
    pub const LOCAL_ERROR: Self = Self::valid(451);
    /// `452` Insufficient system storage (also: too many recipients).
    pub const INSUFFICIENT_STORAGE: Self = Self::valid(452);
    /// `454` Temporary authentication failure, or TLS not available.
    pub const TEMPORARY_AUTH_FAILURE: Self = Self::valid(454);
    /// `500` Syntax error, command unrecognized (also: line too long).
    pub const SYNTAX_ERROR: Self = Self::valid(500);
    /// `501` Syntax error in parameters or arguments.
    pub const PARAMETER_SYNTAX_ERROR: Self = Self::valid(501);
    /// `502` Command not implemented.
    pub const NOT_IMPLEMENTED: Self = Self::valid(502);
    /// `503` Bad sequence of commands.
    pub const BAD_SEQUENCE: Self = Self::valid(503);
    /// `504` Command parameter not implemented.
    pub const PARAMETER_NOT_IMPLEMENTED: Self = Self::valid(504);
    /// `530` Authentication required (RFC 4954).
    pub const AUTH_REQUIRED: Self = Self::valid(530);
    /// `535` Authentication credentials invalid (RFC 4954).
    pub const AUTH_INVALID: Self = Self::valid(535);
    /// `538` Encryption required for the requested authentication mechanism (RFC 4954).
    pub const ENCRYPTION_REQUIRED: Self = Self::valid(538);
    /// `550` Mailbox unavailable; action not taken.
    pub const MAILBOX_UNAVAILABLE: Self = Self::valid(550);
    /// `551` User not local.
    pub const USER_NOT_LOCAL: Self = Self::valid(551);
    /// `552` Exceeded storage allocation (message too big).
    pub const EXCEEDED_STORAGE: Self = Self::valid(552);
    /// `553` Mailbox name not allowed.
    pub const MAILBOX_NAME_NOT_ALLOWED: Self = Self::valid(553);
    /// `554` Transaction failed (or, as a greeting, no SMTP service here).
    pub const TRANSACTION_FAILED: Self = Self::valid(554);
    /// `555` MAIL FROM/RCPT TO parameters not recognized or not implemented.
    pub const PARAMETERS_NOT_RECOGNIZED: Self = Self::valid(555);
    /// `556` Domain does not accept mail (RFC 7504).
    pub const DOMAIN_DOES_NOT_ACCEPT_MAIL: Self = Self::valid(556);

    /// Validates a reply code: first digit 2 to 5, second 0 to 5, third 0 to 9.
    pub const fn new(code: u16) -> Option<Self> {
        let (class, category) = (code / 100, (code / 10) % 10);
        if class >= 2 && class <= 5 && category <= 5 {
            Some(Self(code))
        } else {
            None
        }
    }

    const fn valid(code: u16) -> Self {
        match Self::new(code) {
            Some(code) => code,
            None => panic!("invalid reply code constant"),
        }
    }

    /// The numeric value, for example `250`.
    pub const fn as_u16(self) -> u16 {
        self.0
    }

    /// The class given by the first digit.
    pub const fn class(self) -> ReplyClass {
        match self.0 / 100 {
            2 => ReplyClass::PositiveCompletion,
            3 => ReplyClass::PositiveIntermediate,
            4 => ReplyClass::TransientNegative,
            _ => ReplyClass::PermanentNegative,
        }
    }

    /// `2yz`: the command was accepted.
    pub const fn is_positive_completion(self) -> bool {
        self.0 / 100 == 2
    }

    /// `3yz`: the command was accepted and more input is expected (354, 334).
    pub const fn is_positive_intermediate(self) -> bool {
        self.0 / 100 == 3
    }

    /// `4yz`: a temporary failure; the same request may succeed later.
    pub const fn is_transient(self) -> bool {
        self.0 / 100 == 4
    }

    /// `5yz`: a permanent failure.
    pub const fn is_permanent(self) -> bool {
        self.0 / 100 == 5
    }

    fn digits(self) -> [u8; 3] {
        [
            b'0' + (self.0 / 100) as u8,
            b'0' + ((self.0 / 10) % 10) as u8,
            b'0' + (self.0 % 10) as u8,
        ]
    }
}

impl fmt::Debug for ReplyCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ReplyCode({})", self.0)
    }
}

impl fmt::Display for ReplyCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The class of a reply, given by the first digit of its code (RFC 5321 §4.2.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReplyClass {
    /// `2yz`
    PositiveCompletion,
    /// `3yz`
    PositiveIntermediate,
    /// `4yz`
    TransientNegative,
    /// `5yz`
    PermanentNegative,
}

/// An enhanced mail system status code `class.subject.detail` (RFC 3463), sent after
/// the reply code when ENHANCEDSTATUSCODES (RFC 2034) is in use.
///
/// ```
/// use smtp_proto::EnhancedStatus;
/// let status: EnhancedStatus = "5.1.1".parse().unwrap();
/// assert_eq!(status, EnhancedStatus::BAD_DESTINATION_MAILBOX);
/// assert_eq!(status.to_string(), "5.1.1");
/// assert!("3.1.1".parse::<EnhancedStatus>().is_err());
/// ```
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EnhancedStatus {
    class: u8,
    subject: u16,
    detail: u16,
}

macro_rules! statuses {
    ($($(#[$doc:meta])* $name:ident = ($class:literal, $subject:literal, $detail:literal);)*) => {
        impl EnhancedStatus {
            $($(#[$doc])* pub const $name: Self = Self::valid($class, $subject, $detail);)*
        }
    };
}

statuses! {
    /// `2.0.0` Success.
    OK = (2, 0, 0);
    /// `2.1.0` Originator address valid.
    SENDER_OK = (2, 1, 0);
    /// `2.1.5` Destination address valid.
    RECIPIENT_OK = (2, 1, 5);
    /// `2.5.0` Other or undefined protocol status (VRFY).
    PROTOCOL_OK = (2, 5, 0);
    /// `2.6.0` Message accepted.
    MESSAGE_OK = (2, 6, 0);
    /// `2.7.0` Authentication succeeded (RFC 4954).
    AUTH_OK = (2, 7, 0);
    /// `4.3.0` Other or undefined mail system status (temporary).
    SYSTEM_TEMPORARY = (4, 3, 0);
    /// `4.3.2` System not accepting network messages (shutting down).
    SYSTEM_NOT_ACCEPTING = (4, 3, 2);
    /// `4.4.2` Bad connection (timeout).
    BAD_CONNECTION = (4, 4, 2);
    /// `4.5.0` Other or undefined protocol status (temporary).
    PROTOCOL_TEMPORARY = (4, 5, 0);
    /// `4.5.3` Too many recipients.
    TOO_MANY_RECIPIENTS = (4, 5, 3);
    /// `4.7.0` Other or undefined security status (temporary).
    SECURITY_TEMPORARY = (4, 7, 0);
    /// `4.7.1` Delivery not authorized, for now (a policy that could not be evaluated).
    NOT_AUTHORIZED_TEMPORARY = (4, 7, 1);
    /// `4.7.5` Cryptographic failure, for now (a DKIM key that could not be fetched).
    CRYPTO_TEMPORARY = (4, 7, 5);
    /// `4.7.24` SPF validation error (RFC 7372): a temporary DNS failure.
    SPF_TEMPORARY = (4, 7, 24);
    /// `4.7.25` Reverse DNS validation failed (RFC 7372 §3.3), for now: the client's
    /// address has no name that resolves back to it (a DNS failure may be the cause).
    REVERSE_DNS_TEMPORARY = (4, 7, 25);
    /// `4.7.29` ARC validation failure, for now (a key that could not be fetched).
    ARC_TEMPORARY = (4, 7, 29);
    /// `5.1.1` Bad destination mailbox address.
    BAD_DESTINATION_MAILBOX = (5, 1, 1);
    /// `5.1.3` Bad destination mailbox address syntax.
    BAD_DESTINATION_SYNTAX = (5, 1, 3);
    /// `5.1.7` Bad sender's mailbox address syntax.
    BAD_SENDER_SYNTAX = (5, 1, 7);
    /// `5.1.10` Recipient address has null MX (RFC 7505).
    NULL_MX = (5, 1, 10);
    /// `5.3.4` Message too big for system.
    MESSAGE_TOO_BIG = (5, 3, 4);
    /// `5.4.6` Routing loop detected.
    ROUTING_LOOP = (5, 4, 6);
    /// `5.5.0` Other or undefined protocol status.
    PROTOCOL_ERROR = (5, 5, 0);
    /// `5.5.1` Invalid command.
    INVALID_COMMAND = (5, 5, 1);
    /// `5.5.2` Syntax error.
    SYNTAX_ERROR = (5, 5, 2);
    /// `5.5.4` Invalid command arguments.
    INVALID_ARGUMENTS = (5, 5, 4);
    /// `5.6.0` Other or undefined media error (content a message may not carry).
    MEDIA_ERROR = (5, 6, 0);
    /// `5.6.7` Non-ASCII addresses not permitted for that sender/recipient (RFC 6531).
    NON_ASCII_ADDRESS = (5, 6, 7);
    /// `5.6.11` Message contains bare CR or bare LF.
    BARE_LINE_ENDING = (5, 6, 11);
    /// `5.7.0` Other or undefined security status.
    SECURITY_ERROR = (5, 7, 0);
    /// `5.7.1` Delivery not authorized (also: relay denied).
    NOT_AUTHORIZED = (5, 7, 1);
    /// `5.7.8` Authentication credentials invalid (RFC 4954).
    AUTH_INVALID = (5, 7, 8);
    /// `5.7.10` REQUIRETLS needs TLS (RFC 8689).
    REQUIRETLS_NEEDS_TLS = (5, 7, 10);
    /// `5.7.11` Encryption required for requested authentication mechanism (RFC 4954).
    ENCRYPTION_REQUIRED = (5, 7, 11);
    /// `5.7.20` No passing DKIM signature found (RFC 7372).
    NO_PASSING_DKIM = (5, 7, 20);
    /// `5.7.23` SPF validation failed (RFC 7372).
    SPF_FAILED = (5, 7, 23);
    /// `5.7.25` Reverse DNS validation failed (RFC 7372 §3.3): the client's address
    /// has no name that resolves back to it.
    REVERSE_DNS_FAILED = (5, 7, 25);
    /// `5.7.29` ARC validation failure (RFC 8617 §5.2.2).
    ARC_FAILED = (5, 7, 29);
}

impl EnhancedStatus {
    /// Builds a status; `None` unless the class is 2, 4 or 5 and subject and detail
    /// have at most three digits.
    pub const fn new(class: u8, subject: u16, detail: u16) -> Option<Self> {
        if (class == 2 || class == 4 || class == 5) && subject <= 999 && detail <= 999 {
            Some(Self {
                class,
                subject,
                detail,
            })
        } else {
            None
        }
    }

    const fn valid(class: u8, subject: u16, detail: u16) -> Self {
        match Self::new(class, subject, detail) {
            Some(status) => status,
            None => panic!("invalid enhanced status constant"),
        }
    }

    /// The class digit: 2, 4 or 5.
    pub const fn class(self) -> u8 {
        self.class
    }

    /// The subject (RFC 3463 §3): 0 other, 1 addressing, 2 mailbox, 3 mail system,
    /// 4 network and routing, 5 protocol, 6 content, 7 security.
    pub const fn subject(self) -> u16 {
        self.subject
    }

    /// The detail number within the subject.
    pub const fn detail(self) -> u16 {
        self.detail
    }

    /// The same subject and detail with another class, for example `5.1.1` as `4.1.1`.
    pub const fn with_class(self, class: u8) -> Option<Self> {
        Self::new(class, self.subject, self.detail)
    }

    fn write(self, out: &mut Vec<u8>) {
        out.push(b'0' + self.class);
        out.push(b'.');
        push_decimal(out, u64::from(self.subject));
        out.push(b'.');
        push_decimal(out, u64::from(self.detail));
    }

    /// Parses `d.ddd.ddd` at the start of `text` and returns it with the byte length it
    /// took, when it is followed by a space or the end of the text.
    fn parse_prefix(text: &[u8]) -> Option<(Self, usize)> {
        let class = match text.first()? {
            c @ (b'2' | b'4' | b'5') => c - b'0',
            _ => return None,
        };
        if text.get(1) != Some(&b'.') {
            return None;
        }
        let (subject, n1) = parse_small(&text[2..])?;
        let pos = 2 + n1;
        if text.get(pos) != Some(&b'.') {
            return None;
        }
        let (detail, n2) = parse_small(&text[pos + 1..])?;
        let end = pos + 1 + n2;
        match text.get(end) {
            None | Some(b' ') => Some((Self::new(class, subject, detail)?, end)),
            _ => None,
        }
    }
}

/// One to three decimal digits.
fn parse_small(bytes: &[u8]) -> Option<(u16, usize)> {
    let n = bytes
        .iter()
        .take(4)
        .take_while(|b| b.is_ascii_digit())
        .count();
    if n == 0 || n > 3 {
        return None;
    }
    let value = bytes[..n]
        .iter()
        .fold(0u16, |acc, b| acc * 10 + u16::from(b - b'0'));
    Some((value, n))
}

pub(crate) fn push_decimal(out: &mut Vec<u8>, mut value: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

impl fmt::Debug for EnhancedStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EnhancedStatus({self})")
    }
}

impl fmt::Display for EnhancedStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.class, self.subject, self.detail)
    }
}

impl std::str::FromStr for EnhancedStatus {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        match Self::parse_prefix(s.as_bytes()) {
            Some((status, n)) if n == s.len() => Ok(status),
            _ => Err(Error::InvalidEnhancedStatus),
        }
    }
}

/// A complete SMTP reply: a code, an optional enhanced status and one or more lines of
/// text (RFC 5321 §4.2).
///
/// The text of a multi-line reply is kept as one string with lines separated by `\n`;
/// [`Reply::lines`] yields them. The wire form ([`Reply::encode`], [`Reply::to_bytes`])
/// repeats the code (and the enhanced status) on every line, `-` after the code on all
/// lines but the last, each line ended by CRLF. `Display` shows the same lines without
/// their CRLF, for logs and error messages.
///
/// ```
/// use smtp_proto::{EnhancedStatus, Reply, ReplyCode};
/// let reply = Reply::new(ReplyCode::OK, EnhancedStatus::OK, "first\nsecond");
/// assert_eq!(reply.to_bytes(), b"250-2.0.0 first\r\n250 2.0.0 second\r\n");
/// assert_eq!(reply.to_string(), "250-2.0.0 first\n250 2.0.0 second");
/// let one = Reply::new(ReplyCode::OK, EnhancedStatus::OK, "Ok");
/// assert_eq!(one.to_string(), "250 2.0.0 Ok");
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Reply {
    code: ReplyCode,
    status: Option<EnhancedStatus>,
    text: Cow<'static, str>,
}

impl Reply {
    /// A reply with an enhanced status code.
    pub fn new(
        code: ReplyCode,
        status: EnhancedStatus,
        text: impl Into<Cow<'static, str>>,
    ) -> Self {
        Self {
            code,
            status: Some(status),
            text: text.into(),
        }
    }

    /// A reply without an enhanced status code (greetings, EHLO, 354, 334).
    pub fn plain(code: ReplyCode, text: impl Into<Cow<'static, str>>) -> Self {
        Self {
            code,
            status: None,
            text: text.into(),
        }
    }

    /// Builds a reply from parts that may come from a peer or a configuration; `None`
    /// when the status class does not match the code class.
    pub fn from_parts(
        code: ReplyCode,
        status: Option<EnhancedStatus>,
        text: impl Into<Cow<'static, str>>,
    ) -> Option<Self> {
        match status {
            Some(s) if u16::from(s.class()) != code.as_u16() / 100 => None,
            _ => Some(Self {
                code,
                status,
                text: text.into(),
            }),
        }
    }

    /// The reply code.
    pub fn code(&self) -> ReplyCode {
        self.code
    }

    /// The enhanced status code, when the reply carries one.
    pub fn status(&self) -> Option<EnhancedStatus> {
        self.status
    }

    /// The whole text, lines separated by `\n`, without codes.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The lines of text, without codes.
    pub fn lines(&self) -> impl Iterator<Item = &str> {
        self.text.split('\n')
    }

    /// `2yz`
    pub fn is_positive_completion(&self) -> bool {
        self.code.is_positive_completion()
    }

    /// `4yz`
    pub fn is_transient(&self) -> bool {
        self.code.is_transient()
    }

    /// `5yz`
    pub fn is_permanent(&self) -> bool {
        self.code.is_permanent()
    }

    /// Appends the wire form to `out`. Carriage returns and other control characters in
    /// the text are replaced by spaces, so a reply can never break the framing.
    pub fn encode(&self, out: &mut Vec<u8>) {
        // Room for all of it at once (code, separator, status and CRLF: at most 20
        // bytes a line): one allocation, not one per doubling of a small buffer.
        let lines = 1 + memchr::memchr_iter(b'\n', self.text.as_bytes()).count();
        out.reserve(self.text.len() + 20 * lines);
        let mut lines = self.text.split('\n').peekable();
        let digits = self.code.digits();
        while let Some(line) = lines.next() {
            out.extend_from_slice(&digits);
            let more = lines.peek().is_some();
            // RFC 4954 §4: `"334" SP [base64] CRLF`, the space even with no challenge
            // (clients such as s-nail wait for it).
            let continuation = self.code == ReplyCode::AUTH_CONTINUE;
            if more || self.status.is_some() || !line.is_empty() || continuation {
                out.push(if more { b'-' } else { b' ' });
            }
            if let Some(status) = self.status {
                status.write(out);
                if !line.is_empty() {
                    out.push(b' ');
                }
            }
            let start = out.len();
            out.extend_from_slice(line.as_bytes());
            for b in &mut out[start..] {
                if *b < 0x20 || *b == 0x7f {
                    *b = b' ';
                }
            }
            out.extend_from_slice(b"\r\n");
        }
    }

    /// The wire form as bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.text.len() + 16);
        self.encode(&mut out);
        out
    }
}

impl fmt::Debug for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reply")
            .field("code", &self.code.as_u16())
            .field("status", &self.status.map(|s| s.to_string()))
            .field("text", &self.text)
            .finish()
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let wire = String::from_utf8_lossy(&self.to_bytes()).into_owned();
        f.write_str(&wire.trim_end_matches("\r\n").replace("\r\n", "\n"))
    }
}

/// Limits of the [`ReplyParser`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplyLimits {
    /// Longest reply line, CRLF included. RFC 5321 §4.5.3.1.5 sets 512; real servers
    /// sometimes send more, so the default is 1000.
    pub max_line: usize,
    /// Most lines in one reply (EHLO replies are the longest in practice).
    pub max_lines: usize,
}

impl Default for ReplyLimits {
    fn default() -> Self {
        Self {
            max_line: 1000,
            max_lines: 128,
        }
    }
}

/// An incremental parser of server replies, for the client side: push bytes as they
/// arrive, pull complete replies.
///
/// Malformed replies (a bad code, a code that changes inside a multi-line reply, a
/// line that is too long, too many lines) are errors: a client must treat the
/// connection as broken and the delivery as a temporary failure.
///
/// ```
/// use smtp_proto::{ReplyCode, ReplyParser};
/// let mut parser = ReplyParser::default();
/// parser.push(b"250-mx.example.test\r\n250-PIPE");
/// assert!(parser.next_reply().is_none());
/// parser.push(b"LINING\r\n250 SIZE 1000\r\n");
/// let reply = parser.next_reply().unwrap().unwrap();
/// assert_eq!(reply.code(), ReplyCode::OK);
/// assert_eq!(reply.lines().collect::<Vec<_>>(), ["mx.example.test", "PIPELINING", "SIZE 1000"]);
/// ```
#[derive(Debug, Default)]
pub struct ReplyParser {
    limits: ReplyLimits,
    buf: Vec<u8>,
    pos: usize,
    partial: Option<PartialReply>,
    failed: bool,
}

#[derive(Debug)]
struct PartialReply {
    code: ReplyCode,
    status: Option<EnhancedStatus>,
    text: String,
    lines: usize,
}

impl ReplyParser {
    /// A parser with the given limits.
    pub fn new(limits: ReplyLimits) -> Self {
        Self {
            limits,
            ..Self::default()
        }
    }

    /// Appends bytes received from the server.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.pos > 0 && self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes received but not yet part of a returned reply.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Drops every buffered byte (used after a failed reply or before a TLS handshake).
    pub fn clear(&mut self) {
        self.buf.clear();
        self.pos = 0;
        self.partial = None;
    }

    /// The next complete reply, `None` when more bytes are needed. After an error the
    /// parser yields nothing more: the connection is out of sync.
    pub fn next_reply(&mut self) -> Option<Result<Reply, Error>> {
        if self.failed {
            return None;
        }
        let result = self.parse_next();
        if self.pos > 4096 && self.pos * 2 > self.buf.len() {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        match result {
            Ok(reply) => reply.map(Ok),
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }

    fn parse_next(&mut self) -> Result<Option<Reply>, Error> {
        loop {
            let rest = &self.buf[self.pos..];
            let Some(lf) = memchr::memchr(b'\n', rest) else {
                if rest.len() >= self.limits.max_line {
                    return Err(Error::ReplyTooLong);
                }
                return Ok(None);
            };
            if lf + 1 > self.limits.max_line {
                return Err(Error::ReplyTooLong);
            }
            let line = &rest[..lf];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let (code, last, text) = parse_reply_line(line)?;
            self.pos += lf + 1;
            let partial = match &mut self.partial {
                Some(partial) => {
                    if partial.code != code {
                        return Err(Error::InconsistentReply);
                    }
                    partial.lines += 1;
                    if partial.lines > self.limits.max_lines {
                        return Err(Error::ReplyTooLong);
                    }
                    partial.text.push('\n');
                    partial
                }
                None => self.partial.insert(PartialReply {
                    code,
                    status: None,
                    text: String::new(),
                    lines: 1,
                }),
            };
            let mut text = text;
            if let Some((status, n)) = EnhancedStatus::parse_prefix(text)
                && u16::from(status.class()) == code.as_u16() / 100
                && partial.status.is_none_or(|s| s == status)
            {
                partial.status = Some(status);
                text = text[n..].strip_prefix(b" ").unwrap_or(&text[n..]);
            }
            partial.text.push_str(&String::from_utf8_lossy(text));
            if last {
                let partial = self.partial.take().ok_or(Error::InconsistentReply)?;
                return Ok(Some(Reply {
                    code: partial.code,
                    status: partial.status,
                    text: Cow::Owned(partial.text),
                }));
            }
        }
    }
}

/// Splits `250-text` / `250 text` / `250` into code, is-last-line and text.
fn parse_reply_line(line: &[u8]) -> Result<(ReplyCode, bool, &[u8]), Error> {
    if line.len() < 3 || !line[..3].iter().all(u8::is_ascii_digit) {
        return Err(Error::InvalidReplyCode);
    }
    let value = line[..3]
        .iter()
        .fold(0u16, |acc, b| acc * 10 + u16::from(b - b'0'));
    let code = ReplyCode::new(value).ok_or(Error::InvalidReplyCode)?;
    match line.get(3) {
        None => Ok((code, true, &[])),
        Some(b' ') => Ok((code, true, &line[4..])),
        Some(b'-') => Ok((code, false, &line[4..])),
        Some(_) => Err(Error::InvalidReplyCode),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(input: &[u8]) -> Vec<Result<Reply, Error>> {
        let mut parser = ReplyParser::default();
        parser.push(input);
        std::iter::from_fn(|| parser.next_reply()).collect()
    }

    #[test]
    fn reply_codes_are_validated() {
        for ok in [
            211, 214, 220, 221, 235, 250, 251, 252, 334, 354, 421, 450, 452, 500, 555,
        ] {
            assert!(ReplyCode::new(ok).is_some(), "{ok}");
        }
        for bad in [0, 99, 100, 199, 260, 299, 600, 999, 1000] {
            assert!(ReplyCode::new(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn enhanced_status_parse() {
        assert_eq!(
            "2.0.0".parse::<EnhancedStatus>().ok(),
            Some(EnhancedStatus::OK)
        );
        assert_eq!(
            "5.1.10".parse::<EnhancedStatus>().ok(),
            Some(EnhancedStatus::NULL_MX)
        );
        assert_eq!(
            "4.999.999".parse::<EnhancedStatus>().ok(),
            EnhancedStatus::new(4, 999, 999)
        );
        for bad in [
            "", "5", "5.1", "5.1.", "3.0.0", "5.1000.1", "5.1.1 ", "x.1.1", "5..1",
        ] {
            assert!(bad.parse::<EnhancedStatus>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn encode_forms() {
        let r = Reply::plain(ReplyCode::START_DATA, "End data with <CR><LF>.<CR><LF>");
        assert_eq!(r.to_bytes(), b"354 End data with <CR><LF>.<CR><LF>\r\n");
        let r = Reply::plain(ReplyCode::AUTH_CONTINUE, "");
        assert_eq!(r.to_bytes(), b"334 \r\n");
        let r = Reply::plain(ReplyCode::AUTH_CONTINUE, "VXNlcm5hbWU6");
        assert_eq!(r.to_bytes(), b"334 VXNlcm5hbWU6\r\n");
        let r = Reply::plain(ReplyCode::OK, "");
        assert_eq!(r.to_bytes(), b"250\r\n");
        let r = Reply::new(ReplyCode::OK, EnhancedStatus::OK, "");
        assert_eq!(r.to_bytes(), b"250 2.0.0\r\n");
        let r = Reply::new(ReplyCode::OK, EnhancedStatus::OK, "a\r\nb\x00c");
        assert_eq!(r.to_bytes(), b"250-2.0.0 a \r\n250 2.0.0 b c\r\n");
    }

    #[test]
    fn parse_forms() {
        let replies = parse_all(b"250\r\n220 mx ESMTP\r\n550 5.1.1 No such user\r\n");
        let replies: Vec<Reply> = replies.into_iter().map(Result::unwrap).collect();
        assert_eq!(replies[0].code(), ReplyCode::OK);
        assert_eq!(replies[0].text(), "");
        assert_eq!(replies[1].text(), "mx ESMTP");
        assert_eq!(replies[1].status(), None);
        assert_eq!(
            replies[2].status(),
            Some(EnhancedStatus::BAD_DESTINATION_MAILBOX)
        );
        assert_eq!(replies[2].text(), "No such user");
    }

    #[test]
    fn parse_multiline_with_status() {
        let mut replies =
            parse_all(b"550-5.7.1 line one\r\n550-5.7.1 line two\r\n550 5.7.1 end\r\n");
        let reply = replies.remove(0).unwrap();
        assert_eq!(reply.status(), Some(EnhancedStatus::NOT_AUTHORIZED));
        assert_eq!(reply.text(), "line one\nline two\nend");
        assert_eq!(
            Reply::from_parts(reply.code(), reply.status(), "line one\nline two\nend"),
            Some(reply)
        );
    }

    #[test]
    fn malformed_replies_are_errors() {
        for bad in [
            &b"25O ok\r\n"[..],
            b"2500 ok\r\n",
            b"250-a\r\n251 b\r\n",
            b"ok\r\n",
            b"199 x\r\n",
            b"650 x\r\n",
        ] {
            let replies = parse_all(bad);
            assert!(
                matches!(replies.last(), Some(Err(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let long = [b"250 ".as_slice(), &[b'x'; 2000], b"\r\n"].concat();
        assert!(matches!(
            parse_all(&long).as_slice(),
            [Err(Error::ReplyTooLong)]
        ));
        let incomplete = parse_all(b"250-a\r\n");
        assert!(incomplete.is_empty());
    }

    #[test]
    fn parse_is_split_invariant() {
        let input = b"220 mx ESMTP\r\n250-mx\r\n250-SIZE 10\r\n250 PIPELINING\r\n354 go\r\n";
        let whole = parse_all(input);
        for split in 0..input.len() {
            let mut parser = ReplyParser::default();
            parser.push(&input[..split]);
            let mut got: Vec<_> = std::iter::from_fn(|| parser.next_reply()).collect();
            parser.push(&input[split..]);
            got.extend(std::iter::from_fn(|| parser.next_reply()));
            assert_eq!(got, whole);
        }
    }
}
