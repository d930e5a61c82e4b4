//! Fills a queue directory with many messages, for measuring queue tools at scale
//! (`bench/queue_control.sh`).
//!
//! ```sh
//! cargo run --release -p mail-queue --example fill_queue -- /var/tmp/q 1000000
//! ```
//!
//! Each message has a 1 KB body and one recipient in one of 100 domains
//! (`user<n>@d<n % 100>.example`); they are enqueued 512 at a time, so the group
//! committer shares each fsync among many of them.

#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::time::Instant;

use mail_queue::{MailParams, NewMessage, NewRecipient, Queue, QueueConfig, RecipientDsn};

const IN_FLIGHT: usize = 512;

fn message(n: u64) -> (NewMessage, Vec<u8>) {
    let message = NewMessage {
        from: format!("sender{}@source.example", n % 7),
        params: MailParams::default(),
        recipients: vec![NewRecipient {
            address: format!("user{n}@d{}.example", n % 100),
            dsn: RecipientDsn::default(),
        }],
        source: "[192.0.2.1]".into(),
    };
    let mut body = format!("Subject: message {n}\r\n\r\n").into_bytes();
    body.resize(1022, b'x');
    body.extend_from_slice(b"\r\n");
    (message, body)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(path), Some(count)) = (args.next(), args.next()) else {
        eprintln!("usage: fill_queue QUEUE_DIR COUNT");
        std::process::exit(2);
    };
    let count: u64 = count.parse()?;
    let queue = Queue::open(QueueConfig {
        path: path.into(),
        ..QueueConfig::default()
    })?;
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let mut done = 0u64;
    for n in 0..count {
        if tasks.len() >= IN_FLIGHT
            && let Some(result) = tasks.join_next().await
        {
            result??;
            done += 1;
        }
        let queue = queue.clone();
        tasks.spawn(async move {
            let (m, body) = message(n);
            queue.enqueue(m, body).await.map(|_| ())
        });
        if n > 0 && n % 100_000 == 0 {
            eprintln!(
                "fill_queue: {n} messages ({:.0}/s)",
                n as f64 / start.elapsed().as_secs_f64()
            );
        }
    }
    while let Some(result) = tasks.join_next().await {
        result??;
        done += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "fill_queue: {done} messages in {secs:.1} s ({:.0}/s); the queue holds {}",
        done as f64 / secs,
        queue.len()
    );
    Ok(())
}
