//! The peer's durable store: blocks, certificates and the PBFT persistent state in one redb
//! file. It owns the on-disk layout and atomic, fsynced writes; it knows nothing of consensus
//! rules (what to write and when is decided by [`crate::peer`] and the node host).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

use crate::chain::{Block, CertifiedBlock, CommitCertificate};
use crate::codec;
use crate::crypto::Digest;
use crate::error::{Error, Result};
use crate::pbft::{Batch, PersistentState, PrePrepare, PreparedProof, Signed, SlotState};

const BLOCKS: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("blocks");
const CERTS: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("certs");
const META: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("consensus");
const BATCHES: TableDefinition<'_, &[u8; 32], &[u8]> = TableDefinition::new("batches");
const STATE_KEY: &str = "state";

/// What one step of the host writes, atomically.
#[derive(Debug, Default)]
pub struct WriteBatch {
    /// The replica's persistent state, if it changed.
    pub state: Option<PersistentState>,
    /// Newly executed blocks.
    pub blocks: Vec<Block>,
    /// Newly known certificates.
    pub certs: Vec<CommitCertificate>,
}

impl WriteBatch {
    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.state.is_none() && self.blocks.is_empty() && self.certs.is_empty()
    }
}

/// One peer's redb database.
#[derive(Debug)]
pub struct Store {
    db: Database,
    path: PathBuf,
    /// Batches already in the `batches` table, so each is written once.
    written: Mutex<BTreeSet<Digest>>,
}

/// The state without the batches of its pre-prepares (they are bound by their digest, not by
/// the signature bytes), so the often-rewritten state stays small; and the batches, by digest.
/// Only the small parts are copied: a batch is encoded from the state it sits in.
fn strip(state: &PersistentState) -> (PersistentState, BTreeMap<Digest, &Batch>) {
    let mut batches = BTreeMap::new();
    let slim = |pp: &Signed<PrePrepare>| -> Signed<PrePrepare> {
        Signed {
            from: pp.from,
            sig: pp.sig,
            body: PrePrepare {
                view: pp.body.view,
                seq: pp.body.seq,
                digest: pp.body.digest,
                batch: Batch::null(),
            },
        }
    };
    let mut slots = Vec::with_capacity(state.slots.len());
    for slot in &state.slots {
        let pre_prepare = slot.pre_prepare.as_ref().map(|pp| {
            batches.insert(pp.body.digest, &pp.body.batch);
            slim(pp)
        });
        let prepared = slot.prepared.as_ref().map(|p| {
            batches.insert(p.pre_prepare.body.digest, &p.pre_prepare.body.batch);
            PreparedProof {
                pre_prepare: slim(&p.pre_prepare),
                prepares: p.prepares.clone(),
            }
        });
        slots.push(SlotState {
            seq: slot.seq,
            pre_prepare,
            prepared,
            sent_commit: slot.sent_commit,
            committed: slot.committed,
        });
    }
    let st = PersistentState {
        view: state.view,
        status: state.status,
        next_seq: state.next_seq,
        stable: state.stable.clone(),
        slots,
        view_change: state.view_change.clone(),
        new_view: state.new_view.clone(),
        timeout_ms: state.timeout_ms,
    };
    (st, batches)
}

fn restore_batches(st: &mut PersistentState, batches: &BTreeMap<Digest, Batch>) -> Result<()> {
    let put = |pp: &mut Signed<PrePrepare>| -> Result<()> {
        pp.body.batch = batches.get(&pp.body.digest).cloned().ok_or_else(|| {
            Error::Invariant(format!("batch {} missing from the store", pp.body.digest))
        })?;
        Ok(())
    };
    for slot in &mut st.slots {
        if let Some(pp) = slot.pre_prepare.as_mut() {
            put(pp)?;
        }
        if let Some(p) = slot.prepared.as_mut() {
            put(&mut p.pre_prepare)?;
        }
    }
    Ok(())
}

impl Store {
    /// Opens (or creates) the database at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        let db = Database::create(path)?;
        let txn = db.begin_write()?;
        txn.open_table(BLOCKS)?;
        txn.open_table(CERTS)?;
        txn.open_table(META)?;
        txn.open_table(BATCHES)?;
        txn.commit()?;
        Ok(Self {
            db,
            path: path.to_path_buf(),
            written: Mutex::new(BTreeSet::new()),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes a batch in one transaction that is durable when this returns.
    pub fn write(&self, batch: &WriteBatch) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate)
            .map_err(|e| Error::Store(Box::new(e.into())))?;
        {
            let mut blocks = txn.open_table(BLOCKS)?;
            for b in &batch.blocks {
                blocks.insert(b.header.height.0, codec::encode(b)?.as_slice())?;
            }
            let mut certs = txn.open_table(CERTS)?;
            for c in &batch.certs {
                certs.insert(c.height.0, codec::encode(c)?.as_slice())?;
            }
            if let Some(st) = &batch.state {
                let (slim, batches) = strip(st);
                let mut written = self
                    .written
                    .lock()
                    .map_err(|_| Error::Invariant("store lock poisoned".into()))?;
                let mut table = txn.open_table(BATCHES)?;
                for (d, b) in &batches {
                    if !written.contains(d) {
                        table.insert(&d.0, codec::encode(b)?.as_slice())?;
                    }
                }
                // Batches no longer referenced by the log are in blocks already.
                for d in written.difference(&batches.keys().copied().collect()) {
                    table.remove(&d.0)?;
                }
                *written = batches.keys().copied().collect();
                let mut meta = txn.open_table(META)?;
                meta.insert(STATE_KEY, codec::encode(&slim)?.as_slice())?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// Everything persisted: the replica state and the blocks with their certificates, in
    /// height order.
    pub fn load(&self) -> Result<(Option<PersistentState>, Vec<CertifiedBlock>)> {
        let txn = self.db.begin_read()?;
        let meta = txn.open_table(META)?;
        let mut state: Option<PersistentState> = match meta.get(STATE_KEY)? {
            Some(v) => Some(codec::decode(v.value())?),
            None => None,
        };
        let table = txn.open_table(BATCHES)?;
        let mut batches = BTreeMap::new();
        for entry in table.iter()? {
            let (k, v) = entry?;
            batches.insert(Digest(*k.value()), codec::decode::<Batch>(v.value())?);
        }
        if let Some(st) = state.as_mut() {
            restore_batches(st, &batches)?;
        }
        if let Ok(mut w) = self.written.lock() {
            *w = batches.keys().copied().collect();
        }
        let certs = txn.open_table(CERTS)?;
        let blocks = txn.open_table(BLOCKS)?;
        let mut out = Vec::new();
        for entry in blocks.iter()? {
            let (k, v) = entry?;
            let block: Block = codec::decode(v.value())?;
            let certificate = match certs.get(k.value())? {
                Some(c) => Some(codec::decode(c.value())?),
                None => None,
            };
            out.push(CertifiedBlock { block, certificate });
        }
        Ok((state, out))
    }

    /// Overwrites one stored block (for tests that simulate tampering on disk).
    pub fn overwrite_block(&self, block: &Block) -> Result<()> {
        let txn = self.db.begin_write()?;
        {
            let mut blocks = txn.open_table(BLOCKS)?;
            blocks.insert(block.header.height.0, codec::encode(block)?.as_slice())?;
        }
        txn.commit()?;
        Ok(())
    }
}
