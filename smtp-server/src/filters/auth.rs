//! Checking AUTH credentials.

use std::sync::Arc;

use smtp_proto::EnhancedStatus;
use tower::Layer;

use crate::{AuthRequest, BoxError, Decision};

/// Something that can check a username and password: a table of accounts, a
/// directory, a database.
pub trait Authenticator: Send + Sync + 'static {
    /// Whether the password is right. It may be slow (password hashing is meant to
    /// be): it runs on a blocking thread.
    fn verify(&self, username: &str, password: &str) -> bool;
}

/// The auth-stage check: credentials an [`Authenticator`] accepts are accepted; others
/// go on to the inner service (another backend, or the default `535 5.7.8`). A login
/// asking to act for another identity (a PLAIN authzid) is refused.
#[derive(Clone)]
pub struct AuthLayer {
    authenticator: Arc<dyn Authenticator>,
}

impl std::fmt::Debug for AuthLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuthLayer")
    }
}

impl AuthLayer {
    /// A layer checking with `authenticator`.
    pub fn new(authenticator: impl Authenticator) -> Self {
        Self {
            authenticator: Arc::new(authenticator),
        }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Auth {
            authenticator: Arc::clone(&self.authenticator),
            inner,
        }
    }
}

/// The service of [`AuthLayer`].
#[derive(Clone)]
pub struct Auth<S> {
    authenticator: Arc<dyn Authenticator>,
    inner: S,
}

impl<S> tower::Service<AuthRequest> for Auth<S>
where
    S: tower::Service<AuthRequest, Response = Decision, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Decision;
    type Error = BoxError;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<Decision, BoxError>> + Send>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: AuthRequest) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let authenticator = Arc::clone(&self.authenticator);
        Box::pin(async move {
            let c = &request.credentials;
            if c.authzid.is_some() {
                return Ok(Decision::reject::<535>(
                    EnhancedStatus::AUTH_INVALID,
                    "Proxy authorization not supported",
                ));
            }
            let (user, pass) = (c.username.clone(), c.password.expose().to_owned());
            let valid =
                tokio::task::spawn_blocking(move || authenticator.verify(&user, &pass)).await?;
            if valid {
                Ok(Decision::accept())
            } else {
                inner.call(request).await
            }
        })
    }
}
