//! `[metrics]`: Prometheus metrics (`/metrics`), liveness (`/healthz`) and readiness
//! (`/readyz`: listeners up, queue directory writable) over plain HTTP, for a scraper
//! on a trusted network. `docs/metrics.md` lists every metric.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use mail_queue::Queue;
use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use smtp_server::ServerStats;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// What the endpoint reads.
#[derive(Clone, Debug)]
pub struct Sources {
    /// The SMTP server's counters.
    pub server: Arc<ServerStats>,
    /// The queue.
    pub queue: Queue,
    /// The queue directory (readiness: can we write there?).
    pub queue_path: PathBuf,
    /// Sender-authentication verdicts.
    pub auth: Arc<auth_checks::AuthStats>,
    /// DNS lookups for routing.
    pub dns: Arc<dns_mx::LookupStats>,
    /// DNS blocklist and reverse-DNS lookups and verdicts.
    pub door_dns: Arc<auth_checks::DnsStats>,
    /// The rate limits and greylisting in use (their counters are read at each scrape:
    /// a reload that changes their settings starts them anew).
    pub defences: crate::serve::Defences,
    /// Recipient verification's answers.
    pub verify: Arc<crate::verify::VerifyStats>,
    /// What outbound traffic shaping held back.
    pub shaping: Arc<crate::delivery::ShapingStats>,
    /// TLS reporting (`[tls_reports]`); `None` when off.
    pub tls_rpt: Option<Arc<crate::tlsrpt::Aggregator>>,
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
        (Some("GET"), "/metrics") => ("200 OK", prometheus_text::CONTENT_TYPE, render(sources)),
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

/// Every metric, in the Prometheus text format (0.0.4): the libraries' collectors under
/// the prefix `mta`, and the build's version.
fn render(s: &Sources) -> String {
    let mut registry = Registry::with_prefix("mta");
    registry.register_collector(Box::new(Arc::clone(&s.server)));
    registry.register_collector(Box::new(s.queue.clone()));
    registry.register_collector(Box::new(Arc::clone(&s.auth)));
    registry.register_collector(Box::new(Arc::clone(&s.dns)));
    registry.register_collector(Box::new(Arc::clone(&s.door_dns)));
    registry.register_collector(Box::new(s.defences.rate_stats()));
    registry.register_collector(Box::new(s.defences.greylist_stats()));
    registry.register_collector(Box::new(Arc::clone(&s.verify)));
    registry.register_collector(Box::new(Arc::clone(&s.shaping)));
    if let Some(tls_rpt) = &s.tls_rpt {
        registry.register_collector(Box::new(Arc::clone(tls_rpt)));
    }
    let build: Family<[(&str, &str); 1], Gauge> = Family::default();
    build
        .get_or_create(&[("version", env!("CARGO_PKG_VERSION"))])
        .set(1);
    registry.register("build_info", "The running version", build);
    let mut out = String::new();
    // Writing to a String fails only if a collector does, and none does.
    let _ = prometheus_text::encode(&mut out, &registry);
    out
}
