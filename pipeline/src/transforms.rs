//! Applies a published dataset's fitted transforms (normalization statistics and categorical
//! encodings from its manifest) to new raw rows, so a model trained on the dataset sees new rows
//! exactly as it saw its training rows. It fits nothing: everything comes from the manifest.
//! [`apply_fitted`] transforms a DataFrame (files of rows); [`fitted_value`] one raw value, the
//! same arithmetic, for the online layer's single rows, where planning a query would cost more
//! than the answer.

use arrow::datatypes::DataType;
use datafusion::logical_expr::{Expr, case, cast, col, lit};
use datafusion::prelude::DataFrame;

use crate::error::{Error, Result};
use crate::manifest::Manifest;

/// Transforms the columns of `df` that the manifest normalized or encoded; other columns pass
/// through. A category the encoding never saw is an error naming the column and the count.
pub async fn apply_fitted(df: DataFrame, manifest: &Manifest) -> Result<DataFrame> {
    let names: Vec<String> = df
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    let mut df = df;
    for name in &names {
        let column = col(format!("\"{}\"", name.replace('"', "\"\"")));
        if let Some(n) = manifest.normalization.get(name) {
            let x = cast(column.clone(), DataType::Float64);
            let expr = match *n {
                crate::manifest::Normalizer::MinMax { min, max } if max > min => {
                    (x - lit(min)) / lit(max - min)
                }
                crate::manifest::Normalizer::ZScore { mean, std } if std > 0.0 => {
                    (x - lit(mean)) / lit(std)
                }
                _ => x * lit(0.0),
            };
            df = df.with_column(name, expr)?;
        } else if let Some(enc) = manifest.encodings.get(name) {
            let mut builder = case(cast(column.clone(), DataType::Utf8));
            for (i, v) in enc.values.iter().enumerate() {
                builder = builder.when(lit(v.as_str()), lit(i as i32));
            }
            let mapped: Expr = builder.end()?;
            let unknown = df
                .clone()
                .filter(column.clone().is_not_null().and(mapped.clone().is_null()))?
                .count()
                .await?;
            if unknown > 0 {
                return Err(Error::UnknownCategory {
                    column: name.clone(),
                    count: unknown as u64,
                });
            }
            df = df.with_column(name, mapped)?;
        }
    }
    Ok(df)
}

/// The value a model trained on the dataset sees for the raw `value` of `column`: its category
/// index for an encoded column, its normalized number for a normalized one, the number itself
/// otherwise. The error names the column, never the value.
pub fn fitted_value(
    manifest: &Manifest,
    column: &str,
    value: &str,
) -> std::result::Result<f64, String> {
    if let Some(enc) = manifest.encodings.get(column) {
        return enc.index_of(value).map(f64::from).ok_or_else(|| {
            format!(
                "{column} is not one of the {} categories the training data had ({})",
                enc.values.len(),
                enc.values.join(", ")
            )
        });
    }
    let x: f64 = value
        .trim()
        .parse()
        .ok()
        .filter(|x: &f64| x.is_finite())
        .ok_or_else(|| format!("{column} is not a number"))?;
    Ok(match manifest.normalization.get(column) {
        Some(n) => n.apply(x),
        None => x,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{Encoding, Normalizer};

    #[test]
    fn one_value_gets_the_datasets_fitted_transform_and_errors_name_the_column_only() {
        let mut m = Manifest {
            format_version: crate::manifest::MANIFEST_VERSION,
            job: "t".into(),
            created_by: "t".into(),
            schema: Vec::new(),
            rows_read: Default::default(),
            rows_out: 0,
            rows_dropped: Default::default(),
            label: None,
            row_key: None,
            features: Vec::new(),
            normalization: Default::default(),
            encodings: Default::default(),
            pii: Default::default(),
            inputs: Vec::new(),
            files: Vec::new(),
        };
        m.normalization.insert(
            "age".into(),
            Normalizer::ZScore {
                mean: 50.0,
                std: 10.0,
            },
        );
        m.encodings.insert(
            "smoking_status".into(),
            Encoding {
                values: vec!["never smoked".into(), "smokes".into()],
            },
        );
        assert_eq!(fitted_value(&m, "age", "70"), Ok(2.0));
        assert_eq!(fitted_value(&m, "smoking_status", "smokes"), Ok(1.0));
        assert_eq!(fitted_value(&m, "hypertension", " 1 "), Ok(1.0));
        let e = fitted_value(&m, "smoking_status", "SECRET-CATEGORY").unwrap_err();
        assert!(e.starts_with("smoking_status is not one of the 2"), "{e}");
        assert!(!e.contains("SECRET"), "{e}");
        let e = fitted_value(&m, "age", "SECRET-AGE").unwrap_err();
        assert_eq!(e, "age is not a number");
        assert!(fitted_value(&m, "age", "NaN").is_err());
    }
}
