//! TLS server configuration: rustls with the aws-lc-rs provider, TLS 1.2 and 1.3 only.

use std::path::Path;
use std::sync::Arc;

use rustls::crypto::aws_lc_rs;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::ServerError;

/// Builds a TLS configuration from a PEM certificate chain and a PEM private key.
pub fn load_pem_files(
    certificate: &Path,
    private_key: &Path,
) -> Result<Arc<rustls::ServerConfig>, ServerError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(certificate)
        .and_then(Iterator::collect)
        .map_err(|e| {
            let message = format!("cannot read certificate {}", certificate.display());
            ServerError::tls(message, Some(e.into()))
        })?;
    if chain.is_empty() {
        let message = format!("no certificate in {}", certificate.display());
        return Err(ServerError::tls(message, None));
    }
    let key = PrivateKeyDer::from_pem_file(private_key).map_err(|e| {
        let message = format!("cannot read private key {}", private_key.display());
        ServerError::tls(message, Some(e.into()))
    })?;
    from_der(chain, key)
}

/// Builds a TLS configuration from DER certificates and key (certificates made in
/// memory, for example). The server picks the cipher suite by its own order (AES-GCM,
/// then ChaCha20-Poly1305, all AEAD), not the client's.
pub fn from_der(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<rustls::ServerConfig>, ServerError> {
    let mut config =
        rustls::ServerConfig::builder_with_provider(Arc::new(aws_lc_rs::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| ServerError::tls("cannot configure TLS", Some(e.into())))?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| {
                let message = "certificate and key do not match or are invalid";
                ServerError::tls(message, Some(e.into()))
            })?;
    config.ignore_client_order = true;
    Ok(Arc::new(config))
}
