//! Mail handed in on the command line: `mta sendmail` (and its `sendmail` name) and
//! `mta send`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::Command;

use support::{any_user_config, maildir_files, mta, serve, terminate};

/// sendmail as cron and scripts use it: a shell pipeline into `mta sendmail -t -oi`
/// while the server runs, and into the binary invoked as `sendmail` while it does not
/// (queued directly, delivered once the server starts); exit 64 without recipients.
#[test]
fn sendmail_interface_queues_piped_mail() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = any_user_config(dir.path());
    let link = dir.path().join("sendmail");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_mta"), &link).unwrap();
    let pipe = |command: String| {
        Command::new("sh")
            .arg("-c")
            .arg(command)
            .env("USER", "someone-else")
            .output()
            .unwrap()
    };

    // No server: the message goes straight into the queue.
    let out = pipe(format!(
        "printf 'Subject: while stopped\\n\\nfirst\\n.\\nnot read\\n' | {} -C {} -F 'Cron Daemon' you@mx.test",
        link.display(),
        cfg.display()
    ));
    assert!(out.status.success(), "{out:?}");

    let (child, _) = serve(&cfg);
    let out = pipe(format!(
        "printf 'To: Ann <ann@mx.test>, you@mx.test\\nBcc: secret@mx.test\\nSubject: cron job\\n\\n.hidden dot line\\n.\\nlast line\\n' | {} sendmail -t -oi -C {}",
        env!("CARGO_BIN_EXE_mta"),
        cfg.display()
    ));
    assert!(out.status.success(), "{out:?}");
    let out = pipe(format!(
        "printf 'Subject: nobody\\n\\nx\\n' | {} sendmail -C {}",
        env!("CARGO_BIN_EXE_mta"),
        cfg.display()
    ));
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no recipients"));
    // -bs: an SMTP session on standard input and output.
    let out = pipe(format!(
        "printf 'EHLO local\\r\\nMAIL FROM:<me@mx.test>\\r\\nRCPT TO:<smtp@mx.test>\\r\\nDATA\\r\\nSubject: over stdio\\r\\n\\r\\nhi\\r\\n.\\r\\nQUIT\\r\\n' | {} -bs -C {}",
        link.display(),
        cfg.display()
    ));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(said.starts_with("220 mx.test"), "{said}");
    assert!(
        !said.contains("STARTTLS") && !said.contains("AUTH"),
        "{said}"
    );
    assert!(
        said.contains("250 2.0.0 Ok: queued as") && said.contains("\r\n221 2.0.0 "),
        "{said}"
    );
    let over_stdio = maildir_files(dir.path(), "smtp", 1);
    assert!(
        over_stdio[0].contains("Subject: over stdio"),
        "{over_stdio:?}"
    );
    // A large message through the control socket (6 MB of 70-character lines).
    let out = pipe(format!(
        "{{ printf 'Subject: big\\n\\n'; head -c 6000000 /dev/zero | tr '\\0' x | fold -w 70; }} | {} sendmail -C {} big@mx.test",
        env!("CARGO_BIN_EXE_mta"),
        cfg.display()
    ));
    assert!(out.status.success(), "{out:?}");
    let big = maildir_files(dir.path(), "big", 1);
    assert!(
        big.len() == 1 && big[0].len() > 6_000_000,
        "the whole message arrived"
    );

    let you = maildir_files(dir.path(), "you", 2);
    assert_eq!(you.len(), 2, "{you:?}");
    // The sender is the user who ran sendmail, whatever $USER says.
    let me = String::from_utf8(Command::new("id").arg("-un").output().unwrap().stdout).unwrap();
    let me = me.trim();
    let stopped = you.iter().find(|m| m.contains("while stopped")).unwrap();
    assert!(
        stopped.contains(&format!("From: \"Cron Daemon\" <{me}@mx.test>\n")),
        "{stopped}"
    );
    assert!(stopped.contains("Message-ID: <"), "{stopped}");
    assert!(
        stopped.ends_with("\n\nfirst\n"),
        "a lone dot ends it: {stopped}"
    );
    let job = you.iter().find(|m| m.contains("cron job")).unwrap();
    assert!(
        job.contains(&format!(
            "Received: by mx.test (mta, from userid {})",
            nix::unistd::getuid()
        )),
        "{job}"
    );
    assert!(
        job.ends_with("\n.hidden dot line\n.\nlast line\n"),
        "-oi: {job}"
    );
    assert!(
        !job.contains("Bcc") && !job.contains("secret@"),
        "Bcc removed: {job}"
    );
    assert_eq!(maildir_files(dir.path(), "ann", 1).len(), 1);
    assert_eq!(
        maildir_files(dir.path(), "secret", 1).len(),
        1,
        "Bcc gets a copy"
    );
    terminate(child);
}

/// `mta send` builds a MIME message that Python's `email` package reads back: the
/// subject decoded, the text, and the attachment byte for byte.
#[test]
fn mta_send_builds_mime_that_python_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = any_user_config(dir.path());
    let attachment: Vec<u8> = (0..=255u8).cycle().take(3000).collect();
    std::fs::write(dir.path().join("données.bin"), &attachment).unwrap();
    let (child, _) = serve(&cfg);
    let out = mta()
        .args(["send", "--from", "ops@mx.test", "--to", "you@mx.test"])
        .args([
            "--subject",
            "Rapport du jour: ça marche",
            "--text",
            "Bonjour,\nvoilà.\n",
        ])
        .arg("--attach")
        .arg(dir.path().join("données.bin"))
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("queued as "));
    let files = maildir_files(dir.path(), "you", 1);
    assert_eq!(files.len(), 1);
    terminate(child);
    let path = std::fs::read_dir(dir.path().join("maildir/mx.test/you/new"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let script = r#"
import email, email.policy, sys
m = email.message_from_binary_file(open(sys.argv[1], "rb"), policy=email.policy.default)
print(m["subject"])
parts = list(m.iter_parts())
print(parts[0].get_content(), end="")
print(parts[1].get_filename())
sys.stdout.flush()
sys.stdout.buffer.write(parts[1].get_content())
"#;
    let py = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(&path)
        .output()
        .unwrap();
    assert!(py.status.success(), "{py:?}");
    let expected_head = "Rapport du jour: ça marche\nBonjour,\nvoilà.\ndonnées.bin\n";
    let stdout = py.stdout;
    let (head, tail) = stdout.split_at(expected_head.len().min(stdout.len()));
    assert_eq!(String::from_utf8_lossy(head), expected_head);
    assert_eq!(tail, &attachment[..], "the attachment, byte for byte");

    // No header through an address.
    let out = mta()
        .args([
            "send",
            "--from",
            "ops@mx.test",
            "--to",
            "you@mx.test\r\nBcc: x@far.test",
        ])
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("is not a mail address"), "{stderr}");
}
