//! A 3-member etcd cluster (the chaos harness's epoch store): the store keeps working with one
//! member killed, epochs never repeat across the kill, and the member rejoins on restart.

use std::time::Duration;
use tally_common::ids::LogId;

use tally_epochstore::conformance::{small_attributes, storage_node};
use tally_epochstore::harness::EtcdCluster;
use tally_epochstore::{ActivateOptions, EpochStore, EtcdStore};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_survive_one_kill() {
    let mut etcd = EtcdCluster::start(3).await.expect("start etcd cluster");
    assert_eq!(etcd.endpoints().len(), 3);
    let store = EtcdStore::connect(etcd.config("cluster"))
        .await
        .expect("connect");
    let mut leases = Vec::new();
    for id in 1..=3 {
        let lease = store
            .register_node(storage_node(id), Duration::from_secs(30))
            .await;
        leases.push(lease.expect("register"));
    }
    let log = LogId(7);
    store
        .create_log(log, small_attributes())
        .await
        .expect("create log");
    let first = store
        .activate(log, ActivateOptions::default())
        .await
        .expect("activate")
        .epoch;

    etcd.kill(0);
    assert!(!etcd.is_running(0));
    // Calls may need to fail over to another endpoint; the store retries within its deadline.
    let mut second = None;
    for _ in 0..10 {
        match store.activate(log, ActivateOptions::default()).await {
            Ok(a) => {
                second = Some(a.epoch);
                break;
            }
            Err(e) => assert!(e.is_retryable(), "non-retryable error: {e}"),
        }
    }
    let second = second.expect("the store serves with two of three members");
    assert!(second > first, "epochs move forward: {first} then {second}");

    etcd.restart(0).await.expect("restart member 0");
    assert!(etcd.is_running(0));
    let third = store
        .activate(log, ActivateOptions::default())
        .await
        .expect("activate after rejoin")
        .epoch;
    assert!(third > second);
}
