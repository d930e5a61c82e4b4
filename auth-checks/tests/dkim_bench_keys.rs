//! What the inbound benchmark (`bench/servers/inbound.sh`) sends: a message signed by
//! dkimpy (`c=relaxed/simple`, over From, To, Date and Message-Id) with a fresh RSA-2048
//! key from `mta dkim-keygen`, verified here against the key as `dkim-keygen`'s zone line
//! publishes it (two character-strings of at most 250 octets).
//!
//! The benchmark once saw `dkim=fail (Signature verification failed)` for such a message
//! that dkimpy verified. Signing 605 fresh keys × 2 sizes and verifying every message
//! here, and through dnsmasq, `mta serve` and `smtp-source` as the benchmark does, found
//! no failure; the failure was the benchmark's: a second run's dnsmasq could not bind
//! DNS_PORT, the first run's dnsmasq answered with *its* key, and the setup check did not
//! notice (fixed in `bench/servers/common.sh`, tested by
//! `bench/servers/tests/dns_start.sh`). These tests keep the two facts that diagnosis
//! rests on: such messages pass with their own key, and another key gives exactly the
//! verdict the benchmark reported.
//!
//! Fixtures in `tests/data/bench-dkim/` (`make.py` there made them): `a` and `b`, each
//! a zone line (`X.zone`) and the 1024-byte benchmark message signed with its key (`X.eml`).

mod support;

use auth_checks::{DkimResult, DkimVerdict};
use support::{crlf, start_dns, verifier, verify_dkim, zone};

const A_ZONE: &str = include_str!("data/bench-dkim/a.zone");
const A_MESSAGE: &[u8] = include_bytes!("data/bench-dkim/a.eml");
const B_ZONE: &str = include_str!("data/bench-dkim/b.zone");
const B_MESSAGE: &[u8] = include_bytes!("data/bench-dkim/b.eml");

/// The DKIM verdicts on `message` when `s1._domainkey.bench.test` is `zone_line`.
async fn verdicts(zone_line: &str, message: &[u8]) -> Vec<DkimVerdict> {
    let dns = start_dns(&[zone("bench.test", zone_line.trim())]).await;
    verify_dkim(&verifier(&dns), &crlf(message)).await
}

#[tokio::test]
async fn dkimpy_signed_bench_messages_pass_with_their_key() {
    for (name, zone_line, message) in [("a", A_ZONE, A_MESSAGE), ("b", B_ZONE, B_MESSAGE)] {
        // The zone line is `dkim-keygen`'s: two strings, the first of 250 octets.
        let strings: Vec<&str> = zone_line.split('"').skip(1).step_by(2).collect();
        assert_eq!(strings.len(), 2, "{name}: {zone_line}");
        assert_eq!(strings[0].len(), 250, "{name}: {zone_line}");

        let v = verdicts(zone_line, message).await;
        assert_eq!(v.len(), 1, "{name}: {v:?}");
        assert_eq!(v[0].result, DkimResult::Pass, "{name}: {v:?}");
        assert_eq!(v[0].domain.as_deref(), Some("bench.test"), "{name}: {v:?}");
        assert_eq!(v[0].selector.as_deref(), Some("s1"), "{name}: {v:?}");
        assert_eq!(
            v[0].algorithm.as_deref(),
            Some("rsa-sha256"),
            "{name}: {v:?}"
        );
    }
}

#[tokio::test]
async fn another_runs_key_gives_the_benchmarks_verdict() {
    // Message a against b's key and b against a's: what the benchmark's mta saw when the
    // other run's dnsmasq answered.
    for (name, zone_line, message) in [("a", B_ZONE, A_MESSAGE), ("b", A_ZONE, B_MESSAGE)] {
        let v = verdicts(zone_line, message).await;
        assert_eq!(v.len(), 1, "{name}: {v:?}");
        assert_eq!(v[0].result, DkimResult::Fail, "{name}: {v:?}");
        assert_eq!(
            v[0].reason.as_deref(),
            Some("Signature verification failed"),
            "{name}: {v:?}"
        );
    }
}
