//! Outsiders on the network against four real peers on 127.0.0.1 (TLS listeners, real
//! sockets): a client posing as a peer, oversized transactions, unsigned, forged and
//! wrong-role queries, and transactions from unknown signers. Each attack is refused, every
//! peer's state is unchanged by it, and the ledger still commits.
#![cfg(feature = "net")]

mod support;

use std::time::Duration;

use ledger::chain::QueryResult;
use ledger::client::{Client, Reader};
use ledger::contracts::{Access, AnchorKind, AnchorSpec, Call, Query, Role};
use ledger::crypto::{Digest, KeyPair};
use ledger::ids::{SeqNo, Time};
use ledger::peer::Wire;
use ledger::proto::peer_client::PeerClient;
use ledger::proto::{Envelope, QueryRequest, SubmitRequest};
use ledger::tx::{MAX_TX_BYTES, SignedTx, TxBody};
use support::{Cluster, peer_channel};
use tonic::codegen::tokio_stream;

/// Sends one peer message to `to`'s peer listener presenting `key`; the error the listener
/// answers with, if any.
async fn push_as(c: &Cluster, key: &KeyPair, to: usize, wire: &Wire) -> Result<(), String> {
    let peer = &c.genesis.peers[to];
    let channel = peer_channel(key, peer.public_key, &peer.address).await?;
    let body = ledger::codec::encode(wire).map_err(|e| e.to_string())?;
    let envelopes = tokio_stream::iter(vec![Envelope { body: body.into() }]);
    PeerClient::new(channel)
        .deliver(envelopes)
        .await
        .map(|_| ())
        .map_err(|s| format!("{s:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_posing_as_a_peer_is_refused_before_any_message_is_decoded() {
    let c = Cluster::start(&[0, 1, 2, 3]).await;
    c.commits(0, "before").await;
    let before = c.settled_heads(&[0, 1, 2, 3]).await;

    // What an impostor would push: a block nobody asked for, and a request to send us blocks.
    let stolen = c.head(1).await.expect("head");
    assert_eq!(stolen, before);
    let bait = Wire::FetchBlocks {
        from: SeqNo(1),
        to: SeqNo(64),
    };

    // 1. An outsider's own key, and 2. the ledger's admin key (a client identity, not a peer):
    // the handshake fails, so the stream never carries a message.
    let outsider = KeyPair::from_label("outsider");
    for key in [&outsider, &c.admin] {
        let e = push_as(&c, key, 1, &bait)
            .await
            .expect_err("a non-peer key must be refused");
        assert!(!e.is_empty());
    }

    // 3. Plain HTTP/2 without TLS on the peer listener: refused too.
    let addr = c.genesis.peers[2].address.clone();
    let plain = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await;
    if let Ok(channel) = plain {
        let body = ledger::codec::encode(&bait).expect("encode");
        let r = PeerClient::new(channel)
            .deliver(tokio_stream::iter(vec![Envelope { body: body.into() }]))
            .await;
        assert!(r.is_err(), "plaintext accepted: {r:?}");
    }

    // 4. A peer's key on the client listener is no way in either: it serves only `Ledger`.
    let client_addr = c.genesis.peers[3].client_address.clone();
    let wrong_door =
        peer_channel(&c.peer_key(0), c.genesis.peers[3].public_key, &client_addr).await;
    if let Ok(channel) = wrong_door {
        let body = ledger::codec::encode(&bait).expect("encode");
        let r = PeerClient::new(channel)
            .deliver(tokio_stream::iter(vec![Envelope { body: body.into() }]))
            .await;
        assert!(
            r.is_err(),
            "the client listener served the peer service: {r:?}"
        );
    }

    // 5. A client dialing a peer's client listener with the wrong expected key (a spoofed
    // address answering with another key) fails: the server is authenticated by its genesis
    // key.
    let mut spoofed = c.genesis.clone();
    spoofed.peers[0].client_address = c.genesis.peers[1].client_address.clone();
    let confused = ledger::transport::RemoteLedger::new(spoofed)
        .expect("client")
        .with_peers(&[0])
        .with_timeout(Duration::from_secs(5));
    let q = Reader::new(&confused, c.admin.clone())
        .sign(Query::Head)
        .expect("sign");
    assert!(confused.query_peer(0, &q).await.is_err());

    // Nothing changed on any peer, and the ledger still commits.
    assert_eq!(c.settled_heads(&[0, 1, 2, 3]).await, before);
    c.commits(2, "after impostors").await;
}

fn anchor(root: Digest) -> Call {
    Call::Anchor(AnchorSpec {
        kind: AnchorKind::Dataset,
        root,
        row_count: 1,
        schema_hash: Digest::of(b"schema"),
        location: "file:///data".into(),
        parents: vec![],
        stage: "test".into(),
        params_hash: Digest::of(b"params"),
        code_version: "test".into(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_unregistered_transactions_are_refused_before_ordering() {
    let c = Cluster::start(&[0, 1, 2, 3]).await;
    c.commits(1, "before").await;
    let before = c.settled_heads(&[0, 1, 2, 3]).await;
    let ledger_id = c.genesis.hash();

    // Just over the transaction limit (decodes, but is refused by every peer's shape check).
    let over = SignedTx::sign(
        &c.admin,
        &TxBody {
            ledger: ledger_id,
            nonce: 1,
            call: Call::RecordAccess {
                subject: Digest::of(b"s"),
                access: Access::Read,
                purpose: "x".repeat(MAX_TX_BYTES),
            },
        },
    )
    .expect("sign");
    let e = c
        .remote
        .submit_from(&over, 0)
        .await
        .expect_err("oversized transaction accepted");
    assert!(e.to_string().contains("limit"), "{e}");

    // Far over: the client listener does not even decode it.
    let mut huge = over.clone();
    huge.payload = vec![0; 4 * MAX_TX_BYTES];
    let body = ledger::codec::encode(&huge).expect("encode");
    let channel = tonic::transport::Endpoint::from_shared("http://unused")
        .expect("endpoint")
        .connect_with_connector_lazy(ledger::tls::Dialer::new(
            ledger::tls::ledger_client_config(c.genesis.peers[2].public_key).expect("tls"),
            c.genesis.peers[2].client_address.clone(),
        ));
    let r = ledger::proto::ledger_client::LedgerClient::new(channel)
        .max_encoding_message_size(8 * MAX_TX_BYTES)
        .submit(SubmitRequest {
            transaction: body.into(),
        })
        .await;
    let status = r.expect_err("a message over the decoding limit was decoded");
    assert!(
        matches!(
            status.code(),
            tonic::Code::OutOfRange | tonic::Code::ResourceExhausted | tonic::Code::Internal
        ),
        "{status:?}"
    );

    // A strange signer: refused once the peer gives up waiting for its registration.
    let stranger = KeyPair::from_label("stranger");
    let e = Client::new(&c.remote, stranger)
        .call(anchor(Digest::of(b"stranger's root")))
        .await
        .expect_err("an unregistered signer's transaction was ordered");
    assert!(e.to_string().contains("unknown or revoked identity"), "{e}");

    // None of it reached a block or the audit trail.
    assert_eq!(c.settled_heads(&[0, 1, 2, 3]).await, before);
    c.commits(3, "after oversized").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsigned_forged_and_wrong_role_queries_are_refused() {
    let c = Cluster::start(&[0, 1, 2, 3]).await;
    let admin = Client::new(&c.remote, c.admin.clone());
    let etl = KeyPair::from_label("etl");
    let doctor = KeyPair::from_label("doctor");
    let auditor = KeyPair::from_label("auditor");
    for (k, name, role) in [
        (&etl, "etl", Role::DataEngineer),
        (&doctor, "doctor", Role::Clinician),
        (&auditor, "auditor", Role::Compliance),
    ] {
        let r = admin
            .register(k.public(), name, role)
            .await
            .expect("register");
        assert!(r.outcome.is_accepted());
    }
    let root = Digest::of(b"dataset");
    let r = Client::new(&c.remote, etl.clone())
        .call(anchor(root))
        .await
        .expect("anchor");
    assert!(r.outcome.is_accepted());
    let r = Client::new(&c.remote, doctor.clone())
        .record_access(root, Access::Read, "care")
        .await
        .expect("access");
    assert!(!r.outcome.is_accepted(), "no grant yet");
    let before = c.settled_heads(&[0, 1, 2, 3]).await;
    let audit = |subject| Query::Audit {
        subject,
        actor: None,
        from: Time(0),
        to: Time(u64::MAX),
    };

    // Unsigned: a bare query, as clients sent before, does not even decode as a signed one.
    let bare = ledger::codec::encode(&audit(None)).expect("encode");
    let channel = tonic::transport::Endpoint::from_shared("http://unused")
        .expect("endpoint")
        .connect_with_connector_lazy(ledger::tls::Dialer::new(
            ledger::tls::ledger_client_config(c.genesis.peers[0].public_key).expect("tls"),
            c.genesis.peers[0].client_address.clone(),
        ));
    let status = ledger::proto::ledger_client::LedgerClient::new(channel)
        .query(QueryRequest { query: bare.into() })
        .await
        .expect_err("an unsigned query was answered");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");

    // Forged: the auditor's query with the signer swapped for the doctor's key.
    let mut forged = Reader::new(&c.remote, auditor.clone())
        .sign(audit(None))
        .expect("sign");
    forged.signer = doctor.public();
    let e = c
        .remote
        .query_peer(1, &forged)
        .await
        .expect_err("forged query answered");
    assert!(format!("{e:?}").contains("InvalidArgument"), "{e:?}");

    // Wrong role: the data engineer, the clinician and the admin may not read the whole
    // trail; the clinician may not read the trail of a subject it does not own; a stranger
    // may not ask anything.
    for (who, q) in [
        (&etl, audit(None)),
        (&doctor, audit(None)),
        (&c.admin, audit(None)),
        (&doctor, audit(Some(root))),
        (&KeyPair::from_label("stranger"), Query::Head),
    ] {
        let e = Reader::new(&c.remote, who.clone())
            .ask(q.clone())
            .await
            .expect_err("a query the role does not allow was answered");
        assert!(
            format!("{e:?}").contains("PermissionDenied"),
            "{q:?}: {e:?}"
        );
    }

    // The right roles get their answers: compliance everything, the owner its subject.
    let all = Reader::new(&c.remote, auditor.clone())
        .audit(None, None, Time(0), Time(u64::MAX))
        .await
        .expect("compliance reads the trail");
    assert!(all.len() >= 5, "{}", all.len());
    let own = Reader::new(&c.remote, etl.clone())
        .audit(Some(root), None, Time(0), Time(u64::MAX))
        .await
        .expect("the owner reads its subject's trail");
    assert!(own.iter().any(|e| e.actor == doctor.public()));
    // An anchor the client acts on is proven by its receipt.
    let record = Reader::new(&c.remote, doctor.clone())
        .anchor_of(root)
        .await
        .expect("anchor")
        .expect("anchored");
    assert_eq!(record.signer, etl.public());
    assert!(
        Reader::new(&c.remote, doctor.clone())
            .anchor_of(Digest::of(b"never anchored"))
            .await
            .expect("absence confirmed by f + 1 peers")
            .is_none()
    );

    // Queries change nothing, and the ledger still commits.
    assert_eq!(c.settled_heads(&[0, 1, 2, 3]).await, before);
    match Reader::new(&c.remote, auditor)
        .ask(Query::Head)
        .await
        .expect("head")
    {
        QueryResult::Head(h) => assert_eq!(h, before),
        other => panic!("{other:?}"),
    }
    c.commits(0, "after queries").await;
}
