//! The pipeline's one error type. Every variant names what failed and where (file, line, column
//! or job-file key) and never carries a data value, because values may be PHI.

use datafusion::error::DataFusionError;

/// Result alias used across the pipeline crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while generating, preprocessing or publishing a dataset.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The job file could not be read.
    #[error("cannot read job file {path}: {source}")]
    JobRead {
        /// Job file path.
        path: String,
        /// Underlying IO error.
        source: std::io::Error,
    },
    /// The job file is not valid TOML for a job, or names an unknown key.
    #[error("invalid job file {path}: {message}")]
    JobParse {
        /// Job file path.
        path: String,
        /// What is wrong and where (line, key).
        message: String,
    },
    /// A parameter outside the job file (a generator setting) that cannot work.
    #[error("{name}: {message}")]
    Parameter {
        /// The parameter (`--visits`).
        name: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// The job file parsed but is inconsistent.
    #[error("invalid job: {field}: {message}")]
    JobInvalid {
        /// The job-file key at fault (`inputs.visits.path`, `normalize.zscore`, ...).
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// A column the job names does not exist where it is needed.
    #[error("column {column} named in {field} does not exist (available: {available})")]
    MissingColumn {
        /// Column name.
        column: String,
        /// The job-file key that names it.
        field: String,
        /// The columns that do exist.
        available: String,
    },
    /// An input location matches no file.
    #[error("input {input}: no such file: {location}")]
    InputMissing {
        /// Input name in the job file.
        input: String,
        /// The location given.
        location: String,
    },
    /// An input file holds no rows.
    #[error("input {input}: {path} is empty")]
    InputEmpty {
        /// Input name in the job file.
        input: String,
        /// File path.
        path: String,
    },
    /// A CSV file could not be parsed; the position is exact, the value is never shown.
    #[error("{path}:{line}: {message}")]
    Csv {
        /// File path.
        path: String,
        /// 1-based line number.
        line: u64,
        /// What is wrong (field count, type of a named column, encoding).
        message: String,
    },
    /// A line of an NDJSON file (a FHIR export) is not a resource of its file's type; the
    /// position is exact, the value is never shown.
    #[error("{path}:{line}: {message}")]
    Ndjson {
        /// File path.
        path: String,
        /// 1-based line number.
        line: u64,
        /// What is wrong.
        message: String,
    },
    /// The pseudonymization key could not be obtained.
    #[error("pseudonym key missing: {0}")]
    KeyMissing(String),
    /// The output guard found PII in what was about to be published.
    #[error("PII guard: {0}")]
    PiiGuard(String),
    /// The output location already holds something and `--overwrite` was not given.
    #[error("output {0} already exists (use --overwrite to replace it)")]
    OutputExists(String),
    /// A location string is not a usable path or URL.
    #[error("invalid location {location}: {message}")]
    Location {
        /// The location given.
        location: String,
        /// Why it is unusable.
        message: String,
    },
    /// The label column is unusable.
    #[error("label column {column}: {message}")]
    Label {
        /// Label column.
        column: String,
        /// What is wrong.
        message: String,
    },
    /// A value at prediction time was not seen when the encoding was fitted.
    #[error("column {column}: category not seen when the dataset was built ({count} rows)")]
    UnknownCategory {
        /// Column name.
        column: String,
        /// How many rows carry such a value.
        count: u64,
    },
    /// A manifest could not be parsed.
    #[error("invalid manifest {path}: {source}")]
    Manifest {
        /// Manifest path.
        path: String,
        /// JSON error.
        source: serde_json::Error,
    },
    /// A manifest was written by an incompatible version.
    #[error("manifest {path} has format version {found}, this build reads version 1")]
    ManifestVersion {
        /// Manifest path.
        path: String,
        /// The version found.
        found: u32,
    },
    /// A dataset could not be fingerprinted, or a fingerprint or proof is malformed.
    #[error("fingerprint: {0}")]
    Fingerprint(String),
    /// Local IO failed.
    #[error("{path}: {source}")]
    Io {
        /// The path being read or written.
        path: String,
        /// Underlying IO error.
        source: std::io::Error,
    },
    /// The query engine failed.
    #[error(transparent)]
    DataFusion(Box<DataFusionError>),
    /// Arrow failed.
    #[error(transparent)]
    Arrow(#[from] arrow::error::ArrowError),
    /// Parquet failed.
    #[error(transparent)]
    Parquet(#[from] parquet::errors::ParquetError),
    /// The object store failed.
    #[error(transparent)]
    ObjectStore(#[from] object_store::Error),
}

impl From<DataFusionError> for Error {
    /// Errors of ours that crossed DataFusion as `External` come back as themselves.
    fn from(e: DataFusionError) -> Self {
        match e {
            DataFusionError::External(inner) => match inner.downcast::<Error>() {
                Ok(ours) => *ours,
                Err(other) => Error::DataFusion(Box::new(DataFusionError::External(other))),
            },
            DataFusionError::Context(ctx, inner) => match Error::from(*inner) {
                Error::DataFusion(inner) => {
                    Error::DataFusion(Box::new(DataFusionError::Context(ctx, inner)))
                }
                ours => ours,
            },
            other => Error::DataFusion(Box::new(other)),
        }
    }
}

impl From<Error> for DataFusionError {
    fn from(e: Error) -> Self {
        match e {
            Error::DataFusion(inner) => *inner,
            other => DataFusionError::External(Box::new(other)),
        }
    }
}

impl Error {
    pub(crate) fn io(path: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::JobInvalid {
            field: field.into(),
            message: message.into(),
        }
    }
}
