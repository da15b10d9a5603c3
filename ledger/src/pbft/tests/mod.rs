//! PBFT step tables: each step feeds one input to one replica and states what must come out
//! and what the replica's state must be afterwards (malachite's `TestStep` style).

#![allow(clippy::needless_range_loop)]

use super::*;
use crate::crypto::{Digest, KeyPair};
use crate::ids::{ReplicaId, SeqNo, Time, View};
use crate::tx::{SignedTx, TxBody};

fn keys() -> Vec<KeyPair> {
    (0..4)
        .map(|i| KeyPair::from_label(&format!("step-{i}")))
        .collect()
}

fn genesis() -> Digest {
    Digest::of(b"genesis")
}

fn replicas() -> Vec<Replica> {
    let keys = keys();
    let peers: Vec<_> = keys.iter().map(KeyPair::public).collect();
    keys.into_iter()
        .enumerate()
        .map(|(i, k)| {
            let mut cfg = Config::new(ReplicaId(i as u32), peers.clone(), genesis());
            cfg.window = 4;
            cfg.max_batch = 2;
            cfg.max_inflight = 2;
            Replica::new(cfg, k).expect("replica")
        })
        .collect()
}

fn tx(n: u64) -> SignedTx {
    tx_about(n, b"s")
}

/// The client's read of `subject`, signed, with nonce `n`.
fn tx_about(n: u64, subject: &[u8]) -> SignedTx {
    let body = TxBody {
        ledger: genesis(),
        nonce: n,
        call: crate::contracts::Call::RecordAccess {
            subject: Digest::of(subject),
            access: crate::contracts::Access::Read,
            purpose: String::new(),
        },
    };
    SignedTx::sign(&KeyPair::from_label("client"), &body).expect("sign")
}

fn broadcasts(out: &[Output]) -> Vec<Message> {
    out.iter()
        .filter_map(|o| match o {
            Output::Broadcast(m) => Some(m.clone()),
            _ => None,
        })
        .collect()
}

struct TestStep {
    desc: &'static str,
    replica: usize,
    input: Input,
    expected_outputs: fn(&[Output]) -> bool,
    expected_state: fn(&Replica) -> bool,
}

fn run(replicas: &mut [Replica], steps: Vec<TestStep>) -> Vec<Vec<Output>> {
    let mut all = Vec::new();
    for s in steps {
        let out = replicas[s.replica].handle(s.input);
        assert!((s.expected_outputs)(&out), "{}: outputs {out:#?}", s.desc);
        assert!(
            (s.expected_state)(&replicas[s.replica]),
            "{}: state",
            s.desc
        );
        all.push(out);
    }
    all
}

fn pre_prepare_of(out: &[Output]) -> Signed<PrePrepare> {
    broadcasts(out)
        .into_iter()
        .find_map(|m| match m {
            Message::PrePrepare(p) => Some(p),
            _ => None,
        })
        .expect("a pre-prepare")
}

#[test]
fn normal_case_pre_prepare_prepare_commit() {
    let mut r = replicas();
    let outs = run(
        &mut r,
        vec![TestStep {
            desc: "primary 0 batches a request, relays it and persists before sending",
            replica: 0,
            input: Input::Request(vec![tx(1)]),
            expected_outputs: |o| {
                matches!(o.first(), Some(Output::Persist))
                    && o.iter().any(|x| matches!(x, Output::Relay(_)))
                    && broadcasts(o)
                        .iter()
                        .any(|m| matches!(m, Message::PrePrepare(p) if p.body.seq == SeqNo(1)))
            },
            expected_state: |r| r.is_primary() && r.pending() == 1,
        }],
    );
    let pp = pre_prepare_of(&outs[0]);
    // Each backup accepts the pre-prepare and multicasts a prepare (§4.2).
    let mut prepares = Vec::new();
    for b in 1..4 {
        let out = r[b].handle(Input::Message(Message::PrePrepare(pp.clone())));
        let p = broadcasts(&out)
            .into_iter()
            .find_map(|m| match m {
                Message::Prepare(p) => Some(p),
                _ => None,
            })
            .expect("prepare");
        assert_eq!(p.body.digest, pp.body.digest);
        prepares.push(p);
    }
    // Replica 1 has its own prepare; one more (2f = 2) makes it prepared: it commits.
    let out = r[1].handle(Input::Message(Message::Prepare(prepares[1].clone())));
    let commit = broadcasts(&out)
        .into_iter()
        .find_map(|m| match m {
            Message::Commit(c) => Some(c),
            _ => None,
        })
        .expect("commit after 2f prepares");
    // A duplicate prepare changes nothing.
    let out = r[1].handle(Input::Message(Message::Prepare(prepares[1].clone())));
    assert!(broadcasts(&out).is_empty());
    // Commits from 0 and 2 complete 2f + 1: committed-local, delivered in order.
    let mut commits = vec![commit];
    for i in [0usize, 2] {
        for p in &prepares {
            if p.from.0 as usize != i {
                let _ = r[i].handle(Input::Message(Message::Prepare(p.clone())));
            }
        }
        let c = r[i]
            .log_commit(SeqNo(1))
            .expect("replica prepared and committed");
        commits.push(c);
    }
    let out = r[1].handle(Input::Message(Message::Commit(commits[1].clone())));
    assert!(!out.iter().any(|o| matches!(o, Output::Committed { .. })));
    let out = r[1].handle(Input::Message(Message::Commit(commits[2].clone())));
    let committed: Vec<_> = out
        .iter()
        .filter_map(|o| match o {
            Output::Committed { seq, batch, .. } => Some((*seq, batch.txs.len())),
            _ => None,
        })
        .collect();
    assert_eq!(committed, vec![(SeqNo(1), 1)]);
    assert_eq!(r[1].pending(), 0);
}

#[test]
fn invalid_pre_prepares_are_dropped_and_faulty_primaries_replaced() {
    let mut r = replicas();
    let out = r[0].handle(Input::Request(vec![tx(1)]));
    let pp = pre_prepare_of(&out);
    let keys = keys();

    let mut bad_sig = pp.clone();
    bad_sig.sig.0[3] ^= 0xff;
    let mut from_backup = Signed::new(&keys[2], &genesis(), ReplicaId(2), pp.body.clone());
    from_backup.from = ReplicaId(2);
    let far = Signed::new(
        &keys[0],
        &genesis(),
        ReplicaId(0),
        PrePrepare {
            seq: SeqNo(9),
            ..pp.body.clone()
        },
    );
    run(
        &mut r,
        vec![
            TestStep {
                desc: "bad signature: dropped, nothing sent",
                replica: 1,
                input: Input::Message(Message::PrePrepare(bad_sig)),
                expected_outputs: |o| broadcasts(o).is_empty(),
                expected_state: |r| r.dropped() == 1 && r.status() == Status::Normal,
            },
            TestStep {
                desc: "not from the primary: dropped",
                replica: 1,
                input: Input::Message(Message::PrePrepare(from_backup)),
                expected_outputs: |o| broadcasts(o).is_empty(),
                expected_state: |r| r.dropped() == 2,
            },
            TestStep {
                desc: "above the high watermark (h + L = 4): dropped",
                replica: 1,
                input: Input::Message(Message::PrePrepare(far)),
                expected_outputs: |o| broadcasts(o).is_empty(),
                expected_state: |r| r.dropped() == 3,
            },
        ],
    );

    // A digest that does not match the batch is signed proof of a faulty primary.
    let wrong = Signed::new(
        &keys[0],
        &genesis(),
        ReplicaId(0),
        PrePrepare {
            digest: Digest::of(b"not the batch"),
            ..pp.body.clone()
        },
    );
    run(
        &mut r,
        vec![TestStep {
            desc: "wrong digest: view change to v1",
            replica: 2,
            input: Input::Message(Message::PrePrepare(wrong)),
            expected_outputs: |o| {
                broadcasts(o)
                    .iter()
                    .any(|m| matches!(m, Message::ViewChange(v) if v.body.new_view == View(1)))
            },
            expected_state: |r| r.view() == View(1) && r.status() == Status::ViewChange,
        }],
    );

    // Equivocation: a second, different pre-prepare for the same (v, n).
    let _ = r[3].handle(Input::Message(Message::PrePrepare(pp.clone())));
    let mut other = pp.body.batch.clone();
    other.timestamp = Time(77);
    let twin = Signed::new(
        &keys[0],
        &genesis(),
        ReplicaId(0),
        PrePrepare {
            digest: other.digest(),
            batch: other,
            ..pp.body.clone()
        },
    );
    run(
        &mut r,
        vec![TestStep {
            desc: "equivocation: view change",
            replica: 3,
            input: Input::Message(Message::PrePrepare(twin)),
            expected_outputs: |o| {
                broadcasts(o)
                    .iter()
                    .any(|m| matches!(m, Message::ViewChange(_)))
            },
            expected_state: |r| r.status() == Status::ViewChange,
        }],
    );
}

#[test]
fn forged_client_requests_are_never_ordered() {
    let mut r = replicas();
    let mut forged = tx(1);
    forged.payload.push(1);
    run(
        &mut r,
        vec![TestStep {
            desc: "bad client signature: dropped, no pre-prepare",
            replica: 0,
            input: Input::Request(vec![forged]),
            expected_outputs: |o| {
                broadcasts(o).is_empty()
                    && !o.iter().any(|x| matches!(x, Output::Relay(_)))
                    && o.iter().any(|x| matches!(x, Output::Rejected { .. }))
            },
            expected_state: |r| r.pending() == 0 && r.dropped() == 1,
        }],
    );
}

/// `tx(n)` with another call but the very signature of `tx(n)`: the same signer and nonce, a
/// different id, and no valid signature.
fn forged_twin(n: u64) -> SignedTx {
    let mut twin = tx_about(n, b"another subject");
    twin.signature = tx(n).signature;
    twin
}

/// A pre-prepare signed by replica 0 (the primary of view 0) for `seq` with `txs`.
fn pre_prepare(seq: u64, txs: Vec<SignedTx>) -> Signed<PrePrepare> {
    let batch = Batch {
        timestamp: Time(1),
        txs,
    };
    Signed::new(
        &keys()[0],
        &genesis(),
        ReplicaId(0),
        PrePrepare {
            view: View(0),
            seq: SeqNo(seq),
            digest: batch.digest(),
            batch,
        },
    )
}

fn starts_view_change(out: &[Output]) -> bool {
    broadcasts(out)
        .iter()
        .any(|m| matches!(m, Message::ViewChange(v) if v.body.new_view == View(1)))
}

fn prepares(out: &[Output]) -> bool {
    broadcasts(out)
        .iter()
        .any(|m| matches!(m, Message::Prepare(_)))
}

#[test]
fn a_checked_request_does_not_vouch_for_another_with_the_same_signer_and_nonce() {
    let mut r = replicas();
    run(
        &mut r,
        vec![
            TestStep {
                desc: "the genuine request arrives relayed, is checked and is pending",
                replica: 1,
                input: Input::Relayed(vec![tx(1)]),
                expected_outputs: |o| broadcasts(o).is_empty(),
                expected_state: |r| r.pending() == 1 && r.dropped() == 0,
            },
            TestStep {
                desc: "a pre-prepare with a twin under the genuine signature: the twin has \
                       its own id, is checked, fails, and the primary is replaced",
                replica: 1,
                input: Input::Message(Message::PrePrepare(pre_prepare(1, vec![forged_twin(1)]))),
                expected_outputs: |o| starts_view_change(o) && !prepares(o),
                expected_state: |r| r.status() == Status::ViewChange,
            },
        ],
    );
    // The same twin handed in by a client is dropped and reported to the host.
    let mut r = replicas();
    let _ = r[2].handle(Input::Request(vec![tx(1)]));
    let twin = forged_twin(1);
    let id = twin.digest();
    let out = r[2].handle(Input::Request(vec![twin]));
    assert!(
        out.iter()
            .any(|o| matches!(o, Output::Rejected { id: i, .. } if *i == id)),
        "{out:#?}"
    );
    assert_eq!(r[2].pending(), 1);
}

#[test]
fn pre_prepared_requests_are_checked_once_and_forged_ones_still_fail() {
    let mut r = replicas();
    // Replica 1 has tx(1) pending (checked); tx(2) and tx(3) it sees first in the pre-prepare,
    // where they are checked as one batch.
    let _ = r[1].handle(Input::Relayed(vec![tx(1)]));
    let out = r[1].handle(Input::Message(Message::PrePrepare(pre_prepare(
        1,
        vec![tx(1), tx(2), tx(3)],
    ))));
    assert!(prepares(&out), "valid batch prepared: {out:#?}");
    // The relays that arrive afterwards are duplicates: known valid, not checked or queued again.
    let dropped = r[1].dropped();
    let out = r[1].handle(Input::Relayed(vec![tx(2), tx(3)]));
    assert!(out.iter().all(|o| !matches!(o, Output::Relay(_))));
    assert_eq!((r[1].pending(), r[1].dropped()), (1, dropped));

    // A batch mixing valid requests with one forged request is rejected as a whole, whether
    // the valid ones were known already (tx(1)) or not (tx(4)).
    let mut forged = tx(5);
    forged.payload.push(0);
    let out = r[2].handle(Input::Message(Message::PrePrepare(pre_prepare(
        1,
        vec![tx(4), forged, tx(1)],
    ))));
    assert!(starts_view_change(&out) && !prepares(&out), "{out:#?}");

    // A request repeated inside one batch is a faulty primary too, however valid.
    let out = r[3].handle(Input::Message(Message::PrePrepare(pre_prepare(
        1,
        vec![tx(1), tx(1)],
    ))));
    assert!(starts_view_change(&out) && !prepares(&out), "{out:#?}");
}

/// Delivers every message until quiet; `Executed` answers every `Committed` with a digest
/// derived from the batch, as a host would.
fn settle(r: &mut [Replica], queue: Vec<(usize, Output)>, down: &[usize]) -> Vec<(usize, SeqNo)> {
    // FIFO, like the host's per-peer streams.
    let mut queue: std::collections::VecDeque<_> = queue.into();
    let mut committed = Vec::new();
    while let Some((from, o)) = queue.pop_front() {
        let targets: Vec<(usize, Message)> = match o {
            Output::Broadcast(m) => (0..4)
                .filter(|t| *t != from)
                .map(|t| (t, m.clone()))
                .collect(),
            Output::Send { to, msg } => vec![(to.0 as usize, msg)],
            Output::Relay(txs) => {
                for t in (0..4).filter(|t| *t != from && !down.contains(t)) {
                    let out = r[t].handle(Input::Relayed(txs.clone()));
                    queue.extend(out.into_iter().map(|o| (t, o)));
                }
                continue;
            }
            Output::Committed { seq, digest, .. } => {
                committed.push((from, seq));
                let out = r[from].handle(Input::Executed { seq, digest });
                queue.extend(out.into_iter().map(|o| (from, o)));
                continue;
            }
            _ => continue,
        };
        for (t, m) in targets {
            if down.contains(&t) {
                continue;
            }
            let out = r[t].handle(Input::Message(m));
            queue.extend(out.into_iter().map(|o| (t, o)));
        }
    }
    committed
}

#[test]
fn checkpoints_become_stable_and_collect_garbage() {
    let mut r = replicas();
    let mut queue = Vec::new();
    for n in 1..=3 {
        let out = r[0].handle(Input::Request(vec![tx(n)]));
        queue.extend(out.into_iter().map(|o| (0, o)));
        let committed = settle(&mut r, std::mem::take(&mut queue), &[]);
        assert!(committed.iter().any(|(_, s)| *s == SeqNo(n)));
    }
    for x in &r {
        assert_eq!(x.executed(), SeqNo(3));
        assert_eq!(x.low_watermark(), SeqNo(3), "stable checkpoint at 3");
        assert!(
            x.persistent_state().slots.is_empty(),
            "log garbage-collected"
        );
    }
}

#[test]
fn view_change_re_proposes_prepared_requests_and_restart_keeps_votes() {
    let mut r = replicas();
    // The primary proposes; backups prepare and commit, but replica 0 (the primary) never
    // sees the commits, so it is not the only one to know.
    let out = r[0].handle(Input::Request(vec![tx(1)]));
    let queue: Vec<_> = out.into_iter().map(|o| (0, o)).collect();
    let committed = settle(&mut r, queue, &[]);
    assert!(!committed.is_empty());
    // A second request reaches the backups only: the primary is down.
    let out = r[1].handle(Input::Request(vec![tx(2)]));
    let queue: Vec<_> = out.into_iter().map(|o| (1, o)).collect();
    settle(&mut r, queue, &[0]);
    // Their timers expire: view change to 1; replica 1 is the new primary.
    let mut queue = Vec::new();
    for i in 1..4 {
        let out = r[i].handle(Input::Tick(Time(10_000)));
        queue.extend(out.into_iter().map(|o| (i, o)));
    }
    let committed = settle(&mut r, queue, &[0]);
    for i in 1..4 {
        assert_eq!(r[i].view(), View(1), "replica {i}");
        let traces: Vec<_> = r[i].trace().map(|t| t.event.clone()).collect();
        assert_eq!(r[i].status(), Status::Normal, "replica {i}: {traces:#?}");
        assert_eq!(
            r[i].executed(),
            SeqNo(2),
            "replica {i} executed the pending request: {traces:#?}"
        );
    }
    assert!(committed.iter().any(|(_, s)| *s == SeqNo(2)));

    // Restart replica 2 from its persisted state: same view, same log, same votes.
    let st = r[2].persistent_state();
    let keys = keys();
    let mut fresh = Replica::new(r[2].config().clone(), keys[2].clone()).expect("replica");
    let _ = fresh.handle(Input::Restored(Box::new(Restore {
        state: Some(st.clone()),
        executed: r[2].executed(),
        digest: Digest::of(b"head"),
    })));
    assert_eq!(fresh.view(), View(1));
    assert_eq!(fresh.persistent_state().slots, st.slots);
}

/// A validly signed request whose body is over [`crate::tx::MAX_TX_BYTES`].
fn oversized_tx() -> SignedTx {
    let body = TxBody {
        ledger: genesis(),
        nonce: 99,
        call: crate::contracts::Call::RecordAccess {
            subject: Digest::of(b"s"),
            access: crate::contracts::Access::Read,
            purpose: "x".repeat(crate::tx::MAX_TX_BYTES),
        },
    };
    SignedTx::sign(&KeyPair::from_label("client"), &body).expect("sign")
}

#[test]
fn oversized_requests_are_refused_and_a_primary_proposing_one_is_replaced() {
    let mut r = replicas();
    let big = oversized_tx();
    let id = big.digest();
    let out = r[0].handle(Input::Request(vec![big.clone()]));
    assert!(
        out.iter().any(
            |o| matches!(o, Output::Rejected { id: i, reason } if *i == id && reason.contains("limit"))
        ),
        "{out:#?}"
    );
    assert!(broadcasts(&out).is_empty() && r[0].pending() == 0);
    // Relayed: dropped silently, never pending.
    let out = r[1].handle(Input::Relayed(vec![big.clone()]));
    assert!(out.iter().all(|o| !matches!(o, Output::Rejected { .. })));
    assert_eq!(r[1].pending(), 0);
    // Proposed by the primary: no correct replica would accept it, so it proves a fault.
    let out = r[2].handle(Input::Message(Message::PrePrepare(pre_prepare(
        1,
        vec![tx(1), big],
    ))));
    assert!(starts_view_change(&out) && !prepares(&out), "{out:#?}");
}

#[test]
fn a_batch_stamped_beyond_the_clock_skew_is_not_prepared() {
    let mut r = replicas();
    let _ = r[1].handle(Input::Tick(Time(10_000)));
    let batch = Batch {
        timestamp: Time(10_000 + MAX_CLOCK_SKEW_MS + 1),
        txs: vec![tx(1)],
    };
    let future = Signed::new(
        &keys()[0],
        &genesis(),
        ReplicaId(0),
        PrePrepare {
            view: View(0),
            seq: SeqNo(1),
            digest: batch.digest(),
            batch,
        },
    );
    let out = r[1].handle(Input::Message(Message::PrePrepare(future)));
    assert!(!prepares(&out) && !starts_view_change(&out), "{out:#?}");
    assert!(r[1].trace().any(|t| t.event.contains("ahead of our clock")));
    // Within the skew it prepares.
    let batch = Batch {
        timestamp: Time(10_000 + MAX_CLOCK_SKEW_MS),
        txs: vec![tx(2)],
    };
    let near = Signed::new(
        &keys()[0],
        &genesis(),
        ReplicaId(0),
        PrePrepare {
            view: View(0),
            seq: SeqNo(1),
            digest: batch.digest(),
            batch,
        },
    );
    let out = r[1].handle(Input::Message(Message::PrePrepare(near)));
    assert!(prepares(&out), "{out:#?}");
}

#[test]
fn a_flooding_replica_holds_one_checkpoint_vote_per_sequence_and_one_view_change() {
    let mut r = replicas();
    let k3 = &keys()[3];
    for i in 0..200u64 {
        // Votes for made-up digests at one sequence number, within and above the window.
        for seq in [SeqNo(1), SeqNo(1_000 + i)] {
            let cp = Signed::new(
                k3,
                &genesis(),
                ReplicaId(3),
                Checkpoint {
                    seq,
                    digest: Digest::of(&i.to_be_bytes()),
                },
            );
            let _ = r[1].handle(Input::Message(Message::Checkpoint(cp)));
        }
        // View changes for ever higher views, and the last view there is.
        for v in [View(1 + i), View(u64::MAX)] {
            let vc = Signed::new(
                k3,
                &genesis(),
                ReplicaId(3),
                ViewChange {
                    new_view: v,
                    checkpoint: CheckpointProof::genesis(genesis()),
                    prepared: Vec::new(),
                },
            );
            let _ = r[1].handle(Input::Message(Message::ViewChange(vc)));
        }
    }
    let (votes, view_changes) = r[1].stored_votes();
    assert_eq!((votes, view_changes), (2, 1));
    // One faulty replica alone never moves a correct one to another view.
    assert_eq!(r[1].view(), View(0));
    assert_eq!(r[1].status(), Status::Normal);
}

#[test]
fn votes_signed_for_another_ledger_do_not_count() {
    let mut r = replicas();
    let out = r[0].handle(Input::Request(vec![tx(1)]));
    let pp = pre_prepare_of(&out);
    let elsewhere = Signed::new(
        &keys()[0],
        &Digest::of(b"another ledger with the same keys"),
        ReplicaId(0),
        pp.body.clone(),
    );
    let out = r[1].handle(Input::Message(Message::PrePrepare(elsewhere)));
    assert!(!prepares(&out));
    assert!(r[1].trace().any(|t| t.event.contains("bad signature")));
}
