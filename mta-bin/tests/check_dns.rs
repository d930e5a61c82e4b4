//! `mta check-dns`: the real binary against a DNS server on loopback that the test
//! starts (`dns_mx::testing::TestDns`), serving a domain where everything is right
//! (with its MTA-STS policy on an HTTPS server the test starts, certified by a test
//! CA given with `--mta-sts-ca`), a broken one, and one with a null MX.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::Arc;

use dns_mx::testing::TestDns;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use support::{mta, write};

/// The policy good.test serves.
const POLICY: &str = "version: STSv1\r\nmode: enforce\r\nmx: mx.good.test\r\nmax_age: 604800\r\n";

/// What every test starts: the DNS server (and the runtime it runs on), the HTTPS
/// server of the MTA-STS policy, the test CA, and a configuration with DKIM keys.
struct World {
    runtime: tokio::runtime::Runtime,
    dns: TestDns,
    https_port: u16,
    dir: tempfile::TempDir,
    /// The record `mta check-dns` must tell to publish for broken.test's key.
    broken_record: String,
}

impl World {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        // good.test publishes its configured key; broken.test publishes another one.
        let good_line = keygen(dir.path(), "good.test", "rsa", "good.key");
        let broken_record = keygen(dir.path(), "broken.test", "ed25519", "broken.key");
        let published_elsewhere = keygen(dir.path(), "broken.test", "ed25519", "other.key");
        assert_ne!(broken_record, published_elsewhere);

        let (ca_pem, cert_pem, key_pem) = pki("mta-sts.good.test");
        write(dir.path(), "ca.pem", &ca_pem);
        let https_port = serve_policy(&cert_pem, &key_pem, POLICY);

        let good = format!(
            "$ORIGIN good.test.\n$TTL 300\n\
             @ IN SOA ns root 1 3600 600 86400 60\n\
             @ IN MX 10 mx\n\
             @ IN TXT \"google-site-verification=abc\"\n\
             @ IN TXT \"v=spf1 mx -all\"\n\
             mx IN A 192.0.2.25\n\
             mta-sts IN A 127.0.0.1\n\
             _mta-sts IN TXT \"v=STSv1; id=20250101\"\n\
             _dmarc IN TXT \"v=DMARC1; p=reject; rua=mailto:dmarc@good.test\"\n\
             _smtp._tls IN TXT \"v=TLSRPTv1; rua=mailto:tls@good.test\"\n\
             _25._tcp.mx IN TLSA 3 1 1 {}\n\
             default._bimi IN TXT \"v=BIMI1; l=https://good.test/logo.svg\"\n\
             {good_line}\n",
            "ab".repeat(32)
        );
        let reverse = "$ORIGIN 2.0.192.in-addr.arpa.\n$TTL 300\n\
             @ IN SOA ns.good.test. root.good.test. 1 3600 600 86400 60\n\
             25 IN PTR mx.good.test.\n";
        let broken = format!(
            "$ORIGIN broken.test.\n$TTL 300\n\
             @ IN SOA ns root 1 3600 600 86400 60\n\
             @ IN MX 10 mx\n\
             @ IN MX 20 alias\n\
             @ IN MX 30 192.0.2.9.\n\
             alias IN CNAME mx2\n\
             mx2 IN A 192.0.2.26\n\
             @ IN TXT \"v=spf1 mx -all\"\n\
             @ IN TXT \"v=spf1 a ~all\"\n\
             _dmarc IN TXT \"v=DMARC1; p=none\"\n\
             {published_elsewhere}\n"
        );
        let nomail = "$ORIGIN nomail.test.\n$TTL 300\n\
             @ IN SOA ns root 1 3600 600 86400 60\n\
             @ IN MX 0 .\n\
             @ IN TXT \"v=spf1 -all\"\n\
             _dmarc IN TXT \"v=DMARC1; p=reject\"\n";
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let dns = runtime.block_on(TestDns::start(&[&good, reverse, &broken, nomail]));

        let d = dir.path().display();
        write(
            dir.path(),
            "mta.toml",
            &format!(
                "hostname = \"mx.good.test\"\n\
                 [[listener]]\naddress = \"127.0.0.1:0\"\nmode = \"relay\"\n\
                 [queue]\npath = \"{d}/queue\"\n\
                 [local]\ndomains = [\"good.test\"]\nmaildir = \"{d}/maildir\"\n\
                 [[dkim_key]]\ndomain = \"good.test\"\nselector = \"s1\"\nprivate_key = \"{d}/good.key\"\n\
                 [[dkim_key]]\ndomain = \"broken.test\"\nselector = \"s1\"\nprivate_key = \"{d}/broken.key\"\n"
            ),
        );
        Self {
            runtime,
            dns,
            https_port,
            dir,
            broken_record,
        }
    }

    /// `mta check-dns` with the test's resolver, CA and policy port (and the
    /// configuration when `with_config`), then `extra`: (exit code, stdout, stderr).
    fn check(&self, with_config: bool, extra: &[&str]) -> (Option<i32>, String, String) {
        let ca = self.dir.path().join("ca.pem");
        let resolver = self.dns.addr().to_string();
        let mut args = vec![
            "--resolver",
            &resolver,
            "--mta-sts-ca",
            ca.to_str().unwrap(),
        ];
        args.extend(extra);
        self.check_with(with_config, &args)
    }

    /// `mta check-dns` with the policy port (and the configuration when
    /// `with_config`), then `extra`: (exit code, stdout, stderr).
    fn check_with(&self, with_config: bool, extra: &[&str]) -> (Option<i32>, String, String) {
        let mut command = mta();
        command
            .arg("check-dns")
            .arg("--mta-sts-port")
            .arg(self.https_port.to_string());
        if with_config {
            command
                .arg("--config")
                .arg(self.dir.path().join("mta.toml"));
        }
        let out = command.args(extra).output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

/// `mta dkim-keygen` for `domain`, selector s1, into `dir/file`: the zone line to
/// publish, as it printed it.
fn keygen(dir: &Path, domain: &str, algorithm: &str, file: &str) -> String {
    let out = mta()
        .args(["dkim-keygen", "--domain", domain, "--selector", "s1"])
        .args(["--algorithm", algorithm, "--output"])
        .arg(dir.join(file))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    stdout
        .lines()
        .find(|l| l.contains(" IN TXT "))
        .unwrap_or_else(|| panic!("no record in {stdout}"))
        .to_owned()
}

/// A test CA and a certificate it signed for `name`: (CA, certificate, key) in PEM.
fn pki(name: &str) -> (String, String, String) {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "check-dns test CA");
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let params = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params
        .signed_by(&key, &rcgen::Issuer::new(ca_params, ca_key))
        .unwrap();
    (ca.pem(), cert.pem(), key.serialize_pem())
}

/// An HTTPS server on a free loopback port answering every request with `policy`
/// (as text/plain), for as long as the test runs; its port.
fn serve_policy(cert_pem: &str, key_pem: &str, policy: &str) -> u16 {
    let certs = vec![CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap()];
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = Arc::new(
        rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{policy}",
        policy.len()
    );
    std::thread::spawn(move || {
        for tcp in listener.incoming() {
            let Ok(tcp) = tcp else { continue };
            let connection = rustls::ServerConnection::new(Arc::clone(&config)).unwrap();
            let mut stream = rustls::StreamOwned::new(connection, tcp);
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            let request = String::from_utf8_lossy(&request);
            if request.starts_with("GET /.well-known/mta-sts.txt HTTP/1.1\r\n")
                && request.contains("\r\nHost: mta-sts.good.test\r\n")
            {
                let _ = stream.write_all(response.as_bytes());
            } else {
                let _ = stream.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
            }
            stream.conn.send_close_notify();
            let _ = stream.flush();
        }
    });
    port
}

/// The line of `stdout` for `check` with `status` (the columns are padded).
fn line<'a>(stdout: &'a str, status: &str, check: &str) -> &'a str {
    let start = format!("{status:<4}  {check}  ");
    stdout
        .lines()
        .find(|l| l.starts_with(&start))
        .unwrap_or_else(|| panic!("no line {start:?} in\n{stdout}"))
}

/// Every line of `stdout` for `check` with `status`.
fn lines<'a>(stdout: &'a str, status: &str, check: &str) -> Vec<&'a str> {
    let start = format!("{status:<4}  {check}  ");
    stdout.lines().filter(|l| l.starts_with(&start)).collect()
}

/// Everything right: each check ok, except TLSA, which is reported as not validated.
#[test]
fn a_good_domain_passes() {
    let world = World::start();
    let (code, stdout, stderr) = world.check(true, &["good.test"]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(
        line(&stdout, "ok", "MX").contains("10 mx.good.test → 192.0.2.25"),
        "{stdout}"
    );
    assert!(
        line(&stdout, "ok", "PTR")
            .contains("192.0.2.25 → mx.good.test → 192.0.2.25 (forward-confirmed)"),
        "{stdout}"
    );
    assert!(line(&stdout, "ok", "SPF").contains("\"v=spf1 mx -all\""));
    assert!(
        line(&stdout, "ok", "DKIM s1")
            .contains("s1._domainkey.good.test: k=rsa, p= matches the configured key")
    );
    assert!(line(&stdout, "ok", "DMARC").contains("aggregate reports to mailto:dmarc@good.test"));
    assert!(line(&stdout, "ok", "MTA-STS").contains("v=STSv1; id=20250101"));
    assert!(
        line(&stdout, "ok", "MTA-STS policy")
            .contains("mode enforce, max_age 604800, mx mx.good.test"),
        "{stdout}"
    );
    assert!(line(&stdout, "ok", "TLS-RPT").contains("rua=mailto:tls@good.test"));
    let tlsa = line(&stdout, "warn", "TLSA mx.good.test");
    assert!(
        tlsa.contains("_25._tcp.mx.good.test: 3 1 1 abababab"),
        "{tlsa}"
    );
    assert!(
        tlsa.contains("not validated") && tlsa.contains("fix: "),
        "{tlsa}"
    );
    assert!(line(&stdout, "ok", "BIMI").contains("l=https://good.test/logo.svg"));
    // Nothing else: 10 lines, none failed, the one warning is TLSA's.
    assert_eq!(stdout.lines().count(), 10, "{stdout}");
    assert_eq!(
        stdout.lines().filter(|l| l.starts_with("warn")).count(),
        1,
        "{stdout}"
    );
    assert!(!stdout.lines().any(|l| l.starts_with("fail")), "{stdout}");
}

/// Without a configuration the host name and the selectors are unknown: PTR and DKIM
/// say so (warnings), and the rest is checked from DNS alone.
#[test]
fn without_a_configuration_ptr_and_dkim_are_not_checked() {
    let world = World::start();
    let (code, stdout, stderr) = world.check(false, &["good.test"]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(
        line(&stdout, "warn", "PTR").contains("fix: run with --config"),
        "{stdout}"
    );
    assert!(
        line(&stdout, "warn", "DKIM").contains("fix: run with --config"),
        "{stdout}"
    );
    line(&stdout, "ok", "MTA-STS policy");
}

/// Two SPF records, a DKIM key that is not the configured one, DMARC p=none, an MX
/// without an address: each told with its fix, and the exit code is 1.
#[test]
fn a_broken_domain_fails_with_the_fixes() {
    let world = World::start();
    let (code, stdout, stderr) = world.check(true, &["broken.test"]);
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    let mx = line(&stdout, "fail", "MX");
    assert!(mx.contains("10 mx.broken.test: no A/AAAA record"), "{mx}");
    assert!(
        mx.contains("fix: publish an A (and AAAA) record for mx.broken.test"),
        "{mx}"
    );
    let warned = lines(&stdout, "warn", "MX");
    assert_eq!(warned.len(), 2, "{stdout}");
    assert!(
        warned[0].contains("20 alias.broken.test → 192.0.2.26: alias.broken.test is a CNAME for mx2.broken.test (RFC 2181 §10.3)"),
        "{stdout}"
    );
    assert!(warned[0].contains("fix: point the MX at the canonical name mx2.broken.test"));
    assert!(
        warned[1].contains("30 192.0.2.9: an IP address, not a host name"),
        "{stdout}"
    );
    let spf = line(&stdout, "fail", "SPF");
    assert!(
        spf.contains("2 v=spf1 records (receivers give a permerror"),
        "{spf}"
    );
    assert!(spf.contains("fix: merge them into one"), "{spf}");
    let dkim = line(&stdout, "fail", "DKIM s1");
    assert!(dkim.contains("is not the configured one"), "{dkim}");
    assert!(
        dkim.ends_with(&format!("fix: publish: {}", world.broken_record)),
        "{dkim}\n{}",
        world.broken_record
    );
    let dmarc = line(&stdout, "warn", "DMARC");
    assert!(dmarc.contains("\"v=DMARC1; p=none\""), "{dmarc}");
    assert!(dmarc.contains("fix: p=none only monitors"), "{dmarc}");
    assert!(
        line(&stdout, "warn", "MTA-STS").contains("no v=STSv1 TXT record at _mta-sts.broken.test")
    );
    assert!(line(&stdout, "warn", "TLS-RPT").contains("fix: publish \"v=TLSRPTv1"));
    assert!(line(&stdout, "ok", "BIMI").contains("no BIMI record"));
}

/// `--json`: one array of {check, status, found, fix} and nothing else on stdout.
#[test]
fn json_output_is_one_array() {
    let world = World::start();
    let (code, stdout, stderr) = world.check(true, &["--json", "broken.test"]);
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    let findings: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let findings = findings.as_array().unwrap();
    for finding in findings {
        let object = finding.as_object().unwrap();
        let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["check", "fix", "found", "status"], "{finding}");
        let status = finding["status"].as_str().unwrap();
        assert!(["ok", "warn", "fail"].contains(&status), "{finding}");
        assert_eq!(finding["fix"].is_null(), status == "ok", "{finding}");
    }
    let find = |check: &str| {
        findings
            .iter()
            .find(|f| f["check"] == check)
            .unwrap_or_else(|| panic!("no {check} in {stdout}"))
    };
    assert_eq!(find("SPF")["status"], "fail");
    assert_eq!(find("MX")["status"], "fail");
    assert_eq!(find("DMARC")["status"], "warn");
    assert_eq!(find("PTR")["status"], "ok");
    let dkim = find("DKIM s1");
    assert_eq!(dkim["status"], "fail");
    assert_eq!(
        dkim["fix"].as_str().unwrap(),
        format!("publish: {}", world.broken_record)
    );
}

/// A null MX (RFC 7505) is reported as a domain that receives no mail, and there is
/// no MX host to look for TLSA records at.
#[test]
fn a_null_mx_receives_no_mail() {
    let world = World::start();
    let (code, stdout, stderr) = world.check(false, &["nomail.test"]);
    // No DMARC problem, no SPF problem: nothing fails.
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(line(&stdout, "ok", "MX").contains("null MX (RFC 7505): the domain receives no mail"));
    assert!(!stdout.contains("TLSA"), "{stdout}");
}

/// A domain that does not exist fails at MX; a bad domain name is refused (exit 2).
#[test]
fn a_missing_domain_fails_and_a_bad_name_is_refused() {
    let world = World::start();
    let (code, stdout, stderr) = world.check(false, &["absent.good.test"]);
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert!(line(&stdout, "fail", "MX").contains("absent.good.test does not exist (NXDOMAIN)"));
    let (code, stdout, stderr) = world.check(false, &["not a domain"]);
    assert_eq!(code, Some(2), "{stdout}{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    assert!(stderr.contains("is not a domain name"), "{stderr}");
}

/// The policy server's certificate must verify: without the test CA it does not, and
/// the policy check fails with the reason.
#[test]
fn an_untrusted_policy_certificate_fails() {
    let world = World::start();
    let resolver = world.dns.addr().to_string();
    let (code, stdout, stderr) = world.check_with(false, &["--resolver", &resolver, "good.test"]);
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    let policy = line(&stdout, "fail", "MTA-STS policy");
    assert!(
        policy.contains("https://mta-sts.good.test/.well-known/mta-sts.txt: "),
        "{policy}"
    );
    // The reason is rustls's: the certificate's issuer is unknown.
    let (found, _fix) = policy.split_once("  fix: ").unwrap();
    assert!(found.contains("UnknownIssuer"), "{policy}");
    assert!(
        policy.contains("fix: serve the policy at https://mta-sts.good.test/.well-known/mta-sts.txt with a certificate for mta-sts.good.test"),
        "{policy}"
    );
}

/// A nameserver that never answers: every check ends as a warning ("no answer
/// within 1s"), none fails, and the command ends.
#[test]
fn a_silent_nameserver_gives_warnings() {
    let world = World::start();
    let (silent, _socket) = world.runtime.block_on(dns_mx::testing::silent_nameserver());
    let resolver = silent.to_string();
    let (code, stdout, stderr) = world.check_with(
        true,
        &["--resolver", &resolver, "--timeout", "1s", "good.test"],
    );
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    for check in ["MX", "PTR", "SPF", "DMARC", "MTA-STS", "TLS-RPT", "BIMI"] {
        assert!(
            line(&stdout, "warn", check).contains("no answer within 1s"),
            "{check}: {stdout}"
        );
    }
    assert!(
        line(&stdout, "warn", "DKIM s1").contains("no answer within 1s"),
        "{stdout}"
    );
    assert!(!stdout.contains("fail"), "{stdout}");
}
