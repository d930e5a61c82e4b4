//! The message as a milter sees it and changes it, without I/O: header fields one by
//! one, the body, and the header changes of end of body applied in order.

use std::ops::Range;

/// One header field: its name, its value for the milter, and its bytes as they will be
/// stored (kept as they came unless changed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Field {
    /// The name, as written (without the colon).
    pub(crate) name: Vec<u8>,
    /// The value after the colon, leading white space included, folded lines joined
    /// by LF, without the final line ending.
    pub(crate) value: Vec<u8>,
    /// The field's lines as stored, CRLF included.
    pub(crate) raw: Vec<u8>,
}

impl Field {
    /// A new field, as a milter gives it: `value` with LF or CRLF between folded lines;
    /// with `leading_space`, the value carries its own leading white space.
    pub(crate) fn new(name: &str, value: &[u8], leading_space: bool) -> Self {
        let mut raw = Vec::with_capacity(name.len() + value.len() + 4);
        raw.extend_from_slice(name.as_bytes());
        raw.push(b':');
        if !leading_space {
            raw.push(b' ');
        }
        // CRLF or LF between folded lines; a CR on its own is not a line ending.
        let mut i = 0;
        while i < value.len() {
            match value[i] {
                b'\r' if value.get(i + 1) == Some(&b'\n') => {}
                b'\r' => raw.push(b' '),
                b'\n' => raw.extend_from_slice(b"\r\n"),
                b => raw.push(b),
            }
            i += 1;
        }
        while raw.ends_with(b"\r\n") {
            raw.truncate(raw.len() - 2);
        }
        raw.extend_from_slice(b"\r\n");
        let mut value = value.to_vec();
        if !leading_space {
            value.insert(0, b' ');
        }
        Self {
            name: name.as_bytes().to_vec(),
            value,
            raw,
        }
    }

    /// The value as sent to the milter: folded lines joined by LF; without
    /// `leading_space`, the white space after the colon removed.
    pub(crate) fn milter_value(&self, leading_space: bool) -> Vec<u8> {
        let mut value = self.value.as_slice();
        if !leading_space {
            while let [b' ' | b'\t', rest @ ..] = value {
                value = rest;
            }
        }
        let mut out = Vec::with_capacity(value.len());
        let mut i = 0;
        while i < value.len() {
            if value[i] == b'\r' && value.get(i + 1) == Some(&b'\n') {
                i += 1;
                continue;
            }
            out.push(value[i]);
            i += 1;
        }
        out
    }
}

/// The header of a message split into fields, and where its body starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Header {
    /// The fields, in order: those filters added, then the client's.
    pub(crate) fields: Vec<Field>,
    /// In the client's bytes: the separator line and the body after it (an empty range
    /// at the end when there is neither).
    pub(crate) rest: Range<usize>,
    /// In the client's bytes: where the body starts (after the separator line).
    pub(crate) body_start: usize,
    /// Whether a field was changed, added or removed.
    pub(crate) changed: bool,
}

impl Header {
    /// Splits `added` (whole fields) and the header of `message`.
    pub(crate) fn parse(added: &[u8], message: &[u8]) -> Self {
        let mut fields = Vec::new();
        let _ = split_fields(added, &mut fields);
        let (rest_start, body_start) = split_fields(message, &mut fields);
        Self {
            fields,
            rest: rest_start..message.len(),
            body_start,
            changed: false,
        }
    }

    /// Adds a field at the end of the header (`SMFIR_ADDHEADER`).
    pub(crate) fn add(&mut self, field: Field) {
        self.fields.push(field);
        self.changed = true;
    }

    /// Inserts a field at `index` (0: first), or at the end (`SMFIR_INSHEADER`).
    pub(crate) fn insert(&mut self, index: usize, field: Field) {
        let index = index.min(self.fields.len());
        self.fields.insert(index, field);
        self.changed = true;
    }

    /// Replaces the `index`th field (from 1) called `name`, any case; an empty value
    /// removes it; a field that is not there is added (`SMFIR_CHGHEADER`).
    pub(crate) fn change(&mut self, index: usize, field: Field) {
        let empty = field.milter_value(false).is_empty();
        let position = self
            .fields
            .iter()
            .enumerate()
            .filter(|(_, f)| f.name.eq_ignore_ascii_case(&field.name))
            .nth(index.max(1) - 1)
            .map(|(i, _)| i);
        match (position, empty) {
            (Some(i), true) => {
                self.fields.remove(i);
            }
            (Some(i), false) => self.fields[i] = field,
            (None, true) => return,
            (None, false) => self.fields.push(field),
        }
        self.changed = true;
    }

    /// The header fields as stored, one after another.
    pub(crate) fn write_fields(&self, out: &mut Vec<u8>) {
        for field in &self.fields {
            out.extend_from_slice(&field.raw);
        }
    }
}

/// Splits the fields at the start of `bytes` into `fields`; returns where the rest
/// starts (the separator line, or the first line that is not a field) and where the
/// body starts (after the separator line).
fn split_fields(bytes: &[u8], fields: &mut Vec<Field>) -> (usize, usize) {
    let mut pos = 0;
    while pos < bytes.len() {
        let end = bytes[pos..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(bytes.len(), |i| pos + i + 1);
        let line = &bytes[pos..end];
        let content = line
            .strip_suffix(b"\n")
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
            .unwrap_or(line);
        if content.is_empty() {
            // The separator line.
            return (pos, end);
        }
        let continuation = matches!(content.first(), Some(b' ' | b'\t'));
        match fields.last_mut() {
            Some(field) if continuation => {
                field.value.extend_from_slice(b"\r\n");
                field.value.extend_from_slice(content);
                field.raw.extend_from_slice(line);
            }
            _ => {
                let Some(colon) = content.iter().position(|&b| b == b':') else {
                    // Not a field: the header ends here, without a separator.
                    return (pos, pos);
                };
                if continuation || colon == 0 {
                    return (pos, pos);
                }
                fields.push(Field {
                    name: content[..colon].trim_ascii_end().to_vec(),
                    value: content[colon + 1..].to_vec(),
                    raw: line.to_vec(),
                });
            }
        }
        pos = end;
    }
    (bytes.len(), bytes.len())
}

/// `bytes` with every line ending a CRLF (a milter may send bare LFs).
pub(crate) fn crlf(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + bytes.len() / 32);
    let mut prev = 0u8;
    for &b in bytes {
        if b == b'\n' && prev != b'\r' {
            out.push(b'\r');
        }
        out.push(b);
        prev = b;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_split_and_kept_byte_for_byte() {
        let added = b"Received: from x\r\n\tby y\r\n";
        let message = b"Subject:  two  spaces\r\nTo: a@b.test\r\n\r\nbody\r\n";
        let header = Header::parse(added, message);
        let names: Vec<_> = header.fields.iter().map(|f| f.name.clone()).collect();
        assert_eq!(names, [&b"Received"[..], b"Subject", b"To"]);
        assert_eq!(header.fields[0].milter_value(false), b"from x\n\tby y");
        assert_eq!(header.fields[1].milter_value(false), b"two  spaces");
        assert_eq!(header.fields[1].milter_value(true), b"  two  spaces");
        assert_eq!(&message[header.rest.clone()], b"\r\nbody\r\n");
        assert_eq!(&message[header.body_start..], b"body\r\n");
        let mut out = Vec::new();
        header.write_fields(&mut out);
        out.extend_from_slice(&message[header.rest.clone()]);
        let mut whole = added.to_vec();
        whole.extend_from_slice(message);
        assert_eq!(out, whole);
    }

    #[test]
    fn headers_without_body_or_separator() {
        let h = Header::parse(b"", b"Subject: x\r\n");
        assert_eq!(h.fields.len(), 1);
        assert_eq!(h.rest, 12..12);
        assert_eq!(h.body_start, 12);
        let h = Header::parse(b"", b"not a header line\r\nmore\r\n");
        assert!(h.fields.is_empty());
        assert_eq!(h.rest, 0..25);
        assert_eq!(h.body_start, 0);
        let h = Header::parse(b"", b"");
        assert!(h.fields.is_empty());
    }

    #[test]
    fn changes_follow_libmilter() {
        let message = b"Subject: a\r\nX-T: 1\r\nx-t: 2\r\n\r\n";
        let mut h = Header::parse(b"", message);
        h.change(2, Field::new("X-T", b"two", false));
        assert_eq!(h.fields[2].raw, b"X-T: two\r\n");
        h.change(1, Field::new("X-T", b"", false));
        assert_eq!(h.fields.len(), 2, "an empty value deletes");
        h.change(5, Field::new("X-New", b"v", false));
        assert_eq!(h.fields[2].raw, b"X-New: v\r\n", "a missing field is added");
        h.insert(0, Field::new("DKIM-Signature", b" v=1;\n\tb=x", true));
        assert_eq!(h.fields[0].raw, b"DKIM-Signature: v=1;\r\n\tb=x\r\n");
        h.insert(99, Field::new("Last", b"z", false));
        assert_eq!(
            h.fields.last().map(|f| f.raw.clone()),
            Some(b"Last: z\r\n".to_vec())
        );
        h.add(Field::new("X-Added", b"a\r\n b", false));
        assert_eq!(
            h.fields.last().map(|f| f.raw.clone()),
            Some(b"X-Added: a\r\n b\r\n".to_vec())
        );
        assert!(h.changed);
        assert_eq!(crlf(b"a\nb\r\nc"), b"a\r\nb\r\nc");
    }
}
