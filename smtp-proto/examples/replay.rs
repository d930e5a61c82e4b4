//! Replays the client side of an SMTP transcript against a `ServerSession` that
//! accepts everything, and prints the dialogue.
//!
//! ```sh
//! cargo run -p smtp-proto --example replay                 # a built-in transcript
//! cargo run -p smtp-proto --example replay -- session.txt  # raw client bytes from a file
//! ```
//!
//! The file holds what a client sends, CRLF line endings included (a capture of one
//! direction of a session, such as the ProFuzzBench seeds). Lines are fed one at a
//! time, so each `S:` line appears right after the command it answers.

#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::sync::Arc;

use smtp_proto::{Event, ServerConfig, ServerSession};

const DEFAULT: &[u8] = b"EHLO client.example\r\n\
MAIL FROM:<alice@client.example> SIZE=120\r\n\
RCPT TO:<bob@localhost>\r\n\
RCPT TO:<carol@localhost> NOTIFY=FAILURE\r\n\
DATA\r\n\
Subject: hello\r\n\
\r\n\
..a line that starts with a dot\r\n\
.\r\n\
MAIL FROM:<alice@client.example>\r\n\
RCPT TO:<bob@localhost>\r\n\
BDAT 5 LAST\r\n\
Hi!\r\n\
VRFY bob\r\n\
QUIT\r\n";

fn main() {
    let transcript = match std::env::args().nth(1) {
        Some(path) => match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) => {
                eprintln!("cannot read {path}: {e}");
                std::process::exit(2);
            }
        },
        None => DEFAULT.to_vec(),
    };
    let mut session = ServerSession::new(Arc::new(ServerConfig::default()));
    drive(&mut session);
    for line in transcript.split_inclusive(|&b| b == b'\n') {
        if session.is_closed() {
            break;
        }
        println!("C: {}", printable(line));
        session.receive(line);
        drive(&mut session);
    }
}

/// Accepts every event and prints what the server sends.
fn drive(session: &mut ServerSession) {
    while let Some(event) = session.poll_event() {
        match &event {
            Event::Message { envelope, body } => println!(
                "   [message from {} to {} recipient(s), {} bytes]",
                envelope.from,
                envelope.recipients.len(),
                body.len()
            ),
            Event::StartTls => println!("   [TLS handshake would start here]"),
            _ => {}
        }
        session.accept();
    }
    for line in session.pending_output().split_inclusive(|&b| b == b'\n') {
        println!("S: {}", printable(line));
    }
    let n = session.pending_output().len();
    session.consume_output(n);
}

fn printable(line: &[u8]) -> String {
    String::from_utf8_lossy(line.strip_suffix(b"\r\n").unwrap_or(line))
        .escape_debug()
        .to_string()
}
