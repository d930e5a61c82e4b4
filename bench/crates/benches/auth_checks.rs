//! The cost of sender authentication per inbound message: `auth_checks::Verifier`
//! (mail-auth 0.13 over a hickory resolver) against DNS served on 127.0.0.1 by
//! `dns_mx::testing::TestDns`.
//!
//! The sender domain `example.org` publishes SPF (`v=spf1 ip4:192.0.2.0/24 -all`, also
//! for the HELO name `mail.example.org`), DMARC (`v=DMARC1; p=reject`) and two DKIM keys
//! made by `auth_checks::generate_key`: RSA-2048 (selector `rsa`) and Ed25519 (selector
//! `ed`). A ~2 KB message is signed with each key by `DkimSigner` (`c=relaxed/simple`,
//! the default header list). The client is 192.0.2.1, HELO `mail.example.org`, MAIL FROM
//! `alice@example.org`: every check passes, as for most legitimate mail.
//!
//! - `warm/*`: one `Verifier` for the whole run, so every DNS answer comes from the
//!   resolver's cache (TTL 3600 s), as for a steady stream of mail from the same
//!   domains. This is the CPU cost of the checks themselves (parsing, hashing, the
//!   signature check, the record parsing that mail-auth does on every message).
//!   - `spf`: `Verifier::spf` (HELO identity, then MAIL FROM identity);
//!   - `message_rsa2048`, `message_ed25519`: `check_message` with DKIM, ARC and DMARC
//!     (`MessageChecks::ALL`), given the SPF verdict;
//!   - `whole_rsa2048`, `whole_ed25519`: SPF then `check_message`, what `mta serve`
//!     runs per message with `[auth_checks]` on.
//! - `cold/*`: the same as `whole_*`, each iteration with a fresh resolver and
//!   `Verifier` (made outside the timed part), so its four queries (SPF of the HELO name
//!   and of the sender domain, the DKIM key, the DMARC record) go to the DNS server over
//!   UDP on loopback. That time includes the server's work on the other core: it is a
//!   latency, not a CPU cost.
//!
//! Each message's verdicts are checked once before it is benchmarked (`spf=pass`,
//! `dkim=pass`, `dmarc=pass`). Throughput is one message per iteration, so criterion's
//! `elem/s` is messages per second on one core (the checks run on the bench's thread;
//! the DNS server has a runtime thread of its own, idle in the warm cases).

use std::hint::black_box;
use std::net::IpAddr;

use auth_checks::{DkimSigner, KeyKind, MessageChecks, Verifier, generate_key};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use dns_mx::testing::TestDns;
use dns_mx::{MxConfig, MxResolver};
use tokio::runtime::Runtime;

mod support;

const DOMAIN: &str = "example.org";
const HELO: &str = "mail.example.org";
const MAIL_FROM: &str = "alice@example.org";
const CLIENT: [u8; 4] = [192, 0, 2, 1];
const HOSTNAME: &str = "mx.example.net";
/// The size of the unsigned message, headers included.
const MESSAGE_SIZE: usize = 2048;

/// A plain-text message of `MESSAGE_SIZE` bytes from `alice@example.org`, CRLF line ends.
fn message() -> Vec<u8> {
    let mut m = b"From: Alice Example <alice@example.org>\r\n\
To: Bob <bob@example.net>\r\n\
Subject: Quarterly report and the schedule for next week\r\n\
Date: Tue, 24 Nov 2026 20:00:00 +0000\r\n\
Message-ID: <20261124200000.4f2a9c@mail.example.org>\r\n\
MIME-Version: 1.0\r\n\
Content-Type: text/plain; charset=utf-8\r\n\
Content-Transfer-Encoding: 8bit\r\n\
\r\n"
        .to_vec();
    let line = b"Hello Bob, the quarterly report is attached; see you at the meeting.\r\n";
    while m.len() + line.len() <= MESSAGE_SIZE - 7 {
        m.extend_from_slice(line);
    }
    while m.len() < MESSAGE_SIZE - 2 {
        m.push(b'-');
    }
    m.extend_from_slice(b"\r\n");
    m
}

/// The zone `org.`: DMARC (mail-auth follows DMARCbis) walks up to `_dmarc.org`, which
/// must get an answer (NXDOMAIN, cached too) rather than a refusal.
fn zone(records: &[String]) -> String {
    format!(
        "$ORIGIN org.\n$TTL 3600\n@ 3600 IN SOA ns root 1 3600 600 86400 3600\n{}\n",
        records.join("\n")
    )
}

fn runtime() -> Runtime {
    // One worker thread for the DNS server and the resolver's background tasks; the
    // checks themselves run on the bench's thread (`block_on`).
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("tokio runtime: {e}"))
}

fn verifier(rt: &Runtime, dns: &TestDns) -> Verifier {
    let _guard = rt.enter();
    let resolver = MxResolver::new(MxConfig {
        nameservers: vec![dns.addr()],
        ..MxConfig::default()
    })
    .unwrap_or_else(|e| panic!("resolver: {e}"));
    Verifier::new(resolver.resolver().clone(), HOSTNAME)
}

/// SPF then DKIM, ARC and DMARC: the whole per-message work; returns the
/// `Authentication-Results` value.
async fn whole(verifier: &Verifier, message: &[u8]) -> String {
    let ip = IpAddr::from(CLIENT);
    let spf = verifier.spf(ip, HELO, MAIL_FROM).await;
    verifier
        .check_message(message, Some(&spf), MessageChecks::ALL)
        .await
        .header_value(HOSTNAME)
}

fn assert_passes(what: &str, header: &str) {
    for needed in ["spf=pass", "dkim=pass", "dmarc=pass"] {
        assert!(header.contains(needed), "{what}: no {needed} in {header}");
    }
}

fn auth_checks(c: &mut Criterion) {
    let rt = runtime();
    let rsa = generate_key(KeyKind::Rsa).unwrap_or_else(|e| panic!("RSA key: {e}"));
    let ed = generate_key(KeyKind::Ed25519).unwrap_or_else(|e| panic!("Ed25519 key: {e}"));
    let zone = zone(&[
        "example IN TXT \"v=spf1 ip4:192.0.2.0/24 -all\"".to_owned(),
        "mail.example IN TXT \"v=spf1 ip4:192.0.2.0/24 -all\"".to_owned(),
        "_dmarc.example IN TXT \"v=DMARC1; p=reject\"".to_owned(),
        rsa.zone_line("rsa", DOMAIN),
        ed.zone_line("ed", DOMAIN),
    ]);
    let dns = rt.block_on(TestDns::start(&[&zone]));

    let unsigned = message();
    let sign = |selector: &str, pem: &str| {
        let signer = DkimSigner::from_pem(DOMAIN, selector, pem.as_bytes())
            .unwrap_or_else(|e| panic!("signer {selector}: {e}"));
        let header = signer
            .sign(&unsigned)
            .unwrap_or_else(|e| panic!("sign {selector}: {e}"));
        let mut signed = header.into_bytes();
        signed.extend_from_slice(&unsigned);
        signed
    };
    let messages = [
        ("rsa2048", sign("rsa", &rsa.private_pem)),
        ("ed25519", sign("ed", &ed.private_pem)),
    ];

    // One verifier for the warm cases; checking every message once fills its cache.
    let warm = verifier(&rt, &dns);
    for (name, message) in &messages {
        assert_passes(name, &rt.block_on(whole(&warm, message)));
        // And against the server itself, with an empty cache.
        assert_passes(name, &rt.block_on(whole(&verifier(&rt, &dns), message)));
    }
    let ip = IpAddr::from(CLIENT);
    let spf = rt.block_on(warm.spf(ip, HELO, MAIL_FROM));

    let mut group = c.benchmark_group("warm");
    group.throughput(Throughput::Elements(1));
    group.bench_function("spf", |b| {
        b.iter(|| rt.block_on(warm.spf(black_box(ip), black_box(HELO), black_box(MAIL_FROM))))
    });
    for (name, message) in &messages {
        group.bench_function(format!("message_{name}"), |b| {
            b.iter(|| {
                rt.block_on(warm.check_message(black_box(message), Some(&spf), MessageChecks::ALL))
            })
        });
    }
    for (name, message) in &messages {
        group.bench_function(format!("whole_{name}"), |b| {
            b.iter(|| rt.block_on(whole(&warm, black_box(message))))
        });
    }
    group.finish();

    let mut group = c.benchmark_group("cold");
    group.throughput(Throughput::Elements(1));
    for (name, message) in &messages {
        group.bench_function(format!("whole_{name}"), |b| {
            b.iter_batched(
                || verifier(&rt, &dns),
                // The verifier is returned, so it is dropped outside the timed part.
                |fresh| {
                    let header = rt.block_on(whole(&fresh, black_box(message)));
                    (fresh, header)
                },
                BatchSize::PerIteration,
            )
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = support::config();
    targets = auth_checks
}
criterion_main!(benches);
