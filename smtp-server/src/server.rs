//! Listeners: bind, accept, enforce connection limits, shut down gracefully.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, RwLock};

use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use crate::ServerError;
use crate::config::{ListenerConfig, ListenerMode, ProxyProtocol, ServerConfig};
use crate::connection::{Listener, Prefixed, serve};
use crate::filters::rate::client_key;
use crate::proxy::{self, Parsed, ProxiedAddresses};
use crate::stage::Stages;
use crate::stats::ServerStats;

/// An SMTP server: its listeners bound, ready to [`Server::run`].
///
/// ```no_run
/// # async fn example() -> Result<(), smtp_server::ServerError> {
/// use smtp_server::{Decision, ListenerConfig, ListenerMode, Server, ServerConfig, Stages};
/// use smtp_server::filters::{DomainSet, RelayPolicy};
/// use smtp_server::filter;
/// let config = ServerConfig {
///     listeners: vec![ListenerConfig { address: "127.0.0.1:2525".parse().unwrap(), mode: ListenerMode::Relay, proxy: None }],
///     ..ServerConfig::default()
/// };
/// let sink = tower::service_fn(|_req| async { Ok::<_, smtp_server::BoxError>(Decision::accept()) });
/// let policy = filter(RelayPolicy::new(DomainSet::new(["example.test"]), vec![]));
/// let server = Server::bind(config, Stages::new(sink).relay_policy(policy)).await?;
/// server.run(async { let _ = tokio::signal::ctrl_c().await; }).await;
/// # Ok(()) }
/// ```
pub struct Server {
    config: Arc<ServerConfig>,
    listeners: Vec<(TcpListener, Slot)>,
    stats: Arc<ServerStats>,
}

/// Listening sockets bound by [`Server::listen`], waiting for the server that will
/// accept on them.
#[derive(Debug)]
pub struct BoundListeners {
    configs: Vec<ListenerConfig>,
    sockets: Vec<TcpListener>,
}

impl BoundListeners {
    /// Where each socket listens (port 0 resolved).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.sockets
            .iter()
            .filter_map(|s| s.local_addr().ok())
            .collect()
    }
}

/// What a listener serves new connections with; a reload replaces it, connections
/// already open keep the one they started with.
type Slot = Arc<RwLock<Arc<Listener>>>;

/// Replaces the configuration and the stages of a running [`Server`] (see
/// [`Server::reloader`]).
#[derive(Clone)]
pub struct Reloader {
    listeners: Vec<(ListenerConfig, Slot)>,
    stats: Arc<ServerStats>,
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader")
            .field("listeners", &self.listeners.len())
            .finish()
    }
}

impl Reloader {
    /// From the next connection on, every listener serves with `config` (limits, TLS
    /// certificate, host name, ...) and `stages`; connections already open finish with
    /// what they had. The listeners themselves (addresses and modes) must be the same,
    /// else nothing changes and the answer is [`ServerError::ListenersChanged`].
    pub fn reload(&self, config: ServerConfig, stages: Stages) -> Result<(), ServerError> {
        let same = config.listeners.len() == self.listeners.len()
            && config
                .listeners
                .iter()
                .zip(&self.listeners)
                .all(|(new, (old, _))| new.address == old.address && new.mode == old.mode);
        if !same {
            return Err(ServerError::ListenersChanged);
        }
        let config = Arc::new(config);
        let acceptor = config.tls.clone().map(TlsAcceptor::from);
        let mut fresh = Vec::new();
        for l in &config.listeners {
            fresh.push(listener(
                &config,
                l,
                &stages,
                acceptor.as_ref(),
                &self.stats,
            )?);
        }
        for ((_, slot), new) in self.listeners.iter().zip(fresh) {
            if let Ok(mut current) = slot.write() {
                *current = Arc::new(new);
            }
        }
        info!("configuration reloaded");
        Ok(())
    }
}

/// What one listener serves with.
pub(crate) fn listener(
    config: &Arc<ServerConfig>,
    l: &ListenerConfig,
    stages: &Stages,
    acceptor: Option<&TlsAcceptor>,
    stats: &Arc<ServerStats>,
) -> Result<Listener, ServerError> {
    if l.mode == ListenerMode::Smtps && acceptor.is_none() {
        return Err(ServerError::TlsRequired(l.address));
    }
    if matches!(l.mode, ListenerMode::Relay | ListenerMode::Lmtp) && !stages.has_relay_policy() {
        return Err(ServerError::NoRelayPolicy(l.address));
    }
    Ok(Listener {
        config: Arc::clone(config),
        session_config: Arc::new(config.session_config(l.mode)),
        mode: l.mode,
        stages: stages.clone(),
        tls: acceptor.cloned(),
        stats: Arc::clone(stats),
        proxy: l.proxy.clone(),
        triage: config.early_talkers.applies_to(l.mode),
    })
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("listeners", &self.local_addrs())
            .finish()
    }
}

impl Server {
    /// Binds every listener of `config` (port 0 picks a free port: see
    /// [`Server::local_addrs`]).
    pub async fn bind(config: ServerConfig, stages: Stages) -> Result<Self, ServerError> {
        let bound = Self::listen(&config.listeners, config.limits.listen_backlog)?;
        Self::with_listeners(config, stages, bound)
    }

    /// Binds the listening sockets alone, before the rest of the server exists: a
    /// program started as root binds ports 25, 465 and 587 this way, gives up its
    /// privileges, and only then reads keys and opens its queue to build the server
    /// with [`Server::with_listeners`].
    ///
    /// ```no_run
    /// # async fn example() -> Result<(), smtp_server::ServerError> {
    /// use smtp_server::{Decision, ListenerConfig, ListenerMode, Server, ServerConfig, Stages};
    /// use smtp_server::filters::{DomainSet, RelayPolicy};
    /// use smtp_server::filter;
    /// let listeners = vec![ListenerConfig { address: "0.0.0.0:25".parse().unwrap(), mode: ListenerMode::Relay, proxy: None }];
    /// let bound = Server::listen(&listeners, 1024)?;
    /// // ... drop privileges here ...
    /// let config = ServerConfig { listeners, ..ServerConfig::default() };
    /// let sink = tower::service_fn(|_req| async { Ok::<_, smtp_server::BoxError>(Decision::accept()) });
    /// let policy = filter(RelayPolicy::new(DomainSet::new(["example.test"]), vec![]));
    /// let server = Server::with_listeners(config, Stages::new(sink).relay_policy(policy), bound)?;
    /// # Ok(()) }
    /// ```
    pub fn listen(
        listeners: &[ListenerConfig],
        backlog: u32,
    ) -> Result<BoundListeners, ServerError> {
        let sockets = listeners
            .iter()
            .map(|l| {
                listen(l.address, backlog).map_err(|source| ServerError::Bind {
                    address: l.address,
                    source,
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(BoundListeners {
            configs: listeners.to_vec(),
            sockets,
        })
    }

    /// Builds the server on sockets bound by [`Server::listen`] for the same listeners
    /// as `config.listeners` (else [`ServerError::ListenersChanged`]).
    pub fn with_listeners(
        config: ServerConfig,
        stages: Stages,
        bound: BoundListeners,
    ) -> Result<Self, ServerError> {
        if bound.configs != config.listeners {
            return Err(ServerError::ListenersChanged);
        }
        let config = Arc::new(config);
        let acceptor = config.tls.clone().map(TlsAcceptor::from);
        let stats = Arc::new(ServerStats::listening(
            config.listeners.iter().map(|l| l.mode),
        ));
        let mut listeners = Vec::new();
        for (l, socket) in config.listeners.iter().zip(bound.sockets) {
            let listener = listener(&config, l, &stages, acceptor.as_ref(), &stats)?;
            listeners.push((socket, Arc::new(RwLock::new(Arc::new(listener)))));
        }
        Ok(Self {
            config,
            listeners,
            stats,
        })
    }

    /// The counters of this server (connections and messages per listener mode), shared
    /// with it: keep the `Arc` to read them while it runs.
    pub fn stats(&self) -> Arc<ServerStats> {
        Arc::clone(&self.stats)
    }

    /// Where each listener listens.
    pub fn local_addrs(&self) -> Vec<(ListenerMode, SocketAddr)> {
        self.listeners
            .iter()
            .zip(&self.config.listeners)
            .filter_map(|((s, _), l)| s.local_addr().ok().map(|a| (l.mode, a)))
            .collect()
    }

    /// A handle that replaces the configuration and stages while the server runs.
    pub fn reloader(&self) -> Reloader {
        Reloader {
            listeners: self
                .config
                .listeners
                .iter()
                .cloned()
                .zip(self.listeners.iter().map(|(_, slot)| Arc::clone(slot)))
                .collect(),
            stats: Arc::clone(&self.stats),
        }
    }

    /// Accepts connections until `shutdown` completes; then stops accepting, lets
    /// transactions in flight finish (up to `limits.shutdown_grace`), tells idle
    /// clients `421 4.3.2`, and returns.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let (stop, stopped) = watch::channel(false);
        let counts = Arc::new(ConnectionCounts::default());
        let mut accept_loops = JoinSet::new();
        let connections = Arc::new(Mutex::new(JoinSet::new()));
        for ((socket, slot), l) in self.listeners.into_iter().zip(&self.config.listeners) {
            if let Ok(addr) = socket.local_addr() {
                info!(address = %addr, mode = l.mode.as_str(), "listening");
            }
            let (counts, stopped, connections) = (
                Arc::clone(&counts),
                stopped.clone(),
                Arc::clone(&connections),
            );
            // Bound to one address, every connection's local address is the
            // listener's: no getsockname per connection. A wildcard bind asks.
            let fixed_local = socket
                .local_addr()
                .ok()
                .filter(|a| !a.ip().is_unspecified());
            accept_loops.spawn(async move {
                let mut stop_accepting = stopped.clone();
                loop {
                    let accepted = tokio::select! {
                        accepted = socket.accept() => accepted,
                        _ = stop_accepting.changed() => break,
                    };
                    let (tcp, peer) = match accepted {
                        Ok(pair) => pair,
                        Err(e) => {
                            // Out of file descriptors and the like: wait a little.
                            warn!(error = %e, "accept failed");
                            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    // The configuration in force now (a reload may have replaced it).
                    let listener = match slot.read() {
                        Ok(current) => Arc::clone(&current),
                        Err(_) => continue,
                    };
                    let limits = &listener.config.limits;
                    let stats = listener.stats.mode(listener.mode);
                    if let Some(proxy) = &listener.proxy
                        && !proxy.load_balancers.iter().any(|n| n.contains(peer.ip()))
                    {
                        ServerStats::count(&stats.proxy_untrusted, 1);
                        info!(peer = %peer, "PROXY protocol listener: connection not from a load balancer; closed");
                        drop(tcp);
                        continue;
                    }
                    // Behind a load balancer, the client's address is known only once
                    // its header is read: the per-IP limit waits until then.
                    let ip = listener.proxy.is_none().then_some(peer.ip());
                    let Some(guard) =
                        counts.enter(ip, limits.max_connections, limits.max_connections_per_ip)
                    else {
                        ServerStats::count(&stats.connections_refused, 1);
                        info!(peer = %peer, "connection limit reached");
                        tokio::spawn(refuse(tcp, listener.config.hostname.clone()));
                        continue;
                    };
                    let (listener, stopped) = (Arc::clone(&listener), stopped.clone());
                    if let Ok(mut set) = connections.lock() {
                        set.spawn(async move {
                            let local = match fixed_local {
                                Some(local) => local,
                                None => tcp.local_addr().unwrap_or(peer),
                            };
                            let _ = tcp.set_nodelay(true);
                            let (stream, peer, local, guard) = match &listener.proxy {
                                None => (Prefixed::new(Vec::new(), tcp), peer, local, guard),
                                Some(proxy) => {
                                    match proxied(tcp, (peer, local), proxy, &listener, guard)
                                        .await
                                    {
                                        Some(accepted) => accepted,
                                        None => return,
                                    }
                                }
                            };
                            let open = &listener.stats.connections_open;
                            ServerStats::count(&listener.stats.mode(listener.mode).connections, 1);
                            ServerStats::count(open, 1);
                            serve(Arc::clone(&listener), stream, (peer, local), stopped).await;
                            open.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                            drop(guard);
                        });
                        // Reap finished connections so the set does not grow.
                        while set.try_join_next().is_some() {}
                    }
                }
            });
        }
        shutdown.await;
        info!("shutting down: no new connections, finishing transactions in flight");
        let _ = stop.send(true);
        while accept_loops.join_next().await.is_some() {}
        let mut set = match connections.lock() {
            Ok(mut set) => std::mem::take(&mut *set),
            Err(_) => JoinSet::new(),
        };
        let drain = async { while set.join_next().await.is_some() {} };
        if tokio::time::timeout(self.config.limits.shutdown_grace, drain)
            .await
            .is_err()
        {
            warn!("shutdown grace period over; closing the remaining connections");
        }
    }
}

/// Binds a listening socket with our backlog (tokio's `bind` uses 128, which a burst of
/// connections overflows: the kernel then drops SYNs and clients wait a second).
fn listen(address: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = if address.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(backlog)
}

/// Reads the PROXY protocol header of a connection from a load balancer (`peer`) and
/// takes the per-IP connection count of the client it names: the stream (with what came
/// after the header), the client's address and ours as it saw them, and the count.
/// `None` when the header is bad, late or missing (logged, counted, closed without a
/// word) or the client is over its limit (`421 4.7.0`).
async fn proxied(
    mut tcp: TcpStream,
    (peer, local): (SocketAddr, SocketAddr),
    proxy: &ProxyProtocol,
    listener: &Listener,
    guard: CountGuard,
) -> Option<(Prefixed<TcpStream>, SocketAddr, SocketAddr, CountGuard)> {
    let stats = listener.stats.mode(listener.mode);
    let (addresses, rest) = match read_proxy_header(&mut tcp, proxy.timeout).await {
        Ok(header) => header,
        Err(refusal) => {
            let (counter, reason) = match &refusal {
                HeaderRefusal::Timeout => (&stats.proxy_timeout, "timeout".to_owned()),
                HeaderRefusal::Bad(why) => (&stats.proxy_malformed, why.clone()),
            };
            ServerStats::count(counter, 1);
            info!(peer = %peer, reason = %reason, "PROXY protocol header refused; connection closed");
            return None;
        }
    };
    let (client, ours) = match addresses {
        ProxiedAddresses::Proxied {
            source,
            destination,
        } => (source, destination),
        ProxiedAddresses::Local => (peer, local),
    };
    debug!(client = %client, via = %peer, "PROXY protocol header");
    let limits = &listener.config.limits;
    let stream = Prefixed::new(rest, tcp);
    let Some(guard) = guard.attach(client.ip(), limits.max_connections_per_ip) else {
        ServerStats::count(&stats.connections_refused, 1);
        info!(peer = %client, via = %peer, "connection limit reached");
        refuse(stream, listener.config.hostname.clone()).await;
        return None;
    };
    Some((stream, client, ours, guard))
}

/// Why a PROXY protocol header was not taken.
enum HeaderRefusal {
    Timeout,
    Bad(String),
}

/// Reads a PROXY protocol header within `timeout`: what it says and the bytes that came
/// after it. Reads at most a header's worth ([`proxy::V2_MAX_LEN`]) plus one buffer.
async fn read_proxy_header(
    tcp: &mut TcpStream,
    timeout: std::time::Duration,
) -> Result<(ProxiedAddresses, Vec<u8>), HeaderRefusal> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut input = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        match proxy::parse(&input) {
            Ok(Parsed::Complete { len, addresses }) => {
                return Ok((addresses, input.split_off(len)));
            }
            Ok(Parsed::Incomplete) => {}
            Err(e) => return Err(HeaderRefusal::Bad(e.to_string())),
        }
        match tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await {
            Err(_) => return Err(HeaderRefusal::Timeout),
            Ok(Ok(0)) => {
                return Err(HeaderRefusal::Bad(
                    "closed before the end of the header".into(),
                ));
            }
            Ok(Ok(n)) => input.extend_from_slice(&buf[..n]),
            Ok(Err(e)) => return Err(HeaderRefusal::Bad(e.to_string())),
        }
    }
}

/// Refuses a connection over the limits.
async fn refuse<S: AsyncWrite + Unpin>(mut tcp: S, hostname: String) {
    let line = format!("421 4.7.0 {hostname} Too many connections, try again later\r\n");
    let _ = tcp.write_all(line.as_bytes()).await;
    let _ = tcp.shutdown().await;
}

/// Connections at once, in total and per client address, as the rate limits count
/// addresses ([`client_key`]): an IPv6 client by its /64, which one host usually holds
/// whole, so that it cannot take every connection with addresses of its own.
#[derive(Debug, Default)]
struct ConnectionCounts {
    inner: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

impl ConnectionCounts {
    /// Counts a connection, and one more from `ip` when it is known: `None` when that
    /// would go over the limits.
    fn enter(
        self: &Arc<Self>,
        ip: Option<IpAddr>,
        max_total: usize,
        max_per_ip: usize,
    ) -> Option<CountGuard> {
        let mut inner = self.inner.lock().ok()?;
        if inner.0 >= max_total {
            return None;
        }
        let ip = ip.map(client_key);
        if let Some(ip) = ip {
            let per_ip = inner.1.get(&ip).copied().unwrap_or(0);
            if per_ip >= max_per_ip {
                return None;
            }
            inner.1.insert(ip, per_ip + 1);
        }
        inner.0 += 1;
        Some(CountGuard {
            counts: Arc::clone(self),
            ip,
        })
    }
}

/// A connection counted (and its client's address, once known).
struct CountGuard {
    counts: Arc<ConnectionCounts>,
    ip: Option<IpAddr>,
}

impl CountGuard {
    /// Counts the connection for its client `ip` too (learnt from a PROXY protocol
    /// header); `None` (and the connection no longer counted) when that is over
    /// `max_per_ip`.
    fn attach(mut self, ip: IpAddr, max_per_ip: usize) -> Option<Self> {
        if self.ip.is_some() {
            return Some(self);
        }
        let ip = client_key(ip);
        let mut inner = self.counts.inner.lock().ok()?;
        let per_ip = inner.1.get(&ip).copied().unwrap_or(0);
        if per_ip >= max_per_ip {
            return None;
        }
        inner.1.insert(ip, per_ip + 1);
        drop(inner);
        self.ip = Some(ip);
        Some(self)
    }
}

impl Drop for CountGuard {
    fn drop(&mut self) {
        if let Ok(mut inner) = self.counts.inner.lock() {
            inner.0 = inner.0.saturating_sub(1);
            if let Some(ip) = self.ip
                && let Some(n) = inner.1.get_mut(&ip)
            {
                *n -= 1;
                if *n == 0 {
                    inner.1.remove(&ip);
                }
            }
        }
    }
}
