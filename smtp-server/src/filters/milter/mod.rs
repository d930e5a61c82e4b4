//! Milter: the Sendmail/Postfix mail filter protocol (version 6), as a stage filter.
//!
//! A [`Milter`] talks to one milter daemon (OpenDKIM, clamav-milter, rspamd's proxy,
//! spamass-milter, ...) over TCP or a Unix socket, one milter connection per SMTP
//! connection, kept in [`SessionInfo::connection`](crate::SessionInfo::connection), so the
//! milter sees the SMTP conversation in order, as behind Postfix:
//!
//! ```text
//!  SMTP stage:  connect      ehlo     (auth)   mail        rcpt        data
//!  milter:      optneg,      macros,  mech.    [abort],    macros,     macros, DATA, header…,
//!               macros,      HELO     noted    macros,     RCPT        EOH, body…, end of body
//!               CONNECT                        MAIL                    ◀ modifications, verdict
//! ```
//!
//! Add the same `Milter` at every stage (it implements [`AsyncCheck`] for each request);
//! a stage it is not added at (or that [`MilterStages`] turns off) is sent with the
//! next one it is asked at, so a milter added only at the data stage still sees the
//! connection, HELO and envelope first. Several milters can be configured at once: each
//! `Milter` keeps its own connection. Its verdicts map to replies:
//!
//! | milter says | at connect | at helo, mail, data | at rcpt |
//! | --- | --- | --- | --- |
//! | continue | go on | go on | go on |
//! | accept | ask no more this connection | (helo: this connection; else this message) | ask no more this message |
//! | reject | `554` greeting | `550 5.7.1 Command rejected` | that recipient: `550 5.7.1` |
//! | tempfail | greeting, then `451 4.7.1` at MAIL, RCPT, DATA | `451 4.7.1 Service unavailable - try again later` | that recipient: `451 4.7.1` |
//! | reply code | as reject or tempfail, with its reply | its reply | its reply |
//! | discard | (ignored) | message accepted (`250`), dropped | message accepted, dropped |
//! | shutdown | `421`, connection closed | `421` | `421` |
//!
//! At end of body the milter's modifications are applied to the [`DataRequest`]:
//! header fields added, inserted, changed and deleted, the body replaced, recipients
//! added and deleted, the sender changed, and quarantine (an `X-Quarantine: milter
//! <name>: <reason>` header field).
//!
//! ```no_run
//! use smtp_server::filters::milter::{DefaultAction, Milter, MilterSettings};
//! use smtp_server::{Stages, filter_async};
//!
//! # let sink = tower::service_fn(|_| async { Ok::<_, smtp_server::BoxError>(smtp_server::Decision::accept()) });
//! let dkim = Milter::new(MilterSettings {
//!     address: "unix:/run/opendkim/opendkim.sock".into(),
//!     hostname: "mx.example.test".into(),
//!     default_action: DefaultAction::Accept,
//!     ..MilterSettings::default()
//! })?;
//! let stages = Stages::new(sink)
//!     .connect_layer(filter_async(dkim.clone()))
//!     .ehlo_layer(filter_async(dkim.clone()))
//!     .auth_layer(filter_async(dkim.clone()))
//!     .mail_layer(filter_async(dkim.clone()))
//!     .rcpt_layer(filter_async(dkim.clone()))
//!     .data_layer(filter_async(dkim));
//! # Ok::<(), smtp_server::filters::milter::MilterError>(())
//! ```

mod message;
pub mod protocol;
mod session;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use smtp_proto::{
    EnhancedStatus, ForwardPath, MailParameters, RcptParameters, Recipient, Reply, ReversePath,
};
use tracing::{debug, info, warn};

use crate::{
    AsyncCheck, AuthRequest, CheckFuture, ConnectRequest, Content, DataRequest, Decision,
    EhloRequest, Flow, MailRequest, Notes, RcptRequest, SessionInfo,
};
use message::{Field, Header, crlf};
use protocol::{Actions, Command, MAX_CHUNK, MacroStage, ProtocolError, Response, Steps};
use session::{Address, Conversation};

/// What to do when the milter cannot be asked: it does not answer, times out, or
/// breaks the protocol (Postfix's `milter_default_action`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DefaultAction {
    /// `451 4.7.1 Service unavailable - try again later` at the stage it failed (at
    /// MAIL FROM when it failed at connect or HELO), and at every MAIL, RCPT and DATA
    /// after it on that connection: the client retries later. The default.
    #[default]
    Tempfail,
    /// Go on without the milter for the rest of the connection (a warning is logged).
    Accept,
    /// `550 5.7.1 Command rejected`, as `Tempfail` but for good.
    Reject,
}

/// The stages the milter is asked at. A stage turned off is not asked: what the client
/// said there is sent with the next stage that is (the data stage always is), and a
/// refusal then applies there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MilterStages {
    /// The client connected. Default on.
    pub connect: bool,
    /// HELO/EHLO. Default on.
    pub helo: bool,
    /// MAIL FROM. Default on.
    pub mail: bool,
    /// RCPT TO. Default on.
    pub rcpt: bool,
}

impl Default for MilterStages {
    fn default() -> Self {
        Self {
            connect: true,
            helo: true,
            mail: true,
            rcpt: true,
        }
    }
}

/// The settings of one milter. Every wait on the network is bounded by one of the
/// timeouts.
///
/// ```
/// use std::time::Duration;
/// use smtp_server::filters::milter::{DefaultAction, MilterSettings};
/// let settings = MilterSettings {
///     address: "inet:127.0.0.1:8891".into(),
///     command_timeout: Duration::from_secs(10),
///     default_action: DefaultAction::Accept,
///     ..MilterSettings::default()
/// };
/// assert_eq!(settings.connect_timeout, Duration::from_secs(30));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MilterSettings {
    /// A name for logs and the `X-Quarantine` field; empty (the default): the address.
    pub name: String,
    /// Where the milter listens: `inet:host:port` (or `inet:port@host`), `unix:/path`
    /// (or `local:/path`). Default `inet:127.0.0.1:8891` (OpenDKIM's usual port).
    pub address: String,
    /// Our host name, the `j` macro. Default `localhost`.
    pub hostname: String,
    /// The `{daemon_name}` macro (OpenDKIM's `MTA` setting matches on it). Default `mta`.
    pub daemon_name: String,
    /// Time to connect to the milter. Default 30 s (Postfix's
    /// `milter_connect_timeout`).
    pub connect_timeout: Duration,
    /// Time for the milter to answer a command (negotiation, connect, HELO, MAIL, RCPT,
    /// DATA, a header field, a body chunk). Default 30 s (`milter_command_timeout`).
    pub command_timeout: Duration,
    /// Time for the milter to answer the end of the message (where it scans or signs).
    /// Default 300 s (`milter_content_timeout`). A progress report starts any timeout
    /// again.
    pub end_of_message_timeout: Duration,
    /// What to do when the milter cannot be asked. Default [`DefaultAction::Tempfail`].
    pub default_action: DefaultAction,
    /// The stages the milter is asked at. Default all.
    pub stages: MilterStages,
    /// The largest body a milter may put in place of the message's. Default 64 MiB.
    pub max_replaced_body: usize,
}

impl Default for MilterSettings {
    fn default() -> Self {
        Self {
            name: String::new(),
            address: "inet:127.0.0.1:8891".into(),
            hostname: "localhost".into(),
            daemon_name: "mta".into(),
            connect_timeout: Duration::from_secs(30),
            command_timeout: Duration::from_secs(30),
            end_of_message_timeout: Duration::from_secs(300),
            default_action: DefaultAction::Tempfail,
            stages: MilterStages::default(),
            max_replaced_body: 64 * 1024 * 1024,
        }
    }
}

/// Why a milter could not be asked (logged; the client gets the
/// [`DefaultAction`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MilterError {
    /// The address is not `inet:host:port` or `unix:/path`.
    #[error("bad milter address {0:?} (inet:host:port or unix:/path)")]
    Address(String),
    /// The connection could not be made.
    #[error("cannot connect to the milter: {0}")]
    Connect(std::io::Error),
    /// Reading or writing failed.
    #[error("milter connection failed: {0}")]
    Io(std::io::Error),
    /// The milter took too long.
    #[error("milter timed out ({0})")]
    Timeout(&'static str),
    /// The milter closed the connection.
    #[error("milter closed the connection")]
    Closed,
    /// The milter sent bytes that are not the protocol.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// A response that does not belong where it came.
    #[error("unexpected milter response at {0}")]
    Unexpected(&'static str),
    /// A protocol version we do not speak.
    #[error("milter protocol version {0} not supported")]
    Version(u32),
    /// A replacement body larger than [`MilterSettings::max_replaced_body`].
    #[error("milter replacement body too large")]
    BodyTooLarge,
}

/// One milter, as a filter of every stage: clone it into each stage's layer (see the
/// module documentation). Cheap to clone; clones share the milter's identity, so they
/// share one milter connection per SMTP connection.
#[derive(Clone, Debug)]
pub struct Milter {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    settings: MilterSettings,
    address: Address,
    name: String,
    /// Tells this milter's connections apart from other milters' in the notes.
    id: u64,
}

static MILTER_IDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl Milter {
    /// A milter from its settings; fails only on an address that does not parse
    /// (nothing is connected before the first SMTP connection).
    ///
    /// ```
    /// use smtp_server::filters::milter::{Milter, MilterSettings};
    /// let m = Milter::new(MilterSettings { address: "unix:/run/m.sock".into(), ..Default::default() });
    /// assert_eq!(m.unwrap().name(), "unix:/run/m.sock");
    /// assert!(Milter::new(MilterSettings { address: "nowhere".into(), ..Default::default() }).is_err());
    /// ```
    pub fn new(settings: MilterSettings) -> Result<Self, MilterError> {
        let address = Address::parse(&settings.address)?;
        let name = if settings.name.is_empty() {
            settings.address.clone()
        } else {
            settings.name.clone()
        };
        Ok(Self {
            inner: Arc::new(Inner {
                settings,
                address,
                name,
                id: MILTER_IDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            }),
        })
    }

    /// The name in logs and in `X-Quarantine`.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The settings.
    pub fn settings(&self) -> &MilterSettings {
        &self.inner.settings
    }

    /// This milter's state for the connection of `session`, made at the first stage.
    fn link(&self, session: &SessionInfo) -> Arc<tokio::sync::Mutex<Link>> {
        let links = match session.connection.get::<Links>() {
            Some(links) => links,
            None => {
                let links = Links::default();
                session.connection.insert(links.clone());
                links
            }
        };
        let mut map = links.0.lock().unwrap_or_else(|e| e.into_inner());
        Arc::clone(map.entry(self.inner.id).or_default())
    }
}

/// The milter connections of one SMTP connection, by milter.
#[derive(Clone, Default)]
struct Links(Arc<Mutex<HashMap<u64, Arc<tokio::sync::Mutex<Link>>>>>);

/// One milter's state on one SMTP connection.
#[derive(Debug, Default)]
struct Link {
    conversation: Option<Conversation>,
    state: LinkState,
    /// CONNECT was sent.
    connected: bool,
    /// The HELO name last sent.
    helo: Option<String>,
    /// A refusal at connect, given at MAIL, RCPT and DATA (Postfix's way: the
    /// greeting is 220, later commands get the milter's 4yz).
    refusal: Option<Decision>,
    /// The mechanism of the last AUTH (`{auth_type}`).
    auth_type: Option<String>,
    txn: Option<Txn>,
    transactions: u64,
}

#[derive(Debug, Default, PartialEq, Eq)]
enum LinkState {
    /// Working (or not opened yet).
    #[default]
    Asking,
    /// The milter accepted the connection (or closed it): ask no more.
    Done,
    /// The milter failed: the default action applies.
    Failed,
}

/// One transaction as the milter saw it.
#[derive(Debug)]
struct Txn {
    notes: Notes,
    id: String,
    mail_sent: bool,
    rcpt_sent: bool,
    /// The milter accepted the message: ask no more.
    accepted: bool,
    /// The milter wants the message dropped.
    discard: bool,
    /// End of body was answered: nothing to abort.
    finished: bool,
    /// The milter refused the sender: the rest of the transaction gets the same.
    refusal: Option<Decision>,
}

/// Where a verdict was given: what accept means, and how a refusal is given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Level {
    Connect,
    Helo,
    Mail,
    Rcpt,
    Data,
}

/// What a stage does after asking.
enum Step {
    Go,
    Decide(Decision),
}

impl Milter {
    /// Whether to ask the milter on this link: `None` to ask, or what to answer
    /// without asking (it is done, or failed).
    fn skip(&self, link: &Link, level: Level) -> Option<Option<Decision>> {
        match link.state {
            LinkState::Asking => None,
            LinkState::Done => Some(None),
            LinkState::Failed => Some(self.default_decision(level)),
        }
    }

    /// The milter failed: it is not asked again on this connection, and the default
    /// action answers (`None`: go on).
    fn fail(&self, link: &mut Link, level: Level, error: MilterError) -> Option<Decision> {
        link.conversation = None;
        link.state = LinkState::Failed;
        let action = self.inner.settings.default_action;
        warn!(milter = %self.inner.name, error = %error, ?action, "milter failed: default action");
        match self.default_decision(level) {
            Some(d) if level == Level::Connect => {
                link.refusal = Some(d);
                None
            }
            decision => decision,
        }
    }

    /// The default action's refusal at a level (`None`: go on).
    fn default_decision(&self, level: Level) -> Option<Decision> {
        if level == Level::Helo {
            return None;
        }
        match self.inner.settings.default_action {
            DefaultAction::Accept => None,
            DefaultAction::Tempfail => Some(tempfail()),
            DefaultAction::Reject => Some(reject()),
        }
    }

    fn timeout(&self) -> Duration {
        self.inner.settings.command_timeout
    }

    /// Opens the milter connection and sends CONNECT and HELO, those not sent yet; for a
    /// transaction stage (`helo`), also answers for a connection already refused or a
    /// milter that is done.
    async fn catch_up(
        &self,
        link: &mut Link,
        session: &SessionInfo,
        level: Level,
        helo: bool,
    ) -> Result<Option<Step>, MilterError> {
        let timeout = self.timeout();
        if link.conversation.is_none() {
            let settings = &self.inner.settings;
            let conversation =
                Conversation::open(&self.inner.address, settings.connect_timeout, timeout).await?;
            link.conversation = Some(conversation);
        }
        if !link.connected {
            link.connected = true;
            let step = self.send_connect(link, session).await?;
            if let Some(step) = self.settle(link, step, Level::Connect, level) {
                return Ok(Some(step));
            }
        }
        if helo
            && link.state == LinkState::Asking
            && let Some(helo) = &session.helo
        {
            let name = helo.to_string();
            if link.helo.as_deref() != Some(name.as_str()) {
                let step = self.send_helo(link, session, &name).await?;
                link.helo = Some(name);
                if let Some(step) = self.settle(link, step, Level::Helo, level) {
                    return Ok(Some(step));
                }
            }
        }
        if helo {
            // A transaction stage: a refusal of the connection stands, and a milter
            // that is done (accepted, or skipped for good) is not asked.
            if let Some(refusal) = &link.refusal {
                return Ok(Some(Step::Decide(refusal.clone())));
            }
            if link.state == LinkState::Done {
                return Ok(Some(Step::Go));
            }
        }
        Ok(None)
    }

    /// What a verdict given at `given` means for the stage at `asked` (later when the
    /// verdict was for a command caught up): `None` to go on.
    fn settle(
        &self,
        link: &mut Link,
        response: Option<Response>,
        given: Level,
        asked: Level,
    ) -> Option<Step> {
        let name = &self.inner.name;
        let response = response?;
        let refusal = match response {
            Response::Continue | Response::Skip => return None,
            Response::Accept => {
                match given {
                    Level::Connect | Level::Helo => link.state = LinkState::Done,
                    _ => {
                        if let Some(txn) = &mut link.txn {
                            txn.accepted = true;
                        }
                    }
                }
                return None;
            }
            Response::Discard => {
                match (given, &mut link.txn) {
                    (Level::Connect | Level::Helo, _) | (_, None) => {
                        warn!(milter = %name, "milter discards outside a message: ignored");
                    }
                    (_, Some(txn)) => txn.discard = true,
                }
                return None;
            }
            Response::Shutdown | Response::ConnectionFailed => {
                link.state = LinkState::Done;
                link.conversation = None;
                info!(milter = %name, "milter closes the connection");
                return Some(Step::Decide(Decision::disconnect::<421>(
                    EnhancedStatus::SECURITY_TEMPORARY,
                    "Service unavailable - closing connection",
                )));
            }
            Response::Reject => reject(),
            Response::Tempfail => tempfail(),
            Response::Reply(reply) => Decision::from_reply(reply),
            _ => return None,
        };
        info!(milter = %name, stage = ?given, reply = ?refusal.reply().map(Reply::to_string), "milter refuses");
        if given == Level::Connect {
            if asked == Level::Connect && refusal.is_reject() {
                // No service for this client: the session answers 503 from now on.
                link.state = LinkState::Done;
                return Some(Step::Decide(Decision::reject::<554>(
                    EnhancedStatus::NOT_AUTHORIZED,
                    "Service not available",
                )));
            }
            link.refusal = Some(refusal.clone());
            if matches!(asked, Level::Connect | Level::Helo) {
                return None;
            }
        }
        if given == Level::Mail
            && let Some(txn) = &mut link.txn
        {
            txn.refusal = Some(refusal.clone());
        }
        Some(Step::Decide(refusal))
    }

    async fn send_connect(
        &self,
        link: &mut Link,
        session: &SessionInfo,
    ) -> Result<Option<Response>, MilterError> {
        let timeout = self.timeout();
        let settings = &self.inner.settings;
        let conversation = link.conversation.as_mut().ok_or(MilterError::Closed)?;
        let steps = conversation.negotiated.steps;
        if steps.contains(Steps::NO_CONNECT) {
            return Ok(None);
        }
        let ip = session.peer.ip();
        let literal = format!("[{ip}]");
        let mut macros = vec![
            m("j", &settings.hostname),
            m("{daemon_name}", &settings.daemon_name),
            m("{daemon_addr}", &session.local.ip().to_string()),
            m("{daemon_port}", &session.local.port().to_string()),
            m("v", concat!("mta ", env!("CARGO_PKG_VERSION"))),
            m("_", &format!("unknown {literal}")),
            m("{client_addr}", &ip.to_string()),
            m("{client_port}", &session.peer.port().to_string()),
            m("{client_name}", "unknown"),
            m("{client_ptr}", "unknown"),
        ];
        tls_macros(session, &mut macros);
        conversation
            .macros(MacroStage::Connect, macros, timeout)
            .await?;
        let command = Command::Connect {
            hostname: &literal,
            address: Some(session.peer),
        };
        let reply = !steps.contains(Steps::NO_REPLY_CONNECT);
        conversation.ask(command, reply, timeout).await
    }

    async fn send_helo(
        &self,
        link: &mut Link,
        session: &SessionInfo,
        name: &str,
    ) -> Result<Option<Response>, MilterError> {
        let timeout = self.timeout();
        let conversation = link.conversation.as_mut().ok_or(MilterError::Closed)?;
        let steps = conversation.negotiated.steps;
        if steps.contains(Steps::NO_HELO) {
            return Ok(None);
        }
        let mut macros = Vec::new();
        tls_macros(session, &mut macros);
        conversation
            .macros(MacroStage::Helo, macros, timeout)
            .await?;
        let reply = !steps.contains(Steps::NO_REPLY_HELO);
        conversation.ask(Command::Helo(name), reply, timeout).await
    }

    /// Starts the transaction of `notes` if it is new (aborting the last one), and
    /// sends MAIL. `Some` when the milter refuses (or the message is accepted or
    /// discarded already, in which case nothing more is asked).
    async fn begin_transaction(
        &self,
        link: &mut Link,
        session: &SessionInfo,
        notes: &Notes,
        from: &ReversePath,
        params: &MailParameters,
        asked: Level,
    ) -> Result<Option<Step>, MilterError> {
        let timeout = self.timeout();
        if let Some(txn) = link.txn.as_ref().filter(|t| t.notes == *notes) {
            return Ok(txn.refusal.clone().map(Step::Decide));
        }
        let conversation = link.conversation.as_mut().ok_or(MilterError::Closed)?;
        if link
            .txn
            .as_ref()
            .is_some_and(|t| t.mail_sent && !t.finished)
        {
            conversation.send(Command::Abort, timeout).await?;
        }
        link.transactions += 1;
        let id = format!("{:X}.{}", session.id, link.transactions);
        link.txn = Some(Txn {
            notes: notes.clone(),
            id: id.clone(),
            mail_sent: true,
            rcpt_sent: false,
            accepted: false,
            discard: false,
            finished: false,
            refusal: None,
        });
        let steps = conversation.negotiated.steps;
        if steps.contains(Steps::NO_MAIL) {
            return Ok(None);
        }
        let mut macros = vec![m("i", &id)];
        if let Some(user) = &session.authenticated {
            macros.push(m("{auth_authen}", user));
            if let Some(mechanism) = &link.auth_type {
                macros.push(m("{auth_type}", mechanism));
            }
        }
        let (addr, host) = match from.mailbox() {
            Some(mailbox) => (mailbox.as_str().to_owned(), mailbox.domain().to_owned()),
            None => (String::new(), String::new()),
        };
        macros.push(m("{mail_addr}", &addr));
        macros.push(m("{mail_host}", &host));
        macros.push(m("{mail_mailer}", "esmtp"));
        conversation
            .macros(MacroStage::Mail, macros, timeout)
            .await?;
        let mut args = vec![from.to_string()];
        args.extend(esmtp_args(|out| params.encode(out)));
        let reply = !steps.contains(Steps::NO_REPLY_MAIL);
        let response = conversation
            .ask(Command::Mail(&args), reply, timeout)
            .await?;
        Ok(self.settle(link, response, Level::Mail, asked))
    }

    /// Sends one RCPT.
    async fn send_rcpt(
        &self,
        link: &mut Link,
        to: &ForwardPath,
        params: &RcptParameters,
    ) -> Result<Option<Response>, MilterError> {
        let timeout = self.timeout();
        let conversation = link.conversation.as_mut().ok_or(MilterError::Closed)?;
        if let Some(txn) = &mut link.txn {
            txn.rcpt_sent = true;
        }
        let steps = conversation.negotiated.steps;
        if steps.contains(Steps::NO_RCPT) {
            return Ok(None);
        }
        let (addr, host) = match to.mailbox() {
            Some(mailbox) => (mailbox.as_str().to_owned(), mailbox.domain().to_owned()),
            None => ("Postmaster".to_owned(), String::new()),
        };
        let macros = vec![
            m("{rcpt_addr}", &addr),
            m("{rcpt_host}", &host),
            m("{rcpt_mailer}", "esmtp"),
        ];
        conversation
            .macros(MacroStage::Rcpt, macros, timeout)
            .await?;
        let mut args = vec![to.to_string()];
        args.extend(esmtp_args(|out| params.encode(out)));
        let reply = !steps.contains(Steps::NO_REPLY_RCPT);
        conversation.ask(Command::Rcpt(&args), reply, timeout).await
    }

    async fn on_connect(
        &self,
        link: &mut Link,
        request: &mut ConnectRequest,
    ) -> Result<Step, MilterError> {
        Ok(self
            .catch_up(link, &request.session, Level::Connect, false)
            .await?
            .unwrap_or(Step::Go))
    }

    async fn on_helo(
        &self,
        link: &mut Link,
        request: &mut EhloRequest,
    ) -> Result<Step, MilterError> {
        if let Some(step) = self
            .catch_up(link, &request.session, Level::Helo, false)
            .await?
        {
            return Ok(step);
        }
        if link.state == LinkState::Done {
            return Ok(Step::Go);
        }
        let name = request.name.to_string();
        let response = self.send_helo(link, &request.session, &name).await?;
        link.helo = Some(name);
        Ok(self
            .settle(link, response, Level::Helo, Level::Helo)
            .unwrap_or(Step::Go))
    }

    async fn on_mail(
        &self,
        link: &mut Link,
        request: &mut MailRequest,
    ) -> Result<Step, MilterError> {
        if let Some(step) = self
            .catch_up(link, &request.session, Level::Mail, true)
            .await?
        {
            return Ok(step);
        }
        let step = self
            .begin_transaction(
                link,
                &request.session,
                &request.notes,
                &request.from,
                &request.params,
                Level::Mail,
            )
            .await?;
        Ok(step.unwrap_or(Step::Go))
    }

    async fn on_rcpt(
        &self,
        link: &mut Link,
        request: &mut RcptRequest,
    ) -> Result<Step, MilterError> {
        if let Some(step) = self
            .catch_up(link, &request.session, Level::Rcpt, true)
            .await?
        {
            return Ok(step);
        }
        let params = MailParameters::default();
        let begun = self
            .begin_transaction(
                link,
                &request.session,
                &request.notes,
                &request.from,
                &params,
                Level::Rcpt,
            )
            .await?;
        if let Some(step) = begun {
            return Ok(step);
        }
        if link.txn.as_ref().is_some_and(|t| t.accepted || t.discard) {
            return Ok(Step::Go);
        }
        let response = self.send_rcpt(link, &request.to, &request.params).await?;
        Ok(self
            .settle(link, response, Level::Rcpt, Level::Rcpt)
            .unwrap_or(Step::Go))
    }

    async fn on_data(
        &self,
        link: &mut Link,
        request: &mut DataRequest,
    ) -> Result<Step, MilterError> {
        let session = Arc::clone(&request.session);
        if let Some(step) = self.catch_up(link, &session, Level::Data, true).await? {
            return Ok(step);
        }
        let envelope = request.envelope.clone();
        let begun = self
            .begin_transaction(
                link,
                &session,
                &request.notes,
                &envelope.from,
                &envelope.params,
                Level::Data,
            )
            .await?;
        if let Some(step) = begun {
            return Ok(step);
        }
        // Recipients the rcpt stage did not send (it was off, or not added).
        if link.txn.as_ref().is_some_and(|t| !t.rcpt_sent) {
            // Refused recipients leave the envelope with their reply (one reply each
            // under LMTP); `index` is where the next one stands in it now.
            let mut index = 0;
            let mut refused = None;
            for recipient in envelope.recipients {
                if link.txn.as_ref().is_some_and(|t| t.accepted || t.discard) {
                    index += 1;
                    continue;
                }
                let response = self
                    .send_rcpt(link, &recipient.to, &recipient.params)
                    .await?;
                match self.settle(link, response, Level::Rcpt, Level::Rcpt) {
                    Some(Step::Decide(d)) if d.closes() => return Ok(Step::Decide(d)),
                    Some(Step::Decide(d)) => {
                        let Some(reply) = d.reply().cloned() else {
                            index += 1;
                            continue;
                        };
                        debug!(milter = %self.inner.name, "milter refuses a recipient at data");
                        request.refuse_recipient(index, reply);
                        refused = Some(d);
                    }
                    _ => index += 1,
                }
            }
            if request.envelope.recipients.is_empty() {
                return Ok(Step::Decide(refused.unwrap_or_else(reject)));
            }
        }
        self.send_message(link, request).await
    }

    /// DATA, the header fields, the body and end of body, then the modifications.
    async fn send_message(
        &self,
        link: &mut Link,
        request: &mut DataRequest,
    ) -> Result<Step, MilterError> {
        let name = self.inner.name.clone();
        let timeout = self.timeout();
        let eom_timeout = self.inner.settings.end_of_message_timeout;
        let Some(txn) = link.txn.as_ref() else {
            return Ok(Step::Go);
        };
        let txn_id = txn.id.clone();
        let discard = || -> Result<Step, MilterError> {
            info!(milter = %name, "message discarded by the milter");
            Ok(Step::Decide(Decision::accept()))
        };
        macro_rules! verdict {
            ($response:expr) => {
                match self.settle(link, $response, Level::Data, Level::Data) {
                    Some(step) => return Ok(step),
                    None => {
                        let txn = link.txn.as_ref();
                        if txn.is_some_and(|t| t.discard) {
                            return discard();
                        }
                        if txn.is_some_and(|t| t.accepted) {
                            return Ok(Step::Go);
                        }
                    }
                }
            };
        }
        verdict!(None);
        let conversation = link.conversation.as_mut().ok_or(MilterError::Closed)?;
        let negotiated = conversation.negotiated.clone();
        let steps = negotiated.steps;
        let leading_space = steps.contains(Steps::HEADER_LEADING_SPACE);
        let i = || vec![m("i", &txn_id)];
        if !steps.contains(Steps::NO_DATA) {
            conversation.macros(MacroStage::Data, i(), timeout).await?;
            let reply = !steps.contains(Steps::NO_REPLY_DATA);
            let response = conversation.ask(Command::Data, reply, timeout).await?;
            verdict!(response);
        }
        let header = Header::parse(&request.added_headers, &request.body);
        if !steps.contains(Steps::NO_HEADERS) {
            let reply = !steps.contains(Steps::NO_REPLY_HEADER);
            for field in &header.fields {
                let mut value = field.milter_value(leading_space);
                // libmilter takes at most 64 KiB per packet.
                value.truncate(MAX_CHUNK.saturating_sub(field.name.len() + 8));
                let command = Command::Header {
                    name: &field.name,
                    value: &value,
                };
                let conversation = link.conversation.as_mut().ok_or(MilterError::Closed)?;
                let response = conversation.ask(command, reply, timeout).await?;
                verdict!(response);
            }
        }
        let conversation = link.conversation.as_mut().ok_or(MilterError::Closed)?;
        if !steps.contains(Steps::NO_EOH) {
            conversation
                .macros(MacroStage::EndOfHeaders, i(), timeout)
                .await?;
            let reply = !steps.contains(Steps::NO_REPLY_EOH);
            let response = conversation
                .ask(Command::EndOfHeaders, reply, timeout)
                .await?;
            verdict!(response);
        }
        if !steps.contains(Steps::NO_BODY) {
            let reply = !steps.contains(Steps::NO_REPLY_BODY);
            let body = request.body.clone();
            for chunk in body[header.body_start.min(body.len())..].chunks(MAX_CHUNK) {
                let conversation = link.conversation.as_mut().ok_or(MilterError::Closed)?;
                let response = conversation
                    .ask(Command::Body(chunk), reply, timeout)
                    .await?;
                if response == Some(Response::Skip) {
                    break;
                }
                verdict!(response);
            }
        }
        let conversation = link.conversation.as_mut().ok_or(MilterError::Closed)?;
        conversation
            .macros(MacroStage::EndOfBody, i(), timeout)
            .await?;
        let max_body = self.inner.settings.max_replaced_body;
        let (modifications, response) = conversation.end_of_body(eom_timeout, max_body).await?;
        if let Some(txn) = &mut link.txn {
            txn.finished = true;
        }
        match self.settle(link, Some(response), Level::Data, Level::Data) {
            Some(step) => return Ok(step),
            None if link.txn.as_ref().is_some_and(|t| t.discard) => return discard(),
            None => {}
        }
        self.modify(request, header, modifications, &negotiated);
        Ok(Step::Go)
    }

    /// Applies the modifications of end of body to the request, in order.
    fn modify(
        &self,
        request: &mut DataRequest,
        mut header: Header,
        modifications: Vec<Response>,
        negotiated: &session::Negotiated,
    ) {
        let name = &self.inner.name;
        let leading_space = negotiated.steps.contains(Steps::HEADER_LEADING_SPACE);
        let mut body: Option<Vec<u8>> = None;
        let mut quarantine = None;
        for modification in modifications {
            let needs = match &modification {
                Response::AddHeader { .. } | Response::InsertHeader { .. } => Actions::ADD_HEADERS,
                Response::ChangeHeader { .. } => Actions::CHANGE_HEADERS,
                Response::ReplaceBody(_) => Actions::CHANGE_BODY,
                Response::AddRecipient(_) => Actions::ADD_RECIPIENT,
                Response::AddRecipientArgs { .. } => Actions::ADD_RECIPIENT_ARGS,
                Response::DeleteRecipient(_) => Actions::DELETE_RECIPIENT,
                Response::ChangeFrom { .. } => Actions::CHANGE_FROM,
                Response::Quarantine(_) => Actions::QUARANTINE,
                _ => Actions::default(),
            };
            if !negotiated.actions.contains(needs) {
                warn!(milter = %name, action = needs.0, "milter modification it did not negotiate: ignored");
                continue;
            }
            match modification {
                Response::AddHeader { name, value } if valid_field_name(&name) => {
                    header.add(Field::new(&name, &value, leading_space));
                }
                Response::InsertHeader { index, name, value } if valid_field_name(&name) => {
                    let field = Field::new(&name, &value, leading_space);
                    header.insert(index as usize, field);
                }
                Response::ChangeHeader { index, name, value } if valid_field_name(&name) => {
                    header.change(index as usize, Field::new(&name, &value, leading_space));
                }
                Response::ReplaceBody(chunk) => body.get_or_insert_with(Vec::new).extend(chunk),
                Response::AddRecipient(to) => add_recipient(request, &to, None, name),
                Response::AddRecipientArgs { recipient, args } => {
                    add_recipient(request, &recipient, Some(&args), name);
                }
                Response::DeleteRecipient(to) => {
                    let to = bare(&to).to_ascii_lowercase();
                    request
                        .envelope
                        .recipients
                        .retain(|r| bare(&r.to.to_string()).to_ascii_lowercase() != to);
                }
                Response::ChangeFrom { sender, args } => {
                    match ReversePath::parse(&bracketed(&sender)) {
                        Ok(from) => {
                            request.envelope.from = from;
                            if let Some(args) = args {
                                match MailParameters::parse(args.trim()) {
                                    Ok(params) => request.envelope.params = params,
                                    Err(e) => {
                                        warn!(milter = %name, error = %e, "milter sender arguments ignored");
                                    }
                                }
                            }
                        }
                        Err(e) => warn!(milter = %name, error = %e, "milter sender ignored"),
                    }
                }
                Response::Quarantine(reason) => quarantine = Some(reason),
                _ => warn!(milter = %name, "bad milter header name: ignored"),
            }
        }
        let content = request.body.clone();
        let separator = header.body_start > header.rest.start;
        let new_body = body.map(|b| {
            let mut b = crlf(&b);
            if !b.is_empty() && !b.ends_with(b"\r\n") {
                b.extend_from_slice(b"\r\n");
            }
            b
        });
        if header.changed {
            let mut out = Vec::with_capacity(content.len() + 1024);
            header.write_fields(&mut out);
            match &new_body {
                Some(b) => {
                    if separator || !b.is_empty() {
                        out.extend_from_slice(b"\r\n");
                    }
                    out.extend_from_slice(b);
                }
                None => out.extend_from_slice(&content[header.rest.clone()]),
            }
            request.body = Content::from(out);
            request.added_headers.clear();
            debug!(milter = %name, "milter changed the header");
        } else if let Some(b) = new_body {
            let mut out = content[..header.body_start.min(content.len())].to_vec();
            if !separator && !b.is_empty() {
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(&b);
            request.body = Content::from(out);
            debug!(milter = %name, "milter replaced the body");
        }
        if let Some(reason) = quarantine {
            info!(milter = %name, "milter quarantines the message");
            request.prepend_header("X-Quarantine", &format!("milter {name}: {reason}"));
        }
    }

    /// Notes the mechanism of a login for `{auth_type}` (the milter protocol has no AUTH
    /// command).
    fn on_auth(&self, request: &AuthRequest) {
        if let Ok(mut link) = self.link(&request.session).try_lock() {
            link.auth_type = Some(request.credentials.mechanism.to_string());
        }
    }
}

/// The filter of a stage: the link locked for the stage, the handler asked, a failure
/// turned into the default action.
macro_rules! stage_check {
    ($req:ty, $level:expr, $enabled:expr, $handler:ident) => {
        impl AsyncCheck<$req> for Milter {
            fn check(&self, mut request: $req) -> CheckFuture<$req> {
                let milter = self.clone();
                Box::pin(async move {
                    let enabled: fn(&MilterStages) -> bool = $enabled;
                    if !enabled(&milter.inner.settings.stages) {
                        return Ok(Flow::Continue(request));
                    }
                    let link = milter.link(&request.session);
                    let mut link = link.lock().await;
                    let decision = match milter.skip(&link, $level) {
                        Some(decision) => decision,
                        None => match milter.$handler(&mut link, &mut request).await {
                            Ok(Step::Go) => None,
                            Ok(Step::Decide(d)) => Some(d),
                            Err(e) => milter.fail(&mut link, $level, e),
                        },
                    };
                    Ok(match decision {
                        Some(d) => Flow::Decide(d),
                        None => Flow::Continue(request),
                    })
                })
            }
        }
    };
}

stage_check!(ConnectRequest, Level::Connect, |s| s.connect, on_connect);
stage_check!(EhloRequest, Level::Helo, |s| s.helo, on_helo);
stage_check!(MailRequest, Level::Mail, |s| s.mail, on_mail);
stage_check!(RcptRequest, Level::Rcpt, |s| s.rcpt, on_rcpt);
stage_check!(DataRequest, Level::Data, |_| true, on_data);

/// At the auth stage the milter is not asked (the protocol has no AUTH command): the
/// mechanism is noted for the `{auth_type}` macro of MAIL.
impl AsyncCheck<AuthRequest> for Milter {
    fn check(&self, request: AuthRequest) -> CheckFuture<AuthRequest> {
        self.on_auth(&request);
        Box::pin(async move { Ok(Flow::Continue(request)) })
    }
}

fn m(name: &str, value: &str) -> (String, String) {
    (name.to_owned(), value.to_owned())
}

fn tls_macros(session: &SessionInfo, macros: &mut Vec<(String, String)>) {
    if let Some(tls) = &session.tls {
        macros.push(m("{tls_version}", &tls.version));
        macros.push(m("{cipher}", &tls.cipher));
    }
}

/// The ESMTP arguments an `encode` writes (` KEY=value` each), one string each.
fn esmtp_args(encode: impl FnOnce(&mut Vec<u8>)) -> Vec<String> {
    let mut out = Vec::new();
    encode(&mut out);
    String::from_utf8_lossy(&out)
        .split(' ')
        .filter(|a| !a.is_empty())
        .map(str::to_owned)
        .collect()
}

fn tempfail() -> Decision {
    Decision::defer::<451>(
        EnhancedStatus::NOT_AUTHORIZED_TEMPORARY,
        "Service unavailable - try again later",
    )
}

fn reject() -> Decision {
    Decision::reject::<550>(EnhancedStatus::NOT_AUTHORIZED, "Command rejected")
}

/// `<a@b>` for `a@b` (milters send either).
fn bracketed(address: &str) -> String {
    let address = address.trim();
    if address.starts_with('<') {
        address.to_owned()
    } else {
        format!("<{address}>")
    }
}

fn bare(address: &str) -> &str {
    let address = address.trim();
    address
        .strip_prefix('<')
        .and_then(|a| a.strip_suffix('>'))
        .unwrap_or(address)
}

fn add_recipient(request: &mut DataRequest, to: &str, args: Option<&str>, milter: &str) {
    let to = match ForwardPath::parse(&bracketed(to)) {
        Ok(to) => to,
        Err(e) => {
            warn!(milter, error = %e, "milter recipient ignored");
            return;
        }
    };
    let params = match args.map(|a| RcptParameters::parse(a.trim())) {
        None => RcptParameters::default(),
        Some(Ok(params)) => params,
        Some(Err(e)) => {
            warn!(milter, error = %e, "milter recipient arguments ignored");
            RcptParameters::default()
        }
    };
    request.envelope.recipients.push(Recipient { to, params });
}

/// A header field name (RFC 5322 §3.6.8: printable ASCII but the colon).
fn valid_field_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| (33..=126).contains(&b) && b != b':')
}
