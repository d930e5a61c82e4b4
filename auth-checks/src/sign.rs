//! DKIM signing (RFC 6376, RFC 8463) and ARC sealing (RFC 8617) with keys from PEM
//! files.

use std::path::Path;

use std::sync::Arc;

use mail_auth::arc::ArcSealer;
use mail_auth::common::crypto::{Algorithm, DkimKey, Ed25519Key, RsaKey, Sha256, SigningKey};
use mail_auth::common::headers::{HeaderWriter, Writable};
use mail_auth::dkim::{Canonicalization, DkimSigner as MailAuthSigner};
use mail_auth::{ArcOutput, AuthenticatedMessage, AuthenticationResults};
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;

use crate::error::Error;

/// The header fields signed by default, when the message has them: those RFC 6376
/// §5.4.1 recommends, which carry what a reader sees and what list software and replies
/// rely on. `From` is also signed once more than it occurs, so that a second `From`
/// cannot be added without breaking the signature (RFC 6376 §8.15).
pub const DEFAULT_SIGNED_HEADERS: &[&str] = &[
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

/// A key shared by every signature made with it: mail-auth's signers own their key,
/// and ours build one per message (the header list depends on the message).
#[derive(Clone)]
struct SharedKey(Arc<DkimKey>);

impl SigningKey for SharedKey {
    type Hasher = Sha256;

    fn sign(&self, input: impl Writable) -> mail_auth::Result<Vec<u8>> {
        self.0.sign(input)
    }

    fn algorithm(&self) -> Algorithm {
        self.0.algorithm()
    }
}

impl SharedKey {
    /// Reads an RSA (PKCS#1 or PKCS#8) or Ed25519 (PKCS#8) private key in PEM.
    fn from_pem(pem: &[u8]) -> Result<Self, Error> {
        let der = PrivateKeyDer::from_pem_slice(pem)
            .map_err(|e| Error::key_from("not a PEM private key", e))?;
        let key = match der {
            PrivateKeyDer::Pkcs1(_) => RsaKey::<Sha256>::from_key_der(der)
                .map(DkimKey::Rsa)
                .map_err(|e| Error::key_from("an unusable RSA key", e))?,
            PrivateKeyDer::Pkcs8(pkcs8) => {
                let bytes = pkcs8.secret_pkcs8_der().to_vec();
                match RsaKey::<Sha256>::from_key_der(PrivateKeyDer::Pkcs8(pkcs8)) {
                    Ok(key) => DkimKey::Rsa(key),
                    Err(_) => Ed25519Key::from_pkcs8_maybe_unchecked_der(&bytes)
                        .map(DkimKey::Ed25519)
                        .map_err(|_| Error::key("PKCS#8 key is neither RSA nor Ed25519"))?,
                }
            }
            _ => {
                return Err(Error::key("unsupported key type (use RSA or Ed25519)"));
            }
        };
        Ok(Self(Arc::new(key)))
    }

    fn read(path: &Path) -> Result<Self, Error> {
        let pem = std::fs::read(path)
            .map_err(|e| Error::key_from(format!("cannot read {}", path.display()), e))?;
        Self::from_pem(&pem).map_err(|e| Error::key_from(path.display().to_string(), e))
    }

    fn kind(&self) -> KeyKind {
        match *self.0 {
            DkimKey::Rsa(_) => KeyKind::Rsa,
            DkimKey::Ed25519(_) => KeyKind::Ed25519,
        }
    }
}

/// The names in `wanted` that `message`'s header section has, in `wanted`'s order, with
/// `From` once more at the end when `oversign_from`: a second `From` added later then
/// breaks the signature (RFC 6376 §8.15), while absent fields (a `List-Id` a mailing
/// list adds) are not locked out.
fn present_headers(names: &[&[u8]], wanted: &[String], oversign_from: bool) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for name in wanted {
        if names
            .iter()
            .any(|n| n.eq_ignore_ascii_case(name.as_bytes()))
            && !out.iter().any(|o| o.eq_ignore_ascii_case(name))
        {
            out.push(name.clone());
        }
    }
    if oversign_from {
        out.push("From".to_owned());
    }
    out
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
    key: SharedKey,
    headers: Vec<String>,
}

impl std::fmt::Debug for DkimSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "DkimSigner(d={} s={} a={})",
            self.domain,
            self.selector,
            self.key.kind().algorithm()
        )
    }
}

impl DkimSigner {
    /// A signer with a PEM private key (RSA or Ed25519) and the default header list.
    pub fn from_pem(domain: &str, selector: &str, pem: &[u8]) -> Result<Self, Error> {
        Self::with_key(domain, selector, SharedKey::from_pem(pem)?)
    }

    /// A signer with the PEM private key in `path`.
    pub fn from_pem_file(domain: &str, selector: &str, path: &Path) -> Result<Self, Error> {
        Self::with_key(domain, selector, SharedKey::read(path)?)
    }

    /// Signs these header fields (those of them a message has) instead of
    /// [`DEFAULT_SIGNED_HEADERS`]; `From` is always signed.
    pub fn with_headers(mut self, headers: &[&str]) -> Self {
        self.headers = headers.iter().map(|h| (*h).to_owned()).collect();
        if !self.headers.iter().any(|h| h.eq_ignore_ascii_case("from")) {
            self.headers.insert(0, "From".to_owned());
        }
        self
    }

    fn with_key(domain: &str, selector: &str, key: SharedKey) -> Result<Self, Error> {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        if domain.is_empty() || selector.is_empty() {
            return Err(Error::key("a DKIM signer needs a domain and a selector"));
        }
        Ok(Self {
            domain,
            selector: selector.to_owned(),
            key,
            headers: DEFAULT_SIGNED_HEADERS
                .iter()
                .map(|h| (*h).to_owned())
                .collect(),
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
        self.key.kind()
    }

    /// A `DKIM-Signature:` header field for `message`, CRLF-terminated, to put on top.
    ///
    /// A message without a `From` field is refused: RFC 6376 §5.4 requires `From` to be
    /// signed, and RFC 5322 §3.6 requires the field.
    pub fn sign(&self, message: &[u8]) -> Result<String, Error> {
        self.sign_parts(&[message])
    }

    /// [`DkimSigner::sign`] for a message given in parts, one after the other (header
    /// fields added on top, then the message as it came), without joining them: the
    /// first parts are whole header fields, the last holds the rest of the header and
    /// the body.
    pub fn sign_parts(&self, parts: &[&[u8]]) -> Result<String, Error> {
        let names: Vec<&[u8]> = parts
            .iter()
            .flat_map(|p| crate::headers::field_names(p))
            .collect();
        if !names.iter().any(|n| n.eq_ignore_ascii_case(b"From")) {
            return Err(Error::sign("the message has no From field"));
        }
        let signature = MailAuthSigner::from_key(self.key.clone())
            .domain(self.domain.clone())
            .selector(self.selector.clone())
            .headers(present_headers(&names, &self.headers, true))
            .header_canonicalization(Canonicalization::Relaxed)
            .body_canonicalization(Canonicalization::Simple)
            .sign_chained(parts.iter().copied())
            .map_err(|e| Error::sign_from("mail-auth refused to sign", e))?;
        Ok(signature.to_header())
    }
}

/// Adds ARC sets (RFC 8617 §5.1) to messages we forward, with our verdicts as the
/// `ARC-Authentication-Results`.
pub struct ArcSigner {
    domain: String,
    selector: String,
    key: SharedKey,
    headers: Vec<String>,
}

impl std::fmt::Debug for ArcSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ArcSigner(d={} s={})", self.domain, self.selector)
    }
}

impl ArcSigner {
    /// A sealer with a PEM private key (RSA or Ed25519).
    pub fn from_pem(domain: &str, selector: &str, pem: &[u8]) -> Result<Self, Error> {
        Self::with_key(domain, selector, SharedKey::from_pem(pem)?)
    }

    /// A sealer with the PEM private key in `path`.
    pub fn from_pem_file(domain: &str, selector: &str, path: &Path) -> Result<Self, Error> {
        Self::with_key(domain, selector, SharedKey::read(path)?)
    }

    fn with_key(domain: &str, selector: &str, key: SharedKey) -> Result<Self, Error> {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        if domain.is_empty() || selector.is_empty() {
            return Err(Error::key("an ARC sealer needs a domain and a selector"));
        }
        // The ARC-Message-Signature covers what a DKIM signature would, and the DKIM
        // signatures themselves.
        let headers = DEFAULT_SIGNED_HEADERS
            .iter()
            .chain(["DKIM-Signature"].iter())
            .map(|h| (*h).to_owned())
            .collect();
        Ok(Self {
            domain,
            selector: selector.to_owned(),
            key,
            headers,
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
        let sealer = ArcSealer::from_key(self.key.clone())
            .domain(self.domain.clone())
            .selector(self.selector.clone())
            .headers(present_headers(
                &crate::headers::field_names(message.raw_headers()),
                &self.headers,
                false,
            ))
            .header_canonicalization(Canonicalization::Relaxed)
            .body_canonicalization(Canonicalization::Simple);
        match sealer.seal(message, results, arc) {
            Ok(set) => Some(set.to_header()),
            Err(e) => {
                tracing::warn!(error = %e, "ARC sealing failed");
                None
            }
        }
    }
}
