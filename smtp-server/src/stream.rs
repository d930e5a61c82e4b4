//! Sessions on streams you accept yourself: a socket from another listener, a pipe, an
//! in-memory duplex (for tests, or to pass locally submitted mail through the stages).

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::ServerError;
use crate::config::{ListenerConfig, ListenerMode, ServerConfig};
use crate::connection::{Listener, serve};
use crate::server::listener;
use crate::stage::Stages;
use crate::stats::ServerStats;

/// Serves SMTP sessions on any `AsyncRead + AsyncWrite` stream, with the limits, TLS
/// and stages a listener of `mode` would use: the same protocol, timeouts and filters
/// as over TCP. STARTTLS works when `config.tls` is set.
///
/// ```
/// use smtp_server::{Decision, ListenerMode, ServerConfig, Stages, StreamServer};
/// use tokio::io::{AsyncReadExt, AsyncWriteExt};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let sink = tower::service_fn(|_| async { Ok::<_, smtp_server::BoxError>(Decision::accept()) });
/// let server = StreamServer::new(ServerConfig::default(), ListenerMode::Submission, Stages::new(sink))?;
/// let (mut client, ours) = tokio::io::duplex(4096);
/// let peer = "192.0.2.1:50000".parse()?;
/// tokio::spawn(async move { server.serve(ours, peer, "192.0.2.25:587".parse().unwrap()).await });
/// client.write_all(b"QUIT\r\n").await?;
/// let mut replies = String::new();
/// client.read_to_string(&mut replies).await?;
/// assert!(replies.starts_with("220 ") && replies.contains("\r\n221 "));
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct StreamServer {
    listener: Arc<Listener>,
    /// Never sent: sessions on streams end with their stream.
    shutdown: watch::Receiver<bool>,
    _keep: Arc<watch::Sender<bool>>,
}

impl std::fmt::Debug for StreamServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamServer")
            .field("mode", &self.listener.mode)
            .finish()
    }
}

impl StreamServer {
    /// Sessions as a listener of `mode` would serve them with `config` and `stages`
    /// (`config.listeners` is not used). The errors are those of [`Server::bind`]: an
    /// smtps mode without TLS, a relay mode without a relay policy.
    ///
    /// [`Server::bind`]: crate::Server::bind
    pub fn new(
        config: ServerConfig,
        mode: ListenerMode,
        stages: Stages,
    ) -> Result<Self, ServerError> {
        let config = Arc::new(config);
        let acceptor = config.tls.clone().map(TlsAcceptor::from);
        let unbound = ListenerConfig {
            address: SocketAddr::from(([0, 0, 0, 0], 0)),
            mode,
            proxy: None,
        };
        let stats = Arc::new(ServerStats::default());
        let listener = listener(&config, &unbound, &stages, acceptor.as_ref(), &stats)?;
        let (keep, shutdown) = watch::channel(false);
        Ok(Self {
            listener: Arc::new(listener),
            shutdown,
            _keep: Arc::new(keep),
        })
    }

    /// Counters of the sessions served.
    pub fn stats(&self) -> Arc<ServerStats> {
        Arc::clone(&self.listener.stats)
    }

    /// Serves one session on `stream` until the client quits, times out or
    /// misbehaves; `peer` and `local` are the addresses the stages see.
    pub async fn serve<S>(&self, stream: S, peer: SocketAddr, local: SocketAddr)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let stats = &self.listener.stats;
        ServerStats::count(&stats.mode(self.listener.mode).connections, 1);
        ServerStats::count(&stats.connections_open, 1);
        serve(
            Arc::clone(&self.listener),
            stream,
            (peer, local),
            self.shutdown.clone(),
        )
        .await;
        stats
            .connections_open
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}
