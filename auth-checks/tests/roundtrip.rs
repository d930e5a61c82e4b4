//! Sign-then-verify round trips through a real DNS server on loopback.

mod support;

use auth_checks::{DkimResult, DkimSigner, KeyKind, MessageChecks, generate_key};
use support::{signed_with_fresh_key, verifier};

const MESSAGE: &[u8] = b"From: Alice <alice@example.org>\r\nTo: bob@example.net\r\nSubject: round trip\r\nDate: Tue, 24 Nov 2026 20:00:00 +0000\r\nMessage-ID: <1@example.org>\r\n\r\nHello Bob,\r\n  indented line \r\n\r\nBye.\r\n";

#[tokio::test]
async fn both_key_kinds_sign_and_verify() {
    for kind in [KeyKind::Rsa, KeyKind::Ed25519] {
        let (dns, signed) = signed_with_fresh_key(kind, MESSAGE).await;
        let report = verifier(&dns)
            .check_message(&signed, None, MessageChecks::ALL)
            .await;
        let dkim = report.dkim.unwrap_or_default();
        assert_eq!(dkim.len(), 1, "{kind:?}: {dkim:?}");
        assert_eq!(dkim[0].result, DkimResult::Pass, "{kind:?}: {dkim:?}");
        assert_eq!(dkim[0].algorithm.as_deref(), Some(kind.algorithm()));

        // A changed body fails.
        let tampered = String::from_utf8_lossy(&signed).replace("Bye.", "Bye!");
        let report = verifier(&dns)
            .check_message(tampered.as_bytes(), None, MessageChecks::ALL)
            .await;
        assert_eq!(
            report.dkim.unwrap_or_default()[0].result,
            DkimResult::Fail,
            "{kind:?}"
        );
    }
}

#[test]
fn signs_the_fields_present_and_from_once_more() {
    let key = generate_key(KeyKind::Ed25519).unwrap_or_else(|e| panic!("keygen: {e}"));
    let signer = DkimSigner::from_pem("example.org", "s1", key.private_pem.as_bytes())
        .unwrap_or_else(|e| panic!("signer: {e}"));
    let header = signer
        .sign(MESSAGE)
        .unwrap_or_else(|e| panic!("sign: {e}"))
        .replace("\r\n\t", "");
    let h = header
        .split(';')
        .map(str::trim)
        .find_map(|tag| tag.strip_prefix("h="))
        .unwrap_or_else(|| panic!("no h= in {header}"));
    let mut names: Vec<&str> = h.split(':').map(str::trim).collect();
    names.sort_unstable();
    // Present fields once each, From twice (the second locks out an added From), and
    // nothing absent (a mailing list may still add List-Id).
    assert_eq!(
        names,
        ["Date", "From", "From", "Message-ID", "Subject", "To"],
        "{header}"
    );
}
