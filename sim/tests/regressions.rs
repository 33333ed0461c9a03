//! The reproductions of the bugs an adversarial review found (issue 8), in
//! `scenarios/regressions/`: each holds its invariants over a range of seeds
//! and has a reviewed trace; and each bug, re-planted with its test-only
//! `[bugs]` switch, is caught by a checker on the very same scenario.

use kvsim::{load, parse, run, summary_text, TraceLevel};
use std::path::{Path, PathBuf};

fn regressions() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios/regressions")
}

fn text_of(name: &str) -> String {
    std::fs::read_to_string(regressions().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn regression_traces_match_snapshots() {
    insta::glob!("../../scenarios/regressions", "*.toml", |path| {
        let sc = load(path).unwrap_or_else(|e| panic!("{e}"));
        let out = run(&sc, 42, TraceLevel::Ops);
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let text =
            format!("{}{}", out.trace, summary_text(&out.summary, &format!("scenarios/regressions/{name}")));
        assert!(out.summary.violations.is_empty(), "{name}: {:?}", out.summary.violations);
        insta::assert_snapshot!(text);
    });
}

/// Test builds are optimised (the workspace's dev profile), so every
/// regression runs 25 seeds in a few seconds. The wide sweep is
/// `kvsim sweep scenarios/regressions/*.toml --from 1 --to 1000`.
#[test]
fn every_regression_holds_for_seeds_1_to_25() {
    let last = 25;
    let mut paths: Vec<_> = std::fs::read_dir(regressions()).unwrap().map(|e| e.unwrap().path()).collect();
    paths.sort();
    assert!(paths.len() >= 8, "regressions found: {paths:?}");
    for p in paths.iter().filter(|p| p.extension().is_some_and(|e| e == "toml")) {
        let sc = load(p).unwrap_or_else(|e| panic!("{e}"));
        for seed in 1..=last {
            let out = run(&sc, seed, TraceLevel::None);
            assert!(
                out.summary.violations.is_empty(),
                "kvsim run {} --seed {seed}: {:?}",
                p.display(),
                out.summary.violations
            );
            assert_eq!(out.summary.lost_acked_writes, 0);
        }
    }
}

/// Runs `file` with `bug` switched on over `seeds`; returns the violations of
/// the failing seeds.
fn with_bug(file: &str, bug: &str, seeds: std::ops::RangeInclusive<u64>) -> Vec<String> {
    let text = format!("{}\n[bugs]\n{bug} = true\n", text_of(file));
    let sc = parse(&text, file, file).unwrap_or_else(|e| panic!("{e}"));
    seeds.flat_map(|seed| run(&sc, seed, TraceLevel::None).summary.violations).collect()
}

/// The bug, re-planted, is caught on at least one seed of a few, and with the
/// violation that names it.
fn caught(file: &str, bug: &str, seeds: std::ops::RangeInclusive<u64>, expect: &str) {
    let found = with_bug(file, bug, seeds);
    assert!(!found.is_empty(), "{file} with `{bug}`: no checker fired");
    assert!(
        found.iter().any(|v| v.contains(expect)),
        "{file} with `{bug}`: expected `{expect}` among {found:?}"
    );
}

#[test]
fn bug_a_epoch_promised_twice_is_caught() {
    caught("epoch-reused-after-restarts.toml", "epochs_promised_twice", 1..=3, "led twice");
    caught("epoch-reused-split-brain.toml", "epochs_promised_twice", 1..=3, "led twice");
}

#[test]
fn bug_b_cut_tail_trusted_is_caught() {
    caught("corrupt-last-record.toml", "cut_tail_trusted", 1..=12, "acknowledged write lost");
}

#[test]
fn bug_c_resync_forgets_promise_is_caught() {
    caught("resync-follows-deposed-leader.toml", "resync_forgets_promise", 1..=3, "acknowledged write lost");
}

#[test]
fn bug_d_unavailable_counts_answers_is_caught() {
    caught("unavailable-write-applied.toml", "unavailable_counts_answers", 1..=10, "linearizability");
}

#[test]
fn bug_e_leader_judged_by_pongs_is_caught() {
    caught("leader-cut-from-followers.toml", "leader_judged_by_pongs", 1..=2, "liveness");
}

#[test]
fn review_snapshot_over_confirmed_rows_is_caught() {
    caught("snapshot-crosses-progress.toml", "snapshot_over_confirmed", 1..=3, "different rows");
}

#[test]
fn review_resync_target_from_a_stale_append_is_caught() {
    caught("resync-stale-append.toml", "resync_target_from_any_append", 47..=50, "different rows");
}

/// The planted bugs as `kvsim fuzz` found them and `kvsim shrink` reduced
/// them (each file names the fuzz seed and profile); the seed the shrink
/// kept reproduces it.
#[test]
fn fuzz_found_bugs_are_caught_on_their_shrunk_scenarios() {
    caught("fuzz-epoch-reused-one-replica.toml", "epochs_promised_twice", 101..=101, "led twice");
    caught(
        "fuzz-corrupt-last-record-after-failover.toml",
        "cut_tail_trusted",
        108..=108,
        "acknowledged write lost",
    );
    caught(
        "fuzz-resync-meets-deposed-leader.toml",
        "resync_forgets_promise",
        61..=61,
        "acknowledged write lost",
    );
    caught(
        "fuzz-duplicated-unavailable-outage.toml",
        "unavailable_counts_answers",
        65..=65,
        "linearizability",
    );
    caught("fuzz-leader-of-five-cut-off.toml", "leader_judged_by_pongs", 1..=2, "liveness");
}
