//! Group commit for Maildir deliveries (`[local] maildir_sync`): delivered files share
//! their durability calls, as the queue's bodies share one `fdatasync`.
//!
//! ```text
//!  delivery ─┐  file put in new/ (linked  ┌─▶ "batch": one syncfs(2) per file system
//!  delivery ─┼─▶ or renamed), no sync ─▶ ─┤
//!  delivery ─┘  (waits here while the     └─▶ "files": fdatasync each file, then one
//!               previous batch syncs)          fsync per distinct new/ directory
//!                                          then every delivery of the batch is answered
//! ```
//!
//! One thread (`maildir-sync`) takes every request waiting, makes all of them durable
//! with as few calls as it can, and answers each. A delivery may also hand it the
//! writing itself ([`store_then_sync`]): the thread then writes the files of every
//! request waiting, then syncs them all, so a delivery costs one hand-over between
//! threads, not two (one to a blocking thread to write, one to this one to sync). A delivery reports `Delivered` to the
//! queue only after that answer, so the queue forgets a message only once its files are
//! durable; a failed sync fails every delivery of the batch (the queue tries again). A
//! crash between the rename and the sync leaves a file in `new/` that may be torn: the
//! repeated delivery writes it again (see [`super::Maildir::deliver`]).
//!
//! `syncfs` reports the write-back errors of its file system since the descriptor it is
//! given was opened (Linux 5.8 and later), whichever file they hit. The batcher keeps
//! one descriptor per file system (keyed by `st_dev`), opened before the first file on
//! it is written, and counts the failures it saw: a delivery whose file was written
//! before a failure that another batch reported fails too (its pages may be the ones
//! that could not be written, and a later `syncfs` would not say so again).

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::time::Duration;

use serde::Deserialize;

/// `[local] maildir_sync_delay`'s default: a batch starts at most 5 ms after the
/// previous one started. Fewer, larger batches take less CPU per message, which the
/// sessions get (measured in docs/performance.md); a delivery is reported up to 5 ms
/// later.
pub const DEFAULT_DELAY: Duration = Duration::from_millis(5);

/// The longest `[local] maildir_sync_delay`.
pub const MAX_DELAY: Duration = Duration::from_secs(1);

/// The sync delay in force, in microseconds ([`set_delay`]).
static DELAY_MICROS: AtomicU64 = AtomicU64::new(5_000);

/// Sets how long after the previous sync started the next one may start at the
/// earliest (`[local] maildir_sync_delay`), for the batches of this process: the
/// deliveries that arrive meanwhile share it. Capped at [`MAX_DELAY`].
///
/// ```
/// mta_bin::delivery::maildir_sync::set_delay(std::time::Duration::from_millis(5));
/// ```
pub fn set_delay(delay: Duration) {
    let micros = u64::try_from(delay.min(MAX_DELAY).as_micros()).unwrap_or(u64::MAX);
    DELAY_MICROS.store(micros, Ordering::Relaxed);
}

/// How a Maildir delivery makes its file durable (`[local] maildir_sync`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MaildirSync {
    /// Deliveries share one `syncfs(2)` per batch and file system (default): the
    /// cheapest, but it also writes out whatever else is waiting on that file system.
    #[default]
    Batch,
    /// Deliveries share a batch: each file is `fdatasync`ed, each `new/` directory
    /// `fsync`ed once per batch; for a file system where others write much.
    Files,
    /// Each delivery on its own: the file `fsync`ed, renamed, `new/` `fsync`ed.
    Each,
}

/// What a delivery still has to make durable: files renamed into `new/` but not yet
/// synced. Wait for it with [`Pending::wait`] (or [`Pending::wait_blocking`]) before
/// telling anyone the message is delivered.
#[derive(Debug, Default)]
#[must_use = "a delivered file is durable only once its Pending is waited for"]
pub struct Pending {
    items: Vec<Unsynced>,
}

/// One file renamed into `new/`, not synced yet.
#[derive(Debug)]
struct Unsynced {
    /// The file's `new/` directory.
    dir: PathBuf,
    how: How,
}

#[derive(Debug)]
enum How {
    /// `syncfs` of this file system; `failures`: what its count of failed `syncfs`
    /// calls was before the file was written.
    Syncfs { device: Arc<Device>, failures: u64 },
    /// `fdatasync` of the file, `fsync` of its directory.
    Files { file: File },
}

impl Pending {
    /// Nothing to sync.
    pub fn none() -> Self {
        Self::default()
    }

    /// Whether there is nothing to sync.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Adds what `other` has to sync, so that both are waited for at once.
    pub fn extend(&mut self, other: Pending) {
        self.items.extend(other.items);
    }

    /// Waits until every file is durable (with those of other deliveries, on the shared
    /// batcher); the error of a failed sync.
    pub async fn wait(self) -> std::io::Result<()> {
        if self.items.is_empty() {
            return Ok(());
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        match Batcher::shared() {
            Some(batcher) => match batcher.submit(self.items, Reply::Async(tx)) {
                Ok(()) => rx.await.unwrap_or_else(|_| Err(stopped())),
                Err(items) => tokio::task::spawn_blocking(move || sync_alone(items))
                    .await
                    .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string()))),
            },
            None => tokio::task::spawn_blocking(move || sync_alone(self.items))
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string()))),
        }
    }

    /// [`Pending::wait`] for a thread that may block (not a task of a runtime).
    pub fn wait_blocking(self) -> std::io::Result<()> {
        if self.items.is_empty() {
            return Ok(());
        }
        let (tx, rx) = mpsc::sync_channel(1);
        match Batcher::shared() {
            Some(batcher) => match batcher.submit(self.items, Reply::Blocking(tx)) {
                Ok(()) => rx.recv().unwrap_or_else(|_| Err(stopped())),
                Err(items) => sync_alone(items),
            },
            None => sync_alone(self.items),
        }
    }
}

/// What a delivery notes before it writes its file, to sync the file once renamed.
pub(super) struct Watch {
    how: How,
}

impl Watch {
    /// Before `file` (just created, still empty) is written, for `mode`: keeps the
    /// descriptor to sync its file system by (`Batch`) or the file (`Files`).
    pub(super) fn start(mode: MaildirSync, file: &File, dir: &Path) -> std::io::Result<Self> {
        let how = match mode {
            MaildirSync::Batch if cfg!(target_os = "linux") => {
                let device = Device::of(file.metadata()?.dev(), dir)?;
                let failures = device.failures.load(Ordering::Acquire);
                How::Syncfs { device, failures }
            }
            MaildirSync::Batch | MaildirSync::Files | MaildirSync::Each => How::Files {
                file: file.try_clone()?,
            },
        };
        Ok(Self { how })
    }

    /// The file was renamed into `new`: what is left to do.
    pub(super) fn renamed(self, new: &Path) -> Pending {
        Pending {
            items: vec![Unsynced {
                dir: new.to_owned(),
                how: self.how,
            }],
        }
    }
}

/// One file system: the descriptor `syncfs` is called on, and how many of those calls
/// failed.
#[derive(Debug)]
struct Device {
    id: u64,
    fd: File,
    failures: AtomicU64,
}

impl Device {
    /// The file system `id`, opened at `dir` (on it) the first time.
    fn of(id: u64, dir: &Path) -> std::io::Result<Arc<Self>> {
        static DEVICES: OnceLock<Mutex<HashMap<u64, Arc<Device>>>> = OnceLock::new();
        let devices = DEVICES.get_or_init(Default::default);
        let mut devices = devices.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(device) = devices.get(&id) {
            return Ok(Arc::clone(device));
        }
        let device = Arc::new(Self {
            id,
            fd: File::open(dir)?,
            failures: AtomicU64::new(0),
        });
        devices.insert(id, Arc::clone(&device));
        Ok(device)
    }

    /// `syncfs(2)`; a failure is counted.
    fn sync(&self) -> std::io::Result<()> {
        #[cfg(target_os = "linux")]
        let result = nix::unistd::syncfs(&self.fd).map_err(std::io::Error::from);
        #[cfg(not(target_os = "linux"))]
        let result = self.fd.sync_all();
        if result.is_err() {
            self.failures.fetch_add(1, Ordering::AcqRel);
        }
        result
    }
}

/// The most files in one batch.
const MAX_BATCH: usize = 4096;

/// Where a request's answer goes.
enum Reply {
    Async(tokio::sync::oneshot::Sender<std::io::Result<()>>),
    Blocking(mpsc::SyncSender<std::io::Result<()>>),
}

impl Reply {
    fn send(self, result: std::io::Result<()>) {
        match self {
            Self::Async(tx) => {
                let _ = tx.send(result);
            }
            Self::Blocking(tx) => {
                let _ = tx.send(result);
            }
        }
    }
}

/// Work for the thread: files to sync, or files to write and then sync.
enum Request {
    Sync { items: Vec<Unsynced>, reply: Reply },
    Store(Box<dyn FnOnce() -> Stored + Send>),
}

/// What a [`Request::Store`] wrote: the files to sync, and what to do with the result.
struct Stored {
    items: Vec<Unsynced>,
    finish: Finish,
}

/// Answers a request with the result of its sync.
type Finish = Box<dyn FnOnce(std::io::Result<()>) + Send>;

/// Runs `store` (which writes files into Maildirs and returns what it found and what is
/// left to sync) on the sync thread, with the other deliveries waiting, then syncs its
/// files with theirs; returns what `store` returned and the result of the sync. Where
/// there is no sync thread, `store` runs on a blocking thread and syncs alone.
///
/// ```no_run
/// # async fn example(maildir: mta_bin::delivery::Maildir) {
/// use mta_bin::delivery::{Pending, store_then_sync};
/// let (written, synced) = store_then_sync(move || (1, Pending::none()))
///     .await
///     .expect("the store ran");
/// assert_eq!(written, 1);
/// synced.expect("durable");
/// # }
/// ```
pub async fn store_then_sync<T: Send + 'static>(
    store: impl FnOnce() -> (T, Pending) + Send + 'static,
) -> std::io::Result<(T, std::io::Result<()>)> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let work: Box<dyn FnOnce() -> Stored + Send> = Box::new(move || {
        let (value, pending) = store();
        Stored {
            items: pending.items,
            finish: Box::new(move |synced| {
                let _ = tx.send((value, synced));
            }),
        }
    });
    let submitted = match Batcher::shared() {
        Some(batcher) => batcher.send(Request::Store(work)),
        None => Err(Request::Store(work)),
    };
    if let Err(Request::Store(work)) = submitted {
        tokio::task::spawn_blocking(move || {
            let stored = work();
            let synced = sync_alone(stored.items);
            (stored.finish)(synced);
        })
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    }
    // Dropped without an answer: the work panicked.
    rx.await.map_err(|_| stopped())
}

/// The thread that syncs batches.
struct Batcher {
    tx: Mutex<mpsc::Sender<Request>>,
}

impl Batcher {
    /// The batcher of this process, started at first use; `None` when its thread
    /// cannot be started (each delivery then syncs on its own).
    fn shared() -> Option<&'static Self> {
        static BATCHER: OnceLock<Option<Batcher>> = OnceLock::new();
        BATCHER
            .get_or_init(|| {
                let (tx, rx) = mpsc::channel();
                let started = std::thread::Builder::new()
                    .name("maildir-sync".into())
                    .spawn(move || run(&rx));
                match started {
                    Ok(_) => Some(Self { tx: Mutex::new(tx) }),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot start the Maildir sync thread");
                        None
                    }
                }
            })
            .as_ref()
    }

    /// Hands `items` to the thread; gives them back when it is gone.
    fn submit(&self, items: Vec<Unsynced>, reply: Reply) -> Result<(), Vec<Unsynced>> {
        match self.send(Request::Sync { items, reply }) {
            Ok(()) => Ok(()),
            Err(Request::Sync { items, .. }) => Err(items),
            Err(Request::Store(_)) => Err(Vec::new()),
        }
    }

    /// Hands a request to the thread; gives it back when it is gone.
    fn send(&self, request: Request) -> Result<(), Request> {
        let tx = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        tx.send(request).map_err(|mpsc::SendError(request)| request)
    }
}

fn stopped() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::BrokenPipe,
        "the Maildir sync thread stopped",
    )
}

fn run(rx: &mpsc::Receiver<Request>) {
    let mut last = std::time::Instant::now();
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        // Deliveries arriving until then share this batch. Asleep, not waiting on the
        // channel: a delivery handing its request over then wakes nobody.
        let until = last + Duration::from_micros(DELAY_MICROS.load(Ordering::Relaxed));
        let left = until.saturating_duration_since(std::time::Instant::now());
        if !left.is_zero() {
            std::thread::sleep(left);
        }
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(request) => batch.push(request),
                Err(_) => break,
            }
        }
        let started = std::time::Instant::now();
        last = started;
        // Write what is to be written (a store that panics answers nobody: its
        // delivery sees the thread's answer dropped, and is tried again).
        let batch: Vec<(Vec<Unsynced>, Finish)> = batch
            .into_iter()
            .filter_map(|request| match request {
                Request::Sync { items, reply } => {
                    Some((items, Box::new(move |r| reply.send(r)) as Box<_>))
                }
                Request::Store(store) => {
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(store))
                        .ok()
                        .map(|stored| (stored.items, stored.finish))
                }
            })
            .collect();
        let count: usize = batch.iter().map(|(items, _)| items.len()).sum();
        let results = sync_batch(batch.iter().map(|(items, _)| items.as_slice()));
        tracing::debug!(
            requests = batch.len(),
            files = count,
            micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
            "maildir batch written and synced"
        );
        for ((_, finish), result) in batch.into_iter().zip(results) {
            finish(result);
        }
    }
}

/// Syncs one request's files on the caller's thread.
fn sync_alone(items: Vec<Unsynced>) -> std::io::Result<()> {
    sync_batch(std::iter::once(items.as_slice()))
        .pop()
        .unwrap_or(Ok(()))
}

/// Why a sync failed: the kind of the first error and what it says.
type Failure = (std::io::ErrorKind, String);

/// Makes every file of `requests` durable with as few calls as it can; the result of
/// each request.
fn sync_batch<'a>(
    requests: impl Iterator<Item = &'a [Unsynced]> + Clone,
) -> Vec<std::io::Result<()>> {
    let failure = |what: &str, e: std::io::Error| Some((e.kind(), format!("{what}: {e}")));
    // Each file's own fdatasync (in order: one result per file) and the directories;
    // one syncfs per file system; then one fsync per directory.
    let mut file_failed: Vec<Option<Failure>> = Vec::new();
    let mut devices: HashMap<u64, (&Device, Option<Failure>)> = HashMap::new();
    let mut dirs: HashMap<&Path, Option<Failure>> = HashMap::new();
    for item in requests.clone().flatten() {
        match &item.how {
            How::Syncfs { device, .. } => {
                devices.entry(device.id).or_insert((device, None));
                file_failed.push(None);
            }
            How::Files { file } => {
                let synced = nix::unistd::fdatasync(file).map_err(std::io::Error::from);
                file_failed.push(synced.err().and_then(|e| failure("fdatasync", e)));
                dirs.entry(item.dir.as_path()).or_insert(None);
            }
        }
    }
    for (device, failed) in devices.values_mut() {
        if let Err(e) = device.sync() {
            *failed = failure("syncfs", e);
        }
    }
    for (dir, failed) in &mut dirs {
        if let Err(e) = File::open(dir).and_then(|d| d.sync_all()) {
            *failed = failure(&format!("fsync of {}", dir.display()), e);
        }
    }
    let mut file_failed = file_failed.into_iter();
    requests
        .map(|items| {
            let mut first = None;
            for item in items {
                let own = file_failed.next().flatten();
                let failed = match &item.how {
                    How::Syncfs { device, failures } => devices
                        .get(&device.id)
                        .and_then(|(_, failed)| failed.clone())
                        .or_else(|| {
                            (device.failures.load(Ordering::Acquire) != *failures).then(|| {
                                (
                                    std::io::ErrorKind::Interrupted,
                                    "an earlier syncfs of its file system failed after the \
                                     file was written"
                                        .to_owned(),
                                )
                            })
                        }),
                    How::Files { .. } => {
                        own.or_else(|| dirs.get(item.dir.as_path()).cloned().flatten())
                    }
                };
                first = first.or(failed);
            }
            match first {
                None => Ok(()),
                Some((kind, why)) => Err(std::io::Error::new(
                    kind,
                    format!("cannot make the delivered file durable: {why}"),
                )),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::{MaildirSync, Pending, Watch};

    /// `[local] maildir_sync`: `batch` by default, `files` and `each` on request,
    /// anything else refused with the key's name.
    #[test]
    fn the_key_defaults_to_batch_and_refuses_other_words() {
        use crate::config::{Config, EMBEDDED_DEFAULT};
        let c = Config::parse(EMBEDDED_DEFAULT).unwrap();
        assert_eq!(c.local.maildir_sync, MaildirSync::Batch);
        for (word, mode) in [
            ("batch", MaildirSync::Batch),
            ("files", MaildirSync::Files),
            ("each", MaildirSync::Each),
        ] {
            let text = format!("{EMBEDDED_DEFAULT}maildir_sync = \"{word}\"\n");
            assert_eq!(Config::parse(&text).unwrap().local.maildir_sync, mode);
        }
        let text = format!("{EMBEDDED_DEFAULT}maildir_sync = \"never\"\n");
        let e = format!("{:#}", Config::parse(&text).unwrap_err());
        assert!(e.contains("maildir_sync"), "{e}");
    }

    /// A `syncfs` of the file system failed after a file was written (for another
    /// batch): that file's delivery fails too, even though its own `syncfs` succeeds;
    /// a file written after the failure is fine. (A device of the test's own, so that
    /// no other test's files see its failure.)
    #[test]
    fn a_failure_seen_by_another_batch_fails_the_files_written_before_it() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicU64, Ordering};

        use super::{Device, How, Unsynced, sync_alone};
        let dir = tempfile::tempdir().unwrap();
        let device = Arc::new(Device {
            id: u64::MAX,
            fd: std::fs::File::open(dir.path()).unwrap(),
            failures: AtomicU64::new(0),
        });
        let written = |name: &str| {
            std::fs::write(dir.path().join(name), b"x").unwrap();
            Unsynced {
                dir: dir.path().to_owned(),
                how: How::Syncfs {
                    device: Arc::clone(&device),
                    failures: device.failures.load(Ordering::Acquire),
                },
            }
        };
        let before = written("f");
        // As Device::sync counts a failed syncfs (of another batch).
        device.failures.fetch_add(1, Ordering::AcqRel);
        let after = written("g");
        let e = sync_alone(vec![before]).unwrap_err();
        assert!(e.to_string().contains("earlier syncfs"), "{e}");
        sync_alone(vec![after]).unwrap();
    }

    /// Files of several requests, in two directories, are synced in one batch and
    /// every request is answered; in every mode.
    #[test]
    fn every_request_of_a_batch_is_answered() {
        let dir = tempfile::tempdir().unwrap();
        for mode in [MaildirSync::Batch, MaildirSync::Files] {
            let mut waiting = Vec::new();
            for n in 0..8 {
                let new = dir.path().join(format!("{mode:?}{}", n % 2));
                std::fs::create_dir_all(&new).unwrap();
                let path = new.join(format!("f{n}"));
                let mut file = std::fs::File::create(&path).unwrap();
                let watch = Watch::start(mode, &file, &new).unwrap();
                file.write_all(b"x").unwrap();
                let pending: Pending = watch.renamed(&new);
                waiting.push(std::thread::spawn(move || pending.wait_blocking()));
            }
            for thread in waiting {
                thread.join().unwrap().unwrap();
            }
        }
        assert!(Pending::none().wait_blocking().is_ok());
    }
}
