//! The benchmark baseline: a plain DataFusion CSV-to-Parquet copy of the same inputs, with no
//! join, no de-identification and no statistics. It shows what reading and writing alone cost,
//! so the price of the pipeline's own work can be read off a benchmark.

use datafusion::dataframe::DataFrameWriteOptions;
use datafusion::prelude::{CsvReadOptions, SessionContext};

use crate::error::Result;
use crate::store::Location;

/// Copies each CSV input into `out/<n>/` as Parquet; returns the rows copied.
pub async fn csv_to_parquet(ctx: &SessionContext, inputs: &[String], out: &str) -> Result<u64> {
    let mut rows = 0;
    let target = Location::resolve(ctx, out)?;
    for (i, input) in inputs.iter().enumerate() {
        let location = Location::resolve(ctx, input)?;
        let df = ctx
            .read_csv(
                location.table_url(),
                CsvReadOptions::new().file_extension(""),
            )
            .await?;
        let dest = format!("{}/{i}/", target.table_url().trim_end_matches('/'));
        let batches = df
            .write_parquet(&dest, DataFrameWriteOptions::new(), None)
            .await?;
        rows += batches
            .iter()
            .filter_map(|b| {
                arrow::array::AsArray::as_primitive_opt::<arrow::datatypes::UInt64Type>(b.column(0))
                    .map(|a| a.iter().flatten().sum::<u64>())
            })
            .sum::<u64>();
    }
    Ok(rows)
}
