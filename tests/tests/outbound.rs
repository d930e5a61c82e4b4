//! Outbound delivery end to end: a sending MTA (`example.test`) finds the receiving
//! MTA (`remote.test`) through a real DNS server on loopback, talks SMTP to it over
//! TCP (with STARTTLS), retries, and bounces to the sender's local Maildir.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use dns_mx::testing::TestDns;
use mta_tests::{Options, TestMta, TestPki, code_of};
use smtp_server::ListenerMode::{Relay, Submission};

const ZONES: &[&str] = &[
    "$ORIGIN remote.test.
@    3600 IN SOA ns.remote.test. root.remote.test. 1 3600 600 86400 60
@     300 IN MX 10 down
@     300 IN MX 20 up
down  300 IN A 127.0.0.2
up    300 IN A 127.0.0.1
",
    "$ORIGIN implicit.test.
@    3600 IN SOA ns root 1 3600 600 86400 60
@     300 IN A 127.0.0.1
",
    "$ORIGIN nullmx.test.
@    3600 IN SOA ns root 1 3600 600 86400 60
@     300 IN MX 0 .
",
    "$ORIGIN dead.test.
@    3600 IN SOA ns root 1 3600 600 86400 60
@     300 IN MX 10 nothing
nothing 300 IN A 127.0.0.3
",
];

/// The receiving MTA for `domain`.
async fn remote(domain: &str, tls: bool) -> TestMta {
    TestMta::start_opts(Options {
        domain,
        hostname: "up.remote.test",
        tls,
        ..Options::default()
    })
    .await
}

/// The sending MTA: example.test, DNS from `dns`, remote port `port`, 127.0.0.0/8
/// trusted to relay; `outbound` and `queue` add keys to those sections.
async fn sender(dns: &TestDns, port: u16, outbound: &str, queue: &str) -> TestMta {
    let extra = format!(
        "[relay]\ntrusted_networks = [\"127.0.0.0/8\"]\n[dns]\nnameservers = [\"{}\"]\n[outbound]\nport = {port}\n{outbound}\n",
        dns.addr()
    );
    TestMta::start_opts(Options {
        extra: &extra,
        queue,
        ..Options::default()
    })
    .await
}

/// Relays one message through `t` (a trusted client) to `to`.
async fn send(t: &TestMta, to: &str, body: &str) {
    let mut c = t.connect(Relay).await;
    assert_eq!(c.cmd("EHLO client.test").await.code().as_u16(), 250);
    assert_eq!(c.code("MAIL FROM:<alice@example.test>").await, "250 2.1.0");
    assert_eq!(
        c.code(&format!("RCPT TO:<{to}>")).await,
        "250 2.1.5",
        "{to}"
    );
    assert_eq!(c.code("DATA").await, "354");
    c.send(body.as_bytes()).await;
    c.send(b"\r\n.\r\n").await;
    assert_eq!(code_of(&c.reply().await), "250 2.0.0");
}

/// Waits for the sender's bounce in alice's Maildir.
async fn bounce(t: &TestMta) -> String {
    let mail = t.wait_for_mail("alice", 1).await;
    assert_eq!(mail.len(), 1, "one bounce to the sender");
    String::from_utf8_lossy(&mail[0]).into_owned()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authenticated_submission_reaches_the_mx_after_a_dead_host() {
    let dns = TestDns::start(ZONES).await;
    let b = remote("remote.test", true).await;
    let a = sender(&dns, b.addr(Relay).port(), "", "").await;
    // Submission: STARTTLS, AUTH, then mail for another domain.
    let c = a.connect(Submission).await;
    let mut c = a.starttls(c).await;
    assert_eq!(c.cmd("EHLO client.test").await.code().as_u16(), 250);
    assert_eq!(
        c.code("AUTH PLAIN AGFsaWNlQGV4YW1wbGUudGVzdABzZWNyZXQ=")
            .await,
        "235 2.7.0"
    );
    assert_eq!(c.code("MAIL FROM:<alice@example.test>").await, "250 2.1.0");
    assert_eq!(c.code("RCPT TO:<bob@remote.test>").await, "250 2.1.5");
    assert_eq!(c.code("RCPT TO:<x@dead.test>").await, "250 2.1.5");
    assert_eq!(c.code("DATA").await, "354");
    c.send(b"Subject: across\r\n\r\nfrom example.test to remote.test\r\n.\r\n")
        .await;
    assert_eq!(code_of(&c.reply().await), "250 2.0.0");

    // MX 10 (127.0.0.2) refuses connections; MX 20 takes the message, over STARTTLS
    // (opportunistic: the remote's certificate is not checked).
    let mail = b.wait_for_mail("bob", 1).await;
    assert_eq!(mail.len(), 1, "delivered to the second MX");
    let text = String::from_utf8_lossy(&mail[0]);
    assert!(
        text.contains("by up.remote.test (mta) with ESMTPS"),
        "{text}"
    );
    assert!(
        text.contains("by mx.example.test (mta) with ESMTPSA"),
        "{text}"
    );
    assert!(
        text.ends_with("Subject: across\n\nfrom example.test to remote.test\n"),
        "{text}"
    );
    // What `mta queue show` and the log say names the route taken: the MX, its address
    // and port; the recipient at dead.test keeps the message in the queue.
    let port = b.addr(Relay).port();
    let queue = a.mta.as_ref().unwrap().queue();
    let start = Instant::now();
    let sent = loop {
        let mut sent = None;
        queue
            .scan(None, &mut |meta| {
                sent = meta.recipients[0]
                    .last_reply
                    .clone()
                    .filter(|_| meta.recipients[0].state == mail_queue::RecipientState::Sent);
                false
            })
            .unwrap();
        match sent {
            Some(text) => break text,
            None if start.elapsed() < Duration::from_secs(10) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            None => panic!("bob@remote.test is not recorded as sent"),
        }
    };
    assert!(
        sent.starts_with(&format!(
            "sent to up.remote.test[127.0.0.1]:{port} (MX 20 of remote.test): 250 2.0.0"
        )),
        "{sent}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn implicit_mx_and_null_mx() {
    let dns = TestDns::start(ZONES).await;
    let b = remote("implicit.test", true).await;
    let a = sender(&dns, b.addr(Relay).port(), "", "").await;
    send(
        &a,
        "bob@implicit.test",
        "Subject: implicit\r\n\r\nno MX, just an A record",
    )
    .await;
    assert_eq!(
        b.wait_for_mail("bob", 1).await.len(),
        1,
        "delivered to the domain's own address"
    );

    send(&a, "anyone@nullmx.test", "Subject: nowhere\r\n\r\nx").await;
    let dsn = bounce(&a).await;
    assert!(
        dsn.contains(
            "Final-Recipient: rfc822; anyone@nullmx.test\nAction: failed\nStatus: 5.1.10\n"
        ),
        "{dsn}"
    );
    assert!(dsn.contains("Diagnostic-Code: smtp; 556 5.1.10"), "{dsn}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_550_bounces_with_the_remote_reply() {
    let dns = TestDns::start(ZONES).await;
    let b = remote("remote.test", true).await;
    let a = sender(&dns, b.addr(Relay).port(), "", "").await;
    send(&a, "nobody@remote.test", "Subject: to nobody\r\n\r\nx").await;
    let dsn = bounce(&a).await;
    for needle in [
        "To: <alice@example.test>\n",
        "Final-Recipient: rfc822; nobody@remote.test\nAction: failed\nStatus: 5.1.1\n",
        "Remote-MTA: dns; up.remote.test\n",
        "Diagnostic-Code: smtp; 550 5.1.1 User unknown",
        "Subject: to nobody",
    ] {
        assert!(dsn.contains(needle), "missing {needle:?}:\n{dsn}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_the_remote_comes_back() {
    let dns = TestDns::start(ZONES).await;
    let port = free_port();
    let a = sender(&dns, port, "", "").await;
    send(&a, "bob@remote.test", "Subject: patience\r\n\r\nx").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let queue = a.mta.as_ref().unwrap().queue().clone();
    assert_eq!(queue.len(), 1, "deferred while the remote is down");
    let mut last_error = None;
    queue
        .scan(None, &mut |m| {
            last_error = m.last_error;
            false
        })
        .unwrap();
    assert!(
        last_error.is_some_and(|e| e.contains("up.remote.test")),
        "the last error names the host"
    );
    let b = TestMta::start_opts(Options {
        domain: "remote.test",
        hostname: "up.remote.test",
        relay_port: port,
        ..Options::default()
    })
    .await;
    assert_eq!(
        b.wait_for_mail("bob", 1).await.len(),
        1,
        "delivered on a later attempt"
    );
    let start = Instant::now();
    while !queue.is_empty() && start.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(queue.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_bounces() {
    let dns = TestDns::start(ZONES).await;
    let a = sender(&dns, free_port(), "", "max_age = \"2s\"").await;
    send(&a, "bob@dead.test", "Subject: too late\r\n\r\nx").await;
    let dsn = bounce(&a).await;
    assert!(
        dsn.contains("Final-Recipient: rfc822; bob@dead.test\nAction: failed\nStatus: 4.4.7\n"),
        "{dsn}"
    );
    assert!(dsn.contains("expired after"), "{dsn}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_tls_refuses_plaintext_and_verifies_certificates() {
    let dns = TestDns::start(ZONES).await;
    // A plaintext-only remote: never sent in the clear.
    let plain = remote("remote.test", false).await;
    let a = sender(&dns, plain.addr(Relay).port(), "tls = \"required\"", "").await;
    send(&a, "bob@remote.test", "Subject: secret\r\n\r\nx").await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        plain.wait_for_mail("bob", 0).await.is_empty(),
        "nothing delivered in plaintext"
    );
    let queue = a.mta.as_ref().unwrap().queue().clone();
    assert_eq!(queue.len(), 1, "kept, to retry");

    // A remote with a certificate for up.remote.test from a CA we trust: delivered.
    let tls = remote("remote.test", true).await;
    let ca = tls.dir.path().join("ca.pem");
    let a = sender(
        &dns,
        tls.addr(Relay).port(),
        &format!("tls = \"required\"\nca_file = \"{}\"", ca.display()),
        "",
    )
    .await;
    send(&a, "bob@remote.test", "Subject: verified\r\n\r\nx").await;
    assert_eq!(tls.wait_for_mail("bob", 1).await.len(), 1);

    // The same certificate without trusting its CA: refused.
    let a = sender(&dns, tls.addr(Relay).port(), "tls = \"required\"", "").await;
    send(&a, "carol@remote.test", "Subject: unverified\r\n\r\nx").await;
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert!(
        tls.wait_for_mail("carol", 0).await.is_empty(),
        "an untrusted certificate is not good enough"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smarthost_with_auth() {
    let dns = TestDns::start(ZONES).await;
    let relay = remote("remote.test", true).await;
    let port = relay.addr(Submission).port();
    // The relay's certificate names 127.0.0.1 and chains to a CA we trust.
    let ca = relay.dir.path().join("ca.pem");
    let outbound = format!(
        "relay = \"127.0.0.1:{port}\"\nrelay_username = \"alice@remote.test\"\nrelay_password = \"secret\"\nca_file = \"{}\"",
        ca.display()
    );
    let a = sender(&dns, 25, &outbound, "").await;
    // Mail for anywhere goes to the relay, over STARTTLS, logged in.
    send(&a, "carol@remote.test", "Subject: via the relay\r\n\r\nx").await;
    let mail = relay.wait_for_mail("carol", 1).await;
    assert_eq!(mail.len(), 1);
    let text = String::from_utf8_lossy(&mail[0]);
    assert!(
        text.contains("by up.remote.test (mta) with ESMTPSA"),
        "authenticated submission at the relay: {text}"
    );
}

/// The relay password goes only to a server whose certificate verifies for the
/// relay's name, or is pinned in `ca_file`: a fake relay with a self-signed certificate
/// for another name received `AUTH PLAIN` under the default opportunistic TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_credentials_go_only_to_a_verified_or_pinned_certificate() {
    let dns = TestDns::start(ZONES).await;
    let pki = Arc::new(TestPki::self_signed("elsewhere.test"));
    let relay = TestMta::start_opts(Options {
        domain: "remote.test",
        hostname: "up.remote.test",
        pki: Some(&pki),
        ..Options::default()
    })
    .await;
    let port = relay.addr(Submission).port();
    let outbound = format!(
        "relay = \"127.0.0.1:{port}\"\nrelay_username = \"alice@remote.test\"\nrelay_password = \"secret\""
    );
    let a = sender(&dns, 25, &outbound, "").await;
    send(
        &a,
        "carol@remote.test",
        "Subject: not for strangers\r\n\r\nx",
    )
    .await;
    let queue = a.mta.as_ref().unwrap().queue().clone();
    let start = Instant::now();
    let error = loop {
        let mut error = None;
        queue
            .scan(None, &mut |meta| {
                error.clone_from(&meta.last_error);
                false
            })
            .unwrap();
        match error {
            Some(e) => break e,
            None if start.elapsed() < Duration::from_secs(10) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            None => panic!("no attempt recorded"),
        }
    };
    assert!(error.contains("451 4.7.5"), "{error}");
    assert!(
        error.contains("does not verify") && error.contains("ca_file"),
        "{error}"
    );
    assert!(
        relay.wait_for_mail("carol", 0).await.is_empty(),
        "nothing sent"
    );
    assert_eq!(queue.len(), 1, "the mail waits");
    // `mta check-config` says so.
    let warning = mta_bin::serve::check_relay_certificate(a.mta.as_ref().unwrap().config()).await;
    let warning = warning.expect("a warning");
    assert!(
        warning.contains("does not verify") && warning.contains("ca_file"),
        "{warning}"
    );

    // The same certificate pinned in ca_file: the login is sent.
    let pinned = a.dir.path().join("pinned.pem");
    std::fs::write(&pinned, &pki.cert_pem).unwrap();
    let b = sender(
        &dns,
        25,
        &format!("{outbound}\nca_file = \"{}\"", pinned.display()),
        "",
    )
    .await;
    send(&b, "carol@remote.test", "Subject: pinned\r\n\r\nx").await;
    let mail = relay.wait_for_mail("carol", 1).await;
    assert_eq!(mail.len(), 1);
    let text = String::from_utf8_lossy(&mail[0]);
    assert!(text.contains("with ESMTPSA"), "logged in: {text}");
    let warning = mta_bin::serve::check_relay_certificate(b.mta.as_ref().unwrap().config()).await;
    assert_eq!(warning, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_reused() {
    let dns = TestDns::start(ZONES).await;
    let b = remote("remote.test", true).await;
    // A TCP relay in front of the remote counts connections.
    let proxy = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_port = proxy.local_addr().unwrap().port();
    let target = b.addr(Relay);
    let connections = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&connections);
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = proxy.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    let a = sender(&dns, proxy_port, "max_per_destination = 1", "").await;
    for i in 0..5 {
        send(
            &a,
            "bob@remote.test",
            &format!("Subject: message {i}\r\n\r\nx"),
        )
        .await;
    }
    assert_eq!(b.wait_for_mail("bob", 5).await.len(), 5);
    let n = connections.load(Ordering::SeqCst);
    assert!(n < 5, "5 messages over {n} connections");
}

/// Postfix's smtp-sink as the remote: delivery to a server nobody here wrote, and one
/// without 8BITMIME.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interop_with_smtp_sink() {
    let sink = ["/usr/sbin/smtp-sink", "/usr/bin/smtp-sink"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists());
    let Some(sink) = sink else {
        assert!(
            !std::env::var("CI").is_ok_and(|v| v == "true"),
            "smtp-sink is required under CI"
        );
        eprintln!("skipping: smtp-sink not found");
        return;
    };
    let dns = TestDns::start(ZONES).await;
    let dumps = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        dumps.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let start_sink = |extra: &'static [&'static str]| {
        let port = free_port();
        let template = format!("{}/{port}.%H%M%S.", dumps.path().display());
        let mut args: Vec<String> = extra.iter().map(|s| (*s).to_owned()).collect();
        args.extend([
            "-u".into(),
            "nobody".into(),
            "-d".into(),
            template,
            format!("127.0.0.1:{port}"),
            "100".into(),
        ]);
        let child = tokio::process::Command::new(sink)
            .args(&args)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        (port, child)
    };
    let (port, _sink) = start_sink(&[]);
    let (port7, _sink7) = start_sink(&["-8"]);
    for p in [port, port7] {
        let start = Instant::now();
        while tokio::net::TcpStream::connect(("127.0.0.1", p))
            .await
            .is_err()
        {
            assert!(start.elapsed() < Duration::from_secs(5));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let a = sender(&dns, port, "", "").await;
    send(
        &a,
        "bob@remote.test",
        "Subject: to smtp-sink\r\n\r\nplain ASCII\r\n..dot",
    )
    .await;
    let start = Instant::now();
    let dump = loop {
        let found: Vec<String> = std::fs::read_dir(dumps.path())
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with(&port.to_string())
            })
            .filter_map(|e| std::fs::read_to_string(e.path()).ok())
            .collect();
        if let Some(d) = found.into_iter().find(|d| d.contains("plain ASCII")) {
            break d;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "nothing reached smtp-sink"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        dump.contains("X-Mail-Args: <alice@example.test>")
            && dump.contains("X-Rcpt-Args: <bob@remote.test>"),
        "{dump}"
    );
    assert!(
        dump.contains("plain ASCII\n.dot") || dump.contains("plain ASCII\r\n.dot"),
        "dot-stuffing round trip: {dump}"
    );

    // An 8-bit message to a server without 8BITMIME is bounced, not mangled.
    let a = sender(&dns, port7, "", "").await;
    send(
        &a,
        "bob@remote.test",
        "Subject: caf\u{e9}\r\n\r\nna\u{ef}ve",
    )
    .await;
    let dsn = bounce(&a).await;
    assert!(
        dsn.contains("Status: 5.6.3\n") && dsn.contains("8BITMIME"),
        "{dsn}"
    );
}

/// Python's aiosmtpd (another SMTP server nobody here wrote) as the remote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interop_with_aiosmtpd() {
    let available = std::process::Command::new("python3")
        .args(["-c", "import aiosmtpd"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !available {
        assert!(
            !std::env::var("CI").is_ok_and(|v| v == "true"),
            "aiosmtpd is required under CI (.ci/run installs it)"
        );
        eprintln!("skipping: python3 -m aiosmtpd not available");
        return;
    }
    let dns = TestDns::start(ZONES).await;
    let port = free_port();
    let mut server = tokio::process::Command::new("python3")
        .args([
            "-u",
            "-m",
            "aiosmtpd",
            "-n",
            "-c",
            "aiosmtpd.handlers.Debugging",
            "stdout",
            "-l",
            &format!("127.0.0.1:{port}"),
        ])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let start = Instant::now();
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "aiosmtpd did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let a = sender(&dns, port, "", "").await;
    send(
        &a,
        "bob@remote.test",
        "Subject: to aiosmtpd\r\n\r\nhello python\r\n..dot",
    )
    .await;
    let queue = a.mta.as_ref().unwrap().queue().clone();
    let start = Instant::now();
    while !queue.is_empty() && start.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut last_error = None;
    queue
        .scan(None, &mut |m| {
            last_error = m.last_error;
            false
        })
        .unwrap();
    assert!(
        queue.is_empty(),
        "delivered (aiosmtpd said 250); last error: {last_error:?}"
    );
    let _ = server.start_kill();
    let output = server.wait_with_output().await.unwrap();
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(
        printed.contains("Subject: to aiosmtpd")
            && printed.contains("hello python")
            && printed.contains("\n.dot"),
        "{printed}"
    );
}

/// What a minimal SMTP server (no TLS) received: each line with when it came, and
/// `<closed>` when the client closed the connection.
type Transcript = Arc<std::sync::Mutex<Vec<(Instant, String)>>>;

/// Starts that server on loopback; returns its port and its transcript.
async fn recording_server() -> (u16, Transcript) {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let log: Transcript = Arc::default();
    let shared = Arc::clone(&log);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let log = Arc::clone(&shared);
            tokio::spawn(async move {
                let (read, mut write) = tcp.into_split();
                let mut lines = BufReader::new(read).lines();
                let _ = write.write_all(b"220 sink.test ESMTP\r\n").await;
                let mut in_data = false;
                while let Ok(Some(line)) = lines.next_line().await {
                    log.lock().unwrap().push((Instant::now(), line.clone()));
                    let verb = line.get(..4).unwrap_or("").to_ascii_uppercase();
                    let reply: &[u8] = match (in_data, verb.as_str()) {
                        (true, _) if line == "." => {
                            in_data = false;
                            b"250 2.0.0 Ok\r\n"
                        }
                        (true, _) => continue,
                        (false, "EHLO") => b"250-sink.test\r\n250 PIPELINING\r\n",
                        (false, "DATA") => {
                            in_data = true;
                            b"354 go ahead\r\n"
                        }
                        (false, "QUIT") => {
                            let _ = write.write_all(b"221 2.0.0 Bye\r\n").await;
                            continue;
                        }
                        _ => b"250 2.0.0 Ok\r\n",
                    };
                    let _ = write.write_all(reply).await;
                }
                log.lock()
                    .unwrap()
                    .push((Instant::now(), "<closed>".into()));
            });
        }
    });
    (port, log)
}

/// When `line` arrived, waiting up to `within`.
async fn arrival(log: &Transcript, line: &str, within: Duration) -> Option<Instant> {
    let start = Instant::now();
    loop {
        let found = log
            .lock()
            .unwrap()
            .iter()
            .find(|(_, l)| l == line)
            .map(|(t, _)| *t);
        if found.is_some() || start.elapsed() > within {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A connection kept for reuse is closed with QUIT when its idle window ends (a peer
/// saw every session end without QUIT, connections open for over 50 s, and its own
/// timeout after the message), and at shutdown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_outbound_connections_say_quit() {
    let dns = TestDns::start(ZONES).await;
    let (port, log) = recording_server().await;
    let a = sender(&dns, port, "idle_timeout = \"1s\"", "").await;
    send(&a, "bob@remote.test", "Subject: one\r\n\r\nx").await;
    let end = arrival(&log, ".", Duration::from_secs(10))
        .await
        .expect("delivered");
    let quit = arrival(&log, "QUIT", Duration::from_secs(10))
        .await
        .expect("QUIT");
    let idle = quit - end;
    assert!(
        idle >= Duration::from_millis(900) && idle < Duration::from_secs(5),
        "QUIT {idle:?} after the message; the window is 1 s"
    );
    assert!(
        arrival(&log, "<closed>", Duration::from_secs(5))
            .await
            .is_some()
    );

    // Shutdown closes what waits, with QUIT.
    let (port, log) = recording_server().await;
    let mut b = sender(&dns, port, "", "").await;
    send(&b, "bob@remote.test", "Subject: two\r\n\r\nx").await;
    arrival(&log, ".", Duration::from_secs(10))
        .await
        .expect("delivered");
    assert!(
        arrival(&log, "QUIT", Duration::from_millis(300))
            .await
            .is_none()
    );
    b.stop().await;
    assert!(
        arrival(&log, "QUIT", Duration::from_secs(1))
            .await
            .is_some(),
        "QUIT at shutdown"
    );
    assert!(
        arrival(&log, "<closed>", Duration::from_secs(5))
            .await
            .is_some()
    );
}
