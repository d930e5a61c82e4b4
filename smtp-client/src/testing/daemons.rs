//! Daemons from Debian that tests start in the foreground, each on a free port with
//! its files in a temporary directory of its own, and stop when dropped: rspamd and
//! postgrey (the filter hooks' tests in smtp-server and mta-bin use the same ones),
//! dnsmasq (the DNS lists' and reverse DNS's tests in auth-checks and mta-bin), and
//! Dovecot's LMTP server (the recipient verification tests in mta-bin).
//!
//! ```no_run
//! # fn run() {
//! let Some(rspamd) = smtp_client::testing::daemons::rspamd() else {
//!     return; // not installed: the test skips (a failure under CI=true)
//! };
//! println!("rspamd listens on {}", rspamd.address);
//! # }
//! ```

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A port nothing listens on (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A loopback address nothing listens on (bound, then released).
pub fn free_address() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// The output of `id` with `flag` (`-un`, `-gn`): whom a daemon started by root should
/// run as, so that it can write in the test's directory.
fn id(flag: &str) -> String {
    let out = Command::new("id").arg(flag).output().expect("id");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A daemon started by a test, in a process group of its own (its workers go with it):
/// SIGTERM to the group when dropped, SIGKILL to what is left 5 s later.
#[derive(Debug)]
pub struct Daemon {
    child: Child,
    /// Where it listens.
    pub address: SocketAddr,
    dir: tempfile::TempDir,
}

impl Daemon {
    /// Starts `command` (named `name` in messages) and waits up to `startup` for it to
    /// accept connections on `address`; `dir` holds its files and lives as long as it.
    pub fn spawn(
        name: &str,
        mut command: Command,
        address: SocketAddr,
        dir: tempfile::TempDir,
        startup: Duration,
    ) -> Self {
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let mut daemon = Self {
            child,
            address,
            dir,
        };
        let deadline = Instant::now() + startup;
        while std::net::TcpStream::connect(address).is_err() {
            if let Ok(Some(status)) = daemon.child.try_wait() {
                panic!("{name} exited: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "{name} did not listen within {startup:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        daemon
    }

    /// Its directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let signal = |name: &str| {
            let _ = Command::new("kill")
                .args(["-s", name, "--", &group])
                .stderr(Stdio::null())
                .status();
        };
        signal("TERM");
        let deadline = Instant::now() + Duration::from_secs(5);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        signal("KILL");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// rspamd with one normal worker on a free port and a minimal configuration: no Lua
/// rules, no Redis, no DNS (a resolver that does not exist), the test patterns on (GTUBE
/// is refused; its "add header" and "rewrite subject" variants score 6 and 4.9); `None`
/// when rspamd is not installed.
pub fn rspamd() -> Option<Daemon> {
    let binary = super::tool("rspamd")?;
    let dir = tempfile::tempdir().expect("a temporary directory");
    let d = dir.path().display();
    let address = free_address();
    // A tiny public-suffix list: the real one takes long to compile at start.
    std::fs::write(dir.path().join("tld.dat"), "com\norg\nnet\ntest\n").expect("tld.dat");
    let config = format!(
        r#"
options {{
  pidfile = "{d}/rspamd.pid";
  filters = "";
  tempdir = "{d}";
  hs_cache_dir = "{d}";
  maps_cache_dir = "{d}";
  url_tld = "{d}/tld.dat";
  enable_test_patterns = true;
  dns {{ nameserver = ["127.0.0.1:1"]; timeout = 1s; retransmits = 1; }}
}}
logging {{ type = "console"; level = "warning"; }}
worker "normal" {{ bind_socket = "{address}"; count = 1; }}
actions {{ reject = 15; add_header = 6; greylist = 4; }}
"#
    );
    let config_path = dir.path().join("rspamd.conf");
    std::fs::write(&config_path, config).expect("rspamd.conf");
    let mut command = Command::new(binary);
    command
        .arg("-f")
        .arg("-c")
        .arg(&config_path)
        .arg(format!("--var=DBDIR={d}"))
        .arg(format!("--var=RUNDIR={d}"))
        .arg(format!("--var=LOGDIR={d}"))
        // rspamd refuses to run as root unless told whom to run as.
        .arg(format!("--user={}", id("-un")))
        .arg(format!("--group={}", id("-gn")))
        .arg("--insecure");
    Some(Daemon::spawn(
        "rspamd",
        command,
        address,
        dir,
        Duration::from_secs(30),
    ))
}

/// postgrey on a free port, its database in a temporary directory, no whitelists, no
/// automatic whitelisting, host name `greylist.test`, and a greylist of `delay`
/// seconds; `None` when postgrey is not installed.
pub fn postgrey(delay: u64) -> Option<Daemon> {
    let binary = super::tool("postgrey")?;
    let dir = tempfile::tempdir().expect("a temporary directory");
    let empty = dir.path().join("empty");
    std::fs::write(&empty, "").expect("an empty file");
    let address = free_address();
    let mut command = Command::new(binary);
    command
        .arg(format!("--inet={address}"))
        .arg(format!("--delay={delay}"))
        .arg(format!("--dbdir={}", dir.path().display()))
        // As the user running the test: the directory is theirs (as root, postgrey
        // would otherwise become the user postgrey, who cannot write there).
        .arg(format!("--user={}", id("-un")))
        .arg(format!("--group={}", id("-gn")))
        .arg(format!("--whitelist-clients={}", empty.display()))
        .arg(format!("--whitelist-recipients={}", empty.display()))
        .arg("--auto-whitelist-clients=0")
        .arg("--hostname=greylist.test");
    Some(Daemon::spawn(
        "postgrey",
        command,
        address,
        dir,
        Duration::from_secs(20),
    ))
}

/// dnsmasq on a free loopback port (UDP and TCP) answering `records` (dnsmasq options
/// such as `--address=/1.0.0.127.zen.test/127.0.0.2`, `--ptr-record=...` or
/// `--host-record=...`) with a TTL of 60 s, and NXDOMAIN for any other name under
/// `.test` and `in-addr.arpa`; it asks no other server and logs the queries it gets
/// (see [`dnsmasq_queries`]). `None` when dnsmasq is not installed.
pub fn dnsmasq(records: &[&str]) -> Option<Daemon> {
    let binary = super::tool("dnsmasq")?;
    let address = free_address();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut command = Command::new(binary);
    command
        .arg("--conf-file=/dev/null")
        .arg("--keep-in-foreground")
        .arg(format!("--port={}", address.port()))
        .arg("--listen-address=127.0.0.1")
        .arg("--bind-interfaces")
        .arg(format!("--pid-file={}/dnsmasq.pid", dir.path().display()))
        .arg(format!(
            "--log-facility={}/dnsmasq.log",
            dir.path().display()
        ))
        .args([
            "--log-queries",
            "--no-resolv",
            "--no-hosts",
            "--local-ttl=60",
        ])
        .args(["--local=/test/", "--local=/in-addr.arpa/"])
        .args(records);
    Some(Daemon::spawn(
        "dnsmasq",
        command,
        address,
        dir,
        Duration::from_secs(5),
    ))
}

/// How many A queries for `name` the [`dnsmasq`] `dns` has received (from its query
/// log).
pub fn dnsmasq_queries(dns: &Daemon, name: &str) -> usize {
    let log = std::fs::read_to_string(dns.dir().join("dnsmasq.log")).unwrap_or_default();
    log.lines()
        .filter(|l| l.contains(&format!("query[A] {name} ")))
        .count()
}

/// A mailbox the [`dovecot`] of a test knows: its address and, when it has one, its
/// quota rule (Dovecot's `quota_rule`, such as `*:storage=1K`).
#[derive(Clone, Copy, Debug)]
pub struct DovecotUser<'a> {
    /// `user@domain`.
    pub address: &'a str,
    /// The user's `quota_rule`, or none (no limit).
    pub quota: Option<&'a str>,
}

impl<'a> DovecotUser<'a> {
    /// A mailbox without quota.
    pub fn new(address: &'a str) -> Self {
        Self {
            address,
            quota: None,
        }
    }

    /// With the quota rule `rule` (`*:storage=1K`).
    pub fn quota(self, rule: &'a str) -> Self {
        Self {
            quota: Some(rule),
            ..self
        }
    }
}

/// Dovecot (2.3, as Debian 12 has it) with only its LMTP service, on a free loopback
/// port, a configuration of its own and everything in a temporary directory:
/// `users` in a passwd-file (`auth_username_format = %Lu`: addresses compare
/// case-insensitively), Maildirs under `<dir>/mail/<domain>/<user>` (see
/// [`dovecot_maildir`]), `recipient_delimiter = +`, the `quota` plugin with the maildir
/// backend, each user's quota rule as a userdb field, and `lmtp_rcpt_check_quota = yes`
/// (a full mailbox is refused at RCPT: `552 5.2.2`, or `452 4.2.2` with
/// `full_tempfail`, Dovecot's `quota_full_tempfail`). Mail is stored as the user
/// `nobody` when the test runs as root (Dovecot does not write mail as root), as the
/// test's user otherwise. Its log is `<dir>/dovecot.log`. `None` when Dovecot is not
/// installed (Debian: `dovecot-core` and `dovecot-lmtpd`).
///
/// ```no_run
/// use smtp_client::testing::daemons::{DovecotUser, dovecot};
/// let Some(dovecot) = dovecot(&[DovecotUser::new("alice@example.test")], false) else {
///     return; // not installed: the test skips (a failure under CI=true)
/// };
/// println!("Dovecot's LMTP listens on {}", dovecot.address);
/// ```
pub fn dovecot(users: &[DovecotUser<'_>], full_tempfail: bool) -> Option<Daemon> {
    let binary = super::tool("dovecot")?;
    let dir = tempfile::tempdir().expect("a temporary directory");
    let d = dir.path().display();
    let address = free_address();
    let root = id("-u") == "0";
    // Whom Dovecot's own processes and the mail files belong to.
    let (internal, internal_group) = (id("-un"), id("-gn"));
    let (mail_user, mail_group) = if root {
        (id_of("-u", "nobody"), id_of("-g", "nobody"))
    } else {
        (id("-u"), id("-g"))
    };
    let mail = dir.path().join("mail");
    for sub in ["run", "state", "mail"] {
        std::fs::create_dir(dir.path().join(sub)).expect("a directory for Dovecot");
    }
    chown_all(&mail, &mail_user, &mail_group);
    let passwd: String = users
        .iter()
        .map(|u| {
            let quota = u
                .quota
                .map(|rule| format!("userdb_quota_rule={rule}"))
                .unwrap_or_default();
            format!(
                "{}:{{PLAIN}}unused::::::{quota}\n",
                u.address.to_lowercase()
            )
        })
        .collect();
    std::fs::write(dir.path().join("users"), passwd).expect("the users file");
    let tempfail = if full_tempfail { "yes" } else { "no" };
    let port = address.port();
    let config = format!(
        r#"# Dovecot 2.3: LMTP only, everything under {d}.
base_dir = {d}/run
state_dir = {d}/state
instance_name = dovecot-test-{port}
log_path = {d}/dovecot.log
info_log_path = {d}/dovecot.log
protocols = lmtp
listen = 127.0.0.1
ssl = no
default_internal_user = {internal}
default_internal_group = {internal_group}
default_login_user = {internal}
first_valid_uid = 0
first_valid_gid = 0
mail_uid = {mail_user}
mail_gid = {mail_group}
mail_location = maildir:{d}/mail/%d/%n
auth_username_format = %Lu
recipient_delimiter = +
lmtp_rcpt_check_quota = yes
quota_full_tempfail = {tempfail}
mail_plugins = quota
plugin {{
  quota = maildir:User quota
}}
passdb {{
  driver = passwd-file
  args = {d}/users
}}
userdb {{
  driver = passwd-file
  args = {d}/users
}}
service lmtp {{
  inet_listener lmtp {{
    address = 127.0.0.1
    port = {port}
  }}
  unix_listener lmtp {{
    mode = 0600
  }}
}}
"#
    );
    let config_path = dir.path().join("dovecot.conf");
    std::fs::write(&config_path, config).expect("dovecot.conf");
    let mut command = Command::new(binary);
    command.arg("-F").arg("-c").arg(&config_path);
    Some(Daemon::spawn(
        "dovecot",
        command,
        address,
        dir,
        Duration::from_secs(20),
    ))
}

/// The Maildir where the [`dovecot`] `dovecot` keeps `address`'s mail (a sub-address
/// `user+tag@` is `user`'s).
pub fn dovecot_maildir(dovecot: &Daemon, address: &str) -> std::path::PathBuf {
    let address = address.to_lowercase();
    let (user, domain) = address.rsplit_once('@').unwrap_or((&address, ""));
    let user = user.split('+').next().unwrap_or(user);
    dovecot.dir().join("mail").join(domain).join(user)
}

/// Puts a message of `size` bytes into `address`'s Maildir (`new/`) behind Dovecot's
/// back, as its mail user, to fill a mailbox before Dovecot first counts its quota.
pub fn dovecot_prefill(dovecot: &Daemon, address: &str, size: usize) {
    let maildir = dovecot_maildir(dovecot, address);
    for sub in ["cur", "new", "tmp"] {
        std::fs::create_dir_all(maildir.join(sub)).expect("a Maildir");
    }
    let head = b"Subject: filler\n\n";
    let mut message = head.to_vec();
    message.resize(size.max(head.len()), b'x');
    let name = format!("1000000000.prefill.test,S={}", message.len());
    std::fs::write(maildir.join("new").join(name), message).expect("a message");
    let mail = dovecot.dir().join("mail");
    let owner = std::fs::metadata(&mail).expect("the mail directory");
    use std::os::unix::fs::MetadataExt;
    chown_all(&mail, &owner.uid().to_string(), &owner.gid().to_string());
}

/// The files of `address`'s Maildir `new/` [`dovecot`] delivered, read.
pub fn dovecot_delivered(dovecot: &Daemon, address: &str) -> Vec<Vec<u8>> {
    let new = dovecot_maildir(dovecot, address).join("new");
    let mut files: Vec<_> = std::fs::read_dir(new)
        .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    files
        .iter()
        .filter(|p| !p.to_string_lossy().contains(".prefill."))
        .filter_map(|p| std::fs::read(p).ok())
        .collect()
}

/// [`dovecot`]'s log so far.
pub fn dovecot_log(dovecot: &Daemon) -> String {
    std::fs::read_to_string(dovecot.dir().join("dovecot.log")).unwrap_or_default()
}

/// `id FLAG USER` (`-u nobody`): a user's number.
fn id_of(flag: &str, user: &str) -> String {
    let out = Command::new("id").args([flag, user]).output().expect("id");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// `chown -R user:group path` (numbers or names).
fn chown_all(path: &Path, user: &str, group: &str) {
    let status = Command::new("chown")
        .arg("-R")
        .arg(format!("{user}:{group}"))
        .arg(path)
        .status()
        .expect("chown");
    assert!(
        status.success(),
        "chown -R {user}:{group} {}",
        path.display()
    );
}
