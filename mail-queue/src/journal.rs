//! The journal: each batch's metadata changes, written into the spool right after the
//! batch's bodies, so that one `fdatasync` makes a message durable, body and record.
//!
//! ```text
//!  segment: [body][body]...[journal: Put a, Put b, Remove c][body]...[journal: ...]
//!                                                  ▲
//!  store (sled): changes applied at once, synced about once a second,
//!                with the mark of the last journal record they include
//! ```
//!
//! The store is synced (one flush and fsync) about once a second, not per batch. When
//! the queue opens, every journal record after the store's durable mark is applied to
//! the store again, in order; each change is a whole record or a removal, so applying
//! one twice does no harm. A record that is not whole (the torn tail of a batch that
//! was never acknowledged) ends its segment's replay.

use crate::spool::Spool;
use crate::store::{Change, JournalMark, QueueStore};
use crate::{MessageMeta, QueueError, QueueId};

const PUT: u8 = 1;
const REMOVE: u8 = 2;

/// The journal record of a batch's changes.
pub(crate) fn encode(changes: &[Change]) -> Result<Vec<u8>, QueueError> {
    let mut out = Vec::with_capacity(changes.len() * 256);
    for change in changes {
        match change {
            Change::Put(meta) => {
                let record = meta.encode()?;
                out.push(PUT);
                out.extend_from_slice(
                    &u32::try_from(record.len())
                        .unwrap_or(u32::MAX)
                        .to_le_bytes(),
                );
                out.extend_from_slice(&record);
            }
            Change::Remove(id) => {
                out.push(REMOVE);
                out.extend_from_slice(&id.0.to_le_bytes());
            }
        }
    }
    Ok(out)
}

/// The changes of a journal record.
pub(crate) fn decode(mut bytes: &[u8]) -> Result<Vec<Change>, QueueError> {
    let corrupt = || QueueError::Io(std::io::Error::other("corrupt journal record"));
    let mut changes = Vec::new();
    while let Some((&tag, rest)) = bytes.split_first() {
        match tag {
            PUT => {
                let len = rest.get(..4).ok_or_else(corrupt)?;
                let len = u32::from_le_bytes(len.try_into().map_err(|_| corrupt())?) as usize;
                let record = rest.get(4..4 + len).ok_or_else(corrupt)?;
                changes.push(Change::Put(MessageMeta::decode(record)?));
                bytes = &rest[4 + len..];
            }
            REMOVE => {
                let id = rest.get(..8).ok_or_else(corrupt)?;
                changes.push(Change::Remove(QueueId(u64::from_le_bytes(
                    id.try_into().map_err(|_| corrupt())?,
                ))));
                bytes = &rest[8..];
            }
            _ => return Err(corrupt()),
        }
    }
    Ok(changes)
}

/// Brings the store up to date with the journal, makes it durable, and returns the
/// journal position new batches start from (the next segment: nothing is ever appended
/// to a segment written before a restart).
pub(crate) fn recover(
    spool: &Spool,
    store: &dyn QueueStore,
) -> Result<(JournalMark, usize), QueueError> {
    let mut replayed = 0;
    if let Some(from) = store.mark()? {
        replayed = spool.replay(from, |payload, end| {
            let mut changes = decode(payload)?;
            // A body of the same segment was written by the same unsynced batches as
            // the record; a batch torn by a power cut may have its record and not all
            // of its bodies. Such a message was never acknowledged: leave it out.
            changes.retain(|change| match change {
                Change::Put(meta) if meta.spool.segment == end.segment => {
                    let whole = spool.read(meta.id, &meta.spool).is_ok();
                    if !whole {
                        tracing::warn!(id = %meta.id, "journal: a message whose body is not whole was never acknowledged; left out");
                    }
                    whole
                }
                _ => true,
            });
            store.apply(&changes, end)
        })?;
    }
    let start = JournalMark {
        segment: spool.next_segment()?,
        offset: 0,
    };
    store.apply(&[], start)?;
    store.sync()?;
    spool.checkpointed(start);
    Ok((start, replayed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{MailParams, RecipientMeta, RecipientState, SpoolRef};

    #[test]
    fn changes_round_trip() {
        let meta = MessageMeta {
            id: QueueId(7),
            received: 1,
            from: "a@b.test".into(),
            params: MailParams::default(),
            source: "[192.0.2.1]".into(),
            recipients: vec![RecipientMeta {
                address: "c@d.test".into(),
                dsn: Default::default(),
                state: RecipientState::Pending,
                last_reply: None,
            }],
            spool: SpoolRef {
                segment: 3,
                offset: 24,
                len: 10,
                crc: 5,
            },
            attempts: 0,
            next_attempt: 1,
            last_error: None,
            delay_warned: false,
        };
        let changes = vec![Change::Put(meta), Change::Remove(QueueId(9))];
        assert_eq!(decode(&encode(&changes).unwrap()).unwrap(), changes);
        assert!(decode(&[PUT, 200, 0, 0, 0, 1]).is_err(), "a short record");
        assert!(decode(&[9]).is_err(), "an unknown change");
    }
}
