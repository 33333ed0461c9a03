//! `kvsim fuzz` finding every planted bug within a stated number of seeds,
//! `kvsim shrink` reducing failures, `kvsim check-determinism`, and the
//! real code passing a first stretch of the swarm.
//!
//! Seeds name scenarios for good (`fuzz::generate` is deterministic), so
//! "found within N seeds" is exact: the test runs seeds 1, 2, ... and stops
//! at the first failure of the expected kind, which is seed N. Each count is
//! the first failing seed for the generator as it is; a change to the
//! generator moves them (the bound in each test leaves room). Tests run in
//! debug builds (about 50 ms of CPU per seed, two seeds at a time), so each
//! takes seconds.

use kvsim::fuzz::{self, Profile, Verdict};
use kvsim::shrink;
use std::path::Path;
use std::process::{Command, Output};

/// Seeds `1..=most` with `profile` and `bug` planted, two at a time, until
/// the first failure of one of the kinds `expect`; returns that seed.
fn first_failure(profile: &str, bug: &str, most: u64, expect: &[&str]) -> (u64, Verdict) {
    let mut p = Profile::parse(profile).unwrap_or_else(|e| panic!("{e}"));
    p.plant(bug).unwrap();
    let mut from = 1;
    while from <= most {
        let seeds: Vec<u64> = (from..=(from + 3).min(most)).collect();
        let mut found: Vec<(u64, Verdict)> = Vec::new();
        fuzz::parallel(
            &seeds,
            2,
            |&s| (s, fuzz::run_seed(s, &p).verdict),
            |(s, v)| {
                if v.kind().is_some_and(|k| expect.contains(&k)) {
                    found.push((s, v));
                }
            },
        );
        if let Some(first) = found.into_iter().min_by_key(|f| f.0) {
            return first;
        }
        from += 4;
    }
    panic!("`{bug}` not found in seeds 1..={most} (expected one of {expect:?})");
}

/// The default swarm.
const SWARM: &str = "";

#[test]
fn bug_a_epochs_promised_twice_is_found_by_the_default_swarm() {
    // First at seed 101 of the default swarm (18 in 1,000).
    let (seed, v) = first_failure(SWARM, "epochs_promised_twice", 150, &["led twice"]);
    eprintln!("bug A: seed {seed}: {}", v.first());
}

#[test]
fn bug_e_leader_judged_by_pongs_is_found_by_the_default_swarm() {
    // First at seed 3 (59 in 1,000): a leader cut from its followers for
    // good (the `lasting` kind) is never replaced, and writes stop.
    let (seed, v) = first_failure(SWARM, "leader_judged_by_pongs", 40, &["liveness"]);
    eprintln!("bug E: seed {seed}: {}", v.first());
}

#[test]
fn acknowledging_before_durable_is_found_by_the_default_swarm() {
    // First at seed 72 (12 in 1,000).
    let (seed, v) = first_failure(
        SWARM,
        "ack_before_durable",
        120,
        &["acknowledged write lost", "applied different rows", "session", "linearizability"],
    );
    eprintln!("ack_before_durable: seed {seed}: {}", v.first());
}

#[test]
fn promoting_without_enough_promises_is_found_by_the_default_swarm() {
    // `unsafe_failover`: first at seed 9 (159 in 1,000).
    let (seed, v) = first_failure(
        SWARM,
        "unsafe_failover",
        40,
        &["acknowledged write lost", "applied different rows", "liveness", "linearizability", "session"],
    );
    eprintln!("unsafe_failover: seed {seed}: {}", v.first());
}

#[test]
fn accepting_appends_from_an_older_epoch_is_found_by_the_default_swarm() {
    // `accepts_older_epochs`: first at seed 318 (a deposed leader keeps
    // replicating to a follower that promised its successor; the logs
    // diverge). With pauses and delays only, first at seed 67.
    let (seed, v) = first_failure(
        SWARM,
        "accepts_older_epochs",
        400,
        &[
            "acknowledged write lost",
            "applied different rows",
            "replicas differ",
            "linearizability",
            "session",
        ],
    );
    eprintln!("accepts_older_epochs: seed {seed}: {}", v.first());
}

/// Bug B wants a corrupted last record on a replica that confirmed rows,
/// then the loss of the leader: three replicas, crashes and corruption.
/// (The default swarm finds it too, first at seed 242, 3 in 1,000.)
const CRASH_AND_CORRUPT: &str = r#"
replicas = [3]
sync_acks = 1
faults = ["crash", "corrupt"]
always = ["crash", "corrupt"]
"#;

#[test]
fn bug_b_cut_tail_trusted_is_found_with_crashes_and_corruption() {
    // First at seed 108 (2 in 400).
    let (seed, v) = first_failure(CRASH_AND_CORRUPT, "cut_tail_trusted", 160, &["acknowledged write lost"]);
    eprintln!("bug B: seed {seed}: {}", v.first());
}

/// Bug C wants a deposed leader still believing it leads when a replica
/// that discarded its corrupt log meets it: partitions and corruption on
/// three replicas, writes only, short runs. Rare even so (2 in 10,000; the
/// default swarm found none in 1,000): the first is seed 61.
const PARTITION_AND_CORRUPT: &str = r#"
replicas = [3]
sync_acks = 1
faults = ["crash", "corrupt", "partition"]
always = ["corrupt", "partition"]
quiet_ms = 1000
[scenario.workload]
mix = { set = 100, get = 0, del = 0 }
groups = [ { clients = 2, think_ms = 5 } ]
"#;

#[test]
fn bug_c_resync_forgets_promise_is_found_with_partitions_and_corruption() {
    let (seed, v) = first_failure(
        PARTITION_AND_CORRUPT,
        "resync_forgets_promise",
        100,
        &["acknowledged write lost", "applied different rows", "led twice"],
    );
    eprintln!("bug C: seed {seed}: {}", v.first());
}

/// Bug D wants two of three replicas down longer than a client's 2 s
/// deadline, duplicated answers, and leader reads of the same keys: long
/// runs with crashes, half the messages duplicated. First at seed 65 (2 in
/// 300; the default swarm found none in 1,000).
const LONG_OUTAGES_DUPLICATED: &str = r#"
replicas = [3]
sync_acks = 1
faults = ["crash"]
always = ["crash"]
duration_ms = [6000, 8000]
quiet_ms = 1000
[scenario.cluster]
request_timeout_ms = 300
[scenario.network]
duplicate_probability = 0.5
[scenario.workload]
keys = 2
mix = { set = 50, get = 50, del = 0 }
groups = [ { clients = 3, read = "leader", think_ms = 20 } ]
"#;

#[test]
fn bug_d_unavailable_counts_answers_is_found_with_long_outages_and_duplicates() {
    let (seed, v) = first_failure(
        LONG_OUTAGES_DUPLICATED,
        "unavailable_counts_answers",
        100,
        &["linearizability", "read a value never written"],
    );
    eprintln!("bug D: seed {seed}: {}", v.first());
}

// ---- the CLI ----

fn kvsim(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kvsim")).args(args).output().expect("kvsim runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn the_real_code_passes_a_first_stretch_of_the_swarm() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("failures");
    let out_s = out.to_str().unwrap();
    let run = kvsim(&["fuzz", "--seeds", "1..24", "--jobs", "2", "--out", out_s, "--json"]);
    let stdout = text(&run.stdout);
    assert_eq!(run.status.code(), Some(0), "{stdout}{}", text(&run.stderr));
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["runs"], 24);
    assert_eq!(report["passed"], 24);
    assert_eq!(report["failures"].as_array().unwrap().len(), 0);
    assert!(!out.exists(), "nothing written when nothing fails");
}

#[test]
fn a_failing_seed_is_written_out_and_replays_exactly_then_shrinks() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("failures");
    let out_s = out.to_str().unwrap();
    // `unsafe_failover` fails at seed 9 (see above).
    let run = kvsim(&["fuzz", "--seeds", "8..9", "--bug", "unsafe_failover", "--out", out_s]);
    let stdout = text(&run.stdout);
    assert_eq!(run.status.code(), Some(1), "{stdout}{}", text(&run.stderr));
    let file = out.join("seed-9.toml");
    let file_s = file.to_str().unwrap();
    let line = stdout.lines().find(|l| l.starts_with("FAIL seed 9 [")).unwrap_or_else(|| panic!("{stdout}"));
    assert!(line.contains(&format!("kvsim run {file_s} --seed 9")), "{line}");
    assert!(stdout.contains("2 seeds: 1 passed, 1 failed"), "{stdout}");
    let kind = line.split('[').nth(1).unwrap().split(']').next().unwrap().to_string();

    // The file and the seed replay it: the same kind of violation.
    let replay = kvsim(&["run", file_s, "--seed", "9", "--json"]);
    assert_eq!(replay.status.code(), Some(1));
    let summary: serde_json::Value = serde_json::from_str(&text(&replay.stdout)).unwrap();
    let violations: Vec<String> =
        summary["violations"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect();
    assert!(violations.iter().any(|v| fuzz::violation_kind(v) == kind), "{kind}: {violations:?}");

    // Shrunk, it still fails the same way, with no more faults.
    let shrunk = dir.path().join("small.toml");
    let shrunk_s = shrunk.to_str().unwrap();
    let run = kvsim(&["shrink", file_s, "--seed", "9", "--out", shrunk_s, "--max-runs", "120"]);
    assert_eq!(run.status.code(), Some(0), "{}{}", text(&run.stdout), text(&run.stderr));
    assert!(text(&run.stdout).contains(&format!("reproduce: kvsim run {shrunk_s} --seed 9")));
    let small = kvsim::load(&shrunk).unwrap();
    let big = kvsim::load(&file).unwrap();
    assert!(small.faults.len() <= big.faults.len());
    let written = std::fs::read_to_string(&shrunk).unwrap();
    assert!(written.starts_with("# Shrunk by `kvsim shrink` from "), "{written}");
    let (v, _) = fuzz::check(&small, 9);
    assert_eq!(v.kind(), Some(kind.as_str()), "{v:?}");

    // A passing run has nothing to shrink.
    let basic = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios/basic.toml");
    let run = kvsim(&["shrink", basic.to_str().unwrap(), "--seed", "1", "--out", shrunk_s]);
    assert_eq!(run.status.code(), Some(2));
    assert!(text(&run.stderr).contains("nothing to shrink"), "{}", text(&run.stderr));
}

#[test]
fn check_determinism_compares_two_runs_and_one_with_ties_reversed() {
    let failover = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios/failover.toml");
    let run = kvsim(&["check-determinism", failover.to_str().unwrap(), "--seed", "3"]);
    let stdout = text(&run.stdout);
    assert_eq!(run.status.code(), Some(0), "{stdout}{}", text(&run.stderr));
    assert!(stdout.starts_with("deterministic: two runs with seed 3 match ("), "{stdout}");
    assert!(stdout.contains("ties reversed: no violation"), "{stdout}");

    // The library's own report, on a fuzz scenario.
    let sc = fuzz::generate(5, &Profile::default());
    let d = fuzz::check_determinism(&sc, 5);
    assert!(d.ok(), "{d:?}");
    assert!(d.lines > 100);
}

#[test]
fn first_difference_names_the_line_time_and_node() {
    let a = "   1.000ms r1   ** leader of e1\n   2.000ms r2   <- r1 Append\n";
    let b = "   1.000ms r1   ** leader of e1\n   2.000ms r3   <- r1 Append\n";
    let d = fuzz::first_difference(a, b).unwrap();
    assert_eq!((d.line, d.time.as_str(), d.node.as_str()), (2, "2.000ms", "r2"));
    assert_eq!(d.second.as_deref(), Some("   2.000ms r3   <- r1 Append"));
    assert!(fuzz::first_difference(a, a).is_none());
    let d = fuzz::first_difference(a, "   1.000ms r1   ** leader of e1\n").unwrap();
    assert_eq!((d.line, d.second), (2, None));
}

#[test]
fn the_shrinker_never_makes_the_end_worse() {
    // A scenario ending healthy stays so: its final heal cannot go.
    let sc = fuzz::generate(3, &Profile::default());
    let end = shrink::end_state(&sc);
    for (what, c) in shrink::candidates(&sc) {
        if !shrink::end_state(&c).within(&end) {
            assert!(what.starts_with("removed"), "{what}");
        }
    }
}
