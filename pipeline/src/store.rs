//! Where data lives. Every path a job names (local paths and `file://`, `memory://` and `s3://`
//! URLs) is resolved here into a URL and an object store registered with the query engine, so
//! the rest of the pipeline reads and writes through `object_store` only. Publication is also
//! here: a dataset is written under a staging prefix and moved into place only when complete.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::object_store::{DefaultObjectStoreRegistry, ObjectStoreRegistry};
use datafusion::prelude::SessionContext;
use futures::TryStreamExt;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use url::Url;

use crate::error::{Error, Result};

/// The process's `memory://` store. One per process, so that what one stage writes to
/// `memory://x` the next can read; it exists for tests and for in-process pipelines.
pub fn memory_store() -> Arc<InMemory> {
    static STORE: OnceLock<Arc<InMemory>> = OnceLock::new();
    Arc::clone(STORE.get_or_init(|| Arc::new(InMemory::new())))
}

/// An S3 bucket's store, configured from the standard `AWS_*` environment variables (region,
/// credentials, endpoint, `AWS_ALLOW_HTTP`), the same way on clients, schedulers and executors.
fn s3_store(bucket: &str) -> Result<Arc<dyn ObjectStore>> {
    let store = object_store::aws::AmazonS3Builder::from_env()
        .with_bucket_name(bucket)
        .build()?;
    Ok(Arc::new(store))
}

/// The object stores of an engine that runs plans it did not build: a Ballista scheduler lists
/// the files of a job's tables and its executors read and write them, but neither saw the
/// client's [`Location::resolve`]. Local files are always there; an `s3://` bucket's store is
/// built from the environment the first time a plan names it; anything registered explicitly
/// wins.
#[derive(Debug, Default)]
pub struct EngineStores {
    inner: DefaultObjectStoreRegistry,
}

impl EngineStores {
    /// A registry that knows local files and resolves S3 buckets on demand.
    pub fn new() -> Self {
        Self::default()
    }
}

impl ObjectStoreRegistry for EngineStores {
    fn register_store(
        &self,
        url: &Url,
        store: Arc<dyn ObjectStore>,
    ) -> Option<Arc<dyn ObjectStore>> {
        self.inner.register_store(url, store)
    }

    fn deregister_store(&self, url: &Url) -> DfResult<Arc<dyn ObjectStore>> {
        self.inner.deregister_store(url)
    }

    fn get_store(&self, url: &Url) -> DfResult<Arc<dyn ObjectStore>> {
        if let Ok(store) = self.inner.get_store(url) {
            return Ok(store);
        }
        match (url.scheme(), url.host_str()) {
            ("s3", Some(bucket)) => {
                let store = s3_store(bucket).map_err(|e| DataFusionError::External(Box::new(e)))?;
                let root = Url::parse(&format!("s3://{bucket}"))
                    .map_err(|e| DataFusionError::External(Box::new(e)))?;
                self.inner.register_store(&root, Arc::clone(&store));
                Ok(store)
            }
            _ => self.inner.get_store(url),
        }
    }
}

/// A resolved location: its URL, the store that holds it, and its path inside that store.
#[derive(Debug, Clone)]
pub struct Location {
    /// What the user wrote.
    pub raw: String,
    /// The URL it resolved to (`file:///abs/path`, `s3://bucket/key`, `memory:///key`).
    pub url: Url,
    /// The path inside the store.
    pub path: ObjectPath,
    /// The store.
    pub store: Arc<dyn ObjectStore>,
}

impl Location {
    /// Resolves a path or URL and registers its store with `ctx` so queries can read it.
    pub fn resolve(ctx: &SessionContext, raw: &str) -> Result<Self> {
        let bad = |message: &str| Error::Location {
            location: raw.to_string(),
            message: message.to_string(),
        };
        let url = if raw.contains("://") {
            Url::parse(raw).map_err(|e| bad(&e.to_string()))?
        } else {
            let abs = absolute(Path::new(raw)).map_err(|e| bad(&e.to_string()))?;
            Url::from_file_path(&abs).map_err(|()| bad("not an absolute path"))?
        };
        let (store, path): (Arc<dyn ObjectStore>, ObjectPath) = match url.scheme() {
            "file" => {
                let path = url
                    .to_file_path()
                    .map_err(|()| bad("not a local file path"))?;
                let path =
                    ObjectPath::from_absolute_path(&path).map_err(|e| bad(&e.to_string()))?;
                (Arc::new(LocalFileSystem::new()), path)
            }
            "memory" => (memory_store(), key_path(&url)?),
            "s3" => {
                let bucket = url.host_str().ok_or_else(|| bad("s3 URL has no bucket"))?;
                (s3_store(bucket)?, key_path(&url)?)
            }
            other => {
                return Err(bad(&format!(
                    "unsupported scheme {other}:// (use a local path, file://, memory:// or s3://)"
                )));
            }
        };
        let root = Url::parse(&format!(
            "{}://{}",
            url.scheme(),
            url.host_str().unwrap_or("")
        ))
        .map_err(|e| bad(&e.to_string()))?;
        ctx.runtime_env()
            .register_object_store(&root, Arc::clone(&store));
        Ok(Self {
            raw: raw.to_string(),
            url,
            path,
            store,
        })
    }

    /// The URL string the query engine reads.
    pub fn table_url(&self) -> String {
        self.url.to_string()
    }

    /// The local filesystem path, for `file://` locations.
    pub fn local_path(&self) -> Option<PathBuf> {
        (self.url.scheme() == "file")
            .then(|| self.url.to_file_path().ok())
            .flatten()
    }

    /// The files at this location: the object itself, or every object below it.
    pub async fn files(&self) -> Result<Vec<(ObjectPath, u64)>> {
        if let Some(local) = self.local_path()
            && local.is_dir()
        {
            return self.list_below().await;
        }
        match self.store.head(&self.path).await {
            Ok(meta) => Ok(vec![(meta.location, meta.size)]),
            Err(object_store::Error::NotFound { .. }) => self.list_below().await,
            Err(e) => Err(e.into()),
        }
    }

    async fn list_below(&self) -> Result<Vec<(ObjectPath, u64)>> {
        let mut files: Vec<(ObjectPath, u64)> = self
            .store
            .list(Some(&self.path))
            .map_ok(|m| (m.location, m.size))
            .try_collect()
            .await?;
        // Hidden files (staging leftovers, `.crc` companions) are never data.
        files.retain(|(p, _)| {
            !p.filename()
                .is_some_and(|f| f.starts_with('.') || f.starts_with('_'))
        });
        files.sort();
        Ok(files)
    }

    /// Whether anything exists at this location.
    pub async fn exists(&self) -> Result<bool> {
        if let Some(local) = self.local_path() {
            return Ok(local.exists());
        }
        Ok(!self.files().await?.is_empty())
    }

    /// Whether `--overwrite` may replace what is here: only what emrflow published, which
    /// holds `marker` (`manifest.json`, `model.json`) directly inside it. A mistyped output
    /// naming a home folder, a data directory or a bucket's root must fail, not be wiped; the
    /// root of a store (an empty prefix) is refused whatever it holds.
    pub async fn check_replaceable(&self, marker: &str) -> Result<()> {
        let refuse = |message: String| Error::Location {
            location: self.raw.clone(),
            message,
        };
        if self.path.parts().next().is_none() {
            return Err(refuse(
                "--overwrite never replaces the root of a store or filesystem".to_string(),
            ));
        }
        if !self.exists().await? {
            return Ok(());
        }
        match self.store.head(&self.child(marker)).await {
            Ok(_) => Ok(()),
            Err(object_store::Error::NotFound { .. }) => Err(refuse(format!(
                "--overwrite replaces only an emrflow output, and this has no {marker}"
            ))),
            Err(e) => Err(e.into()),
        }
    }

    /// A child location (`dir/name`).
    pub fn child(&self, name: &str) -> ObjectPath {
        self.path.clone().join(name)
    }

    /// A URL string for an object in the same store.
    pub fn url_of(&self, path: &ObjectPath) -> String {
        let mut url = self.url.clone();
        url.set_path(&format!("/{path}"));
        url.to_string()
    }
}

fn key_path(url: &Url) -> Result<ObjectPath> {
    ObjectPath::parse(url.path().trim_start_matches('/')).map_err(|e| Error::Location {
        location: url.to_string(),
        message: e.to_string(),
    })
}

/// An absolute path with `.` and `..` removed lexically (object-store paths allow neither),
/// without requiring it to exist.
fn absolute(path: &Path) -> std::io::Result<PathBuf> {
    use std::path::Component;
    let joined = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()?.join(path)
    };
    let mut out = PathBuf::new();
    for part in joined.components() {
        match part {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    Ok(out)
}

/// A dataset being written: files go under a hidden staging prefix beside the target, and
/// [`Staging::publish`] moves them into place. Dropping an unpublished `Staging` without calling
/// [`Staging::abort`] leaves only a hidden staging prefix, never something that looks like a
/// dataset.
#[derive(Debug)]
pub struct Staging {
    target: Location,
    staging: ObjectPath,
    written: Vec<ObjectPath>,
}

impl Staging {
    /// Prepares to publish at `target`, an output whose every publication holds `marker`.
    /// Fails if the target exists and `overwrite` is false, and, when it is true, if the target
    /// is not one emrflow published (see [`Location::check_replaceable`]).
    pub async fn begin(target: Location, overwrite: bool, marker: &str) -> Result<Self> {
        if overwrite {
            target.check_replaceable(marker).await?;
        } else if target.exists().await? {
            return Err(Error::OutputExists(target.raw.clone()));
        }
        let name = target.path.filename().unwrap_or("dataset").to_string();
        let parent = parent_of(&target.path);
        let staging = parent.join(format!(".{name}.staging-{}", uuid::Uuid::new_v4()).as_str());
        if let Some(local) = target.local_path()
            && let Some(dir) = local.parent()
        {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir.display().to_string(), e))?;
        }
        Ok(Self {
            target,
            staging,
            written: Vec::new(),
        })
    }

    /// The URL of the staging prefix, to read what was staged.
    pub fn url(&self) -> String {
        self.target.url_of(&self.staging)
    }

    /// The staging directory on the local filesystem, for writers that need a path (model
    /// artifacts); `None` for object-store targets.
    pub fn local_dir(&self) -> Option<PathBuf> {
        let target = self.target.local_path()?;
        staging_local(&target, &self.staging).ok()
    }

    /// The store to write to.
    pub fn store(&self) -> Arc<dyn ObjectStore> {
        Arc::clone(&self.target.store)
    }

    /// Where a file named `name` is staged.
    pub fn path_for(&mut self, name: &str) -> ObjectPath {
        let path = self.staging.clone().join(name);
        self.written.push(path.clone());
        path
    }

    /// Where a file named `name` is staged, as a local file when staging is on the local
    /// filesystem (its directory made), else as a store path.
    pub fn sink_for(&mut self, name: &str) -> Result<Sink> {
        let path = self.path_for(name);
        let Some(dir) = self.local_dir() else {
            return Ok(Sink::Store(self.store(), path));
        };
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(dir.display().to_string(), e))?;
        Ok(Sink::File(dir.join(name)))
    }

    /// Writes a small file (the manifest) into staging.
    pub async fn put(&mut self, name: &str, bytes: Vec<u8>) -> Result<()> {
        let path = self.path_for(name);
        self.target
            .store
            .put(&path, PutPayload::from(bytes))
            .await?;
        Ok(())
    }

    /// Moves the staged files into place. On the local filesystem this is one directory rename,
    /// so readers see either nothing or the whole dataset; on object stores the manifest is
    /// copied last, so a dataset without its manifest is never complete.
    pub async fn publish(self, manifest_name: &str) -> Result<String> {
        if let Some(target) = self.target.local_path() {
            let staging = staging_local(&target, &self.staging)?;
            if target.exists() {
                let trash = target.with_file_name(format!(
                    ".{}.old-{}",
                    target
                        .file_name()
                        .and_then(|n| n.to_str())
                        .unwrap_or("dataset"),
                    uuid::Uuid::new_v4()
                ));
                std::fs::rename(&target, &trash)
                    .map_err(|e| Error::io(target.display().to_string(), e))?;
                std::fs::rename(&staging, &target)
                    .map_err(|e| Error::io(target.display().to_string(), e))?;
                let _ = if trash.is_dir() {
                    std::fs::remove_dir_all(&trash)
                } else {
                    std::fs::remove_file(&trash)
                };
            } else {
                std::fs::rename(&staging, &target)
                    .map_err(|e| Error::io(target.display().to_string(), e))?;
            }
            return Ok(target.display().to_string());
        }
        let store = &self.target.store;
        for old in self.target.files().await? {
            store.delete(&old.0).await?;
        }
        // What was actually staged: a partition that produced no rows wrote no file.
        let mut ordered: Vec<ObjectPath> = store
            .list(Some(&self.staging))
            .map_ok(|m| m.location)
            .try_collect()
            .await?;
        ordered.sort_by_key(|p| p.filename() == Some(manifest_name));
        for from in &ordered {
            let name = from.filename().unwrap_or_default();
            store
                .copy(from, &self.target.path.clone().join(name))
                .await?;
        }
        for from in &ordered {
            store.delete(from).await?;
        }
        Ok(self.target.url.to_string())
    }

    /// Removes everything staged.
    pub async fn abort(self) {
        if let Some(target) = self.target.local_path()
            && let Ok(staging) = staging_local(&target, &self.staging)
        {
            let _ = std::fs::remove_dir_all(staging);
            return;
        }
        let staged: Vec<ObjectPath> = self
            .target
            .store
            .list(Some(&self.staging))
            .map_ok(|m| m.location)
            .try_collect()
            .await
            .unwrap_or_default();
        for path in staged.iter().chain(&self.written) {
            let _ = self.target.store.delete(path).await;
        }
    }
}

/// Where one staged file goes: see [`Staging::sink_for`].
pub enum Sink {
    /// A file in a local staging directory.
    File(PathBuf),
    /// An object in the target's store.
    Store(Arc<dyn ObjectStore>, ObjectPath),
}

impl Sink {
    /// Removes the file if it was begun.
    pub async fn discard(&self) {
        match self {
            Sink::File(path) => {
                let _ = std::fs::remove_file(path);
            }
            Sink::Store(store, path) => {
                let _ = store.delete(path).await;
            }
        }
    }
}

fn parent_of(path: &ObjectPath) -> ObjectPath {
    let parts: Vec<_> = path.parts().collect();
    match parts.split_last() {
        Some((_, parent)) => ObjectPath::from_iter(parent.iter().cloned()),
        None => ObjectPath::default(),
    }
}

fn staging_local(target: &Path, staging: &ObjectPath) -> Result<PathBuf> {
    let name = staging.filename().unwrap_or_default();
    Ok(target.with_file_name(name))
}
