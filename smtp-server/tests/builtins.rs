//! Each built-in filter's accept and refuse paths, over in-memory sessions: the server
//! runs on one end of a tokio duplex stream ([`StreamServer`]), the test speaks SMTP on
//! the other, with STARTTLS (an rcgen certificate) where a login is needed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls_pki_types::ServerName;
use smtp_proto::{Notify, ReplyParser};
use smtp_server::filters::{
    Authenticator, DomainSet, HopLimit, LocalRecipients, NotifyPolicy, PasswordCheck, Received,
    RelayPolicy, SubmittedHeaders,
};
use smtp_server::{
    ClientName, DataRequest, Decision, Limits, ListenerMode, ServerConfig, Stages, StreamServer,
    filter, filter_async,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};

const LOCAL: &str = "local.test";
const STRANGER: &str = "198.51.100.7:40000";
const TRUSTED: &str = "192.0.2.9:40000";

/// What the last service of the chain received.
type Inbox = Arc<Mutex<Vec<DataRequest>>>;

fn sink(
    inbox: &Inbox,
) -> impl tower::Service<
    DataRequest,
    Response = Decision,
    Error = smtp_server::BoxError,
    Future = impl Send + 'static,
> + Clone
+ Send
+ Sync
+ 'static {
    let inbox = Arc::clone(inbox);
    tower::service_fn(move |req: DataRequest| {
        let inbox = Arc::clone(&inbox);
        async move {
            inbox.lock().unwrap().push(req);
            Ok::<_, smtp_server::BoxError>(Decision::accept())
        }
    })
}

/// The client end of an in-memory session.
struct Client<S> {
    stream: S,
    parser: ReplyParser,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    async fn reply(&mut self) -> String {
        let mut buf = [0u8; 4096];
        loop {
            if let Some(reply) = self.parser.next_reply() {
                let reply = reply.unwrap();
                return match reply.status() {
                    Some(s) => format!("{} {s}", reply.code()),
                    None => reply.code().to_string(),
                };
            }
            let n = tokio::time::timeout(Duration::from_secs(10), self.stream.read(&mut buf))
                .await
                .expect("a reply within 10 s")
                .unwrap();
            assert!(n > 0, "the server closed the session");
            self.parser.push(&buf[..n]);
        }
    }

    async fn cmd(&mut self, line: &str) -> String {
        self.stream
            .write_all(format!("{line}\r\n").as_bytes())
            .await
            .unwrap();
        self.reply().await
    }

    /// One transaction; the code of the reply at the end of data.
    async fn send(&mut self, from: &str, to: &str, message: &str) -> String {
        assert_eq!(self.cmd(&format!("MAIL FROM:<{from}>")).await, "250 2.1.0");
        assert_eq!(self.cmd(&format!("RCPT TO:<{to}>")).await, "250 2.1.5");
        assert_eq!(self.cmd("DATA").await, "354");
        self.cmd(&format!("{message}\r\n.")).await
    }
}

fn config(tls: Option<Arc<rustls::ServerConfig>>) -> ServerConfig {
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

/// A session from `peer` on a relay listener with `stages`, after EHLO.
async fn session(stages: Stages, peer: &str) -> Client<DuplexStream> {
    let server = StreamServer::new(config(None), ListenerMode::Relay, stages).unwrap();
    let (ours, theirs) = tokio::io::duplex(64 * 1024);
    let peer: SocketAddr = peer.parse().unwrap();
    tokio::spawn(async move {
        server
            .serve(theirs, peer, "192.0.2.25:25".parse().unwrap())
            .await
    });
    let mut client = Client {
        stream: ours,
        parser: ReplyParser::default(),
    };
    assert_eq!(client.reply().await, "220");
    assert_eq!(client.cmd("EHLO client.test").await, "250");
    client
}

/// The standard relay policy for `local.test`, trusting 192.0.2.0/24.
fn relay_policy(stages: Stages) -> Stages {
    let trusted = vec!["192.0.2.0/24".parse().unwrap()];
    stages.relay_policy(filter(RelayPolicy::new(DomainSet::new([LOCAL]), trusted)))
}

fn inbox() -> Inbox {
    Arc::default()
}

#[tokio::test]
async fn relay_policy_refuses_strangers_elsewhere_only() {
    let inbox = inbox();
    let stages = || relay_policy(Stages::new(sink(&inbox)));
    let mut stranger = session(stages(), STRANGER).await;
    assert_eq!(
        stranger.cmd("MAIL FROM:<a@elsewhere.test>").await,
        "250 2.1.0"
    );
    assert_eq!(stranger.cmd("RCPT TO:<b@remote.test>").await, "554 5.7.1");
    assert_eq!(stranger.cmd("RCPT TO:<b@[192.0.2.25]>").await, "554 5.7.1");
    assert_eq!(stranger.cmd("RCPT TO:<b@local.test>").await, "250 2.1.5");
    assert_eq!(stranger.cmd("RCPT TO:<Postmaster>").await, "250 2.1.5");
    let mut trusted = session(stages(), TRUSTED).await;
    assert_eq!(trusted.cmd("MAIL FROM:<a@local.test>").await, "250 2.1.0");
    assert_eq!(trusted.cmd("RCPT TO:<b@remote.test>").await, "250 2.1.5");
}

#[tokio::test]
async fn local_recipients_refuses_unknown_users_of_local_domains() {
    let inbox = inbox();
    let known = LocalRecipients::new(DomainSet::new([LOCAL]), ["alice@local.test"]);
    let stages = relay_policy(Stages::new(sink(&inbox)).rcpt_layer(filter(known)));
    let mut c = session(stages, TRUSTED).await;
    assert_eq!(c.cmd("MAIL FROM:<a@elsewhere.test>").await, "250 2.1.0");
    assert_eq!(c.cmd("RCPT TO:<nobody@local.test>").await, "550 5.1.1");
    assert_eq!(c.cmd("RCPT TO:<Alice@LOCAL.test>").await, "250 2.1.5");
    assert_eq!(c.cmd("RCPT TO:<postmaster@local.test>").await, "250 2.1.5");
    assert_eq!(c.cmd("RCPT TO:<anyone@remote.test>").await, "250 2.1.5");
}

#[tokio::test]
async fn hop_limit_refuses_loops() {
    let inbox = inbox();
    let stages = relay_policy(Stages::new(sink(&inbox)).data_layer(filter(HopLimit::new(2))));
    let mut c = session(stages, STRANGER).await;
    let two = "Received: a\r\nReceived: b\r\nSubject: x\r\n\r\nbody";
    let three = "Received: a\r\nReceived: b\r\nReceived: c\r\nSubject: x\r\n\r\nbody";
    assert_eq!(c.send("a@x.test", "b@local.test", three).await, "554 5.4.6");
    assert_eq!(c.send("a@x.test", "b@local.test", two).await, "250 2.0.0");
    assert_eq!(inbox.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn received_names_the_client_and_us() {
    let inbox = inbox();
    let stages =
        relay_policy(Stages::new(sink(&inbox)).data_layer(filter(Received::new("mx.local.test"))));
    let mut c = session(stages, STRANGER).await;
    assert_eq!(
        c.send("a@x.test", "b@local.test", "Subject: x\r\n\r\nhi")
            .await,
        "250 2.0.0"
    );
    let stored = String::from_utf8(inbox.lock().unwrap()[0].message()).unwrap();
    assert!(
        stored.starts_with("Received: from client.test ([198.51.100.7])\r\n\tby mx.local.test (mta) with ESMTP\r\n\tfor <b@local.test>;"),
        "{stored}"
    );
    assert!(stored.ends_with("\r\nSubject: x\r\n\r\nhi\r\n"), "{stored}");
}

#[tokio::test]
async fn received_names_the_client_as_reverse_dns_found_it() {
    for (confirmed, shown) in [
        (true, "mail.example.net [198.51.100.7]"),
        (false, "unknown [198.51.100.7]"),
    ] {
        let inbox = inbox();
        let stages = relay_policy(
            Stages::new(sink(&inbox))
                .data_layer(filter(Received::new("mx.local.test")))
                .connect_filter(move |req| {
                    let name = Some("mail.example.net".to_owned());
                    req.session
                        .connection
                        .insert(ClientName { name, confirmed });
                    None
                }),
        );
        let mut c = session(stages, STRANGER).await;
        assert_eq!(
            c.send("a@x.test", "b@local.test", "Subject: x\r\n\r\nhi")
                .await,
            "250 2.0.0"
        );
        let stored = String::from_utf8(inbox.lock().unwrap()[0].message()).unwrap();
        assert!(
            stored.starts_with(&format!("Received: from client.test ({shown})\r\n")),
            "{stored}"
        );
    }
}

#[tokio::test]
async fn notify_policy_keeps_success_notices_for_trusted_clients_only() {
    for (peer, kept) in [(STRANGER, false), (TRUSTED, true)] {
        let inbox = inbox();
        let stages = relay_policy(
            Stages::new(sink(&inbox)).data_layer(filter(NotifyPolicy::new(vec![
                "192.0.2.0/24".parse().unwrap(),
            ]))),
        );
        let mut c = session(stages, peer).await;
        assert_eq!(c.cmd("MAIL FROM:<a@x.test>").await, "250 2.1.0");
        assert_eq!(
            c.cmd("RCPT TO:<b@local.test> NOTIFY=SUCCESS,FAILURE").await,
            "250 2.1.5"
        );
        assert_eq!(c.cmd("DATA").await, "354");
        assert_eq!(c.cmd("Subject: x\r\n\r\nhi\r\n.").await, "250 2.0.0");
        let notify = inbox.lock().unwrap()[0].envelope.recipients[0]
            .params
            .notify
            .unwrap();
        assert!(notify.contains(Notify::FAILURE), "{peer}");
        assert_eq!(notify.contains(Notify::SUCCESS), kept, "{peer}");
    }
}

struct Alice;
impl Authenticator for Alice {
    fn verify(&self, username: &str, password: &str) -> bool {
        username == "alice" && password == "secret"
    }
}

/// A submission session after STARTTLS and EHLO (an rcgen certificate for localhost).
async fn tls_session(stages: Stages) -> Client<tokio_rustls::client::TlsStream<DuplexStream>> {
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let der = made.cert.der().clone();
    let key = rustls_pki_types::PrivateKeyDer::Pkcs8(made.signing_key.serialize_der().into());
    let server_tls = smtp_server::tls::from_der(vec![der.clone()], key).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let client_tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let server =
        StreamServer::new(config(Some(server_tls)), ListenerMode::Submission, stages).unwrap();
    let (ours, theirs) = tokio::io::duplex(64 * 1024);
    let peer: SocketAddr = STRANGER.parse().unwrap();
    tokio::spawn(async move {
        server
            .serve(theirs, peer, "192.0.2.25:587".parse().unwrap())
            .await
    });
    let mut plain = Client {
        stream: ours,
        parser: ReplyParser::default(),
    };
    assert_eq!(plain.reply().await, "220");
    assert_eq!(plain.cmd("EHLO client.test").await, "250");
    assert_eq!(plain.cmd("STARTTLS").await, "220 2.0.0");
    let name = ServerName::try_from("localhost").unwrap();
    let stream = tokio_rustls::TlsConnector::from(Arc::new(client_tls))
        .connect(name, plain.stream)
        .await
        .unwrap();
    let mut c = Client {
        stream,
        parser: ReplyParser::default(),
    };
    assert_eq!(c.cmd("EHLO client.test").await, "250");
    c
}

/// `AUTH PLAIN` for alice with the right password, and with a wrong one.
const RIGHT: &str = "AUTH PLAIN AGFsaWNlAHNlY3JldA==";
const WRONG: &str = "AUTH PLAIN AGFsaWNlAGd1ZXNz";

#[tokio::test]
async fn password_check_logs_in_right_passwords_only() {
    let inbox = inbox();
    let stages = || Stages::new(sink(&inbox)).auth_layer(filter_async(PasswordCheck::new(Alice)));
    let mut wrong = tls_session(stages()).await;
    assert_eq!(wrong.cmd(WRONG).await, "535 5.7.8");
    assert_eq!(wrong.cmd("MAIL FROM:<alice@local.test>").await, "530 5.7.0");
    let mut right = tls_session(stages()).await;
    assert_eq!(right.cmd(RIGHT).await, "235 2.7.0");
    assert_eq!(right.cmd("MAIL FROM:<alice@local.test>").await, "250 2.1.0");
}

#[tokio::test]
async fn submitted_headers_are_added_for_logins_only() {
    let inbox = inbox();
    let stages = relay_policy(
        Stages::new(sink(&inbox))
            .data_layer(filter(SubmittedHeaders::new("mx.local.test")))
            .auth_layer(filter_async(PasswordCheck::new(Alice))),
    );
    let mut login = tls_session(stages.clone()).await;
    assert_eq!(login.cmd(RIGHT).await, "235 2.7.0");
    assert_eq!(
        login
            .send("alice@local.test", "b@remote.test", "Subject: x\r\n\r\nhi")
            .await,
        "250 2.0.0"
    );
    let mut stranger = session(stages, STRANGER).await;
    assert_eq!(
        stranger
            .send("a@x.test", "b@local.test", "Subject: y\r\n\r\nhi")
            .await,
        "250 2.0.0"
    );
    let inbox = inbox.lock().unwrap();
    let submitted = String::from_utf8(inbox[0].message()).unwrap();
    assert!(submitted.starts_with("Date: "), "{submitted}");
    assert!(
        submitted.contains("\r\nMessage-ID: <") && submitted.contains("@mx.local.test>\r\n"),
        "{submitted}"
    );
    let relayed = String::from_utf8(inbox[1].message()).unwrap();
    assert_eq!(relayed, "Subject: y\r\n\r\nhi\r\n");
}
