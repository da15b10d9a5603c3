//! Random forests and gradient-boosted trees end to end on small synthetic tables: the same
//! model bytes for any partitioning, row order and storage; better ranking than one tree;
//! predictions on raw values that agree with the scores computed inside plans; exact
//! explanations; calibration, operating thresholds and early stopping.

mod common;

use std::sync::Arc;

use common::{frame, reversed};
use datafusion::arrow::array::{Array, Float64Array, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use ml::synthetic::{rare_stroke_table, stroke_spec, stroke_table};
use ml::{
    BinnedDataset, CalibrationConfig, CalibrationMethod, ClassWeights, DecisionTreeParams,
    EvaluationConfig, FeatureSubset, GbtParams, GradientBoostedTrees, Model, ModelParams,
    RandomForest, RandomForestParams, RowSet, Storage, ThresholdRule, TrainParams,
};

/// The table with a row weight column `w` (1, 2 or 0.5).
fn with_weights(batch: &RecordBatch) -> RecordBatch {
    let weights: Vec<f64> = (0..batch.num_rows())
        .map(|i| [1.0, 2.0, 0.5][i % 3])
        .collect();
    let mut fields = batch.schema().fields().to_vec();
    fields.push(Arc::new(Field::new("w", DataType::Float64, false)));
    let mut columns = batch.columns().to_vec();
    columns.push(Arc::new(Float64Array::from(weights)));
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap()
}

fn forest_params() -> RandomForestParams {
    RandomForestParams {
        tree: DecisionTreeParams {
            max_depth: 5,
            seed: 3,
            ..Default::default()
        },
        num_trees: 12,
        subsampling_rate: 0.8,
        ..Default::default()
    }
}

fn gbt_params() -> GbtParams {
    GbtParams {
        max_iter: 15,
        max_depth: 3,
        step_size: 0.3,
        seed: 3,
        ..Default::default()
    }
}

/// The canonical bytes of a model trained on a row set under several partitionings, row orders
/// and storages; all must be equal.
async fn bytes_everywhere(batch: &RecordBatch, params: &ModelParams) -> Vec<(String, Vec<u8>)> {
    let spec = stroke_spec();
    let mut out = Vec::new();
    for (partitions, chunks, rev, storage) in [
        (1, 1, false, Storage::Memory),
        (2, 2, false, Storage::Memory),
        (8, 8, false, Storage::Memory),
        (8, 5, true, Storage::Memory),
        (2, 3, true, Storage::Inline),
    ] {
        let b = if rev { reversed(batch) } else { batch.clone() };
        let report = ml::train(
            frame(&b, partitions, chunks),
            &spec,
            &TrainParams {
                model: params.clone(),
                evaluation: EvaluationConfig {
                    test_fraction: 0.2,
                    folds: 0,
                },
                calibration: CalibrationConfig {
                    method: CalibrationMethod::Isotonic,
                    threshold: ThresholdRule::MaxF1,
                    ..Default::default()
                },
            },
            storage,
            &|_| {},
        )
        .await
        .unwrap();
        out.push((
            format!("{partitions} partitions, {chunks} chunks, reversed {rev}, {storage:?}"),
            report.model.to_canonical_json().unwrap(),
        ));
    }
    out
}

fn assert_all_equal(models: &[(String, Vec<u8>)]) {
    for (name, bytes) in &models[1..] {
        assert!(bytes == &models[0].1, "{name} differs from {}", models[0].0);
    }
}

#[tokio::test]
async fn a_forest_is_byte_identical_on_1_2_and_8_partitions_any_row_order_and_storage() {
    let batch = with_weights(&stroke_table(2500, 31, false).unwrap());
    let mut params = forest_params();
    params.tree.weight_column = Some("w".into());
    params.tree.class_weights = ClassWeights::Balanced;
    let models = bytes_everywhere(&batch, &ModelParams::RandomForest(params.clone())).await;
    assert_all_equal(&models);
    let model = Model::from_json(&models[0].1, "forest").unwrap();
    assert!(model.calibration().is_some() && model.operating_point().is_some());
    // Every feature at every node: the larger child's histogram is derived by subtraction,
    // from bootstrap counts.
    params.feature_subset_strategy = FeatureSubset::All;
    assert_all_equal(&bytes_everywhere(&batch, &ModelParams::RandomForest(params)).await);
}

#[tokio::test]
async fn boosted_trees_are_byte_identical_on_1_2_and_8_partitions_any_row_order_and_storage() {
    let batch = with_weights(&stroke_table(2500, 32, false).unwrap());
    let params = GbtParams {
        weight_column: Some("w".into()),
        subsampling_rate: 0.7,
        validation_fraction: 0.2,
        feature_subset_strategy: FeatureSubset::Fraction { fraction: 0.8 },
        class_weights: ClassWeights::Balanced,
        ..gbt_params()
    };
    let models = bytes_everywhere(&batch, &ModelParams::Gbt(params)).await;
    assert_all_equal(&models);
    let Model::Gbt(model) = Model::from_json(&models[0].1, "gbt").unwrap() else {
        panic!("not boosted trees");
    };
    let stopping = model.early_stopping.as_ref().unwrap();
    assert!(stopping.validation_rows > 300, "{stopping:?}");
    assert_eq!(model.trees.len(), stopping.kept as usize);
}

/// AUC of a model on the test side of `batch`.
async fn test_auc(batch: &RecordBatch, model: ModelParams) -> (f64, ml::TrainingReport) {
    let report = ml::train(
        frame(batch, 2, 2),
        &stroke_spec(),
        &TrainParams {
            model,
            evaluation: EvaluationConfig {
                test_fraction: 0.3,
                folds: 0,
            },
            ..Default::default()
        },
        Storage::Memory,
        &|_| {},
    )
    .await
    .unwrap();
    (report.test.as_ref().unwrap().roc_auc.unwrap(), report)
}

#[tokio::test]
async fn ensembles_rank_better_than_one_tree_and_explain_every_prediction_exactly() {
    let batch = stroke_table(6000, 33, false).unwrap();
    let tree = DecisionTreeParams {
        max_depth: 5,
        ..Default::default()
    };
    let (tree_auc, tree_report) = test_auc(&batch, ModelParams::DecisionTree(tree)).await;
    let (forest_auc, forest) = test_auc(&batch, ModelParams::RandomForest(forest_params())).await;
    let (gbt_auc, gbt) = test_auc(&batch, ModelParams::Gbt(gbt_params())).await;
    assert!(
        forest_auc > tree_auc + 0.005 && gbt_auc > tree_auc + 0.005,
        "tree {tree_auc}, forest {forest_auc}, gbt {gbt_auc}"
    );
    for report in [&tree_report, &forest, &gbt] {
        let model = &report.model;
        // Global importance from explanations: age carries the signal, noise none of it.
        let shap = &report.mean_abs_contributions;
        assert!((shap.iter().sum::<f64>() - 1.0).abs() < 1e-9, "{shap:?}");
        assert!(shap[0] > shap[5] * 5.0, "{}: {shap:?}", model.kind());
        // Exactly the cap: the ~1,200 test rows with the smallest explanation hashes.
        assert_eq!(report.explained_rows, ml::evaluate::EXPLAINED_ROWS);
        // Contributions add up to the output minus the expected value, row by row.
        for r in 0..200 {
            let values = row_values(&batch, r);
            let e = model.explain(&values).unwrap();
            let total: f64 = e.contributions.iter().sum();
            assert!(
                (e.expected_value + total - e.value).abs() < 1e-9,
                "{} row {r}: {} + {total} vs {}",
                model.kind(),
                e.expected_value,
                e.value
            );
            assert_eq!(e.value, model.raw_output(&values).unwrap());
        }
    }
    // Boosted trees explain log-odds, forests probabilities.
    assert_eq!(gbt.model.output(), ml::Output::LogOdds);
    assert_eq!(forest.model.output(), ml::Output::Probability);
}

/// Row `r` of a stroke table as feature values in model order.
fn row_values(batch: &RecordBatch, r: usize) -> Vec<Option<f64>> {
    (1..=6)
        .map(|c| {
            let col = cast(batch.column(c), &DataType::Float64).unwrap();
            let col = col.as_any().downcast_ref::<Float64Array>().unwrap().clone();
            col.is_valid(r).then(|| col.value(r))
        })
        .collect()
}

#[tokio::test]
async fn binned_scores_agree_with_predictions_on_raw_values() {
    let batch = stroke_table(2000, 34, false).unwrap();
    let spec = stroke_spec();
    let forest = RandomForest::new(forest_params())
        .unwrap()
        .fit(frame(&batch, 2, 2), &spec)
        .await
        .unwrap();
    let gbt = GradientBoostedTrees::new(gbt_params())
        .unwrap()
        .fit(frame(&batch, 2, 3), &spec)
        .await
        .unwrap();
    assert_eq!(forest.trees.len(), 12);
    assert_eq!(gbt.trees.len(), 15);
    for (model, params) in [
        (
            Model::RandomForest(forest),
            DecisionTreeParams {
                seed: 3,
                ..Default::default()
            },
        ),
        (
            Model::Gbt(gbt),
            DecisionTreeParams {
                seed: 3,
                max_depth: 3,
                ..Default::default()
            },
        ),
    ] {
        let binned = BinnedDataset::prepare(
            frame(&batch, 2, 2),
            &spec,
            &params,
            &EvaluationConfig {
                test_fraction: 0.0,
                folds: 0,
            },
            Storage::Memory,
        )
        .await
        .unwrap();
        let (_, mut scored) = binned.score_model(&model, RowSet::All).await.unwrap();
        let mut direct: Vec<f64> = (0..batch.num_rows())
            .map(|r| model.raw_output(&row_values(&batch, r)).unwrap())
            .collect();
        // Rows come back in an order we do not control: compare the sorted lists, bit for bit.
        direct.sort_by(f64::total_cmp);
        scored.sort_by(f64::total_cmp);
        assert_eq!(direct, scored, "{}", model.kind());
    }
}

#[tokio::test]
async fn a_tight_memory_budget_takes_more_passes_and_grows_the_same_forest() {
    let batch = stroke_table(3000, 35, false).unwrap();
    let fit = |max_memory_mb| {
        let batch = batch.clone();
        async move {
            let mut params = forest_params();
            params.tree.max_bins = 4000;
            params.tree.max_memory_mb = max_memory_mb;
            RandomForest::new(params)
                .unwrap()
                .fit(frame(&batch, 2, 2), &stroke_spec())
                .await
                .unwrap()
        }
    };
    let roomy = fit(256).await;
    let tight = fit(1).await;
    // One root-count pass, then one per level when every frontier node fits.
    assert_eq!(roomy.training.passes, 1 + 5);
    assert!(
        tight.training.passes > roomy.training.passes * 2,
        "{}",
        tight.training.passes
    );
    assert_eq!(roomy.trees, tight.trees);
}

#[tokio::test]
async fn bootstrap_samples_differ_per_tree_and_feature_subsets_per_node() {
    let batch = stroke_table(3000, 36, false).unwrap();
    let forest = RandomForest::new(RandomForestParams {
        feature_subset_strategy: FeatureSubset::Sqrt,
        ..forest_params()
    })
    .unwrap()
    .fit(frame(&batch, 2, 2), &stroke_spec())
    .await
    .unwrap();
    let roots: Vec<u64> = forest.trees.iter().map(|t| t.nodes[0].rows).collect();
    // Poisson(0.8) multiplicities: each tree's root sees about 0.8 × 3000 rows, not all equal.
    assert!(roots.iter().all(|r| (2200..2600).contains(r)), "{roots:?}");
    assert!(roots.windows(2).any(|w| w[0] != w[1]), "{roots:?}");
    // With √6 → 3 features per node, roots do not all split on the strongest feature.
    let root_features: std::collections::BTreeSet<usize> = forest
        .trees
        .iter()
        .filter_map(|t| t.nodes[0].split.as_ref().map(|s| s.feature))
        .collect();
    assert!(root_features.len() > 1, "{root_features:?}");
    // Without bootstrap and at rate 1 every tree sees every row once.
    let all = RandomForest::new(RandomForestParams {
        bootstrap: false,
        subsampling_rate: 1.0,
        ..forest_params()
    })
    .unwrap()
    .fit(frame(&batch, 2, 2), &stroke_spec())
    .await
    .unwrap();
    assert!(all.trees.iter().all(|t| t.nodes[0].rows == 3000));
}

#[tokio::test]
async fn calibration_repairs_class_weighted_probabilities_and_the_threshold_meets_its_rule() {
    let batch = rare_stroke_table(16_000, 37).unwrap();
    let run = |method, threshold| {
        let batch = batch.clone();
        async move {
            ml::train(
                frame(&batch, 2, 2),
                &stroke_spec(),
                &TrainParams {
                    model: ModelParams::Gbt(GbtParams {
                        class_weights: ClassWeights::Balanced,
                        max_iter: 30,
                        ..gbt_params()
                    }),
                    evaluation: EvaluationConfig {
                        test_fraction: 0.3,
                        folds: 0,
                    },
                    calibration: CalibrationConfig {
                        method,
                        threshold,
                        holdout_fraction: 0.3,
                    },
                },
                Storage::Memory,
                &|_| {},
            )
            .await
            .unwrap()
        }
    };
    let report = run(
        CalibrationMethod::Platt,
        ThresholdRule::TargetRecall { recall: 0.8 },
    )
    .await;
    let c = report.calibration.as_ref().unwrap();
    // Balanced class weights push probabilities far above the 5 % base rate; Platt brings them
    // back, below the base rate's own Brier score.
    let (own, calibrated, base) = (
        c.brier_uncalibrated.unwrap(),
        c.brier.unwrap(),
        c.brier_base_rate.unwrap(),
    );
    assert!(calibrated < own * 0.6, "calibrated {calibrated}, own {own}");
    assert!(
        calibrated < base,
        "calibrated {calibrated}, base rate {base}"
    );
    let mean_predicted: f64 = c
        .reliability
        .iter()
        .map(|b| b.mean_predicted * b.rows as f64)
        .sum::<f64>()
        / report.test_rows as f64;
    let positives =
        report.baseline.as_ref().unwrap().confusion.false_negative as f64 / report.test_rows as f64;
    assert!(
        (mean_predicted - positives).abs() < 0.02,
        "mean risk {mean_predicted} vs prevalence {positives}"
    );
    // The threshold was chosen for 80 % recall on held-out rows; the test rows come close.
    let at = report.test_at_threshold.as_ref().unwrap();
    assert!(at.metrics.recall > 0.65, "{at:?}");
    assert!(report.holdout_rows > 1000);
    assert_eq!(
        report.train_rows + report.holdout_rows + report.test_rows,
        report.rows
    );
    // At 0.5 a calibrated model on rare positives flags few; the threshold flags more.
    let default = report.test.as_ref().unwrap();
    assert!(at.metrics.recall > default.recall, "{at:?} vs {default:?}");
    // The model keeps the rule and its threshold, and predicts with them.
    let model = &report.model;
    let op = model.operating_point().unwrap();
    assert_eq!(op.rule, ThresholdRule::TargetRecall { recall: 0.8 });
    let scored = model.predict(&row_values(&batch, 0)).unwrap();
    assert_eq!(
        scored.prediction,
        u8::from(scored.calibrated_probability >= op.threshold)
    );
    let iso = run(CalibrationMethod::Isotonic, ThresholdRule::MaxF1).await;
    let c = iso.calibration.as_ref().unwrap();
    assert!(
        c.brier.unwrap() < c.brier_uncalibrated.unwrap() * 0.6,
        "{c:?}"
    );
    assert!(iso.test_at_threshold.as_ref().unwrap().metrics.f1 > iso.test.as_ref().unwrap().f1);
}

#[tokio::test]
async fn early_stopping_keeps_the_trees_up_to_the_best_validation_loss() {
    // Deep trees and full steps overfit quickly.
    let batch = stroke_table(3000, 38, false).unwrap();
    let params = GbtParams {
        max_iter: 60,
        max_depth: 8,
        step_size: 1.0,
        l2_regularization: 0.0,
        validation_fraction: 0.25,
        validation_tol: 0.0,
        ..gbt_params()
    };
    let model = GradientBoostedTrees::new(params)
        .unwrap()
        .fit(frame(&batch, 2, 2), &stroke_spec())
        .await
        .unwrap();
    let stopping = model.early_stopping.unwrap();
    assert!(stopping.losses.len() < 60, "{stopping:?}");
    let kept = stopping.kept as usize;
    assert_eq!(model.trees.len(), kept);
    let best = stopping.losses[kept - 1];
    assert!(stopping.losses.iter().all(|l| *l >= best), "{stopping:?}");
    assert!(stopping.losses.last().unwrap() >= &best);
    // The training rows exclude the validation rows.
    assert!(model.training.rows < 2400, "{}", model.training.rows);
}

#[tokio::test]
async fn bad_ensemble_parameters_are_named_before_any_data_is_read() {
    let err = RandomForest::new(RandomForestParams {
        num_trees: 0,
        ..Default::default()
    })
    .unwrap_err();
    assert!(err.to_string().contains("num_trees"), "{err}");
    let err = GradientBoostedTrees::new(GbtParams {
        subsampling_rate: 0.0,
        ..Default::default()
    })
    .unwrap_err();
    assert!(err.to_string().contains("subsampling_rate"), "{err}");
    let batch = stroke_table(100, 39, false).unwrap();
    let err = ml::train(
        frame(&batch, 1, 1),
        &stroke_spec(),
        &TrainParams {
            calibration: CalibrationConfig {
                method: CalibrationMethod::Platt,
                holdout_fraction: 1.0,
                ..Default::default()
            },
            ..Default::default()
        },
        Storage::Memory,
        &|_| {},
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("holdout_fraction"), "{err}");
}
