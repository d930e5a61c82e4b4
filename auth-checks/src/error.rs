//! The crate's error type.

/// What can go wrong outside the verdicts themselves (those are values, see
/// [`crate::results`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A signing key could not be read or made.
    #[error("DKIM key: {0}")]
    Key(String),
    /// A message could not be signed (it has no header the signer covers, or the key
    /// failed).
    #[error("cannot sign: {0}")]
    Sign(String),
    /// The configuration is not valid.
    #[error("auth_checks configuration: {0}")]
    Config(String),
}
