//! The short path: one message to a server named by host and port.
//!
//! ```sh
//! cargo run -p smtp-client --example send -- localhost:2525 me@example.test you@example.test
//! ```
//!
//! (`mta serve` with no configuration listens on 127.0.0.1:2525 and takes mail for
//! `localhost`.) Prints the server's reply for each recipient.

#![allow(clippy::print_stdout)] // an example reports on the terminal

use smtp_client::Mailer;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: send SERVER FROM TO...";
    let server = args.next().ok_or(usage)?;
    let from = args.next().ok_or(usage)?;
    let to: Vec<String> = args.collect();
    let to: Vec<&str> = to.iter().map(String::as_str).collect();
    let message = format!(
        "From: {from}\r\nTo: {}\r\nSubject: sent by smtp-client\r\n\r\nHello.\r\n",
        to.join(", ")
    );
    let replies = Mailer::new(&server).send(&from, &to, message).await?;
    for (rcpt, reply) in to.iter().zip(replies) {
        println!("{rcpt}: {reply}");
    }
    Ok(())
}
