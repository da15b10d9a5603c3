//! Client transactions and queries: a body (ledger id, nonce, contract call or query) encoded
//! canonically and signed by the client's ed25519 key. It owns signing, checking and the size
//! limits of what a client may send; what a call *means* and who may make it belong to
//! [`crate::contracts`], and whether a nonce was already used is decided on execution.

use serde::{Deserialize, Serialize};

use crate::codec;
use crate::contracts::{Call, Query};
use crate::crypto::{Digest, Enc, KeyPair, PublicKey, Signature};
use crate::error::{Error, Result};
use crate::sigcheck;

/// Domain tag of client transaction signatures.
pub const TX_DOMAIN: &[u8] = b"emrflow-ledger/tx/v1";
/// Domain tag of client query signatures: a signed query can never pass for a transaction.
pub const QUERY_DOMAIN: &[u8] = b"emrflow-ledger/query/v1";

/// The largest transaction body, in bytes of its canonical encoding. An anchor with the longest
/// strings and the most parents the contracts allow takes under 12 KiB; the limit leaves room
/// and keeps a batch of [`crate::pbft::MAX_BATCH_BYTES`] at dozens of transactions at least.
/// Checked when a client submits, when a peer relays, and in every pre-prepare.
pub const MAX_TX_BYTES: usize = 64 * 1024;
/// The largest query body, in bytes of its canonical encoding.
pub const MAX_QUERY_BYTES: usize = 4 * 1024;
/// What a transaction adds on the wire to its body: signer, signature and length prefixes.
const TX_OVERHEAD: usize = 32 + 64 + 16;

/// The tag the signed bytes of a transaction start with (after [`TX_DOMAIN`]).
const TX_TAG: &[u8] = b"tx";
/// The tag the signed bytes of a query start with (after [`QUERY_DOMAIN`]).
const QUERY_TAG: &[u8] = b"query";
/// The tag the hashed bytes of a transaction id start with.
const ID_TAG: &[u8] = b"emrflow-ledger/txid/v1";

/// What a client signs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxBody {
    /// The genesis hash of the ledger this transaction is meant for, so it cannot be replayed
    /// on another ledger.
    pub ledger: Digest,
    /// Unique per signer; a reused nonce is rejected as a replay.
    pub nonce: u64,
    /// The contract call.
    pub call: Call,
}

/// A transaction as it travels and is stored: the canonical body bytes, the signer and the
/// signature over them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedTx {
    /// The client identity that signed.
    pub signer: PublicKey,
    /// The canonical encoding of a [`TxBody`].
    #[serde(with = "crate::codec::bytes")]
    pub payload: Vec<u8>,
    /// ed25519 over [`TX_DOMAIN`] ‖ `signer` ‖ `payload`.
    pub signature: Signature,
}

impl SignedTx {
    /// Encodes and signs `body` with `key`.
    pub fn sign(key: &KeyPair, body: &TxBody) -> Result<Self> {
        let payload = codec::encode(body)?;
        let signer = key.public();
        let signature = key.sign(TX_DOMAIN, &Self::signed_bytes(&signer, &payload));
        Ok(Self {
            signer,
            payload,
            signature,
        })
    }

    fn signed_bytes(signer: &PublicKey, payload: &[u8]) -> Vec<u8> {
        signed_bytes(TX_TAG, signer, payload)
    }

    /// The signature check of this transaction, for [`sigcheck`]. The signed message is
    /// `TX_DOMAIN ‖ signed_bytes`, streamed into the hash part by part rather than copied
    /// (a peer checks every transaction it orders).
    pub fn sig_item(&self) -> sigcheck::Item {
        sig_item(
            TX_DOMAIN,
            TX_TAG,
            &self.signer,
            &self.signature,
            &self.payload,
        )
    }

    /// Bytes this transaction takes on the wire (an upper bound of its canonical encoding).
    pub fn wire_size(&self) -> usize {
        self.payload.len() + TX_OVERHEAD
    }

    /// The checks that need no state and no signature, so every correct peer reaches the same
    /// verdict on the same bytes: the body is at most [`MAX_TX_BYTES`], decodes, names the
    /// ledger `ledger`, and its call keeps the contracts' string and list limits. Returns the
    /// body, or why it was refused.
    pub fn check_shape(&self, ledger: &Digest) -> std::result::Result<TxBody, String> {
        if self.payload.len() > MAX_TX_BYTES {
            return Err(format!(
                "transaction body of {} bytes is over the {MAX_TX_BYTES}-byte limit",
                self.payload.len()
            ));
        }
        let body = self
            .body()
            .map_err(|e| format!("malformed transaction: {e}"))?;
        if body.ledger != *ledger {
            return Err("transaction is for another ledger".into());
        }
        body.call.check_limits()?;
        Ok(body)
    }

    /// Whether the signature is valid for the signer, under the rule of [`sigcheck`]: the same
    /// verdict [`SignedTx::verify_all`] reaches for it in a batch.
    pub fn verify(&self) -> bool {
        sigcheck::verify(&self.sig_item())
    }

    /// [`SignedTx::verify`] of each transaction, checked as one batch.
    pub fn verify_all<'a>(txs: impl IntoIterator<Item = &'a SignedTx>) -> Vec<bool> {
        let items: Vec<sigcheck::Item> = txs.into_iter().map(Self::sig_item).collect();
        sigcheck::verify_batch(&items)
    }

    /// The transaction id: SHA-256 over signer, payload and signature, laid out as
    /// [`Enc`] would (`Enc::new(ID_TAG).bytes(signer).bytes(payload).bytes(signature)`) but
    /// hashed part by part: the id is computed on every peer for every transaction.
    pub fn digest(&self) -> Digest {
        Digest::of_parts(&[
            &(ID_TAG.len() as u64).to_be_bytes(),
            ID_TAG,
            &(self.signer.0.len() as u64).to_be_bytes(),
            &self.signer.0,
            &(self.payload.len() as u64).to_be_bytes(),
            &self.payload,
            &(self.signature.0.len() as u64).to_be_bytes(),
            &self.signature.0,
        ])
    }

    /// Decodes the body.
    pub fn body(&self) -> Result<TxBody> {
        codec::decode(&self.payload)
    }
}

/// `TAG ‖ signer ‖ payload`, length-prefixed as [`Enc`] writes them.
fn signed_bytes(tag: &[u8], signer: &PublicKey, payload: &[u8]) -> Vec<u8> {
    let mut e = Enc::new(tag);
    e.bytes(&signer.0).bytes(payload);
    e.finish().to_vec()
}

/// The [`sigcheck`] item of `domain ‖ signed_bytes(tag, signer, payload)`, streamed part by part.
fn sig_item(
    domain: &[u8],
    tag: &[u8],
    signer: &PublicKey,
    signature: &Signature,
    payload: &[u8],
) -> sigcheck::Item {
    sigcheck::Item::new(
        signer,
        signature,
        &[
            domain,
            &(tag.len() as u64).to_be_bytes(),
            tag,
            &(signer.0.len() as u64).to_be_bytes(),
            &signer.0,
            &(payload.len() as u64).to_be_bytes(),
            payload,
        ],
    )
}

/// What a client signs to ask a question: queries are answered only to registered identities,
/// and the audit trail only to those whose role allows it (see [`crate::contracts::State::authorize_query`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueryBody {
    /// The genesis hash of the ledger asked.
    pub ledger: Digest,
    /// A value of the client's choosing, so that two identical questions are distinct messages.
    pub nonce: u64,
    /// The question.
    pub query: Query,
}

/// A query as it travels: the canonical body bytes, the signer and the signature over them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedQuery {
    /// The client identity that asks.
    pub signer: PublicKey,
    /// The canonical encoding of a [`QueryBody`].
    #[serde(with = "crate::codec::bytes")]
    pub payload: Vec<u8>,
    /// ed25519 over [`QUERY_DOMAIN`] ‖ `signer` ‖ `payload`.
    pub signature: Signature,
}

impl SignedQuery {
    /// Encodes and signs `body` with `key`.
    pub fn sign(key: &KeyPair, body: &QueryBody) -> Result<Self> {
        let payload = codec::encode(body)?;
        let signer = key.public();
        let signature = key.sign(QUERY_DOMAIN, &signed_bytes(QUERY_TAG, &signer, &payload));
        Ok(Self {
            signer,
            payload,
            signature,
        })
    }

    /// Checks size, signature and ledger, and returns the body. What the signer may ask is the
    /// contracts' decision.
    pub fn open(&self, ledger: &Digest) -> Result<QueryBody> {
        if self.payload.len() > MAX_QUERY_BYTES {
            return Err(Error::Verification(format!(
                "query body of {} bytes is over the {MAX_QUERY_BYTES}-byte limit",
                self.payload.len()
            )));
        }
        let item = sig_item(
            QUERY_DOMAIN,
            QUERY_TAG,
            &self.signer,
            &self.signature,
            &self.payload,
        );
        if !sigcheck::verify(&item) {
            return Err(Error::Verification("bad query signature".into()));
        }
        let body: QueryBody = codec::decode(&self.payload)?;
        if body.ledger != *ledger {
            return Err(Error::Verification("the query names another ledger".into()));
        }
        Ok(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contracts::{Access, Call};

    #[test]
    fn streamed_id_and_message_are_the_encoded_ones() {
        let key = KeyPair::from_label("client");
        let tx = SignedTx::sign(
            &key,
            &TxBody {
                ledger: Digest::of(b"ledger"),
                nonce: 7,
                call: Call::RecordAccess {
                    subject: Digest::of(b"s"),
                    access: Access::Read,
                    purpose: "p".repeat(300),
                },
            },
        )
        .expect("sign");
        let mut e = Enc::new(ID_TAG);
        e.bytes(&tx.signer.0)
            .bytes(&tx.payload)
            .bytes(&tx.signature.0);
        assert_eq!(tx.digest(), e.hash());
        let signed = SignedTx::signed_bytes(&tx.signer, &tx.payload);
        assert!(tx.signer.verify(TX_DOMAIN, &signed, &tx.signature));
        assert!(tx.verify());
        let mut other = tx.clone();
        other.payload.push(0);
        assert!(!other.verify());
        assert_ne!(other.digest(), tx.digest());
    }

    #[test]
    fn shape_limits_and_signed_queries() {
        let key = KeyPair::from_label("client");
        let ledger = Digest::of(b"ledger");
        let sign = |purpose: String, ledger| {
            SignedTx::sign(
                &key,
                &TxBody {
                    ledger,
                    nonce: 1,
                    call: Call::RecordAccess {
                        subject: Digest::of(b"s"),
                        access: Access::Read,
                        purpose,
                    },
                },
            )
            .expect("sign")
        };
        assert!(sign("care".into(), ledger).check_shape(&ledger).is_ok());
        let other = sign("care".into(), Digest::of(b"other"));
        assert!(other.check_shape(&ledger).is_err());
        let long = sign("p".repeat(crate::contracts::MAX_PURPOSE_LEN + 1), ledger);
        assert!(long.check_shape(&ledger).is_err());
        let mut huge = sign("care".into(), ledger);
        huge.payload = vec![0; MAX_TX_BYTES + 1];
        let e = huge.check_shape(&ledger).err().unwrap_or_default();
        assert!(e.contains("limit"), "{e}");

        let q = SignedQuery::sign(
            &key,
            &QueryBody {
                ledger,
                nonce: 0,
                query: Query::Head,
            },
        )
        .expect("sign");
        assert_eq!(q.open(&ledger).expect("open").query, Query::Head);
        assert!(q.open(&Digest::of(b"other")).is_err());
        let mut forged = q.clone();
        forged.signer = KeyPair::from_label("someone").public();
        assert!(forged.open(&ledger).is_err());
        // A query signature never verifies as a transaction.
        let as_tx = SignedTx {
            signer: q.signer,
            payload: q.payload.clone(),
            signature: q.signature,
        };
        assert!(!as_tx.verify());
    }
}
