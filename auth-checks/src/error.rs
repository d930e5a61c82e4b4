//! The crate's error type.

/// The cause of an [`Error`] (a PEM, key or signing error of the libraries underneath,
/// or a file error), kept as its source.
pub type Cause = Box<dyn std::error::Error + Send + Sync>;

/// What can go wrong outside the verdicts themselves (those are values, see
/// [`crate::results`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A signing key could not be read or made.
    #[error("DKIM key: {message}")]
    Key {
        /// What was being done.
        message: String,
        /// Why it failed, when a library or the system said.
        #[source]
        source: Option<Cause>,
    },
    /// A message could not be signed (it has no header the signer covers, or the key
    /// failed).
    #[error("cannot sign: {message}")]
    Sign {
        /// What was being done.
        message: String,
        /// Why it failed, when the signer said.
        #[source]
        source: Option<Cause>,
    },
}

impl Error {
    /// The message with its causes, for a log line: `DKIM key: x.key: not a PEM
    /// private key: ...`.
    pub fn with_causes(&self) -> String {
        let mut text = self.to_string();
        let mut cause = std::error::Error::source(self);
        while let Some(c) = cause {
            text.push_str(&format!(": {c}"));
            cause = c.source();
        }
        text
    }

    pub(crate) fn key(message: impl Into<String>) -> Self {
        Self::Key {
            message: message.into(),
            source: None,
        }
    }

    pub(crate) fn key_from(message: impl Into<String>, source: impl Into<Cause>) -> Self {
        Self::Key {
            message: message.into(),
            source: Some(source.into()),
        }
    }

    pub(crate) fn sign(message: impl Into<String>) -> Self {
        Self::Sign {
            message: message.into(),
            source: None,
        }
    }

    pub(crate) fn sign_from(message: impl Into<String>, source: impl Into<Cause>) -> Self {
        Self::Sign {
            message: message.into(),
            source: Some(source.into()),
        }
    }
}
