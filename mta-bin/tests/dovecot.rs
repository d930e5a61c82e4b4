//! Recipient verification against the mailbox server (`[local] verify_recipients`),
//! through the real `mta` binary delivering over LMTP to Dovecot's real LMTP server,
//! which each test starts on a configuration of its own (Debian's `dovecot-core` and
//! `dovecot-lmtpd`; `.ci/deps/dovecot.sh` installs them).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use smtp_client::testing::daemons::{
    Daemon, DovecotUser, dovecot, dovecot_delivered, dovecot_maildir, dovecot_prefill,
};
use support::{
    RawClient, assert_config_ok, assert_config_refused, block_on, free_address, listed, metric,
    rcpt_reply, serve, terminate, write,
};

/// An `mta.toml` in `dir` delivering `example.test` over LMTP to `lmtp`, with `local`
/// added to `[local]`.
fn mta_config(dir: &Path, lmtp: &str, local: &str) -> PathBuf {
    let text = format!(
        "hostname = \"mx.test\"\n[[listener]]\naddress = \"127.0.0.1:0\"\nmode = \"relay\"\n\
         [queue]\npath = \"{d}/queue\"\n[local]\ndomains = [\"example.test\"]\n\
         lmtp = \"{lmtp}\"\n{local}",
        d = dir.display()
    );
    write(dir, "mta.toml", &text)
}

/// Dovecot knowing `alice@example.test`, `bob@example.test` and `full@example.test`
/// (quota 1 KiB, already over it); `None` (the test skips) when it is not installed.
fn start_dovecot(full_tempfail: bool) -> Option<Daemon> {
    let users = [
        DovecotUser::new("alice@example.test"),
        DovecotUser::new("bob@example.test"),
        DovecotUser::new("full@example.test").quota("*:storage=1K"),
    ];
    let dovecot = dovecot(&users, full_tempfail)?;
    dovecot_prefill(&dovecot, "full@example.test", 4096);
    Some(dovecot)
}

/// Stops `dovecot` and waits (10 s at most) until its port takes no more connections
/// (its LMTP processes have gone too).
fn stop(dovecot: Daemon) {
    let lmtp = dovecot.address;
    drop(dovecot);
    let start = Instant::now();
    while std::net::TcpStream::connect(lmtp).is_ok() && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One transaction on `addr`: the reply to each command, in order (`DATA` and the
/// message's end included when a recipient was accepted).
fn transaction(addr: &str, rcpts: &[&str], message: &str) -> Vec<String> {
    let addr = addr.parse().unwrap();
    block_on(async {
        let mut c = RawClient::connect(addr).await;
        let mut said = vec![c.cmd("EHLO client.test").await.to_string()];
        said.push(c.cmd("MAIL FROM:<sender@client.test>").await.to_string());
        let mut accepted = false;
        for rcpt in rcpts {
            let reply = c.cmd(&format!("RCPT TO:<{rcpt}>")).await;
            accepted |= reply.is_positive_completion();
            said.push(reply.to_string());
        }
        if accepted {
            said.push(c.cmd("DATA").await.to_string());
            c.send(format!("{message}.\r\n").as_bytes()).await;
            said.push(c.reply().await.to_string());
        }
        c.cmd("QUIT").await;
        said
    })
}

/// What Dovecot delivered to `address`'s INBOX once there are `count` messages (at most
/// 20 s).
fn delivered(dovecot: &Daemon, address: &str, count: usize) -> Vec<String> {
    let start = Instant::now();
    loop {
        let files = dovecot_delivered(dovecot, address);
        if files.len() >= count || start.elapsed() > Duration::from_secs(20) {
            return files
                .iter()
                .map(|f| String::from_utf8_lossy(f).into_owned())
                .collect();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The queue's messages once it has emptied (at most 20 s): what is left then.
fn queue_left(config: &Path) -> Vec<String> {
    let start = Instant::now();
    loop {
        let left = listed(config, &[]);
        if left.is_empty() || start.elapsed() > Duration::from_secs(20) {
            return left;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn known_users_are_delivered_and_unknown_ones_refused_at_rcpt_without_a_bounce() {
    let Some(dovecot) = start_dovecot(false) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let lmtp = dovecot.address.to_string();
    let config = mta_config(dir.path(), &lmtp, "accept_any_user = true\n");
    let (child, addr) = serve(&config);

    let said = transaction(
        &addr,
        &["alice@example.test", "nobody@example.test"],
        "Subject: verified\r\n\r\nhello Dovecot\r\n",
    );
    assert!(said[2].starts_with("250 2.1.5 "), "{said:?}");
    // Dovecot's own refusal, passed on: its code, status and words.
    assert_eq!(
        said[3],
        "550 5.1.1 Mailbox server: <nobody@example.test> User doesn't exist: nobody@example.test",
        "{said:?}"
    );
    assert!(said[5].starts_with("250 2.0.0 Ok: queued as "), "{said:?}");

    // The message is in alice's Maildir, as Dovecot stored it.
    let files = delivered(&dovecot, "alice@example.test", 1);
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(files[0].contains("Subject: verified\n"), "{}", files[0]);
    assert!(files[0].contains("\nhello Dovecot\n"), "{}", files[0]);
    assert!(
        files[0].contains("Delivered-To: alice@example.test"),
        "{}",
        files[0]
    );
    // Nothing was queued for nobody: no bounce waits in the queue (there is no DNS to
    // send one to client.test, so one would stay).
    assert_eq!(queue_left(&config), Vec::<String>::new());
    assert!(!dovecot_maildir(&dovecot, "nobody@example.test").exists());
    terminate(child);
}

#[test]
fn a_subaddress_is_asked_about_as_it_came_and_dovecot_splits_it() {
    let Some(dovecot) = start_dovecot(false) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let config = mta_config(
        dir.path(),
        &dovecot.address.to_string(),
        "accept_any_user = true\n",
    );
    let (child, addr) = serve(&config);
    // Dovecot names the address it was asked about, and the user it looked up.
    assert_eq!(
        rcpt_reply(&addr, "nobody+news@example.test"),
        "550 5.1.1 Mailbox server: <nobody+news@example.test> User doesn't exist: nobody@example.test"
    );
    let said = transaction(
        &addr,
        &["Bob+News@Example.test"],
        "Subject: tagged\r\n\r\nnews\r\n",
    );
    assert!(said[2].starts_with("250 2.1.5 "), "{said:?}");
    let files = delivered(&dovecot, "bob@example.test", 1);
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(files[0].contains("Subject: tagged\n"), "{}", files[0]);
    terminate(child);
}

#[test]
fn the_list_runs_first_and_the_probe_asks_only_about_what_it_passes() {
    let Some(dovecot) = start_dovecot(false) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let config = mta_config(
        dir.path(),
        &dovecot.address.to_string(),
        "mailboxes = [\"alice@example.test\", \"carol@example.test\"]\n",
    );
    let (child, addr) = serve(&config);
    assert!(rcpt_reply(&addr, "alice@example.test").starts_with("250 2.1.5 "));
    // bob exists in Dovecot but not in the list: the list refuses.
    assert_eq!(
        rcpt_reply(&addr, "bob@example.test"),
        "550 5.1.1 User unknown in local recipient table"
    );
    // carol is listed, but Dovecot does not know her.
    assert_eq!(
        rcpt_reply(&addr, "carol@example.test"),
        "550 5.1.1 Mailbox server: <carol@example.test> User doesn't exist: carol@example.test"
    );
    terminate(child);
}

#[test]
fn a_full_mailbox_gets_dovecots_quota_reply_at_rcpt_and_is_not_cached() {
    for (tempfail, expected) in [
        (true, "452 4.2.2 Mailbox server: <full@example.test> "),
        (false, "552 5.2.2 Mailbox server: <full@example.test> "),
    ] {
        let Some(dovecot) = start_dovecot(tempfail) else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let config = mta_config(
            dir.path(),
            &dovecot.address.to_string(),
            "accept_any_user = true\n",
        );
        let (child, addr) = serve(&config);
        let said = transaction(&addr, &["full@example.test"], "Subject: x\r\n\r\nx\r\n");
        assert!(said[2].starts_with(expected), "{said:?}");
        assert!(said[2].contains("Quota exceeded"), "{said:?}");
        assert_eq!(said.len(), 3, "no DATA without a recipient: {said:?}");
        if !tempfail {
            // The user makes room: the next RCPT asks again, and is accepted.
            let maildir = dovecot_maildir(&dovecot, "full@example.test");
            for entry in std::fs::read_dir(maildir.join("new")).unwrap() {
                std::fs::remove_file(entry.unwrap().path()).unwrap();
            }
            let _ = std::fs::remove_file(maildir.join("maildirsize"));
            assert!(rcpt_reply(&addr, "full@example.test").starts_with("250 2.1.5 "));
        }
        assert_eq!(queue_left(&config), Vec::<String>::new());
        terminate(child);
    }
}

#[test]
fn answers_are_cached_and_an_unreachable_server_defers() {
    let Some(dovecot) = start_dovecot(false) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let metrics = free_address();
    let config = mta_config(
        dir.path(),
        &dovecot.address.to_string(),
        &format!("accept_any_user = true\n[metrics]\naddress = \"{metrics}\"\n"),
    );
    let (child, addr) = serve(&config);
    assert!(rcpt_reply(&addr, "alice@example.test").starts_with("250 2.1.5 "));
    let unknown =
        "550 5.1.1 Mailbox server: <nobody@example.test> User doesn't exist: nobody@example.test";
    assert_eq!(rcpt_reply(&addr, "nobody@example.test"), unknown);

    // Dovecot stops: what was asked before is answered from the cache (the refusal
    // word for word, in any case), what was not is deferred.
    stop(dovecot);
    assert!(rcpt_reply(&addr, "Alice@example.test").starts_with("250 2.1.5 "));
    assert_eq!(rcpt_reply(&addr, "NOBODY@example.test"), unknown);
    assert_eq!(
        rcpt_reply(&addr, "bob@example.test"),
        "451 4.4.3 Recipient verification unavailable, try again later"
    );
    // Mail for other domains is none of the mailbox server's business (refused here by
    // the relay policy, not deferred by verification).
    assert!(rcpt_reply(&addr, "someone@elsewhere.test").starts_with("554 5.7.1 "));
    // The metrics count each answer once, by where it came from.
    for (result, cached) in [
        ("exists", "no"),
        ("unknown", "no"),
        ("exists", "yes"),
        ("unknown", "yes"),
        ("unavailable", "no"),
    ] {
        let sample =
            format!("mta_recipient_verifications_total{{result=\"{result}\",cached=\"{cached}\"}}");
        assert_eq!(metric(&metrics, &sample), Some(1.0), "{sample}");
    }
    terminate(child);
}

#[test]
fn a_server_that_does_not_answer_defers_within_the_timeout() {
    // A listener that takes connections and never says a word.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let lmtp = silent.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let config = mta_config(
        dir.path(),
        &lmtp,
        "accept_any_user = true\nverify_timeout = \"1s\"\n",
    );
    let (child, addr) = serve(&config);
    // The client's reply comes (RawClient waits 10 s at most), and it is a deferral.
    assert_eq!(
        rcpt_reply(&addr, "alice@example.test"),
        "451 4.4.3 Recipient verification unavailable, try again later"
    );
    drop(silent);
    terminate(child);
}

/// A flood of recipients from many clients opens `verify_concurrency` LMTP sessions at
/// once, not one per client: the others wait for a turn within `verify_timeout`. The
/// metrics show both, and the answers.
#[test]
fn probes_at_once_are_capped_and_the_others_wait_for_a_turn() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    // A server that takes connections and never says a word, counting them.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let lmtp = silent.local_addr().unwrap().to_string();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&accepted);
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in silent.incoming().flatten() {
            counter.fetch_add(1, Ordering::SeqCst);
            held.push(stream);
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let metrics = free_address();
    let config = mta_config(
        dir.path(),
        &lmtp,
        &format!(
            "accept_any_user = true\nverify_timeout = \"3s\"\nverify_concurrency = 2\n\
             [metrics]\naddress = \"{metrics}\"\n"
        ),
    );
    let sample = |name: &str| metric(&metrics, name);
    let (child, addr) = serve(&config);
    let start = Instant::now();
    let clients: Vec<_> = (0..6)
        .map(|i| {
            let addr = addr.clone();
            std::thread::spawn(move || rcpt_reply(&addr, &format!("user{i}@example.test")))
        })
        .collect();
    // Halfway through the timeout no probe has finished: two are connected, four wait.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
    assert_eq!(
        sample("mta_recipient_verification_probes{state=\"running\"}"),
        Some(2.0)
    );
    assert_eq!(
        sample("mta_recipient_verification_probes{state=\"waiting\"}"),
        Some(4.0)
    );
    for client in clients {
        assert_eq!(
            client.join().unwrap(),
            "451 4.4.3 Recipient verification unavailable, try again later"
        );
    }
    // Those that waited for a turn did not wait longer than the timeout.
    assert!(
        start.elapsed() < Duration::from_secs(6),
        "{:?}",
        start.elapsed()
    );
    let unavailable = "mta_recipient_verifications_total{result=\"unavailable\",cached=\"no\"}";
    assert_eq!(sample(unavailable), Some(6.0));
    assert_eq!(
        sample("mta_recipient_verification_probes{state=\"waiting\"}"),
        Some(0.0)
    );
    terminate(child);
}

#[test]
fn verification_is_on_by_default_with_lmtp_and_can_be_turned_off() {
    // Nothing listens at `lmtp`: with verification on (the default), a local recipient
    // is deferred; off, it is accepted as before (the queue will retry delivery).
    let nothing = support::free_address();
    let dir = tempfile::tempdir().unwrap();
    let (child, addr) = serve(&mta_config(
        dir.path(),
        &nothing,
        "accept_any_user = true\n",
    ));
    assert!(rcpt_reply(&addr, "alice@example.test").starts_with("451 4.4.3 "));
    terminate(child);

    let off = tempfile::tempdir().unwrap();
    let (child, addr) = serve(&mta_config(
        off.path(),
        &nothing,
        "accept_any_user = true\nverify_recipients = \"off\"\n",
    ));
    assert!(rcpt_reply(&addr, "nobody@example.test").starts_with("250 2.1.5 "));
    terminate(child);
}

#[test]
fn check_config_validates_the_verification_keys() {
    let dir = tempfile::tempdir().unwrap();
    let good = mta_config(
        dir.path(),
        "127.0.0.1:24",
        "verify_recipients = \"lmtp\"\nverify_timeout = \"5s\"\nverify_cache_positive = \"2h\"\n\
         verify_cache_negative = 0\nverify_cache_size = 1000\n",
    );
    assert_config_ok(&good);

    let text = format!(
        "hostname = \"mx.test\"\n[[listener]]\naddress = \"127.0.0.1:0\"\nmode = \"relay\"\n\
         [queue]\npath = \"{d}/queue\"\n[local]\ndomains = [\"example.test\"]\n\
         maildir = \"{d}/maildir\"\nverify_recipients = \"lmtp\"\n",
        d = dir.path().display()
    );
    let without_lmtp = write(dir.path(), "no-lmtp.toml", &text);
    assert_config_refused(
        &without_lmtp,
        &[
            "line 10: [local] verify_recipients = \"lmtp\" needs lmtp, or a [local.targets] entry with lmtp (the server to ask)",
        ],
    );

    for timeout in ["0", "\"10m\""] {
        let bad = mta_config(
            dir.path(),
            "127.0.0.1:24",
            &format!("verify_timeout = {timeout}\n"),
        );
        assert_config_refused(
            &bad,
            &["line 10: [local] verify_timeout: give more than 0 and at most 5 minutes"],
        );
    }
    let unknown_word = mta_config(dir.path(), "127.0.0.1:24", "verify_recipients = \"smtp\"\n");
    let (code, _, stderr) = support::run_with("check-config", &unknown_word);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("verify_recipients"), "{stderr}");
}

#[test]
fn mail_handed_in_on_this_machine_is_verified_but_not_deferred() {
    let Some(dovecot) = start_dovecot(false) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let config = mta_config(
        dir.path(),
        &dovecot.address.to_string(),
        "accept_any_user = true\n",
    );
    let sendmail = |rcpt: &str| {
        let mut child = support::mta()
            .args(["sendmail", "-C"])
            .arg(&config)
            .arg(rcpt)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(b"Subject: cron\n\nout\n")
            .unwrap();
        child.wait_with_output().unwrap()
    };
    // An unknown user is refused (EX_NOUSER) with Dovecot's words.
    let out = sendmail("nobody@example.test");
    assert_eq!(out.status.code(), Some(67), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("User doesn't exist"),
        "{out:?}"
    );
    assert_eq!(listed(&config, &[]), Vec::<String>::new());

    // Dovecot down: a cron job's mail is queued (no one would retry a deferral), for
    // the queue to deliver later.
    stop(dovecot);
    let out = sendmail("bob@example.test");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(listed(&config, &[]).len(), 1);
}

#[test]
fn only_recipients_delivered_over_lmtp_are_asked_about() {
    let Some(dovecot) = start_dovecot(false) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // example.test goes to Dovecot (the default), other.test to a Maildir.
    let text = format!(
        "hostname = \"mx.test\"\n[[listener]]\naddress = \"127.0.0.1:0\"\nmode = \"relay\"\n\
         [queue]\npath = \"{d}/queue\"\n[local]\ndomains = [\"example.test\", \"other.test\"]\n\
         lmtp = \"{lmtp}\"\naccept_any_user = true\n\
         [local.targets.\"other.test\"]\nmaildir = \"{d}/maildir\"\n",
        d = dir.path().display(),
        lmtp = dovecot.address
    );
    let config = write(dir.path(), "mta.toml", &text);
    let (child, addr) = serve(&config);
    assert!(rcpt_reply(&addr, "nobody@example.test").starts_with("550 5.1.1 Mailbox server: "));
    assert!(rcpt_reply(&addr, "nobody@other.test").starts_with("250 2.1.5 "));
    terminate(child);

    // The other way round: the default is a Maildir, one domain goes to Dovecot.
    let text = format!(
        "hostname = \"mx.test\"\n[[listener]]\naddress = \"127.0.0.1:0\"\nmode = \"relay\"\n\
         [queue]\npath = \"{d}/queue2\"\n[local]\ndomains = [\"example.test\", \"other.test\"]\n\
         maildir = \"{d}/maildir\"\naccept_any_user = true\n\
         [local.targets.\"example.test\"]\nlmtp = \"{lmtp}\"\n",
        d = dir.path().display(),
        lmtp = dovecot.address
    );
    let config = write(dir.path(), "mta2.toml", &text);
    let (child, addr) = serve(&config);
    assert!(rcpt_reply(&addr, "nobody@example.test").starts_with("550 5.1.1 Mailbox server: "));
    assert!(rcpt_reply(&addr, "alice@example.test").starts_with("250 2.1.5 "));
    assert!(rcpt_reply(&addr, "nobody@other.test").starts_with("250 2.1.5 "));
    terminate(child);
}

#[test]
fn aliases_are_not_asked_about_and_reach_their_mailbox() {
    let Some(dovecot) = start_dovecot(false) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "hostname = \"mx.test\"\n[[listener]]\naddress = \"127.0.0.1:0\"\nmode = \"relay\"\n\
         [queue]\npath = \"{d}/queue\"\n[local]\ndomains = [\"example.test\"]\n\
         lmtp = \"{lmtp}\"\naccept_any_user = true\n\
         [aliases.map]\n\"sales@example.test\" = \"alice@example.test\"\n",
        d = dir.path().display(),
        lmtp = dovecot.address
    );
    let config = write(dir.path(), "mta.toml", &text);
    let (child, addr) = serve(&config);
    // Dovecot knows no sales@: the alias is not asked about, its mailbox is.
    let said = transaction(
        &addr,
        &["sales@example.test", "nobody@example.test"],
        "Subject: to sales\r\n\r\nhi\r\n",
    );
    assert!(said[2].starts_with("250 2.1.5 "), "{said:?}");
    assert!(
        said[3].starts_with("550 5.1.1 Mailbox server: "),
        "{said:?}"
    );
    assert!(said[5].starts_with("250 2.0.0 "), "{said:?}");
    let files = delivered(&dovecot, "alice@example.test", 1);
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(files[0].contains("Subject: to sales\n"), "{}", files[0]);
    assert_eq!(queue_left(&config), Vec::<String>::new());
    terminate(child);
}
