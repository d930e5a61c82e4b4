//! `[[outbound.destination]]` entries that match MX host names (`mx = ...`), and the
//! certificate name of a destination (`tls_name`), through the real `mta` binary: the
//! recipient domains' MX records are served by a loopback DNS server the test starts
//! (`dns_mx::testing::TestDns`), and the MX host is either a small SMTP server in a
//! thread of the test, which records every connection (its EHLO name, how many are
//! open at once) and can hold its reply to the first message until the test releases
//! it, or a second `mta` with STARTTLS and a certificate from a test CA.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use dns_mx::testing::TestDns;

use support::outbound::{Ca, Running, deferred, mx_host, sender_config};
use support::{
    domain_maildir_files, free_address, queue_cmd, serve, serve_logging, smtp_send, write,
};

/// What the peer answers.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    /// Takes every message; the reply to the first message's data waits until
    /// [`Peer::release`].
    HoldFirst,
    /// `421 4.7.0 Too many messages` as its greeting, then it closes.
    Throttle,
}

/// What the peer saw.
#[derive(Default)]
struct Seen {
    /// The EHLO name of each connection, in order.
    connections: Vec<String>,
    /// Connections open now, and the most ever open at once.
    open: usize,
    most_open: usize,
    /// Messages received.
    messages: usize,
    /// The first message is held (its data read, the reply not sent).
    holding: bool,
    released: bool,
}

/// An SMTP server on 127.0.0.1 in threads of the test.
struct Peer {
    port: u16,
    seen: Arc<(Mutex<Seen>, Condvar)>,
}

impl Peer {
    fn start(mode: Mode) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new((Mutex::new(Seen::default()), Condvar::new()));
        let shared = Arc::clone(&seen);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let seen = Arc::clone(&shared);
                std::thread::spawn(move || {
                    {
                        let mut s = seen.0.lock().unwrap();
                        s.open += 1;
                        s.most_open = s.most_open.max(s.open);
                    }
                    let _ = serve_one(stream, mode, &seen);
                    seen.0.lock().unwrap().open -= 1;
                    seen.1.notify_all();
                });
            }
        });
        Self { port, seen }
    }

    /// Waits (20 s at most, then fails) until `done` holds of what the peer saw.
    fn wait(&self, what: &str, done: impl Fn(&Seen) -> bool) {
        let start = Instant::now();
        let mut s = self.seen.0.lock().unwrap();
        while !done(&s) {
            assert!(start.elapsed() < Duration::from_secs(20), "{what}");
            s = self
                .seen
                .1
                .wait_timeout(s, Duration::from_millis(100))
                .unwrap()
                .0;
        }
    }

    /// Lets the held first message be answered.
    fn release(&self) {
        self.seen.0.lock().unwrap().released = true;
        self.seen.1.notify_all();
    }

    fn connections(&self) -> Vec<String> {
        self.seen.0.lock().unwrap().connections.clone()
    }

    fn most_open(&self) -> usize {
        self.seen.0.lock().unwrap().most_open
    }
}

fn serve_one(
    stream: std::net::TcpStream,
    mode: Mode,
    seen: &(Mutex<Seen>, Condvar),
) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut out = stream.try_clone()?;
    let mut input = BufReader::new(stream);
    if mode == Mode::Throttle {
        seen.0.lock().unwrap().connections.push(String::new());
        seen.1.notify_all();
        out.write_all(b"421 4.7.0 Too many messages, slow down\r\n")?;
        return Ok(());
    }
    out.write_all(b"220 peer.test ESMTP\r\n")?;
    let mut line = String::new();
    loop {
        line.clear();
        if input.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let verb = line.get(..4).unwrap_or("").to_ascii_uppercase();
        let reply: &[u8] = match verb.as_str() {
            "EHLO" | "HELO" => {
                seen.0
                    .lock()
                    .unwrap()
                    .connections
                    .push(line[4..].trim().to_owned());
                seen.1.notify_all();
                b"250 peer.test\r\n"
            }
            "MAIL" => b"250 2.1.0 Ok\r\n",
            "RCPT" => b"250 2.1.5 Ok\r\n",
            "RSET" | "NOOP" => b"250 2.0.0 Ok\r\n",
            "QUIT" => {
                out.write_all(b"221 2.0.0 Bye\r\n")?;
                return Ok(());
            }
            "DATA" => {
                out.write_all(b"354 Go ahead\r\n")?;
                loop {
                    line.clear();
                    if input.read_line(&mut line)? == 0 {
                        return Ok(());
                    }
                    if line == ".\r\n" {
                        break;
                    }
                }
                let mut s = seen.0.lock().unwrap();
                if s.messages == 0 && !s.holding {
                    s.holding = true;
                    seen.1.notify_all();
                    while !s.released {
                        s = seen.1.wait(s).unwrap();
                    }
                }
                s.messages += 1;
                seen.1.notify_all();
                b"250 2.0.0 Ok: queued\r\n"
            }
            _ => b"502 5.5.1 Unknown command\r\n",
        };
        out.write_all(reply)?;
    }
}

/// A DNS server: a.test and b.test both have MX 10 mx1.pool.test, c.test has MX 10
/// mx.c.test; the hosts are at 127.0.0.1. sts.test has MX 10 mx.sts.test at 127.0.0.2
/// (where [`mx_host`] listens).
fn dns(runtime: &tokio::runtime::Runtime) -> TestDns {
    let zone = |origin: &str, records: &str| {
        format!("$ORIGIN {origin}.\n$TTL 300\n@ IN SOA ns root 1 3600 600 86400 60\n{records}")
    };
    let zones = [
        zone("a.test", "@ IN MX 10 mx1.pool.test.\n"),
        zone("b.test", "@ IN MX 10 mx1.pool.test.\n"),
        zone("pool.test", "mx1 IN A 127.0.0.1\n"),
        zone("c.test", "@ IN MX 10 mx\nmx IN A 127.0.0.1\n"),
        zone("sts.test", "@ IN MX 10 mx\nmx IN A 127.0.0.2\n"),
    ];
    let zones: Vec<&str> = zones.iter().map(String::as_str).collect();
    runtime.block_on(TestDns::start(&zones))
}

/// The DNS server and the runtime it runs on.
struct World {
    dir: tempfile::TempDir,
    dns: Option<TestDns>,
    _runtime: tokio::runtime::Runtime,
}

impl World {
    fn start() -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        Self {
            dir: tempfile::tempdir().unwrap(),
            dns: Some(dns(&runtime)),
            _runtime: runtime,
        }
    }

    /// The sending `mta`'s configuration in `name` under the test's directory: it
    /// relays for loopback, asks the test DNS, `outbound` appended to `[outbound]`.
    fn sender_config(&self, name: &str, outbound: &str) -> PathBuf {
        let dir = self.dir.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let dns = self.dns.as_ref().unwrap().addr();
        sender_config(&dir, Some(&dns), &format!("mta_sts = \"off\"\n{outbound}"))
    }
}

impl Drop for World {
    fn drop(&mut self) {
        // The DNS server's tasks end with the runtime they run on.
        drop(self.dns.take());
    }
}

fn message(to: &str) -> String {
    format!("From: <me@sender.test>\r\nTo: <{to}>\r\nSubject: to {to}\r\n\r\nbody\r\n")
}

/// Waits (20 s at most, then fails) until the file `log` has a line with all of
/// `texts`.
fn wait_for_log(log: &Path, texts: &[&str]) {
    let start = Instant::now();
    loop {
        let seen = std::fs::read_to_string(log).unwrap_or_default();
        if seen.lines().any(|l| texts.iter().all(|t| l.contains(t))) {
            return;
        }
        assert!(
            start.elapsed().as_secs() < 20,
            "no line with {texts:?} in the log:\n{seen}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Starts the sender of `config` with its debug log of remote delivery in `log`.
fn serve_with_log(config: &Path, log: &Path) -> (Running, String) {
    let file = std::fs::File::create(log).unwrap();
    let (child, addr) = serve_logging(
        config,
        &[],
        "warn,mta_bin::delivery::remote=debug",
        std::process::Stdio::from(file),
    );
    (Running(Some(child)), addr)
}

/// (a) Two recipient domains whose MX is the same host, matched by an `mx` entry with
/// `max_connections = 1`: one connection at a time for both. The peer holds the first
/// message (to a.test); the delivery to b.test, which has a domain slot of its own,
/// waits for the MX entry's slot (the log says so), and once the first is answered
/// goes over the same connection, kept open: the peer saw one connection in all.
/// Without the entry, the delivery to b.test opens a second connection while the first
/// is held.
#[test]
fn domains_whose_mx_an_entry_matches_share_its_connection_limit() {
    let world = World::start();
    let peer = Peer::start(Mode::HoldFirst);
    let config = world.sender_config(
        "shared",
        &format!(
            "port = {}\n[[outbound.destination]]\nmx = \"*.pool.test\"\nmax_connections = 1\n",
            peer.port
        ),
    );
    let log = world.dir.path().join("shared.log");
    let (sender, addr) = serve_with_log(&config, &log);
    smtp_send(
        &addr,
        "me@sender.test",
        &["alice@a.test"],
        &message("alice@a.test"),
    );
    peer.wait("the first message held", |s| s.holding);
    smtp_send(
        &addr,
        "me@sender.test",
        &["bob@b.test"],
        &message("bob@b.test"),
    );
    wait_for_log(
        &log,
        &[
            "MX *.pool.test: taking one of its 1 connection slots",
            "domain=b.test",
        ],
    );
    peer.release();
    peer.wait("both messages received", |s| s.messages == 2);
    sender.stop();
    assert_eq!(
        peer.connections(),
        ["sender.test"],
        "one connection for both"
    );
    assert_eq!(peer.most_open(), 1);

    // Without the entry: a second connection while the first message is held.
    let peer = Peer::start(Mode::HoldFirst);
    let config = world.sender_config("unshared", &format!("port = {}\n", peer.port));
    let (child, addr) = serve(&config);
    let sender = Running(Some(child));
    smtp_send(
        &addr,
        "me@sender.test",
        &["alice@a.test"],
        &message("alice@a.test"),
    );
    peer.wait("the first message held", |s| s.holding);
    smtp_send(
        &addr,
        "me@sender.test",
        &["bob@b.test"],
        &message("bob@b.test"),
    );
    peer.wait("a second connection at once", |s| s.open == 2);
    peer.release();
    peer.wait("both messages received", |s| s.messages == 2);
    sender.stop();
    assert_eq!(peer.most_open(), 2);
}

/// (a) The traffic-shaping backoff of an `mx` entry is shared too: after the MX host
/// answers a.test's delivery with `421`, mail to b.test (same MX host) is deferred
/// without connecting, with the entry named; mail to c.test (another MX host, the same
/// peer behind it) is not held back and connects.
#[test]
fn a_throttling_mx_host_backs_off_every_domain_it_serves() {
    let world = World::start();
    let peer = Peer::start(Mode::Throttle);
    let config = world.sender_config(
        "throttled",
        &format!(
            "port = {}\nbackoff = \"1h\"\nbackoff_max = \"2h\"\n\
             [[outbound.destination]]\nmx = \"*.pool.test\"\n",
            peer.port
        ),
    );
    let (child, addr) = serve(&config);
    let sender = Running(Some(child));
    smtp_send(
        &addr,
        "me@sender.test",
        &["alice@a.test"],
        &message("alice@a.test"),
    );
    let first = deferred(&config, "alice@a.test");
    assert!(first.contains("421 4.7.0 Too many messages"), "{first}");
    assert_eq!(peer.connections().len(), 1);
    smtp_send(
        &addr,
        "me@sender.test",
        &["bob@b.test"],
        &message("bob@b.test"),
    );
    let second = deferred(&config, "bob@b.test");
    let bob = second
        .lines()
        .skip_while(|l| !l.contains("bob@b.test"))
        .nth(1);
    assert!(
        second.contains("451 4.7.0 MX *.pool.test: traffic shaping: backing off"),
        "{second}"
    );
    assert_eq!(peer.connections().len(), 1, "{bob:?}");
    smtp_send(
        &addr,
        "me@sender.test",
        &["carol@c.test"],
        &message("carol@c.test"),
    );
    let third = deferred(&config, "carol@c.test");
    assert_eq!(peer.connections().len(), 2, "{third}");
    sender.stop();
}

/// (c) An `mx` entry's `port` and `helo` are used for connections to the hosts it
/// matches, whatever the domain; `[outbound] port` (nothing listens there) for the
/// others.
#[test]
fn an_mx_entry_sets_the_port_of_its_hosts() {
    let world = World::start();
    let peer = Peer::start(Mode::HoldFirst);
    peer.release();
    let dead = free_address();
    let dead_port = dead.rsplit_once(':').unwrap().1;
    let config = world.sender_config(
        "port",
        &format!(
            "port = {dead_port}\n[[outbound.destination]]\nmx = \"mx1.pool.test\"\nport = {}\n\
             helo = \"pool.sender.test\"\n",
            peer.port
        ),
    );
    let (child, addr) = serve(&config);
    let sender = Running(Some(child));
    smtp_send(
        &addr,
        "me@sender.test",
        &["alice@a.test"],
        &message("alice@a.test"),
    );
    smtp_send(
        &addr,
        "me@sender.test",
        &["bob@b.test"],
        &message("bob@b.test"),
    );
    peer.wait("both messages received", |s| s.messages == 2);
    // c.test's MX is not matched: [outbound] port, where nothing listens.
    smtp_send(
        &addr,
        "me@sender.test",
        &["carol@c.test"],
        &message("carol@c.test"),
    );
    let list = deferred(&config, "carol@c.test");
    assert!(
        list.contains(&format!(":{dead_port}")) || list.contains("refused"),
        "{list}"
    );
    sender.stop();
    assert!(
        peer.connections().iter().all(|e| e == "pool.sender.test"),
        "{:?}",
        peer.connections()
    );
}

/// (b) `tls_name`: the MX host (an `mta`) presents a certificate for other.test from a
/// trusted CA. With `tls = "required"` and `tls_name = "other.test"` the mail is
/// delivered, over TLS; with `tls = "required"` alone it waits (`4.7.5`: the
/// certificate does not name mx.sts.test) and is not delivered.
#[test]
fn a_certificate_is_verified_for_tls_name() {
    let world = World::start();
    let ca = Ca::new("destinations test CA");
    write(world.dir.path(), "ca.pem", &ca.pem);
    let (mx, mx_port) = mx_host(&world.dir.path().join("mx"), &ca, &["other.test"]);
    let ca_file = world.dir.path().join("ca.pem");
    let ca_file = ca_file.display();
    let named = world.sender_config(
        "named",
        &format!(
            "port = {mx_port}\nca_file = \"{ca_file}\"\n[[outbound.destination]]\n\
             mx = \"mx.sts.test\"\ntls = \"required\"\ntls_name = \"other.test\"\n"
        ),
    );
    let (child, addr) = serve(&named);
    let sender = Running(Some(child));
    smtp_send(
        &addr,
        "me@sender.test",
        &["alice@sts.test"],
        &message("alice@sts.test"),
    );
    let got = domain_maildir_files(&world.dir.path().join("mx"), "sts.test", "alice", 1);
    assert_eq!(
        got.len(),
        1,
        "not delivered: {}",
        queue_cmd(&named, &["list"]).1
    );
    assert!(got[0].contains("ESMTPS"), "{}", got[0]);
    sender.stop();

    let unnamed = world.sender_config(
        "unnamed",
        &format!(
            "port = {mx_port}\nca_file = \"{ca_file}\"\n[[outbound.destination]]\n\
             mx = \"mx.sts.test\"\ntls = \"required\"\n"
        ),
    );
    let (child, addr) = serve(&unnamed);
    let sender = Running(Some(child));
    smtp_send(
        &addr,
        "me@sender.test",
        &["bob@sts.test"],
        &message("bob@sts.test"),
    );
    let list = deferred(&unnamed, "bob@sts.test");
    assert!(list.contains("4.7.5"), "{list}");
    assert!(domain_maildir_files(&world.dir.path().join("mx"), "sts.test", "bob", 0).is_empty());
    sender.stop();
    mx.stop();
}

/// `mta check-config` refuses an entry with both `match` and `mx`, and `relay` on an
/// `mx` entry, with the entry's line.
#[test]
fn check_config_refuses_an_entry_with_match_and_mx() {
    let world = World::start();
    let config = world.sender_config(
        "refused",
        "[[outbound.destination]]\nmatch = \"a.test\"\nmx = \"mx1.pool.test\"\n\
         [[outbound.destination]]\nmx = \"*.pool.test\"\nrelay = \"gw.test\"\n",
    );
    let text = std::fs::read_to_string(&config).unwrap();
    let line = |n: usize| {
        text.lines()
            .enumerate()
            .filter(|(_, l)| *l == "[[outbound.destination]]")
            .nth(n)
            .unwrap()
            .0
            + 1
    };
    let (code, _, stderr) = support::run_with("check-config", &config);
    assert_eq!(code, Some(2), "{stderr}");
    for expected in [
        format!(
            "line {}: [[outbound.destination]] (entry 1): give match (a recipient domain) or \
             mx (an MX host name), not both",
            line(0)
        ),
        format!(
            "line {}: [[outbound.destination]] mx = \"*.pool.test\": relay is for a recipient \
             domain (match)",
            line(1)
        ),
    ] {
        assert!(stderr.contains(&expected), "{expected} in {stderr}");
    }
}
