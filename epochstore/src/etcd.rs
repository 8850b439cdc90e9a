//! [`EtcdStore`]: the production epoch store on etcd v3 (`etcd-client`).
//!
//! Key layout (values are JSON, readable with `etcdctl get --prefix /tally/`):
//!
//! ```text
//! /tally/<cluster>/logs/<log_id>   LogMetadata: next_epoch, node-set history, LCE, attributes
//! /tally/<cluster>/nodes/<node_id> NodeInfo, attached to the node's lease
//! /tally/<cluster>/data-dirs/<node_id>  {"node", "data_dir"}: the data directory bound to a
//!                                  storage node id (DESIGN §7), written once, never leased
//! ```
//!
//! Every change is read → decide ([`crate::update`]) → a transaction that writes only if the
//! key's `mod_revision` is still the one read; on a lost race the transaction's else branch
//! returns the fresh value and the change is decided again. Every call has a deadline
//! (`call_timeout`); inside it, transient failures (etcd down, no leader, connection reset)
//! are retried with jittered exponential backoff, each attempt bounded by `request_timeout`.
//! The gRPC channel has a connect timeout and HTTP/2 keep-alive so a dead etcd is noticed.
//! Membership (leases, keep-alive, watch) is in `etcd_members`, configuration in
//! [`crate::etcd_config`].

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, GetOptions, KeyValue, Txn, TxnOp, TxnOpResponse};
use rand::Rng;
use tally_common::ids::{Epoch, LogId, Lsn, NodeId};
use tally_common::meta::{DataDirBinding, DataDirId, LogAttributes, LogMetadata, NodeInfo};
use tokio::time::Instant;

pub use crate::etcd_config::{EtcdAuth, EtcdConfig, EtcdTls};
use crate::etcd_members;
use crate::store::{
    ActivateOptions, Activation, BoxFuture, EpochStore, EpochStoreError, NodeLease, NodeWatch,
    Result,
};
use crate::update::{self, DataDirRecord};

/// The etcd keys of one cluster.
#[derive(Clone, Debug)]
pub(crate) struct Keys {
    prefix: String,
}

impl Keys {
    fn new(cluster: &str) -> Keys {
        Keys {
            prefix: format!("/tally/{cluster}/"),
        }
    }

    pub(crate) fn log(&self, log: LogId) -> String {
        format!("{}logs/{}", self.prefix, log.0)
    }

    pub(crate) fn logs(&self) -> String {
        format!("{}logs/", self.prefix)
    }

    pub(crate) fn node(&self, node: NodeId) -> String {
        format!("{}nodes/{}", self.prefix, node.0)
    }

    pub(crate) fn nodes(&self) -> String {
        format!("{}nodes/", self.prefix)
    }

    pub(crate) fn data_dir(&self, node: NodeId) -> String {
        format!("{}data-dirs/{}", self.prefix, node.0)
    }
}

/// The end of the key range of everything under `prefix` (which ends in `/`).
pub(crate) fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    // '/' + 1 = '0': every key under the prefix sorts below it.
    *end.last_mut().expect("prefix is not empty") += 1;
    end
}

/// gRPC status codes (fixed by the gRPC spec) that mean "try again".
const GRPC_RETRYABLE: [i32; 7] = [
    1,  // CANCELLED
    2,  // UNKNOWN (connection reset and similar)
    4,  // DEADLINE_EXCEEDED
    8,  // RESOURCE_EXHAUSTED
    10, // ABORTED
    13, // INTERNAL (HTTP/2 errors)
    14, // UNAVAILABLE
];
const GRPC_PERMISSION_DENIED: i32 = 7;
const GRPC_UNAUTHENTICATED: i32 = 16;

/// Classifies an etcd client error as retryable or not.
pub(crate) fn from_etcd(e: etcd_client::Error) -> EpochStoreError {
    use etcd_client::Error as E;
    match e {
        E::GRpcStatus(s) => classify(s.code() as i32, &format!("{:?}", s.code()), s.message()),
        E::TransportError(_) | E::IoError(_) | E::LeaseKeepAliveError(_) | E::WatchError(_) => {
            EpochStoreError::Unavailable {
                reason: e.to_string(),
            }
        }
        E::InvalidArgs(_) | E::InvalidUri(_) | E::EndpointError(_) => {
            EpochStoreError::Config(e.to_string())
        }
        other => EpochStoreError::Backend(other.to_string()),
    }
}

/// Classifies a gRPC status by its code (numbers fixed by the gRPC spec) and message.
fn classify(code: i32, code_name: &str, message: &str) -> EpochStoreError {
    let reason = format!("{code_name}: {message}");
    // etcd reports credential problems as INVALID_ARGUMENT / FAILED_PRECONDITION.
    let auth_problem = [
        "authentication failed",
        "user name is empty",
        "permission denied",
    ]
    .iter()
    .any(|m| message.contains(m));
    if auth_problem || code == GRPC_PERMISSION_DENIED || code == GRPC_UNAUTHENTICATED {
        EpochStoreError::Unauthorized(reason)
    } else if GRPC_RETRYABLE.contains(&code) {
        EpochStoreError::Unavailable { reason }
    } else {
        EpochStoreError::Backend(reason)
    }
}

const BACKOFF_MIN: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_millis(500);

/// The etcd epoch store. Cloning shares the connection.
#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
    pub(crate) config: Arc<EtcdConfig>,
    pub(crate) keys: Arc<Keys>,
}

impl fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdStore")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl EtcdStore {
    /// Connects to etcd. The channel is lazy; with credentials the first authentication is
    /// retried within `call_timeout`.
    pub async fn connect(config: EtcdConfig) -> Result<EtcdStore> {
        config.validate()?;
        let options = config.connect_options()?;
        let deadline = Instant::now() + config.call_timeout;
        let mut backoff = BACKOFF_MIN;
        let client = loop {
            let attempt = tokio::time::timeout_at(
                deadline,
                Client::connect(config.endpoints.clone(), Some(options.clone())),
            )
            .await;
            match attempt {
                Err(_) => {
                    return Err(EpochStoreError::Timeout {
                        after: config.call_timeout,
                    });
                }
                Ok(Ok(client)) => break client,
                Ok(Err(e)) => {
                    let e = from_etcd(e);
                    if !e.is_retryable() || Instant::now() + backoff >= deadline {
                        return Err(e);
                    }
                    tokio::time::sleep(jitter(backoff)).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        };
        let keys = Arc::new(Keys::new(&config.cluster));
        Ok(EtcdStore {
            client,
            config: Arc::new(config),
            keys,
        })
    }

    pub fn config(&self) -> &EtcdConfig {
        &self.config
    }

    /// Runs `attempt` until it succeeds, fails for good, or the call's deadline passes.
    pub(crate) async fn call<T, F, Fut>(&self, mut attempt: F) -> Result<T>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let deadline = Instant::now() + self.config.call_timeout;
        let mut backoff = BACKOFF_MIN;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(EpochStoreError::Timeout {
                    after: self.config.call_timeout,
                });
            }
            let bound = remaining.min(self.config.request_timeout);
            let result = match tokio::time::timeout(bound, attempt(self.client.clone())).await {
                Ok(r) => r,
                Err(_) => Err(EpochStoreError::Timeout { after: bound }),
            };
            match result {
                Err(e) if e.is_retryable() => {
                    let pause = jitter(backoff);
                    if Instant::now() + pause >= deadline {
                        return Err(match e {
                            EpochStoreError::Timeout { .. } => EpochStoreError::Timeout {
                                after: self.config.call_timeout,
                            },
                            other => other,
                        });
                    }
                    tracing::debug!(error = %e, "epoch store call failed, retrying");
                    tokio::time::sleep(pause).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
                other => return other,
            }
        }
    }

    /// A client for one attempt (tasks that manage their own deadlines).
    pub(crate) fn client(&self) -> Client {
        self.client.clone()
    }

    /// Read-modify-write of one log: `decide` returns the value to write (or `None` to leave
    /// it) and the call's result; it is re-run on the fresh value after a lost race.
    async fn read_modify_write<T, D>(&self, log: LogId, decide: D) -> Result<T>
    where
        D: Fn(&LogMetadata, &[NodeInfo]) -> Result<(Option<LogMetadata>, T)>,
    {
        let key = self.keys.log(log);
        let nodes_prefix = self.keys.nodes();
        let decide = &decide;
        self.call(|mut c| {
            let key = key.clone();
            let nodes_prefix = nodes_prefix.clone();
            async move {
                // One snapshot of the log and of membership.
                let read = Txn::new().and_then([
                    TxnOp::get(key.clone(), None),
                    TxnOp::get(
                        nodes_prefix.clone(),
                        Some(GetOptions::new().with_range(prefix_end(&nodes_prefix))),
                    ),
                ]);
                let resp = c.txn(read).await.map_err(from_etcd)?;
                let mut gets = resp.op_responses().into_iter().filter_map(|r| match r {
                    TxnOpResponse::Get(g) => Some(g),
                    _ => None,
                });
                let log_kvs = gets.next().map(|g| g.kvs().to_vec()).unwrap_or_default();
                let nodes = gets
                    .next()
                    .map(|g| decode_nodes(g.kvs()))
                    .unwrap_or_default();
                let mut current = match log_kvs.first() {
                    Some(kv) => decode_log(kv)?,
                    None => return Err(EpochStoreError::NotFound { log }),
                };
                loop {
                    let (meta, revision) = &current;
                    let (updated, out) = decide(meta, &nodes)?;
                    let Some(updated) = updated else {
                        return Ok(out);
                    };
                    let bytes = serde_json::to_vec(&updated)
                        .map_err(|e| EpochStoreError::Backend(format!("encode: {e}")))?;
                    let cas = Txn::new()
                        .when([Compare::mod_revision(
                            key.clone(),
                            CompareOp::Equal,
                            *revision,
                        )])
                        .and_then([TxnOp::put(key.clone(), bytes, None)])
                        .or_else([TxnOp::get(key.clone(), None)]);
                    let resp = c.txn(cas).await.map_err(from_etcd)?;
                    if resp.succeeded() {
                        return Ok(out);
                    }
                    // Lost the race: decide again on the value that won.
                    current = match resp.op_responses().into_iter().next() {
                        Some(TxnOpResponse::Get(g)) => match g.kvs().first() {
                            Some(kv) => decode_log(kv)?,
                            None => return Err(EpochStoreError::NotFound { log }),
                        },
                        _ => return Err(EpochStoreError::Backend("malformed txn response".into())),
                    };
                }
            }
        })
        .await
    }
}

fn jitter(d: Duration) -> Duration {
    let factor = rand::rng().random_range(0.5..1.0);
    d.mul_f64(factor)
}

fn decode_log(kv: &KeyValue) -> Result<(LogMetadata, i64)> {
    let meta = serde_json::from_slice(kv.value()).map_err(|e| EpochStoreError::Corrupt {
        key: String::from_utf8_lossy(kv.key()).into_owned(),
        reason: e.to_string(),
    })?;
    Ok((meta, kv.mod_revision()))
}

/// Decodes membership records; one that does not decode is skipped (and reported) so that a
/// single bad record cannot stop every activation.
pub(crate) fn decode_nodes(kvs: &[KeyValue]) -> Vec<NodeInfo> {
    kvs.iter()
        .filter_map(|kv| match serde_json::from_slice::<NodeInfo>(kv.value()) {
            Ok(n) => Some(n),
            Err(e) => {
                tracing::error!(
                    key = %String::from_utf8_lossy(kv.key()), error = %e,
                    "undecodable membership record skipped"
                );
                None
            }
        })
        .collect()
}

/// Page size of range reads (keeps responses far below gRPC's 4 MiB message limit).
const PAGE: i64 = 500;

impl EpochStore for EtcdStore {
    fn create_log(
        &self,
        log: LogId,
        attributes: LogAttributes,
    ) -> BoxFuture<'_, Result<LogMetadata>> {
        Box::pin(async move {
            let meta = update::new_log(log, attributes)?;
            let bytes = serde_json::to_vec(&meta)
                .map_err(|e| EpochStoreError::Backend(format!("encode: {e}")))?;
            let key = self.keys.log(log);
            let mut attempts = 0u32;
            self.call(|mut c| {
                attempts += 1;
                let retry = attempts > 1;
                let (key, bytes) = (key.clone(), bytes.clone());
                async move {
                    let txn = Txn::new()
                        .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                        .and_then([TxnOp::put(key.clone(), bytes.clone(), None)])
                        .or_else([TxnOp::get(key, None)]);
                    let resp = c.txn(txn).await.map_err(from_etcd)?;
                    if resp.succeeded() {
                        return Ok(());
                    }
                    // An earlier attempt that timed out may have created it: same bytes, ours.
                    let ours = retry
                        && matches!(resp.op_responses().first(),
                            Some(TxnOpResponse::Get(g)) if g.kvs().first().map(|kv| kv.value()) == Some(&bytes[..]));
                    if ours { Ok(()) } else { Err(EpochStoreError::AlreadyExists { log }) }
                }
            })
            .await?;
            Ok(meta)
        })
    }

    fn get_log(&self, log: LogId) -> BoxFuture<'_, Result<LogMetadata>> {
        Box::pin(async move {
            let key = self.keys.log(log);
            self.call(|mut c| {
                let key = key.clone();
                async move {
                    let resp = c.get(key, None).await.map_err(from_etcd)?;
                    match resp.kvs().first() {
                        Some(kv) => Ok(decode_log(kv)?.0),
                        None => Err(EpochStoreError::NotFound { log }),
                    }
                }
            })
            .await
        })
    }

    fn list_logs(&self) -> BoxFuture<'_, Result<BTreeMap<LogId, LogMetadata>>> {
        Box::pin(async move {
            let prefix = self.keys.logs();
            self.call(|mut c| {
                let prefix = prefix.clone();
                async move {
                    let end = prefix_end(&prefix);
                    let mut logs = BTreeMap::new();
                    let mut start = prefix.as_bytes().to_vec();
                    let mut revision = 0;
                    loop {
                        let mut options =
                            GetOptions::new().with_range(end.clone()).with_limit(PAGE);
                        if revision > 0 {
                            options = options.with_revision(revision);
                        }
                        let resp = c
                            .get(start.clone(), Some(options))
                            .await
                            .map_err(from_etcd)?;
                        if revision == 0 {
                            revision = resp.header().map(|h| h.revision()).unwrap_or(0);
                        }
                        for kv in resp.kvs() {
                            let id = kv.key()[prefix.len()..].to_vec();
                            let id = String::from_utf8(id).ok().and_then(|s| s.parse().ok());
                            match id {
                                Some(id) => {
                                    logs.insert(LogId(id), decode_log(kv)?.0);
                                }
                                None => tracing::warn!(
                                    key = %String::from_utf8_lossy(kv.key()),
                                    "foreign key under the logs prefix ignored"
                                ),
                            }
                        }
                        match resp.kvs().last() {
                            Some(last) if resp.more() => {
                                start = last.key().to_vec();
                                start.push(0);
                            }
                            _ => return Ok(logs),
                        }
                    }
                }
            })
            .await
        })
    }

    fn update_attributes(
        &self,
        log: LogId,
        attributes: LogAttributes,
    ) -> BoxFuture<'_, Result<LogMetadata>> {
        Box::pin(async move {
            attributes.validate()?;
            self.read_modify_write(log, |current, _| {
                let updated = update::set_attributes(current, attributes.clone())?;
                Ok((Some(updated.clone()), updated))
            })
            .await
        })
    }

    fn activate(&self, log: LogId, options: ActivateOptions) -> BoxFuture<'_, Result<Activation>> {
        Box::pin(async move {
            self.read_modify_write(log, |current, nodes| {
                let (updated, activation) = update::activate(log, current, nodes, &options)?;
                Ok((Some(updated), activation))
            })
            .await
        })
    }

    fn set_last_clean_epoch(
        &self,
        log: LogId,
        epoch: Epoch,
        tail: Lsn,
        recovered: Option<tally_common::RecoveredEpoch>,
    ) -> BoxFuture<'_, Result<LogMetadata>> {
        Box::pin(async move {
            self.read_modify_write(log, |current, _| {
                match update::set_last_clean_epoch(current, epoch, tail, recovered)? {
                    Some(updated) => Ok((Some(updated.clone()), updated)),
                    None => Ok((None, current.clone())),
                }
            })
            .await
        })
    }

    fn register_node(&self, info: NodeInfo, ttl: Duration) -> BoxFuture<'_, Result<NodeLease>> {
        Box::pin(etcd_members::register(self, info, ttl))
    }

    fn list_nodes(&self) -> BoxFuture<'_, Result<Vec<NodeInfo>>> {
        Box::pin(async move { Ok(etcd_members::list(self).await?.0) })
    }

    fn watch_nodes(&self) -> BoxFuture<'_, Result<NodeWatch>> {
        Box::pin(etcd_members::watch(self))
    }

    fn bind_data_dir(&self, node: NodeId, dir: DataDirId) -> BoxFuture<'_, Result<DataDirBinding>> {
        Box::pin(async move {
            let key = self.keys.data_dir(node);
            let bytes = serde_json::to_vec(&DataDirRecord {
                node,
                data_dir: dir,
            })
            .map_err(|e| EpochStoreError::Backend(format!("encode: {e}")))?;
            self.call(|mut c| {
                let (key, bytes) = (key.clone(), bytes.clone());
                async move {
                    let txn = Txn::new()
                        .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                        .and_then([TxnOp::put(key.clone(), bytes, None)])
                        .or_else([TxnOp::get(key.clone(), None)]);
                    let resp = c.txn(txn).await.map_err(from_etcd)?;
                    if resp.succeeded() {
                        return Ok(DataDirBinding::New);
                    }
                    let Some(TxnOpResponse::Get(got)) = resp.op_responses().into_iter().next()
                    else {
                        return Err(EpochStoreError::Backend(format!(
                            "{key}: the transaction's else branch returned no value"
                        )));
                    };
                    let Some(kv) = got.kvs().first() else {
                        return Err(EpochStoreError::Backend(format!(
                            "{key}: present but read back empty"
                        )));
                    };
                    let value: DataDirRecord = serde_json::from_slice(kv.value()).map_err(|e| {
                        EpochStoreError::Corrupt {
                            key: key.clone(),
                            reason: e.to_string(),
                        }
                    })?;
                    // `Same` also when an earlier attempt that timed out had bound it.
                    Ok(update::data_dir_binding(Some(value.data_dir), dir))
                }
            })
            .await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_layout() {
        let keys = Keys::new("prod");
        assert_eq!(keys.log(LogId(42)), "/tally/prod/logs/42");
        assert_eq!(keys.node(NodeId(7)), "/tally/prod/nodes/7");
        let end = prefix_end(&keys.logs());
        assert_eq!(end, b"/tally/prod/logs0".to_vec());
        // Every key under the prefix sorts inside [prefix, end); the nodes do not.
        for k in [keys.log(LogId(1)), keys.log(LogId(u64::MAX))] {
            assert!(k.as_bytes() >= keys.logs().as_bytes() && k.as_bytes() < &end[..]);
        }
        assert!(keys.node(NodeId(1)).as_bytes() >= &end[..]);
    }

    #[test]
    fn error_classification() {
        assert!(classify(14, "Unavailable", "connection refused").is_retryable());
        assert!(classify(4, "DeadlineExceeded", "deadline").is_retryable());
        let wrong_password = "etcdserver: authentication failed, invalid user ID or password";
        assert!(matches!(
            classify(3, "", wrong_password),
            EpochStoreError::Unauthorized(_)
        ));
        let denied = "etcdserver: permission denied";
        assert!(matches!(
            classify(9, "", denied),
            EpochStoreError::Unauthorized(_)
        ));
        assert!(matches!(
            classify(3, "", "bad range"),
            EpochStoreError::Backend(_)
        ));
        let invalid = etcd_client::Error::InvalidArgs("x".into());
        assert!(matches!(from_etcd(invalid), EpochStoreError::Config(_)));
    }

    #[test]
    fn config_validation() {
        let ok = EtcdConfig::new(vec!["http://127.0.0.1:2379".into()], "prod");
        ok.validate().unwrap();
        let mut bad = ok.clone();
        bad.cluster = "a/b".into();
        assert!(matches!(bad.validate(), Err(EpochStoreError::Config(_))));
        let mut bad = ok.clone();
        bad.endpoints = vec!["https://127.0.0.1:2379".into()];
        assert!(matches!(bad.validate(), Err(EpochStoreError::Config(_))));
        let mut bad = ok;
        bad.call_timeout = Duration::ZERO;
        assert!(matches!(bad.validate(), Err(EpochStoreError::Config(_))));
    }
}
