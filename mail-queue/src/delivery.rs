//! The interface between the queue and whatever delivers: a tower `Service` that takes
//! a message and some of its recipients and says what happened to each.
//!
//! The queue knows neither SMTP clients nor DNS: `mta-bin` composes those into a
//! delivery service and hands it to [`crate::Queue::run`].

use std::sync::Arc;

use bytes::Bytes;

use crate::MessageMeta;

/// One delivery attempt: a message and the recipients to try now (all with the same
/// destination domain).
#[derive(Clone, Debug)]
pub struct DeliveryRequest {
    /// The message.
    pub message: Arc<MessageMeta>,
    /// Its body, as stored (mapped into memory when it is large: read it in parts to
    /// keep memory use low).
    pub body: Bytes,
    /// Indexes into `message.recipients`.
    pub recipients: Vec<usize>,
    /// Whether this is the first attempt on the message since this process accepted it:
    /// then nothing of it can have been delivered before, and a delivery may skip
    /// looking for an earlier copy (a Maildir file of the same name). `false` (the safe
    /// value) for every later attempt and for every message recovered at open: it may
    /// have been delivered before a crash.
    pub first_attempt: bool,
}

impl DeliveryRequest {
    /// The addresses of the recipients to try.
    pub fn addresses(&self) -> impl Iterator<Item = &str> {
        self.recipients
            .iter()
            .filter_map(|&i| self.message.recipients.get(i))
            .map(|r| r.address.as_str())
    }
}

/// What happened to one recipient.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Delivered into the recipient's mailbox (Maildir, LMTP); the text says where or
    /// what the server replied. A success notification is ours to send, when asked.
    Delivered(String),
    /// Handed to another mail server (the domain's MX, or the relay host), which takes
    /// it from here, success notifications included (RFC 3461 §5.2.2: NOTIFY was
    /// passed on). The text names the route and the server's reply.
    Sent(String),
    /// A temporary failure: try again later.
    Deferred(String),
    /// A permanent failure: give up on this recipient.
    Failed(String),
}

/// The answer to a [`DeliveryRequest`]: one outcome per requested recipient, in order.
pub type DeliveryReport = Vec<Outcome>;

/// The error type delivery services may fail with (tower's); every recipient of the
/// request is then deferred.
pub use tower::BoxError;
