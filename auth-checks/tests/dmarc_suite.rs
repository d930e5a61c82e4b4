//! DMARC conformance: the cases of authheaders' test suite
//! (`shared/testdata/authheaders-dmarc`, see its README.md) through [`Verifier`], with the
//! DNS answers the cases describe served by a test DNS server on loopback.
//!
//! How the cases map onto our API:
//! - messages are given CRLF line ends (the files use LF, one mixes both), as SMTP
//!   delivers them and as authheaders' DKIM (dkimpy) reads them;
//! - `dkim: verify` cases verify the message's own signature against the suite's key;
//!   `dkim_results` cases (verdicts authheaders is fed instead of verifying) are
//!   reproduced by signing the message with a fresh Ed25519 key for each `dkim=pass`
//!   domain (published under `suite._domainkey`); the listed failures are the message's
//!   own signatures, which do not verify;
//! - SPF is off in every case (no SPF verdict is given to DMARC);
//! - `dns_exists` names get an A record, `null` ones nothing (NXDOMAIN); one zone per
//!   TLD makes every other name NXDOMAIN;
//! - the `from_domain_extraction` pairs become messages whose `header.from` we compare.
//!
//! Every case prints a row; the cases that fail must be exactly [`KNOWN_FAILURES`], so a
//! fix (remove the entry) and a regression both fail the test.
//!
//! Run: `cargo test -p auth-checks --test dmarc_suite -- --nocapture`

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use auth_checks::{DkimResult, DkimSigner, DmarcVerdict, KeyKind, MessageChecks, generate_key};
use support::{assert_known_failures, crlf, read, read_text, start_dns, txt_line, verifier};
use yaml_rust2::{Yaml, YamlLoader};

/// The suite's case list, in `shared/testdata/authheaders-dmarc`.
const CASES_FILE: &str = "dmarc-cases.yaml";

/// The cases we fail, each with why. Keep in step with the conformance notes.
const KNOWN_FAILURES: &[(&str, &str)] = &[
    (
        "dmarc_bad_record",
        "authheaders answers permerror for a record with a bare `reject` term; mail-auth \
         ignores the malformed term (RFC 7489 §6.3: syntax errors SHOULD be ignored) and \
         evaluates p=none, so fail",
    ),
    (
        "dmarc_no_from",
        "From has no address: authheaders answers permerror; mail-auth answers none (RFC \
         7489 §6.6.1: a message with no From domain is outside DMARC's scope, typically \
         rejected as invalid RFC 5322)",
    ),
    (
        "dmarcbis_psd_tree_walk",
        "From example.gov, no record there, _dmarc.gov has psd=y; p=reject; sp=none: \
         authheaders applies p=reject (the PSD record stands in for the organizational \
         domain example.gov, RFC 9091 §3); mail-auth applies sp=none since the record was \
         not published at the author domain",
    ),
];

fn string(y: &Yaml, what: &str) -> String {
    y.as_str()
        .unwrap_or_else(|| panic!("{what}: not a string: {y:?}"))
        .to_owned()
}

struct Case {
    name: String,
    message: Vec<u8>,
    /// `dkim=pass header.d=X` verdicts the case feeds in: we sign with a key for X.
    pass_domains: Vec<String>,
    expected: String,
    policy: Option<String>,
    /// For the From-domain extraction cases: the expected header.from.
    header_from: Option<String>,
    note: String,
}

fn load(dir: &Path) -> (Yaml, Vec<Case>) {
    let text = read_text(&dir.join(CASES_FILE));
    let doc = YamlLoader::load_from_str(&text)
        .unwrap_or_else(|e| panic!("dmarc-cases.yaml: {e}"))
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("dmarc-cases.yaml: empty"));
    let mut cases = Vec::new();
    for c in doc["cases"].as_vec().unwrap_or_else(|| panic!("no cases")) {
        let name = string(&c["name"], "name");
        let message = crlf(&read(&dir.join(string(&c["message"], "message"))));
        let mut pass_domains = Vec::new();
        let mut notes = Vec::new();
        if let Some(results) = c["dkim_results"].as_vec() {
            for r in results {
                let r = string(r, "dkim_results");
                notes.push(r.clone());
                if let Some(d) = r
                    .strip_prefix("dkim=pass header.d=")
                    .map(|d| d.trim().to_ascii_lowercase())
                {
                    pass_domains.push(d);
                }
            }
        } else if let Some(d) = c["dkim"].as_str() {
            notes.push(format!("dkim: {d}"));
        }
        if c["dmarcbis"].as_bool() == Some(true) {
            notes.push("DMARCbis".to_owned());
        }
        cases.push(Case {
            name,
            message,
            pass_domains,
            expected: string(&c["expected"], "expected"),
            policy: c["policy"].as_str().map(str::to_owned),
            header_from: None,
            note: notes.join(", "),
        });
    }
    for (i, pair) in doc["from_domain_extraction"]
        .as_vec()
        .unwrap_or_else(|| panic!("no from_domain_extraction"))
        .iter()
        .enumerate()
    {
        let from = string(&pair[0], "from");
        let domain = string(&pair[1], "domain");
        let message = format!(
            "From: {from}\r\nTo: somebody@example.com\r\nSubject: Testing\r\n\
             Message-ID: <x@example.com>\r\nDate: Mon, 01 Jan 2011 01:02:03 +0400\r\n\r\nHi.\r\n"
        );
        cases.push(Case {
            name: format!("from_domain_extraction_{}", i + 1),
            message: message.into_bytes(),
            pass_domains: Vec::new(),
            expected: String::new(),
            policy: None,
            header_from: Some(domain),
            note: format!("From: `{from}`"),
        });
    }
    (doc, cases)
}

/// The `dmarc=` keyword of an authheaders result string.
fn expected_keyword(expected: &str) -> &str {
    expected
        .strip_prefix("dmarc=")
        .unwrap_or(expected)
        .split([' ', ';'])
        .next()
        .unwrap_or("")
}

#[tokio::test]
async fn authheaders_dmarc_cases() {
    let Some(dir) = support::shared_testdata("authheaders-dmarc", CASES_FILE) else {
        return;
    };
    let (doc, cases) = load(&dir);

    // DNS: the suite's TXT records, the names that exist, and a key for each domain a
    // case says has a passing DKIM signature.
    let mut lines: Vec<(String, String)> = Vec::new();
    for (name, value) in doc["dns_txt"]
        .as_hash()
        .unwrap_or_else(|| panic!("no dns_txt"))
    {
        let name = string(name, "dns_txt name");
        let value = string(value, "dns_txt value");
        // "" is the suite's "no TXT record".
        if !value.is_empty() {
            lines.push((name.clone(), txt_line(&name, &value)));
        }
    }
    for (name, value) in doc["dns_exists"]
        .as_hash()
        .unwrap_or_else(|| panic!("no dns_exists"))
    {
        let name = string(name, "dns_exists name");
        // null: NXDOMAIN (publish nothing); a string: the name exists.
        if !value.is_null() {
            lines.push((name.clone(), format!("{name}. 300 IN A 192.0.2.1")));
        }
    }
    let mut signers: BTreeMap<String, DkimSigner> = BTreeMap::new();
    for domain in cases
        .iter()
        .flat_map(|c| c.pass_domains.iter())
        .collect::<BTreeSet<_>>()
    {
        let key = generate_key(KeyKind::Ed25519).unwrap_or_else(|e| panic!("keygen: {e}"));
        lines.push((domain.clone(), key.zone_line("suite", domain)));
        let signer = DkimSigner::from_pem(domain, "suite", key.private_pem.as_bytes())
            .unwrap_or_else(|e| panic!("signer for {domain}: {e}"));
        signers.insert(domain.clone(), signer);
    }
    let dns = start_dns(&support::zones_by_tld(&lines)).await;
    let verifier = verifier(&dns);

    let mut failures = BTreeSet::new();
    let mut rows = Vec::new();
    for case in &cases {
        let mut message = Vec::new();
        for d in &case.pass_domains {
            let header = signers[d]
                .sign(&case.message)
                .unwrap_or_else(|e| panic!("{}: sign: {e}", case.name));
            message.extend_from_slice(header.as_bytes());
        }
        message.extend_from_slice(&case.message);
        let report = verifier
            .check_message(&message, None, MessageChecks::ALL)
            .await;
        let verdict = report
            .dmarc
            .clone()
            .unwrap_or_else(|| DmarcVerdict::none(""));
        let dkim: Vec<String> = report
            .dkim
            .iter()
            .flatten()
            .map(|v| format!("{}:{}", v.domain.as_deref().unwrap_or("?"), v.result))
            .collect();
        // A DKIM pass the case does not list would make the comparison meaningless.
        let stray_pass = report.dkim.iter().flatten().any(|v| {
            v.result == DkimResult::Pass
                && !case
                    .pass_domains
                    .iter()
                    .any(|d| Some(d.as_str()) == v.domain.as_deref())
                && case.note.contains("dkim=")
        });

        let (expected, actual, ok) = if let Some(from) = &case.header_from {
            (
                format!("header.from={from}"),
                format!("header.from={}", verdict.header_from),
                verdict.header_from == *from,
            )
        } else {
            let want_result = expected_keyword(&case.expected);
            let want_policy = case.policy.as_deref().unwrap_or("none");
            let got_result = verdict.result.as_str();
            let got_policy = verdict.policy.as_str();
            (
                format!("{want_result} p={want_policy}"),
                format!("{got_result} p={got_policy} from={}", verdict.header_from),
                want_result == got_result && want_policy == got_policy && !stray_pass,
            )
        };
        if !ok {
            failures.insert(case.name.clone());
        }
        rows.push((
            case.name.clone(),
            expected,
            actual,
            ok,
            if dkim.is_empty() {
                case.note.clone()
            } else {
                format!("{}; verified: dkim {}", case.note, dkim.join(" "))
            },
        ));
    }

    println!("\n| case | expected | actual | ok | notes |\n|---|---|---|---|---|");
    for (name, expected, actual, ok, note) in &rows {
        let mark = if *ok { "pass" } else { "**FAIL**" };
        println!("| {name} | {expected} | {actual} | {mark} | {note} |");
    }
    let passed = rows.iter().filter(|r| r.3).count();
    println!("\nDMARC: {passed}/{} cases pass\n", rows.len());

    assert_known_failures("DMARC", &failures, KNOWN_FAILURES);
}
