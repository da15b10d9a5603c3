//! Record-level proofs against a dataset root: an inclusion proof when the record is in the
//! dataset, a non-membership proof (its two sorted neighbours) when it is not, and the check of
//! either with nothing but the root. Datasets may live on any store.

use engine::Engine;
use ledger::contracts::Access;
use merkle::Digest;
use pipeline::fingerprint::{self, Membership, Proof, Record};
use serde::Serialize;

use crate::anchor::AnchorFile;
use crate::artifact::Artifact;
use crate::connection::{Accessor, Provenance};
use crate::error::Result;

/// A proof and whether it leads to the root anchored beside the dataset.
#[derive(Debug)]
pub struct Proved {
    /// The proof.
    pub proof: Proof,
    /// `Some(true)` when the proof's root is the anchored root (the query was then audited),
    /// `Some(false)` when it is not, `None` when the dataset has no anchor.
    pub anchored: Option<bool>,
}

/// Proves that `record` (one row as the dataset stores it) is, or is not, in the dataset at
/// `dataset`. Proving reads the dataset: when it is anchored, the query is audited as `by`'s.
pub async fn prove(
    engine: &Engine,
    dataset: &str,
    record: &Record,
    provenance: &Provenance,
    by: Accessor<'_>,
) -> Result<Proved> {
    let ctx = engine.context().await?;
    let df = fingerprint::read_dataset(&ctx, dataset).await?;
    let proof = fingerprint::prove(df, record).await?;
    let artifact = Artifact::resolve(&ctx, dataset)?;
    let anchored = match AnchorFile::read(&artifact).await? {
        None => None,
        Some(anchor) if anchor.root != proof.root => Some(false),
        Some(anchor) => {
            provenance
                .record_access_by(by, anchor.root, Access::Query, "prove")
                .await?;
            Some(true)
        }
    };
    Ok(Proved { proof, anchored })
}

/// The result of checking a proof.
#[derive(Debug, Serialize)]
pub struct Checked {
    /// Whether the proof is valid (of either kind).
    pub valid: bool,
    /// What it proves, when valid.
    pub membership: Option<Membership>,
    /// The root it was checked against.
    pub root: String,
    /// Why it is invalid.
    pub reason: Option<String>,
}

/// Checks a proof file's bytes against `root`, with nothing else.
pub fn check_proof(bytes: &[u8], origin: &str, root: &Digest) -> Result<Checked> {
    let proof = Proof::from_json(bytes, origin)?;
    let result = proof.verify(&root.0);
    Ok(Checked {
        valid: result.is_ok(),
        membership: result.as_ref().ok().copied(),
        root: root.to_hex(),
        reason: result.err(),
    })
}
