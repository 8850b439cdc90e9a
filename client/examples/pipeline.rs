//! A pipeline stage: reads log `--input`, transforms each record (ASCII upper case) and appends
//! the result to log `--output`, so that a crash and restart at any moment neither skips nor
//! repeats output.
//!
//! ```sh
//! cargo run -p tally -- dev                                  # in another shell
//! seq 1 1000 | cargo run -p tally -- append --log 1
//! cargo run -p tally-client --example pipeline -- --input 1 --output 2 --state-dir /tmp/stage
//! ```
//!
//! Flags: `--input L`, `--output L`, `--state-dir DIR` (a hint file, see below), `--until LSN`
//! (stop after this input LSN; default: follow the input forever), `--batch N` (inputs per
//! output batch, default 64). Prints `appending <inputs>` before each output batch and
//! `processed <inputs> -> <outputs>` once it is appended.
//!
//! How it stays exactly-once in effect:
//!
//! - **The checkpoint is in the output.** Every output record is `b'D' | input LSN (8 bytes,
//!   big-endian) | transformed payload`. The last data record of the output log says how far
//!   the stage got; there is no separate checkpoint that could disagree with the output.
//! - **A barrier before trusting the tail.** An append that was in flight when the previous
//!   run died (or that failed with an outcome the client cannot know, `Indeterminate`) is not
//!   visible yet: readers see a log only up to its release point, and the sequencer cannot
//!   release past that LSN until it is settled (completed, or turned into a hole or a record by
//!   epoch recovery after the append timeout). So on start the stage appends a marker record
//!   (`b'M'`) to the output and reads the output up to the marker's LSN. Reading the marker
//!   means everything before it is final: an in-flight output either made it (then it is read,
//!   and its input is not processed again) or became a hole (then its input is processed
//!   again). Every output appended later gets a higher LSN than the marker. The wait is up to
//!   the sequencer's append timeout plus its grace (15 s by default) after a crash, and one
//!   round trip otherwise.
//! - **Retry only what certainly failed.** A batch whose append "certainly did not happen"
//!   ([`tally_client::AppendError::certainly_not_appended`]) is retried as is; any other
//!   failure goes through the barrier again, exactly like a restart.
//!
//! The hint file (`<state-dir>/hint`: the output log and the LSN of a recent output data
//! record there) only tells the
//! barrier read where to start instead of the oldest LSN; it may be stale or missing without
//! harm. Markers and gaps (holes, bridges) in the output log are skipped by its readers.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use tally_client::{AppendError, Client, Delivery, GapKind, ReadFrom, ReadOptions, ReadUntil};
use tally_common::{LogId, Lsn};

/// Output record tag: a transformed input (`DATA | input LSN | payload`).
const DATA: u8 = b'D';
/// Output record tag: a restart barrier, no input.
const MARKER: u8 = b'M';

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = common::Args::parse(&["input", "output", "state-dir", "until", "batch"])?;
    let stage = Stage {
        input: args.required("input")?,
        output: args.required("output")?,
        hint: args.required::<PathBuf>("state-dir")?.join("hint"),
        until: args.get("until")?,
        batch: args.get_or("batch", 64usize)?,
        client: args.connect().await?,
    };
    anyhow::ensure!(
        (1..=1024).contains(&stage.batch),
        "--batch must be in 1..=1024"
    );
    anyhow::ensure!(
        stage.input != stage.output,
        "--input and --output must differ"
    );
    if let Some(dir) = stage.hint.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    let next = stage.run().await?;
    stage.client.close().await;
    println!("pipeline: done, next input {next}");
    Ok(())
}

/// What an output record says.
#[derive(Debug, PartialEq, Eq)]
enum Output<'a> {
    Data { input: Lsn, body: &'a [u8] },
    Marker,
}

fn encode(input: Lsn, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(9 + payload.len());
    out.push(DATA);
    out.extend_from_slice(&input.0.to_be_bytes());
    out.extend(payload.iter().map(u8::to_ascii_uppercase));
    out
}

fn decode(payload: &[u8]) -> anyhow::Result<Output<'_>> {
    match payload {
        [MARKER] => Ok(Output::Marker),
        [DATA, rest @ ..] if rest.len() >= 8 => {
            let (lsn, body) = rest.split_at(8);
            let input = Lsn(u64::from_be_bytes(lsn.try_into().expect("8 bytes")));
            Ok(Output::Data { input, body })
        }
        _ => bail!("not an output record of this stage: {payload:?}"),
    }
}

struct Stage {
    client: Client,
    input: LogId,
    output: LogId,
    hint: PathBuf,
    until: Option<Lsn>,
    batch: usize,
}

impl Stage {
    /// Processes input until `until` (or forever); returns the next input LSN.
    async fn run(&self) -> anyhow::Result<Lsn> {
        let mut next = self.resume().await?;
        'reader: loop {
            if self.until.is_some_and(|until| next > until) {
                return Ok(next);
            }
            let until = self.until.map_or(ReadUntil::Forever, ReadUntil::Lsn);
            let options = ReadOptions {
                window: 1024,
                ..ReadOptions::range(ReadFrom::Lsn(next), until)
            };
            let mut reader = self.client.read(self.input, options).await?;
            loop {
                // A batch: what arrives within a few milliseconds of its first delivery.
                let Some(first) = reader.next().await else {
                    return Ok(next);
                };
                let mut deliveries = vec![first.context("read the input")?];
                let mut ended = false;
                while deliveries.len() < self.batch {
                    match tokio::time::timeout(Duration::from_millis(5), reader.next()).await {
                        Ok(Some(item)) => deliveries.push(item.context("read the input")?),
                        Ok(None) => {
                            ended = true;
                            break;
                        }
                        Err(_) => break,
                    }
                }
                let covered_to = deliveries.last().expect("one delivery").to();
                let mut inputs = Vec::new();
                let mut outputs = Vec::new();
                for d in &deliveries {
                    match d {
                        Delivery::Record(r) => {
                            inputs.push(r.header.lsn);
                            outputs.push(encode(r.header.lsn, &r.payload));
                        }
                        Delivery::Gap {
                            kind: GapKind::DataLoss,
                            from,
                            to,
                        } => bail!(
                            "input log {} lost records {from}..={to}; stopping so that an \
                             operator decides",
                            self.input
                        ),
                        Delivery::Gap {
                            kind: GapKind::Trim,
                            from,
                            to,
                        } => eprintln!(
                            "pipeline: input {from}..={to} was trimmed before it was processed"
                        ),
                        // Holes and bridges: LSNs that never held a record.
                        Delivery::Gap { .. } => {}
                    }
                }
                if !outputs.is_empty() {
                    println!("appending {}..={}", inputs[0], inputs[inputs.len() - 1]);
                    match self.append(outputs).await {
                        Ok(lsns) => {
                            write_hint(&self.hint, self.output, *lsns.end());
                            println!(
                                "processed {}..={} -> {}..={}",
                                inputs[0],
                                inputs[inputs.len() - 1],
                                lsns.start(),
                                lsns.end()
                            );
                        }
                        Err(e) if e.certainly_not_appended() => {
                            return Err(e).context("append to the output log (nothing appended)");
                        }
                        Err(e) => {
                            eprintln!("pipeline: output append outcome unknown ({e}); resyncing");
                            next = self.resume().await?;
                            continue 'reader;
                        }
                    }
                }
                next = covered_to.next();
                if ended {
                    return Ok(next);
                }
            }
        }
    }

    /// Appends one batch of outputs. Retries while the failure says nothing was appended;
    /// returns the error when it may have been (the caller resynchronises).
    async fn append(
        &self,
        outputs: Vec<Vec<u8>>,
    ) -> Result<std::ops::RangeInclusive<Lsn>, AppendError> {
        let mut backoff = Duration::from_millis(50);
        let mut attempt = 1;
        loop {
            match self.client.append_batch(self.output, outputs.clone()).await {
                Ok(lsns) => return Ok(lsns),
                Err(e) if e.certainly_not_appended() && transient(&e) && attempt < 20 => {
                    eprintln!("pipeline: append failed ({e}); retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The barrier: appends a marker to the output, reads the output up to it and returns the
    /// input LSN after the last one that has an output.
    async fn resume(&self) -> anyhow::Result<Lsn> {
        let marker = self.append_marker().await?;
        let from = read_hint(&self.hint, self.output)
            .filter(|h| *h < marker)
            .unwrap_or(Lsn::OLDEST);
        let options = ReadOptions {
            window: 1024,
            ..ReadOptions::range(ReadFrom::Lsn(from), ReadUntil::Lsn(marker))
        };
        let mut reader = self
            .client
            .read(self.output, options)
            .await
            .context("read the output log")?;
        let mut last: Option<(Lsn, Lsn)> = None;
        let mut trimmed = false;
        while let Some(item) = reader.next().await {
            match item.context("read the output log")? {
                Delivery::Record(r) => {
                    if let Output::Data { input, .. } = decode(&r.payload)? {
                        last = Some((r.header.lsn, input));
                    }
                }
                Delivery::Gap {
                    kind: GapKind::DataLoss,
                    from,
                    to,
                } => bail!(
                    "output log {} lost records {from}..={to}: which inputs they came from \
                     cannot be known",
                    self.output
                ),
                Delivery::Gap {
                    kind: GapKind::Trim,
                    ..
                } => trimmed = true,
                Delivery::Gap { .. } => {}
            }
        }
        let next = match last {
            Some((output_lsn, input)) => {
                write_hint(&self.hint, self.output, output_lsn);
                input.next()
            }
            None if trimmed => bail!(
                "output log {} is trimmed and holds no output after the trim point: the \
                 stage's position is lost",
                self.output
            ),
            None => Lsn::OLDEST,
        };
        println!("pipeline: resumed: output final up to {marker}, next input {next}");
        Ok(next)
    }

    async fn append_marker(&self) -> anyhow::Result<Lsn> {
        let mut backoff = Duration::from_millis(50);
        for _ in 0..20 {
            match self.client.append(self.output, vec![MARKER]).await {
                Ok(lsn) => return Ok(lsn),
                // A marker that may exist is harmless: append another.
                Err(e) if transient(&e) => {
                    eprintln!("pipeline: marker append failed ({e}); retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
                Err(e) => return Err(e).context("append a marker to the output log"),
            }
        }
        bail!("no marker could be appended to the output log in 20 attempts")
    }
}

/// Failures that may pass (sequencer failover, nodes down); the others (no such log, payload
/// too large, shut down) will not.
fn transient(e: &AppendError) -> bool {
    matches!(
        e,
        AppendError::TimedOut
            | AppendError::NoSequencer { .. }
            | AppendError::Placement(_)
            | AppendError::Preempted { .. }
            | AppendError::Indeterminate { .. }
    )
}

/// The hint (`<output log> <lsn>`): written to a temporary file and renamed, never synced
/// (it is only a hint).
fn write_hint(path: &Path, log: LogId, lsn: Lsn) {
    let tmp = path.with_extension("tmp");
    let written = std::fs::write(&tmp, format!("{} {}", log.0, lsn.0))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = written {
        eprintln!("pipeline: cannot write {}: {e}", path.display());
    }
}

/// The hint's LSN, if the hint is about `log`.
fn read_hint(path: &Path, log: LogId) -> Option<Lsn> {
    let text = std::fs::read_to_string(path).ok()?;
    let (hint_log, lsn) = text.trim().split_once(' ')?;
    (hint_log.parse::<u64>().ok()? == log.0).then_some(Lsn(lsn.parse().ok()?))
}
