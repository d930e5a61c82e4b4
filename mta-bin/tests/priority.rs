//! Priorities (RFC 6710) through the real `mta`: `MT-PRIORITY` is offered and checked,
//! and when deliveries are saturated (one at a time, to a slow next hop that takes one
//! connection at a time) a message a login submits with `MT-PRIORITY=6` is delivered
//! before the backlog queued ahead of it, and a login with `[[account]] priority = -4`
//! goes after it. Python's smtplib is the submitting client.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::{RawClient, block_on, python, serve, terminate, write};

/// A next hop on loopback that takes one connection at a time and records the
/// `Subject:` of each message in the order received. It holds the first message (no
/// reply to its end of data) until `release` is sent, saying `held` when it does.
struct SlowPeer {
    address: String,
    subjects: Arc<Mutex<Vec<String>>>,
    held: mpsc::Receiver<()>,
    release: mpsc::Sender<()>,
}

impl SlowPeer {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let subjects = Arc::new(Mutex::new(Vec::new()));
        let (held_tx, held) = mpsc::channel();
        let (release, release_rx) = mpsc::channel();
        let recorded = Arc::clone(&subjects);
        std::thread::spawn(move || {
            let mut gate = Some((held_tx, release_rx));
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                // One connection at a time: the next is accepted when this one ends.
                let _ = serve_one(stream, &recorded, &mut gate);
            }
        });
        Self {
            address,
            subjects,
            held,
            release,
        }
    }

    fn subjects(&self) -> Vec<String> {
        self.subjects.lock().unwrap().clone()
    }

    /// Waits (at most 60 s, then fails) until `n` messages were received.
    fn wait_for(&self, n: usize) -> Vec<String> {
        for _ in 0..600 {
            let subjects = self.subjects();
            if subjects.len() >= n {
                return subjects;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("the peer received only {:?}", self.subjects());
    }
}

type Gate = Option<(mpsc::Sender<()>, mpsc::Receiver<()>)>;

/// One SMTP session, as a plain server without extensions.
fn serve_one(
    stream: std::net::TcpStream,
    subjects: &Mutex<Vec<String>>,
    gate: &mut Gate,
) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(120)))?;
    let mut out = stream.try_clone()?;
    let mut input = BufReader::new(stream);
    out.write_all(b"220 peer.test ESMTP\r\n")?;
    let mut line = String::new();
    loop {
        line.clear();
        if input.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let verb = line.get(..4).unwrap_or("").to_ascii_uppercase();
        let reply: &[u8] = match verb.as_str() {
            "EHLO" | "HELO" => b"250 peer.test\r\n",
            "MAIL" => b"250 2.1.0 Ok\r\n",
            "RCPT" => b"250 2.1.5 Ok\r\n",
            "RSET" | "NOOP" => b"250 2.0.0 Ok\r\n",
            "QUIT" => {
                out.write_all(b"221 2.0.0 Bye\r\n")?;
                return Ok(());
            }
            "DATA" => {
                out.write_all(b"354 Go ahead\r\n")?;
                let mut subject = String::from("(none)");
                loop {
                    line.clear();
                    if input.read_line(&mut line)? == 0 {
                        return Ok(());
                    }
                    if line == ".\r\n" {
                        break;
                    }
                    if let Some(s) = line.strip_prefix("Subject: ") {
                        subject = s.trim_end().to_owned();
                    }
                }
                subjects.lock().unwrap().push(subject);
                if let Some((held, release)) = gate.take() {
                    let _ = held.send(());
                    let _ = release.recv_timeout(Duration::from_secs(60));
                }
                b"250 2.0.0 Ok: queued\r\n"
            }
            _ => b"502 5.5.1 Unknown command\r\n",
        };
        out.write_all(reply)?;
    }
}

/// Submits one message with Python's smtplib: STARTTLS, login, MAIL with `mail_options`
/// (space-separated, may be empty). Prints whether MT-PRIORITY was offered after TLS.
const SUBMIT: &str = r#"
import smtplib, ssl, sys
host, port, user, subject, options = sys.argv[1:6]
s = smtplib.SMTP(host, int(port), timeout=60)
s.starttls(context=ssl._create_unverified_context())
s.ehlo()
print("offered" if s.has_extn("mt-priority") else "not offered")
s.login(user, "secret")
message = f"From: <{user}>\r\nTo: <boss@far.test>\r\nSubject: {subject}\r\n\r\nbody\r\n"
s.sendmail(user, ["boss@far.test"], message, mail_options=options.split())
s.quit()
"#;

fn submit(addr: &str, user: &str, subject: &str, options: &str) {
    let (host, port) = addr.rsplit_once(':').unwrap();
    let out = python(SUBMIT, &[host, port, user, subject, options]);
    assert_eq!(out.trim(), "offered", "{subject}");
}

#[test]
fn a_high_priority_message_overtakes_a_saturated_backlog() {
    let dir = tempfile::tempdir().unwrap();
    let peer = SlowPeer::start();
    let d = dir.path().display();
    let cfg = write(
        dir.path(),
        "mta.toml",
        &format!(
            r#"hostname = "mx.test"
[[listener]]
address = "127.0.0.1:0"
mode = "relay"
[queue]
path = "{d}/queue"
max_concurrent_deliveries = 1
retry_intervals = ["1h"]
[local]
domains = ["mx.test"]
maildir = "{d}/maildir"
[tls]
self_signed = true
[outbound]
relay = "{peer}"
tls = "disabled"
max_per_destination = 1
[[account]]
username = "ann@mx.test"
password = "secret"
[[account]]
username = "bulk@mx.test"
password = "secret"
priority = -4
"#,
            peer = peer.address
        ),
    );
    let (child, addr) = serve(&cfg);
    // The first message takes the only delivery slot and is held by the peer.
    submit(&addr, "ann@mx.test", "low0", "");
    peer.held
        .recv_timeout(Duration::from_secs(60))
        .expect("the first message reaches the peer");
    // The backlog queues behind it: a bulk login's message, three normal ones, then the
    // urgent one.
    submit(&addr, "bulk@mx.test", "bulk", "");
    for subject in ["low1", "low2", "low3"] {
        submit(&addr, "ann@mx.test", subject, "");
    }
    submit(&addr, "ann@mx.test", "urgent", "MT-PRIORITY=6");
    assert_eq!(peer.subjects(), ["low0"], "nothing else went out yet");
    peer.release.send(()).unwrap();
    let order = peer.wait_for(6);
    terminate(child);
    assert_eq!(order, ["low0", "urgent", "low1", "low2", "low3", "bulk"]);
}

/// What the server answers to MT-PRIORITY from a client without a login: accepted (it
/// is honoured only as far as it lowers the priority) when well formed, `501 5.5.4`
/// when out of range or malformed.
#[test]
fn mt_priority_is_offered_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = support::any_user_config(dir.path());
    let (child, addr) = serve(&cfg);
    let replies = block_on(async {
        let mut c = RawClient::connect(addr.parse().unwrap()).await;
        let ehlo = c.cmd("EHLO client.test").await.to_string();
        let mut replies = vec![ehlo];
        for mail in [
            "MAIL FROM:<a@client.test> MT-PRIORITY=10",
            "MAIL FROM:<a@client.test> MT-PRIORITY=high",
            "MAIL FROM:<a@client.test> MT-PRIORITY=9",
        ] {
            replies.push(c.cmd(mail).await.to_string());
        }
        replies.push(c.cmd("RCPT TO:<someone@mx.test>").await.to_string());
        replies.push(c.cmd("DATA").await.to_string());
        c.send(b"Subject: asked for 9\r\n\r\nx\r\n.\r\n").await;
        replies.push(c.reply().await.to_string());
        c.cmd("QUIT").await;
        replies
    });
    terminate(child);
    assert!(replies[0].contains("MT-PRIORITY"), "{}", replies[0]);
    assert!(
        replies[1].starts_with("501 5.5.4 ") && replies[1].contains("MT-PRIORITY"),
        "{}",
        replies[1]
    );
    assert!(replies[2].starts_with("501 5.5.4 "), "{}", replies[2]);
    assert!(replies[3].starts_with("250 2.1.0"), "{}", replies[3]);
    assert!(replies[4].starts_with("250 2.1.5"), "{}", replies[4]);
    assert!(
        replies[6].contains("250 2.0.0 Ok: queued as "),
        "{replies:?}"
    );
}

#[test]
fn check_config_refuses_priorities_out_of_range() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = support::config_file(
        dir.path(),
        "[[account]]\nusername = \"ann@mx.test\"\npassword = \"secret\"\npriority = 12\n",
    );
    let (code, _, stderr) = support::run_with("check-config", &cfg);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("[[account]] priority = 12: give a priority from -9 to 9 (RFC 6710)"),
        "{stderr}"
    );
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        "mta.toml",
        &support::config(dir.path(), "127.0.0.1:0", "")
            .replace("mode = \"relay\"\n", "mode = \"relay\"\npriority = -10\n"),
    );
    let (code, _, stderr) = support::run_with("check-config", &cfg);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("[[listener]] priority = -10: give a priority from -9 to 9"),
        "{stderr}"
    );
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        "mta.toml",
        &support::config(
            dir.path(),
            "127.0.0.1:0",
            "[[account]]\nusername = \"ann@mx.test\"\npassword = \"secret\"\npriority = 5\n",
        )
        .replace("mode = \"relay\"\n", "mode = \"relay\"\npriority = -2\n")
        .replace("[queue]\n", "[queue]\nhonour_mt_priority = false\n"),
    );
    support::assert_config_ok(&cfg);
}
