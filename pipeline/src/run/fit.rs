//! Pass 1: one aggregate over the tagged rows that counts the rows each drop reason takes and
//! fits, on the rest, what the normalize and encode stages need and the label's range. The
//! stages supply their aggregates and read their own results; this module puts them in one
//! query (so the rows are read once) and judges the outcome: no row kept, a label that is not
//! a class.
//!
//! The query stays SQL: a list of aggregates and a GROUP BY say it most plainly.

use std::collections::BTreeMap;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Int64Type};
use datafusion::prelude::SessionContext;

use super::drop_reasons::REASON_COLUMN;
use super::held::KEPT_TABLE;
use super::{categorical, normalize, sql};
use crate::error::{Error, Result};
use crate::job::Job;
use crate::manifest::{Encoding, Normalizer};

/// The view of the joined, de-identified rows with their drop reason that pass 1 reads.
pub(super) const TAGGED_TABLE: &str = "__emr_tagged";

/// What pass 1 learned.
#[derive(Debug, Default)]
pub(super) struct Fit {
    pub(super) total: u64,
    pub(super) kept: u64,
    pub(super) dropped: BTreeMap<String, u64>,
    pub(super) normalizers: BTreeMap<String, Normalizer>,
    pub(super) encodings: BTreeMap<String, Encoding>,
    label_min: Option<i64>,
    label_max: Option<i64>,
}

impl Fit {
    /// Adds drops counted elsewhere (while the kept rows were held in memory), by index into
    /// `reasons`.
    pub(super) fn add_dropped(&mut self, reasons: &[String], dropped: &[u64]) {
        for (reason, n) in reasons.iter().zip(dropped) {
            if *n > 0 {
                self.dropped.insert(reason.clone(), *n);
                self.total += n;
            }
        }
    }
}

/// Runs pass 1's aggregate: over [`TAGGED_TABLE`] grouped by drop reason, or over the rows held
/// in [`KEPT_TABLE`] (`held`), all kept, without a GROUP BY, so the functions see whole batches
/// instead of each group's rows gathered out of them.
pub(super) async fn fit(
    ctx: &SessionContext,
    job: &Job,
    reasons: &[String],
    held: bool,
) -> Result<Fit> {
    let batches = ctx.sql(&fit_sql(job, held)).await?.collect().await?;
    read(job, reasons, &batches)
}

/// The SQL of [`fit`]'s aggregate.
pub(super) fn fit_sql(job: &Job, held: bool) -> String {
    let reason = if held {
        "CAST(NULL AS INT)"
    } else {
        REASON_COLUMN
    };
    let mut aggs = vec![reason.to_string(), "count(*)".to_string()];
    aggs.extend(normalize::aggregates(job));
    aggs.extend(categorical::aggregates(job));
    if let Some(label) = &job.label {
        aggs.push(format!("min(CAST({} AS BIGINT))", sql::ident(label)));
        aggs.push(format!("max(CAST({} AS BIGINT))", sql::ident(label)));
    }
    if held {
        format!("SELECT {} FROM {KEPT_TABLE}", aggs.join(", "))
    } else {
        format!(
            "SELECT {} FROM {TAGGED_TABLE} GROUP BY {REASON_COLUMN}",
            aggs.join(", ")
        )
    }
}

/// Reads [`fit_sql`]'s result: one row per drop reason (by index into `reasons`) and one, with
/// a NULL reason, for the kept rows.
fn read(job: &Job, reasons: &[String], batches: &[RecordBatch]) -> Result<Fit> {
    let mut fit = Fit::default();
    for batch in batches {
        let tags = arrow::compute::cast(batch.column(0), &DataType::Int64)?;
        let tags = tags.as_primitive_opt::<Int64Type>();
        let counts = batch.column(1).as_primitive::<Int64Type>();
        for row in 0..batch.num_rows() {
            let n = counts.value(row) as u64;
            if n == 0 {
                // An aggregate without GROUP BY over no rows: nothing was kept to fit on.
                continue;
            }
            fit.total += n;
            let reason = tags.filter(|r| r.is_valid(row)).map(|r| {
                usize::try_from(r.value(row))
                    .ok()
                    .and_then(|i| reasons.get(i))
                    .cloned()
                    .unwrap_or_else(|| format!("reason {}", r.value(row)))
            });
            if let Some(reason) = reason {
                fit.dropped.insert(reason, n);
                continue;
            }
            fit.kept = n;
            let mut col = 2;
            normalize::read(job, batch, row, &mut col, &mut fit.normalizers)?;
            categorical::read(job, batch, row, &mut col, &mut fit.encodings)?;
            if job.label.is_some() {
                let int_at = |col: usize| -> Option<i64> {
                    let a = batch.column(col).as_primitive_opt::<Int64Type>()?;
                    a.is_valid(row).then(|| a.value(row))
                };
                fit.label_min = int_at(col);
                fit.label_max = int_at(col + 1);
            }
        }
    }
    Ok(fit)
}

/// Refuses a run that kept no row, saying how many each reason dropped.
pub(super) fn check_kept(fit: &Fit) -> Result<()> {
    if fit.kept > 0 {
        return Ok(());
    }
    let drops = fit
        .dropped
        .iter()
        .map(|(r, n)| format!("{r}: {n}"))
        .collect::<Vec<_>>()
        .join(", ");
    Err(Error::invalid(
        "dropna",
        format!("every row was dropped ({drops})"),
    ))
}

/// Refuses a label that is not an integer class (0, 1, ...): `label_type` is its column's type.
pub(super) fn check_label(label: &str, label_type: &DataType, fit: &Fit) -> Result<()> {
    if !(label_type.is_integer() || label_type == &DataType::Boolean) {
        return Err(Error::Label {
            column: label.to_string(),
            message: format!("is {label_type}; a label must be an integer class (0/1)"),
        });
    }
    if let (Some(lo), Some(_)) = (fit.label_min, fit.label_max)
        && lo < 0
    {
        return Err(Error::Label {
            column: label.to_string(),
            message: "has negative values; classes are 0, 1, ...".into(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{ArrayRef, Float64Array, Int32Array, Int64Array, StringArray};

    use super::*;

    fn job() -> Job {
        let text = "name = \"t\"\nlabel = \"stroke\"\n[inputs.v]\npath = \"v.csv\"\n\
            [normalize]\nminmax = [\"bmi\"]\n[encode]\ncolumns = [\"sex\"]\n\
            [output]\npath = \"out\"\n";
        Job::from_toml(text, "job.toml").unwrap_or_else(|e| panic!("{e}"))
    }

    fn reasons() -> Vec<String> {
        vec!["null: bmi".into(), "out of range: bmi".into()]
    }

    /// Tagged rows: two dropped for reason 0, one for reason 1, three kept.
    async fn fitted(held: bool) -> Result<Fit> {
        let mut ctx = SessionContext::new();
        crate::functions::register_functions(&mut ctx)?;
        let (rows, reason): (Vec<usize>, Vec<Option<i32>>) = if held {
            (vec![1, 3, 5], vec![None; 3])
        } else {
            (
                (0..6).collect(),
                vec![Some(0), None, Some(1), None, Some(0), None],
            )
        };
        let bmi = [None, Some(20.0), Some(99.0), Some(30.0), None, Some(25.0)];
        let sex = [Some("F"), Some("M"), Some("F"), Some("F"), None, Some("M")];
        let stroke = [0, 1, 0, 0, 1, 0];
        let batch = RecordBatch::try_from_iter([
            (
                "bmi",
                Arc::new(Float64Array::from(
                    rows.iter().map(|&i| bmi[i]).collect::<Vec<_>>(),
                )) as ArrayRef,
            ),
            (
                "sex",
                Arc::new(StringArray::from(
                    rows.iter().map(|&i| sex[i]).collect::<Vec<_>>(),
                )),
            ),
            (
                "stroke",
                Arc::new(Int64Array::from(
                    rows.iter().map(|&i| stroke[i]).collect::<Vec<_>>(),
                )),
            ),
            (REASON_COLUMN, Arc::new(Int32Array::from(reason))),
        ])?;
        ctx.register_batch(if held { KEPT_TABLE } else { TAGGED_TABLE }, batch)?;
        fit(&ctx, &job(), &reasons(), held).await
    }

    #[tokio::test]
    async fn counts_drops_by_reason_and_fits_on_the_kept_rows() {
        let fit = fitted(false).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((fit.total, fit.kept), (6, 3));
        assert_eq!(
            fit.dropped,
            [
                ("null: bmi".to_string(), 2),
                ("out of range: bmi".to_string(), 1)
            ]
            .into()
        );
        assert_eq!(
            fit.normalizers.get("bmi"),
            Some(&Normalizer::MinMax {
                min: 20.0,
                max: 30.0
            })
        );
        assert_eq!(fit.encodings["sex"].values, ["F", "M"]);
        assert_eq!((fit.label_min, fit.label_max), (Some(0), Some(1)));
    }

    #[tokio::test]
    async fn held_rows_fit_the_same_and_take_their_drops_from_the_holder() {
        let mut fit = fitted(true).await.unwrap_or_else(|e| panic!("{e}"));
        fit.add_dropped(&reasons(), &[2, 1]);
        let grouped = fitted(false).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((fit.total, fit.kept), (grouped.total, grouped.kept));
        assert_eq!(fit.dropped, grouped.dropped);
        assert_eq!(fit.normalizers, grouped.normalizers);
        assert_eq!(fit.encodings["sex"].values, grouped.encodings["sex"].values);
    }

    #[test]
    fn refuses_no_rows_kept_and_labels_that_are_not_classes() {
        let mut fit = Fit::default();
        fit.dropped.insert("null: bmi".into(), 4);
        fit.dropped
            .insert("join: no matching patients row".into(), 1);
        assert_eq!(
            check_kept(&fit).err().map(|e| e.to_string()).as_deref(),
            Some(
                "invalid job: dropna: every row was dropped \
                 (join: no matching patients row: 1, null: bmi: 4)"
            )
        );
        fit.label_min = Some(0);
        fit.label_max = Some(1);
        assert!(check_label("stroke", &DataType::Int64, &fit).is_ok());
        assert!(check_label("stroke", &DataType::Boolean, &fit).is_ok());
        assert_eq!(
            check_label("stroke", &DataType::Float64, &fit)
                .err()
                .map(|e| e.to_string())
                .as_deref(),
            Some("label column stroke: is Float64; a label must be an integer class (0/1)")
        );
        fit.label_min = Some(-1);
        assert_eq!(
            check_label("stroke", &DataType::Int64, &fit)
                .err()
                .map(|e| e.to_string())
                .as_deref(),
            Some("label column stroke: has negative values; classes are 0, 1, ...")
        );
    }
}
