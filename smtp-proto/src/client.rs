//! The client session state machine: commands in, bytes out; server bytes in, replies
//! paired with their commands out.
//!
//! ```text
//!  send(cmd) / start_transaction(..) / send_body(..)
//!  your code ───────────────────────────────▶ ClientSession ──pending_output()──▶ socket
//!      ▲                                           ▲                                │
//!      └──────────── poll_event() ─────────────────┴───────── receive(bytes) ◀──────┘
//! ```
//!
//! The session remembers what the server advertised, writes commands as soon as the
//! rules allow (all of a pipelined group at once when PIPELINING is offered, one at a
//! time otherwise, RFC 2920), pairs every reply with the command it answers, and turns
//! the replies of a mail transaction into one outcome per recipient.

use std::collections::VecDeque;

use crate::Error;
use crate::address::{ForwardPath, HeloName, ReversePath};
use crate::command::{Command, Mechanism, SaslData};
use crate::data::DataEncoder;
use crate::ehlo::Capabilities;
use crate::params::{MailParameters, RcptParameters};
use crate::reply::{Reply, ReplyLimits, ReplyParser};

/// The configuration of a [`ClientSession`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientConfig {
    /// Speak LMTP (RFC 2033): LHLO, and one reply per accepted recipient after the data.
    pub lmtp: bool,
    /// Send the body with BDAT (RFC 3030) when the server offers CHUNKING.
    pub chunking: bool,
    /// Limits on server replies.
    pub reply_limits: ReplyLimits,
}

/// A transaction to run: the envelope; the body follows on [`ClientEvent::ReadyForData`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MailTransaction {
    /// MAIL FROM.
    pub from: ReversePath,
    /// MAIL FROM parameters (SIZE, BODY, SMTPUTF8, DSN ...), as the caller decided.
    pub params: MailParameters,
    /// The recipients, in order.
    pub recipients: Vec<(ForwardPath, RcptParameters)>,
}

/// How one transaction ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransactionResult {
    /// The reply to MAIL.
    pub mail: Reply,
    /// For each recipient, in order, the reply that decides its fate: the MAIL reply if
    /// MAIL failed, its RCPT reply if that failed, else the reply to the data (for LMTP,
    /// its own reply after the data).
    pub recipients: Vec<Reply>,
    /// The reply that ended the data phase (DATA refused, or the final reply), if any.
    pub data: Option<Reply>,
}

/// What the client session reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientEvent {
    /// The server's greeting.
    Greeting(Reply),
    /// The reply to a command sent with [`ClientSession::send`] (EHLO, STARTTLS, AUTH,
    /// RSET, NOOP, QUIT, ...). After a positive EHLO or LHLO, the capabilities are in
    /// [`ClientSession::capabilities`].
    Reply {
        /// The command's verb.
        verb: &'static str,
        /// The reply.
        reply: Reply,
    },
    /// The server is ready for the message: call [`ClientSession::send_body`].
    ReadyForData,
    /// The transaction is over.
    TransactionComplete(TransactionResult),
}

/// What the next reply answers (see [`ClientSession::next_reply_for`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Waiting {
    /// The greeting (RFC 5321: 5 minutes).
    Greeting,
    /// MAIL (5 minutes).
    Mail,
    /// RCPT (5 minutes).
    Rcpt,
    /// The 354 to DATA (2 minutes).
    DataStart,
    /// The reply after the message (10 minutes).
    DataEnd,
    /// Any other command (EHLO, STARTTLS, AUTH, RSET, QUIT: 5 minutes).
    Command,
}

/// What an in-flight or queued command expects in return.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    Greeting,
    Command(&'static str),
    AuthLogin(u8),
    Mail,
    Rcpt(usize),
    Data,
    /// The final reply(ies) after the message content.
    Body,
}

impl Expect {
    /// RFC 2920 §3.1: these end a pipelined group (plus STARTTLS and AUTH, which
    /// change the session).
    fn ends_group(self) -> bool {
        match self {
            Self::Command(verb) => !matches!(verb, "RSET"),
            Self::Greeting | Self::AuthLogin(_) | Self::Data | Self::Body => true,
            Self::Mail | Self::Rcpt(_) => false,
        }
    }
}

#[derive(Debug)]
struct Outgoing {
    expect: Expect,
    bytes: Vec<u8>,
}

#[derive(Debug)]
struct Transaction {
    recipients: usize,
    mail: Option<Reply>,
    rcpt: Vec<Option<Reply>>,
    data: Option<Reply>,
    finals: Vec<Reply>,
    /// Final replies still expected after the body.
    finals_expected: usize,
    bdat: bool,
    /// The body was requested and not yet given.
    waiting_for_body: bool,
    /// A body being given in parts ([`ClientSession::begin_body`]).
    body: Option<BodyInParts>,
}

/// How the parts of a body are written.
#[derive(Debug)]
enum BodyInParts {
    /// After DATA: dot-stuffed.
    Data(DataEncoder),
    /// In one `BDAT n LAST` chunk: as they are, `n` bytes in all.
    Bdat { remaining: u64 },
}

impl Transaction {
    fn accepted(&self) -> impl Iterator<Item = usize> + '_ {
        self.rcpt
            .iter()
            .enumerate()
            .filter(|(_, r)| r.as_ref().is_some_and(Reply::is_positive_completion))
            .map(|(i, _)| i)
    }

    fn all_rcpt_replies_in(&self) -> bool {
        self.rcpt.iter().all(Option::is_some)
    }
}

/// The client side of one SMTP or LMTP connection, with no I/O.
///
/// ```
/// use smtp_proto::*;
///
/// let mut client = ClientSession::new(ClientConfig::default());
/// client.receive(b"220 mx.example.test ESMTP\r\n");
/// assert!(matches!(client.poll_event(), Some(Ok(ClientEvent::Greeting(_)))));
/// client.send(Command::Ehlo(HeloName::parse("client.test").unwrap()));
/// client.receive(b"250-mx.example.test\r\n250 PIPELINING\r\n");
/// assert!(matches!(client.poll_event(), Some(Ok(ClientEvent::Reply { verb: "EHLO", .. }))));
/// assert!(client.capabilities().unwrap().pipelining);
/// client.consume_output(client.pending_output().len());
///
/// client.start_transaction(MailTransaction {
///     from: ReversePath::parse("<a@client.test>").unwrap(),
///     params: MailParameters::default(),
///     recipients: vec![
///         (ForwardPath::parse("<b@mx.example.test>").unwrap(), RcptParameters::default()),
///         (ForwardPath::parse("<nobody@mx.example.test>").unwrap(), RcptParameters::default()),
///     ],
/// });
/// // Pipelined: MAIL, both RCPTs and DATA leave in one write.
/// assert_eq!(client.pending_output(), b"MAIL FROM:<a@client.test>\r\nRCPT TO:<b@mx.example.test>\r\n\
/// RCPT TO:<nobody@mx.example.test>\r\nDATA\r\n");
/// client.consume_output(client.pending_output().len());
/// client.receive(b"250 ok\r\n250 ok\r\n550 5.1.1 no such user\r\n354 go\r\n");
/// assert_eq!(client.poll_event(), Some(Ok(ClientEvent::ReadyForData)));
/// client.send_body(b"Subject: hi\r\n\r\n.hello\r\n");
/// assert_eq!(client.pending_output(), b"Subject: hi\r\n\r\n..hello\r\n.\r\n");
/// client.receive(b"250 2.0.0 queued\r\n");
/// let Some(Ok(ClientEvent::TransactionComplete(result))) = client.poll_event() else { panic!() };
/// assert_eq!(result.recipients[0].code().as_u16(), 250);
/// assert_eq!(result.recipients[1].code().as_u16(), 550);
/// ```
#[derive(Debug)]
pub struct ClientSession {
    config: ClientConfig,
    parser: ReplyParser,
    output: Vec<u8>,
    output_pos: usize,
    /// Written, waiting for a reply.
    in_flight: VecDeque<Expect>,
    /// Not written yet: waiting for the pipelining rules to allow it.
    queued: VecDeque<Outgoing>,
    capabilities: Option<Capabilities>,
    transaction: Option<Transaction>,
    events: VecDeque<ClientEvent>,
    /// The password for an AUTH LOGIN exchange in progress.
    login: Option<(String, String)>,
    failed: bool,
}

impl ClientSession {
    /// A session for a new connection; the first reply expected is the greeting.
    pub fn new(config: ClientConfig) -> Self {
        let parser = ReplyParser::new(config.reply_limits);
        let mut in_flight = VecDeque::new();
        in_flight.push_back(Expect::Greeting);
        Self {
            config,
            parser,
            output: Vec::new(),
            output_pos: 0,
            in_flight,
            queued: VecDeque::new(),
            capabilities: None,
            transaction: None,
            events: VecDeque::new(),
            login: None,
            failed: false,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// What the server advertised in its last positive EHLO/LHLO reply (empty after
    /// HELO); `None` before, and again after STARTTLS.
    pub fn capabilities(&self) -> Option<&Capabilities> {
        self.capabilities.as_ref()
    }

    /// Queues a command. It is written as soon as the pipelining rules allow.
    pub fn send(&mut self, command: Command) {
        let mut bytes = Vec::with_capacity(64);
        command.encode(&mut bytes);
        self.push(Outgoing {
            expect: Expect::Command(command.verb()),
            bytes,
        });
    }

    /// Sends `EHLO`, or `LHLO` under LMTP.
    pub fn ehlo(&mut self, name: HeloName) {
        self.send(if self.config.lmtp {
            Command::Lhlo(name)
        } else {
            Command::Ehlo(name)
        });
    }

    /// Authenticates with PLAIN (RFC 4616) and an initial response.
    pub fn auth_plain(&mut self, username: &str, password: &str) {
        let data = format!("\0{username}\0{password}").into_bytes();
        self.send(Command::Auth {
            mechanism: Mechanism::Plain,
            initial_response: Some(SaslData(data)),
        });
    }

    /// Authenticates with LOGIN (username and password answered to two `334`s).
    pub fn auth_login(&mut self, username: &str, password: &str) {
        self.login = Some((username.to_owned(), password.to_owned()));
        let mut bytes = Vec::new();
        Command::Auth {
            mechanism: Mechanism::Login,
            initial_response: None,
        }
        .encode(&mut bytes);
        self.push(Outgoing {
            expect: Expect::AuthLogin(0),
            bytes,
        });
    }

    /// Starts a mail transaction: MAIL and every RCPT, and DATA unless the body goes by
    /// BDAT. With PIPELINING they leave together; without, one by one, and the rest is
    /// dropped as soon as the transaction cannot succeed.
    pub fn start_transaction(&mut self, txn: MailTransaction) {
        let bdat = self.config.chunking && self.capabilities.as_ref().is_some_and(|c| c.chunking);
        let recipients = txn.recipients.len();
        self.transaction = Some(Transaction {
            recipients,
            mail: None,
            rcpt: vec![None; recipients],
            data: None,
            finals: Vec::new(),
            finals_expected: 0,
            bdat,
            waiting_for_body: false,
            body: None,
        });
        let mut bytes = Vec::with_capacity(64);
        Command::Mail {
            from: txn.from,
            params: txn.params,
        }
        .encode(&mut bytes);
        self.push(Outgoing {
            expect: Expect::Mail,
            bytes,
        });
        for (i, (to, params)) in txn.recipients.into_iter().enumerate() {
            let mut bytes = Vec::with_capacity(64);
            Command::Rcpt { to, params }.encode(&mut bytes);
            self.push(Outgoing {
                expect: Expect::Rcpt(i),
                bytes,
            });
        }
        if !bdat {
            self.push(Outgoing {
                expect: Expect::Data,
                bytes: b"DATA\r\n".to_vec(),
            });
        }
    }

    /// Sends the message after [`ClientEvent::ReadyForData`]: dot-stuffed and ended by
    /// `.` after DATA, or as one `BDAT n LAST` chunk when chunking. The whole encoded
    /// message goes to the output at once; for a large one, give it in parts with
    /// [`ClientSession::begin_body`].
    pub fn send_body(&mut self, body: &[u8]) {
        self.begin_body(body.len() as u64);
        self.send_body_part(body);
        self.finish_body();
    }

    /// Starts the message after [`ClientEvent::ReadyForData`] without giving it: `size`
    /// is its length (a BDAT chunk states it first). Then give it with
    /// [`ClientSession::send_body_part`], in any split, writing the pending output
    /// between parts to keep memory bounded, and end it with
    /// [`ClientSession::finish_body`].
    ///
    /// ```
    /// use smtp_proto::{ClientConfig, ClientEvent, ClientSession, ForwardPath, HeloName,
    ///     MailParameters, MailTransaction, RcptParameters, ReversePath};
    /// let mut c = ClientSession::new(ClientConfig { chunking: false, ..ClientConfig::default() });
    /// c.receive(b"220 mx ESMTP\r\n");
    /// c.poll_event();
    /// c.ehlo(HeloName::parse("client.test").unwrap());
    /// c.receive(b"250 mx\r\n");
    /// c.poll_event();
    /// c.start_transaction(MailTransaction {
    ///     from: ReversePath::parse("<a@b.test>").unwrap(),
    ///     params: MailParameters::default(),
    ///     recipients: vec![(ForwardPath::parse("<c@d.test>").unwrap(), RcptParameters::default())],
    /// });
    /// c.receive(b"250 ok\r\n250 ok\r\n354 go\r\n");
    /// assert_eq!(c.poll_event(), Some(Ok(ClientEvent::ReadyForData)));
    /// let before = c.pending_output().len();
    /// c.consume_output(before);
    /// c.begin_body(12);
    /// c.send_body_part(b"Hi\r\n.");
    /// c.send_body_part(b"dot\r\n");
    /// c.finish_body();
    /// assert_eq!(c.pending_output(), b"Hi\r\n..dot\r\n.\r\n");
    /// ```
    pub fn begin_body(&mut self, size: u64) {
        let Some(txn) = &mut self.transaction else {
            return;
        };
        if !std::mem::take(&mut txn.waiting_for_body) {
            return;
        }
        txn.finals_expected = if self.config.lmtp {
            txn.accepted().count()
        } else {
            1
        };
        if txn.bdat {
            // Every reply of the transaction so far is in (ReadyForData waits for
            // them): the chunk can go now, and its content right after it.
            Command::Bdat { size, last: true }.encode(&mut self.output);
            txn.body = Some(BodyInParts::Bdat { remaining: size });
        } else {
            // The body follows the 354 directly; it is not a command.
            txn.body = Some(BodyInParts::Data(DataEncoder::default()));
        }
        self.in_flight.push_back(Expect::Body);
    }

    /// A part of the body started with [`ClientSession::begin_body`]. Under BDAT,
    /// bytes beyond the size given there are dropped.
    pub fn send_body_part(&mut self, part: &[u8]) {
        match self.transaction.as_mut().and_then(|t| t.body.as_mut()) {
            Some(BodyInParts::Data(encoder)) => encoder.encode(part, &mut self.output),
            Some(BodyInParts::Bdat { remaining }) => {
                let take = usize::try_from(*remaining).map_or(part.len(), |r| r.min(part.len()));
                self.output.extend_from_slice(&part[..take]);
                *remaining -= take as u64;
            }
            None => {}
        }
    }

    /// Ends the body: the final `.` after DATA. A BDAT chunk given fewer bytes than its
    /// size is completed with spaces, so that the session stays in step.
    pub fn finish_body(&mut self) {
        match self.transaction.as_mut().and_then(|t| t.body.take()) {
            Some(BodyInParts::Data(mut encoder)) => encoder.finish(&mut self.output),
            Some(BodyInParts::Bdat { remaining }) => {
                let fill = usize::try_from(remaining).unwrap_or(0);
                self.output.resize(self.output.len() + fill, b' ');
            }
            None => {}
        }
    }

    /// Feeds bytes from the server.
    pub fn receive(&mut self, bytes: &[u8]) {
        self.parser.push(bytes);
    }

    /// The next event, or an error that ends the session (a malformed reply, TLS
    /// injection, a reply nobody asked for): treat the connection as broken.
    pub fn poll_event(&mut self) -> Option<Result<ClientEvent, Error>> {
        loop {
            if let Some(event) = self.events.pop_front() {
                return Some(Ok(event));
            }
            if self.failed {
                return None;
            }
            let reply = match self.parser.next_reply()? {
                Ok(reply) => reply,
                Err(e) => return Some(Err(self.fail(e))),
            };
            if let Err(e) = self.handle_reply(reply) {
                return Some(Err(self.fail(e)));
            }
        }
    }

    /// The TLS handshake after STARTTLS succeeded: what the server said before is
    /// forgotten, as RFC 3207 §4.2 requires; send EHLO again.
    pub fn tls_established(&mut self) {
        self.capabilities = None;
        self.parser.clear();
    }

    /// Bytes waiting to be written.
    pub fn pending_output(&self) -> &[u8] {
        &self.output[self.output_pos..]
    }

    /// The command bytes waiting to be written, taken out of the session: write them
    /// all. (For a writer that may send only part, [`ClientSession::pending_output`]
    /// and [`ClientSession::consume_output`].)
    pub fn take_output(&mut self) -> Vec<u8> {
        let mut out = std::mem::take(&mut self.output);
        out.drain(..self.output_pos);
        self.output_pos = 0;
        out
    }

    /// Marks `n` bytes of [`ClientSession::pending_output`] as written.
    pub fn consume_output(&mut self, n: usize) {
        self.output_pos = (self.output_pos + n).min(self.output.len());
        if self.output_pos == self.output.len() {
            self.output.clear();
            self.output_pos = 0;
        }
    }

    /// Whether a reply is still expected (a closed connection now means failure).
    pub fn is_waiting(&self) -> bool {
        !self.in_flight.is_empty() || !self.queued.is_empty()
    }

    /// Whether a transaction is in progress.
    pub fn in_transaction(&self) -> bool {
        self.transaction.is_some()
    }

    /// What the next reply answers, for choosing its timeout (RFC 5321 §4.5.3.2).
    pub fn next_reply_for(&self) -> Option<Waiting> {
        self.in_flight.front().map(|e| match e {
            Expect::Greeting => Waiting::Greeting,
            Expect::Mail => Waiting::Mail,
            Expect::Rcpt(_) => Waiting::Rcpt,
            Expect::Data => Waiting::DataStart,
            Expect::Body => Waiting::DataEnd,
            Expect::Command(_) | Expect::AuthLogin(_) => Waiting::Command,
        })
    }

    // ----- internals -----

    fn fail(&mut self, e: Error) -> Error {
        self.failed = true;
        e
    }

    fn push(&mut self, out: Outgoing) {
        self.queued.push_back(out);
        self.flush();
    }

    /// Writes queued commands while the pipelining rules allow.
    fn flush(&mut self) {
        let pipelining = self.capabilities.as_ref().is_some_and(|c| c.pipelining);
        while let Some(next) = self.queued.front() {
            let may_write = match self.in_flight.back() {
                None => true,
                Some(last) => {
                    pipelining && !last.ends_group() && !matches!(next.expect, Expect::Body)
                }
            };
            if !may_write {
                break;
            }
            let Some(out) = self.queued.pop_front() else {
                break;
            };
            self.output.extend_from_slice(&out.bytes);
            self.in_flight.push_back(out.expect);
        }
    }

    fn handle_reply(&mut self, reply: Reply) -> Result<(), Error> {
        let expect = self.in_flight.pop_front().ok_or(Error::UnexpectedReply)?;
        match expect {
            Expect::Greeting => self.events.push_back(ClientEvent::Greeting(reply)),
            Expect::Command(verb) => {
                if reply.is_positive_completion() {
                    match verb {
                        "EHLO" | "LHLO" => {
                            self.capabilities = Some(Capabilities::from_reply(&reply));
                        }
                        "HELO" => self.capabilities = Some(Capabilities::default()),
                        _ => {}
                    }
                }
                if verb == "STARTTLS" && reply.code().as_u16() == 220 && self.parser.buffered() > 0
                {
                    return Err(Error::StartTlsInjection);
                }
                self.events.push_back(ClientEvent::Reply { verb, reply });
            }
            Expect::AuthLogin(step) => self.auth_login_step(step, reply),
            Expect::Mail => {
                let failed = !reply.is_positive_completion();
                if let Some(txn) = &mut self.transaction {
                    txn.mail = Some(reply);
                }
                if failed {
                    self.abandon_queued();
                }
                self.check_transaction();
            }
            Expect::Rcpt(i) => {
                if let Some(slot) = self.transaction.as_mut().and_then(|t| t.rcpt.get_mut(i)) {
                    *slot = Some(reply);
                }
                self.check_transaction();
            }
            Expect::Data => {
                let Some(txn) = &mut self.transaction else {
                    return Err(Error::UnexpectedReply);
                };
                if reply.code().is_positive_intermediate() {
                    if txn.accepted().next().is_some()
                        && txn.mail.as_ref().is_some_and(Reply::is_positive_completion)
                    {
                        txn.waiting_for_body = true;
                        self.events.push_back(ClientEvent::ReadyForData);
                    } else {
                        // RFC 2920 §3.1: all RCPTs failed yet DATA got 354: send an empty
                        // message, whose reply is then ignored.
                        txn.data = Some(reply);
                        txn.finals_expected = 1;
                        self.output.extend_from_slice(b".\r\n");
                        self.in_flight.push_back(Expect::Body);
                    }
                } else {
                    txn.data = Some(reply);
                    self.complete_transaction();
                }
            }
            Expect::Body => {
                let Some(txn) = &mut self.transaction else {
                    return Err(Error::UnexpectedReply);
                };
                txn.finals.push(reply);
                txn.finals_expected = txn.finals_expected.saturating_sub(1);
                if txn.finals_expected > 0 {
                    // LMTP: more replies follow for the same body.
                    self.in_flight.push_front(Expect::Body);
                } else {
                    self.complete_transaction();
                }
            }
        }
        self.flush();
        Ok(())
    }

    fn auth_login_step(&mut self, step: u8, reply: Reply) {
        if reply.code().is_positive_intermediate()
            && step < 2
            && let Some((user, pass)) = &self.login
        {
            let secret = if step == 0 { user } else { pass };
            let mut bytes = Vec::new();
            SaslData(secret.as_bytes().to_vec()).encode(&mut bytes);
            bytes.extend_from_slice(b"\r\n");
            self.output.extend_from_slice(&bytes);
            self.in_flight.push_front(Expect::AuthLogin(step + 1));
            return;
        }
        self.login = None;
        self.events.push_back(ClientEvent::Reply {
            verb: "AUTH",
            reply,
        });
    }

    /// Drops the queued commands of a transaction that can no longer succeed.
    fn abandon_queued(&mut self) {
        self.queued
            .retain(|o| !matches!(o.expect, Expect::Rcpt(_) | Expect::Data));
    }

    /// After MAIL and RCPT replies: ask for the body, or end a transaction that failed.
    fn check_transaction(&mut self) {
        let Some(txn) = &mut self.transaction else {
            return;
        };
        let Some(mail) = &txn.mail else { return };
        let mail_ok = mail.is_positive_completion();
        let some_accepted = txn.accepted().next().is_some();
        let sent_all = !self
            .queued
            .iter()
            .any(|o| matches!(o.expect, Expect::Rcpt(_)));
        let in_flight = self
            .in_flight
            .iter()
            .any(|e| matches!(e, Expect::Rcpt(_) | Expect::Data));
        if !mail_ok {
            if !in_flight {
                self.complete_transaction();
            }
            return;
        }
        if !txn.all_rcpt_replies_in() || !sent_all {
            return;
        }
        if !some_accepted {
            self.abandon_queued();
            if !in_flight {
                self.complete_transaction();
            }
        } else if txn.bdat {
            txn.waiting_for_body = true;
            self.events.push_back(ClientEvent::ReadyForData);
        }
    }

    fn complete_transaction(&mut self) {
        let Some(txn) = self.transaction.take() else {
            return;
        };
        let Some(mail) = txn.mail.clone() else { return };
        let data_reply = txn.finals.first().cloned().or_else(|| txn.data.clone());
        let mut finals = txn.finals.iter();
        let mut recipients = Vec::with_capacity(txn.recipients);
        for rcpt in &txn.rcpt {
            let reply = if !mail.is_positive_completion() {
                mail.clone()
            } else {
                match rcpt {
                    Some(r) if !r.is_positive_completion() => r.clone(),
                    None => mail_missing_reply(),
                    Some(_) => {
                        let own = if self.config.lmtp {
                            finals.next()
                        } else {
                            txn.finals.first()
                        };
                        own.or(txn.data.as_ref())
                            .cloned()
                            .unwrap_or_else(mail_missing_reply)
                    }
                }
            };
            recipients.push(reply);
        }
        self.events
            .push_back(ClientEvent::TransactionComplete(TransactionResult {
                mail,
                recipients,
                data: data_reply,
            }));
    }
}

/// A recipient whose command was never answered (the transaction was abandoned).
fn mail_missing_reply() -> Reply {
    Reply::new(
        crate::ReplyCode::LOCAL_ERROR,
        crate::EnhancedStatus::PROTOCOL_TEMPORARY,
        "Transaction abandoned before this recipient was accepted",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connected(ehlo: &[u8], config: ClientConfig) -> ClientSession {
        let mut c = ClientSession::new(config);
        c.receive(b"220 hi\r\n");
        assert!(matches!(c.poll_event(), Some(Ok(ClientEvent::Greeting(_)))));
        c.ehlo(HeloName::parse("me.test").unwrap());
        c.receive(ehlo);
        assert!(matches!(
            c.poll_event(),
            Some(Ok(ClientEvent::Reply { .. }))
        ));
        c.consume_output(c.pending_output().len());
        c
    }

    fn txn(n: usize) -> MailTransaction {
        MailTransaction {
            from: ReversePath::parse("<a@me.test>").unwrap(),
            params: MailParameters::default(),
            recipients: (0..n)
                .map(|i| {
                    (
                        ForwardPath::parse(&format!("<r{i}@x.test>")).unwrap(),
                        RcptParameters::default(),
                    )
                })
                .collect(),
        }
    }

    fn take_output(c: &mut ClientSession) -> String {
        let out = String::from_utf8(c.pending_output().to_vec()).unwrap();
        c.consume_output(out.len());
        out
    }

    #[test]
    fn without_pipelining_one_command_at_a_time() {
        let mut c = connected(b"250 mx\r\n", ClientConfig::default());
        c.start_transaction(txn(2));
        assert_eq!(take_output(&mut c), "MAIL FROM:<a@me.test>\r\n");
        c.receive(b"250 ok\r\n");
        assert_eq!(c.poll_event(), None);
        assert_eq!(take_output(&mut c), "RCPT TO:<r0@x.test>\r\n");
        c.receive(b"550 no\r\n");
        assert_eq!(c.poll_event(), None);
        assert_eq!(take_output(&mut c), "RCPT TO:<r1@x.test>\r\n");
        c.receive(b"550 no\r\n");
        // No recipient accepted: DATA is never sent.
        let Some(Ok(ClientEvent::TransactionComplete(r))) = c.poll_event() else {
            panic!()
        };
        assert_eq!(take_output(&mut c), "");
        assert!(r.recipients.iter().all(|r| r.code().as_u16() == 550));
        assert_eq!(r.data, None);
    }

    #[test]
    fn mail_failure_fails_every_recipient() {
        let mut c = connected(b"250 mx\r\n", ClientConfig::default());
        c.start_transaction(txn(3));
        take_output(&mut c);
        c.receive(b"451 4.3.0 try later\r\n");
        let Some(Ok(ClientEvent::TransactionComplete(r))) = c.poll_event() else {
            panic!()
        };
        assert_eq!(r.recipients.len(), 3);
        assert!(r.recipients.iter().all(|r| r.code().as_u16() == 451));
        assert_eq!(take_output(&mut c), "");
    }

    #[test]
    fn pipelined_mixed_recipients() {
        let mut c = connected(b"250-mx\r\n250 PIPELINING\r\n", ClientConfig::default());
        c.start_transaction(txn(4));
        let out = take_output(&mut c);
        assert_eq!(out.matches("RCPT").count(), 4);
        assert!(out.ends_with("DATA\r\n"));
        c.receive(b"250 ok\r\n250 ok\r\n550 5.1.1 no\r\n452 4.5.3 later\r\n250 ok\r\n354 go\r\n");
        assert_eq!(c.poll_event(), Some(Ok(ClientEvent::ReadyForData)));
        c.send_body(b"x");
        assert_eq!(take_output(&mut c), "x\r\n.\r\n");
        c.receive(b"250 2.0.0 ok\r\n");
        let Some(Ok(ClientEvent::TransactionComplete(r))) = c.poll_event() else {
            panic!()
        };
        let codes: Vec<u16> = r.recipients.iter().map(|r| r.code().as_u16()).collect();
        assert_eq!(codes, [250, 550, 452, 250]);
    }

    #[test]
    fn all_rcpt_failed_but_354() {
        let mut c = connected(b"250-mx\r\n250 PIPELINING\r\n", ClientConfig::default());
        c.start_transaction(txn(1));
        take_output(&mut c);
        c.receive(b"250 ok\r\n550 no\r\n354 go\r\n");
        assert_eq!(c.poll_event(), None);
        assert_eq!(take_output(&mut c), ".\r\n");
        c.receive(b"554 no valid recipients\r\n");
        let Some(Ok(ClientEvent::TransactionComplete(r))) = c.poll_event() else {
            panic!()
        };
        assert_eq!(r.recipients[0].code().as_u16(), 550);
    }

    #[test]
    fn data_refused() {
        let mut c = connected(b"250-mx\r\n250 PIPELINING\r\n", ClientConfig::default());
        c.start_transaction(txn(1));
        take_output(&mut c);
        c.receive(b"250 ok\r\n250 ok\r\n451 4.3.0 no\r\n");
        let Some(Ok(ClientEvent::TransactionComplete(r))) = c.poll_event() else {
            panic!()
        };
        assert_eq!(r.recipients[0].code().as_u16(), 451);
        assert_eq!(r.data.unwrap().code().as_u16(), 451);
    }

    #[test]
    fn bdat_when_offered() {
        let config = ClientConfig {
            chunking: true,
            ..ClientConfig::default()
        };
        let mut c = connected(b"250-mx\r\n250-PIPELINING\r\n250 CHUNKING\r\n", config);
        c.start_transaction(txn(1));
        assert_eq!(
            take_output(&mut c),
            "MAIL FROM:<a@me.test>\r\nRCPT TO:<r0@x.test>\r\n"
        );
        c.receive(b"250 ok\r\n250 ok\r\n");
        assert_eq!(c.poll_event(), Some(Ok(ClientEvent::ReadyForData)));
        c.send_body(b"Hi\r\n.\r\n");
        assert_eq!(take_output(&mut c), "BDAT 7 LAST\r\nHi\r\n.\r\n");
        c.receive(b"250 ok\r\n");
        assert!(matches!(
            c.poll_event(),
            Some(Ok(ClientEvent::TransactionComplete(_)))
        ));
    }

    #[test]
    fn lmtp_reply_per_recipient() {
        let config = ClientConfig {
            lmtp: true,
            ..ClientConfig::default()
        };
        let mut c = connected(b"250-lmtp\r\n250 PIPELINING\r\n", config);
        c.start_transaction(txn(3));
        take_output(&mut c);
        c.receive(b"250 ok\r\n250 ok\r\n550 no\r\n250 ok\r\n354 go\r\n");
        assert_eq!(c.poll_event(), Some(Ok(ClientEvent::ReadyForData)));
        c.send_body(b"x\r\n");
        c.receive(b"250 2.0.0 delivered\r\n");
        assert_eq!(c.poll_event(), None);
        c.receive(b"452 4.2.2 over quota\r\n");
        let Some(Ok(ClientEvent::TransactionComplete(r))) = c.poll_event() else {
            panic!()
        };
        let codes: Vec<u16> = r.recipients.iter().map(|r| r.code().as_u16()).collect();
        assert_eq!(codes, [250, 550, 452]);
    }

    #[test]
    fn starttls_injection_is_an_error() {
        let mut c = connected(b"250-mx\r\n250 STARTTLS\r\n", ClientConfig::default());
        c.send(Command::StartTls);
        c.receive(b"220 ready\r\n250 injected\r\n");
        assert_eq!(c.poll_event(), Some(Err(Error::StartTlsInjection)));
        assert_eq!(c.poll_event(), None);
    }

    #[test]
    fn auth_login_exchange() {
        let mut c = connected(b"250-mx\r\n250 AUTH LOGIN\r\n", ClientConfig::default());
        c.auth_login("alice", "secret");
        assert_eq!(take_output(&mut c), "AUTH LOGIN\r\n");
        c.receive(b"334 VXNlcm5hbWU6\r\n");
        assert_eq!(c.poll_event(), None);
        assert_eq!(take_output(&mut c), "YWxpY2U=\r\n");
        c.receive(b"334 UGFzc3dvcmQ6\r\n");
        assert_eq!(c.poll_event(), None);
        assert_eq!(take_output(&mut c), "c2VjcmV0\r\n");
        c.receive(b"235 2.7.0 ok\r\n");
        assert!(matches!(
            c.poll_event(),
            Some(Ok(ClientEvent::Reply { verb: "AUTH", .. }))
        ));
    }

    #[test]
    fn unexpected_reply_is_an_error() {
        let mut c = connected(b"250 mx\r\n", ClientConfig::default());
        c.receive(b"250 surprise\r\n");
        assert_eq!(c.poll_event(), Some(Err(Error::UnexpectedReply)));
    }
}
