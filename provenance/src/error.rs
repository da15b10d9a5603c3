//! The one error type of provenance. Messages say what failed and on what (a path, a root, a
//! role), never a value of a record. An error that arises while doing something larger keeps
//! that larger thing as context, outermost first, the way the binary prints it.

use std::fmt::Display;

/// Why a provenance operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The ledger (consensus, a peer, a receipt) failed.
    #[error(transparent)]
    Ledger(Box<ledger::Error>),
    /// A pipeline job, manifest, fingerprint or location failed.
    #[error(transparent)]
    Pipeline(Box<pipeline::Error>),
    /// Training, a model file or its parameters failed.
    #[error(transparent)]
    Ml(Box<ml::Error>),
    /// The query engine or a cluster could not be reached.
    #[error(transparent)]
    Engine(Box<engine::Error>),
    /// A query failed.
    #[error(transparent)]
    DataFusion(Box<engine::datafusion::error::DataFusionError>),
    /// A column could not be converted.
    #[error(transparent)]
    Arrow(Box<engine::datafusion::arrow::error::ArrowError>),
    /// An object store failed.
    #[error(transparent)]
    ObjectStore(Box<object_store::Error>),
    /// A local file (a key, an identity) could not be read or written.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A JSON file beside a dataset or model is not what it should be.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: String,
        /// What is wrong with it.
        message: String,
    },
    /// The ledger refused a transaction; the reason is the contract's.
    #[error("the ledger denied {what}: {reason}")]
    Denied {
        /// What was refused (an anchor, a registration, an access).
        what: String,
        /// The contract's reason.
        reason: String,
    },
    /// A dataset or model is not exactly what was anchored.
    #[error("{path} does not match its anchor ({}); run `emrflow verify {path}`", problems.join("; "))]
    Mismatch {
        /// The dataset or model.
        path: String,
        /// What differs.
        problems: Vec<String>,
    },
    /// A flag, a parameter or an argument that cannot work.
    #[error("{0}")]
    Invalid(String),
    /// An operation failed; `source` says why.
    #[error("{message}")]
    Context {
        /// What was being done.
        message: String,
        /// Why it failed.
        #[source]
        source: Box<Error>,
    },
}

/// `Result` with provenance's [`Error`].
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
    Ledger: ledger::Error,
    Pipeline: pipeline::Error,
    Ml: ml::Error,
    Engine: engine::Error,
    DataFusion: engine::datafusion::error::DataFusionError,
    Arrow: engine::datafusion::arrow::error::ArrowError,
    ObjectStore: object_store::Error,
);

impl From<merkle::Error> for Error {
    fn from(e: merkle::Error) -> Self {
        Error::Invalid(e.to_string())
    }
}

impl Error {
    /// An [`Error::Invalid`].
    pub fn invalid(message: impl Display) -> Self {
        Error::Invalid(message.to_string())
    }

    /// An [`Error::File`].
    pub(crate) fn file(path: impl Display, message: impl Display) -> Self {
        Error::File {
            path: path.to_string(),
            message: message.to_string(),
        }
    }

    /// Whether this error, or one it wraps, is a refusal by the ledger.
    pub fn is_denied(&self) -> bool {
        match self {
            Error::Denied { .. } => true,
            Error::Ledger(e) => e.is_denied(),
            Error::Context { source, .. } => source.is_denied(),
            _ => false,
        }
    }

    /// Whether this error, or one it wraps, is a ledger that did not answer or cannot commit.
    pub fn is_unavailable(&self) -> bool {
        match self {
            Error::Ledger(e) => e.is_unavailable(),
            Error::Context { source, .. } => source.is_unavailable(),
            _ => false,
        }
    }

    /// Whether this error, or one it wraps, is a mismatch against an anchor.
    pub fn is_mismatch(&self) -> bool {
        match self {
            Error::Mismatch { .. } => true,
            Error::Context { source, .. } => source.is_mismatch(),
            _ => false,
        }
    }
}

/// Adds what was being done to an error.
pub trait Context<T> {
    /// Wraps the error with `message`.
    fn context(self, message: impl Display) -> Result<T>;
    /// Wraps the error with a message made only when there is an error.
    fn with_context<M: Display>(self, message: impl FnOnce() -> M) -> Result<T>;
}

impl<T, E: Into<Error>> Context<T> for std::result::Result<T, E> {
    fn context(self, message: impl Display) -> Result<T> {
        self.map_err(|e| Error::Context {
            message: message.to_string(),
            source: Box::new(e.into()),
        })
    }

    fn with_context<M: Display>(self, message: impl FnOnce() -> M) -> Result<T> {
        self.map_err(|e| Error::Context {
            message: message().to_string(),
            source: Box::new(e.into()),
        })
    }
}
