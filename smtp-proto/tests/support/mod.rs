//! Test support: a server session driven by a small fixed policy, collecting replies,
//! events and delivered messages.
#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stderr
)]

use std::sync::Arc;

use smtp_proto::{
    EnhancedStatus, Envelope, Event, ForwardPath, Reply, ReplyCode, ReplyParser, ServerConfig,
    ServerSession,
};

/// The local domain of the test policy.
pub const LOCAL_DOMAIN: &str = "ours.test";

/// The policy every test server uses: recipients whose local part starts with `nouser`
/// or `nobody` do not exist, other domains than ours are relay-denied, `alice`/`secret`
/// is the only login.
pub fn policy(event: &Event) -> Option<Reply> {
    match event {
        Event::Rcpt {
            to: ForwardPath::Mailbox(m),
            ..
        } => {
            if !m.domain().eq_ignore_ascii_case(LOCAL_DOMAIN) && m.domain() != "localhost" {
                Some(Reply::new(
                    ReplyCode::TRANSACTION_FAILED,
                    EnhancedStatus::NOT_AUTHORIZED,
                    "Relay access denied",
                ))
            } else if m.local_part().starts_with("nouser") || m.local_part().starts_with("nobody") {
                Some(Reply::new(
                    ReplyCode::MAILBOX_UNAVAILABLE,
                    EnhancedStatus::BAD_DESTINATION_MAILBOX,
                    "No such user",
                ))
            } else {
                None
            }
        }
        Event::Auth(c) if c.username != "alice" || c.password.expose() != "secret" => {
            Some(Reply::new(
                ReplyCode::AUTH_INVALID,
                EnhancedStatus::AUTH_INVALID,
                "Authentication credentials invalid",
            ))
        }
        _ => None,
    }
}

/// A session with the test policy around it.
pub struct Harness {
    pub session: ServerSession,
    pub events: Vec<Event>,
    pub messages: Vec<(Envelope, Vec<u8>)>,
    /// Every byte the server wrote.
    pub output: Vec<u8>,
    /// How many STARTTLS handshakes the harness pretended to complete.
    pub handshakes: usize,
    /// The most output pending at any one time.
    pub max_pending_output: usize,
    /// The most input buffered at any one time.
    pub max_buffered_input: usize,
}

impl Harness {
    /// A session that has sent its greeting.
    pub fn new(config: ServerConfig) -> Self {
        let mut h = Self::unstarted(config);
        h.drive();
        h
    }

    /// A session before its first `poll_event`: the greeting has not been sent.
    pub fn unstarted(config: ServerConfig) -> Self {
        Self {
            session: ServerSession::new(Arc::new(config)),
            events: Vec::new(),
            messages: Vec::new(),
            output: Vec::new(),
            handshakes: 0,
            max_pending_output: 0,
            max_buffered_input: 0,
        }
    }

    /// A session that pretends TLS is up from the first byte.
    pub fn new_tls(config: ServerConfig) -> Self {
        let mut h = Self::unstarted(config);
        h.session = ServerSession::new(Arc::new(h.session.config().clone())).with_implicit_tls();
        h.drive();
        h
    }

    /// Feeds bytes in one piece and answers every event.
    pub fn send(&mut self, bytes: &[u8]) {
        self.session.receive(bytes);
        self.max_buffered_input = self.max_buffered_input.max(self.session.buffered_input());
        self.drive();
    }

    /// Feeds bytes in pieces of `chunk` bytes.
    pub fn send_chunked(&mut self, bytes: &[u8], chunk: usize) {
        for piece in bytes.chunks(chunk.max(1)) {
            self.send(piece);
        }
    }

    /// Answers events with the policy until the session needs input.
    pub fn drive(&mut self) {
        while let Some(event) = self.session.poll_event() {
            self.events.push(event.clone());
            match (&event, policy(&event)) {
                (Event::StartTls, _) => {
                    self.flush();
                    self.session.tls_established();
                    self.handshakes += 1;
                }
                (Event::Message { envelope, body }, None) => {
                    self.messages.push((envelope.clone(), body.clone()));
                    self.session.accept();
                }
                (_, Some(reply)) => self.session.respond(reply),
                (_, None) => self.session.accept(),
            }
        }
        self.flush();
    }

    fn flush(&mut self) {
        let pending = self.session.pending_output();
        for line in pending.split_inclusive(|&b| b == b'\n') {
            // RFC 5321 §4.5.3.1.5: a reply line is at most 512 octets, CRLF included.
            assert!(
                line.len() <= 512,
                "reply line of {} octets: {:?}",
                line.len(),
                String::from_utf8_lossy(line)
            );
        }
        self.max_pending_output = self.max_pending_output.max(pending.len());
        self.output.extend_from_slice(pending);
        let n = pending.len();
        self.session.consume_output(n);
    }

    /// Every reply the server sent, parsed, from the start.
    pub fn replies(&self) -> Vec<Reply> {
        let mut parser = ReplyParser::new(smtp_proto::ReplyLimits {
            max_line: 100_000,
            max_lines: 1000,
        });
        parser.push(&self.output);
        std::iter::from_fn(|| parser.next_reply())
            .map(|r| r.expect("the server sends well-formed replies"))
            .collect()
    }

    /// The replies after the first `skip`, as `"250"` or `"250 2.1.5"` strings.
    pub fn codes_after(&self, skip: usize) -> Vec<String> {
        self.replies().iter().skip(skip).map(code_string).collect()
    }

    /// How many replies have been sent so far.
    pub fn reply_count(&self) -> usize {
        self.replies().len()
    }
}

/// `"250"` or `"250 2.1.5"`.
pub fn code_string(reply: &Reply) -> String {
    match reply.status() {
        Some(status) => format!("{} {status}", reply.code()),
        None => reply.code().to_string(),
    }
}

/// The path of the shared test data, or `None` (with a message) when it is absent
/// outside CI. Under `CI=true` its absence fails the test.
pub fn shared_testdata(relative: &str) -> Option<std::path::PathBuf> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/testdata")
        .join(relative);
    if path.exists() {
        return Some(path);
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!(
            "{} is missing: CI must have ../shared/testdata beside the checkout",
            path.display()
        );
    }
    eprintln!(
        "skipping: {} not found (../shared/testdata is beside the checkout on dev machines)",
        path.display()
    );
    None
}
