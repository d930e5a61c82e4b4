//! Our `smtp-proto` against Stalwart's `smtp-proto` 0.2 (renamed `stalwart` here), on
//! exactly the same input bytes.
//!
//! - `command_parsing`: a pipelined client transcript (1000 transactions) held in
//!   memory. Ours: split on LF with memchr, strip the CRLF, `Command::parse`. Stalwart:
//!   `RequestReceiver::ingest` over the whole buffer, as its server does, until the
//!   buffer is consumed, then `Request::into_owned` (ours is owned already).
//! - `data_decoder`: DATA content of 1 KB, 64 KB and 10 MB followed by `<CRLF>.<CRLF>`.
//!   Ours: `DataDecoder::decode`. Stalwart: `DataReceiver::ingest`. Both write into a
//!   reused `Vec`, fed in 64 KiB chunks (`chunked`, how a server reads a socket) and in
//!   one call (`whole`).
//!
//! Every input is checked once, outside the timed loops: both sides parse the same
//! number of commands, and both decoders produce the same bytes.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};

mod support;

/// One transaction of the transcript; DATA content is not part of it.
const TRANSACTION: &[u8] = b"EHLO client.example.org\r\n\
MAIL FROM:<sender.name@example.org> SIZE=12345 BODY=8BITMIME\r\n\
RCPT TO:<alice@example.net>\r\n\
RCPT TO:<bob.smith@example.net> NOTIFY=SUCCESS,FAILURE\r\n\
RCPT TO:<\"quoted user\"@example.net>\r\n\
DATA\r\n\
RSET\r\n\
NOOP\r\n\
QUIT\r\n";
const COMMANDS_PER_TRANSACTION: usize = 9;
const TRANSACTIONS: usize = 1000;

/// How much a server reads from its socket at once.
const CHUNK: usize = 64 * 1024;

fn transcript() -> Vec<u8> {
    TRANSACTION.repeat(TRANSACTIONS)
}

/// Ours: the way `ServerSession` reads command lines.
fn ours_parse_all(input: &[u8]) -> usize {
    let mut count = 0;
    let mut rest = input;
    while let Some(n) = memchr::memchr(b'\n', rest) {
        let line = &rest[..n];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        rest = &rest[n + 1..];
        match smtp_proto::Command::parse(line) {
            Ok(command) => {
                black_box(command);
                count += 1;
            }
            Err(e) => panic!("ours: {e:?} on {:?}", String::from_utf8_lossy(line)),
        }
    }
    count
}

/// Stalwart: its server's loop over one read buffer.
fn stalwart_parse_all(input: &[u8]) -> usize {
    let mut receiver = stalwart::request::receiver::RequestReceiver::default();
    let mut bytes = input.iter();
    let mut count = 0;
    loop {
        match receiver.ingest(&mut bytes) {
            Ok(request) => {
                black_box(request.into_owned());
                count += 1;
            }
            Err(stalwart::Error::NeedsMoreData { .. }) => break,
            Err(e) => panic!("stalwart: {e:?}"),
        }
    }
    assert!(
        bytes.as_slice().is_empty(),
        "stalwart left input unconsumed"
    );
    count
}

fn command_parsing(c: &mut Criterion) {
    let input = transcript();
    let expected = COMMANDS_PER_TRANSACTION * TRANSACTIONS;
    assert_eq!(ours_parse_all(&input), expected, "ours");
    assert_eq!(stalwart_parse_all(&input), expected, "stalwart");

    let mut group = c.benchmark_group("command_parsing");
    group.throughput(Throughput::Bytes(input.len() as u64));
    group.bench_function("ours", |b| b.iter(|| ours_parse_all(black_box(&input))));
    group.bench_function("stalwart", |b| {
        b.iter(|| stalwart_parse_all(black_box(&input)))
    });
    group.finish();
}

/// A deterministic xorshift generator, so every run benches the same bytes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[rustfmt::skip]
const WORDS: &[&str] = &[
    "the", "of", "and", "to", "in", "is", "that", "for", "it", "as", "was", "with", "be", "by",
    "on", "not", "he", "this", "are", "or", "his", "from", "at", "which", "but", "have", "an",
    "had", "they", "you", "were", "their", "one", "all", "we", "can", "her", "has", "there",
    "been", "if", "more", "when", "will", "would", "who", "so", "no", "message", "delivery",
    "server", "please", "regards", "meeting", "tomorrow", "attached", "invoice", "quarterly",
    "report", "schedule", "discussed", "Thanks,", "Hello", "team.", "result:", "(draft)",
    "2024-05-17", "example.org", "https://www.example.org/path?q=1", "naïve", "café",
];

/// A message as a client sends it after DATA: headers, a body of ~76-character lines
/// with CRLF endings, about one line in 40 starting with '.' (dot-stuffed on the wire),
/// and the final `<CRLF>.<CRLF>`. Returns (wire bytes, expected decoded content).
fn message(size: usize) -> (Vec<u8>, Vec<u8>) {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ size as u64);
    let mut content = Vec::with_capacity(size + 128);
    content.extend_from_slice(
        b"Received: from client.example.org (client.example.org [192.0.2.1])\r\n\
\tby mx.example.net with ESMTPS id 4f2a9c; Fri, 17 May 2024 10:00:00 +0000\r\n\
From: Sender Name <sender.name@example.org>\r\n\
To: Alice <alice@example.net>, Bob Smith <bob.smith@example.net>\r\n\
Subject: Quarterly report and the schedule for next week\r\n\
Date: Fri, 17 May 2024 10:00:00 +0000\r\n\
Message-ID: <20240517100000.4f2a9c@client.example.org>\r\n\
MIME-Version: 1.0\r\n\
Content-Type: text/plain; charset=utf-8\r\n\
Content-Transfer-Encoding: 8bit\r\n\
\r\n",
    );
    while content.len() < size {
        let mut line = Vec::with_capacity(80);
        match rng.below(40) {
            0 => line.push(b'.'),
            1 => {
                // An empty line: a paragraph break.
                content.extend_from_slice(b"\r\n");
                continue;
            }
            _ => {}
        }
        let target = 60 + rng.below(17); // 60..=76
        while line.len() < target {
            if !line.is_empty() && line != b"." {
                line.push(b' ');
            }
            line.extend_from_slice(WORDS[rng.below(WORDS.len())].as_bytes());
        }
        content.extend_from_slice(&line);
        content.extend_from_slice(b"\r\n");
    }
    let mut wire = Vec::with_capacity(content.len() + content.len() / 40 + 8);
    for line in content.split_inclusive(|&b| b == b'\n') {
        if line.starts_with(b".") {
            wire.push(b'.');
        }
        wire.extend_from_slice(line);
    }
    wire.extend_from_slice(b".\r\n");
    (wire, content)
}

fn ours_decode(input: &[u8], chunk: usize, out: &mut Vec<u8>) {
    out.clear();
    let mut decoder = smtp_proto::DataDecoder::new(u64::MAX);
    for piece in input.chunks(chunk) {
        if decoder.decode(piece, out).complete {
            return;
        }
    }
    panic!("ours: end of data not found");
}

fn stalwart_decode(input: &[u8], chunk: usize, out: &mut Vec<u8>) {
    out.clear();
    let mut receiver = stalwart::request::receiver::DataReceiver::new();
    for piece in input.chunks(chunk) {
        if receiver.ingest(&mut piece.iter(), out) {
            return;
        }
    }
    panic!("stalwart: end of data not found");
}

fn data_decoder(c: &mut Criterion) {
    let sizes = [("1KB", 1_000), ("64KB", 64_000), ("10MB", 10_000_000)];
    let mut group = c.benchmark_group("data_decoder");
    for (label, size) in sizes {
        let (input, expected) = message(size);
        let mut out = Vec::new();
        for chunk in [CHUNK, input.len()] {
            ours_decode(&input, chunk, &mut out);
            assert!(out == expected, "ours decoded {label} differently");
            stalwart_decode(&input, chunk, &mut out);
            assert!(out == expected, "stalwart decoded {label} differently");
        }
        group.throughput(Throughput::Bytes(input.len() as u64));
        for (mode, chunk) in [("chunked", CHUNK), ("whole", input.len())] {
            // The whole-input variant is the same as chunked below one chunk.
            if mode == "whole" && input.len() <= CHUNK {
                continue;
            }
            let param = format!("{label}_{mode}");
            group.bench_with_input(
                criterion::BenchmarkId::new("ours", &param),
                &input,
                |b, input| b.iter(|| ours_decode(black_box(input), chunk, &mut out)),
            );
            group.bench_with_input(
                criterion::BenchmarkId::new("stalwart", &param),
                &input,
                |b, input| b.iter(|| stalwart_decode(black_box(input), chunk, &mut out)),
            );
        }
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = support::config();
    targets = command_parsing, data_decoder
}
criterion_main!(benches);
