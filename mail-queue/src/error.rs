//! The crate's error type.

use smtp_proto::{EnhancedStatus, Reply, ReplyCode};

/// Everything that can go wrong in the queue. Each error means the message is *not*
/// durable: a server must answer `451 4.3.0` (see [`QueueError::reply`]), never `250`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QueueError {
    /// A file operation failed (the disk is full, a permission is wrong, ...).
    #[error("queue I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The sled backend failed.
    #[error("sled error: {0}")]
    Sled(#[from] sled::Error),
    /// The redb backend failed.
    #[error("redb error")]
    Redb(#[from] redb::Error),
    /// Stored metadata could not be decoded.
    #[error("corrupt queue record")]
    Corrupt(#[from] postcard::Error),
    /// A body in the spool does not match its checksum or is missing.
    #[error("spool record of {0} is damaged or missing")]
    DamagedBody(crate::QueueId),
    /// The committer thread is gone (the queue is shutting down).
    #[error("the queue is closed")]
    Closed,
}

impl QueueError {
    /// The reply a server gives when a message could not be queued: a temporary local
    /// error, so the client keeps the message and retries.
    pub fn reply(&self) -> Reply {
        let code = ReplyCode::LOCAL_ERROR;
        let status = EnhancedStatus::SYSTEM_TEMPORARY;
        match self {
            Self::Io(e) if e.raw_os_error() == Some(28) => Reply::new(
                ReplyCode::INSUFFICIENT_STORAGE,
                EnhancedStatus::new(4, 3, 1).unwrap_or(status),
                "Insufficient system storage; try again later",
            ),
            _ => Reply::new(
                code,
                status,
                "Local error in processing; message not accepted, try again later",
            ),
        }
    }
}

macro_rules! redb_errors {
    ($($t:ty),*) => {$(
        impl From<$t> for QueueError {
            fn from(e: $t) -> Self {
                Self::Redb(redb::Error::from(e))
            }
        }
    )*};
}
redb_errors!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);
