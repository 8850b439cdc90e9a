//! The storage server's node protocol over real QUIC with real RocksDB: releases are
//! monotone, seals are durable and answer the node's state (or `Preempted`), `Clean` is
//! refused under a higher seal, recovery stores obey the recovery seal rule, and the digest
//! stream delivers an epoch's records past an ESN, in LSN order, in bounded messages.

mod server_support;

use server_support::*;
use tally_common::transport::TransportError;
use tally_common::wire::node::{NodeRequest, NodeResponse, Release};
use tally_common::wire::{ErrorCode, StoreStatus};
use tally_common::{Epoch, Esn, LogId, Lsn, NodeId, RecordFlags, StorageState};
use tally_epochstore::EpochStore as _;

const SEQ: NodeId = NodeId(9);

fn seal(log: LogId, epoch: u32) -> NodeRequest {
    NodeRequest::Seal {
        log,
        epoch: Epoch(epoch),
        sequencer: SEQ,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_and_monotone_release() {
    let fx = start(|_| {}).await;
    let peer = fx.peer();
    assert_eq!(
        peer.call(fx.addr, &NodeRequest::Ping, T).await.unwrap(),
        NodeResponse::Pong { node: ME }
    );
    let (a, b) = (LogId(1), LogId(2));
    let release = |lsn_a: Lsn, lsn_b: Lsn| NodeRequest::Release {
        sequencer: SEQ,
        releases: vec![
            Release {
                log: a,
                lsn: lsn_a,
                epoch: lsn_a.epoch(),
            },
            Release {
                log: b,
                lsn: lsn_b,
                epoch: lsn_b.epoch(),
            },
        ],
    };
    let resp = peer
        .call(fx.addr, &release(lsn(2, 10), lsn(1, 3)), T)
        .await
        .unwrap();
    assert_eq!(resp, NodeResponse::Ack);
    let resp = peer
        .call(fx.addr, &release(lsn(2, 4), lsn(1, 5)), T)
        .await
        .unwrap();
    assert_eq!(resp, NodeResponse::Ack);
    let db = fx.node.logsdb();
    assert_eq!(db.log_meta(a).last_released, lsn(2, 10), "never lowered");
    assert_eq!(db.log_meta(b).last_released, lsn(1, 5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seal_is_durable_and_answers_the_tail_of_the_sealed_range() {
    let fx = start(|_| {}).await;
    let client = fx.client();
    let peer = fx.peer();
    let log = LogId(3);
    // Epoch 3: ESNs 1..=4 with LNG 2; epoch 6 (after the seal) must not count as the tail.
    let mut b = batch(log, 3, 1..=4);
    b.lng = Esn(2);
    let store = tally_common::wire::client::ClientRequest::Store(b);
    client.call(fx.addr, &store, T).await.unwrap();
    let release = NodeRequest::Release {
        sequencer: SEQ,
        releases: vec![Release {
            log,
            lsn: lsn(3, 2),
            epoch: Epoch(3),
        }],
    };
    assert_eq!(
        peer.call(fx.addr, &release, T).await.unwrap(),
        NodeResponse::Ack
    );

    let want = NodeResponse::Sealed {
        seal: Epoch(4),
        lng: Esn(2),
        tail: lsn(3, 4),
        last_released: lsn(3, 2),
        data_loss: false,
    };
    assert_eq!(peer.call(fx.addr, &seal(log, 4), T).await.unwrap(), want);
    // Sealing at the same epoch again is answered the same way; below it is preempted.
    assert_eq!(peer.call(fx.addr, &seal(log, 4), T).await.unwrap(), want);
    assert_eq!(
        peer.call(fx.addr, &seal(log, 3), T).await.unwrap(),
        NodeResponse::Preempted { seal: Epoch(4) }
    );
    assert_eq!(fx.node.logsdb().log_meta(log).seal, Epoch(4));

    let later = tally_common::wire::client::ClientRequest::Store(batch(log, 6, 1..=2));
    client.call(fx.addr, &later, T).await.unwrap();
    match peer.call(fx.addr, &seal(log, 5), T).await.unwrap() {
        NodeResponse::Sealed {
            seal, tail, lng, ..
        } => {
            assert_eq!(seal, Epoch(5));
            assert_eq!(
                tail,
                lsn(3, 4),
                "records of epoch 6 are above the sealed range"
            );
            assert_eq!(lng, Esn(2), "the LNG is that of the tail's epoch");
        }
        other => panic!("unexpected {other:?}"),
    }
    // A log this node holds nothing of.
    match peer.call(fx.addr, &seal(LogId(4), 2), T).await.unwrap() {
        NodeResponse::Sealed { tail, lng, .. } => {
            assert_eq!((tail, lng), (Lsn::INVALID, Esn::INVALID));
        }
        other => panic!("unexpected {other:?}"),
    }
    // The seal survives a restart.
    let (dir, _store) = fx.stop().await;
    let db = tally_storage_node::LogsDb::open(
        dir.path().join("data"),
        &tally_storage_node::NodeIdentity::new("test-cluster", ME),
        tally_storage_node::LogsDbConfig::small_for_tests(),
        std::sync::Arc::new(tally_storage_node::SystemClock),
    )
    .unwrap();
    assert_eq!(db.log_meta(log).seal, Epoch(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_is_refused_under_a_higher_seal() {
    let fx = start(|_| {}).await;
    let peer = fx.peer();
    let log = LogId(5);
    peer.call(fx.addr, &seal(log, 7), T).await.unwrap();
    let clean = |seal: u32| NodeRequest::Clean {
        log,
        epoch: Epoch(5),
        seal: Epoch(seal),
        tail: lsn(5, 3),
    };
    assert_eq!(
        peer.call(fx.addr, &clean(6), T).await.unwrap(),
        NodeResponse::Preempted { seal: Epoch(7) }
    );
    assert_eq!(fx.node.logsdb().log_meta(log).last_clean_epoch, Epoch(0));
    assert_eq!(
        peer.call(fx.addr, &clean(7), T).await.unwrap(),
        NodeResponse::Ack
    );
    assert_eq!(fx.node.logsdb().log_meta(log).last_clean_epoch, Epoch(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_stores_obey_the_recovery_seal() {
    let fx = start(|_| {}).await;
    let peer = fx.peer();
    let log = LogId(6);
    peer.call(fx.addr, &seal(log, 7), T).await.unwrap();
    let recovery = |seal_epoch: u32| {
        let mut b = batch(log, 5, 1..=2);
        b.flags = RecordFlags::WRITTEN_BY_RECOVERY;
        b.wave_or_seal = seal_epoch;
        NodeRequest::Store(b)
    };
    assert_eq!(
        peer.call(fx.addr, &recovery(6), T).await.unwrap(),
        NodeResponse::StoreResult(StoreStatus::Preempted {
            seal: Epoch(7),
            sequencer: None
        })
    );
    assert!(fx.records(log).is_empty());
    assert_eq!(
        peer.call(fx.addr, &recovery(7), T).await.unwrap(),
        NodeResponse::StoreResult(StoreStatus::Stored)
    );
    let got = fx.records(log);
    assert_eq!(got.len(), 2);
    assert!(
        got[0]
            .header
            .flags
            .contains(RecordFlags::WRITTEN_BY_RECOVERY)
    );
    // A recovery store must name this node too.
    let mut b = batch(log, 5, 3..=3);
    b.flags = RecordFlags::WRITTEN_BY_RECOVERY;
    b.wave_or_seal = 7;
    b.copyset = copyset(&[2, 3]);
    match peer.call(fx.addr, &NodeRequest::Store(b), T).await.unwrap() {
        NodeResponse::Error(e) => assert_eq!(e.code, ErrorCode::BadRequest),
        other => panic!("unexpected {other:?}"),
    }
    // Trim over the node protocol.
    let trim = NodeRequest::Trim {
        log,
        upto: lsn(5, 1),
    };
    assert_eq!(
        peer.call(fx.addr, &trim, T).await.unwrap(),
        NodeResponse::Ack
    );
    assert_eq!(fx.node.logsdb().log_meta(log).trim_point, lsn(5, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn digest_streams_the_epoch_past_an_esn_in_bounded_messages() {
    // Payloads are 100..150 bytes: a 300-byte budget makes messages of at most three records.
    let fx = start(|c| c.digest_batch_bytes = 300).await;
    let client = fx.client();
    let peer = fx.peer();
    let log = LogId(7);
    for (epoch, esns) in [(2, 1..=3), (3, 1..=9), (4, 1..=2)] {
        let store = tally_common::wire::client::ClientRequest::Store(batch(log, epoch, esns));
        client.call(fx.addr, &store, T).await.unwrap();
    }
    let start_digest = NodeRequest::StartDigest {
        log,
        epoch: Epoch(3),
        after: Esn(2),
    };
    let mut stream = peer.open(fx.addr, &start_digest, T).await.unwrap();
    let mut got = Vec::new();
    let mut messages = 0;
    loop {
        match stream.next().await.unwrap() {
            Some(NodeResponse::DigestRecords(records)) => {
                assert!(!records.is_empty() && records.len() <= 3);
                messages += 1;
                got.extend(records);
            }
            Some(NodeResponse::DigestDone) => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(
        stream.next().await.unwrap().is_none(),
        "the stream ends after DigestDone"
    );
    assert!(messages >= 3);
    let lsns: Vec<Lsn> = got.iter().map(|r| r.header.lsn).collect();
    assert_eq!(lsns, (3..=9).map(|n| lsn(3, n)).collect::<Vec<_>>());
    for r in &got {
        assert_eq!(r.payload, payload_for(log, r.header.lsn));
    }

    // StartDigest as a unary request is refused with the reason.
    let err = peer.call(fx.addr, &start_digest, T).await.unwrap();
    assert!(matches!(err, NodeResponse::Error(e) if e.code == ErrorCode::BadRequest));
    // Other requests cannot open streams.
    let mut s = peer.open(fx.addr, &NodeRequest::Ping, T).await.unwrap();
    assert!(matches!(
        s.next().await,
        Err(TransportError::Remote(e)) if e.code == ErrorCode::BadRequest
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_past_their_deadline_do_no_work() {
    use tally_common::transport::{NodeProtocol, RequestContext, Service};
    use tally_common::wire::client::{ClientRequest, ClientResponse};
    let fx = start(|_| {}).await;
    let log = LogId(8);
    // The deadline is now: the caller has given up by the time the handler looks.
    let ctx = RequestContext {
        peer: fx.addr,
        deadline: tokio::time::Instant::now(),
        shutdown: fx.shutdown.clone(),
    };
    let node = &*fx.node;
    let resp = Service::<NodeProtocol>::call(node, ctx.clone(), seal(log, 3)).await;
    assert!(matches!(resp, NodeResponse::Error(e) if e.code == ErrorCode::Timeout));
    assert_eq!(fx.node.logsdb().log_meta(log).seal, Epoch(0));
    let store = ClientRequest::Store(batch(log, 1, 1..=2));
    let resp = fx.node.handle_client(ctx, store).await;
    assert!(matches!(resp, Some(ClientResponse::Error(e)) if e.code == ErrorCode::Timeout));
    assert!(fx.records(log).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn digest_sends_a_corrupt_copy_as_evidence_not_as_data_or_nothing() {
    let fx = start(|_| {}).await;
    let log = LogId(9);
    let store = tally_common::wire::client::ClientRequest::Store(batch(log, 3, 1..=4));
    fx.client().call(fx.addr, &store, T).await.unwrap();
    let (dir, store) = fx.stop().await;

    // Flip one payload byte of e3n2 behind LogsDB's back.
    {
        use tally_storage_node::logsdb::Db;
        let db_path = dir.path().join("data").join("db");
        let opts = rocksdb::Options::default();
        let cfs = Db::list_cf(&opts, &db_path).unwrap();
        let raw = Db::open_cf(&opts, &db_path, &cfs).unwrap();
        let mut key = vec![b'd'];
        key.extend_from_slice(&log.to_be_bytes());
        key.extend_from_slice(&lsn(3, 2).to_be_bytes());
        let (cf, mut value) = cfs
            .iter()
            .filter(|name| name.starts_with('p'))
            .find_map(|name| {
                let cf = raw.cf_handle(name)?;
                raw.get_cf(&cf, &key).unwrap().map(|v| (name.clone(), v))
            })
            .expect("e3n2 is stored in some partition");
        let at = value.len() - 10;
        value[at] ^= 0x01;
        raw.put_cf(&raw.cf_handle(&cf).unwrap(), &key, &value)
            .unwrap();
    }

    let fx = restart(dir, store, |_| {}).await;
    let start_digest = NodeRequest::StartDigest {
        log,
        epoch: Epoch(3),
        after: Esn(0),
    };
    let mut stream = fx.peer().open(fx.addr, &start_digest, T).await.unwrap();
    let mut got = Vec::new();
    loop {
        match stream.next().await.unwrap() {
            Some(NodeResponse::DigestRecords(records)) => got.extend(records),
            Some(NodeResponse::DigestDone) => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    let lsns: Vec<Lsn> = got.iter().map(|r| r.header.lsn).collect();
    assert_eq!(lsns, (1..=4).map(|n| lsn(3, n)).collect::<Vec<_>>());
    let damaged = &got[1];
    assert_eq!(damaged.header.flags, RecordFlags::AMEND, "evidence only");
    assert!(damaged.payload.is_empty());
    for r in [&got[0], &got[2], &got[3]] {
        assert_eq!(r.payload, payload_for(log, r.header.lsn));
    }
}

/// DESIGN §7: a node back on another data directory than the one its id stored records in
/// (wiped, replaced) cannot vouch for that id's data. It registers as `DataLoss`, says so in
/// every seal, and stays so on every restart on that directory; with the original directory
/// back it is read-write again, its records intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_data_directory_registers_as_data_loss_until_the_original_is_back() {
    let fx = start(|_| {}).await;
    let log = LogId(5);
    let store_req = tally_common::wire::client::ClientRequest::Store(batch(log, 1, 1..=3));
    fx.client().call(fx.addr, &store_req, T).await.unwrap();
    assert_eq!(fx.node.storage_state(), StorageState::ReadWrite);
    assert_eq!(fx.node.replaced_data_dir(), None);
    let bound = fx.node.logsdb().data_dir_id();
    let (mut dir, mut store) = fx.stop().await;

    // Wiped: the directory is moved aside (kept, to be brought back), the node starts empty.
    let data = dir.path().join("data");
    let kept = dir.path().join("data.kept");
    std::fs::rename(&data, &kept).unwrap();
    for round in 0..2 {
        let fx = restart(dir, store, |_| {}).await;
        assert_ne!(fx.node.logsdb().data_dir_id(), bound);
        assert_eq!(fx.node.replaced_data_dir(), Some(bound), "round {round}");
        assert_eq!(fx.node.storage_state(), StorageState::DataLoss);
        let registered = fx.store.list_nodes().await.unwrap();
        assert_eq!(registered.len(), 1);
        assert_eq!(registered[0].state, StorageState::DataLoss, "round {round}");
        match fx.peer().call(fx.addr, &seal(log, 2), T).await.unwrap() {
            NodeResponse::Sealed { data_loss, .. } => assert!(data_loss, "round {round}"),
            other => panic!("seal answered {other:?}"),
        }
        (dir, store) = fx.stop().await;
    }

    // The original directory is back: the node is what it was.
    std::fs::remove_dir_all(&data).unwrap();
    std::fs::rename(&kept, &data).unwrap();
    let fx = restart(dir, store, |_| {}).await;
    assert_eq!(fx.node.logsdb().data_dir_id(), bound);
    assert_eq!(fx.node.replaced_data_dir(), None);
    assert_eq!(fx.node.storage_state(), StorageState::ReadWrite);
    assert_eq!(
        fx.store.list_nodes().await.unwrap()[0].state,
        StorageState::ReadWrite
    );
    assert_eq!(fx.records(log).len(), 3);
    fx.stop().await;
}
