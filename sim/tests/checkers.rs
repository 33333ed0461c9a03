//! Each checker, shown catching a real violation: deliberately unsafe
//! configurations and test-only bugs must be reported, with the reproduce
//! command, while the same scenario without them is clean.

use kvsim::{parse, run, Summary, TraceLevel};

fn sweep(text: &str, seeds: std::ops::RangeInclusive<u64>) -> Vec<Summary> {
    let sc = parse(text, "test.toml", "test").unwrap_or_else(|e| panic!("{e}"));
    seeds.map(|s| run(&sc, s, TraceLevel::None).summary).collect()
}

fn any_violation_containing(runs: &[Summary], needle: &str) -> bool {
    runs.iter().any(|s| s.violations.iter().any(|v| v.contains(needle)))
}

/// The leader acknowledges before its own disk has the row, with no sync
/// follower, and is cut off from its followers; then it crashes. Its
/// acknowledged writes existed only in its memory.
const ACK_BEFORE_DURABLE: &str = r#"
[cluster]
sync_acks = 0
[disk]
write_min_ms = 20
write_mean_ms = 40
[workload]
duration_ms = 600
clients = 2
mix = { set = 100, get = 0 }
[[faults]]
at_ms = 300
action = "partition_one_way"
from = ["r1"]
to = ["r2", "r3"]
[[faults]]
at_ms = 500
action = "crash"
node = "r1"
[[faults]]
at_ms = 700
action = "restart"
node = "r1"
[[faults]]
at_ms = 800
action = "heal"
[run]
quiet_ms = 3000
liveness_ms = 0
"#;

#[test]
fn lost_acknowledged_writes_are_reported() {
    let bad = sweep(&format!("{ACK_BEFORE_DURABLE}\n[bugs]\nack_before_durable = true\n"), 1..=5);
    assert!(bad.iter().any(|s| s.lost_acked_writes > 0), "no loss reported: {:?}", bad[0]);
    assert!(any_violation_containing(&bad, "acknowledged write lost"));
    let good = sweep(ACK_BEFORE_DURABLE, 1..=5);
    for s in &good {
        assert_eq!(s.lost_acked_writes, 0, "{:?}", s.violations);
        assert!(s.violations.is_empty(), "{:?}", s.violations);
    }
}

const WITH_DELETES: &str = r#"
[workload]
duration_ms = 800
keys = 4
clients = 3
mix = { set = 50, get = 20, del = 30 }
[run]
quiet_ms = 1000
"#;

#[test]
fn diverging_replicas_are_reported() {
    let bad = sweep(&format!("{WITH_DELETES}\n[bugs]\nfollower_skips_deletes = true\n"), 1..=3);
    assert!(any_violation_containing(&bad, "replicas differ after the quiet period"));
    for s in sweep(WITH_DELETES, 1..=3) {
        assert!(s.violations.is_empty(), "{:?}", s.violations);
    }
}

#[test]
fn reads_of_values_never_written_are_reported() {
    let bad = sweep(&format!("{WITH_DELETES}\n[bugs]\nreads_wrong_key = true\n"), 1..=3);
    assert!(any_violation_containing(&bad, "a value never written to that key"));
}

/// Every write needs both followers, and one of them never comes back:
/// writes after the crash cannot complete.
#[test]
fn stuck_writes_after_the_last_fault_are_liveness_violations() {
    let text = r#"
[cluster]
sync_acks = "all"
[workload]
duration_ms = 1500
clients = 2
mix = { set = 100, get = 0 }
[[faults]]
at_ms = 200
action = "crash"
node = "r3"
[run]
quiet_ms = 3000
"#;
    let runs = sweep(text, 1..=2);
    assert!(any_violation_containing(&runs, "liveness"));
    // Nothing acknowledged was lost, though: writes wait, they do not fall
    // back to asynchronous replication.
    assert!(runs.iter().all(|s| s.lost_acked_writes == 0));
}

/// r3 stops receiving rows, then the balancer can reach only r3. Safe
/// failover refuses to promote it (it cannot prove r3 holds every
/// acknowledged write); `unsafe_failover` promotes it anyway and the writes
/// r1 and r2 acknowledged in the meantime are truncated when they rejoin.
const SPLIT: &str = r#"
[cluster]
sync_acks = 1
[workload]
duration_ms = 2000
clients = 2
mix = { set = 100, get = 0 }
[[faults]]
at_ms = 200
action = "partition_one_way"
from = ["r1"]
to = ["r3"]
[[faults]]
at_ms = 700
action = "partition"
groups = [["r1", "r2"], ["r3", "lb", "clients"]]
[[faults]]
at_ms = 1400
action = "heal"
[run]
quiet_ms = 2000
"#;

#[test]
fn unsafe_failover_loses_acknowledged_writes_and_the_checker_says_so() {
    let unsafe_runs = sweep(&SPLIT.replace("sync_acks = 1", "sync_acks = 1\nunsafe_failover = true"), 1..=3);
    for s in &unsafe_runs {
        assert!(s.lost_acked_writes > 0, "unsafe failover lost nothing: {s:?}");
        assert!(s.violations.iter().any(|v| v.contains("acknowledged write lost")));
    }
    for s in sweep(SPLIT, 1..=3) {
        assert_eq!(s.lost_acked_writes, 0, "{:?}", s.violations);
        assert!(s.violations.is_empty(), "{:?}", s.violations);
        assert!(s.acked_writes > 0);
    }
}

fn stale_reads_scenario() -> String {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios/stale-reads.toml");
    std::fs::read_to_string(p).unwrap()
}

#[test]
fn linearizability_checker_rejects_stale_leader_reads() {
    // The balancer wrongly spreads `leader` reads over lagging followers.
    let bad = sweep(&format!("{}\n[bugs]\nleader_reads_anywhere = true\n", stale_reads_scenario()), 1..=3);
    assert!(
        bad.iter().all(|s| s.violations.iter().any(|v| v.starts_with("linearizability: key"))),
        "{:?}",
        bad.iter().map(|s| &s.violations).collect::<Vec<_>>()
    );
    for s in sweep(&stale_reads_scenario(), 1..=3) {
        assert!(s.violations.is_empty(), "{:?}", s.violations);
        assert!(s.stale_reads_max_lsn > 0, "the `any` clients did see stale data");
    }
}

#[test]
fn session_checker_rejects_reads_behind_the_clients_own_writes() {
    let bad = sweep(&format!("{}\n[bugs]\nsession_ignores_lsn = true\n", stale_reads_scenario()), 1..=3);
    assert!(
        bad.iter().any(|s| s.violations.iter().any(|v| v.starts_with("session:"))),
        "{:?}",
        bad.iter().map(|s| &s.violations).collect::<Vec<_>>()
    );
}
