//! The chaos smoke run of the default test suite: 60 s of faults of every kind against real
//! processes (3-member etcd, 5 storage nodes, 2 sequencer nodes), then a drain and the judge.
//! Longer runs and the negative controls: `cargo run --release -p tally-tests --bin chaos`
//! (docs/RELIABILITY.md).

use tally_tests::chaos::{self, ChaosConfig, Control};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_smoke() -> anyhow::Result<()> {
    // The nodes are this package's `chaos` binary in `node` mode.
    let config = ChaosConfig {
        duration: 60,
        seed: 7,
        storage_nodes: 5,
        sequencers: 2,
        logs: 4,
        producers_per_log: 1,
        tailing_readers: 2,
        min_step: 3,
        max_step: 6,
        control: Control::None,
        dir: None,
        node_exe: Some(env!("CARGO_BIN_EXE_chaos").into()),
    };
    let report = chaos::run(config).await?;
    println!("{}", report.table());
    assert!(report.passed(), "{}", report.table());
    assert!(report.faults_total >= 8, "{}", report.table());
    let kinds = report.faults.iter().filter(|(_, n)| **n > 0).count();
    assert!(kinds >= 3, "{}", report.table());
    assert!(report.verdict.acked > 0);
    Ok(())
}
