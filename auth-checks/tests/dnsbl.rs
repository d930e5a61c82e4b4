//! The DNS defences at the door, black-box: an smtp-server on 127.0.0.1:0 with the
//! blocklist and reverse-DNS layers, asking a dnsmasq on a loopback port that serves the
//! lists and the PTR and A records of each test (started in the foreground by
//! `smtp_client::testing::daemons::dnsmasq`, killed on drop; `.ci/deps/dnsmasq.sh`
//! installs it), or a nameserver that never answers.
//!
//! The blocklist tests' client is 127.0.0.1 (the server's peer address over loopback),
//! so the listings are `1.0.0.127.<zone>`: RFC 5782's test point, 127.0.0.2, would need
//! the client's socket bound to that address, which `RawClient` does not do, and the
//! zones are our own, so listing 127.0.0.1 in them harms nobody. The reverse-DNS tests
//! (and the dead-server test, which has both) present their clients to the stages as
//! 192.0.2.10 (see [`serve_as`]): hickory answers the PTR of every 127.x address itself.
//! dnsmasq answers NXDOMAIN for any other name under `.test` and `in-addr.arpa`
//! (`--local`), which is how a list says "not listed".

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use auth_checks::{
    DnsStats, DnsblFilter, DnsblSettings, Mode, RdnsFilter, RdnsSettings, Require, Verifier,
};
use dns_mx::{MxConfig, MxResolver};
use smtp_client::testing::daemons::{Daemon, dnsmasq, dnsmasq_queries};
use smtp_client::testing::{RawClient, code_of};
use smtp_server::filters::{DomainSet, Received, RelayPolicy};
use smtp_server::{
    BoxError, DataRequest, Decision, ListenerConfig, ListenerMode, Server, ServerConfig, Stages,
    StreamServer, filter,
};

/// A verifier (resolver, negative cache) asking only `nameserver`.
fn verifier(nameserver: SocketAddr) -> Verifier {
    let resolver = MxResolver::new(MxConfig {
        nameservers: vec![nameserver],
        timeout: Duration::from_secs(10),
        ..MxConfig::default()
    })
    .unwrap();
    Verifier::new(resolver.resolver().clone(), "mx.test")
}

/// A relay server for `example.test` (nobody trusted) with `Received:` and `layers`,
/// keeping the messages it accepts.
struct TestServer {
    addr: SocketAddr,
    messages: Arc<Mutex<Vec<Vec<u8>>>>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn serve(layers: impl FnOnce(Stages) -> Stages) -> TestServer {
    serve_as(None, layers).await
}

/// [`serve`]; with `peer`, the stages see every client as `peer` instead of 127.0.0.1
/// (each accepted connection goes to a `StreamServer` with that address, as a PROXY
/// protocol listener would hand it on). Reverse DNS needs this: the resolver answers
/// the PTR of any 127.x.y.z itself with `localhost` (RFC 6761 §6.3), never asking
/// the test's nameserver.
async fn serve_as(peer: Option<SocketAddr>, layers: impl FnOnce(Stages) -> Stages) -> TestServer {
    let messages: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    let kept = Arc::clone(&messages);
    let sink = tower::service_fn(move |req: DataRequest| {
        let kept = Arc::clone(&kept);
        async move {
            kept.lock().unwrap().push(req.message());
            Ok::<_, BoxError>(Decision::accept())
        }
    });
    let stages = Stages::new(sink).data_layer(filter(Received::new("mx.test")));
    let stages = layers(stages).relay_policy(filter(RelayPolicy::new(
        DomainSet::new(["example.test"]),
        vec![],
    )));
    let config = ServerConfig {
        hostname: "mx.test".into(),
        listeners: vec![ListenerConfig {
            address: "127.0.0.1:0".parse().unwrap(),
            mode: ListenerMode::Relay,
            proxy: None,
        }],
        ..ServerConfig::default()
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let addr = match peer {
        None => {
            let server = Server::bind(config, stages).await.unwrap();
            let addr = server.local_addrs()[0].1;
            tokio::spawn(server.run(async {
                let _ = stopped.await;
            }));
            addr
        }
        Some(peer) => {
            let server = StreamServer::new(config, ListenerMode::Relay, stages).unwrap();
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(async move {
                let accept = async {
                    while let Ok((stream, _)) = listener.accept().await {
                        let server = server.clone();
                        tokio::spawn(async move { server.serve(stream, peer, addr).await });
                    }
                };
                tokio::select! {
                    () = accept => {}
                    _ = stopped => {}
                }
            });
            addr
        }
    };
    TestServer {
        addr,
        messages,
        _stop: stop,
    }
}

/// The blocklist layers for `lists` under `mode`, counting into `stats`.
fn dnsbl(
    verifier: &Verifier,
    mode: Mode,
    lists: &[&str],
    stats: &Arc<DnsStats>,
) -> impl FnOnce(Stages) -> Stages {
    let settings = DnsblSettings {
        mode,
        lists: lists.iter().map(|l| l.parse().unwrap()).collect(),
        ..DnsblSettings::default()
    };
    let layers = DnsblFilter::new(verifier, &settings)
        .time_budget(Duration::from_secs(2))
        .count_into(Arc::clone(stats));
    move |stages: Stages| {
        stages
            .connect_layer(layers.connect_layer())
            .mail_layer(layers.mail_layer())
            .rcpt_layer(layers.rcpt_layer())
            .data_layer(layers.data_layer())
    }
}

/// dnsmasq with `records`, and a server with the blocklist layers for `lists` under
/// `mode` asking it: the daemon, the layers' counters and the server; `None` (skip)
/// when dnsmasq is not installed.
async fn with_dnsbl(
    records: &[&str],
    mode: Mode,
    lists: &[&str],
) -> Option<(Daemon, Arc<DnsStats>, TestServer)> {
    let dns = dnsmasq(records)?;
    let stats = Arc::new(DnsStats::default());
    let v = verifier(dns.address);
    let server = serve(dnsbl(&v, mode, lists, &stats)).await;
    Some((dns, stats, server))
}

/// The reverse-DNS layers.
fn rdns(
    verifier: &Verifier,
    mode: Mode,
    require: Require,
    stats: &Arc<DnsStats>,
) -> impl FnOnce(Stages) -> Stages {
    let layers = RdnsFilter::new(verifier, RdnsSettings { mode, require })
        .time_budget(Duration::from_secs(2))
        .count_into(Arc::clone(stats));
    move |stages: Stages| {
        stages
            .connect_layer(layers.connect_layer())
            .rcpt_layer(layers.rcpt_layer())
    }
}

/// EHLO and MAIL FROM (both must pass), then RCPT TO:<bob@example.test>: its reply.
async fn up_to_rcpt(c: &mut RawClient, from: &str) -> smtp_proto::Reply {
    assert_eq!(c.code("EHLO client.test").await, "250");
    assert_eq!(c.code(&format!("MAIL FROM:<{from}>")).await, "250 2.1.0");
    c.cmd("RCPT TO:<bob@example.test>").await
}

/// DATA with a small message, accepted.
async fn data(c: &mut RawClient) {
    assert_eq!(c.code("DATA").await, "354");
    let reply = c.cmd("Subject: hi\r\n\r\nhello\r\n.").await;
    assert_eq!(reply.code().as_u16(), 250, "{reply:?}");
}

/// Whether the reply is `code status text`.
fn assert_reply(reply: &smtp_proto::Reply, code: &str, text: &str) {
    assert_eq!(code_of(reply), code, "{reply:?}");
    assert_eq!(reply.text(), text, "{reply:?}");
}

fn message(server: &TestServer, i: usize) -> String {
    String::from_utf8_lossy(&server.messages.lock().unwrap()[i]).into_owned()
}

/// A new session to `server` from `from`, up to its first recipient ([`up_to_rcpt`]):
/// the client, still connected, and the reply to RCPT.
async fn at_rcpt(server: &TestServer, from: &str) -> (RawClient, smtp_proto::Reply) {
    let mut c = RawClient::connect(server.addr).await;
    let rcpt = up_to_rcpt(&mut c, from).await;
    (c, rcpt)
}

/// A new session from `from` whose recipient and message are accepted; the client,
/// still connected.
async fn deliver(server: &TestServer, from: &str) -> RawClient {
    let (mut c, rcpt) = at_rcpt(server, from).await;
    assert_eq!(code_of(&rcpt), "250 2.1.5");
    data(&mut c).await;
    c
}

/// A session from alice@sender.test whose message is accepted and QUIT answered; the
/// first message `server` kept has `header` (a whole field, folded as stored).
async fn assert_delivered_with(server: &TestServer, header: &str) {
    let mut c = deliver(server, "alice@sender.test").await;
    assert_eq!(c.code("QUIT").await, "221 2.0.0");
    let stored = message(server, 0);
    assert!(stored.contains(header), "{stored}");
}

/// Whether the first message `server` kept starts with a `Received:` field naming
/// the client as `shown`.
fn assert_received_from(server: &TestServer, shown: &str) {
    let stored = message(server, 0);
    assert!(
        stored.starts_with(&format!("Received: from client.test ({shown})\r\n")),
        "{stored}"
    );
}

#[tokio::test]
async fn a_listed_client_is_refused_at_rcpt() {
    let Some((_dns, stats, server)) = with_dnsbl(
        &["--address=/1.0.0.127.zen.test/127.0.0.2"],
        Mode::Enforce,
        &["zen.test=127.0.0.[2..11]*3", "other.test"],
    )
    .await
    else {
        return;
    };
    let (mut c, rcpt) = at_rcpt(&server, "alice@sender.test").await;
    assert_reply(
        &rcpt,
        "554 5.7.1",
        "Service unavailable; client [127.0.0.1] blocked using zen.test",
    );
    // Every recipient of the transaction, from the verdict already made.
    let again = c.cmd("RCPT TO:<carol@example.test>").await;
    assert_eq!(code_of(&again), "554 5.7.1");
    assert_eq!(stats.list("zen.test").hits, 1);
    assert_eq!(stats.list("other.test").hits, 0);
    assert_eq!(stats.list("other.test").queries, 1);
    assert_eq!(stats.verdicts(), (0, 0, 1));
}

#[tokio::test]
async fn an_allowlisted_client_passes_although_listed() {
    let Some((_dns, stats, server)) = with_dnsbl(
        &[
            "--address=/1.0.0.127.zen.test/127.0.0.2",
            "--address=/1.0.0.127.wl.test/127.0.10.2",
        ],
        Mode::Enforce,
        &["zen.test*3", "wl.test=127.0.[0..255].[1..3]*-5"],
    )
    .await
    else {
        return;
    };
    assert_delivered_with(
        &server,
        "X-DNSBL: clean; score=-2; threshold=1;\r\n\tzen.test=127.0.0.2 (client [127.0.0.1], weight 3);\r\n\twl.test=127.0.10.2 (client [127.0.0.1], weight -5)\r\n",
    )
    .await;
    assert_eq!(stats.list("wl.test").hits, 1);
    assert_eq!(stats.verdicts(), (1, 0, 0));
}

#[tokio::test]
async fn an_answer_in_127_255_255_never_blocks() {
    // Even with a filter that would accept any code.
    let lists = ["busy.test=127.[0..255].[0..255].[0..255]*10"];
    let Some((dns, stats, server)) = with_dnsbl(
        &["--address=/1.0.0.127.busy.test/127.255.255.254"],
        Mode::Enforce,
        &lists,
    )
    .await
    else {
        return;
    };
    for _ in 0..2 {
        let (_c, rcpt) = at_rcpt(&server, "alice@sender.test").await;
        assert_eq!(code_of(&rcpt), "250 2.1.5");
    }
    let busy = stats.list("busy.test");
    assert_eq!((busy.hits, busy.refused, busy.queries), (0, 2, 2));
    // The second session's answer came from the cache (TTL 60 s).
    assert_eq!(dnsmasq_queries(&dns, "1.0.0.127.busy.test"), 1);
}

#[tokio::test]
async fn tag_mode_passes_adds_the_header_and_counts() {
    let Some((_dns, stats, server)) = with_dnsbl(
        &["--address=/1.0.0.127.zen.test/127.0.0.4"],
        Mode::Tag,
        &["zen.test=127.0.0.[2..11]"],
    )
    .await
    else {
        return;
    };
    assert_delivered_with(
        &server,
        "X-DNSBL: listed; score=1; threshold=1;\r\n\tzen.test=127.0.0.4 (client [127.0.0.1], weight 1)\r\n",
    )
    .await;
    assert_eq!(stats.verdicts(), (0, 1, 0));
    assert_eq!(stats.list("zen.test").hits, 1);
    {
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(DnsStatsRef(Arc::clone(&stats))));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains("dnsbl_hits_total{list=\"zen.test\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("dnsbl_verdicts_total{verdict=\"tagged\"} 1\n"),
            "{text}"
        );
    }
}

/// The shared stats as a collector (the server keeps the `Arc`).
#[derive(Debug)]
struct DnsStatsRef(Arc<DnsStats>);

impl prometheus_client::collector::Collector for DnsStatsRef {
    fn encode(
        &self,
        encoder: prometheus_client::encoding::DescriptorEncoder<'_>,
    ) -> std::fmt::Result {
        prometheus_client::collector::Collector::encode(&*self.0, encoder)
    }
}

#[tokio::test]
async fn the_sender_domain_against_a_domain_list() {
    let Some((_dns, stats, server)) = with_dnsbl(
        &["--address=/spam.example.dbl.test/127.0.1.2"],
        Mode::Enforce,
        &["sender:dbl.test=127.0.1.[2..99]*2"],
    )
    .await
    else {
        return;
    };
    let (mut c, rcpt) = at_rcpt(&server, "x@spam.example").await;
    assert_reply(
        &rcpt,
        "554 5.7.1",
        "Service unavailable; sender domain [spam.example] blocked using dbl.test",
    );
    // Another sender in the same session: a new verdict.
    assert_eq!(c.code("RSET").await, "250 2.0.0");
    assert_eq!(c.code("MAIL FROM:<x@fine.example>").await, "250 2.1.0");
    assert_eq!(c.code("RCPT TO:<bob@example.test>").await, "250 2.1.5");
    assert_eq!(stats.verdicts(), (1, 0, 1));
}

/// The client the stages see in the reverse-DNS tests (see [`serve_as`]).
const CLIENT: Option<SocketAddr> = Some(SocketAddr::new(
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 10)),
    50000,
));

#[tokio::test]
async fn forward_confirmed_reverse_dns() {
    // Confirmed: the PTR name resolves back to the client; Received: shows it.
    let Some(dns) = dnsmasq(&["--host-record=mail.good.test,192.0.2.10"]) else {
        return;
    };
    let stats = Arc::new(DnsStats::default());
    let v = verifier(dns.address);
    let server = serve_as(CLIENT, rdns(&v, Mode::Enforce, Require::Confirmed, &stats)).await;
    let mut c = deliver(&server, "a@sender.test").await;
    assert_eq!(c.code("QUIT").await, "221 2.0.0");
    assert_received_from(&server, "mail.good.test [192.0.2.10]");
    assert_eq!(stats.rdns(), (1, 0, 0, 0));
    drop(server);
    drop(dns);

    // Unconfirmed: the PTR name resolves elsewhere.
    let Some(dns) = dnsmasq(&[
        "--ptr-record=10.2.0.192.in-addr.arpa,mail.bad.test",
        "--host-record=mail.bad.test,192.0.2.99",
    ]) else {
        return;
    };
    let v = verifier(dns.address);
    // A name is enough when only a PTR is required; Received: says unknown.
    let (refusing, lenient) = refused_then_passed(
        &v,
        &stats,
        (Mode::Enforce, Require::Confirmed),
        (Mode::Enforce, Require::Ptr),
    )
    .await;
    assert_eq!(stats.rdns(), (1, 2, 0, 0));
    assert_eq!(stats.rdns_refused(), 1);
    drop((refusing, lenient, dns));

    // None: no PTR at all.
    let Some(dns) = dnsmasq(&[]) else {
        return;
    };
    let v = verifier(dns.address);
    // Tag (the default) passes, and Received: says unknown.
    let _servers = refused_then_passed(
        &v,
        &stats,
        (Mode::Enforce, Require::Ptr),
        (Mode::Tag, Require::Ptr),
    )
    .await;
    assert_eq!(stats.rdns(), (1, 2, 2, 0));
    assert_eq!(stats.rdns_refused(), 2);
}

/// A resolver asking only `nameserver` (kept by a test to empty its cache).
fn resolver(nameserver: SocketAddr) -> hickory_resolver::TokioResolver {
    let resolver = MxResolver::new(MxConfig {
        nameservers: vec![nameserver],
        timeout: Duration::from_secs(10),
        ..MxConfig::default()
    })
    .unwrap();
    resolver.resolver().clone()
}

#[tokio::test]
async fn a_listed_client_seen_within_the_ttl_is_refused_from_the_cache() {
    // dnsmasq answers with a TTL of 60 s.
    let Some(dns) = dnsmasq(&["--address=/1.0.0.127.zen.test/127.0.0.2"]) else {
        return;
    };
    let resolver = resolver(dns.address);
    let v = Verifier::new(resolver.clone(), "mx.test");
    let stats = Arc::new(DnsStats::default());
    let server = serve(dnsbl(&v, Mode::Enforce, &["zen.test"], &stats)).await;
    let blocked = "Service unavailable; client [127.0.0.1] blocked using zen.test";
    let (_c, rcpt) = at_rcpt(&server, "alice@sender.test").await;
    assert_reply(&rcpt, "554 5.7.1", blocked);
    // The name server gone and the resolver's own cache emptied: only the layers' cache
    // of answers still knows the listing.
    drop(dns);
    resolver.clear_cache();
    let (_c, rcpt) = at_rcpt(&server, "alice@sender.test").await;
    assert_reply(&rcpt, "554 5.7.1", blocked);
    assert_eq!(stats.list("zen.test").hits, 2);
}

#[tokio::test]
async fn a_client_seen_within_the_ttl_is_named_from_the_cache() {
    // dnsmasq answers with a TTL of 60 s.
    let Some(dns) = dnsmasq(&["--host-record=mail.good.test,192.0.2.10"]) else {
        return;
    };
    let resolver = resolver(dns.address);
    let v = Verifier::new(resolver.clone(), "mx.test");
    let stats = Arc::new(DnsStats::default());
    let server = serve_as(CLIENT, rdns(&v, Mode::Enforce, Require::Confirmed, &stats)).await;
    let mut c = deliver(&server, "a@sender.test").await;
    assert_eq!(c.code("QUIT").await, "221 2.0.0");
    assert_received_from(&server, "mail.good.test [192.0.2.10]");
    // The name server gone and the resolver's own cache emptied: only the layers' cache
    // of answers can still name (and confirm) the client.
    drop(dns);
    resolver.clear_cache();
    let mut c = deliver(&server, "a@sender.test").await;
    assert_eq!(c.code("QUIT").await, "221 2.0.0");
    let second = message(&server, 1);
    assert!(
        second.starts_with("Received: from client.test (mail.good.test [192.0.2.10])\r\n"),
        "{second}"
    );
    assert_eq!(stats.rdns(), (2, 0, 0, 0));
}

/// The client ([`CLIENT`]) against two servers with the reverse-DNS layers: with
/// `refusing` (mode, requirement), its recipient is deferred for want of a hostname;
/// with `passing`, its message is taken and `Received:` names it `unknown`. The two
/// servers, each with its client still connected.
async fn refused_then_passed(
    v: &Verifier,
    stats: &Arc<DnsStats>,
    refusing: (Mode, Require),
    passing: (Mode, Require),
) -> ((TestServer, RawClient), (TestServer, RawClient)) {
    let refusing = serve_as(CLIENT, rdns(v, refusing.0, refusing.1, stats)).await;
    let (c, rcpt) = at_rcpt(&refusing, "a@sender.test").await;
    assert_reply(
        &rcpt,
        "450 4.7.25",
        "Client host rejected: cannot find your hostname, [192.0.2.10]",
    );
    let passing = serve_as(CLIENT, rdns(v, passing.0, passing.1, stats)).await;
    let delivered = deliver(&passing, "a@sender.test").await;
    assert_received_from(&passing, "unknown [192.0.2.10]");
    ((refusing, c), (passing, delivered))
}

/// A nameserver that never answers, on UDP and TCP: queries to it time out.
async fn dead_nameserver() -> (SocketAddr, tokio::net::UdpSocket, tokio::net::TcpListener) {
    loop {
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        if let Ok(udp) = tokio::net::UdpSocket::bind(addr).await {
            return (addr, udp, tcp);
        }
    }
}

#[tokio::test]
async fn a_dead_dns_server_costs_a_session_at_most_the_budget() {
    let (addr, _udp, _tcp) = dead_nameserver().await;
    let stats = Arc::new(DnsStats::default());
    let v = verifier(addr);
    let lists = ["a.test", "b.test", "c.test", "d.test*2", "sender:e.test"];
    let budget = Duration::from_secs(2);
    let with_dnsbl = dnsbl(&v, Mode::Enforce, &lists, &stats);
    let with_rdns = rdns(&v, Mode::Enforce, Require::Ptr, &stats);
    let server = serve_as(CLIENT, |s| with_rdns(with_dnsbl(s))).await;

    let started = Instant::now();
    let mut c = RawClient::connect(server.addr).await;
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "the greeting waited for DNS"
    );
    let rcpt = up_to_rcpt(&mut c, "a@sender.test").await;
    let waited = started.elapsed();
    assert_eq!(code_of(&rcpt), "250 2.1.5");
    assert!(
        waited < budget + Duration::from_millis(700),
        "RCPT after {waited:?}"
    );
    data(&mut c).await;
    assert_eq!(c.code("QUIT").await, "221 2.0.0");
    assert!(started.elapsed() < budget + Duration::from_secs(1));
    assert_eq!(stats.budget_exhausted(), 1);

    // The lists (and the PTR) failed moments ago: the next session does not wait.
    let started = Instant::now();
    let (_c, rcpt) = at_rcpt(&server, "a@sender.test").await;
    assert_eq!(code_of(&rcpt), "250 2.1.5");
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "second RCPT after {:?}",
        started.elapsed()
    );
    for zone in ["a.test", "b.test", "c.test", "d.test", "e.test"] {
        assert_eq!(stats.list(zone).hits, 0, "{zone}");
        assert!(
            stats.list(zone).errors >= 1,
            "{zone}: {:?}",
            stats.list(zone)
        );
    }
    assert_eq!(stats.verdicts(), (2, 0, 0));
}
