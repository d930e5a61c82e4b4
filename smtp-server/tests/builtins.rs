//! Each built-in filter's accept and refuse paths, over in-memory sessions: the server
//! runs on one end of a tokio duplex stream ([`StreamServer`]), the test speaks SMTP on
//! the other, with STARTTLS (an rcgen certificate) where a login is needed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use smtp_proto::Notify;
use smtp_server::filters::{
    DomainSet, HopLimit, LocalRecipients, NotifyPolicy, PasswordCheck, Received, RelayPolicy,
    SubmittedHeaders,
};
use smtp_server::{
    ClientName, DataRequest, ListenerMode, Stages, StreamServer, filter, filter_async,
};
use support::{Alice, Client, RIGHT, TlsServer, WRONG, sink};
use tokio::io::DuplexStream;
use tokio_rustls::client::TlsStream;

const LOCAL: &str = "local.test";
const STRANGER: &str = "198.51.100.7:40000";
const TRUSTED: &str = "192.0.2.9:40000";

/// What the last service of the chain received.
type Inbox = support::Kept<DataRequest>;

/// A session from `peer` on a relay listener with `stages`, after EHLO.
async fn session(stages: Stages, peer: &str) -> Client<DuplexStream> {
    let server = StreamServer::new(support::config(None), ListenerMode::Relay, stages).unwrap();
    support::session(&server, peer).await
}

/// The standard relay policy for `local.test`, trusting 192.0.2.0/24.
fn relay_policy(stages: Stages) -> Stages {
    let trusted = vec!["192.0.2.0/24".parse().unwrap()];
    stages.relay_policy(filter(RelayPolicy::new(DomainSet::new([LOCAL]), trusted)))
}

fn inbox() -> Inbox {
    Inbox::default()
}

#[tokio::test]
async fn relay_policy_refuses_strangers_elsewhere_only() {
    let inbox = inbox();
    let stages = || relay_policy(Stages::new(sink(&inbox, |req| req)));
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
    let stages = relay_policy(Stages::new(sink(&inbox, |req| req)).rcpt_layer(filter(known)));
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
    let stages =
        relay_policy(Stages::new(sink(&inbox, |req| req)).data_layer(filter(HopLimit::new(2))));
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
    let stages = relay_policy(
        Stages::new(sink(&inbox, |req| req)).data_layer(filter(Received::new("mx.local.test"))),
    );
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
            Stages::new(sink(&inbox, |req| req))
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
        let stages = relay_policy(Stages::new(sink(&inbox, |req| req)).data_layer(filter(
            NotifyPolicy::new(vec!["192.0.2.0/24".parse().unwrap()]),
        )));
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

/// A submission session after STARTTLS and EHLO (an rcgen certificate for localhost).
async fn tls_session(stages: Stages) -> Client<TlsStream<DuplexStream>> {
    let tls = TlsServer::submission(stages);
    let plain = support::session_to(&tls.server, STRANGER, "192.0.2.25:587").await;
    support::starttls(plain, &tls.client).await
}

#[tokio::test]
async fn password_check_logs_in_right_passwords_only() {
    let inbox = inbox();
    let stages =
        || Stages::new(sink(&inbox, |req| req)).auth_layer(filter_async(PasswordCheck::new(Alice)));
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
        Stages::new(sink(&inbox, |req| req))
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
