//! LMTP listeners (RFC 2033) over a real socket: LHLO instead of HELO/EHLO, and after
//! the data one reply per recipient accepted at RCPT, in order, with the refusals
//! data-stage filters gave single recipients (`DataRequest::refuse_recipient`). And
//! what the same filters do on an SMTP listener, where there is one reply.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;

use smtp_client::testing::{RawClient, code_of};
use smtp_proto::{
    EnhancedStatus, ForwardPath, OriginalRecipient, RcptParameters, Recipient, Reply, ReplyCode,
};
use smtp_server::filters::{DomainSet, Received, RelayPolicy};
use smtp_server::{
    BoxError, DataRequest, Decision, Limits, ListenerMode, ServerConfig, Stages, filter,
};
use support::{Kept, Stop, listener, sink};

const LOCAL: &str = "local.test";

/// `552 5.2.2`, as a quota filter says it.
fn full() -> Reply {
    Reply::new(
        ReplyCode::EXCEEDED_STORAGE,
        "5.2.2".parse().unwrap(),
        "Mailbox full",
    )
}

/// `550 5.7.1`, another filter's refusal.
fn denied() -> Reply {
    Reply::new(
        ReplyCode::MAILBOX_UNAVAILABLE,
        EnhancedStatus::NOT_AUTHORIZED,
        "Not for this one",
    )
}

/// Refuses with `reply` every recipient whose address contains `part`.
fn refuse_where(
    part: &'static str,
    reply: fn() -> Reply,
) -> impl Fn(&mut DataRequest) -> Option<Decision> + Send + Sync + 'static {
    move |req: &mut DataRequest| {
        while let Some(i) = req
            .envelope
            .recipients
            .iter()
            .position(|r| r.to.to_string().contains(part))
        {
            req.refuse_recipient(i, reply());
        }
        None
    }
}

/// A server with one listener of `mode` on 127.0.0.1:0, mail for `local.test` from
/// anyone (no trusted network), `Received:` added, and the messages the sink accepted.
async fn start(mode: ListenerMode, stages: Stages) -> (SocketAddr, Stop) {
    start_with(mode, stages, Limits::default()).await
}

/// [`start`] with `limits`.
async fn start_with(mode: ListenerMode, stages: Stages, limits: Limits) -> (SocketAddr, Stop) {
    let stages = stages
        .data_layer(filter(Received::new("mx.local.test")))
        .relay_policy(filter(RelayPolicy::new(DomainSet::new([LOCAL]), vec![])));
    let config = ServerConfig {
        hostname: "mx.local.test".into(),
        listeners: vec![listener(mode)],
        limits,
        ..ServerConfig::default()
    };
    let server = support::start(config, stages).await;
    (server.addr(), server.stop)
}

/// Connects, says LHLO, sends MAIL and RCPT for each of `to` (expecting `rcpt[i]`), the
/// message, and returns the replies after the data (as many as `replies`).
async fn lmtp_transaction(
    addr: SocketAddr,
    to: &[&str],
    rcpt: &[&str],
    replies: usize,
) -> Vec<String> {
    let mut c = RawClient::connect(addr).await;
    assert_eq!(code_of(&c.greeting), "220");
    assert!(c.greeting.to_string().contains("LMTP"), "{}", c.greeting);
    assert_eq!(c.code("LHLO client.test").await, "250");
    assert_eq!(c.code("MAIL FROM:<ann@example.net>").await, "250 2.1.0");
    for (to, expected) in to.iter().zip(rcpt) {
        assert_eq!(c.code(&format!("RCPT TO:<{to}>")).await, *expected, "{to}");
    }
    assert_eq!(c.code("DATA").await, "354");
    c.send(b"Subject: lmtp\r\n\r\nhello\r\n.\r\n").await;
    let out: Vec<String> = c.replies(replies).await.iter().map(code_of).collect();
    // Nothing more: exactly one reply per recipient, then HELP's.
    assert_eq!(c.code("HELP").await, "214 2.0.0");
    out
}

fn recipients(req: &DataRequest) -> Vec<String> {
    req.envelope
        .recipients
        .iter()
        .map(|r| r.to.to_string())
        .collect()
}

#[tokio::test]
async fn lmtp_answers_each_recipient_after_the_data() {
    let kept: Kept<DataRequest> = Kept::default();
    let stages = Stages::new(sink(&kept, |req| req)).data_filter(|req| {
        // The quota filter's shape: under LMTP, refuse just the full mailbox.
        assert!(req.is_lmtp());
        let i = req
            .envelope
            .recipients
            .iter()
            .position(|r| r.to.to_string() == "<bob@local.test>")?;
        req.refuse_recipient(i, full());
        None
    });
    let (addr, _stop) = start(ListenerMode::Lmtp, stages).await;
    let replies = lmtp_transaction(
        addr,
        &[
            "ann@local.test",
            "eve@elsewhere.test",
            "bob@local.test",
            "cat@local.test",
        ],
        &["250 2.1.5", "554 5.7.1", "250 2.1.5", "250 2.1.5"],
        3,
    )
    .await;
    // One per recipient accepted at RCPT, in RCPT order (not the refused eve).
    assert_eq!(replies, ["250 2.0.0", "552 5.2.2", "250 2.0.0"]);
    let kept = kept.lock().unwrap();
    assert_eq!(kept.len(), 1);
    assert_eq!(
        recipients(&kept[0]),
        ["<ann@local.test>", "<cat@local.test>"]
    );
    let stored = String::from_utf8(kept[0].message()).unwrap();
    assert!(
        stored.contains("by mx.local.test (mta) with LMTP"),
        "{stored}"
    );
    assert_eq!(kept[0].session.protocol, "LMTP");
}

#[tokio::test]
async fn lmtp_keeps_rcpt_positions_across_filters() {
    let kept: Kept<DataRequest> = Kept::default();
    // Added last, so asked first: bob is full; then another filter refuses dan (at
    // index 2 of what it sees, 3 at RCPT).
    let stages = Stages::new(sink(&kept, |req| req))
        .data_filter(refuse_where("dan@", denied))
        .data_filter(refuse_where("bob@", full));
    let (addr, _stop) = start(ListenerMode::Lmtp, stages).await;
    let replies = lmtp_transaction(
        addr,
        &[
            "ann@local.test",
            "bob@local.test",
            "cat@local.test",
            "dan@local.test",
            "eli@local.test",
        ],
        &["250 2.1.5"; 5],
        5,
    )
    .await;
    assert_eq!(
        replies,
        [
            "250 2.0.0",
            "552 5.2.2",
            "250 2.0.0",
            "550 5.7.1",
            "250 2.0.0"
        ]
    );
    let kept = kept.lock().unwrap();
    assert_eq!(
        recipients(&kept[0]),
        ["<ann@local.test>", "<cat@local.test>", "<eli@local.test>"]
    );
}

#[tokio::test]
async fn lmtp_follows_recipients_a_filter_removed_or_added_directly() {
    let kept: Kept<DataRequest> = Kept::default();
    // First (added last): edits the list as a milter does (delrcpt of bob, addrcpt of
    // zed); then cat is refused by index in the edited list.
    let stages = Stages::new(sink(&kept, |req| req))
        .data_filter(refuse_where("cat@", full))
        .data_filter(|req| {
            req.envelope
                .recipients
                .retain(|r| r.to.to_string() != "<bob@local.test>");
            req.envelope.recipients.push(Recipient {
                to: ForwardPath::parse("<zed@local.test>").unwrap(),
                params: Default::default(),
            });
            None
        });
    let (addr, _stop) = start(ListenerMode::Lmtp, stages).await;
    let replies = lmtp_transaction(
        addr,
        &["ann@local.test", "bob@local.test", "cat@local.test"],
        &["250 2.1.5"; 3],
        3,
    )
    .await;
    // bob was removed without a refusal: he gets the message's reply, as in SMTP.
    assert_eq!(replies, ["250 2.0.0", "250 2.0.0", "552 5.2.2"]);
    let kept = kept.lock().unwrap();
    assert_eq!(
        recipients(&kept[0]),
        ["<ann@local.test>", "<zed@local.test>"]
    );
}

#[tokio::test]
async fn lmtp_refuses_an_alias_when_every_address_it_expanded_to_is_refused() {
    let kept: Kept<DataRequest> = Kept::default();
    // First (added last): expands info@ to ann and bob, sales@ to dan, as the aliases
    // do (each expansion names the alias in its ORCPT); then bob and dan are refused.
    let stages = Stages::new(sink(&kept, |req| req))
        .data_filter(refuse_where("bob@", full))
        .data_filter(refuse_where("dan@", full))
        .data_filter(|req| {
            let expand = |alias: &str, targets: &[&str]| -> Vec<Recipient> {
                targets
                    .iter()
                    .map(|t| Recipient {
                        to: ForwardPath::parse(&format!("<{t}>")).unwrap(),
                        params: RcptParameters {
                            orcpt: Some(OriginalRecipient {
                                addr_type: "rfc822".into(),
                                address: alias.into(),
                            }),
                            ..Default::default()
                        },
                    })
                    .collect()
            };
            let recipients = std::mem::take(&mut req.envelope.recipients);
            for r in recipients {
                match r.to.to_string().as_str() {
                    "<info@local.test>" => req.envelope.recipients.extend(expand(
                        "info@local.test",
                        &["ann@local.test", "bob@local.test"],
                    )),
                    "<Sales@local.test>" => req
                        .envelope
                        .recipients
                        .extend(expand("Sales@local.test", &["dan@local.test"])),
                    _ => req.envelope.recipients.push(r),
                }
            }
            None
        });
    let (addr, _stop) = start(ListenerMode::Lmtp, stages).await;
    let replies = lmtp_transaction(
        addr,
        &["info@local.test", "cat@local.test", "Sales@local.test"],
        &["250 2.1.5"; 3],
        3,
    )
    .await;
    // info still reaches ann; every address of sales was refused.
    assert_eq!(replies, ["250 2.0.0", "250 2.0.0", "552 5.2.2"]);
    let kept = kept.lock().unwrap();
    assert_eq!(
        recipients(&kept[0]),
        ["<ann@local.test>", "<cat@local.test>"]
    );
}

#[tokio::test]
async fn lmtp_refusal_of_the_message_goes_to_every_recipient_left() {
    // The queue fails: the recipients not refused before get its 451.
    let failing = tower::service_fn(|_: DataRequest| async {
        Ok::<_, BoxError>(Decision::defer::<451>(
            EnhancedStatus::SYSTEM_TEMPORARY,
            "Queue unavailable",
        ))
    });
    let stages = Stages::new(failing).data_filter(refuse_where("bob@", full));
    let (addr, _stop) = start(ListenerMode::Lmtp, stages).await;
    let replies = lmtp_transaction(
        addr,
        &["ann@local.test", "bob@local.test", "cat@local.test"],
        &["250 2.1.5"; 3],
        3,
    )
    .await;
    assert_eq!(replies, ["451 4.3.0", "552 5.2.2", "451 4.3.0"]);
}

#[tokio::test]
async fn lmtp_with_every_recipient_refused_queues_nothing() {
    let kept: Kept<DataRequest> = Kept::default();
    // The filter refuses both and passes the request on anyway.
    let stages = Stages::new(sink(&kept, |req| req))
        .data_filter(refuse_where("bob@", full))
        .data_filter(refuse_where("ann@", denied));
    let (addr, _stop) = start(ListenerMode::Lmtp, stages).await;
    let replies = lmtp_transaction(
        addr,
        &["ann@local.test", "bob@local.test"],
        &["250 2.1.5"; 2],
        2,
    )
    .await;
    assert_eq!(replies, ["550 5.7.1", "552 5.2.2"]);
    assert!(kept.lock().unwrap().is_empty());
}

#[tokio::test]
async fn lmtp_refuses_helo_and_ehlo() {
    let kept: Kept<DataRequest> = Kept::default();
    let (addr, _stop) = start(ListenerMode::Lmtp, Stages::new(sink(&kept, |req| req))).await;
    let mut c = RawClient::connect(addr).await;
    assert_eq!(c.code("EHLO client.test").await, "500 5.5.1");
    assert_eq!(c.code("HELO client.test").await, "500 5.5.1");
    assert_eq!(c.code("MAIL FROM:<ann@example.net>").await, "503 5.5.1");
    let lhlo = c.cmd("LHLO client.test").await;
    assert_eq!(code_of(&lhlo), "250");
    // No AUTH on an LMTP listener.
    assert!(!lhlo.to_string().contains("AUTH"), "{lhlo}");
}

#[tokio::test]
async fn smtp_is_unchanged_one_reply_and_no_lhlo() {
    let kept: Kept<DataRequest> = Kept::default();
    let stages = Stages::new(sink(&kept, |req| req)).data_filter(|req| {
        assert!(!req.is_lmtp());
        let i = req
            .envelope
            .recipients
            .iter()
            .position(|r| r.to.to_string() == "<bob@local.test>")?;
        req.refuse_recipient(i, full());
        None
    });
    let (addr, _stop) = start(ListenerMode::Relay, stages).await;
    let mut c = RawClient::connect(addr).await;
    assert!(c.greeting.to_string().contains("ESMTP"), "{}", c.greeting);
    assert_eq!(c.code("LHLO client.test").await, "500 5.5.1");
    assert_eq!(c.code("EHLO client.test").await, "250");
    assert_eq!(c.code("MAIL FROM:<ann@example.net>").await, "250 2.1.0");
    for to in ["ann@local.test", "bob@local.test", "cat@local.test"] {
        assert_eq!(c.code(&format!("RCPT TO:<{to}>")).await, "250 2.1.5");
    }
    assert_eq!(c.code("DATA").await, "354");
    // One reply for the message.
    assert_eq!(c.code("Subject: smtp\r\n\r\nhello\r\n.").await, "250 2.0.0");
    assert_eq!(c.code("HELP").await, "214 2.0.0");
    let kept = kept.lock().unwrap();
    assert_eq!(
        recipients(&kept[0]),
        ["<ann@local.test>", "<cat@local.test>"]
    );
    let stored = String::from_utf8(kept[0].message()).unwrap();
    assert!(stored.contains("with ESMTP"), "{stored}");
}

#[tokio::test]
async fn smtp_with_every_recipient_refused_answers_the_first_refusal() {
    let kept: Kept<DataRequest> = Kept::default();
    let stages = Stages::new(sink(&kept, |req| req))
        .data_filter(refuse_where("ann@", denied))
        .data_filter(refuse_where("bob@", full));
    let (addr, _stop) = start(ListenerMode::Relay, stages).await;
    let mut c = RawClient::connect(addr).await;
    assert_eq!(c.code("EHLO client.test").await, "250");
    assert_eq!(c.code("MAIL FROM:<ann@example.net>").await, "250 2.1.0");
    assert_eq!(c.code("RCPT TO:<ann@local.test>").await, "250 2.1.5");
    assert_eq!(c.code("RCPT TO:<bob@local.test>").await, "250 2.1.5");
    assert_eq!(c.code("DATA").await, "354");
    // The first in RCPT order, though bob was refused first.
    assert_eq!(c.code("Subject: smtp\r\n\r\nhello\r\n.").await, "550 5.7.1");
    assert!(kept.lock().unwrap().is_empty());
}

#[tokio::test]
async fn lmtp_message_without_room_is_refused_for_each_recipient() {
    let kept: Kept<DataRequest> = Kept::default();
    // No memory for the content and no spill directory: the message is dropped as it
    // comes and refused at its end, once per recipient.
    let limits = Limits {
        max_message_memory: 1024,
        max_total_message_memory: 1024,
        ..Limits::default()
    };
    let (addr, _stop) = start_with(
        ListenerMode::Lmtp,
        Stages::new(sink(&kept, |req| req)),
        limits,
    )
    .await;
    let mut c = RawClient::connect(addr).await;
    assert_eq!(c.code("LHLO client.test").await, "250");
    assert_eq!(c.code("MAIL FROM:<ann@example.net>").await, "250 2.1.0");
    assert_eq!(c.code("RCPT TO:<ann@local.test>").await, "250 2.1.5");
    assert_eq!(c.code("RCPT TO:<bob@local.test>").await, "250 2.1.5");
    assert_eq!(c.code("DATA").await, "354");
    // Larger than one read of the server (64 KiB), so that content is held before its
    // end comes.
    let mut message = b"Subject: big\r\n\r\n".to_vec();
    for _ in 0..4000 {
        message.extend_from_slice(b"0123456789012345678901234567890123456789012345678\r\n");
    }
    message.extend_from_slice(b".\r\n");
    c.send(&message).await;
    let replies: Vec<String> = c.replies(2).await.iter().map(code_of).collect();
    assert_eq!(replies, ["452 4.3.1", "452 4.3.1"]);
    assert_eq!(c.code("HELP").await, "214 2.0.0");
    assert!(kept.lock().unwrap().is_empty());
}
