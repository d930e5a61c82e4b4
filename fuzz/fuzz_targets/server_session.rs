//! `ServerSession` fed client bytes in arbitrary pieces (layout: `common/split.rs`).
//!
//! `flags`: which events are refused. Events are numbered from 0 (the `Connect`);
//! event `i` gets `550 5.1.1` when bit `i % 8` of `flags` is set, `accept()` otherwise.
//! `Event::StartTls` is answered with `tls_established()`. The seeds made by `seed.sh`
//! start with `\x00\x00`: accept everything, one piece.
//!
//! Properties:
//! - never panics;
//! - the pending output stays bounded: under 4 MiB, and under 4 KiB + 256 bytes per
//!   input byte of the round (it is consumed after every round);
//! - everything the server writes is a sequence of well-formed replies (a client's
//!   `ReplyParser`, without length limits, reads it without error), and no reply line
//!   is longer than 512 octets, CRLF included (RFC 5321 §4.5.3.1.5);
//! - a `Message` event never carries more than `max_message_size` bytes;
//! - after a read timeout the session is closed and its last reply is `421`.
#![no_main]

#[allow(dead_code)]
#[path = "../common/split.rs"]
mod split;

use std::sync::{Arc, LazyLock};

use libfuzzer_sys::fuzz_target;
use smtp_proto::{
    EnhancedStatus, Event, Extensions, Mechanism, Reply, ReplyCode, ReplyLimits, ReplyParser,
    ServerConfig, ServerSession,
};

const MAX_MESSAGE_SIZE: u64 = 100_000;
const MAX_OUTPUT: usize = 4 << 20;
/// RFC 5321 §4.5.3.1.5: the longest reply line, code and CRLF included.
const MAX_REPLY_LINE: usize = 512;

static CONFIG: LazyLock<Arc<ServerConfig>> = LazyLock::new(|| {
    Arc::new(ServerConfig {
        extensions: Extensions {
            auth: vec![Mechanism::Plain, Mechanism::Login],
            starttls: true,
            ..Default::default()
        },
        allow_plaintext_auth: true,
        max_message_size: MAX_MESSAGE_SIZE,
        ..Default::default()
    })
});

struct Harness {
    session: ServerSession,
    /// Reads everything the server wrote, as a client would.
    replies: ReplyParser,
    reject_mask: u8,
    events: usize,
}

impl Harness {
    fn answer_events(&mut self) {
        while let Some(event) = self.session.poll_event() {
            let refuse = self.reject_mask & (1 << (self.events % 8)) != 0;
            self.events += 1;
            match event {
                Event::StartTls => {
                    self.session.tls_established();
                    continue;
                }
                Event::Message { ref body, .. } => {
                    assert!(
                        body.len() as u64 <= MAX_MESSAGE_SIZE,
                        "message of {} bytes over the limit",
                        body.len()
                    );
                }
                _ => {}
            }
            if refuse {
                self.session.respond(Reply::new(
                    ReplyCode::MAILBOX_UNAVAILABLE,
                    EnhancedStatus::BAD_DESTINATION_MAILBOX,
                    "Refused by the fuzzer",
                ));
            } else {
                self.session.accept();
            }
        }
    }

    fn take_output(&mut self, input_len: usize) {
        let pending = self.session.pending_output();
        assert!(
            pending.len() < MAX_OUTPUT,
            "{} bytes of pending output",
            pending.len()
        );
        assert!(
            pending.len() <= 4096 + 256 * input_len,
            "{} bytes of output for {input_len} bytes of input",
            pending.len()
        );
        for line in pending.split_inclusive(|&b| b == b'\n') {
            assert!(
                line.len() <= MAX_REPLY_LINE,
                "reply line of {} octets: {:?}...",
                line.len(),
                String::from_utf8_lossy(&line[..80])
            );
        }
        self.replies.push(pending);
        while let Some(reply) = self.replies.next_reply() {
            if let Err(e) = reply {
                panic!("the server wrote a malformed reply: {e:?}");
            }
        }
        let n = pending.len();
        self.session.consume_output(n);
        assert!(self.session.pending_output().is_empty());
    }
}

fuzz_target!(|data: &[u8]| {
    let input = split::Split::new(data);
    let mut h = Harness {
        session: ServerSession::new(Arc::clone(&CONFIG)),
        replies: ReplyParser::new(ReplyLimits {
            max_line: usize::MAX,
            max_lines: usize::MAX,
        }),
        reject_mask: input.flags,
        events: 0,
    };
    h.answer_events();
    h.take_output(0);
    for piece in input.chunks() {
        if h.session.is_closed() {
            break;
        }
        h.session.receive(piece);
        h.answer_events();
        h.take_output(piece.len());
    }
    if !h.session.is_closed() {
        h.session.timeout();
        assert!(h.session.is_closed(), "still open after a timeout");
        let out = h.session.pending_output();
        assert!(
            out.starts_with(b"421 "),
            "timeout without 421: {:?}",
            String::from_utf8_lossy(out)
        );
        h.take_output(0);
        assert_eq!(h.session.poll_event(), None, "event after close");
    }
    assert!(
        h.replies.buffered() == 0,
        "the server output ends in a partial reply line"
    );
});
