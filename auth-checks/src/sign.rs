//! DKIM signing (RFC 6376, RFC 8463) and ARC sealing (RFC 8617) with keys from PEM
//! files.

use std::path::Path;

use mail_auth::arc::ArcSealer;
use mail_auth::common::crypto::{Ed25519Key, RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::{Canonicalization, DkimSigner as MailAuthSigner, Done};
use mail_auth::{ArcOutput, AuthenticatedMessage, AuthenticationResults};
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;

use crate::error::Error;

/// The header fields signed by default: those RFC 6376 §5.4.1 recommends, that carry
/// what a reader sees and what list software and replies rely on. `From` is listed
/// twice so that a second `From` cannot be added without breaking the signature
/// (RFC 6376 §8.15).
pub const DEFAULT_SIGNED_HEADERS: &[&str] = &[
    "From",
    "From",
    "Reply-To",
    "Subject",
    "Date",
    "To",
    "Cc",
    "Message-ID",
    "In-Reply-To",
    "References",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
    "Resent-Date",
    "Resent-From",
    "Resent-To",
    "Resent-Cc",
    "List-Id",
    "List-Help",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
    "List-Subscribe",
    "List-Post",
    "List-Owner",
    "List-Archive",
];

/// The kind of a signing key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    /// RSA with SHA-256 (`rsa-sha256`).
    Rsa,
    /// Ed25519 with SHA-256 (`ed25519-sha256`, RFC 8463).
    Ed25519,
}

impl KeyKind {
    /// The DKIM algorithm name.
    pub fn algorithm(self) -> &'static str {
        match self {
            Self::Rsa => "rsa-sha256",
            Self::Ed25519 => "ed25519-sha256",
        }
    }
}

enum Key {
    Rsa(RsaKey<Sha256>),
    Ed25519(Ed25519Key),
}

impl Key {
    /// Reads an RSA (PKCS#1 or PKCS#8) or Ed25519 (PKCS#8) private key in PEM.
    fn from_pem(pem: &[u8]) -> Result<Self, Error> {
        let der = PrivateKeyDer::from_pem_slice(pem)
            .map_err(|e| Error::Key(format!("not a PEM private key: {e}")))?;
        match der {
            PrivateKeyDer::Pkcs1(_) => RsaKey::<Sha256>::from_key_der(der)
                .map(Key::Rsa)
                .map_err(|e| Error::Key(e.to_string())),
            PrivateKeyDer::Pkcs8(pkcs8) => {
                let bytes = pkcs8.secret_pkcs8_der().to_vec();
                match RsaKey::<Sha256>::from_key_der(PrivateKeyDer::Pkcs8(pkcs8)) {
                    Ok(key) => Ok(Key::Rsa(key)),
                    Err(_) => Ed25519Key::from_pkcs8_maybe_unchecked_der(&bytes)
                        .map(Key::Ed25519)
                        .map_err(|_| {
                            Error::Key("PKCS#8 key is neither RSA nor Ed25519".to_owned())
                        }),
                }
            }
            _ => Err(Error::Key(
                "unsupported key type (use RSA or Ed25519)".to_owned(),
            )),
        }
    }

    fn read(path: &Path) -> Result<Self, Error> {
        let pem = std::fs::read(path)
            .map_err(|e| Error::Key(format!("cannot read {}: {e}", path.display())))?;
        Self::from_pem(&pem).map_err(|e| Error::Key(format!("{}: {e}", path.display())))
    }
}

enum DkimInner {
    Rsa(MailAuthSigner<RsaKey<Sha256>, Done>),
    Ed25519(MailAuthSigner<Ed25519Key, Done>),
}

/// Signs messages for one domain and selector.
///
/// Signatures use `c=relaxed/simple`: relaxed headers survive the refolding relays do,
/// and simple body canonicalization avoids a defect of mail-auth 0.13's relaxed body
/// (see [`crate::verify`]).
///
/// ```
/// use auth_checks::{DkimSigner, KeyKind, generate_key};
/// let key = generate_key(KeyKind::Ed25519).unwrap();
/// let signer = DkimSigner::from_pem("example.org", "s1", key.private_pem.as_bytes()).unwrap();
/// let header = signer.sign(b"From: a@example.org\r\nSubject: hi\r\n\r\nHello\r\n").unwrap();
/// assert!(header.starts_with("DKIM-Signature: "));
/// assert!(header.contains("d=example.org"));
/// ```
pub struct DkimSigner {
    domain: String,
    selector: String,
    kind: KeyKind,
    inner: DkimInner,
}

impl std::fmt::Debug for DkimSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "DkimSigner(d={} s={} a={})",
            self.domain,
            self.selector,
            self.kind.algorithm()
        )
    }
}

impl DkimSigner {
    /// A signer with a PEM private key (RSA or Ed25519) and the default header list.
    pub fn from_pem(domain: &str, selector: &str, pem: &[u8]) -> Result<Self, Error> {
        Self::with_key(
            domain,
            selector,
            Key::from_pem(pem)?,
            DEFAULT_SIGNED_HEADERS,
        )
    }

    /// A signer with the PEM private key in `path`.
    pub fn from_pem_file(domain: &str, selector: &str, path: &Path) -> Result<Self, Error> {
        Self::with_key(domain, selector, Key::read(path)?, DEFAULT_SIGNED_HEADERS)
    }

    /// Signs these header fields instead of [`DEFAULT_SIGNED_HEADERS`].
    pub fn with_headers(self, headers: &[&str]) -> Result<Self, Error> {
        let key = match self.inner {
            DkimInner::Rsa(s) => Key::Rsa(s.key),
            DkimInner::Ed25519(s) => Key::Ed25519(s.key),
        };
        Self::with_key(&self.domain, &self.selector, key, headers)
    }

    fn with_key(domain: &str, selector: &str, key: Key, headers: &[&str]) -> Result<Self, Error> {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        if domain.is_empty() || selector.is_empty() {
            return Err(Error::Key(
                "a DKIM signer needs a domain and a selector".to_owned(),
            ));
        }
        if !headers.iter().any(|h| h.eq_ignore_ascii_case("from")) {
            return Err(Error::Key(
                "the signed headers must include From".to_owned(),
            ));
        }
        let headers = headers.iter().map(|h| (*h).to_owned());
        let (kind, inner) = match key {
            Key::Rsa(key) => (
                KeyKind::Rsa,
                DkimInner::Rsa(
                    MailAuthSigner::from_key(key)
                        .domain(domain.clone())
                        .selector(selector)
                        .headers(headers)
                        .header_canonicalization(Canonicalization::Relaxed)
                        .body_canonicalization(Canonicalization::Simple),
                ),
            ),
            Key::Ed25519(key) => (
                KeyKind::Ed25519,
                DkimInner::Ed25519(
                    MailAuthSigner::from_key(key)
                        .domain(domain.clone())
                        .selector(selector)
                        .headers(headers)
                        .header_canonicalization(Canonicalization::Relaxed)
                        .body_canonicalization(Canonicalization::Simple),
                ),
            ),
        };
        Ok(Self {
            domain,
            selector: selector.to_owned(),
            kind,
            inner,
        })
    }

    /// The signing domain (`d=`).
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The selector (`s=`).
    pub fn selector(&self) -> &str {
        &self.selector
    }

    /// The key's kind.
    pub fn kind(&self) -> KeyKind {
        self.kind
    }

    /// A `DKIM-Signature:` header field for `message`, CRLF-terminated, to put on top.
    pub fn sign(&self, message: &[u8]) -> Result<String, Error> {
        let signature = match &self.inner {
            DkimInner::Rsa(s) => s.sign(message),
            DkimInner::Ed25519(s) => s.sign(message),
        }
        .map_err(|e| Error::Sign(e.to_string()))?;
        Ok(signature.to_header())
    }
}

enum ArcInner {
    Rsa(ArcSealer<RsaKey<Sha256>, Done>),
    Ed25519(ArcSealer<Ed25519Key, Done>),
}

/// Adds ARC sets (RFC 8617 §5.1) to messages we forward, with our verdicts as the
/// `ARC-Authentication-Results`.
pub struct ArcSigner {
    domain: String,
    selector: String,
    inner: ArcInner,
}

impl std::fmt::Debug for ArcSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ArcSigner(d={} s={})", self.domain, self.selector)
    }
}

impl ArcSigner {
    /// A sealer with a PEM private key (RSA or Ed25519).
    pub fn from_pem(domain: &str, selector: &str, pem: &[u8]) -> Result<Self, Error> {
        Self::with_key(domain, selector, Key::from_pem(pem)?)
    }

    /// A sealer with the PEM private key in `path`.
    pub fn from_pem_file(domain: &str, selector: &str, path: &Path) -> Result<Self, Error> {
        Self::with_key(domain, selector, Key::read(path)?)
    }

    fn with_key(domain: &str, selector: &str, key: Key) -> Result<Self, Error> {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        if domain.is_empty() || selector.is_empty() {
            return Err(Error::Key(
                "an ARC sealer needs a domain and a selector".to_owned(),
            ));
        }
        let headers = DEFAULT_SIGNED_HEADERS
            .iter()
            .skip(1)
            .chain(["DKIM-Signature"].iter())
            .map(|h| (*h).to_owned());
        let inner = match key {
            Key::Rsa(key) => ArcInner::Rsa(
                ArcSealer::from_key(key)
                    .domain(domain.clone())
                    .selector(selector)
                    .headers(headers)
                    .header_canonicalization(Canonicalization::Relaxed)
                    .body_canonicalization(Canonicalization::Simple),
            ),
            Key::Ed25519(key) => ArcInner::Ed25519(
                ArcSealer::from_key(key)
                    .domain(domain.clone())
                    .selector(selector)
                    .headers(headers)
                    .header_canonicalization(Canonicalization::Relaxed)
                    .body_canonicalization(Canonicalization::Simple),
            ),
        };
        Ok(Self {
            domain,
            selector: selector.to_owned(),
            inner,
        })
    }

    /// The three ARC header fields to put on top of `message`, or `None` when the chain
    /// cannot be extended (it failed) or signing failed.
    pub(crate) fn seal(
        &self,
        message: &AuthenticatedMessage<'_>,
        results: &AuthenticationResults<'_>,
        arc: &ArcOutput<'_>,
    ) -> Option<String> {
        let set = match &self.inner {
            ArcInner::Rsa(s) => s.seal(message, results, arc),
            ArcInner::Ed25519(s) => s.seal(message, results, arc),
        };
        match set {
            Ok(set) => Some(set.to_header()),
            Err(e) => {
                tracing::warn!(error = %e, "ARC sealing failed");
                None
            }
        }
    }
}
