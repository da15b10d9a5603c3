//! Canonical dataset fingerprints: a Merkle root over a dataset's rows that depends on its
//! content only — not on row order, file layout, row groups or partitioning — bound to its
//! schema and row count, with inclusion and non-membership proofs for single records.
//!
//! The encoding and tree layout are specified in the crate README ("Dataset fingerprints");
//! [`encode`] implements the rows, [`buckets`] the bucket layout (the Merkle trees are the
//! `merkle` crate's), [`udf`] the DataFusion functions that compute it where the data is. This
//! module drives them: [`fingerprint`] runs the aggregate over a DataFrame, [`prove`] builds a
//! [`Proof`] for one record and [`Proof::verify`] checks it with nothing but the root.

pub mod buckets;
pub mod encode;
pub mod udf;

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BinaryArray, BooleanArray, Float64Array, Int64Array, RecordBatch,
    StringArray, UInt64Array,
};
use arrow::compute::cast;
use arrow::datatypes::{Float64Type, Int64Type, UInt64Type};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::prelude::{DataFrame, Expr, ParquetReadOptions, SessionContext, col};
use futures::StreamExt;
use object_store::ObjectStoreExt;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::store::Location;
pub use encode::{CanonicalSchema, Hash32, Kind};
pub use udf::{FINGERPRINT_FN, ROW_LEAF_FN, fingerprint_udaf, row_leaf_udf};

/// The `format` of a fingerprint file.
pub const FINGERPRINT_FORMAT: &str = "emrflow.fingerprint";
/// The `format` of a proof file.
pub const PROOF_FORMAT: &str = "emrflow.proof";
/// The version of the encoding, the tree layout and both file formats.
pub const FINGERPRINT_VERSION: u32 = 1;
/// The file a published dataset keeps its fingerprint in.
pub const FINGERPRINT_FILE: &str = "fingerprint.json";

/// The digest type of roots, leaves and paths: 64 hex digits in files.
pub use merkle::Digest;

/// A column of a canonical schema, as files carry it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnKind {
    /// Column name.
    pub name: String,
    /// Canonical kind ([`Kind::name`]).
    pub kind: String,
}

fn schema_to_file(schema: &CanonicalSchema) -> Vec<ColumnKind> {
    schema
        .columns
        .iter()
        .map(|(name, kind)| ColumnKind {
            name: name.clone(),
            kind: kind.name(),
        })
        .collect()
}

fn schema_from_file(columns: &[ColumnKind]) -> Result<CanonicalSchema> {
    let columns = columns
        .iter()
        .map(|c| {
            Kind::parse(&c.kind)
                .map(|k| (c.name.clone(), k))
                .ok_or_else(|| {
                    Error::Fingerprint(format!("column {}: unknown kind {:?}", c.name, c.kind))
                })
        })
        .collect::<Result<Vec<_>>>()?;
    CanonicalSchema::from_columns(columns)
}

/// One bucket of a fingerprint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bucket {
    /// Rows whose leaf hash starts with this bucket's byte.
    pub count: u64,
    /// RFC 6962 root of their sorted leaves.
    pub root: Digest,
}

/// A dataset's fingerprint: the root and everything it is computed from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fingerprint {
    /// Always [`FINGERPRINT_FORMAT`].
    pub format: String,
    /// Always [`FINGERPRINT_VERSION`].
    pub version: u32,
    /// The dataset root.
    pub root: Digest,
    /// Hash of the canonical schema.
    pub schema_hash: Digest,
    /// Rows.
    pub row_count: u64,
    /// The canonical schema.
    pub schema: Vec<ColumnKind>,
    /// The 256 buckets.
    pub buckets: Vec<Bucket>,
}

/// A bucket whose content differs between two fingerprints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct BucketDiff {
    /// The bucket (the first byte of its leaves' hashes).
    pub bucket: usize,
    /// Rows in the expected fingerprint's bucket.
    pub expected_rows: u64,
    /// Rows in the actual one.
    pub actual_rows: u64,
}

impl Fingerprint {
    /// Assembles a fingerprint from a schema and a bucket table.
    pub fn from_table(schema: &CanonicalSchema, table: &[(u64, Hash32)]) -> Self {
        let row_count = table.iter().map(|(n, _)| n).sum();
        let schema_hash = schema.hash();
        let root = buckets::dataset_root(&schema_hash, row_count, &buckets::top_root(table));
        Self {
            format: FINGERPRINT_FORMAT.to_string(),
            version: FINGERPRINT_VERSION,
            root: Digest(root),
            schema_hash: Digest(schema_hash),
            row_count,
            schema: schema_to_file(schema),
            buckets: table
                .iter()
                .map(|(count, root)| Bucket {
                    count: *count,
                    root: Digest(*root),
                })
                .collect(),
        }
    }

    /// Parses a fingerprint file and checks that its parts lead to its root.
    pub fn from_json(bytes: &[u8], origin: &str) -> Result<Self> {
        let fp: Fingerprint = serde_json::from_slice(bytes)
            .map_err(|e| Error::Fingerprint(format!("{origin}: {e}")))?;
        fp.check()
            .map_err(|reason| Error::Fingerprint(format!("{origin}: {reason}")))?;
        Ok(fp)
    }

    /// Canonical JSON (pretty, fields in declaration order).
    pub fn to_json(&self) -> Result<Vec<u8>> {
        let mut out = serde_json::to_vec_pretty(self)
            .map_err(|e| Error::Fingerprint(format!("cannot serialize: {e}")))?;
        out.push(b'\n');
        Ok(out)
    }

    /// Whether the stored root follows from the stored schema and buckets.
    pub fn check(&self) -> std::result::Result<(), String> {
        if self.format != FINGERPRINT_FORMAT || self.version != FINGERPRINT_VERSION {
            return Err(format!(
                "format {} version {} is not {FINGERPRINT_FORMAT} version {FINGERPRINT_VERSION}",
                self.format, self.version
            ));
        }
        if self.buckets.len() != buckets::BUCKETS {
            return Err(format!(
                "{} buckets, expected {}",
                self.buckets.len(),
                buckets::BUCKETS
            ));
        }
        let schema = schema_from_file(&self.schema).map_err(|e| e.to_string())?;
        let table: Vec<(u64, Hash32)> = self.buckets.iter().map(|b| (b.count, b.root.0)).collect();
        let again = Fingerprint::from_table(&schema, &table);
        if again.root != self.root || again.schema_hash != self.schema_hash {
            return Err("its schema and buckets do not lead to its root".to_string());
        }
        Ok(())
    }

    /// The buckets that differ from `expected`, in bucket order.
    pub fn diff(&self, expected: &Fingerprint) -> Vec<BucketDiff> {
        expected
            .buckets
            .iter()
            .zip(&self.buckets)
            .enumerate()
            .filter(|(_, (e, a))| e != a)
            .map(|(bucket, (e, a))| BucketDiff {
                bucket,
                expected_rows: e.count,
                actual_rows: a.count,
            })
            .collect()
    }
}

/// A model's root: `SHA-256("emrflow.model.v1" ‖ params_hash ‖ dataset_root ‖ n_be64 ‖ MTH)`,
/// where MTH is the RFC 6962 root over `SHA-256(0x00 ‖ part)` of the model's `n` canonical
/// parts (its header, then each node). It binds the model to its hyperparameters and to the
/// dataset it was trained on.
pub fn model_root(params_hash: &Hash32, dataset_root: &Hash32, parts: &[Vec<u8>]) -> Hash32 {
    use sha2::{Digest as _, Sha256};
    let leaves: Vec<Hash32> = parts.iter().map(|p| merkle::leaf_hash(p)).collect();
    let mut h = Sha256::new();
    h.update(b"emrflow.model.v1");
    h.update(params_hash);
    h.update(dataset_root);
    h.update((parts.len() as u64).to_be_bytes());
    h.update(merkle::root(&leaves));
    h.finalize().into()
}

/// The root of raw input files (CSV exports that are not emrflow datasets), over their bytes:
/// `SHA-256("emrflow.source.v1" ‖ n_be64 ‖ MTH)`, MTH over the sorted leaves
/// `SHA-256(0x00 ‖ sha256(file) ‖ size_be64)`. Raw exports carry identifiers in clear, so they
/// are never hashed row by row: a row leaf of a raw export could be confirmed by guessing.
pub async fn source_root(ctx: &SessionContext, files: &[String]) -> Result<Hash32> {
    start_source_root(ctx, files)?.await
}

/// [`source_root`], begun now: local files start hashing on blocking threads before this
/// returns, so they progress even while every async worker is busy with other work; the
/// future finishes the remote ones and assembles the root.
pub fn start_source_root(
    ctx: &SessionContext,
    files: &[String],
) -> Result<impl Future<Output = Result<Hash32>> + Send + 'static> {
    use sha2::{Digest as _, Sha256};
    // Every file at once: a file's SHA-256 is one sequential stream, so several files are the
    // only parallelism there is.
    let digests = files
        .iter()
        .map(|url| file_digest(ctx, url))
        .collect::<Result<Vec<_>>>()?;
    Ok(async move {
        let hashed = futures::future::try_join_all(digests).await?;
        let mut leaves: Vec<Hash32> = hashed
            .into_iter()
            .map(|(digest, size)| {
                let mut data = Vec::with_capacity(40);
                data.extend_from_slice(&digest);
                data.extend_from_slice(&size.to_be_bytes());
                merkle::leaf_hash(&data)
            })
            .collect();
        leaves.sort_unstable();
        let mut h = Sha256::new();
        h.update(b"emrflow.source.v1");
        h.update((leaves.len() as u64).to_be_bytes());
        h.update(merkle::root(&leaves));
        Ok(h.finalize().into())
    })
}

type Digesting = futures::future::BoxFuture<'static, Result<(Hash32, u64)>>;

/// SHA-256 and size of one file. A local file is read on a blocking thread in large reads,
/// started at once; the object store's stream hands a local file over in small chunks, one
/// task hop each, and took three times as long as the hashing.
fn file_digest(ctx: &SessionContext, url: &str) -> Result<Digesting> {
    use sha2::{Digest as _, Sha256};
    let loc = Location::resolve(ctx, url)?;
    if let Some(path) = loc.local_path() {
        let origin = path.display().to_string();
        let url = url.to_string();
        let task = tokio::task::spawn_blocking(move || -> Result<(Hash32, u64)> {
            use std::io::Read as _;
            let io = |e: std::io::Error| Error::Fingerprint(format!("{origin}: {e}"));
            let mut file = std::fs::File::open(&path).map_err(io)?;
            let mut buf = vec![0u8; 1 << 20];
            let mut hasher = Sha256::new();
            let mut size = 0u64;
            loop {
                let n = file.read(&mut buf).map_err(io)?;
                if n == 0 {
                    break;
                }
                size += n as u64;
                hasher.update(&buf[..n]);
            }
            Ok((hasher.finalize().into(), size))
        });
        return Ok(Box::pin(async move {
            task.await
                .map_err(|e| Error::Fingerprint(format!("{url}: hashing stopped: {e}")))?
        }));
    }
    Ok(Box::pin(async move {
        let mut stream = loc.store.get(&loc.path).await?.into_stream();
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            size += chunk.len() as u64;
            hasher.update(&chunk);
        }
        Ok((hasher.finalize().into(), size))
    }))
}

/// The dataset's columns in canonical order, as expressions.
fn canonical_columns(schema: &CanonicalSchema) -> Vec<Expr> {
    schema
        .names()
        .map(|n| col(datafusion::common::Column::from_name(n)))
        .collect()
}

/// Fingerprints a DataFrame with the `emr_fingerprint` aggregate (so the hashing runs on the
/// partitions, or on executors).
pub async fn fingerprint(df: DataFrame) -> Result<Fingerprint> {
    let schema = CanonicalSchema::of(df.schema().as_arrow())?;
    let args = canonical_columns(&schema);
    let batches = df
        .aggregate(vec![], vec![fingerprint_udaf().call(args).alias("fp")])?
        .collect()
        .await?;
    let bytes = batches
        .iter()
        .find(|b| b.num_rows() > 0)
        .and_then(|b| {
            let c = b.column(0).as_binary_opt::<i32>()?;
            (!c.is_null(0)).then(|| c.value(0).to_vec())
        })
        .unwrap_or_default();
    from_result(&schema, &bytes)
}

/// The fingerprint of `schema`'s rows from the aggregate's result (its bucket table).
fn from_result(schema: &CanonicalSchema, bytes: &[u8]) -> Result<Fingerprint> {
    let table = udf::parse_table(bytes).ok_or_else(|| {
        Error::Fingerprint(format!("{FINGERPRINT_FN} returned {} bytes", bytes.len()))
    })?;
    Ok(Fingerprint::from_table(schema, &table))
}

/// A fingerprint taken from batches as they pass (a writer's), without reading the dataset
/// back: one [`PartHasher`] per partition, merged by [`RowsFingerprint::finish`]. The same
/// encoding and tree as [`fingerprint`], so the root equals that of the rows read back.
#[derive(Debug, Clone)]
pub struct RowsFingerprint {
    schema: CanonicalSchema,
    /// For each canonical column, its index in the batches.
    order: Vec<usize>,
}

impl RowsFingerprint {
    /// For batches of `schema`; names the first column the fingerprint cannot encode.
    pub fn new(schema: &arrow::datatypes::Schema) -> Result<Self> {
        let canonical = CanonicalSchema::of(schema)?;
        let order = canonical
            .names()
            .map(|n| schema.index_of(n))
            .collect::<std::result::Result<_, _>>()?;
        Ok(Self {
            schema: canonical,
            order,
        })
    }

    /// A hasher for one partition's batches.
    pub fn part(&self) -> PartHasher {
        PartHasher {
            order: self.order.clone(),
            acc: udf::LeafAccumulator::default(),
        }
    }

    /// The fingerprint of every part's rows.
    pub fn finish(&self, parts: Vec<PartState>) -> Result<Fingerprint> {
        use datafusion::logical_expr::Accumulator as _;
        let mut last = udf::LeafAccumulator::default();
        for part in parts {
            last.merge_batch(&[part.0])?;
        }
        let bytes = match last.evaluate()? {
            datafusion::common::ScalarValue::Binary(Some(bytes)) => bytes,
            _ => Vec::new(),
        };
        from_result(&self.schema, &bytes)
    }
}

/// Hashes one partition's rows for a [`RowsFingerprint`].
#[derive(Debug)]
pub struct PartHasher {
    order: Vec<usize>,
    acc: udf::LeafAccumulator,
}

/// A partition's leaves, sorted: what [`PartHasher::finish`] hands to [`RowsFingerprint::finish`].
#[derive(Debug)]
pub struct PartState(ArrayRef);

impl PartHasher {
    /// Hashes a batch's rows.
    pub fn update(&mut self, batch: &RecordBatch) -> Result<()> {
        use datafusion::logical_expr::Accumulator as _;
        let columns: Vec<ArrayRef> = self
            .order
            .iter()
            .map(|&i| Arc::clone(batch.column(i)))
            .collect();
        Ok(self.acc.update_batch(&columns)?)
    }

    /// Sorts this partition's leaves, on the caller's thread (each writer's own).
    pub fn finish(mut self) -> Result<PartState> {
        use datafusion::logical_expr::Accumulator as _;
        let state = self.acc.state()?;
        let array = match state.first() {
            Some(value) => value.to_array()?,
            None => return Err(Error::Fingerprint("no partial state".into())),
        };
        Ok(PartState(array))
    }
}

/// The Parquet files of a dataset location (every `*.parquet` under it) as one DataFrame.
pub async fn read_dataset(ctx: &SessionContext, location: &str) -> Result<DataFrame> {
    let loc = Location::resolve(ctx, location)?;
    let files: Vec<String> = loc
        .files()
        .await?
        .into_iter()
        .filter(|(p, _)| p.as_ref().ends_with(".parquet"))
        .map(|(p, _)| loc.url_of(&p))
        .collect();
    if files.is_empty() {
        return Err(Error::Fingerprint(format!(
            "{location} holds no Parquet files"
        )));
    }
    Ok(ctx
        .read_parquet(files, ParquetReadOptions::default())
        .await?)
}

/// One value of a record, as its JSON text gave it. Numbers keep their text, because JSON
/// parsers may round a 17-digit float to a neighbouring `f64` and a record must hash exactly
/// as the row it names; Rust's parser is correctly rounded.
#[derive(Debug, Clone, PartialEq)]
pub enum RecordValue {
    /// `null`, or an empty CSV cell.
    Null,
    /// `true` / `false`.
    Bool(bool),
    /// A JSON number, as written.
    Number(String),
    /// A JSON string, or a CSV cell.
    Text(String),
}

impl Serialize for RecordValue {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            RecordValue::Null => s.serialize_unit(),
            RecordValue::Bool(b) => s.serialize_bool(*b),
            RecordValue::Number(n) => serde_json::value::RawValue::from_string(n.clone())
                .map_err(serde::ser::Error::custom)?
                .serialize(s),
            RecordValue::Text(t) => s.serialize_str(t),
        }
    }
}

impl<'de> Deserialize<'de> for RecordValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let raw = Box::<serde_json::value::RawValue>::deserialize(d)?;
        let text = raw.get().trim();
        Ok(match text {
            "null" => RecordValue::Null,
            "true" => RecordValue::Bool(true),
            "false" => RecordValue::Bool(false),
            t if t.starts_with('"') => {
                RecordValue::Text(serde_json::from_str(t).map_err(serde::de::Error::custom)?)
            }
            t if t.starts_with('{') || t.starts_with('[') => {
                return Err(serde::de::Error::custom(
                    "a record value is a number, a string, a boolean or null",
                ));
            }
            t => RecordValue::Number(t.to_string()),
        })
    }
}

/// A record: column name → value.
pub type Record = std::collections::BTreeMap<String, RecordValue>;

/// Which kind of proof.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProofKind {
    /// The record is in the dataset.
    Inclusion,
    /// The record is not: its leaf falls strictly between two adjacent sorted leaves, before
    /// the first or after the last of its bucket, or in an empty bucket.
    NonMembership,
}

/// A leaf of the bucket tree named by a proof.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProofLeaf {
    /// Index among the bucket's sorted leaves.
    pub index: usize,
    /// The leaf hash.
    pub leaf: Digest,
}

/// An inclusion or non-membership proof for one record, checkable with the root alone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Proof {
    /// Always [`PROOF_FORMAT`].
    pub format: String,
    /// Always [`FINGERPRINT_VERSION`].
    pub version: u32,
    /// Inclusion or non-membership.
    pub kind: ProofKind,
    /// The dataset root the proof leads to.
    pub root: Digest,
    /// The dataset's canonical schema (its hash is bound into the root).
    pub schema: Vec<ColumnKind>,
    /// The dataset's rows (bound into the root).
    pub row_count: u64,
    /// The record, column by column.
    pub record: Record,
    /// The record's leaf hash.
    pub leaf: Digest,
    /// The record's bucket.
    pub bucket: usize,
    /// Leaves in the bucket.
    pub bucket_count: u64,
    /// The leaves shown: the record's own (inclusion), or its sorted neighbours.
    pub neighbours: Vec<ProofLeaf>,
    /// Audit path of those leaves in the bucket tree.
    pub bucket_path: Vec<Digest>,
    /// Audit path of the bucket in the top tree.
    pub top_path: Vec<Digest>,
}

/// The answer of a valid proof.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Membership {
    /// The record is in the dataset.
    Present,
    /// The record is not in the dataset.
    Absent,
}

impl Proof {
    /// Parses a proof file.
    pub fn from_json(bytes: &[u8], origin: &str) -> Result<Self> {
        let proof: Proof = serde_json::from_slice(bytes)
            .map_err(|e| Error::Fingerprint(format!("{origin}: {e}")))?;
        if proof.format != PROOF_FORMAT || proof.version != FINGERPRINT_VERSION {
            return Err(Error::Fingerprint(format!(
                "{origin}: format {} version {} is not {PROOF_FORMAT} version {FINGERPRINT_VERSION}",
                proof.format, proof.version
            )));
        }
        Ok(proof)
    }

    /// Pretty JSON.
    pub fn to_json(&self) -> Result<Vec<u8>> {
        let mut out = serde_json::to_vec_pretty(self)
            .map_err(|e| Error::Fingerprint(format!("cannot serialize: {e}")))?;
        out.push(b'\n');
        Ok(out)
    }

    /// Checks the proof against `root` with nothing else: the record hashes to the leaf, the
    /// neighbours sit where the proof says in the bucket, the bucket (with its count) sits in
    /// the top tree, and schema, row count and top root lead to `root`. `Err` says why a proof
    /// fails; `Ok` says whether the record is present or absent.
    pub fn verify(&self, root: &Hash32) -> std::result::Result<Membership, String> {
        if self.root.0 != *root {
            return Err(format!(
                "the proof is for root {}, not {}",
                self.root,
                Digest(*root)
            ));
        }
        let schema = schema_from_file(&self.schema).map_err(|e| e.to_string())?;
        let record = record_batch(&schema, &self.record).map_err(|e| e.to_string())?;
        let leaf = encode::batch_leaves(&record)
            .map_err(|e| e.to_string())?
            .first()
            .copied()
            .ok_or("the record is empty")?;
        if leaf != self.leaf.0 {
            return Err("the record does not hash to the proof's leaf".to_string());
        }
        if self.bucket != usize::from(leaf[0]) {
            return Err(format!(
                "the leaf belongs in bucket {}, the proof names bucket {}",
                leaf[0], self.bucket
            ));
        }
        let n = usize::try_from(self.bucket_count).map_err(|_| "bucket count overflows")?;
        let indices: Vec<usize> = self.neighbours.iter().map(|l| l.index).collect();
        let leaves: Vec<Hash32> = self.neighbours.iter().map(|l| l.leaf.0).collect();
        let path: Vec<Hash32> = self.bucket_path.iter().map(|h| h.0).collect();
        let bucket_root = if n == 0 {
            if !self.neighbours.is_empty() || !self.bucket_path.is_empty() {
                return Err("an empty bucket cannot have leaves".to_string());
            }
            merkle::empty_root()
        } else {
            merkle::root_from_multi_proof(&indices, &leaves, n, &path)
                .ok_or("the bucket path does not fit the bucket")?
        };
        let answer = match self.kind {
            ProofKind::Inclusion => {
                if leaves != [leaf] {
                    return Err("an inclusion proof must show exactly the record's leaf".into());
                }
                Membership::Present
            }
            ProofKind::NonMembership => {
                let ok = match (indices.as_slice(), leaves.as_slice()) {
                    ([], []) => n == 0,
                    ([i, j], [lo, hi]) => *j == i + 1 && *lo < leaf && leaf < *hi,
                    ([0], [first]) if leaf < *first => true,
                    ([i], [last]) => *i + 1 == n && *last < leaf,
                    _ => false,
                };
                if !ok {
                    return Err("the neighbours do not enclose the record's leaf".to_string());
                }
                Membership::Absent
            }
        };
        let top: Vec<Hash32> = self.top_path.iter().map(|h| h.0).collect();
        let top_root = merkle::root_from_multi_proof(
            &[self.bucket],
            &[buckets::bucket_leaf(self.bucket_count, &bucket_root)],
            buckets::BUCKETS,
            &top,
        )
        .ok_or("the top path does not fit the top tree")?;
        let expected = buckets::dataset_root(&schema.hash(), self.row_count, &top_root);
        if expected != *root {
            return Err("the proof does not lead to the root".to_string());
        }
        Ok(answer)
    }
}

/// Builds the proof for `record` (column name → value) in the dataset `df`.
pub async fn prove(df: DataFrame, record: &Record) -> Result<Proof> {
    let schema = CanonicalSchema::of(df.schema().as_arrow())?;
    let batch = record_batch(&schema, record)?;
    let leaf = encode::batch_leaves(&batch)?
        .first()
        .copied()
        .ok_or_else(|| Error::Fingerprint("the record is empty".into()))?;
    let bucket = usize::from(leaf[0]);

    // Every leaf, from the same function the aggregate uses, hashed on the partitions.
    let args = canonical_columns(&schema);
    let mut stream = df
        .select(vec![row_leaf_udf().call(args).alias("leaf")])?
        .execute_stream()
        .await?;
    let mut leaves: Vec<Hash32> = Vec::new();
    while let Some(batch) = stream.next().await {
        let batch = batch?;
        let column = batch.column(0).as_fixed_size_binary();
        for i in 0..column.len() {
            leaves.push(
                column.value(i).try_into().map_err(|_| {
                    Error::Fingerprint(format!("{ROW_LEAF_FN} returned a short hash"))
                })?,
            );
        }
    }
    let (leaves, table) = buckets::bucket_table(leaves);
    let fp = Fingerprint::from_table(&schema, &table);
    let start: usize = table[..bucket].iter().map(|(n, _)| *n as usize).sum();
    let in_bucket = &leaves[start..start + table[bucket].0 as usize];

    let (kind, shown): (ProofKind, Vec<usize>) = match in_bucket.binary_search(&leaf) {
        Ok(i) => (ProofKind::Inclusion, vec![i]),
        Err(i) => {
            let n = in_bucket.len();
            let shown = match (i, n) {
                (_, 0) => vec![],
                (0, _) => vec![0],
                (i, n) if i == n => vec![n - 1],
                (i, _) => vec![i - 1, i],
            };
            (ProofKind::NonMembership, shown)
        }
    };
    let bucket_path = if shown.is_empty() {
        Vec::new()
    } else {
        merkle::multi_proof(in_bucket, &shown)
    };
    let top_leaves: Vec<Hash32> = table
        .iter()
        .map(|(n, r)| buckets::bucket_leaf(*n, r))
        .collect();
    let top_path = merkle::multi_proof(&top_leaves, &[bucket]);
    let record_json = batch_to_json(&schema, &batch)?;
    Ok(Proof {
        format: PROOF_FORMAT.to_string(),
        version: FINGERPRINT_VERSION,
        kind,
        root: fp.root,
        schema: fp.schema.clone(),
        row_count: fp.row_count,
        record: record_json,
        leaf: Digest(leaf),
        bucket,
        bucket_count: table[bucket].0,
        neighbours: shown
            .iter()
            .map(|&i| ProofLeaf {
                index: i,
                leaf: Digest(in_bucket[i]),
            })
            .collect(),
        bucket_path: bucket_path.into_iter().map(Digest).collect(),
        top_path: top_path.into_iter().map(Digest).collect(),
    })
}

/// Reads a record file: a JSON object (`.json`) or a CSV header plus one row (anything else).
/// Values are taken as the dataset stores them (pseudonyms, normalized numbers).
pub fn read_record(bytes: &[u8], origin: &str) -> Result<Record> {
    if origin.ends_with(".json") {
        return serde_json::from_slice::<Record>(bytes).map_err(|e| {
            Error::Fingerprint(format!(
                "{origin}: a record file holds one JSON object of values: {e}"
            ))
        });
    }
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_reader(bytes);
    let header = reader
        .headers()
        .map_err(|e| Error::Fingerprint(format!("{origin}: {e}")))?
        .clone();
    let mut rows = reader.records();
    let row = rows
        .next()
        .ok_or_else(|| Error::Fingerprint(format!("{origin}:2: no record after the header")))?
        .map_err(|e| Error::Fingerprint(format!("{origin}: {e}")))?;
    if rows.next().is_some() {
        return Err(Error::Fingerprint(format!(
            "{origin}:3: a record file holds exactly one row"
        )));
    }
    Ok(header
        .iter()
        .zip(row.iter())
        .map(|(k, v)| {
            let value = if v.is_empty() {
                RecordValue::Null
            } else {
                RecordValue::Text(v.to_string())
            };
            (k.to_string(), value)
        })
        .collect())
}

/// A one-row batch, in canonical column order, from a record; names the offending column.
pub fn record_batch(schema: &CanonicalSchema, record: &Record) -> Result<RecordBatch> {
    if let Some(extra) = record
        .keys()
        .find(|k| !schema.columns.iter().any(|(n, _)| n == *k))
    {
        return Err(Error::Fingerprint(format!(
            "the record has column {extra}, which the dataset does not"
        )));
    }
    let mut fields = Vec::with_capacity(schema.columns.len());
    let mut arrays = Vec::with_capacity(schema.columns.len());
    for (name, kind) in &schema.columns {
        let value = record.get(name).ok_or_else(|| {
            Error::Fingerprint(format!("the record has no value for column {name}"))
        })?;
        let array = json_to_array(value, kind)
            .map_err(|reason| Error::Fingerprint(format!("column {name}: {reason}")))?;
        fields.push(arrow::datatypes::Field::new(
            name,
            array.data_type().clone(),
            true,
        ));
        arrays.push(array);
    }
    Ok(RecordBatch::try_new(
        Arc::new(arrow::datatypes::Schema::new(fields)),
        arrays,
    )?)
}

fn json_to_array(value: &RecordValue, kind: &Kind) -> std::result::Result<ArrayRef, String> {
    use RecordValue as V;
    let target = kind.arrow_type();
    let array: ArrayRef = match (value, kind) {
        (V::Null, _) => arrow::array::new_null_array(&target, 1),
        (V::Bool(b), Kind::Bool) => Arc::new(BooleanArray::from(vec![*b])),
        (V::Number(n), Kind::Int) => Arc::new(Int64Array::from(vec![
            n.parse::<i64>()
                .map_err(|_| format!("{n} is not a 64-bit integer"))?,
        ])),
        (V::Number(n), Kind::UInt64) => {
            Arc::new(UInt64Array::from(vec![n.parse::<u64>().map_err(|_| {
                format!("{n} is not an unsigned 64-bit integer")
            })?]))
        }
        (V::Number(n), Kind::Float) => Arc::new(Float64Array::from(vec![
            n.parse::<f64>()
                .map_err(|_| format!("{n} is not a number"))?,
        ])),
        (V::Text(s), Kind::String) => Arc::new(StringArray::from(vec![s.as_str()])),
        (V::Text(s), Kind::Binary) => {
            let bytes = hex::decode(s).map_err(|_| "binary values are written as hex")?;
            Arc::new(BinaryArray::from(vec![bytes.as_slice()]))
        }
        // Everything else arrives as text (CSV records, dates, timestamps, decimals, "NaN")
        // and is parsed by Arrow's own casts, which parse floats correctly rounded.
        (V::Text(s) | V::Number(s), _) => {
            let text: ArrayRef = Arc::new(StringArray::from(vec![s.as_str()]));
            let parsed = cast(&text, &target).map_err(|e| e.to_string())?;
            if parsed.is_null(0) {
                return Err(format!("{s:?} is not a {}", kind.name()));
            }
            parsed
        }
        _ => return Err(format!("a {} value was expected", kind.name())),
    };
    Ok(array)
}

/// The record as JSON, one value per column: numbers as numbers (exactly: serde_json writes
/// the shortest round-trip form), non-finite floats, dates, timestamps and decimals as text,
/// binary as hex.
fn batch_to_json(schema: &CanonicalSchema, batch: &RecordBatch) -> Result<Record> {
    use RecordValue as V;
    let mut out = Record::new();
    for ((name, kind), array) in schema.columns.iter().zip(batch.columns()) {
        let value = if array.is_null(0) {
            V::Null
        } else {
            match kind {
                Kind::Bool => V::Bool(array.as_boolean().value(0)),
                Kind::Int => V::Number(array.as_primitive::<Int64Type>().value(0).to_string()),
                Kind::UInt64 => V::Number(array.as_primitive::<UInt64Type>().value(0).to_string()),
                Kind::Float => {
                    // `{:?}` is the shortest text that parses back to the same f64.
                    let x = array.as_primitive::<Float64Type>().value(0);
                    if x.is_finite() {
                        V::Number(format!("{x:?}"))
                    } else {
                        V::Text(x.to_string())
                    }
                }
                Kind::String => V::Text(array.as_string::<i32>().value(0).to_string()),
                Kind::Binary => V::Text(hex::encode(array.as_binary::<i32>().value(0))),
                _ => {
                    let fmt = ArrayFormatter::try_new(array.as_ref(), &FormatOptions::default())?;
                    V::Text(fmt.value(0).to_string())
                }
            }
        };
        out.insert(name.clone(), value);
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
