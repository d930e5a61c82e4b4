//! One client connection: a `smtp_proto::ClientSession` over any async stream.

use std::time::Duration;

use smtp_proto::{
    Capabilities, ClientConfig, ClientEvent, ClientSession, Command, HeloName, MailTransaction,
    Reply, TransactionResult, Waiting,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::ClientError;

/// How much of a body is encoded and written at a time.
const BODY_PART: usize = 64 * 1024;

/// Timeouts of RFC 5321 §4.5.3.2, per step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// The initial `220`. Default 5 minutes.
    pub greeting: Duration,
    /// EHLO, MAIL, RCPT and other commands. Default 5 minutes.
    pub command: Duration,
    /// The `354` to DATA. Default 2 minutes.
    pub data_start: Duration,
    /// Sending each block of the message. Default 3 minutes.
    pub data_block: Duration,
    /// The reply after the message's final dot. Default 10 minutes.
    pub data_end: Duration,
}

impl Timeouts {
    /// The timeout for the reply the session waits for, and what to call it.
    fn for_reply(&self, waiting: Option<Waiting>) -> (Duration, &'static str) {
        match waiting {
            Some(Waiting::Greeting) => (self.greeting, "the greeting"),
            Some(Waiting::Mail) => (self.command, "the reply to MAIL"),
            Some(Waiting::Rcpt) => (self.command, "the reply to RCPT"),
            Some(Waiting::DataStart) => (self.data_start, "the reply to DATA"),
            Some(Waiting::DataEnd) => (self.data_end, "the reply after the message"),
            Some(Waiting::Command) | None => (self.command, "a reply"),
        }
    }
}

impl Default for Timeouts {
    fn default() -> Self {
        let min = |m: u64| Duration::from_secs(60 * m);
        Self {
            greeting: min(5),
            command: min(5),
            data_start: min(2),
            data_block: min(3),
            data_end: min(10),
        }
    }
}

/// A connection to an SMTP or LMTP server, past its greeting.
///
/// ```no_run
/// # async fn example() -> Result<(), smtp_client::ClientError> {
/// use smtp_client::{Connection, Timeouts};
/// use smtp_proto::{ClientConfig, HeloName, MailTransaction, MailParameters, RcptParameters, ReversePath, ForwardPath};
/// let stream = tokio::net::TcpStream::connect("127.0.0.1:24").await?;
/// let config = ClientConfig { lmtp: true, ..ClientConfig::default() };
/// let mut conn = Connection::open(stream, config, Timeouts::default()).await?;
/// conn.hello(HeloName::parse("mx.example.test").unwrap()).await?;
/// let result = conn.send(MailTransaction {
///     from: ReversePath::parse("<a@example.test>").unwrap(),
///     params: MailParameters::default(),
///     recipients: vec![(ForwardPath::parse("<b@example.test>").unwrap(), RcptParameters::default())],
/// }, b"Subject: hi\r\n\r\nhello\r\n").await?;
/// println!("{:?}", result.recipients);
/// conn.quit().await;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Connection<S> {
    stream: S,
    session: ClientSession,
    timeouts: Timeouts,
    buf: Vec<u8>,
    greeting: Reply,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<S> {
    /// Reads the greeting; a `4yz`/`5yz` greeting is an error.
    pub async fn open(
        stream: S,
        config: ClientConfig,
        timeouts: Timeouts,
    ) -> Result<Self, ClientError> {
        let mut conn = Self {
            stream,
            session: ClientSession::new(config),
            timeouts,
            buf: vec![0; 8192],
            greeting: Reply::plain(smtp_proto::ReplyCode::SERVICE_READY, ""),
        };
        match conn.next_event().await? {
            ClientEvent::Greeting(reply) if reply.code().as_u16() == 220 => conn.greeting = reply,
            ClientEvent::Greeting(reply) => return Err(ClientError::Rejected(reply)),
            _ => return Err(smtp_proto::Error::UnexpectedReply.into()),
        }
        Ok(conn)
    }

    /// The server's greeting.
    pub fn greeting(&self) -> &Reply {
        &self.greeting
    }

    /// What the server offered in its last EHLO/LHLO reply.
    pub fn capabilities(&self) -> Option<&Capabilities> {
        self.session.capabilities()
    }

    /// Logs in with PLAIN when offered, else LOGIN.
    pub async fn authenticate(
        &mut self,
        username: &str,
        password: &str,
    ) -> Result<(), ClientError> {
        let plain = self
            .capabilities()
            .is_none_or(|c| c.offers_auth(&smtp_proto::Mechanism::Plain) || c.auth.is_empty());
        if plain {
            self.session.auth_plain(username, password);
        } else {
            self.session.auth_login(username, password);
        }
        let reply = self.reply_to_command().await?;
        if reply.is_positive_completion() {
            Ok(())
        } else {
            Err(ClientError::Auth(reply))
        }
    }

    /// Sends a command and returns its reply.
    pub async fn command(&mut self, command: Command) -> Result<Reply, ClientError> {
        self.session.send(command);
        self.reply_to_command().await
    }

    /// The stream, for an upgrade; the session must be told with
    /// [`Connection::tls_established`].
    pub(crate) fn stream_mut(&mut self) -> &mut S {
        &mut self.stream
    }

    /// TLS is up: the session forgets what the server said before (RFC 3207 §4.2).
    pub(crate) fn tls_established(&mut self) {
        self.session.tls_established();
    }

    /// EHLO (LHLO under LMTP); falls back to HELO when the server refuses EHLO with a
    /// `5yz`. Returns what the server offers.
    pub async fn hello(&mut self, name: HeloName) -> Result<&Capabilities, ClientError> {
        self.session.ehlo(name.clone());
        let reply = self.reply_to_command().await?;
        if !reply.is_positive_completion() {
            if reply.is_permanent() && !self.session.config().lmtp {
                self.session.send(Command::Helo(name));
                let reply = self.reply_to_command().await?;
                if !reply.is_positive_completion() {
                    return Err(ClientError::Rejected(reply));
                }
            } else {
                return Err(ClientError::Rejected(reply));
            }
        }
        self.session
            .capabilities()
            .ok_or(ClientError::Protocol(smtp_proto::Error::UnexpectedReply))
    }

    /// Runs one mail transaction; the result has one reply per recipient. The body is
    /// encoded and written a part at a time, so a large message takes no more memory
    /// than a part.
    pub async fn send(
        &mut self,
        transaction: MailTransaction,
        body: &[u8],
    ) -> Result<TransactionResult, ClientError> {
        self.session.start_transaction(transaction);
        loop {
            match self.next_event().await? {
                ClientEvent::ReadyForData => {
                    self.session.begin_body(body.len() as u64);
                    for part in body.chunks(BODY_PART) {
                        self.session.send_body_part(part);
                        self.write_pending().await?;
                    }
                    self.session.finish_body();
                }
                ClientEvent::TransactionComplete(result) => return Ok(result),
                _ => return Err(smtp_proto::Error::UnexpectedReply.into()),
            }
        }
    }

    /// RSET, to start a new transaction after a failed one.
    pub async fn reset(&mut self) -> Result<Reply, ClientError> {
        self.session.send(Command::Rset);
        self.reply_to_command().await
    }

    /// QUIT, and close. Errors are ignored: the work is done.
    pub async fn quit(mut self) {
        self.session.send(Command::Quit);
        let _ = self.reply_to_command().await;
        let _ = self.stream.shutdown().await;
    }

    /// Writes what the session has for the server, within the data-block timeout.
    async fn write_pending(&mut self) -> Result<(), ClientError> {
        let pending = self.session.pending_output();
        if !pending.is_empty() {
            let n = pending.len();
            let write = async {
                self.stream.write_all(pending).await?;
                self.stream.flush().await
            };
            tokio::time::timeout(self.timeouts.data_block, write)
                .await
                .map_err(|_| ClientError::Timeout("the server to take our data"))??;
            self.session.consume_output(n);
        }
        Ok(())
    }

    async fn reply_to_command(&mut self) -> Result<Reply, ClientError> {
        match self.next_event().await? {
            ClientEvent::Reply { reply, .. } => Ok(reply),
            _ => Err(smtp_proto::Error::UnexpectedReply.into()),
        }
    }

    /// Writes what the session wants written, then reads until it reports an event;
    /// each wait has the RFC 5321 timeout of the reply it waits for, each write the
    /// data-block timeout.
    async fn next_event(&mut self) -> Result<ClientEvent, ClientError> {
        loop {
            if let Some(event) = self.session.poll_event() {
                // What the caller sends in answer to the event goes out on its next call.
                return Ok(event?);
            }
            // Handling replies may have released commands held back (one at a time
            // without PIPELINING): they must leave before we wait for their replies.
            self.write_pending().await?;
            let (timeout, what) = self.timeouts.for_reply(self.session.next_reply_for());
            let n = tokio::time::timeout(timeout, self.stream.read(&mut self.buf))
                .await
                .map_err(|_| ClientError::Timeout(what))??;
            if n == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the server closed the connection",
                )
                .into());
            }
            self.session.receive(&self.buf[..n]);
        }
    }
}
