#![doc = include_str!("../README.md")]
#![warn(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::panic))]

mod digest;
mod frontier;
mod rfc6962;

pub use digest::{Digest, Hash32, fixed_bytes};
pub use frontier::Frontier;
pub use rfc6962::{
    Node, all_inclusion_proofs, consistency_proof, empty_root, inclusion_proof, leaf_hash,
    multi_proof, node_hash, root, root_from_multi_proof, verify_consistency, verify_inclusion,
    verify_multi_proof,
};

/// Why a digest could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Text that is not hex of the right length.
    #[error("{text:?} is not a 64-digit hex digest: {reason}")]
    NotADigest {
        /// The text, shortened when long.
        text: String,
        /// What is wrong with it.
        reason: String,
    },
}
