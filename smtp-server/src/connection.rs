//! One connection: socket and TLS I/O around a `smtp_proto::ServerSession`, with
//! timeouts, STARTTLS, and a call to the stage services for every event.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use smtp_proto::{EnhancedStatus, Event, Reply, ReplyCode, ServerSession};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::config::{FilterMode, ListenerMode, ProxyProtocol, ServerConfig};
use crate::content::{Content, Spilling};
use crate::filters::HeloFinding;
use crate::filters::rate::client_key;
use crate::stage::{
    AuthRequest, BoxError, ConnectRequest, DataRequest, Decision, EhloRequest, MailRequest, Notes,
    RcptRequest, Refusals, SessionInfo, Stages, TlsInfo, call, new_session_id,
};
use crate::stats::ServerStats;

/// Most bytes one read takes between commands.
const COMMAND_BUFFER: usize = 4 * 1024;
/// Most bytes one read takes while message content flows.
const DATA_BUFFER: usize = 64 * 1024;

thread_local! {
    /// The buffer every connection polled on this thread reads into. A read's bytes go to
    /// the session within the poll that read them, so no connection owns a read buffer
    /// while it waits for input (10,000 idle connections: see
    /// bench/servers/idle_connections.py).
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Reads at most `max` bytes from `stream` and hands them to `session` before returning
/// `Ready(Ok(n))` (`n == 0`: end of stream). The bytes live in the thread's
/// [`SCRATCH`] buffer only during this call; a `Pending` poll reads nothing, so
/// dropping the future between polls (a timeout, a shutdown) loses no input.
fn poll_receive<R: AsyncRead + Unpin>(
    stream: &mut R,
    cx: &mut Context<'_>,
    max: usize,
    session: &mut ServerSession,
) -> Poll<io::Result<usize>> {
    poll_read_scratch(stream, cx, max, |bytes| {
        if !bytes.is_empty() {
            session.receive(bytes);
        }
        bytes.len()
    })
}

/// Reads at most `max` bytes from `stream` into the thread's [`SCRATCH`] buffer and
/// returns what `take` makes of them (an empty slice: end of stream).
fn poll_read_scratch<R: AsyncRead + Unpin, T>(
    stream: &mut R,
    cx: &mut Context<'_>,
    max: usize,
    take: impl FnOnce(&[u8]) -> T,
) -> Poll<io::Result<T>> {
    let read = |scratch: &mut Vec<u8>| {
        if scratch.len() < max {
            scratch.resize(max, 0);
        }
        let mut buf = ReadBuf::new(&mut scratch[..max]);
        match Pin::new(&mut *stream).poll_read(cx, &mut buf) {
            Poll::Ready(Ok(())) => Poll::Ready(Ok(take(buf.filled()))),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    };
    SCRATCH.with(|scratch| match scratch.try_borrow_mut() {
        Ok(mut scratch) => read(&mut scratch),
        // A stream whose own read polls another session on this thread (none of ours
        // does): a buffer of its own for this read.
        Err(_) => read(&mut Vec::new()),
    })
}

/// What every connection of a listener shares.
pub(crate) struct Listener {
    pub(crate) config: Arc<ServerConfig>,
    pub(crate) session_config: Arc<smtp_proto::ServerConfig>,
    pub(crate) mode: ListenerMode,
    pub(crate) stages: Stages,
    pub(crate) tls: Option<TlsAcceptor>,
    pub(crate) stats: Arc<ServerStats>,
    /// Connections start with a PROXY protocol header from these load balancers.
    pub(crate) proxy: Option<ProxyProtocol>,
    /// Whether early-talker triage applies ([`ServerConfig::early_talkers`]).
    pub(crate) triage: bool,
}

/// The early-talker verdict about a client address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// It waited for the greeting (and for its replies): no delay for a while.
    Pass,
    /// It did not: refused at once for a while (enforce mode).
    Fail,
}

/// Early-talker verdicts per client address (an IPv6 client by its /64, as the rate
/// limits count it: a bot cannot shed a verdict by moving to another address of its
/// own), each until it expires; bounded (expired entries are pruned when it is full,
/// then an arbitrary one goes).
#[derive(Debug, Default)]
pub(crate) struct VerdictCache {
    inner: Mutex<HashMap<IpAddr, (Verdict, Instant)>>,
}

impl VerdictCache {
    /// The verdict about `ip`, unless it expired.
    pub(crate) fn get(&self, ip: IpAddr) -> Option<Verdict> {
        let ip = client_key(ip);
        let mut map = self.inner.lock().ok()?;
        match map.get(&ip) {
            Some((verdict, until)) if *until > Instant::now() => Some(*verdict),
            Some(_) => {
                map.remove(&ip);
                None
            }
            None => None,
        }
    }

    /// Keeps `verdict` about `ip` for `ttl`, in a cache of at most `max` addresses.
    pub(crate) fn set(&self, ip: IpAddr, verdict: Verdict, ttl: Duration, max: usize) {
        let Ok(mut map) = self.inner.lock() else {
            return;
        };
        let ip = client_key(ip);
        let now = Instant::now();
        if ttl.is_zero() || max == 0 {
            map.remove(&ip);
            return;
        }
        if !map.contains_key(&ip) && map.len() >= max {
            map.retain(|_, (_, until)| *until > now);
            while map.len() >= max {
                let Some(any) = map.keys().next().copied() else {
                    break;
                };
                map.remove(&any);
            }
        }
        map.insert(ip, (verdict, now + ttl));
    }

    /// Addresses kept now (expired ones included, until pruned).
    pub(crate) fn len(&self) -> usize {
        self.inner.lock().map_or(0, |m| m.len())
    }
}

/// What a client did while the greeting waited.
enum Early {
    /// Nothing.
    Quiet,
    /// It sent these bytes.
    Talked(Vec<u8>),
    /// It closed the connection (or it failed).
    Closed,
}

/// A stream with bytes already read from it put back in front: what came after a PROXY
/// protocol header in the same packets.
pub(crate) struct Prefixed<S> {
    prefix: Vec<u8>,
    pos: usize,
    inner: S,
}

impl<S> Prefixed<S> {
    /// `inner`, read from after `prefix`.
    pub(crate) fn new(prefix: Vec<u8>, inner: S) -> Self {
        Self {
            prefix,
            pos: 0,
            inner,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.pos < this.prefix.len() {
            let n = buf.remaining().min(this.prefix.len() - this.pos);
            buf.put_slice(&this.prefix[this.pos..this.pos + n]);
            this.pos += n;
            if this.pos == this.prefix.len() {
                this.prefix = Vec::new();
                this.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// A byte stream a session runs on: a TCP socket, or anything else that reads and
/// writes (a pipe, an in-memory duplex, a socket that came through a proxy).
pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

/// Serves one client until it quits, times out, misbehaves, or the server shuts down.
///
/// Not an `async fn`: the connection is built before the future, which then holds it
/// once (an `async fn` would also keep its arguments for its whole life, in every idle
/// connection's task).
pub(crate) fn serve<S: Io>(
    listener: Arc<Listener>,
    io: S,
    (peer, local): (SocketAddr, SocketAddr),
    shutdown: watch::Receiver<bool>,
) -> impl Future<Output = ()> {
    let id = new_session_id();
    let span = info_span!("smtp.session", session_id = id, peer = %peer, listener = listener.mode.as_str());
    let info = SessionInfo {
        id,
        peer,
        local,
        mode: listener.mode,
        tls: None,
        helo: None,
        authenticated: None,
        protocol: "SMTP",
        connection: Notes::default(),
    };
    let incoming = Incoming::new(Arc::clone(&listener.stats));
    let mut conn = Connection {
        listener,
        info,
        stream: Stream::Plain(io),
        shutdown,
        notes: Notes::default(),
        incoming,
        out_of_sync: false,
    };
    async move {
        debug!("connected");
        match conn.run().await {
            Ok(()) => debug!("closed"),
            Err(e) => debug!(error = %e, "connection ended"),
        }
    }
    .instrument(span)
}

struct Connection<S> {
    listener: Arc<Listener>,
    info: SessionInfo,
    stream: Stream<S>,
    shutdown: watch::Receiver<bool>,
    /// The current transaction's notes.
    notes: Notes,
    /// The content of the message arriving.
    incoming: Incoming,
    /// A pipelining violation was seen (and counted) already.
    out_of_sync: bool,
}

/// The content of the message being received, while it arrives: what it holds of the
/// server's memory budget, or the file it goes to.
struct Incoming {
    stats: Arc<ServerStats>,
    /// Bytes taken from the server-wide budget for content held in memory.
    reserved: u64,
    /// The spill file, once the content went there. Boxed: the room of a file handle,
    /// in every connection's task otherwise, is needed only by the few messages that
    /// spill.
    spilling: Option<Box<Spilling>>,
    /// Out of memory, and nowhere to spill (or the spill file failed): the content is
    /// dropped as it comes and the message refused at its end.
    dropped: bool,
}

impl Incoming {
    fn new(stats: Arc<ServerStats>) -> Self {
        Self {
            stats,
            reserved: 0,
            spilling: None,
            dropped: false,
        }
    }

    /// Whether it holds anything of a message.
    fn is_active(&self) -> bool {
        self.reserved > 0 || self.spilling.is_some() || self.dropped
    }

    /// The message is over (handed on, refused, reset): its memory goes back.
    fn reset(&mut self) {
        self.stats
            .release_memory(std::mem::take(&mut self.reserved));
        self.spilling = None;
        self.dropped = false;
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        self.reset();
    }
}

impl<S: Io> Connection<S> {
    async fn run(&mut self) -> io::Result<()> {
        let listener = Arc::clone(&self.listener);
        let limits = &listener.config.limits;
        let mut session = ServerSession::new(Arc::clone(&self.listener.session_config));
        if self.listener.mode == ListenerMode::Smtps {
            Box::pin(self.upgrade_tls()).await?;
            session = session.with_implicit_tls();
        }
        let mut draining = *self.shutdown.borrow();
        let mut deadlines = Deadlines::new(limits);
        loop {
            while let Some(event) = session.poll_event() {
                if self.out_of_sync(&mut session) {
                    // Refused and closed: the event is answered.
                    continue;
                }
                if event == Event::StartTls {
                    self.flush(&mut session).await?;
                    Box::pin(self.upgrade_tls()).await?;
                    session.tls_established();
                } else {
                    // Boxed: its state exists only while a command is handled, not in
                    // every idle connection's task.
                    Box::pin(self.handle(&mut session, event)).await;
                }
            }
            self.out_of_sync(&mut session);
            for refusal in session.take_refusals() {
                self.listener.stats.protocol_error(&refusal);
            }
            if session.is_receiving_data() || session.is_chunking() {
                Box::pin(self.bound_content(&mut session)).await;
            } else if self.incoming.is_active() {
                // A message that ended without being handed on (too big, reset).
                self.incoming.reset();
            }
            self.flush(&mut session).await?;
            if session.is_closed() {
                // A plain TCP socket closes when it is dropped (it sends its FIN then;
                // the replies are written already): no shutdown call, which mostly fails
                // anyway, the client having closed first. TLS sends close_notify, and
                // any other stream (StreamServer's) gets its shutdown.
                let plain_tcp = matches!(self.stream, Stream::Plain(_))
                    && std::any::TypeId::of::<S>()
                        == std::any::TypeId::of::<Prefixed<tokio::net::TcpStream>>();
                if !plain_tcp {
                    let _ = self.stream.shutdown().await;
                }
                return Ok(());
            }
            let idle = session.envelope().is_none() && !session.is_receiving_data();
            if draining && idle {
                session.shutdown();
                continue;
            }
            let size = if session.is_receiving_data() {
                DATA_BUFFER
            } else {
                COMMAND_BUFFER
            };
            let now = tokio::time::Instant::now();
            let deadline = deadlines.next(&session, now);
            if deadlines.session_over(now) {
                // Checked before every read, not only when one times out: a client
                // that keeps sending commands never lets a read time out.
                self.cut(&mut session, Cut::SessionTimeLimit, &deadlines);
                continue;
            }
            // The bytes read go to the session inside the read's poll.
            let stream = &mut self.stream;
            let receive = std::future::poll_fn(|cx| poll_receive(stream, cx, size, &mut session));
            tokio::select! {
                read = tokio::time::timeout_at(deadline, receive) => match read {
                    Err(_elapsed) => {
                        let why = if deadlines.session_over(deadline) {
                            Cut::SessionTimeLimit
                        } else {
                            Cut::Timeout
                        };
                        self.cut(&mut session, why, &deadlines);
                    }
                    Ok(Ok(0)) => return Ok(()),
                    Ok(Ok(n)) => deadlines.received(n),
                    Ok(Err(e)) => return Err(e),
                },
                _ = self.shutdown.changed(), if !draining => draining = true,
            }
        }
    }

    /// Closes the session for time (`421 4.4.2`), logged and counted.
    fn cut(&self, session: &mut ServerSession, why: Cut, deadlines: &Deadlines) {
        let stats = self.listener.stats.mode(self.listener.mode);
        match why {
            Cut::Timeout => {
                info!(phase = deadlines.phase(), "timeout");
                ServerStats::count(&stats.timed_out, 1);
                session.timeout();
            }
            Cut::SessionTimeLimit => {
                info!("session time limit reached");
                ServerStats::count(&stats.session_time_limit, 1);
                session.expire();
            }
        }
    }

    /// Sends the session's replies; a client that does not read them within the
    /// command timeout is dropped.
    async fn flush(&mut self, session: &mut ServerSession) -> io::Result<()> {
        let pending = session.take_output();
        if !pending.is_empty() {
            let write = async {
                self.stream.write_all(&pending).await?;
                self.stream.flush().await
            };
            tokio::time::timeout(self.listener.config.limits.command_timeout, write)
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "client does not read"))??;
        }
        Ok(())
    }

    async fn upgrade_tls(&mut self) -> io::Result<()> {
        let Some(acceptor) = self.listener.tls.clone() else {
            return Err(io::Error::other("TLS requested but not configured"));
        };
        let Stream::Plain(tcp) = std::mem::replace(&mut self.stream, Stream::Closed) else {
            return Err(io::Error::other("TLS already active"));
        };
        let timeout = self.listener.config.limits.tls_handshake_timeout;
        let stats = &self.listener.stats;
        let tls = match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                ServerStats::count(&stats.tls_failed, 1);
                info!(error = %e, "TLS handshake failed");
                return Err(e);
            }
            Err(_) => {
                ServerStats::count(&stats.tls_failed, 1);
                info!("TLS handshake timed out");
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "TLS handshake timeout",
                ));
            }
        };
        let conn = tls.get_ref().1;
        let version = match conn.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => {
                ServerStats::count(&stats.tls13, 1);
                "TLSv1.3".to_owned()
            }
            Some(rustls::ProtocolVersion::TLSv1_2) => {
                ServerStats::count(&stats.tls12, 1);
                "TLSv1.2".to_owned()
            }
            other => format!("{other:?}"),
        };
        let cipher = conn
            .negotiated_cipher_suite()
            .map(|s| format!("{:?}", s.suite()))
            .unwrap_or_default();
        debug!(version = %version, cipher = %cipher, "TLS established");
        self.info.tls = Some(TlsInfo { version, cipher });
        self.info.helo = None;
        self.info.authenticated = None;
        self.stream = Stream::Tls(Box::new(tls));
        Ok(())
    }

    /// Keeps the content of the message arriving within its share of memory: up to
    /// `max_message_memory`, while the server-wide budget lasts; beyond, it goes to the
    /// spill file (or, with none, is dropped and the message refused at its end).
    async fn bound_content(&mut self, session: &mut ServerSession) {
        let held = session.content().len() as u64;
        if held == 0 {
            return;
        }
        let incoming = &mut self.incoming;
        if incoming.dropped {
            session.take_content();
            return;
        }
        if let Some(spill) = &mut incoming.spilling {
            if let Err(e) = spill.write(&session.take_content()).await {
                warn!(error = %e, "cannot write the spill file: the message will be refused");
                incoming.spilling = None;
                incoming.dropped = true;
            }
            return;
        }
        let limits = &self.listener.config.limits;
        let more = held.saturating_sub(incoming.reserved);
        if held <= limits.max_message_memory
            && (more == 0
                || incoming
                    .stats
                    .reserve_memory(more, limits.max_total_message_memory))
        {
            incoming.reserved += more;
            return;
        }
        let spilled = match &self.listener.config.spill {
            Some(config) => match Spilling::create(config, self.info.id).await {
                Ok(mut spill) => spill.write(&session.take_content()).await.map(|()| spill),
                Err(e) => Err(e),
            },
            None => Err(io::Error::other("no spill directory, and out of memory")),
        };
        incoming
            .stats
            .release_memory(std::mem::take(&mut incoming.reserved));
        match spilled {
            Ok(spill) => {
                ServerStats::count(&incoming.stats.messages_spilled, 1);
                debug!("message content goes to a spill file");
                incoming.spilling = Some(Box::new(spill));
            }
            Err(e) => {
                warn!(error = %e, "message content dropped: it will be refused");
                session.take_content();
                incoming.dropped = true;
            }
        }
    }

    /// The whole content of the message that just ended with `rest`: in memory, or its
    /// spill file mapped; `None` when it was dropped.
    async fn finish_content(&mut self, rest: Vec<u8>) -> Option<Content> {
        let incoming = &mut self.incoming;
        if incoming.dropped {
            return None;
        }
        let Some(mut spill) = incoming.spilling.take() else {
            return Some(Content::from(rest));
        };
        let finished = match spill.write(&rest).await {
            Ok(()) => spill.finish().await,
            Err(e) => Err(e),
        };
        match finished {
            Ok(content) => Some(content),
            Err(e) => {
                warn!(error = %e, "cannot finish the spill file: the message is refused");
                None
            }
        }
    }

    /// Early-talker triage around the connect stage (`decision`): waits for the
    /// greeting delay (and for the stage) while watching for a client that talks first,
    /// keeps the verdict, and answers `554 5.5.0` in enforce mode. `None` when a failed
    /// client was refused at once (the session is closed).
    async fn triage(
        &mut self,
        session: &mut ServerSession,
        decision: impl Future<Output = Result<Decision, BoxError>>,
    ) -> Option<Result<Decision, BoxError>> {
        let listener = Arc::clone(&self.listener);
        let settings = &listener.config.early_talkers;
        let stats = listener.stats.mode(listener.mode);
        let cache = &listener.stats.verdicts;
        let ip = self.info.peer.ip();
        let enforce = settings.mode == FilterMode::Enforce;
        let cached = cache.get(ip);
        if cached == Some(Verdict::Fail) && enforce {
            ServerStats::count(&stats.pregreet_rejected, 1);
            info!("early talker (failed lately): refused");
            session.respond_and_close(pregreet_refusal(&listener.config.hostname));
            return None;
        }
        let delay = if cached == Some(Verdict::Pass) {
            ServerStats::count(&stats.greeting_cached, 1);
            Duration::ZERO
        } else {
            settings.greeting_delay
        };
        let (decision, early) = watch_early(&mut self.stream, delay, decision).await;
        match early {
            Early::Talked(bytes) => {
                cache.set(ip, Verdict::Fail, settings.fail_ttl, settings.max_cached);
                // What it said is its first command, read after the greeting (if any).
                session.receive(&bytes);
                // Its pipelined commands are not counted a second time.
                self.out_of_sync = true;
                if enforce {
                    ServerStats::count(&stats.pregreet_rejected, 1);
                    info!("early talker: talked before the greeting; refused");
                    // A refusal of the connect stage stands; an acceptance does not.
                    if decision.as_ref().is_ok_and(Decision::is_accept) {
                        session.respond_and_close(pregreet_refusal(&listener.config.hostname));
                        return None;
                    }
                } else {
                    ServerStats::count(&stats.pregreet_tagged, 1);
                    info!("early talker: talked before the greeting (tagged)");
                }
            }
            Early::Quiet if !delay.is_zero() => {
                ServerStats::count(&stats.greeting_waited, 1);
                cache.set(ip, Verdict::Pass, settings.pass_ttl, settings.max_cached);
            }
            Early::Quiet | Early::Closed => {}
        }
        Some(decision)
    }

    /// A command the client sent before the reply it had to wait for (RFC 2920), on a
    /// triaged listener before any login: counted once, and in enforce mode refused with
    /// `554 5.5.0` and the connection closed (true then).
    fn out_of_sync(&mut self, session: &mut ServerSession) -> bool {
        let Some(verb) = session.take_pipelining_violation() else {
            return false;
        };
        let listener = &self.listener;
        if !listener.triage || session.is_authenticated() || self.out_of_sync {
            return false;
        }
        self.out_of_sync = true;
        let settings = &listener.config.early_talkers;
        let stats = listener.stats.mode(listener.mode);
        listener.stats.verdicts.set(
            self.info.peer.ip(),
            Verdict::Fail,
            settings.fail_ttl,
            settings.max_cached,
        );
        if settings.mode != FilterMode::Enforce {
            ServerStats::count(&stats.pipelining_tagged, 1);
            info!(command = verb, "pipelining violation (tagged)");
            return false;
        }
        ServerStats::count(&stats.pipelining_rejected, 1);
        info!(command = verb, "pipelining violation: refused");
        let text = format!(
            "{} Protocol error: commands sent before the reply to {verb}; wait for each reply unless PIPELINING allows otherwise (RFC 2920)",
            listener.config.hostname
        );
        session.respond_and_close(Reply::new(
            ReplyCode::TRANSACTION_FAILED,
            EnhancedStatus::PROTOCOL_ERROR,
            text,
        ));
        true
    }

    /// The session facts as of now, for a stage request.
    fn snapshot(&mut self, session: &ServerSession) -> Arc<SessionInfo> {
        self.info.protocol = session.protocol_name();
        Arc::new(self.info.clone())
    }

    async fn handle(&mut self, session: &mut ServerSession, event: Event) {
        let listener = Arc::clone(&self.listener);
        let stages = &listener.stages;
        let stage = match &event {
            Event::Connect => "connect",
            Event::Helo { .. } => "helo",
            Event::Auth(_) => "auth",
            Event::Mail { .. } => "mail",
            Event::Rcpt { .. } => "rcpt",
            Event::Message { .. } => "data",
            Event::StartTls => "starttls",
        };
        let decision = match event {
            Event::Connect => {
                let request = ConnectRequest {
                    session: self.snapshot(session),
                };
                if !listener.triage {
                    call(&stages.connect, request).await
                } else {
                    match self.triage(session, call(&stages.connect, request)).await {
                        Some(decision) => decision,
                        // Refused at once: the session is closed.
                        None => return,
                    }
                }
            }
            Event::Helo { kind, name } => {
                // What the HELO checks find this time (they leave it in the notes).
                self.info.connection.insert(HeloFinding::default());
                let request = EhloRequest {
                    session: self.snapshot(session),
                    kind,
                    name: name.clone(),
                };
                let decision = call(&stages.ehlo, request).await;
                if let Some(HeloFinding {
                    problem: Some(problem),
                    refused,
                }) = self.info.connection.get::<HeloFinding>()
                {
                    listener.stats.helo_check(problem, refused);
                }
                decision
            }
            Event::Auth(credentials) => {
                let username = credentials.username.clone();
                let decision = call(
                    &stages.auth,
                    AuthRequest {
                        session: self.snapshot(session),
                        credentials,
                    },
                )
                .await;
                apply(session, decision, stage, &listener.stats);
                // Logged in when the session says so, whatever the filter's decision was.
                let mode = listener.stats.mode(listener.mode);
                if session.is_authenticated() {
                    ServerStats::count(&mode.logins, 1);
                    info!(user = %username, "authenticated");
                    self.info.authenticated = Some(username);
                } else {
                    ServerStats::count(&mode.login_failures, 1);
                    info!(user = %username, "authentication failed");
                    tokio::time::sleep(listener.config.limits.auth_failure_delay).await;
                }
                return;
            }
            Event::Mail { from, params } => {
                self.notes = Notes::default();
                // Whatever the last transaction left (a message the session refused by
                // itself, pipelined with this one) is over.
                self.incoming.reset();
                call(
                    &stages.mail,
                    MailRequest {
                        session: self.snapshot(session),
                        from,
                        params,
                        notes: self.notes.clone(),
                    },
                )
                .await
            }
            Event::Rcpt { to, params } => {
                let from = session
                    .envelope()
                    .map(|e| e.from.clone())
                    .unwrap_or(smtp_proto::ReversePath::Null);
                stages
                    .rcpt(RcptRequest {
                        session: self.snapshot(session),
                        from,
                        to,
                        params,
                        notes: self.notes.clone(),
                    })
                    .await
            }
            Event::Message { envelope, body } => {
                let Some(body) = self.finish_content(body).await else {
                    self.incoming.reset();
                    listener.stats.refused("data", 452);
                    let reply = Reply::new(
                        ReplyCode::INSUFFICIENT_STORAGE,
                        EnhancedStatus::new(4, 3, 1).unwrap_or(EnhancedStatus::SYSTEM_TEMPORARY),
                        "Insufficient system storage; try again later",
                    );
                    // Under LMTP, once per recipient.
                    let replies = if session.config().lmtp {
                        envelope.recipients.len().max(1)
                    } else {
                        1
                    };
                    for _ in 0..replies {
                        session.respond(reply.clone());
                    }
                    return;
                };
                let body_len = body.len();
                // `queue_id` is for the data stage to fill in (`Span::current().record(...)`) once
                // the message has one, so that the "message accepted" line carries it.
                let span = info_span!("smtp.txn", from = %envelope.from, rcpts = envelope.recipients.len(), size = body_len, queue_id = tracing::field::Empty);
                let request =
                    DataRequest::new(self.snapshot(session), envelope, body, self.notes.clone());
                let refusals = request.refusals();
                let size = body_len as u64;
                let decision = call(&stages.data, request).instrument(span.clone()).await;
                self.incoming.reset();
                let stats = listener.stats.mode(listener.mode);
                span.in_scope(|| match &decision {
                    Ok(d) if d.is_accept() => {
                        ServerStats::count(&stats.messages_accepted, 1);
                        ServerStats::count(&stats.bytes_accepted, size);
                        info!(reply = %reply_text(d.reply()), "message accepted")
                    }
                    Ok(d) => {
                        let counter = if d.is_reject() {
                            &stats.messages_rejected
                        } else {
                            &stats.messages_deferred
                        };
                        ServerStats::count(counter, 1);
                        info!(reply = %reply_text(d.reply()), "message refused");
                    }
                    Err(_) => ServerStats::count(&stats.messages_deferred, 1),
                });
                if session.config().lmtp {
                    span.in_scope(|| apply_lmtp(session, decision, &refusals, &listener.stats));
                    return;
                }
                decision
            }
            Event::StartTls => return,
        };
        apply(session, decision, stage, &listener.stats);
        // What the client said at HELO counts once the session took it.
        self.info.helo = session.helo().map(|(_, name)| name.clone());
    }
}

/// The refusal of an early talker.
fn pregreet_refusal(hostname: &str) -> Reply {
    Reply::new(
        ReplyCode::TRANSACTION_FAILED,
        EnhancedStatus::PROTOCOL_ERROR,
        format!(
            "{hostname} Protocol error: you talked before the greeting; an SMTP client waits for the 220 greeting (RFC 5321 §4.3.1)"
        ),
    )
}

/// Waits for the connect stage's `decision` and for `delay` (whichever is longer),
/// reading meanwhile: whatever comes before both are over is early talk. With no delay,
/// what has already arrived is read.
async fn watch_early<S: Io>(
    stream: &mut Stream<S>,
    delay: Duration,
    decision: impl Future<Output = Result<Decision, BoxError>>,
) -> (Result<Decision, BoxError>, Early) {
    let sleep = tokio::time::sleep(delay);
    tokio::pin!(decision, sleep);
    // No delay: no timer (tokio rounds a deadline up to the next millisecond, which
    // would cost every connection a millisecond for nothing).
    let (mut decided, mut early, mut waited) = (None, None, delay.is_zero());
    loop {
        tokio::select! {
            biased;
            // No buffer of its own while it waits: the thread's, and a copy of
            // what came.
            read = std::future::poll_fn(|cx| poll_read_scratch(stream, cx, COMMAND_BUFFER, <[u8]>::to_vec)), if early.is_none() => {
                early = Some(match read {
                    Ok(bytes) if !bytes.is_empty() => Early::Talked(bytes),
                    Ok(_) | Err(_) => Early::Closed,
                });
            }
            d = &mut decision, if decided.is_none() => decided = Some(d),
            () = &mut sleep, if !waited => waited = true,
        }
        if let Some(d) = decided.take() {
            if waited || early.is_some() {
                return (d, early.unwrap_or(Early::Quiet));
            }
            decided = Some(d);
        }
    }
}

/// A decision's reply for its log line, formatted only if the line is written.
fn reply_text(reply: Option<&Reply>) -> &dyn std::fmt::Display {
    match reply {
        Some(r) => r,
        None => &"250",
    }
}

/// A stage's answer, an infrastructure failure being `451 4.3.0`.
fn settle(decision: Result<Decision, BoxError>) -> Decision {
    decision.unwrap_or_else(|e| {
        warn!(error = %e, "stage failed");
        Decision::defer::<451>(
            EnhancedStatus::SYSTEM_TEMPORARY,
            "Local error in processing; try again later",
        )
    })
}

/// Answers a message under LMTP (RFC 2033 §4.2): one reply per recipient accepted at
/// RCPT, in order: the refusal a data-stage filter gave it
/// ([`DataRequest::refuse_recipient`]), or the final decision's reply.
fn apply_lmtp(
    session: &mut ServerSession,
    decision: Result<Decision, BoxError>,
    refusals: &Refusals,
    stats: &ServerStats,
) {
    let decision = settle(decision);
    let last = decision
        .reply()
        .cloned()
        .unwrap_or_else(|| Reply::new(ReplyCode::OK, EnhancedStatus::OK, "Message accepted"));
    let replies = refusals.replies(&last);
    let refused = replies
        .iter()
        .filter(|r| !r.is_positive_completion())
        .count();
    if refused > 0 {
        info!(recipients = replies.len(), refused, "LMTP replies");
    }
    let count = replies.len().max(1);
    let mut replies = replies.into_iter();
    for i in 0..count {
        let reply = replies.next().unwrap_or_else(|| last.clone());
        if !reply.is_positive_completion() {
            stats.refused("data", reply.code().as_u16());
        }
        if decision.closes() && i + 1 == count {
            session.respond_and_close(reply);
        } else {
            session.respond(reply);
        }
    }
}

/// Answers the session's pending event with a stage's decision, and counts a refusal.
fn apply(
    session: &mut ServerSession,
    decision: Result<Decision, BoxError>,
    stage: &'static str,
    stats: &ServerStats,
) {
    let decision = settle(decision);
    match decision.reply() {
        Some(reply) if !decision.is_accept() => stats.refused(stage, reply.code().as_u16()),
        _ => {}
    }
    match (decision.reply(), decision.closes()) {
        (None, _) => session.accept(),
        (Some(reply), false) => session.respond(reply.clone()),
        (Some(reply), true) => session.respond_and_close(reply.clone()),
    }
}

/// When the client's time is up, so that a slow client cannot hold a connection:
///
/// - a command must be complete within `command_timeout` of the end of the previous
///   one (its first byte included), however the bytes trickle in;
/// - message content (DATA, or a BDAT transaction from its first chunk to its last)
///   has `data_timeout`, and every byte received earns `1 / min_data_rate` seconds more,
///   up to `data_timeout` ahead: a client that sends at least `min_data_rate` bytes per
///   second is never cut off, a slower one is once it has fallen `data_timeout` behind
///   (as Postfix's `smtpd_min_data_rate`);
/// - the whole session ends `max_session_duration` after it began: waiting for a
///   command stops then, and so does a session that keeps sending commands (message
///   content in progress is let finish, bounded by the rule above).
struct Deadlines {
    command_timeout: std::time::Duration,
    data_timeout: std::time::Duration,
    min_data_rate: u64,
    command: tokio::time::Instant,
    data: Option<tokio::time::Instant>,
    /// When the session is over; `None`: no limit.
    end: Option<tokio::time::Instant>,
}

impl Deadlines {
    fn new(limits: &crate::Limits) -> Self {
        Self {
            command_timeout: limits.command_timeout,
            data_timeout: limits.data_timeout,
            min_data_rate: limits.min_data_rate,
            command: tokio::time::Instant::now() + limits.command_timeout,
            data: None,
            end: (!limits.max_session_duration.is_zero())
                .then(|| tokio::time::Instant::now() + limits.max_session_duration),
        }
    }

    /// Whether the session's time is up at `at`, between commands (content in progress
    /// is let finish: `data` is set then, by [`Deadlines::next`]).
    fn session_over(&self, at: tokio::time::Instant) -> bool {
        self.data.is_none() && self.end.is_some_and(|end| end <= at)
    }

    /// The deadline of the next read, given where the session stands.
    fn next(&mut self, session: &ServerSession, now: tokio::time::Instant) -> tokio::time::Instant {
        if session.is_receiving_data() {
            return *self.data.get_or_insert(now + self.data_timeout);
        }
        if session.is_chunking() {
            // Between BDAT chunks: the transaction's content is still coming.
            return *self.data.get_or_insert(now + self.data_timeout);
        }
        self.data = None;
        if session.buffered_input() == 0 {
            // The last command is done: the next one has the whole timeout.
            self.command = now + self.command_timeout;
        }
        self.end.map_or(self.command, |end| self.command.min(end))
    }

    /// `n` bytes came: during message content, they earn time.
    fn received(&mut self, n: usize) {
        let (Some(data), Some(rate)) = (
            self.data.as_mut(),
            std::num::NonZeroU64::new(self.min_data_rate),
        ) else {
            return;
        };
        let earned = std::time::Duration::from_secs_f64(n as f64 / rate.get() as f64);
        let cap = tokio::time::Instant::now() + self.data_timeout;
        *data = (*data + earned).min(cap);
    }

    fn phase(&self) -> &'static str {
        if self.data.is_some() {
            "data"
        } else {
            "command"
        }
    }
}

/// Why a session is closed for time.
enum Cut {
    /// A command or message content did not come in time.
    Timeout,
    /// `max_session_duration` reached.
    SessionTimeLimit,
}

/// A plain or TLS stream.
enum Stream<S> {
    Plain(S),
    Tls(Box<TlsStream<S>>),
    /// Between the two, during a handshake.
    Closed,
}

impl<S: Io> AsyncRead for Stream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Self::Closed => Poll::Ready(Ok(())),
        }
    }
}

impl<S: Io> AsyncWrite for Stream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Self::Closed => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Self::Closed => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Self::Closed => Poll::Ready(Ok(())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A verdict holds for the client's whole IPv6 /64 (and for an IPv4 address however
    /// it is written), not for the one address it came from.
    #[test]
    fn early_talker_verdicts_hold_for_the_clients_64() {
        let cache = VerdictCache::default();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap_or(IpAddr::from([0, 0, 0, 0]));
        let ttl = Duration::from_secs(60);
        cache.set(ip("2001:db8:1:2::a"), Verdict::Fail, ttl, 10);
        assert_eq!(cache.get(ip("2001:db8:1:2:ffff::b")), Some(Verdict::Fail));
        assert_eq!(cache.get(ip("2001:db8:1:3::a")), None);
        cache.set(ip("::ffff:192.0.2.7"), Verdict::Pass, ttl, 10);
        assert_eq!(cache.get(ip("192.0.2.7")), Some(Verdict::Pass));
        assert_eq!(cache.get(ip("192.0.2.8")), None);
        assert_eq!(cache.len(), 2);
    }
}
