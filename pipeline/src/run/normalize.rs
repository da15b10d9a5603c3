//! The normalize stage: min-max and z-score scaling of numeric columns. Pass 1 fits each
//! column's statistics on the rows that survive (min and max; mean and standard deviation from
//! exact sums, `moments.rs`, so they do not depend on how the rows were partitioned); pass 2
//! scales the written rows by them. A column without spread maps to 0, nulls stay null.

use std::collections::BTreeMap;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Float64Type};
use datafusion::common::ScalarValue;
use datafusion::logical_expr::{Expr, cast, ident, lit, when};

use super::pii::Deidentified;
use super::sql;
use crate::error::{Error, Result};
use crate::job::Job;
use crate::manifest::Normalizer;
use crate::moments::MOMENTS_FN;

/// Refuses normalizing a column that is missing or not numeric.
pub(super) fn check(job: &Job, columns: &Deidentified) -> Result<()> {
    for c in job.normalize.minmax.iter().chain(&job.normalize.zscore) {
        let t = columns.type_of(c, "normalize")?;
        if !t.is_numeric() {
            return Err(Error::invalid(
                "normalize",
                format!("column {c} is {t}, not numeric"),
            ));
        }
    }
    Ok(())
}

/// Pass 1's aggregates (SQL), in the order [`read`] takes their values: min and max of each
/// min-max column, then the moments of each z-score column.
pub(super) fn aggregates(job: &Job) -> Vec<String> {
    let x = |c: &str| format!("CAST({} AS DOUBLE)", sql::ident(c));
    let mut aggs = Vec::new();
    for c in &job.normalize.minmax {
        aggs.push(format!("min({})", x(c)));
        aggs.push(format!("max({})", x(c)));
    }
    for c in &job.normalize.zscore {
        // Exact, so the fitted normalizer does not depend on the partitioning.
        aggs.push(format!("{MOMENTS_FN}({})", x(c)));
    }
    aggs
}

/// Reads the fitted normalizers from row `row` of `batch`, starting at column `*col` and
/// leaving it past [`aggregates`]' columns.
pub(super) fn read(
    job: &Job,
    batch: &RecordBatch,
    row: usize,
    col: &mut usize,
    fitted: &mut BTreeMap<String, Normalizer>,
) -> Result<()> {
    let f64_at = |col: usize| -> Option<f64> {
        let a = batch.column(col).as_primitive_opt::<Float64Type>()?;
        a.is_valid(row).then(|| a.value(row))
    };
    for c in &job.normalize.minmax {
        let (min, max) = (f64_at(*col), f64_at(*col + 1));
        *col += 2;
        let (Some(min), Some(max)) = (min, max) else {
            return Err(Error::invalid(
                "normalize.minmax",
                format!("column {c} has no values to fit"),
            ));
        };
        fitted.insert(c.clone(), Normalizer::MinMax { min, max });
    }
    for c in &job.normalize.zscore {
        let moments = batch.column(*col).as_struct_opt();
        *col += 1;
        let field = |i: usize| {
            moments
                .filter(|m| m.is_valid(row))
                .and_then(|m| m.column(i).as_primitive_opt::<Float64Type>())
                .filter(|a| a.is_valid(row))
                .map(|a| a.value(row))
        };
        let (mean, std) = (field(1), field(2));
        let (Some(mean), Some(std)) = (mean, std) else {
            return Err(Error::invalid(
                "normalize.zscore",
                format!("column {c} has no values to fit"),
            ));
        };
        if !mean.is_finite() || !std.is_finite() {
            return Err(Error::invalid(
                "normalize.zscore",
                format!("column {c} has NaN or infinite values"),
            ));
        }
        fitted.insert(c.clone(), Normalizer::ZScore { mean, std });
    }
    Ok(())
}

/// Pass 2's value of column `name` scaled by `normalizer`, as a double.
pub(super) fn scaled(name: &str, normalizer: &Normalizer) -> Result<Expr> {
    let x = cast(ident(name), DataType::Float64);
    let expr = match *normalizer {
        Normalizer::MinMax { min, max } if max > min => (x - lit(min)) / lit(max - min),
        Normalizer::ZScore { mean, std } if std > 0.0 => (x - lit(mean)) / lit(std),
        // A constant column carries no information; it maps to 0 (nulls stay).
        _ => when(ident(name).is_null(), lit(ScalarValue::Null)).otherwise(lit(0.0))?,
    };
    Ok(expr.alias(name))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{ArrayRef, Float64Array, Int64Array};
    use datafusion::prelude::SessionContext;

    use super::*;

    fn job(normalize: &str) -> Job {
        let text = format!(
            "name = \"t\"\n[inputs.v]\npath = \"v.csv\"\n[normalize]\n{normalize}\n\
             [output]\npath = \"out\"\n"
        );
        Job::from_toml(&text, "job.toml").unwrap_or_else(|e| panic!("{e}"))
    }

    fn rows(bmi: Vec<Option<f64>>, age: Vec<Option<i64>>) -> RecordBatch {
        RecordBatch::try_from_iter([
            ("bmi", Arc::new(Float64Array::from(bmi)) as ArrayRef),
            ("age", Arc::new(Int64Array::from(age)) as ArrayRef),
        ])
        .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Fits `job` on `batch` as pass 1 does (its aggregates, then [`read`]).
    async fn fit(job: &Job, batch: RecordBatch) -> Result<BTreeMap<String, Normalizer>> {
        let mut ctx = SessionContext::new();
        crate::functions::register_functions(&mut ctx)?;
        ctx.register_batch("rows", batch)?;
        let sql = format!("SELECT {} FROM rows", aggregates(job).join(", "));
        let out = ctx.sql(&sql).await?.collect().await?;
        let mut fitted = BTreeMap::new();
        let mut col = 0;
        read(job, &out[0], 0, &mut col, &mut fitted)?;
        assert_eq!(col, out[0].num_columns());
        Ok(fitted)
    }

    #[tokio::test]
    async fn fits_on_the_values_and_scales_by_them() {
        let job = job("minmax = [\"bmi\"]\nzscore = [\"age\"]");
        let batch = rows(
            vec![Some(10.0), None, Some(30.0), Some(20.0)],
            vec![Some(40), Some(60), None, Some(50)],
        );
        let fitted = fit(&job, batch.clone())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            fitted.get("bmi"),
            Some(&Normalizer::MinMax {
                min: 10.0,
                max: 30.0
            })
        );
        let Some(Normalizer::ZScore { mean, std }) = fitted.get("age").cloned() else {
            panic!("age was not fitted: {fitted:?}");
        };
        // The population deviation of 40, 50 and 60.
        assert_eq!(mean, 50.0);
        assert!((std - (200.0f64 / 3.0).sqrt()).abs() < 1e-12, "{std}");
        let ctx = SessionContext::new();
        let exprs = [
            scaled("bmi", &fitted["bmi"]),
            scaled("age", &Normalizer::ZScore { mean, std: 10.0 }),
        ]
        .into_iter()
        .collect::<Result<Vec<_>>>()
        .unwrap_or_else(|e| panic!("{e}"));
        let scaled = ctx
            .read_batch(batch)
            .and_then(|df| df.select(exprs))
            .unwrap_or_else(|e| panic!("{e}"))
            .collect()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let text = arrow::util::pretty::pretty_format_batches(&scaled)
            .unwrap_or_else(|e| panic!("{e}"))
            .to_string();
        insta::assert_snapshot!(text, @r"
        +-----+------+
        | bmi | age  |
        +-----+------+
        | 0.0 | -1.0 |
        |     | 1.0  |
        | 1.0 |      |
        | 0.5 | 0.0  |
        +-----+------+
        ");
    }

    #[tokio::test]
    async fn a_column_without_spread_maps_to_zero_and_keeps_its_nulls() {
        let ctx = SessionContext::new();
        let batch = rows(vec![Some(7.0), None], vec![Some(1), Some(1)]);
        let constant = [
            Normalizer::MinMax { min: 7.0, max: 7.0 },
            Normalizer::ZScore {
                mean: 7.0,
                std: 0.0,
            },
        ];
        for normalizer in &constant {
            let expr = scaled("bmi", normalizer).unwrap_or_else(|e| panic!("{e}"));
            let out = ctx
                .read_batch(batch.clone())
                .and_then(|df| df.select(vec![expr]))
                .unwrap_or_else(|e| panic!("{e}"))
                .collect()
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            let values = out[0].column(0).as_primitive::<Float64Type>();
            assert_eq!((values.value(0), values.is_null(1)), (0.0, true));
        }
    }

    #[tokio::test]
    async fn errors_name_the_setting_and_the_column() {
        let err = |setting: &str, batch: RecordBatch| {
            let job = job(setting);
            async move { fit(&job, batch).await.err().map(|e| e.to_string()) }
        };
        let no_bmi = rows(vec![None, None], vec![Some(1), Some(2)]);
        assert_eq!(
            err("minmax = [\"bmi\"]", no_bmi.clone()).await.as_deref(),
            Some("invalid job: normalize.minmax: column bmi has no values to fit")
        );
        assert_eq!(
            err("zscore = [\"bmi\"]", no_bmi).await.as_deref(),
            Some("invalid job: normalize.zscore: column bmi has no values to fit")
        );
        let infinite = rows(vec![Some(f64::INFINITY), Some(1.0)], vec![None, None]);
        assert_eq!(
            err("zscore = [\"bmi\"]", infinite).await.as_deref(),
            Some("invalid job: normalize.zscore: column bmi has NaN or infinite values")
        );
    }
}
