//! Policy delegation against Debian's postgrey (a greylisting policy server nobody here
//! wrote), started by each test in the foreground on a port of its own, and against
//! small scripted servers for what postgrey does not do: refuse, fail, hang.
//!
//! postgrey comes from `.ci/deps/policy.sh`; without it the postgrey tests skip with a
//! message, except under `CI=true`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod support;

use smtp_client::testing::daemons::{free_address, postgrey};
use std::net::SocketAddr;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use smtp_client::testing::{RawClient, code_of};
use smtp_server::Stages;
use smtp_server::filters::policy::{DefaultAction, PolicyCheck, PolicyService};
use support::{relay_for_loopback, sink};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

type Messages = support::Kept<Vec<u8>>;

/// A server on a relay listener (relaying for loopback) with the policy check of
/// `settings`, storing messages in `messages`.
async fn start(settings: PolicyService, messages: Messages) -> SocketAddr {
    let sink = sink(&messages, |req| req.message());
    let stages = relay_for_loopback(PolicyCheck::new(settings).add_to(Stages::new(sink)));
    support::start_detached(support::relay_config("policy.test"), stages).await
}

fn settings(address: SocketAddr, default_action: DefaultAction) -> PolicyService {
    PolicyService {
        address: format!("inet:{address}").parse().unwrap(),
        timeout: Duration::from_secs(2),
        default_action,
        ..PolicyService::default()
    }
}

/// One transaction: EHLO, MAIL, the RCPTs; the replies' `code status` and texts.
async fn rcpts(client: &mut RawClient, to: &[&str]) -> Vec<(String, String)> {
    assert_eq!(
        client.code("MAIL FROM:<sender@example.org>").await,
        "250 2.1.0"
    );
    let mut out = Vec::new();
    for rcpt in to {
        let reply = client.cmd(&format!("RCPT TO:<{rcpt}>")).await;
        out.push((code_of(&reply), reply.text().to_owned()));
    }
    out
}

#[tokio::test]
async fn postgrey_greylists_then_accepts_and_prepends_its_header() {
    let Some(postgrey) = postgrey(2) else {
        return;
    };
    let messages = Messages::default();
    let server = start(
        settings(postgrey.address, DefaultAction::Tempfail),
        Arc::clone(&messages),
    )
    .await;

    // First attempt: greylisted, with postgrey's text and status (4.2.0: it sees the
    // etrn_domain attribute a Postfix >= 2.3 sends).
    let mut c = RawClient::connect(server).await;
    assert_eq!(c.cmd("EHLO client.test").await.code().as_u16(), 250);
    let first = rcpts(&mut c, &["rcpt@example.net"]).await;
    assert_eq!(first[0].0, "450 4.2.0", "{first:?}");
    assert!(first[0].1.starts_with("Greylisted, see "), "{first:?}");
    c.cmd("QUIT").await;

    // Before the delay: still greylisted.
    let mut c = RawClient::connect(server).await;
    c.cmd("EHLO client.test").await;
    let early = rcpts(&mut c, &["rcpt@example.net"]).await;
    assert_eq!(early[0].0, "450 4.2.0", "{early:?}");
    c.cmd("QUIT").await;

    // After it: the same triplet passes, a new one (same connection to postgrey) does
    // not, and the message carries postgrey's X-Greylist header.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut c = RawClient::connect(server).await;
    c.cmd("EHLO client.test").await;
    let retry = rcpts(&mut c, &["rcpt@example.net", "other@example.net"]).await;
    assert_eq!(retry[0].0, "250 2.1.5", "{retry:?}");
    assert_eq!(retry[1].0, "450 4.2.0", "{retry:?}");
    assert_eq!(c.code("DATA").await, "354");
    assert_eq!(c.code("Subject: hello\r\n\r\nbody\r\n.").await, "250 2.0.0");
    c.cmd("QUIT").await;

    let stored = messages.lock().unwrap();
    let message = String::from_utf8_lossy(&stored[0]);
    assert!(
        message.starts_with("X-Greylist: delayed ")
            && message.contains("by postgrey-")
            && message.contains("at greylist.test;"),
        "{message}"
    );
    assert!(
        message.ends_with("Subject: hello\r\n\r\nbody\r\n"),
        "{message}"
    );
}

#[tokio::test]
async fn a_dead_service_gets_the_default_action() {
    let dead: SocketAddr = free_address();
    for (action, want) in [
        (DefaultAction::Tempfail, "451 4.3.0"),
        (DefaultAction::Accept, "250 2.1.5"),
    ] {
        let server = start(settings(dead, action), Messages::default()).await;
        let mut c = RawClient::connect(server).await;
        c.cmd("EHLO client.test").await;
        let got = rcpts(&mut c, &["rcpt@example.net"]).await;
        assert_eq!(got[0].0, want, "{action:?}: {got:?}");
    }
}

/// A scripted policy server: answers each query with the next of `answers` (or never,
/// for `None`), and records the queries and how many connections it took.
struct Script {
    address: SocketAddr,
    queries: Arc<Mutex<Vec<String>>>,
    connections: Arc<Mutex<usize>>,
}

impl Script {
    async fn start(answers: Vec<Option<&'static str>>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let queries = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(Mutex::new(0));
        let answers = Arc::new(Mutex::new(answers.into_iter()));
        let (q, n) = (Arc::clone(&queries), Arc::clone(&connections));
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                *n.lock().unwrap() += 1;
                let (q, answers) = (Arc::clone(&q), Arc::clone(&answers));
                tokio::spawn(async move {
                    let mut stream = BufReader::new(stream);
                    loop {
                        let mut query = String::new();
                        loop {
                            let mut line = String::new();
                            if stream.read_line(&mut line).await.unwrap_or(0) == 0 {
                                return;
                            }
                            if line == "\n" {
                                break;
                            }
                            query.push_str(&line);
                        }
                        q.lock().unwrap().push(query);
                        let answer = answers.lock().unwrap().next().flatten();
                        match answer {
                            Some(answer) => {
                                stream.get_mut().write_all(answer.as_bytes()).await.unwrap();
                            }
                            // Never answer (hold the connection open).
                            None => std::future::pending::<()>().await,
                        }
                    }
                });
            }
        });
        Self {
            address,
            queries,
            connections,
        }
    }
}

#[tokio::test]
async fn queries_carry_postfix_attributes_and_answers_map_to_replies() {
    let script = Script::start(vec![
        Some("action=DUNNO\n\n"),
        Some("action=PREPEND X-Policy: seen\n\n"),
        Some("action=REJECT go away\n\n"),
        Some("action=452 4.5.3 too many\n\n"),
        Some("action=HOLD\n\n"),
        Some("garbage\n\n"),
    ])
    .await;
    let messages = Messages::default();
    let server = start(
        settings(script.address, DefaultAction::Tempfail),
        Arc::clone(&messages),
    )
    .await;
    let mut c = RawClient::connect(server).await;
    c.cmd("EHLO client.test").await;
    let got = rcpts(
        &mut c,
        &[
            "a@example.net",
            "b@example.net",
            "c@example.net",
            "d@example.net",
            "e@example.net",
            "f@example.net",
        ],
    )
    .await;
    let codes: Vec<&str> = got.iter().map(|(code, _)| code.as_str()).collect();
    assert_eq!(
        codes,
        [
            "250 2.1.5",
            "250 2.1.5",
            "554 5.7.1",
            "452 4.5.3",
            "451 4.3.0",
            "451 4.3.0"
        ]
    );
    assert_eq!(got[2].1, "go away");
    assert_eq!(c.code("DATA").await, "354");
    assert_eq!(c.code("Subject: s\r\n\r\nbody\r\n.").await, "250 2.0.0");

    let stored = messages.lock().unwrap();
    assert!(stored[0].starts_with(b"X-Policy: seen\r\nSubject: s\r\n"));
    assert_eq!(
        *script.connections.lock().unwrap(),
        1,
        "one connection per session"
    );
    let queries = script.queries.lock().unwrap();
    let attr = |query: &str, name: &str| {
        query
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .map(str::to_owned)
    };
    let first = &queries[0];
    for (name, value) in [
        ("request", "smtpd_access_policy"),
        ("protocol_state", "RCPT"),
        ("protocol_name", "ESMTP"),
        ("helo_name", "client.test"),
        ("sender", "sender@example.org"),
        ("recipient", "a@example.net"),
        ("recipient_count", "0"),
        ("client_address", "127.0.0.1"),
        ("client_name", "unknown"),
        ("server_address", "127.0.0.1"),
    ] {
        assert_eq!(
            attr(first, name).as_deref(),
            Some(value),
            "{name} in {first}"
        );
    }
    assert_eq!(attr(&queries[1], "recipient_count").as_deref(), Some("1"));
    assert!(
        queries
            .iter()
            .all(|q| attr(q, "instance") == attr(first, "instance"))
    );
    assert!(!attr(first, "instance").unwrap().is_empty());
}

#[tokio::test]
async fn a_silent_service_is_bounded_by_the_timeout() {
    for (action, want) in [
        (DefaultAction::Tempfail, "451 4.3.0"),
        (DefaultAction::Accept, "250 2.1.5"),
    ] {
        let script = Script::start(vec![None]).await;
        let mut settings = settings(script.address, action);
        settings.timeout = Duration::from_millis(500);
        let server = start(settings, Messages::default()).await;
        let mut c = RawClient::connect(server).await;
        c.cmd("EHLO client.test").await;
        let started = Instant::now();
        let got = rcpts(&mut c, &["rcpt@example.net"]).await;
        let waited = started.elapsed();
        assert_eq!(got[0].0, want, "{action:?}");
        assert!(
            waited >= Duration::from_millis(400) && waited < Duration::from_secs(3),
            "{waited:?}"
        );
    }
}
