//! Sessions the server closes for time, as a client and the metrics see them: the
//! command timeout and the session's time limit (`Limits::max_session_duration`), each
//! answered `421 4.4.2` and counted by reason.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;

use smtp_client::testing::code_of;
use smtp_server::filters::{DomainSet, RelayPolicy};
use smtp_server::{ListenerMode, Stages, StreamServer, filter};
use support::{session, sink};

type Inbox = support::Kept<smtp_server::DataRequest>;

fn start(command_timeout: Duration, max_session_duration: Duration) -> StreamServer {
    let mut config = support::config(None);
    config.limits.command_timeout = command_timeout;
    config.limits.max_session_duration = max_session_duration;
    let inbox = Inbox::default();
    let policy = RelayPolicy::new(DomainSet::new(["local.test"]), Vec::new());
    let stages = Stages::new(sink(&inbox, |r| r)).relay_policy(filter(policy));
    StreamServer::new(config, ListenerMode::Relay, stages).unwrap()
}

#[tokio::test]
async fn sessions_cut_for_time_are_answered_and_counted_by_reason() {
    // The session's time limit, long before the command timeout; a client that keeps
    // sending commands is let go too.
    let server = start(Duration::from_secs(30), Duration::from_secs(1));
    let mut idle = session(&server, "192.0.2.1:4000").await;
    let started = Instant::now();
    assert_eq!(code_of(&idle.reply().await), "421 4.4.2");
    assert!(started.elapsed() < Duration::from_secs(5));
    let mut busy = session(&server, "192.0.2.2:4000").await;
    let reply = loop {
        // The 421 may come while the client waits: its next command finds the
        // session closed, and the 421 is the next reply.
        let _ = busy.stream.write_all(b"EHLO client.test\r\n").await;
        let reply = busy.reply().await;
        if reply.code().as_u16() != 250 {
            break reply;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "never let go");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(code_of(&reply), "421 4.4.2", "{reply}");
    let stats = server.stats();
    let relay = stats.mode(ListenerMode::Relay);
    assert_eq!(relay.session_time_limit.load(Ordering::Relaxed), 2);
    assert_eq!(relay.timed_out.load(Ordering::Relaxed), 0);

    // The command timeout, with no session limit.
    let server = start(Duration::from_secs(1), Duration::ZERO);
    let mut slow = session(&server, "192.0.2.3:4000").await;
    assert_eq!(code_of(&slow.reply().await), "421 4.4.2");
    let stats = server.stats();
    let relay = stats.mode(ListenerMode::Relay);
    assert_eq!(relay.timed_out.load(Ordering::Relaxed), 1);
    assert_eq!(relay.session_time_limit.load(Ordering::Relaxed), 0);
}
