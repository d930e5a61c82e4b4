//! Helpers shared by the integration tests: test data, test DNS zones and servers, and a
//! [`Verifier`] that asks them. Each test binary uses a part of them.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use auth_checks::{DkimSigner, DkimVerdict, KeyKind, MessageChecks, Verifier, generate_key};
use dns_mx::testing::TestDns;
use dns_mx::{MxConfig, MxResolver};

/// The third-party test data, outside the repository (see the READMEs there).
const TESTDATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/testdata");

/// Whether `CI=true`, under which missing test data or tools fail a test instead of skipping it.
fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Says on stderr that the test did not run for want of `missing`; fails instead under `CI=true`.
// A skip must be seen, from a helper too.
#[allow(clippy::print_stderr)]
pub(crate) fn skip(missing: &str) {
    assert!(!ci(), "missing {missing} (required when CI=true)");
    eprintln!("SKIPPED: missing {missing}; the test did not run (set CI=true to make this fail)");
}

/// The folder `shared/testdata/{name}` when it holds the file `marker`, else `None` after [`skip`].
pub(crate) fn shared_testdata(name: &str, marker: &str) -> Option<PathBuf> {
    let dir = Path::new(TESTDATA).join(name);
    if dir.join(marker).is_file() {
        return Some(dir);
    }
    skip(&format!("test data {}", dir.join(marker).display()));
    None
}

/// The bytes of the file at `path`.
pub(crate) fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// The text of the file at `path` (UTF-8).
pub(crate) fn read_text(path: &Path) -> String {
    String::from_utf8(read(path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Bare LF line ends as CRLF, as on the wire (CRLF already there stays).
pub(crate) fn crlf(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() + raw.len() / 16);
    for (i, &b) in raw.iter().enumerate() {
        if b == b'\n' && (i == 0 || raw[i - 1] != b'\r') {
            out.push(b'\r');
        }
        out.push(b);
    }
    out
}

/// A zone for `origin` (no trailing dot) with an SOA record and the zone-file lines `records`.
pub(crate) fn zone(origin: &str, records: &str) -> String {
    format!("$ORIGIN {origin}.\n@ 3600 IN SOA ns root 1 3600 600 86400 60\n{records}\n")
}

/// A TXT record as one zone-file line: quoted strings of at most 255 octets.
pub(crate) fn txt_line(name: &str, value: &str) -> String {
    let strings: Vec<String> = value
        .as_bytes()
        .chunks(200)
        .map(|c| {
            let mut s = String::from("\"");
            for ch in String::from_utf8_lossy(c).chars() {
                if ch == '"' || ch == '\\' {
                    s.push('\\');
                }
                s.push(ch);
            }
            s.push('"');
            s
        })
        .collect();
    format!("{name}. 300 IN TXT {}", strings.join(" "))
}

/// One zone per top-level domain for `(owner name, zone-file line)` pairs, so that names
/// absent from the data are NXDOMAIN (not REFUSED, which would be a temporary error).
pub(crate) fn zones_by_tld(lines: &[(String, String)]) -> Vec<String> {
    let mut by_tld: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (name, line) in lines {
        let tld = name.trim_end_matches('.').rsplit('.').next().unwrap_or("");
        by_tld.entry(tld).or_default().push(line);
    }
    by_tld
        .into_iter()
        .map(|(tld, lines)| zone(tld, &lines.join("\n")))
        .collect()
}

/// A test DNS server for `zones`.
pub(crate) async fn start_dns(zones: &[String]) -> TestDns {
    let refs: Vec<&str> = zones.iter().map(String::as_str).collect();
    TestDns::start(&refs).await
}

/// A verifier (as `mx.example.net`) whose resolver asks only `dns`, as `MxResolver` makes it.
pub(crate) fn verifier(dns: &TestDns) -> Verifier {
    let resolver = MxResolver::new(MxConfig {
        nameservers: vec![dns.addr()],
        ..MxConfig::default()
    })
    .unwrap_or_else(|e| panic!("resolver: {e}"));
    Verifier::new(resolver.resolver().clone(), "mx.example.net")
}

/// DKIM only: DMARC and ARC would make lookups these tests do not serve.
pub(crate) const DKIM_ONLY: MessageChecks = MessageChecks {
    dkim: true,
    arc: false,
    dmarc: false,
};

/// The DKIM verdicts of `verifier` on `message`, one per signature ([`DKIM_ONLY`]).
pub(crate) async fn verify_dkim(verifier: &Verifier, message: &[u8]) -> Vec<DkimVerdict> {
    verifier
        .check_message(message, None, DKIM_ONLY)
        .await
        .dkim
        .unwrap_or_default()
}

/// `message` signed as `s1._domainkey.example.org` with a fresh `kind` key, and a DNS
/// server that publishes the key.
pub(crate) async fn signed_with_fresh_key(kind: KeyKind, message: &[u8]) -> (TestDns, Vec<u8>) {
    let key = generate_key(kind).unwrap_or_else(|e| panic!("keygen: {e}"));
    let dns = start_dns(&[zone("example.org", &key.zone_line("s1", "example.org"))]).await;
    let signer = DkimSigner::from_pem("example.org", "s1", key.private_pem.as_bytes())
        .unwrap_or_else(|e| panic!("signer: {e}"));
    let header = signer.sign(message).unwrap_or_else(|e| panic!("sign: {e}"));
    let mut signed = header.into_bytes();
    signed.extend_from_slice(message);
    (dns, signed)
}

/// Prints `known` (case, reason) and fails unless `failures` are exactly its cases.
// The known failures are part of the suite's printed report.
#[allow(clippy::print_stdout)]
pub(crate) fn assert_known_failures(
    suite: &str,
    failures: &BTreeSet<String>,
    known: &[(&str, &str)],
) {
    for (name, reason) in known {
        println!("known failure {name}: {reason}");
    }
    let known: BTreeSet<String> = known.iter().map(|(n, _)| (*n).to_owned()).collect();
    let new: Vec<_> = failures.difference(&known).collect();
    let fixed: Vec<_> = known.difference(failures).collect();
    assert!(
        new.is_empty() && fixed.is_empty(),
        "{suite} suite changed: newly failing {new:?}; now passing (remove from KNOWN_FAILURES) \
         {fixed:?}"
    );
}
