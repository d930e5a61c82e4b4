//! Rate limits (`filters::rate`) as a client sees them: in-memory sessions from chosen
//! addresses ([`StreamServer`] over a tokio duplex, STARTTLS with an rcgen certificate
//! where a login is needed), and real sockets on 127.0.0.1 for the connection flood and
//! a pipelined dictionary attack. Time moves by hand ([`ManualClock`]) where a window
//! would take minutes; the tarpit's delays are real and measured.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use smtp_client::testing::{RawClient, code_of};
use smtp_proto::Reply;
use smtp_server::filters::rate::{
    DictionaryLimit, FilterMode, Limit, LimitKind, LoginLimit, RateLimits, RateSettings,
};
use smtp_server::filters::{DomainSet, LocalRecipients, PasswordCheck, RelayPolicy};
use smtp_server::{DataRequest, ListenerMode, Stages, StreamServer, filter, filter_async};
use support::{Alice, Client, RIGHT, Stop, TlsServer, WRONG, clock, session, sink};
use tokio::io::DuplexStream;
use tokio_rustls::client::TlsStream;

const LOCAL: &str = "local.test";
const ATTACKER: &str = "198.51.100.7:40000";
const OTHER: &str = "203.0.113.9:40000";
const HOUR: Duration = Duration::from_secs(3600);

type Inbox = support::Kept<DataRequest>;

/// The relay policy for `local.test` (no trusted network), alice the one local user,
/// and the rate limits outermost.
fn stages(inbox: &Inbox, limits: &RateLimits) -> Stages {
    let known = LocalRecipients::new(DomainSet::new([LOCAL]), ["alice@local.test"]);
    let stages = Stages::new(sink(inbox, |req| req))
        .rcpt_layer(filter(known))
        .auth_layer(filter_async(PasswordCheck::new(Alice)))
        .relay_policy(filter(RelayPolicy::new(DomainSet::new([LOCAL]), vec![])));
    limits.install(stages)
}

fn relay_server(inbox: &Inbox, limits: &RateLimits) -> StreamServer {
    StreamServer::new(
        support::config(None),
        ListenerMode::Relay,
        stages(inbox, limits),
    )
    .unwrap()
}

fn count(limits: &RateLimits, kind: LimitKind) -> (u64, u64) {
    let stats = limits.stats();
    let c = stats.limit(kind);
    (
        c.hits.load(Ordering::Relaxed),
        c.refusals.load(Ordering::Relaxed),
    )
}

/// The seconds in "try again in N seconds".
fn retry_in(reply: &Reply) -> u64 {
    let text = reply.to_string();
    let after = text
        .split("try again in ")
        .nth(1)
        .unwrap_or_else(|| panic!("no retry time in {text:?}"));
    after
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap_or_else(|_| panic!("no number in {text:?}"))
}

#[tokio::test]
async fn dictionary_attack_is_tarpitted_then_cut_off() {
    let inbox = Inbox::default();
    let limits = RateLimits::new(RateSettings {
        failed_rcpts_per_ip: DictionaryLimit {
            tarpit_after: 10,
            disconnect_after: 30,
            window: HOUR,
            tarpit_step: Duration::from_millis(10),
            tarpit_max: Duration::from_millis(150),
            mode: FilterMode::Enforce,
        },
        ..RateSettings::default()
    });
    let server = relay_server(&inbox, &limits);
    let mut bot = session(&server, ATTACKER).await;
    assert_eq!(bot.cmd("MAIL FROM:<bot@spam.test>").await, "250 2.1.0");
    // 200 guesses, one at a time, each answer timed.
    let mut answers = Vec::new();
    let mut delays = Vec::new();
    for i in 1..=200 {
        let started = Instant::now();
        let reply = bot.full(&format!("RCPT TO:<user{i}@local.test>")).await;
        delays.push(started.elapsed());
        let code = code_of(&reply);
        answers.push(code.clone());
        if code != "550 5.1.1" {
            assert!(reply.to_string().contains("try again in"), "{reply}");
            break;
        }
    }
    assert_eq!(answers.len(), 31, "{answers:?}");
    assert!(
        answers[..30].iter().all(|a| a == "550 5.1.1"),
        "{answers:?}"
    );
    assert_eq!(answers[30], "421 4.7.0");
    assert!(bot.is_closed().await);
    // No delay before the 10th refusal; then 10 ms more per answer, up to 150 ms.
    let avg = |r: std::ops::Range<usize>| {
        let n = r.len() as u32;
        delays[r].iter().sum::<Duration>() / n
    };
    let (early, tarpit_start, tarpit_end) = (avg(0..10), avg(10..13), avg(25..30));
    assert!(tarpit_end >= Duration::from_millis(150), "{delays:?}");
    assert!(
        tarpit_end > tarpit_start + Duration::from_millis(80),
        "{delays:?}"
    );
    assert!(tarpit_start >= Duration::from_millis(10), "{delays:?}");
    assert!(early < tarpit_end, "{delays:?}");
    // A new session from the same address is cut off at its first RCPT, at once.
    let mut again = session(&server, ATTACKER).await;
    assert_eq!(again.cmd("MAIL FROM:<bot@spam.test>").await, "250 2.1.0");
    let started = Instant::now();
    assert_eq!(again.cmd("RCPT TO:<alice@local.test>").await, "421 4.7.0");
    assert!(started.elapsed() < Duration::from_millis(100));
    // Another address is not concerned.
    let mut other = session(&server, OTHER).await;
    assert_eq!(other.cmd("MAIL FROM:<ann@x.test>").await, "250 2.1.0");
    assert_eq!(other.cmd("RCPT TO:<nobody@local.test>").await, "550 5.1.1");
    assert_eq!(other.cmd("RCPT TO:<alice@local.test>").await, "250 2.1.5");
    assert_eq!(count(&limits, LimitKind::FailedRcptsPerIp), (22, 2));
    assert_eq!(limits.stats().tarpitted.load(Ordering::Relaxed), 20);
}

/// With the rate limits around the relay policy too, a client refused for relaying
/// (an open-relay scanner) is tarpitted and cut off as one guessing users is, both
/// refusals count together, and the check is made once per recipient.
#[tokio::test]
async fn relaying_refusals_count_as_refused_recipients() {
    let inbox = Inbox::default();
    let limits = RateLimits::new(RateSettings {
        failed_rcpts_per_ip: DictionaryLimit {
            tarpit_after: 2,
            disconnect_after: 4,
            window: HOUR,
            tarpit_step: Duration::from_millis(10),
            tarpit_max: Duration::from_millis(50),
            mode: FilterMode::Enforce,
        },
        ..RateSettings::default()
    });
    let known = LocalRecipients::new(DomainSet::new([LOCAL]), ["alice@local.test"]);
    let policy = filter(RelayPolicy::new(DomainSet::new([LOCAL]), vec![]));
    let stages = Stages::new(sink(&inbox, |req| req))
        .rcpt_layer(filter(known))
        .relay_policy(tower::layer::util::Stack::new(policy, limits.relay_layer()));
    let server = StreamServer::new(
        support::config(None),
        ListenerMode::Relay,
        limits.install(stages),
    )
    .unwrap();
    let mut bot = session(&server, ATTACKER).await;
    assert_eq!(bot.cmd("MAIL FROM:<bot@spam.test>").await, "250 2.1.0");
    let mut answers = Vec::new();
    for rcpt in [
        "a@elsewhere.test",
        "b@elsewhere.test",
        "nobody@local.test",
        "c@elsewhere.test",
        "alice@local.test",
    ] {
        answers.push(bot.cmd(&format!("RCPT TO:<{rcpt}>")).await);
    }
    assert_eq!(
        answers,
        [
            "554 5.7.1",
            "554 5.7.1",
            "550 5.1.1",
            "554 5.7.1",
            "421 4.7.0"
        ]
    );
    assert!(bot.is_closed().await);
    // Checked before the third, fourth and fifth recipients (2, 3 and 4 refusals by
    // then), once each; the fifth was refused.
    assert_eq!(count(&limits, LimitKind::FailedRcptsPerIp), (3, 1));
    assert_eq!(limits.stats().tarpitted.load(Ordering::Relaxed), 2);
}

#[tokio::test]
async fn pipelined_dictionary_attack_over_tcp_is_cut_off() {
    let inbox = Inbox::default();
    let limits = RateLimits::new(RateSettings {
        failed_rcpts_per_ip: DictionaryLimit {
            tarpit_after: 5,
            disconnect_after: 20,
            tarpit_step: Duration::from_millis(5),
            tarpit_max: Duration::from_millis(20),
            ..DictionaryLimit::default()
        },
        ..RateSettings::default()
    });
    let (addr, _stop) = start_tcp(stages(&inbox, &limits)).await;
    let mut bot = RawClient::connect(addr).await;
    assert_eq!(bot.code("EHLO bot.test").await, "250");
    let mut attack = String::from("MAIL FROM:<bot@spam.test>\r\n");
    for i in 0..200 {
        attack.push_str(&format!("RCPT TO:<guess{i}@local.test>\r\n"));
    }
    bot.send(attack.as_bytes()).await;
    let replies: Vec<String> = bot.replies(300).await.iter().map(code_of).collect();
    assert_eq!(replies.len(), 1 + 20 + 1, "{replies:?}");
    assert_eq!(replies[0], "250 2.1.0");
    assert!(
        replies[1..21].iter().all(|r| r == "550 5.1.1"),
        "{replies:?}"
    );
    assert_eq!(replies[21], "421 4.7.0");
    assert!(bot.is_closed().await);
}

/// A submission session from `peer` after STARTTLS and EHLO.
async fn tls_session(tls: &TlsServer, peer: &str) -> Client<TlsStream<DuplexStream>> {
    support::starttls(session(&tls.server, peer).await, &tls.client).await
}

#[tokio::test]
async fn wrong_passwords_lock_one_address_out_across_sessions() {
    let inbox = Inbox::default();
    let clock = clock();
    let limits = RateLimits::with_clock(
        RateSettings {
            failed_logins_per_ip: LoginLimit {
                max_failures: 10,
                window: Duration::from_secs(900),
                lockout: Duration::from_secs(1800),
                mode: FilterMode::Enforce,
            },
            ..RateSettings::default()
        },
        Arc::new(clock.clone()),
    );
    let tls = TlsServer::submission(stages(&inbox, &limits));
    // 20 sessions, one wrong password each: the first 10 are checked, the next 10 are
    // refused for now without a check, with the time to come back.
    for i in 1..=20 {
        let mut guesser = tls_session(&tls, ATTACKER).await;
        let reply = guesser.full(WRONG).await;
        if i <= 10 {
            assert_eq!(code_of(&reply), "535 5.7.8", "session {i}");
        } else {
            assert_eq!(code_of(&reply), "454 4.7.0", "session {i}: {reply}");
            let wait = retry_in(&reply);
            assert!((1790..=1800).contains(&wait), "{reply}");
        }
        clock.advance(Duration::from_secs(1));
    }
    // Locked out even with the right password; another address logs in.
    let mut locked = tls_session(&tls, ATTACKER).await;
    assert_eq!(locked.cmd(RIGHT).await, "454 4.7.0");
    let mut other = tls_session(&tls, OTHER).await;
    assert_eq!(other.cmd(RIGHT).await, "235 2.7.0");
    assert_eq!(other.cmd("MAIL FROM:<alice@local.test>").await, "250 2.1.0");
    // After the lockout, the address may log in again.
    clock.advance(Duration::from_secs(1800));
    let mut back = tls_session(&tls, ATTACKER).await;
    assert_eq!(back.cmd(RIGHT).await, "235 2.7.0");
    assert_eq!(count(&limits, LimitKind::FailedLoginsPerIp), (11, 11));
    assert_eq!(limits.stats().lockouts.load(Ordering::Relaxed), 1);
}

/// Scenario auth-bruteforce: 20 wrong passwords; each session ends with 421 after its
/// own limit (3), and across sessions the address is locked out.
#[tokio::test]
async fn auth_bruteforce_scenario() {
    let inbox = Inbox::default();
    let limits = RateLimits::new(RateSettings::default()); // 10 failures lock out
    let tls = TlsServer::submission(stages(&inbox, &limits));
    let mut answers = Vec::new();
    'sessions: loop {
        let mut guesser = tls_session(&tls, ATTACKER).await;
        loop {
            if answers.len() == 20 {
                break 'sessions;
            }
            answers.push(guesser.cmd("AUTH PLAIN AGFsaWNlAHdyb25n").await);
            if guesser.is_closed_soon().await {
                answers.push("closed".into());
                break;
            }
        }
    }
    let refused = answers.iter().filter(|a| *a == "535 5.7.8").count();
    assert_eq!(refused, 10, "{answers:?}");
    assert!(answers.iter().any(|a| a == "421 4.7.0") || answers.contains(&"closed".into()));
    assert!(answers.iter().any(|a| a == "454 4.7.0"), "{answers:?}");
    // Wherever a 454 came, no password was checked after it.
    let first = answers.iter().position(|a| a == "454 4.7.0").unwrap();
    assert!(
        !answers[first..].contains(&"535 5.7.8".to_owned()),
        "{answers:?}"
    );
}

/// Servers on 127.0.0.1:0 (relay) with `stages`; the sender stops it when dropped.
async fn start_tcp(stages: Stages) -> (SocketAddr, Stop) {
    let server = support::start(support::relay_config("mx.local.test"), stages).await;
    (server.addr(), server.stop)
}

/// Scenario res-connection-limit, as a rate: the connections beyond the rate get
/// `421 4.7.0` at once, and are closed.
#[tokio::test]
async fn connection_flood_gets_421() {
    let inbox = Inbox::default();
    let limits = RateLimits::new(RateSettings {
        connections_per_ip: Limit::new(5, Duration::from_secs(60)),
        ..RateSettings::default()
    });
    let (addr, _stop) = start_tcp(stages(&inbox, &limits)).await;
    let mut open = Vec::new();
    for _ in 0..5 {
        let c = RawClient::connect(addr).await;
        assert_eq!(c.greeting.code().as_u16(), 220);
        open.push(c);
    }
    for _ in 0..3 {
        let started = Instant::now();
        let mut extra = RawClient::connect(addr).await;
        assert_eq!(code_of(&extra.greeting), "421 4.7.0");
        assert!(extra.greeting.to_string().contains("try again in"));
        assert!(extra.is_closed().await);
        assert!(started.elapsed() < Duration::from_secs(2));
    }
    // Closing connections does not give the rate back: it drains with time.
    drop(open);
    let mut later = RawClient::connect(addr).await;
    assert_eq!(code_of(&later.greeting), "421 4.7.0");
    assert!(later.is_closed().await);
    assert_eq!(count(&limits, LimitKind::ConnectionsPerIp), (4, 4));
}

#[tokio::test]
async fn exempt_networks_are_not_limited() {
    let inbox = Inbox::default();
    let limits = RateLimits::new(RateSettings {
        connections_per_ip: Limit::new(2, Duration::from_secs(60)),
        exempt_networks: vec!["127.0.0.0/8".parse().unwrap()],
        ..RateSettings::default()
    });
    let (addr, _stop) = start_tcp(stages(&inbox, &limits)).await;
    for _ in 0..6 {
        let c = RawClient::connect(addr).await;
        assert_eq!(c.greeting.code().as_u16(), 220);
    }
    assert_eq!(count(&limits, LimitKind::ConnectionsPerIp), (0, 0));
}

#[tokio::test]
async fn messages_and_recipients_per_address() {
    let inbox = Inbox::default();
    let clock = clock();
    let limits = RateLimits::with_clock(
        RateSettings {
            messages_per_ip: Limit::new(3, HOUR),
            recipients_per_ip: Limit::new(5, HOUR),
            ..RateSettings::default()
        },
        Arc::new(clock.clone()),
    );
    let server = relay_server(&inbox, &limits);
    let mut c = session(&server, ATTACKER).await;
    for _ in 0..3 {
        assert_eq!(c.cmd("MAIL FROM:<a@x.test>").await, "250 2.1.0");
        assert_eq!(c.cmd("RSET").await, "250 2.0.0");
    }
    let reply = c.full("MAIL FROM:<a@x.test>").await;
    assert_eq!(code_of(&reply), "450 4.7.1", "{reply}");
    assert_eq!(retry_in(&reply), 1200, "{reply}"); // 3 per hour: one every 20 minutes
    // Another address is not concerned; its recipients are limited in turn.
    let mut other = session(&server, OTHER).await;
    assert_eq!(other.cmd("MAIL FROM:<b@y.test>").await, "250 2.1.0");
    for i in 0..5 {
        assert_eq!(other.cmd("RCPT TO:<alice@local.test>").await, "250 2.1.5");
        if i == 2 {
            // A refused recipient does not count against the rate.
            assert_eq!(other.cmd("RCPT TO:<nobody@local.test>").await, "550 5.1.1");
        }
    }
    let reply = other.full("RCPT TO:<alice@local.test>").await;
    assert_eq!(code_of(&reply), "450 4.7.1");
    assert_eq!(retry_in(&reply), 720, "{reply}"); // 5 per hour
    // The session goes on: the message goes to the five accepted.
    assert_eq!(other.cmd("DATA").await, "354");
    assert_eq!(other.cmd("Subject: x\r\n\r\nhi\r\n.").await, "250 2.0.0");
    assert_eq!(inbox.lock().unwrap()[0].envelope.recipients.len(), 5);
    // Twenty minutes later, one more message.
    clock.advance(Duration::from_secs(1200));
    assert_eq!(c.cmd("MAIL FROM:<a@x.test>").await, "250 2.1.0");
    assert_eq!(c.cmd("RSET").await, "250 2.0.0");
    assert_eq!(c.cmd("MAIL FROM:<a@x.test>").await, "450 4.7.1");
    assert_eq!(count(&limits, LimitKind::MessagesPerIp), (2, 2));
    assert_eq!(count(&limits, LimitKind::RecipientsPerIp), (1, 1));
}

#[tokio::test]
async fn messages_and_recipients_per_sender_domain() {
    let inbox = Inbox::default();
    let limits = RateLimits::with_clock(
        RateSettings {
            messages_per_sender_domain: Limit::new(2, HOUR),
            recipients_per_sender_domain: Limit::new(3, HOUR),
            ..RateSettings::default()
        },
        Arc::new(clock()),
    );
    let server = relay_server(&inbox, &limits);
    // Two addresses, one sender domain (in any case).
    let mut a = session(&server, ATTACKER).await;
    let mut b = session(&server, OTHER).await;
    assert_eq!(a.cmd("MAIL FROM:<one@spam.test>").await, "250 2.1.0");
    assert_eq!(a.cmd("RCPT TO:<alice@local.test>").await, "250 2.1.5");
    assert_eq!(a.cmd("RCPT TO:<postmaster@local.test>").await, "250 2.1.5");
    assert_eq!(b.cmd("MAIL FROM:<two@SPAM.test>").await, "250 2.1.0");
    assert_eq!(b.cmd("RCPT TO:<alice@local.test>").await, "250 2.1.5");
    assert_eq!(b.cmd("RCPT TO:<abuse@local.test>").await, "450 4.7.1");
    assert_eq!(b.cmd("RSET").await, "250 2.0.0");
    assert_eq!(b.cmd("MAIL FROM:<three@spam.test>").await, "450 4.7.1");
    // Other domains, and the null sender, are not concerned.
    assert_eq!(b.cmd("MAIL FROM:<ann@ham.test>").await, "250 2.1.0");
    assert_eq!(b.cmd("RCPT TO:<alice@local.test>").await, "250 2.1.5");
    assert_eq!(b.cmd("RSET").await, "250 2.0.0");
    assert_eq!(b.cmd("MAIL FROM:<>").await, "250 2.1.0");
    assert_eq!(count(&limits, LimitKind::MessagesPerSenderDomain), (1, 1));
    assert_eq!(count(&limits, LimitKind::RecipientsPerSenderDomain), (1, 1));
    assert_eq!(count(&limits, LimitKind::MessagesPerIp), (0, 0));
}

#[tokio::test]
async fn messages_per_login_and_exempt_logins() {
    let inbox = Inbox::default();
    let settings = |exempt: Vec<String>| RateSettings {
        messages_per_login: Limit::new(2, HOUR),
        // Logins are counted per login, not per address.
        messages_per_ip: Limit::new(1, HOUR),
        exempt_logins: exempt,
        ..RateSettings::default()
    };
    let limits = RateLimits::with_clock(settings(vec![]), Arc::new(clock()));
    let tls = TlsServer::submission(stages(&inbox, &limits));
    let mut c = tls_session(&tls, ATTACKER).await;
    assert_eq!(c.cmd(RIGHT).await, "235 2.7.0");
    for _ in 0..2 {
        assert_eq!(c.cmd("MAIL FROM:<alice@local.test>").await, "250 2.1.0");
        assert_eq!(c.cmd("RSET").await, "250 2.0.0");
    }
    let reply = c.full("MAIL FROM:<alice@local.test>").await;
    assert_eq!(code_of(&reply), "450 4.7.1");
    assert!(reply.to_string().contains("login"), "{reply}");
    assert_eq!(count(&limits, LimitKind::MessagesPerLogin), (1, 1));

    let exempt = RateLimits::with_clock(settings(vec!["Alice".into()]), Arc::new(clock()));
    let tls = TlsServer::submission(stages(&inbox, &exempt));
    let mut c = tls_session(&tls, ATTACKER).await;
    assert_eq!(c.cmd(RIGHT).await, "235 2.7.0");
    for _ in 0..5 {
        assert_eq!(c.cmd("MAIL FROM:<alice@local.test>").await, "250 2.1.0");
        assert_eq!(c.cmd("RSET").await, "250 2.0.0");
    }
}

#[tokio::test]
async fn tag_mode_passes_and_counts() {
    let inbox = Inbox::default();
    let tag = |max| Limit {
        mode: FilterMode::Tag,
        ..Limit::new(max, HOUR)
    };
    let limits = RateLimits::with_clock(
        RateSettings {
            connections_per_ip: tag(1),
            messages_per_ip: tag(1),
            recipients_per_ip: tag(1),
            failed_rcpts_per_ip: DictionaryLimit {
                tarpit_after: 2,
                disconnect_after: 4,
                tarpit_step: Duration::from_secs(5),
                mode: FilterMode::Tag,
                ..DictionaryLimit::default()
            },
            ..RateSettings::default()
        },
        Arc::new(clock()),
    );
    let server = relay_server(&inbox, &limits);
    let _first = session(&server, ATTACKER).await;
    let mut c = session(&server, ATTACKER).await;
    let started = Instant::now();
    for _ in 0..2 {
        assert_eq!(c.cmd("MAIL FROM:<a@x.test>").await, "250 2.1.0");
        assert_eq!(c.cmd("RCPT TO:<alice@local.test>").await, "250 2.1.5");
        assert_eq!(c.cmd("RCPT TO:<alice@local.test>").await, "250 2.1.5");
        assert_eq!(c.cmd("RSET").await, "250 2.0.0");
    }
    assert_eq!(c.cmd("MAIL FROM:<a@x.test>").await, "250 2.1.0");
    for i in 0..8 {
        assert_eq!(
            c.cmd(&format!("RCPT TO:<n{i}@local.test>")).await,
            "550 5.1.1"
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "no tarpit in tag mode"
    );
    assert_eq!(count(&limits, LimitKind::ConnectionsPerIp), (1, 0));
    // Every MAIL and RCPT over the rate is counted (the RCPTs refused later too).
    assert_eq!(count(&limits, LimitKind::MessagesPerIp), (2, 0));
    assert_eq!(count(&limits, LimitKind::RecipientsPerIp), (11, 0));
    assert_eq!(count(&limits, LimitKind::FailedRcptsPerIp), (6, 0));
    assert_eq!(limits.stats().tarpitted.load(Ordering::Relaxed), 2);
}

#[tokio::test]
async fn expired_entries_are_pruned() {
    let inbox = Inbox::default();
    let clock = clock();
    let limits = RateLimits::with_clock(
        RateSettings {
            connections_per_ip: Limit::new(10, Duration::from_secs(60)),
            messages_per_ip: Limit::new(10, HOUR),
            ..RateSettings::default()
        },
        Arc::new(clock.clone()),
    );
    let server = relay_server(&inbox, &limits);
    for i in 1..=20 {
        let mut c = session(&server, &format!("198.51.100.{i}:4000")).await;
        assert_eq!(c.cmd("MAIL FROM:<a@x.test>").await, "250 2.1.0");
        assert_eq!(c.cmd("RCPT TO:<nobody@local.test>").await, "550 5.1.1");
    }
    // Connections, messages and refused recipients of 20 addresses.
    assert_eq!(limits.tracked(), 60);
    assert_eq!(limits.stats().tracked.load(Ordering::Relaxed), 60);
    // A minute on, the connection rates have drained.
    clock.advance(Duration::from_secs(61));
    limits.prune();
    assert_eq!(limits.tracked(), 40);
    // An hour on, everything; and the tables prune themselves as they are used.
    clock.advance(HOUR);
    let mut c = session(&server, OTHER).await;
    assert_eq!(c.cmd("MAIL FROM:<a@x.test>").await, "250 2.1.0");
    assert_eq!(c.cmd("RCPT TO:<nobody@local.test>").await, "550 5.1.1");
    assert_eq!(limits.tracked(), 3);
}

#[tokio::test]
async fn tables_are_bounded() {
    let inbox = Inbox::default();
    let limits = RateLimits::with_clock(
        RateSettings {
            max_tracked: 8,
            ..RateSettings::default()
        },
        Arc::new(clock()),
    );
    let server = relay_server(&inbox, &limits);
    for i in 1..=30 {
        let _c = session(&server, &format!("[2001:db8:{i}::1]:4000")).await;
    }
    assert!(limits.tracked() <= 8, "{}", limits.tracked());
}

/// Scenario rcpt-limit with the default rate limits in place: the server's own limit of
/// 100 recipients answers (452 4.5.3), the rates do not get in the way.
#[tokio::test]
async fn rcpt_limit_scenario_with_default_limits() {
    let inbox = Inbox::default();
    let limits = RateLimits::new(RateSettings::default());
    let known = LocalRecipients::new(DomainSet::new(["ours.test"]), ["ok@ours.test"]);
    let stages = limits.install(
        Stages::new(sink(&inbox, |req| req))
            .rcpt_layer(filter(known))
            .relay_policy(filter(RelayPolicy::new(
                DomainSet::new(["ours.test"]),
                vec![],
            ))),
    );
    let server = StreamServer::new(support::config(None), ListenerMode::Relay, stages).unwrap();
    let mut c = session(&server, ATTACKER).await;
    assert_eq!(c.cmd("MAIL FROM:<a@x.test>").await, "250 2.1.0");
    let mut codes = Vec::new();
    for _ in 0..150 {
        codes.push(c.cmd("RCPT TO:<ok@ours.test>").await);
    }
    assert!(codes[..100].iter().all(|c| c == "250 2.1.5"), "{codes:?}");
    assert!(codes[100..].iter().all(|c| c == "452 4.5.3"), "{codes:?}");
    assert_eq!(c.cmd("NOOP").await, "250 2.0.0");
}
