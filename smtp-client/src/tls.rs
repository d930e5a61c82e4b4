//! TLS for outbound SMTP: the policies and the two rustls configurations they use.

use std::sync::Arc;

use rustls::client::danger::{ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, aws_lc_rs};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::ClientError;

/// When to use STARTTLS towards a server.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TlsPolicy {
    /// Use STARTTLS when offered, accept any certificate, and fall back to plaintext
    /// only when the handshake itself fails (before any mail data). The default for
    /// MX delivery, as in Postfix's `may`.
    #[default]
    Opportunistic,
    /// STARTTLS is mandatory and the certificate must chain to a trusted root and name
    /// the host; otherwise the delivery is deferred, never sent in plaintext.
    Required,
    /// Never STARTTLS.
    Disabled,
}

impl std::str::FromStr for TlsPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "opportunistic" => Ok(Self::Opportunistic),
            "required" => Ok(Self::Required),
            "disabled" => Ok(Self::Disabled),
            other => Err(format!(
                "unknown TLS policy {other:?} (opportunistic, required or disabled)"
            )),
        }
    }
}

/// The two client configurations: one that verifies, one for opportunistic TLS.
#[derive(Clone, Debug)]
pub struct TlsConfigs {
    /// Verifies the chain against the system's roots (and `extra_roots`) and the name,
    /// or accepts a certificate that is one of `extra_roots` itself (a pinned
    /// self-signed certificate). Used for `Required` and whenever a login is sent.
    pub verified: Arc<rustls::ClientConfig>,
    /// Accepts any certificate (signatures are still checked): encryption against
    /// passive eavesdropping, the best an unauthenticated MX can offer.
    pub dangerous_unverified: Arc<rustls::ClientConfig>,
}

impl TlsConfigs {
    /// Both configurations; `extra_roots` are trusted besides the system's (a private
    /// CA, or a test CA), and each of them is also accepted as the server's own
    /// certificate (pinned: a self-signed certificate works by being listed). TLS 1.2
    /// and 1.3 only.
    pub fn new(extra_roots: Vec<CertificateDer<'static>>) -> Result<Self, ClientError> {
        let provider = Arc::new(aws_lc_rs::default_provider());
        let platform = rustls_platform_verifier::Verifier::new_with_extra_roots(
            extra_roots.clone(),
            Arc::clone(&provider),
        )
        .map_err(|e| ClientError::tls_from("cannot load the trusted roots", e))?;
        Self::build(provider, Some(Arc::new(platform)), extra_roots)
    }

    /// Both configurations, trusting `roots` alone (not the system's): a private CA,
    /// or servers' own certificates, each also accepted as it is (pinned). With none,
    /// no certificate verifies. Reads nothing from the system.
    pub fn with_roots(roots: Vec<CertificateDer<'static>>) -> Result<Self, ClientError> {
        let provider = Arc::new(aws_lc_rs::default_provider());
        let mut store = rustls::RootCertStore::empty();
        // A certificate that cannot be an anchor can still be pinned.
        let _ = store.add_parsable_certificates(roots.iter().cloned());
        let webpki: Option<Arc<dyn ServerCertVerifier>> = if store.is_empty() {
            None
        } else {
            let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
                Arc::new(store),
                Arc::clone(&provider),
            )
            .build()
            .map_err(|e| ClientError::tls_from("cannot use the trusted roots", e))?;
            Some(verifier)
        };
        Self::build(provider, webpki, roots)
    }

    fn build(
        provider: Arc<CryptoProvider>,
        verifier: Option<Arc<dyn ServerCertVerifier>>,
        pins: Vec<CertificateDer<'static>>,
    ) -> Result<Self, ClientError> {
        let config = |check: CertificateCheck| {
            rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
                .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
                .map_err(|e| ClientError::tls_from("cannot configure TLS", e))
                .map(|builder| {
                    builder
                        .dangerous()
                        .with_custom_certificate_verifier(Arc::new(check))
                        .with_no_client_auth()
                })
        };
        let verified = config(CertificateCheck {
            any: false,
            pins,
            verifier,
            provider: Arc::clone(&provider),
        })?;
        let unverified = config(CertificateCheck {
            any: true,
            pins: Vec::new(),
            verifier: None,
            provider: Arc::clone(&provider),
        })?;
        Ok(Self {
            verified: Arc::new(verified),
            dangerous_unverified: Arc::new(unverified),
        })
    }
}

/// How a server's certificate is judged. The handshake signatures are checked with the
/// provider's algorithms whatever the verdict on the certificate.
#[derive(Debug)]
struct CertificateCheck {
    /// Any certificate is accepted (opportunistic TLS).
    any: bool,
    /// Certificates the operator listed, accepted byte for byte (pinned).
    pins: Vec<CertificateDer<'static>>,
    /// What judges the others (none: no other is accepted).
    verifier: Option<Arc<dyn ServerCertVerifier>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for CertificateCheck {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let pinned = self.pins.iter().any(|p| p.as_ref() == end_entity.as_ref());
        match &self.verifier {
            _ if self.any || pinned => Ok(ServerCertVerified::assertion()),
            Some(verifier) => {
                verifier.verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
            }
            None => Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer,
            )),
        }
    }

    handshake_signatures_by_provider!();
}
