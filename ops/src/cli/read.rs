//! `tally read`, `tally tail`, `tally find-time` and `tally trim` (DESIGN §11): the client's
//! reader and admin calls from the command line.
//!
//! Output (`--format`):
//! - `raw` (default): each record's payload followed by a newline, nothing else on stdout.
//! - `lsn`: `<lsn>\t<payload>` per record.
//! - `time`: `<lsn>\t<timestamp, RFC 3339 UTC with milliseconds>\t<payload>` per record.
//! - `json`: one object per line, `{"lsn":"e1n5","timestamp_ms":…,"payload":"…"}` (the payload
//!   as a string when it is UTF-8, else as `"payload_hex"`), and every gap as
//!   `{"gap":"data_loss","from":"e1n7","to":"e1n7"}`.
//!
//! In `raw`, `lsn` and `time` formats, gaps that mean records are absent — `trim` and
//! `data_loss` — are reported on stderr (`tally: gap data_loss e1n7..=e1n7`); bridges and
//! holes (epoch ends and never-written LSNs, which hold nothing by design) are not. A stalled reader (too few
//! storage nodes reachable to decide the next LSN) says so on stderr, and again when it
//! resumes. A bounded read shows a spinner with its progress on stderr when stderr is a
//! terminal (never in pipes or files).
//!
//! TIME (`--from`, `find-time`) is parsed by [`super::time::parse_time`]: RFC 3339, relative
//! like `-1h`, `now`, or `@<unix ms>`. `find-time` also takes plain Unix milliseconds; in
//! `--from` a plain number is an LSN.

use std::io::Write as _;

use anyhow::{Context as _, bail};
use tally_client::{
    Client, Delivery, FindTimeAccuracy, GapKind, ReadFrom, ReadOptions, ReadUntil, Stall,
};
use tally_common::{LogId, Lsn};

use super::ConnectArgs;
use super::progress::Progress;
use super::time::{now_ms, parse_time};

/// How records and gaps are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Payloads, one per line.
    Raw,
    /// `<lsn>\t<payload>` per line.
    Lsn,
    /// `<lsn>\t<timestamp (RFC 3339, UTC)>\t<payload>` per line.
    Time,
    /// One JSON object per record or gap.
    Json,
}

/// Where `tally read` starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartArg {
    Oldest,
    Lsn(Lsn),
    /// Unix milliseconds.
    Time(u64),
}

/// Parses `--from`: `oldest`, an LSN (`e5n42` or a plain number), or a TIME.
pub fn parse_start(s: &str) -> Result<StartArg, String> {
    let t = s.trim();
    if t.eq_ignore_ascii_case("oldest") {
        return Ok(StartArg::Oldest);
    }
    let lsn_like = t.starts_with('e') || (!t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()));
    if lsn_like {
        return t
            .parse::<Lsn>()
            .map(StartArg::Lsn)
            .map_err(|e| e.to_string());
    }
    parse_time(t, now_ms()).map(StartArg::Time)
}

/// Where `tally read` stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UntilArg {
    Tail,
    Lsn(Lsn),
}

/// Parses `--until`: `tail` or an LSN.
pub fn parse_until(s: &str) -> Result<UntilArg, String> {
    let t = s.trim();
    if t.eq_ignore_ascii_case("tail") {
        return Ok(UntilArg::Tail);
    }
    t.parse::<Lsn>()
        .map(UntilArg::Lsn)
        .map_err(|e| e.to_string())
}

/// `tally read` arguments.
#[derive(Debug, clap::Args)]
pub struct ReadArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// The log to read.
    #[arg(long)]
    pub log: LogId,
    /// Where to start: `oldest`, an LSN (`e5n42` or a plain number), or a TIME (RFC 3339,
    /// relative like `-1h`, `now`, or `@<unix ms>`).
    #[arg(long, default_value = "oldest", value_parser = parse_start)]
    pub from: StartArg,
    /// Where to stop: `tail` (the tail when the read starts) or an LSN (waits for it).
    #[arg(long, default_value = "tail", value_parser = parse_until, conflicts_with = "follow")]
    pub until: UntilArg,
    /// Never stop: keep printing records as they are appended.
    #[arg(long)]
    pub follow: bool,
    #[arg(long, value_enum, default_value_t = Format::Raw)]
    pub format: Format,
}

/// `tally tail` arguments.
#[derive(Debug, clap::Args)]
pub struct TailArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// The log to follow.
    #[arg(long)]
    pub log: LogId,
    #[arg(long, value_enum, default_value_t = Format::Raw)]
    pub format: Format,
}

/// `tally find-time` arguments.
#[derive(Debug, clap::Args)]
pub struct FindTimeArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    #[arg(long)]
    pub log: LogId,
    /// RFC 3339, relative like `-1h`, `now`, or Unix milliseconds (plain or `@…`).
    pub time: String,
    /// Answer from partition metadata only: cheaper, possibly earlier than the exact LSN.
    #[arg(long)]
    pub approximate: bool,
}

/// `tally trim` arguments.
#[derive(Debug, clap::Args)]
pub struct TrimArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    #[arg(long)]
    pub log: LogId,
    /// Last LSN to trim (inclusive); must not be past the log's tail.
    #[arg(long)]
    pub upto: Lsn,
}

pub async fn read(args: ReadArgs) -> anyhow::Result<()> {
    check_read_args(&args)?;
    let client = args.connect.client().await?;
    let from = match args.from {
        StartArg::Oldest => ReadFrom::Oldest,
        StartArg::Lsn(lsn) => ReadFrom::Lsn(lsn),
        StartArg::Time(ms) => ReadFrom::Time(ms),
    };
    let until = match (args.follow, args.until) {
        (true, _) => ReadUntil::Forever,
        (false, UntilArg::Tail) => ReadUntil::Tail,
        (false, UntilArg::Lsn(lsn)) => ReadUntil::Lsn(lsn),
    };
    let result = run_read(&client, args.log, from, until, args.format).await;
    client.close().await;
    result
}

pub async fn tail(args: TailArgs) -> anyhow::Result<()> {
    let client = args.connect.client().await?;
    let result = async {
        let tail = client
            .tail_lsn(args.log)
            .await
            .with_context(|| format!("cannot find the tail of log {}", args.log))?;
        // On stderr, so stdout stays pure data: from here on, nothing appended is missed.
        eprintln!("tally: following log {} from {}", args.log, tail.next());
        let from = ReadFrom::Lsn(tail.next());
        run_read(&client, args.log, from, ReadUntil::Forever, args.format).await
    }
    .await;
    client.close().await;
    result
}

pub async fn find_time(args: FindTimeArgs) -> anyhow::Result<()> {
    let t = args.time.trim();
    let ms = if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        t.parse::<u64>().map_err(|e| anyhow::anyhow!("{t}: {e}"))?
    } else {
        parse_time(t, now_ms()).map_err(anyhow::Error::msg)?
    };
    let accuracy = if args.approximate {
        FindTimeAccuracy::Approximate
    } else {
        FindTimeAccuracy::Strict
    };
    let client = args.connect.client().await?;
    let result = client.find_time(args.log, ms, accuracy).await;
    client.close().await;
    let lsn = result.with_context(|| format!("find-time on log {}", args.log))?;
    println!("{lsn}");
    Ok(())
}

pub async fn trim(args: TrimArgs) -> anyhow::Result<()> {
    let client = args.connect.client().await?;
    let result = client.trim(args.log, args.upto).await;
    client.close().await;
    result.with_context(|| format!("cannot trim log {} up to {}", args.log, args.upto))?;
    println!("trimmed log {} up to {}", args.log, args.upto);
    Ok(())
}

async fn run_read(
    client: &Client,
    log: LogId,
    from: ReadFrom,
    until: ReadUntil,
    format: Format,
) -> anyhow::Result<()> {
    let mut reader = client
        .read(log, ReadOptions::range(from, until))
        .await
        .with_context(|| format!("cannot read log {log}"))?;
    let follow = until == ReadUntil::Forever;
    let mut out = std::io::BufWriter::new(std::io::stdout());
    let mut stalls = reader.stall_updates();
    let mut was_stalled = false;
    // A bounded read can be long (a backfill): a spinner on a terminal's stderr.
    let progress = if follow {
        Progress::none()
    } else {
        Progress::spinner(format!("reading log {log}"))
    };
    let mut records = 0u64;
    let result = loop {
        let item = tokio::select! {
            item = reader.next() => item,
            changed = stalls.changed() => {
                if changed.is_ok() {
                    let stall = stalls.borrow_and_update().clone();
                    report_stall(stall.as_ref(), &mut was_stalled);
                }
                continue;
            }
        };
        let Some(item) = item else { break Ok(()) };
        let delivery = match item.with_context(|| format!("reading log {log}")) {
            Ok(d) => d,
            Err(e) => break Err(e),
        };
        if matches!(delivery, Delivery::Record(_)) {
            records += 1;
            if records.is_multiple_of(1024) && progress.is_shown() {
                progress.set_message(format!(
                    "reading log {log}: {records} records, at {}",
                    delivery.to()
                ));
            }
        }
        let written = print_delivery(&mut out, &delivery, format).and_then(|()| {
            // A follower prints as records come; a bounded read flushes at the end.
            if follow { out.flush() } else { Ok(()) }
        });
        if let Err(e) = written {
            break stdout_closed(e);
        }
    };
    progress.finish();
    result?;
    match out.flush() {
        Ok(()) => Ok(()),
        Err(e) => stdout_closed(e),
    }
}

/// A closed stdout (`tally read | head`) ends the command quietly; other errors do not.
pub(crate) fn stdout_closed(e: std::io::Error) -> anyhow::Result<()> {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        Ok(())
    } else {
        Err(e).context("cannot write to stdout")
    }
}

fn report_stall(stall: Option<&Stall>, was_stalled: &mut bool) {
    match stall {
        Some(s) => {
            let nodes: Vec<String> = s
                .waiting_for
                .iter()
                .map(|n| match s.errors.iter().find(|(e, _)| e == n) {
                    Some((_, err)) => format!("{n} ({err})"),
                    None => n.to_string(),
                })
                .collect();
            eprintln!(
                "tally: read stalled at {}: waiting for {}",
                s.at,
                nodes.join(", ")
            );
            *was_stalled = true;
        }
        None if *was_stalled => {
            eprintln!("tally: read resumed");
            *was_stalled = false;
        }
        None => {}
    }
}

/// The name of a gap kind in output.
pub fn gap_name(kind: GapKind) -> &'static str {
    match kind {
        GapKind::Hole => "hole",
        GapKind::Bridge => "bridge",
        GapKind::Trim => "trim",
        GapKind::DataLoss => "data_loss",
        GapKind::NoRecords => "no_records",
        GapKind::Filtered => "filtered",
    }
}

/// Writes one delivery in `format` (gaps of `raw`/`lsn`/`time` go to stderr).
pub fn print_delivery(
    out: &mut impl std::io::Write,
    delivery: &Delivery,
    format: Format,
) -> std::io::Result<()> {
    match (delivery, format) {
        (Delivery::Record(r), Format::Raw) => {
            out.write_all(&r.payload)?;
            out.write_all(b"\n")
        }
        (Delivery::Record(r), Format::Lsn) => {
            write!(out, "{}\t", r.header.lsn)?;
            out.write_all(&r.payload)?;
            out.write_all(b"\n")
        }
        (Delivery::Record(r), Format::Time) => {
            let at = super::time::format_rfc3339(r.header.timestamp_ms);
            write!(out, "{}\t{at}\t", r.header.lsn)?;
            out.write_all(&r.payload)?;
            out.write_all(b"\n")
        }
        (Delivery::Record(r), Format::Json) => {
            let mut obj = serde_json::Map::new();
            obj.insert("lsn".into(), r.header.lsn.to_string().into());
            obj.insert("timestamp_ms".into(), r.header.timestamp_ms.into());
            match std::str::from_utf8(&r.payload) {
                Ok(s) => obj.insert("payload".into(), s.into()),
                Err(_) => obj.insert("payload_hex".into(), hex(&r.payload).into()),
            };
            writeln!(out, "{}", serde_json::Value::Object(obj))
        }
        (Delivery::Gap { kind, from, to }, Format::Json) => {
            let value = serde_json::json!({
                "gap": gap_name(*kind),
                "from": from.to_string(),
                "to": to.to_string(),
            });
            writeln!(out, "{value}")
        }
        (Delivery::Gap { kind, from, to }, _) => {
            if matches!(kind, GapKind::Trim | GapKind::DataLoss) {
                eprintln!("tally: gap {} {from}..={to}", gap_name(*kind));
            }
            Ok(())
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn check_read_args(args: &ReadArgs) -> anyhow::Result<()> {
    if let (StartArg::Lsn(from), UntilArg::Lsn(until)) = (args.from, args.until)
        && !args.follow
        && from > until
    {
        bail!("--from {from} is past --until {until}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use tally_client::Delivery;
    use tally_common::wire::ReadRecord;
    use tally_common::{Copyset, Epoch, Esn, NodeId, RecordFlags, RecordHeader, payload_crc32};

    use super::*;

    const NOW: u64 = 1_763_719_200_000; // 2025-11-21T10:00:00Z, see `time`

    #[test]
    fn start_and_until_parse() {
        assert_eq!(parse_start("oldest"), Ok(StartArg::Oldest));
        assert_eq!(
            parse_start("e2n5"),
            Ok(StartArg::Lsn(Lsn::new(Epoch(2), Esn(5))))
        );
        assert_eq!(parse_start("42"), Ok(StartArg::Lsn(Lsn(42))));
        assert_eq!(parse_start("@1000"), Ok(StartArg::Time(1000)));
        assert_eq!(parse_start("2025-11-21T10:00:00Z"), Ok(StartArg::Time(NOW)));
        assert!(matches!(parse_start("-1h"), Ok(StartArg::Time(_))));
        assert!(parse_start("e2").is_err());
        assert_eq!(parse_until("tail"), Ok(UntilArg::Tail));
        assert_eq!(
            parse_until("e1n9"),
            Ok(UntilArg::Lsn(Lsn::new(Epoch(1), Esn(9))))
        );
        assert!(parse_until("later").is_err());
    }

    fn record(payload: &[u8]) -> Delivery {
        Delivery::Record(ReadRecord {
            header: RecordHeader {
                log: LogId(1),
                lsn: Lsn::new(Epoch(1), Esn(5)),
                timestamp_ms: 77,
                lng: Esn(0),
                wave_or_seal: 1,
                flags: RecordFlags::NONE,
                copyset: Copyset::new(vec![NodeId(1)]).unwrap(),
                payload_crc32: payload_crc32(payload),
            },
            payload: payload.to_vec(),
        })
    }

    fn printed(d: &Delivery, format: Format) -> String {
        let mut out = Vec::new();
        print_delivery(&mut out, d, format).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn deliveries_print() {
        let r = record(b"hello");
        assert_eq!(printed(&r, Format::Raw), "hello\n");
        assert_eq!(printed(&r, Format::Lsn), "e1n5\thello\n");
        assert_eq!(
            printed(&r, Format::Time),
            "e1n5\t1970-01-01T00:00:00.077Z\thello\n"
        );
        let json: serde_json::Value = serde_json::from_str(&printed(&r, Format::Json)).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"lsn": "e1n5", "timestamp_ms": 77, "payload": "hello"})
        );
        let binary: serde_json::Value =
            serde_json::from_str(&printed(&record(&[0xff, 0x01]), Format::Json)).unwrap();
        assert_eq!(binary["payload_hex"], "ff01");
        let gap = Delivery::Gap {
            kind: GapKind::DataLoss,
            from: Lsn::new(Epoch(1), Esn(7)),
            to: Lsn::new(Epoch(1), Esn(8)),
        };
        // Gaps go to stderr in raw and lsn formats, never into the data.
        assert_eq!(printed(&gap, Format::Raw), "");
        assert_eq!(printed(&gap, Format::Lsn), "");
        let json: serde_json::Value = serde_json::from_str(&printed(&gap, Format::Json)).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"gap": "data_loss", "from": "e1n7", "to": "e1n8"})
        );
    }
}
