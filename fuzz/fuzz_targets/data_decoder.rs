//! `DataDecoder` and `DataEncoder` (layout: `common/split.rs`).
//!
//! `flags` bit 0: `normalize_line_endings(true)`; bit 1: a small limit (`flags >> 2`,
//! 0 to 63 bytes) instead of `u64::MAX`.
//!
//! Properties:
//! - decoding in pieces gives the same output, total consumed, completion and stats
//!   as decoding in one piece; an incomplete call consumes its whole input, and a call
//!   after completion consumes nothing;
//! - the output never holds more than the limit, and is exactly the first
//!   `min(size, limit)` bytes of the content;
//! - when the end of data is in the input, the result equals a simple reference
//!   decoder: the end is the first `<CRLF>.<CRLF>` (the data starting as if after a
//!   CRLF), lines are split at CRLF only, a leading dot is removed, every CR or LF left
//!   inside a line is bare;
//! - `DataEncoder` on any bytes, in pieces or at once, gives the same wire bytes, and
//!   the decoder stops exactly at their end with the content back (line endings as
//!   CRLF, a final CRLF added) and no bare CR or LF.
#![no_main]

#[allow(dead_code)]
#[path = "../common/split.rs"]
mod split;

use libfuzzer_sys::fuzz_target;
use smtp_proto::{DataDecoder, DataEncoder, DataStats, Decoded};

struct Outcome {
    out: Vec<u8>,
    consumed: usize,
    complete: bool,
    stats: DataStats,
    over: bool,
}

fn decoder(flags: u8) -> (DataDecoder, u64) {
    let limit = if flags & 2 != 0 {
        u64::from(flags >> 2)
    } else {
        u64::MAX
    };
    let decoder = DataDecoder::new(limit).normalize_line_endings(flags & 1 != 0);
    (decoder, limit)
}

fn decode_pieces(flags: u8, pieces: &[&[u8]]) -> Outcome {
    let (mut decoder, limit) = decoder(flags);
    let mut out = Vec::new();
    let mut consumed = 0;
    let mut complete = false;
    for piece in pieces {
        let d = decoder.decode(piece, &mut out);
        if complete {
            assert_eq!(
                d,
                Decoded {
                    consumed: 0,
                    complete: true
                },
                "decode after the end of data"
            );
            continue;
        }
        assert!(d.consumed <= piece.len());
        consumed += d.consumed;
        complete = d.complete;
        if !complete {
            assert_eq!(d.consumed, piece.len(), "incomplete call left input unused");
        }
        assert_eq!(decoder.is_complete(), complete);
        assert!(
            out.len() as u64 <= limit,
            "output {} over the limit {limit}",
            out.len()
        );
    }
    Outcome {
        out,
        consumed,
        complete,
        stats: decoder.stats(),
        over: decoder.is_over_limit(),
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The reference decoder, for input that contains the end of data: (content, bare LF,
/// bare CR, consumed).
fn reference(input: &[u8], normalize: bool) -> Option<(Vec<u8>, u64, u64, usize)> {
    let s = [b"\r\n".as_slice(), input].concat();
    let k = find(&s, b"\r\n.\r\n")?;
    let content = &input[..k];
    let (mut out, mut lf, mut cr) = (Vec::new(), 0, 0);
    let mut rest = content;
    while !rest.is_empty() {
        let end = find(rest, b"\r\n").expect("content ends with CRLF");
        let mut line = &rest[..end];
        rest = &rest[end + 2..];
        if let Some(stripped) = line.strip_prefix(b".") {
            line = stripped;
        }
        for &b in line {
            match b {
                b'\r' | b'\n' => {
                    if b == b'\r' {
                        cr += 1;
                    } else {
                        lf += 1;
                    }
                    if normalize {
                        out.extend_from_slice(b"\r\n");
                    } else {
                        out.push(b);
                    }
                }
                _ => out.push(b),
            }
        }
        out.extend_from_slice(b"\r\n");
    }
    Some((out, lf, cr, k + 3))
}

/// Line endings as CRLF (a bare CR or LF included) and a final CRLF when missing.
fn normalized_content(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < input.len() {
        match input[i] {
            b'\r' => {
                out.extend_from_slice(b"\r\n");
                if input.get(i + 1) == Some(&b'\n') {
                    i += 1;
                }
            }
            b'\n' => out.extend_from_slice(b"\r\n"),
            b => out.push(b),
        }
        i += 1;
    }
    if !out.is_empty() && !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}

fn check_decoder(flags: u8, payload: &[u8], pieces: &[&[u8]]) {
    let whole = decode_pieces(flags, &[payload]);
    let split = decode_pieces(flags, pieces);
    assert_eq!(split.out, whole.out, "output depends on the split");
    assert_eq!(
        split.consumed, whole.consumed,
        "consumed depends on the split"
    );
    assert_eq!(
        split.complete, whole.complete,
        "completion depends on the split"
    );
    assert_eq!(split.stats, whole.stats, "stats depend on the split");
    assert_eq!(split.over, whole.over);

    let (_, limit) = decoder(flags);
    assert_eq!(whole.over, whole.stats.size > limit);
    assert_eq!(whole.out.len() as u64, whole.stats.size.min(limit));
    if !whole.complete {
        assert_eq!(whole.consumed, payload.len());
    }

    let reference = reference(payload, flags & 1 != 0);
    assert_eq!(
        whole.complete,
        reference.is_some(),
        "end of data found by one and not the other"
    );
    if let Some((content, lf, cr, consumed)) = reference {
        assert_eq!(whole.consumed, consumed, "end of data at the wrong place");
        assert_eq!((whole.stats.bare_lf, whole.stats.bare_cr), (lf, cr));
        assert_eq!(whole.stats.size, content.len() as u64);
        assert_eq!(
            whole.out,
            content[..whole.out.len()],
            "content differs from the reference"
        );
    }
}

fn check_encoder(payload: &[u8], pieces: &[&[u8]]) {
    let mut wire = Vec::new();
    let mut encoder = DataEncoder::default();
    encoder.encode(payload, &mut wire);
    encoder.finish(&mut wire);

    let mut wire2 = Vec::new();
    let mut encoder = DataEncoder::default();
    for piece in pieces {
        encoder.encode(piece, &mut wire2);
    }
    encoder.finish(&mut wire2);
    assert_eq!(wire2, wire, "encoding depends on the split");

    let mut decoder = DataDecoder::new(u64::MAX);
    let mut out = Vec::new();
    let d = decoder.decode(&wire, &mut out);
    assert!(d.complete, "encoded data has no end");
    assert_eq!(
        d.consumed,
        wire.len(),
        "end of data before the end of the encoding"
    );
    assert!(!decoder.stats().has_bare_line_endings());
    assert_eq!(
        out,
        normalized_content(payload),
        "round trip changed the content"
    );
}

fuzz_target!(|data: &[u8]| {
    let input = split::Split::new(data);
    let pieces = input.chunks();
    check_decoder(input.flags, input.payload, &pieces);
    check_encoder(input.payload, &pieces);
});
