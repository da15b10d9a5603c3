//! Four peers over real tonic gRPC and TLS on 127.0.0.1 inside one process: transactions
//! commit with verifiable receipts, and after the primary stops the others change view and keep
//! committing; the stopped peer restarts from its store and catches up to the same head.
#![cfg(feature = "net")]

use std::net::TcpListener;
use std::path::Path;
use std::time::Duration;

use ledger::chain::QueryResult;
use ledger::client::Reader;
use ledger::config::{self, InitOptions, NodeConfig};
use ledger::contracts::Query;
use ledger::crypto::KeyPair;
use ledger::transport::{RemoteLedger, run_node};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A base port with eight free consecutive ports (four peer and four client listeners).
fn free_base() -> u16 {
    for _ in 0..200 {
        let Ok(l) = TcpListener::bind("127.0.0.1:0") else {
            continue;
        };
        let Ok(addr) = l.local_addr() else {
            continue;
        };
        let base = addr.port();
        drop(l);
        if base > 60_000 {
            continue;
        }
        if (0..8).all(|i| TcpListener::bind(("127.0.0.1", base + i)).is_ok()) {
            return base;
        }
    }
    panic!("no free ports");
}

fn spawn(dir: &Path, i: usize) -> (oneshot::Sender<()>, JoinHandle<ledger::Result<()>>) {
    let cfg = NodeConfig::load(&dir.join(format!("peer{i}.toml"))).expect("config");
    let (stop, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        run_node(&cfg, async {
            let _ = rx.await;
        })
        .await
    });
    (stop, task)
}

async fn head(remote: &RemoteLedger, key: &KeyPair, peer: usize) -> Option<ledger::chain::Head> {
    let q = Reader::new(remote, key.clone()).sign(Query::Head).ok()?;
    match remote.query_peer(peer, &q).await {
        Ok(QueryResult::Head(h)) => Some(h),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_peers_survive_the_primary_stopping() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().to_path_buf();
    let mut n = 0u8;
    let mut keys = || {
        n += 1;
        KeyPair::from_seed([n; 32])
    };
    let opts = InitOptions {
        base_port: free_base(),
        ..InitOptions::default()
    };
    config::init_with(&dir, &opts, &mut keys).expect("init");
    let genesis = config::read_genesis(&dir.join("genesis.json")).expect("genesis");
    let admin = config::read_key(&dir.join("admin.key")).expect("admin");
    let admin_key = admin.clone();
    let mut nodes: Vec<_> = (0..4).map(|i| Some(spawn(&dir, i))).collect();

    let remote = RemoteLedger::new(genesis.clone())
        .expect("client")
        .with_timeout(Duration::from_secs(5));
    let report = ledger::load::run(&remote, admin.clone(), 200, 32, true, |_| Ok(()))
        .await
        .expect("load");
    assert_eq!(report.acknowledged, 200, "{report:?}");

    // Stop the primary of view 0.
    if let Some((stop, task)) = nodes[0].take() {
        let _ = stop.send(());
        task.await.expect("join").expect("peer 0 stopped cleanly");
    }
    let survivors = RemoteLedger::new(genesis.clone())
        .expect("client")
        .with_peers(&[1, 2, 3])
        .with_timeout(Duration::from_secs(10));
    let mut ids = Vec::new();
    let report = ledger::load::run(&survivors, admin.clone(), 100, 16, true, |r| {
        ids.push(r.tx_id());
        Ok(())
    })
    .await
    .expect("load without the primary");
    assert_eq!(report.acknowledged, 100, "{report:?}");
    for p in 0..3 {
        let h = head(&survivors, &admin_key, p).await.expect("head");
        assert!(h.log_size >= 300, "peer {} has {} txs", p + 1, h.log_size);
    }

    // Restart peer 0 from its store: it catches up to the others' head.
    nodes[0] = Some(spawn(&dir, 0));
    let mut caught_up = false;
    for _ in 0..200 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (Some(h0), Some(h1)) = (
            head(&remote, &admin_key, 0).await,
            head(&remote, &admin_key, 1).await,
        ) else {
            continue;
        };
        if h0.height == h1.height && h0.hash == h1.hash && h0.log_size >= 300 {
            caught_up = true;
            break;
        }
    }
    assert!(caught_up, "restarted peer did not catch up");
    let reader = Reader::new(&remote, admin_key.clone());
    for id in ids {
        let q = reader.sign(Query::Receipt(id)).expect("sign");
        match remote.query_peer(0, &q).await {
            Ok(QueryResult::Receipt(Some(r))) => r.verify(&genesis).expect("receipt"),
            other => panic!("restarted peer lacks {id}: {other:?}"),
        }
    }
    for (stop, task) in nodes.into_iter().flatten() {
        let _ = stop.send(());
        let _ = task.await;
    }
}
