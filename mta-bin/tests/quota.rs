//! Mailbox quotas (`[local.quota]`) and per-domain and per-address targets
//! (`[local.targets]`) through the real `mta` binary over SMTP: a full mailbox is
//! refused at RCPT (`452 4.2.2`), a message that does not fit at the end of DATA
//! (`552 5.2.2`, or `452 4.2.2` when other recipients would take it), `maildirsize` is
//! kept as Maildir++ says, and Dovecot's `doveadm` (run without a daemon) counts what
//! `mta` counts.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use support::{
    RawClient, assert_config_ok, assert_config_refused, block_on, listed, maildir_files, serve,
    smtp_send, terminate, write,
};

/// A configuration in `dir` with the local domains `mx.test` and `other.test`
/// delivered to `<dir>/maildir`, the mailboxes bob, carol and ann of mx.test and bob of
/// other.test, then `extra` (which may open `[local.quota]`).
fn config(dir: &Path, extra: &str) -> PathBuf {
    let text = format!(
        "hostname = \"mx.test\"\n[[listener]]\naddress = \"127.0.0.1:0\"\nmode = \"relay\"\n\
         [queue]\npath = \"{d}/queue\"\nretry_intervals = [\"1h\"]\n[local]\n\
         domains = [\"mx.test\", \"other.test\"]\nmaildir = \"{d}/maildir\"\n\
         mailboxes = [\"bob@mx.test\", \"carol@mx.test\", \"ann@mx.test\", \"bob@other.test\"]\n\
         {extra}",
        d = dir.display()
    );
    write(dir, "mta.toml", &text)
}

/// The Maildir of `user` (`bob`, or `bob@other.test`).
fn maildir(dir: &Path, user: &str) -> PathBuf {
    let (user, domain) = user.split_once('@').unwrap_or((user, "mx.test"));
    dir.join("maildir").join(domain).join(user)
}

/// Puts a message of `size` bytes into `user`'s Maildir, as another program would.
fn stored(dir: &Path, user: &str, name: &str, size: usize) {
    let new = maildir(dir, user).join("new");
    for sub in ["new", "cur", "tmp"] {
        std::fs::create_dir_all(maildir(dir, user).join(sub)).unwrap();
    }
    std::fs::write(new.join(name), vec![b'x'; size]).unwrap();
}

/// A message of about `size` bytes.
fn message(subject: &str, size: usize) -> String {
    let line = format!("{}\r\n", "y".repeat(70));
    let body = line.repeat(size / line.len() + 1);
    format!("Subject: {subject}\r\n\r\n{body}")
}

/// One transaction: `MAIL FROM` with `mail_params`, the recipients, and with `body`
/// DATA and the message (when DATA gets `354`); the replies, from MAIL's on.
fn transaction(addr: &str, mail_params: &str, to: &[&str], body: Option<&str>) -> Vec<String> {
    let addr = addr.parse().unwrap();
    block_on(async {
        let mut c = RawClient::connect(addr).await;
        let mut said = Vec::new();
        c.cmd("EHLO client.test").await;
        said.push(
            c.cmd(&format!("MAIL FROM:<me@client.test>{mail_params}"))
                .await
                .to_string(),
        );
        for to in to {
            said.push(c.cmd(&format!("RCPT TO:<{to}>")).await.to_string());
        }
        if let Some(body) = body {
            let reply = c.cmd("DATA").await.to_string();
            let go = reply.starts_with("354");
            said.push(reply);
            if go {
                c.send(format!("{body}.\r\n").as_bytes()).await;
                said.push(c.reply().await.to_string());
            }
        }
        c.cmd("QUIT").await;
        said
    })
}

/// The `maildirsize` of `user`: its header and the sums of its lines.
fn maildirsize(dir: &Path, user: &str) -> (String, i64, i64, String) {
    let text = std::fs::read_to_string(maildir(dir, user).join("maildirsize")).unwrap();
    let mut lines = text.lines();
    let header = lines.next().unwrap().to_owned();
    let (mut bytes, mut count) = (0, 0);
    for line in lines {
        let mut fields = line.split_whitespace();
        bytes += fields.next().unwrap().parse::<i64>().unwrap();
        count += fields.next().unwrap().parse::<i64>().unwrap();
    }
    (header, bytes, count, text)
}

/// What `user`'s Maildir holds, counted here: (bytes on disk, files) in `new/` and
/// `cur/` of INBOX and each folder.
fn on_disk(dir: &Path, user: &str) -> (i64, i64) {
    let root = maildir(dir, user);
    let mut dirs = vec![root.clone()];
    for entry in std::fs::read_dir(&root).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name().to_string_lossy().starts_with('.') && entry.path().is_dir() {
            dirs.push(entry.path());
        }
    }
    let (mut bytes, mut count) = (0, 0);
    for d in dirs {
        for sub in ["new", "cur"] {
            for f in std::fs::read_dir(d.join(sub)).into_iter().flatten() {
                let f = f.unwrap();
                bytes += f.metadata().unwrap().len() as i64;
                count += 1;
                // The size in the name is the size of the file.
                let name = f.file_name().to_string_lossy().into_owned();
                if let Some(s) = name.split(",S=").nth(1) {
                    let s: String = s.chars().take_while(char::is_ascii_digit).collect();
                    assert_eq!(s.parse::<u64>().unwrap(), f.metadata().unwrap().len());
                }
            }
        }
    }
    (bytes, count)
}

/// Waits (at most 20 s) until `user`'s maildirsize counts `count` messages.
fn wait_counted(dir: &Path, user: &str, count: i64) -> (String, i64, i64, String) {
    let start = Instant::now();
    loop {
        let path = maildir(dir, user).join("maildirsize");
        if path.exists() {
            let found = maildirsize(dir, user);
            if found.2 >= count || start.elapsed() > Duration::from_secs(20) {
                return found;
            }
        } else if start.elapsed() > Duration::from_secs(20) {
            panic!("no {}", path.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_full_mailbox_is_refused_at_rcpt_and_the_other_recipient_gets_the_message() {
    let dir = tempfile::tempdir().unwrap();
    // bob holds 2000 bytes (from another program, no maildirsize yet): over 1 KiB.
    stored(dir.path(), "bob", "1.other,S=2000", 2000);
    let file = config(dir.path(), "[local.quota]\nbytes = \"1K\"\n");
    let (child, addr) = serve(&file);
    let said = transaction(
        &addr,
        "",
        &["bob@mx.test", "bob+news@mx.test", "carol@mx.test"],
        Some(&message("for carol", 100)),
    );
    assert!(said[1].starts_with("452 4.2.2 "), "{said:?}");
    assert!(said[1].contains("Mailbox full"), "{said:?}");
    assert!(said[2].starts_with("452 4.2.2 "), "{said:?}");
    assert!(said[3].starts_with("250 "), "{said:?}");
    assert!(said[5].starts_with("250 2.0.0 Ok: queued"), "{said:?}");
    let carol = maildir_files(dir.path(), "carol", 1);
    assert_eq!(carol.len(), 1);
    assert!(carol[0].contains("Subject: for carol"));
    // bob's box was counted from its folders, and the count written down.
    let (header, bytes, count, _) = maildirsize(dir.path(), "bob");
    assert_eq!((header.as_str(), bytes, count), ("1024S", 2000, 1));
    assert_eq!(
        std::fs::read_dir(maildir(dir.path(), "bob").join("new"))
            .unwrap()
            .count(),
        1
    );
    terminate(child);
}

#[test]
fn a_declared_size_larger_than_the_room_left_is_refused_at_rcpt() {
    let dir = tempfile::tempdir().unwrap();
    let file = config(dir.path(), "[local.quota]\nbytes = \"10K\"\ngrace = 0\n");
    let (child, addr) = serve(&file);
    let said = transaction(&addr, " SIZE=20000", &["bob@mx.test"], None);
    assert!(said[1].starts_with("452 4.2.2 "), "{said:?}");
    assert!(said[1].contains("20000 bytes"), "{said:?}");
    let said = transaction(&addr, " SIZE=10000", &["bob@mx.test"], None);
    assert!(said[1].starts_with("250 "), "{said:?}");
    terminate(child);
}

#[test]
fn a_message_that_does_not_fit_is_refused_at_the_end_of_data_and_not_queued() {
    let dir = tempfile::tempdir().unwrap();
    // ann holds 990 of her 1000 bytes.
    stored(dir.path(), "ann", "1.other,S=990", 990);
    let file = config(dir.path(), "[local.quota]\nbytes = 1000\ngrace = \"2K\"\n");
    let (child, addr) = serve(&file);
    // 1000 bytes and 2 KiB of grace: a message of 5000 does not fit.
    let said = transaction(&addr, "", &["bob@mx.test"], Some(&message("big", 5000)));
    let last = said.last().unwrap();
    assert!(last.starts_with("552 5.2.2 "), "{said:?}");
    assert!(last.contains("<bob@mx.test>"), "{said:?}");
    assert!(listed(&file, &[]).is_empty());
    assert!(!maildir(dir.path(), "bob").join("new").exists());
    // Under the limit before, within the grace after: accepted, and ann is now over.
    let said = transaction(&addr, "", &["ann@mx.test"], Some(&message("fits", 1500)));
    assert!(said.last().unwrap().starts_with("250 "), "{said:?}");
    let (_, bytes, count, _) = wait_counted(dir.path(), "ann", 2);
    assert!(bytes > 1000 + 1500 && bytes <= 1000 + 2048, "{bytes}");
    assert_eq!(count, 2);
    let said = transaction(&addr, "", &["ann@mx.test"], None);
    assert!(said[1].starts_with("452 4.2.2 "), "{said:?}");
    terminate(child);
}

#[test]
fn in_smtp_some_recipients_full_defers_the_whole_message() {
    let dir = tempfile::tempdir().unwrap();
    let extra =
        "[local.quota]\nbytes = 1000\n[local.quota.mailboxes.\"carol@mx.test\"]\nbytes = 0\n";
    let file = config(dir.path(), extra);
    let (child, addr) = serve(&file);
    let said = transaction(
        &addr,
        "",
        &["bob@mx.test", "carol@mx.test"],
        Some(&message("mixed", 3000)),
    );
    assert!(
        said[1].starts_with("250 ") && said[2].starts_with("250 "),
        "{said:?}"
    );
    let last = said.last().unwrap();
    assert!(last.starts_with("452 4.2.2 "), "{said:?}");
    assert!(
        last.contains("<bob@mx.test>") && !last.contains("carol"),
        "{said:?}"
    );
    assert!(listed(&file, &[]).is_empty());
    // carol alone: no limit for her.
    let said = transaction(&addr, "", &["carol@mx.test"], Some(&message("alone", 3000)));
    assert!(said.last().unwrap().starts_with("250 "), "{said:?}");
    assert_eq!(maildir_files(dir.path(), "carol", 1).len(), 1);
    terminate(child);
}

#[test]
fn the_message_limit_and_the_limits_of_domains_and_mailboxes() {
    let dir = tempfile::tempdir().unwrap();
    let extra = "[local.quota]\nmessages = 2\nbytes = \"1M\"\n\
                 [local.quota.domains.\"other.test\"]\nmessages = 1\n\
                 [local.quota.mailboxes.\"ann@mx.test\"]\nbytes = 100\nmessages = 0\n";
    let file = config(dir.path(), extra);
    let (child, addr) = serve(&file);
    for n in 0..2 {
        smtp_send(
            &addr,
            "me@client.test",
            &["bob@mx.test"],
            &message(&format!("{n}"), 10),
        );
    }
    let (header, _, count, _) = wait_counted(dir.path(), "bob", 2);
    assert_eq!((header.as_str(), count), ("1048576S,2C", 2));
    let said = transaction(&addr, "", &["bob@mx.test"], None);
    assert!(said[1].starts_with("452 4.2.2 "), "{said:?}");
    // other.test: one message (and the default's bytes).
    smtp_send(
        &addr,
        "me@client.test",
        &["bob@other.test"],
        &message("o", 10),
    );
    let (header, _, count, _) = wait_counted(dir.path(), "bob@other.test", 1);
    assert_eq!((header.as_str(), count), ("1048576S,1C", 1));
    let said = transaction(&addr, "", &["bob@other.test"], None);
    assert!(said[1].starts_with("452 4.2.2 "), "{said:?}");
    // ann: 100 bytes, any number of messages; the default for carol.
    let said = transaction(&addr, "", &["ann@mx.test"], Some(&message("a", 500)));
    assert!(said.last().unwrap().starts_with("552 5.2.2 "), "{said:?}");
    let said = transaction(&addr, " SIZE=200", &["ann@mx.test", "carol@mx.test"], None);
    assert!(said[1].starts_with("452 4.2.2 "), "{said:?}");
    assert!(said[2].starts_with("250 "), "{said:?}");
    terminate(child);
}

#[test]
fn maildirsize_gets_a_line_per_delivery_that_adds_up_to_the_files() {
    let dir = tempfile::tempdir().unwrap();
    let extra = "subaddress_folder = \"create\"\n[local.quota]\nbytes = \"1M\"\n";
    let file = config(dir.path(), extra);
    let (child, addr) = serve(&file);
    smtp_send(
        &addr,
        "me@client.test",
        &["bob@mx.test"],
        &message("one", 100),
    );
    wait_counted(dir.path(), "bob", 1);
    smtp_send(
        &addr,
        "me@client.test",
        &["bob+lists@mx.test"],
        &message("two", 2000),
    );
    smtp_send(
        &addr,
        "me@client.test",
        &["bob@mx.test"],
        &message("three", 300),
    );
    let (header, bytes, count, text) = wait_counted(dir.path(), "bob", 3);
    assert_eq!(header, "1048576S");
    // The first delivery counted the (empty) box, then each added its line.
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 5, "{text}");
    assert_eq!(lines[1], "0 0", "{text}");
    assert!(lines[2..].iter().all(|l| l.ends_with(" 1")), "{text}");
    assert_eq!((bytes, count), on_disk(dir.path(), "bob"), "{text}");
    assert!(
        maildir(dir.path(), "bob")
            .join(".lists/new")
            .read_dir()
            .unwrap()
            .count()
            == 1
    );
    terminate(child);
}

#[test]
fn targets_send_a_domain_and_an_address_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let extra = format!(
        "[local.targets]\n\"other.test\" = {{ mbox = \"{d}/mbox\" }}\n\
         \"ann@mx.test\" = {{ mbox = \"{d}/ann-mbox\" }}\n"
    );
    let file = config(dir.path(), &extra);
    assert_config_ok(&file);
    let (child, addr) = serve(&file);
    smtp_send(
        &addr,
        "me@client.test",
        &["bob@other.test", "carol@mx.test", "ann+x@mx.test"],
        "Subject: routed\r\n\r\nFrom here\r\n",
    );
    assert_eq!(maildir_files(dir.path(), "carol", 1).len(), 1);
    let read = r#"
import json, mailbox, sys
for m in mailbox.mbox(sys.argv[1], create=False):
    print(json.dumps({"subject": m["subject"], "to": m["delivered-to"], "body": m.get_payload()}))
"#;
    for (path, to) in [
        (dir.path().join("mbox/other.test/bob"), "bob@other.test"),
        (dir.path().join("ann-mbox/mx.test/ann"), "ann+x@mx.test"),
    ] {
        let start = Instant::now();
        while !path.exists() && start.elapsed() < Duration::from_secs(20) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let out = support::python(read, &[path.to_str().unwrap()]);
        let messages: Vec<serde_json::Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(messages.len(), 1, "{out}");
        assert_eq!(messages[0]["subject"], "routed");
        assert_eq!(messages[0]["to"], to);
        assert_eq!(messages[0]["body"], ">From here\n");
    }
    assert!(!maildir(dir.path(), "bob@other.test").exists());
    assert!(!maildir(dir.path(), "ann").exists());
    terminate(child);
}

#[test]
fn check_config_validates_quotas_and_targets() {
    let dir = tempfile::tempdir().unwrap();
    let good = "[local.quota]\nbytes = \"1G\"\nmessages = 0\ngrace = \"5%\"\n\
                [local.quota.domains.\"other.test\"]\nbytes = \"200M\"\n\
                [local.quota.mailboxes.\"bob@mx.test\"]\nbytes = \"5G\"\nmessages = 100000\n\
                [local.targets]\n\"other.test\" = { lmtp = \"unix:/run/dovecot/lmtp\" }\n";
    assert_config_ok(&config(dir.path(), good));
    let refused = [
        ("[local.quota]\nbytes = \"1X\"\n", "is no size"),
        ("[local.quota]\nmessages = -1\n", "expected u64"),
        (
            "[local.quota.domains.\"nowhere.test\"]\nbytes = 1\n",
            "not a local domain",
        ),
        (
            "[local.quota.mailboxes.\"mx.test\"]\nbytes = 1\n",
            "give a full address",
        ),
        (
            "[local.targets]\n\"nowhere.test\" = { mbox = \"/tmp/m\" }\n",
            "[local.targets] \"nowhere.test\": give a local domain",
        ),
        (
            "[local.targets]\n\"mx.test\" = { mbox = \"/tmp/m\", maildir = \"/tmp/d\" }\n",
            "give exactly one of maildir, mbox and lmtp",
        ),
        ("[local.targets]\n\"mx.test\" = {}\n", "give exactly one"),
    ];
    for (extra, expected) in refused {
        let stderr = assert_config_refused(&config(dir.path(), extra), &[]);
        assert!(stderr.contains(expected), "{extra}: {stderr}");
    }
}

/// Dovecot's `doveadm`, run without a daemon on a configuration of its own for the
/// Maildirs under `dir` (`quota = maildir`, `quota_rule = *:storage=<bytes>`): the
/// environment names the user, so no userdb is asked. As root, Dovecot refuses mail
/// access: the Maildirs are given to `nobody` for it (mta, as root, still writes them).
fn doveadm(dir: &Path, bytes: u64, user: &str, args: &[&str]) -> String {
    assert!(
        Path::new("/usr/bin/doveadm").exists(),
        "doveadm is missing: apt-get install -y dovecot-core (see .ci/deps/dovecot.sh)"
    );
    let root = nix::unistd::Uid::effective().is_root();
    let (uid, gid) = if root {
        (65534, 65534)
    } else {
        (
            nix::unistd::getuid().as_raw(),
            nix::unistd::getgid().as_raw(),
        )
    };
    let conf = format!(
        "base_dir = {d}/dovecot-run\nstate_dir = {d}/dovecot-state\nlog_path = /dev/stderr\n\
         ssl = no\nmail_location = maildir:{d}/maildir/%d/%n\n\
         mail_uid = {uid}\nmail_gid = {gid}\nfirst_valid_uid = 0\nfirst_valid_gid = 0\n\
         mail_plugins = quota\nplugin {{\n  quota = maildir:User quota\n  quota_rule = *:storage={bytes}B\n}}\n",
        d = dir.display()
    );
    let conf = write(dir, "dovecot.conf", &conf);
    for sub in ["dovecot-run", "dovecot-state"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
    }
    if root {
        let status = std::process::Command::new("chown")
            .args(["-R", "65534:65534"])
            .arg(dir.join("maildir"))
            .status()
            .unwrap();
        assert!(status.success());
        // nobody must reach the Maildirs.
        let mut p = dir.to_path_buf();
        loop {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&p).unwrap().permissions().mode();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode | 0o711)).unwrap();
            if !p.pop() || p.as_os_str() == "/" {
                break;
            }
        }
    }
    let out = std::process::Command::new("/usr/bin/doveadm")
        .arg("-c")
        .arg(&conf)
        .args(["-f", "tab"])
        .args(args)
        .env("USER", user)
        .env("HOME", maildir(dir, user))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "doveadm {args:?}: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// `doveadm quota get`: (KiB stored, rounded up as doveadm shows them, messages).
fn dovecot_quota(dir: &Path, bytes: u64, user: &str) -> (i64, i64) {
    let out = doveadm(dir, bytes, user, &["quota", "get"]);
    let value = |kind: &str| {
        out.lines()
            .map(|l| l.split('\t').collect::<Vec<_>>())
            .find(|f| f.get(1) == Some(&kind))
            .and_then(|f| f.get(2)?.parse().ok())
            .unwrap_or_else(|| panic!("no {kind} in {out}"))
    };
    (value("STORAGE"), value("MESSAGE"))
}

/// Bytes in KiB, rounded up (as `doveadm quota get` shows them).
fn kib(bytes: i64) -> i64 {
    (bytes + 1023) / 1024
}

#[test]
fn dovecot_counts_what_mta_counts_and_mta_reads_what_dovecot_wrote() {
    let dir = tempfile::tempdir().unwrap();
    let limit = 1 << 20;
    let extra = "subaddress_folder = \"create\"\n[local.quota]\nbytes = \"1M\"\n";
    let file = config(dir.path(), extra);
    let (child, addr) = serve(&file);
    smtp_send(
        &addr,
        "me@client.test",
        &["bob@mx.test"],
        &message("one", 5000),
    );
    smtp_send(
        &addr,
        "me@client.test",
        &["bob+lists@mx.test"],
        &message("two", 3000),
    );
    smtp_send(
        &addr,
        "me@client.test",
        &["bob@mx.test"],
        &message("three", 7000),
    );
    let (_, bytes, count, text) = wait_counted(dir.path(), "bob", 3);
    assert_eq!((bytes, count), on_disk(dir.path(), "bob"));

    // Dovecot reads our maildirsize: the same count (it reports KiB).
    let user = "bob@mx.test";
    assert_eq!(dovecot_quota(dir.path(), limit, user), (kib(bytes), 3));
    // ... and counting the folders itself, it writes what we had.
    doveadm(dir.path(), limit, user, &["quota", "recalc"]);
    let (header, d_bytes, d_count, d_text) = maildirsize(dir.path(), "bob");
    assert_ne!(d_text, text, "Dovecot wrote the file anew");
    assert_eq!(
        (header.as_str(), d_bytes, d_count),
        ("1048576S", bytes, count)
    );

    // mta reads what Dovecot wrote, adds its line, and Dovecot agrees again.
    smtp_send(
        &addr,
        "me@client.test",
        &["bob@mx.test"],
        &message("four", 1000),
    );
    let (_, bytes, count, text) = wait_counted(dir.path(), "bob", 4);
    assert!(text.starts_with(&d_text), "{d_text} then {text}");
    assert_eq!((bytes, count), on_disk(dir.path(), "bob"));
    assert_eq!(dovecot_quota(dir.path(), limit, user), (kib(bytes), 4));
    terminate(child);
}

#[test]
fn in_lmtp_only_the_recipients_whose_box_is_full_are_refused_after_data() {
    let dir = tempfile::tempdir().unwrap();
    let extra =
        "[local.quota]\nbytes = 1000\n[local.quota.mailboxes.\"carol@mx.test\"]\nbytes = 0\n";
    let file = config(dir.path(), extra);
    let text = std::fs::read_to_string(&file)
        .unwrap()
        .replace("mode = \"relay\"", "mode = \"lmtp\"");
    let file = write(dir.path(), "mta.toml", &text);
    let (child, addr) = serve(&file);
    let big = message("lmtp", 3000);
    let replies = block_on(async {
        let mut c = RawClient::connect(addr.parse().unwrap()).await;
        c.cmd("LHLO client.test").await;
        c.cmd("MAIL FROM:<me@client.test>").await;
        for to in ["bob@mx.test", "carol@mx.test", "bob+x@mx.test"] {
            let reply = c.cmd(&format!("RCPT TO:<{to}>")).await.to_string();
            assert!(reply.starts_with("250 "), "{reply}");
        }
        c.cmd("DATA").await;
        c.send(format!("{big}.\r\n").as_bytes()).await;
        let mut replies = Vec::new();
        for _ in 0..3 {
            replies.push(c.reply().await.to_string());
        }
        c.cmd("QUIT").await;
        replies
    });
    assert!(replies[0].starts_with("552 5.2.2 "), "{replies:?}");
    assert!(replies[0].contains("<bob@mx.test>"), "{replies:?}");
    assert!(
        replies[1].starts_with("250 2.0.0 Ok: queued"),
        "{replies:?}"
    );
    assert!(replies[2].starts_with("552 5.2.2 "), "{replies:?}");
    assert_eq!(maildir_files(dir.path(), "carol", 1).len(), 1);
    assert!(!maildir(dir.path(), "bob").join("new").exists());
    terminate(child);
}
