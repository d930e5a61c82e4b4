//! Metadata storage behind one trait, with two embedded backends.
//!
//! A [`QueueStore`] keeps [`MessageMeta`] records by [`QueueId`]. Its promise: when
//! [`QueueStore::commit`] or [`QueueStore::sync`] returns `Ok`, every change given
//! before is on stable storage.
//!
//! The group committer does not wait for the store: it writes each batch's changes
//! into the spool beside the bodies (the journal, made durable by the batch's one
//! `fdatasync`), then [`QueueStore::apply`]s them with the journal position they end
//! at (a [`JournalMark`]), and calls [`QueueStore::sync`] about once a second. In
//! between, the queue keeps the changes in memory in front of the store and hands it
//! their net result at each sync. When the
//! queue opens it replays the journal from the store's durable mark. A store that does
//! not implement `apply`, `sync` and `mark` (they have defaults) commits every batch
//! durably and has nothing replayed, as before the journal existed.

mod overlay;
mod redb;
mod sled;

pub(crate) use self::overlay::Overlay;
pub use self::redb::RedbStore;
pub use self::sled::SledStore;

use crate::{MessageMeta, QueueError, QueueId};

/// One change to the metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// Insert or replace a message.
    Put(MessageMeta),
    /// Forget a message.
    Remove(QueueId),
}

/// A position in the spool's journal: every journal record before it is in the store.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct JournalMark {
    /// The spool segment.
    pub segment: u64,
    /// The offset in that segment.
    pub offset: u64,
}

impl JournalMark {
    /// Sixteen bytes, as stored.
    pub fn to_bytes(self) -> [u8; 16] {
        let mut out = [0; 16];
        out[..8].copy_from_slice(&self.segment.to_be_bytes());
        out[8..].copy_from_slice(&self.offset.to_be_bytes());
        out
    }

    /// The mark stored by [`JournalMark::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let segment = u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?);
        let offset = u64::from_be_bytes(bytes.get(8..16)?.try_into().ok()?);
        Some(Self { segment, offset })
    }
}

/// Durable storage of message metadata.
///
/// Backends run the shared conformance suite in `mail-queue/tests/store_conformance.rs`
/// (`mail_queue::conformance::run`).
pub trait QueueStore: Send + Sync + std::fmt::Debug + 'static {
    /// Applies the changes in order and makes them durable before returning.
    fn commit(&self, changes: &[Change]) -> Result<(), QueueError>;

    /// One message.
    fn get(&self, id: QueueId) -> Result<Option<MessageMeta>, QueueError>;

    /// Calls `f` for every message in id order, from `start` on, until it returns
    /// `false`.
    fn scan(
        &self,
        start: Option<QueueId>,
        f: &mut dyn FnMut(MessageMeta) -> bool,
    ) -> Result<(), QueueError>;

    /// A short name for logs (`sled`, `redb`).
    fn backend(&self) -> &'static str;

    /// Applies the changes in order and records `mark` (the journal position they end
    /// at), durable at the next [`QueueStore::sync`] at the latest. The default commits
    /// durably at once and keeps no mark.
    fn apply(&self, changes: &[Change], mark: JournalMark) -> Result<(), QueueError> {
        let _ = mark;
        self.commit(changes)
    }

    /// Makes every applied change and the last mark durable. The default has nothing to
    /// do (its `apply` is durable).
    fn sync(&self) -> Result<(), QueueError> {
        Ok(())
    }

    /// The last mark recorded by [`QueueStore::apply`] (after a restart: the last durable
    /// one); `None` when there is none (a new store, or one without a journal).
    fn mark(&self) -> Result<Option<JournalMark>, QueueError> {
        Ok(None)
    }
}
