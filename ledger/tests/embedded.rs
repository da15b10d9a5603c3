//! The embedded ledger end to end: four in-process peers with redb stores, identities, anchors
//! with lineage, grants, audit, offline receipts, restart from disk, and `verify_chain`
//! naming a block altered on disk.
#![cfg(feature = "net")]

use ledger::chain::{CertifiedBlock, verify_chain};
use ledger::client::{Client, Ledger, LedgerApi};
use ledger::config::{self, NodeConfig};
use ledger::contracts::{Access, Action, AnchorKind, AnchorSpec, Outcome, Role};
use ledger::crypto::{Digest, KeyPair};
use ledger::ids::{SeqNo, Time};
use ledger::store::Store;

fn spec(kind: AnchorKind, root: Digest, parents: Vec<Digest>) -> AnchorSpec {
    AnchorSpec {
        kind,
        root,
        row_count: 130_070,
        schema_hash: Digest::of(b"schema"),
        location: "file:///data/out.parquet".into(),
        parents,
        stage: "preprocess".into(),
        params_hash: Digest::of(b"params"),
        code_version: "test".into(),
    }
}

fn load(dir: &std::path::Path, i: usize) -> Vec<CertifiedBlock> {
    let cfg = NodeConfig::load(&dir.join(format!("peer{i}.toml"))).expect("config");
    let store = Store::open(&cfg.store_path()).expect("store");
    store.load().expect("load").1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anchors_lineage_audit_receipts_restart_and_tamper_detection() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("ledger");
    let ledger = Ledger::open_or_init(&dir).expect("start");
    let genesis = ledger.genesis().clone();
    let admin = Client::new(&ledger, ledger.admin_key().expect("admin key"));

    let etl_key = KeyPair::from_label("etl");
    let ml_key = KeyPair::from_label("ml");
    let auditor_key = KeyPair::from_label("auditor");
    for (k, name, role) in [
        (&etl_key, "etl", Role::DataEngineer),
        (&ml_key, "trainer", Role::MlEngineer),
        (&auditor_key, "auditor", Role::Compliance),
    ] {
        let r = admin
            .register(k.public(), name, role)
            .await
            .expect("register");
        assert_eq!(r.outcome, Outcome::Accepted);
        r.verify(&genesis).expect("receipt verifies offline");
    }
    let etl = Client::new(&ledger, etl_key.clone());
    let ml = Client::new(&ledger, ml_key.clone());
    let auditor = Client::new(&ledger, auditor_key.clone());

    let raw = Digest::of(b"raw");
    let clean = Digest::of(b"clean");
    let model = Digest::of(b"model");
    etl.anchor(spec(AnchorKind::Dataset, raw, vec![]))
        .await
        .expect("anchor raw");
    let r = etl
        .anchor(spec(AnchorKind::Dataset, clean, vec![raw]))
        .await
        .expect("anchor clean");
    assert!(r.outcome.is_accepted());
    let r = ml
        .anchor(spec(AnchorKind::Model, model, vec![clean]))
        .await
        .expect("anchor model");
    r.verify(&genesis).expect("model receipt");
    // A data engineer may not anchor a model: recorded as denied, with the reason.
    let denied = etl
        .anchor(spec(AnchorKind::Model, Digest::of(b"rogue"), vec![clean]))
        .await
        .expect("denied still commits");
    assert!(matches!(&denied.outcome, Outcome::Denied { reason } if reason.contains("may not")));
    denied.verify(&genesis).expect("a denial has a receipt too");

    // A tampered receipt fails offline.
    let mut bad = r.clone();
    bad.outcome = Outcome::Denied {
        reason: "forged".into(),
    };
    assert!(bad.verify(&genesis).is_err());
    let mut bad = r.clone();
    bad.certificate.signatures.truncate(2);
    assert!(bad.verify(&genesis).is_err());

    let lineage = auditor.reader().lineage(model, 10).await.expect("lineage");
    let roots: Vec<Digest> = lineage.nodes.iter().map(|n| n.spec.root).collect();
    assert_eq!(roots, vec![model, clean, raw]);
    let a = auditor
        .reader()
        .anchor_of(model)
        .await
        .expect("anchor")
        .expect("anchored");
    assert_eq!(a.signer, ml_key.public());

    // Access: the clinician is denied without a grant, allowed with one; both audited.
    let doc_key = KeyPair::from_label("doctor");
    admin
        .register(doc_key.public(), "dr", Role::Clinician)
        .await
        .expect("register doctor");
    let doc = Client::new(&ledger, doc_key.clone());
    let r = doc
        .record_access(clean, Access::Read, "care")
        .await
        .expect("read");
    assert!(!r.outcome.is_accepted());
    admin
        .grant(clean, doc_key.public(), Access::Read)
        .await
        .expect("grant");
    let r = doc
        .record_access(clean, Access::Read, "care")
        .await
        .expect("read");
    assert!(r.outcome.is_accepted());
    let events = auditor
        .reader()
        .audit(Some(clean), Some(doc_key.public()), Time(0), Time(u64::MAX))
        .await
        .expect("audit");
    let kinds: Vec<(Action, bool)> = events
        .iter()
        .map(|e| (e.action, e.outcome.is_accepted()))
        .collect();
    assert_eq!(kinds, vec![(Action::Read, false), (Action::Read, true)]);

    let head_before = admin.reader().head().await.expect("head");
    assert!(head_before.height >= SeqNo(1));
    ledger.shutdown().expect("shutdown");

    // Every peer's store re-verifies from genesis; the certified heads agree.
    let mut heads = Vec::new();
    for i in 0..4 {
        let blocks = load(&dir, i);
        let head = verify_chain(&genesis, &blocks).expect("chain verifies");
        heads.push((head.height, head.hash));
    }
    let max = heads.iter().map(|h| h.0).max().expect("four heads");
    for (h, hash) in &heads {
        if *h == max {
            assert_eq!(*hash, heads.iter().find(|x| x.0 == max).expect("head").1);
        }
    }

    // Restart from disk: nothing lost, anchors and receipts still there.
    let ledger = Ledger::start(&dir).expect("restart");
    let auditor = Client::new(&ledger, auditor_key);
    assert!(
        auditor
            .reader()
            .anchor_of(model)
            .await
            .expect("anchor")
            .is_some()
    );
    let r2 = admin_after_restart(&ledger).await;
    r2.verify(&genesis).expect("new receipt after restart");
    ledger.shutdown().expect("shutdown");

    // Alter a transaction of block 2 on peer 1's disk: verify names block 2.
    let cfg = NodeConfig::load(&dir.join("peer1.toml")).expect("config");
    let store = Store::open(&cfg.store_path()).expect("store");
    let (_, blocks) = store.load().expect("load");
    let mut block = blocks[1].block.clone();
    block.outcomes[0] = Outcome::Denied {
        reason: "rewritten".into(),
    };
    store.overwrite_block(&block).expect("tamper");
    let (_, blocks) = store.load().expect("load");
    match verify_chain(&genesis, &blocks) {
        Err(ledger::Error::CorruptChain { seq, .. }) => assert_eq!(seq, SeqNo(2)),
        other => panic!("tampering not detected: {other:?}"),
    }
    let _ = config::read_genesis(&dir.join("genesis.json")).expect("genesis");
}

async fn admin_after_restart(ledger: &Ledger) -> ledger::chain::Receipt {
    let admin = Client::new(ledger, ledger.admin_key().expect("admin"));
    admin
        .register(
            KeyPair::from_label("late").public(),
            "late",
            Role::Clinician,
        )
        .await
        .expect("register after restart")
}
