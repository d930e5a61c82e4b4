//! The inbound MTA end to end: a whole `mta` in this process, spoken to over real TCP
//! and real TLS, with mail checked where it lands (the Maildir).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use mta_tests::{DOMAIN, RawClient, TestMta, code_of};
use smtp_server::ListenerMode::{Relay, Smtps, Submission};

const AUTH_PLAIN_ALICE: &str = "AUTH PLAIN AGFsaWNlQGV4YW1wbGUudGVzdABzZWNyZXQ="; // \0alice@example.test\0secret
const AUTH_PLAIN_WRONG: &str = "AUTH PLAIN AGFsaWNlQGV4YW1wbGUudGVzdAB3cm9uZw=="; // \0alice@example.test\0wrong

async fn ehlo(c: &mut RawClient) -> String {
    let reply = c.cmd("EHLO client.test").await;
    assert_eq!(reply.code().as_u16(), 250, "{reply}");
    reply.text().to_owned()
}

/// MAIL and RCPT, each accepted.
async fn envelope(c: &mut RawClient, from: &str, to: &[&str]) {
    assert_eq!(c.code(&format!("MAIL FROM:<{from}>")).await, "250 2.1.0");
    for rcpt in to {
        assert_eq!(
            c.code(&format!("RCPT TO:<{rcpt}>")).await,
            "250 2.1.5",
            "{rcpt}"
        );
    }
}

/// Sends a whole message with DATA and returns the reply to the final dot.
async fn send_data(c: &mut RawClient, from: &str, to: &[&str], body: &[u8]) -> String {
    envelope(c, from, to).await;
    assert_eq!(c.code("DATA").await, "354");
    c.send(body).await;
    c.send(b"\r\n.\r\n").await;
    let reply = c.reply().await;
    code_of(&reply)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_listener_advertises_and_delivers_to_maildir() {
    let t = TestMta::start("").await;
    let mut c = t.connect(Relay).await;
    assert!(c.greeting.text().starts_with("mx.example.test ESMTP"));
    let caps = ehlo(&mut c).await;
    for ext in [
        "PIPELINING",
        "SIZE 52428800",
        "8BITMIME",
        "SMTPUTF8",
        "ENHANCEDSTATUSCODES",
        "CHUNKING",
        "DSN",
        "STARTTLS",
    ] {
        assert!(
            caps.lines().any(|l| l == ext),
            "{ext} missing from {caps:?}"
        );
    }
    assert!(!caps.contains("AUTH"), "no AUTH before TLS: {caps:?}");
    assert!(!caps.contains("REQUIRETLS"), "REQUIRETLS only under TLS");
    assert_eq!(c.code("VRFY bob").await, "252 2.5.0");
    assert_eq!(c.code("EXPN staff").await, "502 5.5.1");
    let body = b"Subject: hello\r\n\r\nHi Bob,\r\n..a line that starts with a dot\r\n";
    assert_eq!(c.code("MAIL FROM:<sender@remote.test>").await, "250 2.1.0");
    assert_eq!(
        c.code(&format!("RCPT TO:<bob@{DOMAIN}>")).await,
        "250 2.1.5"
    );
    assert_eq!(c.code("DATA").await, "354");
    c.send(body).await;
    c.send(b".\r\n").await;
    let reply = c.reply().await;
    assert_eq!(code_of(&reply), "250 2.0.0");
    let id = reply
        .text()
        .strip_prefix("Ok: queued as ")
        .expect("queue id in the 250 reply")
        .to_owned();
    assert_eq!(id.len(), 16);
    assert_eq!(c.code("QUIT").await, "221 2.0.0");

    let mail = t.wait_for_mail("bob", 1).await;
    assert_eq!(mail.len(), 1);
    let text = String::from_utf8(mail[0].clone()).unwrap();
    assert!(text.starts_with(&format!("Return-Path: <sender@remote.test>\nDelivered-To: bob@{DOMAIN}\nReceived: from client.test ([127.0.0.1])\n\tby mx.example.test (mta) with ESMTP\n")), "{text}");
    assert!(
        text.ends_with("Subject: hello\n\nHi Bob,\n.a line that starts with a dot\n"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_local_user_and_relay_denied() {
    let t = TestMta::start("").await;
    let mut c = t.connect(Relay).await;
    ehlo(&mut c).await;
    assert_eq!(c.code("MAIL FROM:<x@remote.test>").await, "250 2.1.0");
    assert_eq!(
        c.code(&format!("RCPT TO:<nobody@{DOMAIN}>")).await,
        "550 5.1.1"
    );
    assert_eq!(c.code("RCPT TO:<victim@elsewhere.test>").await, "554 5.7.1");
    assert_eq!(
        c.code(&format!("RCPT TO:<postmaster@{DOMAIN}>")).await,
        "250 2.1.5"
    );
    assert_eq!(c.code("RCPT TO:<Postmaster>").await, "250 2.1.5");
    assert_eq!(
        c.code(&format!("RCPT TO:<Bob@{DOMAIN}>")).await,
        "250 2.1.5",
        "local parts ignore case"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submission_requires_tls_then_auth() {
    let t = TestMta::start("").await;
    let mut c = t.connect(Submission).await;
    let caps = ehlo(&mut c).await;
    assert!(
        caps.contains("STARTTLS") && !caps.contains("AUTH"),
        "{caps}"
    );
    assert_eq!(
        c.code(AUTH_PLAIN_ALICE).await,
        "538 5.7.11",
        "AUTH refused in plaintext"
    );
    assert_eq!(
        c.code("MAIL FROM:<alice@example.test>").await,
        "530 5.7.0",
        "MAIL needs AUTH"
    );
    let mut c = t.starttls(c).await;
    assert_eq!(
        c.code("MAIL FROM:<alice@example.test>").await,
        "503 5.5.1",
        "EHLO again after STARTTLS"
    );
    let caps = ehlo(&mut c).await;
    assert!(!caps.contains("STARTTLS"), "{caps}");
    assert!(caps.lines().any(|l| l == "AUTH PLAIN LOGIN"), "{caps}");
    assert!(caps.lines().any(|l| l == "REQUIRETLS"), "{caps}");
    let start = std::time::Instant::now();
    assert_eq!(c.code(AUTH_PLAIN_WRONG).await, "535 5.7.8");
    assert!(
        start.elapsed() >= Duration::from_millis(900),
        "failed logins are answered slowly"
    );
    assert_eq!(c.code(AUTH_PLAIN_ALICE).await, "235 2.7.0");
    assert_eq!(c.code(AUTH_PLAIN_ALICE).await, "503 5.5.1", "AUTH twice");
    // An authenticated user may relay, and the Received header says ESMTPSA.
    let code = send_data(
        &mut c,
        "alice@example.test",
        &["bob@example.test", "someone@remote.test"],
        b"Subject: out\r\n\r\nx",
    )
    .await;
    assert_eq!(code, "250 2.0.0");
    let mail = t.wait_for_mail("bob", 1).await;
    let text = String::from_utf8_lossy(&mail[0]);
    assert!(
        text.contains("with ESMTPSA\n\t(using TLSv1.3 with cipher TLS13_"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_login_and_failure_limit() {
    let t = TestMta::start("").await;
    let mut c = t.connect_smtps().await;
    let caps = ehlo(&mut c).await;
    assert!(
        caps.contains("AUTH PLAIN LOGIN") && !caps.contains("STARTTLS"),
        "{caps}"
    );
    assert_eq!(c.code("AUTH LOGIN").await, "334");
    assert_eq!(c.code("YWxpY2VAZXhhbXBsZS50ZXN0").await, "334");
    assert_eq!(c.code("c2VjcmV0").await, "235 2.7.0");

    let mut c = t.connect_smtps().await;
    ehlo(&mut c).await;
    for _ in 0..2 {
        assert_eq!(c.code(AUTH_PLAIN_WRONG).await, "535 5.7.8");
    }
    c.send(format!("{AUTH_PLAIN_WRONG}\r\n").as_bytes()).await;
    assert_eq!(code_of(&c.reply().await), "535 5.7.8");
    assert_eq!(code_of(&c.reply().await), "421 4.7.0");
    assert!(c.is_closed().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_injection_is_discarded() {
    let t = TestMta::start("").await;
    let mut c = t.connect(Relay).await;
    ehlo(&mut c).await;
    // STARTTLS and a pipelined plaintext MAIL in one segment (CVE-2011-0411).
    c.send(b"STARTTLS\r\nMAIL FROM:<injected@evil.test>\r\n")
        .await;
    assert_eq!(code_of(&c.reply().await), "220 2.0.0");
    // starttls() sends STARTTLS itself; do the handshake alone instead.
    let mut c = c
        .handshake(t.pki.client_config(), mta_tests::PKI_NAME)
        .await;
    ehlo(&mut c).await;
    assert_eq!(
        c.code(&format!("RCPT TO:<bob@{DOMAIN}>")).await,
        "503 5.5.1",
        "the injected MAIL did not survive"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggling_sequences_never_end_data() {
    let t = TestMta::start("").await;
    let seqs: [&[u8]; 10] = [
        b"\n.\n",
        b"\r.\r",
        b"\r.\n",
        b"\n.\r",
        b"\n.\r\n",
        b"\r\n.\n",
        b"\r.\r\n",
        b"\r\n.\r",
        b"\r\n\x00.\r\n",
        b"\r\n.\x00\r\n",
    ];
    for seq in seqs {
        let mut c = t.connect(Relay).await;
        ehlo(&mut c).await;
        assert_eq!(c.code("MAIL FROM:<a@remote.test>").await, "250 2.1.0");
        assert_eq!(
            c.code(&format!("RCPT TO:<carol@{DOMAIN}>")).await,
            "250 2.1.5"
        );
        assert_eq!(c.code("DATA").await, "354");
        let attack = [
            b"Subject: t\r\n\r\nfirst".as_slice(),
            seq,
            format!("MAIL FROM:<smuggled@attacker.test>\r\nRCPT TO:<bob@{DOMAIN}>\r\nDATA\r\nFrom: <ceo@victim.test>\r\n\r\nsmuggled\r\n.\r\n").as_bytes(),
        ]
        .concat();
        c.send(&attack).await;
        let reply = c.reply().await;
        assert!(
            ["250 2.0.0", "550 5.6.11", "550 5.6.0"].contains(&code_of(&reply).as_str()),
            "{seq:?}: {reply}"
        );
        // Whatever follows is not a reply to the smuggled commands.
        assert_eq!(c.code("NOOP").await, "250 2.0.0", "{seq:?}");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        t.wait_for_mail("bob", 0).await.is_empty(),
        "nothing smuggled to bob"
    );
    for m in t.wait_for_mail("carol", 2).await {
        let text = String::from_utf8_lossy(&m);
        assert!(
            text.contains("MAIL FROM:<smuggled@attacker.test>"),
            "the sequence stayed inside the body"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelining_bdat_smtputf8_and_eight_bit_are_byte_exact() {
    let t = TestMta::start("").await;
    let mut c = t.connect(Relay).await;
    ehlo(&mut c).await;
    // One pipelined group: MAIL, three RCPTs, DATA.
    c.send(format!("MAIL FROM:<p@remote.test> BODY=8BITMIME\r\nRCPT TO:<bob@{DOMAIN}>\r\nRCPT TO:<nobody@{DOMAIN}>\r\nRCPT TO:<carol@{DOMAIN}>\r\nDATA\r\n").as_bytes()).await;
    let mut codes = Vec::new();
    for _ in 0..5 {
        codes.push(code_of(&c.reply().await));
    }
    assert_eq!(
        codes,
        ["250 2.1.0", "250 2.1.5", "550 5.1.1", "250 2.1.5", "354"]
    );
    let eight_bit = "Subject: caf\u{e9}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n\u{e9}t\u{e9} \u{2014} \u{1F600}\r\n";
    c.send(eight_bit.as_bytes()).await;
    c.send(b".\r\n").await;
    assert_eq!(code_of(&c.reply().await), "250 2.0.0");

    // BDAT with a binary-looking chunk (no dot handling) and SMTPUTF8 addresses.
    assert_eq!(
        c.code("MAIL FROM:<\u{5B6B}@remote.test> SMTPUTF8").await,
        "250 2.1.0"
    );
    assert_eq!(
        c.code(&format!("RCPT TO:<\u{5B6B}\u{5B50}@{DOMAIN}>"))
            .await,
        "250 2.1.5"
    );
    let chunk1 = "Subject: bdat\r\n\r\n.\r\n..\r\n";
    let chunk2 = "\u{4E2D}\u{6587}\r\n";
    c.send(format!("BDAT {}\r\n{chunk1}", chunk1.len()).as_bytes())
        .await;
    assert_eq!(code_of(&c.reply().await), "250 2.0.0");
    c.send(format!("BDAT {} LAST\r\n{chunk2}", chunk2.len()).as_bytes())
        .await;
    assert_eq!(code_of(&c.reply().await), "250 2.0.0");

    for user in ["bob", "carol"] {
        let mail = t.wait_for_mail(user, 1).await;
        assert!(
            mail[0].ends_with(eight_bit.replace("\r\n", "\n").as_bytes()),
            "{user}: 8-bit body byte-exact"
        );
    }
    let mail = t.wait_for_mail("\u{5B6B}\u{5B50}", 1).await;
    assert_eq!(mail.len(), 1, "UTF-8 mailbox");
    assert!(
        mail[0].ends_with(format!("{chunk1}{chunk2}").replace("\r\n", "\n").as_bytes()),
        "BDAT chunks verbatim"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_size_recipients_lines_errors() {
    let t =
        TestMta::start("[limits]\nmax_message_size = 1000\nmax_recipients = 3\nmax_errors = 5\n")
            .await;
    let mut c = t.connect(Relay).await;
    let caps = ehlo(&mut c).await;
    assert!(caps.lines().any(|l| l == "SIZE 1000"), "{caps}");
    assert_eq!(
        c.code("MAIL FROM:<a@remote.test> SIZE=1001").await,
        "552 5.3.4"
    );
    assert_eq!(
        c.code("MAIL FROM:<a@remote.test> SIZE=99999999999999999999999")
            .await,
        "552 5.3.4"
    );
    assert_eq!(c.code("MAIL FROM:<a@remote.test>").await, "250 2.1.0");
    for _ in 0..3 {
        assert_eq!(
            c.code(&format!("RCPT TO:<bob@{DOMAIN}>")).await,
            "250 2.1.5"
        );
    }
    assert_eq!(
        c.code(&format!("RCPT TO:<bob@{DOMAIN}>")).await,
        "452 4.5.3"
    );
    assert_eq!(c.code("DATA").await, "354");
    c.send(&[b'x'; 1500]).await;
    c.send(b"\r\n.\r\n").await;
    assert_eq!(
        code_of(&c.reply().await),
        "552 5.3.4",
        "actual size checked after the dot"
    );
    assert_eq!(
        c.code("NOOP").await,
        "250 2.0.0",
        "in sync after the refusal"
    );
    let long = format!("NOOP {}", "x".repeat(3000));
    assert_eq!(c.code(&long).await, "500 5.5.2");
    // The long line was error 1 of 5.
    for _ in 0..3 {
        assert_eq!(c.code("FOOBAR").await, "500 5.5.1");
    }
    c.send(b"FOOBAR\r\n").await;
    assert_eq!(code_of(&c.reply().await), "500 5.5.1");
    assert_eq!(code_of(&c.reply().await), "421 4.7.0");
    assert!(c.is_closed().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_loops_are_refused() {
    let t = TestMta::start("[limits]\nmax_hops = 5\n").await;
    let mut c = t.connect(Relay).await;
    ehlo(&mut c).await;
    let hops: String = (0..6)
        .map(|i| format!("Received: from h{i} by h{};\r\n", i + 1))
        .collect();
    let code = send_data(
        &mut c,
        "a@remote.test",
        &["bob@example.test"],
        format!("{hops}Subject: loop\r\n\r\nx").as_bytes(),
    )
    .await;
    assert_eq!(code, "554 5.4.6");
    let hops: String = (0..4)
        .map(|i| format!("Received: from h{i} by h{};\r\n", i + 1))
        .collect();
    let code = send_data(
        &mut c,
        "a@remote.test",
        &["bob@example.test"],
        format!("{hops}Subject: ok\r\n\r\nx").as_bytes(),
    )
    .await;
    assert_eq!(code, "250 2.0.0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_and_connection_limits() {
    let t = TestMta::start("[limits]\ncommand_timeout = \"1s\"\ntls_handshake_timeout = \"1s\"\nmax_connections_per_ip = 3\n").await;
    let mut idle = t.connect(Relay).await;
    ehlo(&mut idle).await;
    let reply = idle
        .try_reply(Duration::from_secs(5))
        .await
        .expect("a timeout reply");
    assert_eq!(code_of(&reply), "421 4.4.2");
    assert!(idle.is_closed().await);

    // A handshake that never finishes is cut off in seconds.
    let mut raw = tokio::net::TcpStream::connect(t.addr(Smtps)).await.unwrap();
    let start = std::time::Instant::now();
    tokio::io::AsyncWriteExt::write_all(&mut raw, b"\x16\x03\x01")
        .await
        .unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read(&mut raw, &mut buf),
    )
    .await;
    assert!(matches!(n, Ok(Ok(0)) | Ok(Err(_))), "closed");
    assert!(start.elapsed() < Duration::from_secs(4));

    // Three connections from one address are fine; the fourth is refused.
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(t.connect(Relay).await);
    }
    let refused = RawClient::connect(t.addr(Relay)).await;
    assert_eq!(code_of(&refused.greeting), "421 4.7.0");
    drop(open);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_the_transaction_in_flight() {
    let mut t = TestMta::start("").await;
    let mut busy = t.connect(Relay).await;
    ehlo(&mut busy).await;
    assert_eq!(busy.code("MAIL FROM:<a@remote.test>").await, "250 2.1.0");
    assert_eq!(
        busy.code(&format!("RCPT TO:<bob@{DOMAIN}>")).await,
        "250 2.1.5"
    );
    let mut idle = t.connect(Relay).await;
    ehlo(&mut idle).await;
    let addr = t.addr(Relay);
    let mta = t.mta.take().unwrap();
    let stopping = tokio::spawn(mta.stop());
    // The idle session is told to go away; new connections are refused.
    assert_eq!(code_of(&idle.reply().await), "421 4.3.2");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no new connections"
    );
    // The busy session finishes its message, then is closed.
    assert_eq!(busy.code("DATA").await, "354");
    busy.send(b"Subject: last\r\n\r\nx\r\n.\r\n").await;
    assert_eq!(code_of(&busy.reply().await), "250 2.0.0");
    assert_eq!(code_of(&busy.reply().await), "421 4.3.2");
    stopping.await.unwrap();
}

/// The server picks the cipher suite by its own order (testssl flagged "no server
/// cipher order"): a client that prefers ChaCha20 still gets AES-GCM when it offers it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_chooses_the_cipher_suite() {
    use rustls::crypto::aws_lc_rs::{cipher_suite, default_provider};
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let t = TestMta::start("").await;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(t.pki.ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = rustls::crypto::CryptoProvider {
        cipher_suites: vec![
            cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
            cipher_suite::TLS13_AES_128_GCM_SHA256,
        ],
        ..default_provider()
    };
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(t.addr(Smtps)).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(
            rustls_pki_types::ServerName::try_from("mx.example.test").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    let suite = tls.get_ref().1.negotiated_cipher_suite().unwrap().suite();
    assert_eq!(suite, rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
}

/// Maildir files are stored with LF line endings, as Postfix's local delivery, Dovecot
/// and mail readers store them; `S=` in the name is the size of the file, `W=` its size
/// with CRLF. `maildir_line_endings = "crlf"` keeps the wire form.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maildir_files_end_lines_in_lf_and_carry_their_sizes() {
    let body = b"Subject: sizes\r\n\r\nline one\r\n..dotted\r\n\r\nlast";
    for (local, crlf) in [("", false), ("maildir_line_endings = \"crlf\"", true)] {
        let t = TestMta::start_with(local, "").await;
        let mut c = t.connect(Relay).await;
        ehlo(&mut c).await;
        let code = send_data(&mut c, "a@far.test", &[&format!("bob@{DOMAIN}")], body).await;
        assert_eq!(code, "250 2.0.0");
        let mail = t.wait_for_mail("bob", 1).await;
        let stored = &mail[0];
        let name = std::fs::read_dir(t.new_dir("bob"))
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .file_name()
            .into_string()
            .unwrap();
        let lines = stored.iter().filter(|&&b| b == b'\n').count();
        let crlf_size = if crlf {
            stored.len()
        } else {
            stored.len() + lines
        };
        assert!(
            name.ends_with(&format!(",S={},W={crlf_size}", stored.len())),
            "{name} for {} bytes",
            stored.len()
        );
        let text = String::from_utf8_lossy(stored);
        if crlf {
            assert!(
                text.ends_with("\r\n\r\nline one\r\n.dotted\r\n\r\nlast\r\n"),
                "{text}"
            );
            assert_eq!(text.matches('\n').count(), text.matches("\r\n").count());
        } else {
            assert!(!text.contains('\r'), "{text:?}");
            assert!(
                text.starts_with("Return-Path: <a@far.test>\nDelivered-To: bob@"),
                "{text}"
            );
            assert!(text.ends_with("\n\nline one\n.dotted\n\nlast\n"), "{text}");
        }
    }
}

/// The header section of a delivered message, one field per line (unfolded).
fn header_fields(mail: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(mail).replace("\n\t", " ");
    let head = text.split("\n\n").next().unwrap_or_default().to_owned();
    head.lines().map(str::to_owned).collect()
}

/// Submitted mail without `Date:` or `Message-ID:` gets them (RFC 6409 §8), right above
/// the client's own fields; mail that has them keeps its own, and mail relayed from
/// outside is not changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submitted_mail_gets_date_and_message_id_relayed_mail_does_not() {
    let t = TestMta::start("").await;
    let mut c = t.connect_smtps().await;
    ehlo(&mut c).await;
    assert_eq!(c.code(AUTH_PLAIN_ALICE).await, "235 2.7.0");
    let bare = b"From: alice@example.test\r\nSubject: bare\r\n\r\nx";
    let full = b"From: alice@example.test\r\nDate: Tue, 1 Dec 2026 10:00:00 +0000\r\nMessage-ID: <own@example.test>\r\nSubject: full\r\n\r\nx";
    for body in [&bare[..], &full[..]] {
        let code = send_data(&mut c, "alice@example.test", &["bob@example.test"], body).await;
        assert_eq!(code, "250 2.0.0");
    }
    let mut relayed = t.connect(Relay).await;
    ehlo(&mut relayed).await;
    let code = send_data(&mut relayed, "a@far.test", &["bob@example.test"], bare).await;
    assert_eq!(code, "250 2.0.0");

    let mail = t.wait_for_mail("bob", 3).await;
    let heads: Vec<Vec<String>> = mail.iter().map(|m| header_fields(m)).collect();
    let count = |h: &[String], name: &str| h.iter().filter(|f| f.starts_with(name)).count();
    let by_subject = |s: &str| {
        heads
            .iter()
            .filter(|h| h.iter().any(|f| f == &format!("Subject: {s}")))
            .collect::<Vec<_>>()
    };
    let bare_heads = by_subject("bare");
    assert_eq!(bare_heads.len(), 2);
    let (submitted, from_outside): (Vec<_>, Vec<_>) = bare_heads
        .into_iter()
        .partition(|h| h.iter().any(|f| f.contains("with ESMTPSA")));
    let submitted = submitted[0];
    assert_eq!(count(submitted, "Date: "), 1, "{submitted:#?}");
    assert_eq!(count(submitted, "Message-ID: <"), 1, "{submitted:#?}");
    let from = submitted
        .iter()
        .position(|f| f.starts_with("From: "))
        .unwrap();
    let date = submitted
        .iter()
        .position(|f| f.starts_with("Date: "))
        .unwrap();
    let received = submitted
        .iter()
        .position(|f| f.starts_with("Received: "))
        .unwrap();
    assert!(received < date && date < from, "{submitted:#?}");
    let outside = from_outside[0];
    assert_eq!(count(outside, "Date: "), 0, "{outside:#?}");
    assert_eq!(count(outside, "Message-ID: "), 0, "{outside:#?}");
    let full = by_subject("full")[0];
    assert_eq!(count(full, "Date: "), 1, "{full:#?}");
    assert!(
        full.contains(&"Message-ID: <own@example.test>".to_owned()),
        "{full:#?}"
    );
    assert_eq!(count(full, "Message-ID: "), 1, "{full:#?}");
}

/// BDAT content meets the same line-ending policy as DATA (a bare-LF `.` line and a
/// second `MAIL FROM:` in a BDAT body were stored as they came), and NUL bytes, which
/// a next hop may drop and so see lines that were not there, are refused (`550 5.6.0`)
/// or, by policy, removed, in both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nul_bytes_and_bare_line_endings_in_bdat_meet_the_data_policy() {
    let bob = format!("bob@{DOMAIN}");
    let smuggle = format!(
        "Subject: s\r\n\r\nfirst\n.\nMAIL FROM:<smuggled@attacker.test>\r\nRCPT TO:<{bob}>\r\n"
    );
    let nul = "Subject: n\r\n\r\na\0b\r\n\0.\r\nend\r\n";
    async fn bdat(c: &mut RawClient, bob: &str, content: &str) -> String {
        envelope(c, "a@far.test", &[bob]).await;
        let (one, two) = content.split_at(content.len() / 2);
        c.send(format!("BDAT {}\r\n{one}", one.len()).as_bytes())
            .await;
        assert_eq!(code_of(&c.reply().await), "250 2.0.0");
        c.send(format!("BDAT {} LAST\r\n{two}", two.len()).as_bytes())
            .await;
        code_of(&c.reply().await)
    }

    let t = TestMta::start("").await;
    let mut c = t.connect(Relay).await;
    ehlo(&mut c).await;
    assert_eq!(bdat(&mut c, &bob, &smuggle).await, "550 5.6.11");
    assert_eq!(bdat(&mut c, &bob, nul).await, "550 5.6.0");
    let nul_in_data = send_data(&mut c, "a@far.test", &[&bob], nul.as_bytes()).await;
    assert_eq!(nul_in_data, "550 5.6.0");
    // Still in sync: the next message is fine.
    assert_eq!(
        bdat(&mut c, &bob, "Subject: ok\r\n\r\nok\r\n").await,
        "250 2.0.0"
    );
    let mail = t.wait_for_mail("bob", 1).await;
    assert_eq!(mail.len(), 1, "only the clean message");

    // By policy: bare line endings normalised and NUL bytes removed, in BDAT and DATA.
    let t = TestMta::start("[limits]\nbare_line_endings = \"normalize\"\nnul_bytes = \"remove\"\n")
        .await;
    let mut c = t.connect(Relay).await;
    ehlo(&mut c).await;
    assert_eq!(bdat(&mut c, &bob, &smuggle).await, "250 2.0.0");
    assert_eq!(bdat(&mut c, &bob, nul).await, "250 2.0.0");
    let nul_in_data = send_data(&mut c, "a@far.test", &[&bob], nul.as_bytes()).await;
    assert_eq!(nul_in_data, "250 2.0.0");
    let mail = t.wait_for_mail("bob", 3).await;
    let texts: Vec<String> = mail
        .iter()
        .map(|m| String::from_utf8_lossy(m).into_owned())
        .collect();
    let normalised = texts.iter().find(|m| m.contains("Subject: s")).unwrap();
    assert!(
        normalised.ends_with(
            "first\n.\nMAIL FROM:<smuggled@attacker.test>\nRCPT TO:<bob@example.test>\n"
        ),
        "{normalised:?}"
    );
    for m in texts.iter().filter(|m| m.contains("Subject: n")) {
        assert!(!m.contains('\0'), "{m:?}");
        assert!(m.contains("\n\nab\n"), "{m:?}");
    }
}

/// Slow clients held connections for ever: the timeouts restarted at every byte, so a
/// client sending one byte every few seconds was never dropped. A command must now be
/// whole within `command_timeout`, and content keep up `min_data_rate` once it has
/// fallen `data_timeout` behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off() {
    use std::time::Instant;
    let t = TestMta::start(
        "[limits]\ncommand_timeout = \"1s\"\ndata_timeout = \"1s\"\nmin_data_rate = 1000\n",
    )
    .await;
    // A command that trickles in, one byte every 300 ms: it would take 1.8 s.
    let mut c = t.connect(Relay).await;
    let start = Instant::now();
    let mut reply = None;
    for byte in b"NOOP\r\n" {
        c.send(std::slice::from_ref(byte)).await;
        reply = c.try_reply(Duration::from_millis(300)).await;
        if reply.is_some() {
            break;
        }
    }
    let reply = reply.expect("a reply");
    assert_eq!(code_of(&reply), "421 4.4.2", "{reply}");
    assert!(
        start.elapsed() < Duration::from_millis(1600),
        "{:?}",
        start.elapsed()
    );
    assert!(c.is_closed().await);

    // Content at 50 bytes a second, where 1000 are asked for.
    let mut c = t.connect(Relay).await;
    ehlo(&mut c).await;
    envelope(&mut c, "a@far.test", &[&format!("bob@{DOMAIN}")]).await;
    assert_eq!(c.code("DATA").await, "354");
    let start = Instant::now();
    let mut reply = None;
    while reply.is_none() && start.elapsed() < Duration::from_secs(5) {
        c.send(b"0123456789").await;
        reply = c.try_reply(Duration::from_millis(200)).await;
    }
    let reply = reply.expect("a timeout");
    assert_eq!(code_of(&reply), "421 4.4.2", "{reply}");
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );

    // Content that keeps up the rate is fine, however long it takes in all: 5000
    // bytes every 100 ms for 2 s (the timeout is 1 s).
    let mut c = t.connect(Relay).await;
    ehlo(&mut c).await;
    envelope(&mut c, "a@far.test", &[&format!("bob@{DOMAIN}")]).await;
    assert_eq!(c.code("DATA").await, "354");
    c.send(b"Subject: steady\r\n\r\n").await;
    for _ in 0..20 {
        c.send(&[b"x".repeat(4998), b"\r\n".to_vec()].concat())
            .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    c.send(b".\r\n").await;
    assert_eq!(code_of(&c.reply().await), "250 2.0.0");
}

/// A client could hold a connection for ever by sending NOOP (or RSET, VRFY, HELP)
/// just before each command timeout. Those commands now count as errors beyond
/// `max_junk_commands` since the last accepted message, and a session ends
/// `max_session_duration` after it began, in the middle of a NOOP loop too, but not in
/// the middle of a message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_end_however_busy_the_client_keeps_them() {
    use std::time::Instant;
    let t = TestMta::start(
        "[limits]\nmax_junk_commands = 3\nmax_errors = 2\nmax_session_duration = \"2s\"\ncommand_timeout = \"30s\"\n",
    )
    .await;
    // Junk: three answered, the fourth counted as the first error, the fifth closes.
    let mut c = t.connect(Relay).await;
    ehlo(&mut c).await;
    for command in ["NOOP", "RSET", "VRFY bob", "HELP"] {
        assert_eq!(c.cmd(command).await.code().as_u16() / 100, 2, "{command}");
    }
    assert_eq!(c.code("NOOP").await, "250 2.0.0");
    let closing = c.reply().await;
    assert_eq!(code_of(&closing), "421 4.7.0", "{closing}");
    assert!(c.is_closed().await);

    // An accepted message starts the count again.
    let mut c = t.connect(Relay).await;
    ehlo(&mut c).await;
    for _ in 0..3 {
        assert_eq!(c.code("NOOP").await, "250 2.0.0");
    }
    let code = send_data(
        &mut c,
        "a@far.test",
        &[&format!("bob@{DOMAIN}")],
        b"Subject: one\r\n\r\nx",
    )
    .await;
    assert_eq!(code, "250 2.0.0");
    for _ in 0..3 {
        assert_eq!(c.code("RSET").await, "250 2.0.0");
    }
    c.send(b"QUIT\r\n").await;

    // Waiting for a command ends with the session, long before the command timeout.
    let mut idle = t.connect(Relay).await;
    let start = Instant::now();
    ehlo(&mut idle).await;
    let reply = idle
        .try_reply(Duration::from_secs(10))
        .await
        .expect("a reply");
    assert_eq!(code_of(&reply), "421 4.4.2", "{reply}");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    assert!(idle.is_closed().await);

    // A client that keeps the session busy with EHLO (not junk) is let go on time.
    let mut busy = t.connect(Relay).await;
    let start = Instant::now();
    let reply = loop {
        let reply = busy.cmd("EHLO client.test").await;
        if reply.code().as_u16() != 250 {
            break reply;
        }
        assert!(start.elapsed() < Duration::from_secs(5), "never let go");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(code_of(&reply), "421 4.4.2", "{reply}");
    assert!(busy.is_closed().await);

    // A message whose content arrives across the session's end is taken; the next
    // command is refused.
    let mut slow = t.connect(Relay).await;
    ehlo(&mut slow).await;
    envelope(&mut slow, "a@far.test", &[&format!("carol@{DOMAIN}")]).await;
    assert_eq!(slow.code("DATA").await, "354");
    slow.send(b"Subject: across the end\r\n\r\n").await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    slow.send(b"still here\r\n.\r\n").await;
    assert_eq!(code_of(&slow.reply().await), "250 2.0.0");
    assert_eq!(slow.code("NOOP").await, "421 4.4.2");
    assert!(slow.is_closed().await);
    let carol = t.wait_for_mail("carol", 1).await;
    assert!(String::from_utf8_lossy(&carol[0]).contains("still here"));
}

/// A large message goes to a file as it arrives (its memory is a constant, not its
/// size), that file becomes its spool file, and it is delivered byte for byte, with
/// DATA and with BDAT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_messages_go_through_a_file_and_arrive_whole() {
    let t = TestMta::start("[limits]\nmax_message_memory = 65536\n").await;
    let mut body = b"Subject: large\r\n\r\n".to_vec();
    let mut n = 0;
    while body.len() < 3_000_000 {
        body.extend_from_slice(format!("..line {n:07} {}\r\n", "y".repeat(70)).as_bytes());
        n += 1;
    }
    let mut c = t.connect(Relay).await;
    ehlo(&mut c).await;
    let code = send_data(&mut c, "a@far.test", &[&format!("bob@{DOMAIN}")], &body).await;
    assert_eq!(code, "250 2.0.0");
    envelope(&mut c, "a@far.test", &[&format!("carol@{DOMAIN}")]).await;
    let (one, two) = body.split_at(1_234_567);
    for (chunk, last) in [(one, ""), (two, " LAST")] {
        c.send(format!("BDAT {}{last}\r\n", chunk.len()).as_bytes())
            .await;
        c.send(chunk).await;
        assert_eq!(code_of(&c.reply().await), "250 2.0.0");
    }
    // DATA took off the leading dots; BDAT kept them. Maildir stores LF.
    let unstuffed = String::from_utf8(body.clone())
        .unwrap()
        .replace("\r\n..", "\r\n.");
    let expected_data = format!("{unstuffed}\r\n").replace("\r\n", "\n");
    let expected_bdat = String::from_utf8(body).unwrap().replace("\r\n", "\n");
    let bob = t.wait_for_mail("bob", 1).await;
    assert!(bob[0].ends_with(expected_data.as_bytes()), "DATA content");
    let carol = t.wait_for_mail("carol", 1).await;
    assert!(carol[0].ends_with(expected_bdat.as_bytes()), "BDAT content");
    let stats = t.mta.as_ref().unwrap().server_stats();
    let spilled = stats
        .messages_spilled
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(spilled, 2, "both went through a file");
    let incoming = t.dir.path().join("queue/incoming");
    assert_eq!(
        std::fs::read_dir(incoming).unwrap().count(),
        0,
        "no file left behind"
    );
}
