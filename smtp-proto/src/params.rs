//! ESMTP parameters of MAIL FROM and RCPT TO (RFC 5321 §4.1.2 `Mail-parameters`):
//! SIZE (RFC 1870), BODY (RFC 6152, RFC 3030), SMTPUTF8 (RFC 6531), RET and ENVID
//! (RFC 3461), AUTH (RFC 4954), REQUIRETLS (RFC 8689), MT-PRIORITY (RFC 6710), NOTIFY and
//! ORCPT (RFC 3461), and the xtext encoding they use.

use std::fmt;

use crate::Error;
use crate::address::{Mailbox, ReversePath};
use crate::reply::push_decimal;

/// `BODY=` of MAIL FROM.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Body {
    /// `BODY=7BIT`
    SevenBit,
    /// `BODY=8BITMIME` (RFC 6152)
    EightBitMime,
    /// `BODY=BINARYMIME` (RFC 3030): only with BDAT.
    BinaryMime,
}

impl Body {
    /// The keyword as sent on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SevenBit => "7BIT",
            Self::EightBitMime => "8BITMIME",
            Self::BinaryMime => "BINARYMIME",
        }
    }
}

/// `RET=` of MAIL FROM (RFC 3461 §4.3): what a DSN returns of the message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Ret {
    /// `RET=FULL`: the whole message.
    Full,
    /// `RET=HDRS`: the headers only.
    Headers,
}

/// The conditions under which a DSN is wanted, `NOTIFY=` of RCPT TO (RFC 3461 §4.1).
///
/// `NEVER` is the empty set; otherwise any non-empty combination of SUCCESS, FAILURE
/// and DELAY.
///
/// ```
/// use smtp_proto::Notify;
/// let notify = Notify::SUCCESS.union(Notify::FAILURE);
/// assert!(notify.contains(Notify::FAILURE));
/// assert!(!notify.contains(Notify::DELAY));
/// assert_eq!(notify.to_string(), "SUCCESS,FAILURE");
/// assert_eq!(Notify::NEVER.to_string(), "NEVER");
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Notify(u8);

impl Notify {
    /// `NEVER`: no DSN at all.
    pub const NEVER: Self = Self(0);
    /// `SUCCESS`
    pub const SUCCESS: Self = Self(1);
    /// `FAILURE`
    pub const FAILURE: Self = Self(2);
    /// `DELAY`
    pub const DELAY: Self = Self(4);

    /// Both sets together.
    pub const fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    /// `self` without the conditions of `other`.
    ///
    /// ```
    /// use smtp_proto::Notify;
    /// let all = Notify::SUCCESS.union(Notify::FAILURE).union(Notify::DELAY);
    /// assert_eq!(all.without(Notify::SUCCESS.union(Notify::DELAY)), Notify::FAILURE);
    /// ```
    pub const fn without(self, other: Self) -> Self {
        Self(self.0 & !other.0)
    }

    /// Whether every condition of `other` is in `self`.
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0 && (other.0 != 0 || self.0 == 0)
    }

    /// `NEVER`?
    pub const fn is_never(self) -> bool {
        self.0 == 0
    }

    fn parse(value: &str) -> Option<Self> {
        if value.eq_ignore_ascii_case("NEVER") {
            return Some(Self::NEVER);
        }
        let mut set = Self::NEVER;
        for word in split_bytes(value, b',') {
            let flag = if word.eq_ignore_ascii_case("SUCCESS") {
                Self::SUCCESS
            } else if word.eq_ignore_ascii_case("FAILURE") {
                Self::FAILURE
            } else if word.eq_ignore_ascii_case("DELAY") {
                Self::DELAY
            } else {
                return None;
            };
            set = set.union(flag);
        }
        Some(set)
    }
}

impl fmt::Debug for Notify {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Notify({self})")
    }
}

impl fmt::Display for Notify {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_never() {
            return f.write_str("NEVER");
        }
        let names = [
            (Self::SUCCESS, "SUCCESS"),
            (Self::FAILURE, "FAILURE"),
            (Self::DELAY, "DELAY"),
        ];
        let mut first = true;
        for (flag, name) in names {
            if self.contains(flag) {
                if !first {
                    f.write_str(",")?;
                }
                f.write_str(name)?;
                first = false;
            }
        }
        Ok(())
    }
}

/// `ORCPT=addr-type;xtext` of RCPT TO (RFC 3461 §4.2): the original recipient, decoded.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct OriginalRecipient {
    /// The address type, usually `rfc822` (or `utf-8`, RFC 6533).
    pub addr_type: String,
    /// The address, xtext-decoded.
    pub address: String,
}

/// The parameters of `MAIL FROM:`. Parsing checks syntax only; whether a parameter is
/// allowed (its extension advertised) is the session's decision.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct MailParameters {
    /// `SIZE=n` (RFC 1870). A number too large for `u64` reads as `u64::MAX`.
    pub size: Option<u64>,
    /// `BODY=` (RFC 6152, RFC 3030).
    pub body: Option<Body>,
    /// `SMTPUTF8` (RFC 6531).
    pub smtputf8: bool,
    /// `RET=` (RFC 3461).
    pub ret: Option<Ret>,
    /// `ENVID=` (RFC 3461), xtext-decoded.
    pub envid: Option<String>,
    /// `AUTH=` (RFC 4954 §5): `Some(Null)` for `AUTH=<>`.
    pub auth: Option<ReversePath>,
    /// `REQUIRETLS` (RFC 8689).
    pub requiretls: bool,
    /// `MT-PRIORITY=` (RFC 6710 §3), -9 (lowest) to 9 (highest); 0 is the priority of
    /// mail without the parameter. What the client asked for: whether it is honoured is
    /// the receiving server's policy (RFC 6710 §5 lets a server lower it).
    pub mt_priority: Option<i8>,
}

/// The parameters of `RCPT TO:`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct RcptParameters {
    /// `NOTIFY=` (RFC 3461).
    pub notify: Option<Notify>,
    /// `ORCPT=` (RFC 3461).
    pub orcpt: Option<OriginalRecipient>,
}

/// Longest ENVID (RFC 3461 §4.4: 100 characters).
const MAX_ENVID: usize = 100;
/// Longest ORCPT address (RFC 3461 §4.2: 500 characters).
const MAX_ORCPT: usize = 500;

/// Splits `KEYWORD[=value]` parameters separated by spaces and feeds them to `apply`.
fn for_each_param(
    args: &str,
    mut apply: impl FnMut(&str, Option<&str>) -> Result<(), Error>,
) -> Result<(), Error> {
    for param in split_bytes(args, b' ').filter(|p| !p.is_empty()) {
        let (keyword, value) = match param.bytes().position(|b| b == b'=') {
            Some(i) => (&param[..i], Some(&param[i + 1..])),
            None => (param, None),
        };
        let valid_keyword = keyword
            .bytes()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
            && keyword
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-');
        if !valid_keyword {
            return Err(Error::InvalidParameter(truncate(keyword)));
        }
        if let Some(v) = value
            && (v.is_empty() || v.bytes().any(|c| c == b'=' || c < 33 || c == 127))
        {
            return Err(Error::InvalidParameter(
                truncate(keyword).to_ascii_uppercase(),
            ));
        }
        apply(keyword, value)?;
    }
    Ok(())
}

/// An `MT-PRIORITY` value (RFC 6710 §3: `priority-value = ["+" / "-"] DIGIT`): one
/// digit with an optional sign, so -9 to 9. `None` for anything else (`10`, `05`, `x`).
fn parse_priority(value: &str) -> Option<i8> {
    let (negative, digit) = match value.as_bytes() {
        [b'-', d] => (true, *d),
        [b'+', d] | [d] => (false, *d),
        _ => return None,
    };
    if !digit.is_ascii_digit() {
        return None;
    }
    let magnitude = (digit - b'0') as i8;
    Some(if negative { -magnitude } else { magnitude })
}

/// `str::split` on an ASCII byte, without the char-searcher machinery.
pub(crate) fn split_bytes(s: &str, sep: u8) -> impl Iterator<Item = &str> {
    let mut rest = Some(s);
    std::iter::from_fn(move || {
        let r = rest?;
        match r.bytes().position(|b| b == sep) {
            Some(i) => {
                rest = r.get(i + 1..);
                r.get(..i)
            }
            None => {
                rest = None;
                Some(r)
            }
        }
    })
}

fn truncate(s: &str) -> String {
    s.chars().take(32).collect()
}

fn set_once<T>(slot: &mut Option<T>, value: T, name: &str) -> Result<(), Error> {
    if slot.is_some() {
        return Err(Error::DuplicateParameter(name.to_owned()));
    }
    *slot = Some(value);
    Ok(())
}

fn set_flag(slot: &mut bool, value: Option<&str>, name: &str) -> Result<(), Error> {
    if value.is_some() {
        return Err(Error::InvalidParameter(name.to_owned()));
    }
    if *slot {
        return Err(Error::DuplicateParameter(name.to_owned()));
    }
    *slot = true;
    Ok(())
}

impl MailParameters {
    /// Parses the text after the reverse-path.
    ///
    /// ```
    /// use smtp_proto::{Body, MailParameters};
    /// let params = MailParameters::parse("SIZE=1000 BODY=8BITMIME ENVID=a+2Bb").unwrap();
    /// assert_eq!(params.size, Some(1000));
    /// assert_eq!(params.body, Some(Body::EightBitMime));
    /// assert_eq!(params.envid.as_deref(), Some("a+b"));
    /// assert!(MailParameters::parse("FOO=BAR").is_err());
    /// ```
    pub fn parse(args: &str) -> Result<Self, Error> {
        let mut p = Self::default();
        if args.is_empty() {
            return Ok(p);
        }
        for_each_param(args, |keyword, value| {
            let invalid = || Error::InvalidParameter(truncate(keyword).to_ascii_uppercase());
            if keyword.eq_ignore_ascii_case("SIZE") {
                let v = value.filter(|v| v.bytes().all(|c| c.is_ascii_digit()));
                let v = v.ok_or_else(invalid)?;
                let size = v.bytes().fold(0u64, |acc, c| {
                    acc.saturating_mul(10).saturating_add(u64::from(c - b'0'))
                });
                set_once(&mut p.size, size, "SIZE")
            } else if keyword.eq_ignore_ascii_case("BODY") {
                let body = match value.ok_or_else(invalid)? {
                    v if v.eq_ignore_ascii_case("7BIT") => Body::SevenBit,
                    v if v.eq_ignore_ascii_case("8BITMIME") => Body::EightBitMime,
                    v if v.eq_ignore_ascii_case("BINARYMIME") => Body::BinaryMime,
                    _ => return Err(invalid()),
                };
                set_once(&mut p.body, body, "BODY")
            } else if keyword.eq_ignore_ascii_case("SMTPUTF8") {
                set_flag(&mut p.smtputf8, value, "SMTPUTF8")
            } else if keyword.eq_ignore_ascii_case("REQUIRETLS") {
                set_flag(&mut p.requiretls, value, "REQUIRETLS")
            } else if keyword.eq_ignore_ascii_case("RET") {
                let ret = match value.ok_or_else(invalid)? {
                    v if v.eq_ignore_ascii_case("FULL") => Ret::Full,
                    v if v.eq_ignore_ascii_case("HDRS") => Ret::Headers,
                    _ => return Err(invalid()),
                };
                set_once(&mut p.ret, ret, "RET")
            } else if keyword.eq_ignore_ascii_case("ENVID") {
                let envid = xtext_decode(value.ok_or_else(invalid)?).ok_or_else(invalid)?;
                if envid.len() > MAX_ENVID {
                    return Err(invalid());
                }
                set_once(&mut p.envid, envid, "ENVID")
            } else if keyword.eq_ignore_ascii_case("AUTH") {
                let decoded = xtext_decode(value.ok_or_else(invalid)?).ok_or_else(invalid)?;
                let auth = if decoded == "<>" {
                    ReversePath::Null
                } else {
                    ReversePath::Mailbox(Mailbox::parse(&decoded).map_err(|_| invalid())?)
                };
                set_once(&mut p.auth, auth, "AUTH")
            } else if keyword.eq_ignore_ascii_case("MT-PRIORITY") {
                let priority = value.and_then(parse_priority).ok_or_else(invalid)?;
                set_once(&mut p.mt_priority, priority, "MT-PRIORITY")
            } else {
                Err(Error::UnknownParameter(
                    truncate(keyword).to_ascii_uppercase(),
                ))
            }
        })?;
        Ok(p)
    }

    /// Whether no parameter is set.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Appends ` KEY=value` for every parameter set.
    pub fn encode(&self, out: &mut Vec<u8>) {
        if let Some(size) = self.size {
            out.extend_from_slice(b" SIZE=");
            push_decimal(out, size);
        }
        if let Some(body) = self.body {
            out.extend_from_slice(b" BODY=");
            out.extend_from_slice(body.as_str().as_bytes());
        }
        if self.smtputf8 {
            out.extend_from_slice(b" SMTPUTF8");
        }
        if self.requiretls {
            out.extend_from_slice(b" REQUIRETLS");
        }
        match self.ret {
            Some(Ret::Full) => out.extend_from_slice(b" RET=FULL"),
            Some(Ret::Headers) => out.extend_from_slice(b" RET=HDRS"),
            None => {}
        }
        if let Some(envid) = &self.envid {
            out.extend_from_slice(b" ENVID=");
            xtext_encode(envid, out);
        }
        if let Some(auth) = &self.auth {
            out.extend_from_slice(b" AUTH=");
            match auth {
                ReversePath::Null => out.extend_from_slice(b"<>"),
                ReversePath::Mailbox(m) => xtext_encode(m.as_str(), out),
            }
        }
        if let Some(priority) = self.mt_priority {
            out.extend_from_slice(b" MT-PRIORITY=");
            out.extend_from_slice(priority.to_string().as_bytes());
        }
    }
}

impl RcptParameters {
    /// Parses the text after the forward-path.
    ///
    /// ```
    /// use smtp_proto::{Notify, RcptParameters};
    /// let params = RcptParameters::parse("NOTIFY=FAILURE,DELAY ORCPT=rfc822;a+40b").unwrap();
    /// assert_eq!(params.notify, Some(Notify::FAILURE.union(Notify::DELAY)));
    /// assert_eq!(params.orcpt.unwrap().address, "a@b");
    /// assert!(RcptParameters::parse("NOTIFY=NEVER,SUCCESS").is_err());
    /// ```
    pub fn parse(args: &str) -> Result<Self, Error> {
        let mut p = Self::default();
        if args.is_empty() {
            return Ok(p);
        }
        for_each_param(args, |keyword, value| {
            let invalid = || Error::InvalidParameter(truncate(keyword).to_ascii_uppercase());
            if keyword.eq_ignore_ascii_case("NOTIFY") {
                let notify = value.and_then(Notify::parse).ok_or_else(invalid)?;
                set_once(&mut p.notify, notify, "NOTIFY")
            } else if keyword.eq_ignore_ascii_case("ORCPT") {
                let (addr_type, xtext) =
                    value.and_then(|v| v.split_once(';')).ok_or_else(invalid)?;
                let type_ok = !addr_type.is_empty()
                    && addr_type
                        .bytes()
                        .all(|c| c.is_ascii_alphanumeric() || c == b'-');
                let address = xtext_decode(xtext).filter(|a| !a.is_empty() && a.len() <= MAX_ORCPT);
                match (type_ok, address) {
                    (true, Some(address)) => {
                        let orcpt = OriginalRecipient {
                            addr_type: addr_type.to_owned(),
                            address,
                        };
                        set_once(&mut p.orcpt, orcpt, "ORCPT")
                    }
                    _ => Err(invalid()),
                }
            } else {
                Err(Error::UnknownParameter(
                    truncate(keyword).to_ascii_uppercase(),
                ))
            }
        })?;
        Ok(p)
    }

    /// Whether no parameter is set.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Appends ` KEY=value` for every parameter set.
    pub fn encode(&self, out: &mut Vec<u8>) {
        if let Some(notify) = self.notify {
            out.extend_from_slice(b" NOTIFY=");
            out.extend_from_slice(notify.to_string().as_bytes());
        }
        if let Some(orcpt) = &self.orcpt {
            out.extend_from_slice(b" ORCPT=");
            out.extend_from_slice(orcpt.addr_type.as_bytes());
            out.push(b';');
            xtext_encode(&orcpt.address, out);
        }
    }
}

/// Decodes xtext (RFC 3461 §4): `+XX` hex escapes (upper-case hex digits) for any byte
/// outside `!`..`~` or equal to `+` or `=`. `None` when malformed or not UTF-8.
///
/// ```
/// assert_eq!(smtp_proto::xtext_decode("a+2Bb+3Dc").as_deref(), Some("a+b=c"));
/// assert_eq!(smtp_proto::xtext_decode("a+2"), None);
/// ```
pub fn xtext_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    if !b.contains(&b'+') {
        return (!b.iter().any(|&c| !(33..=126).contains(&c) || c == b'=')).then(|| s.to_owned());
    }
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => {
                let hi = hex_upper(*b.get(i + 1)?)?;
                let lo = hex_upper(*b.get(i + 2)?)?;
                out.push(hi << 4 | lo);
                i += 3;
            }
            b'=' => return None,
            c @ 33..=126 => {
                out.push(c);
                i += 1;
            }
            _ => return None,
        }
    }
    String::from_utf8(out).ok()
}

/// Encodes `s` as xtext (RFC 3461 §4) onto `out`.
pub fn xtext_encode(s: &str, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &c in s.as_bytes() {
        if (33..=126).contains(&c) && c != b'+' && c != b'=' {
            out.push(c);
        } else {
            out.extend_from_slice(&[b'+', HEX[usize::from(c >> 4)], HEX[usize::from(c & 15)]]);
        }
    }
}

fn hex_upper(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mail_parameters_table() {
        let p = MailParameters::parse(
            "SIZE=12345 BODY=BINARYMIME SMTPUTF8 RET=HDRS ENVID=QQ314159 AUTH=e+3Dmc2@example.com REQUIRETLS MT-PRIORITY=-3",
        )
        .unwrap();
        assert_eq!(p.size, Some(12345));
        assert_eq!(p.body, Some(Body::BinaryMime));
        assert!(p.smtputf8 && p.requiretls);
        assert_eq!(p.ret, Some(Ret::Headers));
        assert_eq!(p.envid.as_deref(), Some("QQ314159"));
        assert_eq!(p.auth.as_ref().unwrap().to_string(), "<e=mc2@example.com>");
        assert_eq!(p.mt_priority, Some(-3));
        assert_eq!(
            MailParameters::parse("AUTH=<>").unwrap().auth,
            Some(ReversePath::Null)
        );
        assert_eq!(
            MailParameters::parse("size=10 body=8bitmime").unwrap().size,
            Some(10)
        );
        assert_eq!(
            MailParameters::parse("SIZE=99999999999999999999999")
                .unwrap()
                .size,
            Some(u64::MAX)
        );
    }

    #[test]
    fn mail_parameter_errors() {
        for bad in [
            "BODY",
            "BODY=",
            "SIZE",
            "SIZE=",
            "SIZE=abc",
            "SIZE=-1",
            "RET",
            "ENVID",
            "BODY=FOO",
            "SMTPUTF8=yes",
            "MT-PRIORITY=10",
            "MT-PRIORITY=-10",
            "MT-PRIORITY=05",
            "MT-PRIORITY=+",
            "MT-PRIORITY=-",
            "MT-PRIORITY=x",
            "MT-PRIORITY=1.5",
            "MT-PRIORITY",
            "MT-PRIORITY=",
            "MT-PRIORITY=1 MT-PRIORITY=2",
            "RET=ALL",
            "ENVID=a+2",
            "SIZE=1 SIZE=2",
            "=x",
        ] {
            let err = MailParameters::parse(bad).unwrap_err();
            assert!(
                matches!(
                    err,
                    Error::InvalidParameter(_) | Error::DuplicateParameter(_)
                ),
                "{bad}: {err:?}"
            );
        }
        assert_eq!(
            MailParameters::parse("FOO=BAR"),
            Err(Error::UnknownParameter("FOO".into()))
        );
        assert_eq!(
            MailParameters::parse("XYZ"),
            Err(Error::UnknownParameter("XYZ".into()))
        );
    }

    #[test]
    fn mt_priority_values() {
        for (text, value) in [
            ("MT-PRIORITY=0", 0),
            ("MT-PRIORITY=9", 9),
            ("MT-PRIORITY=-9", -9),
            ("MT-PRIORITY=+6", 6),
            ("MT-PRIORITY=-0", 0),
            ("mt-priority=3", 3),
        ] {
            assert_eq!(
                MailParameters::parse(text).unwrap().mt_priority,
                Some(value),
                "{text}"
            );
        }
        for p in -9..=9 {
            let params = MailParameters {
                mt_priority: Some(p),
                ..MailParameters::default()
            };
            let mut out = Vec::new();
            params.encode(&mut out);
            let text = String::from_utf8(out).unwrap();
            assert_eq!(MailParameters::parse(text.trim_start()).unwrap(), params);
        }
        assert_eq!(
            MailParameters::parse("MT-PRIORITY=12"),
            Err(Error::InvalidParameter("MT-PRIORITY".into()))
        );
        assert_eq!(
            MailParameters::parse("MT-PRIORITY=1 MT-PRIORITY=2"),
            Err(Error::DuplicateParameter("MT-PRIORITY".into()))
        );
    }

    /// The replies of a session (extension on or off) to EHLO and then `mail`.
    fn mail_replies(mt_priority: bool, mail: &str) -> (String, Option<MailParameters>) {
        use std::sync::Arc;

        use crate::{Event, Extensions, ServerConfig, ServerSession};
        let config = ServerConfig {
            extensions: Extensions {
                mt_priority,
                ..Extensions::default()
            },
            ..ServerConfig::default()
        };
        let mut session = ServerSession::new(Arc::new(config));
        let mut accepted = None;
        session.poll_event();
        session.accept();
        session.receive(format!("EHLO c.test\r\n{mail}\r\n").as_bytes());
        while let Some(event) = session.poll_event() {
            if let Event::Mail { params, .. } = &event {
                accepted = Some(params.clone());
            }
            session.accept();
        }
        let output = String::from_utf8(session.pending_output().to_vec()).unwrap();
        (output, accepted)
    }

    #[test]
    fn mt_priority_in_a_session() {
        let (output, params) = mail_replies(true, "MAIL FROM:<a@b.test> MT-PRIORITY=6");
        assert!(output.contains("250 MT-PRIORITY\r\n"), "{output}");
        assert!(output.ends_with("250 2.1.0 Sender OK\r\n"), "{output}");
        assert_eq!(params.unwrap().mt_priority, Some(6));
        for bad in ["MT-PRIORITY=10", "MT-PRIORITY=high", "MT-PRIORITY"] {
            let (output, params) = mail_replies(true, &format!("MAIL FROM:<a@b.test> {bad}"));
            assert!(
                output.ends_with("\r\n501 5.5.4 Invalid value for parameter MT-PRIORITY\r\n"),
                "{bad}: {output}"
            );
            assert_eq!(params, None);
        }
        // Not offered: the parameter is unknown (RFC 5321 §4.1.1.11).
        let (output, params) = mail_replies(false, "MAIL FROM:<a@b.test> MT-PRIORITY=6");
        assert!(!output.contains("250 MT-PRIORITY"), "{output}");
        assert!(
            output.ends_with("\r\n555 5.5.4 Unsupported parameter MT-PRIORITY\r\n"),
            "{output}"
        );
        assert_eq!(params, None);
    }

    #[test]
    fn rcpt_parameter_errors() {
        for bad in [
            "NOTIFY=NEVER,SUCCESS",
            "NOTIFY=",
            "NOTIFY=CHIMICHANGA",
            "ORCPT=",
            "ORCPT=rfc822;",
            "ORCPT=;x@y",
            "NOTIFY",
        ] {
            assert!(RcptParameters::parse(bad).is_err(), "{bad}");
        }
        assert!(RcptParameters::parse("FOO").is_err());
    }

    #[test]
    fn encode_round_trip() {
        for args in [
            "SIZE=12 BODY=8BITMIME SMTPUTF8 REQUIRETLS RET=FULL ENVID=a+2Bb AUTH=a+3Db@c.test MT-PRIORITY=4",
            "AUTH=<>",
        ] {
            let p = MailParameters::parse(args).unwrap();
            let mut out = Vec::new();
            p.encode(&mut out);
            assert_eq!(String::from_utf8(out).unwrap().trim_start(), args);
        }
        let p = RcptParameters::parse("NOTIFY=SUCCESS,DELAY ORCPT=rfc822;a+2Bb@x").unwrap();
        let mut out = Vec::new();
        p.encode(&mut out);
        assert_eq!(out, b" NOTIFY=SUCCESS,DELAY ORCPT=rfc822;a+2Bb@x");
    }

    #[test]
    fn xtext() {
        let mut out = Vec::new();
        xtext_encode("a b+c=d\u{e9}", &mut out);
        assert_eq!(out, b"a+20b+2Bc+3Dd+C3+A9");
        assert_eq!(
            xtext_decode(std::str::from_utf8(&out).unwrap()).as_deref(),
            Some("a b+c=d\u{e9}")
        );
        for bad in ["+2", "+zz", "+2b", "a=b", "a b"] {
            assert_eq!(xtext_decode(bad), None, "{bad}");
        }
    }
}
