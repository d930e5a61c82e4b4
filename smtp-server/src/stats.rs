//! Counters of a running server, for metrics: connections and messages per listener mode.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::config::ListenerMode;

/// What happened on one kind of listener so far. Every field only grows.
#[derive(Debug, Default)]
pub struct ModeStats {
    /// Connections accepted.
    pub connections: AtomicU64,
    /// Connections refused at the connection limits (`421 4.7.0`).
    pub connections_refused: AtomicU64,
    /// Messages accepted (the `250` after DATA or the last BDAT).
    pub messages_accepted: AtomicU64,
    /// Messages refused with a `5yz` at end of data.
    pub messages_rejected: AtomicU64,
    /// Messages refused with a `4yz` at end of data (try again later).
    pub messages_deferred: AtomicU64,
    /// Octets of the accepted messages, as received.
    pub bytes_accepted: AtomicU64,
    /// Successful logins (AUTH).
    pub logins: AtomicU64,
    /// Refused logins (AUTH: wrong credentials, or refused by the auth stage).
    pub login_failures: AtomicU64,
}

/// Counters of a [`Server`](crate::Server), shared with its connections.
///
/// ```
/// use smtp_server::{ListenerMode, ServerStats};
/// let stats = ServerStats::default();
/// let relay = stats.mode(ListenerMode::Relay);
/// assert_eq!(relay.connections.load(std::sync::atomic::Ordering::Relaxed), 0);
/// ```
#[derive(Debug, Default)]
pub struct ServerStats {
    relay: ModeStats,
    submission: ModeStats,
    smtps: ModeStats,
    /// Connections open now.
    pub connections_open: AtomicU64,
    /// TLS sessions established with TLS 1.2 (STARTTLS or implicit).
    pub tls12: AtomicU64,
    /// TLS sessions established with TLS 1.3.
    pub tls13: AtomicU64,
    /// TLS handshakes that failed or timed out.
    pub tls_failed: AtomicU64,
    /// Bytes of message content held in memory now, over all sessions (what
    /// `max_total_message_memory` bounds).
    pub content_in_memory: AtomicU64,
    /// Messages whose content went to a spill file as it arrived.
    pub messages_spilled: AtomicU64,
    /// Refusals by the stage that refused and the reply code (bounded: our own replies).
    refusals: std::sync::Mutex<std::collections::BTreeMap<(&'static str, u16), u64>>,
    /// Refusals by the protocol layer, by reply code and enhanced status (bounded:
    /// smtp-proto's own replies).
    protocol_errors: std::sync::Mutex<std::collections::BTreeMap<(u16, String), u64>>,
}

impl ServerStats {
    /// The counters of one listener mode.
    pub fn mode(&self, mode: ListenerMode) -> &ModeStats {
        match mode {
            ListenerMode::Relay => &self.relay,
            ListenerMode::Submission => &self.submission,
            ListenerMode::Smtps => &self.smtps,
        }
    }

    /// Takes `n` bytes of the memory budget `max`; false when they do not fit.
    pub(crate) fn reserve_memory(&self, n: u64, max: u64) -> bool {
        self.content_in_memory
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |held| {
                held.checked_add(n).filter(|total| *total <= max)
            })
            .is_ok()
    }

    /// Gives back `n` bytes of the memory budget.
    pub(crate) fn release_memory(&self, n: u64) {
        let _ = self
            .content_in_memory
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |held| {
                Some(held.saturating_sub(n))
            });
    }

    /// Counts a refusal (a 4yz or 5yz from a stage) at `stage` with `code`.
    pub(crate) fn refused(&self, stage: &'static str, code: u16) {
        if let Ok(mut r) = self.refusals.lock() {
            *r.entry((stage, code)).or_insert(0) += 1;
        }
    }

    /// `((stage, reply code), count)` of every refusal so far: the stage is `connect`,
    /// `helo`, `auth`, `mail`, `rcpt` or `data`.
    pub fn refusals(&self) -> Vec<((&'static str, u16), u64)> {
        self.refusals
            .lock()
            .map(|r| r.iter().map(|(k, v)| (*k, *v)).collect())
            .unwrap_or_default()
    }

    /// Counts what the protocol layer refused (see
    /// [`ServerSession::take_refusals`](smtp_proto::ServerSession::take_refusals)).
    pub(crate) fn protocol_error(&self, error: &smtp_proto::Error) {
        let reply = error.reply();
        let status = reply.status().map(|s| s.to_string()).unwrap_or_default();
        if let Ok(mut p) = self.protocol_errors.lock() {
            *p.entry((reply.code().as_u16(), status)).or_insert(0) += 1;
        }
    }

    /// `((reply code, enhanced status), count)` of every refusal by the protocol layer
    /// so far: syntax errors, commands out of sequence, lines too long, messages too
    /// big, too many recipients, too many errors.
    pub fn protocol_errors(&self) -> Vec<((u16, String), u64)> {
        self.protocol_errors
            .lock()
            .map(|p| p.iter().map(|(k, v)| (k.clone(), *v)).collect())
            .unwrap_or_default()
    }

    pub(crate) fn count(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}
