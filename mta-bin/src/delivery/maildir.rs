//! Maildir delivery: `<root>/<domain>/<local-part>/{tmp,new,cur}`.
//!
//! The file is written in `tmp/` and renamed into `new/`; it is made durable before the
//! delivery is reported, so a delivered message survives a crash: by a `syncfs` shared
//! with the other deliveries of its batch (`[local] maildir_sync = "batch"`, the
//! default; see [`super::maildir_sync`]), by an `fdatasync` of each file and one
//! `fsync` per `new/` of the batch (`"files"`), or on its own (`"each"`: the file
//! fsynced before the rename, `new/` after). Its name is derived from the queue id and
//! the recipient (`<received>.Q<id>R<n>.<host>,S=<size>,W=<size with CRLF>`): if the
//! queue retries a delivery that had completed just before a crash, the file is already
//! there. In `new/` it may be torn (renamed, never synced, then the power went), so it
//! is written again over itself, not counted again in `maildirsize`; in `cur/` (read)
//! it is left alone.
//!
//! Lines end in LF, as Postfix's local and virtual delivery, Dovecot and the tools that
//! read Maildir store them (the queue keeps the wire form, CRLF; delivery converts);
//! `maildir_line_endings = "crlf"` keeps CRLF. `S=` is the size of the file, `W=` its
//! size with CRLF line endings (what IMAP reports as `RFC822.SIZE`), as Dovecot reads
//! them.
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

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

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
                let crlf: u64 = parts
                    .iter()
                    .map(|p| memchr::memmem::find_iter(p, b"\r\n").count() as u64)
                    .sum();
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
        // The two fields we add, then the message.
        let head = Self::head(&message.from, address);
        let (size, crlf_size) = self.sizes(head.as_bytes(), body);
        let name = format!(
            "{}.Q{}R{index}.{},S={size},W={crlf_size}",
            message.received, message.id, self.hostname
        );
        let (tmp, new, cur) = (folder.join("tmp"), folder.join("new"), folder.join("cur"));
        let final_path = new.join(&name);
        let again = final_path.exists();
        if !again && cur.join(format!("{name}:2,")).exists() {
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
        let mut file = match create() {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                make_folder()?;
                create()?
            }
            other => other?,
        };
        // Before the first byte: what the sync needs (see maildir_sync).
        let watch = match self.sync {
            MaildirSync::Each => None,
            mode => Some(Watch::start(mode, &file, &tmp)?),
        };
        let mut out = BufWriter::with_capacity(64 * 1024, &mut file);
        for part in [head.as_bytes(), body] {
            match self.line_endings {
                LineEndings::Crlf => out.write_all(part)?,
                LineEndings::Lf => write_lf(&mut out, part)?,
            }
        }
        out.flush()?;
        drop(out);
        if watch.is_none() {
            file.sync_all()?;
        }
        drop(file);
        if again {
            if !replace(&tmp_path, &final_path)? {
                // Moved to cur/ meanwhile: read, so complete.
                return Ok((Stored::Seen, Pending::none()));
            }
        } else if let Err(e) = fs::rename(&tmp_path, &final_path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                return Err(e);
            }
            make_folder()?;
            fs::rename(&tmp_path, &final_path)?;
        }
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
    /// The size of the stored file and its size with CRLF line endings.
    fn sizes(&self, head: &[u8], body: &[u8]) -> (u64, u64) {
        let wire = (head.len() + body.len()) as u64;
        match self.line_endings {
            LineEndings::Crlf => (wire, wire),
            LineEndings::Lf => {
                let lines = (memchr::memchr_iter(b'\n', head).count()
                    + memchr::memchr_iter(b'\n', body).count()) as u64;
                let crlf = (memchr::memmem::find_iter(head, b"\r\n").count()
                    + memchr::memmem::find_iter(body, b"\r\n").count())
                    as u64;
                let stored = wire - crlf;
                // Every LF stored becomes CRLF again for the other size.
                (stored, stored + lines)
            }
        }
    }
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

/// Writes `bytes` with each CRLF as LF (a lone CR or LF stays as it is).
fn write_lf(out: &mut impl Write, bytes: &[u8]) -> std::io::Result<()> {
    let mut start = 0;
    for crlf in memchr::memmem::find_iter(bytes, b"\r\n") {
        out.write_all(&bytes[start..crlf])?;
        start = crlf + 1;
    }
    out.write_all(&bytes[start..])
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

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::Arc;

    use mail_queue::{MessageMeta, QueueId, SpoolRef};

    use super::{LineEndings, Maildir, Recipient, Stored, SubaddressFolder, folder_name};
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
        let bob = Recipient {
            mailbox: "bob@d.test".into(),
            tag: None,
        };
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

    /// A repeated delivery after a crash between the rename and the sync: the file in
    /// new/ may be torn, so it is written again (same name, complete), and counted
    /// once in maildirsize; a file already read (in cur/) is left as it is. In every
    /// sync mode.
    #[test]
    fn a_repeated_delivery_rewrites_a_torn_file_and_counts_it_once() {
        for mode in [MaildirSync::Batch, MaildirSync::Files, MaildirSync::Each] {
            let dir = tempfile::tempdir().unwrap();
            let config = QuotaConfig {
                bytes: ByteSize(10_000),
                ..QuotaConfig::default()
            };
            let maildir = Maildir::new(dir.path().into(), "h", LineEndings::Lf)
                .quotas(Some(Arc::new(Quotas::new(&config))))
                .sync(mode);
            let bob = Recipient {
                mailbox: "bob@d.test".into(),
                tag: None,
            };
            let body = b"Subject: x\r\n\r\nhi\r\n";
            let (stored, pending) = maildir
                .store(&meta(1), 0, "bob@d.test", &bob, body)
                .unwrap();
            assert_eq!(stored, Stored::Written);
            assert_eq!(pending.is_empty(), mode == MaildirSync::Each, "{mode:?}");
            pending.wait_blocking().unwrap();
            let inbox = dir.path().join("d.test/bob");
            let files = |sub: &str| -> Vec<std::path::PathBuf> {
                let mut files: Vec<_> = std::fs::read_dir(inbox.join(sub))
                    .unwrap()
                    .map(|f| f.unwrap().path())
                    .collect();
                files.sort();
                files
            };
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
