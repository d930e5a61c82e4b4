//! An LMTP listener (`[[listener]] mode = "lmtp"`, RFC 2033) on the real `mta` binary,
//! delivering to Maildir: Python's `smtplib.LMTP` (a client nobody here wrote) hands a
//! message over for two recipients and reads one reply for each after the data, and so
//! does Postfix's `smtp-source -L`; the workspace's raw client checks the protocol line
//! by line; `mta check-config` keeps the listener off public addresses.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::{Path, PathBuf};

use smtp_client::testing::code_of;
use support::{
    RawClient, assert_config_ok, assert_config_refused, block_on, maildir_files, python, run_ok,
    serve, terminate, write,
};

/// `mta.toml` in `dir`: one LMTP listener at `listen`, mailboxes ann and bob at mx.test
/// in `dir/maildir`.
fn lmtp_config(dir: &Path, listen: &str) -> PathBuf {
    let text = format!(
        "hostname = \"mx.test\"\n\
         [[listener]]\naddress = \"{listen}\"\nmode = \"lmtp\"\n\
         [queue]\npath = \"{d}/queue\"\n\
         [local]\ndomains = [\"mx.test\"]\nmaildir = \"{d}/maildir\"\n\
         mailboxes = [\"ann@mx.test\", \"bob@mx.test\"]\n",
        d = dir.display()
    );
    write(dir, "mta.toml", &text)
}

/// Hands a message to ann and bob over LMTP with `smtplib.LMTP`: LHLO (its `ehlo`),
/// MAIL, RCPT, RCPT, then `data` returns the first recipient's reply and `getreply` reads
/// the second's, as RFC 2033 §4.2 has them. Prints one line per reply.
const SMTPLIB_LMTP: &str = r#"
import smtplib, sys
host, port = sys.argv[1].rsplit(":", 1)
lmtp = smtplib.LMTP(host, int(port), timeout=30)
code, _ = lmtp.ehlo("client.test")
assert code == 250, code
assert lmtp.does_esmtp
code, msg = lmtp.mail("sender@client.test")
assert code == 250, (code, msg)
for rcpt in ["ann@mx.test", "bob@mx.test"]:
    code, msg = lmtp.rcpt(rcpt)
    assert code == 250, (rcpt, code, msg)
message = b"Subject: over lmtp\r\nFrom: sender@client.test\r\n\r\nhanded over by smtplib\r\n"
replies = [lmtp.data(message)]
replies.append(lmtp.getreply())
for code, msg in replies:
    print(code, msg.decode())
# Nothing left unread: the next command gets its own reply.
code, _ = lmtp.noop()
assert code == 250, code
lmtp.quit()
"#;

#[test]
fn smtplib_lmtp_gets_one_reply_per_recipient_and_the_mail_lands() {
    let dir = tempfile::tempdir().unwrap();
    let (child, addr) = serve(&lmtp_config(dir.path(), "127.0.0.1:0"));
    let out = python(SMTPLIB_LMTP, &[&addr]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    for line in &lines {
        assert!(line.starts_with("250 2.0.0 Ok: queued as "), "{out}");
    }
    // Queued once, for both.
    assert_eq!(lines[0], lines[1]);
    for user in ["ann", "bob"] {
        let files = maildir_files(dir.path(), user, 1);
        assert_eq!(files.len(), 1, "{user}");
        let stored = &files[0];
        assert!(stored.contains("Subject: over lmtp"), "{stored}");
        assert!(stored.contains("\nhanded over by smtplib"), "{stored}");
        assert!(stored.contains("by mx.test (mta) with LMTP"), "{stored}");
        assert!(
            stored.contains(&format!("Delivered-To: {user}@mx.test")),
            "{stored}"
        );
    }
    terminate(child);
}

#[test]
fn raw_lmtp_refuses_ehlo_and_answers_each_accepted_recipient() {
    let dir = tempfile::tempdir().unwrap();
    let (child, addr) = serve(&lmtp_config(dir.path(), "127.0.0.1:0"));
    let replies = block_on(async {
        let mut c = RawClient::connect(addr.parse().unwrap()).await;
        assert!(c.greeting.to_string().contains("LMTP"), "{}", c.greeting);
        assert_eq!(c.code("EHLO client.test").await, "500 5.5.1");
        assert_eq!(c.code("HELO client.test").await, "500 5.5.1");
        let lhlo = c.cmd("LHLO client.test").await;
        assert_eq!(code_of(&lhlo), "250");
        assert!(!lhlo.to_string().contains("AUTH"), "{lhlo}");
        assert_eq!(c.code("MAIL FROM:<sender@client.test>").await, "250 2.1.0");
        assert_eq!(c.code("RCPT TO:<bob@mx.test>").await, "250 2.1.5");
        // Refused at RCPT: no reply for it after the data.
        assert_eq!(c.code("RCPT TO:<nobody@mx.test>").await, "550 5.1.1");
        assert_eq!(c.code("RCPT TO:<far@elsewhere.test>").await, "554 5.7.1");
        assert_eq!(c.code("RCPT TO:<ann@mx.test>").await, "250 2.1.5");
        assert_eq!(c.code("DATA").await, "354");
        c.send(b"Subject: raw\r\n\r\nraw body\r\n.\r\n").await;
        let replies = vec![c.reply().await.to_string(), c.reply().await.to_string()];
        // Then nothing but HELP's own reply.
        assert_eq!(c.code("HELP").await, "214 2.0.0");
        assert_eq!(c.code("QUIT").await, "221 2.0.0");
        replies
    });
    for reply in &replies {
        assert!(reply.starts_with("250 2.0.0 Ok: queued as "), "{replies:?}");
    }
    for user in ["ann", "bob"] {
        let files = maildir_files(dir.path(), user, 1);
        assert_eq!(files.len(), 1, "{user}");
        assert!(files[0].contains("\nraw body"), "{}", files[0]);
    }
    terminate(child);
}

#[test]
fn check_config_keeps_lmtp_off_public_addresses() {
    let dir = tempfile::tempdir().unwrap();
    assert_config_ok(&lmtp_config(dir.path(), "127.0.0.1:2424"));
    assert_config_ok(&lmtp_config(dir.path(), "10.1.2.3:2424"));
    assert_config_ok(&lmtp_config(dir.path(), "[fd00::25]:2424"));
    let every = run_ok("check-config", &lmtp_config(dir.path(), "0.0.0.0:2424"));
    assert!(
        every.contains("warning: [[listener]] mode = \"lmtp\" on 0.0.0.0:2424: every interface"),
        "{every}"
    );
    let stderr = assert_config_refused(&lmtp_config(dir.path(), "203.0.113.5:2424"), &[]);
    assert!(
        stderr.contains(
            "[[listener]] mode = \"lmtp\" on 203.0.113.5:2424: LMTP has no authentication"
        ),
        "{stderr}"
    );
    let stderr = assert_config_refused(&lmtp_config(dir.path(), "[2001:db8::25]:2424"), &[]);
    assert!(stderr.contains("LMTP has no authentication"), "{stderr}");
}

/// Postfix's own LMTP client: `smtp-source -L` reads one reply per recipient after the
/// data (and fails on a missing or extra one).
#[test]
fn postfix_smtp_source_speaks_lmtp_to_it() {
    let Some(source) = ["/usr/sbin/smtp-source", "/usr/bin/smtp-source"]
        .into_iter()
        .find(|p| Path::new(p).exists())
    else {
        assert!(
            !std::env::var("CI").is_ok_and(|v| v == "true"),
            "smtp-source is required under CI=true (.ci/run installs postfix)"
        );
        eprintln!("skipping: smtp-source (from the postfix package) not found");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let config = lmtp_config(dir.path(), "127.0.0.1:0");
    // Any user: smtp-source makes its second recipient `2ann@mx.test`.
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "mailboxes = [\"ann@mx.test\", \"bob@mx.test\"]",
        "accept_any_user = true",
    );
    std::fs::write(&config, text).unwrap();
    let (child, addr) = serve(&config);
    let out = std::process::Command::new(source)
        .args(["-L", "-v", "-m", "1", "-r", "2", "-f", "a@client.test"])
        .args(["-t", "ann@mx.test", &addr])
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    let after_data = log.split("<<< 354").nth(1).unwrap_or_default();
    assert_eq!(
        after_data.matches("<<< 250 2.0.0 Ok: queued as ").count(),
        2,
        "{log}"
    );
    for user in ["ann", "2ann"] {
        assert_eq!(maildir_files(dir.path(), user, 1).len(), 1, "{user}");
    }
    terminate(child);
}
