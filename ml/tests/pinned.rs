//! The decision tree's model bytes are pinned: training the same synthetic table with the same
//! parameters must keep giving the very same `model.json` and canonical parts (and so the same
//! anchored root) from one build to the next. Ensembles, calibration and thresholds were added
//! beside the tree without touching its encoding; these digests prove it.

use std::sync::Arc;

use datafusion::arrow::array::{Float64Array, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::datasource::MemTable;
use datafusion::prelude::{SessionConfig, SessionContext};
use ml::synthetic::{stroke_spec, stroke_table};
use ml::{ClassWeights, DecisionTreeParams, EvaluationConfig, Impurity, Storage};
use sha2::{Digest, Sha256};

fn hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test]
async fn decision_tree_model_bytes_and_parts_are_pinned() {
    let batch = stroke_table(3000, 21, false).unwrap();
    // A weight column for the weighted case.
    let mut fields = batch.schema().fields().to_vec();
    fields.push(Arc::new(Field::new("w", DataType::Float64, false)));
    let mut columns = batch.columns().to_vec();
    columns.push(Arc::new(Float64Array::from_iter_values(
        (0..3000).map(|i| f64::from(1 + i % 4) * 0.5),
    )));
    let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap();
    let cases: Vec<(&str, DecisionTreeParams)> = vec![
        ("default", DecisionTreeParams::default()),
        (
            "deep, entropy, balanced",
            DecisionTreeParams {
                max_depth: 8,
                impurity: Impurity::Entropy,
                class_weights: ClassWeights::Balanced,
                min_instances_per_node: 3,
                seed: 5,
                ..Default::default()
            },
        ),
        (
            "weighted, explicit classes, 64 bins",
            DecisionTreeParams {
                max_depth: 6,
                max_bins: 64,
                weight_column: Some("w".into()),
                class_weights: ClassWeights::Explicit {
                    negative: 1.0,
                    positive: 3.5,
                },
                ..Default::default()
            },
        ),
    ];
    let expected = [
        (
            "default",
            "9c42aebad45e3e5e75fc818032d88ab5a8dfc33e55b773b8a484351ce32461f6",
            "6456491ca81897197769e5a8f9f4d777084542525f27e7311ab8e6b85ae33257",
        ),
        (
            "deep, entropy, balanced",
            "66e86603064419e580099cf0a68e306be98f6e444f3a119c1fef8b131e611ab1",
            "0c44fa3d5a1495f73d1b6f923da45a99cc2f5c316b16fecd43f22f7e26dcdef6",
        ),
        (
            "weighted, explicit classes, 64 bins",
            "fde06d3efad975b4d30f4a6c40448f7e85b287fe97c4b02a8499c2863a6b928d",
            "bafbbb41de53d7d30821e0677129c851d9e8a377683e203b3acf6e92265c4251",
        ),
    ];
    let mut got = Vec::new();
    for (name, params) in cases {
        for storage in [Storage::Memory, Storage::Inline] {
            let ctx =
                SessionContext::new_with_config(SessionConfig::new().with_target_partitions(3));
            let table = MemTable::try_new(batch.schema(), vec![vec![batch.clone()]]).unwrap();
            let data = ctx.read_table(Arc::new(table)).unwrap();
            let report = ml::train_and_evaluate(
                data,
                &stroke_spec(),
                &params,
                &EvaluationConfig {
                    test_fraction: 0.2,
                    folds: 2,
                },
                storage,
                &|_| {},
            )
            .await
            .unwrap();
            let json = hex(&report.model.to_canonical_json().unwrap());
            let mut parts = Vec::new();
            for p in report.model.canonical_parts().unwrap() {
                parts.extend_from_slice(&Sha256::digest(&p));
            }
            got.push((name, json, hex(&parts)));
        }
    }
    // Both storages give the same bytes.
    for pair in got.chunks(2) {
        assert_eq!(pair[0], pair[1], "{}: memory and inline differ", pair[0].0);
    }
    let got: Vec<(&str, &str, &str)> = got
        .iter()
        .step_by(2)
        .map(|(n, j, p)| (*n, j.as_str(), p.as_str()))
        .collect();
    assert_eq!(got, expected, "the decision tree's encoding changed");
}
