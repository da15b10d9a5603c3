//! RFC 6962 / RFC 9162 Merkle trees: leaf hash `SHA-256(0x00 ‖ data)`, node hash
//! `SHA-256(0x01 ‖ left ‖ right)`, the split at the largest power of two below `n`, inclusion
//! proofs (audit paths) and consistency proofs with their verifiers, and a [`Frontier`] that keeps
//! a growing log's root in `O(log n)` space. It owns only hashing; it stores no log.
//!
//! `rs_merkle` is not used: it has no leaf/node domain separation and promotes odd nodes instead
//! of splitting at the largest power of two, so its roots differ from RFC 6962 for most sizes.

use crate::crypto::Digest;

/// `SHA-256(0x00 ‖ data)` (RFC 6962 §2.1).
pub fn leaf_hash(data: &[u8]) -> Digest {
    Digest::of_parts(&[&[0x00], data])
}

/// `SHA-256(0x01 ‖ left ‖ right)` (RFC 6962 §2.1).
pub fn node_hash(left: &Digest, right: &Digest) -> Digest {
    Digest::of_parts(&[&[0x01], &left.0, &right.0])
}

/// The hash of the empty tree, `SHA-256("")`.
pub fn empty_root() -> Digest {
    Digest::of(b"")
}

/// The largest power of two strictly smaller than `n` (`n >= 2`).
fn split(n: usize) -> usize {
    let mut k = 1;
    while k << 1 < n {
        k <<= 1;
    }
    k
}

/// `MTH(D[n])` over already-hashed leaves.
pub fn root(leaves: &[Digest]) -> Digest {
    match leaves.len() {
        0 => empty_root(),
        1 => leaves[0],
        n => {
            let k = split(n);
            node_hash(&root(&leaves[..k]), &root(&leaves[k..]))
        }
    }
}

/// `PATH(m, D[n])`: the audit path of leaf `index` (RFC 6962 §2.1.1). Empty if out of range.
pub fn inclusion_proof(index: usize, leaves: &[Digest]) -> Vec<Digest> {
    let mut out = Vec::new();
    if index < leaves.len() {
        path(index, leaves, &mut out);
    }
    out
}

fn path(m: usize, d: &[Digest], out: &mut Vec<Digest>) {
    let n = d.len();
    if n <= 1 {
        return;
    }
    let k = split(n);
    if m < k {
        path(m, &d[..k], out);
        out.push(root(&d[k..]));
    } else {
        path(m - k, &d[k..], out);
        out.push(root(&d[..k]));
    }
}

/// The audit paths of every leaf at once, in `O(n log n)` hashes instead of `O(n²)`.
pub fn all_inclusion_proofs(leaves: &[Digest]) -> Vec<Vec<Digest>> {
    let mut out = vec![Vec::new(); leaves.len()];
    fill_paths(leaves, &mut out);
    out
}

/// Appends, bottom-up, the siblings of every leaf of `d` to `out`; returns `MTH(d)`.
fn fill_paths(d: &[Digest], out: &mut [Vec<Digest>]) -> Digest {
    match d.len() {
        0 => empty_root(),
        1 => d[0],
        n => {
            let k = split(n);
            let (lo, hi) = out.split_at_mut(k);
            let left = fill_paths(&d[..k], lo);
            let right = fill_paths(&d[k..], hi);
            for p in lo.iter_mut() {
                p.push(right);
            }
            for p in hi.iter_mut() {
                p.push(left);
            }
            node_hash(&left, &right)
        }
    }
}

/// Checks an audit path (RFC 9162 §2.1.3.2).
pub fn verify_inclusion(
    index: u64,
    size: u64,
    leaf: &Digest,
    proof: &[Digest],
    root: &Digest,
) -> bool {
    if index >= size {
        return false;
    }
    let (mut fnode, mut snode) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if snode == 0 {
            return false;
        }
        if fnode & 1 == 1 || fnode == snode {
            r = node_hash(p, &r);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    snode == 0 && r == *root
}

/// `PROOF(m, D[n])`: proves that the first `m` leaves are a prefix of `leaves` (RFC 6962
/// §2.1.2). Empty when `m` is 0 or not below `leaves.len()`.
pub fn consistency_proof(m: usize, leaves: &[Digest]) -> Vec<Digest> {
    let mut out = Vec::new();
    if m > 0 && m < leaves.len() {
        subproof(m, leaves, true, &mut out);
    }
    out
}

fn subproof(m: usize, d: &[Digest], complete: bool, out: &mut Vec<Digest>) {
    let n = d.len();
    if m == n {
        if !complete {
            out.push(root(d));
        }
        return;
    }
    let k = split(n);
    if m <= k {
        subproof(m, &d[..k], complete, out);
        out.push(root(&d[k..]));
    } else {
        subproof(m - k, &d[k..], false, out);
        out.push(root(&d[..k]));
    }
}

/// Checks a consistency proof between a tree of `first` leaves and one of `second` leaves
/// (RFC 9162 §2.1.4.2), including that the proof is fully consumed.
pub fn verify_consistency(
    first: u64,
    second: u64,
    first_root: &Digest,
    second_root: &Digest,
    proof: &[Digest],
) -> bool {
    if first > second {
        return false;
    }
    if first == second {
        return proof.is_empty() && first_root == second_root;
    }
    if first == 0 {
        // The empty tree is a prefix of every tree; nothing to prove.
        return proof.is_empty();
    }
    let mut path: Vec<Digest> = Vec::with_capacity(proof.len() + 1);
    if first.is_power_of_two() {
        path.push(*first_root);
    }
    path.extend_from_slice(proof);
    let Some((&seed, rest)) = path.split_first() else {
        return false;
    };
    let (mut fnode, mut snode) = (first - 1, second - 1);
    while fnode & 1 == 1 {
        fnode >>= 1;
        snode >>= 1;
    }
    let (mut fr, mut sr) = (seed, seed);
    for c in rest {
        if snode == 0 {
            return false;
        }
        if fnode & 1 == 1 || fnode == snode {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    fr == *first_root && sr == *second_root && snode == 0
}

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
mod tests {
    use super::*;

    /// The eight leaves of Certificate Transparency's reference test suite.
    fn ct_leaves() -> Vec<Digest> {
        let raw: [&[u8]; 8] = [
            b"",
            &[0x00],
            &[0x10],
            &[0x20, 0x21],
            &[0x30, 0x31],
            &[0x40, 0x41, 0x42, 0x43],
            &[0x50, 0x51, 0x52, 0x53, 0x54, 0x55, 0x56, 0x57],
            &[
                0x60, 0x61, 0x62, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69, 0x6a, 0x6b, 0x6c, 0x6d,
                0x6e, 0x6f,
            ],
        ];
        raw.iter().map(|d| leaf_hash(d)).collect()
    }

    #[test]
    fn roots_match_reference_vectors_at_every_size() {
        let expected = [
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
            "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
            "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
            "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
            "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
        ];
        let leaves = ct_leaves();
        let mut frontier = Frontier::default();
        for (i, want) in expected.iter().enumerate() {
            frontier.push(leaves[i]);
            assert_eq!(root(&leaves[..=i]).to_hex(), *want, "size {}", i + 1);
            assert_eq!(frontier.root().to_hex(), *want, "frontier size {}", i + 1);
        }
        assert_eq!(
            empty_root().to_hex(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    fn many(n: usize) -> Vec<Digest> {
        (0..n)
            .map(|i| leaf_hash(&(i as u64).to_be_bytes()))
            .collect()
    }

    #[test]
    fn inclusion_proofs_verify_at_non_power_of_two_sizes() {
        let leaves = many(33);
        for n in 1..=leaves.len() {
            let d = &leaves[..n];
            let r = root(d);
            for m in 0..n {
                let p = inclusion_proof(m, d);
                assert!(
                    verify_inclusion(m as u64, n as u64, &d[m], &p, &r),
                    "{m}/{n}"
                );
                // Wrong index, wrong size, tampered or extended paths fail.
                if n > 1 {
                    assert!(!verify_inclusion(
                        ((m + 1) % n) as u64,
                        n as u64,
                        &d[m],
                        &p,
                        &r
                    ));
                }
                // A claimed size whose audit path has another shape fails (the size itself is
                // bound by the signed header that carries the root).
                for bigger in n + 1..n + 4 {
                    if inclusion_proof(m, &many(bigger)).len() != p.len() {
                        assert!(!verify_inclusion(m as u64, bigger as u64, &d[m], &p, &r));
                    }
                }
                let mut longer = p.clone();
                longer.push(Digest::ZERO);
                assert!(!verify_inclusion(m as u64, n as u64, &d[m], &longer, &r));
                if let Some(first) = p.first() {
                    let mut bad = p.clone();
                    bad[0] = node_hash(first, first);
                    assert!(!verify_inclusion(m as u64, n as u64, &d[m], &bad, &r));
                }
            }
            assert!(!verify_inclusion(n as u64, n as u64, &d[0], &[], &r));
        }
    }

    #[test]
    fn all_proofs_at_once_match_one_by_one() {
        let leaves = many(37);
        for n in 0..=leaves.len() {
            let all = all_inclusion_proofs(&leaves[..n]);
            for (m, p) in all.iter().enumerate() {
                assert_eq!(*p, inclusion_proof(m, &leaves[..n]), "{m}/{n}");
            }
        }
    }

    #[test]
    fn consistency_proofs_verify_and_reject_tampering() {
        let leaves = many(24);
        for n in 1..=leaves.len() {
            for m in 1..=n {
                let p = consistency_proof(m, &leaves[..n]);
                let (rm, rn) = (root(&leaves[..m]), root(&leaves[..n]));
                assert!(
                    verify_consistency(m as u64, n as u64, &rm, &rn, &p),
                    "{m}->{n}"
                );
                if m < n {
                    // The second tree must be fully consumed: a larger claimed size fails.
                    for bigger in n + 1..n + 4 {
                        if consistency_proof(m, &many(bigger)).len() != p.len() {
                            assert!(!verify_consistency(m as u64, bigger as u64, &rm, &rn, &p));
                        }
                    }
                    assert!(!verify_consistency(n as u64, m as u64, &rn, &rm, &p));
                    let mut longer = p.clone();
                    longer.push(Digest::ZERO);
                    assert!(!verify_consistency(m as u64, n as u64, &rm, &rn, &longer));
                    // A rewritten old tree is not a prefix.
                    let mut altered = leaves[..n].to_vec();
                    altered[m - 1] = leaf_hash(b"rewritten");
                    let rn2 = root(&altered);
                    assert!(!verify_consistency(m as u64, n as u64, &rm, &rn2, &p));
                }
            }
        }
    }
}
