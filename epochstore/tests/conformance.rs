//! The conformance suite (`tally_epochstore::conformance`) against the in-memory, file and
//! etcd stores. Each etcd test starts its own etcd (the harness) so tests stay independent.

use std::sync::Arc;
use std::time::Duration;

use tally_epochstore::conformance;
use tally_epochstore::harness::EtcdHarness;
use tally_epochstore::{EpochStore, FileEpochStore, MemoryEpochStore};

/// Keeps whatever backs a store (a temporary directory, an etcd process) alive for a test.
#[allow(dead_code)]
enum Guard {
    None,
    Dir(tempfile::TempDir),
    Etcd(EtcdHarness),
}

async fn memory() -> (Arc<dyn EpochStore>, Guard) {
    (Arc::new(MemoryEpochStore::new()), Guard::None)
}

async fn file() -> (Arc<dyn EpochStore>, Guard) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = FileEpochStore::open(dir.path()).expect("open file store");
    (Arc::new(store), Guard::Dir(dir))
}

async fn etcd() -> (Arc<dyn EpochStore>, Guard) {
    let etcd = EtcdHarness::start().await.expect("start etcd");
    let store = etcd.store("conformance").await.expect("connect to etcd");
    (Arc::new(store), Guard::Etcd(etcd))
}

/// Lease TTL for the membership check: etcd's minimum with the harness's raft timers.
const TTL: Duration = Duration::from_secs(1);

macro_rules! suite {
    ($backend:ident) => {
        mod $backend {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn create_get_list() {
                let (store, _guard) = super::$backend().await;
                conformance::create_get_list(store).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn concurrent_activations() {
                let (store, _guard) = super::$backend().await;
                conformance::concurrent_activations(store).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn last_clean_epoch_is_monotone() {
                let (store, _guard) = super::$backend().await;
                conformance::last_clean_epoch_is_monotone(store).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn node_set_follows_membership_and_attributes() {
                let (store, _guard) = super::$backend().await;
                conformance::node_set_follows_membership_and_attributes(store).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn data_dir_binding_is_durable() {
                let (store, _guard) = super::$backend().await;
                conformance::data_dir_binding_is_durable(store).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn membership_leases_and_watch() {
                let (store, _guard) = super::$backend().await;
                conformance::membership_leases_and_watch(store, TTL).await;
            }
        }
    };
}

suite!(memory);
suite!(file);
suite!(etcd);
