//! The crate's error type: every failure says whether it is worth retrying.

use smtp_proto::{EnhancedStatus, Reply, ReplyCode};

/// Why a delivery attempt failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// Connecting or talking to the server failed (refused, reset, closed early).
    #[error("connection failed: {0}")]
    Io(#[from] std::io::Error),
    /// The server did not answer in time.
    #[error("timeout waiting for the server ({0})")]
    Timeout(&'static str),
    /// The server broke the protocol (a malformed reply, TLS injection, ...).
    #[error("protocol error: {0}")]
    Protocol(#[from] smtp_proto::Error),
    /// The server refused the session (greeting, EHLO/LHLO or STARTTLS).
    #[error("server replied {0}")]
    Rejected(Reply),
    /// Our login was refused. Treated as temporary: it is a configuration problem on
    /// our side, and bouncing every message because of it would be wrong.
    #[error("authentication failed: {0}")]
    Auth(Reply),
    /// TLS could not be set up (handshake failure, certificate not trusted, STARTTLS
    /// missing where the policy requires it).
    #[error("TLS: {message}")]
    Tls {
        /// What went wrong, for people.
        message: String,
        /// The TLS library's or the system's error, when there is one.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// The server greeted with our own name: the mail would come back to us (an MX or
    /// an address literal that points here). Permanent, `554 5.4.6`.
    #[error("mail for {0} loops back to myself")]
    Loop(String),
}

impl ClientError {
    /// The reply that explains the failure: the server's own, or a local one with the
    /// right class (`4yz` for anything that may work later).
    pub fn reply(&self) -> Reply {
        match self {
            Self::Rejected(reply) => reply.clone(),
            Self::Auth(reply) => Reply::new(
                ReplyCode::LOCAL_ERROR,
                EnhancedStatus::new(4, 7, 0).unwrap_or(EnhancedStatus::PROTOCOL_TEMPORARY),
                format!("authentication to the relay failed: {}", reply),
            ),
            Self::Tls { message, source } => Reply::new(
                ReplyCode::LOCAL_ERROR,
                EnhancedStatus::new(4, 7, 5).unwrap_or(EnhancedStatus::PROTOCOL_TEMPORARY),
                match source {
                    Some(source) => format!("TLS: {message}: {source}"),
                    None => format!("TLS: {message}"),
                },
            ),
            Self::Protocol(e) => e.reply(),
            Self::Loop(host) => Reply::new(
                ReplyCode::TRANSACTION_FAILED,
                EnhancedStatus::ROUTING_LOOP,
                format!("mail for {host} loops back to myself"),
            ),
            Self::Io(e) => Reply::new(
                ReplyCode::LOCAL_ERROR,
                EnhancedStatus::new(4, 4, 1).unwrap_or(EnhancedStatus::PROTOCOL_TEMPORARY),
                format!("connection failed: {e}"),
            ),
            Self::Timeout(what) => Reply::new(
                ReplyCode::LOCAL_ERROR,
                EnhancedStatus::new(4, 4, 2).unwrap_or(EnhancedStatus::PROTOCOL_TEMPORARY),
                format!("timeout waiting for {what}"),
            ),
        }
    }

    /// A TLS problem of ours (no error underneath).
    pub(crate) fn tls(message: impl Into<String>) -> Self {
        Self::Tls {
            message: message.into(),
            source: None,
        }
    }

    /// A TLS problem with the error that caused it.
    pub(crate) fn tls_from(
        message: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self::Tls {
            message: message.into(),
            source: Some(source.into()),
        }
    }

    /// Whether trying again later may succeed (everything but a `5yz` reply).
    pub fn is_transient(&self) -> bool {
        !self.is_permanent()
    }

    /// Whether the failure is final: the server said `5yz`, or it is us.
    pub fn is_permanent(&self) -> bool {
        matches!(self, Self::Rejected(r) if r.is_permanent()) || matches!(self, Self::Loop(_))
    }
}
