//! Contract tests: the whole role × action matrix, grants, replays, lineage and audit queries.

use super::*;
use crate::crypto::KeyPair;
use crate::tx::TxBody;

struct World {
    state: State,
    ledger: Digest,
    nonce: u64,
    seq: u64,
    admin: KeyPair,
    owner: KeyPair,
    victim: KeyPair,
    dataset: Digest,
}

impl World {
    fn new() -> Self {
        let ledger = Digest::of(b"test-ledger");
        let admin = KeyPair::from_label("admin");
        let mut w = Self {
            state: State::new(ledger, admin.public(), "admin"),
            ledger,
            nonce: 0,
            seq: 0,
            owner: KeyPair::from_label("owner"),
            victim: KeyPair::from_label("victim"),
            dataset: Digest::of(b"dataset-1"),
            admin,
        };
        let owner = w.owner.public();
        let victim = w.victim.public();
        let admin = w.admin.clone();
        w.ok(&admin, register(owner, Role::DataEngineer));
        w.ok(&admin, register(victim, Role::Clinician));
        let owner = w.owner.clone();
        w.ok(
            &owner,
            Call::Anchor(spec(AnchorKind::Dataset, w.dataset, vec![])),
        );
        w.ok(
            &admin,
            Call::Grant {
                subject: w.dataset,
                grantee: victim,
                access: Access::Query,
            },
        );
        w
    }

    fn exec(&mut self, key: &KeyPair, call: Call) -> Outcome {
        self.nonce += 1;
        self.seq += 1;
        execute_signed(
            &mut self.state,
            key,
            self.nonce,
            SeqNo(self.seq),
            Time(self.seq * 10),
            call,
        )
    }

    fn ok(&mut self, key: &KeyPair, call: Call) {
        let o = self.exec(key, call);
        assert_eq!(o, Outcome::Accepted);
    }
}

fn register(key: PublicKey, role: Role) -> Call {
    Call::RegisterIdentity {
        key,
        name: format!("{role}"),
        role,
    }
}

fn spec(kind: AnchorKind, root: Digest, parents: Vec<Digest>) -> AnchorSpec {
    AnchorSpec {
        kind,
        root,
        row_count: 10,
        schema_hash: Digest::of(b"schema"),
        location: "file:///data".into(),
        parents,
        stage: "test".into(),
        params_hash: Digest::of(b"params"),
        code_version: "abc123".into(),
    }
}

/// Signs `call` as `key` with `nonce` for `state`'s ledger and executes it alone in block
/// `seq` at `time`.
pub(super) fn execute_signed(
    state: &mut State,
    key: &KeyPair,
    nonce: u64,
    seq: SeqNo,
    time: Time,
    call: Call,
) -> Outcome {
    let body = TxBody {
        ledger: state.ledger(),
        nonce,
        call,
    };
    let tx = SignedTx::sign(key, &body).expect("sign");
    state.execute(&tx, Position { seq, index: 0 }, time)
}

/// The call an actor makes to attempt `action`.
fn call_for(w: &World, action: Action, i: usize) -> Call {
    let fresh = Digest::of(format!("fresh-{i}").as_bytes());
    match action {
        Action::RegisterIdentity => register(
            KeyPair::from_label(&format!("new-{i}")).public(),
            Role::Clinician,
        ),
        Action::RevokeIdentity => Call::RevokeIdentity {
            key: w.victim.public(),
        },
        Action::AnchorDataset => Call::Anchor(spec(AnchorKind::Dataset, fresh, vec![])),
        Action::AnchorModel => Call::Anchor(spec(AnchorKind::Model, fresh, vec![w.dataset])),
        Action::Grant => Call::Grant {
            subject: w.dataset,
            grantee: w.victim.public(),
            access: Access::Read,
        },
        Action::Revoke => Call::Revoke {
            subject: w.dataset,
            grantee: w.victim.public(),
            access: Access::Query,
        },
        Action::Read | Action::Query | Action::Update | Action::Export => {
            let access = match action {
                Action::Read => Access::Read,
                Action::Query => Access::Query,
                Action::Update => Access::Update,
                _ => Access::Export,
            };
            Call::RecordAccess {
                subject: w.dataset,
                access,
                purpose: "matrix".into(),
            }
        }
        Action::Malformed => unreachable!("not a call"),
        Action::GrantRecords
        | Action::RevokeRecords
        | Action::ReadRecord
        | Action::AmendRecord
        | Action::BreakGlass
        | Action::ErasePatient
        | Action::CardFeedback => unreachable!("record actions: records_tests.rs"),
        Action::RegisterPasskey | Action::OpenSession => {
            unreachable!("passkey actions: passkeys_tests.rs")
        }
    }
}

#[test]
fn role_action_matrix() {
    let mut checked = 0;
    for (r, role) in Role::ALL.into_iter().enumerate() {
        for (a, action) in Action::ALL.into_iter().enumerate() {
            if action.is_record() || matches!(action, Action::RegisterPasskey | Action::OpenSession)
            {
                continue;
            }
            let mut w = World::new();
            let actor = KeyPair::from_label(&format!("actor-{r}"));
            let admin = w.admin.clone();
            w.ok(&admin, register(actor.public(), role));
            let call = call_for(&w, action, r * 100 + a);
            let before = w.state.audit_len();
            let outcome = w.exec(&actor, call.clone());
            // Every attempt is audited, allowed or not.
            assert_eq!(w.state.audit_len(), before + 1);
            let last = w
                .state
                .audit(None, Some(&actor.public()), Time(0), Time(u64::MAX));
            assert_eq!(last.last().map(|e| e.action), Some(action));
            match policy(role, action) {
                Permission::Allowed => {
                    assert_eq!(outcome, Outcome::Accepted, "{role} {action:?}");
                }
                Permission::Denied => {
                    let Outcome::Denied { reason } = &outcome else {
                        panic!("{role} {action:?} was accepted");
                    };
                    assert!(reason.contains("may not"), "{role} {action:?}: {reason}");
                }
                Permission::WithGrant => {
                    assert!(!outcome.is_accepted(), "{role} {action:?} without grant");
                    let Call::RecordAccess { access, .. } = call else {
                        panic!("only accesses need grants");
                    };
                    w.ok(
                        &admin,
                        Call::Grant {
                            subject: w.dataset,
                            grantee: actor.public(),
                            access,
                        },
                    );
                    let again = call_for(&w, action, r * 100 + a);
                    assert_eq!(
                        w.exec(&actor, again),
                        Outcome::Accepted,
                        "{role} {action:?}"
                    );
                }
            }
            checked += 1;
        }
    }
    let actions = Action::ALL
        .iter()
        .filter(|a| !a.is_record() && !matches!(a, Action::RegisterPasskey | Action::OpenSession))
        .count();
    assert_eq!(checked, Role::ALL.len() * actions);
}

#[test]
fn owner_accesses_its_own_anchor_and_revoked_grants_stop_working() {
    let mut w = World::new();
    let owner = w.owner.clone();
    let victim = w.victim.clone();
    let admin = w.admin.clone();
    let read = |w: &World| Call::RecordAccess {
        subject: w.dataset,
        access: Access::Export,
        purpose: "owner".into(),
    };
    assert!(w.exec(&owner, read(&w)).is_accepted());
    let query = Call::RecordAccess {
        subject: w.dataset,
        access: Access::Query,
        purpose: "granted".into(),
    };
    assert!(w.exec(&victim, query.clone()).is_accepted());
    w.ok(
        &admin,
        Call::Revoke {
            subject: w.dataset,
            grantee: victim.public(),
            access: Access::Query,
        },
    );
    assert!(!w.exec(&victim, query).is_accepted());
}

#[test]
fn replays_unknown_identities_revocations_and_other_ledgers_are_denied() {
    let mut w = World::new();
    let admin = w.admin.clone();
    let body = TxBody {
        ledger: w.ledger,
        nonce: 999,
        call: register(KeyPair::from_label("x").public(), Role::Compliance),
    };
    let tx = SignedTx::sign(&admin, &body).expect("sign");
    let pos = |s| Position {
        seq: SeqNo(s),
        index: 0,
    };
    assert!(w.state.execute(&tx, pos(100), Time(1)).is_accepted());
    let replay = w.state.execute(&tx, pos(101), Time(2));
    assert_eq!(
        replay,
        Outcome::Denied {
            reason: "replayed nonce 999".into()
        }
    );
    let stranger = KeyPair::from_label("stranger");
    assert_eq!(
        w.exec(
            &stranger,
            Call::Anchor(spec(AnchorKind::Dataset, Digest::of(b"s"), vec![]))
        ),
        Outcome::Denied {
            reason: "unknown identity".into()
        }
    );
    let victim = w.victim.clone();
    w.ok(
        &admin,
        Call::RevokeIdentity {
            key: victim.public(),
        },
    );
    let o = w.exec(
        &victim,
        Call::RecordAccess {
            subject: w.dataset,
            access: Access::Query,
            purpose: "after revocation".into(),
        },
    );
    assert_eq!(
        o,
        Outcome::Denied {
            reason: "identity revoked".into()
        }
    );
    let other = SignedTx::sign(
        &admin,
        &TxBody {
            ledger: Digest::of(b"another ledger"),
            nonce: 5000,
            call: register(KeyPair::from_label("y").public(), Role::Compliance),
        },
    )
    .expect("sign");
    assert!(!w.state.execute(&other, pos(102), Time(3)).is_accepted());
    let mut garbage = tx.clone();
    garbage.payload = vec![0xff; 3];
    let o = w.state.execute(&garbage, pos(103), Time(4));
    assert!(matches!(o, Outcome::Denied { reason } if reason.starts_with("malformed")));
}

#[test]
fn lineage_is_the_dag_of_parents_and_unknown_parents_are_refused() {
    let mut w = World::new();
    let owner = w.owner.clone();
    let admin = w.admin.clone();
    let ml = KeyPair::from_label("ml");
    w.ok(&admin, register(ml.public(), Role::MlEngineer));
    let (a, b, c) = (w.dataset, Digest::of(b"b"), Digest::of(b"c"));
    w.ok(&owner, Call::Anchor(spec(AnchorKind::Dataset, b, vec![a])));
    let model = Digest::of(b"model");
    w.ok(
        &ml,
        Call::Anchor(spec(AnchorKind::Model, model, vec![a, b])),
    );
    let o = w.exec(
        &owner,
        Call::Anchor(spec(AnchorKind::Dataset, c, vec![Digest::of(b"nowhere")])),
    );
    assert!(matches!(o, Outcome::Denied { reason } if reason.starts_with("unknown parent")));
    let again = w.exec(&owner, Call::Anchor(spec(AnchorKind::Dataset, b, vec![])));
    assert!(
        !again.is_accepted(),
        "a root is anchored once per parameter hash"
    );

    let l = w.state.lineage(&model, 10);
    let roots: Vec<Digest> = l.nodes.iter().map(|n| n.spec.root).collect();
    assert_eq!(roots, vec![model, a, b]);
    assert_eq!(l.edges, vec![(model, a), (model, b), (b, a)]);
    assert!(l.missing.is_empty());
    assert_eq!(w.state.lineage(&model, 0).nodes.len(), 1);
    assert_eq!(w.state.anchor(&model).map(|r| r.signer), Some(ml.public()));
}

#[test]
fn audit_filters_by_subject_actor_and_time() {
    let mut w = World::new();
    let victim = w.victim.clone();
    for _ in 0..3 {
        w.exec(
            &victim,
            Call::RecordAccess {
                subject: w.dataset,
                access: Access::Query,
                purpose: "study".into(),
            },
        );
    }
    let all = w
        .state
        .audit(Some(&w.dataset), None, Time(0), Time(u64::MAX));
    // anchor + grant by admin + 3 queries
    assert_eq!(all.len(), 5);
    let by_victim = w.state.audit(
        Some(&w.dataset),
        Some(&victim.public()),
        Time(0),
        Time(u64::MAX),
    );
    assert_eq!(by_victim.len(), 3);
    let t = by_victim[1].time;
    let window = w.state.audit(None, Some(&victim.public()), t, t);
    assert_eq!(window.len(), 1);
    assert_eq!(window[0].purpose.as_deref(), Some("study"));
}

#[test]
fn a_staged_block_rolls_back_to_the_exact_state_before_it() {
    let mut w = World::new();
    let before = w.state.clone();
    w.state.stage();
    let admin = w.admin.clone();
    let owner = w.owner.clone();
    let victim = w.victim.clone();
    // Every kind of change: identities added and revoked, an anchor, grants added and
    // removed, nonces and audit events (accepted and denied).
    w.ok(
        &admin,
        register(KeyPair::from_label("staged").public(), Role::Compliance),
    );
    w.ok(
        &admin,
        Call::RevokeIdentity {
            key: victim.public(),
        },
    );
    let fresh = Digest::of(b"staged-root");
    w.ok(
        &owner,
        Call::Anchor(spec(AnchorKind::Dataset, fresh, vec![w.dataset])),
    );
    // A second derivation of an anchored root: undone, the first derivation stays.
    let mut again = spec(AnchorKind::Dataset, w.dataset, vec![]);
    again.params_hash = Digest::of(b"staged params");
    w.ok(&owner, Call::Anchor(again));
    w.ok(
        &admin,
        Call::Grant {
            subject: fresh,
            grantee: owner.public(),
            access: Access::Export,
        },
    );
    w.ok(
        &admin,
        Call::Revoke {
            subject: w.dataset,
            grantee: victim.public(),
            access: Access::Query,
        },
    );
    assert!(
        !w.exec(
            &victim,
            Call::RecordAccess {
                subject: w.dataset,
                access: Access::Read,
                purpose: "after revocation".into(),
            },
        )
        .is_accepted()
    );
    assert_ne!(w.state, before);
    w.state.rollback();
    assert_eq!(w.state, before);

    // Kept changes stay, and a later rollback without staging changes nothing.
    w.state.stage();
    w.ok(
        &admin,
        register(KeyPair::from_label("kept").public(), Role::Clinician),
    );
    w.state.keep();
    let kept = w.state.clone();
    w.state.rollback();
    assert_eq!(w.state, kept);
    assert!(kept.is_active(&KeyPair::from_label("kept").public()));
}

#[test]
fn over_long_strings_and_control_characters_are_denied_on_execution() {
    let mut w = World::new();
    let owner = w.owner.clone();
    let mut long = spec(AnchorKind::Dataset, Digest::of(b"long"), vec![]);
    long.location = "x".repeat(MAX_LOCATION_LEN + 1);
    let o = w.exec(&owner, Call::Anchor(long));
    assert!(
        matches!(&o, Outcome::Denied { reason } if reason.contains("limit")),
        "{o:?}"
    );
    let o = w.exec(
        &owner,
        Call::RecordAccess {
            subject: w.dataset,
            access: Access::Read,
            purpose: "fake\n2026-01-01 line\u{1b}[2K".into(),
        },
    );
    assert!(
        matches!(&o, Outcome::Denied { reason } if reason.contains("control")),
        "{o:?}"
    );
    assert!(w.state.anchor(&Digest::of(b"long")).is_none());
}

#[test]
fn queries_need_a_registered_identity_and_the_audit_trail_a_role_or_ownership() {
    let mut w = World::new();
    let admin = w.admin.clone();
    let auditor = KeyPair::from_label("auditor");
    w.ok(&admin, register(auditor.public(), Role::Compliance));
    let audit = |subject| Query::Audit {
        subject,
        actor: None,
        from: Time(0),
        to: Time(u64::MAX),
    };
    let stranger = KeyPair::from_label("stranger").public();
    assert!(
        w.state
            .authorize_query(&stranger, &Query::Head, Time(0))
            .is_err()
    );
    assert!(
        w.state
            .authorize_query(&w.victim.public(), &Query::Head, Time(0))
            .is_ok()
    );
    // Compliance reads any audit trail.
    assert!(
        w.state
            .authorize_query(&auditor.public(), &audit(None), Time(0))
            .is_ok()
    );
    // The owner reads its subject's trail, not the whole trail nor another's subject.
    let owner = w.owner.public();
    assert!(
        w.state
            .authorize_query(&owner, &audit(Some(w.dataset)), Time(0))
            .is_ok()
    );
    assert!(
        w.state
            .authorize_query(&owner, &audit(None), Time(0))
            .is_err()
    );
    assert!(
        w.state
            .authorize_query(&owner, &audit(Some(Digest::of(b"other"))), Time(0))
            .is_err()
    );
    // A grantee or the admin is not the owner.
    assert!(
        w.state
            .authorize_query(&w.victim.public(), &audit(Some(w.dataset)), Time(0))
            .is_err()
    );
    assert!(
        w.state
            .authorize_query(&admin.public(), &audit(Some(w.dataset)), Time(0))
            .is_err()
    );
    // A revoked identity asks nothing.
    w.ok(
        &admin,
        Call::RevokeIdentity {
            key: auditor.public(),
        },
    );
    assert!(
        w.state
            .authorize_query(&auditor.public(), &audit(None), Time(0))
            .is_err()
    );
}

#[test]
fn one_root_published_under_other_parameters_is_a_second_derivation() {
    let mut w = World::new();
    let owner = w.owner.clone();
    let admin = w.admin.clone();
    let (a, b) = (w.dataset, Digest::of(b"b"));
    w.ok(&owner, Call::Anchor(spec(AnchorKind::Dataset, b, vec![a])));
    // The same rows, published by another job into another folder: another manifest.
    let other_source = Digest::of(b"copy of the export");
    w.ok(
        &owner,
        Call::Anchor(spec(AnchorKind::Dataset, other_source, vec![])),
    );
    let mut second = spec(AnchorKind::Dataset, b, vec![other_source]);
    second.params_hash = Digest::of(b"other manifest");
    second.location = "file:///elsewhere".into();
    w.ok(&owner, Call::Anchor(second.clone()));
    // Identical parameters again are the same publication, not a third.
    let repeat = w.exec(&owner, Call::Anchor(second.clone()));
    assert!(matches!(repeat, Outcome::Denied { reason } if reason.contains("these parameters")));
    // A model can never share a dataset's root.
    let ml = KeyPair::from_label("ml");
    w.ok(&admin, register(ml.public(), Role::MlEngineer));
    let mut as_model = spec(AnchorKind::Model, b, vec![a]);
    as_model.params_hash = Digest::of(b"model params");
    assert!(!w.exec(&ml, Call::Anchor(as_model)).is_accepted());

    let derivations = w.state.anchors(&b);
    assert_eq!(derivations.len(), 2);
    assert_eq!(derivations[1].spec, second);
    assert_eq!(
        w.state.anchor(&b).map(|r| r.spec.params_hash),
        Some(Digest::of(b"params"))
    );
    // Lineage shows both derivations and the parents of each.
    let l = w.state.lineage(&b, 5);
    let roots: Vec<Digest> = l.nodes.iter().map(|n| n.spec.root).collect();
    assert_eq!(roots, vec![b, b, a, other_source]);
    assert_eq!(l.edges, vec![(b, a), (b, other_source)]);
}
