//! Local delivery over LMTP (RFC 2033) to Postfix's `smtp-sink -L`, an LMTP server
//! nobody here wrote, which dumps every transaction with its envelope.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use mta_tests::{DOMAIN, TestMta, code_of};
use smtp_server::ListenerMode::Relay;

fn smtp_sink() -> Option<&'static str> {
    let path = ["/usr/sbin/smtp-sink", "/usr/bin/smtp-sink"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists());
    if path.is_none() {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("smtp-sink is required under CI=true (.ci/run installs postfix)");
        }
        eprintln!("skipping: smtp-sink (from the postfix package) not found");
    }
    path
}

/// smtp-sink listening on `listen` (`127.0.0.1:port` or `unix:/path`), dumping each
/// transaction into `dumps`; waits until it takes connections.
async fn start_sink(sink: &str, listen: &str, dumps: &std::path::Path) -> tokio::process::Child {
    let template = format!("{}/%H%M%S.", dumps.display());
    let child = tokio::process::Command::new(sink)
        .args(["-L", "-u", "nobody", "-d", &template, listen, "100"])
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let start = Instant::now();
    loop {
        let up = match listen.strip_prefix("unix:") {
            Some(path) => tokio::net::UnixStream::connect(path).await.is_ok(),
            None => tokio::net::TcpStream::connect(listen).await.is_ok(),
        };
        if up {
            return child;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "smtp-sink did not start"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Over TCP, and over a Unix socket (Dovecot's default, `unix:/run/dovecot/lmtp`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_mail_goes_to_an_lmtp_server() {
    let Some(sink) = smtp_sink() else { return };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let sockets = tempfile::tempdir().unwrap();
    let socket = sockets.path().join("lmtp");
    for listen in [
        format!("127.0.0.1:{port}"),
        format!("unix:{}", socket.display()),
    ] {
        deliver_over_lmtp(sink, &listen).await;
    }
}

async fn deliver_over_lmtp(sink: &str, listen: &str) {
    let dumps = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dumps.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let mut child = start_sink(sink, listen, dumps.path()).await;
    let t = TestMta::start_with(&format!("lmtp = \"{listen}\""), "").await;
    let mut c = t.connect(Relay).await;
    assert_eq!(c.cmd("EHLO client.test").await.code().as_u16(), 250);
    assert_eq!(c.code("MAIL FROM:<sender@remote.test>").await, "250 2.1.0");
    for user in ["bob", "carol"] {
        assert_eq!(
            c.code(&format!("RCPT TO:<{user}@{DOMAIN}>")).await,
            "250 2.1.5"
        );
    }
    assert_eq!(c.code("DATA").await, "354");
    c.send(b"Subject: over lmtp\r\n\r\nhello\r\n..dot\r\n.\r\n")
        .await;
    assert_eq!(code_of(&c.reply().await), "250 2.0.0");

    // Delivered once, with both recipients in one LMTP transaction, and the queue empties.
    let start = Instant::now();
    let dump = loop {
        let files: Vec<_> = std::fs::read_dir(dumps.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .collect();
        if let Some(f) = files.first() {
            let text = std::fs::read_to_string(f.path()).unwrap();
            if text.contains("\n.dot") || start.elapsed() > Duration::from_secs(10) {
                break text;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "nothing reached the LMTP server"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(dump.contains("X-Client-Proto: LMTP"), "{dump}");
    assert!(dump.contains("X-Mail-Args: <sender@remote.test>"), "{dump}");
    assert!(
        dump.contains(&format!("X-Rcpt-Args: <bob@{DOMAIN}>"))
            && dump.contains(&format!("X-Rcpt-Args: <carol@{DOMAIN}>")),
        "{dump}"
    );
    assert!(
        dump.contains("Subject: over lmtp\n\nhello\n.dot\n")
            || dump.contains("Subject: over lmtp\r\n\r\nhello\r\n.dot\r\n"),
        "{dump}"
    );
    let queue = t.mta.as_ref().unwrap().queue().clone();
    let start = Instant::now();
    while !queue.is_empty() && start.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        queue.is_empty(),
        "every LMTP recipient reply was 250: nothing left to retry"
    );
    let _ = child.kill().await;
}
