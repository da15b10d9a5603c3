#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

pub mod anchor;
pub mod artifact;
pub mod audit;
pub mod check;
pub mod connection;
pub mod demo;
mod error;
pub mod lineage;
pub mod proof;
pub mod publish;
pub mod score;
pub mod train;

pub use anchor::{ANCHOR_FILE, AnchorFile, CODE_VERSION, model_root};
pub use check::{Check, Verdict, check_dataset, check_model, verify};
pub use connection::{Accessor, LedgerConfig, Provenance, emrflow_home};
pub use error::{Context, Error, Result};
pub use publish::{Published, publish_dataset};
pub use score::{Contribution, Predictions, RowPrediction, predict};
pub use train::{TrainConfig, Trained, train_model};

/// The fingerprint of the Parquet dataset at `location` (a directory, a file or a URL), on
/// `engine`. It reads no ledger; [`verify`] compares with an anchor.
pub async fn fingerprint(
    engine: &engine::Engine,
    location: &str,
) -> Result<pipeline::fingerprint::Fingerprint> {
    let ctx = engine.context().await?;
    let df = pipeline::fingerprint::read_dataset(&ctx, location).await?;
    Ok(pipeline::fingerprint::fingerprint(df).await?)
}
