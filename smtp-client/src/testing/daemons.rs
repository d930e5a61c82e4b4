//! Daemons from Debian that tests start in the foreground, each on a free port with
//! its files in a temporary directory of its own, and stop when dropped: rspamd and
//! postgrey (the filter hooks' tests in smtp-server and mta-bin use the same ones), and
//! dnsmasq (the DNS lists' and reverse DNS's tests in auth-checks and mta-bin).
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
