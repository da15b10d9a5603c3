#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

pub mod chain;
#[cfg(feature = "net")]
pub mod client;
pub mod codec;
#[cfg(feature = "net")]
pub mod config;
pub mod contracts;
pub mod crypto;
pub mod error;
pub mod ids;
#[cfg(feature = "net")]
pub mod load;
#[cfg(feature = "net")]
pub mod node;
pub mod pbft;
pub mod peer;
pub mod sigcheck;
#[cfg(feature = "sim")]
pub mod sim;
#[cfg(feature = "net")]
pub mod store;
#[cfg(feature = "net")]
pub mod tls;
pub mod token;
#[cfg(feature = "net")]
pub mod transport;
pub mod tx;

/// The generated protobuf types and tonic stubs of `proto/ledger.proto`.
#[cfg(feature = "net")]
#[allow(missing_docs, unreachable_pub, unused_qualifications, clippy::all)]
pub mod proto {
    tonic::include_proto!("emrflow.ledger.v1");
}

pub use error::{Error, Result};
/// The RFC 6962 trees and the digest type the ledger's blocks and log are built from (shared with
/// dataset fingerprints).
pub use merkle;
