//! The PII stage: the pseudonymization key (where it comes from, its id in the manifest, the
//! session option it travels in), what the policy does to each joined column (dropped,
//! generalized into an age, pseudonymized, kept), and the guard's schema half and the list of
//! columns its scanners read. Pseudonyms are computed only for the rows pass 2 writes (see
//! [`pseudonym`]); this stage's columns carry them in clear until then.

use arrow::datatypes::{DataType, Schema};
use datafusion::logical_expr::{Expr, cast, ident};
use datafusion::prelude::SessionContext;

use crate::error::{Error, Result};
use crate::functions::expr_fn;
use crate::job::Job;
use crate::manifest::PiiReport;

/// A key file's bytes without a trailing newline.
fn key_file_bytes(path: &str) -> Result<Vec<u8>> {
    let mut bytes = std::fs::read(path)
        .map_err(|e| Error::KeyMissing(format!("cannot read key file {path}: {e}")))?;
    while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        bytes.pop();
    }
    Ok(bytes)
}

/// Reads and checks a pseudonymization key file, as a job's `pii.key_file` is read: what an
/// executor holds for the jobs it runs.
pub fn read_key_file(path: &str) -> Result<Vec<u8>> {
    let key = key_file_bytes(path)?;
    crate::functions::check_key(&key)
        .map_err(|e| Error::KeyMissing(format!("key file {path}: {e}")))?;
    Ok(key)
}

/// Reads the pseudonymization key from the job's source (or the override file). The key is the
/// file's bytes without a trailing newline, or the variable's value.
pub fn resolve_key(job: &Job, key_file_override: Option<&str>) -> Result<Option<Vec<u8>>> {
    if job.pii.pseudonymize.is_empty() {
        return Ok(None);
    }
    let from_file = key_file_bytes;
    let key = if let Some(path) = key_file_override {
        from_file(path)?
    } else if let Some(var) = &job.pii.key_env {
        match std::env::var(var) {
            Ok(v) => v.into_bytes(),
            Err(_) => match &job.pii.key_file {
                Some(path) => from_file(path)?,
                None => {
                    return Err(Error::KeyMissing(format!(
                        "environment variable {var} (pii.key_env) is not set"
                    )));
                }
            },
        }
    } else if let Some(path) = &job.pii.key_file {
        from_file(path)?
    } else {
        return Err(Error::KeyMissing("the job names no key source".into()));
    };
    crate::functions::check_key(&key).map_err(Error::KeyMissing)?;
    Ok(Some(key))
}

/// Makes the key available to `emr_pseudonym` in this process and names it, by id only, in the
/// session. The key never travels with a session or a plan: a cluster's executors hold it
/// from their own key file, and a task whose executor holds another key fails naming both ids.
/// Returns the id, which the manifest records.
pub(super) fn install_key(ctx: &SessionContext, key: &[u8]) -> Result<String> {
    let id = crate::functions::hold_key(key);
    ctx.state_ref()
        .write()
        .config_mut()
        .options_mut()
        .set("emrflow.pseudonym_key_id", &id)?;
    Ok(id)
}

/// Whether the job never reads a column past its input: the policy drops it and nothing
/// derives from it (the age's dates do) or joins on it.
pub(super) fn never_read(job: &Job, column: &str) -> bool {
    job.pii.drop.iter().any(|d| d == column)
        && !job
            .pii
            .age
            .as_ref()
            .is_some_and(|a| a.dob == column || a.at == column)
        && !job.join.iter().any(|j| j.on == column)
}

/// A column of the de-identified rows, as pass 2 writes it before normalization and encoding.
#[derive(Debug, Clone)]
pub(super) struct OutputColumn {
    pub(super) name: String,
    pub(super) data_type: DataType,
}

/// The joined rows' columns after the PII policy: what the later stages may name.
#[derive(Debug)]
pub(super) struct Deidentified {
    /// Each output column's expression over the joined rows, in output order.
    pub(super) select: Vec<Expr>,
    pub(super) columns: Vec<OutputColumn>,
    /// Output columns written as pseudonyms.
    pub(super) pseudonymized: Vec<String>,
}

impl Deidentified {
    /// Applies the policy to the joined rows' data columns, refusing a policy that names a
    /// column they lack or derives an age from something other than two dates.
    pub(super) fn build(job: &Job, joined: &[(String, DataType)]) -> Result<Self> {
        let available = joined
            .iter()
            .map(|c| c.0.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        let require = |col: &str, field: &str| -> Result<DataType> {
            joined
                .iter()
                .find(|c| c.0 == col)
                .map(|c| c.1.clone())
                .ok_or_else(|| Error::MissingColumn {
                    column: col.to_string(),
                    field: field.to_string(),
                    available: available.clone(),
                })
        };
        for c in &job.pii.drop {
            require(c, "pii.drop")?;
        }
        for c in &job.pii.pseudonymize {
            require(c, "pii.pseudonymize")?;
        }
        if let Some(age) = &job.pii.age {
            for (c, f) in [(&age.dob, "pii.age.dob"), (&age.at, "pii.age.at")] {
                let t = require(c, f)?;
                if t != DataType::Date32 {
                    return Err(Error::invalid(
                        f,
                        format!("column {c} is {t}, not a date (YYYY-MM-DD)"),
                    ));
                }
            }
            if joined.iter().any(|c| c.0 == age.name) {
                return Err(Error::invalid(
                    "pii.age.as",
                    format!("column {} already exists", age.name),
                ));
            }
        }

        let dropped = |c: &str| {
            job.pii.drop.iter().any(|d| d == c) || job.pii.age.as_ref().is_some_and(|a| a.dob == c)
        };
        let mut out = Self {
            select: Vec::new(),
            columns: Vec::new(),
            pseudonymized: Vec::new(),
        };
        for (name, t) in joined {
            // The age takes the place of the date of birth it is computed from.
            if let Some(age) = &job.pii.age
                && &age.dob == name
            {
                out.select
                    .push(expr_fn::age_years(ident(&age.dob), ident(&age.at)).alias(&age.name));
                out.columns.push(OutputColumn {
                    name: age.name.clone(),
                    data_type: DataType::Int64,
                });
                continue;
            }
            if dropped(name) {
                continue;
            }
            out.select.push(ident(name));
            let data_type = if job.pii.pseudonymize.contains(name) {
                out.pseudonymized.push(name.clone());
                DataType::Utf8
            } else {
                t.clone()
            };
            out.columns.push(OutputColumn {
                name: name.clone(),
                data_type,
            });
        }
        Ok(out)
    }

    /// The type of output column `col`, or an error naming `field` (the job setting that named
    /// it) and the columns there are.
    pub(super) fn type_of(&self, col: &str, field: &str) -> Result<DataType> {
        self.columns
            .iter()
            .find(|c| c.name == col)
            .map(|c| c.data_type.clone())
            .ok_or_else(|| Error::MissingColumn {
                column: col.to_string(),
                field: field.to_string(),
                available: self
                    .columns
                    .iter()
                    .map(|c| c.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }
}

/// Pass 2's pseudonym of output column `name`: the keyed hash of its text. `text` is the type
/// SQL's `VARCHAR` names in the session, the text every key type was fitted and joined by.
pub(super) fn pseudonym(name: &str, text: &DataType) -> Expr {
    expr_fn::pseudonym(cast(ident(name), text.clone())).alias(name)
}

/// The string columns of the output the guard scans for identifiers: all but the pseudonyms,
/// which are hex by construction.
pub(super) fn scanned_columns(schema: &Schema, pseudonymized: &[String]) -> Vec<String> {
    schema
        .fields()
        .iter()
        .filter(|f| {
            matches!(
                f.data_type(),
                DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
            )
        })
        .map(|f| f.name().clone())
        .filter(|n| !pseudonymized.contains(n))
        .collect()
}

/// The guard's schema half: nothing the policy drops may survive under its own name.
pub(super) fn guard_schema(job: &Job, schema: &Schema) -> Result<()> {
    let mut survived: Vec<&str> = job
        .pii
        .drop
        .iter()
        .map(String::as_str)
        .chain(job.pii.age.iter().map(|a| a.dob.as_str()))
        .filter(|c| schema.field_with_name(c).is_ok())
        .collect();
    survived.sort();
    if survived.is_empty() {
        Ok(())
    } else {
        Err(Error::PiiGuard(format!(
            "dropped column(s) {} are still in the output; nothing was published",
            survived.join(", ")
        )))
    }
}

/// The manifest's account of the policy applied.
pub(super) fn report(job: &Job, key_id: Option<String>, scanned: Vec<String>) -> PiiReport {
    PiiReport {
        dropped: job.pii.drop.clone(),
        pseudonymized: job.pii.pseudonymize.clone(),
        generalized: job
            .pii
            .age
            .iter()
            .map(|a| (a.dob.clone(), a.name.clone()))
            .collect(),
        key_id,
        scanned,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{ArrayRef, Date32Array, RecordBatch, StringArray};
    use arrow::datatypes::Field;
    use datafusion::datasource::MemTable;

    use super::*;

    fn job(pii: &str) -> Job {
        let text = format!(
            "name = \"t\"\n[inputs.v]\npath = \"v.csv\"\n[pii]\n{pii}\n[output]\npath = \"out\"\n"
        );
        Job::from_toml(&text, "job.toml").unwrap_or_else(|e| panic!("{e}"))
    }

    fn joined() -> Vec<(String, DataType)> {
        [
            ("visit_id", DataType::Utf8),
            ("date_of_birth", DataType::Date32),
            ("visit_date", DataType::Date32),
            ("full_name", DataType::Utf8),
            ("bmi", DataType::Float64),
        ]
        .into_iter()
        .map(|(n, t)| (n.to_string(), t))
        .collect()
    }

    const POLICY: &str = "drop = [\"full_name\", \"visit_date\"]\npseudonymize = [\"visit_id\"]\n\
        key_env = \"K\"\nage = { dob = \"date_of_birth\", at = \"visit_date\", as = \"age\" }";

    #[test]
    fn each_column_is_dropped_generalized_pseudonymized_or_kept() {
        let out = Deidentified::build(&job(POLICY), &joined()).unwrap_or_else(|e| panic!("{e}"));
        let columns: Vec<String> = out
            .columns
            .iter()
            .map(|c| format!("{} {}", c.name, c.data_type))
            .collect();
        assert_eq!(columns, ["visit_id Utf8", "age Int64", "bmi Float64"]);
        assert_eq!(out.pseudonymized, ["visit_id"]);
        let select: Vec<String> = out.select.iter().map(|e| e.to_string()).collect();
        assert_eq!(
            select,
            [
                "visit_id",
                "emr_age_years(date_of_birth, visit_date) AS age",
                "bmi"
            ]
        );
    }

    #[tokio::test]
    async fn the_age_is_whole_years_at_the_visit() {
        let out = Deidentified::build(&job(POLICY), &joined()).unwrap_or_else(|e| panic!("{e}"));
        let mut ctx = SessionContext::new();
        crate::functions::register_functions(&mut ctx).unwrap_or_else(|e| panic!("{e}"));
        // 1980-06-15 to 2020-06-14 and 2020-06-15; 1900-01-01 to 2020-01-01 is capped.
        let days = |d: &str| {
            let date = chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d").unwrap_or_default();
            (date - chrono::NaiveDate::default()).num_days() as i32
        };
        let dates = |ds: &[&str]| -> ArrayRef {
            Arc::new(Date32Array::from(
                ds.iter().map(|d| days(d)).collect::<Vec<_>>(),
            ))
        };
        let batch = RecordBatch::try_new(
            Arc::new(Schema::new(
                joined()
                    .into_iter()
                    .map(|(n, t)| Field::new(n, t, true))
                    .collect::<Vec<_>>(),
            )),
            vec![
                Arc::new(StringArray::from(vec!["V1", "V2", "V3"])),
                dates(&["1980-06-15", "1980-06-15", "1900-01-01"]),
                dates(&["2020-06-14", "2020-06-15", "2020-01-01"]),
                Arc::new(StringArray::from(vec!["A", "B", "C"])),
                Arc::new(arrow::array::Float64Array::from(vec![1.0, 2.0, 3.0])),
            ],
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let table =
            MemTable::try_new(batch.schema(), vec![vec![batch]]).unwrap_or_else(|e| panic!("{e}"));
        let rows = ctx
            .read_table(Arc::new(table))
            .and_then(|df| df.select(out.select.clone()))
            .unwrap_or_else(|e| panic!("{e}"))
            .collect()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let text = arrow::util::pretty::pretty_format_batches(&rows)
            .unwrap_or_else(|e| panic!("{e}"))
            .to_string();
        insta::assert_snapshot!(text, @r"
        +----------+-----+-----+
        | visit_id | age | bmi |
        +----------+-----+-----+
        | V1       | 39  | 1.0 |
        | V2       | 40  | 2.0 |
        | V3       | 90  | 3.0 |
        +----------+-----+-----+
        ");
    }

    #[test]
    fn errors_name_the_setting_and_the_column() {
        let err = |policy: &str| {
            Deidentified::build(&job(policy), &joined())
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        assert_eq!(
            err("drop = [\"phone\"]"),
            "column phone named in pii.drop does not exist \
             (available: visit_id, date_of_birth, visit_date, full_name, bmi)"
        );
        assert_eq!(
            err("age = { dob = \"full_name\", at = \"visit_date\", as = \"age\" }"),
            "invalid job: pii.age.dob: column full_name is Utf8, not a date (YYYY-MM-DD)"
        );
        assert_eq!(
            err("age = { dob = \"date_of_birth\", at = \"visit_date\", as = \"bmi\" }"),
            "invalid job: pii.age.as: column bmi already exists"
        );
    }

    #[test]
    fn the_guard_refuses_a_dropped_column_in_the_output() {
        let job = job(POLICY);
        let schema = |names: &[&str]| {
            Schema::new(
                names
                    .iter()
                    .map(|n| Field::new(*n, DataType::Utf8, true))
                    .collect::<Vec<_>>(),
            )
        };
        assert!(guard_schema(&job, &schema(&["visit_id", "age"])).is_ok());
        let err = guard_schema(&job, &schema(&["visit_date", "date_of_birth", "full_name"]))
            .err()
            .map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some(
                "PII guard: dropped column(s) date_of_birth, full_name, visit_date are still in \
                 the output; nothing was published"
            )
        );
        assert_eq!(
            scanned_columns(&schema(&["visit_id", "note"]), &["visit_id".to_string()]),
            ["note"]
        );
    }

    #[test]
    fn a_key_file_loses_its_trailing_newline_and_must_be_long_enough() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("key");
        let hex = "0123456789abcdef".repeat(4);
        std::fs::write(&path, format!("{hex}\r\n")).unwrap_or_else(|e| panic!("{e}"));
        let job = job(POLICY);
        let key = resolve_key(&job, path.to_str()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(key.as_deref(), Some(hex.as_bytes()));
        std::fs::write(&path, "short\n").unwrap_or_else(|e| panic!("{e}"));
        let err = resolve_key(&job, path.to_str())
            .err()
            .map(|e| e.to_string());
        assert!(
            err.as_deref()
                .is_some_and(|e| e.contains("the key holds 5 bytes")
                    && e.contains("at least 32 random bytes")),
            "{err:?}"
        );
        // Nothing to pseudonymize needs no key.
        let none = self::job("drop = [\"full_name\"]");
        assert_eq!(resolve_key(&none, None).ok(), Some(None));
    }
}
