//! The HELO checks as an ehlo-stage filter over real sockets: refusals in enforce mode,
//! tag mode (the client goes on, the finding is counted and left for later filters),
//! trusted networks and submission listeners left alone.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::sync::Arc;

use smtp_client::testing::RawClient;
use smtp_server::filters::{DomainSet, HeloChecks, HeloFinding, HeloProblem, RelayPolicy};
use smtp_server::{
    BoxError, Decision, EarlyTalkers, EnhancedStatus, FilterMode, ListenerMode, MailRequest,
    ServerConfig, ServerStats, Stages, filter,
};
use support::Stop;

/// A relay and a submission listener with `checks` at the ehlo stage; a mail-stage
/// filter refuses `MAIL` with the HELO finding in its text, when there is one.
async fn start(checks: HeloChecks) -> (SocketAddr, SocketAddr, Arc<ServerStats>, Stop) {
    let sink = tower::service_fn(|_| async { Ok::<_, BoxError>(Decision::accept()) });
    let policy = filter(RelayPolicy::new(DomainSet::new(["ours.test"]), vec![]));
    let show_finding = |req: &mut MailRequest| {
        let finding = req.session.connection.get::<HeloFinding>()?;
        let problem = finding.problem?;
        Some(Decision::reject::<550>(
            EnhancedStatus::NOT_AUTHORIZED,
            format!("finding {} refused={}", problem.as_str(), finding.refused),
        ))
    };
    let stages = Stages::new(sink)
        .relay_policy(policy)
        .ehlo_layer(filter(checks))
        .mail_layer(filter(show_finding));
    let config = ServerConfig {
        hostname: "mx.ours.test".into(),
        listeners: vec![
            support::listener(ListenerMode::Relay),
            support::listener(ListenerMode::Submission),
        ],
        early_talkers: EarlyTalkers {
            mode: FilterMode::Off,
            ..EarlyTalkers::default()
        },
        ..ServerConfig::default()
    };
    let server = support::start(config, stages).await;
    (server.addrs[0], server.addrs[1], server.stats, server.stop)
}

fn count(stats: &ServerStats, problem: HeloProblem, refused: bool) -> u64 {
    stats
        .helo_checks()
        .into_iter()
        .find(|(p, r, _)| *p == problem && *r == refused)
        .map_or(0, |(_, _, n)| n)
}

#[tokio::test]
async fn enforce_mode_refuses_bad_names() {
    let checks = HeloChecks {
        mode: FilterMode::Enforce,
        own_addresses: vec!["192.0.2.25".parse().unwrap()],
        ..HeloChecks::new("mx.ours.test")
    };
    let (relay, _, stats, _stop) = start(checks).await;
    let mut c = RawClient::connect(relay).await;
    for (name, expected, words) in [
        ("localhost", "501 5.5.2", "fully-qualified"),
        ("my_pc", "501 5.5.2", "fully-qualified"),
        ("198.51.100.7", "501 5.5.2", "in brackets"),
        ("MX.ours.test", "550 5.7.1", "you are not me"),
        ("[127.0.0.1]", "550 5.7.1", "you are not me"),
        ("127.0.0.1", "550 5.7.1", "you are not me"),
        ("[192.0.2.25]", "550 5.7.1", "you are not me"),
    ] {
        for verb in ["EHLO", "HELO"] {
            let reply = c.cmd(&format!("{verb} {name}")).await;
            assert_eq!(
                smtp_client::testing::code_of(&reply),
                expected,
                "{verb} {name}: {reply}"
            );
            assert!(reply.to_string().contains(words), "{reply}");
        }
    }
    // Refused HELOs leave the session without one.
    assert_eq!(c.code("MAIL FROM:<a@client.example>").await, "503 5.5.1");
    // A good name (or a literal that is not ours) goes through.
    assert_eq!(c.code("EHLO [198.51.100.7]").await, "250");
    assert_eq!(c.code("EHLO mail.client.example").await, "250");
    assert_eq!(c.code("MAIL FROM:<a@client.example>").await, "250 2.1.0");
    assert_eq!(count(&stats, HeloProblem::Syntax, true), 4);
    assert_eq!(count(&stats, HeloProblem::BareIp, true), 2);
    assert_eq!(count(&stats, HeloProblem::OwnName, true), 8);
    assert_eq!(count(&stats, HeloProblem::Syntax, false), 0);
}

#[tokio::test]
async fn tag_mode_lets_the_client_go_on() {
    let (relay, _, stats, _stop) = start(HeloChecks::new("mx.ours.test")).await;
    let mut c = RawClient::connect(relay).await;
    assert_eq!(c.code("EHLO localhost").await, "250");
    let reply = c.cmd("MAIL FROM:<a@client.example>").await;
    assert!(
        reply.to_string().contains("finding syntax refused=false"),
        "the finding is left for later filters: {reply}"
    );
    assert_eq!(count(&stats, HeloProblem::Syntax, false), 1);
    // A later good EHLO clears it.
    assert_eq!(c.code("EHLO mail.client.example").await, "250");
    assert_eq!(c.code("MAIL FROM:<a@client.example>").await, "250 2.1.0");
    assert_eq!(count(&stats, HeloProblem::Syntax, false), 1);
}

#[tokio::test]
async fn submission_and_trusted_clients_are_not_checked() {
    let checks = HeloChecks {
        mode: FilterMode::Enforce,
        ..HeloChecks::new("mx.ours.test")
    };
    let (_, submission, stats, _stop) = start(checks).await;
    let mut c = RawClient::connect(submission).await;
    assert_eq!(c.code("EHLO laptop").await, "250");

    let trusted = HeloChecks {
        mode: FilterMode::Enforce,
        trusted: vec!["127.0.0.0/8".parse().unwrap()],
        ..HeloChecks::new("mx.ours.test")
    };
    let (relay, _, _, _stop2) = start(trusted).await;
    let mut c = RawClient::connect(relay).await;
    assert_eq!(c.code("EHLO localhost").await, "250");
    assert!(stats.helo_checks().iter().all(|(_, _, n)| *n == 0));
}

#[tokio::test]
async fn off_mode_checks_nothing() {
    let checks = HeloChecks {
        mode: FilterMode::Off,
        ..HeloChecks::new("mx.ours.test")
    };
    let (relay, _, stats, _stop) = start(checks).await;
    let mut c = RawClient::connect(relay).await;
    assert_eq!(c.code("EHLO mx.ours.test").await, "250");
    assert_eq!(c.code("MAIL FROM:<a@client.example>").await, "250 2.1.0");
    assert!(stats.helo_checks().iter().all(|(_, _, n)| *n == 0));
}
