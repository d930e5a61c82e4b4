//! The crate's error type.

/// Errors starting or running a server. Protocol errors never show up here: they
/// become replies inside the session.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// A listener could not be bound (the address is in use, the port is privileged...).
    #[error("cannot listen on {address}: {source}")]
    Bind {
        /// The address.
        address: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The TLS certificate or key is unusable.
    #[error("TLS: {message}")]
    Tls {
        /// What was being done, and with which file.
        message: String,
        /// The error that caused it (reading the file, or rustls refusing the key).
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// A listener needs TLS but no certificate is configured.
    #[error("listener {0} is smtps but no TLS certificate is configured")]
    TlsRequired(std::net::SocketAddr),
    /// A relay listener (port 25 rules) has no relay policy: it would be an open relay.
    #[error(
        "listener {0} is a relay listener but no relay policy is set: add one with \
         Stages::relay_policy (filters::RelayPolicy is the standard one)"
    )]
    NoRelayPolicy(std::net::SocketAddr),
    /// A reload changes the listeners, which only a restart can do (or
    /// [`Server::with_listeners`](crate::Server::with_listeners) got sockets bound for others).
    #[error("the listeners changed (addresses or modes): restart to apply that")]
    ListenersChanged,
}

impl ServerError {
    /// A TLS problem with the error that caused it (`None`: the message says it all).
    pub(crate) fn tls(
        message: impl Into<String>,
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self::Tls {
            message: message.into(),
            source,
        }
    }
}
