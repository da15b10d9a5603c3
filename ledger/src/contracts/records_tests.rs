//! Record entitlement tests: the seed's cardiologist and general practitioner, expiry,
//! revocation, purpose, the whole role × action and category matrices, break-glass, erasure,
//! amendment, facility proofs and the access trail.

use super::tests::execute_signed;
use super::*;
use crate::crypto::KeyPair;

const HOUR: u64 = 3_600_000;

struct World {
    state: State,
    nonce: u64,
    seq: u64,
    /// Block time of the next transaction.
    now: u64,
    admin: KeyPair,
    engineer: KeyPair,
    keys: BTreeMap<Role, KeyPair>,
    /// Record leaves of the anchored batch: (patient, facility, commitment).
    leaves: Vec<(Digest, String, Digest)>,
    batch: Digest,
}

fn patient(n: u8) -> Digest {
    Digest::of(&[b'p', n])
}

impl World {
    fn new() -> Self {
        let ledger = Digest::of(b"records-ledger");
        let admin = KeyPair::from_label("admin");
        let mut w = Self {
            state: State::new(ledger, admin.public(), "admin"),
            nonce: 0,
            seq: 0,
            now: 1_000_000,
            engineer: KeyPair::from_label("engineer"),
            keys: BTreeMap::new(),
            admin,
            leaves: Vec::new(),
            batch: Digest::of(b"none"),
        };
        let admin = w.admin.clone();
        let engineer = w.engineer.public();
        w.accept(&admin, register(engineer, "engineer", Role::DataEngineer));
        for role in Role::ALL {
            let key = KeyPair::from_label(&format!("user-{role}"));
            w.accept(&admin, register(key.public(), role.as_str(), role));
            w.keys.insert(role, key);
        }
        // Patients 1 and 2 have visits at facility A, patient 3 at B, patient 4 at both.
        for (p, f) in [(1, "A"), (1, ""), (2, "A"), (3, "B"), (4, "A"), (4, "B")] {
            w.leaves.push((
                patient(p),
                f.to_string(),
                Digest::of(&[p, f.len() as u8, 7]),
            ));
        }
        let hashes: Vec<Digest> = w
            .leaves
            .iter()
            .map(|(p, f, c)| record_leaf(p, f, c))
            .collect();
        w.batch = merkle::root(&hashes);
        let engineer = w.engineer.clone();
        w.accept(
            &engineer,
            Call::Anchor(batch_spec(w.batch, hashes.len() as u64)),
        );
        w
    }

    fn key(&self, role: Role) -> KeyPair {
        self.keys[&role].clone()
    }

    fn exec(&mut self, key: &KeyPair, call: Call) -> Outcome {
        self.nonce += 1;
        self.seq += 1;
        self.now += 1_000;
        execute_signed(
            &mut self.state,
            key,
            self.nonce,
            SeqNo(self.seq),
            Time(self.now),
            call,
        )
    }

    /// Executes and returns the transaction id the state keyed its effects by.
    fn exec_id(&mut self, key: &KeyPair, call: Call) -> (Outcome, Digest) {
        let outcome = self.exec(key, call);
        let id = self.state.audit.last().expect("an event").tx;
        (outcome, id)
    }

    fn accept(&mut self, key: &KeyPair, call: Call) {
        let o = self.exec(key, call);
        assert!(o.is_accepted(), "{o:?}");
    }

    fn proof(&self, p: Digest, facility: &str) -> FacilityProof {
        let hashes: Vec<Digest> = self
            .leaves
            .iter()
            .map(|(p, f, c)| record_leaf(p, f, c))
            .collect();
        let i = self
            .leaves
            .iter()
            .position(|(lp, lf, _)| *lp == p && lf == facility)
            .expect("a leaf at that facility");
        FacilityProof {
            facility: facility.to_string(),
            batch: self.batch,
            commitment: self.leaves[i].2,
            index: i as u64,
            size: hashes.len() as u64,
            path: merkle::inclusion_proof(i, &hashes),
        }
    }

    /// Grants `role`'s user and returns the grant id.
    fn grant(
        &mut self,
        role: Role,
        scope: Scope,
        categories: Categories,
        purpose: Purpose,
    ) -> Digest {
        let grantee = self.key(role).public();
        let expires = Time(self.now + HOUR);
        let admin = self.admin.clone();
        let (o, id) = self.exec_id(
            &admin,
            Call::GrantRecords(GrantSpec {
                grantee,
                scope,
                categories,
                purpose,
                expires,
            }),
        );
        assert!(o.is_accepted(), "{o:?}");
        id
    }

    /// The clinician's read of all of `p`'s record for treatment, as no facility.
    fn treat(&mut self, p: Digest) -> Outcome {
        self.read(
            Role::Clinician,
            p,
            Categories::ALL,
            Purpose::Treatment,
            None,
        )
    }

    fn read(
        &mut self,
        role: Role,
        p: Digest,
        categories: Categories,
        purpose: Purpose,
        facility: Option<&str>,
    ) -> Outcome {
        let proof = facility.map(|f| self.proof(p, f));
        let key = self.key(role);
        self.exec(
            &key,
            Call::ReadRecord(ReadSpec {
                patient: p,
                categories,
                purpose,
                facility: proof,
            }),
        )
    }
}

fn register(key: PublicKey, name: &str, role: Role) -> Call {
    Call::RegisterIdentity {
        key,
        name: name.to_string(),
        role,
    }
}

fn batch_spec(root: Digest, size: u64) -> AnchorSpec {
    AnchorSpec {
        kind: AnchorKind::Dataset,
        root,
        row_count: size,
        schema_hash: Digest::of(records::RECORDS_SCHEMA),
        location: "file:///records".to_string(),
        parents: Vec::new(),
        stage: records::RECORDS_STAGE.to_string(),
        params_hash: Digest::of(b"params"),
        code_version: "test".to_string(),
    }
}

fn cats(list: &[Category]) -> Categories {
    list.iter().copied().collect()
}

fn granted(o: &Outcome) -> &Decision {
    o.decision()
        .unwrap_or_else(|| panic!("expected a decision, got {o:?}"))
}

fn denied(o: &Outcome) -> &str {
    match o {
        Outcome::Denied { reason } => reason,
        other => panic!("expected a denial, got {other:?}"),
    }
}

#[test]
fn the_cardiologist_sees_cardiology_and_vitals_of_facility_a_only() {
    let mut w = World::new();
    let cardio = cats(&[Category::Cardiology, Category::Vitals]);
    w.grant(
        Role::Clinician,
        Scope::Facility("A".into()),
        cardio,
        Purpose::Treatment,
    );
    // A patient of A, read as A: exactly cardiology and vitals, only at A.
    let o = w.read(
        Role::Clinician,
        patient(1),
        Categories::ALL,
        Purpose::Treatment,
        Some("A"),
    );
    let d = granted(&o);
    assert_eq!(d.everywhere, Categories::NONE);
    assert_eq!(d.at_facility, Some(("A".to_string(), cardio)));
    assert_eq!(d.for_record("A"), cardio);
    assert_eq!(d.for_record(""), cardio, "the patient's own record");
    assert_eq!(d.for_record("B"), Categories::NONE, "visits elsewhere");
    assert!(!d.break_glass);
    // A patient of B only: the proof for B does not match the grant, nothing is granted.
    let o = w.read(
        Role::Clinician,
        patient(3),
        Categories::ALL,
        Purpose::Treatment,
        Some("B"),
    );
    assert!(denied(&o).contains("no treatment grant"), "{o:?}");
    // Claiming facility A for a patient with no record there fails the proof.
    let mut proof = w.proof(patient(1), "A");
    proof.facility = "A".into();
    let key = w.key(Role::Clinician);
    let o = w.exec(
        &key,
        Call::ReadRecord(ReadSpec {
            patient: patient(3),
            categories: Categories::ALL,
            purpose: Purpose::Treatment,
            facility: Some(proof),
        }),
    );
    assert!(
        denied(&o).contains("does not lead to the batch root"),
        "{o:?}"
    );
    // Without a facility, a facility grant covers nothing.
    let o = w.treat(patient(1));
    denied(&o);
}

#[test]
fn a_general_practitioner_with_a_broader_grant_sees_more() {
    let mut w = World::new();
    let broad = Categories::ALL.minus(Category::Notes.into());
    w.grant(Role::Clinician, Scope::All, broad, Purpose::Treatment);
    for p in [1, 3, 4] {
        let o = w.read(
            Role::Clinician,
            patient(p),
            Categories::ALL,
            Purpose::Treatment,
            None,
        );
        let d = granted(&o);
        assert_eq!(d.everywhere, broad);
        assert_eq!(d.for_record("B"), broad);
    }
    // Asking for less gets less; asking for notes only gets nothing.
    let o = w.read(
        Role::Clinician,
        patient(1),
        Category::Vitals.into(),
        Purpose::Treatment,
        None,
    );
    assert_eq!(granted(&o).categories(), Category::Vitals.into());
    let o = w.read(
        Role::Clinician,
        patient(1),
        Category::Notes.into(),
        Purpose::Treatment,
        None,
    );
    denied(&o);
}

#[test]
fn expired_revoked_and_other_purpose_grants_see_nothing() {
    let mut w = World::new();
    let grantee = w.key(Role::Clinician).public();
    let admin = w.admin.clone();
    let expires = Time(w.now + 5_000);
    w.accept(
        &admin,
        Call::GrantRecords(GrantSpec {
            grantee,
            scope: Scope::Patient(patient(1)),
            categories: Categories::ALL,
            purpose: Purpose::Treatment,
            expires,
        }),
    );
    let o = w.treat(patient(1));
    granted(&o);
    // Research is not treatment.
    let o = w.read(
        Role::Clinician,
        patient(1),
        Categories::ALL,
        Purpose::Research,
        None,
    );
    denied(&o);
    // Time passes beyond the expiry.
    w.now += 10_000;
    let o = w.treat(patient(1));
    denied(&o);
    // A live grant, revoked.
    let id = w.grant(
        Role::Clinician,
        Scope::Patient(patient(2)),
        Categories::ALL,
        Purpose::Treatment,
    );
    let o = w.treat(patient(2));
    granted(&o);
    w.accept(&admin, Call::RevokeRecords { grant: id });
    let o = w.treat(patient(2));
    denied(&o);
    let o = w.exec(&admin, Call::RevokeRecords { grant: id });
    assert!(denied(&o).contains("already revoked"));
    // A grant to one patient covers no other.
    let o = w.treat(patient(1));
    denied(&o);
}

#[test]
fn every_category_alone_grants_exactly_itself() {
    for c in Category::ALL {
        let mut w = World::new();
        w.grant(Role::Clinician, Scope::All, c.into(), Purpose::Treatment);
        let o = w.treat(patient(1));
        assert_eq!(granted(&o).categories(), c.into(), "{c}");
        let others = Categories::ALL.minus(c.into());
        let o = w.read(
            Role::Clinician,
            patient(1),
            others,
            Purpose::Treatment,
            None,
        );
        denied(&o);
    }
}

/// The records part of the policy table in `records`' module docs.
#[test]
fn the_role_action_matrix_holds() {
    let actions = [
        Action::GrantRecords,
        Action::RevokeRecords,
        Action::ReadRecord,
        Action::AmendRecord,
        Action::BreakGlass,
        Action::ErasePatient,
    ];
    for role in Role::ALL {
        for action in actions {
            let expected = match (role, action) {
                (Role::Gateway, _) => Permission::Denied,
                (
                    Role::Admin,
                    Action::GrantRecords | Action::RevokeRecords | Action::ErasePatient,
                ) => Permission::Allowed,
                (Role::Clinician, Action::BreakGlass) => Permission::Allowed,
                (Role::Clinician, Action::AmendRecord) | (_, Action::ReadRecord) => {
                    Permission::WithGrant
                }
                _ => Permission::Denied,
            };
            assert_eq!(policy(role, action), expected, "{role} {action:?}");
        }
        // Executed: every role may read with a grant and not without one.
        let mut w = World::new();
        let o = w.read(role, patient(1), Categories::ALL, Purpose::Audit, None);
        denied(&o);
        w.grant(role, Scope::All, Categories::ALL, Purpose::Audit);
        let o = w.read(role, patient(1), Categories::ALL, Purpose::Audit, None);
        if role == Role::Gateway {
            // A gateway reads only for others (`the_gateway_reads_as_its_reader_and_no_one_else`).
            assert!(denied(&o).contains("may not"), "{o:?}");
        } else {
            assert_eq!(granted(&o).categories(), Categories::ALL, "{role}");
        }
        // Granting, erasing and break-glass by each role.
        let key = w.key(role);
        let grantee = w.key(Role::Clinician).public();
        let expires = Time(w.now + HOUR);
        let o = w.exec(
            &key,
            Call::GrantRecords(GrantSpec {
                grantee,
                scope: Scope::All,
                categories: Categories::ALL,
                purpose: Purpose::Treatment,
                expires,
            }),
        );
        assert_eq!(o.is_accepted(), role == Role::Admin, "{role} grant: {o:?}");
        let o = w.exec(
            &key,
            Call::BreakGlass {
                patient: patient(2),
                minutes: 30,
                reason: "arrived unconscious".into(),
            },
        );
        assert_eq!(
            o.is_accepted(),
            role == Role::Clinician,
            "{role} break-glass: {o:?}"
        );
        let o = w.exec(
            &key,
            Call::ErasePatient {
                patient: patient(4),
                reason: "request 17".into(),
            },
        );
        assert_eq!(o.is_accepted(), role == Role::Admin, "{role} erase: {o:?}");
    }
}

#[test]
fn break_glass_is_short_flagged_and_needs_a_reason() {
    let mut w = World::new();
    let doc = w.key(Role::Clinician);
    let o = w.treat(patient(3));
    denied(&o);
    for (minutes, reason, why) in [
        (30, "  ", "needs a reason"),
        (0, "stroke code", "1 to 240"),
        (MAX_BREAK_GLASS_MINUTES + 1, "stroke code", "1 to 240"),
    ] {
        let o = w.exec(
            &doc,
            Call::BreakGlass {
                patient: patient(3),
                minutes,
                reason: reason.into(),
            },
        );
        assert!(denied(&o).contains(why), "{o:?}");
    }
    w.accept(
        &doc,
        Call::BreakGlass {
            patient: patient(3),
            minutes: 1,
            reason: "stroke code, no consent possible".into(),
        },
    );
    let o = w.treat(patient(3));
    let d = granted(&o);
    assert_eq!(d.categories(), Categories::ALL);
    assert!(d.break_glass);
    // Only that patient.
    let o = w.treat(patient(1));
    denied(&o);
    // A minute later it is over.
    w.now += 60_000;
    let o = w.treat(patient(3));
    denied(&o);
    // The review lists the refused attempts, the opening and the read, flagged.
    let flagged = w
        .state
        .record_audit(None, None, true, Time(0), Time(u64::MAX));
    let actions: Vec<(Action, bool)> = flagged
        .iter()
        .map(|e| (e.action, e.outcome.is_accepted()))
        .collect();
    assert_eq!(
        actions,
        vec![
            (Action::BreakGlass, false),
            (Action::BreakGlass, false),
            (Action::BreakGlass, false),
            (Action::BreakGlass, true),
            (Action::ReadRecord, true),
        ]
    );
    assert!(flagged.iter().all(|e| e.actor == doc.public()));
}

#[test]
fn an_erased_patient_can_no_longer_be_read_amended_or_erased_again() {
    let mut w = World::new();
    w.grant(
        Role::Clinician,
        Scope::All,
        Categories::ALL,
        Purpose::Treatment,
    );
    let admin = w.admin.clone();
    w.accept(
        &admin,
        Call::ErasePatient {
            patient: patient(2),
            reason: "erasure request 2026-0042".into(),
        },
    );
    assert!(w.state.erased(&patient(2)).is_some());
    let o = w.treat(patient(2));
    assert!(denied(&o).contains("erased"), "{o:?}");
    let o = w.exec(
        &admin,
        Call::ErasePatient {
            patient: patient(2),
            reason: "again".into(),
        },
    );
    assert!(denied(&o).contains("already erased"), "{o:?}");
    // Others are untouched.
    let o = w.treat(patient(1));
    granted(&o);
}

#[test]
fn an_amendment_is_anchored_under_the_version_it_supersedes() {
    let mut w = World::new();
    let doc = w.key(Role::Clinician);
    let new_root = Digest::of(b"amended version");
    let amend = |w: &World, categories: Categories| AmendSpec {
        patient: patient(1),
        categories,
        facility: Some(w.proof(patient(1), "A")),
        root: new_root,
        size: 1,
        supersedes: vec![w.batch],
        reason: "transcription error".into(),
    };
    // No grant: denied, nothing anchored.
    let o = w.exec(&doc, Call::AmendRecord(amend(&w, Category::Vitals.into())));
    denied(&o);
    assert!(w.state.anchor(&new_root).is_none());
    // A facility-A treatment grant of vitals: vitals may be amended, notes may not.
    w.grant(
        Role::Clinician,
        Scope::Facility("A".into()),
        Category::Vitals.into(),
        Purpose::Treatment,
    );
    let o = w.exec(
        &doc,
        Call::AmendRecord(amend(&w, cats(&[Category::Vitals, Category::Notes]))),
    );
    assert!(denied(&o).contains("notes"), "{o:?}");
    let o = w.exec(&doc, Call::AmendRecord(amend(&w, Category::Vitals.into())));
    granted(&o);
    let anchor = w.state.anchor(&new_root).expect("anchored");
    assert_eq!(anchor.spec.parents, vec![w.batch]);
    assert_eq!(anchor.spec.stage, records::AMEND_STAGE);
    assert_eq!(
        w.state.lineage(&new_root, 1).edges,
        vec![(new_root, w.batch)]
    );
    // The same root twice is refused.
    let o = w.exec(&doc, Call::AmendRecord(amend(&w, Category::Vitals.into())));
    assert!(denied(&o).contains("anchored already"), "{o:?}");
}

#[test]
fn a_facility_proof_must_lead_to_an_anchored_record_batch() {
    let mut w = World::new();
    w.grant(
        Role::Clinician,
        Scope::Facility("A".into()),
        Categories::ALL,
        Purpose::Treatment,
    );
    let key = w.key(Role::Clinician);
    let read = |proof: FacilityProof| {
        Call::ReadRecord(ReadSpec {
            patient: patient(1),
            categories: Categories::ALL,
            purpose: Purpose::Treatment,
            facility: Some(proof),
        })
    };
    let mut wrong_size = w.proof(patient(1), "A");
    wrong_size.size += 1;
    let o = w.exec(&key, read(wrong_size));
    assert!(denied(&o).contains("not an anchored record batch"), "{o:?}");
    let mut tampered = w.proof(patient(1), "A");
    tampered.commitment = Digest::of(b"another record");
    let o = w.exec(&key, read(tampered));
    assert!(denied(&o).contains("does not lead"), "{o:?}");
    let mut nameless = w.proof(patient(1), "A");
    nameless.facility = String::new();
    let o = w.exec(&key, read(nameless));
    assert!(denied(&o).contains("names no facility"), "{o:?}");
    let good = w.proof(patient(1), "A");
    let o = w.exec(&key, read(good));
    granted(&o);
}

#[test]
fn the_access_trail_names_patients_by_pseudonym_and_rolls_back() {
    let mut w = World::new();
    w.grant(
        Role::Clinician,
        Scope::All,
        Categories::ALL,
        Purpose::Treatment,
    );
    let o = w.read(
        Role::Clinician,
        patient(1),
        cats(&[Category::Vitals]),
        Purpose::Treatment,
        None,
    );
    granted(&o);
    let o = w.read(
        Role::Clinician,
        patient(1),
        Categories::ALL,
        Purpose::Research,
        None,
    );
    denied(&o);
    let trail = w
        .state
        .record_audit(Some(&patient(1)), None, false, Time(0), Time(u64::MAX));
    assert_eq!(trail.len(), 2);
    let first = trail[0].record.as_ref().expect("a record event");
    assert_eq!(first.patient, patient(1));
    assert_eq!(first.asked, Category::Vitals.into());
    assert_eq!(first.purpose, Some(Purpose::Treatment));
    assert!(trail[0].outcome.is_accepted());
    assert!(!trail[1].outcome.is_accepted());
    // Only compliance and admin may ask for it.
    let q = Query::RecordAudit {
        patient: Some(patient(1)),
        actor: None,
        break_glass: false,
        from: Time(0),
        to: Time(u64::MAX),
    };
    for role in Role::ALL {
        let ok = w
            .state
            .authorize_query(&w.key(role).public(), &q, Time(0))
            .is_ok();
        assert_eq!(ok, matches!(role, Role::Compliance | Role::Admin), "{role}");
    }
    // A staged read that is rolled back leaves no trace.
    let before = w.state.clone();
    w.state.stage();
    w.grant(
        Role::Clinician,
        Scope::All,
        Categories::ALL,
        Purpose::Research,
    );
    let _ = w.read(
        Role::Clinician,
        patient(1),
        Categories::ALL,
        Purpose::Research,
        None,
    );
    let admin = w.admin.clone();
    let _ = w.exec(
        &admin,
        Call::ErasePatient {
            patient: patient(3),
            reason: "r".into(),
        },
    );
    w.state.rollback();
    assert_eq!(w.state, before);
}

#[test]
fn the_gateway_reads_as_its_reader_and_no_one_else() {
    let mut w = World::new();
    let ledger = Digest::of(b"records-ledger");
    let gateway = w.key(Role::Gateway);
    let clinician = w.key(Role::Clinician);
    w.grant(
        Role::Clinician,
        Scope::All,
        cats(&[Category::Vitals]),
        Purpose::Treatment,
    );
    let read = ReadSpec {
        patient: patient(1),
        categories: Categories::ALL,
        purpose: Purpose::Treatment,
        facility: None,
    };
    let token_of = |w: &World, key: &KeyPair, lifetime: u64| {
        crate::token::issue(key, &ledger, Time(w.now), lifetime, "t")
    };
    let as_reader = |reader: &KeyPair, token: String| Call::As {
        reader: reader.public(),
        token,
        call: Box::new(Call::ReadRecord(read.clone())),
    };

    // Decided on the reader's grants, audited as the reader's, through the gateway.
    let token = token_of(&w, &clinician, 600_000);
    let call = as_reader(&clinician, token.clone());
    let o = w.exec(&gateway, call);
    assert_eq!(granted(&o).categories(), cats(&[Category::Vitals]));
    let event = w.state.audit.last().expect("an event").clone();
    assert_eq!(event.actor, clinician.public());
    assert_eq!(event.via, Some(gateway.public()));
    assert_eq!(event.action, Action::ReadRecord);
    assert_eq!(event.record.expect("a record event").patient, patient(1));

    // Only a gateway may do it; only with the reader's own, unexpired token.
    let engineer = w.engineer.clone();
    let call = as_reader(&clinician, token.clone());
    assert!(denied(&w.exec(&engineer, call)).contains("only a gateway"));
    let other = w.key(Role::Compliance);
    let call = as_reader(&clinician, token_of(&w, &other, 600_000));
    assert!(denied(&w.exec(&gateway, call)).contains("not the reader's"));
    let short = token_of(&w, &clinician, 1_000);
    w.now += 5_000;
    let call = as_reader(&clinician, short);
    assert!(denied(&w.exec(&gateway, call)).contains("expired"));

    // A revoked reader is refused on its next read, whatever its token.
    let admin = w.admin.clone();
    w.accept(
        &admin,
        Call::RevokeIdentity {
            key: clinician.public(),
        },
    );
    let call = as_reader(&clinician, token);
    assert!(denied(&w.exec(&gateway, call)).contains("revoked"));

    // Only what a person does through a server may be wrapped: not an admin's grant, not a
    // wrapped call inside another.
    let admin_token = token_of(&w, &admin, 600_000);
    let grant = Call::As {
        reader: admin.public(),
        token: admin_token.clone(),
        call: Box::new(Call::RevokeIdentity {
            key: w.engineer.public(),
        }),
    };
    assert!(grant.check_limits().is_err());
    assert!(denied(&w.exec(&gateway, grant)).contains("may not make"));
    let nested = Call::As {
        reader: admin.public(),
        token: admin_token.clone(),
        call: Box::new(Call::As {
            reader: admin.public(),
            token: admin_token,
            call: Box::new(Call::ReadRecord(read.clone())),
        }),
    };
    assert!(denied(&w.exec(&gateway, nested)).contains("may not make"));
}

#[test]
fn card_feedback_is_a_clinicians_own_on_a_read_they_made_and_names_the_model() {
    let mut w = World::new();
    let ledger = Digest::of(b"records-ledger");
    let gateway = w.key(Role::Gateway);
    let clinician = w.key(Role::Clinician);
    let ml = w.key(Role::MlEngineer);
    w.grant(
        Role::Clinician,
        Scope::All,
        cats(&[Category::Vitals]),
        Purpose::Treatment,
    );
    let model = Digest::of(b"model");
    let mut spec = batch_spec(model, 1);
    spec.kind = AnchorKind::Model;
    spec.parents = vec![w.batch];
    w.accept(&ml, Call::Anchor(spec));
    let token = crate::token::issue(&clinician, &ledger, Time(w.now), 600_000, "t");
    let read = ReadSpec {
        patient: patient(1),
        categories: cats(&[Category::Vitals]),
        purpose: Purpose::Treatment,
        facility: None,
    };
    let (o, card) = w.exec_id(
        &gateway,
        Call::As {
            reader: clinician.public(),
            token: token.clone(),
            call: Box::new(Call::ReadRecord(read)),
        },
    );
    assert!(o.is_accepted(), "{o:?}");
    let feedback = |card: Digest, model: Digest, reason: Option<&str>| CardFeedback {
        card: card_uuid(&card),
        model,
        outcome: if reason.is_some() {
            CardOutcome::Overridden
        } else {
            CardOutcome::Accepted
        },
        reason: reason.map(str::to_string),
    };
    let as_reader = |f: CardFeedback| Call::As {
        reader: clinician.public(),
        token: token.clone(),
        call: Box::new(Call::CardFeedback(f)),
    };

    // Overridden with a reason code: the clinician's, through the gateway, on the model.
    let o = w.exec(
        &gateway,
        as_reader(feedback(card, model, Some("not-relevant"))),
    );
    assert_eq!(o, Outcome::Accepted);
    let e = w.state.audit.last().expect("an event").clone();
    assert_eq!(
        (e.actor, e.via, e.action, e.subject),
        (
            clinician.public(),
            Some(gateway.public()),
            Action::CardFeedback,
            Some(model)
        )
    );
    assert_eq!(e.purpose.as_deref(), Some("overridden: not-relevant"));
    assert_eq!(card_uuid(&card).len(), 36);
    // Accepted, by the clinician directly.
    w.accept(&clinician, Call::CardFeedback(feedback(card, model, None)));

    // Not on another clinician's card, not on a card never shown, not naming a dataset as the
    // model, not overridden without a reason.
    let admin = w.admin.clone();
    let other = KeyPair::from_label("clinician-2");
    w.accept(&admin, register(other.public(), "c2", Role::Clinician));
    let o = w.exec(&other, Call::CardFeedback(feedback(card, model, None)));
    assert!(
        denied(&o).contains("not a read of this clinician's"),
        "{o:?}"
    );
    let never = Digest::of(b"never shown");
    let o = w.exec(&clinician, Call::CardFeedback(feedback(never, model, None)));
    assert!(denied(&o).contains("not a read"), "{o:?}");
    let dataset = w.batch;
    let o = w.exec(
        &clinician,
        Call::CardFeedback(feedback(card, dataset, None)),
    );
    assert!(denied(&o).contains("no anchored model"), "{o:?}");
    let mut bare = feedback(card, model, None);
    bare.outcome = CardOutcome::Overridden;
    let o = w.exec(&clinician, Call::CardFeedback(bare));
    assert!(denied(&o).contains("reason code"), "{o:?}");
    // Only clinicians leave feedback; a gateway only for one.
    let engineer = w.engineer.clone();
    let o = w.exec(&engineer, Call::CardFeedback(feedback(card, model, None)));
    assert!(denied(&o).contains("may not"), "{o:?}");
}

#[test]
fn a_gateway_queries_as_its_reader_with_the_readers_rights() {
    let w = World::new();
    let ledger = Digest::of(b"records-ledger");
    let gateway = w.key(Role::Gateway);
    let officer = w.key(Role::Compliance);
    let clinician = w.key(Role::Clinician);
    let now = Time(w.now);
    let token = |key: &KeyPair| crate::token::issue(key, &ledger, now, 600_000, "q");
    let audit = Query::RecordAudit {
        patient: Some(patient(1)),
        actor: None,
        break_glass: false,
        from: Time(0),
        to: Time(u64::MAX),
    };
    let as_reader = |reader: &KeyPair, token: String| Query::As {
        reader: reader.public(),
        token,
        query: Box::new(audit.clone()),
    };
    let ask =
        |signer: &KeyPair, q: &Query, at: Time| w.state.authorize_query(&signer.public(), q, at);
    // The compliance officer's rights, through the gateway; not the clinician's.
    assert_eq!(
        ask(&gateway, &as_reader(&officer, token(&officer)), now),
        Ok(())
    );
    let e = ask(&gateway, &as_reader(&clinician, token(&clinician)), now).unwrap_err();
    assert!(e.contains("may not read the record access trail"), "{e}");
    // Only a gateway, only with the reader's own token, only while it is valid, never nested.
    let e = ask(&officer, &as_reader(&officer, token(&officer)), now).unwrap_err();
    assert!(e.contains("only a gateway"), "{e}");
    let e = ask(&gateway, &as_reader(&officer, token(&clinician)), now).unwrap_err();
    assert!(e.contains("not the reader's"), "{e}");
    let later = Time(w.now + 3_600_000);
    let e = ask(&gateway, &as_reader(&officer, token(&officer)), later).unwrap_err();
    assert!(e.contains("expired"), "{e}");
    let nested = Query::As {
        reader: officer.public(),
        token: token(&officer),
        query: Box::new(as_reader(&officer, token(&officer))),
    };
    assert!(ask(&gateway, &nested, now).unwrap_err().contains("nested"));
}
