//! Exhaustive bounded model checking of the real machines (`kvsim::model`):
//! breadth first over every interleaving within the bounds, checking after
//! every action that an epoch has one leader, that committed rows agree,
//! that acknowledged writes are committed where they were acknowledged, and
//! that client results are linearizable.
//!
//! The default bounds are sized for `cargo test --workspace` in a debug
//! build (a few seconds each); `larger_bounds_hold` is the bigger run:
//! `cargo test --release -p kvsim --test model -- --ignored --nocapture`.

use kvsim::model::{check, Bounds, Origin, Report};
use kvstore::Op;

fn set(key: &str, value: &str) -> Op {
    Op::Set { key: key.into(), value: value.into() }
}

fn get(key: &str) -> Op {
    Op::Get { key: key.into() }
}

fn run(name: &str, b: &Bounds) -> Report {
    eprintln!("{name}: {b}");
    let r = check(b);
    eprint!("{name}: {r}");
    r
}

/// No violation, and every path within the bounds explored.
fn holds(name: &str, b: &Bounds) -> Report {
    let r = run(name, b);
    if let Some(v) = &r.violation {
        panic!("{name}: {}\n{}", v.violation, v.trace.join("\n"));
    }
    assert!(!r.truncated, "{name}: stopped at the state cap");
    assert!(r.exhausted || r.depth == b.depth, "{name}: depth {} of {}", r.depth, b.depth);
    r
}

#[test]
fn election_under_every_fault_holds() {
    let b = Bounds::election();
    let r = holds("election", &b);
    assert!(r.states > 10_000, "{} states: the bounds explore nothing", r.states);
}

#[test]
fn every_order_of_the_workload_is_linearizable() {
    // Two writes of one key from two clients and a leader read, from a
    // cluster at rest: every delivery order, to the end of every path.
    let r = holds("workload", &Bounds::workload());
    assert!(r.exhausted, "the workload's state space should be exhausted");
}

#[test]
fn a_write_under_every_fault_holds() {
    holds("write-faults", &Bounds::write_faults());
}

#[test]
fn two_writes_under_every_fault_hold() {
    holds("writes-faults", &Bounds::writes_faults());
}

/// Bug A (`[bugs] epochs_promised_twice`): a restarted balancer that heard
/// nothing promotes e1 again, r2 and r3 (promised e1, no leader yet)
/// promise it again to the new ballot, and r2 leads e1 beside r1.
#[test]
fn bug_a_is_found_with_a_shortest_path() {
    let b = Bounds::bug_a();
    let r = run("bug-a", &b);
    let v = r.violation.as_ref().expect("bug A re-planted: the model must find two leaders of e1");
    assert!(v.violation.contains("e1 led twice"), "{}", v.violation);
    assert_eq!(v.depth, 10, "the shortest path to bug A from r1's election is 10 actions");
    assert_eq!(r.depth, 10, "every shorter path was explored first");
    let text = r.to_string();
    for needle in [
        "CRASH + restart as incarnation b0002",
        "lb   -> r2   Prepare e1 b0002",
        "r2   -> lb   Promise e1 b0002",
        "lb   -> r2   Promote e1 b0002",
        "r2 ** leader of e1",
        "!!! e1 led twice: by r1 (life 1) and by r2 (life 1)",
    ] {
        assert!(text.contains(needle), "trace lacks `{needle}`:\n{text}");
    }
    // The trace is the path: its numbered lines are the 10 actions.
    let numbered = v.trace.iter().filter(|l| l.trim_start().split('.').next().is_some_and(is_number)).count();
    assert_eq!(numbered, 10, "{text}");
}

fn is_number(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_digit())
}

/// The same bounds without the bug: the replicas refuse the second
/// ballot's Prepare for e1, and the balancer moves to e2.
#[test]
fn bug_a_bounds_hold_without_the_bug() {
    let mut b = Bounds::bug_a();
    b.cfg.bugs.epochs_promised_twice = false;
    holds("bug-a without the bug", &b);
}

/// The linearizability check on the real machines' answers: `leader` reads
/// sent round robin (`[bugs] leader_reads_anywhere`) read a follower that
/// has not applied an acknowledged write yet.
#[test]
fn stale_leader_reads_are_found() {
    let mut b = Bounds::workload();
    b.cfg.bugs.leader_reads_anywhere = true;
    // Round robin starts at r1, the leader: the second read goes to r2.
    b.clients.truncate(1);
    b.clients[0].ops = vec![set("x", "a"), get("x"), get("x")];
    let r = run("c1 writes and reads twice, leader_reads_anywhere", &b);
    let v = r.violation.as_ref().expect("a stale `leader` read must be found");
    assert!(v.violation.contains("not linearizable on key x"), "{}", v.violation);
    let text = r.to_string();
    assert!(text.contains("c1 done get x -> (nil)"), "{text}");
}

/// Figures at larger bounds (release build: minutes, a few GB).
#[test]
#[ignore]
fn larger_bounds_hold() {
    let big = |mut b: Bounds, depth: usize| {
        b.depth = depth;
        b.max_states = 40_000_000;
        b
    };
    holds("election, depth 10", &big(Bounds::election(), 10));
    holds("write-faults, depth 10", &big(Bounds::write_faults(), 10));
    holds("writes-faults, depth 8", &big(Bounds::writes_faults(), 8));
    let mut a = big(Bounds::bug_a(), 10);
    a.cfg.bugs.epochs_promised_twice = false;
    a.max_duplicates = 1;
    a.max_replica_crashes = 1;
    holds("bug-a bounds with a duplicate and a crash, without the bug", &a);
    a.cfg.bugs.epochs_promised_twice = true;
    let r = run("bug-a bounds with a duplicate and a crash", &a);
    assert_eq!(r.violation.map(|v| v.depth), Some(10), "bug A's shortest path is the same");
}

/// Bug A's other shape, from a cluster at rest: r1 and r2 restart
/// (promised e1, following no one), a restarted balancer that heard nothing
/// promotes e1 again, and r1's second life leads the epoch its first life
/// led (the leader-bounce case: a restart must never lead its old epoch).
#[test]
fn bug_a_is_found_after_restarts() {
    let mut b = Bounds::bug_a();
    b.origin = Origin::Settled;
    b.depth = 12;
    b.max_replica_crashes = 2;
    let r = run("bug-a from rest, two replica crashes", &b);
    let v = r.violation.as_ref().expect("bug A re-planted: the model must find e1 led twice");
    assert!(v.violation.contains("e1 led twice: by r1 (life 1) and by r1 (life 2)"), "{}", v.violation);
    assert_eq!(v.depth, 12);
    b.cfg.bugs.epochs_promised_twice = false;
    holds("the same bounds without the bug", &b);
}
