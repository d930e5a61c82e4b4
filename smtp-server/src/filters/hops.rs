//! Mail loops: too many `Received:` headers (RFC 5321 §6.3).

use smtp_proto::EnhancedStatus;
use tower::Layer;

use super::sync_filter_service;
use crate::{DataRequest, Decision};

/// The data-stage loop check: a message with more than `max_hops` `Received:` header
/// fields (default 50, like Postfix's `hopcount_limit`) is refused with
/// `554 5.4.6 Too many hops`.
#[derive(Clone, Copy, Debug)]
pub struct HopLimitLayer {
    max_hops: usize,
}

impl HopLimitLayer {
    /// A limit of `max_hops` `Received:` headers.
    pub fn new(max_hops: usize) -> Self {
        Self { max_hops }
    }
}

impl Default for HopLimitLayer {
    fn default() -> Self {
        Self::new(50)
    }
}

impl<S> Layer<S> for HopLimitLayer {
    type Service = HopLimit<S>;
    fn layer(&self, inner: S) -> Self::Service {
        HopLimit {
            max_hops: self.max_hops,
            inner,
        }
    }
}

/// The service of [`HopLimitLayer`].
#[derive(Clone, Debug)]
pub struct HopLimit<S> {
    max_hops: usize,
    inner: S,
}

impl<S> HopLimit<S> {
    fn check(&self, req: &DataRequest) -> Option<Decision> {
        let hops = count_received_headers(&req.added_headers) + count_received_headers(&req.body);
        (hops > self.max_hops).then(|| {
            Decision::reject::<554>(
                EnhancedStatus::ROUTING_LOOP,
                format!("Too many hops ({hops}): mail loop?"),
            )
        })
    }
}

sync_filter_service!(HopLimit, DataRequest, |this, request| this.check(request));

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
