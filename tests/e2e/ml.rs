//! `emrflow train` and `emrflow predict` on datasets published by `emrflow run`: artifacts,
//! metrics, the same model bytes on any partitioning (trees, forests, boosted trees),
//! predictions with decision paths in raw units, calibrated probabilities, the class at the
//! stored threshold and exact contributions, one-line errors for bad parameters, and (when the
//! public stroke CSV is present) the always-negative baseline next to a class-balanced model and
//! the example's calibrated boosted model.

use std::path::{Path, PathBuf};

use crate::support::{assert_one_line_error, emrflow, generate, root, run, stderr, stdout};

fn run_synthetic(data: &Path, out: &Path) {
    let visits = format!("visits={}", data.join("visits.csv").display());
    let patients = format!("patients={}", data.join("patients.csv").display());
    let out = out.display().to_string();
    let result = run(&mut emrflow(&[
        "run",
        "examples/stroke-synthetic.toml",
        "--input",
        &visits,
        "--input",
        &patients,
        "--out",
        &out,
    ]));
    assert!(result.status.success(), "run failed: {}", stderr(&result));
}

pub(crate) fn train(dataset: &Path, out: &Path, extra: &[&str]) -> serde_json::Value {
    let mut args = vec![
        "train".to_string(),
        "--dataset".to_string(),
        dataset.display().to_string(),
        "--out".to_string(),
        out.display().to_string(),
        "--json".to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = run(&mut emrflow(&args));
    assert!(result.status.success(), "train failed: {}", stderr(&result));
    serde_json::from_str(stdout(&result).trim())
        .unwrap_or_else(|e| panic!("{e}: {}", stdout(&result)))
}

/// One raw row in the dataset's original units: the first category of each encoded column, the
/// mean (or midpoint) of each normalized one, `value` for the rest.
pub(crate) fn raw_csv(manifest: &serde_json::Value, older: bool) -> String {
    let features = manifest["features"].as_array().cloned().unwrap_or_default();
    let mut header = Vec::new();
    let mut row = Vec::new();
    for f in features {
        let name = f["name"].as_str().unwrap_or_default().to_string();
        let value = if let Some(values) = manifest["encodings"][&name]["values"].as_array() {
            values
                .first()
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_string()
        } else if let Some(n) = manifest["normalization"].get(&name) {
            let center = n["mean"]
                .as_f64()
                .or_else(|| Some((n["min"].as_f64()? + n["max"].as_f64()?) / 2.0));
            let bump = if older && name == "age" { 25.0 } else { 0.0 };
            format!("{}", center.unwrap_or(0.0) + bump)
        } else {
            "0".to_string()
        };
        header.push(name);
        row.push(value);
    }
    format!("{}\n{}\n", header.join(","), row.join(","))
}

#[test]
fn train_writes_every_artifact_and_the_same_model_on_any_partitioning() {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let data = tmp.path().join("data");
    let dataset = tmp.path().join("dataset");
    generate(&data, 8_000);
    run_synthetic(&data, &dataset);

    let model_dir = tmp.path().join("model");
    let summary = train(
        &dataset,
        &model_dir,
        &["--max-depth", "6", "--folds", "3", "--partitions", "1"],
    );
    for file in [
        "model.json",
        "metrics.json",
        "tree.txt",
        "tree.dot",
        "roc.svg",
        "feature_importances.json",
        "dataset-manifest.json",
    ] {
        assert!(model_dir.join(file).is_file(), "{file} missing");
    }
    let test = &summary["test"];
    assert!(test["accuracy"].as_f64().unwrap_or(0.0) > 0.6, "{summary}");
    assert!(test["roc_auc"].as_f64().unwrap_or(0.0) > 0.6, "{summary}");
    assert!(
        summary["baseline_always_negative"]["recall"].as_f64() == Some(0.0),
        "{summary}"
    );
    assert_eq!(summary["cross_validation"]["folds"].as_u64(), Some(3));
    assert!(summary["depth"].as_u64().unwrap_or(0) <= 6);
    let svg = std::fs::read_to_string(model_dir.join("roc.svg")).unwrap_or_default();
    assert!(svg.starts_with("<svg") && svg.contains("AUC"), "{svg}");

    let again = train(
        &dataset,
        &tmp.path().join("model-4"),
        &["--max-depth", "6", "--folds", "3", "--partitions", "4"],
    );
    assert_eq!(
        summary["model_sha256"], again["model_sha256"],
        "partitioning changed the model"
    );
    let a = std::fs::read(model_dir.join("model.json")).unwrap_or_default();
    let b = std::fs::read(tmp.path().join("model-4/model.json")).unwrap_or_default();
    assert!(a == b, "model.json bytes differ");

    // Predict raw rows: the decision path is in words and raw units.
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dataset.join("manifest.json")).unwrap_or_default())
            .unwrap_or_default();
    let input = tmp.path().join("raw.csv");
    std::fs::write(
        &input,
        raw_csv(&manifest, false) + raw_csv(&manifest, true).lines().nth(1).unwrap_or_default(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let model = model_dir.display().to_string();
    let input_s = input.display().to_string();
    let out = run(&mut emrflow(&[
        "predict", "--model", &model, "--input", &input_s, "--json",
    ]));
    assert!(out.status.success(), "predict failed: {}", stderr(&out));
    let predictions: serde_json::Value =
        serde_json::from_str(stdout(&out).trim()).unwrap_or_default();
    let rows = predictions["predictions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(rows.len(), 2, "{predictions}");
    for p in &rows {
        let explanation = p["explanation"].as_str().unwrap_or_default();
        assert!(explanation.contains("→ risk"), "{p}");
        assert!(
            !p["path"].as_array().cloned().unwrap_or_default().is_empty(),
            "{p}"
        );
        let prob = p["probability"].as_f64().unwrap_or(-1.0);
        assert!((0.0..=1.0).contains(&prob));
    }
    let text = run(&mut emrflow(&[
        "predict", "--model", &model, "--input", &input_s,
    ]));
    assert!(text.status.success(), "{}", stderr(&text));
    assert!(
        stdout(&text).starts_with("row 1: predict "),
        "{}",
        stdout(&text)
    );

    // Bad parameters and inputs fail with one line that names them.
    let ds = dataset.display().to_string();
    let bad_out = tmp.path().join("bad").display().to_string();
    assert_one_line_error(
        &run(&mut emrflow(&[
            "train",
            "--dataset",
            &ds,
            "--out",
            &bad_out,
            "--max-depth",
            "0",
        ])),
        &["max_depth"],
    );
    assert_one_line_error(
        &run(&mut emrflow(&[
            "train",
            "--dataset",
            &ds,
            "--out",
            &bad_out,
            "--max-depth",
            "31",
        ])),
        &["max_depth", "30"],
    );
    assert_one_line_error(
        &run(&mut emrflow(&[
            "train",
            "--dataset",
            &ds,
            "--out",
            &bad_out,
            "--label",
            "no_such_label",
        ])),
        &["no_such_label"],
    );
    let missing = tmp.path().join("nowhere").display().to_string();
    assert_one_line_error(
        &run(&mut emrflow(&[
            "train",
            "--dataset",
            &missing,
            "--out",
            &bad_out,
        ])),
        &["manifest.json"],
    );
}

#[test]
fn train_and_predict_have_help() {
    for cmd in ["train", "predict"] {
        let out = run(&mut emrflow(&[cmd, "--help"]));
        assert!(out.status.success());
        let text = stdout(&out);
        assert!(text.contains("--json"), "{text}");
        assert!(
            text.contains(if cmd == "train" {
                "--max-depth"
            } else {
                "--model"
            }),
            "{text}"
        );
    }
}

/// The public stroke file preprocessed by `examples/stroke-kaggle.toml` into `dir/kaggle`, or
/// `None` (said on stderr) when the file is absent: it is not part of the project.
#[allow(clippy::print_stderr)] // a skipped test says so
fn public_stroke_dataset(dir: &Path) -> Option<PathBuf> {
    let csv = root().join("../shared/data/healthcare-dataset-stroke-data.csv");
    if !csv.exists() {
        eprintln!(
            "SKIPPED: {} is absent (the public stroke dataset is not part of the project)",
            csv.display()
        );
        return None;
    }
    let dataset = dir.join("kaggle");
    let csv = csv.canonicalize().unwrap_or(csv);
    let input = format!("patients={}", csv.display());
    let out = run(&mut emrflow(&[
        "run",
        "examples/stroke-kaggle.toml",
        "--input",
        &input,
        "--out",
        &dataset.display().to_string(),
    ]));
    assert!(out.status.success(), "run failed: {}", stderr(&out));
    Some(dataset)
}

#[test]
#[allow(clippy::print_stderr)] // the figures are the point of this test
fn kaggle_stroke_baseline_versus_balanced_class_weights() {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let Some(dataset) = public_stroke_dataset(tmp.path()) else {
        return;
    };
    let plain = train(&dataset, &tmp.path().join("plain"), &["--max-depth", "5"]);
    let balanced = train(
        &dataset,
        &tmp.path().join("balanced"),
        &[
            "--max-depth",
            "5",
            "--class-weights",
            "balanced",
            "--min-instances-per-node",
            "10",
        ],
    );
    let get = |v: &serde_json::Value, set: &str, m: &str| v[set][m].as_f64().unwrap_or(f64::NAN);
    eprintln!("kaggle stroke, test rows: {}", balanced["test_rows"]);
    for (name, v, set) in [
        ("always negative", &plain, "baseline_always_negative"),
        ("unweighted", &plain, "test"),
        ("balanced", &balanced, "test"),
    ] {
        eprintln!(
            "  {name:<16} accuracy {:.3}  recall {:.3}  precision {:.3}  ROC AUC {:.3}  PR AUC {:.3}",
            get(v, set, "accuracy"),
            get(v, set, "recall"),
            get(v, set, "precision"),
            get(v, set, "roc_auc"),
            get(v, set, "pr_auc")
        );
    }
    assert!(get(&plain, "baseline_always_negative", "accuracy") > 0.9);
    assert_eq!(get(&plain, "baseline_always_negative", "recall"), 0.0);
    assert!(get(&balanced, "test", "recall") > 0.5, "{balanced}");
    assert!(get(&balanced, "test", "roc_auc") > 0.7, "{balanced}");
}

/// Runs `emrflow predict --json` and returns its predictions.
fn predict(model: &Path, input: &Path) -> Vec<serde_json::Value> {
    let model = model.display().to_string();
    let input = input.display().to_string();
    let out = run(&mut emrflow(&[
        "predict", "--model", &model, "--input", &input, "--json",
    ]));
    assert!(out.status.success(), "predict failed: {}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap_or_default();
    v["predictions"].as_array().cloned().unwrap_or_default()
}

#[test]
fn forests_and_boosted_trees_reproduce_calibrate_and_explain_each_prediction() {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let data = tmp.path().join("data");
    let dataset = tmp.path().join("dataset");
    generate(&data, 8_000);
    run_synthetic(&data, &dataset);
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dataset.join("manifest.json")).unwrap_or_default())
            .unwrap_or_default();
    let input = tmp.path().join("raw.csv");
    std::fs::write(
        &input,
        raw_csv(&manifest, false) + raw_csv(&manifest, true).lines().nth(1).unwrap_or_default(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let tree = train(
        &dataset,
        &tmp.path().join("tree"),
        &["--max-depth", "5", "--folds", "0"],
    );
    let tree_auc = tree["test"]["roc_auc"].as_f64().unwrap_or(0.0);
    for (name, args) in [
        (
            "random_forest",
            vec![
                "--model",
                "random-forest",
                "--num-trees",
                "15",
                "--max-depth",
                "6",
                "--calibration",
                "isotonic",
                "--threshold",
                "max-f1",
            ],
        ),
        (
            "gbt",
            vec![
                "--model",
                "gbt",
                "--max-iter",
                "25",
                "--max-depth",
                "4",
                "--step-size",
                "0.3",
                "--validation-fraction",
                "0.1",
                "--calibration",
                "platt",
                "--threshold",
                "recall=0.8",
            ],
        ),
    ] {
        let mut one = args.clone();
        one.extend(["--folds", "2", "--partitions", "1"]);
        let mut four = args.clone();
        four.extend(["--folds", "2", "--partitions", "4"]);
        let dir = tmp.path().join(name);
        let a = train(&dataset, &dir, &one);
        let b = train(&dataset, &tmp.path().join(format!("{name}-4")), &four);
        assert_eq!(a["model"].as_str(), Some(name), "{a}");
        assert_eq!(
            a["model_sha256"], b["model_sha256"],
            "{name}: partitioning changed the model"
        );
        assert_eq!(a["model_root"], b["model_root"], "{name}");
        let auc = a["test"]["roc_auc"].as_f64().unwrap_or(0.0);
        assert!(auc > tree_auc, "{name}: AUC {auc} vs one tree {tree_auc}");
        assert!(
            a["test_at_threshold"]["metrics"]["recall"]
                .as_f64()
                .is_some(),
            "{a}"
        );
        assert!(a["brier"].as_f64().unwrap_or(1.0) < 0.25, "{a}");
        assert_eq!(a["baseline_always_negative"]["recall"].as_f64(), Some(0.0));
        assert!(a["holdout_rows"].as_u64().unwrap_or(0) > 500, "{a}");
        for file in [
            "model.json",
            "metrics.json",
            "tree.txt",
            "roc.svg",
            "reliability.svg",
        ] {
            assert!(dir.join(file).is_file(), "{name}: {file} missing");
        }
        let metrics: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("metrics.json")).unwrap_or_default())
                .unwrap_or_default();
        assert!(
            !metrics["calibration"]["reliability"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .is_empty(),
            "{metrics}"
        );
        let importances = a["feature_importances"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let shap_total: f64 = importances
            .iter()
            .filter_map(|i| i["mean_abs_contribution"].as_f64())
            .sum();
        assert!((shap_total - 1.0).abs() < 1e-9, "{importances:?}");

        for p in predict(&dir, &input) {
            let calibrated = p["calibrated_probability"].as_f64().unwrap_or(-1.0);
            let threshold = p["threshold"].as_f64().unwrap_or(-1.0);
            assert!((0.0..=1.0).contains(&calibrated), "{p}");
            assert_eq!(
                p["prediction"].as_u64(),
                Some(u64::from(calibrated >= threshold)),
                "{p}"
            );
            // Contributions explain the raw output: the probability for a forest, the
            // log-odds for boosted trees.
            let total: f64 = p["contributions"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .filter_map(|c| c["contribution"].as_f64())
                .sum();
            let raw = p["expected_value"].as_f64().unwrap_or(f64::NAN) + total;
            let probability = p["probability"].as_f64().unwrap_or(f64::NAN);
            let expected = if name == "gbt" {
                (probability / (1.0 - probability)).ln()
            } else {
                probability
            };
            assert!(
                (raw - expected).abs() < 1e-6,
                "{name}: {raw} vs {expected}: {p}"
            );
            let explanation = p["explanation"].as_str().unwrap_or_default();
            assert!(
                explanation.contains(" = ") && explanation.contains("→ risk"),
                "{p}"
            );
        }
    }
}

#[test]
#[allow(clippy::print_stderr)] // the figures are the point of this test
fn the_example_boosted_model_on_the_public_stroke_file_is_useful() {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let Some(dataset) = public_stroke_dataset(tmp.path()) else {
        return;
    };
    // The train command of examples/README.md.
    let v = train(&dataset, &tmp.path().join("model"), EXAMPLE_TRAIN_ARGS);
    // A model's floats are exact strings (see ml's `exact`); metrics are plain numbers.
    let get = |path: &[&str]| {
        let x = path.iter().fold(&v, |v, k| &v[*k]);
        x.as_f64()
            .or_else(|| x.as_str().and_then(|s| s.parse().ok()))
            .unwrap_or(f64::NAN)
    };
    eprintln!(
        "kaggle stroke, calibrated gbt: test rows {}, ROC AUC {:.3}, PR AUC {:.3}, Brier {:.4} \
         (model's own {:.4}); at threshold {:.3}: recall {:.3}, precision {:.3}, accuracy {:.3}; \
         always negative: accuracy {:.3}",
        v["test_rows"],
        get(&["test", "roc_auc"]),
        get(&["test", "pr_auc"]),
        get(&["brier"]),
        get(&["brier_uncalibrated"]),
        get(&["test_at_threshold", "operating_point", "threshold"]),
        get(&["test_at_threshold", "metrics", "recall"]),
        get(&["test_at_threshold", "metrics", "precision"]),
        get(&["test_at_threshold", "metrics", "accuracy"]),
        get(&["baseline_always_negative", "accuracy"]),
    );
    assert!(get(&["test", "roc_auc"]) > 0.8, "{v}");
    assert!(
        get(&["test_at_threshold", "metrics", "recall"]) > 0.5,
        "{v}"
    );
    assert!(get(&["brier"]) < get(&["brier_uncalibrated"]), "{v}");
}

/// The train command of examples/README.md for the public stroke file (after `--dataset` and
/// `--out`).
const EXAMPLE_TRAIN_ARGS: &[&str] = &[
    "--model",
    "gbt",
    "--max-iter",
    "100",
    "--max-depth",
    "3",
    "--step-size",
    "0.05",
    "--class-weights",
    "balanced",
    "--min-instances-per-node",
    "10",
    "--calibration",
    "platt",
    "--threshold",
    "recall=0.8",
];
