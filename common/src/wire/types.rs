//! Building blocks shared by both protocols: store batches, store outcomes, read records, gaps,
//! error codes. Enum variant order is the wire tag (rkyv archives the discriminant): append new
//! variants at the end, never reorder or reuse.

use crate::ids::{Epoch, Esn, LogId, Lsn, NodeId};
use crate::limits::Limits;
use crate::meta::Durability;
use crate::record::{Copyset, RecordFlags, RecordHeader};

/// Codes of errors that travel on the wire, with how a caller should treat them.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
#[repr(u8)]
pub enum ErrorCode {
    /// The request was malformed or broke a limit. Terminal: never retry it as is.
    BadRequest = 0,
    /// A frame or payload was larger than the receiver accepts. Terminal.
    TooLarge = 1,
    /// The sender speaks a protocol version the receiver does not. Terminal.
    UnsupportedVersion = 2,
    /// The request's deadline passed before (or while) it was handled. The work may or may not
    /// have happened for writes.
    Timeout = 3,
    /// The receiver is overloaded; retry later, elsewhere if possible.
    Overloaded = 4,
    /// The receiver is shutting down or a dependency is unreachable; retry later.
    Unavailable = 5,
    /// The named log does not exist.
    NotFound = 6,
    /// The thing to create exists already.
    AlreadyExists = 7,
    /// The peer is not allowed to do this.
    PermissionDenied = 8,
    /// A bug or an unexpected local failure; a human should look.
    Internal = 9,
}

impl ErrorCode {
    /// Whether retrying the same request later may succeed.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorCode::Timeout | ErrorCode::Overloaded | ErrorCode::Unavailable
        )
    }
}

/// An error reported by the peer.
#[derive(
    Clone, Debug, PartialEq, Eq, thiserror::Error, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
#[error("{code:?}: {message}")]
pub struct RemoteError {
    pub code: ErrorCode,
    pub message: String,
}

impl RemoteError {
    pub(crate) fn encoded_len_hint(&self) -> usize {
        super::ENCODED_OVERHEAD_HINT + self.message.len()
    }

    pub fn new(code: ErrorCode, message: impl Into<String>) -> RemoteError {
        RemoteError {
            code,
            message: message.into(),
        }
    }

    pub(crate) fn check(&self, _limits: &Limits) -> Result<(), String> {
        if self.message.len() > MAX_ERROR_MESSAGE_BYTES {
            return Err(format!("error message of {} bytes", self.message.len()));
        }
        Ok(())
    }
}

super::wire_message!(RemoteError, "RemoteError");

/// Longest error message accepted on the wire.
pub const MAX_ERROR_MESSAGE_BYTES: usize = 4096;

/// One record of a STORE batch.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct StoreRecord {
    pub lsn: Lsn,
    pub timestamp_ms: u64,
    pub payload_crc32: u32,
    /// Empty for `AMEND` stores. Shared, not copied, between the STOREs of a record's copies.
    pub payload: bytes::Bytes,
}

/// A run of consecutive records of one log sent to one copyset member (DESIGN §6 step 3).
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct StoreBatch {
    pub log: LogId,
    pub copyset: Copyset,
    /// The wave number, or the recovery seal epoch with `WRITTEN_BY_RECOVERY`.
    pub wave_or_seal: u32,
    pub flags: RecordFlags,
    pub durability: Durability,
    /// Last known good ESN of the records' epoch.
    pub lng: Esn,
    /// Strictly increasing LSNs, all in one epoch.
    pub records: Vec<StoreRecord>,
}

impl StoreBatch {
    pub(crate) fn encoded_len_hint(&self) -> usize {
        super::ENCODED_OVERHEAD_HINT
            + copyset_len_hint(&self.copyset)
            + self
                .records
                .iter()
                .map(|r| std::mem::size_of::<ArchivedStoreRecord>() + r.payload.len())
                .sum::<usize>()
    }

    pub(crate) fn check(&self, limits: &Limits) -> Result<(), String> {
        if !self.log.is_user() && !self.log.is_internal() {
            return Err(format!("invalid log id {}", self.log.0));
        }
        self.copyset.validate().map_err(|e| e.to_string())?;
        if !self.flags.is_known() {
            return Err(format!("unknown record flags {:?}", self.flags));
        }
        if self.records.is_empty() {
            return Err("empty store batch".into());
        }
        if self.records.len() > limits.max_records_per_batch as usize {
            return Err(format!(
                "{} records in one batch, limit {}",
                self.records.len(),
                limits.max_records_per_batch
            ));
        }
        let epoch = self.records[0].lsn.epoch();
        if !epoch.is_valid() {
            return Err(format!("invalid epoch in {}", self.records[0].lsn));
        }
        let amend = self.flags.contains(RecordFlags::AMEND);
        let mut prev = Lsn::INVALID;
        for r in &self.records {
            if r.lsn <= prev {
                return Err(format!("LSNs not strictly increasing at {}", r.lsn));
            }
            if r.lsn.epoch() != epoch || r.lsn.esn() == Esn::INVALID {
                return Err(format!("record {} outside epoch {epoch}", r.lsn));
            }
            if r.payload.len() > limits.max_payload_bytes {
                return Err(format!(
                    "payload of {} bytes at {} exceeds the limit of {}",
                    r.payload.len(),
                    r.lsn,
                    limits.max_payload_bytes
                ));
            }
            if amend && !r.payload.is_empty() {
                return Err(format!("AMEND store carries a payload at {}", r.lsn));
            }
            prev = r.lsn;
        }
        Ok(())
    }

    /// The epoch of the batch's records (checked to be one epoch by validation).
    pub fn epoch(&self) -> Epoch {
        self.records
            .first()
            .map(|r| r.lsn.epoch())
            .unwrap_or(Epoch::INVALID)
    }

    /// Total payload bytes.
    pub fn payload_bytes(&self) -> usize {
        self.records.iter().map(|r| r.payload.len()).sum()
    }
}

/// A storage node's answer to a STORE (DESIGN §6 step 3).
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum StoreStatus {
    /// Every record of the batch is stored with the requested durability.
    Stored,
    /// The node is sealed at `seal` (≥ the batch's epoch): a newer sequencer exists.
    Preempted {
        seal: Epoch,
        sequencer: Option<NodeId>,
    },
    /// Out of disk space; try another node.
    NoSpace,
    /// Too busy; try another node.
    Overloaded,
    /// A payload did not match its checksum (the client's copy is bad, or the link).
    ChecksumMismatch { lsn: Lsn },
    /// The node accepts no writes (read-only after an I/O error, disabled, being drained).
    Disabled,
}

/// Why a reader passes an LSN without a record (DESIGN §1).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
#[repr(u8)]
pub enum GapKind {
    /// Never written; plugged by recovery.
    Hole = 0,
    /// The end of an epoch.
    Bridge = 1,
    /// Below the trim point.
    Trim = 2,
    /// Every copy is gone. Reported, never hidden.
    DataLoss = 3,
    /// (Node → reader only) the node proved it has no records in the range.
    NoRecords = 4,
    /// (Filtered reads only, reader → application) no record in the range passes the read's
    /// time or payload filter: the records there, if any, did not match. A filtered read
    /// cannot tell a lost record from one that did not match, so it never reports
    /// `DataLoss` inside an epoch; an unfiltered read does.
    Filtered = 5,
}

/// A record as shipped to readers and in recovery digests.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct ReadRecord {
    pub header: RecordHeader,
    pub payload: Vec<u8>,
}

/// Archive bytes of a copyset's nodes, alignment padding included.
fn copyset_len_hint(copyset: &Copyset) -> usize {
    copyset.nodes().len() * std::mem::size_of::<crate::ids::ArchivedNodeId>() + 8
}

impl ReadRecord {
    /// Capacity to encode an answer carrying `records` (`Records`, `DigestRecords`) into.
    pub(crate) fn records_len_hint(records: &[ReadRecord]) -> usize {
        super::ENCODED_OVERHEAD_HINT
            + records
                .iter()
                .map(|r| {
                    std::mem::size_of::<ArchivedReadRecord>()
                        + copyset_len_hint(&r.header.copyset)
                        + r.payload.len()
                })
                .sum::<usize>()
    }

    pub(crate) fn check(&self, limits: &Limits) -> Result<(), String> {
        self.header.copyset.validate().map_err(|e| e.to_string())?;
        if !self.header.flags.is_known() {
            return Err(format!("unknown record flags {:?}", self.header.flags));
        }
        if self.payload.len() > limits.max_payload_bytes {
            return Err(format!(
                "payload of {} bytes at {} exceeds the limit of {}",
                self.payload.len(),
                self.header.lsn,
                limits.max_payload_bytes
            ));
        }
        Ok(())
    }
}

/// Server-side filter of a read stream (DESIGN §7 read streams).
#[derive(
    Clone, Debug, PartialEq, Eq, Default, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
pub struct ReadFilter {
    /// Single-copy delivery: ship a record only if this node is the first non-down member of
    /// its (shuffled by `shuffle_seed`) copyset.
    pub single_copy: bool,
    pub shuffle_seed: u64,
    /// Nodes the reader considers down (for single-copy delivery).
    pub known_down: Vec<NodeId>,
    /// Only records with timestamps in `[min_ts_ms, max_ts_ms]` (0 / u64::MAX for all).
    pub min_timestamp_ms: u64,
    pub max_timestamp_ms: u64,
    /// Only records whose payload matches this regular expression (empty: all).
    pub payload_regex: String,
}

/// Longest regular expression a read filter may carry.
pub const MAX_FILTER_REGEX_BYTES: usize = 4096;

impl ReadFilter {
    pub(crate) fn check(&self) -> Result<(), String> {
        if self.known_down.len() > Copyset::MAX {
            return Err(format!(
                "{} known-down nodes, limit {}",
                self.known_down.len(),
                Copyset::MAX
            ));
        }
        if self.payload_regex.len() > MAX_FILTER_REGEX_BYTES {
            return Err(format!(
                "filter regex of {} bytes, limit {MAX_FILTER_REGEX_BYTES}",
                self.payload_regex.len()
            ));
        }
        Ok(())
    }
}

/// How exact a time lookup must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[repr(u8)]
pub enum FindTimeAccuracy {
    /// The first LSN whose timestamp is ≥ the target, exactly.
    Strict = 0,
    /// An LSN at or before that one, from partition metadata only (cheaper).
    Approximate = 1,
}
