//! Training end to end on small synthetic tables: determinism across partitionings, row orders
//! and storage modes; bad input; class and row weights; cross-validation and artifacts.

mod common;

use std::sync::Arc;

use common::{frame, reversed};
use datafusion::arrow::array::{Array, Float64Array, Int64Array, RecordBatch, UInt32Array};
use datafusion::arrow::compute::{cast, take};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use ml::synthetic::{rare_stroke_table, stroke_spec, stroke_table};
use ml::{
    BinnedDataset, ClassWeights, DatasetSpec, DecisionTree, DecisionTreeParams, Error,
    EvaluationConfig, FeatureKind, RowSet, Storage,
};

fn params(depth: usize) -> DecisionTreeParams {
    DecisionTreeParams {
        max_depth: depth,
        seed: 7,
        ..Default::default()
    }
}

#[tokio::test]
async fn trains_a_useful_tree_on_a_small_table() {
    let batch = stroke_table(4000, 1, false).unwrap();
    let spec = stroke_spec();
    let report = ml::train_and_evaluate(
        frame(&batch, 2, 3),
        &spec,
        &params(4),
        &EvaluationConfig::default(),
        Storage::Memory,
        &|_| {},
    )
    .await
    .unwrap();
    let model = report.model.as_decision_tree().unwrap();
    assert_eq!(model.depth(), 4);
    assert_eq!(model.nodes[0].id, 1);
    assert_eq!(model.training.passes, 4, "one pass per level");
    // The hashed 80/20 split is close to 80/20, and train + test = all rows.
    assert_eq!(report.train_rows + report.test_rows, 4000);
    assert!(
        (700..=900).contains(&report.test_rows),
        "{}",
        report.test_rows
    );
    let test = report.test.as_ref().unwrap();
    let baseline = report.baseline.as_ref().unwrap();
    assert!(
        test.accuracy > baseline.accuracy + 0.03,
        "{} vs {}",
        test.accuracy,
        baseline.accuracy
    );
    assert!(test.roc_auc.unwrap() > 0.7, "{test:?}");
    let cv = report.cross_validation.as_ref().unwrap();
    assert_eq!(cv.folds.len(), 5);
    assert!(cv.accuracy.sd < 0.05 && cv.accuracy.mean > 0.6, "{cv:?}");
    // Age carries most of the signal; noise the least.
    let imp = report.importances();
    assert_eq!(imp[0].feature, "age", "{imp:?}");
    assert_eq!(imp.last().unwrap().feature, "noise", "{imp:?}");
    // High age, fibrillation → higher risk than young without.
    let old = model
        .predict(&[
            Some(0.95),
            Some(0.9),
            Some(200.0),
            Some(1.0),
            Some(2.0),
            Some(0.5),
        ])
        .unwrap();
    let young = model
        .predict(&[
            Some(0.05),
            Some(0.1),
            Some(80.0),
            Some(0.0),
            Some(1.0),
            Some(0.5),
        ])
        .unwrap();
    assert!(
        old.probability > 0.5 && young.probability < 0.2,
        "{old:?} {young:?}"
    );
    assert!(old.explain().starts_with("age > "), "{}", old.explain());
}

#[tokio::test]
async fn the_model_is_byte_identical_on_1_2_and_8_partitions_and_any_row_order() {
    let batch = stroke_table(3000, 2, false).unwrap();
    let spec = stroke_spec();
    let p = DecisionTreeParams {
        max_depth: 6,
        class_weights: ClassWeights::Balanced,
        ..params(6)
    };
    let mut models = Vec::new();
    for (partitions, chunks, rev, storage) in [
        (1, 1, false, Storage::Memory),
        (2, 2, false, Storage::Memory),
        (8, 8, false, Storage::Memory),
        (8, 5, true, Storage::Memory),
        (2, 3, true, Storage::Inline),
    ] {
        let b = if rev { reversed(&batch) } else { batch.clone() };
        let binned = BinnedDataset::prepare(
            frame(&b, partitions, chunks),
            &spec,
            &p,
            &EvaluationConfig::default(),
            storage,
        )
        .await
        .unwrap();
        let model = binned.fit(RowSet::Train).await.unwrap();
        models.push((
            format!("{partitions} partitions, {chunks} chunks, reversed {rev}, {storage:?}"),
            model.to_canonical_json().unwrap(),
        ));
    }
    for (name, bytes) in &models[1..] {
        assert!(bytes == &models[0].1, "{name} differs from {}", models[0].0);
    }
}

#[tokio::test]
async fn bad_input_is_a_named_error() {
    let batch = stroke_table(200, 3, false).unwrap();
    let spec = stroke_spec();
    let fit = |batch: RecordBatch, spec: DatasetSpec, p: DecisionTreeParams| async move {
        DecisionTree::new(p)?.fit(frame(&batch, 2, 2), &spec).await
    };

    let mut missing = spec.clone();
    missing.label = "outcome".into();
    let err = fit(batch.clone(), missing, params(3)).await.unwrap_err();
    assert!(
        matches!(err, Error::MissingColumn { role: "label", .. }),
        "{err}"
    );

    let with_label = |values: Vec<i64>| {
        let mut columns = batch.columns().to_vec();
        let last = columns.len() - 1;
        columns[last] = Arc::new(Int64Array::from(values));
        RecordBatch::try_new(batch.schema(), columns).unwrap()
    };
    let err = fit(
        with_label((0..200).map(|i| i % 3).collect()),
        spec.clone(),
        params(3),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, Error::LabelNotBinary { .. }), "{err}");
    assert!(err.to_string().contains("stroke"), "{err}");

    let err = fit(with_label(vec![0; 200]), spec.clone(), params(3))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::SingleClass {
                class: 0,
                rows: 200,
                ..
            }
        ),
        "{err}"
    );

    let mut columns = batch.columns().to_vec();
    columns[3] = Arc::new(Float64Array::from(vec![None::<f64>; 200]));
    let all_null = RecordBatch::try_new(batch.schema(), columns).unwrap();
    let err = fit(all_null, spec.clone(), params(3)).await.unwrap_err();
    assert!(
        matches!(err, Error::AllNullFeature { ref column, .. } if column == "glucose"),
        "{err}"
    );

    let err = fit(batch.slice(0, 0), spec.clone(), params(3))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::EmptyDataset { .. }), "{err}");

    for depth in [0, 31] {
        let err = fit(batch.clone(), spec.clone(), params(depth))
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                Error::InvalidParam {
                    name: "max_depth",
                    ..
                }
            ),
            "{err}"
        );
    }

    let mut few = spec.clone();
    few.features[4].kind = FeatureKind::categorical(3);
    let err = fit(batch.clone(), few, params(3)).await.unwrap_err();
    assert!(
        matches!(err, Error::CategoryOutOfRange { ref column, value: 3, .. } if column == "smoking"),
        "{err}"
    );
}

#[tokio::test]
async fn balanced_class_weights_raise_recall_on_a_rare_class() {
    // Keep only a few positives: about 5 %.
    let rare = rare_stroke_table(6000, 4).unwrap();
    let eval = EvaluationConfig {
        folds: 0,
        ..Default::default()
    };
    let run = |weights| {
        let rare = rare.clone();
        let eval = eval.clone();
        async move {
            let p = DecisionTreeParams {
                class_weights: weights,
                min_instances_per_node: 5,
                ..params(5)
            };
            ml::train_and_evaluate(
                frame(&rare, 2, 2),
                &stroke_spec(),
                &p,
                &eval,
                Storage::Memory,
                &|_| {},
            )
            .await
            .unwrap()
        }
    };
    let plain = run(ClassWeights::None).await;
    let balanced = run(ClassWeights::Balanced).await;
    let (p, b) = (plain.test.unwrap(), balanced.test.unwrap());
    let base = plain.baseline.unwrap();
    assert!(base.accuracy > 0.9 && base.recall == 0.0, "{base:?}");
    assert!(
        b.recall > p.recall + 0.2,
        "balanced recall {} vs plain {}",
        b.recall,
        p.recall
    );
    assert!(b.roc_auc.unwrap() > 0.6, "{b:?}");
    let w = balanced.model.training().class_weights;
    assert!(w[1] > 5.0 * w[0], "{w:?}");
}

#[tokio::test]
async fn a_weight_column_counts_like_repeated_rows() {
    let batch = stroke_table(1500, 5, false).unwrap();
    // Weight 2 on every third row, versus that row written twice.
    let weights: Vec<f64> = (0..1500)
        .map(|i| if i % 3 == 0 { 2.0 } else { 1.0 })
        .collect();
    let mut fields = batch.schema().fields().to_vec();
    fields.push(Arc::new(Field::new("w", DataType::Float64, false)));
    let mut columns = batch.columns().to_vec();
    columns.push(Arc::new(Float64Array::from(weights)));
    let weighted = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap();
    let dup_idx: Vec<u32> = (0..1500u32)
        .flat_map(|i| if i % 3 == 0 { vec![i, i] } else { vec![i] })
        .collect();
    let idx = UInt32Array::from(dup_idx);
    let dup_cols = batch
        .columns()
        .iter()
        .map(|c| take(c, &idx, None).unwrap())
        .collect();
    let duplicated = RecordBatch::try_new(batch.schema(), dup_cols).unwrap();

    let spec = stroke_spec();
    let p = DecisionTreeParams {
        weight_column: Some("w".into()),
        ..params(4)
    };
    let a = DecisionTree::new(p)
        .unwrap()
        .fit(frame(&weighted, 2, 2), &spec)
        .await
        .unwrap();
    let b = DecisionTree::new(params(4))
        .unwrap()
        .fit(frame(&duplicated, 2, 2), &spec)
        .await
        .unwrap();
    assert_eq!(a.nodes.len(), b.nodes.len());
    for (x, y) in a.nodes.iter().zip(&b.nodes) {
        assert_eq!(
            x.split
                .as_ref()
                .map(|s| (s.feature, s.rule.clone(), s.missing_left)),
            y.split
                .as_ref()
                .map(|s| (s.feature, s.rule.clone(), s.missing_left))
        );
        assert!(
            (x.probability - y.probability).abs() < 1e-9,
            "node {}: {} vs {}",
            x.id,
            x.probability,
            y.probability
        );
    }

    let mut bad = weighted.columns().to_vec();
    bad[8] = Arc::new(Float64Array::from(
        (0..1500)
            .map(|i| if i == 9 { -1.0 } else { 1.0 })
            .collect::<Vec<_>>(),
    ));
    let bad = RecordBatch::try_new(weighted.schema(), bad).unwrap();
    let p = DecisionTreeParams {
        weight_column: Some("w".into()),
        ..params(4)
    };
    let err = DecisionTree::new(p)
        .unwrap()
        .fit(frame(&bad, 2, 2), &spec)
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::BadWeight { ref column, .. } if column == "w"),
        "{err}"
    );
}

#[tokio::test]
async fn binned_scores_agree_with_model_predictions_on_raw_values() {
    let batch = stroke_table(2000, 6, false).unwrap();
    let spec = stroke_spec();
    let eval = EvaluationConfig {
        folds: 0,
        test_fraction: 0.3,
    };
    let binned = BinnedDataset::prepare(
        frame(&batch, 2, 2),
        &spec,
        &params(6),
        &eval,
        Storage::Memory,
    )
    .await
    .unwrap();
    let model = binned.fit(RowSet::Train).await.unwrap();
    let (_, scores) = binned.score(&model, RowSet::All).await.unwrap();
    // Rows come back in an order we do not control: compare the sorted score lists.
    let mut direct: Vec<f64> = (0..batch.num_rows())
        .map(|r| {
            let values: Vec<Option<f64>> = (1..=6)
                .map(|c| {
                    let col = cast(batch.column(c), &DataType::Float64).unwrap();
                    let col = col.as_any().downcast_ref::<Float64Array>().unwrap().clone();
                    col.is_valid(r).then(|| col.value(r))
                })
                .collect();
            model.predict(&values).unwrap().probability
        })
        .collect();
    let mut scored = scores;
    direct.sort_by(f64::total_cmp);
    scored.sort_by(f64::total_cmp);
    assert_eq!(direct.len(), scored.len());
    let first = direct.iter().zip(&scored).position(|(a, b)| a != b);
    assert!(
        first.is_none(),
        "first difference at {first:?}: {:?} vs {:?}",
        first.map(|i| direct[i]),
        first.map(|i| scored[i])
    );
}

#[tokio::test]
async fn artifacts_are_written() {
    let batch = stroke_table(1000, 8, false).unwrap();
    let eval = EvaluationConfig {
        folds: 3,
        ..Default::default()
    };
    let report = ml::train_and_evaluate(
        frame(&batch, 2, 2),
        &stroke_spec(),
        &params(3),
        &eval,
        Storage::Memory,
        &|_| {},
    )
    .await
    .unwrap();
    let dir = std::env::temp_dir().join(format!("ml-artifacts-{}", std::process::id()));
    let written = report.write_artifacts(&dir).unwrap();
    assert_eq!(written.len(), 7);
    let model = std::fs::read(dir.join("model.json")).unwrap();
    let back = ml::DecisionTreeModel::from_json(&model, "model.json").unwrap();
    assert_eq!(Some(&back), report.model.as_decision_tree());
    let metrics: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(
        metrics["cross_validation"]["folds"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    assert!(metrics["test"]["roc_auc"].as_f64().unwrap() > 0.5);
    assert_eq!(
        metrics["model_sha256"].as_str().unwrap(),
        report.model.sha256_hex().unwrap()
    );
    let tree = std::fs::read_to_string(dir.join("tree.txt")).unwrap();
    assert!(
        tree.starts_with("DecisionTreeClassificationModel"),
        "{tree}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn a_small_memory_budget_splits_levels_into_more_passes_and_gives_the_same_tree() {
    // ~20,000 bins per continuous feature: one node's histogram is about 1 MiB, so a 1 MiB
    // budget allows one node per pass.
    let batch = stroke_table(25_000, 9, false).unwrap();
    let spec = stroke_spec();
    let eval = EvaluationConfig {
        folds: 0,
        test_fraction: 0.0,
    };
    let fit = |max_memory_mb| {
        let batch = batch.clone();
        let spec = spec.clone();
        let eval = eval.clone();
        async move {
            let p = DecisionTreeParams {
                max_bins: 20_000,
                max_memory_mb,
                ..params(3)
            };
            let binned =
                BinnedDataset::prepare(frame(&batch, 2, 2), &spec, &p, &eval, Storage::Memory)
                    .await
                    .unwrap();
            binned.fit(RowSet::All).await.unwrap()
        }
    };
    let roomy = fit(256).await;
    let tight = fit(1).await;
    assert_eq!(roomy.training.passes, 3, "one pass per level");
    // One pass per node accumulated: the root, then of each split whose children may split
    // again only the smaller child (the larger one is its parent minus the smaller one).
    let may_split = |n: &ml::Node| {
        (n.depth as usize) < 3
            && n.class_counts[0] > 0
            && n.class_counts[1] > 0
            && n.class_counts[0] + n.class_counts[1] >= 2
    };
    let accumulated = 1 + tight
        .nodes
        .iter()
        .filter_map(|n| n.split.as_ref())
        .filter(|s| may_split(&tight.nodes[s.left]) || may_split(&tight.nodes[s.right]))
        .count() as u32;
    assert_eq!(tight.training.passes, accumulated);
    assert!(tight.training.passes > 3);
    assert_eq!(roomy.nodes, tight.nodes);
}
