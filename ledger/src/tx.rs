//! Client transactions: a body (ledger id, nonce, contract call) encoded canonically and signed
//! by the client's ed25519 key. It owns signing and checking; what a call *means* belongs to
//! [`crate::contracts`], and whether a nonce was already used is decided on execution.

use serde::{Deserialize, Serialize};

use crate::codec;
use crate::contracts::Call;
use crate::crypto::{Digest, Enc, KeyPair, PublicKey, Signature};
use crate::error::Result;
use crate::sigcheck;

/// Domain tag of client transaction signatures.
pub const TX_DOMAIN: &[u8] = b"emrflow-ledger/tx/v1";

/// The tag the signed bytes of a transaction start with (after [`TX_DOMAIN`]).
const TX_TAG: &[u8] = b"tx";
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
        let mut e = Enc::new(TX_TAG);
        e.bytes(&signer.0).bytes(payload);
        e.finish().to_vec()
    }

    /// The signature check of this transaction, for [`sigcheck`]. The signed message is
    /// `TX_DOMAIN ‖ signed_bytes`, streamed into the hash part by part rather than copied
    /// (a peer checks every transaction it orders).
    pub fn sig_item(&self) -> sigcheck::Item {
        let len = (self.payload.len() as u64).to_be_bytes();
        sigcheck::Item::new(
            &self.signer,
            &self.signature,
            &[
                TX_DOMAIN,
                &(TX_TAG.len() as u64).to_be_bytes(),
                TX_TAG,
                &(self.signer.0.len() as u64).to_be_bytes(),
                &self.signer.0,
                &len,
                &self.payload,
            ],
        )
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
}
