//! Message content after DATA (RFC 5321 §4.1.1.4, §4.5.2): an incremental decoder that
//! removes dot-stuffing and finds the end of data, and an encoder that dot-stuffs.
//!
//! The end of data is `<CRLF>.<CRLF>` and nothing else. A bare LF or a bare CR never
//! ends a line for the purpose of finding the terminating dot or removing stuffing
//! (this is what SMTP smuggling, CVE-2023-51764/51765/51766, exploits in servers that
//! disagree with each other); the decoder counts them so the server can refuse the
//! message (`550 5.6.11`) or keep a normalised copy, by policy. It counts NUL bytes
//! too, which RFC 5321 §4.5.2 and RFC 6152 keep out of text (a next hop that drops them
//! could see an end of data that was not there), and can drop them.
//!
//! The same decoder, in [`DataDecoder::chunked`] mode, checks BDAT content (RFC 3030),
//! which carries no dot-stuffing and no end marker, so that both ways of sending a
//! message meet the same policy.

/// What happened to bare CR and LF in a message the decoder saw.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DataStats {
    /// LF bytes not preceded by CR.
    pub bare_lf: u64,
    /// CR bytes not followed by LF.
    pub bare_cr: u64,
    /// NUL bytes.
    pub nul: u64,
    /// Octets of decoded content, including any that went over the limit.
    pub size: u64,
}

impl DataStats {
    /// Whether the message contained a bare CR or LF.
    pub fn has_bare_line_endings(&self) -> bool {
        self.bare_lf > 0 || self.bare_cr > 0
    }
}

/// The result of one [`DataDecoder::decode`] call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decoded {
    /// Input bytes used. When `complete`, the bytes after this belong to the next
    /// command (pipelining); otherwise it is the whole input.
    pub consumed: usize,
    /// Whether `<CRLF>.<CRLF>` was seen.
    pub complete: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// At the start of a line (after CRLF, or at the start of the data).
    LineStart,
    /// Inside a line.
    Middle,
    /// Inside a line, after a CR not yet written.
    Cr,
    /// A `.` at the start of a line, not yet written.
    Dot,
    /// `.` and CR at the start of a line: LF completes the data.
    DotCr,
    /// The end of data was seen.
    Done,
}

/// Decodes the content of DATA: removes dot-stuffing and stops at `<CRLF>.<CRLF>`.
///
/// Feed it any split of the input; it writes the content, without the final `.` line,
/// to an output buffer, and writes nothing past `limit` bytes (the rest is counted in
/// [`DataStats::size`] so the server can answer `552 5.3.4` after the final dot).
///
/// ```
/// use smtp_proto::DataDecoder;
/// let mut decoder = DataDecoder::new(u64::MAX);
/// let mut body = Vec::new();
/// let input = b"Subject: hi\r\n\r\n..dot\r\nsmuggle\n.\nstill body\r\n.\r\nQUIT\r\n";
/// let result = decoder.decode(input, &mut body);
/// assert!(result.complete);
/// assert_eq!(&input[result.consumed..], b"QUIT\r\n");
/// assert_eq!(body, b"Subject: hi\r\n\r\n.dot\r\nsmuggle\n.\nstill body\r\n");
/// assert_eq!(decoder.stats().bare_lf, 2);
/// ```
#[derive(Clone, Debug)]
pub struct DataDecoder {
    state: State,
    limit: u64,
    normalize: bool,
    remove_nul: bool,
    chunked: bool,
    stats: DataStats,
}

impl DataDecoder {
    /// A decoder that keeps at most `limit` bytes of content.
    pub fn new(limit: u64) -> Self {
        Self {
            state: State::LineStart,
            limit,
            normalize: false,
            remove_nul: false,
            chunked: false,
            stats: DataStats::default(),
        }
    }

    /// A decoder for BDAT content: no dot-stuffing to remove, no end of data to find
    /// (the chunk sizes say where it ends); line endings and NUL bytes are counted and
    /// rewritten as for DATA. Call [`DataDecoder::finish`] after the last chunk.
    ///
    /// ```
    /// use smtp_proto::DataDecoder;
    /// let mut decoder = DataDecoder::chunked(u64::MAX);
    /// let mut body = Vec::new();
    /// decoder.decode(b"Subject: x\r\n\r\n.\nMAIL FROM:<a@b>\r", &mut body);
    /// decoder.decode(b"\n", &mut body);
    /// decoder.finish(&mut body);
    /// assert_eq!(body, b"Subject: x\r\n\r\n.\nMAIL FROM:<a@b>\r\n");
    /// assert_eq!(decoder.stats().bare_lf, 1);
    /// ```
    pub fn chunked(limit: u64) -> Self {
        Self {
            chunked: true,
            ..Self::new(limit)
        }
    }

    /// Writes every bare CR and bare LF as CRLF in the output. They still never end a
    /// line for dot handling, so the end of data is found exactly as without it.
    pub fn normalize_line_endings(mut self, normalize: bool) -> Self {
        self.normalize = normalize;
        self
    }

    /// Leaves NUL bytes out of the output (they are still counted).
    pub fn remove_nul_bytes(mut self, remove: bool) -> Self {
        self.remove_nul = remove;
        self
    }

    /// The end of chunked content: a CR left waiting for its LF was a bare CR.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if self.state == State::Cr {
            self.bare_cr(out);
            self.state = State::Middle;
        }
    }

    /// What the decoder has seen so far.
    pub fn stats(&self) -> DataStats {
        self.stats
    }

    /// Whether the end of data was seen.
    pub fn is_complete(&self) -> bool {
        self.state == State::Done
    }

    /// Whether more content arrived than `limit` allowed.
    pub fn is_over_limit(&self) -> bool {
        self.stats.size > self.limit
    }

    /// Decodes `input`, appending content to `out`.
    pub fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) -> Decoded {
        let mut i = 0;
        while i < input.len() {
            match self.state {
                State::Done => break,
                State::Middle => {
                    // The bulk path: whole blocks of well-formed CRLF lines with no line
                    // starting with a dot, checked and copied in one pass.
                    let rest = &input[i..];
                    let within_limit =
                        self.stats.size.saturating_add(rest.len() as u64) <= self.limit;
                    if within_limit && rest[0] != b'\n' {
                        let copied = copy_clean_blocks(rest, out);
                        // The block that stopped the copy: its clean whole lines too.
                        let clean = match rest.get(copied..copied + BLOCK + 1) {
                            Some(window) => copied + clean_lines_before_problem(window),
                            None => copied,
                        };
                        // Whole lines only; the careful path takes it from there.
                        let keep = memchr::memrchr(b'\n', &rest[..clean]).map_or(0, |n| n + 1);
                        if keep < copied {
                            out.truncate(out.len() - (copied - keep));
                        } else {
                            out.extend_from_slice(&rest[copied..keep]);
                        }
                        if keep > 0 {
                            self.stats.size += keep as u64;
                            i += keep;
                            self.state = State::LineStart;
                            continue;
                        }
                    }
                    // The careful path, one line ending (or NUL) at a time: copy up to
                    // the next CR, LF or NUL and decide what it is.
                    match memchr::memchr3(b'\r', b'\n', 0, &input[i..]) {
                        None => {
                            self.emit(&input[i..], out);
                            i = input.len();
                        }
                        Some(n) => {
                            self.emit(&input[i..i + n], out);
                            i += n;
                            match input[i] {
                                b'\r' => self.state = State::Cr,
                                b'\n' => self.bare_lf(out),
                                _ => self.nul(out),
                            }
                            i += 1;
                        }
                    }
                }
                State::LineStart => {
                    match input[i] {
                        b'.' if !self.chunked => self.state = State::Dot,
                        b'\r' => self.state = State::Cr,
                        b'\n' => {
                            self.state = State::Middle;
                            self.bare_lf(out);
                        }
                        _ => {
                            self.state = State::Middle;
                            continue;
                        }
                    }
                    i += 1;
                }
                State::Cr => {
                    if input[i] == b'\n' {
                        self.emit(b"\r\n", out);
                        self.state = State::LineStart;
                        i += 1;
                    } else {
                        self.bare_cr(out);
                        self.state = State::Middle;
                    }
                }
                State::Dot => {
                    // The leading dot of a line is removed (RFC 5321 §4.5.2), whether the
                    // client stuffed it or not.
                    if input[i] == b'\r' {
                        self.state = State::DotCr;
                        i += 1;
                    } else {
                        self.state = State::Middle;
                    }
                }
                State::DotCr => {
                    if input[i] == b'\n' {
                        self.state = State::Done;
                        i += 1;
                        break;
                    }
                    self.bare_cr(out);
                    self.state = State::Middle;
                }
            }
        }
        Decoded {
            consumed: i,
            complete: self.state == State::Done,
        }
    }

    fn emit(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        let before = self.stats.size;
        self.stats.size += bytes.len() as u64;
        if self.stats.size <= self.limit {
            out.extend_from_slice(bytes);
        } else if before < self.limit {
            let room = usize::try_from(self.limit - before).unwrap_or(bytes.len());
            out.extend_from_slice(&bytes[..room.min(bytes.len())]);
        }
    }

    fn bare_lf(&mut self, out: &mut Vec<u8>) {
        self.stats.bare_lf += 1;
        self.emit(if self.normalize { b"\r\n" } else { b"\n" }, out);
    }

    fn bare_cr(&mut self, out: &mut Vec<u8>) {
        self.stats.bare_cr += 1;
        self.emit(if self.normalize { b"\r\n" } else { b"\r" }, out);
    }

    fn nul(&mut self, out: &mut Vec<u8>) {
        self.stats.nul += 1;
        if !self.remove_nul {
            self.emit(b"\0", out);
        }
    }
}

/// Bytes checked together by the bulk path.
const BLOCK: usize = 64;

/// Copies to `out` the longest run of whole 64-byte blocks at the start of `input` in
/// which every CR is followed by an LF, every LF (but the first byte, which the caller
/// checks is not one) follows a CR, no LF is followed by a dot, and no byte is NUL.
/// Returns its length.
///
/// This runs over every byte of every message, so it is compiled twice: for the
/// baseline CPU and for AVX2, chosen at run time. Both are the same safe, branch-free
/// loop; only the instructions the compiler may vectorize it with differ.
fn copy_clean_blocks(input: &[u8], out: &mut Vec<u8>) -> usize {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        return copy_clean_blocks_avx2(input, out);
    }
    copy_clean_blocks_portable(input, out)
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
fn copy_clean_blocks_avx2(input: &[u8], out: &mut Vec<u8>) -> usize {
    #[target_feature(enable = "avx2")]
    fn compiled_for_avx2(input: &[u8], out: &mut Vec<u8>) -> usize {
        copy_clean_blocks_portable(input, out)
    }
    // SAFETY: a `target_feature` function requires only that the CPU has the feature,
    // and `is_x86_feature_detected!("avx2")` said it does.
    unsafe { compiled_for_avx2(input, out) }
}

#[inline(always)]
fn copy_clean_blocks_portable(input: &[u8], out: &mut Vec<u8>) -> usize {
    reserve_for(out, input.len());
    let mut k = 0;
    while let (Some(prev), Some(next)) = (input.get(k..k + BLOCK), input.get(k + 1..k + 1 + BLOCK))
    {
        let mut bad = 0u8;
        for (&p, &c) in prev.iter().zip(next) {
            bad |= (u8::from(p == b'\r') ^ u8::from(c == b'\n'))
                | (u8::from(p == b'\n') & u8::from(c == b'.'))
                | u8::from(p == 0);
        }
        if bad != 0 {
            break;
        }
        k += BLOCK;
    }
    out.extend_from_slice(&input[..k]);
    k
}

/// A piece of content this large (one read of a server, say) is likely followed by
/// more: see [`reserve_for`].
const LARGE_PIECE: usize = 16 * 1024;

/// Makes room in `out` for `more` bytes of content. For a [`LARGE_PIECE`] or more, half
/// as much again: a message a little longer than one read (64 KiB read, a few KB more
/// to come) then ends in the buffer its first read made, instead of being moved to a
/// larger one at its end (a `realloc` that copies everything received so far, into
/// memory the kernel must fault in). Smaller pieces, and the growth of a buffer that
/// is full, are as `Vec::reserve` makes them.
fn reserve_for(out: &mut Vec<u8>, more: usize) {
    if out.capacity() - out.len() >= more {
        return;
    }
    let extra = if more >= LARGE_PIECE { more / 2 } else { 0 };
    out.reserve(more.saturating_add(extra));
}

/// In a block the bulk path refused, the length of the clean lines before the first
/// problem: through the LF that a dot follows, or up to the last LF before a bare CR,
/// bare LF or NUL.
fn clean_lines_before_problem(window: &[u8]) -> usize {
    for j in 0..window.len() - 1 {
        let (p, c) = (window[j], window[j + 1]);
        if p == b'\n' && c == b'.' {
            return j + 1;
        }
        if (p == b'\r') != (c == b'\n') || p == 0 {
            return memchr::memrchr(b'\n', &window[..=j]).map_or(0, |n| n + 1);
        }
    }
    window.len() - 1
}

/// Encodes message content for DATA: every line ending becomes CRLF (a bare CR or bare
/// LF included), a `.` at the start of a line is doubled, and [`DataEncoder::finish`]
/// adds the terminating `.` line. No smuggling sequence can come out of it.
///
/// ```
/// use smtp_proto::DataEncoder;
/// let mut encoder = DataEncoder::default();
/// let mut wire = Vec::new();
/// encoder.encode(b".hidden\n.\r\nend", &mut wire);
/// encoder.finish(&mut wire);
/// assert_eq!(wire, b"..hidden\r\n..\r\nend\r\n.\r\n");
/// ```
#[derive(Clone, Debug)]
pub struct DataEncoder {
    line_start: bool,
    pending_cr: bool,
}

impl Default for DataEncoder {
    fn default() -> Self {
        Self {
            line_start: true,
            pending_cr: false,
        }
    }
}

impl DataEncoder {
    /// Encodes a piece of the message onto `out`.
    pub fn encode(&mut self, input: &[u8], out: &mut Vec<u8>) {
        out.reserve(input.len() + input.len() / 64 + 8);
        let mut i = 0;
        while i < input.len() {
            if self.pending_cr {
                self.pending_cr = false;
                out.extend_from_slice(b"\r\n");
                self.line_start = true;
                if input[i] == b'\n' {
                    i += 1;
                    continue;
                }
            }
            if self.line_start {
                self.line_start = false;
                if input[i] == b'.' {
                    out.push(b'.');
                }
            }
            match memchr::memchr2(b'\r', b'\n', &input[i..]) {
                None => {
                    out.extend_from_slice(&input[i..]);
                    return;
                }
                Some(n) => {
                    out.extend_from_slice(&input[i..i + n]);
                    i += n;
                    if input[i] == b'\r' {
                        self.pending_cr = true;
                    } else {
                        out.extend_from_slice(b"\r\n");
                        self.line_start = true;
                    }
                    i += 1;
                }
            }
        }
    }

    /// Ends the last line if needed and writes the terminating `.` line.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if self.pending_cr || !self.line_start {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
        *self = Self::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(input: &[u8]) -> (Vec<u8>, Decoded, DataStats) {
        let mut decoder = DataDecoder::new(u64::MAX);
        let mut out = Vec::new();
        let d = decoder.decode(input, &mut out);
        (out, d, decoder.stats())
    }

    #[test]
    fn decodes_rfc_examples() {
        let table: &[(&[u8], &[u8], usize)] = &[
            (b".\r\n", b"", 3),
            (b"a\r\n.\r\n", b"a\r\n", 6),
            (
                b"Subject: d\r\n\r\n..leading\r\n..\r\n.\r\n",
                b"Subject: d\r\n\r\n.leading\r\n.\r\n",
                32,
            ),
            (b"x\r\n.notstuffed\r\n.\r\n", b"x\r\nnotstuffed\r\n", 19),
            (b"last line.\r\n.\r\nQUIT\r\n", b"last line.\r\n", 15),
            (b"a\x00b\r\n.\r\n", b"a\x00b\r\n", 8),
        ];
        for (input, body, consumed) in table {
            let (out, d, _) = decode_all(input);
            assert!(d.complete, "{:?}", String::from_utf8_lossy(input));
            assert_eq!(out, *body, "{:?}", String::from_utf8_lossy(input));
            assert_eq!(d.consumed, *consumed);
        }
    }

    #[test]
    fn bare_line_endings_never_end_data() {
        for seq in [
            &b"\n.\n"[..],
            b"\r.\r",
            b"\r.\n",
            b"\n.\r",
            b"\n.\r\n",
            b"\r\n.\n",
            b"\r.\r\n",
            b"\r\n.\r",
            b"\r\n\x00.\r\n",
            b"\r\n.\x00\r\n",
            b"\r\n.\r\r\n",
        ] {
            let input = [b"Subject: t\r\n\r\nfirst", seq, b"MAIL FROM:<x@y>\r\n"].concat();
            let (out, d, stats) = decode_all(&input);
            assert!(!d.complete, "{seq:?}");
            assert_eq!(d.consumed, input.len());
            let has_bare = stats.has_bare_line_endings();
            let nul = seq.contains(&0);
            assert!(has_bare || nul, "{seq:?} {stats:?}");
            assert!(out.ends_with(b"MAIL FROM:<x@y>\r\n"));
        }
    }

    #[test]
    fn normalizes_when_asked() {
        let mut decoder = DataDecoder::new(u64::MAX).normalize_line_endings(true);
        let mut out = Vec::new();
        let d = decoder.decode(b"From: x@y\nBcc: z\r\nab\rcd\r\n\n.\nx\r\n.\r\n", &mut out);
        assert!(d.complete);
        assert_eq!(out, b"From: x@y\r\nBcc: z\r\nab\r\ncd\r\n\r\n.\r\nx\r\n");
        assert_eq!((decoder.stats().bare_lf, decoder.stats().bare_cr), (3, 1));
    }

    #[test]
    fn nul_bytes_are_counted_and_removed_when_asked() {
        let input = [
            b"Subject: n\r\n\r\na\x00b\r\n\x00.\r\n".as_slice(),
            &[b'y'; 200],
            b"\x00\r\n.\r\n",
        ]
        .concat();
        let (kept, d, stats) = decode_all(&input);
        assert!(d.complete);
        assert_eq!(stats.nul, 3);
        assert_eq!(kept.iter().filter(|&&b| b == 0).count(), 3);
        let mut decoder = DataDecoder::new(u64::MAX).remove_nul_bytes(true);
        let mut out = Vec::new();
        assert!(decoder.decode(&input, &mut out).complete);
        assert_eq!(decoder.stats().nul, 3);
        let expected = [
            b"Subject: n\r\n\r\nab\r\n.\r\n".as_slice(),
            &[b'y'; 200],
            b"\r\n",
        ]
        .concat();
        assert_eq!(out, expected);
    }

    #[test]
    fn chunked_content_keeps_dots_and_counts_what_data_would() {
        let mut decoder = DataDecoder::chunked(u64::MAX);
        let mut out = Vec::new();
        let d = decoder.decode(b"a\r\n.\r\n..\nb\x00\r", &mut out);
        assert_eq!((d.consumed, d.complete), (12, false));
        decoder.finish(&mut out);
        assert_eq!(out, b"a\r\n.\r\n..\nb\x00\r");
        let stats = decoder.stats();
        assert_eq!((stats.bare_lf, stats.bare_cr, stats.nul), (1, 1, 1));
        // A CRLF split between chunks is no bare line ending.
        let mut decoder = DataDecoder::chunked(u64::MAX).normalize_line_endings(true);
        let mut out = Vec::new();
        decoder.decode(b"x\r", &mut out);
        decoder.decode(b"\ny\n", &mut out);
        decoder.finish(&mut out);
        assert_eq!(out, b"x\r\ny\r\n");
        assert_eq!(decoder.stats().bare_lf, 1);
    }

    #[test]
    fn limit_keeps_scanning() {
        let mut decoder = DataDecoder::new(10);
        let mut out = Vec::new();
        let input = [vec![b'x'; 100], b"\r\n.\r\nNOOP\r\n".to_vec()].concat();
        let d = decoder.decode(&input, &mut out);
        assert!(d.complete && decoder.is_over_limit());
        assert_eq!(out.len(), 10);
        assert_eq!(decoder.stats().size, 102);
        assert_eq!(&input[d.consumed..], b"NOOP\r\n");
    }

    #[test]
    fn split_anywhere() {
        let input = b"a\r\n..b\r\n.c\rd\ne\r\n\r\n.\r\nNOOP\r\n";
        let (whole, d, _) = decode_all(input);
        for split in 0..=d.consumed {
            let mut decoder = DataDecoder::new(u64::MAX);
            let mut out = Vec::new();
            let first = decoder.decode(&input[..split], &mut out);
            assert_eq!(first.consumed, split);
            let second = decoder.decode(&input[split..], &mut out);
            assert!(second.complete);
            assert_eq!(split + second.consumed, d.consumed);
            assert_eq!(out, whole, "split at {split}");
        }
    }

    /// A message a little longer than its first large read ends in the buffer that
    /// read made (no move to a larger one), and comes out as it went in.
    #[test]
    fn a_message_a_little_longer_than_one_read_stays_in_its_first_buffer() {
        let line = b"0123456789012345678901234567890123456789012345678901234567890123456789\r\n";
        let body: Vec<u8> = line
            .iter()
            .copied()
            .cycle()
            .take(line.len() * 950)
            .collect();
        let wire = [body.as_slice(), b".\r\n"].concat();
        let (first, rest) = wire.split_at(64 * 1024);
        let mut decoder = DataDecoder::new(u64::MAX);
        let mut out = Vec::new();
        assert!(!decoder.decode(first, &mut out).complete);
        let (buffer, capacity) = (out.as_ptr(), out.capacity());
        assert!(decoder.decode(rest, &mut out).complete);
        assert_eq!(out.capacity(), capacity, "grown");
        assert_eq!(out.as_ptr(), buffer, "moved to a larger buffer");
        assert!(out == body);
    }

    #[test]
    fn encoder_stuffs_and_normalizes() {
        let table: &[(&[u8], &[u8])] = &[
            (b"", b".\r\n"),
            (b"a", b"a\r\n.\r\n"),
            (b"a\r\n", b"a\r\n.\r\n"),
            (b".", b"..\r\n.\r\n"),
            (b"..x\r\n.\r\n", b"...x\r\n..\r\n.\r\n"),
            (b"a\n.\nb", b"a\r\n..\r\nb\r\n.\r\n"),
            (b"a\r.\rb", b"a\r\n..\r\nb\r\n.\r\n"),
            (b"x\r\n.\r\r\ny", b"x\r\n..\r\n\r\ny\r\n.\r\n"),
            (b"x\r\r\n.\r\r\n", b"x\r\n\r\n..\r\n\r\n.\r\n"),
            (b"end\r", b"end\r\n.\r\n"),
        ];
        for (input, wire) in table {
            let mut encoder = DataEncoder::default();
            let mut out = Vec::new();
            encoder.encode(input, &mut out);
            encoder.finish(&mut out);
            assert_eq!(out, *wire, "{:?}", String::from_utf8_lossy(input));
            // Byte by byte gives the same.
            let mut out2 = Vec::new();
            for b in input.iter() {
                encoder.encode(std::slice::from_ref(b), &mut out2);
            }
            encoder.finish(&mut out2);
            assert_eq!(out2, *wire);
        }
    }

    #[test]
    fn encode_then_decode_round_trips_crlf_text() {
        let body = b"Subject: x\r\n\r\n.a\r\n..\r\n.\r\nend\r\n";
        let mut wire = Vec::new();
        let mut encoder = DataEncoder::default();
        encoder.encode(body, &mut wire);
        encoder.finish(&mut wire);
        let (out, d, stats) = decode_all(&wire);
        assert!(d.complete && d.consumed == wire.len());
        assert_eq!(out, body);
        assert!(!stats.has_bare_line_endings());
    }
}
