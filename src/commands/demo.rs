//! `emrflow demo`: flags → `provenance::demo::run_demo` → each step with its time as it
//! happens, then the metrics, the roots, where everything is and what to try next.

use std::io::IsTerminal;
use std::path::PathBuf;

use clap::Args;
use indicatif::ProgressBar;
use pipeline::Progress;
use pipeline::generate::DEFAULT_VISITS;
use provenance::demo::{DemoConfig, DemoOutcome, DemoProgress, DemoStep};
use serde::Serialize;

use super::args::LedgerArgs;
use super::{ExitStatus, print_json, print_lines, progress};

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
    ledger: &'a str,
    dataset: &'a provenance::Published,
    model: ModelSummary<'a>,
    verified: Verified,
    steps: &'a [(DemoStep, f64)],
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
    baseline_always_negative: Option<&'a ml::BinaryMetrics>,
    cross_validation: Option<&'a ml::CrossValidation>,
}

#[derive(Serialize)]
struct Verified {
    dataset: bool,
    model: bool,
}

/// Each step as a line on stderr when it ends (unless --json), and the spinner while it runs.
struct StepReport {
    bar: ProgressBar,
    quiet: bool,
    steps: std::sync::Mutex<Vec<(DemoStep, f64)>>,
}

impl Progress for StepReport {
    fn stage(&self, name: &str) {
        self.bar.set_message(name.to_string());
    }
    fn rows(&self, n: u64) {
        self.bar.inc(n);
    }
}

impl DemoProgress for StepReport {
    fn begin(&self, step: DemoStep) {
        self.bar.set_position(0);
        self.bar.set_message(step.describe());
    }

    #[allow(clippy::print_stderr)] // the demo narrates its steps for the person watching it
    fn end(&self, step: DemoStep, seconds: f64) {
        if let Ok(mut steps) = self.steps.lock() {
            steps.push((step, seconds));
        }
        if !self.quiet {
            self.bar
                .suspend(|| eprintln!("  {:<56} {seconds:>6.2} s", step.describe()));
        }
    }

    fn training(&self, step: ml::Step) {
        self.bar.set_message(super::train::step_message(step));
    }
}

pub(crate) async fn run(args: DemoArgs) -> anyhow::Result<ExitStatus> {
    #[allow(clippy::disallowed_methods)] // the demo reports its own wall-clock time
    let started = std::time::Instant::now();
    let config = DemoConfig {
        dir: args.dir.clone(),
        visits: args.visits,
        seed: args.seed,
        max_depth: args.max_depth,
        folds: args.folds,
        ledger: args.ledger.config(),
    };
    let report = StepReport {
        bar: progress("starting"),
        quiet: args.json,
        steps: std::sync::Mutex::new(Vec::new()),
    };
    if !args.json && !std::io::stderr().is_terminal() {
        // Without a spinner, say where the time will go before it goes.
        report.bar.suspend(|| {
            #[allow(clippy::print_stderr)]
            {
                eprintln!(
                    "emrflow demo: {} visits in {}",
                    args.visits,
                    args.dir.display()
                );
            }
        });
    }
    let outcome = Box::pin(provenance::demo::run_demo(&config, &report)).await;
    report.bar.finish_and_clear();
    let outcome = outcome?;
    let seconds = started.elapsed().as_secs_f64();
    let steps = report.steps.lock().map(|s| s.clone()).unwrap_or_default();
    print_outcome(&args, &outcome, &steps, seconds)
}

fn print_outcome(
    args: &DemoArgs,
    outcome: &DemoOutcome,
    steps: &[(DemoStep, f64)],
    seconds: f64,
) -> anyhow::Result<ExitStatus> {
    let trained = &outcome.trained;
    let report = &trained.report;
    let verified = Verified {
        dataset: outcome.dataset_verdict.matches,
        model: outcome.model_verdict.matches,
    };
    let status = if verified.dataset && verified.model {
        ExitStatus::Success
    } else {
        ExitStatus::Mismatch
    };
    let model = ModelSummary {
        dir: outcome.model_dir.display().to_string(),
        root: trained.root.to_hex(),
        dataset_root: trained.dataset_root.to_hex(),
        ledger_height: trained.height,
        depth: report.model.depth(),
        nodes: report.model.num_nodes(),
        test: report.test.as_ref(),
        baseline_always_negative: report.baseline.as_ref(),
        cross_validation: report.cross_validation.as_ref(),
    };
    if args.json {
        print_json(&DemoSummary {
            dir: args.dir.display().to_string(),
            visits: args.visits,
            ledger: &outcome.ledger,
            dataset: &outcome.dataset,
            model,
            verified,
            steps,
            seconds,
        })?;
        return Ok(status);
    }
    super::run::report(&outcome.dataset, false)?;
    let mut lines = vec![format!(
        "trained a depth-{} tree ({} nodes) on {} rows ({} train, {} test)",
        model.depth, model.nodes, report.rows, report.train_rows, report.test_rows
    )];
    let auc = |a: Option<f64>| a.map_or_else(|| "n/a".into(), |a| format!("{a:.3}"));
    for (name, m) in [
        ("test", &report.test),
        ("always-negative", &report.baseline),
    ] {
        if let Some(m) = m {
            lines.push(format!(
                "  {name}: accuracy {:.3}  precision {:.3}  recall {:.3}  F1 {:.3}  ROC AUC {}  \
                 PR AUC {}",
                m.accuracy,
                m.precision,
                m.recall,
                m.f1,
                auc(m.roc_auc),
                auc(m.pr_auc)
            ));
        }
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
        "verified: dataset {}, model {} against {}",
        if verified.dataset { "OK" } else { "MISMATCH" },
        if verified.model { "OK" } else { "MISMATCH" },
        outcome.ledger
    ));
    let dataset_dir = &outcome.dataset.summary.output;
    let ledger_dir = args
        .ledger
        .ledger
        .clone()
        .unwrap_or_else(|| args.dir.join("ledger"));
    lines.push(format!("  dataset: {dataset_dir}"));
    lines.push(format!("  model:   {}", model.dir));
    lines.push(format!(
        "demo finished in {seconds:.1} s in {}",
        args.dir.display()
    ));
    let ledger = ledger_dir.display();
    lines.extend([
        "next, try:".to_string(),
        format!("  emrflow lineage {} --ledger {ledger}", model.root),
        format!(
            "  emrflow audit --subject {} --ledger {ledger}",
            model.dataset_root
        ),
        format!("  emrflow verify {} --ledger {ledger}", model.dir),
        format!(
            "  head -4 {}/data/visits.csv > sample.csv && emrflow predict --model {} --input \
             sample.csv --ledger {ledger}",
            args.dir.display(),
            model.dir
        ),
        "  examples/README.md: gzipped exports, a cluster on 127.0.0.1, tamper and verify, \
         a useful model for the public stroke file"
            .to_string(),
    ]);
    print_lines(&lines);
    Ok(status)
}
