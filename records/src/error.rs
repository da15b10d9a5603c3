//! The one error type of records. Messages name the patient (by the id the user typed, or by a
//! pseudonym prefix), the record, the field, the grant or the file at fault, never a value of a
//! record.

use std::fmt::Display;
use std::path::Path;

/// Why a record operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Publishing, anchoring, the ledger connection or an identity failed.
    #[error(transparent)]
    Provenance(Box<provenance::Error>),
    /// Reading a job or its inputs failed.
    #[error(transparent)]
    Pipeline(Box<pipeline::Error>),
    /// The ledger (a peer, a receipt) failed.
    #[error(transparent)]
    Ledger(Box<ledger::Error>),
    /// The query engine failed reading an input.
    #[error(transparent)]
    DataFusion(Box<engine::datafusion::error::DataFusionError>),
    /// A column could not be converted to text.
    #[error(transparent)]
    Arrow(Box<engine::datafusion::arrow::error::ArrowError>),
    /// The store's database failed.
    #[error("record store {path}: {message}")]
    Store {
        /// The database file.
        path: String,
        /// What failed.
        message: String,
    },
    /// A local file could not be read or written.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The store holds something it cannot open or decode.
    #[error("the record store is damaged: {0}")]
    Corrupt(String),
    /// The ledger's contract refused; nothing was returned or written.
    #[error("the ledger denied {what}: {reason}")]
    Denied {
        /// What was refused.
        what: String,
        /// The contract's reason.
        reason: String,
    },
    /// No such patient in the store, or no longer (erased).
    #[error("{0}")]
    NotFound(String),
    /// The ledger could not commit in time (too few peers reachable): nothing was decided,
    /// done or returned; the same request may be tried again later.
    #[error("{0}")]
    Unavailable(String),
    /// A record does not verify against its anchored batch.
    #[error("{0}")]
    Unverified(String),
    /// A flag, a parameter or an argument that cannot work.
    #[error("{0}")]
    Invalid(String),
}

/// `Result` with records' [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

macro_rules! boxed_from {
    ($($variant:ident: $ty:ty),* $(,)?) => {
        $(impl From<$ty> for Error {
            fn from(e: $ty) -> Self {
                Error::$variant(Box::new(e))
            }
        })*
    };
}

boxed_from!(
    Provenance: provenance::Error,
    Pipeline: pipeline::Error,
    Ledger: ledger::Error,
    DataFusion: engine::datafusion::error::DataFusionError,
    Arrow: engine::datafusion::arrow::error::ArrowError,
);

impl From<engine::Error> for Error {
    fn from(e: engine::Error) -> Self {
        Error::Provenance(Box::new(e.into()))
    }
}

impl Error {
    pub(crate) fn store(path: &Path, e: impl Display) -> Self {
        Error::Store {
            path: path.display().to_string(),
            message: e.to_string(),
        }
    }

    /// Whether the ledger refused.
    pub fn is_denied(&self) -> bool {
        match self {
            Error::Denied { .. } => true,
            Error::Provenance(p) => p.is_denied(),
            Error::Ledger(e) => e.is_denied(),
            _ => false,
        }
    }

    /// Whether the ledger could not commit: nothing was done, and trying later may succeed.
    pub fn is_unavailable(&self) -> bool {
        match self {
            Error::Unavailable(_) => true,
            Error::Ledger(e) => e.is_unavailable(),
            _ => false,
        }
    }

    /// Whether a record failed its check against the ledger.
    pub fn is_unverified(&self) -> bool {
        matches!(self, Error::Unverified(_))
    }
}
