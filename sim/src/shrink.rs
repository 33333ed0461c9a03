//! `kvsim shrink`: reduces a failing run, keeping its seed, while it still
//! fails with the same kind of violation ([`crate::fuzz::violation_kind`]:
//! "acknowledged write lost", "led twice", "linearizability", "liveness",
//! "replicas differ", ...; not the exact text, which changes with every
//! cut). It tries, in order, cheap big cuts before small ones: dropping
//! faults (half of them, then one by one), client groups, clients, keys,
//! workload time and replicas (only when no fault names the replica
//! removed); switching off drops, duplicates, clock drift, torn writes,
//! slow disks and odd delays, small logs, large values and hot keys;
//! putting timeouts back to their defaults; and moving fault times to
//! round numbers. Every accepted cut starts another pass, to a fixpoint or
//! the bound on runs.
//!
//! Three things never get worse, so a shrunk failure is never one the
//! original was not: what is still wrong after the last fault (partitions
//! not healed, nodes down, pauses not over, random loss not stopped: see
//! [`EndState`]) is at most what was wrong in the original, so a liveness
//! failure cannot shrink into a partition never healed;
//! the model limits hold ([`crate::fuzz::within_model`]: at most
//! `sync_acks` corrupted replicas); and timeouts that suited the delays,
//! disks and clocks still do ([`crate::fuzz::timing_valid`]), so a slow
//! link cannot shrink into a failure detector that never settles.

use crate::fuzz::{check, timing_valid, within_model, Verdict};
use crate::scenario::{Action, Clock, Disk, Distribution, Node, Scenario};
use kvstore::config::Timing;
use std::collections::{BTreeMap, BTreeSet};

/// The result of a shrink.
#[derive(Clone, Debug)]
pub struct Shrunk {
    pub scenario: Scenario,
    /// The shrunk scenario's verdict (same kind as the original's).
    pub verdict: Verdict,
    /// Runs made.
    pub runs: usize,
    /// The cuts that were kept, in order.
    pub steps: Vec<String>,
}

/// Shrinks `sc`, which fails with `target` under `seed`, in at most
/// `max_runs` runs. `progress` hears of every cut kept.
pub fn shrink(
    sc: &Scenario,
    seed: u64,
    target: &Verdict,
    max_runs: usize,
    mut progress: impl FnMut(&str, usize),
) -> Shrunk {
    let kind = target.kind().unwrap_or("passed").to_string();
    let end = end_state(sc);
    let keep_timing = timing_valid(sc);
    let planted_unsafe = sc.cluster.unsafe_failover;
    let mut current = sc.clone();
    let mut verdict = target.clone();
    let mut runs = 0;
    let mut steps = Vec::new();
    let mut tried: BTreeSet<String> = BTreeSet::new();
    'passes: loop {
        let mut accepted = false;
        let mut i = 0;
        loop {
            let cands = candidates(&current);
            let Some((what, cand)) = cands.into_iter().nth(i) else { break };
            i += 1;
            if cand == current
                || !within_model(&cand, planted_unsafe)
                || !end_state(&cand).within(&end)
                || (keep_timing && !timing_valid(&cand))
            {
                continue;
            }
            // A candidate already run (and refused) is not run again.
            let key = cand.to_toml();
            if !tried.insert(key) {
                continue;
            }
            if runs >= max_runs {
                break 'passes;
            }
            runs += 1;
            let (v, _) = check(&cand, seed);
            if v.kind() == Some(kind.as_str()) {
                progress(&what, runs);
                steps.push(what);
                current = cand;
                verdict = v;
                accepted = true;
                // The list changes with the scenario; go on from about the
                // same place (earlier cuts get another go next pass).
                i -= 1;
            }
        }
        if !accepted {
            break;
        }
    }
    Shrunk { scenario: current, verdict, runs, steps }
}

/// What is still wrong from the last fault on.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EndState {
    /// Partitions made since the last heal.
    pub cuts: Vec<Action>,
    /// Nodes crashed and not restarted (`leader` counted: each `restart
    /// leader` undoes one `crash leader`).
    pub down: BTreeMap<Node, u32>,
    /// Some pause outlasts the last fault.
    pub paused: bool,
    /// Random loss or duplication goes on after the last fault.
    pub lossy: bool,
}

impl EndState {
    /// Whether nothing is wrong here that is not wrong in `other` too.
    pub fn within(&self, other: &EndState) -> bool {
        let mut left = other.cuts.clone();
        let cuts_within = self.cuts.iter().all(|c| match left.iter().position(|x| x == c) {
            Some(i) => {
                left.remove(i);
                true
            }
            None => false,
        });
        cuts_within
            && self.down.iter().all(|(n, k)| other.down.get(n).is_some_and(|o| o >= k))
            && (!self.paused || other.paused)
            && (!self.lossy || other.lossy)
    }
}

pub fn end_state(sc: &Scenario) -> EndState {
    let mut e = EndState::default();
    let last = sc.faults.last().map(|f| f.at_us).unwrap_or(0);
    for f in &sc.faults {
        match &f.action {
            Action::Partition(_) | Action::PartitionOneWay { .. } => e.cuts.push(f.action.clone()),
            Action::Heal => e.cuts.clear(),
            Action::Crash(n) => {
                let k = e.down.entry(*n).or_insert(0);
                *k = if *n == Node::Leader { *k + 1 } else { 1 };
            }
            Action::Restart(n) => {
                if let Some(k) = e.down.get_mut(n) {
                    *k -= 1;
                    if *k == 0 {
                        e.down.remove(n);
                    }
                }
            }
            Action::Pause { for_us, .. } => e.paused |= f.at_us + for_us > last,
            Action::Corrupt(_) | Action::CorruptLast(_) => {}
        }
    }
    let n = &sc.network;
    let lossy = n.drop_probability > 0.0 || n.duplicate_probability > 0.0;
    e.lossy = lossy && n.faults_until_us.is_none_or(|t| t > last);
    e
}

/// Whether everything is well from the last fault on: no partition left,
/// every node that crashed restarted, every pause over, random loss and
/// duplication stopped.
pub fn ends_healthy(sc: &Scenario) -> bool {
    end_state(sc) == EndState::default()
}

/// Smaller variants of `sc`, biggest cuts first, each with what it did.
pub fn candidates(sc: &Scenario) -> Vec<(String, Scenario)> {
    let mut out: Vec<(String, Scenario)> = Vec::new();
    let mut push = |what: String, f: &dyn Fn(&mut Scenario)| {
        let mut c = sc.clone();
        f(&mut c);
        out.push((what, c));
    };
    let faults = sc.faults.len();
    // Faults: halves, quarters, then one by one (the last first: the
    // closing heal and restarts usually matter least... or most, and then
    // they are kept).
    if faults >= 4 {
        for parts in [2, 4] {
            let size = faults.div_ceil(parts);
            for p in 0..parts {
                let (lo, hi) = (p * size, ((p + 1) * size).min(faults));
                if lo < hi {
                    push(format!("removed faults {}..{} of {faults}", lo + 1, hi), &|c| {
                        c.faults.drain(lo..hi);
                    });
                }
            }
        }
    }
    // A crash with the restart that ends it, together.
    for i in 0..faults {
        let Action::Crash(node) = sc.faults[i].action else { continue };
        let Some(j) = (i + 1..faults).find(|&j| sc.faults[j].action == Action::Restart(node)) else {
            continue;
        };
        push(
            format!("removed the crash of {node} at {} and its restart", show_ms(sc.faults[i].at_us)),
            &|c| {
                c.faults.remove(j);
                c.faults.remove(i);
            },
        );
    }
    for i in (0..faults).rev() {
        let what = format!("removed fault at {}: {}", show_ms(sc.faults[i].at_us), sc.faults[i].action);
        push(what, &|c| {
            c.faults.remove(i);
        });
    }
    // Workload.
    let groups = sc.workload.groups.len();
    if groups > 1 {
        for i in 0..groups {
            // Faults naming a single client are kept valid: clients
            // renumber, so only cut groups when no fault names a client.
            if !names_a_client(sc) {
                push(format!("removed client group {}", i + 1), &|c| {
                    c.workload.groups.remove(i);
                });
            }
        }
    }
    for i in 0..groups {
        let n = sc.workload.groups[i].clients;
        if n > 1 && !names_a_client(sc) {
            push(format!("group {}: 1 client instead of {n}", i + 1), &|c| c.workload.groups[i].clients = 1);
            if n > 2 {
                push(format!("group {}: {} clients instead of {n}", i + 1, n / 2), &|c| {
                    c.workload.groups[i].clients = n / 2
                });
            }
        }
    }
    let w = &sc.workload;
    if w.keys > 1 {
        push(format!("1 key instead of {}", w.keys), &|c| c.workload.keys = 1);
        if w.keys > 3 {
            push(format!("{} keys instead of {}", w.keys / 2, w.keys), &|c| c.workload.keys = w.keys / 2);
        }
    }
    let last_fault = sc.faults.last().map(|f| f.at_us).unwrap_or(0);
    let (half, most) = (round_to(w.duration_us / 2, 10_000), round_to(w.duration_us * 3 / 4, 10_000));
    for d in [round_up(last_fault + 100_000, 100_000), half, most, round_to(w.duration_us, 100_000)] {
        if d < w.duration_us && d >= 100_000 {
            push(format!("workload of {} instead of {}", show_ms(d), show_ms(w.duration_us)), &|c| {
                c.workload.duration_us = d;
                for g in &mut c.workload.groups {
                    g.stop_us = g.stop_us.map(|s| s.min(d));
                    g.start_us = g.start_us.min(d.saturating_sub(1));
                }
            });
        }
    }
    // Replicas: the highest one goes, if nothing names it.
    let n = sc.cluster.replicas.len() as u8;
    if n > 1 && !names_replica(sc, n) {
        push(format!("{} replicas instead of {n}", n - 1), &|c| {
            let mut cluster =
                kvstore::config::ClusterConfig::new(n - 1, c.cluster.sync_acks.min(n as usize - 2));
            cluster.unsafe_failover = c.cluster.unsafe_failover;
            cluster.log_rows_max = c.cluster.log_rows_max;
            cluster.timing = c.cluster.timing.clone();
            cluster.bugs = c.cluster.bugs.clone();
            c.cluster = cluster;
        });
    }
    // Switches back to plain.
    let net = &sc.network;
    if net.drop_probability > 0.0 || net.duplicate_probability > 0.0 {
        push("no random drops or duplicates".into(), &|c| {
            c.network.drop_probability = 0.0;
            c.network.duplicate_probability = 0.0;
            c.network.faults_until_us = None;
        });
    }
    if net.drop_probability > 0.0 {
        push("no random drops".into(), &|c| c.network.drop_probability = 0.0);
    }
    if net.duplicate_probability > 0.0 {
        push("no random duplicates".into(), &|c| c.network.duplicate_probability = 0.0);
    }
    if net.faults_until_us.is_some() && net.drop_probability == 0.0 && net.duplicate_probability == 0.0 {
        push("no end to random loss needed".into(), &|c| c.network.faults_until_us = None);
    }
    if (net.delay_min_us, net.delay_mean_us, net.distribution) != (100, 500, Distribution::Exponential) {
        push("default network delays".into(), &|c| {
            c.network.delay_min_us = 100;
            c.network.delay_mean_us = 500;
            c.network.distribution = Distribution::Exponential;
        });
    }
    if sc.clock != Clock::default() {
        push("no clock drift or skew".into(), &|c| c.clock = Clock::default());
    }
    if sc.disk.torn_write_probability > 0.0 {
        push("no torn writes".into(), &|c| c.disk.torn_write_probability = 0.0);
    }
    if (sc.disk.write_min_us, sc.disk.write_mean_us) != (50, 100) {
        push("default disk latency".into(), &|c| {
            c.disk = Disk { write_min_us: 50, write_mean_us: 100, ..c.disk.clone() }
        });
    }
    if sc.cluster.timing != Timing::default() {
        push("default timeouts".into(), &|c| c.cluster.timing = Timing::default());
        let d = Timing::default();
        let t = &sc.cluster.timing;
        type Field = fn(&mut Timing) -> &mut u64;
        let fields: [(&str, Field); 6] = [
            ("heartbeat", |t| &mut t.heartbeat_us),
            ("ping", |t| &mut t.ping_us),
            ("dead_after", |t| &mut t.dead_after_us),
            ("promote_timeout", |t| &mut t.promote_timeout_us),
            ("forward_retry", |t| &mut t.forward_retry_us),
            ("request_timeout", |t| &mut t.request_timeout_us),
        ];
        for (name, field) in fields {
            let (mut a, mut b) = (t.clone(), d.clone());
            if *field(&mut a) != *field(&mut b) {
                let dflt = *field(&mut b);
                push(format!("default {name}_ms"), &move |c| *field(&mut c.cluster.timing) = dflt);
            }
        }
    }
    if sc.cluster.log_rows_max != 100_000 {
        push("default log_rows_max".into(), &|c| c.cluster.log_rows_max = 100_000);
    }
    if w.zipf_exponent.is_some() {
        push("uniform keys".into(), &|c| c.workload.zipf_exponent = None);
    }
    if w.value_bytes_max > 16 {
        push("values of 4 to 16 bytes".into(), &|c| {
            c.workload.value_bytes_min = 4;
            c.workload.value_bytes_max = 16;
        });
    }
    for i in 0..groups {
        let g = &sc.workload.groups[i];
        if g.rate_per_s.is_some() {
            push(format!("group {}: closed loop", i + 1), &|c| c.workload.groups[i].rate_per_s = None);
        }
        if g.start_us > 0 || g.stop_us.is_some() {
            push(format!("group {}: runs the whole workload", i + 1), &|c| {
                c.workload.groups[i].start_us = 0;
                c.workload.groups[i].stop_us = None;
            });
        }
        if g.think_us > 0 && g.rate_per_s.is_none() {
            let r = round_to(g.think_us, 1000);
            if r != g.think_us {
                push(format!("group {}: think {}", i + 1, show_ms(r)), &|c| {
                    c.workload.groups[i].think_us = r
                });
            }
        }
    }
    // Round times: the coarsest rounding that keeps the failure.
    for step in [100_000, 10_000, 1_000] {
        for i in 0..faults {
            let t = sc.faults[i].at_us;
            let r = round_to(t, step);
            if r != t && (r % (step * 10) != 0 || step == 100_000) {
                push(format!("fault {} at {} instead of {}", i + 1, show_ms(r), show_ms(t)), &|c| {
                    c.faults[i].at_us = r;
                    c.faults.sort_by_key(|f| f.at_us);
                });
            }
            if let Action::Pause { for_us, .. } = sc.faults[i].action {
                let r = round_to(for_us, step).max(step);
                if r != for_us {
                    push(format!("pause {} of {} instead of {}", i + 1, show_ms(r), show_ms(for_us)), &|c| {
                        if let Action::Pause { for_us, .. } = &mut c.faults[i].action {
                            *for_us = r;
                        }
                    });
                }
            }
        }
        if let Some(t) = net.faults_until_us {
            let r = round_to(t, step);
            if r != t {
                push(format!("random loss until {}", show_ms(r)), &|c| c.network.faults_until_us = Some(r));
            }
        }
    }
    out
}

fn names_a_client(sc: &Scenario) -> bool {
    let client = |v: &[Node]| v.iter().any(|n| matches!(n, Node::Client(_)));
    sc.faults.iter().any(|f| match &f.action {
        Action::Partition(gs) => gs.iter().any(|g| client(g)),
        Action::PartitionOneWay { from, to } => client(from) || client(to),
        _ => false,
    })
}

fn names_replica(sc: &Scenario, r: u8) -> bool {
    let named = |v: &[Node]| v.contains(&Node::Replica(r));
    sc.faults.iter().any(|f| match &f.action {
        Action::Crash(n) | Action::Restart(n) => *n == Node::Replica(r),
        Action::Pause { node, .. } => *node == Node::Replica(r),
        Action::Corrupt(x) | Action::CorruptLast(x) => *x == r,
        Action::Partition(gs) => gs.iter().any(|g| named(g)),
        Action::PartitionOneWay { from, to } => named(from) || named(to),
        Action::Heal => false,
    })
}

fn round_to(v: u64, step: u64) -> u64 {
    (v + step / 2) / step * step
}

fn round_up(v: u64, step: u64) -> u64 {
    v.div_ceil(step) * step
}

fn show_ms(us: u64) -> String {
    if us % 1000 == 0 {
        format!("{}ms", us / 1000)
    } else {
        format!("{}.{:03}ms", us / 1000, us % 1000)
    }
}

/// The shrunk scenario as a file to check in: a header saying what it
/// reproduces and where it came from, then the scenario (fields at their
/// defaults left out).
pub fn commented(shrunk: &Shrunk, seed: u64, origin: &str, original: &Scenario, path: &str) -> String {
    use std::fmt::Write as _;
    let mut t = String::new();
    let _ = writeln!(t, "# Shrunk by `kvsim shrink` from {origin} (seed {seed}) in {} runs.", shrunk.runs);
    let _ = writeln!(
        t,
        "# It reproduces: {} ({} faults, was {}; {} replicas, was {}; {} clients, was {}).",
        shrunk.verdict.kind().unwrap_or("nothing"),
        shrunk.scenario.faults.len(),
        original.faults.len(),
        shrunk.scenario.cluster.replicas.len(),
        original.cluster.replicas.len(),
        clients(&shrunk.scenario),
        clients(original),
    );
    for line in crate::fuzz::shorten(&shrunk.verdict.first()).lines() {
        let _ = writeln!(t, "#   {line}");
    }
    let _ = writeln!(t, "# Run it: kvsim run {path} --seed {seed}");
    let _ = writeln!(t, "# The scenario and the seed reproduce it together; the file alone, on");
    let _ = writeln!(t, "# other seeds, may not.");
    t.push('\n');
    t.push_str(&shrunk.scenario.to_toml_compact());
    t
}

fn clients(sc: &Scenario) -> u32 {
    sc.workload.groups.iter().map(|g| g.clients).sum()
}
