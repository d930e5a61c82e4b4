//! # smtp-client
//!
//! The SMTP and LMTP client of the `mta` workspace: tokio around the sans-IO
//! [`smtp_proto::ClientSession`], which pipelines what the server allows and reports one
//! outcome per recipient.
//!
//! ```text
//!  Connection::open(stream) ─▶ hello() ─▶ send(transaction, body) ─▶ TransactionResult
//!                                                                    (a reply per recipient)
//! ```
//!
//! Errors are [`ClientError`]s that say whether a retry may help
//! ([`ClientError::is_transient`]) and carry the reply to record
//! ([`ClientError::reply`]), which is what a queue needs to choose between retrying and
//! bouncing.
//!
//! - [`Mailer`]: the short path, one message to a server named by `host:port`.
//! - [`Connection`]: a session over any stream (TCP, Unix sockets), EHLO/LHLO with
//!   HELO fallback, transactions with PIPELINING and CHUNKING; LMTP.
//! - [`Session`]: outbound SMTP to one host: its addresses in turn, STARTTLS by
//!   [`TlsPolicy`] (opportunistic, required with certificate checks, disabled),
//!   implicit TLS and AUTH for relays, and a message checked against what the server
//!   offers (SIZE, 8BITMIME, SMTPUTF8, REQUIRETLS, DSN) before it is sent.
//! - [`DaneTls`]: DANE (RFC 7672): a server authenticated by its TLSA records
//!   ([`Tlsa`], DANE-TA and DANE-EE), STARTTLS mandatory.
//! - [`mta_sts`]: MTA-STS (RFC 8461): the TXT record, the policy and its HTTPS fetch,
//!   MX pattern matching, a policy cache that survives restarts, TLS report events.

#![forbid(unsafe_code)]

/// The handshake-signature half of a `ServerCertVerifier` whose `provider` field (an
/// `Arc<CryptoProvider>`) checks them: the same in every verifier of this crate.
macro_rules! handshake_signatures_by_provider {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &rustls::pki_types::CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                message,
                cert,
                dss,
                &self.provider.signature_verification_algorithms,
            )
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &rustls::pki_types::CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &self.provider.signature_verification_algorithms,
            )
        }

        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.provider
                .signature_verification_algorithms
                .supported_schemes()
        }
    };
}

mod connection;
mod dane;
mod error;
mod mailer;
pub mod mta_sts;
mod outbound;
#[cfg(feature = "testing")]
pub mod testing;
mod tls;

/// The protocol core this client speaks through (addresses, replies, parameters), so
/// that one dependency is enough. Built for tokio 1 and rustls 0.23.
pub use smtp_proto;

pub use connection::{Connection, Timeouts};
pub use dane::{DaneTls, Tlsa};
pub use error::ClientError;
pub use mailer::Mailer;
pub use outbound::{ClientStream, OutboundConfig, OutboundMessage, Session};
pub use tls::{TlsConfigs, TlsPolicy};
