//! The group committer on a real store in a temp directory: a failed metadata commit
//! fails its batch only, and leaves nothing behind; batches committed while sessions
//! keep sending are all there after a restart, each body with its record.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use mail_queue::{
    Change, MailParams, MessageMeta, NewMessage, NewRecipient, Queue, QueueConfig, QueueError,
    QueueId, QueueStore, RecipientDsn, SledStore,
};

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
        // Small segments: the runs below rotate through several.
        segment_size: 16 * 1024,
        ..QueueConfig::default()
    }
}

/// sled, with commits that fail with ENOSPC (a full disk) while `failing` is set, and
/// that take `delay` longer than they would, so that jobs queue up behind a batch.
#[derive(Debug)]
struct Flaky {
    inner: SledStore,
    failing: AtomicBool,
    delay: Duration,
    commits: AtomicUsize,
}

impl QueueStore for Flaky {
    fn commit(&self, changes: &[Change]) -> Result<(), QueueError> {
        std::thread::sleep(self.delay);
        self.commits.fetch_add(1, Ordering::Relaxed);
        if self.failing.load(Ordering::Relaxed) {
            return Err(QueueError::Io(std::io::Error::from_raw_os_error(28)));
        }
        self.inner.commit(changes)
    }

    fn get(&self, id: QueueId) -> Result<Option<MessageMeta>, QueueError> {
        self.inner.get(id)
    }

    fn scan(
        &self,
        start: Option<QueueId>,
        f: &mut dyn FnMut(MessageMeta) -> bool,
    ) -> Result<(), QueueError> {
        self.inner.scan(start, f)
    }

    fn backend(&self) -> &'static str {
        "flaky sled"
    }
}

fn flaky(dir: &std::path::Path, delay: Duration) -> Arc<Flaky> {
    std::fs::create_dir_all(dir).unwrap();
    Arc::new(Flaky {
        inner: SledStore::open(&dir.join("meta")).unwrap(),
        failing: AtomicBool::new(false),
        delay,
        commits: AtomicUsize::new(0),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_metadata_commit_refuses_its_messages_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = flaky(dir.path(), Duration::ZERO);
    let kept = {
        let queue = Queue::with_store(config(dir.path()), store.clone()).unwrap();
        store.failing.store(true, Ordering::Relaxed);
        let refused = queue
            .enqueue(
                message("a@x.test"),
                b"Subject: refused\r\n\r\nno\r\n".to_vec(),
            )
            .await
            .expect_err("the store refused the batch");
        // The client hears a full disk: 452 4.3.1, and keeps the message.
        let reply = refused.reply().to_string();
        assert!(reply.starts_with("452 4.3.1 "), "{reply}");
        store.failing.store(false, Ordering::Relaxed);
        let id = queue
            .enqueue(
                message("b@x.test"),
                b"Subject: kept\r\n\r\nyes\r\n".to_vec(),
            )
            .await
            .expect("the store works again, and so does the queue");
        assert_eq!(queue.len(), 1);
        id
    };
    drop(store);
    let queue = reopen(dir.path()).await;
    assert_eq!(queue.len(), 1, "only the acknowledged message is there");
    let meta = queue.get(only_id(&queue)).unwrap().expect("present");
    assert_eq!(meta.id, kept);
    assert_eq!(meta.recipients[0].address, "b@x.test");
    assert_eq!(
        queue.read_body(&meta).unwrap(),
        &b"Subject: kept\r\n\r\nyes\r\n"[..]
    );
}

/// Opens the queue again. sled gives up its directory's lock once its last background
/// task lets go of it, a moment after the store is dropped: wait for that (10 s at most).
async fn reopen(dir: &std::path::Path) -> Queue {
    for _ in 0..500 {
        match Queue::open(config(dir)) {
            Ok(queue) => return queue,
            Err(e) if e.to_string().contains("lock") => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("reopening the queue: {e}"),
        }
    }
    panic!("sled never released its lock");
}

/// The one message in the queue.
fn only_id(queue: &Queue) -> QueueId {
    let mut ids = Vec::new();
    queue
        .scan(None, &mut |meta: MessageMeta| {
            ids.push(meta.id);
            true
        })
        .unwrap();
    assert_eq!(ids.len(), 1);
    ids[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_committed_while_sessions_send_are_all_there_with_their_bodies() {
    let dir = tempfile::tempdir().unwrap();
    // A slow store: while it commits one batch, the next jobs queue up.
    let store = flaky(dir.path(), Duration::from_millis(20));
    let acknowledged = {
        let queue = Queue::with_store(config(dir.path()), store.clone()).unwrap();
        // 100 sessions, each sending 3 messages one after the other: the later ones
        // arrive while earlier batches are being committed.
        let tasks: Vec<_> = (0..100)
            .map(|session| {
                let q = queue.clone();
                tokio::spawn(async move {
                    let mut acknowledged = Vec::new();
                    for i in (0..3).map(|n| session * 3 + n) {
                        // Different sizes, so that each body's place matters.
                        let body = format!("Subject: {i}\r\n\r\n{}\r\n", "x".repeat(i * 7));
                        let to = format!("r{i}@x.test");
                        let id = q.enqueue(message(&to), body.clone().into_bytes()).await?;
                        acknowledged.push((id, i, body));
                    }
                    Ok::<_, QueueError>(acknowledged)
                })
            })
            .collect();
        let mut acknowledged = Vec::new();
        for t in tasks {
            acknowledged.extend(t.await.unwrap().unwrap());
        }
        let (batches, jobs) = queue.commit_stats();
        assert_eq!(jobs, 300);
        assert!(batches >= 3, "each session's messages are in 3 batches");
        assert!(batches < 300, "{jobs} messages in {batches} batches");
        acknowledged
    };
    drop(store);
    let queue = reopen(dir.path()).await;
    assert_eq!(queue.len(), 300);
    for (id, i, body) in acknowledged {
        let meta = queue.get(id).unwrap().expect("every acknowledged message");
        assert_eq!(meta.recipients[0].address, format!("r{i}@x.test"));
        assert_eq!(queue.read_body(&meta).unwrap(), body.as_bytes());
    }
}
