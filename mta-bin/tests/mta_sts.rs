//! MTA-STS (RFC 8461) in remote delivery, through the real `mta` binary: a sender
//! `mta` whose DNS is a loopback server the test starts (`dns_mx::testing::TestDns`),
//! the destination's policy on an HTTPS server the test starts (certificate from a
//! test CA, trusted through `[outbound] ca_file`), and a second `mta` as the MX host,
//! with STARTTLS and a certificate for its MX name (or a wrong one).
//!
//! What is asserted is what a user sees: the reply a deferred recipient waits with
//! (`mta queue list`), what the MX host's Maildir received, and the sender's log.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::{Path, PathBuf};

use dns_mx::testing::TestDns;

use support::outbound::{Ca, PolicyServer, Running, deferred, mx_host, policy, sender_config};
use support::{serve_logging, smtp_send, write};

/// A DNS server for sts.test: MX 10 `mx` (a name under sts.test) at 127.0.0.2, the
/// policy host at 127.0.0.1, and the `_mta-sts` record with `id`.
fn dns(runtime: &tokio::runtime::Runtime, mx: &str, id: &str) -> TestDns {
    let zone = format!(
        "$ORIGIN sts.test.\n$TTL 300\n\
         @ IN SOA ns root 1 3600 600 86400 60\n\
         @ IN MX 10 {mx}\n\
         {mx} IN A 127.0.0.2\n\
         mta-sts IN A 127.0.0.1\n\
         _mta-sts IN TXT \"v=STSv1; id={id}\"\n"
    );
    runtime.block_on(TestDns::start(&[&zone]))
}

/// Everything one test needs: the policy server, the MX host, the runtime
/// the DNS servers run on, and the sender's directory.
struct World {
    dir: tempfile::TempDir,
    runtime: tokio::runtime::Runtime,
    policy: PolicyServer,
    mx: Running,
    mx_port: u16,
}

impl World {
    /// The policy server serving `policy`, and the MX host with a certificate for
    /// `mx_names` from the test CA (or from another CA with `untrusted`).
    fn start(policy: &str, mx_names: &[&str], untrusted: bool) -> Self {
        Self::start_with(policy, mx_names, untrusted, false)
    }

    /// [`World::start`], the policy server's certificate from a CA nobody trusts with
    /// `policy_untrusted`.
    fn start_with(
        policy: &str,
        mx_names: &[&str],
        untrusted: bool,
        policy_untrusted: bool,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new("mta-sts test CA");
        write(dir.path(), "ca.pem", &ca.pem);
        let other = Ca::new("a CA nobody trusts");
        let server = PolicyServer::start(
            if policy_untrusted { &other } else { &ca },
            "sts.test",
            policy,
        );
        let issuer = if untrusted { &other } else { &ca };
        let (mx, mx_port) = mx_host(&dir.path().join("mx"), issuer, mx_names);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        Self {
            dir,
            runtime,
            policy: server,
            mx,
            mx_port,
        }
    }

    /// The sender's configuration, asking `dns`.
    fn config(&self, dns: &TestDns) -> PathBuf {
        self.config_with(dns, "")
    }

    /// The sender's configuration, asking `dns`, with `extra` in `[outbound]`.
    fn config_with(&self, dns: &TestDns, extra: &str) -> PathBuf {
        let d = self.dir.path().display();
        sender_config(
            self.dir.path(),
            Some(&dns.addr()),
            &format!(
                r#"port = {port}
ca_file = "{d}/ca.pem"
mta_sts_port = {https}
mta_sts_timeout = "10s"
{extra}"#,
                port = self.mx_port,
                https = self.policy.port,
            ),
        )
    }

    /// Starts the sender on `config`, its log (warnings) into `sender.log`.
    fn sender(&self, config: &Path) -> (Running, String) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("sender.log"))
            .unwrap();
        let (child, addr) = serve_logging(config, &[], "warn", log.into());
        (Running(Some(child)), addr)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sender.log")).unwrap_or_default()
    }

    /// The sender's log once it holds `needle` (see [`support::log_with`]).
    fn log_with(&self, needle: &str) -> String {
        support::log_with(&self.dir.path().join("sender.log"), needle)
    }

    /// The messages the MX host received for `user@sts.test`, waiting (up to 20 s) for
    /// `count`.
    fn received(&self, user: &str, count: usize) -> Vec<String> {
        let new = self
            .dir
            .path()
            .join("mx/maildir/sts.test")
            .join(user)
            .join("new");
        let start = std::time::Instant::now();
        loop {
            let files: Vec<String> = std::fs::read_dir(&new)
                .map(|d| {
                    d.filter_map(Result::ok)
                        .map(|f| std::fs::read_to_string(f.path()).unwrap())
                        .collect()
                })
                .unwrap_or_default();
            if files.len() >= count || start.elapsed().as_secs() > 20 {
                return files;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
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

/// `enforce`, and the domain's only MX is not in the policy: the mail waits with
/// `4.7.5` and says why; the MX host receives nothing.
#[test]
fn enforce_refuses_an_mx_not_in_the_policy() {
    let world = World::start(
        &policy("enforce", "mx.elsewhere.test"),
        &["mx.sts.test"],
        false,
    );
    let dns = dns(&world.runtime, "mx", "1");
    let config = world.config(&dns);
    let (sender, addr) = world.sender(&config);
    send(&addr, "alice@sts.test", "unlisted");
    let list = deferred(&config, "alice@sts.test");
    assert!(
        list.contains(
            "451 4.7.5 MTA-STS: no MX of sts.test matches its policy (mx: mx.elsewhere.test; MX hosts: mx.sts.test)"
        ),
        "{list}"
    );
    assert!(world.received("alice", 0).is_empty());
    assert!(
        world
            .log_with("validation-failure")
            .contains("validation-failure"),
        "{}",
        world.log()
    );
    sender.stop();
    world.mx.stop();
}

/// `enforce`, a listed MX whose certificate names another host: the mail waits (never
/// plaintext), with the TLS reason; the MX host receives nothing.
#[test]
fn enforce_refuses_a_certificate_for_another_name() {
    let world = World::start(
        &policy("enforce", "mx.sts.test"),
        &["somewhere.else.test"],
        false,
    );
    let dns = dns(&world.runtime, "mx", "1");
    let config = world.config(&dns);
    let (sender, addr) = world.sender(&config);
    send(&addr, "alice@sts.test", "wrong name");
    let list = deferred(&config, "alice@sts.test");
    assert!(
        list.contains("mx.sts.test: MTA-STS policy of sts.test (enforce): 451 4.7.5 TLS"),
        "{list}"
    );
    assert!(list.contains("certificate not valid for name"), "{list}");
    assert!(world.received("alice", 0).is_empty());
    assert!(
        world
            .log_with("certificate-host-mismatch")
            .contains("certificate-host-mismatch"),
        "{}",
        world.log()
    );
    sender.stop();
    world.mx.stop();
}

/// `enforce`, a listed MX whose certificate comes from a CA nobody trusts: the mail
/// waits; the MX host receives nothing.
#[test]
fn enforce_refuses_an_untrusted_certificate() {
    let world = World::start(&policy("enforce", "*.sts.test"), &["mx.sts.test"], true);
    let dns = dns(&world.runtime, "mx", "1");
    let config = world.config(&dns);
    let (sender, addr) = world.sender(&config);
    send(&addr, "alice@sts.test", "untrusted");
    let list = deferred(&config, "alice@sts.test");
    assert!(
        list.contains("mx.sts.test: MTA-STS policy of sts.test (enforce): 451 4.7.5 TLS"),
        "{list}"
    );
    assert!(list.contains("UnknownIssuer"), "{list}");
    assert!(world.received("alice", 0).is_empty());
    assert!(
        world
            .log_with("certificate-not-trusted")
            .contains("certificate-not-trusted"),
        "{}",
        world.log()
    );
    sender.stop();
    world.mx.stop();
}

/// `enforce`, a listed MX (by a wildcard) with a good certificate: delivered, under
/// TLS (the MX host's `Received:` says ESMTPS).
#[test]
fn enforce_delivers_over_verified_tls() {
    let world = World::start(&policy("enforce", "*.sts.test"), &["mx.sts.test"], false);
    let dns = dns(&world.runtime, "mx", "1");
    let config = world.config(&dns);
    let (sender, addr) = world.sender(&config);
    send(&addr, "alice@sts.test", "good");
    let received = world.received("alice", 1);
    assert_eq!(received.len(), 1);
    assert!(received[0].contains("Subject: good"), "{}", received[0]);
    assert!(received[0].contains("with ESMTPS"), "{}", received[0]);
    assert_eq!(world.policy.connections(), 1);
    // The policy is on disk, under the queue.
    let cached =
        std::fs::read_to_string(world.dir.path().join("queue/mta-sts/sts.test.policy")).unwrap();
    assert!(cached.contains("mode: enforce"), "{cached}");
    sender.stop();
    world.mx.stop();
}

/// `testing`, a certificate for another name: delivered all the same, and the failure
/// is recorded (a warning with its RFC 8460 result type).
#[test]
fn testing_delivers_and_reports() {
    let world = World::start(
        &policy("testing", "mx.sts.test"),
        &["somewhere.else.test"],
        false,
    );
    let dns = dns(&world.runtime, "mx", "1");
    let config = world.config(&dns);
    let (sender, addr) = world.sender(&config);
    send(&addr, "alice@sts.test", "testing mode");
    let received = world.received("alice", 1);
    assert_eq!(received.len(), 1, "delivered despite the certificate");
    assert!(received[0].contains("Subject: testing mode"));
    let log = world.log_with("MTA-STS failure");
    let line = log
        .lines()
        .find(|l| l.contains("MTA-STS failure"))
        .unwrap_or_else(|| panic!("no MTA-STS warning in {log}"));
    assert!(line.contains("delivered anyway"), "{line}");
    assert!(
        line.contains("mode=\"testing\"") || line.contains("mode=testing"),
        "{line}"
    );
    assert!(line.contains("certificate-host-mismatch"), "{line}");
    assert!(line.contains("mx.sts.test"), "{line}");
    sender.stop();
    world.mx.stop();
}

/// The cache: a policy fetched once is still enforced after a restart with the policy
/// server down (the same id: not fetched again); a new id in DNS fetches the new one.
#[test]
fn the_cache_survives_a_restart_and_a_new_id_refetches() {
    // The MX host has a certificate for both names; the first policy lists only mx.
    let world = World::start(
        &policy("enforce", "mx.sts.test"),
        &["mx.sts.test", "mx2.sts.test"],
        false,
    );
    let dns1 = dns(&world.runtime, "mx", "1");
    let config = world.config(&dns1);
    let (sender, addr) = world.sender(&config);
    send(&addr, "alice@sts.test", "first");
    assert_eq!(world.received("alice", 1).len(), 1);
    assert_eq!(world.policy.connections(), 1);
    sender.stop();

    // The policy server is down; DNS now names mx2 (same id). Without the cached
    // policy the mail would go (opportunistic TLS); with it, mx2 is not listed.
    world.policy.set(None);
    let dns2 = dns(&world.runtime, "mx2", "1");
    let config = world.config(&dns2);
    let (sender, addr) = world.sender(&config);
    send(&addr, "bob@sts.test", "second");
    let list = deferred(&config, "bob@sts.test");
    assert!(
        list.contains("4.7.5 MTA-STS: no MX of sts.test matches its policy (mx: mx.sts.test;"),
        "{list}"
    );
    assert_eq!(world.policy.connections(), 1, "the same id: not fetched");
    assert!(world.received("bob", 0).is_empty());
    sender.stop();

    // A new id, and the server serves a policy listing mx2: fetched, and delivered.
    world.policy.set(Some(&policy("enforce", "mx2.sts.test")));
    let dns3 = dns(&world.runtime, "mx2", "2");
    let config = world.config(&dns3);
    let (sender, addr) = world.sender(&config);
    send(&addr, "carol@sts.test", "third");
    let received = world.received("carol", 1);
    assert_eq!(received.len(), 1);
    assert!(received[0].contains("with ESMTPS"), "{}", received[0]);
    assert_eq!(world.policy.connections(), 2, "the new id: fetched again");
    let cached =
        std::fs::read_to_string(world.dir.path().join("queue/mta-sts/sts.test.policy")).unwrap();
    assert!(
        cached.contains("id: 2\n") && cached.contains("mx: mx2.sts.test"),
        "{cached}"
    );
    sender.stop();
    world.mx.stop();
}

/// `[outbound] mta_sts = "off"`: the policy is not even fetched, and the mail goes to
/// the unlisted MX (with opportunistic TLS), which the policy would have refused.
#[test]
fn with_mta_sts_off_the_policy_is_ignored() {
    let world = World::start(
        &policy("enforce", "mx.elsewhere.test"),
        &["mx.sts.test"],
        false,
    );
    let dns = dns(&world.runtime, "mx", "1");
    let config = world.config_with(&dns, "mta_sts = \"off\"\n");
    support::assert_config_ok(&config);
    let (sender, addr) = world.sender(&config);
    send(&addr, "alice@sts.test", "off");
    assert_eq!(world.received("alice", 1).len(), 1);
    assert_eq!(world.policy.connections(), 0);
    sender.stop();
    world.mx.stop();
}

/// `mta check-config` refuses a zero timeout, port 0, a file as the cache directory
/// and an unknown mode, each on its line.
#[test]
fn check_config_checks_the_keys() {
    let dir = tempfile::tempdir().unwrap();
    let config = support::config_file(
        dir.path(),
        "[outbound]\nmta_sts_timeout = \"0s\"\nmta_sts_port = 0\nmta_sts_cache = \"/etc/passwd\"\n",
    );
    support::assert_config_refused(
        &config,
        &[
            "line 11: [outbound] mta_sts_timeout: must be more than 0",
            "line 12: [outbound] mta_sts_port: must be a port from 1 to 65535",
            "line 13: [outbound] mta_sts_cache /etc/passwd: is a file; give a directory",
        ],
    );
    let config = support::config_file(dir.path(), "[outbound]\nmta_sts = \"maybe\"\n");
    let stderr = support::assert_config_refused(&config, &[]);
    assert!(
        stderr.contains("line 11: [outbound] mta_sts: unknown variant `maybe`"),
        "{stderr}"
    );
    let config = support::config_file(
        dir.path(),
        "[outbound]\nmta_sts = \"on\"\nmta_sts_timeout = \"5s\"\n",
    );
    support::assert_config_ok(&config);
}

/// A policy that cannot be fetched (its server's certificate does not verify), and
/// nothing cached: no policy (RFC 8461 §5.1), the mail goes as without MTA-STS, and
/// the failure is recorded as `sts-webpki-invalid`.
#[test]
fn an_unfetchable_policy_is_no_policy() {
    let world = World::start_with(
        &policy("enforce", "mx.elsewhere.test"),
        &["mx.sts.test"],
        false,
        true,
    );
    let dns = dns(&world.runtime, "mx", "1");
    let config = world.config(&dns);
    let (sender, addr) = world.sender(&config);
    send(&addr, "alice@sts.test", "no policy");
    assert_eq!(world.received("alice", 1).len(), 1);
    assert_eq!(world.policy.connections(), 1, "a fetch was tried");
    let log = world.log_with("MTA-STS failure (policy not fetched)");
    assert!(
        log.lines()
            .any(|l| l.contains("MTA-STS failure (policy not fetched)")
                && l.contains("sts-webpki-invalid")),
        "{log}"
    );
    assert!(
        !world
            .dir
            .path()
            .join("queue/mta-sts/sts.test.policy")
            .exists()
    );
    sender.stop();
    world.mx.stop();
}
