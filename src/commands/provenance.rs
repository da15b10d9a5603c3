//! Provenance from the commands' side: which ledger (an embedded four-peer ledger in a
//! directory, or a running cluster named by its genesis), which identity signs for which role,
//! the `anchor.json` receipts kept beside datasets and models, and the audit events commands
//! record when they read anchored artifacts. Fingerprints come from `pipeline::fingerprint`;
//! consensus, contracts and receipts from `ledger`.

use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Args;
use ledger::chain::{Genesis, QueryResult, Receipt};
use ledger::client::{Client, Ledger, LedgerApi, Reader};
use ledger::config;
use ledger::contracts::{Access, AnchorKind, AnchorRecord, AnchorSpec, Call, Outcome, Query, Role};
use ledger::crypto::{Digest, KeyPair};
use ledger::transport::RemoteLedger;
use ledger::tx::SignedTx;
use ml::datafusion::prelude::SessionContext;
use pipeline::fingerprint::{self, BucketDiff, FINGERPRINT_FILE, Fingerprint, Hex};
use pipeline::manifest::MANIFEST_FILE;
use serde::{Deserialize, Serialize};

/// The receipt file kept beside a published dataset or model.
pub(crate) const ANCHOR_FILE: &str = "anchor.json";
const ANCHOR_FORMAT: &str = "emrflow.anchor";

/// What produced an anchor: the build's version.
pub(crate) const CODE_VERSION: &str = concat!("emrflow ", env!("CARGO_PKG_VERSION"));

/// Where provenance goes. Every command that publishes or reads anchored artifacts takes these.
#[derive(Debug, Clone, Args)]
pub(crate) struct LedgerArgs {
    /// The ledger: a directory holds an embedded four-peer ledger (created on first use); a
    /// genesis.json file names the peers of a running cluster [default: $EMRFLOW_HOME/ledger]
    #[arg(long, env = "EMRFLOW_LEDGER", value_name = "DIR|GENESIS")]
    pub(crate) ledger: Option<PathBuf>,
    /// Key file of the identity to sign with [default: the per-role identity kept in the
    /// ledger directory's identities/, created and registered on first use when the ledger's
    /// admin key is there]
    #[arg(long, env = "EMRFLOW_IDENTITY", value_name = "KEY")]
    pub(crate) identity: Option<PathBuf>,
}

/// `$EMRFLOW_HOME`, else `$XDG_DATA_HOME/emrflow`, else `~/.local/share/emrflow`.
pub(crate) fn emrflow_home() -> PathBuf {
    if let Some(home) = std::env::var_os("EMRFLOW_HOME") {
        return PathBuf::from(home);
    }
    if let Some(data) = std::env::var_os("XDG_DATA_HOME") {
        return PathBuf::from(data).join("emrflow");
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join(".local/share/emrflow")
}

/// A connection to the embedded or a remote ledger.
#[derive(Debug)]
pub(crate) enum Conn {
    Embedded(Ledger),
    Remote(RemoteLedger),
}

impl LedgerApi for Conn {
    async fn submit(&self, tx: SignedTx) -> ledger::Result<Receipt> {
        match self {
            Conn::Embedded(l) => l.submit(tx).await,
            Conn::Remote(r) => r.submit(tx).await,
        }
    }

    async fn query(&self, q: Query) -> ledger::Result<QueryResult> {
        match self {
            Conn::Embedded(l) => l.query(q).await,
            Conn::Remote(r) => r.query(q).await,
        }
    }

    fn genesis(&self) -> &Genesis {
        match self {
            Conn::Embedded(l) => l.genesis(),
            Conn::Remote(r) => r.genesis(),
        }
    }
}

/// An open ledger and the identities that act on it.
#[derive(Debug)]
pub(crate) struct Provenance {
    conn: Option<Conn>,
    /// Where `admin.key` and `identities/` live.
    home: PathBuf,
    identity: Option<PathBuf>,
    /// Held while the embedded ledger runs: one process at a time owns its stores.
    _lock: Option<File>,
    /// The ledger, for messages.
    pub(crate) describe: String,
}

impl Provenance {
    /// Opens the ledger `args` name: starts the embedded peers (waiting for another emrflow
    /// process to release them), or connects to a cluster's peers.
    pub(crate) async fn open(args: &LedgerArgs) -> anyhow::Result<Self> {
        let location = args
            .ledger
            .clone()
            .unwrap_or_else(|| emrflow_home().join("ledger"));
        if location.is_file() {
            let genesis = config::read_genesis(&location)
                .with_context(|| format!("cannot read the genesis {}", location.display()))?;
            let home = location
                .parent()
                .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
            return Ok(Self {
                conn: Some(Conn::Remote(RemoteLedger::new(genesis))),
                home,
                identity: args.identity.clone(),
                _lock: None,
                describe: format!("the ledger cluster of {}", location.display()),
            });
        }
        std::fs::create_dir_all(&location).with_context(|| {
            format!("cannot create the ledger directory {}", location.display())
        })?;
        let lock = lock_dir(&location).await?;
        let dir = location.clone();
        let ledger = tokio::task::spawn_blocking(move || Ledger::open_or_init(&dir))
            .await?
            .with_context(|| {
                format!("cannot start the embedded ledger in {}", location.display())
            })?;
        Ok(Self {
            conn: Some(Conn::Embedded(ledger)),
            home: location.clone(),
            identity: args.identity.clone(),
            _lock: Some(lock),
            describe: format!("the embedded ledger in {}", location.display()),
        })
    }

    fn conn(&self) -> &Conn {
        // Only `close` takes it, and it consumes `self`.
        self.conn
            .as_ref()
            .unwrap_or_else(|| unreachable!("ledger used after close"))
    }

    /// The genesis of the ledger.
    pub(crate) fn genesis(&self) -> &Genesis {
        self.conn().genesis()
    }

    /// Stops the embedded peers (a no-op for a cluster).
    pub(crate) async fn close(mut self) -> anyhow::Result<()> {
        if let Some(Conn::Embedded(ledger)) = self.conn.take() {
            tokio::task::spawn_blocking(move || ledger.shutdown()).await??;
        }
        Ok(())
    }

    fn admin_key(&self) -> Option<KeyPair> {
        let path = self.home.join("admin.key");
        path.exists()
            .then(|| config::read_key(&path).ok())
            .flatten()
    }

    /// The key that acts as `role`: `--identity`, or the local identity for the role, created
    /// and registered by the ledger's admin on first use.
    async fn key_for(&self, role: Role) -> anyhow::Result<KeyPair> {
        if let Some(path) = &self.identity {
            return config::read_key(path)
                .with_context(|| format!("cannot read the identity key {}", path.display()));
        }
        let path = self.home.join("identities").join(format!("{role}.key"));
        if path.exists() {
            return config::read_key(&path)
                .with_context(|| format!("cannot read the identity key {}", path.display()));
        }
        let Some(admin) = self.admin_key() else {
            bail!(
                "no identity to act as {role} on {}: pass --identity KEY (a key registered with \
                 role {role})",
                self.describe
            );
        };
        let key = config::new_key_file(&path)?;
        let user = std::env::var("USER").unwrap_or_else(|_| "local".to_string());
        let receipt = Client::new(self.conn(), admin)
            .register(key.public(), &format!("{user} ({role})"), role)
            .await
            .context("cannot register a local identity")?;
        if let Outcome::Denied { reason } = &receipt.outcome {
            let _ = std::fs::remove_file(&path);
            bail!("the ledger refused to register a local {role} identity: {reason}");
        }
        tracing::info!("registered a local {role} identity ({})", path.display());
        Ok(key)
    }

    /// Creates a new identity key at `out` and has the admin (`admin`, or the ledger
    /// directory's `admin.key`) register it with `role`; the key is removed if the ledger
    /// refuses.
    pub(crate) async fn register_identity(
        &self,
        admin: Option<&Path>,
        role: Role,
        name: &str,
        out: &Path,
    ) -> anyhow::Result<Receipt> {
        let admin = match admin {
            Some(path) => config::read_key(path)
                .with_context(|| format!("cannot read the admin key {}", path.display()))?,
            None => self.admin_key().with_context(|| {
                format!("no admin.key beside {}; pass --admin-key", self.describe)
            })?,
        };
        let key = config::new_key_file(out)?;
        let receipt = Client::new(self.conn(), admin)
            .register(key.public(), name, role)
            .await;
        match receipt {
            Ok(r) if r.outcome.is_accepted() => Ok(r),
            Ok(r) => {
                let _ = std::fs::remove_file(out);
                bail!("the ledger refused the registration: {:?}", r.outcome)
            }
            Err(e) => {
                let _ = std::fs::remove_file(out);
                Err(e).context("cannot register the identity")
            }
        }
    }

    /// Anchors `spec` as `role`; fails (naming the reason) if the ledger denies it.
    pub(crate) async fn anchor(&self, role: Role, spec: AnchorSpec) -> anyhow::Result<Receipt> {
        let key = self.key_for(role).await?;
        let root = spec.root;
        let receipt = Client::new(self.conn(), key)
            .anchor(spec)
            .await
            .with_context(|| format!("cannot anchor {root} on {}", self.describe))?;
        receipt
            .verify(self.genesis())
            .context("the ledger returned a receipt that does not verify")?;
        if let Outcome::Denied { reason } = &receipt.outcome {
            bail!("the ledger denied the anchor of {root}: {reason}");
        }
        Ok(receipt)
    }

    /// Anchors `spec`, or, when the same root is already anchored (a rerun that produced
    /// identical content), returns the receipt of the existing anchor: identical content has one
    /// anchor. The existing anchor is returned too, for callers that must check it anchored the
    /// same thing.
    pub(crate) async fn anchor_once(
        &self,
        role: Role,
        spec: AnchorSpec,
    ) -> anyhow::Result<(Receipt, Option<AnchorRecord>)> {
        if let Some(existing) = self.anchor_of(spec.root).await? {
            let receipt = self.receipt_of(existing.tx).await?;
            return Ok((receipt, Some(existing)));
        }
        Ok((self.anchor(role, spec).await?, None))
    }

    /// The receipt of a committed transaction, checked against the genesis.
    pub(crate) async fn receipt_of(&self, tx: Digest) -> anyhow::Result<Receipt> {
        let receipt = self
            .reader()
            .receipt(tx)
            .await?
            .with_context(|| format!("the ledger has no certified receipt for {tx}"))?;
        receipt
            .verify(self.genesis())
            .context("the ledger returned a receipt that does not verify")?;
        Ok(receipt)
    }

    /// Read-only queries.
    pub(crate) fn reader(&self) -> Reader<'_, Conn> {
        Reader::new(self.conn())
    }

    /// The anchor of a root, if any.
    pub(crate) async fn anchor_of(&self, root: Digest) -> anyhow::Result<Option<AnchorRecord>> {
        Ok(self.reader().anchor_of(root).await?)
    }

    /// A client acting as `role`.
    pub(crate) async fn client(&self, role: Role) -> anyhow::Result<Client<'_, Conn>> {
        Ok(Client::new(self.conn(), self.key_for(role).await?))
    }

    /// Records that `role` read `subject` for `purpose`.
    pub(crate) async fn record_read(
        &self,
        role: Role,
        subject: Digest,
        purpose: &str,
    ) -> anyhow::Result<Receipt> {
        self.record_access(role, subject, Access::Read, purpose)
            .await
    }

    /// Records that `role` made `access` to `subject` for `purpose`. On a local ledger whose
    /// admin key is at hand, a missing grant is given by the admin (and audited as such);
    /// otherwise a denial is an error naming what to ask for.
    pub(crate) async fn record_access(
        &self,
        role: Role,
        subject: Digest,
        access: Access,
        purpose: &str,
    ) -> anyhow::Result<Receipt> {
        let client = self.client(role).await?;
        let receipt = client
            .record_access(subject, access, purpose)
            .await
            .with_context(|| format!("cannot record the {access:?} of {subject}"))?;
        let Outcome::Denied { reason } = &receipt.outcome else {
            return Ok(receipt);
        };
        let admin = match (&self.identity, self.admin_key()) {
            (None, Some(admin)) if reason.contains("grant") => admin,
            _ => bail!(
                "the ledger denied {role} {} {access:?} access to {subject}: {reason}; an admin \
                 can grant it",
                client.public_key()
            ),
        };
        let grant = Client::new(self.conn(), admin)
            .call(Call::Grant {
                subject,
                grantee: client.public_key(),
                access,
            })
            .await?;
        if let Outcome::Denied { reason } = &grant.outcome {
            bail!("the ledger admin could not grant {access:?} access to {subject}: {reason}");
        }
        tracing::info!("granted the local {role} identity {access:?} access to {subject}");
        let receipt = client.record_access(subject, access, purpose).await?;
        if let Outcome::Denied { reason } = &receipt.outcome {
            bail!("the ledger denied {access:?} access to {subject}: {reason}");
        }
        Ok(receipt)
    }
}

/// Takes the embedded ledger directory's lock, waiting for another process to release it.
async fn lock_dir(dir: &Path) -> anyhow::Result<File> {
    let path = dir.join("emrflow.lock");
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => {
            tracing::warn!(
                "waiting for another emrflow process to release the ledger in {}",
                dir.display()
            );
            Ok(
                tokio::task::spawn_blocking(move || file.lock().map(|()| file))
                    .await?
                    .with_context(|| format!("cannot lock {}", path.display()))?,
            )
        }
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("cannot lock {}", path.display()))
        }
    }
}

/// The receipt file kept beside an anchored dataset or model.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AnchorFile {
    pub(crate) format: String,
    pub(crate) version: u32,
    pub(crate) kind: AnchorKind,
    /// The anchored root.
    pub(crate) root: Digest,
    /// The ledger's id (genesis hash).
    pub(crate) ledger: Digest,
    /// Models: the root of the dataset they were trained on (bound into the model root).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) dataset_root: Option<Digest>,
    /// The ledger's receipt of the anchor transaction.
    pub(crate) receipt: Receipt,
}

impl AnchorFile {
    pub(crate) fn new(
        kind: AnchorKind,
        root: Digest,
        dataset_root: Option<Digest>,
        genesis: &Genesis,
        receipt: Receipt,
    ) -> Self {
        Self {
            format: ANCHOR_FORMAT.to_string(),
            version: 1,
            kind,
            root,
            ledger: genesis.hash(),
            dataset_root,
            receipt,
        }
    }

    pub(crate) fn to_json(&self) -> anyhow::Result<Vec<u8>> {
        let mut out = serde_json::to_vec_pretty(self)?;
        out.push(b'\n');
        Ok(out)
    }

    /// Reads `DIR/anchor.json`; `Ok(None)` when there is none.
    pub(crate) fn read(dir: &Path) -> anyhow::Result<Option<Self>> {
        let path = dir.join(ANCHOR_FILE);
        if !path.exists() {
            return Ok(None);
        }
        let bytes =
            std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let file: AnchorFile = serde_json::from_slice(&bytes)
            .with_context(|| format!("{} is not an anchor receipt", path.display()))?;
        if file.format != ANCHOR_FORMAT || file.version != 1 {
            bail!(
                "{} is not an {ANCHOR_FORMAT} version 1 file",
                path.display()
            );
        }
        Ok(Some(file))
    }

    /// Checks the receipt offline against `genesis`, and that it anchors this file's root.
    pub(crate) fn check(&self, genesis: &Genesis) -> anyhow::Result<AnchorSpec> {
        if self.ledger != genesis.hash() {
            bail!(
                "anchored on ledger {}, not on this one ({}); pass --ledger",
                self.ledger,
                genesis.hash()
            );
        }
        self.receipt
            .verify(genesis)
            .context("the anchor receipt does not verify against the ledger's genesis")?;
        let body = self.receipt.tx.body()?;
        match body.call {
            Call::Anchor(spec) if spec.root == self.root && spec.kind == self.kind => {
                if !self.receipt.outcome.is_accepted() {
                    bail!("the receipt records a denied anchor");
                }
                Ok(spec)
            }
            _ => bail!("the receipt is not the anchor of {}", self.root),
        }
    }
}

/// A pipeline hash as a ledger digest.
pub(crate) fn digest(h: &Hex) -> Digest {
    Digest(h.0)
}

/// A model's root (see `pipeline::fingerprint::model_root`): its canonical parts, bound to its
/// hyperparameters and to the root of the dataset it was trained on.
pub(crate) fn model_root(
    model: &ml::Model,
    dataset_root: &Digest,
) -> anyhow::Result<Digest> {
    let parts = model.canonical_parts()?;
    Ok(Digest(fingerprint::model_root(
        &model.params_hash()?,
        &dataset_root.0,
        &parts,
    )))
}

/// An anchored artifact checked against its anchor. `problems` is empty when the files are
/// exactly what was anchored; each entry says what differs. Errors (no receipt, unreadable
/// files) are `Err`, not problems.
#[derive(Debug)]
pub(crate) struct Check {
    /// The receipt beside the artifact.
    pub(crate) anchor: AnchorFile,
    /// The ledger's anchor of the receipt's root, if the ledger has it.
    pub(crate) record: Option<AnchorRecord>,
    /// The root recomputed from the files (`None` when they could not be read as a model).
    pub(crate) recomputed: Option<Digest>,
    /// Datasets: the recomputed fingerprint.
    pub(crate) fingerprint: Option<Fingerprint>,
    /// Datasets: the buckets that differ from the anchored fingerprint.
    pub(crate) buckets: Vec<BucketDiff>,
    /// What differs.
    pub(crate) problems: Vec<String>,
}

impl Check {
    /// `Ok` when nothing differs, else an error naming what does and what to run.
    pub(crate) fn ensure_matches(&self, path: &Path) -> anyhow::Result<()> {
        if self.problems.is_empty() {
            return Ok(());
        }
        bail!(
            "{} does not match its anchor ({}); run `emrflow verify {}`",
            path.display(),
            self.problems.join("; "),
            path.display()
        )
    }

    /// The receipt's offline check and the ledger's anchor, shared by datasets and models.
    async fn start(
        dir: &Path,
        provenance: &Provenance,
    ) -> anyhow::Result<(Self, Option<AnchorSpec>)> {
        let anchor = AnchorFile::read(dir)?.with_context(|| {
            format!(
                "{} has no {ANCHOR_FILE}: it was not published by `emrflow run` or `emrflow train`",
                dir.display()
            )
        })?;
        let mut problems = Vec::new();
        let spec = match anchor.check(provenance.genesis()) {
            Ok(spec) => Some(spec),
            Err(e) => {
                problems.push(format!("the receipt: {e:#}"));
                None
            }
        };
        let record = provenance.anchor_of(anchor.root).await?;
        if record.is_none() {
            problems.push(format!(
                "root {} is not anchored on {}",
                anchor.root, provenance.describe
            ));
        }
        let check = Check {
            anchor,
            record,
            recomputed: None,
            fingerprint: None,
            buckets: Vec::new(),
            problems,
        };
        Ok((check, spec))
    }
}

/// Checks a published dataset directory: its receipt, its rows (fingerprinted on `ctx`), and
/// its manifest (whose hash the anchor carries as the parameter hash).
pub(crate) async fn check_dataset(
    ctx: &SessionContext,
    dir: &Path,
    provenance: &Provenance,
) -> anyhow::Result<Check> {
    let (mut check, spec) = Check::start(dir, provenance).await?;
    let fp =
        fingerprint::fingerprint(fingerprint::read_dataset(ctx, &dir.display().to_string()).await?)
            .await?;
    let recomputed = digest(&fp.root);
    if recomputed != check.anchor.root {
        check.problems.push(format!(
            "the rows differ: {} rows now, recomputed root {}",
            fp.row_count, fp.root
        ));
        check.buckets = differing_buckets(dir, &fp, &check.anchor.root, &mut check.problems);
    }
    if let Some(spec) = &spec {
        let path = dir.join(MANIFEST_FILE);
        let bytes =
            std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        match pipeline::Manifest::from_json(&bytes, &path.display().to_string()) {
            Ok(manifest) => {
                if Digest(pipeline::manifest::params_digest(&bytes)?) != spec.params_hash {
                    check
                        .problems
                        .push("manifest.json differs from the one anchored with the data".into());
                }
                // Training reads the files the manifest lists; the fingerprint covers every
                // Parquet file present. They must be the same files.
                let present = parquet_files(dir)?;
                if present != manifest.files {
                    check.problems.push(format!(
                        "manifest.json lists the files [{}] but the directory holds [{}]",
                        manifest.files.join(", "),
                        present.join(", ")
                    ));
                }
            }
            Err(e) => check
                .problems
                .push(format!("manifest.json is unreadable: {e}")),
        }
    }
    check.recomputed = Some(recomputed);
    check.fingerprint = Some(fp);
    Ok(check)
}

/// The names of the Parquet files directly in `dir`, sorted.
fn parquet_files(dir: &Path) -> anyhow::Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if name.ends_with(".parquet") {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// Checks a model directory (or its model.json): its receipt, and its root recomputed from the
/// model file and the training dataset's root, which the anchor must name as a parent.
pub(crate) async fn check_model(path: &Path, provenance: &Provenance) -> anyhow::Result<Check> {
    let (dir, file) = if path.is_dir() {
        (path.to_path_buf(), path.join(ml::report::files::MODEL))
    } else {
        (
            path.parent()
                .map_or_else(|| PathBuf::from("."), Path::to_path_buf),
            path.to_path_buf(),
        )
    };
    let (mut check, spec) = Check::start(&dir, provenance).await?;
    let bytes = std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
    let model = match ml::Model::from_json(&bytes, &file.display().to_string()) {
        Ok(model) => model,
        Err(e) => {
            check.problems.push(format!("the model file: {e}"));
            return Ok(check);
        }
    };
    let Some(dataset_root) = check.anchor.dataset_root else {
        check
            .problems
            .push(format!("{ANCHOR_FILE} names no training dataset"));
        return Ok(check);
    };
    if spec.is_some_and(|s| !s.parents.contains(&dataset_root)) {
        check.problems.push(format!(
            "{ANCHOR_FILE} names dataset {dataset_root}, which the anchor does not"
        ));
    }
    let root = model_root(&model, &dataset_root)?;
    if root != check.anchor.root {
        check.problems.push(format!(
            "{} differs from the anchored model (a threshold, a parameter or a node changed)",
            file.display()
        ));
    }
    check.recomputed = Some(root);
    Ok(check)
}

/// Names the buckets that differ, when the fingerprint stored beside the data is the anchored
/// one (its own root must be the anchored root, or it proves nothing).
fn differing_buckets(
    dir: &Path,
    now: &Fingerprint,
    anchored: &Digest,
    problems: &mut Vec<String>,
) -> Vec<BucketDiff> {
    let path = dir.join(FINGERPRINT_FILE);
    let stored = std::fs::read(&path)
        .map_err(|e| e.to_string())
        .and_then(|b| {
            Fingerprint::from_json(&b, &path.display().to_string()).map_err(|e| e.to_string())
        });
    match stored {
        Ok(stored) if stored.root.0 == anchored.0 => {
            let diff = now.diff(&stored);
            for d in diff.iter().take(16) {
                problems.push(format!(
                    "bucket {:02x} differs ({} rows anchored, {} now)",
                    d.bucket, d.expected_rows, d.actual_rows
                ));
            }
            if diff.len() > 16 {
                problems.push(format!("… and {} more buckets", diff.len() - 16));
            }
            diff
        }
        Ok(_) => {
            problems.push(format!(
                "{FINGERPRINT_FILE} is not the anchored fingerprint; buckets cannot be named"
            ));
            Vec::new()
        }
        Err(e) => {
            problems.push(format!("{FINGERPRINT_FILE}: {e}; buckets cannot be named"));
            Vec::new()
        }
    }
}
