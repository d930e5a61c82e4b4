//! What the queue keeps about a message: its envelope, DSN parameters, where its body
//! is, and the state of each recipient.
//!
//! This is the stored format, owned by this crate and independent of the wire types of
//! `smtp-proto` (converted with [`NewMessage::from_envelope`]).

use serde::{Deserialize, Serialize};
use smtp_proto::{Body, Envelope, ForwardPath, Notify, Ret, ReversePath};

use crate::QueueId;

/// A message to enqueue: the envelope as accepted, the body with any headers the
/// server added.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewMessage {
    /// The reverse-path; empty for the null sender `<>`.
    pub from: String,
    /// MAIL FROM parameters that matter after acceptance.
    pub params: MailParams,
    /// The accepted recipients.
    pub recipients: Vec<NewRecipient>,
    /// Who handed the message over, for logs (`[192.0.2.1]`, `local`).
    pub source: String,
}

/// One recipient of a [`NewMessage`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewRecipient {
    /// The address (`Postmaster` for the bare `<Postmaster>`).
    pub address: String,
    /// DSN parameters.
    pub dsn: RecipientDsn,
}

impl NewMessage {
    /// Converts an accepted SMTP envelope. The priority is `MT-PRIORITY` as the
    /// envelope has it (0 without): a server that lowers what untrusted clients ask for
    /// sets [`MailParams::priority`] after this.
    pub fn from_envelope(envelope: &Envelope, source: impl Into<String>) -> Self {
        let from = match &envelope.from {
            ReversePath::Null => String::new(),
            ReversePath::Mailbox(m) => m.to_string(),
        };
        let p = &envelope.params;
        let params = MailParams {
            body: match p.body {
                Some(Body::EightBitMime) => BodyType::EightBitMime,
                Some(Body::BinaryMime) => BodyType::BinaryMime,
                Some(Body::SevenBit) | None => BodyType::SevenBit,
            },
            smtputf8: p.smtputf8,
            ret: p.ret.map(|r| matches!(r, Ret::Headers)),
            envid: p.envid.clone(),
            requiretls: p.requiretls,
            priority: p.mt_priority.unwrap_or(0),
        };
        let recipients = envelope
            .recipients
            .iter()
            .map(|r| NewRecipient {
                address: match &r.to {
                    ForwardPath::Postmaster => "Postmaster".to_owned(),
                    ForwardPath::Mailbox(m) => m.to_string(),
                },
                dsn: RecipientDsn {
                    notify: r.params.notify.map(notify_bits),
                    orcpt: r
                        .params
                        .orcpt
                        .as_ref()
                        .map(|o| (o.addr_type.clone(), o.address.clone())),
                },
            })
            .collect();
        Self {
            from,
            params,
            recipients,
            source: source.into(),
        }
    }
}

fn notify_bits(n: Notify) -> u8 {
    [
        (Notify::SUCCESS, 1),
        (Notify::FAILURE, 2),
        (Notify::DELAY, 4),
    ]
    .iter()
    .filter(|(flag, _)| n.contains(*flag))
    .map(|(_, bit)| bit)
    .sum()
}

/// The body type declared at MAIL FROM.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum BodyType {
    /// 7-bit (or undeclared).
    #[default]
    SevenBit,
    /// `BODY=8BITMIME`
    EightBitMime,
    /// `BODY=BINARYMIME`
    BinaryMime,
}

/// MAIL FROM parameters kept with the message (RFC 3461, 6531, 8689).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailParams {
    /// The declared body type.
    pub body: BodyType,
    /// `SMTPUTF8` was given.
    pub smtputf8: bool,
    /// `RET=`: `Some(true)` for HDRS, `Some(false)` for FULL.
    pub ret: Option<bool>,
    /// `ENVID=`, decoded.
    pub envid: Option<String>,
    /// `REQUIRETLS` was given.
    pub requiretls: bool,
    /// The message's priority (RFC 6710), -9 (lowest) to 9 (highest), 0 by default:
    /// when deliveries are limited, the queue starts higher ones first. Values outside
    /// the range are clamped where they are used.
    ///
    /// Stored after the rest of the record (see [`MessageMeta`]'s encoding), so that
    /// records written before it existed read as priority 0.
    #[serde(skip)]
    pub priority: i8,
}

impl MailParams {
    /// [`MailParams::priority`], clamped to -9..=9.
    pub fn priority(&self) -> i8 {
        self.priority.clamp(-9, 9)
    }
}

/// Fields added to the stored record after its first version, encoded after it: a
/// record from before they existed ends where this would start, and decodes with the
/// defaults; a newer program's record has it, and an older program reading it stops
/// before it. A field added later goes at the end of this struct, and a record that
/// ends before it then needs a decoding of its own (one per version).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Trailer {
    /// [`MailParams::priority`].
    priority: i8,
}

/// DSN parameters of one recipient (RFC 3461).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecipientDsn {
    /// `NOTIFY=` as bits: 1 SUCCESS, 2 FAILURE, 4 DELAY; `Some(0)` is NEVER.
    pub notify: Option<u8>,
    /// `ORCPT=` type and address.
    pub orcpt: Option<(String, String)>,
}

/// Where a recipient stands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum RecipientState {
    /// Not delivered yet; tried again at the message's next attempt.
    #[default]
    Pending,
    /// Delivered.
    Delivered,
    /// Failed for good (a permanent error, or the message expired).
    Failed,
    /// Handed to another mail server, which now answers for it.
    Sent,
}

/// One recipient and its delivery state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecipientMeta {
    /// The address.
    pub address: String,
    /// DSN parameters.
    pub dsn: RecipientDsn,
    /// Where it stands.
    pub state: RecipientState,
    /// The last reply or error for this recipient.
    pub last_reply: Option<String>,
}

impl RecipientMeta {
    /// The domain part of the address, lower-cased (empty for `Postmaster`).
    pub fn domain(&self) -> String {
        self.address
            .rsplit_once('@')
            .map(|(_, d)| d.to_ascii_lowercase())
            .unwrap_or_default()
    }
}

/// Where the body of a message is in the spool.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpoolRef {
    /// The segment file number.
    pub segment: u64,
    /// Offset of the body in the segment.
    pub offset: u64,
    /// Length of the body.
    pub len: u64,
    /// CRC-32 of the body.
    pub crc: u32,
}

/// Everything the queue keeps about one message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageMeta {
    /// The queue id.
    pub id: QueueId,
    /// When it was accepted, in seconds since the Unix epoch.
    pub received: u64,
    /// The reverse-path; empty for `<>`.
    pub from: String,
    /// MAIL FROM parameters.
    pub params: MailParams,
    /// Who handed it over.
    pub source: String,
    /// The recipients and their states.
    pub recipients: Vec<RecipientMeta>,
    /// Where the body is.
    pub spool: SpoolRef,
    /// Delivery attempts so far.
    pub attempts: u32,
    /// When to try next, in seconds since the Unix epoch; [`MessageMeta::HELD`] while
    /// the message is on hold.
    pub next_attempt: u64,
    /// The last error, for `mta queue list`.
    pub last_error: Option<String>,
    /// A delay notification has been sent.
    pub delay_warned: bool,
}

impl MessageMeta {
    /// The `next_attempt` of a held message: never, until it is released.
    pub const HELD: u64 = u64::MAX;

    /// Whether the message is on hold (`mta queue hold`).
    pub fn is_held(&self) -> bool {
        self.next_attempt == Self::HELD
    }

    /// Whether every recipient is delivered or failed.
    pub fn is_finished(&self) -> bool {
        self.recipients
            .iter()
            .all(|r| r.state != RecipientState::Pending)
    }

    /// Indexes of the recipients still pending.
    pub fn pending(&self) -> impl Iterator<Item = usize> + '_ {
        self.recipients
            .iter()
            .enumerate()
            .filter(|(_, r)| r.state == RecipientState::Pending)
            .map(|(i, _)| i)
    }

    /// The size of the body in octets.
    pub fn size(&self) -> u64 {
        self.spool.len
    }

    /// The stored form: the record (postcard), then the [`Trailer`].
    pub(crate) fn encode(&self) -> Result<Vec<u8>, crate::QueueError> {
        let mut bytes = postcard::to_stdvec(self)?;
        let trailer = Trailer {
            priority: self.params.priority,
        };
        bytes.extend_from_slice(&postcard::to_stdvec(&trailer)?);
        Ok(bytes)
    }

    /// Reads [`MessageMeta::encode`]'s form, or a record written before the trailer
    /// existed (priority 0).
    pub(crate) fn decode(bytes: &[u8]) -> Result<Self, crate::QueueError> {
        let (mut meta, rest): (Self, _) = postcard::take_from_bytes(bytes)?;
        if !rest.is_empty() {
            let trailer: Trailer = postcard::from_bytes(rest)?;
            meta.params.priority = trailer.priority;
        }
        Ok(meta)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(id: u64, recipients: usize) -> MessageMeta {
        MessageMeta {
            id: QueueId(id),
            received: 1_700_000_000 + id,
            from: format!("sender{id}@example.test"),
            params: MailParams {
                envid: Some(format!("env{id}")),
                ..MailParams::default()
            },
            source: "[192.0.2.1]".into(),
            recipients: (0..recipients)
                .map(|i| RecipientMeta {
                    address: format!("rcpt{i}@example.test"),
                    dsn: RecipientDsn::default(),
                    state: RecipientState::Pending,
                    last_reply: Some("451 4.4.1 later".into()),
                })
                .collect(),
            spool: SpoolRef::default(),
            attempts: 2,
            next_attempt: 1_700_000_600,
            last_error: None,
            delay_warned: true,
        }
    }

    #[test]
    fn priority_survives_encoding() {
        for priority in [-9, -1, 0, 6, 9] {
            let mut meta = sample(7, 2);
            meta.params.priority = priority;
            let decoded = MessageMeta::decode(&meta.encode().unwrap()).unwrap();
            assert_eq!(decoded, meta);
            assert_eq!(decoded.params.priority(), priority);
        }
    }

    #[test]
    fn records_from_before_priorities_read_as_priority_0() {
        // What `encode` wrote before the trailer: the record alone.
        let meta = sample(8, 3);
        let old = postcard::to_stdvec(&meta).unwrap();
        let decoded = MessageMeta::decode(&old).unwrap();
        assert_eq!(decoded, meta);
        assert_eq!(decoded.params.priority(), 0);
        // And the reverse: an older program reads a new record, trailer ignored (as
        // `postcard::from_bytes`, its decoding, does).
        let mut new = sample(9, 1);
        new.params.priority = 5;
        let read_by_old: MessageMeta = postcard::from_bytes(&new.encode().unwrap()).unwrap();
        assert_eq!(read_by_old.id, new.id);
        assert_eq!(read_by_old.params.priority, 0);
    }
}
