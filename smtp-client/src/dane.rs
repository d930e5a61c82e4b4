//! DANE for SMTP (RFC 7672): a server authenticated by the TLSA records of its MX host
//! name, obtained securely from DNSSEC, instead of by a public CA.
//!
//! ```text
//!  secure TLSA RRset ─▶ DaneTls::new(records, [mx host, domain])
//!      ─▶ OutboundConfig::dane ─▶ STARTTLS mandatory, SNI = MX host
//!      ─▶ DaneVerifier: DANE-EE(3) matches the leaf      ─▶ accepted (no name, no dates)
//!                       DANE-TA(2) matches a chain cert   ─▶ chain verified to it, and the
//!                                                            leaf names a reference name
//!                       nothing matches                   ─▶ handshake fails: 451 4.7.5
//! ```
//!
//! Only DANE-TA(2) and DANE-EE(3) are used for SMTP (RFC 7672 §3.1.3): PKIX-TA(0) and
//! PKIX-EE(1) records, unknown selectors or matching types, and digests of the wrong
//! length are "unusable" and ignored. When every record is unusable, TLS stays
//! mandatory but is not authenticated (RFC 7672 §2.2, as Postfix's `dane` level
//! falls back to `encrypt`): an attacker who could strip STARTTLS still cannot, since
//! the records proved the server does TLS.
//!
//! Supported: selectors 0 (full certificate) and 1 (SubjectPublicKeyInfo), matching
//! types 0 (exact), 1 (SHA-256) and 2 (SHA-512) (RFC 6698 §2.1, RFC 7671). A DANE-TA
//! record must match a certificate the server presents, or be a full certificate
//! itself (`2 0 0`); a bare public key as trust anchor (`2 1 0` not in the chain) is
//! not supported.

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, aws_lc_rs};
use rustls::server::ParsedCertificate;
use rustls::{CertificateError, OtherError};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use sha2::{Digest, Sha256, Sha512};

use crate::ClientError;

/// A TLSA record (RFC 6698 §2.1) as DNS gave it: which certificate or key the server
/// must present.
///
/// ```
/// use smtp_client::Tlsa;
/// let record = Tlsa::new(3, 1, 1, vec![0; 32]); // DANE-EE, SPKI, SHA-256
/// assert!(record.is_usable());
/// assert!(!Tlsa::new(1, 1, 1, vec![0; 32]).is_usable()); // PKIX-EE: not for SMTP
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Tlsa {
    /// Certificate usage: 0 PKIX-TA, 1 PKIX-EE, 2 DANE-TA, 3 DANE-EE.
    pub usage: u8,
    /// Selector: 0 the full certificate, 1 its SubjectPublicKeyInfo.
    pub selector: u8,
    /// Matching type: 0 the data itself, 1 SHA-256, 2 SHA-512.
    pub matching: u8,
    /// The certificate association data.
    pub data: Vec<u8>,
}

impl Tlsa {
    /// DANE-TA: a trust anchor (a CA certificate or key) of the server's chain.
    pub const DANE_TA: u8 = 2;
    /// DANE-EE: the server's own certificate or key.
    pub const DANE_EE: u8 = 3;

    /// A record from its four fields.
    pub fn new(usage: u8, selector: u8, matching: u8, data: Vec<u8>) -> Self {
        Self {
            usage,
            selector,
            matching,
            data,
        }
    }

    /// Whether SMTP may use this record (RFC 7672 §3.1): DANE-TA or DANE-EE, a known
    /// selector and matching type, and data of the digest's length.
    pub fn is_usable(&self) -> bool {
        let usage = matches!(self.usage, Self::DANE_TA | Self::DANE_EE);
        let selector = matches!(self.selector, 0 | 1);
        let data = match self.matching {
            0 => !self.data.is_empty(),
            1 => self.data.len() == 32,
            2 => self.data.len() == 64,
            _ => false,
        };
        usage && selector && data
    }

    /// Whether `certificate` matches the record's selector and matching type (the
    /// usage is not considered). A certificate that does not parse matches nothing.
    pub fn matches(&self, certificate: &CertificateDer<'_>) -> bool {
        let spki;
        let selected: &[u8] = match self.selector {
            0 => certificate.as_ref(),
            1 => match ParsedCertificate::try_from(certificate) {
                Ok(parsed) => {
                    spki = parsed.subject_public_key_info();
                    spki.as_ref()
                }
                Err(_) => return false,
            },
            _ => return false,
        };
        match self.matching {
            0 => selected == self.data.as_slice(),
            1 => Sha256::digest(selected).as_slice() == self.data.as_slice(),
            2 => Sha512::digest(selected).as_slice() == self.data.as_slice(),
            _ => false,
        }
    }
}

/// The TLS settings of one DANE-protected host: the TLS client configuration whose
/// verifier checks the TLSA records. Put it in
/// [`OutboundConfig::dane`](crate::OutboundConfig::dane): STARTTLS then becomes
/// mandatory (a server that does not offer it, or fails the check, is deferred with
/// `451 4.7.5`), whatever [`TlsPolicy`](crate::TlsPolicy) says.
///
/// ```
/// use smtp_client::{DaneTls, Tlsa};
/// let dane = DaneTls::new(
///     vec![Tlsa::new(3, 1, 1, vec![0; 32])],
///     &["mx.example.org", "example.org"],
/// )
/// .unwrap();
/// assert!(dane.is_authenticated());
/// ```
#[derive(Clone, Debug)]
pub struct DaneTls {
    config: Arc<rustls::ClientConfig>,
    authenticated: bool,
}

impl DaneTls {
    /// The settings for a server whose secure TLSA RRset is `records`.
    /// `reference_names` are the names a DANE-TA-verified certificate may carry (RFC
    /// 7672 §3.2.2): the MX host name (after CNAME expansion, then before), then the
    /// destination domain; names that are not valid DNS names are ignored. DANE-EE
    /// checks no name.
    pub fn new(records: Vec<Tlsa>, reference_names: &[&str]) -> Result<Self, ClientError> {
        let provider = Arc::new(aws_lc_rs::default_provider());
        let (usable, _unusable): (Vec<Tlsa>, Vec<Tlsa>) =
            records.into_iter().partition(Tlsa::is_usable);
        let authenticated = !usable.is_empty();
        let names = reference_names
            .iter()
            .filter_map(|n| ServerName::try_from(n.trim_end_matches('.').to_owned()).ok())
            .collect();
        let verifier = DaneVerifier {
            records: usable,
            names,
            provider: Arc::clone(&provider),
        };
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| ClientError::tls_from("cannot configure TLS", e))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        Ok(Self {
            config: Arc::new(config),
            authenticated,
        })
    }

    /// Whether some record is usable, so that the server is authenticated by them;
    /// `false`: TLS is mandatory but any certificate is accepted (all records were
    /// unusable, RFC 7672 §2.2).
    pub fn is_authenticated(&self) -> bool {
        self.authenticated
    }

    /// The TLS client configuration that checks the records.
    pub fn client_config(&self) -> &Arc<rustls::ClientConfig> {
        &self.config
    }
}

/// Why a server's certificate was refused, said for the operator.
#[derive(Debug, thiserror::Error)]
#[error("DANE: {0}")]
struct DaneMismatch(String);

/// Judges a server's chain by TLSA records (RFC 7672 §3.1, RFC 7671 §5). With no
/// usable records, any certificate is accepted (mandatory unauthenticated TLS). The
/// handshake signatures are checked whatever the verdict.
#[derive(Debug)]
struct DaneVerifier {
    /// The usable records.
    records: Vec<Tlsa>,
    /// The reference identifiers for DANE-TA.
    names: Vec<ServerName<'static>>,
    provider: Arc<CryptoProvider>,
}

impl DaneVerifier {
    fn refuse(message: String) -> rustls::Error {
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(
            DaneMismatch(message),
        ))))
    }

    /// DANE-TA: a trust anchor from the records (presented in the chain, or a full
    /// certificate in the record), then the chain verified by webpki with that anchor
    /// as the only root, for one of the reference names.
    fn verify_by_anchor(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let anchors: Vec<CertificateDer<'static>> = self
            .records
            .iter()
            .filter(|r| r.usage == Tlsa::DANE_TA)
            .flat_map(|r| {
                let presented = intermediates
                    .iter()
                    .filter(|c| r.matches(c))
                    .map(|c| c.clone().into_owned());
                let full = (r.selector == 0 && r.matching == 0)
                    .then(|| CertificateDer::from(r.data.clone()));
                presented.chain(full).collect::<Vec<_>>()
            })
            .collect();
        if anchors.is_empty() {
            return Err(Self::refuse(
                "no TLSA record matches the server's certificate or chain".into(),
            ));
        }
        if self.names.is_empty() {
            return Err(Self::refuse(
                "no reference name to check the certificate for".into(),
            ));
        }
        let mut last = None;
        for anchor in anchors {
            let mut roots = rustls::RootCertStore::empty();
            if let Err(e) = roots.add(anchor) {
                last = Some(e);
                continue;
            }
            let verifier = WebPkiServerVerifier::builder_with_provider(
                Arc::new(roots),
                Arc::clone(&self.provider),
            )
            .build()
            .map_err(|e| rustls::Error::General(format!("DANE trust anchor: {e}")))?;
            for name in &self.names {
                match verifier.verify_server_cert(end_entity, intermediates, name, ocsp, now) {
                    Ok(verified) => return Ok(verified),
                    Err(e) => last = Some(e),
                }
            }
        }
        let why = last.map_or_else(|| "no usable trust anchor".to_owned(), |e| e.to_string());
        Err(Self::refuse(format!(
            "a DANE-TA record matches, but the chain does not verify to it for {}: {why}",
            self.names
                .iter()
                .map(|n| n.to_str().into_owned())
                .collect::<Vec<_>>()
                .join(" or ")
        )))
    }
}

impl ServerCertVerifier for DaneVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self.records.is_empty() {
            return Ok(ServerCertVerified::assertion());
        }
        // DANE-EE: the key (or certificate) is the server's; no name or date checks
        // (RFC 7672 §3.1.1).
        let end_entity_matches = self
            .records
            .iter()
            .any(|r| r.usage == Tlsa::DANE_EE && r.matches(end_entity));
        if end_entity_matches {
            return Ok(ServerCertVerified::assertion());
        }
        if !self.records.iter().any(|r| r.usage == Tlsa::DANE_TA) {
            return Err(Self::refuse(
                "no DANE-EE TLSA record matches the server's certificate".into(),
            ));
        }
        self.verify_by_anchor(end_entity, intermediates, ocsp, now)
    }

    handshake_signatures_by_provider!();
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    /// A CA, a leaf it issued for `mx.example.test`, and an unrelated self-signed
    /// certificate, all made now.
    struct Pki {
        ca: CertificateDer<'static>,
        leaf: CertificateDer<'static>,
        other: CertificateDer<'static>,
    }

    fn pki() -> Pki {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["mx.example.test".to_owned()])
            .unwrap()
            .signed_by(&leaf_key, &issuer)
            .unwrap();
        let other = rcgen::generate_simple_self_signed(vec!["mx.example.test".to_owned()])
            .unwrap()
            .cert;
        Pki {
            ca: ca.der().clone(),
            leaf: leaf.der().clone(),
            other: other.der().clone(),
        }
    }

    fn spki(cert: &CertificateDer<'_>) -> Vec<u8> {
        ParsedCertificate::try_from(cert)
            .unwrap()
            .subject_public_key_info()
            .as_ref()
            .to_vec()
    }

    fn verify(
        records: Vec<Tlsa>,
        names: &[&str],
        chain: &[CertificateDer<'static>],
    ) -> Result<(), rustls::Error> {
        let verifier = DaneVerifier {
            records: records.into_iter().filter(Tlsa::is_usable).collect(),
            names: names
                .iter()
                .map(|n| ServerName::try_from(n.to_string()).unwrap())
                .collect(),
            provider: Arc::new(aws_lc_rs::default_provider()),
        };
        let sni = ServerName::try_from("mx.example.test").unwrap();
        verifier
            .verify_server_cert(&chain[0], &chain[1..], &sni, &[], UnixTime::now())
            .map(|_| ())
    }

    #[test]
    fn selectors_and_matching_types() {
        let p = pki();
        let cert = p.leaf.as_ref().to_vec();
        let key = spki(&p.leaf);
        let table = [
            (0, 0, cert.clone()),
            (0, 1, Sha256::digest(&cert).to_vec()),
            (0, 2, Sha512::digest(&cert).to_vec()),
            (1, 0, key.clone()),
            (1, 1, Sha256::digest(&key).to_vec()),
            (1, 2, Sha512::digest(&key).to_vec()),
        ];
        for (selector, matching, data) in table {
            let record = Tlsa::new(3, selector, matching, data.clone());
            assert!(record.is_usable(), "3 {selector} {matching}");
            assert!(record.matches(&p.leaf), "3 {selector} {matching}");
            assert!(!record.matches(&p.other), "3 {selector} {matching} other");
            // The same data under the other selector matches nothing.
            let swapped = Tlsa::new(3, 1 - selector, matching, data);
            assert!(!swapped.matches(&p.leaf), "3 {} {matching}", 1 - selector);
        }
    }

    #[test]
    fn unusable_records() {
        let digest = vec![7; 32];
        for record in [
            Tlsa::new(0, 1, 1, digest.clone()), // PKIX-TA
            Tlsa::new(1, 1, 1, digest.clone()), // PKIX-EE
            Tlsa::new(4, 1, 1, digest.clone()), // unassigned usage
            Tlsa::new(3, 2, 1, digest.clone()), // unknown selector
            Tlsa::new(3, 1, 3, digest.clone()), // unknown matching type
            Tlsa::new(3, 1, 1, vec![7; 31]),    // SHA-256 of the wrong length
            Tlsa::new(3, 1, 2, digest),         // SHA-512 of the wrong length
            Tlsa::new(3, 1, 0, Vec::new()),     // no data
        ] {
            assert!(!record.is_usable(), "{record:?}");
        }
        let all_unusable = DaneTls::new(vec![Tlsa::new(1, 1, 1, vec![7; 32])], &[]).unwrap();
        assert!(!all_unusable.is_authenticated());
    }

    #[test]
    fn dane_ee_matches_the_leaf_without_name_checks() {
        let p = pki();
        let good = Tlsa::new(3, 1, 1, Sha256::digest(spki(&p.leaf)).to_vec());
        let chain = [p.leaf.clone(), p.ca.clone()];
        // No reference name at all, and the leaf names another host: still accepted.
        assert!(verify(vec![good.clone()], &[], &chain).is_ok());
        let wrong = Tlsa::new(3, 1, 1, Sha256::digest(spki(&p.other)).to_vec());
        let err = verify(vec![wrong.clone()], &["mx.example.test"], &chain).unwrap_err();
        assert!(
            err.to_string().contains("no DANE-EE TLSA record matches"),
            "{err}"
        );
        // One matching record among others is enough.
        assert!(verify(vec![wrong, good], &[], &chain).is_ok());
        // A matching PKIX-EE record is unusable: refused.
        let pkix = Tlsa::new(1, 1, 1, Sha256::digest(spki(&p.leaf)).to_vec());
        let mismatch = Tlsa::new(3, 1, 1, vec![0; 32]);
        assert!(verify(vec![pkix, mismatch], &[], &chain).is_err());
    }

    #[test]
    fn dane_ta_verifies_the_chain_and_the_name() {
        let p = pki();
        let ta = Tlsa::new(2, 0, 1, Sha256::digest(&p.ca).to_vec());
        let chain = [p.leaf.clone(), p.ca.clone()];
        assert!(verify(vec![ta.clone()], &["mx.example.test"], &chain).is_ok());
        // The destination domain as the second reference name.
        assert!(verify(vec![ta.clone()], &["other.test", "mx.example.test"], &chain).is_ok());
        // The leaf does not name any reference name.
        let err = verify(vec![ta.clone()], &["mx.elsewhere.test"], &chain).unwrap_err();
        assert!(err.to_string().contains("does not verify"), "{err}");
        // The CA is not presented and the record is a digest: nothing to anchor on.
        assert!(verify(vec![ta], &["mx.example.test"], &chain[..1]).is_err());
        // A full certificate in the record is an anchor even when not presented.
        let full = Tlsa::new(2, 0, 0, p.ca.as_ref().to_vec());
        assert!(verify(vec![full], &["mx.example.test"], &chain[..1]).is_ok());
        // A DANE-TA record naming another CA: refused.
        let other = Tlsa::new(2, 0, 1, Sha256::digest(&p.other).to_vec());
        assert!(verify(vec![other], &["mx.example.test"], &chain).is_err());
        // A DANE-TA record matching the leaf itself is not an anchor for it.
        let leaf_as_ta = Tlsa::new(2, 0, 1, Sha256::digest(&p.leaf).to_vec());
        assert!(verify(vec![leaf_as_ta], &["mx.example.test"], &chain).is_err());
    }

    #[test]
    fn no_usable_record_accepts_any_certificate() {
        let p = pki();
        let pkix = Tlsa::new(0, 0, 1, vec![1; 32]);
        assert!(verify(vec![pkix], &[], &[p.other]).is_ok());
    }
}
