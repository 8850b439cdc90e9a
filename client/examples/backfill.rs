//! A backfill reader: replays a log from an old LSN, or from a point in time, up to its tail.
//!
//! ```sh
//! cargo run -p tally -- dev                                  # in another shell
//! cargo run -p tally-client --example backfill -- --log 4                 # self-contained demo
//! cargo run -p tally-client --example backfill -- --log 4 --from e1n1     # from an LSN
//! cargo run -p tally-client --example backfill -- --log 4 --since-ms 1700000000000
//! ```
//!
//! With `--from LSN` or `--since-ms MS` (milliseconds since the Unix epoch) it reads from there
//! to the tail (the release point when the read starts) and prints a summary. With neither it runs a demo that checks itself: it appends
//! three batches, replays from the first batch's LSN, then from the time of the second
//! batch's first record, and prints `backfill: ok`.
//!
//! Backfill reads differ from tailing reads only in their options: a deep delivery buffer (the
//! default window, 8,192 LSNs or 16 MiB per node, already keeps the nodes shipping), single-copy
//! delivery (on by default: one node ships each record, so read
//! traffic is not multiplied by the replication factor), and an end (`ReadUntil::Tail`: the
//! tail when the read starts).

mod common;

use anyhow::{Context as _, ensure};
use tally_client::{Client, Delivery, FindTimeAccuracy, GapKind, ReadFrom, ReadOptions, ReadUntil};
use tally_common::{LogId, Lsn};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = common::Args::parse(&["log", "from", "since-ms"])?;
    let log: LogId = args.required("log")?;
    let from: Option<Lsn> = args.get("from")?;
    let since: Option<u64> = args.get("since-ms")?;
    let client = args.connect().await?;
    match (from, since) {
        (Some(lsn), None) => summary(
            "from-lsn",
            &replay(&client, log, ReadFrom::Lsn(lsn), ReadUntil::Tail).await?,
        ),
        (None, Some(ms)) => summary(
            "from-time",
            &replay(&client, log, ReadFrom::Time(ms), ReadUntil::Tail).await?,
        ),
        (None, None) => demo(&client, log).await?,
        (Some(_), Some(_)) => anyhow::bail!("give --from or --since-ms, not both"),
    }
    client.close().await;
    Ok(())
}

/// What one replay saw.
#[derive(Default)]
struct Replay {
    /// `(lsn, timestamp_ms, payload)` of every record, in LSN order.
    records: Vec<(Lsn, u64, Vec<u8>)>,
    /// Typed gaps (holes, bridges, trims; data loss is an error).
    gaps: Vec<(GapKind, Lsn, Lsn)>,
}

/// Reads `log` from `from` to `until`.
async fn replay(
    client: &Client,
    log: LogId,
    from: ReadFrom,
    until: ReadUntil,
) -> anyhow::Result<Replay> {
    let options = ReadOptions {
        buffer: 1024,
        ..ReadOptions::range(from, until)
    };
    let mut reader = client
        .read(log, options)
        .await
        .context("start the replay")?;
    let mut replay = Replay::default();
    while let Some(item) = reader.next().await {
        match item.context("replay")? {
            Delivery::Record(r) => {
                replay
                    .records
                    .push((r.header.lsn, r.header.timestamp_ms, r.payload))
            }
            Delivery::Gap {
                kind: GapKind::DataLoss,
                from,
                to,
            } => anyhow::bail!("records {from}..={to} of log {log} are lost"),
            Delivery::Gap { kind, from, to } => replay.gaps.push((kind, from, to)),
        }
    }
    Ok(replay)
}

fn summary(what: &str, r: &Replay) {
    match (r.records.first(), r.records.last()) {
        (Some(first), Some(last)) => println!(
            "{what}: {} records, {}..={}, {} gaps",
            r.records.len(),
            first.0,
            last.0,
            r.gaps.len()
        ),
        _ => println!("{what}: no records, {} gaps", r.gaps.len()),
    }
}

/// Appends three batches, then replays by LSN and by time and checks what came back.
async fn demo(client: &Client, log: LogId) -> anyhow::Result<()> {
    let mut batches = Vec::new();
    for b in 1..=3 {
        let payloads: Vec<Vec<u8>> = (1..=100)
            .map(|i| format!("batch {b} record {i}").into_bytes())
            .collect();
        let lsns = client.append_batch(log, payloads.clone()).await?;
        println!("appended batch {b}: {}..={}", lsns.start(), lsns.end());
        batches.push((lsns, payloads));
    }
    let ours = |r: &Replay| -> Vec<Vec<u8>> {
        r.records
            .iter()
            .filter(|(_, _, p)| p.starts_with(b"batch "))
            .map(|(_, _, p)| p.clone())
            .collect()
    };

    // The demo reads up to its own last record rather than to the tail: the tail is the
    // release point, which may not have reached an append acknowledged a moment ago.
    let last = ReadUntil::Lsn(*batches[2].0.end());

    // From an old LSN: the first record of batch 1.
    let first = *batches[0].0.start();
    let by_lsn = replay(client, log, ReadFrom::Lsn(first), last).await?;
    summary("from-lsn", &by_lsn);
    ensure!(
        by_lsn.records.first().map(|r| r.0) == Some(first),
        "the replay from {first} did not start there"
    );
    let all: Vec<Vec<u8>> = batches.iter().flat_map(|(_, p)| p.clone()).collect();
    ensure!(
        ours(&by_lsn) == all,
        "the replay from {first} is not the three batches"
    );

    // From a time: the timestamp the sequencer gave batch 2's first record.
    let second = *batches[1].0.start();
    let ts = by_lsn
        .records
        .iter()
        .find(|r| r.0 == second)
        .map(|r| r.1)
        .context("batch 2's first record was not replayed")?;
    let found = client
        .find_time(log, ts, FindTimeAccuracy::Strict)
        .await
        .context("find_time")?;
    println!("find_time({ts} ms) = {found}");
    // Records of batch 1 may carry the same millisecond, so the answer may be earlier than
    // batch 2, never later.
    ensure!(
        found <= second,
        "find_time answered {found}, after {second}"
    );
    let by_time = replay(client, log, ReadFrom::Time(ts), last).await?;
    summary("from-time", &by_time);
    let start = by_time
        .records
        .first()
        .context("nothing replayed by time")?;
    ensure!(
        start.0 >= found,
        "the replay by time started at {}, before {found}",
        start.0
    );
    ensure!(
        by_time.records.iter().all(|r| r.1 >= ts),
        "the replay by time delivered a record older than {ts} ms"
    );
    let from_second: Vec<Vec<u8>> = batches[1..].iter().flat_map(|(_, p)| p.clone()).collect();
    ensure!(
        ours(&by_time).ends_with(&from_second),
        "the replay by time does not hold batches 2 and 3"
    );
    println!("backfill: ok");
    Ok(())
}
