//! The default backend: sled 0.34, with an explicit fsync.
//!
//! `sled::Db::flush` writes with `sync_file_range`, which does not persist the file's
//! metadata; after each flush this backend fsyncs sled's log file itself, so a
//! committed batch survives power loss. Values are small metadata records only; bodies
//! live in the spool. The journal mark lives in a tree of its own, written after the
//! batch it ends: sled recovers a prefix of its log, so a durable mark means its batch
//! and every one before are durable too. sled's own periodic flush is off: the queue
//! syncs about once a second.

use std::fs::File;
use std::path::Path;

use super::{Change, JournalMark, QueueStore};

/// The journal tree's one key.
const MARK: &[u8] = b"mark";
use crate::{MessageMeta, QueueError, QueueId};

/// Metadata in sled.
#[derive(Debug)]
pub struct SledStore {
    db: sled::Db,
    /// The journal mark.
    journal: sled::Tree,
    /// sled's log (`db` in its directory), kept open: fsynced after every flush.
    log: File,
}

impl SledStore {
    /// Opens (creating) a store in `dir`.
    pub fn open(dir: &Path) -> Result<Self, QueueError> {
        let db = sled::Config::new().path(dir).flush_every_ms(None).open()?;
        let journal = db.open_tree("journal")?;
        let log = File::open(dir.join("db"))?;
        Ok(Self { db, journal, log })
    }
}

impl SledStore {
    fn write(&self, changes: &[Change]) -> Result<(), QueueError> {
        let mut batch = sled::Batch::default();
        for change in changes {
            match change {
                Change::Put(meta) => batch.insert(&meta.id.0.to_be_bytes(), meta.encode()?),
                Change::Remove(id) => batch.remove(&id.0.to_be_bytes()),
            }
        }
        self.db.apply_batch(batch)?;
        Ok(())
    }
}

impl QueueStore for SledStore {
    fn commit(&self, changes: &[Change]) -> Result<(), QueueError> {
        self.write(changes)?;
        self.sync()
    }

    fn apply(&self, changes: &[Change], mark: JournalMark) -> Result<(), QueueError> {
        self.write(changes)?;
        self.journal.insert(MARK, &mark.to_bytes())?;
        Ok(())
    }

    fn sync(&self) -> Result<(), QueueError> {
        self.db.flush()?;
        self.log.sync_all()?;
        Ok(())
    }

    fn mark(&self) -> Result<Option<JournalMark>, QueueError> {
        Ok(self
            .journal
            .get(MARK)?
            .and_then(|bytes| JournalMark::from_bytes(&bytes)))
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
