//! Where log lines go: a writer thread that wakes every [`FLUSH_INTERVAL`] and writes
//! every line waiting with one `write`, so that logging a line costs a session a copy
//! into a channel, never a system call or a wake-up of another thread.
//!
//! tracing-appender's writer thread sleeps on its channel, so each line woke it: with
//! one client at a time, two lines per message cost about a tenth of the server's CPU
//! (`docs/performance.md`). Here nothing wakes the thread but its clock; a line waits
//! at most about [`FLUSH_INTERVAL`]. Nothing is dropped: when [`CAPACITY`] lines are
//! waiting, a session blocks until the thread has written them.

pub mod text;

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Duration;

/// How often waiting lines are written.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(20);

/// Lines that may wait before a session blocks.
pub const CAPACITY: usize = 65_536;

/// Gives each event a [`LineWriter`] (a `tracing_subscriber` `MakeWriter`).
#[derive(Clone, Debug)]
pub struct LogWriter {
    tx: mpsc::SyncSender<Vec<u8>>,
}

/// Collects one event's text and hands it to the thread when dropped.
#[derive(Debug)]
pub struct LineWriter {
    line: Vec<u8>,
    tx: mpsc::SyncSender<Vec<u8>>,
}

impl Write for LineWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.line.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        if !self.line.is_empty() {
            let _ = self.tx.send(std::mem::take(&mut self.line));
        }
    }
}

/// The text layer's lines go to the thread as they are: one channel send, no copy.
impl text::LineSink for LogWriter {
    fn write_line(&self, line: Vec<u8>) {
        let _ = self.tx.send(line);
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LineWriter;

    fn make_writer(&'a self) -> LineWriter {
        LineWriter {
            line: Vec::new(),
            tx: self.tx.clone(),
        }
    }
}

/// Stops the thread when dropped, once it has written every line.
#[derive(Debug)]
pub struct LogGuard {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}

/// Starts the thread writing to `out` (the error: the thread could not be started).
///
/// ```
/// use std::io::Write;
/// let (writer, guard) = mta_bin::log_writer::start(std::io::sink()).unwrap();
/// let mut line = tracing_subscriber::fmt::MakeWriter::make_writer(&writer);
/// line.write_all(b"written within 20 ms\n").unwrap();
/// drop(line);
/// drop(guard); // writes what is left
/// ```
pub fn start(out: impl Write + Send + 'static) -> std::io::Result<(LogWriter, LogGuard)> {
    let (tx, rx) = mpsc::sync_channel::<Vec<u8>>(CAPACITY);
    let stop = Arc::new(AtomicBool::new(false));
    let stopping = Arc::clone(&stop);
    let thread = std::thread::Builder::new()
        .name("log-writer".into())
        .spawn(move || {
            let mut out = std::io::BufWriter::with_capacity(1 << 16, out);
            loop {
                let stopped = stopping.load(Ordering::Acquire);
                while let Ok(line) = rx.try_recv() {
                    let _ = out.write_all(&line);
                }
                let _ = out.flush();
                if stopped {
                    return;
                }
                std::thread::park_timeout(FLUSH_INTERVAL);
            }
        })?;
    let guard = LogGuard {
        stop,
        thread: Some(thread),
    };
    Ok((LogWriter { tx }, guard))
}
