//! `[metrics]`: Prometheus metrics (`/metrics`), liveness (`/healthz`) and readiness
//! (`/readyz`: listeners up, queue directory writable) over plain HTTP, for a scraper
//! on a trusted network. `docs/metrics.md` lists every metric.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use mail_queue::Queue;
use smtp_server::{ListenerMode, ServerStats};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// What the endpoint reads.
#[derive(Clone, Debug)]
pub struct Sources {
    /// The SMTP server's counters.
    pub server: Arc<ServerStats>,
    /// The listener modes in use.
    pub modes: Vec<ListenerMode>,
    /// The queue.
    pub queue: Queue,
    /// The queue directory (readiness: can we write there?).
    pub queue_path: PathBuf,
    /// Sender-authentication verdicts.
    pub auth: Arc<auth_checks::AuthStats>,
    /// DNS lookups for routing.
    pub dns: Arc<dns_mx::LookupStats>,
}

/// Serves the endpoint on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    sources: Sources,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let sources = Arc::new(sources);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let sources = Arc::clone(&sources);
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(Duration::from_secs(10), answer(stream, &sources)).await;
                });
            }
        }
    }
}

/// Binds the endpoint's address.
pub async fn bind(address: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(address)
        .await
        .with_context(|| format!("[metrics] cannot listen on {address}"))
}

async fn answer(stream: TcpStream, sources: &Sources) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(tokio::io::AsyncReadExt::take(read, 8192));
    let mut request = String::new();
    reader.read_line(&mut request).await?;
    // The rest of the head (headers) is read and ignored, so the client is done writing
    // before we answer and close.
    let mut line = String::new();
    while reader.read_line(&mut line).await? > 2 {
        line.clear();
    }
    let path = request.split_whitespace().nth(1).unwrap_or("");
    let (status, content_type, body) = match (request.split_whitespace().next(), path) {
        (Some("GET"), "/metrics") => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            render(sources),
        ),
        (Some("GET"), "/healthz") => ("200 OK", "text/plain", "ok\n".to_owned()),
        (Some("GET"), "/readyz") => match ready(sources) {
            Ok(()) => ("200 OK", "text/plain", "ready\n".to_owned()),
            Err(why) => ("503 Service Unavailable", "text/plain", format!("{why}\n")),
        },
        (Some("GET"), _) => ("404 Not Found", "text/plain", "not found\n".to_owned()),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "GET only\n".to_owned(),
        ),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    write.write_all(head.as_bytes()).await?;
    write.write_all(body.as_bytes()).await?;
    write.shutdown().await
}

/// Ready when the queue directory takes a new file.
fn ready(sources: &Sources) -> Result<(), String> {
    let probe = sources.queue_path.join(".readyz");
    std::fs::write(&probe, b"")
        .and_then(|()| std::fs::remove_file(&probe))
        .map_err(|e| format!("queue directory not writable: {e}"))
}

/// The Prometheus text exposition of every metric.
fn render(s: &Sources) -> String {
    let mut out = String::new();
    let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let mut family = |name: &str, kind: &str, help: &str, samples: Vec<(String, u64)>| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    let per_mode = |f: &dyn Fn(&smtp_server::ModeStats) -> u64| -> Vec<(String, u64)> {
        s.modes
            .iter()
            .map(|m| {
                (
                    format!("{{listener=\"{}\"}}", m.as_str()),
                    f(s.server.mode(*m)),
                )
            })
            .collect()
    };
    // Counters by listener and result.
    let per_mode_result =
        |f: &dyn Fn(&smtp_server::ModeStats) -> Vec<(&'static str, u64)>| -> Vec<(String, u64)> {
            s.modes
                .iter()
                .flat_map(|m| {
                    f(s.server.mode(*m)).into_iter().map(move |(result, n)| {
                        (
                            format!("{{listener=\"{}\",result=\"{result}\"}}", m.as_str()),
                            n,
                        )
                    })
                })
                .collect()
        };
    family(
        "mta_smtp_connections_total",
        "counter",
        "SMTP connections accepted, by listener.",
        per_mode(&|m| get(&m.connections)),
    );
    family(
        "mta_smtp_connections_refused_total",
        "counter",
        "SMTP connections refused at the connection limits, by listener.",
        per_mode(&|m| get(&m.connections_refused)),
    );
    family(
        "mta_smtp_connections_open",
        "gauge",
        "SMTP connections open now.",
        vec![(String::new(), get(&s.server.connections_open))],
    );
    family(
        "mta_smtp_content_in_memory_bytes",
        "gauge",
        "Message content held in memory by the sessions receiving it ([limits] max_total_message_memory bounds it).",
        vec![(String::new(), get(&s.server.content_in_memory))],
    );
    family(
        "mta_smtp_messages_spilled_total",
        "counter",
        "Messages whose content went to a file as it arrived (larger than [limits] max_message_memory, or the memory budget was spent).",
        vec![(String::new(), get(&s.server.messages_spilled))],
    );
    family(
        "mta_smtp_tls_handshakes_total",
        "counter",
        "TLS handshakes of SMTP sessions (STARTTLS or implicit TLS), by result.",
        vec![
            ("{result=\"tls1.2\"}".into(), get(&s.server.tls12)),
            ("{result=\"tls1.3\"}".into(), get(&s.server.tls13)),
            ("{result=\"failed\"}".into(), get(&s.server.tls_failed)),
        ],
    );
    family(
        "mta_smtp_refusals_total",
        "counter",
        "Commands refused by a stage (policy, filters, limits), by stage and reply code.",
        s.server
            .refusals()
            .into_iter()
            .map(|((stage, code), n)| (format!("{{stage=\"{stage}\",code=\"{code}\"}}"), n))
            .collect(),
    );
    family(
        "mta_smtp_logins_total",
        "counter",
        "SMTP AUTH attempts, by listener and result.",
        per_mode_result(&|m| {
            vec![
                ("success", get(&m.logins)),
                ("failure", get(&m.login_failures)),
            ]
        }),
    );
    family(
        "mta_smtp_protocol_errors_total",
        "counter",
        "Commands and input the protocol layer refused (syntax, sequence, line length, size, recipients, timeouts), by reply code and enhanced status.",
        s.server
            .protocol_errors()
            .into_iter()
            .map(|((code, status), n)| (format!("{{code=\"{code}\",status=\"{status}\"}}"), n))
            .collect(),
    );
    family(
        "mta_smtp_messages_total",
        "counter",
        "Messages at the end of DATA, by listener and result (rejected: 5xx, deferred: 4xx).",
        per_mode_result(&|m| {
            vec![
                ("accepted", get(&m.messages_accepted)),
                ("rejected", get(&m.messages_rejected)),
                ("deferred", get(&m.messages_deferred)),
            ]
        }),
    );
    family(
        "mta_smtp_received_bytes_total",
        "counter",
        "Octets of the accepted messages, by listener.",
        per_mode(&|m| get(&m.bytes_accepted)),
    );
    let counts = s.queue.counts();
    family(
        "mta_queue_messages",
        "gauge",
        "Messages in the queue, by state.",
        vec![
            ("{state=\"waiting\"}".into(), counts.waiting),
            ("{state=\"active\"}".into(), counts.active),
            ("{state=\"held\"}".into(), counts.held),
        ],
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let oldest = s.queue.oldest();
    family(
        "mta_queue_oldest_message_age_seconds",
        "gauge",
        "Age of the oldest message in each state (0 when there is none).",
        [
            ("waiting", oldest.waiting),
            ("active", oldest.active),
            ("held", oldest.held),
        ]
        .into_iter()
        .map(|(state, at)| {
            (
                format!("{{state=\"{state}\"}}"),
                at.map_or(0, |t| now.saturating_sub(t)),
            )
        })
        .collect(),
    );
    let q = s.queue.stats();
    family(
        "mta_queue_enqueued_total",
        "counter",
        "Messages made durable in the queue (notifications included).",
        vec![(String::new(), get(&q.enqueued))],
    );
    family(
        "mta_queue_notifications_total",
        "counter",
        "Delivery status notifications queued.",
        vec![(String::new(), get(&q.notifications))],
    );
    family(
        "mta_delivery_recipients_total",
        "counter",
        "Recipient delivery attempts, by result.",
        vec![
            ("{result=\"delivered\"}".into(), get(&q.delivered)),
            ("{result=\"deferred\"}".into(), get(&q.deferred)),
            ("{result=\"failed\"}".into(), get(&q.failed)),
            ("{result=\"expired\"}".into(), get(&q.expired)),
        ],
    );
    let mut by_domain = Vec::new();
    for (domain, [delivered, deferred, failed]) in q.by_domain.snapshot() {
        // Domains are the queue's own lower-cased names; quote what the format needs.
        let domain = domain.replace('\\', "\\\\").replace('"', "\\\"");
        for (result, n) in [
            ("delivered", delivered),
            ("deferred", deferred),
            ("failed", failed),
        ] {
            by_domain.push((format!("{{domain=\"{domain}\",result=\"{result}\"}}"), n));
        }
    }
    family(
        "mta_delivery_recipients_by_domain_total",
        "counter",
        "Recipient delivery attempts by destination domain (the first 100 domains seen; later ones as other) and result.",
        by_domain,
    );
    family(
        "mta_dns_lookups_total",
        "counter",
        "DNS lookups for routing (MX, then A/AAAA of the hosts), by query and result.",
        s.dns
            .snapshot()
            .into_iter()
            .map(|(query, result, n)| (format!("{{query=\"{query}\",result=\"{result}\"}}"), n))
            .collect(),
    );
    let delay = &q.delivery_delay;
    let mut cumulative = 0;
    let mut buckets = Vec::new();
    for (i, bound) in mail_queue::DELAY_BUCKETS
        .iter()
        .map(|b| b.to_string())
        .chain(std::iter::once("+Inf".to_owned()))
        .enumerate()
    {
        cumulative += get(&delay.buckets[i]);
        buckets.push((format!("_bucket{{le=\"{bound}\"}}"), cumulative));
    }
    buckets.push(("_sum".to_owned(), get(&delay.sum)));
    buckets.push(("_count".to_owned(), get(&delay.count)));
    family(
        "mta_delivery_delay_seconds",
        "histogram",
        "Time from acceptance to delivery of each delivered recipient (whole seconds).",
        buckets,
    );
    family(
        "mta_auth_results_total",
        "counter",
        "Sender-authentication verdicts of checked messages, by method and result (DKIM: per signature, none when unsigned).",
        s.auth
            .snapshot()
            .into_iter()
            .map(|((method, result), n)| {
                (format!("{{method=\"{method}\",result=\"{result}\"}}"), n)
            })
            .collect(),
    );
    let (batches, jobs) = s.queue.commit_stats();
    family(
        "mta_queue_commits_total",
        "counter",
        "Durable commits of the queue (each one fsync pair).",
        vec![(String::new(), batches)],
    );
    family(
        "mta_queue_committed_jobs_total",
        "counter",
        "Messages and updates made durable by those commits.",
        vec![(String::new(), jobs)],
    );
    family(
        "mta_build_info",
        "gauge",
        "The running version.",
        vec![(format!("{{version=\"{}\"}}", env!("CARGO_PKG_VERSION")), 1)],
    );
    out
}
