//! A periodic snapshot is written off the node thread: while its writer is
//! held (`KVSTORE_TEST_SNAPSHOT_DELAY_MS`), the replica keeps acknowledging
//! writes. With the old behaviour planted back
//! (`KVSTORE_BUG_SNAPSHOT_ON_LOOP`: the node thread waits for the writer)
//! the same run stalls for the whole delay, so the check is shown to fire.

// Process tests drive real processes against the wall clock and threads.
#![allow(clippy::disallowed_methods)]

mod common;

use common::{set, TestCluster};
use kvstore::types::ReadMode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const WRITERS: usize = 4;
/// How long each snapshot's writer waits before writing.
const DELAY: Duration = Duration::from_millis(3000);
/// Load runs this long: room for a snapshot to begin and be installed.
const LOAD: Duration = Duration::from_millis(6500);

struct Run {
    /// Longest time no writer had a write acknowledged.
    longest_gap: Duration,
    acked: usize,
    /// Snapshots installed while the load ran.
    installed: usize,
    failovers: usize,
}

/// Three durable replicas that all must acknowledge (`--sync-acks 2`), so a
/// stalled follower stalls every write; small snapshots, each held `DELAY`.
fn run(planted: bool) -> Run {
    // One test per process sets these, before spawning the nodes that read them.
    std::env::set_var(kvstore::runtime::store::ENV_TEST_SNAPSHOT_DELAY, DELAY.as_millis().to_string());
    if planted {
        std::env::set_var(kvstore::runtime::store::ENV_BUG_SNAPSHOT_ON_LOOP, "1");
    } else {
        std::env::remove_var(kvstore::runtime::store::ENV_BUG_SNAPSHOT_ON_LOOP);
    }
    let c = TestCluster::start_with(3, true, &["--snapshot-log-bytes", "16384"], &["--sync-acks", "2"]);
    let lb_lines_before = c.lb.stderr_lines().len();
    let stop = Arc::new(AtomicBool::new(false));
    let began = Instant::now();
    let writers: Vec<_> = (0..WRITERS)
        .map(|i| {
            let mut client = c.client(ReadMode::Session);
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut acked_at = Vec::new();
                let mut n = 0;
                while !stop.load(Ordering::SeqCst) && n < 100_000 {
                    n += 1;
                    if client.call(set(&format!("w{i}-{n}"), "v")).result.is_ok() {
                        acked_at.push(Instant::now());
                    }
                }
                acked_at
            })
        })
        .collect();
    std::thread::sleep(LOAD);
    let installed = c.replicas.iter().map(snapshots_installed).sum();
    stop.store(true, Ordering::SeqCst);
    let ended = Instant::now();
    let mut acked: Vec<Instant> = writers.into_iter().flat_map(|w| w.join().unwrap()).collect();
    acked.sort();
    let mut edges = vec![began];
    edges.extend(acked.iter().copied().filter(|&t| t <= ended));
    edges.push(ended);
    let longest_gap = edges.windows(2).map(|w| w[1] - w[0]).max().unwrap_or_default();
    let failovers = c.lb.stderr_lines()[lb_lines_before..].iter().filter(|l| l.contains("failover")).count();
    let r = Run { longest_gap, acked: acked.len(), installed, failovers };
    eprintln!(
        "planted={planted}: {} writes acknowledged, longest gap {:?}, {} snapshots installed, {} failover lines",
        r.acked, r.longest_gap, r.installed, r.failovers
    );
    r
}

fn snapshots_installed(p: &common::Proc) -> usize {
    p.stderr_lines()
        .iter()
        .filter(|l| l.contains("snapshot up to") && l.contains("the node thread held for"))
        .count()
}

#[test]
fn a_snapshot_being_written_does_not_stop_the_replica() {
    let ok = run(false);
    assert!(ok.installed > 0, "no snapshot was installed during the load: the test saw nothing");
    assert!(ok.acked > 100, "too few writes to tell: {}", ok.acked);
    assert!(
        ok.longest_gap < DELAY / 2,
        "writes stopped for {:?} while snapshots were held {DELAY:?} off the node thread",
        ok.longest_gap
    );

    // The check fires on the old behaviour.
    let bug = run(true);
    assert!(bug.installed > 0, "planted run installed no snapshot: it tells nothing");
    assert!(
        bug.longest_gap >= DELAY * 9 / 10,
        "with the node thread waiting for the writer, writes should stop for about {DELAY:?}; longest gap {:?}",
        bug.longest_gap
    );
}
