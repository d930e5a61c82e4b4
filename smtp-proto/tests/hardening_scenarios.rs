//! The protocol-core cases of `../shared/testdata/smtp-hardening/scenarios.yaml`, read at
//! test time: the bytes come from the file, the expected outcomes are written here.
//!
//! Cases that need sockets, TLS, timers or the server's policy (connection limits, the
//! hop count, handshake timeouts) are listed in `NOT_PROTOCOL_CORE` with the crate
//! that covers them; a case in the file that is in neither list fails the test, so a
//! new scenario cannot be missed.

// Test code: a panic is a failed test, and printing is how a test reports.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr
)]

mod support;

use smtp_proto::{
    ClientConfig, ClientEvent, ClientSession, Command, DataDecoder, DataEncoder, Extensions,
    ForwardPath, HeloName, MailParameters, MailTransaction, Mechanism, RcptParameters, ReplyParser,
    ReversePath, ServerConfig,
};
use support::Harness;
use yaml_rust2::{Yaml, YamlLoader};

/// The message size limit of these tests (`LIMIT` in the file).
const LIMIT: usize = 10_000;

const NOT_PROTOCOL_CORE: &[(&str, &str)] = &[
    (
        "data-loop-received",
        "hop counting is a data-stage filter in smtp-server",
    ),
    ("relay-denied", "relay policy is a smtp-server layer"),
    ("tls-bad-handshake", "TLS I/O lives in smtp-server"),
    (
        "tls-slow-handshake",
        "handshake timeout lives in smtp-server",
    ),
    ("res-slowloris", "deadlines are timers in smtp-server"),
    (
        "res-connection-limit",
        "connection limits are in smtp-server",
    ),
];

fn config() -> ServerConfig {
    ServerConfig {
        max_message_size: LIMIT as u64,
        extensions: Extensions {
            starttls: true,
            auth: vec![Mechanism::Plain, Mechanism::Login],
            ..Extensions::default()
        },
        ..ServerConfig::default()
    }
}

struct Scenario {
    id: String,
    send: String,
    variants: Vec<String>,
}

fn load() -> Option<Yaml> {
    let path = support::shared_testdata("smtp-hardening/scenarios.yaml")?;
    let text = std::fs::read_to_string(path).expect("readable scenarios.yaml");
    YamlLoader::load_from_str(&text)
        .expect("valid YAML")
        .into_iter()
        .next()
}

fn scenarios(doc: &Yaml, list: &str) -> Vec<Scenario> {
    doc[list]
        .as_vec()
        .expect("a list of scenarios")
        .iter()
        .map(|s| Scenario {
            id: s["id"].as_str().expect("an id").to_owned(),
            send: s["send"].as_str().unwrap_or("").to_owned(),
            variants: s["variants"]
                .as_vec()
                .map(|v| {
                    v.iter()
                        .filter_map(|x| x.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default(),
        })
        .collect()
}

/// Expands `{BIG:n:text}`, `{BIG:n Received: headers}`, `LIMIT` and `{LIMIT+1}`.
fn expand(template: &str) -> Vec<u8> {
    let limit_number = |s: &str| -> usize {
        match s.trim() {
            "LIMIT" => LIMIT,
            "LIMIT+1" => LIMIT + 1,
            n => n.parse().unwrap_or_else(|_| panic!("bad count {n:?}")),
        }
    };
    let mut out = Vec::new();
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        out.extend_from_slice(&rest.as_bytes()[..start]);
        let end = start + rest[start..].find('}').expect("closing brace");
        let inner = &rest[start + 1..end];
        if let Some(big) = inner.strip_prefix("BIG:") {
            if let Some(n) = big.strip_suffix(" Received: headers") {
                for i in 0..limit_number(n) {
                    out.extend_from_slice(format!("Received: from hop{i}.test by hop{}.test; Tue, 24 Nov 2026 10:00:00 +0000\r\n", i + 1).as_bytes());
                }
            } else {
                let (n, text) = big.split_once(':').expect("BIG:n:text");
                out.extend_from_slice(&text.as_bytes().repeat(limit_number(n)));
            }
        } else {
            out.extend_from_slice(limit_number(inner).to_string().as_bytes());
        }
        rest = &rest[end + 1..];
    }
    out.extend_from_slice(rest.as_bytes());
    out
}

/// A harness brought to a named state with plain, unauthenticated commands.
fn at(state: &str) -> Harness {
    let mut h = Harness::new(config());
    let steps: &[&str] = match state {
        "greeting" => &[],
        "ehlo" => &["EHLO client.test\r\n"],
        "helo" => &["HELO client.test\r\n"],
        "mail" => &["EHLO client.test\r\n", "MAIL FROM:<a@ex.test>\r\n"],
        "rcpt" => &[
            "EHLO client.test\r\n",
            "MAIL FROM:<a@ex.test>\r\n",
            "RCPT TO:<ok@ours.test>\r\n",
        ],
        "data" => &[
            "EHLO client.test\r\n",
            "MAIL FROM:<a@ex.test>\r\n",
            "RCPT TO:<ok@ours.test>\r\n",
            "DATA\r\n",
        ],
        other => panic!("unknown state {other}"),
    };
    for step in steps {
        h.send(step.as_bytes());
    }
    h
}

/// Sends the scenario's bytes (split at every possible point once for short inputs, to
/// prove that the split does not matter) and returns the replies to them.
fn run(state: &str, bytes: &[u8]) -> (Harness, Vec<String>) {
    let mut whole = at(state);
    let skip = whole.reply_count();
    whole.send(bytes);
    let codes = whole.codes_after(skip);
    if bytes.len() <= 300 {
        for split in 1..bytes.len() {
            let mut h = at(state);
            h.send(&bytes[..split]);
            h.send(&bytes[split..]);
            assert_eq!(
                h.codes_after(skip),
                codes,
                "split at {split} of {:?}",
                String::from_utf8_lossy(bytes)
            );
        }
    }
    (whole, codes)
}

fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

fn bodies(h: &Harness) -> Vec<Vec<u8>> {
    h.messages.iter().map(|(_, b)| b.clone()).collect()
}

fn server_case(s: &Scenario) {
    let send = if s.send.contains("{variant}") {
        Vec::new()
    } else {
        expand(&s.send)
    };
    let id = s.id.as_str();
    match id {
        "data-dot-unstuff" => {
            let (h, codes) = run("data", &send);
            assert_eq!(codes, strs(&["250 2.0.0"]));
            assert_eq!(
                bodies(&h),
                [b"Subject: d\r\n\r\n.leading\r\n.\r\n".to_vec()]
            );
        }
        "data-sloppy-single-dot" => {
            let (h, codes) = run("data", &send);
            assert_eq!(codes, strs(&["250 2.0.0"]));
            assert_eq!(bodies(&h), [b"Subject: d\r\n\r\nnotstuffed\r\n".to_vec()]);
        }
        "data-empty" => {
            let (h, codes) = run("data", &send);
            assert_eq!(codes, strs(&["250 2.0.0"]));
            assert_eq!(bodies(&h), [Vec::new()]);
        }
        "data-bare-lf-in-header" | "data-bare-cr" => {
            let (h, codes) = run("data", &send);
            assert_eq!(codes, strs(&["550 5.6.11"]));
            assert!(h.messages.is_empty());
        }
        "data-nul-byte" => {
            // Refused by default (RFC 5321 §4.5.2, RFC 6152: no NUL in mail).
            let (h, codes) = run("data", &send);
            assert_eq!(codes, strs(&["550 5.6.0"]));
            assert!(h.messages.is_empty());
        }
        "data-long-line" => {
            let mut h = at("data");
            let skip = h.reply_count();
            h.send_chunked(&send, 4096);
            assert_eq!(h.codes_after(skip), strs(&["552 5.3.4"]));
            // The limit of these tests is 10 000 octets: the 100 000-octet line makes the
            // message too big, so it is refused after the dot; with a larger limit it is
            // accepted whole, never split.
            let mut big = Harness::new(ServerConfig {
                max_message_size: 1 << 20,
                ..config()
            });
            for line in [
                "EHLO c\r\n",
                "MAIL FROM:<a@ex.test>\r\n",
                "RCPT TO:<ok@ours.test>\r\n",
                "DATA\r\n",
            ] {
                big.send(line.as_bytes());
            }
            big.send_chunked(&send, 4096);
            assert_eq!(big.messages.len(), 1);
            let body = &big.messages[0].1;
            assert!(
                body.windows(100_002)
                    .any(|w| w[0] == b'\n' && w[1..100_001].iter().all(|&c| c == b'b'))
            );
            assert!(big.max_buffered_input <= 4096, "{}", big.max_buffered_input);
        }
        "data-size-exceeded" | "bdat-too-big" => {
            let state = if id == "bdat-too-big" { "rcpt" } else { "data" };
            let mut h = at(state);
            let skip = h.reply_count();
            h.send_chunked(&send, 1000);
            h.send(b"NOOP\r\n");
            assert_eq!(h.codes_after(skip), strs(&["552 5.3.4", "250 2.0.0"]));
            assert!(h.messages.is_empty());
        }
        "data-no-final-crlf-before-dot" => {
            let (h, codes) = run("data", &send);
            assert_eq!(codes, strs(&["250 2.0.0"]));
            assert_eq!(bodies(&h), [b"Subject: s\r\n\r\nlast line.\r\n".to_vec()]);
        }
        "data-disconnect-midway" | "bdat-close-midway" => {
            let state = if id == "data-disconnect-midway" {
                "data"
            } else {
                "rcpt"
            };
            let (h, codes) = run(state, &send);
            assert!(codes.is_empty(), "{codes:?}");
            assert!(h.messages.is_empty());
            assert!(
                !h.events
                    .iter()
                    .any(|e| matches!(e, smtp_proto::Event::Message { .. }))
            );
        }
        "pipe-basic-group" => {
            let (_, codes) = run("ehlo", &send);
            assert_eq!(codes, strs(&["250 2.1.0", "250 2.1.5", "550 5.1.1", "354"]));
        }
        "pipe-no-valid-rcpt" => {
            let (mut h, codes) = run("ehlo", &send);
            assert_eq!(codes, strs(&["250 2.1.0", "550 5.1.1", "554 5.5.1"]));
            // What follows is read as commands, not as message content.
            let skip = h.reply_count();
            h.send(b"NOOP\r\n");
            assert_eq!(h.codes_after(skip), strs(&["250 2.0.0"]));
        }
        "pipe-early-talker" => {
            let mut h = Harness::unstarted(config());
            h.session.receive(&send);
            assert!(
                h.session.buffered_input() > 0,
                "the early talker is visible to the server"
            );
            h.drive();
            assert_eq!(h.codes_after(0), strs(&["220", "250", "250 2.1.0"]));
        }
        "pipe-after-data" => {
            let (h, codes) = run("rcpt", &send);
            assert_eq!(codes, strs(&["354", "250 2.0.0"]));
            assert_eq!(bodies(&h), [b"Subject: s\r\n\r\nbody\r\n".to_vec()]);
        }
        "pipe-multiple-messages" => {
            let (h, codes) = run("data", &send);
            assert_eq!(
                codes,
                strs(&["250 2.0.0", "250 2.1.0", "250 2.1.5", "354", "250 2.0.0"])
            );
            assert_eq!(
                bodies(&h),
                [
                    b"Subject: 1\r\n\r\none\r\n".to_vec(),
                    b"Subject: 2\r\n\r\ntwo\r\n".to_vec()
                ]
            );
        }
        "pipe-quit-after-dot" => {
            let (h, codes) = run("data", &send);
            assert_eq!(codes, strs(&["250 2.0.0", "221 2.0.0"]));
            assert!(h.session.is_closed());
        }
        "pipe-flood" => {
            let mut h = at("ehlo");
            let skip = h.reply_count();
            h.send_chunked(&send, 16 * 1024);
            let codes = h.codes_after(skip);
            // "keeps answering or closes with 421": NOOP is a junk command, so the
            // session answers `max_junk_commands` of them, then `max_errors` more
            // counted as errors, and closes.
            let answered = (config().max_junk_commands + config().max_errors) as usize;
            assert_eq!(codes.len(), answered + 1);
            assert!(codes[..answered].iter().all(|c| c == "250 2.0.0"));
            assert_eq!(codes[answered], "421 4.7.0");
            assert!(h.session.is_closed());
            // Without that limit, all are answered.
            let mut h = Harness::new(ServerConfig {
                max_junk_commands: u32::MAX,
                ..config()
            });
            h.send(b"EHLO client.test\r\n");
            let skip = h.reply_count();
            h.send_chunked(&send, 16 * 1024);
            let codes = h.codes_after(skip);
            assert_eq!(codes.len(), 100_000);
            assert!(codes.iter().all(|c| c == "250 2.0.0"));
            // One read's worth of replies at a time: output is bounded by input.
            assert!(h.max_pending_output < 64 * 1024, "{}", h.max_pending_output);
            assert!(
                h.max_buffered_input <= 16 * 1024 + 2048,
                "{}",
                h.max_buffered_input
            );
        }
        "pipe-not-advertised" => {
            let (_, codes) = run("helo", &send);
            assert_eq!(codes, strs(&["250 2.1.0", "250 2.1.5"]));
        }
        "cmd-line-512" => {
            assert_eq!(send.len(), 512);
            assert_eq!(run("ehlo", &send).1, strs(&["250 2.0.0"]));
        }
        "cmd-line-huge" => {
            let mut h = at("ehlo");
            let skip = h.reply_count();
            h.send_chunked(&send, 8192);
            assert_eq!(h.codes_after(skip), strs(&["500 5.5.2", "250 2.0.0"]));
            assert!(
                h.max_buffered_input <= 8192 + 12288,
                "{}",
                h.max_buffered_input
            );
        }
        "cmd-nul" => assert_eq!(run("greeting", &send).1, strs(&["501 5.5.2"])),
        "cmd-unknown" => assert_eq!(run("ehlo", &send).1, strs(&["500 5.5.1"])),
        "cmd-too-many-errors" => {
            let (h, codes) = run("ehlo", &send);
            let max = config().max_errors as usize;
            assert_eq!(codes.len(), max + 1);
            assert!(codes[..max].iter().all(|c| c == "500 5.5.1"));
            assert_eq!(codes[max], "421 4.7.0");
            assert!(h.session.is_closed());
        }
        "cmd-http" => {
            let (h, codes) = run("greeting", &send);
            assert_eq!(codes, strs(&["554 5.7.0"]));
            assert!(h.session.is_closed());
        }
        "cmd-case" => assert_eq!(run("greeting", &send).1, strs(&["250", "250 2.1.0"])),
        "helo-no-arg" => assert_eq!(run("greeting", &send).1, strs(&["501 5.5.4", "501 5.5.4"])),
        "helo-literal" => assert_eq!(run("greeting", &send).1, strs(&["250", "250"])),
        "helo-twice-resets" => assert_eq!(run("mail", &send).1, strs(&["250", "503 5.5.1"])),
        "seq-mail-before-helo" => assert_eq!(run("greeting", &send).1, strs(&["503 5.5.1"])),
        "seq-rcpt-before-mail" => assert_eq!(run("ehlo", &send).1, strs(&["503 5.5.1"])),
        "seq-data-before-rcpt" => assert_eq!(run("mail", &send).1, strs(&["554 5.5.1"])),
        "seq-mail-twice" => assert_eq!(run("mail", &send).1, strs(&["503 5.5.1"])),
        "misc-noop-rset-quit-args" => {
            let (h, codes) = run("ehlo", &send);
            assert_eq!(codes, strs(&["250 2.0.0", "501 5.5.4", "501 5.5.4"]));
            assert!(!h.session.is_closed());
        }
        "misc-vrfy-expn" => assert_eq!(run("ehlo", &send).1, strs(&["252 2.5.0", "502 5.5.1"])),
        "addr-null-sender" => assert_eq!(run("ehlo", &send).1, strs(&["250 2.1.0", "250 2.1.5"])),
        "addr-null-rcpt" => assert_eq!(run("mail", &send).1, strs(&["501 5.1.3"])),
        "addr-postmaster-no-domain" => assert_eq!(run("mail", &send).1, strs(&["250 2.1.5"])),
        "addr-source-route" => {
            let (h, codes) = run("ehlo", &send);
            assert_eq!(codes, strs(&["250 2.1.0", "250 2.1.5"]));
            let from = h.events.iter().find_map(|e| match e {
                smtp_proto::Event::Mail { from, .. } => Some(from.to_string()),
                _ => None,
            });
            let to = h.events.iter().find_map(|e| match e {
                smtp_proto::Event::Rcpt { to, .. } => Some(to.to_string()),
                _ => None,
            });
            assert_eq!(from.as_deref(), Some("<user@d.test>"));
            assert_eq!(to.as_deref(), Some("<ok@ours.test>"));
        }
        "addr-quoted-local" => assert_eq!(run("ehlo", &send).1, strs(&["250 2.1.0", "250 2.1.5"])),
        "addr-literal-domain" => {
            assert_eq!(run("ehlo", &send).1, strs(&["250 2.1.0", "503 5.5.1"]))
        }
        "addr-invalid" => {
            assert!(!s.variants.is_empty());
            for v in &s.variants {
                let bytes = expand(&s.send.replace("{variant}", v));
                assert_eq!(run("ehlo", &bytes).1, strs(&["501 5.1.7"]), "{v}");
            }
        }
        "addr-no-brackets-or-space" => {
            // Our policy: brackets are required, a space after the colon is tolerated.
            assert_eq!(
                run("ehlo", &send).1,
                strs(&["501 5.1.7", "250 2.0.0", "250 2.1.0"])
            );
        }
        "addr-length" => {
            // A 65-octet local part is accepted: real senders (SRS, VERP) exceed 64.
            assert_eq!(
                run("ehlo", &send).1,
                strs(&["250 2.1.0", "250 2.0.0", "250 2.1.0"])
            );
        }
        "addr-crlf-injection" => {
            let (h, codes) = run("ehlo", &send);
            assert_eq!(codes, strs(&["501 5.5.2"]));
            assert!(
                !h.events
                    .iter()
                    .any(|e| matches!(e, smtp_proto::Event::Rcpt { .. }))
            );
        }
        "addr-utf8-without-smtputf8" => {
            assert_eq!(run("ehlo", &send).1, strs(&["250 2.1.0", "553 5.6.7"]))
        }
        "addr-utf8-with-smtputf8" => {
            assert_eq!(run("ehlo", &send).1, strs(&["250 2.1.0", "250 2.1.5"]))
        }
        "param-unknown" => assert_eq!(run("ehlo", &send).1, strs(&["555 5.5.4"])),
        "param-valueless" => {
            assert!(!s.variants.is_empty());
            for v in &s.variants {
                let bytes = expand(&s.send.replace("{variant}", v));
                assert_eq!(
                    run("ehlo", &bytes).1,
                    strs(&["501 5.5.4", "250 2.1.0"]),
                    "{v}"
                );
            }
        }
        "param-size-too-big" => assert_eq!(run("ehlo", &send).1, strs(&["552 5.3.4"])),
        "param-8bitmime" => assert_eq!(run("ehlo", &send).1, strs(&["250 2.1.0"])),
        "param-binarymime-with-data" => {
            // BINARYMIME is not offered by default.
            assert_eq!(
                run("ehlo", &send).1,
                strs(&["555 5.5.4", "503 5.5.1", "503 5.5.1"])
            );
            let mut h = Harness::new(ServerConfig {
                extensions: Extensions {
                    binarymime: true,
                    ..config().extensions
                },
                ..config()
            });
            h.send(b"EHLO c\r\n");
            let skip = h.reply_count();
            h.send(&send);
            assert_eq!(
                h.codes_after(skip),
                strs(&["250 2.1.0", "250 2.1.5", "503 5.5.1"])
            );
        }
        "param-in-helo-session" => assert_eq!(run("helo", &send).1, strs(&["555 5.5.4"])),
        "param-dsn" => {
            assert!(!s.variants.is_empty());
            for v in &s.variants {
                let bytes = expand(&s.send.replace("{variant}", v));
                assert_eq!(run("mail", &bytes).1, strs(&["501 5.5.4"]), "{v}");
            }
        }
        "rcpt-limit" => {
            let (h, codes) = run("mail", &send);
            assert_eq!(codes.len(), 150);
            assert!(codes[..100].iter().all(|c| c == "250 2.1.5"));
            assert!(codes[100..].iter().all(|c| c == "452 4.5.3"));
            assert!(!h.session.is_closed());
        }
        "bdat-basic" => {
            let (h, codes) = run("rcpt", &send);
            assert_eq!(codes, strs(&["250 2.0.0", "250 2.0.0"]));
            assert_eq!(bodies(&h), [b"Hello".to_vec()]);
        }
        "bdat-no-unstuffing" => {
            let (h, codes) = run("rcpt", &send);
            assert_eq!(codes, strs(&["250 2.0.0"]));
            assert_eq!(bodies(&h), [b"\r\n.\r\n..\r\nabc\r\n".to_vec()]);
        }
        "bdat-without-transaction" => {
            let (h, codes) = run("ehlo", &send);
            assert_eq!(codes, strs(&["503 5.5.1", "250 2.0.0"]));
            assert!(
                !h.events
                    .iter()
                    .any(|e| matches!(e, smtp_proto::Event::Mail { .. }))
            );
        }
        "bdat-bad-size" => {
            assert!(!s.variants.is_empty());
            for v in &s.variants {
                let bytes = expand(&s.send.replace("{variant}", v));
                let (h, codes) = run("rcpt", &bytes);
                assert_eq!(codes, strs(&["501 5.5.4", "421 4.5.0"]), "{v}");
                assert!(h.session.is_closed());
            }
        }
        "bdat-then-data" => assert_eq!(run("rcpt", &send).1, strs(&["250 2.0.0", "503 5.5.1"])),
        "bdat-rset-midway" => {
            let (h, codes) = run("rcpt", &send);
            assert_eq!(codes, strs(&["250 2.0.0", "250 2.0.0", "250 2.1.0"]));
            assert!(h.messages.is_empty());
        }
        "tls-injection" => {
            let mut h = at("ehlo");
            let skip = h.reply_count();
            h.send(&send); // one segment: STARTTLS and the injected MAIL
            assert_eq!(h.handshakes, 1);
            h.send(b"EHLO x\r\nRCPT TO:<ok@ours.test>\r\n");
            assert_eq!(
                h.codes_after(skip),
                strs(&["220 2.0.0", "250", "503 5.5.1"])
            );
            assert!(
                !h.events
                    .iter()
                    .any(|e| matches!(e, smtp_proto::Event::Mail { .. }))
            );
        }
        "tls-argument" => assert_eq!(run("ehlo", &send).1, strs(&["501 5.5.4"])),
        "tls-state-reset" => {
            let mut h = at("mail");
            let skip = h.reply_count();
            h.send(b"STARTTLS\r\n");
            h.send(b"MAIL FROM:<a@b.test>\r\n");
            h.send(b"EHLO again\r\n");
            assert_eq!(
                h.codes_after(skip),
                strs(&["220 2.0.0", "503 5.5.1", "250"])
            );
            let ehlo = h.replies().pop().unwrap();
            assert!(!ehlo.text().contains("STARTTLS"));
            assert!(ehlo.text().contains("AUTH PLAIN LOGIN"));
        }
        "tls-twice" => {
            let mut h = Harness::new_tls(config());
            h.send(b"EHLO c\r\n");
            let skip = h.reply_count();
            h.send(b"STARTTLS\r\n");
            assert_eq!(h.codes_after(skip), strs(&["503 5.5.1"]));
        }
        "auth-before-tls" => assert_eq!(run("ehlo", &send).1, strs(&["538 5.7.11"])),
        "auth-errors" => {
            assert!(!s.variants.is_empty());
            for v in &s.variants {
                let mut h = Harness::new_tls(config());
                h.send(b"EHLO c\r\n");
                let skip = h.reply_count();
                h.send(&expand(&s.send.replace("{variant}", v)));
                let expected: &[&str] = match v.as_str() {
                    "AUTH" => &["501 5.5.4"],
                    "AUTH FOO" => &["504 5.5.4"],
                    "AUTH LOGIN\r\n*" => &["334", "501 5.7.0"],
                    _ => &["501 5.5.2"],
                };
                assert_eq!(h.codes_after(skip), strs(expected), "{v:?}");
                assert!(!h.session.is_authenticated());
            }
        }
        "auth-twice" => {
            let mut h = Harness::new_tls(config());
            h.send(b"EHLO c\r\n");
            h.send(&send);
            let skip = h.reply_count();
            assert!(h.session.is_authenticated());
            h.send(&send);
            assert_eq!(h.codes_after(skip), strs(&["503 5.5.1"]));
        }
        "auth-bruteforce" => {
            let mut h = Harness::new_tls(config());
            h.send(b"EHLO c\r\n");
            let skip = h.reply_count();
            h.send(&send);
            let max = config().max_auth_failures as usize;
            let mut expected = vec!["535 5.7.8"; max];
            expected.push("421 4.7.0");
            assert_eq!(h.codes_after(skip), strs(&expected));
            assert!(h.session.is_closed());
        }
        "res-idle-timeout" => {
            let mut h = at("ehlo");
            let skip = h.reply_count();
            h.session.timeout();
            h.drive();
            assert_eq!(h.codes_after(skip), strs(&["421 4.4.2"]));
            assert!(h.session.is_closed());
        }
        "res-abrupt-close" => {
            // Stopping the input in any state leaves no message behind.
            let script = b"EHLO c\r\nMAIL FROM:<a@ex.test>\r\nRCPT TO:<ok@ours.test>\r\nDATA\r\nSubject: x\r\n\r\nbody";
            for cut in 0..script.len() {
                let mut h = Harness::new(config());
                h.send(&script[..cut]);
                assert!(h.messages.is_empty());
            }
        }
        other => panic!(
            "scenario {other:?} is not classified: add it to this test or to NOT_PROTOCOL_CORE"
        ),
    }
}

#[test]
fn server_scenarios() {
    let Some(doc) = load() else { return };
    let list = scenarios(&doc, "server");
    assert!(
        list.len() > 60,
        "the file lists {} server scenarios",
        list.len()
    );
    let mut ran = 0;
    for s in &list {
        if let Some((_, why)) = NOT_PROTOCOL_CORE.iter().find(|(id, _)| *id == s.id) {
            println!("{}: not a protocol-core case ({why})", s.id);
            continue;
        }
        println!("{}", s.id);
        server_case(s);
        ran += 1;
    }
    println!("{ran} protocol-core server scenarios passed");
}

/// The smuggling end-of-data sequences: none may end the data, under either bare
/// line-ending policy.
#[test]
fn smuggling_sequences() {
    let Some(doc) = load() else { return };
    let seqs = &doc["smuggling_end_of_data_sequences"];
    let inbound: Vec<(String, String)> = seqs["inbound"]
        .as_vec()
        .expect("inbound list")
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_owned(),
                s["seq"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert!(inbound.len() >= 10);
    for normalize in [false, true] {
        for (name, seq) in &inbound {
            let cfg = ServerConfig {
                bare_line_endings: if normalize {
                    smtp_proto::BareLineEndings::Normalize
                } else {
                    smtp_proto::BareLineEndings::Reject
                },
                ..config()
            };
            let mut h = Harness::new(cfg);
            for line in [
                "EHLO c\r\n",
                "MAIL FROM:<a@ex.test>\r\n",
                "RCPT TO:<ok@ours.test>\r\n",
                "DATA\r\n",
            ] {
                h.send(line.as_bytes());
            }
            let skip = h.reply_count();
            let attack = [
                "Subject: t\r\n\r\nfirst",
                seq,
                "MAIL FROM:<smuggled@attacker.test>\r\nRCPT TO:<victim@ours.test>\r\nDATA\r\n",
                "From: <ceo@victim.test>\r\n\r\nsmuggled\r\n.\r\n",
            ]
            .concat();
            h.send(attack.as_bytes());
            if !h.session.is_closed() {
                h.send(b"\r\n.\r\n");
            }
            let codes = h.codes_after(skip);
            assert!(
                h.messages.len() <= 1,
                "{name}: {} messages",
                h.messages.len()
            );
            let mail_events = h
                .events
                .iter()
                .filter(|e| matches!(e, smtp_proto::Event::Mail { .. }))
                .count();
            assert_eq!(mail_events, 1, "{name}: the smuggled MAIL was executed");
            assert!(
                !codes
                    .iter()
                    .any(|c| c.starts_with("354") || c.starts_with("250 2.1")),
                "{name}: {codes:?}"
            );
            match h.messages.first() {
                Some((_, body)) => {
                    let body = String::from_utf8_lossy(body);
                    assert!(
                        body.contains("MAIL FROM:<smuggled@attacker.test>")
                            && body.contains("smuggled"),
                        "{name}"
                    );
                    assert_eq!(codes[0], "250 2.0.0", "{name}");
                }
                // A bare CR or LF, or a NUL (`nul_before_dot`), refuses the message.
                None => assert!(
                    codes[0] == "550 5.6.11" || codes[0] == "550 5.6.0",
                    "{name}: {codes:?}"
                ),
            }
            if !normalize && has_bare_line_endings(attack.as_bytes()) {
                assert!(h.messages.is_empty(), "{name}: accepted despite bare CR/LF");
            }
        }
    }
    // Outbound: our encoder sends CRLF lines only, ends the data exactly once, and never
    // passes an outbound-only sequence through unchanged.
    let outbound = seqs["outbound_only"].as_vec().expect("outbound list");
    for (s, outbound_only) in outbound
        .iter()
        .map(|s| (s, true))
        .chain(seqs["inbound"].as_vec().unwrap().iter().map(|s| (s, false)))
    {
        let seq = s["seq"].as_str().unwrap();
        let body = format!("Subject: t\r\n\r\nfirst{seq}second\r\n");
        let mut wire = Vec::new();
        let mut encoder = DataEncoder::default();
        encoder.encode(body.as_bytes(), &mut wire);
        encoder.finish(&mut wire);
        let terminators = wire.windows(5).filter(|w| w == b"\r\n.\r\n").count();
        assert_eq!(
            terminators,
            1,
            "{seq:?} -> {:?}",
            String::from_utf8_lossy(&wire)
        );
        assert!(wire.ends_with(b"\r\n.\r\n"));
        assert!(
            !has_bare_line_endings(&wire),
            "bare CR/LF on the wire for {seq:?}"
        );
        if outbound_only {
            assert!(
                !wire.windows(seq.len()).any(|w| w == seq.as_bytes()),
                "{seq:?} passed through"
            );
        }
        let mut decoder = DataDecoder::new(u64::MAX);
        let mut out = Vec::new();
        let d = decoder.decode(&wire, &mut out);
        assert!(d.complete && d.consumed == wire.len());
    }
}

fn has_bare_line_endings(b: &[u8]) -> bool {
    b.iter().enumerate().any(|(i, &c)| {
        (c == b'\n' && (i == 0 || b[i - 1] != b'\r'))
            || (c == b'\r' && b.get(i + 1) != Some(&b'\n'))
    })
}

/// The client cases that concern the protocol core.
#[test]
fn client_scenarios() {
    let Some(doc) = load() else { return };
    let ids: Vec<String> = scenarios(&doc, "client")
        .into_iter()
        .map(|s| s.id)
        .collect();
    let core = [
        "cl-multiline-and-malformed",
        "cl-starttls-injection",
        "cl-rcpt-mixed",
        "cl-data-no-valid-rcpt",
        "cl-dot-stuffing",
    ];
    // The others (greeting 421 and MX fallback, HELO fallback, STARTTLS 454 policy, a
    // drop after the dot, SIZE, 8-bit downgrade, BDAT failure) are decisions of
    // smtp-client, tested there.
    for id in core {
        assert!(ids.iter().any(|i| i == id), "{id} is no longer in the file");
    }

    // cl-multiline-and-malformed
    for (input, ok) in [
        (&b"250-a\r\n250 b\r\n"[..], true),
        (b"250\r\n", true),
        (b"25O ok\r\n", false),
        (b"2500 ok\r\n", false),
        (b"250-a\r\n251 b\r\n", false),
    ] {
        let mut p = ReplyParser::default();
        p.push(input);
        assert_eq!(
            p.next_reply().map(|r| r.is_ok()),
            Some(ok),
            "{:?}",
            String::from_utf8_lossy(input)
        );
    }
    let long = [b"250 ".as_slice(), &[b'x'; 2000], b"\r\n"].concat();
    let mut p = ReplyParser::default();
    p.push(&long);
    assert!(matches!(p.next_reply(), Some(Err(_))));
    let mut p = ReplyParser::default();
    p.push(b"250-a\r\n");
    assert!(
        p.next_reply().is_none(),
        "a reply without its last line is never complete"
    );

    // cl-starttls-injection
    let mut c = connected_client(b"250-mx\r\n250 STARTTLS\r\n");
    c.send(Command::StartTls);
    c.receive(b"220 ready\r\n250 injected\r\n");
    assert_eq!(
        c.poll_event(),
        Some(Err(smtp_proto::Error::StartTlsInjection))
    );

    // cl-rcpt-mixed
    let mut c = connected_client(b"250-mx\r\n250 PIPELINING\r\n");
    c.start_transaction(transaction(4));
    c.receive(b"250 ok\r\n250 ok\r\n550 5.1.1 no\r\n452 4.2.2 full\r\n250 ok\r\n354 go\r\n");
    assert_eq!(c.poll_event(), Some(Ok(ClientEvent::ReadyForData)));
    c.send_body(b"x\r\n");
    c.receive(b"250 2.0.0 queued\r\n");
    let Some(Ok(ClientEvent::TransactionComplete(r))) = c.poll_event() else {
        panic!()
    };
    let codes: Vec<u16> = r.recipients.iter().map(|r| r.code().as_u16()).collect();
    assert_eq!(codes, [250, 550, 452, 250]);
    assert!(r.recipients[2].is_transient() && r.recipients[1].is_permanent());

    // cl-data-no-valid-rcpt
    let mut c = connected_client(b"250-mx\r\n250 PIPELINING\r\n");
    c.start_transaction(transaction(2));
    c.consume_output(c.pending_output().len());
    c.receive(b"250 ok\r\n550 no\r\n550 no\r\n554 5.5.1 no valid recipients\r\n");
    let Some(Ok(ClientEvent::TransactionComplete(r))) = c.poll_event() else {
        panic!()
    };
    assert!(c.pending_output().is_empty(), "no body is sent");
    assert!(r.recipients.iter().all(|r| r.code().as_u16() == 550));

    // cl-dot-stuffing
    let mut c = connected_client(b"250 mx\r\n");
    c.start_transaction(transaction(1));
    for reply in [&b"250 ok\r\n"[..], b"250 ok\r\n", b"354 go\r\n"] {
        c.consume_output(c.pending_output().len());
        c.receive(reply);
        let _ = c.poll_event();
    }
    c.consume_output(c.pending_output().len());
    c.send_body(b".\r\n..x\r\n.\r\ninside\nbare\n.\n\r.\r");
    assert_eq!(
        c.pending_output(),
        b"..\r\n...x\r\n..\r\ninside\r\nbare\r\n..\r\n\r\n..\r\n.\r\n"
    );
}

fn connected_client(ehlo: &[u8]) -> ClientSession {
    let mut c = ClientSession::new(ClientConfig::default());
    c.receive(b"220 mx ESMTP\r\n");
    assert!(matches!(c.poll_event(), Some(Ok(ClientEvent::Greeting(_)))));
    c.ehlo(HeloName::parse("client.test").unwrap());
    c.receive(ehlo);
    assert!(matches!(
        c.poll_event(),
        Some(Ok(ClientEvent::Reply { .. }))
    ));
    c.consume_output(c.pending_output().len());
    c
}

fn transaction(n: usize) -> MailTransaction {
    MailTransaction {
        from: ReversePath::parse("<a@client.test>").unwrap(),
        params: MailParameters::default(),
        recipients: (0..n)
            .map(|i| {
                (
                    ForwardPath::parse(&format!("<r{i}@mx.test>")).unwrap(),
                    RcptParameters::default(),
                )
            })
            .collect(),
    }
}
