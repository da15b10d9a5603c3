//! Validity: only transactions that a client signed and submitted ever commit; forged or
//! altered requests injected by a Byzantine peer never do, and a request committed again (a
//! replay) never takes effect a second time.

use std::collections::BTreeSet;

use crate::chain::Chain;
use crate::contracts::Position;
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
            for (i, (tx, outcome)) in b.txs.iter().zip(&b.outcomes).enumerate() {
                let id = tx.digest();
                let here = Position {
                    seq: SeqNo(h),
                    index: i as u32,
                };
                if chain.position(&id) != Some(here) && !outcome.is_replay() {
                    return Err(format!(
                        "validity: peer{node} executed tx {id:?} again at #{h} \
                         without denying it as a replay: {outcome:?}"
                    ));
                }
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
