//! The built-in filters, written on the public path any filter takes (a [`Check`] or an
//! [`AsyncCheck`], made a layer with [`filter`] or [`filter_async`]), so they are also
//! examples of how to write one:
//!
//! | filter | stage | does |
//! | --- | --- | --- |
//! | [`HeloChecks`] | ehlo | HELO names without a dot, bare IPs (`501 5.5.2`), our own name or address (`550 5.7.1`); off, tag or enforce |
//! | [`RelayPolicy`] | rcpt | local domains for anyone; other domains only for authenticated users and trusted networks (`554 5.7.1`) |
//! | [`LocalRecipients`] | rcpt | unknown local users get `550 5.1.1` at RCPT time |
//! | [`PasswordCheck`] | auth | checks credentials with an [`Authenticator`] |
//! | [`HopLimit`] | data | too many `Received:` headers: a mail loop, `554 5.4.6` |
//! | [`Received`] | data | adds the `Received:` header (RFC 5321 §4.4, RFC 3848) |
//! | [`NotifyPolicy`] | data | success and delay notices only for logins and trusted networks (no backscatter) |
//! | [`SubmittedHeaders`] | data | adds a missing `Date:` and `Message-ID:` to mail from logins (RFC 6409 §8) |
//!
//! Against abuse (`docs/anti-abuse.md`):
//!
//! | filter | stages | does |
//! | --- | --- | --- |
//! | [`rate::RateLimits`] | connect, auth, mail, rcpt | connections, messages and recipients per IP, sender domain and login; a dictionary attack tarpitted then cut off; failed logins locking an address out |
//! | [`greylist::Greylist`] | rcpt | the (client network, sender, recipient) triplet deferred once (`451 4.7.1`), its state kept across restarts |
//!
//! And the hooks to programs that are not written in Rust (`docs/filters.md`):
//!
//! | filter | stages | does |
//! | --- | --- | --- |
//! | [`milter::Milter`] | all | a Sendmail/Postfix milter (protocol 6): OpenDKIM, clamav-milter, spamass-milter |
//! | [`policy::PolicyCheck`] | mail, rcpt, data | a Postfix SMTPD access policy service (postgrey, policyd-spf) at RCPT |
//! | `rspamd::Rspamd` (feature `rspamd`) | data | rspamd's verdict over its HTTP protocol (`/checkv2`) |
//!
//! ```
//! use smtp_server::filters::{DomainSet, HopLimit, Received, RelayPolicy};
//! use smtp_server::{Stages, filter};
//! # let sink = tower::service_fn(|_| async { Ok::<_, smtp_server::BoxError>(smtp_server::Decision::accept()) });
//! let stages = Stages::new(sink)
//!     .data_layer(filter(Received::new("mx.example.test")))
//!     .data_layer(filter(HopLimit::default()))
//!     .relay_policy(filter(RelayPolicy::new(DomainSet::new(["example.test"]), vec![])));
//! ```
//!
//! [`Check`]: crate::Check
//! [`AsyncCheck`]: crate::AsyncCheck
//! [`filter`]: crate::filter()
//! [`filter_async`]: crate::filter_async()

mod auth;
pub mod greylist;
mod helo;
mod hops;
mod local;
pub mod milter;
mod notify;
pub mod policy;
pub mod rate;
mod received;
mod relay;
pub mod rspamd;
mod submitted;

pub use auth::{Authenticator, PasswordCheck};
pub use helo::{HeloChecks, HeloFinding, HeloProblem};
pub use hops::{HopLimit, count_received_headers};
pub use local::LocalRecipients;
pub use notify::NotifyPolicy;
pub use received::Received;
pub use relay::{IpNetwork, RelayPolicy};
pub use submitted::SubmittedHeaders;

use std::collections::HashSet;
use std::net::IpAddr;

/// A byte stream to a service a filter asks (a milter, a policy service, rspamd).
pub(crate) trait ServiceStream:
    tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send
{
}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> ServiceStream for T {}

/// Where such a service listens: a TCP host and port, or a Unix-domain socket.
pub(crate) enum Endpoint<'a> {
    Tcp(&'a str, u16),
    Unix(&'a std::path::Path),
}

/// Connects to a service (Nagle off on TCP: its exchanges are small requests).
pub(crate) async fn connect_service(
    endpoint: Endpoint<'_>,
) -> std::io::Result<Box<dyn ServiceStream>> {
    match endpoint {
        Endpoint::Tcp(host, port) => {
            let tcp = tokio::net::TcpStream::connect((host, port)).await?;
            let _ = tcp.set_nodelay(true);
            Ok(Box::new(tcp))
        }
        #[cfg(unix)]
        Endpoint::Unix(path) => Ok(Box::new(tokio::net::UnixStream::connect(path).await?)),
        #[cfg(not(unix))]
        Endpoint::Unix(_) => Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "no Unix-domain sockets here",
        )),
    }
}

/// A set of domains compared without regard to ASCII case, and of address literals
/// (`[192.0.2.1]`, `[IPv6:2001:db8::1]`, RFC 5321 §4.1.3) compared by address. An
/// address literal is in the set only when it was listed: the server's own addresses
/// are not local by themselves.
///
/// ```
/// use smtp_server::filters::DomainSet;
/// let set = DomainSet::new(["Example.TEST.", "[192.0.2.1]", "[IPv6:2001:DB8::1]"]);
/// assert!(set.contains("example.test"));
/// assert!(set.contains("[192.0.2.1]"));
/// assert!(set.contains("[ipv6:2001:db8:0::1]"));
/// assert!(set.contains_address("2001:db8::1".parse().unwrap()));
/// assert!(!set.contains_address("127.0.0.1".parse().unwrap()));
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DomainSet {
    names: HashSet<String>,
    addresses: HashSet<IpAddr>,
}

impl DomainSet {
    /// A set from names and address literals.
    pub fn new<I: IntoIterator<Item = S>, S: AsRef<str>>(domains: I) -> Self {
        let mut set = Self::default();
        for domain in domains {
            let domain = domain.as_ref();
            match literal_address(domain) {
                Some(ip) => set.addresses.insert(ip),
                None => set
                    .names
                    .insert(domain.trim_end_matches('.').to_ascii_lowercase()),
            };
        }
        set
    }

    /// Whether `domain` (a name, or an address literal in brackets) is in the set.
    pub fn contains(&self, domain: &str) -> bool {
        if let Some(ip) = literal_address(domain) {
            return self.contains_address(ip);
        }
        if domain.bytes().any(|b| b.is_ascii_uppercase()) {
            self.names.contains(&domain.to_ascii_lowercase())
        } else {
            self.names.contains(domain)
        }
    }

    /// Whether the address literal of `ip` is in the set.
    pub fn contains_address(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        self.addresses.contains(&ip)
    }
}

/// The address of an address literal (RFC 5321 §4.1.3): `[192.0.2.1]` or
/// `[IPv6:2001:db8::1]`; `None` for anything else.
///
/// ```
/// use smtp_server::filters::literal_address;
/// assert_eq!(literal_address("[192.0.2.1]"), Some("192.0.2.1".parse().unwrap()));
/// assert_eq!(literal_address("[IPv6:::1]"), Some("::1".parse().unwrap()));
/// assert_eq!(literal_address("[999.0.0.1]"), None);
/// assert_eq!(literal_address("example.test"), None);
/// ```
pub fn literal_address(domain: &str) -> Option<IpAddr> {
    let inner = domain.strip_prefix('[')?.strip_suffix(']')?;
    match inner.get(..5) {
        Some(tag) if tag.eq_ignore_ascii_case("IPv6:") => inner[5..]
            .parse::<std::net::Ipv6Addr>()
            .ok()
            .map(IpAddr::V6),
        _ => inner.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4),
    }
}
