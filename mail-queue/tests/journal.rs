//! The journal in the spool: acknowledged messages, and changes made to them, survive a
//! crash that comes before the metadata store's own sync; a torn last batch is left out
//! and everything before it is kept.
//!
//! A crash is simulated with a store whose "disk" is a snapshot taken at each real
//! `sync`: the queue is reopened over a new store made from that snapshot, while the
//! spool files stay as the first queue left them (as after `kill -9`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use mail_queue::{
    Action, ActionResult, Change, JournalMark, MailParams, MessageMeta, NewMessage, NewRecipient,
    Queue, QueueConfig, QueueError, QueueId, QueueStore, RecipientDsn,
};

type State = (BTreeMap<u64, MessageMeta>, Option<JournalMark>);

/// A store in memory; `sync` copies it to `disk`, unless `syncing` is off.
#[derive(Debug)]
struct Memory {
    live: Mutex<State>,
    disk: Arc<Mutex<State>>,
    syncing: AtomicBool,
}

impl Memory {
    /// A store as found on `disk` after a crash.
    fn recovered(disk: &Arc<Mutex<State>>) -> Arc<Self> {
        Arc::new(Self {
            live: Mutex::new(disk.lock().unwrap().clone()),
            disk: Arc::clone(disk),
            syncing: AtomicBool::new(true),
        })
    }
}

impl QueueStore for Memory {
    fn commit(&self, changes: &[Change]) -> Result<(), QueueError> {
        let mark = self.live.lock().unwrap().1.unwrap_or_default();
        self.apply(changes, mark)?;
        self.sync()
    }

    fn apply(&self, changes: &[Change], mark: JournalMark) -> Result<(), QueueError> {
        let mut live = self.live.lock().unwrap();
        for change in changes {
            match change {
                Change::Put(meta) => live.0.insert(meta.id.0, meta.clone()),
                Change::Remove(id) => live.0.remove(&id.0),
            };
        }
        live.1 = Some(mark);
        Ok(())
    }

    fn sync(&self) -> Result<(), QueueError> {
        if self.syncing.load(Ordering::Relaxed) {
            *self.disk.lock().unwrap() = self.live.lock().unwrap().clone();
        }
        Ok(())
    }

    fn mark(&self) -> Result<Option<JournalMark>, QueueError> {
        Ok(self.live.lock().unwrap().1)
    }

    fn get(&self, id: QueueId) -> Result<Option<MessageMeta>, QueueError> {
        Ok(self.live.lock().unwrap().0.get(&id.0).cloned())
    }

    fn scan(
        &self,
        start: Option<QueueId>,
        f: &mut dyn FnMut(MessageMeta) -> bool,
    ) -> Result<(), QueueError> {
        let metas: Vec<_> = self
            .live
            .lock()
            .unwrap()
            .0
            .range(start.map_or(0, |id| id.0)..)
            .map(|(_, m)| m.clone())
            .collect();
        for meta in metas {
            if !f(meta) {
                break;
            }
        }
        Ok(())
    }

    fn backend(&self) -> &'static str {
        "memory"
    }
}

fn message(to: &str) -> NewMessage {
    NewMessage {
        from: "sender@example.test".into(),
        params: MailParams::default(),
        recipients: vec![NewRecipient {
            address: to.into(),
            dsn: RecipientDsn::default(),
        }],
        source: "[192.0.2.1]".into(),
    }
}

fn config(dir: &std::path::Path) -> QueueConfig {
    QueueConfig {
        path: dir.to_owned(),
        // Small segments: the journal spans several.
        segment_size: 4 * 1024,
        ..QueueConfig::default()
    }
}

fn body(i: usize) -> Vec<u8> {
    format!("Subject: {i}\r\n\r\n{}\r\n", "x".repeat(i * 13)).into_bytes()
}

/// Enqueues `count` messages one after the other (one batch each) and holds or deletes
/// some, with a store that never reaches its disk after the queue opened; returns the
/// acknowledged ids, and the disk.
async fn crash_before_the_store_syncs(
    dir: &std::path::Path,
    count: usize,
) -> (Vec<QueueId>, Arc<Mutex<State>>) {
    let disk = Arc::new(Mutex::new(State::default()));
    let store = Memory::recovered(&disk);
    let queue = Queue::with_store(config(dir), store.clone()).unwrap();
    // From here on nothing reaches the store's disk: only the journal has it.
    store.syncing.store(false, Ordering::Relaxed);
    let mut ids = Vec::new();
    for i in 0..count {
        let to = format!("r{i}@x.test");
        ids.push(queue.enqueue(message(&to), body(i)).await.unwrap());
    }
    let acted = queue.act(&ids[..2], Action::Delete).await.unwrap();
    assert!(
        acted.iter().all(|(_, r)| *r == ActionResult::Done),
        "{acted:?}"
    );
    let acted = queue.act(&ids[2..3], Action::Hold).await.unwrap();
    assert!(
        acted.iter().all(|(_, r)| *r == ActionResult::Done),
        "{acted:?}"
    );
    assert!(
        disk.lock().unwrap().0.is_empty(),
        "the store's disk has none of it"
    );
    drop(queue);
    (ids, disk)
}

#[tokio::test]
async fn acknowledged_messages_come_back_from_the_journal_when_the_store_lost_them() {
    let dir = tempfile::tempdir().unwrap();
    let (ids, disk) = crash_before_the_store_syncs(dir.path(), 40).await;
    let queue = Queue::with_store(config(dir.path()), Memory::recovered(&disk)).unwrap();
    assert_eq!(
        queue.len(),
        38,
        "every acknowledged message but the two deleted"
    );
    // Counted (a metric): a record per batch, the forty messages, the delete, the hold.
    assert_eq!(queue_replayed(&queue), 42);
    for (i, id) in ids.iter().enumerate() {
        let meta = queue.get(*id).unwrap();
        if i < 2 {
            assert!(meta.is_none(), "a deletion is journaled too");
            continue;
        }
        let meta = meta.expect("an acknowledged message");
        assert_eq!(meta.recipients[0].address, format!("r{i}@x.test"));
        assert_eq!(meta.is_held(), i == 2, "a hold is journaled too");
        assert_eq!(queue.read_body(&meta).unwrap(), body(i));
    }
    // The recovered queue synced its store: a second crash finds everything again.
    drop(queue);
    let queue = Queue::with_store(config(dir.path()), Memory::recovered(&disk)).unwrap();
    assert_eq!(queue.len(), 38);
    assert_eq!(queue_replayed(&queue), 0, "nothing left to replay");
}

fn queue_replayed(queue: &Queue) -> u64 {
    queue.stats().journal_replayed.load(Ordering::Relaxed)
}

#[tokio::test]
async fn a_torn_last_batch_is_left_out_and_the_batches_before_it_kept() {
    let dir = tempfile::tempdir().unwrap();
    let (ids, disk) = crash_before_the_store_syncs(dir.path(), 10).await;
    // A power cut in the middle of the last write: its last bytes never reached the
    // disk. The segment's blocks are allocated ahead (its tail reads as zeros), so they
    // read as zeros too.
    let last = std::fs::read_dir(dir.path().join("spool"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .max()
        .unwrap();
    let mut bytes = std::fs::read(&last).unwrap();
    let end = bytes.iter().rposition(|b| *b != 0).unwrap() + 1;
    bytes[end - 3..end].fill(0);
    std::fs::write(&last, &bytes).unwrap();
    let queue = Queue::with_store(config(dir.path()), Memory::recovered(&disk)).unwrap();
    // The last batch was the hold of message 2: it is lost, the rest is there.
    assert_eq!(queue.len(), 8);
    let held = queue.get(ids[2]).unwrap().expect("message 2");
    assert!(!held.is_held(), "the torn batch (the hold) is left out");
    for (i, id) in ids.iter().enumerate().skip(2) {
        let meta = queue
            .get(*id)
            .unwrap()
            .expect("acknowledged before the torn batch");
        assert_eq!(queue.read_body(&meta).unwrap(), body(i));
    }
}
