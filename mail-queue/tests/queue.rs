//! The queue end to end on a temp directory: durable enqueue, recovery, retries,
//! expiry, group commit.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use mail_queue::{
    Action, ActionResult, Backend, BoxError, DeliveryReport, DeliveryRequest, MailParams,
    MessageState, NewMessage, NewRecipient, Outcome, Queue, QueueConfig, RecipientDsn,
    RecipientState,
};
use tower::service_fn;

fn message(recipients: &[&str]) -> NewMessage {
    NewMessage {
        from: "sender@example.test".into(),
        params: MailParams::default(),
        recipients: recipients
            .iter()
            .map(|a| NewRecipient {
                address: (*a).into(),
                dsn: RecipientDsn::default(),
            })
            .collect(),
        source: "[192.0.2.1]".into(),
    }
}

fn config(dir: &std::path::Path, backend: Backend) -> QueueConfig {
    QueueConfig {
        path: dir.to_owned(),
        backend,
        retry_intervals: vec![Duration::from_secs(1)],
        ..QueueConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueued_messages_survive_reopen() {
    for backend in [Backend::Sled, Backend::Redb] {
        let dir = tempfile::tempdir().unwrap();
        let body = b"Subject: durable\r\n\r\nhello\r\n".to_vec();
        let id = {
            let queue = Queue::open(config(dir.path(), backend)).unwrap();
            let id = queue
                .enqueue(message(&["a@x.test", "b@y.test"]), body.clone())
                .await
                .unwrap();
            assert_eq!(queue.len(), 1);
            id
        };
        let queue = Queue::open(config(dir.path(), backend)).unwrap();
        assert_eq!(queue.len(), 1, "{backend:?}: recovered");
        let meta = queue.get(id).unwrap().expect("present after reopen");
        assert_eq!(meta.recipients.len(), 2);
        assert_eq!(queue.read_body(&meta).unwrap(), body);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_enqueues_share_commits() {
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(config(dir.path(), Backend::Sled)).unwrap();
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let q = queue.clone();
            tokio::spawn(async move {
                q.enqueue(message(&["a@x.test"]), format!("body {i}\r\n").into_bytes())
                    .await
            })
        })
        .collect();
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await.unwrap().unwrap());
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 200, "ids are unique");
    let (batches, jobs) = queue.commit_stats();
    assert_eq!(jobs, 200);
    assert!(
        batches < jobs,
        "group commit: {jobs} messages in {batches} batches"
    );
}

/// A delivery service that answers by the recipient's local part.
fn scripted(
    log: Arc<Mutex<Vec<String>>>,
) -> impl tower::Service<
    DeliveryRequest,
    Response = DeliveryReport,
    Error = BoxError,
    Future = impl std::future::Future<Output = Result<DeliveryReport, BoxError>> + Send,
> + Clone
+ Send
+ 'static {
    service_fn(move |req: DeliveryRequest| {
        let log = Arc::clone(&log);
        async move {
            let mut out = Vec::new();
            for address in req.addresses() {
                log.lock().unwrap().push(address.to_owned());
                out.push(if address.starts_with("ok") {
                    Outcome::Delivered("250 ok".into())
                } else if address.starts_with("bad") {
                    Outcome::Failed("550 5.1.1 no such user".into())
                } else {
                    Outcome::Deferred("451 4.3.0 try later".into())
                });
            }
            Ok::<_, BoxError>(out)
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_update_recipients_and_retry() {
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(config(dir.path(), Backend::Sled)).unwrap();
    let id = queue
        .enqueue(
            message(&["ok1@x.test", "bad@x.test", "later@y.test"]),
            b"x\r\n".to_vec(),
        )
        .await
        .unwrap();
    let done = queue
        .enqueue(message(&["ok2@z.test"]), b"y\r\n".to_vec())
        .await
        .unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let (stop, handle) = run_scheduler(&queue, scripted(Arc::clone(&log)));
    // Wait for two attempts of the deferred recipient (retry interval 1 s).
    for _ in 0..100 {
        if log
            .lock()
            .unwrap()
            .iter()
            .filter(|a| a.starts_with("later"))
            .count()
            >= 2
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = stop.send(());
    handle.await.unwrap();
    let log = log.lock().unwrap().clone();
    assert_eq!(
        log.iter().filter(|a| a.starts_with("ok1")).count(),
        1,
        "delivered once: {log:?}"
    );
    assert_eq!(
        log.iter().filter(|a| a.starts_with("bad")).count(),
        1,
        "failed once: {log:?}"
    );
    assert!(
        log.iter().filter(|a| a.starts_with("later")).count() >= 2,
        "retried: {log:?}"
    );
    assert!(
        queue.get(done).unwrap().is_none(),
        "a finished message leaves the queue"
    );
    let meta = queue.get(id).unwrap().expect("still queued");
    assert_eq!(meta.recipients[0].state, RecipientState::Delivered);
    assert_eq!(meta.recipients[1].state, RecipientState::Failed);
    assert_eq!(meta.recipients[2].state, RecipientState::Pending);
    assert!(meta.attempts >= 2);
    assert_eq!(meta.last_error.as_deref(), Some("451 4.3.0 try later"));
}

/// A delivery that panics (a bug in a delivery service) defers its recipients: they
/// are tried again, never dropped, and the other domains' recipients are unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_that_panics_defers_its_recipients() {
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(config(dir.path(), Backend::Sled)).unwrap();
    let id = queue
        .enqueue(message(&["ok@x.test", "boom@y.test"]), b"x\r\n".to_vec())
        .await
        .unwrap();
    let tries = Arc::new(Mutex::new(0));
    let counted = Arc::clone(&tries);
    let service = service_fn(move |req: DeliveryRequest| {
        let counted = Arc::clone(&counted);
        async move {
            let addresses: Vec<String> = req.addresses().map(str::to_owned).collect();
            if addresses.iter().any(|a| a.starts_with("boom")) {
                *counted.lock().unwrap() += 1;
                panic!("a bug in the delivery service");
            }
            Ok::<_, BoxError>(vec![Outcome::Delivered("250 ok".into()); addresses.len()])
        }
    });
    let (stop, handle) = run_scheduler(&queue, service);
    for _ in 0..100 {
        if *tries.lock().unwrap() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = stop.send(());
    handle.await.unwrap();
    assert!(*tries.lock().unwrap() >= 2, "tried again after the panic");
    let meta = queue.get(id).unwrap().expect("still queued");
    assert_eq!(meta.recipients[0].state, RecipientState::Delivered);
    assert_eq!(meta.recipients[1].state, RecipientState::Pending);
    let reason = meta.recipients[1].last_reply.clone().unwrap_or_default();
    assert!(reason.contains("delivery task failed"), "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_messages_fail() {
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(QueueConfig {
        max_age: Duration::ZERO,
        ..config(dir.path(), Backend::Redb)
    })
    .unwrap();
    let id = queue
        .enqueue(message(&["later@y.test"]), b"x\r\n".to_vec())
        .await
        .unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let (stop, handle) = run_scheduler(&queue, scripted(Arc::clone(&log)));
    for _ in 0..50 {
        if queue.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = stop.send(());
    handle.await.unwrap();
    assert!(
        queue.get(id).unwrap().is_none(),
        "expired after one attempt and removed"
    );
    let log = log.lock().unwrap();
    assert_eq!(
        log.iter().filter(|a| a.starts_with("later")).count(),
        1,
        "{log:?}"
    );
}

/// All messages in the queue: `(from, recipients, body)`.
fn contents(queue: &Queue) -> Vec<(String, Vec<String>, String)> {
    let mut out = Vec::new();
    queue
        .scan(None, &mut |m| {
            let body = String::from_utf8_lossy(&queue.read_body(&m).unwrap()).into_owned();
            out.push((
                m.from.clone(),
                m.recipients.iter().map(|r| r.address.clone()).collect(),
                body,
            ));
            true
        })
        .unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_bounce_to_the_sender_but_never_from_the_null_sender() {
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(QueueConfig {
        hostname: "mx.example.test".into(),
        ..config(dir.path(), Backend::Sled)
    })
    .unwrap();
    queue
        .enqueue(
            message(&["bad@x.test", "ok@x.test"]),
            b"Subject: will bounce\r\n\r\nx\r\n".to_vec(),
        )
        .await
        .unwrap();
    let mut from_null = message(&["bad@y.test"]);
    from_null.from = String::new();
    queue
        .enqueue(from_null, b"Subject: a bounce itself\r\n\r\nx\r\n".to_vec())
        .await
        .unwrap();
    let mut never = message(&["bad@z.test"]);
    never.recipients[0].dsn.notify = Some(0);
    queue
        .enqueue(never, b"Subject: notify never\r\n\r\nx\r\n".to_vec())
        .await
        .unwrap();

    let (stop, handle) = run_scheduler(&queue, scripted(Arc::new(Mutex::new(Vec::new()))));
    // The three originals finish; one bounce (to sender@example.test) stays, deferred
    // by the scripted service.
    for _ in 0..100 {
        let c = contents(&queue);
        if c.len() == 1 && c[0].0.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = stop.send(());
    handle.await.unwrap();
    let c = contents(&queue);
    assert_eq!(c.len(), 1, "exactly one bounce: {c:?}");
    let (from, to, body) = &c[0];
    assert_eq!(
        (from.as_str(), to.as_slice()),
        ("", &["sender@example.test".to_owned()][..])
    );
    assert!(
        body.contains("Final-Recipient: rfc822; bad@x.test\r\nAction: failed\r\nStatus: 5.1.1\r\n"),
        "{body}"
    );
    assert!(
        body.contains("Subject: will bounce"),
        "the original comes back"
    );
    assert!(
        !body.contains("ok@x.test"),
        "the delivered recipient is not reported"
    );
}

/// With a notification route, a bounce goes to the addresses the sender stands for
/// (the members of an alias), and to the sender itself where the route gives none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_follow_the_route_set_for_the_sender() {
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(QueueConfig {
        hostname: "mx.example.test".into(),
        ..config(dir.path(), Backend::Sled)
    })
    .unwrap();
    queue.route_notifications(Some(Arc::new(|sender: &str| {
        if sender == "sales@example.test" {
            vec!["ann@example.test".to_owned(), "bob@example.test".to_owned()]
        } else {
            Vec::new()
        }
    })));
    let mut from_alias = message(&["bad@x.test"]);
    from_alias.from = "sales@example.test".into();
    queue
        .enqueue(from_alias, b"Subject: from the alias\r\n\r\nx\r\n".to_vec())
        .await
        .unwrap();
    queue
        .enqueue(
            message(&["bad@y.test"]),
            b"Subject: plain\r\n\r\nx\r\n".to_vec(),
        )
        .await
        .unwrap();
    let (stop, handle) = run_scheduler(&queue, scripted(Arc::new(Mutex::new(Vec::new()))));
    for _ in 0..100 {
        let c = contents(&queue);
        if c.len() == 2 && c.iter().all(|m| m.0.is_empty()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = stop.send(());
    handle.await.unwrap();
    let mut bounces: Vec<Vec<String>> = contents(&queue)
        .into_iter()
        .filter(|(from, _, _)| from.is_empty())
        .map(|(_, to, _)| to)
        .collect();
    bounces.sort();
    assert_eq!(
        bounces,
        [
            vec!["ann@example.test".to_owned(), "bob@example.test".to_owned()],
            vec!["sender@example.test".to_owned()],
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_bounces_and_delay_warnings_are_sent_once() {
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(QueueConfig {
        delay_warning: Some(Duration::ZERO),
        max_age: Duration::from_secs(2),
        ..config(dir.path(), Backend::Redb)
    })
    .unwrap();
    queue
        .enqueue(
            message(&["later@y.test"]),
            b"Subject: slow\r\n\r\nx\r\n".to_vec(),
        )
        .await
        .unwrap();
    // later@ is always deferred; the sender's mailbox takes the notifications.
    let received = Arc::new(Mutex::new(Vec::<String>::new()));
    let inbox = Arc::clone(&received);
    let service = service_fn(move |req: DeliveryRequest| {
        let inbox = Arc::clone(&inbox);
        async move {
            let out = req
                .addresses()
                .map(|a| {
                    if a.starts_with("later") {
                        Outcome::Deferred("451 4.3.0 try later".into())
                    } else {
                        inbox
                            .lock()
                            .unwrap()
                            .push(String::from_utf8_lossy(&req.body).into_owned());
                        Outcome::Delivered("250 ok".into())
                    }
                })
                .collect();
            Ok::<_, BoxError>(out)
        }
    });
    let (stop, handle) = run_scheduler(&queue, service);
    for _ in 0..100 {
        if received
            .lock()
            .unwrap()
            .iter()
            .any(|b| b.contains("Action: failed"))
            && queue.is_empty()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = stop.send(());
    handle.await.unwrap();
    let received = received.lock().unwrap();
    let delayed = received
        .iter()
        .filter(|b| b.contains("Action: delayed"))
        .count();
    assert_eq!(delayed, 1, "one delay notice, not one per attempt");
    let failed: Vec<_> = received
        .iter()
        .filter(|b| b.contains("Action: failed"))
        .collect();
    assert_eq!(failed.len(), 1, "one bounce at expiry");
    assert!(
        failed[0].contains("Status: 4.4.7\r\n")
            && failed[0].contains("Diagnostic-Code: x-local; expired after"),
        "{}",
        failed[0]
    );
    assert!(queue.is_empty());
}

/// Runs the scheduler with `service` until the returned sender is used or dropped.
fn run_scheduler<S: mail_queue::DeliveryService>(
    queue: &Queue,
    service: S,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let runner = queue.clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(async move {
        runner
            .run(service, async {
                let _ = stopped.await;
            })
            .await
    });
    (stop, handle)
}

/// Waits (up to 5 s) until `check` holds.
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..100 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for: {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_messages_wait_across_restarts_until_released() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), Backend::Sled);
    let id = {
        let queue = Queue::open(cfg.clone()).unwrap();
        let id = queue
            .enqueue(message(&["ok@x.test"]), b"x\r\n".to_vec())
            .await
            .unwrap();
        let results = queue.act(&[id], Action::Hold).await.unwrap();
        assert_eq!(results, vec![(id, ActionResult::Done)]);
        let again = queue.act(&[id], Action::Hold).await.unwrap();
        assert_eq!(again[0].1, ActionResult::Unchanged("already held".into()));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let oldest = queue.oldest();
        assert_eq!((oldest.waiting, oldest.active), (None, None));
        assert!(
            oldest.held.is_some_and(|t| t <= now && now - t < 60),
            "{oldest:?}"
        );
        id
    };
    let queue = Queue::open(cfg).unwrap();
    let meta = queue.get(id).unwrap().unwrap();
    assert!(meta.is_held(), "held after a restart");
    assert_eq!(queue.state(&meta), MessageState::Held);
    let log = Arc::new(Mutex::new(Vec::new()));
    let (stop, handle) = run_scheduler(&queue, scripted(Arc::clone(&log)));
    queue.flush();
    let flushed = queue.act(&[id], Action::Flush).await.unwrap();
    assert_eq!(
        flushed[0].1,
        ActionResult::Unchanged("held: release it first".into())
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        log.lock().unwrap().is_empty(),
        "a held message is not tried"
    );
    assert_eq!(queue.len(), 1);

    let released = queue.act(&[id], Action::Release).await.unwrap();
    assert_eq!(released[0].1, ActionResult::Done);
    eventually("delivery after release", || queue.is_empty()).await;
    assert_eq!(*log.lock().unwrap(), vec!["ok@x.test".to_owned()]);
    let _ = stop.send(());
    handle.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_is_silent_and_bounce_tells_the_sender() {
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(QueueConfig {
        hostname: "mx.example.test".into(),
        retry_intervals: vec![Duration::from_secs(3600)],
        ..config(dir.path(), Backend::Sled)
    })
    .unwrap();
    let deleted = queue
        .enqueue(
            message(&["later@x.test"]),
            b"Subject: deleted\r\n\r\nx\r\n".to_vec(),
        )
        .await
        .unwrap();
    let bounced = queue
        .enqueue(
            message(&["later@y.test", "ok@y.test"]),
            b"Subject: bounced\r\n\r\nx\r\n".to_vec(),
        )
        .await
        .unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let (stop, handle) = run_scheduler(&queue, scripted(Arc::clone(&log)));
    // One attempt each: `later@` is deferred for an hour, ok@y.test delivered.
    eventually("first attempts", || log.lock().unwrap().len() == 3).await;
    eventually("deferred", || {
        queue
            .get(bounced)
            .unwrap()
            .is_some_and(|m| queue.state(&m) == MessageState::Deferred)
    })
    .await;

    let summary = queue.summary().unwrap();
    assert_eq!(summary.messages, 2);
    assert_eq!(summary.by_state.get("deferred"), Some(&2));
    assert_eq!(summary.by_age[0], 2, "both younger than 5 minutes");
    assert_eq!(
        summary.domains.keys().collect::<Vec<_>>(),
        ["x.test", "y.test"],
        "domains of the pending recipients only"
    );

    let results = queue
        .act(&[deleted, bounced, mail_queue::QueueId(1)], Action::Delete)
        .await
        .unwrap();
    assert_eq!(results[0].1, ActionResult::Done);
    assert_eq!(results[2].1, ActionResult::NotFound);
    // (bounced was deleted too: enqueue it again to bounce it)
    assert_eq!(results[1].1, ActionResult::Done);
    let bounced = queue
        .enqueue(
            message(&["later@y.test"]),
            b"Subject: bounced\r\n\r\nx\r\n".to_vec(),
        )
        .await
        .unwrap();
    eventually("attempted", || log.lock().unwrap().len() == 4).await;
    // Deferred, and no longer in flight (its record is written before the attempt
    // ends).
    eventually("deferred", || {
        queue.get(bounced).unwrap().is_some_and(|m| {
            m.attempts == 1 && queue.state(&m) == mail_queue::MessageState::Deferred
        })
    })
    .await;
    assert_eq!(
        queue.act(&[bounced], Action::Bounce).await.unwrap()[0].1,
        ActionResult::Done
    );
    // The original leaves; its notification stays (the scripted service defers the
    // sender's address), so the queue holds exactly that.
    eventually("bounce queued", || {
        let c = contents(&queue);
        c.len() == 1 && c[0].0.is_empty()
    })
    .await;
    let _ = stop.send(());
    handle.await.unwrap();
    let c = contents(&queue);
    let (_, to, body) = &c[0];
    assert_eq!(to, &["sender@example.test".to_owned()]);
    assert!(
        body.contains(
            "Final-Recipient: rfc822; later@y.test\r\nAction: failed\r\nStatus: 5.0.0\r\n"
        ),
        "{body}"
    );
    assert!(
        body.contains("returned to the sender by the postmaster"),
        "{body}"
    );
    assert!(!body.contains("Subject: deleted"), "delete tells no one");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_action_on_a_message_being_delivered_applies_after_the_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(QueueConfig {
        retry_intervals: vec![Duration::from_secs(3600)],
        ..config(dir.path(), Backend::Sled)
    })
    .unwrap();
    let id = queue
        .enqueue(message(&["slow@x.test"]), b"x\r\n".to_vec())
        .await
        .unwrap();
    let started = Arc::new(tokio::sync::Notify::new());
    let proceed = Arc::new(tokio::sync::Semaphore::new(0));
    let (s, p) = (Arc::clone(&started), Arc::clone(&proceed));
    let service = service_fn(move |req: DeliveryRequest| {
        let (s, p) = (Arc::clone(&s), Arc::clone(&p));
        async move {
            s.notify_one();
            let _permit = p.acquire().await;
            Ok::<_, BoxError>(vec![
                Outcome::Deferred("451 4.3.0 try later".into());
                req.recipients.len()
            ])
        }
    });
    let (stop, handle) = run_scheduler(&queue, service);
    started.notified().await;
    let meta = queue.get(id).unwrap().unwrap();
    assert_eq!(queue.state(&meta), MessageState::Active);
    assert_eq!(
        queue.act(&[id], Action::Hold).await.unwrap()[0].1,
        ActionResult::AfterAttempt
    );
    proceed.add_permits(1);
    // The stored record is written before the scheduler's own view is updated: wait
    // for both (a reader in between sees the message still active, never lost).
    eventually("held after the attempt", || {
        queue
            .get(id)
            .unwrap()
            .is_some_and(|m| m.is_held() && queue.state(&m) == MessageState::Held)
    })
    .await;
    let meta = queue.get(id).unwrap().unwrap();
    assert_eq!(meta.attempts, 1, "the attempt was recorded");
    let _ = stop.send(());
    handle.await.unwrap();
}

/// `DeliveryRequest::first_attempt`: true only for the first attempt on a message this
/// process accepted; every retry, and every message recovered at open, says `false`
/// (a delivery may then repeat an earlier one, and must look for it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_first_attempt_since_acceptance_is_marked_first() {
    /// Every attempt seen: (recipient addresses, first_attempt).
    type Seen = Arc<Mutex<Vec<(Vec<String>, bool)>>>;
    /// Runs the scheduler, every recipient deferred and each request recorded, until
    /// `attempts` requests were seen.
    async fn run_until(queue: &Queue, seen: &Seen, attempts: usize) {
        let log = Arc::clone(seen);
        let service = service_fn(move |req: DeliveryRequest| {
            let log = Arc::clone(&log);
            async move {
                let addresses: Vec<String> = req.addresses().map(str::to_owned).collect();
                let out = vec![Outcome::Deferred("451 4.3.0 try later".into()); addresses.len()];
                log.lock().unwrap().push((addresses, req.first_attempt));
                Ok::<_, BoxError>(out)
            }
        });
        let (stop, handle) = run_scheduler(queue, service);
        eventually("the attempts", || seen.lock().unwrap().len() >= attempts).await;
        let _ = stop.send(());
        handle.await.unwrap();
    }

    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), Backend::Sled);
    let seen: Seen = Arc::default();
    {
        let queue = Queue::open(config.clone()).unwrap();
        // Two domains: two requests of the same (first) attempt.
        queue
            .enqueue(message(&["a@x.test", "b@y.test"]), b"x\r\n".to_vec())
            .await
            .unwrap();
        run_until(&queue, &seen, 4).await;
    }
    let attempts = seen.lock().unwrap().clone();
    assert!(attempts.len() >= 4, "{attempts:?}");
    assert!(
        attempts[..2].iter().all(|(_, first)| *first),
        "{attempts:?}"
    );
    assert!(
        attempts[2..].iter().all(|(_, first)| !*first),
        "retries are not first attempts: {attempts:?}"
    );
    // Recovered at open: it may have been delivered before a crash.
    seen.lock().unwrap().clear();
    let queue = Queue::open(config).unwrap();
    run_until(&queue, &seen, 1).await;
    let attempts = seen.lock().unwrap().clone();
    assert!(!attempts.is_empty());
    assert!(
        attempts.iter().all(|(_, first)| !*first),
        "a recovered message is no first attempt: {attempts:?}"
    );
}
