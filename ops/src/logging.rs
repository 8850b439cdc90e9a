//! The `tally` binary's logs: `tracing` events on stderr, filtered by `RUST_LOG` (default
//! `warn`; e.g. `RUST_LOG=info,tally_sequencer=debug`), as text or, with
//! `TALLY_LOG_FORMAT=json`, as one JSON object per line (timestamp, level, target, fields and
//! the span fields that carry identity: `node`, `log`, `epoch`), for log shippers.

use tracing_subscriber::EnvFilter;

/// The variable that selects the format: `text` (default) or `json`.
pub const FORMAT_ENV: &str = "TALLY_LOG_FORMAT";

/// Installs the process's subscriber. A bad `RUST_LOG` falls back to `warn` and says so.
pub fn init() {
    let (filter, bad) = match EnvFilter::try_from_default_env() {
        Ok(filter) => (filter, None),
        Err(e) => (
            EnvFilter::new("warn"),
            std::env::var("RUST_LOG").ok().map(|v| (v, e)),
        ),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match std::env::var(FORMAT_ENV).as_deref() {
        Ok("json") => builder.json().with_current_span(true).init(),
        _ => builder.init(),
    }
    if let Some((value, e)) = bad.filter(|(v, _)| !v.is_empty()) {
        tracing::warn!(rust_log = %value, error = %e, "RUST_LOG is not a valid filter; logging warnings");
    }
}
