//! Checking AUTH credentials.

use std::sync::Arc;

use crate::{AsyncCheck, AuthRequest, CheckFuture, Decision, Flow};
use smtp_proto::EnhancedStatus;

/// Something that can check a username and password: a table of accounts, a
/// directory, a database.
pub trait Authenticator: Send + Sync + 'static {
    /// Whether the password is right. It may be slow (password hashing is meant to
    /// be): it runs on a blocking thread.
    fn verify(&self, username: &str, password: &str) -> bool;
}

/// The auth-stage check: credentials an [`Authenticator`] accepts are accepted; others
/// go on to the rest of the chain (another backend, or the default `535 5.7.8`). A
/// login asking to act for another identity (a PLAIN authzid) is refused.
///
/// ```
/// use smtp_server::filters::{Authenticator, PasswordCheck};
/// struct OneUser;
/// impl Authenticator for OneUser {
///     fn verify(&self, username: &str, password: &str) -> bool {
///         username == "alice" && password == "correct horse"
///     }
/// }
/// let layer = smtp_server::filter_async(PasswordCheck::new(OneUser));
/// # let _ = layer;
/// ```
#[derive(Clone)]
pub struct PasswordCheck {
    authenticator: Arc<dyn Authenticator>,
}

impl std::fmt::Debug for PasswordCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PasswordCheck")
    }
}

impl PasswordCheck {
    /// A check with `authenticator`.
    pub fn new(authenticator: impl Authenticator) -> Self {
        Self {
            authenticator: Arc::new(authenticator),
        }
    }
}

impl AsyncCheck<AuthRequest> for PasswordCheck {
    fn check(&self, request: AuthRequest) -> CheckFuture<AuthRequest> {
        let authenticator = Arc::clone(&self.authenticator);
        Box::pin(async move {
            let c = &request.credentials;
            if c.authzid.is_some() {
                return Ok(Flow::Decide(Decision::reject::<535>(
                    EnhancedStatus::AUTH_INVALID,
                    "Proxy authorization not supported",
                )));
            }
            let (user, pass) = (c.username.clone(), c.password.expose().to_owned());
            let valid =
                tokio::task::spawn_blocking(move || authenticator.verify(&user, &pass)).await?;
            Ok(if valid {
                Flow::Decide(Decision::accept())
            } else {
                Flow::Continue(request)
            })
        })
    }
}
