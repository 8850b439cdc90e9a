//! Log ownership under load (DESIGN §5): a busy but live sequencer keeps its logs, and a log
//! settles with one sequencer. Found by `benches/compare` (docs/BENCHMARKS.md: appends failing
//! with "preempted by seal" while several sequencer nodes kept activating the same fresh logs).
//!
//! The mechanism, acted out deterministically: a sequencer whose activations are slow (a
//! loaded machine, a slow epoch store) answers a first `Sequence` for a log later than the
//! client's request timeout. It is alive — it acknowledges every packet — but the client used
//! to treat the timeout like an unreachable node: it took the owner for dead, asked the next
//! node in rank order with `no_redirect`, which activated the log too, and the owner's own
//! activation, still running, then sealed the takeover's epoch (and the next `Sequence` to
//! the owner from any client sealed it again). Here the owner's activations wait longer than
//! the client's request timeout ([`TestCluster::delay_activations`]); every append must
//! succeed and every fresh log must be activated exactly once, in epoch 1, by its owner.
//!
//! Every wait is for a condition with a deadline; nothing sleeps.

use std::time::Duration;

use std::sync::Arc;

use anyhow::Context as _;
use tally_client::Client;
use tally_common::transport::{ClientProtocol, Connector, TlsIdentity};
use tally_common::wire::client::{ClientRequest, ClientResponse, Grant};
use tally_common::wire::{ErrorCode, StoreBatch, StoreRecord, StoreStatus};
use tally_common::{Copyset, Durability, Epoch, LogId, NodeId, RecordFlags, payload_crc32};
use tally_sequencer::runtime::Members;
use tally_tests::cluster::{ClusterSpec, TestCluster, WAIT};
use tokio::task::JoinSet;

/// Logs created (the scale of the benchmark's smoke run), of which the first `ACTIVE` get
/// appends, all at once, `PER_LOG` each.
const LOGS: u64 = 1000;
const ACTIVE: u64 = 200;
const PER_LOG: usize = 2;
const R: u8 = 3;

/// The client gives a `Sequence` this long; the slow owner's activations take longer.
const REQUEST_TIMEOUT: Duration = Duration::from_millis(2000);
const SLOW_ACTIVATION: Duration = Duration::from_millis(3000);

async fn start() -> anyhow::Result<TestCluster> {
    TestCluster::start(ClusterSpec::new(3, 3)).await
}

/// Activations recorded by every sequencer of `cluster`, by node.
fn activations(cluster: &TestCluster) -> Vec<(NodeId, u64)> {
    cluster
        .sequencer_ids()
        .into_iter()
        .filter_map(|id| Some((id, cluster.sequencer(id)?.metrics().activations.get())))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_owner_is_not_taken_over_and_fresh_logs_activate_once() -> anyhow::Result<()> {
    let cluster = start().await?;
    cluster.create_logs(1..=LOGS, R).await?;
    let slow = NodeId(1);
    cluster.delay_activations(slow, SLOW_ACTIVATION)?;
    let view = cluster
        .sequencer(slow)
        .context("the slow sequencer runs")?
        .membership()
        .view();
    let owned_by_slow = (1..=ACTIVE)
        .filter(|l| view.owner(LogId(*l)) == Some(slow))
        .count();
    assert!(owned_by_slow > 0, "the slow node owns some active log");

    let mut config = cluster.client_config();
    config.request_timeout = REQUEST_TIMEOUT;
    let client = Arc::new(cluster.client_with(config).await?);
    append_all(&client).await?;
    // Activations the appends started (and, before the fix, the slow owner's own, still
    // waiting when the takeover answered) have reached the epoch store.
    cluster.wait_activations_settled().await?;
    check_activated_once(&cluster, &view).await?;

    // Appends from a second client, which never found the owner slow, change nothing.
    cluster.delay_activations(slow, Duration::ZERO)?;
    let other = Arc::new(cluster.client().await?);
    append_all(&other).await?;
    append_all(&client).await?;
    cluster.wait_activations_settled().await?;
    check_activated_once(&cluster, &view).await?;
    client.close().await;
    other.close().await;
    cluster.shutdown().await
}

/// `PER_LOG` appends to each of the `ACTIVE` logs, all at once; every one must succeed.
async fn append_all(client: &Arc<Client>) -> anyhow::Result<()> {
    let mut appends = JoinSet::new();
    for log in 1..=ACTIVE {
        for i in 0..PER_LOG {
            let client = client.clone();
            appends.spawn(async move {
                let payload = format!("log {log} append {i}").into_bytes();
                (log, client.append(LogId(log), payload).await)
            });
        }
    }
    let mut failures = Vec::new();
    while let Some(joined) = appends.join_next().await {
        let (log, outcome) = joined?;
        if let Err(e) = outcome {
            failures.push(format!("log {log}: {e}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} appends failed, e.g. {:?}",
        failures.len(),
        ACTIVE as usize * PER_LOG,
        &failures[..failures.len().min(5)]
    );
    Ok(())
}

/// Each fresh log was activated once, in epoch 1, by its owner, which still runs it there.
async fn check_activated_once(cluster: &TestCluster, view: &Members) -> anyhow::Result<()> {
    // Each fresh log was activated once, in epoch 1, by the sequencer that owns it.
    let store = cluster.store();
    let mut moved = Vec::new();
    for log in 1..=ACTIVE {
        let log = LogId(log);
        let epoch = store.get_log(log).await?.current_epoch();
        let owner = view.owner(log).context("every log has an owner")?;
        let runs_on_owner = cluster
            .sequencer(owner)
            .and_then(|s| s.log_state(log))
            .map(|(e, _)| e);
        if epoch != Epoch(1) || runs_on_owner != Some(Epoch(1)) {
            moved.push(format!(
                "{log}: epoch {epoch} in the store, owner {owner} runs {runs_on_owner:?}"
            ));
        }
    }
    let counts = activations(cluster);
    assert!(
        moved.is_empty(),
        "{} logs were not activated once by their owner (activations by node: {counts:?}): {:?}",
        moved.len(),
        &moved[..moved.len().min(5)]
    );
    let total: u64 = counts.iter().map(|(_, n)| n).sum();
    assert_eq!(total, ACTIVE, "one activation per fresh log: {counts:?}");
    Ok(())
}

/// One append to each of `logs`, all at once; every one must succeed.
async fn append_each(client: &Client, logs: &[LogId], payload: &[u8]) -> anyhow::Result<()> {
    let mut appends = JoinSet::new();
    for log in logs.iter().copied() {
        let client = client.clone();
        let payload = payload.to_vec();
        appends.spawn(async move { (log, client.append(log, payload).await) });
    }
    while let Some(joined) = appends.join_next().await {
        let (log, outcome) = joined?;
        outcome.with_context(|| format!("append to {log}"))?;
    }
    Ok(())
}

/// Waits until every running sequencer's membership view lacks `gone`.
async fn wait_left(cluster: &TestCluster, gone: NodeId) -> anyhow::Result<()> {
    for id in cluster.sequencer_ids() {
        let Some(seq) = cluster.sequencer(id) else {
            continue;
        };
        let mut rx = seq.membership().subscribe();
        tokio::time::timeout(WAIT, rx.wait_for(|view| !view.nodes.contains_key(&gone)))
            .await
            .with_context(|| format!("{id} still sees {gone}"))??;
    }
    Ok(())
}

/// An owner the client once found unreachable (it was down) is back: the client must not
/// make other nodes take its logs over just because it still suspects it. Before the fix, a
/// redirect to a suspect owner was answered with a `no_redirect` takeover, so for
/// `sequencer_suspect_for` every log of a live node that this client appended to moved to
/// another node, and every other client's next append moved it back, sealing again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suspect_owner_that_answers_keeps_its_logs() -> anyhow::Result<()> {
    let mut cluster = start().await?;
    let owner = NodeId(1);
    let view = cluster
        .sequencer(owner)
        .context("the owner runs")?
        .membership()
        .view();
    let owned: Vec<LogId> = (1..=LOGS)
        .map(LogId)
        .filter(|l| view.owner(*l) == Some(owner))
        .take(31)
        .collect();
    cluster.create_logs(owned.iter().map(|l| l.0), R).await?;
    let (first, rest) = owned.split_first().context("the owner owns logs")?;

    let mut config = cluster.client_config();
    // The view keeps naming the owner while it is down (no periodic refresh within the
    // test), it stays a suspect for the whole test, and the liveness check is not cut
    // short by a loaded machine.
    config.cluster_refresh_interval = Duration::from_secs(3600);
    config.sequencer_suspect_for = Duration::from_secs(3600);
    config.sequencer_dead_for = Duration::from_secs(3600);
    config.sequencer_silence_timeout = Duration::from_secs(5);
    config.transport.connect_timeout = Duration::from_millis(300);
    let client = cluster.client_with(config).await?;
    let down_incarnation = client
        .cluster()
        .node(owner)
        .context("the client knows the owner")?
        .incarnation;

    // The owner is down: the client cannot reach it and another node takes the log over.
    cluster.stop(owner).await?;
    wait_left(&cluster, owner).await?;
    let lsn = client
        .append(*first, b"while the owner is down".to_vec())
        .await?;
    assert_eq!(lsn.epoch(), Epoch(1));

    // The owner is back, a new incarnation. The client still suspects it, and still takes
    // the process it found unreachable for dead, yet the other logs go to the new one.
    cluster.restart(owner).await?;
    client.refresh_cluster().await?;
    assert_ne!(
        client.cluster().node(owner).map(|n| n.incarnation),
        Some(down_incarnation),
        "a restart registers a new incarnation"
    );
    append_each(&client, rest, b"owner back").await?;
    assert!(
        client.liveness_checks_sent() >= 1,
        "the restarted owner was believed without a check"
    );
    // A client that never suspected the owner appends to the same logs: nothing moves.
    let other = cluster.client().await?;
    for log in rest {
        other.append(*log, b"another client".to_vec()).await?;
    }
    cluster.wait_activations_settled().await?;
    let seq = cluster.sequencer(owner).context("the owner runs again")?;
    let store = cluster.store();
    for log in rest {
        let epoch = store.get_log(*log).await?.current_epoch();
        assert_eq!(epoch, Epoch(1), "{log} was activated once");
        assert_eq!(
            seq.log_state(*log).map(|(e, _)| e),
            Some(Epoch(1)),
            "{log} runs on its owner"
        );
    }
    client.close().await;
    other.close().await;
    cluster.shutdown().await
}

/// An owner that stopped answering (killed: its membership record outlives it until the
/// lease lapses) is taken over at once for every log the client appends to: the client found
/// it silent, and while the other nodes' views still name it as the owner their redirects to
/// it are answered with a takeover, without a liveness check per redirect (each of which
/// would add `sequencer_silence_timeout` to the failover). Before the fix every such redirect
/// waited for a check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_owner_is_taken_over_without_a_check_per_redirect() -> anyhow::Result<()> {
    let mut cluster = start().await?;
    let owner = NodeId(1);
    let view = cluster
        .sequencer(owner)
        .context("the owner runs")?
        .membership()
        .view();
    let record = view
        .nodes
        .get(&owner)
        .context("the owner is a member")?
        .clone();
    let owned: Vec<LogId> = (1..=LOGS)
        .map(LogId)
        .filter(|l| view.owner(*l) == Some(owner))
        .take(16)
        .collect();
    cluster.create_logs(owned.iter().map(|l| l.0), R).await?;
    let (first, rest) = owned.split_first().context("the owner owns logs")?;

    // The owner's process is gone, but its membership record (same incarnation) is back
    // under a long lease, as a killed node's stays until its lease lapses: the other nodes
    // still redirect its logs to it.
    cluster.stop(owner).await?;
    wait_left(&cluster, owner).await?;
    let _lease = cluster
        .store()
        .register_node(record.clone(), Duration::from_secs(3600))
        .await?;
    for id in cluster.sequencer_ids() {
        let Some(seq) = cluster.sequencer(id) else {
            continue;
        };
        let mut rx = seq.membership().subscribe();
        tokio::time::timeout(WAIT, rx.wait_for(|v| v.nodes.get(&owner) == Some(&record)))
            .await
            .with_context(|| format!("{id} does not see {owner} again"))??;
    }

    let mut config = cluster.client_config();
    // No periodic refresh, and the silence is believed for the whole test (only the
    // mechanism is under test, not the clock).
    config.cluster_refresh_interval = Duration::from_secs(3600);
    config.sequencer_suspect_for = Duration::from_secs(3600);
    config.sequencer_dead_for = Duration::from_secs(3600);
    config.transport.connect_timeout = Duration::from_millis(300);
    let client = cluster.client_with(config).await?;
    assert_eq!(
        client.cluster().node(owner).map(|n| n.incarnation),
        Some(record.incarnation)
    );

    // The first append finds the owner unreachable; the next node takes the log over.
    let lsn = client.append(*first, b"owner gone".to_vec()).await?;
    assert_eq!(lsn.epoch(), Epoch(1));
    // Every other log: the first node asked redirects to the owner, and takes it over.
    append_each(&client, rest, b"owner gone").await?;
    assert_eq!(
        client.liveness_checks_sent(),
        0,
        "a redirect to the owner found silent was checked"
    );
    client.close().await;
    cluster.shutdown().await
}

/// A zombie grant: the owner still runs epoch 1 of a log another node took over (and sealed)
/// meanwhile. The client's append, granted in epoch 1, is refused by every storage node, so
/// no copy exists: the client reports the seal and appends again in the owner's new epoch,
/// and the application sees a success, not `Preempted { may_be_stored: true }`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_refused_by_a_seal_everywhere_goes_again_in_a_new_epoch() -> anyhow::Result<()> {
    let cluster = start().await?;
    let (a, b) = (NodeId(1), NodeId(2));
    let log = cluster.create_log_owned_by(a, R).await?;
    let client = cluster.client().await?;
    let before = client.append(log, b"epoch 1".to_vec()).await?;
    assert_eq!(before.epoch(), Epoch(1));

    // B takes the log over, as for a client that cannot reach A, and seals epoch 1.
    let identity = TlsIdentity::load(&cluster.certs_dir(), "client")?;
    let raw = Connector::<ClientProtocol>::new(&identity, cluster.client_config().transport)?;
    let takeover = ClientRequest::Sequence {
        log,
        count: 1,
        no_redirect: true,
    };
    let answer = raw.call(cluster.addr(b)?, &takeover, WAIT).await?;
    let ClientResponse::Granted(grant) = answer else {
        anyhow::bail!("B did not take the log over: {answer:?}");
    };
    assert_eq!(grant.first.epoch(), Epoch(2));
    let seq_b = cluster.sequencer(b).context("B runs")?;
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut every = tokio::time::interval(Duration::from_millis(10));
    while seq_b.recovery_pending(log) != Some(false) {
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "B never recovered");
        every.tick().await;
    }
    assert_eq!(
        cluster
            .sequencer(a)
            .context("A runs")?
            .log_state(log)
            .map(|(e, _)| e),
        Some(Epoch(1)),
        "A does not know"
    );

    // A grants in epoch 1; every store is refused; the client goes again, in A's new epoch.
    let after = client.append(log, b"after the seal".to_vec()).await?;
    assert_eq!(after.epoch(), Epoch(3), "{after}");
    client.close().await;
    raw.close().await;
    cluster.shutdown().await
}

/// A takeover that ends hands the log back in order: the node that took the log over with
/// `no_redirect` keeps telling clients to retry (not redirecting them to the owner, whose
/// activation would seal its epoch) while appends it granted are still writing their copies;
/// once they are reported it redirects, and the owner's new epoch fails none of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_hands_the_log_back_after_its_appends_complete() -> anyhow::Result<()> {
    fn tweak(spec: &mut tally::node::NodeSpec) {
        // The takeover ends at once; the hand-back waits as long as it takes.
        spec.sequencer.no_redirect_duration = Duration::from_millis(1);
        spec.sequencer.handback_grace = Duration::from_secs(600);
        spec.sequencer.timing.append_timeout = Duration::from_secs(600);
    }
    let cluster = TestCluster::start(ClusterSpec {
        tweak,
        ..ClusterSpec::new(3, 2)
    })
    .await?;
    let (a, b) = (NodeId(1), NodeId(2));
    let log = cluster.create_log_owned_by(a, R).await?;
    let identity = TlsIdentity::load(&cluster.certs_dir(), "client")?;
    let raw = Connector::<ClientProtocol>::new(&identity, cluster.client_config().transport)?;
    let sequence = |no_redirect| ClientRequest::Sequence {
        log,
        count: 1,
        no_redirect,
    };

    // B takes the log over; its grant is not stored yet.
    let mut granted = Vec::new();
    match raw.call(cluster.addr(b)?, &sequence(true), WAIT).await? {
        ClientResponse::Granted(g) => granted.push(g),
        other => anyhow::bail!("B did not take the log over: {other:?}"),
    }
    assert_eq!(granted[0].first.epoch(), Epoch(1));
    // Once the takeover is over (B grants while it lasts), B tells clients to retry.
    let deadline = tokio::time::Instant::now() + WAIT;
    let refusal = loop {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "B never handed back"
        );
        match raw.call(cluster.addr(b)?, &sequence(false), WAIT).await? {
            ClientResponse::Granted(g) => granted.push(g),
            other => break other,
        }
    };
    assert!(
        matches!(&refusal, ClientResponse::Error(e) if e.code == ErrorCode::Unavailable),
        "B holds the log while its appends write: {refusal:?}"
    );

    // The appends B granted complete and are reported; then B redirects to A.
    let client = cluster.client().await?;
    for g in &granted {
        store_and_report(&cluster, &raw, g).await?;
    }
    let answer = raw.call(cluster.addr(b)?, &sequence(false), WAIT).await?;
    assert_eq!(answer, ClientResponse::Redirect { owner: a });
    // A takes the log back in a new epoch; every append B granted is there to read.
    let lsn = client.append(log, b"owner again".to_vec()).await?;
    assert_eq!(lsn.epoch(), Epoch(2));
    let copies = cluster.copies(log)?;
    for g in &granted {
        let holders = copies.get(&g.first).map_or(0, |(h, _)| h.len());
        assert!(
            holders >= usize::from(R),
            "{} has {holders} copies",
            g.first
        );
    }
    client.close().await;
    raw.close().await;
    cluster.shutdown().await
}

/// Stores the one LSN of `grant` on R nodes of its node set and reports it to its sequencer.
async fn store_and_report(
    cluster: &TestCluster,
    raw: &Connector<ClientProtocol>,
    grant: &Grant,
) -> anyhow::Result<()> {
    let copyset = Copyset::new(grant.node_set.nodes()[..usize::from(R)].to_vec())?;
    let payload = format!("record at {}", grant.first).into_bytes();
    let batch = StoreBatch {
        log: grant.log,
        copyset: copyset.clone(),
        wave_or_seal: 1,
        flags: RecordFlags::DURABLE,
        durability: Durability::Durable,
        lng: grant.lng,
        records: vec![StoreRecord {
            lsn: grant.first,
            timestamp_ms: grant.timestamp_ms,
            payload_crc32: payload_crc32(&payload),
            payload: payload.into(),
        }],
    };
    for node in copyset.nodes() {
        let store = ClientRequest::Store(batch.clone());
        let answer = raw.call(cluster.addr(*node)?, &store, WAIT).await?;
        anyhow::ensure!(
            answer == ClientResponse::StoreResult(StoreStatus::Stored),
            "store of {} on {node}: {answer:?}",
            grant.first
        );
    }
    let report = ClientRequest::ReportStored {
        log: grant.log,
        first: grant.first,
        count: 1,
        copyset,
        wave: 1,
    };
    let answer = raw
        .call(cluster.addr(grant.sequencer)?, &report, WAIT)
        .await?;
    anyhow::ensure!(
        answer == ClientResponse::Ack,
        "report of {}: {answer:?}",
        grant.first
    );
    Ok(())
}
