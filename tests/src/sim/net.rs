//! The simulated network's vocabulary: actors, messages, and the per-seed fault plan (network
//! parameters and timed faults).

use std::fmt::Write as _;

use rand::Rng;
use rand::rngs::StdRng;
use tally_common::wire::client::Grant;
use tally_common::wire::{ReadRecord, StoreBatch, StoreStatus};
use tally_common::{Durability, Epoch, Esn, Lsn, NodeId, RecoveredEpoch};
use tally_epochstore::{Activation, EpochStoreError};

use super::SimConfig;

/// Virtual time in microseconds since the start of the run.
pub(crate) type Time = u64;

pub(crate) const MS: Time = 1_000;

/// Everything that sends or receives messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Actor {
    EpochStore,
    Seq(NodeId),
    Storage(NodeId),
    Client(u32),
}

/// The answer of a sequencer to `Sequence`.
#[derive(Debug, Clone)]
pub(crate) enum SeqReply {
    Granted(Grant),
    NoBufs,
    Preempted { seal: Epoch },
    Redirect { owner: NodeId },
    Unavailable,
}

/// A storage node's answer to a node-protocol request.
#[derive(Debug, Clone)]
pub(crate) enum NodeReply {
    Sealed {
        seal: Epoch,
        lng: Esn,
        tail: Lsn,
        data_loss: bool,
    },
    Preempted {
        seal: Epoch,
    },
    Digest(Vec<ReadRecord>),
    Stored(StoreStatus),
    Cleaned,
}

/// The epoch store's answers.
#[derive(Debug, Clone)]
pub(crate) enum EsReply {
    Activated(Box<Activation>),
    ActivateFailed(EpochStoreError),
    LceWritten { epoch: Epoch },
    LceFailed { epoch: Epoch, current: Epoch },
}

/// Every message of the simulation. `rpc` names the sender's outstanding request.
#[derive(Debug, Clone)]
pub(crate) enum Msg {
    Sequence {
        client: u32,
        rpc: u64,
        count: u32,
        no_redirect: bool,
    },
    ReportStored {
        first: Lsn,
        count: u32,
    },
    SequenceReply {
        rpc: u64,
        reply: SeqReply,
    },
    /// A client's or recovery's store; answered with `NodeReply::Stored` to `from`.
    Store {
        rpc: u64,
        batch: StoreBatch,
    },
    /// `sequencer_epoch`: the epoch of the sequencer that releases (the wire's `Release`
    /// does not carry it; the model's purging needs it, see `storage`).
    Release {
        lsn: Lsn,
        sequencer_epoch: Epoch,
    },
    Seal {
        rpc: u64,
        seal: Epoch,
    },
    StartDigest {
        rpc: u64,
        epoch: Epoch,
        after: Esn,
    },
    Clean {
        rpc: u64,
        epoch: Epoch,
        seal: Epoch,
    },
    NodeReply {
        rpc: u64,
        node: NodeId,
        reply: NodeReply,
    },
    /// Local to a client: the store `rpc` could not be sent (the node is down).
    TransportFailed {
        rpc: u64,
    },
    Activate {
        rpc: u64,
        if_current: Option<Epoch>,
    },
    WriteLce {
        rpc: u64,
        epoch: Epoch,
        tail: Lsn,
        outcome: Option<RecoveredEpoch>,
    },
    EsReply {
        rpc: u64,
        reply: EsReply,
    },
}

impl Msg {
    /// Requests may be delivered twice (retransmission); answers and one-way notes never are
    /// duplicated by the model (their duplicates would be dropped by the caller anyway).
    pub(crate) fn is_request(&self) -> bool {
        matches!(
            self,
            Msg::Sequence { .. }
                | Msg::Store { .. }
                | Msg::Seal { .. }
                | Msg::StartDigest { .. }
                | Msg::Clean { .. }
                | Msg::Activate { .. }
                | Msg::WriteLce { .. }
                | Msg::ReportStored { .. }
                | Msg::Release { .. }
        )
    }
}

/// A fault scheduled at a time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Fault {
    /// Crash `actor` (a storage node or a sequencer) for `down_for`.
    Crash { actor: Actor, down_for: Time },
    /// Pause `actor` for `paused_for`: it holds every message until it wakes.
    Pause { actor: Actor, paused_for: Time },
    /// Drop every message to and from `actor` for `cut_for`.
    Isolate { actor: Actor, cut_for: Time },
}

/// The seed's network parameters and timed faults.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultPlan {
    pub(crate) durability: Durability,
    pub(crate) loss: f64,
    pub(crate) duplication: f64,
    /// Base one-way delay range.
    pub(crate) delay_min: Time,
    pub(crate) delay_max: Time,
    /// Probability of a long delay (a spike that reorders).
    pub(crate) spike: f64,
    pub(crate) spike_max: Time,
    /// Probability that a storage node refuses a client store with `Overloaded`.
    pub(crate) overload: f64,
    pub(crate) faults: Vec<(Time, Fault)>,
    /// When clients stop issuing appends and the faults heal.
    pub(crate) heal_at: Time,
}

impl FaultPlan {
    /// Draws the plan of a run from its random source.
    pub(crate) fn draw(rng: &mut StdRng, config: &SimConfig) -> FaultPlan {
        let durability = if rng.random_bool(0.3) {
            Durability::Fast
        } else {
            Durability::Durable
        };
        let loss = [0.0, 0.0, 0.002, 0.01, 0.03][rng.random_range(0..5)];
        let duplication = [0.0, 0.005, 0.02][rng.random_range(0..3)];
        let delay_min = rng.random_range(50..300);
        let delay_max = delay_min + rng.random_range(200..3 * MS);
        let spike = [0.0, 0.002, 0.01][rng.random_range(0..3)];
        let overload = [0.0, 0.0, 0.01][rng.random_range(0..3)];
        let heal_at = 600 * MS + Time::from(config.appends) * 3 * MS;
        let mut storage: Vec<NodeId> = (1..=config.storage_nodes).map(NodeId).collect();
        if durability == Durability::Fast {
            // A fast-mode node that crashes comes back not authoritative (DataLoss) for good,
            // and nothing here rebuilds it: crash at most R − 1 distinct nodes, so recovery
            // and readers keep an authoritative f-majority and the run stays checkable.
            let keep = usize::from(config.replication.saturating_sub(1)).max(1);
            while storage.len() > keep {
                storage.swap_remove(rng.random_range(0..storage.len()));
            }
        }
        let seqs = [NodeId(101), NodeId(102)];
        let mut faults = Vec::new();
        let n = rng.random_range(1..=5);
        for _ in 0..n {
            let at = rng.random_range(50 * MS..heal_at.saturating_sub(100 * MS).max(60 * MS));
            let pick_storage = |rng: &mut StdRng| storage[rng.random_range(0..storage.len())];
            let fault = match rng.random_range(0..100) {
                0..25 => Fault::Crash {
                    actor: Actor::Storage(pick_storage(rng)),
                    down_for: rng.random_range(10 * MS..400 * MS),
                },
                25..45 => Fault::Crash {
                    actor: Actor::Seq(seqs[rng.random_range(0..2)]),
                    down_for: rng.random_range(10 * MS..600 * MS),
                },
                45..70 => Fault::Pause {
                    actor: Actor::Seq(seqs[rng.random_range(0..2)]),
                    paused_for: rng.random_range(50 * MS..2_500 * MS),
                },
                70..80 => Fault::Pause {
                    actor: Actor::Storage(pick_storage(rng)),
                    paused_for: rng.random_range(10 * MS..500 * MS),
                },
                _ => {
                    let actor = match rng.random_range(0..4) {
                        0 => Actor::EpochStore,
                        1 => Actor::Seq(seqs[rng.random_range(0..2)]),
                        _ => Actor::Storage(pick_storage(rng)),
                    };
                    Fault::Isolate {
                        actor,
                        cut_for: rng.random_range(20 * MS..800 * MS),
                    }
                }
            };
            faults.push((at, fault));
        }
        faults.sort_by_key(|(at, _)| *at);
        FaultPlan {
            durability,
            loss,
            duplication,
            delay_min,
            delay_max,
            spike,
            spike_max: 300 * MS,
            overload,
            faults,
            heal_at,
        }
    }

    /// The plan in words.
    pub(crate) fn describe(&self) -> String {
        let mut s = format!(
            "{:?}, loss {}, dup {}, delay {}..{}us, spikes {}",
            self.durability,
            self.loss,
            self.duplication,
            self.delay_min,
            self.delay_max,
            self.spike
        );
        for (at, f) in &self.faults {
            let _ = match f {
                Fault::Crash { actor, down_for } => write!(
                    s,
                    "; crash {} @{}ms for {}ms",
                    actor_name(*actor),
                    at / MS,
                    down_for / MS
                ),
                Fault::Pause { actor, paused_for } => write!(
                    s,
                    "; pause {} @{}ms for {}ms",
                    actor_name(*actor),
                    at / MS,
                    paused_for / MS
                ),
                Fault::Isolate { actor, cut_for } => write!(
                    s,
                    "; isolate {} @{}ms for {}ms",
                    actor_name(*actor),
                    at / MS,
                    cut_for / MS
                ),
            };
        }
        s
    }
}

pub(crate) fn actor_name(a: Actor) -> String {
    match a {
        Actor::EpochStore => "epoch-store".into(),
        Actor::Seq(n) => format!("seq{}", n.0),
        Actor::Storage(n) => format!("n{}", n.0),
        Actor::Client(c) => format!("client{c}"),
    }
}
