//! The basics: connect, append one record, append a batch, read them back, ask for the tail.
//!
//! ```sh
//! cargo run -p tally -- dev                                  # in another shell
//! cargo run -p tally-client --example basics -- --log 1
//! ```
//!
//! Prints `appended <lsn>` per record, `read <lsn> <payload>` per record read back, and
//! `basics: ok` at the end. Exits non-zero if anything read back differs from what was
//! appended. Against another cluster: `TALLY_SEED=host:port TALLY_CERTS=dir` (see
//! `common/mod.rs`).

mod common;

use anyhow::{Context as _, bail, ensure};
use tally_client::{Delivery, ReadFrom, ReadOptions, ReadUntil};
use tally_common::LogId;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = common::Args::parse(&["log"])?;
    let log: LogId = args.get_or("log", LogId(1))?;
    let client = args.connect().await?;

    // One record: the LSN comes back once R storage nodes have it on disk.
    let first = client
        .append(log, b"hello from the basics example".to_vec())
        .await
        .context("append")?;
    println!("appended {first}");

    // A batch: consecutive LSNs, all appended or none.
    let batch: Vec<Vec<u8>> = (1..=3)
        .map(|i| format!("batch record {i}").into_bytes())
        .collect();
    let lsns = client
        .append_batch(log, batch.clone())
        .await
        .context("append_batch")?;
    for i in 0..batch.len() as u64 {
        println!("appended {}", tally_common::Lsn(lsns.start().0 + i));
    }
    let last = *lsns.end();

    // Read back exactly what was appended: from the first LSN to the last, inclusive. LSNs
    // between them that hold no record arrive as typed gaps (none are expected here).
    let mut reader = client
        .read(
            log,
            ReadOptions::range(ReadFrom::Lsn(first), ReadUntil::Lsn(last)),
        )
        .await
        .context("start reading")?;
    let mut payloads = Vec::new();
    while let Some(item) = reader.next().await {
        match item.context("read")? {
            Delivery::Record(r) => {
                println!(
                    "read {} {}",
                    r.header.lsn,
                    String::from_utf8_lossy(&r.payload)
                );
                payloads.push(r.payload);
            }
            Delivery::Gap { kind, from, to } => println!("gap {kind:?} {from}..={to}"),
        }
    }
    let mut expected = vec![b"hello from the basics example".to_vec()];
    expected.extend(batch);
    if payloads != expected {
        bail!("read back {payloads:?}, appended {expected:?}");
    }

    // The tail: the last released LSN. Other writers may have appended since.
    let tail = client.tail_lsn(log).await.context("tail")?;
    ensure!(tail >= last, "tail {tail} is below the last append {last}");
    println!("tail {tail}");

    // Close flushes completion reports and closes connections.
    client.close().await;
    println!("basics: ok");
    Ok(())
}
