//! Each checker, shown catching a real violation: deliberately unsafe
//! configurations and test-only bugs must be reported, with the reproduce
//! command, while the same scenario without them is clean.

use kvsim::check::{run_all, Input, Record, Report};
use kvsim::{parse, run, Summary, TraceLevel};
use kvstore::machine::Snapshot;
use kvstore::replica::Replica;
use kvstore::{
    ClientId, ClusterConfig, Completion, Epoch, LogPos, Lsn, Op, ReadMode, ReplicaId, Reply, RequestId, Row,
    RowBody, Stored, Time,
};
use std::collections::{BTreeMap, BTreeSet};

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

// ---------------------------------------------------------------------------
// Checkers fed by hand: inputs no scenario produces on demand.

/// Runs every checker on `history` and `replicas` alone: nothing
/// unfinished, no disks, no liveness bound. With no replica, nothing holds
/// the acknowledged writes: that checker's reports are left out.
fn check(history: &[Record], replicas: &[&Replica]) -> Report {
    let written: BTreeSet<u64> = history
        .iter()
        .filter_map(|r| match &r.c.op {
            Op::Set { key, value } => Some(kvsim::check::pair_hash(key, value)),
            _ => None,
        })
        .collect();
    let mut report = run_all(&Input {
        history,
        written: &written,
        replicas,
        disks: &[],
        check_convergence: !replicas.is_empty(),
        liveness_us: 0,
        last_fault_at: Time::ZERO,
        unfinished: &[],
        end: Time(1_000_000),
        unfinished_writes: &[],
        applied_rows: &[],
    });
    if replicas.is_empty() {
        let lost = |v: &String| v.starts_with("acknowledged write lost") || v.starts_with("... and");
        report.violations.retain(|v| !lost(v));
    }
    report
}

fn put(epoch: u64, lsn: u64, key: &str, value: &str, client: u64, seq: u64) -> Row {
    Row {
        epoch: Epoch(epoch),
        lsn: Lsn(lsn),
        body: RowBody::Put {
            key: key.into(),
            value: Some(value.into()),
            req: RequestId { client: ClientId(client), seq },
        },
    }
}

fn noop(epoch: u64, lsn: u64) -> Row {
    Row { epoch: Epoch(epoch), lsn: Lsn(lsn), body: RowBody::Noop }
}

/// A replica restarted from a snapshot through `base` (holding k=a, and
/// client 1's write #1 at lsn 2) and the rows after it: it has applied
/// through `base` only.
fn replica(id: u8, base: LogPos, rows: Vec<Row>, sessions: &[(u64, u64, u64)]) -> Replica {
    let snapshot = Snapshot {
        promised: base.epoch,
        last: base,
        kv: BTreeMap::from([("k".to_owned(), "a".to_owned())]),
        sessions: sessions.iter().map(|&(c, seq, lsn)| (ClientId(c), (seq, Lsn(lsn)))).collect(),
    };
    let stored = Stored { promised: Epoch(2), snapshot: Some(snapshot), rows };
    Replica::recover(ReplicaId(id), ClusterConfig::new(3, 1), stored)
}

const AT_2: LogPos = LogPos { epoch: Epoch(1), lsn: Lsn(2) };

fn convergence_violations(replicas: &[&Replica]) -> Vec<String> {
    let report = check(&[], replicas);
    assert_eq!(report.violations[0], "no leader at the end of the quiet period");
    report.violations[1..].to_vec()
}

#[test]
fn replicas_holding_different_rows_at_one_position_are_reported() {
    let rows = || vec![noop(2, 3), put(2, 4, "k", "b", 2, 1)];
    let r1 = replica(1, AT_2, rows(), &[(1, 1, 2)]);
    let r2 = replica(2, AT_2, rows(), &[(1, 1, 2)]);
    // Same applied LSN and data, and the same rows: nothing to report.
    assert_eq!(convergence_violations(&[&r1, &r2]), Vec::<String>::new());

    // One row differs (same epoch, other value); applied LSN and data agree.
    let r3 = replica(3, AT_2, vec![noop(2, 3), put(2, 4, "k", "c", 2, 1)], &[(1, 1, 2)]);
    assert_eq!((r3.applied(), r3.data()), (r1.applied(), r1.data()));
    assert_eq!(
        convergence_violations(&[&r1, &r2, &r3]),
        [
            "replicas differ after the quiet period: r1 and r3 hold different rows at lsn 4 (above \
             both commit points, 2 and 2): r1 has e2 set k=b (c2 #1), r3 has e2 set k=c (c2 #1)",
            "replicas differ after the quiet period: r2 and r3 hold different rows at lsn 4 (above \
             both commit points, 2 and 2): r2 has e2 set k=b (c2 #1), r3 has e2 set k=c (c2 #1)",
        ]
    );

    // Rows of another epoch at the same position; one log longer (not a
    // difference on its own).
    let r4 = replica(2, AT_2, vec![noop(3, 3)], &[(1, 1, 2)]);
    assert_eq!(
        convergence_violations(&[&r1, &r4]),
        ["replicas differ after the quiet period: r1 and r2 hold different rows at lsn 3 (above both \
          commit points, 2 and 2): r1 has e2 noop, r2 has e3 noop"]
    );
}

#[test]
fn replicas_with_different_at_most_once_tables_are_reported() {
    let r1 = replica(1, AT_2, vec![], &[(1, 1, 2)]);
    let r2 = replica(2, AT_2, vec![], &[(1, 1, 1)]);
    let r3 = replica(3, AT_2, vec![], &[(1, 1, 2), (4, 7, 1)]);
    assert_eq!(
        convergence_violations(&[&r1, &r2, &r3]),
        [
            "replicas differ after the quiet period: at-most-once tables differ (1 and 1 clients): for \
             c1, r1 has #1 applied at lsn 2, r2 has #1 applied at lsn 1",
            "replicas differ after the quiet period: at-most-once tables differ (1 and 2 clients): for \
             c4, r1 has no entry, r3 has #7 applied at lsn 1",
        ]
    );
}

#[test]
fn a_compaction_point_the_other_replica_disagrees_with_is_reported() {
    // r2 compacted through lsn 3 of epoch 2; r1 holds lsn 3 from epoch 1.
    let r1 = replica(1, AT_2, vec![noop(1, 3)], &[]);
    let r2 = replica(2, LogPos { epoch: Epoch(2), lsn: Lsn(3) }, vec![], &[]);
    let found = convergence_violations(&[&r1, &r2]);
    assert!(
        found.contains(
            &"replicas differ after the quiet period: r2 compacted its log through lsn 3 of e2, but r1 \
              holds e1 noop there"
                .to_owned()
        ),
        "{found:?}"
    );
}

/// A finished operation of `client`, sent (and first queued) when given.
fn done(
    client: u64,
    read: ReadMode,
    op: Op,
    times: (u64, u64, u64),
    value: Option<&str>,
    lsn: u64,
) -> Record {
    let (invoked, sent, completed) = times;
    Record {
        client,
        read,
        c: Completion {
            seq: 0,
            op,
            invoked: Time(invoked),
            sent: Time(sent),
            completed: Time(completed),
            result: Ok(Reply { value: value.map(str::to_owned), lsn: Lsn(lsn) }),
            attempts: 1,
        },
    }
}

fn set(key: &str, value: &str) -> Op {
    Op::Set { key: key.into(), value: value.into() }
}

fn get(key: &str) -> Op {
    Op::Get { key: key.into() }
}

/// An open-loop client queues three operations at once: two writes of x,
/// then a read of x. The client sends each a microsecond after the previous
/// one is answered, so the read is sent after the second write completed,
/// and must see it. It gets the first write's value instead, from a replica
/// that claims an LSN past both writes.
fn open_loop_stale_read(read: ReadMode) -> Vec<Record> {
    vec![
        done(1, read, set("x", "old"), (0, 0, 10), None, 3),
        done(1, read, set("x", "new"), (0, 11, 20), None, 5),
        done(1, read, get("x"), (0, 21, 30), Some("old"), 6),
    ]
}

#[test]
fn session_checker_rejects_an_old_value_behind_a_correct_looking_lsn() {
    let report = check(&open_loop_stale_read(ReadMode::Session), &[]);
    assert_eq!(
        report.violations,
        ["session: client 1: read-your-writes violated on key \"x\": read sent at 21us at lsn 6 returned \
          Some(\"old\") (written at lsn 3), older than the client's own write of Some(\"new\") that \
          completed at 20us with lsn 5"]
    );
    // Judged from when the read was queued (0), it would overlap both
    // writes and bind to neither.
    let mut queued_view = open_loop_stale_read(ReadMode::Session);
    for r in &mut queued_view {
        r.c.sent = r.c.invoked;
    }
    assert_eq!(check(&queued_view, &[]).violations, Vec::<String>::new());
    // A later write by someone else explains the read.
    let mut explained = open_loop_stale_read(ReadMode::Session);
    explained[0].c.op = set("x", "older");
    explained.push(done(2, ReadMode::Any, set("x", "old"), (12, 12, 18), None, 6));
    assert_eq!(check(&explained, &[]).violations, Vec::<String>::new());
}

#[test]
fn linearizability_checker_starts_operations_when_they_were_sent() {
    let report = check(&open_loop_stale_read(ReadMode::Leader), &[]);
    assert_eq!(report.violations.len(), 1, "{:?}", report.violations);
    assert!(report.violations[0].starts_with("linearizability: key \"x\" is not linearizable"));
    let mut queued_view = open_loop_stale_read(ReadMode::Leader);
    for r in &mut queued_view {
        r.c.sent = r.c.invoked;
    }
    assert_eq!(check(&queued_view, &[]).violations, Vec::<String>::new());
}

#[test]
fn a_linearizability_check_out_of_budget_is_inconclusive_not_a_pass() {
    // 48 writes and 24 `leader` reads of one key, all overlapping, then a
    // write and a read of a value it overwrote: deciding it takes a search
    // exponential in the overlap, which runs out of memory budget.
    let mut history = Vec::new();
    for i in 0..48u64 {
        history.push(done(
            i + 1,
            ReadMode::Leader,
            set("k", &format!("v{i}")),
            (i, i, 10_000 + i),
            None,
            i + 1,
        ));
    }
    for j in 0..24u64 {
        let value = format!("v{}", j % 48);
        history.push(done(j + 49, ReadMode::Leader, get("k"), (j, j, 10_000 + j), Some(&value), 48));
    }
    history.push(done(1, ReadMode::Leader, set("k", "last"), (20_000, 20_000, 20_001), None, 49));
    history.push(done(2, ReadMode::Leader, get("k"), (20_002, 20_002, 20_003), Some("v0"), 49));
    let report = check(&history, &[]);
    assert_eq!(report.violations, Vec::<String>::new());
    assert_eq!(report.inconclusive.len(), 1, "{:?}", report.inconclusive);
    assert!(
        report.inconclusive[0]
            .starts_with("linearizability: key \"k\" is undecided: the search ran out of its memory budget"),
        "{:?}",
        report.inconclusive
    );
}
