#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

pub mod chain;
pub mod codec;
pub mod contracts;
pub mod crypto;
pub mod error;
pub mod ids;
pub mod merkle;
pub mod pbft;
pub mod peer;
#[cfg(feature = "sim")]
pub mod sim;
pub mod tx;

pub use error::{Error, Result};
