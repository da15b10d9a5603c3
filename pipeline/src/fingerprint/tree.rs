//! The Merkle trees of a fingerprint, on `rs_merkle` with an RFC 6962 hasher.
//!
//! `rs_merkle` hashes interior nodes as `H(left ‖ right)` and promotes an odd last node to the
//! next level unchanged. With [`Rfc6962`] the interior hash becomes `SHA-256(0x01 ‖ left ‖ right)`
//! and leaves are hashed by the caller as `SHA-256(0x00 ‖ data)`; promotion then yields exactly
//! RFC 6962's shape (split at the largest power of two below `n`), which the RFC test vectors in
//! the tests check for sizes 1 to 8 and a brute-force recursion checks up to 300.
//!
//! Proofs and their verification go through `rs_merkle`. Roots, which hash every interior node
//! of a million-leaf dataset, are built level by level by [`merkle_root`] instead: the nodes of a
//! level are independent, so they are hashed many at a time in SIMD lanes, and only two levels
//! are held at once where `rs_merkle` keeps the whole tree. The tests check that both give the
//! same root for every size up to 300 and for large random sets.
//!
//! Layout: leaves are sorted; bucket `b` holds the leaves whose first byte is `b`
//! ([`BUCKETS`] = 256). A bucket root is the RFC 6962 root of its sorted leaves (`SHA-256("")`
//! when empty). The top tree has one leaf per bucket, `SHA-256(0x00 ‖ count_be64 ‖ bucket_root)`,
//! so the count of every bucket is authenticated, and the dataset root binds the rest:
//! `SHA-256("emrflow.dataset.v1" ‖ schema_hash ‖ row_count_be64 ‖ top_root)`.

use rs_merkle::{Hasher, MerkleProof, MerkleTree};
use sha2::{Digest as _, Sha256};

use super::encode::Hash32;

/// Number of buckets (one per value of a leaf's first byte).
pub const BUCKETS: usize = 256;

/// RFC 6962 interior hashing for `rs_merkle`.
#[derive(Debug, Clone, Copy)]
pub struct Rfc6962;

impl Hasher for Rfc6962 {
    type Hash = Hash32;

    fn hash(data: &[u8]) -> Hash32 {
        Sha256::digest(data).into()
    }

    fn concat_and_hash(left: &Hash32, right: Option<&Hash32>) -> Hash32 {
        match right {
            Some(right) => node_hash(left, right),
            // rs_merkle promotes the odd node; RFC 6962 does the same by splitting at the
            // largest power of two, so the node passes up unchanged.
            None => *left,
        }
    }
}

/// `SHA-256(0x00 ‖ data)`.
pub fn leaf_hash(data: &[u8]) -> Hash32 {
    let mut h = Sha256::new();
    h.update([0x00]);
    h.update(data);
    h.finalize().into()
}

/// `SHA-256(0x01 ‖ left ‖ right)`.
pub fn node_hash(left: &Hash32, right: &Hash32) -> Hash32 {
    let mut h = Sha256::new();
    h.update([0x01]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The root of the empty tree, `SHA-256("")`.
pub fn empty_root() -> Hash32 {
    Sha256::digest(b"").into()
}

/// The RFC 6962 root of already-hashed leaves, level by level: each level pairs its nodes from
/// the left and promotes an odd last node unchanged, as `rs_merkle` does.
pub fn merkle_root(leaves: &[Hash32]) -> Hash32 {
    match leaves {
        [] => return empty_root(),
        [only] => return *only,
        _ => {}
    }
    let mut level = node_level(leaves);
    while level.len() > 1 {
        level = node_level(&level);
    }
    level[0]
}

/// Pairs processed per call into the lane hasher, so the slice tables stay small.
const PAIRS_PER_CALL: usize = 512;

/// The next level up: `SHA-256(0x01 ‖ left ‖ right)` for each pair, then an odd last node.
fn node_level(level: &[Hash32]) -> Vec<Hash32> {
    let (pairs, odd) = level.as_chunks::<2>();
    let mut next = vec![[0u8; 32]; pairs.len()];
    let mut lefts: Vec<&[u8]> = Vec::with_capacity(PAIRS_PER_CALL);
    let mut rights: Vec<&[u8]> = Vec::with_capacity(PAIRS_PER_CALL);
    for (pairs, out) in pairs
        .chunks(PAIRS_PER_CALL)
        .zip(next.chunks_mut(PAIRS_PER_CALL))
    {
        lefts.clear();
        rights.clear();
        for [left, right] in pairs {
            lefts.push(left);
            rights.push(right);
        }
        tape_sha256::hash_pairs(&[0x01], &lefts, &rights, out);
    }
    next.extend_from_slice(odd);
    next
}

/// The audit path of the leaves at `indices` (ascending) of `leaves`.
pub fn proof(leaves: &[Hash32], indices: &[usize]) -> Vec<Hash32> {
    MerkleTree::<Rfc6962>::from_leaves(leaves)
        .proof(indices)
        .proof_hashes()
        .to_vec()
}

/// The root that `leaves` at `indices` (ascending, distinct) of a tree of `total` leaves lead
/// to with the audit path `path`, or `None` when the path does not fit that tree exactly (too
/// few hashes, or hashes left over, which `rs_merkle` alone would ignore).
pub fn root_from_proof(
    indices: &[usize],
    leaves: &[Hash32],
    total: usize,
    path: &[Hash32],
) -> Option<Hash32> {
    if indices.is_empty()
        || indices.len() != leaves.len()
        || indices.iter().any(|&i| i >= total)
        || indices.windows(2).any(|w| w[0] >= w[1])
    {
        return None;
    }
    let expected: usize = rs_merkle::utils::indices::proof_indices_by_layers(indices, total)
        .iter()
        .map(Vec::len)
        .sum();
    if expected != path.len() {
        return None;
    }
    MerkleProof::<Rfc6962>::new(path.to_vec())
        .root(indices, leaves, total)
        .ok()
}

/// Checks that `leaves` sit at `indices` of a tree of `total` leaves whose root is `root`.
pub fn verify(
    root: &Hash32,
    indices: &[usize],
    leaves: &[Hash32],
    total: usize,
    path: &[Hash32],
) -> bool {
    root_from_proof(indices, leaves, total, path).is_some_and(|r| r == *root)
}

/// The top-tree leaf of a bucket.
pub fn bucket_leaf(count: u64, root: &Hash32) -> Hash32 {
    let mut h = Sha256::new();
    h.update([0x00]);
    h.update(count.to_be_bytes());
    h.update(root);
    h.finalize().into()
}

/// The dataset root from its parts.
pub fn dataset_root(schema_hash: &Hash32, row_count: u64, top_root: &Hash32) -> Hash32 {
    let mut h = Sha256::new();
    h.update(b"emrflow.dataset.v1");
    h.update(schema_hash);
    h.update(row_count.to_be_bytes());
    h.update(top_root);
    h.finalize().into()
}

/// Sorts `leaves` and splits them into the 256 buckets: returns the sorted leaves and
/// `(count, root)` per bucket. The leaves
/// are distributed by first byte (a counting sort), then the buckets are sorted and hashed on
/// all cores: the interior hashes cost as much as the leaves, and this runs once, after the
/// partitions' states have merged.
pub fn bucket_table(leaves: Vec<Hash32>) -> (Vec<Hash32>, Vec<(u64, Hash32)>) {
    let mut counts = [0usize; BUCKETS];
    for l in leaves.iter() {
        counts[usize::from(l[0])] += 1;
    }
    let mut starts = [0usize; BUCKETS + 1];
    for b in 0..BUCKETS {
        starts[b + 1] = starts[b] + counts[b];
    }
    let mut sorted = vec![[0u8; 32]; leaves.len()];
    let mut next = starts;
    for l in leaves.iter() {
        let b = usize::from(l[0]);
        sorted[next[b]] = *l;
        next[b] += 1;
    }
    let mut buckets: Vec<&mut [Hash32]> = Vec::with_capacity(BUCKETS);
    let mut rest = sorted.as_mut_slice();
    for count in counts {
        let (head, tail) = rest.split_at_mut(count);
        buckets.push(head);
        rest = tail;
    }
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 16);
    // Contiguous runs of buckets with about the same number of leaves per thread.
    let per_thread = leaves.len().div_ceil(threads).max(1);
    let mut groups: Vec<Vec<&mut [Hash32]>> = vec![Vec::new()];
    let mut in_group = 0;
    for bucket in buckets {
        if in_group >= per_thread {
            groups.push(Vec::new());
            in_group = 0;
        }
        in_group += bucket.len();
        if let Some(g) = groups.last_mut() {
            g.push(bucket);
        }
    }
    let table: Vec<(u64, Hash32)> = std::thread::scope(|scope| {
        let handles: Vec<_> = groups
            .into_iter()
            .map(|group| {
                scope.spawn(move || {
                    group
                        .into_iter()
                        .map(|bucket| {
                            sort_leaves(bucket);
                            (bucket.len() as u64, merkle_root(bucket))
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    });
    (sorted, table)
}

/// Sorts leaves in byte order. Leaves are uniformly random, so comparing their first eight
/// bytes as one integer settles almost every comparison without a call to `memcmp`, which the
/// derived order of `[u8; 32]` makes for each one.
fn sort_leaves(leaves: &mut [Hash32]) {
    leaves.sort_unstable_by(|a, b| {
        let head =
            |l: &Hash32| u64::from_be_bytes([l[0], l[1], l[2], l[3], l[4], l[5], l[6], l[7]]);
        head(a).cmp(&head(b)).then_with(|| a.cmp(b))
    });
}

/// The top root over a bucket table.
pub fn top_root(table: &[(u64, Hash32)]) -> Hash32 {
    let leaves: Vec<Hash32> = table.iter().map(|(n, r)| bucket_leaf(*n, r)).collect();
    merkle_root(&leaves)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6962 by its recursive definition, to check rs_merkle's level-wise construction.
    fn rfc_root(leaves: &[Hash32]) -> Hash32 {
        match leaves.len() {
            0 => empty_root(),
            1 => leaves[0],
            n => {
                let mut k = 1;
                while k << 1 < n {
                    k <<= 1;
                }
                node_hash(&rfc_root(&leaves[..k]), &rfc_root(&leaves[k..]))
            }
        }
    }

    /// The leaf inputs of the RFC 6962 test vectors used by Certificate Transparency
    /// implementations (`merkle_tree_test.cc` / `testdata`): "", 00, 10, 2021, 3031, 40414243,
    /// 5051525354555657, 606162636465666768696a6b6c6d6e6f.
    fn vector_leaves() -> Vec<Hash32> {
        [
            "",
            "00",
            "10",
            "2021",
            "3031",
            "40414243",
            "5051525354555657",
            "606162636465666768696a6b6c6d6e6f",
        ]
        .iter()
        .map(|h| leaf_hash(&hex::decode(h).unwrap_or_default()))
        .collect()
    }

    #[test]
    fn rfc6962_test_vectors() {
        let roots = [
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
            "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
            "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
            "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
            "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
        ];
        let leaves = vector_leaves();
        for (n, want) in roots.iter().enumerate() {
            assert_eq!(
                hex::encode(merkle_root(&leaves[..=n])),
                *want,
                "size {}",
                n + 1
            );
        }
        assert_eq!(
            hex::encode(empty_root()),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn matches_the_recursive_definition_for_every_size_up_to_300() {
        let leaves: Vec<Hash32> = (0u32..300).map(|i| leaf_hash(&i.to_be_bytes())).collect();
        for n in 0..=leaves.len() {
            assert_eq!(
                merkle_root(&leaves[..n]),
                rfc_root(&leaves[..n]),
                "size {n}"
            );
        }
    }

    fn rs_merkle_root(leaves: &[Hash32]) -> Hash32 {
        MerkleTree::<Rfc6962>::from_leaves(leaves)
            .root()
            .unwrap_or_else(empty_root)
    }

    #[test]
    fn level_wise_root_matches_rs_merkle() {
        let leaves: Vec<Hash32> = (0u32..300).map(|i| leaf_hash(&i.to_be_bytes())).collect();
        for n in 0..=leaves.len() {
            assert_eq!(
                merkle_root(&leaves[..n]),
                rs_merkle_root(&leaves[..n]),
                "size {n}"
            );
        }
        // Sizes that cross the lane hasher's chunk boundary and have odd nodes on many levels.
        for n in [1023usize, 1024, 1025, 4097, 100_003] {
            let leaves: Vec<Hash32> = (0..n as u64).map(|i| leaf_hash(&i.to_le_bytes())).collect();
            assert_eq!(merkle_root(&leaves), rs_merkle_root(&leaves), "size {n}");
        }
    }

    #[test]
    fn lane_node_hashes_match_node_hash() {
        let level: Vec<Hash32> = (0u32..2051).map(|i| leaf_hash(&i.to_be_bytes())).collect();
        let next = node_level(&level);
        assert_eq!(next.len(), 1026);
        for (i, pair) in level.chunks(2).enumerate() {
            match pair {
                [l, r] => assert_eq!(next[i], node_hash(l, r), "pair {i}"),
                [odd] => assert_eq!(next[i], *odd),
                _ => unreachable!(),
            }
        }
    }

    #[test]
    fn proofs_verify_and_reject() {
        let leaves: Vec<Hash32> = (0u32..37).map(|i| leaf_hash(&i.to_be_bytes())).collect();
        let root = merkle_root(&leaves);
        for i in 0..leaves.len() {
            let p = proof(&leaves, &[i]);
            assert!(
                verify(&root, &[i], &[leaves[i]], leaves.len(), &p),
                "leaf {i}"
            );
            let other = (i + 1) % leaves.len();
            assert!(!verify(&root, &[other], &[leaves[i]], leaves.len(), &p));
        }
        for i in 0..leaves.len() - 1 {
            let p = proof(&leaves, &[i, i + 1]);
            assert!(verify(
                &root,
                &[i, i + 1],
                &[leaves[i], leaves[i + 1]],
                leaves.len(),
                &p
            ));
        }
    }

    #[test]
    fn bucket_table_covers_every_leaf_once() {
        let leaves: Vec<Hash32> = (0u32..5000).map(|i| leaf_hash(&i.to_be_bytes())).collect();
        let (leaves, table) = bucket_table(leaves);
        assert_eq!(table.len(), BUCKETS);
        assert_eq!(table.iter().map(|(n, _)| n).sum::<u64>(), 5000);
        assert!(leaves.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn leaves_sharing_their_first_eight_bytes_still_sort_by_the_rest() {
        let mut leaves: Vec<Hash32> = (0u8..50)
            .map(|i| {
                let mut l = [7u8; 32];
                l[31] = 49 - i;
                l[8] = i % 3;
                l
            })
            .collect();
        let mut want = leaves.clone();
        want.sort_unstable();
        sort_leaves(&mut leaves);
        assert_eq!(leaves, want);
    }
}
