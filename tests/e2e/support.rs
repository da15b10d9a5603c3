//! Helpers shared by the end-to-end tests: running the binary and reading what it published.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use arrow::array::{ArrayRef, AsArray, Float64Array, RecordBatch};
use arrow::datatypes::{DataType, Float64Type};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use parquet::arrow::ArrowWriter;

/// The workspace root, where `examples/` lives.
pub(crate) fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The pseudonymization key every test job runs with (`EMRFLOW_PSEUDONYM_KEY`, and the cluster's
/// executors' key file): 32 bytes as hex.
pub(crate) const TEST_PSEUDONYM_KEY: &str =
    "5f0e8a3c2b7d4e91a6c8f0b3d2e5a7c91e4b7a0d3c6f9e2b5a8d1c4f7e0b3a69";

/// A command running the `emrflow` binary from the workspace root with a test key.
pub(crate) fn emrflow(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_emrflow"));
    cmd.args(args)
        .current_dir(root())
        .env("EMRFLOW_PSEUDONYM_KEY", TEST_PSEUDONYM_KEY)
        .env_remove("EMRFLOW_PSEUDONYM_KEY_FILE")
        .env_remove("EMRFLOW_KEY_FILE")
        .env_remove("EMRFLOW_LEDGER")
        .env_remove("EMRFLOW_IDENTITY")
        .env_remove("EMRFLOW_CLUSTER")
        .env_remove("EMRFLOW_CLUSTER_KEY")
        .env("EMRFLOW_HOME", test_home())
        .env("RUST_LOG", "error");
    cmd
}

/// A home for the embedded ledger private to this test process (nextest runs each test in its
/// own process), under the target directory rather than the user's real home.
pub(crate) fn test_home() -> PathBuf {
    static HOME: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    HOME.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("e2e-home-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    })
    .clone()
}

/// Runs and captures.
pub(crate) fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run emrflow: {e}"))
}

pub(crate) fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub(crate) fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Generates `visits` visits into `dir` with a fixed seed.
pub(crate) fn generate(dir: &Path, visits: u64) {
    let out = run(&mut emrflow(&[
        "generate",
        "--visits",
        &visits.to_string(),
        "--seed",
        "11",
        "--out",
        &dir.display().to_string(),
    ]));
    assert!(out.status.success(), "generate failed: {}", stderr(&out));
}

/// `emrflow run` of the synthetic example job over the generated files in `data`, publishing to
/// `out` and anchoring on `ledger`, with a JSON summary.
pub(crate) fn stroke_job_args(data: &Path, out: &Path, ledger: &str) -> Vec<String> {
    vec![
        "run".to_string(),
        "examples/stroke-synthetic.toml".to_string(),
        "--input".to_string(),
        format!("visits={}", data.join("visits.csv").display()),
        "--input".to_string(),
        format!("patients={}", data.join("patients.csv").display()),
        "--out".to_string(),
        out.display().to_string(),
        "--ledger".to_string(),
        ledger.to_string(),
        "--json".to_string(),
    ]
}

/// Every Parquet file under `dir`, read into batches.
pub(crate) fn read_parquet_dir(dir: &Path) -> Vec<RecordBatch> {
    let mut batches = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "parquet"))
        .collect();
    files.sort();
    for f in files {
        let file = std::fs::File::open(&f).unwrap_or_else(|e| panic!("{e}"));
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
            .and_then(|b| b.build())
            .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        for b in reader {
            batches.push(b.unwrap_or_else(|e| panic!("{e}")));
        }
    }
    batches
}

/// Every value of every column rendered as text, one string per cell.
pub(crate) fn all_cells(batches: &[RecordBatch]) -> Vec<String> {
    let opts = FormatOptions::default();
    let mut cells = Vec::new();
    for b in batches {
        for c in b.columns() {
            let f = ArrayFormatter::try_new(c.as_ref(), &opts).unwrap_or_else(|e| panic!("{e}"));
            for i in 0..c.len() {
                cells.push(f.value(i).to_string());
            }
        }
    }
    cells
}

/// Asserts that the error output is one line that mentions every needle.
pub(crate) fn assert_one_line_error(out: &Output, needles: &[&str]) {
    assert!(
        !out.status.success(),
        "expected failure, got success: {}",
        stdout(out)
    );
    assert_eq!(
        out.status.code(),
        Some(2),
        "exit code; stderr: {}",
        stderr(out)
    );
    let err = stderr(out);
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "error is not one line:\n{err}");
    for n in needles {
        assert!(err.contains(n), "error does not mention {n:?}: {err}");
    }
}

/// Asserts nothing was published at `out` and no staging leftovers sit beside it.
pub(crate) fn assert_nothing_published(out: &Path) {
    assert!(!out.exists(), "{} exists after a failed job", out.display());
    if let Some(parent) = out.parent().filter(|p| p.exists()) {
        let leftovers: Vec<_> = std::fs::read_dir(parent)
            .unwrap_or_else(|e| panic!("{e}"))
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".staging-"))
            .collect();
        assert!(leftovers.is_empty(), "staging leftovers: {leftovers:?}");
    }
}

/// The same rows as Parquet bytes, with the first value of the first float column moved by 1.
pub(crate) fn tampered_parquet(batches: &[RecordBatch]) -> Vec<u8> {
    let schema = batches[0].schema();
    let col = schema
        .fields()
        .iter()
        .position(|f| f.data_type() == &DataType::Float64)
        .unwrap_or_else(|| panic!("no float column"));
    let mut out = batches.to_vec();
    let values = out[0].column(col).as_primitive::<Float64Type>();
    let mut changed: Vec<Option<f64>> = values.iter().collect();
    changed[0] = changed[0].map(|x| x + 1.0).or(Some(1.0));
    let mut cols: Vec<ArrayRef> = out[0].columns().to_vec();
    cols[col] = Arc::new(Float64Array::from(changed));
    out[0] = RecordBatch::try_new(schema.clone(), cols).unwrap_or_else(|e| panic!("{e}"));
    let mut buf = Vec::new();
    let mut w = ArrowWriter::try_new(&mut buf, schema, None).unwrap_or_else(|e| panic!("{e}"));
    for b in &out {
        w.write(b).unwrap_or_else(|e| panic!("{e}"));
    }
    w.close().unwrap_or_else(|e| panic!("{e}"));
    buf
}
