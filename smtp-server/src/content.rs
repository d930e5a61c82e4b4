//! Message content as the data stage sees it: in memory, or in the file it was spilled
//! to as it arrived, mapped into memory, so that a large message costs the server a
//! bounded amount of memory whatever its size.
//!
//! ```text
//!  DATA/BDAT bytes ─▶ ServerSession (decodes) ─▶ in memory, up to max_message_memory
//!                                                 │ (and while the server-wide budget,
//!                                                 │  max_total_message_memory, lasts)
//!                                                 ▼ beyond
//!                                          spill file in ServerConfig::spill, written
//!                                          as it arrives ─▶ mapped for the data stage
//! ```

use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use tokio::io::{AsyncSeekExt, AsyncWriteExt};

/// Where message content goes once it outgrows memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpillConfig {
    /// A directory for one file per large message (the queue's own, so that it can take
    /// the file over without copying it). Files left there by a crash are the queue's
    /// to clean up.
    pub dir: PathBuf,
    /// Bytes left free at the start of each file, before the content (a hole: no disk
    /// space), for whoever takes it over to write in front of it.
    pub reserve: u64,
}

/// A message's content, cheap to clone: in memory, or a spill file mapped into memory.
/// It derefs to the bytes.
///
/// ```
/// use smtp_server::Content;
/// let content = Content::from(b"Subject: hi\r\n\r\nhello\r\n".to_vec());
/// assert!(content.starts_with(b"Subject"));
/// assert!(content.spilled().is_none());
/// ```
#[derive(Clone, Default)]
pub struct Content {
    bytes: Bytes,
    spilled: Option<Arc<SpillFile>>,
}

impl Content {
    /// The content as `Bytes` (cheap to clone; a slice of the mapped file when spilled).
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// The file the content was spilled to, and where in it the content starts, when it
    /// was: the file lives as long as a clone of this value does.
    pub fn spilled(&self) -> Option<(&Path, u64)> {
        self.spilled.as_ref().map(|f| (f.path.as_path(), f.offset))
    }
}

impl From<Vec<u8>> for Content {
    fn from(bytes: Vec<u8>) -> Self {
        Self {
            bytes: Bytes::from(bytes),
            spilled: None,
        }
    }
}

impl From<Bytes> for Content {
    fn from(bytes: Bytes) -> Self {
        Self {
            bytes,
            spilled: None,
        }
    }
}

impl std::ops::Deref for Content {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.bytes
    }
}

impl AsRef<[u8]> for Content {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

impl fmt::Debug for Content {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.spilled {
            Some(file) => write!(
                f,
                "Content({} bytes in {})",
                self.len(),
                file.path.display()
            ),
            None => write!(f, "Content({} bytes)", self.len()),
        }
    }
}

/// A spill file: removed when the last content that uses it is dropped.
#[derive(Debug)]
struct SpillFile {
    path: PathBuf,
    offset: u64,
}

impl Drop for SpillFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A message's content being written to its spill file as it arrives.
pub(crate) struct Spilling {
    file: tokio::fs::File,
    guard: SpillFile,
    written: u64,
}

static SPILL_NUMBERS: AtomicU64 = AtomicU64::new(0);

impl Spilling {
    /// A new file in `config.dir`, positioned after the reserve.
    pub(crate) async fn create(config: &SpillConfig, session: u64) -> std::io::Result<Self> {
        let n = SPILL_NUMBERS.fetch_add(1, Ordering::Relaxed);
        let path = config
            .dir
            .join(format!("{}.{session}.{n}", std::process::id()));
        let mut options = tokio::fs::OpenOptions::new();
        options.read(true).write(true).create_new(true);
        #[cfg(unix)]
        options.mode(0o600);
        let mut file = options.open(&path).await?;
        let guard = SpillFile {
            path,
            offset: config.reserve,
        };
        file.seek(std::io::SeekFrom::Start(config.reserve)).await?;
        Ok(Self {
            file,
            guard,
            written: 0,
        })
    }

    /// Appends content.
    pub(crate) async fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.file.write_all(bytes).await?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// The whole content, mapped.
    pub(crate) async fn finish(mut self) -> std::io::Result<Content> {
        self.file.flush().await?;
        if self.written == 0 {
            // Nothing to map (a map cannot be empty).
            return Ok(Content {
                bytes: Bytes::new(),
                spilled: Some(Arc::new(self.guard)),
            });
        }
        let file = self.file.into_std().await;
        let offset = self.guard.offset;
        let map = tokio::task::spawn_blocking(move || map(&file, offset))
            .await
            .map_err(std::io::Error::other)??;
        Ok(Content {
            bytes: Bytes::from_owner(map),
            spilled: Some(Arc::new(self.guard)),
        })
    }
}

/// The content of a spill file (from `offset` on) mapped into memory, read-only.
#[allow(unsafe_code)]
fn map(file: &File, offset: u64) -> std::io::Result<memmap2::Mmap> {
    // SAFETY: the map is read-only, and the file is ours: made by this process with
    // create_new and mode 0600 in the spill directory, and written completely before
    // it is mapped. Its content is never written to or truncated after: whoever takes
    // the file over writes only into the reserve before `offset`, which is not mapped.
    unsafe { memmap2::MmapOptions::new().offset(offset).map(file) }
}
