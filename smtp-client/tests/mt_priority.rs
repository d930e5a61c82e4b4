//! `MT-PRIORITY` (RFC 6710 §4.1) on the way out: passed on to a server that offers it,
//! dropped for one that does not. The servers are scripted on 127.0.0.1 and record the
//! MAIL command they get.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::IpAddr;

use smtp_client::{OutboundConfig, OutboundMessage, Session, TlsConfigs, TlsPolicy};
use smtp_proto::{ForwardPath, MailParameters, RcptParameters, ReversePath};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// A server whose EHLO reply is `ehlo` and that accepts one message; returns the MAIL
/// command line it received.
async fn server(ehlo: &'static str) -> (u16, tokio::task::JoinHandle<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let handle = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let (read, mut write) = tcp.into_split();
        let mut read = BufReader::new(read);
        let mut mail = String::new();
        write.write_all(b"220 server.test\r\n").await.unwrap();
        loop {
            let mut line = String::new();
            if read.read_line(&mut line).await.unwrap_or(0) == 0 {
                return mail;
            }
            let line = line.trim_end().to_owned();
            let verb = line.split(' ').next().unwrap_or("").to_ascii_uppercase();
            let reply = match verb.as_str() {
                "EHLO" => ehlo,
                "MAIL" => {
                    mail.clone_from(&line);
                    "250 2.1.0 ok\r\n"
                }
                "DATA" => {
                    write.write_all(b"354 go\r\n").await.unwrap();
                    let mut body = String::new();
                    while !body.ends_with("\r\n.\r\n") {
                        if read.read_line(&mut body).await.unwrap_or(0) == 0 {
                            return mail;
                        }
                    }
                    "250 2.0.0 queued\r\n"
                }
                "QUIT" => {
                    write.write_all(b"221 bye\r\n").await.unwrap();
                    return mail;
                }
                _ => "250 ok\r\n",
            };
            write.write_all(reply.as_bytes()).await.unwrap();
        }
    });
    (port, handle)
}

/// Delivers a message with `MT-PRIORITY=6` to the server on `port`; the MAIL line the
/// server saw.
async fn deliver(port: u16, server: tokio::task::JoinHandle<String>) -> String {
    let mut config = OutboundConfig::new("client.test", TlsConfigs::new(Vec::new()).unwrap());
    config.port = port;
    config.tls = TlsPolicy::Disabled;
    let localhost = [IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)];
    let mut session = Session::open("server.test", &localhost, &config)
        .await
        .unwrap();
    let message = OutboundMessage {
        from: ReversePath::parse("<a@client.test>").unwrap(),
        params: MailParameters {
            mt_priority: Some(6),
            ..MailParameters::default()
        },
        recipients: vec![(
            ForwardPath::parse("<b@server.test>").unwrap(),
            RcptParameters::default(),
        )],
        body: b"Subject: x\r\n\r\nhi\r\n".to_vec().into(),
    };
    let replies = session.deliver(&message).await.unwrap();
    assert_eq!(replies[0].code().as_u16(), 250);
    session.quit().await;
    server.await.unwrap()
}

#[tokio::test]
async fn passed_on_to_a_server_that_offers_it() {
    let (port, server) = server("250-server.test\r\n250 MT-PRIORITY MIXER\r\n").await;
    assert_eq!(
        deliver(port, server).await,
        "MAIL FROM:<a@client.test> MT-PRIORITY=6"
    );
}

#[tokio::test]
async fn dropped_for_a_server_that_does_not() {
    let (port, server) = server("250-server.test\r\n250 8BITMIME\r\n").await;
    assert_eq!(deliver(port, server).await, "MAIL FROM:<a@client.test>");
}
