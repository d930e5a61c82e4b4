//! The changes of the last second, in memory, in front of the store.
//!
//! The journal already makes each batch durable, so the store only needs them by its
//! next sync. [`Overlay`] keeps applied changes in a map (the last change per message)
//! and hands the store their net result at each sync, in one batch: a message that
//! arrives and is delivered between two syncs (most of them, when delivery keeps up)
//! never reaches the store at all, and the store writes once a second, not per batch.
//! Readers see the overlay first, then the store.

use std::collections::BTreeMap;
use std::sync::RwLock;

use super::{Change, JournalMark, QueueStore};
use crate::{MessageMeta, QueueError, QueueId};

/// A store with the changes not yet synced held in memory in front of it.
#[derive(Debug)]
pub(crate) struct Overlay<S: ?Sized> {
    pending: RwLock<Pending>,
    store: std::sync::Arc<S>,
}

#[derive(Debug, Default)]
struct Pending {
    /// The last change of each message since the last sync (`None`: removed).
    changes: BTreeMap<u64, Option<MessageMeta>>,
    /// The mark of the last change.
    mark: Option<JournalMark>,
}

impl<S: QueueStore + ?Sized> Overlay<S> {
    pub(crate) fn new(store: std::sync::Arc<S>) -> Self {
        Self {
            pending: RwLock::new(Pending::default()),
            store,
        }
    }

    fn pending(&self) -> std::sync::RwLockReadGuard<'_, Pending> {
        self.pending
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl<S: QueueStore + ?Sized> QueueStore for Overlay<S> {
    fn commit(&self, changes: &[Change]) -> Result<(), QueueError> {
        let mark = self.pending().mark;
        match mark {
            Some(mark) => {
                self.apply(changes, mark)?;
                self.sync()
            }
            None => self.store.commit(changes),
        }
    }

    fn apply(&self, changes: &[Change], mark: JournalMark) -> Result<(), QueueError> {
        let mut pending = self
            .pending
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for change in changes {
            match change {
                Change::Put(meta) => pending.changes.insert(meta.id.0, Some(meta.clone())),
                Change::Remove(id) => pending.changes.insert(id.0, None),
            };
        }
        pending.mark = Some(mark);
        Ok(())
    }

    fn sync(&self) -> Result<(), QueueError> {
        // Readers wait while the store takes the changes (they see one or the other).
        let mut pending = self
            .pending
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(mark) = pending.mark {
            let changes: Vec<Change> = pending
                .changes
                .iter()
                .map(|(id, change)| match change {
                    Some(meta) => Change::Put(meta.clone()),
                    None => Change::Remove(QueueId(*id)),
                })
                .collect();
            self.store.apply(&changes, mark)?;
            pending.changes.clear();
        }
        drop(pending);
        self.store.sync()
    }

    fn mark(&self) -> Result<Option<JournalMark>, QueueError> {
        match self.pending().mark {
            Some(mark) => Ok(Some(mark)),
            None => self.store.mark(),
        }
    }

    fn get(&self, id: QueueId) -> Result<Option<MessageMeta>, QueueError> {
        if let Some(change) = self.pending().changes.get(&id.0) {
            return Ok(change.clone());
        }
        self.store.get(id)
    }

    fn scan(
        &self,
        start: Option<QueueId>,
        f: &mut dyn FnMut(MessageMeta) -> bool,
    ) -> Result<(), QueueError> {
        let first = start.map_or(0, |id| id.0);
        let overlay: BTreeMap<u64, Option<MessageMeta>> = self
            .pending()
            .changes
            .range(first..)
            .map(|(id, change)| (*id, change.clone()))
            .collect();
        let mut overlay = overlay.into_iter().peekable();
        let mut stopped = false;
        self.store.scan(start, &mut |meta| {
            // The overlay's messages before this one, then this one unless the overlay
            // changed it.
            while let Some((id, _)) = overlay.peek()
                && *id < meta.id.0
            {
                if let Some((_, Some(pending))) = overlay.next()
                    && !f(pending)
                {
                    stopped = true;
                    return false;
                }
            }
            let meta = match overlay.peek() {
                Some((id, _)) if *id == meta.id.0 => match overlay.next() {
                    Some((_, Some(pending))) => pending,
                    _ => return true,
                },
                _ => meta,
            };
            if f(meta) {
                true
            } else {
                stopped = true;
                false
            }
        })?;
        if !stopped {
            for (_, change) in overlay {
                if let Some(meta) = change
                    && !f(meta)
                {
                    break;
                }
            }
        }
        Ok(())
    }

    fn backend(&self) -> &'static str {
        self.store.backend()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SledStore;

    fn ids(store: &dyn QueueStore, start: Option<u64>) -> Vec<u64> {
        let mut out = Vec::new();
        store
            .scan(start.map(QueueId), &mut |m| {
                out.push(m.id.0);
                true
            })
            .unwrap();
        out
    }

    #[test]
    fn reads_see_the_overlay_then_the_store_and_a_sync_hands_over_the_net_result() {
        let dir = tempfile::tempdir().unwrap();
        let sled = std::sync::Arc::new(SledStore::open(dir.path()).unwrap());
        let store = Overlay::new(std::sync::Arc::clone(&sled));
        let meta = |id| crate::conformance::sample(id, 1);
        sled.commit(&[
            Change::Put(meta(2)),
            Change::Put(meta(4)),
            Change::Put(meta(6)),
        ])
        .unwrap();
        let mark = JournalMark {
            segment: 1,
            offset: 10,
        };
        let mut changed = meta(4);
        changed.attempts = 3;
        store
            .apply(
                &[
                    Change::Put(meta(1)),
                    Change::Put(changed.clone()),
                    Change::Remove(QueueId(6)),
                    Change::Put(meta(7)),
                    Change::Put(meta(9)),
                    Change::Remove(QueueId(9)),
                ],
                mark,
            )
            .unwrap();
        assert_eq!(ids(&store, None), [1, 2, 4, 7]);
        assert_eq!(ids(&store, Some(3)), [4, 7]);
        assert_eq!(store.get(QueueId(4)).unwrap(), Some(changed.clone()));
        assert_eq!(store.get(QueueId(6)).unwrap(), None);
        assert_eq!(store.get(QueueId(2)).unwrap(), Some(meta(2)));
        let mut first_two = Vec::new();
        store
            .scan(None, &mut |m| {
                first_two.push(m.id.0);
                first_two.len() < 2
            })
            .unwrap();
        assert_eq!(first_two, [1, 2], "a scan stops when told");
        assert_eq!(sled.get(QueueId(1)).unwrap(), None, "not in the store yet");
        store.sync().unwrap();
        assert_eq!(ids(sled.as_ref(), None), [1, 2, 4, 7]);
        assert_eq!(sled.get(QueueId(4)).unwrap(), Some(changed));
        assert_eq!(sled.get(QueueId(9)).unwrap(), None);
        assert_eq!(sled.mark().unwrap(), Some(mark));
        assert_eq!(ids(&store, None), [1, 2, 4, 7]);
    }
}
