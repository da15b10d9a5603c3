//! Small synthetic stroke-risk tables for examples, tests and benchmarks of this crate: a few
//! continuous and categorical features (some missing), a row key and a 0/1 label drawn from a
//! fixed risk function plus noise. Deterministic for a seed. This is not the project's EMR
//! generator (`emrflow generate`), which writes the published raw shape; it builds an
//! already-preprocessed table directly.

use std::sync::Arc;

use datafusion::arrow::array::{
    AsArray, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray, UInt32Array,
};
use datafusion::arrow::compute::take;
use datafusion::arrow::datatypes::Int64Type;
use datafusion::arrow::datatypes::{DataType, Field, Schema};

use crate::dataset::{Affine, DatasetSpec, FeatureKind, FeatureSpec};
use crate::error::Result;
use crate::hash::mix64;

/// A deterministic stream of uniform numbers in `[0, 1)`.
struct Stream(u64);

impl Stream {
    fn next(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        (mix64(self.0) >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The spec of [`stroke_table`]: `age` and `systolic_bp` min-max normalized (raw units
/// recorded), `glucose` raw with missing values, `atrial_fibrillation` (2 categories), `smoking`
/// (4 categories, some missing) and a pure-noise feature.
pub fn stroke_spec() -> DatasetSpec {
    let continuous = |name: &str, raw: Option<Affine>| FeatureSpec {
        name: name.to_string(),
        kind: FeatureKind::Continuous { raw },
    };
    DatasetSpec {
        label: "stroke".to_string(),
        row_key: Some("visit_id".to_string()),
        features: vec![
            continuous(
                "age",
                Some(Affine {
                    offset: 18.0,
                    scale: 77.0,
                }),
            ),
            continuous(
                "systolic_bp",
                Some(Affine {
                    offset: 90.0,
                    scale: 110.0,
                }),
            ),
            continuous("glucose", None),
            FeatureSpec {
                name: "atrial_fibrillation".to_string(),
                kind: FeatureKind::Categorical {
                    categories: 2,
                    labels: vec!["0".into(), "1".into()],
                },
            },
            FeatureSpec {
                name: "smoking".to_string(),
                kind: FeatureKind::Categorical {
                    categories: 4,
                    labels: vec![
                        "formerly".into(),
                        "never".into(),
                        "smokes".into(),
                        "unknown".into(),
                    ],
                },
            },
            continuous("noise", None),
        ],
    }
}

/// The [`stroke_table`] of `rows` rows with every negative row and one positive in seven: a rare
/// class (about 5 % positives), as on the public stroke file.
pub fn rare_stroke_table(rows: usize, seed: u64) -> Result<RecordBatch> {
    let batch = stroke_table(rows, seed, false)?;
    let label = batch.column(7).as_primitive::<Int64Type>();
    let keep: UInt32Array = (0..batch.num_rows() as u32)
        .filter(|&i| label.value(i as usize) == 0 || i % 7 == 0)
        .collect();
    let columns = batch
        .columns()
        .iter()
        .map(|c| take(c, &keep, None))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    Ok(RecordBatch::try_new(batch.schema(), columns)?)
}

/// `rows` rows of the [`stroke_spec`] table. With `grid` every continuous value is rounded to a
/// coarse grid (few distinct values, for exact-split comparisons).
pub fn stroke_table(rows: usize, seed: u64, grid: bool) -> Result<RecordBatch> {
    let mut s = Stream(mix64(seed));
    let round = |x: f64, step: f64| if grid { (x / step).round() * step } else { x };
    let (mut key, mut age, mut sbp, mut glucose, mut af, mut smoking, mut noise, mut label) = (
        vec![],
        vec![],
        vec![],
        vec![],
        vec![],
        vec![],
        vec![],
        vec![],
    );
    for i in 0..rows {
        let a = round(s.next(), 0.05);
        let b = round(s.next(), 0.05);
        let g = round(70.0 + 150.0 * s.next() * s.next(), 10.0);
        let fib = i32::from(s.next() < 0.1 + 0.3 * a);
        let smoke = (s.next() * 4.0) as i32;
        let missing_glucose = s.next() < 0.05;
        let missing_smoking = s.next() < 0.05;
        let risk = -3.2
            + 2.8 * a
            + 1.2 * b
            + 1.1 * f64::from(fib)
            + 0.006 * (g - 100.0)
            + if smoke == 2 { 0.7 } else { 0.0 };
        let p = 1.0 / (1.0 + (-risk).exp());
        key.push(format!("v{i}"));
        age.push(a);
        sbp.push(b);
        glucose.push((!missing_glucose).then_some(g));
        af.push(fib);
        smoking.push((!missing_smoking).then_some(smoke));
        noise.push(round(s.next(), 0.1));
        label.push(i64::from(s.next() < p));
    }
    let schema = Arc::new(Schema::new(vec![
        Field::new("visit_id", DataType::Utf8, false),
        Field::new("age", DataType::Float64, false),
        Field::new("systolic_bp", DataType::Float64, false),
        Field::new("glucose", DataType::Float64, true),
        Field::new("atrial_fibrillation", DataType::Int32, false),
        Field::new("smoking", DataType::Int32, true),
        Field::new("noise", DataType::Float64, false),
        Field::new("stroke", DataType::Int64, false),
    ]));
    Ok(RecordBatch::try_new(
        schema,
        vec![
            Arc::new(StringArray::from(key)),
            Arc::new(Float64Array::from(age)),
            Arc::new(Float64Array::from(sbp)),
            Arc::new(Float64Array::from(glucose)),
            Arc::new(Int32Array::from(af)),
            Arc::new(Int32Array::from(smoking)),
            Arc::new(Float64Array::from(noise)),
            Arc::new(Int64Array::from(label)),
        ],
    )?)
}
