//! Per-destination policies, traffic shaping and source addresses through the real
//! `mta`: receiving peers on loopback (a small SMTP server in a thread each) reached
//! through `[[outbound.destination]] relay = "127.0.0.1:PORT"`, so no DNS is involved.
//! Each peer records every connection: the client's address and its EHLO name.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::outbound::sender_config;
use support::{queue_cmd, serve, smtp_send, terminate};

/// What a peer answers.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    /// `421 4.7.0 Too many messages` as its greeting, then it closes.
    Throttle,
    /// Greets, then answers RCPT with `451 4.7.1 Rate limit exceeded`.
    RateLimitRcpt,
    /// Takes every message.
    Accept,
}

/// One connection as the peer saw it.
#[derive(Clone, Debug)]
struct Seen {
    client_ip: String,
    ehlo: String,
}

struct Peer {
    port: u16,
    connections: Arc<Mutex<Vec<Seen>>>,
    messages: Arc<Mutex<usize>>,
}

impl Peer {
    fn start(mode: Mode) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let connections = Arc::new(Mutex::new(Vec::new()));
        let messages = Arc::new(Mutex::new(0));
        let (c, m) = (Arc::clone(&connections), Arc::clone(&messages));
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let (c, m) = (Arc::clone(&c), Arc::clone(&m));
                std::thread::spawn(move || {
                    let _ = serve_one(stream, mode, &c, &m);
                });
            }
        });
        Self {
            port,
            connections,
            messages,
        }
    }

    fn connections(&self) -> Vec<Seen> {
        self.connections.lock().unwrap().clone()
    }

    fn messages(&self) -> usize {
        *self.messages.lock().unwrap()
    }

    /// Waits (at most 60 s, then fails) until `n` messages were received.
    fn wait_for(&self, n: usize) {
        for _ in 0..600 {
            if self.messages() >= n {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("the peer received {} of {n} messages", self.messages());
    }
}

fn serve_one(
    stream: std::net::TcpStream,
    mode: Mode,
    connections: &Mutex<Vec<Seen>>,
    messages: &Mutex<usize>,
) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(120)))?;
    let client_ip = stream.peer_addr()?.ip().to_string();
    let mut out = stream.try_clone()?;
    let mut input = BufReader::new(stream);
    if mode == Mode::Throttle {
        connections.lock().unwrap().push(Seen {
            client_ip,
            ehlo: String::new(),
        });
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
                connections.lock().unwrap().push(Seen {
                    client_ip: client_ip.clone(),
                    ehlo: line[4..].trim().to_owned(),
                });
                b"250 peer.test\r\n"
            }
            "MAIL" => b"250 2.1.0 Ok\r\n",
            "RCPT" if mode == Mode::RateLimitRcpt => {
                b"451 4.7.1 Rate limit exceeded, please slow down\r\n"
            }
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
                *messages.lock().unwrap() += 1;
                b"250 2.0.0 Ok: queued\r\n"
            }
            _ => b"502 5.5.1 Unknown command\r\n",
        };
        out.write_all(reply)?;
    }
}

/// The sending `mta`: relays for loopback, no DNS-based checks, `extra` appended to
/// `[outbound]`.
fn config(dir: &Path, outbound: &str) -> std::path::PathBuf {
    sender_config(
        dir,
        None,
        &format!(
            r#"tls = "disabled"
mta_sts = "off"
{outbound}"#
        ),
    )
}

/// The `last_error` of each deferred message in the queue.
fn deferred_errors(config: &Path) -> Vec<String> {
    let (code, out, err) = queue_cmd(config, &["list", "--json", "--state", "deferred"]);
    assert_eq!(code, 0, "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["last_error"].as_str().unwrap_or("").to_owned())
        .collect()
}

fn message(to: &str, n: usize) -> String {
    format!("From: <me@sender.test>\r\nTo: <{to}>\r\nSubject: {n}\r\n\r\nbody {n}\r\n")
}

/// A destination that answers `421` at the greeting, and one that answers RCPT with
/// `451 4.7.1 Rate limit exceeded`, are backed off: after the first throttled
/// connections (at most one per delivery slot, `max_connections`) their messages are
/// deferred without connecting, while another destination takes all of its messages.
#[test]
fn a_throttling_destination_slows_down_while_another_keeps_full_speed() {
    const N: usize = 8;
    let dir = tempfile::tempdir().unwrap();
    let slow = Peer::start(Mode::Throttle);
    let rate = Peer::start(Mode::RateLimitRcpt);
    let fast = Peer::start(Mode::Accept);
    let metrics = support::free_address();
    let cfg = config(
        dir.path(),
        &format!(
            r#"backoff = "1h"
backoff_max = "2h"
[metrics]
address = "{metrics}"
[[outbound.destination]]
match = "slow.test"
relay = "127.0.0.1:{}"
max_connections = 2
[[outbound.destination]]
match = "rate.test"
relay = "127.0.0.1:{}"
max_connections = 1
[[outbound.destination]]
match = "fast.test"
relay = "127.0.0.1:{}"
"#,
            slow.port, rate.port, fast.port
        ),
    );
    let sample = |name: &str| {
        let value = support::metric(&metrics, name).unwrap_or_else(|| panic!("no {name}"));
        value as usize
    };
    let (child, addr) = serve(&cfg);
    for n in 0..N {
        for to in ["a@slow.test", "b@rate.test", "c@fast.test"] {
            smtp_send(&addr, "me@sender.test", &[to], &message(to, n));
        }
    }
    fast.wait_for(N);
    // Every message to the throttling destinations had its attempt.
    let mut errors = Vec::new();
    for _ in 0..600 {
        errors = deferred_errors(&cfg);
        if errors.len() == 2 * N && errors.iter().all(|e| !e.is_empty()) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let (throttled_total, held_total) = (
        sample("mta_outbound_throttled_total"),
        sample("mta_outbound_shaping_total{action=\"backoff_deferred\"}"),
    );
    terminate(child);
    assert_eq!(fast.messages(), N);
    assert_eq!(rate.messages(), 0);
    assert_eq!(errors.len(), 2 * N, "{errors:?}");
    let count = |text: &str| errors.iter().filter(|e| e.contains(text)).count();
    for (peer, domain, throttled, slots) in [
        (&slow, "slow.test", "421 4.7.0 Too many", 2),
        (&rate, "rate.test", "451 4.7.1 Rate limit", 1),
    ] {
        let shaped = count(&format!("4.7.0 {domain}: traffic shaping"));
        let throttled = count(throttled);
        assert_eq!(shaped + throttled, N, "{domain}: {errors:?}");
        // At most one connection per delivery slot before the backoff began.
        let attempts = peer.connections().len();
        assert!(
            (1..=slots).contains(&attempts),
            "{domain}: {attempts} connections: {errors:?}"
        );
        assert_eq!(throttled, attempts, "{domain}: {errors:?}");
    }
    // The metrics count the same: each throttling reply, each delivery held back.
    let shaped = count("traffic shaping");
    assert_eq!(throttled_total, 2 * N - shaped, "{errors:?}");
    assert_eq!(held_total, shaped, "{errors:?}");
}

/// Mail from a sender domain with a pool leaves from the pool's addresses in turn,
/// each with its EHLO name; a destination's own source wins over the pool; other mail
/// leaves from the global source.
#[test]
fn source_addresses_follow_the_sender_domain_and_the_destination() {
    let dir = tempfile::tempdir().unwrap();
    let peer = Peer::start(Mode::Accept);
    let port = peer.port;
    let cfg = config(
        dir.path(),
        &format!(
            r#"max_per_destination = 5
source = {{ address = "127.0.0.4", helo = "out4.sender.test" }}
[[outbound.destination]]
match = "*.test"
relay = "127.0.0.1:{port}"
[[outbound.destination]]
match = "own.example"
relay = "127.0.0.1:{port}"
source = {{ address = "127.0.0.5", helo = "out5.sender.test" }}
[[outbound.sender_source]]
domain = "pool.test"
addresses = [{{ address = "127.0.0.2", helo = "out2.sender.test" }}, "127.0.0.3"]
helo = "pool.sender.test"
"#
        ),
    );
    let (child, addr) = serve(&cfg);
    let mut expected = 0;
    for (from, to) in [
        ("me@pool.test", "a@dest.test"),
        ("me@pool.test", "b@dest.test"),
        ("me@sender.test", "c@dest.test"),
        ("me@pool.test", "d@own.example"),
    ] {
        smtp_send(&addr, from, &[to], &message(to, 0));
        expected += 1;
        peer.wait_for(expected);
    }
    terminate(child);
    let seen: Vec<(String, String)> = peer
        .connections()
        .into_iter()
        .map(|s| (s.client_ip, s.ehlo))
        .collect();
    let pairs = |list: &[(&str, &str)]| -> Vec<(String, String)> {
        list.iter()
            .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
            .collect()
    };
    assert_eq!(
        seen,
        pairs(&[
            ("127.0.0.2", "out2.sender.test"),
            ("127.0.0.3", "pool.sender.test"),
            ("127.0.0.4", "out4.sender.test"),
            ("127.0.0.5", "out5.sender.test"),
        ])
    );
}

#[test]
fn check_config_refuses_bad_destination_entries() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        r#"backoff = "0s"
[[outbound.destination]]
match = "a.test"
max_connections = 0
[[outbound.destination]]
match = "a.test"
[[outbound.destination]]
match = "*"
[[outbound.sender_source]]
domain = "b.test"
addresses = []
"#,
    );
    let (code, _, stderr) = support::run_with("check-config", &cfg);
    assert_eq!(code, Some(2), "{stderr}");
    for expected in [
        "[outbound] backoff: must be more than 0",
        "[[outbound.destination]] match = \"a.test\": max_connections must be at least 1",
        "[[outbound.destination]] match = \"a.test\": given twice",
        "[[outbound.destination]] match = \"*\": give a domain",
        "[[outbound.sender_source]] domain = \"b.test\": give at least one address",
    ] {
        assert!(stderr.contains(expected), "{expected} in {stderr}");
    }
}

/// A destination's `port` replaces `[outbound] port` for its hosts (here an address
/// literal, which needs no DNS); other destinations keep `[outbound] port`.
#[test]
fn a_destination_port_is_used_for_its_hosts() {
    let dir = tempfile::tempdir().unwrap();
    let peer = Peer::start(Mode::Accept);
    let dead = support::free_address();
    let dead_port = dead.rsplit_once(':').unwrap().1;
    let cfg = config(
        dir.path(),
        &format!(
            r#"port = {dead_port}
[[outbound.destination]]
match = "[127.0.0.1]"
port = {}
helo = "literal.sender.test"
"#,
            peer.port
        ),
    );
    let (child, addr) = serve(&cfg);
    smtp_send(
        &addr,
        "me@sender.test",
        &["a@[127.0.0.1]"],
        &message("a@[127.0.0.1]", 0),
    );
    peer.wait_for(1);
    terminate(child);
    let seen = peer.connections();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].ehlo, "literal.sender.test");
}
