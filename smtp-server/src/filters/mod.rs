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
//! | [`SubmittedHeadersLayer`] | data | adds a missing `Date:` and `Message-ID:` to mail from logins (RFC 6409 §8) |

mod auth;
mod hops;
mod local;
mod received;
mod relay;
mod submitted;

pub use auth::{AuthLayer, Authenticator};
pub use hops::{HopLimitLayer, count_received_headers};
pub use local::LocalRecipientsLayer;
pub use received::ReceivedLayer;
pub use relay::{IpNetwork, RelayPolicyLayer};
pub use submitted::SubmittedHeadersLayer;

use std::collections::HashSet;

/// A set of domains compared without regard to ASCII case.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DomainSet(HashSet<String>);

impl DomainSet {
    /// A set from names.
    pub fn new<I: IntoIterator<Item = S>, S: AsRef<str>>(domains: I) -> Self {
        Self(
            domains
                .into_iter()
                .map(|d| d.as_ref().trim_end_matches('.').to_ascii_lowercase())
                .collect(),
        )
    }

    /// Whether `domain` is in the set.
    pub fn contains(&self, domain: &str) -> bool {
        if domain.bytes().any(|b| b.is_ascii_uppercase()) {
            self.0.contains(&domain.to_ascii_lowercase())
        } else {
            self.0.contains(domain)
        }
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
