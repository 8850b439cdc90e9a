//! What every example shares: connecting to a cluster the way the `tally` CLI does, and a
//! small `--flag value` parser (the examples keep their dependencies to the client's own).
//!
//! The cluster: `TALLY_SEED` (`host:port`, comma-separated; default `127.0.0.1:4500`, where
//! `tally dev` listens) and `TALLY_CERTS` (a directory with `ca.pem`, `client.pem` and
//! `client.key`; default `$TALLY_DEV_DIR/certs`, else `./.tally-dev/certs`). `--seed` and
//! `--certs` flags override them.

// Each example uses a different part of this module.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::str::FromStr;

use anyhow::{Context as _, bail};
use tally_client::{Client, ClientConfig};

/// `--name value` flags and the positional words after them.
pub struct Args {
    flags: BTreeMap<String, String>,
    /// Words that are not flags, in order.
    pub words: Vec<String>,
}

impl Args {
    /// Parses the process's arguments. Every flag takes a value (`--name value`); `known`
    /// lists the names accepted, so a typo is an error rather than a silent default.
    pub fn parse(known: &[&str]) -> anyhow::Result<Args> {
        let mut flags = BTreeMap::new();
        let mut words = Vec::new();
        let mut it = std::env::args().skip(1);
        while let Some(arg) = it.next() {
            if let Some(name) = arg.strip_prefix("--") {
                if !known.contains(&name) && name != "seed" && name != "certs" {
                    bail!("unknown flag --{name} (known: --{})", known.join(", --"));
                }
                let value = it
                    .next()
                    .with_context(|| format!("--{name} needs a value"))?;
                flags.insert(name.to_owned(), value);
            } else {
                words.push(arg);
            }
        }
        Ok(Args { flags, words })
    }

    /// The value of `--name`, parsed, if given.
    pub fn get<T>(&self, name: &str) -> anyhow::Result<Option<T>>
    where
        T: FromStr,
        T::Err: std::fmt::Display,
    {
        self.flags
            .get(name)
            .map(|v| {
                v.parse::<T>()
                    .map_err(|e| anyhow::anyhow!("--{name} {v:?}: {e}"))
            })
            .transpose()
    }

    /// The value of `--name`, parsed, or `default`.
    pub fn get_or<T>(&self, name: &str, default: T) -> anyhow::Result<T>
    where
        T: FromStr,
        T::Err: std::fmt::Display,
    {
        Ok(self.get(name)?.unwrap_or(default))
    }

    /// The value of `--name`, parsed; an error naming the flag if it is missing.
    pub fn required<T>(&self, name: &str) -> anyhow::Result<T>
    where
        T: FromStr,
        T::Err: std::fmt::Display,
    {
        self.get(name)?
            .with_context(|| format!("--{name} is required"))
    }

    /// Connects to the cluster named by `--seed`/`TALLY_SEED` and `--certs`/`TALLY_CERTS`.
    pub async fn connect(&self) -> anyhow::Result<Client> {
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let seeds: Vec<String> = self
            .flags
            .get("seed")
            .cloned()
            .or_else(|| env("TALLY_SEED"))
            .unwrap_or_else(|| "127.0.0.1:4500".to_owned())
            .split(',')
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect();
        let certs = self
            .flags
            .get("certs")
            .cloned()
            .or_else(|| env("TALLY_CERTS"))
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                env("TALLY_DEV_DIR")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| PathBuf::from(".tally-dev"))
                    .join("certs")
            });
        Client::connect(ClientConfig::new(seeds.clone(), &certs))
            .await
            .with_context(|| {
                format!(
                    "cannot connect to {} with the certificates in {} (is `tally dev` \
                     running? set TALLY_SEED and TALLY_CERTS)",
                    seeds.join(","),
                    certs.display()
                )
            })
    }
}
