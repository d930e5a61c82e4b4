//! What the outbound tests (MTA-STS, DANE, REQUIRETLS, TLS-RPT) share: a test CA, a
//! running `mta` stopped with the test, the queue's view of a deferred recipient.

use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::{queue_cmd, terminate};

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
