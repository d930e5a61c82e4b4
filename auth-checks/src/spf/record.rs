//! SPF records: which TXT strings are SPF records (RFC 7208 §4.5), and their terms
//! (§4.6.1, §5, §6, the ABNF of §12). Every syntax error anywhere in a record makes it a
//! `permerror` before any term is evaluated (§4.6).

use std::net::{Ipv4Addr, Ipv6Addr};

use super::macros::{MacroString, Place};

/// A directive's qualifier (§4.6.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Qualifier {
    /// `+` (the default).
    Pass,
    /// `-`.
    Fail,
    /// `~`.
    SoftFail,
    /// `?`.
    Neutral,
}

/// A mechanism (§5).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Mechanism {
    /// `all`.
    All,
    /// `include:<domain-spec>`.
    Include(MacroString),
    /// `a[:<domain-spec>][/<ip4-len>][//<ip6-len>]`.
    A {
        domain: Option<MacroString>,
        v4: u8,
        v6: u8,
    },
    /// `mx[:<domain-spec>][/<ip4-len>][//<ip6-len>]`.
    Mx {
        domain: Option<MacroString>,
        v4: u8,
        v6: u8,
    },
    /// `ptr[:<domain-spec>]`.
    Ptr(Option<MacroString>),
    /// `ip4:<network>[/<len>]`.
    Ip4(Ipv4Addr, u8),
    /// `ip6:<network>[/<len>]`.
    Ip6(Ipv6Addr, u8),
    /// `exists:<domain-spec>`.
    Exists(MacroString),
}

impl Mechanism {
    /// Whether evaluating it queries DNS (it counts toward the limit of §4.6.4).
    pub(crate) fn queries_dns(&self) -> bool {
        !matches!(self, Self::All | Self::Ip4(..) | Self::Ip6(..))
    }
}

/// A qualifier and a mechanism.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Directive {
    pub(crate) qualifier: Qualifier,
    pub(crate) mechanism: Mechanism,
}

/// A parsed SPF record.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Record {
    /// The directives, left to right.
    pub(crate) directives: Vec<Directive>,
    /// `redirect=`; ignored when the record has an `all` mechanism (§6.1).
    pub(crate) redirect: Option<MacroString>,
    /// `exp=`.
    pub(crate) exp: Option<MacroString>,
}

/// Whether a TXT record (its strings joined) is an SPF record: it starts with
/// `v=spf1` (any case), followed by a space or the end (§4.5).
pub(crate) fn is_spf(txt: &[u8]) -> bool {
    txt.get(..6)
        .is_some_and(|v| v.eq_ignore_ascii_case(b"v=spf1"))
        && txt.get(6).is_none_or(|&b| b == b' ')
}

impl Record {
    /// Parses an SPF record (one that [`is_spf`]); `Err` with the reason on any syntax
    /// error.
    pub(crate) fn parse(txt: &[u8]) -> Result<Self, String> {
        // §3.1: US-ASCII only; §4.6.1: terms are separated by spaces, nothing else.
        if let Some(&b) = txt.iter().find(|&&b| !(0x20..=0x7e).contains(&b)) {
            return Err(format!("byte 0x{b:02x} in the record"));
        }
        // Checked above: all ASCII.
        let text = String::from_utf8_lossy(txt);
        let mut record = Self::default();
        let mut has_all = false;
        for term in text.split(' ').skip(1).filter(|t| !t.is_empty()) {
            match modifier(term)? {
                Some(("redirect", value)) => {
                    if record.redirect.is_some() {
                        return Err("redirect= twice".to_owned());
                    }
                    record.redirect = Some(MacroString::parse_domain_spec(value)?);
                }
                Some(("exp", value)) => {
                    if record.exp.is_some() {
                        return Err("exp= twice".to_owned());
                    }
                    record.exp = Some(MacroString::parse_domain_spec(value)?);
                }
                Some((_, value)) => {
                    // Unknown modifiers are ignored, but must be well formed (§6).
                    MacroString::parse(value, Place::Term)?;
                }
                None => {
                    let directive = directive(term)?;
                    has_all |= directive.mechanism == Mechanism::All;
                    record.directives.push(directive);
                }
            }
        }
        if has_all {
            record.redirect = None;
        }
        Ok(record)
    }
}

/// `Some((name, value))` when `term` is a modifier (`name=value`, the name before any
/// `:` or `/`), its name lowercased; `Err` on a modifier with a bad name.
fn modifier(term: &str) -> Result<Option<(&'static str, &str)>, String> {
    let Some(end) = term.find([':', '/', '=']) else {
        return Ok(None);
    };
    if term.as_bytes()[end] != b'=' {
        return Ok(None);
    }
    let (name, value) = (&term[..end], &term[end + 1..]);
    // name = ALPHA *( ALPHA / DIGIT / "-" / "_" / "." )
    let well_formed = name.as_bytes().first().is_some_and(u8::is_ascii_alphabetic)
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !well_formed {
        return Err(format!("bad modifier name in {term:?}"));
    }
    Ok(Some(if name.eq_ignore_ascii_case("redirect") {
        ("redirect", value)
    } else if name.eq_ignore_ascii_case("exp") {
        ("exp", value)
    } else {
        ("", value)
    }))
}

fn directive(term: &str) -> Result<Directive, String> {
    let (qualifier, rest) = match term.as_bytes().first() {
        Some(b'+') => (Qualifier::Pass, &term[1..]),
        Some(b'-') => (Qualifier::Fail, &term[1..]),
        Some(b'~') => (Qualifier::SoftFail, &term[1..]),
        Some(b'?') => (Qualifier::Neutral, &term[1..]),
        _ => (Qualifier::Pass, term),
    };
    let split = rest.find([':', '/']).unwrap_or(rest.len());
    let (name, args) = rest.split_at(split);
    let bad = || format!("bad mechanism {term:?}");
    let mechanism = match name.to_ascii_lowercase().as_str() {
        "all" if args.is_empty() => Mechanism::All,
        "include" => Mechanism::Include(required_domain(args).ok_or_else(bad)??),
        "exists" => Mechanism::Exists(required_domain(args).ok_or_else(bad)??),
        "ptr" => Mechanism::Ptr(match args {
            "" => None,
            _ => Some(required_domain(args).ok_or_else(bad)??),
        }),
        "a" | "mx" => {
            let (rest, v4, v6) = dual_cidr(args)?;
            let domain = match rest {
                "" => None,
                _ => Some(required_domain(rest).ok_or_else(bad)??),
            };
            if name.eq_ignore_ascii_case("a") {
                Mechanism::A { domain, v4, v6 }
            } else {
                Mechanism::Mx { domain, v4, v6 }
            }
        }
        "ip4" => {
            let value = args.strip_prefix(':').ok_or_else(bad)?;
            let (net, len) = match value.split_once('/') {
                Some((net, len)) => (net, cidr(len, 32)?),
                None => (value, 32),
            };
            Mechanism::Ip4(ip4_network(net).ok_or_else(bad)?, len)
        }
        "ip6" => {
            let value = args.strip_prefix(':').ok_or_else(bad)?;
            let (net, len) = match value.split_once('/') {
                Some((net, len)) => (net, cidr(len, 128)?),
                None => (value, 128),
            };
            Mechanism::Ip6(net.parse().map_err(|_| bad())?, len)
        }
        _ => return Err(bad()),
    };
    Ok(Directive {
        qualifier,
        mechanism,
    })
}

/// `":" domain-spec`: `None` when `args` does not start with `:`.
fn required_domain(args: &str) -> Option<Result<MacroString, String>> {
    args.strip_prefix(':').map(MacroString::parse_domain_spec)
}

/// Splits a trailing `dual-cidr-length` off `args`: `[ "/" ip4-len ] [ "//" ip6-len ]`,
/// each made of digits (so `foo:bar/baz.example.com` keeps its slash).
fn dual_cidr(args: &str) -> Result<(&str, u8, u8), String> {
    let (mut rest, mut v4, mut v6) = (args, 32, 128);
    if let Some((head, digits)) = trailing_length(rest)
        && let Some(head) = head.strip_suffix('/')
    {
        v6 = cidr(digits, 128)?;
        rest = head;
    }
    if let Some((head, digits)) = trailing_length(rest) {
        v4 = cidr(digits, 32)?;
        rest = head;
    }
    Ok((rest, v4, v6))
}

/// `(head, digits)` when `text` ends in `/` and digits (the `/` not in `head`).
fn trailing_length(text: &str) -> Option<(&str, &str)> {
    let digits = text.bytes().rev().take_while(u8::is_ascii_digit).count();
    let split = text.len() - digits;
    let head = text[..split].strip_suffix('/')?;
    (digits > 0).then(|| (head, &text[split..]))
}

/// A CIDR length: `"0" / %x31-39 *DIGIT`, at most `max`.
fn cidr(digits: &str, max: u8) -> Result<u8, String> {
    let bad = || format!("bad CIDR length /{digits}");
    if digits.is_empty()
        || digits.len() > 3
        || !digits.bytes().all(|b| b.is_ascii_digit())
        || (digits.len() > 1 && digits.starts_with('0'))
    {
        return Err(bad());
    }
    digits
        .parse::<u8>()
        .ok()
        .filter(|len| *len <= max)
        .ok_or_else(bad)
}

/// `qnum "." qnum "." qnum "." qnum`, no leading zeros.
fn ip4_network(text: &str) -> Option<Ipv4Addr> {
    let mut octets = [0u8; 4];
    let mut parts = text.split('.');
    for octet in &mut octets {
        let part = parts.next()?;
        if part.is_empty()
            || part.len() > 3
            || !part.bytes().all(|b| b.is_ascii_digit())
            || (part.len() > 1 && part.starts_with('0'))
        {
            return None;
        }
        *octet = part.parse().ok()?;
    }
    parts.next().is_none().then(|| Ipv4Addr::from(octets))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Record, String> {
        Record::parse(text.as_bytes())
    }

    #[test]
    fn selection() {
        assert!(is_spf(b"v=spf1"));
        assert!(is_spf(b"V=sPf1 -all"));
        assert!(!is_spf(b"v=spf10"));
        assert!(!is_spf(b"v=spf1mx"));
        assert!(!is_spf(b"spf1"));
    }

    #[test]
    fn good_records() {
        let r = parse("v=spf1 a  mx/24//64 -ptr:%{d} ?exists:%{ir}.x.example ~all ").unwrap();
        assert_eq!(r.directives.len(), 5);
        assert_eq!(
            r.directives[1].mechanism,
            Mechanism::Mx {
                domain: None,
                v4: 24,
                v6: 64
            }
        );
        assert_eq!(r.directives[2].qualifier, Qualifier::Fail);
        assert_eq!(r.directives[4].mechanism, Mechanism::All);
        let r = parse("v=spf1 ip4:1.2.3.4 redirect=t2.example.com exp=e.example.com").unwrap();
        assert!(r.redirect.is_some() && r.exp.is_some());
        let r = parse("v=spf1 redirect=t5.example.com ~all").unwrap();
        assert!(r.redirect.is_none(), "all cancels redirect");
        let r = parse("v=spf1 a:foo:bar/baz.example.com").unwrap();
        assert!(matches!(
            &r.directives[0].mechanism,
            Mechanism::A {
                domain: Some(_),
                v4: 32,
                v6: 128
            }
        ));
        assert!(parse("v=spf1 moo.cow-far_out=man:dog/cat ip4:1.2.3.4 -all").is_ok());
        assert!(parse("v=spf1 default=+").is_ok());
        assert!(parse("v=spf1 ip6:Cafe:Babe:8000::/33").is_ok());
        assert!(parse("v=spf1 ip4:1.1.1.1/0").is_ok());
        assert!(parse("v=spf1").unwrap().directives.is_empty());
    }

    #[test]
    fn syntax_errors() {
        for bad in [
            "v=spf1 ip4:1.2.3.4 -all moo",
            "v=spf1 moo.cow/far_out=man:dog/cat",
            "v=spf1 moo.cow:far_out=man:dog/cat",
            "v=spf1 redirect:t2.example.com",
            "v=spf1 a:foo-bar -all",
            "v=spf1 -all.",
            "v=spf1 -all:foobar",
            "v=spf1 -all/8",
            "v=spf1 ptr/0 -all",
            "v=spf1 ptr:",
            "v=spf1 a/33",
            "v=spf1 a//129",
            "v=spf1 a/24/64",
            "v=spf1 a:example.com:8080",
            "v=spf1 a:",
            "v=spf1 include",
            "v=spf1 include:ip5.example.com/24",
            "v=spf1 exists",
            "v=spf1 exists:mail.example.com/24",
            "v=spf1 ip4:1.2.3.4/33",
            "v=spf1 ip4:1.2.3.4/032",
            "v=spf1 ip4",
            "v=spf1 ip4:1.2.3.4//32",
            "v=spf1 ip4:1.2.3.4:8080",
            "v=spf1 ip4:1.2.3",
            "v=spf1 ip4:01.2.3.4",
            "v=spf1 -all ip6",
            "v=spf1 ip6:::1.1.1.1/129",
            "v=spf1 ip6:::1.1.1.1//33",
            "v=spf1 ip6::CAFE::BABE",
            "v=spf1 1up=foo",
            "v=spf1 =all",
            "v=spf1 exp= -all",
            "v=spf1 exp=-all",
            "v=spf1 redirect=-all ?all",
            "v=spf1 ?all redirect=",
            "v=spf1 exp=a.example.com exp=b.example.com",
            "v=spf1 redirect=a.example.com -all redirect=a.example.com",
            "v=spf1 -all foo=%abc",
            "v=spf1 -all exp=%{r}.example.com",
            "v=spf1 a:%{a}.example.com",
            "v=spf1 a:ctrl.example.com\rptr -all",
            "v=spf1 \u{80}a:example.net",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} parsed");
        }
    }
}
