//! `tally append`: one record from the command line, or records from stdin (one per line,
//! or length-delimited with `--binary`). It never loses a record silently: every record's
//! outcome is checked and printed (its LSN, or the failure with the record's number and
//! whether it may have been appended anyway), and the exit code is non-zero on any failure.
//!
//! Records are appended byte for byte, never reinterpreted. With lines (the default) a record
//! is exactly the bytes between two `\n`: a `\r` before the `\n` stays in the record (so
//! `\r\n` input keeps its `\r`), an empty line is an empty record, bytes that are not UTF-8
//! are kept as they are, and a last line without a final `\n` is a record too. `--binary`
//! reads `len (u32, big-endian) ‖ bytes` frames; a frame cut short by the end of the input, or
//! longer than the payload limit, is an [`InputError`]: the records before it are appended,
//! it and the rest are not, and the exit status says so.
//!
//! Records from stdin keep their input order in the log: one batch (up to 1024 records /
//! 256 KiB) is in flight at a time, gathering whatever stdin delivered meanwhile, and the
//! first failure stops the command. `--unordered` sends them through the client's
//! `BufferedWriter` instead (several batches in flight, so batches may land in a different
//! order than the input).

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::{BufRead, Read};

use anyhow::{Context as _, bail};
use tally_client::{AppendError, BufferedConfig, Client};
use tally_common::{LogId, Lsn};
use tokio::sync::mpsc;

use super::ConnectArgs;

/// `tally append` arguments.
#[derive(Debug, clap::Args)]
pub struct AppendArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// The log to append to.
    #[arg(long)]
    pub log: LogId,
    /// The record. Without it, records are read from stdin: one per line, byte for byte (the
    /// `\n` is not part of the record; a `\r` before it is, empty lines are empty records,
    /// non-UTF-8 bytes are kept, a last line without `\n` counts), or length-delimited with
    /// `--binary`.
    pub payload: Option<OsString>,
    /// Stdin holds records as a 4-byte big-endian length followed by that many bytes; a
    /// truncated or over-limit frame stops the command (records before it are appended).
    #[arg(long)]
    pub binary: bool,
    /// Print only the number of records appended, not each LSN.
    #[arg(long)]
    pub count: bool,
    /// Stdin through the client's buffered writer (several batches in flight): batches may
    /// land in the log in a different order than the input.
    #[arg(long)]
    pub unordered: bool,
}

/// Records in one ordered batch.
const BATCH_RECORDS: usize = 1024;
/// Payload bytes in one ordered batch.
const BATCH_BYTES: usize = 256 * 1024;
/// Unanswered records of `--unordered` before reading stdin pauses.
const UNORDERED_PENDING: usize = 16 * 1024;

/// Why a record of the input cannot be appended (the input itself is wrong).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    /// A line longer than the payload limit (consumed whole, never cut into pieces).
    #[error("line of {len} bytes is over the payload limit of {max} bytes")]
    LineTooLong { len: usize, max: usize },
    /// A `--binary` frame announcing more than the payload limit (nothing after it is read:
    /// the framing cannot be trusted).
    #[error("record of {len} bytes is over the payload limit of {max} bytes")]
    RecordTooLong { len: usize, max: usize },
    /// The input ends inside a 4-byte length prefix.
    #[error("input ends inside a length prefix ({got} of 4 bytes)")]
    TruncatedLength { got: usize },
    /// The input ends inside a record.
    #[error("input ends inside a record of {len} bytes ({got} bytes read)")]
    TruncatedRecord { len: usize, got: usize },
    /// Reading stdin failed.
    #[error("cannot read stdin: {0}")]
    Read(String),
}

/// One record read from stdin, numbered from 1, or why it cannot be appended.
type Input = (u64, Result<Vec<u8>, InputError>);

pub async fn append(args: AppendArgs) -> anyhow::Result<()> {
    if args.payload.is_some() && args.binary {
        bail!("--binary reads records from stdin; give no PAYLOAD argument");
    }
    let client = args.connect.client().await?;
    let result = match args.payload.clone() {
        Some(payload) => {
            use std::os::unix::ffi::OsStringExt as _;
            match client.append(args.log, payload.into_vec()).await {
                Ok(lsn) => {
                    if args.count {
                        println!("1");
                    } else {
                        println!("{lsn}");
                    }
                    Ok(())
                }
                Err(e) => Err(append_failure(args.log, &e)),
            }
        }
        None => append_stdin(&client, &args).await,
    };
    // Completion reports go out before the process ends.
    client.close().await;
    result
}

fn append_failure(log: LogId, e: &AppendError) -> anyhow::Error {
    let maybe = if e.certainly_not_appended() {
        "it was not appended"
    } else {
        "it MAY have been appended"
    };
    anyhow::anyhow!("append to log {log} failed: {e} ({maybe})")
}

/// Reads records from stdin on a blocking thread; the channel bounds what is buffered.
fn spawn_reader(binary: bool, max_payload: usize) -> mpsc::Receiver<Input> {
    let (tx, rx) = mpsc::channel(BATCH_RECORDS);
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        let mut input = stdin.lock();
        let mut n = 0u64;
        loop {
            n += 1;
            let next = if binary {
                read_binary(&mut input, max_payload)
            } else {
                read_line(&mut input, max_payload)
            };
            let item = match next {
                Ok(Some(record)) => record,
                Ok(None) => return,
                Err(e) => Err(InputError::Read(e.to_string())),
            };
            let stop = item.is_err();
            if tx.blocking_send((n, item)).is_err() || stop {
                return;
            }
        }
    });
    rx
}

/// One line without its `\n`; an over-long line is consumed and reported, never truncated.
fn read_line(
    input: &mut impl BufRead,
    max_payload: usize,
) -> std::io::Result<Option<Result<Vec<u8>, InputError>>> {
    let mut line = Vec::new();
    let mut len = 0usize;
    let mut any = false;
    loop {
        let buf = input.fill_buf()?;
        if buf.is_empty() {
            break;
        }
        any = true;
        let (chunk, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (&buf[..i], Some(i + 1)),
            None => (buf, None),
        };
        len += chunk.len();
        if len <= max_payload {
            line.extend_from_slice(chunk);
        }
        let used = done.unwrap_or(buf.len());
        input.consume(used);
        if done.is_some() {
            break;
        }
    }
    if !any {
        return Ok(None);
    }
    if len > max_payload {
        return Ok(Some(Err(InputError::LineTooLong {
            len,
            max: max_payload,
        })));
    }
    Ok(Some(Ok(line)))
}

/// One length-delimited record (4-byte big-endian length, then the bytes).
fn read_binary(
    input: &mut impl Read,
    max_payload: usize,
) -> std::io::Result<Option<Result<Vec<u8>, InputError>>> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match input.read(&mut len[got..])? {
            0 if got == 0 => return Ok(None),
            0 => return Ok(Some(Err(InputError::TruncatedLength { got }))),
            n => got += n,
        }
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > max_payload {
        return Ok(Some(Err(InputError::RecordTooLong {
            len,
            max: max_payload,
        })));
    }
    // Checked against the limit above, so this allocation is bounded.
    let mut record = vec![0u8; len];
    let mut got = 0;
    while got < len {
        match input.read(&mut record[got..]) {
            Ok(0) => return Ok(Some(Err(InputError::TruncatedRecord { len, got }))),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(Some(Ok(record)))
}

/// Tally of a stdin append, printed at the end.
#[derive(Debug, Default)]
struct Outcome {
    appended: u64,
    failed: u64,
    maybe_appended: u64,
}

impl Outcome {
    fn ok(&mut self, lsn: Lsn, count_only: bool) {
        self.appended += 1;
        if !count_only {
            println!("{lsn}");
        }
    }

    fn failed(&mut self, line: u64, what: &str, e: Option<&AppendError>) {
        self.failed += 1;
        let maybe = e.is_some_and(|e| !e.certainly_not_appended());
        if maybe {
            self.maybe_appended += 1;
        }
        let tail = match e {
            Some(_) if maybe => " (it MAY have been appended)",
            Some(_) => " (it was not appended)",
            None => " (not sent)",
        };
        eprintln!("tally append: record {line}: {what}{tail}");
    }

    fn finish(self, log: LogId, count_only: bool) -> anyhow::Result<()> {
        if count_only {
            println!("{}", self.appended);
        }
        if self.failed == 0 {
            return Ok(());
        }
        bail!(
            "{} records appended to log {log}, {} failed ({} of them may have been appended)",
            self.appended,
            self.failed,
            self.maybe_appended
        )
    }
}

async fn append_stdin(client: &Client, args: &AppendArgs) -> anyhow::Result<()> {
    let max_payload = client.config().transport.limits.max_payload_bytes;
    let mut input = spawn_reader(args.binary, max_payload);
    let mut outcome = Outcome::default();
    if args.unordered {
        append_unordered(client, args, &mut input, &mut outcome).await?;
        return outcome.finish(args.log, args.count);
    }
    let max_records =
        BATCH_RECORDS.min(client.config().transport.limits.max_records_per_batch as usize);
    let mut next: Option<Input> = None;
    loop {
        let first = match next.take() {
            Some(item) => item,
            None => match input.recv().await {
                Some(item) => item,
                None => break,
            },
        };
        let (first_line, record) = first;
        let record = match record {
            Ok(record) => record,
            Err(e) => {
                // Stop here: appending later records would reorder the input around a gap.
                outcome.failed(first_line, &e.to_string(), None);
                break;
            }
        };
        let mut bytes = record.len();
        let mut batch = vec![record];
        // Whatever stdin has delivered while the previous batch was in flight.
        while batch.len() < max_records {
            match input.try_recv() {
                Ok((_, Ok(record))) if bytes + record.len() <= BATCH_BYTES => {
                    bytes += record.len();
                    batch.push(record);
                }
                Ok(item) => {
                    next = Some(item);
                    break;
                }
                Err(_) => break,
            }
        }
        let count = batch.len() as u64;
        match client.append_batch(args.log, batch).await {
            Ok(lsns) => {
                let (first_lsn, last) = (*lsns.start(), *lsns.end());
                anyhow::ensure!(
                    last.0 - first_lsn.0 + 1 == count,
                    "the client answered {count} records with LSNs {first_lsn}..={last}"
                );
                for lsn in first_lsn.0..=last.0 {
                    outcome.ok(Lsn(lsn), args.count);
                }
            }
            Err(e) => {
                for line in first_line..first_line + count {
                    outcome.failed(line, &e.to_string(), Some(&e));
                }
                break;
            }
        }
    }
    if outcome.failed > 0 {
        eprintln!("tally append: stopped at the first failure; the rest of the input was not sent");
    }
    outcome.finish(args.log, args.count)
}

async fn append_unordered(
    client: &Client,
    args: &AppendArgs,
    input: &mut mpsc::Receiver<Input>,
    outcome: &mut Outcome,
) -> anyhow::Result<()> {
    let writer = client
        .buffered_writer(args.log, BufferedConfig::default())
        .context("cannot start the buffered writer")?;
    let mut pending = VecDeque::new();
    let report =
        |outcome: &mut Outcome,
         line: u64,
         result: Result<Result<Lsn, AppendError>, tokio::task::JoinError>| {
            match result {
                Ok(Ok(lsn)) => outcome.ok(lsn, args.count),
                Ok(Err(e)) => outcome.failed(line, &e.to_string(), Some(&e)),
                Err(e) => outcome.failed(
                    line,
                    &format!("append task failed: {e}"),
                    Some(&AppendError::Indeterminate {
                        cause: tally_client::IndeterminateCause::TimedOut,
                    }),
                ),
            }
        };
    while let Some((line, record)) = input.recv().await {
        match record {
            Ok(record) => {
                let writer = writer.clone();
                pending.push_back((
                    line,
                    tokio::spawn(async move { writer.append(record).await }),
                ));
            }
            Err(e) => outcome.failed(line, &e.to_string(), None),
        }
        while pending.len() >= UNORDERED_PENDING
            || pending
                .front()
                .is_some_and(|(_, h): &(u64, tokio::task::JoinHandle<_>)| h.is_finished())
        {
            let (line, handle) = pending.pop_front().expect("non-empty");
            report(outcome, line, handle.await);
        }
    }
    drop(writer);
    while let Some((line, handle)) = pending.pop_front() {
        report(outcome, line, handle.await);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::*;

    fn lines(input: &[u8], max: usize) -> Vec<Result<Vec<u8>, InputError>> {
        let mut r = Cursor::new(input.to_vec());
        std::iter::from_fn(|| read_line(&mut r, max).unwrap()).collect()
    }

    #[test]
    fn lines_split_on_newlines_only_and_long_lines_are_refused_whole() {
        let got = lines(b"a\n\nb\r\nlast", 8);
        let want: Vec<Result<Vec<u8>, InputError>> = vec![
            Ok(b"a".to_vec()),
            Ok(Vec::new()),
            Ok(b"b\r".to_vec()),
            Ok(b"last".to_vec()),
        ];
        assert_eq!(got, want);
        assert_eq!(lines(b"x\n", 8), vec![Ok(b"x".to_vec())]);
        assert!(lines(b"", 8).is_empty());
        let got = lines(b"0123456789\nok\n", 8);
        assert_eq!(got[0], Err(InputError::LineTooLong { len: 10, max: 8 }));
        // Bytes that are not UTF-8 are kept.
        assert_eq!(lines(b"\xff\xfe\n", 8), vec![Ok(vec![0xff, 0xfe])]);
        assert_eq!(got[1], Ok(b"ok".to_vec()));
    }

    #[test]
    fn binary_records_are_length_delimited() {
        let mut input = Vec::new();
        for rec in [&b"one"[..], b"", b"with\nnewline"] {
            input.extend_from_slice(&(rec.len() as u32).to_be_bytes());
            input.extend_from_slice(rec);
        }
        let mut r = Cursor::new(input);
        let got: Vec<_> = std::iter::from_fn(|| read_binary(&mut r, 64).unwrap()).collect();
        assert_eq!(
            got,
            vec![
                Ok(b"one".to_vec()),
                Ok(Vec::new()),
                Ok(b"with\nnewline".to_vec())
            ]
        );
        let mut r = Cursor::new(vec![0, 0, 0, 5, b'a']);
        assert_eq!(
            read_binary(&mut r, 64).unwrap().unwrap(),
            Err(InputError::TruncatedRecord { len: 5, got: 1 })
        );
        let mut r = Cursor::new(vec![0, 0]);
        assert_eq!(
            read_binary(&mut r, 64).unwrap().unwrap(),
            Err(InputError::TruncatedLength { got: 2 })
        );
        let mut r = Cursor::new(vec![0, 0, 1, 0]);
        assert_eq!(
            read_binary(&mut r, 64).unwrap().unwrap(),
            Err(InputError::RecordTooLong { len: 256, max: 64 })
        );
    }
}
