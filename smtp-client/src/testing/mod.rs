//! A raw SMTP client for tests (feature `testing`): it sends exactly the bytes it is
//! given, however wrong, and parses the replies that come back, so a test can assert on
//! what a server answers to bad input, pipelining, STARTTLS injection and the like.
//! Every test of the workspace that speaks SMTP by hand uses this one, and finds the
//! peer programs it drives (swaks, s-nail, openssl) with [`tool`].
//!
//! It panics on what a test treats as a failed expectation (no reply in time, a reply
//! that does not parse), with a message saying which.
//!
//! ```no_run
//! # async fn run(addr: std::net::SocketAddr) {
//! use smtp_client::testing::{RawClient, code_of};
//! let mut c = RawClient::connect(addr).await;
//! assert_eq!(c.greeting.code().as_u16(), 220);
//! c.send(b"EHLO client.test\r\nMAIL FROM:<a@b.test>\r\n").await;
//! let ehlo = c.reply().await;
//! assert_eq!(code_of(&c.reply().await), "250 2.1.0");
//! # let _ = ehlo; }
//! ```

// Test support: a panic is how a failed expectation reports itself.
#![allow(clippy::expect_used, clippy::missing_panics_doc)]

#[cfg(unix)]
pub mod daemons;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::ServerName;
use smtp_proto::{Reply, ReplyLimits, ReplyParser};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::ClientStream;

/// How long [`RawClient::reply`] waits.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// A raw SMTP connection for tests: plain TCP, after STARTTLS, or implicit TLS.
#[derive(Debug)]
pub struct RawClient {
    /// The connection (replace it to do a TLS handshake by hand).
    pub stream: ClientStream,
    parser: ReplyParser,
    /// The greeting.
    pub greeting: Reply,
}

impl RawClient {
    /// Connects over plain TCP and reads the greeting.
    pub async fn connect(addr: SocketAddr) -> Self {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        Self::start(ClientStream::Plain(tcp)).await
    }

    /// Connects with implicit TLS (RFC 8314) to a server `name`, trusting what `tls`
    /// trusts, and reads the greeting.
    pub async fn connect_tls(addr: SocketAddr, tls: Arc<rustls::ClientConfig>, name: &str) -> Self {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        Self::start(handshake(tcp, tls, name).await).await
    }

    async fn start(stream: ClientStream) -> Self {
        // Generous limits: a test may provoke long replies and wants to see them.
        let limits = ReplyLimits {
            max_line: 100_000,
            max_lines: 1000,
        };
        let mut client = Self {
            stream,
            parser: ReplyParser::new(limits),
            greeting: Reply::plain(smtp_proto::ReplyCode::OK, ""),
        };
        client.greeting = client.reply().await;
        client
    }

    /// Sends raw bytes.
    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("send");
        self.stream.flush().await.expect("send");
    }

    /// The next reply (10 s at most).
    pub async fn reply(&mut self) -> Reply {
        self.try_reply(REPLY_TIMEOUT)
            .await
            .expect("a reply within 10 s")
    }

    /// The next reply, or `None` if the connection closes or nothing comes in time.
    pub async fn try_reply(&mut self, timeout: Duration) -> Option<Reply> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut buf = [0u8; 4096];
        loop {
            if let Some(reply) = self.parser.next_reply() {
                return Some(reply.expect("a well-formed reply"));
            }
            match tokio::time::timeout_at(deadline, self.stream.read(&mut buf)).await {
                Ok(Ok(0)) | Err(_) | Ok(Err(_)) => return None,
                Ok(Ok(n)) => self.parser.push(&buf[..n]),
            }
        }
    }

    /// Every reply until the server closes the connection, nothing comes for 5 s, or
    /// `max` replies came.
    pub async fn replies(&mut self, max: usize) -> Vec<Reply> {
        let mut out = Vec::new();
        while out.len() < max {
            match self.try_reply(Duration::from_secs(5)).await {
                Some(reply) => out.push(reply),
                None => break,
            }
        }
        out
    }

    /// Sends one command line (CRLF added) and returns its reply.
    pub async fn cmd(&mut self, line: &str) -> Reply {
        self.send(format!("{line}\r\n").as_bytes()).await;
        self.reply().await
    }

    /// [`code_of`] the reply to a command.
    pub async fn code(&mut self, line: &str) -> String {
        code_of(&self.cmd(line).await)
    }

    /// STARTTLS, then the handshake with a server `name` trusting what `tls` trusts;
    /// EHLO is not resent.
    pub async fn starttls(mut self, tls: Arc<rustls::ClientConfig>, name: &str) -> Self {
        let reply = self.cmd("STARTTLS").await;
        assert_eq!(reply.code().as_u16(), 220, "STARTTLS refused: {reply}");
        self.handshake(tls, name).await
    }

    /// The TLS handshake on this plain connection, without sending STARTTLS (for a test
    /// that sent it itself); what was buffered before it is dropped.
    pub async fn handshake(self, tls: Arc<rustls::ClientConfig>, name: &str) -> Self {
        let ClientStream::Plain(tcp) = self.stream else {
            panic!("TLS already")
        };
        Self {
            stream: handshake(tcp, tls, name).await,
            parser: ReplyParser::default(),
            greeting: self.greeting,
        }
    }

    /// Whether the server has closed the connection (reads until EOF, 5 s at most).
    pub async fn is_closed(&mut self) -> bool {
        let mut buf = [0u8; 1024];
        matches!(
            tokio::time::timeout(Duration::from_secs(5), self.stream.read(&mut buf)).await,
            Ok(Ok(0) | Err(_))
        )
    }
}

async fn handshake(tcp: TcpStream, tls: Arc<rustls::ClientConfig>, name: &str) -> ClientStream {
    let name = ServerName::try_from(name.to_owned()).expect("a server name");
    let tls = TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .expect("TLS handshake");
    ClientStream::Tls(Box::new(tls))
}

/// `"250"` or `"250 2.1.5"`: a reply's code and enhanced status, what tests compare.
///
/// ```
/// use smtp_client::testing::code_of;
/// let reply = smtp_proto::Reply::plain(smtp_proto::ReplyCode::OK, "fine");
/// assert_eq!(code_of(&reply), "250");
/// ```
pub fn code_of(reply: &Reply) -> String {
    match reply.status() {
        Some(s) => format!("{} {s}", reply.code()),
        None => reply.code().to_string(),
    }
}

/// A program a test drives (a peer nobody here wrote): on the PATH, or in `/usr/sbin`
/// and `/usr/bin` where Debian puts daemons (not always on a user's PATH); `None` when
/// it is missing, and the test then skips with a message, except under `CI=true`,
/// where `.ci/run` installs it and its absence is a failure.
#[allow(clippy::print_stderr)] // the skip message is for the person running the tests
pub fn tool(name: &str) -> Option<std::path::PathBuf> {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain(["/usr/sbin", "/usr/bin"].map(std::path::PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file());
    if found.is_none() {
        assert!(
            std::env::var("CI").is_err(),
            "{name} is required under CI=true (.ci/run installs it)"
        );
        eprintln!("skipping: {name} not found");
    }
    found
}
