//! DKIM from the command line: `mta dkim-keygen`, and signing of mail handed in locally.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::Command;

use support::{config_file, maildir_files, mta, serve, terminate};

/// `mta dkim-keygen` writes a private key only its owner can read, prints the record to
/// publish and the configuration to add, and never overwrites a key.
#[test]
fn dkim_keygen_writes_the_key_and_the_parser_refuses_bad_values() {
    let dir = tempfile::tempdir().unwrap();
    for (algorithm, k) in [("rsa", "k=rsa"), ("ed25519", "k=ed25519")] {
        let selector = format!("s-{algorithm}");
        let run = || {
            mta()
                .current_dir(dir.path())
                .args([
                    "dkim-keygen",
                    "--domain",
                    "Example.ORG",
                    "--selector",
                    &selector,
                ])
                .args(["--algorithm", algorithm])
                .output()
                .unwrap()
        };
        let out = run();
        assert!(out.status.success(), "{out:?}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let record = format!("{selector}._domainkey.example.org. IN TXT \"v=DKIM1; {k}; p=");
        assert!(stdout.contains(&record), "{stdout}");
        assert!(
            stdout.contains("[[dkim_key]]\ndomain = \"example.org\""),
            "{stdout}"
        );
        let key = dir.path().join(format!("example.org.{selector}.key"));
        let pem = std::fs::read(&key).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&key).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{mode:o}");
        }
        // The key signs.
        let signer = auth_checks::DkimSigner::from_pem("example.org", &selector, &pem).unwrap();
        assert!(signer.sign(b"From: a@example.org\r\n\r\nhi\r\n").is_ok());
        // A second run refuses to replace it.
        let again = run();
        assert_eq!(again.status.code(), Some(2), "{again:?}");
        assert!(String::from_utf8_lossy(&again.stderr).contains("File exists"));
        assert_eq!(std::fs::read(&key).unwrap(), pem, "the key is unchanged");
    }
    let bad = mta()
        .current_dir(dir.path())
        .args([
            "dkim-keygen",
            "--domain",
            "example.org",
            "--selector",
            "s",
            "--algorithm",
            "dsa",
        ])
        .output()
        .unwrap();
    // Refused by the argument parser, which lists what it takes.
    assert_eq!(bad.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        stderr.contains("[possible values: rsa, ed25519]"),
        "{stderr}"
    );
    for (args, expected) in [
        (
            &["queue", "list", "--state", "stuck"][..],
            "[possible values: queued, active, deferred, held]",
        ),
        (
            &["queue", "list", "--older-than", "a while"],
            "invalid duration",
        ),
        (
            &["queue", "show", "not-an-id"],
            "is not a queue id (16 hexadecimal digits)",
        ),
    ] {
        let out = mta().args(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}

/// Mail injected with sendmail is DKIM-signed with the configured key, with or without
/// a running server, and dkimpy (python3-dkim) verifies the signatures.
#[test]
fn injected_mail_is_dkim_signed() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("mx.test.s1.key");
    let keygen = mta()
        .args([
            "dkim-keygen",
            "--domain",
            "mx.test",
            "--selector",
            "s1",
            "--output",
        ])
        .arg(&key)
        .output()
        .unwrap();
    assert!(keygen.status.success(), "{keygen:?}");
    let printed = String::from_utf8_lossy(&keygen.stdout).into_owned();
    let zone_line = printed.lines().find(|l| l.contains("_domainkey")).unwrap();
    let record: String = zone_line
        .split('"')
        .skip(1)
        .step_by(2)
        .collect::<Vec<_>>()
        .concat();
    let cfg = config_file(
        dir.path(),
        &format!(
            "accept_any_user = true\n[[dkim_key]]\ndomain = \"mx.test\"\nselector = \"s1\"\nprivate_key = \"{}\"\n",
            key.display()
        ),
    );
    let inject = |subject: &str| {
        let mut child = mta()
            .args(["sendmail", "-C"])
            .arg(&cfg)
            .arg("you@mx.test")
            .env("USER", "me")
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        let text = format!("From: me@mx.test\nSubject: {subject}\n\nsigned body\n");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        assert!(child.wait().unwrap().success());
    };
    inject("queued without a server");
    let (child, _) = serve(&cfg);
    inject("queued through the server");
    let files = maildir_files(dir.path(), "you", 2);
    terminate(child);
    assert_eq!(files.len(), 2);
    let python = "/usr/bin/python3";
    let has_dkimpy = Command::new(python)
        .args(["-c", "import dkim"])
        .status()
        .is_ok_and(|s| s.success());
    for message in &files {
        let signature = message
            .split("DKIM-Signature:")
            .nth(1)
            .unwrap_or_else(|| panic!("not signed: {message}"));
        assert!(
            signature.contains(" d=mx.test;") && signature.contains(" s=s1;"),
            "{message}"
        );
        if !has_dkimpy {
            assert!(std::env::var("CI").is_err(), "CI must have python3-dkim");
            eprintln!("python3-dkim missing: signature not verified independently");
            continue;
        }
        // Maildir adds Return-Path and Delivered-To above the signature: they are not
        // signed, so dkimpy verifies the message as delivered.
        let script = "import dkim, sys\nrecord = sys.argv[1].encode()\nok = dkim.verify(sys.stdin.buffer.read(), dnsfunc=lambda name, timeout=5: record)\nsys.exit(0 if ok else 1)";
        let mut py = Command::new(python)
            .args(["-c", script, &record])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        py.stdin
            .take()
            .unwrap()
            .write_all(message.as_bytes())
            .unwrap();
        assert!(py.wait().unwrap().success(), "dkimpy refuses: {message}");
    }
}
