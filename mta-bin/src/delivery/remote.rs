//! Remote delivery: route by MX (or through a relay host), then SMTP to the hosts in
//! order, with connections reused across messages and a limit per destination.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dns_mx::{MxHost, MxResolver};
use mail_queue::{Bytes, DeliveryRequest, MessageMeta, Outcome};
use smtp_client::{ClientError, OutboundConfig, OutboundMessage, Session};
use smtp_proto::{
    Body, ForwardPath, MailParameters, Notify, OriginalRecipient, RcptParameters, Reply, Ret,
    ReversePath,
};
use tokio::sync::Semaphore;
use tracing::{Instrument, debug, info_span};

use crate::aliases::Forwarding;

/// A relay host all remote mail goes through (a "smarthost").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Relay {
    /// Its host name or IP address.
    pub host: String,
}

/// Remote delivery settings.
#[derive(Clone, Debug)]
pub struct RemoteConfig {
    /// How to speak SMTP to other servers.
    pub outbound: OutboundConfig,
    /// Send everything through this host instead of looking up MX records.
    pub relay: Option<Relay>,
    /// Deliveries at once to one destination domain. Default 20 (as Postfix).
    pub max_per_destination: usize,
    /// Messages sent on one connection before it is closed. Default 100.
    pub max_messages_per_connection: usize,
    /// How long an idle connection is kept for reuse; then it is closed with QUIT.
    /// Default 10 s.
    pub idle_timeout: Duration,
    /// The SRS rewriting of the envelope sender of forwarded mail (`[aliases]
    /// forward_sender = "srs"`); `None`: the sender is kept.
    pub forwarding: Option<Forwarding>,
}

/// Delivers to other servers.
#[derive(Debug)]
pub struct Remote {
    resolver: MxResolver,
    config: RemoteConfig,
    /// Connections waiting for their next message.
    idle: Arc<IdlePool>,
    /// One semaphore per destination domain.
    destinations: Mutex<HashMap<String, Arc<Semaphore>>>,
}

/// Connections waiting for their next message, by host, each with a number its close
/// timer knows it by.
#[derive(Debug, Default)]
struct IdlePool {
    sessions: Mutex<HashMap<String, Vec<(u64, Session)>>>,
    next: std::sync::atomic::AtomicU64,
}

/// How long a closing connection waits for the server's `221` to QUIT.
const QUIT_WAIT: Duration = Duration::from_secs(5);

impl IdlePool {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<(u64, Session)>>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The session numbered `n`, if it is still waiting.
    fn remove(&self, n: u64) -> Option<Session> {
        let mut sessions = self.lock();
        for list in sessions.values_mut() {
            if let Some(i) = list.iter().position(|(m, _)| *m == n) {
                return Some(list.swap_remove(i).1);
            }
        }
        None
    }
}

/// QUIT, a short wait for `221`, and close.
async fn close(session: Session) {
    let _ = tokio::time::timeout(QUIT_WAIT, session.quit()).await;
}

impl Remote {
    /// A remote delivery service.
    pub fn new(resolver: MxResolver, config: RemoteConfig) -> Self {
        Self {
            resolver,
            config,
            idle: Arc::default(),
            destinations: Mutex::default(),
        }
    }

    /// Delivers the request's recipients (all of one domain): one outcome each. With
    /// [`RemoteConfig::forwarding`], recipients that came from an alias leave in a
    /// transaction of their own, with the SRS form of the sender.
    pub async fn deliver(&self, request: &DeliveryRequest, domain: &str) -> Vec<Outcome> {
        let n = request.recipients.len();
        let semaphore = {
            let mut map = self.destinations.lock().unwrap_or_else(|e| e.into_inner());
            Arc::clone(map.entry(domain.to_owned()).or_insert_with(|| {
                Arc::new(Semaphore::new(self.config.max_per_destination.max(1)))
            }))
        };
        let Ok(_permit) = semaphore.acquire_owned().await else {
            return vec![Outcome::Deferred("delivery is shutting down".into()); n];
        };
        let hosts = match &self.config.relay {
            Some(relay) => self.resolver.host(&relay.host).await.map(|h| vec![h]),
            None => self.resolver.route(domain).await,
        };
        let hosts = match hosts {
            Ok(hosts) => hosts,
            Err(e) => {
                let (code, status) = e.status();
                let text = format!("{code} {status} {domain}: {e}");
                let outcome = if e.is_permanent() {
                    Outcome::Failed(text)
                } else {
                    Outcome::Deferred(text)
                };
                return vec![outcome; n];
            }
        };
        let groups = self.by_sender(request);
        if let [(None, _)] = &groups[..] {
            let message = outbound_message(&request.message, &request.recipients, &request.body);
            return self.send(&hosts, &message, domain, n).await;
        }
        // Forwarded and other recipients: one transaction for each sender.
        let mut outcomes: Vec<Option<Outcome>> = vec![None; n];
        for (sender, positions) in groups {
            let indexes: Vec<usize> = positions.iter().map(|&p| request.recipients[p]).collect();
            let mut message = outbound_message(&request.message, &indexes, &request.body);
            if let Some(sender) = sender.and_then(|s| ReversePath::parse(&format!("<{s}>")).ok()) {
                message.from = sender;
            }
            let sent = self.send(&hosts, &message, domain, positions.len()).await;
            for (p, outcome) in positions.into_iter().zip(sent) {
                outcomes[p] = Some(outcome);
            }
        }
        outcomes
            .into_iter()
            .map(|o| o.unwrap_or_else(|| Outcome::Deferred("4.3.0 not attempted".into())))
            .collect()
    }

    /// The request's recipients (positions in `request.recipients`) by the envelope
    /// sender they leave with: the SRS form for forwarded ones ([`Forwarding`]), `None`
    /// (the message's own) for the others. One group with `None` without forwarding.
    fn by_sender(&self, request: &DeliveryRequest) -> Vec<(Option<String>, Vec<usize>)> {
        let all = (0..request.recipients.len()).collect();
        let Some(forwarding) = &self.config.forwarding else {
            return vec![(None, all)];
        };
        let meta = &request.message;
        let mut groups: Vec<(Option<String>, Vec<usize>)> = Vec::new();
        for (p, &i) in request.recipients.iter().enumerate() {
            let orcpt = meta.recipients.get(i).and_then(|r| r.dsn.orcpt.as_ref());
            let sender = forwarding.sender(&meta.from, orcpt);
            match groups.iter_mut().find(|(s, _)| *s == sender) {
                Some((_, positions)) => positions.push(p),
                None => groups.push((sender, vec![p])),
            }
        }
        if groups.is_empty() {
            return vec![(None, all)];
        }
        groups
    }

    /// Sends `message` (`n` recipients) to the first of `hosts` that takes it: one
    /// outcome for each recipient.
    async fn send(
        &self,
        hosts: &[MxHost],
        message: &OutboundMessage,
        domain: &str,
        n: usize,
    ) -> Vec<Outcome> {
        if message.recipients.len() != n {
            return vec![
                Outcome::Failed("550 5.1.3 invalid recipient address in the queue".into());
                n
            ];
        }
        let mut last_error: Option<(String, ClientError)> = None;
        for host in hosts.iter().filter(|h| !h.addresses.is_empty()) {
            let span = info_span!("smtp.out", host = %host.name, preference = host.preference);
            match self.deliver_to(host, message).instrument(span).await {
                Ok((address, replies)) => {
                    let route = self.route(host, address, domain);
                    return replies.iter().map(|r| outcome(&route, r)).collect();
                }
                Err(e) => last_error = Some((host.name.clone(), e)),
            }
        }
        match last_error {
            Some((host, e)) => {
                let text = format!("{host}: {}", e.reply());
                let outcome = if e.is_permanent() {
                    Outcome::Failed(text)
                } else {
                    Outcome::Deferred(text)
                };
                vec![outcome; n]
            }
            None => {
                vec![Outcome::Deferred(format!("no address for any mail exchanger of {domain}")); n]
            }
        }
    }

    /// How a message reached `host` at `address`, for the log and `mta queue`:
    /// `mx1.example.test[192.0.2.1]:25 (MX 10 of example.test)`.
    fn route(&self, host: &MxHost, address: SocketAddr, domain: &str) -> String {
        let how = if self.config.relay.is_some() {
            "the relay host".to_owned()
        } else if host.name.starts_with('[') {
            "an address literal".to_owned()
        } else if host.name.eq_ignore_ascii_case(domain) && host.preference == 0 {
            format!("no MX: the address of {domain}")
        } else {
            format!("MX {} of {domain}", host.preference)
        };
        let name = host.name.trim_matches(['[', ']']);
        format!("{name}[{}]:{} ({how})", address.ip(), address.port())
    }

    /// One host: a reused connection when there is one, else a new one. Returns the
    /// address the message went to, and the replies.
    async fn deliver_to(
        &self,
        host: &MxHost,
        message: &OutboundMessage,
    ) -> Result<(SocketAddr, Vec<Reply>), ClientError> {
        if let Some(mut session) = self.take_idle(&host.name) {
            match session.deliver(message).await {
                Ok(replies) => {
                    let address = session.address();
                    self.put_idle(session);
                    return Ok((address, replies));
                }
                // The server may have closed it while it waited: open a new one.
                Err(e) => {
                    debug!(host = %host.name, error = %e, "reused connection failed; reconnecting")
                }
            }
        }
        let mut session = Session::open(&host.name, &host.addresses, &self.config.outbound).await?;
        let replies = session.deliver(message).await?;
        let address = session.address();
        self.put_idle(session);
        Ok((address, replies))
    }

    fn take_idle(&self, host: &str) -> Option<Session> {
        self.idle
            .lock()
            .get_mut(host)?
            .pop()
            .map(|(_, session)| session)
    }

    /// Keeps `session` for the next message to its host, for `idle_timeout`: then a
    /// timer says QUIT and closes it (the server need not time us out).
    fn put_idle(&self, session: Session) {
        if session.transactions >= self.config.max_messages_per_connection {
            tokio::spawn(close(session));
            return;
        }
        let n = self
            .idle
            .next
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.idle
            .lock()
            .entry(session.host().to_owned())
            .or_default()
            .push((n, session));
        let pool = Arc::downgrade(&self.idle);
        let wait = self.config.idle_timeout;
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            let session = pool.upgrade().and_then(|pool| pool.remove(n));
            if let Some(session) = session {
                debug!(host = session.host(), "idle connection closed");
                close(session).await;
            }
        });
    }

    /// Says QUIT on every idle connection and closes it (at shutdown).
    pub async fn close_idle(&self) {
        let sessions: Vec<Session> = self
            .idle
            .lock()
            .drain()
            .flat_map(|(_, list)| list.into_iter().map(|(_, session)| session))
            .collect();
        let closing: Vec<_> = sessions
            .into_iter()
            .map(|s| tokio::spawn(close(s)))
            .collect();
        for c in closing {
            let _ = c.await;
        }
    }
}

/// `sent to ROUTE: 250 2.0.0 Ok`, or the reply as failed or deferred by its class. A
/// message sent on is the next server's to report on (NOTIFY went with it).
fn outcome(route: &str, reply: &Reply) -> Outcome {
    let text = format!("{route}: {}", reply.to_string().replace('\n', " "));
    if reply.is_positive_completion() {
        Outcome::Sent(format!("sent to {text}"))
    } else if reply.is_permanent() {
        Outcome::Failed(text)
    } else {
        Outcome::Deferred(text)
    }
}

/// The envelope of a queued message, for SMTP.
fn outbound_message(meta: &MessageMeta, indexes: &[usize], body: &Bytes) -> OutboundMessage {
    let from = if meta.from.is_empty() {
        ReversePath::Null
    } else {
        ReversePath::parse(&format!("<{}>", meta.from)).unwrap_or(ReversePath::Null)
    };
    let p = &meta.params;
    let params = MailParameters {
        body: match p.body {
            mail_queue::BodyType::SevenBit => None,
            mail_queue::BodyType::EightBitMime | mail_queue::BodyType::BinaryMime => {
                Some(Body::EightBitMime)
            }
        },
        smtputf8: p.smtputf8,
        ret: p
            .ret
            .map(|hdrs| if hdrs { Ret::Headers } else { Ret::Full }),
        envid: p.envid.clone(),
        requiretls: p.requiretls,
        ..MailParameters::default()
    };
    let recipients = indexes
        .iter()
        .filter_map(|&i| meta.recipients.get(i))
        .filter_map(|r| {
            let to = ForwardPath::parse(&format!("<{}>", r.address)).ok()?;
            let notify = r.dsn.notify.map(|bits| {
                [
                    (1, Notify::SUCCESS),
                    (2, Notify::FAILURE),
                    (4, Notify::DELAY),
                ]
                .iter()
                .filter(|(bit, _)| bits & bit != 0)
                .fold(Notify::NEVER, |n, (_, flag)| n.union(*flag))
            });
            let orcpt = r
                .dsn
                .orcpt
                .as_ref()
                .map(|(addr_type, address)| OriginalRecipient {
                    addr_type: addr_type.clone(),
                    address: address.clone(),
                });
            Some((to, RcptParameters { notify, orcpt }))
        })
        .collect();
    OutboundMessage {
        from,
        params,
        recipients,
        body: body.clone(),
    }
}
