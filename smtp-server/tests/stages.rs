//! The middleware chain over a real socket: filters written with `from_fn` and as
//! layers, their order, header insertion, and what errors and disconnects do.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use smtp_client::testing::{RawClient, code_of};
use smtp_proto::{EnhancedStatus, Reply, ReplyCode};
use smtp_server::filter;
use smtp_server::filters::{DomainSet, RelayPolicy};
use smtp_server::{
    AuthRequest, BoxError, ConnectRequest, DataRequest, Decision, ListenerMode, MailRequest, Next,
    RcptRequest, Server, ServerConfig, Stages, from_fn,
};
use support::{Stop, relay_for_loopback, sink, tls_pair};

/// A server on a relay listener that relays for loopback (every test client).
async fn start(stages: Stages) -> (SocketAddr, Stop) {
    start_with(relay_for_loopback(stages), None).await
}

/// [`start`], with TLS (and AUTH after STARTTLS) when `tls` is given.
async fn start_with(stages: Stages, tls: Option<Arc<rustls::ServerConfig>>) -> (SocketAddr, Stop) {
    let config = ServerConfig {
        auth: tls.is_some(),
        tls,
        ..support::relay_config("stages.test")
    };
    let server = support::start(config, stages).await;
    (server.addr(), server.stop)
}

/// Sends `input` and returns `"code status"` of every reply until the server closes or
/// `count` replies came.
async fn converse(addr: SocketAddr, input: &str, count: usize) -> Vec<String> {
    let mut c = RawClient::connect(addr).await;
    c.send(input.as_bytes()).await;
    let mut out = vec![code_of(&c.greeting)];
    out.extend(c.replies(count.saturating_sub(1)).await.iter().map(code_of));
    out
}

#[tokio::test]
async fn filters_decide_in_order_and_add_headers() {
    let messages = Arc::default();
    let order = Arc::new(Mutex::new(Vec::new()));
    let (o1, o2) = (Arc::clone(&order), Arc::clone(&order));
    let inner = from_fn(move |req: RcptRequest, next: Next<RcptRequest>| {
        let order = Arc::clone(&o1);
        async move {
            order.lock().unwrap().push("inner");
            if req.to.to_string().contains("blocked") {
                return Ok(Decision::reject::<550>(
                    EnhancedStatus::NOT_AUTHORIZED,
                    "blocked by inner",
                ));
            }
            next.run(req).await
        }
    });
    let outer = from_fn(move |req: RcptRequest, next: Next<RcptRequest>| {
        let order = Arc::clone(&o2);
        async move {
            order.lock().unwrap().push("outer");
            next.run(req).await
        }
    });
    let tag = from_fn(|mut req: DataRequest, next: Next<DataRequest>| async move {
        req.prepend_header("X-Filtered", "yes");
        next.run(req).await
    });
    let stages = Stages::new(sink(&messages, |req| req.message()))
        .rcpt_layer(inner)
        .rcpt_layer(outer)
        .data_layer(tag);
    let (addr, _stop) = start(stages).await;
    let replies = converse(
        addr,
        "EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<ok@x.test>\r\nRCPT TO:<blocked@x.test>\r\nDATA\r\nSubject: s\r\n\r\nbody\r\n.\r\nQUIT\r\n",
        7,
    )
    .await;
    assert_eq!(
        replies,
        [
            "220",
            "250",
            "250 2.1.0",
            "250 2.1.5",
            "550 5.7.1",
            "354",
            "250 2.0.0"
        ]
    );
    assert_eq!(
        *order.lock().unwrap(),
        ["outer", "inner", "outer", "inner"],
        "the last layer added runs first"
    );
    let stored = messages.lock().unwrap();
    assert_eq!(stored[0], b"X-Filtered: yes\r\nSubject: s\r\n\r\nbody\r\n");
}

#[tokio::test]
async fn errors_defer_and_disconnect_closes() {
    let messages = Arc::default();
    let failing = from_fn(|_: MailRequest, _: Next<MailRequest>| async move {
        Err::<Decision, BoxError>("database down".into())
    });
    let (addr, _stop) =
        start(Stages::new(sink(&messages, |req| req.message())).mail_layer(failing)).await;
    let replies = converse(addr, "EHLO c\r\nMAIL FROM:<a@b.test>\r\nNOOP\r\n", 4).await;
    assert_eq!(
        replies,
        ["220", "250", "451 4.3.0", "250 2.0.0"],
        "an Err is a temporary failure, the session goes on"
    );

    let banned = from_fn(
        |req: ConnectRequest, next: Next<ConnectRequest>| async move {
            if req.session.peer.ip().is_loopback() {
                return Ok(Decision::disconnect::<554>(
                    EnhancedStatus::NOT_AUTHORIZED,
                    "Go away",
                ));
            }
            next.run(req).await
        },
    );
    let (addr, _stop) =
        start(Stages::new(sink(&messages, |req| req.message())).connect_layer(banned)).await;
    let replies = converse(addr, "EHLO c\r\n", 3).await;
    assert_eq!(replies, ["554 5.7.1"], "greeting refused, then closed");
}

/// Who is logged in is what the client was told: an auth filter that answers a login
/// with `535` leaves the client a stranger, whom the relay policy refuses, even though
/// the filter built its answer by hand; one that answers `235` logs it in.
#[tokio::test]
async fn a_login_counts_only_when_the_reply_says_so() {
    let (server_tls, client_tls) = tls_pair();
    for (code, status, relay) in [
        (
            ReplyCode::AUTH_INVALID,
            EnhancedStatus::AUTH_INVALID,
            "554 5.7.1",
        ),
        (
            ReplyCode::AUTH_SUCCEEDED,
            EnhancedStatus::AUTH_OK,
            "250 2.1.5",
        ),
    ] {
        let verdict = from_fn(move |_: AuthRequest, _: Next<AuthRequest>| async move {
            Ok(Decision::from_reply(Reply::new(
                code,
                status,
                "As the filter says",
            )))
        });
        let relay_policy = filter(RelayPolicy::new(
            DomainSet::new(["stages.test"]),
            Vec::new(),
        ));
        let stages = Stages::new(sink(&Arc::default(), |req| req.message()))
            .relay_policy(relay_policy)
            .auth_layer(verdict);
        let (addr, _stop) = start_with(stages, Some(Arc::clone(&server_tls))).await;
        let mut c = RawClient::connect(addr).await;
        c.cmd("EHLO client.test").await;
        let mut c = c.starttls(Arc::clone(&client_tls), "localhost").await;
        c.cmd("EHLO client.test").await;
        // PLAIN: "\0ann\0secret".
        let login = c.code("AUTH PLAIN AGFubgBzZWNyZXQ=").await;
        assert_eq!(login, format!("{code} {status}"));
        assert_eq!(c.code("MAIL FROM:<ann@stages.test>").await, "250 2.1.0");
        assert_eq!(
            c.code("RCPT TO:<bob@elsewhere.test>").await,
            relay,
            "after {login}"
        );
    }
}

/// Secure by default for library users: a relay listener without a relay policy does
/// not start (it would be an open relay), and the policy is asked before every rcpt
/// filter, so one that accepts any recipient without asking the rest of the chain
/// cannot open the relay either.
#[tokio::test]
async fn a_relay_listener_needs_a_relay_policy_that_no_filter_can_bypass() {
    let config = ServerConfig {
        listeners: vec![support::listener(ListenerMode::Relay)],
        ..ServerConfig::default()
    };
    let refused = Server::bind(
        config,
        Stages::new(sink(&Arc::default(), |req| req.message())),
    )
    .await;
    let error = refused.expect_err("no relay policy, no server").to_string();
    assert!(error.contains("no relay policy"), "{error}");

    let yes_to_all =
        from_fn(|_: RcptRequest, _: Next<RcptRequest>| async { Ok(Decision::accept()) });
    let policy = filter(RelayPolicy::new(
        DomainSet::new(["stages.test"]),
        Vec::new(),
    ));
    let stages = Stages::new(sink(&Arc::default(), |req| req.message()))
        .relay_policy(policy)
        .rcpt_layer(yes_to_all);
    let (addr, _stop) = start_with(stages, None).await;
    let mut c = RawClient::connect(addr).await;
    c.cmd("EHLO client.test").await;
    assert_eq!(c.code("MAIL FROM:<a@client.test>").await, "250 2.1.0");
    assert_eq!(c.code("RCPT TO:<bob@stages.test>").await, "250 2.1.5");
    assert_eq!(c.code("RCPT TO:<bob@elsewhere.test>").await, "554 5.7.1");
}
