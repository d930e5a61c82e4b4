//! Shared support for the cross-crate integration tests in `tests/tests/`: a whole MTA
//! started in-process on port 0 with a real TLS certificate made by rcgen, and a raw
//! SMTP client that speaks plain TCP, STARTTLS or implicit TLS.

#![forbid(unsafe_code)]
// Test support: panicking is how a failed expectation reports itself.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::missing_panics_doc)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mta_bin::config::Config;
use mta_bin::serve::Mta;
pub use smtp_client::testing::{RawClient, code_of, tool};
use smtp_server::ListenerMode;
use tokio::io::AsyncWriteExt;

/// The name the test certificate is checked for.
pub const PKI_NAME: &str = "mx.example.test";

/// A test certificate authority and a server certificate it signed.
#[derive(Debug)]
pub struct TestPki {
    /// The CA certificate, for clients to trust.
    pub ca_pem: String,
    /// The server certificate chain (PEM).
    pub cert_pem: String,
    /// The server key (PEM).
    pub key_pem: String,
}

impl TestPki {
    /// A CA and a certificate for `mx.example.test`, `localhost`, `up.remote.test` and
    /// 127.0.0.1.
    pub fn new() -> Self {
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "mta test CA");
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let names = ["mx.example.test", "localhost", "up.remote.test"]
            .map(String::from)
            .to_vec();
        let mut params = rcgen::CertificateParams::new(names).unwrap();
        params
            .subject_alt_names
            .push(rcgen::SanType::IpAddress("127.0.0.1".parse().unwrap()));
        let key = rcgen::KeyPair::generate().unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let cert = params.signed_by(&key, &issuer).unwrap();
        Self {
            ca_pem: ca.pem(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// A self-signed certificate for `name` alone, marked as a CA the way `openssl req
    /// -x509` makes one; `ca_pem` is the certificate itself (what a client pins).
    pub fn self_signed(name: &str) -> Self {
        let mut params = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Self {
            ca_pem: cert.pem(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// A rustls client configuration that trusts only this CA.
    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        use rustls_pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pki_types::CertificateDer::pem_slice_iter(self.ca_pem.as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        Arc::new(config)
    }
}

impl Default for TestPki {
    fn default() -> Self {
        Self::new()
    }
}

/// The local domain of test MTAs.
pub const DOMAIN: &str = "example.test";

/// How to set up a [`TestMta`].
#[derive(Clone, Copy, Debug)]
pub struct Options<'a> {
    /// The local domain.
    pub domain: &'a str,
    /// More local domains (or address literals, `[127.0.0.1]`).
    pub more_domains: &'a [&'a str],
    /// The host name.
    pub hostname: &'a str,
    /// Lines for the `[local]` section.
    pub local: &'a str,
    /// Lines for the `[queue]` section.
    pub queue: &'a str,
    /// Where the queue is (default: `queue` in the test's directory).
    pub queue_path: Option<&'a Path>,
    /// More TOML sections at the end.
    pub extra: &'a str,
    /// A certificate (STARTTLS, smtps); `false` for a plaintext-only server.
    pub tls: bool,
    /// The relay listener's port (0: any free port).
    pub relay_port: u16,
    /// The certificate (default: a new [`TestPki`]).
    pub pki: Option<&'a Arc<TestPki>>,
}

impl Default for Options<'_> {
    fn default() -> Self {
        Self {
            domain: DOMAIN,
            more_domains: &[],
            hostname: "mx.example.test",
            local: "",
            queue: "",
            queue_path: None,
            extra: "",
            tls: true,
            relay_port: 0,
            pki: None,
        }
    }
}

/// A whole MTA running in this process, with its files in a temporary directory.
pub struct TestMta {
    /// The running MTA.
    pub mta: Option<Mta>,
    /// The temporary directory (config, queue, maildir, certificate).
    pub dir: tempfile::TempDir,
    /// The certificate authority clients should trust.
    pub pki: Arc<TestPki>,
    /// The local domain.
    pub domain: String,
    /// The DNS server the MTA asks, when the test gave none in `[dns]`: authoritative
    /// for `test.` with no records, so every `.test` name is NXDOMAIN (SPF `none`).
    pub dns: Option<dns_mx::testing::TestDns>,
}

/// The zone of the default test DNS server: `test.` with no records in it.
pub const EMPTY_TEST_ZONE: &str = "$ORIGIN test.\n@ 3600 IN SOA ns root 1 3600 600 86400 60\n";

impl TestMta {
    /// Starts an MTA with relay, submission and smtps listeners on port 0, local domain
    /// `example.test` delivered to Maildir, and the login `alice@example.test` /
    /// `secret`. `extra` is TOML appended to the configuration (use it for `[limits]`).
    pub async fn start(extra: &str) -> Self {
        Self::start_opts(Options {
            extra,
            ..Options::default()
        })
        .await
    }

    /// [`TestMta::start`] with more keys in the `[local]` section (`local`), such as
    /// `lmtp = "127.0.0.1:24"`.
    pub async fn start_with(local: &str, extra: &str) -> Self {
        Self::start_opts(Options {
            local,
            extra,
            ..Options::default()
        })
        .await
    }

    /// An MTA as [`Options`] say.
    pub async fn start_opts(o: Options<'_>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let pki = o.pki.map_or_else(|| Arc::new(TestPki::new()), Arc::clone);
        std::fs::write(dir.path().join("cert.pem"), &pki.cert_pem).unwrap();
        std::fs::write(dir.path().join("key.pem"), &pki.key_pem).unwrap();
        std::fs::write(dir.path().join("ca.pem"), &pki.ca_pem).unwrap();
        let d = dir.path().display();
        let queue_path = o
            .queue_path
            .map_or_else(|| dir.path().join("queue"), Path::to_owned);
        let queue_path = queue_path.display();
        let more_domains: String = o
            .more_domains
            .iter()
            .map(|d| format!(", \"{d}\""))
            .collect();
        let (domain, hostname, local, queue, extra, relay_port) = (
            o.domain,
            o.hostname,
            o.local,
            o.queue,
            o.extra,
            o.relay_port,
        );
        let (dns, dns_section) = if o.extra.contains("[dns]") {
            (None, String::new())
        } else {
            let dns = dns_mx::testing::TestDns::start(&[EMPTY_TEST_ZONE]).await;
            let section = format!("[dns]\nnameservers = [\"{}\"]\n", dns.addr());
            (Some(dns), section)
        };
        // The name of 127.0.0.1 comes from the hosts file, which may give several: off
        // unless the test asks for it, so that `Received:` is the same on every machine.
        let rdns = if o.extra.contains("[reverse_dns]") {
            ""
        } else {
            "[reverse_dns]\nmode = \"off\"\n"
        };
        let tls = if o.tls {
            format!(
                "[[listener]]\naddress = \"127.0.0.1:0\"\nmode = \"smtps\"\n[tls]\ncertificate = \"{d}/cert.pem\"\nprivate_key = \"{d}/key.pem\"\n"
            )
        } else {
            String::new()
        };
        let text = format!(
            r#"
hostname = "{hostname}"
[[listener]]
address = "127.0.0.1:{relay_port}"
mode = "relay"
[[listener]]
address = "127.0.0.1:0"
mode = "submission"
{tls}
[queue]
path = "{queue_path}"
retry_intervals = ["1s"]
{queue}
[local]
domains = ["{domain}"{more_domains}]
maildir = "{d}/maildir"
mailboxes = ["bob@{domain}", "carol@{domain}", "孫子@{domain}"]
{local}
[[account]]
username = "alice@{domain}"
password = "secret"
{dns_section}
{rdns}
{extra}
"#
        );
        let config = Config::parse(&text).unwrap();
        let mta = Mta::start(config).await.unwrap();
        Self {
            mta: Some(mta),
            dir,
            pki,
            domain: domain.to_owned(),
            dns,
        }
    }

    /// The address of a listener.
    pub fn addr(&self, mode: ListenerMode) -> SocketAddr {
        self.mta
            .as_ref()
            .and_then(|m| m.addr(mode))
            .expect("listener")
    }

    /// The Maildir `new/` folder of a local user.
    pub fn new_dir(&self, user: &str) -> PathBuf {
        self.dir
            .path()
            .join("maildir")
            .join(&self.domain)
            .join(user.to_lowercase())
            .join("new")
    }

    /// Waits until `user` has `count` messages in `new/` (10 s at most); returns them.
    pub async fn wait_for_mail(&self, user: &str, count: usize) -> Vec<Vec<u8>> {
        let dir = self.new_dir(user);
        let start = Instant::now();
        loop {
            let files = read_dir_files(&dir);
            if files.len() >= count || start.elapsed() > Duration::from_secs(10) {
                return files;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A plain connection to a listener, past the greeting.
    pub async fn connect(&self, mode: ListenerMode) -> RawClient {
        RawClient::connect(self.addr(mode)).await
    }

    /// An implicit-TLS connection to the smtps listener, past the greeting.
    pub async fn connect_smtps(&self) -> RawClient {
        RawClient::connect_tls(
            self.addr(ListenerMode::Smtps),
            self.pki.client_config(),
            PKI_NAME,
        )
        .await
    }

    /// STARTTLS on `client`, trusting this MTA's certificate.
    pub async fn starttls(&self, client: RawClient) -> RawClient {
        client.starttls(self.pki.client_config(), PKI_NAME).await
    }

    /// Stops the MTA gracefully.
    pub async fn stop(&mut self) {
        if let Some(mta) = self.mta.take() {
            mta.stop().await;
        }
    }
}

/// The contents of every file in a directory, sorted by name.
pub fn read_dir_files(dir: &Path) -> Vec<Vec<u8>> {
    let mut names: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries.filter_map(|e| e.ok().map(|e| e.path())).collect(),
        Err(_) => return Vec::new(),
    };
    names.sort();
    names.iter().filter_map(|p| std::fs::read(p).ok()).collect()
}

/// Runs `command` with `input` on its stdin; what it wrote and how it ended.
pub async fn run_with_input(
    command: &mut tokio::process::Command,
    input: &[u8],
) -> std::process::Output {
    let mut child = command
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input).await.unwrap();
    drop(stdin);
    child.wait_with_output().await.unwrap()
}
