//! Daemons from Debian that tests start in the foreground, each on a free port with
//! its files in a temporary directory of its own, and stop when dropped: rspamd and
//! postgrey (the filter hooks' tests in smtp-server and mta-bin use the same ones),
//! dnsmasq (the DNS lists' and reverse DNS's tests in auth-checks and mta-bin),
//! Dovecot's LMTP server (the recipient verification tests in mta-bin), and Knot DNS
//! with Unbound (DANE's tests: zones signed at start, a validating resolver).
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

/// A zone [`knot`] serves: its name, its records in zone file syntax (relative names
/// are under the zone; `$TTL 60` and an SOA come first, added by [`knot`]), and
/// whether knot signs it (DNSSEC, ECDSA P-256, one key signing everything).
#[derive(Clone, Copy, Debug)]
pub struct KnotZone<'a> {
    /// The zone's name, such as `dane.test`.
    pub name: &'a str,
    /// Its records, one a line, such as `mx A 127.0.0.1`.
    pub records: &'a str,
    /// Signed by knot as it loads the zone.
    pub signed: bool,
}

/// Knot DNS (knotd) as an authoritative server on a free loopback port (UDP and TCP)
/// for `zones`, started once each zone is loaded (and signed: its keys are made with
/// `keymgr` before knotd starts, see [`knot_ds`]); `None` when knotd, keymgr or kdig
/// (to see that the zones are loaded) is not installed (Debian: `knot`,
/// `knot-dnsutils`; `.ci/deps/dane.sh`).
pub fn knot(zones: &[KnotZone<'_>]) -> Option<Daemon> {
    let binary = super::tool("knotd")?;
    let keymgr = super::tool("keymgr")?;
    let kdig = super::tool("kdig")?;
    let dir = tempfile::tempdir().expect("a temporary directory");
    let d = dir.path().display();
    let address = free_address();
    let (ip, port) = (address.ip(), address.port());
    let mut config = format!(
        r#"server:
    listen: {ip}@{port}
    rundir: {d}
database:
    storage: {d}
    kasp-db: {d}/keys
log:
  - target: stderr
    any: warning
policy:
  - id: test
    algorithm: ecdsap256sha256
    manual: on
    single-type-signing: on
template:
  - id: default
    storage: {d}
    zonefile-sync: -1
    zonefile-load: whole
    journal-content: none
zone:
"#
    );
    for zone in zones {
        let name = zone.name.trim_end_matches('.');
        config.push_str(&format!("  - domain: {name}\n"));
        if zone.signed {
            config.push_str("    dnssec-signing: on\n    dnssec-policy: test\n");
        }
        let text = format!(
            "$ORIGIN {name}.\n$TTL 60\n@ SOA ns.{name}. hostmaster.{name}. 1 3600 600 86400 60\n{}\n",
            zone.records
        );
        std::fs::write(dir.path().join(format!("{name}.zone")), text).expect("a zone file");
    }
    let config_path = dir.path().join("knot.conf");
    std::fs::write(&config_path, config).expect("knot.conf");
    for zone in zones.iter().filter(|z| z.signed) {
        let status = Command::new(&keymgr)
            .arg("-c")
            .arg(&config_path)
            .arg(zone.name.trim_end_matches('.'))
            .args([
                "generate",
                "algorithm=ecdsap256sha256",
                "ksk=yes",
                "zsk=yes",
            ])
            .stdout(Stdio::null())
            .status()
            .expect("keymgr");
        assert!(
            status.success(),
            "keymgr could not make a key for {}",
            zone.name
        );
    }
    let mut command = Command::new(binary);
    command.arg("-c").arg(&config_path);
    let daemon = Daemon::spawn("knotd", command, address, dir, Duration::from_secs(10));
    // knotd listens before it has loaded (and signed) its zones: wait for each SOA.
    let deadline = Instant::now() + Duration::from_secs(20);
    for zone in zones {
        loop {
            let out = Command::new(&kdig)
                .arg(format!("@{ip}"))
                .args(["-p", &port.to_string(), "+dnssec", "+norec", "+timeout=1"])
                .arg(zone.name)
                .arg("SOA")
                .output()
                .expect("kdig");
            let text = String::from_utf8_lossy(&out.stdout);
            let loaded = text.contains("status: NOERROR") && text.contains("Flags: qr aa");
            if loaded && (!zone.signed || text.contains("RRSIG")) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "knotd did not load {} in time:\n{text}",
                zone.name
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Some(daemon)
}

/// The DS records (SHA-256) of the signed `zone` of the [`knot`] `knot`, one a line in
/// presentation form (`dane.test. DS 53064 13 2 49ad...`): what the parent would
/// publish, and what a validating resolver takes as a trust anchor.
pub fn knot_ds(knot: &Daemon, zone: &str) -> Vec<String> {
    let keymgr = super::tool("keymgr").expect("keymgr");
    let out = Command::new(&keymgr)
        .arg("-c")
        .arg(knot.dir().join("knot.conf"))
        .arg(zone.trim_end_matches('.'))
        .arg("ds")
        .output()
        .expect("keymgr");
    assert!(
        out.status.success(),
        "keymgr ds {zone}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.split_whitespace().nth(4) == Some("2"))
        .map(str::to_owned)
        .collect()
}

/// Unbound as a validating resolver on a free loopback port (UDP and TCP), asking no
/// one but the servers of `stubs` (zone name, server address: `stub-zone`s; the
/// default `test.` local zone is off) and trusting `trust_anchors` (records in
/// presentation form, DS or DNSKEY; names under no anchor are insecure). Its log is
/// `<dir>/unbound.log` (validation failures explained). `None` when Unbound is not
/// installed (Debian: `unbound`; `.ci/deps/dane.sh`).
pub fn unbound(stubs: &[(&str, SocketAddr)], trust_anchors: &[String]) -> Option<Daemon> {
    let binary = super::tool("unbound")?;
    let dir = tempfile::tempdir().expect("a temporary directory");
    let d = dir.path().display();
    let address = free_address();
    let (ip, port) = (address.ip(), address.port());
    let mut config = format!(
        r#"server:
    interface: {ip}@{port}
    port: {port}
    do-daemonize: no
    username: ""
    chroot: ""
    directory: "{d}"
    pidfile: "{d}/unbound.pid"
    use-syslog: no
    logfile: "{d}/unbound.log"
    verbosity: 1
    val-log-level: 2
    access-control: 127.0.0.0/8 allow
    do-not-query-localhost: no
    do-ip6: no
    num-threads: 1
    so-reuseport: no
    module-config: "validator iterator"
    local-zone: "test." nodefault
"#
    );
    for anchor in trust_anchors {
        config.push_str(&format!("    trust-anchor: \"{anchor}\"\n"));
    }
    config.push_str("remote-control:\n    control-enable: no\n");
    for (zone, server) in stubs {
        config.push_str(&format!(
            "stub-zone:\n    name: \"{zone}\"\n    stub-addr: {}@{}\n",
            server.ip(),
            server.port()
        ));
    }
    let config_path = dir.path().join("unbound.conf");
    std::fs::write(&config_path, config).expect("unbound.conf");
    let mut command = Command::new(binary);
    command.arg("-d").arg("-c").arg(&config_path);
    Some(Daemon::spawn(
        "unbound",
        command,
        address,
        dir,
        Duration::from_secs(10),
    ))
}

/// [`unbound`]'s log so far.
pub fn unbound_log(unbound: &Daemon) -> String {
    std::fs::read_to_string(unbound.dir().join("unbound.log")).unwrap_or_default()
}
