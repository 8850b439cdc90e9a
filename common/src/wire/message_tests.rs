//! Property tests of every wire message: encode → decode round-trips, and decoders fed
//! arbitrary or corrupted bytes return errors, never panic.

use proptest::collection::vec;
use proptest::prelude::*;

use super::client::{
    ClientRequest, ClientResponse, Grant, MAX_SEQUENCE_ASKS, SequenceAnswer, SequenceAsk,
    StoreAnswer, StoredReport,
};
use super::node::{NodeRequest, NodeResponse, Release};
use super::*;
use crate::ids::{Epoch, Esn, LogId, Lsn, NodeId};
use crate::meta::{
    Durability, LogAttributes, LogMetadata, NodeInfo, NodeSet, NodeSetEntry, Roles, StorageState,
};
use crate::record::{Copyset, RecordFlags, RecordHeader};

fn log_id() -> impl Strategy<Value = LogId> {
    prop_oneof![
        Just(1u64),
        Just(LogId::USER_MAX.0),
        1u64..=LogId::USER_MAX.0
    ]
    .prop_map(LogId)
}

fn lsn() -> impl Strategy<Value = Lsn> {
    any::<u64>().prop_map(Lsn)
}

fn node_id() -> impl Strategy<Value = NodeId> {
    any::<u32>().prop_map(NodeId)
}

fn copyset() -> impl Strategy<Value = Copyset> {
    proptest::sample::subsequence((0u32..40).collect::<Vec<_>>(), 1..6)
        .prop_shuffle()
        .prop_map(|ids| Copyset::new(ids.into_iter().map(NodeId).collect()).unwrap())
}

fn flags() -> impl Strategy<Value = RecordFlags> {
    (0u32..=RecordFlags::ALL.0).prop_map(RecordFlags)
}

fn durability() -> impl Strategy<Value = Durability> {
    prop_oneof![Just(Durability::Durable), Just(Durability::Fast)]
}

fn payload() -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..300)
}

fn store_batch() -> impl Strategy<Value = StoreBatch> {
    (
        log_id(),
        copyset(),
        any::<u32>(),
        flags(),
        durability(),
        any::<u32>(),
        1u32..=Epoch::MAX.0,
        1u32..1000,
        vec((any::<u64>(), payload()), 1..5),
    )
        .prop_map(
            |(log, copyset, wave_or_seal, flags, durability, lng, epoch, first, recs)| {
                let flags = flags.without(RecordFlags::AMEND);
                let records = recs
                    .into_iter()
                    .enumerate()
                    .map(|(i, (ts, payload))| StoreRecord {
                        lsn: Lsn::new(Epoch(epoch), Esn(first + i as u32)),
                        timestamp_ms: ts,
                        payload_crc32: crate::record::payload_crc32(&payload),
                        payload: payload.into(),
                    })
                    .collect();
                StoreBatch {
                    log,
                    copyset,
                    wave_or_seal,
                    flags,
                    durability,
                    lng: Esn(lng),
                    records,
                }
            },
        )
}

fn header() -> impl Strategy<Value = RecordHeader> {
    (
        log_id(),
        lsn(),
        any::<u64>(),
        any::<u32>(),
        any::<u32>(),
        flags(),
        copyset(),
        any::<u32>(),
    )
        .prop_map(
            |(log, lsn, timestamp_ms, lng, wave_or_seal, flags, copyset, payload_crc32)| {
                RecordHeader {
                    log,
                    lsn,
                    timestamp_ms,
                    lng: Esn(lng),
                    wave_or_seal,
                    flags,
                    copyset,
                    payload_crc32,
                }
            },
        )
}

fn read_records() -> impl Strategy<Value = Vec<ReadRecord>> {
    vec((header(), payload()), 0..4).prop_map(|mut recs| {
        recs.sort_by_key(|(h, _)| h.lsn);
        recs.dedup_by_key(|(h, _)| h.lsn);
        recs.into_iter()
            .map(|(header, payload)| ReadRecord { header, payload })
            .collect()
    })
}

fn attributes() -> impl Strategy<Value = LogAttributes> {
    (
        1u8..=5,
        0u8..3,
        any::<u64>(),
        durability(),
        1u32..=LogAttributes::MAX_IN_FLIGHT,
    )
        .prop_map(
            |(replication, extra, backlog_secs, durability, max_in_flight)| LogAttributes {
                replication,
                node_set_size: if extra == 0 { 0 } else { replication + extra },
                backlog_secs,
                durability,
                max_in_flight,
            },
        )
}

fn node_set() -> impl Strategy<Value = NodeSet> {
    vec(node_id(), 1..8).prop_map(NodeSet::new)
}

fn remote_error() -> impl Strategy<Value = RemoteError> {
    (0u8..10, ".{0,40}").prop_map(|(code, message)| {
        let code = [
            ErrorCode::BadRequest,
            ErrorCode::TooLarge,
            ErrorCode::UnsupportedVersion,
            ErrorCode::Timeout,
            ErrorCode::Overloaded,
            ErrorCode::Unavailable,
            ErrorCode::NotFound,
            ErrorCode::AlreadyExists,
            ErrorCode::PermissionDenied,
            ErrorCode::Internal,
        ][code as usize];
        RemoteError { code, message }
    })
}

fn store_status() -> impl Strategy<Value = StoreStatus> {
    prop_oneof![
        Just(StoreStatus::Stored),
        (any::<u32>(), proptest::option::of(node_id())).prop_map(|(s, sequencer)| {
            StoreStatus::Preempted {
                seal: Epoch(s),
                sequencer,
            }
        }),
        Just(StoreStatus::NoSpace),
        Just(StoreStatus::Overloaded),
        lsn().prop_map(|lsn| StoreStatus::ChecksumMismatch { lsn }),
        Just(StoreStatus::Disabled),
    ]
}

fn read_filter() -> impl Strategy<Value = ReadFilter> {
    (
        any::<bool>(),
        any::<u64>(),
        vec(node_id(), 0..4),
        any::<u64>(),
        any::<u64>(),
        "[a-z.*]{0,10}",
    )
        .prop_map(
            |(
                single_copy,
                shuffle_seed,
                known_down,
                min_timestamp_ms,
                max_timestamp_ms,
                payload_regex,
            )| ReadFilter {
                single_copy,
                shuffle_seed,
                known_down,
                min_timestamp_ms,
                max_timestamp_ms,
                payload_regex,
            },
        )
}

fn gap_kind() -> impl Strategy<Value = GapKind> {
    prop_oneof![
        Just(GapKind::Hole),
        Just(GapKind::Bridge),
        Just(GapKind::Trim),
        Just(GapKind::DataLoss),
        Just(GapKind::NoRecords),
        Just(GapKind::Filtered)
    ]
}

fn stored_report() -> impl Strategy<Value = StoredReport> {
    (
        log_id(),
        1u32..=Epoch::MAX.0,
        1u32..1000,
        1u32..100,
        copyset(),
        any::<u32>(),
    )
        .prop_map(|(log, e, n, count, copyset, wave)| StoredReport {
            log,
            first: Lsn::new(Epoch(e), Esn(n)),
            count,
            copyset,
            wave,
        })
}

fn client_request() -> impl Strategy<Value = ClientRequest> {
    prop_oneof![
        Just(ClientRequest::GetClusterState),
        log_id().prop_map(|log| ClientRequest::GetLogMetadata { log }),
        (log_id(), attributes())
            .prop_map(|(log, attributes)| ClientRequest::CreateLog { log, attributes }),
        (log_id(), 1u32..1000, any::<bool>()).prop_map(|(log, count, no_redirect)| {
            ClientRequest::Sequence {
                log,
                count,
                no_redirect,
            }
        }),
        stored_report().prop_map(|r| ClientRequest::ReportStored {
            log: r.log,
            first: r.first,
            count: r.count,
            copyset: r.copyset,
            wave: r.wave,
        }),
        store_batch().prop_map(ClientRequest::Store),
        vec(store_batch(), 1..4).prop_map(ClientRequest::StoreMany),
        vec(stored_report(), 1..4).prop_map(ClientRequest::ReportStoredMany),
        vec(
            (log_id(), 1u32..1000).prop_map(|(log, count)| SequenceAsk { log, count }),
            1..4
        )
        .prop_map(ClientRequest::SequenceMany),
        (log_id(), lsn()).prop_map(|(log, upto)| ClientRequest::Trim { log, upto }),
        (log_id(), any::<u64>(), any::<bool>()).prop_map(|(log, timestamp_ms, strict)| {
            ClientRequest::FindTime {
                log,
                timestamp_ms,
                accuracy: if strict {
                    FindTimeAccuracy::Strict
                } else {
                    FindTimeAccuracy::Approximate
                },
            }
        }),
        log_id().prop_map(|log| ClientRequest::GetTail { log }),
        (log_id(), any::<u64>(), any::<u64>()).prop_map(|(log, a, b)| ClientRequest::DataSize {
            log,
            from_ms: a.min(b),
            until_ms: a.max(b)
        }),
        (log_id(), lsn(), lsn(), lsn(), read_filter()).prop_map(|(log, a, b, c, filter)| {
            let mut v = [a, b, c];
            v.sort();
            ClientRequest::StartRead {
                log,
                from: v[0],
                until: v[2],
                window_until: v[1],
                filter,
            }
        }),
        lsn().prop_map(|until| ClientRequest::ReadWindow { until }),
        Just(ClientRequest::StopRead),
        (log_id(), 1u32..=Epoch::MAX.0, any::<u32>()).prop_map(|(log, e, s)| {
            ClientRequest::ReportPreempted {
                log,
                epoch: Epoch(e),
                seal: Epoch(e.max(s)),
            }
        }),
        Just(ClientRequest::ListLogs),
        (log_id(), attributes())
            .prop_map(|(log, attributes)| ClientRequest::UpdateLog { log, attributes }),
        (log_id(), lsn(), lsn()).prop_map(|(log, a, b)| ClientRequest::ScanEstimate {
            log,
            from: a.min(b),
            until: a.max(b)
        }),
    ]
}

fn node_info() -> impl Strategy<Value = NodeInfo> {
    (
        node_id(),
        "[a-z0-9.:]{1,20}",
        any::<bool>(),
        any::<bool>(),
        "[a-z.]{0,12}",
        any::<u32>(),
    )
        .prop_map(
            |(id, address, sequencer, storage, location, weight)| NodeInfo {
                id,
                address,
                roles: Roles { sequencer, storage },
                location,
                weight,
                state: StorageState::ReadWrite,
                incarnation: 0,
            },
        )
}

fn log_metadata() -> impl Strategy<Value = LogMetadata> {
    (
        any::<u32>(),
        vec((any::<u32>(), node_set(), 1u8..4), 0..3),
        any::<u32>(),
        lsn(),
        attributes(),
    )
        .prop_map(|(next, hist, lce, tail, attributes)| LogMetadata {
            next_epoch: Epoch(next),
            history: hist
                .into_iter()
                .map(|(since, node_set, replication)| NodeSetEntry {
                    since: Epoch(since),
                    node_set,
                    replication,
                })
                .collect(),
            last_clean_epoch: Epoch(lce),
            last_clean_tail: tail,
            recovered: Vec::new(),
            attributes,
        })
}

fn grant() -> impl Strategy<Value = Grant> {
    (
        log_id(),
        lsn(),
        1u32..100,
        node_set(),
        durability(),
        any::<u32>(),
        any::<u64>(),
        node_id(),
    )
        .prop_map(
            |(log, first, count, node_set, durability, lng, timestamp_ms, sequencer)| {
                let replication = node_set.len().min(3) as u8;
                Grant {
                    log,
                    first,
                    count,
                    node_set,
                    replication,
                    durability,
                    lng: Esn(lng),
                    timestamp_ms,
                    sequencer,
                }
            },
        )
}

fn client_response() -> impl Strategy<Value = ClientResponse> {
    prop_oneof![
        (vec(node_info(), 0..4), any::<u64>())
            .prop_map(|(nodes, version)| ClientResponse::ClusterState { nodes, version }),
        log_metadata().prop_map(ClientResponse::LogMetadata),
        Just(ClientResponse::LogCreated),
        grant().prop_map(ClientResponse::Granted),
        node_id().prop_map(|owner| ClientResponse::Redirect { owner }),
        Just(ClientResponse::SeqNoBufs),
        any::<u32>().prop_map(|s| ClientResponse::Preempted { seal: Epoch(s) }),
        store_status().prop_map(ClientResponse::StoreResult),
        vec(
            prop_oneof![
                store_status().prop_map(StoreAnswer::Status),
                remote_error().prop_map(StoreAnswer::Error),
            ],
            1..4
        )
        .prop_map(ClientResponse::StoreResults),
        vec(
            prop_oneof![
                grant().prop_map(SequenceAnswer::Granted),
                node_id().prop_map(|owner| SequenceAnswer::Redirect { owner }),
                Just(SequenceAnswer::NoBufs),
                Just(SequenceAnswer::NotActive),
                remote_error().prop_map(SequenceAnswer::Error),
            ],
            1..4
        )
        .prop_map(ClientResponse::Sequenced),
        Just(ClientResponse::Ack),
        lsn().prop_map(|trim_point| ClientResponse::Trimmed { trim_point }),
        lsn().prop_map(|lsn| ClientResponse::FoundTime { lsn }),
        lsn().prop_map(|lsn| ClientResponse::Tail { lsn }),
        any::<u64>().prop_map(|bytes| ClientResponse::DataSize { bytes }),
        read_records().prop_map(ClientResponse::Records),
        (gap_kind(), lsn(), lsn()).prop_map(|(kind, a, b)| ClientResponse::Gap {
            kind,
            from: a.min(b),
            to: a.max(b)
        }),
        Just(ClientResponse::ReadDone),
        remote_error().prop_map(ClientResponse::Error),
        vec((log_id(), log_metadata()), 0..3).prop_map(|logs| ClientResponse::Logs(
            logs.into_iter()
                .map(|(log, metadata)| super::client::LogListing { log, metadata })
                .collect()
        )),
        log_metadata().prop_map(ClientResponse::LogUpdated),
        (any::<u32>(), any::<u64>())
            .prop_map(|(partitions, bytes)| ClientResponse::ScanEstimate { partitions, bytes }),
    ]
}

fn node_request() -> impl Strategy<Value = NodeRequest> {
    prop_oneof![
        Just(NodeRequest::Ping),
        (node_id(), vec((log_id(), lsn()), 0..8)).prop_map(|(sequencer, rs)| {
            NodeRequest::Release {
                sequencer,
                releases: rs
                    .into_iter()
                    .map(|(log, lsn)| {
                        // A release names a valid sequencer epoch at or above its LSN's.
                        let epoch = Epoch(lsn.epoch().0.clamp(1, Epoch::MAX.0));
                        let lsn = Lsn::new(lsn.epoch().min(epoch), lsn.esn());
                        Release { log, lsn, epoch }
                    })
                    .collect(),
            }
        }),
        (log_id(), 1u32..=Epoch::MAX.0, node_id()).prop_map(|(log, e, sequencer)| {
            NodeRequest::Seal {
                log,
                epoch: Epoch(e),
                sequencer,
            }
        }),
        (log_id(), 1u32..=Epoch::MAX.0, any::<u32>()).prop_map(|(log, e, after)| {
            NodeRequest::StartDigest {
                log,
                epoch: Epoch(e),
                after: Esn(after),
            }
        }),
        store_batch().prop_map(NodeRequest::Store),
        (log_id(), 1u32..1000, 0u32..1000, lsn()).prop_map(|(log, e, d, tail)| {
            NodeRequest::Clean {
                log,
                epoch: Epoch(e),
                seal: Epoch(e + d),
                tail,
            }
        }),
        (log_id(), lsn()).prop_map(|(log, upto)| NodeRequest::Trim { log, upto }),
    ]
}

fn node_response() -> impl Strategy<Value = NodeResponse> {
    prop_oneof![
        node_id().prop_map(|node| NodeResponse::Pong { node }),
        Just(NodeResponse::Ack),
        (any::<u32>(), any::<u32>(), lsn(), lsn(), any::<bool>()).prop_map(
            |(s, lng, tail, last_released, data_loss)| NodeResponse::Sealed {
                seal: Epoch(s),
                lng: Esn(lng),
                tail,
                last_released,
                data_loss,
            }
        ),
        any::<u32>().prop_map(|s| NodeResponse::Preempted { seal: Epoch(s) }),
        store_status().prop_map(NodeResponse::StoreResult),
        read_records().prop_map(NodeResponse::DigestRecords),
        Just(NodeResponse::DigestDone),
        remote_error().prop_map(NodeResponse::Error),
    ]
}

fn roundtrip<M: WireMessage + PartialEq + std::fmt::Debug>(msg: &M) -> Result<(), TestCaseError> {
    let limits = crate::Limits::default();
    msg.validate(&limits)
        .map_err(|e| TestCaseError::fail(format!("generated message invalid: {e}")))?;
    let bytes = msg
        .encode()
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    let back = M::decode(&bytes, &limits).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(&back, msg);
    Ok(())
}

/// Messages that carry payloads encode into one allocation: the size hint covers the archive.
fn hint_covers(encoded: usize, hint: usize) -> Result<(), TestCaseError> {
    prop_assert!(encoded <= hint, "{encoded} bytes encoded, {hint} hinted");
    Ok(())
}

proptest! {
    #[test]
    fn payload_messages_encode_within_their_size_hint(
        batch in store_batch(),
        batches in vec(store_batch(), 1..4),
        records in read_records(),
    ) {
        for msg in [ClientRequest::Store(batch.clone()), ClientRequest::StoreMany(batches)] {
            hint_covers(msg.encode().unwrap().len(), msg.encoded_len_hint())?;
        }
        let msg = NodeRequest::Store(batch);
        hint_covers(msg.encode().unwrap().len(), msg.encoded_len_hint())?;
        let msg = ClientResponse::Records(records.clone());
        hint_covers(msg.encode().unwrap().len(), msg.encoded_len_hint())?;
        let msg = NodeResponse::DigestRecords(records);
        hint_covers(msg.encode().unwrap().len(), msg.encoded_len_hint())?;
    }
}

/// Flips bytes of a valid encoding: the decoder must return a value or an error.
fn corrupt_never_panics<M: WireMessage>(msg: &M, flips: &[(usize, u8)], cut: usize) {
    let limits = crate::Limits::default();
    let mut bytes = msg.encode().unwrap().to_vec();
    for &(at, x) in flips {
        if !bytes.is_empty() {
            let i = at % bytes.len();
            bytes[i] ^= x;
        }
    }
    let _ = M::decode(&bytes, &limits);
    bytes.truncate(cut % (bytes.len() + 1));
    let _ = M::decode(&bytes, &limits);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn client_request_roundtrip(msg in client_request()) { roundtrip(&msg)?; }
    #[test]
    fn client_response_roundtrip(msg in client_response()) { roundtrip(&msg)?; }
    #[test]
    fn node_request_roundtrip(msg in node_request()) { roundtrip(&msg)?; }
    #[test]
    fn node_response_roundtrip(msg in node_response()) { roundtrip(&msg)?; }
    #[test]
    fn remote_error_roundtrip(msg in remote_error()) { roundtrip(&msg)?; }

    #[test]
    fn corrupted_client_request(msg in client_request(), flips in vec((any::<usize>(), 1u8..), 1..8), cut: usize) {
        corrupt_never_panics(&msg, &flips, cut);
    }
    #[test]
    fn corrupted_client_response(msg in client_response(), flips in vec((any::<usize>(), 1u8..), 1..8), cut: usize) {
        corrupt_never_panics(&msg, &flips, cut);
    }
    #[test]
    fn corrupted_node_request(msg in node_request(), flips in vec((any::<usize>(), 1u8..), 1..8), cut: usize) {
        corrupt_never_panics(&msg, &flips, cut);
    }
    #[test]
    fn corrupted_node_response(msg in node_response(), flips in vec((any::<usize>(), 1u8..), 1..8), cut: usize) {
        corrupt_never_panics(&msg, &flips, cut);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(8192))]

    /// Thousands of arbitrary byte strings into every decoder: errors, never panics.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..512)) {
        let limits = crate::Limits::default();
        let _ = ClientRequest::decode(&bytes, &limits);
        let _ = ClientResponse::decode(&bytes, &limits);
        let _ = NodeRequest::decode(&bytes, &limits);
        let _ = NodeResponse::decode(&bytes, &limits);
        let _ = RemoteError::decode(&bytes, &limits);
    }
}

#[test]
fn validation_rejects_limit_breaks() {
    let limits = crate::Limits {
        max_payload_bytes: 10,
        max_frame_bytes: 128 * 1024,
        ..crate::Limits::default()
    };
    let batch = StoreBatch {
        log: LogId(1),
        copyset: Copyset::new(vec![NodeId(1)]).unwrap(),
        wave_or_seal: 1,
        flags: RecordFlags::NONE,
        durability: Durability::Durable,
        lng: Esn(0),
        records: vec![StoreRecord {
            lsn: Lsn::new(Epoch(1), Esn(1)),
            timestamp_ms: 0,
            payload_crc32: 0,
            payload: vec![0; 11].into(),
        }],
    };
    let msg = ClientRequest::Store(batch.clone());
    let bytes = msg.encode().unwrap();
    let err = ClientRequest::decode(&bytes, &limits).unwrap_err();
    assert!(matches!(err, DecodeError::Invalid { .. }), "{err}");
    assert!(err.to_string().contains("exceeds the limit"), "{err}");

    let mut unordered = batch.clone();
    unordered.records[0].payload.clear();
    unordered.records.push(unordered.records[0].clone());
    let err = ClientRequest::Store(unordered)
        .validate(&limits)
        .unwrap_err();
    assert!(err.to_string().contains("strictly increasing"), "{err}");

    let mut bad_flags = batch.clone();
    bad_flags.records[0].payload.clear();
    bad_flags.flags = RecordFlags(1 << 30);
    assert!(
        ClientRequest::Store(bad_flags.clone())
            .validate(&limits)
            .is_err()
    );

    // StoreMany: every batch is checked, and the whole is bounded like one batch.
    let mut small = batch;
    small.records[0].payload.clear();
    ClientRequest::StoreMany(vec![small.clone(), small.clone()])
        .validate(&limits)
        .unwrap();
    assert!(
        ClientRequest::StoreMany(vec![small.clone(), bad_flags])
            .validate(&limits)
            .is_err()
    );
    assert!(
        ClientRequest::StoreMany(Vec::new())
            .validate(&limits)
            .is_err()
    );
    let tight = crate::Limits {
        max_records_per_batch: 1,
        ..limits
    };
    let err = ClientRequest::StoreMany(vec![small.clone(), small])
        .validate(&tight)
        .unwrap_err();
    assert!(
        err.to_string().contains("records in one StoreMany"),
        "{err}"
    );

    assert!(
        ClientRequest::GetTail { log: LogId(0) }
            .validate(&limits)
            .is_err()
    );

    let stored = |log, epoch, esn, count| StoredReport {
        log: LogId(log),
        first: Lsn::new(Epoch(epoch), Esn(esn)),
        count,
        copyset: Copyset::new(vec![NodeId(1)]).unwrap(),
        wave: 1,
    };
    ClientRequest::ReportStoredMany(vec![stored(1, 1, 1, 3), stored(2, 4, 9, 1)])
        .validate(&limits)
        .unwrap();
    for bad in [
        stored(0, 1, 1, 1),
        stored(1, 0, 1, 1),
        stored(1, 1, 0, 1),
        stored(1, 1, 1, 0),
    ] {
        let many = ClientRequest::ReportStoredMany(vec![stored(1, 1, 1, 1), bad]);
        assert!(many.validate(&limits).is_err(), "{many:?}");
    }
    assert!(
        ClientRequest::ReportStoredMany(Vec::new())
            .validate(&limits)
            .is_err()
    );

    let ask = |log, count| SequenceAsk {
        log: LogId(log),
        count,
    };
    ClientRequest::SequenceMany(vec![ask(1, 1), ask(2, 64)])
        .validate(&limits)
        .unwrap();
    for bad in [ask(0, 1), ask(1, 0), ask(1, u32::MAX)] {
        let many = ClientRequest::SequenceMany(vec![ask(1, 1), bad]);
        assert!(many.validate(&limits).is_err(), "{many:?}");
    }
    for len in [0, MAX_SEQUENCE_ASKS + 1] {
        let many = ClientRequest::SequenceMany((0..len).map(|_| ask(1, 1)).collect());
        assert!(many.validate(&limits).is_err(), "{len} asks");
    }
    assert!(
        ClientResponse::Sequenced(Vec::new())
            .validate(&limits)
            .is_err()
    );

    let report = |log, epoch, seal| ClientRequest::ReportPreempted {
        log: LogId(log),
        epoch: Epoch(epoch),
        seal: Epoch(seal),
    };
    report(1, 3, 3).validate(&limits).unwrap();
    report(1, 3, 9).validate(&limits).unwrap();
    for bad in [report(0, 3, 3), report(1, 0, 3), report(1, 4, 3)] {
        assert!(bad.validate(&limits).is_err(), "{bad:?}");
    }
}
