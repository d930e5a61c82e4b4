//! Verdicts as plain values, and the `Authentication-Results` header (RFC 8601) made
//! from them.
//!
//! Nothing here depends on mail-auth: the checks convert its outputs at the edge, so
//! callers (and the filter layers) only ever see these types.

#[cfg(feature = "prometheus")]
use prometheus_client::{
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{MetricType, counter::ConstCounter},
};
use std::fmt::{self, Write};
use std::net::IpAddr;

/// The result of an SPF check (RFC 7208 §2.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SpfResult {
    /// The client is authorized.
    Pass,
    /// The client is not authorized.
    Fail,
    /// Probably not authorized (`~all`).
    SoftFail,
    /// The domain makes no assertion (`?all`).
    Neutral,
    /// No SPF record, or no domain to check.
    None,
    /// A transient (DNS) error: try again later.
    TempError,
    /// The record could not be interpreted.
    PermError,
}

impl SpfResult {
    /// The keyword used in `Authentication-Results` and `Received-SPF`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pass => "pass",
            Self::Fail => "fail",
            Self::SoftFail => "softfail",
            Self::Neutral => "neutral",
            Self::None => "none",
            Self::TempError => "temperror",
            Self::PermError => "permerror",
        }
    }
}

impl fmt::Display for SpfResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One SPF identity checked: HELO or MAIL FROM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpfVerdict {
    /// The result.
    pub result: SpfResult,
    /// The identity checked: `user@domain`, or `postmaster@<helo>` for HELO and the null
    /// sender.
    pub identity: String,
    /// The explanation a failing domain published (`exp=`), if any.
    pub explanation: Option<String>,
}

impl SpfVerdict {
    /// The domain part of the identity.
    pub fn domain(&self) -> &str {
        self.identity
            .rsplit_once('@')
            .map_or(self.identity.as_str(), |(_, d)| d)
    }
}

/// SPF for one transaction: the HELO identity and the MAIL FROM identity (RFC 7208
/// §2.3, §2.4). For the null sender, `mail_from` is the HELO verdict under the
/// identity `postmaster@<helo>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpfCheck {
    /// The client's address.
    pub ip: IpAddr,
    /// The HELO name checked.
    pub helo_name: String,
    /// The HELO identity's verdict; `None` when the HELO name is an address literal or
    /// not a domain.
    pub helo: Option<SpfVerdict>,
    /// The MAIL FROM identity's verdict; the one SPF policy and DMARC use.
    pub mail_from: SpfVerdict,
    /// Whether the reverse path was empty (`MAIL FROM:<>`).
    pub null_sender: bool,
}

/// The result of one DKIM signature check (RFC 6376 §6.1, RFC 8601 §2.7.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DkimResult {
    /// The signature verified.
    Pass,
    /// The signature did not verify (bad signature or body hash).
    Fail,
    /// The signature could not be processed for a reason that is not an error of the
    /// signer, e.g. an unsupported algorithm.
    Neutral,
    /// A transient (DNS) error.
    TempError,
    /// The signature or key record is unusable.
    PermError,
    /// The message is not signed.
    None,
}

impl DkimResult {
    /// The keyword used in `Authentication-Results`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pass => "pass",
            Self::Fail => "fail",
            Self::Neutral => "neutral",
            Self::TempError => "temperror",
            Self::PermError => "permerror",
            Self::None => "none",
        }
    }
}

impl fmt::Display for DkimResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One DKIM signature and its result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DkimVerdict {
    /// The result.
    pub result: DkimResult,
    /// The signing domain (`d=`), when the signature could be parsed.
    pub domain: Option<String>,
    /// The selector (`s=`).
    pub selector: Option<String>,
    /// The algorithm (`rsa-sha256`, `ed25519-sha256`, ...).
    pub algorithm: Option<String>,
    /// The first 8 characters of the signature (`b=`), which tell signatures apart
    /// (RFC 6008).
    pub b_prefix: Option<String>,
    /// Why it did not pass, for people.
    pub reason: Option<String>,
    /// Whether it passed only after correcting mail-auth 0.13's relaxed body
    /// canonicalization of trailing whitespace-only lines (see [`crate::verify`]).
    pub corrected_relaxed_body: bool,
}

/// The ARC chain's state (RFC 8617 §4.4, §5.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ArcResult {
    /// A valid chain.
    Pass,
    /// A broken chain.
    Fail,
    /// No ARC headers.
    None,
}

impl ArcResult {
    /// The keyword used in `Authentication-Results` and `cv=`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pass => "pass",
            Self::Fail => "fail",
            Self::None => "none",
        }
    }
}

/// ARC validation of a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArcVerdict {
    /// The chain's state.
    pub result: ArcResult,
    /// How many ARC sets the message carries.
    pub sets: u32,
    /// Why it failed, for people.
    pub reason: Option<String>,
    /// Whether it failed only for a temporary DNS error (a key that could not be
    /// fetched): retrying later may give another verdict.
    pub temporary: bool,
}

/// A DMARC result (RFC 7489 §11.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DmarcResult {
    /// An aligned SPF or DKIM pass.
    Pass,
    /// The domain has a policy and nothing aligned passed.
    Fail,
    /// A DNS error prevented a verdict.
    TempError,
    /// The policy record could not be used.
    PermError,
    /// No policy (or no single author domain).
    None,
}

impl DmarcResult {
    /// The keyword used in `Authentication-Results`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pass => "pass",
            Self::Fail => "fail",
            Self::TempError => "temperror",
            Self::PermError => "permerror",
            Self::None => "none",
        }
    }
}

/// What a domain asks receivers to do with mail that fails DMARC.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DmarcPolicy {
    /// Deliver as usual (`p=none`, or no policy).
    None,
    /// Treat as suspicious (`p=quarantine`).
    Quarantine,
    /// Reject (`p=reject`).
    Reject,
}

impl DmarcPolicy {
    /// The keyword (`none`, `quarantine`, `reject`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Quarantine => "quarantine",
            Self::Reject => "reject",
        }
    }

    /// One step less strict: how `pct` sampling (RFC 7489 §6.6.4) and `t=y` demote.
    pub fn demoted(self) -> Self {
        match self {
            Self::Reject => Self::Quarantine,
            Self::Quarantine | Self::None => Self::None,
        }
    }
}

/// DMARC evaluation of a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DmarcVerdict {
    /// The result.
    pub result: DmarcResult,
    /// The RFC 5322.From domain evaluated (empty when there was none).
    pub header_from: String,
    /// The published policy that applies (`p`, or `sp` for a subdomain).
    pub published_policy: DmarcPolicy,
    /// The policy to apply to this message after `pct` sampling: only meaningful when
    /// `result` is `Fail`.
    pub policy: DmarcPolicy,
    /// The `pct` tag (100 when absent).
    pub pct: u8,
    /// Whether an SPF pass aligned with the From domain.
    pub spf_aligned: bool,
    /// Whether a DKIM pass aligned with the From domain.
    pub dkim_aligned: bool,
}

impl DmarcVerdict {
    /// No DMARC evaluation (no From domain, or no record).
    pub fn none(header_from: impl Into<String>) -> Self {
        Self {
            result: DmarcResult::None,
            header_from: header_from.into(),
            published_policy: DmarcPolicy::None,
            policy: DmarcPolicy::None,
            pct: 100,
            spf_aligned: false,
            dkim_aligned: false,
        }
    }
}

/// Everything checked for one message; renders as an `Authentication-Results` header.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuthReport {
    /// SPF, when checked.
    pub spf: Option<SpfCheck>,
    /// DKIM signatures, when checked (empty: not signed).
    pub dkim: Option<Vec<DkimVerdict>>,
    /// ARC, when checked.
    pub arc: Option<ArcVerdict>,
    /// DMARC, when checked.
    pub dmarc: Option<DmarcVerdict>,
}

impl AuthReport {
    /// The value of an `Authentication-Results` header field (RFC 8601 §2.2) naming
    /// `authserv_id` (our host name), folded one method per line.
    ///
    /// ```
    /// use auth_checks::{AuthReport, DmarcVerdict};
    /// let report = AuthReport { dmarc: Some(DmarcVerdict::none("example.org")), ..Default::default() };
    /// assert_eq!(
    ///     report.header_value("mx.example.net"),
    ///     "mx.example.net;\r\n\tdmarc=none header.from=example.org"
    /// );
    /// assert_eq!(AuthReport::default().header_value("mx.example.net"), "mx.example.net; none");
    /// ```
    pub fn header_value(&self, authserv_id: &str) -> String {
        let mut out = String::with_capacity(256);
        out.push_str(authserv_id);
        let start = out.len();
        if let Some(dkim) = &self.dkim {
            if dkim.is_empty() {
                out.push_str(";\r\n\tdkim=none");
            }
            for v in dkim {
                let _ = write!(out, ";\r\n\tdkim={}", v.result.as_str());
                push_reason(&mut out, v.reason.as_deref());
                if let Some(d) = &v.domain {
                    let _ = write!(out, " header.d={}", pvalue(d));
                }
                if let Some(s) = &v.selector {
                    let _ = write!(out, " header.s={}", pvalue(s));
                }
                if let Some(a) = &v.algorithm {
                    let _ = write!(out, " header.a={}", pvalue(a));
                }
                if let Some(b) = &v.b_prefix {
                    let _ = write!(out, " header.b={}", pvalue(b));
                }
            }
        }
        if let Some(spf) = &self.spf {
            let v = &spf.mail_from;
            let _ = write!(out, ";\r\n\tspf={}", v.result.as_str());
            push_reason(&mut out, v.explanation.as_deref());
            if spf.null_sender {
                // RFC 7208 §2.4: with a null reverse-path the identity checked is the
                // HELO name, and `<>` is no value of `smtp.mailfrom` (RFC 8601 §2.7.2).
                let _ = write!(out, " smtp.helo={}", pvalue(&spf.helo_name));
            } else {
                let _ = write!(out, " smtp.mailfrom={}", pvalue(&v.identity));
            }
        }
        if let Some(dmarc) = &self.dmarc {
            let _ = write!(out, ";\r\n\tdmarc={}", dmarc.result.as_str());
            if !dmarc.header_from.is_empty() {
                let _ = write!(out, " header.from={}", pvalue(&dmarc.header_from));
            }
            if dmarc.result != DmarcResult::None {
                let _ = write!(out, " policy.dmarc={}", dmarc.published_policy.as_str());
            }
        }
        if let Some(arc) = &self.arc {
            let _ = write!(out, ";\r\n\tarc={}", arc.result.as_str());
            push_reason(&mut out, arc.reason.as_deref());
            if let Some(spf) = &self.spf {
                let _ = write!(out, " smtp.remote-ip={}", pvalue(&spf.ip.to_string()));
            }
        }
        if out.len() == start {
            out.push_str("; none");
        }
        out
    }
}

/// A `(comment)` after a result, with characters that would end it dropped.
fn push_reason(out: &mut String, reason: Option<&str>) {
    if let Some(reason) = reason.filter(|r| !r.is_empty()) {
        out.push_str(" (");
        out.extend(
            reason
                .chars()
                .filter(|c| !matches!(c, '(' | ')' | '\\' | '\r' | '\n'))
                .take(120),
        );
        out.push(')');
    }
}

/// A property value: a token as is, anything else as a quoted string (RFC 8601 §2.2,
/// RFC 2045 `value`). Control characters are dropped.
pub(crate) fn pvalue(value: &str) -> String {
    let token = !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b"()<>,;:\\\"/[]?=".contains(&b) || b == b'@');
    if token {
        return value.to_owned();
    }
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars().filter(|c| !c.is_control()) {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_and_quoted_values() {
        assert_eq!(pvalue("user@example.org"), "user@example.org");
        assert_eq!(pvalue("a b"), "\"a b\"");
        assert_eq!(pvalue("we\"ird"), "\"we\\\"ird\"");
        assert_eq!(pvalue("x;y"), "\"x;y\"");
        assert_eq!(pvalue(""), "\"\"");
    }

    #[test]
    fn full_header() {
        let ip: IpAddr = "192.0.2.1".parse().unwrap_or(IpAddr::from([0, 0, 0, 0]));
        let report = AuthReport {
            spf: Some(SpfCheck {
                ip,
                helo_name: "mail.example.org".into(),
                helo: None,
                mail_from: SpfVerdict {
                    result: SpfResult::Pass,
                    identity: "alice@example.org".into(),
                    explanation: None,
                },
                null_sender: false,
            }),
            dkim: Some(vec![DkimVerdict {
                result: DkimResult::Fail,
                domain: Some("example.org".into()),
                selector: Some("s1".into()),
                algorithm: Some("rsa-sha256".into()),
                b_prefix: Some("abcdefgh".into()),
                reason: Some("body hash mismatch".into()),
                corrected_relaxed_body: false,
            }]),
            arc: Some(ArcVerdict {
                result: ArcResult::None,
                sets: 0,
                reason: None,
                temporary: false,
            }),
            dmarc: Some(DmarcVerdict {
                result: DmarcResult::Pass,
                spf_aligned: true,
                ..DmarcVerdict::none("example.org")
            }),
        };
        assert_eq!(
            report.header_value("mx.example.net"),
            "mx.example.net;\r\n\tdkim=fail (body hash mismatch) header.d=example.org header.s=s1 \
             header.a=rsa-sha256 header.b=abcdefgh;\r\n\tspf=pass smtp.mailfrom=alice@example.org;\
             \r\n\tdmarc=pass header.from=example.org policy.dmarc=none;\r\n\tarc=none \
             smtp.remote-ip=192.0.2.1"
        );
    }
}

#[cfg(feature = "prometheus")]
impl prometheus_client::collector::Collector for AuthStats {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        let mut family = encoder.encode_descriptor(
            "auth_results",
            "Sender-authentication verdicts of checked messages, by method and result (DKIM: per signature, none when unsigned).",
            None,
            MetricType::Counter,
        )?;
        for ((method, result), n) in self.snapshot() {
            let labels = [("method", method), ("result", result)];
            ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

/// Counts of verdicts over many messages, for metrics: how many messages got each
/// result of each method (`spf`, `dkim`, `arc`, `dmarc`). DKIM counts each signature,
/// and `none` for an unsigned message. With the `prometheus` feature it is a
/// prometheus-client `Collector` of `auth_results_total{method, result}`.
///
/// ```
/// use auth_checks::{AuthReport, AuthStats};
/// let stats = AuthStats::default();
/// stats.record(&AuthReport { dkim: Some(Vec::new()), ..AuthReport::default() });
/// # #[cfg(feature = "prometheus")] {
/// let mut registry = prometheus_client::registry::Registry::default();
/// registry.register_collector(Box::new(stats));
/// let mut text = String::new();
/// prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
/// assert!(text.contains("auth_results_total{method=\"dkim\",result=\"none\"} 1\n"));
/// # }
/// ```
#[derive(Debug, Default)]
pub struct AuthStats {
    counts: std::sync::Mutex<std::collections::BTreeMap<(&'static str, &'static str), u64>>,
}

impl AuthStats {
    /// Counts the verdicts of one message.
    pub fn record(&self, report: &AuthReport) {
        let Ok(mut counts) = self.counts.lock() else {
            return;
        };
        let mut add = |method, result| *counts.entry((method, result)).or_insert(0) += 1;
        if let Some(spf) = &report.spf {
            add("spf", spf.mail_from.result.as_str());
        }
        match report.dkim.as_deref() {
            Some([]) => add("dkim", "none"),
            Some(signatures) => signatures
                .iter()
                .for_each(|s| add("dkim", s.result.as_str())),
            None => {}
        }
        if let Some(arc) = &report.arc {
            add("arc", arc.result.as_str());
        }
        if let Some(dmarc) = &report.dmarc {
            add("dmarc", dmarc.result.as_str());
        }
    }

    /// `((method, result), count)` for every pair seen so far, in order.
    #[cfg_attr(not(feature = "prometheus"), allow(dead_code))]
    fn snapshot(&self) -> Vec<((&'static str, &'static str), u64)> {
        self.counts
            .lock()
            .map(|c| c.iter().map(|(k, v)| (*k, *v)).collect())
            .unwrap_or_default()
    }
}
