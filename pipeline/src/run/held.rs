//! What an embedded run holds in this process's memory between its passes, within
//! [`RunOptions::cache_limit`](super::RunOptions::cache_limit): each join's lookup input (so it
//! is parsed once for the join and the key check) and the rows that survive pass 1 (so pass 2
//! starts from memory instead of reading and joining the inputs again). Holding is an
//! optimization only: whatever does not fit stays on its files and the run reads it again.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::compute::{filter_record_batch, is_null};
use arrow::datatypes::{Int32Type, SchemaRef};
use datafusion::datasource::MemTable;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::prelude::SessionContext;
use futures::StreamExt;

use super::drop_reasons::REASON_COLUMN;
use super::fit::TAGGED_TABLE;
use super::inputs::Input;
use super::pii::never_read;
use super::sql::ident;
use crate::error::{Error, Result};
use crate::functions::TextSet;
use crate::job::Job;

/// The in-memory table of surviving rows: [`TAGGED_TABLE`]'s columns (pseudonymized columns
/// still in clear), reason always NULL.
pub(super) const KEPT_TABLE: &str = "__emr_kept";

/// Holds each join's lookup input (its columns the job reads) in memory in place of its files,
/// so it is parsed once for the join and the key check rather than once for each; returns the
/// bytes held and, by input name, the rows and distinct join keys of each input held (the key
/// check's `count(*)` and `count(DISTINCT key)`). An input that would take more than `limit`
/// stays on its files.
pub(super) async fn hold_lookups(
    ctx: &SessionContext,
    job: &Job,
    inputs: &BTreeMap<String, Input>,
    limit: u64,
) -> Result<(u64, BTreeMap<String, (u64, u64)>)> {
    let mut used = 0u64;
    let mut counts = BTreeMap::new();
    for join in &job.join {
        let input = &inputs[&join.right];
        let columns: Vec<String> = input
            .schema
            .fields()
            .iter()
            .map(|f| f.name())
            .filter(|name| **name == join.on || !never_read(job, name))
            .map(|name| ident(name))
            .collect();
        let df = ctx
            .sql(&format!(
                "SELECT {} FROM {}",
                columns.join(", "),
                input.table
            ))
            .await?;
        let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
        let mut partitions = Vec::new();
        let mut bytes = 0u64;
        for stream in df.execute_stream_partitioned().await? {
            partitions.push(tokio::spawn(
                stream.map(|b| b.map_err(Error::from)).collect::<Vec<_>>(),
            ));
        }
        let mut held = Vec::new();
        for task in partitions {
            let batches = task
                .await
                .map_err(|e| Error::invalid("inputs", format!("a reader task failed: {e}")))?
                .into_iter()
                .collect::<Result<Vec<_>>>()?;
            bytes += batches
                .iter()
                .map(|b| b.get_array_memory_size() as u64)
                .sum::<u64>();
            held.push(batches);
        }
        if used + bytes > limit {
            continue;
        }
        used += bytes;
        let key = schema.index_of(&join.on)?;
        counts.insert(join.right.clone(), key_counts(held.iter().flatten(), key)?);
        ctx.deregister_table(input.table.as_str())?;
        ctx.register_table(
            input.table.as_str(),
            Arc::new(MemTable::try_new(schema, held)?),
        )?;
    }
    Ok((used, counts))
}

/// Rows, and distinct non-null values of column `key`, over `batches`: what `count(*)` and
/// `count(DISTINCT key)` give, for keys compared as text (`CAST(key AS VARCHAR)`), which is
/// what every key type a CSV or Parquet export joins on compares by.
fn key_counts<'a>(
    batches: impl Iterator<Item = &'a RecordBatch> + Clone,
    key: usize,
) -> Result<(u64, u64)> {
    let rows: usize = batches.clone().map(|b| b.num_rows()).sum();
    let mut keys = TextSet::with_capacity(rows);
    for batch in batches {
        keys.insert_array(batch.column(key))?;
    }
    Ok((rows as u64, keys.len() as u64))
}

/// Runs [`TAGGED_TABLE`] once, counting the rows each drop reason takes and keeping the rest in
/// memory as [`KEPT_TABLE`], one partition per stream so pass 2 keeps the parallelism; returns
/// the rows dropped, by reason number (`reasons` of them). `None` (and nothing registered)
/// once the kept rows need more than `limit` bytes.
pub(super) async fn hold_kept(
    ctx: &SessionContext,
    reasons: usize,
    limit: u64,
) -> Result<Option<Vec<u64>>> {
    #[allow(clippy::disallowed_methods)] // phase timings in the debug log
    let started = Instant::now();
    let df = ctx.table(TAGGED_TABLE).await?;
    let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
    let reason = schema.index_of(REASON_COLUMN)?;
    let used = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = df
        .execute_stream_partitioned()
        .await?
        .into_iter()
        .map(|stream| {
            let used = Arc::clone(&used);
            tokio::spawn(keep_partition(stream, reason, reasons, used, limit))
        })
        .collect();
    let mut partitions = Vec::new();
    let mut dropped = vec![0u64; reasons];
    let mut over = false;
    for task in tasks {
        let kept = task
            .await
            .map_err(|e| Error::invalid("inputs", format!("a reader task failed: {e}")))??;
        match kept {
            Some((batches, counts)) => {
                partitions.push(batches);
                for (total, n) in dropped.iter_mut().zip(counts) {
                    *total += n;
                }
            }
            None => over = true,
        }
    }
    if over {
        tracing::info!(
            limit,
            "the surviving rows outgrow the cache limit; reading the inputs again"
        );
        return Ok(None);
    }
    tracing::debug!(
        bytes = used.load(Ordering::Relaxed),
        seconds = started.elapsed().as_secs_f64(),
        "surviving rows held in memory"
    );
    let table = MemTable::try_new(schema, partitions)?;
    ctx.register_table(KEPT_TABLE, Arc::new(table))?;
    Ok(Some(dropped))
}

/// One partition of [`hold_kept`]: its kept batches and its drops per reason, or `None` when
/// all partitions together passed `limit`.
async fn keep_partition(
    mut stream: SendableRecordBatchStream,
    reason: usize,
    reasons: usize,
    used: Arc<AtomicU64>,
    limit: u64,
) -> Result<Option<(Vec<RecordBatch>, Vec<u64>)>> {
    let mut batches = Vec::new();
    let mut dropped = vec![0u64; reasons];
    while let Some(batch) = stream.next().await {
        let batch = batch?;
        let Some(tags) = batch.column(reason).as_primitive_opt::<Int32Type>() else {
            return Err(Error::invalid(
                "inputs",
                "the drop reasons are not integers",
            ));
        };
        let kept = if tags.null_count() == tags.len() {
            batch
        } else {
            for r in tags.iter().flatten() {
                let slot = usize::try_from(r).ok().and_then(|i| dropped.get_mut(i));
                match slot {
                    Some(n) => *n += 1,
                    None => {
                        return Err(Error::invalid(
                            "inputs",
                            format!("a row was dropped for an unknown reason {r}"),
                        ));
                    }
                }
            }
            filter_record_batch(&batch, &is_null(tags)?)?
        };
        if kept.num_rows() == 0 {
            continue;
        }
        let bytes = kept.get_array_memory_size() as u64;
        if used.fetch_add(bytes, Ordering::Relaxed) + bytes > limit {
            return Ok(None);
        }
        batches.push(kept);
        // A sibling partition woken by this one (the join's shared build side finishing wakes
        // every prober) lands in this worker's slot that other workers cannot steal from, and
        // a stream that never waits would run to its end before it; yielding lets another
        // worker take this task over and the sibling run at once.
        tokio::task::yield_now().await;
    }
    Ok(Some((batches, dropped)))
}

#[cfg(test)]
mod tests {
    use arrow::array::{ArrayRef, Int32Array, Int64Array, StringViewArray};
    use datafusion::physical_plan::stream::RecordBatchStreamAdapter;

    use super::*;

    fn batch(column: ArrayRef) -> RecordBatch {
        RecordBatch::try_from_iter([("k", column)]).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn key_counts_count_rows_and_distinct_non_null_keys_as_sql_does() {
        // Short keys (inline in their views) and long ones, split across batches, with a
        // duplicate of each kind and nulls, which count(DISTINCT) skips but count(*) counts.
        let long = "a key longer than twelve bytes";
        let first = batch(Arc::new(StringViewArray::from(vec![
            Some("P1"),
            Some(long),
            None,
            Some("P2"),
        ])));
        let second = batch(Arc::new(StringViewArray::from(vec![
            Some("P2"),
            Some(long),
            Some("a key longer than twelve bytez"),
            None,
        ])));
        let counts = key_counts([&first, &second].into_iter(), 0).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(counts, (8, 4));
        // Twelve and thirteen bytes sharing a prefix are different keys.
        let edge = batch(Arc::new(StringViewArray::from(vec![
            "twelve bytes",
            "twelve bytes!",
        ])));
        assert_eq!(key_counts([&edge].into_iter(), 0).ok(), Some((2, 2)));
        let ints = batch(Arc::new(Int64Array::from(vec![
            Some(1),
            Some(1),
            None,
            Some(3),
        ])));
        assert_eq!(key_counts([&ints].into_iter(), 0).ok(), Some((4, 2)));
    }

    /// Tagged batches: values and their reasons (NULL: kept).
    fn tagged(rows: &[(i64, Option<i32>)]) -> RecordBatch {
        RecordBatch::try_from_iter([
            (
                "v",
                Arc::new(Int64Array::from(
                    rows.iter().map(|r| r.0).collect::<Vec<_>>(),
                )) as ArrayRef,
            ),
            (
                REASON_COLUMN,
                Arc::new(Int32Array::from(
                    rows.iter().map(|r| r.1).collect::<Vec<_>>(),
                )),
            ),
        ])
        .unwrap_or_else(|e| panic!("{e}"))
    }

    fn stream(batches: Vec<RecordBatch>) -> SendableRecordBatchStream {
        let schema = batches[0].schema();
        Box::pin(RecordBatchStreamAdapter::new(
            schema,
            futures::stream::iter(batches.into_iter().map(Ok)),
        ))
    }

    #[tokio::test]
    async fn a_partition_keeps_untagged_rows_and_counts_the_others() {
        let batches = vec![
            tagged(&[(1, None), (2, Some(1)), (3, None)]),
            tagged(&[(4, Some(0)), (5, Some(1))]),
            tagged(&[(6, None)]),
        ];
        let used = Arc::new(AtomicU64::new(0));
        let kept = keep_partition(stream(batches), 1, 2, used, u64::MAX)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let Some((batches, dropped)) = kept else {
            panic!("nothing was held")
        };
        assert_eq!(dropped, [1, 2]);
        let values: Vec<i64> = batches
            .iter()
            .flat_map(|b| {
                b.column(0)
                    .as_primitive::<arrow::datatypes::Int64Type>()
                    .values()
                    .to_vec()
            })
            .collect();
        assert_eq!(values, [1, 3, 6]);
    }

    #[tokio::test]
    async fn a_partition_gives_up_past_the_limit_and_refuses_unknown_reasons() {
        let batches = vec![tagged(&[(1, None)]), tagged(&[(2, None)])];
        let one = batches[0].get_array_memory_size() as u64;
        let used = Arc::new(AtomicU64::new(0));
        let kept = keep_partition(stream(batches), 1, 1, used, one + 1)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(kept.is_none());
        let used = Arc::new(AtomicU64::new(0));
        let err = keep_partition(stream(vec![tagged(&[(1, Some(3))])]), 1, 1, used, u64::MAX)
            .await
            .err()
            .map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some("invalid job: inputs: a row was dropped for an unknown reason 3")
        );
    }
}
