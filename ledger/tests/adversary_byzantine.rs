//! One Byzantine peer against three correct ones on 127.0.0.1 (real TLS sockets; the test
//! plays the faulty peer with its genesis key): a primary stamping batches far in the future,
//! a peer flooding checkpoint votes and view changes, and a peer pushing forged, replayed and
//! unrequested state-transfer blocks and oversized or unregistered requests. Each attack is
//! refused, the correct peers agree, and the ledger keeps committing.
#![cfg(feature = "net")]

mod support;

use std::time::Duration;

use ledger::chain::{Block, CertifiedBlock};
use ledger::client::Client;
use ledger::contracts::{Access, Call, Outcome};
use ledger::crypto::{Digest, KeyPair};
use ledger::ids::{ReplicaId, SeqNo, Time, View};
use ledger::node::unix_ms;
use ledger::pbft::{
    Batch, Checkpoint, CheckpointProof, MAX_CLOCK_SKEW_MS, Message, PrePrepare, Signed, ViewChange,
};
use ledger::peer::Wire;
use ledger::tx::{MAX_TX_BYTES, SignedTx, TxBody};
use support::{Cluster, peer_link};

fn access(key: &KeyPair, ledger: Digest, nonce: u64, purpose: String) -> SignedTx {
    SignedTx::sign(
        key,
        &TxBody {
            ledger,
            nonce,
            call: Call::RecordAccess {
                subject: Digest::of(b"subject"),
                access: Access::Read,
                purpose,
            },
        },
    )
    .expect("sign")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_stamping_batches_in_the_future_is_replaced() {
    // Peer 0, the primary of view 0, is played by the test.
    let c = Cluster::start(&[1, 2, 3]).await;
    let key0 = c.peer_key(0);
    let ledger_id = c.genesis.hash();
    let mut links = Vec::new();
    for to in 1..4 {
        links.push(
            peer_link(&c.genesis, &key0, to)
                .await
                .expect("link as peer 0"),
        );
    }
    let tx = access(&c.admin, ledger_id, 7, "future".into());
    let submit = {
        let remote = c.remote.clone();
        let tx = tx.clone();
        tokio::spawn(async move { remote.submit_from(&tx, 1).await })
    };
    let far = unix_ms().plus(3_600_000);
    let batch = Batch {
        timestamp: far,
        txs: vec![tx.clone()],
    };
    let pp = Signed::new(
        &key0,
        &ledger_id,
        ReplicaId(0),
        PrePrepare {
            view: View(0),
            seq: SeqNo(1),
            digest: batch.digest(),
            batch,
        },
    );
    for link in &links {
        link.send(Wire::Consensus(Message::PrePrepare(pp.clone())))
            .await
            .expect("send");
    }
    // The correct peers do not prepare it; their request timers expire, they change view
    // and the next primary commits the request with an honest time.
    let receipt = tokio::time::timeout(Duration::from_secs(60), submit)
        .await
        .expect("committed in time")
        .expect("join")
        .expect("committed");
    receipt.verify(&c.genesis).expect("receipt");
    assert!(
        receipt.header.time < unix_ms().plus(MAX_CLOCK_SKEW_MS),
        "block time {:?} inherited the faulty primary's clock",
        receipt.header.time
    );
    let head = c.settled_heads(&[1, 2, 3]).await;
    assert!(head.height >= SeqNo(1));
    c.commits(2, "after the faulty primary").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_flooding_checkpoints_and_view_changes_changes_nothing() {
    // Peer 3 is played by the test.
    let c = Cluster::start(&[0, 1, 2]).await;
    let key3 = c.peer_key(3);
    let ledger_id = c.genesis.hash();
    c.commits(0, "before").await;
    let before = c.settled_heads(&[0, 1, 2]).await;
    let mut links = Vec::new();
    for to in 0..3 {
        links.push(
            peer_link(&c.genesis, &key3, to)
                .await
                .expect("link as peer 3"),
        );
    }
    let flood = {
        let links = links.clone();
        tokio::spawn(async move {
            for i in 0..2_000u64 {
                let digest = Digest::of(&i.to_be_bytes());
                let mut wires = Vec::new();
                for seq in [SeqNo(1 + i % 8), SeqNo(1_000_000 + i)] {
                    wires.push(Wire::Consensus(Message::Checkpoint(Signed::new(
                        &key3,
                        &ledger_id,
                        ReplicaId(3),
                        Checkpoint { seq, digest },
                    ))));
                }
                for v in [View(1 + i), View(u64::MAX - i)] {
                    wires.push(Wire::Consensus(Message::ViewChange(Signed::new(
                        &key3,
                        &ledger_id,
                        ReplicaId(3),
                        ViewChange {
                            new_view: v,
                            checkpoint: CheckpointProof::genesis(ledger_id),
                            prepared: Vec::new(),
                        },
                    ))));
                }
                for w in wires {
                    for link in &links {
                        if link.send(w.clone()).await.is_err() {
                            return;
                        }
                    }
                }
            }
        })
    };
    // The ledger commits through the flood, and no correct peer leaves view 0: one peer's
    // view changes are not enough to move anyone.
    for i in 0..20 {
        c.commits(i % 3, &format!("during the flood {i}")).await;
    }
    flood.await.expect("flood");
    let after = c.settled_heads(&[0, 1, 2]).await;
    assert!(after.height > before.height);
    c.commits(1, "after the flood").await;
}

/// A block carrying the certified header of `receipt` over other transactions.
fn forged(receipt: &ledger::chain::Receipt, txs: Vec<SignedTx>) -> CertifiedBlock {
    let outcomes = txs.iter().map(|_| Outcome::Accepted).collect();
    CertifiedBlock {
        block: Block {
            header: receipt.header.clone(),
            batch_time: receipt.header.time,
            txs,
            outcomes,
        },
        certificate: Some(receipt.certificate.clone()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_replayed_and_unrequested_blocks_and_bad_relays_are_refused() {
    // Peer 3 is played by the test.
    let c = Cluster::start(&[0, 1, 2]).await;
    let key3 = c.peer_key(3);
    let ledger_id = c.genesis.hash();
    // A genuine certified block of one transaction, as any receipt reveals it.
    let receipt = c.commits(0, "genuine").await;
    assert_eq!(receipt.header.tx_count, 1);
    let before = c.settled_heads(&[0, 1, 2]).await;

    let other = access(&c.admin, ledger_id, 1, "forged".into());
    let genuine = CertifiedBlock {
        block: Block {
            header: receipt.header.clone(),
            batch_time: receipt.header.time,
            txs: vec![receipt.tx.clone()],
            outcomes: vec![receipt.outcome.clone()],
        },
        certificate: Some(receipt.certificate.clone()),
    };
    let stranger = KeyPair::from_label("stranger");
    let oversized = access(&c.admin, ledger_id, 2, "x".repeat(MAX_TX_BYTES));
    let unregistered = access(&stranger, ledger_id, 3, "who am i".into());
    let attacks = vec![
        // The attack: a genuine certified header with other transactions.
        Wire::Blocks(vec![forged(&receipt, vec![other.clone()])]),
        // The same header followed by a block that claims to extend it.
        Wire::Blocks(vec![
            forged(&receipt, vec![other]),
            CertifiedBlock {
                block: Block {
                    header: ledger::chain::BlockHeader {
                        height: receipt.header.height.next(),
                        prev: receipt.header.hash(),
                        ..receipt.header.clone()
                    },
                    batch_time: Time(0),
                    txs: vec![],
                    outcomes: vec![],
                },
                certificate: None,
            },
        ]),
        // A genuine block, replayed and unrequested.
        Wire::Blocks(vec![genuine]),
        // Requests no correct peer would relay.
        Wire::Requests(vec![oversized.clone(), unregistered.clone()]),
    ];
    for to in 0..3 {
        let link = peer_link(&c.genesis, &key3, to)
            .await
            .expect("link as peer 3");
        for w in &attacks {
            link.send(w.clone()).await.expect("send");
        }
    }
    // Let the peers take it all in, then the correct peers hold exactly what they held.
    c.commits(1, "after the attack").await;
    let after = c.settled_heads(&[0, 1, 2]).await;
    assert_eq!(after.height, before.height.next());
    let reader = ledger::client::Reader::new(&c.remote, c.admin.clone());
    for tx in [&oversized, &unregistered] {
        let r = reader.receipt(tx.digest()).await.expect("query");
        assert!(r.is_none(), "a refused request was committed");
    }
    let client = Client::new(&c.remote, c.admin.clone());
    let r = client
        .record_access(Digest::of(b"subject"), Access::Read, "still committing")
        .await
        .expect("commit");
    r.verify(&c.genesis).expect("receipt");
}
