//! The easy path: a filter written as an async function.
//!
//! ```
//! use smtp_server::{from_fn, Decision, Next, RcptRequest, Stages};
//! use smtp_proto::EnhancedStatus;
//!
//! let no_spam_traps = from_fn(|req: RcptRequest, next: Next<RcptRequest>| async move {
//!     if req.to.to_string().starts_with("<trap@") {
//!         return Ok(Decision::reject::<550>(EnhancedStatus::BAD_DESTINATION_MAILBOX, "No such user"));
//!     }
//!     next.run(req).await
//! });
//! # let sink = tower::service_fn(|_| async { Ok::<_, smtp_server::BoxError>(Decision::accept()) });
//! let stages = Stages::new(sink).rcpt_layer(no_spam_traps);
//! ```

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tower::util::BoxCloneSyncService;
use tower::{Layer, Service, ServiceExt};

use crate::stage::{BoxError, Decision, StageService};

/// The rest of the chain, for a [`from_fn`] filter to call (or not).
pub struct Next<R> {
    inner: StageService<R>,
}

impl<R: Send + 'static> Next<R> {
    /// Passes the request on and returns the decision of the rest of the chain.
    pub async fn run(self, request: R) -> Result<Decision, BoxError> {
        self.inner.oneshot(request).await
    }
}

impl<R> std::fmt::Debug for Next<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Next")
    }
}

/// Makes a layer from an async function `(request, next) -> Result<Decision, BoxError>`.
pub fn from_fn<F>(f: F) -> FromFnLayer<F> {
    FromFnLayer { f }
}

/// The layer made by [`from_fn`].
#[derive(Clone, Debug)]
pub struct FromFnLayer<F> {
    f: F,
}

impl<F: Clone, S> Layer<S> for FromFnLayer<F> {
    type Service = FromFn<F, S>;

    fn layer(&self, inner: S) -> Self::Service {
        FromFn {
            f: self.f.clone(),
            inner,
        }
    }
}

/// The service made by [`FromFnLayer`].
#[derive(Clone, Debug)]
pub struct FromFn<F, S> {
    f: F,
    inner: S,
}

impl<F, S, R, Fut> Service<R> for FromFn<F, S>
where
    F: Fn(R, Next<R>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Decision, BoxError>> + Send + 'static,
    S: Service<R, Response = Decision, Error = BoxError> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
    R: Send + 'static,
{
    type Response = Decision;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Decision, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        // The readied service goes to `next`; a fresh clone stays for the next call.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let next = Next {
            inner: BoxCloneSyncService::new(inner),
        };
        Box::pin((self.f)(request, next))
    }
}
