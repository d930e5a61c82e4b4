//! Counters of a running server, for metrics: connections and messages per listener mode.
//! With the `prometheus` feature, [`ServerStats`] is a prometheus-client `Collector`.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::config::ListenerMode;
use crate::connection::VerdictCache;
use crate::filters::HeloProblem;

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
    /// PROXY protocol connections closed because they came from outside the load
    /// balancers' networks.
    pub proxy_untrusted: AtomicU64,
    /// PROXY protocol connections closed for a malformed, oversized or missing header
    /// (the connection closed before it was complete).
    pub proxy_malformed: AtomicU64,
    /// PROXY protocol connections closed for no complete header in time.
    pub proxy_timeout: AtomicU64,
    /// Clients that talked before the greeting, let go on (tag mode).
    pub pregreet_tagged: AtomicU64,
    /// Clients that talked before the greeting (or failed lately), refused with
    /// `554 5.5.0` (enforce mode).
    pub pregreet_rejected: AtomicU64,
    /// Clients that sent commands before a reply where RFC 2920 forbids it, let go on
    /// (tag mode).
    pub pipelining_tagged: AtomicU64,
    /// Clients that sent commands before a reply where RFC 2920 forbids it, refused
    /// with `554 5.5.0` (enforce mode).
    pub pipelining_rejected: AtomicU64,
    /// Sessions closed (`421 4.4.2`) because a command or message content did not
    /// come in time (`command_timeout`, `data_timeout`, `min_data_rate`).
    pub timed_out: AtomicU64,
    /// Sessions closed (`421 4.4.2`) at `max_session_duration`.
    pub session_time_limit: AtomicU64,
    /// Clients that waited quietly for the delayed greeting.
    pub greeting_waited: AtomicU64,
    /// Clients that skipped the greeting delay, having passed before.
    pub greeting_cached: AtomicU64,
}

/// Counters of a [`Server`](crate::Server), shared with its connections.
///
/// With the `prometheus` feature it is a `prometheus_client::collector::Collector`
/// (register it in a `Registry`, prefix of your choice): `smtp_connections_total`,
/// `smtp_messages_total` and the rest, each listener labelled by its mode.
///
/// ```
/// use smtp_server::{ListenerMode, ServerStats};
/// let stats = ServerStats::default();
/// let relay = stats.mode(ListenerMode::Relay);
/// assert_eq!(relay.connections.load(std::sync::atomic::Ordering::Relaxed), 0);
/// ```
#[derive(Debug, Default)]
pub struct ServerStats {
    /// The modes that have a listener (those the metrics show).
    modes: Vec<ListenerMode>,
    relay: ModeStats,
    submission: ModeStats,
    smtps: ModeStats,
    lmtp: ModeStats,
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
    /// What the HELO checks found, by problem, tagged `[0]` or refused `[1]`.
    helo_checks: [[AtomicU64; 2]; HeloProblem::ALL.len()],
    /// The early-talker verdicts per client address (kept with the counters, so across
    /// reloads).
    pub(crate) verdicts: VerdictCache,
}

impl ServerStats {
    /// Counters for a server with listeners of `modes`.
    pub(crate) fn listening(modes: impl IntoIterator<Item = ListenerMode>) -> Self {
        let mut stats = Self::default();
        for mode in modes {
            if !stats.modes.contains(&mode) {
                stats.modes.push(mode);
            }
        }
        stats
    }

    /// The counters of one listener mode.
    pub fn mode(&self, mode: ListenerMode) -> &ModeStats {
        match mode {
            ListenerMode::Relay => &self.relay,
            ListenerMode::Submission => &self.submission,
            ListenerMode::Smtps => &self.smtps,
            ListenerMode::Lmtp => &self.lmtp,
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
    #[cfg_attr(not(feature = "prometheus"), allow(dead_code))]
    fn refusals(&self) -> Vec<((&'static str, u16), u64)> {
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
    #[cfg_attr(not(feature = "prometheus"), allow(dead_code))]
    fn protocol_errors(&self) -> Vec<((u16, String), u64)> {
        self.protocol_errors
            .lock()
            .map(|p| p.iter().map(|(k, v)| (k.clone(), *v)).collect())
            .unwrap_or_default()
    }

    /// Counts a problem the HELO checks found: refused (`enforced`) or only tagged.
    pub(crate) fn helo_check(&self, problem: HeloProblem, enforced: bool) {
        let i = HeloProblem::ALL
            .iter()
            .position(|p| *p == problem)
            .unwrap_or(0);
        Self::count(&self.helo_checks[i][usize::from(enforced)], 1);
    }

    /// `(problem, refused, count)` for every problem the HELO checks look for
    /// ([`HeloChecks`](crate::filters::HeloChecks)): what they found so far, refused or
    /// only tagged.
    ///
    /// ```
    /// let stats = smtp_server::ServerStats::default();
    /// assert!(stats.helo_checks().iter().all(|(_, _, n)| *n == 0));
    /// ```
    pub fn helo_checks(&self) -> Vec<(HeloProblem, bool, u64)> {
        let mut out = Vec::new();
        for (problem, counts) in HeloProblem::ALL.iter().zip(&self.helo_checks) {
            out.push((*problem, false, counts[0].load(Ordering::Relaxed)));
            out.push((*problem, true, counts[1].load(Ordering::Relaxed)));
        }
        out
    }

    /// Client addresses whose early-talker verdict is kept now.
    pub fn early_talker_verdicts(&self) -> usize {
        self.verdicts.len()
    }

    pub(crate) fn count(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

#[cfg(feature = "prometheus")]
impl prometheus_client::collector::Collector for ServerStats {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder<'_>,
    ) -> std::fmt::Result {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::MetricType::{Counter, Gauge};
        use prometheus_client::metrics::counter::ConstCounter;
        use prometheus_client::metrics::gauge::ConstGauge;

        /// A result label (empty: none) and where its count is kept.
        type Results<'a> = &'a [(&'a str, fn(&ModeStats) -> &AtomicU64)];
        /// One family per listener mode in use, with a second label named `label`.
        fn per_mode_labelled(
            stats: &ServerStats,
            encoder: &mut prometheus_client::encoding::DescriptorEncoder<'_>,
            name: &str,
            help: &str,
            label: &str,
            values: Results<'_>,
        ) -> std::fmt::Result {
            let mut family = encoder.encode_descriptor(name, help, None, Counter)?;
            for mode in &stats.modes {
                let counters = stats.mode(*mode);
                for (value, counter) in values {
                    let labels = [("listener", mode.as_str()), (label, value)];
                    ConstCounter::new(counter(counters).load(Ordering::Relaxed))
                        .encode(family.encode_family(&labels)?)?;
                }
            }
            Ok(())
        }

        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        // One family per listener mode in use, and one more label when `results` has any.
        let mut per_mode = |name: &str, help: &str, results: Results<'_>| -> std::fmt::Result {
            let mut family = encoder.encode_descriptor(name, help, None, Counter)?;
            for mode in &self.modes {
                let stats = self.mode(*mode);
                for (result, counter) in results {
                    let labels = [("listener", mode.as_str()), ("result", result)];
                    let labels = if result.is_empty() {
                        &labels[..1]
                    } else {
                        &labels[..]
                    };
                    ConstCounter::new(get(counter(stats)))
                        .encode(family.encode_family(&labels)?)?;
                }
            }
            Ok(())
        };
        per_mode(
            "smtp_connections",
            "SMTP connections accepted, by listener.",
            &[("", |m| &m.connections)],
        )?;
        per_mode(
            "smtp_connections_refused",
            "SMTP connections refused at the connection limits, by listener.",
            &[("", |m| &m.connections_refused)],
        )?;
        per_mode(
            "smtp_logins",
            "SMTP AUTH attempts, by listener and result.",
            &[
                ("success", |m| &m.logins),
                ("failure", |m| &m.login_failures),
            ],
        )?;
        per_mode(
            "smtp_messages",
            "Messages at the end of DATA, by listener and result (rejected: 5xx, deferred: 4xx).",
            &[
                ("accepted", |m| &m.messages_accepted),
                ("rejected", |m| &m.messages_rejected),
                ("deferred", |m| &m.messages_deferred),
            ],
        )?;
        per_mode(
            "smtp_received_bytes",
            "Octets of the accepted messages, by listener.",
            &[("", |m| &m.bytes_accepted)],
        )?;
        per_mode_labelled(
            self,
            &mut encoder,
            "smtp_sessions_cut",
            "Sessions the server closed with 421 4.4.2, by listener and reason (timeout: a command or content not in time; session_time_limit: max_session_duration reached).",
            "reason",
            &[
                ("timeout", |m| &m.timed_out),
                ("session_time_limit", |m| &m.session_time_limit),
            ],
        )?;
        per_mode_labelled(
            self,
            &mut encoder,
            "smtp_proxy_refused",
            "Connections of PROXY protocol listeners closed without a greeting, by listener and reason (untrusted: not from a load balancer; malformed: bad, oversized or incomplete header; timeout).",
            "reason",
            &[
                ("untrusted", |m| &m.proxy_untrusted),
                ("malformed", |m| &m.proxy_malformed),
                ("timeout", |m| &m.proxy_timeout),
            ],
        )?;
        {
            let mut family = encoder.encode_descriptor(
                "smtp_early_talkers",
                "Clients that talked before the greeting (pregreet) or before a reply where RFC 2920 forbids it (pipelining), by listener, test and action (tagged: let go on; rejected: 554 5.5.0).",
                None,
                Counter,
            )?;
            for mode in &self.modes {
                let stats = self.mode(*mode);
                for (test, result, counter) in [
                    ("pregreet", "tagged", &stats.pregreet_tagged),
                    ("pregreet", "rejected", &stats.pregreet_rejected),
                    ("pipelining", "tagged", &stats.pipelining_tagged),
                    ("pipelining", "rejected", &stats.pipelining_rejected),
                ] {
                    let labels = [
                        ("listener", mode.as_str()),
                        ("test", test),
                        ("result", result),
                    ];
                    ConstCounter::new(get(counter)).encode(family.encode_family(&labels)?)?;
                }
            }
        }
        per_mode_labelled(
            self,
            &mut encoder,
            "smtp_greeting_delay_passes",
            "Clients that passed the greeting delay, by listener and how (waited: quiet through the delay; cached: passed before, no delay).",
            "result",
            &[
                ("waited", |m| &m.greeting_waited),
                ("cached", |m| &m.greeting_cached),
            ],
        )?;
        {
            let mut family = encoder.encode_descriptor(
                "smtp_helo_checks",
                "HELO/EHLO names the HELO checks found wrong, by check (syntax, own_name, bare_ip) and action (tagged, rejected).",
                None,
                Counter,
            )?;
            for (problem, refused, n) in self.helo_checks() {
                let result = if refused { "rejected" } else { "tagged" };
                let labels = [("check", problem.as_str()), ("result", result)];
                ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
            }
        }
        ConstGauge::new(self.early_talker_verdicts() as u64).encode(encoder.encode_descriptor(
            "smtp_early_talker_cache_entries",
            "Client addresses whose early-talker verdict is kept now.",
            None,
            Gauge,
        )?)?;
        for (name, help, value) in [
            (
                "smtp_connections_open",
                "SMTP connections open now.",
                &self.connections_open,
            ),
            (
                "smtp_content_in_memory_bytes",
                "Message content held in memory by the sessions receiving it ([limits] max_total_message_memory bounds it).",
                &self.content_in_memory,
            ),
        ] {
            ConstGauge::new(get(value))
                .encode(encoder.encode_descriptor(name, help, None, Gauge)?)?;
        }
        ConstCounter::new(get(&self.messages_spilled)).encode(encoder.encode_descriptor(
            "smtp_messages_spilled",
            "Messages whose content went to a file as it arrived (larger than [limits] max_message_memory, or the memory budget was spent).",
            None,
            Counter,
        )?)?;
        // The other counter families, each sample with its labels.
        type Samples = Vec<(Vec<(&'static str, String)>, u64)>;
        let tls: Samples = [
            ("tls1.2", &self.tls12),
            ("tls1.3", &self.tls13),
            ("failed", &self.tls_failed),
        ]
        .into_iter()
        .map(|(result, n)| (vec![("result", result.to_owned())], get(n)))
        .collect();
        let refusals: Samples = self
            .refusals()
            .into_iter()
            .map(|((stage, code), n)| {
                (
                    vec![("stage", stage.to_owned()), ("code", code.to_string())],
                    n,
                )
            })
            .collect();
        let protocol: Samples = self
            .protocol_errors()
            .into_iter()
            .map(|((code, status), n)| (vec![("code", code.to_string()), ("status", status)], n))
            .collect();
        for (name, help, samples) in [
            (
                "smtp_tls_handshakes",
                "TLS handshakes of SMTP sessions (STARTTLS or implicit TLS), by result.",
                tls,
            ),
            (
                "smtp_refusals",
                "Commands refused by a stage (policy, filters, limits), by stage and reply code.",
                refusals,
            ),
            (
                "smtp_protocol_errors",
                "Commands and input the protocol layer refused (syntax, sequence, line length, size, recipients, timeouts), by reply code and enhanced status.",
                protocol,
            ),
        ] {
            let mut family = encoder.encode_descriptor(name, help, None, Counter)?;
            for (labels, n) in samples {
                ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}
