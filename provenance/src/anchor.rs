//! The receipt kept beside every published dataset and model (`anchor.json`), model roots, and
//! what produced an anchor.

use ledger::chain::{Genesis, Receipt};
use ledger::contracts::{AnchorKind, AnchorSpec, Call};
use merkle::Digest;
use serde::{Deserialize, Serialize};

use crate::artifact::Artifact;
use crate::error::{Error, Result};

/// The receipt file kept beside a published dataset or model.
pub const ANCHOR_FILE: &str = "anchor.json";
const ANCHOR_FORMAT: &str = "emrflow.anchor";

/// What produced an anchor: the build's version.
pub const CODE_VERSION: &str = concat!("emrflow ", env!("CARGO_PKG_VERSION"));

/// The receipt file kept beside an anchored dataset or model.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnchorFile {
    /// `emrflow.anchor`.
    pub format: String,
    /// 1.
    pub version: u32,
    /// Dataset or model.
    pub kind: AnchorKind,
    /// The anchored root.
    pub root: Digest,
    /// The ledger's id (genesis hash).
    pub ledger: Digest,
    /// Models: the root of the dataset they were trained on (bound into the model root).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset_root: Option<Digest>,
    /// The ledger's receipt of the anchor transaction.
    pub receipt: Receipt,
}

impl AnchorFile {
    /// The receipt file of an anchor made on the ledger of `genesis`.
    pub fn new(
        kind: AnchorKind,
        root: Digest,
        dataset_root: Option<Digest>,
        genesis: &Genesis,
        receipt: Receipt,
    ) -> Self {
        Self {
            format: ANCHOR_FORMAT.to_string(),
            version: 1,
            kind,
            root,
            ledger: genesis.hash(),
            dataset_root,
            receipt,
        }
    }

    /// Pretty JSON with a final newline.
    pub fn to_json(&self) -> Result<Vec<u8>> {
        let mut out = serde_json::to_vec_pretty(self)
            .map_err(|e| Error::invalid(format!("cannot encode {ANCHOR_FILE}: {e}")))?;
        out.push(b'\n');
        Ok(out)
    }

    /// Parses a receipt file; `origin` names it in errors.
    pub fn from_json(bytes: &[u8], origin: &str) -> Result<Self> {
        let file: AnchorFile = serde_json::from_slice(bytes)
            .map_err(|e| Error::file(origin, format!("not an anchor receipt: {e}")))?;
        if file.format != ANCHOR_FORMAT || file.version != 1 {
            return Err(Error::file(
                origin,
                format!("not an {ANCHOR_FORMAT} version 1 file"),
            ));
        }
        Ok(file)
    }

    /// Reads `DIR/anchor.json`; `Ok(None)` when there is none.
    pub async fn read(dir: &Artifact) -> Result<Option<Self>> {
        match dir.read(ANCHOR_FILE).await? {
            None => Ok(None),
            Some(bytes) => Self::from_json(&bytes, &dir.child_name(ANCHOR_FILE)).map(Some),
        }
    }

    /// Checks the receipt offline against `genesis`, and that it anchors this file's root.
    pub fn check(&self, genesis: &Genesis) -> Result<AnchorSpec> {
        if self.ledger != genesis.hash() {
            return Err(Error::invalid(format!(
                "anchored on ledger {}, not on this one ({}); pass --ledger",
                self.ledger,
                genesis.hash()
            )));
        }
        self.receipt.verify(genesis).map_err(|e| {
            Error::invalid(format!(
                "the anchor receipt does not verify against the ledger's genesis: {e}"
            ))
        })?;
        let body = self.receipt.tx.body()?;
        match body.call {
            Call::Anchor(spec) if spec.root == self.root && spec.kind == self.kind => {
                if !self.receipt.outcome.is_accepted() {
                    return Err(Error::invalid("the receipt records a denied anchor"));
                }
                Ok(spec)
            }
            _ => Err(Error::invalid(format!(
                "the receipt is not the anchor of {}",
                self.root
            ))),
        }
    }
}

/// A model's root (see `pipeline::fingerprint::model_root`): its canonical parts, bound to its
/// hyperparameters and to the root of the dataset it was trained on.
pub fn model_root(model: &ml::Model, dataset_root: &Digest) -> Result<Digest> {
    let parts = model.canonical_parts()?;
    Ok(Digest(pipeline::fingerprint::model_root(
        &model.params_hash()?,
        &dataset_root.0,
        &parts,
    )))
}
