//! Maildir delivery: `<root>/<domain>/<local-part>/{tmp,new,cur}`.
//!
//! The file is written in `tmp/`, fsynced, renamed into `new/`, and `new/` is fsynced,
//! so a delivered message survives a crash. Its name is derived from the queue id and
//! the recipient (`<received>.Q<id>R<n>.<host>,S=<size>,W=<size with CRLF>`): if the
//! queue retries a delivery that had completed just before a crash, the file is already
//! there and is not written twice.
//!
//! Lines end in LF, as Postfix's local and virtual delivery, Dovecot and the tools that
//! read Maildir store them (the queue keeps the wire form, CRLF; delivery converts);
//! `maildir_line_endings = "crlf"` keeps CRLF. `S=` is the size of the file, `W=` its
//! size with CRLF line endings (what IMAP reports as `RFC822.SIZE`), as Dovecot reads
//! them.

use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use mail_queue::MessageMeta;
use serde::Deserialize;

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

/// Delivers into Maildirs under `root`.
#[derive(Debug, Clone)]
pub struct Maildir {
    root: PathBuf,
    hostname: String,
    line_endings: LineEndings,
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

    /// Delivers one recipient; `Ok(false)` when it was already delivered.
    pub fn deliver(
        &self,
        message: &MessageMeta,
        index: usize,
        address: &str,
        body: &[u8],
    ) -> std::io::Result<bool> {
        let folder = self.folder(address).map_err(std::io::Error::other)?;
        // The two fields we add, then the message.
        let head = format!(
            "Return-Path: <{}>\r\nDelivered-To: {address}\r\n",
            message.from
        );
        let (size, crlf_size) = self.sizes(head.as_bytes(), body);
        let name = format!(
            "{}.Q{}R{index}.{},S={size},W={crlf_size}",
            message.received, message.id, self.hostname
        );
        let (tmp, new, cur) = (folder.join("tmp"), folder.join("new"), folder.join("cur"));
        let final_path = new.join(&name);
        if final_path.exists() || cur.join(format!("{name}:2,")).exists() {
            return Ok(false);
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
            for dir in [&tmp, &new, &cur] {
                if !dir.is_dir() {
                    fs::create_dir_all(dir)?;
                    sync_dir(dir.parent().unwrap_or(dir))?;
                }
            }
            Ok(())
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
        let mut out = BufWriter::with_capacity(64 * 1024, &mut file);
        for part in [head.as_bytes(), body] {
            match self.line_endings {
                LineEndings::Crlf => out.write_all(part)?,
                LineEndings::Lf => write_lf(&mut out, part)?,
            }
        }
        out.flush()?;
        drop(out);
        file.sync_all()?;
        drop(file);
        if let Err(e) = fs::rename(&tmp_path, &final_path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                return Err(e);
            }
            make_folder()?;
            fs::rename(&tmp_path, &final_path)?;
        }
        sync_dir(&new)?;
        Ok(true)
    }
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

/// Writes `bytes` with each CRLF as LF (a lone CR or LF stays as it is).
fn write_lf(out: &mut impl Write, bytes: &[u8]) -> std::io::Result<()> {
    let mut start = 0;
    for crlf in memchr::memmem::find_iter(bytes, b"\r\n") {
        out.write_all(&bytes[start..crlf])?;
        start = crlf + 1;
    }
    out.write_all(&bytes[start..])
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}
