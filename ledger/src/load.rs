//! A load generator for a remote ledger: signs a stream of transactions, submits them with a
//! bounded number in flight, and measures submit-to-receipt latency and throughput. Used by
//! `emrflow ledger submit`, the process test and the benchmark; it owns no ledger logic.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::Semaphore;

use crate::chain::Receipt;
use crate::client::Client;
use crate::contracts::{Access, Call};
use crate::crypto::{Digest, KeyPair};
use crate::error::{Error, Result};
use crate::transport::RemoteLedger;

/// Latency and throughput of a run.
#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    /// Transactions acknowledged with a receipt.
    pub acknowledged: usize,
    /// Transactions that failed on every peer.
    pub failed: usize,
    /// Median submit-to-receipt latency (ms).
    pub p50_ms: f64,
    /// 99th percentile latency (ms).
    pub p99_ms: f64,
    /// Acknowledged transactions per second of wall time.
    pub tx_per_s: f64,
    /// Wall time (s).
    pub seconds: f64,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Submits `count` audit-access transactions signed by `key` with at most `concurrency` in
/// flight, spreading them over the peers. With `verify`, every receipt is checked against the
/// genesis (four signature checks per transaction on the client); each is then handed to
/// `on_receipt` as it arrives.
#[allow(clippy::disallowed_methods)] // measuring wall time is the point
pub async fn run(
    remote: &RemoteLedger,
    key: KeyPair,
    count: usize,
    concurrency: usize,
    verify: bool,
    mut on_receipt: impl FnMut(&Receipt) -> Result<()>,
) -> Result<LoadReport> {
    let client = Client::new(remote, key);
    let genesis = remote.genesis().clone();
    let peers = genesis.peers.len();
    let txs = (0..count)
        .map(|i| {
            client.sign(Call::RecordAccess {
                subject: Digest::of(&(i as u64).to_be_bytes()),
                access: Access::Query,
                purpose: format!("load {i}"),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let sem = Arc::new(Semaphore::new(concurrency.max(1)));
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
    #[allow(clippy::disallowed_methods)] // the load generator measures latency
    let started = std::time::Instant::now();
    let mut lat = Vec::with_capacity(count);
    let mut failed = 0;
    for (i, tx) in txs.into_iter().enumerate() {
        let permit = sem
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Error::Stopped("semaphore closed".into()))?;
        let remote = remote.clone();
        let done = done_tx.clone();
        tokio::spawn(async move {
            #[allow(clippy::disallowed_methods)] // the load generator measures latency
            let t0 = std::time::Instant::now();
            let r = remote.submit_from(&tx, i % peers).await;
            let _ = done.send((r, t0.elapsed()));
            drop(permit);
        });
        while let Ok((r, d)) = done_rx.try_recv() {
            if !collect(&genesis, verify, r, d, &mut on_receipt, &mut lat)? {
                failed += 1;
            }
        }
    }
    drop(done_tx);
    while let Some((r, d)) = done_rx.recv().await {
        if !collect(&genesis, verify, r, d, &mut on_receipt, &mut lat)? {
            failed += 1;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    lat.sort_by(f64::total_cmp);
    let acknowledged = lat.len();
    Ok(LoadReport {
        acknowledged,
        failed,
        p50_ms: percentile(&lat, 0.5),
        p99_ms: percentile(&lat, 0.99),
        tx_per_s: acknowledged as f64 / seconds.max(1e-9),
        seconds,
    })
}

fn collect(
    genesis: &crate::chain::Genesis,
    verify: bool,
    r: Result<Receipt>,
    d: Duration,
    on_receipt: &mut impl FnMut(&Receipt) -> Result<()>,
    lat: &mut Vec<f64>,
) -> Result<bool> {
    match r {
        Ok(receipt) => {
            if verify {
                receipt.verify(genesis)?;
            }
            on_receipt(&receipt)?;
            lat.push(d.as_secs_f64() * 1000.0);
            Ok(true)
        }
        Err(e) => {
            tracing::warn!(error = %e, "transaction not acknowledged");
            Ok(false)
        }
    }
}
