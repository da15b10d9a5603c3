//! The ranges-and-dropna stage: which rows are dropped and why. A row is dropped for the first
//! check it fails, in this order: a fault its input marked (a FHIR value in a unit no rule
//! converts), a join that found no match, a null in a `dropna` column (in
//! the job's order, then the label), a value outside a declared range (by column name). This
//! stage builds the conditions, the reason number pass 1 groups by and the predicate pass 2
//! keeps rows by; it drops nothing itself.
//!
//! The conditions are expressions rather than SQL text: each is built from a column and its
//! bounds, and the same list yields the reason number and the keep predicate.

use arrow::datatypes::DataType;
use datafusion::common::ScalarValue;
use datafusion::logical_expr::{Expr, cast, ident, lit};
use datafusion::prelude::DataFrame;

use super::join::JoinMarker;
use super::pii::Deidentified;
use crate::error::{Error, Result};
use crate::functions::expr_fn;
use crate::job::Job;

/// The column of the tagged rows that holds each row's drop reason, by its number in
/// [`DropReasons::reasons`], NULL for a row that is kept.
pub(super) const REASON_COLUMN: &str = "__emr_reason";

/// Refuses a range on a column that is missing or not numeric, and a `dropna` column that is
/// missing.
pub(super) fn check(job: &Job, columns: &Deidentified) -> Result<()> {
    for c in job.ranges.keys() {
        let t = columns.type_of(c, "ranges")?;
        if !t.is_numeric() {
            return Err(Error::invalid(
                format!("ranges.{c}"),
                format!("column {c} is {t}, not numeric"),
            ));
        }
    }
    for c in &job.dropna.columns {
        columns.type_of(c, "dropna.columns")?;
    }
    Ok(())
}

/// The drop checks of a job, in the order a row's reason is chosen by.
#[derive(Debug)]
pub(super) struct DropReasons {
    /// Each check's condition (true drops the row) and its reason as the manifest names it.
    checks: Vec<(Expr, String)>,
}

impl DropReasons {
    /// The checks for the joins' markers and the job's `dropna`, label and ranges over the
    /// de-identified columns (which [`check`] has validated).
    pub(super) fn build(job: &Job, markers: &[JoinMarker], columns: &Deidentified) -> Self {
        let mut checks: Vec<(Expr, String)> = markers
            .iter()
            .map(|m| {
                let marked = if m.when_set {
                    ident(&m.column).is_not_null()
                } else {
                    ident(&m.column).is_null()
                };
                (marked, m.reason.clone())
            })
            .collect();
        let mut null_cols: Vec<String> = if job.dropna.all {
            columns.columns.iter().map(|c| c.name.clone()).collect()
        } else {
            job.dropna.columns.clone()
        };
        if let Some(label) = &job.label
            && !null_cols.contains(label)
        {
            null_cols.push(label.clone());
        }
        for c in &null_cols {
            checks.push((ident(c).is_null(), format!("null: {c}")));
        }
        for (c, [lo, hi]) in &job.ranges {
            let x = || cast(ident(c), DataType::Float64);
            checks.push((
                x().lt(lit(*lo)).or(x().gt(lit(*hi))),
                format!("out of range: {c}"),
            ));
        }
        Self { checks }
    }

    /// The reasons, by the number [`REASON_COLUMN`] holds.
    pub(super) fn reasons(&self) -> Vec<String> {
        self.checks.iter().map(|(_, r)| r.clone()).collect()
    }

    /// `rows` with [`REASON_COLUMN`] added. The reason is a number: pass 1 groups by it, and
    /// grouping a million rows by a small integer costs far less than building and hashing
    /// their strings.
    pub(super) fn tagged(&self, rows: DataFrame) -> Result<DataFrame> {
        let reason = if self.checks.is_empty() {
            cast(lit(ScalarValue::Null), DataType::Int32)
        } else {
            expr_fn::first_true(self.checks.iter().map(|(c, _)| c.clone()).collect())
        };
        Ok(rows.with_column(REASON_COLUMN, reason)?)
    }

    /// The rows of `rows` no check drops. Said as a conjunction of `IS NOT TRUE` (a NULL
    /// condition drops nothing), so pass 2 never computes the reason only to test it.
    pub(super) fn kept(&self, rows: DataFrame) -> Result<DataFrame> {
        let keep = self
            .checks
            .iter()
            .map(|(c, _)| c.clone().is_not_true())
            .reduce(Expr::and)
            .unwrap_or_else(|| lit(true));
        Ok(rows.filter(keep)?)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};
    use datafusion::prelude::SessionContext;

    use super::*;

    fn job(checks: &str) -> Job {
        let text = format!(
            "name = \"t\"\nlabel = \"stroke\"\n[inputs.v]\npath = \"v.csv\"\n{checks}\n\
             [output]\npath = \"out\"\n"
        );
        Job::from_toml(&text, "job.toml").unwrap_or_else(|e| panic!("{e}"))
    }

    fn columns(job: &Job) -> Deidentified {
        let joined = [
            ("id", DataType::Utf8),
            ("bmi", DataType::Float64),
            ("glucose", DataType::Int64),
            ("stroke", DataType::Int64),
        ]
        .map(|(n, t)| (n.to_string(), t));
        Deidentified::build(job, &joined).unwrap_or_else(|e| panic!("{e}"))
    }

    const CHECKS: &str = "[ranges]\nglucose = [40.0, 600.0]\nbmi = [10.0, 80.0]\n\
        [dropna]\ncolumns = [\"glucose\", \"bmi\"]";

    /// Each row fails the checks named in its id; the first in order is its reason.
    fn rows() -> RecordBatch {
        let marker: ArrayRef = Arc::new(StringArray::from(vec![
            None,
            Some("P"),
            Some("P"),
            Some("P"),
            Some("P"),
            Some("P"),
        ]));
        RecordBatch::try_from_iter([
            (
                "id",
                Arc::new(StringArray::from(vec![
                    "unmatched, null bmi",
                    "null glucose, bmi high",
                    "bmi low, glucose high",
                    "glucose high",
                    "null label",
                    "kept",
                ])) as ArrayRef,
            ),
            (
                "bmi",
                Arc::new(Float64Array::from(vec![
                    None,
                    Some(90.0),
                    Some(9.5),
                    Some(20.0),
                    Some(20.0),
                    Some(80.0),
                ])),
            ),
            (
                "glucose",
                Arc::new(Int64Array::from(vec![
                    Some(100),
                    None,
                    Some(601),
                    Some(601),
                    Some(100),
                    Some(40),
                ])),
            ),
            (
                "stroke",
                Arc::new(Int64Array::from(vec![
                    Some(0),
                    Some(0),
                    Some(1),
                    Some(0),
                    None,
                    Some(1),
                ])),
            ),
            ("__emr_join_0", marker),
        ])
        .unwrap_or_else(|e| panic!("{e}"))
    }

    fn drops(job: &Job) -> DropReasons {
        let marker = JoinMarker {
            column: "__emr_join_0".into(),
            reason: "join: no matching patients row".into(),
            when_set: false,
        };
        DropReasons::build(job, &[marker], &columns(job))
    }

    async fn show(df: DataFrame, columns: &[&str]) -> String {
        let rows = df
            .select_columns(columns)
            .unwrap_or_else(|e| panic!("{e}"))
            .collect()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        arrow::util::pretty::pretty_format_batches(&rows)
            .unwrap_or_else(|e| panic!("{e}"))
            .to_string()
    }

    #[tokio::test]
    async fn a_row_is_dropped_for_the_first_check_it_fails() {
        let job = job(CHECKS);
        let drops = drops(&job);
        assert_eq!(
            drops.reasons(),
            [
                "join: no matching patients row",
                "null: glucose",
                "null: bmi",
                "null: stroke",
                "out of range: bmi",
                "out of range: glucose",
            ]
        );
        let ctx = SessionContext::new();
        let rows = ctx.read_batch(rows()).unwrap_or_else(|e| panic!("{e}"));
        let tagged = drops.tagged(rows.clone()).unwrap_or_else(|e| panic!("{e}"));
        insta::assert_snapshot!(show(tagged, &["id", REASON_COLUMN]).await, @r"
        +------------------------+--------------+
        | id                     | __emr_reason |
        +------------------------+--------------+
        | unmatched, null bmi    | 0            |
        | null glucose, bmi high | 1            |
        | bmi low, glucose high  | 4            |
        | glucose high           | 5            |
        | null label             | 3            |
        | kept                   |              |
        +------------------------+--------------+
        ");
        let kept = drops.kept(rows).unwrap_or_else(|e| panic!("{e}"));
        insta::assert_snapshot!(show(kept, &["id"]).await, @r"
        +------+
        | id   |
        +------+
        | kept |
        +------+
        ");
    }

    #[tokio::test]
    async fn without_checks_every_row_is_kept_with_a_null_reason() {
        let job = job("");
        let drops = DropReasons::build(&job, &[], &columns(&job));
        // The label is always checked for nulls.
        assert_eq!(drops.reasons(), ["null: stroke"]);
        let none = DropReasons { checks: Vec::new() };
        let ctx = SessionContext::new();
        let rows = ctx.read_batch(rows()).unwrap_or_else(|e| panic!("{e}"));
        let tagged = none.tagged(rows.clone()).unwrap_or_else(|e| panic!("{e}"));
        let reason = tagged
            .schema()
            .field_with_unqualified_name(REASON_COLUMN)
            .map(|f| f.data_type().clone())
            .ok();
        assert_eq!(reason, Some(DataType::Int32));
        let kept = none.kept(rows).unwrap_or_else(|e| panic!("{e}"));
        let n = kept.count().await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(n, 6);
    }

    #[test]
    fn errors_name_the_setting_and_the_column() {
        let err = |checks: &str| {
            let job = job(checks);
            check(&job, &columns(&job))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        assert_eq!(
            err("[ranges]\nid = [0.0, 1.0]"),
            "invalid job: ranges.id: column id is Utf8, not numeric"
        );
        assert_eq!(
            err("[dropna]\ncolumns = [\"weight\"]"),
            "column weight named in dropna.columns does not exist (available: id, bmi, glucose, stroke)"
        );
    }
}
