//! How long a kvnode replica takes to come back with 1,000,000 keys, how
//! much memory they take, and how much disk.
//!
//! ```text
//! cargo run --release --example replica_recovery -- build DIR [TAIL_ROWS]
//! cargo run --release --example replica_recovery -- load DIR
//! kvnode replica 1 --data-dir DIR          # start-up until "listening"
//! ```
//!
//! `build` writes `DIR/replica-1` as `kvnode replica 1 --data-dir DIR` would
//! find it: 1,000,000 keys of 64-byte values written through the log (in
//! appends of 256 rows, as a follower persists them), a snapshot that
//! compacts that log away, then TAIL_ROWS (default 0) overwrites in the log
//! after it. `load` recovers it the way the replica node does (`WalStore`,
//! then `Replica::recover`) in a fresh process, and reports the time and the
//! resident memory before and after from /proc/self/status. Numbers are
//! printed, never asserted.

// A benchmark measures wall time: that is its job.
#![allow(clippy::disallowed_methods)]

mod common;
use common::{key, row, VALUE_BYTES};
use kvstore::config::ClusterConfig;
use kvstore::replica::Replica;
use kvstore::runtime::store::{Start, Store, WalOptions, WalStore};
use kvstore::wal::{SnapshotRef, Wal};
use kvstore::{Epoch, LogPos, Lsn, PersistOp, ReplicaId, RowBody};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

const KEYS: u64 = 1_000_000;
const TAIL_BATCH_ROWS: usize = 50;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["build", dir] => build(Path::new(dir), 0),
        ["build", dir, tail] => build(Path::new(dir), tail.parse().expect("TAIL_ROWS is a number")),
        ["load", dir] => load(Path::new(dir)),
        _ => {
            eprintln!("usage: replica_recovery build DIR [TAIL_ROWS] | load DIR");
            std::process::exit(2);
        }
    }
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").metadata().expect("metadata").len())
        .sum()
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

fn build(data_dir: &Path, tail_rows: u64) {
    let dir = data_dir.join("replica-1");
    let raw_bytes = KEYS * (key(0).len() + VALUE_BYTES) as u64;
    let (mut wal, rec, _) = Wal::open(&dir).expect("open");
    assert!(rec.rows.is_empty() && rec.snapshot.is_none(), "{} is not empty", dir.display());
    let started = Instant::now();
    let mut kv = BTreeMap::new();
    let mut sessions = BTreeMap::new();
    let mut batch = Vec::with_capacity(kvstore::replica::MAX_ROWS_PER_APPEND);
    wal.append(&[PersistOp::Promise(Epoch(1))]).expect("append");
    for lsn in 1..=KEYS {
        let r = row(lsn, lsn - 1);
        if let RowBody::Put { key, value: Some(v), req } = &r.body {
            kv.insert(key.clone(), v.clone());
            sessions.insert(req.client, (req.seq, r.lsn));
        }
        batch.push(r);
        if batch.len() == kvstore::replica::MAX_ROWS_PER_APPEND {
            wal.append(&[PersistOp::Append(std::mem::take(&mut batch))]).expect("append");
        }
    }
    if !batch.is_empty() {
        wal.append(&[PersistOp::Append(batch)]).expect("append");
    }
    wal.sync().expect("sync");
    let log_bytes = dir_bytes(&dir);
    println!(
        "{KEYS} keys x {VALUE_BYTES}-byte values: {:.1} MB raw key+value; log {:.1} MB ({:.2}x raw) written in {:.2}s",
        mb(raw_bytes),
        mb(log_bytes),
        log_bytes as f64 / raw_bytes as f64,
        started.elapsed().as_secs_f64()
    );
    let last = LogPos { epoch: Epoch(1), lsn: Lsn(KEYS) };
    let started = Instant::now();
    let snap = wal
        .snapshot(SnapshotRef { promised: Epoch(1), last, kv: &kv, sessions: &sessions })
        .expect("snapshot");
    println!(
        "snapshot {:.1} MB ({:.2}x raw) in {:.2}s; {} files removed",
        mb(snap.file_bytes),
        snap.file_bytes as f64 / raw_bytes as f64,
        started.elapsed().as_secs_f64(),
        snap.removed.len()
    );
    drop(kv);
    let mut ops = Vec::with_capacity(TAIL_BATCH_ROWS);
    for i in 1..=tail_rows {
        let lsn = KEYS + i;
        ops.push(PersistOp::Append(vec![row(lsn, i.wrapping_mul(7919) % KEYS)]));
        if ops.len() == TAIL_BATCH_ROWS || i == tail_rows {
            wal.append(&ops).expect("append");
            wal.sync().expect("sync");
            ops.clear();
        }
    }
    drop(wal);
    let on_disk = dir_bytes(&dir);
    println!(
        "{}: {:.1} MB on disk ({:.2}x raw) with {tail_rows} rows of log after the snapshot",
        dir.display(),
        mb(on_disk),
        on_disk as f64 / raw_bytes as f64
    );
}

/// A field of /proc/self/status, in bytes.
fn status_bytes(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let line = status.lines().find(|l| l.starts_with(field)).expect("field present");
    let kb: u64 = line.split_whitespace().nth(1).and_then(|n| n.parse().ok()).expect("a number");
    kb * 1024
}

fn load(data_dir: &Path) {
    let rss_before = status_bytes("VmRSS:");
    let started = Instant::now();
    let mut store = WalStore::open(data_dir, ReplicaId(1), WalOptions::default()).expect("open");
    let opened = started.elapsed();
    let Start::Recovered(stored) = store.recover().expect("recover") else {
        panic!("the directory was found corrupt");
    };
    let replica = Replica::recover(ReplicaId(1), ClusterConfig::new(3, 1), stored);
    let took = started.elapsed();
    let rss_after = status_bytes("VmRSS:");
    let peak = status_bytes("VmHWM:");
    let keys = replica.data().len() as u64;
    let tail = replica.log().rows().len() as u64;
    println!(
        "recovered {keys} keys + {tail} log rows: WalStore::open {:.2}s, with Replica::recover {:.2}s",
        opened.as_secs_f64(),
        took.as_secs_f64()
    );
    println!(
        "RSS {:.1} MB -> {:.1} MB (+{:.1} MB, {:.0} bytes per key); peak {:.1} MB",
        mb(rss_before),
        mb(rss_after),
        mb(rss_after - rss_before),
        (rss_after - rss_before) as f64 / keys.max(1) as f64,
        mb(peak)
    );
    drop(replica);
}
