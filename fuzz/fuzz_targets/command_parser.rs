//! `Command::parse` on arbitrary bytes (one command line, without its CRLF).
//!
//! Properties:
//! - parsing never panics;
//! - a parsed command encodes to exactly one line ending in CRLF, with no CR or LF
//!   inside when the input had none (encoding must not break the framing);
//! - parse(encode(parse(x))) == parse(x): encoding may normalise (source routes
//!   dropped, keywords upper-cased, HELP/VRFY arguments trimmed, ...), but what it
//!   writes must parse back to the same command;
//! - `to_string()` is the same text as `encode`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use smtp_proto::Command;

fuzz_target!(|data: &[u8]| {
    let Ok(cmd) = Command::parse(data) else {
        return;
    };
    let mut wire = Vec::new();
    cmd.encode(&mut wire);
    let Some(line) = wire.strip_suffix(b"\r\n") else {
        panic!("encoding of {cmd:?} does not end in CRLF: {wire:?}");
    };
    if !data.contains(&b'\n') {
        assert!(
            !line.iter().any(|&b| b == b'\r' || b == b'\n'),
            "encoding of {cmd:?} contains a line break: {:?}",
            String::from_utf8_lossy(&wire)
        );
    }
    assert_eq!(
        cmd.to_string().as_bytes(),
        &wire[..],
        "to_string differs from encode"
    );
    let again = Command::parse(line).unwrap_or_else(|e| {
        panic!(
            "re-parse of {:?} (from {:?}) failed: {e:?}",
            String::from_utf8_lossy(line),
            String::from_utf8_lossy(data)
        )
    });
    assert_eq!(
        again,
        cmd,
        "round trip changed the command: input {:?}, encoded {:?}",
        String::from_utf8_lossy(data),
        String::from_utf8_lossy(line)
    );
});
