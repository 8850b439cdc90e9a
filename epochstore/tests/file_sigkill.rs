//! The file store across process death: SIGKILL at arbitrary points of a stream of
//! activations (a child process running `sigkill_child`) never loses an acknowledged epoch
//! nor leaves an unreadable file, and the directory lock dies with the process.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use tally_common::ids::{Epoch, LogId, Lsn};
use tally_epochstore::conformance::{small_attributes, storage_node};
use tally_epochstore::{ActivateOptions, EpochStore, EpochStoreError, FileEpochStore};

const CHILD_ENV: &str = "TALLY_FILE_STORE_CHILD_DIR";

/// Run by `survives_sigkill` in a child process (ignored otherwise): activates log 1 in a
/// loop and prints every epoch once the store has acknowledged it.
#[tokio::test]
#[ignore = "child process of survives_sigkill"]
async fn sigkill_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let store = FileEpochStore::open(&dir).expect("child: open store");
    let mut leases = Vec::new();
    for id in 1..=3 {
        leases.push(
            store
                .register_node(storage_node(id), Duration::from_secs(60))
                .await
                .unwrap(),
        );
    }
    match store.create_log(LogId(1), small_attributes()).await {
        Ok(_) | Err(EpochStoreError::AlreadyExists { .. }) => {}
        Err(e) => panic!("child: create log: {e}"),
    }
    loop {
        let a = store
            .activate(LogId(1), ActivateOptions::default())
            .await
            .expect("activate");
        if a.epoch.0 % 4 == 0 {
            let _ = store
                .set_last_clean_epoch(LogId(1), a.epoch.prev(), Lsn::INVALID, None)
                .await;
        }
        println!("epoch {}", a.epoch.0);
    }
}

#[test]
fn survives_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut last_acked = Epoch::INVALID;
    // Kill after a varying number of acknowledged activations to hit different points.
    for (round, kill_after) in [1usize, 7, 23, 40, 64].into_iter().enumerate() {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "sigkill_child",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn child");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut seen = 0;
        while seen < kill_after {
            let line = lines
                .next()
                .expect("child ended early")
                .expect("read child");
            if let Some(e) = line.strip_prefix("epoch ") {
                let epoch = Epoch(e.parse().unwrap());
                assert!(
                    epoch > last_acked,
                    "round {round}: epoch {epoch} after {last_acked}"
                );
                last_acked = epoch;
                seen += 1;
            }
        }
        child.kill().expect("SIGKILL child");
        child.wait().unwrap();
        // The lock died with the process; everything acknowledged is there.
        let store = FileEpochStore::open(dir.path()).expect("reopen after SIGKILL");
        let meta = runtime.block_on(store.get_log(LogId(1))).expect("log 1");
        assert!(
            meta.current_epoch() >= last_acked,
            "round {round}: stored {} < acknowledged {last_acked}",
            meta.current_epoch()
        );
        assert!(meta.last_clean_epoch < meta.next_epoch);
        last_acked = meta.current_epoch();
    }
}
