//! The OpenSPF RFC 7208 test suite (as shipped in pyspf) against `Verifier::spf`, each
//! section's zone data served by a real DNS server on loopback.
//!
//! The data lives outside the repository, in `../../shared/testdata/openspf-pyspf/`
//! (see the README there). When it is absent the test says so and passes, except under
//! `CI=true`, where a missing suite is a failure.
//!
//! Driver rules, as pyspf's own driver (`test/testspf.py`) and the other drivers apply
//! them:
//! - The identity checked is the MAIL FROM one, or `postmaster@<helo>` for a null sender
//!   (`mailfrom: ""`): `SpfCheck::mail_from`, which is the HELO verdict for `<>`.
//! - A type `SPF` record is also served as `TXT` when the name has no `TXT` entry (a
//!   `TXT: NONE` entry counts as one); it is served as type 99 too.
//! - `TIMEOUT` on a name: queries for it time out, except for the types the name holds
//!   records of (pyspf answers those).
//! - `explanation: DEFAULT` means no explanation from the domain (pyspf's default text);
//!   any other explanation must equal ours.
//! - A list of results accepts any of them.
//!
//! Run with `-- --nocapture` to see the per-section tables.

#![allow(clippy::print_stdout)]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use auth_checks::Verifier;
use dns_mx::testing::{TestDns, TestDnsBuilder};
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{
    ConnectionConfig, LookupIpStrategy, NameServerConfig, ResolverConfig,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::rdata::{A, AAAA, CNAME, MX, NULL, PTR, TXT};
use hickory_resolver::proto::rr::{Name, RData, Record, RecordType};
use yaml_rust2::{Yaml, YamlLoader};

/// The suite's file, in `shared/testdata/openspf-pyspf`.
const SUITE_FILE: &str = "rfc7208-tests.yml";

/// How long one DNS query may take. A lookup of a `TIMEOUT` name costs about twice this
/// (the resolver tries its UDP and TCP connections), and sections run at once, so the
/// suite takes a few of these; loopback answers take well under a millisecond, so 1 s
/// leaves room for a busy host.
const QUERY_TIMEOUT: Duration = Duration::from_secs(1);

/// The cases that fail today, with the reason. It must equal the failures exactly: a
/// fix or a regression both fail the test until this list is updated. All are in
/// mail-auth 0.13.3 except `null-text` (hickory-proto, the DNS client).
const KNOWN_FAILURES: &[(&str, &str)] = &[
    // Initial processing
    (
        "non-ascii-policy",
        "mail-auth accepts non-ASCII bytes in a record (§3.1: permerror); the name is looked up after IDNA mapping",
    ),
    (
        "non-ascii-mech",
        "mail-auth silently drops a term starting with a non-ASCII byte instead of permerror (§3.1)",
    ),
    (
        "control-char-policy",
        "mail-auth takes CR as a term separator; only SP separates terms (§4.6.1)",
    ),
    (
        "null-text",
        "hickory-proto rejects the whole TXT answer because one record has RDLENGTH 0 (no strings): temperror",
    ),
    (
        "badip4",
        "mail-auth takes LF as a term separator; only SP separates terms (§4.6.1)",
    ),
    // Selecting records
    (
        "multitxt1",
        "mail-auth uses the first of several SPF records instead of permerror (§4.5)",
    ),
    (
        "multitxt2",
        "mail-auth uses the first of several SPF records instead of permerror (§4.5)",
    ),
    // Record evaluation
    (
        "modifier-charset-good",
        "mail-auth rejects an unknown modifier whose name has '.', '-' or '_' (§A allows them)",
    ),
    (
        "redirect-after-mechanisms2",
        "mail-auth: the redirect target is the record of modifier-charset-good, which it rejects",
    ),
    (
        "invalid-domain",
        "mail-auth has no domain-spec check (§7.1 toplabel): 'a:foo-bar' is looked up",
    ),
    (
        "invalid-domain-empty-label",
        "mail-auth: a target that is no valid DNS name (empty label) gives temperror, not no-match/permerror",
    ),
    (
        "invalid-domain-long",
        "mail-auth: a target that is no valid DNS name (64-octet label) gives temperror, not no-match/permerror",
    ),
    (
        "invalid-domain-long-via-macro",
        "mail-auth: a target that is no valid DNS name (long label from %{H}) gives temperror",
    ),
    // PTR mechanism syntax
    (
        "ptr-match-implicit",
        "mail-auth compares the validated name, trailing dot kept, with the target: an exact match never matches",
    ),
    (
        "ptr-match-ip6",
        "mail-auth compares the validated name, trailing dot kept, with the target: an exact match never matches",
    ),
    // A mechanism syntax
    (
        "a-bad-cidr4",
        "mail-auth clamps an out-of-range CIDR length (a/33) instead of permerror (§5.6)",
    ),
    (
        "a-bad-cidr6",
        "mail-auth clamps an out-of-range CIDR length (a//129) instead of permerror (§5.6)",
    ),
    (
        "a-dual-cidr-ip4-err",
        "mail-auth accepts 'a/24/64' (an IPv6 length needs '//', §5.6)",
    ),
    (
        "a-bad-domain",
        "mail-auth has no domain-spec check; 'example.com:8080' is no DNS name: temperror",
    ),
    (
        "a-null",
        "mail-auth has no domain-spec check; a name with NUL is no DNS name: temperror",
    ),
    (
        "a-numeric",
        "mail-auth has no toplabel check (all-numeric top label, §7.1)",
    ),
    (
        "a-numeric-toplabel",
        "mail-auth has no toplabel check (all-numeric top label, §7.1)",
    ),
    (
        "a-bad-toplabel",
        "mail-auth has no toplabel check; 'example.-com' is no DNS name: temperror",
    ),
    (
        "a-only-toplabel",
        "mail-auth has no domain-spec check (a single label, §7.1)",
    ),
    (
        "a-only-toplabel-trailing-dot",
        "mail-auth has no domain-spec check (a single label, §7.1)",
    ),
    (
        "a-colon-domain",
        "mail-auth's parser takes the '/' of 'foo:bar/baz.example.com' for a CIDR length: permerror",
    ),
    (
        "a-colon-domain-ip4mapped",
        "mail-auth's parser takes the '/' of 'foo:bar/baz.example.com' for a CIDR length: permerror",
    ),
    // MX mechanism syntax
    (
        "mx-bad-cidr4",
        "mail-auth clamps an out-of-range CIDR length (mx/33) instead of permerror (§5.6)",
    ),
    (
        "mx-bad-cidr6",
        "mail-auth clamps an out-of-range CIDR length (mx//129) instead of permerror (§5.6)",
    ),
    (
        "mx-bad-domain",
        "mail-auth has no domain-spec check; 'example.com:8080' is no DNS name: temperror",
    ),
    (
        "mx-null",
        "mail-auth has no domain-spec check; a name with NUL is no DNS name: temperror",
    ),
    (
        "mx-numeric-top-label",
        "mail-auth has no toplabel check (all-numeric top label, §7.1)",
    ),
    (
        "mx-colon-domain",
        "mail-auth's parser takes the '/' of 'foo:bar/baz.example.com' for a CIDR length: permerror",
    ),
    (
        "mx-colon-domain-ip4mapped",
        "mail-auth's parser takes the '/' of 'foo:bar/baz.example.com' for a CIDR length: permerror",
    ),
    (
        "mx-bad-toplab",
        "mail-auth has no toplabel check; 'example.-com' is no DNS name: temperror",
    ),
    // EXISTS mechanism syntax
    (
        "exists-ip6only",
        "mail-auth's exists looks up A and AAAA; §5.7 looks up A only",
    ),
    // IP4 mechanism syntax
    (
        "cidr4-33",
        "mail-auth clamps an out-of-range CIDR length (ip4:.../33) instead of permerror (§5.6)",
    ),
    (
        "cidr4-032",
        "mail-auth accepts a CIDR length with a leading zero (/032)",
    ),
    // IP6 mechanism syntax
    (
        "cidr6-0-ip4",
        "mail-auth matches ip6 mechanisms against IPv4 clients (as ::ffff:a.b.c.d); §5.6: they never match",
    ),
    (
        "cidr6-ip4",
        "mail-auth matches ip6 mechanisms against IPv4 clients (as ::ffff:a.b.c.d); §5.6: they never match",
    ),
    (
        "cidr6-129",
        "mail-auth clamps an out-of-range CIDR length (ip6:.../129) instead of permerror (§5.6)",
    ),
    // Semantics of exp and other modifiers
    (
        "redirect-syntax-error",
        "mail-auth has no domain-spec check for redirect= ('-all', §6.1)",
    ),
    (
        "invalid-modifier",
        "mail-auth ignores an unknown modifier whose name starts with a digit instead of permerror (§A)",
    ),
    (
        "empty-modifier-name",
        "mail-auth ignores a modifier with an empty name ('=all') instead of permerror (§A)",
    ),
    (
        "exp-multiple-txt",
        "mail-auth uses the first of several exp= TXT records; §6.2 ignores exp= then",
    ),
    (
        "exp-syntax-error",
        "mail-auth has no domain-spec check for exp= ('-all', §6.2)",
    ),
    (
        "two-exp-records",
        "mail-auth uses the first of several exp= TXT records; §6.2 ignores exp= then",
    ),
    // Macro expansion rules
    (
        "macro-mania-in-domain",
        "mail-auth builds query names with Name::from_str_relaxed, which rejects the spaces %_ makes: temperror",
    ),
    (
        "domain-name-truncation",
        "mail-auth does not truncate an expansion over 253 octets from the left (§7.3): the exp= lookup fails",
    ),
    (
        "v-macro-ip6",
        "mail-auth writes IPv6 %{i} nibbles in lowercase (as RFC 7208 §7.4's example); the suite wants uppercase",
    ),
    (
        "p-macro-ip4-novalid",
        "mail-auth expands %{p} in exp= text to nothing (no PTR validation there; 'unknown' expected)",
    ),
    (
        "p-macro-ip4-valid",
        "mail-auth expands %{p} in exp= text to nothing (no PTR validation there)",
    ),
    (
        "p-macro-ip6-novalid",
        "mail-auth expands %{p} in exp= text to nothing (no PTR validation there; 'unknown' expected)",
    ),
    (
        "p-macro-ip6-valid",
        "mail-auth expands %{p} in exp= text to nothing (no PTR validation there)",
    ),
    (
        "p-macro-multiple",
        "mail-auth's %{p} is the first PTR name, unvalidated, trailing dot kept: 'mx.example.com..should...': temperror",
    ),
    (
        "upper-macro",
        "mail-auth percent-encodes with lowercase hex (%3d); RFC 3986 §2.1 says uppercase",
    ),
    (
        "invalid-hello-macro",
        "mail-auth: %{H} of an invalid HELO ('jumpin%27%20jupiter') is no DNS name: temperror, not no-match",
    ),
    (
        "hello-domain-literal",
        "mail-auth: %{H} of a HELO literal ('%5B192...%5D') is no DNS name: temperror, not no-match",
    ),
    // Processing limits
    (
        "void-over-limit",
        "mail-auth has no void-lookup limit (§4.6.4: more than 2 is permerror)",
    ),
];

/// One case of the suite.
struct Case {
    name: String,
    host: String,
    helo: String,
    mail_from: String,
    results: Vec<String>,
    explanation: Option<String>,
}

/// One section (YAML document): its cases and its zone data.
struct Section {
    description: String,
    cases: Vec<Case>,
    zonedata: Vec<(String, Vec<Yaml>)>,
}

/// A case's outcome.
struct Outcome {
    case: Case,
    result: String,
    explanation: Option<String>,
    passed: bool,
}

fn string(yaml: &Yaml) -> String {
    match yaml {
        Yaml::String(s) | Yaml::Real(s) => s.clone(),
        Yaml::Integer(i) => i.to_string(),
        Yaml::Boolean(b) => b.to_string(),
        other => panic!("expected a string, got {other:?}"),
    }
}

fn load(text: &str) -> Vec<Section> {
    let docs = YamlLoader::load_from_str(text).unwrap_or_else(|e| panic!("bad YAML: {e}"));
    docs.iter()
        .map(|doc| {
            let description = string(&doc["description"]);
            let tests = doc["tests"]
                .as_hash()
                .unwrap_or_else(|| panic!("{description}: no tests"));
            let cases = tests
                .iter()
                .map(|(name, case)| {
                    let results = match &case["result"] {
                        Yaml::Array(list) => list.iter().map(string).collect(),
                        one => vec![string(one)],
                    };
                    Case {
                        name: string(name),
                        host: string(&case["host"]),
                        helo: string(&case["helo"]),
                        mail_from: string(&case["mailfrom"]),
                        results,
                        explanation: case["explanation"].as_str().map(str::to_owned),
                    }
                })
                .collect();
            let zonedata = doc["zonedata"]
                .as_hash()
                .map(|zone| {
                    zone.iter()
                        .map(|(name, entries)| {
                            (string(name), entries.as_vec().cloned().unwrap_or_default())
                        })
                        .collect()
                })
                .unwrap_or_default();
            Section {
                description,
                cases,
                zonedata,
            }
        })
        .collect()
}

/// A domain name from the suite's text, byte for byte (names such as
/// `foo:bar/baz.example.com` or ones with spaces are served as they are).
fn name(text: &str) -> Name {
    let text = text.trim_end_matches('.');
    if text.is_empty() {
        return Name::root();
    }
    let mut name = Name::from_labels(text.split('.').map(str::as_bytes))
        .unwrap_or_else(|e| panic!("name {text:?}: {e}"));
    name.set_fqdn(true);
    name
}

/// The bytes of a TXT string. The suite writes raw bytes as `\xNN` escapes, which YAML
/// reads as code points: characters below 256 are taken as those bytes (Latin-1).
fn bytes(text: &str) -> Vec<u8> {
    if text.chars().all(|c| u32::from(c) < 256) {
        text.chars().map(|c| c as u8).collect()
    } else {
        text.as_bytes().to_vec()
    }
}

/// A TXT (or SPF) value: one string, or a list of the strings of one record.
fn txt_strings(value: &Yaml) -> Vec<Vec<u8>> {
    match value {
        Yaml::Array(parts) => parts.iter().map(|p| bytes(&string(p))).collect(),
        one => {
            // Character-strings hold at most 255 bytes; longer text takes several.
            let all = bytes(&string(one));
            if all.is_empty() {
                vec![all]
            } else {
                all.chunks(255).map(<[u8]>::to_vec).collect()
            }
        }
    }
}

/// The TXT wire format of `strings`, for an SPF (99) record.
fn txt_wire(strings: &[Vec<u8>]) -> Vec<u8> {
    let mut wire = Vec::new();
    for s in strings {
        wire.push(u8::try_from(s.len()).unwrap_or(u8::MAX));
        wire.extend_from_slice(s);
    }
    wire
}

/// The DNS server for a section's zone data.
fn zone(section: &Section) -> TestDnsBuilder {
    const TTL: u32 = 300;
    let mut builder = TestDns::builder();
    for (owner, entries) in &section.zonedata {
        let owner_name = name(owner);
        let has_txt = entries.iter().any(|e| !e["TXT"].is_badvalue());
        for entry in entries {
            if entry.as_str() == Some("TIMEOUT") {
                builder = builder.timeout(owner_name.clone());
                continue;
            }
            let (kind, value) = entry
                .as_hash()
                .and_then(|h| h.iter().next())
                .unwrap_or_else(|| panic!("{owner}: bad entry {entry:?}"));
            let kind = string(kind);
            let mut add = |rdata: RData| {
                builder = std::mem::take(&mut builder).record(Record::from_rdata(
                    owner_name.clone(),
                    TTL,
                    rdata,
                ));
            };
            match kind.as_str() {
                "A" => add(RData::A(A(string(value)
                    .parse()
                    .unwrap_or_else(|e| panic!("{owner}: A: {e}"))))),
                "AAAA" => add(RData::AAAA(AAAA(
                    string(value)
                        .parse()
                        .unwrap_or_else(|e| panic!("{owner}: AAAA: {e}")),
                ))),
                "MX" => {
                    let preference = value[0]
                        .as_i64()
                        .and_then(|p| u16::try_from(p).ok())
                        .unwrap_or_else(|| panic!("{owner}: MX preference"));
                    add(RData::MX(MX::new(preference, name(&string(&value[1])))));
                }
                "PTR" => add(RData::PTR(PTR(name(&string(value))))),
                "CNAME" => add(RData::CNAME(CNAME(name(&string(value))))),
                "TXT" if value.as_str() == Some("NONE") => {}
                "TXT" => {
                    let strings = txt_strings(value);
                    add(RData::TXT(TXT::from_bytes(
                        strings.iter().map(Vec::as_slice).collect(),
                    )));
                }
                "SPF" if value.as_str() == Some("NONE") => {}
                "SPF" => {
                    let strings = txt_strings(value);
                    let wire = txt_wire(&strings);
                    add(RData::Unknown {
                        code: RecordType::Unknown(99),
                        rdata: if wire.is_empty() {
                            NULL::new()
                        } else {
                            NULL::with(wire)
                        },
                    });
                    if !has_txt {
                        add(RData::TXT(TXT::from_bytes(
                            strings.iter().map(Vec::as_slice).collect(),
                        )));
                    }
                }
                other => panic!("{owner}: unknown record type {other}"),
            }
        }
    }
    builder
}

/// A resolver that asks only `dns`, built as `dns_mx::MxResolver` builds its own but
/// with a short timeout and one attempt.
fn resolver(dns: &TestDns) -> TokioResolver {
    let addr = dns.addr();
    let mut udp = ConnectionConfig::udp();
    udp.port = addr.port();
    let mut tcp = ConnectionConfig::tcp();
    tcp.port = addr.port();
    let server = NameServerConfig::new(addr.ip(), true, vec![udp, tcp]);
    let mut builder = TokioResolver::builder_with_config(
        ResolverConfig::from_parts(None, Vec::new(), vec![server]),
        TokioRuntimeProvider::default(),
    );
    let options = builder.options_mut();
    options.timeout = QUERY_TIMEOUT;
    options.attempts = 1;
    // As dns_mx::MxResolver sets it: the Verifier shares the delivery resolver.
    options.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    options.ndots = 0;
    builder.build().unwrap_or_else(|e| panic!("resolver: {e}"))
}

async fn run_section(section: Section) -> (String, Vec<Outcome>) {
    let dns = zone(&section).start().await;
    let verifier = Verifier::new(resolver(&dns), "receiver.example.org");
    let mut outcomes = Vec::new();
    for case in section.cases {
        let ip: IpAddr = case
            .host
            .parse()
            .unwrap_or_else(|e| panic!("{}: host {}: {e}", case.name, case.host));
        let check = verifier.spf(ip, &case.helo, &case.mail_from).await;
        let result = check.mail_from.result.as_str().to_owned();
        let explanation = check.mail_from.explanation;
        let result_ok = case.results.contains(&result);
        let explanation_ok = match case.explanation.as_deref() {
            None => true,
            Some("DEFAULT") => explanation.is_none(),
            Some(expected) => explanation.as_deref() == Some(expected),
        };
        outcomes.push(Outcome {
            case,
            result,
            explanation,
            passed: result_ok && explanation_ok,
        });
    }
    (section.description, outcomes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openspf_rfc7208_suite() {
    // pyspf's test/rfc7208-tests.yml.
    let Some(dir) = support::shared_testdata("openspf-pyspf", SUITE_FILE) else {
        return;
    };
    let text = support::read_text(&dir.join(SUITE_FILE));
    let sections = load(&text);
    let mut names = BTreeSet::new();
    for case in sections.iter().flat_map(|s| &s.cases) {
        assert!(
            names.insert(case.name.clone()),
            "duplicate case {}",
            case.name
        );
    }
    for (known, _) in KNOWN_FAILURES {
        assert!(
            names.contains(*known),
            "known failure {known} is not a case"
        );
    }
    let known: BTreeMap<&str, &str> = KNOWN_FAILURES.iter().copied().collect();

    let started = Instant::now();
    // Sections run at once, each against its own server: the TIMEOUT cases overlap.
    let tasks: Vec<_> = sections
        .into_iter()
        .map(|section| tokio::spawn(run_section(section)))
        .collect();
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.unwrap_or_else(|e| panic!("section task: {e}")));
    }
    let elapsed = started.elapsed();

    // Per section: passed/total, then each failing case, expected against got.
    let mut failed = BTreeSet::new();
    let (mut total_passed, mut total) = (0, 0);
    for (description, outcomes) in &results {
        let passed = outcomes.iter().filter(|o| o.passed).count();
        total_passed += passed;
        total += outcomes.len();
        println!("### {description}: {passed}/{} passed", outcomes.len());
        if passed == outcomes.len() {
            println!();
            continue;
        }
        println!();
        println!("| case | helo / mailfrom / host | expected | got | known reason |");
        println!("|---|---|---|---|---|");
        for o in outcomes.iter().filter(|o| !o.passed) {
            failed.insert(o.case.name.clone());
            let mut expected = o.case.results.join(" or ");
            let mut got = o.result.clone();
            if let Some(exp) = &o.case.explanation {
                expected.push_str(&format!(", exp {exp:?}"));
                got.push_str(&format!(", exp {:?}", o.explanation));
            }
            println!(
                "| {} | {:?} / {:?} / {} | {} | {} | {} |",
                o.case.name,
                o.case.helo,
                o.case.mail_from,
                o.case.host,
                expected.replace('|', "\\|"),
                got.replace('|', "\\|"),
                known
                    .get(o.case.name.as_str())
                    .copied()
                    .unwrap_or("NOT A KNOWN FAILURE"),
            );
        }
        println!();
    }
    println!("| section | passed | total |");
    println!("|---|---|---|");
    for (description, outcomes) in &results {
        let passed = outcomes.iter().filter(|o| o.passed).count();
        println!("| {description} | {passed} | {} |", outcomes.len());
    }
    println!("| **total** | **{total_passed}** | **{total}** |");
    println!(
        "\n{total_passed}/{total} passed ({:.1} %) in {:.1} s",
        100.0 * total_passed as f64 / total as f64,
        elapsed.as_secs_f64()
    );

    let known_set: BTreeSet<String> = known.keys().map(|k| (*k).to_owned()).collect();
    let new: Vec<_> = failed.difference(&known_set).collect();
    let fixed: Vec<_> = known_set.difference(&failed).collect();
    assert!(
        failed.len() <= KNOWN_FAILURES.len() && new.is_empty() && fixed.is_empty(),
        "the failures changed: new failures {new:?}; now passing (remove from KNOWN_FAILURES) {fixed:?}"
    );
}
