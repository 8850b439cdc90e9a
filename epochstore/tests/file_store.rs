//! The file store: the directory lock keeps a second store out while one is open, a reopen
//! keeps everything and ignores a write cut short, and any sequence of changes with reopens
//! in between answers like the in-memory store. (SIGKILL is in `file_sigkill.rs`, its own
//! binary: a child spawned while another test reopens a store would briefly share the
//! inherited lock descriptor between fork and exec.)

use std::time::Duration;

use tally_common::ids::{Epoch, LogId, Lsn, NodeId};
use tally_common::meta::{DataDirBinding, DataDirId};
use tally_epochstore::conformance::{small_attributes, storage_node};
use tally_epochstore::{ActivateOptions, EpochStore, EpochStoreError, FileEpochStore};

#[tokio::test]
async fn directory_is_locked_while_open() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileEpochStore::open(dir.path()).unwrap();
    assert!(matches!(
        FileEpochStore::open(dir.path()),
        Err(EpochStoreError::Locked { .. })
    ));
    drop(store);
    FileEpochStore::open(dir.path()).expect("open after the first store closed");
}

#[tokio::test]
async fn reopen_keeps_metadata_and_drops_temp_files() {
    let dir = tempfile::tempdir().unwrap();
    let written = {
        let store = FileEpochStore::open(dir.path()).unwrap();
        let _lease = store
            .register_node(storage_node(1), Duration::from_secs(60))
            .await
            .unwrap();
        let _lease2 = store
            .register_node(storage_node(2), Duration::from_secs(60))
            .await
            .unwrap();
        store
            .create_log(LogId(4), small_attributes())
            .await
            .unwrap();
        for _ in 0..3 {
            store
                .activate(LogId(4), ActivateOptions::default())
                .await
                .unwrap();
        }
        store
            .set_last_clean_epoch(LogId(4), Epoch(2), Lsn::INVALID, None)
            .await
            .unwrap()
    };
    // A write that was cut short before its rename.
    std::fs::write(dir.path().join("logs/4.json.tmp"), b"{ torn").unwrap();
    let store = FileEpochStore::open(dir.path()).unwrap();
    assert_eq!(store.get_log(LogId(4)).await.unwrap(), written);
    assert!(!dir.path().join("logs/4.json.tmp").exists());
    // Membership is per process: nothing is registered after a reopen.
    assert!(store.list_nodes().await.unwrap().is_empty());
}

#[tokio::test]
async fn data_dir_bindings_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (first, wiped) = (DataDirId(7), DataDirId(8));
    {
        let store = FileEpochStore::open(dir.path()).unwrap();
        let bound = store.bind_data_dir(NodeId(3), first).await.unwrap();
        assert_eq!(bound, DataDirBinding::New);
    }
    let store = FileEpochStore::open(dir.path()).unwrap();
    assert_eq!(
        store.bind_data_dir(NodeId(3), wiped).await.unwrap(),
        DataDirBinding::Other { bound: first }
    );
    assert_eq!(
        store.bind_data_dir(NodeId(3), first).await.unwrap(),
        DataDirBinding::Same
    );
    // A damaged binding is a typed error, not a fresh start.
    std::fs::write(dir.path().join("data-dirs/3.json"), b"{ torn").unwrap();
    assert!(matches!(
        store.bind_data_dir(NodeId(3), first).await,
        Err(EpochStoreError::Corrupt { .. })
    ));
}

mod model {
    use super::*;
    use proptest::prelude::*;
    use tally_common::meta::LogAttributes;
    use tally_epochstore::{MemoryEpochStore, NodeLease};

    #[derive(Clone, Debug)]
    enum Op {
        Create(u64, u8),
        Activate(u64),
        LastClean(u64, u32),
        Attributes(u64, u8),
        Reopen,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (1u64..4, 1u8..4).prop_map(|(l, r)| Op::Create(l, r)),
            (1u64..4).prop_map(Op::Activate),
            (1u64..4).prop_map(Op::Activate),
            (1u64..4, 0u32..8).prop_map(|(l, e)| Op::LastClean(l, e)),
            (1u64..4, 0u8..4).prop_map(|(l, r)| Op::Attributes(l, r)),
            Just(Op::Reopen),
        ]
    }

    async fn register(store: &dyn EpochStore) -> Vec<NodeLease> {
        let mut leases = Vec::new();
        for id in 1..=3 {
            leases.push(
                store
                    .register_node(storage_node(id), Duration::from_secs(60))
                    .await
                    .unwrap(),
            );
        }
        leases
    }

    fn attributes(replication: u8) -> LogAttributes {
        LogAttributes {
            replication,
            ..LogAttributes::default()
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        /// Any sequence of changes, with the file store closed and reopened at random points,
        /// gives the same answers as the in-memory store, and the same final metadata.
        #[test]
        fn file_store_matches_the_memory_store(ops in proptest::collection::vec(op(), 1..40)) {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async {
                let dir = tempfile::tempdir().unwrap();
                let model = MemoryEpochStore::new();
                let _model_leases = register(&model).await;
                let mut file = FileEpochStore::open(dir.path()).unwrap();
                let mut leases = register(&file).await;
                for op in ops {
                    let (a, b) = match op {
                        Op::Create(l, r) => (
                            model.create_log(LogId(l), attributes(r)).await,
                            file.create_log(LogId(l), attributes(r)).await,
                        ),
                        Op::Activate(l) => (
                            model.activate(LogId(l), ActivateOptions::default()).await.map(|a| a.metadata),
                            file.activate(LogId(l), ActivateOptions::default()).await.map(|a| a.metadata),
                        ),
                        Op::LastClean(l, e) => (
                            model.set_last_clean_epoch(LogId(l), Epoch(e), Lsn::INVALID, None).await,
                            file.set_last_clean_epoch(LogId(l), Epoch(e), Lsn::INVALID, None).await,
                        ),
                        Op::Attributes(l, r) => (
                            model.update_attributes(LogId(l), attributes(r)).await,
                            file.update_attributes(LogId(l), attributes(r)).await,
                        ),
                        Op::Reopen => {
                            drop(leases);
                            drop(file);
                            file = FileEpochStore::open(dir.path()).unwrap();
                            leases = register(&file).await;
                            continue;
                        }
                    };
                    prop_assert_eq!(a, b);
                }
                prop_assert_eq!(model.list_logs().await.unwrap(), file.list_logs().await.unwrap());
                Ok(())
            })?;
        }
    }
}
