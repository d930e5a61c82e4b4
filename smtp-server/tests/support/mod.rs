//! What the integration tests of `smtp-server` share: the service at the end of the
//! chain that keeps what it accepts ([`sink`]), servers on real sockets on 127.0.0.1:0
//! ([`start`], [`start_detached`]), in-memory sessions over a tokio duplex stream
//! ([`session`], [`Client`]) and STARTTLS with an rcgen certificate ([`tls_pair`],
//! [`starttls`]).
//!
//! ```text
//!   test ──Client──▶ duplex ──▶ StreamServer ─┐
//!   test ──RawClient──▶ 127.0.0.1:0 ─▶ Server ─┴─▶ Stages ─▶ sink ─▶ Kept<T>
//! ```

// Each test file uses a part of this module.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rustls_pki_types::ServerName;
use smtp_client::testing::code_of;
use smtp_proto::{Reply, ReplyParser};
use smtp_server::filters::rate::ManualClock;
use smtp_server::filters::{Authenticator, DomainSet, RelayPolicy};
use smtp_server::{
    BoxError, DataRequest, Decision, Limits, ListenerConfig, ListenerMode, Server, ServerConfig,
    ServerStats, Stages, StreamServer, filter,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio_rustls::client::TlsStream;

/// What a [`sink`] kept of the messages it accepted, in order.
pub(crate) type Kept<T> = Arc<Mutex<Vec<T>>>;

/// The last service of the chain: accepts every message and keeps `keep(message)` in
/// `kept` (`|req| req` for the whole request, `|req| req.message()` for its bytes).
pub(crate) fn sink<T: Send + 'static>(
    kept: &Kept<T>,
    keep: impl Fn(DataRequest) -> T + Clone + Send + Sync + 'static,
) -> impl tower::Service<
    DataRequest,
    Response = Decision,
    Error = BoxError,
    Future = impl Send + 'static,
> + Clone
+ Send
+ Sync
+ 'static {
    let kept = Arc::clone(kept);
    tower::service_fn(move |req: DataRequest| {
        let kept = Arc::clone(&kept);
        let item = keep(req);
        async move {
            kept.lock().unwrap().push(item);
            Ok::<_, BoxError>(Decision::accept())
        }
    })
}

/// `stages` with the relay policy of a server whose test clients all come from
/// loopback: no local domains, relaying for 127.0.0.0/8.
pub(crate) fn relay_for_loopback(stages: Stages) -> Stages {
    let loopback = vec!["127.0.0.0/8".parse().unwrap()];
    stages.relay_policy(filter(RelayPolicy::new(
        DomainSet::new(Vec::<String>::new()),
        loopback,
    )))
}

// ---- Servers on real sockets ----

/// A listener of `mode` on 127.0.0.1, on a port the system picks, without PROXY.
pub(crate) fn listener(mode: ListenerMode) -> ListenerConfig {
    ListenerConfig {
        address: "127.0.0.1:0".parse().unwrap(),
        mode,
        proxy: None,
    }
}

/// A configuration named `hostname` with one relay [`listener`]; the rest default.
pub(crate) fn relay_config(hostname: &str) -> ServerConfig {
    ServerConfig {
        hostname: hostname.into(),
        listeners: vec![listener(ListenerMode::Relay)],
        ..ServerConfig::default()
    }
}

/// Drop it to stop the server it came with.
pub(crate) type Stop = tokio::sync::oneshot::Sender<()>;

/// A server [`start`]ed in a task.
pub(crate) struct Running {
    /// Where its listeners are, in the order of `config.listeners`.
    pub(crate) addrs: Vec<SocketAddr>,
    pub(crate) stats: Arc<ServerStats>,
    pub(crate) stop: Stop,
}

impl Running {
    /// The first listener's address.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addrs[0]
    }
}

/// Binds `config` with `stages` and runs the server in a task until `stop` is dropped.
pub(crate) async fn start(config: ServerConfig, stages: Stages) -> Running {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (addrs, stats) = spawn(config, stages, async {
        let _ = stopped.await;
    })
    .await;
    Running { addrs, stats, stop }
}

/// [`start`] without a way to stop: the server runs until the test's runtime ends.
/// Its first listener's address.
pub(crate) async fn start_detached(config: ServerConfig, stages: Stages) -> SocketAddr {
    spawn(config, stages, std::future::pending()).await.0[0]
}

async fn spawn(
    config: ServerConfig,
    stages: Stages,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> (Vec<SocketAddr>, Arc<ServerStats>) {
    let server = Server::bind(config, stages).await.unwrap();
    let addrs = server.local_addrs().into_iter().map(|(_, a)| a).collect();
    let stats = server.stats();
    tokio::spawn(server.run(shutdown));
    (addrs, stats)
}

// ---- In-memory sessions ----

/// The local address of in-memory sessions on the relay port.
pub(crate) const RELAY_LOCAL: &str = "192.0.2.25:25";

/// The configuration of in-memory servers: `mx.local.test`, STARTTLS and AUTH when
/// `tls` is given, and no delay after a failed login.
pub(crate) fn config(tls: Option<Arc<rustls::ServerConfig>>) -> ServerConfig {
    ServerConfig {
        hostname: "mx.local.test".into(),
        auth: tls.is_some(),
        tls,
        limits: Limits {
            auth_failure_delay: Duration::ZERO,
            ..Limits::default()
        },
        ..ServerConfig::default()
    }
}

/// The client end of an in-memory session.
pub(crate) struct Client<S> {
    pub(crate) stream: S,
    parser: ReplyParser,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    pub(crate) fn new(stream: S) -> Self {
        Self {
            stream,
            parser: ReplyParser::default(),
        }
    }

    /// The next reply; `None` when the server closed the session.
    pub(crate) async fn try_reply(&mut self) -> Option<Reply> {
        let mut buf = [0u8; 4096];
        loop {
            if let Some(reply) = self.parser.next_reply() {
                return Some(reply.unwrap());
            }
            let n = tokio::time::timeout(Duration::from_secs(10), self.stream.read(&mut buf))
                .await
                .expect("a reply within 10 s")
                .unwrap_or(0);
            if n == 0 {
                return None;
            }
            self.parser.push(&buf[..n]);
        }
    }

    /// The next reply; panics when the server closed the session.
    pub(crate) async fn reply(&mut self) -> Reply {
        self.try_reply()
            .await
            .expect("the server closed the session")
    }

    /// Sends `line` (CRLF added); the whole reply.
    pub(crate) async fn full(&mut self, line: &str) -> Reply {
        self.stream
            .write_all(format!("{line}\r\n").as_bytes())
            .await
            .unwrap();
        self.reply().await
    }

    /// Sends `line`; the reply's `"code status"`.
    pub(crate) async fn cmd(&mut self, line: &str) -> String {
        code_of(&self.full(line).await)
    }

    /// One transaction (MAIL and RCPT must pass); the reply at the end of data.
    pub(crate) async fn send(&mut self, from: &str, to: &str, message: &str) -> String {
        assert_eq!(self.cmd(&format!("MAIL FROM:<{from}>")).await, "250 2.1.0");
        assert_eq!(self.cmd(&format!("RCPT TO:<{to}>")).await, "250 2.1.5");
        assert_eq!(self.cmd("DATA").await, "354");
        self.cmd(&format!("{message}\r\n.")).await
    }

    /// Whether the server closed the session (with no reply left to read).
    pub(crate) async fn is_closed(&mut self) -> bool {
        self.try_reply().await.is_none()
    }

    /// Whether a `421` (the session's own limit on failed logins) and the end of the
    /// session follow the last reply.
    pub(crate) async fn is_closed_soon(&mut self) -> bool {
        let mut buf = [0u8; 1024];
        if let Some(reply) = self.parser.next_reply() {
            return reply.unwrap().code().as_u16() == 421;
        }
        match tokio::time::timeout(Duration::from_millis(50), self.stream.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => true,
            Ok(Ok(n)) => {
                self.parser.push(&buf[..n]);
                self.parser
                    .next_reply()
                    .is_some_and(|r| r.is_ok_and(|r| r.code().as_u16() == 421))
            }
            Err(_) => false,
        }
    }
}

/// A session from `peer` on `server` at [`RELAY_LOCAL`], after the greeting (220) and
/// EHLO.
pub(crate) async fn session(server: &StreamServer, peer: &str) -> Client<DuplexStream> {
    session_to(server, peer, RELAY_LOCAL).await
}

/// [`session`] to the local address `local`.
pub(crate) async fn session_to(
    server: &StreamServer,
    peer: &str,
    local: &str,
) -> Client<DuplexStream> {
    let (ours, theirs) = tokio::io::duplex(64 * 1024);
    let peer: SocketAddr = peer.parse().unwrap();
    let local: SocketAddr = local.parse().unwrap();
    let server = server.clone();
    tokio::spawn(async move { server.serve(theirs, peer, local).await });
    let mut client = Client::new(ours);
    let greeting = client.reply().await;
    assert_eq!(greeting.code().as_u16(), 220, "greeting {greeting}");
    assert_eq!(client.cmd("EHLO client.test").await, "250");
    client
}

// ---- TLS ----

/// A certificate for `localhost` made by rcgen: the server's configuration, and a
/// client's that trusts it.
pub(crate) fn tls_pair() -> (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>) {
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let der = made.cert.der().clone();
    let key = rustls_pki_types::PrivateKeyDer::Pkcs8(made.signing_key.serialize_der().into());
    let server = smtp_server::tls::from_der(vec![der.clone()], key).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    (server, Arc::new(client))
}

/// An in-memory submission server with STARTTLS and AUTH ([`config`] with a
/// [`tls_pair`]), and the client configuration that trusts it.
pub(crate) struct TlsServer {
    pub(crate) server: StreamServer,
    pub(crate) client: Arc<rustls::ClientConfig>,
}

impl TlsServer {
    pub(crate) fn submission(stages: Stages) -> Self {
        let (server_tls, client) = tls_pair();
        let server =
            StreamServer::new(config(Some(server_tls)), ListenerMode::Submission, stages).unwrap();
        Self { server, client }
    }
}

/// STARTTLS on `plain` (after its EHLO) for `localhost`, then EHLO again.
pub(crate) async fn starttls(
    mut plain: Client<DuplexStream>,
    client: &Arc<rustls::ClientConfig>,
) -> Client<TlsStream<DuplexStream>> {
    assert_eq!(plain.cmd("STARTTLS").await, "220 2.0.0");
    let name = ServerName::try_from("localhost").unwrap();
    let stream = tokio_rustls::TlsConnector::from(Arc::clone(client))
        .connect(name, plain.stream)
        .await
        .unwrap();
    let mut c = Client::new(stream);
    assert_eq!(c.cmd("EHLO client.test").await, "250");
    c
}

/// The one account of the login tests: alice, password `secret`.
pub(crate) struct Alice;

impl Authenticator for Alice {
    fn verify(&self, username: &str, password: &str) -> bool {
        username == "alice" && password == "secret"
    }
}

/// `AUTH PLAIN` for [`Alice`] with the right password.
pub(crate) const RIGHT: &str = "AUTH PLAIN AGFsaWNlAHNlY3JldA==";
/// `AUTH PLAIN` for [`Alice`] with a wrong one.
pub(crate) const WRONG: &str = "AUTH PLAIN AGFsaWNlAGd1ZXNz";

// ---- Counters and time ----

/// A counter's value.
pub(crate) fn load(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

/// A clock moved by hand, set to a fixed time (2027-01-15).
pub(crate) fn clock() -> ManualClock {
    ManualClock::new(SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000))
}
