//! An SMTP server with two filters of its own, written the two short ways:
//!
//! - a recipient rule as a closure: no mail to `noreply@` addresses;
//! - a per-IP rate limit as a type with state ([`Check`]): at most 5 messages a minute
//!   from one address, then `450 4.7.0` (try later).
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
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use smtp_server::filters::{DomainSet, RelayPolicy};
use smtp_server::{
    BoxError, Check, DataRequest, Decision, EnhancedStatus, ListenerConfig, ListenerMode,
    MailRequest, Server, ServerConfig, Stages, filter,
};

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    // The last service of the data stage: where accepted mail goes.
    let print = tower::service_fn(|req: DataRequest| async move {
        println!("--- message from {}", req.envelope.from);
        println!("{}", String::from_utf8_lossy(&req.message()));
        Ok::<_, BoxError>(Decision::accept())
    });

    // Mail for example.test from anyone, elsewhere only from this machine.
    let relay = RelayPolicy::new(
        DomainSet::new(["example.test"]),
        vec!["127.0.0.0/8".parse()?],
    );
    let stages = Stages::new(print)
        .relay_policy(filter(relay))
        // 1. A closure: `None` passes the recipient on, `Some` answers.
        .rcpt_filter(|req| {
            let local = req.to.mailbox().map(|m| m.local_part().to_ascii_lowercase());
            (local.as_deref() == Some("noreply")).then(|| {
                Decision::reject::<550>(
                    EnhancedStatus::NOT_AUTHORIZED,
                    "This address does not receive mail",
                )
            })
        })
        // 2. A type with state, shared by every connection.
        .mail_layer(filter(RateLimit::new(5, Duration::from_secs(60))));
    let config = ServerConfig {
        hostname: "filter.example.test".into(),
        listeners: vec![ListenerConfig {
            address: "127.0.0.1:2525".parse()?,
            mode: ListenerMode::Relay,
            proxy: None,
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
struct RateLimit {
    seen: Mutex<HashMap<IpAddr, Vec<Instant>>>,
    max: usize,
    window: Duration,
}

impl RateLimit {
    fn new(max: usize, window: Duration) -> Self {
        Self {
            seen: Mutex::default(),
            max,
            window,
        }
    }
}

impl Check<MailRequest> for RateLimit {
    fn check(&self, req: &mut MailRequest) -> Option<Decision> {
        let now = Instant::now();
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let times = seen.entry(req.session.peer.ip()).or_default();
        times.retain(|t| now.duration_since(*t) < self.window);
        if times.len() >= self.max {
            return Some(Decision::defer::<450>(
                EnhancedStatus::SECURITY_TEMPORARY,
                "Too many messages from your address; try again later",
            ));
        }
        times.push(now);
        None
    }
}
