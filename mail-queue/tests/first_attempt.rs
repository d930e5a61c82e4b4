//! `DeliveryRequest::first_attempt`: true only for the first attempt on a message this
//! process accepted; every retry, and every message recovered at open, says `false`
//! (a delivery may then repeat an earlier one, and must look for it).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use mail_queue::{
    Backend, BoxError, DeliveryRequest, MailParams, NewMessage, NewRecipient, Outcome, Queue,
    QueueConfig, RecipientDsn,
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

/// Every attempt seen: (recipient addresses, first_attempt).
type Seen = Arc<Mutex<Vec<(Vec<String>, bool)>>>;

/// Runs the scheduler with a service that defers every recipient and records each
/// request, until `attempts` requests were seen; then stops it.
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
    let runner = queue.clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(async move {
        runner
            .run(service, async {
                let _ = stopped.await;
            })
            .await
    });
    for _ in 0..100 {
        if seen.lock().unwrap().len() >= attempts {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = stop.send(());
    handle.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_first_attempt_since_acceptance_is_marked_first() {
    let dir = tempfile::tempdir().unwrap();
    let config = QueueConfig {
        path: dir.path().to_owned(),
        backend: Backend::Sled,
        retry_intervals: vec![Duration::from_secs(1)],
        ..QueueConfig::default()
    };
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
