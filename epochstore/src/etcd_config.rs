//! [`EtcdConfig`]: how to reach etcd (endpoints, cluster name, user/password, TLS) and the
//! deadlines of every call, with `validate()` and the translation to `etcd-client` options.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use etcd_client::ConnectOptions;

use crate::store::{EpochStoreError, Result};

/// User and password for etcd's RBAC.
#[derive(Clone)]
pub struct EtcdAuth {
    pub user: String,
    pub password: String,
}

impl fmt::Debug for EtcdAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdAuth")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// TLS to etcd: the CA that signed etcd's certificate, and optionally a client certificate
/// and key (PEM files) for `--client-cert-auth`. Endpoints must then be `https://`.
#[derive(Clone, Debug)]
pub struct EtcdTls {
    pub ca_file: PathBuf,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// Server name to verify, if it differs from the endpoint's host.
    pub domain: Option<String>,
}

/// How to reach etcd, and the deadlines of every call.
#[derive(Clone, Debug)]
pub struct EtcdConfig {
    /// `http://host:port` (or `https://` with `tls`).
    pub endpoints: Vec<String>,
    /// Cluster name: keys live under `/tally/<cluster>/`.
    pub cluster: String,
    pub auth: Option<EtcdAuth>,
    pub tls: Option<EtcdTls>,
    /// Deadline of one store call, retries included.
    pub call_timeout: Duration,
    /// Bound on one attempt (one read-modify-write round) inside a call.
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
    /// HTTP/2 keep-alive ping interval and timeout: how fast a dead connection is noticed.
    pub keep_alive_interval: Duration,
    pub keep_alive_timeout: Duration,
}

impl EtcdConfig {
    /// A configuration with default deadlines (5 s per call, 2 s per attempt, 1 s connect).
    pub fn new(endpoints: Vec<String>, cluster: impl Into<String>) -> EtcdConfig {
        EtcdConfig {
            endpoints,
            cluster: cluster.into(),
            auth: None,
            tls: None,
            call_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(1),
            keep_alive_interval: Duration::from_secs(1),
            keep_alive_timeout: Duration::from_secs(1),
        }
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(EpochStoreError::Config(m));
        if self.endpoints.is_empty() {
            return bad("no etcd endpoints".into());
        }
        let valid_name = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
        if self.cluster.is_empty() || !self.cluster.chars().all(valid_name) {
            return bad(format!(
                "cluster name {:?} must be non-empty and use only [A-Za-z0-9._-]",
                self.cluster
            ));
        }
        for e in &self.endpoints {
            let https = e.starts_with("https://");
            if self.tls.is_some() && !https {
                return bad(format!("endpoint {e}: TLS needs an https:// endpoint"));
            }
            if self.tls.is_none() && https {
                return bad(format!("endpoint {e}: https:// needs the TLS options"));
            }
        }
        for (name, d) in [
            ("call_timeout", self.call_timeout),
            ("request_timeout", self.request_timeout),
            ("connect_timeout", self.connect_timeout),
            ("keep_alive_interval", self.keep_alive_interval),
            ("keep_alive_timeout", self.keep_alive_timeout),
        ] {
            if d.is_zero() {
                return bad(format!("{name} must be positive"));
            }
        }
        Ok(())
    }

    pub(crate) fn connect_options(&self) -> Result<ConnectOptions> {
        let mut options = ConnectOptions::new()
            .with_connect_timeout(self.connect_timeout)
            .with_keep_alive(self.keep_alive_interval, self.keep_alive_timeout)
            .with_keep_alive_while_idle(true);
        if let Some(auth) = &self.auth {
            // Simple tokens expire (5 min by default): refresh them instead of failing.
            options = options
                .with_user(auth.user.clone(), auth.password.clone())
                .with_auto_token_refresh(true);
        }
        if let Some(tls) = &self.tls {
            let read = |p: &PathBuf| {
                std::fs::read(p)
                    .map_err(|e| EpochStoreError::Config(format!("read {}: {e}", p.display())))
            };
            let mut t = etcd_client::TlsOptions::new()
                .ca_certificate(etcd_client::Certificate::from_pem(read(&tls.ca_file)?));
            match (&tls.cert_file, &tls.key_file) {
                (Some(cert), Some(key)) => {
                    t = t.identity(etcd_client::Identity::from_pem(read(cert)?, read(key)?));
                }
                (None, None) => {}
                _ => {
                    return Err(EpochStoreError::Config(
                        "TLS client certificate and key go together".into(),
                    ));
                }
            }
            if let Some(domain) = &tls.domain {
                t = t.domain_name(domain.clone());
            }
            options = options.with_tls(t);
        }
        Ok(options)
    }
}
