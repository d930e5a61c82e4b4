//! The default backend: sled 0.34, with an explicit fsync.
//!
//! `sled::Db::flush` writes with `sync_file_range`, which does not persist the file's
//! metadata; after each flush this backend fsyncs sled's log file itself, so a
//! committed batch survives power loss. Values are small metadata records only; bodies
//! live in the spool.

use std::fs::File;
use std::path::Path;

use super::{Change, QueueStore};
use crate::{MessageMeta, QueueError, QueueId};

/// Metadata in sled.
#[derive(Debug)]
pub struct SledStore {
    db: sled::Db,
    /// sled's log (`db` in its directory), kept open: fsynced after every flush.
    log: File,
}

impl SledStore {
    /// Opens (creating) a store in `dir`.
    pub fn open(dir: &Path) -> Result<Self, QueueError> {
        let db = sled::Config::new().path(dir).open()?;
        let log = File::open(dir.join("db"))?;
        Ok(Self { db, log })
    }
}

impl QueueStore for SledStore {
    fn commit(&self, changes: &[Change]) -> Result<(), QueueError> {
        let mut batch = sled::Batch::default();
        for change in changes {
            match change {
                Change::Put(meta) => batch.insert(&meta.id.0.to_be_bytes(), meta.encode()?),
                Change::Remove(id) => batch.remove(&id.0.to_be_bytes()),
            }
        }
        self.db.apply_batch(batch)?;
        self.db.flush()?;
        self.log.sync_all()?;
        Ok(())
    }

    fn get(&self, id: QueueId) -> Result<Option<MessageMeta>, QueueError> {
        match self.db.get(id.0.to_be_bytes())? {
            Some(bytes) => Ok(Some(MessageMeta::decode(&bytes)?)),
            None => Ok(None),
        }
    }

    fn scan(
        &self,
        start: Option<QueueId>,
        f: &mut dyn FnMut(MessageMeta) -> bool,
    ) -> Result<(), QueueError> {
        let start = start.map_or(0, |id| id.0).to_be_bytes();
        for item in self.db.range(start..) {
            let (_, value) = item?;
            if !f(MessageMeta::decode(&value)?) {
                break;
            }
        }
        Ok(())
    }

    fn backend(&self) -> &'static str {
        "sled"
    }
}
