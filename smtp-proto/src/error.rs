//! The crate's error type, and the one place where a protocol error becomes the reply
//! a server sends ([`Error::reply`]).

use std::borrow::Cow;

use crate::reply::{EnhancedStatus as S, Reply, ReplyCode as C};

/// Everything that can be wrong with SMTP input, on either side of the connection.
///
/// Server-side variants describe what a client sent; [`Error::reply`] maps each to its
/// RFC reply code, enhanced status and a sentence. Client-side variants (a malformed
/// reply, TLS injection) map to transient failures, since the message may well be
/// delivered on another try.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    // ----- lines -----
    /// A command line longer than the configured limit (RFC 5321 §4.5.3.1.4).
    #[error("line too long")]
    LineTooLong,
    /// A line ended with LF alone where CRLF is required.
    #[error("line ended with a bare LF")]
    BareLineFeed,
    /// A CR inside a command line.
    #[error("bare CR in a command line")]
    BareCarriageReturn,
    /// A NUL byte in a command line.
    #[error("NUL byte in a command line")]
    NulByte,
    /// A command line that is not valid UTF-8.
    #[error("command line is not valid UTF-8")]
    InvalidUtf8,

    // ----- commands -----
    /// An unknown verb.
    #[error("unrecognized command")]
    UnknownCommand,
    /// An HTTP (or other non-SMTP) request on the SMTP port.
    #[error("HTTP request on an SMTP port")]
    ForeignProtocol,
    /// A command without its required argument.
    #[error("{0} needs an argument")]
    MissingArgument(&'static str),
    /// A command with an argument it does not take, or a malformed one.
    #[error("invalid arguments for {0}")]
    UnexpectedArgument(&'static str),
    /// The argument of MAIL FROM is not a valid reverse-path.
    #[error("invalid reverse-path")]
    InvalidReversePath,
    /// The argument of RCPT TO is not a valid forward-path.
    #[error("invalid forward-path")]
    InvalidForwardPath,
    /// `RCPT TO:<>`.
    #[error("null recipient")]
    NullRecipient,
    /// A malformed address (outside a command).
    #[error("invalid address")]
    InvalidAddress,
    /// A malformed domain.
    #[error("invalid domain")]
    InvalidDomain,
    /// An ESMTP parameter the server does not know or did not offer.
    #[error("unsupported parameter {0}")]
    UnknownParameter(String),
    /// An ESMTP parameter with a bad or missing value.
    #[error("invalid value for parameter {0}")]
    InvalidParameter(String),
    /// An ESMTP parameter given twice.
    #[error("duplicate parameter {0}")]
    DuplicateParameter(String),
    /// A BDAT size that is not a number: the chunk cannot be skipped, so the server closes.
    #[error("invalid BDAT chunk size")]
    InvalidChunkSize,
    /// Base64 that does not decode (AUTH).
    #[error("invalid base64")]
    InvalidBase64,

    // ----- session rules -----
    /// A command out of order; the text says which rule.
    #[error("bad sequence of commands: {0}")]
    BadSequence(&'static str),
    /// A command the server does not offer.
    #[error("{0} is not available")]
    NotImplemented(&'static str),
    /// A non-ASCII address in a transaction without SMTPUTF8 (RFC 6531 §3.2).
    #[error("non-ASCII address without SMTPUTF8")]
    Utf8NotAllowed,
    /// The declared or actual message size is over the limit (RFC 1870).
    #[error("message too big")]
    MessageTooBig,
    /// More recipients than the limit allows (RFC 5321 §4.5.3.1.8).
    #[error("too many recipients")]
    TooManyRecipients,
    /// DATA with no accepted recipient.
    #[error("no valid recipients")]
    NoValidRecipients,
    /// The message contains bare CR or LF and the policy refuses it.
    #[error("message contains bare CR or LF")]
    BareLineEndingInData,
    /// The message contains NUL bytes and the policy refuses them.
    #[error("message contains NUL bytes")]
    NulInData,
    /// MAIL before AUTH where AUTH is required (submission, RFC 6409).
    #[error("authentication required")]
    AuthRequired,
    /// AUTH on a connection without TLS (RFC 4954 §4).
    #[error("encryption required for authentication")]
    EncryptionRequired,
    /// AUTH with a mechanism the server does not offer.
    #[error("unsupported authentication mechanism")]
    UnsupportedMechanism,
    /// The client cancelled AUTH with `*`.
    #[error("authentication cancelled")]
    AuthCancelled,
    /// SASL data that does not follow the mechanism's format.
    #[error("malformed authentication exchange")]
    InvalidCredentials,
    /// Too many authentication failures.
    #[error("too many authentication failures")]
    TooManyAuthFailures,
    /// Too many errors in one session.
    #[error("too many errors")]
    TooManyErrors,
    /// The input cannot be resynchronised (a BDAT chunk of unknown size).
    #[error("input out of sync")]
    Desynchronized,
    /// No command within the timeout.
    #[error("timeout")]
    Timeout,
    /// The server is shutting down.
    #[error("shutting down")]
    ShuttingDown,
    /// The session lasted as long as the server allows.
    #[error("session too long")]
    SessionTooLong,

    // ----- replies (client side) -----
    /// A reply line that does not start with a valid code and separator.
    #[error("malformed reply code")]
    InvalidReplyCode,
    /// A multi-line reply whose lines carry different codes.
    #[error("inconsistent multi-line reply")]
    InconsistentReply,
    /// A reply line, or a whole reply, over the limits.
    #[error("reply too long")]
    ReplyTooLong,
    /// An enhanced status code that does not parse.
    #[error("invalid enhanced status code")]
    InvalidEnhancedStatus,
    /// The server sent bytes after its reply to STARTTLS, before the TLS handshake
    /// (CVE-2011-0411, client side).
    #[error("data received after the STARTTLS reply")]
    StartTlsInjection,
    /// A reply that arrived when no command was waiting for one.
    #[error("unexpected reply")]
    UnexpectedReply,
}

impl Error {
    /// The reply a server sends for this error. This is the only place where protocol
    /// errors are mapped to reply codes.
    ///
    /// ```
    /// use smtp_proto::Error;
    /// assert_eq!(Error::LineTooLong.reply().to_string(), "500 5.5.2 Line too long");
    /// assert_eq!(Error::TooManyRecipients.reply().code().as_u16(), 452);
    /// ```
    pub fn reply(&self) -> Reply {
        let (code, status, text): (C, S, Cow<'static, str>) = match self {
            Self::LineTooLong => (C::SYNTAX_ERROR, S::SYNTAX_ERROR, "Line too long".into()),
            Self::BareLineFeed => (
                C::SYNTAX_ERROR,
                S::SYNTAX_ERROR,
                "Bare LF line ending not allowed; use CRLF".into(),
            ),
            Self::BareCarriageReturn => (
                C::PARAMETER_SYNTAX_ERROR,
                S::SYNTAX_ERROR,
                "Bare CR not allowed in commands".into(),
            ),
            Self::NulByte => (
                C::PARAMETER_SYNTAX_ERROR,
                S::SYNTAX_ERROR,
                "NUL character not allowed in commands".into(),
            ),
            Self::InvalidUtf8 => (
                C::PARAMETER_SYNTAX_ERROR,
                S::SYNTAX_ERROR,
                "Invalid UTF-8 in command".into(),
            ),
            Self::UnknownCommand => (
                C::SYNTAX_ERROR,
                S::INVALID_COMMAND,
                "Command unrecognized".into(),
            ),
            Self::ForeignProtocol => (
                C::TRANSACTION_FAILED,
                S::SECURITY_ERROR,
                "This is an SMTP server, not a web server; closing".into(),
            ),
            Self::MissingArgument(verb) => (
                C::PARAMETER_SYNTAX_ERROR,
                S::INVALID_ARGUMENTS,
                syntax_hint(verb).into(),
            ),
            Self::UnexpectedArgument(verb) => (
                C::PARAMETER_SYNTAX_ERROR,
                S::INVALID_ARGUMENTS,
                syntax_hint(verb).into(),
            ),
            Self::InvalidReversePath => (
                C::PARAMETER_SYNTAX_ERROR,
                S::BAD_SENDER_SYNTAX,
                "Bad sender address syntax".into(),
            ),
            Self::InvalidForwardPath | Self::NullRecipient => (
                C::PARAMETER_SYNTAX_ERROR,
                S::BAD_DESTINATION_SYNTAX,
                "Bad recipient address syntax".into(),
            ),
            Self::InvalidAddress | Self::InvalidDomain => (
                C::PARAMETER_SYNTAX_ERROR,
                S::SYNTAX_ERROR,
                "Bad address syntax".into(),
            ),
            Self::UnknownParameter(p) => (
                C::PARAMETERS_NOT_RECOGNIZED,
                S::INVALID_ARGUMENTS,
                format!("Unsupported parameter {p}").into(),
            ),
            Self::InvalidParameter(p) => (
                C::PARAMETER_SYNTAX_ERROR,
                S::INVALID_ARGUMENTS,
                format!("Invalid value for parameter {p}").into(),
            ),
            Self::DuplicateParameter(p) => (
                C::PARAMETER_SYNTAX_ERROR,
                S::INVALID_ARGUMENTS,
                format!("Parameter {p} given twice").into(),
            ),
            Self::InvalidChunkSize => (
                C::PARAMETER_SYNTAX_ERROR,
                S::INVALID_ARGUMENTS,
                "Syntax: BDAT <size> [LAST]".into(),
            ),
            Self::InvalidBase64 => (
                C::PARAMETER_SYNTAX_ERROR,
                S::SYNTAX_ERROR,
                "Invalid base64 data".into(),
            ),
            Self::BadSequence(why) => (C::BAD_SEQUENCE, S::INVALID_COMMAND, (*why).into()),
            Self::NotImplemented(what) => (
                C::NOT_IMPLEMENTED,
                S::INVALID_COMMAND,
                format!("{what} not available").into(),
            ),
            Self::Utf8NotAllowed => (
                C::MAILBOX_NAME_NOT_ALLOWED,
                S::NON_ASCII_ADDRESS,
                "Non-ASCII address requires SMTPUTF8".into(),
            ),
            Self::MessageTooBig => (
                C::EXCEEDED_STORAGE,
                S::MESSAGE_TOO_BIG,
                "Message too big for system".into(),
            ),
            Self::TooManyRecipients => (
                C::INSUFFICIENT_STORAGE,
                S::TOO_MANY_RECIPIENTS,
                "Too many recipients".into(),
            ),
            Self::NoValidRecipients => (
                C::TRANSACTION_FAILED,
                S::INVALID_COMMAND,
                "No valid recipients".into(),
            ),
            Self::BareLineEndingInData => (
                C::MAILBOX_UNAVAILABLE,
                S::BARE_LINE_ENDING,
                "Message contains bare CR or LF; lines must end with CRLF".into(),
            ),
            Self::NulInData => (
                C::MAILBOX_UNAVAILABLE,
                S::MEDIA_ERROR,
                "Message contains NUL bytes, which mail may not carry".into(),
            ),
            Self::AuthRequired => (
                C::AUTH_REQUIRED,
                S::SECURITY_ERROR,
                "Authentication required".into(),
            ),
            Self::EncryptionRequired => (
                C::ENCRYPTION_REQUIRED,
                S::ENCRYPTION_REQUIRED,
                "Encryption required for requested authentication mechanism; use STARTTLS first"
                    .into(),
            ),
            Self::UnsupportedMechanism => (
                C::PARAMETER_NOT_IMPLEMENTED,
                S::INVALID_ARGUMENTS,
                "Unrecognized authentication type".into(),
            ),
            Self::AuthCancelled => (
                C::PARAMETER_SYNTAX_ERROR,
                S::SECURITY_ERROR,
                "Authentication cancelled".into(),
            ),
            Self::InvalidCredentials => (
                C::PARAMETER_SYNTAX_ERROR,
                S::SYNTAX_ERROR,
                "Malformed authentication data".into(),
            ),
            Self::TooManyAuthFailures => (
                C::SERVICE_UNAVAILABLE,
                S::SECURITY_TEMPORARY,
                "Too many authentication failures; closing".into(),
            ),
            Self::TooManyErrors => (
                C::SERVICE_UNAVAILABLE,
                S::SECURITY_TEMPORARY,
                "Too many errors; closing".into(),
            ),
            Self::Desynchronized => (
                C::SERVICE_UNAVAILABLE,
                S::PROTOCOL_TEMPORARY,
                "Cannot find the next command after an invalid BDAT; closing".into(),
            ),
            Self::Timeout => (
                C::SERVICE_UNAVAILABLE,
                S::BAD_CONNECTION,
                "Timeout waiting for input; closing".into(),
            ),
            Self::ShuttingDown => (
                C::SERVICE_UNAVAILABLE,
                S::SYSTEM_NOT_ACCEPTING,
                "Service shutting down; try again later".into(),
            ),
            Self::SessionTooLong => (
                C::SERVICE_UNAVAILABLE,
                S::BAD_CONNECTION,
                "Session time limit reached; closing".into(),
            ),
            Self::InvalidReplyCode
            | Self::InconsistentReply
            | Self::ReplyTooLong
            | Self::InvalidEnhancedStatus
            | Self::StartTlsInjection
            | Self::UnexpectedReply => (
                C::LOCAL_ERROR,
                S::PROTOCOL_TEMPORARY,
                format!("Protocol error from the remote server: {self}").into(),
            ),
        };
        Reply::new(code, status, text)
    }

    /// Whether a server must close the connection after sending [`Error::reply`].
    pub fn closes_connection(&self) -> bool {
        self.reply().code() == C::SERVICE_UNAVAILABLE || matches!(self, Self::ForeignProtocol)
    }
}

fn syntax_hint(verb: &str) -> &'static str {
    match verb {
        "EHLO" => "Syntax: EHLO hostname",
        "HELO" => "Syntax: HELO hostname",
        "LHLO" => "Syntax: LHLO hostname",
        "MAIL" => "Syntax: MAIL FROM:<address> [parameters]",
        "RCPT" => "Syntax: RCPT TO:<address> [parameters]",
        "DATA" => "Syntax: DATA (no arguments)",
        "RSET" => "Syntax: RSET (no arguments)",
        "QUIT" => "Syntax: QUIT (no arguments)",
        "STARTTLS" => "Syntax: STARTTLS (no arguments)",
        "VRFY" => "Syntax: VRFY address",
        "EXPN" => "Syntax: EXPN list",
        "AUTH" => "Syntax: AUTH mechanism [initial-response]",
        _ => "Syntax error in arguments",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_server_error_has_a_valid_reply() {
        let errors = [
            Error::LineTooLong,
            Error::BareLineFeed,
            Error::BareCarriageReturn,
            Error::NulByte,
            Error::InvalidUtf8,
            Error::UnknownCommand,
            Error::ForeignProtocol,
            Error::MissingArgument("EHLO"),
            Error::UnexpectedArgument("RSET"),
            Error::InvalidReversePath,
            Error::InvalidForwardPath,
            Error::NullRecipient,
            Error::UnknownParameter("FOO".into()),
            Error::InvalidParameter("SIZE".into()),
            Error::DuplicateParameter("SIZE".into()),
            Error::InvalidChunkSize,
            Error::InvalidBase64,
            Error::BadSequence("x"),
            Error::NotImplemented("EXPN"),
            Error::Utf8NotAllowed,
            Error::MessageTooBig,
            Error::TooManyRecipients,
            Error::NoValidRecipients,
            Error::BareLineEndingInData,
            Error::NulInData,
            Error::AuthRequired,
            Error::EncryptionRequired,
            Error::UnsupportedMechanism,
            Error::AuthCancelled,
            Error::InvalidCredentials,
            Error::TooManyAuthFailures,
            Error::TooManyErrors,
            Error::Desynchronized,
            Error::Timeout,
            Error::ShuttingDown,
            Error::SessionTooLong,
        ];
        for e in errors {
            let reply = e.reply();
            let status = reply
                .status()
                .expect("every error reply has an enhanced status");
            assert_eq!(
                u16::from(status.class()),
                reply.code().as_u16() / 100,
                "{e:?}"
            );
            assert!(!reply.code().is_positive_completion(), "{e:?}");
            assert!(!reply.text().is_empty(), "{e:?}");
        }
    }

    #[test]
    fn table_of_codes() {
        let table = [
            (Error::LineTooLong, "500 5.5.2"),
            (Error::UnknownCommand, "500 5.5.1"),
            (Error::InvalidReversePath, "501 5.1.7"),
            (Error::NullRecipient, "501 5.1.3"),
            (Error::UnknownParameter("X".into()), "555 5.5.4"),
            (Error::BadSequence("x"), "503 5.5.1"),
            (Error::Utf8NotAllowed, "553 5.6.7"),
            (Error::MessageTooBig, "552 5.3.4"),
            (Error::TooManyRecipients, "452 4.5.3"),
            (Error::BareLineEndingInData, "550 5.6.11"),
            (Error::AuthRequired, "530 5.7.0"),
            (Error::EncryptionRequired, "538 5.7.11"),
            (Error::UnsupportedMechanism, "504 5.5.4"),
            (Error::TooManyErrors, "421 4.7.0"),
            (Error::Timeout, "421 4.4.2"),
        ];
        for (e, prefix) in table {
            assert!(
                e.reply().to_string().starts_with(prefix),
                "{e:?}: {}",
                e.reply()
            );
        }
    }
}
