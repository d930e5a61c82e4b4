//! Early-talker triage over real sockets: a client that talks before the greeting, or
//! pipelines where RFC 2920 forbids it, is refused `554 5.5.0` in enforce mode and let
//! go on in tag mode (counted either way); a good client waits for the greeting delay
//! once, then not again from the same address.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use smtp_client::testing::{RawClient, code_of};
use smtp_server::filters::{DomainSet, RelayPolicy};
use smtp_server::{
    BoxError, Decision, EarlyTalkers, FilterMode, ListenerMode, ServerConfig, ServerStats, Stages,
    filter,
};
use support::{Stop, load};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A relay server for `ours.test` with `triage`.
async fn start(triage: EarlyTalkers) -> (SocketAddr, Arc<ServerStats>, Stop) {
    let sink = tower::service_fn(|_| async { Ok::<_, BoxError>(Decision::accept()) });
    let policy = filter(RelayPolicy::new(DomainSet::new(["ours.test"]), vec![]));
    let config = ServerConfig {
        early_talkers: triage,
        ..support::relay_config("mx.ours.test")
    };
    let server = support::start(config, Stages::new(sink).relay_policy(policy)).await;
    (server.addr(), server.stats, server.stop)
}

fn triage(mode: FilterMode, delay_ms: u64) -> EarlyTalkers {
    EarlyTalkers {
        mode,
        greeting_delay: Duration::from_millis(delay_ms),
        ..EarlyTalkers::default()
    }
}

/// Connects, sends `input` at once (before any greeting), and returns every reply
/// line until the server closes (or 5 s pass).
async fn talk_first(addr: SocketAddr, input: &[u8]) -> Vec<String> {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(input).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Scenario `pipe-early-talker`, enforce mode with a greeting delay: the client's
/// commands before the greeting earn `554 5.5.0` and the connection closes, no
/// `250` at all; its next connection is refused at once (the verdict is kept).
#[tokio::test]
async fn early_talker_is_refused_in_enforce_mode() {
    let (addr, stats, _stop) = start(triage(FilterMode::Enforce, 500)).await;
    let lines = talk_first(addr, b"EHLO x\r\nMAIL FROM:<a@b>\r\n").await;
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].starts_with("554 5.5.0 mx.ours.test "), "{lines:?}");
    assert!(lines[0].contains("before the greeting"), "{lines:?}");
    let relay = stats.mode(ListenerMode::Relay);
    assert_eq!(load(&relay.pregreet_rejected), 1);

    // Failed lately: refused at once, even when it waits politely.
    let started = Instant::now();
    let lines = talk_first(addr, b"").await;
    assert!(lines[0].starts_with("554 5.5.0 "), "{lines:?}");
    assert!(
        started.elapsed() < Duration::from_millis(450),
        "no delay for a known early talker"
    );
    assert_eq!(load(&relay.pregreet_rejected), 2);
    assert_eq!(stats.early_talker_verdicts(), 1);
}

/// Tag mode: the same client is greeted and served, and counted.
#[tokio::test]
async fn early_talker_goes_on_in_tag_mode() {
    let (addr, stats, _stop) = start(triage(FilterMode::Tag, 300)).await;
    let lines = talk_first(addr, b"EHLO x\r\nMAIL FROM:<a@b.test>\r\nQUIT\r\n").await;
    let codes: Vec<&str> = lines
        .iter()
        .filter(|l| l.as_bytes().get(3) == Some(&b' '))
        .map(|l| &l[..3])
        .collect();
    assert_eq!(codes, ["220", "250", "250", "221"], "{lines:?}");
    let relay = stats.mode(ListenerMode::Relay);
    assert_eq!(load(&relay.pregreet_tagged), 1);
    assert_eq!(load(&relay.pregreet_rejected), 0);
    // Counted once, not again as a pipelining violation.
    assert_eq!(load(&relay.pipelining_tagged), 0);
}

/// Scenario `pipe-early-talker` with no greeting delay: whether the commands arrive
/// before the greeting or right after it, EHLO with MAIL behind it is refused
/// `554 5.5.0`, and MAIL gets no `250`.
#[tokio::test]
async fn early_talker_without_delay_is_refused_in_enforce_mode() {
    let (addr, stats, _stop) = start(triage(FilterMode::Enforce, 0)).await;
    let lines = talk_first(addr, b"EHLO x\r\nMAIL FROM:<a@b>\r\n").await;
    let last = lines.last().unwrap();
    assert!(last.starts_with("554 5.5.0 "), "{lines:?}");
    assert!(!lines.iter().any(|l| l.starts_with("250")), "{lines:?}");
    let relay = stats.mode(ListenerMode::Relay);
    assert_eq!(
        load(&relay.pregreet_rejected) + load(&relay.pipelining_rejected),
        1
    );
}

/// A good client waits for the greeting delay once; from the same address, the next
/// connection is greeted at once.
#[tokio::test]
async fn good_client_waits_once() {
    let (addr, stats, _stop) = start(triage(FilterMode::Enforce, 1000)).await;
    let started = Instant::now();
    let mut c = RawClient::connect(addr).await;
    let waited = started.elapsed();
    assert_eq!(code_of(&c.greeting), "220");
    assert!(
        waited >= Duration::from_millis(950),
        "greeted after {waited:?}"
    );
    assert_eq!(c.code("EHLO client.example").await, "250");
    assert_eq!(c.code("MAIL FROM:<a@client.example>").await, "250 2.1.0");
    assert_eq!(c.code("QUIT").await, "221 2.0.0");

    let started = Instant::now();
    let mut c = RawClient::connect(addr).await;
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "greeted after {:?} the second time",
        started.elapsed()
    );
    assert_eq!(c.code("EHLO client.example").await, "250");
    let relay = stats.mode(ListenerMode::Relay);
    assert_eq!(load(&relay.greeting_waited), 1);
    assert_eq!(load(&relay.greeting_cached), 1);
    assert_eq!(
        load(&relay.pregreet_rejected) + load(&relay.pregreet_tagged),
        0
    );
}

/// Scenario `pipe-not-advertised`: after HELO (no PIPELINING), MAIL and RCPT sent at
/// once are a synchronisation error, `554 5.5.0` and close in enforce mode.
#[tokio::test]
async fn pipelining_without_pipelining_is_refused_in_enforce_mode() {
    let (addr, stats, _stop) = start(triage(FilterMode::Enforce, 0)).await;
    let mut c = RawClient::connect(addr).await;
    assert_eq!(c.code("HELO client.example").await, "250");
    c.send(b"MAIL FROM:<a@client.example>\r\nRCPT TO:<ok@ours.test>\r\n")
        .await;
    let reply = c.reply().await;
    assert_eq!(code_of(&reply), "554 5.5.0", "{reply}");
    assert!(reply.to_string().contains("MAIL"), "{reply}");
    assert!(c.is_closed().await);
    let relay = stats.mode(ListenerMode::Relay);
    assert_eq!(load(&relay.pipelining_rejected), 1);
}

/// Tag mode: the same client gets its two replies; counted once.
#[tokio::test]
async fn pipelining_without_pipelining_goes_on_in_tag_mode() {
    let (addr, stats, _stop) = start(triage(FilterMode::Tag, 0)).await;
    let mut c = RawClient::connect(addr).await;
    assert_eq!(c.code("HELO client.example").await, "250");
    c.send(b"MAIL FROM:<a@client.example>\r\nRCPT TO:<ok@ours.test>\r\n")
        .await;
    assert_eq!(code_of(&c.reply().await), "250 2.1.0");
    assert_eq!(code_of(&c.reply().await), "250 2.1.5");
    let relay = stats.mode(ListenerMode::Relay);
    assert_eq!(load(&relay.pipelining_tagged), 1);
    assert_eq!(load(&relay.pipelining_rejected), 0);
}

/// Pipelining as RFC 2920 allows it (after EHLO, a group ending with DATA, content
/// after the 354) is never a violation, even in enforce mode.
#[tokio::test]
async fn lawful_pipelining_passes_in_enforce_mode() {
    let (addr, stats, _stop) = start(triage(FilterMode::Enforce, 0)).await;
    let mut c = RawClient::connect(addr).await;
    assert_eq!(c.code("EHLO client.example").await, "250");
    c.send(b"MAIL FROM:<a@client.example>\r\nRCPT TO:<ok@ours.test>\r\nRCPT TO:<two@ours.test>\r\nDATA\r\n")
        .await;
    let codes: Vec<String> = c.replies(4).await.iter().map(code_of).collect();
    assert_eq!(codes, ["250 2.1.0", "250 2.1.5", "250 2.1.5", "354"]);
    c.send(b"Subject: t\r\n\r\nbody\r\n.\r\nQUIT\r\n").await;
    let codes: Vec<String> = c.replies(2).await.iter().map(code_of).collect();
    assert_eq!(codes, ["250 2.0.0", "221 2.0.0"]);
    let relay = stats.mode(ListenerMode::Relay);
    assert_eq!(
        load(&relay.pipelining_rejected) + load(&relay.pipelining_tagged),
        0
    );
}

/// Off, or on a listener kind that is not triaged (submission): nothing is checked.
#[tokio::test]
async fn off_mode_checks_nothing() {
    let (addr, stats, _stop) = start(triage(FilterMode::Off, 500)).await;
    let started = Instant::now();
    let lines = talk_first(addr, b"EHLO x\r\nMAIL FROM:<a@b.test>\r\nQUIT\r\n").await;
    assert!(
        started.elapsed() < Duration::from_millis(450),
        "no delay when off"
    );
    assert!(lines.iter().any(|l| l.starts_with("221")), "{lines:?}");
    let relay = stats.mode(ListenerMode::Relay);
    assert_eq!(
        load(&relay.pregreet_tagged) + load(&relay.pipelining_tagged),
        0
    );

    let not_relay = EarlyTalkers {
        listeners: vec![ListenerMode::Submission],
        ..triage(FilterMode::Enforce, 500)
    };
    let (addr, _stats, _stop) = start(not_relay).await;
    let lines = talk_first(addr, b"EHLO x\r\nMAIL FROM:<a@b.test>\r\nQUIT\r\n").await;
    assert!(lines.iter().any(|l| l.starts_with("221")), "{lines:?}");
}
