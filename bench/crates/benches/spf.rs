//! Our SPF evaluator (`auth_checks::Verifier::spf`) against mail-auth 0.13.3's
//! (`MessageAuthenticator::verify_spf`, what `Verifier::spf` called before), on the same
//! records served on 127.0.0.1 by `dns_mx::testing::TestDns`, through the same kind of
//! hickory resolver (`dns_mx::MxResolver`).
//!
//! The sender `alice@example.org` publishes
//! `v=spf1 a mx include:_spf.example.net ip4:198.51.100.0/24 -all`; `example.org` has an
//! A record and an MX host with an A and an AAAA record; `_spf.example.net` publishes
//! `v=spf1 ip4:203.0.113.0/24 ip6:2001:db8::/32 ~all`. The client, 203.0.113.5, is
//! authorized by the include, so both evaluators parse two records and make five
//! lookups (the two TXT records, A of example.org, MX of example.org, A of its host)
//! and answer `pass`. The HELO name is an address literal, so `Verifier::spf` checks the
//! MAIL FROM identity only, as `verify_spf` with `verify_mail_from` does.
//!
//! - `cached/*`: one evaluator for the whole run, its resolver's cache filled: the CPU
//!   cost of an evaluation.
//! - `cold/*`: a fresh resolver (and evaluator) per iteration, made outside the timed
//!   part: every lookup goes to the server over UDP on loopback. That includes the
//!   server's work on the other core: a latency, not a CPU cost.
//!
//! Run: `cd bench/crates && cargo bench --bench spf` (add `-- --measurement-time 2` for
//! a short run).

use std::hint::black_box;
use std::net::IpAddr;

use auth_checks::{SpfResult, Verifier};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use dns_mx::testing::TestDns;
use dns_mx::{MxConfig, MxResolver};
use hickory_resolver::TokioResolver;
use mail_auth::MessageAuthenticator;
use mail_auth::spf::verify::SpfParameters;
use tokio::runtime::Runtime;

mod support;

const HELO: &str = "[203.0.113.5]";
const MAIL_FROM: &str = "alice@example.org";
const CLIENT: [u8; 4] = [203, 0, 113, 5];
const HOSTNAME: &str = "mx.example.com";

/// The zones `org.` and `net.`.
fn zones() -> [String; 2] {
    let soa = "@ 3600 IN SOA ns root 1 3600 600 86400 3600";
    [
        format!(
            "$ORIGIN org.\n$TTL 3600\n{soa}\n\
             example IN TXT \"v=spf1 a mx include:_spf.example.net ip4:198.51.100.0/24 -all\"\n\
             example IN A 192.0.2.20\n\
             example IN MX 10 mail.example.org.\n\
             mail.example IN A 192.0.2.10\n\
             mail.example IN AAAA 2001:db8::10\n"
        ),
        format!(
            "$ORIGIN net.\n$TTL 3600\n{soa}\n\
             _spf.example IN TXT \"v=spf1 ip4:203.0.113.0/24 ip6:2001:db8::/32 ~all\"\n"
        ),
    ]
}

fn runtime() -> Runtime {
    // One worker thread for the DNS server and the resolvers' background tasks; the
    // evaluations run on the bench's thread (`block_on`).
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("tokio runtime: {e}"))
}

fn resolver(rt: &Runtime, dns: &TestDns) -> TokioResolver {
    let _guard = rt.enter();
    MxResolver::new(MxConfig {
        nameservers: vec![dns.addr()],
        ..MxConfig::default()
    })
    .unwrap_or_else(|e| panic!("resolver: {e}"))
    .resolver()
    .clone()
}

async fn ours(verifier: &Verifier) -> SpfResult {
    verifier
        .spf(IpAddr::from(CLIENT), HELO, MAIL_FROM)
        .await
        .mail_from
        .result
}

async fn theirs(auth: &MessageAuthenticator) -> mail_auth::SpfResult {
    let params = SpfParameters::verify_mail_from(IpAddr::from(CLIENT), HELO, HOSTNAME, MAIL_FROM);
    auth.verify_spf(params).await.result()
}

fn spf(c: &mut Criterion) {
    let rt = runtime();
    let zones = zones();
    let dns = rt.block_on(TestDns::start(&[&zones[0], &zones[1]]));
    let new_ours = || Verifier::new(resolver(&rt, &dns), HOSTNAME);
    let new_theirs = || MessageAuthenticator(resolver(&rt, &dns));

    // Both pass, cold and then from their cache.
    let (our_cached, their_cached) = (new_ours(), new_theirs());
    for _ in 0..2 {
        assert_eq!(rt.block_on(ours(&our_cached)), SpfResult::Pass);
        assert_eq!(
            rt.block_on(theirs(&their_cached)),
            mail_auth::SpfResult::Pass
        );
    }

    let mut group = c.benchmark_group("spf_cached");
    group.throughput(Throughput::Elements(1));
    group.bench_function("ours", |b| {
        b.iter(|| rt.block_on(ours(black_box(&our_cached))))
    });
    group.bench_function("mail_auth", |b| {
        b.iter(|| rt.block_on(theirs(black_box(&their_cached))))
    });
    group.finish();

    let mut group = c.benchmark_group("spf_cold");
    group.throughput(Throughput::Elements(1));
    group.bench_function("ours", |b| {
        b.iter_batched(
            new_ours,
            // Returned, so it is dropped outside the timed part.
            |fresh| {
                let result = rt.block_on(ours(&fresh));
                (fresh, result)
            },
            BatchSize::PerIteration,
        )
    });
    group.bench_function("mail_auth", |b| {
        b.iter_batched(
            new_theirs,
            |fresh| {
                let result = rt.block_on(theirs(&fresh));
                (fresh, result)
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = support::config();
    targets = spf
}
criterion_main!(benches);
