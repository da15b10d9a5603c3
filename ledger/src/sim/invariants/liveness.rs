//! Liveness: once every fault has healed, every submitted transaction commits on every correct
//! peer with its block certified (so every peer can serve its receipt), and their heads meet,
//! within a bounded stretch of virtual time.

use std::collections::BTreeSet;

use crate::chain::Chain;
use crate::crypto::Digest;
use crate::ids::Time;

/// Virtual milliseconds allowed between the last heal and full progress.
pub(crate) const LIVENESS_BOUND_MS: u64 = 60_000;

/// Tracks when faults healed.
#[derive(Debug, Default)]
pub(crate) struct Liveness {
    pub(crate) healed_at: Time,
}

impl Liveness {
    /// Whether every correct chain holds every submitted transaction and all heads agree.
    pub(crate) fn done(
        submitted: &BTreeSet<Digest>,
        chains: impl Iterator<Item = impl std::ops::Deref<Target = Chain>>,
    ) -> bool {
        let mut head = None;
        for c in chains {
            // Committed is not enough: a peer serves a transaction's receipt only once it holds
            // the certificate of the transaction's block.
            if submitted
                .iter()
                .any(|id| c.position(id).and_then(|p| c.certificate(p.seq)).is_none())
            {
                return false;
            }
            let h = (c.height(), c.head_hash());
            if head.is_some_and(|x| x != h) {
                return false;
            }
            head = Some(h);
        }
        true
    }

    /// Fails when the bound has passed.
    pub(crate) fn check(&self, now: Time, done: bool) -> Result<(), String> {
        if !done && now > self.healed_at.plus(LIVENESS_BOUND_MS) {
            return Err(format!(
                "liveness: not every correct peer committed everything {LIVENESS_BOUND_MS} ms after faults healed (at {} ms)",
                self.healed_at.0
            ));
        }
        Ok(())
    }
}
