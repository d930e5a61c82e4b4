//! Aliases, catch-alls, domain aliases and forwarding (`[aliases]`) through the real
//! `mta` binary: what RCPT answers, what lands in which Maildir, and what a second `mta`
//! (the remote peer, on loopback) receives as the envelope sender of forwarded mail,
//! SRS or kept; bounces to SRS addresses go back to the original sender.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::{Path, PathBuf};

use support::{
    assert_config_ok, assert_config_refused, free_address, python, rcpt_reply, serve, smtp_send,
    terminate, write,
};

/// A configuration for `mx.test` (and `old.test`) on any port, with no DNS but a
/// loopback port nobody answers on and no sender checks (nothing here needs them), the
/// mailboxes alice, bob, carol and catchall, then `extra`.
fn config(dir: &Path, extra: &str) -> PathBuf {
    let d = dir.display();
    write(
        dir,
        "mta.toml",
        &format!(
            r#"hostname = "mx.test"
[[listener]]
address = "127.0.0.1:0"
mode = "relay"
[queue]
path = "{d}/queue"
[local]
domains = ["mx.test", "old.test"]
maildir = "{d}/maildir"
mailboxes = ["alice@mx.test", "bob@mx.test", "carol@mx.test", "catchall@mx.test"]
[dns]
nameservers = ["{dns}"]
[auth_checks]
spf = "off"
dkim = "off"
dmarc = "off"
arc = "off"
[reverse_dns]
mode = "off"
{extra}"#,
            dns = free_address(),
        ),
    )
}

/// The messages in the Maildir of `user@domain` under `dir`, waiting (up to 20 s) for
/// `count` of them.
fn mail(dir: &Path, domain: &str, user: &str, count: usize) -> Vec<String> {
    support::domain_maildir_files(dir, domain, user, count)
}

/// A running `mta serve`, stopped with SIGTERM by [`Running::stop`], or killed when a
/// failed assertion unwinds past it (so that no server outlives its test).
struct Running(Option<std::process::Child>);

impl Running {
    fn start(config: &Path) -> (Self, String) {
        let (child, addr) = serve(config);
        (Self(Some(child)), addr)
    }

    fn pid(&self) -> u32 {
        self.0.as_ref().map_or(0, std::process::Child::id)
    }

    fn stop(mut self) {
        if let Some(child) = self.0.take() {
            terminate(child);
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn send(addr: &str, from: &str, to: &str, subject: &str) {
    smtp_send(
        addr,
        from,
        &[to],
        &format!("From: {from}\r\nSubject: {subject}\r\n\r\nbody of {subject}\r\n"),
    );
}

/// The `Return-Path:` of a delivered message.
fn return_path(message: &str) -> &str {
    message
        .lines()
        .find_map(|l| l.strip_prefix("Return-Path: "))
        .unwrap_or_else(|| panic!("no Return-Path in {message}"))
}

fn subjects(messages: &[String]) -> Vec<String> {
    let mut s: Vec<String> = messages
        .iter()
        .filter_map(|m| m.lines().find_map(|l| l.strip_prefix("Subject: ")))
        .map(str::to_owned)
        .collect();
    s.sort();
    s
}

#[test]
fn each_alias_form_delivers_to_its_mailboxes() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        r#"[aliases.map]
"sales@mx.test" = ["alice@mx.test", "bob@mx.test"]
"info@mx.test" = "carol@mx.test"
"team@mx.test" = ["sales@mx.test", "carol@mx.test", "ALICE@mx.test"]
"@old.test" = "@mx.test"
"bob@mx.test" = ["bob@mx.test", "carol@mx.test"]
"#,
    );
    let (child, addr) = Running::start(&cfg);
    for rcpt in [
        "sales@mx.test",
        "Info@MX.test",
        "team@mx.test",
        "alice@old.test",
    ] {
        let reply = rcpt_reply(&addr, rcpt);
        assert!(reply.starts_with("250 "), "{rcpt}: {reply}");
    }
    send(&addr, "me@client.test", "sales@mx.test", "to sales");
    send(&addr, "me@client.test", "info@mx.test", "to info");
    send(&addr, "me@client.test", "team@mx.test", "to team");
    send(
        &addr,
        "me@client.test",
        "alice@old.test",
        "to the old domain",
    );

    // alice: sales, team (once, though named twice), the old domain.
    let alice = mail(dir.path(), "mx.test", "alice", 3);
    assert_eq!(
        subjects(&alice),
        ["to sales", "to team", "to the old domain"],
        "{alice:?}"
    );
    let sales = alice
        .iter()
        .find(|m| m.contains("Subject: to sales"))
        .unwrap();
    assert!(sales.contains("Delivered-To: alice@mx.test\n"), "{sales}");
    assert_eq!(return_path(sales), "<me@client.test>");
    // bob is among his own targets: a copy in his mailbox, and one for carol.
    let bob = mail(dir.path(), "mx.test", "bob", 2);
    assert_eq!(subjects(&bob), ["to sales", "to team"], "{bob:?}");
    let carol = mail(dir.path(), "mx.test", "carol", 3);
    assert_eq!(
        subjects(&carol),
        ["to info", "to sales", "to team"],
        "{carol:?}"
    );
    // No Maildir for an alias.
    for alias in ["sales", "info", "team"] {
        assert!(!dir.path().join("maildir/mx.test").join(alias).exists());
    }
    assert!(!dir.path().join("maildir/old.test").exists());
    child.stop();
}

#[test]
fn mailboxes_and_explicit_aliases_beat_the_catch_all() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        r#"[aliases.map]
"@mx.test" = "catchall@mx.test"
"info@mx.test" = "bob@mx.test"
"#,
    );
    let (child, addr) = Running::start(&cfg);
    assert!(rcpt_reply(&addr, "whoever@mx.test").starts_with("250 "));
    // old.test has no entry: its unknown users are refused as before.
    assert!(rcpt_reply(&addr, "whoever@old.test").starts_with("550 5.1.1 "));
    send(&addr, "me@client.test", "alice@mx.test", "to alice");
    send(
        &addr,
        "me@client.test",
        "alice+news@mx.test",
        "to alice's tag",
    );
    send(&addr, "me@client.test", "info@mx.test", "to info");
    send(&addr, "me@client.test", "whoever@mx.test", "to whoever");
    send(
        &addr,
        "me@client.test",
        "postmaster@mx.test",
        "to postmaster",
    );
    assert_eq!(
        subjects(&mail(dir.path(), "mx.test", "alice", 2)),
        ["to alice", "to alice's tag"]
    );
    assert_eq!(
        subjects(&mail(dir.path(), "mx.test", "bob", 1)),
        ["to info"]
    );
    // Postmaster keeps its usual mailbox: the catch-all gets only the unknown.
    assert_eq!(
        subjects(&mail(dir.path(), "mx.test", "postmaster", 1)),
        ["to postmaster"]
    );
    let caught = mail(dir.path(), "mx.test", "catchall", 1);
    assert_eq!(subjects(&caught), ["to whoever"]);
    assert!(caught[0].contains("Delivered-To: catchall@mx.test\n"));
    child.stop();
}

#[test]
fn loops_depth_and_unknown_targets_are_refused_at_rcpt() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        r#"[aliases]
max_depth = 2
[aliases.map]
"ping@mx.test" = "pong@mx.test"
"pong@mx.test" = "ping@mx.test"
"round@mx.test" = ["trip@mx.test"]
"trip@mx.test" = ["round@mx.test", "alice@mx.test"]
"l1@mx.test" = "l2@mx.test"
"l2@mx.test" = "l3@mx.test"
"l3@mx.test" = "alice@mx.test"
"broken@mx.test" = "nobody@mx.test"
"half@mx.test" = ["alice@mx.test", "nobody@mx.test"]
"#,
    );
    // `mta serve` runs with them (check-config refuses the loop and the depth).
    let (child, addr) = Running::start(&cfg);
    for (rcpt, expected) in [
        ("ping@mx.test", "550 5.4.6 Alias loop"),
        ("pong@mx.test", "550 5.4.6 Alias loop"),
        ("l1@mx.test", "550 5.4.6 Too many alias levels"),
        ("broken@mx.test", "550 5.1.1 "),
        ("half@mx.test", "550 5.1.1 "),
        ("nobody@mx.test", "550 5.1.1 "),
        // A loop with a way out delivers to it.
        ("round@mx.test", "250 "),
        ("l2@mx.test", "250 "),
    ] {
        let reply = rcpt_reply(&addr, rcpt);
        assert!(reply.starts_with(expected), "{rcpt}: {reply}");
    }
    send(&addr, "me@client.test", "round@mx.test", "round trip");
    assert_eq!(
        subjects(&mail(dir.path(), "mx.test", "alice", 1)),
        ["round trip"]
    );
    child.stop();
}

/// A second `mta`, the remote peer: it takes mail for partner.test and origin.test
/// (any user) into its Maildir under `dir`.
fn peer(dir: &Path) -> (Running, String) {
    peer_taking(dir, "accept_any_user = true")
}

/// [`peer`], taking the users `users` (its `[local]` line) only.
fn peer_taking(dir: &Path, users: &str) -> (Running, String) {
    let d = dir.display();
    let cfg = write(
        dir,
        "peer.toml",
        &format!(
            r#"hostname = "peer.test"
[[listener]]
address = "127.0.0.1:0"
mode = "relay"
[queue]
path = "{d}/queue"
[local]
domains = ["partner.test", "origin.test"]
maildir = "{d}/maildir"
{users}
[dns]
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
    Running::start(&cfg)
}

/// `[outbound]` to the peer at `addr`, plaintext.
fn to_peer(addr: &str) -> String {
    format!("[outbound]\nrelay = \"{addr}\"\ntls = \"disabled\"\n")
}

/// SRS0 hash and timestamp as libsrs2 computes them, by Python's `hmac`: the secret is
/// the key file's text without trailing white space. Prints the SRS0 local part for
/// `argv[2]@argv[3]` made `argv[4]` days ago, and the hash of the timestamp `argv[5]`
/// (when given) for the same address.
const SRS_PY: &str = r#"
import base64, hashlib, hmac, sys, time
key = open(sys.argv[1], 'rb').read().rstrip()
local, domain, ago = sys.argv[2], sys.argv[3], int(sys.argv[4])
alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567'
def stamp(days):
    t = days % 1024
    return alphabet[(t >> 5) & 31] + alphabet[t & 31]
def digest(ts):
    data = (ts + domain + local).lower().encode()
    return base64.b64encode(hmac.new(key, data, hashlib.sha1).digest()).decode()[:4]
ts = stamp(int(time.time() // 86400) - ago)
print('SRS0=%s=%s=%s=%s' % (digest(ts), ts, domain, local))
if len(sys.argv) > 5:
    print(digest(sys.argv[5]))
"#;

#[test]
fn forwarded_mail_leaves_with_an_srs_sender_and_its_bounces_come_back() {
    let peer_dir = tempfile::tempdir().unwrap();
    let (peer_child, peer_addr) = peer(peer_dir.path());
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        &format!(
            "{}[aliases.map]\n\"fwd@mx.test\" = [\"carol@partner.test\", \"alice@mx.test\"]\n",
            to_peer(&peer_addr)
        ),
    );
    let (child, addr) = Running::start(&cfg);
    send(&addr, "sender@origin.test", "fwd@mx.test", "forwarded");

    // The peer sees the SRS0 form of the sender, in mx.test (the hostname, a local
    // domain), with the hash of our secret.
    let carol = mail(peer_dir.path(), "partner.test", "carol", 1);
    assert_eq!(carol.len(), 1);
    assert!(carol[0].contains("Subject: forwarded"), "{}", carol[0]);
    let srs = return_path(&carol[0]).trim_matches(['<', '>']).to_owned();
    let parts: Vec<&str> = srs.split('=').collect();
    assert_eq!(parts.len(), 5, "{srs}");
    assert_eq!(
        (parts[0], parts[3], parts[4]),
        ("SRS0", "origin.test", "sender@mx.test"),
        "{srs}"
    );
    let key = dir.path().join("queue/srs.key");
    let expected = python(
        SRS_PY,
        &[
            key.to_str().unwrap(),
            "sender",
            "origin.test",
            "0",
            parts[2],
        ],
    );
    assert_eq!(
        expected.lines().nth(1),
        Some(parts[1]),
        "hash of {srs}: {expected}"
    );
    // The local copy keeps the original sender.
    let alice = mail(dir.path(), "mx.test", "alice", 1);
    assert_eq!(return_path(&alice[0]), "<sender@origin.test>");

    // A bounce to the SRS address (sent by Python's smtplib) goes to the original
    // sender, at the peer.
    let host_port: Vec<&str> = addr.rsplitn(2, ':').collect();
    python(
        r#"
import smtplib, sys
port, host, to = int(sys.argv[1]), sys.argv[2], sys.argv[3]
with smtplib.SMTP(host, port) as s:
    s.sendmail('', [to], 'From: MAILER-DAEMON@partner.test\r\nSubject: bounced\r\n\r\nUndeliverable\r\n')
"#,
        &[host_port[0], host_port[1], &srs],
    );
    let back = mail(peer_dir.path(), "origin.test", "sender", 1);
    assert_eq!(subjects(&back), ["bounced"], "{back:?}");
    assert_eq!(return_path(&back[0]), "<>");
    assert!(back[0].contains("Delivered-To: sender@origin.test\n"));

    // A forged hash, an address three weeks and two days old: refused. Twenty days
    // old: still good.
    let forged = srs.replacen(parts[1], "AAAA", 1);
    let reply = rcpt_reply(&addr, &forged);
    assert!(reply.starts_with("550 5.1.1 "), "{forged}: {reply}");
    for (ago, expected) in [("23", "550 5.1.1 "), ("20", "250 ")] {
        let made = python(
            SRS_PY,
            &[key.to_str().unwrap(), "sender", "origin.test", ago],
        );
        let old = format!("{}@mx.test", made.trim());
        let reply = rcpt_reply(&addr, &old);
        assert!(reply.starts_with(expected), "{ago} days: {old}: {reply}");
    }
    child.stop();
    peer_child.stop();
}

/// A delivery status notification goes where its sender leads: to the members of an
/// alias (no mailbox of that name exists). Before, it went to the address itself, found
/// no mailbox, and was dropped (a notification about a notification is never sent).
/// The bounce of forwarded mail goes to the original sender (SRS rewrites the sender of
/// the remote transaction only).
#[test]
fn bounces_to_an_alias_or_an_srs_sender_reach_the_people_behind_it() {
    let peer_dir = tempfile::tempdir().unwrap();
    let (peer_child, peer_addr) =
        peer_taking(peer_dir.path(), "mailboxes = [\"sender@origin.test\"]");
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        &format!(
            "{}[relay]\ntrusted_networks = [\"127.0.0.0/8\"]\n\
             [aliases.map]\n\"sales@mx.test\" = [\"alice@mx.test\", \"bob@mx.test\"]\n\
             \"fwd@mx.test\" = [\"nobody@partner.test\"]\n",
            to_peer(&peer_addr)
        ),
    );
    let (child, addr) = Running::start(&cfg);
    // The peer refuses nobody@partner.test (550 5.1.1): each message bounces. (This
    // machine may relay: the alias's users send from here.)
    send(
        &addr,
        "sales@mx.test",
        "nobody@partner.test",
        "from the alias",
    );
    for user in ["alice", "bob"] {
        let got = mail(dir.path(), "mx.test", user, 1);
        assert_eq!(got.len(), 1, "{user}: {got:?}");
        assert_eq!(return_path(&got[0]), "<>", "{}", got[0]);
        assert!(got[0].contains("Subject: from the alias"), "{}", got[0]);
        assert!(got[0].contains("nobody@partner.test"), "{}", got[0]);
    }
    // Forwarded with an SRS sender, refused by the peer: our bounce goes to the
    // original sender.
    send(&addr, "sender@origin.test", "fwd@mx.test", "forwarded");
    let back = mail(peer_dir.path(), "origin.test", "sender", 1);
    assert_eq!(back.len(), 1, "{back:?}");
    assert_eq!(return_path(&back[0]), "<>");
    assert!(back[0].contains("Subject: forwarded"), "{}", back[0]);
    child.stop();
    peer_child.stop();
}

#[test]
fn with_keep_forwarded_mail_keeps_its_sender() {
    let peer_dir = tempfile::tempdir().unwrap();
    let (peer_child, peer_addr) = peer(peer_dir.path());
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        &format!(
            "{}[aliases]\nforward_sender = \"keep\"\n[aliases.map]\n\"fwd@mx.test\" = \"carol@partner.test\"\n",
            to_peer(&peer_addr)
        ),
    );
    let (child, addr) = Running::start(&cfg);
    send(&addr, "sender@origin.test", "fwd@mx.test", "kept");
    let carol = mail(peer_dir.path(), "partner.test", "carol", 1);
    assert_eq!(subjects(&carol), ["kept"]);
    assert_eq!(return_path(&carol[0]), "<sender@origin.test>");
    assert!(!dir.path().join("queue/srs.key").exists());
    child.stop();
    peer_child.stop();
}

#[test]
fn check_config_accepts_a_good_map_and_names_loops_and_bad_entries() {
    let dir = tempfile::tempdir().unwrap();
    let aliases = write(
        dir.path(),
        "aliases.toml",
        "\"list@mx.test\" = [\"alice@mx.test\", \"far@partner.test\"]\n\"@old.test\" = \"@mx.test\"\n",
    );
    let good = format!(
        "[aliases]\nfile = \"{}\"\n[aliases.map]\n\"sales@mx.test\" = [\"list@mx.test\", \"bob@mx.test\"]\n\"info@mx.test\" = \"carol@mx.test\"\n\"@mx.test\" = \"catchall@mx.test\"\n",
        aliases.display()
    );
    assert_config_ok(&config(dir.path(), &good));

    // The head of the file is 19 lines long: what `extra` adds starts at line 20. A loop
    // is named once, at the first of its entries.
    let cycle = "[aliases.map]\n\"a@mx.test\" = \"b@mx.test\"\n\"b@mx.test\" = [\"a@mx.test\"]\n\"c@mx.test\" = [\"a@mx.test\", \"alice@mx.test\"]\n";
    let stderr = assert_config_refused(
        &config(dir.path(), cycle),
        &[
            "line 21: [aliases.map] \"a@mx.test\": alias loop with no address outside it: a@mx.test → b@mx.test → a@mx.test",
        ],
    );
    assert_eq!(stderr.matches("alias loop").count(), 1, "{stderr}");

    let bad = "[aliases.map]\n\"far@other.test\" = \"alice@mx.test\"\n\"c@mx.test\" = \"not an address\"\n\"@\" = \"alice@mx.test\"\n\"d@mx.test\" = []\n";
    assert_config_refused(
        &config(dir.path(), bad),
        &[
            "line 21: [aliases.map] \"far@other.test\": other.test is not one of [local] domains",
            "line 22: [aliases.map] \"c@mx.test\": \"not an address\" is no address",
            "line 23: [aliases.map] \"@\": not an address or @domain",
            "line 24: [aliases.map] \"d@mx.test\": give at least one target",
        ],
    );

    let deep = "[aliases]\nmax_depth = 1\n[aliases.map]\n\"a@mx.test\" = \"b@mx.test\"\n\"b@mx.test\" = \"alice@mx.test\"\n";
    assert_config_refused(
        &config(dir.path(), deep),
        &[
            "line 23: [aliases.map] \"a@mx.test\": more than max_depth (1) levels of aliases: a@mx.test → b@mx.test",
        ],
    );
    let elsewhere = "[aliases]\nsrs_domain = \"elsewhere.test\"\nmax_depth = 0\n";
    assert_config_refused(
        &config(dir.path(), elsewhere),
        &[
            "line 21: [aliases] srs_domain \"elsewhere.test\": must be one of [local] domains",
            "line 22: [aliases] max_depth: must be more than 0",
        ],
    );

    let bad_file = write(
        dir.path(),
        "bad.toml",
        "\"ok@mx.test\" = \"alice@mx.test\"\n\"x@nowhere.test\" = \"alice@mx.test\"\n\"n@mx.test\" = 5\n",
    );
    let with_bad_file = format!("[aliases]\nfile = \"{}\"\n", bad_file.display());
    let name = bad_file.display().to_string();
    assert_config_refused(
        &config(dir.path(), &with_bad_file),
        &[&format!(
            "line 21: [aliases] file {name} line 3 \"n@mx.test\": give an address or a list of addresses"
        )],
    );
    std::fs::write(
        &bad_file,
        "\"ok@mx.test\" = \"alice@mx.test\"\n\"x@nowhere.test\" = \"alice@mx.test\"\n",
    )
    .unwrap();
    assert_config_refused(
        &config(dir.path(), &with_bad_file),
        &[&format!(
            "line 21: [aliases] file {name} line 2 \"x@nowhere.test\": nowhere.test is not one of [local] domains"
        )],
    );
    let missing = "[aliases]\nfile = \"/nonexistent/aliases.toml\"\n";
    assert_config_refused(
        &config(dir.path(), missing),
        &["line 21: [aliases] file /nonexistent/aliases.toml: No such file or directory"],
    );
    // An unknown target is a warning: mail to that alias is refused.
    let (code, stdout, stderr) = support::run_with(
        "check-config",
        &config(
            dir.path(),
            "[aliases.map]\n\"x@mx.test\" = \"nobody@mx.test\"\n",
        ),
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stdout.contains(
            "warning: [aliases.map] \"x@mx.test\": nobody@mx.test is neither a mailbox nor an alias"
        ),
        "{stdout}"
    );
}

#[test]
fn a_reload_reads_the_aliases_file_again() {
    let dir = tempfile::tempdir().unwrap();
    let aliases = write(
        dir.path(),
        "aliases.toml",
        "\"x@mx.test\" = \"alice@mx.test\"\n",
    );
    let cfg = config(
        dir.path(),
        &format!("[aliases]\nfile = \"{}\"\n", aliases.display()),
    );
    let (child, addr) = Running::start(&cfg);
    assert!(rcpt_reply(&addr, "x@mx.test").starts_with("250 "));
    assert!(rcpt_reply(&addr, "y@mx.test").starts_with("550 5.1.1 "));
    write(
        dir.path(),
        "aliases.toml",
        "\"y@mx.test\" = \"bob@mx.test\"\n",
    );
    let status = std::process::Command::new("kill")
        .args(["-HUP", &child.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let start = std::time::Instant::now();
    while !rcpt_reply(&addr, "y@mx.test").starts_with("250 ") {
        assert!(start.elapsed().as_secs() < 20, "the reload took no effect");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(rcpt_reply(&addr, "x@mx.test").starts_with("550 5.1.1 "));
    send(&addr, "me@client.test", "y@mx.test", "after the reload");
    assert_eq!(
        subjects(&mail(dir.path(), "mx.test", "bob", 1)),
        ["after the reload"]
    );
    child.stop();
}
