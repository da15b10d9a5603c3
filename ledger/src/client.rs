//! The client API the pipeline and the CLI use: the [`LedgerApi`] trait (submit a signed
//! transaction, get a receipt; ask a signed query), implemented by the embedded [`Ledger`]
//! (four in-process peers over channels, the same host code as `emrflow ledger node`) and by
//! [`crate::transport::RemoteLedger`] (gRPC over TLS), and [`Client`] and [`Reader`], which sign
//! calls and queries for one identity. An answer a client acts on is not taken from one peer on
//! trust: an anchor comes with the receipt of its transaction, checked against the genesis, and
//! an absence is confirmed by `f + 1` peers. It owns no consensus logic.
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
use crate::ids::{ReplicaId, Time, max_faulty};
use crate::node::{self, Network, Node, NodeHandle};
use crate::peer::Wire;
use crate::store::Store;
use crate::tx::{QueryBody, SignedQuery, SignedTx, TxBody};

/// What any ledger — embedded or remote — offers a client.
pub trait LedgerApi: Send + Sync {
    /// Submits a signed transaction; resolves with its receipt once committed and certified.
    fn submit(&self, tx: SignedTx) -> impl Future<Output = Result<Receipt>> + Send;
    /// One peer's answer to a signed query.
    fn query(&self, q: SignedQuery) -> impl Future<Output = Result<QueryResult>> + Send;
    /// Every peer's answer to a signed query, asked at once, in peer order.
    fn query_all(&self, q: SignedQuery) -> impl Future<Output = Vec<Result<QueryResult>>> + Send;
    /// The faulty peers the ledger tolerates, `f`: an answer given alike by `f + 1` peers is
    /// given by at least one correct peer.
    fn max_faulty(&self) -> usize;
    /// The genesis, to sign transactions for this ledger and verify receipts.
    fn genesis(&self) -> &Genesis;
}

/// How many times an answer confirmed by `f + 1` peers is asked for before giving up (peers
/// that have not executed the latest block yet answer differently for a moment).
const QUORUM_ATTEMPTS: usize = 20;
/// Between two such attempts.
const QUORUM_RETRY: std::time::Duration = std::time::Duration::from_millis(50);

/// Signs contract calls for one identity and sends them to a ledger.
#[derive(Debug)]
pub struct Client<'a, L> {
    ledger: &'a L,
    key: KeyPair,
}

/// A transaction nonce no other client of this process has used, and above any used by a
/// process that ran before: the clock in microseconds, or one more than the last nonce handed
/// out when that is higher. The contract refuses a nonce its signer used before, and a server
/// makes many short-lived clients of one identity at once (one per request), so a per-client
/// counter started from the clock would hand two of them the same nonce.
fn next_nonce() -> u64 {
    static LAST: AtomicU64 = AtomicU64::new(0);
    #[allow(clippy::disallowed_methods)] // a client's nonce floor, not consensus time
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64);
    let mut prev = LAST.load(Ordering::Relaxed);
    loop {
        let next = prev.saturating_add(1).max(now);
        match LAST.compare_exchange_weak(prev, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return next,
            Err(seen) => prev = seen,
        }
    }
}

impl<'a, L: LedgerApi> Client<'a, L> {
    /// A client acting as `key`.
    pub fn new(ledger: &'a L, key: KeyPair) -> Self {
        Self { ledger, key }
    }

    /// The identity.
    pub fn public_key(&self) -> PublicKey {
        self.key.public()
    }

    /// Signs a call with a fresh nonce.
    pub fn sign(&self, call: Call) -> Result<SignedTx> {
        let nonce = next_nonce();
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

    /// Read-only queries on the same ledger, signed by the same identity.
    pub fn reader(&self) -> Reader<'a, L> {
        Reader::new(self.ledger, self.key.clone())
    }
}

/// Typed read-only queries, signed by one identity: only registered identities may ask, and
/// the audit trail only those whose role allows it.
#[derive(Debug)]
pub struct Reader<'a, L> {
    ledger: &'a L,
    key: KeyPair,
    nonce: AtomicU64,
    /// The identity (and its token) a gateway asks for: every query is then a [`Query::As`].
    acting_for: Option<(PublicKey, String)>,
}

impl<'a, L: LedgerApi> Reader<'a, L> {
    /// Queries `ledger` as `key`.
    pub fn new(ledger: &'a L, key: KeyPair) -> Self {
        Self {
            ledger,
            key,
            nonce: AtomicU64::new(0),
            acting_for: None,
        }
    }

    /// This gateway's reader asking for `reader`, who proves it with its `token`: every query
    /// is authorized as `reader`'s own ([`Query::As`]).
    pub fn for_reader(mut self, reader: PublicKey, token: &str) -> Self {
        self.acting_for = Some((reader, token.to_string()));
        self
    }

    /// Signs `query` for this ledger.
    pub fn sign(&self, query: Query) -> Result<SignedQuery> {
        let query = match &self.acting_for {
            Some((reader, token)) => Query::As {
                reader: *reader,
                token: token.clone(),
                query: Box::new(query),
            },
            None => query,
        };
        SignedQuery::sign(
            &self.key,
            &QueryBody {
                ledger: self.ledger.genesis().hash(),
                nonce: self.nonce.fetch_add(1, Ordering::Relaxed),
                query,
            },
        )
    }

    /// One peer's answer.
    pub async fn ask(&self, query: Query) -> Result<QueryResult> {
        self.ledger.query(self.sign(query)?).await
    }

    /// Peer `peer`'s own answer (by its index in the genesis), to check one peer's copy of the
    /// state, such as the audit trail of a peer that was down and has caught up.
    pub async fn ask_peer(&self, peer: usize, query: Query) -> Result<QueryResult> {
        let peers = self.ledger.genesis().peers.len();
        if peer >= peers {
            return Err(Error::Config(format!(
                "no peer {peer}: the ledger has peers 0 to {}",
                peers.saturating_sub(1)
            )));
        }
        self.ask_each(query)
            .await?
            .into_iter()
            .nth(peer)
            .unwrap_or_else(|| Err(Error::Stopped(format!("peer {peer} did not answer"))))
    }

    /// Every peer's own answer, in peer order (an error for a peer that did not answer): what a
    /// status page shows.
    pub async fn ask_each(&self, query: Query) -> Result<Vec<Result<QueryResult>>> {
        Ok(self.ledger.query_all(self.sign(query)?).await)
    }

    /// An answer `f + 1` peers gave alike, so at least one correct peer: asked again for a
    /// while when peers disagree (some have not executed the latest block yet).
    pub async fn ask_quorum(&self, query: Query) -> Result<QueryResult> {
        let need = self.ledger.max_faulty() + 1;
        let mut last = String::new();
        for attempt in 0..QUORUM_ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(QUORUM_RETRY).await;
            }
            let answers = self.ledger.query_all(self.sign(query.clone())?).await;
            let mut tally: Vec<(QueryResult, usize)> = Vec::new();
            for a in answers {
                match a {
                    Ok(r) => match tally.iter_mut().find(|(x, _)| *x == r) {
                        Some((_, n)) => *n += 1,
                        None => tally.push((r, 1)),
                    },
                    Err(e) if is_refusal(&e) => return Err(e),
                    Err(e) => last = e.to_string(),
                }
            }
            let agreed: Vec<QueryResult> = tally
                .into_iter()
                .filter(|(_, n)| *n >= need)
                .map(|(r, _)| r)
                .collect();
            if let [one] = agreed.as_slice() {
                return Ok(one.clone());
            }
        }
        Err(Error::Verification(format!(
            "no answer given alike by {need} peers ({last})"
        )))
    }

    /// The anchor of a root, checked: a claimed anchor must come with the receipt of its
    /// transaction (verified offline against the genesis) that anchored exactly this record; a
    /// claimed absence must be confirmed by `f + 1` peers. A lying peer can therefore neither
    /// invent an anchor nor hide one.
    pub async fn anchor_of(&self, root: Digest) -> Result<Option<AnchorRecord>> {
        let claimed = match self.ask(Query::Anchor(root)).await? {
            QueryResult::Anchor(a) => a,
            other => return Err(unexpected(&other)),
        };
        let record = match claimed {
            Some(r) => *r,
            None => match self.ask_quorum(Query::Anchor(root)).await? {
                QueryResult::Anchor(None) => return Ok(None),
                QueryResult::Anchor(Some(r)) => *r,
                other => return Err(unexpected(&other)),
            },
        };
        if record.spec.root != root {
            return Err(Error::Verification(format!(
                "asked for the anchor of {root}, got one of {}",
                record.spec.root
            )));
        }
        let receipt = self
            .receipt(record.tx)
            .await?
            .ok_or_else(|| Error::Verification(format!("no receipt for the anchor of {root}")))?;
        check_anchor(&record, &receipt, self.ledger.genesis())?;
        Ok(Some(record))
    }

    /// Every anchor of a root (one per derivation), in commit order, checked like
    /// [`Reader::anchor_of`]: each claimed derivation against the receipt of its transaction, a
    /// claimed absence against `f + 1` peers.
    pub async fn anchors_of(&self, root: Digest) -> Result<Vec<AnchorRecord>> {
        let claimed = match self.ask(Query::Anchors(root)).await? {
            QueryResult::Anchors(a) => a,
            other => return Err(unexpected(&other)),
        };
        let records = if claimed.is_empty() {
            match self.ask_quorum(Query::Anchors(root)).await? {
                QueryResult::Anchors(a) => a,
                other => return Err(unexpected(&other)),
            }
        } else {
            claimed
        };
        for record in &records {
            if record.spec.root != root {
                return Err(Error::Verification(format!(
                    "asked for the anchors of {root}, got one of {}",
                    record.spec.root
                )));
            }
            let receipt = self.receipt(record.tx).await?.ok_or_else(|| {
                Error::Verification(format!(
                    "no receipt for the anchor of {root} in transaction {}",
                    record.tx
                ))
            })?;
            check_anchor(record, &receipt, self.ledger.genesis())?;
        }
        Ok(records)
    }

    /// The lineage DAG of a root.
    pub async fn lineage(&self, root: Digest, max_depth: u32) -> Result<Lineage> {
        match self.ask(Query::Lineage { root, max_depth }).await? {
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
            .ask(Query::Audit {
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
        match self.ask(Query::Identity(key)).await? {
            QueryResult::Identity(i) => Ok(i),
            other => Err(unexpected(&other)),
        }
    }

    /// The receipt of a committed transaction, once its block is certified, checked against
    /// the genesis.
    pub async fn receipt(&self, tx: Digest) -> Result<Option<Receipt>> {
        match self.ask(Query::Receipt(tx)).await? {
            QueryResult::Receipt(Some(r)) => {
                r.verify(self.ledger.genesis())?;
                if r.tx_id() != tx {
                    return Err(Error::Verification(format!(
                        "asked for the receipt of {tx}, got one of {}",
                        r.tx_id()
                    )));
                }
                Ok(Some(*r))
            }
            QueryResult::Receipt(None) => Ok(None),
            other => Err(unexpected(&other)),
        }
    }

    /// The chain head of the peer answering.
    pub async fn head(&self) -> Result<crate::chain::Head> {
        match self.ask(Query::Head).await? {
            QueryResult::Head(h) => Ok(h),
            other => Err(unexpected(&other)),
        }
    }
}

/// Whether an error is the ledger refusing the query (final), not a peer failing.
fn is_refusal(e: &Error) -> bool {
    match e {
        Error::Denied(_) => true,
        Error::Rpc(s) => s.code() == tonic::Code::PermissionDenied,
        _ => false,
    }
}

/// Checks that `receipt` (verified against `genesis`) proves `record`: an accepted anchor
/// transaction by the record's signer, at the record's position, anchoring the record's spec.
pub fn check_anchor(record: &AnchorRecord, receipt: &Receipt, genesis: &Genesis) -> Result<()> {
    receipt.verify(genesis)?;
    let body = receipt.tx.body()?;
    let anchored = match &body.call {
        Call::Anchor(spec) => *spec == record.spec,
        Call::AmendRecord(amend) => crate::contracts::records::amend_anchor(amend) == record.spec,
        _ => false,
    };
    let proves = anchored
        && receipt.outcome.is_accepted()
        && receipt.tx.signer == record.signer
        && receipt.tx_id() == record.tx
        && receipt.header.height == record.position.seq
        && receipt.index == record.position.index
        && receipt.header.time == record.time;
    if proves {
        Ok(())
    } else {
        Err(Error::Verification(format!(
            "the anchor of {} does not match the receipt of its transaction",
            record.spec.root
        )))
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
            // A stopped node drops messages, as a crashed peer would. Nothing is encoded in
            // process, so only the message count bounds the queue.
            let _ = n.deliver(self.me, wire, 0);
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
            .map(|i| node::channel_for(ReplicaId(i as u32), n))
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

    async fn query(&self, q: SignedQuery) -> Result<QueryResult> {
        self.nodes[0].handle().answer(&q)
    }

    async fn query_all(&self, q: SignedQuery) -> Vec<Result<QueryResult>> {
        self.nodes.iter().map(|n| n.handle().answer(&q)).collect()
    }

    fn max_faulty(&self) -> usize {
        max_faulty(self.genesis.peers.len())
    }

    fn genesis(&self) -> &Genesis {
        &self.genesis
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_of_one_identity_never_share_a_nonce() {
        let threads: Vec<_> = (0..4)
            .map(|_| std::thread::spawn(|| (0..2_000).map(|_| next_nonce()).collect::<Vec<_>>()))
            .collect();
        let mut all: Vec<u64> = threads
            .into_iter()
            .flat_map(|t| t.join().expect("thread"))
            .collect();
        let n = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), n);
    }
}
