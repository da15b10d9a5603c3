//! Validity: only transactions that a client signed and submitted ever commit; forged or
//! altered requests injected by a Byzantine peer never do.

use std::collections::BTreeSet;

use crate::chain::Chain;
use crate::crypto::Digest;
use crate::ids::SeqNo;

/// The ids of every transaction clients submitted.
#[derive(Debug, Default)]
pub(crate) struct Validity {
    pub(crate) submitted: BTreeSet<Digest>,
}

impl Validity {
    /// Checks the transactions of the blocks of `chain` above `from`.
    pub(crate) fn check(&self, node: usize, chain: &Chain, from: SeqNo) -> Result<(), String> {
        for h in (from.0 + 1)..=chain.height().0 {
            let Some(b) = chain.block(SeqNo(h)) else {
                continue;
            };
            for tx in &b.txs {
                let id = tx.digest();
                if !tx.verify() {
                    return Err(format!(
                        "validity: peer{node} committed unsigned tx {id:?} at #{h}"
                    ));
                }
                if !self.submitted.contains(&id) {
                    return Err(format!(
                        "validity: peer{node} committed unsubmitted tx {id:?} at #{h}"
                    ));
                }
            }
        }
        Ok(())
    }
}
