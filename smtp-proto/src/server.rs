//! The server session state machine: bytes in, [`Event`]s and reply bytes out.
//!
//! ```text
//!             receive(bytes)                    poll_event()
//!  socket ──────────────────▶ ServerSession ─────────────────▶ policy (your code)
//!    ▲                          │  ▲                                  │
//!    │   pending_output()       │  └──────── respond(reply) ──────────┘
//!    └──────────────────────────┘            / accept()
//! ```
//!
//! The session answers by itself everything that needs no policy: syntax errors, bad
//! sequences, line and size limits, unknown commands, NOOP, RSET, VRFY, HELP, QUIT,
//! the STARTTLS reply and the SASL exchange of PLAIN and LOGIN. What needs a decision
//! (the greeting, HELO, AUTH credentials, MAIL, RCPT, the finished message) comes out
//! as an [`Event`]; the session then waits, reading no further command, until you
//! answer with [`ServerSession::respond`] or [`ServerSession::accept`]. That keeps
//! replies in command order however the client pipelines (RFC 2920).

use std::sync::Arc;

use crate::Error;
use crate::address::{ForwardPath, HeloName, ReversePath};
use crate::command::{Command, Mechanism, SaslData};
use crate::data::DataDecoder;
use crate::ehlo::Capabilities;
use crate::params::{Body, MailParameters, RcptParameters};
use crate::reply::{EnhancedStatus, Reply, ReplyCode};

/// What to do with a message that contains a bare CR or bare LF, and with command
/// lines that end in a bare LF.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BareLineEndings {
    /// Refuse: commands get `500 5.5.2`, messages `550 5.6.11` after the final dot.
    #[default]
    Reject,
    /// Accept, and store CRLF in their place. The end of data is still only
    /// `<CRLF>.<CRLF>`.
    Normalize,
}

/// What to do with NUL bytes in a message (RFC 5321 §4.5.2 and RFC 6152 keep them out
/// of mail: a next hop that drops them could see lines, or an end of data, that were
/// not there).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum NulBytes {
    /// Refuse the message: `550 5.6.0` after the final dot (or the last BDAT chunk).
    #[default]
    Reject,
    /// Accept it without them.
    Remove,
}

/// The extensions a server offers. Some are only advertised in the right state:
/// STARTTLS before TLS, AUTH after TLS (unless plaintext AUTH is allowed), REQUIRETLS
/// under TLS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Extensions {
    /// `PIPELINING` (RFC 2920). Default on.
    pub pipelining: bool,
    /// `SIZE` with the message size limit (RFC 1870). Default on.
    pub size: bool,
    /// `8BITMIME` (RFC 6152). Default on.
    pub eightbitmime: bool,
    /// `SMTPUTF8` (RFC 6531). Default on.
    pub smtputf8: bool,
    /// `CHUNKING` (RFC 3030). Default on.
    pub chunking: bool,
    /// `BINARYMIME` (RFC 3030). Default off: relaying binary content to servers
    /// without it needs a conversion this project does not do.
    pub binarymime: bool,
    /// `DSN` (RFC 3461). Default on.
    pub dsn: bool,
    /// `STARTTLS` (RFC 3207). Default off: turn it on when a certificate is configured.
    pub starttls: bool,
    /// `AUTH` mechanisms (RFC 4954); the session runs the SASL exchange for PLAIN and
    /// LOGIN. Default none.
    pub auth: Vec<Mechanism>,
    /// `REQUIRETLS` (RFC 8689), offered under TLS only. Default on.
    pub requiretls: bool,
    /// `MT-PRIORITY` (RFC 6710). Default off.
    pub mt_priority: bool,
}

impl Default for Extensions {
    fn default() -> Self {
        Self {
            pipelining: true,
            size: true,
            eightbitmime: true,
            smtputf8: true,
            chunking: true,
            binarymime: false,
            dsn: true,
            starttls: false,
            auth: Vec::new(),
            requiretls: true,
            mt_priority: false,
        }
    }
}

/// The configuration of a [`ServerSession`]. Every limit has a safe default.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerConfig {
    /// The name in the greeting and the EHLO reply.
    pub hostname: String,
    /// Speak LMTP (RFC 2033): LHLO instead of EHLO/HELO, one reply per recipient after
    /// the data.
    pub lmtp: bool,
    /// Longest command line, CRLF included. RFC 5321 §4.5.3.1.4 sets 512 and lets
    /// extensions raise it; the default, 2048, leaves room for DSN parameters.
    pub max_line_length: usize,
    /// Longest AUTH line (RFC 4954 §4: 12288).
    pub max_auth_line_length: usize,
    /// Largest message in octets, advertised with SIZE. Default 50 MiB.
    pub max_message_size: u64,
    /// Most recipients per message (RFC 5321 §4.5.3.1.8: at least 100). Default 100.
    pub max_recipients: usize,
    /// Errors (syntax, sequence) before the session is closed with `421`. Default 20.
    pub max_errors: u32,
    /// NOOP, RSET, VRFY, EXPN and HELP commands allowed since the session's last
    /// accepted message; each one beyond counts as an error, so a client cannot hold a
    /// connection with them for ever (Postfix's `smtpd_junk_command_limit`). Default 100.
    pub max_junk_commands: u32,
    /// Failed AUTH attempts before the session is closed with `421`. Default 3.
    pub max_auth_failures: u32,
    /// Policy for bare CR and LF, in DATA and BDAT content alike.
    pub bare_line_endings: BareLineEndings,
    /// Policy for NUL bytes, in DATA and BDAT content alike.
    pub nul_bytes: NulBytes,
    /// Refuse MAIL until the client has authenticated (submission, RFC 6409).
    pub require_auth: bool,
    /// Allow AUTH without TLS. Default off: credentials only over TLS.
    pub allow_plaintext_auth: bool,
    /// What the server offers.
    pub extensions: Extensions,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            hostname: "localhost".into(),
            lmtp: false,
            max_line_length: 2048,
            max_auth_line_length: 12288,
            max_message_size: 50 * 1024 * 1024,
            max_recipients: 100,
            max_errors: 20,
            max_junk_commands: 100,
            max_auth_failures: 3,
            bare_line_endings: BareLineEndings::Reject,
            nul_bytes: NulBytes::Reject,
            require_auth: false,
            allow_plaintext_auth: false,
            extensions: Extensions::default(),
        }
    }
}

/// HELO, EHLO or LHLO.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HeloKind {
    /// `HELO`: plain SMTP, no extensions.
    Helo,
    /// `EHLO`: extended SMTP.
    Ehlo,
    /// `LHLO`: LMTP.
    Lhlo,
}

/// A password from AUTH. Its `Debug` form is redacted so it cannot reach a log.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    /// The password itself, for checking.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

/// Credentials from a finished SASL exchange.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    /// The mechanism used.
    pub mechanism: Mechanism,
    /// The authorization identity (PLAIN), when it differs from the username.
    pub authzid: Option<String>,
    /// The authentication identity.
    pub username: String,
    /// The password.
    pub password: Password,
}

/// One accepted recipient of a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recipient {
    /// The address.
    pub to: ForwardPath,
    /// DSN parameters.
    pub params: RcptParameters,
}

/// The envelope of a transaction: the accepted sender and recipients.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    /// MAIL FROM.
    pub from: ReversePath,
    /// MAIL FROM parameters.
    pub params: MailParameters,
    /// The accepted recipients, in order.
    pub recipients: Vec<Recipient>,
}

/// Something the session needs a decision on. Answer every event (but
/// [`Event::StartTls`]) with [`ServerSession::respond`] or [`ServerSession::accept`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A client connected: answer with the greeting (`220`), or refuse (`554`: the
    /// session then answers `503` to everything but QUIT; `421`: it closes).
    Connect,
    /// HELO, EHLO or LHLO. [`ServerSession::accept`] answers with the extensions.
    Helo {
        /// Which command.
        kind: HeloKind,
        /// Its argument.
        name: HeloName,
    },
    /// AUTH finished its exchange: check the credentials, answer `235` or `535 5.7.8`.
    Auth(Credentials),
    /// MAIL FROM, syntax and parameters already checked against what is offered.
    Mail {
        /// The sender.
        from: ReversePath,
        /// Its parameters.
        params: MailParameters,
    },
    /// RCPT TO, within the recipient limit.
    Rcpt {
        /// The recipient.
        to: ForwardPath,
        /// Its parameters.
        params: RcptParameters,
    },
    /// The message is complete (DATA or the last BDAT chunk) and within limits. Reply
    /// once (SMTP) or once per recipient in order (LMTP).
    Message {
        /// The envelope.
        envelope: Envelope,
        /// The content, dot-stuffing removed.
        body: Vec<u8>,
    },
    /// The session has queued `220` to STARTTLS and dropped any input after it. Send
    /// the pending output, run the TLS handshake, then call
    /// [`ServerSession::tls_established`] and feed decrypted bytes.
    StartTls,
}

#[derive(Debug)]
enum State {
    /// Waiting for the greeting decision.
    Greeting,
    /// Greeted with 554: only QUIT is accepted (RFC 5321 §3.1).
    Rejecting,
    /// Reading command lines.
    Command,
    /// Reading DATA content.
    Data(DataDecoder),
    /// Reading a BDAT chunk: `error` is the reply to send instead of taking it.
    Chunk {
        remaining: u64,
        last: bool,
        error: Option<Error>,
    },
    /// Reading a SASL response line.
    SaslResponse(SaslStep),
    /// After 220 to STARTTLS, before `tls_established`.
    TlsHandshake,
    /// Done; nothing more is read.
    Closed,
}

#[derive(Debug)]
enum SaslStep {
    Plain,
    LoginUser,
    LoginPassword(String),
}

/// The decision an event waits for.
#[derive(Debug)]
enum Awaiting {
    Greeting,
    Helo(HeloKind, HeloName),
    Auth,
    Mail(ReversePath, MailParameters),
    Rcpt(ForwardPath, RcptParameters),
    Message { replies_left: usize },
}

/// The server side of one SMTP or LMTP connection, with no I/O.
///
/// ```
/// use std::sync::Arc;
/// use smtp_proto::{Event, ServerConfig, ServerSession};
///
/// let mut session = ServerSession::new(Arc::new(ServerConfig::default()));
/// assert_eq!(session.poll_event(), Some(Event::Connect));
/// session.accept();
/// session.receive(b"EHLO client.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<c@localhost>\r\nDATA\r\n");
/// while let Some(event) = session.poll_event() {
///     // Policy goes here; this server accepts everything.
///     session.accept();
/// }
/// session.receive(b"Hello\r\n.\r\nQUIT\r\n");
/// let Some(Event::Message { envelope, body }) = session.poll_event() else { panic!() };
/// assert_eq!(body, b"Hello\r\n");
/// assert_eq!(envelope.recipients.len(), 1);
/// session.accept();
/// assert_eq!(session.poll_event(), None);
/// let output = String::from_utf8(session.pending_output().to_vec()).unwrap();
/// assert!(output.starts_with("220 localhost ESMTP\r\n250-localhost\r\n"));
/// assert!(output.ends_with("250 2.1.0 Sender OK\r\n250 2.1.5 Recipient OK\r\n\
/// 354 End data with <CR><LF>.<CR><LF>\r\n250 2.0.0 Message accepted\r\n221 2.0.0 localhost closing connection\r\n"));
/// assert!(session.is_closed());
/// ```
#[derive(Debug)]
pub struct ServerSession {
    config: Arc<ServerConfig>,
    state: State,
    input: Vec<u8>,
    input_pos: usize,
    /// Discarding the rest of an over-long line.
    discarding: bool,
    output: Vec<u8>,
    output_pos: usize,
    awaiting: Option<Awaiting>,
    event: Option<Event>,
    tls: bool,
    authenticated: bool,
    helo: Option<(HeloKind, HeloName)>,
    /// Boxed: an idle session (most of them, between transactions) holds a pointer,
    /// not the envelope's room.
    transaction: Option<Box<Transaction>>,
    body: Vec<u8>,
    /// Content of the message in progress already taken with
    /// [`ServerSession::take_content`].
    taken: u64,
    errors: u32,
    /// NOOP, RSET, VRFY, EXPN and HELP since the last accepted message.
    junk_commands: u32,
    auth_failures: u32,
    /// What the session refused since [`ServerSession::take_refusals`] last ran.
    refusals: Vec<Error>,
    /// The first command followed by input that the client should have held back,
    /// since [`ServerSession::take_pipelining_violation`] last ran.
    pipelining_violation: Option<&'static str>,
}

/// How many refusals a session keeps between two [`ServerSession::take_refusals`].
const MAX_KEPT_REFUSALS: usize = 32;

#[derive(Debug)]
struct Transaction {
    envelope: Envelope,
    /// The decoder of the BDAT chunks so far; `Some` once a BDAT was given (DATA is then
    /// out of sequence).
    chunks: Option<DataDecoder>,
}

impl Transaction {
    fn is_chunking(&self) -> bool {
        self.chunks.is_some()
    }
}

impl ServerSession {
    /// A session for a new connection. The first event is [`Event::Connect`].
    pub fn new(config: Arc<ServerConfig>) -> Self {
        Self {
            config,
            state: State::Greeting,
            input: Vec::new(),
            input_pos: 0,
            discarding: false,
            output: Vec::with_capacity(512),
            output_pos: 0,
            awaiting: Some(Awaiting::Greeting),
            event: Some(Event::Connect),
            tls: false,
            authenticated: false,
            helo: None,
            transaction: None,
            body: Vec::new(),
            taken: 0,
            errors: 0,
            junk_commands: 0,
            auth_failures: 0,
            refusals: Vec::new(),
            pipelining_violation: None,
        }
    }

    /// Marks the connection as TLS from the first byte (implicit TLS, RFC 8314).
    pub fn with_implicit_tls(mut self) -> Self {
        self.tls = true;
        self
    }

    /// The configuration.
    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// Feeds bytes read from the client. Call [`ServerSession::poll_event`] until it
    /// returns `None` before reading again: unprocessed input is buffered, so memory
    /// stays bounded only if you do.
    pub fn receive(&mut self, bytes: &[u8]) {
        match &mut self.state {
            // Input before the TLS handshake completes is plaintext injected after
            // STARTTLS; after the session is closed there is no one to read it.
            State::TlsHandshake | State::Closed => return,
            // Fast path: message content straight from the caller's buffer.
            State::Data(decoder)
                if self.awaiting.is_none() && self.input_pos == self.input.len() =>
            {
                let decoded = decoder.decode(bytes, &mut self.body);
                if decoded.complete {
                    self.input.clear();
                    self.input.extend_from_slice(&bytes[decoded.consumed..]);
                    self.input_pos = 0;
                    self.finish_data();
                }
                return;
            }
            State::Chunk {
                remaining, error, ..
            } if self.awaiting.is_none() && self.input_pos == self.input.len() => {
                let take = usize::try_from(*remaining).map_or(bytes.len(), |r| r.min(bytes.len()));
                *remaining -= take as u64;
                if error.is_none()
                    && let Some(decoder) = self.transaction.as_mut().and_then(|t| t.chunks.as_mut())
                {
                    decoder.decode(&bytes[..take], &mut self.body);
                }
                if *remaining == 0 {
                    self.input.clear();
                    self.input.extend_from_slice(&bytes[take..]);
                    self.input_pos = 0;
                    self.finish_chunk();
                }
                return;
            }
            _ => {}
        }
        if self.input_pos > 0 && self.input_pos == self.input.len() {
            self.input.clear();
            self.input_pos = 0;
        }
        self.input.extend_from_slice(bytes);
    }

    /// The next event needing a decision, processing buffered input as far as it can.
    /// Returns `None` when more input is needed, while an event waits for its answer,
    /// or when the session is closed or in a TLS handshake.
    pub fn poll_event(&mut self) -> Option<Event> {
        if self.event.is_none() && self.awaiting.is_none() {
            self.process();
        }
        self.event.take()
    }

    /// Answers the pending event with `reply`. A `2yz` reply accepts what the event
    /// asked (the sender, the recipient, ...), anything else refuses it; `421` also
    /// closes the session. Does nothing when no event is pending.
    pub fn respond(&mut self, reply: Reply) {
        let Some(awaiting) = self.awaiting.take() else {
            return;
        };
        self.event = None;
        let accepted = reply.is_positive_completion();
        reply.encode(&mut self.output);
        match awaiting {
            Awaiting::Greeting => {
                self.state = match reply.code().class() {
                    crate::ReplyClass::PositiveCompletion => State::Command,
                    crate::ReplyClass::PermanentNegative => State::Rejecting,
                    _ => State::Closed,
                };
            }
            Awaiting::Helo(kind, name) => {
                if accepted {
                    self.transaction = None;
                    self.helo = Some((kind, name));
                }
            }
            Awaiting::Auth => {
                if accepted {
                    self.authenticated = true;
                } else {
                    self.auth_failures += 1;
                    if self.auth_failures >= self.config.max_auth_failures {
                        self.close_with(&Error::TooManyAuthFailures);
                    }
                }
            }
            Awaiting::Mail(from, params) => {
                if accepted {
                    let envelope = Envelope {
                        from,
                        params,
                        recipients: Vec::new(),
                    };
                    self.transaction = Some(Box::new(Transaction {
                        envelope,
                        chunks: None,
                    }));
                }
            }
            Awaiting::Rcpt(to, params) => {
                if let (true, Some(txn)) = (accepted, &mut self.transaction) {
                    txn.envelope.recipients.push(Recipient { to, params });
                }
            }
            Awaiting::Message { replies_left } => {
                if accepted {
                    self.junk_commands = 0;
                }
                if replies_left > 1 {
                    self.awaiting = Some(Awaiting::Message {
                        replies_left: replies_left - 1,
                    });
                }
            }
        }
        if reply.code() == ReplyCode::SERVICE_UNAVAILABLE {
            self.state = State::Closed;
            self.awaiting = None;
        }
    }

    /// Answers the pending event with the standard positive reply: the greeting, the
    /// EHLO extensions, `235`, `250` to MAIL and RCPT, `250` to the message (for every
    /// recipient, under LMTP).
    pub fn accept(&mut self) {
        let hostname = &self.config.hostname;
        let reply = match &self.awaiting {
            None => return,
            Some(Awaiting::Greeting) => {
                let proto = if self.config.lmtp { "LMTP" } else { "ESMTP" };
                Reply::plain(ReplyCode::SERVICE_READY, format!("{hostname} {proto}"))
            }
            Some(Awaiting::Helo(HeloKind::Helo, _)) => {
                Reply::plain(ReplyCode::OK, hostname.clone())
            }
            Some(Awaiting::Helo(..)) => self.capabilities().to_reply(hostname),
            Some(Awaiting::Auth) => Reply::new(
                ReplyCode::AUTH_SUCCEEDED,
                EnhancedStatus::AUTH_OK,
                "Authentication successful",
            ),
            Some(Awaiting::Mail(..)) => {
                Reply::new(ReplyCode::OK, EnhancedStatus::SENDER_OK, "Sender OK")
            }
            Some(Awaiting::Rcpt(..)) => {
                Reply::new(ReplyCode::OK, EnhancedStatus::RECIPIENT_OK, "Recipient OK")
            }
            Some(Awaiting::Message { .. }) => {
                Reply::new(ReplyCode::OK, EnhancedStatus::OK, "Message accepted")
            }
        };
        while self.awaiting.is_some() {
            self.respond(reply.clone());
        }
    }

    /// Sends `reply` (to the pending event, if any) and closes the session.
    pub fn respond_and_close(&mut self, reply: Reply) {
        if self.awaiting.is_some() {
            self.respond(reply);
            self.awaiting = None;
        } else if !self.is_closed() {
            reply.encode(&mut self.output);
        }
        self.event = None;
        self.state = State::Closed;
    }

    /// The read timeout expired: queues `421 4.4.2` and closes.
    pub fn timeout(&mut self) {
        if !self.is_closed() {
            self.respond_and_close(Error::Timeout.reply());
        }
    }

    /// The session has lasted as long as the server allows: queues `421 4.4.2` and
    /// closes.
    pub fn expire(&mut self) {
        if !self.is_closed() {
            self.respond_and_close(Error::SessionTooLong.reply());
        }
    }

    /// The server is shutting down: queues `421 4.3.2` and closes.
    pub fn shutdown(&mut self) {
        if !self.is_closed() {
            self.respond_and_close(Error::ShuttingDown.reply());
        }
    }

    /// The TLS handshake after STARTTLS succeeded; the session starts over (RFC 3207
    /// §4.2: the client must send EHLO again).
    pub fn tls_established(&mut self) {
        if matches!(self.state, State::TlsHandshake) {
            self.tls = true;
            self.state = State::Command;
        }
    }

    /// The reply bytes waiting to be sent, taken out of the session: write them all.
    /// (For a writer that may send only part, [`ServerSession::pending_output`] and
    /// [`ServerSession::consume_output`].)
    ///
    /// ```
    /// use smtp_proto::{ServerConfig, ServerSession};
    /// let mut session = ServerSession::new(std::sync::Arc::new(ServerConfig::default()));
    /// session.poll_event(); // the connection: answer it
    /// session.accept();
    /// assert!(session.take_output().starts_with(b"220 "));
    /// assert!(session.take_output().is_empty());
    /// ```
    pub fn take_output(&mut self) -> Vec<u8> {
        let mut out = std::mem::take(&mut self.output);
        out.drain(..self.output_pos);
        self.output_pos = 0;
        out
    }

    /// Reply bytes waiting to be sent.
    pub fn pending_output(&self) -> &[u8] {
        &self.output[self.output_pos..]
    }

    /// Marks `n` bytes of [`ServerSession::pending_output`] as sent.
    pub fn consume_output(&mut self, n: usize) {
        self.output_pos = (self.output_pos + n).min(self.output.len());
        if self.output_pos == self.output.len() {
            self.output.clear();
            self.output_pos = 0;
        }
    }

    /// What the session itself refused since the last call (syntax errors, commands
    /// out of sequence, lines too long, messages too big, too many recipients...; not
    /// the replies you gave with [`ServerSession::respond`]), oldest first: for
    /// counters. At most 32 are kept between two calls.
    ///
    /// ```
    /// use smtp_proto::{ServerConfig, ServerSession, Error};
    /// let mut session = ServerSession::new(std::sync::Arc::new(ServerConfig::default()));
    /// session.poll_event(); // Connect
    /// session.accept();
    /// session.receive(b"MAIL FROM:<a@b.example>\r\n");
    /// session.poll_event();
    /// let refused = session.take_refusals();
    /// assert_eq!(refused.len(), 1);
    /// assert_eq!(refused[0].reply().code().as_u16(), 503);
    /// ```
    pub fn take_refusals(&mut self) -> Vec<Error> {
        std::mem::take(&mut self.refusals)
    }

    /// The verb of a command that came with more input behind it where RFC 2920 says the
    /// client must wait for the reply first, since the last call: any command but QUIT
    /// and BDAT while PIPELINING is not offered (before EHLO, or after HELO), and EHLO,
    /// HELO, DATA, VRFY, EXPN, NOOP and STARTTLS, which must end a group. The session
    /// goes on as before; this only reports, for a server that refuses such clients
    /// (early-talker triage, as Exim's synchronisation check and Postfix's
    /// `smtpd_forbid_unauth_pipelining`).
    ///
    /// ```
    /// use smtp_proto::{ServerConfig, ServerSession};
    /// let mut session = ServerSession::new(std::sync::Arc::new(ServerConfig::default()));
    /// session.poll_event(); // Connect
    /// session.accept();
    /// session.receive(b"EHLO client.test\r\nMAIL FROM:<a@b.test>\r\n");
    /// session.poll_event(); // EHLO, with MAIL behind it before the reply
    /// assert_eq!(session.take_pipelining_violation(), Some("EHLO"));
    /// session.accept();
    /// session.poll_event(); // MAIL: pipelining is offered now
    /// assert_eq!(session.take_pipelining_violation(), None);
    /// ```
    pub fn take_pipelining_violation(&mut self) -> Option<&'static str> {
        self.pipelining_violation.take()
    }

    /// Whether the session is over: send the pending output, then close.
    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    /// Whether the session is reading message content (DATA or a BDAT chunk), when a
    /// server applies its data timeout instead of its command timeout.
    pub fn is_receiving_data(&self) -> bool {
        matches!(self.state, State::Data(_) | State::Chunk { .. })
    }

    /// The content of the message being received (DATA, or BDAT chunks so far), decoded,
    /// that has not been taken yet: take it with [`ServerSession::take_content`] to keep
    /// memory bounded while a large message arrives (write it to a file, say).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use smtp_proto::{Event, ServerConfig, ServerSession};
    /// let mut session = ServerSession::new(Arc::new(ServerConfig::default()));
    /// session.poll_event();
    /// session.accept();
    /// session.receive(b"EHLO c.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nDATA\r\n");
    /// while session.poll_event().is_some() {
    ///     session.accept();
    /// }
    /// session.receive(b"first part\r\n");
    /// let mut spooled = session.take_content();
    /// session.receive(b"second part\r\n.\r\n");
    /// let Some(Event::Message { body, .. }) = session.poll_event() else { panic!() };
    /// spooled.extend_from_slice(&body);
    /// assert_eq!(spooled, b"first part\r\nsecond part\r\n");
    /// ```
    pub fn content(&self) -> &[u8] {
        &self.body
    }

    /// Takes the content received so far (see [`ServerSession::content`]); the
    /// [`Event::Message`] of that message then holds only what came after.
    pub fn take_content(&mut self) -> Vec<u8> {
        self.taken += self.body.len() as u64;
        std::mem::take(&mut self.body)
    }

    /// The size of the message being received so far, taken or not.
    pub fn content_size(&self) -> u64 {
        self.taken + self.body.len() as u64
    }

    /// Whether the transaction in progress sends its content in BDAT chunks (RFC 3030),
    /// between two chunks as well as during one.
    pub fn is_chunking(&self) -> bool {
        self.transaction.as_ref().is_some_and(|t| t.is_chunking())
    }

    /// Bytes received but not yet processed: an early talker before the greeting, or
    /// pipelined commands behind a pending event. At most one line plus what the last
    /// [`ServerSession::receive`] brought.
    pub fn buffered_input(&self) -> usize {
        self.input.len() - self.input_pos
    }

    /// Whether TLS is active.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// Whether the client has authenticated.
    pub fn is_authenticated(&self) -> bool {
        self.authenticated
    }

    /// The accepted HELO/EHLO/LHLO.
    pub fn helo(&self) -> Option<(HeloKind, &HeloName)> {
        self.helo.as_ref().map(|(k, n)| (*k, n))
    }

    /// The envelope of the transaction in progress.
    pub fn envelope(&self) -> Option<&Envelope> {
        self.transaction.as_ref().map(|t| &t.envelope)
    }

    /// The protocol name for the `with` clause of a `Received:` header (RFC 3848):
    /// SMTP, ESMTP, ESMTPS, ESMTPA, ESMTPSA, LMTP, ...
    pub fn protocol_name(&self) -> &'static str {
        let esmtp = !matches!(self.helo, Some((HeloKind::Helo, _)));
        match (self.config.lmtp, esmtp, self.tls, self.authenticated) {
            (true, _, false, false) => "LMTP",
            (true, _, true, false) => "LMTPS",
            (true, _, false, true) => "LMTPA",
            (true, _, true, true) => "LMTPSA",
            (false, false, _, _) => "SMTP",
            (false, true, false, false) => "ESMTP",
            (false, true, true, false) => "ESMTPS",
            (false, true, false, true) => "ESMTPA",
            (false, true, true, true) => "ESMTPSA",
        }
    }

    /// The extensions to advertise now.
    pub fn capabilities(&self) -> Capabilities {
        let ext = &self.config.extensions;
        let auth_allowed = !self.authenticated && (self.tls || self.config.allow_plaintext_auth);
        Capabilities {
            pipelining: ext.pipelining,
            size: ext.size.then_some(self.config.max_message_size),
            eightbitmime: ext.eightbitmime,
            smtputf8: ext.smtputf8,
            enhanced_status_codes: true,
            starttls: ext.starttls && !self.tls,
            auth: if auth_allowed {
                ext.auth.clone()
            } else {
                Vec::new()
            },
            chunking: ext.chunking,
            binarymime: ext.binarymime && ext.chunking,
            dsn: ext.dsn,
            requiretls: ext.requiretls && self.tls,
            mt_priority: ext.mt_priority,
            other: Vec::new(),
        }
    }

    // ----- processing -----

    fn process(&mut self) {
        while self.awaiting.is_none() && self.event.is_none() {
            let progressed = match &mut self.state {
                State::Greeting | State::TlsHandshake | State::Closed => false,
                State::Command | State::Rejecting => self.read_command(),
                State::SaslResponse(_) => self.read_sasl_response(),
                State::Data(decoder) => {
                    let decoded = decoder.decode(&self.input[self.input_pos..], &mut self.body);
                    self.input_pos += decoded.consumed;
                    if decoded.complete {
                        self.finish_data();
                    }
                    decoded.complete
                }
                State::Chunk {
                    remaining, error, ..
                } => {
                    let available = self.input.len() - self.input_pos;
                    let take = usize::try_from(*remaining).map_or(available, |r| r.min(available));
                    *remaining -= take as u64;
                    let done = *remaining == 0;
                    if error.is_none()
                        && let Some(decoder) =
                            self.transaction.as_mut().and_then(|t| t.chunks.as_mut())
                    {
                        let chunk = &self.input[self.input_pos..self.input_pos + take];
                        decoder.decode(chunk, &mut self.body);
                    }
                    self.input_pos += take;
                    if done {
                        self.finish_chunk();
                    }
                    done
                }
            };
            if !progressed {
                break;
            }
        }
        if self.input_pos == self.input.len() {
            self.input.clear();
            self.input_pos = 0;
        } else if self.input_pos > 0 && self.awaiting.is_none() && self.event.is_none() {
            // Keep only the partial line: the buffer never grows past one line.
            self.input.drain(..self.input_pos);
            self.input_pos = 0;
        }
    }

    /// Takes the next line out of the input: `Some(Ok(range))` with the CRLF stripped,
    /// `Some(Err(_))` for a line that breaks the rules, `None` when incomplete.
    fn next_line(&mut self, max: usize) -> Option<Result<std::ops::Range<usize>, Error>> {
        loop {
            let start = self.input_pos;
            let rest = &self.input[start..];
            let lf = memchr::memchr(b'\n', rest);
            if self.discarding {
                match lf {
                    Some(n) => {
                        self.input_pos += n + 1;
                        self.discarding = false;
                        continue;
                    }
                    None => {
                        self.input_pos = self.input.len();
                        return None;
                    }
                }
            }
            return match lf {
                None if rest.len() >= max => {
                    self.input_pos = self.input.len();
                    self.discarding = true;
                    Some(Err(Error::LineTooLong))
                }
                None => None,
                Some(n) => {
                    self.input_pos += n + 1;
                    if n + 1 > max {
                        Some(Err(Error::LineTooLong))
                    } else if n > 0 && rest[n - 1] == b'\r' {
                        Some(Ok(start..start + n - 1))
                    } else if self.config.bare_line_endings == BareLineEndings::Normalize {
                        Some(Ok(start..start + n))
                    } else {
                        Some(Err(Error::BareLineFeed))
                    }
                }
            };
        }
    }

    fn read_command(&mut self) -> bool {
        let max = self
            .config
            .max_line_length
            .max(self.config.max_auth_line_length);
        let Some(line) = self.next_line(max) else {
            return false;
        };
        let parsed = line.and_then(|range| {
            let line = &self.input[range];
            let is_auth = line.len() >= 5 && line[..5].eq_ignore_ascii_case(b"AUTH ");
            if line.len() + 2 > self.config.max_line_length && !is_auth {
                return Err(Error::LineTooLong);
            }
            Command::parse(line)
        });
        match parsed {
            Err(e) => self.error(e),
            Ok(Command::Quit) => {
                let text = format!("{} closing connection", self.config.hostname);
                self.respond_and_close(Reply::new(ReplyCode::CLOSING, EnhancedStatus::OK, text));
            }
            Ok(_) if matches!(self.state, State::Rejecting) => {
                self.error(Error::BadSequence(
                    "No SMTP service here; only QUIT is accepted",
                ));
            }
            Ok(command) => {
                if self.input_pos < self.input.len() && self.must_wait_after(&command) {
                    self.pipelining_violation.get_or_insert(command.verb());
                }
                self.handle_command(command)
            }
        }
        true
    }

    /// Whether the client must wait for the reply to `command` before sending more
    /// (RFC 2920 §3.1).
    fn must_wait_after(&self, command: &Command) -> bool {
        let offered = self.config.extensions.pipelining
            && matches!(self.helo, Some((HeloKind::Ehlo | HeloKind::Lhlo, _)));
        match command {
            Command::Quit | Command::Bdat { .. } => false,
            Command::Ehlo(_)
            | Command::Helo(_)
            | Command::Lhlo(_)
            | Command::Data
            | Command::Vrfy(_)
            | Command::Expn(_)
            | Command::Noop
            | Command::StartTls => true,
            // RFC 4954 §4: AUTH ends a group, unless its initial response completes a
            // mechanism of one round trip (PLAIN, EXTERNAL).
            Command::Auth {
                mechanism,
                initial_response,
            } => {
                let one_round = initial_response.is_some()
                    && match mechanism {
                        Mechanism::Plain => true,
                        Mechanism::Other(name) => name == "EXTERNAL",
                        _ => false,
                    };
                !offered || !one_round
            }
            _ => !offered,
        }
    }

    fn handle_command(&mut self, command: Command) {
        match command {
            Command::Ehlo(name) => self.helo_command(HeloKind::Ehlo, name),
            Command::Helo(name) => self.helo_command(HeloKind::Helo, name),
            Command::Lhlo(name) => self.helo_command(HeloKind::Lhlo, name),
            Command::Mail { from, params } => match self.check_mail(&from, &params) {
                Ok(()) => self.ask(
                    Awaiting::Mail(from.clone(), params.clone()),
                    Event::Mail { from, params },
                ),
                Err(e) => self.refuse(e),
            },
            Command::Rcpt { to, params } => match self.check_rcpt(&to, &params) {
                Ok(()) => self.ask(
                    Awaiting::Rcpt(to.clone(), params.clone()),
                    Event::Rcpt { to, params },
                ),
                Err(e) => self.refuse(e),
            },
            Command::Data => match self.check_data() {
                Ok(()) => {
                    self.reply(Reply::plain(
                        ReplyCode::START_DATA,
                        "End data with <CR><LF>.<CR><LF>",
                    ));
                    self.body.clear();
                    self.taken = 0;
                    self.state = State::Data(
                        self.content_decoder(DataDecoder::new(self.config.max_message_size)),
                    );
                }
                Err(e) => self.refuse(e),
            },
            Command::Bdat { size, last } => {
                let error = self.check_bdat(size).err();
                // BODY=BINARYMIME content is binary: taken as it comes.
                let binary = self
                    .transaction
                    .as_ref()
                    .is_some_and(|t| t.envelope.params.body == Some(Body::BinaryMime));
                let decoder = DataDecoder::chunked(u64::MAX);
                let decoder = if binary {
                    decoder
                } else {
                    self.content_decoder(decoder)
                };
                if let Some(txn) = &mut self.transaction
                    && txn.chunks.is_none()
                {
                    self.body.clear();
                    self.taken = 0;
                    txn.chunks = Some(decoder);
                }
                self.state = State::Chunk {
                    remaining: size,
                    last,
                    error,
                };
                if size == 0 {
                    self.finish_chunk();
                }
            }
            Command::Rset
            | Command::Noop
            | Command::Vrfy(_)
            | Command::Expn(_)
            | Command::Help(_) => self.junk_command(&command),
            Command::StartTls => self.starttls(),
            Command::Auth {
                mechanism,
                initial_response,
            } => self.auth(mechanism, initial_response),
            Command::Quit => {}
        }
    }

    fn helo_command(&mut self, kind: HeloKind, name: HeloName) {
        if self.config.lmtp != (kind == HeloKind::Lhlo) {
            return self.error(Error::UnknownCommand);
        }
        self.ask(
            Awaiting::Helo(kind, name.clone()),
            Event::Helo { kind, name },
        );
    }

    fn check_mail(&self, from: &ReversePath, params: &MailParameters) -> Result<(), Error> {
        let ext = &self.config.extensions;
        let Some((kind, _)) = &self.helo else {
            return Err(Error::BadSequence("Send HELO/EHLO first"));
        };
        if self.transaction.is_some() {
            return Err(Error::BadSequence("Nested MAIL command"));
        }
        if self.config.require_auth && !self.authenticated {
            return Err(Error::AuthRequired);
        }
        let unknown = |name: &str| Err(Error::UnknownParameter(name.into()));
        if *kind == HeloKind::Helo && !params.is_empty() {
            return unknown("(parameters need EHLO)");
        }
        if let Some(size) = params.size {
            if !ext.size {
                return unknown("SIZE");
            }
            if size > self.config.max_message_size {
                return Err(Error::MessageTooBig);
            }
        }
        match params.body {
            Some(Body::EightBitMime) if !ext.eightbitmime => return unknown("BODY=8BITMIME"),
            Some(Body::BinaryMime) if !(ext.binarymime && ext.chunking) => {
                return unknown("BODY=BINARYMIME");
            }
            _ => {}
        }
        if params.smtputf8 && !ext.smtputf8 {
            return unknown("SMTPUTF8");
        }
        if (params.ret.is_some() || params.envid.is_some()) && !ext.dsn {
            return unknown(if params.ret.is_some() { "RET" } else { "ENVID" });
        }
        if params.auth.is_some() && ext.auth.is_empty() {
            return unknown("AUTH");
        }
        if params.requiretls && !(ext.requiretls && self.tls) {
            return unknown("REQUIRETLS");
        }
        if params.mt_priority.is_some() && !ext.mt_priority {
            return unknown("MT-PRIORITY");
        }
        if from.is_utf8() && !params.smtputf8 {
            return Err(Error::Utf8NotAllowed);
        }
        Ok(())
    }

    fn check_rcpt(&self, to: &ForwardPath, params: &RcptParameters) -> Result<(), Error> {
        let Some(txn) = &self.transaction else {
            return Err(Error::BadSequence("Need MAIL before RCPT"));
        };
        if txn.is_chunking() {
            return Err(Error::BadSequence("RCPT not allowed after BDAT"));
        }
        if !params.is_empty() && !self.config.extensions.dsn {
            return Err(Error::UnknownParameter(
                if params.notify.is_some() {
                    "NOTIFY"
                } else {
                    "ORCPT"
                }
                .into(),
            ));
        }
        if to.is_utf8() && !txn.envelope.params.smtputf8 {
            return Err(Error::Utf8NotAllowed);
        }
        if txn.envelope.recipients.len() >= self.config.max_recipients {
            return Err(Error::TooManyRecipients);
        }
        Ok(())
    }

    fn check_data(&self) -> Result<(), Error> {
        let Some(txn) = &self.transaction else {
            return Err(Error::BadSequence("Need MAIL and RCPT before DATA"));
        };
        if txn.is_chunking() {
            return Err(Error::BadSequence("DATA not allowed after BDAT"));
        }
        if txn.envelope.params.body == Some(Body::BinaryMime) {
            return Err(Error::BadSequence("BODY=BINARYMIME requires BDAT"));
        }
        if txn.envelope.recipients.is_empty() {
            return Err(Error::NoValidRecipients);
        }
        Ok(())
    }

    fn check_bdat(&self, size: u64) -> Result<(), Error> {
        if !self.config.extensions.chunking {
            return Err(Error::NotImplemented("BDAT"));
        }
        let Some(txn) = &self.transaction else {
            return Err(Error::BadSequence("Need MAIL and RCPT before BDAT"));
        };
        if txn.envelope.recipients.is_empty() {
            return Err(Error::NoValidRecipients);
        }
        let total = (if txn.is_chunking() {
            self.content_size()
        } else {
            0
        })
        .saturating_add(size);
        if total > self.config.max_message_size {
            return Err(Error::MessageTooBig);
        }
        Ok(())
    }

    fn finish_data(&mut self) {
        let State::Data(decoder) = std::mem::replace(&mut self.state, State::Command) else {
            return;
        };
        let refused = if decoder.is_over_limit() {
            Some(Error::MessageTooBig)
        } else {
            self.content_refusal(decoder.stats())
        };
        match refused {
            Some(e) => {
                self.transaction = None;
                self.refuse(e);
            }
            None => self.deliver(),
        }
    }

    /// A decoder with the configured policies for bare line endings and NUL bytes.
    fn content_decoder(&self, decoder: DataDecoder) -> DataDecoder {
        decoder
            .normalize_line_endings(self.config.bare_line_endings == BareLineEndings::Normalize)
            .remove_nul_bytes(self.config.nul_bytes == NulBytes::Remove)
    }

    /// Why a whole message is refused by the content policies, if it is.
    fn content_refusal(&self, stats: crate::DataStats) -> Option<Error> {
        if stats.has_bare_line_endings() && self.config.bare_line_endings == BareLineEndings::Reject
        {
            Some(Error::BareLineEndingInData)
        } else if stats.nul > 0 && self.config.nul_bytes == NulBytes::Reject {
            Some(Error::NulInData)
        } else {
            None
        }
    }

    fn finish_chunk(&mut self) {
        let State::Chunk { last, error, .. } = std::mem::replace(&mut self.state, State::Command)
        else {
            return;
        };
        match error {
            Some(e) => {
                if e == Error::MessageTooBig {
                    self.transaction = None;
                }
                self.refuse(e);
            }
            None if last => {
                let stats = self
                    .transaction
                    .as_mut()
                    .filter(|t| t.envelope.params.body != Some(Body::BinaryMime))
                    .and_then(|t| t.chunks.as_mut())
                    .map(|d| {
                        d.finish(&mut self.body);
                        d.stats()
                    });
                match stats.and_then(|s| self.content_refusal(s)) {
                    Some(e) => {
                        self.transaction = None;
                        self.refuse(e);
                    }
                    None => self.deliver(),
                }
            }
            None => {
                let text = format!("{} octets received", self.content_size());
                self.reply(Reply::new(ReplyCode::OK, EnhancedStatus::OK, text));
            }
        }
    }

    fn deliver(&mut self) {
        let Some(txn) = self.transaction.take() else {
            return self.refuse(Error::BadSequence("No transaction"));
        };
        let replies_left = if self.config.lmtp {
            txn.envelope.recipients.len()
        } else {
            1
        };
        let body = std::mem::take(&mut self.body);
        self.taken = 0;
        self.ask(
            Awaiting::Message { replies_left },
            Event::Message {
                envelope: txn.envelope,
                body,
            },
        );
    }

    fn starttls(&mut self) {
        if self.tls {
            return self.error(Error::BadSequence("TLS already active"));
        }
        if !self.config.extensions.starttls {
            return self.error(Error::NotImplemented("STARTTLS"));
        }
        self.reply(Reply::new(
            ReplyCode::SERVICE_READY,
            EnhancedStatus::OK,
            "Ready to start TLS",
        ));
        // RFC 3207 §4.2 and CVE-2011-0411: nothing the client sent before the handshake
        // may be acted on after it, and everything learnt so far is forgotten.
        self.input.clear();
        self.input_pos = 0;
        self.helo = None;
        self.transaction = None;
        self.authenticated = false;
        self.state = State::TlsHandshake;
        self.event = Some(Event::StartTls);
    }

    fn auth(&mut self, mechanism: Mechanism, initial: Option<SaslData>) {
        let check = if self.config.extensions.auth.is_empty() {
            Err(Error::NotImplemented("AUTH"))
        } else if !matches!(self.helo, Some((HeloKind::Ehlo | HeloKind::Lhlo, _))) {
            Err(Error::BadSequence("Send EHLO first"))
        } else if self.authenticated {
            Err(Error::BadSequence("Already authenticated"))
        } else if self.transaction.is_some() {
            Err(Error::BadSequence(
                "AUTH not allowed during a mail transaction",
            ))
        } else if !self.tls && !self.config.allow_plaintext_auth {
            Err(Error::EncryptionRequired)
        } else if !self.config.extensions.auth.contains(&mechanism) {
            Err(Error::UnsupportedMechanism)
        } else {
            Ok(())
        };
        if let Err(e) = check {
            return self.error(e);
        }
        match (mechanism, initial) {
            (Mechanism::Plain, Some(data)) => self.sasl_plain(&data.0),
            (Mechanism::Plain, None) => {
                self.reply(Reply::plain(ReplyCode::AUTH_CONTINUE, ""));
                self.state = State::SaslResponse(SaslStep::Plain);
            }
            (Mechanism::Login, None) => {
                self.reply(Reply::plain(ReplyCode::AUTH_CONTINUE, "VXNlcm5hbWU6"));
                self.state = State::SaslResponse(SaslStep::LoginUser);
            }
            (Mechanism::Login, Some(user)) => self.login_user(&user.0),
            _ => self.error(Error::UnsupportedMechanism),
        }
    }

    fn read_sasl_response(&mut self) -> bool {
        let Some(line) = self.next_line(self.config.max_auth_line_length) else {
            return false;
        };
        let State::SaslResponse(step) = std::mem::replace(&mut self.state, State::Command) else {
            return true;
        };
        let data = line.and_then(|range| {
            let text = std::str::from_utf8(&self.input[range]).map_err(|_| Error::InvalidBase64)?;
            if text == "*" {
                return Err(Error::AuthCancelled);
            }
            SaslData::decode(text)
        });
        match (data, step) {
            (Err(e), _) => self.error(e),
            (Ok(data), SaslStep::Plain) => self.sasl_plain(&data.0),
            (Ok(data), SaslStep::LoginUser) => self.login_user(&data.0),
            (Ok(data), SaslStep::LoginPassword(username)) => match String::from_utf8(data.0) {
                Ok(password) => self.ask_auth(Mechanism::Login, None, username, password),
                Err(_) => self.error(Error::InvalidCredentials),
            },
        }
        true
    }

    /// PLAIN (RFC 4616): `authzid NUL authcid NUL passwd`.
    fn sasl_plain(&mut self, data: &[u8]) {
        let parts: Vec<&[u8]> = data.split(|&b| b == 0).collect();
        let [authzid, username, password] = parts.as_slice() else {
            return self.error(Error::InvalidCredentials);
        };
        let text = |b: &[u8]| String::from_utf8(b.to_vec()).ok();
        match (text(authzid), text(username), text(password)) {
            (Some(authzid), Some(username), Some(password)) if !username.is_empty() => {
                let authzid = Some(authzid).filter(|a| !a.is_empty() && *a != username);
                self.ask_auth(Mechanism::Plain, authzid, username, password);
            }
            _ => self.error(Error::InvalidCredentials),
        }
    }

    fn login_user(&mut self, data: &[u8]) {
        match String::from_utf8(data.to_vec()) {
            Ok(user) if !user.is_empty() => {
                self.reply(Reply::plain(ReplyCode::AUTH_CONTINUE, "UGFzc3dvcmQ6"));
                self.state = State::SaslResponse(SaslStep::LoginPassword(user));
            }
            _ => self.error(Error::InvalidCredentials),
        }
    }

    fn ask_auth(
        &mut self,
        mechanism: Mechanism,
        authzid: Option<String>,
        username: String,
        password: String,
    ) {
        let credentials = Credentials {
            mechanism,
            authzid,
            username,
            password: Password(password),
        };
        self.ask(Awaiting::Auth, Event::Auth(credentials));
    }

    // ----- output helpers -----

    /// Keeps `error` for [`ServerSession::take_refusals`] (a bounded number between
    /// two calls).
    fn note_refusal(&mut self, error: &Error) {
        if self.refusals.len() < MAX_KEPT_REFUSALS {
            self.refusals.push(error.clone());
        }
    }

    fn ask(&mut self, awaiting: Awaiting, event: Event) {
        self.awaiting = Some(awaiting);
        self.event = Some(event);
    }

    fn reply(&mut self, reply: Reply) {
        reply.encode(&mut self.output);
    }

    /// A refusal that is part of normal operation (limits, size): not counted as an
    /// error.
    fn refuse(&mut self, error: Error) {
        error.reply().encode(&mut self.output);
        self.note_refusal(&error);
        if error.closes_connection() {
            self.state = State::Closed;
        }
    }

    /// A client error: replied to and counted; too many close the session.
    fn error(&mut self, error: Error) {
        if error == Error::InvalidChunkSize {
            // The chunk's length is unknown, so the stream cannot be resynchronised.
            self.refuse(error);
            return self.close_with(&Error::Desynchronized);
        }
        self.refuse(error);
        self.count_error();
    }

    /// One more error; too many close the session.
    fn count_error(&mut self) {
        self.errors += 1;
        if self.errors >= self.config.max_errors && !self.is_closed() {
            self.close_with(&Error::TooManyErrors);
        }
    }

    /// A command that moves no mail (NOOP, RSET, VRFY, EXPN, HELP): answered, and
    /// beyond [`ServerConfig::max_junk_commands`] since the last accepted message,
    /// counted as an error.
    fn junk_command(&mut self, command: &Command) {
        match command {
            Command::Rset => {
                self.transaction = None;
                self.reply(Reply::new(ReplyCode::OK, EnhancedStatus::OK, "Reset state"));
            }
            Command::Vrfy(_) => self.reply(Reply::new(
                ReplyCode::CANNOT_VERIFY,
                EnhancedStatus::PROTOCOL_OK,
                "Cannot VRFY user, but will accept message and attempt delivery",
            )),
            Command::Expn(_) => self.refuse(Error::NotImplemented("EXPN")),
            Command::Help(_) => self.reply(Reply::new(
                ReplyCode::HELP,
                EnhancedStatus::OK,
                "Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY STARTTLS AUTH; see RFC 5321",
            )),
            _ => self.reply(Reply::new(ReplyCode::OK, EnhancedStatus::OK, "OK")),
        }
        self.junk_commands = self.junk_commands.saturating_add(1);
        if self.junk_commands > self.config.max_junk_commands {
            self.count_error();
        }
    }

    fn close_with(&mut self, error: &Error) {
        error.reply().encode(&mut self.output);
        self.note_refusal(error);
        self.state = State::Closed;
        self.awaiting = None;
        self.event = None;
    }
}

#[cfg(test)]
mod pipelining_tests {
    use super::*;

    /// The violation reported after feeding `input` to a greeted session whose
    /// events are all accepted.
    fn violations(input: &[&[u8]]) -> Vec<&'static str> {
        let mut session = ServerSession::new(Arc::new(ServerConfig::default()));
        session.poll_event();
        session.accept();
        let mut found = Vec::new();
        for bytes in input {
            session.receive(bytes);
            while session.poll_event().is_some() {
                found.extend(session.take_pipelining_violation());
                session.accept();
            }
            found.extend(session.take_pipelining_violation());
        }
        found
    }

    #[test]
    fn reported_only_where_rfc_2920_forbids() {
        // One command at a time, or a group after EHLO ending in DATA: fine.
        assert!(
            violations(&[
                b"EHLO c.test\r\n",
                b"MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nDATA\r\n",
                b"x\r\n.\r\nQUIT\r\n"
            ])
            .is_empty()
        );
        assert!(
            violations(&[
                b"HELO c.test\r\n",
                b"MAIL FROM:<a@b.test>\r\n",
                b"RCPT TO:<c@d.test>\r\n"
            ])
            .is_empty()
        );
        // BDAT content follows its command by design.
        assert!(
            violations(&[
                b"EHLO c.test\r\n",
                b"MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nBDAT 3 LAST\r\nx\r\n"
            ])
            .is_empty()
        );
        // Before the greeting's reply, with EHLO: EHLO must end a group.
        assert_eq!(
            violations(&[b"EHLO c.test\r\nMAIL FROM:<a@b.test>\r\n"]),
            ["EHLO"]
        );
        // After HELO, PIPELINING is not offered.
        assert_eq!(
            violations(&[
                b"HELO c.test\r\n",
                b"MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\n"
            ]),
            ["MAIL"]
        );
        // Content sent before the 354.
        assert_eq!(
            violations(&[
                b"EHLO c.test\r\n",
                b"MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nDATA\r\nSubject: s\r\n"
            ]),
            ["DATA"]
        );
        assert_eq!(
            violations(&[b"EHLO c.test\r\n", b"NOOP\r\nRSET\r\n"]),
            ["NOOP"]
        );
        // A partial line behind counts too.
        assert_eq!(violations(&[b"EHLO c.test\r\nMA"]), ["EHLO"]);
        // RFC 4954 §4: AUTH ends a group, except with the initial response of a
        // mechanism of one round trip (PLAIN).
        assert!(
            violations(&[
                b"EHLO c.test\r\n",
                b"AUTH PLAIN AGFubgBzZWNyZXQ=\r\nMAIL FROM:<a@b.test>\r\n"
            ])
            .is_empty()
        );
        assert_eq!(
            violations(&[b"EHLO c.test\r\n", b"AUTH LOGIN\r\nYW5u\r\n"]),
            ["AUTH"]
        );
        assert_eq!(
            violations(&[b"EHLO c.test\r\n", b"AUTH PLAIN\r\nAGFubgBzZWNyZXQ=\r\n"]),
            ["AUTH"]
        );
    }
}

#[cfg(test)]
mod junk_command_tests {
    use super::*;

    /// The reply codes (with enhanced status) to `input`, fed to a greeted session
    /// whose events are all accepted.
    fn codes(session: &mut ServerSession, input: &str) -> Vec<String> {
        session.receive(input.as_bytes());
        while session.poll_event().is_some() {
            session.accept();
        }
        String::from_utf8(session.take_output())
            .unwrap_or_default()
            .lines()
            .filter(|l| l.as_bytes().get(3) == Some(&b' '))
            .map(|l| l.split(' ').take(2).collect::<Vec<_>>().join(" "))
            .collect()
    }

    fn session() -> ServerSession {
        let config = ServerConfig {
            max_junk_commands: 3,
            max_errors: 2,
            ..ServerConfig::default()
        };
        let mut session = ServerSession::new(Arc::new(config));
        session.poll_event();
        session.accept();
        session.take_output();
        session
    }

    /// NOOP, RSET, VRFY, EXPN and HELP beyond the limit count as errors, so a client
    /// that only sends those is let go after `max_errors` more (`421 4.7.0`).
    #[test]
    fn junk_commands_beyond_the_limit_close_the_session() {
        let mut s = session();
        codes(&mut s, "EHLO c.test\r\n");
        assert_eq!(
            codes(&mut s, "NOOP\r\nRSET\r\nVRFY bob\r\n"),
            ["250 2.0.0", "250 2.0.0", "252 2.5.0"]
        );
        assert!(!s.is_closed());
        // The fourth is answered and counted as the first error; the fifth is the
        // second, the last one allowed.
        assert_eq!(codes(&mut s, "HELP\r\n"), ["214 2.0.0"]);
        assert!(!s.is_closed());
        assert_eq!(codes(&mut s, "EXPN list\r\n"), ["502 5.5.1", "421 4.7.0"]);
        assert!(s.is_closed());
    }

    /// An accepted message starts the count again (as Postfix's junk_cmds).
    #[test]
    fn an_accepted_message_starts_the_count_again() {
        let mut s = session();
        let mut all = codes(&mut s, "EHLO c.test\r\nNOOP\r\nNOOP\r\nNOOP\r\n");
        all.extend(codes(
            &mut s,
            "MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nDATA\r\n",
        ));
        all.extend(codes(&mut s, "Subject: x\r\n\r\nhi\r\n.\r\n"));
        all.extend(codes(&mut s, "NOOP\r\nNOOP\r\nNOOP\r\n"));
        assert_eq!(all.len(), 11, "{all:?}");
        assert!(!s.is_closed(), "{all:?}");
        // Two more (the fourth and fifth since the message) close it.
        assert_eq!(
            codes(&mut s, "NOOP\r\nNOOP\r\n"),
            ["250 2.0.0", "250 2.0.0", "421 4.7.0"]
        );
        assert!(s.is_closed());
    }
}
