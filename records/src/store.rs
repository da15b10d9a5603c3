//! The record store: one redb file in one directory, durable on commit (an import, an
//! amendment or an erasure is one write transaction; a kill at any point leaves the store as it
//! was before it). What it keeps, and what is in clear:
//!
//! | table | key | value |
//! |---|---|---|
//! | `meta` | name | store id, the master-key check, the category mapping |
//! | `patients` | pseudonym | the patient's data key wrapped by the master key; the patient's index (facilities and one leaf at each), sealed with the data key |
//! | `records` | pseudonym ‖ record handle ‖ version | batch, leaf index, and the version sealed with the data key |
//! | `batches` | batch number | root, size, chunk roots, the anchor's transaction and height, the sources' roots |
//! | `chunks` | batch ‖ chunk | 1,024 leaf hashes |
//! | `erased` | pseudonym | the erasure's ledger position |
//!
//! Pseudonyms and handles are keyed hashes; facility names, values, record ids and salts are
//! sealed. Leaf hashes are in clear and stay after an erasure, so that every other record's
//! proof still verifies; without the erased patient's salts nothing links them to it.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use ledger::contracts::FacilityProof;
use merkle::Digest;
use redb::{Database, Durability, ReadOnlyTable, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::categories::CategoryMap;
use crate::error::{Error, Result};
use crate::keys::{DataKey, Keys, MasterKey, Rng, Sealer};
use crate::record::{Record, SealedVersion};
use crate::tree;

const META: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("meta");
const PATIENTS: TableDefinition<'_, &[u8; 32], &[u8]> = TableDefinition::new("patients");
const RECORDS: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("records");
const BATCHES: TableDefinition<'_, u32, &[u8]> = TableDefinition::new("batches");
const CHUNKS: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("chunks");
const ERASED: TableDefinition<'_, &[u8; 32], &[u8]> = TableDefinition::new("erased");

/// The store's file in its directory.
pub const STORE_FILE: &str = "records.redb";
const FORMAT: &[u8] = b"emrflow-records/1";
const KEY_CHECK: &[u8] = b"emrflow-records master key check";

/// Record key: pseudonym ‖ handle ‖ version (big-endian, so versions sort in order).
const RECORD_KEY_LEN: usize = 32 + 16 + 4;

fn record_key(patient: &Digest, handle: &[u8; 16], version: u32) -> [u8; RECORD_KEY_LEN] {
    let mut k = [0u8; RECORD_KEY_LEN];
    k[..32].copy_from_slice(&patient.0);
    k[32..48].copy_from_slice(handle);
    k[48..].copy_from_slice(&version.to_be_bytes());
    k
}

fn chunk_key(batch: u32, chunk: u32) -> u64 {
    (u64::from(batch) << 32) | u64::from(chunk)
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    postcard::to_allocvec(v).expect("store rows always encode")
}

fn decode<T: for<'de> Deserialize<'de>>(what: &str, bytes: &[u8]) -> Result<T> {
    postcard::from_bytes(bytes).map_err(|e| Error::Corrupt(format!("{what}: {e}")))
}

/// Where a batch came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BatchKind {
    /// `records import`.
    Import,
    /// `records amend`.
    Amend,
}

/// A batch as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    /// Its number in this store.
    pub number: u32,
    /// Import or amendment.
    pub kind: BatchKind,
    /// The Merkle root anchored on the ledger.
    pub root: Digest,
    /// Leaves.
    pub size: u64,
    /// The roots of its chunks of [`tree::CHUNK`] leaves.
    pub chunk_roots: Vec<Digest>,
    /// The anchoring transaction.
    pub anchor_tx: Digest,
    /// The block height it committed at.
    pub height: u64,
    /// The roots of the source files it was read from (an import), or the batches whose
    /// versions it supersedes (an amendment).
    pub parents: Vec<Digest>,
}

/// Where one of a patient's records sits at a facility: enough for the contract to check that
/// the patient has records there, without any value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct FacilityRef {
    facility: String,
    batch: u32,
    index: u64,
    commitment: Digest,
}

/// What is sealed in a patient's row.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct PatientIndex {
    facilities: Vec<FacilityRef>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct PatientRow {
    wrapped_key: Vec<u8>,
    index: Vec<u8>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct VersionRow {
    batch: u32,
    index: u64,
    sealed: Vec<u8>,
}

/// One version of a record, opened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Version {
    /// 1 for the imported record, then one more per amendment.
    pub version: u32,
    /// The record.
    pub record: Record,
    /// The batch it is a leaf of.
    pub batch: u32,
    /// Its leaf index.
    pub index: u64,
    /// Its salted commitment.
    pub commitment: Digest,
    /// Its leaf hash.
    pub leaf: Digest,
    /// An amendment's reason.
    pub reason: Option<String>,
    /// An amendment's author (public key, hex).
    pub author: Option<String>,
}

/// Every version of every record of one patient, opened, oldest version first.
#[derive(Debug, Clone)]
pub struct PatientRecords {
    /// The pseudonym.
    pub patient: Digest,
    /// Versions by record handle, oldest first; the patient's own record sorts first.
    pub records: Vec<Vec<Version>>,
}

/// A store with its master key.
pub struct Store {
    db: Database,
    dir: PathBuf,
    id: [u8; 16],
    keys: Keys,
    categories: CategoryMap,
    /// Per batch, the audit path of each chunk root in the tree over the chunk roots: a batch
    /// never changes once written, and these paths are the same for every record of a chunk.
    upper_paths: std::sync::Mutex<HashMap<u32, std::sync::Arc<Vec<Vec<Digest>>>>>,
    /// Batch roots found anchored on the ledger by a reader of this handle, with the anchor's
    /// height: checked once, not at every read.
    anchored: std::sync::Mutex<HashMap<Digest, u64>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("dir", &self.dir).finish()
    }
}

impl Store {
    /// Opens the store in `dir`, creating it (with `categories`) if it does not exist. An
    /// existing store must have been created with the same master key.
    pub fn open_or_create(
        dir: &Path,
        master: &MasterKey,
        categories: &CategoryMap,
    ) -> Result<Self> {
        if dir.join(STORE_FILE).exists() {
            return Self::open(dir, master);
        }
        std::fs::create_dir_all(dir).map_err(|e| Error::Io {
            action: "cannot create the store directory",
            path: dir.display().to_string(),
            source: e,
        })?;
        // Made under a name of its own and linked into place once committed, so a kill during
        // creation never leaves a store file that is not a store; linking (not renaming) never
        // replaces a store another process created meanwhile.
        let path = dir.join(format!("{STORE_FILE}.{}.creating", std::process::id()));
        let _ = std::fs::remove_file(&path);
        Self::create_at(&path, master, categories)?;
        let linked = std::fs::hard_link(&path, dir.join(STORE_FILE));
        let _ = std::fs::remove_file(&path);
        match linked {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                return Err(Error::Io {
                    action: "cannot put the new store in place in",
                    path: dir.display().to_string(),
                    source: e,
                });
            }
        }
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Self::open(dir, master)
    }

    /// Writes a new, empty store at `path`.
    fn create_at(path: &Path, master: &MasterKey, categories: &CategoryMap) -> Result<()> {
        let db = Database::create(path).map_err(|e| Error::store(path, e))?;
        let keys = master.keys();
        let mut rng = Rng::from_os();
        let mut id = [0u8; 16];
        rng.fill(&mut id);
        let check = keys.wrap().seal(&mut rng, KEY_CHECK, &id);
        let mapping = serde_json::to_vec(&categories.describe()).expect("a map encodes");
        let mut txn = db.begin_write().map_err(|e| Error::store(path, e))?;
        txn.set_durability(Durability::Immediate)
            .map_err(|e| Error::store(path, e))?;
        {
            let mut meta = txn.open_table(META).map_err(|e| Error::store(path, e))?;
            for (k, v) in [
                ("format", FORMAT),
                ("id", &id[..]),
                ("key_check", &check[..]),
                ("categories", &mapping[..]),
            ] {
                meta.insert(k, v).map_err(|e| Error::store(path, e))?;
            }
            txn.open_table(PATIENTS)
                .map_err(|e| Error::store(path, e))?;
            txn.open_table(RECORDS).map_err(|e| Error::store(path, e))?;
            txn.open_table(BATCHES).map_err(|e| Error::store(path, e))?;
            txn.open_table(CHUNKS).map_err(|e| Error::store(path, e))?;
            txn.open_table(ERASED).map_err(|e| Error::store(path, e))?;
        }
        txn.commit().map_err(|e| Error::store(path, e))?;
        Ok(())
    }

    /// Opens an existing store; refuses a master key that is not the store's.
    pub fn open(dir: &Path, master: &MasterKey) -> Result<Self> {
        let path = dir.join(STORE_FILE);
        if !path.exists() {
            return Err(Error::Invalid(format!(
                "no record store in {}: run `emrflow records import` first",
                dir.display()
            )));
        }
        let db = Database::open(&path).map_err(|e| Error::store(&path, e))?;
        let keys = master.keys();
        let (id, check, mapping) = {
            let txn = db.begin_read().map_err(|e| Error::store(&path, e))?;
            let meta = txn.open_table(META).map_err(|e| Error::store(&path, e))?;
            let get = |k: &str| -> Result<Vec<u8>> {
                meta.get(k)
                    .map_err(|e| Error::store(&path, e))?
                    .map(|v| v.value().to_vec())
                    .ok_or_else(|| Error::Corrupt(format!("{}: no {k}", path.display())))
            };
            if get("format")? != FORMAT {
                return Err(Error::Corrupt(format!(
                    "{} is not a record store of this version",
                    path.display()
                )));
            }
            (get("id")?, get("key_check")?, get("categories")?)
        };
        let id: [u8; 16] = id
            .as_slice()
            .try_into()
            .map_err(|_| Error::Corrupt(format!("{}: bad store id", path.display())))?;
        if keys.wrap().open(&check, &id).is_none() {
            return Err(Error::Invalid(format!(
                "the master key does not open the record store in {}",
                dir.display()
            )));
        }
        let described: BTreeMap<String, String> = serde_json::from_slice(&mapping)
            .map_err(|e| Error::Corrupt(format!("{}: category mapping: {e}", path.display())))?;
        let categories = CategoryMap::from_described(&described)?;
        Ok(Self {
            db,
            dir: dir.to_path_buf(),
            id,
            keys,
            categories,
            upper_paths: Default::default(),
            anchored: Default::default(),
        })
    }

    /// The anchor height found for a batch root, if a reader checked it already.
    pub(crate) fn checked_anchor(&self, root: &Digest) -> Option<u64> {
        self.anchored
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(root)
            .copied()
    }

    /// Remembers that a batch root was found anchored at `height`.
    pub(crate) fn remember_anchor(&self, root: Digest, height: u64) {
        self.anchored
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(root, height);
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The mapping of fields to categories.
    pub fn categories(&self) -> &CategoryMap {
        &self.categories
    }

    /// The pseudonym of a patient id.
    pub fn pseudonym(&self, patient_id: &str) -> Digest {
        self.keys.pseudonym(patient_id)
    }

    fn path(&self) -> PathBuf {
        self.dir.join(STORE_FILE)
    }

    fn err(&self, e: impl std::fmt::Display) -> Error {
        Error::store(&self.path(), e)
    }

    fn aad(&self, parts: &[&[u8]]) -> Vec<u8> {
        let mut out = self.id.to_vec();
        for p in parts {
            out.extend_from_slice(&(p.len() as u32).to_le_bytes());
            out.extend_from_slice(p);
        }
        out
    }

    fn patient_key(&self, patient: &Digest, row: &PatientRow) -> Result<DataKey> {
        DataKey::unwrap(&self.keys, &row.wrapped_key, &self.aad(&[&patient.0])).ok_or_else(|| {
            Error::Corrupt(format!(
                "the data key of patient {} does not open",
                short(patient)
            ))
        })
    }

    fn open_index(
        &self,
        patient: &Digest,
        sealer: &Sealer,
        row: &PatientRow,
    ) -> Result<PatientIndex> {
        let plain = sealer
            .open(&row.index, &self.aad(&[&patient.0, b"index"]))
            .ok_or_else(|| Error::Corrupt(format!("patient {}: index", short(patient))))?;
        decode("patient index", &plain)
    }

    /// Whether the patient was erased, and where on the ledger.
    pub fn erased(&self, patient: &Digest) -> Result<Option<u64>> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = txn.open_table(ERASED).map_err(|e| self.err(e))?;
        Ok(t.get(&patient.0)
            .map_err(|e| self.err(e))?
            .map(|v| u64::from_le_bytes(v.value().try_into().unwrap_or([0; 8]))))
    }

    /// Whether the store holds records of `patient`.
    pub fn has_patient(&self, patient: &Digest) -> Result<bool> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = txn.open_table(PATIENTS).map_err(|e| self.err(e))?;
        Ok(t.get(&patient.0).map_err(|e| self.err(e))?.is_some())
    }

    /// Every version of every record of `patient`, opened; `None` if the store holds none.
    pub fn patient(&self, patient: &Digest) -> Result<Option<PatientRecords>> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let patients = txn.open_table(PATIENTS).map_err(|e| self.err(e))?;
        let Some(row) = patients.get(&patient.0).map_err(|e| self.err(e))? else {
            return Ok(None);
        };
        let row: PatientRow = decode("patient", row.value())?;
        let sealer = self.patient_key(patient, &row)?.sealer();
        let records = txn.open_table(RECORDS).map_err(|e| self.err(e))?;
        let lo = record_key(patient, &[0; 16], 0);
        let hi = record_key(patient, &[0xff; 16], u32::MAX);
        let mut by_handle: BTreeMap<[u8; 16], Vec<Version>> = BTreeMap::new();
        for item in records.range(&lo[..]..=&hi[..]).map_err(|e| self.err(e))? {
            let (k, v) = item.map_err(|e| self.err(e))?;
            let key = k.value();
            let handle: [u8; 16] = key[32..48].try_into().expect("record key layout");
            let version = u32::from_be_bytes(key[48..].try_into().expect("record key layout"));
            let row: VersionRow = decode("record", v.value())?;
            let plain = sealer.open(&row.sealed, &self.aad(&[key])).ok_or_else(|| {
                Error::Corrupt(format!(
                    "a record of patient {} does not open",
                    short(patient)
                ))
            })?;
            let sealed: SealedVersion = decode("record version", &plain)?;
            let (commitment, leaf) = sealed.leaf(patient);
            by_handle.entry(handle).or_default().push(Version {
                version,
                record: sealed.record,
                batch: row.batch,
                index: row.index,
                commitment,
                leaf,
                reason: sealed.reason,
                author: sealed.author,
            });
        }
        let mut records: Vec<Vec<Version>> = by_handle.into_values().collect();
        records.sort_by(|a, b| {
            let key = |v: &Vec<Version>| {
                v.first().map(|x| {
                    (
                        x.record.kind,
                        x.record.facility.clone(),
                        x.record.id.clone(),
                    )
                })
            };
            key(a).cmp(&key(b))
        });
        Ok(Some(PatientRecords {
            patient: *patient,
            records,
        }))
    }

    /// A batch by number.
    pub fn batch(&self, number: u32) -> Result<Batch> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = txn.open_table(BATCHES).map_err(|e| self.err(e))?;
        let row = t
            .get(number)
            .map_err(|e| self.err(e))?
            .ok_or_else(|| Error::Corrupt(format!("no batch {number}")))?;
        decode("batch", row.value())
    }

    /// Every batch, in order.
    pub fn batches(&self) -> Result<Vec<Batch>> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = txn.open_table(BATCHES).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for item in t.iter().map_err(|e| self.err(e))? {
            let (_, v) = item.map_err(|e| self.err(e))?;
            out.push(decode("batch", v.value())?);
        }
        Ok(out)
    }

    /// The audit path of leaf `index` of `batch`.
    pub fn proof(&self, batch: &Batch, index: u64) -> Result<Vec<Digest>> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = txn.open_table(CHUNKS).map_err(|e| self.err(e))?;
        let chunk = (index / tree::CHUNK as u64) as u32;
        let row = t
            .get(chunk_key(batch.number, chunk))
            .map_err(|e| self.err(e))?
            .ok_or_else(|| Error::Corrupt(format!("batch {}: no chunk {chunk}", batch.number)))?;
        let upper = {
            let mut cache = self
                .upper_paths
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            cache
                .entry(batch.number)
                .or_insert_with(|| std::sync::Arc::new(tree::upper_paths(&batch.chunk_roots)))
                .clone()
        };
        let upper = upper.get(chunk as usize).ok_or_else(|| {
            Error::Corrupt(format!("batch {}: no chunk root {chunk}", batch.number))
        })?;
        Ok(tree::proof(index, &tree::decode(row.value()), upper))
    }

    /// The proof, for the contract, that `patient` has records made at `facility`.
    pub fn facility_proof(
        &self,
        patient: &Digest,
        facility: &str,
    ) -> Result<Option<FacilityProof>> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let patients = txn.open_table(PATIENTS).map_err(|e| self.err(e))?;
        let Some(row) = patients.get(&patient.0).map_err(|e| self.err(e))? else {
            return Ok(None);
        };
        let row: PatientRow = decode("patient", row.value())?;
        drop(patients);
        drop(txn);
        let sealer = self.patient_key(patient, &row)?.sealer();
        let index = self.open_index(patient, &sealer, &row)?;
        let Some(at) = index.facilities.iter().find(|f| f.facility == facility) else {
            return Ok(None);
        };
        let batch = self.batch(at.batch)?;
        Ok(Some(FacilityProof {
            facility: facility.to_string(),
            batch: batch.root,
            commitment: at.commitment,
            index: at.index,
            size: batch.size,
            path: self.proof(&batch, at.index)?,
        }))
    }

    /// Starts an import (or an amendment): nothing is visible until [`Writer::commit`].
    pub fn writer(&self, kind: BatchKind) -> Result<Writer<'_>> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let batches = txn.open_table(BATCHES).map_err(|e| self.err(e))?;
        let number = match batches.last().map_err(|e| self.err(e))? {
            Some((k, _)) => k.value() + 1,
            None => 1,
        };
        Ok(Writer {
            held_patients: txn.open_table(PATIENTS).map_err(|e| self.err(e))?,
            held_records: txn.open_table(RECORDS).map_err(|e| self.err(e))?,
            held_erased: txn.open_table(ERASED).map_err(|e| self.err(e))?,
            store: self,
            kind,
            number,
            rng: Rng::from_os(),
            leaves: Vec::new(),
            rows: Vec::new(),
            patients: HashMap::new(),
            added: std::collections::HashSet::new(),
            stats: WriteStats::default(),
        })
    }

    /// Destroys `patient`'s data key, index and records (crypto-shredding) and keeps a tombstone
    /// at ledger height `height`. The leaves stay: every other proof still verifies.
    pub fn erase(&self, patient: &Digest, height: u64) -> Result<u64> {
        let mut txn = self.db.begin_write().map_err(|e| self.err(e))?;
        txn.set_durability(Durability::Immediate)
            .map_err(|e| self.err(e))?;
        let removed;
        {
            let mut patients = txn.open_table(PATIENTS).map_err(|e| self.err(e))?;
            patients.remove(&patient.0).map_err(|e| self.err(e))?;
            let mut records = txn.open_table(RECORDS).map_err(|e| self.err(e))?;
            let lo = record_key(patient, &[0; 16], 0);
            let hi = record_key(patient, &[0xff; 16], u32::MAX);
            let keys: Vec<Vec<u8>> = records
                .range(&lo[..]..=&hi[..])
                .map_err(|e| self.err(e))?
                .map(|item| item.map(|(k, _)| k.value().to_vec()))
                .collect::<std::result::Result<_, _>>()
                .map_err(|e| self.err(e))?;
            removed = keys.len() as u64;
            for k in keys {
                records.remove(&k[..]).map_err(|e| self.err(e))?;
            }
            let mut erased = txn.open_table(ERASED).map_err(|e| self.err(e))?;
            erased
                .insert(&patient.0, &height.to_le_bytes()[..])
                .map_err(|e| self.err(e))?;
        }
        txn.commit().map_err(|e| self.err(e))?;
        Ok(removed)
    }
}

fn short(d: &Digest) -> String {
    d.to_hex()[..16].to_string()
}

/// What a write did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct WriteStats {
    /// Records written as a first version.
    pub new: u64,
    /// Records already held with the same content, skipped.
    pub unchanged: u64,
    /// Records written as a new version of one held.
    pub superseding: u64,
    /// Records of erased patients, not written.
    pub erased: u64,
    /// Patients seen for the first time.
    pub new_patients: u64,
}

struct PatientEntry {
    sealer: Sealer,
    wrapped_key: Vec<u8>,
    index: PatientIndex,
    dirty: bool,
}

/// A batch being written: rows are built in memory and written in one transaction. What the
/// store held when it started is read from one snapshot.
pub struct Writer<'s> {
    store: &'s Store,
    held_patients: ReadOnlyTable<&'static [u8; 32], &'static [u8]>,
    held_records: ReadOnlyTable<&'static [u8], &'static [u8]>,
    held_erased: ReadOnlyTable<&'static [u8; 32], &'static [u8]>,
    kind: BatchKind,
    number: u32,
    rng: Rng,
    leaves: Vec<Digest>,
    rows: Vec<([u8; RECORD_KEY_LEN], Vec<u8>)>,
    patients: HashMap<Digest, PatientEntry>,
    added: std::collections::HashSet<[u8; 48]>,
    stats: WriteStats,
}

impl std::fmt::Debug for Writer<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("number", &self.number)
            .field("leaves", &self.leaves.len())
            .finish()
    }
}

/// The version a record was written as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// A new leaf at this index.
    Leaf(u64),
    /// Already held with the same content.
    Unchanged,
    /// The patient was erased.
    Erased,
    /// The same record was added to this batch before.
    Duplicate,
}

impl Writer<'_> {
    /// What was written so far.
    pub fn stats(&self) -> &WriteStats {
        &self.stats
    }

    fn entry(&mut self, patient: &Digest) -> Result<Option<&mut PatientEntry>> {
        if !self.patients.contains_key(patient) {
            let store = self.store;
            if self
                .held_erased
                .get(&patient.0)
                .map_err(|e| store.err(e))?
                .is_some()
            {
                return Ok(None);
            }
            let entry = match self
                .held_patients
                .get(&patient.0)
                .map_err(|e| store.err(e))?
            {
                Some(row) => {
                    let row: PatientRow = decode("patient", row.value())?;
                    let sealer = store.patient_key(patient, &row)?.sealer();
                    let index = store.open_index(patient, &sealer, &row)?;
                    PatientEntry {
                        sealer,
                        wrapped_key: row.wrapped_key,
                        index,
                        dirty: false,
                    }
                }
                None => {
                    let key = DataKey::generate(&mut self.rng);
                    let wrapped_key =
                        key.wrap(&store.keys, &mut self.rng, &store.aad(&[&patient.0]));
                    self.stats.new_patients += 1;
                    PatientEntry {
                        sealer: key.sealer(),
                        wrapped_key,
                        index: PatientIndex::default(),
                        dirty: true,
                    }
                }
            };
            self.patients.insert(*patient, entry);
        }
        Ok(self.patients.get_mut(patient))
    }

    /// The latest version held of a record, from the store.
    fn latest(&self, patient: &Digest, handle: &[u8; 16]) -> Result<Option<(u32, VersionRow)>> {
        let store = self.store;
        let lo = record_key(patient, handle, 0);
        let hi = record_key(patient, handle, u32::MAX);
        let last = self
            .held_records
            .range(&lo[..]..=&hi[..])
            .map_err(|e| store.err(e))?
            .next_back();
        match last {
            None => Ok(None),
            Some(item) => {
                let (k, v) = item.map_err(|e| store.err(e))?;
                let version = u32::from_be_bytes(k.value()[48..].try_into().expect("layout"));
                Ok(Some((version, decode("record", v.value())?)))
            }
        }
    }

    /// Adds a record of patient `patient_id` (a new record, or a new version if its content
    /// differs from the one held); `reason` and `author` say why and who for an amendment.
    pub fn add(
        &mut self,
        patient_id: &str,
        record: Record,
        reason: Option<String>,
        author: Option<String>,
    ) -> Result<Written> {
        let patient = self.store.pseudonym(patient_id);
        let handle = self.store.keys.handle(record.kind.tag(), &record.id);
        if self.entry(&patient)?.is_none() {
            self.stats.erased += 1;
            return Ok(Written::Erased);
        }
        let mut added = [0u8; 48];
        added[..32].copy_from_slice(&patient.0);
        added[32..].copy_from_slice(&handle);
        if !self.added.insert(added) {
            return Ok(Written::Duplicate);
        }
        let version = match self.latest(&patient, &handle)? {
            None => 1,
            Some((v, row)) => {
                let entry = self.patients.get(&patient).expect("entry made above");
                let key = record_key(&patient, &handle, v);
                let plain = entry
                    .sealer
                    .open(&row.sealed, &self.store.aad(&[&key]))
                    .ok_or_else(|| Error::Corrupt("a held record does not open".into()))?;
                let held: SealedVersion = decode("record version", &plain)?;
                if held.record == record && reason.is_none() {
                    self.stats.unchanged += 1;
                    return Ok(Written::Unchanged);
                }
                v + 1
            }
        };
        if version == 1 {
            self.stats.new += 1;
        } else {
            self.stats.superseding += 1;
        }
        let salt = self.rng.bytes32();
        let sealed = SealedVersion {
            record,
            salt,
            reason,
            author,
        };
        let (commitment, leaf) = sealed.leaf(&patient);
        let index = self.leaves.len() as u64;
        self.leaves.push(leaf);
        let key = record_key(&patient, &handle, version);
        let aad = self.store.aad(&[&key]);
        let entry = self.patients.get_mut(&patient).expect("entry made above");
        let plain = zeroize::Zeroizing::new(encode(&sealed));
        let row = VersionRow {
            batch: self.number,
            index,
            sealed: entry.sealer.seal(&mut self.rng, &plain, &aad),
        };
        let facility = &sealed.record.facility;
        if !facility.is_empty()
            && !entry
                .index
                .facilities
                .iter()
                .any(|f| &f.facility == facility)
        {
            entry.index.facilities.push(FacilityRef {
                facility: facility.clone(),
                batch: self.number,
                index,
                commitment,
            });
            entry.dirty = true;
        }
        self.rows.push((key, encode(&row)));
        Ok(Written::Leaf(index))
    }

    /// The root and size of the batch so far; `None` when it is empty.
    pub fn root(&self) -> Option<(Digest, u64)> {
        (!self.leaves.is_empty()).then(|| {
            (
                tree::batch_root(&tree::chunk_roots(&self.leaves)),
                self.leaves.len() as u64,
            )
        })
    }

    /// Writes the batch, anchored by `anchor_tx` at `height`, with its `parents`, in one
    /// durable transaction.
    pub fn commit(self, anchor_tx: Digest, height: u64, parents: Vec<Digest>) -> Result<Batch> {
        let store = self.store;
        let chunk_roots = tree::chunk_roots(&self.leaves);
        let batch = Batch {
            number: self.number,
            kind: self.kind,
            root: tree::batch_root(&chunk_roots),
            size: self.leaves.len() as u64,
            chunk_roots,
            anchor_tx,
            height,
            parents,
        };
        let mut rows = self.rows;
        rows.sort_unstable_by_key(|r| r.0);
        let mut txn = store.db.begin_write().map_err(|e| store.err(e))?;
        txn.set_durability(Durability::Immediate)
            .map_err(|e| store.err(e))?;
        {
            let mut batches = txn.open_table(BATCHES).map_err(|e| store.err(e))?;
            if batches
                .get(self.number)
                .map_err(|e| store.err(e))?
                .is_some()
            {
                return Err(Error::Invalid(
                    "another import or amendment wrote to the store meanwhile; nothing was \
                     written, run it again"
                        .into(),
                ));
            }
            batches
                .insert(self.number, &encode(&batch)[..])
                .map_err(|e| store.err(e))?;
            let mut chunks = txn.open_table(CHUNKS).map_err(|e| store.err(e))?;
            for (i, c) in self.leaves.chunks(tree::CHUNK).enumerate() {
                chunks
                    .insert(chunk_key(self.number, i as u32), &tree::encode_chunk(c)[..])
                    .map_err(|e| store.err(e))?;
            }
            let mut records = txn.open_table(RECORDS).map_err(|e| store.err(e))?;
            for (k, v) in &rows {
                records.insert(&k[..], &v[..]).map_err(|e| store.err(e))?;
            }
            let mut patients = txn.open_table(PATIENTS).map_err(|e| store.err(e))?;
            let mut rng = self.rng;
            for (patient, entry) in self.patients.into_iter().filter(|(_, e)| e.dirty) {
                let index = zeroize::Zeroizing::new(encode(&entry.index));
                let row = PatientRow {
                    wrapped_key: entry.wrapped_key,
                    index: entry
                        .sealer
                        .seal(&mut rng, &index, &store.aad(&[&patient.0, b"index"])),
                };
                patients
                    .insert(&patient.0, &encode(&row)[..])
                    .map_err(|e| store.err(e))?;
            }
        }
        txn.commit().map_err(|e| store.err(e))?;
        Ok(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Kind;

    fn master() -> MasterKey {
        MasterKey::from_hex(&"ab".repeat(32)).expect("key")
    }

    fn visit(id: &str, facility: &str, bp: &str) -> Record {
        Record {
            kind: Kind::Visit,
            id: id.to_string(),
            facility: facility.to_string(),
            fields: vec![
                ("visit_id".into(), Some(id.to_string())),
                ("systolic_bp".into(), Some(bp.to_string())),
                ("clinical_notes".into(), None),
            ],
        }
    }

    fn write(store: &Store, rows: &[(&str, Record)]) -> Batch {
        let mut w = store.writer(BatchKind::Import).expect("writer");
        for (p, r) in rows {
            w.add(p, r.clone(), None, None).expect("add");
        }
        let root = w.root().expect("a root").0;
        let batch = w.commit(Digest::of(b"tx"), 1, Vec::new()).expect("commit");
        assert_eq!(batch.root, root);
        batch
    }

    #[test]
    fn versions_proofs_and_reimport() {
        let dir = tempfile::tempdir().expect("tmp");
        let store =
            Store::open_or_create(dir.path(), &master(), &CategoryMap::default()).expect("store");
        let b1 = write(
            &store,
            &[
                ("P1", visit("V1", "H1", "120")),
                ("P1", visit("V2", "H2", "130")),
                ("P2", visit("V3", "H1", "140")),
            ],
        );
        assert_eq!(b1.size, 3);
        let p1 = store.pseudonym("P1");
        let held = store.patient(&p1).expect("read").expect("held");
        assert_eq!(held.records.len(), 2);
        for versions in &held.records {
            let v = &versions[0];
            let path = store.proof(&b1, v.index).expect("proof");
            assert!(merkle::verify_inclusion(
                v.index, b1.size, &v.leaf, &path, &b1.root
            ));
        }
        let proof = store
            .facility_proof(&p1, "H2")
            .expect("proof")
            .expect("a visit at H2");
        let leaf = ledger::contracts::record_leaf(&p1, "H2", &proof.commitment);
        assert!(merkle::verify_inclusion(
            proof.index,
            proof.size,
            &leaf,
            &proof.path,
            &b1.root
        ));
        assert!(store.facility_proof(&p1, "H3").expect("proof").is_none());

        // The same records again are unchanged; a changed one is a second version.
        let mut w = store.writer(BatchKind::Import).expect("writer");
        assert_eq!(
            w.add("P1", visit("V1", "H1", "120"), None, None)
                .expect("add"),
            Written::Unchanged
        );
        assert_eq!(
            w.add("P1", visit("V2", "H2", "135"), None, None)
                .expect("add"),
            Written::Leaf(0)
        );
        assert_eq!(
            w.add("P1", visit("V2", "H2", "136"), None, None)
                .expect("add"),
            Written::Duplicate
        );
        let b2 = w
            .commit(Digest::of(b"tx2"), 2, vec![b1.root])
            .expect("commit");
        assert_eq!((b2.number, b2.size), (2, 1));
        let held = store.patient(&p1).expect("read").expect("held");
        let v2: Vec<&Vec<Version>> = held.records.iter().filter(|v| v.len() == 2).collect();
        assert_eq!(v2.len(), 1);
        assert_eq!(v2[0][1].version, 2);
        assert_eq!(v2[0][1].batch, 2);
    }

    #[test]
    fn a_writer_that_is_not_committed_writes_nothing() {
        let dir = tempfile::tempdir().expect("tmp");
        let store =
            Store::open_or_create(dir.path(), &master(), &CategoryMap::default()).expect("store");
        let mut w = store.writer(BatchKind::Import).expect("writer");
        w.add("P1", visit("V1", "H1", "120"), None, None)
            .expect("add");
        drop(w);
        assert!(
            store
                .patient(&store.pseudonym("P1"))
                .expect("read")
                .is_none()
        );
        assert!(store.batches().expect("batches").is_empty());
    }

    #[test]
    fn the_wrong_master_key_does_not_open_the_store() {
        let dir = tempfile::tempdir().expect("tmp");
        drop(Store::open_or_create(dir.path(), &master(), &CategoryMap::default()).expect("store"));
        let other = MasterKey::from_hex(&"cd".repeat(32)).expect("key");
        let err = Store::open(dir.path(), &other).expect_err("wrong key");
        assert!(err.to_string().contains("does not open"), "{err}");
        Store::open(dir.path(), &master()).expect("right key");
    }

    #[test]
    fn erasure_destroys_the_patient_and_keeps_every_other_proof() {
        let dir = tempfile::tempdir().expect("tmp");
        let store =
            Store::open_or_create(dir.path(), &master(), &CategoryMap::default()).expect("store");
        let b = write(
            &store,
            &[
                ("P1", visit("V1", "H1", "120")),
                ("P2", visit("V2", "H1", "130")),
            ],
        );
        let p1 = store.pseudonym("P1");
        assert_eq!(store.erase(&p1, 9).expect("erase"), 1);
        assert!(store.patient(&p1).expect("read").is_none());
        assert_eq!(store.erased(&p1).expect("erased"), Some(9));
        let p2 = store.pseudonym("P2");
        let v = &store.patient(&p2).expect("read").expect("held").records[0][0];
        let path = store.proof(&b, v.index).expect("proof");
        assert!(merkle::verify_inclusion(
            v.index, b.size, &v.leaf, &path, &b.root
        ));
        // A later import skips the erased patient.
        let mut w = store.writer(BatchKind::Import).expect("writer");
        assert_eq!(
            w.add("P1", visit("V1", "H1", "120"), None, None)
                .expect("add"),
            Written::Erased
        );
    }
}
