//! Node membership on etcd: registration under a lease kept alive by a task, listing, and a
//! watch that turns etcd events into [`MembershipEvent`]s.
//!
//! The keep-alive task pings every `ttl / 3`. If the keep-alive stream breaks (etcd
//! restarted, connection lost) it resumes the same lease; if etcd says the lease is gone
//! (it lapsed while etcd was unreachable) it grants a new lease and writes the record again,
//! so a live node always comes back. The watch task resumes from the last revision it saw;
//! after any break it lists the members again and reports the difference, so no join or
//! leave is lost even across compaction.

use std::collections::BTreeMap;
use std::time::Duration;

use etcd_client::{
    Client, EventType, GetOptions, LeaseKeepAliveResponse, LeaseKeepAliveStream, LeaseKeeper,
    PutOptions, WatchOptions,
};
use tally_common::ids::NodeId;
use tally_common::meta::NodeInfo;
use tokio::sync::mpsc;

use crate::etcd::{EtcdStore, decode_nodes, from_etcd, prefix_end};
use crate::store::{
    EpochStoreError, LeaseCommand, MembershipEvent, NodeLease, NodeWatch, Result, WATCH_BUFFER,
};

/// A live lease with its keep-alive stream.
struct Lease {
    id: i64,
    keeper: LeaseKeeper,
    stream: LeaseKeepAliveStream,
}

fn encode(info: &NodeInfo) -> Result<Vec<u8>> {
    serde_json::to_vec(info).map_err(|e| EpochStoreError::Backend(format!("encode: {e}")))
}

/// Grants a lease (or resumes `resume` if etcd still has it) and writes the record under it.
async fn establish(
    mut c: Client,
    key: String,
    value: Vec<u8>,
    ttl_secs: i64,
    resume: Option<i64>,
) -> Result<(Lease, i64)> {
    if let Some(id) = resume
        && let Ok((keeper, stream)) = c.lease_keep_alive(id).await
    {
        c.put(key, value, Some(PutOptions::new().with_lease(id)))
            .await
            .map_err(from_etcd)?;
        return Ok((Lease { id, keeper, stream }, ttl_secs));
    }
    let grant = c.lease_grant(ttl_secs, None).await.map_err(from_etcd)?;
    let id = grant.id();
    c.put(key, value, Some(PutOptions::new().with_lease(id)))
        .await
        .map_err(from_etcd)?;
    let (keeper, stream) = c.lease_keep_alive(id).await.map_err(from_etcd)?;
    Ok((Lease { id, keeper, stream }, grant.ttl()))
}

pub(crate) async fn register(
    store: &EtcdStore,
    info: NodeInfo,
    ttl: Duration,
) -> Result<NodeLease> {
    if ttl.is_zero() {
        return Err(EpochStoreError::InvalidArgument(
            "lease ttl must be positive".into(),
        ));
    }
    let ttl_secs = (ttl.as_millis().div_ceil(1000)).max(1) as i64;
    let key = store.keys.node(info.id);
    let value = encode(&info)?;
    let (lease, granted) = store
        .call(|c| establish(c, key.clone(), value.clone(), ttl_secs, None))
        .await?;
    let granted = Duration::from_secs(granted.max(1) as u64);
    let (tx, rx) = mpsc::channel(8);
    let node = info.id;
    let task = tokio::spawn(keep_alive_task(
        store.clone(),
        info,
        ttl_secs,
        granted,
        lease,
        rx,
    ));
    Ok(NodeLease::new(node, granted, tx, task))
}

enum Wake {
    Command(Option<LeaseCommand>),
    Tick,
    Response(std::result::Result<Option<LeaseKeepAliveResponse>, etcd_client::Error>),
}

async fn keep_alive_task(
    store: EtcdStore,
    mut info: NodeInfo,
    ttl_secs: i64,
    ttl: Duration,
    lease: Lease,
    mut commands: mpsc::Receiver<LeaseCommand>,
) {
    let node = info.id;
    let key = store.keys.node(node);
    let attempt_timeout = store.config.request_timeout.min(ttl / 2);
    let mut last_id = lease.id;
    let mut lease = Some(lease);
    let mut ticker = tokio::time::interval(ttl / 3);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let wake = tokio::select! {
            c = commands.recv() => Wake::Command(c),
            _ = ticker.tick() => Wake::Tick,
            r = async {
                match lease.as_mut() {
                    Some(l) => l.stream.message().await,
                    None => std::future::pending().await,
                }
            } => Wake::Response(r),
        };
        match wake {
            Wake::Command(Some(LeaseCommand::Update(new, reply))) => {
                info = new;
                let result = match encode(&info) {
                    Err(e) => Err(e),
                    Ok(value) => {
                        let id = last_id;
                        store
                            .call(|mut c| {
                                let (key, value) = (key.clone(), value.clone());
                                async move {
                                    let opts = PutOptions::new().with_lease(id);
                                    c.put(key, value, Some(opts)).await.map_err(from_etcd)?;
                                    Ok(())
                                }
                            })
                            .await
                    }
                };
                let _ = reply.send(result);
            }
            Wake::Command(Some(LeaseCommand::Deregister(reply))) => {
                let id = last_id;
                let result = store
                    .call(|mut c| async move {
                        match c.lease_revoke(id).await {
                            Ok(_) => Ok(()),
                            // Already gone (lapsed): nothing left to remove.
                            Err(etcd_client::Error::GRpcStatus(s))
                                if s.message().contains("lease not found") =>
                            {
                                Ok(())
                            }
                            Err(e) => Err(from_etcd(e)),
                        }
                    })
                    .await;
                let _ = reply.send(result);
                return;
            }
            Wake::Command(Some(LeaseCommand::Abandon(reply))) => {
                // Dropping the keeper ends the keep-alives; the lease lapses by itself.
                drop(lease.take());
                let _ = reply.send(());
                return;
            }
            Wake::Command(None) => {
                // The handle was dropped: leave now rather than after the TTL.
                drop(lease.take());
                let mut c = store.client();
                let _ = tokio::time::timeout(attempt_timeout, c.lease_revoke(last_id)).await;
                return;
            }
            Wake::Tick => match lease.as_mut() {
                Some(l) => {
                    let sent = tokio::time::timeout(attempt_timeout, l.keeper.keep_alive()).await;
                    if !matches!(sent, Ok(Ok(()))) {
                        tracing::warn!(%node, "lease keep-alive failed; re-establishing");
                        lease = None;
                    }
                }
                None => {
                    let Ok(value) = encode(&info) else { continue };
                    let attempt =
                        establish(store.client(), key.clone(), value, ttl_secs, Some(last_id));
                    match tokio::time::timeout(attempt_timeout, attempt).await {
                        Ok(Ok((l, _))) => {
                            if l.id != last_id {
                                tracing::warn!(%node, "lease had lapsed; registered again");
                            }
                            last_id = l.id;
                            lease = Some(l);
                        }
                        Ok(Err(e)) => tracing::debug!(%node, error = %e, "re-register failed"),
                        Err(_) => tracing::debug!(%node, "re-register timed out"),
                    }
                }
            },
            Wake::Response(Ok(Some(r))) if r.ttl() > 0 => {}
            Wake::Response(Ok(Some(_))) => {
                tracing::warn!(%node, "lease expired at etcd; registering again");
                lease = None;
            }
            Wake::Response(Ok(None) | Err(_)) => {
                tracing::debug!(%node, "lease keep-alive stream ended; resuming");
                lease = None;
            }
        }
    }
}

/// The members and the revision they were read at.
pub(crate) async fn list(store: &EtcdStore) -> Result<(Vec<NodeInfo>, i64)> {
    let prefix = store.keys.nodes();
    store.call(|c| list_once(c, prefix.clone())).await
}

async fn list_once(mut c: Client, prefix: String) -> Result<(Vec<NodeInfo>, i64)> {
    let options = GetOptions::new().with_range(prefix_end(&prefix));
    let resp = c.get(prefix, Some(options)).await.map_err(from_etcd)?;
    let revision = resp.header().map(|h| h.revision()).unwrap_or(0);
    let mut nodes = decode_nodes(resp.kvs());
    nodes.sort_by_key(|n| n.id);
    Ok((nodes, revision))
}

pub(crate) async fn watch(store: &EtcdStore) -> Result<NodeWatch> {
    let (initial, revision) = list(store).await?;
    let (tx, rx) = mpsc::channel(WATCH_BUFFER);
    let known = initial.iter().map(|n| (n.id, n.clone())).collect();
    tokio::spawn(watch_task(store.clone(), known, revision, tx));
    Ok(NodeWatch {
        initial,
        events: rx,
    })
}

fn node_of_key(prefix: &str, key: &[u8]) -> Option<NodeId> {
    let rest = key.strip_prefix(prefix.as_bytes())?;
    std::str::from_utf8(rest).ok()?.parse().ok().map(NodeId)
}

/// Forwards membership changes after `revision` until the receiver is dropped.
async fn watch_task(
    store: EtcdStore,
    mut known: BTreeMap<NodeId, NodeInfo>,
    mut revision: i64,
    tx: mpsc::Sender<MembershipEvent>,
) {
    let prefix = store.keys.nodes();
    let attempt_timeout = store.config.request_timeout;
    let mut backoff = Duration::from_millis(50);
    loop {
        let options = WatchOptions::new()
            .with_range(prefix_end(&prefix))
            .with_start_revision(revision + 1);
        let mut client = store.client();
        let opened =
            tokio::time::timeout(attempt_timeout, client.watch(prefix.clone(), Some(options)))
                .await;
        if let Ok(Ok(mut stream)) = opened {
            loop {
                let message = tokio::select! {
                    _ = tx.closed() => return,
                    m = stream.message() => m,
                };
                let Ok(Some(resp)) = message else { break };
                if resp.canceled() {
                    break;
                }
                backoff = Duration::from_millis(50);
                let mut events = Vec::new();
                for event in resp.events() {
                    let Some(kv) = event.kv() else { continue };
                    revision = revision.max(kv.mod_revision());
                    let Some(id) = node_of_key(&prefix, kv.key()) else {
                        continue;
                    };
                    match event.event_type() {
                        EventType::Delete => {
                            if known.remove(&id).is_some() {
                                events.push(MembershipEvent::Left(id));
                            }
                        }
                        EventType::Put => {
                            for info in decode_nodes(std::slice::from_ref(kv)) {
                                match known.insert(info.id, info.clone()) {
                                    None => events.push(MembershipEvent::Joined(info)),
                                    Some(old) if old != info => {
                                        events.push(MembershipEvent::Updated(info))
                                    }
                                    Some(_) => {}
                                }
                            }
                        }
                    }
                }
                if let Some(h) = resp.header() {
                    revision = revision.max(h.revision());
                }
                for e in events {
                    if tx.send(e).await.is_err() {
                        return;
                    }
                }
            }
        }
        // The watch broke (etcd restarted, connection lost, compaction): list again and
        // report the difference, then watch from the listed revision.
        loop {
            tokio::select! {
                _ = tx.closed() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(1));
            let listed =
                tokio::time::timeout(attempt_timeout, list_once(store.client(), prefix.clone()))
                    .await;
            let Ok(Ok((nodes, rev))) = listed else {
                continue;
            };
            let now: BTreeMap<NodeId, NodeInfo> = nodes.into_iter().map(|n| (n.id, n)).collect();
            let mut events = Vec::new();
            for id in known.keys() {
                if !now.contains_key(id) {
                    events.push(MembershipEvent::Left(*id));
                }
            }
            for (id, info) in &now {
                match known.get(id) {
                    None => events.push(MembershipEvent::Joined(info.clone())),
                    Some(old) if old != info => events.push(MembershipEvent::Updated(info.clone())),
                    Some(_) => {}
                }
            }
            for e in events {
                if tx.send(e).await.is_err() {
                    return;
                }
            }
            known = now;
            revision = rev;
            break;
        }
    }
}
