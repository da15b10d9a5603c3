//! How a dataset's leaves become its root: buckets by first byte, sorted within each, a bucket
//! tree per bucket and one top tree over the buckets. The Merkle trees themselves (RFC 6962
//! hashing, roots, proofs) are the `merkle` crate's; this module owns the layout.
//!
//! Layout: leaves are sorted; bucket `b` holds the leaves whose first byte is `b`
//! ([`BUCKETS`] = 256). A bucket root is the RFC 6962 root of its sorted leaves (`SHA-256("")`
//! when empty). The top tree has one leaf per bucket, `SHA-256(0x00 ‖ count_be64 ‖ bucket_root)`,
//! so the count of every bucket is authenticated, and the dataset root binds the rest:
//! `SHA-256("emrflow.dataset.v1" ‖ schema_hash ‖ row_count_be64 ‖ top_root)`.
//!
//! The partial state of the fingerprint aggregate is a [`sort_into_buckets`] buffer, so each
//! partition sorts its own leaves where it ran and the final step only merges sorted runs.

use merkle::{Hash32, root as merkle_root};
use sha2::{Digest as _, Sha256};

/// Number of buckets (one per value of a leaf's first byte).
pub const BUCKETS: usize = 256;

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

/// Bytes of the header of a [`SortedLeaves`] buffer: one big-endian `u64` count per bucket.
pub const HEADER_BYTES: usize = BUCKETS * 8;

/// Leaves grouped by bucket and sorted within each, in one buffer: the 256 bucket counts
/// (`u64`, big-endian), then the leaves, bucket after bucket. It is the fingerprint
/// aggregate's partial state, so each partition sorts its own leaves where it ran and the final
/// step only merges sorted runs.
/// The leaves may come in several slices (an accumulator keeps them in chunks so that they are
/// never copied to grow).
pub fn sort_into_buckets(chunks: &[&[Hash32]], threads: usize) -> Vec<u8> {
    let leaves = || chunks.iter().flat_map(|c| c.iter());
    let total: usize = chunks.iter().map(|c| c.len()).sum();
    let mut counts = [0usize; BUCKETS];
    for l in leaves() {
        counts[usize::from(l[0])] += 1;
    }
    let mut out = vec![0u8; HEADER_BYTES + total * 32];
    let (header, body) = out.split_at_mut(HEADER_BYTES);
    for (slot, count) in header.chunks_exact_mut(8).zip(counts) {
        slot.copy_from_slice(&(count as u64).to_be_bytes());
    }
    let (sorted, _) = body.as_chunks_mut::<32>();
    let mut next = [0usize; BUCKETS];
    for b in 1..BUCKETS {
        next[b] = next[b - 1] + counts[b - 1];
    }
    for l in leaves() {
        let b = usize::from(l[0]);
        sorted[next[b]] = *l;
        next[b] += 1;
    }
    let buckets = split_buckets(sorted, &counts);
    for_each_group(buckets, threads, sort_leaves);
    out
}

/// A read-only view of a [`sort_into_buckets`] buffer.
#[derive(Debug, Clone, Copy)]
pub struct SortedLeaves<'a> {
    starts: [usize; BUCKETS + 1],
    leaves: &'a [Hash32],
}

impl<'a> SortedLeaves<'a> {
    /// Reads a buffer, or `None` when its length does not match its header. Whether each
    /// bucket holds sorted leaves of its own byte is checked when the buckets are hashed.
    pub fn parse(bytes: &'a [u8]) -> Option<Self> {
        let (header, body) = bytes.split_at_checked(HEADER_BYTES)?;
        let (leaves, rest) = body.as_chunks::<32>();
        if !rest.is_empty() {
            return None;
        }
        let mut starts = [0usize; BUCKETS + 1];
        for (b, count) in header.chunks_exact(8).enumerate() {
            let count = usize::try_from(u64::from_be_bytes(count.try_into().ok()?)).ok()?;
            starts[b + 1] = starts[b].checked_add(count)?;
        }
        (starts[BUCKETS] == leaves.len()).then_some(Self { starts, leaves })
    }

    /// All leaves, bucket after bucket.
    pub fn leaves(&self) -> &'a [Hash32] {
        self.leaves
    }

    /// The leaves of bucket `b`.
    pub fn bucket(&self, b: usize) -> &'a [Hash32] {
        &self.leaves[self.starts[b]..self.starts[b + 1]]
    }
}

/// `(count, root)` per bucket over the union of several sorted-leaf buffers, buckets hashed on
/// `threads` threads. `None` when a bucket's merged leaves are out of order or hold a leaf of
/// another bucket, which only a corrupt partial state can cause.
pub fn merged_table(parts: &[SortedLeaves<'_>], threads: usize) -> Option<Vec<(u64, Hash32)>> {
    let sizes: Vec<usize> = (0..BUCKETS)
        .map(|b| parts.iter().map(|p| p.bucket(b).len()).sum())
        .collect();
    let groups = balanced_groups(&sizes, threads);
    let hash_group = |range: std::ops::Range<usize>| -> Option<Vec<(u64, Hash32)>> {
        let mut scratch: Vec<Hash32> = Vec::new();
        range
            .map(|b| {
                let runs: Vec<&[Hash32]> = parts
                    .iter()
                    .map(|p| p.bucket(b))
                    .filter(|r| !r.is_empty())
                    .collect();
                let leaves: &[Hash32] = match runs.as_slice() {
                    [] => &[],
                    [one] => one,
                    _ => {
                        merge_runs(&runs, &mut scratch);
                        &scratch
                    }
                };
                let in_order = leaves.iter().all(|l| usize::from(l[0]) == b)
                    && leaves.is_sorted_by(|x, y| leaf_order(x, y).is_le());
                in_order.then(|| (leaves.len() as u64, merkle_root(leaves)))
            })
            .collect()
    };
    if groups.len() == 1 {
        return hash_group(0..BUCKETS);
    }
    std::thread::scope(|scope| {
        let handles: Vec<_> = groups
            .into_iter()
            .map(|g| scope.spawn(move || hash_group(g)))
            .collect();
        let mut table = Vec::with_capacity(BUCKETS);
        for h in handles {
            table.extend(h.join().ok()??);
        }
        Some(table)
    })
}

/// Merges sorted runs into `out`: two by a linear merge, more by a sort that finds the runs.
fn merge_runs(runs: &[&[Hash32]], out: &mut Vec<Hash32>) {
    out.clear();
    if let [a, b] = runs {
        out.reserve(a.len() + b.len());
        let (mut i, mut j) = (0, 0);
        while i < a.len() && j < b.len() {
            if leaf_order(&b[j], &a[i]).is_lt() {
                out.push(b[j]);
                j += 1;
            } else {
                out.push(a[i]);
                i += 1;
            }
        }
        out.extend_from_slice(&a[i..]);
        out.extend_from_slice(&b[j..]);
    } else {
        for r in runs {
            out.extend_from_slice(r);
        }
        // The stable sort detects the sorted runs and merges them.
        out.sort_by(leaf_order);
    }
}

/// Sorts `leaves` and splits them into the 256 buckets: returns the sorted leaves and
/// `(count, root)` per bucket, hashed on all cores.
pub fn bucket_table(leaves: Vec<Hash32>) -> (Vec<Hash32>, Vec<(u64, Hash32)>) {
    let threads = available_threads();
    let buffer = sort_into_buckets(&[&leaves], threads);
    let sorted = SortedLeaves::parse(&buffer).unwrap_or_else(|| unreachable!("own buffer"));
    let table = merged_table(&[sorted], threads).unwrap_or_else(|| unreachable!("sorted"));
    (sorted.leaves().to_vec(), table)
}

/// Threads to hash buckets on: the machine's cores, at most 16.
pub fn available_threads() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 16)
}

fn split_buckets<'a>(mut rest: &'a mut [Hash32], counts: &[usize]) -> Vec<&'a mut [Hash32]> {
    let mut buckets = Vec::with_capacity(counts.len());
    for &count in counts {
        let (head, tail) = rest.split_at_mut(count);
        buckets.push(head);
        rest = tail;
    }
    buckets
}

/// Runs `f` on every bucket, on up to `threads` threads, each taking a contiguous run of
/// buckets with about the same number of leaves.
fn for_each_group(buckets: Vec<&mut [Hash32]>, threads: usize, f: impl Fn(&mut [Hash32]) + Sync) {
    if threads <= 1 {
        buckets.into_iter().for_each(f);
        return;
    }
    let sizes: Vec<usize> = buckets.iter().map(|b| b.len()).collect();
    let mut buckets = buckets.into_iter();
    let groups: Vec<Vec<&mut [Hash32]>> = balanced_groups(&sizes, threads)
        .into_iter()
        .map(|range| buckets.by_ref().take(range.len()).collect())
        .collect();
    let f = &f;
    std::thread::scope(|scope| {
        for group in groups {
            scope.spawn(move || group.into_iter().for_each(f));
        }
    });
}

/// Contiguous runs of buckets holding about the same number of leaves, one per thread.
fn balanced_groups(sizes: &[usize], threads: usize) -> Vec<std::ops::Range<usize>> {
    let total: usize = sizes.iter().sum();
    let per_thread = total.div_ceil(threads.max(1)).max(1);
    let mut groups = Vec::with_capacity(threads.max(1));
    let (mut start, mut in_group) = (0, 0);
    for (b, size) in sizes.iter().enumerate() {
        if in_group >= per_thread {
            groups.push(start..b);
            (start, in_group) = (b, 0);
        }
        in_group += size;
    }
    groups.push(start..sizes.len());
    groups
}

/// Byte order of leaves. Leaves are uniformly random, so comparing their first eight bytes as
/// one integer settles almost every comparison without a call to `memcmp`, which the derived
/// order of `[u8; 32]` makes for each one.
fn leaf_order(a: &Hash32, b: &Hash32) -> std::cmp::Ordering {
    let head = |l: &Hash32| u64::from_be_bytes([l[0], l[1], l[2], l[3], l[4], l[5], l[6], l[7]]);
    head(a).cmp(&head(b)).then_with(|| a.cmp(b))
}

/// Sorts leaves in byte order.
fn sort_leaves(leaves: &mut [Hash32]) {
    leaves.sort_unstable_by(leaf_order);
}

/// The top root over a bucket table.
pub fn top_root(table: &[(u64, Hash32)]) -> Hash32 {
    let leaves: Vec<Hash32> = table.iter().map(|(n, r)| bucket_leaf(*n, r)).collect();
    merkle_root(&leaves)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaves(n: u32, salt: u32) -> Vec<Hash32> {
        (0..n)
            .map(|i| merkle::leaf_hash(&[i.to_be_bytes(), salt.to_be_bytes()].concat()))
            .collect()
    }

    #[test]
    fn sorted_parts_merge_to_the_table_of_the_whole() {
        let all = leaves(20_000, 1);
        let (_, whole) = bucket_table(all.clone());
        // One part, two, three of uneven sizes, with an empty part, on one and several threads.
        for cuts in [vec![], vec![9_000], vec![0, 700, 15_000], vec![20_000]] {
            let mut bounds = vec![0];
            bounds.extend(&cuts);
            bounds.push(all.len());
            let buffers: Vec<Vec<u8>> = bounds
                .windows(2)
                .map(|w| sort_into_buckets(&[&all[w[0]..w[1]]], 1))
                .collect();
            let parts: Vec<SortedLeaves<'_>> = buffers
                .iter()
                .map(|b| SortedLeaves::parse(b).unwrap())
                .collect();
            for threads in [1, 3] {
                assert_eq!(
                    merged_table(&parts, threads).unwrap(),
                    whole,
                    "cuts {cuts:?}"
                );
            }
        }
    }

    #[test]
    fn a_sorted_buffer_holds_each_bucket_sorted_after_its_counts() {
        let all = leaves(3_000, 2);
        let buffer = sort_into_buckets(&[&all[..1000], &all[1000..]], 2);
        let sorted = SortedLeaves::parse(&buffer).unwrap();
        assert_eq!(sorted.leaves().len(), all.len());
        assert!(sorted.leaves().is_sorted());
        for b in 0..BUCKETS {
            assert!(sorted.bucket(b).iter().all(|l| usize::from(l[0]) == b));
        }
        let mut want = all;
        want.sort_unstable();
        assert_eq!(sorted.leaves(), want.as_slice());
    }

    #[test]
    fn malformed_or_disordered_buffers_are_refused() {
        let buffer = sort_into_buckets(&[&leaves(1_000, 3)], 1);
        assert!(SortedLeaves::parse(&buffer[..buffer.len() - 1]).is_none());
        assert!(SortedLeaves::parse(&buffer[..buffer.len() - 32]).is_none());
        assert!(SortedLeaves::parse(&buffer[..HEADER_BYTES - 8]).is_none());
        let mut huge = buffer.clone();
        huge[..8].copy_from_slice(&u64::MAX.to_be_bytes());
        assert!(SortedLeaves::parse(&huge).is_none());

        // Two leaves of one bucket swapped: the lengths still match, the order does not.
        let sorted = SortedLeaves::parse(&buffer).unwrap();
        let b = (0..BUCKETS).find(|&b| sorted.bucket(b).len() >= 2).unwrap();
        let at = HEADER_BYTES
            + 32 * sorted
                .leaves()
                .iter()
                .position(|l| l[0] as usize == b)
                .unwrap();
        let mut swapped = buffer.clone();
        let (first, second) = swapped[at..at + 64].split_at_mut(32);
        first.swap_with_slice(second);
        let bad = SortedLeaves::parse(&swapped).unwrap();
        assert!(merged_table(&[bad], 1).is_none());
        // Merged with a good part, the disorder survives the merge and is still caught.
        let other = sort_into_buckets(&[&leaves(1_000, 4)], 1);
        let good = SortedLeaves::parse(&other).unwrap();
        assert!(merged_table(&[bad, good], 1).is_none());

        // A leaf moved into the next bucket's range by its count.
        let mut moved = buffer;
        let counts: Vec<u64> = moved[..HEADER_BYTES]
            .chunks_exact(8)
            .map(|c| u64::from_be_bytes(c.try_into().unwrap()))
            .collect();
        let b = (0..BUCKETS - 1).find(|&b| counts[b] >= 1).unwrap();
        moved[8 * b..8 * b + 8].copy_from_slice(&(counts[b] - 1).to_be_bytes());
        moved[8 * (b + 1)..8 * (b + 2)].copy_from_slice(&(counts[b + 1] + 1).to_be_bytes());
        let bad = SortedLeaves::parse(&moved).unwrap();
        assert!(merged_table(&[bad], 1).is_none());
    }

    #[test]
    fn two_runs_and_many_runs_merge_in_order() {
        let a = leaves(500, 5);
        let b = leaves(300, 6);
        let c = leaves(10, 7);
        let sort = |mut v: Vec<Hash32>| {
            v.sort_unstable();
            v
        };
        let (a, b, c) = (sort(a), sort(b), sort(c));
        let mut out = Vec::new();
        merge_runs(&[&a, &b], &mut out);
        assert_eq!(out, sort([a.clone(), b.clone()].concat()));
        merge_runs(&[&a, &b, &c], &mut out);
        assert_eq!(out, sort([a, b, c].concat()));
    }

    #[test]
    fn bucket_table_covers_every_leaf_once() {
        let leaves: Vec<Hash32> = (0u32..5000)
            .map(|i| merkle::leaf_hash(&i.to_be_bytes()))
            .collect();
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
