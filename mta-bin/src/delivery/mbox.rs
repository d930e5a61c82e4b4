//! mbox delivery: mail for `user@domain` is appended to the file `<root>/<domain>/<user>`.
//!
//! Each message starts with a `From <envelope sender> <asctime date>` line (the sender
//! `MAILER-DAEMON` for a bounce), gets `Return-Path:` and `Delivered-To:` first, has LF
//! line endings, and ends with a blank line. Body lines are quoted as mboxrd does: a line
//! matching `^>*From ` gets one more `>`, so a reader can undo it exactly.
//!
//! Locking, as mutt, Dovecot and procmail expect: a dot-lock `<mbox>.lock` created with
//! `O_EXCL` (one older than [`STALE_DOTLOCK`] is removed as stale), then an `fcntl` write
//! lock on the whole file; both are waited for up to [`LOCK_TIMEOUT`] and released after
//! writing. The file is fsynced before the delivery is reported; a failure (a lock not
//! obtained in time, a full disk) is temporary, the queue retries, and what was half
//! written is cut off again. A missing mbox is created with mode 0600.
//!
//! Sub-addressing resolves as for Maildir (`user+tag@` is `user`'s mbox); folders do
//! not apply. A delivery that completed just before a crash (before the queue noted it)
//! is appended again when the queue retries: mbox has no name to recognise it by.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use mail_queue::MessageMeta;
use nix::fcntl::{FcntlArg, fcntl};
use nix::libc;

use super::maildir::{LineEndings, Maildir, Recipient};

/// How long a delivery waits for the dot-lock and the `fcntl` lock together.
pub(super) const LOCK_TIMEOUT: Duration = Duration::from_secs(30);
/// A dot-lock not changed for this long is stale and removed (as mutt and Dovecot do).
pub(super) const STALE_DOTLOCK: Duration = Duration::from_secs(5 * 60);
/// Between two attempts to take a lock.
const LOCK_POLL: Duration = Duration::from_millis(50);

/// Delivers into mbox files under `root`.
#[derive(Debug, Clone)]
pub struct Mbox {
    /// Resolves recipients (sub-addressing) and names the files, as for Maildir.
    names: Maildir,
}

impl Mbox {
    /// Delivery under `root`: `<root>/<domain>/<user>`.
    pub fn new(root: PathBuf) -> Self {
        Self {
            names: Maildir::new(root, "", LineEndings::Lf),
        }
    }

    /// Sub-addressing: `user<d>tag@domain` goes to `user`'s mbox, where `<d>` is one of
    /// the characters of `delimiters` (empty: off).
    pub fn subaddressing(mut self, delimiters: &str) -> Self {
        self.names = self
            .names
            .subaddressing(delimiters, super::SubaddressFolder::Off);
        self
    }

    /// Where mail for `address` goes, or `None` when it is no mailbox here (see
    /// [`Maildir::recipient`]).
    pub fn recipient(&self, address: &str, known: Option<&HashSet<String>>) -> Option<Recipient> {
        self.names.recipient(address, known)
    }

    /// The mbox file of a mailbox, or an error for names that cannot be a file.
    pub fn path(&self, mailbox: &str) -> Result<PathBuf, String> {
        self.names.folder(mailbox)
    }

    /// Appends one message for `address` as received (it goes into `Delivered-To:`) to
    /// the mbox of `recipient`, and fsyncs it.
    pub fn deliver(
        &self,
        message: &MessageMeta,
        address: &str,
        recipient: &Recipient,
        body: &[u8],
    ) -> std::io::Result<()> {
        let path = self
            .path(&recipient.mailbox)
            .map_err(std::io::Error::other)?;
        if let Some(parent) = path.parent()
            && !parent.is_dir()
        {
            fs::create_dir_all(parent)?;
        }
        let deadline = Instant::now() + LOCK_TIMEOUT;
        let _dotlock = DotLock::acquire(&path, deadline)?;
        let mut file = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&path)?;
        lock_fcntl(&file, deadline)?;
        let start = file.metadata()?.len();
        let result = (|| {
            let head = format!(
                "{}Return-Path: <{}>\nDelivered-To: {address}\n",
                from_line(&message.from, SystemTime::now()),
                message.from
            );
            let mut out = BufWriter::with_capacity(64 * 1024, &mut file);
            out.write_all(head.as_bytes())?;
            write_mboxrd(&mut out, body)?;
            out.write_all(b"\n")?;
            out.flush()?;
            drop(out);
            file.sync_all()
        })();
        if result.is_err() {
            // Cut off what was half written; the queue retries.
            let _ = file.set_len(start).and_then(|()| file.sync_all());
        }
        let _ = unlock_fcntl(&file);
        result
    }
}

/// The `From ` line that starts a message: `From <sender> <asctime date in UTC>\n`, with
/// `MAILER-DAEMON` for the null sender (and any white space of the sender as `_`).
pub(super) fn from_line(sender: &str, when: SystemTime) -> String {
    let sender = if sender.is_empty() {
        "MAILER-DAEMON".to_owned()
    } else {
        sender.replace(|c: char| c.is_whitespace(), "_")
    };
    format!("From {sender} {}\n", smtp_proto::asctime_date(when))
}

/// Writes `bytes` with CRLF as LF and each line matching `^>*From ` quoted with one more
/// `>` (mboxrd); the last line gets an LF if it has none.
pub(super) fn write_mboxrd(out: &mut impl Write, bytes: &[u8]) -> std::io::Result<()> {
    let mut rest = bytes;
    while !rest.is_empty() {
        let (line, next) = match memchr::memchr(b'\n', rest) {
            Some(lf) => (&rest[..lf], &rest[lf + 1..]),
            None => (rest, &[][..]),
        };
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let unquoted = &line[line.iter().take_while(|&&b| b == b'>').count()..];
        if unquoted.starts_with(b"From ") {
            out.write_all(b">")?;
        }
        out.write_all(line)?;
        out.write_all(b"\n")?;
        rest = next;
    }
    Ok(())
}

/// `<mbox>.lock`, created with `O_EXCL`, removed when dropped.
struct DotLock(PathBuf);

impl DotLock {
    fn acquire(mbox: &Path, deadline: Instant) -> std::io::Result<Self> {
        let mut name = mbox.as_os_str().to_owned();
        name.push(".lock");
        let path = PathBuf::from(name);
        loop {
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
            {
                Ok(_) => return Ok(Self(path)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let stale = fs::metadata(&path)
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|t| t.elapsed().ok())
                        .is_some_and(|age| age > STALE_DOTLOCK);
                    if stale {
                        tracing::warn!(lock = %path.display(), "removing a stale mbox dot-lock");
                        let _ = fs::remove_file(&path);
                        continue;
                    }
                }
                Err(e) => return Err(e),
            }
            if Instant::now() >= deadline {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("{} is locked", path.display()),
                ));
            }
            std::thread::sleep(LOCK_POLL);
        }
    }
}

impl Drop for DotLock {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

fn flock(kind: libc::c_int) -> libc::flock {
    // l_start and l_len 0: the whole file.
    libc::flock {
        l_type: kind as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: 0,
        l_len: 0,
        l_pid: 0,
    }
}

/// Takes an `fcntl` write lock on the whole file, waiting until `deadline`.
fn lock_fcntl(file: &File, deadline: Instant) -> std::io::Result<()> {
    let lock = flock(libc::F_WRLCK);
    loop {
        match fcntl(file.as_fd(), FcntlArg::F_SETLK(&lock)) {
            Ok(_) => return Ok(()),
            Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EACCES)
            | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
        if Instant::now() >= deadline {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the mbox is locked (fcntl)",
            ));
        }
        std::thread::sleep(LOCK_POLL);
    }
}

fn unlock_fcntl(file: &File) -> std::io::Result<()> {
    let lock = flock(libc::F_UNLCK);
    fcntl(file.as_fd(), FcntlArg::F_SETLK(&lock))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::{from_line, write_mboxrd};

    fn asctime(secs: u64) -> String {
        smtp_proto::asctime_date(UNIX_EPOCH + Duration::from_secs(secs))
    }

    fn quoted(text: &str) -> String {
        let mut out = Vec::new();
        write_mboxrd(&mut out, text.as_bytes()).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn from_lines_get_one_more_quote() {
        assert_eq!(
            quoted("Subject: x\r\n\r\nFrom me\r\n>From you\r\n>>From them\r\n"),
            "Subject: x\n\n>From me\n>>From you\n>>>From them\n"
        );
        // Only `From ` with a space, at the start of a line, after nothing but `>`.
        assert_eq!(
            quoted("From\r\nFromage\r\n x From y\r\n> From z\r\nfrom a\r\n"),
            "From\nFromage\n x From y\n> From z\nfrom a\n"
        );
        // A last line without an end gets one; a lone CR stays.
        assert_eq!(quoted("a\rb\r\nFrom c"), "a\rb\n>From c\n");
        assert_eq!(quoted(""), "");
    }

    #[test]
    fn the_from_line_has_the_sender_and_an_asctime_date() {
        assert_eq!(asctime(0), "Thu Jan  1 00:00:00 1970");
        assert_eq!(asctime(1_796_545_208), "Sun Dec  6 08:20:08 2026");
        assert_eq!(asctime(951_782_400), "Tue Feb 29 00:00:00 2000");
        let when = UNIX_EPOCH + Duration::from_secs(1_796_545_208);
        assert_eq!(
            from_line("me@client.test", when),
            "From me@client.test Sun Dec  6 08:20:08 2026\n"
        );
        assert_eq!(
            from_line("", when),
            "From MAILER-DAEMON Sun Dec  6 08:20:08 2026\n"
        );
        assert_eq!(
            from_line("\"a b\"@x.test", when),
            "From \"a_b\"@x.test Sun Dec  6 08:20:08 2026\n"
        );
    }
}
