//! Waiting for the operator's stop request: SIGINT (Ctrl-C) or SIGTERM (systemd, `kill`).
//! Long-running commands (`tally server`, `tally dev`) wait here, then shut down gracefully.

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};

/// Returns when SIGINT or SIGTERM arrives.
pub async fn wait_for_stop() -> anyhow::Result<()> {
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
    Ok(())
}
