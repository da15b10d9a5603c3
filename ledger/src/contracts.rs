//! The contracts: identities with roles, dataset and model anchors with their lineage, access
//! grants, and the audit trail. Executed on commit, in block order, by every peer; execution is
//! a pure function of the ordered transactions (no clock — the block time comes from the
//! batch — no randomness, only ordered maps), so every correct peer reaches the same state.
//! It owns authorization: a transaction its signer's role may not make is *recorded* as denied
//! with its reason, never silently dropped. It must not know about consensus or storage.
//!
//! The role × action policy ([`policy`]):
//!
//! | role | register/revoke identity | anchor dataset | anchor model | grant/revoke access | read, query | update | export |
//! |---|---|---|---|---|---|---|---|
//! | admin | yes | no | no | yes | with grant | with grant | with grant |
//! | data_engineer | no | yes | no | no | with grant | with grant | with grant |
//! | ml_engineer | no | no | yes | no | with grant | with grant | with grant |
//! | compliance | no | no | no | no | yes | no | no |
//! | clinician | no | no | no | no | with grant | with grant | no |
//!
//! "With grant" means a grant for that subject and access, or being the identity that anchored
//! the subject. Every role but the gateway may register a passkey for itself; only a gateway
//! opens a browser session, for the identity whose passkey signed it in ([`passkeys`]).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::crypto::{Digest, PublicKey};
use crate::error::Error;
use crate::ids::{SeqNo, Time};
use crate::tx::SignedTx;

pub mod passkeys;
pub mod records;

use self::passkeys::{Passkey, PasskeyRegistration, PasskeyState, Session, SessionOpening};
pub use self::records::{
    AmendSpec, Categories, Category, Decision, FacilityProof, GrantSpec, MAX_BREAK_GLASS_MINUTES,
    Purpose, ReadSpec, RecordGrant, Scope, record_leaf,
};
use self::records::{RecordEvent, RecordState};

/// Longest identity name, in bytes.
pub const MAX_NAME_LEN: usize = 128;
/// Longest artifact location (a URL or path), in bytes.
pub const MAX_LOCATION_LEN: usize = 2048;
/// Longest stage name, in bytes.
pub const MAX_STAGE_LEN: usize = 128;
/// Longest code version, in bytes.
pub const MAX_CODE_VERSION_LEN: usize = 256;
/// Longest stated purpose of an access, in bytes.
pub const MAX_PURPOSE_LEN: usize = 512;
/// Most parents one anchor may name.
pub const MAX_PARENTS: usize = 256;

/// Refuses a string over `max` bytes or holding a control character: every string of a
/// transaction ends up in the audit trail, which people read in terminals.
fn check_text(what: &str, s: &str, max: usize) -> Result<(), String> {
    if s.len() > max {
        return Err(format!(
            "{what} of {} bytes is over the {max}-byte limit",
            s.len()
        ));
    }
    if s.chars().any(char::is_control) {
        return Err(format!("{what} holds a control character"));
    }
    Ok(())
}

/// The roles of the published system.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Manages identities and grants; reads data only with a grant.
    Admin,
    /// Publishes datasets.
    DataEngineer,
    /// Publishes models.
    MlEngineer,
    /// Audits: reads and queries everything, changes nothing.
    Compliance,
    /// Reads and updates records it was granted.
    Clinician,
    /// A server that reads records for the identities signed in to it, each read carrying the
    /// reader's own token ([`crate::token`]); it may do nothing in its own name.
    Gateway,
}

impl Role {
    /// Every role.
    pub const ALL: [Role; 6] = [
        Role::Admin,
        Role::DataEngineer,
        Role::MlEngineer,
        Role::Compliance,
        Role::Clinician,
        Role::Gateway,
    ];

    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::DataEngineer => "data_engineer",
            Role::MlEngineer => "ml_engineer",
            Role::Compliance => "compliance",
            Role::Clinician => "clinician",
            Role::Gateway => "gateway",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| Error::Invalid {
                what: "role",
                reason: format!(
                    "{s:?} is not one of admin, data_engineer, ml_engineer, compliance, \
                     clinician, gateway"
                ),
            })
    }
}

/// Whether an anchor is a dataset or a model version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnchorKind {
    /// A dataset version.
    Dataset,
    /// A model version.
    Model,
}

/// Kinds of access to an anchored subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Access {
    /// Reading the data.
    Read,
    /// Running a query over it.
    Query,
    /// Changing it.
    Update,
    /// Exporting (transferring) it.
    Export,
}

impl Access {
    /// Every access kind.
    pub const ALL: [Access; 4] = [Access::Read, Access::Query, Access::Update, Access::Export];
}

impl FromStr for Access {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "read" => Ok(Self::Read),
            "query" => Ok(Self::Query),
            "update" => Ok(Self::Update),
            "export" => Ok(Self::Export),
            _ => Err(Error::Invalid {
                what: "access",
                reason: format!("{s:?} is not one of read, query, update, export"),
            }),
        }
    }
}

/// What gets anchored for a dataset or model version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnchorSpec {
    /// Dataset or model.
    pub kind: AnchorKind,
    /// The Merkle root (dataset or model fingerprint).
    pub root: Digest,
    /// Rows (datasets) or nodes/parameters (models).
    pub row_count: u64,
    /// Hash of the schema (or of the model's feature schema).
    pub schema_hash: Digest,
    /// Where the artifact lives (a URL or path).
    pub location: String,
    /// Roots this version was derived from; each must already be anchored.
    pub parents: Vec<Digest>,
    /// The pipeline stage that produced it (e.g. `preprocess`, `train`).
    pub stage: String,
    /// Hash of the stage's parameters.
    pub params_hash: Digest,
    /// The code version (e.g. a git commit) that produced it.
    pub code_version: String,
}

/// A contract call: the body of a client transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Call {
    /// Registers an identity with a role (admin only).
    RegisterIdentity {
        /// The identity's public key.
        key: PublicKey,
        /// A human-readable name.
        name: String,
        /// Its role.
        role: Role,
    },
    /// Revokes an identity (admin only); its later transactions are denied.
    RevokeIdentity {
        /// The identity.
        key: PublicKey,
    },
    /// Anchors a dataset or model version.
    Anchor(AnchorSpec),
    /// Grants an identity an access to an anchored subject (admin only).
    Grant {
        /// The anchored root.
        subject: Digest,
        /// Who gets access.
        grantee: PublicKey,
        /// What access.
        access: Access,
    },
    /// Revokes a grant (admin only).
    Revoke {
        /// The anchored root.
        subject: Digest,
        /// Who loses access.
        grantee: PublicKey,
        /// What access.
        access: Access,
    },
    /// Records a read, query, update or export of an anchored subject.
    RecordAccess {
        /// The anchored root.
        subject: Digest,
        /// The access made.
        access: Access,
        /// Why (free text, no PHI).
        purpose: String,
    },
    /// Grants an identity categories of some patients' records for a purpose (admin only).
    GrantRecords(GrantSpec),
    /// Revokes a record grant by id (admin only).
    RevokeRecords {
        /// The grant's id.
        grant: Digest,
    },
    /// Reads a patient's record: the contract decides which categories the reader gets.
    ReadRecord(ReadSpec),
    /// Opens a short emergency access to one patient's whole record (clinicians only).
    BreakGlass {
        /// The patient's pseudonym.
        patient: Digest,
        /// How long, at most [`MAX_BREAK_GLASS_MINUTES`].
        minutes: u32,
        /// The emergency (free text, no PHI).
        reason: String,
    },
    /// Anchors a new version of a patient's records that supersedes others.
    AmendRecord(AmendSpec),
    /// Erases a patient: the store destroys the patient's keys; the ledger keeps a tombstone
    /// (admin only).
    ErasePatient {
        /// The patient's pseudonym.
        patient: Digest,
        /// Why (free text, no PHI: the request's reference).
        reason: String,
    },
    /// What a clinician did with a decision-support card (CDS Hooks feedback): accepted it, or
    /// overrode it with a reason code the service offered.
    CardFeedback(CardFeedback),
    /// A call made by a gateway (a server) for `reader`, who proves it asked with its own token
    /// ([`crate::token`]): decided and audited as `reader`'s own `call`, with the gateway named
    /// in the audit event. Only what a person does through a server may be wrapped
    /// ([`Call::made_for_readers`]): record reads, break-glass, card feedback, and accesses to an
    /// anchored subject.
    As {
        /// The identity the call is for.
        reader: PublicKey,
        /// `reader`'s token (a compact EdDSA JWT for this ledger), valid at the block's time.
        token: String,
        /// The call.
        call: Box<Call>,
    },
    // New calls go last: a call is encoded by its variant's position.
    /// Registers a passkey for the signer (or the reader a gateway calls for).
    RegisterPasskey(Box<PasskeyRegistration>),
    /// Opens a browser session for the identity whose passkey signed it in (gateways only).
    OpenSession(Box<SessionOpening>),
}

/// Feedback on one decision-support card. It names no patient: the card is the read it was made
/// from, whose audit event names the patient.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CardFeedback {
    /// The card's uuid: [`card_uuid`] of the clinician's own read the card was made from.
    pub card: String,
    /// The anchored model the card's risk came from.
    pub model: Digest,
    /// Accepted or overridden.
    pub outcome: CardOutcome,
    /// The override reason's code (one the service offered), for an overridden card.
    pub reason: Option<String>,
}

/// What a clinician did with a card.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CardOutcome {
    /// Acted on.
    Accepted,
    /// Dismissed, with a reason.
    Overridden,
}

/// Longest override reason code, in bytes.
pub const MAX_REASON_CODE_LEN: usize = 64;

/// The uuid of a card made from the read `tx`: its first 16 bytes in the 8-4-4-4-12 form, so the
/// card names its read without a table to look it up in (a collision needs 2^64 cards).
pub fn card_uuid(tx: &Digest) -> String {
    let h: String = tx.0[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

impl Call {
    /// A call a gateway makes for a reader: the reader, the reader's token, and the call to
    /// decide and audit as the reader's own.
    fn for_reader(&self) -> Option<(&PublicKey, &str, &Call)> {
        match self {
            Call::As {
                reader,
                token,
                call,
            } => Some((reader, token, call)),
            _ => None,
        }
    }

    /// The call itself: what a gateway's [`Call::As`] wraps, or this call.
    pub fn inner(&self) -> &Call {
        match self {
            Call::As { call, .. } => call,
            other => other,
        }
    }

    /// Whether a gateway may make this call for a reader.
    pub fn made_for_readers(&self) -> bool {
        matches!(
            self,
            Call::ReadRecord(_)
                | Call::BreakGlass { .. }
                | Call::CardFeedback(_)
                | Call::RecordAccess { .. }
                | Call::RegisterPasskey(_)
        )
    }

    /// The length limits of its strings and lists (see the `MAX_*` constants).
    pub fn check_limits(&self) -> Result<(), String> {
        match self {
            Call::RegisterIdentity { name, .. } => check_text("name", name, MAX_NAME_LEN),
            Call::RegisterPasskey(r) => r.check_limits(),
            Call::OpenSession(o) => o.check_limits(),
            Call::Anchor(a) => {
                check_text("location", &a.location, MAX_LOCATION_LEN)?;
                check_text("stage", &a.stage, MAX_STAGE_LEN)?;
                check_text("code version", &a.code_version, MAX_CODE_VERSION_LEN)?;
                if a.parents.len() > MAX_PARENTS {
                    return Err(format!(
                        "{} parents is over the limit of {MAX_PARENTS}",
                        a.parents.len()
                    ));
                }
                Ok(())
            }
            Call::RecordAccess { purpose, .. } => check_text("purpose", purpose, MAX_PURPOSE_LEN),
            Call::RevokeIdentity { .. } | Call::Grant { .. } | Call::Revoke { .. } => Ok(()),
            Call::GrantRecords(g) => match &g.scope {
                Scope::Facility(f) => check_text("facility", f, records::MAX_FACILITY_LEN),
                _ => Ok(()),
            },
            Call::RevokeRecords { .. } => Ok(()),
            Call::ReadRecord(r) => check_facility_proof(r.facility.as_ref()),
            Call::CardFeedback(f) => check_feedback(f),
            Call::As { token, call, .. } => {
                check_text("token", token, crate::token::MAX_TOKEN_LEN)?;
                if !call.made_for_readers() {
                    return Err(format!(
                        "a gateway may not make a {:?} call for a reader",
                        Action::of(call)
                    ));
                }
                call.check_limits()
            }
            Call::BreakGlass { reason, .. } | Call::ErasePatient { reason, .. } => {
                check_text("reason", reason, MAX_PURPOSE_LEN)
            }
            Call::AmendRecord(a) => {
                check_text("reason", &a.reason, MAX_PURPOSE_LEN)?;
                if a.supersedes.len() > MAX_PARENTS {
                    return Err(format!(
                        "{} superseded batches is over the limit of {MAX_PARENTS}",
                        a.supersedes.len()
                    ));
                }
                check_facility_proof(a.facility.as_ref())
            }
        }
    }
}

/// The 16 bytes a [`card_uuid`] spells.
fn card_prefix(card: &str) -> Option<[u8; 16]> {
    let hex: Vec<u8> = card.bytes().filter(|b| *b != b'-').collect();
    if hex.len() != 32 || card.len() != 36 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, pair) in hex.chunks(2).enumerate() {
        let text = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(text, 16).ok()?;
    }
    Some(out)
}

fn check_feedback(f: &CardFeedback) -> Result<(), String> {
    check_text("card", &f.card, 36)?;
    match (&f.outcome, &f.reason) {
        (CardOutcome::Overridden, Some(code)) => {
            check_text("override reason", code, MAX_REASON_CODE_LEN)
        }
        (CardOutcome::Overridden, None) => Err("an overridden card needs a reason code".into()),
        (CardOutcome::Accepted, Some(_)) => Err("an accepted card has no override reason".into()),
        (CardOutcome::Accepted, None) => Ok(()),
    }
}

fn check_facility_proof(proof: Option<&FacilityProof>) -> Result<(), String> {
    let Some(p) = proof else { return Ok(()) };
    check_text("facility", &p.facility, records::MAX_FACILITY_LEN)?;
    if p.path.len() > records::MAX_PATH_LEN {
        return Err(format!(
            "a facility proof of {} hashes is over the limit of {}",
            p.path.len(),
            records::MAX_PATH_LEN
        ));
    }
    Ok(())
}

/// What the audit trail keeps of a record access, accepted or denied.
fn record_event(call: &Call, outcome: &Outcome) -> Option<RecordEvent> {
    let used_break_glass = outcome.decision().is_some_and(|d| d.break_glass);
    Some(match call.inner() {
        Call::ReadRecord(r) => RecordEvent {
            patient: r.patient,
            asked: r.categories,
            purpose: Some(r.purpose),
            facility: r.facility.as_ref().map(|p| p.facility.clone()),
            break_glass: used_break_glass,
        },
        Call::AmendRecord(a) => RecordEvent {
            patient: a.patient,
            asked: a.categories,
            purpose: Some(Purpose::Treatment),
            facility: a.facility.as_ref().map(|p| p.facility.clone()),
            break_glass: used_break_glass,
        },
        Call::BreakGlass { patient, .. } => RecordEvent {
            patient: *patient,
            asked: Categories::ALL,
            purpose: Some(Purpose::Treatment),
            facility: None,
            break_glass: true,
        },
        Call::ErasePatient { patient, .. } => RecordEvent {
            patient: *patient,
            asked: Categories::ALL,
            purpose: None,
            facility: None,
            break_glass: false,
        },
        Call::GrantRecords(GrantSpec {
            scope: Scope::Patient(patient),
            categories,
            purpose,
            ..
        }) => RecordEvent {
            patient: *patient,
            asked: *categories,
            purpose: Some(*purpose),
            facility: None,
            break_glass: false,
        },
        _ => return None,
    })
}

/// The action an audit event records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Identity registration.
    RegisterIdentity,
    /// Identity revocation.
    RevokeIdentity,
    /// Dataset anchor.
    AnchorDataset,
    /// Model anchor.
    AnchorModel,
    /// Access grant.
    Grant,
    /// Access revocation.
    Revoke,
    /// Read of a subject.
    Read,
    /// Query over a subject.
    Query,
    /// Update of a subject.
    Update,
    /// Export (transfer) of a subject.
    Export,
    /// A transaction that could not be decoded.
    Malformed,
    /// Record grant.
    GrantRecords,
    /// Record grant revocation.
    RevokeRecords,
    /// Read of a patient's record.
    ReadRecord,
    /// Amendment of a patient's record.
    AmendRecord,
    /// Break-glass access to a patient's record.
    BreakGlass,
    /// Erasure of a patient.
    ErasePatient,
    /// Feedback on a decision-support card.
    CardFeedback,
    /// A passkey registration.
    RegisterPasskey,
    /// A browser session opened by a passkey.
    OpenSession,
}

impl Action {
    /// Every action a role can be asked to make.
    pub const ALL: [Action; 19] = [
        Action::RegisterIdentity,
        Action::RevokeIdentity,
        Action::AnchorDataset,
        Action::AnchorModel,
        Action::Grant,
        Action::Revoke,
        Action::Read,
        Action::Query,
        Action::Update,
        Action::Export,
        Action::GrantRecords,
        Action::RevokeRecords,
        Action::ReadRecord,
        Action::AmendRecord,
        Action::BreakGlass,
        Action::ErasePatient,
        Action::CardFeedback,
        Action::RegisterPasskey,
        Action::OpenSession,
    ];

    /// Whether the action is on patients' records (see [`records`]), or on a decision-support
    /// card made from a read of one.
    pub fn is_record(self) -> bool {
        matches!(
            self,
            Action::GrantRecords
                | Action::RevokeRecords
                | Action::ReadRecord
                | Action::AmendRecord
                | Action::BreakGlass
                | Action::ErasePatient
                | Action::CardFeedback
        )
    }

    fn of(call: &Call) -> Self {
        match call {
            Call::RegisterIdentity { .. } => Self::RegisterIdentity,
            Call::RevokeIdentity { .. } => Self::RevokeIdentity,
            Call::Anchor(a) if a.kind == AnchorKind::Dataset => Self::AnchorDataset,
            Call::Anchor(_) => Self::AnchorModel,
            Call::Grant { .. } => Self::Grant,
            Call::Revoke { .. } => Self::Revoke,
            Call::RecordAccess { access, .. } => Self::from(*access),
            Call::GrantRecords(_) => Self::GrantRecords,
            Call::RevokeRecords { .. } => Self::RevokeRecords,
            Call::ReadRecord(_) => Self::ReadRecord,
            Call::AmendRecord(_) => Self::AmendRecord,
            Call::BreakGlass { .. } => Self::BreakGlass,
            Call::ErasePatient { .. } => Self::ErasePatient,
            Call::CardFeedback(_) => Self::CardFeedback,
            Call::RegisterPasskey(_) => Self::RegisterPasskey,
            Call::OpenSession(_) => Self::OpenSession,
            Call::As { call, .. } => Self::of(call),
        }
    }
}

impl From<Access> for Action {
    fn from(a: Access) -> Self {
        match a {
            Access::Read => Self::Read,
            Access::Query => Self::Query,
            Access::Update => Self::Update,
            Access::Export => Self::Export,
        }
    }
}

/// Whether a role may make an action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    /// Always.
    Allowed,
    /// Only with a grant for the subject (or as the identity that anchored it).
    WithGrant,
    /// Never.
    Denied,
}

/// The role × action policy (see the table in the module docs).
pub fn policy(role: Role, action: Action) -> Permission {
    use Action as A;
    use Permission::{Allowed, Denied, WithGrant};
    match (role, action) {
        (_, A::Malformed) => Denied,
        // The passkey, not the gateway's role, says who signs in.
        (Role::Gateway, A::OpenSession) => Allowed,
        // A gateway's reads are its readers' (`Call::As`), never its own.
        (Role::Gateway, _) => Denied,
        (_, A::RegisterPasskey) => Allowed,
        (_, A::ReadRecord) => WithGrant,
        (
            Role::Admin,
            A::RegisterIdentity
            | A::RevokeIdentity
            | A::Grant
            | A::Revoke
            | A::GrantRecords
            | A::RevokeRecords
            | A::ErasePatient,
        ) => Allowed,
        (Role::Clinician, A::BreakGlass | A::CardFeedback) => Allowed,
        (Role::Clinician, A::AmendRecord) => WithGrant,
        (Role::Admin, A::Read | A::Query | A::Update | A::Export) => WithGrant,
        (Role::DataEngineer, A::AnchorDataset) => Allowed,
        (Role::MlEngineer, A::AnchorModel) => Allowed,
        (Role::DataEngineer | Role::MlEngineer, A::Read | A::Query | A::Update | A::Export) => {
            WithGrant
        }
        (Role::Compliance, A::Read | A::Query) => Allowed,
        (Role::Clinician, A::Read | A::Query | A::Update) => WithGrant,
        _ => Denied,
    }
}

/// Where a transaction sits: block height and index in the block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Position {
    /// Block height.
    pub seq: SeqNo,
    /// Index within the block.
    pub index: u32,
}

/// The result of executing a transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The call took effect.
    Accepted,
    /// The call was recorded but had no effect.
    Denied {
        /// Why.
        reason: String,
    },
    /// A record read (or amendment) took effect with what it was granted.
    Granted(Decision),
}

impl Outcome {
    fn denied(reason: impl Into<String>) -> Self {
        Self::Denied {
            reason: reason.into(),
        }
    }

    /// Whether the call took effect.
    pub fn is_accepted(&self) -> bool {
        matches!(self, Self::Accepted | Self::Granted(_))
    }

    /// The decision of an accepted record read or amendment.
    pub fn decision(&self) -> Option<&Decision> {
        match self {
            Self::Granted(d) => Some(d),
            _ => None,
        }
    }

    /// Whether the call was refused because its signer had used its nonce before.
    pub fn is_replay(&self) -> bool {
        matches!(self, Self::Denied { reason } if reason.starts_with(REPLAYED))
    }
}

/// How the reason of a replayed transaction's denial starts.
const REPLAYED: &str = "replayed nonce";

/// A registered identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// Public key.
    pub key: PublicKey,
    /// Name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// Revoked identities can no longer act.
    pub revoked: bool,
    /// Where it was registered (height 0 for the genesis admin).
    pub registered: Position,
}

/// An anchored dataset or model version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnchorRecord {
    /// What was anchored.
    pub spec: AnchorSpec,
    /// The identity that signed the anchor.
    pub signer: PublicKey,
    /// Its name at the time.
    pub signer_name: String,
    /// The transaction id.
    pub tx: Digest,
    /// Where it was committed.
    pub position: Position,
    /// Block time.
    pub time: Time,
}

/// One audit trail entry; every transaction produces exactly one, accepted or denied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// Where it was committed.
    pub position: Position,
    /// Block time.
    pub time: Time,
    /// Who.
    pub actor: PublicKey,
    /// The gateway (server) that made the call for `actor`, if any.
    pub via: Option<PublicKey>,
    /// What.
    pub action: Action,
    /// On which anchored root, if any.
    pub subject: Option<Digest>,
    /// The stated purpose of an access.
    pub purpose: Option<String>,
    /// The transaction id.
    pub tx: Digest,
    /// Accepted or denied with a reason.
    pub outcome: Outcome,
    /// The patient and categories of a record access.
    pub record: Option<RecordEvent>,
}

/// A read-only question to a peer's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Query {
    /// The first anchor of a root.
    Anchor(Digest),
    /// Every anchor of a root, in commit order: the same rows or model published under
    /// different parameters (another job, another output folder) are each a derivation of their
    /// own.
    Anchors(Digest),
    /// The lineage DAG of a root: its ancestors up to `max_depth` levels.
    Lineage {
        /// The root whose ancestry is wanted.
        root: Digest,
        /// How many parent levels to follow.
        max_depth: u32,
    },
    /// Audit events filtered by subject and/or actor over `[from, to]` block time.
    Audit {
        /// Only events on this root.
        subject: Option<Digest>,
        /// Only events by this identity.
        actor: Option<PublicKey>,
        /// Earliest block time (inclusive).
        from: Time,
        /// Latest block time (inclusive).
        to: Time,
    },
    /// An identity.
    Identity(PublicKey),
    /// The head of the chain.
    Head,
    /// The receipt of a committed transaction.
    Receipt(Digest),
    /// Record-access events filtered by patient, actor, break-glass and block time: what a
    /// patient's access report and the break-glass review read (compliance and admin only).
    RecordAudit {
        /// Only events on this patient (pseudonym).
        patient: Option<Digest>,
        /// Only events by this identity.
        actor: Option<PublicKey>,
        /// Only break-glass events.
        break_glass: bool,
        /// Earliest block time (inclusive).
        from: Time,
        /// Latest block time (inclusive).
        to: Time,
    },
    /// Record grants, of one grantee or all (an identity may always ask for its own).
    RecordGrants(Option<PublicKey>),
    /// A query a gateway (a server) asks for `reader`, who proves it asked with its own token:
    /// authorized as `reader`'s own.
    As {
        /// The identity the query is for.
        reader: PublicKey,
        /// `reader`'s token, valid when the peer answers.
        token: String,
        /// The query.
        query: Box<Query>,
    },
}

/// The lineage DAG of a root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lineage {
    /// The root asked about.
    pub root: Digest,
    /// Every anchor reached, the root's first, then breadth-first; a root published several
    /// times has one node per derivation, in commit order.
    pub nodes: Vec<AnchorRecord>,
    /// `(child, parent)` edges.
    pub edges: Vec<(Digest, Digest)>,
    /// Parents named but not anchored (none when every anchor was checked on commit).
    pub missing: Vec<Digest>,
}

/// One change to the state, as it is undone.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Undo {
    /// A nonce was recorded for a signer.
    Nonce(PublicKey, u64),
    /// An identity was added (`None`) or changed (its old value).
    Identity(PublicKey, Option<Identity>),
    /// A derivation was appended to a root's anchors (the last one).
    Anchor(Digest),
    /// A grant was added.
    GrantAdded((Digest, PublicKey, Access)),
    /// A grant was removed.
    GrantRemoved((Digest, PublicKey, Access)),
    /// A record grant was added.
    RecordGrantAdded(Digest),
    /// A record grant was revoked.
    RecordGrantRevoked(Digest),
    /// A patient was erased.
    Erased(Digest),
    /// A passkey was added (`None`) or changed (its old value), by credential id.
    Passkey(Vec<u8>, Option<Passkey>),
    /// A session was opened, by key.
    Session(Vec<u8>),
    /// An audit event was appended.
    Audit,
}

/// The contract state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State {
    ledger: Digest,
    identities: BTreeMap<PublicKey, Identity>,
    /// Every anchor of a root, in commit order (one per distinct parameter hash).
    anchors: BTreeMap<Digest, Vec<AnchorRecord>>,
    grants: BTreeSet<(Digest, PublicKey, Access)>,
    nonces: BTreeMap<PublicKey, BTreeSet<u64>>,
    audit: Vec<AuditEvent>,
    by_actor: BTreeMap<PublicKey, Vec<usize>>,
    by_subject: BTreeMap<Digest, Vec<usize>>,
    by_patient: BTreeMap<Digest, Vec<usize>>,
    records: RecordState,
    passkeys: PasskeyState,
    /// While staging (see [`State::stage`]), every change in order, so that it can be undone.
    journal: Option<Vec<Undo>>,
}

impl State {
    /// The state at genesis: only the admin identity exists.
    pub fn new(ledger: Digest, admin: PublicKey, admin_name: &str) -> Self {
        let mut identities = BTreeMap::new();
        identities.insert(
            admin,
            Identity {
                key: admin,
                name: admin_name.to_string(),
                role: Role::Admin,
                revoked: false,
                registered: Position {
                    seq: SeqNo(0),
                    index: 0,
                },
            },
        );
        Self {
            ledger,
            identities,
            anchors: BTreeMap::new(),
            grants: BTreeSet::new(),
            nonces: BTreeMap::new(),
            audit: Vec::new(),
            by_actor: BTreeMap::new(),
            by_subject: BTreeMap::new(),
            by_patient: BTreeMap::new(),
            records: RecordState::default(),
            passkeys: PasskeyState::default(),
            journal: None,
        }
    }

    /// Starts staging: the changes made from now on are journaled and can be undone with
    /// [`State::rollback`] or kept with [`State::keep`]. Executing on a staged state is
    /// executing on a copy without copying the whole state (which grows with every
    /// transaction ever executed).
    pub(crate) fn stage(&mut self) {
        self.journal = Some(Vec::new());
    }

    /// Keeps what was staged.
    pub(crate) fn keep(&mut self) {
        self.journal = None;
    }

    /// Undoes every change made since [`State::stage`], newest first.
    pub(crate) fn rollback(&mut self) {
        let Some(journal) = self.journal.take() else {
            return;
        };
        for undo in journal.into_iter().rev() {
            match undo {
                Undo::Nonce(signer, nonce) => {
                    if let Some(set) = self.nonces.get_mut(&signer) {
                        set.remove(&nonce);
                        if set.is_empty() {
                            self.nonces.remove(&signer);
                        }
                    }
                }
                Undo::Identity(key, None) => {
                    self.identities.remove(&key);
                }
                Undo::Identity(key, Some(old)) => {
                    self.identities.insert(key, old);
                }
                Undo::Anchor(root) => {
                    if let Some(derivations) = self.anchors.get_mut(&root) {
                        derivations.pop();
                        if derivations.is_empty() {
                            self.anchors.remove(&root);
                        }
                    }
                }
                Undo::GrantAdded(g) => {
                    self.grants.remove(&g);
                }
                Undo::GrantRemoved(g) => {
                    self.grants.insert(g);
                }
                Undo::RecordGrantAdded(id) => {
                    if let Some(g) = self.records.grants.remove(&id)
                        && let Some(ids) = self.records.by_grantee.get_mut(&g.spec.grantee)
                    {
                        ids.retain(|i| *i != id);
                        if ids.is_empty() {
                            self.records.by_grantee.remove(&g.spec.grantee);
                        }
                    }
                }
                Undo::RecordGrantRevoked(id) => {
                    if let Some(g) = self.records.grants.get_mut(&id) {
                        g.revoked = None;
                    }
                }
                Undo::Erased(patient) => {
                    self.records.erased.remove(&patient);
                }
                Undo::Passkey(id, None) => {
                    self.passkeys.passkeys.remove(&id);
                }
                Undo::Passkey(id, Some(old)) => {
                    self.passkeys.passkeys.insert(id, old);
                }
                Undo::Session(key) => {
                    self.passkeys.sessions.remove(&key);
                }
                Undo::Audit => {
                    let Some(e) = self.audit.pop() else { continue };
                    let idx = self.audit.len();
                    let unindex = |map: &mut Vec<usize>| {
                        if map.last() == Some(&idx) {
                            map.pop();
                        }
                    };
                    if let Some(v) = self.by_actor.get_mut(&e.actor) {
                        unindex(v);
                        if v.is_empty() {
                            self.by_actor.remove(&e.actor);
                        }
                    }
                    if let Some(s) = e.subject
                        && let Some(v) = self.by_subject.get_mut(&s)
                    {
                        unindex(v);
                        if v.is_empty() {
                            self.by_subject.remove(&s);
                        }
                    }
                    if let Some(r) = &e.record
                        && let Some(v) = self.by_patient.get_mut(&r.patient)
                    {
                        unindex(v);
                        if v.is_empty() {
                            self.by_patient.remove(&r.patient);
                        }
                    }
                }
            }
        }
    }

    fn journal(&mut self, undo: Undo) {
        if let Some(j) = self.journal.as_mut() {
            j.push(undo);
        }
    }

    /// Executes one committed transaction and records its audit event.
    pub fn execute(&mut self, tx: &SignedTx, position: Position, time: Time) -> Outcome {
        self.execute_known(tx, tx.digest(), position, time)
    }

    /// [`State::execute`] of a transaction whose id `id` the caller computed already.
    pub(crate) fn execute_known(
        &mut self,
        tx: &SignedTx,
        id: Digest,
        position: Position,
        time: Time,
    ) -> Outcome {
        // Who the event is of: the signer, or the identity a gateway read for.
        let mut actor = tx.signer;
        let mut via = None;
        let (action, subject, purpose, outcome, record) = match tx.body() {
            Err(e) => (
                Action::Malformed,
                None,
                None,
                Outcome::denied(format!("malformed: {e}")),
                None,
            ),
            Ok(body) => {
                let action = Action::of(&body.call);
                let (subject, purpose) = match body.call.inner() {
                    Call::Anchor(a) => (Some(a.root), None),
                    Call::Grant { subject, .. } | Call::Revoke { subject, .. } => {
                        (Some(*subject), None)
                    }
                    Call::RecordAccess {
                        subject, purpose, ..
                    } => (Some(*subject), Some(purpose.clone())),
                    Call::AmendRecord(a) => (Some(a.root), Some(a.reason.clone())),
                    Call::ReadRecord(r) => (None, Some(r.purpose.to_string())),
                    Call::GrantRecords(g) => (None, Some(g.purpose.to_string())),
                    Call::BreakGlass { reason, .. } | Call::ErasePatient { reason, .. } => {
                        (None, Some(reason.clone()))
                    }
                    Call::CardFeedback(f) => (
                        Some(f.model),
                        Some(match &f.reason {
                            Some(code) => format!("overridden: {code}"),
                            None => "accepted".to_string(),
                        }),
                    ),
                    _ => (None, None),
                };
                let outcome = if body.ledger != self.ledger {
                    Outcome::denied("transaction is for another ledger")
                } else if self
                    .nonces
                    .get(&tx.signer)
                    .is_some_and(|n| n.contains(&body.nonce))
                {
                    Outcome::denied(format!("{REPLAYED} {}", body.nonce))
                } else if let Err(reason) = body.call.check_limits() {
                    // Correct peers never order such a transaction (`SignedTx::check_shape`);
                    // one that a faulty primary slipped in is denied, never applied.
                    Outcome::denied(reason)
                } else {
                    self.nonces.entry(tx.signer).or_default().insert(body.nonce);
                    self.journal(Undo::Nonce(tx.signer, body.nonce));
                    match body.call.for_reader() {
                        Some((_, _, call)) if !call.made_for_readers() => {
                            Outcome::denied("a gateway may not make this call for a reader")
                        }
                        Some((reader, token, call)) => {
                            match self.check_gateway(&tx.signer, reader, token, time) {
                                Err(reason) => Outcome::denied(reason),
                                Ok(()) => {
                                    actor = *reader;
                                    via = Some(tx.signer);
                                    self.apply(*reader, call, action, id, position, time)
                                }
                            }
                        }
                        None => self.apply(tx.signer, &body.call, action, id, position, time),
                    }
                };
                let record = record_event(&body.call, &outcome);
                (action, subject, purpose, outcome, record)
            }
        };
        let idx = self.audit.len();
        self.by_actor.entry(actor).or_default().push(idx);
        if let Some(s) = subject {
            self.by_subject.entry(s).or_default().push(idx);
        }
        if let Some(r) = &record {
            self.by_patient.entry(r.patient).or_default().push(idx);
        }
        self.audit.push(AuditEvent {
            position,
            time,
            actor,
            via,
            action,
            subject,
            purpose,
            tx: id,
            outcome: outcome.clone(),
            record,
        });
        self.journal(Undo::Audit);
        outcome
    }

    /// Whether `gateway` may read for `reader` now: it is an active gateway, and `token` is
    /// `reader`'s own, for this ledger, valid at the block's time.
    fn check_gateway(
        &self,
        gateway: &PublicKey,
        reader: &PublicKey,
        token: &str,
        time: Time,
    ) -> Result<(), String> {
        match self.identities.get(gateway) {
            Some(g) if g.role == Role::Gateway && !g.revoked => {}
            Some(g) if g.revoked => return Err("identity revoked".into()),
            _ => return Err("only a gateway may read for another identity".into()),
        }
        let signer = if crate::token::is_session_token(token) {
            let (key, claims) = crate::token::verify_session(token, &self.ledger, time)?;
            let session = self
                .passkeys
                .sessions
                .get(&key)
                .ok_or("the token's session was never opened")?;
            if time.0 >= session.expires.0 {
                return Err("the token's session has ended".into());
            }
            if claims.exp.saturating_mul(1000) > session.expires.0 {
                return Err("the token outlives its session".into());
            }
            if claims.sub != session.identity.to_hex() {
                return Err("the token's subject did not open its session".into());
            }
            session.identity
        } else {
            crate::token::verify(token, &self.ledger, time)?.0
        };
        if signer != *reader {
            return Err("the token is not the reader's".into());
        }
        Ok(())
    }

    /// The open session of `key` at `now`, if any.
    pub fn session(&self, key: &[u8], now: Time) -> Option<&Session> {
        self.passkeys
            .sessions
            .get(key)
            .filter(|s| now.0 < s.expires.0)
    }

    /// The passkeys of `identity`.
    pub fn passkeys_of(&self, identity: &PublicKey) -> Vec<&Passkey> {
        self.passkeys
            .passkeys
            .values()
            .filter(|p| p.identity == *identity)
            .collect()
    }

    fn apply(
        &mut self,
        signer: PublicKey,
        call: &Call,
        action: Action,
        tx: Digest,
        position: Position,
        time: Time,
    ) -> Outcome {
        let Some(me) = self.identities.get(&signer) else {
            return Outcome::denied("unknown identity");
        };
        if me.revoked {
            return Outcome::denied("identity revoked");
        }
        let (role, my_name) = (me.role, me.name.clone());
        let permission = policy(role, action);
        if permission == Permission::Denied {
            return Outcome::denied(format!("role {role} may not {action:?}"));
        }
        match call {
            Call::RegisterIdentity { key, name, role } => {
                if self.identities.contains_key(key) {
                    return Outcome::denied("identity already registered");
                }
                self.identities.insert(
                    *key,
                    Identity {
                        key: *key,
                        name: name.clone(),
                        role: *role,
                        revoked: false,
                        registered: position,
                    },
                );
                self.journal(Undo::Identity(*key, None));
            }
            Call::RegisterPasskey(registration) => {
                match self
                    .passkeys
                    .register(&self.ledger, signer, registration, position)
                {
                    Err(reason) => return Outcome::denied(reason),
                    Ok(passkey) => {
                        let id = passkey.credential.clone();
                        self.passkeys.passkeys.insert(id.clone(), passkey);
                        self.journal(Undo::Passkey(id, None));
                    }
                }
            }
            Call::OpenSession(opening) => {
                let (passkey, session) =
                    match self.passkeys.open(&self.ledger, opening, time, position) {
                        Err(reason) => return Outcome::denied(reason),
                        Ok(opened) => opened,
                    };
                if !self.is_active(&session.identity) {
                    return Outcome::denied("the passkey's identity is revoked");
                }
                let id = passkey.credential.clone();
                if let Some(old) = self.passkeys.passkeys.insert(id.clone(), passkey) {
                    self.journal(Undo::Passkey(id, Some(old)));
                }
                let key = session.key.clone();
                self.passkeys.sessions.insert(key.clone(), session);
                self.journal(Undo::Session(key));
            }
            Call::RevokeIdentity { key } => match self.identities.get_mut(key) {
                None => return Outcome::denied("unknown identity to revoke"),
                Some(_) if *key == signer => return Outcome::denied("cannot revoke oneself"),
                Some(id) => {
                    let old = id.clone();
                    id.revoked = true;
                    self.journal(Undo::Identity(*key, Some(old)));
                }
            },
            Call::Anchor(spec) => {
                // One root may be published several times (the same rows from another job or
                // into another folder): each distinct parameter hash is a derivation of its own.
                // The same root with the same parameters is the same publication.
                let derivations = self.anchors.get(&spec.root).map_or(&[][..], Vec::as_slice);
                if let Some(first) = derivations.first()
                    && first.spec.kind != spec.kind
                {
                    return Outcome::denied(format!(
                        "root already anchored as a {:?}",
                        first.spec.kind
                    ));
                }
                if derivations
                    .iter()
                    .any(|a| a.spec.params_hash == spec.params_hash)
                {
                    return Outcome::denied("root already anchored with these parameters");
                }
                if let Some(p) = spec.parents.iter().find(|p| !self.anchors.contains_key(p)) {
                    return Outcome::denied(format!("unknown parent {p}"));
                }
                self.anchors
                    .entry(spec.root)
                    .or_default()
                    .push(AnchorRecord {
                        spec: spec.clone(),
                        signer,
                        signer_name: my_name,
                        tx,
                        position,
                        time,
                    });
                self.journal(Undo::Anchor(spec.root));
            }
            Call::Grant {
                subject,
                grantee,
                access,
            } => {
                if !self.anchors.contains_key(subject) {
                    return Outcome::denied("unknown subject");
                }
                if !self.identities.contains_key(grantee) {
                    return Outcome::denied("unknown grantee");
                }
                let grant = (*subject, *grantee, *access);
                if self.grants.insert(grant) {
                    self.journal(Undo::GrantAdded(grant));
                }
            }
            Call::Revoke {
                subject,
                grantee,
                access,
            } => {
                let grant = (*subject, *grantee, *access);
                if !self.grants.remove(&grant) {
                    return Outcome::denied("no such grant");
                }
                self.journal(Undo::GrantRemoved(grant));
            }
            Call::GrantRecords(spec) => {
                match self.identities.get(&spec.grantee) {
                    None => return Outcome::denied("unknown grantee"),
                    Some(g) if g.revoked => return Outcome::denied("grantee revoked"),
                    Some(_) => {}
                }
                if spec.categories.is_empty() {
                    return Outcome::denied("a record grant needs at least one category");
                }
                if spec.expires <= time {
                    return Outcome::denied("the grant would expire before it starts");
                }
                self.add_record_grant(RecordGrant {
                    id: tx,
                    spec: spec.clone(),
                    granted_by: signer,
                    position,
                    time,
                    revoked: None,
                    break_glass: None,
                });
            }
            Call::RevokeRecords { grant } => match self.records.grants.get_mut(grant) {
                None => return Outcome::denied("no such record grant"),
                Some(g) if g.revoked.is_some() => {
                    return Outcome::denied("record grant already revoked");
                }
                Some(g) => {
                    g.revoked = Some(position);
                    self.journal(Undo::RecordGrantRevoked(*grant));
                }
            },
            Call::ReadRecord(read) => {
                let facility = match self.patient_at(&read.patient, read.facility.as_ref()) {
                    Ok(facility) => facility,
                    Err(reason) => return Outcome::denied(reason),
                };
                let d = self.records.decide(
                    &signer,
                    &read.patient,
                    facility,
                    read.categories,
                    read.purpose,
                    time,
                );
                if d.categories().is_empty() {
                    return Outcome::denied(format!(
                        "no {} grant in force covers {} of this patient",
                        read.purpose, read.categories
                    ));
                }
                return Outcome::Granted(d);
            }
            Call::BreakGlass {
                patient,
                minutes,
                reason,
            } => {
                if reason.trim().is_empty() {
                    return Outcome::denied("break-glass needs a reason");
                }
                if *minutes == 0 || *minutes > MAX_BREAK_GLASS_MINUTES {
                    return Outcome::denied(format!(
                        "break-glass lasts 1 to {MAX_BREAK_GLASS_MINUTES} minutes, not {minutes}"
                    ));
                }
                if let Err(reason) = self.check_patient(patient) {
                    return Outcome::denied(reason);
                }
                self.add_record_grant(RecordGrant {
                    id: tx,
                    spec: GrantSpec {
                        grantee: signer,
                        scope: Scope::Patient(*patient),
                        categories: Categories::ALL,
                        purpose: Purpose::Treatment,
                        expires: time.plus(u64::from(*minutes) * 60_000),
                    },
                    granted_by: signer,
                    position,
                    time,
                    revoked: None,
                    break_glass: Some(reason.clone()),
                });
            }
            Call::AmendRecord(amend) => {
                let facility = match self.patient_at(&amend.patient, amend.facility.as_ref()) {
                    Ok(facility) => facility,
                    Err(reason) => return Outcome::denied(reason),
                };
                if amend.categories.is_empty() {
                    return Outcome::denied("an amendment changes at least one category");
                }
                let d = self.records.decide(
                    &signer,
                    &amend.patient,
                    facility,
                    amend.categories,
                    Purpose::Treatment,
                    time,
                );
                let missing = amend
                    .categories
                    .minus(d.for_record(facility.unwrap_or_default()));
                if !missing.is_empty() {
                    return Outcome::denied(format!(
                        "no treatment grant in force covers {missing} of this patient"
                    ));
                }
                if self.anchors.contains_key(&amend.root) {
                    return Outcome::denied("the amendment's root is anchored already");
                }
                if let Some(p) = amend
                    .supersedes
                    .iter()
                    .find(|p| !self.anchors.contains_key(p))
                {
                    return Outcome::denied(format!("unknown superseded batch {p}"));
                }
                self.anchors
                    .entry(amend.root)
                    .or_default()
                    .push(AnchorRecord {
                        spec: records::amend_anchor(amend),
                        signer,
                        signer_name: my_name,
                        tx,
                        position,
                        time,
                    });
                self.journal(Undo::Anchor(amend.root));
                return Outcome::Granted(d);
            }
            // Unwrapped by `execute_known` after its gateway check; never applied as such.
            Call::As { .. } => {
                return Outcome::denied("only a gateway may act for another identity");
            }
            Call::CardFeedback(f) => {
                if !self
                    .anchors
                    .get(&f.model)
                    .is_some_and(|a| a.iter().any(|a| a.spec.kind == AnchorKind::Model))
                {
                    return Outcome::denied("the card names no anchored model");
                }
                // The card must be a read of the clinician's own that the contract allowed:
                // feedback cannot be left on someone else's card, or on one never shown.
                let Some(prefix) = card_prefix(&f.card) else {
                    return Outcome::denied("the card is not a card uuid");
                };
                let own_read = self.by_actor.get(&signer).is_some_and(|events| {
                    events.iter().rev().any(|i| {
                        let e = &self.audit[*i];
                        e.action == Action::ReadRecord
                            && e.tx.0[..16] == prefix
                            && !matches!(e.outcome, Outcome::Denied { .. })
                    })
                });
                if !own_read {
                    return Outcome::denied("the card is not a read of this clinician's");
                }
            }
            Call::ErasePatient { patient, .. } => {
                if let Some(at) = self.records.erased.get(patient) {
                    return Outcome::denied(format!(
                        "patient already erased at block {}",
                        at.seq.0
                    ));
                }
                self.records.erased.insert(*patient, position);
                self.journal(Undo::Erased(*patient));
            }
            Call::RecordAccess {
                subject, access, ..
            } => {
                let Some(derivations) = self.anchors.get(subject) else {
                    return Outcome::denied("unknown subject");
                };
                if permission == Permission::WithGrant
                    && derivations.iter().all(|a| a.signer != signer)
                    && !self.grants.contains(&(*subject, signer, *access))
                {
                    return Outcome::denied(format!("no {access:?} grant on the subject"));
                }
            }
        }
        Outcome::Accepted
    }

    fn add_record_grant(&mut self, grant: RecordGrant) {
        let id = grant.id;
        self.records
            .by_grantee
            .entry(grant.spec.grantee)
            .or_default()
            .push(id);
        self.records.grants.insert(id, grant);
        self.journal(Undo::RecordGrantAdded(id));
    }

    /// Refuses a patient that was erased.
    fn check_patient(&self, patient: &Digest) -> Result<(), String> {
        match self.records.erased.get(patient) {
            Some(at) => Err(format!("the patient was erased at block {}", at.seq.0)),
            None => Ok(()),
        }
    }

    /// The facility `patient` is read or amended at: the patient must not be erased, and a
    /// `proof`, if given, must hold ([`State::check_facility`]).
    fn patient_at<'p>(
        &self,
        patient: &Digest,
        proof: Option<&'p FacilityProof>,
    ) -> Result<Option<&'p str>, String> {
        self.check_patient(patient)?;
        match proof {
            None => Ok(None),
            Some(p) => self
                .check_facility(patient, p)
                .map(|()| Some(p.facility.as_str())),
        }
    }

    /// Checks that `proof` leads from one of `patient`'s record leaves at its facility to an
    /// anchored record batch of its size.
    fn check_facility(&self, patient: &Digest, proof: &FacilityProof) -> Result<(), String> {
        if proof.facility.is_empty() {
            return Err("the facility proof names no facility".into());
        }
        let is_batch = self.anchors.get(&proof.batch).is_some_and(|d| {
            d.iter().any(|a| {
                (a.spec.stage == records::RECORDS_STAGE || a.spec.stage == records::AMEND_STAGE)
                    && a.spec.row_count == proof.size
            })
        });
        if !is_batch {
            return Err(format!(
                "facility proof: {} is not an anchored record batch of {} records",
                proof.batch, proof.size
            ));
        }
        let leaf = record_leaf(patient, &proof.facility, &proof.commitment);
        if !merkle::verify_inclusion(proof.index, proof.size, &leaf, &proof.path, &proof.batch) {
            return Err(format!(
                "facility proof for {} does not lead to the batch root",
                proof.facility
            ));
        }
        Ok(())
    }

    /// Record grants of `grantee`, or all of them.
    pub fn record_grants(&self, grantee: Option<&PublicKey>) -> Vec<RecordGrant> {
        self.records.grants_of(grantee)
    }

    /// Where `patient` was erased, if it was.
    pub fn erased(&self, patient: &Digest) -> Option<Position> {
        self.records.erased.get(patient).copied()
    }

    /// Record-access events, filtered, in commit order.
    pub fn record_audit(
        &self,
        patient: Option<&Digest>,
        actor: Option<&PublicKey>,
        break_glass: bool,
        from: Time,
        to: Time,
    ) -> Vec<AuditEvent> {
        let idx: Vec<usize> = match (patient, actor) {
            (Some(p), _) => self.by_patient.get(p).cloned().unwrap_or_default(),
            (None, Some(a)) => self.by_actor.get(a).cloned().unwrap_or_default(),
            (None, None) => self
                .by_patient
                .values()
                .flatten()
                .copied()
                .collect::<BTreeSet<usize>>()
                .into_iter()
                .collect(),
        };
        idx.into_iter()
            .filter_map(|i| self.audit.get(i))
            .filter(|e| e.record.is_some())
            .filter(|e| actor.is_none_or(|a| e.actor == *a))
            .filter(|e| !break_glass || e.record.as_ref().is_some_and(|r| r.break_glass))
            .filter(|e| e.time >= from && e.time <= to)
            .cloned()
            .collect()
    }

    /// The ledger (genesis hash) this state belongs to.
    pub fn ledger(&self) -> Digest {
        self.ledger
    }

    /// The first anchor of a root.
    pub fn anchor(&self, root: &Digest) -> Option<&AnchorRecord> {
        self.anchors.get(root).and_then(|d| d.first())
    }

    /// Every anchor of a root, in commit order.
    pub fn anchors(&self, root: &Digest) -> &[AnchorRecord] {
        self.anchors.get(root).map_or(&[], Vec::as_slice)
    }

    /// An identity.
    pub fn identity(&self, key: &PublicKey) -> Option<&Identity> {
        self.identities.get(key)
    }

    /// Whether `grantee` holds `access` on `subject`.
    pub fn has_grant(&self, subject: &Digest, grantee: &PublicKey, access: Access) -> bool {
        self.grants.contains(&(*subject, *grantee, access))
    }

    /// The lineage DAG of `root`, breadth-first over parents.
    pub fn lineage(&self, root: &Digest, max_depth: u32) -> Lineage {
        let mut out = Lineage {
            root: *root,
            nodes: Vec::new(),
            edges: Vec::new(),
            missing: Vec::new(),
        };
        let mut seen = BTreeSet::new();
        let mut queue = VecDeque::from([(*root, 0u32)]);
        seen.insert(*root);
        while let Some((r, depth)) = queue.pop_front() {
            let Some(derivations) = self.anchors.get(&r) else {
                out.missing.push(r);
                continue;
            };
            out.nodes.extend(derivations.iter().cloned());
            if depth >= max_depth {
                continue;
            }
            let mut parents: Vec<Digest> = Vec::new();
            for a in derivations {
                for p in &a.spec.parents {
                    if !parents.contains(p) {
                        parents.push(*p);
                    }
                }
            }
            for p in parents {
                out.edges.push((r, p));
                if seen.insert(p) {
                    queue.push_back((p, depth + 1));
                }
            }
        }
        out
    }

    /// Audit events matching the filters, in commit order.
    pub fn audit(
        &self,
        subject: Option<&Digest>,
        actor: Option<&PublicKey>,
        from: Time,
        to: Time,
    ) -> Vec<AuditEvent> {
        let idx: Vec<usize> = match (subject, actor) {
            (Some(s), _) => self.by_subject.get(s).cloned().unwrap_or_default(),
            (None, Some(a)) => self.by_actor.get(a).cloned().unwrap_or_default(),
            (None, None) => (0..self.audit.len()).collect(),
        };
        idx.into_iter()
            .filter_map(|i| self.audit.get(i))
            .filter(|e| actor.is_none_or(|a| e.actor == *a))
            .filter(|e| e.time >= from && e.time <= to)
            .cloned()
            .collect()
    }

    /// Number of audit events.
    pub fn audit_len(&self) -> usize {
        self.audit.len()
    }

    /// Whether `signer` may ask `query`: only registered, unrevoked identities may ask
    /// anything; the audit trail is for the compliance role, or for the identity that anchored
    /// the subject asked about (its own subject's accesses, by anyone).
    pub fn authorize_query(
        &self,
        signer: &PublicKey,
        query: &Query,
        now: Time,
    ) -> Result<(), String> {
        let Some(me) = self.identities.get(signer) else {
            return Err("unknown identity".into());
        };
        if me.revoked {
            return Err("identity revoked".into());
        }
        match query {
            Query::As { query, .. } if matches!(**query, Query::As { .. }) => {
                Err("a query for another identity cannot be nested".into())
            }
            Query::As {
                reader,
                token,
                query,
            } => {
                self.check_gateway(signer, reader, token, now)?;
                self.authorize_query(reader, query, now)
            }
            Query::Audit { .. } if me.role == Role::Compliance => Ok(()),
            Query::Audit {
                subject: Some(s), ..
            } if self
                .anchors
                .get(s)
                .is_some_and(|d| d.iter().any(|a| a.signer == *signer)) =>
            {
                Ok(())
            }
            Query::Audit { .. } => Err(format!(
                "role {} may read the audit trail only of subjects it anchored",
                me.role
            )),
            Query::RecordAudit { .. } if matches!(me.role, Role::Compliance | Role::Admin) => {
                Ok(())
            }
            Query::RecordAudit { .. } => Err(format!(
                "role {} may not read the record access trail",
                me.role
            )),
            Query::RecordGrants(Some(k)) if k == signer => Ok(()),
            Query::RecordGrants(_) if matches!(me.role, Role::Compliance | Role::Admin) => Ok(()),
            Query::RecordGrants(_) => Err(format!(
                "role {} may list only its own record grants",
                me.role
            )),
            _ => Ok(()),
        }
    }

    /// Whether `signer` is a registered identity that is not revoked: only those may have a
    /// transaction ordered.
    pub fn is_active(&self, signer: &PublicKey) -> bool {
        self.identities.get(signer).is_some_and(|i| !i.revoked)
    }
}

#[cfg(test)]
mod passkeys_tests;
#[cfg(test)]
mod records_tests;
#[cfg(test)]
mod tests;
