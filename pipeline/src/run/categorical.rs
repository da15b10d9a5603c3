//! The encode stage: categorical columns become codes. Pass 1 fits each column's sorted list
//! of distinct values (the `emr_categories` aggregate, `categories.rs`) on the surviving rows;
//! pass 2 writes each value's position in that list (`emr_category_index`). Values are
//! compared as text, exactly as `CAST(x AS VARCHAR)` writes them, in both passes. (Named for
//! what it encodes, not `encode.rs`: the fingerprint's row encoding owns that name.)

use std::collections::BTreeMap;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::DataType;
use datafusion::logical_expr::{Expr, ident};

use super::pii::Deidentified;
use super::sql;
use crate::categories::CATEGORIES_FN;
use crate::error::{Error, Result};
use crate::functions::expr_fn;
use crate::job::Job;
use crate::manifest::Encoding;

/// Refuses encoding a column that is missing, pseudonymized (its values are unique by design)
/// or a date.
pub(super) fn check(job: &Job, columns: &Deidentified) -> Result<()> {
    for c in &job.encode.columns {
        let t = columns.type_of(c, "encode.columns")?;
        if job.pii.pseudonymize.contains(c) {
            return Err(Error::invalid(
                "encode.columns",
                format!("column {c} is pseudonymized"),
            ));
        }
        if t == DataType::Date32 {
            return Err(Error::invalid(
                "encode.columns",
                format!("column {c} is a date"),
            ));
        }
    }
    Ok(())
}

/// Pass 1's aggregates (SQL), one per encoded column, in the order [`read`] takes them.
pub(super) fn aggregates(job: &Job) -> Vec<String> {
    job.encode
        .columns
        .iter()
        .map(|c| format!("{CATEGORIES_FN}({})", sql::ident(c)))
        .collect()
}

/// Reads the fitted encodings from row `row` of `batch`, starting at column `*col` and leaving
/// it past [`aggregates`]' columns.
pub(super) fn read(
    job: &Job,
    batch: &RecordBatch,
    row: usize,
    col: &mut usize,
    fitted: &mut BTreeMap<String, Encoding>,
) -> Result<()> {
    for c in &job.encode.columns {
        let list = batch.column(*col).as_list_opt::<i32>();
        *col += 1;
        let mut values: Vec<String> = match list.filter(|l| l.is_valid(row)) {
            Some(l) => {
                let item = arrow::compute::cast(&l.value(row), &DataType::Utf8)?;
                let strings = item.as_string_opt::<i32>();
                match strings {
                    Some(s) => s.iter().flatten().map(str::to_string).collect(),
                    None => Vec::new(),
                }
            }
            None => Vec::new(),
        };
        values.sort();
        values.dedup();
        if values.is_empty() {
            return Err(Error::invalid(
                "encode.columns",
                format!("column {c} has no values to encode"),
            ));
        }
        fitted.insert(c.clone(), Encoding { values });
    }
    Ok(())
}

/// Pass 2's code of column `name`'s value: its position in `encoding`'s values.
pub(super) fn coded(name: &str, encoding: &Encoding) -> Expr {
    expr_fn::category_index(ident(name), &encoding.values).alias(name)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Array, ArrayRef, Int64Array, StringArray};
    use arrow::datatypes::Int32Type;
    use datafusion::prelude::SessionContext;

    use super::*;

    fn job(encode: &str, pii: &str) -> Job {
        let text = format!(
            "name = \"t\"\n[inputs.v]\npath = \"v.csv\"\n[encode]\ncolumns = {encode}\n\
             [pii]\n{pii}\n[output]\npath = \"out\"\n"
        );
        Job::from_toml(&text, "job.toml").unwrap_or_else(|e| panic!("{e}"))
    }

    fn rows() -> RecordBatch {
        RecordBatch::try_from_iter([
            (
                "smoking",
                Arc::new(StringArray::from(vec![
                    Some("never"),
                    None,
                    Some("smokes"),
                    Some("Unknown"),
                    Some("never"),
                ])) as ArrayRef,
            ),
            (
                "hypertension",
                Arc::new(Int64Array::from(vec![1, 0, 10, 0, 2])) as ArrayRef,
            ),
        ])
        .unwrap_or_else(|e| panic!("{e}"))
    }

    async fn fit(job: &Job, batch: RecordBatch) -> Result<BTreeMap<String, Encoding>> {
        let mut ctx = SessionContext::new();
        crate::functions::register_functions(&mut ctx)?;
        ctx.register_batch("rows", batch)?;
        let sql = format!("SELECT {} FROM rows", aggregates(job).join(", "));
        let out = ctx.sql(&sql).await?.collect().await?;
        let mut fitted = BTreeMap::new();
        let mut col = 0;
        read(job, &out[0], 0, &mut col, &mut fitted)?;
        Ok(fitted)
    }

    #[tokio::test]
    async fn categories_are_the_sorted_texts_and_codes_their_positions() {
        let job = job("[\"smoking\", \"hypertension\"]", "");
        let fitted = fit(&job, rows()).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(fitted["smoking"].values, ["Unknown", "never", "smokes"]);
        // Numbers sort as the text they are written as.
        assert_eq!(fitted["hypertension"].values, ["0", "1", "10", "2"]);
        let ctx = SessionContext::new();
        let codes = ctx
            .read_batch(rows())
            .and_then(|df| {
                df.select(vec![
                    coded("smoking", &fitted["smoking"]),
                    coded("hypertension", &fitted["hypertension"]),
                ])
            })
            .unwrap_or_else(|e| panic!("{e}"))
            .collect()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let smoking = codes[0].column(0).as_primitive::<Int32Type>();
        assert_eq!(
            smoking.iter().collect::<Vec<_>>(),
            [Some(1), None, Some(2), Some(0), Some(1)]
        );
        let hypertension = codes[0].column(1).as_primitive::<Int32Type>();
        assert_eq!(
            hypertension.iter().collect::<Vec<_>>(),
            [Some(1), Some(0), Some(2), Some(0), Some(3)]
        );
        assert_eq!(codes[0].column(1).null_count(), 0);
    }

    #[tokio::test]
    async fn errors_name_the_setting_and_the_column() {
        let nulls = RecordBatch::try_from_iter([(
            "smoking",
            Arc::new(StringArray::from(vec![None::<&str>, None])) as ArrayRef,
        )])
        .unwrap_or_else(|e| panic!("{e}"));
        let err = fit(&job("[\"smoking\"]", ""), nulls)
            .await
            .err()
            .map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some("invalid job: encode.columns: column smoking has no values to encode")
        );
        let joined =
            [("id", DataType::Utf8), ("seen", DataType::Date32)].map(|(n, t)| (n.to_string(), t));
        let refused = |encode: &str, pii: &str| {
            let job = job(encode, pii);
            let columns = Deidentified::build(&job, &joined).unwrap_or_else(|e| panic!("{e}"));
            check(&job, &columns).err().map(|e| e.to_string())
        };
        assert_eq!(
            refused("[\"id\"]", "pseudonymize = [\"id\"]\nkey_env = \"K\"").as_deref(),
            Some("invalid job: encode.columns: column id is pseudonymized")
        );
        assert_eq!(
            refused("[\"seen\"]", "").as_deref(),
            Some("invalid job: encode.columns: column seen is a date")
        );
        assert_eq!(
            refused("[\"sex\"]", "").as_deref(),
            Some("column sex named in encode.columns does not exist (available: id, seen)")
        );
    }
}
