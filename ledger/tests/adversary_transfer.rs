//! State transfer under attack, step by step on the pure peers (no IO; the host runs the same
//! `Peer`): a peer left behind asks one peer for certified blocks, and gets forged bodies under
//! genuine certified headers, replies from peers it did not ask, blocks outside the heights it
//! asked, and replays of an earlier reply. Each is refused before anything executes (its chain
//! and contract state stay as they were, no local fault is recorded), and the genuine reply
//! brings it to the others' head.

use std::collections::VecDeque;

use ledger::chain::{CertifiedBlock, Genesis, PeerInfo};
use ledger::contracts::{Access, Call};
use ledger::crypto::{Digest, KeyPair};
use ledger::ids::{ReplicaId, SeqNo, Time};
use ledger::pbft::Config;
use ledger::peer::{Effect, Peer, PeerInput, Wire};
use ledger::tx::{SignedTx, TxBody};

struct Net {
    peers: Vec<Peer>,
    admin: KeyPair,
    now: u64,
    queue: VecDeque<(usize, usize, Wire)>,
    /// The peer left behind: nothing reaches it, and what it sends is kept for the test.
    behind: usize,
    from_behind: Vec<(usize, Wire)>,
}

impl Net {
    fn new() -> Self {
        let keys: Vec<KeyPair> = (0..4)
            .map(|i| KeyPair::from_label(&format!("transfer-{i}")))
            .collect();
        let admin = KeyPair::from_label("transfer-admin");
        let genesis = Genesis {
            chain_id: "transfer".into(),
            peers: keys
                .iter()
                .enumerate()
                .map(|(i, k)| PeerInfo {
                    id: ReplicaId(i as u32),
                    public_key: k.public(),
                    address: format!("peer{i}"),
                    client_address: format!("client{i}"),
                })
                .collect(),
            admin: admin.public(),
            admin_name: "admin".into(),
        };
        let mut cfg = Config::new(ReplicaId(0), genesis.peer_keys(), genesis.hash());
        cfg.window = 8;
        cfg.max_batch = 2;
        let peers = keys
            .into_iter()
            .enumerate()
            .map(|(i, k)| {
                Peer::new(
                    genesis.clone(),
                    Config {
                        id: ReplicaId(i as u32),
                        ..cfg.clone()
                    },
                    k,
                )
                .expect("peer")
            })
            .collect();
        Self {
            peers,
            admin,
            now: 1,
            queue: VecDeque::new(),
            behind: 3,
            from_behind: Vec::new(),
        }
    }

    fn input(&mut self, i: usize, input: PeerInput) {
        let effects = self.peers[i].handle(input);
        for e in effects {
            match e {
                Effect::Send { to, wire } => self.send(i, to.0 as usize, wire),
                Effect::Broadcast(wire) => {
                    for to in (0..4).filter(|t| *t != i) {
                        self.send(i, to, wire.clone());
                    }
                }
                _ => {}
            }
        }
    }

    fn send(&mut self, from: usize, to: usize, wire: Wire) {
        if from == self.behind {
            self.from_behind.push((to, wire));
        } else if to != self.behind {
            self.queue.push_back((from, to, wire));
        }
    }

    /// Delivers every queued message, ticking the clocks when the network is quiet.
    fn settle(&mut self, rounds: usize) {
        for _ in 0..rounds {
            while let Some((from, to, wire)) = self.queue.pop_front() {
                self.input(
                    to,
                    PeerInput::Wire {
                        from: ReplicaId(from as u32),
                        wire,
                    },
                );
            }
            self.now += 50;
            for i in 0..4 {
                self.input(i, PeerInput::Tick(Time(self.now)));
            }
        }
    }

    fn tx(&self, nonce: u64) -> SignedTx {
        SignedTx::sign(
            &self.admin,
            &TxBody {
                ledger: self.peers[0].chain().genesis_hash(),
                nonce,
                call: Call::RecordAccess {
                    subject: Digest::of(b"subject"),
                    access: Access::Read,
                    purpose: format!("transfer {nonce}"),
                },
            },
        )
        .expect("sign")
    }

    fn head(&self, i: usize) -> (SeqNo, Digest, usize) {
        let chain = self.peers[i].chain();
        (chain.height(), chain.head_hash(), chain.state().audit_len())
    }

    /// Hands the behind peer a message from `from` and returns what it sent back.
    fn deliver_to_behind(&mut self, from: usize, wire: Wire) -> Vec<(usize, Wire)> {
        let behind = self.behind;
        self.input(
            behind,
            PeerInput::Wire {
                from: ReplicaId(from as u32),
                wire,
            },
        );
        std::mem::take(&mut self.from_behind)
    }
}

fn fetch_of(sent: &[(usize, Wire)]) -> Option<(usize, SeqNo, SeqNo)> {
    sent.iter().find_map(|(to, w)| match w {
        Wire::FetchBlocks { from, to: upto } => Some((*to, *from, *upto)),
        _ => None,
    })
}

#[test]
fn a_lagging_peer_installs_only_the_certified_blocks_it_asked_for() {
    let mut net = Net::new();
    for nonce in 0..12 {
        let tx = net.tx(nonce);
        net.input((nonce % 3) as usize, PeerInput::Client(vec![tx]));
        net.settle(3);
    }
    net.settle(10);
    let (height, hash, _) = net.head(0);
    assert!(height >= SeqNo(6), "{height:?}");
    for i in 1..3 {
        assert_eq!(net.head(i).1, hash);
    }
    let genuine: Vec<CertifiedBlock> = net.peers[0].chain().certified_blocks(SeqNo(1), height);
    assert!(genuine.iter().all(|b| b.certificate.is_some()));
    let lagging = net.head(3);
    assert_eq!(lagging.0, SeqNo(0));

    // The behind peer sees the stable checkpoint (the others retransmit their proof) and asks
    // one of its signers for the blocks.
    let stable = net.peers[0].replica().stable_checkpoint().clone();
    let mut asked = None;
    for cp in stable.proof {
        let sent = net.deliver_to_behind(
            cp.from.0 as usize,
            Wire::Consensus(ledger::pbft::Message::Checkpoint(cp)),
        );
        asked = asked.or(fetch_of(&sent));
    }
    let (asked_peer, lo, hi) = asked.expect("the behind peer asks for blocks");
    assert_eq!(lo, SeqNo(1));
    let reply: Vec<CertifiedBlock> = genuine
        .iter()
        .filter(|b| b.block.header.height >= lo && b.block.header.height <= hi)
        .cloned()
        .collect();
    let other_peer = (0..3).find(|p| *p != asked_peer).expect("another peer");

    // 1. Genuine certified headers over other, validly signed transactions, from the peer
    // asked: refused before execution.
    let mut forged = reply.clone();
    let stranger_tx = net.tx(1_000);
    for cb in &mut forged {
        for tx in &mut cb.block.txs {
            *tx = stranger_tx.clone();
        }
    }
    let refused = net.peers[3].refused();
    let sent = net.deliver_to_behind(asked_peer, Wire::Blocks(forged));
    assert_eq!(
        net.head(3),
        lagging,
        "a forged body changed the lagging peer"
    );
    assert_eq!(net.peers[3].refused(), refused + 1);
    assert!(net.peers[3].faults().is_empty());

    // It asks again at once, the next signer in turn.
    let (asked_peer, lo, hi) = fetch_of(&sent).expect("asks again");
    let other_peer = if other_peer == asked_peer {
        (0..3).find(|p| *p != asked_peer).expect("another peer")
    } else {
        other_peer
    };

    // 2. The genuine blocks, but from a peer it did not ask: refused.
    net.deliver_to_behind(other_peer, Wire::Blocks(reply.clone()));
    assert_eq!(net.head(3), lagging, "an unrequested reply was installed");

    // 3. From the peer asked, but with a block outside the heights asked: refused whole.
    let mut outside = reply.clone();
    outside.extend(
        genuine
            .iter()
            .filter(|b| b.block.header.height > hi)
            .cloned(),
    );
    if outside.len() > reply.len() {
        net.deliver_to_behind(asked_peer, Wire::Blocks(outside));
        assert_eq!(
            net.head(3),
            lagging,
            "blocks outside the request were installed"
        );
        // The request is still open after a refused reply? It was refused before being
        // matched, so it is: the genuine answer below still comes from the asked peer.
    }

    // 4. The genuine reply from the peer asked: installed, re-executed, and the same head.
    net.deliver_to_behind(asked_peer, Wire::Blocks(reply.clone()));
    let installed = net.head(3);
    assert_eq!(
        installed.0,
        reply.last().map(|b| b.block.header.height).unwrap_or(lo)
    );
    assert_eq!(
        installed.1,
        net.peers[0]
            .chain()
            .block(installed.0)
            .map(|b| b.header.hash())
            .expect("block")
    );
    assert!(installed.0 >= lo);

    // 5. The same reply replayed: nothing changes.
    net.deliver_to_behind(asked_peer, Wire::Blocks(reply));
    assert_eq!(net.head(3), installed);
    assert!(net.peers[3].faults().is_empty());

    // Back on the network, the peer catches up with the others and the ledger commits on.
    net.behind = usize::MAX;
    let tx = net.tx(2_000);
    net.input(1, PeerInput::Client(vec![tx]));
    net.settle(40);
    let head = net.head(0);
    for i in 1..4 {
        assert_eq!(net.head(i).1, head.1, "peer {i} did not reach the head");
    }
    assert!(head.0 > height);
}
