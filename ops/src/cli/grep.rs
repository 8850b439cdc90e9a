//! `tally grep`: OK Log's time-bounded grep over one log, with the filter evaluated on the
//! storage nodes so only matching records cross the network.
//!
//! `tally grep --log L [--since 1h | --from TIME --to TIME] [--regex] [-i] PATTERN`
//!
//! - PATTERN is a substring by default, a regular expression (Rust `regex` syntax, matched
//!   against the payload bytes) with `--regex`; `-i` ignores ASCII and Unicode case.
//! - The time range selects records by their timestamps: `--since D` is `--from -D`; with no
//!   range the whole log (from the oldest record) is searched. The LSN range to scan is
//!   found with a strict `find-time` at each end and ends at most at the log's tail when the
//!   command starts; the nodes also check each record's timestamp, so the answer is exact.
//! - Matches are printed in LSN order, in the formats of `tally read` (`raw`, `lsn`, `time`,
//!   `json`). Nothing else goes to stdout: trimmed ranges (records gone before they could be
//!   searched) are reported on stderr (as gap objects with `--format json`).
//! - Completeness: the read proves, for every LSN of the range, that a match was delivered
//!   or that an f-majority of the node set has no matching copy (every record has a copy in
//!   every f-majority). When too many nodes are unreachable for that proof, the search waits
//!   up to `--stall-timeout`; then it stops, says on stderr which LSNs it could not search and
//!   which nodes it waited for, and exits with status 2 (partial result). A complete search
//!   exits 0 whether or not anything matched; other failures exit 1.
//! - `--stats`: reads nothing; asks each node of the log's node sets what the search would
//!   scan there (from its partition directory) and prints nodes, partitions and bytes.
//! - `--summary`: after the search, one `key=value` line on stderr: matches and their bytes,
//!   the records and payload bytes received from the nodes (each match arrives once per
//!   copy: filtered reads run all-send-all), the scan estimate, and the query time.

use std::io::Write as _;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tally_client::{
    Client, Delivery, FindTimeAccuracy, GapKind, ReadFrom, ReadOptions, ReadUntil, RecordFilter,
    ScanEstimate,
};
use tally_common::{LogId, Lsn};

use super::progress::Progress;
use super::read::{Format, gap_name, print_delivery};
use super::time::{format_rfc3339, now_ms, parse_duration_ms, parse_time};
use super::{ConnectArgs, Partial};

/// `tally grep` arguments.
#[derive(Debug, clap::Args)]
pub struct GrepArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// The log to search.
    #[arg(long)]
    pub log: LogId,
    /// Search records of the last D (`90s`, `15m`, `1h30m`, `2d`).
    #[arg(long, value_parser = parse_since, conflicts_with_all = ["from", "to"])]
    pub since: Option<u64>,
    /// Earliest record time: RFC 3339, relative like `-1h`, `now`, or `@<unix ms>`.
    #[arg(long, value_parser = parse_when)]
    pub from: Option<u64>,
    /// Latest record time (inclusive), same forms as --from [default: the tail when the
    /// search starts].
    #[arg(long, value_parser = parse_when)]
    pub to: Option<u64>,
    /// PATTERN is a regular expression (Rust regex syntax) instead of a substring.
    #[arg(long)]
    pub regex: bool,
    /// Ignore case.
    #[arg(short = 'i', long)]
    pub ignore_case: bool,
    #[arg(long, value_enum, default_value_t = Format::Raw)]
    pub format: Format,
    /// Print what the search would scan (nodes, partitions, bytes) without reading.
    #[arg(long)]
    pub stats: bool,
    /// After the search, print one `key=value` line of figures on stderr.
    #[arg(long)]
    pub summary: bool,
    /// How long to wait for unreachable nodes before giving a partial result (exit 2).
    #[arg(long, default_value = "10s", value_parser = crate::config::parse_duration)]
    pub stall_timeout: Duration,
    /// LSNs each node may scan ahead of what was printed (memory bound: that many matches).
    #[arg(long, default_value_t = 8192)]
    pub window: u64,
    /// What to look for in each record's payload.
    pub pattern: String,
}

fn parse_since(s: &str) -> Result<u64, String> {
    let back = parse_duration_ms(s.trim()).ok_or_else(|| {
        format!("{s:?}: expected a duration like 90s, 15m, 1h30m, 2d (units ms s m h d)")
    })?;
    Ok(now_ms().saturating_sub(back))
}

fn parse_when(s: &str) -> Result<u64, String> {
    parse_time(s, now_ms())
}

/// The server-side regex for PATTERN.
pub fn payload_regex(pattern: &str, is_regex: bool, ignore_case: bool) -> String {
    let body = if is_regex {
        pattern.to_owned()
    } else {
        regex::escape(pattern)
    };
    if ignore_case {
        format!("(?i:{body})")
    } else {
        body
    }
}

/// The LSNs and times a search covers.
#[derive(Debug, Clone, Copy)]
struct Range {
    from_ms: u64,
    to_ms: u64,
    from: Lsn,
    until: Lsn,
}

async fn resolve(client: &Client, args: &GrepArgs) -> anyhow::Result<Range> {
    let log = args.log;
    let from_ms = args.since.or(args.from).unwrap_or(0);
    let to_ms = args.to.unwrap_or(u64::MAX);
    anyhow::ensure!(
        from_ms <= to_ms,
        "--from {} is after --to {}",
        format_rfc3339(from_ms),
        format_rfc3339(to_ms)
    );
    let tail = client
        .tail_lsn(log)
        .await
        .with_context(|| format!("cannot find the tail of log {log}"))?;
    let from = if from_ms == 0 {
        Lsn::OLDEST
    } else {
        client
            .find_time(log, from_ms, FindTimeAccuracy::Strict)
            .await
            .with_context(|| format!("cannot find where {} starts in log {log}", show(from_ms)))?
    };
    let until = if to_ms == u64::MAX {
        tail
    } else {
        let after = client
            .find_time(log, to_ms.saturating_add(1), FindTimeAccuracy::Strict)
            .await
            .with_context(|| format!("cannot find where {} ends in log {log}", show(to_ms)))?;
        after.prev().min(tail)
    };
    Ok(Range {
        from_ms,
        to_ms,
        from,
        until,
    })
}

fn show(ms: u64) -> String {
    match ms {
        0 => "the oldest record".to_owned(),
        u64::MAX => "the tail".to_owned(),
        ms => format_rfc3339(ms),
    }
}

pub async fn grep(args: GrepArgs) -> anyhow::Result<()> {
    let regex = payload_regex(&args.pattern, args.regex, args.ignore_case);
    anyhow::ensure!(args.window > 0, "--window must be at least 1");
    let client = args.connect.client().await?;
    let result = async {
        let range = resolve(&client, &args).await?;
        if args.stats {
            let estimate = estimate(&client, args.log, range).await?;
            print_stats(args.log, range, &estimate)?;
            return partial_estimate(&estimate);
        }
        search(&client, &args, range, regex).await
    }
    .await;
    client.close().await;
    result
}

async fn estimate(client: &Client, log: LogId, range: Range) -> anyhow::Result<ScanEstimate> {
    client
        .scan_estimate(log, range.from, range.until)
        .await
        .with_context(|| format!("cannot estimate the scan of log {log}"))
}

fn print_stats(log: LogId, range: Range, e: &ScanEstimate) -> anyhow::Result<()> {
    let asked = e.nodes.len() + e.failed.len();
    let mut out = String::new();
    use std::fmt::Write as _;
    let _ = writeln!(
        out,
        "log {log}: LSNs {}..={} (records from {} to {})",
        range.from,
        range.until,
        show(range.from_ms),
        show(range.to_ms)
    );
    let _ = writeln!(out, "nodes:       {} of {asked} answered", e.nodes.len());
    let _ = writeln!(out, "partitions:  {}", e.partitions());
    let _ = writeln!(out, "bytes:       {} (all copies)", e.bytes());
    for (node, partitions, bytes) in &e.nodes {
        let _ = writeln!(out, "  {node}: {partitions} partitions, {bytes} bytes");
    }
    std::io::stdout()
        .write_all(out.as_bytes())
        .context("cannot write to stdout")
}

/// A scan estimate that misses nodes is partial.
fn partial_estimate(e: &ScanEstimate) -> anyhow::Result<()> {
    if e.failed.is_empty() {
        return Ok(());
    }
    let nodes: Vec<String> = e
        .failed
        .iter()
        .map(|(n, err)| format!("{n} ({err})"))
        .collect();
    Err(Partial(format!(
        "the estimate leaves out nodes that did not answer: {}",
        nodes.join(", ")
    ))
    .into())
}

/// What a search moved, for `--summary`.
#[derive(Debug, Default)]
struct Tally {
    matches: u64,
    match_bytes: u64,
}

async fn search(
    client: &Client,
    args: &GrepArgs,
    range: Range,
    regex: String,
) -> anyhow::Result<()> {
    let log = args.log;
    let started = Instant::now();
    let scan = if args.summary {
        Some(estimate(client, log, range).await?)
    } else {
        None
    };
    let mut tally = Tally::default();
    let mut received = (0, 0);
    let outcome = if range.from > range.until {
        Ok(())
    } else {
        let options = ReadOptions {
            window: args.window,
            filter: RecordFilter {
                min_timestamp_ms: range.from_ms,
                max_timestamp_ms: range.to_ms,
                payload_regex: regex,
            },
            ..ReadOptions::range(ReadFrom::Lsn(range.from), ReadUntil::Lsn(range.until))
        };
        let mut reader = client
            .read(log, options)
            .await
            .with_context(|| format!("cannot search log {log}"))?;
        let outcome = pump(&mut reader, args, range, &mut tally).await;
        let stats = reader.stats();
        received = (stats.records_received, stats.payload_bytes_received);
        outcome
    };
    if let Some(scan) = scan {
        eprintln!(
            "tally grep: matches={} match_bytes={} received_records={} received_bytes={} \
             scanned_bytes={} partitions={} nodes={} nodes_unanswered={} from={} until={} \
             secs={:.3}",
            tally.matches,
            tally.match_bytes,
            received.0,
            received.1,
            scan.bytes(),
            scan.partitions(),
            scan.nodes.len(),
            scan.failed.len(),
            range.from,
            range.until,
            started.elapsed().as_secs_f64()
        );
    }
    outcome
}

/// Prints matches until the range is covered, or gives up on a stall (partial result).
async fn pump(
    reader: &mut tally_client::Reader,
    args: &GrepArgs,
    range: Range,
    tally: &mut Tally,
) -> anyhow::Result<()> {
    let mut out = std::io::BufWriter::new(std::io::stdout());
    let mut stalls = reader.stall_updates();
    let mut stalled_since: Option<Instant> = None;
    let mut next = range.from;
    let progress = Progress::spinner(format!("searching log {}", args.log));
    let result = loop {
        let give_up = stalled_since.map(|t| t + args.stall_timeout);
        let item = tokio::select! {
            item = reader.next() => item,
            changed = stalls.changed() => {
                if changed.is_ok() {
                    let now = stalls.borrow_and_update().is_some();
                    stalled_since = match (now, stalled_since) {
                        (true, None) => Some(Instant::now()),
                        (true, since) => since,
                        (false, _) => None,
                    };
                }
                continue;
            }
            () = sleep_until(give_up) => {
                progress.finish();
                let _ = out.flush();
                let stall = reader.stalled();
                let waiting: Vec<String> = stall
                    .as_ref()
                    .map(|s| {
                        s.waiting_for
                            .iter()
                            .map(|n| match s.errors.iter().find(|(e, _)| e == n) {
                                Some((_, err)) => format!("{n} ({err})"),
                                None => n.to_string(),
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                break Err(Partial(format!(
                    "PARTIAL RESULT: LSNs {next}..={} of log {} were not searched: after {} \
                     too few nodes answer to prove there is no other match (waiting for {})",
                    range.until,
                    args.log,
                    crate::config::format_duration(args.stall_timeout),
                    waiting.join(", ")
                ))
                .into());
            }
        };
        let Some(item) = item else { break Ok(()) };
        let delivery = match item.with_context(|| format!("searching log {}", args.log)) {
            Ok(d) => d,
            Err(e) => break Err(e),
        };
        next = delivery.to().next();
        if progress.is_shown() {
            progress.set_message(format!(
                "searching log {}: at {next} of ..={}, {} matches",
                args.log, range.until, tally.matches
            ));
        }
        let written = match &delivery {
            Delivery::Record(r) => {
                tally.matches += 1;
                tally.match_bytes += r.payload.len() as u64;
                print_delivery(&mut out, &delivery, args.format)
            }
            Delivery::Gap { kind, from, to } => match kind {
                GapKind::Trim | GapKind::DataLoss if args.format == Format::Json => {
                    print_delivery(&mut out, &delivery, args.format)
                }
                GapKind::Trim | GapKind::DataLoss => {
                    progress.println(format!(
                        "tally grep: {from}..={to} not searched: gap {}",
                        gap_name(*kind)
                    ));
                    Ok(())
                }
                _ => Ok(()),
            },
        };
        if let Err(e) = written {
            break super::read::stdout_closed(e);
        }
    };
    progress.finish();
    result?;
    match out.flush() {
        Ok(()) => Ok(()),
        Err(e) => super::read::stdout_closed(e),
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_are_substrings_unless_regex() {
        let re =
            |p: &str, r: bool, i: bool| regex::bytes::Regex::new(&payload_regex(p, r, i)).unwrap();
        assert!(re("a.c", false, false).is_match(b"xa.cx"));
        assert!(!re("a.c", false, false).is_match(b"abc"));
        assert!(re("a.c", true, false).is_match(b"abc"));
        assert!(re("(x", false, false).is_match(b"((x"));
        assert!(re("ERROR", false, true).is_match(b"an error"));
        assert!(!re("ERROR", false, false).is_match(b"an error"));
        assert!(re("^err|warn$", true, true).is_match(b"WARN"));
        assert!(regex::bytes::Regex::new(&payload_regex("(x", true, false)).is_err());
    }
}
