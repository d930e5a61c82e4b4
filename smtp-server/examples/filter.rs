//! An SMTP server with two filters of its own, written the two ways the chain allows:
//!
//! - a recipient rule as an async function (`from_fn`): no mail to `noreply@` addresses;
//! - a per-IP rate limit as a full tower `Layer`: at most 5 messages a minute from one
//!   address, then `450 4.7.1` (try later).
//!
//! Messages that get through are printed, not stored.
//!
//! ```sh
//! cargo run -p smtp-server --example filter
//! swaks --server 127.0.0.1:2525 --to someone@example.test    # accepted
//! swaks --server 127.0.0.1:2525 --to noreply@example.test    # 550 5.7.1
//! ```

#![allow(clippy::print_stdout)]

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use smtp_proto::EnhancedStatus;
use smtp_server::filters::{DomainSet, RelayPolicyLayer};
use smtp_server::{
    BoxError, DataRequest, Decision, ListenerConfig, ListenerMode, MailRequest, Next, RcptRequest,
    Server, ServerConfig, Stages, from_fn,
};
use tower::{Layer, Service};

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    // The last service of the data stage: where accepted mail goes.
    let print = tower::service_fn(|req: DataRequest| async move {
        println!(
            "--- message from {} to {:?}",
            req.envelope.from,
            req.envelope
                .recipients
                .iter()
                .map(|r| r.to.to_string())
                .collect::<Vec<_>>()
        );
        println!("{}", String::from_utf8_lossy(&req.message()));
        Ok::<_, BoxError>(Decision::accept())
    });

    // 1. The easy path: an async function that sees the request and may call `next`.
    let no_reply = from_fn(|req: RcptRequest, next: Next<RcptRequest>| async move {
        let local = req
            .to
            .mailbox()
            .map(|m| m.local_part().to_ascii_lowercase());
        if local.as_deref() == Some("noreply") {
            return Ok(Decision::reject::<550>(
                EnhancedStatus::NOT_AUTHORIZED,
                "This address does not receive mail",
            ));
        }
        next.run(req).await
    });

    // 2. The full path: a Layer and its Service, with state shared by every connection.
    let rate_limit = RateLimitLayer::new(5, Duration::from_secs(60));

    // Mail for example.test from anyone, elsewhere only from this machine.
    let relay = RelayPolicyLayer::new(
        DomainSet::new(["example.test"]),
        vec!["127.0.0.0/8".parse()?],
    );
    let stages = Stages::new(print)
        .relay_policy(relay)
        .rcpt_layer(no_reply)
        .mail_layer(rate_limit);
    let config = ServerConfig {
        hostname: "filter.example.test".into(),
        listeners: vec![ListenerConfig {
            address: "127.0.0.1:2525".parse()?,
            mode: ListenerMode::Relay,
        }],
        ..ServerConfig::default()
    };
    let server = Server::bind(config, stages).await?;
    println!("listening on {:?}", server.local_addrs());
    server
        .run(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await;
    Ok(())
}

/// At most `max` transactions per `window` from one client address.
#[derive(Clone)]
struct RateLimitLayer {
    seen: Arc<Mutex<HashMap<IpAddr, Vec<Instant>>>>,
    max: usize,
    window: Duration,
}

impl RateLimitLayer {
    fn new(max: usize, window: Duration) -> Self {
        Self {
            seen: Arc::default(),
            max,
            window,
        }
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;
    fn layer(&self, inner: S) -> RateLimit<S> {
        RateLimit {
            limits: self.clone(),
            inner,
        }
    }
}

#[derive(Clone)]
struct RateLimit<S> {
    limits: RateLimitLayer,
    inner: S,
}

impl<S> Service<MailRequest> for RateLimit<S>
where
    S: Service<MailRequest, Response = Decision, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Decision;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Decision, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: MailRequest) -> Self::Future {
        let allowed = {
            let now = Instant::now();
            let mut seen = self.limits.seen.lock().unwrap_or_else(|e| e.into_inner());
            let times = seen.entry(req.session.peer.ip()).or_default();
            times.retain(|t| now.duration_since(*t) < self.limits.window);
            let allowed = times.len() < self.limits.max;
            if allowed {
                times.push(now);
            }
            allowed
        };
        if !allowed {
            return Box::pin(async {
                Ok(Decision::defer::<450>(
                    EnhancedStatus::SECURITY_TEMPORARY,
                    "Too many messages from your address; try again later",
                ))
            });
        }
        // Tower's rule: the service that was made ready handles this call; a clone
        // stays behind for the next one.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move { inner.call(req).await })
    }
}
