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
