//! The delivery service handed to the queue: local recipients to Maildir, mbox or LMTP,
//! the others to remote servers found by MX (or to a relay host).

mod lmtp;
mod maildir;
mod mbox;
mod remote;

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use mail_queue::{BoxError, DeliveryReport, DeliveryRequest, Outcome};
use smtp_server::filters::DomainSet;

pub use lmtp::{Lmtp, LmtpAddress};
pub use maildir::{LineEndings, Maildir, Recipient, SubaddressFolder};
pub use mbox::Mbox;
pub use remote::{Relay, Remote, RemoteConfig};

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
    local: Option<LocalTarget>,
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
        local: Option<LocalTarget>,
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
        match &inner.local {
            None => vec![Outcome::Deferred("no local delivery configured".into()); addresses.len()],
            Some(LocalTarget::Maildir(maildir)) => {
                let (maildir, message, body) = (
                    maildir.clone(),
                    Arc::clone(&request.message),
                    request.body.clone(),
                );
                let indexes = request.recipients.clone();
                let mailboxes = inner.mailboxes.clone();
                let result = tokio::task::spawn_blocking(move || {
                    indexes
                        .iter()
                        .zip(&addresses)
                        .map(|(&i, address)| {
                            let Some(recipient) = maildir.recipient(address, mailboxes.as_deref())
                            else {
                                return Outcome::Failed(format!(
                                    "550 5.1.1 <{address}>: no such mailbox here"
                                ));
                            };
                            match maildir.deliver(&message, i, address, &recipient, &body) {
                                Ok(true) => Outcome::Delivered("delivered to maildir".into()),
                                Ok(false) => Outcome::Delivered("already in maildir".into()),
                                Err(e) if e.kind() == std::io::ErrorKind::Other => {
                                    Outcome::Failed(format!("5.1.1 {e}"))
                                }
                                Err(e) => Outcome::Deferred(format!("4.2.0 maildir: {e}")),
                            }
                        })
                        .collect()
                })
                .await;
                result.unwrap_or_else(|e| {
                    vec![
                        Outcome::Deferred(format!("maildir task failed: {e}"));
                        request.recipients.len()
                    ]
                })
            }
            Some(LocalTarget::Mbox(mbox)) => {
                let (mbox, message, body) = (
                    mbox.clone(),
                    Arc::clone(&request.message),
                    request.body.clone(),
                );
                let mailboxes = inner.mailboxes.clone();
                let result = tokio::task::spawn_blocking(move || {
                    addresses
                        .iter()
                        .map(|address| {
                            let Some(recipient) = mbox.recipient(address, mailboxes.as_deref())
                            else {
                                return Outcome::Failed(format!(
                                    "550 5.1.1 <{address}>: no such mailbox here"
                                ));
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
                result.unwrap_or_else(|e| {
                    vec![
                        Outcome::Deferred(format!("mbox task failed: {e}"));
                        request.recipients.len()
                    ]
                })
            }
            Some(LocalTarget::Lmtp(lmtp)) => lmtp.deliver(&request, &addresses).await,
        }
    }
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
