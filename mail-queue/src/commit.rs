//! Group commit: one thread makes batches of messages durable with one spool
//! `fdatasync`, however many sessions are waiting.
//!
//! ```text
//!  session ─┐                       ┌─▶ spool: append all bodies and one journal
//!  session ─┼─▶ channel ─▶ committer ┤         record of the metadata, fdatasync once
//!  session ─┘   (jobs wait here       └─▶ store: apply the metadata (no sync), then
//!                while the previous            wake every waiter of the batch
//!                batch is fsyncing)
//! ```
//!
//! While one batch is being synced, new jobs queue up in the channel; the next batch
//! takes all of them. Under load the batch grows by itself, so the cost of an fsync is
//! shared by as many messages as arrive during one fsync. The store itself is synced
//! every [`SYNC_INTERVAL`] (and when the queue closes); until then the journal in the
//! spool holds its changes (see [`crate::journal`]).
//!
//! Forgetting a delivered message ([`Job::Forget`]) waits for nobody: it rides along
//! with the next batch, or is written on its own (without a sync) after
//! [`FORGET_DELAY`] when no other job comes. Until the store's next sync a crash only
//! means the message is delivered again (a Maildir delivery notices; see
//! `docs/durability.md`). Its spool space is released after that sync.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::journal;
use crate::spool::Spool;
use crate::store::{Change, JournalMark, QueueStore};
use crate::{MessageMeta, QueueError, QueueId, SpoolRef};

/// The most jobs in one batch.
const MAX_BATCH: usize = 1024;

/// How long a [`Job::Forget`] waits for company before it is committed alone.
pub(crate) const FORGET_DELAY: Duration = Duration::from_millis(50);

/// How often the store is synced while it has changes the journal alone holds.
pub(crate) const SYNC_INTERVAL: Duration = Duration::from_secs(1);

pub(crate) enum Job {
    /// Store the body, then the metadata.
    Enqueue {
        meta: Box<MessageMeta>,
        body: JobBody,
        done: oneshot::Sender<Result<MessageMeta, QueueError>>,
    },
    /// Metadata changes only.
    Update {
        changes: Vec<Change>,
        done: oneshot::Sender<Result<(), QueueError>>,
    },
    /// Remove a finished message, then release its spool space; nobody waits for it.
    Forget { id: QueueId, spool: SpoolRef },
}

/// The body of a new message.
pub(crate) enum JobBody {
    /// To append to the spool, in parts (stored one after the other).
    Parts(Vec<bytes::Bytes>),
    /// In the spool already, durable, where `meta.spool` says.
    Stored,
}

impl Job {
    fn is_forget(&self) -> bool {
        matches!(self, Self::Forget { .. })
    }
}

/// Counters of the committer.
#[derive(Debug, Default)]
pub struct CommitStats {
    /// Batches committed.
    pub batches: AtomicU64,
    /// Jobs committed.
    pub jobs: AtomicU64,
    /// Syncs of the metadata store.
    pub store_syncs: AtomicU64,
}

#[derive(Debug)]
pub(crate) struct Committer {
    tx: Option<mpsc::Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
    pub(crate) stats: Arc<CommitStats>,
}

impl Drop for Committer {
    /// Lets the thread finish the jobs already submitted, and waits for it, so the store
    /// is closed (and its lock released) when the queue is dropped.
    fn drop(&mut self) {
        self.tx = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Committer {
    /// Starts the thread; `mark` is where the journal continues (from
    /// [`crate::journal::recover`]).
    pub(crate) fn start(
        spool: Arc<Spool>,
        store: Arc<dyn QueueStore>,
        mark: JournalMark,
    ) -> Result<Self, QueueError> {
        let (tx, rx) = mpsc::channel();
        let stats = Arc::new(CommitStats::default());
        let thread_stats = Arc::clone(&stats);
        let thread = std::thread::Builder::new()
            .name("queue-commit".into())
            .spawn(move || {
                let mut state = StoreState {
                    store: store.as_ref(),
                    spool: &spool,
                    mark,
                    unsynced: false,
                    last_sync: Instant::now(),
                    to_release: Vec::new(),
                    stats: &thread_stats,
                };
                run(&rx, &mut state);
                state.sync();
            })?;
        Ok(Self {
            tx: Some(tx),
            thread: Some(thread),
            stats,
        })
    }

    pub(crate) fn submit(&self, job: Job) -> Result<(), QueueError> {
        let tx = self.tx.as_ref().ok_or(QueueError::Closed)?;
        tx.send(job).map_err(|_| QueueError::Closed)
    }
}

/// What the committer knows about the store between batches.
struct StoreState<'a> {
    store: &'a dyn QueueStore,
    spool: &'a Spool,
    /// The journal position after the last batch applied.
    mark: JournalMark,
    /// Whether changes were applied since the last sync.
    unsynced: bool,
    last_sync: Instant,
    /// Spool places of forgotten messages, released once their removal is synced.
    to_release: Vec<SpoolRef>,
    stats: &'a CommitStats,
}

impl StoreState<'_> {
    /// Syncs the store if it has changes the journal alone holds; then the journal
    /// before the mark, and the bodies of forgotten messages, may go.
    fn sync(&mut self) {
        if !self.unsynced {
            return;
        }
        let started = Instant::now();
        match self.store.sync() {
            Ok(()) => {
                self.unsynced = false;
                self.last_sync = Instant::now();
                self.stats.store_syncs.fetch_add(1, Ordering::Relaxed);
                self.spool.checkpointed(self.mark);
                for place in self.to_release.drain(..) {
                    self.spool.release(&place);
                }
                tracing::debug!(
                    micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
                    "queue store synced"
                );
            }
            // The journal still holds everything: try again at the next interval.
            Err(e) => {
                self.last_sync = Instant::now();
                tracing::warn!(error = %e, "queue store sync failed");
            }
        }
    }

    /// How long the committer may wait for a job before the store is due for a sync.
    fn until_sync(&self) -> Option<Duration> {
        self.unsynced
            .then(|| SYNC_INTERVAL.saturating_sub(self.last_sync.elapsed()))
    }
}

fn run(rx: &mpsc::Receiver<Job>, state: &mut StoreState<'_>) {
    // Removals whose commit failed: tried again with the next batch.
    let mut carried: Vec<Job> = Vec::new();
    loop {
        let mut jobs = std::mem::take(&mut carried);
        if jobs.is_empty() {
            let next = match state.until_sync() {
                Some(wait) => rx.recv_timeout(wait).map_err(|e| match e {
                    mpsc::RecvTimeoutError::Timeout => None,
                    mpsc::RecvTimeoutError::Disconnected => Some(()),
                }),
                None => rx.recv().map_err(|_| Some(())),
            };
            match next {
                Ok(first) => jobs.push(first),
                Err(None) => {
                    state.sync();
                    continue;
                }
                Err(Some(())) => break,
            }
        }
        drain(rx, &mut jobs);
        // Only removals: give other jobs a moment to come and share the commit.
        let deadline = Instant::now() + FORGET_DELAY;
        while jobs.iter().all(Job::is_forget) && jobs.len() < MAX_BATCH {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(job) => {
                    jobs.push(job);
                    drain(rx, &mut jobs);
                }
                Err(_) => break,
            }
        }
        let started = Instant::now();
        let result = commit_batch(&mut jobs, state.spool, state.store);
        // How long one batch takes is how long a session waits for its `250` at most
        // twice (the batch in progress, then its own): `docs/performance.md`.
        tracing::debug!(
            jobs = jobs.len(),
            micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
            ok = result.is_ok(),
            "queue batch committed"
        );
        state.stats.batches.fetch_add(1, Ordering::Relaxed);
        state
            .stats
            .jobs
            .fetch_add(jobs.len() as u64, Ordering::Relaxed);
        if let Ok(mark) = result {
            state.mark = mark;
            state.unsynced = true;
        }
        for job in jobs {
            match job {
                Job::Enqueue { meta, done, .. } => {
                    let _ = done.send(result.as_ref().map(|_| *meta).map_err(same_error));
                }
                Job::Update { done, .. } => {
                    let _ = done.send(result.as_ref().map(|_| ()).map_err(same_error));
                }
                Job::Forget { spool: place, .. } if result.is_ok() => state.to_release.push(place),
                forget @ Job::Forget { .. } => carried.push(forget),
            }
        }
        if state.until_sync() == Some(Duration::ZERO) {
            state.sync();
        }
        if !carried.is_empty() {
            // The spool is failing (a full disk?): do not spin on it, and stop with the
            // queue (the messages are delivered again after a restart).
            std::thread::sleep(Duration::from_secs(1));
            match rx.try_recv() {
                Ok(job) => carried.push(job),
                Err(mpsc::TryRecvError::Disconnected) => break,
                Err(mpsc::TryRecvError::Empty) => {}
            }
        }
    }
}

/// Adds every job already waiting, up to a batch.
fn drain(rx: &mpsc::Receiver<Job>, jobs: &mut Vec<Job>) {
    while jobs.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(job) => jobs.push(job),
            Err(_) => break,
        }
    }
}

/// Writes the bodies and the journal record of all metadata (synced unless the batch
/// only forgets), then applies the metadata to the store; fills in each message's spool
/// place. Returns the journal position after the batch.
fn commit_batch(
    jobs: &mut [Job],
    spool: &Spool,
    store: &dyn QueueStore,
) -> Result<JournalMark, QueueError> {
    let bodies: Vec<(QueueId, Vec<bytes::Bytes>)> = jobs
        .iter()
        .filter_map(|j| match j {
            Job::Enqueue {
                meta,
                body: JobBody::Parts(parts),
                ..
            } => Some((meta.id, parts.clone())),
            Job::Enqueue { .. } | Job::Update { .. } | Job::Forget { .. } => None,
        })
        .collect();
    let records: Vec<(QueueId, &[bytes::Bytes])> = bodies
        .iter()
        .map(|(id, parts)| (*id, parts.as_slice()))
        .collect();
    let sync = !jobs.iter().all(Job::is_forget);
    let mut changes = Vec::with_capacity(jobs.len());
    let appended = spool.append(&records, sync, |refs| {
        let mut refs = refs.iter();
        for job in jobs.iter_mut() {
            match job {
                Job::Enqueue { meta, body, .. } => {
                    if matches!(body, JobBody::Parts(_))
                        && let Some(r) = refs.next()
                    {
                        meta.spool = *r;
                    }
                    changes.push(Change::Put((**meta).clone()));
                }
                Job::Update { changes: c, .. } => changes.extend(c.iter().cloned()),
                Job::Forget { id, .. } => changes.push(Change::Remove(*id)),
            }
        }
        journal::encode(&changes)
    });
    let mark = match appended {
        Ok((_, mark)) => mark,
        Err(e) => {
            // Nothing will point to the bodies already stored: let them go.
            for job in jobs.iter() {
                if let Job::Enqueue {
                    meta,
                    body: JobBody::Stored,
                    ..
                } = job
                {
                    spool.release(&meta.spool);
                }
            }
            return Err(e);
        }
    };
    if let Err(e) = store.apply(&changes, mark) {
        // The batch is refused (`451`), so nothing will point to its bodies. Its journal
        // record is durable, though: if the store takes it at the next start, the
        // client's retry makes a duplicate, never a loss.
        for job in jobs.iter() {
            if let Job::Enqueue { meta, .. } = job {
                spool.release(&meta.spool);
            }
        }
        return Err(e);
    }
    Ok(mark)
}

/// Every waiter of a failed batch gets the error (an OS error keeps its code, so a full
/// disk is still recognised; other errors keep their text and their causes').
fn same_error(e: &QueueError) -> QueueError {
    let io = match e {
        QueueError::Io(io) => match io.raw_os_error() {
            Some(code) => std::io::Error::from_raw_os_error(code),
            None => std::io::Error::new(io.kind(), io.to_string()),
        },
        other => {
            let mut text = other.to_string();
            let mut cause = std::error::Error::source(other);
            while let Some(c) = cause {
                text.push_str(&format!(": {c}"));
                cause = c.source();
            }
            std::io::Error::other(text)
        }
    };
    QueueError::Io(io)
}
