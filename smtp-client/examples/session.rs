//! `Session`: delivery to one host of a domain, as an MTA does it: the host's addresses
//! in turn, STARTTLS by policy, the message checked against what the server offers.
//! Look the MX hosts up first (the `dns-mx` crate); here the host and its addresses
//! come from the command line.
//!
//! ```sh
//! cargo run -p smtp-client --example session -- localhost 127.0.0.1 2525 you@localhost
//! ```

#![allow(clippy::print_stdout)] // an example reports on the terminal

use std::net::IpAddr;

use smtp_client::{OutboundConfig, OutboundMessage, Session, TlsConfigs, TlsPolicy};
use smtp_proto::{ForwardPath, MailParameters, RcptParameters, ReversePath};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [host, address, port, to] = &args[..] else {
        return Err("usage: session HOST ADDRESS PORT TO".into());
    };
    let addresses: Vec<IpAddr> = vec![address.parse()?];
    // The system's roots, for the hosts whose certificates are checked.
    let mut config = OutboundConfig::new("client.example.test", TlsConfigs::new(Vec::new())?);
    config.port = port.parse()?;
    config.tls = TlsPolicy::Opportunistic;
    let message = OutboundMessage {
        from: ReversePath::Null,
        params: MailParameters::default(),
        recipients: vec![(
            ForwardPath::parse(&format!("<{to}>"))?,
            RcptParameters::default(),
        )],
        body: "Subject: a notice\r\n\r\nSent with smtp_client::Session.\r\n".into(),
    };
    let mut session = Session::open(host, &addresses, &config).await?;
    println!(
        "connected to {} (TLS: {})",
        session.address(),
        session.is_tls()
    );
    let replies = session.deliver(&message).await?;
    println!("{to}: {}", replies[0]);
    session.quit().await;
    Ok(())
}
