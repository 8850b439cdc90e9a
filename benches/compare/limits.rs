//! The machine's limits, measured in the same run: the disk (fio from Debian: fdatasync
//! latency of 4 KiB appends, sequential write bandwidth with direct I/O), raw RocksDB with
//! LogsDB's options (`tally::bench::storage::raw_rocksdb_limits`) and loopback UDP bandwidth
//! (what QUIC runs over).

use std::net::UdpSocket;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::Serialize;
use tally::bench::storage::{RawRocksDbLimits, raw_rocksdb_limits};

/// Every limit measured.
#[derive(Debug, Clone, Serialize)]
pub struct Limits {
    /// fdatasync after each 4 KiB write (fio): mean latency, µs.
    pub fdatasync_mean_us: f64,
    /// fdatasync latency p99, µs.
    pub fdatasync_p99_us: f64,
    /// fdatasyncs per second one writer reached.
    pub fdatasync_per_sec: f64,
    /// Sequential 1 MiB direct writes (fio), MB/s.
    pub seq_write_mb_per_sec: f64,
    /// Raw RocksDB (LogsDB's options, 1 KiB values).
    pub rocksdb: RawRocksDbLimits,
    /// Loopback UDP, 1,452-byte datagrams, one sender and one receiver thread: MB/s received.
    pub udp_loopback_mb_per_sec: f64,
}

/// Measures everything in `dir` (a scratch directory on the disk the clusters use): each fio
/// job runs `secs` seconds; `quick` uses the CI-sized RocksDB record counts.
pub fn measure(dir: &Path, secs: u64, quick: bool) -> anyhow::Result<Limits> {
    std::fs::create_dir_all(dir)?;
    eprintln!("limits: fio fdatasync latency ({secs} s)");
    let sync = fio(
        dir,
        &[
            "--name=fdatasync",
            "--rw=write",
            "--bs=4k",
            "--size=64m",
            "--fdatasync=1",
            "--ioengine=psync",
        ],
        secs,
    )?;
    let job = &sync["jobs"][0];
    let fdatasync_mean_us = job["sync"]["lat_ns"]["mean"]
        .as_f64()
        .context("fio: no sync latency")?
        / 1000.0;
    let fdatasync_p99_us = job["sync"]["lat_ns"]["percentile"]["99.000000"]
        .as_f64()
        .unwrap_or(0.0)
        / 1000.0;
    let fdatasync_per_sec = job["write"]["iops"].as_f64().unwrap_or(0.0);
    eprintln!("limits: fio sequential write bandwidth ({secs} s)");
    let seq = fio(
        dir,
        &[
            "--name=seqwrite",
            "--rw=write",
            "--bs=1m",
            "--size=1g",
            "--direct=1",
            "--ioengine=libaio",
            "--iodepth=8",
            "--end_fsync=1",
        ],
        secs,
    )?;
    let seq_write_mb_per_sec = seq["jobs"][0]["write"]["bw_bytes"]
        .as_f64()
        .context("fio: no write bandwidth")?
        / 1e6;
    eprintln!("limits: raw RocksDB puts and sequential read");
    let rocks_dir = dir.join("rocksdb");
    let rocksdb = raw_rocksdb_limits(&rocks_dir, quick);
    let _ = std::fs::remove_dir_all(&rocks_dir);
    let rocksdb = rocksdb?;
    eprintln!("limits: loopback UDP bandwidth");
    let udp_loopback_mb_per_sec = udp_loopback(Duration::from_secs(secs.min(3)))?;
    Ok(Limits {
        fdatasync_mean_us,
        fdatasync_p99_us,
        fdatasync_per_sec,
        seq_write_mb_per_sec,
        rocksdb,
        udp_loopback_mb_per_sec,
    })
}

/// Runs one time-based fio job in `dir` and returns its JSON report; deletes its file.
fn fio(dir: &Path, args: &[&str], secs: u64) -> anyhow::Result<serde_json::Value> {
    let out = Command::new("fio")
        .args(args)
        .arg(format!("--directory={}", dir.display()))
        .args(["--time_based", "--output-format=json"])
        .arg(format!("--runtime={secs}"))
        .output()
        .context("run fio (Debian package fio: bash ops/setup.sh)")?;
    for entry in std::fs::read_dir(dir)?.filter_map(Result::ok) {
        if entry.path().is_file() {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    anyhow::ensure!(
        out.status.success(),
        "fio failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).context("fio's JSON output")
}

/// Bytes per second one thread receives from another over loopback UDP in `duration`.
fn udp_loopback(duration: Duration) -> anyhow::Result<f64> {
    const DATAGRAM: usize = 1452;
    let rx = UdpSocket::bind("127.0.0.1:0")?;
    rx.set_read_timeout(Some(Duration::from_millis(200)))?;
    let tx = UdpSocket::bind("127.0.0.1:0")?;
    tx.connect(rx.local_addr()?)?;
    let stop = Arc::new(AtomicBool::new(false));
    let sender = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let buf = [7u8; DATAGRAM];
            while !stop.load(Ordering::Relaxed) {
                // A full receive buffer drops datagrams (ENOBUFS is not reported on
                // loopback); only what arrives counts.
                let _ = tx.send(&buf);
            }
        })
    };
    let mut buf = [0u8; 2048];
    let start = Instant::now();
    let mut bytes = 0u64;
    while start.elapsed() < duration {
        if let Ok(n) = rx.recv(&mut buf) {
            bytes += n as u64;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    sender
        .join()
        .map_err(|_| anyhow::anyhow!("UDP sender panicked"))?;
    Ok(bytes as f64 / 1e6 / secs)
}
