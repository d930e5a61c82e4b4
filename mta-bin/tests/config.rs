//! The configuration as an operator meets it: `mta check-config` (every problem with its
//! line), startup errors (one clear line, exit code 2), and reload (SIGHUP, `mta reload`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::Command;

use support::{config, free_address, mta, rcpt_reply, run_with, serve, terminate, write};

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
    let (code, stdout, _) = run_with("check-config", &good);
    assert_eq!(code, Some(0), "{stdout}");
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
    let (code, _, stderr) = run_with("check-config", &bad);
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("line 11") && stderr.contains("max_recipients"),
        "{stderr}"
    );

    // Every problem, each on its line; then those only the system can tell.
    let many = write(
        dir.path(),
        "many.toml",
        &format!(
            "user = \"no-such-user-here\"\nhostname = \"mx.test\"\n[[listener]]\naddress = \"127.0.0.1:0\"\n\
             mode = \"relay\"\n[queue]\npath = \"{}/queue\"\nmax_age = \"soon\"\n[local]\n\
             domains = [\"mx.test\"]\n[outbound]\ntls = \"maybe\"\n[limits]\nmax_recipent = 5\n",
            dir.path().display()
        ),
    );
    let (code, _, stderr) = run_with("check-config", &many);
    assert_eq!(code, Some(2), "{stderr}");
    let name = many.display();
    for expected in [
        format!("{name}: line 8: [queue] max_age"),
        format!("{name}: line 10: [local]: local domains need maildir or lmtp"),
        format!(
            "{name}: line 12: [outbound] tls: unknown variant `maybe`, expected one of `opportunistic`, `required`, `disabled`"
        ),
        format!("{name}: line 14: [limits] max_recipent: unknown field `max_recipent`"),
        "(did you mean `max_recipients`?)".to_owned(),
    ] {
        assert!(stderr.contains(&expected), "{expected} in {stderr}");
    }
    let files = write(
        dir.path(),
        "files.toml",
        &format!(
            "user = \"no-such-user-here\"\n{}[[dkim_key]]\ndomain = \"mx.test\"\nselector = \"s1\"\nprivate_key = \"{}/missing.key\"\n",
            config(dir.path(), "127.0.0.1:0", ""),
            dir.path().display()
        ),
    );
    let (code, _, stderr) = run_with("check-config", &files);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains(": line 1: user = \"no-such-user-here\": no such user"),
        "{stderr}"
    );
    assert!(
        stderr.contains(": line 14: [[dkim_key]] private_key"),
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

/// SIGHUP and `mta reload` apply a changed configuration to new connections; a file
/// with an error, or one that changes the listeners, is refused and the running
/// configuration stays in force.
#[test]
fn reload_applies_a_valid_configuration_and_refuses_a_bad_one() {
    let dir = tempfile::tempdir().unwrap();
    let listen = free_address();
    let with = |extra: &str| config(dir.path(), &listen, extra);
    let cfg = write(
        dir.path(),
        "mta.toml",
        &with("mailboxes = [\"a@mx.test\"]\n"),
    );
    let (child, addr) = serve(&cfg);
    assert!(rcpt_reply(&addr, "a@mx.test").starts_with("250"));
    assert!(
        rcpt_reply(&addr, "b@mx.test").starts_with("550"),
        "b is unknown"
    );

    write(
        dir.path(),
        "mta.toml",
        &with("mailboxes = [\"a@mx.test\", \"b@mx.test\"]\n"),
    );
    let status = Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let start = std::time::Instant::now();
    while !rcpt_reply(&addr, "b@mx.test").starts_with("250") {
        assert!(
            start.elapsed().as_secs() < 10,
            "SIGHUP did not apply the new mailbox"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }

    // A mistake: refused with its key and line, nothing changes.
    write(
        dir.path(),
        "mta.toml",
        &with("mailboxes = [\"a@mx.test\"]\nno_such_key = 1\n"),
    );
    let (code, _, stderr) = run_with("reload", &cfg);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("no_such_key") && stderr.contains("line"),
        "{stderr}"
    );
    assert!(
        rcpt_reply(&addr, "b@mx.test").starts_with("250"),
        "still the old configuration"
    );

    // A listener change needs a restart: refused by the server.
    let two = format!(
        "{}[[listener]]\naddress = \"127.0.0.1:0\"\nmode = \"relay\"\n",
        with("mailboxes = [\"a@mx.test\"]\n")
    );
    write(dir.path(), "mta.toml", &two);
    let (code, _, stderr) = run_with("reload", &cfg);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("restart"), "{stderr}");
    assert!(
        rcpt_reply(&addr, "b@mx.test").starts_with("250"),
        "still the old configuration"
    );

    // And a good one through `mta reload`.
    write(
        dir.path(),
        "mta.toml",
        &with("mailboxes = [\"a@mx.test\"]\n"),
    );
    let (code, stdout, stderr) = run_with("reload", &cfg);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("reloaded"));
    assert!(
        rcpt_reply(&addr, "b@mx.test").starts_with("550"),
        "b is gone again"
    );
    terminate(child);
}
