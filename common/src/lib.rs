//! Tally's shared vocabulary: identifiers ([`LogId`], [`Lsn`], [`Epoch`], [`Esn`], [`NodeId`]),
//! the record header and its flags, payload checksums, limits, the wire messages of the
//! client↔node and node↔node protocols (rkyv, validated before use), and the QUIC transport
//! (quinn + rustls with mutual TLS) that carries them.
//!
//! Layout: `ids` (identifiers), `record` (header, flags, copyset, checksum, precedence),
//! `limits`, `wire` (message enums and framing), `transport` (endpoints, TLS, certificates).
//! Every role crate depends on this one; this one depends on no role.

pub mod ids;
pub mod limits;
pub mod meta;
pub mod metrics;
pub mod placement;
pub mod quorum;
pub mod record;
pub mod transport;
pub mod wire;

pub use ids::{Epoch, Esn, IdParseError, LogId, Lsn, NodeId};
pub use limits::Limits;
pub use meta::{
    DataDirBinding, DataDirId, Durability, LogAttributes, LogMetadata, NodeInfo, NodeSet,
    NodeSetEntry, RecoveredEpoch, Roles, StorageState,
};
pub use record::{
    ChecksumMismatch, Copyset, CopysetError, Precedence, RecordFlags, RecordHeader, payload_crc32,
    verify_payload,
};
