//! REQUIRETLS (RFC 8689) through the real `mta` binary: a sender `mta` whose DNS is a
//! loopback server the test starts (`dns_mx::testing::TestDns`), the destination's
//! MTA-STS policy on an HTTPS server the test starts (what vouches for its MX host,
//! §4.2.1: the test DNS is not DNSSEC-signed), certificates from a test CA trusted
//! through `[outbound] ca_file`, and as the MX host a second `mta` with STARTTLS (or a
//! small Python SMTP server on real TLS, where what the MAIL command carried is to be
//! seen). Python's `smtplib` submits with `mail_options=["REQUIRETLS"]` over STARTTLS.
//!
//! What is asserted is what a user sees: what the MX host received, the bounce (DSN)
//! the sender gets in its Maildir, and the replies of the sender's own server.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::BufRead;
use std::path::{Path, PathBuf};

use dns_mx::testing::TestDns;

use support::outbound::{Ca, PolicyServer, Running, deferred, policy, sender_config};
use support::{domain_maildir_files, free_address, python, queue_cmd, serve, write};

/// A DNS server for rt.test: MX 10 mx.rt.test at 127.0.0.2, the policy host at
/// 127.0.0.1, and (with `sts`) the `_mta-sts` record.
fn dns(runtime: &tokio::runtime::Runtime, sts: bool) -> TestDns {
    let record = if sts {
        "_mta-sts IN TXT \"v=STSv1; id=1\"\n"
    } else {
        ""
    };
    let zone = format!(
        "$ORIGIN rt.test.\n$TTL 300\n\
         @ IN SOA ns root 1 3600 600 86400 60\n\
         @ IN MX 10 mx\n\
         mx IN A 127.0.0.2\n\
         mta-sts IN A 127.0.0.1\n\
         {record}"
    );
    runtime.block_on(TestDns::start(&[&zone]))
}

/// The MX host: an `mta` for rt.test (any user) on 127.0.0.2; with `cert`, offering
/// STARTTLS with that (certificate, key). Returns it and its port.
fn mx_host(dir: &Path, cert: Option<(String, String)>) -> (Running, u16) {
    std::fs::create_dir_all(dir).unwrap();
    let d = dir.display();
    let tls = match cert {
        Some((cert, key)) => {
            write(dir, "cert.pem", &cert);
            write(dir, "key.pem", &key);
            format!("[tls]\ncertificate = \"{d}/cert.pem\"\nprivate_key = \"{d}/key.pem\"\n")
        }
        None => String::new(),
    };
    let config = write(
        dir,
        "mx.toml",
        &format!(
            r#"hostname = "mx.rt.test"
[[listener]]
address = "127.0.0.2:0"
mode = "relay"
[queue]
path = "{d}/queue"
[local]
domains = ["rt.test"]
maildir = "{d}/maildir"
accept_any_user = true
{tls}[dns]
nameservers = ["{dns}"]
[auth_checks]
spf = "off"
dkim = "off"
dmarc = "off"
arc = "off"
[reverse_dns]
mode = "off"
"#,
            dns = free_address(),
        ),
    );
    let (child, addr) = serve(&config);
    let port = addr.rsplit_once(':').unwrap().1.parse().unwrap();
    (Running(Some(child)), port)
}

/// An SMTP server on 127.0.0.2 in Python (standard library): STARTTLS with the given
/// certificate, REQUIRETLS offered after it (unless `requiretls` is false), every
/// command written to `log` with `TLS` or `PLAIN` before it.
const PEER: &str = r#"
import socket, ssl, sys
cert, key, log, requiretls = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1"
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
srv = socket.socket()
srv.bind(("127.0.0.2", 0))
srv.listen(5)
print(srv.getsockname()[1], flush=True)
def session(conn):
    tls = False
    f = conn.makefile("rb")
    conn.sendall(b"220 peer.rt.test ESMTP\r\n")
    while True:
        line = f.readline()
        if not line:
            return
        cmd = line.decode("utf-8", "replace").strip()
        with open(log, "a") as out:
            out.write(("TLS " if tls else "PLAIN ") + cmd + "\n")
        up = cmd.upper()
        if up.startswith("EHLO"):
            ext = ["peer.rt.test", "8BITMIME"]
            ext += (["REQUIRETLS"] if requiretls else []) if tls else ["STARTTLS"]
            lines = ["250-" + e for e in ext[:-1]] + ["250 " + ext[-1]]
            conn.sendall(("\r\n".join(lines) + "\r\n").encode())
        elif up == "STARTTLS" and not tls:
            conn.sendall(b"220 2.0.0 go ahead\r\n")
            conn = ctx.wrap_socket(conn, server_side=True)
            f = conn.makefile("rb")
            tls = True
        elif up == "DATA":
            conn.sendall(b"354 go ahead\r\n")
            while True:
                l = f.readline()
                if not l or l == b".\r\n":
                    break
            conn.sendall(b"250 2.0.0 Ok: stored\r\n")
        elif up == "QUIT":
            conn.sendall(b"221 2.0.0 bye\r\n")
            conn.close()
            return
        else:
            conn.sendall(b"250 2.0.0 Ok\r\n")
while True:
    conn, _ = srv.accept()
    try:
        session(conn)
    except Exception as e:
        with open(log, "a") as out:
            out.write("ERROR " + repr(e) + "\n")
"#;

/// Starts [`PEER`] with a certificate for mx.rt.test from `ca`; returns it, its port,
/// and the path of its log.
fn python_peer(dir: &Path, ca: &Ca, requiretls: bool) -> (Running, u16, PathBuf) {
    std::fs::create_dir_all(dir).unwrap();
    let (cert, key) = ca.certify(&["mx.rt.test"]);
    let cert = write(dir, "peer-cert.pem", &cert);
    let key = write(dir, "peer-key.pem", &key);
    let log = dir.join("peer.log");
    let mut child = std::process::Command::new("/usr/bin/python3")
        .arg("-u")
        .arg("-c")
        .arg(PEER)
        .arg(&cert)
        .arg(&key)
        .arg(&log)
        .arg(if requiretls { "1" } else { "0" })
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line.trim().parse().unwrap();
    (Running(Some(child)), port, log)
}

/// Everything one test needs: the test CA, the DNS and HTTPS servers, the sender's
/// directory.
struct World {
    dir: tempfile::TempDir,
    ca: Ca,
    /// The runtime the DNS server runs on.
    _runtime: tokio::runtime::Runtime,
    dns: Option<TestDns>,
    policy_port: u16,
}

impl World {
    /// rt.test with an MTA-STS policy `policy` (none: no `_mta-sts` record).
    fn start(policy: Option<&str>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new("requiretls test CA");
        write(dir.path(), "ca.pem", &ca.pem);
        let (cert, key) = ca.certify(&["sender.test"]);
        write(dir.path(), "sender-cert.pem", &cert);
        write(dir.path(), "sender-key.pem", &key);
        let policy_port = PolicyServer::start(&ca, "rt.test", policy.unwrap_or("")).port;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let dns = Some(dns(&runtime, policy.is_some()));
        Self {
            dir,
            ca,
            _runtime: runtime,
            dns,
            policy_port,
        }
    }

    /// Starts the sender, delivering to port `mx_port`: it and its listening address.
    fn sender(&self, mx_port: u16) -> (Running, String, PathBuf) {
        let d = self.dir.path().display();
        let dns = self.dns.as_ref().unwrap().addr();
        let config = sender_config(
            self.dir.path(),
            Some(&dns),
            &format!(
                r#"port = {mx_port}
ca_file = "{d}/ca.pem"
mta_sts_port = {https}
mta_sts_timeout = "10s"
[tls]
certificate = "{d}/sender-cert.pem"
private_key = "{d}/sender-key.pem"
"#,
                https = self.policy_port,
            ),
        );
        let (child, addr) = serve(&config);
        (Running(Some(child)), addr, config)
    }

    /// The bounces `me@sender.test` received, waiting (up to 20 s) for `count`.
    fn bounces(&self, count: usize) -> Vec<String> {
        domain_maildir_files(self.dir.path(), "sender.test", "me", count)
    }

    /// What the `mta` MX host stored for `user@rt.test`, waiting (up to 20 s) for
    /// `count`.
    fn received(&self, user: &str, count: usize) -> Vec<String> {
        domain_maildir_files(&self.dir.path().join("mx"), "rt.test", user, count)
    }
}

impl Drop for World {
    fn drop(&mut self) {
        // The DNS server's tasks end with the runtime they run on.
        drop(self.dns.take());
    }
}

/// Submits a message from me@sender.test to `to` with Python's smtplib, over STARTTLS,
/// with `options` as MAIL parameters (`REQUIRETLS`) and `headers` added. Prints what
/// the server offered after STARTTLS, and the reply to DATA.
fn submit(addr: &str, to: &str, subject: &str, options: &[&str], headers: &str) -> String {
    let (host, port) = addr.rsplit_once(':').unwrap();
    let script = r#"
import smtplib, ssl, sys
host, port, to, subject, options, headers = sys.argv[1:7]
s = smtplib.SMTP(host, int(port), timeout=30)
s.ehlo("client.test")
s.starttls(context=ssl._create_unverified_context())
s.ehlo("client.test")
print("offered:", " ".join(sorted(s.esmtp_features)))
msg = ("From: me@sender.test\r\nTo: " + to + "\r\nSubject: " + subject + "\r\n" + headers
       + "\r\nthe secret body of " + subject + "\r\n")
s.sendmail("me@sender.test", [to], msg, mail_options=options.split())
print("sent")
s.quit()
"#;
    python(
        script,
        &[host, port, to, subject, &options.join(" "), headers],
    )
}

/// (a) REQUIRETLS to an MX host in the domain's MTA-STS policy, with a certificate for
/// its name from a trusted CA, offering REQUIRETLS: delivered, over TLS.
#[test]
fn a_requiretls_message_goes_to_an_authenticated_peer() {
    let world = World::start(Some(&policy("testing", "mx.rt.test")));
    let (mx, mx_port) = mx_host(
        &world.dir.path().join("mx"),
        Some(world.ca.certify(&["mx.rt.test"])),
    );
    let (sender, addr, _) = world.sender(mx_port);
    let said = submit(&addr, "alice@rt.test", "protected", &["REQUIRETLS"], "");
    assert!(
        said.contains("requiretls"),
        "offered after STARTTLS: {said}"
    );
    let got = world.received("alice", 1);
    assert_eq!(
        got.len(),
        1,
        "not delivered; bounces: {:?}",
        world.bounces(0)
    );
    assert!(
        got[0].contains("the secret body of protected"),
        "{}",
        got[0]
    );
    // The MX host's own Received: the hop from the sender was under TLS.
    let hop = got[0]
        .split("\nReceived: ")
        .find(|r| r.contains("by mx.rt.test"))
        .or_else(|| got[0].strip_prefix("Received: "))
        .unwrap_or("");
    assert!(hop.contains("ESMTPS"), "{}", got[0]);
    assert!(world.bounces(0).is_empty());
    sender.stop();
    mx.stop();
}

/// (a) What the MX host received: the MAIL command, under TLS, carries REQUIRETLS (seen
/// by a Python peer that logs each command).
#[test]
fn the_requiretls_parameter_is_passed_on_under_tls() {
    let world = World::start(Some(&policy("testing", "mx.rt.test")));
    let (peer, port, log) = python_peer(&world.dir.path().join("peer"), &world.ca, true);
    let (sender, addr, _) = world.sender(port);
    submit(&addr, "alice@rt.test", "carried", &["REQUIRETLS"], "");
    let start = std::time::Instant::now();
    let seen = loop {
        let seen = std::fs::read_to_string(&log).unwrap_or_default();
        if seen.contains("TLS DATA") || start.elapsed().as_secs() > 20 {
            break seen;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(
        seen.lines()
            .any(|l| l.starts_with("TLS MAIL FROM:<me@sender.test>") && l.contains("REQUIRETLS")),
        "{seen}"
    );
    assert!(!seen.lines().any(|l| l.starts_with("PLAIN MAIL")), "{seen}");
    sender.stop();
    drop(peer);
}

/// The bounce `me@sender.test` got: one DSN, about alice@rt.test, with `status`, that
/// returns the header only (RFC 8689 §5), not the body.
fn assert_bounced(world: &World, status: &str, reason: &str) {
    let bounces = world.bounces(1);
    assert_eq!(bounces.len(), 1, "no bounce");
    let dsn = &bounces[0];
    assert!(
        dsn.contains("Final-Recipient: rfc822; alice@rt.test"),
        "{dsn}"
    );
    assert!(dsn.contains(&format!("Status: {status}")), "{dsn}");
    assert!(dsn.contains(reason), "{dsn}");
    assert!(dsn.contains("Content-Type: text/rfc822-headers"), "{dsn}");
    assert!(!dsn.contains("the secret body"), "{dsn}");
}

/// (b) The MX host's certificate is from the trusted CA but names another host: not
/// delivered; the sender gets a bounce with `5.7.10` (no plaintext retry, no waiting).
#[test]
fn a_certificate_for_another_name_bounces_with_5_7_10() {
    let world = World::start(Some(&policy("testing", "mx.rt.test")));
    let (mx, mx_port) = mx_host(
        &world.dir.path().join("mx"),
        Some(world.ca.certify(&["somewhere.else.test"])),
    );
    let (sender, addr, _) = world.sender(mx_port);
    submit(&addr, "alice@rt.test", "wrong name", &["REQUIRETLS"], "");
    assert_bounced(&world, "5.7.10", "no authenticated TLS with mx.rt.test");
    assert!(world.received("alice", 0).is_empty());
    // The same message without REQUIRETLS goes (opportunistic TLS, MTA-STS testing).
    submit(&addr, "alice@rt.test", "unprotected", &[], "");
    assert_eq!(world.received("alice", 1).len(), 1);
    sender.stop();
    mx.stop();
}

/// (c) An MX host without TLS: not delivered; a bounce with `5.7.10`.
#[test]
fn a_peer_without_tls_bounces_with_5_7_10() {
    let world = World::start(Some(&policy("testing", "mx.rt.test")));
    let (mx, mx_port) = mx_host(&world.dir.path().join("mx"), None);
    let (sender, addr, _) = world.sender(mx_port);
    submit(&addr, "alice@rt.test", "no tls", &["REQUIRETLS"], "");
    assert_bounced(&world, "5.7.10", "does not offer STARTTLS");
    assert!(world.received("alice", 0).is_empty());
    sender.stop();
    mx.stop();
}

/// A peer with a good certificate that does not offer REQUIRETLS: not sent (the Python
/// peer sees no MAIL); a bounce with `5.7.30`.
#[test]
fn a_peer_without_requiretls_bounces_with_5_7_30() {
    let world = World::start(Some(&policy("testing", "mx.rt.test")));
    let (peer, port, log) = python_peer(&world.dir.path().join("peer"), &world.ca, false);
    let (sender, addr, _) = world.sender(port);
    submit(&addr, "alice@rt.test", "no support", &["REQUIRETLS"], "");
    assert_bounced(&world, "5.7.30", "mx.rt.test does not offer REQUIRETLS");
    let seen = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(seen.contains("TLS EHLO"), "{seen}");
    assert!(!seen.contains("MAIL FROM"), "{seen}");
    sender.stop();
    drop(peer);
}

/// RFC 8689 §4.2.1: without DNSSEC and without an MTA-STS policy nothing vouches for
/// the MX host, good certificate or not: a bounce with `5.7.10` that says so.
#[test]
fn an_mx_nothing_vouches_for_bounces() {
    let world = World::start(None);
    let (mx, mx_port) = mx_host(
        &world.dir.path().join("mx"),
        Some(world.ca.certify(&["mx.rt.test"])),
    );
    let (sender, addr, _) = world.sender(mx_port);
    submit(&addr, "alice@rt.test", "unvouched", &["REQUIRETLS"], "");
    assert_bounced(&world, "5.7.10", "is not a validated MX host of rt.test");
    assert!(world.received("alice", 0).is_empty());
    sender.stop();
    mx.stop();
}

/// The server side (RFC 8689 §2): REQUIRETLS is offered under TLS only, and a MAIL with
/// it on a plaintext session is refused as a parameter not offered (`555 5.5.4`).
#[test]
fn requiretls_is_accepted_only_under_tls() {
    let world = World::start(None);
    let (sender, addr, _) = world.sender(9);
    let (host, port) = addr.rsplit_once(':').unwrap();
    let said = python(
        r#"
import smtplib, sys
s = smtplib.SMTP(sys.argv[1], int(sys.argv[2]), timeout=30)
s.ehlo("client.test")
print("offered:", " ".join(sorted(s.esmtp_features)))
print(s.docmd("MAIL FROM:<me@sender.test> REQUIRETLS"))
s.quit()
"#,
        &[host, port],
    );
    assert!(!said.contains("requiretls"), "{said}");
    assert!(said.contains("starttls"), "{said}");
    assert!(said.contains("(555, b'5.5.4"), "{said}");
    sender.stop();
}

/// (d) `TLS-Required: No` (RFC 8689 §4.2.2) to a domain with an MTA-STS policy in
/// `enforce` whose MX host has a certificate for another name: delivered (over
/// opportunistic TLS), the header field kept for the next hops; the same message
/// without the header field waits (`4.7.5`).
#[test]
fn tls_required_no_is_delivered_despite_an_enforced_policy() {
    let world = World::start(Some(&policy("enforce", "mx.rt.test")));
    let (mx, mx_port) = mx_host(
        &world.dir.path().join("mx"),
        Some(world.ca.certify(&["somewhere.else.test"])),
    );
    let (sender, addr, config) = world.sender(mx_port);
    submit(
        &addr,
        "alice@rt.test",
        "optional",
        &[],
        "TLS-Required: No\r\n",
    );
    let got = world.received("alice", 1);
    assert_eq!(
        got.len(),
        1,
        "not delivered: {}",
        queue_cmd(&config, &["list"]).1
    );
    assert!(
        got[0].lines().any(|l| l.trim_end() == "TLS-Required: No"),
        "{}",
        got[0]
    );
    assert!(
        got[0].contains("ESMTPS"),
        "opportunistic TLS still: {}",
        got[0]
    );
    submit(&addr, "bob@rt.test", "enforced", &[], "");
    let list = deferred(&config, "bob@rt.test");
    assert!(
        list.contains("MTA-STS policy of rt.test (enforce): 451 4.7.5 TLS"),
        "{list}"
    );
    assert!(world.received("bob", 0).is_empty());
    sender.stop();
    mx.stop();
}

/// REQUIRETLS and `TLS-Required: No` together: REQUIRETLS wins (RFC 8689 §4.1): a
/// certificate for another name bounces the message with `5.7.10`.
#[test]
fn requiretls_wins_over_tls_required_no() {
    let world = World::start(Some(&policy("testing", "mx.rt.test")));
    let (mx, mx_port) = mx_host(
        &world.dir.path().join("mx"),
        Some(world.ca.certify(&["somewhere.else.test"])),
    );
    let (sender, addr, _) = world.sender(mx_port);
    submit(
        &addr,
        "alice@rt.test",
        "both",
        &["REQUIRETLS"],
        "TLS-Required: No\r\n",
    );
    assert_bounced(&world, "5.7.10", "no authenticated TLS with mx.rt.test");
    assert!(world.received("alice", 0).is_empty());
    sender.stop();
    mx.stop();
}

/// RFC 8689 §4.2.1 with RFC 8461 §5: an MTA-STS policy in `enforce` whose `mx:`
/// patterns match none of the domain's MX hosts. Nothing vouches for an MX host now,
/// but the policy may be updated: the REQUIRETLS message waits (`451 4.7.5`), as any
/// message under that policy does; it is not returned.
#[test]
fn requiretls_waits_when_an_enforced_policy_lists_no_mx() {
    let world = World::start(Some(&policy("enforce", "mx.elsewhere.test")));
    let (mx, mx_port) = mx_host(
        &world.dir.path().join("mx"),
        Some(world.ca.certify(&["mx.rt.test"])),
    );
    let (sender, addr, config) = world.sender(mx_port);
    submit(&addr, "alice@rt.test", "unlisted", &["REQUIRETLS"], "");
    let list = deferred(&config, "alice@rt.test");
    assert!(
        list.contains("4.7.5") && list.contains("no MX of rt.test matches its policy"),
        "{list}"
    );
    assert!(world.bounces(0).is_empty(), "{:?}", world.bounces(0));
    assert!(world.received("alice", 0).is_empty());
    sender.stop();
    mx.stop();
}
