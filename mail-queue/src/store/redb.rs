//! A second embedded backend: redb, whose commit is a real fdatasync. It proves the
//! [`QueueStore`] trait and is the choice when sled's maintenance status worries you.

use std::path::Path;

use redb::{Database, ReadableDatabase, TableDefinition};

use super::{Change, QueueStore};
use crate::{MessageMeta, QueueError, QueueId};

const MESSAGES: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("messages");

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
        txn.commit()?;
        Ok(Self { db })
    }
}

impl QueueStore for RedbStore {
    fn commit(&self, changes: &[Change]) -> Result<(), QueueError> {
        // Durability::Immediate is the default: commit() returns after fsync.
        let txn = self.db.begin_write()?;
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
        txn.commit()?;
        Ok(())
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
