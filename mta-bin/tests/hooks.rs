//! The hooks of `docs/filters.md` through the `mta` binary: `[[milter]]`,
//! `[[policy_service]]` and `[rspamd]` checked by `mta check-config`, then run by `mta
//! serve` against real daemons started by each test (rspamd and postgrey, from
//! `.ci/deps/rspamd.sh` and `.ci/deps/policy.sh`; a test skips with a message when its
//! daemon is missing, except under `CI=true`) and against addresses where nothing
//! listens.

#![cfg(unix)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod support;

use std::path::Path;
use std::process::Child;
use std::time::Duration;

use smtp_client::testing::daemons::{postgrey, rspamd};

use support::{
    RawClient, assert_config_ok, assert_config_refused, block_on, config_file, free_address,
    maildir_files, rcpt_reply, run_with, serve, smtp_send, terminate,
};

/// GTUBE: rspamd's core answers `reject` for it.
const GTUBE: &str = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X";

#[test]
fn check_config_accepts_the_hooks_and_tells_bad_addresses_with_key_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let good = config_file(
        dir.path(),
        "[[milter]]\nname = \"opendkim\"\naddress = \"unix:/run/opendkim/opendkim.sock\"\n\
         default_action = \"accept\"\nlisteners = [\"relay\", \"submission\", \"sendmail\"]\n\
         [[milter]]\naddress = \"inet:127.0.0.1:7357\"\nstages = [\"mail\", \"rcpt\"]\n\
         end_of_message_timeout = \"2m\"\n\
         [[policy_service]]\naddress = \"inet:127.0.0.1:10023\"\ntimeout = \"5s\"\n\
         [rspamd]\naddress = \"http://127.0.0.1:11333\"\non_failure = \"accept\"\n",
    );
    assert_config_ok(&good);

    // The file's own lines 1-9 are the base; the hooks start at line 10.
    let bad = config_file(
        dir.path(),
        "[[milter]]\naddress = \"localhost:8891\"\n\
         [[policy_service]]\naddress = \"tcp:127.0.0.1:10023\"\n\
         [rspamd]\naddress = \"https://127.0.0.1:11333\"\n",
    );
    assert_config_refused(
        &bad,
        &[
            "line 11: [[milter]] address: bad milter address \"localhost:8891\"",
            "line 13: [[policy_service]] address: a policy service address is",
            "line 15: [rspamd] address: an rspamd address is",
        ],
    );

    // And at startup: one line, exit code 2.
    let (code, _, stderr) = run_with("serve", &bad);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("line 11: [[milter]] address"), "{stderr}");
}

#[test]
fn rspamd_refuses_gtube_at_the_end_of_data_and_scores_clean_mail() {
    let Some(rspamd) = rspamd() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(
        dir.path(),
        &format!(
            "accept_any_user = true\n[rspamd]\naddress = \"http://{}\"\ntimeout = \"10s\"\n",
            rspamd.address
        ),
    );
    let server = Running::serve(&config);

    let gtube = format!("Subject: spam\r\n\r\n{GTUBE}\r\n");
    let reply = block_on(async {
        let mut c = RawClient::connect(server.addr.parse().unwrap()).await;
        c.cmd("EHLO client.test").await;
        assert_eq!(c.code("MAIL FROM:<me@client.test>").await, "250 2.1.0");
        assert_eq!(c.code("RCPT TO:<user@mx.test>").await, "250 2.1.5");
        assert_eq!(c.code("DATA").await, "354");
        let reply = c.cmd(&format!("{gtube}.")).await;
        c.cmd("QUIT").await;
        reply.to_string()
    });
    assert!(reply.starts_with("554 5.7.1 Gtube pattern"), "{reply}");

    smtp_send(
        &server.addr,
        "me@client.test",
        &["user@mx.test"],
        "From: <me@client.test>\r\nSubject: hello\r\n\r\nJust a note.\r\n",
    );
    let files = maildir_files(dir.path(), "user", 1);
    assert_eq!(files.len(), 1, "only the clean message is delivered");
    let message = &files[0];
    assert!(
        message.contains("\nX-Spam-Status: No, score=")
            || message.starts_with("X-Spam-Status: No, score="),
        "{message}"
    );
    assert!(message.contains("required=15.00\n"), "{message}");
    assert!(message.contains("X-Spam-Score: "), "{message}");
    assert!(message.contains("Received: from client.test"), "{message}");
    assert!(
        message.ends_with("Subject: hello\n\nJust a note.\n"),
        "{message}"
    );
    server.stop();
}

#[test]
fn postgrey_greylists_the_first_rcpt_then_passes_the_retry() {
    let Some(postgrey) = postgrey(2) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(
        dir.path(),
        &format!(
            "accept_any_user = true\n[[policy_service]]\naddress = \"inet:{}\"\ntimeout = \"5s\"\n",
            postgrey.address
        ),
    );
    let server = Running::serve(&config);

    let first = rcpt_reply(&server.addr, "user@mx.test");
    assert!(first.starts_with("450 4.2.0 Greylisted, see "), "{first}");
    std::thread::sleep(Duration::from_secs(3));
    let said = smtp_send(
        &server.addr,
        "me@client.test",
        &["user@mx.test"],
        "Subject: hello\r\n\r\nbody\r\n",
    );
    assert!(said.contains("250 2.1.5"), "{said}");
    let files = maildir_files(dir.path(), "user", 1);
    assert_eq!(files.len(), 1);
    assert!(
        files[0].contains("X-Greylist: delayed ") && files[0].contains("at greylist.test;"),
        "{}",
        files[0]
    );
    server.stop();
}

#[test]
fn hooks_that_cannot_be_asked_get_their_default_action() {
    let dir = tempfile::tempdir().unwrap();
    let dead = free_address();

    // A milter nobody answers for, tempfail: 451 at MAIL FROM.
    let config = config_file(
        dir.path(),
        &format!(
            "accept_any_user = true\n[[milter]]\naddress = \"inet:{dead}\"\n\
             default_action = \"tempfail\"\nconnect_timeout = \"2s\"\n"
        ),
    );
    let server = Running::serve(&config);
    let mail = block_on(async {
        let mut c = RawClient::connect(server.addr.parse().unwrap()).await;
        assert_eq!(c.cmd("EHLO client.test").await.code().as_u16(), 250);
        let mail = c.cmd("MAIL FROM:<me@client.test>").await;
        c.cmd("QUIT").await;
        mail.to_string()
    });
    assert!(
        mail.starts_with("451 4.7.1 Service unavailable - try again later"),
        "{mail}"
    );
    server.stop();

    // The same milter with accept: delivered.
    let config = config_file(
        dir.path(),
        &format!(
            "accept_any_user = true\n[[milter]]\naddress = \"inet:{dead}\"\n\
             default_action = \"accept\"\n"
        ),
    );
    let server = Running::serve(&config);
    smtp_send(
        &server.addr,
        "me@client.test",
        &["a@mx.test"],
        "Subject: one\r\n\r\nbody\r\n",
    );
    assert_eq!(maildir_files(dir.path(), "a", 1).len(), 1);
    server.stop();

    // Hooks not asked on this listener, or for trusted networks: the dead milter
    // (tempfail) applies to submission only, the dead policy service (tempfail) skips
    // the trusted loopback.
    let config = config_file(
        dir.path(),
        &format!(
            "accept_any_user = true\n[relay]\ntrusted_networks = [\"127.0.0.0/8\"]\n\
             [[milter]]\naddress = \"inet:{dead}\"\nlisteners = [\"submission\"]\n\
             [[policy_service]]\naddress = \"inet:{dead}\"\n"
        ),
    );
    let server = Running::serve(&config);
    smtp_send(
        &server.addr,
        "me@client.test",
        &["b@mx.test"],
        "Subject: two\r\n\r\nbody\r\n",
    );
    assert_eq!(maildir_files(dir.path(), "b", 1).len(), 1);
    server.stop();

    // The policy service asked for trusted networks too: 451 4.3.0 at RCPT.
    let config = config_file(
        dir.path(),
        &format!(
            "accept_any_user = true\n[relay]\ntrusted_networks = [\"127.0.0.0/8\"]\n\
             [[policy_service]]\naddress = \"inet:{dead}\"\nask_trusted = true\n"
        ),
    );
    let server = Running::serve(&config);
    let rcpt = rcpt_reply(&server.addr, "c@mx.test");
    assert!(
        rcpt.starts_with("451 4.3.0 Policy service unavailable"),
        "{rcpt}"
    );
    server.stop();
}

/// `mta serve` on a configuration; killed on drop unless stopped.
struct Running {
    child: Option<Child>,
    addr: String,
}

impl Running {
    fn serve(config: &Path) -> Self {
        let (child, addr) = serve(config);
        Self {
            child: Some(child),
            addr,
        }
    }

    /// SIGTERM and a clean exit.
    fn stop(mut self) {
        if let Some(child) = self.child.take() {
            terminate(child);
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
