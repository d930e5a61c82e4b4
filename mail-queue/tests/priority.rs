//! Priorities (RFC 6710) in the scheduler: with deliveries limited to one at a time and
//! a backlog, the highest priority starts first, then the oldest; a message that
//! arrives while the slot is taken gets the next one; one due for `priority_max_wait`
//! goes first whatever its priority; priorities survive a restart; with
//! `priority_scheduling` off, the order is by age alone.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use mail_queue::{
    BoxError, DeliveryRequest, MailParams, NewMessage, NewRecipient, Outcome, Queue, QueueConfig,
    RecipientDsn,
};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tower::service_fn;

/// A message to `{name}@dest.test` with this priority.
fn message(name: &str, priority: i8) -> NewMessage {
    NewMessage {
        from: "sender@example.test".into(),
        params: MailParams {
            priority,
            ..MailParams::default()
        },
        recipients: vec![NewRecipient {
            address: format!("{name}@dest.test"),
            dsn: RecipientDsn::default(),
        }],
        source: "[192.0.2.1]".into(),
    }
}

/// One delivery at a time, so that the order of starts is the order of deliveries.
fn config(dir: &std::path::Path) -> QueueConfig {
    QueueConfig {
        path: dir.to_owned(),
        max_concurrent_deliveries: 1,
        retry_intervals: vec![Duration::from_secs(1)],
        ..QueueConfig::default()
    }
}

/// What a delivery records: the recipient's local part, in the order delivered. Each
/// delivery first reports its start on `started` and takes a permit of `gate` (which it
/// keeps), so a test can hold the first one in flight.
#[derive(Clone)]
struct Recorder {
    order: Arc<Mutex<Vec<String>>>,
    started: mpsc::UnboundedSender<String>,
    gate: Arc<Semaphore>,
}

impl Recorder {
    /// A recorder whose gate is open (`permits` deliveries may pass before the test
    /// adds more).
    fn new(permits: usize) -> (Self, mpsc::UnboundedReceiver<String>) {
        let (started, starts) = mpsc::unbounded_channel();
        let recorder = Self {
            order: Arc::default(),
            started,
            gate: Arc::new(Semaphore::new(permits)),
        };
        (recorder, starts)
    }

    fn service(
        &self,
    ) -> impl tower::Service<
        DeliveryRequest,
        Response = Vec<Outcome>,
        Error = BoxError,
        Future = impl Future<Output = Result<Vec<Outcome>, BoxError>> + Send,
    > + Clone
    + Send
    + 'static {
        let recorder = self.clone();
        service_fn(move |req: DeliveryRequest| {
            let recorder = recorder.clone();
            async move {
                let name = req.message.recipients[req.recipients[0]]
                    .address
                    .split('@')
                    .next()
                    .unwrap_or_default()
                    .to_owned();
                let _ = recorder.started.send(name.clone());
                recorder.gate.acquire().await?.forget();
                recorder.order.lock().unwrap().push(name);
                Ok(vec![
                    Outcome::Delivered("250 2.0.0 ok".into());
                    req.recipients.len()
                ])
            }
        })
    }

    fn order(&self) -> Vec<String> {
        self.order.lock().unwrap().clone()
    }
}

/// Runs the scheduler until the queue is empty (every message delivered), then stops it.
async fn drain(queue: &Queue, recorder: &Recorder) {
    let (stop, stopped) = oneshot::channel::<()>();
    let runner = queue.clone();
    let service = recorder.service();
    let handle = tokio::spawn(async move {
        runner
            .run(service, async {
                let _ = stopped.await;
            })
            .await;
    });
    wait_empty(queue).await;
    let _ = stop.send(());
    handle.await.unwrap();
}

/// Waits (at most 30 s, then fails) for the queue to be empty.
async fn wait_empty(queue: &Queue) {
    for _ in 0..300 {
        if queue.is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the queue did not empty: {} messages left", queue.len());
}

async fn enqueue(queue: &Queue, name: &str, priority: i8) {
    queue
        .enqueue(message(name, priority), b"Subject: x\r\n\r\nx\r\n".to_vec())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_starts_highest_priority_first_then_oldest() {
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(config(dir.path())).unwrap();
    for (name, priority) in [
        ("low0", 0),
        ("neg", -3),
        ("low1", 0),
        ("six", 6),
        ("low2", 0),
        ("nine", 9),
        ("six-b", 6),
        ("low3", 0),
    ] {
        enqueue(&queue, name, priority).await;
    }
    let (recorder, _starts) = Recorder::new(usize::MAX >> 4);
    drain(&queue, &recorder).await;
    assert_eq!(
        recorder.order(),
        [
            "nine", "six", "six-b", "low0", "low1", "low2", "low3", "neg"
        ]
    );
}

/// A message due for longer than `priority_max_wait` starts before messages of higher
/// priority that came after it; without the limit it would start last.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_due_for_priority_max_wait_goes_before_higher_priorities() {
    for (max_wait, expected) in [
        (Some(Duration::from_secs(2)), ["old-low", "high1", "high2"]),
        (None, ["high1", "high2", "old-low"]),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let queue = Queue::open(QueueConfig {
            priority_max_wait: max_wait,
            ..config(dir.path())
        })
        .unwrap();
        enqueue(&queue, "old-low", -5).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        enqueue(&queue, "high1", 9).await;
        enqueue(&queue, "high2", 9).await;
        let (recorder, _starts) = Recorder::new(usize::MAX >> 4);
        drain(&queue, &recorder).await;
        assert_eq!(recorder.order(), expected, "{max_wait:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_arriving_while_the_slot_is_taken_gets_the_next_one() {
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(config(dir.path())).unwrap();
    for name in ["low0", "low1", "low2", "low3"] {
        enqueue(&queue, name, 0).await;
    }
    // The gate is closed: the first delivery starts and waits there.
    let (recorder, mut starts) = Recorder::new(0);
    let (stop, stopped) = oneshot::channel::<()>();
    let runner = queue.clone();
    let service = recorder.service();
    let handle = tokio::spawn(async move {
        runner
            .run(service, async {
                let _ = stopped.await;
            })
            .await;
    });
    assert_eq!(starts.recv().await.as_deref(), Some("low0"));
    // The only slot is taken and three messages wait: the urgent one arrives.
    enqueue(&queue, "urgent", 6).await;
    recorder.gate.add_permits(usize::MAX >> 4);
    wait_empty(&queue).await;
    let _ = stop.send(());
    handle.await.unwrap();
    assert_eq!(recorder.order(), ["low0", "urgent", "low1", "low2", "low3"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priorities_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let queue = Queue::open(config(dir.path())).unwrap();
        enqueue(&queue, "low0", 0).await;
        enqueue(&queue, "low1", -1).await;
        enqueue(&queue, "high", 4).await;
        assert_eq!(queue.len(), 3);
    }
    // The first queue's committer lets go of the store when it sees the queue gone.
    let mut reopened = Queue::open(config(dir.path()));
    for _ in 0..100 {
        if reopened.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        reopened = Queue::open(config(dir.path()));
    }
    let queue = reopened.unwrap();
    assert_eq!(queue.len(), 3);
    let mut stored = Vec::new();
    queue
        .scan(None, &mut |m| {
            stored.push(m.params.priority());
            true
        })
        .unwrap();
    assert_eq!(stored, [0, -1, 4]);
    let (recorder, _starts) = Recorder::new(usize::MAX >> 4);
    drain(&queue, &recorder).await;
    assert_eq!(recorder.order(), ["high", "low0", "low1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_priority_scheduling_the_oldest_goes_first() {
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(QueueConfig {
        priority_scheduling: false,
        ..config(dir.path())
    })
    .unwrap();
    enqueue(&queue, "low0", 0).await;
    enqueue(&queue, "high", 9).await;
    enqueue(&queue, "low1", -9).await;
    let (recorder, _starts) = Recorder::new(usize::MAX >> 4);
    drain(&queue, &recorder).await;
    assert_eq!(recorder.order(), ["low0", "high", "low1"]);
    // The priority is still kept with the message (for relaying), only not used here.
}
