//! Outbound SMTP to one host: connect to its addresses in turn, EHLO, STARTTLS by
//! policy, AUTH for a relay, then transactions checked against what the server offers.

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls_pki_types::ServerName;
use smtp_proto::{
    Body, ClientConfig, Command, EnhancedStatus, ForwardPath, HeloName, MailParameters,
    MailTransaction, RcptParameters, Reply, ReplyCode, ReversePath,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tracing::{debug, info};

use crate::mta_sts::ReportedSession;
use crate::tls::{TlsConfigs, TlsPolicy};
use crate::{ClientError, Connection, Timeouts};

/// How to talk to remote servers.
#[derive(Clone, Debug)]
pub struct OutboundConfig {
    /// Our name for EHLO.
    pub helo_name: String,
    /// The remote port (25 for MX delivery).
    pub port: u16,
    /// STARTTLS policy.
    pub tls: TlsPolicy,
    /// TLS client configurations.
    pub tls_configs: TlsConfigs,
    /// TLS from the first byte (port 465 relays, RFC 8314).
    pub implicit_tls: bool,
    /// A login for the server (a smarthost); only ever sent under TLS, to a server
    /// whose certificate verifies for its name (or is pinned in the trusted roots),
    /// whatever the TLS policy.
    pub auth: Option<(String, String)>,
    /// Time to open a TCP connection. Default 30 s.
    pub connect_timeout: Duration,
    /// Per-step timeouts (RFC 5321 §4.5.3.2).
    pub timeouts: Timeouts,
    /// Send bodies with BDAT when the server offers CHUNKING.
    pub chunking: bool,
    /// A server that greets with our own EHLO name is us: the mail would loop
    /// ([`ClientError::Loop`], as Postfix does). On by default; a client that names
    /// the server itself (a submission client) has no loop to fear.
    pub detect_loops: bool,
    /// DANE (RFC 7672) for this host: its secure TLSA records. When set, STARTTLS is
    /// mandatory and the certificate is judged by the records alone, whatever `tls`
    /// says; a server that does not offer STARTTLS or fails the check is deferred
    /// (`451 4.7.5`), never sent to in plaintext. Set per host, by the caller that
    /// looked the records up. Default none.
    pub dane: Option<crate::DaneTls>,
    /// The local address outbound connections are bound to (port chosen by the
    /// system); `None`: the system picks it. A server address of the other family
    /// (IPv4 against IPv6) cannot be reached from it and is skipped. Pair it with the
    /// EHLO name that belongs to it in [`OutboundConfig::helo_name`].
    pub source: Option<IpAddr>,
}

impl OutboundConfig {
    /// Settings for MX delivery on port 25 with opportunistic TLS.
    pub fn new(helo_name: &str, tls_configs: TlsConfigs) -> Self {
        Self {
            helo_name: helo_name.to_owned(),
            port: 25,
            tls: TlsPolicy::Opportunistic,
            tls_configs,
            implicit_tls: false,
            auth: None,
            connect_timeout: Duration::from_secs(30),
            timeouts: Timeouts::default(),
            chunking: true,
            detect_loops: true,
            dane: None,
            source: None,
        }
    }
}

/// A message to send: the envelope and the body, with what the body needs of the
/// server.
#[derive(Clone, Debug)]
pub struct OutboundMessage {
    /// MAIL FROM.
    pub from: ReversePath,
    /// MAIL FROM parameters as the message was received (DSN parameters are dropped
    /// when the server does not offer DSN, `MT-PRIORITY` when it does not offer that).
    pub params: MailParameters,
    /// The recipients and their DSN parameters.
    pub recipients: Vec<(ForwardPath, RcptParameters)>,
    /// The message (cheap to clone; for a large one, a spool file mapped into memory:
    /// it is sent a part at a time).
    pub body: bytes::Bytes,
}

/// A TCP connection to `address`, from `source` when given (bound before connecting).
async fn connect(address: SocketAddr, source: Option<IpAddr>) -> std::io::Result<TcpStream> {
    let Some(source) = source else {
        return TcpStream::connect(address).await;
    };
    let socket = match (source, address) {
        (IpAddr::V4(_), SocketAddr::V4(_)) => tokio::net::TcpSocket::new_v4()?,
        (IpAddr::V6(_), SocketAddr::V6(_)) => tokio::net::TcpSocket::new_v6()?,
        _ => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrNotAvailable,
                format!("source address {source} cannot reach {address}"),
            ));
        }
    };
    socket.bind(SocketAddr::new(source, 0))?;
    socket.connect(address).await
}

/// A plain or TLS client socket.
#[derive(Debug)]
pub enum ClientStream {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS.
    Tls(Box<TlsStream<TcpStream>>),
    /// During an upgrade.
    Closed,
}

/// An open, greeted, EHLO'd (and, by policy, TLS-protected and authenticated)
/// connection to one server.
#[derive(Debug)]
pub struct Session {
    conn: Connection<ClientStream>,
    host: String,
    address: SocketAddr,
    tls: bool,
    /// The last transaction did not end with the data: RSET before the next MAIL.
    needs_reset: bool,
    /// Transactions sent on this connection.
    pub transactions: usize,
}

impl Session {
    /// Connects to `host` on each of `addresses` in turn until one greets us and agrees
    /// to the TLS policy; returns the last error when none does.
    pub async fn open(
        host: &str,
        addresses: &[IpAddr],
        config: &OutboundConfig,
    ) -> Result<Self, ClientError> {
        Self::open_reporting(host, addresses, config, &mut ReportedSession::default()).await
    }

    /// As [`Session::open`], and `reported` tells how far the last attempt got: our
    /// address and the server's once connected, the name in its greeting once greeted
    /// (what a TLS report says of a failure, RFC 8460 §4.4).
    pub async fn open_reporting(
        host: &str,
        addresses: &[IpAddr],
        config: &OutboundConfig,
        reported: &mut ReportedSession,
    ) -> Result<Self, ClientError> {
        let mut last = ClientError::Io(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("no address for {host}"),
        ));
        for &ip in addresses {
            let address = SocketAddr::new(ip, config.port);
            match Self::open_one(host, address, config, true, reported).await {
                Ok(session) => return Ok(session),
                // Opportunistic TLS: the handshake failed before any mail data, so
                // plaintext is allowed, on a new connection (not with a login to send).
                Err(e @ ClientError::Tls { .. })
                    if config.tls == TlsPolicy::Opportunistic
                        && config.dane.is_none()
                        && !config.implicit_tls
                        && config.auth.is_none() =>
                {
                    info!(host, %address, error = %e, "TLS handshake failed; retrying without TLS");
                    match Self::open_one(host, address, config, false, reported).await {
                        Ok(session) => return Ok(session),
                        Err(e) => last = e,
                    }
                }
                Err(e) => {
                    debug!(host, %address, error = %e, "cannot use this address");
                    last = e;
                }
            }
        }
        Err(last)
    }

    async fn open_one(
        host: &str,
        address: SocketAddr,
        config: &OutboundConfig,
        try_tls: bool,
        reported: &mut ReportedSession,
    ) -> Result<Self, ClientError> {
        *reported = ReportedSession {
            receiving_ip: Some(address.ip()),
            ..ReportedSession::default()
        };
        let tcp = tokio::time::timeout(config.connect_timeout, connect(address, config.source))
            .await
            .map_err(|_| ClientError::Timeout("the TCP connection"))??;
        reported.sending_mta_ip = tcp.local_addr().ok().map(|a| a.ip());
        let _ = tcp.set_nodelay(true);
        let name = ServerName::try_from(host.trim_end_matches('.').to_owned())
            .or_else(|_| ServerName::try_from(address.ip().to_string()))
            .map_err(|e| ClientError::tls_from(format!("no TLS name for {host}"), e))?;
        let stream = if config.implicit_tls {
            let connector = TlsConnector::from(Arc::clone(tls_config(config)));
            let tls = tokio::time::timeout(
                config.timeouts.command,
                connector.connect(name.clone(), tcp),
            )
            .await
            .map_err(|_| ClientError::Timeout("the TLS handshake"))?
            .map_err(|e| handshake_error(host, config, e))?;
            ClientStream::Tls(Box::new(tls))
        } else {
            ClientStream::Plain(tcp)
        };
        let client_config = ClientConfig {
            chunking: config.chunking,
            ..ClientConfig::default()
        };
        let mut conn = Connection::open(stream, client_config, config.timeouts.clone()).await?;
        reported.receiving_mx_helo = conn
            .greeting()
            .text()
            .split_whitespace()
            .next()
            .map(str::to_owned);
        // As Postfix does: a server that greets with our own name is us.
        let greeted_as = conn.greeting().text().split_whitespace().next();
        if config.detect_loops
            && greeted_as.is_some_and(|name| name.eq_ignore_ascii_case(&config.helo_name))
        {
            conn.quit().await;
            return Err(ClientError::Loop(host.to_owned()));
        }
        let helo =
            HeloName::parse(&config.helo_name).unwrap_or(HeloName::Other("localhost".into()));
        conn.hello(helo.clone()).await?;
        let mut tls = config.implicit_tls;
        let offers_starttls = conn.capabilities().is_some_and(|c| c.starttls);
        let tls_wanted = config.tls != TlsPolicy::Disabled || config.dane.is_some();
        if !tls && try_tls && tls_wanted && offers_starttls {
            let reply = conn.command(Command::StartTls).await?;
            if reply.code() == ReplyCode::SERVICE_READY {
                let connector = TlsConnector::from(Arc::clone(tls_config(config)));
                let ClientStream::Plain(tcp) =
                    std::mem::replace(conn.stream_mut(), ClientStream::Closed)
                else {
                    return Err(ClientError::tls("TLS already active"));
                };
                let upgraded =
                    tokio::time::timeout(config.timeouts.command, connector.connect(name, tcp))
                        .await
                        .map_err(|_| ClientError::Timeout("the TLS handshake"))?
                        .map_err(|e| handshake_error(host, config, e))?;
                *conn.stream_mut() = ClientStream::Tls(Box::new(upgraded));
                conn.tls_established();
                conn.hello(helo).await?;
                tls = true;
            } else if config.tls == TlsPolicy::Required || config.dane.is_some() {
                return Err(ClientError::tls(format!("STARTTLS refused: {}", reply)));
            }
        }
        if (config.tls == TlsPolicy::Required || config.dane.is_some()) && !tls {
            return Err(ClientError::tls(format!(
                "{host} does not offer STARTTLS and TLS is required"
            )));
        }
        if let Some((user, pass)) = &config.auth {
            if !tls {
                return Err(ClientError::tls(format!(
                    "{host}: no TLS, so no login (credentials never go in plaintext)"
                )));
            }
            conn.authenticate(user, pass).await?;
        }
        debug!(host, %address, tls, "connected");
        Ok(Self {
            conn,
            host: host.to_owned(),
            address,
            tls,
            needs_reset: false,
            transactions: 0,
        })
    }

    /// The host name this session talks to.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The address it is connected to.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Whether TLS protects the session.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// Whether the server offers `REQUIRETLS` (RFC 8689 §2) and the session is under
    /// TLS: the condition for carrying a REQUIRETLS message on it.
    pub fn offers_requiretls(&self) -> bool {
        self.tls && self.conn.capabilities().is_some_and(|c| c.requiretls)
    }

    /// Sends one message; returns one reply per recipient (the server's, or ours when
    /// the server cannot take the message: too big `552 5.3.4`, 8-bit content without
    /// 8BITMIME `554 5.6.3`, UTF-8 addresses without SMTPUTF8 `553 5.6.7`, REQUIRETLS
    /// without TLS or support `550 5.7.30`). An `Err` means the connection failed: every
    /// recipient is still to be tried.
    pub async fn deliver(&mut self, message: &OutboundMessage) -> Result<Vec<Reply>, ClientError> {
        let caps = self.conn.capabilities().cloned().unwrap_or_default();
        let refuse = |code: ReplyCode, status: (u8, u16, u16), text: String| {
            let status = EnhancedStatus::new(status.0, status.1, status.2)
                .unwrap_or(EnhancedStatus::PROTOCOL_ERROR);
            Ok(vec![
                Reply::new(code, status, text);
                message.recipients.len()
            ])
        };
        let size = message.body.len() as u64;
        if let Some(limit) = caps.size.filter(|&l| l > 0 && size > l) {
            return refuse(
                ReplyCode::EXCEEDED_STORAGE,
                (5, 3, 4),
                format!(
                    "message of {size} octets exceeds the {limit} octets {} accepts",
                    self.host
                ),
            );
        }
        let eight_bit = message.params.body == Some(Body::EightBitMime)
            || message.body.iter().any(|&b| b >= 0x80);
        if eight_bit && !caps.eightbitmime {
            return refuse(
                ReplyCode::TRANSACTION_FAILED,
                (5, 6, 3),
                format!("{} does not accept 8-bit content (no 8BITMIME)", self.host),
            );
        }
        let utf8 = message.params.smtputf8
            || message.from.is_utf8()
            || message.recipients.iter().any(|(r, _)| r.is_utf8());
        if utf8 && !caps.smtputf8 {
            return refuse(
                ReplyCode::MAILBOX_NAME_NOT_ALLOWED,
                (5, 6, 7),
                format!(
                    "{} does not accept UTF-8 addresses (no SMTPUTF8)",
                    self.host
                ),
            );
        }
        if message.params.requiretls && !(self.tls && caps.requiretls) {
            return refuse(
                ReplyCode::MAILBOX_UNAVAILABLE,
                (5, 7, 30),
                format!("REQUIRETLS: {} does not offer it under TLS", self.host),
            );
        }
        if self.needs_reset {
            let _ = self.conn.command(Command::Rset).await?;
            self.needs_reset = false;
        }
        let mut params = MailParameters {
            size: caps.size.map(|_| size),
            body: if eight_bit {
                Some(Body::EightBitMime)
            } else {
                None
            },
            smtputf8: utf8,
            requiretls: message.params.requiretls,
            // RFC 6710 §4.1: passed on to a server that offers it, else dropped.
            mt_priority: message.params.mt_priority.filter(|_| caps.mt_priority),
            ..MailParameters::default()
        };
        let mut recipients = message.recipients.clone();
        if caps.dsn {
            params.ret = message.params.ret;
            params.envid.clone_from(&message.params.envid);
        } else {
            for (_, p) in &mut recipients {
                *p = RcptParameters::default();
            }
        }
        let transaction = MailTransaction {
            from: message.from.clone(),
            params,
            recipients,
        };
        let result = self.conn.send(transaction, &message.body).await;
        self.transactions += 1;
        let result = result?;
        // A transaction that did not reach the end of its data left the server in the
        // middle of one (or after a refused MAIL): reset before the next.
        self.needs_reset = result
            .data
            .as_ref()
            .is_none_or(|r| !r.is_positive_completion());
        Ok(result.recipients)
    }

    /// QUIT and close.
    pub async fn quit(self) {
        self.conn.quit().await;
    }
}

/// The verifying configuration under `Required` and whenever a login is to be sent
/// (a password goes only to a server that proves its name); otherwise any certificate.
fn tls_config(config: &OutboundConfig) -> &Arc<rustls::ClientConfig> {
    if let Some(dane) = &config.dane {
        // DANE: the TLSA records judge the certificate (a login too).
        return dane.client_config();
    }
    match config.tls {
        _ if config.auth.is_some() => &config.tls_configs.verified,
        TlsPolicy::Required => &config.tls_configs.verified,
        TlsPolicy::Opportunistic | TlsPolicy::Disabled => &config.tls_configs.dangerous_unverified,
    }
}

/// A failed handshake, said so that the operator knows what to do about it.
fn handshake_error(host: &str, config: &OutboundConfig, e: std::io::Error) -> ClientError {
    let rustls_error = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    let certificate = matches!(rustls_error, Some(rustls::Error::InvalidCertificate(_)));
    // rustls shows a verifier's own reason (DANE's) in its Debug form: say it plainly.
    let e = match rustls_error {
        Some(rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other))) => {
            std::io::Error::other(format!("invalid peer certificate: {}", other.0))
        }
        _ => e,
    };
    if certificate && config.auth.is_some() {
        ClientError::tls_from(
            format!(
                "the certificate of {host} does not verify (the login is sent only to a \
                 server whose certificate verifies for its name; if it is self-signed, pin \
                 it by putting that certificate in [outbound] ca_file)"
            ),
            e,
        )
    } else {
        ClientError::tls_from(format!("the handshake with {host} failed"), e)
    }
}

impl AsyncRead for ClientStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Self::Closed => Poll::Ready(Ok(())),
        }
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Self::Closed => Poll::Ready(Err(std::io::ErrorKind::NotConnected.into())),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Self::Closed => Poll::Ready(Ok(())),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Self::Closed => Poll::Ready(Ok(())),
        }
    }
}
