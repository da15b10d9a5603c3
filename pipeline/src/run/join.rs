//! The join stage: puts the inputs side by side as the job's `[[join]]`s say (each a left join
//! on one key column), marks each row whose key found no match so the drop stage can count it,
//! and checks that every lookup input's key is unique. It owns the joined rows' column list
//! (which input each column comes from); what happens to the columns is the PII stage's.
//!
//! The join stays SQL: a chain of aliased tables, each `RIGHT JOIN`ed to the rows so far, reads
//! more plainly than the same chain of DataFrames with their qualifiers.

use std::collections::BTreeMap;

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::{DataType, Int64Type};
use datafusion::prelude::SessionContext;

use super::inputs::{Input, diagnose_on_error, names};
use super::pii::never_read;
use super::sql::ident;
use crate::error::{Error, Result};
use crate::job::Job;

/// A column of the joined rows, as the input alias (`t0`, `t1`, ...) it is read from names it.
#[derive(Debug, Clone)]
struct JoinedColumn {
    alias: String,
    name: String,
    data_type: DataType,
    /// The join whose match this column marks: it holds that join's key from the lookup side,
    /// NULL where the key found no row.
    marks: Option<usize>,
    /// Whether the column is an input's own marker (set on a row its input found fault with).
    input_marker: bool,
}

/// A marker column and the drop reason of the rows it marks: a join's (NULL where the key found
/// no row) or an input's own (set where the input found fault with the row: a FHIR value in a
/// unit no rule converts).
#[derive(Debug, Clone)]
pub(super) struct JoinMarker {
    pub(super) column: String,
    pub(super) reason: String,
    /// Whether a set value, rather than NULL, marks the row.
    pub(super) when_set: bool,
}

/// The marker of an input's column, when it is one.
fn input_marker(column: &str) -> Option<JoinMarker> {
    super::fhir::unit_reason(column).map(|reason| JoinMarker {
        column: column.to_string(),
        reason,
        when_set: true,
    })
}

/// The joined rows of a job, before anything is dropped or transformed.
#[derive(Debug)]
pub(super) struct Joined {
    from: String,
    columns: Vec<JoinedColumn>,
    markers: Vec<JoinMarker>,
}

impl Joined {
    /// Joins the job's inputs, refusing a join key missing from either side and a column that
    /// two inputs share.
    pub(super) fn build(job: &Job, inputs: &BTreeMap<String, Input>) -> Result<Self> {
        let base = job.base_input();
        let mut columns: Vec<JoinedColumn> = inputs[base]
            .schema
            .fields()
            .iter()
            .map(|f| JoinedColumn {
                alias: "t0".into(),
                name: f.name().clone(),
                data_type: f.data_type().clone(),
                marks: None,
                input_marker: input_marker(f.name()).is_some(),
            })
            .collect();
        let mut from = format!("{} t0", inputs[base].table);
        let mut markers = Vec::new();
        let mut own_markers: Vec<JoinMarker> = inputs[base]
            .schema
            .fields()
            .iter()
            .filter_map(|f| input_marker(f.name()))
            .collect();
        for (j, join) in job.join.iter().enumerate() {
            let alias = format!("t{}", j + 1);
            let right = &inputs[&join.right];
            let Some(left_alias) = columns
                .iter()
                .find(|c| c.name == join.on)
                .map(|c| c.alias.clone())
            else {
                return Err(Error::MissingColumn {
                    column: join.on.clone(),
                    field: format!("join[{j}].on"),
                    available: columns
                        .iter()
                        .map(|c| c.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            };
            if right.schema.field_with_name(&join.on).is_err() {
                return Err(Error::MissingColumn {
                    column: join.on.clone(),
                    field: format!("join[{j}].on (input {})", join.right),
                    available: names(&right.schema),
                });
            }
            // Every row of the left side is kept, so this is a left join; it is written as the
            // right input RIGHT JOIN the rows so far because DataFusion builds its hash table
            // from the join's left input when it has no statistics to choose by (CSV inputs),
            // and the table to hold in memory is the lookup table, not the stream of visits.
            let left_side = if j == 0 { from } else { format!("({from})") };
            from = format!(
                "{} {alias} RIGHT JOIN {left_side} ON {left_alias}.{} = {alias}.{}",
                right.table,
                ident(&join.on),
                ident(&join.on)
            );
            let marker = format!("__emr_join_{j}");
            markers.push(JoinMarker {
                column: marker.clone(),
                reason: format!("join: no matching {} row", join.right),
                when_set: false,
            });
            columns.push(JoinedColumn {
                alias: alias.clone(),
                name: marker,
                data_type: DataType::Null,
                marks: Some(j),
                input_marker: false,
            });
            for f in right.schema.fields() {
                if f.name() == &join.on {
                    continue;
                }
                if columns.iter().any(|c| &c.name == f.name()) {
                    return Err(Error::invalid(
                        format!("join[{j}]"),
                        format!(
                            "column {} exists in {} and in an earlier input",
                            f.name(),
                            join.right
                        ),
                    ));
                }
                own_markers.extend(input_marker(f.name()));
                columns.push(JoinedColumn {
                    alias: alias.clone(),
                    name: f.name().clone(),
                    data_type: f.data_type().clone(),
                    marks: None,
                    input_marker: input_marker(f.name()).is_some(),
                });
            }
        }
        // An input's own faults are named before a join's: they say more about the row.
        own_markers.extend(markers);
        let markers = own_markers;
        Ok(Self {
            from,
            columns,
            markers,
        })
    }

    /// The joined rows (registered as `__emr_src`): every column the job reads past its input,
    /// then nothing else, so a dropped identifier is not even parsed beyond the scan.
    pub(super) fn sql(&self, job: &Job) -> String {
        let select: Vec<String> = self
            .columns
            .iter()
            .filter(|c| !never_read(job, &c.name))
            .map(|c| match c.marks {
                Some(j) => format!(
                    "{}.{} AS {}",
                    c.alias,
                    ident(&job.join[j].on),
                    ident(&c.name)
                ),
                None => format!("{}.{}", c.alias, ident(&c.name)),
            })
            .collect();
        format!("SELECT {} FROM {}", select.join(", "), self.from)
    }

    /// The data columns of the joined rows (without the markers), in order, with their types.
    pub(super) fn data_columns(&self) -> Vec<(String, DataType)> {
        self.columns
            .iter()
            .filter(|c| c.marks.is_none() && !c.input_marker)
            .map(|c| (c.name.clone(), c.data_type.clone()))
            .collect()
    }

    /// The inputs' own markers, then one marker per join in the job's order.
    pub(super) fn markers(&self) -> &[JoinMarker] {
        &self.markers
    }
}

/// Checks that each join's key is unique in its lookup input and returns the rows each lookup
/// input holds, by name. `held` has both counts for the inputs held in memory, counted while
/// they were loaded; the others are counted by a scan.
pub(super) async fn check_keys(
    ctx: &SessionContext,
    job: &Job,
    inputs: &BTreeMap<String, Input>,
    held: &BTreeMap<String, (u64, u64)>,
) -> Result<BTreeMap<String, u64>> {
    let mut rows = BTreeMap::new();
    for (j, join) in job.join.iter().enumerate() {
        let (n, d) = match held.get(&join.right) {
            Some(counts) => *counts,
            None => {
                let sql = key_check_sql(&inputs[&join.right].table, &join.on);
                let batches = diagnose_on_error(collect(ctx, &sql).await, inputs).await?;
                (int_at(&batches, 0), int_at(&batches, 1))
            }
        };
        if n != d {
            return Err(Error::invalid(
                format!("join[{j}].on"),
                format!(
                    "{} is not unique in input {} ({} duplicate keys)",
                    join.on,
                    join.right,
                    n - d
                ),
            ));
        }
        rows.insert(join.right.clone(), n);
    }
    Ok(rows)
}

/// Rows and distinct keys of a lookup input.
pub(super) fn key_check_sql(table: &str, key: &str) -> String {
    format!(
        "SELECT count(*) AS n, count(DISTINCT {k}) AS d FROM {table}",
        k = ident(key)
    )
}

async fn collect(ctx: &SessionContext, sql: &str) -> Result<Vec<RecordBatch>> {
    Ok(ctx.sql(sql).await?.collect().await?)
}

fn int_at(batches: &[RecordBatch], col: usize) -> u64 {
    batches
        .iter()
        .find(|b| b.num_rows() > 0)
        .and_then(|b| {
            b.column(col)
                .as_primitive_opt::<Int64Type>()
                .map(|a| a.value(0))
        })
        .unwrap_or(0) as u64
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{ArrayRef, Float64Array, StringArray};

    use super::*;
    use crate::run::inputs::memory_input;

    fn job(pii: &str) -> Job {
        let text = format!(
            "name = \"t\"\n[inputs.visits]\npath = \"v.csv\"\n[inputs.patients]\npath = \"p.csv\"\n\
             [[join]]\nleft = \"visits\"\nright = \"patients\"\non = \"patient_id\"\n{pii}\n\
             [output]\npath = \"out\"\n"
        );
        Job::from_toml(&text, "job.toml").unwrap_or_else(|e| panic!("{e}"))
    }

    fn strings(values: &[Option<&str>]) -> ArrayRef {
        Arc::new(StringArray::from(values.to_vec()))
    }

    fn batch(columns: Vec<(&str, ArrayRef)>) -> RecordBatch {
        RecordBatch::try_from_iter(columns).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Three visits, one of a patient `patients` does not have.
    fn inputs(ctx: &SessionContext, patients: RecordBatch) -> BTreeMap<String, Input> {
        let visits = batch(vec![
            ("visit_id", strings(&[Some("V1"), Some("V2"), Some("V3")])),
            ("patient_id", strings(&[Some("P1"), Some("P9"), Some("P2")])),
            ("bmi", Arc::new(Float64Array::from(vec![20.0, 21.0, 22.0]))),
        ]);
        [
            ("visits".to_string(), memory_input(ctx, 0, "visits", visits)),
            (
                "patients".to_string(),
                memory_input(ctx, 1, "patients", patients),
            ),
        ]
        .into()
    }

    fn patients(ids: &[Option<&str>], names: &[Option<&str>]) -> RecordBatch {
        batch(vec![
            ("patient_id", strings(ids)),
            ("full_name", strings(names)),
        ])
    }

    #[tokio::test]
    async fn keeps_every_left_row_and_marks_the_unmatched() {
        let ctx = SessionContext::new();
        let inputs = inputs(
            &ctx,
            patients(&[Some("P1"), Some("P2")], &[Some("Ann"), Some("Bo")]),
        );
        let job = job("");
        let joined = Joined::build(&job, &inputs).unwrap_or_else(|e| panic!("{e}"));
        let columns: Vec<String> = joined.data_columns().into_iter().map(|c| c.0).collect();
        assert_eq!(columns, ["visit_id", "patient_id", "bmi", "full_name"]);
        assert_eq!(joined.markers()[0].reason, "join: no matching patients row");
        let sql = format!(
            "SELECT visit_id, __emr_join_0, full_name FROM ({}) ORDER BY visit_id",
            joined.sql(&job)
        );
        let rows = ctx
            .sql(&sql)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .collect()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let text = arrow::util::pretty::pretty_format_batches(&rows)
            .unwrap_or_else(|e| panic!("{e}"))
            .to_string();
        insta::assert_snapshot!(text, @r"
        +----------+--------------+-----------+
        | visit_id | __emr_join_0 | full_name |
        +----------+--------------+-----------+
        | V1       | P1           | Ann       |
        | V2       |              |           |
        | V3       | P2           | Bo        |
        +----------+--------------+-----------+
        ");
    }

    #[tokio::test]
    async fn a_dropped_column_is_not_read_past_its_input() {
        let ctx = SessionContext::new();
        let inputs = inputs(&ctx, patients(&[Some("P1")], &[Some("Ann")]));
        let job = job("[pii]\ndrop = [\"full_name\"]");
        let joined = Joined::build(&job, &inputs).unwrap_or_else(|e| panic!("{e}"));
        let df = ctx
            .sql(&joined.sql(&job))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let read: Vec<String> = df
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        assert_eq!(read, ["visit_id", "patient_id", "bmi", "__emr_join_0"]);
    }

    #[tokio::test]
    async fn errors_name_the_join_and_the_column() {
        let ctx = SessionContext::new();
        let no_key = batch(vec![("id", strings(&[Some("P1")]))]);
        let err = Joined::build(&job(""), &inputs(&ctx, no_key))
            .err()
            .map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some(
                "column patient_id named in join[0].on (input patients) does not exist (available: id)"
            )
        );
        let ctx = SessionContext::new();
        let shared = batch(vec![
            ("patient_id", strings(&[Some("P1")])),
            ("bmi", Arc::new(Float64Array::from(vec![1.0])) as ArrayRef),
        ]);
        let err = Joined::build(&job(""), &inputs(&ctx, shared))
            .err()
            .map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some("invalid job: join[0]: column bmi exists in patients and in an earlier input")
        );
    }

    #[tokio::test]
    async fn a_lookup_key_must_be_unique() {
        let ctx = SessionContext::new();
        let dup = patients(
            &[Some("P1"), Some("P1"), Some("P2"), None],
            &[None, None, None, None],
        );
        let inputs = inputs(&ctx, dup);
        let job = job("");
        let err = check_keys(&ctx, &job, &inputs, &BTreeMap::new())
            .await
            .err()
            .map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some(
                "invalid job: join[0].on: patient_id is not unique in input patients (2 duplicate keys)"
            )
        );
        // Counts taken while the input was held in memory are used as they are.
        let held = [("patients".to_string(), (2, 2))].into();
        let rows = check_keys(&ctx, &job, &inputs, &held).await.ok();
        assert_eq!(rows, Some([("patients".to_string(), 2)].into()));
    }
}
