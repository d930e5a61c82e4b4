//! `mta queue`: listing and steering the queue of a running server (through its control
//! socket) and of a stopped one (on the store).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::{free_address, listed, maildir_files, queue_cmd, serve, smtp_send, terminate, write};

/// `mta queue` against a running server (through its control socket) and then on the
/// stopped server's queue: list with filters, show, summary, hold, delete, bounce (the
/// notification lands in the sender's Maildir), release.
#[test]
fn queue_commands_steer_a_running_server_and_a_stopped_one() {
    let dir = tempfile::tempdir().unwrap();
    // Remote mail goes to a relay that refuses connections: every attempt is deferred,
    // and retried only after an hour.
    let refused_addr = free_address();
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
retry_intervals = ["1h"]
[local]
domains = ["mx.test"]
maildir = "{d}/maildir"
mailboxes = ["me@mx.test"]
[relay]
trusted_networks = ["127.0.0.0/8"]
[outbound]
relay = "{refused_addr}"
tls = "disabled"
"#
        ),
    );
    let cfg = cfg.as_path();
    let (child, addr) = serve(cfg);
    let (code, text, _) = queue_cmd(cfg, &["list"]);
    assert_eq!((code, text.as_str()), (0, "The queue is empty.\n"));
    for (to, subject) in [
        (&["a@far.test", "b@far.test"][..], "one"),
        (&["c@far.test"][..], "two"),
        (&["d@other.test"][..], "three"),
    ] {
        smtp_send(
            &addr,
            "me@mx.test",
            to,
            &format!("From: me@mx.test\r\nSubject: {subject}\r\n\r\nbody {subject}\r\n"),
        );
    }
    let start = std::time::Instant::now();
    while listed(cfg, &["--state", "deferred"]).len() < 3 {
        assert!(start.elapsed().as_secs() < 20, "three deferred messages");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let all = listed(cfg, &[]);
    assert_eq!(all.len(), 3, "{all:?}");
    let (one, two, three) = (all[0].as_str(), all[1].as_str(), all[2].as_str());
    assert_eq!(
        listed(cfg, &["--domain", "other.test"]),
        vec![three.to_owned()]
    );
    assert_eq!(listed(cfg, &["--sender", "ME@MX"]).len(), 3);
    assert_eq!(listed(cfg, &["--sender", "<>"]).len(), 0);
    assert_eq!(listed(cfg, &["--older-than", "1h"]).len(), 0);
    assert_eq!(listed(cfg, &["--limit", "1"]), vec![one.to_owned()]);
    let (_, text, _) = queue_cmd(cfg, &["list", "--domain", "nowhere.test"]);
    assert_eq!(text, "No message in the queue matches.\n");

    let (code, text, _) = queue_cmd(cfg, &["list"]);
    assert_eq!(code, 0);
    assert!(text.contains(&format!("{one}  deferred")), "{text}");
    assert!(text.contains("pending    a@far.test"), "{text}");
    assert!(text.contains("next attempt in "), "{text}");
    assert!(text.contains("-- 3 of 3 messages"), "{text}");

    let (code, text, _) = queue_cmd(cfg, &["show", two]);
    assert_eq!(code, 0);
    assert!(text.contains("Subject: two"), "the header: {text}");
    assert!(!text.contains("body two"), "no body without --body: {text}");
    let (_, text, _) = queue_cmd(cfg, &["show", two, "--body"]);
    assert!(text.contains("body two"), "{text}");

    let (code, text, _) = queue_cmd(cfg, &["summary"]);
    assert_eq!(code, 0);
    assert!(text.starts_with("3 messages"), "{text}");
    let far = text.lines().find(|l| l.starts_with("far.test")).unwrap();
    assert_eq!(far.split_whitespace().nth(1), Some("2"), "{text}");

    let (code, text, _) = queue_cmd(cfg, &["hold", one]);
    assert_eq!(
        (code, text.lines().next()),
        (0, Some(&*format!("{one}: done")))
    );
    assert_eq!(listed(cfg, &["--state", "held"]), vec![one.to_owned()]);

    let (code, _, _) = queue_cmd(cfg, &["delete", three]);
    assert_eq!(code, 0);
    let (code, text, _) = queue_cmd(cfg, &["delete", "0000000000000001"]);
    assert_eq!(code, 1, "an unknown id: exit 1: {text}");
    assert!(text.contains("not in the queue"), "{text}");

    let (code, _, _) = queue_cmd(cfg, &["bounce", two]);
    assert_eq!(code, 0);
    let notifications = maildir_files(dir.path(), "me", 1);
    assert_eq!(notifications.len(), 1, "a notification to the sender");
    let bounce = &notifications[0];
    assert!(
        bounce.contains("Final-Recipient: rfc822; c@far.test\nAction: failed\nStatus: 5.0.0"),
        "{bounce}"
    );
    assert!(bounce.contains("Subject: two"), "{bounce}");
    assert_eq!(
        listed(cfg, &[]),
        vec![one.to_owned()],
        "only the held one is left"
    );
    terminate(child);

    // No server: the command opens the queue itself.
    assert!(
        !dir.path().join("queue/control.sock").exists(),
        "socket removed"
    );
    assert_eq!(listed(cfg, &["--state", "held"]), vec![one.to_owned()]);
    let (code, text, _) = queue_cmd(cfg, &["release", one]);
    assert_eq!(
        (code, text.lines().next()),
        (0, Some(&*format!("{one}: done")))
    );
    let (_, json, _) = queue_cmd(cfg, &["list", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["messages"][0]["state"], "deferred", "{json}");
    // On every message: counts, not a line per message.
    let (code, text, _) = queue_cmd(cfg, &["hold", "--all"]);
    assert_eq!((code, text.as_str()), (0, "1 messages changed\n"));
    let (code, text, _) = queue_cmd(cfg, &["hold", "--all"]);
    assert_eq!(
        (code, text.as_str()),
        (0, "0 messages changed\n1 unchanged (already held)\n")
    );
}
