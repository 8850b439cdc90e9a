//! Driving a `ReadStream` over the simulated storage nodes at the end of a run: each open
//! stream is served in order from its node's copies, chunk by chunk, in a random order across
//! streams; when no stream has anything new, virtual time moves on so grace periods expire.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use rand::Rng;
use tally_client::reader::{Action, ReadStream, ReadStreamConfig, StreamId};
use tally_common::quorum::AuthStatus;
use tally_common::wire::{GapKind, ReadFilter};
use tally_common::{Lsn, NodeId};

use super::check::ReadOutcome;
use super::net::MS;
use super::world::{LOG, World};

/// Bound on one reader's steps (a livelock guard; a normal final read takes a few thousand).
const MAX_STEPS: u64 = 200_000;

#[derive(Debug)]
struct Stream {
    /// Next LSN this stream has not passed.
    next: Lsn,
    until: Lsn,
    window_until: Lsn,
    filter: ReadFilter,
}

/// How the reader reads.
#[derive(Debug, Clone)]
pub(crate) struct ReaderSpec {
    pub(crate) name: String,
    pub(crate) single_copy: bool,
    /// Nodes the reader never hears from.
    pub(crate) down: BTreeSet<NodeId>,
}

/// Reads `1 ..= until` with one `ReadStream`.
pub(crate) fn read_log(w: &mut World, spec: &ReaderSpec, until: Lsn) -> ReadOutcome {
    let meta = w.es.meta.clone();
    let mut config = ReadStreamConfig::new(LOG, Lsn::OLDEST, until);
    config.window = 64;
    config.window_bytes = u64::MAX;
    config.grace = Duration::from_millis(100);
    config.single_copy = spec.single_copy;
    config.shuffle_seed = w.rng.random();
    let mut rs = ReadStream::new(config, &meta).expect("valid read range");
    for (id, node) in w.storage_nodes() {
        if node.data_loss {
            rs.on_node_status(*id, AuthStatus::Unavailable);
        }
    }
    for n in &spec.down {
        rs.on_node_down(*n);
    }
    let mut streams: BTreeMap<StreamId, Stream> = BTreeMap::new();
    let mut deliveries = Vec::new();
    let mut done = false;
    let mut clock = w.now;
    let mut idle_ticks = 0;
    let mut iterations = 0u64;
    while iterations < MAX_STEPS {
        iterations += 1;
        while let Some(action) = rs.poll_action() {
            match action {
                Action::OpenStream {
                    stream,
                    from,
                    until,
                    window_until,
                    filter,
                } => {
                    streams.insert(
                        stream,
                        Stream {
                            next: from,
                            until,
                            window_until,
                            filter,
                        },
                    );
                }
                Action::SendWindow { stream, until } => {
                    if let Some(s) = streams.get_mut(&stream) {
                        s.window_until = s.window_until.max(until);
                    }
                }
                Action::CloseStream { stream } => {
                    streams.remove(&stream);
                }
                Action::FetchMetadata { .. } => rs.on_epoch_metadata(&meta),
                Action::Done => done = true,
                Action::Rewind { .. } | Action::Stalled { .. } => {}
            }
        }
        while let Some(d) = rs.poll_delivery() {
            idle_ticks = 0;
            deliveries.push(d);
        }
        if done {
            break;
        }
        // Streams that have something new to say.
        let mut ready = Vec::new();
        for (id, s) in &streams {
            if spec.down.contains(&id.node) || s.next > s.until {
                continue;
            }
            let node = &w.storage_nodes()[&id.node];
            let (records, passed) =
                node.read_chunk(LOG, s.next, s.window_until, s.until, &s.filter, 8);
            if let Some(passed) = passed {
                ready.push((*id, records, passed));
            }
        }
        if ready.is_empty() {
            idle_ticks += 1;
            if idle_ticks > 100 {
                break; // stalled: nothing moves any more
            }
            clock += 20 * MS;
            rs.on_tick(w.instant_at(clock));
            continue;
        }
        let (id, records, passed) = ready.swap_remove(w.rng.random_range(0..ready.len()));
        let last = records.last().map(|r| r.header.lsn);
        if !records.is_empty() {
            rs.on_records(id, records);
        }
        let from = last.map_or(streams[&id].next, Lsn::next);
        if passed >= from {
            rs.on_gap(id, GapKind::NoRecords, from, passed);
        }
        let s = streams.get_mut(&id).expect("ready streams exist");
        s.next = passed.next();
        if passed >= s.until {
            rs.on_stream_done(id);
        }
    }
    w.trace(|| format!("{}: {iterations} steps, {:?}", spec.name, rs.stats()));
    ReadOutcome {
        name: spec.name.clone(),
        deliveries,
        done,
    }
}
