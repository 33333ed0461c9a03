//! The discrete-event simulator: one seeded run of a scenario.
//!
//! Everything random comes from ChaCha generators derived from the run's root
//! seed (one per subsystem, so adding randomness to one does not reshuffle
//! the others). Events are ordered by (time, insertion sequence), so a seed
//! always gives the same run, byte for byte.

use crate::check::{self, Record};
use crate::disk::{Recovery, SimDisk};
use crate::scenario::{Action, Distribution, Fault, Node, Scenario};
use crate::timeline::{Recorder, Role, Timeline};
use kvstore::balancer::Balancer;
use kvstore::client::{Client, ClientConfig};
use kvstore::replica::Replica;
use kvstore::{ClientId, Effect, Epoch, Event, Msg, NodeId, Op, Outbox, ReplicaId, Stored, Time};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::fmt::Write as _;

/// How much of a run the trace shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum TraceLevel {
    None,
    /// Client operations, faults and state changes.
    Ops,
    /// Plus every message, except periodic chatter (pings, empty heartbeats
    /// and their acknowledgements).
    Messages,
    /// Everything.
    All,
}

/// The closing summary; `--json` prints it.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub scenario: String,
    pub seed: u64,
    pub sim_ms: f64,
    pub events: u64,
    pub wall_ms: f64,
    pub ops_ok: u64,
    pub ops_failed: u64,
    pub ops_ambiguous: u64,
    /// Submitted but not finished when the run ended.
    pub ops_unfinished: u64,
    pub acked_writes: u64,
    pub lost_acked_writes: u64,
    pub failovers: u64,
    pub failover_ms_max: Option<f64>,
    pub stale_reads_max_lsn: u64,
    /// The stalest `any` read: how long before it the first row it missed
    /// had been applied somewhere.
    pub stale_reads_max_ms: f64,
    pub messages_sent: u64,
    pub messages_dropped: u64,
    pub violations: Vec<String>,
    /// Checks that ran out of their budget undecided (see
    /// `check_lin::LinBudget`), or a run stopped at its event budget
    /// (`[run] max_events`): neither a pass nor a violation.
    pub inconclusive: Vec<String>,
    /// Of `wall_ms`, the time the end-of-run checks took (`check::run_all`).
    pub check_wall_ms: f64,
}

pub struct Outcome {
    pub summary: Summary,
    pub trace: String,
    /// The run as data for the HTML view, when asked for
    /// (`Sim::with_timeline`); its `summary` is left for the caller.
    pub timeline: Option<Timeline>,
}

enum Ev {
    Deliver {
        from: NodeId,
        to: NodeId,
        msg: Msg,
        /// The balancer's incarnation when a client sent this to it: a
        /// client talks to the balancer over a connection (as in kvnode),
        /// so what was in flight when the balancer restarted is lost.
        link: u64,
        /// The message's number in the timeline (`NO_ID` when not recording).
        mid: u32,
    },
    Tick(NodeId),
    DiskDone {
        replica: usize,
        incarnation: u64,
        id: u64,
    },
    /// A disk write that completed while its replica was paused: the
    /// replica hears of it when it resumes (unless it crashed meanwhile).
    Persisted {
        replica: usize,
        incarnation: u64,
        id: u64,
    },
    Fault(usize),
    /// A client's next workload operation is due.
    ClientOp(usize),
}

/// A queued event, packed into one integer so the heap compares and moves
/// a single word pair: the time in the top 64 bits, then the insertion
/// sequence (`SEQ_BITS`), then the slab slot the event waits in. Distinct
/// sequences make keys distinct, so ordering by the key is ordering by
/// (time, sequence), as before; the slot never decides. Stored inverted
/// (`!key`), since `BinaryHeap` pops its largest.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Entry(u128);

const SLOT_BITS: u32 = 24;
const SEQ_BITS: u32 = 64 - SLOT_BITS;

impl Entry {
    fn new(at: Time, seq: u64, slot: u32) -> Entry {
        assert!(seq < 1 << SEQ_BITS, "at most 2^{SEQ_BITS} events per run");
        assert!(slot < 1 << SLOT_BITS, "at most 2^{SLOT_BITS} events queued at once");
        Entry(!((u128::from(at.0) << 64) | u128::from(seq << SLOT_BITS) | u128::from(slot)))
    }
    fn at(self) -> Time {
        Time(((!self.0) >> 64) as u64)
    }
    fn slot(self) -> u32 {
        (!self.0) as u32 & ((1 << SLOT_BITS) - 1)
    }
}

struct ClientSlot {
    machine: Client,
    group: usize,
    /// Next script line, for scripted groups.
    script_pos: usize,
    /// Workload operations issued by this client.
    issued: u64,
    rng: ChaCha8Rng,
}

pub struct Sim<'a> {
    sc: &'a Scenario,
    now: Time,
    queue: BinaryHeap<Entry>,
    slab: Vec<Option<Ev>>,
    free: Vec<u32>,
    seq: u64,
    events: u64,
    rng_net: ChaCha8Rng,
    rng_disk: ChaCha8Rng,
    rng_work: ChaCha8Rng,
    /// Balancer incarnations.
    rng_ids: ChaCha8Rng,
    /// The (client, seq) of the row first seen applied at each LSN (index
    /// LSN - 1; a no-op is (0, 0)), and the last applied LSN looked at per
    /// replica (`watch_applied`).
    applied_rows: Vec<Option<(u64, u64)>>,
    applied_seen: Vec<u64>,
    /// Replica incarnations (`Replica::with_incarnation`).
    rng_lives: ChaCha8Rng,
    /// Bumped by every balancer crash (see `Ev::Deliver::link`).
    balancer_incarnation: u64,
    /// Replicas crashed as `leader` and not yet restarted as `leader`,
    /// most recent last.
    leaders_crashed: Vec<u8>,
    /// Nodes paused until then (`Action::Pause`).
    paused_until: BTreeMap<NodeId, Time>,
    /// Each replica's and the balancer's clock: (rate in ppm, offset).
    clocks: BTreeMap<NodeId, (u64, u64)>,
    replicas: Vec<Option<Replica>>,
    disks: Vec<SimDisk>,
    balancer: Option<Balancer>,
    clients: Vec<ClientSlot>,
    /// Earliest tick already queued for each node.
    /// (indexed by `tick_index`)
    ticks: Vec<Option<Time>>,
    /// Directed links that lose everything.
    blocked: BTreeSet<(NodeId, NodeId)>,
    history: Vec<Record>,
    written: BTreeSet<u64>,
    trace: String,
    level: TraceLevel,
    // statistics and online checks
    messages_sent: u64,
    messages_dropped: u64,
    violations: Vec<String>,
    leaders: BTreeMap<Epoch, ReplicaId>,
    promotions: u64,
    leader_failed_at: Option<(Time, Epoch)>,
    failover_us_max: Option<u64>,
    last_fault_at: Time,
    workload_end: Time,
    stale_max: u64,
    stale_max_us: u64,
    /// When each LSN (index + 1) was first applied by any replica.
    first_applied_at: Vec<Time>,
    /// When a client operation last finished.
    last_done: Time,
    out: Outbox,
    /// Events at the same time are handled in reverse insertion order
    /// (`kvsim check-determinism`): a run must not depend on that order.
    reverse_ties: bool,
    /// The run stopped at `[run] max_events`.
    out_of_events: bool,
    /// Records the run for the HTML view; `None` (the usual) costs nothing
    /// but the test.
    rec: Option<Box<Recorder>>,
    timeline: Option<Timeline>,
}

/// A message not recorded.
const NO_ID: u32 = u32::MAX;

impl<'a> Sim<'a> {
    pub fn new(sc: &'a Scenario, seed: u64, level: TraceLevel) -> Sim<'a> {
        let mut root = ChaCha8Rng::seed_from_u64(seed);
        let mut child = || ChaCha8Rng::seed_from_u64(root.random());
        let rng_net = child();
        let rng_disk = child();
        let mut rng_work = child();
        let rng_ids = child();
        let mut rng_clock = child();
        let rng_lives = child();
        let n = sc.cluster.replicas.len();
        let mut clocks = BTreeMap::new();
        if sc.clock.drift_max_ppm > 0 || sc.clock.skew_max_us > 0 {
            let d = sc.clock.drift_max_ppm as i64;
            let nodes = sc.cluster.replicas.iter().map(|r| NodeId::Replica(*r)).chain([NodeId::Balancer]);
            for node in nodes {
                let rate = (1_000_000 + rng_clock.random_range(-d..=d)) as u64;
                let offset = rng_clock.random_range(0..=sc.clock.skew_max_us);
                clocks.insert(node, (rate, offset));
            }
        }
        let mut clients = Vec::new();
        for (gi, g) in sc.workload.groups.iter().enumerate() {
            for _ in 0..g.clients {
                let id = ClientId(clients.len() as u64 + 1);
                let mut cfg = ClientConfig::new(id, g.read);
                cfg.bug_counts_unavailable_answers = sc.cluster.bugs.unavailable_counts_answers;
                clients.push(ClientSlot {
                    machine: Client::new(cfg),
                    group: gi,
                    script_pos: 0,
                    issued: 0,
                    rng: ChaCha8Rng::seed_from_u64(rng_work.random()),
                });
            }
        }
        let clients_len = clients.len() as u64;
        Sim {
            sc,
            now: Time::ZERO,
            queue: BinaryHeap::new(),
            slab: Vec::new(),
            free: Vec::new(),
            seq: 0,
            events: 0,
            rng_net,
            rng_disk,
            rng_work,
            rng_ids,
            rng_lives,
            applied_rows: Vec::new(),
            applied_seen: vec![0; n],
            balancer_incarnation: 0,
            paused_until: BTreeMap::new(),
            leaders_crashed: Vec::new(),
            clocks,
            replicas: (0..n).map(|_| None).collect(),
            disks: (0..n).map(|_| SimDisk::default()).collect(),
            balancer: None,
            clients,
            ticks: vec![None; tick_index(NodeId::Client(ClientId(clients_len))) + 1],
            blocked: BTreeSet::new(),
            history: Vec::new(),
            written: BTreeSet::new(),
            trace: String::new(),
            level,
            messages_sent: 0,
            messages_dropped: 0,
            violations: Vec::new(),
            leaders: BTreeMap::new(),
            promotions: 0,
            leader_failed_at: None,
            failover_us_max: None,
            last_fault_at: Time::ZERO,
            workload_end: Time(sc.workload.duration_us),
            stale_max: 0,
            stale_max_us: 0,
            first_applied_at: Vec::new(),
            last_done: Time::ZERO,
            out: Outbox::new(),
            reverse_ties: false,
            out_of_events: false,
            rec: None,
            timeline: None,
        }
    }

    /// Also records the run as a [`Timeline`] (`Outcome::timeline`), for
    /// `kvsim run --html`. The run and its trace are unchanged.
    pub fn with_timeline(mut self) -> Self {
        let sc = self.sc;
        let modes: Vec<kvstore::ReadMode> = self.clients.iter().map(|c| c.machine.read_mode()).collect();
        self.rec = Some(Box::new(Recorder::new(&sc.name, 0, &sc.about, &sc.cluster.replicas, &modes)));
        self
    }

    /// Events due at the same time are handled in the reverse of the order
    /// they were queued in (scenario faults at one time still happen in
    /// file order: that order is part of the scenario). The run may differ;
    /// it must not break an invariant.
    pub fn with_reversed_ties(mut self) -> Self {
        self.reverse_ties = true;
        self
    }

    /// Runs the scenario to the end of its quiet period and checks it.
    pub fn run(mut self, seed: u64) -> Outcome {
        // Wall time is only reported (bench, --json), never fed to the run.
        #[allow(clippy::disallowed_methods)]
        let wall = std::time::Instant::now();
        let sc = self.sc;
        for i in 0..self.replicas.len() {
            self.start_replica(i);
        }
        let lb_now = self.clock(NodeId::Balancer);
        self.balancer = Some(Balancer::new(sc.cluster.clone(), lb_now, self.rng_ids.random()));
        self.reschedule(NodeId::Balancer);
        let faults: Vec<usize> = if self.reverse_ties {
            (0..sc.faults.len()).rev().collect()
        } else {
            (0..sc.faults.len()).collect()
        };
        for i in faults {
            self.push(Time(sc.faults[i].at_us), Ev::Fault(i));
        }
        for i in 0..self.clients.len() {
            let start = sc.workload.groups[self.clients[i].group].start_us;
            let jitter = self.rng_work.random_range(0..1000);
            self.push(Time(start + jitter), Ev::ClientOp(i));
        }
        // The run ends after the quiet period, once every client is idle and
        // the last answer is a few heartbeats old (so followers have heard the
        // final commit point), but never later than `cap`.
        let mut end = Time(sc.workload.duration_us + sc.run.quiet_us);
        let cap = end + 10_000_000;
        let settle = 10 * sc.cluster.timing.heartbeat_us;
        while let Some(e) = self.queue.pop() {
            if e.at() > end {
                let idle = self.clients.iter().all(|c| c.machine.is_idle());
                // A run whose convergence is checked also waits for the
                // cluster to be at rest (a failover that began in the last
                // milliseconds finishes first): the checker judges the
                // system, not the instant the clock stopped.
                let at_rest = !sc.run.check_convergence || self.cluster_at_rest();
                let settled = idle && at_rest && self.last_done + settle <= end;
                if settled || end >= cap {
                    break;
                }
                end = if idle && at_rest { self.last_done + settle } else { end + settle }.min(cap);
                if e.at() > end {
                    self.queue.push(e);
                    continue;
                }
            }
            debug_assert!(e.at() >= self.now, "time never goes backwards");
            self.now = e.at();
            self.events += 1;
            let ev = self.slab[e.slot() as usize].take().expect("queued event is in the slab");
            self.free.push(e.slot());
            self.step(ev);
            if self.violations.len() > 100 {
                break;
            }
            if sc.run.max_events.is_some_and(|m| self.events >= m) {
                self.out_of_events = true;
                break;
            }
        }
        if !self.out_of_events {
            self.now = self.now.max(end);
        }
        let mut summary = self.finish(seed);
        summary.wall_ms = wall.elapsed().as_secs_f64() * 1000.0;
        let timeline = self.timeline.take().map(|mut t| {
            t.seed = seed;
            t
        });
        Outcome { summary, trace: self.trace, timeline }
    }

    fn push(&mut self, at: Time, ev: Ev) {
        self.seq += 1;
        let slot = match self.free.pop() {
            Some(s) => {
                self.slab[s as usize] = Some(ev);
                s
            }
            None => {
                self.slab.push(Some(ev));
                self.slab.len() as u32 - 1
            }
        };
        let seq = if self.reverse_ties { (1 << SEQ_BITS) - 1 - self.seq } else { self.seq };
        self.queue.push(Entry::new(at, seq, slot));
    }

    fn step(&mut self, ev: Ev) {
        let target = match &ev {
            Ev::Deliver { to, .. } => Some(*to),
            Ev::Tick(n) => Some(*n),
            Ev::Persisted { replica, .. } => Some(NodeId::Replica(ReplicaId(*replica as u8 + 1))),
            _ => None,
        };
        if let Some(until) = target.and_then(|n| self.paused_until.get(&n).copied()) {
            if until > self.now {
                // Paused: it handles this when it resumes, in arrival order.
                if let (Ev::Tick(n), true) = (&ev, true) {
                    self.ticks[tick_index(*n)] = Some(until);
                }
                self.push(until, ev);
                return;
            }
        }
        match ev {
            Ev::Deliver { from, to, msg, link, mid } => {
                let broken = matches!((from, to), (NodeId::Client(_), NodeId::Balancer))
                    && link != self.balancer_incarnation;
                if broken {
                    if let Some(rec) = &mut self.rec {
                        rec.fate(mid, self.now, "stale");
                    }
                    if self.level >= TraceLevel::Messages {
                        self.line(
                            from,
                            format_args!("-x {to} {msg} (lost: sent to a balancer since restarted)"),
                        );
                    }
                    return;
                }
                self.deliver(from, to, msg, mid)
            }
            Ev::Tick(node) => self.tick(node),
            Ev::DiskDone { replica, incarnation, id } => {
                if !self.disks[replica].complete(incarnation, id) {
                    return; // lost in a crash
                }
                let node = NodeId::Replica(ReplicaId(replica as u8 + 1));
                if self.paused_until.get(&node).is_some_and(|t| *t > self.now) {
                    // On disk now; the paused process hears of it later.
                    let until = self.paused_until[&node];
                    self.push(until, Ev::Persisted { replica, incarnation, id });
                    return;
                }
                self.persisted(replica, id);
            }
            Ev::Persisted { replica, incarnation, id } => {
                if self.disks[replica].incarnation == incarnation {
                    self.persisted(replica, id);
                }
            }
            Ev::Fault(i) => {
                let f = self.sc.faults[i].clone();
                self.fault(&f);
            }
            Ev::ClientOp(i) => self.client_op(i),
        }
    }

    // ---- nodes ----

    /// Online check: every replica applies the same row at each LSN. The
    /// rows newly applied since the last look are compared with the first
    /// seen applied there (those compacted within the same input go
    /// unseen, and another replica's look covers them).
    fn watch_applied(&mut self, r: ReplicaId) {
        let i = r.0 as usize - 1;
        let Some(m) = &self.replicas[i] else { return };
        let applied = m.applied().0;
        while (self.first_applied_at.len() as u64) < applied {
            self.first_applied_at.push(self.now);
        }
        let from = self.applied_seen[i];
        self.applied_seen[i] = applied;
        if applied <= from {
            return; // nothing new (or restarted: it starts again from its base)
        }
        let mut clash = None;
        for lsn in (from + 1)..=applied {
            let Some(row) = m.log().get(kvstore::Lsn(lsn)) else { continue };
            let what = match &row.body {
                kvstore::RowBody::Put { req, .. } => (req.client.0, req.seq),
                kvstore::RowBody::Noop => (0, 0),
            };
            let at = lsn as usize - 1;
            if self.applied_rows.len() <= at {
                self.applied_rows.resize(at + 1, None);
            }
            match self.applied_rows[at] {
                None => self.applied_rows[at] = Some(what),
                Some(first) if first != what && clash.is_none() => clash = Some((lsn, first, what)),
                Some(_) => {}
            }
        }
        if let Some((lsn, (c1, s1), (c2, s2))) = clash {
            self.violation(format!(
                "replicas applied different rows at lsn {lsn}: first c{c1} #{s1}, then r{} applied c{c2} #{s2}",
                r.0
            ));
        }
    }

    /// A replica hears that its writes up to `id` are durable.
    fn persisted(&mut self, replica: usize, id: u64) {
        let node = NodeId::Replica(ReplicaId(replica as u8 + 1));
        let now = self.clock(node);
        let mut out = std::mem::take(&mut self.out);
        if let Some(r) = &mut self.replicas[replica] {
            r.on_persisted(now, id, &mut out);
        }
        self.handle(node, out);
    }

    /// The time on `n`'s own clock (see `scenario::Clock`).
    fn clock(&self, n: NodeId) -> Time {
        match self.clocks.get(&n) {
            Some(&(rate, offset)) => Time(((self.now.0 as u128 * rate as u128) / 1_000_000) as u64 + offset),
            None => self.now,
        }
    }

    /// The simulated time at which `n`'s clock first reads `t` (or now).
    fn sim_time(&self, n: NodeId, t: Time) -> Time {
        match self.clocks.get(&n) {
            Some(&(rate, offset)) => {
                let local = t.0.saturating_sub(offset) as u128;
                let at = (local * 1_000_000).div_ceil(rate as u128).min(u64::MAX as u128) as u64;
                Time(at).max(self.now)
            }
            None => t.max(self.now),
        }
    }

    fn start_replica(&mut self, i: usize) {
        let id = ReplicaId(i as u8 + 1);
        let cfg = self.sc.cluster.clone();
        if self.disks[i].resyncing {
            // Restarted before its re-sync finished: start over.
            self.line_raw(
                &format!("r{}", id.0),
                format_args!("** recovery: re-sync unfinished; discarding the partial copy"),
            );
            self.disks[i].wipe();
            let life = self.rng_lives.random();
            self.replicas[i] =
                Some(Replica::resync(id, cfg, self.disks[i].promised()).with_incarnation(life));
            self.reschedule(NodeId::Replica(id));
            return;
        }
        let r = match self.disks[i].recover() {
            Recovery::Clean(stored) if self.disks[i].missing => {
                self.line_raw(
                    &format!("r{}", id.0),
                    format_args!(
                        "** recovery: still missing rows cut before; catching up before it votes alone"
                    ),
                );
                Replica::recover_missing(id, cfg, stored)
            }
            Recovery::Clean(stored) => Replica::recover(id, cfg, stored),
            Recovery::TornTail(stored, dropped) if cfg.bugs.cut_tail_trusted => {
                self.disks[i].missing = false;
                self.line_raw(
                    &format!("r{}", id.0),
                    format_args!(
                        "** recovery: cut a torn write ({dropped} bytes) off the log tail (trusted: bug)"
                    ),
                );
                Replica::recover(id, cfg, stored)
            }
            Recovery::TornTail(stored, dropped) => {
                self.line_raw(
                    &format!("r{}", id.0),
                    format_args!("** recovery: cut a torn or damaged write ({dropped} bytes) off the log tail; may lack rows it confirmed"),
                );
                Replica::recover_missing(id, cfg, stored)
            }
            Recovery::Corrupt { offset, why } => {
                self.line_raw(
                    &format!("r{}", id.0),
                    format_args!("** recovery: log corrupt at byte {offset} ({why}); discarding it and re-syncing from the leader"),
                );
                self.disks[i].wipe();
                Replica::resync(id, cfg, self.disks[i].promised())
            }
        };
        self.applied_seen[i] = r.applied().0;
        self.replicas[i] = Some(r.with_incarnation(self.rng_lives.random()));
        self.reschedule(NodeId::Replica(id));
    }

    fn is_up(&self, n: NodeId) -> bool {
        match n {
            NodeId::Balancer => self.balancer.is_some(),
            NodeId::Replica(r) => self.replicas.get(r.0 as usize - 1).is_some_and(Option::is_some),
            NodeId::Client(_) => true,
        }
    }

    fn next_wakeup(&self, n: NodeId) -> Option<Time> {
        match n {
            NodeId::Balancer => self.balancer.as_ref().and_then(Balancer::next_wakeup),
            NodeId::Replica(r) => self.replicas[r.0 as usize - 1].as_ref().and_then(Replica::next_wakeup),
            NodeId::Client(c) => self.clients[c.0 as usize - 1].machine.next_wakeup(),
        }
    }

    fn reschedule(&mut self, n: NodeId) {
        let Some(w) = self.next_wakeup(n) else { return };
        let w = self.sim_time(n, w);
        let slot = &mut self.ticks[tick_index(n)];
        if slot.is_some_and(|t| t <= w && t >= self.now) {
            return;
        }
        let at = w;
        *slot = Some(at);
        self.push(at, Ev::Tick(n));
    }

    fn tick(&mut self, n: NodeId) {
        if self.ticks[tick_index(n)] == Some(self.now) {
            self.ticks[tick_index(n)] = None;
        }
        let now = self.clock(n);
        if self.next_wakeup(n).is_none_or(|w| w > now) {
            self.reschedule(n);
            return;
        }
        let mut out = std::mem::take(&mut self.out);
        match n {
            NodeId::Balancer => {
                if let Some(b) = &mut self.balancer {
                    b.on_tick(now, &mut out)
                }
            }
            NodeId::Replica(r) => {
                if let Some(m) = &mut self.replicas[r.0 as usize - 1] {
                    m.on_tick(now, &mut out)
                }
            }
            NodeId::Client(c) => self.clients[c.0 as usize - 1].machine.on_tick(now, &mut out),
        }
        if self.next_wakeup(n).is_some_and(|w| w <= now) {
            self.violation(format!("{n} asked to be woken at or before now after a tick (busy loop)"));
        }
        self.handle(n, out);
    }

    fn deliver(&mut self, from: NodeId, to: NodeId, msg: Msg, mid: u32) {
        if self.rec.is_some() {
            let fate = if self.is_up(to) { "delivered" } else { "down" };
            if let Some(rec) = &mut self.rec {
                rec.fate(mid, self.now, fate);
            }
        }
        if !self.is_up(to) {
            if self.level >= TraceLevel::Messages && (self.level == TraceLevel::All || !msg.is_chatter()) {
                self.line(from, format_args!("-x {to} {msg} (lost: {to} is down)"));
            }
            return;
        }
        if self.level == TraceLevel::All || (self.level == TraceLevel::Messages && !msg.is_chatter()) {
            self.line(to, format_args!("<- {from} {msg}"));
        }
        let now = self.clock(to);
        let mut out = std::mem::take(&mut self.out);
        match to {
            NodeId::Balancer => self.balancer.as_mut().expect("up").on_message(now, from, msg, &mut out),
            NodeId::Replica(r) => {
                self.replicas[r.0 as usize - 1].as_mut().expect("up").on_message(now, from, msg, &mut out)
            }
            NodeId::Client(c) => self.clients[c.0 as usize - 1].machine.on_message(now, from, msg, &mut out),
        }
        self.handle(to, out);
    }

    /// Carries out a machine's effects.
    fn handle(&mut self, n: NodeId, mut out: Outbox) {
        if let NodeId::Replica(r) = n {
            self.watch_applied(r);
        }
        for e in out.drain() {
            match e {
                Effect::Send { to, msg } => self.send(n, to, msg),
                Effect::Persist { id, op } => {
                    let NodeId::Replica(r) = n else { continue };
                    let i = r.0 as usize - 1;
                    let d = &self.sc.disk;
                    // At least a microsecond, so writes complete one after
                    // another in time, whatever the order of ties.
                    let latency = (d.write_min_us
                        + sample_exp(&mut self.rng_disk, d.write_mean_us.saturating_sub(d.write_min_us)))
                    .max(1);
                    let disk = &mut self.disks[i];
                    let done = disk.submit(id, &op, self.now, latency);
                    let incarnation = disk.incarnation;
                    self.push(done, Ev::DiskDone { replica: i, incarnation, id });
                }
                Effect::Done(c) => {
                    let NodeId::Client(id) = n else { continue };
                    self.completed(id.0 as usize - 1, c);
                }
                Effect::Event(ev) => self.event(n, ev),
            }
        }
        self.out = out;
        self.reschedule(n);
        if self.rec.is_some() && !matches!(n, NodeId::Client(_)) {
            self.record_role(n);
        }
    }

    /// `n`'s role and epoch now, into the timeline's bands.
    fn record_role(&mut self, n: NodeId) {
        let role = match n {
            NodeId::Replica(r) => match &self.replicas[r.0 as usize - 1] {
                None => Role { state: "down", epoch: None, missing: false, leader: None },
                Some(m) => {
                    let s = m.status();
                    match s.leading {
                        Some(e) => {
                            Role { state: "leader", epoch: Some(e.0), missing: s.missing, leader: None }
                        }
                        None => Role {
                            state: "follower",
                            epoch: Some(s.promised.0),
                            missing: s.missing,
                            leader: None,
                        },
                    }
                }
            },
            NodeId::Balancer => match self.balancer.as_ref().map(Balancer::leader) {
                None => Role { state: "down", epoch: None, missing: false, leader: None },
                Some(None) => Role { state: "searching", epoch: None, missing: false, leader: None },
                Some(Some((r, e))) => {
                    Role { state: "routing", epoch: Some(e.0), missing: false, leader: Some(r.0) }
                }
            },
            NodeId::Client(_) => return,
        };
        let now = self.now;
        if let Some(rec) = &mut self.rec {
            rec.role(now, n, role);
        }
    }

    fn event(&mut self, n: NodeId, ev: Event) {
        if self.level >= TraceLevel::Ops {
            self.line(n, format_args!("{ev}"));
        }
        if let Some(rec) = &mut self.rec {
            let line = crate::timeline::line(self.now, &n.to_string(), format_args!("{ev}"));
            rec.mark(self.now, Some(n), "event", line);
        }
        match ev {
            Event::BecameLeader { epoch, .. } => {
                let NodeId::Replica(r) = n else { return };
                // An epoch is led once: by one replica, and by it only once
                // (a restarted replica leading again could build another log).
                if let Some(prev) = self.leaders.insert(epoch, r) {
                    self.violation(format!("{epoch} led twice: by r{} and again by r{}", prev.0, r.0));
                }
            }
            Event::Promoted { .. } => self.promotions += 1,
            Event::Resynced { .. } => {
                if let NodeId::Replica(r) = n {
                    let disk = &mut self.disks[r.0 as usize - 1];
                    disk.resyncing = false;
                    disk.missing = false;
                }
            }
            _ => {}
        }
    }

    fn send(&mut self, from: NodeId, to: NodeId, msg: Msg) {
        self.messages_sent += 1;
        let show = self.level == TraceLevel::All || (self.level == TraceLevel::Messages && !msg.is_chatter());
        let now = self.now;
        let mid = self.rec.as_mut().map_or(NO_ID, |rec| rec.send(now, from, to, &msg, false));
        if self.blocked.contains(&(from, to)) {
            if let Some(rec) = &mut self.rec {
                rec.fate(mid, now, "partitioned");
            }
            self.messages_dropped += 1;
            if show {
                self.line(from, format_args!("-x {to} {msg} (partitioned)"));
            }
            return;
        }
        let net = &self.sc.network;
        // Random loss and duplication end at `faults_until_us`.
        let faulty = net.faults_until_us.is_none_or(|t| self.now.0 < t);
        if faulty && net.drop_probability > 0.0 && self.rng_net.random_bool(net.drop_probability) {
            if let Some(rec) = &mut self.rec {
                rec.fate(mid, now, "dropped");
            }
            self.messages_dropped += 1;
            if show {
                self.line(from, format_args!("-x {to} {msg} (dropped)"));
            }
            return;
        }
        if faulty && net.duplicate_probability > 0.0 && self.rng_net.random_bool(net.duplicate_probability) {
            let delay = self.delay();
            let link = self.balancer_incarnation;
            let mid = self.rec.as_mut().map_or(NO_ID, |rec| rec.send(now, from, to, &msg, true));
            self.push(self.now + delay, Ev::Deliver { from, to, msg: msg.clone(), link, mid });
        }
        let delay = self.delay();
        let link = self.balancer_incarnation;
        self.push(self.now + delay, Ev::Deliver { from, to, msg, link, mid });
    }

    /// One message's delay; reordering follows from independent delays.
    fn delay(&mut self) -> u64 {
        let net = &self.sc.network;
        let extra = net.delay_mean_us.saturating_sub(net.delay_min_us);
        let r = &mut self.rng_net;
        net.delay_min_us
            + match net.distribution {
                Distribution::Constant => extra,
                Distribution::Uniform => r.random_range(0..=2 * extra),
                Distribution::Exponential => sample_exp(r, extra),
                Distribution::Pareto => {
                    // Shape 2: mean = scale * 2, so scale = extra / 2.
                    let u: f64 = r.random_range(f64::EPSILON..1.0);
                    ((extra as f64 / 2.0) * (1.0 / u.sqrt() - 1.0) * 2.0).min(1e9) as u64
                }
            }
    }

    // ---- faults ----

    fn fault(&mut self, f: &Fault) {
        self.last_fault_at = self.now;
        let leader_before = self.current_leader();
        self.line_raw("fault", format_args!("{}", f.action));
        // `leader` names a replica only now.
        let lead = leader_before.map(|(r, _)| Node::Replica(r.0));
        let action = match &f.action {
            Action::Crash(Node::Leader) => {
                if let Some((r, _)) = leader_before {
                    self.leaders_crashed.push(r.0);
                }
                lead.map(Action::Crash)
            }
            Action::Restart(Node::Leader) => {
                let down =
                    self.leaders_crashed.iter().rposition(|r| self.replicas[*r as usize - 1].is_none());
                down.map(|i| Action::Restart(Node::Replica(self.leaders_crashed.remove(i))))
            }
            Action::Pause { node: Node::Leader, for_us } => {
                lead.map(|node| Action::Pause { node, for_us: *for_us })
            }
            a => Some(a.clone()),
        };
        let Some(action) = action else {
            self.line_raw("fault", format_args!("(no such replica now: nothing happens)"));
            if let Some(rec) = &mut self.rec {
                let line = crate::timeline::line(
                    self.now,
                    "fault",
                    format_args!("{} (no such replica now: nothing happens)", f.action),
                );
                rec.mark(self.now, None, "fault", line);
            }
            return;
        };
        if self.rec.is_some() {
            self.record_fault(&f.action, &action);
        }
        if action != f.action {
            self.line_raw("fault", format_args!("(that is {action})"));
        }
        match &action {
            Action::Crash(Node::Balancer) => {
                self.balancer = None;
                self.balancer_incarnation += 1;
            }
            Action::Crash(Node::Replica(r)) => {
                let i = *r as usize - 1;
                self.replicas[i] = None;
                // Writes not yet durable are lost; one in progress may tear.
                let p = self.sc.disk.torn_write_probability;
                let torn =
                    (p > 0.0 && self.rng_disk.random_bool(p)).then(|| self.rng_disk.random_range(0.05..0.95));
                if let Some(kept) = self.disks[i].crash(self.now, torn) {
                    self.line_raw(
                        &format!("r{r}"),
                        format_args!("** power lost mid-write: {kept} bytes of it reached the disk"),
                    );
                }
                self.ticks[tick_index(NodeId::Replica(ReplicaId(*r)))] = None;
            }
            Action::Restart(Node::Balancer) => {
                if self.balancer.is_none() {
                    // Nothing sent while it was down reaches the new one.
                    self.balancer_incarnation += 1;
                    let incarnation = self.rng_ids.random();
                    let now = self.clock(NodeId::Balancer);
                    self.balancer = Some(Balancer::new(self.sc.cluster.clone(), now, incarnation));
                    self.paused_until.remove(&NodeId::Balancer);
                    self.ticks[tick_index(NodeId::Balancer)] = None;
                    self.reschedule(NodeId::Balancer);
                }
            }
            Action::Restart(Node::Replica(r)) => {
                let i = *r as usize - 1;
                if self.replicas[i].is_none() {
                    self.paused_until.remove(&NodeId::Replica(ReplicaId(*r)));
                    self.start_replica(i);
                }
            }
            Action::Partition(groups) => {
                let groups: Vec<Vec<NodeId>> = groups.iter().map(|g| self.expand(g)).collect();
                for (gi, a) in groups.iter().enumerate() {
                    for (gj, b) in groups.iter().enumerate() {
                        if gi != gj {
                            for x in a {
                                for y in b {
                                    self.blocked.insert((*x, *y));
                                }
                            }
                        }
                    }
                }
            }
            Action::PartitionOneWay { from, to } => {
                let (a, b) = (self.expand(from), self.expand(to));
                for x in &a {
                    for y in &b {
                        self.blocked.insert((*x, *y));
                    }
                }
            }
            Action::Heal => self.blocked.clear(),
            Action::Corrupt(r) => {
                let pick = self.rng_disk.random_range(0.0..1.0);
                match self.disks[*r as usize - 1].corrupt(pick) {
                    Some(at) => self.line_raw(&format!("r{r}"), format_args!("** disk byte {at} flipped")),
                    None => self.line_raw(&format!("r{r}"), format_args!("** disk too small to corrupt")),
                }
            }
            Action::CorruptLast(r) => {
                // One of the last 8 bytes: the end of the last record's
                // payload, so its checksum fails with nothing after it.
                let len = self.disks[*r as usize - 1].durable_bytes();
                let back = self.rng_disk.random_range(0..8.min(len.max(1)));
                let pick = (len as f64 - 0.5 - back as f64) / len.max(1) as f64;
                match self.disks[*r as usize - 1].corrupt(pick) {
                    Some(at) => self.line_raw(
                        &format!("r{r}"),
                        format_args!("** disk byte {at} flipped (the last record: {len} bytes on disk)"),
                    ),
                    None => self.line_raw(&format!("r{r}"), format_args!("** disk too small to corrupt")),
                }
            }
            Action::Pause { node, for_us } => {
                let n = match node {
                    Node::Balancer => NodeId::Balancer,
                    Node::Replica(r) => NodeId::Replica(ReplicaId(*r)),
                    Node::Client(_) | Node::Clients | Node::Leader => return,
                };
                let until = self.now + *for_us;
                let prev = self.paused_until.get(&n).copied().unwrap_or(Time::ZERO);
                self.paused_until.insert(n, until.max(prev));
            }
            Action::Crash(_) | Action::Restart(_) => {}
        }
        if self.rec.is_some() {
            let all = (1..=self.replicas.len()).map(|r| NodeId::Replica(ReplicaId(r as u8)));
            for n in all.chain([NodeId::Balancer]) {
                self.record_role(n);
            }
            let now = self.now;
            if let Some(rec) = &mut self.rec {
                rec.blocked(now, &self.blocked);
            }
        }
        // The leader failed if it is down or cut off from the balancer.
        if let Some((leader, epoch)) = leader_before {
            let n = NodeId::Replica(leader);
            let cut = self.blocked.contains(&(n, NodeId::Balancer))
                || self.blocked.contains(&(NodeId::Balancer, n));
            if (!self.is_up(n) || cut) && self.leader_failed_at.is_none() {
                self.leader_failed_at = Some((self.now, epoch));
            }
        }
    }

    /// A fault, as a mark on the lane it touches (`action` is `asked`
    /// with `leader` resolved).
    fn record_fault(&mut self, asked: &Action, action: &Action) {
        let node = |n: &Node| match n {
            Node::Balancer => Some(NodeId::Balancer),
            Node::Replica(r) => Some(NodeId::Replica(ReplicaId(*r))),
            Node::Client(c) => Some(NodeId::Client(ClientId(u64::from(*c)))),
            Node::Clients | Node::Leader => None,
        };
        let (kind, lane) = match action {
            Action::Crash(n) => ("crash", node(n)),
            Action::Restart(n) => ("restart", node(n)),
            Action::Pause { node: n, .. } => ("pause", node(n)),
            Action::Partition(_) | Action::PartitionOneWay { .. } => ("partition", None),
            Action::Heal => ("heal", None),
            Action::Corrupt(r) | Action::CorruptLast(r) => ("corrupt", Some(NodeId::Replica(ReplicaId(*r)))),
        };
        let what = if action == asked { format!("{action}") } else { format!("{asked} (that is {action})") };
        let line = crate::timeline::line(self.now, "fault", format_args!("{what}"));
        let now = self.now;
        let pause = match (action, lane) {
            (Action::Pause { for_us, .. }, Some(n)) => Some((n, now + *for_us)),
            _ => None,
        };
        if let Some(rec) = &mut self.rec {
            rec.mark(now, lane, kind, line.clone());
            if let Some((n, until)) = pause {
                rec.pause(n, now, until, line);
            }
        }
    }

    fn expand(&self, nodes: &[Node]) -> Vec<NodeId> {
        let mut v = Vec::new();
        for n in nodes {
            match n {
                Node::Balancer => v.push(NodeId::Balancer),
                Node::Replica(r) => v.push(NodeId::Replica(ReplicaId(*r))),
                Node::Client(c) => v.push(NodeId::Client(ClientId(*c as u64))),
                Node::Clients => {
                    v.extend((1..=self.clients.len()).map(|c| NodeId::Client(ClientId(c as u64))))
                }
                Node::Leader => v.extend(self.current_leader().map(|(r, _)| NodeId::Replica(r))),
            }
        }
        v
    }

    /// The balancer follows a live leader that leads that epoch, and every
    /// live replica has applied everything that leader has committed, which
    /// is its whole log.
    fn cluster_at_rest(&self) -> bool {
        let Some((leader, epoch)) = self.balancer.as_ref().and_then(Balancer::leader) else { return false };
        let Some(l) = self.replicas.get(leader.0 as usize - 1).and_then(Option::as_ref) else { return false };
        let status = l.status();
        status.leading == Some(epoch)
            && status.commit == status.last.lsn
            && self.replicas.iter().flatten().all(|r| r.applied() == status.commit)
    }

    fn current_leader(&self) -> Option<(ReplicaId, Epoch)> {
        self.replicas
            .iter()
            .flatten()
            .filter_map(|r| r.status().leading.map(|e| (r.id(), e)))
            .max_by_key(|x| x.1)
    }

    // ---- workload ----

    fn client_op(&mut self, i: usize) {
        let g = &self.sc.workload.groups[self.clients[i].group];
        if self.now >= self.workload_end || g.stop_us.is_some_and(|t| self.now.0 >= t) {
            return;
        }
        let op = match &g.script {
            Some(script) => {
                let slot = &mut self.clients[i];
                let Some(op) = script.get(slot.script_pos) else { return };
                slot.script_pos += 1;
                op.clone()
            }
            None => self.random_op(i),
        };
        let slot = &mut self.clients[i];
        slot.issued += 1;
        let id = NodeId::Client(slot.machine.id());
        if self.level >= TraceLevel::Ops {
            self.line(id, format_args!("invoke {op}"));
        }
        if let Op::Set { key, value } = &op {
            self.written.insert(check::pair_hash(key, value));
        }
        let mut out = std::mem::take(&mut self.out);
        self.clients[i].machine.submit(self.now, op, &mut out);
        self.handle(id, out);
        // Open loop: the next arrival does not wait for this one.
        if let Some(rate) = g.rate_per_s {
            let mean_us = 1e6 / rate;
            let gap = sample_exp(&mut self.clients[i].rng, mean_us as u64).max(1);
            self.push(self.now + gap, Ev::ClientOp(i));
        }
    }

    fn random_op(&mut self, i: usize) -> Op {
        let w = &self.sc.workload;
        let slot = &mut self.clients[i];
        let r = &mut slot.rng;
        let total = w.mix.set + w.mix.get + w.mix.del;
        let pick = r.random_range(0..total);
        let k = match w.zipf_exponent {
            Some(s) => sample_zipf(r, w.keys, s),
            None => r.random_range(0..w.keys),
        };
        // `format!("k{k}")`, without the formatting machinery.
        let mut key = String::with_capacity(11);
        key.push('k');
        push_decimal(&mut key, u64::from(k));
        if pick < w.mix.set {
            // Unique values, so a read can be traced to the write it saw:
            // `c{client}.{n}`, then random letters up to the drawn length.
            let len = r.random_range(w.value_bytes_min..=w.value_bytes_max);
            let mut value = String::with_capacity(len.max(42));
            value.push('c');
            push_decimal(&mut value, i as u64 + 1);
            value.push('.');
            push_decimal(&mut value, slot.issued + 1);
            while value.len() < len {
                value.push(char::from(b'a' + r.random_range(0..26u8)));
            }
            Op::Set { key, value }
        } else if pick < w.mix.set + w.mix.get {
            Op::Get { key }
        } else {
            Op::Del { key }
        }
    }

    fn completed(&mut self, i: usize, c: kvstore::Completion) {
        self.last_done = self.now;
        let slot = &self.clients[i];
        let id = NodeId::Client(slot.machine.id());
        let mode = slot.machine.read_mode();
        if self.level >= TraceLevel::Ops || self.rec.is_some() {
            let took = c.completed.saturating_sub(c.invoked);
            let what = match &c.result {
                Ok(r) if c.op.is_write() => format!("ok lsn={}", r.lsn),
                Ok(r) => format!("{} lsn={}", kvstore::msg::ShowValue(&r.value), r.lsn),
                Err(e) if c.is_ambiguous() => format!("ambiguous: {e}"),
                // A read that timed out changed nothing: no "a write may...".
                Err(e) => format!("error: {}", kvstore::runtime::client::describe_error(&c.op, e)),
            };
            let done = format!("done {} -> {what} ({}.{:03}ms)", c.op, took / 1000, took % 1000);
            if let Some(rec) = &mut self.rec {
                let line = crate::timeline::line(self.now, &id.to_string(), format_args!("{done}"));
                rec.completed(i as u32 + 1, id, &c, line);
            }
            if self.level >= TraceLevel::Ops {
                self.line(id, format_args!("{done}"));
            }
        }
        if let (Ok(reply), false, kvstore::ReadMode::Any) = (&c.result, c.op.is_write(), mode) {
            // How far behind the newest applied row anywhere, in rows and in
            // time since the first row this read missed was applied.
            let behind = (self.first_applied_at.len() as u64).saturating_sub(reply.lsn.0);
            self.stale_max = self.stale_max.max(behind);
            if let Some(t) = self.first_applied_at.get(reply.lsn.0 as usize) {
                self.stale_max_us = self.stale_max_us.max(c.completed.saturating_sub(*t));
            }
        }
        if let (Ok(_), true, Some((at, epoch))) = (&c.result, c.op.is_write(), self.leader_failed_at) {
            if self.current_leader().is_some_and(|(_, e)| e > epoch) {
                let took = self.now.saturating_sub(at);
                self.failover_us_max = Some(self.failover_us_max.unwrap_or(0).max(took));
                self.leader_failed_at = None;
            }
        }
        self.history.push(Record { client: i as u64 + 1, read: mode, c });
        // Closed loop: the next operation follows this one.
        let g = &self.sc.workload.groups[self.clients[i].group];
        if g.rate_per_s.is_none() {
            self.push(self.now + g.think_us.max(1), Ev::ClientOp(i));
        }
    }

    // ---- output ----

    fn line(&mut self, n: NodeId, what: std::fmt::Arguments<'_>) {
        let _ = writeln!(self.trace, "{:>12} {:<4} {}", self.now, n, what);
    }

    fn line_raw(&mut self, who: &str, what: std::fmt::Arguments<'_>) {
        // Faults and recovery notes: shown at every trace level but None.
        if self.level >= TraceLevel::Ops {
            let _ = writeln!(self.trace, "{:>12} {:<4} {}", self.now, who, what);
        }
        // A replica's disk and recovery notes (faults are marked with
        // their lane in `record_fault`).
        let replica = who.strip_prefix('r').and_then(|r| r.parse::<u8>().ok());
        if let (Some(rec), Some(r)) = (&mut self.rec, replica) {
            let text = what.to_string();
            let kind = if text.starts_with("** recovery") { "recovery" } else { "disk" };
            let line = crate::timeline::line(self.now, who, format_args!("{text}"));
            rec.mark(self.now, Some(NodeId::Replica(ReplicaId(r))), kind, line);
        }
    }

    fn violation(&mut self, v: String) {
        if let Some(rec) = &mut self.rec {
            rec.violation(self.now, &v);
        }
        if self.level >= TraceLevel::Ops {
            let _ = writeln!(self.trace, "{:>12} !!!  {}", self.now, v);
        }
        self.violations.push(format!("at {}: {v}", self.now));
    }

    fn finish(&mut self, seed: u64) -> Summary {
        let replicas: Vec<&Replica> = self.replicas.iter().flatten().collect();
        // Disks are read back only when there is no leader to judge by
        // (decoding every log is a tenth of a long run).
        let stored: Vec<Stored> = if replicas.iter().any(|r| r.is_leader()) {
            Vec::new()
        } else {
            self.disks.iter().map(SimDisk::stored).collect()
        };
        let disks: Vec<&Stored> = stored.iter().collect();
        let unfinished: Vec<(u32, Time)> = self
            .clients
            .iter()
            .enumerate()
            .filter_map(|(i, c)| c.machine.oldest_unfinished().map(|t| (i as u32 + 1, t)))
            .collect();
        let ops_unfinished = self.clients.iter().map(|c| c.machine.unfinished() as u64).sum();
        let unfinished_writes: Vec<(u64, Op, Time)> = self
            .clients
            .iter()
            .enumerate()
            .flat_map(|(i, c)| {
                c.machine
                    .unfinished_ops()
                    .into_iter()
                    .filter(|(op, _)| op.is_write())
                    .map(move |(op, t)| (i as u64 + 1, op.clone(), t))
            })
            .collect();
        // Measured only, for the summary (never fed to the run).
        #[allow(clippy::disallowed_methods)]
        let check_wall = std::time::Instant::now();
        // A run stopped at its event budget is judged on safety alone: it
        // never reached its end, so convergence and liveness cannot be.
        let cut = self.out_of_events;
        let report = check::run_all(&check::Input {
            history: &self.history,
            written: &self.written,
            replicas: &replicas,
            disks: &disks,
            check_convergence: self.sc.run.check_convergence && !cut,
            liveness_us: if cut { 0 } else { self.sc.run.liveness_us },
            last_fault_at: self.last_fault_at,
            unfinished: &unfinished,
            end: self.now,
            unfinished_writes: &unfinished_writes,
            applied_rows: &self.applied_rows,
        });
        let check_wall_ms = check_wall.elapsed().as_secs_f64() * 1000.0;
        if let Some(mut rec) = self.rec.take() {
            for (i, c) in self.clients.iter().enumerate() {
                let id = NodeId::Client(c.machine.id());
                for (op, at) in c.machine.unfinished_ops() {
                    rec.unfinished(i as u32 + 1, id, op, at);
                }
            }
            self.timeline = Some(rec.finish(self.now, &report.violations, report.lin_culprit.as_ref()));
        }
        self.violations.extend(report.violations);
        let mut inconclusive = report.inconclusive;
        if cut {
            inconclusive.insert(
                0,
                format!(
                    "event budget: stopped after {} events at {}, before the run's end",
                    self.events, self.now
                ),
            );
        }
        let ops_ok = self.history.iter().filter(|r| r.c.result.is_ok()).count() as u64;
        let ops_ambiguous = self.history.iter().filter(|r| r.c.is_ambiguous()).count() as u64;
        Summary {
            scenario: self.sc.name.clone(),
            seed,
            sim_ms: self.now.0 as f64 / 1000.0,
            events: self.events,
            wall_ms: 0.0,
            ops_ok,
            ops_failed: self.history.len() as u64 - ops_ok - ops_ambiguous,
            ops_ambiguous,
            ops_unfinished,
            acked_writes: report.acked_writes,
            lost_acked_writes: report.lost_acked_writes,
            failovers: self.promotions.saturating_sub(1),
            failover_ms_max: self.failover_us_max.map(|u| u as f64 / 1000.0),
            stale_reads_max_lsn: self.stale_max,
            stale_reads_max_ms: self.stale_max_us as f64 / 1000.0,
            messages_sent: self.messages_sent,
            messages_dropped: self.messages_dropped,
            violations: self.violations.clone(),
            inconclusive,
            check_wall_ms,
        }
    }
}

/// Where a node's queued tick is kept: the balancer, replicas 1-9, then
/// clients.
fn tick_index(n: NodeId) -> usize {
    match n {
        NodeId::Balancer => 0,
        NodeId::Replica(r) => r.0 as usize,
        NodeId::Client(c) => 10 + c.0 as usize,
    }
}

/// Appends `n` in decimal, as `{n}` formats it.
fn push_decimal(s: &mut String, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    s.extend(digits[at..].iter().map(|&d| char::from(d)));
}

fn sample_exp(r: &mut ChaCha8Rng, mean: u64) -> u64 {
    if mean == 0 {
        return 0;
    }
    let u: f64 = r.random_range(f64::EPSILON..1.0);
    ((-u.ln()) * mean as f64).min(mean as f64 * 50.0) as u64
}

/// Zipf over `0..n` by inverse transform on the harmonic weights.
fn sample_zipf(r: &mut ChaCha8Rng, n: u32, s: f64) -> u32 {
    // Small key counts in scenarios: a linear scan is fine and exact.
    let total: f64 = (1..=n).map(|k| 1.0 / (k as f64).powf(s)).sum();
    let mut u = r.random_range(0.0..total);
    for k in 1..=n {
        u -= 1.0 / (k as f64).powf(s);
        if u <= 0.0 {
            return k - 1;
        }
    }
    n - 1
}
