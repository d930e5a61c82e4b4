//! What the smtp-server filter chain costs per message, four chains side by side in one
//! run:
//!
//! - `none`: no filter (the relay policy only, which every relay listener has);
//! - `closure`: one closure filter, `rcpt_filter` (refuses nothing) and `data_filter`
//!   (prepends a header field);
//! - `milter`: OpenDKIM signing (RSA-2048) through `filters::milter::Milter`, at every
//!   stage as its documentation says;
//! - `rspamd`: a scan through `filters::rspamd::Rspamd` (feature `rspamd`), by an rspamd
//!   on a minimal configuration (its core only, as in smtp-server's tests);
//! - `rspamd-stock`: the same, by an rspamd on Debian's stock rules.
//!
//! The daemons are started by `../servers/filters.sh`, which passes their addresses and
//! process ids here in `OPENDKIM`, `OPENDKIM_PID`, `RSPAMD`, `RSPAMD_PID`, `RSPAMD_STOCK`
//! and `RSPAMD_STOCK_PID`; a chain whose daemon is not given or does not answer is
//! skipped with a message.
//!
//! Each chain is an `smtp_server::Server` on 127.0.0.1 whose data service is a sink that
//! counts messages and drops them (no queue, no disk: the queue is not measured). The
//! client is in the same process on another runtime: `SESSIONS` concurrent connections,
//! each sending its share of `COUNT` messages of about 2 KB (MAIL, RCPT, DATA, one after
//! the other after each reply, a new MAIL after the 250), no TLS. The chains run
//! interleaved, `ROUNDS` times after a warm-up, and the table shows medians.
//!
//! CPU: `getrusage(RUSAGE_SELF)` (client and server, one process), the server runtime's
//! threads alone (`/proc/self/task/*/stat`, threads named `bench-server`), and the daemon
//! with all its descendants (`/proc/<pid>/stat`, utime + stime).
//!
//! Environment: `COUNT` (2000 messages per chain and session count), `COUNT_MILTER` and
//! `COUNT_RSPAMD` (default `COUNT`), `SESSIONS` ("1 10"), `ROUNDS` (3), `WARMUP` (200 messages per
//! chain and session count before the first round).
//!
//! `cargo bench --bench filter_chain` runs it; without the daemons only `none` and
//! `closure` run.

#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use smtp_server::filters::milter::{DefaultAction, Milter, MilterSettings};
use smtp_server::filters::rspamd::{OnFailure, Rspamd, RspamdSettings};
use smtp_server::filters::{DomainSet, RelayPolicy};
use smtp_server::{
    BoxError, DataRequest, Decision, EnhancedStatus, Limits, ListenerConfig, ListenerMode, Server,
    ServerConfig, Stages, filter, filter_async,
};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// The client gives up on a reply after this long (a daemon that hangs).
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a daemon has to accept a connection before its chain is skipped.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// Name of the server runtime's threads (their CPU time is the server's share).
const SERVER_THREAD: &str = "bench-server";
const DOMAIN: &str = "bench.test";

// ------------------------------------------------------------------ chains

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Chain {
    None,
    Closure,
    Milter,
    Rspamd,
    RspamdStock,
}

impl Chain {
    const ALL: [Chain; 5] = [
        Chain::None,
        Chain::Closure,
        Chain::Milter,
        Chain::Rspamd,
        Chain::RspamdStock,
    ];

    fn label(self) -> &'static str {
        match self {
            Chain::None => "(a) no filter",
            Chain::Closure => "(b) closure",
            Chain::Milter => "(c) milter: OpenDKIM",
            Chain::Rspamd => "(d) rspamd: minimal",
            Chain::RspamdStock => "(e) rspamd: stock rules",
        }
    }

    /// A header field the chain adds to every message: the sink counts the messages
    /// that have it, to show the filter did its work on each.
    fn marker(self) -> Option<&'static [u8]> {
        match self {
            Chain::None => None,
            Chain::Closure => Some(b"X-Bench-Filter: "),
            Chain::Milter => Some(b"DKIM-Signature: "),
            Chain::Rspamd | Chain::RspamdStock => Some(b"X-Spam-Status: "),
        }
    }
}

/// A daemon, as the driver script describes it: its address (OpenDKIM: `unix:/path`
/// or `inet:host:port`; rspamd: its normal worker, `http://host:port`) and the pid of its
/// (main) process.
struct Daemon {
    address: String,
    pid: Option<u32>,
}

/// The daemons the driver script started.
struct Daemons {
    opendkim: Option<Daemon>,
    rspamd: Option<Daemon>,
    rspamd_stock: Option<Daemon>,
}

impl Daemons {
    fn from_env() -> Self {
        let daemon = |name: &str| {
            let address = std::env::var(name).ok().filter(|a| !a.is_empty())?;
            let pid = std::env::var(format!("{name}_PID"))
                .ok()
                .and_then(|p| p.trim().parse().ok());
            Some(Daemon { address, pid })
        };
        Self {
            opendkim: daemon("OPENDKIM"),
            rspamd: daemon("RSPAMD"),
            rspamd_stock: daemon("RSPAMD_STOCK"),
        }
    }

    /// The daemon `chain` talks to; `Ok(None)` for a chain without one.
    fn of(&self, chain: Chain) -> Result<Option<&Daemon>, String> {
        let (daemon, variable) = match chain {
            Chain::None | Chain::Closure => return Ok(None),
            Chain::Milter => (&self.opendkim, "OPENDKIM"),
            Chain::Rspamd => (&self.rspamd, "RSPAMD"),
            Chain::RspamdStock => (&self.rspamd_stock, "RSPAMD_STOCK"),
        };
        daemon
            .as_ref()
            .map(Some)
            .ok_or_else(|| format!("{variable} is not set (../servers/filters.sh sets it)"))
    }
}

/// Messages the sink received, and how many of them carried the chain's marker.
#[derive(Default)]
struct Counters {
    received: AtomicU64,
    marked: AtomicU64,
}

/// The data service: counts the message and drops it.
fn sink(
    counters: Arc<Counters>,
    marker: Option<&'static [u8]>,
) -> impl tower::Service<
    DataRequest,
    Response = Decision,
    Error = BoxError,
    Future = impl Future<Output = Result<Decision, BoxError>> + Send,
> + Clone
+ Send
+ Sync
+ 'static {
    tower::service_fn(move |req: DataRequest| {
        let counters = Arc::clone(&counters);
        async move {
            counters.received.fetch_add(1, Ordering::Relaxed);
            if let Some(m) = marker {
                let finder = memchr::memmem::Finder::new(m);
                if finder.find(&req.added_headers).is_some() || finder.find(&req.body).is_some() {
                    counters.marked.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok::<_, BoxError>(Decision::accept())
        }
    })
}

/// The chain's stages, or why it cannot run.
fn stages(chain: Chain, daemons: &Daemons, counters: Arc<Counters>) -> Result<Stages, String> {
    let policy = filter(RelayPolicy::new(DomainSet::new([DOMAIN]), vec![]));
    let stages = Stages::new(sink(counters, chain.marker())).relay_policy(policy);
    Ok(match chain {
        Chain::None => stages,
        Chain::Closure => stages
            .rcpt_filter(|req| {
                let trap = req.to.mailbox().is_some_and(|m| m.local_part() == "trap");
                trap.then(|| {
                    Decision::reject::<550>(EnhancedStatus::BAD_DESTINATION_MAILBOX, "No such user")
                })
            })
            .data_filter(|req| {
                req.prepend_header("X-Bench-Filter", "closure; checked");
                None
            }),
        Chain::Milter => {
            let address = &daemons.of(chain)?.ok_or("no daemon")?.address;
            let milter = Milter::new(MilterSettings {
                name: "opendkim".into(),
                address: address.clone(),
                hostname: format!("mx.{DOMAIN}"),
                connect_timeout: PROBE_TIMEOUT,
                command_timeout: Duration::from_secs(10),
                end_of_message_timeout: Duration::from_secs(20),
                // A milter that fails shows as refused messages, not as fast ones.
                default_action: DefaultAction::Tempfail,
                ..MilterSettings::default()
            })
            .map_err(|e| format!("milter {address}: {e}"))?;
            stages
                .connect_layer(filter_async(milter.clone()))
                .ehlo_layer(filter_async(milter.clone()))
                .auth_layer(filter_async(milter.clone()))
                .mail_layer(filter_async(milter.clone()))
                .rcpt_layer(filter_async(milter.clone()))
                .data_layer(filter_async(milter))
        }
        Chain::Rspamd | Chain::RspamdStock => {
            let address = &daemons.of(chain)?.ok_or("no daemon")?.address;
            let rspamd = Rspamd::new(RspamdSettings {
                address: address
                    .parse()
                    .map_err(|e| format!("RSPAMD={address}: {e}"))?,
                timeout: Duration::from_secs(20),
                on_failure: OnFailure::Tempfail,
                ..RspamdSettings::default()
            });
            stages.data_layer(filter_async(rspamd))
        }
    })
}

/// Can the chain's daemon be reached at all (so that a missing one skips its chain
/// rather than failing every message)?
async fn probe(chain: Chain, daemons: &Daemons) -> Result<(), String> {
    let Some(daemon) = daemons.of(chain)? else {
        return Ok(());
    };
    let target = &daemon.address;
    let connect = async {
        if let Some(path) = target
            .strip_prefix("unix:")
            .or_else(|| target.strip_prefix("local:"))
        {
            tokio::net::UnixStream::connect(path).await.map(drop)
        } else {
            let hostport = target
                .trim_start_matches("http://")
                .trim_start_matches("inet:")
                .trim_end_matches('/');
            TcpStream::connect(hostport).await.map(drop)
        }
    };
    match tokio::time::timeout(PROBE_TIMEOUT, connect).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("{target}: {e}")),
        Err(_) => Err(format!("{target}: no answer in {PROBE_TIMEOUT:?}")),
    }
}

async fn start_server(stages: Stages) -> Result<SocketAddr, String> {
    let config = ServerConfig {
        hostname: format!("mx.{DOMAIN}"),
        listeners: vec![ListenerConfig {
            address: "127.0.0.1:0".parse().expect("address"),
            mode: ListenerMode::Relay,
            proxy: None,
        }],
        limits: Limits {
            max_connections_per_ip: 1000,
            ..Limits::default()
        },
        ..ServerConfig::default()
    };
    let server = Server::bind(config, stages)
        .await
        .map_err(|e| format!("bind: {e}"))?;
    let addr = server.local_addrs()[0].1;
    tokio::spawn(server.run(std::future::pending()));
    Ok(addr)
}

// ------------------------------------------------------------------ client

/// A message of about 2 KB: the header of a real one, a plain-text body.
fn message(session: usize, seq: usize) -> Vec<u8> {
    let mut m = format!(
        "From: Alice Example <alice@{DOMAIN}>\r\n\
         To: Bob Example <bob@{DOMAIN}>\r\n\
         Subject: Quarterly figures, draft {seq} for review\r\n\
         Date: Sat, 01 Mar 2025 10:00:00 +0000\r\n\
         Message-ID: <{session}.{seq}.bench@{DOMAIN}>\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         Content-Transfer-Encoding: 8bit\r\n\
         \r\n\
         Hello Bob,\r\n\r\n"
    );
    let line = "the figures for the quarter are attached below; please check the totals.\r\n";
    while m.len() + line.len() < 2000 {
        m.push_str(line);
    }
    m.push_str("\r\nRegards,\r\nAlice\r\n");
    m.into_bytes()
}

struct Client {
    reader: BufReader<tokio::net::tcp::OwnedReadHalf>,
    writer: tokio::net::tcp::OwnedWriteHalf,
    line: Vec<u8>,
}

impl Client {
    async fn connect(addr: SocketAddr) -> Result<Self, String> {
        let stream = tokio::time::timeout(REPLY_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| "connect: timeout".to_owned())?
            .map_err(|e| format!("connect: {e}"))?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        let (r, w) = stream.into_split();
        let mut client = Self {
            reader: BufReader::new(r),
            writer: w,
            line: Vec::with_capacity(512),
        };
        client.expect(220, "greeting").await?;
        Ok(client)
    }

    async fn send(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.writer
            .write_all(bytes)
            .await
            .map_err(|e| format!("write: {e}"))
    }

    /// Reads one reply (all its lines); its code.
    async fn reply(&mut self) -> Result<u16, String> {
        loop {
            self.line.clear();
            let n =
                tokio::time::timeout(REPLY_TIMEOUT, self.reader.read_until(b'\n', &mut self.line))
                    .await
                    .map_err(|_| format!("no reply in {REPLY_TIMEOUT:?}"))?
                    .map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                return Err("connection closed".into());
            }
            if self.line.len() < 4 || self.line[3] != b'-' {
                let code = std::str::from_utf8(self.line.get(..3).unwrap_or_default())
                    .ok()
                    .and_then(|c| c.parse().ok())
                    .ok_or_else(|| {
                        format!("garbled reply {:?}", String::from_utf8_lossy(&self.line))
                    })?;
                return Ok(code);
            }
        }
    }

    async fn expect(&mut self, code: u16, what: &str) -> Result<(), String> {
        let got = self.reply().await?;
        if got == code {
            Ok(())
        } else {
            Err(format!(
                "{what}: {}",
                String::from_utf8_lossy(&self.line).trim_end()
            ))
        }
    }

    /// One transaction; `Ok(false)` when the server refused it (then RSET).
    async fn transaction(&mut self, content: &[u8]) -> Result<bool, String> {
        let steps: [(&[u8], u16); 3] = [
            (b"MAIL FROM:<alice@bench.test>\r\n", 250),
            (b"RCPT TO:<bob@bench.test>\r\n", 250),
            (b"DATA\r\n", 354),
        ];
        for (command, code) in steps {
            self.send(command).await?;
            if self.reply().await? != code {
                self.send(b"RSET\r\n").await?;
                self.reply().await?;
                return Ok(false);
            }
        }
        self.send(content).await?;
        self.send(b".\r\n").await?;
        Ok(self.reply().await? == 250)
    }
}

/// What one session did.
#[derive(Default)]
struct SessionResult {
    latencies: Vec<Duration>,
    refused: u64,
    error: Option<String>,
}

async fn session(addr: SocketAddr, id: usize, count: usize) -> SessionResult {
    let mut result = SessionResult {
        latencies: Vec::with_capacity(count),
        ..SessionResult::default()
    };
    let contents: Vec<Vec<u8>> = (0..count).map(|seq| message(id, seq)).collect();
    let run = async {
        let mut c = Client::connect(addr).await?;
        c.send(format!("EHLO client.{DOMAIN}\r\n").as_bytes())
            .await?;
        c.expect(250, "EHLO").await?;
        for content in &contents {
            let start = Instant::now();
            let accepted = c.transaction(content).await?;
            result.latencies.push(start.elapsed());
            if !accepted {
                result.refused += 1;
            }
        }
        c.send(b"QUIT\r\n").await?;
        let _ = c.reply().await;
        Ok::<_, String>(())
    };
    if let Err(e) = run.await {
        result.error = Some(e);
    }
    result
}

// ------------------------------------------------------------------ CPU time

/// Clock ticks per second of /proc's utime and stime.
fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 { hz as f64 } else { 100.0 }
}

/// utime + stime (in ticks) and the parent pid from a /proc `stat` file.
fn stat_cpu(path: &Path) -> Option<(u64, u32)> {
    let text = std::fs::read_to_string(path).ok()?;
    // The command name is in parentheses and may hold spaces: fields start after it.
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Here field 0 is the state (field 3 of proc(5)); ppid is 4, utime 14, stime 15.
    let ppid = fields.get(1)?.parse().ok()?;
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime, ppid))
}

/// CPU seconds of `pid` and all its descendants (rspamd's workers), as now.
fn tree_cpu(pid: u32) -> f64 {
    let mut procs = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(p) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            if let Some((ticks, ppid)) = stat_cpu(&entry.path().join("stat")) {
                procs.push((p, ppid, ticks));
            }
        }
    }
    let mut tree = vec![pid];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(procs.iter().filter(|p| p.1 == parent).map(|p| p.0));
        i += 1;
    }
    let ticks: u64 = procs
        .iter()
        .filter(|p| tree.contains(&p.0))
        .map(|p| p.2)
        .sum();
    ticks as f64 / ticks_per_second()
}

/// CPU seconds of this process (client and server): getrusage(RUSAGE_SELF).
fn self_cpu() -> f64 {
    // SAFETY: getrusage writes into the struct we own.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// CPU seconds of the server runtime's threads.
fn server_threads_cpu() -> f64 {
    let mut ticks = 0;
    if let Ok(dir) = std::fs::read_dir("/proc/self/task") {
        for entry in dir.flatten() {
            let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
            if comm.trim_end() == SERVER_THREAD
                && let Some((t, _)) = stat_cpu(&entry.path().join("stat"))
            {
                ticks += t;
            }
        }
    }
    ticks as f64 / ticks_per_second()
}

// ------------------------------------------------------------------ one run

/// One run of one chain at one session count.
#[derive(Clone, Debug)]
struct Sample {
    messages: usize,
    per_second: f64,
    mean_ms: f64,
    p99_ms: f64,
    /// CPU µs per message: this process, its server threads, the daemon.
    self_us: f64,
    server_us: f64,
    daemon_us: Option<f64>,
    refused: u64,
    unmarked: u64,
    errors: Vec<String>,
}

struct Target {
    chain: Chain,
    addr: SocketAddr,
    counters: Arc<Counters>,
    daemon_pid: Option<u32>,
    count: usize,
}

async fn run(target: &Target, sessions: usize, count: usize) -> Sample {
    let received0 = target.counters.received.load(Ordering::Relaxed);
    let marked0 = target.counters.marked.load(Ordering::Relaxed);
    let daemon0 = target.daemon_pid.map(tree_cpu);
    let server0 = server_threads_cpu();
    let self0 = self_cpu();
    let start = Instant::now();

    let tasks: Vec<_> = (0..sessions)
        .map(|i| {
            let share = count / sessions + usize::from(i < count % sessions);
            tokio::spawn(session(target.addr, i, share))
        })
        .collect();
    let mut latencies = Vec::with_capacity(count);
    let mut refused = 0;
    let mut errors = Vec::new();
    for task in tasks {
        match task.await {
            Ok(r) => {
                latencies.extend(r.latencies);
                refused += r.refused;
                errors.extend(r.error);
            }
            Err(e) => errors.push(e.to_string()),
        }
    }

    let wall = start.elapsed().as_secs_f64();
    let self_cpu = self_cpu() - self0;
    let server_cpu = server_threads_cpu() - server0;
    let daemon_cpu = target
        .daemon_pid
        .map(tree_cpu)
        .zip(daemon0)
        .map(|(b, a)| b - a);
    let received = target.counters.received.load(Ordering::Relaxed) - received0;
    let marked = target.counters.marked.load(Ordering::Relaxed) - marked0;

    let done = latencies.len().max(1);
    latencies.sort_unstable();
    let p99 = latencies
        .get((latencies.len() * 99).div_ceil(100).saturating_sub(1))
        .copied()
        .unwrap_or_default();
    let mean = latencies.iter().sum::<Duration>() / u32::try_from(done).unwrap_or(u32::MAX);
    let per_msg = |secs: f64| secs * 1e6 / done as f64;
    let accepted = latencies.len() as u64 - refused;
    if received != accepted {
        errors.push(format!(
            "the sink received {received} messages, the client saw {accepted} accepted"
        ));
    }
    Sample {
        messages: latencies.len(),
        per_second: latencies.len() as f64 / wall,
        mean_ms: mean.as_secs_f64() * 1e3,
        p99_ms: p99.as_secs_f64() * 1e3,
        self_us: per_msg(self_cpu),
        server_us: per_msg(server_cpu),
        daemon_us: daemon_cpu.map(per_msg),
        refused,
        unmarked: if target.chain.marker().is_some() {
            received - marked
        } else {
            0
        },
        errors,
    }
}

// ------------------------------------------------------------------ report

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

fn shell(program: &str, args: &[&str]) -> String {
    std::process::Command::new(program)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// The medians of one chain at one session count.
struct Row {
    chain: Chain,
    sessions: usize,
    messages: usize,
    per_second: f64,
    mean_ms: f64,
    p99_ms: f64,
    self_us: f64,
    server_us: f64,
    daemon_us: Option<f64>,
}

impl Row {
    fn of(chain: Chain, sessions: usize, samples: &[Sample]) -> Self {
        let m = |f: fn(&Sample) -> f64| median(samples.iter().map(f).collect());
        Self {
            chain,
            sessions,
            messages: samples.first().map_or(0, |s| s.messages),
            per_second: m(|s| s.per_second),
            mean_ms: m(|s| s.mean_ms),
            p99_ms: m(|s| s.p99_ms),
            self_us: m(|s| s.self_us),
            server_us: m(|s| s.server_us),
            daemon_us: samples
                .iter()
                .all(|s| s.daemon_us.is_some())
                .then(|| m(|s| s.daemon_us.unwrap_or_default())),
        }
    }

    fn total_us(&self) -> f64 {
        self.self_us + self.daemon_us.unwrap_or(0.0)
    }
}

fn print_table(rows: &[Row]) {
    println!(
        "| chain | sessions | msgs/run | msgs/s | mean ms | p99 ms | our CPU µs/msg | of which server | daemon CPU µs/msg | total CPU µs/msg | total CPU × (a) | added CPU µs/msg | mean latency × (a) |"
    );
    println!(
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for row in rows {
        let base = rows
            .iter()
            .find(|r| r.chain == Chain::None && r.sessions == row.sessions);
        let (ratio, added, latency) = match base {
            Some(b) => (
                format!("{:.2}", row.total_us() / b.total_us()),
                format!("{:.0}", row.total_us() - b.total_us()),
                format!("{:.2}", row.mean_ms / b.mean_ms),
            ),
            None => ("".into(), "".into(), "".into()),
        };
        println!(
            "| {} | {} | {} | {:.0} | {:.3} | {:.3} | {:.0} | {:.0} | {} | {:.0} | {} | {} | {} |",
            row.chain.label(),
            row.sessions,
            row.messages,
            row.per_second,
            row.mean_ms,
            row.p99_ms,
            row.self_us,
            row.server_us,
            row.daemon_us.map_or("–".into(), |d| format!("{d:.0}")),
            row.total_us(),
            ratio,
            added,
            latency,
        );
    }
}

// ------------------------------------------------------------------ main

fn main() {
    // `cargo bench FILTER` passes FILTER to every bench: run only when it names this one.
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    if !filters.is_empty() && !filters.iter().any(|f| "filter_chain".contains(f.as_str())) {
        return;
    }
    let count = env_usize("COUNT", 2000);
    let count_milter = env_usize("COUNT_MILTER", count);
    let count_rspamd = env_usize("COUNT_RSPAMD", count);
    let rounds = env_usize("ROUNDS", 3).max(1);
    let warmup = env_usize("WARMUP", 200);
    let sessions: Vec<usize> = std::env::var("SESSIONS")
        .unwrap_or_else(|_| "1 10".into())
        .split_whitespace()
        .filter_map(|s| s.parse().ok())
        .filter(|&s| s > 0)
        .collect();
    let daemons = Daemons::from_env();
    let load_before = load();
    let started = shell("date", &["-u", "+%Y-%m-%d %H:%M UTC"]);

    // The server: a multi-thread runtime on every core, as `mta serve` runs it.
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .thread_name(SERVER_THREAD)
        .thread_keep_alive(Duration::from_secs(3600))
        .enable_all()
        .build()
        .expect("server runtime");
    // The client: one thread (this one), like smtp-source.
    let client_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("client runtime");

    let mut targets = Vec::new();
    for chain in Chain::ALL {
        let counters = Arc::new(Counters::default());
        let ready = server_rt.block_on(async {
            probe(chain, &daemons).await?;
            start_server(stages(chain, &daemons, Arc::clone(&counters))?).await
        });
        match ready {
            Ok(addr) => targets.push(Target {
                chain,
                addr,
                counters,
                daemon_pid: daemons.of(chain).ok().flatten().and_then(|d| d.pid),
                count: match chain {
                    Chain::Milter => count_milter,
                    Chain::Rspamd | Chain::RspamdStock => count_rspamd,
                    _ => count,
                },
            }),
            Err(e) => eprintln!("skipping {}: {e}", chain.label()),
        }
    }

    if warmup > 0 {
        eprintln!("warm-up: {warmup} messages per chain and session count");
        for target in &targets {
            for &s in &sessions {
                let sample = client_rt.block_on(run(target, s, warmup.max(s)));
                for e in &sample.errors {
                    eprintln!("warm-up {} x{s}: {e}", target.chain.label());
                }
            }
        }
    }

    // samples[target][sessions] over the rounds, run interleaved.
    let mut samples = vec![vec![Vec::<Sample>::new(); sessions.len()]; targets.len()];
    let mut problems = Vec::new();
    for round in 1..=rounds {
        for (si, &s) in sessions.iter().enumerate() {
            for (ti, target) in targets.iter().enumerate() {
                let sample = client_rt.block_on(run(target, s, target.count));
                eprintln!(
                    "round {round} {:<24} sessions {s:>3}: {:>7.0} msgs/s, mean {:.3} ms, p99 {:.3} ms, ours {:.0} µs/msg (server {:.0}), daemon {} µs/msg",
                    target.chain.label(),
                    sample.per_second,
                    sample.mean_ms,
                    sample.p99_ms,
                    sample.self_us,
                    sample.server_us,
                    sample.daemon_us.map_or("–".into(), |d| format!("{d:.0}")),
                );
                if sample.refused > 0 || sample.unmarked > 0 || !sample.errors.is_empty() {
                    let problem = format!(
                        "round {round} {} x{s}: {} refused, {} without the filter's header, errors: {:?}",
                        target.chain.label(),
                        sample.refused,
                        sample.unmarked,
                        sample.errors
                    );
                    eprintln!("{problem}");
                    problems.push(problem);
                }
                samples[ti][si].push(sample);
            }
        }
    }

    let mut rows = Vec::new();
    for (si, &s) in sessions.iter().enumerate() {
        for (ti, target) in targets.iter().enumerate() {
            rows.push(Row::of(target.chain, s, &samples[ti][si]));
        }
    }

    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_default();
    println!();
    println!(
        "Filter chain cost per message, {started}: {rounds} rounds interleaved, medians; messages of {} bytes, {count} per run ({count_milter} for the milter, {count_rspamd} for rspamd), sessions {sessions:?}, one connection per session, no TLS; the sink drops messages (no queue).",
        message(0, 0).len(),
    );
    println!(
        "Machine: {} cores ({cpu}), Linux {}; load average before {load_before}, after {}.",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        shell("uname", &["-r"]),
        load()
    );
    println!(
        "\"our CPU\": this process (client and server, getrusage); \"of which server\": the server runtime's threads; \"daemon\": OpenDKIM / rspamd with its workers (/proc); total = ours + daemon."
    );
    println!();
    print_table(&rows);
    if !problems.is_empty() {
        println!();
        println!("Problems (these runs count, but check them):");
        for p in &problems {
            println!("- {p}");
        }
    }
}
