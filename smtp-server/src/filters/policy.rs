//! Postfix SMTPD access policy delegation (`name=value` lines), as a rcpt-stage filter.
//!
//! At each `RCPT TO` the filter sends the attributes Postfix sends to a policy service
//! (`SMTPD_POLICY_README`: `request=smtpd_access_policy`, `protocol_state=RCPT`, the
//! client, HELO name, sender, recipient, TLS and login facts, one `instance` per
//! transaction), one `name=value` line each and an empty line, and reads `action=...`
//! up to the empty line that ends the answer. The answer maps as Postfix maps it:
//!
//! | action | SMTP |
//! | --- | --- |
//! | `OK`, `DUNNO` (and any other all-numeric word) | the rest of the chain decides |
//! | `REJECT [text]` | `554 5.7.1 text` |
//! | `DEFER`, `DEFER_IF_PERMIT`, `DEFER_IF_REJECT` `[text]` | `450 4.7.1 text` |
//! | `4NN [d.ddd.ddd] text`, `5NN [d.ddd.ddd] text` | that reply (`4.7.1`/`5.7.1` when no status is given); `421` and `521` close the connection |
//! | `PREPEND name: value` | the header is added to the message at the data stage |
//! | `WARN text`, `INFO text` | logged; the rest of the chain decides |
//! | anything else (`HOLD`, `DISCARD`, `FILTER`, `REDIRECT`, garbage) | the [`DefaultAction`], with a warning |
//!
//! A service that cannot be reached, answers late (after [`PolicyService::timeout`]) or
//! answers garbage gets the [`DefaultAction`] too, as Postfix's
//! `smtpd_policy_service_default_action`. The connection is kept for the rest of the
//! SMTP session (one per session and service, as Postfix keeps it) and opened again
//! once when the service closed it in between.
//!
//! ```
//! use smtp_server::filters::policy::{DefaultAction, PolicyCheck, PolicyService};
//! use std::time::Duration;
//!
//! # let sink = tower::service_fn(|_| async { Ok::<_, smtp_server::BoxError>(smtp_server::Decision::accept()) });
//! let postgrey = PolicyService {
//!     address: "inet:127.0.0.1:10023".parse().unwrap(),
//!     timeout: Duration::from_secs(10),
//!     default_action: DefaultAction::Accept,
//!     ..PolicyService::default()
//! };
//! // The rcpt-stage check, and the mail- and data-stage halves that note the SIZE and
//! // add the headers asked for by PREPEND.
//! let stages = PolicyCheck::new(postgrey).add_to(smtp_server::Stages::new(sink));
//! ```

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use smtp_proto::{EnhancedStatus, ForwardPath, Reply, ReplyCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::{debug, warn};

use crate::filter::{AsyncCheck, Check, CheckFuture, Flow, filter, filter_async};
use crate::filters::{Endpoint, ServiceStream, connect_service};
use crate::stage::{DataRequest, Decision, MailRequest, RcptRequest, Stages};

/// Where a policy service listens and how the filter behaves when it does not answer
/// (Postfix's `check_policy_service` and `smtpd_policy_service_*` parameters).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyService {
    /// `inet:host:port` or `unix:/path` (default `inet:127.0.0.1:10023`, postgrey's
    /// port).
    pub address: PolicyAddress,
    /// How long one query may take, connecting included (default 10 s; Postfix's
    /// `smtpd_policy_service_timeout` is 100 s).
    pub timeout: Duration,
    /// What to answer when the service is down, late or garbled (default
    /// [`DefaultAction::Tempfail`]).
    pub default_action: DefaultAction,
    /// The largest answer read, in bytes (default 16 KiB); a longer one is garbage.
    pub max_reply_size: usize,
    /// Sent as `policy_context=` (Postfix's `smtpd_policy_service_policy_context`), so
    /// one service can tell its callers apart (default empty).
    pub policy_context: String,
}

impl Default for PolicyService {
    fn default() -> Self {
        Self {
            address: PolicyAddress::Inet {
                host: "127.0.0.1".into(),
                port: 10023,
            },
            timeout: Duration::from_secs(10),
            default_action: DefaultAction::Tempfail,
            max_reply_size: 16 * 1024,
            policy_context: String::new(),
        }
    }
}

/// The address of a policy service.
///
/// ```
/// use smtp_server::filters::policy::PolicyAddress;
/// let inet: PolicyAddress = "inet:127.0.0.1:10023".parse().unwrap();
/// assert_eq!(inet, PolicyAddress::Inet { host: "127.0.0.1".into(), port: 10023 });
/// let v6: PolicyAddress = "inet:[::1]:10023".parse().unwrap();
/// assert_eq!(v6.to_string(), "inet:[::1]:10023");
/// let unix: PolicyAddress = "unix:/run/postgrey.sock".parse().unwrap();
/// assert_eq!(unix, PolicyAddress::Unix("/run/postgrey.sock".into()));
/// assert!("tcp:localhost".parse::<PolicyAddress>().is_err());
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PolicyAddress {
    /// `inet:host:port` (an IPv6 address in brackets).
    Inet {
        /// A host name or an address.
        host: String,
        /// The port.
        port: u16,
    },
    /// `unix:/path`: a Unix-domain stream socket.
    Unix(PathBuf),
}

/// An address that is neither `inet:host:port` nor `unix:/path`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("a policy service address is inet:host:port or unix:/path, not {0:?}")]
pub struct InvalidPolicyAddress(String);

impl std::str::FromStr for PolicyAddress {
    type Err = InvalidPolicyAddress;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || InvalidPolicyAddress(s.to_owned());
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(invalid());
            }
            return Ok(Self::Unix(path.into()));
        }
        let rest = s.strip_prefix("inet:").ok_or_else(invalid)?;
        let (host, port) = rest.rsplit_once(':').ok_or_else(invalid)?;
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let port = port.parse().map_err(|_| invalid())?;
        if host.is_empty() || port == 0 {
            return Err(invalid());
        }
        Ok(Self::Inet {
            host: host.to_owned(),
            port,
        })
    }
}

impl fmt::Display for PolicyAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Inet { host, port } if host.contains(':') => write!(f, "inet:[{host}]:{port}"),
            Self::Inet { host, port } => write!(f, "inet:{host}:{port}"),
            Self::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// What the filter answers when the policy service fails (down, late, garbled, or an
/// action this server does not carry out).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DefaultAction {
    /// `451 4.3.0`: the client tries again later (Postfix's default, `451 4.3.5`, in
    /// spirit).
    #[default]
    Tempfail,
    /// Let the rest of the chain decide, as if the service had said `DUNNO`; a warning
    /// is logged.
    Accept,
}

/// The policy delegation filter: a rcpt-stage [`AsyncCheck`] that asks a
/// [`PolicyService`], with a mail-stage [`Check`] that notes the announced `SIZE` and a
/// data-stage [`Check`] that adds the headers the service asked for with `PREPEND`.
/// [`PolicyCheck::add_to`] installs all three; cloning is cheap (one shared state).
#[derive(Clone, Debug)]
pub struct PolicyCheck {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    settings: PolicyService,
    /// Tells apart the notes of two policy checks in one chain.
    id: u64,
}

/// Numbers the policy checks and the transactions (`instance=`) of this process.
static COUNTER: AtomicU64 = AtomicU64::new(1);

impl PolicyCheck {
    /// A check asking the service of `settings`.
    pub fn new(settings: PolicyService) -> Self {
        Self {
            inner: Arc::new(Inner {
                settings,
                id: COUNTER.fetch_add(1, Ordering::Relaxed),
            }),
        }
    }

    /// The settings.
    pub fn settings(&self) -> &PolicyService {
        &self.inner.settings
    }

    /// Adds the three halves of the check to `stages`: the rcpt-stage query (which
    /// runs before the rcpt layers added earlier), the mail-stage note of `SIZE=` and
    /// the data-stage headers of `PREPEND`.
    pub fn add_to(&self, stages: Stages) -> Stages {
        stages
            .mail_layer(filter(self.clone()))
            .rcpt_layer(filter_async(self.clone()))
            .data_layer(filter(self.clone()))
    }

    /// Sends one query, keeping the connection in `slot` for the next one.
    async fn query(&self, slot: &ConnectionSlot, request: &[u8]) -> Result<String, Failure> {
        let settings = &self.inner.settings;
        let mut slot = slot.0.lock().await;
        if let Some(mut stream) = slot.take() {
            match exchange(&mut stream, request, settings.max_reply_size).await {
                Ok(reply) => {
                    *slot = Some(stream);
                    return Ok(reply);
                }
                // The service closed the idle connection: open it again, once.
                Err(Failure::Closed | Failure::Io(_)) => {
                    debug!(address = %settings.address, "policy connection closed, reconnecting");
                }
                Err(other) => return Err(other),
            }
        }
        let mut stream = connect(&settings.address).await?;
        let reply = exchange(&mut stream, request, settings.max_reply_size).await?;
        *slot = Some(stream);
        Ok(reply)
    }

    /// The connection of this check kept in the session's notes.
    fn slot(&self, request: &RcptRequest) -> ConnectionSlot {
        let connections = match request.session.connection.get::<PolicyConnections>() {
            Some(connections) => connections,
            None => {
                let connections = PolicyConnections::default();
                request.session.connection.insert(connections.clone());
                connections
            }
        };
        let mut map = connections
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        map.entry(self.inner.id).or_default().clone()
    }

    /// The decision for a failure, logged.
    fn fail(&self, request: RcptRequest, why: &dyn fmt::Display) -> Flow<RcptRequest> {
        let settings = &self.inner.settings;
        warn!(
            address = %settings.address,
            action = ?settings.default_action,
            "policy service failed: {why}"
        );
        match settings.default_action {
            DefaultAction::Tempfail => Flow::Decide(Decision::defer::<451>(
                EnhancedStatus::SYSTEM_TEMPORARY,
                "Policy service unavailable, try again later",
            )),
            DefaultAction::Accept => Flow::Continue(request),
        }
    }
}

impl AsyncCheck<RcptRequest> for PolicyCheck {
    fn check(&self, request: RcptRequest) -> CheckFuture<RcptRequest> {
        let this = self.clone();
        Box::pin(async move {
            let mut txn = request
                .notes
                .get::<PolicyTransaction>()
                .unwrap_or_else(|| PolicyTransaction::new(request.session.id));
            let query = attributes(&request, &txn, &this.inner.settings.policy_context);
            let slot = this.slot(&request);
            let timeout = this.inner.settings.timeout;
            let reply = match tokio::time::timeout(timeout, this.query(&slot, &query)).await {
                Ok(Ok(reply)) => reply,
                Ok(Err(failure)) => return Ok(this.fail(request, &failure)),
                Err(_) => {
                    let why = format!("no answer within {timeout:?}");
                    return Ok(this.fail(request, &why));
                }
            };
            let Some(action) = action_of(&reply) else {
                return Ok(this.fail(request, &"an answer without action="));
            };
            debug!(address = %this.inner.settings.address, action, "policy service answered");
            let flow = match Action::parse(action) {
                Action::Continue => Flow::Continue(request),
                Action::Log(text) => {
                    warn!(address = %this.inner.settings.address, "policy service says: {text}");
                    Flow::Continue(request)
                }
                Action::Prepend(header) => {
                    let key = (this.inner.id, header);
                    if !txn.headers.contains(&key) {
                        txn.headers.push(key);
                    }
                    Flow::Continue(request)
                }
                Action::Decide(decision) => Flow::Decide(decision),
                Action::Unknown => {
                    let why = format!("unsupported action {action:?}");
                    return Ok(this.fail(request, &why));
                }
            };
            if let Flow::Continue(request) = &flow {
                txn.recipients += 1;
                request.notes.insert(txn);
            }
            Ok(flow)
        })
    }
}

impl Check<MailRequest> for PolicyCheck {
    fn check(&self, request: &mut MailRequest) -> Option<Decision> {
        if let Some(size) = request.params.size {
            request.notes.insert(PolicySize(size));
        }
        None
    }
}

impl Check<DataRequest> for PolicyCheck {
    fn check(&self, request: &mut DataRequest) -> Option<Decision> {
        let txn = request.notes.get::<PolicyTransaction>()?;
        for (_, header) in txn.headers.iter().filter(|(id, _)| *id == self.inner.id) {
            if let Some((name, value)) = header.split_once(':') {
                request.prepend_header(name.trim_end(), value.trim_start());
            }
        }
        None
    }
}

/// What one action says.
#[derive(Debug, PartialEq, Eq)]
enum Action {
    /// `OK`, `DUNNO`: the rest of the chain decides.
    Continue,
    /// `WARN`, `INFO`: log the text, then continue.
    Log(String),
    /// `PREPEND name: value`.
    Prepend(String),
    /// `REJECT`, `DEFER*`, `4NN`, `5NN`.
    Decide(Decision),
    /// Anything this server does not do.
    Unknown,
}

impl Action {
    /// Reads the value of `action=` as Postfix's access(5) reads it.
    fn parse(action: &str) -> Self {
        let action = action.trim();
        let (word, text) = match action.split_once([' ', '\t']) {
            Some((word, text)) => (word, text.trim()),
            None => (action, ""),
        };
        let upper = word.to_ascii_uppercase();
        match upper.as_str() {
            "OK" | "DUNNO" => Self::Continue,
            "REJECT" => Self::reply(554, text, "Access denied"),
            "DEFER" | "DEFER_IF_PERMIT" | "DEFER_IF_REJECT" => {
                Self::reply(450, text, "Try again later")
            }
            "WARN" | "INFO" => Self::Log(text.to_owned()),
            "PREPEND" if is_header(text) => Self::Prepend(text.to_owned()),
            _ if word.len() == 3 && word.bytes().all(|b| b.is_ascii_digit()) => {
                match word.as_bytes()[0] {
                    b'4' | b'5' => {
                        let code = word.parse().unwrap_or(0);
                        Self::reply(code, text, "Access denied")
                    }
                    b'2' | b'3' => Self::Unknown,
                    _ => Self::Continue,
                }
            }
            // Postfix reads an all-numeric result as OK.
            _ if !word.is_empty() && word.bytes().all(|b| b.is_ascii_digit()) => Self::Continue,
            _ => Self::Unknown,
        }
    }

    /// A reply of `code` with the text (and the enhanced status it may start with) of
    /// an action; `4.7.1` or `5.7.1` when it has none.
    fn reply(code: u16, text: &str, default_text: &str) -> Self {
        let Some(code) = ReplyCode::new(code) else {
            return Self::Unknown;
        };
        let class = (code.as_u16() / 100) as u8;
        let (status, text) = match text.split_once(' ') {
            Some((first, rest)) => match first.parse::<EnhancedStatus>() {
                Ok(status) => (Some(status), rest.trim()),
                Err(_) => (None, text),
            },
            None => match text.parse::<EnhancedStatus>() {
                Ok(status) => (Some(status), ""),
                Err(_) => (None, text),
            },
        };
        let status = status
            .and_then(|s| s.with_class(class))
            .unwrap_or(if class == 4 {
                EnhancedStatus::NOT_AUTHORIZED_TEMPORARY
            } else {
                EnhancedStatus::NOT_AUTHORIZED
            });
        let text = if text.is_empty() { default_text } else { text };
        let decision = match code.as_u16() {
            // Postfix closes the connection after these.
            421 => Decision::disconnect::<421>(status, text),
            521 => Decision::disconnect::<521>(status, text),
            _ => match Reply::from_parts(code, Some(status), text.to_owned()) {
                Some(reply) => Decision::from_reply(reply),
                None => return Self::Unknown,
            },
        };
        Self::Decide(decision)
    }
}

/// Whether `text` is `name: value` with a valid field name (RFC 5322 §2.2).
fn is_header(text: &str) -> bool {
    match text.split_once(':') {
        Some((name, _)) => {
            let name = name.trim_end();
            !name.is_empty() && name.bytes().all(|b| (33..=126).contains(&b) && b != b':')
        }
        None => false,
    }
}

/// The value of `action=` in an answer.
fn action_of(reply: &str) -> Option<&str> {
    reply
        .lines()
        .find_map(|line| line.strip_prefix("action="))
        .filter(|a| !a.trim().is_empty())
}

/// What the filter keeps for one transaction.
#[derive(Clone, Debug)]
struct PolicyTransaction {
    /// `instance=`: the same for every recipient of the transaction.
    instance: String,
    /// `recipient_count=`: recipients passed on so far.
    recipients: u64,
    /// `PREPEND` headers, by check.
    headers: Vec<(u64, String)>,
}

impl PolicyTransaction {
    fn new(session: u64) -> Self {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        Self {
            instance: format!("{:x}.{session:x}.{n:x}", std::process::id()),
            recipients: 0,
            headers: Vec::new(),
        }
    }
}

/// `SIZE=` of MAIL FROM, noted by the mail stage.
#[derive(Clone, Copy, Debug)]
struct PolicySize(u64);

/// The open connections of a session, by check.
#[derive(Clone, Default)]
struct PolicyConnections(Arc<std::sync::Mutex<HashMap<u64, ConnectionSlot>>>);

/// One check's connection within a session (queries of a session come one at a time;
/// the lock only makes that a fact).
#[derive(Clone, Default)]
struct ConnectionSlot(Arc<tokio::sync::Mutex<Option<Box<dyn ServiceStream>>>>);

/// Why a query failed.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error("cannot connect: {0}")]
    Connect(std::io::Error),
    #[error("{0}")]
    Io(std::io::Error),
    #[error("the service closed the connection")]
    Closed,
    #[error("an answer longer than {0} bytes")]
    TooLong(usize),
}

async fn connect(address: &PolicyAddress) -> Result<Box<dyn ServiceStream>, Failure> {
    connect_service(match address {
        PolicyAddress::Inet { host, port } => Endpoint::Tcp(host, *port),
        PolicyAddress::Unix(path) => Endpoint::Unix(path),
    })
    .await
    .map_err(Failure::Connect)
}

/// Writes `request` and reads the answer up to its empty line.
async fn exchange(
    stream: &mut Box<dyn ServiceStream>,
    request: &[u8],
    max: usize,
) -> Result<String, Failure> {
    stream.write_all(request).await.map_err(Failure::Io)?;
    stream.flush().await.map_err(Failure::Io)?;
    let mut reply = Vec::with_capacity(256);
    let mut buf = [0u8; 1024];
    loop {
        let n = stream.read(&mut buf).await.map_err(Failure::Io)?;
        if n == 0 {
            return Err(Failure::Closed);
        }
        reply.extend_from_slice(&buf[..n]);
        if let Some(end) = answer_end(&reply) {
            if end != reply.len() {
                // Bytes after the answer: the stream is out of step; do not reuse it.
                return Err(Failure::Io(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "bytes after the answer",
                )));
            }
            return Ok(String::from_utf8_lossy(&reply).into_owned());
        }
        if reply.len() > max {
            return Err(Failure::TooLong(max));
        }
    }
}

/// The end of an answer (`\n\n`, or `\r\n\r\n` from a lenient server), if complete.
fn answer_end(reply: &[u8]) -> Option<usize> {
    if reply.starts_with(b"\n") {
        return Some(1);
    }
    let lf = reply.windows(2).position(|w| w == b"\n\n").map(|p| p + 2);
    let crlf = reply
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 4);
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The query for one recipient: the attributes Postfix sends, each on its line, then
/// an empty line.
fn attributes(request: &RcptRequest, txn: &PolicyTransaction, context: &str) -> Vec<u8> {
    let session = &request.session;
    let ip = |ip: IpAddr| match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    let sender = request
        .from
        .mailbox()
        .map(ToString::to_string)
        .unwrap_or_default();
    let recipient = match &request.to {
        ForwardPath::Postmaster => "postmaster".to_owned(),
        ForwardPath::Mailbox(m) => m.to_string(),
    };
    let size = request.notes.get::<PolicySize>().map_or(0, |s| s.0);
    let protocol = if session.protocol.starts_with("LMTP") {
        "LMTP"
    } else if session.protocol.starts_with("ESMTP") {
        "ESMTP"
    } else {
        "SMTP"
    };
    let helo = session.helo.as_ref().map(ToString::to_string);
    let login = session.authenticated.as_deref().unwrap_or("");
    let (tls_protocol, tls_cipher) = session
        .tls
        .as_ref()
        .map_or(("", ""), |t| (t.version.as_str(), t.cipher.as_str()));
    let pairs: [(&str, &str); 30] = [
        ("request", "smtpd_access_policy"),
        ("protocol_state", "RCPT"),
        ("protocol_name", protocol),
        ("helo_name", helo.as_deref().unwrap_or("")),
        ("queue_id", ""),
        ("sender", &sender),
        ("recipient", &recipient),
        ("recipient_count", &txn.recipients.to_string()),
        ("client_address", &ip(session.peer.ip()).to_string()),
        // No reverse DNS here: Postfix's word for an unresolved client.
        ("client_name", "unknown"),
        ("client_port", &session.peer.port().to_string()),
        ("reverse_client_name", "unknown"),
        ("server_address", &ip(session.local.ip()).to_string()),
        ("server_port", &session.local.port().to_string()),
        ("instance", &txn.instance),
        // The mechanism is not known at this stage; the login is.
        ("sasl_method", ""),
        ("sasl_username", login),
        ("sasl_sender", ""),
        ("size", &size.to_string()),
        ("ccert_subject", ""),
        ("ccert_issuer", ""),
        ("ccert_fingerprint", ""),
        ("ccert_pubkey_fingerprint", ""),
        ("encryption_protocol", tls_protocol),
        ("encryption_cipher", tls_cipher),
        ("encryption_keysize", ""),
        ("etrn_domain", ""),
        ("stress", ""),
        ("policy_context", context),
        ("compatibility_level", "3.6"),
    ];
    let mut out = Vec::with_capacity(1024);
    for (name, value) in pairs {
        out.extend_from_slice(name.as_bytes());
        out.push(b'=');
        // A value never breaks the line framing.
        out.extend(value.bytes().map(|b| match b {
            b'\r' | b'\n' | 0 => b' ',
            b => b,
        }));
        out.push(b'\n');
    }
    out.push(b'\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply_of(action: &str) -> String {
        match Action::parse(action) {
            Action::Decide(d) => {
                let reply = d.reply().cloned().map(|r| r.to_string());
                reply.unwrap_or_else(|| "accept".into())
            }
            other => format!("{other:?}"),
        }
    }

    #[test]
    fn actions_map_as_postfix_maps_them() {
        let table = [
            ("OK", "Continue"),
            ("dunno", "Continue"),
            ("12345", "Continue"),
            ("REJECT", "554 5.7.1 Access denied"),
            ("REJECT spammer", "554 5.7.1 spammer"),
            ("reject 5.7.0 go away", "554 5.7.0 go away"),
            ("DEFER", "450 4.7.1 Try again later"),
            (
                "DEFER_IF_PERMIT 4.2.0 Greylisted, see x",
                "450 4.2.0 Greylisted, see x",
            ),
            ("DEFER_IF_REJECT later", "450 4.7.1 later"),
            ("DEFER 5.7.1 wrong class", "450 4.7.1 wrong class"),
            ("450 4.2.0 greylisted", "450 4.2.0 greylisted"),
            ("550 no such user", "550 5.7.1 no such user"),
            ("521 5.7.0 go", "521 5.7.0 go"),
            ("421", "421 4.7.1 Access denied"),
            ("421 4.3.2 shutting down", "421 4.3.2 shutting down"),
            ("250 fine", "Unknown"),
            ("999 what", "Continue"),
            (
                "PREPEND X-Greylist: delayed 5 seconds",
                "Prepend(\"X-Greylist: delayed 5 seconds\")",
            ),
            ("PREPEND no header", "Unknown"),
            ("PREPEND : empty", "Unknown"),
            ("WARN look", "Log(\"look\")"),
            ("HOLD", "Unknown"),
            ("DISCARD", "Unknown"),
            ("REDIRECT a@b", "Unknown"),
            ("", "Unknown"),
        ];
        for (action, want) in table {
            assert_eq!(reply_of(action), want, "{action:?}");
        }
    }

    #[test]
    fn only_421_and_521_close_the_connection() {
        for (action, closes) in [
            ("421 bye", true),
            ("521 bye", true),
            ("450 no", false),
            ("REJECT", false),
        ] {
            let Action::Decide(decision) = Action::parse(action) else {
                panic!("{action}");
            };
            assert_eq!(decision.closes(), closes, "{action}");
        }
    }

    #[test]
    fn answers_end_at_the_empty_line() {
        assert_eq!(answer_end(b"action=OK\n\n"), Some(11));
        assert_eq!(answer_end(b"action=OK\r\n\r\n"), Some(13));
        assert_eq!(answer_end(b"action=OK\n"), None);
        assert_eq!(answer_end(b"\n"), Some(1));
        assert_eq!(action_of("foo=bar\naction=DUNNO\n\n"), Some("DUNNO"));
        assert_eq!(action_of("foo=bar\n\n"), None);
        assert_eq!(action_of("action=\n\n"), None);
    }

    #[test]
    fn addresses_parse_and_print() {
        for text in [
            "inet:127.0.0.1:10023",
            "inet:[::1]:1",
            "unix:/run/p.sock",
            "inet:localhost:9",
        ] {
            let address: PolicyAddress = text.parse().unwrap();
            assert_eq!(address.to_string(), text);
        }
        for bad in [
            "",
            "inet:",
            "inet:host",
            "inet::10",
            "inet:h:0",
            "inet:h:70000",
            "unix:",
            "host:10",
        ] {
            assert!(bad.parse::<PolicyAddress>().is_err(), "{bad:?}");
        }
    }
}
