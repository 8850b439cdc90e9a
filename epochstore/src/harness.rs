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
        let child = command
            .arg("--name")
            .arg("default")
            .arg("--data-dir")
            .arg(self.data_dir_path())
            .arg("--listen-client-urls")
            .arg(&client)
            .arg("--advertise-client-urls")
            .arg(&client)
            .arg("--listen-peer-urls")
            .arg(&peer)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer)
            .arg("--initial-cluster")
            .arg(format!("default={peer}"))
            // Short raft timers: a fast start and a minimum lease TTL of 1 s.
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .args(["--logger", "zap", "--log-level", "warn"])
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
