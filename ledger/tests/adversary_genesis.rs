//! Genesis-level attacks: a six-peer genesis (with the textbook quorum `2f + 1 = 3`, its two
//! halves could each certify a different block and both receipts would verify offline), a
//! genesis listing one key twice (one peer, two votes), and a small-order key (anyone can sign
//! for it). Every way in refuses them: `init`, reading a genesis, starting a peer, and checking
//! a certificate or a receipt.
#![cfg(feature = "net")]

use ledger::chain::{BlockHeader, CommitCertificate, Genesis, PeerInfo, Receipt};
use ledger::config::{self, InitOptions, NodeConfig};
use ledger::contracts::{Access, Call, Outcome};
use ledger::crypto::{Digest, KeyPair, PublicKey};
use ledger::ids::{ReplicaId, SeqNo, Time, quorum};
use ledger::pbft::{Checkpoint, Config, Signed};
use ledger::peer::Peer;
use ledger::tx::{SignedTx, TxBody};

fn genesis_of(keys: &[PublicKey]) -> Genesis {
    Genesis {
        chain_id: "six".into(),
        peers: keys
            .iter()
            .enumerate()
            .map(|(i, k)| PeerInfo {
                id: ReplicaId(i as u32),
                public_key: *k,
                address: format!("127.0.0.1:{}", 7400 + i),
                client_address: format!("127.0.0.1:{}", 7500 + i),
            })
            .collect(),
        admin: KeyPair::from_label("admin").public(),
        admin_name: "admin".into(),
    }
}

fn keys(n: usize) -> Vec<KeyPair> {
    (0..n)
        .map(|i| KeyPair::from_label(&format!("six-{i}")))
        .collect()
}

/// A certificate for `header` signed by the peers `signers` of `genesis`.
fn certificate(
    genesis: &Genesis,
    keys: &[KeyPair],
    signers: &[usize],
    header: &BlockHeader,
) -> CommitCertificate {
    let proof: Vec<Signed<Checkpoint>> = signers
        .iter()
        .map(|i| {
            Signed::new(
                &keys[*i],
                &genesis.hash(),
                ReplicaId(*i as u32),
                Checkpoint {
                    seq: header.height,
                    digest: header.hash(),
                },
            )
        })
        .collect();
    CommitCertificate::from_proof(header.height, header.hash(), &proof)
}

#[test]
fn a_six_peer_genesis_is_refused_everywhere_and_its_halves_cannot_both_certify() {
    let keys = keys(6);
    let publics: Vec<PublicKey> = keys.iter().map(KeyPair::public).collect();
    let genesis = genesis_of(&publics);

    // init refuses to write one.
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = InitOptions {
        peers: 6,
        ..InitOptions::default()
    };
    let e = config::init(dir.path(), &opts).expect_err("init wrote a six-peer ledger");
    assert!(e.to_string().contains("3f + 1"), "{e}");

    // A hand-written one is refused when read, and no peer starts on it.
    let path = dir.path().join("genesis.json");
    std::fs::write(&path, serde_json::to_string(&genesis).expect("json")).expect("write");
    assert!(config::read_genesis(&path).is_err());
    let cfg = Config::new(ReplicaId(0), genesis.peer_keys(), genesis.hash());
    assert!(Peer::new(genesis.clone(), cfg, keys[0].clone()).is_err());
    let node = NodeConfig {
        id: 0,
        genesis: path.clone(),
        key: dir.path().join("key"),
        ..NodeConfig::default()
    };
    std::fs::write(&node.key, format!("{}\n", hex::encode(keys[0].seed()))).expect("key");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let e = rt
        .block_on(ledger::transport::run_node(&node, std::future::pending()))
        .expect_err("a peer started on a six-peer genesis");
    assert!(e.to_string().contains("3f + 1"), "{e}");

    // The split brain the old quorum allowed: peers 0-2 and 3-5 each certify another block 1.
    let header = |batch: &[u8]| BlockHeader {
        height: SeqNo(1),
        prev: genesis.hash(),
        time: Time(1),
        batch: Digest::of(batch),
        tx_count: 0,
        tx_root: Digest::ZERO,
        log_size: 0,
        log_root: Digest::ZERO,
    };
    let (left, right) = (header(b"left"), header(b"right"));
    let left_cert = certificate(&genesis, &keys, &[0, 1, 2], &left);
    let right_cert = certificate(&genesis, &keys, &[3, 4, 5], &right);
    assert!(left_cert.verify(&publics, &genesis.hash()).is_err());
    assert!(right_cert.verify(&publics, &genesis.hash()).is_err());
    // Even four of six (the quorum that keeps two quorums intersecting) is refused: the ledger
    // accepts only n = 3f + 1 peers.
    assert_eq!(quorum(6), 4);
    let four = certificate(&genesis, &keys, &[0, 1, 2, 3], &left);
    assert!(four.verify(&publics, &genesis.hash()).is_err());

    // And a receipt under such a genesis does not verify offline.
    let tx = SignedTx::sign(
        &KeyPair::from_label("admin"),
        &TxBody {
            ledger: genesis.hash(),
            nonce: 1,
            call: Call::RecordAccess {
                subject: Digest::of(b"s"),
                access: Access::Read,
                purpose: "p".into(),
            },
        },
    )
    .expect("sign");
    let receipt = Receipt {
        tx,
        outcome: Outcome::Accepted,
        index: 0,
        proof: vec![],
        header: left.clone(),
        certificate: left_cert,
    };
    assert!(receipt.verify(&genesis).is_err());
}

#[test]
fn duplicate_and_small_order_peer_keys_are_refused() {
    let keys = keys(4);
    let mut publics: Vec<PublicKey> = keys.iter().map(KeyPair::public).collect();
    assert!(genesis_of(&publics).validate().is_ok());

    // One key twice: one peer would cast two of the three votes of a quorum.
    publics[3] = publics[0];
    let e = genesis_of(&publics)
        .validate()
        .expect_err("duplicate key accepted");
    assert!(e.to_string().contains("same key"), "{e}");

    // The identity point has small order: a signature under it proves nothing.
    let mut identity = [0u8; 32];
    identity[0] = 1;
    publics[3] = PublicKey(identity);
    let e = genesis_of(&publics)
        .validate()
        .expect_err("small-order key accepted");
    assert!(e.to_string().contains("small-order"), "{e}");
}

#[test]
fn signatures_for_one_ledger_do_not_certify_another_with_the_same_keys() {
    let keys = keys(4);
    let publics: Vec<PublicKey> = keys.iter().map(KeyPair::public).collect();
    let a = genesis_of(&publics);
    let mut b = a.clone();
    b.chain_id = "another ledger, same peers".into();
    let header = BlockHeader {
        height: SeqNo(1),
        prev: a.hash(),
        time: Time(1),
        batch: Digest::of(b"batch"),
        tx_count: 0,
        tx_root: Digest::ZERO,
        log_size: 0,
        log_root: Digest::ZERO,
    };
    let cert = certificate(&a, &keys, &[0, 1, 2], &header);
    assert!(cert.verify(&publics, &a.hash()).is_ok());
    assert!(cert.verify(&publics, &b.hash()).is_err());
}
