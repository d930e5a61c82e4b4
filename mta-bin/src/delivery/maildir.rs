//! Maildir delivery: `<root>/<domain>/<local-part>/{tmp,new,cur}`.
//!
//! The file is written unnamed in `new/` (`O_TMPFILE`) and linked there under its name,
//! so that it appears complete, as the `tmp/` convention intends, without an entry made
//! and removed in `tmp/`; where the file system has no unnamed files, it is written in
//! `tmp/` and renamed into `new/`. It is made durable before the delivery is reported,
//! so a delivered message survives a crash: by a `syncfs` shared with the other
//! deliveries of its batch (`[local] maildir_sync = "batch"`, the default; see
//! [`super::maildir_sync`]), by an `fdatasync` of each file and one `fsync` per `new/`
//! of the batch (`"files"`), or on its own (`"each"`: the file fsynced before the link
//! or rename, `new/` after). Its name is derived from the queue id and the recipient
//! (`<received>.Q<id>R<n>.<host>,S=<size>,W=<size with CRLF>`): if the queue retries a
//! delivery that had completed just before a crash, the file is already there (the
//! first attempt on a message this process accepted does not look for it:
//! [`Maildir::store_first`]). In `new/` it may be torn (linked, never synced, then the
//! power went), so it is written again over itself, not counted again in
//! `maildirsize`; in `cur/` (read) it is left alone.
//!
//! Lines end in LF, as Postfix's local and virtual delivery, Dovecot and the tools that
//! read Maildir store them (the queue keeps the wire form, CRLF; delivery converts);
//! `maildir_line_endings = "crlf"` keeps CRLF. `S=` is the size of the file, `W=` its
//! size with CRLF line endings (what IMAP reports as `RFC822.SIZE`), as Dovecot reads
//! them. The conversion is one pass over the message, which gives both sizes: up to
//! 1 MiB, into a buffer its thread keeps for the next one, written in one call; a
//! larger message is counted first, then converted piece by piece as it is written.
//! With CRLF, the message is written from where it is (no copy).
//!
//! Sub-addressing (`[local] recipient_delimiter`): mail for `user+tag@domain` goes to
//! `user`'s Maildir and, with `subaddress_folder`, into its Maildir++ folder `.tag`
//! (`<root>/<domain>/<user>/.tag/{tmp,new,cur}`, as Dovecot names it) when that exists
//! (`existing`) or always (`create`); a tag that is no safe folder name goes to INBOX.
//!
//! Quotas (`[local.quota]`, see [`super::quota`]): a mailbox with a limit is checked
//! before its message is written (under the Maildir's lock, so that two deliveries do
//! not both take the last room), and its `maildirsize` gets the message's line after.
//! A message that does not fit fails for now ([`std::io::ErrorKind::QuotaExceeded`]):
//! the queue tries again, and its lifetime ends the attempts with a bounce. A Maildir
//! without a limit still gets its line when it has a `maildirsize` (Dovecot's, say).

use std::cell::Cell;
use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{IoSlice, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use mail_queue::MessageMeta;
use serde::Deserialize;
use smtp_proto::{ForwardPath, Host};
use smtp_server::filters::LocalRecipients;

use super::maildir_sync::{MaildirSync, Pending, Watch};
use super::quota::{self, BoxLock, Limits, Quotas};

/// How lines end in delivered files.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LineEndings {
    /// LF, as Postfix, Dovecot and mail readers store Maildir files (default).
    #[default]
    Lf,
    /// CRLF, the message exactly as it came over SMTP.
    Crlf,
}

/// Where mail for `user+tag@domain` goes in `user`'s Maildir.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SubaddressFolder {
    /// INBOX (default).
    #[default]
    Off,
    /// The folder `.tag` when it exists, else INBOX.
    Existing,
    /// The folder `.tag`, made when missing (Dovecot's `lda_mailbox_autocreate`).
    Create,
}

/// Where one recipient's mail goes: a mailbox (`user@domain`) and the tag of a
/// sub-address (`user+tag@domain`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recipient {
    /// The mailbox whose Maildir the mail goes to.
    pub mailbox: String,
    /// The sub-address tag, if the address had one.
    pub tag: Option<String>,
}

/// Delivers into Maildirs under `root`.
#[derive(Debug, Clone)]
pub struct Maildir {
    root: PathBuf,
    hostname: String,
    line_endings: LineEndings,
    delimiters: String,
    subaddress_folder: SubaddressFolder,
    quotas: Option<Arc<Quotas>>,
    sync: MaildirSync,
    /// Set once the file system refused an unnamed file (`O_TMPFILE`) or its link:
    /// new files are then written in `tmp/` and renamed.
    unnamed_refused: Arc<AtomicBool>,
}

impl Maildir {
    /// Delivery under `root`; `hostname` goes into file names.
    pub fn new(root: PathBuf, hostname: &str, line_endings: LineEndings) -> Self {
        // Maildir names may not contain '/' or ':', and ',' starts the size fields
        // (written \057, \072 and \054).
        let hostname = hostname
            .replace('/', "\\057")
            .replace(':', "\\072")
            .replace(',', "\\054");
        Self {
            root,
            hostname,
            line_endings,
            delimiters: String::new(),
            subaddress_folder: SubaddressFolder::Off,
            quotas: None,
            sync: MaildirSync::default(),
            unnamed_refused: Arc::new(AtomicBool::new(!cfg!(target_os = "linux"))),
        }
    }

    /// Mailbox quotas (`None`: none, the default).
    pub fn quotas(mut self, quotas: Option<Arc<Quotas>>) -> Self {
        self.quotas = quotas;
        self
    }

    /// The limits of `mailbox` and the grace of its byte limit, or `None` when it has
    /// no limit.
    pub fn limits(&self, mailbox: &str) -> Option<(Limits, u64)> {
        let quotas = self.quotas.as_deref()?;
        let limits = quotas.limits(mailbox);
        (!limits.is_none()).then(|| (limits, quotas.grace(limits)))
    }

    /// The two header fields a delivery adds above the message, each ending in CRLF.
    pub fn head(sender: &str, address: &str) -> String {
        format!("Return-Path: <{sender}>\r\nDelivered-To: {address}\r\n")
    }

    /// The size of the file a message made of `parts` (in wire form, CRLF) is stored
    /// as: its `,S=` and what quotas count.
    pub fn stored_size(&self, parts: &[&[u8]]) -> u64 {
        let wire: u64 = parts.iter().map(|p| p.len() as u64).sum();
        match self.line_endings {
            LineEndings::Crlf => wire,
            LineEndings::Lf => {
                let crlf: u64 = parts.iter().map(|p| count_lf(p).1).sum();
                wire - crlf
            }
        }
    }

    /// Sub-addressing: `user<d>tag@domain` goes to `user`'s Maildir, where `<d>` is one
    /// of the characters of `delimiters` (empty: off), and into the folder `.tag` as
    /// `folder` says.
    pub fn subaddressing(mut self, delimiters: &str, folder: SubaddressFolder) -> Self {
        delimiters.clone_into(&mut self.delimiters);
        self.subaddress_folder = folder;
        self
    }

    /// Where mail for `address` goes, or `None` when it is no mailbox here. With `known`
    /// (lower-cased full addresses), only those, `postmaster` and `abuse` are mailboxes;
    /// an address that is itself one is not split. Without, any address is.
    pub fn recipient(&self, address: &str, known: Option<&HashSet<String>>) -> Option<Recipient> {
        let is_known = |a: &str| known.is_none_or(|k| is_known(k, a));
        if known.is_some() && is_known(address) {
            return Some(Recipient {
                mailbox: address.to_owned(),
                tag: None,
            });
        }
        let split = address.rsplit_once('@').and_then(|(local, domain)| {
            let (user, tag) =
                LocalRecipients::split_subaddress(local.trim_matches('"'), &self.delimiters)?;
            Some((format!("{user}@{domain}"), tag))
        });
        match split {
            Some((mailbox, tag)) if is_known(&mailbox) => Some(Recipient {
                mailbox,
                tag: Some(tag.to_owned()),
            }),
            _ => is_known(address).then(|| Recipient {
                mailbox: address.to_owned(),
                tag: None,
            }),
        }
    }

    /// The Maildir of an address, or an error for names that cannot be a directory.
    pub fn folder(&self, address: &str) -> Result<PathBuf, String> {
        let (local, domain) = address.rsplit_once('@').ok_or("no domain")?;
        let local = local.trim_matches('"').to_lowercase();
        let domain = domain.to_lowercase();
        for part in [&local, &domain] {
            if part.is_empty() || part.starts_with('.') || part.contains(['/', '\\', '\0']) {
                return Err(format!(
                    "cannot deliver to {address:?}: not a safe folder name"
                ));
            }
        }
        Ok(self.root.join(domain).join(local))
    }

    /// How delivered files are made durable (default [`MaildirSync::Batch`]).
    pub fn sync(mut self, mode: MaildirSync) -> Self {
        self.sync = mode;
        self
    }

    /// What [`Maildir::sync`] set.
    pub fn sync_mode(&self) -> MaildirSync {
        self.sync
    }

    /// Delivers one recipient, `address` as received (it goes into `Delivered-To:`), to
    /// `recipient` (see [`Maildir::recipient`]), and returns once the file is durable;
    /// `Ok(false)` when it was already delivered (its file was in `new/`, and was written
    /// again, or in `cur/`). [`Maildir::store`] without the wait, for a caller that
    /// waits for several deliveries at once.
    ///
    /// ```
    /// use mail_queue::{MessageMeta, QueueId, SpoolRef};
    /// use mta_bin::delivery::{LineEndings, Maildir, Recipient};
    /// let root = tempfile::tempdir()?;
    /// let maildir = Maildir::new(root.path().into(), "mx.test", LineEndings::Lf);
    /// let message = MessageMeta {
    ///     id: QueueId(7),
    ///     received: 1_700_000_000,
    ///     from: "ann@a.test".into(),
    ///     params: Default::default(),
    ///     source: "example".into(),
    ///     recipients: Vec::new(),
    ///     spool: SpoolRef::default(),
    ///     attempts: 0,
    ///     next_attempt: 0,
    ///     last_error: None,
    ///     delay_warned: false,
    /// };
    /// let bob = Recipient { mailbox: "bob@b.test".into(), tag: None };
    /// let body = b"Subject: hi\r\n\r\nHello\r\n";
    /// assert!(maildir.deliver(&message, 0, "bob@b.test", &bob, body)?);
    /// // The queue tried again (a crash before it recorded the delivery): not twice.
    /// assert!(!maildir.deliver(&message, 0, "bob@b.test", &bob, body)?);
    /// assert_eq!(std::fs::read_dir(root.path().join("b.test/bob/new"))?.count(), 1);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn deliver(
        &self,
        message: &MessageMeta,
        index: usize,
        address: &str,
        recipient: &Recipient,
        body: &[u8],
    ) -> std::io::Result<bool> {
        let (stored, pending) = self.store(message, index, address, recipient, body)?;
        pending.wait_blocking()?;
        Ok(stored == Stored::Written)
    }

    /// Delivers as [`Maildir::deliver`] does, but does not wait for the sync
    /// ([`MaildirSync::Batch`] and [`MaildirSync::Files`]): the file is in `new/`, and
    /// the message is delivered only once the returned [`Pending`] was waited for
    /// (with `Each`, it is empty: the file is durable already).
    ///
    /// A file already in `new/` (a repeated delivery: the queue did not learn of the
    /// first, or its sync failed) may have been renamed but never synced before a
    /// crash, and be torn: it is written again, replaced atomically, and not counted
    /// again in `maildirsize`. A file in `cur/` (read already) is left as it is.
    pub fn store(
        &self,
        message: &MessageMeta,
        index: usize,
        address: &str,
        recipient: &Recipient,
        body: &[u8],
    ) -> std::io::Result<(Stored, Pending)> {
        self.store_as(message, index, address, recipient, body, false)
    }

    /// [`Maildir::store`] for the first attempt on a message this process accepted
    /// ([`mail_queue::DeliveryRequest::first_attempt`]): nothing of it can be in the
    /// Maildir yet, so it does not look for an earlier copy in `new/` and `cur/` (two
    /// path lookups fewer). Should a file of its name be in `new/` all the same, putting
    /// the new file in place finds it, and replaces it as a repeated delivery does.
    pub fn store_first(
        &self,
        message: &MessageMeta,
        index: usize,
        address: &str,
        recipient: &Recipient,
        body: &[u8],
    ) -> std::io::Result<(Stored, Pending)> {
        self.store_as(message, index, address, recipient, body, true)
    }

    /// [`Maildir::store`]; `first`: see [`Maildir::store_first`].
    fn store_as(
        &self,
        message: &MessageMeta,
        index: usize,
        address: &str,
        recipient: &Recipient,
        body: &[u8],
        first: bool,
    ) -> std::io::Result<(Stored, Pending)> {
        let inbox = self
            .folder(&recipient.mailbox)
            .map_err(std::io::Error::other)?;
        let subfolder = recipient
            .tag
            .as_deref()
            .and_then(folder_name)
            .map(|name| inbox.join(name))
            .filter(|sub| match self.subaddress_folder {
                SubaddressFolder::Off => false,
                SubaddressFolder::Existing => sub.is_dir(),
                SubaddressFolder::Create => true,
            });
        let folder = subfolder.as_ref().unwrap_or(&inbox);
        // The two fields we add, then the message, with its line endings as stored: one
        // pass over the body, which gives the sizes too.
        let head = Self::head(&message.from, address);
        let mut scratch = Scratch::take();
        let content = self.content(head.as_bytes(), body, &mut scratch.0);
        let (size, crlf_size) = (content.size, content.crlf_size);
        let name = format!(
            "{}.Q{}R{index}.{},S={size},W={crlf_size}",
            message.received, message.id, self.hostname
        );
        let (tmp, new, cur) = (folder.join("tmp"), folder.join("new"), folder.join("cur"));
        let final_path = new.join(&name);
        // A first attempt cannot find an earlier copy: it does not look.
        let mut again = !first && final_path.exists();
        if !first && !again && read_already(&cur, &name) {
            return Ok((Stored::Seen, Pending::none()));
        }
        let tmp_path = tmp.join(&name);
        let create = || {
            OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp_path)
        };
        let make_folder = || -> std::io::Result<()> {
            // A folder's Maildir (INBOX) first, then the folder, with the empty file
            // `maildirfolder` that marks a Maildir++ folder.
            let mut dirs = Vec::new();
            if subfolder.is_some() {
                dirs.extend(["tmp", "new", "cur"].map(|d| inbox.join(d)));
            }
            dirs.extend([tmp.clone(), new.clone(), cur.clone()]);
            for dir in &dirs {
                if !dir.is_dir() {
                    fs::create_dir_all(dir)?;
                    sync_dir(dir.parent().unwrap_or(dir))?;
                }
            }
            if subfolder.is_some() && !folder.join("maildirfolder").exists() {
                File::create(folder.join("maildirfolder"))?;
                sync_dir(folder)?;
            }
            Ok(())
        };
        // A repeated delivery was counted and checked the first time.
        let limits = self.limits(&recipient.mailbox).filter(|_| !again);
        let lock = match limits {
            None => None,
            Some((limits, grace)) => {
                if !inbox.is_dir() {
                    make_folder()?;
                }
                let lock = BoxLock::acquire(&inbox, quota::LOCK_TIMEOUT)?;
                let usage = quota::usage(&inbox, limits, Some(&lock))?;
                if !limits.fits(usage, size, grace) {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::QuotaExceeded,
                        format!(
                            "<{address}>: mailbox full (it holds {} bytes in {} messages; \
                             its limits: {}; this message: {size} bytes)",
                            usage.bytes,
                            usage.messages,
                            limits.header()
                        ),
                    ));
                }
                Some(lock)
            }
        };
        // The folder usually exists: make it only when the file cannot be created (or,
        // below, moved into new/).
        //
        // A new file: written unnamed in new/ (O_TMPFILE), then linked under its name,
        // so it appears complete and tmp/ is not touched. Should the name be taken (an
        // earlier copy), the file gets its name in tmp/ and replaces the copy as a
        // repeated delivery's does.
        let (mut placed, mut named) = (None, None);
        if !again && let Some(mut file) = self.create_unnamed(&new, make_folder)? {
            let watch = self.fill(&mut file, &new, &content)?;
            match link_unnamed(&file, &final_path) {
                Ok(()) => placed = Some(watch),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    if let Err(e) = link_unnamed(&file, &tmp_path) {
                        if e.kind() != std::io::ErrorKind::AlreadyExists {
                            return Err(e);
                        }
                        // A leftover of a crash.
                        fs::remove_file(&tmp_path)?;
                        link_unnamed(&file, &tmp_path)?;
                    }
                    again = true;
                    named = Some(watch);
                }
                Err(e) => {
                    // Written again below, in tmp/ (which makes a folder removed
                    // meanwhile); from now on there, unless that was the trouble.
                    tracing::debug!(
                        maildir = %new.display(),
                        error = %e,
                        "cannot link an unnamed file: using tmp/"
                    );
                    if e.kind() != std::io::ErrorKind::NotFound || new.is_dir() {
                        self.unnamed_refused.store(true, Ordering::Relaxed);
                    }
                }
            }
        }
        let watch = match (placed, named) {
            (Some(watch), _) => watch,
            (None, named) => {
                // Named in tmp/: written there now, unless it was linked there above.
                let watch = match named {
                    Some(watch) => watch,
                    None => {
                        let mut file = match create() {
                            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                                make_folder()?;
                                create()?
                            }
                            other => other?,
                        };
                        self.fill(&mut file, &tmp, &content)?
                    }
                };
                if !again {
                    let moved = match rename_new(&tmp_path, &final_path) {
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                            make_folder()?;
                            rename_new(&tmp_path, &final_path)?
                        }
                        other => other?,
                    };
                    // Taken: an earlier copy.
                    again = !moved;
                }
                if again && !replace(&tmp_path, &final_path)? {
                    // Moved to cur/ meanwhile: read, so complete.
                    return Ok((Stored::Seen, Pending::none()));
                }
                watch
            }
        };
        let pending = match watch {
            Some(watch) => watch.renamed(&new),
            None => {
                sync_dir(&new)?;
                Pending::none()
            }
        };
        if again {
            return Ok((Stored::Rewritten, pending));
        }
        // The file is in new/, and counted now (a later repetition, after a failed
        // sync or a crash, finds it there and does not count it again); a maildirsize
        // that cannot be updated is only logged (it was removed, to be counted anew).
        let counted = quota::add(
            &inbox,
            limits.map(|(l, _)| l).unwrap_or_default(),
            i64::try_from(size).unwrap_or(i64::MAX),
            1,
        );
        if let Err(e) = counted {
            tracing::warn!(maildir = %inbox.display(), error = %e, "cannot update maildirsize");
        }
        drop(lock);
        Ok((Stored::Written, pending))
    }
}

/// What [`Maildir::store`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stored {
    /// Wrote the file into `new/`.
    Written,
    /// Found the file in `new/` (delivered before) and wrote it again over itself.
    Rewritten,
    /// Found the file in `cur/` (delivered before, and read): left it.
    Seen,
}

impl Maildir {
    /// Writes the file: notes what its sync needs (before the first byte; `dir` is
    /// where it is), then `content`; with [`MaildirSync::Each`], syncs it (and returns
    /// no [`Watch`]).
    fn fill(
        &self,
        file: &mut File,
        dir: &Path,
        content: &Content<'_>,
    ) -> std::io::Result<Option<Watch>> {
        let watch = match self.sync {
            MaildirSync::Each => None,
            mode => Some(Watch::start(mode, file, dir)?),
        };
        content.write_to(file)?;
        if watch.is_none() {
            file.sync_all()?;
        }
        Ok(watch)
    }

    /// An unnamed file in `new` (`O_TMPFILE`), made with `make_folder` when missing;
    /// `None` when the file system refuses one (remembered: the file is then written
    /// in `tmp/`).
    fn create_unnamed(
        &self,
        new: &Path,
        make_folder: impl Fn() -> std::io::Result<()>,
    ) -> std::io::Result<Option<File>> {
        if self.unnamed_refused.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let file = match open_unnamed(new) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                make_folder()?;
                open_unnamed(new)
            }
            other => other,
        };
        match file {
            Ok(file) => Ok(Some(file)),
            Err(e) if unnamed_unsupported(&e) => {
                tracing::debug!(
                    maildir = %new.display(),
                    error = %e,
                    "no unnamed files (O_TMPFILE): using tmp/"
                );
                self.unnamed_refused.store(true, Ordering::Relaxed);
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// The file of a message: the two fields `head`, then `body`, with line endings as
    /// this Maildir stores them, and its sizes. Converted in one pass into `scratch`
    /// when that takes at most [`CONVERT_IN_MEMORY`] bytes; a larger message is
    /// counted now and converted piece by piece as it is written.
    fn content<'a>(&self, head: &'a [u8], body: &'a [u8], scratch: &'a mut Vec<u8>) -> Content<'a> {
        let wire = head.len() + body.len();
        match self.line_endings {
            LineEndings::Crlf => Content {
                bytes: FileBytes::AsIs([head, body]),
                size: wire as u64,
                crlf_size: wire as u64,
            },
            LineEndings::Lf if wire <= CONVERT_IN_MEMORY => {
                scratch.clear();
                // Never more than the wire form: no growth.
                scratch.reserve_exact(wire);
                let lines = append_lf(head, scratch) + append_lf(body, scratch);
                let size = scratch.len() as u64;
                Content {
                    bytes: FileBytes::Converted(scratch),
                    size,
                    // Every LF stored becomes CRLF again for the other size.
                    crlf_size: size + lines,
                }
            }
            LineEndings::Lf => {
                let (head_lines, head_crlf) = count_lf(head);
                let (body_lines, body_crlf) = count_lf(body);
                let size = wire as u64 - head_crlf - body_crlf;
                Content {
                    bytes: FileBytes::ToConvert([head, body]),
                    size,
                    crlf_size: size + head_lines + body_lines,
                }
            }
        }
    }
}

/// A message larger than this (head and body, in wire form) is not converted to LF
/// line endings in one buffer, but piece by piece as it is written.
const CONVERT_IN_MEMORY: usize = 1 << 20;

/// How much of a large message is converted at a time.
const CONVERT_PIECE: usize = 256 * 1024;

/// The largest buffer a thread keeps for the next message (see [`Scratch`]).
const SCRATCH_KEPT: usize = 128 * 1024;

thread_local! {
    /// The buffer messages are converted in on this thread, kept between deliveries so
    /// that each does not allocate (and fault in) a fresh one.
    static SCRATCH: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
}

/// The thread's conversion buffer, while a delivery uses it; given back when dropped
/// (unless it grew larger than [`SCRATCH_KEPT`]).
struct Scratch(Vec<u8>);

impl Scratch {
    fn take() -> Self {
        Self(SCRATCH.try_with(Cell::take).unwrap_or_default())
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if self.0.capacity() <= SCRATCH_KEPT {
            let kept = std::mem::take(&mut self.0);
            // A thread that is exiting keeps nothing.
            let _ = SCRATCH.try_with(|s| s.set(kept));
        }
    }
}

/// A message file to write, and its sizes.
struct Content<'a> {
    bytes: FileBytes<'a>,
    /// The size of the file (`S=`).
    size: u64,
    /// Its size with CRLF line endings (`W=`).
    crlf_size: u64,
}

/// The bytes of a [`Content`].
enum FileBytes<'a> {
    /// The head and the body, written as they are.
    AsIs([&'a [u8]; 2]),
    /// Converted already.
    Converted(&'a [u8]),
    /// The head and the body, CRLF to be written as LF.
    ToConvert([&'a [u8]; 2]),
}

impl Content<'_> {
    /// Writes the bytes to `file`, in one call for a message converted in memory.
    fn write_to(&self, file: &mut File) -> std::io::Result<()> {
        match &self.bytes {
            FileBytes::AsIs(parts) => write_all_parts(file, parts),
            FileBytes::Converted(bytes) => file.write_all(bytes),
            FileBytes::ToConvert(parts) => {
                let mut piece = Vec::with_capacity(CONVERT_PIECE);
                for part in parts {
                    let mut rest: &[u8] = part;
                    while !rest.is_empty() {
                        let mut end = rest.len().min(CONVERT_PIECE);
                        // A CRLF stays whole in one piece.
                        if end > 1 && end < rest.len() && rest[end - 1] == b'\r' {
                            end -= 1;
                        }
                        piece.clear();
                        append_lf(&rest[..end], &mut piece);
                        file.write_all(&piece)?;
                        rest = &rest[end..];
                    }
                }
                Ok(())
            }
        }
    }
}

/// Writes every byte of `parts` in order, with as few calls as the file takes.
fn write_all_parts(file: &mut File, parts: &[&[u8]]) -> std::io::Result<()> {
    let mut slices: Vec<IoSlice<'_>> = parts
        .iter()
        .filter(|p| !p.is_empty())
        .map(|p| IoSlice::new(p))
        .collect();
    let mut slices = slices.as_mut_slice();
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

/// Appends `bytes` to `out` with each CRLF as LF (a lone CR or LF stays as it is), and
/// returns how many LFs it holds. One pass: from LF to LF, each run copied whole.
fn append_lf(bytes: &[u8], out: &mut Vec<u8>) -> u64 {
    let (mut start, mut lines) = (0, 0);
    for lf in memchr::memchr_iter(b'\n', bytes) {
        lines += 1;
        // `start` is past the previous LF, so `lf - 1 >= start` when it is a CR.
        if lf > start && bytes[lf - 1] == b'\r' {
            out.extend_from_slice(&bytes[start..lf - 1]);
            start = lf;
        }
    }
    out.extend_from_slice(&bytes[start..]);
    lines
}

/// How many LFs `bytes` holds, and how many of them end a CRLF.
fn count_lf(bytes: &[u8]) -> (u64, u64) {
    let (mut lines, mut crlf) = (0, 0);
    for lf in memchr::memchr_iter(b'\n', bytes) {
        lines += 1;
        if lf > 0 && bytes[lf - 1] == b'\r' {
            crlf += 1;
        }
    }
    (lines, crlf)
}

/// Whether `address` is a mailbox of `known`, or `postmaster` or `abuse` (which every
/// local domain has, RFC 5321 §4.5.1, RFC 2142).
pub(super) fn is_known(known: &HashSet<String>, address: &str) -> bool {
    let Ok(ForwardPath::Mailbox(m)) = ForwardPath::parse(&format!("<{address}>")) else {
        return false;
    };
    let local = m.local_part_unquoted().to_lowercase();
    let domain = match m.host() {
        Host::Domain(d) => d.to_ascii_lowercase(),
        Host::Address(std::net::IpAddr::V4(ip)) => format!("[{ip}]"),
        Host::Address(std::net::IpAddr::V6(ip)) => format!("[ipv6:{ip}]"),
    };
    local == "postmaster" || local == "abuse" || known.contains(&format!("{local}@{domain}"))
}

/// The Maildir++ folder of a sub-address tag (`news` → `.news`), lower-cased, or `None`
/// (INBOX) for a tag that is no safe, plain name: empty, longer than 64, with a
/// character other than ASCII letters, digits, `-`, `_` and `.`, starting or ending with
/// `.`, or with `..` (so no `/`, no way out of the Maildir, and nothing Dovecot would
/// read as modified UTF-7).
fn folder_name(tag: &str) -> Option<String> {
    let plain = tag
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    let safe = plain
        && !tag.is_empty()
        && tag.len() <= 64
        && !tag.starts_with('.')
        && !tag.ends_with('.')
        && !tag.contains("..");
    safe.then(|| format!(".{}", tag.to_ascii_lowercase()))
}

/// Puts the file `tmp` in place of `existing` atomically (`renameat2` with
/// `RENAME_EXCHANGE`, then the old file, now at `tmp`, is removed); `false` when
/// `existing` is no longer there (a reader moved it to `cur/`), and `tmp` is removed.
/// Where the exchange is not supported, a plain rename.
fn replace(tmp: &Path, existing: &Path) -> std::io::Result<bool> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use nix::errno::Errno;
        use nix::fcntl::{AT_FDCWD, RenameFlags, renameat2};
        match renameat2(
            AT_FDCWD,
            tmp,
            AT_FDCWD,
            existing,
            RenameFlags::RENAME_EXCHANGE,
        ) {
            Ok(()) => {
                fs::remove_file(tmp)?;
                return Ok(true);
            }
            Err(Errno::ENOENT) if tmp.exists() => {
                fs::remove_file(tmp)?;
                return Ok(false);
            }
            Err(Errno::EINVAL | Errno::ENOSYS) => {}
            Err(e) => return Err(e.into()),
        }
    }
    fs::rename(tmp, existing)?;
    Ok(true)
}

/// Renames `tmp` to `path` unless `path` exists (`renameat2` with
/// `RENAME_NOREPLACE`): `false` when it does (nothing was renamed). Where that is not
/// supported, a plain rename.
fn rename_new(tmp: &Path, path: &Path) -> std::io::Result<bool> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use nix::errno::Errno;
        use nix::fcntl::{AT_FDCWD, RenameFlags, renameat2};
        match renameat2(AT_FDCWD, tmp, AT_FDCWD, path, RenameFlags::RENAME_NOREPLACE) {
            Ok(()) => return Ok(true),
            Err(Errno::EEXIST) => return Ok(false),
            Err(Errno::EINVAL | Errno::ENOSYS) => {}
            Err(e) => return Err(e.into()),
        }
    }
    fs::rename(tmp, path)?;
    Ok(true)
}

/// Whether `cur` holds the message file `name` (read): `name:2,` followed by whatever
/// flags a reader gave it (`:2,S` once seen, `:2,RS` once answered...). The name without
/// flags is looked up first; then `cur/` is read through, which only a repeated
/// delivery (a retry, a message recovered at start) ever does.
fn read_already(cur: &Path, name: &str) -> bool {
    if cur.join(format!("{name}:2,")).exists() {
        return true;
    }
    let Ok(entries) = std::fs::read_dir(cur) else {
        return false;
    };
    entries.flatten().any(|entry| {
        entry
            .file_name()
            .to_str()
            .and_then(|file| file.split_once(':'))
            .is_some_and(|(base, _)| base == name)
    })
}

/// An unnamed file in the directory `dir` (`O_TMPFILE`), to be linked into it.
#[cfg(target_os = "linux")]
fn open_unnamed(dir: &Path) -> std::io::Result<File> {
    use nix::fcntl::{AT_FDCWD, OFlag, openat};
    use nix::sys::stat::Mode;
    let flags = OFlag::O_TMPFILE | OFlag::O_WRONLY | OFlag::O_CLOEXEC;
    // As a file made by `File::create`: 0666 less the umask.
    let mode = Mode::from_bits_truncate(0o666);
    Ok(File::from(openat(AT_FDCWD, dir, flags, mode)?))
}

#[cfg(not(target_os = "linux"))]
fn open_unnamed(_: &Path) -> std::io::Result<File> {
    Err(std::io::ErrorKind::Unsupported.into())
}

/// Whether `open_unnamed` failed because the file system (or kernel) has no unnamed
/// files: `EOPNOTSUPP`, `EISDIR` (a kernel older than `O_TMPFILE`), `EINVAL`.
fn unnamed_unsupported(e: &std::io::Error) -> bool {
    #[cfg(target_os = "linux")]
    {
        use nix::errno::Errno;
        let unsupported = [
            Errno::EOPNOTSUPP,
            Errno::EISDIR,
            Errno::EINVAL,
            Errno::ENOSYS,
        ];
        if e.raw_os_error()
            .is_some_and(|n| unsupported.contains(&Errno::from_raw(n)))
        {
            return true;
        }
    }
    e.kind() == std::io::ErrorKind::Unsupported
}

/// Set once `linkat` by descriptor was refused (before Linux 6.10, it needs
/// `CAP_DAC_READ_SEARCH`): unnamed files are then linked by `/proc/self/fd`.
#[cfg(target_os = "linux")]
static LINK_BY_PROC: AtomicBool = AtomicBool::new(false);

/// Gives the unnamed `file` the name `path` (`linkat`); `AlreadyExists` when the
/// name is taken. By its descriptor (`AT_EMPTY_PATH`, which needs
/// `CAP_DAC_READ_SEARCH`), else by `/proc/self/fd` (remembered).
#[cfg(target_os = "linux")]
fn link_unnamed(file: &File, path: &Path) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;

    use nix::errno::Errno;
    use nix::fcntl::{AT_FDCWD, AtFlags};
    use nix::unistd::linkat;
    if !LINK_BY_PROC.load(Ordering::Relaxed) {
        match linkat(file, "", AT_FDCWD, path, AtFlags::AT_EMPTY_PATH) {
            Ok(()) => return Ok(()),
            // Without the capability: ENOENT.
            Err(Errno::ENOENT | Errno::EPERM) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let by_proc = format!("/proc/self/fd/{}", file.as_raw_fd());
    linkat(
        AT_FDCWD,
        by_proc.as_str(),
        AT_FDCWD,
        path,
        AtFlags::AT_SYMLINK_FOLLOW,
    )?;
    LINK_BY_PROC.store(true, Ordering::Relaxed);
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn link_unnamed(_: &File, _: &Path) -> std::io::Result<()> {
    Err(std::io::ErrorKind::Unsupported.into())
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::Arc;

    use mail_queue::{MessageMeta, QueueId, SpoolRef};

    use std::sync::atomic::Ordering;

    use super::{
        LineEndings, Maildir, Recipient, Stored, SubaddressFolder, folder_name, unnamed_unsupported,
    };
    use crate::delivery::MaildirSync;
    use crate::delivery::{ByteSize, QuotaConfig, Quotas};

    fn meta(id: u64) -> MessageMeta {
        MessageMeta {
            id: QueueId(id),
            received: 1_700_000_000,
            from: "ann@a.test".into(),
            params: Default::default(),
            source: "test".into(),
            recipients: Vec::new(),
            spool: SpoolRef::default(),
            attempts: 0,
            next_attempt: 0,
            last_error: None,
            delay_warned: false,
        }
    }

    /// A delivery checks the quota again (mail that met no stage check, a race): over
    /// the limit, it fails for now with `QuotaExceeded`, writes nothing, and a
    /// delivered message gets its line in `maildirsize`.
    #[test]
    fn a_delivery_over_quota_fails_for_now_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let config = QuotaConfig {
            bytes: ByteSize(100),
            grace: crate::delivery::Grace::Bytes(0),
            ..QuotaConfig::default()
        };
        let maildir = Maildir::new(dir.path().into(), "h", LineEndings::Lf)
            .quotas(Some(Arc::new(Quotas::new(&config))));
        let bob = bob();
        let body = b"Subject: x\r\n\r\nhi\r\n";
        assert!(
            maildir
                .deliver(&meta(1), 0, "bob@d.test", &bob, body)
                .unwrap()
        );
        let inbox = dir.path().join("d.test/bob");
        let size = std::fs::read_dir(inbox.join("new"))
            .unwrap()
            .map(|f| f.unwrap().metadata().unwrap().len())
            .sum::<u64>();
        assert_eq!(
            std::fs::read_to_string(inbox.join("maildirsize")).unwrap(),
            format!("100S\n0 0\n{size} 1\n")
        );
        let big = [&body[..], &[b'x'; 100][..]].concat();
        let e = maildir
            .deliver(&meta(2), 0, "bob@d.test", &bob, &big)
            .unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::QuotaExceeded, "{e}");
        assert_eq!(std::fs::read_dir(inbox.join("new")).unwrap().count(), 1);
        assert_eq!(std::fs::read_dir(inbox.join("tmp")).unwrap().count(), 0);
        // Delivered already (a retry after a crash): no check, nothing written twice.
        assert!(
            !maildir
                .deliver(&meta(1), 0, "bob@d.test", &bob, body)
                .unwrap()
        );
    }

    /// A Maildir under `root` with a 10,000-byte quota per mailbox, synced by `mode`.
    fn quota_maildir(root: &std::path::Path, mode: MaildirSync) -> Maildir {
        let config = QuotaConfig {
            bytes: ByteSize(10_000),
            ..QuotaConfig::default()
        };
        Maildir::new(root.into(), "h", LineEndings::Lf)
            .quotas(Some(Arc::new(Quotas::new(&config))))
            .sync(mode)
    }

    fn bob() -> Recipient {
        Recipient {
            mailbox: "bob@d.test".into(),
            tag: None,
        }
    }

    /// The files in `dir`, sorted.
    fn sorted_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|f| f.unwrap().path())
            .collect();
        files.sort();
        files
    }

    /// A repeated delivery after a crash between the rename and the sync: the file in
    /// new/ may be torn, so it is written again (same name, complete), and counted
    /// once in maildirsize; a file already read (in cur/) is left as it is. In every
    /// sync mode.
    #[test]
    fn a_repeated_delivery_rewrites_a_torn_file_and_counts_it_once() {
        for mode in [MaildirSync::Batch, MaildirSync::Files, MaildirSync::Each] {
            let dir = tempfile::tempdir().unwrap();
            let maildir = quota_maildir(dir.path(), mode);
            let bob = bob();
            let body = b"Subject: x\r\n\r\nhi\r\n";
            let (stored, pending) = maildir
                .store(&meta(1), 0, "bob@d.test", &bob, body)
                .unwrap();
            assert_eq!(stored, Stored::Written);
            assert_eq!(pending.is_empty(), mode == MaildirSync::Each, "{mode:?}");
            pending.wait_blocking().unwrap();
            let inbox = dir.path().join("d.test/bob");
            let files = |sub: &str| sorted_files(&inbox.join(sub));
            let [file] = files("new").try_into().unwrap();
            let complete = std::fs::read(&file).unwrap();
            let counted = std::fs::read_to_string(inbox.join("maildirsize")).unwrap();
            // Renamed, never synced, power cut: what is left may be empty.
            std::fs::write(&file, b"").unwrap();
            assert!(
                !maildir
                    .deliver(&meta(1), 0, "bob@d.test", &bob, body)
                    .unwrap()
            );
            assert_eq!(files("new"), std::slice::from_ref(&file), "{mode:?}");
            assert_eq!(std::fs::read(&file).unwrap(), complete, "{mode:?}");
            assert!(files("tmp").is_empty(), "{mode:?}");
            assert_eq!(
                std::fs::read_to_string(inbox.join("maildirsize")).unwrap(),
                counted,
                "{mode:?}"
            );
            // Read (moved to cur/ by a mail reader): left alone.
            let read = inbox.join("cur").join(format!(
                "{}:2,",
                file.file_name().unwrap().to_string_lossy()
            ));
            std::fs::rename(&file, &read).unwrap();
            let (stored, pending) = maildir
                .store(&meta(1), 0, "bob@d.test", &bob, body)
                .unwrap();
            assert_eq!(stored, Stored::Seen);
            assert!(pending.is_empty());
            assert!(files("new").is_empty(), "{mode:?}");
            assert_eq!(files("cur"), [read], "{mode:?}");
            assert_eq!(
                std::fs::read_to_string(inbox.join("maildirsize")).unwrap(),
                counted,
                "{mode:?}"
            );
        }
    }

    /// The first attempt on a message does not look for an earlier copy, but should one
    /// be in new/ all the same (a torn file, a leftover in tmp/), putting the new file
    /// in place finds it and replaces it: one complete file, counted once. With unnamed
    /// files (`O_TMPFILE`) and without (tmp/ and a rename), in every sync mode.
    #[test]
    fn a_first_delivery_that_finds_its_name_taken_replaces_the_copy() {
        for unnamed in [true, false] {
            for mode in [MaildirSync::Batch, MaildirSync::Files, MaildirSync::Each] {
                let dir = tempfile::tempdir().unwrap();
                let maildir = quota_maildir(dir.path(), mode);
                maildir.unnamed_refused.store(!unnamed, Ordering::Relaxed);
                let bob = bob();
                let body = b"Subject: x\r\n\r\nhi\r\n";
                let (stored, pending) = maildir
                    .store_first(&meta(1), 0, "bob@d.test", &bob, body)
                    .unwrap();
                assert_eq!(stored, Stored::Written, "{unnamed} {mode:?}");
                pending.wait_blocking().unwrap();
                let inbox = dir.path().join("d.test/bob");
                let files = |sub: &str| sorted_files(&inbox.join(sub));
                let [file] = files("new").try_into().unwrap();
                assert!(files("tmp").is_empty(), "{unnamed} {mode:?}");
                let complete = std::fs::read(&file).unwrap();
                assert!(complete.starts_with(b"Return-Path: <ann@a.test>\n"));
                let counted = std::fs::read_to_string(inbox.join("maildirsize")).unwrap();
                // Torn in new/, and a leftover of the same name in tmp/.
                std::fs::write(&file, b"").unwrap();
                let leftover = inbox.join("tmp").join(file.file_name().unwrap());
                std::fs::write(&leftover, b"partial").unwrap();
                let (stored, pending) = maildir
                    .store_first(&meta(1), 0, "bob@d.test", &bob, body)
                    .unwrap();
                assert_eq!(stored, Stored::Rewritten, "{unnamed} {mode:?}");
                pending.wait_blocking().unwrap();
                assert_eq!(files("new"), std::slice::from_ref(&file), "{mode:?}");
                assert_eq!(std::fs::read(&file).unwrap(), complete, "{mode:?}");
                assert!(files("tmp").is_empty(), "{unnamed} {mode:?}");
                assert_eq!(
                    std::fs::read_to_string(inbox.join("maildirsize")).unwrap(),
                    counted,
                    "{unnamed} {mode:?}"
                );
                // On Linux the unnamed file was used (and not refused since).
                assert_eq!(
                    maildir.unnamed_refused.load(Ordering::Relaxed),
                    !(unnamed && cfg!(target_os = "linux")),
                    "{unnamed} {mode:?}"
                );
            }
        }
    }

    /// A file system without unnamed files (`O_TMPFILE`) is recognised by its errors,
    /// and delivery then writes in tmp/: any other error is a failed delivery.
    #[test]
    fn the_errors_of_a_file_system_without_unnamed_files_are_recognised() {
        #[cfg(target_os = "linux")]
        {
            use nix::errno::Errno;
            for (errno, unsupported) in [
                (Errno::EOPNOTSUPP, true),
                (Errno::EISDIR, true),
                (Errno::EINVAL, true),
                (Errno::ENOENT, false),
                (Errno::EACCES, false),
                (Errno::ENOSPC, false),
            ] {
                let e = std::io::Error::from(errno);
                assert_eq!(unnamed_unsupported(&e), unsupported, "{errno}");
            }
        }
        assert!(unnamed_unsupported(&std::io::ErrorKind::Unsupported.into()));
        // A Maildir that met one writes in tmp/ from then on.
        let dir = tempfile::tempdir().unwrap();
        let maildir = Maildir::new(dir.path().into(), "h", LineEndings::Crlf);
        maildir.unnamed_refused.store(true, Ordering::Relaxed);
        let bob = bob();
        let body = b"Subject: x\r\n\r\nhi\r\n";
        assert!(
            maildir
                .deliver(&meta(2), 0, "bob@d.test", &bob, body)
                .unwrap()
        );
        let [file] = sorted_files(&dir.path().join("d.test/bob/new"))
            .try_into()
            .unwrap();
        assert!(std::fs::read(file).unwrap().ends_with(body));
        assert!(sorted_files(&dir.path().join("d.test/bob/tmp")).is_empty());
    }

    /// An unnamed file gets its name by its descriptor or, where that is refused, by
    /// `/proc/self/fd`; a name taken is `AlreadyExists` either way, and leaves the
    /// file there as it was.
    #[cfg(target_os = "linux")]
    #[test]
    fn an_unnamed_file_is_linked_by_descriptor_or_by_proc() {
        use std::io::Write;

        use super::{LINK_BY_PROC, link_unnamed, open_unnamed};
        let dir = tempfile::tempdir().unwrap();
        for by_proc in [false, true] {
            // (Only ever set to true, as a refusal would: harmless to other tests.)
            if by_proc {
                LINK_BY_PROC.store(true, Ordering::Relaxed);
            }
            let path = dir.path().join(format!("f{by_proc}"));
            let mut file = open_unnamed(dir.path()).unwrap();
            file.write_all(b"complete").unwrap();
            assert!(!path.exists());
            link_unnamed(&file, &path).unwrap();
            assert_eq!(std::fs::read(&path).unwrap(), b"complete");
            let mut other = open_unnamed(dir.path()).unwrap();
            other.write_all(b"other").unwrap();
            let e = link_unnamed(&other, &path).unwrap_err();
            assert_eq!(
                e.kind(),
                std::io::ErrorKind::AlreadyExists,
                "{by_proc}: {e}"
            );
            assert_eq!(std::fs::read(&path).unwrap(), b"complete");
        }
    }

    /// The file as a byte-by-byte conversion makes it (each part on its own, every CR
    /// followed by LF left out), and its `W=` size: every LF counted as CRLF.
    fn converted_by_hand(parts: &[&[u8]], line_endings: LineEndings) -> (Vec<u8>, u64) {
        let mut file = Vec::new();
        for part in parts {
            for (i, &b) in part.iter().enumerate() {
                let crlf = b == b'\r' && part.get(i + 1) == Some(&b'\n');
                if !(crlf && line_endings == LineEndings::Lf) {
                    file.push(b);
                }
            }
        }
        let crlf_size = match line_endings {
            LineEndings::Crlf => file.len() as u64,
            LineEndings::Lf => {
                file.len() as u64 + file.iter().filter(|&&b| b == b'\n').count() as u64
            }
        };
        (file, crlf_size)
    }

    /// Whatever the body (long lines, bare CR and LF, dots, CR at its end, a body larger
    /// than is converted in memory, CRLF across the pieces of its conversion), the file
    /// holds exactly the conversion, `S=` is its size and `W=` its size with CRLF, and
    /// `maildirsize` counts `S=`; in both line endings, for one message after another on
    /// one thread (which reuses its buffer).
    #[test]
    fn files_and_their_sizes_match_a_byte_by_byte_conversion() {
        use super::{CONVERT_IN_MEMORY, CONVERT_PIECE};
        let long_line = [
            b"Subject: long\r\n\r\n".as_slice(),
            &[b'a'; 20_000],
            b"\r\n",
        ]
        .concat();
        let many_lines = b"Subject: many\r\n\r\n"
            .iter()
            .copied()
            .chain(
                (0..3000)
                    .flat_map(|i| format!("line {i} of the text, .dots. here\r\n").into_bytes()),
            )
            .collect::<Vec<u8>>();
        // Larger than is converted in memory, a CRLF across the first two pieces, a CR
        // ending the second piece with no LF after it, a bare LF at the third's start.
        let mut large = vec![b'x'; CONVERT_IN_MEMORY + 1000];
        large[..16].copy_from_slice(b"Subject: large\r\n");
        large[CONVERT_PIECE - 1..CONVERT_PIECE + 1].copy_from_slice(b"\r\n");
        // (The first piece ends before that CR, so the second starts with it.)
        let second_end = 2 * CONVERT_PIECE - 2;
        large[second_end] = b'\r';
        large[second_end + 1] = b'\n';
        large[second_end + 3] = b'\n';
        for i in (100..large.len() - 2).step_by(77) {
            if large[i..i + 2] == *b"xx" {
                large[i..i + 2].copy_from_slice(b"\r\n");
            }
        }
        large.extend_from_slice(b"\r\n");
        let bodies: Vec<&[u8]> = vec![
            b"",
            b"\r\n",
            b"no line ending",
            b"Subject: x\r\n\r\nhi\r\n",
            b"Subject: bare\r\n\r\nlf\nonly\n\ncr\ronly\r\rboth\n\r\r\r\n\r\n",
            b"Subject: dots\r\n\r\n.\r\n..\r\n.leading\r\n",
            b"\nstarts with LF",
            b"ends with CR\r",
            b"\r\n\r\n\r\n",
            &long_line,
            &many_lines,
            &large,
        ];
        for line_endings in [LineEndings::Lf, LineEndings::Crlf] {
            let dir = tempfile::tempdir().unwrap();
            let config = QuotaConfig {
                bytes: ByteSize(1 << 30),
                ..QuotaConfig::default()
            };
            let maildir = Maildir::new(dir.path().into(), "h", line_endings)
                .quotas(Some(Arc::new(Quotas::new(&config))));
            let bob = bob();
            let mut counted = 0;
            for (n, body) in bodies.iter().enumerate() {
                let id = n as u64 + 1;
                assert!(
                    maildir
                        .deliver(&meta(id), 0, "bob@d.test", &bob, body)
                        .unwrap()
                );
                let head = Maildir::head("ann@a.test", "bob@d.test");
                let (expected, crlf_size) =
                    converted_by_hand(&[head.as_bytes(), body], line_endings);
                let new = dir.path().join("d.test/bob/new");
                let file = sorted_files(&new)
                    .into_iter()
                    .find(|f| {
                        f.to_string_lossy()
                            .contains(&format!(".Q{}R0.", QueueId(id)))
                    })
                    .unwrap();
                let bytes = std::fs::read(&file).unwrap();
                assert!(
                    bytes == expected,
                    "{line_endings:?} body {n}: the file differs"
                );
                let name = file.file_name().unwrap().to_string_lossy().into_owned();
                let sizes = format!(",S={},W={crlf_size}", expected.len());
                assert!(
                    name.ends_with(&sizes),
                    "{line_endings:?} body {n}: {name} ({sizes})"
                );
                counted += expected.len();
                let maildirsize =
                    std::fs::read_to_string(dir.path().join("d.test/bob/maildirsize")).unwrap();
                let total = maildirsize
                    .lines()
                    .skip(1)
                    .map(|l| l.split(' ').next().unwrap().parse::<usize>().unwrap())
                    .sum::<usize>();
                assert_eq!(total, counted, "{line_endings:?} body {n}");
            }
        }
    }

    #[test]
    fn folder_names_stay_inside_the_maildir() {
        let cases = [
            ("news", Some(".news")),
            ("News", Some(".news")),
            ("lists.rust", Some(".lists.rust")),
            ("a-b_c", Some(".a-b_c")),
            ("", None),
            ("..", None),
            ("../x", None),
            ("a/b", None),
            (".hidden", None),
            ("trailing.", None),
            ("a..b", None),
            ("caf\u{e9}", None),
            ("a&b", None),
            ("a+b", None),
        ];
        for (tag, expected) in cases {
            assert_eq!(folder_name(tag).as_deref(), expected, "{tag:?}");
        }
        assert_eq!(folder_name(&"x".repeat(65)), None);
    }

    #[test]
    fn recipients_split_only_when_not_known_as_they_are() {
        let maildir = Maildir::new("/m".into(), "h", LineEndings::Lf)
            .subaddressing("+-", SubaddressFolder::Existing);
        let known: HashSet<String> = ["bob@d.test", "ann+x@d.test"].map(String::from).into();
        let to = |mailbox: &str, tag: Option<&str>| {
            Some(Recipient {
                mailbox: mailbox.into(),
                tag: tag.map(String::from),
            })
        };
        let known = Some(&known);
        assert_eq!(
            maildir.recipient("bob@d.test", known),
            to("bob@d.test", None)
        );
        assert_eq!(
            maildir.recipient("bob+news@d.test", known),
            to("bob@d.test", Some("news"))
        );
        assert_eq!(
            maildir.recipient("bob-news@d.test", known),
            to("bob@d.test", Some("news"))
        );
        assert_eq!(
            maildir.recipient("ann+x@d.test", known),
            to("ann+x@d.test", None)
        );
        assert_eq!(maildir.recipient("ann+y@d.test", known), None);
        assert_eq!(maildir.recipient("eve+news@d.test", known), None);
        assert_eq!(
            maildir.recipient("postmaster+x@d.test", known),
            to("postmaster@d.test", Some("x"))
        );
        // Any user: always split.
        assert_eq!(
            maildir.recipient("eve+news@d.test", None),
            to("eve@d.test", Some("news"))
        );
        assert_eq!(
            maildir.recipient("eve@d.test", None),
            to("eve@d.test", None)
        );
        // Off.
        let off = Maildir::new("/m".into(), "h", LineEndings::Lf);
        assert_eq!(off.recipient("bob+news@d.test", known), None);
        assert_eq!(
            off.recipient("eve+news@d.test", None),
            to("eve+news@d.test", None)
        );
    }
}
