//! kvsim: a seeded discrete-event simulator that runs kvstore's real state
//! machines under injected delays, drops, duplicates, partitions, crashes and
//! disk latency, and checks invariants at the end of each run.

pub mod bench;
pub mod check;
// Its search memo is a HashMap with a fixed (not randomly seeded) hasher,
// used only for membership: nothing iterates it into output. Its tests time
// large histories to print the figure (never asserted).
#[allow(clippy::disallowed_types, clippy::disallowed_methods)]
pub mod check_lin;
pub mod disk;
pub mod fuzz;
pub mod html;
pub mod model;
pub mod replay;
pub mod replay_view;
pub mod scenario;
pub mod shrink;
pub mod sim;
pub mod timeline;

pub use scenario::{load, parse, Scenario, ScenarioError};
pub use sim::{Outcome, Sim, Summary, TraceLevel};

/// Runs a scenario with one seed.
/// A trace opens with what the scenario is about (its file's leading
/// comment, each line marked `#`).
pub fn run(sc: &Scenario, seed: u64, level: TraceLevel) -> Outcome {
    let out = Sim::new(sc, seed, level).run(seed);
    with_about(sc, level, out)
}

/// [`run`], also recording the run for the HTML view
/// (`Outcome::timeline`, see [`html::page`]); `path` names the scenario
/// file in the page's summary, as in `kvsim run`'s. The trace is the same.
pub fn run_with_timeline(sc: &Scenario, seed: u64, level: TraceLevel, path: &str) -> Outcome {
    let mut out = with_about(sc, level, Sim::new(sc, seed, level).with_timeline().run(seed));
    if let Some(t) = &mut out.timeline {
        t.summary = summary_text(&out.summary, path);
    }
    out
}

fn with_about(sc: &Scenario, level: TraceLevel, mut out: Outcome) -> Outcome {
    if level > TraceLevel::None && !sc.about.is_empty() {
        let about: String = sc
            .about
            .lines()
            .map(|l| if l.is_empty() { "#\n".to_string() } else { format!("# {l}\n") })
            .collect();
        out.trace.insert_str(0, &about);
    }
    out
}

/// The human-readable closing summary (deterministic: no wall-clock figures).
pub fn summary_text(s: &Summary, path: &str) -> String {
    use std::fmt::Write;
    let mut t = String::new();
    let _ = writeln!(t, "-- summary: {} seed={}", s.scenario, s.seed);
    let _ = writeln!(
        t,
        "simulated {:.3}ms in {} events; {} messages ({} dropped)",
        s.sim_ms, s.events, s.messages_sent, s.messages_dropped
    );
    let _ = writeln!(
        t,
        "ops: {} ok, {} failed, {} ambiguous, {} unfinished; acknowledged writes {}, lost {}",
        s.ops_ok, s.ops_failed, s.ops_ambiguous, s.ops_unfinished, s.acked_writes, s.lost_acked_writes
    );
    let fo = s.failover_ms_max.map(|m| format!("{m:.3}ms")).unwrap_or_else(|| "-".into());
    let _ = writeln!(
        t,
        "failovers: {}, slowest {fo}; stalest `any` read {} lsn / {:.3}ms behind",
        s.failovers, s.stale_reads_max_lsn, s.stale_reads_max_ms
    );
    if s.violations.is_empty() && s.inconclusive.is_empty() {
        let _ = writeln!(t, "invariants: all hold");
    }
    if !s.violations.is_empty() {
        let _ = writeln!(t, "VIOLATIONS ({}):", s.violations.len());
        for v in &s.violations {
            let _ = writeln!(t, "  - {v}");
        }
    }
    if !s.inconclusive.is_empty() {
        // Not a pass: these checks could not decide within their budget.
        let _ = writeln!(t, "INCONCLUSIVE ({}):", s.inconclusive.len());
        for v in &s.inconclusive {
            let _ = writeln!(t, "  - {v}");
        }
    }
    if !s.violations.is_empty() || !s.inconclusive.is_empty() {
        let _ = writeln!(t, "reproduce: kvsim run {path} --seed {}", s.seed);
    }
    t
}
