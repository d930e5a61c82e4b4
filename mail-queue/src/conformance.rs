//! The conformance suite every [`QueueStore`] backend must pass. A new backend calls
//! [`run`] from one of its tests with a function that opens the store in a directory.
//!
//! ```no_run
//! mail_queue::conformance::run(|dir| mail_queue::SledStore::open(dir).unwrap());
//! ```

// A test suite: panicking is how it reports a failure to the calling test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use crate::message::{MailParams, RecipientDsn, RecipientMeta, RecipientState, SpoolRef};
use crate::store::{Change, JournalMark, QueueStore};
use crate::{MessageMeta, QueueId};

/// A message for tests.
pub fn sample(id: u64, recipients: usize) -> MessageMeta {
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
                address: format!("rcpt{i}@dest{}.test", i % 3),
                dsn: RecipientDsn {
                    notify: Some(2),
                    orcpt: Some(("rfc822".into(), format!("orig{i}@x.test"))),
                },
                state: RecipientState::Pending,
                last_reply: None,
            })
            .collect(),
        spool: SpoolRef {
            segment: 1,
            offset: id * 100,
            len: 100,
            crc: id as u32,
        },
        attempts: 0,
        next_attempt: 1_700_000_000,
        last_error: None,
        delay_warned: false,
    }
}

/// Runs every check; panics (failing the calling test) on the first violation. `open`
/// opens the backend in the given directory; it is called again on the same directory
/// to check persistence, so it must reopen what an earlier call created.
pub fn run<S: QueueStore>(open: impl Fn(&Path) -> S) {
    let base = std::env::temp_dir().join(format!(
        "mq-conformance-{}-{}",
        std::process::id(),
        unique()
    ));
    std::fs::create_dir_all(&base).expect("temp dir");
    put_get_remove(&open(&base.join("a")));
    batch_order(&open(&base.join("b")));
    scan_order_and_start(&open(&base.join("c")));
    persists_across_reopen(&open, &base.join("d"));
    empty_commit(&open(&base.join("e")));
    applied_then_synced(&open, &base.join("f"));
    let _ = std::fs::remove_dir_all(&base);
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

fn put_get_remove(store: &impl QueueStore) {
    let m = sample(7, 3);
    assert_eq!(
        store.get(m.id).unwrap(),
        None,
        "{}: empty store",
        store.backend()
    );
    store.commit(&[Change::Put(m.clone())]).unwrap();
    assert_eq!(
        store.get(m.id).unwrap().as_ref(),
        Some(&m),
        "{}: get after put",
        store.backend()
    );
    let mut changed = m.clone();
    changed.recipients[1].state = RecipientState::Delivered;
    changed.attempts = 2;
    store.commit(&[Change::Put(changed.clone())]).unwrap();
    assert_eq!(
        store.get(m.id).unwrap(),
        Some(changed),
        "{}: put replaces",
        store.backend()
    );
    store.commit(&[Change::Remove(m.id)]).unwrap();
    assert_eq!(
        store.get(m.id).unwrap(),
        None,
        "{}: removed",
        store.backend()
    );
    store.commit(&[Change::Remove(QueueId(999))]).unwrap();
}

fn batch_order(store: &impl QueueStore) {
    let a = sample(1, 1);
    let mut a2 = a.clone();
    a2.attempts = 5;
    let b = sample(2, 2);
    store
        .commit(&[
            Change::Put(a),
            Change::Put(b.clone()),
            Change::Put(a2.clone()),
            Change::Remove(b.id),
        ])
        .unwrap();
    assert_eq!(
        store.get(QueueId(1)).unwrap(),
        Some(a2),
        "{}: last put wins",
        store.backend()
    );
    assert_eq!(
        store.get(QueueId(2)).unwrap(),
        None,
        "{}: later remove wins",
        store.backend()
    );
}

fn scan_order_and_start(store: &impl QueueStore) {
    let changes: Vec<_> = [5u64, 1, 300, 70_000, 2]
        .iter()
        .map(|&i| Change::Put(sample(i, 1)))
        .collect();
    store.commit(&changes).unwrap();
    let mut ids = Vec::new();
    store
        .scan(None, &mut |m| {
            ids.push(m.id.0);
            true
        })
        .unwrap();
    assert_eq!(ids, [1, 2, 5, 300, 70_000], "{}: id order", store.backend());
    let mut from = Vec::new();
    store
        .scan(Some(QueueId(5)), &mut |m| {
            from.push(m.id.0);
            from.len() < 2
        })
        .unwrap();
    assert_eq!(from, [5, 300], "{}: start and stop", store.backend());
}

fn persists_across_reopen<S: QueueStore>(open: &impl Fn(&Path) -> S, dir: &Path) {
    {
        let store = open(dir);
        store
            .commit(&[Change::Put(sample(10, 2)), Change::Put(sample(11, 1))])
            .unwrap();
        store.commit(&[Change::Remove(QueueId(11))]).unwrap();
    }
    let store = open(dir);
    assert_eq!(
        store.get(QueueId(10)).unwrap(),
        Some(sample(10, 2)),
        "{}: survives reopen",
        store.backend()
    );
    assert_eq!(
        store.get(QueueId(11)).unwrap(),
        None,
        "{}: removal survives reopen",
        store.backend()
    );
}

fn empty_commit(store: &impl QueueStore) {
    store.commit(&[]).unwrap();
}

/// `apply` is visible at once and records its mark; after `sync` both survive reopening
/// (a store without a journal keeps no mark, and its `apply` is durable by itself).
fn applied_then_synced<S: QueueStore>(open: &impl Fn(&Path) -> S, dir: &Path) {
    let first = JournalMark {
        segment: 3,
        offset: 120,
    };
    let second = JournalMark {
        segment: 4,
        offset: 0,
    };
    let journaled = {
        let store = open(dir);
        store.apply(&[Change::Put(sample(20, 1))], first).unwrap();
        assert_eq!(
            store.get(QueueId(20)).unwrap(),
            Some(sample(20, 1)),
            "{}: applied changes are visible before a sync",
            store.backend()
        );
        store
            .apply(
                &[Change::Remove(QueueId(20)), Change::Put(sample(21, 1))],
                second,
            )
            .unwrap();
        let mark = store.mark().unwrap();
        assert!(
            mark.is_none() || mark == Some(second),
            "{}: the mark is the last one applied: {mark:?}",
            store.backend()
        );
        store.sync().unwrap();
        mark.is_some()
    };
    let store = open(dir);
    assert_eq!(store.get(QueueId(20)).unwrap(), None, "{}", store.backend());
    assert_eq!(
        store.get(QueueId(21)).unwrap(),
        Some(sample(21, 1)),
        "{}: synced changes survive reopen",
        store.backend()
    );
    if journaled {
        assert_eq!(store.mark().unwrap(), Some(second), "{}", store.backend());
    }
}
