//! Exactly once in the Maildir, whatever the queue repeats: the real queue (sled in a
//! temp dir) and the real delivery service writing real Maildirs.
//!
//! The first attempt on a message this process accepted skips the look for an earlier
//! copy (`DeliveryRequest::first_attempt`); a message recovered at open must not: it may
//! have been delivered just before a crash, and its file read (moved to `cur/`) since,
//! or torn (in `new/`, never synced).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use mail_queue::{
    Backend, MailParams, NewMessage, NewRecipient, Queue, QueueConfig, QueueId, RecipientDsn,
};
use mta_bin::delivery::{Delivery, LineEndings, LocalRoutes, LocalTarget, Maildir, Recipient};
use smtp_server::filters::DomainSet;

const BODY: &[u8] = b"Subject: once\r\n\r\nexactly once\r\n";

fn queue_config(dir: &Path) -> QueueConfig {
    QueueConfig {
        path: dir.join("queue"),
        backend: Backend::Sled,
        retry_intervals: vec![Duration::from_secs(1)],
        ..QueueConfig::default()
    }
}

fn maildir(root: &Path) -> Maildir {
    Maildir::new(root.to_owned(), "mx.test", LineEndings::Lf)
}

fn delivery(root: &Path) -> Delivery {
    Delivery::new(
        DomainSet::new(["d.test"]),
        LocalRoutes::new(Some(LocalTarget::Maildir(maildir(root))), ""),
        None,
        None,
        None,
    )
}

async fn enqueue(queue: &Queue) -> QueueId {
    let message = NewMessage {
        from: "ann@a.test".into(),
        params: MailParams::default(),
        recipients: vec![NewRecipient {
            address: "bob@d.test".into(),
            dsn: RecipientDsn::default(),
        }],
        source: "[192.0.2.1]".into(),
    };
    queue.enqueue(message, BODY.to_vec()).await.unwrap()
}

/// Runs the queue's scheduler with the real delivery service until the queue is empty
/// (every recipient final, the message gone); at most 10 s.
async fn drain(queue: &Queue, root: &Path) {
    let runner = queue.clone();
    let service = delivery(root);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(async move {
        runner
            .run(service, async {
                let _ = stopped.await;
            })
            .await
    });
    for _ in 0..200 {
        if queue.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = stop.send(());
    handle.await.unwrap();
    assert!(
        queue.is_empty(),
        "the message was delivered and left the queue"
    );
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<_> = match std::fs::read_dir(dir) {
        Ok(entries) => entries.map(|f| f.unwrap().path()).collect(),
        Err(_) => Vec::new(),
    };
    files.sort();
    files
}

/// Delivers the queued message `id` as the process before the crash did (the same
/// file, from the same metadata), and returns its path in `new/`.
fn delivered_before_the_crash(queue: &Queue, id: QueueId, root: &Path) -> PathBuf {
    let meta = queue.get(id).unwrap().expect("queued");
    let bob = Recipient {
        mailbox: "bob@d.test".into(),
        tag: None,
    };
    assert!(
        maildir(root)
            .deliver(
                &meta,
                0,
                "bob@d.test",
                &bob,
                &queue.read_body(&meta).unwrap()
            )
            .unwrap()
    );
    let [file] = files(&root.join("d.test/bob/new")).try_into().unwrap();
    file
}

/// A message accepted by this process: its first attempt writes the file once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_accepted_now_is_delivered_once() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("mail");
    let queue = Queue::open(queue_config(dir.path())).unwrap();
    enqueue(&queue).await;
    drain(&queue, &root).await;
    let inbox = root.join("d.test/bob");
    let [file] = files(&inbox.join("new")).try_into().unwrap();
    let text = std::fs::read(&file).unwrap();
    assert!(text.ends_with(b"\n\nexactly once\n"), "{text:?}");
    assert!(files(&inbox.join("cur")).is_empty());
    assert!(files(&inbox.join("tmp")).is_empty());
}

/// Recovered at open after its file was delivered and then read (moved to `cur/` with
/// the Seen flag, as Dovecot does): the repeated delivery finds it there and writes
/// nothing, so the mailbox holds the message once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recovered_message_already_read_is_not_delivered_again() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("mail");
    let inbox = root.join("d.test/bob");
    let read = {
        let queue = Queue::open(queue_config(dir.path())).unwrap();
        let id = enqueue(&queue).await;
        // Delivered, then the crash: the queue never heard of it.
        let file = delivered_before_the_crash(&queue, id, &root);
        let read = inbox.join("cur").join(format!(
            "{}:2,S",
            file.file_name().unwrap().to_string_lossy()
        ));
        std::fs::rename(&file, &read).unwrap();
        read
    };
    let queue = Queue::open(queue_config(dir.path())).unwrap();
    assert_eq!(queue.len(), 1, "recovered");
    drain(&queue, &root).await;
    assert!(
        files(&inbox.join("new")).is_empty(),
        "not delivered a second time: {:?}",
        files(&inbox.join("new"))
    );
    assert_eq!(files(&inbox.join("cur")), [read]);
}

/// Recovered at open after its file was renamed into `new/` but never synced (torn,
/// here empty): the repeated delivery writes it again, complete, in its place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recovered_message_with_a_torn_file_is_written_again_in_its_place() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("mail");
    let inbox = root.join("d.test/bob");
    let (file, complete) = {
        let queue = Queue::open(queue_config(dir.path())).unwrap();
        let id = enqueue(&queue).await;
        let file = delivered_before_the_crash(&queue, id, &root);
        let complete = std::fs::read(&file).unwrap();
        std::fs::write(&file, b"").unwrap();
        (file, complete)
    };
    let queue = Queue::open(queue_config(dir.path())).unwrap();
    drain(&queue, &root).await;
    assert_eq!(files(&inbox.join("new")), std::slice::from_ref(&file));
    assert_eq!(std::fs::read(&file).unwrap(), complete);
    assert!(files(&inbox.join("tmp")).is_empty());
}
