//! Measures the write-ahead log on this machine's disk:
//!
//! 1. one fsync per row vs group commit (50 rows per fsync);
//! 2. recovery time for 1,000,000 keys of 64-byte values, from a snapshot
//!    plus a short log, and from the log alone;
//! 3. bytes on disk vs raw key + value bytes.
//!
//! `cargo run --release --example wal_bench [-- DIR]`. DIR defaults to a
//! temporary directory under $TMPDIR; it must be on the disk you care about.
//! Numbers are printed, never asserted: they depend on the disk.

// A benchmark measures wall time: that is its job.
#![allow(clippy::disallowed_methods)]

mod common;
use common::{key, row, VALUE_BYTES};
use kvstore::wal::{GroupCommitter, SnapshotRef, Wal};
use kvstore::{Epoch, PersistOp, RowBody};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

const KEYS: u64 = 1_000_000;
const TAIL_ROWS: u64 = 10_000;
const ROUNDS: usize = 5;
const FSYNC_PER_ROW_ROWS: u64 = 500;
const GROUP_ROWS: u64 = 10_000;
const RECOVERY_RUNS: usize = 3;
const GROUP_BATCH_ROWS: usize = 50;

fn main() {
    let base = std::env::args().nth(1).map(std::path::PathBuf::from);
    let tmp = match &base {
        Some(dir) => tempfile::tempdir_in(dir),
        None => tempfile::tempdir(),
    }
    .expect("temporary directory");
    println!("directory: {}", tmp.path().display());

    // fsync latency on a shared virtual disk swings by 10x from second to
    // second, so the two modes take turns and the medians are compared.
    let mut per_row = Vec::new();
    let mut grouped = Vec::new();
    for round in 0..ROUNDS {
        per_row.push(fsync_per_row(&tmp.path().join(format!("per-row-{round}"))));
        grouped.push(group_commit(&tmp.path().join(format!("grouped-{round}"))));
    }
    let (per_row, grouped) = (median(&mut per_row), median(&mut grouped));
    println!(
        "median over {ROUNDS} rounds: fsync per row {per_row:.0} rows/s, group commit {grouped:.0} rows/s: {:.1}x",
        grouped / per_row
    );
    recovery(&tmp.path().join("recovery"));
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn rate(rows: u64, took: Duration) -> f64 {
    rows as f64 / took.as_secs_f64()
}

fn fsync_per_row(dir: &Path) -> f64 {
    let (mut wal, _, _) = Wal::open(dir).expect("open");
    let start = Instant::now();
    for lsn in 1..=FSYNC_PER_ROW_ROWS {
        wal.append(&[PersistOp::Append(vec![row(lsn, lsn)])]).expect("append");
        wal.sync().expect("sync");
    }
    let took = start.elapsed();
    let r = rate(FSYNC_PER_ROW_ROWS, took);
    println!(
        "fsync per row:        {FSYNC_PER_ROW_ROWS} rows in {:>8.3}s = {r:>9.0} rows/s ({:.3} ms per fsync)",
        took.as_secs_f64(),
        took.as_secs_f64() * 1e3 / FSYNC_PER_ROW_ROWS as f64
    );
    r
}

fn group_commit(dir: &Path) -> f64 {
    let (mut wal, _, _) = Wal::open(dir).expect("open");
    let mut committer = GroupCommitter::new(GROUP_BATCH_ROWS);
    let start = Instant::now();
    for lsn in 1..=GROUP_ROWS {
        // One op per row, as a leader persists each write on its own.
        committer.push(lsn, PersistOp::Append(vec![row(lsn, lsn)]));
        if committer.is_full() {
            let durable = committer.commit(&mut wal).expect("commit");
            assert_eq!(durable, Some(lsn));
        }
    }
    committer.commit(&mut wal).expect("commit");
    let took = start.elapsed();
    let r = rate(GROUP_ROWS, took);
    println!(
        "group commit ({GROUP_BATCH_ROWS}/fsync): {GROUP_ROWS} rows in {:>8.3}s = {r:>9.0} rows/s ({:.3} ms per fsync)",
        took.as_secs_f64(),
        took.as_secs_f64() * 1e3 * GROUP_BATCH_ROWS as f64 / GROUP_ROWS as f64
    );
    r
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").metadata().expect("metadata").len())
        .sum()
}

fn recovery(dir: &Path) {
    let raw_bytes = KEYS * (key(0).len() + VALUE_BYTES) as u64;
    println!(
        "\nrecovery: {KEYS} keys x {VALUE_BYTES}-byte values ({:.1} MB raw key+value)",
        raw_bytes as f64 / 1e6
    );

    // Write every key once through the log, in appends of 256 rows, as a follower persists them.
    let (mut wal, _, _) = Wal::open(dir).expect("open");
    let start = Instant::now();
    let mut batch = Vec::with_capacity(kvstore::replica::MAX_ROWS_PER_APPEND);
    for lsn in 1..=KEYS {
        batch.push(row(lsn, lsn - 1));
        if batch.len() == kvstore::replica::MAX_ROWS_PER_APPEND {
            wal.append(&[PersistOp::Append(std::mem::take(&mut batch))]).expect("append");
        }
    }
    if !batch.is_empty() {
        wal.append(&[PersistOp::Append(batch)]).expect("append");
    }
    wal.sync().expect("sync");
    let took = start.elapsed();
    let log_bytes = dir_bytes(dir);
    println!(
        "  log of {KEYS} rows written in {:.2}s: {:.1} MB on disk ({:.2}x raw)",
        took.as_secs_f64(),
        log_bytes as f64 / 1e6,
        log_bytes as f64 / raw_bytes as f64
    );
    drop(wal);

    let mut times = Vec::new();
    for _ in 0..RECOVERY_RUNS - 1 {
        let start = Instant::now();
        let opened = Wal::open(dir).expect("reopen");
        times.push(start.elapsed().as_secs_f64());
        drop(opened);
    }
    let start = Instant::now();
    let (mut wal, rec, report) = Wal::open(dir).expect("reopen");
    times.push(start.elapsed().as_secs_f64());
    assert_eq!(rec.rows.len() as u64, KEYS);
    println!(
        "  recovery from the log alone ({} segments, {} records): median {:.2}s of {RECOVERY_RUNS} (min {:.2}s)",
        report.segments_replayed,
        report.records_replayed,
        median(&mut times),
        times[0]
    );

    // The applied state, as the replica would hold it.
    let mut kv = BTreeMap::new();
    let mut sessions = BTreeMap::new();
    for r in &rec.rows {
        if let RowBody::Put { key, value: Some(v), req } = &r.body {
            kv.insert(key.clone(), v.clone());
            sessions.insert(req.client, (req.seq, r.lsn));
        }
    }
    let last = rec.last();
    drop(rec);
    // The three steps a replica takes: encode on the node thread, write and
    // fsync on a thread of its own, install on the node thread.
    let start = Instant::now();
    let job = wal.begin_snapshot(SnapshotRef { promised: Epoch(1), last, kv: &kv, sessions: &sessions });
    let encoded = start.elapsed();
    let job = job.expect("begin").write().expect("write");
    let written = start.elapsed();
    let snap = wal.finish_snapshot(job).expect("finish").expect("installed");
    let took = start.elapsed();
    println!(
        "  snapshot in {:.2}s: node thread held {:.0} ms encoding and {:.0} ms installing, {:.0} ms on the writer thread",
        took.as_secs_f64(),
        encoded.as_secs_f64() * 1e3,
        (took - written).as_secs_f64() * 1e3,
        (written - encoded).as_secs_f64() * 1e3
    );
    println!(
        "  snapshot file {:.1} MB ({:.2}x raw), {} files removed",
        snap.file_bytes as f64 / 1e6,
        snap.file_bytes as f64 / raw_bytes as f64,
        snap.removed.len()
    );

    // A short log after it: overwrites of existing keys.
    let mut committer = GroupCommitter::new(GROUP_BATCH_ROWS);
    for i in 1..=TAIL_ROWS {
        let lsn = KEYS + i;
        committer.push(lsn, PersistOp::Append(vec![row(lsn, i * 97 % KEYS)]));
        if committer.is_full() {
            committer.commit(&mut wal).expect("commit");
        }
    }
    committer.commit(&mut wal).expect("commit");
    drop(wal);
    drop(kv);
    let on_disk = dir_bytes(dir);

    let mut times = Vec::new();
    for _ in 0..RECOVERY_RUNS {
        let start = Instant::now();
        let (wal, rec, report) = Wal::open(dir).expect("reopen");
        times.push(start.elapsed().as_secs_f64());
        let snap = rec.snapshot.as_ref().expect("snapshot");
        assert_eq!(snap.kv.len() as u64, KEYS);
        assert_eq!(rec.rows.len() as u64, TAIL_ROWS);
        assert_eq!(report.records_replayed, TAIL_ROWS);
        drop((wal, rec));
    }
    println!(
        "  recovery from snapshot + {TAIL_ROWS}-row log: median {:.2}s of {RECOVERY_RUNS} (min {:.2}s)",
        median(&mut times),
        times[0]
    );
    println!(
        "  on disk after compaction: {:.1} MB = {:.2}x raw key+value bytes",
        on_disk as f64 / 1e6,
        on_disk as f64 / raw_bytes as f64
    );
}
