//! The client API the pipeline and the CLI use: the [`LedgerApi`] trait (submit a signed
//! transaction, get a receipt; ask a query), implemented by the embedded [`Ledger`] (four
//! in-process peers over channels, the same host code as `emrflow ledger node`) and by
//! [`crate::transport::RemoteLedger`] (gRPC), and [`Client`], which signs calls for one identity.
//! It owns no consensus logic.
//!
//! ```no_run
//! # async fn demo() -> ledger::Result<()> {
//! use ledger::client::{Client, Ledger, LedgerApi};
//! use ledger::contracts::{AnchorKind, AnchorSpec, Role};
//! use ledger::crypto::Digest;
//!
//! let ledger = Ledger::open_or_init(std::path::Path::new("target/ledger"))?;
//! let admin = Client::new(&ledger, ledger.admin_key()?);
//! let engineer = ledger::crypto::KeyPair::from_seed([7; 32]);
//! admin.register(engineer.public(), "etl", Role::DataEngineer).await?;
//! let etl = Client::new(&ledger, engineer);
//! let receipt = etl
//!     .anchor(AnchorSpec {
//!         kind: AnchorKind::Dataset,
//!         root: Digest::of(b"dataset root"),
//!         row_count: 130_070,
//!         schema_hash: Digest::of(b"schema"),
//!         location: "file:///data/clean.parquet".into(),
//!         parents: vec![],
//!         stage: "preprocess".into(),
//!         params_hash: Digest::of(b"params"),
//!         code_version: "v0.1.0".into(),
//!     })
//!     .await?;
//! receipt.verify(ledger.genesis())?;
//! # Ok(()) }
//! ```

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::chain::{Genesis, QueryResult, Receipt};
use crate::config::{self, InitOptions, NodeConfig};
use crate::contracts::{
    Access, AnchorRecord, AnchorSpec, AuditEvent, Call, Identity, Lineage, Query, Role,
};
use crate::crypto::{Digest, KeyPair, PublicKey};
use crate::error::{Error, Result};
use crate::ids::{ReplicaId, Time};
use crate::node::{self, Network, Node, NodeHandle};
use crate::peer::Wire;
use crate::store::Store;
use crate::tx::{SignedTx, TxBody};

/// What any ledger — embedded or remote — offers a client.
pub trait LedgerApi: Send + Sync {
    /// Submits a signed transaction; resolves with its receipt once committed and certified.
    fn submit(&self, tx: SignedTx) -> impl Future<Output = Result<Receipt>> + Send;
    /// Answers a read-only query.
    fn query(&self, q: Query) -> impl Future<Output = Result<QueryResult>> + Send;
    /// The genesis, to sign transactions for this ledger and verify receipts.
    fn genesis(&self) -> &Genesis;
}

/// Signs contract calls for one identity and sends them to a ledger.
#[derive(Debug)]
pub struct Client<'a, L> {
    ledger: &'a L,
    key: KeyPair,
    nonce: AtomicU64,
}

impl<'a, L: LedgerApi> Client<'a, L> {
    /// A client acting as `key`. Nonces start from the clock in microseconds so that
    /// successive processes using the same identity never reuse one.
    pub fn new(ledger: &'a L, key: KeyPair) -> Self {
        let start = node::unix_ms().0.saturating_mul(1000);
        Self {
            ledger,
            key,
            nonce: AtomicU64::new(start),
        }
    }

    /// The identity.
    pub fn public_key(&self) -> PublicKey {
        self.key.public()
    }

    /// Signs a call with a fresh nonce.
    pub fn sign(&self, call: Call) -> Result<SignedTx> {
        let nonce = self.nonce.fetch_add(1, Ordering::Relaxed);
        SignedTx::sign(
            &self.key,
            &TxBody {
                ledger: self.ledger.genesis().hash(),
                nonce,
                call,
            },
        )
    }

    /// Signs and submits a call; the receipt says whether it was accepted or denied.
    pub async fn call(&self, call: Call) -> Result<Receipt> {
        let tx = self.sign(call)?;
        self.ledger.submit(tx).await
    }

    /// Anchors a dataset or model version.
    pub async fn anchor(&self, spec: AnchorSpec) -> Result<Receipt> {
        self.call(Call::Anchor(spec)).await
    }

    /// Registers an identity (admin only).
    pub async fn register(&self, key: PublicKey, name: &str, role: Role) -> Result<Receipt> {
        self.call(Call::RegisterIdentity {
            key,
            name: name.to_string(),
            role,
        })
        .await
    }

    /// Grants access to an anchored subject (admin only).
    pub async fn grant(
        &self,
        subject: Digest,
        grantee: PublicKey,
        access: Access,
    ) -> Result<Receipt> {
        self.call(Call::Grant {
            subject,
            grantee,
            access,
        })
        .await
    }

    /// Revokes a grant (admin only).
    pub async fn revoke(
        &self,
        subject: Digest,
        grantee: PublicKey,
        access: Access,
    ) -> Result<Receipt> {
        self.call(Call::Revoke {
            subject,
            grantee,
            access,
        })
        .await
    }

    /// Records a read, query, update or export of an anchored subject.
    pub async fn record_access(
        &self,
        subject: Digest,
        access: Access,
        purpose: &str,
    ) -> Result<Receipt> {
        self.call(Call::RecordAccess {
            subject,
            access,
            purpose: purpose.to_string(),
        })
        .await
    }

    /// Read-only queries on the same ledger.
    pub fn reader(&self) -> Reader<'a, L> {
        Reader::new(self.ledger)
    }
}

/// Typed read-only queries; they need no identity.
#[derive(Debug, Clone, Copy)]
pub struct Reader<'a, L> {
    ledger: &'a L,
}

impl<'a, L: LedgerApi> Reader<'a, L> {
    /// Queries `ledger`.
    pub fn new(ledger: &'a L) -> Self {
        Self { ledger }
    }

    /// The anchor of a root.
    pub async fn anchor_of(&self, root: Digest) -> Result<Option<AnchorRecord>> {
        match self.ledger.query(Query::Anchor(root)).await? {
            QueryResult::Anchor(a) => Ok(a.map(|b| *b)),
            other => Err(unexpected(&other)),
        }
    }

    /// Every anchor of a root (one per derivation), in commit order.
    pub async fn anchors_of(&self, root: Digest) -> Result<Vec<AnchorRecord>> {
        match self.ledger.query(Query::Anchors(root)).await? {
            QueryResult::Anchors(a) => Ok(a),
            other => Err(unexpected(&other)),
        }
    }

    /// The lineage DAG of a root.
    pub async fn lineage(&self, root: Digest, max_depth: u32) -> Result<Lineage> {
        match self
            .ledger
            .query(Query::Lineage { root, max_depth })
            .await?
        {
            QueryResult::Lineage(l) => Ok(l),
            other => Err(unexpected(&other)),
        }
    }

    /// Audit events of a subject and/or an identity over a block-time range (ms since epoch).
    pub async fn audit(
        &self,
        subject: Option<Digest>,
        actor: Option<PublicKey>,
        from: Time,
        to: Time,
    ) -> Result<Vec<AuditEvent>> {
        match self
            .ledger
            .query(Query::Audit {
                subject,
                actor,
                from,
                to,
            })
            .await?
        {
            QueryResult::Audit(events) => Ok(events),
            other => Err(unexpected(&other)),
        }
    }

    /// A registered identity.
    pub async fn identity(&self, key: PublicKey) -> Result<Option<Identity>> {
        match self.ledger.query(Query::Identity(key)).await? {
            QueryResult::Identity(i) => Ok(i),
            other => Err(unexpected(&other)),
        }
    }

    /// The receipt of a committed transaction, once its block is certified.
    pub async fn receipt(&self, tx: Digest) -> Result<Option<Receipt>> {
        match self.ledger.query(Query::Receipt(tx)).await? {
            QueryResult::Receipt(r) => Ok(r.map(|b| *b)),
            other => Err(unexpected(&other)),
        }
    }
}

fn unexpected(r: &QueryResult) -> Error {
    Error::Invariant(format!("unexpected query answer {r:?}"))
}

/// In-memory links between the nodes of one process.
#[derive(Debug)]
struct ChannelNetwork {
    me: ReplicaId,
    nodes: Arc<Vec<NodeHandle>>,
}

impl Network for ChannelNetwork {
    fn send(&self, to: ReplicaId, wire: Wire) {
        if let Some(n) = self.nodes.get(to.0 as usize) {
            // A stopped node drops messages, as a crashed peer would.
            let _ = n.deliver(self.me, wire);
        }
    }
}

/// The embedded ledger: the four peers of a ledger directory running in this process, each on
/// its own thread with its own redb store, linked by in-memory channels.
#[derive(Debug)]
pub struct Ledger {
    dir: PathBuf,
    genesis: Genesis,
    nodes: Vec<Node>,
    next: AtomicUsize,
}

impl Ledger {
    /// Starts the ledger in `dir`, creating it (genesis, keys, configs) on first use.
    pub fn open_or_init(dir: &Path) -> Result<Self> {
        if !dir.join("genesis.json").exists() {
            config::init(dir, &InitOptions::default())?;
        }
        Self::start(dir)
    }

    /// Starts the four peers of an existing ledger directory (as written by `init`).
    pub fn start(dir: &Path) -> Result<Self> {
        let genesis = config::read_genesis(&dir.join("genesis.json"))?;
        let n = genesis.peers.len();
        let mut configs = Vec::with_capacity(n);
        for i in 0..n {
            configs.push(NodeConfig::load(&dir.join(format!("peer{i}.toml")))?);
        }
        let channels: Vec<_> = (0..n)
            .map(|i| node::channel_for(ReplicaId(i as u32)))
            .collect();
        let handles: Arc<Vec<NodeHandle>> =
            Arc::new(channels.iter().map(|(h, _)| h.clone()).collect());
        let mut nodes = Vec::with_capacity(n);
        for ((handle, rx), cfg) in channels.into_iter().zip(configs) {
            let id = handle.id();
            let key = config::read_key(&cfg.key)?;
            crate::peer::check_key(&genesis, id, &key)?;
            let store = Store::open(&cfg.store_path())?;
            let net = Arc::new(ChannelNetwork {
                me: id,
                nodes: handles.clone(),
            });
            let replica = cfg.consensus.replica_config(&genesis, id);
            nodes.push(node::start(
                handle,
                rx,
                genesis.clone(),
                replica,
                key,
                store,
                net,
            )?);
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            genesis,
            nodes,
            next: AtomicUsize::new(0),
        })
    }

    /// The admin identity written by `init` (`admin.key`).
    pub fn admin_key(&self) -> Result<KeyPair> {
        config::read_key(&self.dir.join("admin.key"))
    }

    /// The ledger directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The handles of the peers.
    pub fn nodes(&self) -> Vec<NodeHandle> {
        self.nodes.iter().map(|n| n.handle().clone()).collect()
    }

    /// Stops every peer and waits for them.
    pub fn shutdown(self) -> Result<()> {
        for n in self.nodes {
            n.stop()?;
        }
        Ok(())
    }
}

impl LedgerApi for Ledger {
    async fn submit(&self, tx: SignedTx) -> Result<Receipt> {
        // Spread clients over the peers; any peer relays to the primary.
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.nodes.len();
        self.nodes[i].handle().submit(tx).await
    }

    async fn query(&self, q: Query) -> Result<QueryResult> {
        self.nodes[0].handle().query(q).await
    }

    fn genesis(&self) -> &Genesis {
        &self.genesis
    }
}
