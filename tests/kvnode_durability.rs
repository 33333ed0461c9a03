//! Replicas on their write-ahead logs (`--data-dir`), as real processes:
//! killed and restarted, stopped and restarted all together, and refusing
//! directories that are not theirs. Every acknowledged write must survive.
//!
//! SIGKILL ends the process but not the machine: the page cache survives, so
//! "power loss" here is a crash of every replica at once, not a lost cache.
//! (The WAL's own tests cover torn writes and unsynced data byte by byte.)

// Process tests drive real processes against the wall clock and threads.
#![allow(clippy::disallowed_methods)]

mod common;

use common::{assert_caught_up, missing_through_leader, set, wait_until, Proc, TestCluster};
use kvstore::types::ReadMode;
use kvstore::Lsn;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const WRITERS: usize = 8;
/// No writer runs longer than this or writes more than this, whatever happens.
const WRITER_LIMIT: Duration = Duration::from_secs(60);
const WRITES_PER_WRITER_MAX: usize = 50_000;
/// Small, so every test writes several snapshots and recovers through one
/// (segments are then the WAL's smallest, 4 KiB).
const SMALL_SNAPSHOTS: [&str; 2] = ["--snapshot-log-bytes", "16384"];

struct Write {
    key: String,
    value: String,
    acked: Option<Lsn>,
    done: Instant,
}

/// Writers, each setting keys of its own (never overwritten), until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<Vec<Write>>>,
}

impl Load {
    fn start(c: &TestCluster) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..WRITERS)
            .map(|i| {
                let mut client = c.client(ReadMode::Session);
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let began = Instant::now();
                    let mut log = Vec::new();
                    while !stop.load(Ordering::SeqCst)
                        && began.elapsed() < WRITER_LIMIT
                        && log.len() < WRITES_PER_WRITER_MAX
                    {
                        let n = log.len();
                        let key = format!("w{i}-{n}");
                        let value = format!("value {n} of writer {i}");
                        let done = client.call(set(&key, &value));
                        let acked = done.result.as_ref().ok().map(|r| r.lsn);
                        log.push(Write { key, value, acked, done: Instant::now() });
                    }
                    log
                })
            })
            .collect();
        Load { stop, threads }
    }

    /// Stops the writers; returns the acknowledged writes.
    fn finish(self) -> Vec<Write> {
        self.stop.store(true, Ordering::SeqCst);
        let all: Vec<Write> = self.threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
        let total = all.len();
        let acked: Vec<Write> = all.into_iter().filter(|w| w.acked.is_some()).collect();
        eprintln!("{total} writes, {} acknowledged", acked.len());
        acked
    }
}

fn top_lsn<'a>(writes: impl IntoIterator<Item = &'a Write>) -> Lsn {
    writes.into_iter().filter_map(|w| w.acked).max().unwrap_or(Lsn(0))
}

/// The log end a replica recovered from its disk, from its start-up log line.
fn recovered_log_end(p: &Proc, timeout: Duration) -> Lsn {
    let mut found = None;
    wait_until(timeout, || {
        found = p.stderr_lines().iter().find_map(|l| {
            let rest = l.split("replica machine starts:").nth(1)?;
            let end = rest.split("log ends ").nth(1)?;
            end.split('@').next()?.parse().ok()
        });
        found.is_some()
    });
    match found {
        Some(lsn) => Lsn(lsn),
        None => panic!("{}: no start-up line; stderr:\n{}", p.name, p.stderr_lines().join("\n")),
    }
}

fn took_snapshots(p: &Proc) -> usize {
    p.stderr_lines().iter().filter(|l| l.contains("snapshot up to")).count()
}

fn caught_up(c: &TestCluster, i: u8, acked: &[Write]) {
    let pairs: Vec<(String, String)> = acked.iter().map(|w| (w.key.clone(), w.value.clone())).collect();
    assert_caught_up(c, i, top_lsn(acked), &pairs);
}

fn a_follower(c: &TestCluster) -> u8 {
    assert!(wait_until(Duration::from_secs(10), || c.leader().is_some()), "no leader in the balancer log");
    let leader = c.leader().unwrap();
    (1..=3).find(|&i| i != leader).unwrap()
}

/// (a) With `--sync-acks 2` every acknowledged write is on the follower's
/// disk, so what it recovers must reach every write acknowledged before the
/// kill; then it catches up with the rest.
#[test]
fn follower_killed_under_load_recovers_its_log_and_catches_up() {
    let mut c = TestCluster::start_with(3, true, &SMALL_SNAPSHOTS, &["--sync-acks", "2"]);
    let f = a_follower(&c);
    let load = Load::start(&c);
    std::thread::sleep(Duration::from_millis(1500));
    let killed_at = Instant::now();
    c.replica(f).kill9();
    std::thread::sleep(Duration::from_millis(500));
    let restarted_at = Instant::now();
    c.restart_replica(f);
    std::thread::sleep(Duration::from_millis(1500));
    let acked = load.finish();

    let before = top_lsn(acked.iter().filter(|w| w.done < killed_at));
    assert!(before > Lsn(50), "too few writes before the kill to tell: {before}");
    let recovered = recovered_log_end(c.replica(f), Duration::from_secs(10));
    eprintln!(
        "r{f} killed with writes acknowledged up to {before}; it recovered a log ending at {recovered}"
    );
    assert!(recovered >= before, "r{f} recovered its log up to {recovered}, but {before} was acknowledged");
    let after = acked.iter().filter(|w| w.done > restarted_at).count();
    assert!(after > 0, "no write was acknowledged after r{f} came back");
    caught_up(&c, f, &acked);
    assert!(c.all_alive());
}

/// (b) SIGTERM everything, start everything again on the same directories:
/// every acknowledged write is readable.
#[test]
fn whole_cluster_stopped_and_restarted_keeps_every_acknowledged_write() {
    let mut c = TestCluster::start_with(3, true, &SMALL_SNAPSHOTS, &[]);
    let load = Load::start(&c);
    std::thread::sleep(Duration::from_millis(2000));
    let acked = load.finish();
    assert!(acked.len() > 100, "too few acknowledged writes: {}", acked.len());
    let snapshots: usize = c.replicas.iter().map(took_snapshots).sum();
    assert!(snapshots > 0, "no replica took a snapshot; the test should recover through one");
    // With sync_acks 1 one follower may trail by a few rows; let it have
    // them all, so every replica's recovered log can be checked below.
    let top = top_lsn(&acked);
    for i in 1..=3 {
        let mut probe = c.probe(i);
        let ok = wait_until(Duration::from_secs(10), || probe.status().last.lsn >= top);
        assert!(ok, "r{i} never received every acknowledged row: {:?}", probe.status());
    }

    c.lb.signal("TERM");
    for p in &c.replicas {
        p.signal("TERM");
    }
    let status = c.lb.wait_exit(Duration::from_secs(10));
    assert!(status.is_some_and(|s| s.success()), "balancer: {status:?}");
    for p in &mut c.replicas {
        let status = p.wait_exit(Duration::from_secs(10));
        assert!(status.is_some_and(|s| s.success()), "{}: {status:?}", p.name);
        let ops_line = p.stderr_lines().into_iter().find(|l| l.contains("ops per fsync"));
        eprintln!("{}: {}", p.name, ops_line.unwrap_or_default());
    }

    for i in 1..=3 {
        c.restart_replica(i);
    }
    c.restart_balancer();
    c.wait_for_a_write(Duration::from_secs(30));
    for i in 1..=3 {
        let recovered = recovered_log_end(c.replica(i), Duration::from_secs(10));
        let via_snapshot = c.replica(i).stderr_lines().iter().any(|l| l.contains("stored: snapshot up to"));
        eprintln!("r{i} recovered a log ending at {recovered} (through a snapshot: {via_snapshot})");
        assert!(recovered >= top, "r{i} recovered up to {recovered}, acknowledged rows reach {top}");
    }
    let missing = missing_through_leader(&c, acked.iter().map(|w| (w.key.clone(), w.value.clone())));
    assert!(
        missing.is_empty(),
        "{} acknowledged writes missing (the leader answered another value, or none), e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    assert!(c.all_alive());
}

/// (c) SIGKILL every replica at once in the middle of the load, start them
/// again: nothing acknowledged is missing.
#[test]
fn every_replica_killed_at_once_loses_nothing_acknowledged() {
    let mut c = TestCluster::start_with(3, true, &SMALL_SNAPSHOTS, &[]);
    let load = Load::start(&c);
    std::thread::sleep(Duration::from_millis(1500));
    for p in &mut c.replicas {
        p.kill9();
    }
    let acked = load.finish();
    assert!(acked.len() > 100, "too few acknowledged writes: {}", acked.len());
    for i in 1..=3 {
        c.restart_replica(i);
    }
    c.wait_for_a_write(Duration::from_secs(30));
    let missing = missing_through_leader(&c, acked.iter().map(|w| (w.key.clone(), w.value.clone())));
    assert!(
        missing.is_empty(),
        "{} acknowledged writes missing (the leader answered another value, or none), e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    assert!(c.all_alive());
}

fn dir_listing(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap_or_default())
        })
        .collect();
    v.sort();
    v
}

/// Runs `kvnode replica N --data-dir DIR` and expects it to refuse: exit
/// status 2, a message containing `expect`, and the directory untouched.
/// Peers for a replica started alone (nothing listens there).
const PEERS: &str = "127.0.0.1:1,127.0.0.1:2,127.0.0.1:3";

fn assert_refused(n: u8, data_dir: &Path, expect: &str) {
    let wal_dir = data_dir.join(format!("replica-{n}"));
    let before = dir_listing(&wal_dir);
    let args = [
        "replica",
        &n.to_string(),
        "--listen",
        "127.0.0.1:0",
        "--peers",
        PEERS,
        "--data-dir",
        data_dir.to_str().unwrap(),
    ];
    let mut p = Proc::spawn(&format!("replica {n}"), &args);
    let status = p.wait_exit(Duration::from_secs(10));
    // The exit can come before the reader thread has the last lines.
    wait_until(Duration::from_secs(5), || p.stderr_lines().iter().any(|l| l.contains(expect)));
    let stderr = p.stderr_lines().join("\n");
    assert_eq!(status.and_then(|s| s.code()), Some(2), "replica {n}: {status:?}; stderr:\n{stderr}");
    assert!(stderr.contains(expect), "replica {n}: expected {expect:?} in:\n{stderr}");
    assert!(p.stdout_lines().is_empty(), "it must not have started listening");
    assert_eq!(dir_listing(&wal_dir), before, "the directory was changed");
}

/// (d) A directory that is not ours, or written by a newer version, or in
/// use by another replica: exit status 2, a message naming the problem, and
/// nothing changed.
#[test]
fn replica_refuses_foreign_newer_or_locked_data_dirs() {
    let tmp = tempfile::tempdir().unwrap();

    std::fs::create_dir_all(tmp.path().join("replica-1")).unwrap();
    std::fs::write(tmp.path().join("replica-1/notes.txt"), b"not a log").unwrap();
    assert_refused(1, tmp.path(), "notes.txt: not a kvstore WAL file");

    {
        let (mut wal, _, _) = kvstore::wal::Wal::open(tmp.path().join("replica-2")).unwrap();
        wal.append(&[kvstore::PersistOp::Promise(kvstore::Epoch(3))]).unwrap();
        wal.sync().unwrap();
    }
    let seg = std::fs::read_dir(tmp.path().join("replica-2")).unwrap().next().unwrap().unwrap().path();
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[8..12].copy_from_slice(&2u32.to_le_bytes());
    std::fs::write(&seg, &bytes).unwrap();
    assert_refused(2, tmp.path(), "format version 2 is newer than this build supports (1)");

    let dir = tmp.path().to_str().unwrap();
    let first = Proc::spawn(
        "replica 3",
        &["replica", "3", "--listen", "127.0.0.1:0", "--peers", PEERS, "--data-dir", dir],
    );
    first.wait_line("kvnode replica 3 listening at ", Duration::from_secs(10));
    assert_refused(3, tmp.path(), "in use by another replica");
    drop(first);
}

/// A follower whose log is damaged (not a torn tail) sets the directory
/// aside, starts empty, re-syncs from the leader, and then serves every
/// acknowledged write.
#[test]
fn corrupt_follower_sets_its_log_aside_and_resyncs() {
    let mut c = TestCluster::start(3, true);
    let f = a_follower(&c);
    let load = Load::start(&c);
    std::thread::sleep(Duration::from_millis(1000));
    let acked = load.finish();
    let promised = c.probe(f).status().promised;
    c.replica(f).kill9();

    let data = c.dir.path().to_path_buf();
    let wal_dir = data.join(format!("replica-{f}"));
    let mut segments: Vec<_> = std::fs::read_dir(&wal_dir).unwrap().map(|e| e.unwrap().path()).collect();
    segments.sort();
    let mut bytes = std::fs::read(&segments[0]).unwrap();
    // Inside the first record's payload: good records follow, so this is
    // damage, not a torn write.
    bytes[kvstore::wal::SEGMENT_HEADER_BYTES + kvstore::wal::RECORD_HEADER_BYTES + 1] ^= 0x20;
    std::fs::write(&segments[0], &bytes).unwrap();

    c.restart_replica(f);
    let p = c.replica(f);
    let resynced = wait_until(Duration::from_secs(30), || {
        p.stderr_lines().iter().any(|l| l.contains("caught up: holds every row"))
    });
    let stderr = p.stderr_lines().join("\n");
    assert!(resynced, "r{f} never re-synced; stderr:\n{stderr}");
    assert!(stderr.contains("write-ahead log damaged"), "{stderr}");
    // It starts empty, but keeps the epoch it promised (from its promise file).
    let kept = stderr
        .lines()
        .find_map(|l| {
            l.split("replica machine starts empty and re-syncs").nth(1)?.split(", promised e").nth(1)
        })
        .and_then(|e| e.split_whitespace().next()?.parse::<u64>().ok());
    assert!(kept.is_some_and(|e| e >= promised.0), "promised {promised} before; stderr:\n{stderr}");
    assert!(data.join(format!("replica-{f}.corrupt-1")).is_dir(), "the damaged directory was not kept");
    let marker = data.join(format!("replica-{f}.resyncing"));
    assert!(wait_until(Duration::from_secs(5), || !marker.exists()), "the re-sync marker is still there");
    caught_up(&c, f, &acked);

    // Restarted once more, it trusts its new log.
    c.replica(f).kill9();
    c.restart_replica(f);
    let recovered = recovered_log_end(c.replica(f), Duration::from_secs(10));
    assert!(recovered >= top_lsn(&acked), "r{f} recovered only up to {recovered}");
    assert!(c.all_alive());
}

/// A promise file with neither copy valid: the replica refuses to start
/// (exit status 2, the file named) rather than guess its promised epoch, and
/// changes nothing.
#[test]
fn replica_refuses_a_promise_file_with_both_copies_damaged() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let (mut wal, _, _) = kvstore::wal::Wal::open(tmp.path().join("replica-1")).unwrap();
        wal.append(&[kvstore::PersistOp::Promise(kvstore::Epoch(3))]).unwrap();
        wal.sync().unwrap();
    }
    let promise = tmp.path().join("replica-1.promise");
    let mut bytes = kvstore::wal::encode_file(kvstore::Epoch(3));
    bytes[26] ^= 0x04;
    bytes[kvstore::wal::PROMISE_SLOT1_OFFSET as usize + 26] ^= 0x04;
    std::fs::write(&promise, &bytes).unwrap();
    assert_refused(1, tmp.path(), "replica-1.promise: both copies of the newest promised epoch are damaged");
    assert_eq!(std::fs::read(&promise).unwrap(), bytes, "the promise file was changed");
}

/// A follower whose log tail is cut at recovery (what a torn write leaves,
/// and what a damaged last record looks like) starts as a replica that may
/// lack rows; its `replica-N.missing` marker survives a restart before it
/// caught up (here: no balancer, so no cluster configuration), and goes once
/// it has. Then it recovers as a whole replica again.
#[test]
fn follower_with_a_cut_log_tail_stays_missing_until_caught_up() {
    let mut c = TestCluster::start(3, true);
    let f = a_follower(&c);
    let load = Load::start(&c);
    std::thread::sleep(Duration::from_millis(800));
    let acked = load.finish();
    c.replica(f).kill9();
    // No balancer: a restarted replica gets no configuration, so no machine.
    c.lb.kill9();

    let data = c.dir.path().to_path_buf();
    let wal_dir = data.join(format!("replica-{f}"));
    let mut segments: Vec<_> = std::fs::read_dir(&wal_dir).unwrap().map(|e| e.unwrap().path()).collect();
    segments.sort();
    let last = segments.pop().unwrap();
    // Half a record: a length of 9 and two bytes of its checksum.
    let mut file = std::fs::OpenOptions::new().append(true).open(&last).unwrap();
    std::io::Write::write_all(&mut file, &[9, 0, 0, 0, 1, 2]).unwrap();
    drop(file);
    let marker = data.join(format!("replica-{f}.missing"));

    c.restart_replica(f);
    let stderr = c.replica(f).stderr_lines().join("\n");
    assert!(stderr.contains("recovery cut 6 bytes off the end of"), "{stderr}");
    assert!(stderr.contains("may lack rows it confirmed"), "{stderr}");
    let text = std::fs::read_to_string(&marker).expect("the marker is written before the machine starts");
    assert!(text.contains(last.file_name().unwrap().to_str().unwrap()), "{text}");

    // Restarted again before it caught up: still missing, from the marker.
    c.replica(f).kill9();
    c.restart_replica(f);
    let stderr = c.replica(f).stderr_lines().join("\n");
    assert!(stderr.contains("rows cut off the log at an earlier recovery may still be missing"), "{stderr}");
    assert!(marker.exists());

    // With a balancer again, it catches up, says so, and the marker goes.
    c.restart_balancer();
    let p = c.replica(f);
    let resynced = wait_until(Duration::from_secs(30), || {
        p.stderr_lines().iter().any(|l| l.contains("caught up: holds every row"))
    });
    let stderr = p.stderr_lines().join("\n");
    assert!(resynced, "r{f} never caught up; stderr:\n{stderr}");
    assert!(stderr.contains("replica machine starts") && stderr.contains("may lack rows"), "{stderr}");
    assert!(wait_until(Duration::from_secs(5), || !marker.exists()), "the marker is still there");
    caught_up(&c, f, &acked);

    // Whole again: the next start trusts its log.
    c.replica(f).kill9();
    c.restart_replica(f);
    let recovered = recovered_log_end(c.replica(f), Duration::from_secs(10));
    assert!(recovered >= top_lsn(&acked), "r{f} recovered only up to {recovered}");
    let stderr = c.replica(f).stderr_lines().join("\n");
    assert!(!stderr.contains("may lack rows"), "{stderr}");
    assert!(c.all_alive());
}
