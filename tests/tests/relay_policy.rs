//! Who may send where, and who gets notified: no open relay through an address literal,
//! no mail loop through our own address, delivery notifications only to mailboxes that
//! exist and never on a stranger's request (backscatter).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use mta_tests::{DOMAIN, Options, RawClient, TestMta, code_of};
use smtp_server::ListenerMode::{Relay, Submission};

const AUTH_PLAIN_ALICE: &str = "AUTH PLAIN AGFsaWNlQGV4YW1wbGUudGVzdABzZWNyZXQ="; // \0alice@example.test\0secret

async fn ehlo(c: &mut RawClient) {
    assert_eq!(c.cmd("EHLO client.test").await.code().as_u16(), 250);
}

/// A submission client logged in as alice.
async fn alice(t: &TestMta) -> RawClient {
    let c = t.connect(Submission).await;
    let mut c = t.starttls(c).await;
    ehlo(&mut c).await;
    assert_eq!(c.code(AUTH_PLAIN_ALICE).await, "235 2.7.0");
    c
}

/// MAIL, one RCPT and a short message; the reply to the final dot.
async fn send(c: &mut RawClient, mail: &str, rcpt: &str) -> String {
    assert_eq!(c.code(&format!("MAIL FROM:{mail}")).await, "250 2.1.0");
    assert_eq!(
        c.code(&format!("RCPT TO:{rcpt}")).await,
        "250 2.1.5",
        "{rcpt}"
    );
    assert_eq!(c.code("DATA").await, "354");
    c.send(b"Subject: notify me\r\n\r\nx\r\n.\r\n").await;
    code_of(&c.reply().await)
}

/// Waits until the queue is empty (10 s at most).
async fn drained(t: &TestMta) {
    let queue = t.mta.as_ref().unwrap().queue();
    let start = Instant::now();
    while !queue.is_empty() && start.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(queue.is_empty(), "the queue did not drain");
}

fn notifications(t: &TestMta) -> u64 {
    let stats = t.mta.as_ref().unwrap().queue().stats();
    stats.notifications.load(Ordering::Relaxed)
}

/// `RCPT TO:<user@[127.0.0.1]>` to the listener's own address got `250` from anyone
/// and was then relayed out (or looped). A literal is local only when it is listed,
/// and then its mailboxes are checked like a domain's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_literal_is_local_only_when_listed() {
    let t = TestMta::start("").await;
    let mut c = t.connect(Relay).await;
    ehlo(&mut c).await;
    assert_eq!(c.code("MAIL FROM:<a@far.test>").await, "250 2.1.0");
    for rcpt in [
        "<user@[127.0.0.1]>",
        "<postmaster@[127.0.0.1]>",
        "<x@[IPv6:::1]>",
        "<x@[IPv6:::ffff:127.0.0.1]>",
    ] {
        assert_eq!(
            c.code(&format!("RCPT TO:{rcpt}")).await,
            "554 5.7.1",
            "{rcpt}"
        );
    }

    let t = TestMta::start_opts(Options {
        more_domains: &["[127.0.0.1]"],
        ..Options::default()
    })
    .await;
    let mut c = t.connect(Relay).await;
    ehlo(&mut c).await;
    assert_eq!(c.code("MAIL FROM:<a@far.test>").await, "250 2.1.0");
    assert_eq!(c.code("RCPT TO:<user@[127.0.0.1]>").await, "550 5.1.1");
    assert_eq!(c.code("RCPT TO:<bob@[127.0.0.1]>").await, "550 5.1.1");
    assert_eq!(
        c.code("RCPT TO:<postmaster@[127.0.0.1]>").await,
        "250 2.1.5"
    );
    assert_eq!(c.code("DATA").await, "354");
    c.send(b"Subject: literal\r\n\r\nx\r\n.\r\n").await;
    assert_eq!(code_of(&c.reply().await), "250 2.0.0");
    let folder = t.dir.path().join("maildir/[127.0.0.1]/postmaster/new");
    let start = Instant::now();
    while mta_tests::read_dir_files(&folder).is_empty() && start.elapsed() < Duration::from_secs(10)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        mta_tests::read_dir_files(&folder).len(),
        1,
        "delivered here"
    );
}

/// Mail a login sends to our own address literal (not listed as local) would come
/// back to us: the delivery sees our own greeting, and the sender gets one bounce
/// with `5.4.6` (it looped 51 times, then bounced).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_to_our_own_address_bounces_as_a_loop() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let extra = format!("[outbound]\nport = {port}\ntls = \"disabled\"\n");
    let t = TestMta::start_opts(Options {
        relay_port: port,
        extra: &extra,
        ..Options::default()
    })
    .await;
    let mut c = alice(&t).await;
    assert_eq!(
        send(&mut c, "<alice@example.test>", "<x@[127.0.0.1]>").await,
        "250 2.0.0"
    );
    let mail = t.wait_for_mail("alice", 1).await;
    assert_eq!(mail.len(), 1, "one bounce");
    let bounce = String::from_utf8_lossy(&mail[0]);
    assert!(bounce.contains("Status: 5.4.6"), "{bounce}");
    assert!(bounce.contains("loops back to myself"), "{bounce}");
    drained(&t).await;
    let stats = t.mta.as_ref().unwrap().queue().stats();
    assert_eq!(
        stats.enqueued.load(Ordering::Relaxed),
        2,
        "the message and its bounce, nothing more"
    );
}

/// A notification goes only to a mailbox that exists: a success notice for a local
/// sender that does not exist made its Maildir. And success notices are not for
/// strangers to ask for: `NOTIFY=SUCCESS` from a client that neither logged in nor is
/// trusted would mail a copy of its message to any address it names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notices_go_only_to_known_mailboxes_and_not_on_a_strangers_request() {
    let t = TestMta::start("").await;
    let bob = format!("<bob@{DOMAIN}> NOTIFY=SUCCESS,FAILURE");
    let mut stranger = t.connect(Relay).await;
    ehlo(&mut stranger).await;
    for from in [
        "<newbox@example.test> RET=FULL",
        "<victim@far.test> RET=FULL",
    ] {
        assert_eq!(send(&mut stranger, from, &bob).await, "250 2.0.0");
    }
    t.wait_for_mail("bob", 2).await;
    drained(&t).await;
    assert_eq!(notifications(&t), 0, "no notice on a stranger's request");

    // A login may ask: the notice for a known sender arrives, the one for an unknown
    // local sender is dropped without making a mailbox.
    let mut c = alice(&t).await;
    assert_eq!(
        send(&mut c, "<carol@example.test>", &bob).await,
        "250 2.0.0"
    );
    assert_eq!(
        send(&mut c, "<newbox@example.test> RET=FULL", &bob).await,
        "250 2.0.0"
    );
    let carol = t.wait_for_mail("carol", 1).await;
    assert!(String::from_utf8_lossy(&carol[0]).contains("Action: delivered"));
    drained(&t).await;
    assert_eq!(notifications(&t), 2);
    assert!(
        !t.dir.path().join("maildir/example.test/newbox").exists(),
        "no Maildir made for newbox"
    );
}
