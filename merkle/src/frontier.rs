//! The right edge of a growing log: enough to extend its RFC 6962 root without its leaves.

use crate::digest::Digest;
use crate::rfc6962::{empty_root, node_hash};

/// The right edge of a growing RFC 6962 tree: one root per perfect subtree, largest first.
/// Appending is amortized `O(1)` hashes and the root costs `O(log n)`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Frontier {
    size: u64,
    /// `(height, root)` of each perfect subtree, left to right, strictly decreasing heights.
    peaks: Vec<(u32, Digest)>,
}

impl Frontier {
    /// Number of leaves appended.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends a leaf hash.
    pub fn push(&mut self, leaf: Digest) {
        let mut node = (0u32, leaf);
        while let Some(&(h, left)) = self.peaks.last() {
            if h != node.0 {
                break;
            }
            self.peaks.pop();
            node = (h + 1, node_hash(&left, &node.1));
        }
        self.peaks.push(node);
        self.size += 1;
    }

    /// `MTH` of everything appended: the peaks folded right to left.
    pub fn root(&self) -> Digest {
        let mut it = self.peaks.iter().rev();
        let Some(&(_, mut acc)) = it.next() else {
            return empty_root();
        };
        for (_, left) in it {
            acc = node_hash(left, &acc);
        }
        acc
    }
}

#[cfg(test)]
#[cfg(test)]
mod tests {
    use super::*;
    use crate::rfc6962::{leaf_hash, root};

    #[test]
    fn the_frontier_root_is_the_root_of_everything_appended() {
        let leaves: Vec<Digest> = (0u64..300).map(|i| leaf_hash(&i.to_be_bytes())).collect();
        let mut frontier = Frontier::default();
        assert_eq!(frontier.root(), empty_root());
        for (i, leaf) in leaves.iter().enumerate() {
            frontier.push(*leaf);
            assert_eq!(frontier.size(), i as u64 + 1);
            assert_eq!(frontier.root(), root(&leaves[..=i]), "size {}", i + 1);
        }
    }
}
