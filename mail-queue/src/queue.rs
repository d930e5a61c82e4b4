//! The queue: durable enqueue, recovery on start, and the delivery scheduler.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::{Notify, Semaphore, oneshot};
use tower::{Service, ServiceExt};
use tracing::{Instrument, info, info_span, warn};

use crate::commit::{CommitStats, Committer, Job, JobBody};
use crate::delivery::{BoxError, DeliveryReport, DeliveryRequest, Outcome};
use crate::dsn::{self, DsnAction};
use crate::id::IdGenerator;
use crate::message::{MessageMeta, NewMessage, RecipientMeta, RecipientState, SpoolRef};
use crate::spool::Spool;
use crate::stats::{QueueCounts, QueueStats};
use crate::store::{Change, QueueStore, RedbStore, SledStore};
use crate::{QueueError, QueueId};

/// What [`Queue::run`] needs of a delivery service: a cloneable tower `Service` from
/// [`DeliveryRequest`] to one [`Outcome`] per recipient. Implemented for every such
/// service.
pub trait DeliveryService:
    Service<DeliveryRequest, Response = DeliveryReport, Error = BoxError, Future: Send>
    + Clone
    + Send
    + 'static
{
}

impl<S> DeliveryService for S where
    S: Service<DeliveryRequest, Response = DeliveryReport, Error = BoxError, Future: Send>
        + Clone
        + Send
        + 'static
{
}

/// Which metadata backend to use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Backend {
    /// sled 0.34 with explicit fsync (the default).
    #[default]
    Sled,
    /// redb.
    Redb,
}

/// Queue settings, with the defaults of the `[queue]` section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueConfig {
    /// The directory of the queue.
    pub path: PathBuf,
    /// The metadata backend.
    pub backend: Backend,
    /// Waits between attempts; the last one repeats. Default 5m, 10m, 30m, 1h, 2h, 4h.
    pub retry_intervals: Vec<Duration>,
    /// Give up (and bounce) after this long in the queue. Default 5 days.
    pub max_age: Duration,
    /// Deliveries running at once. Default 100.
    pub max_concurrent_deliveries: usize,
    /// Size at which the spool starts a new segment file. Default 64 MiB.
    pub segment_size: u64,
    /// Our host name, for the `Reporting-MTA` of delivery status notifications.
    pub hostname: String,
    /// Tell senders their message is delayed once it has waited this long (RFC 3464
    /// `Action: delayed`); `None` (the default, like Postfix) sends no delay notices.
    pub delay_warning: Option<Duration>,
    /// Start deliveries by priority ([`MailParams::priority`](crate::MailParams), RFC
    /// 6710): when more messages are due than `max_concurrent_deliveries` lets start,
    /// the highest priority goes first, then the oldest. Default on; off, every message
    /// counts as priority 0 (oldest first).
    pub priority_scheduling: bool,
    /// A message due this long without a free delivery slot starts before any of
    /// higher priority, so that a steady stream of high-priority mail cannot hold the
    /// rest back for ever. Default 15 min; `None`: priority alone decides.
    pub priority_max_wait: Option<Duration>,
    /// Bodies of new messages kept in memory, up to this many bytes in all, until their
    /// first delivery attempt starts (usually within the second), which then does not
    /// read them back from the spool. Default 32 MiB; 0 keeps none.
    pub fresh_body_memory: usize,
}

impl Default for QueueConfig {
    fn default() -> Self {
        let m = |n: u64| Duration::from_secs(60 * n);
        Self {
            path: PathBuf::from("queue"),
            backend: Backend::Sled,
            retry_intervals: vec![m(5), m(10), m(30), m(60), m(120), m(240)],
            max_age: Duration::from_secs(5 * 24 * 3600),
            max_concurrent_deliveries: 100,
            segment_size: 64 << 20,
            hostname: "localhost".into(),
            delay_warning: None,
            priority_scheduling: true,
            priority_max_wait: Some(Duration::from_secs(15 * 60)),
            fresh_body_memory: 32 << 20,
        }
    }
}

/// The durable mail queue. Cheap to clone; every clone is the same queue.
///
/// ```no_run
/// # async fn example() -> Result<(), mail_queue::QueueError> {
/// use mail_queue::{NewMessage, NewRecipient, Queue, QueueConfig, MailParams, RecipientDsn};
/// let queue = Queue::open(QueueConfig { path: "/var/spool/mta".into(), ..QueueConfig::default() })?;
/// let message = NewMessage {
///     from: "alice@example.test".into(),
///     params: MailParams::default(),
///     recipients: vec![NewRecipient { address: "bob@example.test".into(), dsn: RecipientDsn::default() }],
///     source: "[192.0.2.1]".into(),
/// };
/// let id = queue.enqueue(message, b"Subject: hi\r\n\r\nhello\r\n".to_vec()).await?;
/// // Only now may the server answer `250 ... queued as {id}`.
/// # let _ = id; Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Queue {
    pub(crate) inner: Arc<Inner>,
}

/// Where a delivery status notification to a sender goes: the addresses `sender`
/// stands for (an alias's members, the original sender of an SRS address). See
/// [`Queue::route_notifications`].
pub type NotificationRoute = Arc<dyn Fn(&str) -> Vec<String> + Send + Sync>;

/// A [`NotificationRoute`], or none.
#[derive(Default)]
struct RouteSlot(std::sync::RwLock<Option<NotificationRoute>>);

impl std::fmt::Debug for RouteSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RouteSlot { .. }")
    }
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) config: QueueConfig,
    pub(crate) store: Arc<dyn QueueStore>,
    pub(crate) spool: Arc<Spool>,
    committer: Committer,
    ids: IdGenerator,
    pub(crate) schedule: Mutex<Schedule>,
    pub(crate) wake: Notify,
    stats: QueueStats,
    notification_route: RouteSlot,
}

/// Where every message stands in memory: waiting for its next attempt (by time), ready
/// (its time has come, waiting for a free delivery slot, by priority then age), being
/// delivered (or changed by the administrator), or held.
#[derive(Debug, Default)]
pub(crate) struct Schedule {
    /// Waiting messages not yet moved to `ready`, by time.
    due: BTreeSet<(u64, QueueId)>,
    /// Messages whose time has come, highest priority first, then oldest (queue ids
    /// grow with acceptance time). Filled from `due` by [`Schedule::take_ready`].
    ready: BTreeSet<(Reverse<i8>, QueueId)>,
    /// The messages of `ready` by when they became due (at the earliest `opened`: a
    /// message that fell due while the queue was closed has waited since it opened):
    /// the one that waited longest goes first once it has waited `max_wait`.
    ready_since: BTreeSet<(u64, QueueId)>,
    /// [`QueueConfig::priority_max_wait`], in seconds.
    max_wait: Option<u64>,
    /// When the queue opened (unix seconds).
    opened: u64,
    /// When each waiting message (in `due` or `ready`) is due.
    due_at: HashMap<QueueId, u64>,
    /// The priority of messages that have one other than 0, wherever they stand.
    priorities: HashMap<QueueId, i8>,
    pub(crate) in_flight: HashSet<QueueId>,
    pub(crate) held: HashSet<QueueId>,
    /// Administrator actions on messages that were in flight, applied when the
    /// attempt ends.
    pub(crate) after_flight: HashMap<QueueId, crate::Action>,
    /// Messages accepted by this process and not yet taken for an attempt (never one
    /// recovered at open): their first attempt cannot repeat an earlier delivery
    /// ([`DeliveryRequest::first_attempt`]). With the body while it is small enough to
    /// stay in memory ([`QueueConfig::fresh_body_memory`]), so that the first attempt
    /// does not read it back from the spool.
    fresh: HashMap<QueueId, Option<Bytes>>,
    /// The bytes of the bodies in `fresh`.
    fresh_bytes: usize,
}

impl Schedule {
    /// Schedules `id` at `at` (unix seconds), replacing an earlier time.
    pub(crate) fn insert_due(&mut self, at: u64, id: QueueId) {
        if let Some(old) = self.due_at.insert(id, at) {
            self.due.remove(&(old, id));
            self.unready(id, old);
        }
        self.due.insert((at, id));
    }

    /// Takes `id`, due at `at`, out of `ready` (if it is there).
    fn unready(&mut self, id: QueueId, at: u64) {
        self.ready.remove(&(Reverse(self.priority(id)), id));
        self.ready_since.remove(&(at.max(self.opened), id));
    }

    /// Takes `id` off the schedule; returns when it was due.
    pub(crate) fn remove_due(&mut self, id: QueueId) -> Option<u64> {
        let at = self.due_at.remove(&id)?;
        self.due.remove(&(at, id));
        self.unready(id, at);
        Some(at)
    }

    /// Records the priority of `id` (before it is scheduled; kept while it is in the
    /// queue, whatever happens to it).
    pub(crate) fn set_priority(&mut self, id: QueueId, priority: i8) {
        if priority == 0 {
            self.priorities.remove(&id);
        } else {
            self.priorities.insert(id, priority);
        }
    }

    fn priority(&self, id: QueueId) -> i8 {
        self.priorities.get(&id).copied().unwrap_or(0)
    }

    /// Takes the message to start next among those due at `now`: one that has waited
    /// `max_wait` since it became due (the longest first), else the highest priority,
    /// then the oldest. It is now in flight. `Err`: none is due, and when the next one
    /// will be, if any.
    pub(crate) fn take_ready(&mut self, now: u64) -> Result<QueueId, Option<u64>> {
        while let Some(&(at, id)) = self.due.first() {
            if at > now {
                break;
            }
            self.due.pop_first();
            self.ready.insert((Reverse(self.priority(id)), id));
            self.ready_since.insert((at.max(self.opened), id));
        }
        let waited_long = self.max_wait.and_then(|wait| {
            self.ready_since
                .first()
                .filter(|(at, _)| at.saturating_add(wait) <= now)
                .map(|&(_, id)| id)
        });
        let id = match waited_long {
            Some(id) => id,
            None => match self.ready.first() {
                Some(&(_, id)) => id,
                None => return Err(self.due.first().map(|&(at, _)| at)),
            },
        };
        if let Some(at) = self.due_at.remove(&id) {
            self.unready(id, at);
        }
        self.in_flight.insert(id);
        Ok(id)
    }

    /// Forgets `id`'s priority once it has left the queue.
    pub(crate) fn forget(&mut self, id: QueueId) {
        self.priorities.remove(&id);
        self.take_fresh(id);
        // Messages removed by the administrator leave theirs: drop those now and then.
        let known = self.due_at.len() + self.in_flight.len() + self.held.len();
        if self.priorities.len() > 2 * known + 1024 {
            let Self {
                priorities,
                due_at,
                in_flight,
                held,
                ..
            } = self;
            priorities.retain(|id, _| {
                due_at.contains_key(id) || in_flight.contains(id) || held.contains(id)
            });
        }
        // And their mark of a first attempt, when they never had one.
        if self.fresh.len() > 2 * known + 1024 {
            let Self {
                fresh,
                due_at,
                held,
                ..
            } = self;
            fresh.retain(|id, _| due_at.contains_key(id) || held.contains(id));
            self.fresh_bytes = self.fresh.values().flatten().map(Bytes::len).sum();
        }
    }

    /// Marks a message accepted by this process, with its body if `limit` bytes of
    /// bodies are not held already.
    fn insert_fresh(&mut self, id: QueueId, body: Option<Bytes>, limit: usize) {
        let body = body.filter(|b| self.fresh_bytes + b.len() <= limit);
        self.fresh_bytes += body.as_ref().map_or(0, Bytes::len);
        self.fresh.insert(id, body);
    }

    /// Whether `id` was accepted by this process and never taken for an attempt, and
    /// its body if it was kept.
    fn take_fresh(&mut self, id: QueueId) -> Option<Option<Bytes>> {
        let taken = self.fresh.remove(&id)?;
        self.fresh_bytes -= taken.as_ref().map_or(0, Bytes::len);
        Some(taken)
    }

    /// Whether the schedule knows `id` (waiting, in flight or held).
    pub(crate) fn contains(&self, id: QueueId) -> bool {
        self.due_at.contains_key(&id) || self.in_flight.contains(&id) || self.held.contains(&id)
    }

    /// Every message id the schedule knows, in id order.
    pub(crate) fn ids(&self) -> Vec<QueueId> {
        let mut ids: Vec<QueueId> = self
            .due_at
            .keys()
            .chain(&self.in_flight)
            .chain(&self.held)
            .copied()
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }
}

impl Queue {
    /// Opens the queue, recovering what a previous run left: every message is scheduled
    /// again (finished leftovers at once, to send their notifications and go), and
    /// orphaned spool segments are deleted.
    pub fn open(config: QueueConfig) -> Result<Self, QueueError> {
        std::fs::create_dir_all(&config.path)?;
        let store: Arc<dyn QueueStore> = match config.backend {
            Backend::Sled => Arc::new(SledStore::open(&config.path.join("meta"))?),
            Backend::Redb => Arc::new(RedbStore::open(&config.path.join("meta.redb"))?),
        };
        Self::with_store(config, store)
    }

    /// Opens the queue over any [`QueueStore`].
    pub fn with_store(config: QueueConfig, store: Arc<dyn QueueStore>) -> Result<Self, QueueError> {
        // What a server spilled there for messages it never handed over.
        let incoming = config.path.join("incoming");
        std::fs::create_dir_all(&incoming)?;
        for entry in std::fs::read_dir(&incoming)? {
            let _ = std::fs::remove_file(entry?.path());
        }
        let spool = Arc::new(Spool::open(
            &config.path.join("spool"),
            config.segment_size,
        )?);
        let (mark, replayed) = crate::journal::recover(&spool, store.as_ref())?;
        // A store that keeps the journal's mark is synced once a second; until then the
        // changes wait in memory in front of it. One that does not commits each batch.
        let store: Arc<dyn QueueStore> = if store.mark()?.is_some() {
            Arc::new(crate::store::Overlay::new(store))
        } else {
            store
        };
        let mut schedule = Schedule {
            max_wait: config
                .priority_max_wait
                .filter(|_| config.priority_scheduling)
                .map(|w| w.as_secs()),
            opened: unix_now(),
            ..Schedule::default()
        };
        let mut largest = 0;
        store.scan(None, &mut |meta| {
            largest = largest.max(meta.id.0);
            spool.retain(&meta.spool);
            if config.priority_scheduling {
                schedule.set_priority(meta.id, meta.params.priority());
            }
            // A finished message left by a crash still has its notifications to send:
            // the scheduler does that (and removes it) at once.
            if meta.is_finished() {
                schedule.insert_due(0, meta.id);
            } else if meta.is_held() {
                schedule.held.insert(meta.id);
            } else {
                schedule.insert_due(meta.next_attempt, meta.id);
            }
            true
        })?;
        let committer = Committer::start(Arc::clone(&spool), Arc::clone(&store), mark)?;
        let queue = Self {
            inner: Arc::new(Inner {
                config,
                store,
                spool,
                committer,
                ids: IdGenerator::new(largest),
                schedule: Mutex::new(schedule),
                wake: Notify::new(),
                stats: QueueStats {
                    journal_replayed: AtomicU64::new(u64::try_from(replayed).unwrap_or(u64::MAX)),
                    ..QueueStats::default()
                },
                notification_route: RouteSlot::default(),
            }),
        };
        let swept = queue.inner.spool.sweep()?;
        info!(
            backend = queue.inner.store.backend(),
            messages = queue.len(),
            journal_records_replayed = replayed,
            swept_segments = swept,
            "queue opened"
        );
        Ok(queue)
    }

    /// Makes a message durable (body and metadata fsynced) and schedules it. When this
    /// returns `Ok`, a server may answer `250`.
    pub async fn enqueue(&self, message: NewMessage, body: Vec<u8>) -> Result<QueueId, QueueError> {
        self.enqueue_parts(message, vec![Bytes::from(body)]).await
    }

    /// [`Queue::enqueue`] with the body in parts, stored one after the other without
    /// being joined first (the header fields a server added, then what the client sent).
    pub async fn enqueue_parts(
        &self,
        message: NewMessage,
        parts: Vec<Bytes>,
    ) -> Result<QueueId, QueueError> {
        // Its first delivery attempt, usually in the same second, takes it from memory.
        let body = match parts.as_slice() {
            [one] => Some(one.clone()),
            parts => {
                let len = parts.iter().map(Bytes::len).sum();
                (len <= self.inner.config.fresh_body_memory).then(|| {
                    let mut joined = Vec::with_capacity(len);
                    parts.iter().for_each(|p| joined.extend_from_slice(p));
                    Bytes::from(joined)
                })
            }
        };
        let (_, rx) = self.submit(message, JobBody::Parts(parts), None)?;
        self.committed(rx, body).await
    }

    /// [`Queue::enqueue`] for a message whose content is already in a file under
    /// [`Queue::incoming_dir`] (a server spilled it there as it arrived): `content` is
    /// that file's bytes from `offset` on, and `head` (the header fields added since)
    /// goes in front. The file becomes the message's spool segment as it is, so a large
    /// message is never copied; `offset` must leave room for `head` and
    /// [`Queue::SPILL_RESERVE`] is what a spill should leave. The file stays where it
    /// is too (its name there can be removed at any time).
    pub async fn enqueue_spilled(
        &self,
        message: NewMessage,
        head: Vec<u8>,
        content: Bytes,
        file: PathBuf,
        offset: u64,
    ) -> Result<QueueId, QueueError> {
        let id = self.inner.ids.next();
        let spool = Arc::clone(&self.inner.spool);
        let stored =
            tokio::task::spawn_blocking(move || spool.adopt(id, &file, offset, &head, &content))
                .await
                .map_err(|_| QueueError::Closed)??;
        let (_, rx) = self.submit(message, JobBody::Stored, Some((id, stored)))?;
        self.committed(rx, None).await
    }

    /// Room a spilled message should leave before its content, for the header fields
    /// filters add and the spool's record header: 64 KiB (a hole in the file, which
    /// takes no disk space).
    pub const SPILL_RESERVE: u64 = 64 * 1024;

    /// Where a server may put the content of large messages as it arrives, for
    /// [`Queue::enqueue_spilled`]: a directory on the queue's filesystem, emptied when
    /// the queue opens.
    pub fn incoming_dir(&self) -> PathBuf {
        self.inner.config.path.join("incoming")
    }

    async fn committed(
        &self,
        rx: oneshot::Receiver<Result<MessageMeta, QueueError>>,
        body: Option<Bytes>,
    ) -> Result<QueueId, QueueError> {
        let meta = rx.await.map_err(|_| QueueError::Closed)??;
        self.schedule_new(&meta, body);
        count(&self.inner.stats.enqueued);
        Ok(meta.id)
    }

    /// [`Queue::enqueue`] for code outside an async runtime (the sendmail interface).
    pub fn enqueue_blocking(
        &self,
        message: NewMessage,
        body: Vec<u8>,
    ) -> Result<QueueId, QueueError> {
        let body = Bytes::from(body);
        let (_, rx) = self.submit(message, JobBody::Parts(vec![body.clone()]), None)?;
        let meta = rx.blocking_recv().map_err(|_| QueueError::Closed)??;
        self.schedule_new(&meta, Some(body));
        count(&self.inner.stats.enqueued);
        Ok(meta.id)
    }

    /// Hands a new message to the committer; `stored`: its id and where its body is
    /// already durable.
    fn submit(
        &self,
        message: NewMessage,
        body: JobBody,
        stored: Option<(QueueId, SpoolRef)>,
    ) -> Result<(QueueId, oneshot::Receiver<Result<MessageMeta, QueueError>>), QueueError> {
        let (id, spool) = stored.unwrap_or_else(|| (self.inner.ids.next(), SpoolRef::default()));
        let now = unix_now();
        let meta = MessageMeta {
            id,
            received: now,
            from: message.from,
            params: message.params,
            source: message.source,
            recipients: message
                .recipients
                .into_iter()
                .map(|r| RecipientMeta {
                    address: r.address,
                    dsn: r.dsn,
                    state: RecipientState::Pending,
                    last_reply: None,
                })
                .collect(),
            spool,
            attempts: 0,
            next_attempt: now,
            last_error: None,
            delay_warned: false,
        };
        let (done, rx) = oneshot::channel();
        let submitted = self.inner.committer.submit(Job::Enqueue {
            meta: Box::new(meta),
            body,
            done,
        });
        if let (Err(e), Some((_, place))) = (&submitted, stored) {
            // Nothing will point to the stored body.
            tracing::debug!(error = %e, "queue closed");
            self.inner.spool.release(&place);
        }
        submitted?;
        Ok((id, rx))
    }

    fn schedule_new(&self, meta: &MessageMeta, body: Option<Bytes>) {
        if let Ok(mut s) = self.inner.schedule.lock() {
            if self.inner.config.priority_scheduling {
                s.set_priority(meta.id, meta.params.priority());
            }
            s.insert_due(meta.next_attempt, meta.id);
            s.insert_fresh(meta.id, body, self.inner.config.fresh_body_memory);
        }
        self.inner.wake.notify_one();
    }

    pub(crate) async fn commit(&self, changes: Vec<Change>) -> Result<(), QueueError> {
        let (done, rx) = oneshot::channel();
        self.inner.committer.submit(Job::Update { changes, done })?;
        rx.await.map_err(|_| QueueError::Closed)?
    }

    /// Messages in the queue (waiting, being delivered or held).
    pub fn len(&self) -> usize {
        self.inner
            .schedule
            .lock()
            .map_or(0, |s| s.due_at.len() + s.in_flight.len() + s.held.len())
    }

    /// Whether the queue is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// One message's metadata.
    pub fn get(&self, id: QueueId) -> Result<Option<MessageMeta>, QueueError> {
        self.inner.store.get(id)
    }

    /// One message's body (mapped into memory when it is large).
    pub fn read_body(&self, meta: &MessageMeta) -> Result<Bytes, QueueError> {
        self.inner.spool.read(meta.id, &meta.spool)
    }

    /// Calls `f` for every message in the queue in id order from `start`, until it
    /// returns false. A finished message whose removal is not yet committed (see
    /// `commit`) is no longer in the queue.
    pub fn scan(
        &self,
        start: Option<QueueId>,
        f: &mut dyn FnMut(MessageMeta) -> bool,
    ) -> Result<(), QueueError> {
        self.inner.store.scan(start, &mut |meta| {
            let queued = self
                .inner
                .schedule
                .lock()
                .is_ok_and(|s| s.contains(meta.id));
            !queued || f(meta)
        })
    }

    /// Counters of the group committer: `(batches, jobs)`. `jobs / batches` is how many
    /// messages and updates shared one fsync on average.
    pub fn commit_stats(&self) -> (u64, u64) {
        let s: &CommitStats = &self.inner.committer.stats;
        (
            s.batches.load(Ordering::Relaxed),
            s.jobs.load(Ordering::Relaxed),
        )
    }

    /// Syncs of the metadata store so far (for metrics).
    pub fn store_syncs(&self) -> u64 {
        self.inner
            .committer
            .stats
            .store_syncs
            .load(Ordering::Relaxed)
    }

    /// What the queue did so far (for metrics).
    pub fn stats(&self) -> &QueueStats {
        &self.inner.stats
    }

    /// How many messages wait, are being delivered, and are held, now.
    pub fn counts(&self) -> QueueCounts {
        self.inner
            .schedule
            .lock()
            .map_or(QueueCounts::default(), |s| QueueCounts {
                waiting: s.due_at.len() as u64,
                active: s.in_flight.len() as u64,
                held: s.held.len() as u64,
            })
    }

    /// When the oldest message of each state was accepted (queue ids are acceptance
    /// times). It looks at every message's id under the scheduler's lock: a few
    /// milliseconds for a million messages, fine for a metrics scrape, not for a hot
    /// path.
    pub fn oldest(&self) -> crate::Oldest {
        self.inner
            .schedule
            .lock()
            .map_or(crate::Oldest::default(), |s| {
                let min =
                    |ids: &mut dyn Iterator<Item = &QueueId>| ids.min().map(|id| id.accepted_at());
                crate::Oldest {
                    waiting: min(&mut s.due_at.keys()),
                    active: min(&mut s.in_flight.iter()),
                    held: min(&mut s.held.iter()),
                }
            })
    }

    /// Asks the scheduler to try every waiting message now (held ones stay held).
    pub fn flush(&self) {
        if let Ok(mut s) = self.inner.schedule.lock() {
            let ids: Vec<QueueId> = s.due_at.keys().copied().collect();
            for id in ids {
                s.insert_due(0, id);
            }
        }
        self.inner.wake.notify_one();
    }

    /// Runs the scheduler until `shutdown` completes: due messages are handed to
    /// `delivery`, one request per destination domain, and their recipients updated
    /// (delivered, failed, or retried later by `retry_intervals`; expired after
    /// `max_age`). Deliveries in flight finish before it returns.
    ///
    /// At most `max_concurrent_deliveries` messages are delivered at once; when a slot
    /// frees, it goes to the due message of highest priority, then the oldest
    /// ([`QueueConfig::priority_scheduling`]). The delivery service may limit further
    /// (per destination); the order in which it lets waiting requests go is its own.
    pub async fn run<S>(&self, delivery: S, shutdown: impl std::future::Future<Output = ()>)
    where
        S: DeliveryService,
    {
        let limit = self.inner.config.max_concurrent_deliveries.max(1);
        let permits = Arc::new(Semaphore::new(limit));
        let mut tasks = tokio::task::JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            let next_due = loop {
                let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
                    break None;
                };
                match self.take_due(unix_now()) {
                    Ok((id, fresh)) => {
                        let (queue, delivery) = (self.clone(), delivery.clone());
                        tasks.spawn(async move {
                            queue.process(id, fresh, delivery).await;
                            drop(permit);
                        });
                    }
                    Err(next) => break next,
                }
            };
            let sleep = match next_due {
                Some(at) => Duration::from_secs(at.saturating_sub(unix_now()).max(1)),
                None => Duration::from_secs(1),
            };
            tokio::select! {
                () = &mut shutdown => break,
                () = self.inner.wake.notified() => {}
                () = tokio::time::sleep(sleep) => {}
                Some(_) = tasks.join_next() => {}
            }
        }
        while tasks.join_next().await.is_some() {}
    }

    /// The next due message (now marked in flight) and, when this is its first attempt
    /// since this process accepted it, `Some` of its body if that was kept in memory;
    /// or the time of the next one.
    fn take_due(&self, now: u64) -> Result<(QueueId, Option<Option<Bytes>>), Option<u64>> {
        let Ok(mut s) = self.inner.schedule.lock() else {
            return Err(None);
        };
        let id = s.take_ready(now)?;
        Ok((id, s.take_fresh(id)))
    }

    /// `fresh`: see [`Queue::take_due`].
    async fn process<S>(&self, id: QueueId, fresh: Option<Option<Bytes>>, delivery: S)
    where
        S: DeliveryService,
    {
        let span = info_span!("queue.delivery", queue_id = %id);
        let next = async {
            let meta = match self.inner.store.get(id) {
                Ok(Some(meta)) => meta,
                Ok(None) => return None,
                Err(e) => {
                    warn!(error = %e, "cannot read message metadata; retrying later");
                    return Some(unix_now() + 60);
                }
            };
            let first_attempt = fresh.is_some();
            let body = match fresh
                .flatten()
                .map_or_else(|| self.inner.spool.read(id, &meta.spool), Ok)
            {
                Ok(body) => body,
                Err(e) => {
                    warn!(error = %e, "message body unreadable; retrying later");
                    return Some(unix_now() + 60);
                }
            };
            self.attempt(meta, body, first_attempt, delivery).await
        }
        .instrument(span)
        .await;
        let action = self.inner.schedule.lock().ok().and_then(|mut s| {
            // A message that left the queue (its removal may not be committed yet) is
            // past any action: applying one now would write it back.
            let action = s.after_flight.remove(&id).filter(|_| next.is_some());
            if action.is_none() {
                s.in_flight.remove(&id);
                match next {
                    Some(at) => s.insert_due(at, id),
                    None => s.forget(id),
                }
            }
            action
        });
        // An administrator acted while it was being delivered: the message is still
        // claimed (in flight); apply the action now, with what the attempt recorded.
        if let Some(action) = action {
            self.apply_claimed(vec![(id, next)], action).await;
        }
    }

    /// One attempt on every pending recipient; returns when to try again, if ever.
    /// `first_attempt`: see [`DeliveryRequest::first_attempt`].
    async fn attempt<S>(
        &self,
        mut meta: MessageMeta,
        body: Bytes,
        first_attempt: bool,
        delivery: S,
    ) -> Option<u64>
    where
        S: DeliveryService,
    {
        if meta.is_finished() {
            return self.finish(&meta, &body).await;
        }
        let mut groups: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for i in meta.pending() {
            groups
                .entry(meta.recipients[i].domain())
                .or_default()
                .push(i);
        }
        let shared = Arc::new(meta.clone());
        // One task per destination domain; a task that panics defers its recipients.
        let mut tasks = tokio::task::JoinSet::new();
        let mut indexes_of = HashMap::new();
        for recipients in groups.into_values() {
            let request = DeliveryRequest {
                message: Arc::clone(&shared),
                body: body.clone(),
                recipients: recipients.clone(),
                first_attempt,
            };
            let service = delivery.clone();
            let task = tasks.spawn(async move { service.oneshot(request).await });
            indexes_of.insert(task.id(), recipients);
        }
        let mut results = Vec::with_capacity(indexes_of.len());
        while let Some(joined) = tasks.join_next_with_id().await {
            let (id, result) = match joined {
                Ok((id, result)) => (id, result),
                Err(e) => {
                    warn!(error = %e, "delivery task failed; its recipients are deferred");
                    let failure: BoxError = format!("delivery task failed: {e}").into();
                    (e.id(), Err(failure))
                }
            };
            if let Some(indexes) = indexes_of.remove(&id) {
                results.push((indexes, result));
            }
        }
        let now = unix_now();
        for (indexes, result) in results {
            let outcomes: Vec<Outcome> = match result {
                Ok(outcomes) if outcomes.len() == indexes.len() => outcomes,
                Ok(_) => {
                    vec![
                        Outcome::Deferred("delivery service returned a malformed report".into());
                        indexes.len()
                    ]
                }
                Err(e) => vec![Outcome::Deferred(e.to_string()); indexes.len()],
            };
            for (i, outcome) in indexes.into_iter().zip(outcomes) {
                let r = &mut meta.recipients[i];
                self.inner.stats.by_domain.count(&r.domain(), &outcome);
                let sent = matches!(outcome, Outcome::Sent(_));
                match outcome {
                    Outcome::Delivered(text) | Outcome::Sent(text) => {
                        count(&self.inner.stats.delivered);
                        let delay = now.saturating_sub(meta.received);
                        self.inner.stats.delivery_delay.observe(delay);
                        let (result, state) = if sent {
                            ("sent", RecipientState::Sent)
                        } else {
                            ("delivered", RecipientState::Delivered)
                        };
                        info!(to = %r.address, result, detail = %text, "delivery");
                        r.state = state;
                        r.last_reply = Some(text);
                    }
                    Outcome::Failed(text) => {
                        count(&self.inner.stats.failed);
                        warn!(to = %r.address, result = "failed", detail = %text, "delivery");
                        r.state = RecipientState::Failed;
                        r.last_reply = Some(text);
                    }
                    Outcome::Deferred(text) => {
                        count(&self.inner.stats.deferred);
                        info!(to = %r.address, result = "deferred", detail = %text, "delivery");
                        meta.last_error = Some(text.clone());
                        r.last_reply = Some(text);
                    }
                }
            }
        }
        meta.attempts += 1;
        let expired = now.saturating_sub(meta.received) >= self.inner.config.max_age.as_secs();
        if expired && !meta.is_finished() {
            for r in meta
                .recipients
                .iter_mut()
                .filter(|r| r.state == RecipientState::Pending)
            {
                count(&self.inner.stats.expired);
                warn!(to = %r.address, result = "expired", "delivery");
                r.state = RecipientState::Failed;
                r.last_reply = Some(format!(
                    "expired after {} attempts: {}",
                    meta.attempts,
                    r.last_reply.as_deref().unwrap_or("")
                ));
            }
        }
        if meta.is_finished() {
            return self.finish(&meta, &body).await;
        }
        if let Some(after) = self.inner.config.delay_warning
            && !meta.delay_warned
            && now.saturating_sub(meta.received) >= after.as_secs()
        {
            let delayed: Vec<usize> = meta
                .pending()
                .filter(|&i| dsn::wants_report(&meta, &meta.recipients[i], DsnAction::Delayed))
                .collect();
            if delayed.is_empty()
                || self
                    .notify(&meta, &body, &delayed, DsnAction::Delayed)
                    .await
                    .is_ok()
            {
                meta.delay_warned = true;
            }
        }
        {
            meta.next_attempt = now + self.retry_delay(meta.id, meta.attempts);
            let next = meta.next_attempt;
            if let Err(e) = self.commit(vec![Change::Put(meta)]).await {
                warn!(error = %e, "cannot record delivery results");
            }
            Some(next)
        }
    }

    /// A message whose recipients are all final: the sender gets the notifications it
    /// asked for (failures by default, RFC 3461), then the message leaves the queue.
    /// Returns when to try again if that could not be done now.
    async fn finish(&self, meta: &MessageMeta, body: &[u8]) -> Option<u64> {
        let reports = [
            (RecipientState::Failed, DsnAction::Failed),
            (RecipientState::Delivered, DsnAction::Delivered),
        ];
        for (state, action) in reports {
            let wanted: Vec<usize> = meta
                .recipients
                .iter()
                .enumerate()
                // A recipient sent on to another server is that server's to report.
                .filter(|(_, r)| r.state == state && dsn::wants_report(meta, r, action))
                .map(|(i, _)| i)
                .collect();
            if !wanted.is_empty() && self.notify(meta, body, &wanted, action).await.is_err() {
                return Some(unix_now() + 60);
            }
        }
        // The removal rides along with the next commit (see `commit`): a crash before it
        // is durable delivers the message again, which loses nothing.
        let forget = Job::Forget {
            id: meta.id,
            spool: meta.spool,
        };
        match self.inner.committer.submit(forget) {
            Ok(()) => None,
            Err(e) => {
                warn!(error = %e, "cannot remove a finished message; retrying later");
                Some(unix_now() + 60)
            }
        }
    }

    /// Sends the delivery status notifications to a sender to the addresses `route`
    /// gives for it (the sender itself when it gives none), instead of the sender as
    /// it is. A server whose senders may be aliases or SRS addresses sets one: its
    /// aliases are expanded when a message is received, but a notification is made
    /// here, after. `None` removes it; set it again when the aliases change.
    ///
    /// ```no_run
    /// # async fn f(queue: mail_queue::Queue) {
    /// queue.route_notifications(Some(std::sync::Arc::new(|sender: &str| {
    ///     if sender == "sales@example.org" {
    ///         vec!["ann@example.org".to_owned(), "bob@example.org".to_owned()]
    ///     } else {
    ///         Vec::new()
    ///     }
    /// })));
    /// # }
    /// ```
    pub fn route_notifications(&self, route: Option<NotificationRoute>) {
        if let Ok(mut slot) = self.inner.notification_route.0.write() {
            *slot = route;
        }
    }

    /// Where a notification to `sender` goes.
    fn notification_recipients(&self, sender: &str) -> Vec<String> {
        let route = self
            .inner
            .notification_route
            .0
            .read()
            .ok()
            .and_then(|r| r.clone());
        let routed = route.map(|route| route(sender)).unwrap_or_default();
        if routed.is_empty() {
            vec![sender.to_owned()]
        } else {
            routed
        }
    }

    /// Queues a delivery status notification to the sender, from `<>`.
    async fn notify(
        &self,
        meta: &MessageMeta,
        body: &[u8],
        recipients: &[usize],
        action: DsnAction,
    ) -> Result<(), QueueError> {
        let report = dsn::build(meta, body, recipients, action, &self.inner.config.hostname);
        let to = self.notification_recipients(&meta.from);
        let message = NewMessage {
            from: String::new(),
            // REQUIRETLS when the original had it (RFC 8689 §5).
            params: dsn::params(meta),
            recipients: to
                .iter()
                .map(|address| crate::message::NewRecipient {
                    address: address.clone(),
                    dsn: Default::default(),
                })
                .collect(),
            source: format!("dsn for {}", meta.id),
        };
        match self.enqueue(message, report).await {
            Ok(id) => {
                count(&self.inner.stats.notifications);
                let routed = (to.len() != 1 || to[0] != meta.from).then(|| to.join(", "));
                info!(dsn = %id, to = %meta.from, via = routed.as_deref(), action = ?action, recipients = recipients.len(), "notification queued");
                Ok(())
            }
            Err(e) => {
                warn!(error = %e, "cannot queue a delivery status notification; retrying later");
                Err(e)
            }
        }
    }

    /// The wait after attempt `attempts`, from `retry_intervals` (the last repeats),
    /// with up to 10% jitter so retries of many messages spread out.
    fn retry_delay(&self, id: QueueId, attempts: u32) -> u64 {
        let intervals = &self.inner.config.retry_intervals;
        let index = (attempts as usize)
            .saturating_sub(1)
            .min(intervals.len().saturating_sub(1));
        let base = intervals.get(index).map_or(300, Duration::as_secs).max(1);
        let spread = base / 10;
        let jitter = if spread == 0 {
            0
        } else {
            (id.0 ^ u64::from(attempts)).wrapping_mul(0x9E37_79B9_7F4A_7C15) % spread
        };
        base + jitter
    }
}

/// Awaits every future (a tiny join_all, to avoid a dependency for one call).
fn count(counter: &std::sync::atomic::AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A schedule with one low- and one high-priority message, due at 100 and 150.
    fn low_then_high(max_wait: Option<u64>) -> Schedule {
        let mut s = Schedule {
            max_wait,
            ..Schedule::default()
        };
        s.set_priority(QueueId(1), -5);
        s.insert_due(100, QueueId(1));
        s.set_priority(QueueId(2), 5);
        s.insert_due(150, QueueId(2));
        s
    }

    /// Priority first, until a message has been due `max_wait`: then it goes first.
    #[test]
    fn a_message_that_waited_long_enough_goes_before_higher_priorities() {
        let mut s = low_then_high(Some(60));
        assert_eq!(s.take_ready(155), Ok(QueueId(2)), "waited 55 s: priority");
        assert_eq!(s.take_ready(155), Ok(QueueId(1)));
        let mut s = low_then_high(Some(60));
        assert_eq!(s.take_ready(160), Ok(QueueId(1)), "waited 60 s");
        assert_eq!(s.take_ready(160), Ok(QueueId(2)));
        assert_eq!(s.take_ready(160), Err(None));
        let mut s = low_then_high(None);
        assert_eq!(s.take_ready(10_000), Ok(QueueId(2)), "no limit: priority");
    }

    /// A message that fell due while the queue was closed has waited since it opened:
    /// after a restart the backlog goes by priority until `max_wait` has passed.
    #[test]
    fn waiting_counts_from_when_the_queue_opened() {
        let mut s = low_then_high(Some(60));
        s.opened = 1_000;
        assert_eq!(s.take_ready(1_010), Ok(QueueId(2)), "both waited 10 s");
        let mut s = low_then_high(Some(60));
        s.opened = 1_000;
        assert_eq!(
            s.take_ready(1_060),
            Ok(QueueId(1)),
            "both waited 60 s: the first"
        );
        s.insert_due(2_000, QueueId(2));
        assert_eq!(s.take_ready(1_060), Err(Some(2_000)));
        assert!(s.ready.is_empty() && s.ready_since.is_empty());
    }

    /// A ready message taken off the schedule (rescheduled, held, deleted) is not
    /// started for having waited.
    #[test]
    fn a_message_taken_off_the_schedule_is_not_started() {
        // At 150 both are ready and the high one starts; the low one waits in ready.
        let mut s = low_then_high(Some(60));
        assert_eq!(s.take_ready(150), Ok(QueueId(2)));
        s.insert_due(1_000, QueueId(1));
        assert_eq!(s.take_ready(500), Err(Some(1_000)));
        assert!(s.ready.is_empty() && s.ready_since.is_empty());
        let mut s = low_then_high(Some(60));
        assert_eq!(s.take_ready(150), Ok(QueueId(2)));
        assert_eq!(s.remove_due(QueueId(1)), Some(100));
        assert_eq!(s.take_ready(10_000), Err(None));
        assert!(s.ready.is_empty() && s.ready_since.is_empty());
    }
}
