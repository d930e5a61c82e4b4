//! The `mta` binary as an operator meets it: check-config, and startup errors that are
//! one clear line with exit code 2.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

fn mta() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mta"))
}

fn write(dir: &std::path::Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn config(dir: &std::path::Path, listen: &str, extra: &str) -> String {
    format!(
        "hostname = \"mx.test\"\n[[listener]]\naddress = \"{listen}\"\nmode = \"relay\"\n[queue]\npath = \"{}/queue\"\n[local]\ndomains = [\"mx.test\"]\nmaildir = \"{}/maildir\"\n{extra}",
        dir.display(),
        dir.display()
    )
}

#[test]
fn check_config_reports_key_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let good = write(
        dir.path(),
        "good.toml",
        &config(
            dir.path(),
            "127.0.0.1:0",
            "[relay]\ntrusted_networks = [\"0.0.0.0/0\"]\n",
        ),
    );
    let out = mta()
        .args(["check-config", "--config"])
        .arg(&good)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("open relay"),
        "risky settings are warned about: {stdout}"
    );

    let bad = write(
        dir.path(),
        "bad.toml",
        &config(
            dir.path(),
            "127.0.0.1:0",
            "[limits]\nmax_recipients = \"lots\"\n",
        ),
    );
    let out = mta()
        .args(["check-config", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr.contains("line 11") && stderr.contains("max_recipients"),
        "{stderr}"
    );
}

#[test]
fn startup_errors_are_one_line_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let cases = [
        (config(dir.path(), &addr, ""), "cannot listen on"),
        (
            config(
                dir.path(),
                "127.0.0.1:0",
                &format!(
                    "[tls]\ncertificate = \"{0}/nope.pem\"\nprivate_key = \"{0}/nope.key\"\n",
                    dir.path().display()
                ),
            ),
            "cannot read certificate",
        ),
        ("hostname = 3\n".to_owned(), "hostname"),
    ];
    for (i, (text, expected)) in cases.iter().enumerate() {
        let file = write(dir.path(), &format!("c{i}.toml"), text);
        let out = mta()
            .args(["serve", "--config"])
            .arg(&file)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let errors: Vec<&str> = stderr
            .lines()
            .filter(|l| l.starts_with("mta: error:"))
            .collect();
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert_eq!(errors.len(), 1, "{stderr}");
        assert!(errors[0].contains(expected), "{stderr}");
    }
}

/// The README's first command: `mta serve` with no file, in an empty directory, takes a
/// message on 127.0.0.1:2525 and puts it in ./mta-data/maildir/localhost/<user>/new/;
/// SIGTERM then stops it cleanly.
#[test]
fn embedded_default_receives_mail_and_stops_on_sigterm() {
    use std::io::{BufRead, BufReader, Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let mut child = mta()
        .arg("serve")
        .current_dir(dir.path())
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut banner = String::new();
    while !banner.contains("lands in") {
        let mut line = String::new();
        if stdout.read_line(&mut line).unwrap() == 0 {
            break;
        }
        banner.push_str(&line);
    }
    assert!(
        banner.contains("listening on 127.0.0.1:2525 (relay"),
        "{banner}"
    );
    assert!(
        banner.contains("listening on 127.0.0.1:2587 (submission"),
        "{banner}"
    );
    assert!(
        banner.contains("./mta-data/maildir/localhost/<user>/new/"),
        "{banner}"
    );

    let mut tcp = std::net::TcpStream::connect("127.0.0.1:2525").unwrap();
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    tcp.write_all(
        b"EHLO readme.test\r\nMAIL FROM:<me@readme.test>\r\nRCPT TO:<you@localhost>\r\nDATA\r\n",
    )
    .unwrap();
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    while !seen.contains("354") {
        let n = tcp.read(&mut buf).unwrap();
        assert!(n > 0, "{seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    tcp.write_all(b"Subject: first message\r\n\r\nIt works.\r\n.\r\nQUIT\r\n")
        .unwrap();
    while !seen.contains("221") {
        let n = tcp.read(&mut buf).unwrap();
        assert!(n > 0, "{seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(seen.contains("250 2.0.0 Ok: queued as "), "{seen}");

    let new = dir.path().join("mta-data/maildir/localhost/you/new");
    let start = std::time::Instant::now();
    let files = loop {
        let files: Vec<_> = std::fs::read_dir(&new)
            .map(|d| d.filter_map(Result::ok).collect())
            .unwrap_or_default();
        if !files.is_empty() || start.elapsed() > std::time::Duration::from_secs(10) {
            break files;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert_eq!(files.len(), 1, "the message is in {}", new.display());
    let text = std::fs::read_to_string(files[0].path()).unwrap();
    assert!(
        text.ends_with("Subject: first message\r\n\r\nIt works.\r\n"),
        "{text}"
    );

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = child.wait().unwrap();
    assert!(exit.success(), "exit status after SIGTERM: {exit:?}");
    let mut rest = String::new();
    let _ = stdout.read_to_string(&mut rest);
    assert!(rest.contains("shutting down"), "{rest}");
}

/// `mta dkim-keygen` writes a private key only its owner can read, prints the record to
/// publish and the configuration to add, and never overwrites a key.
#[test]
fn dkim_keygen_writes_the_key_and_prints_the_record() {
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
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("use rsa or ed25519"));
}
