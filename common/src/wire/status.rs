//! [`NodeStatus`]: what one node says about itself in answer to `GetNodeStatus` (client
//! protocol): its roles, health, counters and rates, and per log it sequences the epoch,
//! release point and release lag. `tally status` and the admin status page gather one from
//! every node of the membership view.

use crate::ids::{Epoch, LogId, Lsn, NodeId};
use crate::meta::{Roles, StorageState};

/// Most logs one [`SequencerStatus`] lists; `logs_running` counts them all.
pub const MAX_STATUS_LOGS: usize = 4096;
/// Most problems one [`NodeStatus`] lists.
pub const MAX_STATUS_PROBLEMS: usize = 16;

/// Events per second in thousandths (integers keep the wire message `Eq`).
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
pub struct Rate {
    pub milli_per_sec: u64,
}

impl Rate {
    /// `events` over `millis` milliseconds (zero when no time passed).
    pub fn over(events: u64, millis: u64) -> Rate {
        if millis == 0 {
            return Rate::default();
        }
        let milli = u128::from(events) * 1_000_000 / u128::from(millis);
        Rate {
            milli_per_sec: u64::try_from(milli).unwrap_or(u64::MAX),
        }
    }

    /// Events per second.
    pub fn per_sec(self) -> f64 {
        self.milli_per_sec as f64 / 1000.0
    }
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let r = self.per_sec();
        if r >= 100.0 || r == 0.0 {
            write!(f, "{r:.0}/s")
        } else {
            write!(f, "{r:.1}/s")
        }
    }
}

/// One node's answer to `GetNodeStatus`.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct NodeStatus {
    pub node: NodeId,
    pub roles: Roles,
    /// The `tally` version the node runs.
    pub version: String,
    /// Milliseconds since the node started.
    pub uptime_ms: u64,
    /// The node's admin HTTP address (`/metrics`, `/health`, the status page), if it has one.
    pub admin: Option<String>,
    /// The process is up and its roles run (what `/health` says).
    pub healthy: bool,
    /// The node is in membership and can serve (what `/ready` says).
    pub ready: bool,
    /// Why it is not healthy or not ready, in words.
    pub problems: Vec<String>,
    pub sequencer: Option<SequencerStatus>,
    pub storage: Option<StorageStatus>,
}

/// The sequencer role of a node.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct SequencerStatus {
    /// LSNs granted since the node started.
    pub appends: u64,
    /// LSNs granted per second, over the last few seconds.
    pub append_rate: Rate,
    /// Logs this node runs an epoch of.
    pub logs_running: u32,
    /// Log recoveries running now.
    pub recoveries_active: u64,
    /// Log recoveries finished since the node started.
    pub recoveries_completed: u64,
    /// Log recoveries that failed or were cut short since the node started.
    pub recoveries_failed: u64,
    /// The logs it runs, in log order (at most [`MAX_STATUS_LOGS`]).
    pub logs: Vec<SequencedLog>,
}

/// One log as its sequencer sees it.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct SequencedLog {
    pub log: LogId,
    /// The epoch it runs.
    pub epoch: Epoch,
    /// Readers may read up to here.
    pub last_released: Lsn,
    /// The next LSN a grant would start at.
    pub next_lsn: Lsn,
    /// LSNs of this epoch granted but not released yet (the release lag).
    pub unreleased: u64,
    /// Releases wait for recovery of older epochs.
    pub recovering: bool,
    /// A newer sequencer sealed this epoch; the log moves on its next append.
    pub preempted: bool,
    /// LSNs granted per second, over the last few seconds.
    pub append_rate: Rate,
}

/// The storage role of a node.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct StorageStatus {
    pub state: StorageState,
    /// Records stored since the node started.
    pub stored_records: u64,
    /// Payload bytes stored since the node started.
    pub stored_bytes: u64,
    /// Records stored per second, over the last few seconds.
    pub store_rate: Rate,
    /// Payload bytes stored per second, over the last few seconds.
    pub store_bytes_rate: Rate,
    /// Store batches admitted and not answered yet (the store queue).
    pub stores_in_flight: u32,
    /// WAL fsyncs since the node started.
    pub fsyncs: u64,
    /// LogsDB time partitions.
    pub partitions: u32,
    /// Logs with data or metadata in LogsDB.
    pub logs: u32,
    pub read_streams_open: u32,
    /// Records shipped by read streams per second, over the last few seconds.
    pub read_rate: Rate,
    /// Free bytes on the data directory's file system at the last check.
    pub free_disk_bytes: u64,
}

impl NodeStatus {
    /// Checks the bounds a decoder must enforce.
    pub(crate) fn check(&self) -> Result<(), String> {
        if self.problems.len() > MAX_STATUS_PROBLEMS {
            return Err(format!("{} problems in a node status", self.problems.len()));
        }
        if let Some(s) = &self.sequencer
            && s.logs.len() > MAX_STATUS_LOGS
        {
            return Err(format!("{} logs in a node status", s.logs.len()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use proptest::collection::vec;
    use proptest::prelude::*;

    use super::*;
    use crate::limits::Limits;
    use crate::wire::WireMessage;
    use crate::wire::client::ClientResponse;

    fn rate() -> impl Strategy<Value = Rate> {
        any::<u64>().prop_map(|milli_per_sec| Rate { milli_per_sec })
    }

    fn sequenced() -> impl Strategy<Value = SequencedLog> {
        (
            1u64..1000,
            any::<u32>(),
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            any::<(bool, bool)>(),
            rate(),
        )
            .prop_map(|(log, epoch, released, next, unreleased, (rec, pre), r)| {
                SequencedLog {
                    log: LogId(log),
                    epoch: Epoch(epoch),
                    last_released: Lsn(released),
                    next_lsn: Lsn(next),
                    unreleased,
                    recovering: rec,
                    preempted: pre,
                    append_rate: r,
                }
            })
    }

    fn node_status() -> impl Strategy<Value = NodeStatus> {
        (
            any::<u32>(),
            any::<(bool, bool, bool, bool)>(),
            ".{0,12}",
            any::<u64>(),
            proptest::option::of(".{0,20}"),
            vec(".{0,30}", 0..=MAX_STATUS_PROBLEMS),
            proptest::option::of((vec(sequenced(), 0..8), any::<[u64; 4]>(), rate())),
            proptest::option::of((any::<[u64; 5]>(), any::<[u32; 4]>(), rate())),
        )
            .prop_map(
                |(node, (seq, sto, healthy, ready), version, uptime_ms, admin, problems, q, st)| {
                    NodeStatus {
                        node: NodeId(node),
                        roles: Roles {
                            sequencer: seq,
                            storage: sto,
                        },
                        version,
                        uptime_ms,
                        admin,
                        healthy,
                        ready,
                        problems,
                        sequencer: q.map(|(logs, n, r)| SequencerStatus {
                            appends: n[0],
                            append_rate: r,
                            logs_running: u32::try_from(logs.len()).unwrap(),
                            recoveries_active: n[1],
                            recoveries_completed: n[2],
                            recoveries_failed: n[3],
                            logs,
                        }),
                        storage: st.map(|(n, m, r)| StorageStatus {
                            state: StorageState::ReadWrite,
                            stored_records: n[0],
                            stored_bytes: n[1],
                            store_rate: r,
                            store_bytes_rate: r,
                            stores_in_flight: m[0],
                            fsyncs: n[2],
                            partitions: m[1],
                            logs: m[2],
                            read_streams_open: m[3],
                            read_rate: r,
                            free_disk_bytes: n[3].max(n[4]),
                        }),
                    }
                },
            )
    }

    proptest! {
        #[test]
        fn node_status_roundtrips(status in node_status()) {
            let msg = ClientResponse::NodeStatus(Box::new(status));
            let limits = Limits::default();
            let bytes = msg.encode().unwrap();
            prop_assert_eq!(ClientResponse::decode(&bytes, &limits).unwrap(), msg);
        }
    }

    #[test]
    fn too_many_problems_are_refused() {
        let mut status = NodeStatus {
            node: NodeId(1),
            roles: Roles::default(),
            version: String::new(),
            uptime_ms: 0,
            admin: None,
            healthy: false,
            ready: false,
            problems: vec![String::new(); MAX_STATUS_PROBLEMS + 1],
            sequencer: None,
            storage: None,
        };
        let msg = ClientResponse::NodeStatus(Box::new(status.clone()));
        let bytes = msg.encode().unwrap();
        assert!(ClientResponse::decode(&bytes, &Limits::default()).is_err());
        status.problems.pop();
        let bytes = ClientResponse::NodeStatus(Box::new(status))
            .encode()
            .unwrap();
        assert!(ClientResponse::decode(&bytes, &Limits::default()).is_ok());
    }

    #[test]
    fn rates_print_and_divide() {
        assert_eq!(Rate::over(10, 1000).to_string(), "10.0/s");
        assert_eq!(Rate::over(5000, 2000).to_string(), "2500/s");
        assert_eq!(Rate::over(1, 0), Rate::default());
        assert_eq!(Rate::default().to_string(), "0/s");
        assert_eq!(Rate::over(1, 3000).milli_per_sec, 333);
    }
}
