//! [`EtcdHarness`]: a real etcd (Debian's `/usr/bin/etcd`) on free loopback ports in a
//! temporary directory, for tests of any crate (feature `harness`).
//!
//! `start()` picks two free ports (bind `127.0.0.1:0`, read the port, release it), starts
//! etcd with its data and log in a fresh temporary directory and waits until it answers a
//! status call. `kill()` sends SIGKILL; `restart()` starts it again on the same data
//! directory and ports. `start_tls()` serves clients over TLS with client-certificate
//! authentication, from PEM material the caller generates. Dropping the harness kills etcd and deletes the directory. The
//! etcd binary can be overridden with `TALLY_ETCD_BIN`; etcd's own log is kept in
//! `<dir>/etcd.log` and its tail is included in start errors.

use std::fs::File;
use std::io;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use etcd_client::{Client, ConnectOptions};
use tempfile::TempDir;
use tokio::time::Instant;

use crate::etcd::{EtcdConfig, EtcdStore, EtcdTls};
use crate::store::Result as StoreResult;

/// How long `start()`/`restart()` wait for etcd to answer.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// PEM material to run etcd with TLS and client-certificate authentication.
#[derive(Clone)]
pub struct HarnessTls {
    pub ca_pem: String,
    pub server_cert_pem: String,
    pub server_key_pem: String,
    /// The client identity the harness uses to probe etcd (and hands out in `config`).
    pub client_cert_pem: String,
    pub client_key_pem: String,
}

impl std::fmt::Debug for HarnessTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HarnessTls").finish_non_exhaustive()
    }
}

/// A running (or killed) local etcd.
#[derive(Debug)]
pub struct EtcdHarness {
    dir: TempDir,
    client_port: u16,
    peer_port: u16,
    tls: Option<HarnessTls>,
    child: Option<Child>,
}

/// The arguments every harness etcd member runs with: its name and data directory, client and
/// peer URLs on loopback, the initial cluster, short raft timers (a fast start and a minimum
/// lease TTL of 1 s) and warnings-only logging.
fn member_args(
    command: &mut Command,
    name: &str,
    data_dir: &Path,
    client: &str,
    peer: &str,
    initial_cluster: &str,
) {
    command
        .arg("--name")
        .arg(name)
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--listen-client-urls")
        .arg(client)
        .arg("--advertise-client-urls")
        .arg(client)
        .arg("--listen-peer-urls")
        .arg(peer)
        .arg("--initial-advertise-peer-urls")
        .arg(peer)
        .arg("--initial-cluster")
        .arg(initial_cluster)
        .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
        .args(["--logger", "zap", "--log-level", "warn"]);
}

fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl EtcdHarness {
    /// Starts etcd on free ports in a new temporary directory and waits until it serves.
    pub async fn start() -> io::Result<EtcdHarness> {
        Self::start_with(None).await
    }

    /// Starts etcd serving clients over TLS only, requiring client certificates signed by
    /// the CA in `tls` (`--client-cert-auth`).
    pub async fn start_tls(tls: HarnessTls) -> io::Result<EtcdHarness> {
        Self::start_with(Some(tls)).await
    }

    async fn start_with(tls: Option<HarnessTls>) -> io::Result<EtcdHarness> {
        let mut last_error = None;
        // A port picked free can be taken by someone else before etcd binds it; pick again.
        for _ in 0..3 {
            let mut h = EtcdHarness {
                dir: tempfile::Builder::new().prefix("tally-etcd-").tempdir()?,
                client_port: free_port()?,
                peer_port: free_port()?,
                tls: tls.clone(),
                child: None,
            };
            if h.client_port == h.peer_port {
                continue;
            }
            match h.launch().await {
                Ok(()) => return Ok(h),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or_else(|| io::Error::other("no free loopback ports")))
    }

    fn data_dir_path(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("etcd.log")
    }

    async fn launch(&mut self) -> io::Result<()> {
        let bin = std::env::var("TALLY_ETCD_BIN").unwrap_or_else(|_| "/usr/bin/etcd".into());
        let client = self.client_url();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let mut command = Command::new(&bin);
        if let Some(tls) = &self.tls {
            for (name, pem) in [
                ("ca.pem", &tls.ca_pem),
                ("server.pem", &tls.server_cert_pem),
                ("server-key.pem", &tls.server_key_pem),
                ("client.pem", &tls.client_cert_pem),
                ("client-key.pem", &tls.client_key_pem),
            ] {
                std::fs::write(self.dir.path().join(name), pem)?;
            }
            command
                .arg("--cert-file")
                .arg(self.dir.path().join("server.pem"))
                .arg("--key-file")
                .arg(self.dir.path().join("server-key.pem"))
                .arg("--trusted-ca-file")
                .arg(self.dir.path().join("ca.pem"))
                .arg("--client-cert-auth");
        }
        member_args(
            &mut command,
            "default",
            &self.data_dir_path(),
            &client,
            &peer,
            &format!("default={peer}"),
        );
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("start {bin}: {e}")))?;
        self.child = Some(child);
        self.wait_ready().await
    }

    async fn wait_ready(&mut self) -> io::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut options = ConnectOptions::new().with_connect_timeout(Duration::from_millis(200));
        if let Some(tls) = &self.tls {
            let identity =
                etcd_client::Identity::from_pem(&tls.client_cert_pem, &tls.client_key_pem);
            options = options.with_tls(
                etcd_client::TlsOptions::new()
                    .ca_certificate(etcd_client::Certificate::from_pem(&tls.ca_pem))
                    .identity(identity),
            );
        }
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                self.child = None;
                return Err(io::Error::other(format!(
                    "etcd exited with {status} during start; log tail:\n{}",
                    self.log_tail()
                )));
            }
            let probe = async {
                let mut c = Client::connect([self.client_url()], Some(options.clone())).await?;
                c.status().await
            };
            if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(500), probe).await {
                return Ok(());
            }
            if Instant::now() >= deadline {
                self.kill();
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "etcd did not answer within {READY_TIMEOUT:?}; log tail:\n{}",
                        self.log_tail()
                    ),
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// `http://127.0.0.1:<client port>` (`https://` with TLS).
    pub fn client_url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    pub fn endpoints(&self) -> Vec<String> {
        vec![self.client_url()]
    }

    pub fn data_dir(&self) -> PathBuf {
        self.data_dir_path()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A store configuration for this etcd and `cluster` (with the harness's client
    /// certificate when etcd runs with TLS).
    pub fn config(&self, cluster: &str) -> EtcdConfig {
        let mut config = EtcdConfig::new(self.endpoints(), cluster);
        if self.tls.is_some() {
            config.tls = Some(EtcdTls {
                ca_file: self.dir.path().join("ca.pem"),
                cert_file: Some(self.dir.path().join("client.pem")),
                key_file: Some(self.dir.path().join("client-key.pem")),
                domain: None,
            });
        }
        config
    }

    /// Connects an [`EtcdStore`] for `cluster` with default deadlines.
    pub async fn store(&self, cluster: &str) -> StoreResult<EtcdStore> {
        EtcdStore::connect(self.config(cluster)).await
    }

    /// Whether etcd is running (not killed).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Kills etcd with SIGKILL and reaps it. The data directory stays.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // `Child::kill` sends SIGKILL on Unix.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts etcd again on the same data directory and ports (after `kill`).
    pub async fn restart(&mut self) -> io::Result<()> {
        self.kill();
        self.launch().await
    }
}

impl Drop for EtcdHarness {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A real multi-member etcd cluster on loopback (for chaos tests that kill etcd members).
///
/// Every member has its own data directory under one temporary directory and its own client
/// and peer ports; `kill(i)` / `restart(i)` act on one member, keeping its data. The cluster
/// serves while a majority runs.
#[derive(Debug)]
pub struct EtcdCluster {
    dir: TempDir,
    members: Vec<EtcdMember>,
}

#[derive(Debug)]
struct EtcdMember {
    name: String,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
}

impl EtcdCluster {
    /// Starts `size` members on free ports and waits until each answers a status call (which
    /// needs an elected leader).
    pub async fn start(size: usize) -> io::Result<EtcdCluster> {
        if size == 0 {
            return Err(io::Error::other(
                "an etcd cluster needs at least one member",
            ));
        }
        let dir = tempfile::Builder::new()
            .prefix("tally-etcd-cluster-")
            .tempdir()?;
        // Hold every listener until all ports are picked, so no two members share a port.
        let mut holders = Vec::new();
        let mut port = || -> io::Result<u16> {
            let l = TcpListener::bind("127.0.0.1:0")?;
            let p = l.local_addr()?.port();
            holders.push(l);
            Ok(p)
        };
        let mut members = Vec::new();
        for i in 0..size {
            members.push(EtcdMember {
                name: format!("m{i}"),
                client_port: port()?,
                peer_port: port()?,
                child: None,
            });
        }
        drop(holders);
        let mut cluster = EtcdCluster { dir, members };
        for i in 0..size {
            cluster.launch(i)?;
        }
        for i in 0..size {
            cluster.wait_ready(i).await?;
        }
        Ok(cluster)
    }

    fn initial_cluster(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn member_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(&self.members[i].name)
    }

    fn launch(&mut self, i: usize) -> io::Result<()> {
        let bin = std::env::var("TALLY_ETCD_BIN").unwrap_or_else(|_| "/usr/bin/etcd".into());
        let initial = self.initial_cluster();
        let dir = self.member_dir(i);
        std::fs::create_dir_all(&dir)?;
        let log = File::options()
            .create(true)
            .append(true)
            .open(dir.join("etcd.log"))?;
        let m = &mut self.members[i];
        let client = format!("http://127.0.0.1:{}", m.client_port);
        let peer = format!("http://127.0.0.1:{}", m.peer_port);
        let mut command = Command::new(&bin);
        member_args(
            &mut command,
            &m.name,
            &dir.join("data"),
            &client,
            &peer,
            &initial,
        );
        let child = command
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", "tally-test"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("start {bin}: {e}")))?;
        m.child = Some(child);
        Ok(())
    }

    async fn wait_ready(&mut self, i: usize) -> io::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let url = self.client_url(i);
        let options = ConnectOptions::new().with_connect_timeout(Duration::from_millis(200));
        loop {
            if let Some(child) = self.members[i].child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                self.members[i].child = None;
                return Err(io::Error::other(format!(
                    "etcd member {i} exited with {status} during start; see {}",
                    self.member_dir(i).join("etcd.log").display()
                )));
            }
            let probe = async {
                let mut c = Client::connect([url.clone()], Some(options.clone())).await?;
                c.status().await
            };
            if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(500), probe).await {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("etcd member {i} did not answer within {READY_TIMEOUT:?}"),
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Number of members.
    pub fn size(&self) -> usize {
        self.members.len()
    }

    /// `http://127.0.0.1:<client port>` of member `i`.
    pub fn client_url(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.members[i].client_port)
    }

    /// Every member's client URL.
    pub fn endpoints(&self) -> Vec<String> {
        (0..self.members.len())
            .map(|i| self.client_url(i))
            .collect()
    }

    /// The operating-system process id of member `i`, if it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.members[i].child.as_ref().map(Child::id)
    }

    /// Whether member `i` runs.
    pub fn is_running(&self, i: usize) -> bool {
        self.members[i].child.is_some()
    }

    /// Kills member `i` with SIGKILL and reaps it; its data stays.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts member `i` again on its data directory and ports and waits until it answers.
    pub async fn restart(&mut self, i: usize) -> io::Result<()> {
        self.kill(i);
        self.launch(i)?;
        self.wait_ready(i).await
    }

    /// A store configuration over every member for `cluster`.
    pub fn config(&self, cluster: &str) -> EtcdConfig {
        EtcdConfig::new(self.endpoints(), cluster)
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}
