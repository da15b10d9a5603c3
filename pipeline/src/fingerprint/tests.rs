use std::path::Path;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, Date32Array, Float64Array, Int32Array, Int64Array, LargeStringArray, RecordBatch,
    StringArray, StringViewArray,
};
use arrow::datatypes::Float64Type;
use arrow::datatypes::{DataType, Field, Schema};
use parquet::arrow::ArrowWriter;
use parquet::file::properties::WriterProperties;

use sha2::Digest as _;

use super::*;

const ROWS: usize = 2_000;

/// A small dataset with every common kind, nulls, duplicates and a negative zero.
fn batch(rows: usize) -> RecordBatch {
    let ids: Vec<String> = (0..rows)
        .map(|i| format!("p{:05}", i % (rows - 3)))
        .collect();
    let age: Vec<Option<i64>> = (0..rows)
        .map(|i| (i % 17 != 0).then_some((i % 90) as i64))
        .collect();
    let bmi: Vec<Option<f64>> = (0..rows)
        .map(|i| match i % 23 {
            0 => None,
            1 => Some(-0.0),
            _ => Some(i as f64 / 7.0),
        })
        .collect();
    let day: Vec<i32> = (0..rows).map(|i| 18_000 + (i % 400) as i32).collect();
    let schema = Schema::new(vec![
        Field::new("visit_id", DataType::Utf8, false),
        Field::new("age", DataType::Int64, true),
        Field::new("bmi", DataType::Float64, true),
        Field::new("visit_date", DataType::Date32, false),
    ]);
    RecordBatch::try_new(
        Arc::new(schema),
        vec![
            Arc::new(StringArray::from(ids)),
            Arc::new(Int64Array::from(age)),
            Arc::new(Float64Array::from(bmi)),
            Arc::new(Date32Array::from(day)),
        ],
    )
    .unwrap()
}

/// Writes `batch` as `files` Parquet files with row groups of `group` rows.
fn write(dir: &Path, batch: &RecordBatch, files: usize, group: usize) {
    std::fs::create_dir_all(dir).unwrap();
    let per = batch.num_rows().div_ceil(files);
    for f in 0..files {
        let start = f * per;
        if start >= batch.num_rows() {
            break;
        }
        let part = batch.slice(start, per.min(batch.num_rows() - start));
        let props = WriterProperties::builder()
            .set_max_row_group_row_count(Some(group))
            .build();
        let file = std::fs::File::create(dir.join(format!("part-{f:05}.parquet"))).unwrap();
        let mut w = ArrowWriter::try_new(file, part.schema(), Some(props)).unwrap();
        w.write(&part).unwrap();
        w.close().unwrap();
    }
}

fn shuffled(batch: &RecordBatch, seed: u64) -> RecordBatch {
    use rand::seq::SliceRandom;
    use rand::{SeedableRng, rngs::StdRng};
    let mut idx: Vec<u32> = (0..batch.num_rows() as u32).collect();
    idx.shuffle(&mut StdRng::seed_from_u64(seed));
    let idx = arrow::array::UInt32Array::from(idx);
    let cols: Vec<ArrayRef> = batch
        .columns()
        .iter()
        .map(|c| arrow::compute::take(c, &idx, None).unwrap())
        .collect();
    RecordBatch::try_new(batch.schema(), cols).unwrap()
}

async fn fp_of(dir: &Path, partitions: usize) -> Fingerprint {
    let ctx = embedded_context(Some(partitions)).unwrap();
    let df = read_dataset(&ctx, dir.to_str().unwrap()).await.unwrap();
    fingerprint(df).await.unwrap()
}

#[tokio::test]
async fn root_ignores_order_files_row_groups_and_partitions() {
    let tmp = tempfile::tempdir().unwrap();
    let base = batch(ROWS);
    write(&tmp.path().join("a"), &base, 1, 1024 * 1024);
    write(&tmp.path().join("b"), &shuffled(&base, 7), 5, 97);
    write(&tmp.path().join("c"), &shuffled(&base, 8), 3, 10);
    let a = fp_of(&tmp.path().join("a"), 1).await;
    assert_eq!(a.row_count, ROWS as u64);
    for (dir, parts) in [("a", 4), ("b", 1), ("b", 8), ("c", 2)] {
        let other = fp_of(&tmp.path().join(dir), parts).await;
        assert_eq!(other.root, a.root, "{dir} with {parts} partitions");
        assert!(other.diff(&a).is_empty());
    }
    a.check().unwrap();
    let again = Fingerprint::from_json(&a.to_json().unwrap(), "fp").unwrap();
    assert_eq!(again, a);
}

#[tokio::test]
async fn any_change_changes_the_root_and_names_the_bucket() {
    let tmp = tempfile::tempdir().unwrap();
    let base = batch(ROWS);
    write(&tmp.path().join("base"), &base, 2, 500);
    let want = fp_of(&tmp.path().join("base"), 2).await;

    // One value of one row.
    let mut bmi: Vec<Option<f64>> = base
        .column(2)
        .as_primitive::<Float64Type>()
        .iter()
        .collect();
    bmi[1234] = bmi[1234].map(|x| x + 1e-9);
    let mut cols = base.columns().to_vec();
    cols[2] = Arc::new(Float64Array::from(bmi));
    let changed = RecordBatch::try_new(base.schema(), cols).unwrap();
    write(&tmp.path().join("changed"), &changed, 2, 500);
    let got = fp_of(&tmp.path().join("changed"), 2).await;
    assert_ne!(got.root, want.root);
    assert_eq!(got.row_count, want.row_count);
    let diff = got.diff(&want);
    assert!(!diff.is_empty() && diff.len() <= 2, "{diff:?}");

    // A removed row and an added (duplicate) row.
    write(
        &tmp.path().join("removed"),
        &base.slice(1, ROWS - 1),
        1,
        500,
    );
    let removed = fp_of(&tmp.path().join("removed"), 2).await;
    assert_ne!(removed.root, want.root);
    assert_eq!(removed.row_count, ROWS as u64 - 1);
    let plus =
        arrow::compute::concat_batches(&base.schema(), &[base.clone(), base.slice(5, 1)]).unwrap();
    write(&tmp.path().join("added"), &plus, 1, 500);
    let added = fp_of(&tmp.path().join("added"), 2).await;
    assert_ne!(added.root, want.root);
    assert_eq!(added.diff(&want).len(), 1);
}

#[tokio::test]
async fn an_empty_dataset_has_the_root_of_its_schema_and_no_rows() {
    let tmp = tempfile::tempdir().unwrap();
    let empty_dir = tmp.path().join("empty");
    std::fs::create_dir_all(&empty_dir).unwrap();
    let none = batch(ROWS).slice(0, 0);
    let file = std::fs::File::create(empty_dir.join("part-00000.parquet")).unwrap();
    let mut w = ArrowWriter::try_new(file, none.schema(), None).unwrap();
    w.write(&none).unwrap();
    w.close().unwrap();
    write(&tmp.path().join("full"), &batch(ROWS), 1, 100);
    let empty = fp_of(&tmp.path().join("empty"), 2).await;
    let full = fp_of(&tmp.path().join("full"), 2).await;
    assert_eq!(empty.row_count, 0);
    assert!(empty.buckets.iter().all(|b| b.count == 0));
    assert_eq!(empty.schema_hash, full.schema_hash);
    assert_ne!(empty.root, full.root);
    empty.check().unwrap();
}

#[test]
fn encoding_is_layout_independent_and_canonical() {
    let utf8: ArrayRef = Arc::new(StringArray::from(vec![Some("a"), None, Some("é")]));
    let large: ArrayRef = Arc::new(LargeStringArray::from(vec![Some("a"), None, Some("é")]));
    let view: ArrayRef = Arc::new(StringViewArray::from(vec![Some("a"), None, Some("é")]));
    let i32s: ArrayRef = Arc::new(Int32Array::from(vec![Some(1), Some(-2), None]));
    let i64s: ArrayRef = Arc::new(Int64Array::from(vec![Some(1), Some(-2), None]));
    let leaves = |cols: &[ArrayRef]| {
        let mut out = Vec::new();
        encode::leaf_hashes(cols, &mut out).unwrap();
        out
    };
    let want = leaves(&[Arc::clone(&utf8), Arc::clone(&i64s)]);
    assert_eq!(leaves(&[large, Arc::clone(&i32s)]), want);
    assert_eq!(leaves(&[view, i32s]), want);

    let zeros: ArrayRef = Arc::new(Float64Array::from(vec![0.0, -0.0, f64::NAN, -f64::NAN]));
    let z = leaves(&[zeros]);
    assert_eq!(z[0], z[1]);
    assert_eq!(z[2], z[3]);
    assert_ne!(z[0], z[2]);

    // Timestamps: tag 09 and the i64 in the column's unit.
    let ts: ArrayRef = Arc::new(
        arrow::array::TimestampMillisecondArray::from(vec![Some(1000), None]).with_timezone("UTC"),
    );
    let t = leaves(&[ts]);
    let mut row = vec![0x00, 0x09];
    row.extend_from_slice(&1000i64.to_be_bytes());
    assert_eq!(t[0], <[u8; 32]>::from(sha2::Sha256::digest(&row)));
    assert_eq!(t[1], <[u8; 32]>::from(sha2::Sha256::digest([0x00, 0x00])));

    // A null is not an empty string, and column boundaries are unambiguous.
    let a: ArrayRef = Arc::new(StringArray::from(vec![Some("ab"), Some("")]));
    let b: ArrayRef = Arc::new(StringArray::from(vec![Some(""), None]));
    let l = leaves(&[a, b]);
    let a2: ArrayRef = Arc::new(StringArray::from(vec![Some("a"), None]));
    let b2: ArrayRef = Arc::new(StringArray::from(vec![Some("b"), Some("")]));
    let l2 = leaves(&[a2, b2]);
    assert_ne!(l[0], l2[0]);
    assert_ne!(l[1], l2[1]);
}

/// The lane hasher against one SHA-256 stream per row, over rows of every length from 1 to
/// 700 bytes (so lanes of a group differ in block count) and across the encoder's chunk
/// boundaries.
#[test]
fn lane_hashed_leaves_equal_sha256_of_the_written_encoding() {
    let rows = 2_500;
    let text: Vec<Option<String>> = (0..rows)
        .map(|i| (i % 11 != 0).then(|| "x".repeat((i * 7) % 690)))
        .collect();
    let ints: Vec<i64> = (0..rows).map(|i| i as i64 - 1_000).collect();
    let cols: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(text.clone())),
        Arc::new(Int64Array::from(ints.clone())),
    ];
    let mut got = Vec::new();
    encode::leaf_hashes(&cols, &mut got).unwrap();
    assert_eq!(got.len(), rows);
    for i in 0..rows {
        let mut row = vec![0x00];
        match &text[i] {
            Some(t) => {
                row.push(0x05);
                row.extend_from_slice(&(t.len() as u32).to_be_bytes());
                row.extend_from_slice(t.as_bytes());
            }
            None => row.push(0x00),
        }
        row.push(0x02);
        row.extend_from_slice(&ints[i].to_be_bytes());
        assert_eq!(
            got[i],
            <[u8; 32]>::from(sha2::Sha256::digest(&row)),
            "row {i}"
        );
    }
}

#[test]
fn schema_hash_depends_on_names_and_kinds_not_order() {
    let s1 =
        CanonicalSchema::from_columns(vec![("b".into(), Kind::Float), ("a".into(), Kind::Int)])
            .unwrap();
    let s2 =
        CanonicalSchema::from_columns(vec![("a".into(), Kind::Int), ("b".into(), Kind::Float)])
            .unwrap();
    assert_eq!(s1.hash(), s2.hash());
    let s3 =
        CanonicalSchema::from_columns(vec![("a".into(), Kind::Int), ("b".into(), Kind::String)])
            .unwrap();
    assert_ne!(s1.hash(), s3.hash());
    for k in [
        Kind::Bool,
        Kind::Int,
        Kind::UInt64,
        Kind::Float,
        Kind::String,
        Kind::Binary,
        Kind::Date32,
        Kind::Date64,
        Kind::Timestamp(arrow::datatypes::TimeUnit::Millisecond, Some("UTC".into())),
        Kind::Decimal(10, 2),
    ] {
        assert_eq!(Kind::parse(&k.name()), Some(k));
    }
}

#[tokio::test]
async fn proofs_of_presence_and_absence_check_against_the_root_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let base = batch(ROWS);
    write(&tmp.path().join("d"), &base, 3, 300);
    let dir = tmp.path().join("d");
    let fp = fp_of(&dir, 2).await;
    let ctx = embedded_context(Some(2)).unwrap();

    let present: Record = serde_json::from_str(
        r#"{"visit_id": "p00042", "age": 42, "bmi": 6.0, "visit_date": "2019-05-26"}"#,
    )
    .unwrap();
    let proof = prove(
        read_dataset(&ctx, dir.to_str().unwrap()).await.unwrap(),
        &present,
    )
    .await
    .unwrap();
    assert_eq!(proof.kind, ProofKind::Inclusion);
    assert_eq!(proof.root, fp.root);
    assert_eq!(proof.verify(&fp.root.0), Ok(Membership::Present));

    let mut absent = present.clone();
    absent.insert("age".into(), RecordValue::Number("43".into()));
    let proof2 = prove(
        read_dataset(&ctx, dir.to_str().unwrap()).await.unwrap(),
        &absent,
    )
    .await
    .unwrap();
    assert_eq!(proof2.kind, ProofKind::NonMembership);
    assert_eq!(proof2.verify(&fp.root.0), Ok(Membership::Absent));
    // Round trip through the file format.
    let again = Proof::from_json(&proof2.to_json().unwrap(), "proof").unwrap();
    assert_eq!(again.verify(&fp.root.0), Ok(Membership::Absent));

    // Tampering: another root, a swapped record, a claimed inclusion of an absent record,
    // neighbours that are not adjacent.
    let mut other_root = fp.root.0;
    other_root[0] ^= 1;
    assert!(proof.verify(&other_root).is_err());
    let mut swapped = proof.clone();
    swapped.record = absent.clone();
    assert!(swapped.verify(&fp.root.0).is_err());
    let mut lie = proof2.clone();
    lie.kind = ProofKind::Inclusion;
    assert!(lie.verify(&fp.root.0).is_err());
    if proof2.neighbours.len() == 2 {
        let mut gap = proof2.clone();
        gap.neighbours[1].index += 1;
        assert!(gap.verify(&fp.root.0).is_err());
    }
    let mut count = proof.clone();
    count.bucket_count += 1;
    assert!(count.verify(&fp.root.0).is_err());

    // Every row of a small dataset proves present; records with a missing or extra column are
    // errors that name it.
    let mut missing = present.clone();
    missing.remove("bmi");
    let err = prove(
        read_dataset(&ctx, dir.to_str().unwrap()).await.unwrap(),
        &missing,
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains("bmi"), "{err}");
}

#[tokio::test]
async fn records_read_from_csv_prove_like_json() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("d");
    write(&dir, &batch(ROWS), 1, 1000);
    let ctx = embedded_context(Some(2)).unwrap();
    let record = read_record(
        b"visit_id,age,bmi,visit_date\np00042,42,6,2019-05-26\n",
        "r.csv",
    )
    .unwrap();
    let proof = prove(
        read_dataset(&ctx, dir.to_str().unwrap()).await.unwrap(),
        &record,
    )
    .await
    .unwrap();
    assert_eq!(proof.kind, ProofKind::Inclusion);
    let fp = fp_of(&dir, 1).await;
    assert_eq!(proof.verify(&fp.root.0), Ok(Membership::Present));
    assert!(read_record(b"a,b\n1,2\n3,4\n", "r.csv").is_err());
}

/// A context with the pipeline's functions on `partitions` partitions.
fn embedded_context(partitions: Option<usize>) -> Result<SessionContext> {
    let config =
        datafusion::prelude::SessionConfig::new().with_target_partitions(partitions.unwrap_or(2));
    let mut ctx = SessionContext::new_with_config(config);
    crate::functions::register_functions(&mut ctx)?;
    Ok(ctx)
}
