//! `kvsim bench`: how fast the simulator runs. Figures, not assertions.

use crate::{parse, run, TraceLevel};
use serde::Serialize;

#[derive(Serialize)]
pub struct BenchReport {
    pub runs: Vec<BenchRun>,
}

#[derive(Serialize)]
pub struct BenchRun {
    pub name: String,
    pub sim_s: f64,
    pub wall_s: f64,
    pub events: u64,
    pub events_per_s: f64,
    pub speedup: f64,
    pub ops: u64,
}

/// Steady state, closed loop: 3 replicas, 8 clients.
const STEADY: &str = r#"
[cluster]
replicas = 3
[workload]
duration_ms = 20000
keys = 1000
clients = 8
[run]
quiet_ms = 500
"#;

/// 60 simulated seconds at 1,000 ops/s (open loop, 10 clients at 100/s).
const SIXTY: &str = r#"
[cluster]
replicas = 3
[workload]
duration_ms = 60000
keys = 1000
[[workload.groups]]
clients = 10
rate_per_s = 100
[run]
quiet_ms = 500
"#;

pub fn run_all() -> BenchReport {
    let mut runs = Vec::new();
    for (name, text) in [("steady-3r-8c-closed", STEADY), ("60s-1000ops", SIXTY)] {
        let sc = parse(text, name, name).expect("built-in scenario parses");
        let out = run(&sc, 1, TraceLevel::None);
        let s = out.summary;
        let wall_s = s.wall_ms / 1000.0;
        runs.push(BenchRun {
            name: name.to_string(),
            sim_s: s.sim_ms / 1000.0,
            wall_s,
            events: s.events,
            events_per_s: s.events as f64 / wall_s.max(1e-9),
            speedup: (s.sim_ms / 1000.0) / wall_s.max(1e-9),
            ops: s.ops_ok + s.ops_failed + s.ops_ambiguous,
        });
    }
    BenchReport { runs }
}

pub fn text(r: &BenchReport) -> String {
    let mut t = String::from(
        "scenario                 sim s   wall s      events     events/s   speed-up      ops\n",
    );
    for b in &r.runs {
        t += &format!(
            "{:<22} {:>7.1} {:>8.3} {:>11} {:>12.0} {:>9.0}x {:>8}\n",
            b.name, b.sim_s, b.wall_s, b.events, b.events_per_s, b.speedup, b.ops
        );
    }
    t
}
