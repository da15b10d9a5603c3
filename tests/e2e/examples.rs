//! The walks of `examples/` run as a newcomer runs them, and print exactly what
//! `examples/README.md` shows under "output of examples/NAME.sh" (with the working directory
//! written `$WORK` and times `<time>`), so the gallery cannot drift from the product.

use std::path::Path;

use crate::support::{root, stderr, stdout};

/// The block of `readme` shown as the output of `script`.
fn expected(readme: &str, script: &str) -> String {
    let marker = format!("<!-- output of examples/{script} -->");
    let after = readme
        .split_once(&marker)
        .map(|(_, rest)| rest)
        .unwrap_or_else(|| panic!("examples/README.md shows no output of {script}"));
    let body = after
        .split_once("```text\n")
        .and_then(|(_, rest)| rest.split_once("```"))
        .map(|(block, _)| block)
        .unwrap_or_else(|| panic!("no ```text block after the marker of {script}"));
    body.to_string()
}

/// `text` with `work` written `$WORK` and each ISO 8601 UTC time written `<time>`.
fn normalized(text: &str, work: &Path) -> String {
    let text = text.replace(&work.display().to_string(), "$WORK");
    text.split(' ')
        .map(|word| {
            let b = word.as_bytes();
            let is_time = b.len() >= 20
                && b[4] == b'-'
                && b[7] == b'-'
                && b[10] == b'T'
                && word.ends_with('Z');
            if is_time { "<time>" } else { word }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn walk(script: &str) {
    let readme = std::fs::read_to_string(root().join("examples/README.md"))
        .unwrap_or_else(|e| panic!("{e}"));
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let work = tmp.path().join("work");
    let out = std::process::Command::new("bash")
        .arg(root().join("examples").join(script))
        .arg(&work)
        .current_dir(tmp.path())
        .env("EMRFLOW_BIN", env!("CARGO_BIN_EXE_emrflow"))
        .env_remove("EMRFLOW_LEDGER")
        .env_remove("EMRFLOW_IDENTITY")
        .env_remove("EMRFLOW_CLUSTER")
        .env_remove("EMRFLOW_CLUSTER_KEY")
        .env_remove("EMRFLOW_KEY_FILE")
        .env("RUST_LOG", "error")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {script}: {e}"));
    assert!(
        out.status.success(),
        "{script} failed: {}\n{}",
        stdout(&out),
        stderr(&out)
    );
    assert_eq!(
        normalized(&stdout(&out), &work),
        expected(&readme, script),
        "the output of {script} is not what examples/README.md shows"
    );
}

#[test]
fn gzipped_exports_publish_the_dataset_of_their_rows() {
    walk("gzipped-exports.sh");
}

#[test]
fn tampering_is_caught_and_the_restored_files_verify() {
    walk("tamper-and-verify.sh");
}

#[test]
fn a_cluster_on_one_machine_publishes_the_embedded_roots() {
    walk("cluster-on-one-machine.sh");
}

#[test]
fn times_and_the_working_directory_are_written_as_the_readme_shows_them() {
    let work = Path::new("/tmp/x/work");
    assert_eq!(
        normalized(
            "at file:///tmp/x/work/model by a at 2026-12-07T08:17:04.951Z [height 9]\n",
            work
        ),
        "at file://$WORK/model by a at <time> [height 9]\n"
    );
}
