//! Macro strings (RFC 7208 §7): parsing, the `domain-spec` syntax check, and expansion
//! with the transformers, URL escaping and the 253-octet truncation of query names.
//!
//! ```text
//! macro-string = *( macro-expand / macro-literal )
//! macro-expand = ( "%{" macro-letter transformers *delimiter "}" ) / "%%" / "%_" / "%-"
//! transformers = *DIGIT [ "r" ]
//! delimiter    = "." / "-" / "+" / "," / "/" / "_" / "="
//! domain-spec  = macro-string domain-end
//! domain-end   = ( "." toplabel [ "." ] ) / macro-expand
//! ```

use std::fmt::Write;
use std::net::IpAddr;

/// A macro letter (§7.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Letter {
    /// `s`: the sender, `local@domain`.
    Sender,
    /// `l`: the sender's local part.
    Local,
    /// `o`: the sender's domain.
    SenderDomain,
    /// `d`: the domain being checked.
    Domain,
    /// `i`: the client address (dotted quad, or dotted nibbles for IPv6).
    Ip,
    /// `p`: the validated domain name of the client.
    ValidatedName,
    /// `v`: `in-addr` or `ip6`.
    Version,
    /// `h`: the HELO name.
    Helo,
    /// `c` (explanations only): the client address as text.
    ClientText,
    /// `r` (explanations only): our host name.
    Receiver,
    /// `t` (explanations only): the current time, seconds since the epoch.
    Timestamp,
}

/// One `%{...}` expansion.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Macro {
    letter: Letter,
    /// Written in uppercase: the value is URL-escaped.
    escape: bool,
    /// Right-hand parts to keep.
    keep: Option<usize>,
    reverse: bool,
    /// The delimiters to split on (`.` when none is given).
    delimiters: Vec<u8>,
}

/// A piece of a macro string.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Token {
    Literal(String),
    Expand(Macro),
    /// `%%`, `%_`, `%-`: a percent sign, a space, a URL-encoded space.
    Escape(&'static str),
}

/// A parsed macro string (a `domain-spec`, an unknown modifier's value or an
/// explanation text).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct MacroString(Vec<Token>);

/// Where a macro string appears: the letters `c`, `r` and `t` and spaces are allowed in
/// explanation text only (§7.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Place {
    /// A domain-spec or a modifier value.
    Term,
    /// The text of an `exp=` TXT record.
    Explanation,
}

/// What the macros of one evaluation expand to.
#[derive(Clone, Debug)]
pub(crate) struct Values<'a> {
    pub(crate) local: &'a str,
    pub(crate) sender_domain: &'a str,
    pub(crate) domain: &'a str,
    pub(crate) ip: IpAddr,
    pub(crate) helo: &'a str,
    pub(crate) receiver: &'a str,
    /// `%{p}`, when the string uses it (see [`MacroString::uses_validated_name`]).
    pub(crate) validated_name: Option<&'a str>,
}

impl MacroString {
    /// Parses `text` as a macro string; `Err` with the reason on a syntax error.
    pub(crate) fn parse(text: &str, place: Place) -> Result<Self, String> {
        let bytes = text.as_bytes();
        let mut tokens = Vec::new();
        let mut literal = String::new();
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            if b != b'%' {
                let allowed =
                    matches!(b, 0x21..=0x7e) || (b == b' ' && place == Place::Explanation);
                if !allowed {
                    return Err(format!(
                        "character {:?} not allowed in {text:?}",
                        char::from(b)
                    ));
                }
                literal.push(char::from(b));
                i += 1;
                continue;
            }
            let escape = match bytes.get(i + 1) {
                Some(b'%') => Some("%"),
                Some(b'_') => Some(" "),
                Some(b'-') => Some("%20"),
                Some(b'{') => None,
                _ => {
                    return Err(format!(
                        "'%' not followed by '{{', '%', '_' or '-' in {text:?}"
                    ));
                }
            };
            if !literal.is_empty() {
                tokens.push(Token::Literal(std::mem::take(&mut literal)));
            }
            if let Some(escape) = escape {
                tokens.push(Token::Escape(escape));
                i += 2;
                continue;
            }
            let end = bytes[i..]
                .iter()
                .position(|&b| b == b'}')
                .map(|p| i + p)
                .ok_or_else(|| format!("unterminated macro in {text:?}"))?;
            tokens.push(Token::Expand(parse_macro(&bytes[i + 2..end], place)?));
            i = end + 1;
        }
        if !literal.is_empty() {
            tokens.push(Token::Literal(literal));
        }
        Ok(Self(tokens))
    }

    /// Parses a `domain-spec`: a non-empty macro string that ends in a macro or in
    /// `"." toplabel ["."]` (§7.1).
    pub(crate) fn parse_domain_spec(text: &str) -> Result<Self, String> {
        if text.is_empty() {
            return Err("empty domain-spec".to_owned());
        }
        let spec = Self::parse(text, Place::Term)?;
        match spec.0.last() {
            Some(Token::Expand(_) | Token::Escape(_)) => Ok(spec),
            Some(Token::Literal(tail)) => {
                let tail = tail.strip_suffix('.').unwrap_or(tail);
                match tail.rsplit_once('.') {
                    Some((_, top)) if is_toplabel(top) => Ok(spec),
                    _ => Err(format!("domain-spec {text:?} does not end in a top label")),
                }
            }
            None => Err("empty domain-spec".to_owned()),
        }
    }

    /// Whether `%{p}` appears (its value needs DNS lookups).
    pub(crate) fn uses_validated_name(&self) -> bool {
        self.0
            .iter()
            .any(|t| matches!(t, Token::Expand(m) if m.letter == Letter::ValidatedName))
    }

    /// The expanded text.
    pub(crate) fn expand(&self, values: &Values<'_>) -> String {
        let mut out = String::new();
        for token in &self.0 {
            match token {
                Token::Literal(text) => out.push_str(text),
                Token::Escape(text) => out.push_str(text),
                Token::Expand(m) => out.push_str(&m.expand(values)),
            }
        }
        out
    }
}

/// The name to query for an expanded domain-spec (§7.3, §4.3): without its final dot,
/// cut from the left label by label to at most 253 octets; `None` when it is no name
/// that DNS can carry (an empty label, a label over 63 octets), which is no match.
pub(crate) fn query_name(expanded: &str) -> Option<String> {
    let mut name = expanded.strip_suffix('.').unwrap_or(expanded);
    while name.len() > 253 {
        name = name.split_once('.')?.1;
    }
    (!name.is_empty() && name.split('.').all(|l| (1..=63).contains(&l.len())))
        .then(|| name.to_owned())
}

/// `toplabel = ( *alphanum ALPHA *alphanum ) / ( 1*alphanum "-" *( alphanum / "-" ) alphanum )`
fn is_toplabel(label: &str) -> bool {
    let b = label.as_bytes();
    if b.is_empty() || !b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-') {
        return false;
    }
    if b.contains(&b'-') {
        b[0].is_ascii_alphanumeric() && b[b.len() - 1].is_ascii_alphanumeric()
    } else {
        b.iter().any(u8::is_ascii_alphabetic)
    }
}

/// The inside of `%{...}`: `macro-letter transformers *delimiter`.
fn parse_macro(body: &[u8], place: Place) -> Result<Macro, String> {
    let text = String::from_utf8_lossy(body);
    let (&first, mut rest) = body
        .split_first()
        .ok_or_else(|| "empty macro %{}".to_owned())?;
    let letter = match first.to_ascii_lowercase() {
        b's' => Letter::Sender,
        b'l' => Letter::Local,
        b'o' => Letter::SenderDomain,
        b'd' => Letter::Domain,
        b'i' => Letter::Ip,
        b'p' => Letter::ValidatedName,
        b'v' => Letter::Version,
        b'h' => Letter::Helo,
        b'c' if place == Place::Explanation => Letter::ClientText,
        b'r' if place == Place::Explanation => Letter::Receiver,
        b't' if place == Place::Explanation => Letter::Timestamp,
        b'c' | b'r' | b't' => {
            return Err(format!("macro %{{{text}}} is allowed in explanations only"));
        }
        _ => return Err(format!("unknown macro letter in %{{{text}}}")),
    };
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    let keep = if digits == 0 {
        None
    } else {
        let n = rest[..digits].iter().fold(0usize, |n, d| {
            n.saturating_mul(10).saturating_add(usize::from(d - b'0'))
        });
        if n == 0 {
            return Err(format!("zero parts in %{{{text}}}"));
        }
        Some(n)
    };
    rest = &rest[digits..];
    let reverse = matches!(rest.first(), Some(b'r' | b'R'));
    if reverse {
        rest = &rest[1..];
    }
    if !rest
        .iter()
        .all(|b| matches!(b, b'.' | b'-' | b'+' | b',' | b'/' | b'_' | b'='))
    {
        return Err(format!("bad transformer or delimiter in %{{{text}}}"));
    }
    Ok(Macro {
        letter,
        escape: first.is_ascii_uppercase(),
        keep,
        reverse,
        delimiters: if rest.is_empty() {
            vec![b'.']
        } else {
            rest.to_vec()
        },
    })
}

impl Macro {
    fn expand(&self, values: &Values<'_>) -> String {
        let value = match self.letter {
            Letter::Sender => format!("{}@{}", values.local, values.sender_domain),
            Letter::Local => values.local.to_owned(),
            Letter::SenderDomain => values.sender_domain.to_owned(),
            Letter::Domain => values.domain.to_owned(),
            Letter::Ip => dotted(values.ip),
            Letter::ValidatedName => values.validated_name.unwrap_or("unknown").to_owned(),
            Letter::Version => match values.ip {
                IpAddr::V4(_) => "in-addr".to_owned(),
                IpAddr::V6(_) => "ip6".to_owned(),
            },
            Letter::Helo => values.helo.to_owned(),
            Letter::ClientText => values.ip.to_string(),
            Letter::Receiver => {
                if values.receiver.is_empty() {
                    "unknown".to_owned()
                } else {
                    values.receiver.to_owned()
                }
            }
            Letter::Timestamp => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
                .to_string(),
        };
        let transformed = self.transform(&value);
        if self.escape {
            url_escape(&transformed)
        } else {
            transformed
        }
    }

    /// Split on the delimiters, reverse, keep the right-hand parts, join with dots
    /// (§7.3).
    fn transform(&self, value: &str) -> String {
        if self.keep.is_none() && !self.reverse && self.delimiters == [b'.'] {
            return value.to_owned();
        }
        let mut parts: Vec<&str> = value
            .split(|c: char| c.is_ascii() && self.delimiters.contains(&(c as u8)))
            .collect();
        if self.reverse {
            parts.reverse();
        }
        if let Some(keep) = self.keep {
            let skip = parts.len().saturating_sub(keep);
            parts.drain(..skip);
        }
        parts.join(".")
    }
}

/// `%{i}`: an IPv4 address as is, an IPv6 address as 32 dot-separated nibbles
/// (uppercase, as the OpenSPF suite and pyspf write them; DNS ignores the case).
pub(crate) fn dotted(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => {
            let mut out = String::with_capacity(63);
            for byte in v6.octets() {
                for nibble in [byte >> 4, byte & 15] {
                    if !out.is_empty() {
                        out.push('.');
                    }
                    let _ = write!(out, "{nibble:X}");
                }
            }
            out
        }
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters, with uppercase hex
/// (RFC 3986 §2.1).
fn url_escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(ip: &str) -> Values<'static> {
        Values {
            local: "strong-bad",
            sender_domain: "email.example.com",
            domain: "email.example.com",
            ip: ip.parse().unwrap(),
            helo: "mx.example.org",
            receiver: "mx.example.net",
            validated_name: None,
        }
    }

    fn expand(text: &str, ip: &str) -> String {
        MacroString::parse(text, Place::Explanation)
            .unwrap()
            .expand(&values(ip))
    }

    /// The examples of RFC 7208 §7.4.
    #[test]
    fn rfc_examples() {
        let v4 = "192.0.2.3";
        assert_eq!(expand("%{s}", v4), "strong-bad@email.example.com");
        assert_eq!(expand("%{o}", v4), "email.example.com");
        assert_eq!(expand("%{d}", v4), "email.example.com");
        assert_eq!(expand("%{d4}", v4), "email.example.com");
        assert_eq!(expand("%{d3}", v4), "email.example.com");
        assert_eq!(expand("%{d2}", v4), "example.com");
        assert_eq!(expand("%{d1}", v4), "com");
        assert_eq!(expand("%{dr}", v4), "com.example.email");
        assert_eq!(expand("%{d2r}", v4), "example.email");
        assert_eq!(expand("%{l}", v4), "strong-bad");
        assert_eq!(expand("%{l-}", v4), "strong.bad");
        assert_eq!(expand("%{lr}", v4), "strong-bad");
        assert_eq!(expand("%{lr-}", v4), "bad.strong");
        assert_eq!(expand("%{l1r-}", v4), "strong");
        assert_eq!(
            expand("%{ir}.%{v}._spf.%{d2}", v4),
            "3.2.0.192.in-addr._spf.example.com"
        );
        assert_eq!(
            expand("%{lr-}.lp._spf.%{d2}", v4),
            "bad.strong.lp._spf.example.com"
        );
        assert_eq!(
            expand("%{ir}.%{v}.%{l1r-}.lp._spf.%{d2}", v4),
            "3.2.0.192.in-addr.strong.lp._spf.example.com"
        );
        assert_eq!(
            expand("%{d2}.trusted-domains.example.net", v4),
            "example.com.trusted-domains.example.net"
        );
        assert_eq!(
            expand("%{ir}.%{v}._spf.%{d2}", "2001:db8::cb01").to_ascii_lowercase(),
            "1.0.b.c.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6._spf.example.com"
        );
        assert_eq!(expand("%{c}", "2001:db8::cb01"), "2001:db8::cb01");
        assert_eq!(expand("%%%_%-", v4), "% %20");
        assert_eq!(expand("%{p} %{r}", v4), "unknown mx.example.net");
    }

    #[test]
    fn url_escaping() {
        let mut v = values("192.0.2.3");
        v.local = "~jack&jill=up-a_b3.c";
        let text = MacroString::parse("l=%{L}", Place::Explanation).unwrap();
        assert_eq!(text.expand(&v), "l=~jack%26jill%3Dup-a_b3.c");
    }

    #[test]
    fn syntax() {
        for bad in [
            "%", "a%b", "%{x}", "%{d0}", "%{d2q}", "%{d", "%(ir)", "a\tb",
        ] {
            assert!(MacroString::parse(bad, Place::Term).is_err(), "{bad}");
        }
        assert!(MacroString::parse("%{r}", Place::Term).is_err());
        assert!(MacroString::parse("%{r}", Place::Explanation).is_ok());
        assert!(MacroString::parse("a b", Place::Term).is_err());
        assert!(MacroString::parse("a b", Place::Explanation).is_ok());
        assert!(MacroString::parse("%{l2r+-}", Place::Term).is_ok());
    }

    #[test]
    fn domain_spec() {
        for good in [
            "example.com",
            "example.com.",
            "%{d}",
            "foo:bar/baz.example.com",
            "foo.example.xn--zckzah",
            "%{ir}.%{v}._spf.%{d2}",
            "x.%%",
        ] {
            assert!(MacroString::parse_domain_spec(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "museum",
            "museum.",
            "foo-bar",
            "example.com:8080",
            "111.222.33.44",
            "abc.123",
            "example.-com",
            "-all",
            "foo.example.com\0",
            "%{d}com",
        ] {
            assert!(MacroString::parse_domain_spec(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn query_names() {
        assert_eq!(query_name("example.com."), Some("example.com".to_owned()));
        assert_eq!(query_name("a..example.com"), None);
        assert_eq!(query_name(&format!("{}.com", "a".repeat(64))), None);
        let long = format!(
            "foobar.{}example.com",
            "somewhat.long.exp.example.com.".repeat(8)
        );
        let cut = query_name(&long).unwrap();
        assert!(cut.len() <= 253);
        assert!(cut.starts_with("somewhat."));
    }
}
