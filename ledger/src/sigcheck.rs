//! Checking client signatures under one acceptance rule, one at a time or in a batch. It owns
//! the rule and the batch arithmetic; which signatures need checking (and which were already
//! checked) is decided by [`crate::pbft`].
//!
//! Why a rule of our own rather than `verify_strict`: batch verification is only safe in a
//! replicated system if it accepts exactly what single verification accepts, because two
//! correct peers may reach the same transaction by different paths (one checks it alone when a
//! client hands it in, another inside a pre-prepare's batch) and must agree on it, or agreement
//! on what is valid breaks. The randomized batch equation is *cofactored* (it multiplies by 8,
//! which kills any small-order component), while `verify_strict` is cofactorless, so a signer
//! can craft a signature whose `R` or key carries a torsion component that passes one and fails
//! the other. Here both paths check the same cofactored equation, with the encoding rules of
//! ZIP 215:
//!
//! * `S` must be canonical (`S < ℓ`), so signatures are not malleable through `S`;
//! * `A` (the key) and `R` must decode to curve points; non-canonical encodings decode as
//!   usual (they change the hashed bytes, so they cannot turn one valid signature into another);
//! * `A` must not have small order: for such a key `[8][k]A` vanishes and anyone could sign
//!   (a property of the key alone, so both paths apply it identically);
//! * `[8]([S]B − R − [k]A) = 0` with `k = SHA-512(R ‖ A ‖ M) mod ℓ` (RFC 8032).
//!
//! A batch checks `[8](Σ zᵢ·Rᵢ + Σ_keys (Σ zᵢ·kᵢ)·A − (Σ zᵢ·Sᵢ)·B) = 0` with 128-bit
//! coefficients `zᵢ`. Every batch of valid signatures passes; a batch with an invalid one passes
//! only if the coefficients happen to cancel its error, about 2⁻¹²⁷ per try. The coefficients
//! are derived from a hash of every item (key, signature, `k`), so the check needs no random
//! number generator (the core stays pure) and an adversary who picks the items cannot predict
//! them before fixing the items: each attempt is a fresh 2⁻¹²⁷ lottery. A failing batch is split
//! in halves until the invalid items are found, so every item's verdict is its single verdict.

use std::collections::BTreeMap;

use curve25519_dalek::constants::ED25519_BASEPOINT_POINT;
use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::{IsIdentity, VartimeMultiscalarMul};
use sha2::{Digest as _, Sha512};

use crate::crypto::{PublicKey, Signature};

/// Below this many items a failing batch is checked one by one instead of split again.
const SPLIT_FLOOR: usize = 4;

/// One signature to check, with its challenge `k` already hashed.
#[derive(Debug, Clone)]
pub struct Item {
    key: [u8; 32],
    sig: [u8; 64],
    k: Scalar,
}

impl Item {
    /// A signature by `key` over the concatenation of `message` parts.
    pub fn new(key: &PublicKey, sig: &Signature, message: &[&[u8]]) -> Self {
        let mut h = Sha512::new();
        h.update(&sig.0[..32]);
        h.update(key.0);
        for part in message {
            h.update(part);
        }
        let k = Scalar::from_bytes_mod_order_wide(&h.finalize().into());
        Self {
            key: key.0,
            sig: sig.0,
            k,
        }
    }

    fn r_bytes(&self) -> [u8; 32] {
        let mut r = [0; 32];
        r.copy_from_slice(&self.sig[..32]);
        r
    }

    fn s(&self) -> Option<Scalar> {
        let mut s = [0; 32];
        s.copy_from_slice(&self.sig[32..]);
        Option::from(Scalar::from_canonical_bytes(s))
    }
}

/// Whether `key` decodes to a point that is not of small order: the keys this rule accepts
/// signatures from (a small-order key lets anyone sign).
pub fn is_usable_key(key: &PublicKey) -> bool {
    key_point(&key.0).is_some()
}

/// The key as a point, unless it does not decode or has small order.
fn key_point(key: &[u8; 32]) -> Option<EdwardsPoint> {
    CompressedEdwardsY(*key)
        .decompress()
        .filter(|a| !a.is_small_order())
}

/// `R` and `S` of a signature, unless `R` does not decode or `S` is not canonical.
fn parts(item: &Item) -> Option<(EdwardsPoint, Scalar)> {
    let r = CompressedEdwardsY(item.r_bytes()).decompress()?;
    Some((r, item.s()?))
}

/// The single check: `[8]([S]B − R − [k]A) = 0`.
pub fn verify(item: &Item) -> bool {
    let (Some(a), Some((r, s))) = (key_point(&item.key), parts(item)) else {
        return false;
    };
    let sb_minus_ka = EdwardsPoint::vartime_double_scalar_mul_basepoint(&item.k, &-a, &s);
    (sb_minus_ka - r).mul_by_cofactor().is_identity()
}

/// Checks every item; the verdict of each is exactly [`verify`] of it (up to the 2⁻¹²⁷ chance
/// explained in the module docs), computed with one multi-scalar multiplication when all are
/// valid.
pub fn verify_batch(items: &[Item]) -> Vec<bool> {
    let mut verdicts = vec![false; items.len()];
    // Items that cannot even be decoded are invalid on both paths; the rest go to the batch.
    let mut keys: BTreeMap<[u8; 32], Option<EdwardsPoint>> = BTreeMap::new();
    let mut decoded = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let a = *keys.entry(item.key).or_insert_with(|| key_point(&item.key));
        if let (Some(a), Some((r, s))) = (a, parts(item)) {
            decoded.push(Decoded { index: i, a, r, s });
        }
    }
    check(items, &decoded, &mut verdicts);
    verdicts
}

struct Decoded {
    index: usize,
    a: EdwardsPoint,
    r: EdwardsPoint,
    s: Scalar,
}

fn check(items: &[Item], decoded: &[Decoded], verdicts: &mut [bool]) {
    if decoded.is_empty() {
        return;
    }
    if decoded.len() == 1 {
        let d = &decoded[0];
        let item = &items[d.index];
        let sb_minus_ka = EdwardsPoint::vartime_double_scalar_mul_basepoint(&item.k, &-d.a, &d.s);
        verdicts[d.index] = (sb_minus_ka - d.r).mul_by_cofactor().is_identity();
        return;
    }
    if batch_holds(items, decoded) {
        for d in decoded {
            verdicts[d.index] = true;
        }
        return;
    }
    if decoded.len() <= SPLIT_FLOOR {
        for d in decoded {
            check(items, std::slice::from_ref(d), verdicts);
        }
        return;
    }
    let (left, right) = decoded.split_at(decoded.len() / 2);
    check(items, left, verdicts);
    check(items, right, verdicts);
}

/// The batch equation over `decoded`, with coefficients derived from all of them.
fn batch_holds(items: &[Item], decoded: &[Decoded]) -> bool {
    let mut transcript = Sha512::new();
    transcript.update(b"emrflow-ledger/sigcheck-batch/v1");
    transcript.update((decoded.len() as u64).to_be_bytes());
    for d in decoded {
        let item = &items[d.index];
        transcript.update(item.key);
        transcript.update(item.sig);
        transcript.update(item.k.as_bytes());
    }
    let seed: [u8; 64] = transcript.finalize().into();

    let mut b_coeff = Scalar::ZERO;
    let mut a_coeffs: BTreeMap<[u8; 32], (EdwardsPoint, Scalar)> = BTreeMap::new();
    let mut scalars = Vec::with_capacity(decoded.len() + 1);
    let mut points = Vec::with_capacity(decoded.len() + 1);
    for (i, d) in decoded.iter().enumerate() {
        let item = &items[d.index];
        let z = coefficient(&seed, i as u64);
        b_coeff -= z * d.s;
        let entry = a_coeffs.entry(item.key).or_insert((d.a, Scalar::ZERO));
        entry.1 += z * item.k;
        scalars.push(z);
        points.push(d.r);
    }
    scalars.push(b_coeff);
    points.push(ED25519_BASEPOINT_POINT);
    // Signatures by the same key share one term for the key (clients sign many transactions).
    for (a, coeff) in a_coeffs.into_values() {
        scalars.push(coeff);
        points.push(a);
    }
    EdwardsPoint::vartime_multiscalar_mul(&scalars, &points)
        .mul_by_cofactor()
        .is_identity()
}

/// The `i`-th 128-bit coefficient: odd, so never zero.
fn coefficient(seed: &[u8; 64], i: u64) -> Scalar {
    let mut h = Sha512::new();
    h.update(seed);
    h.update(i.to_be_bytes());
    let out = h.finalize();
    let mut z = [0u8; 16];
    z.copy_from_slice(&out[..16]);
    Scalar::from(u128::from_le_bytes(z) | 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::KeyPair;

    /// A point of order 8 (the encoding is listed among Ed25519's small-order points).
    fn torsion() -> EdwardsPoint {
        let mut b = [0u8; 32];
        hex::decode_to_slice(
            "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
            &mut b,
        )
        .expect("hex");
        let t = CompressedEdwardsY(b).decompress().expect("on the curve");
        assert!(t.is_small_order() && !t.is_identity());
        let two = t + t;
        assert!(!(two + two).is_identity(), "order 8");
        t
    }

    fn scalar(label: &str) -> Scalar {
        Scalar::from_bytes_mod_order_wide(&Sha512::digest(label.as_bytes()).into())
    }

    /// Signs `msg` with secret scalar `a`, adding `t_r` to `R` and `t_a` to the published key:
    /// with non-identity torsion the signature satisfies the cofactored equation only.
    fn craft(
        a: &Scalar,
        msg: &[u8],
        t_r: EdwardsPoint,
        t_a: EdwardsPoint,
    ) -> (PublicKey, Signature) {
        let big_a = EdwardsPoint::mul_base(a) + t_a;
        let key = PublicKey(big_a.compress().0);
        let r = scalar("nonce") + scalar(std::str::from_utf8(msg).unwrap_or("m"));
        let big_r = EdwardsPoint::mul_base(&r) + t_r;
        let r_bytes = big_r.compress().0;
        let k = Scalar::from_bytes_mod_order_wide(
            &Sha512::new()
                .chain_update(r_bytes)
                .chain_update(key.0)
                .chain_update(msg)
                .finalize()
                .into(),
        );
        let s = r + k * a;
        let mut sig = [0u8; 64];
        sig[..32].copy_from_slice(&r_bytes);
        sig[32..].copy_from_slice(s.as_bytes());
        (key, Signature(sig))
    }

    fn strict(key: &PublicKey, msg: &[u8], sig: &Signature) -> bool {
        key.verifying_key().is_some_and(|k| {
            k.verify_strict(msg, &ed25519_dalek::Signature::from_bytes(&sig.0))
                .is_ok()
        })
    }

    #[test]
    fn honest_signatures_pass_alone_and_in_batches() {
        let key = KeyPair::from_label("client");
        let other = KeyPair::from_label("other");
        let items: Vec<Item> = (0..40u32)
            .map(|i| {
                let k = if i % 3 == 0 { &other } else { &key };
                let msg = i.to_be_bytes();
                Item::new(&k.public(), &k.sign(b"dom", &msg), &[b"dom", &msg])
            })
            .collect();
        assert!(items.iter().all(verify));
        assert_eq!(verify_batch(&items), vec![true; 40]);
        assert!(verify_batch(&[]).is_empty());
    }

    #[test]
    fn a_bad_signature_is_found_in_a_batch_and_only_it() {
        let key = KeyPair::from_label("client");
        let mut items: Vec<Item> = (0..33u32)
            .map(|i| {
                let msg = i.to_be_bytes();
                Item::new(&key.public(), &key.sign(b"", &msg), &[&msg])
            })
            .collect();
        // Another message under a valid signature, and a signature with S + ℓ (not canonical).
        items[7] = Item::new(&key.public(), &key.sign(b"", b"x"), &[b"y"]);
        let mut sig = key.sign(b"", &20u32.to_be_bytes());
        let mut ell = [0u8; 32];
        hex::decode_to_slice(
            "edd3f55c1a631258d69cf7a2def9de1400000000000000000000000000000010",
            &mut ell,
        )
        .expect("hex");
        let mut carry = 0u16;
        for (s, l) in sig.0[32..].iter_mut().zip(ell) {
            let v = u16::from(*s) + u16::from(l) + carry;
            *s = v as u8;
            carry = v >> 8;
        }
        items[20] = Item::new(&key.public(), &sig, &[&20u32.to_be_bytes()]);
        let verdicts = verify_batch(&items);
        for (i, v) in verdicts.iter().enumerate() {
            assert_eq!(*v, i != 7 && i != 20, "item {i}");
            assert_eq!(*v, verify(&items[i]), "item {i}: batch and single differ");
        }
    }

    #[test]
    fn torsion_crafted_signatures_get_the_same_verdict_on_both_paths() {
        let a = scalar("secret");
        let t = torsion();
        let zero = EdwardsPoint::default();
        let honest = KeyPair::from_label("client");
        let cases = [
            ("torsion in R", t, zero),
            ("torsion in the key", zero, t),
            ("torsion in both", t, t),
        ];
        for (what, t_r, t_a) in cases {
            let msg = what.as_bytes();
            let (key, sig) = craft(&a, msg, t_r, t_a);
            // The cofactorless rule rejects them; that is exactly the disagreement to avoid.
            assert!(
                !strict(&key, msg, &sig),
                "{what}: the cofactorless rule rejects"
            );
            let item = Item::new(&key, &sig, &[msg]);
            assert!(verify(&item), "{what}: the cofactored rule accepts");
            // Alone, among honest signatures, and next to an invalid one: always accepted.
            let fill = |n: u32| -> Vec<Item> {
                (0..n)
                    .map(|i| {
                        let m = i.to_be_bytes();
                        Item::new(&honest.public(), &honest.sign(b"", &m), &[&m])
                    })
                    .collect()
            };
            for mut batch in [vec![item.clone()], fill(9), fill(30)] {
                let at = batch.len() / 2;
                batch.insert(at, item.clone());
                let forged = Item::new(&honest.public(), &honest.sign(b"", b"a"), &[b"b"]);
                batch.push(forged);
                let verdicts = verify_batch(&batch);
                for (i, it) in batch.iter().enumerate() {
                    assert_eq!(verdicts[i], verify(it), "{what}: item {i} differs");
                }
                assert!(verdicts[at], "{what}: crafted item accepted in the batch");
                assert!(!verdicts[batch.len() - 1], "{what}: forged item rejected");
            }
        }
    }

    #[test]
    fn small_order_keys_are_rejected_on_both_paths() {
        // With a small-order key, [8][k]A vanishes: R = [S]B satisfies the equation for any
        // message, so anyone could sign. Both paths refuse such keys.
        let t = torsion();
        let key = PublicKey(t.compress().0);
        let s = scalar("anything");
        let mut sig = [0u8; 64];
        sig[..32].copy_from_slice(&EdwardsPoint::mul_base(&s).compress().0);
        sig[32..].copy_from_slice(s.as_bytes());
        let item = Item::new(&key, &Signature(sig), &[b"forged"]);
        assert!(!verify(&item));
        let honest = KeyPair::from_label("client");
        let ok = Item::new(&honest.public(), &honest.sign(b"", b"m"), &[b"m"]);
        assert_eq!(verify_batch(&[ok, item]), vec![true, false]);
    }
}
