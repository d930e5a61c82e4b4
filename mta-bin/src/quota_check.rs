//! Mailbox quotas at the door (`[local.quota]`): a full mailbox is refused at RCPT,
//! and a message that does not fit at the end of DATA, so that a message is never
//! accepted with `250` for a mailbox we knew could not take it (and bounced later).
//!
//! ```text
//!  MAIL FROM ... SIZE=n ──► RememberSize: notes ◄─┐
//!  RCPT TO:<bob+tag@>   ──► QuotaCheck ── bob's maildirsize: full, or n does not fit?
//!                                         └► 452 4.2.2
//!  end of DATA          ──► QuotaCheck ── each recipient: does the stored message fit?
//!                             none fits ► 552 5.2.2 · LMTP: each one that does not ► 552 5.2.2
//!                             SMTP, some fit ► 452 4.2.2 for the message (nothing queued)
//! ```
//!
//! Only recipients delivered to a Maildir are checked (mbox has no quota; an LMTP
//! server applies its own, and its replies are passed on). The delivery checks again
//! (a race with other deliveries, with Dovecot, or mail that came in another way): see
//! [`crate::delivery::quota`].
//!
//! Why `452` for the whole message in SMTP when only some recipients are full: after
//! DATA, SMTP has one reply for all recipients. Accepting would mean bouncing later for
//! a box we knew to be full; refusing with `552` would bounce the others too. `452`
//! makes the sender keep the message and try again later, for all recipients (those
//! refused at RCPT already were retried in a transaction of their own).

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

use smtp_proto::{EnhancedStatus, ForwardPath, Reply, ReplyCode};
use smtp_server::filters::DomainSet;
use smtp_server::{
    AsyncCheck, Check, CheckFuture, DataRequest, Decision, Flow, MailRequest, RcptRequest,
};

use crate::config::Config;
use crate::delivery::quota::{self, Limits};
use crate::delivery::{LocalRoutes, LocalTarget, Maildir};

/// The size a client declared with `MAIL FROM:<...> SIZE=n`, kept in the transaction's
/// notes by [`RememberSize`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeclaredSize(pub u64);

/// The mail stage filter that keeps `SIZE=` for [`QuotaCheck`] at RCPT.
#[derive(Clone, Copy, Debug, Default)]
pub struct RememberSize;

impl Check<MailRequest> for RememberSize {
    fn check(&self, request: &mut MailRequest) -> Option<Decision> {
        if let Some(size) = request.params.size {
            request.notes.insert(DeclaredSize(size));
        }
        None
    }
}

/// The quota checks at RCPT and at the end of DATA (see the module documentation).
#[derive(Clone, Debug)]
pub struct QuotaCheck {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    local_domains: DomainSet,
    routes: LocalRoutes,
    /// Known mailboxes (lower-cased), `None`: any.
    mailboxes: Option<Arc<HashSet<String>>>,
    /// Where bare `Postmaster` goes.
    postmaster: Option<String>,
}

/// One recipient's Maildir with a quota.
#[derive(Clone, Debug)]
struct QuotaBox {
    maildir: Maildir,
    /// The Maildir (INBOX) of the mailbox.
    inbox: PathBuf,
    limits: Limits,
    grace: u64,
}

impl QuotaCheck {
    /// The checks of `config`, or `None` when it has no `[local.quota]`.
    pub fn new(
        config: &Config,
        local_domains: DomainSet,
        mailboxes: Option<Arc<HashSet<String>>>,
    ) -> Option<Self> {
        config.local.quota.as_ref()?;
        Some(Self {
            inner: Arc::new(Inner {
                local_domains,
                routes: LocalRoutes::from_config(config),
                mailboxes,
                postmaster: config
                    .local
                    .domains
                    .first()
                    .map(|d| format!("postmaster@{d}")),
            }),
        })
    }
}

impl Inner {
    /// The address the queue will deliver to (bare `Postmaster` is the first local
    /// domain's).
    fn address(&self, to: &ForwardPath) -> Option<String> {
        match to {
            ForwardPath::Postmaster => self.postmaster.clone(),
            ForwardPath::Mailbox(m) => Some(m.to_string()),
        }
    }

    /// The Maildir with a quota that mail for `address` goes to, if it is one.
    fn quota_box(&self, address: &str) -> Option<QuotaBox> {
        let (_, domain) = address.rsplit_once('@')?;
        if !self.local_domains.contains(domain) {
            return None;
        }
        let LocalTarget::Maildir(maildir) = self.routes.target(address)? else {
            return None;
        };
        let recipient = maildir.recipient(address, self.mailboxes.as_deref())?;
        let (limits, grace) = maildir.limits(&recipient.mailbox)?;
        let inbox = maildir.folder(&recipient.mailbox).ok()?;
        Some(QuotaBox {
            maildir: maildir.clone(),
            inbox,
            limits,
            grace,
        })
    }
}

/// `5.2.2`, mailbox full (RFC 3463); a deferral's reply makes it `4.2.2`.
fn mailbox_full() -> EnhancedStatus {
    EnhancedStatus::new(5, 2, 2).unwrap_or(EnhancedStatus::SYSTEM_TEMPORARY)
}

impl AsyncCheck<RcptRequest> for QuotaCheck {
    fn check(&self, request: RcptRequest) -> CheckFuture<RcptRequest> {
        let inner = Arc::clone(&self.inner);
        Box::pin(async move {
            let Some(address) = inner.address(&request.to) else {
                return Ok(Flow::Continue(request));
            };
            let Some(qbox) = inner.quota_box(&address) else {
                return Ok(Flow::Continue(request));
            };
            let (inbox, limits) = (qbox.inbox.clone(), qbox.limits);
            let usage =
                tokio::task::spawn_blocking(move || quota::usage(&inbox, limits, None)).await;
            let usage = match usage {
                Ok(Ok(usage)) => usage,
                other => {
                    // The delivery checks again; a box we cannot read is not refused here.
                    let error = match other {
                        Ok(Err(e)) => e.to_string(),
                        Err(e) => e.to_string(),
                        Ok(Ok(_)) => String::new(),
                    };
                    tracing::warn!(maildir = %qbox.inbox.display(), %error, "cannot read the quota usage");
                    return Ok(Flow::Continue(request));
                }
            };
            if limits.is_full(usage) {
                return Ok(Flow::Decide(Decision::defer::<452>(
                    mailbox_full(),
                    format!("<{address}>: Mailbox full, try again later"),
                )));
            }
            if let Some(DeclaredSize(size)) = request.notes.get::<DeclaredSize>()
                && !limits.fits(usage, size, qbox.grace)
            {
                return Ok(Flow::Decide(Decision::defer::<452>(
                    mailbox_full(),
                    format!(
                        "<{address}>: Mailbox full: no room for a message of {size} bytes, try again later"
                    ),
                )));
            }
            Ok(Flow::Continue(request))
        })
    }
}

impl AsyncCheck<DataRequest> for QuotaCheck {
    fn check(&self, mut request: DataRequest) -> CheckFuture<DataRequest> {
        let inner = Arc::clone(&self.inner);
        Box::pin(async move {
            let sender = request.envelope.from.mailbox().map(|m| m.to_string());
            let sender = sender.unwrap_or_default();
            // (position in the envelope, address, its box)
            let boxes: Vec<(usize, String, QuotaBox)> = request
                .envelope
                .recipients
                .iter()
                .enumerate()
                .filter_map(|(i, r)| {
                    let address = inner.address(&r.to)?;
                    let qbox = inner.quota_box(&address)?;
                    Some((i, address, qbox))
                })
                .collect();
            if boxes.is_empty() {
                return Ok(Flow::Continue(request));
            }
            let (added, body) = (request.added_headers.clone(), request.body.bytes().clone());
            let over =
                tokio::task::spawn_blocking(move || not_fitting(&boxes, &sender, &added, &body))
                    .await;
            let over = match over {
                Ok(over) => over,
                Err(e) => {
                    tracing::warn!(error = %e, "quota check failed");
                    return Ok(Flow::Continue(request));
                }
            };
            if over.is_empty() {
                return Ok(Flow::Continue(request));
            }
            let names = over
                .iter()
                .map(|(_, a)| format!("<{a}>"))
                .collect::<Vec<_>>()
                .join(", ");
            if over.len() == request.envelope.recipients.len() {
                return Ok(Flow::Decide(Decision::reject::<552>(
                    mailbox_full(),
                    format!("Mailbox full: the message does not fit {names}"),
                )));
            }
            if request.is_lmtp() {
                // Highest position first: removing one moves those after it.
                for (i, address) in over.iter().rev() {
                    let reply = Reply::new(
                        ReplyCode::EXCEEDED_STORAGE,
                        mailbox_full(),
                        format!("<{address}>: Mailbox full: the message does not fit"),
                    );
                    request.refuse_recipient(*i, reply);
                }
                return Ok(Flow::Continue(request));
            }
            Ok(Flow::Decide(Decision::defer::<452>(
                mailbox_full(),
                format!(
                    "Mailbox full: the message does not fit {names}; nothing was accepted, try again later"
                ),
            )))
        })
    }
}

/// The recipients (position, address) whose box the message does not fit, in
/// envelope order; several recipients of one box add up.
fn not_fitting(
    boxes: &[(usize, String, QuotaBox)],
    sender: &str,
    added: &[u8],
    body: &[u8],
) -> Vec<(usize, String)> {
    let mut taken: HashMap<PathBuf, quota::Usage> = HashMap::new();
    let mut over = Vec::new();
    let mut message_size = None;
    for (i, address, qbox) in boxes {
        let base = *message_size.get_or_insert_with(|| qbox.maildir.stored_size(&[added, body]));
        let head = Maildir::head(sender, address);
        let size = base + qbox.maildir.stored_size(&[head.as_bytes()]);
        let usage = match taken.get(&qbox.inbox) {
            Some(usage) => *usage,
            None => match quota::usage(&qbox.inbox, qbox.limits, None) {
                Ok(usage) => usage,
                Err(e) => {
                    tracing::warn!(maildir = %qbox.inbox.display(), error = %e, "cannot read the quota usage");
                    continue;
                }
            },
        };
        if qbox.limits.fits(usage, size, qbox.grace) {
            taken.insert(
                qbox.inbox.clone(),
                quota::Usage {
                    bytes: usage.bytes + size,
                    messages: usage.messages + 1,
                },
            );
        } else {
            taken.insert(qbox.inbox.clone(), usage);
            over.push((*i, address.clone()));
        }
    }
    over
}
