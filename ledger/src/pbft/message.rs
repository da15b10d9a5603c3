//! The PBFT messages of Castro & Liskov (OSDI '99 §4, TOCS 2002 §4), each signed by its sender
//! ([`Signed`]), and the certificates built from them. This module owns encoding for signatures
//! and the *stateless* checks of a message (signature, digest, certificate shape); whether a
//! message fits the replica's current view and log is decided in [`super::replica`].

use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};

use crate::crypto::{Digest, Enc, KeyPair, Signature, verify_with};
use crate::ids::{ReplicaId, SeqNo, Time, View};
use crate::tx::SignedTx;

/// Domain tag of every consensus signature.
pub const CONSENSUS_DOMAIN: &[u8] = b"emrflow-ledger/consensus/v1";

/// An ordered batch of client requests: the `m` of a pre-prepare (paper §4.2 batching).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    /// The primary's clock when it proposed the batch; it becomes the block time.
    pub timestamp: Time,
    /// The requests, in execution order.
    pub txs: Vec<SignedTx>,
}

impl Batch {
    /// The null request of a new view (paper §4.4): no transactions.
    pub fn null() -> Self {
        Self {
            timestamp: Time(0),
            txs: Vec::new(),
        }
    }

    /// `D(m)`: SHA-256 over the timestamp and the transaction ids.
    pub fn digest(&self) -> Digest {
        Self::digest_of(self.timestamp, &self.ids())
    }

    /// The bytes its transactions take on the wire ([`SignedTx::wire_size`]).
    pub fn wire_size(&self) -> usize {
        self.txs.iter().map(SignedTx::wire_size).sum()
    }

    /// The ids of the transactions, in order.
    pub fn ids(&self) -> Vec<Digest> {
        self.txs.iter().map(SignedTx::digest).collect()
    }

    /// `D(m)` of a batch with this timestamp and these transaction ids, for callers that have
    /// the ids already (hashing every transaction again costs as much as the rest of `D`).
    pub fn digest_of(timestamp: Time, ids: &[Digest]) -> Digest {
        let mut e = Enc::new(b"emrflow-ledger/batch/v1");
        e.u64(timestamp.0).u64(ids.len() as u64);
        for id in ids {
            e.digest(id);
        }
        e.hash()
    }
}

/// Something a replica signs: a tag and a fixed layout of its fields.
pub trait Signable {
    /// Distinguishes message kinds in signed bytes.
    const TAG: u8;
    /// Writes the signed fields.
    fn write(&self, e: &mut Enc);
}

/// A message with its sender and the sender's signature over `CONSENSUS_DOMAIN ‖ ledger ‖ from ‖
/// TAG ‖ fields`, where `ledger` is the genesis hash: a vote signed for one ledger can never be
/// counted on another ledger with the same peer keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signed<T> {
    /// The replica that signed.
    pub from: ReplicaId,
    /// The message.
    pub body: T,
    /// The signature.
    pub sig: Signature,
}

fn message_bytes<T: Signable>(e: &mut Enc, from: ReplicaId, body: &T) {
    e.u32(from.0).u8(T::TAG);
    body.write(e);
}

fn signed_bytes<T: Signable>(ledger: &Digest, from: ReplicaId, body: &T) -> Enc {
    let mut e = Enc::new(b"msg");
    e.digest(ledger);
    message_bytes(&mut e, from, body);
    e
}

impl<T: Signable> Signed<T> {
    /// Signs `body` as replica `from` of the ledger whose genesis hash is `ledger`.
    pub fn new(key: &KeyPair, ledger: &Digest, from: ReplicaId, body: T) -> Self {
        let sig = key.sign(CONSENSUS_DOMAIN, signed_bytes(ledger, from, &body).finish());
        Self { from, body, sig }
    }

    /// Checks the signature against the sender's key in `keys` (indexed by replica) for the
    /// ledger `ledger`.
    pub fn verify(&self, keys: &[VerifyingKey], ledger: &Digest) -> bool {
        keys.get(self.from.0 as usize).is_some_and(|k| {
            verify_with(
                k,
                CONSENSUS_DOMAIN,
                signed_bytes(ledger, self.from, &self.body).finish(),
                &self.sig,
            )
        })
    }

    /// A digest naming this exact signed message, used when a bigger message embeds it (the
    /// signature binds the ledger, so the id need not repeat it).
    pub fn id(&self) -> Digest {
        let mut e = Enc::new(b"msg-id");
        message_bytes(&mut e, self.from, &self.body);
        e.bytes(&self.sig.0);
        e.hash()
    }
}

/// `<PRE-PREPARE, v, n, d>` with the batch `m` piggybacked (paper §4.2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrePrepare {
    /// View `v`.
    pub view: View,
    /// Sequence number `n`.
    pub seq: SeqNo,
    /// `d = D(m)`.
    pub digest: Digest,
    /// `m`; not signed directly but bound through `digest`.
    pub batch: Batch,
}

impl Signable for PrePrepare {
    const TAG: u8 = 1;
    fn write(&self, e: &mut Enc) {
        e.u64(self.view.0).u64(self.seq.0).digest(&self.digest);
    }
}

/// `<PREPARE, v, n, d, i>` (paper §4.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Prepare {
    /// View `v`.
    pub view: View,
    /// Sequence number `n`.
    pub seq: SeqNo,
    /// Batch digest `d`.
    pub digest: Digest,
}

impl Signable for Prepare {
    const TAG: u8 = 2;
    fn write(&self, e: &mut Enc) {
        e.u64(self.view.0).u64(self.seq.0).digest(&self.digest);
    }
}

/// `<COMMIT, v, n, D(m), i>` (paper §4.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Commit {
    /// View `v`.
    pub view: View,
    /// Sequence number `n`.
    pub seq: SeqNo,
    /// Batch digest.
    pub digest: Digest,
}

impl Signable for Commit {
    const TAG: u8 = 3;
    fn write(&self, e: &mut Enc) {
        e.u64(self.view.0).u64(self.seq.0).digest(&self.digest);
    }
}

/// `<CHECKPOINT, n, d, i>` (paper §4.3): `d` is the digest of the state after executing `n`,
/// here the hash of block `n`, which chains every earlier block. Sent after every block, so
/// `2f + 1` of them are both the stable-checkpoint proof and the block's commit certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Sequence number (block height).
    pub seq: SeqNo,
    /// State digest (block hash).
    pub digest: Digest,
}

impl Signable for Checkpoint {
    const TAG: u8 = 4;
    fn write(&self, e: &mut Enc) {
        e.u64(self.seq.0).digest(&self.digest);
    }
}

/// A stable checkpoint and its proof `C`: `2f + 1` checkpoint messages (paper §4.3). The
/// genesis checkpoint (sequence 0) needs no proof.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointProof {
    /// Sequence number `n` of the checkpoint.
    pub seq: SeqNo,
    /// State digest.
    pub digest: Digest,
    /// The signed checkpoint messages.
    pub proof: Vec<Signed<Checkpoint>>,
}

impl CheckpointProof {
    /// The genesis checkpoint.
    pub fn genesis(digest: Digest) -> Self {
        Self {
            seq: SeqNo(0),
            digest,
            proof: Vec::new(),
        }
    }

    /// Whether this is a valid proof: genesis with the expected digest, or `quorum` distinct
    /// valid signatures over `(seq, digest)` for the ledger `genesis`.
    pub fn is_valid(&self, keys: &[VerifyingKey], quorum: usize, genesis: &Digest) -> bool {
        if self.seq == SeqNo(0) {
            return self.digest == *genesis;
        }
        let mut seen = std::collections::BTreeSet::new();
        for m in &self.proof {
            if m.body.seq != self.seq || m.body.digest != self.digest || !m.verify(keys, genesis) {
                return false;
            }
            seen.insert(m.from);
        }
        seen.len() >= quorum
    }
}

/// A prepared certificate `P_m` (paper §4.4): the pre-prepare and `2f` matching prepares from
/// distinct backups.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreparedProof {
    /// The accepted pre-prepare.
    pub pre_prepare: Signed<PrePrepare>,
    /// `2f` prepares from replicas other than the primary of its view.
    pub prepares: Vec<Signed<Prepare>>,
}

impl PreparedProof {
    /// Sequence number.
    pub fn seq(&self) -> SeqNo {
        self.pre_prepare.body.seq
    }
    /// View in which it prepared.
    pub fn view(&self) -> View {
        self.pre_prepare.body.view
    }
    /// Batch digest.
    pub fn digest(&self) -> Digest {
        self.pre_prepare.body.digest
    }

    /// Checks the certificate (paper §4.4, conditions on `P`): the pre-prepare is signed by the
    /// primary of its view and matches its batch, and `quorum - 1` distinct backups (`2f` when
    /// `n = 3f + 1`) signed matching prepares for the ledger `ledger`.
    pub fn is_valid(&self, keys: &[VerifyingKey], quorum: usize, ledger: &Digest) -> bool {
        let pp = &self.pre_prepare;
        let n = keys.len();
        if pp.from != pp.body.view.primary(n)
            || !pp.verify(keys, ledger)
            || pp.body.batch.digest() != pp.body.digest
        {
            return false;
        }
        let mut seen = std::collections::BTreeSet::new();
        for p in &self.prepares {
            if p.body.view != pp.body.view
                || p.body.seq != pp.body.seq
                || p.body.digest != pp.body.digest
                || p.from == pp.from
                || !p.verify(keys, ledger)
            {
                return false;
            }
            seen.insert(p.from);
        }
        seen.len() + 1 >= quorum
    }
}

/// `<VIEW-CHANGE, v+1, n, C, P, i>` (paper §4.4).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViewChange {
    /// The view being moved to.
    pub new_view: View,
    /// The sender's last stable checkpoint `n` with its proof `C`.
    pub checkpoint: CheckpointProof,
    /// `P`: a prepared certificate for every request prepared above `n`.
    pub prepared: Vec<PreparedProof>,
}

impl Signable for ViewChange {
    const TAG: u8 = 5;
    fn write(&self, e: &mut Enc) {
        e.u64(self.new_view.0)
            .u64(self.checkpoint.seq.0)
            .digest(&self.checkpoint.digest)
            .u64(self.checkpoint.proof.len() as u64);
        for m in &self.checkpoint.proof {
            e.digest(&m.id());
        }
        e.u64(self.prepared.len() as u64);
        for p in &self.prepared {
            e.digest(&p.pre_prepare.id()).u64(p.prepares.len() as u64);
            for m in &p.prepares {
                e.digest(&m.id());
            }
        }
    }
}

/// `<NEW-VIEW, v+1, V, O>` (paper §4.4): the view changes `V` and the pre-prepares `O`
/// computed from them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewView {
    /// The new view.
    pub view: View,
    /// `V`: `2f + 1` valid view-change messages for `view`.
    pub view_changes: Vec<Signed<ViewChange>>,
    /// `O`: one pre-prepare per sequence number in `(min-s, max-s]`.
    pub pre_prepares: Vec<Signed<PrePrepare>>,
}

impl Signable for NewView {
    const TAG: u8 = 6;
    fn write(&self, e: &mut Enc) {
        e.u64(self.view.0).u64(self.view_changes.len() as u64);
        for m in &self.view_changes {
            e.digest(&m.id());
        }
        e.u64(self.pre_prepares.len() as u64);
        for m in &self.pre_prepares {
            e.digest(&m.id());
        }
    }
}

/// Every consensus message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// Pre-prepare (primary to backups).
    PrePrepare(Signed<PrePrepare>),
    /// Prepare (backups to all).
    Prepare(Signed<Prepare>),
    /// Commit (all to all).
    Commit(Signed<Commit>),
    /// Checkpoint (all to all, after every block).
    Checkpoint(Signed<Checkpoint>),
    /// View change.
    ViewChange(Signed<ViewChange>),
    /// New view (new primary to all).
    NewView(Signed<NewView>),
}

impl Message {
    /// The replica that signed the message.
    pub fn from(&self) -> ReplicaId {
        match self {
            Self::PrePrepare(m) => m.from,
            Self::Prepare(m) => m.from,
            Self::Commit(m) => m.from,
            Self::Checkpoint(m) => m.from,
            Self::ViewChange(m) => m.from,
            Self::NewView(m) => m.from,
        }
    }

    /// The message kind, for traces.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::PrePrepare(_) => "pre-prepare",
            Self::Prepare(_) => "prepare",
            Self::Commit(_) => "commit",
            Self::Checkpoint(_) => "checkpoint",
            Self::ViewChange(_) => "view-change",
            Self::NewView(_) => "new-view",
        }
    }
}
