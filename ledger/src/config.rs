//! Peer configuration files and `init`: writing a genesis, four peer keys, an admin identity
//! and one TOML config per peer. It owns file formats and path resolution; it starts nothing.

use std::path::{Path, PathBuf};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::chain::{Genesis, PeerInfo};
use crate::crypto::KeyPair;
use crate::error::{Error, Result};
use crate::ids::{DEFAULT_N, ReplicaId};
use crate::pbft::Config;

/// Consensus parameters shared by every peer of a ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ConsensusParams {
    /// PBFT log window `L`.
    pub window: u64,
    /// Most requests per batch.
    pub max_batch: usize,
    /// Most sequence numbers in flight.
    pub max_inflight: u64,
    /// Base view-change timeout (ms).
    pub request_timeout_ms: u64,
    /// Retransmission interval when no progress is made (ms).
    pub retransmit_ms: u64,
}

impl Default for ConsensusParams {
    fn default() -> Self {
        Self {
            // Checkpoints are taken after every block, so the low watermark trails execution by
            // one round of checkpoint votes; 64 sequence numbers is far more than a primary
            // with `max_inflight` in flight ever needs, and keeps the largest new-view message
            // within the message limit (see `pbft::Config::validate`).
            window: 64,
            max_batch: 2048,
            // Two batches in flight keep the pipeline busy while the previous one commits;
            // more only splits the same load into smaller blocks, and every block costs its
            // own votes, checkpoint signatures, certificate and durable write (on four peers
            // sharing two cores, 4 in flight cost about 15% more CPU per transaction than 2).
            max_inflight: 2,
            request_timeout_ms: 1_000,
            retransmit_ms: 200,
        }
    }
}

impl ConsensusParams {
    /// The replica configuration of peer `id`.
    pub fn replica_config(&self, genesis: &Genesis, id: ReplicaId) -> Config {
        Config {
            id,
            peers: genesis.peer_keys(),
            genesis: genesis.hash(),
            window: self.window,
            max_batch: self.max_batch,
            max_inflight: self.max_inflight,
            request_timeout_ms: self.request_timeout_ms,
            retransmit_ms: self.retransmit_ms,
        }
    }
}

/// One peer's configuration file (`peerN.toml`). Relative paths are relative to the file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct NodeConfig {
    /// Replica id.
    pub id: u32,
    /// The genesis file.
    pub genesis: PathBuf,
    /// The peer's key file (hex seed).
    pub key: PathBuf,
    /// Directory of the peer's redb store.
    pub data_dir: PathBuf,
    /// Address to serve the peer listener on (`host:port`, mutual TLS between genesis peers);
    /// defaults to the genesis address.
    pub listen: String,
    /// Address to serve the client listener on (`host:port`, TLS); defaults to the genesis
    /// client address.
    pub client_listen: String,
    /// Consensus parameters.
    pub consensus: ConsensusParams,
}

impl NodeConfig {
    /// Reads a config file and resolves its paths.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let mut cfg: Self =
            toml::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [&mut cfg.genesis, &mut cfg.key, &mut cfg.data_dir] {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks the values.
    pub fn validate(&self) -> Result<()> {
        if self.genesis.as_os_str().is_empty() || self.key.as_os_str().is_empty() {
            return Err(Error::Config("genesis and key paths are required".into()));
        }
        if self.consensus.max_inflight > self.consensus.window {
            return Err(Error::Config("max_inflight must not exceed window".into()));
        }
        Ok(())
    }

    /// The redb file.
    pub fn store_path(&self) -> PathBuf {
        self.data_dir.join("ledger.redb")
    }
}

/// Reads a genesis file.
pub fn read_genesis(path: &Path) -> Result<Genesis> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let g: Genesis = serde_json::from_str(&text)?;
    g.validate()?;
    Ok(g)
}

/// Creates `path` for writing, failing if it exists (`create_new`, so no other process can
/// slip a file or a symlink in between a check and the write), owner-only on Unix from the
/// first byte: a key is never readable by others, not even for a moment.
fn create_private(path: &Path) -> Result<std::fs::File> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    opts.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            Error::Config(format!(
                "{} already exists; refusing to overwrite it",
                path.display()
            ))
        } else {
            Error::io(path, e)
        }
    })
}

/// Reads a key file (64 hex characters).
pub fn read_key(path: &Path) -> Result<KeyPair> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let bytes = hex::decode(text.trim()).map_err(|e| Error::Invalid {
        what: "key file",
        reason: format!("{}: {e}", path.display()),
    })?;
    let seed: [u8; 32] = bytes.try_into().map_err(|_| Error::Invalid {
        what: "key file",
        reason: format!("{}: expected 32 bytes", path.display()),
    })?;
    Ok(KeyPair::from_seed(seed))
}

/// Writes a new file (never over an existing one), synced to disk.
fn write_new(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    let mut f = create_private(path)?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| Error::io(path, e))
}

fn write_key(path: &Path, key: &KeyPair) -> Result<()> {
    write_new(path, &format!("{}\n", hex::encode(key.seed())))
}

/// Creates a new identity key from the operating system's randomness and writes it to `path`
/// (owner-only permissions from creation). Refuses to overwrite an existing key.
pub fn new_key_file(path: &Path) -> Result<KeyPair> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let mut seed = [0u8; 32];
    StdRng::from_os_rng().fill(&mut seed);
    let key = KeyPair::from_seed(seed);
    write_key(path, &key)?;
    Ok(key)
}

/// Options of `emrflow ledger init`.
#[derive(Debug, Clone)]
pub struct InitOptions {
    /// Host of the peers' addresses.
    pub host: String,
    /// Port of peer 0's peer listener; peer `i` gets `base_port + i` for its peer listener and
    /// `base_port + peers + i` for its client listener.
    pub base_port: u16,
    /// Number of peers (`3f + 1`).
    pub peers: usize,
    /// Peer addresses from a template instead of `host` and `base_port`: `{i}` becomes the
    /// peer's index (`emrflow-ledger-{i}.emrflow-ledger:7400` names the pods of a Kubernetes
    /// StatefulSet). The client listener is on the same host at the next port. The peer
    /// configs then listen on every interface at those ports.
    pub address_template: Option<String>,
    /// Ledger name.
    pub chain_id: String,
    /// Name of the admin identity.
    pub admin_name: String,
    /// Consensus parameters written to every peer config.
    pub consensus: ConsensusParams,
}

impl Default for InitOptions {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            base_port: 7400,
            peers: DEFAULT_N,
            address_template: None,
            chain_id: "emrflow".into(),
            admin_name: "admin".into(),
            consensus: ConsensusParams::default(),
        }
    }
}

/// What `init` wrote.
#[derive(Debug, Clone, Serialize)]
pub struct InitOutput {
    /// `genesis.json`.
    pub genesis: PathBuf,
    /// The admin's key file.
    pub admin_key: PathBuf,
    /// One config per peer.
    pub configs: Vec<PathBuf>,
    /// The genesis hash (the ledger id).
    pub ledger_id: String,
}

/// Writes a new ledger into `out`: `genesis.json`, `admin.key`, and per peer `peerN.toml` and
/// `peerN/key`. Keys come from the operating system's randomness. Refuses to overwrite an
/// existing genesis.
pub fn init(out: &Path, opts: &InitOptions) -> Result<InitOutput> {
    let mut rng = StdRng::from_os_rng();
    let mut new_key = || {
        let mut seed = [0u8; 32];
        rng.fill(&mut seed);
        KeyPair::from_seed(seed)
    };
    init_with(out, opts, &mut new_key)
}

/// Where one peer is reached and listens.
struct Addresses {
    peer: String,
    client: String,
    listen: String,
    client_listen: String,
}

/// Each peer's addresses in the genesis and the addresses its config listens on.
fn peer_addresses(opts: &InitOptions) -> Result<Vec<Addresses>> {
    let n = opts.peers;
    let Some(template) = &opts.address_template else {
        let port = |k: usize| -> Result<u16> {
            u16::try_from(opts.base_port as usize + k).map_err(|_| {
                Error::Config(format!(
                    "--base-port {} leaves no room for {n} peers' two ports",
                    opts.base_port
                ))
            })
        };
        return (0..n)
            .map(|i| {
                let peer = format!("{}:{}", opts.host, port(i)?);
                let client = format!("{}:{}", opts.host, port(n + i)?);
                Ok(Addresses {
                    listen: peer.clone(),
                    client_listen: client.clone(),
                    peer,
                    client,
                })
            })
            .collect();
    };
    if !template.contains("{i}") {
        return Err(Error::Config(format!(
            "--peer-address-template {template:?} has no {{i}}: every peer would get the same address"
        )));
    }
    let (host, port) = template
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
        .ok_or_else(|| {
            Error::Config(format!(
                "--peer-address-template {template:?} must end in :PORT"
            ))
        })?;
    let client_port = port.checked_add(1).ok_or_else(|| {
        Error::Config(format!(
            "--peer-address-template {template:?}: no port after {port}"
        ))
    })?;
    Ok((0..n)
        .map(|i| {
            let host = host.replace("{i}", &i.to_string());
            Addresses {
                peer: format!("{host}:{port}"),
                client: format!("{host}:{client_port}"),
                listen: format!("0.0.0.0:{port}"),
                client_listen: format!("0.0.0.0:{client_port}"),
            }
        })
        .collect())
}

/// [`init`] with the keys supplied by `new_key` (deterministic in tests).
pub fn init_with(
    out: &Path,
    opts: &InitOptions,
    new_key: &mut dyn FnMut() -> KeyPair,
) -> Result<InitOutput> {
    let genesis_path = out.join("genesis.json");
    if !crate::ids::is_three_f_plus_one(opts.peers) {
        return Err(Error::Config(format!(
            "--peers {}: a ledger needs n = 3f + 1 peers (4, 7, 10, ...); any other number \
             tolerates no more faulty peers than the 3f + 1 below it",
            opts.peers
        )));
    }
    let addresses = peer_addresses(opts)?;
    // Nothing is written unless nothing would be overwritten: an existing ledger's keys are
    // never replaced, and a half-written directory is never left behind by a refusal.
    let admin_key = out.join("admin.key");
    let mut targets = vec![genesis_path.clone(), admin_key.clone()];
    for i in 0..opts.peers {
        targets.push(out.join(format!("peer{i}")).join("key"));
        targets.push(out.join(format!("peer{i}.toml")));
    }
    if let Some(existing) = targets.iter().find(|p| p.exists()) {
        return Err(Error::Config(format!(
            "{} already exists; refusing to overwrite a ledger",
            existing.display()
        )));
    }
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let admin = new_key();
    let keys: Vec<KeyPair> = (0..opts.peers).map(|_| new_key()).collect();
    let genesis = Genesis {
        chain_id: opts.chain_id.clone(),
        peers: keys
            .iter()
            .zip(&addresses)
            .enumerate()
            .map(|(i, (k, a))| PeerInfo {
                id: ReplicaId(i as u32),
                public_key: k.public(),
                address: a.peer.clone(),
                client_address: a.client.clone(),
            })
            .collect(),
        admin: admin.public(),
        admin_name: opts.admin_name.clone(),
    };
    genesis.validate()?;
    for i in 0..opts.peers {
        opts.consensus
            .replica_config(&genesis, ReplicaId(i as u32))
            .validate()?;
    }
    write_key(&admin_key, &admin)?;
    let mut configs = Vec::new();
    for ((i, k), a) in keys.iter().enumerate().zip(&addresses) {
        let dir = out.join(format!("peer{i}"));
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        write_key(&dir.join("key"), k)?;
        let cfg = NodeConfig {
            id: i as u32,
            genesis: PathBuf::from("genesis.json"),
            key: PathBuf::from(format!("peer{i}/key")),
            data_dir: PathBuf::from(format!("peer{i}")),
            listen: a.listen.clone(),
            client_listen: a.client_listen.clone(),
            consensus: opts.consensus.clone(),
        };
        let path = out.join(format!("peer{i}.toml"));
        let text = toml::to_string(&cfg).map_err(|e| Error::Config(e.to_string()))?;
        write_new(&path, &text)?;
        configs.push(path);
    }
    // The genesis last: its presence marks a complete ledger directory.
    write_new(&genesis_path, &serde_json::to_string_pretty(&genesis)?)?;
    Ok(InitOutput {
        genesis: genesis_path,
        admin_key,
        configs,
        ledger_id: genesis.hash().to_hex(),
    })
}

#[cfg(test)]
mod address_tests {
    use super::*;

    fn seeded() -> impl FnMut() -> KeyPair {
        let mut n = 0u8;
        move || {
            n += 1;
            KeyPair::from_seed([n; 32])
        }
    }

    #[test]
    fn a_template_names_each_peer_and_its_config_listens_on_every_interface() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let opts = InitOptions {
            address_template: Some("emrflow-ledger-{i}.emrflow-ledger:7400".into()),
            ..InitOptions::default()
        };
        init_with(dir.path(), &opts, &mut seeded()).unwrap_or_else(|e| panic!("{e}"));
        let genesis: Genesis = serde_json::from_str(
            &std::fs::read_to_string(dir.path().join("genesis.json")).unwrap_or_default(),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let addresses: Vec<&str> = genesis.peers.iter().map(|p| p.address.as_str()).collect();
        assert_eq!(
            addresses,
            [
                "emrflow-ledger-0.emrflow-ledger:7400",
                "emrflow-ledger-1.emrflow-ledger:7400",
                "emrflow-ledger-2.emrflow-ledger:7400",
                "emrflow-ledger-3.emrflow-ledger:7400"
            ]
        );
        let clients: Vec<&str> = genesis
            .peers
            .iter()
            .map(|p| p.client_address.as_str())
            .collect();
        assert_eq!(clients[3], "emrflow-ledger-3.emrflow-ledger:7401");
        let peer2 = std::fs::read_to_string(dir.path().join("peer2.toml")).unwrap_or_default();
        assert!(peer2.contains("listen = \"0.0.0.0:7400\""), "{peer2}");
        assert!(
            peer2.contains("client_listen = \"0.0.0.0:7401\""),
            "{peer2}"
        );
    }

    #[test]
    fn init_writes_private_keys_and_never_overwrites_a_ledger() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let out = init_with(dir.path(), &InitOptions::default(), &mut seeded())
            .unwrap_or_else(|e| panic!("{e}"));
        let genesis = read_genesis(&out.genesis).unwrap_or_else(|e| panic!("{e}"));
        // Peer listeners 7400..7403, client listeners 7404..7407.
        assert_eq!(genesis.peers[1].address, "127.0.0.1:7401");
        assert_eq!(genesis.peers[1].client_address, "127.0.0.1:7405");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for key in [out.admin_key.clone(), dir.path().join("peer3/key")] {
                let mode = std::fs::metadata(&key)
                    .map(|m| m.permissions().mode() & 0o777)
                    .unwrap_or(0);
                assert_eq!(mode, 0o600, "{}", key.display());
            }
        }
        let admin_before = std::fs::read(&out.admin_key).unwrap_or_default();
        // A second init into the same directory, even with the genesis gone, refuses and
        // leaves every key as it was.
        std::fs::remove_file(&out.genesis).unwrap_or_else(|e| panic!("{e}"));
        let e = init_with(dir.path(), &InitOptions::default(), &mut seeded())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("refusing to overwrite"), "{e}");
        assert_eq!(
            std::fs::read(&out.admin_key).unwrap_or_default(),
            admin_before
        );
        assert!(!out.genesis.exists());
        // A single identity key is never overwritten either.
        let e = new_key_file(&out.admin_key)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("refusing to overwrite"), "{e}");
    }

    #[test]
    fn init_refuses_a_peer_count_that_is_not_3f_plus_1() {
        for peers in [3, 5, 6, 8] {
            let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
            let opts = InitOptions {
                peers,
                ..InitOptions::default()
            };
            let e = init_with(dir.path(), &opts, &mut seeded())
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(e.contains("3f + 1"), "{peers}: {e}");
            assert!(std::fs::read_dir(dir.path()).map_or(0, Iterator::count) == 0);
        }
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let opts = InitOptions {
            peers: 7,
            ..InitOptions::default()
        };
        init_with(dir.path(), &opts, &mut seeded()).unwrap_or_else(|e| panic!("{e}"));
    }

    #[test]
    fn a_template_without_index_or_port_is_refused() {
        for bad in ["ledger:7400", "ledger-{i}", "ledger-{i}:port"] {
            let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
            let opts = InitOptions {
                address_template: Some(bad.into()),
                ..InitOptions::default()
            };
            let e = init_with(dir.path(), &opts, &mut seeded())
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(e.contains(bad), "{bad}: {e}");
            assert!(!dir.path().join("genesis.json").exists());
        }
    }
}
