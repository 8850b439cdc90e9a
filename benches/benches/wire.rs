//! Encode + validate + decode of a Store message with a 1 KiB payload (the hot message of the
//! write path), and each step alone.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use tally_common::wire::client::ClientRequest;
use tally_common::wire::{StoreBatch, StoreRecord, WireMessage};
use tally_common::{
    Copyset, Durability, Epoch, Esn, Limits, LogId, Lsn, NodeId, RecordFlags, payload_crc32,
};

fn store_1k() -> ClientRequest {
    let payload = vec![0xA5u8; 1024];
    ClientRequest::Store(StoreBatch {
        log: LogId(42),
        copyset: Copyset::new(vec![NodeId(1), NodeId(4), NodeId(7)]).unwrap(),
        wave_or_seal: 1,
        flags: RecordFlags::DURABLE,
        durability: Durability::Durable,
        lng: Esn(1000),
        records: vec![StoreRecord {
            lsn: Lsn::new(Epoch(3), Esn(1001)),
            timestamp_ms: 1_763_000_000_000,
            payload_crc32: payload_crc32(&payload),
            payload: payload.into(),
        }],
    })
}

fn wire(c: &mut Criterion) {
    let msg = store_1k();
    let limits = Limits::default();
    let bytes = msg.encode().unwrap();
    let mut g = c.benchmark_group("store_1KiB");
    g.throughput(Throughput::Elements(1));
    g.bench_function("encode+validate+decode", |b| {
        b.iter(|| {
            let bytes = black_box(&msg).encode().unwrap();
            let back = ClientRequest::decode(black_box(&bytes), &limits).unwrap();
            black_box(back)
        })
    });
    g.bench_function("encode", |b| b.iter(|| black_box(&msg).encode().unwrap()));
    g.bench_function("validate+decode", |b| {
        b.iter(|| ClientRequest::decode(black_box(&bytes), &limits).unwrap())
    });
    g.finish();
}

criterion_group!(benches, wire);
criterion_main!(benches);
