//! Input layout shared by the targets that feed data in pieces:
//!
//! ```text
//! [flags] [n] [n chunk sizes, n = byte % 16] [payload ...]
//! ```
//!
//! `flags` is for the target to interpret. The chunk sizes (0 to 255 bytes each, an
//! empty piece included) are used in turn, cycling, until the payload is used up; no
//! sizes means the payload in one piece. A seed made of `\x00\x00` and a transcript is
//! "all flags off, one piece".

/// The parsed layout: flags, chunk sizes and payload.
pub struct Split<'a> {
    pub flags: u8,
    pub sizes: &'a [u8],
    pub payload: &'a [u8],
}

impl<'a> Split<'a> {
    /// Splits an input; a too-short input is all payload with no flags.
    pub fn new(data: &'a [u8]) -> Self {
        let (flags, rest) = match data.split_first() {
            Some((f, rest)) => (*f, rest),
            None => (0, data),
        };
        let (n, rest) = match rest.split_first() {
            Some((n, rest)) => (usize::from(*n % 16), rest),
            None => (0, rest),
        };
        let n = n.min(rest.len());
        let (sizes, payload) = rest.split_at(n);
        Self {
            flags,
            sizes,
            payload,
        }
    }

    /// The payload in pieces.
    pub fn chunks(&self) -> Vec<&'a [u8]> {
        chunks(self.sizes, self.payload)
    }
}

/// Cuts `payload` into pieces of the given sizes, cycling; the last piece takes what
/// is left. Pieces may be empty, but a whole cycle of zero sizes ends the cutting.
pub fn chunks<'a>(sizes: &[u8], payload: &'a [u8]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut rest = payload;
    if sizes.is_empty() {
        out.push(rest);
        return out;
    }
    let mut zero_run = 0;
    for &size in sizes.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let size = usize::from(size);
        if size == 0 {
            zero_run += 1;
            if zero_run > sizes.len() {
                break;
            }
        } else {
            zero_run = 0;
        }
        let (piece, tail) = rest.split_at(size.min(rest.len()));
        out.push(piece);
        rest = tail;
    }
    if !rest.is_empty() {
        out.push(rest);
    }
    out
}
