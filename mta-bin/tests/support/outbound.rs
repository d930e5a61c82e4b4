//! What the outbound tests (MTA-STS, DANE, REQUIRETLS, TLS-RPT) share: a test CA, a
//! running `mta` stopped with the test, the queue's view of a deferred recipient.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::{free_address, queue_cmd, serve, terminate, write};

/// A test CA: its certificate (PEM) and what signs with it.
pub(crate) struct Ca {
    pub(crate) pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl Ca {
    pub(crate) fn new(name: &str) -> Self {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Self {
            pem: cert.pem(),
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// A certificate for `names`: (certificate, key) in PEM.
    pub(crate) fn certify(&self, names: &[&str]) -> (String, String) {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let params = rcgen::CertificateParams::new(names).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// A rustls server configuration with a certificate for `name`.
    pub(crate) fn server_config(&self, name: &str) -> Arc<rustls::ServerConfig> {
        let (cert_pem, key_pem) = self.certify(&[name]);
        let certs = vec![CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap()];
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        Arc::new(
            rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(certs, key)
                .unwrap(),
        )
    }
}

/// A running `mta serve`, killed if a failed assertion unwinds past it.
pub(crate) struct Running(pub(crate) Option<std::process::Child>);

impl Running {
    /// Stops it as an operator would (SIGTERM, then waits).
    pub(crate) fn stop(mut self) {
        if let Some(child) = self.0.take() {
            terminate(child);
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A policy in `mode` for the MX pattern `mx`.
pub(crate) fn policy(mode: &str, mx: &str) -> String {
    format!("version: STSv1\r\nmode: {mode}\r\nmx: {mx}\r\nmax_age: 86400\r\n")
}

/// `mta queue list` once the message to `to` has been tried and waits (deferred):
/// the listing, with the reply the recipient waits with.
pub(crate) fn deferred(config: &Path, to: &str) -> String {
    let start = std::time::Instant::now();
    loop {
        let (code, text, err) = queue_cmd(config, &["list"]);
        assert_eq!(code, 0, "{text}{err}");
        if text
            .lines()
            .any(|l| l.contains(to) && l.trim_start().starts_with("pending") && l.contains('('))
        {
            return text;
        }
        assert!(start.elapsed().as_secs() < 30, "{to} not deferred: {text}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// An MTA-STS policy server (`mta-sts.<domain>` over HTTPS): serves the policy it is given (none: every
/// connection is closed at once, as a server that is down), counting connections.
pub(crate) struct PolicyServer {
    pub(crate) port: u16,
    policy: Arc<Mutex<Option<String>>>,
    connections: Arc<AtomicUsize>,
}

impl PolicyServer {
    /// The HTTPS server of `mta-sts.<domain>`, with a certificate from `ca`.
    pub(crate) fn start(ca: &Ca, domain: &str, policy: &str) -> Self {
        let host = format!("mta-sts.{domain}");
        let config = ca.server_config(&host);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let served = Arc::new(Mutex::new(Some(policy.to_owned())));
        let connections = Arc::new(AtomicUsize::new(0));
        let (state, count) = (Arc::clone(&served), Arc::clone(&connections));
        std::thread::spawn(move || {
            for tcp in listener.incoming() {
                let Ok(tcp) = tcp else { continue };
                count.fetch_add(1, Ordering::SeqCst);
                let Some(policy) = state.lock().unwrap().clone() else {
                    drop(tcp);
                    continue;
                };
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
                let response = if request.starts_with("GET /.well-known/mta-sts.txt HTTP/1.1\r\n")
                    && request.contains(&format!("\r\nHost: {host}\r\n"))
                {
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{policy}",
                        policy.len()
                    )
                } else {
                    "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_owned()
                };
                let _ = stream.write_all(response.as_bytes());
                stream.conn.send_close_notify();
                let _ = stream.flush();
            }
        });
        Self {
            port,
            policy: served,
            connections,
        }
    }

    /// Serves `policy` from now on (`None`: down).
    pub(crate) fn set(&self, policy: Option<&str>) {
        *self.policy.lock().unwrap() = policy.map(str::to_owned);
    }

    pub(crate) fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

/// The MX host: an `mta` for sts.test (any user) on 127.0.0.2 with STARTTLS and a
/// certificate for `names` from `ca`. Returns it and its port.
pub(crate) fn mx_host(dir: &Path, ca: &Ca, names: &[&str]) -> (Running, u16) {
    std::fs::create_dir_all(dir).unwrap();
    let (cert, key) = ca.certify(names);
    write(dir, "cert.pem", &cert);
    write(dir, "key.pem", &key);
    let d = dir.display();
    let config = write(
        dir,
        "mx.toml",
        &format!(
            r#"hostname = "mx.sts.test"
[[listener]]
address = "127.0.0.2:0"
mode = "relay"
[queue]
path = "{d}/queue"
[local]
domains = ["sts.test"]
maildir = "{d}/maildir"
accept_any_user = true
[tls]
certificate = "{d}/cert.pem"
private_key = "{d}/key.pem"
[dns]
nameservers = ["{dns}"]
[auth_checks]
spf = "off"
dkim = "off"
dmarc = "off"
arc = "off"
[reverse_dns]
mode = "off"
[tls_reports]
enabled = false
"#,
            dns = free_address(),
        ),
    );
    let (child, addr) = serve(&config);
    let port = addr.rsplit_once(':').unwrap().1.parse().unwrap();
    (Running(Some(child)), port)
}

/// The configuration of a sending `mta`, written to `dir/mta.toml`: a relay listener
/// trusting 127.0.0.0/8, the local domain `sender.test` (mailbox `me@sender.test`), its
/// queue and Maildir in `dir`, DNS from `nameserver` (none: the system's), sender checks
/// and reverse DNS off, then `[outbound]` with `outbound` (which may go on with other
/// sections).
pub(crate) fn sender_config(
    dir: &Path,
    nameserver: Option<&dyn std::fmt::Display>,
    outbound: &str,
) -> std::path::PathBuf {
    sender_config_for(dir, nameserver, &["me@sender.test"], outbound)
}

/// [`sender_config`] with other local mailboxes than `me@sender.test`.
pub(crate) fn sender_config_for(
    dir: &Path,
    nameserver: Option<&dyn std::fmt::Display>,
    mailboxes: &[&str],
    outbound: &str,
) -> std::path::PathBuf {
    let d = dir.display();
    let mailboxes = mailboxes
        .iter()
        .map(|m| format!("\"{m}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let dns = nameserver.map_or(String::new(), |ns| {
        format!("[dns]\nnameservers = [\"{ns}\"]\n")
    });
    write(
        dir,
        "mta.toml",
        &format!(
            r#"hostname = "sender.test"
[[listener]]
address = "127.0.0.1:0"
mode = "relay"
[queue]
path = "{d}/queue"
retry_intervals = ["1h"]
[local]
domains = ["sender.test"]
maildir = "{d}/maildir"
mailboxes = [{mailboxes}]
[relay]
trusted_networks = ["127.0.0.0/8"]
{dns}[auth_checks]
spf = "off"
dkim = "off"
dmarc = "off"
arc = "off"
[reverse_dns]
mode = "off"
[outbound]
{outbound}"#
        ),
    )
}
