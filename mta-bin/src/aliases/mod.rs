//! Aliases and virtual maps (`[aliases]`): an address, or every address of a domain,
//! stands for one or more other addresses, local or remote (forwarding); forwarded mail
//! leaves with an SRS envelope sender ([`srs`]) or the original one.
//!
//! ```text
//!  RCPT TO:<sales@example.org>       DATA (last filter before the queue)       delivery
//!  AliasRecipients: known? ──250──▶  ExpandAliases: sales → alice, carol@far ─▶ alice: Maildir
//!    loop / too deep: 550 5.4.6         ORCPT=rfc822;sales@example.org           carol@far: remote,
//!    unknown target:  550 5.1.1         SRS0=…@srs_domain → the original sender  MAIL FROM:<SRS0=…>
//! ```
//!
//! Lookup of an address in a local domain, in this order (as Postfix's virtual maps):
//! 1. an entry for the address itself;
//! 2. a mailbox (an account, `[local] mailboxes`, anything with `accept_any_user`,
//!    `postmaster` and `abuse`);
//! 3. with a sub-address (`user+tag@`): an entry for `user@`, then the mailbox `user@`.
//!    The tag follows to the targets of that entry that are plain local mailboxes
//!    (`bob+news@` with `bob → robert@` reaches `robert+news@`, so `robert`'s folder
//!    rules apply), and is dropped for remote targets and other aliases;
//! 4. the `@domain` entry: an address target is a catch-all, a `@other` target a domain
//!    alias (the same local part at `other`).
//!
//! Expansion is recursive, up to `max_depth` levels. An address among its own targets
//! is final (`"bob@x" = ["bob@x", "archive@x"]` keeps a copy in bob's mailbox); a
//! target already being expanded above is a loop and adds nothing; when nothing is
//! left, the address is refused (`550 5.4.6`). The results are de-duplicated without
//! regard to case.

pub mod srs;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use smtp_proto::{
    EnhancedStatus, ForwardPath, Host, Mailbox, OriginalRecipient, RcptParameters, Recipient,
};
use smtp_server::filters::{DomainSet, LocalRecipients};
use smtp_server::{Check, DataRequest, Decision, RcptRequest};

use crate::config::{Config, ForwardSender};

pub use srs::{Srs, SrsError};

/// The local part used to look at what a `@domain` entry does (by `mta check-config`).
const PROBE: &str = "mta-alias-check";

/// Why an address does not expand.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AliasError {
    /// A local address that is neither a mailbox nor an alias (the address).
    UnknownRecipient(String),
    /// Every way out of the address leads back into it (the cycle, first address
    /// repeated at the end).
    Loop(Vec<String>),
    /// More than `max_depth` levels (the chain that went too deep).
    TooDeep(Vec<String>),
    /// More than `max_expansion` addresses.
    TooMany(usize),
    /// An entry that is not an address or `@domain`, or not in a local domain.
    BadEntry {
        /// The entry's key.
        key: String,
        /// What is wrong.
        reason: String,
    },
}

impl std::fmt::Display for AliasError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::UnknownRecipient(a) => write!(f, "{a}: neither a mailbox nor an alias"),
            Self::Loop(cycle) => write!(f, "alias loop: {}", cycle.join(" → ")),
            Self::TooDeep(chain) => write!(f, "too many alias levels: {}", chain.join(" → ")),
            Self::TooMany(n) => write!(f, "more than {n} addresses in the expansion"),
            Self::BadEntry { key, reason } => write!(f, "{key:?}: {reason}"),
        }
    }
}

impl std::error::Error for AliasError {}

impl AliasError {
    /// The answer to RCPT for an address that does not expand: `550 5.1.1` for an
    /// unknown one (what the local-recipient check says), `550 5.4.6` for a loop or
    /// too many levels, `550 5.5.3` for too many addresses.
    pub fn decision(&self) -> Decision {
        match self {
            Self::UnknownRecipient(_) | Self::BadEntry { .. } => Decision::reject::<550>(
                EnhancedStatus::BAD_DESTINATION_MAILBOX,
                "User unknown in local recipient table",
            ),
            Self::Loop(_) => Decision::reject::<550>(EnhancedStatus::ROUTING_LOOP, "Alias loop"),
            Self::TooDeep(_) => {
                Decision::reject::<550>(EnhancedStatus::ROUTING_LOOP, "Too many alias levels")
            }
            Self::TooMany(_) => Decision::reject::<550>(
                EnhancedStatus::new(5, 5, 3).unwrap_or(EnhancedStatus::PROTOCOL_ERROR),
                "Too many recipients in the alias expansion",
            ),
        }
    }
}

/// One target of an entry.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Target {
    /// An address, as written.
    Address(String),
    /// `@domain`: the same local part at this domain.
    Domain(String),
}

impl Target {
    fn parse(text: &str) -> Result<Self, String> {
        match text.strip_prefix('@') {
            Some(domain) => {
                Mailbox::parse(&format!("x@{domain}"))
                    .map_err(|e| format!("{text:?} is no @domain ({e})"))?;
                Ok(Self::Domain(domain.to_ascii_lowercase()))
            }
            None => {
                Mailbox::parse(text).map_err(|e| format!("{text:?} is no address ({e})"))?;
                Ok(Self::Address(text.to_owned()))
            }
        }
    }
}

/// The result of one lookup.
enum Step {
    /// Not an alias: delivered as it is (a mailbox, or remote).
    Final,
    /// An alias: these addresses.
    Alias(Vec<String>),
    /// A local address that is nothing.
    Unknown,
}

/// The alias table of a configuration, with what it needs to know about mailboxes, and
/// the SRS secret to reverse bounces to forwarded mail.
///
/// ```
/// use mta_bin::aliases::Aliases;
/// use smtp_server::filters::DomainSet;
/// let aliases = Aliases::new(
///     [
///         ("sales@example.org", vec!["alice@example.org", "carol@partner.test"]),
///         ("@old.example", vec!["@example.org"]),
///     ],
///     DomainSet::new(["example.org", "old.example"]),
///     Some(["alice@example.org"].into_iter().map(String::from).collect()),
/// )
/// .unwrap();
/// assert_eq!(
///     aliases.expand("Sales@example.org").unwrap(),
///     ["alice@example.org", "carol@partner.test"]
/// );
/// assert_eq!(aliases.expand("alice@old.example").unwrap(), ["alice@example.org"]);
/// assert!(aliases.expand("nobody@example.org").is_err());
/// ```
#[derive(Clone, Debug)]
pub struct Aliases {
    entries: HashMap<String, Vec<Target>>,
    local_domains: DomainSet,
    /// Lower-cased full addresses; `None`: any local part is a mailbox.
    mailboxes: Option<Arc<HashSet<String>>>,
    delimiters: String,
    max_depth: usize,
    max_expansion: usize,
    srs: Option<Srs>,
    /// Where the bare `<Postmaster>` goes (`postmaster@` the first local domain).
    postmaster: Option<String>,
}

impl Aliases {
    /// Default `max_depth`.
    pub const MAX_DEPTH: usize = 10;
    /// Default `max_expansion` (as Postfix's `virtual_alias_expansion_limit`).
    pub const MAX_EXPANSION: usize = 1000;

    /// A table of `entries` (key: an address or `@domain` in one of `local_domains`;
    /// targets: addresses or `@domain`s), for domains whose `mailboxes` are these
    /// lower-cased addresses (`None`: any local part). No sub-addressing, no SRS.
    pub fn new<K, T>(
        entries: impl IntoIterator<Item = (K, Vec<T>)>,
        local_domains: DomainSet,
        mailboxes: Option<HashSet<String>>,
    ) -> Result<Self, AliasError>
    where
        K: AsRef<str>,
        T: AsRef<str>,
    {
        let mut table = Self {
            entries: HashMap::new(),
            local_domains,
            mailboxes: mailboxes.map(Arc::new),
            delimiters: String::new(),
            max_depth: Self::MAX_DEPTH,
            max_expansion: Self::MAX_EXPANSION,
            srs: None,
            postmaster: None,
        };
        for (key, targets) in entries {
            let (key, targets) = (key.as_ref(), targets);
            let bad = |reason: String| AliasError::BadEntry {
                key: key.to_owned(),
                reason,
            };
            let lookup = table.key_of(key).map_err(bad)?;
            if targets.is_empty() {
                return Err(bad("no target".into()));
            }
            let targets = targets
                .iter()
                .map(|t| Target::parse(t.as_ref()))
                .collect::<Result<Vec<_>, _>>()
                .map_err(bad)?;
            table.entries.entry(lookup).or_default().extend(targets);
        }
        Ok(table)
    }

    /// The table of `config`'s `[aliases]` (`None` without that section): the entries
    /// of `map` and of `file` (read now), the mailboxes of `mailboxes` (as the
    /// local-recipient check has them), and the SRS secret when there is one (see
    /// [`prepare_srs`]; one that cannot be read leaves bounces to SRS addresses
    /// unrecognised, which is what a `sendmail` run by a user without access to it gets).
    pub fn from_config(
        config: &Config,
        mailboxes: Option<&Arc<HashSet<String>>>,
    ) -> anyhow::Result<Option<Self>> {
        let Some(settings) = &config.aliases else {
            return Ok(None);
        };
        let mut entries: Vec<(String, Vec<String>)> = settings
            .map
            .iter()
            .map(|(k, v)| (k.clone(), v.to_vec()))
            .collect();
        if let Some(file) = &settings.file {
            let written = read_file(file).map_err(|problems| {
                anyhow::anyhow!(
                    "[aliases] file {}: {}",
                    file.display(),
                    problems
                        .iter()
                        .map(|p| p.message.as_str())
                        .collect::<Vec<_>>()
                        .join("; ")
                )
            })?;
            entries.extend(written.into_iter().map(|w| (w.key, w.targets)));
        }
        let mut table =
            Self::new(entries, DomainSet::new(&config.local.domains), None).context("[aliases]")?;
        table.mailboxes = mailboxes.cloned();
        table.delimiters = config.local.recipient_delimiter.as_str().to_owned();
        table.max_depth = settings.max_depth;
        table.max_expansion = settings.max_expansion;
        table.postmaster = config
            .local
            .domains
            .first()
            .map(|d| format!("postmaster@{d}"));
        if settings.forward_sender == ForwardSender::Srs
            && let Some(domain) = srs_domain(config)
        {
            match srs::read_secret(&srs_secret_file(config)) {
                Ok(secret) => table.srs = Some(Srs::new(&secret, &domain)),
                Err(e) => {
                    tracing::debug!(error = %e, "no SRS secret: SRS addresses are not reversed")
                }
            }
        }
        Ok(Some(table))
    }

    /// With `delimiters` (`[local] recipient_delimiter`): `user+tag@` is looked up as
    /// `user@` when it is no entry and no mailbox itself.
    pub fn recipient_delimiter(mut self, delimiters: &str) -> Self {
        delimiters.clone_into(&mut self.delimiters);
        self
    }

    /// At most `levels` levels of aliases (default [`Aliases::MAX_DEPTH`]).
    pub fn max_depth(mut self, levels: usize) -> Self {
        self.max_depth = levels;
        self
    }

    /// At most `addresses` in one expansion (default [`Aliases::MAX_EXPANSION`]).
    pub fn max_expansion(mut self, addresses: usize) -> Self {
        self.max_expansion = addresses;
        self
    }

    /// Recognises (and reverses) the SRS addresses of `srs` at RCPT and DATA.
    pub fn srs(mut self, srs: Srs) -> Self {
        self.srs = Some(srs);
        self
    }

    /// What `address` stands for: the final addresses (mailboxes and remote
    /// addresses), de-duplicated without regard to case, in the order found. An address
    /// that is no alias gives itself (a remote one, a mailbox); an unknown local one,
    /// a loop with no way out, too many levels or addresses give an error.
    pub fn expand(&self, address: &str) -> Result<Vec<String>, AliasError> {
        let mut walk = Walk::default();
        self.walk(address, &mut walk)?;
        if walk.out.is_empty() {
            return Err(AliasError::Loop(walk.cycle.unwrap_or_else(|| {
                vec![address.to_lowercase(), address.to_lowercase()]
            })));
        }
        Ok(walk.out)
    }

    /// Whether `address` is an alias (an entry, or caught by a `@domain` entry).
    pub fn is_alias(&self, address: &str) -> bool {
        matches!(self.step(address), Step::Alias(_))
    }

    /// For an SRS address at the SRS domain: the address it stands for, or why it is
    /// no good; `None` for any other address (or without SRS).
    pub fn reverse_srs(&self, mailbox: &Mailbox) -> Option<Result<String, SrsError>> {
        let srs = self.srs.as_ref()?;
        let Host::Domain(domain) = mailbox.host() else {
            return None;
        };
        let local = mailbox.local_part_unquoted();
        (domain.eq_ignore_ascii_case(srs.domain()) && Srs::is_srs(&local))
            .then(|| srs.reverse(&local, srs::today()))
    }

    /// Where a delivery status notification to `sender` goes: the final addresses of
    /// an alias, the original sender of one of our SRS addresses (a message that came
    /// with one as its sender); nothing (the sender itself) for any other address, or
    /// one that does not expand (the notification then meets what a message to it
    /// would). Senders were not expanded when their message was received: only
    /// recipients are.
    ///
    /// ```
    /// # fn f(aliases: &mta_bin::aliases::Aliases) {
    /// let to = aliases.notification_recipients("sales@example.org");
    /// # }
    /// ```
    pub fn notification_recipients(&self, sender: &str) -> Vec<String> {
        let Ok(mailbox) = Mailbox::parse(sender) else {
            return Vec::new();
        };
        if let Some(reversed) = self.reverse_srs(&mailbox) {
            return reversed.map(|original| vec![original]).unwrap_or_default();
        }
        if !self.is_alias(sender) {
            return Vec::new();
        }
        self.expand(sender).unwrap_or_default()
    }

    /// [`Aliases::notification_recipients`], for
    /// [`mail_queue::Queue::route_notifications`].
    pub fn notification_route(self: Arc<Self>) -> mail_queue::NotificationRoute {
        Arc::new(move |sender: &str| self.notification_recipients(sender))
    }

    /// The rcpt-stage check (in place of `LocalRecipients`, which it does as well).
    pub fn rcpt_check(self: &Arc<Self>) -> AliasRecipients {
        AliasRecipients(Arc::clone(self))
    }

    /// The data-stage filter that replaces aliases by their expansion.
    pub fn data_check(self: &Arc<Self>) -> ExpandAliases {
        ExpandAliases(Arc::clone(self))
    }

    /// The lookup key of an entry: `local@domain` (local part unquoted) or `@domain`,
    /// lower-cased, with an address literal as `[192.0.2.1]` / `[ipv6:2001:db8::1]`;
    /// an error when it is none, or not in a local domain.
    fn key_of(&self, key: &str) -> Result<String, String> {
        let (mailbox, catch_all) = match key.strip_prefix('@') {
            Some(domain) => (Mailbox::parse(&format!("{PROBE}@{domain}")), true),
            None => (Mailbox::parse(key), false),
        };
        let mailbox = mailbox.map_err(|e| format!("not an address or @domain ({e})"))?;
        let domain = self
            .local_domain(&mailbox)
            .ok_or_else(|| format!("{} is not one of [local] domains", mailbox.domain()))?;
        Ok(if catch_all {
            format!("@{domain}")
        } else {
            format!("{}@{domain}", mailbox.local_part_unquoted().to_lowercase())
        })
    }

    /// The domain of `mailbox` in key form, when it is local.
    fn local_domain(&self, mailbox: &Mailbox) -> Option<String> {
        match mailbox.host() {
            Host::Domain(d) if self.local_domains.contains(d) => Some(d.to_ascii_lowercase()),
            Host::Address(ip) if self.local_domains.contains_address(ip) => Some(match ip {
                std::net::IpAddr::V4(v4) => format!("[{v4}]"),
                std::net::IpAddr::V6(v6) => format!("[ipv6:{v6}]"),
            }),
            _ => None,
        }
    }

    /// Whether `local@domain` (key form) is a mailbox.
    fn is_mailbox_key(&self, local: &str, domain: &str) -> bool {
        self.mailboxes
            .as_ref()
            .is_none_or(|m| m.contains(&format!("{local}@{domain}")))
    }

    /// One lookup of `address` (steps 1 to 4 of the module's documentation).
    fn step(&self, address: &str) -> Step {
        let Ok(mailbox) = Mailbox::parse(address) else {
            return Step::Unknown;
        };
        let Some(domain) = self.local_domain(&mailbox) else {
            return Step::Final;
        };
        let local = mailbox.local_part_unquoted().to_lowercase();
        if let Some(targets) = self.entries.get(&format!("{local}@{domain}")) {
            return Step::Alias(self.targets(targets, &mailbox, None));
        }
        if local == "postmaster" || local == "abuse" || self.is_mailbox_key(&local, &domain) {
            return Step::Final;
        }
        if let Some((user, tag)) = LocalRecipients::split_subaddress(&local, &self.delimiters) {
            if let Some(targets) = self.entries.get(&format!("{user}@{domain}")) {
                let delimiter = &local[user.len()..local.len() - tag.len()];
                let tag = format!("{delimiter}{tag}");
                return Step::Alias(self.targets(targets, &mailbox, Some(&tag)));
            }
            if self.is_mailbox_key(user, &domain) {
                return Step::Final;
            }
        }
        match self.entries.get(&format!("@{domain}")) {
            Some(targets) => Step::Alias(self.targets(targets, &mailbox, None)),
            None => Step::Unknown,
        }
    }

    /// The addresses `targets` make of `mailbox`; `tag` (with its delimiter) is added
    /// to the targets that are plain local mailboxes.
    fn targets(&self, targets: &[Target], mailbox: &Mailbox, tag: Option<&str>) -> Vec<String> {
        targets
            .iter()
            .map(|t| match t {
                Target::Domain(domain) => format!("{}@{domain}", mailbox.local_part()),
                Target::Address(address) => match tag {
                    Some(tag) => self.tagged(address, tag),
                    None => address.clone(),
                },
            })
            .collect()
    }

    /// `address` with `tag` after its local part when it is a local mailbox that is no
    /// alias and has no tag of its own; else `address`.
    fn tagged(&self, address: &str, tag: &str) -> String {
        let Ok(m) = Mailbox::parse(address) else {
            return address.to_owned();
        };
        let Some(domain) = self.local_domain(&m) else {
            return address.to_owned();
        };
        let local = m.local_part();
        let key = local.to_lowercase();
        let plain = !local.starts_with('"')
            && LocalRecipients::split_subaddress(&key, &self.delimiters).is_none()
            && !self.entries.contains_key(&format!("{key}@{domain}"))
            && self.is_mailbox_key(&key, &domain);
        let tagged = format!("{local}{tag}@{}", m.domain());
        if plain && Mailbox::parse(&tagged).is_ok() {
            tagged
        } else {
            address.to_owned()
        }
    }

    /// Whether `address` is delivered as it is when it is among its own targets: a
    /// remote address, or a local mailbox (directly or as a sub-address).
    fn is_mailbox(&self, address: &str) -> bool {
        let Ok(mailbox) = Mailbox::parse(address) else {
            return false;
        };
        let Some(domain) = self.local_domain(&mailbox) else {
            return true;
        };
        let local = mailbox.local_part_unquoted().to_lowercase();
        local == "postmaster"
            || local == "abuse"
            || self.is_mailbox_key(&local, &domain)
            || LocalRecipients::split_subaddress(&local, &self.delimiters)
                .is_some_and(|(user, _)| self.is_mailbox_key(user, &domain))
    }

    fn walk(&self, address: &str, walk: &mut Walk) -> Result<(), AliasError> {
        let key = address.to_lowercase();
        match self.step(address) {
            Step::Final => walk.push(address, self.max_expansion),
            Step::Unknown => Err(AliasError::UnknownRecipient(address.to_owned())),
            Step::Alias(_) if walk.done.contains(&key) => Ok(()),
            Step::Alias(targets) => {
                if walk.stack.len() >= self.max_depth {
                    let mut chain = walk.stack.clone();
                    chain.push(key);
                    return Err(AliasError::TooDeep(chain));
                }
                walk.stack.push(key.clone());
                for target in targets {
                    let target_key = target.to_lowercase();
                    if target_key == key {
                        if !self.is_mailbox(&target) {
                            return Err(AliasError::UnknownRecipient(target));
                        }
                        walk.push(&target, self.max_expansion)?;
                    } else if let Some(i) = walk.stack.iter().position(|s| *s == target_key) {
                        if walk.cycle.is_none() {
                            let mut cycle = walk.stack[i..].to_vec();
                            cycle.push(target_key);
                            walk.cycle = Some(cycle);
                        }
                    } else {
                        self.walk(&target, walk)?;
                    }
                }
                walk.stack.pop();
                walk.done.insert(key);
                Ok(())
            }
        }
    }

    /// The recipients `recipient` becomes: itself when it is no alias (or does not
    /// expand any more), else each address of its expansion with its NOTIFY and an
    /// ORCPT naming it (its own, when it had one).
    fn rewrite(&self, recipient: Recipient) -> Vec<Recipient> {
        let address = match &recipient.to {
            ForwardPath::Postmaster => match &self.postmaster {
                Some(p) if self.entries.contains_key(&p.to_lowercase()) => p.clone(),
                _ => return vec![recipient],
            },
            ForwardPath::Mailbox(m) => m.to_string(),
        };
        let expanded = match &recipient.to {
            ForwardPath::Mailbox(m) => match self.reverse_srs(m) {
                Some(Ok(original)) => Ok(vec![original]),
                Some(Err(e)) => {
                    tracing::warn!(recipient = %address, error = %e, "SRS address no longer valid; left as it is");
                    return vec![recipient];
                }
                None => self.expand(&address),
            },
            ForwardPath::Postmaster => self.expand(&address),
        };
        let targets = match expanded {
            Ok(targets) if targets.len() == 1 && targets[0] == address => {
                return vec![recipient];
            }
            Ok(targets) => targets,
            Err(e) => {
                // Checked at RCPT: the table changed since (a reload). The address is
                // kept, and delivery says what becomes of it.
                tracing::warn!(recipient = %address, error = %e, "alias no longer expands; left as it is");
                return vec![recipient];
            }
        };
        let orcpt = recipient.params.orcpt.clone().unwrap_or(OriginalRecipient {
            addr_type: if address.is_ascii() {
                "rfc822"
            } else {
                "utf-8"
            }
            .into(),
            address,
        });
        let out: Vec<Recipient> = targets
            .iter()
            .filter_map(|t| {
                Some(Recipient {
                    to: ForwardPath::Mailbox(Mailbox::parse(t).ok()?),
                    params: RcptParameters {
                        notify: recipient.params.notify,
                        orcpt: Some(orcpt.clone()),
                    },
                })
            })
            .collect();
        if out.is_empty() { vec![recipient] } else { out }
    }
}

/// The state of one expansion.
#[derive(Default)]
struct Walk {
    /// The aliases being expanded, outermost first (lower-cased).
    stack: Vec<String>,
    /// The final addresses.
    out: Vec<String>,
    /// `out`, lower-cased.
    seen: HashSet<String>,
    /// The aliases expanded completely (their addresses are in `out`).
    done: HashSet<String>,
    /// The first cycle met.
    cycle: Option<Vec<String>>,
}

impl Walk {
    fn push(&mut self, address: &str, max: usize) -> Result<(), AliasError> {
        if self.seen.insert(address.to_lowercase()) {
            if self.out.len() >= max {
                return Err(AliasError::TooMany(max));
            }
            self.out.push(address.to_owned());
        }
        Ok(())
    }
}

/// The rcpt-stage check of local recipients with aliases: an alias (or an address a
/// `@domain` entry catches) that expands is a known recipient, whatever its targets
/// (a remote target is our forwarding, not relaying); a loop or too many levels get
/// `550 5.4.6`, an unknown target or address `550 5.1.1` (as `LocalRecipients`, whose
/// behaviour it keeps for everything else). An SRS address at the SRS domain is
/// accepted when its hash is ours and it has not expired, else `550 5.1.1`.
#[derive(Clone, Debug)]
pub struct AliasRecipients(Arc<Aliases>);

impl Check<RcptRequest> for AliasRecipients {
    fn check(&self, req: &mut RcptRequest) -> Option<Decision> {
        let ForwardPath::Mailbox(m) = &req.to else {
            return None;
        };
        if let Some(reversed) = self.0.reverse_srs(m) {
            return reversed.err().map(|e| {
                tracing::info!(recipient = %m, error = %e, "SRS address refused");
                Decision::reject::<550>(
                    EnhancedStatus::BAD_DESTINATION_MAILBOX,
                    "Invalid or expired return address",
                )
            });
        }
        match self.0.expand(&m.to_string()) {
            Ok(_) => None,
            Err(e) => {
                if !matches!(e, AliasError::UnknownRecipient(_)) {
                    tracing::warn!(recipient = %m, error = %e, "alias refused");
                }
                Some(e.decision())
            }
        }
    }
}

/// The data-stage filter that rewrites the envelope: each alias recipient becomes the
/// addresses it stands for (with its NOTIFY, and ORCPT naming it, RFC 3461 §6.2), each
/// SRS address the address it stands for; the result has each address once. It runs
/// last, right before the message is queued: the filters before it (milters, policy)
/// see the recipients as the client gave them, as Postfix's smtpd does.
#[derive(Clone, Debug)]
pub struct ExpandAliases(Arc<Aliases>);

impl Check<DataRequest> for ExpandAliases {
    fn check(&self, req: &mut DataRequest) -> Option<Decision> {
        let recipients = std::mem::take(&mut req.envelope.recipients);
        let mut seen = HashSet::new();
        for recipient in recipients {
            for r in self.0.rewrite(recipient) {
                let key = match &r.to {
                    ForwardPath::Postmaster => "postmaster".to_owned(),
                    ForwardPath::Mailbox(m) => m.to_string().to_lowercase(),
                };
                if seen.insert(key) {
                    req.envelope.recipients.push(r);
                }
            }
        }
        None
    }
}

/// The envelope sender of forwarded mail, for remote delivery (`forward_sender =
/// "srs"`): a recipient whose ORCPT names an address in a local domain (it came from
/// an alias) gets the SRS form of a sender that is not in a local domain.
#[derive(Clone, Debug)]
pub struct Forwarding {
    srs: Srs,
    local_domains: DomainSet,
}

impl Forwarding {
    /// Rewriting with `srs` for mail forwarded from `local_domains`.
    pub fn new(srs: Srs, local_domains: DomainSet) -> Self {
        Self { srs, local_domains }
    }

    /// The sender to use for a recipient with `orcpt` of a message from `from` (empty:
    /// the null sender); `None`: the message's own.
    ///
    /// ```
    /// use mta_bin::aliases::{Forwarding, Srs};
    /// use smtp_server::filters::DomainSet;
    /// let f = Forwarding::new(Srs::new(b"k", "mx.example.org"), DomainSet::new(["example.org"]));
    /// let orcpt = ("rfc822".to_owned(), "sales@example.org".to_owned());
    /// let srs = f.sender("alice@origin.test", Some(&orcpt)).unwrap();
    /// assert!(srs.starts_with("SRS0=") && srs.ends_with("=origin.test=alice@mx.example.org"));
    /// assert_eq!(f.sender("bob@example.org", Some(&orcpt)), None); // our own sender
    /// assert_eq!(f.sender("", Some(&orcpt)), None); // a bounce
    /// assert_eq!(f.sender("alice@origin.test", None), None); // not forwarded
    /// ```
    pub fn sender(&self, from: &str, orcpt: Option<&(String, String)>) -> Option<String> {
        let (_, original) = orcpt?;
        let forwarded = original
            .rsplit_once('@')
            .is_some_and(|(_, d)| self.is_local(d));
        let (_, from_domain) = from.rsplit_once('@')?;
        if !forwarded || self.is_local(from_domain) {
            return None;
        }
        let rewritten = self.srs.forward(from, srs::today())?;
        // A sender whose local part cannot be carried (a quoted one) is kept.
        Mailbox::parse(&rewritten).is_ok().then_some(rewritten)
    }

    fn is_local(&self, domain: &str) -> bool {
        match smtp_server::filters::literal_address(domain) {
            Some(ip) => self.local_domains.contains_address(ip),
            None => self.local_domains.contains(domain),
        }
    }
}

/// The domain of SRS addresses: `[aliases] srs_domain`, else `hostname` when it is a
/// local domain, else the first local domain; `None` without local domains.
pub fn srs_domain(config: &Config) -> Option<String> {
    let settings = config.aliases.as_ref()?;
    if let Some(domain) = &settings.srs_domain {
        return Some(domain.clone());
    }
    let local = DomainSet::new(&config.local.domains);
    if local.contains(&config.hostname) {
        return Some(config.hostname.clone());
    }
    config
        .local
        .domains
        .iter()
        .find(|d| !d.starts_with('['))
        .cloned()
}

/// The SRS secret's file: `[aliases] srs_secret_file`, else `srs.key` in the queue
/// directory.
pub fn srs_secret_file(config: &Config) -> PathBuf {
    config
        .aliases
        .as_ref()
        .and_then(|a| a.srs_secret_file.clone())
        .unwrap_or_else(|| config.queue.path.join("srs.key"))
}

/// For `mta serve`: with `forward_sender = "srs"`, reads the SRS secret, making the
/// default one (32 random bytes, mode 0600, kept across restarts) when it is missing;
/// the rewriting remote delivery uses. `None` without `[aliases]`, with `keep`, or
/// without a local domain.
pub fn prepare_srs(config: &Config) -> anyhow::Result<Option<Forwarding>> {
    let Some(settings) = &config.aliases else {
        return Ok(None);
    };
    if settings.forward_sender != ForwardSender::Srs {
        return Ok(None);
    }
    let Some(domain) = srs_domain(config) else {
        return Ok(None);
    };
    let path = srs_secret_file(config);
    let secret = if settings.srs_secret_file.is_some() {
        srs::read_secret(&path)
    } else {
        srs::read_or_create_secret(&path)
    }
    .with_context(|| format!("[aliases] SRS secret {}", path.display()))?;
    Ok(Some(Forwarding::new(
        Srs::new(&secret, &domain),
        DomainSet::new(&config.local.domains),
    )))
}

/// One entry as written, with where.
#[derive(Clone, Debug)]
pub struct Written {
    /// The key (an address or `@domain`).
    pub key: String,
    /// The targets.
    pub targets: Vec<String>,
    /// Where it is.
    pub place: Place,
}

/// Where a problem of `[aliases]` is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Place {
    /// A key of `[aliases]` (`max_depth`, `srs_domain`, `file`...).
    Key(&'static str),
    /// An entry of `[aliases.map]` (its key).
    Map(String),
    /// A line of the aliases file (`None`: the file as a whole).
    File(PathBuf, Option<usize>),
}

impl Place {
    /// `[aliases.map] "key"`, `[aliases] file PATH line N "key"`, `[aliases] max_depth`.
    fn describe(&self, key: Option<&str>) -> String {
        let key = key.map(|k| format!(" {k:?}")).unwrap_or_default();
        match self {
            Self::Key(name) => format!("[aliases] {name}"),
            Self::Map(_) => format!("[aliases.map]{key}"),
            Self::File(path, Some(line)) => {
                format!("[aliases] file {} line {line}{key}", path.display())
            }
            Self::File(path, None) => format!("[aliases] file {}{key}", path.display()),
        }
    }
}

/// A problem of `[aliases]` for `mta check-config`.
#[derive(Clone, Debug)]
pub struct Problem {
    /// Where.
    pub place: Place,
    /// What, in a sentence.
    pub message: String,
}

/// Reads an aliases file: TOML whose top-level keys are the entries (`"sales@x" =
/// ["a@x", "b@y"]` or `"info@x" = "a@x"`). Every problem is told, with its line.
pub fn read_file(path: &Path) -> Result<Vec<Written>, Vec<Problem>> {
    let whole = |message: String| {
        vec![Problem {
            place: Place::File(path.to_owned(), None),
            message,
        }]
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| whole(format!("[aliases] file {}: {e}", path.display())))?;
    let line_of = |offset: usize| text[..offset.min(text.len())].matches('\n').count() + 1;
    let table = toml::de::DeTable::parse(&text).map_err(|e| {
        let place = Place::File(path.to_owned(), e.span().map(|s| line_of(s.start)));
        vec![Problem {
            message: format!(
                "{}: {}",
                place.describe(None),
                e.message().trim_end().replace('\n', " ")
            ),
            place,
        }]
    })?;
    let mut entries: Vec<_> = table.get_ref().iter().collect();
    entries.sort_by_key(|(k, _)| k.span().start);
    let mut written = Vec::new();
    let mut problems = Vec::new();
    for (key, value) in entries {
        let place = Place::File(path.to_owned(), Some(line_of(key.span().start)));
        match targets_of(value.get_ref()) {
            Some(targets) => written.push(Written {
                key: key.get_ref().to_string(),
                targets,
                place,
            }),
            None => problems.push(Problem {
                message: format!(
                    "{}: give an address or a list of addresses (\"a@example.org\", \"@example.org\")",
                    place.describe(Some(key.get_ref()))
                ),
                place,
            }),
        }
    }
    if problems.is_empty() {
        Ok(written)
    } else {
        Err(problems)
    }
}

/// A string or an array of strings.
fn targets_of(value: &toml::de::DeValue<'_>) -> Option<Vec<String>> {
    use toml::de::DeValue;
    match value {
        DeValue::String(s) => Some(vec![s.to_string()]),
        DeValue::Array(items) => items
            .iter()
            .map(|i| match i.get_ref() {
                DeValue::String(s) => Some(s.to_string()),
                _ => None,
            })
            .collect(),
        _ => None,
    }
}

/// The problems of `config`'s `[aliases]` that the file alone shows (for the checks of
/// `Config::parse`): limits, `srs_domain`, and the entries of `[aliases.map]`.
pub fn check_settings(config: &Config) -> Vec<Problem> {
    let Some(settings) = &config.aliases else {
        return Vec::new();
    };
    let mut problems = Vec::new();
    for (key, zero) in [
        ("max_depth", settings.max_depth == 0),
        ("max_expansion", settings.max_expansion == 0),
    ] {
        if zero {
            problems.push(Problem {
                place: Place::Key(key),
                message: format!("[aliases] {key}: must be more than 0"),
            });
        }
    }
    let local = DomainSet::new(&config.local.domains);
    if let Some(domain) = &settings.srs_domain
        && !local.contains(domain)
    {
        problems.push(Problem {
            place: Place::Key("srs_domain"),
            message: format!(
                "[aliases] srs_domain {domain:?}: must be one of [local] domains (bounces to forwarded mail come back to it)"
            ),
        });
    }
    let written: Vec<Written> = settings
        .map
        .iter()
        .map(|(key, targets)| Written {
            key: key.clone(),
            targets: targets.to_vec(),
            place: Place::Map(key.clone()),
        })
        .collect();
    problems.extend(check_entries(&written, &local));
    problems
}

/// The problems of each entry on its own: key and targets are addresses or
/// `@domain`s, keys in local domains, at least one target.
fn check_entries(written: &[Written], local: &DomainSet) -> Vec<Problem> {
    let empty = Aliases {
        entries: HashMap::new(),
        local_domains: local.clone(),
        mailboxes: None,
        delimiters: String::new(),
        max_depth: 1,
        max_expansion: 1,
        srs: None,
        postmaster: None,
    };
    let mut problems = Vec::new();
    for w in written {
        let mut complain = |message: String| {
            problems.push(Problem {
                place: w.place.clone(),
                message: format!("{}: {message}", w.place.describe(Some(&w.key))),
            });
        };
        if let Err(e) = empty.key_of(&w.key) {
            complain(e);
        }
        if w.targets.is_empty() {
            complain("give at least one target".into());
        }
        for t in &w.targets {
            if let Err(e) = Target::parse(t) {
                complain(e);
            }
        }
    }
    problems
}

/// What only reading the aliases file (and the SRS secret) tells, and the whole
/// table's loops and depth, for `mta check-config`: errors, then warnings (targets
/// that are neither mailboxes nor aliases).
pub fn check_table(
    config: &Config,
    mailboxes: Option<&Arc<HashSet<String>>>,
) -> (Vec<Problem>, Vec<String>) {
    let Some(settings) = &config.aliases else {
        return (Vec::new(), Vec::new());
    };
    let local = DomainSet::new(&config.local.domains);
    let mut errors = Vec::new();
    let mut written: Vec<Written> = settings
        .map
        .iter()
        .map(|(key, targets)| Written {
            key: key.clone(),
            targets: targets.to_vec(),
            place: Place::Map(key.clone()),
        })
        .collect();
    if let Some(file) = &settings.file {
        match read_file(file) {
            Ok(from_file) => {
                let bad = check_entries(&from_file, &local);
                if !bad.is_empty() {
                    errors.extend(bad);
                    return (errors, Vec::new());
                }
                written.extend(from_file);
            }
            Err(problems) => return (problems, Vec::new()),
        }
    }
    if let Some(path) = &settings.srs_secret_file
        && settings.forward_sender == ForwardSender::Srs
        && let Err(e) = srs::read_secret(path)
    {
        errors.push(Problem {
            place: Place::Key("srs_secret_file"),
            message: format!("[aliases] srs_secret_file {}: {e}", path.display()),
        });
    }
    let Ok(table) = Aliases::new(
        written.iter().map(|w| (w.key.as_str(), w.targets.clone())),
        local,
        None,
    ) else {
        // Told by the checks of each entry.
        return (errors, Vec::new());
    };
    let table = Aliases {
        mailboxes: mailboxes.cloned(),
        delimiters: config.local.recipient_delimiter.as_str().to_owned(),
        max_depth: settings.max_depth.max(1),
        max_expansion: settings.max_expansion.max(1),
        ..table
    };
    let mut warnings = Vec::new();
    let mut loops_told = BTreeSet::new();
    for w in &written {
        let catch_all = w.key.starts_with('@');
        let probe = if catch_all {
            format!("{PROBE}{}", w.key)
        } else {
            w.key.clone()
        };
        let name = w.place.describe(Some(&w.key));
        match table.expand(&probe) {
            Ok(_) => {}
            Err(AliasError::Loop(cycle)) => {
                let mut members = cycle.clone();
                members.sort();
                members.dedup();
                if loops_told.insert(members) {
                    errors.push(Problem {
                        place: w.place.clone(),
                        message: format!(
                            "{name}: alias loop with no address outside it: {}",
                            cycle.join(" → ")
                        ),
                    });
                }
            }
            Err(AliasError::TooDeep(chain)) => errors.push(Problem {
                place: w.place.clone(),
                message: format!(
                    "{name}: more than max_depth ({}) levels of aliases: {}",
                    table.max_depth,
                    chain.join(" → ")
                ),
            }),
            Err(AliasError::TooMany(n)) => errors.push(Problem {
                place: w.place.clone(),
                message: format!("{name}: more than max_expansion ({n}) addresses"),
            }),
            Err(AliasError::UnknownRecipient(target)) if !catch_all => warnings.push(format!(
                "{name}: {target} is neither a mailbox nor an alias: mail to {} is refused (550 5.1.1)",
                w.key
            )),
            Err(_) => {}
        }
    }
    (errors, warnings)
}

#[cfg(test)]
mod tests;
