//! Helpers shared by this crate's integration tests: the same rows under other partitionings
//! and row orders, which must train the same model.

use std::sync::Arc;

use datafusion::arrow::array::{RecordBatch, UInt32Array};
use datafusion::arrow::compute::take;
use datafusion::datasource::MemTable;
use datafusion::prelude::{DataFrame, SessionConfig, SessionContext};

/// A DataFrame over `batch` cut into `chunks` partitions, in a session with `partitions` target
/// partitions.
pub(crate) fn frame(batch: &RecordBatch, partitions: usize, chunks: usize) -> DataFrame {
    let ctx = SessionContext::new_with_config(
        SessionConfig::new()
            .with_target_partitions(partitions)
            .with_batch_size(97),
    );
    let rows = batch.num_rows();
    let per = rows.div_ceil(chunks).max(1);
    let parts: Vec<Vec<RecordBatch>> = (0..chunks)
        .map(|c| {
            let start = (c * per).min(rows);
            let len = per.min(rows - start);
            vec![batch.slice(start, len)]
        })
        .collect();
    let table = MemTable::try_new(batch.schema(), parts).unwrap();
    ctx.read_table(Arc::new(table)).unwrap()
}

/// The rows of `batch` in reverse order.
pub(crate) fn reversed(batch: &RecordBatch) -> RecordBatch {
    let idx = UInt32Array::from((0..batch.num_rows() as u32).rev().collect::<Vec<_>>());
    let columns = batch
        .columns()
        .iter()
        .map(|c| take(c, &idx, None).unwrap())
        .collect();
    RecordBatch::try_new(batch.schema(), columns).unwrap()
}
