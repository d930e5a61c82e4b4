//! Greylisting (`filters::greylist`) as a client sees it: in-memory sessions from chosen
//! addresses ([`StreamServer`] over a tokio duplex) with time moved by hand
//! ([`ManualClock`]), and one real wait of a second over a real socket. The state file
//! is checked across a restart (a new filter on the same file), when corrupt, and pruned.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use smtp_client::testing::{RawClient, code_of};
use smtp_proto::{Envelope, ForwardPath, Recipient, Reply, ReversePath};
use smtp_server::filters::greylist::{FilterMode, Greylist, GreylistSettings};
use smtp_server::filters::{DomainSet, LocalRecipients, RelayPolicy};
use smtp_server::{
    Content, DataRequest, ListenerMode, Notes, ServerConfig, SessionInfo, Stages, StreamServer,
    filter,
};
use support::{clock, load, session, sink};

const LOCAL: &str = "local.test";
const SENDER: &str = "198.51.100.7:40000";
const SAME_NETWORK: &str = "198.51.100.99:40000";
const ELSEWHERE: &str = "203.0.113.9:40000";
const TRUSTED: &str = "192.0.2.9:40000";
const MINUTE: Duration = Duration::from_secs(60);
const DAY: Duration = Duration::from_secs(86_400);

type Inbox = support::Kept<DataRequest>;

/// Relay policy for `local.test` trusting 192.0.2.0/24, alice and bob the local users
/// (unknown users refused before greylisting), greylisting.
fn stages(inbox: &Inbox, greylist: &Greylist) -> Stages {
    let known = LocalRecipients::new(
        DomainSet::new([LOCAL]),
        ["alice@local.test", "bob@local.test"],
    );
    let trusted = vec!["192.0.2.0/24".parse().unwrap()];
    Stages::new(sink(inbox, |req| req))
        .rcpt_layer(filter(greylist.clone()))
        .rcpt_layer(filter(known))
        .relay_policy(filter(RelayPolicy::new(DomainSet::new([LOCAL]), trusted)))
}

fn relay_server(inbox: &Inbox, greylist: &Greylist) -> StreamServer {
    StreamServer::new(
        ServerConfig {
            hostname: "mx.local.test".into(),
            ..ServerConfig::default()
        },
        ListenerMode::Relay,
        stages(inbox, greylist),
    )
    .unwrap()
}

fn settings() -> GreylistSettings {
    GreylistSettings {
        mode: FilterMode::Enforce,
        ..GreylistSettings::default()
    }
}

/// The reply to `RCPT TO:<to>` in a new transaction from `from`, on a new session from `peer`.
async fn attempt(server: &StreamServer, peer: &str, from: &str, to: &str) -> Reply {
    let mut c = session(server, peer).await;
    assert_eq!(c.cmd(&format!("MAIL FROM:<{from}>")).await, "250 2.1.0");
    c.full(&format!("RCPT TO:<{to}>")).await
}

/// A sender per `i`, without digits (greylisting counts runs of digits as one).
fn sender(i: u8) -> String {
    let letter = |n: u8| char::from(b'a' + n % 26);
    format!("s{}{}x@example.net", letter(i / 26), letter(i))
}

#[tokio::test]
async fn greylisted_sender_retrying_after_the_delay_gets_through() {
    let inbox = Inbox::default();
    let clock = clock();
    let greylist = Greylist::with_clock(settings(), Arc::new(clock.clone()));
    let server = relay_server(&inbox, &greylist);
    let first = attempt(&server, SENDER, "ann@example.net", "alice@local.test").await;
    assert_eq!(code_of(&first), "451 4.7.1");
    assert!(
        first
            .to_string()
            .contains("Greylisted: try again in 300 seconds"),
        "{first}"
    );
    // Too early: still deferred, with the time left.
    clock.advance(MINUTE);
    let early = attempt(&server, SENDER, "ann@example.net", "alice@local.test").await;
    assert_eq!(code_of(&early), "451 4.7.1");
    assert!(early.to_string().contains("in 240 seconds"), "{early}");
    // After the delay, from another host of the same /24: through, message and all.
    clock.advance(4 * MINUTE);
    let mut c = session(&server, SAME_NETWORK).await;
    assert_eq!(c.cmd("MAIL FROM:<ann@example.net>").await, "250 2.1.0");
    assert_eq!(c.cmd("RCPT TO:<Alice@local.test>").await, "250 2.1.5");
    assert_eq!(c.cmd("DATA").await, "354");
    assert_eq!(c.cmd("Subject: hi\r\n\r\nhello\r\n.").await, "250 2.0.0");
    assert_eq!(inbox.lock().unwrap().len(), 1);
    // Another sender, recipient or network is another triplet.
    for (peer, from, to) in [
        (SENDER, "other@example.net", "alice@local.test"),
        (SENDER, "ann@example.net", "bob@local.test"),
        (ELSEWHERE, "ann@example.net", "alice@local.test"),
    ] {
        let reply = attempt(&server, peer, from, to).await;
        assert_eq!(code_of(&reply), "451 4.7.1", "{peer} {from} {to}");
    }
    // Unknown users are refused before greylisting, and not remembered.
    let unknown = attempt(&server, SENDER, "ann@example.net", "nobody@local.test").await;
    assert_eq!(code_of(&unknown), "550 5.1.1");
    // The passed triplet stays known.
    clock.advance(20 * DAY);
    let known = attempt(&server, SENDER, "ann@example.net", "alice@local.test").await;
    assert_eq!(code_of(&known), "250 2.1.5");
    let stats = greylist.stats();
    assert_eq!(load(&stats.deferred), 5);
    assert_eq!(load(&stats.passed), 2);
    // The three pending triplets were pruned on the way (their retry window is over).
    assert_eq!(load(&stats.entries), 1);
}

#[tokio::test]
async fn a_retry_after_the_window_starts_over() {
    let inbox = Inbox::default();
    let clock = clock();
    let greylist = Greylist::with_clock(settings(), Arc::new(clock.clone()));
    let server = relay_server(&inbox, &greylist);
    let to = "alice@local.test";
    assert_eq!(
        code_of(&attempt(&server, SENDER, "a@example.net", to).await),
        "451 4.7.1"
    );
    clock.advance(3 * DAY);
    let late = attempt(&server, SENDER, "a@example.net", to).await;
    assert_eq!(code_of(&late), "451 4.7.1");
    assert!(late.to_string().contains("in 300 seconds"), "{late}");
    clock.advance(5 * MINUTE);
    assert_eq!(
        code_of(&attempt(&server, SENDER, "a@example.net", to).await),
        "250 2.1.5"
    );
}

#[tokio::test]
async fn a_network_is_allowlisted_after_passes_and_list_senders_are_one_triplet() {
    let inbox = Inbox::default();
    let clock = clock();
    let greylist = Greylist::with_clock(
        GreylistSettings {
            auto_allowlist_after: 2,
            ..settings()
        },
        Arc::new(clock.clone()),
    );
    let server = relay_server(&inbox, &greylist);
    // A list server's return path changes with every message (VERP): one triplet.
    let verp = |n: u32| format!("list-bounce-{n}-alice=local.test@lists.example.org");
    for to in ["alice@local.test", "bob@local.test"] {
        assert_eq!(
            code_of(&attempt(&server, SENDER, &verp(1), to).await),
            "451 4.7.1"
        );
    }
    clock.advance(6 * MINUTE);
    for to in ["alice@local.test", "bob@local.test"] {
        assert_eq!(
            code_of(&attempt(&server, SENDER, &verp(2), to).await),
            "250 2.1.5"
        );
    }
    // Two passes: the network is allowlisted; a new triplet from it goes through.
    let new = attempt(
        &server,
        SAME_NETWORK,
        "someone@else.example",
        "alice@local.test",
    )
    .await;
    assert_eq!(code_of(&new), "250 2.1.5");
    let stats = greylist.stats();
    assert_eq!(load(&stats.auto_allowlisted), 1);
    assert_eq!(load(&stats.allowlisted), 1);
    assert_eq!(greylist.clients(), 1);
}

#[tokio::test]
async fn logins_trusted_and_allowlisted_clients_are_not_greylisted() {
    let inbox = Inbox::default();
    let greylist = Greylist::with_clock(
        GreylistSettings {
            allowlist: vec!["203.0.113.0/24".parse().unwrap()],
            trusted_networks: vec!["192.0.2.0/24".parse().unwrap()],
            ..settings()
        },
        Arc::new(clock()),
    );
    let server = relay_server(&inbox, &greylist);
    for peer in [TRUSTED, ELSEWHERE] {
        let reply = attempt(&server, peer, "a@example.net", "alice@local.test").await;
        assert_eq!(code_of(&reply), "250 2.1.5", "{peer}");
    }
    // A login (here: mail submitted on this machine, through the same stages).
    let stages = stages(&inbox, &greylist);
    let envelope = Envelope {
        from: ReversePath::parse("<cron@local.test>").unwrap(),
        params: Default::default(),
        recipients: vec![Recipient {
            to: ForwardPath::parse("<alice@local.test>").unwrap(),
            params: Default::default(),
        }],
    };
    let body = Content::from(b"Subject: x\r\n\r\nhi\r\n".to_vec());
    let decision = stages
        .submit(SessionInfo::local("root"), envelope, body, Notes::default())
        .await
        .unwrap();
    assert!(decision.is_accept(), "{decision:?}");
    assert_eq!(load(&greylist.stats().skipped), 3);
    assert_eq!(greylist.entries(), 0);
}

#[tokio::test]
async fn tag_mode_passes_and_counts() {
    let inbox = Inbox::default();
    let greylist = Greylist::with_clock(
        GreylistSettings {
            mode: FilterMode::Tag,
            ..settings()
        },
        Arc::new(clock()),
    );
    let server = relay_server(&inbox, &greylist);
    let reply = attempt(&server, SENDER, "a@example.net", "alice@local.test").await;
    assert_eq!(code_of(&reply), "250 2.1.5");
    assert_eq!(load(&greylist.stats().deferred), 1);
    assert_eq!(greylist.entries(), 1);
    // Off: not even asked.
    let off = Greylist::with_clock(GreylistSettings::default(), Arc::new(clock()));
    let server = relay_server(&inbox, &off);
    let reply = attempt(&server, SENDER, "a@example.net", "alice@local.test").await;
    assert_eq!(code_of(&reply), "250 2.1.5");
    assert_eq!(off.entries(), 0);
}

/// Files in `dir` (to see that no temporary file is left).
fn files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn a_restart_keeps_the_state() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("greylist.state");
    let with_file = || GreylistSettings {
        state_file: Some(file.clone()),
        ..settings()
    };
    let inbox = Inbox::default();
    let clock = clock();
    {
        // First run: the triplet is deferred; the state is written when the filter goes.
        let greylist = Greylist::with_clock(with_file(), Arc::new(clock.clone()));
        let server = relay_server(&inbox, &greylist);
        let mut c = session(&server, SENDER).await;
        assert_eq!(c.cmd("MAIL FROM:<ann@example.net>").await, "250 2.1.0");
        assert_eq!(c.cmd("RCPT TO:<alice@local.test>").await, "451 4.7.1");
        assert_eq!(c.cmd("QUIT").await, "221 2.0.0");
        drop(c);
        drop(server);
        drop(greylist);
        // The session's task holds the last clone until it ends; then it is saved.
        for _ in 0..200 {
            if file.exists() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    assert!(
        file.exists(),
        "state written at drop: {:?}",
        files(dir.path())
    );
    // Second run, after the delay: the retry is recognised.
    clock.advance(5 * MINUTE);
    let greylist = Greylist::with_clock(with_file(), Arc::new(clock.clone()));
    assert_eq!(greylist.entries(), 1);
    let server = relay_server(&inbox, &greylist);
    let reply = attempt(&server, SENDER, "ann@example.net", "alice@local.test").await;
    assert_eq!(code_of(&reply), "250 2.1.5");
    greylist.save().unwrap();
    assert_eq!(files(dir.path()), ["greylist.state"]);
    // Third run: the triplet passed, and stays so.
    let again = Greylist::with_clock(with_file(), Arc::new(clock.clone()));
    let server = relay_server(&inbox, &again);
    let reply = attempt(&server, SENDER, "ann@example.net", "alice@local.test").await;
    assert_eq!(code_of(&reply), "250 2.1.5");
}

#[tokio::test]
async fn the_state_is_saved_periodically() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("greylist.state");
    let greylist = Greylist::with_clock(
        GreylistSettings {
            state_file: Some(file.clone()),
            save_interval: Duration::from_millis(50),
            ..settings()
        },
        Arc::new(clock()),
    );
    let inbox = Inbox::default();
    let server = relay_server(&inbox, &greylist);
    let reply = attempt(&server, SENDER, "a@example.net", "alice@local.test").await;
    assert_eq!(code_of(&reply), "451 4.7.1");
    for _ in 0..100 {
        if file.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Written while the filter is still in use.
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(
        text.contains("\ta@example.net\talice@local.test\n"),
        "{text}"
    );
    assert_eq!(greylist.entries(), 1);
}

#[tokio::test]
async fn a_corrupt_state_file_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("greylist.state");
    std::fs::write(&file, b"mta-greylist 1\nt\tnot a network\t1\n\xff\xfe").unwrap();
    let greylist = Greylist::with_clock(
        GreylistSettings {
            state_file: Some(file.clone()),
            ..settings()
        },
        Arc::new(clock()),
    );
    assert_eq!(greylist.entries(), 0);
    let inbox = Inbox::default();
    let server = relay_server(&inbox, &greylist);
    let reply = attempt(&server, SENDER, "a@example.net", "alice@local.test").await;
    assert_eq!(code_of(&reply), "451 4.7.1");
    greylist.save().unwrap();
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(
        text.starts_with("mta-greylist 1\nt\t198.51.100.0/24\t"),
        "{text}"
    );
}

#[tokio::test]
async fn expired_entries_are_pruned_in_memory_and_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("greylist.state");
    let inbox = Inbox::default();
    let clock = clock();
    let greylist = Greylist::with_clock(
        GreylistSettings {
            state_file: Some(file.clone()),
            ..settings()
        },
        Arc::new(clock.clone()),
    );
    let server = relay_server(&inbox, &greylist);
    for i in 0..10 {
        let reply = attempt(&server, SENDER, &sender(i), "bob@local.test").await;
        assert_eq!(code_of(&reply), "451 4.7.1");
    }
    // One triplet passes.
    clock.advance(10 * MINUTE);
    let reply = attempt(&server, SENDER, &sender(0), "bob@local.test").await;
    assert_eq!(code_of(&reply), "250 2.1.5");
    assert_eq!(greylist.entries(), 10);
    greylist.save().unwrap();
    // Past the retry window, the nine pending ones go; the passed one stays.
    clock.advance(3 * DAY);
    greylist.prune();
    assert_eq!(greylist.entries(), 1);
    assert_eq!(load(&greylist.stats().entries), 1);
    // A filter loading the old file drops them too.
    let reloaded = Greylist::with_clock(
        GreylistSettings {
            state_file: Some(file.clone()),
            ..settings()
        },
        Arc::new(clock.clone()),
    );
    assert_eq!(reloaded.entries(), 1);
    // Past its lifetime, the passed one goes (and its network's count).
    clock.advance(36 * DAY);
    greylist.prune();
    assert_eq!((greylist.entries(), greylist.clients()), (0, 0));
}

#[tokio::test]
async fn the_table_is_bounded() {
    let inbox = Inbox::default();
    let greylist = Greylist::with_clock(
        GreylistSettings {
            max_entries: 10,
            ..settings()
        },
        Arc::new(clock()),
    );
    let server = relay_server(&inbox, &greylist);
    let mut c = session(&server, SENDER).await;
    for i in 0..50 {
        assert_eq!(
            c.cmd(&format!("MAIL FROM:<{}>", sender(i))).await,
            "250 2.1.0"
        );
        assert_eq!(c.cmd("RCPT TO:<bob@local.test>").await, "451 4.7.1");
        assert_eq!(c.cmd("RSET").await, "250 2.0.0");
    }
    assert!(greylist.entries() <= 10, "{}", greylist.entries());
}

/// Over a real socket, with the system clock and a one-second delay.
#[tokio::test]
async fn real_retry_after_a_second_over_tcp() {
    let inbox = Inbox::default();
    let greylist = Greylist::new(GreylistSettings {
        delay: Duration::from_secs(1),
        ..settings()
    });
    // Loopback is not trusted here: greylisting applies to it.
    let known = LocalRecipients::new(DomainSet::new([LOCAL]), ["alice@local.test"]);
    let stages = Stages::new(sink(&inbox, |req| req))
        .rcpt_layer(filter(greylist.clone()))
        .rcpt_layer(filter(known))
        .relay_policy(filter(RelayPolicy::new(DomainSet::new([LOCAL]), vec![])));
    let server = support::start(support::relay_config("mx.local.test"), stages).await;
    let addr = server.addr();
    let send = |expect: &'static str| async move {
        let mut c = RawClient::connect(addr).await;
        assert_eq!(c.code("EHLO client.test").await, "250");
        assert_eq!(c.code("MAIL FROM:<ann@example.net>").await, "250 2.1.0");
        let reply = c.cmd("RCPT TO:<alice@local.test>").await;
        assert_eq!(code_of(&reply), expect, "{reply}");
        if expect == "250 2.1.5" {
            assert_eq!(c.code("DATA").await, "354");
            assert_eq!(c.code("Subject: hi\r\n\r\nhello\r\n.").await, "250 2.0.0");
        }
        reply
    };
    let first = send("451 4.7.1").await;
    assert!(
        first.to_string().contains("try again in 1 second"),
        "{first}"
    );
    send("451 4.7.1").await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    send("250 2.1.5").await;
    assert_eq!(inbox.lock().unwrap().len(), 1);
}
