//! Metadata storage behind one trait, with two embedded backends.
//!
//! A [`QueueStore`] keeps [`MessageMeta`] records by [`QueueId`]. Its one promise:
//! when [`QueueStore::commit`] returns `Ok`, every change in the batch is on stable
//! storage. The group committer calls it once for many messages, so a backend pays for
//! one durable write per batch, not per message.

mod redb;
mod sled;

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
}
