//! Reads, amendments, erasures, grants and break-glass, each a ledger transaction first: the
//! contract decides, the decision commits (with its audit event) on a quorum of peers, and only
//! then does a field leave the store or a version enter it. A ledger that cannot commit means
//! no read (fail closed). Every record returned carries its Merkle inclusion proof, checked
//! here against its batch's anchor.

use std::collections::BTreeMap;

use ledger::chain::Receipt;
use ledger::client::{Client, Reader};
use ledger::contracts::{
    AmendSpec, AuditEvent, Call, Categories, Decision, GrantSpec, Outcome, Purpose, ReadSpec,
    RecordGrant, Scope,
};
use ledger::crypto::{KeyPair, PublicKey};
use ledger::ids::Time;
use merkle::Digest;
use provenance::Provenance;
use provenance::connection::Conn;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::record::{Kind, Record};
use crate::store::{Batch, BatchKind, Store, Version};

/// A record's inclusion proof in its anchored batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RecordProof {
    /// The batch root anchored on the ledger.
    pub batch_root: Digest,
    /// Leaves in the batch.
    pub batch_size: u64,
    /// The block height of the batch's anchor.
    pub anchor_height: u64,
    /// The record's leaf hash.
    pub leaf: Digest,
    /// Its index.
    pub index: u64,
    /// RFC 6962 audit path.
    pub path: Vec<Digest>,
}

impl RecordProof {
    /// Whether the path leads from the leaf to the batch root.
    pub fn verifies(&self) -> bool {
        merkle::verify_inclusion(
            self.index,
            self.batch_size,
            &self.leaf,
            &self.path,
            &self.batch_root,
        )
    }
}

/// One version of a record, as a reader may see it.
#[derive(Debug, Clone, Serialize)]
pub struct RecordView {
    /// The patient's own record or a visit.
    pub kind: Kind,
    /// The record id (empty unless identifiers were granted).
    pub id: String,
    /// Where a visit was made.
    pub facility: String,
    /// This version's number.
    pub version: u32,
    /// Versions the record has.
    pub versions: u32,
    /// The granted fields.
    pub fields: Vec<(String, Option<String>)>,
    /// Categories of fields withheld.
    pub withheld: Categories,
    /// Why this version was written, for an amendment.
    pub reason: Option<String>,
    /// The inclusion proof, checked against the anchored batch.
    pub proof: RecordProof,
}

/// What a read returned.
#[derive(Debug, Clone, Serialize)]
pub struct PatientView {
    /// The patient's pseudonym (hex): what the audit trail names.
    pub patient: String,
    /// The categories asked for.
    pub asked: Categories,
    /// The categories granted somewhere.
    pub granted: Categories,
    /// Asked and not granted.
    pub denied: Categories,
    /// The contract's decision.
    pub decision: Decision,
    /// The records (latest versions, or every version for a history).
    pub records: Vec<RecordView>,
    /// Records of the patient none of whose categories were granted (made at another facility
    /// than a facility-scoped grant's).
    pub records_withheld: u64,
    /// The read's transaction id (hex).
    pub tx: String,
    /// The block height the read's audit event committed at.
    pub height: u64,
}

/// A read of one patient's record.
#[derive(Debug, Clone)]
pub struct ReadRequest {
    /// The patient id as the hospital knows it.
    pub patient_id: String,
    /// The categories wanted.
    pub categories: Categories,
    /// Why.
    pub purpose: Purpose,
    /// The facility the reader works at (needed for facility-scoped grants).
    pub facility: Option<String>,
    /// Every version of every record, not only the latest.
    pub history: bool,
}

/// The record store and the ledger together.
pub struct Records<'a> {
    store: &'a Store,
    provenance: &'a Provenance,
}

impl std::fmt::Debug for Records<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Records")
            .field("store", &self.store.dir())
            .finish()
    }
}

fn denial(what: String, receipt: &Receipt) -> Result<()> {
    match &receipt.outcome {
        Outcome::Denied { reason } => Err(Error::Denied {
            what,
            reason: reason.clone(),
        }),
        _ => Ok(()),
    }
}

impl<'a> Records<'a> {
    /// The store and the ledger it anchors on.
    pub fn new(store: &'a Store, provenance: &'a Provenance) -> Self {
        Self { store, provenance }
    }

    /// The store.
    pub fn store(&self) -> &Store {
        self.store
    }

    async fn submit(&self, key: &KeyPair, call: Call, what: &str) -> Result<Receipt> {
        let client: Client<'_, Conn> = self.provenance.client_with(key.clone());
        let receipt = client.call(call).await.map_err(|e| {
            let message =
                format!("the ledger did not commit {what}, so nothing was done or returned: {e}");
            if e.is_unavailable() {
                Error::Unavailable(message)
            } else {
                Error::Invalid(message)
            }
        })?;
        receipt.verify(self.provenance.genesis()).map_err(|e| {
            Error::Unverified(format!(
                "the ledger's receipt for {what} does not verify: {e}"
            ))
        })?;
        Ok(receipt)
    }

    fn patient_in_store(&self, patient_id: &str) -> Result<Digest> {
        let patient = self.store.pseudonym(patient_id);
        if let Some(height) = self.store.erased(&patient)? {
            return Err(Error::NotFound(format!(
                "patient {patient_id} was erased (ledger block {height})"
            )));
        }
        if !self.store.has_patient(&patient)? {
            return Err(Error::NotFound(format!(
                "no patient {patient_id} in the record store"
            )));
        }
        Ok(patient)
    }

    /// The anchor height of `batch`'s root, checked on the ledger once per opened store.
    async fn anchor_height(&self, batch: &Batch) -> Result<u64> {
        if let Some(h) = self.store.checked_anchor(&batch.root) {
            return Ok(h);
        }
        let anchors = self.provenance.anchors_of(batch.root).await?;
        let Some(anchor) = anchors.iter().find(|a| a.tx == batch.anchor_tx) else {
            return Err(Error::Unverified(format!(
                "batch {} (root {}) of the record store is not anchored on the ledger",
                batch.number, batch.root
            )));
        };
        if anchor.spec.row_count != batch.size {
            return Err(Error::Unverified(format!(
                "batch {} holds {} records, its anchor says {}",
                batch.number, batch.size, anchor.spec.row_count
            )));
        }
        let h = anchor.position.seq.0;
        self.store.remember_anchor(batch.root, h);
        Ok(h)
    }

    /// `v`'s proof, checked. `batches` holds the batches read so far: a patient's records sit
    /// in a few batches, each a row of chunk roots worth decoding once per read.
    async fn proof_of(
        &self,
        v: &Version,
        batches: &mut BTreeMap<u32, Batch>,
    ) -> Result<RecordProof> {
        if let std::collections::btree_map::Entry::Vacant(slot) = batches.entry(v.batch) {
            slot.insert(self.store.batch(v.batch)?);
        }
        let batch = &batches[&v.batch];
        let proof = RecordProof {
            batch_root: batch.root,
            batch_size: batch.size,
            anchor_height: self.anchor_height(batch).await?,
            leaf: v.leaf,
            index: v.index,
            path: self.store.proof(batch, v.index)?,
        };
        if !proof.verifies() {
            return Err(Error::Unverified(format!(
                "a record of batch {} does not verify against its anchored root; it was not \
                 returned",
                batch.number
            )));
        }
        Ok(proof)
    }

    /// Reads a patient's record as `reader`: the ledger decides which categories, records the
    /// decision, and only those fields are returned, each record with its proof.
    pub async fn read(&self, reader: &KeyPair, req: &ReadRequest) -> Result<PatientView> {
        self.read_signed(reader, req, Call::ReadRecord).await
    }

    /// Reads a patient's record for `reader` as the gateway `gateway` (a server the reader
    /// signed in to with `token`): decided and audited as `reader`'s own read, with the gateway
    /// named in the audit event.
    pub async fn read_as(
        &self,
        gateway: &KeyPair,
        reader: PublicKey,
        token: &str,
        req: &ReadRequest,
    ) -> Result<PatientView> {
        self.read_signed(gateway, req, |read| Call::As {
            reader,
            token: token.to_string(),
            call: Box::new(Call::ReadRecord(read)),
        })
        .await
    }

    async fn read_signed(
        &self,
        signer: &KeyPair,
        req: &ReadRequest,
        call: impl FnOnce(ReadSpec) -> Call,
    ) -> Result<PatientView> {
        let what = format!("the read of patient {}", req.patient_id);
        let patient = match self.patient_in_store(&req.patient_id) {
            Ok(p) => p,
            Err(missing) => {
                // Asking for a patient who is not here (or no longer) is audited all the same:
                // probing for who is a patient leaves a trace. The contract refuses an erased
                // patient's read itself; the answer is the store's either way.
                let spec = ReadSpec {
                    patient: self.store.pseudonym(&req.patient_id),
                    categories: req.categories,
                    purpose: req.purpose,
                    facility: None,
                };
                self.submit(signer, call(spec), &what).await?;
                return Err(missing);
            }
        };
        let facility = match &req.facility {
            None => None,
            Some(f) => Some(self.store.facility_proof(&patient, f)?.ok_or_else(|| {
                Error::Invalid(format!(
                    "patient {} has no records at facility {f}",
                    req.patient_id
                ))
            })?),
        };
        let receipt = self
            .submit(
                signer,
                call(ReadSpec {
                    patient,
                    categories: req.categories,
                    purpose: req.purpose,
                    facility,
                }),
                &what,
            )
            .await?;
        denial(what, &receipt)?;
        let decision =
            receipt.outcome.decision().cloned().ok_or_else(|| {
                Error::Unverified("the read's receipt carries no decision".into())
            })?;
        let held = self
            .store
            .patient(&patient)?
            .ok_or_else(|| Error::Invalid(format!("no patient {} in the store", req.patient_id)))?;
        let mut records = Vec::new();
        let mut records_withheld = 0;
        let mut batches = BTreeMap::new();
        for versions in &held.records {
            let count = versions.len() as u32;
            let shown: Vec<&Version> = if req.history {
                versions.iter().collect()
            } else {
                versions.last().into_iter().collect()
            };
            let Some(first) = versions.first() else {
                continue;
            };
            let granted = decision.for_record(&first.record.facility);
            if granted.is_empty() {
                records_withheld += 1;
                continue;
            }
            for v in shown {
                let (filtered, withheld) = v.record.filtered(self.store.categories(), granted);
                records.push(RecordView {
                    kind: filtered.kind,
                    id: filtered.id,
                    facility: filtered.facility,
                    version: v.version,
                    versions: count,
                    fields: filtered.fields,
                    withheld,
                    reason: v.reason.clone(),
                    proof: self.proof_of(v, &mut batches).await?,
                });
            }
        }
        let granted = decision.categories();
        Ok(PatientView {
            patient: patient.to_hex(),
            asked: req.categories,
            granted,
            denied: req.categories.minus(granted),
            decision,
            records,
            records_withheld,
            tx: receipt.tx_id().to_hex(),
            height: receipt.header.height.0,
        })
    }

    /// Writes a new version of one record of a patient (`record_id`: a visit id, or `None` for
    /// the patient's own record) with `changes` applied, as `author`: the ledger decides (a
    /// treatment grant covering the changed categories), anchors the new version with the
    /// superseded batch as its parent, and only then is it written.
    pub async fn amend(
        &self,
        author: &KeyPair,
        patient_id: &str,
        record_id: Option<&str>,
        changes: &[(String, Option<String>)],
        reason: &str,
    ) -> Result<Amended> {
        let patient = self.patient_in_store(patient_id)?;
        let held = self
            .store
            .patient(&patient)?
            .ok_or_else(|| Error::Invalid(format!("no patient {patient_id} in the store")))?;
        let latest = held
            .records
            .iter()
            .filter_map(|v| v.last())
            .find(|v| match record_id {
                None => v.record.kind == Kind::Patient,
                Some(id) => v.record.kind == Kind::Visit && v.record.id == id,
            })
            .ok_or_else(|| {
                Error::Invalid(match record_id {
                    None => format!("patient {patient_id} has no patient record"),
                    Some(_) => format!("patient {patient_id} has no visit with that id"),
                })
            })?;
        let map = self.store.categories();
        let mut record: Record = latest.record.clone();
        let mut changed = Categories::NONE;
        for (column, value) in changes {
            let Some(field) = record.fields.iter_mut().find(|(c, _)| c == column) else {
                return Err(Error::Invalid(format!(
                    "the record has no field {column}; an amendment changes existing fields"
                )));
            };
            changed = changed
                .union(map.classify(column, field.1.as_deref()).into())
                .union(map.classify(column, value.as_deref()).into());
            field.1 = value.clone();
        }
        if record == latest.record {
            return Err(Error::Invalid(
                "the amendment changes nothing: every field already has that value".into(),
            ));
        }
        let superseded = self.store.batch(latest.batch)?;
        let mut writer = self.store.writer(BatchKind::Amend)?;
        writer.add(
            patient_id,
            record.clone(),
            Some(reason.to_string()),
            Some(author.public().to_string()),
        )?;
        let (root, size) = writer
            .root()
            .ok_or_else(|| Error::Invalid("the amendment wrote no record".into()))?;
        let facility = if record.facility.is_empty() {
            None
        } else {
            self.store.facility_proof(&patient, &record.facility)?
        };
        let what = format!("the amendment of patient {patient_id}");
        let receipt = self
            .submit(
                author,
                Call::AmendRecord(AmendSpec {
                    patient,
                    categories: changed,
                    facility,
                    root,
                    size,
                    supersedes: vec![superseded.root],
                    reason: reason.to_string(),
                }),
                &what,
            )
            .await?;
        denial(what, &receipt)?;
        let height = receipt.header.height.0;
        let batch = writer.commit(receipt.tx_id(), height, vec![superseded.root])?;
        Ok(Amended {
            patient: patient.to_hex(),
            version: latest.version + 1,
            categories: changed,
            root: batch.root.to_hex(),
            supersedes: superseded.root.to_hex(),
            tx: receipt.tx_id().to_hex(),
            height,
        })
    }

    /// Erases a patient as `admin`: the ledger records the erasure (a tombstone), then the store
    /// destroys the patient's key and records.
    pub async fn erase(&self, admin: &KeyPair, patient_id: &str, reason: &str) -> Result<Erased> {
        let patient = self.patient_in_store(patient_id)?;
        let what = format!("the erasure of patient {patient_id}");
        let receipt = self
            .submit(
                admin,
                Call::ErasePatient {
                    patient,
                    reason: reason.to_string(),
                },
                &what,
            )
            .await?;
        denial(what, &receipt)?;
        let height = receipt.header.height.0;
        let records = self.store.erase(&patient, height)?;
        Ok(Erased {
            patient: patient.to_hex(),
            records_destroyed: records,
            tx: receipt.tx_id().to_hex(),
            height,
        })
    }

    /// Opens a break-glass access to a patient's whole record for `minutes`, as `clinician`.
    pub async fn break_glass(
        &self,
        clinician: &KeyPair,
        patient_id: &str,
        minutes: u32,
        reason: &str,
    ) -> Result<GrantMade> {
        self.open_break_glass(clinician, patient_id, minutes, reason, |c| c)
            .await
    }

    /// [`Records::break_glass`] by a gateway for `clinician`, who proves it asked with its
    /// `token`: decided and audited as the clinician's own.
    pub async fn break_glass_as(
        &self,
        gateway: &KeyPair,
        clinician: PublicKey,
        token: &str,
        patient_id: &str,
        minutes: u32,
        reason: &str,
    ) -> Result<GrantMade> {
        self.open_break_glass(gateway, patient_id, minutes, reason, |call| Call::As {
            reader: clinician,
            token: token.to_string(),
            call: Box::new(call),
        })
        .await
    }

    async fn open_break_glass(
        &self,
        signer: &KeyPair,
        patient_id: &str,
        minutes: u32,
        reason: &str,
        wrap: impl FnOnce(Call) -> Call,
    ) -> Result<GrantMade> {
        let patient = self.patient_in_store(patient_id)?;
        let what = format!("break-glass access to patient {patient_id}");
        let call = wrap(Call::BreakGlass {
            patient,
            minutes,
            reason: reason.to_string(),
        });
        let receipt = self.submit(signer, call, &what).await?;
        denial(what, &receipt)?;
        Ok(GrantMade {
            grant: receipt.tx_id().to_hex(),
            expires_ms: receipt.header.time.0 + u64::from(minutes) * 60_000,
            height: receipt.header.height.0,
        })
    }

    /// Grants `grantee` categories of `scope` for `purpose` until `expires`, as `admin`. A
    /// patient scope names the patient by id; the ledger sees only the pseudonym.
    pub async fn grant(
        &self,
        admin: &KeyPair,
        grantee: PublicKey,
        scope: GrantScope,
        categories: Categories,
        purpose: Purpose,
        expires: Time,
    ) -> Result<GrantMade> {
        let scope = match scope {
            GrantScope::Patient(id) => Scope::Patient(self.patient_in_store(&id)?),
            GrantScope::Facility(f) => Scope::Facility(f),
            GrantScope::All => Scope::All,
        };
        let receipt = self
            .submit(
                admin,
                Call::GrantRecords(GrantSpec {
                    grantee,
                    scope,
                    categories,
                    purpose,
                    expires,
                }),
                "the grant",
            )
            .await?;
        denial("the grant".to_string(), &receipt)?;
        Ok(GrantMade {
            grant: receipt.tx_id().to_hex(),
            expires_ms: expires.0,
            height: receipt.header.height.0,
        })
    }

    /// Revokes a record grant by id, as `admin`.
    pub async fn revoke(&self, admin: &KeyPair, grant: Digest) -> Result<u64> {
        let what = format!("the revocation of grant {grant}");
        let receipt = self
            .submit(admin, Call::RevokeRecords { grant }, &what)
            .await?;
        denial(what, &receipt)?;
        Ok(receipt.header.height.0)
    }
}

/// Whose records a grant covers, as the user names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrantScope {
    /// One patient, by id.
    Patient(String),
    /// A facility's patients.
    Facility(String),
    /// Every patient.
    All,
}

/// A grant or break-glass access made.
#[derive(Debug, Clone, Serialize)]
pub struct GrantMade {
    /// The grant's id (hex): what `access revoke` takes.
    pub grant: String,
    /// When it expires (block time, milliseconds since the epoch).
    pub expires_ms: u64,
    /// The block height it committed at.
    pub height: u64,
}

/// An amendment made.
#[derive(Debug, Clone, Serialize)]
pub struct Amended {
    /// The patient's pseudonym (hex).
    pub patient: String,
    /// The new version's number.
    pub version: u32,
    /// The categories changed.
    pub categories: Categories,
    /// The new version's batch root (hex).
    pub root: String,
    /// The superseded version's batch root (hex).
    pub supersedes: String,
    /// The transaction (hex).
    pub tx: String,
    /// Its block height.
    pub height: u64,
}

/// An erasure made.
#[derive(Debug, Clone, Serialize)]
pub struct Erased {
    /// The patient's pseudonym (hex).
    pub patient: String,
    /// Record versions destroyed.
    pub records_destroyed: u64,
    /// The transaction (hex).
    pub tx: String,
    /// Its block height.
    pub height: u64,
}

/// One entry of an access report: an audit event with its ledger receipt.
#[derive(Debug, Clone, Serialize)]
pub struct ReportEntry {
    /// The event.
    pub event: AuditEvent,
    /// The actor's name and role, when known.
    pub actor_name: Option<String>,
    /// The actor's role.
    pub actor_role: Option<String>,
    /// Whether the receipt of its transaction verified offline against the genesis.
    pub verified: bool,
    /// The receipt: the transaction's inclusion proof in its certified block.
    pub receipt: Option<Receipt>,
}

/// Every record access of a patient (or every break-glass access), each with its proof, asked as
/// `auditor` (compliance or admin), of any peer or of peer `peer`'s own copy of the trail.
pub async fn access_report(
    provenance: &Provenance,
    auditor: &KeyPair,
    patient: Option<Digest>,
    break_glass: bool,
    peer: Option<usize>,
) -> Result<Vec<ReportEntry>> {
    let query = ledger::contracts::Query::RecordAudit {
        patient,
        actor: None,
        break_glass,
        from: Time(0),
        to: Time(u64::MAX),
    };
    let reader = provenance.reader_with(auditor.clone());
    audit_entries(provenance, &reader, query, peer).await
}

/// The audit events `query` selects (a record-audit query), each with its receipt, asked with
/// `reader`'s rights (a gateway's reader asks with its caller's), of any peer or of peer `peer`.
pub async fn audit_entries(
    provenance: &Provenance,
    reader: &Reader<'_, Conn>,
    query: ledger::contracts::Query,
    peer: Option<usize>,
) -> Result<Vec<ReportEntry>> {
    let result = match peer {
        Some(i) => reader.ask_peer(i, query).await?,
        None => reader.ask(query).await?,
    };
    let ledger::chain::QueryResult::Audit(events) = result else {
        return Err(Error::Invalid(
            "the ledger answered the access query with something else".into(),
        ));
    };
    let mut names: BTreeMap<PublicKey, Option<(String, String)>> = BTreeMap::new();
    let mut out = Vec::new();
    for event in events {
        if let std::collections::btree_map::Entry::Vacant(slot) = names.entry(event.actor) {
            let who = reader
                .identity(event.actor)
                .await?
                .map(|i| (i.name, i.role.to_string()));
            slot.insert(who);
        }
        let who = names.get(&event.actor).cloned().flatten();
        let receipt = reader.receipt(event.tx).await?;
        let verified = receipt
            .as_ref()
            .is_some_and(|r| r.verify(provenance.genesis()).is_ok() && r.outcome == event.outcome);
        out.push(ReportEntry {
            actor_name: who.as_ref().map(|w| w.0.clone()),
            actor_role: who.map(|w| w.1),
            event,
            verified,
            receipt,
        });
    }
    Ok(out)
}

/// The record grants of `grantee` (or all), asked as `asker`.
pub async fn grants(
    provenance: &Provenance,
    asker: &KeyPair,
    grantee: Option<PublicKey>,
) -> Result<Vec<RecordGrant>> {
    let reader = provenance.reader_with(asker.clone());
    match reader
        .ask(ledger::contracts::Query::RecordGrants(grantee))
        .await?
    {
        ledger::chain::QueryResult::RecordGrants(g) => Ok(g),
        _ => Err(Error::Invalid(
            "the ledger answered the grants query with something else".into(),
        )),
    }
}
