//! Header fields of a message, edited in place: the helpers behind the rspamd filter's
//! header removal and subject rewriting. Pure functions over bytes.

use std::ops::Range;

/// What to do with one header field.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Edit {
    /// Leave it.
    Keep,
    /// Take it out.
    Remove,
    /// Put these bytes (a whole field, CRLF included) in its place.
    Replace(Vec<u8>),
}

/// One header field: its name and where it is (continuation lines and line end
/// included).
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Field {
    pub(super) name: String,
    pub(super) range: Range<usize>,
}

/// The header fields of `message`, up to the empty line (or the first line that is
/// neither a field nor a continuation).
pub(super) fn fields(message: &[u8]) -> Vec<Field> {
    let mut out: Vec<Field> = Vec::new();
    let mut pos = 0;
    while pos < message.len() {
        let end = message[pos..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(message.len(), |n| pos + n + 1);
        let line = &message[pos..end];
        if line == b"\r\n" || line == b"\n" {
            break;
        }
        if matches!(line.first(), Some(b' ' | b'\t')) {
            match out.last_mut() {
                Some(field) => field.range.end = end,
                None => break,
            }
        } else {
            let Some(colon) = line.iter().position(|&b| b == b':') else {
                break;
            };
            let name = String::from_utf8_lossy(&line[..colon]).trim().to_owned();
            out.push(Field {
                name,
                range: pos..end,
            });
        }
        pos = end;
    }
    out
}

/// `message` with its header fields edited by `decide`, which sees each field's name,
/// its position among the fields of that name (1-based) and how many there are; `None`
/// when nothing changed.
pub(super) fn edit(
    message: &[u8],
    mut decide: impl FnMut(&str, usize, usize) -> Edit,
) -> Option<Vec<u8>> {
    let fields = fields(message);
    let mut edits = Vec::new();
    for (i, field) in fields.iter().enumerate() {
        let same = |f: &Field| f.name.eq_ignore_ascii_case(&field.name);
        let nth = fields[..=i].iter().filter(|f| same(f)).count();
        let count = fields.iter().filter(|f| same(f)).count();
        match decide(&field.name, nth, count) {
            Edit::Keep => {}
            edit => edits.push((field.range.clone(), edit)),
        }
    }
    if edits.is_empty() {
        return None;
    }
    let mut out = Vec::with_capacity(message.len() + 128);
    let mut pos = 0;
    for (range, edit) in edits {
        out.extend_from_slice(&message[pos..range.start]);
        if let Edit::Replace(bytes) = edit {
            out.extend_from_slice(&bytes);
        }
        pos = range.end;
    }
    out.extend_from_slice(&message[pos..]);
    Some(out)
}

/// Whether `name` is a field name (RFC 5322 §2.2: printable ASCII but the colon).
pub(super) fn is_field_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| (33..=126).contains(&b) && b != b':')
}

/// A field value made safe to write: control characters become spaces, and every line
/// after the first starts with white space (a folded line, never a new field).
pub(super) fn fold_safe(value: &str) -> String {
    let value = value.replace("\r\n", "\n");
    let mut out = String::with_capacity(value.len());
    for (i, line) in value.split('\n').enumerate() {
        let line = line.trim_end_matches('\r');
        if i > 0 {
            if line.trim().is_empty() {
                continue;
            }
            out.push_str("\r\n");
            if !line.starts_with([' ', '\t']) {
                out.push('\t');
            }
        }
        out.extend(
            line.chars()
                .map(|c| if c.is_control() && c != '\t' { ' ' } else { c }),
        );
    }
    out
}

/// A `Subject:` field (CRLF included) with `text`, as RFC 2047 encoded words (`Q`,
/// UTF-8) when it is not plain ASCII.
pub(super) fn subject_field(text: &str) -> Vec<u8> {
    let text: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let mut out = b"Subject: ".to_vec();
    if text.is_ascii() {
        out.extend_from_slice(text.as_bytes());
    } else {
        out.extend_from_slice(encode_words(&text, out.len()).as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// RFC 2047 `Q` encoded words of UTF-8 text, each at most 75 characters, folded so
/// that no line is longer than 78 (the first starts after `indent` characters).
fn encode_words(text: &str, indent: usize) -> String {
    const START: &str = "=?UTF-8?Q?";
    const MAX: usize = 75 - START.len() - 2;
    let mut max = MAX
        .min(78usize.saturating_sub(START.len() + 2 + indent))
        .max(12);
    let mut words = Vec::new();
    let mut word = String::new();
    for c in text.chars() {
        let mut encoded = String::new();
        if c == ' ' {
            encoded.push('_');
        } else if c.is_ascii_alphanumeric() || "!*+-/".contains(c) {
            encoded.push(c);
        } else {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                encoded.push_str(&format!("={b:02X}"));
            }
        }
        if word.len() + encoded.len() > max && !word.is_empty() {
            words.push(std::mem::take(&mut word));
            max = MAX;
        }
        word.push_str(&encoded);
    }
    words.push(word);
    words
        .iter()
        .map(|w| format!("{START}{w}?="))
        .collect::<Vec<_>>()
        .join("\r\n ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const MESSAGE: &[u8] = b"X-Spam: yes\r\nSubject: hi\r\n there\r\nX-Spam-Status: No,\r\n\tscore=0\r\nx-spam: again\r\n\r\nX-Spam: body\r\n";

    #[test]
    fn fields_stop_at_the_body() {
        let names: Vec<_> = fields(MESSAGE).into_iter().map(|f| f.name).collect();
        assert_eq!(names, ["X-Spam", "Subject", "X-Spam-Status", "x-spam"]);
        assert_eq!(fields(b"no header here\r\n\r\n"), []);
        assert_eq!(fields(b"A: 1\nB: 2\n\nbody").len(), 2);
    }

    #[test]
    fn edits_remove_and_replace_fields() {
        let stripped = edit(MESSAGE, |name, _, _| {
            if name.eq_ignore_ascii_case("x-spam") || name.eq_ignore_ascii_case("x-spam-status") {
                Edit::Remove
            } else {
                Edit::Keep
            }
        });
        assert_eq!(
            stripped.as_deref(),
            Some(&b"Subject: hi\r\n there\r\n\r\nX-Spam: body\r\n"[..])
        );
        let last_only = edit(MESSAGE, |name, nth, count| {
            if name.eq_ignore_ascii_case("x-spam") && nth == count {
                Edit::Remove
            } else {
                Edit::Keep
            }
        });
        assert!(!String::from_utf8_lossy(&last_only.unwrap()).contains("again"));
        let subject = edit(MESSAGE, |name, _, _| match name {
            "Subject" => Edit::Replace(subject_field("[SPAM] hi")),
            _ => Edit::Keep,
        });
        assert!(
            subject
                .unwrap()
                .starts_with(b"X-Spam: yes\r\nSubject: [SPAM] hi\r\nX-Spam-Status")
        );
        assert_eq!(edit(MESSAGE, |_, _, _| Edit::Keep), None);
    }

    #[test]
    fn values_cannot_break_the_header() {
        assert_eq!(fold_safe("a\nb"), "a\r\n\tb");
        assert_eq!(fold_safe("a\r\n b\r\n"), "a\r\n b");
        assert_eq!(fold_safe("a\rb\0c"), "a b c");
        assert!(is_field_name("X-Spam"));
        assert!(!is_field_name("X Spam") && !is_field_name("") && !is_field_name("a:b"));
    }

    #[test]
    fn subjects_are_encoded_when_not_ascii() {
        assert_eq!(
            subject_field("***SPAM*** hi"),
            b"Subject: ***SPAM*** hi\r\n"
        );
        assert_eq!(
            subject_field("***SPAM*** héllo"),
            b"Subject: =?UTF-8?Q?***SPAM***_h=C3=A9llo?=\r\n"
        );
        let long = subject_field(&"é".repeat(40));
        let text = String::from_utf8(long).unwrap();
        assert!(text.lines().all(|l| l.len() <= 78), "{text}");
        assert_eq!(text.matches("=?UTF-8?Q?").count(), 5, "{text}");
    }
}
