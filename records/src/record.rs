//! A record and its versions: what the store seals, how a version is committed to (a salted
//! hash) and the leaf the batch tree holds for it.

use ledger::contracts::{Categories, Category, record_leaf};
use merkle::Digest;
use serde::{Deserialize, Serialize};

use crate::categories::CategoryMap;

/// Whether a record is the patient's own (demographics, identifiers) or one of its visits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// The patient's own record.
    Patient,
    /// A visit (an encounter) at a facility.
    Visit,
}

impl Kind {
    pub(crate) fn tag(self) -> u8 {
        match self {
            Kind::Patient => 0,
            Kind::Visit => 1,
        }
    }
}

/// One record as the hospital sent it: every field as text (`None` for null).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The patient's own record or a visit.
    pub kind: Kind,
    /// The patient id (patient record) or the visit id.
    pub id: String,
    /// The facility a visit was made at; empty for the patient's own record.
    pub facility: String,
    /// Column → value, in the source's column order.
    pub fields: Vec<(String, Option<String>)>,
}

impl Record {
    /// The canonical bytes committed to: postcard of the record, which is deterministic for
    /// these types.
    pub fn canonical(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("a record always encodes")
    }

    /// The salted commitment to this content: the leaf cannot be brute-forced from guessable
    /// values without the salt, which is sealed with the patient's key.
    pub fn commitment(&self, salt: &[u8; 32]) -> Digest {
        Digest::of_parts(&[b"emrflow-records/commit/v1", salt, &self.canonical()])
    }

    /// The record with only the fields of `granted` categories, and the categories of the
    /// fields withheld.
    pub fn filtered(&self, map: &CategoryMap, granted: Categories) -> (Record, Categories) {
        let mut withheld = Categories::NONE;
        let fields = self
            .fields
            .iter()
            .filter(|(column, value)| {
                let c = map.classify(column, value.as_deref());
                let keep = granted.contains(c);
                if !keep {
                    withheld = withheld.union(Categories::from(c));
                }
                keep
            })
            .cloned()
            .collect();
        let id = if granted.contains(Category::Identifiers) {
            self.id.clone()
        } else {
            String::new()
        };
        (
            Record {
                kind: self.kind,
                id,
                facility: self.facility.clone(),
                fields,
            },
            withheld,
        )
    }
}

/// What is sealed for one version of a record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SealedVersion {
    pub(crate) record: Record,
    pub(crate) salt: [u8; 32],
    /// Why this version was written (an amendment's reason), if it is not the import.
    pub(crate) reason: Option<String>,
    /// Who wrote it (the identity's public key, hex), if it is not the import.
    pub(crate) author: Option<String>,
}

impl SealedVersion {
    pub(crate) fn leaf(&self, patient: &Digest) -> (Digest, Digest) {
        let commitment = self.record.commitment(&self.salt);
        (
            commitment,
            record_leaf(patient, &self.record.facility, &commitment),
        )
    }
}
