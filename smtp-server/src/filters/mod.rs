//! The built-in filters, written as ordinary layers of the stage chain (so they are
//! also examples of how to write one):
//!
//! | layer | stage | does |
//! | --- | --- | --- |
//! | [`RelayPolicyLayer`] | rcpt | local domains for anyone; other domains only for authenticated users and trusted networks (`554 5.7.1`) |
//! | [`LocalRecipientsLayer`] | rcpt | unknown local users get `550 5.1.1` at RCPT time |
//! | [`AuthLayer`] | auth | checks credentials with an [`Authenticator`] |
//! | [`HopLimitLayer`] | data | too many `Received:` headers: a mail loop, `554 5.4.6` |
//! | [`ReceivedLayer`] | data | adds the `Received:` header (RFC 5321 §4.4, RFC 3848) |
//! | [`NotifyPolicyLayer`] | data | success and delay notices only for logins and trusted networks (no backscatter) |
//! | [`SubmittedHeadersLayer`] | data | adds a missing `Date:` and `Message-ID:` to mail from logins (RFC 6409 §8) |

mod auth;
mod hops;
mod local;
pub mod milter;
mod notify;
pub mod policy;
mod received;
mod relay;
pub mod rspamd;
mod submitted;

pub use auth::{AuthLayer, Authenticator};
pub use hops::{HopLimitLayer, count_received_headers};
pub use local::LocalRecipientsLayer;
pub use notify::NotifyPolicyLayer;
pub use received::ReceivedLayer;
pub use relay::{IpNetwork, RelayPolicyLayer};
pub use submitted::SubmittedHeadersLayer;

use std::collections::HashSet;
use std::net::IpAddr;

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

/// Implements `Service` for a filter whose check is a synchronous function of the
/// request: on `Some(decision)` it answers, on `None` it passes the request on.
macro_rules! sync_filter_service {
    ($service:ident, $req:ty, |$this:ident, $request:ident| $check:expr) => {
        impl<S> tower::Service<$req> for $service<S>
        where
            S: tower::Service<$req, Response = $crate::Decision, Error = $crate::BoxError>
                + Clone
                + Send
                + 'static,
            S::Future: Send + 'static,
        {
            type Response = $crate::Decision;
            type Error = $crate::BoxError;
            type Future = std::pin::Pin<
                Box<
                    dyn std::future::Future<Output = Result<$crate::Decision, $crate::BoxError>>
                        + Send,
                >,
            >;

            fn poll_ready(
                &mut self,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<Result<(), $crate::BoxError>> {
                self.inner.poll_ready(cx)
            }

            fn call(&mut self, mut request: $req) -> Self::Future {
                let decided: Option<$crate::Decision> = {
                    let $this = &*self;
                    let $request = &mut request;
                    $check
                };
                if let Some(decision) = decided {
                    return Box::pin(async move { Ok(decision) });
                }
                // The readied inner service handles this request; a clone stays for
                // the next one (tower's "clone, then swap" rule).
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                Box::pin(async move { inner.call(request).await })
            }
        }
    };
}
pub(crate) use sync_filter_service;
