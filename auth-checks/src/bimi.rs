//! BIMI on receipt (Brand Indicators for Message Identification,
//! draft-brand-indicators-for-message-identification-10): after a DMARC pass at an
//! enforcing policy, the author domain's BIMI Assertion Record tells where its logo is,
//! and we pass that on to the mail client in a `BIMI-Location` header field.
//!
//! ```text
//!  DMARC pass ─▶ policy enforcing? ─▶ selector ─▶ <s>._bimi.<author domain> TXT
//!  (AuthReport)  (p, sp, pct of the   (BIMI-Selector   │ nothing there
//!                 author and org.      if DKIM covers  ▼
//!                 domain records)      it; `default`) <s>._bimi.<organizational domain>
//!                                                      │
//!           BIMI-Location: v=BIMI1; l=...; a=...  ◀────┘ one valid record
//!           Authentication-Results: ...; bimi=pass header.d=... header.selector=...
//! ```
//!
//! What we do, and what we leave to others:
//!
//! - §7.1: BIMI needs a DMARC `pass` for the single author address, and a policy that
//!   enforces: `p=quarantine` or `p=reject` for the author domain and its
//!   organizational domain, no `sp=none` in either record, `pct=100` (stricter than the
//!   draft, which asks it of `quarantine` only: a `reject` sampled at less than 100 %
//!   lets part of the forged mail through as `quarantine`, which we count as not
//!   enforcing), and no `t=y` (DMARCbis testing mode). The records are read again with
//!   the checks' resolver (its cache answers what DMARC just asked); the organizational
//!   domain is found by the DMARC tree walk (RFC 9989 §4.10), as mail-auth finds it.
//! - §7.2: the selector is `default`, or the one a `BIMI-Selector` header names when
//!   the message has exactly one and a passing DKIM signature aligned with the author
//!   domain covers it (§5.5); otherwise the header is ignored. The record is looked up
//!   at the author domain, then at the organizational domain. Local-part selectors
//!   (`lps=true`) and the avatar preference (`avp=`) are not implemented: the record is
//!   used as found.
//! - §4.3: the record is parsed strictly ([`BimiRecord`]); `l=` and `a=` must be empty
//!   or a single `https` URI with a fully qualified host; `v=BIMI1; l=; a=;` declines.
//! - We do **not** fetch or validate the SVG indicator (§7.5, §7.6), nor the evidence
//!   document (a Verified Mark Certificate, §7.4). A receiver that shows logos must do
//!   that; we hand the URIs of the record to the mail client, which fetches and checks
//!   them, or does not show them. So `bimi=pass` here means "an enforcing DMARC pass and
//!   a valid record", and `a=` in `BIMI-Location` is the record's, unverified.
//! - §5.6, §7.8: `BIMI-Location`, `BIMI-Indicator` and `BIMI-Logo-Preference` header
//!   fields that arrive with a message are ours to add, never the sender's: the data
//!   layer removes them ([`remove_bimi_headers`]) from every message except those of
//!   `skip_networks` (our own hosts, which may have evaluated BIMI before us), whether
//!   BIMI is on or off, after DKIM has verified the message as it came.
//! - DNS goes through the checks' resolver, negative cache and per-message time
//!   budget: a lookup that fails or does not answer in time is `bimi=temperror` and no
//!   header, never a refusal.

use std::fmt;
use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::RData;
use mail_auth::AuthenticatedMessage;

use crate::results::{AuthReport, DkimResult, DmarcPolicy, DmarcResult, pvalue};
use crate::verify::Verifier;

/// The header fields only the receiving site may add (§5.6): removed from incoming
/// mail.
pub const BIMI_RECEIVER_HEADERS: [&str; 3] =
    ["BIMI-Location", "BIMI-Indicator", "BIMI-Logo-Preference"];

/// The selector used when the message names none (§4.4).
pub const DEFAULT_SELECTOR: &str = "default";

/// Longest URI taken from a record: the `BIMI-Location` field must stay within the
/// line length limits of mail (RFC 5322 §2.1.1).
const MAX_URI: usize = 900;

/// A BIMI Assertion Record (§4.3): where the indicator (`l=`) and the evidence
/// document (`a=`) are.
///
/// Parsing is strict, as the draft asks ("Mail receivers MUST NOT attempt to fix
/// syntactical or capitalization errors"): `v=BIMI1` first, `l=` present, each tag at
/// most once, `l=` and `a=` empty or one `https` URI with a fully qualified host name.
/// Unknown tags (and `lps=`, `avp=`, which we do not implement) are ignored.
///
/// ```
/// use auth_checks::BimiRecord;
/// let record: BimiRecord = "v=BIMI1; l=https://example.org/logo.svg; a=https://example.org/vmc.pem"
///     .parse()
///     .unwrap();
/// assert_eq!(record.location.as_deref(), Some("https://example.org/logo.svg"));
/// assert_eq!(
///     record.location_value().as_deref(),
///     Some("v=BIMI1; l=https://example.org/logo.svg; a=https://example.org/vmc.pem")
/// );
/// assert!("v=BIMI1; l=; a=;".parse::<BimiRecord>().unwrap().is_declination());
/// assert!("v=BIMI1; l=http://example.org/logo.svg".parse::<BimiRecord>().is_err());
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BimiRecord {
    /// `l=`: the indicator's `https` URI; `None` when empty.
    pub location: Option<String>,
    /// `a=`: the evidence document's (a mark certificate's) `https` URI; `None` when
    /// empty or absent.
    pub authority: Option<String>,
}

impl BimiRecord {
    /// Whether the record declines to publish an indicator (`l=` and `a=` both empty,
    /// §4.3.1).
    pub fn is_declination(&self) -> bool {
        self.location.is_none() && self.authority.is_none()
    }

    /// The value of the `BIMI-Location` header field (§5.2) for this record:
    /// `v=BIMI1; l=<location>` and `; a=<authority>` when it has one; `None` when the
    /// record has no location (a declination, or an evidence-only record, which we
    /// cannot use since we do not read evidence documents).
    pub fn location_value(&self) -> Option<String> {
        let location = self.location.as_deref()?;
        let mut tags = vec!["v=BIMI1".to_owned(), format!("l={location}")];
        if let Some(authority) = &self.authority {
            tags.push(format!("a={authority}"));
        }
        let line = tags.join("; ");
        // One line, as the draft shows it, unless that would pass the 998 octets a line
        // may have (RFC 5322 §2.1.1; "BIMI-Location: " is 15): then one tag a line.
        Some(if line.len() + 15 > 998 {
            tags.join(";\r\n\t")
        } else {
            line
        })
    }
}

/// Why a BIMI record was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("BIMI record: {why}")]
pub struct BimiRecordError {
    why: &'static str,
}

impl BimiRecordError {
    /// The reason, for people (`does not start with v=BIMI1`, ...).
    pub fn reason(&self) -> &'static str {
        self.why
    }
}

impl FromStr for BimiRecord {
    type Err = BimiRecordError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let error = |why| BimiRecordError { why };
        if !starts_with_version(text) {
            return Err(error("does not start with v=BIMI1"));
        }
        let segments: Vec<&str> = text.split(';').skip(1).collect();
        let mut seen: Vec<&str> = Vec::new();
        let (mut location, mut authority) = (None, None);
        for (i, segment) in segments.iter().enumerate() {
            let segment = segment.trim_matches(is_wsp);
            if segment.is_empty() {
                // Only a final separator may be followed by nothing (`bimi-sep` at the end).
                if i + 1 == segments.len() {
                    continue;
                }
                return Err(error("an empty tag"));
            }
            let Some((name, value)) = segment.split_once('=') else {
                return Err(error("a tag without '='"));
            };
            let name = name.trim_end_matches(is_wsp);
            if !is_tag_name(name) {
                return Err(error("a malformed tag name"));
            }
            if seen.contains(&name) {
                return Err(error("a tag given twice"));
            }
            seen.push(name);
            match name {
                "v" => return Err(error("v= given twice")),
                "l" => location = https_uri(value).map_err(error)?,
                "a" => authority = https_uri(value).map_err(error)?,
                // lps=, avp= and tags of later versions: ignored (§4.3).
                _ => {}
            }
        }
        if !seen.contains(&"l") {
            return Err(error("no l= tag"));
        }
        Ok(Self {
            location,
            authority,
        })
    }
}

/// A BIMI result (§7.7).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BimiResult {
    /// A valid record with an indicator location, after an enforcing DMARC pass.
    Pass,
    /// No record for the selector at the author or organizational domain.
    None,
    /// An unusable record: a syntax error, several records, no location.
    Fail,
    /// A DNS error, or no answer within the time budget.
    TempError,
    /// The domain declines to publish an indicator (`v=BIMI1; l=; a=;`).
    Declined,
    /// Not evaluated: no DMARC pass at an enforcing policy, or not a single author.
    Skipped,
}

impl BimiResult {
    /// The keyword used in `Authentication-Results`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pass => "pass",
            Self::None => "none",
            Self::Fail => "fail",
            Self::TempError => "temperror",
            Self::Declined => "declined",
            Self::Skipped => "skipped",
        }
    }
}

impl fmt::Display for BimiResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// BIMI evaluation of a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BimiVerdict {
    /// The result.
    pub result: BimiResult,
    /// The domain whose record was evaluated (`header.d`): the author domain, or its
    /// organizational domain when the record came from there.
    pub domain: Option<String>,
    /// The selector looked up (`header.selector`).
    pub selector: Option<String>,
    /// The record, when one was found and parsed.
    pub record: Option<BimiRecord>,
    /// Why it is not `pass`, for people.
    pub reason: Option<String>,
}

impl BimiVerdict {
    /// A verdict with no domain, selector or record.
    fn bare(result: BimiResult, reason: impl Into<String>) -> Self {
        Self {
            result,
            domain: None,
            selector: None,
            record: None,
            reason: Some(reason.into()),
        }
    }

    /// `skipped`, for `reason`.
    pub fn skipped(reason: impl Into<String>) -> Self {
        Self::bare(BimiResult::Skipped, reason)
    }

    /// The value of the `BIMI-Location` field to add: only for `pass`.
    pub fn location_value(&self) -> Option<String> {
        match self.result {
            BimiResult::Pass => self.record.as_ref()?.location_value(),
            _ => None,
        }
    }

    /// The method's part of `Authentication-Results` (§7.7):
    /// `bimi=pass header.d=example.org header.selector=default`, or
    /// `bimi=skipped (reason)`.
    ///
    /// ```
    /// use auth_checks::BimiVerdict;
    /// assert_eq!(
    ///     BimiVerdict::skipped("no DMARC pass").results_clause(),
    ///     "bimi=skipped (no DMARC pass)"
    /// );
    /// ```
    pub fn results_clause(&self) -> String {
        let mut out = format!("bimi={}", self.result.as_str());
        if let Some(reason) = self.reason.as_deref().filter(|r| !r.is_empty()) {
            out.push_str(" (");
            out.extend(
                reason
                    .chars()
                    .filter(|c| !matches!(c, '(' | ')' | '\\') && !c.is_control())
                    .take(120),
            );
            out.push(')');
        }
        if let Some(d) = &self.domain {
            out.push_str(" header.d=");
            out.push_str(&pvalue(d));
        }
        if let Some(s) = &self.selector {
            out.push_str(" header.selector=");
            out.push_str(&pvalue(s));
        }
        out
    }

    /// Adds [`results_clause`](Self::results_clause) to the value of an
    /// `Authentication-Results` field made by [`AuthReport::header_value`].
    ///
    /// ```
    /// use auth_checks::{AuthReport, BimiVerdict, DmarcVerdict};
    /// let report = AuthReport { dmarc: Some(DmarcVerdict::none("example.org")), ..Default::default() };
    /// let mut value = report.header_value("mx.example.net");
    /// BimiVerdict::skipped("no DMARC pass").append_to(&mut value);
    /// assert_eq!(
    ///     value,
    ///     "mx.example.net;\r\n\tdmarc=none header.from=example.org;\r\n\tbimi=skipped (no DMARC pass)"
    /// );
    /// ```
    pub fn append_to(&self, results: &mut String) {
        if let Some(id) = results.strip_suffix("; none") {
            // Nothing else was checked: the method replaces `none` (RFC 8601 §2.2).
            let id_len = id.len();
            results.truncate(id_len);
        }
        results.push_str(";\r\n\t");
        results.push_str(&self.results_clause());
    }
}

/// `message` without the `BIMI-Location`, `BIMI-Indicator` and `BIMI-Logo-Preference`
/// fields of its header section (§5.6, §7.8), folded lines and all, the rest byte for
/// byte; `None`, and no copy, when it has none.
///
/// ```
/// let message = b"From: a@example.org\r\nBIMI-Location: v=BIMI1;\r\n l=https://evil.example/x.svg\r\n\
///                 Subject: x\r\n\r\nBIMI-Location: in the body\r\n";
/// let cleaned = auth_checks::remove_bimi_headers(message).unwrap();
/// assert_eq!(cleaned, b"From: a@example.org\r\nSubject: x\r\n\r\nBIMI-Location: in the body\r\n");
/// assert_eq!(auth_checks::remove_bimi_headers(b"Subject: x\r\n\r\nbody\r\n"), None);
/// ```
pub fn remove_bimi_headers(message: &[u8]) -> Option<Vec<u8>> {
    let mut drop: Vec<std::ops::Range<usize>> = Vec::new();
    for (name, range) in crate::headers::fields(message) {
        if BIMI_RECEIVER_HEADERS
            .iter()
            .any(|h| h.as_bytes().eq_ignore_ascii_case(name))
        {
            drop.push(range);
        }
    }
    if drop.is_empty() {
        return None;
    }
    let removed: usize = drop.iter().map(|r| r.end - r.start).sum();
    let mut out = Vec::with_capacity(message.len() - removed);
    let mut pos = 0;
    for range in drop {
        out.extend_from_slice(&message[pos..range.start]);
        pos = range.end;
    }
    out.extend_from_slice(&message[pos..]);
    Some(out)
}

impl Verifier {
    /// BIMI for `message`, whose checks gave `report` (it needs the DMARC verdict and
    /// the DKIM verdicts), asking DNS until `deadline` (see the [module
    /// documentation](crate::bimi) for what is and is not checked). Only the header
    /// section of `message` is read.
    pub async fn bimi(
        &self,
        message: &[u8],
        report: &AuthReport,
        deadline: Option<tokio::time::Instant>,
    ) -> BimiVerdict {
        let Some(dmarc) = &report.dmarc else {
            return BimiVerdict::skipped("DMARC not checked");
        };
        if dmarc.result != DmarcResult::Pass {
            return BimiVerdict::skipped("no DMARC pass");
        }
        if dmarc.published_policy == DmarcPolicy::None {
            return BimiVerdict::skipped("DMARC policy not enforcing");
        }
        let Some(parsed) = AuthenticatedMessage::parse(header_section(message)) else {
            return BimiVerdict::skipped("no header");
        };
        // §7.1 step 1: one From field, one address.
        let from_fields = parsed
            .headers
            .iter()
            .filter(|(name, _)| name.eq_ignore_ascii_case(b"From"))
            .count();
        if from_fields != 1 || parsed.from.len() != 1 {
            return BimiVerdict::skipped("not a single author address");
        }
        let author = dmarc.header_from.trim_end_matches('.').to_ascii_lowercase();
        if !crate::dns::is_domain(&author) {
            return BimiVerdict::skipped("no author domain");
        }
        let walk = match self.dmarc_records(&author, deadline).await {
            Ok(walk) => walk,
            Err(why) => return BimiVerdict::bare(BimiResult::TempError, why),
        };
        let org = organizational_domain(&walk, &author).to_owned();
        let applying = [author.as_str(), org.as_str()];
        for (_, record) in walk
            .iter()
            .filter(|(name, _)| applying.contains(&name.as_str()))
        {
            if let Some(why) = record.not_enforcing() {
                return BimiVerdict::skipped(why);
            }
        }
        let strict = walk
            .iter()
            .find(|(name, _)| applying.contains(&name.as_str()))
            .is_some_and(|(_, r)| r.strict_dkim);
        let selector = selector(&parsed, report, &author, &org, strict);
        let mut found_at = author.clone();
        let mut records = match self.assertion_records(&selector, &author, deadline).await {
            Ok(records) => records,
            Err(why) => return BimiVerdict::bare(BimiResult::TempError, why),
        };
        if records.is_empty() && org != author {
            found_at.clone_from(&org);
            records = match self.assertion_records(&selector, &org, deadline).await {
                Ok(records) => records,
                Err(why) => return BimiVerdict::bare(BimiResult::TempError, why),
            };
        }
        let (result, record, reason) = assertion(&records);
        BimiVerdict {
            result,
            domain: (result != BimiResult::None).then_some(found_at),
            selector: Some(selector),
            record,
            reason: reason.map(str::to_owned),
        }
    }

    /// The BIMI records (those starting with `v=BIMI1`) at `<selector>._bimi.<domain>`.
    async fn assertion_records(
        &self,
        selector: &str,
        domain: &str,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<Vec<String>, &'static str> {
        let name = format!("{selector}._bimi.{domain}");
        if name.len() > 253 {
            return Ok(Vec::new());
        }
        let texts = self.txt(&name, deadline).await?;
        Ok(texts
            .into_iter()
            .filter(|t| starts_with_version(t))
            .collect())
    }

    /// The DMARC records of the tree walk from `author` (RFC 9989 §4.10, as mail-auth
    /// walks it): longest name first, stopping at a record with `psd=y` or `psd=n`.
    async fn dmarc_records(
        &self,
        author: &str,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<Vec<(String, DmarcTags)>, &'static str> {
        let labels: Vec<&str> = author.split('.').collect();
        let total = labels.len();
        let mut found = Vec::new();
        let mut count = total;
        while count >= 1 {
            let name = labels[total - count..].join(".");
            let texts = self.txt(&format!("_dmarc.{name}"), deadline).await?;
            if let Some(tags) = texts.iter().find_map(|t| DmarcTags::parse(t)) {
                let stop = tags.psd.is_some();
                found.push((name, tags));
                if stop {
                    break;
                }
            }
            count = if count >= 8 { 7 } else { count - 1 };
        }
        Ok(found)
    }

    /// The TXT strings at `name` (each record's strings joined, RFC 7208 §3.3), within
    /// `deadline`, through the negative cache; none for NXDOMAIN or no TXT record.
    async fn txt(
        &self,
        name: &str,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<Vec<String>, &'static str> {
        if self.failed_recently(name) {
            return Err("a DNS lookup failed moments ago");
        }
        let lookup = self.resolver().txt_lookup(format!("{name}."));
        let result = match deadline {
            Some(deadline) => match tokio::time::timeout_at(deadline, lookup).await {
                Ok(result) => result,
                Err(_) => {
                    self.note_failure(name);
                    return Err("no DNS answer within the time budget");
                }
            },
            None => lookup.await,
        };
        match result {
            Ok(lookup) => Ok(lookup
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::TXT(txt) => Some(
                        txt.txt_data
                            .iter()
                            .map(|part| String::from_utf8_lossy(part))
                            .collect::<String>(),
                    ),
                    _ => None,
                })
                .collect()),
            Err(NetError::Dns(DnsError::NoRecordsFound(no)))
                if matches!(
                    no.response_code,
                    ResponseCode::NXDomain | ResponseCode::NoError
                ) =>
            {
                Ok(Vec::new())
            }
            Err(e) => {
                tracing::debug!(name, error = %e, "BIMI: DNS lookup failed");
                self.note_failure(name);
                Err("DNS error")
            }
        }
    }
}

/// The result of a set of BIMI records found for a selector (§7.2 steps 9 and 10,
/// §7.3, §7.5): none, one (valid, declining, or not), or too many.
fn assertion(records: &[String]) -> (BimiResult, Option<BimiRecord>, Option<&'static str>) {
    match records {
        [] => (BimiResult::None, None, None),
        [text] => match text.parse::<BimiRecord>() {
            Err(e) => (BimiResult::Fail, None, Some(e.reason())),
            Ok(record) if record.is_declination() => (BimiResult::Declined, Some(record), None),
            Ok(record) if record.location.is_none() => (
                BimiResult::Fail,
                Some(record),
                Some("no indicator location (l=)"),
            ),
            Ok(record) => (BimiResult::Pass, Some(record), None),
        },
        _ => (BimiResult::Fail, None, Some("more than one BIMI record")),
    }
}

/// The tags of a DMARC record that decide whether BIMI applies.
#[derive(Clone, Debug, PartialEq, Eq)]
struct DmarcTags {
    /// `p=`; `None` when absent or not a policy.
    p: Option<DmarcPolicy>,
    /// `sp=`, when given.
    sp: Option<DmarcPolicy>,
    /// `pct=` (100 when absent or invalid, RFC 7489 §6.3).
    pct: u8,
    /// `t=y` (DMARCbis testing mode).
    testing: bool,
    /// `psd=y` (`Some(true)`) or `psd=n` (`Some(false)`).
    psd: Option<bool>,
    /// `adkim=s`.
    strict_dkim: bool,
}

impl DmarcTags {
    /// The tags of `record` when it is a DMARC record (`v=DMARC1` first).
    fn parse(record: &str) -> Option<Self> {
        let mut tags = record.split(';').map(|t| t.trim_matches(is_wsp));
        let version = tags.next()?;
        let (v, value) = version.split_once('=')?;
        if v.trim() != "v" || value.trim() != "DMARC1" {
            return None;
        }
        let mut out = Self {
            p: None,
            sp: None,
            pct: 100,
            testing: false,
            psd: None,
            strict_dkim: false,
        };
        let policy = |v: &str| match v.to_ascii_lowercase().as_str() {
            "none" => Some(DmarcPolicy::None),
            "quarantine" => Some(DmarcPolicy::Quarantine),
            "reject" => Some(DmarcPolicy::Reject),
            _ => None,
        };
        for (name, value) in tags.filter_map(|t| t.split_once('=')) {
            let value = value.trim();
            match name.trim().to_ascii_lowercase().as_str() {
                "p" => out.p = policy(value),
                "sp" => out.sp = policy(value),
                "pct" => {
                    out.pct = value.parse().ok().filter(|p| *p <= 100).unwrap_or(100);
                }
                "t" => out.testing = value.eq_ignore_ascii_case("y"),
                "psd" if value.eq_ignore_ascii_case("y") => out.psd = Some(true),
                "psd" if value.eq_ignore_ascii_case("n") => out.psd = Some(false),
                "adkim" => out.strict_dkim = value.eq_ignore_ascii_case("s"),
                _ => {}
            }
        }
        Some(out)
    }

    /// Why this record does not let BIMI apply (§7.1 steps 7 to 9), if it does not.
    fn not_enforcing(&self) -> Option<&'static str> {
        if !matches!(self.p, Some(DmarcPolicy::Quarantine | DmarcPolicy::Reject)) {
            return Some("DMARC policy not enforcing");
        }
        if self.sp == Some(DmarcPolicy::None) {
            return Some("DMARC subdomain policy sp=none");
        }
        if self.pct != 100 {
            return Some("DMARC pct below 100");
        }
        if self.testing {
            return Some("DMARC testing mode t=y");
        }
        None
    }
}

/// The organizational domain of `author` from the tree walk's records (RFC 9989
/// §4.10.2): the name of the first record with `psd=n`; the name one label below a
/// `psd=y` record; else the shortest name with a record; else `author`.
fn organizational_domain<'a>(walk: &'a [(String, DmarcTags)], author: &'a str) -> &'a str {
    for (name, tags) in walk {
        match tags.psd {
            Some(false) => return name,
            Some(true) if name != author => {
                let keep = name.split('.').count() + 1;
                let labels = author.split('.').count();
                let mut suffix = author;
                for _ in 0..labels.saturating_sub(keep) {
                    suffix = suffix.split_once('.').map_or(suffix, |(_, rest)| rest);
                }
                return suffix;
            }
            _ => {}
        }
    }
    walk.last().map_or(author, |(name, _)| name.as_str())
}

/// The selector to look up: the one the message's single `BIMI-Selector` field names
/// when a passing DKIM signature aligned with `author` covers that field (§5.5);
/// otherwise `default`.
fn selector(
    parsed: &AuthenticatedMessage<'_>,
    report: &AuthReport,
    author: &str,
    org: &str,
    strict: bool,
) -> String {
    let fields: Vec<&[u8]> = parsed
        .headers
        .iter()
        .filter(|(name, _)| name.eq_ignore_ascii_case(b"BIMI-Selector"))
        .map(|(_, value)| *value)
        .collect();
    let [value] = fields.as_slice() else {
        return DEFAULT_SELECTOR.to_owned();
    };
    let Some(named) = selector_field(value) else {
        return DEFAULT_SELECTOR.to_owned();
    };
    let passed = report.dkim.as_deref().unwrap_or_default();
    let covered = parsed.dkim_headers.iter().any(|h| {
        let signature = &h.header;
        let d = signature.d.trim_end_matches('.').to_ascii_lowercase();
        let prefix = STANDARD_NO_PAD.encode(&signature.b[..signature.b.len().min(6)]);
        let aligned = d == author
            || (!strict
                && [author, d.as_str()]
                    .iter()
                    .all(|n| *n == org || n.ends_with(&format!(".{org}"))));
        aligned
            && signature
                .h
                .iter()
                .any(|n| n.trim().eq_ignore_ascii_case("BIMI-Selector"))
            && passed.iter().any(|v| {
                v.result == DkimResult::Pass
                    && v.domain
                        .as_deref()
                        .is_some_and(|vd| vd.eq_ignore_ascii_case(&d))
                    && v.b_prefix.as_deref() == Some(prefix.as_str())
            })
    });
    if covered {
        named
    } else {
        tracing::debug!(selector = %named, "BIMI-Selector not covered by an aligned DKIM pass: ignored");
        DEFAULT_SELECTOR.to_owned()
    }
}

/// The selector of a `BIMI-Selector` field value (§5.1: `v=BIMI1; s=<selector>;`),
/// lower-cased; `None` when the field is malformed.
fn selector_field(value: &[u8]) -> Option<String> {
    let value = std::str::from_utf8(value).ok()?;
    let unfolded: String = value
        .chars()
        .filter(|c| !matches!(c, '\r' | '\n'))
        .collect();
    let mut tags = unfolded.split(';').map(|t| t.trim_matches(is_wsp));
    let (v, version) = tags.next()?.split_once('=')?;
    if !v.trim_end_matches(is_wsp).eq_ignore_ascii_case("v")
        || !version
            .trim_start_matches(is_wsp)
            .eq_ignore_ascii_case("BIMI1")
    {
        return None;
    }
    let mut selector = None;
    for tag in tags.filter(|t| !t.is_empty()) {
        let (name, value) = tag.split_once('=')?;
        if name.trim_end_matches(is_wsp).eq_ignore_ascii_case("s") {
            if selector.is_some() {
                return None;
            }
            selector = Some(value.trim_start_matches(is_wsp).to_ascii_lowercase());
        }
    }
    selector.filter(|s| is_selector(s))
}

/// Whether `s` is a selector: `sub-domain *("." sub-domain)` (§4.4, RFC 5321), at most
/// 200 octets (so that the name to look up fits).
fn is_selector(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 200
        && s.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// Whether `text` starts with the tag `v=BIMI1` (§4.3: `"v" *WSP "=" *WSP "BIMI1"`,
/// exactly).
fn starts_with_version(text: &str) -> bool {
    let first = text.split(';').next().unwrap_or("").trim_matches(is_wsp);
    first.split_once('=').is_some_and(|(v, value)| {
        v.trim_end_matches(is_wsp) == "v" && value.trim_start_matches(is_wsp) == "BIMI1"
    })
}

/// `l=` or `a=`: empty (`None`), or one `https` URI with a fully qualified host name.
fn https_uri(value: &str) -> Result<Option<String>, &'static str> {
    let uri = value.trim_matches(is_wsp);
    if uri.is_empty() {
        return Ok(None);
    }
    if uri.contains(',') {
        return Err("more than one URI (or an unencoded comma)");
    }
    if uri.len() > MAX_URI {
        return Err("a URI too long");
    }
    let rest = match uri.get(..8) {
        Some(scheme) if scheme.eq_ignore_ascii_case("https://") => &uri[8..],
        _ => return Err("a URI that is not https"),
    };
    if !uri
        .bytes()
        .all(|b| b.is_ascii_graphic() && !b"\"<>\\^`{|}".contains(&b))
    {
        return Err("a malformed URI");
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.contains('@') {
        return Err("a URI with user information");
    }
    let host = match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    };
    if !crate::dns::is_domain(host.trim_end_matches('.')) || host.starts_with('[') {
        return Err("a URI without a fully qualified host name");
    }
    Ok(Some(uri.to_owned()))
}

/// A tag name (RFC 6376 §3.2: `ALPHA *ALNUMPUNC`).
fn is_tag_name(name: &str) -> bool {
    name.bytes().next().is_some_and(|b| b.is_ascii_alphabetic())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn is_wsp(c: char) -> bool {
    c == ' ' || c == '\t'
}

/// The header section of `message`, up to and with the empty line that ends it (all
/// of it when there is none).
fn header_section(message: &[u8]) -> &[u8] {
    let mut pos = 0;
    while pos < message.len() {
        let rest = &message[pos..];
        if rest.starts_with(b"\r\n") {
            return &message[..pos + 2];
        }
        if rest.starts_with(b"\n") {
            return &message[..pos + 1];
        }
        match rest.iter().position(|&b| b == b'\n') {
            Some(lf) => pos += lf + 1,
            None => return message,
        }
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<BimiRecord, &'static str> {
        text.parse::<BimiRecord>().map_err(|e| e.reason())
    }

    #[test]
    fn valid_records() {
        assert_eq!(
            parse("v=BIMI1; l=https://example.org/logo.svg; a=https://example.org/vmc.pem"),
            Ok(BimiRecord {
                location: Some("https://example.org/logo.svg".into()),
                authority: Some("https://example.org/vmc.pem".into()),
            })
        );
        // No a=, trailing separator, whitespace around '=', unknown and later tags.
        assert_eq!(
            parse("v = BIMI1;l =  https://cdn.example.net:8443/b/logo.svg ; avp=brand; x=1;"),
            Ok(BimiRecord {
                location: Some("https://cdn.example.net:8443/b/logo.svg".into()),
                authority: None,
            })
        );
        // The scheme's case is not the record's to fix, but schemes are case-insensitive.
        assert!(parse("v=BIMI1; l=HTTPS://example.org/l.svg").is_ok());
    }

    #[test]
    fn declination() {
        let record = parse("v=BIMI1; l=; a=;").unwrap_or_else(|e| panic!("{e}"));
        assert!(record.is_declination());
        assert_eq!(record.location_value(), None);
        assert!(
            parse("v=BIMI1; l=")
                .unwrap_or_else(|e| panic!("{e}"))
                .is_declination()
        );
        // Evidence only: parses, but has no location for the header.
        let evidence =
            parse("v=BIMI1; l=; a=https://example.org/vmc.pem").unwrap_or_else(|e| panic!("{e}"));
        assert!(!evidence.is_declination());
        assert_eq!(evidence.location_value(), None);
    }

    #[test]
    fn bad_version() {
        for text in [
            "v=BIMI2; l=https://example.org/l.svg",
            "v=bimi1; l=https://example.org/l.svg",
            "V=BIMI1; l=https://example.org/l.svg",
            "l=https://example.org/l.svg; v=BIMI1",
            "",
            "v=spf1 -all",
        ] {
            assert_eq!(parse(text), Err("does not start with v=BIMI1"), "{text}");
        }
        assert_eq!(
            parse("v=BIMI1; v=BIMI1; l=https://example.org/l.svg"),
            Err("v= given twice")
        );
    }

    #[test]
    fn bad_locations() {
        for (text, why) in [
            (
                "v=BIMI1; l=http://example.org/l.svg",
                "a URI that is not https",
            ),
            ("v=BIMI1; l=example.org/l.svg", "a URI that is not https"),
            (
                "v=BIMI1; l=https://example.org/l.svg; a=http://example.org/v.pem",
                "a URI that is not https",
            ),
            (
                "v=BIMI1; l=https://example.org/a.svg,https://example.org/b.svg",
                "more than one URI (or an unencoded comma)",
            ),
            (
                "v=BIMI1; l=https://localhost/l.svg",
                "a URI without a fully qualified host name",
            ),
            (
                "v=BIMI1; l=https://192.0.2.1/l.svg",
                "a URI without a fully qualified host name",
            ),
            (
                "v=BIMI1; l=https:///l.svg",
                "a URI without a fully qualified host name",
            ),
            (
                "v=BIMI1; l=https://u@example.org/l.svg",
                "a URI with user information",
            ),
            ("v=BIMI1; l=https://example.org/a b.svg", "a malformed URI"),
            (
                "v=BIMI1; l=https://example.org/\"x\".svg",
                "a malformed URI",
            ),
            ("v=BIMI1; a=https://example.org/v.pem", "no l= tag"),
            ("v=BIMI1", "no l= tag"),
            (
                "v=BIMI1; l=https://example.org/l.svg; l=https://example.org/m.svg",
                "a tag given twice",
            ),
            ("v=BIMI1;; l=https://example.org/l.svg", "an empty tag"),
            ("v=BIMI1; l", "a tag without '='"),
            (
                "v=BIMI1; 1x=y; l=https://example.org/l.svg",
                "a malformed tag name",
            ),
        ] {
            assert_eq!(parse(text), Err(why), "{text}");
        }
        let long = format!("v=BIMI1; l=https://example.org/{}", "x".repeat(MAX_URI));
        assert_eq!(parse(&long), Err("a URI too long"));
    }

    #[test]
    fn record_sets() {
        let set = |texts: &[&str]| {
            let texts: Vec<String> = texts.iter().map(|t| (*t).to_owned()).collect();
            let (result, record, why) = assertion(&texts);
            (result, record.and_then(|r| r.location), why)
        };
        assert_eq!(set(&[]), (BimiResult::None, None, None));
        assert_eq!(
            set(&["v=BIMI1; l=https://example.org/l.svg"]),
            (
                BimiResult::Pass,
                Some("https://example.org/l.svg".to_owned()),
                None
            )
        );
        assert_eq!(
            set(&[
                "v=BIMI1; l=https://example.org/l.svg",
                "v=BIMI1; l=https://example.org/m.svg"
            ]),
            (BimiResult::Fail, None, Some("more than one BIMI record"))
        );
        assert_eq!(
            set(&["v=BIMI1; l=; a=;"]),
            (BimiResult::Declined, None, None)
        );
        assert_eq!(
            set(&["v=BIMI1; l=http://example.org/l.svg"]),
            (BimiResult::Fail, None, Some("a URI that is not https"))
        );
        assert_eq!(
            set(&["v=BIMI1; l=; a=https://example.org/vmc.pem"]),
            (BimiResult::Fail, None, Some("no indicator location (l=)"))
        );
    }

    #[test]
    fn location_header_value() {
        let record = BimiRecord {
            location: Some("https://example.org/logo.svg".into()),
            authority: None,
        };
        assert_eq!(
            record.location_value().as_deref(),
            Some("v=BIMI1; l=https://example.org/logo.svg")
        );
        let long = BimiRecord {
            location: Some(format!(
                "https://example.org/{}.svg",
                "l".repeat(MAX_URI - 30)
            )),
            authority: Some(format!("https://example.org/{}.pem", "a".repeat(200))),
        };
        let value = long.location_value().unwrap_or_default();
        assert!(value.starts_with("v=BIMI1;\r\n\tl=https://"), "{value}");
        assert!(value.ends_with("aaa.pem"), "{value}");
        assert_eq!(value.matches(";\r\n\t").count(), 2, "{value}");
        assert!(value.split("\r\n").all(|line| line.len() < 998));
    }

    #[test]
    fn results_clauses() {
        let pass = BimiVerdict {
            result: BimiResult::Pass,
            domain: Some("example.org".into()),
            selector: Some("brand".into()),
            record: None,
            reason: None,
        };
        assert_eq!(
            pass.results_clause(),
            "bimi=pass header.d=example.org header.selector=brand"
        );
        let mut value = "mx.example.net; none".to_owned();
        pass.append_to(&mut value);
        assert_eq!(
            value,
            "mx.example.net;\r\n\tbimi=pass header.d=example.org header.selector=brand"
        );
        assert_eq!(
            BimiVerdict::bare(BimiResult::TempError, "no (DNS)\r\n answer").results_clause(),
            "bimi=temperror (no DNS answer)"
        );
    }

    #[test]
    fn selector_fields() {
        assert_eq!(
            selector_field(b" v=BIMI1; s=Brand;").as_deref(),
            Some("brand")
        );
        assert_eq!(
            selector_field(b" v=BIMI1;\r\n\ts=a.b-c").as_deref(),
            Some("a.b-c")
        );
        for bad in [
            &b" s=brand;"[..],
            b" v=BIMI2; s=brand",
            b" v=BIMI1",
            b" v=BIMI1; s=",
            b" v=BIMI1; s=-x",
            b" v=BIMI1; s=a..b",
            b" v=BIMI1; s=a_b",
            b" v=BIMI1; s=a; s=b",
        ] {
            assert_eq!(
                selector_field(bad),
                None,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn dmarc_tags() {
        let tags = DmarcTags::parse("v=DMARC1; p=reject; sp=quarantine; adkim=s")
            .unwrap_or_else(|| panic!("a DMARC record"));
        assert_eq!(tags.p, Some(DmarcPolicy::Reject));
        assert!(tags.strict_dkim);
        assert_eq!(tags.not_enforcing(), None);
        let why = |text: &str| DmarcTags::parse(text).and_then(|t| t.not_enforcing());
        assert_eq!(why("v=DMARC1; p=none"), Some("DMARC policy not enforcing"));
        assert_eq!(
            why("v=DMARC1; rua=mailto:a@example.org"),
            Some("DMARC policy not enforcing")
        );
        assert_eq!(
            why("v=DMARC1; p=reject; sp=none"),
            Some("DMARC subdomain policy sp=none")
        );
        assert_eq!(
            why("v=DMARC1; p=quarantine; pct=50"),
            Some("DMARC pct below 100")
        );
        assert_eq!(
            why("v=DMARC1; p=reject; pct=99"),
            Some("DMARC pct below 100")
        );
        assert_eq!(
            why("v=DMARC1; p=reject; t=y"),
            Some("DMARC testing mode t=y")
        );
        assert_eq!(why("v=DMARC1; p=quarantine; pct=100"), None);
        assert!(DmarcTags::parse("v=spf1 -all").is_none());
    }

    #[test]
    fn organizational_domains() {
        let tags = |text: &str| DmarcTags::parse(text).unwrap_or_else(|| panic!("{text}"));
        let walk = vec![("example.org".to_owned(), tags("v=DMARC1; p=reject"))];
        assert_eq!(
            organizational_domain(&walk, "mail.example.org"),
            "example.org"
        );
        assert_eq!(
            organizational_domain(&[], "mail.example.org"),
            "mail.example.org"
        );
        let walk = vec![
            ("a.b.example.org".to_owned(), tags("v=DMARC1; p=reject")),
            (
                "b.example.org".to_owned(),
                tags("v=DMARC1; p=reject; psd=n"),
            ),
        ];
        assert_eq!(
            organizational_domain(&walk, "a.b.example.org"),
            "b.example.org"
        );
        let walk = vec![("org".to_owned(), tags("v=DMARC1; p=reject; psd=y"))];
        assert_eq!(
            organizational_domain(&walk, "a.b.example.org"),
            "example.org"
        );
    }

    #[test]
    fn headers_removed_byte_for_byte() {
        let message =
            b"Received: by x\r\nbimi-location : v=BIMI1; l=https://evil.example/a.svg\r\n\
                        Subject: hi\r\nBIMI-Indicator: PD94bW\r\n\tPD94bW\r\n \r\n\
                        BIMI-Logo-Preference: avp=brand\nBIMI-Selector: v=BIMI1; s=x\r\n\r\n\
                        BIMI-Location: body\r\n";
        let cleaned = remove_bimi_headers(message).unwrap_or_default();
        assert_eq!(
            cleaned,
            b"Received: by x\r\nSubject: hi\r\nBIMI-Selector: v=BIMI1; s=x\r\n\r\nBIMI-Location: body\r\n"
        );
        // A message that is all header, its last field without a line break.
        assert_eq!(
            remove_bimi_headers(b"Subject: x\r\nBIMI-Location: v=BIMI1").as_deref(),
            Some(&b"Subject: x\r\n"[..])
        );
        assert_eq!(remove_bimi_headers(b""), None);
        assert_eq!(remove_bimi_headers(b"\r\nBIMI-Location: x\r\n"), None);
    }

    #[test]
    fn header_sections() {
        assert_eq!(header_section(b"A: b\r\n\r\nbody"), b"A: b\r\n\r\n");
        assert_eq!(header_section(b"A: b\n\nbody"), b"A: b\n\n");
        assert_eq!(header_section(b"A: b\r\n c\r\n"), b"A: b\r\n c\r\n");
        assert_eq!(header_section(b"A: b"), b"A: b");
    }
}
