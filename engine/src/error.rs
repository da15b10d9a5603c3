//! The engine's one error type.

/// Why a context could not be built or a cluster reached.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A flag or URL that cannot work.
    #[error("{0}")]
    Config(String),
    /// The scheduler named by a `df://` URL does not answer.
    #[error("cannot reach the scheduler at {url}: {message}")]
    Unreachable {
        /// The URL the user gave.
        url: String,
        /// What connecting said.
        message: String,
    },
    /// Ballista refused a session.
    #[error("cluster: {0}")]
    Ballista(Box<ballista_core::error::BallistaError>),
    /// Building a session failed.
    #[error(transparent)]
    DataFusion(Box<datafusion::error::DataFusionError>),
}

impl From<datafusion::error::DataFusionError> for Error {
    fn from(e: datafusion::error::DataFusionError) -> Self {
        Error::DataFusion(Box::new(e))
    }
}

impl From<ballista_core::error::BallistaError> for Error {
    fn from(e: ballista_core::error::BallistaError) -> Self {
        Error::Ballista(Box::new(e))
    }
}

/// `Result` with the engine's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
