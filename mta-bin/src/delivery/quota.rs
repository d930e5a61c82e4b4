//! Mailbox quotas, counted the way Maildir++ (`maildirsize`) and Dovecot's
//! `quota = maildir` backend count them, so that `mta` and Dovecot agree.
//!
//! ```text
//!  [local.quota] ──► Quotas::limits(mailbox) ──► Limits { bytes, messages }
//!                                                   │
//!  <maildir>/maildirsize ──► usage() (read, or recalculate) ──► Usage ──► fits()?
//!        ▲                                                               │
//!        └────────── add(): one "<bytes> <count>\n" line per delivery ◄──┘
//! ```
//!
//! The file `maildirsize` in the root of a user's Maildir starts with the limits
//! (`<bytes>S,<count>C`, as Dovecot writes them: `0S` for none), then has lines
//! `<bytes> <count>` that add up to what the Maildir holds. A delivery appends one line
//! (`O_APPEND`, one write). The file is computed again from the folders when it is
//! missing, broken, 5120 bytes or larger, states other limits than ours, or says the
//! box is over its limit while having more than one line or being older than 15
//! minutes (the rules of Dovecot's `quota-maildir.c` and Courier's
//! `README.maildirquota`).
//!
//! What is counted, as Dovecot counts it: every file in `new/` and `cur/` of INBOX and
//! of every Maildir++ folder (`.Name/`), Trash included (Courier leaves Trash out;
//! Dovecot counts it unless told `quota_rule = Trash:ignore`); each file's size is the
//! `,S=<size>` of its name, else its size on disk (`stat`).
//!
//! Our own recalculations and deliveries to one Maildir take turns (an exclusive
//! `flock` on the Maildir directory, waited for at most [`LOCK_TIMEOUT`]); Dovecot
//! takes no lock for `maildirsize` (it appends with `O_APPEND` and replaces the file
//! by renaming), and neither do we when we only append.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use serde::Deserialize;

/// The name of the file, in the root of a user's Maildir.
pub const MAILDIRSIZE: &str = "maildirsize";
/// A `maildirsize` this large (or larger) is computed again (Maildir++).
const MAX_FILE: usize = 5120;
/// An over-quota `maildirsize` older than this is not trusted (Maildir++).
const STALE: Duration = Duration::from_secs(15 * 60);
/// How long a delivery or a check waits for another one to the same Maildir.
pub const LOCK_TIMEOUT: Duration = Duration::from_secs(10);
/// Between two attempts to take the lock.
const LOCK_POLL: Duration = Duration::from_millis(20);

/// A size in bytes, written as a number of bytes or with a suffix `K`, `M`, `G` or `T`
/// (powers of 1024, as Dovecot's `quota_rule` reads them): `1G`, `200M`, `5120`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "SizeText")]
pub struct ByteSize(pub u64);

/// What a size may be written as in the file.
#[derive(Deserialize)]
#[serde(untagged)]
enum SizeText {
    Number(u64),
    Text(String),
}

impl TryFrom<SizeText> for ByteSize {
    type Error = String;
    fn try_from(value: SizeText) -> Result<Self, String> {
        match value {
            SizeText::Number(n) => Ok(Self(n)),
            SizeText::Text(text) => text.parse(),
        }
    }
}

impl std::str::FromStr for ByteSize {
    type Err = String;

    /// ```
    /// use mta_bin::delivery::ByteSize;
    /// assert_eq!("1G".parse::<ByteSize>(), Ok(ByteSize(1 << 30)));
    /// assert_eq!("200M".parse::<ByteSize>(), Ok(ByteSize(200 << 20)));
    /// assert_eq!("5120".parse::<ByteSize>(), Ok(ByteSize(5120)));
    /// assert!("1X".parse::<ByteSize>().is_err());
    /// ```
    fn from_str(text: &str) -> Result<Self, String> {
        let bad = || format!("{text:?} is no size (write bytes, or a number with K, M, G or T)");
        let trimmed = text.trim();
        let (digits, unit) = match trimmed.find(|c: char| !c.is_ascii_digit()) {
            Some(i) => trimmed.split_at(i),
            None => (trimmed, ""),
        };
        let number: u64 = digits.parse().map_err(|_| bad())?;
        let shift = match unit.trim().to_ascii_uppercase().as_str() {
            "" | "B" => 0,
            "K" | "KB" => 10,
            "M" | "MB" => 20,
            "G" | "GB" => 30,
            "T" | "TB" => 40,
            _ => return Err(bad()),
        };
        number.checked_mul(1 << shift).map(Self).ok_or_else(bad)
    }
}

/// How far the last message may take a box over its byte limit, as Dovecot's
/// `quota_grace`: a share of the limit (`"10%"`, the default, Dovecot's too) or a size
/// (`"10M"`, `0` for none). Only a box under its limit before the message gets it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "SizeText")]
pub enum Grace {
    /// Percent of the byte limit.
    Percent(u64),
    /// Bytes.
    Bytes(u64),
}

impl Default for Grace {
    fn default() -> Self {
        Self::Percent(10)
    }
}

impl TryFrom<SizeText> for Grace {
    type Error = String;
    fn try_from(value: SizeText) -> Result<Self, String> {
        match value {
            SizeText::Number(n) => Ok(Self::Bytes(n)),
            SizeText::Text(text) => match text.trim().strip_suffix('%') {
                Some(percent) => percent
                    .trim()
                    .parse()
                    .ok()
                    .filter(|p| *p <= 1000)
                    .map(Self::Percent)
                    .ok_or_else(|| format!("{text:?} is no percentage from 0% to 1000%")),
                None => text.parse::<ByteSize>().map(|s| Self::Bytes(s.0)),
            },
        }
    }
}

/// `[local.quota]`: the default limits of every mailbox, and those of some domains and
/// mailboxes. A limit of 0 (or none given) is no limit.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaConfig {
    /// Bytes per mailbox.
    #[serde(default)]
    pub bytes: ByteSize,
    /// Messages per mailbox.
    #[serde(default)]
    pub messages: u64,
    /// How far the last message may go over the byte limit.
    #[serde(default)]
    pub grace: Grace,
    /// A domain's default (a key it does not give: the default above).
    #[serde(default)]
    pub domains: std::collections::BTreeMap<String, LimitsConfig>,
    /// One mailbox's limits (a key it does not give: its domain's, else the default).
    #[serde(default)]
    pub mailboxes: std::collections::BTreeMap<String, LimitsConfig>,
}

/// The limits of a `[local.quota.domains."..."]` or `[local.quota.mailboxes."..."]`
/// entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Bytes (0: none).
    pub bytes: Option<ByteSize>,
    /// Messages (0: none).
    pub messages: Option<u64>,
}

/// The limits of one mailbox; 0 is no limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    /// Bytes.
    pub bytes: u64,
    /// Messages.
    pub messages: u64,
}

/// What a Maildir holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Bytes.
    pub bytes: u64,
    /// Messages.
    pub messages: u64,
}

impl Limits {
    /// Whether neither limit is set.
    pub fn is_none(&self) -> bool {
        self.bytes == 0 && self.messages == 0
    }

    /// Whether a box holding `usage` takes no more mail: at or over a limit.
    pub fn is_full(&self, usage: Usage) -> bool {
        (self.bytes > 0 && usage.bytes >= self.bytes)
            || (self.messages > 0 && usage.messages >= self.messages)
    }

    /// Whether a message of `size` bytes fits a box holding `usage`: the box is under
    /// its limits, one more message stays within the message limit, and the bytes stay
    /// within the byte limit plus `grace` (Dovecot's rule for LDA and LMTP).
    ///
    /// ```
    /// use mta_bin::delivery::{Limits, Usage};
    /// let limits = Limits { bytes: 1000, messages: 3 };
    /// let used = |bytes, messages| Usage { bytes, messages };
    /// assert!(limits.fits(used(900, 1), 200, 100));
    /// assert!(!limits.fits(used(900, 1), 201, 100));
    /// assert!(!limits.fits(used(1000, 1), 1, 100));
    /// assert!(!limits.fits(used(0, 3), 1, 100));
    /// ```
    pub fn fits(&self, usage: Usage, size: u64, grace: u64) -> bool {
        if self.is_full(usage) {
            return false;
        }
        let bytes_ok =
            self.bytes == 0 || usage.bytes.saturating_add(size) <= self.bytes.saturating_add(grace);
        let count_ok = self.messages == 0 || usage.messages < self.messages;
        bytes_ok && count_ok
    }

    /// The first line of `maildirsize`, as Dovecot writes it: `<bytes>S` (also `0S` when
    /// there is no limit at all), `,<count>C` when there is a message limit.
    pub fn header(&self) -> String {
        let mut line = String::new();
        if self.bytes != 0 || self.messages == 0 {
            line.push_str(&format!("{}S", self.bytes));
        }
        if self.messages != 0 {
            if !line.is_empty() {
                line.push(',');
            }
            line.push_str(&format!("{}C", self.messages));
        }
        line
    }

    /// The limits a `maildirsize` header states (what it cannot read counts as none).
    pub fn parse_header(line: &str) -> Self {
        let mut limits = Self::default();
        for part in line.split(',') {
            let part = part.trim();
            let Some(kind) = part.chars().last() else {
                continue;
            };
            let Ok(value) = part[..part.len() - kind.len_utf8()].parse::<u64>() else {
                continue;
            };
            match kind {
                'S' => limits.bytes = value,
                'C' => limits.messages = value,
                _ => {}
            }
        }
        limits
    }
}

/// The quotas of every mailbox: `[local.quota]` made ready to look up.
#[derive(Clone, Debug, Default)]
pub struct Quotas {
    default: Limits,
    grace: Grace,
    /// Lower-cased domains.
    domains: HashMap<String, LimitsConfig>,
    /// Lower-cased addresses.
    mailboxes: HashMap<String, LimitsConfig>,
}

impl Quotas {
    /// The quotas of `[local.quota]`.
    pub fn new(config: &QuotaConfig) -> Self {
        let lower = |map: &std::collections::BTreeMap<String, LimitsConfig>| {
            map.iter()
                .map(|(k, v)| (k.to_lowercase(), *v))
                .collect::<HashMap<_, _>>()
        };
        Self {
            default: Limits {
                bytes: config.bytes.0,
                messages: config.messages,
            },
            grace: config.grace,
            domains: lower(&config.domains),
            mailboxes: lower(&config.mailboxes),
        }
    }

    /// The limits of `mailbox` (`user@domain`, no sub-address): each of its own keys,
    /// else its domain's, else the default.
    ///
    /// ```
    /// use mta_bin::delivery::{ByteSize, Limits, LimitsConfig, QuotaConfig, Quotas};
    /// let mut config = QuotaConfig { bytes: ByteSize(1000), messages: 10, ..Default::default() };
    /// config.domains.insert("b.test".into(), LimitsConfig { bytes: Some(ByteSize(500)), messages: None });
    /// config.mailboxes.insert("ann@b.test".into(), LimitsConfig { bytes: None, messages: Some(0) });
    /// let quotas = Quotas::new(&config);
    /// assert_eq!(quotas.limits("bob@a.test"), Limits { bytes: 1000, messages: 10 });
    /// assert_eq!(quotas.limits("bob@B.test"), Limits { bytes: 500, messages: 10 });
    /// assert_eq!(quotas.limits("Ann@b.test"), Limits { bytes: 500, messages: 0 });
    /// ```
    pub fn limits(&self, mailbox: &str) -> Limits {
        let mailbox = mailbox.to_lowercase();
        let domain = mailbox.rsplit_once('@').map_or("", |(_, d)| d);
        let own = self.mailboxes.get(&mailbox).copied().unwrap_or_default();
        let domain = self.domains.get(domain).copied().unwrap_or_default();
        Limits {
            bytes: own
                .bytes
                .or(domain.bytes)
                .map_or(self.default.bytes, |b| b.0),
            messages: own
                .messages
                .or(domain.messages)
                .unwrap_or(self.default.messages),
        }
    }

    /// The grace in bytes for `limits`.
    pub fn grace(&self, limits: Limits) -> u64 {
        match self.grace {
            Grace::Percent(p) => limits.bytes.saturating_mul(p) / 100,
            Grace::Bytes(b) => b,
        }
    }
}

/// An exclusive lock on one Maildir (an `flock` on its directory), held by our
/// recalculations and by deliveries with a quota, released when dropped.
#[derive(Debug)]
pub struct BoxLock {
    _lock: nix::fcntl::Flock<File>,
}

impl BoxLock {
    /// Takes the lock of `maildir` (which must exist), waiting at most `timeout`.
    pub fn acquire(maildir: &Path, timeout: Duration) -> std::io::Result<Self> {
        use nix::fcntl::{Flock, FlockArg};
        let deadline = Instant::now() + timeout;
        let mut file = File::open(maildir)?;
        loop {
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(lock) => return Ok(Self { _lock: lock }),
                Err((back, nix::errno::Errno::EWOULDBLOCK | nix::errno::Errno::EINTR)) => {
                    file = back;
                }
                Err((_, e)) => return Err(e.into()),
            }
            if Instant::now() >= deadline {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("{} is locked by another delivery", maildir.display()),
                ));
            }
            std::thread::sleep(LOCK_POLL);
        }
    }
}

/// What `maildir` holds, for a box with `limits`: from its `maildirsize`, or counted
/// again (and the file written again) when that cannot be trusted. A Maildir that does
/// not exist holds nothing. Takes the Maildir's lock to count, unless `held`.
pub fn usage(maildir: &Path, limits: Limits, held: Option<&BoxLock>) -> std::io::Result<Usage> {
    if let Some(usage) = read(maildir, limits)? {
        return Ok(usage);
    }
    if !maildir.is_dir() {
        return Ok(Usage::default());
    }
    let _lock = match held {
        Some(_) => None,
        None => {
            let lock = BoxLock::acquire(maildir, LOCK_TIMEOUT)?;
            // Another one may have counted while we waited.
            if let Some(usage) = read(maildir, limits)? {
                return Ok(usage);
            }
            Some(lock)
        }
    };
    recalculate(maildir, limits)
}

/// The usage `maildirsize` states, or `None` when it must be counted again (see the
/// module documentation); `limits` are ours, which the header must state.
pub fn read(maildir: &Path, limits: Limits) -> std::io::Result<Option<Usage>> {
    let path = maildir.join(MAILDIRSIZE);
    let mut file = match File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut text = Vec::with_capacity(MAX_FILE);
    (&mut file).take(MAX_FILE as u64).read_to_end(&mut text)?;
    let modified = file.metadata()?.modified()?;
    let fresh = modified.elapsed().map_or(true, |age| age <= STALE);
    Ok(parse(&text, limits, fresh))
}

/// The usage of a `maildirsize`'s text (read up to [`MAX_FILE`] bytes); `fresh`: the
/// file is younger than 15 minutes.
fn parse(text: &[u8], limits: Limits, fresh: bool) -> Option<Usage> {
    if text.len() >= MAX_FILE || text.contains(&0) {
        return None;
    }
    // A last line without its LF is being written: left out.
    let end = text.iter().rposition(|&b| b == b'\n')?;
    let text = std::str::from_utf8(&text[..end]).ok()?;
    let mut lines = text.split('\n');
    let header = lines.next()?;
    if Limits::parse_header(header) != limits {
        return None;
    }
    let (mut bytes, mut count, mut n) = (0i64, 0i64, 0usize);
    for line in lines {
        let mut fields = line.split_ascii_whitespace();
        let b: i64 = fields.next()?.parse().ok()?;
        let c: i64 = fields.next()?.parse().ok()?;
        bytes = bytes.checked_add(b)?;
        count = count.checked_add(c)?;
        n += 1;
    }
    if n == 0 || bytes < 0 || count < 0 {
        return None;
    }
    let usage = Usage {
        bytes: bytes as u64,
        messages: count as u64,
    };
    let over = (limits.bytes != 0 && usage.bytes > limits.bytes)
        || (limits.messages != 0 && usage.messages > limits.messages);
    if over && (n > 1 || !fresh) {
        return None;
    }
    Some(usage)
}

/// Counts what `maildir` holds (see the module documentation) and, when no folder
/// changed meanwhile, writes `maildirsize` again (a new file renamed over the old one)
/// with `limits` in its header. The caller holds the Maildir's lock.
pub fn recalculate(maildir: &Path, limits: Limits) -> std::io::Result<Usage> {
    let mut dirs = vec![maildir.join("new"), maildir.join("cur")];
    for entry in fs::read_dir(maildir)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') && name != "." && name != ".." && entry.path().is_dir() {
            dirs.push(entry.path().join("new"));
            dirs.push(entry.path().join("cur"));
        }
    }
    let stamps = |dirs: &[PathBuf]| -> Vec<Option<SystemTime>> {
        dirs.iter()
            .map(|d| fs::metadata(d).and_then(|m| m.modified()).ok())
            .collect()
    };
    let before = stamps(&dirs);
    let mut usage = Usage::default();
    for dir in &dirs {
        sum_dir(dir, &mut usage)?;
    }
    if stamps(&dirs) != before {
        // Mail came or went while we counted: this count may be off by it, so it is
        // not written; the next look counts again.
        return Ok(usage);
    }
    write_new(maildir, limits, usage)?;
    Ok(usage)
}

/// Adds the files of one `new/` or `cur/` to `usage`.
fn sum_dir(dir: &Path, usage: &mut Usage) -> std::io::Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("..") {
            continue;
        }
        let size = match size_in_name(&name) {
            Some(size) => size,
            None => match entry.metadata() {
                Ok(meta) => meta.len(),
                // Moved or removed since it was listed.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            },
        };
        usage.bytes = usage.bytes.saturating_add(size);
        usage.messages += 1;
    }
    Ok(())
}

/// The `,S=<size>` of a Maildir file name, when it is followed by `:`, `,` or the end.
///
/// ```
/// # use mta_bin::delivery::size_in_name;
/// assert_eq!(size_in_name("1.Q1R0.h,S=120,W=124:2,S"), Some(120));
/// assert_eq!(size_in_name("1.Q1R0.h,S=120"), Some(120));
/// assert_eq!(size_in_name("1.Q1R0.h,S=12x"), None);
/// assert_eq!(size_in_name("1.Q1R0.h"), None);
/// ```
pub fn size_in_name(name: &str) -> Option<u64> {
    let start = name.find(",S=")? + 3;
    let rest = &name[start..];
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    if !matches!(rest[end..].chars().next(), None | Some(':' | ',')) || end == 0 {
        return None;
    }
    rest[..end].parse().ok()
}

/// Writes `maildirsize` anew: a file in `tmp/`, renamed over the old one.
fn write_new(maildir: &Path, limits: Limits, usage: Usage) -> std::io::Result<()> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let tmp_dir = maildir.join("tmp");
    fs::create_dir_all(&tmp_dir)?;
    let tmp = tmp_dir.join(format!(
        "{MAILDIRSIZE}.{}.{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let text = format!("{}\n{} {}\n", limits.header(), usage.bytes, usage.messages);
    let result = (|| {
        let mut file = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        fs::rename(&tmp, maildir.join(MAILDIRSIZE))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Records that `bytes` and `count` came into (or, negative, left) `maildir`: appends
/// the line `<bytes> <count>` to its `maildirsize` in one write. Without a
/// `maildirsize`, a box with `limits` gets one counted anew (which includes the
/// change); one without limits gets none. When the line cannot be written, the file is
/// removed, to be counted anew. The caller holds the Maildir's lock when it has
/// limits.
pub fn add(maildir: &Path, limits: Limits, bytes: i64, count: i64) -> std::io::Result<()> {
    let path = maildir.join(MAILDIRSIZE);
    let mut file = match OpenOptions::new().append(true).open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if !limits.is_none() {
                recalculate(maildir, limits)?;
            }
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    let line = format!("{bytes} {count}\n");
    match file.write(line.as_bytes()) {
        Ok(n) if n == line.len() => Ok(()),
        other => {
            let _ = fs::remove_file(&path);
            match other {
                Err(e) => Err(e),
                Ok(_) => Err(std::io::Error::other("short write to maildirsize")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Grace, Limits, SizeText, Usage, parse};

    const L: Limits = Limits {
        bytes: 1000,
        messages: 10,
    };

    fn used(bytes: u64, messages: u64) -> Option<Usage> {
        Some(Usage { bytes, messages })
    }

    #[test]
    fn headers_are_written_as_dovecot_writes_them() {
        let cases = [
            ((0, 0), "0S"),
            ((1000, 0), "1000S"),
            ((0, 5), "5C"),
            ((1000, 5), "1000S,5C"),
        ];
        for ((bytes, messages), header) in cases {
            let limits = Limits { bytes, messages };
            assert_eq!(limits.header(), header);
            assert_eq!(Limits::parse_header(header), limits);
        }
        assert_eq!(
            Limits::parse_header("5C,1000S"),
            Limits::parse_header("1000S,5C")
        );
        assert_eq!(
            Limits::parse_header("junk,7S"),
            Limits {
                bytes: 7,
                messages: 0
            }
        );
    }

    #[test]
    fn deltas_add_up_and_broken_files_are_counted_again() {
        let cases: &[(&str, bool, Option<Usage>)] = &[
            ("1000S,10C\n100 1\n", true, used(100, 1)),
            ("1000S,10C\n100 1\n50 1\n-30 -1\n", true, used(120, 1)),
            // Courier pads its lines with spaces.
            ("1000S,10C\n100 1       \n  5 1\n", true, used(105, 2)),
            // A last line without its LF is left out.
            ("1000S,10C\n100 1\n50 1", true, used(100, 1)),
            // Other limits, no line, a broken line, a negative total: counted again.
            ("2000S,10C\n100 1\n", true, None),
            ("1000S,10C\n", true, None),
            ("1000S,10C\n100\n", true, None),
            ("1000S,10C\n100 x\n", true, None),
            ("1000S,10C\n-1 0\n", true, None),
            ("", true, None),
            ("1000S,10C\n1\x00 1\n", true, None),
            // Over quota: trusted only as one fresh line.
            ("1000S,10C\n1001 1\n", true, used(1001, 1)),
            ("1000S,10C\n1001 1\n", false, None),
            ("1000S,10C\n1000 1\n1 0\n", true, None),
            ("1000S,10C\n0 11\n", true, used(0, 11)),
            ("1000S,10C\n0 10\n0 1\n", true, None),
            // At the limit is not over it.
            ("1000S,10C\n500 5\n500 5\n", false, used(1000, 10)),
        ];
        for (text, fresh, expected) in cases {
            assert_eq!(parse(text.as_bytes(), L, *fresh), *expected, "{text:?}");
        }
        let long = format!("1000S,10C\n{}", "1 0\n".repeat(1280));
        assert_eq!(parse(long.as_bytes(), L, true), None);
    }

    #[test]
    fn grace_is_a_share_or_a_size() {
        let grace = |text: &str| Grace::try_from(SizeText::Text(text.into()));
        assert_eq!(grace("10%"), Ok(Grace::Percent(10)));
        assert_eq!(grace("1M"), Ok(Grace::Bytes(1 << 20)));
        assert_eq!(Grace::try_from(SizeText::Number(0)), Ok(Grace::Bytes(0)));
        assert!(grace("x%").is_err());
        assert!(grace("2000%").is_err());
    }
}
