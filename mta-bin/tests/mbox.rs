//! mbox delivery (`[local] mbox`) through the real `mta` binary, read back with Python's
//! `mailbox.mbox`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use support::{assert_config_ok, assert_config_refused, serve, smtp_send, terminate, write};

/// A configuration with `[local] mbox` (and no maildir) in `dir`.
fn mbox_config(dir: &Path) -> PathBuf {
    let text = format!(
        "hostname = \"mx.test\"\n[[listener]]\naddress = \"127.0.0.1:0\"\nmode = \"relay\"\n[queue]\npath = \"{d}/queue\"\n[local]\ndomains = [\"mx.test\"]\nmbox = \"{d}/mbox\"\nmailboxes = [\"bob@mx.test\"]\n",
        d = dir.display()
    );
    write(dir, "mta.toml", &text)
}

fn bob(dir: &Path) -> PathBuf {
    dir.join("mbox/mx.test/bob")
}

/// The mbox's text once it holds `count` messages (at most 20 s).
fn wait_for(path: &Path, count: usize) -> String {
    let start = Instant::now();
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let messages = text
            .split_inclusive('\n')
            .filter(|l| l.starts_with("From "))
            .count();
        if messages >= count || start.elapsed() > Duration::from_secs(20) {
            return text;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Python's `mailbox.mbox` on `path`: per message, its `From ` line (without `From `),
/// subject, `Return-Path` and body, one JSON object a line.
fn python_read(path: &Path) -> Vec<serde_json::Value> {
    let script = r#"
import json, mailbox, sys
for m in mailbox.mbox(sys.argv[1], create=False):
    print(json.dumps({"from": m.get_from(), "subject": m["subject"],
                      "return_path": m["return-path"], "body": m.get_payload()}))
"#;
    support::python(script, &[path.to_str().unwrap()])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn two_messages_are_appended_and_python_reads_them_back() {
    let dir = tempfile::tempdir().unwrap();
    let (child, addr) = serve(&mbox_config(dir.path()));
    smtp_send(
        &addr,
        "me@client.test",
        &["bob@mx.test"],
        "Subject: first\r\n\r\nFrom me\r\n>From you\r\nFromage\r\n",
    );
    wait_for(&bob(dir.path()), 1);
    // A bounce (null sender), to a sub-address of bob.
    smtp_send(
        &addr,
        "",
        &["bob+news@mx.test"],
        "Subject: second\r\n\r\nhi\r\n",
    );
    let text = wait_for(&bob(dir.path()), 2);
    terminate(child);

    // mboxrd on disk: `>` added to lines matching `^>*From `, LF line endings, a blank
    // line after each message.
    assert!(text.starts_with("From me@client.test "), "{text}");
    assert!(
        text.contains("\n>From me\n>>From you\nFromage\n\nFrom MAILER-DAEMON "),
        "{text}"
    );
    assert!(text.ends_with("\nhi\n\n"), "{text}");
    assert!(!text.contains('\r'), "{text}");
    assert!(text.contains("Delivered-To: bob+news@mx.test\n"), "{text}");

    let messages = python_read(&bob(dir.path()));
    assert_eq!(messages.len(), 2, "{messages:?}");
    let (first, second) = (&messages[0], &messages[1]);
    assert_eq!(first["subject"], "first");
    assert_eq!(second["subject"], "second");
    assert_eq!(first["return_path"], "<me@client.test>");
    assert_eq!(second["return_path"], "<>");
    // The `From ` lines: sender, then an asctime date (`Sun Dec  6 08:20:08 2026`).
    let from = first["from"].as_str().unwrap();
    assert!(from.starts_with("me@client.test "), "{from}");
    let date: Vec<&str> = from.split_whitespace().skip(1).collect();
    assert_eq!(date.len(), 5, "{from}");
    assert_eq!(date[3].len(), 8, "{from}");
    assert!(
        second["from"]
            .as_str()
            .unwrap()
            .starts_with("MAILER-DAEMON "),
        "{second}"
    );
    // Python's mbox reader (mboxo-style) does not unquote: the body shows the quoting
    // as stored, and taking one `>` off each `^>+From ` line (mboxrd) gives back what
    // was sent.
    let body = first["body"].as_str().unwrap();
    assert_eq!(body, ">From me\n>>From you\nFromage\n");
    let unquoted: Vec<&str> = body
        .lines()
        .map(|l| {
            let quotes = l.len() - l.trim_start_matches('>').len();
            if quotes > 0 && l[quotes..].starts_with("From ") {
                &l[1..]
            } else {
                l
            }
        })
        .collect();
    assert_eq!(unquoted, ["From me", ">From you", "Fromage"]);
    assert_eq!(second["body"], "hi\n");

    // Created 0600; no lock left behind.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(bob(dir.path()))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    assert!(!dir.path().join("mbox/mx.test/bob.lock").exists());
}

#[test]
fn a_held_dot_lock_delays_delivery_until_it_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("mbox/mx.test");
    std::fs::create_dir_all(&folder).unwrap();
    let lock = folder.join("bob.lock");
    std::fs::write(&lock, "").unwrap();
    let (child, addr) = serve(&mbox_config(dir.path()));
    smtp_send(
        &addr,
        "me@client.test",
        &["bob@mx.test"],
        "Subject: waited\r\n\r\nhi\r\n",
    );
    std::thread::sleep(Duration::from_secs(2));
    let before = std::fs::read_to_string(bob(dir.path())).unwrap_or_default();
    assert_eq!(before, "", "delivered despite the lock");
    std::fs::remove_file(&lock).unwrap();
    let text = wait_for(&bob(dir.path()), 1);
    terminate(child);
    assert!(text.contains("Subject: waited\n"), "{text}");
    assert!(!lock.exists());
}

#[test]
fn check_config_wants_one_of_maildir_mbox_and_lmtp() {
    let dir = tempfile::tempdir().unwrap();
    assert_config_ok(&mbox_config(dir.path()));
    // support's configuration has maildir on line 9; mbox comes on line 10.
    let both = support::config_file(dir.path(), "mbox = \"/var/mail\"\n");
    assert_config_refused(
        &both,
        &["line 10: [local] mbox: give one of maildir, mbox and lmtp, not mbox and maildir"],
    );
    let text = std::fs::read_to_string(mbox_config(dir.path())).unwrap();
    let with_lmtp = write(
        dir.path(),
        "lmtp.toml",
        &format!("{text}lmtp = \"127.0.0.1:24\"\n"),
    );
    assert_config_refused(
        &with_lmtp,
        &["line 9: [local] mbox: give one of maildir, mbox and lmtp, not mbox and lmtp"],
    );
}
