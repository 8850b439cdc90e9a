//! The conformance suite every [`EpochStore`] must pass (feature `harness`). Each check takes
//! a fresh, empty store and panics with a precise message on a violation; the crate's tests
//! run every check against the etcd, file and in-memory stores, and another implementation
//! (a simulator's store) can run the same checks.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tally_common::ids::{Epoch, LogId, Lsn, NodeId};
use tally_common::meta::{
    DataDirBinding, DataDirId, LogAttributes, NodeInfo, NodeSet, Roles, StorageState,
};
use tokio::time::Instant;

use crate::store::{
    ActivateOptions, EpochStore, EpochStoreError, MembershipEvent, NodeLease, NodeWatch,
};

/// A storage node record for tests.
pub fn storage_node(id: u32) -> NodeInfo {
    NodeInfo {
        id: NodeId(id),
        address: format!("127.0.0.1:{}", 7000 + id),
        roles: Roles {
            sequencer: true,
            storage: true,
        },
        location: String::new(),
        weight: 1,
        state: StorageState::ReadWrite,
        incarnation: 0,
    }
}

/// Attributes with replication 2 over every storage node.
pub fn small_attributes() -> LogAttributes {
    LogAttributes {
        replication: 2,
        node_set_size: 0,
        ..LogAttributes::default()
    }
}

async fn register_nodes(store: &dyn EpochStore, ids: &[u32]) -> Vec<NodeLease> {
    let mut leases = Vec::new();
    for &id in ids {
        let lease = store
            .register_node(storage_node(id), Duration::from_secs(30))
            .await
            .unwrap_or_else(|e| panic!("register node {id}: {e}"));
        leases.push(lease);
    }
    leases
}

fn nodes(ids: &[u32]) -> NodeSet {
    NodeSet::new(ids.iter().copied().map(NodeId).collect())
}

/// Create, get, list; duplicates, unknown logs and bad attributes are typed errors; reading
/// never creates a log.
pub async fn create_get_list(store: Arc<dyn EpochStore>) {
    let _leases = register_nodes(&*store, &[1, 2, 3]).await;
    let created = store
        .create_log(LogId(1), small_attributes())
        .await
        .expect("create log 1");
    assert_eq!(created.next_epoch, Epoch::MIN);
    assert!(created.history.is_empty());
    assert_eq!(store.get_log(LogId(1)).await.expect("get log 1"), created);
    assert_eq!(
        store.create_log(LogId(1), small_attributes()).await,
        Err(EpochStoreError::AlreadyExists { log: LogId(1) })
    );
    assert_eq!(
        store.get_log(LogId(2)).await,
        Err(EpochStoreError::NotFound { log: LogId(2) })
    );
    assert_eq!(
        store
            .activate(LogId(2), ActivateOptions::default())
            .await
            .map(|a| a.epoch),
        Err(EpochStoreError::NotFound { log: LogId(2) })
    );
    let bad = LogAttributes {
        replication: 0,
        ..LogAttributes::default()
    };
    assert!(matches!(
        store.create_log(LogId(3), bad).await,
        Err(EpochStoreError::InvalidAttributes(_))
    ));
    store
        .create_log(LogId(12), LogAttributes::default())
        .await
        .expect("create log 12");
    let listed = store.list_logs().await.expect("list logs");
    assert_eq!(
        listed.keys().copied().collect::<Vec<_>>(),
        vec![LogId(1), LogId(12)]
    );
    assert_eq!(listed[&LogId(1)], created);
}

/// 16 concurrent activations of one log get 16 distinct epochs, all above every epoch seen
/// before them; across the whole run no epoch is handed out twice and `next_epoch` ends one
/// past the greatest.
pub async fn concurrent_activations(store: Arc<dyn EpochStore>) {
    let _leases = register_nodes(&*store, &[1, 2, 3]).await;
    let log = LogId(7);
    store
        .create_log(log, small_attributes())
        .await
        .expect("create log");
    let mut seen = BTreeSet::new();
    let mut last_observed = Epoch::INVALID;
    for round in 0..3 {
        let mut tasks = Vec::new();
        for _ in 0..16 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                store.activate(log, ActivateOptions::default()).await
            }));
        }
        let mut epochs = Vec::new();
        for task in tasks {
            let activation = task.await.expect("activation task").expect("activate");
            assert_eq!(
                activation.metadata.next_epoch,
                activation.epoch.next().unwrap()
            );
            assert_eq!(activation.node_set.node_set, nodes(&[1, 2, 3]));
            epochs.push(activation.epoch);
        }
        for &e in &epochs {
            assert!(
                e > last_observed,
                "round {round}: epoch {e} not above {last_observed}"
            );
            assert!(seen.insert(e), "round {round}: epoch {e} handed out twice");
        }
        last_observed = *epochs.iter().max().unwrap();
    }
    assert_eq!(seen.len(), 48);
    let meta = store.get_log(log).await.expect("get log");
    assert_eq!(meta.next_epoch, last_observed.next().unwrap());
    assert_eq!(
        meta.history.len(),
        1,
        "the node set never changed: one history entry"
    );
}

/// The last clean epoch only moves forward; a stale update is a typed error with the
/// current value; concurrent updates end at the greatest.
pub async fn last_clean_epoch_is_monotone(store: Arc<dyn EpochStore>) {
    let _leases = register_nodes(&*store, &[1, 2, 3]).await;
    let log = LogId(3);
    store
        .create_log(log, small_attributes())
        .await
        .expect("create log");
    for _ in 0..10 {
        store
            .activate(log, ActivateOptions::default())
            .await
            .expect("activate");
    }
    let tail = Lsn::new(Epoch(3), tally_common::ids::Esn(17));
    let outcome = tally_common::RecoveredEpoch {
        epoch: Epoch(3),
        seal: Epoch(10),
        lng: tally_common::ids::Esn(12),
        tail,
        authoritative: true,
    };
    let meta = store
        .set_last_clean_epoch(log, Epoch(3), tail, Some(outcome))
        .await
        .expect("lce 3");
    assert_eq!(
        (meta.last_clean_epoch, meta.last_clean_tail),
        (Epoch(3), tail)
    );
    // What the recovery decided is kept with the last clean epoch, for nodes that missed it.
    let read = store.get_log(log).await.expect("get");
    assert_eq!(read.recovered_epoch(Epoch(3)), Some(&outcome));
    assert_eq!(
        store
            .set_last_clean_epoch(log, Epoch(2), Lsn::INVALID, None)
            .await,
        Err(EpochStoreError::Stale { current: Epoch(3) })
    );
    let same = store
        .set_last_clean_epoch(log, Epoch(3), tail, None)
        .await
        .expect("lce 3 again");
    assert_eq!(same.last_clean_epoch, Epoch(3));
    assert!(matches!(
        store
            .set_last_clean_epoch(log, Epoch(11), Lsn::INVALID, None)
            .await,
        Err(EpochStoreError::InvalidArgument(_))
    ));

    let mut tasks = Vec::new();
    for e in [9u32, 4, 8, 5, 7, 6] {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            (
                e,
                store
                    .set_last_clean_epoch(log, Epoch(e), Lsn::INVALID, None)
                    .await,
            )
        }));
    }
    for task in tasks {
        let (e, result) = task.await.expect("lce task");
        match result {
            Ok(meta) => assert!(meta.last_clean_epoch >= Epoch(e)),
            Err(EpochStoreError::Stale { current }) => {
                assert!(current > Epoch(e), "stale for {e} with current {current}")
            }
            Err(other) => panic!("lce {e}: {other}"),
        }
    }
    assert_eq!(
        store.get_log(log).await.expect("get").last_clean_epoch,
        Epoch(9)
    );
}

/// The node set follows membership and attributes, changing only at an activation, and the
/// history keeps what older epochs used.
pub async fn node_set_follows_membership_and_attributes(store: Arc<dyn EpochStore>) {
    let mut leases = register_nodes(&*store, &[1, 2, 3]).await;
    let log = LogId(5);
    store
        .create_log(log, small_attributes())
        .await
        .expect("create log");
    let a1 = store
        .activate(log, ActivateOptions::default())
        .await
        .expect("activate");
    assert_eq!((a1.epoch, a1.node_set_changed), (Epoch(1), true));
    assert_eq!(
        (a1.node_set.node_set.clone(), a1.node_set.replication),
        (nodes(&[1, 2, 3]), 2)
    );
    let a2 = store
        .activate(log, ActivateOptions::default())
        .await
        .expect("activate");
    assert!(!a2.node_set_changed);

    leases.extend(register_nodes(&*store, &[4]).await);
    let a3 = store
        .activate(log, ActivateOptions::default())
        .await
        .expect("activate");
    assert!(a3.node_set_changed);
    assert_eq!(a3.node_set.node_set, nodes(&[1, 2, 3, 4]));
    assert_eq!(a3.node_set.since, a3.epoch);

    let attrs = LogAttributes {
        replication: 3,
        node_set_size: 3,
        ..small_attributes()
    };
    let updated = store
        .update_attributes(log, attrs.clone())
        .await
        .expect("update attributes");
    assert_eq!(updated.attributes, attrs);
    assert_eq!(
        updated.history.last().unwrap().replication,
        2,
        "running epoch unchanged"
    );
    let a4 = store
        .activate(log, ActivateOptions::default())
        .await
        .expect("activate");
    assert_eq!(
        (a4.node_set.replication, a4.node_set.node_set.len()),
        (3, 3)
    );

    let cond = ActivateOptions {
        if_current: Some(a3.epoch),
    };
    assert_eq!(
        store.activate(log, cond).await.map(|a| a.epoch),
        Err(EpochStoreError::ConditionFailed { current: a4.epoch })
    );
    let a5 = store
        .activate(
            log,
            ActivateOptions {
                if_current: Some(a4.epoch),
            },
        )
        .await
        .expect("conditional activate");
    assert_eq!(a5.epoch, a4.epoch.next().unwrap());

    let meta = store.get_log(log).await.expect("get");
    assert_eq!(meta.history.len(), 3);
    assert_eq!(
        meta.node_set_for(Epoch(2)).unwrap().node_set,
        nodes(&[1, 2, 3])
    );
    assert_eq!(
        meta.node_set_for(a3.epoch).unwrap().node_set,
        nodes(&[1, 2, 3, 4])
    );
    drop(leases);
}

/// A node id's first data directory is bound for good: the same directory is recognized on
/// every later start, any other one is told which directory the id belongs to, and another
/// node's binding is independent.
pub async fn data_dir_binding_is_durable(store: Arc<dyn EpochStore>) {
    let (first, wiped) = (DataDirId(0x1111), DataDirId(0x2222));
    let bind = |node: u32, dir: DataDirId| {
        let store = store.clone();
        async move {
            store
                .bind_data_dir(NodeId(node), dir)
                .await
                .unwrap_or_else(|e| panic!("bind node {node} to {dir}: {e}"))
        }
    };
    assert_eq!(bind(1, first).await, DataDirBinding::New);
    assert_eq!(bind(1, first).await, DataDirBinding::Same);
    for _ in 0..2 {
        // A wiped directory stays another one, however often the node restarts on it.
        assert_eq!(bind(1, wiped).await, DataDirBinding::Other { bound: first });
    }
    assert_eq!(
        bind(1, first).await,
        DataDirBinding::Same,
        "the old directory is back"
    );
    assert_eq!(
        bind(2, wiped).await,
        DataDirBinding::New,
        "node 2 is independent"
    );
    // Binding is not membership: no node is registered by it.
    assert!(store.list_nodes().await.expect("list nodes").is_empty());
}

async fn next_event(watch: &mut NodeWatch, within: Duration) -> MembershipEvent {
    match tokio::time::timeout(within, watch.events.recv()).await {
        Ok(Some(e)) => e,
        Ok(None) => panic!("membership watch ended"),
        Err(_) => panic!("no membership event within {within:?}"),
    }
}

/// Registration, update and deregistration are seen by watchers; a node whose keep-alive
/// stops disappears within TTL + 1 s.
pub async fn membership_leases_and_watch(store: Arc<dyn EpochStore>, ttl: Duration) {
    let before = register_nodes(&*store, &[1]).await;
    let mut watch = store.watch_nodes().await.expect("watch");
    assert_eq!(watch.initial, vec![storage_node(1)]);
    let wait = Duration::from_secs(5);

    let lease7 = store
        .register_node(storage_node(7), ttl)
        .await
        .expect("register 7");
    assert!(
        lease7.ttl() >= ttl,
        "granted ttl {:?} below requested {ttl:?}",
        lease7.ttl()
    );
    assert_eq!(
        next_event(&mut watch, wait).await,
        MembershipEvent::Joined(storage_node(7))
    );
    let changed = NodeInfo {
        state: StorageState::ReadOnly,
        weight: 5,
        ..storage_node(7)
    };
    lease7.update(changed.clone()).await.expect("update 7");
    assert_eq!(
        next_event(&mut watch, wait).await,
        MembershipEvent::Updated(changed.clone())
    );

    let lease8 = store
        .register_node(storage_node(8), ttl)
        .await
        .expect("register 8");
    assert_eq!(
        next_event(&mut watch, wait).await,
        MembershipEvent::Joined(storage_node(8))
    );
    lease8.deregister().await.expect("deregister 8");
    assert_eq!(
        next_event(&mut watch, wait).await,
        MembershipEvent::Left(NodeId(8))
    );
    let listed = store.list_nodes().await.expect("list");
    assert_eq!(listed, vec![storage_node(1), changed]);

    // Keep-alives continue past several TTLs...
    let lease_ttl = lease7.ttl();
    tokio::time::sleep(lease_ttl * 2).await;
    assert!(
        store
            .list_nodes()
            .await
            .expect("list")
            .iter()
            .any(|n| n.id == NodeId(7))
    );
    // ...and once they stop, the node leaves within TTL + 1 s.
    let stopped = Instant::now();
    lease7.abandon().await;
    let bound = lease_ttl + Duration::from_secs(1);
    assert_eq!(
        next_event(&mut watch, bound).await,
        MembershipEvent::Left(NodeId(7))
    );
    let took = stopped.elapsed();
    eprintln!("node left {took:?} after its keep-alive stopped (lease ttl {lease_ttl:?})");
    assert!(took <= bound, "node 7 left after {took:?}, bound {bound:?}");
    assert_eq!(
        store.list_nodes().await.expect("list"),
        vec![storage_node(1)]
    );
    drop(before);
}
