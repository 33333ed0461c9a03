//! Every scenario's trace at a fixed seed is a reviewed snapshot, and every
//! scenario holds its invariants over a range of seeds.

use kvsim::{load, run, summary_text, TraceLevel};

/// The seed snapshots are taken with.
const SEED: u64 = 42;

#[test]
fn scenario_traces_match_snapshots() {
    insta::glob!("../../scenarios", "*.toml", |path| {
        let sc = load(path).unwrap_or_else(|e| panic!("{e}"));
        let out = run(&sc, SEED, TraceLevel::Messages);
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let text = format!("{}{}", out.trace, summary_text(&out.summary, &format!("scenarios/{name}")));
        assert!(out.summary.violations.is_empty(), "{name}: {:?}", out.summary.violations);
        insta::assert_snapshot!(text);
    });
}

#[test]
fn every_scenario_holds_for_seeds_1_to_20() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios");
    let mut paths: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    paths.sort();
    assert!(paths.len() >= 4, "scenarios found: {paths:?}");
    for p in paths.iter().filter(|p| p.extension().is_some_and(|e| e == "toml")) {
        let sc = load(p).unwrap_or_else(|e| panic!("{e}"));
        for seed in 1..=20 {
            let out = run(&sc, seed, TraceLevel::None);
            assert!(
                out.summary.violations.is_empty(),
                "kvsim run {} --seed {seed}: {:?}",
                p.display(),
                out.summary.violations
            );
            assert_eq!(out.summary.lost_acked_writes, 0);
            assert!(out.summary.ops_ok > 0, "{}: no operation succeeded", p.display());
        }
    }
}

#[test]
fn same_seed_same_bytes_other_seed_other_trace() {
    for name in ["basic.toml", "lossy.toml", "replication.toml"] {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios").join(name);
        let sc = load(&p).unwrap();
        let a = run(&sc, 7, TraceLevel::All);
        let b = run(&sc, 7, TraceLevel::All);
        let c = run(&sc, 8, TraceLevel::All);
        assert_eq!(a.trace, b.trace, "{name}: same seed, different trace");
        assert_eq!(summary_text(&a.summary, name), summary_text(&b.summary, name));
        assert_ne!(a.trace, c.trace, "{name}: seeds 7 and 8 gave the same trace");
    }
}

/// The README's example trace is what `kvsim run scenarios/failover.toml
/// --seed 42` prints: each of its lines, in order (`...` marks lines left out).
#[test]
fn readme_example_trace_matches_seed_42() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let intro = "Here is `./target/release/kvsim run scenarios/failover.toml\n--seed 42`";
    let at = readme.find(intro).expect("the README introduces its example trace");
    let block = &readme[at..];
    let start = block.find("```text\n").expect("a text block follows") + "```text\n".len();
    let excerpt = &block[start..start + block[start..].find("```").unwrap()];
    let sc = load(&root.join("scenarios/failover.toml")).unwrap();
    let trace = run(&sc, SEED, TraceLevel::Messages).trace;
    let mut lines = trace.lines();
    assert_eq!(excerpt.lines().next(), trace.lines().next(), "the trace opens with the scenario's comment");
    for want in excerpt.lines().filter(|l| *l != "...") {
        assert!(lines.any(|l| l == want), "README line not in the trace (in order): {want}");
    }
}
