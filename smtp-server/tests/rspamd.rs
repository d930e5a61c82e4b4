//! The rspamd filter against Debian's rspamd (a spam filter nobody here wrote),
//! started by each test in the foreground on a minimal configuration of its own in a
//! temp dir (no Lua rules, no Redis, no DNS: only the core's GTUBE test patterns), and
//! against a dead port and a silent server for the failure paths.
//!
//! rspamd comes from `.ci/deps/rspamd.sh`; without it the rspamd tests skip with a
//! message, except under `CI=true`.

#![cfg(unix)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod support;

use smtp_client::testing::daemons::{free_address, rspamd};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use smtp_client::testing::{RawClient, code_of};
use smtp_server::filters::rspamd::{OnFailure, Rspamd, RspamdSettings};
use smtp_server::{Stages, filter_async};
use support::{relay_for_loopback, sink};

type Messages = support::Kept<Vec<u8>>;

/// GTUBE: rspamd's core answers `reject` for it.
const GTUBE: &str = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X";
/// rspamd's test pattern for `add header` (`enable_test_patterns`).
const GTUBE_ADD_HEADER: &str =
    "YJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X";
/// rspamd's test pattern for `rewrite subject`.
const GTUBE_REWRITE_SUBJECT: &str =
    "ZJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X";

/// A server on a relay listener (relaying for loopback) with the rspamd filter of
/// `settings`, storing messages in `messages`.
async fn start(settings: RspamdSettings, messages: Messages) -> SocketAddr {
    let sink = sink(&messages, |req| req.message());
    let stages =
        relay_for_loopback(Stages::new(sink).data_layer(filter_async(Rspamd::new(settings))));
    support::start_detached(support::relay_config("rspamd.test"), stages).await
}

fn settings(address: SocketAddr, on_failure: OnFailure) -> RspamdSettings {
    RspamdSettings {
        address: format!("http://{address}").parse().unwrap(),
        timeout: Duration::from_secs(10),
        on_failure,
        ..RspamdSettings::default()
    }
}

/// Sends one message; the reply to its end of DATA (`code status`) and its text.
async fn send(server: SocketAddr, message: &str) -> (String, String) {
    let mut c = RawClient::connect(server).await;
    assert_eq!(c.cmd("EHLO client.test").await.code().as_u16(), 250);
    assert_eq!(c.code("MAIL FROM:<sender@example.org>").await, "250 2.1.0");
    assert_eq!(c.code("RCPT TO:<rcpt@example.net>").await, "250 2.1.5");
    assert_eq!(c.code("DATA").await, "354");
    let reply = c.cmd(&format!("{message}.")).await;
    c.cmd("QUIT").await;
    (code_of(&reply), reply.text().to_owned())
}

#[tokio::test]
async fn gtube_is_refused_and_clean_mail_is_stored_with_its_score() {
    let Some(rspamd) = rspamd() else {
        return;
    };
    let messages = Messages::default();
    let server = start(
        settings(rspamd.address, OnFailure::Tempfail),
        Arc::clone(&messages),
    )
    .await;

    let gtube = format!("Subject: spam\r\n\r\n{GTUBE}\r\n");
    let (code, text) = send(server, &gtube).await;
    assert_eq!(code, "554 5.7.1");
    assert_eq!(text, "Gtube pattern");
    assert!(messages.lock().unwrap().is_empty());

    // A clean message, with verdict headers of its own that must not survive.
    let clean = "X-Spam-Status: No, score=-100.00 required=15.00\r\nX-Spam: No\r\n\
                 From: <sender@example.org>\r\nSubject: hello\r\n\r\nJust a note.\r\n";
    assert_eq!(send(server, clean).await.0, "250 2.0.0");
    let stored = String::from_utf8(messages.lock().unwrap()[0].clone()).unwrap();
    let (header, body) = stored.split_once("\r\n\r\n").unwrap();
    let lines: Vec<&str> = header.lines().collect();
    assert!(
        lines[0].starts_with("X-Spam-Status: No, score=") && lines[0].ends_with(" required=15.00"),
        "{stored}"
    );
    assert!(lines[1].starts_with("X-Spam-Score: "), "{stored}");
    assert_eq!(
        lines[2..],
        ["From: <sender@example.org>", "Subject: hello"],
        "{stored}"
    );
    assert_eq!(body, "Just a note.\r\n");
}

#[tokio::test]
async fn add_header_and_rewrite_subject_mark_the_message() {
    let Some(rspamd) = rspamd() else {
        return;
    };
    let messages = Messages::default();
    let server = start(
        settings(rspamd.address, OnFailure::Tempfail),
        Arc::clone(&messages),
    )
    .await;

    let add = format!("Subject: maybe\r\n\r\n{GTUBE_ADD_HEADER}\r\n");
    assert_eq!(send(server, &add).await.0, "250 2.0.0");
    let rewrite =
        format!("Subject: maybe\r\nTo: <rcpt@example.net>\r\n\r\n{GTUBE_REWRITE_SUBJECT}\r\n");
    assert_eq!(send(server, &rewrite).await.0, "250 2.0.0");

    let stored = messages.lock().unwrap();
    let added = String::from_utf8_lossy(&stored[0]);
    assert!(
        added.starts_with("X-Spam-Status: Yes, score=6.00 required=15.00\r\nX-Spam-Score: 6.00\r\nX-Spam: Yes\r\nSubject: maybe\r\n"),
        "{added}"
    );
    let rewritten = String::from_utf8_lossy(&stored[1]);
    assert!(
        rewritten.starts_with("X-Spam-Status: Yes, score="),
        "{rewritten}"
    );
    assert!(rewritten.contains("\r\nX-Spam: Yes\r\n"), "{rewritten}");
    assert!(
        rewritten.contains("\r\nSubject: *** SPAM *** maybe\r\nTo: <rcpt@example.net>\r\n"),
        "{rewritten}"
    );
    assert_eq!(rewritten.matches("Subject:").count(), 1, "{rewritten}");
}

#[tokio::test]
async fn larger_messages_are_not_scanned() {
    let Some(rspamd) = rspamd() else {
        return;
    };
    let messages = Messages::default();
    let mut settings = settings(rspamd.address, OnFailure::Tempfail);
    settings.max_size = 40;
    let server = start(settings, Arc::clone(&messages)).await;
    let gtube = format!("Subject: big\r\n\r\n{GTUBE}\r\n");
    assert_eq!(send(server, &gtube).await.0, "250 2.0.0");
    assert!(messages.lock().unwrap()[0].starts_with(b"Subject: big\r\n"));
}

#[tokio::test]
async fn rspamd_down_gets_the_failure_action() {
    let dead: SocketAddr = free_address();
    let message = "X-Spam: Yes\r\nSubject: s\r\n\r\nbody\r\n";
    let messages = Messages::default();
    let tempfail = start(settings(dead, OnFailure::Tempfail), Arc::clone(&messages)).await;
    assert_eq!(send(tempfail, message).await.0, "451 4.7.1");
    let accept = start(settings(dead, OnFailure::Accept), Arc::clone(&messages)).await;
    assert_eq!(send(accept, message).await.0, "250 2.0.0");
    let stored = messages.lock().unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(
        stored[0], b"Subject: s\r\n\r\nbody\r\n",
        "unscanned, and no verdict of its own"
    );
}

#[tokio::test]
async fn a_silent_rspamd_is_bounded_by_the_timeout() {
    // Accepts connections and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    for (on_failure, want) in [
        (OnFailure::Tempfail, "451 4.7.1"),
        (OnFailure::Accept, "250 2.0.0"),
    ] {
        let mut settings = settings(address, on_failure);
        settings.timeout = Duration::from_millis(500);
        let server = start(settings, Messages::default()).await;
        let started = Instant::now();
        let (code, _) = send(server, "Subject: s\r\n\r\nbody\r\n").await;
        let waited = started.elapsed();
        assert_eq!(code, want, "{on_failure:?}");
        assert!(
            waited >= Duration::from_millis(400) && waited < Duration::from_secs(5),
            "{waited:?}"
        );
    }
}
