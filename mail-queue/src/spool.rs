//! Message bodies and the queue's journal: append-only segment files, one fdatasync
//! per batch.
//!
//! Bodies never go into sled (sled 0.34 writes values above ~128 KiB to blob files it
//! never fsyncs). Each batch from the group committer, its bodies followed by one
//! journal record (the batch's metadata changes, see [`crate::journal`]), is appended to
//! the active segment with a single vectored `write` and made durable with a single
//! `fdatasync`. A segment is deleted when no live message points into it any more and
//! the store holds every journal record in it (it is before the store's durable mark).
//! After a restart writing starts in a fresh segment, so a torn tail from a crash is
//! never appended to.
//!
//! A large message that arrived in a file of its own (spilled there by the server as
//! it came, see [`crate::Queue::enqueue_spilled`]) becomes a segment by itself: the
//! file is linked into the spool and its record header written into the room left
//! free before its content, so its bytes are never copied. Bodies of 1 MiB and more
//! are read back mapped into memory, not copied into it.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{IoSlice, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use bytes::Bytes;

use crate::message::SpoolRef;
use crate::store::JournalMark;
use crate::{QueueError, QueueId};

/// A body record.
const MAGIC: &[u8; 4] = b"MQS1";
/// A journal record (its id field is 0).
const JOURNAL_MAGIC: &[u8; 4] = b"MQJ1";
/// magic, queue id, body length, CRC-32.
const HEADER_LEN: u64 = 4 + 8 + 8 + 4;
/// How far ahead of its end a segment's blocks are allocated.
const PREALLOCATE: u64 = 4 << 20;
/// The largest journal record replay accepts.
const MAX_JOURNAL_RECORD: u64 = 1 << 30;

/// Bodies this large or larger are mapped into memory when read, not copied into it.
const MAP_THRESHOLD: u64 = 1 << 20;

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
    /// Segments from this one on may hold journal records the store has not made
    /// durable: they are kept, even empty, until a sync of the store moves it on.
    keep_from: u64,
    /// Empty segments waiting for `keep_from` to pass them.
    doomed: Vec<u64>,
}

#[derive(Debug)]
struct Active {
    number: u64,
    file: File,
    len: u64,
    /// The file's blocks are allocated up to here (see [`preallocate`]).
    allocated: u64,
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
            keep_from: 0,
            doomed: Vec::new(),
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

    /// The number the next new segment gets.
    pub(crate) fn next_segment(&self) -> Result<u64, QueueError> {
        Ok(self
            .inner
            .lock()
            .map_err(|_| QueueError::Closed)?
            .next_segment)
    }

    /// Appends bodies (each given in parts, stored one after the other) followed by one
    /// journal record, made by `journal` from where the bodies go; makes them durable
    /// when `sync` is set (else the next sync does). Returns where each body is and the
    /// journal position after the record.
    pub(crate) fn append(
        &self,
        records: &[(QueueId, &[Bytes])],
        sync: bool,
        journal: impl FnOnce(&[SpoolRef]) -> Result<Vec<u8>, QueueError>,
    ) -> Result<(Vec<SpoolRef>, JournalMark), QueueError> {
        let mut inner = self.inner.lock().map_err(|_| QueueError::Closed)?;
        let size = |parts: &[Bytes]| parts.iter().map(|p| p.len() as u64).sum::<u64>();
        let batch: u64 = records.iter().map(|(_, b)| size(b) + HEADER_LEN).sum();
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
                self.drop_segment(&mut inner, old.number);
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
                allocated: 0,
            });
        }
        let Some(active) = inner.active.as_mut() else {
            return Err(QueueError::Closed);
        };
        if active.len + batch > active.allocated {
            let limit = self.max_segment.max(active.len + batch);
            active.allocated =
                preallocate(&active.file, active.allocated, active.len + batch, limit);
        }
        // The record headers; the bodies are written from where they are.
        let mut headers = Vec::with_capacity(records.len());
        let mut refs = Vec::with_capacity(records.len());
        let mut offset = active.len;
        for (id, parts) in records {
            let mut crc = crc32fast::Hasher::new();
            for part in *parts {
                crc.update(part);
            }
            let (crc, len) = (crc.finalize(), size(parts));
            headers.push(header(MAGIC, id.0, len, crc));
            refs.push(SpoolRef {
                segment: active.number,
                offset: offset + HEADER_LEN,
                len,
                crc,
            });
            offset += HEADER_LEN + len;
        }
        let payload = journal(&refs)?;
        let journal_header = header(
            JOURNAL_MAGIC,
            0,
            payload.len() as u64,
            crc32fast::hash(&payload),
        );
        offset += HEADER_LEN + payload.len() as u64;
        let mut slices = Vec::with_capacity(records.len() * 3 + 2);
        for ((_, parts), header) in records.iter().zip(&headers) {
            slices.push(IoSlice::new(header));
            slices.extend(parts.iter().map(|p| IoSlice::new(p)));
        }
        slices.push(IoSlice::new(&journal_header));
        slices.push(IoSlice::new(&payload));
        let written = offset - active.len;
        let result = write_all_vectored(&mut active.file, &mut slices).and_then(|()| {
            if sync {
                active.file.sync_data()
            } else {
                Ok(())
            }
        });
        if let Err(e) = result {
            // The segment's tail is now unknown: never write to it again. Nothing points
            // into it unless earlier batches do (a full disk refuses every batch into a
            // new segment: none may stay behind).
            let (number, empty) = (active.number, active.len == 0);
            inner.active = None;
            if empty {
                // No batch ever made it into this one: no journal record either.
                inner.live.remove(&number);
                let _ = fs::remove_file(self.path(number));
            } else if inner.live.get(&number).copied().unwrap_or(0) == 0 {
                self.drop_segment(&mut inner, number);
            }
            return Err(e.into());
        }
        active.len += written;
        let mark = JournalMark {
            segment: active.number,
            offset: active.len,
        };
        if !records.is_empty() {
            *inner.live.entry(mark.segment).or_default() += records.len() as u64;
        }
        Ok((refs, mark))
    }

    /// Deletes an empty segment, or keeps it until the store holds its journal records.
    fn drop_segment(&self, inner: &mut Inner, number: u64) {
        inner.live.remove(&number);
        if number < inner.keep_from {
            let _ = fs::remove_file(self.path(number));
        } else {
            inner.doomed.push(number);
        }
    }

    /// The store is durable up to `mark`: empty segments before it may go.
    pub(crate) fn checkpointed(&self, mark: JournalMark) {
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        inner.keep_from = inner.keep_from.max(mark.segment);
        let keep_from = inner.keep_from;
        let (gone, kept) = std::mem::take(&mut inner.doomed)
            .into_iter()
            .partition(|n| *n < keep_from);
        inner.doomed = kept;
        for number in gone {
            let _ = fs::remove_file(self.path(number));
        }
    }

    /// Calls `f` with each journal record from `from` on, in the order written, with the
    /// journal position after it; stops in each segment at the first record that is not
    /// whole (a torn tail: its batch was never acknowledged).
    pub(crate) fn replay(
        &self,
        from: JournalMark,
        mut f: impl FnMut(&[u8], JournalMark) -> Result<(), QueueError>,
    ) -> Result<usize, QueueError> {
        let mut numbers: Vec<u64> = fs::read_dir(&self.dir)?
            .filter_map(|e| segment_number(&e.ok()?.path()))
            .filter(|n| *n >= from.segment)
            .collect();
        numbers.sort_unstable();
        let mut records = 0;
        for number in numbers {
            let file = File::open(self.path(number))?;
            let end = file.metadata()?.len();
            let mut at = if number == from.segment {
                from.offset
            } else {
                0
            };
            let mut head = [0u8; HEADER_LEN as usize];
            while at + HEADER_LEN <= end && file.read_exact_at(&mut head, at).is_ok() {
                let len = u64::from_le_bytes(head[12..20].try_into().unwrap_or_default());
                let next = at.saturating_add(HEADER_LEN).saturating_add(len);
                if next > end {
                    break;
                }
                if &head[..4] == MAGIC {
                    at = next;
                    continue;
                }
                if &head[..4] != JOURNAL_MAGIC || len > MAX_JOURNAL_RECORD {
                    break;
                }
                let mut payload = vec![0; usize::try_from(len).unwrap_or(0)];
                file.read_exact_at(&mut payload, at + HEADER_LEN)?;
                let crc = u32::from_le_bytes(head[20..24].try_into().unwrap_or_default());
                if crc32fast::hash(&payload) != crc {
                    break;
                }
                f(
                    &payload,
                    JournalMark {
                        segment: number,
                        offset: next,
                    },
                )?;
                records += 1;
                at = next;
            }
        }
        Ok(records)
    }

    /// Makes the file at `path` (on the spool's filesystem) the segment of one message:
    /// `content` is its bytes from `offset` on, and `head` goes right before them, with
    /// the record header before that (`offset` must leave room for both). Durable when
    /// it returns.
    pub(crate) fn adopt(
        &self,
        id: QueueId,
        path: &Path,
        offset: u64,
        head: &[u8],
        content: &[u8],
    ) -> Result<SpoolRef, QueueError> {
        let start = offset
            .checked_sub(head.len() as u64 + HEADER_LEN)
            .ok_or_else(|| QueueError::Io(std::io::Error::other("no room before the content")))?;
        let number = {
            let mut inner = self.inner.lock().map_err(|_| QueueError::Closed)?;
            let number = inner.next_segment;
            inner.next_segment += 1;
            number
        };
        let segment = self.path(number);
        fs::hard_link(path, &segment)?;
        let written = (|| -> std::io::Result<SpoolRef> {
            let mut crc = crc32fast::Hasher::new();
            crc.update(head);
            crc.update(content);
            let (crc, len) = (crc.finalize(), (head.len() + content.len()) as u64);
            let mut record = Vec::with_capacity(HEADER_LEN as usize + head.len());
            record.extend_from_slice(&header(MAGIC, id.0, len, crc));
            record.extend_from_slice(head);
            let file = OpenOptions::new().write(true).open(&segment)?;
            file.write_all_at(&record, start)?;
            file.sync_data()?;
            // Its name must survive a crash as well as its contents.
            File::open(&self.dir)?.sync_all()?;
            Ok(SpoolRef {
                segment: number,
                offset: start + HEADER_LEN,
                len,
                crc,
            })
        })();
        match written {
            Ok(r) => {
                if let Ok(mut inner) = self.inner.lock() {
                    *inner.live.entry(number).or_default() += 1;
                }
                Ok(r)
            }
            Err(e) => {
                let _ = fs::remove_file(&segment);
                Err(e.into())
            }
        }
    }

    /// Reads a body and checks it against its checksum; a large one is mapped.
    pub(crate) fn read(&self, id: QueueId, r: &SpoolRef) -> Result<Bytes, QueueError> {
        let damaged = |_| QueueError::DamagedBody(id);
        let file = File::open(self.path(r.segment)).map_err(damaged)?;
        let body = if r.len >= MAP_THRESHOLD {
            // Past the file's end a mapping would fault when read.
            let end = file.metadata().map_err(damaged)?.len();
            if r.offset.checked_add(r.len).is_none_or(|e| e > end) {
                return Err(QueueError::DamagedBody(id));
            }
            Bytes::from_owner(map(&file, r.offset, r.len).map_err(damaged)?)
        } else {
            let len = usize::try_from(r.len).map_err(|_| QueueError::DamagedBody(id))?;
            let mut body = vec![0; len];
            file.read_exact_at(&mut body, r.offset).map_err(damaged)?;
            Bytes::from(body)
        };
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
            self.drop_segment(&mut inner, r.segment);
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
                if !active && n < inner.keep_from && inner.live.get(&n).copied().unwrap_or(0) == 0 {
                    fs::remove_file(&path)?;
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }
}

/// A record header: magic, queue id, length, CRC-32.
fn header(magic: &[u8; 4], id: u64, len: u64, crc: u32) -> [u8; HEADER_LEN as usize] {
    let mut header = [0u8; HEADER_LEN as usize];
    header[..4].copy_from_slice(magic);
    header[4..12].copy_from_slice(&id.to_le_bytes());
    header[12..20].copy_from_slice(&len.to_le_bytes());
    header[20..].copy_from_slice(&crc.to_le_bytes());
    header
}

/// Writes every slice, however the kernel splits the writes.
fn write_all_vectored(file: &mut File, mut slices: &mut [IoSlice<'_>]) -> std::io::Result<()> {
    IoSlice::advance_slices(&mut slices, 0);
    while !slices.is_empty() {
        match file.write_vectored(slices) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut slices, n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// `len` bytes of a segment file from `offset` on, mapped into memory, read-only.
#[allow(unsafe_code)]
fn map(file: &File, offset: u64, len: u64) -> std::io::Result<memmap2::Mmap> {
    let len = usize::try_from(len).map_err(std::io::Error::other)?;
    // SAFETY: the map is read-only and covers one record, which is never written to
    // after it is durable, nor truncated: a segment is only ever deleted, which leaves a
    // mapping intact. (The active segment's later batches go after it, outside the map.
    // Another process changing the spool under us would break this, as it would break
    // the checksums.)
    unsafe {
        memmap2::MmapOptions::new()
            .offset(offset)
            .len(len)
            .map(file)
    }
}

/// Allocates `file`'s blocks from `from` to [`PREALLOCATE`] past `end`, but not past
/// `limit` (the segment size), and returns the new end of the allocation; `u64::MAX`
/// when the filesystem cannot, so that this segment never asks again.
///
/// A batch then writes into blocks the file already has, inside its size: its
/// `fdatasync` has no block allocation and no size change to commit to the filesystem's
/// journal (ext4: 28% less CPU and 20% less time per 1 KB append and `fdatasync`,
/// `bench/servers/append_fdatasync.py`). The unwritten tail reads as zeros, where
/// replay stops as it does at a torn tail.
fn preallocate(file: &File, from: u64, end: u64, limit: u64) -> u64 {
    #[cfg(target_os = "linux")]
    {
        let to = end.saturating_add(PREALLOCATE).min(limit);
        let (Ok(offset), Ok(len)) = (i64::try_from(from), i64::try_from(to - from)) else {
            return u64::MAX;
        };
        match nix::fcntl::fallocate(file, nix::fcntl::FallocateFlags::empty(), offset, len) {
            Ok(()) => to,
            // Unsupported here, or no room for it (the batch itself may still fit).
            Err(_) => u64::MAX,
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (file, from, end, limit);
        u64::MAX
    }
}

fn segment_number(path: &Path) -> Option<u64> {
    let name = path.file_name()?.to_str()?;
    name.strip_suffix(".seg")?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Appends with an empty journal record and a sync; the store is taken as synced
    /// at once, so empty segments go as soon as nothing needs them.
    fn put(spool: &Spool, records: &[(QueueId, &[Bytes])]) -> Result<Vec<SpoolRef>, QueueError> {
        let (refs, mark) = spool.append(records, true, |_| Ok(Vec::new()))?;
        spool.checkpointed(mark);
        Ok(refs)
    }

    /// A body in one part.
    fn one(body: &[u8]) -> [Bytes; 1] {
        [Bytes::copy_from_slice(body)]
    }

    #[test]
    fn append_read_release() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 100).unwrap();
        let refs = put(
            &spool,
            &[(QueueId(1), &one(b"hello")), (QueueId(2), &one(b"world!"))],
        )
        .unwrap();
        assert_eq!(
            spool.read(QueueId(1), &refs[0]).unwrap(),
            b"hello".as_slice()
        );
        assert_eq!(
            spool.read(QueueId(2), &refs[1]).unwrap(),
            b"world!".as_slice()
        );
        // A batch that does not fit starts a new segment.
        let big = vec![b'x'; 200];
        let r3 = put(&spool, &[(QueueId(3), &one(&big))]).unwrap();
        let r4 = put(&spool, &[(QueueId(4), &one(b"next"))]).unwrap();
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
    fn segments_are_allocated_ahead_and_replay_stops_at_the_unwritten_tail() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 64 << 20).unwrap();
        let journal = |n: u8| move |_: &[SpoolRef]| Ok(vec![n; 10]);
        let (refs, _) = spool
            .append(&[(QueueId(1), &one(b"first"))], true, journal(1))
            .unwrap();
        let (_, mark) = spool
            .append(&[(QueueId(2), &one(b"second"))], true, journal(2))
            .unwrap();
        let size = fs::metadata(spool.path(refs[0].segment)).unwrap().len();
        if cfg!(target_os = "linux") {
            // (tmpfs and ext4 allocate; a filesystem that cannot leaves the size as is.)
            assert!(size > mark.offset, "{size} <= {}", mark.offset);
        }
        let mut seen = Vec::new();
        let start = JournalMark {
            segment: refs[0].segment,
            offset: 0,
        };
        let n = spool
            .replay(start, |record, at| {
                seen.push((record.to_vec(), at));
                Ok(())
            })
            .unwrap();
        assert_eq!(n, 2, "two records, then the zeros of the allocated tail");
        assert_eq!(seen[1], (vec![2; 10], mark));
        // A large body is mapped by its own range, and one that would run past the
        // file's end is refused, not mapped.
        let big = vec![b'b'; MAP_THRESHOLD as usize + 1];
        let (big_refs, _) = spool
            .append(&[(QueueId(3), &one(&big))], true, journal(3))
            .unwrap();
        assert_eq!(spool.read(QueueId(3), &big_refs[0]).unwrap(), big);
        let mut past = big_refs[0];
        past.offset = fs::metadata(spool.path(past.segment)).unwrap().len();
        assert!(matches!(
            spool.read(QueueId(3), &past),
            Err(QueueError::DamagedBody(_))
        ));
    }

    #[test]
    fn a_retired_segment_that_is_already_empty_is_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 10).unwrap();
        let r1 = put(&spool, &[(QueueId(1), &one(b"first message"))]).unwrap()[0];
        // Delivered while its segment is still the active one: the segment stays.
        spool.release(&r1);
        assert!(spool.path(r1.segment).exists());
        // The next batch does not fit: a new segment starts and the empty one goes.
        let r2 = put(&spool, &[(QueueId(2), &one(b"second"))]).unwrap()[0];
        assert_ne!(r1.segment, r2.segment);
        assert!(
            !spool.path(r1.segment).exists(),
            "no segment outlives its messages"
        );
        assert_eq!(spool.read(QueueId(2), &r2).unwrap(), b"second".as_slice());
    }

    #[test]
    fn parts_are_stored_as_one_body_and_large_ones_read_mapped() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 1 << 30).unwrap();
        let big = vec![b'x'; (MAP_THRESHOLD + 10) as usize];
        let parts = [
            Bytes::from_static(b"Received: x\r\n"),
            Bytes::from(big.clone()),
        ];
        let r = put(&spool, &[(QueueId(7), &parts)]).unwrap()[0];
        let body = spool.read(QueueId(7), &r).unwrap();
        assert_eq!(body.len(), big.len() + 13);
        assert!(body.starts_with(b"Received: x\r\nxxx") && body.ends_with(b"xxx"));
    }

    #[test]
    fn an_adopted_file_becomes_a_segment_with_its_head_in_front() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(&dir.path().join("spool"), 1 << 20).unwrap();
        let incoming = dir.path().join("incoming");
        let content = b"Subject: big\r\n\r\nbody\r\n";
        std::fs::write(&incoming, [vec![0; 100], content.to_vec()].concat()).unwrap();
        let head = b"Received: by us\r\n";
        let r = spool
            .adopt(QueueId(9), &incoming, 100, head, content)
            .unwrap();
        std::fs::remove_file(&incoming).unwrap();
        let body = spool.read(QueueId(9), &r).unwrap();
        assert_eq!(body, [head.as_slice(), content].concat());
        assert!(
            spool
                .adopt(QueueId(10), &dir.path().join("x"), 10, head, content)
                .is_err()
        );
        spool.release(&r);
        assert!(
            spool.path(r.segment).exists(),
            "kept until the store has synced past it"
        );
        spool.checkpointed(JournalMark {
            segment: r.segment + 1,
            offset: 0,
        });
        assert!(!spool.path(r.segment).exists());
    }

    #[test]
    fn reopen_starts_a_new_segment_and_sweeps() {
        let dir = tempfile::tempdir().unwrap();
        let r = {
            let spool = Spool::open(dir.path(), 1 << 20).unwrap();
            put(&spool, &[(QueueId(1), &one(b"a"))]).unwrap()[0]
        };
        let spool = Spool::open(dir.path(), 1 << 20).unwrap();
        let r2 = put(&spool, &[(QueueId(2), &one(b"b"))]).unwrap()[0];
        assert!(r2.segment > r.segment);
        assert_eq!(
            spool.sweep().unwrap(),
            1,
            "the old segment has no live message"
        );
        assert_eq!(spool.read(QueueId(2), &r2).unwrap(), b"b".as_slice());
    }
}
