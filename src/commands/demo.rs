//! `emrflow demo`: the whole flow on one machine with embedded defaults.

use std::path::PathBuf;

use clap::Args;
use pipeline::generate::{DEFAULT_VISITS, GenerateConfig, OutputFormat, generate};
use pipeline::{Job, RunOptions};
use serde::Serialize;

use super::{ExitStatus, print_json, print_lines, progress};

/// The synthetic job, compiled in so the demo runs from any directory.
const SYNTHETIC_JOB: &str = include_str!("../../examples/stroke-synthetic.toml");

#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// Working directory for generated data, keys and outputs
    #[arg(long, default_value = "emrflow-demo")]
    dir: PathBuf,
    /// Number of visits to generate
    #[arg(long, default_value_t = DEFAULT_VISITS)]
    visits: u64,
    /// Generator seed
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Print a JSON summary on stdout
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct DemoSummary {
    dir: String,
    visits: u64,
    dataset: pipeline::RunSummary,
}

pub(crate) async fn run(args: DemoArgs) -> anyhow::Result<ExitStatus> {
    let data = args.dir.join("data");
    let bar = progress(&format!("generating {} visits", args.visits));
    let config = GenerateConfig {
        visits: args.visits,
        seed: args.seed,
        format: OutputFormat::Csv,
    };
    let data_dir = data.clone();
    tokio::task::spawn_blocking(move || generate(&config, &data_dir)).await??;
    bar.finish_and_clear();

    let key_file = demo_key(&args.dir)?;
    let job = Job::from_toml(SYNTHETIC_JOB, "examples/stroke-synthetic.toml")?;
    let options = RunOptions {
        input_overrides: [
            (
                "visits".to_string(),
                data.join("visits.csv").display().to_string(),
            ),
            (
                "patients".to_string(),
                data.join("patients.csv").display().to_string(),
            ),
        ]
        .into_iter()
        .collect(),
        output_override: Some(
            args.dir
                .join("datasets/stroke-synthetic")
                .display()
                .to_string(),
        ),
        overwrite: true,
        key_file_override: Some(key_file.display().to_string()),
    };
    let dataset = super::run::run_embedded(&job, &options, None).await?;
    if args.json {
        print_json(&DemoSummary {
            dir: args.dir.display().to_string(),
            visits: args.visits,
            dataset,
        })?;
    } else {
        super::run::report(&dataset, false)?;
        print_lines(&[format!("demo directory: {}", args.dir.display())]);
    }
    Ok(ExitStatus::Success)
}

/// A pseudonymization key kept in the demo directory (created once, readable by the owner only),
/// so reruns give the same pseudonyms.
fn demo_key(dir: &std::path::Path) -> anyhow::Result<PathBuf> {
    let secrets = dir.join("secrets");
    std::fs::create_dir_all(&secrets)?;
    let path = secrets.join("pseudonym.key");
    if !path.exists() {
        let key: [u8; 32] = rand_key();
        std::fs::write(&path, format!("{}\n", hex_encode(&key)))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        }
    }
    Ok(path)
}

fn rand_key() -> [u8; 32] {
    // A fresh key per demo directory; uuid's v4 generator draws from the OS.
    let a = uuid::Uuid::new_v4();
    let b = uuid::Uuid::new_v4();
    let mut key = [0u8; 32];
    key[..16].copy_from_slice(a.as_bytes());
    key[16..].copy_from_slice(b.as_bytes());
    key
}

fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
