//! BIMI through the `mta` binary: `[auth_checks] bimi` (on by default) adds
//! `BIMI-Location` to mail that passes DMARC at an enforcing policy, from the sender's
//! BIMI record, and forged BIMI header fields never reach the mailbox. DNS (the DKIM
//! key, DMARC and BIMI records) is served by a dnsmasq the test starts
//! (`.ci/deps/dnsmasq.sh` installs it); the client is 127.0.0.1, which is not in
//! `[relay] trusted_networks`, so its mail is checked.

#![cfg(unix)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use auth_checks::{DkimSigner, KeyKind, generate_key};
use smtp_client::testing::daemons::dnsmasq;

use support::{
    assert_config_ok, assert_config_refused, config_file, maildir_files, serve, smtp_send,
    terminate,
};

/// A message from `news@<domain>` with a forged `BIMI-Location`, DKIM-signed by
/// `domain` with `signer`.
fn signed(signer: &DkimSigner, domain: &str) -> String {
    let message = format!(
        "From: News <news@{domain}>\r\nTo: you@mx.test\r\nSubject: from {domain}\r\n\
         BIMI-Location: v=BIMI1; l=https://evil.test/fake.svg\r\n\r\nHello.\r\n"
    );
    format!("{}{message}", signer.sign(message.as_bytes()).unwrap())
}

/// The delivered message whose subject names `domain`, with LF line ends and folded
/// lines joined.
fn delivered(files: &[String], domain: &str) -> String {
    files
        .iter()
        .find(|f| f.contains(&format!("Subject: from {domain}")))
        .unwrap_or_else(|| panic!("no message from {domain} in {files:?}"))
        .replace("\r\n", "\n")
        .replace("\n\t", " ")
}

#[test]
fn bimi_location_after_an_enforcing_dmarc_pass_and_forgeries_removed() {
    let key = generate_key(KeyKind::Ed25519).unwrap();
    let dkim = |domain: &str| format!("--txt-record=s1._domainkey.{domain},{}", key.dns_txt);
    let records = [
        dkim("brand.test"),
        "--txt-record=_dmarc.brand.test,v=DMARC1; p=reject".to_owned(),
        "--txt-record=default._bimi.brand.test,v=BIMI1; l=https://brand.test/logo.svg; a=https://brand.test/vmc.pem".to_owned(),
        dkim("lax.test"),
        "--txt-record=_dmarc.lax.test,v=DMARC1; p=none".to_owned(),
        "--txt-record=default._bimi.lax.test,v=BIMI1; l=https://lax.test/logo.svg".to_owned(),
    ];
    let records: Vec<&str> = records.iter().map(String::as_str).collect();
    let Some(dns) = dnsmasq(&records) else {
        return;
    };
    let sign =
        |domain: &str| DkimSigner::from_pem(domain, "s1", key.private_pem.as_bytes()).unwrap();
    let config = |dir: &std::path::Path, bimi: &str| {
        config_file(
            dir,
            &format!(
                "accept_any_user = true\n[dns]\nnameservers = [\"{}\"]\n\
                 [auth_checks]\ndmarc = \"enforce\"\n{bimi}",
                dns.address
            ),
        )
    };

    // BIMI on by default.
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "");
    assert_config_ok(&cfg);
    let (child, addr) = serve(&cfg);
    for domain in ["brand.test", "lax.test"] {
        let message = signed(&sign(domain), domain);
        smtp_send(&addr, &format!("news@{domain}"), &["you@mx.test"], &message);
    }
    let files = maildir_files(dir.path(), "you", 2);
    terminate(child);
    let brand = delivered(&files, "brand.test");
    assert!(
        brand.contains(
            "\nBIMI-Location: v=BIMI1; l=https://brand.test/logo.svg; a=https://brand.test/vmc.pem\n"
        ),
        "{brand}"
    );
    assert_eq!(brand.matches("BIMI-Location:").count(), 1, "{brand}");
    assert!(
        brand.contains("dmarc=pass header.from=brand.test policy.dmarc=reject;"),
        "{brand}"
    );
    assert!(
        brand.contains(" bimi=pass header.d=brand.test header.selector=default\n"),
        "{brand}"
    );
    // p=none: no location, and the forged one is gone.
    let lax = delivered(&files, "lax.test");
    assert!(!lax.contains("BIMI-Location"), "{lax}");
    assert!(
        lax.contains(" bimi=skipped (DMARC policy not enforcing)\n"),
        "{lax}"
    );

    // `bimi = false`: no lookup, no location, no bimi= result; forgeries still removed.
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "bimi = false\n");
    assert_config_ok(&cfg);
    let (child, addr) = serve(&cfg);
    let message = signed(&sign("brand.test"), "brand.test");
    smtp_send(&addr, "news@brand.test", &["you@mx.test"], &message);
    let files = maildir_files(dir.path(), "you", 1);
    terminate(child);
    let off = delivered(&files, "brand.test");
    assert!(!off.contains("BIMI-Location"), "{off}");
    assert!(!off.contains("bimi="), "{off}");
    assert!(off.contains("dmarc=pass"), "{off}");

    // A switch, not a mode.
    let cfg = config(dir.path(), "bimi = \"tag\"\n");
    assert_config_refused(
        &cfg,
        &["line 15: [auth_checks] bimi: invalid type: string \"tag\", expected a boolean"],
    );
}
