//! What the epoch-store part of a (re)activation costs against a real etcd (DESIGN §5: an
//! activation is one read and one compare-and-swap of the log's key): sequential conditional
//! reactivations on one etcd member, on a three-member cluster, on such a cluster with one
//! member paused (SIGSTOP: it hangs rather than resets connections), and right after a member
//! is killed. Prints p50 / p90 / p99 / max and the failures (store deadlines); asserts only
//! that epochs move up by one and never regress. A measurement, not a check of speed:
//! run it with `cargo nextest run -p tally-sequencer --test etcd_activation --run-ignored all
//! --no-capture`.

use std::time::{Duration, Instant};

use tally_common::{Epoch, LogId};
use tally_epochstore::conformance::{small_attributes, storage_node};
use tally_epochstore::harness::{EtcdCluster, EtcdHarness};
use tally_epochstore::{ActivateOptions, EpochStore, EtcdConfig, EtcdStore, NodeLease};

const ROUNDS: usize = 200;

async fn prepare(config: EtcdConfig) -> (EtcdStore, Vec<NodeLease>, LogId) {
    let store = EtcdStore::connect(config).await.expect("connect");
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
    (store, leases, log)
}

/// The durations of a run of activations, and how many of them failed.
#[derive(Debug, Default)]
struct Run {
    took: Vec<Duration>,
    failed: Vec<String>,
}

/// `rounds` reactivations of `log`, each conditional on the previous epoch, as a sequencer's
/// reactivation is. A failed one (a store deadline) is counted with its duration; the epoch is
/// read again after it, since the compare-and-swap may have been applied.
async fn reactivations(store: &EtcdStore, log: LogId, rounds: usize) -> Run {
    let mut current = store.get_log(log).await.expect("read").current_epoch();
    let mut run = Run::default();
    for _ in 0..rounds {
        let if_current = (current != Epoch::INVALID).then_some(current);
        let started = Instant::now();
        let activation = store.activate(log, ActivateOptions { if_current }).await;
        run.took.push(started.elapsed());
        match activation {
            Ok(a) => {
                assert_eq!(a.epoch, current.next().unwrap(), "epochs move up by one");
                current = a.epoch;
            }
            Err(e) => {
                run.failed.push(e.to_string());
                let read = loop {
                    if let Ok(meta) = store.get_log(log).await {
                        break meta.current_epoch();
                    }
                };
                assert!(read >= current, "epochs never regress");
                current = read;
            }
        }
    }
    run
}

fn signal(sig: &str, pid: &str) {
    let status = std::process::Command::new("kill")
        .args([sig, pid])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill {sig} {pid}");
}

fn report(what: &str, run: Run) {
    let mut took = run.took;
    took.sort();
    let at = |q: f64| took[((took.len() - 1) as f64 * q).round() as usize];
    eprintln!(
        "{what}: n={} p50={:?} p90={:?} p99={:?} max={:?} failed={} {:?}",
        took.len(),
        at(0.5),
        at(0.9),
        at(0.99),
        took[took.len() - 1],
        run.failed.len(),
        run.failed.first(),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement against real etcd processes; run on demand"]
async fn reactivation_cost_against_real_etcd() {
    let single = EtcdHarness::start().await.expect("start etcd");
    let (store, _leases, log) = prepare(single.config("single")).await;
    report("one member", reactivations(&store, log, ROUNDS).await);

    let mut cluster = EtcdCluster::start(3).await.expect("start etcd cluster");
    let (store, _leases, log) = prepare(cluster.config("three")).await;
    report("three members", reactivations(&store, log, ROUNDS).await);
    // A member that hangs instead of dying (SIGSTOP: no connection reset, maybe the leader).
    let mut paused = EtcdCluster::start(3).await.expect("start etcd cluster");
    let (store_p, _leases_p, log_p) = prepare(paused.config("paused")).await;
    reactivations(&store_p, log_p, 10).await;
    let pid = paused.pid(0).expect("member 0 runs").to_string();
    signal("-STOP", &pid);
    report(
        "three members, first activation after pausing member 0",
        reactivations(&store_p, log_p, 1).await,
    );
    report(
        "three members, member 0 paused",
        reactivations(&store_p, log_p, 50).await,
    );
    signal("-CONT", &pid);
    paused.kill(0);

    cluster.kill(0);
    report(
        "three members, first activation after killing member 0",
        reactivations(&store, log, 1).await,
    );
    report(
        "three members, member 0 dead",
        reactivations(&store, log, ROUNDS).await,
    );
}
