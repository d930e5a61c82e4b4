//! Message content that outgrows memory: spilled to a file as it arrives and mapped for
//! the data stage, or, with nowhere to spill, refused with `452 4.3.1` rather than held.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;

use smtp_client::testing::{RawClient, code_of};
use smtp_server::filter;
use smtp_server::filters::{DomainSet, RelayPolicy};
use smtp_server::{Limits, ServerConfig, SpillConfig, Stages};

/// What the data stage saw of each message: its bytes, and whether they were spilled.
type Seen = support::Kept<(Vec<u8>, bool)>;

async fn start(limits: Limits, spill: Option<SpillConfig>) -> (SocketAddr, Seen) {
    let seen = Seen::default();
    let sink = support::sink(&seen, |req| {
        let spilled = req.body.spilled().is_some();
        (req.body.to_vec(), spilled)
    });
    let config = ServerConfig {
        limits,
        spill,
        ..support::relay_config("content.test")
    };
    let policy = filter(RelayPolicy::new(DomainSet::new(["d.test"]), Vec::new()));
    let stages = Stages::new(sink).relay_policy(policy);
    let addr = support::start_detached(config, stages).await;
    (addr, seen)
}

/// One message of `body` (CRLF lines, no line starting with a dot) with DATA; the
/// reply to the final dot as `"code status"`.
async fn send(addr: SocketAddr, body: &[u8]) -> String {
    send_all(addr, &[body]).await.remove(0)
}

/// Each of `bodies` in turn on one connection; the replies to their final dots.
async fn send_all(addr: SocketAddr, bodies: &[&[u8]]) -> Vec<String> {
    let mut c = RawClient::connect(addr).await;
    c.send(b"EHLO c.test\r\n").await;
    for body in bodies {
        c.send(b"MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nDATA\r\n")
            .await;
        c.send(body).await;
        c.send(b".\r\n").await;
    }
    c.send(b"QUIT\r\n").await;
    // EHLO, then MAIL, RCPT, DATA and the final dot of each, then QUIT.
    let replies = c.replies(2 + 4 * bodies.len()).await;
    (0..bodies.len())
        .map(|i| replies.get(4 + 4 * i).map(code_of).unwrap_or_default())
        .collect()
}

fn message(size: usize) -> Vec<u8> {
    let mut body = b"Subject: big\r\n\r\n".to_vec();
    let mut n = 0u64;
    while body.len() < size {
        body.extend_from_slice(format!("line {n:08} {}\r\n", "x".repeat(60)).as_bytes());
        n += 1;
    }
    body
}

#[tokio::test]
async fn content_beyond_its_memory_share_is_spilled_and_mapped() {
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits {
        max_message_memory: 64 * 1024,
        ..Limits::default()
    };
    let spill = SpillConfig {
        dir: dir.path().to_owned(),
        reserve: 4096,
    };
    let (addr, seen) = start(limits, Some(spill)).await;
    let (small, large) = (message(10_000), message(3_000_000));
    assert_eq!(send(addr, &small).await, "250 2.0.0");
    assert_eq!(send(addr, &large).await, "250 2.0.0");
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen[0], (small, false), "a small message stays in memory");
    assert!(seen[1].1, "the large one was spilled");
    assert!(seen[1].0 == large, "and arrives byte for byte");
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(
        left.is_empty(),
        "the spill file goes with its content: {left:?}"
    );
}

#[tokio::test]
async fn with_nowhere_to_spill_a_message_beyond_the_memory_budget_is_452() {
    let limits = Limits {
        max_total_message_memory: 20_000,
        ..Limits::default()
    };
    let (addr, seen) = start(limits, None).await;
    assert_eq!(send(addr, &message(100_000)).await, "452 4.3.1");
    assert_eq!(send(addr, &message(5_000)).await, "250 2.0.0");
    assert_eq!(seen.lock().unwrap().len(), 1);

    // A message the session refuses by itself while its content was being dropped:
    // the next one on the connection starts afresh.
    let limits = Limits {
        max_message_size: 50_000,
        max_total_message_memory: 20_000,
        ..Limits::default()
    };
    let (addr, _) = start(limits, None).await;
    let replies = send_all(addr, &[&message(100_000), &message(5_000)]).await;
    assert_eq!(replies, ["552 5.3.4", "250 2.0.0"]);
}
