//! Agreement (safety): no two correct peers hold different blocks at the same height — so no
//! two different batches commit at the same sequence number, and the executed states agree.

use std::collections::BTreeMap;

use crate::chain::Chain;
use crate::crypto::Digest;
use crate::ids::SeqNo;

/// The first block hash and batch digest seen at every height on a correct peer.
#[derive(Debug, Default)]
pub(crate) struct Agreement {
    seen: BTreeMap<SeqNo, (Digest, Digest, usize)>,
}

impl Agreement {
    /// Checks the blocks of `chain` above `from`.
    pub(crate) fn check(&mut self, node: usize, chain: &Chain, from: SeqNo) -> Result<(), String> {
        for h in (from.0 + 1)..=chain.height().0 {
            let Some(b) = chain.block(SeqNo(h)) else {
                return Err(format!("peer{node} has no block {h} below its height"));
            };
            let (hash, batch) = (b.header.hash(), b.header.batch);
            match self.seen.get(&SeqNo(h)) {
                None => {
                    self.seen.insert(SeqNo(h), (hash, batch, node));
                }
                Some((h0, b0, other)) => {
                    if *b0 != batch {
                        return Err(format!(
                            "agreement: peer{node} committed batch {batch:?} at #{h}, peer{other} committed {b0:?}"
                        ));
                    }
                    if *h0 != hash {
                        return Err(format!(
                            "agreement: peer{node} executed block {hash:?} at #{h}, peer{other} {h0:?}"
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}
