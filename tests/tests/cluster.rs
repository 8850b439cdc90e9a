//! The in-process cluster harness itself: appends through a real cluster land with R copies
//! on distinct storage nodes, and a stopped storage node comes back on its data and port.

use std::collections::BTreeSet;

use tally_common::{LogId, NodeId};
use tally_tests::cluster::{ClusterSpec, TestCluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_land_on_r_nodes_and_a_node_restarts() -> anyhow::Result<()> {
    let mut cluster = TestCluster::start(ClusterSpec::new(3, 1)).await?;
    cluster.create_logs([1], 2).await?;
    let client = cluster.client().await?;
    let mut acked = Vec::new();
    for i in 0..50u32 {
        acked.push((
            client
                .append(LogId(1), format!("r{i}").into_bytes())
                .await?,
            i,
        ));
    }
    let copies = cluster.copies(LogId(1))?;
    for (lsn, i) in &acked {
        let (holders, payload) = copies.get(lsn).expect("every acked LSN is stored");
        let distinct: BTreeSet<NodeId> = holders.iter().copied().collect();
        assert!(distinct.len() >= 2, "{lsn} held by {holders:?}");
        assert_eq!(payload, format!("r{i}").as_bytes());
    }

    let victim = cluster.storage_ids()[0];
    let before = cluster.logsdb(victim).unwrap().log_meta(LogId(1));
    cluster.stop(victim).await?;
    assert!(cluster.node(victim).is_none());
    cluster.restart(victim).await?;
    let after = cluster.logsdb(victim).unwrap().log_meta(LogId(1));
    assert_eq!(
        before.epoch_lng, after.epoch_lng,
        "the node's data survived the restart"
    );
    drop(client);
    cluster.shutdown().await
}
