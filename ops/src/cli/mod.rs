//! The client commands of the `tally` binary: `tally append` ([`append`]),
//! `tally log create|show|list|update|trim` ([`log`]), `tally read`, `tally tail`,
//! `tally find-time`, `tally trim` ([`read`]; TIME arguments in [`time`]), `tally grep`
//! ([`grep`]), `tally status` ([`status`]) and `tally certs init` ([`certs`]). With no flags
//! they find a running `tally dev` (seed `127.0.0.1:4500`, certificates in
//! `$TALLY_DEV_DIR/certs` or `./.tally-dev/certs`); `--seed` / `TALLY_SEED` and `--certs` /
//! `TALLY_CERTS` ([`ConnectArgs`]) point them elsewhere.

pub mod append;
pub mod certs;
pub mod grep;
pub mod log;
pub mod progress;
pub mod read;
pub mod status;
pub mod time;

use std::path::PathBuf;

use anyhow::Context as _;
use tally_client::{Client, ClientConfig};

use crate::dev::{DEFAULT_SEED, default_certs_dir};

/// A command that did only part of its work because nodes were unreachable (`tally grep`
/// when it cannot prove there are no more matches). `tally` exits with status 2 on it, so a
/// script can tell "incomplete" from "failed" (1) and "done" (0).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Partial(pub String);

/// Where the cluster is and how to authenticate to it.
#[derive(Debug, Clone, clap::Args)]
pub struct ConnectArgs {
    /// Nodes to ask for the cluster state (`host:port`, comma-separated).
    #[arg(long, env = "TALLY_SEED", value_delimiter = ',', default_value = DEFAULT_SEED)]
    pub seed: Vec<String>,
    /// Directory with `ca.pem`, `client.pem` and `client.key`
    /// [default: $TALLY_DEV_DIR/certs, else ./.tally-dev/certs].
    #[arg(long, env = "TALLY_CERTS")]
    pub certs: Option<PathBuf>,
}

impl ConnectArgs {
    pub(crate) fn certs_dir(&self) -> PathBuf {
        self.certs.clone().unwrap_or_else(default_certs_dir)
    }

    pub(crate) async fn client(&self) -> anyhow::Result<Client> {
        let certs = self.certs_dir();
        Client::connect(ClientConfig::new(self.seed.clone(), &certs))
            .await
            .with_context(|| {
                format!(
                    "cannot connect to the cluster at {} with the certificates in {} \
                     (is `tally dev` running? see --seed and --certs)",
                    self.seed.join(","),
                    certs.display()
                )
            })
    }
}
