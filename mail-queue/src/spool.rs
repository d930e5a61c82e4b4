//! Message bodies: append-only segment files, one fdatasync per batch.
//!
//! Bodies never go into sled (sled 0.34 writes values above ~128 KiB to blob files it
//! never fsyncs). Each batch of bodies from the group committer is appended to the
//! active segment with a single `write` and made durable with a single `fdatasync`.
//! A segment is deleted when no live message points into it any more. After a restart
//! writing starts in a fresh segment, so a torn tail from a crash is never appended to.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::message::SpoolRef;
use crate::{QueueError, QueueId};

const MAGIC: &[u8; 4] = b"MQS1";
/// magic, queue id, body length, CRC-32.
const HEADER_LEN: u64 = 4 + 8 + 8 + 4;

/// The body store.
#[derive(Debug)]
pub(crate) struct Spool {
    dir: PathBuf,
    max_segment: u64,
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    active: Option<Active>,
    next_segment: u64,
    /// Live messages per segment.
    live: HashMap<u64, u64>,
}

#[derive(Debug)]
struct Active {
    number: u64,
    file: File,
    len: u64,
}

impl Spool {
    /// Opens (creating) the spool directory.
    pub(crate) fn open(dir: &Path, max_segment: u64) -> Result<Self, QueueError> {
        fs::create_dir_all(dir)?;
        let mut next_segment = 1;
        for entry in fs::read_dir(dir)? {
            if let Some(n) = segment_number(&entry?.path()) {
                next_segment = next_segment.max(n + 1);
            }
        }
        let inner = Inner {
            active: None,
            next_segment,
            live: HashMap::new(),
        };
        Ok(Self {
            dir: dir.to_owned(),
            max_segment,
            inner: Mutex::new(inner),
        })
    }

    fn path(&self, number: u64) -> PathBuf {
        self.dir.join(format!("{number:010}.seg"))
    }

    /// Appends bodies and makes them durable; returns where each one is.
    pub(crate) fn append(&self, records: &[(QueueId, &[u8])]) -> Result<Vec<SpoolRef>, QueueError> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let mut inner = self.inner.lock().map_err(|_| QueueError::Closed)?;
        let batch: u64 = records
            .iter()
            .map(|(_, b)| b.len() as u64 + HEADER_LEN)
            .sum();
        let rotate = inner
            .active
            .as_ref()
            .is_none_or(|a| a.len > 0 && a.len + batch > self.max_segment);
        if rotate {
            // The segment being retired may already be empty: every message in it was
            // delivered while it was still being written to.
            if let Some(old) = inner.active.take()
                && inner.live.get(&old.number).copied().unwrap_or(0) == 0
            {
                inner.live.remove(&old.number);
                let _ = fs::remove_file(self.path(old.number));
            }
            let number = inner.next_segment;
            inner.next_segment += 1;
            let file = OpenOptions::new()
                .create_new(true)
                .write(true)
                .open(self.path(number))?;
            // The new file's name must survive a crash as well as its contents.
            if let Err(e) = File::open(&self.dir).and_then(|d| d.sync_all()) {
                let _ = fs::remove_file(self.path(number));
                return Err(e.into());
            }
            inner.active = Some(Active {
                number,
                file,
                len: 0,
            });
        }
        let Some(active) = inner.active.as_mut() else {
            return Err(QueueError::Closed);
        };
        let total: usize = records
            .iter()
            .map(|(_, b)| b.len() + HEADER_LEN as usize)
            .sum();
        let mut buf = Vec::with_capacity(total);
        let mut refs = Vec::with_capacity(records.len());
        for (id, body) in records {
            let crc = crc32fast::hash(body);
            buf.extend_from_slice(MAGIC);
            buf.extend_from_slice(&id.0.to_le_bytes());
            buf.extend_from_slice(&(body.len() as u64).to_le_bytes());
            buf.extend_from_slice(&crc.to_le_bytes());
            let offset = active.len + buf.len() as u64;
            buf.extend_from_slice(body);
            refs.push(SpoolRef {
                segment: active.number,
                offset,
                len: body.len() as u64,
                crc,
            });
        }
        let result = active
            .file
            .write_all(&buf)
            .and_then(|()| active.file.sync_data());
        if let Err(e) = result {
            // The segment's tail is now unknown: never write to it again. Nothing points
            // into it unless earlier batches do (a full disk refuses every batch into a
            // new segment: none may stay behind).
            let number = active.number;
            inner.active = None;
            if inner.live.get(&number).copied().unwrap_or(0) == 0 {
                inner.live.remove(&number);
                let _ = fs::remove_file(self.path(number));
            }
            return Err(e.into());
        }
        active.len += buf.len() as u64;
        let number = active.number;
        *inner.live.entry(number).or_default() += records.len() as u64;
        Ok(refs)
    }

    /// Reads a body and checks it against its checksum.
    pub(crate) fn read(&self, id: QueueId, r: &SpoolRef) -> Result<Vec<u8>, QueueError> {
        let file = File::open(self.path(r.segment)).map_err(|_| QueueError::DamagedBody(id))?;
        let len = usize::try_from(r.len).map_err(|_| QueueError::DamagedBody(id))?;
        let mut body = vec![0; len];
        file.read_exact_at(&mut body, r.offset)
            .map_err(|_| QueueError::DamagedBody(id))?;
        if crc32fast::hash(&body) != r.crc {
            return Err(QueueError::DamagedBody(id));
        }
        Ok(body)
    }

    /// Counts a message found at recovery as live.
    pub(crate) fn retain(&self, r: &SpoolRef) {
        if let Ok(mut inner) = self.inner.lock() {
            *inner.live.entry(r.segment).or_default() += 1;
        }
    }

    /// A message is gone: its segment may go when nothing else lives in it.
    pub(crate) fn release(&self, r: &SpoolRef) {
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        let active = inner.active.as_ref().is_some_and(|a| a.number == r.segment);
        let count = inner.live.entry(r.segment).or_default();
        *count = count.saturating_sub(1);
        if *count == 0 && !active {
            inner.live.remove(&r.segment);
            let _ = fs::remove_file(self.path(r.segment));
        }
    }

    /// Deletes segments no live message points into (after recovery).
    pub(crate) fn sweep(&self) -> Result<usize, QueueError> {
        let inner = self.inner.lock().map_err(|_| QueueError::Closed)?;
        let mut removed = 0;
        for entry in fs::read_dir(&self.dir)? {
            let path = entry?.path();
            if let Some(n) = segment_number(&path) {
                let active = inner.active.as_ref().is_some_and(|a| a.number == n);
                if !active && inner.live.get(&n).copied().unwrap_or(0) == 0 {
                    fs::remove_file(&path)?;
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }
}

fn segment_number(path: &Path) -> Option<u64> {
    let name = path.file_name()?.to_str()?;
    name.strip_suffix(".seg")?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_read_release() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 100).unwrap();
        let refs = spool
            .append(&[(QueueId(1), b"hello"), (QueueId(2), b"world!")])
            .unwrap();
        assert_eq!(spool.read(QueueId(1), &refs[0]).unwrap(), b"hello");
        assert_eq!(spool.read(QueueId(2), &refs[1]).unwrap(), b"world!");
        // A batch that does not fit starts a new segment.
        let big = vec![b'x'; 200];
        let r3 = spool.append(&[(QueueId(3), &big)]).unwrap();
        let r4 = spool.append(&[(QueueId(4), b"next")]).unwrap();
        assert_ne!(refs[0].segment, r3[0].segment);
        assert_ne!(r3[0].segment, r4[0].segment);
        spool.release(&refs[0]);
        assert!(
            spool.path(refs[0].segment).exists(),
            "a live message remains in segment 1"
        );
        spool.release(&refs[1]);
        assert!(
            !spool.path(refs[0].segment).exists(),
            "empty segment deleted"
        );
        spool.release(&r3[0]);
        assert!(!spool.path(r3[0].segment).exists());
        // Damage is detected.
        let mut bad = r4[0];
        bad.crc ^= 1;
        assert!(matches!(
            spool.read(QueueId(4), &bad),
            Err(QueueError::DamagedBody(_))
        ));
    }

    #[test]
    fn a_retired_segment_that_is_already_empty_is_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 10).unwrap();
        let r1 = spool.append(&[(QueueId(1), b"first message")]).unwrap()[0];
        // Delivered while its segment is still the active one: the segment stays.
        spool.release(&r1);
        assert!(spool.path(r1.segment).exists());
        // The next batch does not fit: a new segment starts and the empty one goes.
        let r2 = spool.append(&[(QueueId(2), b"second")]).unwrap()[0];
        assert_ne!(r1.segment, r2.segment);
        assert!(
            !spool.path(r1.segment).exists(),
            "no segment outlives its messages"
        );
        assert_eq!(spool.read(QueueId(2), &r2).unwrap(), b"second");
    }

    #[test]
    fn reopen_starts_a_new_segment_and_sweeps() {
        let dir = tempfile::tempdir().unwrap();
        let r = {
            let spool = Spool::open(dir.path(), 1 << 20).unwrap();
            spool.append(&[(QueueId(1), b"a")]).unwrap()[0]
        };
        let spool = Spool::open(dir.path(), 1 << 20).unwrap();
        let r2 = spool.append(&[(QueueId(2), b"b")]).unwrap()[0];
        assert!(r2.segment > r.segment);
        assert_eq!(
            spool.sweep().unwrap(),
            1,
            "the old segment has no live message"
        );
        assert_eq!(spool.read(QueueId(2), &r2).unwrap(), b"b");
    }
}
