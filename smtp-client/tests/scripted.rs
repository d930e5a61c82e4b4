//! The client against scripted servers on 127.0.0.1: the client cases of
//! `scenarios.yaml` that are decisions of this crate (greeting 421, HELO fallback,
//! STARTTLS 454, a drop after the dot, a refused BDAT chunk, malformed replies).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::IpAddr;

use smtp_client::{ClientError, OutboundConfig, OutboundMessage, Session, TlsConfigs, TlsPolicy};
use smtp_proto::{ForwardPath, MailParameters, RcptParameters, ReversePath};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// A server that answers each command with the reply `script` gives for its verb
/// (`None`: close the connection), reads DATA content to the final dot and BDAT
/// chunks by size, and records the command lines.
async fn scripted(
    greeting: &'static str,
    script: fn(&str) -> Option<&'static str>,
) -> (u16, tokio::task::JoinHandle<Vec<String>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let handle = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let (read, mut write) = tcp.into_split();
        let mut read = BufReader::new(read);
        let mut seen = Vec::new();
        write.write_all(greeting.as_bytes()).await.unwrap();
        loop {
            let mut line = String::new();
            if read.read_line(&mut line).await.unwrap_or(0) == 0 {
                return seen;
            }
            let line = line.trim_end().to_owned();
            let verb = line.split(' ').next().unwrap_or("").to_ascii_uppercase();
            seen.push(line.clone());
            if verb == "BDAT" {
                let size: usize = line.split(' ').nth(1).unwrap().parse().unwrap();
                let mut chunk = vec![0; size];
                read.read_exact(&mut chunk).await.unwrap();
            }
            let Some(reply) = script(&verb) else {
                return seen;
            };
            write.write_all(reply.as_bytes()).await.unwrap();
            if verb == "DATA" && reply.starts_with("354") {
                let mut body = String::new();
                while !body.ends_with("\r\n.\r\n") {
                    let mut l = String::new();
                    if read.read_line(&mut l).await.unwrap_or(0) == 0 {
                        return seen;
                    }
                    body.push_str(&l);
                }
                seen.push("<body>".into());
                let Some(reply) = script("<BODY>") else {
                    return seen;
                };
                write.write_all(reply.as_bytes()).await.unwrap();
            }
        }
    });
    (port, handle)
}

fn config(port: u16, tls: TlsPolicy) -> OutboundConfig {
    let mut c = OutboundConfig::new("client.test", TlsConfigs::new(Vec::new()).unwrap());
    c.port = port;
    c.tls = tls;
    c
}

fn message(body: &str) -> OutboundMessage {
    OutboundMessage {
        from: ReversePath::parse("<a@client.test>").unwrap(),
        params: MailParameters::default(),
        recipients: vec![(
            ForwardPath::parse("<b@server.test>").unwrap(),
            RcptParameters::default(),
        )],
        body: body.as_bytes().to_vec().into(),
    }
}

const LOCALHOST: [IpAddr; 1] = [IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)];

#[tokio::test]
async fn greeting_421_is_a_temporary_failure() {
    let (port, _) = scripted("421 4.3.2 busy\r\n", |_| Some("221 bye\r\n")).await;
    let err = Session::open(
        "server.test",
        &LOCALHOST,
        &config(port, TlsPolicy::Opportunistic),
    )
    .await
    .unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert_eq!(err.reply().code().as_u16(), 421);
}

/// A session to the scripted server on `port` (opportunistic TLS).
async fn open(port: u16) -> Session {
    Session::open(
        "server.test",
        &LOCALHOST,
        &config(port, TlsPolicy::Opportunistic),
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn ehlo_refused_falls_back_to_helo() {
    let (port, server) = scripted("220 old\r\n", |verb| match verb {
        "EHLO" => Some("502 5.5.1 what?\r\n"),
        "DATA" => Some("354 go\r\n"),
        "QUIT" => Some("221 bye\r\n"),
        _ => Some("250 ok\r\n"),
    })
    .await;
    let mut s = open(port).await;
    let replies = s
        .deliver(&message("Subject: x\r\n\r\nhi\r\n"))
        .await
        .unwrap();
    assert_eq!(replies[0].code().as_u16(), 250);
    s.quit().await;
    let seen = server.await.unwrap();
    assert_eq!(seen[..2], ["EHLO client.test", "HELO client.test"]);
    assert_eq!(
        seen[2], "MAIL FROM:<a@client.test>",
        "no ESMTP parameters after HELO"
    );
}

#[tokio::test]
async fn starttls_454_continues_in_plaintext_unless_required() {
    fn script(verb: &str) -> Option<&'static str> {
        match verb {
            "EHLO" => Some("250-server\r\n250 STARTTLS\r\n"),
            "STARTTLS" => Some("454 4.7.0 TLS not available\r\n"),
            "DATA" => Some("354 go\r\n"),
            _ => Some("250 ok\r\n"),
        }
    }
    let (port, _) = scripted("220 hi\r\n", script).await;
    let mut s = open(port).await;
    assert!(!s.is_tls());
    assert_eq!(
        s.deliver(&message("x\r\n")).await.unwrap()[0]
            .code()
            .as_u16(),
        250
    );

    let (port, server) = scripted("220 hi\r\n", script).await;
    let err = Session::open(
        "server.test",
        &LOCALHOST,
        &config(port, TlsPolicy::Required),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, ClientError::Tls { .. }) && err.is_transient(),
        "{err}"
    );
    assert!(
        !server.await.unwrap().iter().any(|l| l.starts_with("MAIL")),
        "nothing sent in plaintext"
    );
}

#[tokio::test]
async fn a_drop_after_the_dot_is_not_a_delivery() {
    let (port, _) = scripted("220 hi\r\n", |verb| match verb {
        "EHLO" => Some("250 server\r\n"),
        "DATA" => Some("354 go\r\n"),
        "<BODY>" => None,
        _ => Some("250 ok\r\n"),
    })
    .await;
    let mut s = open(port).await;
    let err = s.deliver(&message("x\r\n")).await.unwrap_err();
    assert!(
        err.is_transient(),
        "deferred (a duplicate later is allowed, a loss is not): {err}"
    );
}

#[tokio::test]
async fn a_refused_bdat_chunk_is_temporary() {
    let (port, server) = scripted("220 hi\r\n", |verb| match verb {
        "EHLO" => Some("250-server\r\n250-PIPELINING\r\n250 CHUNKING\r\n"),
        "BDAT" => Some("452 4.3.1 out of space\r\n"),
        _ => Some("250 ok\r\n"),
    })
    .await;
    let mut s = open(port).await;
    let replies = s
        .deliver(&message("Subject: x\r\n\r\nhi\r\n"))
        .await
        .unwrap();
    assert_eq!(replies[0].code().as_u16(), 452);
    assert!(replies[0].is_transient());
    s.quit().await;
    assert!(server.await.unwrap().iter().any(|l| l == "BDAT 18 LAST"));
}

#[tokio::test]
async fn malformed_and_oversized_replies_are_temporary_failures() {
    let (port, _) = scripted("25O not a code\r\n", |_| Some("250 ok\r\n")).await;
    let err = Session::open(
        "server.test",
        &LOCALHOST,
        &config(port, TlsPolicy::Opportunistic),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, ClientError::Protocol(_)) && err.is_transient(),
        "{err}"
    );
    // A server that declares a size limit gets no larger message.
    let (port, server) = scripted("220 hi\r\n", |verb| match verb {
        "EHLO" => Some("250-server\r\n250 SIZE 10\r\n"),
        _ => Some("250 ok\r\n"),
    })
    .await;
    let mut s = open(port).await;
    let replies = s
        .deliver(&message("this body is longer than ten octets\r\n"))
        .await
        .unwrap();
    assert_eq!(
        (
            replies[0].code().as_u16(),
            replies[0].status().map(|s| s.to_string())
        ),
        (552, Some("5.3.4".into()))
    );
    s.quit().await;
    assert!(
        !server.await.unwrap().iter().any(|l| l.starts_with("MAIL")),
        "not sent"
    );
}
