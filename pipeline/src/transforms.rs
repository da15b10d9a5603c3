//! Applies a published dataset's fitted transforms (normalization statistics and categorical
//! encodings from its manifest) to new raw rows, so a model trained on the dataset sees new rows
//! exactly as it saw its training rows. It fits nothing: everything comes from the manifest.

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
