//! `kvsim fuzz`: swarm testing. Every seed draws its own scenario: each
//! kind of fault (and a few workload features) is switched on or off for
//! that seed, and the rates and parameters of those that are on are drawn
//! too, so one seed hammers partitions with a slow disk while the next
//! corrupts a log under clock drift. A fault phase (at most
//! [`Profile::fault_phase`] of the workload) is followed by a heal of
//! everything: every partition healed, every crashed node restarted, random
//! loss and duplication stopped. Then the cluster must converge and every
//! operation sent from then on must succeed (safety, then liveness).
//!
//! The generated scenarios stay inside the fault model of the safety
//! argument (README, "The safety argument"), beyond which a lost write is
//! expected rather than a bug: at most `sync_acks` distinct replicas have a
//! log corrupted in one run (none with `sync_acks = 0`), and
//! `unsafe_failover` is never set unless a [`Profile`] plants it as a bug.
//!
//! Everything is drawn from a ChaCha8 generator seeded with the seed (its
//! own stream, apart from the simulator's), so a seed names one scenario
//! for good; [`Scenario::to_toml`] writes it out, and `kvsim run FILE
//! --seed N` replays it exactly.

use crate::scenario::{
    plant_bug, Action, Clock, Disk, Distribution, Fault, Group, Mix, Network, Node, Run, Scenario, Workload,
};
use crate::{Summary, TraceLevel};
use kvstore::config::{ClusterConfig, Timing};
use kvstore::ReadMode;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Deserialize;
use std::cell::{Cell, RefCell};
use std::collections::BTreeSet;
use std::panic::{self, AssertUnwindSafe, PanicHookInfo};
use std::sync::Arc;

/// What can be switched on or off per seed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// Another delay distribution and other delays than the defaults.
    Delays,
    Drop,
    Duplicate,
    /// A symmetric partition into two or three random groups.
    Partition,
    /// Messages from some nodes to others are lost; the other way works.
    OneWay,
    /// A partition that comes and goes, again and again.
    Flapping,
    /// One replica cut from the other replicas only: the balancer and the
    /// clients still reach it (often r1, the first leader).
    CutReplica,
    /// Replicas crash, and restart (later, or at the end of the fault phase).
    Crash,
    BalancerCrash,
    /// Every replica loses power within a few milliseconds, then all restart.
    PowerLoss,
    /// A replica or the balancer stops handling anything for a while.
    Pause,
    /// Clock drift and skew on the replicas and the balancer.
    Clock,
    SlowDisk,
    /// Crashes tear the write in progress.
    Torn,
    /// A flipped byte anywhere in a replica's log, then a crash and restart
    /// of that replica so recovery meets it.
    Corrupt,
    /// A small `log_rows_max`: compaction and snapshots to far-behind
    /// followers.
    SmallLog,
    /// Values up to the 64 KiB limit (in few seeds: they are slow).
    LargeValues,
    /// Zipf-distributed keys.
    HotKeys,
    /// Timeouts drawn near the edges of what still lets a healthy cluster
    /// make progress.
    EdgeTiming,
    /// One fault outlasts the fault phase, one the cluster must work
    /// around: a replica stays down, or stays cut from the other replicas
    /// (the balancer and clients still reach it: if it leads, it must be
    /// replaced). Only where the others can still promote and confirm,
    /// two seconds after the heal (see `draw`).
    Lasting,
}

impl Kind {
    pub const ALL: [Kind; 20] = [
        Kind::Delays,
        Kind::Drop,
        Kind::Duplicate,
        Kind::Partition,
        Kind::OneWay,
        Kind::Flapping,
        Kind::CutReplica,
        Kind::Crash,
        Kind::BalancerCrash,
        Kind::PowerLoss,
        Kind::Pause,
        Kind::Clock,
        Kind::SlowDisk,
        Kind::Torn,
        Kind::Corrupt,
        Kind::SmallLog,
        Kind::LargeValues,
        Kind::HotKeys,
        Kind::EdgeTiming,
        Kind::Lasting,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Delays => "delays",
            Kind::Drop => "drop",
            Kind::Duplicate => "duplicate",
            Kind::Partition => "partition",
            Kind::OneWay => "one_way",
            Kind::Flapping => "flapping",
            Kind::CutReplica => "cut_replica",
            Kind::Crash => "crash",
            Kind::BalancerCrash => "balancer_crash",
            Kind::PowerLoss => "power_loss",
            Kind::Pause => "pause",
            Kind::Clock => "clock",
            Kind::SlowDisk => "slow_disk",
            Kind::Torn => "torn",
            Kind::Corrupt => "corrupt",
            Kind::SmallLog => "small_log",
            Kind::LargeValues => "large_values",
            Kind::HotKeys => "hot_keys",
            Kind::EdgeTiming => "edge_timing",
            Kind::Lasting => "lasting",
        }
    }

    pub fn from_name(s: &str) -> Result<Kind, String> {
        Kind::ALL.into_iter().find(|k| k.name() == s).ok_or_else(|| {
            let names: Vec<&str> = Kind::ALL.iter().map(|k| k.name()).collect();
            format!("unknown kind `{s}` (known: {})", names.join(", "))
        })
    }

    /// How much likelier than `chance` this kind is on: large values make a
    /// seed slow, so they are rare.
    fn weight(self) -> f64 {
        match self {
            Kind::LargeValues => 0.2,
            _ => 1.0,
        }
    }
}

/// The generator's ranges. [`Profile::default`] is the swarm of every kind;
/// a profile file (`kvsim fuzz --profile FILE`) overrides any of it.
#[derive(Clone, Debug, PartialEq)]
pub struct Profile {
    /// Replica counts to draw from, with weights.
    pub replicas: Vec<(u8, u32)>,
    /// A fixed `sync_acks` (capped at the followers there are); `None`:
    /// drawn in `0..=replicas-1`.
    pub sync_acks: Option<usize>,
    /// The workload's length is drawn in this range (ms, log-uniform).
    pub duration_ms: (u64, u64),
    /// Clients over every group, at most.
    pub clients_max: u32,
    /// Kinds that may be switched on.
    pub enabled: BTreeSet<Kind>,
    /// Kinds that are on in every seed (if enabled).
    pub always: BTreeSet<Kind>,
    /// The chance that an enabled kind is on in a seed.
    pub chance: f64,
    /// The fault phase ends at this fraction of the workload, at the latest.
    pub fault_phase: f64,
    /// Bugs to plant (`[bugs]` names; `unsafe_failover` sets that switch).
    pub bugs: Vec<String>,
    pub max_events: u64,
    pub liveness_ms: u64,
    pub quiet_ms: u64,
    /// Fixed values for any scenario field, in the scenario file's own
    /// format (`[scenario.network] duplicate_probability = 0.5`), laid
    /// over what the generator draws (a list, such as `faults`, replaces
    /// the drawn one whole).
    pub overrides: toml::Table,
}

impl Default for Profile {
    fn default() -> Profile {
        Profile {
            replicas: vec![(1, 1), (2, 1), (3, 5), (4, 1), (5, 3), (6, 1), (7, 1)],
            sync_acks: None,
            duration_ms: (500, 4000),
            clients_max: 8,
            enabled: Kind::ALL.into_iter().collect(),
            always: BTreeSet::new(),
            chance: 0.5,
            fault_phase: 0.7,
            bugs: Vec::new(),
            max_events: 20_000_000,
            liveness_ms: 5000,
            quiet_ms: 3000,
            overrides: toml::Table::new(),
        }
    }
}

/// A profile file, as written (every field optional).
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ProfileFile {
    replicas: Option<Vec<u8>>,
    sync_acks: Option<usize>,
    duration_ms: Option<[u64; 2]>,
    clients_max: Option<u32>,
    faults: Option<Vec<String>>,
    disable: Option<Vec<String>>,
    always: Option<Vec<String>>,
    chance: Option<f64>,
    fault_phase: Option<f64>,
    bugs: Option<Vec<String>>,
    max_events: Option<u64>,
    liveness_ms: Option<u64>,
    quiet_ms: Option<u64>,
    scenario: Option<toml::Table>,
}

impl Profile {
    /// Reads a profile file's text (see README, "kvsim fuzz").
    pub fn parse(text: &str) -> Result<Profile, String> {
        let f: ProfileFile = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut p = Profile::default();
        if let Some(r) = f.replicas {
            if r.is_empty() || r.iter().any(|n| !(1..=9).contains(n)) {
                return Err("`replicas`: a list of counts from 1 to 9".into());
            }
            p.replicas = r.into_iter().map(|n| (n, 1)).collect();
        }
        p.sync_acks = f.sync_acks;
        if let Some([lo, hi]) = f.duration_ms {
            if lo == 0 || lo > hi {
                return Err("`duration_ms`: [lowest, highest], lowest at least 1".into());
            }
            p.duration_ms = (lo, hi);
        }
        if let Some(c) = f.clients_max {
            if c == 0 {
                return Err("`clients_max`: at least 1".into());
            }
            p.clients_max = c;
        }
        let kinds = |v: Vec<String>| v.iter().map(|s| Kind::from_name(s)).collect::<Result<BTreeSet<_>, _>>();
        if let Some(v) = f.faults {
            p.enabled = kinds(v)?;
        }
        if let Some(v) = f.disable {
            for k in kinds(v)? {
                p.enabled.remove(&k);
            }
        }
        if let Some(v) = f.always {
            p.always = kinds(v)?;
            p.enabled.extend(p.always.iter().copied());
        }
        if let Some(c) = f.chance {
            if !(0.0..=1.0).contains(&c) {
                return Err("`chance`: between 0 and 1".into());
            }
            p.chance = c;
        }
        if let Some(x) = f.fault_phase {
            if !(0.05..=1.0).contains(&x) {
                return Err("`fault_phase`: between 0.05 and 1".into());
            }
            p.fault_phase = x;
        }
        for b in f.bugs.unwrap_or_default() {
            p.plant(&b)?;
        }
        if let Some(m) = f.max_events {
            p.max_events = m.max(1);
        }
        if let Some(l) = f.liveness_ms {
            p.liveness_ms = l;
        }
        if let Some(q) = f.quiet_ms {
            p.quiet_ms = q;
        }
        if let Some(o) = f.scenario {
            p.overrides = o;
            // A mistake shows now, not as a failure of every seed.
            for seed in 1..=20 {
                try_generate(seed, &p).map_err(|e| format!("`[scenario]` (tried with seed {seed}): {e}"))?;
            }
        }
        Ok(p)
    }

    /// Plants a bug by its `[bugs]` name, or `unsafe_failover`.
    pub fn plant(&mut self, bug: &str) -> Result<(), String> {
        if bug != "unsafe_failover" {
            plant_bug(&mut kvstore::config::Bugs::default(), bug)?;
        }
        if !self.bugs.iter().any(|b| b == bug) {
            self.bugs.push(bug.to_string());
        }
        Ok(())
    }
}

fn ms(v: u64) -> u64 {
    v * 1000
}

/// Draws.
struct Gen {
    rng: ChaCha8Rng,
}

impl Gen {
    fn chance(&mut self, p: f64) -> bool {
        self.rng.random_bool(p.clamp(0.0, 1.0))
    }
    /// Uniform in `lo..=hi`.
    fn int(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            lo
        } else {
            self.rng.random_range(lo..=hi)
        }
    }
    /// Log-uniform in `lo..=hi` (both above zero): small values as often
    /// as large ones, by orders of magnitude.
    fn log(&mut self, lo: f64, hi: f64) -> f64 {
        if hi <= lo {
            return lo;
        }
        let u: f64 = self.rng.random_range(0.0..=1.0);
        (lo.ln() + u * (hi.ln() - lo.ln())).exp()
    }
    /// Log-uniform microseconds.
    fn log_us(&mut self, lo: u64, hi: u64) -> u64 {
        self.log(lo.max(1) as f64, hi.max(1) as f64).round() as u64
    }
    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.rng.random_range(0..items.len())]
    }
    fn weighted<T: Copy>(&mut self, items: &[(T, u32)]) -> T {
        let total: u32 = items.iter().map(|i| i.1).sum();
        let mut at = self.rng.random_range(0..total.max(1));
        for (item, w) in items {
            if at < *w {
                return *item;
            }
            at -= w;
        }
        items[items.len() - 1].0
    }
    /// A random order of `v`.
    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.rng.random_range(0..=i);
            v.swap(i, j);
        }
    }
}

/// The stream of a seed's generator (apart from the simulator's own
/// generators, which are seeded from the same number).
const STREAM: u64 = 0x6b76_7369_6d66_757a; // "kvsimfuz"

/// The kinds on for this seed: every enabled one with `chance` (the
/// draws happen for every kind, enabled or not, so disabling one kind in a
/// profile does not reshuffle the others).
pub fn kinds_for(seed: u64, p: &Profile) -> BTreeSet<Kind> {
    let mut g = Gen { rng: ChaCha8Rng::seed_from_u64(seed) };
    g.rng.set_stream(STREAM);
    kinds_drawn(&mut g, p)
}

fn kinds_drawn(g: &mut Gen, p: &Profile) -> BTreeSet<Kind> {
    let mut on = BTreeSet::new();
    for k in Kind::ALL {
        let drawn = g.chance(p.chance * k.weight());
        if p.enabled.contains(&k) && (drawn || p.always.contains(&k)) {
            on.insert(k);
        }
    }
    on
}

/// The scenario of one seed. Panics if the profile's `[scenario]`
/// overrides do not make a valid scenario for this seed (see
/// [`try_generate`]; [`Profile::parse`] tries a few seeds first).
pub fn generate(seed: u64, p: &Profile) -> Scenario {
    try_generate(seed, p).unwrap_or_else(|e| panic!("profile: {e}"))
}

/// The scenario of one seed, or why the profile's overrides make none.
pub fn try_generate(seed: u64, p: &Profile) -> Result<Scenario, String> {
    let sc = draw(seed, p);
    if p.overrides.is_empty() {
        return Ok(sc);
    }
    let mut table: toml::Table = toml::from_str(&sc.to_toml()).map_err(|e| e.to_string())?;
    merge(&mut table, &p.overrides);
    let text = toml::to_string(&table).map_err(|e| e.to_string())?;
    crate::scenario::parse(&text, "profile [scenario]", &sc.name).map_err(|e| e.msg)
}

/// Lays `over` over `base`: tables merge key by key, anything else
/// replaces.
fn merge(base: &mut toml::Table, over: &toml::Table) {
    for (k, v) in over {
        match (base.get_mut(k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            _ => {
                base.insert(k.clone(), v.clone());
            }
        }
    }
}

fn draw(seed: u64, p: &Profile) -> Scenario {
    let mut g = Gen { rng: ChaCha8Rng::seed_from_u64(seed) };
    g.rng.set_stream(STREAM);
    let on = kinds_drawn(&mut g, p);
    let has = |k: Kind| on.contains(&k);

    // -- cluster size and acknowledgement rule
    let n = g.weighted(&p.replicas);
    let sync_acks = match p.sync_acks {
        Some(k) => k.min(n as usize - 1),
        None => g.int(0, n as u64 - 1) as usize,
    };

    // -- network
    let mut network = Network {
        delay_min_us: 100,
        delay_mean_us: 500,
        distribution: Distribution::Exponential,
        drop_probability: 0.0,
        duplicate_probability: 0.0,
        faults_until_us: None,
    };
    if has(Kind::Delays) {
        network.distribution = g.pick(&[
            Distribution::Constant,
            Distribution::Uniform,
            Distribution::Exponential,
            Distribution::Pareto,
        ]);
        network.delay_min_us = g.log_us(5, 1000);
        network.delay_mean_us = network.delay_min_us + g.log_us(5, 5000);
    }
    if has(Kind::Drop) {
        network.drop_probability = round_prob(g.log(0.001, 0.15));
    }
    if has(Kind::Duplicate) {
        let most = if g.chance(0.3) { 0.5 } else { 0.15 };
        network.duplicate_probability = round_prob(g.log(0.001, most));
    }

    // -- disk and clocks
    let mut disk = Disk { write_min_us: 50, write_mean_us: 100, torn_write_probability: 0.0 };
    if has(Kind::SlowDisk) {
        disk.write_min_us = g.log_us(10, 3000);
        disk.write_mean_us = disk.write_min_us + g.log_us(10, 8000);
    }
    if has(Kind::Torn) {
        disk.torn_write_probability = g.pick(&[0.25, 0.5, 0.9, 1.0]);
    }
    let mut clock = Clock::default();
    if has(Kind::Clock) {
        clock.drift_max_ppm = if g.chance(0.2) { g.int(0, 250_000) } else { g.int(0, 50_000) } as u32;
        clock.skew_max_us = g.log_us(1000, 5_000_000);
    }

    // -- timing: valid for the delays, disk and clocks drawn (see
    // `timing_floor`).
    let floor = timing_floor(&network, &disk, &clock);
    let d = Timing::default();
    let mut timing = d.clone();
    if has(Kind::EdgeTiming) {
        timing.heartbeat_us = g.int(ms(5), ms(60));
        timing.ping_us = g.int(ms(10), ms(100));
        let dead_lo = floor.dead_after(&timing);
        timing.dead_after_us = g.int(dead_lo, dead_lo + dead_lo / 2);
        timing.promote_timeout_us = g.int(floor.promote_timeout_us, floor.promote_timeout_us.max(ms(300)));
        timing.forward_retry_us = g.int(ms(30), ms(300)).max(floor.forward_retry_us);
        timing.request_timeout_us =
            g.int(2 * timing.forward_retry_us, ms(1500)).max(2 * timing.forward_retry_us);
    } else {
        timing.dead_after_us = d.dead_after_us.max(floor.dead_after(&timing));
        timing.promote_timeout_us = d.promote_timeout_us.max(floor.promote_timeout_us);
        timing.forward_retry_us = d.forward_retry_us.max(floor.forward_retry_us);
        timing.request_timeout_us = d.request_timeout_us.max(2 * timing.forward_retry_us);
    }
    let mut cluster = ClusterConfig::new(n, sync_acks);
    cluster.timing = timing;
    if has(Kind::SmallLog) {
        cluster.log_rows_max = g.int(16, 200) as usize;
    }
    for b in &p.bugs {
        if b == "unsafe_failover" {
            cluster.unsafe_failover = true;
        } else {
            plant_bug(&mut cluster.bugs, b).expect("checked by Profile::plant");
        }
    }

    // -- workload
    let duration_us = ms(g.log(p.duration_ms.0 as f64, p.duration_ms.1 as f64).round() as u64);
    let keys = if g.chance(0.25) { g.int(1, 3) } else { g.int(4, 60) } as u32;
    let zipf_exponent = has(Kind::HotKeys).then(|| (g.int(60, 200) as f64) / 100.0);
    let value_bytes_min = g.int(1, 16) as usize;
    let value_bytes_max = if has(Kind::LargeValues) {
        g.pick(&[1024, 8192, 65536])
    } else {
        value_bytes_min + g.int(0, 48) as usize
    };
    let set = g.int(1, 100) as u32;
    let mix =
        Mix { set, get: g.int(0, 100) as u32, del: if g.chance(0.5) { g.int(0, 30) as u32 } else { 0 } };
    // About how long one operation takes in a healthy cluster: a write is
    // six hops (client, balancer, leader, followers and back) and a disk
    // write on the leader and on its followers.
    let op_latency_us = 6 * network.delay_mean_us + 3 * disk.write_mean_us + 100;
    let group_count = g.int(1, 3) as u32;
    let mut groups = Vec::new();
    let mut clients_left = p.clients_max;
    for gi in 0..group_count {
        if clients_left == 0 {
            break;
        }
        let share = (clients_left / (group_count - gi)).max(1);
        let clients = g.int(1, share.min(4) as u64) as u32;
        clients_left -= clients;
        let read = g.pick(&[ReadMode::Any, ReadMode::Session, ReadMode::Leader]);
        let open = g.chance(0.4);
        // An open-loop client has one operation in flight at a time: it
        // must arrive well below what one client can finish, or its queue
        // grows without end (a workload no cluster could serve, not a
        // liveness bug).
        let rate_max = (300_000 / op_latency_us).clamp(10, 400);
        let rate_per_s = open.then(|| g.int(5, rate_max) as f64);
        let think_us = if open { 0 } else { g.pick(&[0, 1, 2, 5, 10, 20]) * 1000 + g.int(1, 999) };
        let start_us = if g.chance(0.3) { g.int(0, duration_us / 3) } else { 0 };
        let stop_us = g.chance(0.2).then(|| g.int(start_us + 1, duration_us));
        groups.push(Group { clients, read, rate_per_s, think_us, start_us, stop_us, script: None });
    }
    let mut workload =
        Workload { duration_us, keys, zipf_exponent, value_bytes_min, value_bytes_max, mix, groups };

    // -- faults, all within [0, end); `end` heals everything
    let end = ((duration_us as f64 * p.fault_phase * (0.5 + g.int(0, 50) as f64 / 100.0)) as u64).max(ms(50));
    let mut faults: Vec<Fault> = Vec::new();
    // Faults meet where they happen close together: half of them fall
    // near one of a few hot spots of the fault phase, the rest anywhere.
    let last = end.saturating_sub(ms(1));
    let spots: Vec<u64> = (0..g.int(1, 3)).map(|_| g.int(0, last)).collect();
    let at = |g: &mut Gen, lo: u64| {
        if g.chance(0.5) {
            let spot = g.pick(&spots);
            (spot + g.log_us(1, ms(400))).clamp(lo, last.max(lo))
        } else {
            g.int(lo, last.max(lo))
        }
    };
    let replica = |g: &mut Gen| Node::Replica(g.int(1, n as u64) as u8);
    let all_replicas: Vec<Node> = (1..=n).map(Node::Replica).collect();
    if has(Kind::Partition) {
        for _ in 0..g.int(1, 3) {
            let t = at(&mut g, 0);
            let first = partition(&mut g, n);
            faults.push(Fault { at_us: t, action: first.clone() });
            // Healed later, and sometimes reshaped at once: the network
            // settles into another split. A replica that was alone (a
            // leader deposed meanwhile, say) may meet just one other
            // replica, apart from the rest.
            if let Some(h) = heal_later(&mut g, &mut faults, t, end) {
                if g.chance(0.4) {
                    let alone = match &first {
                        Action::Partition(gs) => match gs[0].as_slice() {
                            [Node::Replica(x)] => Some(*x),
                            _ => None,
                        },
                        _ => None,
                    };
                    let next = match alone {
                        Some(x) if n >= 3 && g.chance(0.5) => {
                            let mut others: Vec<Node> =
                                all_replicas.iter().copied().filter(|r| *r != Node::Replica(x)).collect();
                            g.shuffle(&mut others);
                            let mut pair = vec![Node::Replica(x), others.remove(0)];
                            pair.sort();
                            Action::Partition(vec![pair, others])
                        }
                        _ => partition(&mut g, n),
                    };
                    faults.push(Fault { at_us: h, action: next });
                    heal_later(&mut g, &mut faults, h, end);
                }
            }
        }
    }
    if has(Kind::OneWay) {
        for _ in 0..g.int(1, 2) {
            let t = at(&mut g, 0);
            let mut nodes = all_replicas.clone();
            nodes.push(Node::Balancer);
            nodes.push(Node::Clients);
            g.shuffle(&mut nodes);
            let k = g.int(1, nodes.len() as u64 - 1) as usize;
            let mut from = nodes[..k].to_vec();
            let mut to = nodes[k..].to_vec();
            to.truncate(g.int(1, to.len() as u64) as usize);
            from.sort();
            to.sort();
            faults.push(Fault { at_us: t, action: Action::PartitionOneWay { from, to } });
            heal_later(&mut g, &mut faults, t, end);
        }
    }
    if has(Kind::CutReplica) && n > 1 {
        for _ in 0..g.int(1, 2) {
            let t = at(&mut g, 0);
            // The leader of the moment, or some replica (r1 leads first).
            let r = if g.chance(0.4) {
                Node::Leader
            } else if g.chance(0.3) {
                Node::Replica(1)
            } else {
                replica(&mut g)
            };
            // Every other replica (`leader` may be any of them: it is cut
            // from all the others).
            let others: Vec<Node> = all_replicas.iter().copied().filter(|x| *x != r).collect();
            let action = if g.chance(0.3) {
                // Only the way out (or in) is cut.
                if g.chance(0.5) {
                    Action::PartitionOneWay { from: vec![r], to: others }
                } else {
                    Action::PartitionOneWay { from: others, to: vec![r] }
                }
            } else {
                Action::Partition(vec![vec![r], others])
            };
            faults.push(Fault { at_us: t, action });
            heal_later(&mut g, &mut faults, t, end);
        }
    }
    if has(Kind::Flapping) {
        let mut t = at(&mut g, 0);
        let victim = if g.chance(0.5) { replica(&mut g) } else { Node::Balancer };
        let mut rest: Vec<Node> = all_replicas.iter().copied().filter(|x| *x != victim).collect();
        if victim != Node::Balancer {
            rest.push(Node::Balancer);
        }
        for _ in 0..g.int(2, 8) {
            if t + ms(2) >= end {
                break;
            }
            faults.push(Fault { at_us: t, action: Action::Partition(vec![vec![victim], rest.clone()]) });
            let heal = (t + g.log_us(ms(5), ms(400))).min(end - ms(1));
            faults.push(Fault { at_us: heal, action: Action::Heal });
            t = heal + g.log_us(ms(5), ms(400));
        }
    }
    if has(Kind::Crash) {
        for _ in 0..g.int(1, 3) {
            let t = at(&mut g, 0);
            // The leader of the moment more often than the others.
            let first = if g.chance(0.35) {
                Node::Leader
            } else if g.chance(0.25) {
                Node::Replica(1)
            } else {
                replica(&mut g)
            };
            // Sometimes a second replica goes down with it (a promotion
            // may stall: writes unavailable, never unsafe).
            let second = (n > 1 && g.chance(0.3)).then(|| replica(&mut g)).filter(|r| *r != first);
            for (r, t) in [(first, t)].into_iter().chain(second.map(|r| (r, t + g.log_us(1, ms(300))))) {
                faults.push(Fault { at_us: t, action: Action::Crash(r) });
                if g.chance(0.7) {
                    // Down briefly (a restart before anyone notices) or for
                    // seconds (clients give up meanwhile).
                    let down =
                        if g.chance(0.5) { g.log_us(ms(1), ms(300)) } else { g.int(ms(300), ms(4000)) };
                    let back = (t + down).min(end.saturating_sub(ms(1)).max(t + 1));
                    faults.push(Fault { at_us: back, action: Action::Restart(r) });
                }
            }
        }
    }
    if has(Kind::BalancerCrash) {
        for _ in 0..g.int(1, 2) {
            let t = at(&mut g, 0);
            faults.push(Fault { at_us: t, action: Action::Crash(Node::Balancer) });
            let back = (t + g.log_us(1, ms(800))).min(end.saturating_sub(ms(1)).max(t + 1));
            faults.push(Fault { at_us: back, action: Action::Restart(Node::Balancer) });
        }
    }
    if has(Kind::PowerLoss) {
        let t = at(&mut g, 0);
        let mut order = all_replicas.clone();
        g.shuffle(&mut order);
        let mut when = t;
        let lb_too = g.chance(0.3);
        for r in order.iter().copied().chain(lb_too.then_some(Node::Balancer)) {
            faults.push(Fault { at_us: when, action: Action::Crash(r) });
            when += g.int(0, ms(2));
        }
        let mut back = (when + g.log_us(ms(1), ms(600))).min(end.saturating_sub(ms(1)).max(when + 1));
        g.shuffle(&mut order);
        for r in order.iter().copied().chain(lb_too.then_some(Node::Balancer)) {
            faults.push(Fault { at_us: back, action: Action::Restart(r) });
            back += g.int(0, ms(20));
        }
    }
    if has(Kind::Pause) {
        for _ in 0..g.int(1, 3) {
            let t = at(&mut g, 0);
            let node = if g.chance(0.25) {
                Node::Balancer
            } else if g.chance(0.35) {
                Node::Leader
            } else {
                replica(&mut g)
            };
            let room = end.saturating_sub(t).max(1000);
            let for_us = g.log_us(ms(5), ms(1500)).min(room);
            faults.push(Fault { at_us: t, action: Action::Pause { node, for_us } });
        }
    }
    if has(Kind::Corrupt) && sync_acks > 0 {
        // At most `sync_acks` distinct replicas: beyond that, losing an
        // acknowledged row everywhere it is held is outside the model.
        let mut victims = all_replicas.clone();
        g.shuffle(&mut victims);
        victims.truncate(g.int(1, sync_acks as u64) as usize);
        for r in victims {
            let Node::Replica(id) = r else { continue };
            // Late enough that the log has something in it.
            let t = at(&mut g, end / 3);
            // The last record half the time: damage that looks just like a
            // torn write, and may hold rows this replica confirmed.
            let action = if g.chance(0.5) { Action::CorruptLast(id) } else { Action::Corrupt(id) };
            faults.push(Fault { at_us: t, action });
            let down = t + g.log_us(1, ms(100));
            faults.push(Fault { at_us: down, action: Action::Crash(r) });
            // Back soon, or only at the end of the fault phase, as the
            // network heals (it may then meet a leader deposed meanwhile).
            if g.chance(0.7) {
                let up = down + g.log_us(ms(1), ms(300));
                faults.push(Fault { at_us: up, action: Action::Restart(r) });
            }
        }
    }
    // Whatever ran past the end of the fault phase is moved back into it,
    // so the heal below is the last fault.
    for f in &mut faults {
        f.at_us = f.at_us.min(end.saturating_sub(1));
    }
    faults.sort_by_key(|f| f.at_us);
    // The end of the fault phase: heal every partition, restart every
    // node (a restart of a node that is up does nothing), stop random loss.
    let mut tail = Vec::new();
    let crashes: BTreeSet<Node> = faults
        .iter()
        .filter_map(|f| match f.action {
            Action::Crash(n) => Some(n),
            _ => None,
        })
        .collect();
    for node in crashes {
        tail.push(Fault { at_us: end, action: Action::Restart(node) });
    }
    // Each `restart leader` brings back one replica crashed as `leader`.
    let leaders = faults.iter().filter(|f| f.action == Action::Crash(Node::Leader)).count();
    for _ in 1..leaders {
        tail.push(Fault { at_us: end, action: Action::Restart(Node::Leader) });
    }
    // All at one instant: from it on, nothing is wrong (the liveness check
    // counts from the last fault). The heal comes first or last: a node
    // restarting into a healed network meets whoever was cut off (a leader
    // deposed meanwhile, say) before it meets anyone else, or the other way.
    if g.chance(0.5) {
        tail.insert(0, Fault { at_us: end, action: Action::Heal });
    } else {
        tail.push(Fault { at_us: end, action: Action::Heal });
    }
    faults.extend(tail);
    // A fault that lasts, where the others can still make progress
    // without that replica: they can promote (a quorum of them) and
    // confirm (`sync_acks` of them besides a leader).
    let mut check_convergence = true;
    let quorum = cluster.promotion_quorum();
    // It comes two seconds after the heal, once every replica has caught
    // up: a replica that may lack rows it confirmed (a torn or corrupt
    // log) counts in a promotion only when every replica answers, so with
    // one gone for good before it caught up, the cluster would rightly stay
    // unavailable.
    if has(Kind::Lasting) && n >= 3 && sync_acks + 2 <= n as usize && quorum < n as usize {
        let t = end + ms(2000);
        workload.duration_us = workload.duration_us.max(t + ms(1500));
        let r = if g.chance(0.5) { Node::Leader } else { replica(&mut g) };
        if g.chance(0.5) {
            faults.push(Fault { at_us: t, action: Action::Crash(r) });
        } else {
            let others = all_replicas.iter().copied().filter(|x| *x != r).collect();
            faults.push(Fault { at_us: t, action: Action::Partition(vec![vec![r], others]) });
            // The one cut off falls behind for good.
            check_convergence = false;
        }
    }
    if network.drop_probability > 0.0 || network.duplicate_probability > 0.0 {
        network.faults_until_us = Some(end);
    }

    let run = Run {
        quiet_us: ms(p.quiet_ms),
        liveness_us: ms(p.liveness_ms),
        check_convergence,
        max_events: Some(p.max_events),
    };
    Scenario {
        name: format!("fuzz-{seed}"),
        about: String::new(),
        cluster,
        network,
        disk,
        clock,
        workload,
        faults,
        run,
    }
}

/// The least timeouts that let a healthy cluster make progress under
/// these delays, disks and clocks: heartbeats and pongs are heard well
/// within `dead_after`, a promotion round (Prepare, a durable promise,
/// Promise) fits in `promote_timeout`, and the balancer waits for a
/// forwarded request at least a round trip. Clock drift stretches all of
/// them (one clock slow, the other fast).
#[derive(Clone, Copy, Debug)]
pub struct TimingFloor {
    /// A round trip plus a disk write, in microseconds.
    pub trip_us: u64,
    pub stretch: f64,
    pub promote_timeout_us: u64,
    pub forward_retry_us: u64,
}

impl TimingFloor {
    /// The least `dead_after` for these heartbeat and ping intervals.
    pub fn dead_after(&self, t: &Timing) -> u64 {
        ((3 * t.heartbeat_us.max(t.ping_us) + 10 * self.trip_us) as f64 * self.stretch) as u64
    }
}

pub fn timing_floor(network: &Network, disk: &Disk, clock: &Clock) -> TimingFloor {
    let d = clock.drift_max_ppm as f64 / 1e6;
    let stretch = (1.0 + d) / (1.0 - d);
    let trip_us = 2 * network.delay_mean_us + disk.write_mean_us;
    TimingFloor {
        trip_us,
        stretch,
        promote_timeout_us: ((ms(20) + 4 * trip_us) as f64 * stretch) as u64,
        forward_retry_us: 2 * trip_us,
    }
}

/// Whether a scenario's timeouts are at or above [`timing_floor`], and a
/// request can be retried within the client's 2 s deadline.
pub fn timing_valid(sc: &Scenario) -> bool {
    let f = timing_floor(&sc.network, &sc.disk, &sc.clock);
    let t = &sc.cluster.timing;
    t.dead_after_us >= f.dead_after(t)
        && t.promote_timeout_us >= f.promote_timeout_us
        && t.forward_retry_us >= f.forward_retry_us
        && t.request_timeout_us >= 2 * t.forward_retry_us
        && t.request_timeout_us <= ms(1500)
}

/// A heal some time after `t`, before the end of the fault phase (or
/// none: the final heal ends it); returns when.
fn heal_later(g: &mut Gen, faults: &mut Vec<Fault>, t: u64, end: u64) -> Option<u64> {
    if g.chance(0.7) {
        let h = (t + g.log_us(ms(5), ms(1500))).min(end.saturating_sub(1).max(t + 1));
        faults.push(Fault { at_us: h, action: Action::Heal });
        return Some(h);
    }
    None
}

/// A symmetric partition of `n` replicas: one node alone (usually a
/// replica, often the leader of the moment), or a random split into two or
/// three groups, of everyone or of the replicas only (the balancer and the
/// clients then reach every replica).
fn partition(g: &mut Gen, n: u8) -> Action {
    let replicas: Vec<Node> = (1..=n).map(Node::Replica).collect();
    if g.chance(0.3) {
        let alone = if g.chance(0.2) {
            Node::Balancer
        } else if g.chance(0.4) {
            Node::Leader
        } else if g.chance(0.5) {
            Node::Replica(1)
        } else {
            Node::Replica(g.int(1, n as u64) as u8)
        };
        let mut rest: Vec<Node> = replicas.into_iter().filter(|x| *x != alone).collect();
        rest.extend([Node::Balancer, Node::Clients].into_iter().filter(|x| *x != alone));
        return Action::Partition(vec![vec![alone], rest]);
    }
    let mut nodes = replicas;
    if n < 2 || g.chance(0.5) {
        nodes.push(Node::Balancer);
        nodes.push(Node::Clients);
    }
    g.shuffle(&mut nodes);
    let parts = if nodes.len() >= 3 && g.chance(0.3) { 3 } else { 2 };
    let mut cuts: Vec<usize> = (1..nodes.len()).collect();
    g.shuffle(&mut cuts);
    let mut cuts: Vec<usize> = cuts.into_iter().take(parts - 1).collect();
    cuts.sort();
    let mut groups = Vec::new();
    let mut from = 0;
    for c in cuts.into_iter().chain([nodes.len()]) {
        let mut part = nodes[from..c].to_vec();
        part.sort();
        groups.push(part);
        from = c;
    }
    Action::Partition(groups)
}

/// Probabilities with four significant decimals, so files read well.
fn round_prob(p: f64) -> f64 {
    (p * 10_000.0).round() / 10_000.0
}

/// Corrupted replicas are at most `sync_acks` (none with 0), and
/// `unsafe_failover` is off unless planted: the limits of the safety
/// argument, beyond which a lost write is expected, not a bug.
pub fn within_model(sc: &Scenario, planted_unsafe: bool) -> bool {
    let corrupted: BTreeSet<u8> = sc
        .faults
        .iter()
        .filter_map(|f| match f.action {
            Action::Corrupt(r) | Action::CorruptLast(r) => Some(r),
            _ => None,
        })
        .collect();
    corrupted.len() <= sc.cluster.sync_acks && (planted_unsafe || !sc.cluster.unsafe_failover)
}

// ---- judging one run ----

/// What became of one run, judged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Passed,
    /// Violations: the kind of the most serious (see [`violation_kind`]),
    /// and every line.
    Failed {
        kind: String,
        violations: Vec<String>,
    },
    /// No violation, but a check could not decide, or the run ran out of
    /// its event budget.
    Inconclusive {
        kind: String,
        why: Vec<String>,
    },
    /// The run panicked: where and why.
    Panicked(String),
}

impl Verdict {
    pub fn passed(&self) -> bool {
        *self == Verdict::Passed
    }
    /// The normalised kind, as the shrinker compares runs.
    pub fn kind(&self) -> Option<&str> {
        match self {
            Verdict::Passed => None,
            Verdict::Failed { kind, .. } | Verdict::Inconclusive { kind, .. } => Some(kind),
            Verdict::Panicked(_) => Some("panic"),
        }
    }
    /// The first line that says what went wrong.
    pub fn first(&self) -> String {
        match self {
            Verdict::Passed => "passed".into(),
            Verdict::Failed { kind, violations } => {
                violations.iter().find(|v| violation_kind(v) == *kind).cloned().unwrap_or_default()
            }
            Verdict::Inconclusive { why, .. } => why.first().cloned().unwrap_or_default(),
            Verdict::Panicked(why) => why.clone(),
        }
    }
}

/// Kinds of violation, most serious first.
pub const KINDS: [&str; 13] = [
    "led twice",
    "acknowledged write lost",
    "applied different rows",
    "linearizability",
    "session",
    "read a value never written",
    "replicas differ",
    "busy loop",
    "no replica up",
    "no leader",
    "liveness",
    "event budget",
    "other",
];

/// A violation's (or inconclusive line's) normalised kind, one of [`KINDS`].
pub fn violation_kind(v: &str) -> &'static str {
    let has = |s: &str| v.contains(s);
    if has("led twice") {
        "led twice"
    } else if has("acknowledged write lost") {
        "acknowledged write lost"
    } else if has("replicas applied different rows") {
        "applied different rows"
    } else if has("linearizability:") {
        "linearizability"
    } else if has("session:") {
        "session"
    } else if has("a value never written") {
        "read a value never written"
    } else if has("replicas differ") {
        "replicas differ"
    } else if has("busy loop") {
        "busy loop"
    } else if has("no replica is up") {
        "no replica up"
    } else if has("no leader at the end") {
        "no leader"
    } else if has("liveness:") {
        "liveness"
    } else if has("event budget") {
        "event budget"
    } else {
        "other"
    }
}

/// Judges a run's summary: the most serious violation's kind, or the
/// inconclusive checks.
pub fn judge(s: &Summary) -> Verdict {
    if !s.violations.is_empty() {
        let kind = s
            .violations
            .iter()
            .map(|v| violation_kind(v))
            .min_by_key(|k| KINDS.iter().position(|x| x == k))
            .unwrap_or("other");
        return Verdict::Failed { kind: kind.to_string(), violations: s.violations.clone() };
    }
    if !s.inconclusive.is_empty() {
        let kind = if s.inconclusive.iter().any(|v| v.contains("event budget")) {
            "event budget"
        } else {
            "inconclusive"
        };
        return Verdict::Inconclusive { kind: kind.to_string(), why: s.inconclusive.clone() };
    }
    Verdict::Passed
}

/// Runs a scenario with a seed, catching a panic (see [`QuietPanics`] for
/// where it happened); returns the verdict and, unless it panicked, the
/// summary.
pub fn check(sc: &Scenario, seed: u64) -> (Verdict, Option<Summary>) {
    match catching(|| crate::run(sc, seed, TraceLevel::None).summary) {
        Ok(s) => (judge(&s), Some(s)),
        Err(why) => (Verdict::Panicked(why), None),
    }
}

type PanicHook = Box<dyn Fn(&PanicHookInfo<'_>) + Sync + Send + 'static>;

thread_local! {
    /// Whether this thread is running a seed: its panics are recorded
    /// quietly (while a [`QuietPanics`] is installed), not printed.
    static IN_SEED: Cell<bool> = const { Cell::new(false) };
    /// Where and why the last panic of a seed on this thread happened.
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// While alive, panics inside [`catching`] (on any thread) are recorded
/// with their location instead of printed with a backtrace per seed; any
/// other panic is shown as usual. Dropping it puts the previous hook back.
pub struct QuietPanics {
    previous: Option<Arc<PanicHook>>,
}

impl QuietPanics {
    pub fn install() -> QuietPanics {
        let previous: Arc<PanicHook> = panic::take_hook().into();
        let otherwise = Arc::clone(&previous);
        panic::set_hook(Box::new(move |info| {
            if !IN_SEED.get() {
                return otherwise(info);
            }
            let message = panic_message(info.payload());
            let at = info.location().map(|l| format!(" at {}:{}:{}", l.file(), l.line(), l.column()));
            LAST_PANIC.set(Some(format!("panicked{}: {message}", at.unwrap_or_default())));
        }));
        QuietPanics { previous: Some(previous) }
    }
}

impl Drop for QuietPanics {
    fn drop(&mut self) {
        if let Some(previous) = self.previous.take() {
            panic::set_hook(Box::new(move |info| previous(info)));
        }
    }
}

/// Runs `f`, turning a panic into `Err("panicked at FILE:LINE:COL: why")`
/// (the location only while a [`QuietPanics`] is installed).
pub fn catching<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    let was = IN_SEED.replace(true);
    LAST_PANIC.take();
    let result = panic::catch_unwind(AssertUnwindSafe(f));
    IN_SEED.set(was);
    result.map_err(|payload| {
        LAST_PANIC.take().unwrap_or_else(|| format!("panicked: {}", panic_message(payload.as_ref())))
    })
}

/// Each line cut to 400 characters: a violation may quote whole 64 KiB
/// values.
pub fn shorten(text: &str) -> String {
    const MAX: usize = 400;
    let lines: Vec<String> = text
        .lines()
        .map(|l| match l.char_indices().nth(MAX) {
            Some((i, _)) => format!("{}... ({} bytes in all)", &l[..i], l.len()),
            None => l.to_string(),
        })
        .collect();
    lines.join("\n")
}

pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(a panic without a message)".to_owned()
    }
}

// ---- the sweep ----

/// One seed of a fuzz run.
#[derive(Clone, Debug)]
pub struct SeedReport {
    pub seed: u64,
    pub verdict: Verdict,
    /// The kinds that were on.
    pub kinds: BTreeSet<Kind>,
    pub scenario: Scenario,
    pub events: u64,
    pub wall_ms: f64,
    /// Of `wall_ms`, the end-of-run checks.
    pub check_wall_ms: f64,
}

/// Generates and runs one seed.
pub fn run_seed(seed: u64, p: &Profile) -> SeedReport {
    // A generator that panics is reported like a run that does.
    let sc = match catching(|| try_generate(seed, p)).and_then(|r| r) {
        Ok(sc) => sc,
        Err(e) => {
            return SeedReport {
                seed,
                verdict: Verdict::Panicked(format!("no scenario drawn for this seed: {e}")),
                kinds: kinds_for(seed, p),
                scenario: catching(|| draw(seed, p)).unwrap_or_else(|_| draw(1, &Profile::default())),
                events: 0,
                wall_ms: 0.0,
                check_wall_ms: 0.0,
            }
        }
    };
    let (verdict, summary) = check(&sc, seed);
    let (events, wall_ms, check_wall_ms) =
        summary.as_ref().map(|s| (s.events, s.wall_ms, s.check_wall_ms)).unwrap_or((0, 0.0, 0.0));
    SeedReport { seed, verdict, kinds: kinds_for(seed, p), scenario: sc, events, wall_ms, check_wall_ms }
}

/// Runs `f` on every item on `jobs` threads (each item on one thread,
/// start to end: every run stays single-threaded and deterministic); `done`
/// sees each result on the calling thread as soon as it is ready, in the
/// order they finish.
pub fn parallel<T: Sync, R: Send>(
    items: &[T],
    jobs: usize,
    f: impl Fn(&T) -> R + Sync,
    mut done: impl FnMut(R),
) {
    let jobs = jobs.clamp(1, items.len().max(1));
    if jobs == 1 {
        items.iter().for_each(|i| done(f(i)));
        return;
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::scope(|s| {
        for _ in 0..jobs {
            let tx = tx.clone();
            let (next, f) = (&next, &f);
            // Parallelism lives in this driver only: each run stays on one
            // thread and is deterministic on its own.
            s.spawn(move || loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(item) = items.get(i) else { break };
                if tx.send(f(item)).is_err() {
                    break;
                }
            });
        }
        drop(tx);
        for r in rx {
            done(r);
        }
    });
}

// ---- determinism ----

/// Where two traces of one scenario and seed first differ.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceDiff {
    /// 1-based line number.
    pub line: usize,
    /// The simulated time and node of the first run's line there (or the
    /// second's, if the first ended).
    pub time: String,
    pub node: String,
    /// The two lines (`None`: that trace had ended).
    pub first: Option<String>,
    pub second: Option<String>,
}

/// `kvsim check-determinism`: two runs with the same settings, and one with
/// the event queue's ties reversed.
#[derive(Clone, Debug)]
pub struct Determinism {
    /// Lines in the first run's trace (`TraceLevel::All`).
    pub lines: usize,
    /// `None`: the two runs printed the same bytes and summaries.
    pub difference: Option<TraceDiff>,
    /// The first run's violations.
    pub violations: Vec<String>,
    /// Where the reversed run's trace departs from the first (it may).
    pub reversed_difference: Option<TraceDiff>,
    /// The reversed run's violations, panic included.
    pub reversed_violations: Vec<String>,
}

impl Determinism {
    /// Deterministic, and reversing ties broke nothing the normal run did
    /// not break already.
    pub fn ok(&self) -> bool {
        self.difference.is_none() && (self.reversed_violations.is_empty() || !self.violations.is_empty())
    }
}

/// Runs `sc` with `seed` twice at `TraceLevel::All` and compares, then
/// once with ties reversed ([`crate::Sim::with_reversed_ties`]).
pub fn check_determinism(sc: &Scenario, seed: u64) -> Determinism {
    let full = |reversed: bool| {
        catching(|| {
            let sim = crate::Sim::new(sc, seed, TraceLevel::All);
            let sim = if reversed { sim.with_reversed_ties() } else { sim };
            let out = sim.run(seed);
            let summary = crate::summary_text(&out.summary, "-");
            (out.trace, summary, out.summary.violations)
        })
    };
    let (a, b, r) = (full(false), full(false), full(true));
    let unpack = |x: Result<(String, String, Vec<String>), String>| match x {
        Ok(t) => t,
        Err(why) => (String::new(), String::new(), vec![why]),
    };
    let (ta, sa, va) = unpack(a);
    let (tb, sb, _) = unpack(b);
    let (tr, _, vr) = unpack(r);
    let difference = first_difference(&ta, &tb).or_else(|| {
        // Same trace, different end: compare the summaries line by line.
        first_difference(&sa, &sb).map(|mut d| {
            d.time = "end".into();
            d.node = "summary".into();
            d
        })
    });
    Determinism {
        lines: ta.lines().count(),
        difference,
        violations: va,
        reversed_difference: first_difference(&ta, &tr),
        reversed_violations: vr,
    }
}

/// The first line where two traces differ.
pub fn first_difference(a: &str, b: &str) -> Option<TraceDiff> {
    let (mut la, mut lb) = (a.lines(), b.lines());
    let mut line = 0;
    loop {
        line += 1;
        match (la.next(), lb.next()) {
            (None, None) => return None,
            (x, y) if x == y => continue,
            (x, y) => {
                let shown = x.or(y).unwrap_or_default();
                let mut words = shown.split_whitespace();
                let time = words.next().unwrap_or_default().to_string();
                let node = words.next().unwrap_or_default().to_string();
                return Some(TraceDiff {
                    line,
                    time,
                    node,
                    first: x.map(str::to_owned),
                    second: y.map(str::to_owned),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::parse;

    #[test]
    fn a_seed_names_one_scenario() {
        let p = Profile::default();
        for seed in 1..=50 {
            assert_eq!(generate(seed, &p), generate(seed, &p), "seed {seed}");
        }
        assert_ne!(generate(1, &p), generate(2, &p));
    }

    #[test]
    fn generated_scenarios_survive_the_round_trip_through_toml() {
        let mut p = Profile::default();
        p.plant("epochs_promised_twice").unwrap();
        for seed in 1..=300 {
            let sc = generate(seed, &p);
            for text in [sc.to_toml(), sc.to_toml_compact()] {
                let back =
                    parse(&text, "gen.toml", "gen").unwrap_or_else(|e| panic!("seed {seed}: {e}\n{text}"));
                assert_eq!(back, sc, "seed {seed}:\n{text}");
            }
        }
    }

    #[test]
    fn every_kind_is_drawn_and_the_model_limits_hold() {
        let p = Profile::default();
        let mut seen = BTreeSet::new();
        let mut reads = BTreeSet::new();
        for seed in 1..=400 {
            seen.extend(kinds_for(seed, &p));
            let sc = generate(seed, &p);
            assert!(within_model(&sc, false), "seed {seed}");
            assert!(timing_valid(&sc), "seed {seed}: {:?}", sc.cluster.timing);
            let heal = sc.faults.iter().rposition(|f| f.action == Action::Heal).expect("a final heal");
            let end = sc.faults[heal].at_us;
            let after: Vec<&Fault> = sc.faults.iter().filter(|f| f.at_us > end).collect();
            assert!(
                after.len() <= 1 && (after.is_empty() || kinds_for(seed, &p).contains(&Kind::Lasting)),
                "seed {seed}"
            );
            for g in &sc.workload.groups {
                reads.insert(format!("{:?}/{}", g.read, g.rate_per_s.is_some()));
            }
            let replicas = sc.cluster.replicas.len() as u8;
            assert!((1..=7).contains(&replicas) && sc.cluster.sync_acks < replicas as usize);
        }
        assert_eq!(seen.len(), Kind::ALL.len(), "{seen:?}");
        assert_eq!(reads.len(), 6, "every read mode, open and closed loop: {reads:?}");
    }

    #[test]
    fn profiles_parse_and_name_their_mistakes() {
        let p = Profile::parse("replicas = [3]\nfaults = [\"crash\", \"pause\"]\nalways = [\"crash\"]\nbugs = [\"unsafe_failover\"]\n")
            .unwrap();
        assert_eq!(p.replicas, vec![(3, 1)]);
        assert_eq!(p.enabled, [Kind::Crash, Kind::Pause].into_iter().collect());
        for seed in 1..=20 {
            let sc = generate(seed, &p);
            assert_eq!(sc.cluster.replicas.len(), 3);
            assert!(sc.cluster.unsafe_failover);
            assert!(sc
                .faults
                .iter()
                .any(|f| matches!(f.action, Action::Crash(Node::Replica(_) | Node::Leader))));
            assert!(kinds_for(seed, &p).is_subset(&p.enabled));
        }
        assert!(Profile::parse("faults = [\"earthquake\"]").unwrap_err().contains("earthquake"));
        assert!(Profile::parse("bugs = [\"nope\"]").unwrap_err().contains("nope"));
        assert!(Profile::parse("replicas = [0]").is_err());
        assert!(Profile::parse("colour = 1").is_err());
    }

    #[test]
    fn profiles_may_fix_any_scenario_field() {
        let p = Profile::parse(
            "replicas = [3]\n[scenario.cluster]\nrequest_timeout_ms = 300\n[scenario.network]\nduplicate_probability = 0.5\n",
        )
        .unwrap();
        for seed in 1..=10 {
            let sc = generate(seed, &p);
            assert_eq!(sc.cluster.timing.request_timeout_us, 300_000);
            assert_eq!(sc.network.duplicate_probability, 0.5);
            assert_eq!(parse(&sc.to_toml(), "t", "t").unwrap(), sc);
        }
        let e = Profile::parse("[scenario.cluster]\nreplicas = 12\n").unwrap_err();
        assert!(e.contains("replicas"), "{e}");
    }

    #[test]
    fn violations_have_kinds() {
        assert_eq!(violation_kind("at 1.000ms: e3 led twice: by r1 and again by r2"), "led twice");
        assert_eq!(violation_kind("acknowledged write lost: c1 #2 `set k0=x`"), "acknowledged write lost");
        assert_eq!(violation_kind("linearizability: key k1 ..."), "linearizability");
        assert_eq!(violation_kind("liveness: c1 #3 `get k0` sent at ..."), "liveness");
        assert_eq!(violation_kind("replicas differ after the quiet period: r1 ..."), "replicas differ");
    }
}
