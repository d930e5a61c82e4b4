//! The `mta` binary as an operator meets it: check-config, and startup errors that are
//! one clear line with exit code 2.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

fn mta() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mta"))
}

/// `mta COMMAND --config FILE` run to its end: (exit code, stdout, stderr).
fn run_with(command: &str, file: &std::path::Path) -> (Option<i32>, String, String) {
    let out = mta()
        .args([command, "--config"])
        .arg(file)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
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

/// A connection to `addr` that gives up reading after 10 s.
fn connect(addr: &str) -> std::net::TcpStream {
    let tcp = std::net::TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    tcp
}

/// A loopback address no one listens on (for a moment).
fn free_address() -> String {
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    free.local_addr().unwrap().to_string()
}

/// `mta.toml` in `dir` ([`config`] on any port, accepting any user at mx.test).
fn any_user_config(dir: &std::path::Path) -> std::path::PathBuf {
    write(
        dir,
        "mta.toml",
        &config(dir, "127.0.0.1:0", "accept_any_user = true\n"),
    )
}

/// One SMTP transaction on `addr` (EHLO, MAIL, RCPT..., DATA, QUIT); returns what the
/// server said.
fn smtp_send(addr: &str, from: &str, to: &[&str], message: &str) -> String {
    use std::io::{Read, Write};
    let mut tcp = connect(addr);
    let mut commands = format!("EHLO client.test\r\nMAIL FROM:<{from}>\r\n");
    for rcpt in to {
        commands.push_str(&format!("RCPT TO:<{rcpt}>\r\n"));
    }
    commands.push_str("DATA\r\n");
    tcp.write_all(commands.as_bytes()).unwrap();
    let read_until = |tcp: &mut std::net::TcpStream, seen: &mut String, what: &str| {
        let mut buf = [0u8; 4096];
        while !seen.contains(what) {
            let n = tcp.read(&mut buf).unwrap();
            assert!(n > 0, "{seen}");
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    };
    let mut seen = String::new();
    read_until(&mut tcp, &mut seen, "354");
    tcp.write_all(format!("{message}.\r\nQUIT\r\n").as_bytes())
        .unwrap();
    read_until(&mut tcp, &mut seen, "221");
    seen
}

/// Starts `mta serve` on `config`; returns the child and its relay listener's address
/// (from the banner).
fn serve(config: &std::path::Path) -> (std::process::Child, String) {
    serve_logging(config, &[], "warn", std::process::Stdio::inherit())
}

/// `serve` with more arguments, a `RUST_LOG` ("": not set) and where its log (stderr)
/// goes.
fn serve_logging(
    config: &std::path::Path,
    args: &[&str],
    rust_log: &str,
    log: std::process::Stdio,
) -> (std::process::Child, String) {
    use std::io::{BufRead, BufReader};
    let mut command = mta();
    command.args(["serve", "--config"]).arg(config).args(args);
    // An empty `rust_log`: the server's own default filter.
    if rust_log.is_empty() {
        command.env_remove("RUST_LOG");
    } else {
        command.env("RUST_LOG", rust_log);
    }
    let mut child = command
        .stdout(std::process::Stdio::piped())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut banner = String::new();
    while !banner.contains("mta: queue in") {
        let mut line = String::new();
        if stdout.read_line(&mut line).unwrap() == 0 {
            break;
        }
        banner.push_str(&line);
    }
    // Keep reading stdout so the server never blocks on a full pipe.
    std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
    let addr = banner
        .split("listening on ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .unwrap_or_else(|| panic!("no listener in the banner: {banner}"))
        .to_owned();
    (child, addr)
}

/// Sends SIGTERM and waits for a clean exit.
fn terminate(mut child: std::process::Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = child.wait().unwrap();
    assert!(exit.success(), "exit status after SIGTERM: {exit:?}");
}

/// `mta queue ARGS` with `config`: (exit code, stdout, stderr).
fn queue_cmd(config: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    let out = mta()
        .arg("queue")
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The ids `mta queue list --json ARGS` shows.
fn listed(config: &std::path::Path, args: &[&str]) -> Vec<String> {
    let (code, out, err) = queue_cmd(config, &[&["list", "--json"], args].concat());
    assert_eq!(code, 0, "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect()
}

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
        let said = smtp_send(
            &addr,
            "me@mx.test",
            to,
            &format!("From: me@mx.test\r\nSubject: {subject}\r\n\r\nbody {subject}\r\n"),
        );
        assert!(said.contains("queued as"), "{said}");
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

/// The README's first command: `mta serve` with no file, in an empty directory, takes a
/// message on 127.0.0.1:2525 and puts it in ./mta-data/maildir/localhost/<user>/new/;
/// SIGTERM then stops it cleanly.
#[test]
fn embedded_default_receives_mail_and_stops_on_sigterm() {
    use std::io::{BufRead, BufReader, Read};
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

    let seen = smtp_send(
        "127.0.0.1:2525",
        "me@readme.test",
        &["you@localhost"],
        "Subject: first message\r\n\r\nIt works.\r\n",
    );
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
        text.ends_with("Subject: first message\n\nIt works.\n"),
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

/// The Maildir files of `user@mx.test` under `dir`, waiting (up to 20 s) for `count`.
fn maildir_files(dir: &std::path::Path, user: &str, count: usize) -> Vec<String> {
    let new = dir.join("maildir/mx.test").join(user).join("new");
    let start = std::time::Instant::now();
    loop {
        let mut files: Vec<String> = std::fs::read_dir(&new)
            .map(|d| {
                d.filter_map(Result::ok)
                    .map(|f| std::fs::read_to_string(f.path()).unwrap())
                    .collect()
            })
            .unwrap_or_default();
        if files.len() >= count || start.elapsed().as_secs() > 20 {
            files.sort();
            return files;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

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
            "Received: by mx.test (mta sendmail, from user {me})"
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

/// `--log-format json`: every log line is a JSON object; an accepted message's line
/// carries its queue id, and the connection's span says where it came from.
#[test]
fn json_logs_are_one_object_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = any_user_config(dir.path());
    let log_path = dir.path().join("log.jsonl");
    let log = std::fs::File::create(&log_path).unwrap();
    let (child, addr) = serve_logging(&cfg, &["--log-format", "json"], "info", log.into());
    let said = smtp_send(
        &addr,
        "me@mx.test",
        &["you@mx.test"],
        "Subject: logged\r\n\r\nbody\r\n",
    );
    let id = said
        .split("queued as ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap()
        .to_owned();
    assert_eq!(maildir_files(dir.path(), "you", 1).len(), 1);
    terminate(child);
    let text = std::fs::read_to_string(&log_path).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
        .collect();
    assert!(lines.len() > 3, "{text}");
    assert!(
        lines
            .iter()
            .all(|l| l["level"].is_string() && l["timestamp"].is_string())
    );
    let accepted = lines
        .iter()
        .find(|l| l["fields"]["message"] == "message accepted")
        .unwrap_or_else(|| panic!("no accepted line: {text}"));
    assert_eq!(
        accepted["span"]["queue_id"], id,
        "the accepted line's transaction span has the queue id: {accepted}"
    );
    assert!(
        text.contains("\"peer\":\"127.0.0.1:"),
        "the connection span names the client: {accepted}"
    );
    assert!(
        !text.contains("Subject: logged"),
        "no message content in logs"
    );
}

/// One HTTP GET to `addr`; returns the status line and the body.
fn http_get(addr: &str, path: &str) -> (String, String) {
    use std::io::{Read, Write};
    let mut tcp = std::net::TcpStream::connect(addr).unwrap();
    tcp.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .unwrap();
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_owned(), body.to_owned())
}

/// Parses the Prometheus text format strictly enough to catch mistakes: every sample
/// belongs to a family declared by `# TYPE` before it, no sample appears twice, values
/// are numbers. Returns `sample (name and labels) -> value`.
fn parse_prometheus(text: &str) -> std::collections::HashMap<String, f64> {
    let mut types = std::collections::HashMap::new();
    let mut samples = std::collections::HashMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            assert!(
                types.insert(name.to_owned(), kind.to_owned()).is_none(),
                "{line}"
            );
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        let (sample, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line}"));
        let name = sample.split('{').next().unwrap();
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .filter(|f| types.get(*f).is_some_and(|k| k == "histogram"))
            .unwrap_or(name);
        assert!(types.contains_key(family), "no # TYPE before {line}");
        if let Some(labels) = sample.strip_prefix(name) {
            assert!(
                labels.is_empty() || (labels.starts_with('{') && labels.ends_with('}')),
                "{line}"
            );
        }
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("{line}"));
        assert!(
            samples.insert(sample.to_owned(), value).is_none(),
            "twice: {line}"
        );
    }
    samples
}

/// Every metric of docs/metrics.md's table is in `text` with its type, and a sample of
/// it carries exactly the labels the table names (the backquoted words of the labels
/// column outside parentheses).
fn every_documented_metric_is_served(text: &str) {
    let docs = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/metrics.md"))
        .unwrap();
    let mut checked = 0;
    for row in docs.lines().filter(|l| l.starts_with("| `mta_")) {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let (name, kind) = (cells[1].trim_matches('`'), cells[2]);
        let mut labels = Vec::new();
        let mut depth = 0;
        for (i, part) in cells[3].split('`').enumerate() {
            if i % 2 == 1 && depth == 0 {
                labels.push(part.to_owned());
            } else if i % 2 == 0 {
                depth += part.matches('(').count();
                depth -= part.matches(')').count();
            }
        }
        assert!(
            text.contains(&format!("\n# TYPE {name} {kind}\n")),
            "{name} is not served as a {kind}"
        );
        let sample = if kind == "histogram" {
            format!("{name}_bucket")
        } else {
            name.to_owned()
        };
        labels.sort();
        let served = text.lines().any(|line| {
            let Some(rest) = line.strip_prefix(&sample) else {
                return false;
            };
            let mut served: Vec<&str> = match rest.strip_prefix('{') {
                Some(l) => l
                    .split_once('}')
                    .map_or("", |(l, _)| l)
                    .split(',')
                    .map(|kv| kv.split('=').next().unwrap_or(""))
                    .collect(),
                None if rest.starts_with(' ') => Vec::new(),
                None => return false,
            };
            served.sort_unstable();
            served == labels
        });
        assert!(
            served,
            "no {sample} sample with labels {labels:?} in:\n{text}"
        );
        checked += 1;
    }
    assert!(
        checked >= 20,
        "the table of docs/metrics.md was read ({checked} rows)"
    );
}

/// `[metrics]`: /metrics in the Prometheus text format counts connections, messages and
/// deliveries as they happen; /healthz and /readyz answer 200.
#[test]
fn metrics_are_scraped_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = free_address();
    let cfg = write(
        dir.path(),
        "mta.toml",
        &config(
            dir.path(),
            "127.0.0.1:0",
            &format!(
                "accept_any_user = true\n[metrics]\naddress = \"{metrics}\"\n[tls]\nself_signed = true\n\
                 [[account]]\nusername = \"ann@mx.test\"\npassword = \"secret\"\n"
            ),
        ),
    );
    let (child, addr) = serve(&cfg);
    assert_eq!(http_get(&metrics, "/healthz").0, "HTTP/1.1 200 OK");
    assert_eq!(
        http_get(&metrics, "/readyz"),
        ("HTTP/1.1 200 OK".into(), "ready\n".into())
    );
    assert_eq!(http_get(&metrics, "/nothing").0, "HTTP/1.1 404 Not Found");
    let before = parse_prometheus(&http_get(&metrics, "/metrics").1);
    assert_eq!(
        before["mta_smtp_messages_total{listener=\"relay\",result=\"accepted\"}"],
        0.0
    );

    let said = smtp_send(
        &addr,
        "me@mx.test",
        &["you@mx.test"],
        "Subject: counted\r\n\r\nx\r\n",
    );
    assert!(said.contains("queued as"), "{said}");
    assert_eq!(maildir_files(dir.path(), "you", 1).len(), 1);
    let start = std::time::Instant::now();
    let after = loop {
        let m = parse_prometheus(&http_get(&metrics, "/metrics").1);
        if m["mta_delivery_recipients_total{result=\"delivered\"}"] >= 1.0
            || start.elapsed().as_secs() > 10
        {
            break m;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!(after["mta_smtp_connections_total{listener=\"relay\"}"], 1.0);
    assert!(
        rcpt_reply(&addr, "you@elsewhere.test").starts_with("554"),
        "no relaying"
    );
    {
        // A command the protocol does not know: a protocol error, not a policy refusal.
        use std::io::{Read, Write};
        let mut tcp = connect(&addr);
        tcp.write_all(b"EHLO client.test\r\nFROBNICATE\r\nQUIT\r\n")
            .unwrap();
        let mut seen = String::new();
        tcp.read_to_string(&mut seen).unwrap();
        assert!(seen.contains("\r\n500 5.5.1 "), "{seen}");
    }
    let refused = parse_prometheus(&http_get(&metrics, "/metrics").1);
    assert_eq!(
        refused["mta_smtp_refusals_total{stage=\"rcpt\",code=\"554\"}"],
        1.0
    );
    assert_eq!(
        refused["mta_smtp_protocol_errors_total{code=\"500\",status=\"5.5.1\"}"],
        1.0
    );
    // Present from the start: lookups for routing (none here: all mail is local) and
    // the age of the oldest message (none waiting once it is delivered).
    assert_eq!(
        refused["mta_dns_lookups_total{query=\"mx\",result=\"answered\"}"],
        0.0
    );
    assert_eq!(
        refused["mta_queue_oldest_message_age_seconds{state=\"waiting\"}"],
        0.0
    );
    assert_eq!(
        after["mta_smtp_messages_total{listener=\"relay\",result=\"accepted\"}"],
        1.0
    );
    assert_eq!(
        after["mta_delivery_recipients_total{result=\"delivered\"}"],
        1.0
    );
    assert_eq!(after["mta_queue_enqueued_total"], 1.0);
    assert!(after["mta_smtp_received_bytes_total{listener=\"relay\"}"] > 20.0);
    assert_eq!(after["mta_queue_messages{state=\"held\"}"], 0.0);
    // A STARTTLS by Python's smtplib (one TLS 1.3 handshake), then a wrong password and
    // a right one.
    let (host, port) = addr.rsplit_once(':').unwrap();
    let py = Command::new("python3")
        .arg("-c")
        .arg("import smtplib, ssl, sys\n\
              s = smtplib.SMTP(sys.argv[1], int(sys.argv[2]))\n\
              s.starttls(context=ssl._create_unverified_context())\n\
              s.ehlo()\n\
              s.user, s.password = 'ann@mx.test', 'wrong'\n\
              try:\n    s.auth('PLAIN', s.auth_plain)\nexcept smtplib.SMTPAuthenticationError:\n    pass\n\
              s.login('ann@mx.test', 'secret')\n\
              s.quit()")
        .args([host, port])
        .output()
        .unwrap();
    assert!(py.status.success(), "{py:?}");
    let (_, text) = http_get(&metrics, "/metrics");
    every_documented_metric_is_served(&text);
    let tls = parse_prometheus(&text);
    assert_eq!(tls["mta_smtp_tls_handshakes_total{result=\"tls1.3\"}"], 1.0);
    assert_eq!(tls["mta_smtp_tls_handshakes_total{result=\"failed\"}"], 0.0);
    assert_eq!(
        tls["mta_smtp_logins_total{listener=\"relay\",result=\"success\"}"],
        1.0
    );
    assert_eq!(
        tls["mta_smtp_logins_total{listener=\"relay\",result=\"failure\"}"],
        1.0
    );
    assert_eq!(after["mta_delivery_delay_seconds_count"], 1.0);
    assert_eq!(
        after["mta_delivery_recipients_by_domain_total{domain=\"mx.test\",result=\"delivered\"}"],
        1.0
    );
    // The message was checked (relay listener, not trusted): unsigned, and one SPF
    // verdict (which one depends on this machine's DNS).
    assert_eq!(
        after["mta_auth_results_total{method=\"dkim\",result=\"none\"}"],
        1.0
    );
    let spf: f64 = after
        .iter()
        .filter(|(k, _)| k.starts_with("mta_auth_results_total{method=\"spf\""))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(spf, 1.0, "one SPF verdict");
    assert_eq!(after["mta_delivery_delay_seconds_bucket{le=\"+Inf\"}"], 1.0);
    assert_eq!(
        after["mta_delivery_delay_seconds_bucket{le=\"5\"}"], 1.0,
        "delivered within 5 s"
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

/// EHLO, MAIL, one RCPT, QUIT on `addr`; returns the reply to RCPT.
fn rcpt_reply(addr: &str, rcpt: &str) -> String {
    use std::io::{Read, Write};
    let mut tcp = connect(addr);
    tcp.write_all(
        format!("EHLO client.test\r\nMAIL FROM:<me@client.test>\r\nRCPT TO:<{rcpt}>\r\nQUIT\r\n")
            .as_bytes(),
    )
    .unwrap();
    let mut seen = String::new();
    tcp.read_to_string(&mut seen).unwrap();
    // Greeting, EHLO (multi-line), MAIL, RCPT, QUIT: the RCPT reply is the one before 221.
    let lines: Vec<&str> = seen
        .lines()
        .filter(|l| l.as_bytes().get(3) == Some(&b' '))
        .collect();
    lines[lines.len() - 2].to_owned()
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
    let cfg = write(
        dir.path(),
        "mta.toml",
        &config(
            dir.path(),
            "127.0.0.1:0",
            &format!(
                "accept_any_user = true\n[[dkim_key]]\ndomain = \"mx.test\"\nselector = \"s1\"\nprivate_key = \"{}\"\n",
                key.display()
            ),
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

/// The user id of `name`.
fn uid_of(name: &str) -> u32 {
    let out = Command::new("id").args(["-u", name]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// A free port below 1024 on loopback (only root can bind it).
fn free_privileged_address() -> String {
    (600..1000)
        .find_map(|port| std::net::TcpListener::bind(("127.0.0.1", port)).ok())
        .map(|l| l.local_addr().unwrap().to_string())
        .expect("a free port below 1024")
}

/// Started as root with `user = "nobody"`: the server binds a privileged port, then
/// runs as nobody (its process, queue and delivered mail are nobody's); root still
/// steers it (`mta queue`, through the socket while it runs, and as nobody on the store
/// when it is stopped). The user `daemon` can hand a message in through the
/// `[sendmail] socket` (and the server records its user id) but cannot control the
/// queue.
#[test]
fn started_as_root_it_binds_then_runs_as_the_configured_user() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    if !is_root() {
        assert!(std::env::var("CI").is_err(), "CI runs the tests as root");
        eprintln!("skipped: switching users needs root");
        return;
    }
    let (nobody, daemon) = (uid_of("nobody"), uid_of("daemon"));
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    // A copy of the binary that every user may run.
    let bin = dir.path().join("mta");
    std::fs::copy(env!("CARGO_BIN_EXE_mta"), &bin).unwrap();
    let listen = free_privileged_address();
    let text = format!(
        "hostname = \"mx.test\"\nuser = \"nobody\"\n[[listener]]\naddress = \"{listen}\"\nmode = \"relay\"\n\
         [queue]\npath = \"{0}/data/queue\"\n[local]\ndomains = [\"mx.test\"]\nmaildir = \"{0}/maildir\"\n\
         accept_any_user = true\n[sendmail]\nsocket = \"{0}/run/sendmail.sock\"\n",
        dir.path().display()
    );
    let cfg = write(dir.path(), "mta.toml", &text);
    let (child, addr) = serve(&cfg);
    assert_eq!(addr, listen);
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
    let uids = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert_eq!(
        uids.split_whitespace().skip(1).collect::<Vec<_>>(),
        vec![nobody.to_string(); 4],
        "real, effective, saved and filesystem uid: {uids}"
    );

    let said = smtp_send(
        &listen,
        "me@mx.test",
        &["you@mx.test"],
        "Subject: one\r\n\r\nhi\r\n",
    );
    assert!(said.contains("250 2.0.0 Ok: queued"), "{said}");
    maildir_files(dir.path(), "you", 1);
    let new = dir.path().join("maildir/mx.test/you/new");
    let file = std::fs::read_dir(&new).unwrap().next().unwrap().unwrap();
    assert_eq!(
        file.metadata().unwrap().uid(),
        nobody,
        "delivered as nobody"
    );
    let queue_dir = dir.path().join("data/queue");
    assert_eq!(std::fs::metadata(&queue_dir).unwrap().uid(), nobody);

    // setpriv (util-linux) also clears root's supplementary groups. The commands find
    // the configuration through $MTA_CONFIG.
    let as_daemon = |args: &[&str]| {
        Command::new("setpriv")
            .args(["--reuid=daemon", "--regid=daemon", "--clear-groups", "--"])
            .arg(&bin)
            .args(args)
            .env("MTA_CONFIG", &cfg)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut sendmail = as_daemon(&["sendmail", "ann@mx.test"]);
    {
        use std::io::Write;
        let mut stdin = sendmail.stdin.take().unwrap();
        stdin
            .write_all(b"Subject: from a daemon\n\nwork done\n")
            .unwrap();
    }
    let out = sendmail.wait_with_output().unwrap();
    assert!(out.status.success(), "sendmail as daemon: {out:?}");
    let ann = maildir_files(dir.path(), "ann", 1);
    assert_eq!(ann.len(), 1);
    assert!(
        ann[0].contains(&format!(
            "Received: by mx.test (mta sendmail socket, from userid {daemon});"
        )),
        "the server records who handed it in: {}",
        ann[0]
    );
    assert!(ann[0].contains("work done"));

    let out = as_daemon(&["queue", "list"]).wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "daemon may not control the queue: {out:?}"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("ermission denied"),
        "{out:?}"
    );
    let (code, _, err) = queue_cmd(&cfg, &["list"]);
    assert_eq!(
        code, 0,
        "root controls the queue of a server running as nobody: {err}"
    );
    terminate(child);

    // Stopped: root works on the store as nobody, so the server can open it again.
    let (code, out, err) = queue_cmd(&cfg, &["summary"]);
    assert_eq!(code, 0, "{out}{err}");
    for entry in std::fs::read_dir(&queue_dir).unwrap() {
        let entry = entry.unwrap();
        assert_eq!(
            entry.metadata().unwrap().uid(),
            nobody,
            "{} belongs to nobody",
            entry.path().display()
        );
    }
}

/// Whether the tests run as root.
fn is_root() -> bool {
    Command::new("id").arg("-u").output().unwrap().stdout == b"0\n"
}

/// Under systemd (`Type=notify`): `READY=1` once the server listens, `STOPPING=1` on
/// SIGTERM, sent to the datagram socket `$NOTIFY_SOCKET` names.
#[test]
fn tells_systemd_when_ready_and_when_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = any_user_config(dir.path());
    let socket_path = dir.path().join("notify.sock");
    let manager = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    manager
        .set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    let child = mta()
        .args(["serve", "--config"])
        .arg(&cfg)
        .env("NOTIFY_SOCKET", &socket_path)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 256];
    let n = manager.recv(&mut buf).expect("READY=1 within 20 s");
    assert_eq!(&buf[..n], b"READY=1");
    // Ready means listening: the banner's work is done, the queue is open.
    assert!(dir.path().join("queue/control.sock").exists());
    terminate(child);
    let n = manager.recv(&mut buf).expect("STOPPING=1");
    assert_eq!(&buf[..n], b"STOPPING=1");
}

/// A program the test drives; `None` (the test skips) when it is missing, except under
/// `CI=true`, where `.ci/run` installs it.
#[allow(clippy::print_stderr)]
fn tool(name: &str) -> Option<std::path::PathBuf> {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join(name))
        .find(|p| p.is_file());
    if found.is_none() {
        assert!(std::env::var("CI").is_err(), "CI must have {name}");
        eprintln!("skipped: {name} not found");
    }
    found
}

/// Scanners such as testssl send an IP address as SNI; rustls ignores it and warns,
/// once per connection. With the default log filter none of that reaches the log as a
/// warning (171 WARN lines came from one testssl run before).
#[test]
fn an_ip_address_as_sni_is_not_a_warning_per_connection() {
    let Some(openssl) = tool("openssl") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        "mta.toml",
        &config(
            dir.path(),
            "127.0.0.1:0",
            "accept_any_user = true\n[tls]\nself_signed = true\n",
        ),
    );
    let log_path = dir.path().join("mta.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let (child, addr) = serve_logging(&cfg, &[], "", log.into());
    for _ in 0..3 {
        let out = Command::new(&openssl)
            .args(["s_client", "-connect", &addr, "-starttls", "smtp"])
            .args(["-servername", "127.0.0.1"])
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("Cipher is"), "no TLS session: {text}");
    }
    terminate(child);
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(log.contains("INFO"), "the log is written: {log}");
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("WARN") && !l.contains("running as root"))
        .collect();
    assert!(warnings.is_empty(), "{warnings:#?}");
}
