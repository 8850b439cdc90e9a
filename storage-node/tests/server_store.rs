//! The storage server's client protocol over real QUIC with real RocksDB: stores are read back
//! from LogsDB; a bad checksum, a foreign copyset, a seal, a full disk and a full in-flight
//! budget each refuse the whole batch with the right answer and store nothing; amendments
//! change metadata only; many concurrent durable stores are all acknowledged and present;
//! metadata requests are served from the epoch store; the node registers and deregisters.

mod server_support;

use std::sync::Arc;

use server_support::*;
use tally_common::meta::{LogAttributes, StorageState};
use tally_common::transport::RequestContext;
use tally_common::wire::client::{ClientRequest, ClientResponse};
use tally_common::wire::node::{NodeRequest, NodeResponse};
use tally_common::wire::{ErrorCode, StoreStatus};
use tally_common::{Durability, Epoch, Esn, LogId, Lsn, NodeId, RecordFlags};
use tally_epochstore::EpochStore;
use tally_storage_node::logsdb::{LogsDb, LogsDbConfig, NodeIdentity, SystemClock};
use tally_storage_node::server::StorageNode;

fn store_result(resp: ClientResponse) -> StoreStatus {
    match resp {
        ClientResponse::StoreResult(s) => s,
        other => panic!("expected a store result, got {other:?}"),
    }
}

fn error_code(resp: ClientResponse) -> ErrorCode {
    match resp {
        ClientResponse::Error(e) => e.code,
        other => panic!("expected an error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_records_read_back_and_survive_a_clean_restart() {
    let fx = start(|_| {}).await;
    let client = fx.client();
    let log = LogId(7);
    let b = batch(log, 3, 1..=5);
    let resp = client
        .call(fx.addr, &ClientRequest::Store(b.clone()), T)
        .await
        .unwrap();
    assert_eq!(store_result(resp), StoreStatus::Stored);

    let got = fx.records(log);
    assert_eq!(got.len(), 5);
    for (r, sent) in got.iter().zip(&b.records) {
        assert_eq!(r.header.lsn, sent.lsn);
        assert_eq!(r.header.timestamp_ms, sent.timestamp_ms);
        assert_eq!(r.header.copyset, b.copyset);
        assert_eq!(r.header.wave_or_seal, 1);
        assert_eq!(r.payload, sent.payload);
    }
    // A store in epoch 3 raised the soft seal to 2.
    assert_eq!(fx.node.logsdb().log_meta(log).soft_seal, Epoch(2));

    // Registered while running, deregistered at shutdown; LogsDB closed cleanly.
    let nodes = fx.store.list_nodes().await.unwrap();
    assert_eq!(nodes.len(), 1);
    assert_eq!(nodes[0].id, ME);
    assert_eq!(nodes[0].address, fx.addr.to_string());
    assert!(nodes[0].roles.storage);
    assert_eq!(nodes[0].state, StorageState::ReadWrite);
    let (dir, store) = fx.stop().await;
    assert!(store.list_nodes().await.unwrap().is_empty());
    let db = LogsDb::open(
        dir.path().join("data"),
        &NodeIdentity::new("test-cluster", ME),
        LogsDbConfig::small_for_tests(),
        Arc::new(SystemClock),
    )
    .unwrap();
    assert!(!db.open_report().unclean_shutdown);
    let lsns: Vec<Lsn> = db
        .read(log, Lsn::OLDEST, Lsn::MAX)
        .map(|i| match i.unwrap() {
            tally_storage_node::ReadItem::Record(r) => r.header.lsn,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(lsns, (1..=5).map(|n| lsn(3, n)).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_checksum_refuses_the_whole_batch() {
    let fx = start(|_| {}).await;
    let client = fx.client();
    let log = LogId(8);
    let mut b = batch(log, 2, 1..=4);
    b.records[2].payload_crc32 ^= 1;
    let resp = client
        .call(fx.addr, &ClientRequest::Store(b), T)
        .await
        .unwrap();
    assert_eq!(
        store_result(resp),
        StoreStatus::ChecksumMismatch { lsn: lsn(2, 3) }
    );
    assert!(fx.records(log).is_empty(), "nothing of the batch is stored");
    // A flipped payload byte is caught the same way.
    let mut b = batch(log, 2, 1..=2);
    let mut flipped = b.records[0].payload.to_vec();
    flipped[0] ^= 0xff;
    b.records[0].payload = flipped.into();
    let resp = client
        .call(fx.addr, &ClientRequest::Store(b), T)
        .await
        .unwrap();
    assert_eq!(
        store_result(resp),
        StoreStatus::ChecksumMismatch { lsn: lsn(2, 1) }
    );
    assert!(fx.records(log).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stores_at_or_below_the_seal_or_soft_seal_are_preempted() {
    let fx = start(|_| {}).await;
    let client = fx.client();
    let peer = fx.peer();
    let log = LogId(9);
    let seal = NodeRequest::Seal {
        log,
        epoch: Epoch(5),
        sequencer: NodeId(9),
    };
    assert!(matches!(
        peer.call(fx.addr, &seal, T).await.unwrap(),
        NodeResponse::Sealed { seal: Epoch(5), .. }
    ));
    for epoch in [4, 5] {
        let resp = client
            .call(fx.addr, &ClientRequest::Store(batch(log, epoch, 1..=2)), T)
            .await
            .unwrap();
        assert_eq!(
            store_result(resp),
            StoreStatus::Preempted {
                seal: Epoch(5),
                sequencer: None
            }
        );
    }
    assert!(fx.records(log).is_empty());
    // Epoch 8 is above the seal; it raises the soft seal to 7, which preempts epoch 7.
    let resp = client
        .call(fx.addr, &ClientRequest::Store(batch(log, 8, 1..=1)), T)
        .await
        .unwrap();
    assert_eq!(store_result(resp), StoreStatus::Stored);
    let resp = client
        .call(fx.addr, &ClientRequest::Store(batch(log, 7, 1..=1)), T)
        .await
        .unwrap();
    assert_eq!(
        store_result(resp),
        StoreStatus::Preempted {
            seal: Epoch(7),
            sequencer: None
        }
    );
    let lsns: Vec<Lsn> = fx.records(log).iter().map(|r| r.header.lsn).collect();
    assert_eq!(lsns, vec![lsn(8, 1)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copyset_without_this_node_is_a_bad_request() {
    let fx = start(|_| {}).await;
    let client = fx.client();
    let log = LogId(10);
    let mut b = batch(log, 1, 1..=2);
    b.copyset = copyset(&[2, 3]);
    let resp = client
        .call(fx.addr, &ClientRequest::Store(b), T)
        .await
        .unwrap();
    assert_eq!(error_code(resp), ErrorCode::BadRequest);
    assert!(fx.records(log).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_in_flight_budget_answers_overloaded_at_once() {
    let fx = start(|c| {
        c.max_in_flight_store_bytes = 4096;
        c.max_in_flight_stores = 4;
    })
    .await;
    let client = fx.client();
    let log = LogId(11);
    // Hold the whole byte budget, as stores still waiting for their fsync would.
    let held = fx.node.admission().try_admit(usize::MAX).unwrap();
    assert_eq!(fx.node.admission().available_bytes(), 0);
    let resp = client
        .call(fx.addr, &ClientRequest::Store(batch(log, 1, 1..=3)), T)
        .await
        .unwrap();
    assert_eq!(store_result(resp), StoreStatus::Overloaded);
    assert!(fx.records(log).is_empty());
    drop(held);
    // Hold every request slot instead.
    let slots: Vec<_> = (0..4)
        .map(|_| fx.node.admission().try_admit(1).unwrap())
        .collect();
    let resp = client
        .call(fx.addr, &ClientRequest::Store(batch(log, 1, 1..=3)), T)
        .await
        .unwrap();
    assert_eq!(store_result(resp), StoreStatus::Overloaded);
    drop(slots);
    // With room again the same batch (larger than the budget: it runs alone) is stored, and
    // its permits come back once it is acknowledged.
    let resp = client
        .call(fx.addr, &ClientRequest::Store(batch(log, 1, 1..=40)), T)
        .await
        .unwrap();
    assert_eq!(store_result(resp), StoreStatus::Stored);
    assert_eq!(fx.records(log).len(), 40);
    assert_eq!(fx.node.admission().available_bytes(), 4096);
    assert_eq!(fx.node.admission().available_requests(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nearly_full_disk_answers_no_space() {
    let fx = start(|c| c.min_free_disk_bytes = u64::MAX).await;
    let client = fx.client();
    let log = LogId(12);
    let resp = client
        .call(fx.addr, &ClientRequest::Store(batch(log, 1, 1..=2)), T)
        .await
        .unwrap();
    assert_eq!(store_result(resp), StoreStatus::NoSpace);
    assert!(fx.records(log).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_amend_changes_the_copyset_and_keeps_the_payload() {
    let fx = start(|_| {}).await;
    let client = fx.client();
    let log = LogId(13);
    let first = batch(log, 2, 1..=3);
    let resp = client
        .call(fx.addr, &ClientRequest::Store(first.clone()), T)
        .await
        .unwrap();
    assert_eq!(store_result(resp), StoreStatus::Stored);
    let mut amend = batch(log, 2, 1..=3);
    amend.flags = RecordFlags::AMEND;
    amend.wave_or_seal = 2;
    amend.copyset = copyset(&[3, 1]);
    amend.durability = Durability::Fast;
    for r in &mut amend.records {
        r.payload.clear();
        r.payload_crc32 = 0;
    }
    let resp = client
        .call(fx.addr, &ClientRequest::Store(amend), T)
        .await
        .unwrap();
    assert_eq!(store_result(resp), StoreStatus::Stored);
    let got = fx.records(log);
    assert_eq!(got.len(), 3);
    for (r, sent) in got.iter().zip(&first.records) {
        assert_eq!(r.payload, sent.payload, "the payload is kept");
        assert_eq!(r.header.copyset, copyset(&[3, 1]), "the copyset is amended");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_durable_stores_are_all_acknowledged_and_present() {
    let fx = start(|_| {}).await;
    let client = Arc::new(fx.client());
    let mut tasks = Vec::new();
    for t in 0..16u64 {
        let (client, addr) = (client.clone(), fx.addr);
        tasks.push(tokio::spawn(async move {
            let log = LogId(100 + t % 4);
            // Four tasks share each log, on disjoint ESN ranges.
            let base = (t / 4) as u32 * 1000;
            for i in 0..10u32 {
                let esn = base + i * 5 + 1;
                let req = ClientRequest::Store(batch(log, 1, esn..=esn + 4));
                let resp = client.call(addr, &req, T).await.unwrap();
                assert_eq!(store_result(resp), StoreStatus::Stored);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    for l in 0..4u64 {
        let log = LogId(100 + l);
        let got = fx.records(log);
        let mut want: Vec<Lsn> = (0..4u32)
            .flat_map(|k| (1..=50).map(move |n| lsn(1, k * 1000 + n)))
            .collect();
        want.sort();
        assert_eq!(got.iter().map(|r| r.header.lsn).collect::<Vec<_>>(), want);
        for r in &got {
            assert_eq!(r.payload, payload_for(log, r.header.lsn));
        }
    }
    let stats = fx.node.logsdb().write_stats();
    assert!(
        stats.synced_replies >= 160,
        "every store waited for a sync: {stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_comes_from_the_epoch_store_and_other_roles_are_refused() {
    let fx = start(|_| {}).await;
    let client = fx.client();
    // Cluster state: this node, as registered (wait until the watch delivered it).
    let mut changes = fx.node.cluster().subscribe();
    changes
        .wait_for(|_| fx.node.cluster().snapshot().0.iter().any(|n| n.id == ME))
        .await
        .unwrap();
    match client
        .call(fx.addr, &ClientRequest::GetClusterState, T)
        .await
        .unwrap()
    {
        ClientResponse::ClusterState { nodes, version } => {
            assert!(version > 0);
            assert_eq!(nodes.len(), 1);
            assert_eq!(nodes[0].address, fx.addr.to_string());
        }
        other => panic!("unexpected {other:?}"),
    }
    let log = LogId(20);
    let resp = client
        .call(fx.addr, &ClientRequest::GetLogMetadata { log }, T)
        .await
        .unwrap();
    assert_eq!(error_code(resp), ErrorCode::NotFound);
    let attributes = LogAttributes {
        replication: 1,
        ..LogAttributes::default()
    };
    let created = fx.store.create_log(log, attributes).await.unwrap();
    let resp = client
        .call(fx.addr, &ClientRequest::GetLogMetadata { log }, T)
        .await
        .unwrap();
    assert_eq!(resp, ClientResponse::LogMetadata(created));

    // Sequencer requests are not storage's: `None` for composition, BadRequest on the wire.
    let seq = ClientRequest::Sequence {
        log,
        count: 1,
        no_redirect: false,
    };
    let ctx = RequestContext {
        peer: fx.addr,
        deadline: tokio::time::Instant::now() + T,
        shutdown: fx.shutdown.clone(),
    };
    assert!(!StorageNode::serves(&seq));
    assert!(StorageNode::serves(&ClientRequest::GetClusterState));
    assert!(fx.node.handle_client(ctx, seq.clone()).await.is_none());
    let resp = client.call(fx.addr, &seq, T).await.unwrap();
    assert_eq!(error_code(resp), ErrorCode::BadRequest);

    // Trim and time lookups.
    let resp = client
        .call(fx.addr, &ClientRequest::Store(batch(log, 1, 1..=10)), T)
        .await
        .unwrap();
    assert_eq!(store_result(resp), StoreStatus::Stored);
    let find = ClientRequest::FindTime {
        log,
        timestamp_ms: 1_700_000_000_000 + 4,
        accuracy: tally_common::wire::FindTimeAccuracy::Strict,
    };
    assert_eq!(
        client.call(fx.addr, &find, T).await.unwrap(),
        ClientResponse::FoundTime { lsn: lsn(1, 4) }
    );
    let size = ClientRequest::DataSize {
        log,
        from_ms: 0,
        until_ms: u64::MAX,
    };
    match client.call(fx.addr, &size, T).await.unwrap() {
        ClientResponse::DataSize { bytes } => assert!(bytes > 0),
        other => panic!("unexpected {other:?}"),
    }
    let trim = ClientRequest::Trim {
        log,
        upto: lsn(1, 6),
    };
    assert_eq!(
        client.call(fx.addr, &trim, T).await.unwrap(),
        ClientResponse::Trimmed {
            trim_point: lsn(1, 6)
        }
    );
    let stale = ClientRequest::Trim {
        log,
        upto: lsn(1, 2),
    };
    assert_eq!(
        client.call(fx.addr, &stale, T).await.unwrap(),
        ClientResponse::Trimmed {
            trim_point: lsn(1, 6)
        },
        "trim points never move back"
    );
    let left: Vec<Esn> = fx.records(log).iter().map(|r| r.header.lsn.esn()).collect();
    assert_eq!(left, (7..=10).map(Esn).collect::<Vec<_>>());
}

/// `StoreMany`: each batch is stored or refused as if it came alone — one stored, one with a
/// bad checksum, one below a seal, one for a copyset without this node — and answered in
/// order; only the good batch is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_many_answers_each_batch_as_if_alone() {
    let fx = start(|_| {}).await;
    let client = fx.client();
    let peer = fx.peer();
    let (good, corrupt, sealed, foreign) = (LogId(21), LogId(22), LogId(23), LogId(24));
    let seal = NodeRequest::Seal {
        log: sealed,
        epoch: Epoch(5),
        sequencer: NodeId(9),
    };
    assert!(matches!(
        peer.call(fx.addr, &seal, T).await.unwrap(),
        NodeResponse::Sealed { seal: Epoch(5), .. }
    ));
    let mut bad = batch(corrupt, 2, 1..=2);
    let mut flipped = bad.records[1].payload.to_vec();
    flipped[0] ^= 0xff;
    bad.records[1].payload = flipped.into();
    let mut elsewhere = batch(foreign, 2, 1..=2);
    elsewhere.copyset = tally_common::Copyset::new(vec![NodeId(7), NodeId(8)]).unwrap();
    let request = ClientRequest::StoreMany(vec![
        batch(good, 2, 1..=3),
        bad,
        batch(sealed, 4, 1..=2),
        elsewhere,
    ]);
    let answers = match client.call(fx.addr, &request, T).await.unwrap() {
        ClientResponse::StoreResults(answers) => answers,
        other => panic!("expected store results, got {other:?}"),
    };
    use tally_common::wire::client::StoreAnswer;
    assert_eq!(answers.len(), 4);
    assert_eq!(answers[0], StoreAnswer::Status(StoreStatus::Stored));
    assert_eq!(
        answers[1],
        StoreAnswer::Status(StoreStatus::ChecksumMismatch { lsn: lsn(2, 2) })
    );
    assert_eq!(
        answers[2],
        StoreAnswer::Status(StoreStatus::Preempted {
            seal: Epoch(5),
            sequencer: None
        })
    );
    assert!(
        matches!(&answers[3], StoreAnswer::Error(e) if e.code == ErrorCode::BadRequest),
        "{:?}",
        answers[3]
    );
    assert_eq!(fx.records(good).len(), 3);
    for log in [corrupt, sealed, foreign] {
        assert!(fx.records(log).is_empty(), "{log} stored nothing");
    }
    // Over the limits: refused whole, before any work.
    let too_many = ClientRequest::StoreMany(vec![batch(good, 2, 10..=10); 300]);
    match client.call(fx.addr, &too_many, T).await {
        Err(_) | Ok(ClientResponse::Error(_)) => {}
        Ok(other) => panic!("300 batches answered {other:?}"),
    }
    assert_eq!(fx.records(good).len(), 3);
    fx.stop().await;
}
