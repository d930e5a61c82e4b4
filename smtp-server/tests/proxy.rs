//! The PROXY protocol on a listener: headers from a trusted load balancer make the
//! client's address the session's (for the stages and the per-IP limit); anything else
//! is closed without a greeting and counted. Last, Debian's HAProxy in front of a test
//! server with `send-proxy` and `send-proxy-v2`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use smtp_client::testing::daemons::{Daemon, free_port};
use smtp_client::testing::tool;
use smtp_server::filters::{DomainSet, RelayPolicy};
use smtp_server::proxy::encode_v2;
use smtp_server::{
    BoxError, ConnectRequest, Decision, ListenerConfig, ListenerMode, ProxyProtocol, ServerConfig,
    ServerStats, Stages, filter,
};
use support::{Stop, load};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// What the connect stage saw: `(peer, local)` of every session.
type Seen = Arc<Mutex<Vec<(SocketAddr, SocketAddr)>>>;

/// A relay server at `address` behind load balancers `from`, with `max_per_ip`; it
/// records what the connect stage sees.
async fn start(
    address: &str,
    from: &[&str],
    timeout: Duration,
    max_per_ip: usize,
) -> (SocketAddr, Arc<ServerStats>, Seen, Stop) {
    let seen: Seen = Arc::default();
    let record = {
        let seen = Arc::clone(&seen);
        move |req: &mut ConnectRequest| {
            seen.lock()
                .unwrap()
                .push((req.session.peer, req.session.local));
            None
        }
    };
    let sink = tower::service_fn(|_| async { Ok::<_, BoxError>(Decision::accept()) });
    let policy = filter(RelayPolicy::new(DomainSet::new(["ours.test"]), vec![]));
    let mut config = ServerConfig {
        hostname: "mx.ours.test".into(),
        listeners: vec![ListenerConfig {
            proxy: Some(ProxyProtocol {
                load_balancers: from.iter().map(|n| n.parse().unwrap()).collect(),
                timeout,
            }),
            address: address.parse().unwrap(),
            ..support::listener(ListenerMode::Relay)
        }],
        ..ServerConfig::default()
    };
    config.limits.max_connections_per_ip = max_per_ip;
    let stages = Stages::new(sink)
        .relay_policy(policy)
        .connect_layer(filter(record));
    let server = support::start(config, stages).await;
    (server.addr(), server.stats, seen, server.stop)
}

/// Sends `first`, then reads the greeting line (`None` if the server closes first).
async fn greeting_after(tcp: &mut TcpStream, first: &[u8]) -> Option<String> {
    tcp.write_all(first).await.unwrap();
    read_reply(tcp).await
}

/// One reply's last line, or `None` when the connection closes (10 s at most).
async fn read_reply(tcp: &mut TcpStream) -> Option<String> {
    let mut text = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut byte)).await {
            Ok(Ok(1)) => text.push(byte[0]),
            _ => return None,
        }
        if text.ends_with(b"\r\n") {
            let line = String::from_utf8_lossy(&text).into_owned();
            if line.as_bytes().get(3) == Some(&b' ') {
                return Some(line.trim_end().to_owned());
            }
            text.clear();
        }
    }
}

async fn command(tcp: &mut TcpStream, line: &str) -> String {
    tcp.write_all(format!("{line}\r\n").as_bytes())
        .await
        .unwrap();
    read_reply(tcp).await.expect("a reply")
}

/// Whether the server closed the connection without sending anything.
async fn closed_silently(tcp: &mut TcpStream) -> bool {
    let mut buf = Vec::new();
    matches!(
        tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut buf)).await,
        Ok(Ok(0)) | Ok(Err(_))
    ) && buf.is_empty()
}

#[tokio::test]
async fn v1_and_v2_headers_name_the_client() {
    let (addr, stats, seen, _stop) =
        start("127.0.0.1:0", &["127.0.0.1"], Duration::from_secs(5), 20).await;
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let greeting =
        greeting_after(&mut tcp, b"PROXY TCP4 192.0.2.7 198.51.100.25 40000 25\r\n").await;
    assert!(greeting.unwrap().starts_with("220 mx.ours.test"));
    assert!(
        command(&mut tcp, "EHLO client.example")
            .await
            .starts_with("250 ")
    );

    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let header = encode_v2(
        "[2001:db8::7]:50000".parse().unwrap(),
        "[2001:db8::25]:25".parse().unwrap(),
    );
    assert!(
        greeting_after(&mut tcp, &header)
            .await
            .unwrap()
            .starts_with("220 ")
    );

    // The header and the first command in one packet: the command is not lost (the
    // client talked before the greeting, which the default triage only tags).
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let mut both = b"PROXY TCP4 192.0.2.8 198.51.100.25 40001 25\r\n".to_vec();
    both.extend_from_slice(b"EHLO client.example\r\n");
    assert!(
        greeting_after(&mut tcp, &both)
            .await
            .unwrap()
            .starts_with("220 ")
    );
    assert!(read_reply(&mut tcp).await.unwrap().starts_with("250 "));

    // UNKNOWN (and v2 LOCAL): the connection's own addresses.
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    assert!(
        greeting_after(&mut tcp, b"PROXY UNKNOWN\r\n")
            .await
            .unwrap()
            .starts_with("220 ")
    );

    let seen = seen.lock().unwrap().clone();
    let expected: Vec<(SocketAddr, SocketAddr)> = vec![
        (
            "192.0.2.7:40000".parse().unwrap(),
            "198.51.100.25:25".parse().unwrap(),
        ),
        (
            "[2001:db8::7]:50000".parse().unwrap(),
            "[2001:db8::25]:25".parse().unwrap(),
        ),
        (
            "192.0.2.8:40001".parse().unwrap(),
            "198.51.100.25:25".parse().unwrap(),
        ),
    ];
    assert_eq!(seen[..3], expected[..]);
    assert_eq!(
        seen[3].0.ip(),
        "127.0.0.1".parse::<std::net::IpAddr>().unwrap()
    );
    assert_eq!(seen[3].1, addr);
    assert_eq!(load(&stats.mode(ListenerMode::Relay).connections), 4);
}

#[tokio::test]
async fn untrusted_malformed_and_late_headers_are_closed_without_a_greeting() {
    // Only 127.0.0.3 is a load balancer: a connection from 127.0.0.1 is refused.
    let (addr, stats, seen, _stop) =
        start("127.0.0.1:0", &["127.0.0.3/32"], Duration::from_secs(5), 20).await;
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"PROXY TCP4 192.0.2.7 198.51.100.25 40000 25\r\n")
        .await
        .unwrap();
    assert!(closed_silently(&mut tcp).await);
    let relay = stats.mode(ListenerMode::Relay);
    assert_eq!(load(&relay.proxy_untrusted), 1);

    let (addr, stats, seen2, _stop2) = start(
        "127.0.0.1:0",
        &["127.0.0.0/8"],
        Duration::from_millis(300),
        20,
    )
    .await;
    let relay = stats.mode(ListenerMode::Relay);
    let mut too_long = b"PROXY UNKNOWN ".to_vec();
    too_long.resize(200, b'x');
    let mut bad_v2 = encode_v2(
        "192.0.2.1:1".parse().unwrap(),
        "192.0.2.2:2".parse().unwrap(),
    );
    bad_v2[12] = 0x11; // version 1 in a v2 header
    let mut oversized_v2 = bad_v2[..12].to_vec();
    oversized_v2.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
    for bad in [
        &b"EHLO client.example\r\n"[..],
        b"PROXY TCP4 192.0.2.7 198.51.100.25 40000\r\n",
        &too_long,
        &bad_v2,
        &oversized_v2,
    ] {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(bad).await.unwrap();
        assert!(
            closed_silently(&mut tcp).await,
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
    assert_eq!(load(&relay.proxy_malformed), 5);
    // A truncated header, then silence: closed at the timeout.
    let started = Instant::now();
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"PROXY TCP4 192.0.2.7").await.unwrap();
    assert!(closed_silently(&mut tcp).await);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(3),
        "{took:?}"
    );
    assert_eq!(load(&relay.proxy_timeout), 1);
    assert_eq!(load(&relay.connections), 0);
    assert!(seen.lock().unwrap().is_empty() && seen2.lock().unwrap().is_empty());
}

/// The per-IP connection limit counts the client named in the header, not the load
/// balancer, and an IPv6 client by its /64.
#[tokio::test]
async fn connection_limit_per_client_behind_the_proxy() {
    let (addr, stats, _seen, _stop) =
        start("127.0.0.1:0", &["127.0.0.1"], Duration::from_secs(5), 1).await;
    let header = |port: u16, client: &str| {
        format!("PROXY TCP4 {client} 198.51.100.25 {port} 25\r\n").into_bytes()
    };
    let mut first = TcpStream::connect(addr).await.unwrap();
    assert!(
        greeting_after(&mut first, &header(1000, "192.0.2.7"))
            .await
            .unwrap()
            .starts_with("220 ")
    );
    let mut second = TcpStream::connect(addr).await.unwrap();
    let refused = greeting_after(&mut second, &header(1001, "192.0.2.7"))
        .await
        .unwrap();
    assert!(refused.starts_with("421 4.7.0"), "{refused}");
    let mut other = TcpStream::connect(addr).await.unwrap();
    assert!(
        greeting_after(&mut other, &header(1002, "192.0.2.8"))
            .await
            .unwrap()
            .starts_with("220 ")
    );
    // An IPv6 client is counted by its /64: another address of the same /64 is the
    // same client (it cannot take every connection with addresses of its own); the
    // next /64 is another.
    let header6 = |port: u16, client: &str| {
        format!("PROXY TCP6 {client} 2001:db8::25 {port} 25\r\n").into_bytes()
    };
    let mut v6 = TcpStream::connect(addr).await.unwrap();
    assert!(
        greeting_after(&mut v6, &header6(1003, "2001:db8:1:2::a"))
            .await
            .unwrap()
            .starts_with("220 ")
    );
    let mut same_64 = TcpStream::connect(addr).await.unwrap();
    let refused = greeting_after(&mut same_64, &header6(1004, "2001:db8:1:2:ffff::b"))
        .await
        .unwrap();
    assert!(refused.starts_with("421 4.7.0"), "{refused}");
    let mut next_64 = TcpStream::connect(addr).await.unwrap();
    assert!(
        greeting_after(&mut next_64, &header6(1005, "2001:db8:1:3::a"))
            .await
            .unwrap()
            .starts_with("220 ")
    );
    assert_eq!(
        load(&stats.mode(ListenerMode::Relay).connections_refused),
        2
    );
}

/// HAProxy's configuration: a v1 and a v2 frontend, each forwarding to `server` from
/// the source address 127.0.0.3.
fn haproxy_config(v1: SocketAddr, v2: SocketAddr, server: SocketAddr) -> String {
    format!(
        "global\n    maxconn 100\n\
         defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 30s\n    timeout server 30s\n\
         frontend v1\n    bind {v1}\n    default_backend smtp_v1\n\
         backend smtp_v1\n    server s1 {server} send-proxy source 127.0.0.3\n\
         frontend v2\n    bind {v2}\n    default_backend smtp_v2\n\
         backend smtp_v2\n    server s1 {server} send-proxy-v2 source 127.0.0.3\n"
    )
}

/// A connection to `to` from the local address `from`.
async fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    socket.connect(to).await.unwrap()
}

/// Debian's HAProxy in front: the stages see the client (127.0.0.2), not HAProxy
/// (127.0.0.3), with `send-proxy` and `send-proxy-v2`; a direct connection from an
/// address that is not a load balancer is closed without a greeting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_haproxy() {
    let Some(haproxy) = tool("haproxy") else {
        return;
    };
    let (addr, stats, seen, _stop) =
        start("127.0.0.1:0", &["127.0.0.3/32"], Duration::from_secs(5), 20).await;
    let (v1, v2) = (
        SocketAddr::from(([127, 0, 0, 1], free_port())),
        SocketAddr::from(([127, 0, 0, 1], free_port())),
    );
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("haproxy.cfg");
    std::fs::write(&cfg, haproxy_config(v1, v2, addr)).unwrap();
    let mut daemon_command = std::process::Command::new(haproxy);
    daemon_command.arg("-f").arg(&cfg).arg("-db");
    let daemon = tokio::task::spawn_blocking(move || {
        let d = Daemon::spawn("haproxy", daemon_command, v1, dir, Duration::from_secs(10));
        // Both frontends up.
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(v2).is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        d
    })
    .await
    .unwrap();
    // Daemon::spawn's probe of v1 went through HAProxy too: forget it.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let probes = seen.lock().unwrap().len();

    for frontend in [v1, v2] {
        let mut tcp = connect_from("127.0.0.2", frontend).await;
        let client = tcp.local_addr().unwrap();
        let greeting = read_reply(&mut tcp)
            .await
            .expect("a greeting through HAProxy");
        assert!(greeting.starts_with("220 mx.ours.test"), "{greeting}");
        assert!(
            command(&mut tcp, "EHLO client.example")
                .await
                .starts_with("250 ")
        );
        assert!(
            command(&mut tcp, "MAIL FROM:<a@client.example>")
                .await
                .starts_with("250 ")
        );
        assert!(command(&mut tcp, "QUIT").await.starts_with("221 "));
        let (peer, local) = *seen.lock().unwrap().last().unwrap();
        assert_eq!(
            peer, client,
            "the client's address and port, through {frontend}"
        );
        assert_eq!(local, frontend, "the address the client connected to");
    }
    assert_eq!(seen.lock().unwrap().len(), probes + 2);

    // Straight to the server from 127.0.0.1: not a load balancer.
    let mut direct = TcpStream::connect(addr).await.unwrap();
    assert!(closed_silently(&mut direct).await);
    assert!(load(&stats.mode(ListenerMode::Relay).proxy_untrusted) >= 1);
    drop(daemon);
}
