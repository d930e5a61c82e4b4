//! Maildir delivery: `<root>/<domain>/<local-part>/{tmp,new,cur}`.
//!
//! The file is written in `tmp/`, fsynced, renamed into `new/`, and `new/` is fsynced,
//! so a delivered message survives a crash. Its name is derived from the queue id and
//! the recipient (`<received>.Q<id>R<n>.<host>`): if the queue retries a delivery that
//! had completed just before a crash, the file is already there and is not written
//! twice.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use mail_queue::MessageMeta;

/// Delivers into Maildirs under `root`.
#[derive(Debug, Clone)]
pub struct Maildir {
    root: PathBuf,
    hostname: String,
}

impl Maildir {
    /// Delivery under `root`; `hostname` goes into file names.
    pub fn new(root: PathBuf, hostname: &str) -> Self {
        // Maildir names may not contain '/' or ':' (written \057 and \072).
        let hostname = hostname.replace('/', "\\057").replace(':', "\\072");
        Self { root, hostname }
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
        let name = format!(
            "{}.Q{}R{index}.{}",
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
        // One write: the two fields we add, then the message.
        let mut bytes = format!(
            "Return-Path: <{}>\r\nDelivered-To: {address}\r\n",
            message.from
        )
        .into_bytes();
        bytes.extend_from_slice(body);
        file.write_all(&bytes)?;
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

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}
