//! A custom MTA built on `mta_bin::MtaBuilder` (`examples/custom_mta.rs`): the whole
//! program with filters of its own, which survive a reload.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::Command;

use support::{maildir_files, rcpt_reply, serve_program, smtp_send, terminate, write};

/// The example's binary, built by `cargo test` beside the test binaries.
fn custom_mta() -> Command {
    let exe = std::env::current_exe().unwrap();
    let target = exe.parent().and_then(|deps| deps.parent()).unwrap();
    let path = target.join("examples").join("custom_mta");
    assert!(
        path.exists(),
        "{} is missing: cargo build -p mta-bin --example custom_mta",
        path.display()
    );
    Command::new(path)
}

#[test]
fn a_custom_mta_runs_its_filters_and_keeps_them_across_a_reload() {
    let dir = tempfile::tempdir().unwrap();
    let blocked = write(dir.path(), "blocked", "closed@mx.test\n");
    let customers = write(dir.path(), "customers", "client.test Example Client Ltd\n");
    let config = support::any_user_config(dir.path());
    let mut command = custom_mta();
    command
        .env("BLOCKED_RECIPIENTS", &blocked)
        .env("CUSTOMERS", &customers);
    let (child, addr) = serve_program(
        command,
        &config,
        &[],
        "warn",
        std::process::Stdio::inherit(),
    );

    assert!(rcpt_reply(&addr, "Closed@mx.test").starts_with("550 5.1.1 "));
    assert!(rcpt_reply(&addr, "later@mx.test").starts_with("250 "));
    smtp_send(
        &addr,
        "someone@client.test",
        &["open@mx.test"],
        "Subject: hi\r\n\r\nhello\r\n",
    );
    let stored = maildir_files(dir.path(), "open", 1);
    assert!(
        stored[0].contains("\nX-Customer: Example Client Ltd\n")
            || stored[0].contains("\nX-Customer: Example Client Ltd\r\n"),
        "{}",
        stored[0]
    );
    // The built-in filters are still there: the relay stays closed.
    assert!(rcpt_reply(&addr, "someone@elsewhere.test").starts_with("554 5.7.1 "));

    // A reload builds the chain again with the custom filters, which read their file again.
    write(dir.path(), "blocked", "closed@mx.test\nlater@mx.test\n");
    let status = Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let start = std::time::Instant::now();
    while rcpt_reply(&addr, "later@mx.test").starts_with("250 ") {
        assert!(
            start.elapsed().as_secs() < 10,
            "the reload did not take effect"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(rcpt_reply(&addr, "later@mx.test").starts_with("550 5.1.1 "));
    assert!(rcpt_reply(&addr, "closed@mx.test").starts_with("550 5.1.1 "));
    terminate(child);
}

/// `sendmail` hands its message to the same chain as SMTP: through a running custom
/// server, and through the chain it builds itself when none runs. The custom filters,
/// the `Received:` of local mail and the size limit apply either way (sendmail itself
/// stops reading at the limit; the server's check is in the control socket's tests).
#[test]
fn sendmail_meets_the_same_filters_with_or_without_a_server() {
    let dir = tempfile::tempdir().unwrap();
    let blocked = write(dir.path(), "blocked", "closed@mx.test\n");
    let customers = write(dir.path(), "customers", "client.test Example Client Ltd\n");
    let config = support::config_file(
        dir.path(),
        "accept_any_user = true\n[limits]\nmax_message_size = 100000\n",
    );
    let sendmail = |args: &[&str], input: &[u8]| {
        use std::io::Write;
        let mut child = custom_mta()
            .arg("sendmail")
            .args(["-C", config.to_str().unwrap()])
            .args(args)
            .env("BLOCKED_RECIPIENTS", &blocked)
            .env("CUSTOMERS", &customers)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // sendmail stops reading a message over the limit: the pipe may break.
        let _ = child.stdin.take().unwrap().write_all(input);
        child.wait_with_output().unwrap()
    };
    let uid = nix::unistd::getuid();
    let check = |user: &str, count: usize| {
        let stored = maildir_files(dir.path(), user, count);
        let last = stored
            .iter()
            .find(|m| m.contains("Subject: local"))
            .unwrap();
        assert!(last.contains("X-Customer: Example Client Ltd\n"), "{last}");
        assert!(
            last.contains(&format!("Received: by mx.test (mta, from userid {uid});")),
            "{last}"
        );
    };
    let mut server = None;
    for running in [false, true] {
        if running {
            // What was queued without a server is delivered once one runs.
            let mut command = custom_mta();
            command
                .env("BLOCKED_RECIPIENTS", &blocked)
                .env("CUSTOMERS", &customers);
            let (child, _) = serve_program(
                command,
                &config,
                &[],
                "warn",
                std::process::Stdio::inherit(),
            );
            server = Some(child);
            check("open1", 1);
        }
        let user = if running { "open2" } else { "open1" };
        let ok = sendmail(
            &["-f", "cron@client.test", &format!("{user}@mx.test")],
            b"Subject: local\n\nhello\n",
        );
        assert!(ok.status.success(), "running: {running}: {ok:?}");
        let closed = sendmail(
            &["-f", "cron@client.test", "closed@mx.test"],
            b"Subject: local\n\nhello\n",
        );
        assert_eq!(
            closed.status.code(),
            Some(67),
            "running: {running}: {closed:?}"
        );
        let said = String::from_utf8_lossy(&closed.stderr);
        assert!(said.contains("550 5.1.1 This address is closed"), "{said}");
        let big = [b"Subject: big\n\n".as_slice(), &vec![b'x'; 200_000]].concat();
        let too_big = sendmail(&["-f", "cron@client.test", "open3@mx.test"], &big);
        assert!(!too_big.status.success(), "running: {running}: {too_big:?}");
        let said = String::from_utf8_lossy(&too_big.stderr);
        assert!(said.contains("larger than the limit of 100000"), "{said}");
    }
    check("open2", 1);
    terminate(server.unwrap());
}
