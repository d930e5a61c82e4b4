//! The OpenSPF test suites (as shipped in pyspf) against `Verifier::spf`, each section's
//! zone data served by a real DNS server on loopback, queried through a hickory resolver
//! set up like the delivery resolver (the real lookup path; nothing pre-filled):
//!
//! - `rfc7208-tests.yml`, the RFC 7208 suite: every case must pass.
//! - `rfc4408-tests.yml`, the older RFC 4408 suite: every case must pass except those
//!   whose answer RFC 7208 changed ([`RFC7208_CHANGED`], each with its section).
//! - `test.yml`, pyspf's own extra cases: every case must pass except those that test
//!   pyspf's non-RFC modes ([`PYSPF_MODES`]).
//!
//! (`doctest.yml`, the fourth file, holds no case: only zone data for the doctests in
//! pyspf's Python source, whose expected values are not in the file.)
//!
//! The data lives outside the repository, in `../../shared/testdata/openspf-pyspf/`
//! (see the README there). When it is absent the tests say so and pass, except under
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

/// The suites' folder in `shared/testdata`, and its files.
const DATA: &str = "openspf-pyspf";
const RFC7208_FILE: &str = "rfc7208-tests.yml";
const RFC4408_FILE: &str = "rfc4408-tests.yml";
const PYSPF_FILE: &str = "test.yml";

/// How long one DNS query may take. A lookup of a `TIMEOUT` name costs about twice this
/// (the resolver tries its UDP and TCP connections), and sections run at once, so the
/// suite takes a few of these; loopback answers take well under a millisecond, so 1 s
/// leaves room for a busy host.
const QUERY_TIMEOUT: Duration = Duration::from_secs(1);

/// The RFC 7208 suite's cases that fail, with the reason: none. It must equal the
/// failures exactly, so a regression fails the test.
const RFC7208_FAILURES: &[(&str, &str)] = &[];

/// The RFC 4408 suite's cases whose answer RFC 7208 changed: the RFC 4408 suite accepts
/// several results (the RFC 7208 one among them), RFC 7208 allows one. Each with the RFC
/// 7208 result (the one the RFC 7208 suite's case of the same name expects) and the
/// section that decides; the test checks that we give exactly that result. (No RFC 4408
/// case fails: its accepted results always include the RFC 7208 one.)
const RFC7208_CHANGED: &[(&str, &str, &str)] = &[
    (
        "txtonly",
        "fail",
        "§3.1, §4.4: SPF is looked up in TXT records only (the SPF RR type was dropped)",
    ),
    (
        "spfonly",
        "none",
        "§3.1, §4.4: a type SPF record alone is no SPF record",
    ),
    (
        "spftimeout",
        "fail",
        "§3.1, §4.4: the type SPF query is never made, so its timeout does not matter",
    ),
    (
        "txttimeout",
        "temperror",
        "§3.1, §4.4: the TXT query is the only one; its timeout is temperror",
    ),
    (
        "nospftxttimeout",
        "temperror",
        "§3.1, §4.4: the TXT query is the only one; its timeout is temperror",
    ),
    (
        "spfoverride",
        "fail",
        "§3.1, §4.4: the TXT record is used, the type SPF record ignored",
    ),
    (
        "multispf2",
        "pass",
        "§3.1, §4.4: type SPF records are ignored; the single TXT record decides",
    ),
    (
        "multitxt1",
        "permerror",
        "§4.5: two TXT SPF records are a permerror (no type SPF record to prefer)",
    ),
    (
        "exists-dnserr",
        "temperror",
        "§5: a DNS error or timeout in a mechanism's lookup is temperror",
    ),
    (
        "cidr6-0-ip4",
        "neutral",
        "§5, §5.6: an IPv4 client never matches ip6",
    ),
    (
        "cidr6-ip4",
        "neutral",
        "§5, §5.6: an IPv4-mapped IPv6 client is IPv4 and never matches ip6",
    ),
    (
        "mx-limit",
        "permerror",
        "§4.6.4: more than 10 MX records for one mx mechanism is permerror",
    ),
];

/// pyspf's own cases that test its non-RFC modes, with the reason. It must equal the
/// failures exactly.
const PYSPF_MODES: &[(&str, &str)] = &[
    (
        "default-modifier",
        "pyspf's lax mode (strict: 0) honours the draft-era default= modifier; RFC 7208 §6 ignores unknown modifiers: neutral (as the RFC 7208 suite's default-modifier-obsolete)",
    ),
    (
        "default-modifier-harsh",
        "'ambiguous' is a result of pyspf's harsh mode (strict: 2), not an RFC 7208 result (§2.6); RFC 7208 §6: neutral",
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
        .enumerate()
        .map(|(i, doc)| {
            // pyspf's own file has no descriptions, only comments (or nothing).
            let description = match (&doc["description"], &doc["comment"]) {
                (Yaml::BadValue, Yaml::BadValue) => format!("section {}", i + 1),
                (Yaml::BadValue, comment) => string(comment).trim().to_owned(),
                (description, _) => string(description),
            };
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
    let verifier =
        Verifier::new(resolver(&dns), "receiver.example.org").with_nameservers(vec![dns.addr()]);
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
    run_suite(RFC7208_FILE, RFC7208_FAILURES).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openspf_rfc4408_suite() {
    // pyspf's test/rfc4408-tests.yml.
    let Some(outcomes) = run_suite(RFC4408_FILE, &[]).await else {
        return;
    };
    for (name, result, section) in RFC7208_CHANGED {
        let outcome = outcomes
            .iter()
            .find(|o| o.case.name == *name)
            .unwrap_or_else(|| panic!("{name} is not an RFC 4408 case"));
        assert!(
            outcome.case.results.len() > 1 && outcome.case.results.iter().any(|r| r == result),
            "{name}: the RFC 4408 suite accepts {:?}, not a choice that includes {result}",
            outcome.case.results
        );
        assert_eq!(
            outcome.result, *result,
            "{name}: RFC 7208 gives {result} ({section})"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pyspf_extra_cases() {
    // pyspf's test/test.yml.
    run_suite(PYSPF_FILE, PYSPF_MODES).await;
}

/// The limits of RFC 7208 §4.6.4 are `SpfLimits`, and a verifier made with other
/// limits applies them: the same record is `neutral` with the defaults, `permerror` with
/// no void lookup allowed or no DNS-querying term allowed, and `temperror` when the time
/// limit is shorter than a lookup that never answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_are_configurable() {
    use auth_checks::{SpfLimits, SpfResult};

    let section = load(
        "description: limits\ntests: {}\nzonedata:\n  \
         example.com:\n    - TXT: v=spf1 a:nx.example.com ?all\n  \
         slow.example.com:\n    - TXT: v=spf1 a:timeout.example.com ?all\n  \
         timeout.example.com:\n    - TIMEOUT\n",
    )
    .pop()
    .unwrap_or_else(|| panic!("no section"));
    let dns = zone(&section).start().await;
    let check = |limits: SpfLimits, sender: &'static str| {
        let verifier =
            Verifier::new(resolver(&dns), "receiver.example.org").with_spf_limits(limits);
        async move {
            let ip: IpAddr = "192.0.2.1".parse().unwrap_or_else(|e| panic!("{e}"));
            verifier
                .spf(ip, "[192.0.2.1]", sender)
                .await
                .mail_from
                .result
        }
    };
    let defaults = SpfLimits::default();
    assert_eq!(check(defaults, "a@example.com").await, SpfResult::Neutral);
    let no_void = SpfLimits {
        max_void_lookups: 0,
        ..defaults
    };
    assert_eq!(check(no_void, "a@example.com").await, SpfResult::PermError);
    let no_terms = SpfLimits {
        max_dns_terms: 0,
        ..defaults
    };
    assert_eq!(check(no_terms, "a@example.com").await, SpfResult::PermError);
    let short = SpfLimits {
        max_time: Duration::from_millis(100),
        ..defaults
    };
    assert_eq!(
        check(short, "a@slow.example.com").await,
        SpfResult::TempError
    );
}

/// Runs the suite in `file`; its failures must be `expected_failures` exactly. The
/// outcomes, or `None` when the data is absent.
async fn run_suite(file: &str, expected_failures: &[(&str, &str)]) -> Option<Vec<Outcome>> {
    let dir = support::shared_testdata(DATA, file)?;
    let text = support::read_text(&dir.join(file));
    let sections = load(&text);
    let mut names = BTreeSet::new();
    for case in sections.iter().flat_map(|s| &s.cases) {
        assert!(
            names.insert(case.name.clone()),
            "duplicate case {}",
            case.name
        );
    }
    for (known, _) in expected_failures {
        assert!(
            names.contains(*known),
            "{file}: expected failure {known} is not a case"
        );
    }
    let known: BTreeMap<&str, &str> = expected_failures.iter().copied().collect();

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
                    .unwrap_or("NOT AN EXPECTED FAILURE"),
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
        failed.len() <= expected_failures.len() && new.is_empty() && fixed.is_empty(),
        "{file}: the failures changed: new failures {new:?}; now passing (remove from expected_failures) {fixed:?}"
    );
    Some(results.into_iter().flat_map(|(_, o)| o).collect())
}
