//! The Sender Rewriting Scheme (SRS), in the form of libsrs2 and Postfix's `postsrsd`:
//! a forwarded message leaves with an envelope sender in our own domain, so that SPF at
//! the next hop checks our address, and a bounce to that address finds its way back.
//!
//! ```text
//! alice@origin.example  --forward-->  SRS0=HHHH=TT=origin.example=alice@srs.domain
//! SRS0=HHHH=TT=d=l@fwd1 --forward-->  SRS1=HHHH=fwd1==HHHH=TT=d=l@srs.domain
//! SRS1=HHHH=fwd1==X@fwd2 -forward->   SRS1=HHHH=fwd1==X@srs.domain  (first forwarder kept)
//! ```
//!
//! `HHHH` is the first four characters of the Base64 HMAC-SHA1, under our secret, of the
//! lower-cased parts that follow it (`TT` + domain + local part for SRS0; the first
//! forwarder + the rest for SRS1); `TT` is the day of the rewriting (days since
//! 1970-01-01, modulo 1024) in two Base32 characters (`A`-`Z`, `2`-`7`). Reversing
//! checks the hash (without regard to case: some hosts lower-case addresses) and, for
//! SRS0, that the address is at most [`Srs::MAX_AGE_DAYS`] days old. Time is passed in
//! (the day number), so that all of this is tested without a clock.

use std::path::{Path, PathBuf};

use aws_lc_rs::hmac;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

/// The Base32 alphabet of the timestamp (RFC 4648's, upper case).
const BASE32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/// How many characters of the Base64 hash are kept (libsrs2's default).
const HASH_LENGTH: usize = 4;

/// Separators accepted after `SRS0`/`SRS1` when reversing (libsrs2 writes `=`, and
/// accepts `-` and `+` too).
const SEPARATORS: &[char] = &['=', '-', '+'];

/// Why an address does not reverse.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SrsError {
    /// The local part does not start with `SRS0` or `SRS1` and a separator.
    NotSrs,
    /// The parts are not all there.
    Malformed,
    /// The hash is not ours: forged, or made with another secret.
    BadHash,
    /// The timestamp is older than [`Srs::MAX_AGE_DAYS`] (or from the future).
    Expired,
}

impl std::fmt::Display for SrsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::NotSrs => "not an SRS address",
            Self::Malformed => "malformed SRS address",
            Self::BadHash => "SRS hash does not match",
            Self::Expired => "SRS address expired",
        })
    }
}

impl std::error::Error for SrsError {}

/// SRS rewriting with one secret, into one domain.
///
/// ```
/// use mta_bin::aliases::Srs;
/// let srs = Srs::new(b"a secret", "fwd.example");
/// let today = 20_000;
/// let forwarded = srs.forward("alice@origin.example", today).unwrap();
/// assert!(forwarded.starts_with("SRS0="));
/// assert!(forwarded.ends_with("=origin.example=alice@fwd.example"));
/// let local = forwarded.rsplit_once('@').unwrap().0;
/// assert_eq!(srs.reverse(local, today + 3).unwrap(), "alice@origin.example");
/// ```
#[derive(Clone)]
pub struct Srs {
    key: hmac::Key,
    domain: String,
}

impl std::fmt::Debug for Srs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("Srs")
            .field("domain", &self.domain)
            .finish_non_exhaustive()
    }
}

impl Srs {
    /// How old (in days) an SRS0 address may be and still reverse: 21, libsrs2's
    /// default (a bounce comes within the sender's queue lifetime).
    pub const MAX_AGE_DAYS: u32 = 21;

    /// Rewriting with `secret` into addresses at `domain`.
    pub fn new(secret: &[u8], domain: &str) -> Self {
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret),
            domain: domain.to_ascii_lowercase(),
        }
    }

    /// The domain of the rewritten addresses.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The address to use as the envelope sender when forwarding mail from `sender`
    /// (`local@domain`) on `today` (see [`today`]); `None` when it has no `@`.
    pub fn forward(&self, sender: &str, today: u64) -> Option<String> {
        let (local, host) = sender.rsplit_once('@')?;
        if local.is_empty() || host.is_empty() {
            return None;
        }
        let rewritten = if let Some(rest) = strip_tag(local, "SRS0") {
            // Ours to wrap: the first forwarder, and all after "SRS0".
            let hash = self.hash(&[host, rest]);
            format!("SRS1={hash}={host}={rest}")
        } else if let Some((first, rest)) = strip_tag(local, "SRS1").and_then(split_srs1) {
            let hash = self.hash(&[first, rest]);
            format!("SRS1={hash}={first}={rest}")
        } else {
            let stamp = timestamp(today);
            let hash = self.hash(&[&stamp, host, local]);
            format!("SRS0={hash}={stamp}={host}={local}")
        };
        Some(format!("{rewritten}@{}", self.domain))
    }

    /// The address an SRS `local` part (of an address at [`Srs::domain`]) stands for,
    /// on `today`: the original sender for SRS0, the previous forwarder's SRS0 address
    /// for SRS1.
    pub fn reverse(&self, local: &str, today: u64) -> Result<String, SrsError> {
        if let Some(rest) = strip_tag(local, "SRS0") {
            let rest = &rest[1..];
            let mut parts = rest.splitn(4, '=');
            let (Some(hash), Some(stamp), Some(host), Some(user)) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                return Err(SrsError::Malformed);
            };
            if host.is_empty() || user.is_empty() || stamp.len() != 2 {
                return Err(SrsError::Malformed);
            }
            if !self.hash(&[stamp, host, user]).eq_ignore_ascii_case(hash) {
                return Err(SrsError::BadHash);
            }
            let then = decode_timestamp(stamp).ok_or(SrsError::Malformed)?;
            let age = (today % 1024 + 1024 - then) % 1024;
            if age > u64::from(Self::MAX_AGE_DAYS) {
                return Err(SrsError::Expired);
            }
            return Ok(format!("{user}@{host}"));
        }
        if let Some(rest) = strip_tag(local, "SRS1") {
            let (first, inner) = split_srs1(rest).ok_or(SrsError::Malformed)?;
            let hash = rest[1..].split('=').next().unwrap_or_default();
            if !self.hash(&[first, inner]).eq_ignore_ascii_case(hash) {
                return Err(SrsError::BadHash);
            }
            return Ok(format!("SRS0{inner}@{first}"));
        }
        Err(SrsError::NotSrs)
    }

    /// Whether `local` has the form of an SRS local part (`SRS0=`, `SRS1=`, any case).
    pub fn is_srs(local: &str) -> bool {
        strip_tag(local, "SRS0").is_some() || strip_tag(local, "SRS1").is_some()
    }

    /// The first [`HASH_LENGTH`] characters of the Base64 HMAC-SHA1 of the lower-cased
    /// `parts`, one after the other.
    fn hash(&self, parts: &[&str]) -> String {
        let mut context = hmac::Context::with_key(&self.key);
        for part in parts {
            context.update(part.to_lowercase().as_bytes());
        }
        let tag = context.sign();
        let mut text = STANDARD.encode(tag.as_ref());
        text.truncate(HASH_LENGTH);
        text
    }
}

/// Days since 1970-01-01 now (the `today` of [`Srs::forward`] and [`Srs::reverse`]).
pub fn today() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 86_400)
}

/// The secret in `path`: its bytes, without trailing white space (so that a file
/// written by hand or by `postsrsd` works). An empty file is refused.
pub fn read_secret(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut bytes = std::fs::read(path)?;
    while bytes.last().is_some_and(u8::is_ascii_whitespace) {
        bytes.pop();
    }
    if bytes.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{}: the SRS secret is empty", path.display()),
        ));
    }
    Ok(bytes)
}

/// The secret in `path`, made when missing: 32 random bytes, Base64, one line, mode
/// 0600, written to a new file then linked into place (two servers starting at once
/// agree on one key).
pub fn read_or_create_secret(path: &Path) -> std::io::Result<Vec<u8>> {
    match read_secret(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        other => return other,
    }
    let mut random = [0u8; 32];
    aws_lc_rs::rand::fill(&mut random)
        .map_err(|_| std::io::Error::other("no random bytes for the SRS secret"))?;
    let text = format!("{}\n", STANDARD.encode(random));
    let temporary = temporary_name(path);
    write_private(&temporary, text.as_bytes())?;
    let linked = std::fs::hard_link(&temporary, path);
    let _ = std::fs::remove_file(&temporary);
    match linked {
        // Another process made it first: theirs is the key.
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    read_secret(path)
}

/// `path` with `.tmp.<pid>` added.
fn temporary_name(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".tmp.{}", std::process::id()));
    PathBuf::from(name)
}

/// Writes `bytes` to a new file readable by its owner only, and syncs it.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// `local` without `tag` (any case), when a separator follows it: the rest, starting
/// with that separator.
fn strip_tag<'a>(local: &'a str, tag: &str) -> Option<&'a str> {
    let head = local.get(..tag.len())?;
    let rest = &local[tag.len()..];
    (head.eq_ignore_ascii_case(tag) && rest.starts_with(SEPARATORS)).then_some(rest)
}

/// `=HHHH=first=rest` (after `SRS1`): the first forwarder and what follows it (from the
/// `=` before the original SRS0 part).
fn split_srs1(rest: &str) -> Option<(&str, &str)> {
    let rest = &rest[1..];
    let (_hash, tail) = rest.split_once('=')?;
    let (first, _) = tail.split_once('=')?;
    let inner = &tail[first.len() + 1..];
    (!first.is_empty() && !inner.is_empty()).then_some((first, inner))
}

/// The day number modulo 1024 in two Base32 characters.
fn timestamp(today: u64) -> String {
    let t = (today % 1024) as usize;
    [BASE32[(t >> 5) & 31], BASE32[t & 31]]
        .iter()
        .map(|&b| char::from(b))
        .collect()
}

/// The day number (modulo 1024) of a two-character timestamp, in any case.
fn decode_timestamp(stamp: &str) -> Option<u64> {
    stamp.bytes().try_fold(0u64, |acc, b| {
        let value = BASE32.iter().position(|&c| c == b.to_ascii_uppercase())?;
        Some(acc * 32 + value as u64)
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const TODAY: u64 = 20_000;

    fn local(address: &str) -> &str {
        address.rsplit_once('@').unwrap().0
    }

    #[test]
    fn timestamps_round_trip_in_two_base32_characters() {
        for day in [0, 1, 31, 32, 1023, 1024, 20_000, 20_511] {
            let stamp = timestamp(day);
            assert_eq!(stamp.len(), 2);
            assert_eq!(decode_timestamp(&stamp), Some(day % 1024), "{day}");
            assert_eq!(decode_timestamp(&stamp.to_lowercase()), Some(day % 1024));
        }
        assert_eq!(timestamp(0), "AA");
        assert_eq!(timestamp(33), "BB");
        assert_eq!(decode_timestamp("A1"), None);
    }

    #[test]
    fn srs0_forwards_and_reverses() {
        let srs = Srs::new(b"secret", "Fwd.Example");
        let out = srs.forward("alice@origin.example", TODAY).unwrap();
        let parts: Vec<&str> = local(&out).split('=').collect();
        assert_eq!(parts[0], "SRS0");
        assert_eq!(parts[1].len(), HASH_LENGTH);
        assert_eq!(parts[2], timestamp(TODAY));
        assert_eq!(&parts[3..], ["origin.example", "alice"]);
        assert!(out.ends_with("@fwd.example"), "{out}");
        assert_eq!(
            srs.reverse(local(&out), TODAY).unwrap(),
            "alice@origin.example"
        );
        // Lower-cased by some host on the way: still ours.
        assert_eq!(
            srs.reverse(&local(&out).to_lowercase(), TODAY).unwrap(),
            "alice@origin.example"
        );
        // A local part with `=` in it survives.
        let odd = srs.forward("a=b@origin.example", TODAY).unwrap();
        assert_eq!(
            srs.reverse(local(&odd), TODAY).unwrap(),
            "a=b@origin.example"
        );
    }

    #[test]
    fn srs0_expires_after_21_days_and_refuses_other_hashes() {
        let srs = Srs::new(b"secret", "fwd.example");
        let out = srs.forward("alice@origin.example", TODAY).unwrap();
        let l = local(&out);
        assert!(srs.reverse(l, TODAY + 21).is_ok());
        assert_eq!(srs.reverse(l, TODAY + 22), Err(SrsError::Expired));
        // From the future (a clock set back): refused too.
        assert_eq!(srs.reverse(l, TODAY - 1), Err(SrsError::Expired));
        // Across the 1024-day wrap.
        let late = srs.forward("alice@origin.example", 1023).unwrap();
        assert!(srs.reverse(local(&late), 1030).is_ok());

        let other = Srs::new(b"another secret", "fwd.example");
        assert_eq!(other.reverse(l, TODAY), Err(SrsError::BadHash));
        let forged = l.replacen("alice", "mallory", 1);
        assert_eq!(srs.reverse(&forged, TODAY), Err(SrsError::BadHash));
        for bad in [
            "SRS0=",
            "SRS0=abcd=AA=host",
            "SRS0=abcd=AAA=h=u",
            "SRS1=abcd",
        ] {
            assert_eq!(srs.reverse(bad, TODAY), Err(SrsError::Malformed), "{bad}");
        }
        for not in ["alice", "SRS2=x=y", "SRS0x=a", "SRS"] {
            assert_eq!(srs.reverse(not, TODAY), Err(SrsError::NotSrs), "{not}");
            assert!(!Srs::is_srs(not));
        }
    }

    #[test]
    fn an_srs0_sender_is_wrapped_in_srs1_and_unwrapped_back() {
        let first = Srs::new(b"first secret", "fwd1.example");
        let srs0 = first.forward("alice@origin.example", TODAY).unwrap();
        let us = Srs::new(b"our secret", "us.example");
        let srs1 = us.forward(&srs0, TODAY).unwrap();
        let inner = local(&srs0).strip_prefix("SRS0").unwrap();
        assert!(
            srs1.starts_with("SRS1=")
                && srs1.ends_with(&format!("=fwd1.example={inner}@us.example")),
            "{srs1}"
        );
        assert!(srs1.contains("=fwd1.example==")); // as libsrs2 writes it
        // Reversed: the first forwarder's address, which it reverses itself.
        let back = us.reverse(local(&srs1), TODAY).unwrap();
        assert_eq!(back, srs0);
        assert_eq!(
            first.reverse(local(&back), TODAY).unwrap(),
            "alice@origin.example"
        );
        // An SRS1 sender forwarded again keeps the first forwarder, with our hash.
        let third = Srs::new(b"third", "third.example");
        let again = third.forward(&srs1, TODAY).unwrap();
        assert!(
            again.ends_with(&format!("=fwd1.example={inner}@third.example")),
            "{again}"
        );
        assert_eq!(third.reverse(local(&again), TODAY).unwrap(), srs0);
        assert_eq!(us.reverse(local(&again), TODAY), Err(SrsError::BadHash));
    }

    #[test]
    fn what_is_no_address_is_not_rewritten() {
        let srs = Srs::new(b"secret", "fwd.example");
        assert_eq!(srs.forward("alice", TODAY), None);
        assert_eq!(srs.forward("@origin.example", TODAY), None);
        assert_eq!(srs.forward("alice@", TODAY), None);
    }

    #[test]
    fn the_secret_is_made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("srs.key");
        let made = read_or_create_secret(&path).unwrap();
        assert_eq!(made.len(), 44); // 32 bytes in Base64
        assert_eq!(read_or_create_secret(&path).unwrap(), made);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(&path, "  \n").unwrap();
        assert!(read_secret(&path).is_err());
        std::fs::write(&path, "hand made\n").unwrap();
        assert_eq!(read_secret(&path).unwrap(), b"hand made");
    }
}
