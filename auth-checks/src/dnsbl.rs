//! DNS blocklists and allowlists: the client's address against IP lists
//! (zen.spamhaus.org-style, RFC 5782), the HELO and sender domains against domain lists
//! (RHSBL), each list with a weight, the weights of the lists that answer summed into a
//! score, and the client listed when the score reaches a threshold (postscreen's
//! `postscreen_dnsbl_sites` and `postscreen_dnsbl_threshold`). An allowlist is a list
//! with a negative weight.
//!
//! ```text
//!  connect ──▶ IP lists, all at once, in the background ─┐
//!  MAIL ─────▶ HELO and sender domain lists, likewise ───┤ (the DNS time budget:
//!  RCPT ◀──── verdict: what answered within the budget ◀─┘  all lists together)
//!              enforce: 554 5.7.1 Service unavailable; client [IP] blocked using LIST
//!              tag: X-DNSBL header at DATA, log, metric
//! ```
//!
//! [`Dnsbl`] does the lookups and scoring on its own ([`Dnsbl::check`]); with the
//! `layers` feature, [`DnsblFilter`] runs them as stage layers.
//!
//! What counts as a listing: an A record answer in 127.0.0.0/8 that the list's return
//! code filter (if any) accepts. Answers in 127.255.255.0/24 are the list telling us that
//! it refuses our queries (we are blocked, over quota, or asking through a public
//! resolver): they never count, and are logged once per list, not per query.

use hickory_resolver::proto::rr::{Name, RecordType};
use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tracing::warn;

use crate::dns::{Answer, Dns, LookupFuture, Pending, Value, is_domain};
use crate::stats::DnsStats;
use crate::verify::Verifier;

/// What a list is asked about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ListKind {
    /// The client's address (`4.3.2.1.zone`, or 32 reversed nibbles for IPv6).
    Ip,
    /// The HELO/EHLO domain (`domain.zone`).
    Helo,
    /// The MAIL FROM domain.
    Sender,
    /// Both the HELO and the MAIL FROM domain (counted once if both are listed).
    Domain,
}

impl ListKind {
    fn prefix(self) -> &'static str {
        match self {
            Self::Ip => "",
            Self::Helo => "helo:",
            Self::Sender => "sender:",
            Self::Domain => "domain:",
        }
    }
}

/// The return codes of a list that count, as postscreen writes them: four octets, each
/// a number, a range `[2..11]`, or a choice `[2;4;6..8]` (`127.0.0.[2..11]`).
///
/// ```
/// use auth_checks::ReturnCodes;
/// let codes: ReturnCodes = "127.0.0.[2..11]".parse().unwrap();
/// assert!(codes.matches("127.0.0.4".parse().unwrap()));
/// assert!(!codes.matches("127.0.0.1".parse().unwrap()));
/// assert_eq!(codes.to_string(), "127.0.0.[2..11]");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReturnCodes([Vec<(u8, u8)>; 4]);

impl ReturnCodes {
    /// Whether `answer` is one of the codes.
    pub fn matches(&self, answer: Ipv4Addr) -> bool {
        self.0
            .iter()
            .zip(answer.octets())
            .all(|(ranges, octet)| ranges.iter().any(|(lo, hi)| (*lo..=*hi).contains(&octet)))
    }
}

/// A list entry that cannot be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("DNS list {entry:?}: {why}")]
pub struct ListSyntaxError {
    entry: String,
    why: &'static str,
}

impl FromStr for ReturnCodes {
    type Err = ListSyntaxError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let error = |why| ListSyntaxError {
            entry: text.to_owned(),
            why,
        };
        let mut octets: [Vec<(u8, u8)>; 4] = Default::default();
        // Split on the dots outside brackets (`[2..11]` has dots of its own).
        let mut parts = Vec::new();
        let (mut depth, mut start) = (0u32, 0);
        for (i, c) in text.char_indices() {
            match c {
                '[' => depth += 1,
                ']' => depth = depth.saturating_sub(1),
                '.' if depth == 0 => {
                    parts.push(&text[start..i]);
                    start = i + 1;
                }
                _ => {}
            }
        }
        parts.push(&text[start..]);
        let mut parts = parts.into_iter();
        for slot in &mut octets {
            let part = parts
                .next()
                .ok_or_else(|| error("a return code has four octets"))?;
            let choices = match part.strip_prefix('[').and_then(|p| p.strip_suffix(']')) {
                Some(inner) => inner.split(';').collect::<Vec<_>>(),
                None => vec![part],
            };
            for choice in choices {
                let (lo, hi) = choice.split_once("..").unwrap_or((choice, choice));
                let lo: u8 = lo.trim().parse().map_err(|_| error("bad octet"))?;
                let hi: u8 = hi.trim().parse().map_err(|_| error("bad octet"))?;
                if lo > hi {
                    return Err(error("empty octet range"));
                }
                slot.push((lo, hi));
            }
        }
        if parts.next().is_some() {
            return Err(error("a return code has four octets"));
        }
        Ok(Self(octets))
    }
}

impl std::fmt::Display for ReturnCodes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, ranges) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(".")?;
            }
            let text: Vec<String> = ranges
                .iter()
                .map(|(lo, hi)| {
                    if lo == hi {
                        lo.to_string()
                    } else {
                        format!("{lo}..{hi}")
                    }
                })
                .collect();
            match ranges.as_slice() {
                [(lo, hi)] if lo == hi => write!(f, "{lo}")?,
                _ => write!(f, "[{}]", text.join(";"))?,
            }
        }
        Ok(())
    }
}

/// One DNS list: its zone, what it is asked about, which answers count, and its weight.
///
/// Written as postscreen writes `postscreen_dnsbl_sites` entries, with a prefix for
/// domain lists: `[helo:|sender:|domain:]zone[=codes][*weight]` (weight 1 by default,
/// negative for an allowlist).
///
/// ```
/// use auth_checks::{DnsList, ListKind};
/// let zen: DnsList = "zen.spamhaus.org=127.0.0.[2..11]*3".parse().unwrap();
/// assert_eq!((zen.zone.as_str(), zen.kind, zen.weight), ("zen.spamhaus.org", ListKind::Ip, 3));
/// let dwl: DnsList = "list.dnswl.org=127.0.[0..255].[1..3]*-5".parse().unwrap();
/// assert_eq!(dwl.weight, -5);
/// let dbl: DnsList = "sender:dbl.spamhaus.org=127.0.1.[2..99]".parse().unwrap();
/// assert_eq!((dbl.kind, dbl.weight), (ListKind::Sender, 1));
/// assert_eq!(dbl.to_string(), "sender:dbl.spamhaus.org=127.0.1.[2..99]*1");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsList {
    /// The zone, without the final dot (`zen.spamhaus.org`).
    pub zone: String,
    /// What it is asked about.
    pub kind: ListKind,
    /// The answers that count; `None`: any answer in 127.0.0.0/8.
    pub codes: Option<ReturnCodes>,
    /// Added to the score when the list answers with a code that counts.
    pub weight: i32,
}

impl FromStr for DnsList {
    type Err = ListSyntaxError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let error = |why| ListSyntaxError {
            entry: text.to_owned(),
            why,
        };
        let entry = text.trim();
        let (kind, rest) = [
            ("ip:", ListKind::Ip),
            ("helo:", ListKind::Helo),
            ("sender:", ListKind::Sender),
            ("domain:", ListKind::Domain),
        ]
        .into_iter()
        .find_map(|(prefix, kind)| entry.strip_prefix(prefix).map(|rest| (kind, rest)))
        .unwrap_or((ListKind::Ip, entry));
        let (rest, weight) = match rest.rsplit_once('*') {
            Some((rest, weight)) => (
                rest,
                weight
                    .trim()
                    .parse::<i32>()
                    .map_err(|_| error("the weight after * is not a whole number"))?,
            ),
            None => (rest, 1),
        };
        let (zone, codes) = match rest.split_once('=') {
            Some((zone, codes)) => (zone, Some(codes.parse::<ReturnCodes>()?)),
            None => (rest, None),
        };
        let zone = zone.trim().trim_end_matches('.').to_ascii_lowercase();
        if !is_domain(&zone) {
            return Err(error("the zone is not a domain name"));
        }
        Ok(Self {
            zone,
            kind,
            codes,
            weight,
        })
    }
}

impl std::fmt::Display for DnsList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}{}", self.kind.prefix(), self.zone)?;
        if let Some(codes) = &self.codes {
            write!(f, "={codes}")?;
        }
        write!(f, "*{}", self.weight)
    }
}

#[cfg(feature = "layers")]
impl<'de> serde::Deserialize<'de> for DnsList {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(feature = "layers")]
impl serde::Serialize for DnsList {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// What a list was asked about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Identity {
    /// The client's address.
    Client(IpAddr),
    /// The HELO domain.
    Helo(String),
    /// The MAIL FROM domain.
    Sender(String),
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Client(ip) => write!(f, "client [{ip}]"),
            Self::Helo(name) => write!(f, "helo [{name}]"),
            Self::Sender(domain) => write!(f, "sender domain [{domain}]"),
        }
    }
}

/// A list that answered with a code that counts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListHit {
    /// The list's zone.
    pub zone: String,
    /// What it was asked about.
    pub identity: Identity,
    /// Its answer (the first that counts).
    pub answer: Ipv4Addr,
    /// The list's weight.
    pub weight: i32,
}

/// The lists' verdict on a client (and a transaction's HELO and sender domains).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DnsblVerdict {
    /// The weights of the lists that answered with a code that counts, summed (each
    /// list once).
    pub score: i32,
    /// The score at which the client is listed.
    pub threshold: i32,
    /// The answers that counted.
    pub hits: Vec<ListHit>,
    /// The zones that had not answered when the verdict was made (no answer within the
    /// budget, an error, or a list that failed moments ago).
    pub unanswered: Vec<String>,
}

impl DnsblVerdict {
    /// Whether the score reaches the threshold.
    pub fn listed(&self) -> bool {
        self.score >= self.threshold
    }

    /// The hit to name in a refusal: the listing of the greatest weight (the first
    /// configured among equals).
    pub fn blocking(&self) -> Option<&ListHit> {
        self.hits
            .iter()
            .filter(|h| h.weight > 0)
            .fold(None, |best: Option<&ListHit>, h| match best {
                Some(b) if b.weight >= h.weight => Some(b),
                _ => Some(h),
            })
    }

    /// The refusal text: `Service unavailable; client [192.0.2.1] blocked using
    /// zen.spamhaus.org` (or `sender domain [example.org]`, `helo [name]` for a domain
    /// list).
    pub fn refusal_text(&self) -> String {
        match self.blocking() {
            Some(hit) => format!(
                "Service unavailable; {} blocked using {}",
                hit.identity, hit.zone
            ),
            None => "Service unavailable; blocked by DNS lists".to_owned(),
        }
    }

    /// The value of the `X-DNSBL` header: `listed` or `clean`, the score and
    /// threshold, then each answer that counted:
    /// `listed; score=3; threshold=1; zen.test=127.0.0.2 (client [192.0.2.1], weight 3)`.
    pub fn header_value(&self) -> String {
        let mut value = format!(
            "{}; score={}; threshold={}",
            if self.listed() { "listed" } else { "clean" },
            self.score,
            self.threshold
        );
        for hit in &self.hits {
            value.push_str(&format!(
                ";\r\n\t{}={} ({}, weight {})",
                hit.zone, hit.answer, hit.identity, hit.weight
            ));
        }
        value
    }
}

/// How one lookup in one list ended.
#[derive(Clone, Debug, PartialEq, Eq)]
enum ListAnswer {
    Hit(Ipv4Addr),
    Clean,
    Refused,
    Failed,
    /// No answer within the budget.
    TimedOut,
}

/// The lists, and the lookups in them.
///
/// ```no_run
/// # async fn example(verifier: auth_checks::Verifier) {
/// use auth_checks::Dnsbl;
/// let lists = vec!["zen.spamhaus.org=127.0.0.[2..11]*3".parse().unwrap()];
/// let dnsbl = Dnsbl::new(&verifier, lists, 1);
/// let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
/// let verdict = dnsbl.check("192.0.2.1".parse().unwrap(), None, None, deadline).await;
/// if verdict.listed() {
///     println!("{}", verdict.refusal_text());
/// }
/// # }
/// ```
#[derive(Clone)]
pub struct Dnsbl {
    inner: Arc<Inner>,
}

struct Inner {
    dns: Dns,
    lists: Vec<DnsList>,
    threshold: i32,
    /// Per list: whether its refusal answers were logged already.
    warned: Vec<AtomicBool>,
    stats: Arc<DnsStats>,
}

impl std::fmt::Debug for Dnsbl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let lists: Vec<String> = self.inner.lists.iter().map(ToString::to_string).collect();
        write!(f, "Dnsbl({lists:?}, threshold {})", self.inner.threshold)
    }
}

impl Dnsbl {
    /// Lookups in `lists` through `verifier`'s resolver and negative cache; a client
    /// whose score reaches `threshold` is listed.
    pub fn new(verifier: &Verifier, lists: Vec<DnsList>, threshold: i32) -> Self {
        Self {
            inner: Arc::new(Inner {
                dns: Dns::new(verifier),
                warned: lists.iter().map(|_| AtomicBool::new(false)).collect(),
                lists,
                threshold,
                stats: Arc::default(),
            }),
        }
    }

    /// Counts lookups and verdicts in `stats` (shared, so the counts outlive this
    /// value).
    pub fn count_into(mut self, stats: Arc<DnsStats>) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.stats = stats;
        }
        self
    }

    /// The lists.
    pub fn lists(&self) -> &[DnsList] {
        &self.inner.lists
    }

    /// Asks every list about the client (`ip`), the HELO domain and the sender's
    /// domain (`user@domain` or a bare domain) at once, and sums what answered by
    /// `deadline`.
    pub async fn check(
        &self,
        ip: IpAddr,
        helo: Option<&str>,
        sender: Option<&str>,
        deadline: tokio::time::Instant,
    ) -> DnsblVerdict {
        let mut started = self.start_client(ip, deadline);
        started.extend(self.start_domains(helo, sender, deadline));
        self.verdict(&started, deadline).await
    }

    /// Starts the IP lists' lookups for `ip`.
    fn start_client(&self, ip: IpAddr, until: tokio::time::Instant) -> Vec<Started> {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            IpAddr::V4(_) => ip,
        };
        let queries = self
            .inner
            .lists
            .iter()
            .enumerate()
            .filter(|(_, l)| l.kind == ListKind::Ip)
            .map(|(i, l)| {
                (
                    i,
                    Identity::Client(ip),
                    format!("{}.{}", reversed(ip), l.zone),
                )
            })
            .collect();
        self.start(queries, until)
    }

    /// Starts the domain lists' lookups for the HELO and sender domains.
    fn start_domains(
        &self,
        helo: Option<&str>,
        sender: Option<&str>,
        until: tokio::time::Instant,
    ) -> Vec<Started> {
        let helo = helo.and_then(ascii_domain);
        let sender = sender
            .map(|s| s.rsplit_once('@').map_or(s, |(_, d)| d))
            .and_then(ascii_domain);
        let mut queries = Vec::new();
        for (i, list) in self.inner.lists.iter().enumerate() {
            let (ask_helo, ask_sender) = match list.kind {
                ListKind::Ip => (false, false),
                ListKind::Helo => (true, false),
                ListKind::Sender => (false, true),
                ListKind::Domain => (true, true),
            };
            if let Some(h) = helo.as_ref().filter(|_| ask_helo) {
                queries.push((i, Identity::Helo(h.clone()), format!("{h}.{}", list.zone)));
            }
            if let Some(s) = sender.as_ref().filter(|_| ask_sender)
                && (!ask_helo || helo.as_ref() != Some(s))
            {
                queries.push((i, Identity::Sender(s.clone()), format!("{s}.{}", list.zone)));
            }
        }
        self.start(queries, until)
    }

    fn start(
        &self,
        queries: Vec<(usize, Identity, String)>,
        until: tokio::time::Instant,
    ) -> Vec<Started> {
        let queries: Vec<_> = queries
            .into_iter()
            .filter(|(_, _, name)| name.len() <= 253)
            .collect();
        if queries.is_empty() {
            return Vec::new();
        }
        // Every answer cached within its TTL (a client or domain seen moments ago): the
        // answers now, without a task.
        let cached: Option<Vec<Answer>> = queries
            .iter()
            .map(|(_, _, name)| self.inner.dns.cached(name, RecordType::A))
            .collect();
        if let Some(answers) = cached {
            let mut results = Vec::with_capacity(queries.len());
            let mut asked = Vec::with_capacity(queries.len());
            for ((list, identity, _), answer) in queries.into_iter().zip(answers) {
                results.push(self.judge(list, answer));
                asked.push((list, identity));
            }
            return vec![Started {
                asked,
                pending: Pending::ready(results),
            }];
        }
        let mut lookups: Vec<LookupFuture<ListAnswer>> = Vec::with_capacity(queries.len());
        let mut asked = Vec::with_capacity(queries.len());
        for (list, identity, name) in queries {
            let this = self.clone();
            lookups.push(Box::pin(
                async move { this.lookup(list, &name, until).await },
            ));
            asked.push((list, identity));
        }
        vec![Started {
            asked,
            pending: Pending::spawn(lookups, true),
        }]
    }

    /// One lookup in list `index`.
    async fn lookup(&self, index: usize, name: &str, until: tokio::time::Instant) -> ListAnswer {
        let Some(list) = self.inner.lists.get(index) else {
            return ListAnswer::Failed;
        };
        let (answer, _) = self
            .inner
            .dns
            .query(name, RecordType::A, &list.zone, until)
            .await;
        self.judge(index, answer)
    }

    /// What list `index`'s `answer` says, counted in the stats.
    fn judge(&self, index: usize, answer: Answer) -> ListAnswer {
        let Some(list) = self.inner.lists.get(index) else {
            return ListAnswer::Failed;
        };
        let result = match answer {
            Answer::Found(values) => {
                let addresses: Vec<Ipv4Addr> = values
                    .iter()
                    .filter_map(|v| match v {
                        Value::V4(a) => Some(*a),
                        _ => None,
                    })
                    .collect();
                if addresses.iter().any(|a| is_refusal(*a)) {
                    ListAnswer::Refused
                } else {
                    addresses
                        .into_iter()
                        .find(|a| match &list.codes {
                            Some(codes) => codes.matches(*a),
                            None => a.octets()[0] == 127,
                        })
                        .map_or(ListAnswer::Clean, ListAnswer::Hit)
                }
            }
            Answer::NotFound => ListAnswer::Clean,
            Answer::Failed | Answer::Skipped => ListAnswer::Failed,
            Answer::TimedOut => ListAnswer::TimedOut,
        };
        if result == ListAnswer::Refused && !self.inner.warned[index].swap(true, Ordering::Relaxed)
        {
            warn!(list = %list.zone, "the DNS list answers 127.255.255.x: it refuses our queries (blocked, over quota, or asked through a public resolver); its answers do not count (logged once)");
        }
        self.inner.stats.count_list(&list.zone, |c| {
            c.queries += 1;
            match result {
                ListAnswer::Hit(_) => c.hits += 1,
                ListAnswer::Refused => c.refused += 1,
                ListAnswer::Failed | ListAnswer::TimedOut => c.errors += 1,
                ListAnswer::Clean => {}
            }
        });
        result
    }

    /// Waits for `started` lookups until `until`, and sums what answered. A list that
    /// had not answered by then is noted in the negative cache (the next sessions do
    /// not wait for it).
    async fn verdict(&self, started: &[Started], until: tokio::time::Instant) -> DnsblVerdict {
        let mut verdict = DnsblVerdict {
            threshold: self.inner.threshold,
            ..DnsblVerdict::default()
        };
        let mut counted = vec![false; self.inner.lists.len()];
        let mut exhausted = false;
        for batch in started {
            let (answers, complete) = batch.pending.wait(until).await;
            exhausted |= !complete;
            for ((index, identity), answer) in batch.asked.iter().zip(answers) {
                let Some(list) = self.inner.lists.get(*index) else {
                    continue;
                };
                match answer {
                    Some(ListAnswer::Hit(code)) => {
                        if !counted[*index] {
                            counted[*index] = true;
                            verdict.score = verdict.score.saturating_add(list.weight);
                        }
                        verdict.hits.push(ListHit {
                            zone: list.zone.clone(),
                            identity: identity.clone(),
                            answer: code,
                            weight: list.weight,
                        });
                    }
                    Some(ListAnswer::Clean | ListAnswer::Refused) => {}
                    Some(ListAnswer::Failed) => verdict.unanswered.push(list.zone.clone()),
                    Some(ListAnswer::TimedOut) => {
                        exhausted = true;
                        verdict.unanswered.push(list.zone.clone());
                    }
                    None => {
                        self.inner.dns.note_failure(&list.zone);
                        verdict.unanswered.push(list.zone.clone());
                    }
                }
            }
        }
        verdict.unanswered.sort_unstable();
        verdict.unanswered.dedup();
        if exhausted {
            self.inner.stats.count_budget_exhausted();
        }
        verdict
    }
}

/// Lookups started for some identities.
#[derive(Clone, Debug)]
struct Started {
    /// Per lookup: the list's index and what it was asked about.
    asked: Vec<(usize, Identity)>,
    pending: Pending<ListAnswer>,
}

/// Whether a list's answer says that it refuses our queries (RFC 5782 §2.1 reserves
/// 127.0.0.0/8 for answers; lists use 127.255.255.0/24 for errors).
fn is_refusal(answer: Ipv4Addr) -> bool {
    let [a, b, c, _] = answer.octets();
    (a, b, c) == (127, 255, 255)
}

/// The query label of an address (RFC 5782 §2.1, §2.4): octets or nibbles, reversed.
fn reversed(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            format!("{d}.{c}.{b}.{a}")
        }
        IpAddr::V6(v6) => {
            let mut labels = Vec::with_capacity(32);
            for byte in v6.octets().iter().rev() {
                labels.push(format!("{:x}", byte & 0x0f));
                labels.push(format!("{:x}", byte >> 4));
            }
            labels.join(".")
        }
    }
}

/// A domain as the ASCII name to look up (IDNA for a UTF-8 one), lower case; `None`
/// for an address literal or a name that is not a domain.
fn ascii_domain(name: &str) -> Option<String> {
    let name = name.trim_end_matches('.');
    if name.starts_with('[') {
        return None;
    }
    let ascii = Name::from_utf8(name).ok()?.to_ascii();
    let ascii = ascii.trim_end_matches('.').to_ascii_lowercase();
    is_domain(&ascii).then_some(ascii)
}

#[cfg(feature = "layers")]
pub use layers::{DnsblFilter, DnsblSettings, HEADER};

#[cfg(feature = "layers")]
mod layers {
    use std::sync::Arc;
    use std::time::Duration;

    use smtp_proto::{EnhancedStatus, HeloName, ReversePath};
    use smtp_server::filters::IpNetwork;
    use smtp_server::{
        AsyncCheck, Check, CheckFuture, ConnectRequest, DataRequest, Decision, Filter, FilterAsync,
        Flow, ListenerMode, MailRequest, RcptRequest, SessionInfo, filter, filter_async,
    };
    use tracing::{debug, info};

    use super::{DnsList, Dnsbl, DnsblVerdict, Started};
    use crate::dns::Budget;
    use crate::filter::Mode;
    use crate::stats::{DnsStats, VerdictKind};
    use crate::verify::Verifier;

    /// The header `tag` (and `enforce`, for a client under the threshold) adds to
    /// messages from clients some list answered for:
    /// `X-DNSBL: listed; score=3; threshold=1; zen.test=127.0.0.2 (client [192.0.2.1], weight 3)`.
    /// Not `Authentication-Results`: a blocklist is reputation, not authentication,
    /// and RFC 8601 registers no method for it. Added only when a list answered, so a
    /// copy forged by the sender can only make its own mail look worse; filter on
    /// the first (topmost) one.
    pub const HEADER: &str = "X-DNSBL";

    /// The blocklist settings (`[dnsbl]`): the lists, the threshold, the mode.
    ///
    /// ```
    /// let settings = auth_checks::DnsblSettings::default();
    /// assert!(settings.lists.is_empty());
    /// assert_eq!(settings.threshold, 1);
    /// assert_eq!(settings.mode, auth_checks::Mode::Tag);
    /// ```
    #[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
    #[serde(default, deny_unknown_fields)]
    pub struct DnsblSettings {
        /// `off`: no lookups; `tag` (default): log, count, and add [`HEADER`];
        /// `enforce`: refuse every recipient of a listed client with `554 5.7.1`.
        pub mode: Mode,
        /// The lists, as [`DnsList`] reads them
        /// (`"zen.spamhaus.org=127.0.0.[2..11]*3"`). None by default: a list is a
        /// choice of the operator (public lists have terms, and refuse queries that
        /// come through public resolvers).
        pub lists: Vec<DnsList>,
        /// The score at which a client is listed. Default 1.
        pub threshold: i32,
    }

    impl Default for DnsblSettings {
        fn default() -> Self {
            Self {
                mode: Mode::Tag,
                lists: Vec::new(),
                threshold: 1,
            }
        }
    }

    /// The lists as stage layers: lookups start at connect (IP lists) and MAIL (domain
    /// lists), run in the background, and the verdict is awaited at RCPT, within the
    /// session's DNS time budget (shared with reverse DNS and the message's sender
    /// checks). Only sessions on the relay listener are checked, not logins (decided at
    /// RCPT) nor `skip_networks`.
    ///
    /// ```no_run
    /// # fn example(verifier: auth_checks::Verifier, stages: smtp_server::Stages) {
    /// use auth_checks::{DnsblFilter, DnsblSettings};
    /// let settings = DnsblSettings {
    ///     mode: auth_checks::Mode::Enforce,
    ///     lists: vec!["zen.spamhaus.org=127.0.0.[2..11]*3".parse().unwrap()],
    ///     ..DnsblSettings::default()
    /// };
    /// let dnsbl = DnsblFilter::new(&verifier, &settings);
    /// let stages = stages
    ///     .connect_layer(dnsbl.connect_layer())
    ///     .mail_layer(dnsbl.mail_layer())
    ///     .rcpt_layer(dnsbl.rcpt_layer())
    ///     .data_layer(dnsbl.data_layer());
    /// # }
    /// ```
    #[derive(Clone, Debug)]
    pub struct DnsblFilter {
        dnsbl: Dnsbl,
        mode: Mode,
        budget: Duration,
        skip: Arc<Vec<IpNetwork>>,
    }

    /// The IP lists' lookups of a connection.
    #[derive(Clone, Debug)]
    struct ClientLookups(Started);

    /// The domain lists' lookups of a transaction.
    #[derive(Clone, Debug)]
    struct DomainLookups(Started);

    impl DnsblFilter {
        /// The filter for `settings`, asking through `verifier`'s resolver and
        /// negative cache, with a DNS time budget of 5 s.
        pub fn new(verifier: &Verifier, settings: &DnsblSettings) -> Self {
            Self {
                dnsbl: Dnsbl::new(verifier, settings.lists.clone(), settings.threshold),
                mode: settings.mode,
                budget: Duration::from_secs(5),
                skip: Arc::default(),
            }
        }

        /// The DNS time budget of a session's defences, all lists and reverse DNS
        /// together: use the sender checks' (`Policy::time_budget`), which it shares
        /// per message.
        pub fn time_budget(mut self, budget: Duration) -> Self {
            self.budget = budget;
            self
        }

        /// Does not check clients from these networks (trusted hosts).
        pub fn skip_networks(mut self, networks: Vec<IpNetwork>) -> Self {
            self.skip = Arc::new(networks);
            self
        }

        /// Counts lookups and verdicts in `stats`.
        pub fn count_into(mut self, stats: Arc<DnsStats>) -> Self {
            self.dnsbl = self.dnsbl.count_into(stats);
            self
        }

        /// Starts the IP lists' lookups.
        pub fn connect_layer(&self) -> Filter<Self> {
            filter(self.clone())
        }

        /// Starts the domain lists' lookups (HELO and sender domains).
        pub fn mail_layer(&self) -> Filter<Self> {
            filter(self.clone())
        }

        /// Awaits the verdict; refuses under `enforce`.
        pub fn rcpt_layer(&self) -> FilterAsync<Self> {
            filter_async(self.clone())
        }

        /// Adds [`HEADER`].
        pub fn data_layer(&self) -> Filter<Self> {
            filter(self.clone())
        }

        /// Whether a session's lookups run: the relay listener, not a trusted network.
        fn looks_up(&self, session: &SessionInfo) -> bool {
            self.mode != Mode::Off
                && !self.dnsbl.lists().is_empty()
                && session.mode == ListenerMode::Relay
                && !self.skip.iter().any(|n| n.contains(session.peer.ip()))
        }
    }

    impl Check<ConnectRequest> for DnsblFilter {
        fn check(&self, request: &mut ConnectRequest) -> Option<Decision> {
            let session = &request.session;
            if self.looks_up(session) {
                Budget::of(&session.connection);
                let until = tokio::time::Instant::now() + self.budget;
                if let Some(started) = self
                    .dnsbl
                    .start_client(session.peer.ip(), until)
                    .into_iter()
                    .next()
                {
                    session.connection.insert(ClientLookups(started));
                }
            }
            None
        }
    }

    impl Check<MailRequest> for DnsblFilter {
        fn check(&self, request: &mut MailRequest) -> Option<Decision> {
            let session = &request.session;
            if !self.looks_up(session) || session.authenticated.is_some() {
                return None;
            }
            let helo = match &session.helo {
                Some(HeloName::Domain(d)) => Some(d.to_string()),
                Some(HeloName::Other(name)) => Some(name.clone()),
                Some(HeloName::Address(_)) | None => None,
            };
            let sender = match &request.from {
                ReversePath::Mailbox(m) => Some(m.domain().to_owned()),
                ReversePath::Null => None,
            };
            let until = tokio::time::Instant::now() + self.budget;
            if let Some(started) = self
                .dnsbl
                .start_domains(helo.as_deref(), sender.as_deref(), until)
                .into_iter()
                .next()
            {
                request.notes.insert(DomainLookups(started));
            }
            None
        }
    }

    impl AsyncCheck<RcptRequest> for DnsblFilter {
        fn check(&self, request: RcptRequest) -> CheckFuture<RcptRequest> {
            let this = self.clone();
            Box::pin(async move {
                let session = &request.session;
                if !this.looks_up(session) || session.authenticated.is_some() {
                    return Ok(Flow::Continue(request));
                }
                let verdict = match request.notes.get::<DnsblVerdict>() {
                    Some(verdict) => verdict,
                    None => {
                        let mut started = Vec::new();
                        started.extend(session.connection.get::<ClientLookups>().map(|c| c.0));
                        started.extend(request.notes.get::<DomainLookups>().map(|d| d.0));
                        let wait =
                            Budget::of(&session.connection).allowance(this.budget, &request.notes);
                        let verdict = this.dnsbl.verdict(&started, wait.until).await;
                        wait.done(&request.notes);
                        let stats = &this.dnsbl.inner.stats;
                        if verdict.listed() {
                            info!(
                                score = verdict.score,
                                threshold = verdict.threshold,
                                lists = %verdict.header_value().replace(";\r\n\t", "; "),
                                enforce = this.mode == Mode::Enforce,
                                "client listed by DNS lists"
                            );
                            stats.count_verdict(if this.mode == Mode::Enforce {
                                VerdictKind::Refused
                            } else {
                                VerdictKind::Tagged
                            });
                        } else {
                            debug!(score = verdict.score, unanswered = ?verdict.unanswered, "DNS lists");
                            stats.count_verdict(VerdictKind::Clean);
                        }
                        request.notes.insert(verdict.clone());
                        verdict
                    }
                };
                if this.mode == Mode::Enforce && verdict.listed() {
                    return Ok(Flow::Decide(Decision::reject::<554>(
                        EnhancedStatus::NOT_AUTHORIZED,
                        verdict.refusal_text(),
                    )));
                }
                Ok(Flow::Continue(request))
            })
        }
    }

    impl Check<DataRequest> for DnsblFilter {
        fn check(&self, request: &mut DataRequest) -> Option<Decision> {
            if let Some(verdict) = request.notes.get::<DnsblVerdict>()
                && !verdict.hits.is_empty()
                && request.session.authenticated.is_none()
            {
                request.prepend_header(HEADER, &verdict.header_value());
            }
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries() {
        let list: DnsList = "zen.test=127.0.0.[2..11]*3".parse().unwrap();
        assert_eq!(list.kind, ListKind::Ip);
        assert_eq!(list.weight, 3);
        let codes = list.codes.unwrap();
        assert!(codes.matches(Ipv4Addr::new(127, 0, 0, 11)));
        assert!(!codes.matches(Ipv4Addr::new(127, 0, 0, 12)));
        let list: DnsList = "domain:Dbl.Test.".parse().unwrap();
        assert_eq!(
            (list.zone.as_str(), list.kind, list.weight),
            ("dbl.test", ListKind::Domain, 1)
        );
        let list: DnsList = "wl.test=127.0.[0..255].[1;3..4]*-5".parse().unwrap();
        assert_eq!(list.to_string(), "wl.test=127.0.[0..255].[1;3..4]*-5");
        let codes = list.codes.unwrap();
        assert!(codes.matches(Ipv4Addr::new(127, 0, 9, 4)));
        assert!(!codes.matches(Ipv4Addr::new(127, 0, 9, 2)));
        for bad in [
            "",
            "zen",
            "zen.test=127.0.0",
            "zen.test=127.0.0.[3..2]",
            "zen.test*x",
            "zen.test=127.0.0.256",
        ] {
            assert!(bad.parse::<DnsList>().is_err(), "{bad}");
        }
    }

    #[test]
    fn query_names() {
        assert_eq!(reversed("192.0.2.1".parse().unwrap()), "1.2.0.192");
        assert_eq!(
            reversed("2001:db8::1".parse().unwrap()),
            "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2"
        );
        assert_eq!(ascii_domain("Example.ORG."), Some("example.org".into()));
        assert_eq!(
            ascii_domain("bücher.example"),
            Some("xn--bcher-kva.example".into())
        );
        assert_eq!(ascii_domain("[192.0.2.1]"), None);
        assert_eq!(ascii_domain("localhost"), None);
        assert!(is_refusal(Ipv4Addr::new(127, 255, 255, 254)));
        assert!(!is_refusal(Ipv4Addr::new(127, 0, 0, 2)));
    }

    #[test]
    fn refusal_names_the_heaviest_list() {
        let hit = |zone: &str, weight| ListHit {
            zone: zone.into(),
            identity: Identity::Client("192.0.2.1".parse().unwrap()),
            answer: Ipv4Addr::new(127, 0, 0, 2),
            weight,
        };
        let verdict = DnsblVerdict {
            score: 3,
            threshold: 1,
            hits: vec![
                hit("a.test", 1),
                hit("b.test", 2),
                hit("wl.test", -1),
                hit("c.test", 2),
            ],
            unanswered: vec![],
        };
        assert!(verdict.listed());
        assert_eq!(
            verdict.refusal_text(),
            "Service unavailable; client [192.0.2.1] blocked using b.test"
        );
    }
}
