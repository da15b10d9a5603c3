//! The ledger's one error type. Owns the failure vocabulary of the crate; it must not carry
//! invalid or stale protocol messages, which the PBFT core drops with a trace instead.

use std::path::PathBuf;

use crate::ids::SeqNo;

/// Everything that can fail in the ledger's library code.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A value could not be encoded or decoded in the canonical binary form.
    #[error("codec: {0}")]
    Codec(#[from] postcard::Error),
    /// A JSON document (genesis, config, receipt) could not be read or written.
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
    /// A file could not be read or written.
    #[error("io on {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A key, signature or hash had the wrong length or was not valid hex.
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// What was being parsed.
        what: &'static str,
        /// Why it was rejected.
        reason: String,
    },
    /// A receipt, block, certificate or proof did not verify.
    #[error("verification failed: {0}")]
    Verification(String),
    /// The chain on disk or in memory is not what was certified at the given height.
    #[error("chain is corrupt at block {seq}: {reason}")]
    CorruptChain {
        /// The first bad block.
        seq: SeqNo,
        /// What is wrong with it.
        reason: String,
    },
    /// The signer may not do what it asked (a query its role does not allow, an unknown or
    /// revoked identity).
    #[error("denied: {0}")]
    Denied(String),
    /// The peer is saturated (a bounded queue is full); try again or another peer.
    #[error("busy: {0}")]
    Busy(String),
    /// A local invariant broke: the replica's own state disagrees with a quorum.
    #[error("local invariant broken: {0}")]
    Invariant(String),
    /// The configuration is not usable.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The embedded store failed.
    #[cfg(feature = "net")]
    #[error("store: {0}")]
    Store(Box<redb::Error>),
    /// A gRPC call failed.
    #[cfg(feature = "net")]
    #[error("rpc: {0}")]
    Rpc(Box<tonic::Status>),
    /// The gRPC transport could not connect or serve.
    #[cfg(feature = "net")]
    #[error("transport: {0}")]
    Transport(Box<tonic::transport::Error>),
    /// The node or the cluster stopped before the request finished.
    #[error("ledger node stopped: {0}")]
    Stopped(String),
    /// A request did not complete in time.
    #[error("timed out: {0}")]
    Timeout(String),
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Whether the ledger refused the request (a query its signer may not ask), locally or as a
    /// peer's answer.
    pub fn is_denied(&self) -> bool {
        match self {
            Error::Denied(_) => true,
            #[cfg(feature = "net")]
            Error::Rpc(s) => s.code() == tonic::Code::PermissionDenied,
            _ => false,
        }
    }

    /// Whether the ledger could not be reached or could not commit in time (too few peers up,
    /// a peer busy or stopped), as opposed to a refusal or a bad request: the caller may try
    /// again later, and nothing was decided.
    pub fn is_unavailable(&self) -> bool {
        match self {
            Error::Stopped(_) | Error::Timeout(_) | Error::Busy(_) => true,
            #[cfg(feature = "net")]
            Error::Transport(_) => true,
            #[cfg(feature = "net")]
            Error::Rpc(s) => matches!(
                s.code(),
                tonic::Code::Unavailable
                    | tonic::Code::DeadlineExceeded
                    | tonic::Code::ResourceExhausted
                    | tonic::Code::Cancelled
                    | tonic::Code::Aborted
            ),
            _ => false,
        }
    }

    /// An [`Error::Io`] on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}

#[cfg(feature = "net")]
macro_rules! store_from {
    ($($t:ty),*) => {$(
        impl From<$t> for Error {
            fn from(e: $t) -> Self {
                Self::Store(Box::new(e.into()))
            }
        }
    )*};
}
#[cfg(feature = "net")]
store_from!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

#[cfg(feature = "net")]
impl From<tonic::Status> for Error {
    fn from(e: tonic::Status) -> Self {
        Self::Rpc(Box::new(e))
    }
}

#[cfg(feature = "net")]
impl From<tonic::transport::Error> for Error {
    fn from(e: tonic::transport::Error) -> Self {
        Self::Transport(Box::new(e))
    }
}

impl From<merkle::Error> for Error {
    fn from(e: merkle::Error) -> Self {
        Error::Invalid {
            what: "digest",
            reason: e.to_string(),
        }
    }
}
