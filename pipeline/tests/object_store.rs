//! A job reads from and publishes to an object store (`memory://`), not only local files: the
//! dataset appears only once complete, with its manifest last, and a failed job leaves nothing.

use object_store::ObjectStoreExt;
use object_store::path::Path;
use pipeline::{Job, Manifest, NoProgress, RunOptions, run_job};

const JOB: &str = r#"
name = "mem"
label = "y"
row_key = "id"
[inputs.visits]
path = "memory:///in/visits.csv"
[inputs.people]
path = "memory:///in/people.csv"
[[join]]
left = "visits"
right = "people"
on = "pid"
[pii]
drop = ["name"]
pseudonymize = ["id", "pid"]
key_file = "KEYFILE"
[dropna]
columns = ["bp"]
[normalize]
minmax = ["bp"]
[encode]
columns = ["sex"]
[output]
path = "memory:///datasets/mem"
"#;

async fn put(path: &str, text: &str) {
    pipeline::store::memory_store()
        .put(&Path::from(path), text.as_bytes().to_vec().into())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
}

#[tokio::test]
async fn job_reads_and_publishes_through_the_memory_store() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let key = dir.path().join("key");
    std::fs::write(
        &key,
        "0123456789abcdef0123456789abcdeffedcba9876543210fedcba9876543210\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let job = Job::from_toml(
        &JOB.replace("KEYFILE", &key.display().to_string()),
        "mem.toml",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    put(
        "in/visits.csv",
        "id,pid,bp,y\nv1,p1,120,0\nv2,p1,,1\nv3,p2,150,1\nv4,p9,130,0\n",
    )
    .await;
    put(
        "in/people.csv",
        "pid,name,sex\np1,Ann Lee,F\np2,Bo Chan,M\n",
    )
    .await;

    let ctx = engine::embedded_context(Some(2)).unwrap_or_else(|e| panic!("{e}"));
    let summary = run_job(&job, &RunOptions::default(), &ctx, &NoProgress)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(summary.rows_out, 2);
    assert_eq!(summary.rows_in.get("visits"), Some(&4));
    assert_eq!(summary.rows_in.get("people"), Some(&2));
    assert_eq!(summary.rows_dropped.get("null: bp"), Some(&1));
    assert_eq!(
        summary.rows_dropped.get("join: no matching people row"),
        Some(&1)
    );

    let store = pipeline::store::memory_store();
    let bytes = store
        .get(&Path::from("datasets/mem/manifest.json"))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .bytes()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let manifest = Manifest::from_json(&bytes, "manifest.json").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(manifest.rows_out, 2);
    assert_eq!(
        manifest.encodings["sex"].values,
        vec!["F".to_string(), "M".to_string()]
    );
    assert!(matches!(
        manifest.normalization["bp"],
        pipeline::manifest::Normalizer::MinMax { min, max } if min == 120.0 && max == 150.0
    ));
    for file in &manifest.files {
        let path = Path::from(format!("datasets/mem/{file}"));
        assert!(
            store.head(&path).await.is_ok(),
            "{file} listed but not published"
        );
    }
    assert!(!manifest.schema.iter().any(|c| c.name == "name"));

    // Publishing again without overwrite is refused and changes nothing.
    let again = run_job(&job, &RunOptions::default(), &ctx, &NoProgress).await;
    assert!(
        matches!(again, Err(pipeline::Error::OutputExists(_))),
        "{again:?}"
    );
}

#[tokio::test]
async fn a_failed_job_leaves_nothing_in_the_store() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let key = dir.path().join("key");
    std::fs::write(
        &key,
        "0123456789abcdef0123456789abcdeffedcba9876543210fedcba9876543210",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let text = JOB
        .replace("KEYFILE", &key.display().to_string())
        .replace("memory:///in/", "memory:///bad/")
        .replace("memory:///datasets/mem", "memory:///datasets/bad")
        .replace("drop = [\"name\"]", "drop = []");
    let job = Job::from_toml(&text, "bad.toml").unwrap_or_else(|e| panic!("{e}"));
    put("bad/visits.csv", "id,pid,bp,y\nv1,p1,120,0\nv3,p2,150,1\n").await;
    // An e-mail address in a kept column trips the guard after the files were staged.
    put(
        "bad/people.csv",
        "pid,name,sex\np1,ann@example.com,F\np2,bo@example.org,M\n",
    )
    .await;
    let ctx = engine::embedded_context(Some(2)).unwrap_or_else(|e| panic!("{e}"));
    let result = run_job(&job, &RunOptions::default(), &ctx, &NoProgress).await;
    let err = result.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(
        err.contains("column name has 2 values that look like e-mail addresses"),
        "{err}"
    );
    let store = pipeline::store::memory_store();
    let left: Vec<_> = futures::TryStreamExt::try_collect::<Vec<_>>(
        object_store::ObjectStore::list(store.as_ref(), Some(&Path::from("datasets"))),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        left.iter()
            .all(|m| !m.location.as_ref().starts_with("datasets/bad")
                && !m.location.as_ref().contains("bad.staging")),
        "left behind: {left:?}"
    );
}

#[tokio::test]
async fn overwrite_replaces_only_an_emrflow_output_and_never_a_store_root() {
    use pipeline::store::{Location, Staging};
    let ctx = engine::embedded_context(Some(1)).unwrap_or_else(|e| panic!("{e}"));
    let refused = |r: pipeline::Result<Staging>, why: &str| match r {
        Err(pipeline::Error::Location { message, .. }) => {
            assert!(message.contains(why), "{message}")
        }
        other => panic!("expected a refusal ({why}), got {other:?}"),
    };
    let resolve = |raw: &str| Location::resolve(&ctx, raw).unwrap_or_else(|e| panic!("{e}"));

    // A prefix holding data emrflow did not publish is left alone.
    put("notes/letter.txt", "keep me").await;
    refused(
        Staging::begin(resolve("memory:///notes"), true, "manifest.json").await,
        "no manifest.json",
    );
    let store = pipeline::store::memory_store();
    assert!(store.head(&Path::from("notes/letter.txt")).await.is_ok());
    // The root of a store, whatever it holds.
    refused(
        Staging::begin(resolve("memory:///"), true, "manifest.json").await,
        "root",
    );
    // A local folder that is not an emrflow output (a home folder given by mistake).
    let home = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let precious = home.path().join("thesis.tex");
    std::fs::write(&precious, "keep me").unwrap_or_else(|e| panic!("{e}"));
    refused(
        Staging::begin(
            resolve(&home.path().display().to_string()),
            true,
            "manifest.json",
        )
        .await,
        "no manifest.json",
    );
    assert!(precious.exists());
    refused(
        Staging::begin(resolve("/"), true, "manifest.json").await,
        "root",
    );

    // What emrflow published, and what does not exist yet, may be replaced.
    put("old/manifest.json", "{}").await;
    assert!(
        Staging::begin(resolve("memory:///old"), true, "manifest.json")
            .await
            .is_ok()
    );
    assert!(
        Staging::begin(resolve("memory:///fresh"), true, "manifest.json")
            .await
            .is_ok()
    );
}
