//! Record entitlements: who may read which categories of which patients' records, for what
//! purpose and until when; reads decided by those grants; break-glass; amendments; erasures.
//!
//! Patient data never reaches the ledger. A patient is a pseudonym (a keyed hash only the record
//! store can compute), a facility is proved by a Merkle path from one of the patient's record
//! leaves to an anchored record batch, and a decision names categories, never values. The
//! record store returns exactly the categories a committed decision granted, so the receipt of
//! a read is the proof of what was disclosed, to whom and why.
//!
//! The role × action policy of records (beside the table of [`super::policy`]):
//!
//! | role | grant/revoke records | read record | amend record | break glass | erase patient |
//! |---|---|---|---|---|---|
//! | admin | yes | with grant | no | no | yes |
//! | data_engineer | no | with grant | no | no | no |
//! | ml_engineer | no | with grant | no | no | no |
//! | compliance | no | with grant | no | no | no |
//! | clinician | no | with grant | with a treatment grant | yes | no |

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::Position;
use crate::crypto::{Digest, Enc, PublicKey};
use crate::error::Error;
use crate::ids::Time;

/// Longest facility name, in bytes.
pub const MAX_FACILITY_LEN: usize = 64;
/// Longest Merkle path of a facility proof (a batch of up to 2^48 records).
pub const MAX_PATH_LEN: usize = 48;
/// The longest break-glass access, in minutes: an emergency, not a standing grant.
pub const MAX_BREAK_GLASS_MINUTES: u32 = 240;
/// The stage of an anchored record batch (an import).
pub const RECORDS_STAGE: &str = "records";
/// The stage of an anchored amendment (a new version of records that supersede others).
pub const AMEND_STAGE: &str = "records-amend";
/// What the schema hash of a record batch's anchor is the hash of.
pub const RECORDS_SCHEMA: &[u8] = b"emrflow.records.v1";

/// The categories a record's fields fall in. The mapping of columns (and ICD-10 codes) to them
/// belongs to the record store; the ledger only decides on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    /// Birth date, sex, age.
    Demographics,
    /// Name, national id, contact details, address, record numbers.
    Identifiers,
    /// Blood pressure, heart rate, BMI.
    Vitals,
    /// Heart conditions and circulatory diagnoses.
    Cardiology,
    /// Neurological symptoms and cerebrovascular diagnoses.
    Neurology,
    /// Glucose, cholesterol, diabetes.
    Metabolic,
    /// Diagnoses outside the specialties above, and outcomes.
    Diagnoses,
    /// Free-text clinical notes.
    Notes,
}

impl Category {
    /// Every category, in bit order.
    pub const ALL: [Category; 8] = [
        Category::Demographics,
        Category::Identifiers,
        Category::Vitals,
        Category::Cardiology,
        Category::Neurology,
        Category::Metabolic,
        Category::Diagnoses,
        Category::Notes,
    ];

    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Category::Demographics => "demographics",
            Category::Identifiers => "identifiers",
            Category::Vitals => "vitals",
            Category::Cardiology => "cardiology",
            Category::Neurology => "neurology",
            Category::Metabolic => "metabolic",
            Category::Diagnoses => "diagnoses",
            Category::Notes => "notes",
        }
    }

    fn bit(self) -> u16 {
        1 << (self as u16)
    }
}

impl fmt::Display for Category {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Category {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Category::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| Error::Invalid {
                what: "category",
                reason: format!("{s:?} is not one of {}", Categories::ALL),
            })
    }
}

/// A set of categories (one bit each), written as a comma-separated list; a list of names in
/// JSON, the bits in the canonical binary encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Categories(u16);

impl Serialize for Categories {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            let names: Vec<&str> = self.iter().map(Category::as_str).collect();
            names.serialize(s)
        } else {
            self.bits().serialize(s)
        }
    }
}

impl<'de> Deserialize<'de> for Categories {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let names = Vec::<Category>::deserialize(d)?;
            Ok(names.into_iter().collect())
        } else {
            let bits = u16::deserialize(d)?;
            if bits & !Categories::ALL.0 != 0 {
                return Err(serde::de::Error::custom("unknown category bits"));
            }
            Ok(Categories(bits))
        }
    }
}

impl Categories {
    /// No category.
    pub const NONE: Categories = Categories(0);
    /// Every category.
    pub const ALL: Categories = Categories((1 << Category::ALL.len()) - 1);

    /// Whether `c` is in the set.
    pub fn contains(self, c: Category) -> bool {
        self.0 & c.bit() != 0
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 & Self::ALL.0 == 0
    }

    /// Both sets together.
    pub fn union(self, other: Categories) -> Categories {
        Categories((self.0 | other.0) & Self::ALL.0)
    }

    /// What both sets hold.
    pub fn intersection(self, other: Categories) -> Categories {
        Categories(self.0 & other.0 & Self::ALL.0)
    }

    /// What `self` holds and `other` does not.
    pub fn minus(self, other: Categories) -> Categories {
        Categories(self.0 & !other.0 & Self::ALL.0)
    }

    /// The categories, in bit order.
    pub fn iter(self) -> impl Iterator<Item = Category> {
        Category::ALL.into_iter().filter(move |c| self.contains(*c))
    }

    /// The bits, for canonical encodings.
    pub fn bits(self) -> u16 {
        self.0 & Self::ALL.0
    }
}

impl FromIterator<Category> for Categories {
    fn from_iter<I: IntoIterator<Item = Category>>(iter: I) -> Self {
        Categories(iter.into_iter().fold(0, |acc, c| acc | c.bit()))
    }
}

impl From<Category> for Categories {
    fn from(c: Category) -> Self {
        Categories(c.bit())
    }
}

impl fmt::Display for Categories {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("none");
        }
        let names: Vec<&str> = self.iter().map(Category::as_str).collect();
        f.write_str(&names.join(","))
    }
}

impl FromStr for Categories {
    type Err = Error;
    /// `all`, `none`, or names separated by commas.
    fn from_str(s: &str) -> Result<Self, Error> {
        match s.trim() {
            "all" => Ok(Categories::ALL),
            "none" | "" => Ok(Categories::NONE),
            list => list
                .split(',')
                .map(|c| c.trim().parse::<Category>())
                .collect(),
        }
    }
}

/// Why a record is read (the HL7 purpose-of-use vocabulary, reduced to what grants name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Purpose {
    /// Care of this patient.
    Treatment,
    /// Research on de-identified or consented data.
    Research,
    /// Healthcare operations (quality, billing).
    Operations,
    /// Compliance review of the record and its accesses.
    Audit,
}

impl Purpose {
    /// Every purpose.
    pub const ALL: [Purpose; 4] = [
        Purpose::Treatment,
        Purpose::Research,
        Purpose::Operations,
        Purpose::Audit,
    ];

    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Purpose::Treatment => "treatment",
            Purpose::Research => "research",
            Purpose::Operations => "operations",
            Purpose::Audit => "audit",
        }
    }
}

impl fmt::Display for Purpose {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Purpose {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Purpose::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| Error::Invalid {
                what: "purpose",
                reason: format!("{s:?} is not one of treatment, research, operations, audit"),
            })
    }
}

/// Whose records a grant covers.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// One patient, by pseudonym.
    Patient(Digest),
    /// The patients of one facility, and of their records those made there.
    Facility(String),
    /// Every patient.
    All,
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Patient(p) => write!(f, "patient {}", &p.to_hex()[..16]),
            Scope::Facility(name) => write!(f, "facility {name}"),
            Scope::All => f.write_str("all patients"),
        }
    }
}

/// What a record grant says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantSpec {
    /// Who may read.
    pub grantee: PublicKey,
    /// Whose records.
    pub scope: Scope,
    /// Which categories of them.
    pub categories: Categories,
    /// For which purpose.
    pub purpose: Purpose,
    /// Until which block time (exclusive).
    pub expires: Time,
}

/// A record grant as the ledger keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordGrant {
    /// Its id: the granting transaction's id.
    pub id: Digest,
    /// What it grants.
    pub spec: GrantSpec,
    /// Who granted it (the grantee itself for break-glass).
    pub granted_by: PublicKey,
    /// Where it was committed.
    pub position: Position,
    /// Block time it was granted.
    pub time: Time,
    /// Where it was revoked, if it was.
    pub revoked: Option<Position>,
    /// The stated emergency of a break-glass access.
    pub break_glass: Option<String>,
}

impl RecordGrant {
    /// Whether it is in force at `time`.
    pub fn is_live(&self, time: Time) -> bool {
        self.revoked.is_none() && time < self.spec.expires
    }
}

/// Proof that a patient has records made at a facility: one of the patient's record leaves in
/// an anchored batch, with its Merkle path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FacilityProof {
    /// The facility.
    pub facility: String,
    /// The anchored batch root the leaf is in.
    pub batch: Digest,
    /// The record's salted commitment (see [`record_leaf`]).
    pub commitment: Digest,
    /// Leaf index in the batch.
    pub index: u64,
    /// Leaves in the batch.
    pub size: u64,
    /// RFC 6962 audit path.
    pub path: Vec<Digest>,
}

/// The leaf of one record version in a record batch: the patient's pseudonym, the facility the
/// record was made at (empty for the patient's own record) and the salted commitment to its
/// content. The commitment hides the content; only its holder can link leaf and record, and
/// destroying the salts (an erasure) breaks the link for good.
pub fn record_leaf(patient: &Digest, facility: &str, commitment: &Digest) -> Digest {
    let mut e = Enc::new(b"emrflow-records/leaf/v1");
    e.digest(patient)
        .bytes(facility.as_bytes())
        .digest(commitment);
    merkle::leaf_hash(e.finish())
}

/// A read of one patient's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadSpec {
    /// The patient's pseudonym.
    pub patient: Digest,
    /// The categories asked for.
    pub categories: Categories,
    /// Why.
    pub purpose: Purpose,
    /// The facility the reader reads as, proved; needed only for facility-scoped grants.
    pub facility: Option<FacilityProof>,
}

/// A new version of a patient's records that supersedes others.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AmendSpec {
    /// The patient's pseudonym.
    pub patient: Digest,
    /// The categories the amendment changes.
    pub categories: Categories,
    /// The facility the author writes as, proved; needed only for facility-scoped grants.
    pub facility: Option<FacilityProof>,
    /// The root of the new versions' batch, anchored by this call.
    pub root: Digest,
    /// Leaves in it.
    pub size: u64,
    /// The batches holding the versions superseded; each must be anchored.
    pub supersedes: Vec<Digest>,
    /// Why (free text, no PHI).
    pub reason: String,
}

/// The anchor an accepted amendment makes: its batch, with the batches it supersedes as
/// parents. A receipt of the amendment proves exactly this anchor.
pub fn amend_anchor(amend: &AmendSpec) -> super::AnchorSpec {
    let mut params = Enc::new(b"emrflow-records/amend/v1");
    params
        .digest(&amend.patient)
        .u32(u32::from(amend.categories.bits()));
    super::AnchorSpec {
        kind: super::AnchorKind::Dataset,
        root: amend.root,
        row_count: amend.size,
        schema_hash: Digest::of(RECORDS_SCHEMA),
        location: String::new(),
        parents: amend.supersedes.clone(),
        stage: AMEND_STAGE.to_string(),
        params_hash: params.hash(),
        code_version: String::new(),
    }
}

/// What a read (or an amendment) was granted: the categories of the patient's records made
/// anywhere, and, through a facility-scoped grant, more of the records made at that facility.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// Categories granted over every record of the patient.
    pub everywhere: Categories,
    /// A facility and the categories granted over the records made there (and the patient's
    /// own record).
    pub at_facility: Option<(String, Categories)>,
    /// Whether a break-glass access contributed.
    pub break_glass: bool,
    /// The grants that contributed, by id.
    pub grants: Vec<Digest>,
}

impl Decision {
    /// Every category granted somewhere.
    pub fn categories(&self) -> Categories {
        let at = self.at_facility.as_ref().map_or(Categories::NONE, |a| a.1);
        self.everywhere.union(at)
    }

    /// The categories granted over a record made at `facility` (`""` for the patient's own).
    pub fn for_record(&self, facility: &str) -> Categories {
        match &self.at_facility {
            Some((f, c)) if facility.is_empty() || f == facility => self.everywhere.union(*c),
            _ => self.everywhere,
        }
    }

    pub(crate) fn encode(&self, e: &mut Enc) {
        e.u32(u32::from(self.everywhere.bits()));
        match &self.at_facility {
            None => e.u8(0),
            Some((f, c)) => e.u8(1).bytes(f.as_bytes()).u32(u32::from(c.bits())),
        };
        e.u8(u8::from(self.break_glass));
        e.u32(self.grants.len() as u32);
        for g in &self.grants {
            e.digest(g);
        }
    }

    pub(crate) fn wire_size(&self) -> usize {
        16 + self.at_facility.as_ref().map_or(0, |a| a.0.len() + 8) + 32 * self.grants.len()
    }
}

/// What the audit trail keeps of a record access: never a value, only the pseudonym and the
/// categories.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordEvent {
    /// The patient's pseudonym.
    pub patient: Digest,
    /// The categories asked for (read) or changed (amend); all for an erasure.
    pub asked: Categories,
    /// The purpose stated.
    pub purpose: Option<Purpose>,
    /// The facility the reader proved, if any.
    pub facility: Option<String>,
    /// Whether a break-glass access was used (or, for a break-glass call, opened).
    pub break_glass: bool,
}

/// The record part of the contract state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct RecordState {
    /// Every record grant, by id, revoked ones included.
    pub(crate) grants: BTreeMap<Digest, RecordGrant>,
    /// Grant ids by grantee.
    pub(crate) by_grantee: BTreeMap<PublicKey, Vec<Digest>>,
    /// Erased patients: where the erasure committed.
    pub(crate) erased: BTreeMap<Digest, Position>,
}

impl RecordState {
    /// What `reader` gets of `patient`'s records for `asked` and `purpose` at `time`, given the
    /// facility it proved (already checked). Only grants in force, of the same purpose, whose
    /// scope covers the patient count.
    pub(crate) fn decide(
        &self,
        reader: &PublicKey,
        patient: &Digest,
        facility: Option<&str>,
        asked: Categories,
        purpose: Purpose,
        time: Time,
    ) -> Decision {
        let mut d = Decision {
            everywhere: Categories::NONE,
            at_facility: None,
            break_glass: false,
            grants: Vec::new(),
        };
        let mut at = Categories::NONE;
        for id in self.by_grantee.get(reader).map_or(&[][..], Vec::as_slice) {
            let Some(g) = self.grants.get(id) else {
                continue;
            };
            if !g.is_live(time) || g.spec.purpose != purpose {
                continue;
            }
            let give = g.spec.categories.intersection(asked);
            if give.is_empty() {
                continue;
            }
            match &g.spec.scope {
                Scope::All => d.everywhere = d.everywhere.union(give),
                Scope::Patient(p) if p == patient => d.everywhere = d.everywhere.union(give),
                Scope::Facility(f) if facility == Some(f.as_str()) => at = at.union(give),
                _ => continue,
            }
            d.break_glass |= g.break_glass.is_some();
            d.grants.push(*id);
        }
        let at = at.minus(d.everywhere);
        if let Some(f) = facility
            && !at.is_empty()
        {
            d.at_facility = Some((f.to_string(), at));
        }
        d
    }

    /// The grants of `grantee` (or every grant), in id order.
    pub(crate) fn grants_of(&self, grantee: Option<&PublicKey>) -> Vec<RecordGrant> {
        match grantee {
            Some(k) => self
                .by_grantee
                .get(k)
                .map_or(&[][..], Vec::as_slice)
                .iter()
                .filter_map(|id| self.grants.get(id).cloned())
                .collect(),
            None => self.grants.values().cloned().collect(),
        }
    }
}
