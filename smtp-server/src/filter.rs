//! The short path: a filter as a closure that passes the request on or decides.
//!
//! Most filters look at a request and either let it through or answer for the whole
//! chain. Write that as a closure over the request and plug it in with the stage's
//! `*_filter` method; nothing else to import:
//!
//! ```
//! use smtp_server::{Decision, EnhancedStatus, Stages};
//!
//! # let sink = tower::service_fn(|_| async { Ok::<_, smtp_server::BoxError>(Decision::accept()) });
//! let stages = Stages::new(sink).rcpt_filter(|req| {
//!     let trap = req.to.mailbox().is_some_and(|m| m.local_part() == "trap");
//!     trap.then(|| Decision::reject::<550>(EnhancedStatus::BAD_DESTINATION_MAILBOX, "No such user"))
//! });
//! ```
//!
//! A closure that waits for something (a database, a network service) is async: it
//! takes the request and gives it back to pass it on, [`Flow::Continue`], or answers,
//! [`Flow::Decide`]; an `Err` is our own failure (`451 4.3.0`, the client retries):
//!
//! ```
//! use smtp_server::{Decision, EnhancedStatus, Flow, Stages};
//!
//! # async fn blocked(_: std::net::IpAddr) -> Result<bool, smtp_server::BoxError> { Ok(false) }
//! # let sink = tower::service_fn(|_| async { Ok::<_, smtp_server::BoxError>(Decision::accept()) });
//! let stages = Stages::new(sink).mail_filter_async(|req| async move {
//!     if blocked(req.session.peer.ip()).await? {
//!         return Ok(Flow::Decide(Decision::reject::<550>(EnhancedStatus::NOT_AUTHORIZED, "Blocked")));
//!     }
//!     Ok(Flow::Continue(req))
//! });
//! ```
//!
//! A filter that keeps state, or that others reuse, is a type implementing [`Check`]
//! (synchronous) or [`AsyncCheck`], made a layer by [`filter`] or [`filter_async`]: the
//! built-in filters are written so. For what a closure cannot do (change the rest of the
//! chain's answer, hold the request while the rest runs), write a tower `Layer`, or an
//! async function with [`from_fn`](crate::from_fn).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower::{Layer, Service};

use crate::stage::{BoxError, Decision};

/// What an asynchronous filter answers: pass the request on (changed or not), or
/// answer for the whole chain.
#[derive(Debug)]
pub enum Flow<R> {
    /// Pass the request to the rest of the chain.
    Continue(R),
    /// Answer with this decision; the rest of the chain does not see the request.
    Decide(Decision),
}

/// The future of an [`AsyncCheck`].
pub type CheckFuture<R> = Pin<Box<dyn Future<Output = Result<Flow<R>, BoxError>> + Send>>;

/// A synchronous filter: `None` passes the request on, `Some` decides. A closure
/// `Fn(&mut R) -> Option<Decision>` is one; so is each built-in filter's type.
///
/// ```
/// use smtp_server::{Check, Decision, EnhancedStatus, MailRequest};
///
/// struct NoNullSender;
/// impl Check<MailRequest> for NoNullSender {
///     fn check(&self, req: &mut MailRequest) -> Option<Decision> {
///         req.from.mailbox().is_none().then(|| {
///             Decision::reject::<550>(EnhancedStatus::NOT_AUTHORIZED, "No bounces here")
///         })
///     }
/// }
/// let layer = smtp_server::filter(NoNullSender);
/// # let _ = layer;
/// ```
pub trait Check<R>: Send + Sync + 'static {
    /// Looks at (and may change) the request: `None` to pass it on, `Some` to answer.
    fn check(&self, request: &mut R) -> Option<Decision>;
}

impl<R, F> Check<R> for F
where
    F: Fn(&mut R) -> Option<Decision> + Send + Sync + 'static,
{
    fn check(&self, request: &mut R) -> Option<Decision> {
        self(request)
    }
}

/// An asynchronous filter. A closure `Fn(R) -> impl Future<Output = Result<Flow<R>,
/// BoxError>>` is one; a type implements it by returning its work boxed.
///
/// ```
/// use smtp_server::{AsyncCheck, CheckFuture, Flow, RcptRequest};
///
/// struct Slow(std::time::Duration);
/// impl AsyncCheck<RcptRequest> for Slow {
///     fn check(&self, req: RcptRequest) -> CheckFuture<RcptRequest> {
///         let delay = self.0;
///         Box::pin(async move {
///             tokio::time::sleep(delay).await;
///             Ok(Flow::Continue(req))
///         })
///     }
/// }
/// let layer = smtp_server::filter_async(Slow(std::time::Duration::from_millis(10)));
/// # let _ = layer;
/// ```
pub trait AsyncCheck<R>: Send + Sync + 'static {
    /// Works on the request: gives it back to pass it on, or decides.
    fn check(&self, request: R) -> CheckFuture<R>;
}

impl<R, F, Fut> AsyncCheck<R> for F
where
    F: Fn(R) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Flow<R>, BoxError>> + Send + 'static,
{
    fn check(&self, request: R) -> CheckFuture<R> {
        Box::pin(self(request))
    }
}

/// A layer from a synchronous check ([`Check`]).
pub fn filter<C>(check: C) -> Filter<C> {
    Filter {
        check: Arc::new(check),
    }
}

/// A layer from an asynchronous check ([`AsyncCheck`]).
pub fn filter_async<C>(check: C) -> FilterAsync<C> {
    FilterAsync {
        check: Arc::new(check),
    }
}

/// The layer of a synchronous check, made by [`filter`].
#[derive(Debug)]
pub struct Filter<C> {
    check: Arc<C>,
}

/// The layer of an asynchronous check, made by [`filter_async`].
#[derive(Debug)]
pub struct FilterAsync<C> {
    check: Arc<C>,
}

impl<C> Clone for Filter<C> {
    fn clone(&self) -> Self {
        Self {
            check: Arc::clone(&self.check),
        }
    }
}

impl<C> Clone for FilterAsync<C> {
    fn clone(&self) -> Self {
        Self {
            check: Arc::clone(&self.check),
        }
    }
}

impl<C, S> Layer<S> for Filter<C> {
    type Service = FilterService<C, S>;
    fn layer(&self, inner: S) -> Self::Service {
        FilterService {
            check: Arc::clone(&self.check),
            inner,
        }
    }
}

impl<C, S> Layer<S> for FilterAsync<C> {
    type Service = FilterAsyncService<C, S>;
    fn layer(&self, inner: S) -> Self::Service {
        FilterAsyncService {
            check: Arc::clone(&self.check),
            inner,
        }
    }
}

/// The service of a [`Filter`].
#[derive(Debug)]
pub struct FilterService<C, S> {
    check: Arc<C>,
    inner: S,
}

/// The service of a [`FilterAsync`].
#[derive(Debug)]
pub struct FilterAsyncService<C, S> {
    check: Arc<C>,
    inner: S,
}

impl<C, S: Clone> Clone for FilterService<C, S> {
    fn clone(&self) -> Self {
        Self {
            check: Arc::clone(&self.check),
            inner: self.inner.clone(),
        }
    }
}

impl<C, S: Clone> Clone for FilterAsyncService<C, S> {
    fn clone(&self) -> Self {
        Self {
            check: Arc::clone(&self.check),
            inner: self.inner.clone(),
        }
    }
}

/// The future of a [`FilterService`]: the check's answer, or the rest of the chain's.
#[derive(Debug)]
pub struct FilterFuture<F>(State<F>);

#[derive(Debug)]
enum State<F> {
    Decided(Option<Decision>),
    Passed(F),
}

impl<F: Future<Output = Result<Decision, BoxError>> + Unpin> Future for FilterFuture<F> {
    type Output = Result<Decision, BoxError>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.get_mut().0 {
            State::Decided(decision) => Poll::Ready(
                decision
                    .take()
                    .ok_or_else(|| "filter future polled again".into()),
            ),
            State::Passed(future) => Pin::new(future).poll(cx),
        }
    }
}

impl<R, C, S> Service<R> for FilterService<C, S>
where
    C: Check<R>,
    S: Service<R, Response = Decision, Error = BoxError>,
    S::Future: Unpin,
{
    type Response = Decision;
    type Error = BoxError;
    type Future = FilterFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: R) -> Self::Future {
        match self.check.check(&mut request) {
            Some(decision) => FilterFuture(State::Decided(Some(decision))),
            None => FilterFuture(State::Passed(self.inner.call(request))),
        }
    }
}

impl<R, C, S> Service<R> for FilterAsyncService<C, S>
where
    R: Send + 'static,
    C: AsyncCheck<R>,
    S: Service<R, Response = Decision, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Decision;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Decision, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        // The readied service handles this request; a clone stays for the next one
        // (tower's "clone, then swap" rule).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let checked = self.check.check(request);
        Box::pin(async move {
            match checked.await? {
                Flow::Continue(request) => inner.call(request).await,
                Flow::Decide(decision) => Ok(decision),
            }
        })
    }
}
