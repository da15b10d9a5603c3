#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

pub mod cluster;
mod error;
pub mod functions;
pub mod session;

/// The DataFusion every emrflow crate is built on.
pub use datafusion;
pub use error::{Error, Result};
pub use session::{Engine, embedded_context};
