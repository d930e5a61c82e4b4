//! DANE (RFC 7672) in remote delivery, through the real `mta` binary: a sender `mta`
//! with `[outbound] dane = "on"` whose MX lookups and DANE lookups both go to a test
//! Unbound, which validates zones a test Knot DNS signs as it loads them; the MX host
//! is a second `mta` with STARTTLS and an rcgen certificate from a CA the sender does
//! not trust (DANE-EE needs no CA).
//!
//! The zones (`dane.test` and `_tcp.mxbogus.dane.test` signed, `plain.test` not), the
//! TLSA records at the port `[outbound] port` names:
//!
//! | domain | MX hosts | TLSA | outcome |
//! | --- | --- | --- | --- |
//! | `dane.test` | `mx` | `3 1 1` the peer's key | delivered under DANE |
//! | `wrong.dane.test` | `mxwrong` | `3 1 1` another key | waits, `451 4.7.5` |
//! | `bogus.dane.test` | `mxbogus` | in a child zone whose DS is wrong | waits, `451 4.7.5` |
//! | `two.dane.test` | `mxbogus` (10), `mx` (20) | as above | `mxbogus` skipped, `mx` takes it |
//! | `plain.test` | `mx` | `3 1 1` another key, unsigned | ignored: opportunistic TLS |
//! | `other.plain.test` | `mxwrong.dane.test` | (unsigned MX RRset) | opportunistic TLS |
//! | `sts.dane.test` | `mx` (MTA-STS `enforce` lists another host) | `3 1 1` the peer's key | delivered under DANE |
//!
//! What is asserted is what a user sees: what the MX host's Maildir received (and its
//! `Received:` saying ESMTPS), the reply a deferred recipient waits with (`mta queue
//! list`), and the sender's log (the TLS report events). Skips (with a message) when
//! knotd, keymgr, kdig or unbound is missing; under `CI=true` that is a failure
//! (`.ci/deps/dane.sh` installs them).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::{Path, PathBuf};

use smtp_client::testing::daemons::{Daemon, KnotZone, knot, knot_ds, unbound, unbound_log};
use support::outbound::{Ca, PolicyServer, Running, policy, sender_config};
use support::{
    domain_maildir_files, free_address, queue_cmd, serve, serve_logging, smtp_send, write,
};

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn sha256(bytes: &[u8]) -> String {
    hex(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes).as_ref())
}

/// Everything one test needs: the MX host (an `mta` with STARTTLS), Knot and Unbound,
/// and the directory the sender lives in.
struct World {
    dir: tempfile::TempDir,
    // Dropped in this order: the resolver first.
    unbound: Daemon,
    _knot: Daemon,
    mx: Running,
    mx_port: u16,
}

impl World {
    /// `None` (the test skips) when the DNS daemons are not installed.
    fn start() -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let (mx, mx_port, key_spki) = mx_host(&dir.path().join("mx"));
        let good = sha256(&key_spki);
        let other_key = rcgen::KeyPair::generate().unwrap();
        let other = sha256(&rcgen::PublicKeyData::subject_public_key_info(&other_key));
        let wrong_ds = sha256(b"no key of _tcp.mxbogus.dane.test");
        let p = mx_port;
        let dane = format!(
            "@ NS ns
ns A 127.0.0.1
@ MX 10 mx
mx A 127.0.0.1
_{p}._tcp.mx TLSA 3 1 1 {good}
wrong MX 10 mxwrong
mxwrong A 127.0.0.1
_{p}._tcp.mxwrong TLSA 3 1 1 {other}
bogus MX 10 mxbogus
mxbogus A 127.0.0.1
_tcp.mxbogus NS ns.dane.test.
_tcp.mxbogus DS 4242 13 2 {wrong_ds}
two MX 10 mxbogus
two MX 20 mx
sts MX 10 mx
_mta-sts.sts TXT \"v=STSv1; id=1\"
mta-sts.sts A 127.0.0.1"
        );
        // A signed zone of its own whose DS in the parent matches none of its keys (a
        // botched rollover): everything in it is bogus, though its record would match.
        let bogus = format!("@ NS ns.dane.test.\n_{p} TLSA 3 1 1 {good}");
        let plain = format!(
            "@ NS ns\nns A 127.0.0.1\n@ MX 10 mx\nmx A 127.0.0.1\n_{p}._tcp.mx TLSA 3 1 1 {other}\nother MX 10 mxwrong.dane.test."
        );
        let knot = knot(&[
            KnotZone {
                name: "dane.test",
                records: &dane,
                signed: true,
            },
            KnotZone {
                name: "_tcp.mxbogus.dane.test",
                records: &bogus,
                signed: true,
            },
            KnotZone {
                name: "plain.test",
                records: &plain,
                signed: false,
            },
        ]);
        // `None`: a daemon is missing (the harness says which; under CI=true it fails).
        let knot = knot?;
        let anchors = knot_ds(&knot, "dane.test");
        assert!(!anchors.is_empty(), "no DS for dane.test");
        let server = knot.address;
        let unbound = unbound(
            &[
                ("dane.test", server),
                ("_tcp.mxbogus.dane.test", server),
                ("plain.test", server),
            ],
            &anchors,
        )?;
        Some(Self {
            dir,
            unbound,
            _knot: knot,
            mx,
            mx_port,
        })
    }

    /// The sender's configuration: MX and DANE lookups through Unbound, DANE on,
    /// MTA-STS off, mail to the MX host's port.
    fn config(&self) -> PathBuf {
        self.config_with("mta_sts = \"off\"\n")
    }

    /// [`World::config`] with `extra` in `[outbound]` (which must say `mta_sts`).
    fn config_with(&self, extra: &str) -> PathBuf {
        let resolver = self.unbound.address;
        sender_config(
            self.dir.path(),
            Some(&resolver),
            &format!(
                r#"port = {port}
{extra}dane = "on"
dane_resolver = "{resolver}"
dane_self_test = "dane.test"
idle_timeout = "5m"
"#,
                port = self.mx_port,
            ),
        )
    }

    /// Starts the sender on `config`; its log (warnings, and remote delivery's
    /// information) into `sender.log`.
    fn sender(&self, config: &Path) -> (Running, String) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("sender.log"))
            .unwrap();
        let (child, addr) = serve_logging(
            config,
            &[],
            "warn,mta_bin::delivery::remote=info",
            log.into(),
        );
        (Running(Some(child)), addr)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sender.log")).unwrap_or_default()
    }

    /// The sender's log once it holds `needle` (see [`support::log_with`]).
    fn log_with(&self, needle: &str) -> String {
        support::log_with(&self.dir.path().join("sender.log"), needle)
    }

    /// The messages the MX host received for `user@domain`, waiting (up to 20 s) for
    /// `count`.
    fn received(&self, domain: &str, user: &str, count: usize) -> Vec<String> {
        domain_maildir_files(&self.dir.path().join("mx"), domain, user, count)
    }
}

/// The MX host: an `mta` for the test domains (any user) on 127.0.0.1, offering
/// STARTTLS with a certificate from a test CA nobody trusts. Returns it, its port, and
/// its key's SubjectPublicKeyInfo (what the `3 1 1` records hash).
fn mx_host(dir: &Path) -> (Running, u16, Vec<u8>) {
    std::fs::create_dir_all(dir).unwrap();
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "DANE test CA");
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let names: Vec<String> = ["mx.dane.test", "mxwrong.dane.test", "mx.plain.test"]
        .iter()
        .map(|n| (*n).to_owned())
        .collect();
    let cert = rcgen::CertificateParams::new(names)
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    write(dir, "cert.pem", &cert.pem());
    write(dir, "key.pem", &key.serialize_pem());
    let d = dir.display();
    let config = write(
        dir,
        "mx.toml",
        &format!(
            r#"hostname = "mx.dane.test"
[[listener]]
address = "127.0.0.1:0"
mode = "relay"
[queue]
path = "{d}/queue"
[local]
domains = ["dane.test", "wrong.dane.test", "bogus.dane.test", "two.dane.test", "plain.test", "other.plain.test", "sts.dane.test"]
maildir = "{d}/maildir"
accept_any_user = true
[tls]
certificate = "{d}/cert.pem"
private_key = "{d}/key.pem"
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
    let (child, addr) = serve(&config);
    let port = addr.rsplit_once(':').unwrap().1.parse().unwrap();
    let spki = rcgen::PublicKeyData::subject_public_key_info(&key);
    (Running(Some(child)), port, spki)
}

/// Sends a message to `to` through the sender at `addr`.
fn send(addr: &str, to: &str, subject: &str) {
    smtp_send(
        addr,
        "me@sender.test",
        &[to],
        &format!("From: me@sender.test\r\nSubject: {subject}\r\n\r\nbody of {subject}\r\n"),
    );
}

/// The line of `mta queue list` for `to` once its message has been tried and waits
/// (deferred), with the reply it waits with.
fn deferred(config: &Path, to: &str) -> String {
    let start = std::time::Instant::now();
    loop {
        let (code, text, err) = queue_cmd(config, &["list"]);
        assert_eq!(code, 0, "{text}{err}");
        if let Some(line) = text
            .lines()
            .find(|l| l.contains(to) && l.trim_start().starts_with("pending") && l.contains('('))
        {
            return line.to_owned();
        }
        assert!(start.elapsed().as_secs() < 30, "{to} not deferred: {text}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

macro_rules! world_or_skip {
    () => {
        match World::start() {
            Some(world) => world,
            None => return,
        }
    };
}

/// A secure TLSA record matching the MX host's key: delivered under TLS (the MX host's
/// `Received:` says ESMTPS), the certificate judged by the record although no CA the
/// sender trusts issued it.
#[test]
fn a_matching_tlsa_record_delivers() {
    let world = world_or_skip!();
    let config = world.config();
    let (sender, addr) = world.sender(&config);
    send(&addr, "alice@dane.test", "under dane");
    let received = world.received("dane.test", "alice", 1);
    assert_eq!(received.len(), 1, "{}", world.log());
    assert!(
        received[0].contains("Subject: under dane"),
        "{}",
        received[0]
    );
    assert!(received[0].contains("with ESMTPS"), "{}", received[0]);
    let log = world.log_with("DANE: TLS checked against the TLSA records of mx.dane.test");
    assert!(
        log.contains("DANE: TLS checked against the TLSA records of mx.dane.test"),
        "{log}"
    );
    assert!(!log.contains("DANE failure"), "{log}");
    sender.stop();
    world.mx.stop();
}

/// A secure TLSA record naming another key: the mail waits with `4.7.5` (never sent
/// in plaintext, nor to the unmatched certificate), the MX host receives nothing, and
/// the failure is recorded (`validation-failure`, policy type `tlsa`).
#[test]
fn a_mismatching_tlsa_record_defers() {
    let world = world_or_skip!();
    let config = world.config();
    let (sender, addr) = world.sender(&config);
    send(&addr, "bob@wrong.dane.test", "wrong key");
    let line = deferred(&config, "bob@wrong.dane.test");
    assert!(
        line.contains("mxwrong.dane.test: DANE: 451 4.7.5 TLS"),
        "{line}"
    );
    assert!(line.contains("no DANE-EE TLSA record matches"), "{line}");
    let log = world.log_with("DANE failure");
    let event = log
        .lines()
        .find(|l| l.contains("DANE failure"))
        .unwrap_or_else(|| panic!("no DANE failure in {log}"));
    assert!(event.contains("validation-failure"), "{event}");
    assert!(event.contains("tlsa"), "{event}");
    assert!(event.contains("mxwrong.dane.test"), "{event}");
    assert!(world.received("wrong.dane.test", "bob", 0).is_empty());
    sender.stop();
    world.mx.stop();
}

/// TLSA records in a zone whose chain of trust is broken (bogus): the only MX host is
/// skipped and the mail waits with `4.7.5`; with a second, good MX host the mail goes
/// there under DANE (RFC 7672 §2.2.3).
#[test]
fn a_bogus_tlsa_lookup_skips_the_host() {
    let world = world_or_skip!();
    let config = world.config();
    let (sender, addr) = world.sender(&config);
    send(&addr, "carol@bogus.dane.test", "bogus");
    let line = deferred(&config, "carol@bogus.dane.test");
    let owner = format!("_{}._tcp.mxbogus.dane.test", world.mx_port);
    assert!(
        line.contains(&format!(
            "mxbogus.dane.test: 451 4.7.5 DANE: TLSA lookup for {owner} failed securely"
        )),
        "{line}"
    );
    // Unbound says why: the chain of trust to the zone is broken.
    let unbound = unbound_log(&world.unbound);
    assert!(
        unbound.contains(&format!("validation failure <{owner}. TLSA IN>")),
        "{unbound}"
    );
    assert!(world.received("bogus.dane.test", "carol", 0).is_empty());

    send(&addr, "dave@two.dane.test", "second mx");
    let received = world.received("two.dane.test", "dave", 1);
    assert_eq!(received.len(), 1, "{}", world.log());
    assert!(received[0].contains("with ESMTPS"), "{}", received[0]);
    let log = world.log_with("DANE failure (host skipped)");
    assert!(
        log.lines()
            .any(|l| l.contains("DANE failure (host skipped)") && l.contains("dnssec-invalid")),
        "{log}"
    );
    assert!(
        log.contains("DANE: TLS checked against the TLSA records of mx.dane.test"),
        "{log}"
    );
    sender.stop();
    world.mx.stop();
}

/// An unsigned zone: its TLSA record (naming another key) means nothing, and the mail
/// goes with opportunistic TLS.
#[test]
fn an_unsigned_zone_is_opportunistic() {
    let world = world_or_skip!();
    let config = world.config();
    let (sender, addr) = world.sender(&config);
    send(&addr, "erin@plain.test", "unsigned");
    let received = world.received("plain.test", "erin", 1);
    assert_eq!(received.len(), 1, "{}", world.log());
    assert!(received[0].contains("Subject: unsigned"), "{}", received[0]);
    assert!(received[0].contains("with ESMTPS"), "{}", received[0]);
    let log = world.log();
    assert!(!log.contains("DANE"), "{log}");
    sender.stop();
    world.mx.stop();
}

/// A connection kept open is reused only under the same requirement: one opened with
/// opportunistic TLS to `mxwrong.dane.test` (for an unsigned domain whose MX it is)
/// does not carry mail for `wrong.dane.test`, whose TLSA record it does not match.
#[test]
fn an_opportunistic_connection_is_not_reused_under_dane() {
    let world = world_or_skip!();
    let config = world.config();
    let (sender, addr) = world.sender(&config);
    send(&addr, "frank@other.plain.test", "opportunistic first");
    let received = world.received("other.plain.test", "frank", 1);
    assert_eq!(received.len(), 1, "{}", world.log());
    assert!(received[0].contains("with ESMTPS"), "{}", received[0]);
    // The connection to mxwrong.dane.test waits for its next message (5 minutes).
    send(&addr, "bob@wrong.dane.test", "then under dane");
    let line = deferred(&config, "bob@wrong.dane.test");
    assert!(
        line.contains("mxwrong.dane.test: DANE: 451 4.7.5 TLS"),
        "{line}"
    );
    assert!(world.received("wrong.dane.test", "bob", 0).is_empty());
    sender.stop();
    world.mx.stop();
}

/// DANE wins over MTA-STS for a host with TLSA records (RFC 8461 §2): the domain's
/// `enforce` policy lists another MX host, and the MX host's certificate comes from a
/// CA the sender does not trust, so MTA-STS alone would make the mail wait; the host's
/// matching TLSA record gets it delivered, and no MTA-STS failure is recorded.
#[test]
fn dane_takes_precedence_over_mta_sts() {
    let world = world_or_skip!();
    let ca = Ca::new("MTA-STS policy test CA");
    let server = PolicyServer::start(
        &ca,
        "sts.dane.test",
        &policy("enforce", "mx.elsewhere.test"),
    );
    let (https, ca) = (server.port, ca.pem);
    let d = world.dir.path().display();
    write(world.dir.path(), "ca.pem", &ca);
    let config = world.config_with(&format!(
        "mta_sts = \"on\"\nmta_sts_port = {https}\nmta_sts_timeout = \"10s\"\nca_file = \"{d}/ca.pem\"\n"
    ));
    let (sender, addr) = world.sender(&config);
    send(&addr, "grace@sts.dane.test", "dane over sts");
    let received = world.received("sts.dane.test", "grace", 1);
    assert_eq!(received.len(), 1, "{}", world.log());
    assert!(received[0].contains("with ESMTPS"), "{}", received[0]);
    // The policy was fetched and applies to the domain...
    assert_eq!(server.connections(), 1);
    let cached =
        std::fs::read_to_string(world.dir.path().join("queue/mta-sts/sts.dane.test.policy"))
            .unwrap();
    assert!(cached.contains("mode: enforce"), "{cached}");
    // ... but not to a host under DANE.
    let log = world.log_with("DANE: TLS checked against the TLSA records of mx.dane.test");
    assert!(
        log.contains("DANE: TLS checked against the TLSA records of mx.dane.test"),
        "{log}"
    );
    assert!(!log.contains("MTA-STS failure"), "{log}");
    sender.stop();
    world.mx.stop();
}
