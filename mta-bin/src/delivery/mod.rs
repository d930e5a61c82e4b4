//! The delivery service handed to the queue: local recipients to Maildir, mbox or LMTP,
//! the others to remote servers found by MX (or to a relay host).

mod lmtp;
mod maildir;
pub mod maildir_sync;
mod mbox;
pub mod quota;
mod remote;
mod shaping;
mod slots;
mod sts;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use mail_queue::{BoxError, DeliveryReport, DeliveryRequest, Outcome};
use smtp_server::filters::{DomainSet, LocalRecipients};

pub use lmtp::{Lmtp, LmtpAddress};
pub use maildir::{LineEndings, Maildir, Recipient, Stored, SubaddressFolder};
pub use maildir_sync::{MaildirSync, Pending, store_then_sync};
pub use mbox::Mbox;
pub use quota::{ByteSize, Grace, Limits, LimitsConfig, QuotaConfig, Quotas, Usage, size_in_name};
pub use remote::{DestinationPolicy, MatchOn, Relay, Remote, RemoteConfig, SenderPool, Source};
pub use shaping::{Rates, Shaping, ShapingConfig, ShapingStats, is_throttling};
pub use slots::{PrioritySlots, Slot};
pub use sts::{StsConfig, TlsReports};

/// Where local mail goes.
#[derive(Debug, Clone)]
pub enum LocalTarget {
    /// Maildirs under a root.
    Maildir(Maildir),
    /// mbox files under a root.
    Mbox(Mbox),
    /// An LMTP server.
    Lmtp(Lmtp),
}

/// Which local target each local recipient goes to: the `[local.targets]` entry of its
/// address (or of the address without its sub-address tag), else of its domain, else
/// the default (`[local] maildir`, `mbox` or `lmtp`).
///
/// ```
/// use mta_bin::delivery::{LineEndings, LocalRoutes, LocalTarget, Maildir, Mbox};
/// let maildir = LocalTarget::Maildir(Maildir::new("/srv/mail".into(), "mx", LineEndings::Lf));
/// let mbox = LocalTarget::Mbox(Mbox::new("/var/spool/mail".into()));
/// let routes = LocalRoutes::new(Some(maildir), "+").with_target("example.net", mbox);
/// assert!(matches!(routes.target("bob@Example.NET"), Some(LocalTarget::Mbox(_))));
/// assert!(matches!(routes.target("bob@example.org"), Some(LocalTarget::Maildir(_))));
/// ```
#[derive(Debug, Clone, Default)]
pub struct LocalRoutes {
    default: Option<LocalTarget>,
    /// By lower-cased address or domain.
    targets: HashMap<String, LocalTarget>,
    delimiters: String,
}

impl LocalRoutes {
    /// Everything to `default`; `delimiters` start a sub-address tag (`[local]
    /// recipient_delimiter`).
    pub fn new(default: Option<LocalTarget>, delimiters: &str) -> Self {
        Self {
            default,
            targets: HashMap::new(),
            delimiters: delimiters.to_owned(),
        }
    }

    /// The routes of the configuration: the default target of `[local]` and the
    /// entries of `[local.targets]`, each Maildir with `[local.quota]`.
    pub fn from_config(config: &crate::config::Config) -> Self {
        let local = &config.local;
        let quotas = local.quota.as_ref().map(|q| Arc::new(Quotas::new(q)));
        let delimiters = local.recipient_delimiter.as_str();
        maildir_sync::set_delay(
            local
                .maildir_sync_delay
                .unwrap_or(maildir_sync::DEFAULT_DELAY),
        );
        let maildir = |root: &std::path::Path| {
            LocalTarget::Maildir(
                Maildir::new(
                    root.to_owned(),
                    &config.hostname,
                    local.maildir_line_endings,
                )
                .subaddressing(delimiters, local.subaddress_folder)
                .quotas(quotas.clone())
                .sync(local.maildir_sync),
            )
        };
        let mbox = |root: &std::path::Path| {
            LocalTarget::Mbox(Mbox::new(root.to_owned()).subaddressing(delimiters))
        };
        let lmtp =
            |address: &LmtpAddress| LocalTarget::Lmtp(Lmtp::new(address.clone(), &config.hostname));
        // check-config refuses mbox beside maildir or lmtp; lmtp wins over maildir.
        let default = match (&local.lmtp, &local.mbox, &local.maildir) {
            (Some(address), _, _) => Some(lmtp(address)),
            (None, Some(root), _) => Some(mbox(root)),
            (None, None, Some(root)) => Some(maildir(root)),
            (None, None, None) => None,
        };
        let mut routes = Self::new(default, delimiters);
        for (key, target) in &local.targets {
            // check-config makes sure there is exactly one.
            let target = match (&target.lmtp, &target.mbox, &target.maildir) {
                (Some(address), _, _) => lmtp(address),
                (None, Some(root), _) => mbox(root),
                (None, None, Some(root)) => maildir(root),
                (None, None, None) => continue,
            };
            routes = routes.with_target(key, target);
        }
        routes
    }

    /// Mail for `key`, an address or a domain, goes to `target`.
    pub fn with_target(mut self, key: &str, target: LocalTarget) -> Self {
        self.targets.insert(key.to_lowercase(), target);
        self
    }

    /// The target of `address` (a local one), and the key it was found by (`""`: the
    /// default).
    pub fn route(&self, address: &str) -> Option<(&str, &LocalTarget)> {
        let lower = address.to_lowercase();
        let (local, domain) = lower.rsplit_once('@').unwrap_or(("", lower.as_str()));
        let untagged = LocalRecipients::split_subaddress(local.trim_matches('"'), &self.delimiters)
            .map(|(user, _)| format!("{user}@{domain}"));
        [Some(lower.clone()), untagged, Some(domain.to_owned())]
            .into_iter()
            .flatten()
            .find_map(|key| self.targets.get_key_value(&key))
            .map(|(k, t)| (k.as_str(), t))
            .or_else(|| self.default.as_ref().map(|t| ("", t)))
    }

    /// The target of `address` (a local one).
    pub fn target(&self, address: &str) -> Option<&LocalTarget> {
        self.route(address).map(|(_, t)| t)
    }

    /// The targets, the default first.
    pub fn targets(&self) -> impl Iterator<Item = &LocalTarget> {
        self.default.iter().chain(self.targets.values())
    }
}

/// Routes each recipient: local domains to the local target, the rest deferred.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Replaced by a configuration reload; a delivery uses the one in force when it
    /// starts.
    inner: Arc<std::sync::RwLock<Arc<Inner>>>,
}

#[derive(Debug)]
struct Inner {
    local_domains: DomainSet,
    local: LocalRoutes,
    remote: Option<Remote>,
    /// Where bare `Postmaster` goes.
    postmaster: Option<String>,
    /// The mailboxes a Maildir delivery may create (lower-cased); `None`: any.
    mailboxes: Option<Arc<HashSet<String>>>,
}

impl Delivery {
    /// A delivery service. With `mailboxes`, Maildir delivery goes only to those
    /// (lower-cased full addresses) besides `postmaster` and `abuse`: mail for any other
    /// address of a local domain fails with `5.1.1` instead of creating a Maildir. What
    /// comes in over SMTP was checked at RCPT time already; this stops what did not (a
    /// delivery notification to a local sender that does not exist, mail injected with
    /// `sendmail`). A sub-address of one of them (`user+tag@`, with the Maildir's
    /// [`subaddressing`](Maildir::subaddressing)) goes to its Maildir; LMTP gets every
    /// address as it came (the LMTP server does its own sub-addressing).
    pub fn new(
        local_domains: DomainSet,
        local: LocalRoutes,
        remote: Option<Remote>,
        postmaster: Option<String>,
        mailboxes: Option<Arc<HashSet<String>>>,
    ) -> Self {
        Self {
            inner: Arc::new(std::sync::RwLock::new(Arc::new(Inner {
                local_domains,
                local,
                remote,
                postmaster,
                mailboxes,
            }))),
        }
    }

    /// From the next delivery on, deliver as `other` does (a configuration reload); the
    /// connections the old settings kept for reuse are closed with QUIT.
    pub fn replace(&self, other: &Delivery) {
        let new = other.current();
        let old = match self.inner.write() {
            Ok(mut inner) => std::mem::replace(&mut *inner, new),
            Err(_) => return,
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Some(remote) = &old.remote {
                    remote.close_idle().await;
                }
            });
        }
    }

    /// Closes the connections kept for reuse, with QUIT (at shutdown).
    pub async fn close_idle(&self) {
        if let Some(remote) = &self.current().remote {
            remote.close_idle().await;
        }
    }

    fn current(&self) -> Arc<Inner> {
        match self.inner.read() {
            Ok(inner) => Arc::clone(&inner),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    async fn deliver(self, request: DeliveryRequest) -> DeliveryReport {
        let inner = &self.current();
        let addresses: Vec<String> = request
            .addresses()
            .map(|a| {
                if a == "Postmaster" {
                    inner.postmaster.clone().unwrap_or_default()
                } else {
                    a.to_owned()
                }
            })
            .collect();
        let domain = addresses
            .first()
            .and_then(|a| a.rsplit_once('@'))
            .map(|(_, d)| d.to_owned())
            .unwrap_or_default();
        if !inner.local_domains.contains(&domain) {
            return match &inner.remote {
                Some(remote) => remote.deliver(&request, &domain).await,
                None => {
                    vec![Outcome::Deferred("no remote delivery configured".into()); addresses.len()]
                }
            };
        }
        // Recipients by target (a `[local.targets]` entry may take some of them), each
        // group delivered in turn, the outcomes put back in the request's order.
        let mut groups: Vec<(&str, &LocalTarget, Vec<usize>)> = Vec::new();
        let mut outcomes: Vec<Option<Outcome>> = vec![None; addresses.len()];
        for (n, address) in addresses.iter().enumerate() {
            match inner.local.route(address) {
                None => {
                    outcomes[n] = Some(Outcome::Deferred("no local delivery configured".into()));
                }
                Some((key, target)) => match groups.iter_mut().find(|(k, _, _)| *k == key) {
                    Some((_, _, members)) => members.push(n),
                    None => groups.push((key, target, vec![n])),
                },
            }
        }
        for (_, target, members) in groups {
            let subset: Vec<String> = members.iter().map(|&n| addresses[n].clone()).collect();
            let indexes: Vec<usize> = members
                .iter()
                .map(|&n| request.recipients.get(n).copied().unwrap_or(n))
                .collect();
            let delivered = match target {
                LocalTarget::Maildir(maildir) => {
                    deliver_maildir(maildir, &request, inner, indexes, subset).await
                }
                LocalTarget::Mbox(mbox) => deliver_mbox(mbox, &request, inner, subset).await,
                LocalTarget::Lmtp(lmtp) => lmtp.deliver(&request, &subset).await,
            };
            for (&n, outcome) in members.iter().zip(delivered) {
                outcomes[n] = Some(outcome);
            }
        }
        outcomes
            .into_iter()
            .map(|o| o.unwrap_or_else(|| Outcome::Deferred("4.3.0 no outcome".into())))
            .collect()
    }
}

/// Delivers to Maildirs: `indexes` are the recipients' numbers in the message (for the
/// file names), `addresses` the addresses. The files are written on a blocking thread,
/// then made durable together (with those of other deliveries, `[local] maildir_sync`);
/// only then are they reported delivered. A failed sync defers every one of them.
async fn deliver_maildir(
    maildir: &Maildir,
    request: &DeliveryRequest,
    inner: &Inner,
    indexes: Vec<usize>,
    addresses: Vec<String>,
) -> Vec<Outcome> {
    let (maildir, message, body) = (
        maildir.clone(),
        Arc::clone(&request.message),
        request.body.clone(),
    );
    let count = addresses.len();
    let mailboxes = inner.mailboxes.clone();
    let batched = maildir.sync_mode() != MaildirSync::Each;
    // The first attempt since this process accepted the message cannot repeat an
    // earlier delivery: no look for a copy in new/ and cur/.
    let first = request.first_attempt;
    let store = move || {
        let mut pending = Pending::none();
        let outcomes: Vec<(Outcome, bool)> = indexes
            .iter()
            .zip(&addresses)
            .map(|(&i, address)| {
                let Some(recipient) = maildir.recipient(address, mailboxes.as_deref()) else {
                    let failed =
                        Outcome::Failed(format!("550 5.1.1 <{address}>: no such mailbox here"));
                    return (failed, false);
                };
                // The flag: whether the outcome waits for the sync.
                let delivered = |why: &str, synced| (Outcome::Delivered(why.into()), synced);
                let stored = if first {
                    maildir.store_first(&message, i, address, &recipient, &body)
                } else {
                    maildir.store(&message, i, address, &recipient, &body)
                };
                match stored {
                    Ok((stored, files)) => {
                        pending.extend(files);
                        match stored {
                            Stored::Written => delivered("delivered to maildir", true),
                            Stored::Rewritten => {
                                delivered("already in maildir, written again", true)
                            }
                            Stored::Seen => delivered("already in maildir (read)", false),
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::QuotaExceeded => {
                        (Outcome::Deferred(format!("4.2.2 {e}")), false)
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Other => {
                        (Outcome::Failed(format!("5.1.1 {e}")), false)
                    }
                    Err(e) => (Outcome::Deferred(format!("4.2.0 maildir: {e}")), false),
                }
            })
            .collect();
        (outcomes, pending)
    };
    // Delivered only once durable: until then the queue keeps the message. Batched, the
    // sync thread writes the files too (one hand-over instead of two).
    let stored = if batched {
        store_then_sync(store).await
    } else {
        match tokio::task::spawn_blocking(store).await {
            Ok((outcomes, pending)) => Ok((outcomes, pending.wait().await)),
            Err(e) => Err(std::io::Error::other(e.to_string())),
        }
    };
    let (outcomes, synced) = match stored {
        Ok(stored) => stored,
        Err(e) => {
            return vec![Outcome::Deferred(format!("4.3.0 maildir task failed: {e}")); count];
        }
    };
    outcomes
        .into_iter()
        .map(|(outcome, waits)| match &synced {
            Err(e) if waits => Outcome::Deferred(format!("4.3.0 maildir: {e}")),
            _ => outcome,
        })
        .collect()
}

/// Delivers to mbox files.
async fn deliver_mbox(
    mbox: &Mbox,
    request: &DeliveryRequest,
    inner: &Inner,
    addresses: Vec<String>,
) -> Vec<Outcome> {
    let (mbox, message, body) = (
        mbox.clone(),
        Arc::clone(&request.message),
        request.body.clone(),
    );
    let count = addresses.len();
    let mailboxes = inner.mailboxes.clone();
    let result = tokio::task::spawn_blocking(move || {
        addresses
            .iter()
            .map(|address| {
                let Some(recipient) = mbox.recipient(address, mailboxes.as_deref()) else {
                    return Outcome::Failed(format!("550 5.1.1 <{address}>: no such mailbox here"));
                };
                match mbox.deliver(&message, address, &recipient, &body) {
                    Ok(()) => Outcome::Delivered("delivered to mbox".into()),
                    Err(e) if e.kind() == std::io::ErrorKind::Other => {
                        Outcome::Failed(format!("5.1.1 {e}"))
                    }
                    Err(e) => Outcome::Deferred(format!("4.2.0 mbox: {e}")),
                }
            })
            .collect()
    })
    .await;
    result.unwrap_or_else(|e| vec![Outcome::Deferred(format!("mbox task failed: {e}")); count])
}

impl tower::Service<DeliveryRequest> for Delivery {
    type Response = DeliveryReport;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<DeliveryReport, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: DeliveryRequest) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { Ok(this.deliver(request).await) })
    }
}
