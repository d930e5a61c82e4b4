//! DKIM (RFC 6376, RFC 8463) against third-party test data: the signed messages of
//! dkimpy and of mail-auth (in `shared/testdata/`) must verify, or fail, as their
//! READMEs say, with the key records the READMEs list served by a real DNS server on
//! loopback; and the suites' own test keys (RSA 1024/2048 in PKCS#1 and PKCS#8,
//! Ed25519) must sign-then-verify over the suites' input messages.
//!
//! When the data is absent the tests print why and pass, except under `CI=true`,
//! where absent data fails them.
//!
//! Run: `cargo test -p auth-checks --test dkim_suites -- --nocapture` (the summary
//! tables are printed).

// The suites print their result tables, from helpers too.
#![allow(clippy::print_stdout)]

mod support;

use std::path::{Path, PathBuf};

use auth_checks::{DkimResult, DkimSigner, DkimVerdict, Verifier};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use dns_mx::testing::TestDns;
use support::{crlf, read, read_text, start_dns, verifier, verify_dkim as verify};

/// The data set `shared/testdata/{name}`, or `None` (after saying so) when it is absent
/// outside CI.
fn data_set(name: &str) -> Option<PathBuf> {
    support::shared_testdata(name, "README.md")
}

/// A zone for the root, so that one server answers every name of a case, with
/// `(name, TXT value)` records; each value is split in strings of at most 255 octets,
/// all on one line.
fn root_zone(records: &[(String, String)]) -> String {
    let mut zone =
        String::from("$ORIGIN .\n@ 3600 IN SOA ns.invalid. root.invalid. 1 3600 600 86400 60\n");
    for (name, value) in records {
        let parts: Vec<String> = value
            .trim()
            .as_bytes()
            .chunks(250)
            .map(|c| format!("\"{}\"", String::from_utf8_lossy(c)))
            .collect();
        zone.push_str(&format!(
            "{}. 60 IN TXT {}\n",
            name.trim_end_matches('.'),
            parts.join(" ")
        ));
    }
    zone
}

/// A DNS server with `records` and a verifier that asks it.
async fn serve(records: &[(String, String)]) -> (TestDns, Verifier) {
    let dns = start_dns(&[root_zone(records)]).await;
    let verifier = verifier(&dns);
    (dns, verifier)
}

fn show(v: &DkimVerdict) -> String {
    let mut s = format!(
        "{} ({} d={} s={})",
        v.result.as_str(),
        v.algorithm.as_deref().unwrap_or("?"),
        v.domain.as_deref().unwrap_or("?"),
        v.selector.as_deref().unwrap_or("?"),
    );
    if let Some(reason) = &v.reason {
        s.push_str(&format!(": {reason}"));
    }
    if v.corrected_relaxed_body {
        s.push_str(" [relaxed body corrected]");
    }
    s
}

fn show_all(verdicts: &[DkimVerdict]) -> String {
    if verdicts.is_empty() {
        return "no signature".to_owned();
    }
    verdicts.iter().map(show).collect::<Vec<_>>().join("; ")
}

/// What a case expects of each signature, in header order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    /// `pass`.
    Pass,
    /// A definite failure: `fail`, `neutral` or `permerror` — not `pass`, and not
    /// `temperror`/`none`, which would mean the test's DNS or parsing went wrong.
    Fails,
    /// The data set expects a failure (or a refusal to sign) but this passes, for the
    /// reason given: a known deviation, counted apart. A definite failure is accepted
    /// too (that is what the data set expects), so a fix does not break the test.
    PassKnownDeviation(&'static str),
}

impl Expect {
    fn holds(self, result: DkimResult) -> bool {
        match self {
            Self::Pass => result == DkimResult::Pass,
            Self::Fails => matches!(
                result,
                DkimResult::Fail | DkimResult::Neutral | DkimResult::PermError
            ),
            Self::PassKnownDeviation(_) => result == DkimResult::Pass || Self::Fails.holds(result),
        }
    }

    fn describe(self) -> String {
        match self {
            Self::Pass => "pass".to_owned(),
            Self::Fails => "fail".to_owned(),
            Self::PassKnownDeviation(why) => {
                format!("fail, or pass as a KNOWN DEVIATION ({why})")
            }
        }
    }
}

/// One line of a summary table.
struct Row {
    case: String,
    expected: String,
    got: String,
    ok: bool,
    /// A known deviation from the data set's expectation (counted apart).
    deviation: bool,
}

/// Prints the table and fails the test with every mismatch, after all cases ran.
fn conclude(suite: &str, rows: &[Row]) {
    let passed = rows.iter().filter(|r| r.ok && !r.deviation).count();
    let deviations = rows.iter().filter(|r| r.ok && r.deviation).count();
    println!(
        "\n### {suite}: {passed}/{} as the data set expects, {deviations} known deviation(s), {} unexpected\n",
        rows.len(),
        rows.iter().filter(|r| !r.ok).count()
    );
    println!("| case | expected | got | ok |\n|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {} | {} | {} |",
            r.case,
            r.expected,
            r.got.replace('|', "\\|"),
            if r.ok { "yes" } else { "NO" }
        );
    }
    let failures: Vec<String> = rows
        .iter()
        .filter(|r| !r.ok)
        .map(|r| format!("{}: expected {}, got {}", r.case, r.expected, r.got))
        .collect();
    assert!(
        failures.is_empty(),
        "{suite}: {} of {} cases not as expected:\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n")
    );
}

/// Checks `verdicts` against `expect` (one per signature, in header order).
fn row(case: &str, expect: &[Expect], verdicts: &[DkimVerdict]) -> Row {
    let ok = verdicts.len() == expect.len()
        && verdicts.iter().zip(expect).all(|(v, e)| e.holds(v.result));
    Row {
        case: case.to_owned(),
        expected: expect
            .iter()
            .map(|e| e.describe())
            .collect::<Vec<_>>()
            .join(" + "),
        got: show_all(verdicts),
        ok,
        // A known deviation counts as one only while it still passes.
        deviation: expect.iter().zip(verdicts).any(|(e, v)| {
            matches!(e, Expect::PassKnownDeviation(_)) && v.result == DkimResult::Pass
        }),
    }
}

/// The value of a key-record file (one line).
fn record(dir: &Path, file: &str) -> String {
    read_text(&dir.join("data").join(file)).trim().to_owned()
}

/// The RFC 8463 Appendix A Ed25519 key record (`brisbane._domainkey.football.example.com`).
const BRISBANE: &str = "v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=";

/// dkimpy's `dnsfunc6` record: the 512-bit RSA key of its `dnsfunc5` with one byte of
/// the base64 dropped, so that it does not parse.
const CORRUPTED_RSA: &str = "k=rsa; p=MFwwDQYJKoZIhvNAQEBBQADSwAwSAJBANmBe10IgY+u7h3enWTukkqtUD5PR52Tb/mPfjC0QJTocVBq6Za/PlzfV+Py92VaCak19F4WrbVTK5Gg5tW220MCAwEAAQ==";

/// The gmail.com key of dkimpy's `dnsfunc` (test_dkim.py), for `test2.message`, the
/// degenerate-folding case of `test_degenerate_folding`; not listed in the README.
const GMAIL_20120113: &str = "k=rsa; p=MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA1Kd87/UeJjenpabgbFwh+eBCsSTrqmwIYYvywlbhbqoo2DymndFkbjOVIPIldNs/m40KF+yzMn1skyoxcTUGCQs8g3FgD2Ap3ZB5DekAo5wMmk4wimDO+U8QzI3SD07y2+07wlNWwIt8svnxgdxGkVbbhzY8i+RQ9DpSVpPbF7ykQxtKXkv/ahW3KjViiAH+ghvvIhkx4xYSIc9oSwVmAl5OctMEeWUwg8Istjqz8BZeTWbf41fbNhte7Y+YqZOwq1Sd0DbvYAD9NOZK9vlfuac0598HY+vtSBczUiKERHv1yRbcaQtZFh5wtiRrN04BLUTD21MycBX5jYchHjPY/wIDAQAB";

fn rec(name: &str, value: impl Into<String>) -> (String, String) {
    (name.to_owned(), value.into())
}

/// A verification case: what it checks, the message file, the records served, and
/// what each signature should give.
type Case = (
    &'static str,
    &'static str,
    Vec<(String, String)>,
    Vec<Expect>,
);

/// dkimpy's signed messages, verified as its README (and its tests) say.
#[tokio::test]
async fn dkimpy_signed_messages() {
    let Some(dir) = data_set("dkimpy") else {
        return;
    };
    let test_txt = record(&dir, "test.txt");
    let football = || {
        vec![
            rec("test._domainkey.football.example.com", test_txt.clone()),
            rec("brisbane._domainkey.football.example.com", BRISBANE),
        ]
    };
    use Expect::{Fails, Pass};
    let cases: Vec<Case> = vec![
        (
            "rfc6376.signed.msg (ed25519 + rsa, simple/simple)",
            "rfc6376.signed.msg",
            football(),
            vec![Pass, Pass],
        ),
        (
            "rfc6376.signed.rsa.msg",
            "rfc6376.signed.rsa.msg",
            football(),
            vec![Pass],
        ),
        (
            "rfc6376.signed.rsa.msg, corrupted key (dnsfunc6)",
            "rfc6376.signed.rsa.msg",
            vec![
                rec("test._domainkey.football.example.com", CORRUPTED_RSA),
                rec("brisbane._domainkey.football.example.com", BRISBANE),
            ],
            vec![Fails],
        ),
        (
            "rfc6376.signed.rsa.msg, test2.txt (no k=: rsa implied; test_implicit_k)",
            "rfc6376.signed.rsa.msg",
            vec![rec(
                "test._domainkey.football.example.com",
                record(&dir, "test2.txt"),
            )],
            vec![Pass],
        ),
        (
            "rfc6376.signed.rsa.msg, badversion.txt (\"v=DKIM1:\"; test_bad_version)",
            "rfc6376.signed.rsa.msg",
            vec![rec(
                "test._domainkey.football.example.com",
                record(&dir, "badversion.txt"),
            )],
            vec![Fails],
        ),
        (
            "rfc6376.signed.rsa.msg, badk.txt (k=ed25519-sha256; test_unknown_k)",
            "rfc6376.signed.rsa.msg",
            vec![rec(
                "test._domainkey.football.example.com",
                record(&dir, "badk.txt"),
            )],
            vec![Fails],
        ),
        (
            "rfc6376.signed.rsa.msg, test_bad.txt (altered key)",
            "rfc6376.signed.rsa.msg",
            vec![rec(
                "test._domainkey.football.example.com",
                record(&dir, "test_bad.txt"),
            )],
            vec![Fails],
        ),
        (
            "rfc6376.signed.rsa.msg, test_tlsrpt.txt (s=tlsrpt: not for email; test_ignores_tlsrptsvc)",
            "rfc6376.signed.rsa.msg",
            vec![rec(
                "test._domainkey.football.example.com",
                record(&dir, "test_tlsrpt.txt"),
            )],
            vec![Expect::PassKnownDeviation(
                "dkimpy fails it; mail-auth 0.13.3 parses the key record's s= but never \
                 checks it, where RFC 6376 §3.6.1 says a verifier MUST ignore a record \
                 whose s= lists neither email nor *",
            )],
        ),
        (
            "rfc6376.signed.no_t.msg (t= removed, x= added: b= no longer matches)",
            "rfc6376.signed.no_t.msg",
            football(),
            vec![Fails],
        ),
        (
            "ed25519test2.msg (Exim, ed25519 relaxed/relaxed)",
            "ed25519test2.msg",
            vec![rec("sed._domainkey.test.ex", record(&dir, "eximtest.dns"))],
            vec![Pass],
        ),
        (
            "test2.message (gmail, degenerate folding; record from test_dkim.py)",
            "test2.message",
            vec![rec("20120113._domainkey.gmail.com", GMAIL_20120113)],
            vec![Pass],
        ),
        (
            "test.message.baddomain (d=legitimate.com(.attacker.com)",
            "test.message.baddomain",
            vec![rec("test._domainkey.example.com", test_txt.clone())],
            vec![Fails],
        ),
    ];
    let mut rows = Vec::new();
    for (case, file, records, expect) in cases {
        let message = crlf(&read(&dir.join("data").join(file)));
        let (_dns, verifier) = serve(&records).await;
        let verdicts = verify(&verifier, &message).await;
        rows.push(row(case, &expect, &verdicts));
    }
    conclude("dkimpy signed messages", &rows);
}

/// mail-auth's `resources/dkim/*.txt`: each message with the records in its head.
/// mail-auth's own test pins the clock at 1667843664 (2022-11-07) and asserts that the
/// last signature passes; the verifier here uses the real clock, so a signature whose
/// `x=` has passed since is expected to be refused as expired (RFC 6376 §3.5 `x=`).
#[tokio::test]
async fn mail_auth_signed_messages() {
    let Some(dir) = data_set("mail-auth") else {
        return;
    };
    let folder = dir.join("resources").join("dkim");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&folder)
        .unwrap_or_else(|e| panic!("{}: {e}", folder.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "txt"))
        .collect();
    files.sort();
    assert_eq!(files.len(), 6, "the README lists 6 messages: {files:?}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut rows = Vec::new();
    for path in &files {
        let text = read_text(path);
        let (head, message) = text
            .split_once("\n\n")
            .unwrap_or_else(|| panic!("{}: no blank line after the records", path.display()));
        let records: Vec<(String, String)> = head
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let (name, value) = l
                    .split_once(' ')
                    .unwrap_or_else(|| panic!("{}: bad record line {l}", path.display()));
                rec(name, value)
            })
            .collect();
        let message = crlf(message.as_bytes());
        let (_dns, verifier) = serve(&records).await;
        let verdicts = verify(&verifier, &message).await;
        let case = path
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        // The last signature passes, or is expired now when its x= is past.
        let expiry = last_expiry(&message);
        let expired = expiry.is_some_and(|x| x <= now);
        let last = verdicts.last();
        let ok = if expired {
            last.is_some_and(|v| {
                v.result != DkimResult::Pass
                    && v.reason.as_deref().is_some_and(|r| r.contains("xpired"))
            })
        } else {
            last.is_some_and(|v| v.result == DkimResult::Pass)
        };
        rows.push(Row {
            case,
            expected: if expired {
                format!(
                    "last signature pass at 1667843664; expired now (x={})",
                    expiry.unwrap_or(0)
                )
            } else {
                "last signature pass".to_owned()
            },
            got: show_all(&verdicts),
            ok,
            deviation: false,
        });
    }
    conclude("mail-auth resources/dkim", &rows);
}

/// The `x=` of the last DKIM-Signature of a message, if any.
fn last_expiry(message: &[u8]) -> Option<u64> {
    let text = String::from_utf8_lossy(message);
    let (head, _) = text.split_once("\r\n\r\n")?;
    let unfolded = head.replace("\r\n ", " ").replace("\r\n\t", " ");
    let last = unfolded
        .split("\r\n")
        .filter(|l| l.to_ascii_lowercase().starts_with("dkim-signature:"))
        .last()?
        .to_owned();
    last.split(';').find_map(|tag| {
        let (k, v) = tag.split_once('=')?;
        (k.trim() == "x").then(|| v.trim().parse().ok()).flatten()
    })
}

/// An Ed25519 private key given as its base64 32-byte seed (dkimpy's format), as a
/// PKCS#8 v1 PEM document (RFC 8410).
fn ed25519_seed_pem(seed_b64: &str) -> Vec<u8> {
    let seed = STANDARD
        .decode(seed_b64.trim())
        .unwrap_or_else(|e| panic!("seed: {e}"));
    assert_eq!(seed.len(), 32, "an Ed25519 seed is 32 bytes");
    let mut der = vec![
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    der.extend_from_slice(&seed);
    format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        STANDARD.encode(&der)
    )
    .into_bytes()
}

/// A signing key of the suite with the record(s) that publish it.
struct SuiteKey {
    label: &'static str,
    pem: Vec<u8>,
    domain: &'static str,
    /// (selector, record value, expectation): the same key under several records.
    records: Vec<(&'static str, String, Expect)>,
}

impl SuiteKey {
    /// aws-lc-rs, the one crypto provider of the tree, signs with RSA keys of 2048 bits
    /// or more only: a 1024-bit key is refused when the signer is made (RFC 8301 §3.2
    /// lets signers use 1024-bit keys, and says they SHOULD use 2048 bits or more).
    fn refused(&self) -> bool {
        self.label.contains("RSA-1024")
    }
}

/// Sign-then-verify with dkimpy's test keys over the README's input messages.
#[tokio::test]
async fn dkimpy_keys_round_trip() {
    let Some(dir) = data_set("dkimpy") else {
        return;
    };
    let data = dir.join("data");
    let key = |file: &str| read(&data.join(file));
    let keys = vec![
        SuiteKey {
            label: "test.private (RSA-1024, PKCS#1)",
            pem: key("test.private"),
            domain: "example.com",
            records: vec![("test", record(&dir, "test.txt"), Expect::Pass)],
        },
        SuiteKey {
            label: "1024_testkey.key (RSA-1024, PKCS#1)",
            pem: key("1024_testkey.key"),
            domain: "example.com",
            records: vec![
                (
                    "spki1024",
                    record(&dir, "1024_testkey_wo_markers.pub.txt"),
                    Expect::Pass,
                ),
                (
                    "rsapub1024",
                    record(&dir, "1024_testkey_wo_markers.pub.rsa.txt"),
                    Expect::Pass,
                ),
            ],
        },
        SuiteKey {
            label: "2048_testkey.key (RSA-2048, PKCS#1)",
            pem: key("2048_testkey.key"),
            domain: "example.com",
            records: vec![
                (
                    "spki2048",
                    record(&dir, "2048_testkey_wo_markers.pub.txt"),
                    Expect::Pass,
                ),
                (
                    "rsapub2048",
                    record(&dir, "2048_testkey_wo_markers.pub.rsa.txt"),
                    Expect::Pass,
                ),
            ],
        },
        SuiteKey {
            label: "2048_testkey_PKCS8.key (RSA-2048, PKCS#8)",
            pem: key("2048_testkey_PKCS8.key"),
            domain: "example.com",
            records: vec![(
                "pkcs8",
                record(&dir, "2048_testkey_PKCS8.key.pub.txt"),
                Expect::Pass,
            )],
        },
        SuiteKey {
            label: "ed25519test.key (Ed25519)",
            pem: ed25519_seed_pem(&read_text(&data.join("ed25519test.key"))),
            domain: "example.net",
            records: vec![("test", record(&dir, "ed25519test.dns"), Expect::Pass)],
        },
        SuiteKey {
            label: "rfc8032_7_1.key (Ed25519, RFC 8032 §7.1 test 1)",
            pem: ed25519_seed_pem(&read_text(&data.join("rfc8032_7_1.key"))),
            domain: "football.example.com",
            records: vec![("brisbane", BRISBANE.to_owned(), Expect::Pass)],
        },
    ];
    const NO_FROM: &str = "test_nofrom.message";
    let messages = [
        "rfc6376.msg",
        "test.message",
        "ed25519test.msg",
        "test2.message",
        "test_extra.message",
        NO_FROM,
        "rfc6376.w1258.msg",
        "test.message.baddomain",
        "message.mbox",
    ];

    let mut records = Vec::new();
    for k in &keys {
        for (selector, value, _) in &k.records {
            records.push(rec(
                &format!("{selector}._domainkey.{}", k.domain),
                value.clone(),
            ));
        }
    }
    let (_dns, verifier) = serve(&records).await;

    let mut rows = Vec::new();
    for k in &keys {
        // A key the crypto layer refuses gets one row; one it takes is round-tripped.
        if k.refused()
            && let Err(e) = DkimSigner::from_pem(k.domain, "any", &k.pem)
        {
            rows.push(Row {
                case: format!("{}: make a signer", k.label),
                expected: "sign (as dkimpy), or refused as a KNOWN DEVIATION (aws-lc-rs \
                           signs with RSA keys of 2048 bits or more only)"
                    .to_owned(),
                got: format!("refused: {e}"),
                ok: true,
                deviation: true,
            });
            continue;
        }
        for file in messages {
            let message = crlf(&read(&data.join(file)));
            for (selector, _, expect) in &k.records {
                let case = format!("{} → {file} (s={selector})", k.label);
                let signer = DkimSigner::from_pem(k.domain, selector, &k.pem)
                    .unwrap_or_else(|e| panic!("{}: {e}", k.label));
                let header = match signer.sign(&message) {
                    Ok(header) => header,
                    Err(e) => {
                        // dkimpy's test_no_from_fails: From must be there to be signed.
                        let ok = file == NO_FROM;
                        rows.push(Row {
                            case,
                            expected: if ok {
                                "sign refused (as dkimpy)"
                            } else {
                                "pass"
                            }
                            .to_owned(),
                            got: format!("sign refused: {e}"),
                            ok,
                            deviation: false,
                        });
                        continue;
                    }
                };
                let mut signed = header.into_bytes();
                signed.extend_from_slice(&message);
                let verdicts = verify(&verifier, &signed).await;
                // Ours is the first signature; a message may carry older ones.
                let ours: Vec<DkimVerdict> = verdicts
                    .into_iter()
                    .filter(|v| {
                        v.domain.as_deref() == Some(k.domain)
                            && v.selector.as_deref() == Some(*selector)
                    })
                    .collect();
                rows.push(row(&case, &[*expect], &ours));
            }
        }
    }
    conclude("dkimpy keys: sign then verify", &rows);
}
