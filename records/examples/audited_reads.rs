//! Audited reads under load, for `scripts/bench-records`: patients' records read through the
//! ledger (each read a transaction whose decision and audit event commit on a quorum before a
//! field leaves the store), first one at a time for the latency, then from many concurrent
//! readers for the throughput. Prints one JSON object.
//!
//! ```text
//! audited_reads STORE LEDGER IDENTITY PATIENTS SEQUENTIAL READERS CONCURRENT
//! ```
//!
//! STORE is a record store, LEDGER a cluster's genesis.json (or an embedded ledger directory),
//! IDENTITY the key file of a reader granted every category of every patient for treatment,
//! PATIENTS a file of patient ids (one a line, read round-robin), SEQUENTIAL and CONCURRENT the
//! numbers of reads of each phase and READERS the concurrent readers. The master key comes from
//! `EMRFLOW_MASTER_KEY`, as for `emrflow records`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ledger::contracts::{Categories, Purpose, Role};
use provenance::{LedgerConfig, Provenance};
use records::{MasterKey, ReadRequest, Records, Store};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [
        store,
        ledger,
        identity,
        patients,
        sequential,
        readers,
        concurrent,
    ] = args.as_slice()
    else {
        return Err(
            "usage: audited_reads STORE LEDGER IDENTITY PATIENTS SEQUENTIAL READERS CONCURRENT"
                .into(),
        );
    };
    let number = |name: &str, v: &str| -> Result<usize, BoxError> {
        v.parse()
            .map_err(|e| format!("{name} {v:?} is not a count: {e}").into())
    };
    let plan = Plan {
        sequential: number("SEQUENTIAL", sequential)?,
        readers: number("READERS", readers)?.max(1),
        concurrent: number("CONCURRENT", concurrent)?,
    };
    let patients: Vec<String> = std::fs::read_to_string(patients)
        .map_err(|e| format!("cannot read {patients}: {e}"))?
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    if patients.is_empty() {
        return Err("the patients file lists no patient".into());
    }
    let config = LedgerConfig {
        ledger: Some(ledger.into()),
        identity: Some(identity.into()),
        timeout_secs: None,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let report = runtime.block_on(async {
        let master = MasterKey::load(None)?;
        let store = Store::open(std::path::Path::new(store), &master)?;
        let provenance = Provenance::open(&config).await?;
        let result = measure(&store, &provenance, &patients, &plan).await;
        provenance.close().await?;
        result
    })?;
    // A benchmark client: its report is its output.
    #[allow(clippy::print_stdout)]
    {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(())
}

struct Plan {
    sequential: usize,
    readers: usize,
    concurrent: usize,
}

async fn measure(
    store: &Store,
    provenance: &Provenance,
    patients: &[String],
    plan: &Plan,
) -> Result<serde_json::Value, BoxError> {
    let key = provenance.key_for(Role::Clinician).await?;
    let records = Records::new(store, provenance);
    let request = |i: usize| ReadRequest {
        patient_id: patients[i % patients.len()].clone(),
        categories: Categories::ALL,
        purpose: Purpose::Treatment,
        facility: None,
        history: false,
    };
    // A read returns nothing unless every record in it verified against its anchored batch;
    // the fields returned are counted so that a reader granted nothing cannot pass for fast.
    let read = async |i: usize| -> Result<(Duration, usize), BoxError> {
        #[allow(clippy::disallowed_methods)] // a benchmark's own clock
        let start = Instant::now();
        let view = records.read(&key, &request(i)).await?;
        let fields = view.records.iter().map(|r| r.fields.len()).sum();
        Ok((start.elapsed(), fields))
    };

    // Warm-up: connections to the peers, the batches' anchors checked once.
    for i in 0..20.min(plan.sequential.max(1)) {
        read(i).await?;
    }

    let mut one_at_a_time = Vec::with_capacity(plan.sequential);
    let mut fields = 0;
    for i in 0..plan.sequential {
        let (took, n) = read(i).await?;
        one_at_a_time.push(took);
        fields += n;
    }

    let next = AtomicUsize::new(0);
    #[allow(clippy::disallowed_methods)] // a benchmark's own clock
    let start = Instant::now();
    let loads = (0..plan.readers).map(|_| async {
        let mut mine = Vec::new();
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= plan.concurrent {
                return Ok::<_, BoxError>(mine);
            }
            mine.push(read(plan.sequential + i).await?);
        }
    });
    let done = futures::future::try_join_all(loads).await?;
    let wall = start.elapsed();
    let mut loaded: Vec<Duration> = done.iter().flatten().map(|(d, _)| *d).collect();
    let loaded_fields: usize = done.iter().flatten().map(|(_, n)| n).sum();

    Ok(serde_json::json!({
        "patients": patients.len(),
        "one_at_a_time": {
            "reads": one_at_a_time.len(),
            "fields": fields,
            "p50_ms": percentile(&mut one_at_a_time, 0.50),
            "p99_ms": percentile(&mut one_at_a_time, 0.99),
        },
        "concurrent": {
            "readers": plan.readers,
            "reads": loaded.len(),
            "fields": loaded_fields,
            "seconds": wall.as_secs_f64(),
            "reads_per_second": loaded.len() as f64 / wall.as_secs_f64().max(1e-9),
            "p50_ms": percentile(&mut loaded, 0.50),
            "p99_ms": percentile(&mut loaded, 0.99),
        },
    }))
}

/// The `q` quantile in milliseconds (nearest rank).
fn percentile(samples: &mut [Duration], q: f64) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    samples.sort_unstable();
    let rank = ((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len());
    samples[rank - 1].as_secs_f64() * 1e3
}
