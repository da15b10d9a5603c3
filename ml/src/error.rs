//! The crate's one error type. Every fallible function in `ml` returns [`Result`]; errors from
//! DataFusion and Arrow are wrapped, and errors raised inside a DataFusion function (a UDF or the
//! histogram UDAF) travel through DataFusion as `DataFusionError::External` and are recovered
//! here by downcasting, so callers see the original variant. This module defines errors only; it
//! never prints or decides exit codes.

use datafusion::arrow::error::ArrowError;
use datafusion::error::DataFusionError;

/// Everything that can go wrong while validating, training, evaluating or applying a model.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A training parameter is out of range or inconsistent.
    #[error("invalid parameter {name}: {reason}")]
    InvalidParam {
        /// The parameter's name as users spell it (`max_depth`, `max_bins`, ...).
        name: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The dataset has no rows (or none left in the training split).
    #[error("empty dataset: {what}")]
    EmptyDataset {
        /// Which set is empty.
        what: String,
    },
    /// A column the dataset spec names is not in the data.
    #[error("column {column} not found ({role}); available columns: {available}")]
    MissingColumn {
        /// The column name.
        column: String,
        /// Why it was needed (`label`, `feature`, `row key`, `weight`).
        role: &'static str,
        /// The columns that do exist, comma separated.
        available: String,
    },
    /// The label is not a binary 0/1 column.
    #[error("label column {column} is not binary: {reason}")]
    LabelNotBinary {
        /// The label column.
        column: String,
        /// What was found.
        reason: String,
    },
    /// The label has only one class, so there is nothing to learn.
    #[error(
        "label column {column} has only class {class} ({rows} rows); a classifier needs both 0 and 1"
    )]
    SingleClass {
        /// The label column.
        column: String,
        /// The one class present.
        class: u8,
        /// How many rows there are.
        rows: u64,
    },
    /// A feature column holds no value at all.
    #[error("feature column {column} is null in all {rows} rows")]
    AllNullFeature {
        /// The feature column.
        column: String,
        /// How many rows there are.
        rows: u64,
    },
    /// A column has a type the trainer cannot use in its role.
    #[error("column {column} has type {data_type}, which cannot be used as {role}")]
    ColumnType {
        /// The column name.
        column: String,
        /// The Arrow type found.
        data_type: String,
        /// The role it was meant to play.
        role: &'static str,
    },
    /// A categorical feature holds an index outside `0..categories`.
    #[error("categorical feature {column} holds index {value}, outside 0..{categories}")]
    CategoryOutOfRange {
        /// The feature column.
        column: String,
        /// The offending index.
        value: i64,
        /// The declared number of categories.
        categories: u32,
    },
    /// The weight column holds a negative, non-finite or null weight.
    #[error("weight column {column} {reason}")]
    BadWeight {
        /// The weight column.
        column: String,
        /// What was found.
        reason: String,
    },
    /// A function argument that must be a literal (the per-pass spec) was not one, or could not
    /// be decoded.
    #[error("function {function}: {reason}")]
    FunctionArgument {
        /// The function name (`ml_tree_histogram`, ...).
        function: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A model file could not be read, parsed or is of an unsupported version.
    #[error("model {path}: {reason}")]
    Model {
        /// Where the model came from.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// A row given to `predict` does not have the model's features.
    #[error("prediction input: {reason}")]
    PredictInput {
        /// What is wrong.
        reason: String,
    },
    /// Writing or reading an artifact failed.
    #[error("cannot {action} {path}")]
    Io {
        /// What was being done (`write`, `read`, `create directory`).
        action: &'static str,
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// JSON (de)serialization of a model, spec or report failed.
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
    /// DataFusion failed for a reason of its own.
    #[error(transparent)]
    DataFusion(Box<DataFusionError>),
    /// Arrow failed.
    #[error(transparent)]
    Arrow(#[from] Box<ArrowError>),
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<DataFusionError> for Error {
    /// Recovers an `ml` error that crossed DataFusion as `External`, wherever DataFusion wrapped
    /// it (contexts, shared errors); everything else stays a DataFusion error.
    fn from(err: DataFusionError) -> Self {
        match err {
            DataFusionError::External(inner) => match inner.downcast::<Error>() {
                Ok(e) => *e,
                Err(other) => Error::DataFusion(Box::new(DataFusionError::External(other))),
            },
            DataFusionError::Context(_, inner) => Error::from(*inner),
            DataFusionError::Shared(shared) => match Self::find_ml_error(&shared) {
                Some(e) => e,
                None => Error::DataFusion(Box::new(DataFusionError::Shared(shared))),
            },
            DataFusionError::ArrowError(inner, _) => Error::Arrow(inner),
            other => Error::DataFusion(Box::new(other)),
        }
    }
}

impl From<ArrowError> for Error {
    fn from(err: ArrowError) -> Self {
        Error::Arrow(Box::new(err))
    }
}

impl Error {
    /// Wraps this error so it can cross a DataFusion function boundary.
    pub(crate) fn into_datafusion(self) -> DataFusionError {
        DataFusionError::External(Box::new(self))
    }

    /// Rebuilds an `ml` error found inside a shared DataFusion error (errors of a plan that
    /// several partitions report at once arrive shared).
    fn find_ml_error(err: &DataFusionError) -> Option<Error> {
        match err {
            DataFusionError::External(inner) => inner.downcast_ref::<Error>().map(Error::rebuild),
            DataFusionError::Context(_, inner) => Self::find_ml_error(inner),
            DataFusionError::Shared(inner) => Self::find_ml_error(inner),
            _ => None,
        }
    }

    /// A copy of the variants that can be raised inside DataFusion functions.
    fn rebuild(&self) -> Error {
        match self {
            Error::CategoryOutOfRange {
                column,
                value,
                categories,
            } => Error::CategoryOutOfRange {
                column: column.clone(),
                value: *value,
                categories: *categories,
            },
            Error::BadWeight { column, reason } => Error::BadWeight {
                column: column.clone(),
                reason: reason.clone(),
            },
            Error::FunctionArgument { function, reason } => Error::FunctionArgument {
                function,
                reason: reason.clone(),
            },
            other => Error::FunctionArgument {
                function: "ml",
                reason: other.to_string(),
            },
        }
    }
}
