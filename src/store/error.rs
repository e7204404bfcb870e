//! The errors every Store backend reports.

use super::types::{LeaseId, Revision};

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The requested revision is older than the compact revision: its history is gone. A watcher
    /// re-lists and watches from the list's revision + 1.
    #[error("revision has been compacted (compact revision {compact_revision})")]
    Compacted { compact_revision: Revision },
    /// The requested revision has not happened yet.
    #[error("revision {requested} is in the future")]
    FutureRevision { requested: Revision },
    /// The lease does not exist (never granted, revoked, or expired).
    #[error("lease {0} not found")]
    LeaseNotFound(LeaseId),
    /// A transaction list (compares, success or failure) is longer than the backend accepts.
    #[error("transaction has too many operations: {ops} (at most {max})")]
    TooManyOps { ops: usize, max: usize },
    /// A transaction the store rejects as a whole, e.g. one writing the same key twice.
    #[error("invalid transaction: {0}")]
    InvalidTxn(String),
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The backend cannot be reached (connection refused, timeout, no leader). Retryable.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// Any other backend failure.
    #[error("store backend error: {0}")]
    Backend(String),
    /// The store was closed.
    #[error("store is closed")]
    Closed,
    /// A store spec string that does not parse.
    #[error("invalid store URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    /// A store configuration that cannot be used (missing data dir, unreadable TLS file, …).
    #[error("store configuration: {0}")]
    Config(String),
}

impl StoreError {
    /// Whether retrying the same call later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}
