//! SIGKILL the leader while clients write: writes resume under a new leader,
//! no acknowledged write goes missing, and the killed replica, restarted on
//! its data directory, catches up.

// Process tests drive real processes against the wall clock and threads.
#![allow(clippy::disallowed_methods)]

mod common;

use common::{assert_caught_up, missing_through_leader, set, wait_until, TestCluster};
use kvstore::types::ReadMode;
use kvstore::Lsn;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const WRITERS: usize = 16;
/// No writer runs longer than this, whatever happens.
const WRITER_LIMIT: Duration = Duration::from_secs(60);

struct Write {
    key: String,
    value: String,
    acked: Option<Lsn>,
    ambiguous: bool,
    done: Instant,
}

#[test]
fn sigkill_leader_under_load() {
    let mut c = TestCluster::start(3, true);
    assert!(wait_until(Duration::from_secs(10), || c.leader().is_some()), "no leader in the balancer log");
    let old = c.leader().unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..WRITERS)
        .map(|i| {
            let mut client = c.client(ReadMode::Session);
            let stop = stop.clone();
            std::thread::spawn(move || {
                let began = Instant::now();
                let mut log = Vec::new();
                let mut n = 0;
                while !stop.load(Ordering::SeqCst) && began.elapsed() < WRITER_LIMIT {
                    let key = format!("w{i}-{n}");
                    let value = format!("value {n} of writer {i}");
                    n += 1;
                    let done = client.call(set(&key, &value));
                    log.push(Write {
                        acked: done.result.as_ref().ok().map(|r| r.lsn),
                        ambiguous: done.is_ambiguous(),
                        key,
                        value,
                        done: Instant::now(),
                    });
                }
                log
            })
        })
        .collect();

    std::thread::sleep(Duration::from_millis(1000));
    let killed_at = Instant::now();
    c.replica(old).kill9();
    let promoted = wait_until(Duration::from_secs(15), || c.leader().is_some_and(|l| l != old));
    assert!(
        promoted,
        "no new leader after killing r{old}; balancer log:\n{}",
        c.lb.stderr_lines().join("\n")
    );
    let new = c.leader().unwrap();

    // Writes go on for a while under the new leader, then the old one returns.
    std::thread::sleep(Duration::from_millis(1500));
    c.restart_replica(old);
    std::thread::sleep(Duration::from_millis(1000));
    stop.store(true, Ordering::SeqCst);
    let writes: Vec<Write> = writers.into_iter().flat_map(|t| t.join().unwrap()).collect();

    let acked: Vec<&Write> = writes.iter().filter(|w| w.acked.is_some()).collect();
    let after_kill = acked.iter().filter(|w| w.done > killed_at + Duration::from_millis(100)).count();
    let failed = writes.iter().filter(|w| w.acked.is_none() && !w.ambiguous).count();
    eprintln!(
        "r{old} killed, r{new} promoted; {} writes: {} acknowledged ({after_kill} after the kill), {} ambiguous, {failed} failed",
        writes.len(),
        acked.len(),
        writes.iter().filter(|w| w.ambiguous).count()
    );
    assert!(after_kill >= 50, "writes did not resume after the kill: {after_kill} acknowledged");
    let mut times: Vec<Instant> = acked.iter().map(|w| w.done).collect();
    times.sort();
    let gap = times.windows(2).map(|w| w[1] - w[0]).max().unwrap_or_default();
    eprintln!("longest pause between acknowledged writes: {gap:?}");

    // Every acknowledged write is there, read linearizably through the balancer.
    let missing = missing_through_leader(&c, acked.iter().map(|w| (w.key.clone(), w.value.clone())));
    assert!(
        missing.is_empty(),
        "{} acknowledged writes missing (the leader answered another value, or none), e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );

    // The restarted replica catches up: it applies every acknowledged row
    // and serves each value from its own state.
    let top = acked.iter().filter_map(|w| w.acked).max().unwrap();
    let pairs: Vec<(String, String)> = acked.iter().map(|w| (w.key.clone(), w.value.clone())).collect();
    assert_caught_up(&c, old, top, &pairs);

    // Now lose the new leader too: the restarted replica is needed for the
    // promotion quorum, and what it recovered from disk and caught up on
    // must hold every acknowledged write.
    c.replica(new).kill9();
    let promoted = wait_until(Duration::from_secs(15), || c.leader().is_some_and(|l| l != new));
    assert!(
        promoted,
        "no leader after killing r{new} as well; balancer log:\n{}",
        c.lb.stderr_lines().join("\n")
    );
    let missing = missing_through_leader(&c, acked.iter().map(|w| (w.key.clone(), w.value.clone())));
    assert!(
        missing.is_empty(),
        "after a second failover {} acknowledged writes are missing, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    assert!(c.lb.alive());
}
