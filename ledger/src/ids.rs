//! Identifier newtypes named after Castro & Liskov (replica `i`, view `v`, sequence number `n`)
//! plus virtual time. It owns no logic beyond arithmetic on them; mixing them up fails to compile:
//!
//! ```compile_fail
//! use ledger::ids::{SeqNo, View};
//! let v: View = SeqNo(3); // a sequence number is not a view
//! ```

use serde::{Deserialize, Serialize};

/// The default number of peers, `n = 3f + 1`.
pub const DEFAULT_N: usize = 4;
/// The Byzantine faults tolerated by [`DEFAULT_N`] peers.
pub const DEFAULT_F: usize = max_faulty(DEFAULT_N);
/// The quorum for [`DEFAULT_N`] peers, `2f + 1`.
pub const DEFAULT_QUORUM: usize = quorum(DEFAULT_N);

/// The largest `f` with `n >= 3f + 1` (paper §2).
pub const fn max_faulty(n: usize) -> usize {
    n.saturating_sub(1) / 3
}

/// The smallest quorum `q` for which any two quorums share at least `f + 1` replicas, so at
/// least one correct one (paper §4.2): `2q - n >= f + 1`, i.e. `q = ⌊(n + f) / 2⌋ + 1`. For
/// `n = 3f + 1` this is `2f + 1`; for any other `n` it stays safe where `2f + 1` would not
/// (six peers with `2f + 1 = 3` would let two disjoint halves both commit).
pub const fn quorum(n: usize) -> usize {
    (n + max_faulty(n)) / 2 + 1
}

/// Whether `n` is exactly `3f + 1` for some `f >= 1`: the only sizes the ledger accepts, since
/// any other size pays for more peers without tolerating more faults.
pub const fn is_three_f_plus_one(n: usize) -> bool {
    n >= 4 && (n - 1).is_multiple_of(3)
}

/// A replica (peer) index `i` in `0..n`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
pub struct ReplicaId(pub u32);

/// A view number `v`; the primary of view `v` is `v mod n` (paper §4.1).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
pub struct View(pub u64);

/// A sequence number `n` assigned by the primary; it is also the block height.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
pub struct SeqNo(pub u64);

/// Milliseconds on the clock the host (or the simulator) feeds in; the core has no clock.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
pub struct Time(pub u64);

impl View {
    /// The primary of this view among `n` replicas: `p = v mod |R|` (paper §4.1).
    pub fn primary(self, n: usize) -> ReplicaId {
        let n = n.max(1) as u64;
        ReplicaId((self.0 % n) as u32)
    }

    /// The next view (saturating: a view number near `u64::MAX` can only come from a faulty
    /// peer, and must not overflow).
    pub fn next(self) -> Self {
        Self(self.0.saturating_add(1))
    }
}

impl SeqNo {
    /// The next sequence number (saturating, like [`View::next`]).
    pub fn next(self) -> Self {
        Self(self.0.saturating_add(1))
    }
}

impl Time {
    /// `self + ms`, saturating.
    pub fn plus(self, ms: u64) -> Self {
        Self(self.0.saturating_add(ms))
    }
}

impl std::fmt::Display for ReplicaId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "peer{}", self.0)
    }
}

impl std::fmt::Display for View {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "v{}", self.0)
    }
}

impl std::fmt::Display for SeqNo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "#{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constants_follow_n() {
        assert_eq!(DEFAULT_F, 1);
        assert_eq!(DEFAULT_QUORUM, 3);
        assert_eq!(max_faulty(7), 2);
        assert_eq!(quorum(7), 5);
        assert_eq!(View(5).primary(4), ReplicaId(1));
        // Any two quorums share f + 1 replicas (2q - n >= f + 1), whatever n.
        for n in 1..40 {
            let (f, q) = (max_faulty(n), quorum(n));
            assert!(2 * q > n + f && q <= n.max(1), "n = {n}");
            if is_three_f_plus_one(n) {
                assert_eq!(q, 2 * f + 1, "n = {n}");
            }
        }
        assert_eq!(quorum(6), 4);
        assert!(!is_three_f_plus_one(6) && is_three_f_plus_one(7));
    }
}
