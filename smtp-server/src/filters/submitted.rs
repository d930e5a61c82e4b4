//! `Date:` and `Message-ID:` for submitted mail that lacks them (RFC 6409 §8.2, §8.3).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::{Check, DataRequest, Decision};

/// Adds the `Date:` and `Message-ID:` fields RFC 5322 requires to a message from an
/// authenticated client that lacks them, as a submission server may (RFC 6409 §8.2,
/// §8.3) and Postfix does. Mail from clients that have not logged in (relayed from
/// outside) is left as it is.
///
/// ```
/// use smtp_server::filters::SubmittedHeaders;
/// let layer = smtp_server::filter(SubmittedHeaders::new("mx.example.test"));
/// # let _ = layer;
/// ```
#[derive(Clone, Debug)]
pub struct SubmittedHeaders {
    hostname: String,
}

impl SubmittedHeaders {
    /// `hostname` is the right-hand side of the message ids it makes.
    pub fn new(hostname: &str) -> Self {
        Self {
            hostname: hostname.into(),
        }
    }
}

/// Makes message ids unique within this process.
static SEQUENCE: AtomicU64 = AtomicU64::new(0);

impl Check<DataRequest> for SubmittedHeaders {
    fn check(&self, req: &mut DataRequest) -> Option<Decision> {
        req.session.authenticated.as_ref()?;
        let (date, id) = (
            has_field(&req.body, "Date"),
            has_field(&req.body, "Message-ID"),
        );
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        // Added first, so they end up right above the client's own header fields,
        // below the trace fields the later layers add.
        if !id {
            let n = SEQUENCE.fetch_add(1, Ordering::Relaxed);
            let value = format!(
                "<{}.{:x}.{}.{n}@{}>",
                now.as_secs(),
                now.subsec_nanos(),
                req.session.id,
                self.hostname
            );
            req.prepend_header("Message-ID", &value);
        }
        if !date {
            req.prepend_header("Date", &smtp_proto::rfc5322_date(UNIX_EPOCH + now));
        }
        None
    }
}

/// Whether the header section of `message` has a field called `name` (any case).
pub(crate) fn has_field(message: &[u8], name: &str) -> bool {
    for line in message.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            return false;
        }
        if let Some(colon) = line.iter().position(|&b| b == b':') {
            let field = line[..colon].trim_ascii_end();
            if field.eq_ignore_ascii_case(name.as_bytes()) {
                return true;
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::has_field;

    #[test]
    fn fields_of_the_header_only() {
        let m = b"Subject: x\r\nmessage-id: <a@b>\r\n\tfolded\r\n\r\nDate: in the body\r\n";
        assert!(has_field(m, "Message-ID"));
        assert!(!has_field(m, "Date"));
        assert!(has_field(b"Date : Tue\r\n\r\n", "date"));
        assert!(!has_field(b"X-Date: Tue\r\n\r\n", "Date"));
        assert!(!has_field(b"", "Date"));
    }
}
