//! `emrflow demo`: the whole flow on one machine with embedded defaults.

use std::path::PathBuf;

use clap::Args;
use ml::{DecisionTreeParams, EvaluationConfig, ModelParams, Step, TrainParams};
use pipeline::generate::{DEFAULT_VISITS, GenerateConfig, OutputFormat, generate};
use pipeline::{Job, RunOptions};
use serde::Serialize;

use super::provenance::{LedgerArgs, Provenance};
use super::run::Published;
use super::train::Trained;
use super::verify::verify_path;
use super::{ExitStatus, print_json, print_lines, progress};

/// The synthetic job, compiled in so the demo runs from any directory.
const SYNTHETIC_JOB: &str = include_str!("../../examples/stroke-synthetic.toml");

#[derive(Debug, Args)]
#[command(
    after_help = "Generates visits, runs examples/stroke-synthetic.toml, trains a depth-10 \
tree with 5-fold cross-validation, anchors the dataset (and its raw inputs) and the model on the \
embedded four-peer ledger in DIR/ledger, verifies both, and prints the metrics, the roots and \
where everything is. Rerunning reuses the directory: identical outputs keep their anchors."
)]
pub(crate) struct DemoArgs {
    /// Working directory for generated data, keys, the ledger and outputs
    #[arg(long, default_value = "emrflow-demo")]
    dir: PathBuf,
    /// Number of visits to generate
    #[arg(long, default_value_t = DEFAULT_VISITS)]
    visits: u64,
    /// Generator seed
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Tree depth
    #[arg(long, default_value_t = 10)]
    max_depth: usize,
    /// Cross-validation folds
    #[arg(long, default_value_t = 5)]
    folds: u32,
    /// Print a JSON summary on stdout
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    ledger: LedgerArgs,
}

#[derive(Serialize)]
struct DemoSummary<'a> {
    dir: String,
    visits: u64,
    ledger: String,
    dataset: &'a Published,
    model: ModelSummary<'a>,
    verified: Verified,
    seconds: f64,
}

#[derive(Serialize)]
struct ModelSummary<'a> {
    dir: String,
    root: String,
    dataset_root: String,
    ledger_height: u64,
    depth: u32,
    nodes: usize,
    test: Option<&'a ml::BinaryMetrics>,
    cross_validation: Option<&'a ml::CrossValidation>,
}

#[derive(Serialize)]
struct Verified {
    dataset: bool,
    model: bool,
}

pub(crate) async fn run(mut args: DemoArgs) -> anyhow::Result<ExitStatus> {
    #[allow(clippy::disallowed_methods)] // the demo reports its own wall-clock time
    let started = std::time::Instant::now();
    let data = args.dir.join("data");
    let bar = progress(&format!("generating {} visits", args.visits));
    let config = GenerateConfig {
        visits: args.visits,
        seed: args.seed,
        format: OutputFormat::Csv,
    };
    let data_dir = data.clone();
    tokio::task::spawn_blocking(move || generate(&config, &data_dir)).await??;
    bar.finish_and_clear();

    if args.ledger.ledger.is_none() {
        args.ledger.ledger = Some(args.dir.join("ledger"));
    }
    let provenance = Provenance::open(&args.ledger).await?;
    let result = demo(&args, &data, &provenance).await;
    let describe = provenance.describe.clone();
    provenance.close().await?;
    let (dataset, trained, verified, model_dir) = result?;
    let seconds = started.elapsed().as_secs_f64();
    let report = &trained.report;
    let model = ModelSummary {
        dir: model_dir.display().to_string(),
        root: trained.root.to_hex(),
        dataset_root: trained.dataset_root.to_hex(),
        ledger_height: trained.height,
        depth: report.model.depth(),
        nodes: report.model.num_nodes(),
        test: report.test.as_ref(),
        cross_validation: report.cross_validation.as_ref(),
    };
    if args.json {
        print_json(&DemoSummary {
            dir: args.dir.display().to_string(),
            visits: args.visits,
            ledger: describe,
            dataset: &dataset,
            model,
            verified,
            seconds,
        })?;
        return Ok(ExitStatus::Success);
    }
    super::run::report(&dataset, false)?;
    let mut lines = vec![format!(
        "trained a depth-{} tree ({} nodes) on {} rows ({} train, {} test)",
        model.depth, model.nodes, report.rows, report.train_rows, report.test_rows
    )];
    if let Some(m) = &report.test {
        lines.push(format!(
            "  test: accuracy {:.3}  precision {:.3}  recall {:.3}  F1 {:.3}  ROC AUC {}",
            m.accuracy,
            m.precision,
            m.recall,
            m.f1,
            m.roc_auc
                .map_or_else(|| "n/a".into(), |a| format!("{a:.3}"))
        ));
    }
    if let Some(cv) = &report.cross_validation {
        lines.push(format!(
            "  {}-fold CV: accuracy {:.3} ± {:.3}  F1 {:.3} ± {:.3}",
            cv.folds.len(),
            cv.accuracy.mean,
            cv.accuracy.sd,
            cv.f1.mean,
            cv.f1.sd
        ));
    }
    lines.push(format!(
        "  model root {} anchored at height {} (parent: dataset {})",
        model.root, model.ledger_height, model.dataset_root
    ));
    lines.push(format!(
        "verified: dataset {}, model {} against {describe}",
        if verified.dataset { "OK" } else { "MISMATCH" },
        if verified.model { "OK" } else { "MISMATCH" }
    ));
    lines.push(format!("  dataset: {}", dataset.summary.output));
    lines.push(format!("  model:   {}", model.dir));
    lines.push(format!(
        "  next: emrflow lineage {} --ledger {}",
        model.root,
        args.dir.join("ledger").display()
    ));
    lines.push(format!(
        "demo finished in {seconds:.1} s in {}",
        args.dir.display()
    ));
    print_lines(&lines);
    Ok(if verified.dataset && verified.model {
        ExitStatus::Success
    } else {
        ExitStatus::Mismatch
    })
}

async fn demo(
    args: &DemoArgs,
    data: &std::path::Path,
    provenance: &Provenance,
) -> anyhow::Result<(Published, Trained, Verified, PathBuf)> {
    let key_file = demo_key(&args.dir)?;
    let job = Job::from_toml(SYNTHETIC_JOB, "examples/stroke-synthetic.toml")?;
    let options = RunOptions {
        input_overrides: [
            (
                "visits".to_string(),
                data.join("visits.csv").display().to_string(),
            ),
            (
                "patients".to_string(),
                data.join("patients.csv").display().to_string(),
            ),
        ]
        .into_iter()
        .collect(),
        output_override: Some(
            args.dir
                .join("datasets/stroke-synthetic")
                .display()
                .to_string(),
        ),
        overwrite: true,
        key_file_override: Some(key_file.display().to_string()),
        cache_limit: Some(pipeline::default_cache_limit()),
        ..RunOptions::default()
    };
    let embedded = super::cluster::EngineArgs::embedded();
    let dataset = super::run::run_anchored(&job, &options, &embedded, provenance).await?;

    let params = DecisionTreeParams {
        max_depth: args.max_depth,
        ..DecisionTreeParams::default()
    };
    params.validate()?;
    let evaluation = EvaluationConfig {
        folds: args.folds,
        ..EvaluationConfig::default()
    };
    evaluation.validate()?;
    let params = TrainParams {
        model: ModelParams::DecisionTree(params),
        evaluation,
        ..TrainParams::default()
    };
    let model_dir = args.dir.join("models/stroke-tree");
    let bar = progress("training");
    let step_bar = bar.clone();
    let on_step = move |step: Step| step_bar.set_message(super::train::step_message(step));
    let dataset_dir = PathBuf::from(&dataset.summary.output);
    let trained = super::train::train_dataset(
        &dataset_dir,
        None,
        &params,
        &embedded,
        &model_dir,
        true,
        provenance,
        &on_step,
    )
    .await;
    bar.finish_and_clear();
    let trained = trained?;

    let dataset_ok = verify_path(&dataset_dir, &embedded, provenance)
        .await?
        .matches;
    let model_ok = verify_path(&model_dir, &embedded, provenance)
        .await?
        .matches;
    Ok((
        dataset,
        trained,
        Verified {
            dataset: dataset_ok,
            model: model_ok,
        },
        model_dir,
    ))
}

/// A pseudonymization key kept in the demo directory (created once, readable by the owner only),
/// so reruns give the same pseudonyms.
fn demo_key(dir: &std::path::Path) -> anyhow::Result<PathBuf> {
    let secrets = dir.join("secrets");
    std::fs::create_dir_all(&secrets)?;
    let path = secrets.join("pseudonym.key");
    if !path.exists() {
        let key: [u8; 32] = rand_key();
        std::fs::write(&path, format!("{}\n", hex_encode(&key)))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        }
    }
    Ok(path)
}

fn rand_key() -> [u8; 32] {
    // A fresh key per demo directory; uuid's v4 generator draws from the OS.
    let a = uuid::Uuid::new_v4();
    let b = uuid::Uuid::new_v4();
    let mut key = [0u8; 32];
    key[..16].copy_from_slice(a.as_bytes());
    key[16..].copy_from_slice(b.as_bytes());
    key
}

fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
