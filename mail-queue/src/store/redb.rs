//! A second embedded backend: redb, whose commit is a real fdatasync. It proves the
//! [`QueueStore`] trait and is the choice when sled's maintenance status worries you.
//! The queue's batches are committed with `Durability::None` (the journal mark in the
//! same transaction), and made durable by an empty `Durability::Immediate` commit.

use std::path::Path;

use redb::{Database, Durability, ReadableDatabase, TableDefinition};

use super::{Change, JournalMark, QueueStore};
use crate::{MessageMeta, QueueError, QueueId};

const MESSAGES: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("messages");
/// The journal mark, under key 0.
const JOURNAL: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("journal");

/// Metadata in redb.
#[derive(Debug)]
pub struct RedbStore {
    db: Database,
}

impl RedbStore {
    /// Opens (creating) a store in the file `path`.
    pub fn open(path: &Path) -> Result<Self, QueueError> {
        let db = Database::create(path)?;
        let txn = db.begin_write()?;
        txn.open_table(MESSAGES)?;
        txn.open_table(JOURNAL)?;
        txn.commit()?;
        Ok(Self { db })
    }

    fn write(
        &self,
        changes: &[Change],
        mark: Option<JournalMark>,
        durability: Durability,
    ) -> Result<(), QueueError> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(durability)
            .map_err(|e| QueueError::Io(std::io::Error::other(e.to_string())))?;
        {
            let mut table = txn.open_table(MESSAGES)?;
            for change in changes {
                match change {
                    Change::Put(meta) => {
                        table.insert(meta.id.0, meta.encode()?.as_slice())?;
                    }
                    Change::Remove(id) => {
                        table.remove(id.0)?;
                    }
                }
            }
        }
        if let Some(mark) = mark {
            txn.open_table(JOURNAL)?
                .insert(0, mark.to_bytes().as_slice())?;
        }
        txn.commit()?;
        Ok(())
    }
}

impl QueueStore for RedbStore {
    fn commit(&self, changes: &[Change]) -> Result<(), QueueError> {
        // Durability::Immediate: commit() returns after fsync.
        self.write(changes, None, Durability::Immediate)
    }

    fn apply(&self, changes: &[Change], mark: JournalMark) -> Result<(), QueueError> {
        self.write(changes, Some(mark), Durability::None)
    }

    fn sync(&self) -> Result<(), QueueError> {
        // Persists every `Durability::None` commit before it.
        self.write(&[], None, Durability::Immediate)
    }

    fn mark(&self) -> Result<Option<JournalMark>, QueueError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(JOURNAL)?;
        Ok(table
            .get(0)?
            .and_then(|v| JournalMark::from_bytes(v.value())))
    }

    fn get(&self, id: QueueId) -> Result<Option<MessageMeta>, QueueError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(MESSAGES)?;
        match table.get(id.0)? {
            Some(v) => Ok(Some(MessageMeta::decode(v.value())?)),
            None => Ok(None),
        }
    }

    fn scan(
        &self,
        start: Option<QueueId>,
        f: &mut dyn FnMut(MessageMeta) -> bool,
    ) -> Result<(), QueueError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(MESSAGES)?;
        for item in table.range(start.map_or(0, |id| id.0)..)? {
            let (_, value) = item?;
            if !f(MessageMeta::decode(value.value())?) {
                break;
            }
        }
        Ok(())
    }

    fn backend(&self) -> &'static str {
        "redb"
    }
}
