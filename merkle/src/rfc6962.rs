//! RFC 6962 / RFC 9162 Merkle trees over already-hashed leaves: roots, audit paths (one leaf or
//! several), consistency proofs, and their verifiers. It owns only hashing; it stores nothing.
//!
//! Functions are generic over [`Node`], implemented by [`Digest`] (the ledger's blocks and log)
//! and by raw [`Hash32`] (dataset buckets, where millions of leaves sit in flat buffers), so both
//! go through the same code.

use sha2::{Digest as _, Sha256};

use crate::digest::{Digest, Hash32};

/// A tree node: 32 bytes, as a [`Digest`] or as a raw [`Hash32`].
pub trait Node: Copy + Eq {
    /// The node's bytes.
    fn bytes(&self) -> &Hash32;
    /// A node from bytes.
    fn from_bytes(bytes: Hash32) -> Self;
}

impl Node for Hash32 {
    fn bytes(&self) -> &Hash32 {
        self
    }
    fn from_bytes(bytes: Hash32) -> Self {
        bytes
    }
}

impl Node for Digest {
    fn bytes(&self) -> &Hash32 {
        &self.0
    }
    fn from_bytes(bytes: Hash32) -> Self {
        Digest(bytes)
    }
}

/// `SHA-256(0x00 ‖ data)` (RFC 6962 §2.1).
pub fn leaf_hash<N: Node>(data: &[u8]) -> N {
    let mut h = Sha256::new();
    h.update([0x00]);
    h.update(data);
    N::from_bytes(h.finalize().into())
}

/// `SHA-256(0x01 ‖ left ‖ right)` (RFC 6962 §2.1).
pub fn node_hash<N: Node>(left: &N, right: &N) -> N {
    let mut h = Sha256::new();
    h.update([0x01]);
    h.update(left.bytes());
    h.update(right.bytes());
    N::from_bytes(h.finalize().into())
}

/// The hash of the empty tree, `SHA-256("")`.
pub fn empty_root<N: Node>() -> N {
    N::from_bytes(Sha256::digest(b"").into())
}

/// `MTH(D[n])`, built level by level: each level pairs its nodes from the left and promotes an
/// odd last node unchanged. That is the RFC's recursive split at the largest power of two below
/// `n` (a promoted node is the root of the right subtree that has no sibling yet), and the nodes
/// of a level are independent, so they are hashed many at a time in SIMD lanes.
pub fn root<N: Node>(leaves: &[N]) -> N {
    match leaves {
        [] => return empty_root(),
        [only] => return *only,
        _ => {}
    }
    let mut level = next_level(leaves);
    while level.len() > 1 {
        level = next_level(&level);
    }
    level[0]
}

/// Pairs handed to the lane hasher per call, so its slice tables stay small.
const PAIRS_PER_CALL: usize = 512;

/// The next level up: `SHA-256(0x01 ‖ left ‖ right)` for each pair, then an odd last node.
fn next_level<N: Node>(level: &[N]) -> Vec<N> {
    let (pairs, odd) = level.as_chunks::<2>();
    let mut hashed = vec![[0u8; 32]; pairs.len()];
    let mut lefts: Vec<&[u8]> = Vec::with_capacity(PAIRS_PER_CALL.min(pairs.len()));
    let mut rights: Vec<&[u8]> = Vec::with_capacity(PAIRS_PER_CALL.min(pairs.len()));
    for (pairs, out) in pairs
        .chunks(PAIRS_PER_CALL)
        .zip(hashed.chunks_mut(PAIRS_PER_CALL))
    {
        lefts.clear();
        rights.clear();
        for [left, right] in pairs {
            lefts.push(left.bytes());
            rights.push(right.bytes());
        }
        tape_sha256::hash_pairs(&[0x01], &lefts, &rights, out);
    }
    let mut next: Vec<N> = hashed.into_iter().map(N::from_bytes).collect();
    next.extend_from_slice(odd);
    next
}

/// The largest power of two strictly smaller than `n` (`n >= 2`).
fn split(n: usize) -> usize {
    let mut k = 1;
    while k << 1 < n {
        k <<= 1;
    }
    k
}

/// `PATH(m, D[n])`: the audit path of leaf `index`, bottom-up (RFC 6962 §2.1.1). Empty if out of
/// range. It is the multi-leaf proof of that one leaf.
pub fn inclusion_proof<N: Node>(index: usize, leaves: &[N]) -> Vec<N> {
    if index >= leaves.len() {
        return Vec::new();
    }
    multi_proof(leaves, &[index])
}

/// The audit paths of every leaf at once, in `O(n log n)` hashes instead of `O(n²)`.
pub fn all_inclusion_proofs<N: Node>(leaves: &[N]) -> Vec<Vec<N>> {
    let mut out = vec![Vec::new(); leaves.len()];
    fill_paths(leaves, &mut out);
    out
}

/// Appends, bottom-up, the siblings of every leaf of `d` to `out`; returns `MTH(d)`.
fn fill_paths<N: Node>(d: &[N], out: &mut [Vec<N>]) -> N {
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

/// Checks an audit path (RFC 9162 §2.1.3.2), including that it is fully consumed.
pub fn verify_inclusion<N: Node>(index: u64, size: u64, leaf: &N, proof: &[N], root: &N) -> bool {
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

/// The proof that the leaves at `indices` (ascending, distinct, in range) belong to `leaves`:
/// level by level from the bottom, the siblings of the nodes on their paths that cannot be
/// computed from the leaves themselves, left to right. A promoted odd node needs no sibling.
/// Indices out of order or out of range give an empty proof.
pub fn multi_proof<N: Node>(leaves: &[N], indices: &[usize]) -> Vec<N> {
    if !well_formed(indices, leaves.len()) {
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut level: Vec<N> = leaves.to_vec();
    let mut known: Vec<usize> = indices.to_vec();
    while level.len() > 1 {
        for (i, &k) in known.iter().enumerate() {
            let sibling = k ^ 1;
            let sibling_known = if k & 1 == 0 {
                known.get(i + 1) == Some(&sibling)
            } else {
                i > 0 && known[i - 1] == sibling
            };
            if !sibling_known && sibling < level.len() {
                out.push(level[sibling]);
            }
        }
        known = known.iter().map(|k| k / 2).collect();
        known.dedup();
        level = next_level(&level);
    }
    out
}

fn well_formed(indices: &[usize], total: usize) -> bool {
    !indices.is_empty()
        && indices.iter().all(|&i| i < total)
        && indices.windows(2).all(|w| w[0] < w[1])
}

/// The root that `leaves` at `indices` (ascending, distinct) of a tree of `total` leaves lead to
/// with `proof`, or `None` when the proof does not fit that tree exactly (hashes missing or left
/// over).
pub fn root_from_multi_proof<N: Node>(
    indices: &[usize],
    leaves: &[N],
    total: usize,
    proof: &[N],
) -> Option<N> {
    if !well_formed(indices, total) || indices.len() != leaves.len() {
        return None;
    }
    let mut proof = proof.iter();
    let mut known: Vec<(usize, N)> = indices
        .iter()
        .copied()
        .zip(leaves.iter().copied())
        .collect();
    let mut width = total;
    while width > 1 {
        let mut up = Vec::with_capacity(known.len());
        let mut i = 0;
        while i < known.len() {
            let (k, node) = known[i];
            let parent = if k & 1 == 1 {
                node_hash(proof.next()?, &node)
            } else if known.get(i + 1).is_some_and(|(next, _)| *next == k + 1) {
                i += 1;
                node_hash(&node, &known[i].1)
            } else if k + 1 < width {
                node_hash(&node, proof.next()?)
            } else {
                node
            };
            up.push((k / 2, parent));
            i += 1;
        }
        known = up;
        width = width.div_ceil(2);
    }
    match (known.as_slice(), proof.next()) {
        ([(0, root)], None) => Some(*root),
        _ => None,
    }
}

/// Checks that `leaves` sit at `indices` of a tree of `total` leaves whose root is `root`.
pub fn verify_multi_proof<N: Node>(
    root: &N,
    indices: &[usize],
    leaves: &[N],
    total: usize,
    proof: &[N],
) -> bool {
    root_from_multi_proof(indices, leaves, total, proof).is_some_and(|r| r == *root)
}

/// `PROOF(m, D[n])`: proves that the first `m` leaves are a prefix of `leaves` (RFC 6962
/// §2.1.2). Empty when `m` is 0 or not below `leaves.len()`.
pub fn consistency_proof<N: Node>(m: usize, leaves: &[N]) -> Vec<N> {
    let mut out = Vec::new();
    if m > 0 && m < leaves.len() {
        subproof(m, leaves, true, &mut out);
    }
    out
}

fn subproof<N: Node>(m: usize, d: &[N], complete: bool, out: &mut Vec<N>) {
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
pub fn verify_consistency<N: Node>(
    first: u64,
    second: u64,
    first_root: &N,
    second_root: &N,
    proof: &[N],
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
    let mut path: Vec<N> = Vec::with_capacity(proof.len() + 1);
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

#[cfg(test)]
mod tests {
    use super::*;
    use rs_merkle::{Hasher, MerkleTree};

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

    /// RFC 6962 by its recursive definition.
    fn rfc_root(leaves: &[Digest]) -> Digest {
        match leaves.len() {
            0 => empty_root(),
            1 => leaves[0],
            n => {
                let k = split(n);
                node_hash(&rfc_root(&leaves[..k]), &rfc_root(&leaves[k..]))
            }
        }
    }

    /// RFC 6962's audit path by its recursive definition.
    fn rfc_path(m: usize, d: &[Digest], out: &mut Vec<Digest>) {
        let n = d.len();
        if n <= 1 {
            return;
        }
        let k = split(n);
        if m < k {
            rfc_path(m, &d[..k], out);
            out.push(rfc_root(&d[k..]));
        } else {
            rfc_path(m - k, &d[k..], out);
            out.push(rfc_root(&d[..k]));
        }
    }

    /// `rs_merkle` with RFC 6962 interior hashing: its promotion of an odd node is the RFC's
    /// shape, and its multi-proof layout is the one [`multi_proof`] writes.
    #[derive(Clone)]
    struct Rfc6962;

    impl Hasher for Rfc6962 {
        type Hash = Hash32;
        fn hash(data: &[u8]) -> Hash32 {
            Sha256::digest(data).into()
        }
        fn concat_and_hash(left: &Hash32, right: Option<&Hash32>) -> Hash32 {
            match right {
                Some(right) => node_hash(left, right),
                None => *left,
            }
        }
    }

    fn many(n: usize) -> Vec<Digest> {
        (0..n)
            .map(|i| leaf_hash(&(i as u64).to_be_bytes()))
            .collect()
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
        for (i, want) in expected.iter().enumerate() {
            assert_eq!(root(&leaves[..=i]).to_hex(), *want, "size {}", i + 1);
        }
        assert_eq!(
            empty_root::<Digest>().to_hex(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn level_wise_roots_equal_the_recursive_definition_and_rs_merkle() {
        let leaves = many(1100);
        for n in (1..=300).chain([511, 512, 513, 1023, 1024, 1025, 1100]) {
            let d = &leaves[..n];
            let raw: Vec<Hash32> = d.iter().map(|l| l.0).collect();
            assert_eq!(root(d), rfc_root(d), "size {n}");
            assert_eq!(root(&raw), rfc_root(d).0, "raw size {n}");
            let oracle = MerkleTree::<Rfc6962>::from_leaves(&raw).root();
            assert_eq!(oracle, Some(rfc_root(d).0), "rs_merkle size {n}");
        }
    }

    #[test]
    fn lane_hashed_levels_match_node_hash_past_the_chunk_size() {
        let level: Vec<Hash32> = (0u32..2051).map(|i| leaf_hash(&i.to_be_bytes())).collect();
        let next = next_level(&level);
        assert_eq!(next.len(), 1026);
        for (i, pair) in level.chunks(2).enumerate() {
            match pair {
                [l, r] => assert_eq!(next[i], node_hash(l, r), "pair {i}"),
                [odd] => assert_eq!(next[i], *odd),
                _ => unreachable!(),
            }
        }
        for n in [4097usize, 100_003] {
            let leaves: Vec<Hash32> = (0..n as u64).map(|i| leaf_hash(&i.to_le_bytes())).collect();
            let oracle = MerkleTree::<Rfc6962>::from_leaves(&leaves).root();
            assert_eq!(Some(root(&leaves)), oracle, "size {n}");
        }
    }

    #[test]
    fn audit_paths_are_the_rfcs_and_verify_at_non_power_of_two_sizes() {
        let leaves = many(33);
        for n in 1..=leaves.len() {
            let d = &leaves[..n];
            let r = root(d);
            for m in 0..n {
                let p = inclusion_proof(m, d);
                let mut want = Vec::new();
                rfc_path(m, d, &mut want);
                assert_eq!(p, want, "{m}/{n}");
                assert!(
                    verify_inclusion(m as u64, n as u64, &d[m], &p, &r),
                    "{m}/{n}"
                );
                if n > 1 {
                    let other = ((m + 1) % n) as u64;
                    assert!(!verify_inclusion(other, n as u64, &d[m], &p, &r));
                }
                // A claimed size whose audit path has another shape fails (the size itself is
                // bound by whatever signed the root).
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
    fn multi_proofs_match_rs_merkle_and_verify_exactly() {
        let leaves: Vec<Hash32> = many(70).into_iter().map(|d| d.0).collect();
        for n in 1..=leaves.len() {
            let d = &leaves[..n];
            let tree = MerkleTree::<Rfc6962>::from_leaves(d);
            let r = root(d);
            let mut sets: Vec<Vec<usize>> = (0..n).map(|i| vec![i]).collect();
            sets.extend((0..n.saturating_sub(1)).map(|i| vec![i, i + 1]));
            sets.push((0..n).step_by(3).collect());
            sets.push((0..n).collect());
            for set in sets {
                let shown: Vec<Hash32> = set.iter().map(|&i| d[i]).collect();
                let p = multi_proof(d, &set);
                assert_eq!(
                    p,
                    tree.proof(&set).proof_hashes().to_vec(),
                    "{set:?} of {n}"
                );
                assert!(
                    verify_multi_proof(&r, &set, &shown, n, &p),
                    "{set:?} of {n}"
                );
                let mut longer = p.clone();
                longer.push([0; 32]);
                assert!(!verify_multi_proof(&r, &set, &shown, n, &longer));
                if !p.is_empty() {
                    assert!(!verify_multi_proof(&r, &set, &shown, n, &p[1..]));
                    let mut bad = p.clone();
                    bad[0][0] ^= 1;
                    assert!(!verify_multi_proof(&r, &set, &shown, n, &bad));
                }
                // A claimed size whose proof has another shape fails (the size itself is bound by
                // whatever signed the root).
                if n < leaves.len() && multi_proof(&leaves[..=n], &set).len() != p.len() {
                    assert!(
                        !verify_multi_proof(&r, &set, &shown, n + 1, &p),
                        "{set:?} of {n}"
                    );
                }
            }
        }
        assert!(multi_proof(&leaves[..4], &[2, 1]).is_empty());
        assert!(root_from_multi_proof(&[4], &[leaves[0]], 4, &[]).is_none());
        assert!(root_from_multi_proof::<Hash32>(&[], &[], 4, &[]).is_none());
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
