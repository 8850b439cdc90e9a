//! Limits enforced before allocation (DESIGN §3). Every limit has a default and a hard cap.

use serde::{Deserialize, Serialize};

/// Bytes in one KiB / MiB, for readable constants.
pub const KIB: usize = 1024;
pub const MIB: usize = 1024 * KIB;

/// Default maximum payload of one record.
pub const DEFAULT_MAX_PAYLOAD_BYTES: usize = MIB;
/// No configuration may raise the payload limit above this.
pub const HARD_MAX_PAYLOAD_BYTES: usize = 32 * MIB;
/// Room for headers and framing on top of the largest payload in one frame.
pub const FRAME_OVERHEAD_BYTES: usize = 64 * KIB;
/// Default maximum size of one wire frame (header + body).
pub const DEFAULT_MAX_FRAME_BYTES: usize = 16 * MIB;
/// No configuration may raise the frame limit above this.
pub const HARD_MAX_FRAME_BYTES: usize = HARD_MAX_PAYLOAD_BYTES + 32 * MIB;
/// Default maximum records in one STORE batch or one grant.
pub const DEFAULT_MAX_RECORDS_PER_BATCH: u32 = 4096;
/// Default bytes a peer may have in flight on one connection.
pub const DEFAULT_MAX_IN_FLIGHT_BYTES: usize = 64 * MIB;

/// The limits one process enforces. Validate with [`Limits::validate`] after loading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    pub max_payload_bytes: usize,
    pub max_frame_bytes: usize,
    pub max_records_per_batch: u32,
    pub max_in_flight_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_payload_bytes: DEFAULT_MAX_PAYLOAD_BYTES,
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            max_records_per_batch: DEFAULT_MAX_RECORDS_PER_BATCH,
            max_in_flight_bytes: DEFAULT_MAX_IN_FLIGHT_BYTES,
        }
    }
}

/// A configured limit is out of range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitsError {
    #[error("max_payload_bytes = {0} is above the hard cap of {HARD_MAX_PAYLOAD_BYTES} (32 MiB)")]
    PayloadAboveCap(usize),
    #[error("max_frame_bytes = {0} is above the hard cap of {HARD_MAX_FRAME_BYTES}")]
    FrameAboveCap(usize),
    #[error(
        "max_frame_bytes = {frame} must be at least max_payload_bytes + {FRAME_OVERHEAD_BYTES} = {need}"
    )]
    FrameBelowPayload { frame: usize, need: usize },
    #[error("{0} must be greater than zero")]
    Zero(&'static str),
}

impl Limits {
    pub fn validate(&self) -> Result<(), LimitsError> {
        if self.max_payload_bytes > HARD_MAX_PAYLOAD_BYTES {
            return Err(LimitsError::PayloadAboveCap(self.max_payload_bytes));
        }
        if self.max_frame_bytes > HARD_MAX_FRAME_BYTES {
            return Err(LimitsError::FrameAboveCap(self.max_frame_bytes));
        }
        let need = self.max_payload_bytes + FRAME_OVERHEAD_BYTES;
        if self.max_frame_bytes < need {
            return Err(LimitsError::FrameBelowPayload {
                frame: self.max_frame_bytes,
                need,
            });
        }
        if self.max_records_per_batch == 0 {
            return Err(LimitsError::Zero("max_records_per_batch"));
        }
        if self.max_in_flight_bytes == 0 {
            return Err(LimitsError::Zero("max_in_flight_bytes"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_caps_hold() {
        Limits::default().validate().unwrap();
        let l = Limits {
            max_payload_bytes: HARD_MAX_PAYLOAD_BYTES + 1,
            ..Limits::default()
        };
        assert_eq!(
            l.validate(),
            Err(LimitsError::PayloadAboveCap(HARD_MAX_PAYLOAD_BYTES + 1))
        );
        let l = Limits {
            max_payload_bytes: 20 * MIB,
            ..Limits::default()
        };
        assert!(matches!(
            l.validate(),
            Err(LimitsError::FrameBelowPayload { .. })
        ));
        let l = Limits {
            max_records_per_batch: 0,
            ..Limits::default()
        };
        assert_eq!(
            l.validate(),
            Err(LimitsError::Zero("max_records_per_batch"))
        );
    }
}
