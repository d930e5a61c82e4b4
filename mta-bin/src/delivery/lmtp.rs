//! LMTP delivery (RFC 2033): one transaction, one reply per recipient.

use std::net::SocketAddr;
use std::path::PathBuf;

use mail_queue::{DeliveryRequest, Outcome};
use smtp_client::{ClientError, Connection, Timeouts};
use smtp_proto::{
    ClientConfig, ForwardPath, HeloName, MailParameters, MailTransaction, RcptParameters,
    ReversePath,
};
use tokio::io::{AsyncRead, AsyncWrite};

/// Where an LMTP server listens: `127.0.0.1:24`, or a Unix socket written
/// `unix:/run/dovecot/lmtp` (or just the absolute path), which is Dovecot's default.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "String")]
pub enum LmtpAddress {
    /// TCP.
    Tcp(SocketAddr),
    /// A Unix socket.
    Unix(PathBuf),
}

impl TryFrom<String> for LmtpAddress {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        if let Some(path) = text.strip_prefix("unix:") {
            return Ok(Self::Unix(PathBuf::from(path)));
        }
        if text.starts_with('/') {
            return Ok(Self::Unix(PathBuf::from(text)));
        }
        text.parse()
            .map(Self::Tcp)
            .map_err(|_| format!("{text:?} is neither ip:port nor unix:/path/to/socket"))
    }
}

impl std::fmt::Display for LmtpAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tcp(address) => write!(f, "{address}"),
            Self::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// Delivery to an LMTP server such as Dovecot.
#[derive(Debug, Clone)]
pub struct Lmtp {
    address: LmtpAddress,
    hostname: String,
}

impl Lmtp {
    /// Delivery to the server at `address`.
    pub fn new(address: LmtpAddress, hostname: &str) -> Self {
        Self {
            address,
            hostname: hostname.to_owned(),
        }
    }

    /// Delivers to `addresses` (the request's recipients, in order).
    pub async fn deliver(&self, request: &DeliveryRequest, addresses: &[String]) -> Vec<Outcome> {
        match self.try_deliver(request, addresses).await {
            Ok(outcomes) => outcomes,
            Err(e) => {
                let text = e.reply().to_string();
                let outcome = if e.is_permanent() {
                    Outcome::Failed(text)
                } else {
                    Outcome::Deferred(text)
                };
                vec![outcome; addresses.len()]
            }
        }
    }

    async fn try_deliver(
        &self,
        request: &DeliveryRequest,
        addresses: &[String],
    ) -> Result<Vec<Outcome>, ClientError> {
        match &self.address {
            LmtpAddress::Tcp(address) => {
                let stream = tokio::net::TcpStream::connect(address).await?;
                self.transaction(stream, request, addresses).await
            }
            #[cfg(unix)]
            LmtpAddress::Unix(path) => {
                let stream = tokio::net::UnixStream::connect(path).await?;
                self.transaction(stream, request, addresses).await
            }
            #[cfg(not(unix))]
            LmtpAddress::Unix(_) => Err(ClientError::Io(std::io::Error::other(
                "Unix sockets need a Unix system",
            ))),
        }
    }

    async fn transaction<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        stream: S,
        request: &DeliveryRequest,
        addresses: &[String],
    ) -> Result<Vec<Outcome>, ClientError> {
        let config = ClientConfig {
            lmtp: true,
            chunking: true,
            ..ClientConfig::default()
        };
        let mut conn = Connection::open(stream, config, Timeouts::default()).await?;
        let name = HeloName::parse(&self.hostname).unwrap_or(HeloName::Other("localhost".into()));
        conn.hello(name).await?;
        let from = if request.message.from.is_empty() {
            ReversePath::Null
        } else {
            ReversePath::parse(&format!("<{}>", request.message.from)).unwrap_or(ReversePath::Null)
        };
        let recipients = addresses
            .iter()
            .map(|a| {
                let to = ForwardPath::parse(&format!("<{a}>")).map_err(ClientError::Protocol)?;
                Ok((to, RcptParameters::default()))
            })
            .collect::<Result<Vec<_>, ClientError>>()?;
        let params = MailParameters {
            smtputf8: request.message.params.smtputf8,
            ..MailParameters::default()
        };
        let result = conn
            .send(
                MailTransaction {
                    from,
                    params,
                    recipients,
                },
                &request.body,
            )
            .await?;
        conn.quit().await;
        Ok(result
            .recipients
            .iter()
            .map(|reply| {
                let text = reply.to_string();
                if reply.is_positive_completion() {
                    Outcome::Delivered(text)
                } else if reply.is_permanent() {
                    Outcome::Failed(text)
                } else {
                    Outcome::Deferred(text)
                }
            })
            .collect())
    }
}
