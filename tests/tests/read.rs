//! The client's reader and admin calls against a real in-process cluster (storage nodes with
//! LogsDB, a sequencer, one epoch store) over QUIC: records read back identical and in order,
//! concurrent readers agree, a stopped node causes no false `DataLoss`, a record whose every
//! copy is gone is exactly one `DataLoss` gap, too few nodes is a reported stall that ends when
//! a node returns, trims become `Trim` gaps, following sees new appends, `find_time`,
//! `tail_lsn`, `is_log_empty` and `data_size` answer as the data says.
//!
//! Every test stays within one epoch (no sequencer failover). Every wait is for a condition
//! (a delivery, a stall report) under the harness deadline; nothing sleeps.

use tally_client::{
    AdminError, Client, Delivery, FindTimeAccuracy, GapKind, ReadFrom, ReadOptions, ReadUntil,
    Reader,
};
use tally_common::{LogId, Lsn};
use tally_tests::cluster::{ClusterSpec, TestCluster, WAIT};

const LOG: LogId = LogId(1);

/// Appends `n` records `"{tag}-{i}"`, in order; their LSNs and payloads.
async fn append_n(client: &Client, log: LogId, tag: &str, n: usize) -> Vec<(Lsn, Vec<u8>)> {
    let mut out = Vec::new();
    for i in 0..n {
        let payload = format!("{tag}-{i}").into_bytes();
        let lsn = client.append(log, payload.clone()).await.expect("append");
        out.push((lsn, payload));
    }
    out
}

/// Reads until the reader ends; panics on an error or if it does not end within `WAIT`.
async fn read_all(mut reader: Reader) -> Vec<Delivery> {
    let mut out = Vec::new();
    loop {
        match tokio::time::timeout(WAIT, reader.next()).await {
            Ok(Some(Ok(d))) => out.push(d),
            Ok(Some(Err(e))) => panic!("read failed: {e}"),
            Ok(None) => return out,
            Err(_) => panic!(
                "read did not end; stalled: {:?}; got {} deliveries",
                reader.stalled(),
                out.len()
            ),
        }
    }
}

/// The next delivery, within `WAIT`.
async fn next(reader: &mut Reader) -> Delivery {
    match tokio::time::timeout(WAIT, reader.next()).await {
        Ok(Some(Ok(d))) => d,
        other => panic!("no delivery: {other:?}; stalled: {:?}", reader.stalled()),
    }
}

/// Checks that deliveries cover `from ..= until` with no LSN missing or repeated.
fn assert_contiguous(deliveries: &[Delivery], from: Lsn, until: Lsn) {
    let mut expected = from;
    for d in deliveries {
        assert_eq!(d.from(), expected, "deliveries are contiguous: {d:?}");
        assert!(d.to() >= d.from());
        expected = d.to().next();
    }
    assert_eq!(expected, until.next(), "deliveries reach until");
}

fn records(deliveries: &[Delivery]) -> Vec<(Lsn, Vec<u8>)> {
    deliveries
        .iter()
        .filter_map(|d| match d {
            Delivery::Record(r) => Some((r.header.lsn, r.payload.clone())),
            Delivery::Gap { .. } => None,
        })
        .collect()
}

fn gaps(deliveries: &[Delivery], kind: GapKind) -> Vec<(Lsn, Lsn)> {
    deliveries
        .iter()
        .filter_map(|d| match d {
            Delivery::Gap { kind: k, from, to } if *k == kind => Some((*from, *to)),
            _ => None,
        })
        .collect()
}

fn upto(until: Lsn) -> ReadOptions {
    ReadOptions::range(ReadFrom::Oldest, ReadUntil::Lsn(until))
}

/// `(LSN, timestamp)` of every record delivered.
fn stamped(deliveries: &[Delivery]) -> Vec<(Lsn, u64)> {
    deliveries
        .iter()
        .filter_map(|d| match d {
            Delivery::Record(r) => Some((r.header.lsn, r.header.timestamp_ms)),
            Delivery::Gap { .. } => None,
        })
        .collect()
}

/// A strict `find_time` at the timestamp of record `i` of `stamped` answers the LSN after the
/// last record older than it (with none, at most the first record); returns the answer.
async fn check_strict_find_time(
    client: &Client,
    stamped: &[(Lsn, u64)],
    i: usize,
) -> anyhow::Result<Lsn> {
    let (lsn, ts) = stamped[i];
    let found = client.find_time(LOG, ts, FindTimeAccuracy::Strict).await?;
    match stamped.iter().rev().find(|(_, t)| *t < ts) {
        Some((older, _)) => assert_eq!(found, older.next(), "record {i} at {lsn}, time {ts}"),
        None => assert!(found <= stamped[0].0, "record {i} at {lsn}: {found}"),
    }
    Ok(found)
}

async fn cluster(storage: u32) -> anyhow::Result<(TestCluster, Client)> {
    let cluster = TestCluster::start(ClusterSpec::new(storage, 1)).await?;
    cluster.create_logs([LOG.0], 2).await?;
    let client = cluster.client().await?;
    Ok((cluster, client))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_read_back_identical_and_in_order() -> anyhow::Result<()> {
    let (cluster, client) = cluster(3).await?;
    let mut appended = append_n(&client, LOG, "a", 60).await;
    let batch: Vec<Vec<u8>> = (0..40).map(|i| format!("b-{i}").into_bytes()).collect();
    let lsns = client.append_batch(LOG, batch.clone()).await?;
    let mut lsn = *lsns.start();
    for payload in batch {
        appended.push((lsn, payload));
        lsn = lsn.next();
    }
    let last = appended.last().unwrap().0;

    // Single-copy (the default) and all-send-all deliver the same.
    for single_copy in [true, false] {
        let options = ReadOptions {
            single_copy,
            ..upto(last)
        };
        let reader = client.read(LOG, options).await?;
        assert_eq!((reader.from_lsn(), reader.until_lsn()), (Lsn::OLDEST, last));
        let got = read_all(reader).await;
        assert_contiguous(&got, Lsn::OLDEST, last);
        assert_eq!(records(&got), appended, "single_copy {single_copy}");
        for kind in [GapKind::DataLoss, GapKind::Trim, GapKind::Hole] {
            assert!(gaps(&got, kind).is_empty(), "no {kind:?} gap: {got:?}");
        }
    }

    // Everything read was released: the tail is at least the last record; reading to the
    // tail and the blocking iterator see the same records.
    let tail = client.tail_lsn(LOG).await?;
    assert!(tail >= last, "tail {tail} below {last}");
    let reader = client
        .read(LOG, ReadOptions::range(ReadFrom::Oldest, ReadUntil::Tail))
        .await?;
    assert_eq!(reader.until_lsn(), tail);
    let blocking = reader.blocking();
    let got =
        tokio::task::spawn_blocking(move || blocking.collect::<Result<Vec<_>, _>>()).await??;
    assert_eq!(records(&got), appended);

    // A read from the middle starts there.
    let middle = appended[50].0;
    let reader = client
        .read(
            LOG,
            ReadOptions::range(ReadFrom::Lsn(middle), ReadUntil::Lsn(last)),
        )
        .await?;
    let got = read_all(reader).await;
    assert_contiguous(&got, middle, last);
    assert_eq!(records(&got), appended[50..].to_vec());

    client.close().await;
    cluster.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_readers_agree() -> anyhow::Result<()> {
    let (cluster, client) = cluster(3).await?;
    let appended = append_n(&client, LOG, "c", 80).await;
    let last = appended.last().unwrap().0;
    let mut readers = tokio::task::JoinSet::new();
    for i in 0..4u64 {
        let client = client.clone();
        readers.spawn(async move {
            let options = ReadOptions {
                // Small windows and both delivery modes: many window slides.
                window: 4 + i * 7,
                single_copy: i % 2 == 0,
                ..upto(last)
            };
            read_all(client.read(LOG, options).await.expect("read")).await
        });
    }
    while let Some(got) = readers.join_next().await {
        let got = got?;
        assert_contiguous(&got, Lsn::OLDEST, last);
        assert_eq!(records(&got), appended);
    }
    client.close().await;
    cluster.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_node_is_no_data_loss() -> anyhow::Result<()> {
    let (mut cluster, client) = cluster(3).await?;
    let appended = append_n(&client, LOG, "d", 50).await;
    let last = appended.last().unwrap().0;
    let victim = cluster.storage_ids()[1];
    cluster.stop(victim).await?;
    for single_copy in [true, false] {
        let options = ReadOptions {
            single_copy,
            ..upto(last)
        };
        let got = read_all(client.read(LOG, options).await?).await;
        assert_contiguous(&got, Lsn::OLDEST, last);
        assert_eq!(records(&got), appended, "single_copy {single_copy}");
        assert!(gaps(&got, GapKind::DataLoss).is_empty(), "{got:?}");
    }
    client.close().await;
    cluster.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_few_nodes_is_a_stall_until_one_returns() -> anyhow::Result<()> {
    let (mut cluster, client) = cluster(3).await?;
    let appended = append_n(&client, LOG, "s", 30).await;
    let last = appended.last().unwrap().0;
    let ids = cluster.storage_ids();
    // Three nodes, R = 2: an f-majority is two nodes; with one left the reader cannot tell a
    // lost record from one it cannot see.
    cluster.stop(ids[0]).await?;
    cluster.stop(ids[1]).await?;
    let reader = client.read(LOG, upto(last)).await?;
    let mut stalls = reader.stall_updates();
    let stall = tokio::time::timeout(WAIT, stalls.wait_for(|s| s.is_some()))
        .await??
        .clone()
        .unwrap();
    assert!(stall.waiting_for.contains(&ids[0]) && stall.waiting_for.contains(&ids[1]));
    assert!(stall.at <= last);

    // Whatever the reader delivers meanwhile and after a node returns: every record, no gap
    // but the bridge before the first epoch.
    let collect = tokio::spawn(read_all(reader));
    cluster.restart(ids[0]).await?;
    let got = collect.await?;
    assert_contiguous(&got, Lsn::OLDEST, last);
    assert_eq!(records(&got), appended);
    assert!(gaps(&got, GapKind::DataLoss).is_empty(), "{got:?}");
    client.close().await;
    cluster.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_without_copies_is_exactly_one_data_loss() -> anyhow::Result<()> {
    let (cluster, client) = cluster(3).await?;
    let appended = append_n(&client, LOG, "l", 20).await;
    let last = appended.last().unwrap().0;
    // Released everywhere before the copies go (a read to the end proves it).
    read_all(client.read(LOG, upto(last)).await?).await;
    let lost = appended[7].0;
    for id in cluster.storage_ids() {
        cluster.logsdb(id).unwrap().remove_copy(LOG, lost).await?;
    }
    for single_copy in [true, false] {
        let options = ReadOptions {
            single_copy,
            ..upto(last)
        };
        let got = read_all(client.read(LOG, options).await?).await;
        assert_contiguous(&got, Lsn::OLDEST, last);
        assert_eq!(gaps(&got, GapKind::DataLoss), vec![(lost, lost)]);
        let mut expected = appended.clone();
        expected.remove(7);
        assert_eq!(records(&got), expected, "single_copy {single_copy}");
    }
    client.close().await;
    cluster.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trim_becomes_a_trim_gap() -> anyhow::Result<()> {
    let (cluster, client) = cluster(3).await?;
    let appended = append_n(&client, LOG, "t", 30).await;
    let last = appended.last().unwrap().0;
    read_all(client.read(LOG, upto(last)).await?).await;
    let tail = client.tail_lsn(LOG).await?;
    assert!(tail >= last);

    let trim_to = appended[9].0;
    client.trim(LOG, trim_to).await?;
    // Monotone: an older trim point changes nothing.
    client.trim(LOG, appended[3].0).await?;
    match client.trim(LOG, Lsn(tail.0 + 1)).await {
        Err(AdminError::TrimPastTail { upto, .. }) => assert_eq!(upto, Lsn(tail.0 + 1)),
        other => panic!("trim past the tail: {other:?}"),
    }

    let got = read_all(client.read(LOG, upto(last)).await?).await;
    assert_contiguous(&got, Lsn::OLDEST, last);
    let trims = gaps(&got, GapKind::Trim);
    assert_eq!(trims.len(), 1, "{got:?}");
    assert_eq!(trims[0].1, trim_to);
    assert_eq!(records(&got), appended[10..].to_vec());
    assert!(gaps(&got, GapKind::DataLoss).is_empty());
    assert!(!client.is_log_empty(LOG).await?);
    client.close().await;
    cluster.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn following_sees_records_appended_later() -> anyhow::Result<()> {
    let (cluster, client) = cluster(3).await?;
    cluster.create_logs([2], 2).await?;
    assert!(client.is_log_empty(LogId(2)).await?);
    let before = append_n(&client, LOG, "f", 5).await;
    let mut reader = client
        .read(
            LOG,
            ReadOptions::range(ReadFrom::Lsn(before[4].0.next()), ReadUntil::Forever),
        )
        .await?;
    assert_eq!(reader.until_lsn(), Lsn::MAX);
    let after = append_n(&client, LOG, "g", 10).await;
    let mut got = Vec::new();
    while got.len() < after.len() {
        if let Delivery::Record(r) = next(&mut reader).await {
            got.push((r.header.lsn, r.payload));
        }
    }
    assert_eq!(got, after);
    assert!(!client.is_log_empty(LOG).await?);
    // Dropping a following reader stops it; the client closes without waiting for it.
    drop(reader);
    tokio::time::timeout(WAIT, client.close()).await?;
    cluster.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn find_time_and_data_size_follow_the_data() -> anyhow::Result<()> {
    let (cluster, client) = cluster(3).await?;
    // Expected answers come from the timestamps the records got, whatever they are.
    let first = append_n(&client, LOG, "x", 10).await;
    let second = append_n(&client, LOG, "y", 10).await;
    let last = second.last().unwrap().0;
    let got = read_all(client.read(LOG, upto(last)).await?).await;
    let stamped = stamped(&got);
    assert_eq!(stamped.len(), first.len() + second.len());
    for (i, (_, ts)) in stamped.iter().enumerate() {
        let found = check_strict_find_time(&client, &stamped, i).await?;
        let approx = client
            .find_time(LOG, *ts, FindTimeAccuracy::Approximate)
            .await?;
        assert!(approx <= found, "approximate {approx} after strict {found}");
    }
    let after_all = stamped.last().unwrap().1 + 1;
    assert_eq!(
        client
            .find_time(LOG, after_all, FindTimeAccuracy::Strict)
            .await?,
        last.next()
    );
    assert!(client.find_time(LOG, 0, FindTimeAccuracy::Strict).await? <= stamped[0].0);

    // Reading from a time starts at its first record (records are at consecutive LSNs).
    let ts = stamped[12].1;
    let expected = stamped.iter().find(|(_, t)| *t >= ts).unwrap().0;
    let options = ReadOptions::range(ReadFrom::Time(ts), ReadUntil::Lsn(last));
    let reader = client.read(LOG, options).await?;
    let from = reader.from_lsn();
    let got = read_all(reader).await;
    assert_contiguous(&got, from, last);
    assert_eq!(records(&got).first().map(|(lsn, _)| *lsn), Some(expected));

    let size = client.data_size(LOG, 0, u64::MAX).await?;
    let payload_bytes: usize = first.iter().chain(&second).map(|(_, p)| p.len()).sum();
    assert!(
        size >= payload_bytes as u64,
        "data size {size} below payload bytes {payload_bytes}"
    );
    assert_eq!(client.data_size(LOG, 10, 10).await?, 0);
    match client.read(LOG, upto(Lsn::INVALID)).await {
        Err(tally_client::ReadError::EmptyRange { .. }) => {}
        other => panic!("empty range: {other:?}"),
    }
    match client.read(LogId(77), upto(last)).await {
        Err(tally_client::ReadError::LogNotFound { log }) => assert_eq!(log, LogId(77)),
        other => panic!("missing log: {other:?}"),
    }
    client.close().await;
    cluster.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_rides_through_a_node_stopping_and_returning() -> anyhow::Result<()> {
    let (mut cluster, client) = cluster(3).await?;
    let mut reader = client.read(LOG, ReadOptions::default()).await?;
    let mut expected = Vec::new();
    let mut got = Vec::new();
    let victim = cluster.storage_ids()[0];
    for (phase, tag) in ["before", "down", "back"].into_iter().enumerate() {
        match phase {
            1 => cluster.stop(victim).await?,
            2 => cluster.restart(victim).await?,
            _ => {}
        }
        let appended = append_n(&client, LOG, tag, 20).await;
        expected.extend(appended.iter().cloned());
        while got.len() < expected.len() {
            match next(&mut reader).await {
                Delivery::Record(r) => got.push((r.header.lsn, r.payload)),
                Delivery::Gap { kind, from, to } => {
                    assert!(
                        matches!(kind, GapKind::Bridge) && to < expected[0].0,
                        "unexpected gap {kind:?} {from}..={to} in phase {tag}"
                    );
                }
            }
        }
        assert_eq!(got, expected, "phase {tag}");
    }
    drop(reader);
    client.close().await;
    cluster.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn find_time_is_exact_across_partition_boundaries() -> anyhow::Result<()> {
    let (cluster, client) = cluster(3).await?;
    // Three groups of records, every storage node starting a new partition between groups, so
    // the answers for the first record of a group come from a partition boundary.
    let mut appended = Vec::new();
    for (g, tag) in ["p", "q", "r"].into_iter().enumerate() {
        if g > 0 {
            for id in cluster.storage_ids() {
                let db = cluster.logsdb(id).expect("storage node runs");
                tokio::task::block_in_place(|| db.roll_partition_blocking())?;
            }
        }
        appended.extend(append_n(&client, LOG, tag, 15).await);
    }
    // Every group has copies on R = 2 of the 3 nodes, so at least two nodes hold copies of
    // two groups or more, in as many partitions. (A node may miss whole groups: a client
    // graylists a node that answers slowly, as a loaded machine makes it.)
    let holdings: Vec<usize> = cluster
        .storage_ids()
        .into_iter()
        .map(|id| {
            cluster
                .logsdb(id)
                .expect("storage node runs")
                .directory(LOG)
                .len()
        })
        .collect();
    assert!(
        holdings.iter().filter(|h| **h >= 2).count() >= 2,
        "partitions holding the log, per node: {holdings:?}"
    );
    let last = appended.last().unwrap().0;
    let got = read_all(client.read(LOG, upto(last)).await?).await;
    let stamped = stamped(&got);
    assert_eq!(stamped.len(), appended.len());
    for i in 0..stamped.len() {
        check_strict_find_time(&client, &stamped, i).await?;
    }
    drop(client);
    cluster.shutdown().await
}
