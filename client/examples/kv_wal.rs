//! A write-ahead log for a small key-value store: every change is appended to a log before it
//! is applied; on start the store loads its snapshot and replays the log after it; a snapshot
//! is written with the LSN it covers, and the log is trimmed up to that LSN.
//!
//! ```sh
//! cargo run -p tally -- dev                                  # in another shell
//! kv() { cargo run -q -p tally-client --example kv_wal -- --log 3 --dir /tmp/kv "$@"; }
//! kv set colour blue
//! kv set size 10 del colour
//! kv snapshot
//! kv get size
//! ```
//!
//! Each run is a restart: it opens the store (snapshot + replay), runs its commands in order
//! (`set KEY VALUE`, `del KEY`, `get KEY`, `snapshot`) and prints the state as its last line:
//! `state: k=v k=v`. Keys and values are single words (no spaces, tabs or newlines).
//!
//! Files in `--dir`: `snapshot` (`tally-kv-snapshot 1`, `covers <lsn>`, then `key<TAB>value`
//! lines), written to a temporary file, synced, renamed and the directory synced, so a crash
//! leaves the old snapshot or the new one.
//!
//! Records: `S<TAB>key<TAB>value`, `D<TAB>key`, and `O` (an "open" barrier). A store has one
//! writer at a time. The barrier makes a restart see every write the previous run had
//! acknowledged: an acknowledged append is durable at once but readers see it only after the
//! sequencer released it, so opening appends `O` and replays up to its LSN (everything before
//! a released LSN is final). A write whose outcome was unknown when the writer died is settled
//! by then, too: it is in the log and replayed, or it became a hole.

mod common;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail, ensure};
use tally_client::{Client, Delivery, GapKind, ReadFrom, ReadOptions, ReadUntil};
use tally_common::{LogId, Lsn};

const SNAPSHOT_MAGIC: &str = "tally-kv-snapshot 1";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = common::Args::parse(&["log", "dir"])?;
    let log: LogId = args.required("log")?;
    let dir: PathBuf = args.required("dir")?;
    let commands = parse_commands(&args.words)?;
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let client = args.connect().await?;

    let mut store = Store::open(client.clone(), log, dir).await?;
    for command in commands {
        match command {
            Command::Set(k, v) => {
                let lsn = store.write(Op::Set(k.clone(), v.clone())).await?;
                println!("set {k}={v} at {lsn}");
            }
            Command::Del(k) => {
                let lsn = store.write(Op::Del(k.clone())).await?;
                println!("del {k} at {lsn}");
            }
            Command::Get(k) => match store.state.get(&k) {
                Some(v) => println!("get {k} = {v}"),
                None => println!("get {k}: not found"),
            },
            Command::Snapshot => {
                let covers = store.snapshot().await?;
                println!("snapshot covers {covers}; log trimmed up to it");
            }
        }
    }
    let pairs: Vec<String> = store
        .state
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    println!("state: {}", pairs.join(" "));
    client.close().await;
    Ok(())
}

enum Command {
    Set(String, String),
    Del(String),
    Get(String),
    Snapshot,
}

fn parse_commands(words: &[String]) -> anyhow::Result<Vec<Command>> {
    let word = |w: Option<&String>, what: &str| -> anyhow::Result<String> {
        let w = w.with_context(|| format!("missing {what}"))?;
        ensure!(
            !w.is_empty() && !w.contains(['\t', '\n', ' ', '=']),
            "{what} {w:?} must be one word without tabs, newlines, spaces or '='"
        );
        Ok(w.clone())
    };
    let mut it = words.iter();
    let mut commands = Vec::new();
    while let Some(c) = it.next() {
        commands.push(match c.as_str() {
            "set" => Command::Set(word(it.next(), "key")?, word(it.next(), "value")?),
            "del" => Command::Del(word(it.next(), "key")?),
            "get" => Command::Get(word(it.next(), "key")?),
            "snapshot" => Command::Snapshot,
            other => bail!("unknown command {other:?} (set KEY VALUE, del KEY, get KEY, snapshot)"),
        });
    }
    Ok(commands)
}

/// One change, as appended to the log.
enum Op {
    Set(String, String),
    Del(String),
    /// The open barrier: changes nothing.
    Open,
}

impl Op {
    fn encode(&self) -> Vec<u8> {
        match self {
            Op::Set(k, v) => format!("S\t{k}\t{v}"),
            Op::Del(k) => format!("D\t{k}"),
            Op::Open => "O".to_owned(),
        }
        .into_bytes()
    }

    fn decode(payload: &[u8]) -> anyhow::Result<Op> {
        let text = std::str::from_utf8(payload).context("a log record is not UTF-8")?;
        let mut parts = text.split('\t');
        let op = match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some("S"), Some(k), Some(v), None) => Op::Set(k.to_owned(), v.to_owned()),
            (Some("D"), Some(k), None, None) => Op::Del(k.to_owned()),
            (Some("O"), None, None, None) => Op::Open,
            _ => bail!("not a record of this store: {text:?}"),
        };
        Ok(op)
    }

    fn apply(self, state: &mut BTreeMap<String, String>) {
        match self {
            Op::Set(k, v) => {
                state.insert(k, v);
            }
            Op::Del(k) => {
                state.remove(&k);
            }
            Op::Open => {}
        }
    }
}

struct Store {
    client: Client,
    log: LogId,
    dir: PathBuf,
    state: BTreeMap<String, String>,
    /// The last LSN whose change is in `state`.
    applied: Lsn,
}

impl Store {
    /// Loads the snapshot (if any), then replays the log after it up to a new barrier.
    async fn open(client: Client, log: LogId, dir: PathBuf) -> anyhow::Result<Store> {
        let (state, covers) = match load_snapshot(&dir.join("snapshot"))? {
            Some((state, covers)) => (state, covers),
            None => (BTreeMap::new(), Lsn::INVALID),
        };
        let mut store = Store {
            client,
            log,
            dir,
            state,
            applied: covers,
        };
        let (replayed, barrier) = store.catch_up().await?;
        println!(
            "opened: snapshot covers {covers}, replayed {replayed} records from {} to {barrier}",
            covers.next()
        );
        Ok(store)
    }

    /// Appends a barrier and applies every record after `applied` up to it.
    async fn catch_up(&mut self) -> anyhow::Result<(usize, Lsn)> {
        let barrier = self.write_log(&Op::Open).await?;
        let from = self.applied.next();
        let mut reader = self
            .client
            .read(
                self.log,
                ReadOptions::range(ReadFrom::Lsn(from), ReadUntil::Lsn(barrier)),
            )
            .await
            .context("start replaying the log")?;
        let mut replayed = 0;
        while let Some(item) = reader.next().await {
            match item.context("replay the log")? {
                Delivery::Record(r) => {
                    Op::decode(&r.payload)?.apply(&mut self.state);
                    replayed += 1;
                }
                // A trim past the snapshot, or lost records: changes are missing, and a store
                // built without them would be wrong. Refuse to open.
                Delivery::Gap {
                    kind: kind @ (GapKind::Trim | GapKind::DataLoss),
                    from,
                    to,
                } => bail!(
                    "log {} has a {kind:?} gap {from}..={to} after the snapshot (covers {}): \
                     changes are missing",
                    self.log,
                    self.applied
                ),
                // Holes and bridges never held a change.
                Delivery::Gap { .. } => {}
            }
        }
        self.applied = barrier;
        Ok((replayed, barrier))
    }

    /// Appends `op` to the log, then applies it. An error may leave the change in the log
    /// (unknown outcome): the next open shows whether it is.
    async fn write(&mut self, op: Op) -> anyhow::Result<Lsn> {
        let lsn = self.write_log(&op).await?;
        op.apply(&mut self.state);
        self.applied = lsn;
        Ok(lsn)
    }

    async fn write_log(&self, op: &Op) -> anyhow::Result<Lsn> {
        match self.client.append(self.log, op.encode()).await {
            Ok(lsn) => Ok(lsn),
            Err(e) if e.certainly_not_appended() => {
                Err(e).context("the change was not written (certainly)")
            }
            Err(e) => {
                Err(e).context("the change may or may not be in the log; the next open settles it")
            }
        }
    }

    /// Writes a snapshot of everything up to a new barrier, then trims the log up to it.
    async fn snapshot(&mut self) -> anyhow::Result<Lsn> {
        // The barrier makes `applied` a released LSN, which a trim may reach.
        self.catch_up().await?;
        let covers = self.applied;
        let path = self.dir.join("snapshot");
        let tmp = self.dir.join("snapshot.tmp");
        let mut text = format!("{SNAPSHOT_MAGIC}\ncovers {}\n", covers.0);
        for (k, v) in &self.state {
            text.push_str(&format!("{k}\t{v}\n"));
        }
        let mut file =
            std::fs::File::create(&tmp).with_context(|| format!("create {}", tmp.display()))?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(&self.dir)?.sync_all()?;
        // Only once the snapshot is durable may the records it covers go.
        self.client
            .trim(self.log, covers)
            .await
            .with_context(|| format!("snapshot written (covers {covers}), but trimming failed"))?;
        Ok(covers)
    }
}

fn load_snapshot(path: &Path) -> anyhow::Result<Option<(BTreeMap<String, String>, Lsn)>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("read {}", path.display())),
    };
    let bad = || format!("{} is not a snapshot of this store", path.display());
    let mut lines = text.lines();
    ensure!(lines.next() == Some(SNAPSHOT_MAGIC), bad());
    let covers = lines
        .next()
        .and_then(|l| l.strip_prefix("covers "))
        .and_then(|n| n.parse::<u64>().ok())
        .with_context(bad)?;
    let mut state = BTreeMap::new();
    for line in lines {
        let (k, v) = line.split_once('\t').with_context(bad)?;
        state.insert(k.to_owned(), v.to_owned());
    }
    Ok(Some((state, Lsn(covers))))
}
