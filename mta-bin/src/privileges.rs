//! Giving up root (`user = "mta"` in the configuration): `mta serve` started as root
//! binds its listeners, then becomes that user, with its primary and supplementary
//! groups, before it opens the queue, reads a key or delivers a message. Everything it
//! writes is then owned by that user, and a reload reads the files again as that user.

use std::path::Path;

use anyhow::{Context, bail};
use nix::unistd::{Gid, Uid, User};

/// The account to run as, looked up in the system's user database.
#[derive(Clone, Debug)]
pub struct RunAs {
    name: String,
    uid: Uid,
    gid: Gid,
}

impl RunAs {
    /// Looks `name` up (`getpwnam`).
    pub fn lookup(name: &str) -> anyhow::Result<Self> {
        let user = User::from_name(name)
            .with_context(|| format!("user = {name:?}: cannot read the user database"))?
            .with_context(|| format!("user = {name:?}: no such user on this system"))?;
        Ok(Self {
            name: user.name,
            uid: user.uid,
            gid: user.gid,
        })
    }

    /// Whether this process already runs as this user.
    pub fn is_current(&self) -> bool {
        Uid::effective() == self.uid
    }

    /// Creates `dir` and its missing parents for this user: a fresh install started as
    /// root gets a queue directory the server can write after it gives up root.
    /// Directories that exist are left as they are.
    pub fn prepare_dir(&self, dir: &Path) -> anyhow::Result<()> {
        if dir.exists() || !Uid::effective().is_root() {
            return Ok(());
        }
        let missing: Vec<&Path> = dir
            .ancestors()
            .take_while(|d| !d.as_os_str().is_empty() && !d.exists())
            .collect();
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        for d in missing {
            std::os::unix::fs::chown(d, Some(self.uid.as_raw()), Some(self.gid.as_raw()))
                .with_context(|| format!("cannot give {} to {}", d.display(), self.name))?;
        }
        Ok(())
    }

    /// Becomes this user for good: supplementary groups, group, then user (all threads
    /// of the process), and checks that root cannot be taken back.
    pub fn switch(&self) -> anyhow::Result<()> {
        if self.is_current() {
            return Ok(());
        }
        if !Uid::effective().is_root() {
            bail!(
                "user = {:?}: only root can switch users (this process runs as uid {}); \
                 start as root or as that user",
                self.name,
                Uid::effective()
            );
        }
        let name = std::ffi::CString::new(self.name.as_str())
            .with_context(|| format!("user = {:?}: not a user name", self.name))?;
        nix::unistd::initgroups(&name, self.gid)
            .with_context(|| format!("cannot set the groups of {}", self.name))?;
        nix::unistd::setgid(self.gid).with_context(|| format!("cannot set group {}", self.gid))?;
        nix::unistd::setuid(self.uid)
            .with_context(|| format!("cannot become user {}", self.name))?;
        if nix::unistd::setuid(Uid::from_raw(0)).is_ok() {
            bail!("still able to become root after switching to {}", self.name);
        }
        Ok(())
    }

    /// The user name.
    pub fn name(&self) -> &str {
        &self.name
    }
}
