//! [`SequencerConfig`]: every knob of the sequencer runtime with its default in one place, and
//! [`SequencerConfig::validate`] with precise messages. The pure per-log timing
//! ([`SequencerTiming`]: append timeout, abandon grace, release re-broadcast) is embedded.

use std::time::Duration;

use tally_common::NodeId;

use crate::log_sequencer::SequencerTiming;

/// Configuration of the sequencer role on one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SequencerConfig {
    /// This node. Grants name it so clients know where to report completions.
    pub node: NodeId,
    /// Per-log timing of the pure state machine.
    pub timing: SequencerTiming,
    /// How often every log's state machine is ticked (release re-broadcast, abandoned LSNs).
    pub tick_interval: Duration,
    /// How long released points are gathered before a batch goes out to a storage node.
    pub release_batch_interval: Duration,
    /// Deadline of one `Release` call to one storage node.
    pub release_timeout: Duration,
    /// Deadline of one activation in the epoch store (also capped by the request's deadline).
    pub activation_timeout: Duration,
    /// After an activation forced by `no_redirect`, how long this node keeps serving the log
    /// without redirecting (so clients that cannot reach the owner are not bounced back).
    pub no_redirect_duration: Duration,
    /// Most logs this node keeps sequencer state for; beyond it new logs get `Overloaded`.
    pub max_logs: usize,
    /// Wait before watching membership again after the watch ended or failed.
    pub membership_retry: Duration,
}

impl SequencerConfig {
    /// Defaults for `node`.
    pub fn new(node: NodeId) -> SequencerConfig {
        SequencerConfig {
            node,
            timing: SequencerTiming::default(),
            tick_interval: Duration::from_millis(100),
            release_batch_interval: Duration::from_millis(5),
            release_timeout: Duration::from_secs(2),
            activation_timeout: Duration::from_secs(5),
            no_redirect_duration: Duration::from_secs(5),
            max_logs: 1 << 20,
            membership_retry: Duration::from_secs(1),
        }
    }

    /// Checks ranges; the message names the field and the allowed range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let positive = |name: &'static str, d: Duration| {
            if d.is_zero() {
                Err(ConfigError::Invalid {
                    field: name,
                    reason: "must be greater than zero".into(),
                })
            } else {
                Ok(())
            }
        };
        positive("tick_interval", self.tick_interval)?;
        positive("release_batch_interval", self.release_batch_interval)?;
        positive("release_timeout", self.release_timeout)?;
        positive("activation_timeout", self.activation_timeout)?;
        positive("membership_retry", self.membership_retry)?;
        positive("timing.append_timeout", self.timing.append_timeout)?;
        positive(
            "timing.release_rebroadcast",
            self.timing.release_rebroadcast,
        )?;
        if self.timing.release_rebroadcast < self.tick_interval {
            return Err(ConfigError::Invalid {
                field: "timing.release_rebroadcast",
                reason: format!(
                    "{:?} is shorter than tick_interval {:?}; re-broadcasts happen on ticks",
                    self.timing.release_rebroadcast, self.tick_interval
                ),
            });
        }
        if self.max_logs == 0 {
            return Err(ConfigError::Invalid {
                field: "max_logs",
                reason: "must be at least 1".into(),
            });
        }
        Ok(())
    }
}

/// A configuration value out of range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("sequencer config: {field} {reason}")]
    Invalid { field: &'static str, reason: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_zero_intervals_do_not() {
        SequencerConfig::new(NodeId(1)).validate().unwrap();
        let bad = SequencerConfig {
            tick_interval: Duration::ZERO,
            ..SequencerConfig::new(NodeId(1))
        };
        assert!(matches!(
            bad.validate(),
            Err(ConfigError::Invalid {
                field: "tick_interval",
                ..
            })
        ));
    }
}
