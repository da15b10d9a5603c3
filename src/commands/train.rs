//! `emrflow train`: flags (or `EMRFLOW_TRAIN_*` variables) → `ml::DecisionTreeParams`,
//! `ml::EvaluationConfig` and a `provenance::TrainConfig` → `provenance::train_model` → a
//! summary. No training or anchoring logic here.

use clap::Args;
use ml::{ClassWeights, DecisionTreeParams, EvaluationConfig, Impurity, Step};
use provenance::TrainConfig;
use serde::Serialize;

use super::args::{EngineArgs, LedgerArgs, with_ledger};
use super::{ExitStatus, print_json, print_lines, progress};

#[derive(Debug, Args)]
#[command(
    after_help = "Writes model.json (canonical, versioned), metrics.json, tree.txt, tree.dot, \
roc.svg, feature_importances.json and dataset-manifest.json into --out.\n\n\
Rows are split 80/20 into train and test, and the training rows into --folds folds, by a seeded \
hash of the dataset's row key: the same rows land on the same side whatever the partitioning."
)]
pub(crate) struct TrainArgs {
    /// Dataset published by `emrflow run` (manifest.json + part-*.parquet): a directory or a
    /// memory:// or s3:// URL
    #[arg(long, value_name = "DIR|URL")]
    dataset: String,
    /// Label column (default: the manifest's label); must be 0/1
    #[arg(long)]
    label: Option<String>,
    /// Model directory to publish: a path or a memory:// or s3:// URL
    #[arg(long, value_name = "MODEL_DIR|URL")]
    out: String,
    /// Largest tree depth, 1..=30
    #[arg(long, env = "EMRFLOW_TRAIN_MAX_DEPTH", default_value_t = 5)]
    max_depth: usize,
    /// Largest number of bins (split candidates + 1) per continuous feature
    #[arg(long, env = "EMRFLOW_TRAIN_MAX_BINS", default_value_t = 32)]
    max_bins: usize,
    /// Fewest rows a child of a split may have
    #[arg(
        long,
        env = "EMRFLOW_TRAIN_MIN_INSTANCES_PER_NODE",
        default_value_t = 1
    )]
    min_instances_per_node: u64,
    /// Smallest impurity decrease a split must bring
    #[arg(long, env = "EMRFLOW_TRAIN_MIN_INFO_GAIN", default_value_t = 0.0)]
    min_info_gain: f64,
    /// Split criterion: gini or entropy
    #[arg(long, env = "EMRFLOW_TRAIN_IMPURITY", default_value = "gini")]
    impurity: String,
    /// Class weights: none, balanced, or W0,W1 (e.g. 1,19)
    #[arg(long, env = "EMRFLOW_TRAIN_CLASS_WEIGHTS", default_value = "none")]
    class_weights: String,
    /// Column of non-negative row weights
    #[arg(long, env = "EMRFLOW_TRAIN_WEIGHT_COLUMN")]
    weight_column: Option<String>,
    /// Seed of the train/test split, the folds and the sketch sample
    #[arg(long, env = "EMRFLOW_TRAIN_SEED", default_value_t = 42)]
    seed: u64,
    /// Histogram memory per pass in MiB (bounds the nodes split per pass, like maxMemoryInMB)
    #[arg(long, env = "EMRFLOW_TRAIN_MAX_MEMORY_MB", default_value_t = 256)]
    max_memory_mb: usize,
    /// Cross-validation folds (0 to skip)
    #[arg(long, env = "EMRFLOW_TRAIN_FOLDS", default_value_t = 5)]
    folds: u32,
    /// Share of rows held out for testing, in [0, 1)
    #[arg(long, env = "EMRFLOW_TRAIN_TEST_FRACTION", default_value_t = 0.2)]
    test_fraction: f64,
    #[command(flatten)]
    engine: EngineArgs,
    /// Replace the model directory if it already exists
    #[arg(long)]
    overwrite: bool,
    /// Print a JSON summary on stdout
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    ledger: LedgerArgs,
}

impl TrainArgs {
    fn params(&self) -> anyhow::Result<DecisionTreeParams> {
        let params = DecisionTreeParams {
            max_depth: self.max_depth,
            max_bins: self.max_bins,
            min_instances_per_node: self.min_instances_per_node,
            min_info_gain: self.min_info_gain,
            impurity: self.impurity.parse::<Impurity>()?,
            class_weights: self.class_weights.parse::<ClassWeights>()?,
            weight_column: self.weight_column.clone(),
            seed: self.seed,
            max_memory_mb: self.max_memory_mb,
        };
        params.validate()?;
        Ok(params)
    }

    fn evaluation(&self) -> anyhow::Result<EvaluationConfig> {
        let evaluation = EvaluationConfig {
            test_fraction: self.test_fraction,
            folds: self.folds,
        };
        evaluation.validate()?;
        Ok(evaluation)
    }
}

#[derive(Serialize)]
struct TrainSummary<'a> {
    out: String,
    model_root: String,
    dataset_root: String,
    ledger_height: u64,
    model_sha256: String,
    depth: u32,
    nodes: usize,
    rows: u64,
    train_rows: u64,
    test_rows: u64,
    test: Option<&'a ml::BinaryMetrics>,
    baseline_always_negative: Option<&'a ml::BinaryMetrics>,
    cross_validation: Option<CvSummary>,
    feature_importances: Vec<ml::report::Importance>,
    seconds: f64,
    /// Of `seconds`: checking the dataset against its anchor.
    verify_seconds: f64,
    /// Of `seconds`: reading, binning, growing and evaluating (what a `fit` call does).
    training_seconds: f64,
}

#[derive(Serialize)]
struct CvSummary {
    folds: usize,
    accuracy: ml::MeanSd,
    precision: ml::MeanSd,
    recall: ml::MeanSd,
    f1: ml::MeanSd,
    roc_auc: Option<ml::MeanSd>,
    pr_auc: Option<ml::MeanSd>,
}

/// What a training step is doing, for the progress spinner; shared with `demo`.
pub(crate) fn step_message(step: Step) -> String {
    match step {
        Step::Binning => "binning the dataset".to_string(),
        Step::Fold(k, n) => format!("cross-validation fold {k}/{n}"),
        Step::Final => "training the final model".to_string(),
        Step::Test => "evaluating on the test rows".to_string(),
    }
}

fn pct(x: f64) -> String {
    format!("{:.1}%", 100.0 * x)
}

fn auc(x: Option<f64>) -> String {
    x.map_or_else(|| "n/a".to_string(), |v| format!("{v:.3}"))
}

fn metrics_line(name: &str, m: &ml::BinaryMetrics) -> String {
    format!(
        "  {name:<22} accuracy {}  precision {}  recall {}  F1 {}  ROC AUC {}  PR AUC {}",
        pct(m.accuracy),
        pct(m.precision),
        pct(m.recall),
        pct(m.f1),
        auc(m.roc_auc),
        auc(m.pr_auc)
    )
}

fn mean_sd(m: &ml::MeanSd) -> String {
    format!("{:.3} ± {:.3}", m.mean, m.sd)
}

pub(crate) async fn run(args: TrainArgs) -> anyhow::Result<ExitStatus> {
    let config = TrainConfig {
        dataset: args.dataset.clone(),
        label: args.label.clone(),
        params: args.params()?,
        evaluation: args.evaluation()?,
        out: args.out.clone(),
        overwrite: args.overwrite,
    };
    #[allow(clippy::disallowed_methods)] // the command reports its own wall-clock time
    let started = std::time::Instant::now();
    let bar = progress("training");
    let step_bar = bar.clone();
    let on_step = move |step: Step| step_bar.set_message(step_message(step));
    let engine = args.engine.engine();
    let trained = with_ledger(&args.ledger, async |p| {
        provenance::train_model(&config, &engine, p, &on_step).await
    })
    .await;
    bar.finish_and_clear();
    let trained = trained?;
    let report = &trained.report;
    let seconds = started.elapsed().as_secs_f64();
    let model = &report.model;
    let cv = report.cross_validation.as_ref().map(|cv| CvSummary {
        folds: cv.folds.len(),
        accuracy: cv.accuracy,
        precision: cv.precision,
        recall: cv.recall,
        f1: cv.f1,
        roc_auc: cv.roc_auc,
        pr_auc: cv.pr_auc,
    });
    let summary = TrainSummary {
        out: args.out.clone(),
        model_root: trained.root.to_hex(),
        dataset_root: trained.dataset_root.to_hex(),
        ledger_height: trained.height,
        model_sha256: model.sha256_hex()?,
        depth: model.depth(),
        nodes: model.num_nodes(),
        rows: report.rows,
        train_rows: report.train_rows,
        test_rows: report.test_rows,
        test: report.test.as_ref(),
        baseline_always_negative: report.baseline.as_ref(),
        cross_validation: cv,
        feature_importances: report.importances(),
        seconds,
        verify_seconds: trained.verify_seconds,
        training_seconds: trained.training_seconds,
    };
    if args.json {
        print_json(&summary)?;
        return Ok(ExitStatus::Success);
    }
    let mut lines = vec![
        format!(
            "trained a decision tree on {} ({} rows: {} train, {} test) in {seconds:.2} s",
            args.dataset, report.rows, report.train_rows, report.test_rows
        ),
        format!(
            "  depth {}, {} nodes, {} passes over the data",
            model.depth(),
            model.num_nodes(),
            model.training.passes
        ),
    ];
    if let Some(m) = &report.test {
        lines.push(metrics_line("test", m));
        let c = &m.confusion;
        lines.push(format!(
            "  {:<22} TN {}  FP {}  FN {}  TP {}",
            "confusion", c.true_negative, c.false_positive, c.false_negative, c.true_positive
        ));
    }
    if let Some(m) = &report.baseline {
        lines.push(metrics_line("always-negative", m));
    }
    if let Some(cv) = &summary.cross_validation {
        lines.push(format!(
            "  {:<22} accuracy {}  precision {}  recall {}  F1 {}  ROC AUC {}",
            format!("cv ({} folds)", cv.folds),
            mean_sd(&cv.accuracy),
            mean_sd(&cv.precision),
            mean_sd(&cv.recall),
            mean_sd(&cv.f1),
            cv.roc_auc
                .as_ref()
                .map_or_else(|| "n/a".to_string(), mean_sd)
        ));
    }
    let top: Vec<String> = summary
        .feature_importances
        .iter()
        .take(5)
        .filter(|i| i.importance > 0.0)
        .map(|i| format!("{} {:.2}", i.feature, i.importance))
        .collect();
    lines.push(format!("  top features: {}", top.join(", ")));
    lines.push(format!(
        "  model {}/{} (root {}, anchored at height {}; trained on dataset {})",
        args.out.trim_end_matches('/'),
        ml::report::files::MODEL,
        summary.model_root,
        summary.ledger_height,
        summary.dataset_root
    ));
    print_lines(&lines);
    Ok(ExitStatus::Success)
}
