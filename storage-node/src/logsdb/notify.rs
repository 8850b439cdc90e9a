//! Per-log change notification for tailing readers: [`LogWatch`] wakes when the last released
//! LSN or the trim point of one log moves (a writer thread signals after it published the
//! change to readers), so a read stream that has shipped everything it may waits on a watch
//! instead of polling.
//!
//! Bounded: a log has an entry only while some [`LogWatch`] of it is alive (the server bounds
//! those by its read-stream limit); the last one to drop removes the entry. Signals carry no
//! value: a woken watcher re-reads the log's metadata. Because a watch remembers that it was
//! signalled, a change published between [`LogWatch::mark_seen`] and
//! [`LogWatch::changed`] is never missed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tally_common::LogId;
use tokio::sync::watch;

/// The watched logs (shared by the handle and the writer threads).
#[derive(Debug, Default)]
pub(crate) struct LogWatchers {
    logs: Mutex<HashMap<LogId, watch::Sender<()>>>,
}

impl LogWatchers {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<LogId, watch::Sender<()>>> {
        self.logs.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn subscribe(self: &Arc<Self>, log: LogId) -> LogWatch {
        let rx = self
            .lock()
            .entry(log)
            .or_insert_with(|| watch::channel(()).0)
            .subscribe();
        LogWatch {
            log,
            rx: Some(rx),
            watchers: self.clone(),
        }
    }

    /// Wakes every watch of the logs in `logs` (called after the change is visible).
    pub(crate) fn notify(&self, logs: impl IntoIterator<Item = LogId>) {
        let map = self.lock();
        if map.is_empty() {
            return;
        }
        for log in logs {
            if let Some(tx) = map.get(&log) {
                tx.send_replace(());
            }
        }
    }

    /// Logs watched right now (tests, metrics).
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }
}

/// A subscription to the release and trim changes of one log (see the module docs).
#[derive(Debug)]
pub struct LogWatch {
    log: LogId,
    rx: Option<watch::Receiver<()>>,
    watchers: Arc<LogWatchers>,
}

impl LogWatch {
    pub fn log(&self) -> LogId {
        self.log
    }

    /// Forgets earlier signals: call it before reading the metadata a wait is decided on.
    pub fn mark_seen(&mut self) {
        if let Some(rx) = self.rx.as_mut() {
            rx.mark_unchanged();
        }
    }

    /// Waits for a change signalled after the last [`LogWatch::mark_seen`]. Cancel safe.
    pub async fn changed(&mut self) {
        match self.rx.as_mut() {
            Some(rx) => {
                if rx.changed().await.is_err() {
                    // Cannot happen while this watch keeps the entry; never spin if it does.
                    std::future::pending::<()>().await
                }
            }
            None => std::future::pending::<()>().await,
        }
    }
}

impl Drop for LogWatch {
    fn drop(&mut self) {
        let mut map = self.watchers.lock();
        drop(self.rx.take());
        if map
            .get(&self.log)
            .is_some_and(|tx| tx.receiver_count() == 0)
        {
            map.remove(&self.log);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn signals_are_kept_until_seen_and_entries_go_with_the_last_watch() {
        let watchers = Arc::new(LogWatchers::default());
        let mut a = watchers.subscribe(LogId(1));
        let b = watchers.subscribe(LogId(1));
        let mut other = watchers.subscribe(LogId(2));
        assert_eq!(watchers.len(), 2);
        a.mark_seen();
        other.mark_seen();
        watchers.notify([LogId(1)]);
        // Signalled before the wait: not missed.
        a.changed().await;
        let waited = tokio::time::timeout(std::time::Duration::ZERO, other.changed()).await;
        assert!(waited.is_err(), "log 2 was not signalled");
        drop(a);
        assert_eq!(watchers.len(), 2, "b still watches log 1");
        drop(b);
        assert_eq!(watchers.len(), 1);
        drop(other);
        assert_eq!(watchers.len(), 0);
        watchers.notify([LogId(1)]);
    }
}
