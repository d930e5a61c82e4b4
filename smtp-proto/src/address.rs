//! Envelope addresses: domains, mailboxes, reverse- and forward-paths and the HELO name
//! (RFC 5321 §4.1.2 and §4.1.3, RFC 6531 for UTF-8).
//!
//! Every type here is validated when it is built; once you hold a [`Mailbox`] it is
//! well-formed. Source routes (`<@a,@b:user@c>`, RFC 5321 §4.1.1.3 and appendix C) are
//! accepted and dropped.

use std::borrow::Cow;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::Error;

/// Longest domain in octets (RFC 5321 §4.5.3.1.2).
pub const MAX_DOMAIN_LEN: usize = 255;
/// Longest label in octets (RFC 1035 §2.3.4).
const MAX_LABEL_LEN: usize = 63;

/// A domain name: LDH labels (A-labels included) and, where UTF-8 is allowed, U-labels
/// (RFC 6531). No trailing dot, no empty label, at most 255 octets.
///
/// ```
/// use smtp_proto::Domain;
/// assert!(Domain::parse("mx1.example.test").is_ok());
/// assert!(Domain::parse("xn--bcher-kva.test").is_ok());
/// assert!(Domain::parse("bücher.test").unwrap().is_ascii() == false);
/// assert!(Domain::parse("-bad.test").is_err());
/// assert!(Domain::parse("a..b").is_err());
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Domain(String);

impl Domain {
    /// Parses a whole string as a domain.
    pub fn parse(s: &str) -> Result<Self, Error> {
        match scan_domain(s.as_bytes()) {
            Some(n) if n == s.len() => Ok(Self(s.to_owned())),
            _ => Err(Error::InvalidDomain),
        }
    }

    /// The domain as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether every label is ASCII (no U-labels).
    pub fn is_ascii(&self) -> bool {
        self.0.is_ascii()
    }

    /// ASCII case-insensitive comparison, the way domains compare.
    pub fn eq_ignore_case(&self, other: &str) -> bool {
        self.0.eq_ignore_ascii_case(other)
    }
}

impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Domain({:?})", self.0)
    }
}

impl std::str::FromStr for Domain {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Self::parse(s)
    }
}

/// The part of a mailbox after the `@`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Host<'a> {
    /// A domain name.
    Domain(&'a str),
    /// An address literal, `[192.0.2.1]` or `[IPv6:2001:db8::1]` (RFC 5321 §4.1.3).
    Address(IpAddr),
}

/// A mailbox `local-part@domain` (RFC 5321 §4.1.2), kept as received: a quoted local
/// part keeps its quotes, a domain literal its brackets.
///
/// ```
/// use smtp_proto::{Host, Mailbox};
/// let mailbox = Mailbox::parse("\"john doe\"@example.test").unwrap();
/// assert_eq!(mailbox.local_part(), "\"john doe\"");
/// assert_eq!(mailbox.local_part_unquoted(), "john doe");
/// assert_eq!(mailbox.host(), Host::Domain("example.test"));
/// let literal = Mailbox::parse("postmaster@[192.0.2.1]").unwrap();
/// assert_eq!(literal.host(), Host::Address("192.0.2.1".parse().unwrap()));
/// assert!(Mailbox::parse("a..b@example.test").is_err());
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mailbox {
    text: String,
    /// Where the `@` is.
    at: u32,
    /// The domain is an address literal.
    literal: bool,
}

impl Mailbox {
    /// Parses `local@domain` (no angle brackets). UTF-8 is accepted; whether it is
    /// allowed in a transaction (SMTPUTF8) is the session's decision.
    pub fn parse(s: &str) -> Result<Self, Error> {
        let (mailbox, n) = scan_mailbox(s, 0)?;
        if n == s.len() {
            Ok(mailbox)
        } else {
            Err(Error::InvalidAddress)
        }
    }

    /// The whole address as received, `local@domain`.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The local part as received (quoted local parts keep their quotes).
    pub fn local_part(&self) -> &str {
        &self.text[..self.at as usize]
    }

    /// The local part with quotes and quoted-pair backslashes removed.
    pub fn local_part_unquoted(&self) -> Cow<'_, str> {
        let local = self.local_part();
        match local.strip_prefix('"').and_then(|l| l.strip_suffix('"')) {
            None => Cow::Borrowed(local),
            Some(inner) if !inner.contains('\\') => Cow::Borrowed(inner),
            Some(inner) => {
                let mut out = String::with_capacity(inner.len());
                let mut chars = inner.chars();
                while let Some(c) = chars.next() {
                    out.push(if c == '\\' {
                        chars.next().unwrap_or('\\')
                    } else {
                        c
                    });
                }
                Cow::Owned(out)
            }
        }
    }

    /// The domain part as received (a literal keeps its brackets).
    pub fn domain(&self) -> &str {
        &self.text[self.at as usize + 1..]
    }

    /// The domain part as a [`Host`].
    pub fn host(&self) -> Host<'_> {
        let domain = self.domain();
        match (self.literal, scan_literal(domain.as_bytes(), 0)) {
            (true, Some((ip, _))) => Host::Address(ip),
            _ => Host::Domain(domain),
        }
    }

    /// Whether the address contains non-ASCII characters (needs SMTPUTF8, RFC 6531).
    pub fn is_utf8(&self) -> bool {
        !self.text.is_ascii()
    }
}

impl fmt::Display for Mailbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for Mailbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Mailbox({:?})", self.text)
    }
}

impl std::str::FromStr for Mailbox {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Self::parse(s)
    }
}

/// The argument of `MAIL FROM:`: a mailbox or the null reverse-path `<>` used by
/// bounces (RFC 5321 §4.5.5).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ReversePath {
    /// `<>`
    Null,
    /// `<mailbox>`
    Mailbox(Mailbox),
}

impl ReversePath {
    /// Parses `<...>` (source routes are dropped).
    ///
    /// ```
    /// use smtp_proto::ReversePath;
    /// assert_eq!(ReversePath::parse("<>").unwrap(), ReversePath::Null);
    /// let path = ReversePath::parse("<@a.test,@b.test:user@d.test>").unwrap();
    /// assert_eq!(path.to_string(), "<user@d.test>");
    /// ```
    pub fn parse(s: &str) -> Result<Self, Error> {
        match scan_path(s, false)? {
            (path, n) if n == s.len() => Ok(path.into_reverse()),
            _ => Err(Error::InvalidAddress),
        }
    }

    /// The mailbox, unless the path is null.
    pub fn mailbox(&self) -> Option<&Mailbox> {
        match self {
            Self::Null => None,
            Self::Mailbox(m) => Some(m),
        }
    }

    /// Whether the address contains non-ASCII characters.
    pub fn is_utf8(&self) -> bool {
        self.mailbox().is_some_and(Mailbox::is_utf8)
    }
}

impl fmt::Display for ReversePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Null => f.write_str("<>"),
            Self::Mailbox(m) => write!(f, "<{m}>"),
        }
    }
}

/// The argument of `RCPT TO:`: a mailbox or the bare `<Postmaster>` that every server
/// must accept (RFC 5321 §4.5.1).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ForwardPath {
    /// `<Postmaster>` without a domain (any case).
    Postmaster,
    /// `<mailbox>`
    Mailbox(Mailbox),
}

impl ForwardPath {
    /// Parses `<...>` (source routes are dropped).
    ///
    /// ```
    /// use smtp_proto::ForwardPath;
    /// assert_eq!(ForwardPath::parse("<postMaster>").unwrap(), ForwardPath::Postmaster);
    /// assert!(ForwardPath::parse("<>").is_err());
    /// ```
    pub fn parse(s: &str) -> Result<Self, Error> {
        match scan_path(s, true)? {
            (path, n) if n == s.len() => path.into_forward(),
            _ => Err(Error::InvalidAddress),
        }
    }

    /// The mailbox, unless the path is the bare `<Postmaster>`.
    pub fn mailbox(&self) -> Option<&Mailbox> {
        match self {
            Self::Postmaster => None,
            Self::Mailbox(m) => Some(m),
        }
    }

    /// Whether the address contains non-ASCII characters.
    pub fn is_utf8(&self) -> bool {
        self.mailbox().is_some_and(Mailbox::is_utf8)
    }
}

impl fmt::Display for ForwardPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Postmaster => f.write_str("<Postmaster>"),
            Self::Mailbox(m) => write!(f, "<{m}>"),
        }
    }
}

/// The argument of HELO, EHLO or LHLO.
///
/// Clients send all sorts of names here (Windows host names with underscores, bare
/// words), and RFC 5321 §4.1.4 says a server must not refuse a message for a bad HELO
/// alone, so anything printable is kept: [`HeloName::Other`] is for policy to judge.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum HeloName {
    /// A syntactically valid domain.
    Domain(Domain),
    /// An address literal.
    Address(IpAddr),
    /// Anything else printable, as sent.
    Other(String),
}

impl HeloName {
    /// Classifies a HELO argument; `None` when it is empty.
    pub fn parse(s: &str) -> Option<Self> {
        let bytes = s.as_bytes();
        if bytes.is_empty() {
            return None;
        }
        if let Some(n) = scan_domain(bytes)
            && n == bytes.len()
        {
            return Some(Self::Domain(Domain(s.to_owned())));
        }
        if let Some((ip, n)) = scan_literal(bytes, 0)
            && n == bytes.len()
        {
            return Some(Self::Address(ip));
        }
        Some(Self::Other(s.to_owned()))
    }

    /// The name as the client sent it (literals in brackets).
    pub fn to_text(&self) -> Cow<'_, str> {
        match self {
            Self::Domain(d) => Cow::Borrowed(d.as_str()),
            Self::Other(s) => Cow::Borrowed(s),
            Self::Address(IpAddr::V4(ip)) => Cow::Owned(format!("[{ip}]")),
            Self::Address(IpAddr::V6(ip)) => Cow::Owned(format!("[IPv6:{ip}]")),
        }
    }
}

impl fmt::Display for HeloName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_text())
    }
}

/// A path before it is known to be a reverse- or a forward-path.
pub(crate) enum Path {
    Null,
    Postmaster,
    Mailbox(Mailbox),
}

impl Path {
    pub(crate) fn into_reverse(self) -> ReversePath {
        match self {
            Self::Null => ReversePath::Null,
            // `<Postmaster>` only comes out of scan_path when asked for forward paths.
            Self::Postmaster => ReversePath::Null,
            Self::Mailbox(m) => ReversePath::Mailbox(m),
        }
    }

    pub(crate) fn into_forward(self) -> Result<ForwardPath, Error> {
        match self {
            Self::Null => Err(Error::NullRecipient),
            Self::Postmaster => Ok(ForwardPath::Postmaster),
            Self::Mailbox(m) => Ok(ForwardPath::Mailbox(m)),
        }
    }
}

/// Scans `<[route:]mailbox>` or `<>` at the start of `b`; returns the path and the
/// number of bytes it took.
pub(crate) fn scan_path(s: &str, forward: bool) -> Result<(Path, usize), Error> {
    let b = s.as_bytes();
    if b.first() != Some(&b'<') {
        return Err(Error::InvalidAddress);
    }
    if b.get(1) == Some(&b'>') {
        return Ok((Path::Null, 2));
    }
    if forward && b.len() >= 12 && b[1..11].eq_ignore_ascii_case(b"postmaster") && b[11] == b'>' {
        return Ok((Path::Postmaster, 12));
    }
    let mut pos = 1;
    if b.get(pos) == Some(&b'@') {
        // A-d-l: "@" Domain *( "," "@" Domain ) ":"
        loop {
            pos += 1;
            pos += scan_domain(&b[pos..]).ok_or(Error::InvalidAddress)?;
            match b.get(pos) {
                Some(b',') if b.get(pos + 1) == Some(&b'@') => pos += 1,
                Some(b':') => {
                    pos += 1;
                    break;
                }
                _ => return Err(Error::InvalidAddress),
            }
        }
    }
    let (mailbox, end) = scan_mailbox(s, pos)?;
    if b.get(end) != Some(&b'>') {
        return Err(Error::InvalidAddress);
    }
    Ok((Path::Mailbox(mailbox), end + 1))
}

/// Scans `local@domain` starting at `start`; returns the mailbox and the end offset.
fn scan_mailbox(s: &str, start: usize) -> Result<(Mailbox, usize), Error> {
    let b = s.as_bytes();
    let local_end = start + scan_local_part(&b[start..]).ok_or(Error::InvalidAddress)?;
    if b.get(local_end) != Some(&b'@') {
        return Err(Error::InvalidAddress);
    }
    let domain_start = local_end + 1;
    let (literal, end) = if b.get(domain_start) == Some(&b'[') {
        let (_, n) = scan_literal(b, domain_start).ok_or(Error::InvalidAddress)?;
        (true, domain_start + n)
    } else {
        (
            false,
            domain_start + scan_domain(&b[domain_start..]).ok_or(Error::InvalidAddress)?,
        )
    };
    // Both ends are at ASCII bytes ('<', ':', '@', ']', '>' or the end), so `get` cannot
    // fail on a character boundary; it also keeps this free of panics.
    let text = s.get(start..end).ok_or(Error::InvalidAddress)?.to_owned();
    let at = u32::try_from(local_end - start).map_err(|_| Error::InvalidAddress)?;
    Ok((Mailbox { text, at, literal }, end))
}

/// `Local-part = Dot-string / Quoted-string` (RFC 5321 §4.1.2), with UTF-8 allowed as
/// by RFC 6531. Returns its length.
fn scan_local_part(b: &[u8]) -> Option<usize> {
    if b.first() == Some(&b'"') {
        let mut i = 1;
        while i < b.len() {
            match b[i] {
                b'"' => return (i > 1).then_some(i + 1),
                b'\\' => match b.get(i + 1) {
                    Some(32..=126) => i += 2,
                    _ => return None,
                },
                32..=126 | 0x80.. => i += 1,
                _ => return None,
            }
        }
        return None;
    }
    let mut i = 0;
    loop {
        let atom = b[i..].iter().take_while(|&&c| is_atext(c)).count();
        if atom == 0 {
            return None;
        }
        i += atom;
        if b.get(i) == Some(&b'.') {
            i += 1;
        } else {
            return Some(i);
        }
    }
}

/// `atext` of RFC 5322 §3.2.3 plus UTF-8 (RFC 6531 `UTF8-non-ascii`).
fn is_atext(c: u8) -> bool {
    ATEXT[usize::from(c)]
}

const ATEXT: [bool; 256] = {
    let mut table = [false; 256];
    let mut i = 0;
    while i < 256 {
        let c = i as u8;
        table[i] = c.is_ascii_alphanumeric()
            || c >= 0x80
            || matches!(
                c,
                b'!' | b'#'
                    | b'$'
                    | b'%'
                    | b'&'
                    | b'\''
                    | b'*'
                    | b'+'
                    | b'-'
                    | b'/'
                    | b'='
                    | b'?'
                    | b'^'
                    | b'_'
                    | b'`'
                    | b'{'
                    | b'|'
                    | b'}'
                    | b'~'
            );
        i += 1;
    }
    table
};

/// Scans a domain at the start of `b`: labels of letters, digits and inner hyphens
/// (or UTF-8), separated by single dots. Returns its length.
pub(crate) fn scan_domain(b: &[u8]) -> Option<usize> {
    let mut i = 0;
    loop {
        // One label: letters, digits, inner hyphens; UTF-8 (U-labels) allowed.
        let start = i;
        let mut non_ascii = false;
        while let Some(&c) = b.get(i) {
            match LABEL[usize::from(c)] {
                0 => break,
                3 => non_ascii = true,
                _ => {}
            }
            i += 1;
        }
        let (first, last) = (b.get(start)?, b.get(i.checked_sub(1)?)?);
        if i == start
            || *first == b'-'
            || *last == b'-'
            || (!non_ascii && i - start > MAX_LABEL_LEN)
        {
            return None;
        }
        match (b.get(i), b.get(i + 1)) {
            (Some(b'.'), Some(&next)) if LABEL[usize::from(next)] & 1 == 1 => i += 1,
            _ => break,
        }
    }
    (i <= MAX_DOMAIN_LEN).then_some(i)
}

/// Domain label characters: 0 none, 1 letter or digit, 2 hyphen, 3 non-ASCII (a
/// label may start with 1 or 3: odd values).
const LABEL: [u8; 256] = {
    let mut table = [0; 256];
    let mut i = 0;
    while i < 256 {
        let c = i as u8;
        table[i] = if c.is_ascii_alphanumeric() {
            1
        } else if c == b'-' {
            2
        } else if c >= 0x80 {
            3
        } else {
            0
        };
        i += 1;
    }
    table
};

/// Scans `[IPv4]` or `[IPv6:...]` at `start`; returns the address and the length.
fn scan_literal(b: &[u8], start: usize) -> Option<(IpAddr, usize)> {
    let rest = b.get(start..)?;
    if rest.first() != Some(&b'[') {
        return None;
    }
    let close = memchr::memchr(b']', rest)?;
    let inner = std::str::from_utf8(&rest[1..close]).ok()?;
    let ip = match inner.get(..5) {
        Some(tag) if tag.eq_ignore_ascii_case("IPv6:") => {
            IpAddr::V6(inner[5..].parse::<Ipv6Addr>().ok()?)
        }
        _ => IpAddr::V4(inner.parse::<Ipv4Addr>().ok()?),
    };
    Some((ip, close + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_mailboxes() {
        for (input, local, domain) in [
            ("user@example.test", "user", "example.test"),
            (
                "first.last+tag@sub.example.test",
                "first.last+tag",
                "sub.example.test",
            ),
            ("\"john doe\"@ex.test", "\"john doe\"", "ex.test"),
            (
                "\"@a,@b:<user>\"@ours.test",
                "\"@a,@b:<user>\"",
                "ours.test",
            ),
            ("\"a\\\"b\"@ex.test", "\"a\\\"b\"", "ex.test"),
            ("u@[192.0.2.1]", "u", "[192.0.2.1]"),
            ("u@[IPv6:2001:db8::1]", "u", "[IPv6:2001:db8::1]"),
            ("u@[ipv6:::1]", "u", "[ipv6:::1]"),
            ("孫子@áéíóú.test", "孫子", "áéíóú.test"),
            (
                "!#$%&'*+-/=?^_`{|}~@x.test",
                "!#$%&'*+-/=?^_`{|}~",
                "x.test",
            ),
            ("a@b", "a", "b"),
            ("a@1.2.3.4.test", "a", "1.2.3.4.test"),
        ] {
            let m = Mailbox::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!((m.local_part(), m.domain()), (local, domain), "{input}");
        }
    }

    #[test]
    fn invalid_mailboxes() {
        for input in [
            "a@@b.test",
            "a..b@c.test",
            ".a@b.test",
            "a.@b.test",
            "a@b..test",
            "a@.b.test",
            "a@b.test.",
            "a@-b.test",
            "a@b-.test",
            "@b.test",
            "a@",
            "a",
            "\"\"@b.test",
            "\"abc@b.test",
            "a b@c.test",
            "a@[300.1.1.1]",
            "a@[IPv6:zz]",
            "a@[1.2.3.4",
            "a@b_c.test",
            "a\u{0}b@c.test",
        ] {
            assert!(Mailbox::parse(input).is_err(), "{input}");
        }
        let long_label = format!("a@{}.test", "x".repeat(64));
        assert!(Mailbox::parse(&long_label).is_err());
        let long_domain = format!("a@{}test", "x.".repeat(127));
        assert!(Mailbox::parse(&long_domain).is_err());
    }

    #[test]
    fn paths() {
        assert_eq!(ReversePath::parse("<>").unwrap(), ReversePath::Null);
        let p = ReversePath::parse("<@a.test,@b.test:user@d.test>").unwrap();
        assert_eq!(p.mailbox().unwrap().as_str(), "user@d.test");
        let p = ForwardPath::parse("<@relay.test:ok@ours.test>").unwrap();
        assert_eq!(p.mailbox().unwrap().as_str(), "ok@ours.test");
        assert_eq!(
            ForwardPath::parse("<Postmaster>").unwrap(),
            ForwardPath::Postmaster
        );
        assert_eq!(
            ForwardPath::parse("<POSTMASTER>").unwrap(),
            ForwardPath::Postmaster
        );
        assert!(matches!(
            ForwardPath::parse("<postmaster@x.test>").unwrap(),
            ForwardPath::Mailbox(_)
        ));
        assert_eq!(ForwardPath::parse("<>"), Err(Error::NullRecipient));
        for bad in [
            "<a@b.test>>>",
            "<a@b.test",
            "a@b.test>",
            "a@b.test",
            "<@a.test:>",
            "<@:a@b>",
            "<@a.test,b@c>",
        ] {
            assert!(ReversePath::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn unquoting() {
        let m = Mailbox::parse("\"a\\\"b\\\\c\"@x.test").unwrap();
        assert_eq!(m.local_part_unquoted(), "a\"b\\c");
        assert_eq!(
            Mailbox::parse("plain@x.test")
                .unwrap()
                .local_part_unquoted(),
            "plain"
        );
    }

    #[test]
    fn helo_names() {
        assert!(matches!(
            HeloName::parse("mx.example.test"),
            Some(HeloName::Domain(_))
        ));
        assert!(matches!(
            HeloName::parse("[192.0.2.1]"),
            Some(HeloName::Address(_))
        ));
        let v6 = HeloName::parse("[IPv6:2001:db8::1]").unwrap();
        assert_eq!(v6.to_string(), "[IPv6:2001:db8::1]");
        assert!(matches!(HeloName::parse("my_pc"), Some(HeloName::Other(_))));
        assert!(HeloName::parse("").is_none());
    }
}
