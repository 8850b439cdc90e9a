//! Wire messages and their framing (DESIGN §3).
//!
//! Each protocol is one pair of rkyv-archived enums: `client` (client ↔ node, ALPN
//! `tally-client/1`) and `node` (node ↔ node, ALPN `tally-node/1`). A message travels as one
//! frame:
//!
//! ```text
//! offset  size  field
//! 0       4     body length in bytes (u32, big-endian), checked against the frame limit
//!               before any buffer is allocated
//! 4       2     protocol version (u16 BE); receivers reject versions they do not speak
//! 6       1     frame kind (see `FrameKind`; persisted tag numbers, never reuse)
//! 7       1     reserved, must be 0
//! 8       4     timeout in ms (u32 BE): for requests, how long the sender will wait; the
//!               receiver checks the deadline before doing the work. 0 on other frames.
//! 12      len   body: the rkyv archive of the message, validated (bytecheck) before use
//! ```
//!
//! Decoding is total: any byte string yields a message or a typed error, never a panic. After
//! structural validation every message is checked against the [`Limits`] by
//! [`WireMessage::validate`].

pub mod client;
pub mod node;
pub mod status;
mod types;

pub use types::*;

use crate::limits::Limits;

/// The protocol version this build speaks. Bump on any incompatible change to a message.
pub const PROTOCOL_VERSION: u16 = 1;

/// Bytes in a frame header.
pub const FRAME_HEADER_BYTES: usize = 12;

/// What a frame carries. Tag numbers are on the wire: never reuse one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    /// A unary request: exactly one `Response` or `Error` answers it, then the stream ends.
    Request = 1,
    /// The answer to a `Request`.
    Response = 2,
    /// Opens a server-push stream (e.g. a read stream).
    Open = 3,
    /// One message pushed by the server on an open stream.
    Push = 4,
    /// A message from the client on an open stream (e.g. window updates).
    Control = 5,
    /// A transport-level error (body: [`RemoteError`]); ends the stream.
    Error = 6,
}

impl FrameKind {
    pub fn from_u8(tag: u8) -> Option<FrameKind> {
        Some(match tag {
            1 => FrameKind::Request,
            2 => FrameKind::Response,
            3 => FrameKind::Open,
            4 => FrameKind::Push,
            5 => FrameKind::Control,
            6 => FrameKind::Error,
            _ => return None,
        })
    }
}

/// A decoded frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    pub body_len: u32,
    pub version: u16,
    pub kind: FrameKind,
    pub timeout_ms: u32,
}

impl FrameHeader {
    pub fn encode(&self) -> [u8; FRAME_HEADER_BYTES] {
        let mut out = [0u8; FRAME_HEADER_BYTES];
        out[0..4].copy_from_slice(&self.body_len.to_be_bytes());
        out[4..6].copy_from_slice(&self.version.to_be_bytes());
        out[6] = self.kind as u8;
        out[7] = 0;
        out[8..12].copy_from_slice(&self.timeout_ms.to_be_bytes());
        out
    }

    /// Parses a header and checks it against the frame limit, before the body is read.
    pub fn decode(
        bytes: &[u8; FRAME_HEADER_BYTES],
        max_frame_bytes: usize,
    ) -> Result<Self, FrameError> {
        let body_len = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        let version = u16::from_be_bytes([bytes[4], bytes[5]]);
        if version != PROTOCOL_VERSION {
            return Err(FrameError::UnsupportedVersion {
                got: version,
                supported: PROTOCOL_VERSION,
            });
        }
        let kind = FrameKind::from_u8(bytes[6]).ok_or(FrameError::UnknownKind(bytes[6]))?;
        if bytes[7] != 0 {
            return Err(FrameError::Reserved(bytes[7]));
        }
        let total = body_len as usize + FRAME_HEADER_BYTES;
        if total > max_frame_bytes {
            return Err(FrameError::TooLarge {
                len: total,
                max: max_frame_bytes,
            });
        }
        let timeout_ms = u32::from_be_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
        Ok(FrameHeader {
            body_len,
            version,
            kind,
            timeout_ms,
        })
    }
}

/// A frame header that cannot be accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("unsupported protocol version {got} (this node speaks version {supported})")]
    UnsupportedVersion { got: u16, supported: u16 },
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    #[error("reserved header byte is {0}, expected 0")]
    Reserved(u8),
}

/// A message could not be decoded or is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The bytes are not a valid archive of the expected message (bytecheck failed).
    #[error("malformed {message} message: {detail}")]
    Malformed {
        message: &'static str,
        detail: String,
    },
    /// The message is well-formed but breaks a rule or a limit.
    #[error("invalid {message} message: {detail}")]
    Invalid {
        message: &'static str,
        detail: String,
    },
}

/// A message could not be encoded (should not happen for well-formed values).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot encode {message} message: {detail}")]
pub struct EncodeError {
    pub message: &'static str,
    pub detail: String,
}

/// A message of one of the protocols: encodes to an rkyv archive and decodes from untrusted
/// bytes with validation.
pub trait WireMessage: Sized + Send + Sync + 'static {
    /// Name used in errors.
    const NAME: &'static str;

    /// Encodes to an aligned archive (the frame body).
    fn encode(&self) -> Result<rkyv::util::AlignedVec, EncodeError>;

    /// Decodes untrusted bytes: structural validation (bytecheck) then deserialization. Does
    /// not apply [`WireMessage::validate`]; [`WireMessage::decode`] does both.
    fn decode_unvalidated(bytes: &[u8]) -> Result<Self, DecodeError>;

    /// Semantic checks: limits, bounds, flags, ordering.
    fn validate(&self, limits: &Limits) -> Result<(), DecodeError>;

    /// Decodes untrusted bytes and validates the result against `limits`.
    fn decode(bytes: &[u8], limits: &Limits) -> Result<Self, DecodeError> {
        let msg = Self::decode_unvalidated(bytes)?;
        msg.validate(limits)?;
        Ok(msg)
    }
}

/// Bytes an archive needs for a message's own fields (root, variant, a batch's header), besides
/// its records: part of the size hint, so encoding allocates the frame body once instead of
/// doubling it (and copying every payload again) as it grows.
pub(crate) const ENCODED_OVERHEAD_HINT: usize = 256;

/// Implements the rkyv half of [`WireMessage`] for a concrete type; the type supplies
/// `validate` through an inherent `check(&self, &Limits) -> Result<(), String>`, and the
/// capacity to encode into through an inherent `encoded_len_hint(&self) -> usize`.
macro_rules! wire_message {
    ($ty:ty, $name:literal) => {
        impl $crate::wire::WireMessage for $ty {
            const NAME: &'static str = $name;

            fn encode(&self) -> Result<rkyv::util::AlignedVec, $crate::wire::EncodeError> {
                let buffer = rkyv::util::AlignedVec::<16>::with_capacity(self.encoded_len_hint());
                rkyv::api::high::to_bytes_in::<_, rkyv::rancor::Error>(self, buffer).map_err(|e| {
                    $crate::wire::EncodeError {
                        message: $name,
                        detail: e.to_string(),
                    }
                })
            }

            fn decode_unvalidated(bytes: &[u8]) -> Result<Self, $crate::wire::DecodeError> {
                let malformed = |e: rkyv::rancor::Error| $crate::wire::DecodeError::Malformed {
                    message: $name,
                    detail: e.to_string(),
                };
                // rkyv needs the archive aligned; bodies read by the transport already are.
                if (bytes.as_ptr() as usize) % 16 == 0 {
                    rkyv::from_bytes::<$ty, rkyv::rancor::Error>(bytes).map_err(malformed)
                } else {
                    let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(bytes.len());
                    aligned.extend_from_slice(bytes);
                    rkyv::from_bytes::<$ty, rkyv::rancor::Error>(&aligned).map_err(malformed)
                }
            }

            fn validate(
                &self,
                limits: &$crate::limits::Limits,
            ) -> Result<(), $crate::wire::DecodeError> {
                self.check(limits)
                    .map_err(|detail| $crate::wire::DecodeError::Invalid {
                        message: $name,
                        detail,
                    })
            }
        }
    };
}
pub(crate) use wire_message;

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn header_roundtrip_and_limits() {
        let h = FrameHeader {
            body_len: 100,
            version: PROTOCOL_VERSION,
            kind: FrameKind::Request,
            timeout_ms: 250,
        };
        assert_eq!(FrameHeader::decode(&h.encode(), 1 << 20).unwrap(), h);
        assert_eq!(
            FrameHeader::decode(&h.encode(), 50),
            Err(FrameError::TooLarge { len: 112, max: 50 })
        );
        let mut bad = h.encode();
        bad[5] = 9;
        assert!(matches!(
            FrameHeader::decode(&bad, 1 << 20),
            Err(FrameError::UnsupportedVersion { .. })
        ));
        let mut bad = h.encode();
        bad[6] = 0;
        assert_eq!(
            FrameHeader::decode(&bad, 1 << 20),
            Err(FrameError::UnknownKind(0))
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]
        #[test]
        fn header_decode_never_panics(bytes: [u8; FRAME_HEADER_BYTES], max in 0usize..(1 << 26)) {
            if let Ok(h) = FrameHeader::decode(&bytes, max) {
                prop_assert!(h.body_len as usize + FRAME_HEADER_BYTES <= max);
                prop_assert_eq!(h.encode(), bytes);
            }
        }
    }
}

#[cfg(test)]
mod message_tests;
