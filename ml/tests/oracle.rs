//! Oracle test: with at least as many bins as distinct values, the histogram tree must make the
//! same predictions as linfa-trees' exact CART (same depth, same minimum leaf size). The only
//! allowed differences are documented ties: a leaf whose weighted class shares are exactly
//! 50/50 (linfa picks its modal class from a hash map).
//!
//! Every feature holds distinct values (ranks). linfa skips a candidate threshold when the last
//! row of a run of equal values lies outside the node, so with repeated values it is not exact
//! CART below the root; with distinct values it is.

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, AsArray, Float64Array, Int64Array, RecordBatch, StringArray,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Float64Type, Int64Type, Schema};
use datafusion::datasource::MemTable;
use datafusion::prelude::{SessionConfig, SessionContext};
use linfa::prelude::*;
use linfa_trees::{DecisionTree as LinfaTree, SplitQuality};
use ml::{DatasetSpec, DecisionTree, DecisionTreeParams, FeatureKind, FeatureSpec, Impurity};
use ndarray::{Array1, Array2};

const FEATURES: usize = 5;

/// A deterministic uniform stream (splitmix64).
fn uniform(state: &mut u64) -> f64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
}

/// `rows` rows; feature values are the ranks of uniform draws (all distinct, one apart), the
/// label a noisy function of the draws.
fn table(rows: usize, seed: u64) -> (RecordBatch, DatasetSpec) {
    let mut state = seed;
    let draws: Vec<Vec<f64>> = (0..FEATURES)
        .map(|_| (0..rows).map(|_| uniform(&mut state)).collect())
        .collect();
    let mut columns: Vec<Arc<dyn Array>> = vec![Arc::new(StringArray::from(
        (0..rows).map(|i| format!("r{i}")).collect::<Vec<_>>(),
    ))];
    let mut fields = vec![Field::new("key", DataType::Utf8, false)];
    for (f, d) in draws.iter().enumerate() {
        let mut order: Vec<usize> = (0..rows).collect();
        order.sort_by(|a, b| d[*a].total_cmp(&d[*b]));
        let mut rank = vec![0.0; rows];
        for (r, i) in order.into_iter().enumerate() {
            rank[i] = r as f64;
        }
        columns.push(Arc::new(Float64Array::from(rank)));
        fields.push(Field::new(format!("x{f}"), DataType::Float64, false));
    }
    let label: Vec<i64> = (0..rows)
        .map(|i| {
            let risk =
                3.0 * draws[0][i] + 2.0 * draws[1][i] * draws[2][i] - 0.8 * draws[3][i] - 1.6;
            i64::from(uniform(&mut state) < 1.0 / (1.0 + (-2.5 * risk).exp()))
        })
        .collect();
    columns.push(Arc::new(Int64Array::from(label)));
    fields.push(Field::new("y", DataType::Int64, false));
    let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap();
    let spec = DatasetSpec {
        label: "y".into(),
        row_key: Some("key".into()),
        features: (0..FEATURES)
            .map(|f| FeatureSpec {
                name: format!("x{f}"),
                kind: FeatureKind::continuous(),
            })
            .collect(),
    };
    (batch, spec)
}

fn matrix(batch: &RecordBatch) -> (Array2<f64>, Array1<usize>) {
    let rows = batch.num_rows();
    let mut x = Array2::<f64>::zeros((rows, FEATURES));
    for c in 0..FEATURES {
        let col = cast(batch.column(c + 1), &DataType::Float64).unwrap();
        let col = col.as_primitive::<Float64Type>();
        assert_eq!(col.null_count(), 0);
        for r in 0..rows {
            x[[r, c]] = col.value(r);
        }
    }
    let y = batch
        .column(FEATURES + 1)
        .as_primitive::<Int64Type>()
        .values()
        .iter()
        .map(|v| *v as usize)
        .collect();
    (x, y)
}

async fn compare(depth: usize, min_leaf: u64, impurity: Impurity, seed: u64) {
    let (train, spec) = table(600, seed);
    let (test, _) = table(400, seed + 1000);
    // Enough bins for every distinct value: the sketch then proposes every midpoint.
    let params = DecisionTreeParams {
        max_depth: depth,
        max_bins: 1024,
        min_instances_per_node: min_leaf,
        impurity,
        ..Default::default()
    };
    let ctx = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(2));
    let df = ctx
        .read_table(Arc::new(
            MemTable::try_new(train.schema(), vec![vec![train.clone()]]).unwrap(),
        ))
        .unwrap();
    let ours = DecisionTree::new(params)
        .unwrap()
        .fit(df, &spec)
        .await
        .unwrap();

    let (x, y) = matrix(&train);
    let dataset = Dataset::new(x.clone(), y.clone());
    let quality = match impurity {
        Impurity::Gini => SplitQuality::Gini,
        Impurity::Entropy => SplitQuality::Entropy,
    };
    let oracle = LinfaTree::params()
        .split_quality(quality)
        .max_depth(Some(depth))
        .min_weight_leaf(min_leaf as f32)
        .min_weight_split(2.0 * min_leaf as f32)
        .min_impurity_decrease(1e-12)
        .fit(&dataset)
        .unwrap();

    let check = |x: &Array2<f64>, y: &Array1<usize>, set: &str| {
        let theirs = oracle.predict(x);
        let (mut same, mut ties, mut correct_ours, mut correct_theirs) = (0, 0, 0, 0);
        for r in 0..x.nrows() {
            let row: Vec<Option<f64>> = x.row(r).iter().map(|v| Some(*v)).collect();
            let p = ours.predict(&row).unwrap();
            correct_ours += usize::from(usize::from(p.prediction) == y[r]);
            correct_theirs += usize::from(theirs[r] == y[r]);
            if usize::from(p.prediction) == theirs[r] {
                same += 1;
            } else if p.probability == 0.5 {
                ties += 1;
            } else if set == "train" {
                panic!(
                    "depth {depth}, min leaf {min_leaf}, {impurity:?}: training row {r} differs: ours {} (p = {}, {}), linfa {}",
                    p.prediction,
                    p.probability,
                    p.explain(),
                    theirs[r]
                );
            }
        }
        let n = x.nrows() as f64;
        (
            same as f64 / n,
            ties,
            correct_ours as f64 / n,
            correct_theirs as f64 / n,
        )
    };
    let (agree, ties, acc_ours, acc_theirs) = check(&x, &y, "train");
    assert_eq!(agree + ties as f64 / x.nrows() as f64, 1.0);
    if ties == 0 {
        assert_eq!(acc_ours, acc_theirs, "training accuracy");
    }
    let (tx, ty) = matrix(&test);
    let (agree_test, _, acc_ours, acc_theirs) = check(&tx, &ty, "test");
    assert!(agree_test > 0.97, "test agreement {agree_test}");
    assert!(
        (acc_ours - acc_theirs).abs() <= 0.01,
        "test accuracy {acc_ours} vs linfa {acc_theirs}"
    );
}

#[tokio::test]
async fn matches_exact_cart_gini_depth_3() {
    compare(3, 1, Impurity::Gini, 11).await;
}

#[tokio::test]
async fn matches_exact_cart_gini_depth_6_min_leaf_5() {
    compare(6, 5, Impurity::Gini, 12).await;
}

#[tokio::test]
async fn matches_exact_cart_entropy_depth_5() {
    compare(5, 2, Impurity::Entropy, 13).await;
}
