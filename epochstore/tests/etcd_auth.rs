//! etcd with RBAC on (reliability.md §6.2): the store works with a user limited to its
//! cluster's prefix, and missing or wrong credentials are typed, non-retryable errors.

use std::time::Duration;

use etcd_client::{Client, Permission};
use tally_common::ids::LogId;
use tally_epochstore::conformance::{small_attributes, storage_node};
use tally_epochstore::harness::EtcdHarness;
use tally_epochstore::{ActivateOptions, EpochStore, EpochStoreError, EtcdAuth, EtcdStore};

fn auth(user: &str, password: &str) -> Option<EtcdAuth> {
    Some(EtcdAuth {
        user: user.into(),
        password: password.into(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_password_and_prefix_permissions() {
    let etcd = EtcdHarness::start().await.expect("start etcd");
    let mut admin = Client::connect(etcd.endpoints(), None)
        .await
        .expect("admin client");
    admin
        .user_add("root", "root-pw", None)
        .await
        .expect("add root");
    admin
        .user_grant_role("root", "root")
        .await
        .expect("grant root");
    admin.role_add("tally").await.expect("add role");
    let perm = Permission::read_write("/tally/secure/").with_prefix();
    admin
        .role_grant_permission("tally", perm)
        .await
        .expect("grant prefix");
    admin
        .user_add("tally", "tally-pw", None)
        .await
        .expect("add user");
    admin
        .user_grant_role("tally", "tally")
        .await
        .expect("grant role");
    admin.auth_enable().await.expect("enable auth");

    let mut config = etcd.config("secure");
    config.auth = auth("tally", "tally-pw");
    let store = EtcdStore::connect(config.clone())
        .await
        .expect("connect with credentials");
    let mut leases = Vec::new();
    for id in 1..=2 {
        leases.push(
            store
                .register_node(storage_node(id), Duration::from_secs(10))
                .await
                .unwrap(),
        );
    }
    store
        .create_log(LogId(1), small_attributes())
        .await
        .expect("create");
    let a = store
        .activate(LogId(1), ActivateOptions::default())
        .await
        .expect("activate");
    assert_eq!(a.node_set.node_set.len(), 2);
    assert_eq!(store.list_nodes().await.unwrap().len(), 2);

    // No credentials.
    let anonymous = etcd.store("secure").await.expect("lazy connect");
    let err = anonymous.get_log(LogId(1)).await.unwrap_err();
    assert!(matches!(err, EpochStoreError::Unauthorized(_)), "{err}");
    assert!(!err.is_retryable());

    // Wrong password.
    let mut wrong = config.clone();
    wrong.auth = auth("tally", "nope");
    let err = EtcdStore::connect(wrong).await.unwrap_err();
    assert!(matches!(err, EpochStoreError::Unauthorized(_)), "{err}");

    // Right user, another cluster's prefix.
    let mut other = config;
    other.cluster = "other".into();
    let other = EtcdStore::connect(other).await.expect("connect");
    let err = other
        .create_log(LogId(1), small_attributes())
        .await
        .unwrap_err();
    assert!(matches!(err, EpochStoreError::Unauthorized(_)), "{err}");
    for lease in leases {
        lease.deregister().await.expect("deregister");
    }
}
