//! DKIM interoperability with an independent implementation, dkimpy:
//!
//! - what we sign (RSA-2048 and Ed25519 keys from `generate_key`) verifies with
//!   dkimpy's `dkimverify`, which looks the key up in our test DNS server (a tampered
//!   copy must fail there, so the check is real). Needs dkimpy with dnspython and PyNaCl
//!   (Debian `python3-dkim`); without it the test says so and passes, except under
//!   `CI=true`, where it fails.
//! - what dkimpy signed with `c=relaxed/relaxed` over a body that ends in a
//!   whitespace-only line (`tests/data/relaxed-body.eml`) verifies here: the regression
//!   test of the workaround for mail-auth 0.13.3's relaxed body canonicalization
//!   (see `auth-checks/src/verify.rs`). It needs no Python: the fixture is checked in.

mod support;

use std::io::Write;
use std::process::{Command, Stdio};

use auth_checks::{DkimResult, DkimVerdict, KeyKind};
use dns_mx::testing::TestDns;
use support::{signed_with_fresh_key, start_dns, verifier, verify_dkim, zone};

/// The DKIM verdicts on `message` of a fresh verifier that asks `dns`.
async fn verify(dns: &TestDns, message: &[u8]) -> Vec<DkimVerdict> {
    verify_dkim(&verifier(dns), message).await
}

// ---------------------------------------------------------------------------------
// Our signatures, checked by dkimpy.

/// Runs dkimpy's `dkimverify` (its `main()`, unchanged) with dnspython's default
/// resolver pointed at the test DNS server: argv[1] is its port on 127.0.0.1. The
/// message is on stdin; exit status 0 and "signature ok" mean it verified. dkimpy's
/// debug log goes to stderr, to explain a failure.
const DKIMVERIFY_WRAPPER: &str = include_str!("data/dkimverify.py");

/// A Python that has dkimpy, dnspython and PyNaCl (for Ed25519): `$DKIMPY_PYTHON`,
/// Debian's `/usr/bin/python3` (where `python3-dkim` installs), or `python3`.
fn dkimpy_python() -> Option<String> {
    let candidates = std::env::var("DKIMPY_PYTHON")
        .into_iter()
        .chain(["/usr/bin/python3".to_owned(), "python3".to_owned()]);
    for python in candidates {
        let ok = Command::new(&python)
            .args(["-c", "import dkim, dkim.dkimverify, dns.resolver, nacl"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return Some(python);
        }
    }
    None
}

/// dkimpy's verdict on `message`: (verified, its output).
async fn dkimverify(python: &str, port: u16, message: Vec<u8>) -> (bool, String) {
    let python = python.to_owned();
    // Blocking I/O off the runtime, which must keep serving DNS meanwhile.
    tokio::task::spawn_blocking(move || {
        let mut child = Command::new(&python)
            .args(["-c", DKIMVERIFY_WRAPPER, &port.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("run {python}: {e}"));
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(&message)
                .unwrap_or_else(|e| panic!("write to dkimverify: {e}"));
        }
        let output = child
            .wait_with_output()
            .unwrap_or_else(|e| panic!("dkimverify: {e}"));
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        (
            output.status.success() && stdout.contains("signature ok"),
            format!(
                "status {}; stdout: {stdout}; stderr: {stderr}",
                output.status
            ),
        )
    })
    .await
    .unwrap_or_else(|e| panic!("dkimverify task: {e}"))
}

const MESSAGE: &[u8] = b"From: Alice <alice@example.org>\r\nTo: Bob <bob@example.net>\r\nSubject: interop with dkimpy\r\nDate: Tue, 24 Nov 2026 20:00:00 +0000\r\nMessage-ID: <interop-1@example.org>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nHello Bob,\r\n\r\n  an indented line, trailing blanks   \r\n\tand a tab.\r\n\r\nBye.\r\n\r\n";

#[tokio::test]
async fn dkimpy_verifies_our_signatures() {
    let Some(python) = dkimpy_python() else {
        support::skip(
            "dkimpy (python3 with dkim, dns.resolver and nacl: Debian python3-dkim, or pip \
             install dkimpy dnspython pynacl)",
        );
        return;
    };
    for kind in [KeyKind::Rsa, KeyKind::Ed25519] {
        let (dns, signed) = signed_with_fresh_key(kind, MESSAGE).await;

        // We pass it ourselves...
        let ours = verify(&dns, &signed).await;
        assert_eq!(ours.len(), 1, "{kind:?}: {ours:?}");
        assert_eq!(ours[0].result, DkimResult::Pass, "{kind:?}: {ours:?}");

        // ...and so does dkimpy.
        let (ok, output) = dkimverify(&python, dns.addr().port(), signed.clone()).await;
        println!(
            "dkimpy, {} signature: {}",
            kind.algorithm(),
            output.lines().next().unwrap_or("")
        );
        assert!(
            ok,
            "dkimpy rejects our {} signature: {output}",
            kind.algorithm()
        );

        // Changed copies fail there: a changed body on its body hash (dkimpy 1.1.4's
        // dkimverify then ends in a traceback), a changed Subject on the signature
        // itself, after the key lookup.
        let text = String::from_utf8_lossy(&signed).into_owned();
        for (what, tampered, expected) in [
            ("body", text.replace("Bye.", "Bye!"), "body hash mismatch"),
            (
                "Subject",
                text.replace("Subject: interop", "Subject: Interop"),
                "signature verification failed",
            ),
        ] {
            let (ok, output) = dkimverify(&python, dns.addr().port(), tampered.into_bytes()).await;
            assert!(
                !ok,
                "dkimpy accepts a {} message with a changed {what}: {output}",
                kind.algorithm()
            );
            assert!(
                output.contains(expected),
                "dkimpy, changed {what}: expected {expected:?}: {output}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------
// dkimpy's signature, checked by us: the relaxed body regression.

/// Signed once by dkimpy 1.1.4 (Debian bookworm `python3-dkim`) with
/// `tests/data/make_relaxed_body_fixture.py`: two `c=relaxed/relaxed` signatures,
/// ed25519-sha256 (s=dkimpy-ed) then rsa-sha256 (s=dkimpy-rsa, RSA-2048), d=example.org,
/// over a body that is exactly "Hello!\r\n  \r\n\r\n".
const RELAXED_BODY: &[u8] = include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/data/relaxed-body.eml"
));
/// The key records of [`RELAXED_BODY`], as zone-file lines (absolute names).
const RELAXED_BODY_ZONE: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/data/relaxed-body.zone"
));

#[tokio::test]
async fn relaxed_body_signed_by_dkimpy() {
    assert!(
        RELAXED_BODY.ends_with(b"\r\n\r\nHello!\r\n  \r\n\r\n"),
        "the fixture's body must be exactly \"Hello!\\r\\n  \\r\\n\\r\\n\""
    );
    let dns = start_dns(&[zone("example.org", RELAXED_BODY_ZONE)]).await;

    // Both signatures pass, and only through the workaround: `corrected_relaxed_body`
    // is set only after mail-auth has failed the body hash of the message as it is,
    // i.e. mail-auth 0.13.3 alone would fail both.
    let verdicts = verify(&dns, RELAXED_BODY).await;
    assert_eq!(verdicts.len(), 2, "{verdicts:?}");
    for (v, (algorithm, selector)) in verdicts.iter().zip([
        ("ed25519-sha256", "dkimpy-ed"),
        ("rsa-sha256", "dkimpy-rsa"),
    ]) {
        assert_eq!(v.result, DkimResult::Pass, "{v:?}");
        assert_eq!(v.algorithm.as_deref(), Some(algorithm), "{v:?}");
        assert_eq!(v.selector.as_deref(), Some(selector), "{v:?}");
        assert!(
            v.corrected_relaxed_body,
            "expected a pass through the relaxed-body workaround: {v:?}"
        );
    }

    // The RFC 6376 §3.4.4 canonical form of that body is "Hello!\r\n": the message
    // with that body passes too, and needs no correction.
    let len = RELAXED_BODY.len();
    let trimmed = [&RELAXED_BODY[..len - "  \r\n\r\n".len()]].concat();
    let verdicts = verify(&dns, &trimmed).await;
    assert!(
        verdicts
            .iter()
            .all(|v| v.result == DkimResult::Pass && !v.corrected_relaxed_body),
        "{verdicts:?}"
    );

    // Tampered copies still fail: a changed body (the trailing lines kept, so the
    // workaround is tried) and a changed signed header field.
    let changed_body = String::from_utf8_lossy(RELAXED_BODY).replace("Hello!", "Hello?");
    let changed_header = String::from_utf8_lossy(RELAXED_BODY).replace(
        "Subject: relaxed body regression",
        "Subject: relaxed body regressions",
    );
    for (what, message) in [("body", changed_body), ("Subject", changed_header)] {
        let verdicts = verify(&dns, message.as_bytes()).await;
        assert_eq!(verdicts.len(), 2, "{what}: {verdicts:?}");
        for v in &verdicts {
            assert_eq!(v.result, DkimResult::Fail, "changed {what}: {v:?}");
            assert!(!v.corrected_relaxed_body, "changed {what}: {v:?}");
        }
    }
}
