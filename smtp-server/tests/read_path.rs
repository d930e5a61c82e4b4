//! The connection's read path at its edges, over real TCP: input that arrives a byte at
//! a time, commands and message content pipelined in one write across the read sizes
//! (4 KiB between commands, 64 KiB during DATA), the `221` before the close, and the
//! local address the stages see.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::sync::Arc;

use smtp_client::ClientStream;
use smtp_client::testing::{RawClient, code_of};
use smtp_server::{DataRequest, SessionInfo, Stages};

/// What the data stage saw of each message: the session and the message's bytes.
type Seen = support::Kept<(Arc<SessionInfo>, Vec<u8>)>;

async fn start() -> (SocketAddr, Seen) {
    start_on("127.0.0.1:0").await
}

/// A relay server listening on `address` that keeps what it accepts.
async fn start_on(address: &str) -> (SocketAddr, Seen) {
    let seen = Seen::default();
    let sink = support::sink(&seen, |req: DataRequest| {
        let bytes = req.body.to_vec();
        (req.session, bytes)
    });
    let stages = support::relay_for_loopback(Stages::new(sink));
    let mut config = support::relay_config("read.test");
    config.listeners[0].address = address.parse().unwrap();
    let addr = support::start_detached(config, stages).await;
    (addr, seen)
}

/// `size` bytes of content in CRLF lines of varied lengths, some starting with a dot
/// (dot-stuffed on the wire): the content as sent, and as the server must keep it.
fn content(size: usize) -> (Vec<u8>, Vec<u8>) {
    let (mut wire, mut kept) = (Vec::new(), Vec::new());
    wire.extend_from_slice(b"Subject: read path\r\n\r\n");
    kept.extend_from_slice(b"Subject: read path\r\n\r\n");
    let mut i = 0usize;
    while kept.len() < size {
        let len = 1 + (i * 37) % 200;
        let mut line: Vec<u8> = (0..len).map(|j| b'a' + ((i + j) % 26) as u8).collect();
        if i.is_multiple_of(7) {
            line.insert(0, b'.');
        }
        kept.extend_from_slice(&line);
        kept.extend_from_slice(b"\r\n");
        if line[0] == b'.' {
            wire.push(b'.');
        }
        wire.extend_from_slice(&line);
        wire.extend_from_slice(b"\r\n");
        i += 1;
    }
    (wire, kept)
}

/// Sends `bytes` one byte per write, with Nagle off and a yield after each, so that the
/// server's reads see them a few at a time.
async fn trickle(client: &mut RawClient, bytes: &[u8]) {
    for b in bytes {
        client.send(std::slice::from_ref(b)).await;
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn commands_and_content_a_byte_at_a_time_arrive_whole() {
    let (addr, seen) = start().await;
    let mut c = RawClient::connect(addr).await;
    if let ClientStream::Plain(tcp) = &c.stream {
        tcp.set_nodelay(true).unwrap();
    }
    trickle(&mut c, b"EHLO trickle.test\r\n").await;
    assert_eq!(code_of(&c.reply().await), "250");
    trickle(&mut c, b"MAIL FROM:<a@b.test>\r\n").await;
    assert_eq!(code_of(&c.reply().await), "250 2.1.0");
    trickle(&mut c, b"RCPT TO:<c@d.test>\r\n").await;
    assert_eq!(code_of(&c.reply().await), "250 2.1.5");
    trickle(&mut c, b"DATA\r\n").await;
    assert_eq!(code_of(&c.reply().await), "354");
    let (wire, kept) = content(3000);
    trickle(&mut c, &wire).await;
    // The end of data split too: CR, LF, dot, CR, LF in five writes.
    trickle(&mut c, b".\r\n").await;
    assert_eq!(code_of(&c.reply().await), "250 2.0.0");
    trickle(&mut c, b"QUIT\r\n").await;
    assert_eq!(code_of(&c.reply().await), "221 2.0.0");
    assert!(c.is_closed().await, "closed after 221");
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 1);
    assert!(seen[0].1 == kept, "the content arrived byte-exact");
}

#[tokio::test]
async fn pipelined_commands_and_a_large_body_in_one_write_are_all_answered() {
    let (addr, seen) = start().await;
    let mut c = RawClient::connect(addr).await;
    // Two transactions and QUIT in one write: the first message (200 KB) crosses
    // several 64 KiB reads, its end and the commands after it share a read, and the
    // first read (4 KiB between commands) holds the commands and the start of content.
    let (first_wire, first_kept) = content(200 * 1024);
    let (second_wire, second_kept) = content(5000);
    let mut burst = Vec::new();
    burst.extend_from_slice(
        b"EHLO burst.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nDATA\r\n",
    );
    burst.extend_from_slice(&first_wire);
    burst.extend_from_slice(
        b".\r\nMAIL FROM:<e@b.test>\r\nRCPT TO:<f@d.test>\r\nRCPT TO:<g@d.test>\r\nDATA\r\n",
    );
    burst.extend_from_slice(&second_wire);
    burst.extend_from_slice(b".\r\nQUIT\r\n");
    c.send(&burst).await;
    let replies: Vec<String> = c.replies(20).await.iter().map(code_of).collect();
    assert_eq!(
        replies,
        [
            "250",
            "250 2.1.0",
            "250 2.1.5",
            "354",
            "250 2.0.0",
            "250 2.1.0",
            "250 2.1.5",
            "250 2.1.5",
            "354",
            "250 2.0.0",
            "221 2.0.0",
        ]
    );
    assert!(c.is_closed().await, "closed after 221");
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 2);
    assert!(
        seen[0].1 == first_kept,
        "the 200 KB message arrived byte-exact"
    );
    assert!(
        seen[1].1 == second_kept,
        "the second message arrived byte-exact"
    );
}

/// One message on a new connection to `addr`; QUIT answered.
async fn one_message(addr: SocketAddr) {
    let mut c = RawClient::connect(addr).await;
    assert_eq!(c.code("EHLO local.test").await, "250");
    assert_eq!(c.code("MAIL FROM:<a@b.test>").await, "250 2.1.0");
    assert_eq!(c.code("RCPT TO:<c@d.test>").await, "250 2.1.5");
    assert_eq!(c.code("DATA").await, "354");
    assert_eq!(c.code("Subject: here\r\n\r\nhi\r\n.").await, "250 2.0.0");
    assert_eq!(c.code("QUIT").await, "221 2.0.0");
    assert!(c.is_closed().await, "closed after 221");
}

#[tokio::test]
async fn the_stages_see_the_address_the_client_connected_to() {
    // Bound to 127.0.0.1 (not a wildcard): the listener's address is the connection's,
    // port included.
    let (addr, seen) = start().await;
    one_message(addr).await;
    assert_eq!(seen.lock().unwrap()[0].0.local, addr);

    // Bound to the wildcard: the address the client connected to, not 0.0.0.0.
    let (wildcard, seen) = start_on("0.0.0.0:0").await;
    assert!(wildcard.ip().is_unspecified());
    let addr = SocketAddr::from(([127, 0, 0, 1], wildcard.port()));
    one_message(addr).await;
    assert_eq!(seen.lock().unwrap()[0].0.local, addr);
}
