//! The short path: one message to one server, by its name and port.

use std::net::IpAddr;
use std::time::Duration;

use rustls_pki_types::CertificateDer;
use smtp_proto::{ForwardPath, MailParameters, RcptParameters, Reply, ReversePath};

use crate::{ClientError, OutboundConfig, OutboundMessage, Session, TlsConfigs, TlsPolicy};

/// Sends messages to one server (a smarthost, a submission service, a test server):
/// its addresses are looked up by the system resolver, TLS is opportunistic unless you
/// ask for more, and a login is only ever sent over TLS to a server whose certificate
/// verifies. For delivery to a domain's MX hosts, look them up first (the `dns-mx`
/// crate) and use [`Session`].
///
/// ```no_run
/// # async fn example() -> Result<(), smtp_client::ClientError> {
/// use smtp_client::Mailer;
/// let message = "From: ann@example.test\r\nTo: bob@example.test\r\nSubject: hi\r\n\r\nHello\r\n";
/// let replies = Mailer::new("mail.example.test:587")
///     .login("ann@example.test", "secret")
///     .send("ann@example.test", &["bob@example.test"], message)
///     .await?;
/// assert!(replies.iter().all(|r| r.is_positive_completion()));
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Mailer {
    server: String,
    helo: String,
    tls: TlsPolicy,
    implicit_tls: bool,
    login: Option<(String, String)>,
    roots: Vec<CertificateDer<'static>>,
    system_roots: bool,
    connect_timeout: Duration,
}

impl Mailer {
    /// A mailer for `server`: `host:port`, `host` (port 25), `[2001:db8::1]:587` or
    /// `192.0.2.1:25`. It says EHLO `localhost` and uses STARTTLS when offered.
    pub fn new(server: &str) -> Self {
        Self {
            server: server.to_owned(),
            helo: "localhost".to_owned(),
            tls: TlsPolicy::Opportunistic,
            implicit_tls: false,
            login: None,
            roots: Vec::new(),
            system_roots: true,
            connect_timeout: Duration::from_secs(30),
        }
    }

    /// The name to say in EHLO (this machine's name, as the server can resolve it).
    pub fn helo(mut self, name: &str) -> Self {
        name.clone_into(&mut self.helo);
        self
    }

    /// When to use STARTTLS ([`TlsPolicy::Required`] checks the certificate and name).
    pub fn tls(mut self, policy: TlsPolicy) -> Self {
        self.tls = policy;
        self
    }

    /// TLS from the first byte (port 465, RFC 8314), with the certificate checked.
    pub fn implicit_tls(mut self) -> Self {
        self.implicit_tls = true;
        self
    }

    /// Logs in with AUTH PLAIN or LOGIN, over TLS only, to a verified server.
    pub fn login(mut self, username: &str, password: &str) -> Self {
        self.login = Some((username.to_owned(), password.to_owned()));
        self
    }

    /// Trusts `certificates` too: a private CA, or the server's own (self-signed)
    /// certificate, which is then accepted as it is.
    pub fn trust(mut self, certificates: Vec<CertificateDer<'static>>) -> Self {
        self.roots.extend(certificates);
        self
    }

    /// Trusts only the certificates given with [`Mailer::trust`], not the system's.
    pub fn without_system_roots(mut self) -> Self {
        self.system_roots = false;
        self
    }

    /// Time to open the TCP connection (default 30 s); each step of the dialogue has
    /// the RFC 5321 timeouts.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sends `message` (header and body, CRLF line ends) from `from` (`""`: the null
    /// sender) to `to`; returns the server's reply for each recipient, in order. An
    /// `Err` means nothing was accepted: the server could not be reached or refused
    /// the session, or an address is not one.
    pub async fn send(
        &self,
        from: &str,
        to: &[&str],
        message: impl Into<bytes::Bytes>,
    ) -> Result<Vec<Reply>, ClientError> {
        let message = OutboundMessage {
            from: match from {
                "" => ReversePath::Null,
                from => ReversePath::parse(&format!("<{from}>")).map_err(ClientError::Protocol)?,
            },
            params: MailParameters::default(),
            recipients: to
                .iter()
                .map(|to| {
                    ForwardPath::parse(&format!("<{to}>"))
                        .map(|path| (path, RcptParameters::default()))
                        .map_err(ClientError::Protocol)
                })
                .collect::<Result<_, _>>()?,
            body: message.into(),
        };
        let (host, port) = split_server(&self.server);
        let addresses: Vec<IpAddr> = tokio::net::lookup_host((host, port))
            .await?
            .map(|a| a.ip())
            .collect();
        let mut config = OutboundConfig::new(&self.helo, self.tls_configs()?);
        config.port = port;
        config.tls = self.tls;
        config.implicit_tls = self.implicit_tls;
        config.auth.clone_from(&self.login);
        config.connect_timeout = self.connect_timeout;
        // The server is named by the caller: greeting with our EHLO name ("localhost"
        // by default) is no loop.
        config.detect_loops = false;
        let mut session = Session::open(host, &addresses, &config).await?;
        let replies = session.deliver(&message).await;
        session.quit().await;
        replies
    }

    /// The TLS configurations; the system's roots are read only when TLS may verify a
    /// certificate with them.
    fn tls_configs(&self) -> Result<TlsConfigs, ClientError> {
        let verifies = self.tls != TlsPolicy::Disabled || self.implicit_tls || self.login.is_some();
        if self.system_roots && verifies {
            TlsConfigs::new(self.roots.clone())
        } else {
            TlsConfigs::with_roots(self.roots.clone())
        }
    }
}

/// `host:port`, `host` (port 25), `[v6]:port`, `[v6]`.
fn split_server(server: &str) -> (&str, u16) {
    let port_of = |p: &str| p.parse().ok();
    if let Some(rest) = server.strip_prefix('[') {
        return match rest.split_once(']') {
            Some((ip, tail)) => (ip, tail.strip_prefix(':').and_then(port_of).unwrap_or(25)),
            None => (server, 25),
        };
    }
    match server.rsplit_once(':') {
        // One colon: host and port. More: a bare IPv6 address.
        Some((host, port)) if !host.contains(':') => (host, port_of(port).unwrap_or(25)),
        _ => (server, 25),
    }
}

#[cfg(test)]
mod tests {
    use super::split_server;

    #[test]
    fn servers_are_split_into_host_and_port() {
        assert_eq!(
            split_server("mail.example.test:587"),
            ("mail.example.test", 587)
        );
        assert_eq!(split_server("mail.example.test"), ("mail.example.test", 25));
        assert_eq!(split_server("192.0.2.1:2525"), ("192.0.2.1", 2525));
        assert_eq!(split_server("[2001:db8::1]:465"), ("2001:db8::1", 465));
        assert_eq!(split_server("[2001:db8::1]"), ("2001:db8::1", 25));
        assert_eq!(split_server("2001:db8::1"), ("2001:db8::1", 25));
    }
}
