//! New DKIM keys and the DNS record that publishes them (`mta dkim-keygen`).

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::{KeyPair as RsaKeyPair, KeySize};
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use crate::error::Error;
use crate::sign::KeyKind;

/// A generated key: the private key to keep and the public part to publish.
#[derive(Clone)]
pub struct GeneratedKey {
    /// The key's kind.
    pub kind: KeyKind,
    /// The private key, PKCS#8 in PEM.
    pub private_pem: String,
    /// The TXT record value to publish at `<selector>._domainkey.<domain>`.
    pub dns_txt: String,
}

impl std::fmt::Debug for GeneratedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeneratedKey")
            .field("kind", &self.kind)
            .field("private_pem", &"<redacted>")
            .field("dns_txt", &self.dns_txt)
            .finish()
    }
}

impl GeneratedKey {
    /// The record as a zone-file line for `selector` and `domain`, the value split into
    /// strings of at most 255 octets (RFC 1035 §3.3.14, RFC 6376 §3.6.2.2), all on one
    /// line (some zone parsers mishandle quoted strings inside parentheses).
    ///
    /// ```
    /// use auth_checks::{KeyKind, generate_key};
    /// let key = generate_key(KeyKind::Ed25519).unwrap();
    /// let line = key.zone_line("s1", "example.org");
    /// assert!(line.starts_with("s1._domainkey.example.org. IN TXT \"v=DKIM1; k=ed25519; p="));
    /// ```
    pub fn zone_line(&self, selector: &str, domain: &str) -> String {
        let parts: Vec<String> = self
            .dns_txt
            .as_bytes()
            .chunks(250)
            .map(|c| format!("\"{}\"", String::from_utf8_lossy(c)))
            .collect();
        format!(
            "{selector}._domainkey.{}. IN TXT {}",
            domain.trim_end_matches('.'),
            parts.join(" ")
        )
    }
}

/// Generates a key: RSA-2048 or Ed25519.
pub fn generate_key(kind: KeyKind) -> Result<GeneratedKey, Error> {
    let fail = |what: &str| Error::key(format!("cannot generate the {what} key"));
    let (pkcs8, txt) = match kind {
        KeyKind::Rsa => {
            let pair = RsaKeyPair::generate(KeySize::Rsa2048).map_err(|_| fail("RSA"))?;
            let private = pair.as_der().map_err(|_| fail("RSA"))?;
            let public = pair.public_key().as_der().map_err(|_| fail("RSA"))?;
            (
                private.as_ref().to_vec(),
                format!("v=DKIM1; k=rsa; p={}", STANDARD.encode(public.as_ref())),
            )
        }
        KeyKind::Ed25519 => {
            let rng = aws_lc_rs::rand::SystemRandom::new();
            let doc = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| fail("Ed25519"))?;
            let pair = Ed25519KeyPair::from_pkcs8(doc.as_ref()).map_err(|_| fail("Ed25519"))?;
            (
                doc.as_ref().to_vec(),
                format!(
                    "v=DKIM1; k=ed25519; p={}",
                    STANDARD.encode(pair.public_key().as_ref())
                ),
            )
        }
    };
    Ok(GeneratedKey {
        kind,
        private_pem: pem("PRIVATE KEY", &pkcs8),
        dns_txt: txt,
    })
}

fn pem(label: &str, der: &[u8]) -> String {
    let body = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in body.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}
