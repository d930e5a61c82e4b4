//! `Connection`: the protocol over any stream, here LMTP (RFC 2033) over a Unix socket,
//! as to Dovecot: one reply per recipient after the data.
//!
//! ```sh
//! cargo run -p smtp-client --example connection -- /run/dovecot/lmtp you@example.test
//! ```

#![allow(clippy::print_stdout)] // an example reports on the terminal

use smtp_client::{Connection, Timeouts};
use smtp_proto::{
    ClientConfig, ForwardPath, HeloName, MailParameters, MailTransaction, RcptParameters,
    ReversePath,
};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [socket, to] = &args[..] else {
        return Err("usage: connection SOCKET TO".into());
    };
    let stream = tokio::net::UnixStream::connect(socket).await?;
    let config = ClientConfig {
        lmtp: true,
        ..ClientConfig::default()
    };
    let mut conn = Connection::open(stream, config, Timeouts::default()).await?;
    conn.hello(HeloName::parse("client.example.test").ok_or("bad name")?)
        .await?;
    let transaction = MailTransaction {
        from: ReversePath::parse("<postmaster@example.test>")?,
        params: MailParameters::default(),
        recipients: vec![(
            ForwardPath::parse(&format!("<{to}>"))?,
            RcptParameters::default(),
        )],
    };
    let result = conn
        .send(transaction, b"Subject: hi\r\n\r\nDelivered over LMTP.\r\n")
        .await?;
    println!("{to}: {}", result.recipients[0]);
    conn.quit().await;
    Ok(())
}
