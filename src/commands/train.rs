//! `emrflow train`: flags (or `EMRFLOW_TRAIN_*` variables) → one `ml::TrainParams` (the
//! estimator — a decision tree, a random forest or gradient-boosted trees —, the evaluation and
//! the calibration) in a `provenance::TrainConfig` → `provenance::train_model` → a summary. No
//! training or anchoring logic here.

use clap::{ArgAction, Args};
use ml::{
    CalibrationConfig, ClassWeights, DecisionTreeParams, EvaluationConfig, GbtParams, Impurity,
    ModelParams, RandomForestParams, Step, TrainParams,
};
use provenance::TrainConfig;
use serde::Serialize;

use super::args::{EngineArgs, LedgerArgs, with_ledger};
use super::{ExitStatus, print_json, print_lines, progress};

#[derive(Debug, Args)]
#[command(
    after_help = "Writes model.json (canonical, versioned), metrics.json, tree.txt, tree.dot \
(decision trees), roc.svg, reliability.svg (with a test split), feature_importances.json and \
dataset-manifest.json into --out.\n\n\
Rows are split 80/20 into train and test, and the training rows into --folds folds, by a seeded \
hash of the dataset's row key: the same rows land on the same side whatever the partitioning. \
With --calibration or --threshold, --holdout-fraction of the training rows is held out (by the \
same hash) to calibrate the probabilities and choose the operating threshold, which the model \
keeps and `emrflow predict` uses."
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
    /// Estimator: decision-tree, random-forest or gbt (gradient-boosted trees)
    #[arg(
        long,
        env = "EMRFLOW_TRAIN_MODEL",
        default_value = "decision-tree",
        value_parser = ["decision-tree", "random-forest", "gbt"]
    )]
    model: String,
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
    /// Random forest: number of trees
    #[arg(long, env = "EMRFLOW_TRAIN_NUM_TREES", default_value_t = 20)]
    num_trees: u32,
    /// Ensembles: features each node may split on (auto, all, sqrt, log2, onethird or a
    /// fraction in (0, 1]); auto is sqrt for a forest, all for gbt
    #[arg(
        long,
        env = "EMRFLOW_TRAIN_FEATURE_SUBSET_STRATEGY",
        default_value = "auto"
    )]
    feature_subset_strategy: String,
    /// Ensembles: share of rows per tree (forest: the bootstrap mean; gbt: a fresh subsample per
    /// tree), in (0, 1]
    #[arg(long, env = "EMRFLOW_TRAIN_SUBSAMPLING_RATE", default_value_t = 1.0)]
    subsampling_rate: f64,
    /// Random forest: sample rows with replacement (Poisson bootstrap)
    #[arg(long, env = "EMRFLOW_TRAIN_BOOTSTRAP", default_value_t = true, action = ArgAction::Set)]
    bootstrap: bool,
    /// Gbt: boosting iterations (trees)
    #[arg(long, env = "EMRFLOW_TRAIN_MAX_ITER", default_value_t = 20)]
    max_iter: u32,
    /// Gbt: shrinkage of each tree, in (0, 1]
    #[arg(long, env = "EMRFLOW_TRAIN_STEP_SIZE", default_value_t = 0.1)]
    step_size: f64,
    /// Gbt: L2 regularization of leaf values
    #[arg(long, env = "EMRFLOW_TRAIN_L2_REGULARIZATION", default_value_t = 1.0)]
    l2_regularization: f64,
    /// Gbt: share of training rows held out to stop early (0: grow all --max-iter trees)
    #[arg(long, env = "EMRFLOW_TRAIN_VALIDATION_FRACTION", default_value_t = 0.0)]
    validation_fraction: f64,
    /// Gbt: stop when the validation loss improves by less than this share (MLlib's
    /// validationTol)
    #[arg(long, env = "EMRFLOW_TRAIN_VALIDATION_TOL", default_value_t = 0.01)]
    validation_tol: f64,
    /// Calibrate probabilities on held-out training rows: none, platt or isotonic
    #[arg(long, env = "EMRFLOW_TRAIN_CALIBRATION", default_value = "none")]
    calibration: String,
    /// Operating threshold rule, chosen on held-out training rows: default (0.5), max-f1,
    /// recall=R or cost=C (a missed positive costs C false alarms)
    #[arg(long, env = "EMRFLOW_TRAIN_THRESHOLD", default_value = "default")]
    threshold: String,
    /// Share of training rows held out for calibration and the threshold, in (0, 1)
    #[arg(long, env = "EMRFLOW_TRAIN_HOLDOUT_FRACTION", default_value_t = 0.2)]
    holdout_fraction: f64,
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
    fn params(&self) -> anyhow::Result<TrainParams> {
        let tree = DecisionTreeParams {
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
        let model = match self.model.as_str() {
            "random-forest" => ModelParams::RandomForest(RandomForestParams {
                num_trees: self.num_trees,
                feature_subset_strategy: self.feature_subset_strategy.parse()?,
                subsampling_rate: self.subsampling_rate,
                bootstrap: self.bootstrap,
                tree,
            }),
            "gbt" => ModelParams::Gbt(GbtParams {
                max_iter: self.max_iter,
                step_size: self.step_size,
                max_depth: tree.max_depth,
                max_bins: tree.max_bins,
                min_instances_per_node: tree.min_instances_per_node,
                min_info_gain: tree.min_info_gain,
                l2_regularization: self.l2_regularization,
                subsampling_rate: self.subsampling_rate,
                feature_subset_strategy: self.feature_subset_strategy.parse()?,
                validation_fraction: self.validation_fraction,
                validation_tol: self.validation_tol,
                class_weights: tree.class_weights,
                weight_column: tree.weight_column,
                seed: tree.seed,
                max_memory_mb: tree.max_memory_mb,
            }),
            _ => ModelParams::DecisionTree(tree),
        };
        let params = TrainParams {
            model,
            evaluation: EvaluationConfig {
                test_fraction: self.test_fraction,
                folds: self.folds,
            },
            calibration: CalibrationConfig {
                method: self.calibration.parse()?,
                threshold: self.threshold.parse()?,
                holdout_fraction: self.holdout_fraction,
            },
        };
        params.validate()?;
        Ok(params)
    }
}

#[derive(Serialize)]
struct TrainSummary<'a> {
    out: String,
    model_root: String,
    dataset_root: String,
    ledger_height: u64,
    model_sha256: String,
    model: &'static str,
    trees: usize,
    depth: u32,
    nodes: usize,
    rows: u64,
    train_rows: u64,
    holdout_rows: u64,
    test_rows: u64,
    test: Option<&'a ml::BinaryMetrics>,
    test_at_threshold: Option<&'a ml::ThresholdMetrics>,
    baseline_always_negative: Option<&'a ml::BinaryMetrics>,
    brier: Option<f64>,
    brier_uncalibrated: Option<f64>,
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
        Step::Calibrating => "calibrating on the held-out rows".to_string(),
        Step::Test => "evaluating on the test rows".to_string(),
        Step::Explaining => "explaining test rows".to_string(),
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
        model: model.kind(),
        trees: model.num_trees(),
        depth: model.depth(),
        nodes: model.num_nodes(),
        rows: report.rows,
        train_rows: report.train_rows,
        holdout_rows: report.holdout_rows,
        test_rows: report.test_rows,
        test: report.test.as_ref(),
        test_at_threshold: report.test_at_threshold.as_ref(),
        baseline_always_negative: report.baseline.as_ref(),
        brier: report.calibration.as_ref().and_then(|c| c.brier),
        brier_uncalibrated: report
            .calibration
            .as_ref()
            .and_then(|c| c.brier_uncalibrated),
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
    let what = match model {
        ml::Model::DecisionTree(_) => "a decision tree".to_string(),
        ml::Model::RandomForest(m) => format!("a random forest of {} trees", m.trees.len()),
        ml::Model::Gbt(m) => format!("{} gradient-boosted trees", m.trees.len()),
    };
    let held_out = if report.holdout_rows > 0 {
        format!(", {} held out", report.holdout_rows)
    } else {
        String::new()
    };
    let mut lines = vec![
        format!(
            "trained {what} on {} ({} rows: {} train{held_out}, {} test) in {seconds:.2} s",
            args.dataset, report.rows, report.train_rows, report.test_rows
        ),
        format!(
            "  depth {}, {} nodes, {} passes over the data",
            model.depth(),
            model.num_nodes(),
            model.passes()
        ),
    ];
    if let ml::Model::Gbt(m) = model
        && let Some(e) = &m.early_stopping
    {
        lines.push(format!(
            "  early stopping on {} validation rows kept {} of {} trees",
            e.validation_rows,
            e.kept,
            e.losses.len()
        ));
    }
    if let Some(m) = &report.test {
        lines.push(metrics_line("test", m));
        let c = &m.confusion;
        lines.push(format!(
            "  {:<22} TN {}  FP {}  FN {}  TP {}",
            "confusion", c.true_negative, c.false_positive, c.false_negative, c.true_positive
        ));
    }
    if let Some(t) = &report.test_at_threshold {
        let name = format!("at threshold {:.3}", t.operating_point.threshold);
        lines.push(metrics_line(&name, &t.metrics));
        let c = &t.metrics.confusion;
        lines.push(format!(
            "  {:<22} TN {}  FP {}  FN {}  TP {}  (rule {})",
            "confusion",
            c.true_negative,
            c.false_positive,
            c.false_negative,
            c.true_positive,
            t.operating_point.rule
        ));
    }
    if let Some(c) = &report.calibration {
        let brier = |b: Option<f64>| b.map_or_else(|| "n/a".to_string(), |v| format!("{v:.4}"));
        lines.push(format!(
            "  {:<22} {} (model's own {}, base rate {})",
            "Brier score",
            brier(c.brier),
            brier(c.brier_uncalibrated),
            brier(c.brier_base_rate)
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
        .map(|i| {
            format!(
                "{} {:.2} (|SHAP| {:.2})",
                i.feature, i.importance, i.mean_abs_contribution
            )
        })
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
