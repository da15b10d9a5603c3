//! A batch's Merkle tree as the store keeps it: the leaves in chunks of [`CHUNK`], and the
//! chunk roots. An RFC 6962 tree splits at the largest power of two below its size, so every
//! full chunk (and the last, partial one) is a subtree of the batch tree, and the tree over the
//! chunk roots is the rest of it: a proof is one chunk read plus the chunk roots, not the
//! million leaves of an import. A full chunk is stored with every level above its leaves, so the
//! path inside it is read, not recomputed from 1,024 leaves at each read; the paths over the
//! chunk roots are computed once per batch ([`upper_paths`]) by whoever serves reads.

use merkle::Digest;

/// Leaves per stored chunk (a power of two).
pub const CHUNK: usize = 1024;

/// The roots of `leaves`' chunks.
pub fn chunk_roots(leaves: &[Digest]) -> Vec<Digest> {
    leaves.chunks(CHUNK).map(merkle::root).collect()
}

/// The batch root from its chunk roots (equal to the RFC 6962 root of all the leaves).
pub fn batch_root(chunk_roots: &[Digest]) -> Digest {
    merkle::root(chunk_roots)
}

/// The audit path of leaf `index`: its path inside its stored chunk, then `upper`, the path of
/// its chunk's root among the chunk roots (an entry of [`upper_paths`]).
pub fn proof(index: u64, chunk: &[Digest], upper: &[Digest]) -> Vec<Digest> {
    let mut path = chunk_path(index, chunk);
    path.extend_from_slice(upper);
    path
}

/// The audit path of leaf `index` inside its chunk, stored as [`encode_chunk`] wrote it: read
/// from the stored levels of a full chunk, computed from the leaves of the last, partial one.
fn chunk_path(index: u64, stored: &[Digest]) -> Vec<Digest> {
    let mut i = (index % CHUNK as u64) as usize;
    if stored.len() != 2 * CHUNK - 1 {
        return merkle::inclusion_proof(i, stored);
    }
    // A full chunk is a perfect binary tree: the siblings bottom-up, level by level.
    let mut path = Vec::with_capacity(CHUNK.trailing_zeros() as usize);
    let (mut offset, mut width) = (0, CHUNK);
    while width > 1 {
        path.push(stored[offset + (i ^ 1)]);
        offset += width;
        width /= 2;
        i /= 2;
    }
    path
}

/// The audit paths of every chunk root in the tree over the chunk roots, by chunk number.
pub fn upper_paths(chunk_roots: &[Digest]) -> Vec<Vec<Digest>> {
    merkle::all_inclusion_proofs(chunk_roots)
}

/// A chunk as stored: its leaves, then for a full chunk each level above them up to its root
/// (2 × [`CHUNK`] − 1 nodes).
pub fn encode_chunk(leaves: &[Digest]) -> Vec<u8> {
    let mut nodes = leaves.to_vec();
    if leaves.len() == CHUNK {
        let mut level = leaves.to_vec();
        while level.len() > 1 {
            level = level
                .chunks_exact(2)
                .map(|p| merkle::node_hash(&p[0], &p[1]))
                .collect();
            nodes.extend_from_slice(&level);
        }
    }
    encode(&nodes)
}

/// Leaf hashes as stored: 32 bytes each.
pub fn encode(leaves: &[Digest]) -> Vec<u8> {
    leaves.iter().flat_map(|d| d.0).collect()
}

/// Stored leaf hashes back.
pub fn decode(bytes: &[u8]) -> Vec<Digest> {
    bytes
        .chunks_exact(32)
        .map(|c| Digest(c.try_into().expect("32-byte chunks")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_tree_is_the_rfc6962_tree() {
        for n in [1usize, 2, 1023, 1024, 1025, 2048, 3000, 5121] {
            let leaves: Vec<Digest> = (0..n as u64)
                .map(|i| merkle::leaf_hash(&i.to_le_bytes()))
                .collect();
            let roots = chunk_roots(&leaves);
            let root = batch_root(&roots);
            assert_eq!(root, merkle::root(&leaves), "n = {n}");
            for i in [0, n / 2, n - 1] {
                let c = i / CHUNK;
                let chunk = &leaves[c * CHUNK..((c + 1) * CHUNK).min(n)];
                let stored = decode(&encode_chunk(chunk));
                let upper = &upper_paths(&roots)[c];
                let path = proof(i as u64, &stored, upper);
                assert!(path.ends_with(upper), "n = {n}, leaf {i}");
                assert!(
                    merkle::verify_inclusion(i as u64, n as u64, &leaves[i], &path, &root),
                    "n = {n}, i = {i}"
                );
                assert_eq!(
                    path,
                    merkle::inclusion_proof(i, &leaves),
                    "n = {n}, i = {i}"
                );
            }
        }
    }
}
