//! A published dataset or model directory wherever it lives (a local path, `file://`,
//! `memory://`, `s3://`): its small files read and listed through `object_store`, so every
//! check and every read works the same on any store.

use engine::datafusion::prelude::SessionContext;
use object_store::ObjectStoreExt;
use pipeline::store::Location;

use crate::error::{Context, Error, Result};

/// A dataset or model directory (or a model file), resolved on an engine's context.
#[derive(Debug, Clone)]
pub struct Artifact {
    /// Where it is.
    pub location: Location,
}

impl Artifact {
    /// Resolves `raw` (a path or URL) and registers its store with `ctx`.
    pub fn resolve(ctx: &SessionContext, raw: &str) -> Result<Self> {
        Ok(Self {
            location: Location::resolve(ctx, raw)?,
        })
    }

    /// What the user wrote, for messages.
    pub fn name(&self) -> &str {
        &self.location.raw
    }

    /// `DIR/name` as the user would write it.
    pub fn child_name(&self, name: &str) -> String {
        format!("{}/{name}", self.location.raw.trim_end_matches('/'))
    }

    /// The bytes of `DIR/name`; `None` when there is no such file.
    pub async fn read(&self, name: &str) -> Result<Option<Vec<u8>>> {
        let path = self.location.child(name);
        match self.location.store.get(&path).await {
            Ok(found) => {
                let bytes = found
                    .bytes()
                    .await
                    .with_context(|| format!("cannot read {}", self.child_name(name)))?;
                Ok(Some(bytes.to_vec()))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", self.child_name(name))),
        }
    }

    /// The bytes of `DIR/name`, which must exist.
    pub async fn require(&self, name: &str) -> Result<Vec<u8>> {
        self.read(name)
            .await?
            .ok_or_else(|| Error::file(self.child_name(name), "no such file"))
    }

    /// The bytes of the object at the location itself (a model given as its `model.json`).
    pub async fn read_self(&self) -> Result<Option<Vec<u8>>> {
        match self.location.store.get(&self.location.path).await {
            Ok(found) => Ok(Some(
                found
                    .bytes()
                    .await
                    .with_context(|| format!("cannot read {}", self.name()))?
                    .to_vec(),
            )),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            // A local directory is not an object: `get` fails on it with an IO error.
            Err(_) if self.location.local_path().is_some_and(|p| p.is_dir()) => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", self.name())),
        }
    }

    /// The names of the files directly in the directory, sorted (hidden files excluded).
    pub async fn names(&self) -> Result<Vec<String>> {
        let depth = self.location.path.parts().count();
        let mut names: Vec<String> = self
            .location
            .files()
            .await
            .with_context(|| format!("cannot list {}", self.name()))?
            .into_iter()
            .filter(|(p, _)| p.parts().count() == depth + 1)
            .filter_map(|(p, _)| p.filename().map(str::to_string))
            .collect();
        names.sort();
        Ok(names)
    }

    /// Whether anything exists there.
    pub async fn exists(&self) -> Result<bool> {
        Ok(self.location.exists().await?)
    }

    /// The directory holding a model given as its `model.json` file; itself otherwise.
    pub fn parent(&self, ctx: &SessionContext) -> Result<Self> {
        let url = self.location.url.as_str();
        let Some(cut) = url.rfind('/') else {
            return Ok(self.clone());
        };
        let raw = match self.location.local_path() {
            Some(p) => p
                .parent()
                .map_or_else(|| ".".to_string(), |d| d.display().to_string()),
            None => url[..cut].to_string(),
        };
        Self::resolve(ctx, &raw)
    }
}
