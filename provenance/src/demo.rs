//! The whole flow on one machine with embedded defaults: generate visits, preprocess them with
//! the synthetic example job, train and cross-validate a tree, anchor the dataset (and its raw
//! inputs) and the model on the embedded ledger, and verify both. Each step is reported as it
//! starts and ends, so the caller can show what is happening and how long it took.

use std::path::{Path, PathBuf};
use std::time::Instant;

use engine::Engine;
use ledger::contracts::Role;
use ml::{DecisionTreeParams, EvaluationConfig, ModelParams, Step, TrainParams};
use pipeline::generate::{GenerateConfig, GenerateSummary, OutputFormat, generate};
use pipeline::{Job, Progress, RunOptions};
use serde::Serialize;

use crate::check::{Verdict, verify};
use crate::connection::{Accessor, LedgerConfig, Provenance};
use crate::error::{Error, Result};
use crate::publish::{Published, publish_dataset};
use crate::train::{TrainConfig, Trained, train_model};

/// The demo verifies as the compliance officer would.
const COMPLIANCE: Accessor<'static> = Accessor::Role(Role::Compliance);

/// The synthetic job, compiled in so the demo runs from any directory.
const SYNTHETIC_JOB: &str = include_str!("../../examples/stroke-synthetic.toml");

/// What the demo generates and trains.
#[derive(Debug, Clone)]
pub struct DemoConfig {
    /// Working directory for generated data, the key, the ledger and the outputs.
    pub dir: PathBuf,
    /// Visits to generate.
    pub visits: u64,
    /// Generator seed.
    pub seed: u64,
    /// Tree depth.
    pub max_depth: usize,
    /// Cross-validation folds.
    pub folds: u32,
    /// The ledger (default: an embedded ledger in `dir/ledger`).
    pub ledger: LedgerConfig,
}

/// A step of the demo.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DemoStep {
    /// Writing synthetic visits and patients.
    Generating,
    /// Starting the ledger.
    OpeningLedger,
    /// Running the job (de-identify, clean, normalize, join) and anchoring the dataset.
    Preprocessing,
    /// Training, cross-validating and anchoring the model.
    Training,
    /// Checking the dataset and the model against their anchors.
    Verifying,
}

impl DemoStep {
    /// What the step does, in words.
    pub fn describe(self) -> &'static str {
        match self {
            DemoStep::Generating => "generating synthetic EMRs",
            DemoStep::OpeningLedger => "starting the four-peer ledger",
            DemoStep::Preprocessing => "preprocessing and anchoring the dataset",
            DemoStep::Training => "training, cross-validating and anchoring the model",
            DemoStep::Verifying => "verifying the dataset and the model against the ledger",
        }
    }
}

/// What the demo reports as it goes.
pub trait DemoProgress: Progress {
    /// A step began.
    fn begin(&self, step: DemoStep);
    /// A step ended after `seconds`.
    fn end(&self, step: DemoStep, seconds: f64);
    /// A training step (binning, a fold, the final model) began.
    fn training(&self, step: Step);
}

/// Everything the demo made.
#[derive(Debug)]
pub struct DemoOutcome {
    /// What was generated.
    pub generated: GenerateSummary,
    /// The published dataset.
    pub dataset: Published,
    /// The trained model.
    pub trained: Trained,
    /// The dataset's verdict.
    pub dataset_verdict: Verdict,
    /// The model's verdict.
    pub model_verdict: Verdict,
    /// The model directory.
    pub model_dir: PathBuf,
    /// The ledger, in words.
    pub ledger: String,
}

/// Runs the demo.
pub async fn run_demo(config: &DemoConfig, progress: &dyn DemoProgress) -> Result<DemoOutcome> {
    let step = |s: DemoStep| {
        progress.begin(s);
        now()
    };
    let data = config.dir.join("data");
    let started = step(DemoStep::Generating);
    let generate_config = GenerateConfig {
        visits: config.visits,
        seed: config.seed,
        format: OutputFormat::Csv,
        gzip: false,
    };
    let data_dir = data.clone();
    let generated = tokio::task::spawn_blocking(move || generate(&generate_config, &data_dir))
        .await
        .map_err(|e| Error::invalid(format!("the generator stopped: {e}")))??;
    progress.end(DemoStep::Generating, started.elapsed().as_secs_f64());

    let started = step(DemoStep::OpeningLedger);
    let mut ledger = config.ledger.clone();
    if ledger.ledger.is_none() {
        ledger.ledger = Some(config.dir.join("ledger"));
    }
    let provenance = Provenance::open(&ledger).await?;
    progress.end(DemoStep::OpeningLedger, started.elapsed().as_secs_f64());
    let result = demo(config, &data, &provenance, progress).await;
    let describe = provenance.describe().to_string();
    provenance.close().await?;
    let (dataset, trained, dataset_verdict, model_verdict, model_dir) = result?;
    Ok(DemoOutcome {
        generated,
        dataset,
        trained,
        dataset_verdict,
        model_verdict,
        model_dir,
        ledger: describe,
    })
}

async fn demo(
    config: &DemoConfig,
    data: &Path,
    provenance: &Provenance,
    progress: &dyn DemoProgress,
) -> Result<(Published, Trained, Verdict, Verdict, PathBuf)> {
    let key_file = demo_key(&config.dir)?;
    let job = Job::from_toml(SYNTHETIC_JOB, "examples/stroke-synthetic.toml")?;
    let dataset_dir = config.dir.join("datasets/stroke-synthetic");
    let options = RunOptions {
        input_overrides: [
            ("visits", data.join("visits.csv")),
            ("patients", data.join("patients.csv")),
        ]
        .into_iter()
        .map(|(name, path)| (name.to_string(), path.display().to_string()))
        .collect(),
        output_override: Some(dataset_dir.display().to_string()),
        overwrite: true,
        key_file_override: Some(key_file.display().to_string()),
        cache_limit: Some(pipeline::default_cache_limit()),
        ..RunOptions::default()
    };
    let embedded = Engine::embedded();
    progress.begin(DemoStep::Preprocessing);
    let started = now();
    let dataset = publish_dataset(&job, &options, &embedded, provenance, progress).await?;
    progress.end(DemoStep::Preprocessing, started.elapsed().as_secs_f64());

    progress.begin(DemoStep::Training);
    let started = now();
    let model_dir = config.dir.join("models/stroke-tree");
    let train = TrainConfig {
        dataset: dataset.summary.output.clone(),
        label: None,
        params: TrainParams {
            model: ModelParams::DecisionTree(DecisionTreeParams {
                max_depth: config.max_depth,
                ..DecisionTreeParams::default()
            }),
            evaluation: EvaluationConfig {
                folds: config.folds,
                ..EvaluationConfig::default()
            },
            ..TrainParams::default()
        },
        out: model_dir.display().to_string(),
        overwrite: true,
    };
    let on_step = |s: Step| progress.training(s);
    let trained = train_model(&train, &embedded, provenance, &on_step).await?;
    progress.end(DemoStep::Training, started.elapsed().as_secs_f64());

    progress.begin(DemoStep::Verifying);
    let started = now();
    let dataset_verdict =
        verify(&embedded, &dataset.summary.output, provenance, COMPLIANCE).await?;
    let model_verdict = verify(&embedded, &train.out, provenance, COMPLIANCE).await?;
    progress.end(DemoStep::Verifying, started.elapsed().as_secs_f64());
    Ok((dataset, trained, dataset_verdict, model_verdict, model_dir))
}

/// The clock, read only to report how long each step took.
#[allow(clippy::disallowed_methods)] // each step's time is reported
fn now() -> Instant {
    Instant::now()
}

/// A pseudonymization key kept in the demo directory (created once with 32 random bytes,
/// readable by the owner only), so reruns give the same pseudonyms.
fn demo_key(dir: &Path) -> Result<PathBuf> {
    let secrets = dir.join("secrets");
    let io = |action: &'static str, path: &Path| {
        let path = path.display().to_string();
        move |source| Error::Io {
            action,
            path,
            source,
        }
    };
    std::fs::create_dir_all(&secrets).map_err(io("cannot create", &secrets))?;
    let path = secrets.join("pseudonym.key");
    if path.exists() {
        return Ok(path);
    }
    // uuid's v4 generator draws from the operating system.
    let mut key = [0u8; 32];
    key[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    key[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    let text: String = key.iter().map(|b| format!("{b:02x}")).collect();
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&path).map_err(io("cannot create", &path))?;
    std::io::Write::write_all(&mut file, format!("{text}\n").as_bytes())
        .map_err(io("cannot write", &path))?;
    Ok(path)
}
