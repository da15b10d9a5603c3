//! The SQL the run built before its stages were split into modules, kept only to show that
//! the split hands DataFusion the same optimized plans. Remove with the comparison test.
#![allow(dead_code, unused_qualifications, clippy::all)]

use std::collections::BTreeMap;

use arrow::datatypes::{DataType, Schema};

use super::fit::Fit;
use super::inputs::Input;
use crate::error::{Error, Result};
use crate::functions::{AGE_FN, CATEGORY_INDEX_FN, FIRST_TRUE_FN, PSEUDONYM_FN};
use crate::job::Job;
use crate::manifest::Normalizer;

const KEPT_TABLE: &str = "__emr_kept";

fn names(schema: &Schema) -> String {
    super::inputs::names(schema)
}

/// Quotes an identifier for SQL.
fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quotes a string literal for SQL.
fn literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// A float literal that round-trips exactly.
fn float(x: f64) -> String {
    format!("CAST({x:?} AS DOUBLE)")
}

/// The SQL of a job, built once its inputs' schemas are known.
#[derive(Debug)]
pub(super) struct Plan {
    pub(super) src_sql: String,
    /// The joined rows with their drop reason; pseudonymized columns are still in clear, and
    /// only the rows written are pseudonymized ([`Plan::final_sql`]): a held run then keeps
    /// the short originals in memory rather than 64-character pseudonyms (in this process
    /// only; nothing is written before pass 2), and no run hashes a row it drops.
    pub(super) tagged_sql: String,
    /// The rows pass 2 keeps: `__emr_tagged`'s rows whose reason is NULL, without the reason.
    pub(super) kept_sql: String,
    /// Drop reasons by the number `__emr_reason` holds.
    reasons: Vec<String>,
    /// Output columns in order with their base expression over `__emr_tagged`'s columns.
    outputs: Vec<OutputColumn>,
    pseudonymized_out: Vec<String>,
    minmax: Vec<String>,
    zscore: Vec<String>,
    encode: Vec<String>,
    label: Option<String>,
    label_type: Option<DataType>,
}

#[derive(Debug, Clone)]
struct OutputColumn {
    name: String,
    data_type: DataType,
}

impl Plan {
    pub(super) fn build(job: &Job, inputs: &BTreeMap<String, Input>) -> Result<Self> {
        // Columns of the joined rows, each owned by the input alias it comes from.
        let base = job.base_input();
        let mut columns: Vec<(String, String, DataType)> = Vec::new(); // (alias, name, type)
        let mut aliases: BTreeMap<&str, String> = BTreeMap::new();
        aliases.insert(base, "t0".into());
        for f in inputs[base].schema.fields() {
            columns.push(("t0".into(), f.name().clone(), f.data_type().clone()));
        }
        let mut from = format!("{} t0", inputs[base].table);
        let mut join_markers = Vec::new();
        for (j, join) in job.join.iter().enumerate() {
            let alias = format!("t{}", j + 1);
            let right = &inputs[&join.right];
            let Some(left_col) = columns.iter().find(|c| c.1 == join.on).cloned() else {
                return Err(Error::MissingColumn {
                    column: join.on.clone(),
                    field: format!("join[{j}].on"),
                    available: columns
                        .iter()
                        .map(|c| c.1.as_str())
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
                "{} {alias} RIGHT JOIN {left_side} ON {}.{} = {alias}.{}",
                right.table,
                left_col.0,
                ident(&join.on),
                ident(&join.on)
            );
            let marker = format!("__emr_join_{j}");
            join_markers.push((
                marker.clone(),
                format!("join: no matching {} row", join.right),
            ));
            columns.push((alias.clone(), join.on.clone(), DataType::Null));
            let last = columns.len() - 1;
            columns[last].1 = marker;
            for f in right.schema.fields() {
                if f.name() == &join.on {
                    continue;
                }
                if columns.iter().any(|c| &c.1 == f.name()) {
                    return Err(Error::invalid(
                        format!("join[{j}]"),
                        format!(
                            "column {} exists in {} and in an earlier input",
                            f.name(),
                            join.right
                        ),
                    ));
                }
                columns.push((alias.clone(), f.name().clone(), f.data_type().clone()));
            }
            aliases.insert(&join.right, alias);
        }
        let src_select: Vec<String> = columns
            .iter()
            .filter(|(_, name, _)| !never_read(job, name))
            .map(|(alias, name, _)| match name.strip_prefix("__emr_join_") {
                Some(j) => {
                    let on = &job.join[j.parse::<usize>().unwrap_or(0)].on;
                    format!("{alias}.{} AS {}", ident(on), ident(name))
                }
                None => format!("{alias}.{}", ident(name)),
            })
            .collect();
        let src_sql = format!("SELECT {} FROM {from}", src_select.join(", "));
        let data_cols: Vec<(String, DataType)> = columns
            .iter()
            .filter(|c| !c.1.starts_with("__emr_join_"))
            .map(|c| (c.1.clone(), c.2.clone()))
            .collect();
        let available = data_cols
            .iter()
            .map(|c| c.0.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        let require = |col: &str, field: &str| -> Result<DataType> {
            data_cols
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
            if data_cols.iter().any(|c| c.0 == age.name) {
                return Err(Error::invalid(
                    "pii.age.as",
                    format!("column {} already exists", age.name),
                ));
            }
        }

        // Output columns (base expressions, before normalization and encoding).
        let dropped = |c: &str| {
            job.pii.drop.iter().any(|d| d == c) || job.pii.age.as_ref().is_some_and(|a| a.dob == c)
        };
        let mut tagged_select: Vec<String> = Vec::new();
        let mut outputs = Vec::new();
        let mut pseudonymized_out = Vec::new();
        for (name, t) in &data_cols {
            if let Some(age) = &job.pii.age
                && &age.dob == name
            {
                tagged_select.push(format!(
                    "{AGE_FN}({}, {}) AS {}",
                    ident(&age.dob),
                    ident(&age.at),
                    ident(&age.name)
                ));
                outputs.push(OutputColumn {
                    name: age.name.clone(),
                    data_type: DataType::Int64,
                });
                continue;
            }
            if dropped(name) {
                continue;
            }
            if job.pii.pseudonymize.contains(name) {
                tagged_select.push(ident(name));
                pseudonymized_out.push(name.clone());
                outputs.push(OutputColumn {
                    name: name.clone(),
                    data_type: DataType::Utf8,
                });
            } else {
                tagged_select.push(ident(name));
                outputs.push(OutputColumn {
                    name: name.clone(),
                    data_type: t.clone(),
                });
            }
        }
        let out_type = |col: &str, field: &str| -> Result<DataType> {
            outputs
                .iter()
                .find(|c| c.name == col)
                .map(|c| c.data_type.clone())
                .ok_or_else(|| Error::MissingColumn {
                    column: col.to_string(),
                    field: field.to_string(),
                    available: outputs
                        .iter()
                        .map(|c| c.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                })
        };
        for c in job.normalize.minmax.iter().chain(&job.normalize.zscore) {
            let t = out_type(c, "normalize")?;
            if !t.is_numeric() {
                return Err(Error::invalid(
                    "normalize",
                    format!("column {c} is {t}, not numeric"),
                ));
            }
        }
        for c in &job.encode.columns {
            let t = out_type(c, "encode.columns")?;
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
        for c in job.ranges.keys() {
            let t = out_type(c, "ranges")?;
            if !t.is_numeric() {
                return Err(Error::invalid(
                    format!("ranges.{c}"),
                    format!("column {c} is {t}, not numeric"),
                ));
            }
        }
        for c in &job.dropna.columns {
            out_type(c, "dropna.columns")?;
        }
        if let Some(label) = &job.label {
            out_type(label, "label")?;
        }
        if let Some(key) = &job.row_key {
            out_type(key, "row_key")?;
        }
        if let Some(features) = &job.features {
            for c in features {
                out_type(c, "features")?;
            }
        }

        // Drop reasons, in order: unmatched joins, nulls, out-of-range values.
        let mut cases: Vec<(String, String)> = join_markers
            .iter()
            .map(|(m, reason)| (format!("{} IS NULL", ident(m)), reason.clone()))
            .collect();
        let mut null_cols: Vec<String> = if job.dropna.all {
            outputs.iter().map(|c| c.name.clone()).collect()
        } else {
            job.dropna.columns.clone()
        };
        if let Some(label) = &job.label
            && !null_cols.contains(label)
        {
            null_cols.push(label.clone());
        }
        for c in &null_cols {
            cases.push((format!("{} IS NULL", ident(c)), format!("null: {c}")));
        }
        for (c, [lo, hi]) in &job.ranges {
            cases.push((
                format!(
                    "CAST({c} AS DOUBLE) < {} OR CAST({c} AS DOUBLE) > {}",
                    float(*lo),
                    float(*hi),
                    c = ident(c)
                ),
                format!("out of range: {c}"),
            ));
        }
        // The reason is a number into `reasons`: pass 1 groups by it, and grouping a million
        // rows by a small integer costs far less than building and hashing their strings.
        let reason_expr = if cases.is_empty() {
            "CAST(NULL AS INT)".to_string()
        } else {
            let conditions: Vec<String> =
                cases.iter().map(|(cond, _)| format!("({cond})")).collect();
            format!("{FIRST_TRUE_FN}({})", conditions.join(", "))
        };
        let reasons: Vec<String> = cases.iter().map(|(_, reason)| reason.clone()).collect();
        let label_type = match &job.label {
            Some(l) => Some(out_type(l, "label")?),
            None => None,
        };
        let inner_cols: Vec<String> = tagged_select
            .iter()
            .cloned()
            .chain(join_markers.iter().map(|(m, _)| ident(m)))
            .collect();
        let tagged_sql = format!(
            "SELECT *, {reason_expr} AS __emr_reason FROM (SELECT {} FROM __emr_src)",
            inner_cols.join(", ")
        );
        // Pass 2 keeps the rows no reason matched. Saying so as a conjunction of `IS NOT TRUE`
        // (a NULL condition does not match a CASE branch either) spares it building the reason
        // strings only to test them for NULL.
        let kept_predicate = if cases.is_empty() {
            "TRUE".to_string()
        } else {
            cases
                .iter()
                .map(|(cond, _)| format!("({cond}) IS NOT TRUE"))
                .collect::<Vec<_>>()
                .join(" AND ")
        };
        let kept_sql = format!(
            "SELECT * FROM (SELECT {} FROM __emr_src) WHERE {kept_predicate}",
            inner_cols.join(", ")
        );
        Ok(Self {
            src_sql,
            tagged_sql,
            kept_sql,
            reasons,
            outputs,
            pseudonymized_out,
            minmax: job.normalize.minmax.clone(),
            zscore: job.normalize.zscore.clone(),
            encode: job.encode.columns.clone(),
            label: job.label.clone(),
            label_type,
        })
    }

    /// The output rows: `kept` (the surviving rows, as `kept_sql` gives them) normalized,
    /// encoded and pseudonymized.
    pub(super) fn final_sql(&self, fit: &Fit, kept: &str) -> String {
        let cols: Vec<String> = self
            .outputs
            .iter()
            .map(|c| {
                let id = ident(&c.name);
                if let Some(n) = fit.normalizers.get(&c.name) {
                    let x = format!("CAST({id} AS DOUBLE)");
                    let expr = match *n {
                        Normalizer::MinMax { min, max } if max > min => {
                            format!("({x} - {}) / {}", float(min), float(max - min))
                        }
                        Normalizer::ZScore { mean, std } if std > 0.0 => {
                            format!("({x} - {}) / {}", float(mean), float(std))
                        }
                        // A constant column carries no information; it maps to 0 (nulls stay).
                        _ => format!("CASE WHEN {id} IS NULL THEN NULL ELSE CAST(0 AS DOUBLE) END"),
                    };
                    format!("{expr} AS {id}")
                } else if let Some(enc) = fit.encodings.get(&c.name) {
                    let categories: Vec<String> = enc.values.iter().map(|v| literal(v)).collect();
                    format!(
                        "{CATEGORY_INDEX_FN}({id}, {}) AS {id}",
                        categories.join(", ")
                    )
                } else if self.pseudonymized_out.contains(&c.name) {
                    format!("{PSEUDONYM_FN}(CAST({id} AS VARCHAR)) AS {id}")
                } else {
                    id
                }
            })
            .collect();
        format!("SELECT {} FROM ({kept})", cols.join(", "))
    }
}

/// Whether the job never reads a column past its input: the policy drops it and nothing
/// derives from it (the age's dates do) or joins on it.
fn never_read(job: &Job, column: &str) -> bool {
    job.pii.drop.iter().any(|d| d == column)
        && !job
            .pii
            .age
            .as_ref()
            .is_some_and(|a| a.dob == column || a.at == column)
        && !job.join.iter().any(|j| j.on == column)
}

pub(super) fn fit_sql(plan: &Plan, held: bool) -> String {
    let reason = if held {
        "CAST(NULL AS INT)"
    } else {
        "__emr_reason"
    };
    let mut aggs = vec![reason.to_string(), "count(*)".to_string()];
    let x = |c: &str| format!("CAST({} AS DOUBLE)", ident(c));
    for c in &plan.minmax {
        aggs.push(format!("min({})", x(c)));
        aggs.push(format!("max({})", x(c)));
    }
    for c in &plan.zscore {
        // Exact, so the fitted normalizer does not depend on the partitioning.
        aggs.push(format!("{}({})", crate::moments::MOMENTS_FN, x(c)));
    }
    for c in &plan.encode {
        aggs.push(format!(
            "{}({})",
            crate::categories::CATEGORIES_FN,
            ident(c)
        ));
    }
    if let Some(label) = &plan.label {
        aggs.push(format!("min(CAST({} AS BIGINT))", ident(label)));
        aggs.push(format!("max(CAST({} AS BIGINT))", ident(label)));
    }
    if held {
        format!("SELECT {} FROM {KEPT_TABLE}", aggs.join(", "))
    } else {
        format!(
            "SELECT {} FROM __emr_tagged GROUP BY __emr_reason",
            aggs.join(", ")
        )
    }
}
