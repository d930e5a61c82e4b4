//! Header-section edits: removing `Authentication-Results` fields that claim to be
//! ours (RFC 8601 §5), and finding the author domain for signing.

/// Each header field of `message`'s header section: (name, the whole field with its
/// folded lines and final line break, as a byte range).
pub(crate) fn fields(message: &[u8]) -> Vec<(&[u8], std::ops::Range<usize>)> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < message.len() {
        let rest = &message[pos..];
        if rest.starts_with(b"\r\n") || rest.starts_with(b"\n") {
            break;
        }
        // The field runs to the first line break not followed by WSP (unfolded end).
        let mut end = pos;
        loop {
            match memchr_lf(&message[end..]) {
                Some(lf) => {
                    end += lf + 1;
                    if !matches!(message.get(end), Some(b' ' | b'\t')) {
                        break;
                    }
                }
                None => {
                    end = message.len();
                    break;
                }
            }
        }
        let field = &message[pos..end];
        let name = field
            .iter()
            .position(|&b| b == b':')
            .map_or(&field[..0], |colon| trim(&field[..colon]));
        out.push((name, pos..end));
        pos = end;
    }
    out
}

fn memchr_lf(bytes: &[u8]) -> Option<usize> {
    bytes.iter().position(|&b| b == b'\n')
}

fn trim(bytes: &[u8]) -> &[u8] {
    bytes.trim_ascii()
}

/// The authserv-id of an `Authentication-Results` value: its first token, after any
/// comments (RFC 8601 §2.2, §2.5).
fn authserv_id(value: &[u8]) -> String {
    let mut depth = 0u32;
    let mut id = String::new();
    for &b in value {
        match b {
            b'(' => depth += 1,
            b')' if depth > 0 => depth -= 1,
            _ if depth > 0 => {}
            b';' => break,
            b' ' | b'\t' | b'\r' | b'\n' if id.is_empty() => {}
            b' ' | b'\t' | b'\r' | b'\n' => break,
            _ => id.push(char::from(b)),
        }
    }
    id.trim_matches('"').to_ascii_lowercase()
}

/// `message` without the `Authentication-Results` fields whose authserv-id is
/// `our_id`, as RFC 8601 §5 asks of a border MTA; `None` when there are none.
///
/// ```
/// let message = b"Authentication-Results: mx.example.net; spf=pass\r\n\
///                 Authentication-Results: other.example; dkim=pass\r\nSubject: x\r\n\r\nbody\r\n";
/// let cleaned = auth_checks::remove_our_results(message, "MX.example.net").unwrap();
/// assert_eq!(cleaned, b"Authentication-Results: other.example; dkim=pass\r\nSubject: x\r\n\r\nbody\r\n");
/// ```
pub fn remove_our_results(message: &[u8], our_id: &str) -> Option<Vec<u8>> {
    let our_id = our_id.trim_end_matches('.').to_ascii_lowercase();
    let drop: Vec<std::ops::Range<usize>> = fields(message)
        .into_iter()
        .filter(|(name, range)| {
            name.eq_ignore_ascii_case(b"Authentication-Results") && {
                let field = &message[range.clone()];
                let colon = field.iter().position(|&b| b == b':').unwrap_or(0);
                authserv_id(&field[colon + 1..]).trim_end_matches('.') == our_id
            }
        })
        .map(|(_, range)| range)
        .collect();
    if drop.is_empty() {
        return None;
    }
    let mut out = Vec::with_capacity(message.len());
    let mut pos = 0;
    for range in drop {
        out.extend_from_slice(&message[pos..range.start]);
        pos = range.end;
    }
    out.extend_from_slice(&message[pos..]);
    Some(out)
}

/// The names of the fields in `message`'s header section, in order.
pub(crate) fn field_names(message: &[u8]) -> Vec<&[u8]> {
    fields(message).into_iter().map(|(name, _)| name).collect()
}

/// The domain of the first address in the `From` field, lower-cased.
#[cfg(feature = "layers")]
pub(crate) fn from_domain(message: &[u8]) -> Option<String> {
    let (_, range) = fields(message)
        .into_iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(b"From"))?;
    let field = String::from_utf8_lossy(&message[range]).into_owned();
    let value = field.split_once(':')?.1;
    // The address is inside <...> when there is a display name; otherwise the value.
    let address = match (value.find('<'), value.find('>')) {
        (Some(a), Some(b)) if a < b => &value[a + 1..b],
        _ => value.split(',').next().unwrap_or(value),
    };
    let domain = address.rsplit_once('@')?.1;
    let domain = domain
        .trim()
        .trim_end_matches(|c: char| c == '>' || c.is_whitespace())
        .trim_end_matches('.');
    (!domain.is_empty()).then(|| domain.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folded_and_commented_results() {
        let message = b"Received: by x\r\nAuthentication-Results: (forged)\r\n mx.example.net;\r\n\tspf=pass\r\nAuthentication-Results: mx.example.net.evil; none\r\nSubject: hi\r\n\r\nAuthentication-Results: mx.example.net; in the body\r\n";
        let cleaned = remove_our_results(message, "mx.example.net").unwrap_or_default();
        assert_eq!(
            cleaned,
            b"Received: by x\r\nAuthentication-Results: mx.example.net.evil; none\r\nSubject: hi\r\n\r\nAuthentication-Results: mx.example.net; in the body\r\n"
        );
        assert_eq!(
            remove_our_results(b"Subject: x\r\n\r\n", "mx.example.net"),
            None
        );
    }

    #[cfg(feature = "layers")]
    #[test]
    fn author_domain() {
        assert_eq!(
            from_domain(b"From: Alice <alice@Example.ORG>\r\n\r\n").as_deref(),
            Some("example.org")
        );
        assert_eq!(
            from_domain(b"Subject: x\r\nfrom: bob@example.net\r\n\r\n").as_deref(),
            Some("example.net")
        );
        assert_eq!(from_domain(b"From: nobody\r\n\r\n"), None);
        assert_eq!(from_domain(b"Subject: x\r\n\r\nFrom: a@b.c\r\n"), None);
    }
}
