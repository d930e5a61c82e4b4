//! smtp-client's short path, `Mailer`, against the whole MTA: a server named by host and
//! port, STARTTLS required with only the test CA trusted, and a login on submission.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use mta_tests::{DOMAIN, TestMta};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use smtp_client::{ClientError, Mailer, TlsPolicy};
use smtp_server::ListenerMode::{Relay, Submission};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mailer_sends_over_verified_tls_and_logs_in() {
    let t = TestMta::start("").await;
    let ca = CertificateDer::from_pem_slice(t.pki.ca_pem.as_bytes()).unwrap();
    let bob = format!("bob@{DOMAIN}");

    // The relay listener, by name (the certificate is for localhost), TLS required.
    let relay = format!("localhost:{}", t.addr(Relay).port());
    let replies = Mailer::new(&relay)
        .helo("client.test")
        .tls(TlsPolicy::Required)
        .trust(vec![ca.clone()])
        .without_system_roots()
        .send(
            "someone@client.test",
            &[&bob],
            "Subject: one\r\n\r\nHello\r\n",
        )
        .await
        .unwrap();
    assert_eq!(replies.len(), 1);
    assert!(
        replies[0]
            .to_string()
            .starts_with("250 2.0.0 Ok: queued as"),
        "{}",
        replies[0]
    );

    // Submission with a login; a wrong password is refused before any mail is sent.
    let submission = format!("localhost:{}", t.addr(Submission).port());
    let alice = |password: &'static str| {
        Mailer::new(&submission)
            .trust(vec![ca.clone()])
            .without_system_roots()
            .login("alice@example.test", password)
    };
    let sent = alice("secret")
        .send(
            "alice@example.test",
            &[&bob],
            "Subject: two\r\n\r\nHello\r\n",
        )
        .await
        .unwrap();
    assert!(sent[0].is_positive_completion(), "{}", sent[0]);
    let refused = alice("wrong")
        .send(
            "alice@example.test",
            &[&bob],
            "Subject: three\r\n\r\nHello\r\n",
        )
        .await;
    assert!(matches!(refused, Err(ClientError::Auth(_))), "{refused:?}");

    // Without the test CA, a required TLS cannot verify the server: nothing is sent.
    let unverified = Mailer::new(&relay)
        .tls(TlsPolicy::Required)
        .without_system_roots()
        .send(
            "someone@client.test",
            &[&bob],
            "Subject: four\r\n\r\nHello\r\n",
        )
        .await;
    assert!(
        matches!(unverified, Err(ClientError::Tls { .. })),
        "{unverified:?}"
    );

    let mail = t.wait_for_mail("bob", 2).await;
    assert_eq!(mail.len(), 2);
    let subjects: Vec<bool> = ["Subject: one", "Subject: two"]
        .iter()
        .map(|s| mail.iter().any(|m| String::from_utf8_lossy(m).contains(s)))
        .collect();
    assert_eq!(subjects, [true, true]);
}
