//! `kvnode --record DIR` on a real three-replica cluster through a SIGKILL
//! failover (and the killed replica's restart), then `kvsim replay DIR`:
//! every machine does, given its recorded inputs, exactly what it did for
//! real, and the operations the balancer saw pass the simulator's checkers.
//! The recording also becomes a scenario that `kvsim run` runs.
//!
//! `kvsim` is the workspace's other binary, found beside `kvnode` (built by
//! `cargo test --workspace`, or `cargo build -p kvsim`).

// Process tests drive real processes against the wall clock and threads.
#![allow(clippy::disallowed_methods)]

mod common;

use common::{get, set, wait_until, TestCluster, BIN};
use kvstore::types::ReadMode;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// No client thread runs longer than this, whatever happens.
const CLIENT_LIMIT: Duration = Duration::from_secs(30);

fn kvsim() -> PathBuf {
    let p = Path::new(BIN).with_file_name("kvsim");
    assert!(
        p.exists(),
        "{} is missing: build it with `cargo build -p kvsim` (`cargo test --workspace` does)",
        p.display()
    );
    p
}

/// Runs kvsim with a deadline; returns (exit code, stdout, stderr).
fn run_kvsim(args: &[&str], limit: Duration) -> (Option<i32>, String, String) {
    let mut child = Command::new(kvsim())
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("kvsim starts");
    let end = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() >= end {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "kvsim {args:?} ran longer than {limit:?}; stdout:\n{}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn a_recorded_failover_replays_without_divergence() {
    let rec_dir = tempfile::tempdir().unwrap();
    let rec = rec_dir.path().join("rec");
    let rec_arg = rec.to_str().unwrap();
    let mut c = TestCluster::start_with(3, true, &["--record", rec_arg], &["--record", rec_arg]);
    assert!(wait_until(Duration::from_secs(10), || c.leader().is_some()), "no leader: {}", c.diagnostics());
    let old = c.leader().unwrap();

    // Writers (session) and a linearizable reader, closed loop.
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let mut threads = Vec::new();
    for i in 0..4 {
        let mut client = c.client(ReadMode::Session);
        let (stop, acked) = (stop.clone(), acked.clone());
        threads.push(std::thread::spawn(move || {
            let began = Instant::now();
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) && began.elapsed() < CLIENT_LIMIT {
                let done = client.call(set(&format!("k{}", n % 20), &format!("w{i}-{n}")));
                if done.result.is_ok() {
                    acked.fetch_add(1, Ordering::SeqCst);
                }
                n += 1;
            }
        }));
    }
    for _ in 0..2 {
        let mut client = c.client(ReadMode::Leader);
        let stop = stop.clone();
        threads.push(std::thread::spawn(move || {
            let began = Instant::now();
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) && began.elapsed() < CLIENT_LIMIT {
                let _ = client.call(get(&format!("k{}", n % 20)));
                n += 1;
                std::thread::sleep(Duration::from_millis(2));
            }
        }));
    }

    std::thread::sleep(Duration::from_millis(800));
    c.replica(old).kill9();
    let promoted = wait_until(Duration::from_secs(10), || c.leader().is_some_and(|l| l != old));
    assert!(promoted, "no new leader after killing r{old}: {}", c.diagnostics());
    // Writes go on under the new leader until some are acknowledged.
    let before = acked.load(Ordering::SeqCst);
    assert!(
        wait_until(Duration::from_secs(10), || acked.load(Ordering::SeqCst) >= before + 20),
        "writes did not resume under the new leader: {}",
        c.diagnostics()
    );
    // The old leader comes back on its data and recording directories: a
    // second life in its recording.
    c.restart_replica(old);
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::SeqCst);
    for t in threads {
        t.join().unwrap();
    }
    eprintln!("{} writes acknowledged; r{old} killed and restarted", acked.load(Ordering::SeqCst));

    // Stop everything cleanly (the balancer first, so it drains while the
    // replicas still answer).
    c.lb.signal("TERM");
    assert!(c.lb.wait_exit(Duration::from_secs(10)).is_some(), "the balancer did not stop");
    for i in 1..=3 {
        let p = c.replica(i);
        p.signal("TERM");
        assert!(p.wait_exit(Duration::from_secs(10)).is_some(), "replica {i} did not stop");
    }
    let mut bytes = 0;
    for node in ["lb", "r1", "r2", "r3"] {
        let dir = rec.join(node);
        let size: u64 = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum();
        bytes += size;
    }

    let scenario = rec_dir.path().join("replayed.toml");
    let (code, out, err) =
        run_kvsim(&["replay", rec_arg, "--as-scenario", scenario.to_str().unwrap()], Duration::from_secs(30));
    eprintln!("{out}{err}recording: {bytes} bytes");
    assert_eq!(code, Some(0), "kvsim replay failed:\n{out}{err}");
    assert!(out.contains("effects: all "), "{out}");
    assert!(out.contains("invariants: all hold"), "{out}");
    assert!(out.contains(", lost 0"), "{out}");
    assert!(out.contains(&format!("r{old}: 2 lives")), "the killed replica's two lives:\n{out}");
    assert!(!out.contains("DIVERGENCE"), "{out}");
    let ok: u64 = out
        .lines()
        .find_map(|l| l.strip_prefix("ops (as the balancer saw them): "))
        .and_then(|l| l.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(ok >= 40, "few operations in the history:\n{out}");

    // The inferred scenario parses and runs.
    let text = std::fs::read_to_string(&scenario).unwrap();
    assert!(text.starts_with("# Inferred by `kvsim replay"), "{text}");
    assert!(text.contains("action = \"crash\""), "the SIGKILL is a crash:\n{text}");
    let (code, out, err) = run_kvsim(
        &["run", scenario.to_str().unwrap(), "--seed", "1", "--trace", "none"],
        Duration::from_secs(60),
    );
    assert_eq!(code, Some(0), "kvsim run of the inferred scenario:\n{text}\n{out}{err}");
    assert!(out.contains("invariants: all hold"), "{out}");
}
