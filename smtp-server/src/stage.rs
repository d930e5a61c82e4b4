//! The middleware chain: one tower `Service` per SMTP stage.
//!
//! ```text
//!  connect ─▶ ehlo ─▶ auth ─▶ mail ─▶ rcpt ─▶ data
//!     │        │       │       │       │       │
//!   layers   layers  layers  layers  layers  layers   (yours and the built-ins)
//!     │        │       │       │       │       │
//!  accept   accept  reject  accept  accept  your sink (the queue)
//! ```
//!
//! Each stage receives a request (the session facts plus what the client sent) and
//! answers with a [`Decision`]: accept, reject, defer or disconnect, each with its
//! reply. An `Err` means our own infrastructure failed; the server answers `451 4.3.0`
//! and the client retries. A data-stage layer can add header lines to the message with
//! [`DataRequest::prepend_header`] before passing it on.
//!
//! Add layers with [`Stages::rcpt_layer`] and friends (any tower `Layer`, a
//! `ServiceBuilder` stack, or [`from_fn`](crate::from_fn)). The last layer added is the
//! outermost: it sees the request first.

use std::any::Any;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use smtp_proto::{
    Credentials, EnhancedStatus, Envelope, ForwardPath, HeloKind, HeloName, MailParameters,
    RcptParameters, Recipient, Reply, ReplyCode, ReversePath,
};
use tower::util::BoxCloneSyncService;
use tower::{Layer, Service, ServiceExt};

use crate::config::ListenerMode;
use crate::content::Content;

/// The error type of stage services (tower's): infrastructure failures, answered
/// `451 4.3.0`.
pub use tower::BoxError;

/// A stage service, boxed.
pub type StageService<R> = BoxCloneSyncService<R, Decision, BoxError>;

/// What a stage decides: the reply the client gets, and whether the connection ends.
///
/// The kind of a decision is its reply's class, so the two cannot disagree: an
/// acceptance carries the standard reply or a `2yz`, a deferral a `4yz`, a rejection a
/// `5yz`. The constructors that take a code take it as a constant, checked when the
/// filter compiles; the enhanced status takes the code's class (RFC 3463: `reject::<550>`
/// with `4.7.1` sends `5.7.1`). A reply that comes from elsewhere (a milter, a policy
/// server, a peer) goes through [`Decision::from_reply`], which reads the kind from it.
/// Whatever a filter answers, what the session records (a HELO, a login) follows the
/// reply the client got.
///
/// ```
/// use smtp_server::Decision;
/// use smtp_proto::{EnhancedStatus, Reply, ReplyCode};
///
/// let no = Decision::reject::<550>(EnhancedStatus::BAD_DESTINATION_MAILBOX, "No such user");
/// assert!(no.is_reject());
/// let later = Decision::defer::<451>(EnhancedStatus::SYSTEM_TEMPORARY, "Try again later");
/// assert!(later.is_defer());
/// // A reply from elsewhere is taken for what its code says.
/// let peer = Reply::new(ReplyCode::AUTH_INVALID, EnhancedStatus::AUTH_INVALID, "No");
/// assert!(Decision::from_reply(peer).is_reject());
/// assert!(Decision::accept().is_accept());
/// ```
///
/// A rejection that says `250` does not compile:
///
/// ```compile_fail
/// use smtp_server::Decision;
/// let lie = Decision::reject::<250>(smtp_proto::EnhancedStatus::OK, "Rejected");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// `None`: the standard positive reply of the stage.
    reply: Option<Reply>,
    /// Close the connection after the reply.
    close: bool,
}

impl Decision {
    /// Accept with the standard reply.
    pub fn accept() -> Self {
        Self {
            reply: None,
            close: false,
        }
    }

    /// Refuse for good with a `5yz` reply.
    pub fn reject<const CODE: u16>(status: EnhancedStatus, text: impl Into<String>) -> Self {
        let code = const {
            match ReplyCode::new(CODE) {
                Some(code) if CODE / 100 == 5 => code,
                _ => panic!("Decision::reject takes a 5yz reply code"),
            }
        };
        Self::with(code, status, text.into(), false)
    }

    /// Refuse for now with a `4yz` reply; the client may retry.
    pub fn defer<const CODE: u16>(status: EnhancedStatus, text: impl Into<String>) -> Self {
        let code = const {
            match ReplyCode::new(CODE) {
                Some(code) if CODE / 100 == 4 => code,
                _ => panic!("Decision::defer takes a 4yz reply code"),
            }
        };
        Self::with(code, status, text.into(), false)
    }

    /// Send a `4yz` or `5yz` reply and close the connection.
    pub fn disconnect<const CODE: u16>(status: EnhancedStatus, text: impl Into<String>) -> Self {
        let code = const {
            match ReplyCode::new(CODE) {
                Some(code) if CODE / 100 == 4 || CODE / 100 == 5 => code,
                _ => panic!("Decision::disconnect takes a 4yz or 5yz reply code"),
            }
        };
        Self::with(code, status, text.into(), true)
    }

    /// The decision a reply stands for: an acceptance for `2yz` and `3yz`, a deferral
    /// for `4yz`, a rejection for `5yz`.
    pub fn from_reply(reply: Reply) -> Self {
        Self {
            reply: Some(reply),
            close: false,
        }
    }

    fn with(code: ReplyCode, status: EnhancedStatus, text: String, close: bool) -> Self {
        let class = (code.as_u16() / 100) as u8;
        let status = status.with_class(class).unwrap_or(status);
        Self {
            reply: Some(Reply::new(code, status, text)),
            close,
        }
    }

    /// Whether the request was accepted.
    pub fn is_accept(&self) -> bool {
        self.reply.as_ref().is_none_or(|r| r.code().as_u16() < 400)
    }

    /// Whether the request was refused for now (`4yz`).
    pub fn is_defer(&self) -> bool {
        self.reply.as_ref().is_some_and(Reply::is_transient)
    }

    /// Whether the request was refused for good (`5yz`).
    pub fn is_reject(&self) -> bool {
        self.reply.as_ref().is_some_and(Reply::is_permanent)
    }

    /// Whether the connection ends after the reply.
    pub fn closes(&self) -> bool {
        self.close
    }

    /// The reply; `None` for the stage's standard positive reply.
    pub fn reply(&self) -> Option<&Reply> {
        self.reply.as_ref()
    }
}

/// TLS facts of a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsInfo {
    /// `TLSv1.2` or `TLSv1.3`.
    pub version: String,
    /// The cipher suite.
    pub cipher: String,
}

/// Numbers sessions for logs.
static SESSION_IDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// A number for a new session, unique in this process.
pub(crate) fn new_session_id() -> u64 {
    SESSION_IDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// What the server knows about a connection; every stage request carries it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionInfo {
    /// A number for logs, unique in this process.
    pub id: u64,
    /// The client's address.
    pub peer: SocketAddr,
    /// Our address.
    pub local: SocketAddr,
    /// The listener the client came in on.
    pub mode: ListenerMode,
    /// TLS, when active.
    pub tls: Option<TlsInfo>,
    /// The accepted HELO/EHLO name.
    pub helo: Option<HeloName>,
    /// The authenticated user.
    pub authenticated: Option<String>,
    /// `SMTP`, `ESMTP`, `ESMTPS`, `ESMTPSA`, `LMTP` ... for `Received:` (RFC 3848).
    pub protocol: &'static str,
    /// Values filters keep for the whole connection (a milter's session, a verdict
    /// about the client), dropped when the connection ends; the same in every request
    /// of the connection.
    pub connection: Notes,
}

impl SessionInfo {
    /// [`SessionInfo::protocol`] of mail submitted on this machine ([`SessionInfo::local`]).
    pub const LOCAL: &'static str = "local";

    /// The session of mail submitted on this machine by `user` (`sendmail`, a control
    /// socket), for [`Stages::submit`]: from the loopback address, on no listener
    /// (`mode` is submission, as for a login), authenticated as `user` (the operating
    /// system vouched for it), no HELO, no TLS, protocol [`SessionInfo::LOCAL`].
    ///
    /// ```
    /// let session = smtp_server::SessionInfo::local("userid 1000");
    /// assert_eq!(session.authenticated.as_deref(), Some("userid 1000"));
    /// assert_eq!(session.protocol, smtp_server::SessionInfo::LOCAL);
    /// ```
    pub fn local(user: &str) -> Self {
        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        Self {
            id: new_session_id(),
            peer: loopback,
            local: loopback,
            mode: ListenerMode::Submission,
            tls: None,
            helo: None,
            authenticated: Some(user.to_owned()),
            protocol: Self::LOCAL,
            connection: Notes::default(),
        }
    }
}

/// The client's host name by reverse DNS, as a connect-stage filter found it and left
/// it in the connection's notes ([`SessionInfo::connection`]) for the filters after it
/// and for `Received:` (`from helo (name [192.0.2.1])`, or `unknown` when the name is
/// missing or not confirmed).
///
/// ```
/// use smtp_server::ClientName;
/// let found = ClientName { name: Some("mail.example.net".into()), confirmed: true };
/// assert_eq!(found.verified(), Some("mail.example.net"));
/// assert_eq!(ClientName { confirmed: false, ..found }.verified(), None);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientName {
    /// The name of the client's address (PTR), if it has one.
    pub name: Option<String>,
    /// Whether that name resolves back to the client's address (forward-confirmed
    /// reverse DNS, FCrDNS).
    pub confirmed: bool,
}

impl ClientName {
    /// The name, when it is forward-confirmed.
    pub fn verified(&self) -> Option<&str> {
        self.name.as_deref().filter(|_| self.confirmed)
    }
}

/// Values filters leave for the later stages of the same transaction, one per type:
/// what a mail-stage filter learned (an SPF verdict, say) for the data stage to use.
/// Every `MAIL FROM` starts with empty notes; the rcpt and data requests of that
/// transaction carry the same ones.
///
/// ```
/// use smtp_server::Notes;
/// #[derive(Clone, Debug, PartialEq)]
/// struct Score(u32);
/// let notes = Notes::default();
/// notes.insert(Score(3));
/// assert_eq!(notes.get::<Score>(), Some(Score(3)));
/// assert_eq!(notes.get::<String>(), None);
/// ```
#[derive(Clone, Default)]
pub struct Notes(Arc<Mutex<Vec<Box<dyn Any + Send + Sync>>>>);

impl Notes {
    /// Keeps `value`, replacing an earlier value of the same type.
    pub fn insert<T: Any + Send + Sync>(&self, value: T) {
        let mut notes = self.0.lock().unwrap_or_else(|e| e.into_inner());
        notes.retain(|n| !n.is::<T>());
        notes.push(Box::new(value));
    }

    /// A copy of the value of type `T`, if one was left.
    pub fn get<T: Any + Send + Sync + Clone>(&self) -> Option<T> {
        let notes = self.0.lock().unwrap_or_else(|e| e.into_inner());
        notes.iter().find_map(|n| n.downcast_ref::<T>()).cloned()
    }
}

/// Two `Notes` are equal when they are the same notes (one transaction's, or one
/// connection's), not when they hold equal values.
impl PartialEq for Notes {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for Notes {}

impl std::fmt::Debug for Notes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.0.lock().map_or(0, |n| n.len());
        write!(f, "Notes({n})")
    }
}

/// The connect stage: a client connected, before the greeting.
#[derive(Clone, Debug)]
pub struct ConnectRequest {
    /// The session.
    pub session: Arc<SessionInfo>,
}

/// The ehlo stage: HELO, EHLO or LHLO.
#[derive(Clone, Debug)]
pub struct EhloRequest {
    /// The session.
    pub session: Arc<SessionInfo>,
    /// Which command.
    pub kind: HeloKind,
    /// Its argument.
    pub name: HeloName,
}

/// The auth stage: credentials from a finished SASL exchange.
#[derive(Clone, Debug)]
pub struct AuthRequest {
    /// The session.
    pub session: Arc<SessionInfo>,
    /// What the client sent (the password redacts itself in `Debug`).
    pub credentials: Credentials,
}

/// The mail stage: MAIL FROM.
#[derive(Clone, Debug)]
pub struct MailRequest {
    /// The session.
    pub session: Arc<SessionInfo>,
    /// The sender.
    pub from: ReversePath,
    /// Its parameters.
    pub params: MailParameters,
    /// This transaction's notes (new and empty).
    pub notes: Notes,
}

/// The rcpt stage: RCPT TO.
#[derive(Clone, Debug)]
pub struct RcptRequest {
    /// The session.
    pub session: Arc<SessionInfo>,
    /// The transaction's sender.
    pub from: ReversePath,
    /// The recipient.
    pub to: ForwardPath,
    /// Its parameters.
    pub params: RcptParameters,
    /// This transaction's notes.
    pub notes: Notes,
}

/// The data stage: a complete message, at the end of DATA or the last BDAT chunk.
///
/// A filter decides for the whole message with its [`Decision`]. Under LMTP (RFC 2033,
/// [`DataRequest::is_lmtp`]) it may also refuse single recipients with
/// [`DataRequest::refuse_recipient`]: each gets its own reply after the data, and the
/// others the final decision's.
#[derive(Clone, Debug)]
pub struct DataRequest {
    /// The session.
    pub session: Arc<SessionInfo>,
    /// The accepted envelope.
    pub envelope: Envelope,
    /// Header lines added by filters, each ending in CRLF, in the order they will appear.
    pub added_headers: Vec<u8>,
    /// The message as the client sent it: in memory, or for a large one in the file it
    /// was spilled to, mapped (a filter may replace it, e.g. to remove a header field).
    pub body: Content,
    /// This transaction's notes.
    pub notes: Notes,
    /// The recipients refused at the data stage, by their position at RCPT.
    refusals: Refusals,
}

impl DataRequest {
    /// The request for a message from `envelope` (whose recipients are those accepted at
    /// RCPT, in order), with no header added yet.
    ///
    /// ```
    /// use smtp_server::{Content, DataRequest, Notes, SessionInfo};
    /// use smtp_server::smtp_proto::{Envelope, ForwardPath, Recipient, ReversePath};
    /// use std::sync::Arc;
    ///
    /// let envelope = Envelope {
    ///     from: ReversePath::parse("<ann@example.test>").unwrap(),
    ///     params: Default::default(),
    ///     recipients: vec![Recipient { to: ForwardPath::parse("<bob@example.test>").unwrap(), params: Default::default() }],
    /// };
    /// let request = DataRequest::new(
    ///     Arc::new(SessionInfo::local("userid 0")),
    ///     envelope,
    ///     Content::from(b"Subject: hi\r\n\r\nhello\r\n".to_vec()),
    ///     Notes::default(),
    /// );
    /// assert!(!request.is_lmtp());
    /// ```
    pub fn new(session: Arc<SessionInfo>, envelope: Envelope, body: Content, notes: Notes) -> Self {
        let refusals = Refusals::new(&envelope);
        Self {
            session,
            envelope,
            added_headers: Vec::new(),
            body,
            notes,
            refusals,
        }
    }

    /// Whether the message came over LMTP (RFC 2033, a [`ListenerMode::Lmtp`] listener):
    /// the client then reads one reply per recipient after the data, so a filter may
    /// refuse some recipients ([`DataRequest::refuse_recipient`]) and let the others
    /// through.
    pub fn is_lmtp(&self) -> bool {
        self.session.mode == ListenerMode::Lmtp
    }

    /// Refuses the recipient at `index` in `envelope.recipients` (as it is now) with
    /// `reply`, a `4yz` or `5yz` (`552 5.2.2` for a full mailbox, say): the recipient
    /// is removed from the envelope, so the message is not delivered to it, and its reply
    /// is kept with its position in the RCPT order of the transaction. Several filters
    /// may each refuse recipients; indexes always refer to the envelope as the filter
    /// sees it. An `index` out of range does nothing.
    ///
    /// Under LMTP the client then reads, after the data, one reply per recipient it
    /// sent RCPT for, in that order: the refusal for a refused one, the final
    /// decision's reply for the others (a refusal of the message, e.g. the queue
    /// failing, goes to every recipient not refused already). A recipient a filter
    /// added at the data stage (a milter's `addrcpt`) was never named by the client and
    /// gets no reply of its own; one a filter put in place of a recipient with that
    /// recipient's address in its ORCPT (an alias expansion) stands for it: the alias
    /// gets a refusal when every address it expanded to was refused. A recipient a
    /// filter removed without this method (a milter's `delrcpt`) gets the final reply.
    ///
    /// A filter that refuses every recipient should answer with its own [`Decision`]
    /// instead of passing the request on. If it passes it on anyway, the message is not
    /// queued for nobody: the answer is the first refusal (in RCPT order).
    ///
    /// Under SMTP there is one reply after the data, for the whole message: a filter
    /// there decides for all recipients with its [`Decision`]. A recipient refused
    /// here alone is dropped without the client being told (it reads the final reply,
    /// a `250` if the others were accepted), so use this only when
    /// [`DataRequest::is_lmtp`], or to refuse every recipient.
    ///
    /// A reply that is not `4yz` or `5yz` would tell the client its message was
    /// delivered to a recipient it was not delivered to: it is replaced by
    /// `451 4.3.0` (the client tries again later).
    ///
    /// ```
    /// use smtp_server::{Content, DataRequest, Decision, Notes, SessionInfo};
    /// use smtp_server::smtp_proto::{Envelope, ForwardPath, Recipient, ReversePath};
    /// use smtp_server::{EnhancedStatus, Reply, ReplyCode};
    /// use std::sync::Arc;
    ///
    /// # let to = |a: &str| Recipient { to: ForwardPath::parse(a).unwrap(), params: Default::default() };
    /// # let envelope = Envelope {
    /// #     from: ReversePath::parse("<ann@example.test>").unwrap(),
    /// #     params: Default::default(),
    /// #     recipients: vec![to("<bob@example.test>"), to("<carol@example.test>")],
    /// # };
    /// # let mut request = DataRequest::new(Arc::new(SessionInfo::local("u")), envelope, Content::from(Vec::new()), Notes::default());
    /// // In a data-stage filter: bob's mailbox is full.
    /// let full = Reply::new(ReplyCode::EXCEEDED_STORAGE, "5.2.2".parse().unwrap(), "Mailbox full");
    /// if let Some(i) = request.envelope.recipients.iter().position(|r| r.to.to_string() == "<bob@example.test>") {
    ///     request.refuse_recipient(i, full);
    /// }
    /// assert_eq!(request.envelope.recipients.len(), 1);
    /// assert_eq!(request.refused_recipients().len(), 1);
    /// ```
    pub fn refuse_recipient(&mut self, index: usize, reply: Reply) {
        let reply = if reply.is_transient() || reply.is_permanent() {
            reply
        } else {
            tracing::warn!(reply = %reply, "a recipient refused with a positive reply: answered 451 instead");
            Reply::new(
                ReplyCode::LOCAL_ERROR,
                EnhancedStatus::SYSTEM_TEMPORARY,
                "Local error in processing; try again later",
            )
        };
        if index >= self.envelope.recipients.len() {
            tracing::warn!(
                index,
                recipients = self.envelope.recipients.len(),
                "refuse_recipient: no recipient at this index"
            );
            return;
        }
        let recipient = self.envelope.recipients.remove(index);
        self.refusals
            .refuse(&self.envelope.recipients, index, &recipient, reply);
    }

    /// The recipients refused so far at the data stage ([`DataRequest::refuse_recipient`]),
    /// each with its position in the RCPT order of the transaction and its reply, in
    /// that order.
    pub fn refused_recipients(&self) -> Vec<(usize, ForwardPath, Reply)> {
        self.refusals.refused()
    }

    /// The shared record of refusals, for the connection to read after the stage.
    pub(crate) fn refusals(&self) -> Refusals {
        self.refusals.clone()
    }

    /// Adds a header field above the others (and above those added before it), the way
    /// `Received:` and `Authentication-Results:` are added. `value` may contain folded
    /// lines (`\r\n\t...`); CR and LF on their own are replaced.
    pub fn prepend_header(&mut self, name: &str, value: &str) {
        let mut field = Vec::with_capacity(name.len() + value.len() + 4);
        field.extend_from_slice(name.as_bytes());
        field.extend_from_slice(b": ");
        let folded = value.replace("\r\n", "\n");
        for (i, line) in folded.split('\n').enumerate() {
            if i > 0 {
                field.extend_from_slice(b"\r\n");
            }
            field.extend(line.bytes().map(|b| if b == b'\r' { b' ' } else { b }));
        }
        field.extend_from_slice(b"\r\n");
        field.extend_from_slice(&self.added_headers);
        self.added_headers = field;
    }

    /// The message as it will be stored: added headers, then the client's bytes. A
    /// copy: for a large message, read `added_headers` and `body` in turn instead.
    pub fn message(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.added_headers.len() + self.body.len());
        out.extend_from_slice(&self.added_headers);
        out.extend_from_slice(&self.body);
        out
    }
}

/// The recipients refused at the data stage, by their position in the RCPT order; shared
/// by the clones of a request, so that the connection reads what the filters did.
#[derive(Clone, Default)]
pub(crate) struct Refusals(Arc<Mutex<RefusalTable>>);

#[derive(Default)]
struct RefusalTable {
    /// The recipients accepted at RCPT, in order, and the addresses an expansion of each
    /// names in its ORCPT (its own, and the client's ORCPT if it gave one), lower-cased.
    original: Vec<(ForwardPath, Vec<String>)>,
    /// For each entry of the request's `envelope.recipients` as last seen, the position
    /// in `original` it stands for (`None`: added at the data stage, not from one).
    positions: Vec<Option<usize>>,
    /// The refusal of each original recipient.
    refused: Vec<Option<Reply>>,
    /// The first refusal of a recipient that stands for none.
    unattributed: Option<Reply>,
}

impl Refusals {
    fn new(envelope: &Envelope) -> Self {
        let n = envelope.recipients.len();
        let original = envelope
            .recipients
            .iter()
            .map(|r| {
                let mut names = vec![address_key(&r.to)];
                names.extend(r.params.orcpt.as_ref().map(|o| o.address.to_lowercase()));
                (r.to.clone(), names)
            })
            .collect();
        Self(Arc::new(Mutex::new(RefusalTable {
            original,
            positions: (0..n).map(Some).collect(),
            refused: vec![None; n],
            unattributed: None,
        })))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RefusalTable> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `removed` was at `index` of the recipients, `rest` now.
    fn refuse(&self, rest: &[Recipient], index: usize, removed: &Recipient, reply: Reply) {
        let mut table = self.lock();
        // The envelope as it was, to find where each recipient stood at RCPT even if
        // a filter edited the list directly (a milter's delrcpt and addrcpt, an alias
        // expansion).
        let before: Vec<&Recipient> = rest[..index]
            .iter()
            .chain(std::iter::once(removed))
            .chain(&rest[index..])
            .collect();
        table.follow(&before);
        match table.positions.remove(index) {
            // The last address standing for it: an alias is refused when every address
            // it expanded to was.
            Some(p) if !table.positions.contains(&Some(p)) => table.refused[p] = Some(reply),
            Some(_) => {}
            None => {
                table.unattributed.get_or_insert(reply);
            }
        }
    }

    /// The refusals, by position.
    fn refused(&self) -> Vec<(usize, ForwardPath, Reply)> {
        let table = self.lock();
        table
            .refused
            .iter()
            .enumerate()
            .filter_map(|(p, r)| Some((p, table.original[p].0.clone(), r.clone()?)))
            .collect()
    }

    /// The first refusal: of the first refused recipient in RCPT order, else of one a
    /// filter added.
    pub(crate) fn first(&self) -> Option<Reply> {
        let table = self.lock();
        table
            .refused
            .iter()
            .flatten()
            .next()
            .or(table.unattributed.as_ref())
            .cloned()
    }

    /// The replies after the data under LMTP: one per recipient accepted at RCPT, in
    /// order: its refusal, or `last` (the final decision's reply).
    pub(crate) fn replies(&self, last: &Reply) -> Vec<Reply> {
        let table = self.lock();
        table
            .refused
            .iter()
            .map(|r| r.clone().unwrap_or_else(|| last.clone()))
            .collect()
    }
}

impl RefusalTable {
    /// Brings `positions` in line with `recipients`, the envelope now: kept as is while
    /// only [`DataRequest::refuse_recipient`] changed it. Otherwise each recipient is
    /// matched, in order, with the next original one of the same address not refused
    /// (what a filter that removes some and appends others leaves); one that matches
    /// none but whose ORCPT names an original one (an alias expansion) stands for that
    /// one; the others for none.
    fn follow(&mut self, recipients: &[&Recipient]) {
        let in_line =
            self.positions.len() == recipients.len()
                && self.positions.iter().zip(recipients).all(|(p, r)| {
                    p.is_none_or(|p| self.original.get(p).is_some_and(|o| o.0 == r.to))
                });
        if in_line {
            return;
        }
        let mut next = 0;
        let mut positions = Vec::with_capacity(recipients.len());
        for r in recipients {
            let same = (next..self.original.len())
                .find(|&p| self.refused[p].is_none() && self.original[p].0 == r.to);
            if let Some(p) = same {
                next = p + 1;
                positions.push(Some(p));
                continue;
            }
            let expanded_from = r.params.orcpt.as_ref().and_then(|orcpt| {
                let name = orcpt.address.to_lowercase();
                (0..self.original.len())
                    .find(|&p| self.refused[p].is_none() && self.original[p].1.contains(&name))
            });
            positions.push(expanded_from);
        }
        self.positions = positions;
    }
}

/// An address as ORCPT names it, lower-cased: `a@b` for `<a@b>`.
fn address_key(to: &ForwardPath) -> String {
    match to {
        ForwardPath::Postmaster => "postmaster".to_owned(),
        ForwardPath::Mailbox(m) => m.to_string().to_lowercase(),
    }
}

impl std::fmt::Debug for Refusals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.lock().refused.iter().flatten().count();
        write!(f, "Refusals({n})")
    }
}

/// What every stage request has: its session. A filter that applies to several stages
/// (a gate on the listener, a rate limit) is written once for all of them with it.
///
/// ```
/// use smtp_server::{Decision, StageRequest};
/// fn is_local<R: StageRequest>(request: &R) -> bool {
///     request.session().protocol == smtp_server::SessionInfo::LOCAL
/// }
/// # let _ = is_local::<smtp_server::RcptRequest>;
/// ```
pub trait StageRequest: Send + 'static {
    /// The session the request belongs to.
    fn session(&self) -> &SessionInfo;
}

macro_rules! stage_request {
    ($($req:ty),*) => {$(
        impl StageRequest for $req {
            fn session(&self) -> &SessionInfo {
                &self.session
            }
        }
    )*};
}

stage_request!(
    ConnectRequest,
    EhloRequest,
    AuthRequest,
    MailRequest,
    RcptRequest,
    DataRequest
);

/// The six stage services of a server.
#[derive(Clone)]
pub struct Stages {
    pub(crate) connect: StageService<ConnectRequest>,
    pub(crate) ehlo: StageService<EhloRequest>,
    pub(crate) auth: StageService<AuthRequest>,
    pub(crate) mail: StageService<MailRequest>,
    pub(crate) rcpt: StageService<RcptRequest>,
    pub(crate) data: StageService<DataRequest>,
    /// Who may send where: asked before the rcpt chain, whatever its layers.
    relay: Option<StageService<RcptRequest>>,
}

impl std::fmt::Debug for Stages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Stages { .. }")
    }
}

/// A service that accepts everything.
fn accept_all<R: Send + 'static>() -> StageService<R> {
    BoxCloneSyncService::new(tower::service_fn(|_: R| async {
        Ok::<_, BoxError>(Decision::accept())
    }))
}

macro_rules! stage_layer {
    ($(#[$doc:meta])* $method:ident, $field:ident, $req:ty) => {
        $(#[$doc])*
        pub fn $method<L>(mut self, layer: L) -> Self
        where
            L: Layer<StageService<$req>>,
            L::Service: Service<$req, Response = Decision, Error = BoxError> + Clone + Send + Sync + 'static,
            <L::Service as Service<$req>>::Future: Send + 'static,
        {
            self.$field = BoxCloneSyncService::new(layer.layer(self.$field));
            self
        }
    };
}

macro_rules! stage_filters {
    ($stage:literal, $filter:ident, $filter_async:ident, $layer:ident, $req:ty) => {
        #[doc = concat!("Adds a filter to the ", $stage, " stage: a closure that passes the request on (`None`) or answers (`Some(decision)`); see [`filter`](crate::filter()). It runs before the layers and filters added earlier, like [`Stages::", stringify!($layer), "`].")]
        pub fn $filter<F>(self, check: F) -> Self
        where
            F: Fn(&mut $req) -> Option<Decision> + Send + Sync + 'static,
        {
            self.$layer(crate::filter::filter(check))
        }

        #[doc = concat!("Adds an async filter to the ", $stage, " stage: a closure that gives the request back to pass it on ([`Flow::Continue`](crate::Flow::Continue)) or answers ([`Flow::Decide`](crate::Flow::Decide)); see [`filter_async`](crate::filter_async()).")]
        pub fn $filter_async<F, Fut>(self, check: F) -> Self
        where
            F: Fn($req) -> Fut + Send + Sync + 'static,
            Fut: std::future::Future<Output = Result<crate::Flow<$req>, BoxError>> + Send + 'static,
        {
            self.$layer(crate::filter::filter_async(check))
        }
    };
}

impl Stages {
    stage_filters!(
        "connect",
        connect_filter,
        connect_filter_async,
        connect_layer,
        ConnectRequest
    );
    stage_filters!(
        "ehlo",
        ehlo_filter,
        ehlo_filter_async,
        ehlo_layer,
        EhloRequest
    );
    stage_filters!(
        "auth",
        auth_filter,
        auth_filter_async,
        auth_layer,
        AuthRequest
    );
    stage_filters!(
        "mail",
        mail_filter,
        mail_filter_async,
        mail_layer,
        MailRequest
    );
    stage_filters!(
        "rcpt",
        rcpt_filter,
        rcpt_filter_async,
        rcpt_layer,
        RcptRequest
    );
    stage_filters!(
        "data",
        data_filter,
        data_filter_async,
        data_layer,
        DataRequest
    );

    /// Stages that accept every connection, HELO, sender and recipient, refuse every
    /// login (there is no account backend until you add one), and hand each message to
    /// `data`, the service that keeps it (typically the queue). Add policy with the
    /// `*_layer` methods.
    pub fn new<S>(data: S) -> Self
    where
        S: Service<DataRequest, Response = Decision, Error = BoxError>
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        let no_accounts = tower::service_fn(|_: AuthRequest| async {
            Ok::<_, BoxError>(Decision::reject::<535>(
                EnhancedStatus::AUTH_INVALID,
                "Authentication credentials invalid",
            ))
        });
        Self {
            connect: accept_all(),
            ehlo: accept_all(),
            auth: BoxCloneSyncService::new(no_accounts),
            mail: accept_all(),
            rcpt: accept_all(),
            data: refused_before(BoxCloneSyncService::new(data)),
            relay: None,
        }
    }

    /// Sets the relay policy: which recipients a client may send to (local domains for
    /// anyone, others for logins and trusted networks, with
    /// [`RelayPolicy`](crate::filters::RelayPolicy), the standard one). It is
    /// asked before every other rcpt filter, whatever the order they were added in, so
    /// no filter can accept a recipient it refuses; a later call replaces it. A
    /// [`ListenerMode::Relay`] listener does not start without one
    /// ([`ServerError::NoRelayPolicy`](crate::ServerError::NoRelayPolicy)): a relay
    /// listener without a policy would be an open relay.
    ///
    /// ```
    /// use smtp_server::filters::{DomainSet, RelayPolicy};
    /// use smtp_server::filter;
    /// # let sink = tower::service_fn(|_| async { Ok::<_, smtp_server::BoxError>(smtp_server::Decision::accept()) });
    /// let trusted = vec!["192.0.2.0/24".parse().unwrap()];
    /// let stages = smtp_server::Stages::new(sink)
    ///     .relay_policy(filter(RelayPolicy::new(DomainSet::new(["example.test"]), trusted)));
    /// ```
    pub fn relay_policy<L>(mut self, layer: L) -> Self
    where
        L: Layer<StageService<RcptRequest>>,
        L::Service: Service<RcptRequest, Response = Decision, Error = BoxError>
            + Clone
            + Send
            + Sync
            + 'static,
        <L::Service as Service<RcptRequest>>::Future: Send + 'static,
    {
        self.relay = Some(BoxCloneSyncService::new(layer.layer(accept_all())));
        self
    }

    /// Runs one transaction through the mail, rcpt and data stages without SMTP: the
    /// way in for mail that does not come over a connection (`sendmail`, a control
    /// socket), so that it meets the same filters (the relay policy, local recipients,
    /// `Received:`, signing, your own) as mail that does. The connect, ehlo and auth
    /// stages are not asked (there was no connection, HELO or AUTH: build the session
    /// with [`SessionInfo::local`]). The answer is the first refusal (of the sender, of
    /// any recipient, of the message), or the data stage's acceptance; what filters
    /// noted is left in `notes`.
    ///
    /// ```
    /// use smtp_server::{Content, Decision, Notes, SessionInfo, Stages};
    /// use smtp_server::smtp_proto::{Envelope, ForwardPath, Recipient, ReversePath};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), smtp_server::BoxError> {
    /// let sink = tower::service_fn(|_| async { Ok::<_, smtp_server::BoxError>(Decision::accept()) });
    /// let stages = Stages::new(sink).rcpt_filter(|req| {
    ///     req.to.to_string().contains("nobody").then(|| {
    ///         Decision::reject::<550>(smtp_server::EnhancedStatus::BAD_DESTINATION_MAILBOX, "No")
    ///     })
    /// });
    /// let envelope = |to: &str| Envelope {
    ///     from: ReversePath::parse("<cron@example.test>").unwrap(),
    ///     params: Default::default(),
    ///     recipients: vec![Recipient { to: ForwardPath::parse(to).unwrap(), params: Default::default() }],
    /// };
    /// let message = Content::from(b"Subject: hi\r\n\r\nhello\r\n".to_vec());
    /// let session = SessionInfo::local("userid 0");
    /// let ok = stages.submit(session.clone(), envelope("<ann@example.test>"), message.clone(), Notes::default()).await?;
    /// assert!(ok.is_accept());
    /// let refused = stages.submit(session, envelope("<nobody@example.test>"), message, Notes::default()).await?;
    /// assert!(refused.is_reject());
    /// # Ok(()) }
    /// ```
    pub async fn submit(
        &self,
        session: SessionInfo,
        envelope: Envelope,
        body: Content,
        notes: Notes,
    ) -> Result<Decision, BoxError> {
        let session = Arc::new(session);
        let mail = MailRequest {
            session: Arc::clone(&session),
            from: envelope.from.clone(),
            params: envelope.params.clone(),
            notes: notes.clone(),
        };
        let decision = call(&self.mail, mail).await?;
        if !decision.is_accept() {
            return Ok(decision);
        }
        for recipient in &envelope.recipients {
            let rcpt = RcptRequest {
                session: Arc::clone(&session),
                from: envelope.from.clone(),
                to: recipient.to.clone(),
                params: recipient.params.clone(),
                notes: notes.clone(),
            };
            let decision = self.rcpt(rcpt).await?;
            if !decision.is_accept() {
                return Ok(decision);
            }
        }
        call(&self.data, DataRequest::new(session, envelope, body, notes)).await
    }

    /// Whether a relay policy is set.
    pub(crate) fn has_relay_policy(&self) -> bool {
        self.relay.is_some()
    }

    /// The rcpt stage: the relay policy first, then the rcpt chain.
    pub(crate) async fn rcpt(&self, request: RcptRequest) -> Result<Decision, BoxError> {
        if let Some(relay) = &self.relay {
            let decision = call(relay, request.clone()).await?;
            if !decision.is_accept() {
                return Ok(decision);
            }
        }
        call(&self.rcpt, request).await
    }

    stage_layer!(
        /// Wraps the connect stage (the greeting) in `layer`. Each call wraps what is there, so the layer
        /// added last sees the request first: `.connect_layer(a).connect_layer(b)` runs
        /// `b`, then `a` (the reverse of tower's `ServiceBuilder`, whose first `.layer`
        /// is the outermost).
        connect_layer, connect, ConnectRequest);
    stage_layer!(
        /// Wraps the ehlo stage (HELO, EHLO, LHLO) in `layer`. Each call wraps what is there, so the layer
        /// added last sees the request first: `.ehlo_layer(a).ehlo_layer(b)` runs
        /// `b`, then `a` (the reverse of tower's `ServiceBuilder`, whose first `.layer`
        /// is the outermost).
        ehlo_layer, ehlo, EhloRequest);
    stage_layer!(
        /// Wraps the auth stage (AUTH) in `layer`. Each call wraps what is there, so the layer
        /// added last sees the request first: `.auth_layer(a).auth_layer(b)` runs
        /// `b`, then `a` (the reverse of tower's `ServiceBuilder`, whose first `.layer`
        /// is the outermost).
        auth_layer, auth, AuthRequest);
    stage_layer!(
        /// Wraps the mail stage (MAIL FROM) in `layer`. Each call wraps what is there, so the layer
        /// added last sees the request first: `.mail_layer(a).mail_layer(b)` runs
        /// `b`, then `a` (the reverse of tower's `ServiceBuilder`, whose first `.layer`
        /// is the outermost).
        mail_layer, mail, MailRequest);
    stage_layer!(
        /// Wraps the rcpt stage (RCPT TO) in `layer`. Each call wraps what is there, so the layer
        /// added last sees the request first: `.rcpt_layer(a).rcpt_layer(b)` runs
        /// `b`, then `a` (the reverse of tower's `ServiceBuilder`, whose first `.layer`
        /// is the outermost). The relay policy ([`Stages::relay_policy`]) is asked
        /// before all of them.
        rcpt_layer, rcpt, RcptRequest);
    stage_layer!(
        /// Wraps the data stage (the message) in `layer`. Each call wraps what is there, so the layer
        /// added last sees the request first: `.data_layer(a).data_layer(b)` runs
        /// `b`, then `a` (the reverse of tower's `ServiceBuilder`, whose first `.layer`
        /// is the outermost).
        data_layer, data, DataRequest);
}

/// The sink `data`, not called for a message whose every recipient a filter refused
/// ([`DataRequest::refuse_recipient`]) and then passed on: the answer is the first
/// refusal, instead of queueing the message for nobody.
fn refused_before(data: StageService<DataRequest>) -> StageService<DataRequest> {
    BoxCloneSyncService::new(tower::service_fn(move |request: DataRequest| {
        let data = data.clone();
        async move {
            if request.envelope.recipients.is_empty()
                && let Some(first) = request.refusals.first()
            {
                return Ok(Decision::from_reply(first));
            }
            data.oneshot(request).await
        }
    }))
}

/// Calls a stage once (a clone of the service, readied first).
pub(crate) async fn call<R>(service: &StageService<R>, request: R) -> Result<Decision, BoxError>
where
    R: Send + 'static,
{
    service.clone().oneshot(request).await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn request(to: &[&str]) -> DataRequest {
        let envelope = Envelope {
            from: ReversePath::parse("<ann@example.test>").unwrap(),
            params: MailParameters::default(),
            recipients: to
                .iter()
                .map(|t| Recipient {
                    to: ForwardPath::parse(t).unwrap(),
                    params: RcptParameters::default(),
                })
                .collect(),
        };
        let session = Arc::new(SessionInfo::local("test"));
        DataRequest::new(
            session,
            envelope,
            Content::from(Vec::new()),
            Notes::default(),
        )
    }

    fn reply(code: u16) -> Reply {
        let code = ReplyCode::new(code).unwrap();
        let status = EnhancedStatus::SYSTEM_TEMPORARY
            .with_class((code.as_u16() / 100) as u8)
            .unwrap();
        Reply::new(code, status, "x")
    }

    fn codes(replies: &[Reply]) -> Vec<u16> {
        replies.iter().map(|r| r.code().as_u16()).collect()
    }

    #[test]
    fn refusals_keep_their_rcpt_positions() {
        let mut req = request(&["<a@x.test>", "<b@x.test>", "<c@x.test>", "<d@x.test>"]);
        req.refuse_recipient(2, reply(552)); // c
        req.refuse_recipient(0, reply(550)); // a
        req.refuse_recipient(1, reply(450)); // d, at 1 now
        let last = reply(250);
        assert_eq!(codes(&req.refusals.replies(&last)), [550, 250, 552, 450]);
        let refused: Vec<usize> = req.refused_recipients().iter().map(|r| r.0).collect();
        assert_eq!(refused, [0, 2, 3]);
        assert_eq!(req.refusals.first().map(|r| r.code().as_u16()), Some(550));
    }

    #[test]
    fn a_bad_index_does_nothing_and_a_positive_refusal_becomes_451() {
        let mut req = request(&["<a@x.test>", "<b@x.test>"]);
        req.refuse_recipient(2, reply(552));
        assert_eq!(req.envelope.recipients.len(), 2);
        assert!(req.refused_recipients().is_empty());
        req.refuse_recipient(1, reply(250));
        assert_eq!(req.envelope.recipients.len(), 1);
        assert_eq!(codes(&req.refusals.replies(&reply(250))), [250, 451]);
    }

    #[test]
    fn duplicates_and_direct_edits_are_followed_in_order() {
        let mut req = request(&["<a@x.test>", "<a@x.test>", "<b@x.test>"]);
        // A filter drops the first a directly and appends z.
        req.envelope.recipients.remove(0);
        req.envelope.recipients.push(Recipient {
            to: ForwardPath::parse("<z@x.test>").unwrap(),
            params: RcptParameters::default(),
        });
        // Refusing the a left stands for the first a (the earliest one not refused).
        req.refuse_recipient(0, reply(552));
        // z stands for no one: no reply of its own.
        req.refuse_recipient(1, reply(550));
        assert_eq!(codes(&req.refusals.replies(&reply(250))), [552, 250, 250]);
        assert_eq!(req.refusals.first().map(|r| r.code().as_u16()), Some(552));
    }
}
