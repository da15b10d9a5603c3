//! Which ledger (an embedded four-peer ledger in a directory, or a running cluster named by its
//! genesis), which identity signs for which role, and the local-ledger rule: on an embedded
//! ledger whose admin key is at hand, a command's per-role identity is created and registered
//! on first use, and a missing read grant is given by the admin (and audited as such). Against
//! a cluster nothing is created or granted implicitly: the caller names a registered identity.
//! Queries are signed too (the ledger answers registered identities only), by the configured
//! identity or, on an embedded ledger, by its admin.

use std::fs::File;
use std::path::{Path, PathBuf};

use ledger::chain::{Genesis, QueryResult, Receipt};
use ledger::client::{Client, Ledger, LedgerApi, Reader};
use ledger::config;
use ledger::contracts::{Access, AnchorRecord, AnchorSpec, Call, Outcome, Role};
use ledger::crypto::{KeyPair, PublicKey};
use ledger::transport::RemoteLedger;
use ledger::tx::{SignedQuery, SignedTx};
use merkle::Digest;
use serde::Deserialize;

use crate::error::{Context, Error, Result};

/// Which ledger to use and who signs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LedgerConfig {
    /// A directory holds an embedded four-peer ledger (created on first use); a `genesis.json`
    /// file names the peers of a running cluster. Default: `$EMRFLOW_HOME/ledger`.
    pub ledger: Option<PathBuf>,
    /// Key file of the identity to sign with. Default: the per-role identity kept in an
    /// embedded ledger's `identities/`.
    pub identity: Option<PathBuf>,
    /// How long one attempt at one peer of a cluster may take before the next is tried (a
    /// transaction tries each peer twice). Default: 10 seconds. A clinician's read waits for
    /// its audit event to commit, so a site whose ledger may lose its quorum sets it lower to
    /// be refused sooner.
    pub timeout_secs: Option<u64>,
}

/// `$EMRFLOW_HOME`, else `$XDG_DATA_HOME/emrflow`, else `~/.local/share/emrflow`.
pub fn emrflow_home() -> PathBuf {
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
pub enum Conn {
    /// Four peers in this process.
    Embedded(Ledger),
    /// A cluster of `emrflow ledger node` peers.
    Remote(RemoteLedger),
}

impl LedgerApi for Conn {
    async fn submit(&self, tx: SignedTx) -> ledger::Result<Receipt> {
        match self {
            Conn::Embedded(l) => l.submit(tx).await,
            Conn::Remote(r) => r.submit(tx).await,
        }
    }

    async fn query(&self, q: SignedQuery) -> ledger::Result<QueryResult> {
        match self {
            Conn::Embedded(l) => l.query(q).await,
            Conn::Remote(r) => r.query(q).await,
        }
    }

    async fn query_all(&self, q: SignedQuery) -> Vec<ledger::Result<QueryResult>> {
        match self {
            Conn::Embedded(l) => l.query_all(q).await,
            Conn::Remote(r) => r.query_all(q).await,
        }
    }

    fn max_faulty(&self) -> usize {
        match self {
            Conn::Embedded(l) => l.max_faulty(),
            Conn::Remote(r) => r.max_faulty(),
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
pub struct Provenance {
    conn: Option<Conn>,
    /// Where `admin.key` and `identities/` live.
    home: PathBuf,
    identity: Option<PathBuf>,
    /// Held while the embedded ledger runs: one process at a time owns its stores.
    _lock: Option<File>,
    /// The ledger, for messages.
    describe: String,
}

impl Provenance {
    /// Opens the ledger `config` names: starts the embedded peers (waiting for another emrflow
    /// process to release them), or connects to a cluster's peers.
    pub async fn open(config: &LedgerConfig) -> Result<Self> {
        let location = config
            .ledger
            .clone()
            .unwrap_or_else(|| emrflow_home().join("ledger"));
        if location.is_file() {
            let genesis = config::read_genesis(&location)
                .with_context(|| format!("cannot read the genesis {}", location.display()))?;
            let home = location
                .parent()
                .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
            let mut remote = RemoteLedger::new(genesis).with_context(|| {
                format!("cannot set up TLS to the peers of {}", location.display())
            })?;
            if let Some(secs) = config.timeout_secs {
                remote = remote.with_timeout(std::time::Duration::from_secs(secs.max(1)));
            }
            return Ok(Self {
                conn: Some(Conn::Remote(remote)),
                home,
                identity: config.identity.clone(),
                _lock: None,
                describe: format!("the ledger cluster of {}", location.display()),
            });
        }
        std::fs::create_dir_all(&location).map_err(|source| Error::Io {
            action: "cannot create the ledger directory",
            path: location.display().to_string(),
            source,
        })?;
        let lock = lock_dir(&location).await?;
        let dir = location.clone();
        let ledger = tokio::task::spawn_blocking(move || Ledger::open_or_init(&dir))
            .await
            .map_err(|e| Error::invalid(format!("the ledger's start-up task failed: {e}")))?
            .with_context(|| {
                format!("cannot start the embedded ledger in {}", location.display())
            })?;
        Ok(Self {
            conn: Some(Conn::Embedded(ledger)),
            home: location.clone(),
            identity: config.identity.clone(),
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

    /// The ledger, for messages (`the embedded ledger in DIR`, `the ledger cluster of FILE`).
    pub fn describe(&self) -> &str {
        &self.describe
    }

    /// Whether the ledger runs in this process.
    pub fn is_embedded(&self) -> bool {
        matches!(self.conn(), Conn::Embedded(_))
    }

    /// The genesis of the ledger.
    pub fn genesis(&self) -> &Genesis {
        self.conn().genesis()
    }

    /// Stops the embedded peers (a no-op for a cluster).
    pub async fn close(mut self) -> Result<()> {
        if let Some(Conn::Embedded(ledger)) = self.conn.take() {
            tokio::task::spawn_blocking(move || ledger.shutdown())
                .await
                .map_err(|e| Error::invalid(format!("the ledger's shutdown task failed: {e}")))??;
        }
        Ok(())
    }

    /// The admin key of an embedded ledger, when it is in the ledger directory.
    fn local_admin(&self) -> Option<KeyPair> {
        if !self.is_embedded() {
            return None;
        }
        let path = self.home.join("admin.key");
        path.exists()
            .then(|| config::read_key(&path).ok())
            .flatten()
    }

    /// The key that acts as `role`: the configured identity, or (embedded ledger only) the
    /// local identity for the role, created and registered by the admin on first use.
    pub async fn key_for(&self, role: Role) -> Result<KeyPair> {
        if let Some(path) = &self.identity {
            return config::read_key(path)
                .with_context(|| format!("cannot read the identity key {}", path.display()));
        }
        let path = self.home.join("identities").join(format!("{role}.key"));
        if self.is_embedded() && path.exists() {
            return config::read_key(&path)
                .with_context(|| format!("cannot read the identity key {}", path.display()));
        }
        let Some(admin) = self.local_admin() else {
            return Err(Error::invalid(format!(
                "no identity to act as {role} on {}: pass --identity KEY (a key registered with \
                 role {role})",
                self.describe
            )));
        };
        let key = config::new_key_file(&path)?;
        let user = std::env::var("USER").unwrap_or_else(|_| "local".to_string());
        let receipt = Client::new(self.conn(), admin)
            .register(key.public(), &format!("{user} ({role})"), role)
            .await
            .context("cannot register a local identity")?;
        if let Outcome::Denied { reason } = &receipt.outcome {
            let _ = std::fs::remove_file(&path);
            return Err(Error::Denied {
                what: format!("the registration of a local {role} identity"),
                reason: reason.clone(),
            });
        }
        tracing::info!("registered a local {role} identity ({})", path.display());
        Ok(key)
    }

    /// Creates a new identity key at `out` and has the admin (`admin`, or an embedded ledger's
    /// `admin.key`) register it with `role`; the key is removed if the ledger refuses.
    pub async fn register_identity(
        &self,
        admin: Option<&Path>,
        role: Role,
        name: &str,
        out: &Path,
    ) -> Result<Receipt> {
        let admin = self.admin_key(admin)?;
        let key = config::new_key_file(out)?;
        let receipt = Client::new(self.conn(), admin)
            .register(key.public(), name, role)
            .await;
        match receipt {
            Ok(r) if r.outcome.is_accepted() => Ok(r),
            Ok(r) => {
                let _ = std::fs::remove_file(out);
                Err(Error::Denied {
                    what: "the registration".to_string(),
                    reason: match r.outcome {
                        Outcome::Denied { reason } => reason,
                        Outcome::Accepted | Outcome::Granted(_) => String::new(),
                    },
                })
            }
            Err(e) => {
                let _ = std::fs::remove_file(out);
                Err(e).context("cannot register the identity")
            }
        }
    }

    /// The admin's key: from `admin`, or the `admin.key` beside the ledger.
    fn admin_key(&self, admin: Option<&Path>) -> Result<KeyPair> {
        match admin {
            Some(path) => config::read_key(path)
                .with_context(|| format!("cannot read the admin key {}", path.display())),
            None => {
                let path = self.home.join("admin.key");
                config::read_key(&path).with_context(|| {
                    format!("no admin.key beside {}; pass --admin-key", self.describe)
                })
            }
        }
    }

    /// Grants `grantee` `access` to the anchored `subject`, signed by the admin; fails (naming
    /// the reason) if the ledger denies it.
    pub async fn grant_access(
        &self,
        admin: Option<&Path>,
        subject: Digest,
        grantee: PublicKey,
        access: Access,
    ) -> Result<Receipt> {
        let admin = self.admin_key(admin)?;
        let receipt = Client::new(self.conn(), admin)
            .grant(subject, grantee, access)
            .await
            .with_context(|| format!("cannot grant {access:?} access to {subject}"))?;
        if let Outcome::Denied { reason } = &receipt.outcome {
            return Err(Error::Denied {
                what: format!("the grant of {access:?} access to {subject}"),
                reason: reason.clone(),
            });
        }
        Ok(receipt)
    }

    /// Anchors `spec` as `role`; fails (naming the reason) if the ledger denies it.
    pub async fn anchor(&self, role: Role, spec: AnchorSpec) -> Result<Receipt> {
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
            return Err(Error::Denied {
                what: format!("the anchor of {root}"),
                reason: reason.clone(),
            });
        }
        Ok(receipt)
    }

    /// Anchors `spec` unless the same root is anchored already with the same parameters (a
    /// rerun that produced identical content): then the receipt of that anchor. The same root
    /// under other parameters (another job, another output) is anchored as a derivation of its
    /// own.
    pub async fn anchor_once(&self, role: Role, spec: AnchorSpec) -> Result<Receipt> {
        let existing = self
            .anchors_of(spec.root)
            .await?
            .into_iter()
            .find(|a| a.spec.params_hash == spec.params_hash && a.spec.kind == spec.kind);
        match existing {
            Some(record) => self.receipt_of(record.tx).await,
            None => self.anchor(role, spec).await,
        }
    }

    /// The receipt of a committed transaction, checked against the genesis.
    pub async fn receipt_of(&self, tx: Digest) -> Result<Receipt> {
        self.reader()?
            .receipt(tx)
            .await
            .context("the ledger returned a receipt that does not verify")?
            .ok_or_else(|| Error::invalid(format!("the ledger has no certified receipt for {tx}")))
    }

    /// The key queries are signed with: the configured identity; on an embedded ledger, its
    /// admin key, else any of its local per-role identities. A cluster is never queried with
    /// a key found lying beside its genesis.
    fn query_key(&self) -> Result<KeyPair> {
        if let Some(path) = &self.identity {
            return config::read_key(path)
                .with_context(|| format!("cannot read the identity key {}", path.display()));
        }
        if let Some(admin) = self.local_admin() {
            return Ok(admin);
        }
        if self.is_embedded() {
            for role in Role::ALL {
                let path = self.home.join("identities").join(format!("{role}.key"));
                if path.exists() {
                    return config::read_key(&path).with_context(|| {
                        format!("cannot read the identity key {}", path.display())
                    });
                }
            }
        }
        Err(Error::invalid(format!(
            "queries to {} are signed by a registered identity: pass --identity KEY",
            self.describe
        )))
    }

    /// Read-only queries, signed by the configured identity (on an embedded ledger, its admin
    /// key or a local per-role identity when none is configured).
    pub fn reader(&self) -> Result<Reader<'_, Conn>> {
        Ok(Reader::new(self.conn(), self.query_key()?))
    }

    /// Read-only queries signed as `role` (the audit trail is answered to the compliance role,
    /// or to a subject's owner).
    pub async fn reader_as(&self, role: Role) -> Result<Reader<'_, Conn>> {
        Ok(Reader::new(self.conn(), self.key_for(role).await?))
    }

    /// Every anchor of a root (one per derivation), in commit order: each checked against the
    /// receipt of its transaction, an absence against `f + 1` peers.
    pub async fn anchors_of(&self, root: Digest) -> Result<Vec<AnchorRecord>> {
        Ok(self.reader()?.anchors_of(root).await?)
    }

    /// A client signing with `key` (an identity the caller holds, such as a clinician's).
    pub fn client_with(&self, key: KeyPair) -> Client<'_, Conn> {
        Client::new(self.conn(), key)
    }

    /// Read-only queries signed with `key`.
    pub fn reader_with(&self, key: KeyPair) -> Reader<'_, Conn> {
        Reader::new(self.conn(), key)
    }

    /// A client acting as `role`.
    pub async fn client(&self, role: Role) -> Result<Client<'_, Conn>> {
        Ok(Client::new(self.conn(), self.key_for(role).await?))
    }

    /// Records that `role` read `subject` for `purpose`.
    pub async fn record_read(&self, role: Role, subject: Digest, purpose: &str) -> Result<Receipt> {
        self.record_access(role, subject, Access::Read, purpose)
            .await
    }

    /// Records that `role` made `access` to `subject` for `purpose`. On an embedded ledger whose
    /// admin key is at hand, a missing grant of a local identity is given by the admin (and
    /// audited as such); otherwise a denial is an error naming what to ask for.
    pub async fn record_access(
        &self,
        role: Role,
        subject: Digest,
        access: Access,
        purpose: &str,
    ) -> Result<Receipt> {
        let client = self.client(role).await?;
        let receipt = client
            .record_access(subject, access, purpose)
            .await
            .with_context(|| format!("cannot record the {access:?} of {subject}"))?;
        let Outcome::Denied { reason } = &receipt.outcome else {
            return Ok(receipt);
        };
        let admin = match (&self.identity, self.local_admin()) {
            (None, Some(admin)) if reason.contains("grant") => admin,
            _ => {
                return Err(Error::Denied {
                    what: format!(
                        "{role} {} {access:?} access to {subject}",
                        client.public_key()
                    ),
                    reason: format!("{reason}; an admin can grant it"),
                });
            }
        };
        let grant = Client::new(self.conn(), admin)
            .call(Call::Grant {
                subject,
                grantee: client.public_key(),
                access,
            })
            .await?;
        if let Outcome::Denied { reason } = &grant.outcome {
            return Err(Error::Denied {
                what: format!("the admin's grant of {access:?} access to {subject}"),
                reason: reason.clone(),
            });
        }
        tracing::info!("granted the local {role} identity {access:?} access to {subject}");
        let receipt = client.record_access(subject, access, purpose).await?;
        if let Outcome::Denied { reason } = &receipt.outcome {
            return Err(Error::Denied {
                what: format!("{access:?} access to {subject}"),
                reason: reason.clone(),
            });
        }
        Ok(receipt)
    }

    /// Records `access` to `subject` for `purpose` as `by`: one of this connection's per-role
    /// identities ([`Provenance::record_access`]), or a reader a gateway acts for, decided and
    /// audited as the reader's own with the gateway named.
    pub async fn record_access_by(
        &self,
        by: Accessor<'_>,
        subject: Digest,
        access: Access,
        purpose: &str,
    ) -> Result<Receipt> {
        let (gateway, reader, token) = match by {
            Accessor::Role(role) => {
                return self.record_access(role, subject, access, purpose).await;
            }
            Accessor::Reader {
                gateway,
                reader,
                token,
            } => (gateway, reader, token),
        };
        let receipt = self
            .client_with(gateway.clone())
            .call(Call::As {
                reader,
                token: token.to_string(),
                call: Box::new(Call::RecordAccess {
                    subject,
                    access,
                    purpose: purpose.to_string(),
                }),
            })
            .await
            .with_context(|| format!("cannot record the {access:?} of {subject}"))?;
        if let Outcome::Denied { reason } = &receipt.outcome {
            return Err(Error::Denied {
                what: format!("{reader} {access:?} access to {subject}"),
                reason: reason.clone(),
            });
        }
        Ok(receipt)
    }
}

/// Who an access to an anchored subject is recorded as.
#[derive(Debug, Clone, Copy)]
pub enum Accessor<'a> {
    /// This connection's identity for a role (the command line's).
    Role(Role),
    /// A reader a gateway (the server) acts for: signed with the gateway's key, with the
    /// reader's own token proving that the reader asked.
    Reader {
        /// The gateway's key.
        gateway: &'a KeyPair,
        /// The reader.
        reader: PublicKey,
        /// The reader's token.
        token: &'a str,
    },
}

/// Takes the embedded ledger directory's lock, waiting for another process to release it.
async fn lock_dir(dir: &Path) -> Result<File> {
    let path = dir.join("emrflow.lock");
    let io = |source| Error::Io {
        action: "cannot lock",
        path: path.display().to_string(),
        source,
    };
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io)?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => {
            tracing::warn!(
                "waiting for another emrflow process to release the ledger in {}",
                dir.display()
            );
            tokio::task::spawn_blocking(move || file.lock().map(|()| file))
                .await
                .map_err(|e| Error::invalid(format!("the ledger lock task failed: {e}")))?
                .map_err(io)
        }
        Err(std::fs::TryLockError::Error(e)) => Err(io(e)),
    }
}
