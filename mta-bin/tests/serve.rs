//! `mta serve` as a service: the embedded default, starting as root and running as a
//! configured user, systemd readiness, JSON logs, and what reaches the log.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::Command;

use smtp_client::testing::tool;

use support::{
    any_user_config, config_file, maildir_files, mta, queue_cmd, read_banner, serve, serve_logging,
    smtp_send, terminate, write,
};

/// The README's first command: `mta serve` with no file, in an empty directory, takes a
/// message on 127.0.0.1:2525 and puts it in ./mta-data/maildir/localhost/<user>/new/;
/// SIGTERM then stops it cleanly.
#[test]
fn embedded_default_receives_mail_and_stops_on_sigterm() {
    use std::io::{BufReader, Read};
    let dir = tempfile::tempdir().unwrap();
    let mut child = mta()
        .arg("serve")
        .current_dir(dir.path())
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let banner = read_banner(&mut stdout, "lands in");
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

    terminate(child);
    let mut rest = String::new();
    let _ = stdout.read_to_string(&mut rest);
    assert!(rest.contains("shutting down"), "{rest}");
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

/// Whether the tests run as root.
fn is_root() -> bool {
    Command::new("id").arg("-u").output().unwrap().stdout == b"0\n"
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

    smtp_send(
        &listen,
        "me@mx.test",
        &["you@mx.test"],
        "Subject: one\r\n\r\nhi\r\n",
    );
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
            "Received: by mx.test (mta, from userid {daemon});"
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
    let id = support::queued_id(&said);
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

/// Scanners such as testssl send an IP address as SNI; rustls ignores it and warns,
/// once per connection. With the default log filter none of that reaches the log as a
/// warning (171 WARN lines came from one testssl run before).
#[test]
fn an_ip_address_as_sni_is_not_a_warning_per_connection() {
    let Some(openssl) = tool("openssl") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_file(
        dir.path(),
        "accept_any_user = true\n[tls]\nself_signed = true\n",
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
