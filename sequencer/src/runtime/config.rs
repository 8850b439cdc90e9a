//! [`SequencerConfig`]: every knob of the sequencer runtime with its default in one place, and
//! [`SequencerConfig::validate`] with precise messages. The pure per-log timing
//! ([`SequencerTiming`]: append timeout, abandon grace, release re-broadcast) and the pure
//! recovery timing ([`RecoveryTiming`]: digest grace, retry interval, attempt timeout,
//! mutations in flight) are embedded; the runtime adds the per-message deadline of recovery
//! and how many logs may recover at once.

use std::time::Duration;

use tally_common::NodeId;
use tally_common::metrics::SequencerMetrics;

use crate::log_sequencer::SequencerTiming;
use crate::recovery::RecoveryTiming;

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
    /// When such a takeover ends and the log's grants here are not all completed yet, how
    /// long this node answers "retry" (`Unavailable`) instead of redirecting to the owner, so
    /// the owner's new epoch does not seal appends still writing their copies here (an
    /// orderly hand-back). Zero redirects at once.
    pub handback_grace: Duration,
    /// Most logs this node keeps sequencer state for; beyond it new logs get `Overloaded`.
    pub max_logs: usize,
    /// Wait before watching membership again after the watch ended or failed.
    pub membership_retry: Duration,
    /// Timing and limits of the pure recovery state machine.
    pub recovery: RecoveryTiming,
    /// Deadline of one recovery message: a seal, a store, a clean, opening a digest stream or
    /// waiting for its next push, a last-clean-epoch write. A miss counts as the node being
    /// unreachable (re-sent after `recovery.retry_interval`).
    pub recovery_request_timeout: Duration,
    /// Most logs recovering at once on this node; the others wait for a turn (their appends
    /// are granted meanwhile, not released).
    pub max_concurrent_recoveries: usize,
    /// Where the role records its metrics (the node's handle; a fresh one by default).
    pub metrics: SequencerMetrics,
}

impl SequencerConfig {
    /// Defaults for `node`.
    pub fn new(node: NodeId) -> SequencerConfig {
        SequencerConfig {
            node,
            timing: SequencerTiming::default(),
            tick_interval: Duration::from_millis(100),
            release_batch_interval: Duration::from_millis(1),
            release_timeout: Duration::from_secs(2),
            activation_timeout: Duration::from_secs(5),
            no_redirect_duration: Duration::from_secs(5),
            handback_grace: Duration::from_secs(1),
            max_logs: 1 << 20,
            membership_retry: Duration::from_secs(1),
            recovery: RecoveryTiming::default(),
            recovery_request_timeout: Duration::from_secs(5),
            max_concurrent_recoveries: 400,
            metrics: SequencerMetrics::default(),
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
        positive("recovery.digest_grace", self.recovery.digest_grace)?;
        positive("recovery.retry_interval", self.recovery.retry_interval)?;
        positive("recovery.attempt_timeout", self.recovery.attempt_timeout)?;
        positive("recovery_request_timeout", self.recovery_request_timeout)?;
        if self.recovery.max_mutations_in_flight == 0 {
            return Err(ConfigError::Invalid {
                field: "recovery.max_mutations_in_flight",
                reason: "must be at least 1".into(),
            });
        }
        if self.max_concurrent_recoveries == 0 {
            return Err(ConfigError::Invalid {
                field: "max_concurrent_recoveries",
                reason: "must be at least 1".into(),
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
        let mut no_mutations = SequencerConfig::new(NodeId(1));
        no_mutations.recovery.max_mutations_in_flight = 0;
        assert!(matches!(
            no_mutations.validate(),
            Err(ConfigError::Invalid {
                field: "recovery.max_mutations_in_flight",
                ..
            })
        ));
        let no_recoveries = SequencerConfig {
            max_concurrent_recoveries: 0,
            ..SequencerConfig::new(NodeId(1))
        };
        assert!(no_recoveries.validate().is_err());
    }
}
