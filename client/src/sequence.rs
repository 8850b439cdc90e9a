//! Getting LSNs for an append (DESIGN §5 placement, §6 step 1; LogDevice's client append
//! path): ask the log's owner, the first of the sequencer ranking of the cluster view, for a
//! grant. A `Redirect` is followed (a few times); a node that cannot be reached (or does not
//! even acknowledge the request within `sequencer_silence_timeout`) is skipped and the next
//! one in rank order is asked with `no_redirect`, so it takes the log over. A node that
//! acknowledged but did not answer within `request_timeout` is alive and busy (an activation
//! through a slow epoch store): it is asked again rather than taken over (once: one that
//! stays mute through a second request timeout is taken for wedged). A redirect to an owner
//! found silent (a suspect, asked last) is answered with a takeover while that silence is
//! recent (`sequencer_dead_for`, same incarnation); later it is followed once a liveness
//! check finds the owner answering (`Shared::owner_alive`), so one stall does not move
//! every log of a live node for long. A node this client made take a log over is asked first for that log until
//! it redirects (it hands the log back once the appends it granted are written), so the
//! owner's return does not seal this client's own appends in flight there;
//! `SeqNoBufs` and retryable errors back off exponentially — unless the caller asked to hear
//! of a full window at once ([`NoGrant::WindowFull`]: a coalesced batch may be too big for
//! the log's window, and smaller batches can fit). Everything stays within the append's
//! deadline. Nothing has been stored when this fails, so every error it returns is
//! "certainly not appended".
//!
//! An ask that may be redirected goes first through the client's per-sequencer batcher
//! (`mux::Sequences`, one `SequenceMany` for the asks of many logs waiting at once), which
//! the sequencer answers without activating anything; a log it answers `NotActive` (not
//! running there yet, or moving to a new epoch) is asked for again at once with a `Sequence`
//! of its own, which activates it. Takeovers (`no_redirect`) always go alone. (A sequencer of
//! a version before `SequenceMany` is asked with plain `Sequence`s by the batcher itself.)

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tally_common::transport::TransportError;
use tally_common::wire::client::{
    ClientRequest, ClientResponse, Grant, SequenceAnswer, SequenceAsk,
};
use tally_common::wire::{ErrorCode, RemoteError};
use tally_common::{LogId, NodeId};
use tokio::time::Instant;

use crate::client::Shared;
use crate::error::AppendError;

/// How many times in a row one sequencer may leave a `Sequence` unanswered past the request
/// timeout (while acknowledging it: alive, busy activating) and still be asked again; the
/// next such timeout counts as unreachable and the next node in rank order takes over.
const SLOW_ANSWERS: usize = 1;

/// Exponential waits between attempts, never past the deadline.
#[derive(Debug)]
struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    /// Waits the next interval (cut at `deadline`); false when the deadline has passed.
    async fn wait(&mut self, deadline: Instant) -> bool {
        let until = (Instant::now() + self.next).min(deadline);
        tokio::time::sleep_until(until).await;
        self.next = (self.next * 2).min(self.max);
        Instant::now() < deadline
    }
}

/// Why no grant came.
#[derive(Debug)]
pub(crate) enum NoGrant {
    /// The sequencer's window had no room for the `count` LSNs asked for (`SeqNoBufs`), and
    /// the caller asked to hear it rather than wait.
    WindowFull,
    Failed(AppendError),
}

impl From<AppendError> for NoGrant {
    fn from(e: AppendError) -> Self {
        NoGrant::Failed(e)
    }
}

/// What to do after one answer.
enum Step {
    Granted(Grant),
    /// Ask this node next.
    Ask(NodeId, bool),
    /// Ask the same node again at once, with a `Sequence` of its own (it may activate).
    Alone,
    /// Wait, then ask the same node again.
    Retry,
    /// Wait, then start over from the owner of a (possibly refreshed) view.
    Restart,
    Fail(AppendError),
}

/// Asks the sequencer of `log` for `count` LSNs until `deadline`. With `window_full_returns`,
/// a `SeqNoBufs` answer ends the request with [`NoGrant::WindowFull`] instead of a backoff.
pub(crate) async fn request_grant(
    shared: &Arc<Shared>,
    log: LogId,
    count: u32,
    deadline: Instant,
    window_full_returns: bool,
) -> Result<Grant, NoGrant> {
    let config = &shared.config;
    let mut backoff = Backoff {
        next: config.sequencer_backoff_initial,
        max: config.sequencer_backoff_max,
    };
    let mut last = String::from("no sequencer asked yet");
    'rounds: loop {
        if shared.shutdown.is_cancelled() {
            return Err(AppendError::Shutdown.into());
        }
        let state = shared.cluster.current();
        // Suspects (silent or unreachable lately) go last, in rank order among themselves.
        let (mut rank, suspects): (Vec<NodeId>, Vec<NodeId>) = state
            .sequencer_rank(log)
            .into_iter()
            .partition(|n| !shared.is_suspect(*n));
        rank.extend(suspects);
        // A node this client made take the log over is asked first until it lets go.
        if let Some(node) = shared.takeover_of(log)
            && let Some(at) = rank.iter().position(|n| *n == node)
        {
            rank[..=at].rotate_right(1);
        }
        let Some(&owner) = rank.first() else {
            last = "the cluster view has no live sequencer".into();
            shared.refresh_soon();
            if !backoff.wait(deadline).await {
                return Err(AppendError::NoSequencer { reason: last }.into());
            }
            continue;
        };
        let mut unreachable = BTreeSet::new();
        let mut redirects = 0;
        // Answers `target` owed us past the request timeout, in a row (see `SLOW_ANSWERS`).
        let mut slow_answers = 0;
        let (mut target, mut no_redirect) = (owner, false);
        // Ask `target` with a `Sequence` of its own rather than through the batcher.
        let mut alone = false;
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Err(AppendError::NoSequencer { reason: last }.into());
            }
            let timeout = config.request_timeout.min(deadline - now);
            let answer = match shared.cluster.address(target).await {
                Some(addr) if !no_redirect && !alone => {
                    let ask = SequenceAsk { log, count };
                    shared.sequences.send(addr, ask, timeout).await
                }
                Some(addr) => {
                    let req = ClientRequest::Sequence {
                        log,
                        count,
                        no_redirect,
                    };
                    let silence = config.sequencer_silence_timeout;
                    shared
                        .connector
                        .call_watched(addr, &req, timeout, silence)
                        .await
                }
                None => Err(TransportError::NoAnswer),
            };
            if !matches!(answer, Err(TransportError::Timeout(_))) {
                slow_answers = 0;
            }
            let step = match answer {
                Ok(ClientResponse::Granted(grant)) if grant.log == log && grant.count == count => {
                    shared.clear_suspect(target);
                    if no_redirect {
                        shared.took_over(log, target);
                    }
                    Step::Granted(grant)
                }
                Ok(ClientResponse::Granted(grant)) => Step::Fail(AppendError::NoSequencer {
                    reason: format!(
                        "{target} granted {} LSNs of {} for a request of {count} on {log}",
                        grant.count, grant.log
                    ),
                }),
                Ok(ClientResponse::Redirect { owner }) => {
                    last = format!("{target} redirected to {owner}");
                    shared.let_go(log, target);
                    if shared.cluster.current().node(owner).is_none() {
                        // A node we have not heard of: learn its address before asking it.
                        let refresh = shared.cluster.refresh();
                        if let Ok(Err(e)) = tokio::time::timeout_at(deadline, refresh).await {
                            tracing::debug!(error = %e, "cluster state refresh failed");
                        }
                    }
                    if unreachable.contains(&owner)
                        || (shared.is_suspect(owner) && !shared.owner_alive(owner).await)
                    {
                        // Its view still names a node we found silent (in this round, or
                        // earlier and again now): it takes the log over.
                        Step::Ask(target, true)
                    } else if redirects < config.max_redirects {
                        redirects += 1;
                        Step::Ask(owner, false)
                    } else {
                        // The views disagree: make the next candidate serve the log.
                        match next_in_rank(&rank, &unreachable, target) {
                            Some(next) => Step::Ask(next, true),
                            None => Step::Restart,
                        }
                    }
                }
                // Not running there: the same node activates it for a `Sequence` alone.
                Ok(ClientResponse::Sequenced(answers))
                    if !alone && answers == [SequenceAnswer::NotActive] =>
                {
                    Step::Alone
                }
                Ok(ClientResponse::SeqNoBufs) => {
                    if window_full_returns {
                        return Err(NoGrant::WindowFull);
                    }
                    last = format!("the window of {log} on {target} is full");
                    Step::Retry
                }
                Ok(ClientResponse::Preempted { seal }) => {
                    last = format!("{target} was preempted by seal {seal}");
                    shared.refresh_soon();
                    Step::Restart
                }
                Ok(ClientResponse::Error(e)) | Err(TransportError::Remote(e)) => {
                    remote_error(log, target, e, &mut last)
                }
                Ok(other) => Step::Fail(AppendError::NoSequencer {
                    reason: format!("{target} answered Sequence with {other:?}"),
                }),
                // No answer in time from a node that acknowledged the request (a silent one
                // fails with `PeerSilent` first): it is alive, only slow — typically activating
                // the log through a loaded epoch store. Its activation goes on without us and
                // the retry waits for it; another node taking the log over now would only make
                // the two seal each other's epochs. (One that stays mute while acknowledging —
                // a wedged role — is given up on after `SLOW_ANSWERS` such waits.)
                Err(TransportError::Timeout(t)) if slow_answers < SLOW_ANSWERS => {
                    slow_answers += 1;
                    last = format!("{target} did not answer within {t:?}");
                    tracing::debug!(%log, node = %target, "sequencer slow to answer; asking it again");
                    Step::Retry
                }
                Err(e) => {
                    last = format!("{target} is unreachable: {e}");
                    tracing::debug!(%log, node = %target, error = %e, "sequencer unreachable");
                    unreachable.insert(target);
                    if matches!(e, TransportError::Timeout(_)) {
                        // Acknowledged yet mute twice: wedged, or only very busy — a
                        // redirect to it is checked.
                        shared.suspect(target);
                    } else {
                        // Not even acknowledged, or no connection: as good as a failed
                        // liveness check, so the redirects other nodes send to it while
                        // their views still name it are taken over without another one.
                        shared.silent(target);
                    }
                    shared.let_go(log, target);
                    shared.refresh_soon();
                    match next_in_rank(&rank, &unreachable, target) {
                        Some(next) => Step::Ask(next, true),
                        None => Step::Restart,
                    }
                }
            };
            match step {
                Step::Granted(grant) => return Ok(grant),
                Step::Fail(e) => return Err(e.into()),
                Step::Ask(node, force) => {
                    if node != target {
                        slow_answers = 0;
                        alone = false;
                    }
                    (target, no_redirect) = (node, force);
                }
                Step::Alone => alone = true,
                Step::Retry => {
                    if !backoff.wait(deadline).await {
                        return Err(AppendError::NoSequencer { reason: last }.into());
                    }
                }
                Step::Restart => {
                    if !backoff.wait(deadline).await {
                        return Err(AppendError::NoSequencer { reason: last }.into());
                    }
                    continue 'rounds;
                }
            }
        }
    }
}

/// The first node of `rank` not known unreachable, other than `current`.
fn next_in_rank(
    rank: &[NodeId],
    unreachable: &BTreeSet<NodeId>,
    current: NodeId,
) -> Option<NodeId> {
    rank.iter()
        .copied()
        .find(|n| *n != current && !unreachable.contains(n))
}

fn remote_error(log: LogId, target: NodeId, e: RemoteError, last: &mut String) -> Step {
    *last = format!("{target} answered {e}");
    if e.code == ErrorCode::NotFound {
        return Step::Fail(AppendError::LogNotFound { log });
    }
    if e.code.is_retryable() {
        Step::Retry
    } else {
        Step::Fail(AppendError::NoSequencer {
            reason: last.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_in_rank_skips_current_and_unreachable() {
        let rank = [NodeId(3), NodeId(1), NodeId(2)];
        let mut down = BTreeSet::new();
        assert_eq!(next_in_rank(&rank, &down, NodeId(3)), Some(NodeId(1)));
        down.insert(NodeId(1));
        assert_eq!(next_in_rank(&rank, &down, NodeId(3)), Some(NodeId(2)));
        down.insert(NodeId(2));
        assert_eq!(next_in_rank(&rank, &down, NodeId(3)), None);
    }

    #[tokio::test(start_paused = true)]
    async fn backoff_doubles_to_its_maximum_and_stops_at_the_deadline() {
        let start = Instant::now();
        let mut b = Backoff {
            next: Duration::from_millis(10),
            max: Duration::from_millis(35),
        };
        let deadline = start + Duration::from_millis(100);
        assert!(b.wait(deadline).await);
        assert_eq!(Instant::now() - start, Duration::from_millis(10));
        assert!(b.wait(deadline).await);
        assert_eq!(Instant::now() - start, Duration::from_millis(30));
        assert!(b.wait(deadline).await);
        assert_eq!(Instant::now() - start, Duration::from_millis(65));
        // 65 + 35 reaches the deadline: the wait is cut there and reports it.
        assert!(!b.wait(deadline).await);
        assert_eq!(Instant::now() - start, Duration::from_millis(100));
    }
}
