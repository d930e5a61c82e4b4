//! Mail loops: too many `Received:` headers (RFC 5321 §6.3).

use crate::{Check, DataRequest, Decision};
use smtp_proto::EnhancedStatus;

/// The data-stage loop check: a message with more than `max_hops` `Received:` header
/// fields (default 50, like Postfix's `hopcount_limit`) is refused with
/// `554 5.4.6 Too many hops`.
///
/// ```
/// let layer = smtp_server::filter(smtp_server::filters::HopLimit::new(30));
/// # let _ = layer;
/// ```
#[derive(Clone, Copy, Debug)]
pub struct HopLimit {
    max_hops: usize,
}

impl HopLimit {
    /// A limit of `max_hops` `Received:` headers.
    pub fn new(max_hops: usize) -> Self {
        Self { max_hops }
    }
}

impl Default for HopLimit {
    fn default() -> Self {
        Self::new(50)
    }
}

impl Check<DataRequest> for HopLimit {
    fn check(&self, req: &mut DataRequest) -> Option<Decision> {
        let hops = count_received_headers(&req.added_headers) + count_received_headers(&req.body);
        (hops > self.max_hops).then(|| {
            Decision::reject::<554>(
                EnhancedStatus::ROUTING_LOOP,
                format!("Too many hops ({hops}): mail loop?"),
            )
        })
    }
}

/// Counts the `Received:` fields in the header section of a message.
pub fn count_received_headers(message: &[u8]) -> usize {
    message
        .split(|&b| b == b'\n')
        .take_while(|line| !line.is_empty() && *line != b"\r")
        .filter(|line| line.len() >= 9 && line[..9].eq_ignore_ascii_case(b"received:"))
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_header_fields_only() {
        let m =
            b"Received: a\r\n\tfolded\r\nreceived: b\r\nSubject: x\r\n\r\nReceived: in body\r\n";
        assert_eq!(count_received_headers(m), 2);
        assert_eq!(count_received_headers(b""), 0);
    }
}
