//! etcd killed with SIGKILL in the middle of a run and restarted on the same data
//! directory: calls fail with a retryable typed error within their deadline while it is
//! down (no hang, no panic), resume once it is back, and no epoch regresses or repeats.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tally_common::ids::{Epoch, LogId, Lsn, NodeId};
use tally_epochstore::conformance::{small_attributes, storage_node};
use tally_epochstore::harness::EtcdHarness;
use tally_epochstore::{ActivateOptions, EpochStore, EtcdStore, MembershipEvent};
use tokio::time::Instant;

const CALL_TIMEOUT: Duration = Duration::from_millis(1500);
/// Scheduling slack on top of a call's deadline on a busy 2-core machine.
const SLACK: Duration = Duration::from_millis(500);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn etcd_sigkill_and_restart() {
    let mut etcd = EtcdHarness::start().await.expect("start etcd");
    let mut config = etcd.config("faults");
    config.call_timeout = CALL_TIMEOUT;
    config.request_timeout = Duration::from_millis(500);
    config.connect_timeout = Duration::from_millis(300);
    config.keep_alive_interval = Duration::from_millis(500);
    config.keep_alive_timeout = Duration::from_millis(500);
    let store = Arc::new(EtcdStore::connect(config).await.expect("connect"));

    let mut leases = Vec::new();
    for id in 1..=3 {
        let lease = store
            .register_node(storage_node(id), Duration::from_secs(30))
            .await;
        leases.push(lease.expect("register"));
    }
    let mut watch = store.watch_nodes().await.expect("watch");
    let log = LogId(1);
    store
        .create_log(log, small_attributes())
        .await
        .expect("create log");

    // A background sequencer activating in a loop across the crash.
    let stop = Arc::new(AtomicBool::new(false));
    let activator = {
        let (store, stop) = (store.clone(), stop.clone());
        tokio::spawn(async move {
            let mut granted = Vec::new();
            let mut failures = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                match store.activate(log, ActivateOptions::default()).await {
                    Ok(a) => granted.push(a.epoch),
                    Err(e) => {
                        assert!(
                            e.is_retryable(),
                            "non-retryable error while etcd is down: {e}"
                        );
                        failures += 1;
                    }
                }
                let took = started.elapsed();
                assert!(took <= CALL_TIMEOUT + SLACK, "activation took {took:?}");
            }
            (granted, failures)
        })
    };
    // Wait until the loop has made progress, then kill etcd under it.
    let meta = wait_for_epoch(&*store, log, Epoch(20)).await;
    let before_kill = meta.current_epoch();
    etcd.kill();

    // Every kind of call fails fast with a retryable typed error (run together: each is
    // bounded by its own deadline).
    let started = Instant::now();
    let lease_ttl = Duration::from_secs(5);
    let (a, b, c, d, e, f, g) = tokio::join!(
        store.activate(log, ActivateOptions::default()),
        store.get_log(log),
        store.set_last_clean_epoch(log, Epoch(1), Lsn::INVALID, None),
        store.list_logs(),
        store.list_nodes(),
        store.create_log(LogId(2), small_attributes()),
        store.register_node(storage_node(9), lease_ttl),
    );
    let took = started.elapsed();
    let errors = [
        a.err(),
        b.err(),
        c.err(),
        d.err(),
        e.err(),
        f.err(),
        g.err(),
    ];
    for (i, e) in errors.into_iter().enumerate() {
        let e = e.unwrap_or_else(|| panic!("call {i} succeeded with etcd down"));
        assert!(e.is_retryable(), "call {i}: not retryable: {e}");
    }
    assert!(
        took <= CALL_TIMEOUT + SLACK,
        "calls with etcd down took {took:?}"
    );

    etcd.restart().await.expect("restart etcd");
    // Resumes: the background loop gets new epochs above everything before the crash.
    let resumed = wait_for_epoch(&*store, log, Epoch(before_kill.0 + 10)).await;
    stop.store(true, Ordering::Relaxed);
    let (granted, failures) = activator.await.expect("activator task");
    assert!(failures > 0, "the activator never saw etcd down");
    for pair in granted.windows(2) {
        assert!(pair[0] < pair[1], "epoch regressed or repeated: {:?}", pair);
    }
    let last = *granted.last().expect("granted epochs");
    let meta = store.get_log(log).await.expect("get log after restart");
    assert!(meta.next_epoch > last && meta.current_epoch() >= resumed.current_epoch());

    // Membership survived (leases outlive a short outage) and the watch resumed.
    let nodes = store.list_nodes().await.expect("list nodes");
    assert_eq!(
        nodes.iter().map(|n| n.id).collect::<Vec<_>>(),
        vec![NodeId(1), NodeId(2), NodeId(3)]
    );
    let _lease9 = store
        .register_node(storage_node(9), Duration::from_secs(5))
        .await
        .expect("register 9");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, watch.events.recv()).await {
            Ok(Some(MembershipEvent::Joined(n))) if n.id == NodeId(9) => break,
            Ok(Some(_)) => continue,
            Ok(None) => panic!("watch ended"),
            Err(_) => panic!("watch did not report node 9 after the restart"),
        }
    }
    drop(leases);
}

/// Polls the log until its current epoch reaches `at_least` (10 s deadline).
async fn wait_for_epoch(
    store: &dyn EpochStore,
    log: LogId,
    at_least: Epoch,
) -> tally_common::meta::LogMetadata {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(meta) = store.get_log(log).await
            && meta.current_epoch() >= at_least
        {
            return meta;
        }
        assert!(
            Instant::now() < deadline,
            "log did not reach epoch {at_least}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
