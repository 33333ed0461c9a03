//! `kvsim replay DIR`: a real cluster's recording (`kvnode --record DIR`,
//! see `kvstore::runtime::record`) fed back to the same machines.
//!
//! For each node and each of its lives, the machine is rebuilt from the
//! recorded start state and given the recorded inputs, in order, with their
//! recorded times; after each input its effects are compared with the
//! recorded digests. The first difference is a *divergence*: the machine
//! did not do, given the same inputs, what it did for real (a source of
//! nondeterminism, or a recording from another build).
//!
//! Then the client operations, as the balancer saw them (each request's
//! first arrival to its answer), are judged by the simulator's checkers:
//! linearizability of `leader` reads with every write, session guarantees,
//! reads of values never written, acknowledged writes still held by the
//! newest leader, one leader per epoch, one row per log position.

use crate::check::{self, Record};
use crate::replay_view::{self, Judged, View};
use kvstore::balancer::Balancer;
use kvstore::replica::Replica;
use kvstore::runtime::record::{self, Ending, Fx, In, Life, MachineStart, RecordError};
use kvstore::runtime::store::Start;
use kvstore::{
    Completion, Effect, Epoch, Event, Msg, NodeId, Op, OpError, Outbox, ReadMode, ReplicaId, RequestId, Time,
};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// The first difference between a recorded step and its replay.
#[derive(Clone, Debug)]
pub struct Divergence {
    pub node: NodeId,
    /// Which life (from 1) and which of its inputs (from 1).
    pub life: usize,
    pub input: usize,
    pub time: Time,
    pub file: PathBuf,
    pub offset: u64,
    /// The input, described.
    pub what: String,
    /// Which effect of that input (from 1).
    pub effect: usize,
    pub expected: Option<String>,
    pub got: Option<String>,
}

impl std::fmt::Display for Divergence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "DIVERGENCE at {} life {}, input {} at {} ({} byte {}):",
            self.node,
            self.life,
            self.input,
            self.time,
            self.file.display(),
            self.offset
        )?;
        writeln!(f, "  input:    {}", self.what)?;
        writeln!(f, "  effect {}:", self.effect)?;
        writeln!(f, "  recorded: {}", self.expected.as_deref().unwrap_or("(no such effect)"))?;
        write!(f, "  replayed: {}", self.got.as_deref().unwrap_or("(no such effect)"))
    }
}

/// One life of one node, as replayed.
#[derive(Clone, Debug)]
pub struct LifeReport {
    pub node: NodeId,
    /// Microseconds from the recording's start (the earliest life's) to
    /// this life's start and to its last input.
    pub start_us: u64,
    pub end_us: u64,
    pub inputs: u64,
    pub replayed: u64,
    pub effects: u64,
    pub ending: Ending,
    /// A replica leading when its life ended (after replay).
    pub leading_at_end: Option<Epoch>,
    pub pid: u32,
}

/// What a client did, as the balancer saw it.
#[derive(Clone, Debug, Default)]
pub struct ClientSeen {
    pub read: ReadMode,
    pub sets: u64,
    pub gets: u64,
    pub dels: u64,
    pub first_us: u64,
    pub last_us: u64,
    /// Sum and count of the gaps between an answer and the next request.
    pub think_us: u64,
    pub thinks: u64,
}

#[derive(Debug)]
pub struct Replay {
    pub dir: PathBuf,
    pub nodes: Vec<NodeId>,
    pub lives: Vec<LifeReport>,
    pub notes: Vec<String>,
    /// The first divergence of each life that diverged, in node order.
    pub divergences: Vec<Divergence>,
    pub config: Option<kvstore::ClusterConfig>,
    pub clients: BTreeMap<u64, ClientSeen>,
    pub keys: BTreeSet<String>,
    pub value_bytes: Option<(usize, usize)>,
    pub ops_ok: u64,
    pub ops_failed: u64,
    pub ops_ambiguous: u64,
    pub ops_unfinished: u64,
    pub acked_writes: u64,
    pub lost_acked_writes: u64,
    pub promotions: u64,
    pub lin_ops: u64,
    pub violations: Vec<String>,
    pub inconclusive: Vec<String>,
    /// Microseconds from the recording's start to its last input.
    pub end_us: u64,
}

/// A request as the balancer saw it.
struct Pending {
    client: u64,
    read: ReadMode,
    op: Op,
    first_us: u64,
    max_attempt: u32,
    /// Balancer lives that saw it.
    lives: BTreeSet<usize>,
    result: Option<(u64, Result<kvstore::Reply, OpError>, u32)>,
    /// The highest attempt answered `Unavailable`.
    unavailable_upto: u32,
    errors: Vec<OpError>,
}

enum Machine {
    Replica(Box<Replica>),
    Balancer(Box<Balancer>),
}

fn build(start: &MachineStart) -> Machine {
    match start.clone() {
        MachineStart::Replica { id, config, start, incarnation } => {
            let r = match start {
                Start::Recovered(stored) => Replica::recover(id, config, stored),
                Start::Missing(stored) => Replica::recover_missing(id, config, stored),
                Start::Resync { promised } => Replica::resync(id, config, promised),
            };
            Machine::Replica(Box::new(r.with_incarnation(incarnation)))
        }
        MachineStart::Balancer { config, now, incarnation } => {
            Machine::Balancer(Box::new(Balancer::new(config, now, incarnation)))
        }
    }
}

/// Feeds one input; `Err` when the input cannot go to this machine.
fn feed(m: &mut Machine, input: In, out: &mut Outbox) -> Result<(), String> {
    match (m, input) {
        (Machine::Replica(r), In::Message { now, from, msg }) => r.on_message(now, from, msg, out),
        (Machine::Balancer(b), In::Message { now, from, msg }) => b.on_message(now, from, msg, out),
        (Machine::Replica(r), In::Tick { now }) => r.on_tick(now, out),
        (Machine::Balancer(b), In::Tick { now }) => b.on_tick(now, out),
        (Machine::Replica(r), In::Persisted { now, id }) => r.on_persisted(now, id, out),
        (Machine::Balancer(b), In::StopAccepting { .. }) => b.stop_accepting(),
        (Machine::Balancer(_), In::Persisted { .. }) => {
            return Err("a persist completion recorded for the balancer".into())
        }
        (Machine::Replica(_), In::StopAccepting { .. }) => {
            return Err("stop-accepting recorded for a replica".into())
        }
    }
    Ok(())
}

fn describe(e: &Effect) -> String {
    match e {
        Effect::Send { to, msg } => format!("send to {to}: {msg}"),
        Effect::Persist { id, op } => format!("persist #{id}: {op:?}"),
        Effect::Event(ev) => format!("event {ev:?}"),
        Effect::Done(c) => format!("completion {c:?}"),
    }
}

/// Reads and replays the recording in `dir`.
pub fn replay(dir: &Path) -> Result<Replay, RecordError> {
    run(dir, None).map(|(rep, _)| rep)
}

/// [`replay`], also drawing it for the HTML page (`kvsim replay --html`;
/// see [`crate::replay_view`]).
pub fn replay_with_timeline(dir: &Path) -> Result<(Replay, crate::timeline::Timeline), RecordError> {
    let mut view = View::default();
    let (rep, judged) = run(dir, Some(&mut view))?;
    let t = view.finish(&rep, &judged);
    Ok((rep, t))
}

/// The role band a machine is in now.
fn role_of(m: &Machine) -> crate::timeline::Role {
    match m {
        Machine::Replica(r) => replay_view::replica_role(&r.status()),
        Machine::Balancer(b) => replay_view::balancer_role(b.leader()),
    }
}

fn run(dir: &Path, mut view: Option<&mut View>) -> Result<(Replay, Judged), RecordError> {
    let dirs = record::node_dirs(dir)?;
    let several = dirs.len() > 1;
    // Lines up the nodes' clocks: each life's times are its process's
    // clock; its start's wall-clock time places it among the others. (Only
    // the starts are read here: the nodes are then read one at a time.)
    let mut base = u64::MAX;
    for d in &dirs {
        for (_, path) in record::list_files(d)? {
            if let Some(start) = record::life_start(&path)? {
                base = base.min(start.wall_us);
            }
        }
    }
    let global = |l: &Life, t: Time| -> u64 {
        l.start.wall_us.saturating_sub(base).saturating_add(t.0.saturating_sub(l.start.now.0))
    };

    let mut rep = Replay {
        dir: dir.to_path_buf(),
        nodes: Vec::new(),
        lives: Vec::new(),
        notes: Vec::new(),
        divergences: Vec::new(),
        config: None,
        clients: BTreeMap::new(),
        keys: BTreeSet::new(),
        value_bytes: None,
        ops_ok: 0,
        ops_failed: 0,
        ops_ambiguous: 0,
        ops_unfinished: 0,
        acked_writes: 0,
        lost_acked_writes: 0,
        promotions: 0,
        lin_ops: 0,
        violations: Vec::new(),
        inconclusive: Vec::new(),
        end_us: 0,
    };
    let mut pending: BTreeMap<RequestId, Pending> = BTreeMap::new();
    let mut written = BTreeSet::new();
    let mut leaders: BTreeMap<Epoch, (ReplicaId, usize)> = BTreeMap::new();
    let mut applied_rows: Vec<Option<(u64, u64)>> = Vec::new();
    let mut finals: BTreeMap<ReplicaId, Replica> = BTreeMap::new();
    let mut scratch = Vec::new();
    let mut life_no = 0usize;

    for d in dirs {
        let rec = record::read_node(&d)?;
        rep.notes.extend(rec.notes.iter().cloned());
        let Some(first) = rec.lives.first() else {
            rep.notes.push(format!("{}: nothing to replay", d.display()));
            continue;
        };
        let node = first.start.node;
        let name = d.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
        if several && name != node.to_string() {
            return Err(RecordError {
                path: first.first_file.clone(),
                offset: None,
                msg: format!("recorded by {node}, in a directory named {name}"),
            });
        }
        rep.nodes.push(node);
        for (li, life) in rec.lives.iter().enumerate() {
            life_no += 1;
            if rep.config.is_none() {
                rep.config = Some(life.start.machine.config().clone());
            }
            let mut m = build(&life.start.machine);
            let mut report = LifeReport {
                node,
                start_us: global(life, life.start.now),
                end_us: global(life, life.start.now),
                inputs: life.steps.len() as u64,
                replayed: 0,
                effects: 0,
                ending: life.ending.clone(),
                leading_at_end: None,
                pid: life.start.pid,
            };
            if let Some(v) = view.as_deref_mut() {
                v.life_start(node, li, report.start_us, life.start.pid);
                v.role(node, report.start_us, role_of(&m));
            }
            let mut applied_seen = match &m {
                Machine::Replica(r) => r.applied().0,
                Machine::Balancer(_) => 0,
            };
            let mut out = Outbox::new();
            let mut diverged = false;
            for (si, (input, want, fi, offset)) in life.steps.iter().enumerate() {
                let t = global(life, input.now());
                report.end_us = report.end_us.max(t);
                if diverged {
                    continue;
                }
                // The workload, from the balancer's inputs.
                if let (Machine::Balancer(_), In::Message { from: NodeId::Client(c), msg, .. }) = (&m, input)
                {
                    see_request(&mut rep, &mut pending, &mut written, life_no, c.0, msg, t);
                }
                if let (Some(v), In::Message { from, msg, .. }) = (view.as_deref_mut(), input) {
                    v.received(node, *from, msg, t);
                }
                let what = input.to_string();
                // A machine that panics on its recorded input diverged too
                // (it did not panic for real).
                let fed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    feed(&mut m, input.clone(), &mut out)
                }))
                .unwrap_or_else(|p| {
                    let why = p
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| p.downcast_ref::<String>().cloned())
                        .unwrap_or_default();
                    Err(format!("the machine panicked: {why}"))
                });
                if let Err(why) = fed {
                    let d = Divergence {
                        node,
                        life: li + 1,
                        input: si + 1,
                        time: input.now(),
                        file: life.files[*fi].clone(),
                        offset: *offset,
                        what,
                        effect: 0,
                        expected: None,
                        got: Some(why),
                    };
                    if let Some(v) = view.as_deref_mut() {
                        v.divergence(t, &d);
                    }
                    rep.divergences.push(d);
                    diverged = true;
                    continue;
                }
                let got: Vec<Fx> = out.effects.iter().map(|e| record::digest(e, &mut scratch)).collect();
                if got != *want {
                    let i = got.iter().zip(want).take_while(|(a, b)| a == b).count();
                    let d = Divergence {
                        node,
                        life: li + 1,
                        input: si + 1,
                        time: input.now(),
                        file: life.files[*fi].clone(),
                        offset: *offset,
                        what,
                        effect: i + 1,
                        expected: want.get(i).map(Fx::to_string),
                        got: out.effects.get(i).map(|e| format!("{} = {}", got[i], describe(e))),
                    };
                    if let Some(v) = view.as_deref_mut() {
                        v.divergence(t, &d);
                    }
                    rep.divergences.push(d);
                    diverged = true;
                }
                report.replayed += 1;
                report.effects += want.len() as u64;
                for (e, fx) in out.drain().zip(&got) {
                    if let Some(v) = view.as_deref_mut() {
                        v.effect(node, &e, fx, t);
                    }
                    match (e, &m) {
                        (Effect::Send { to: NodeId::Client(c), msg }, Machine::Balancer(_)) => {
                            see_response(&mut pending, &mut rep.clients, c.0, msg, t)
                        }
                        (Effect::Event(Event::Promoted { .. }), _) => rep.promotions += 1,
                        (Effect::Event(Event::BecameLeader { epoch, .. }), Machine::Replica(r)) => {
                            if let Some((prev, _)) = leaders.insert(epoch, (r.id(), life_no)) {
                                rep.violations.push(format!(
                                    "{epoch} led twice: by r{} and again by r{} (at {})",
                                    prev.0,
                                    r.id().0,
                                    input.now()
                                ));
                            }
                        }
                        _ => {}
                    }
                }
                if let Machine::Replica(r) = &m {
                    watch_applied(r, &mut applied_seen, &mut applied_rows, &mut rep.violations);
                }
                if let Some(v) = view.as_deref_mut() {
                    v.role(node, t, role_of(&m));
                }
            }
            if let Machine::Replica(r) = m {
                report.leading_at_end = r.status().leading;
                finals.insert(r.id(), *r);
            }
            rep.end_us = rep.end_us.max(report.end_us);
            if let Some(v) = view.as_deref_mut() {
                v.life_end(&report, li, li + 1 == rec.lives.len());
            }
            rep.lives.push(report);
        }
    }
    let judged = judge(&mut rep, pending, &written, &finals, &applied_rows);
    Ok((rep, judged))
}

/// Online check, as the simulator's: every replica applies the same row at
/// each LSN.
fn watch_applied(
    r: &Replica,
    seen: &mut u64,
    rows: &mut Vec<Option<(u64, u64)>>,
    violations: &mut Vec<String>,
) {
    let applied = r.applied().0;
    let from = *seen;
    *seen = applied;
    for lsn in from.saturating_add(1)..=applied {
        let Some(row) = r.log().get(kvstore::Lsn(lsn)) else { continue };
        let what = match &row.body {
            kvstore::RowBody::Put { req, .. } => (req.client.0, req.seq),
            kvstore::RowBody::Noop => (0, 0),
        };
        let Ok(at) = usize::try_from(lsn - 1) else { continue };
        if rows.len() <= at {
            rows.resize(at + 1, None);
        }
        match rows[at] {
            None => rows[at] = Some(what),
            Some(first) if first != what => violations.push(format!(
                "replicas applied different rows at lsn {lsn}: first c{} #{}, then r{} applied c{} #{}",
                first.0,
                first.1,
                r.id().0,
                what.0,
                what.1
            )),
            Some(_) => {}
        }
    }
}

fn see_request(
    rep: &mut Replay,
    pending: &mut BTreeMap<RequestId, Pending>,
    written: &mut BTreeSet<u64>,
    life: usize,
    client: u64,
    msg: &Msg,
    t: u64,
) {
    let Msg::Request { id, attempt, op, read, .. } = msg else { return };
    if id.client.0 != client {
        return; // refused by the balancer as forged
    }
    let p = pending.entry(*id).or_insert_with(|| {
        let c =
            rep.clients.entry(client).or_insert_with(|| ClientSeen { first_us: t, ..ClientSeen::default() });
        c.read = *read;
        if c.last_us > 0 && t >= c.last_us {
            c.think_us = c.think_us.saturating_add(t - c.last_us);
            c.thinks += 1;
        }
        c.last_us = c.last_us.max(t);
        match op {
            Op::Set { key, value } => {
                c.sets += 1;
                written.insert(check::pair_hash(key, value));
                rep.keys.insert(key.clone());
                let (lo, hi) = rep.value_bytes.unwrap_or((value.len(), value.len()));
                rep.value_bytes = Some((lo.min(value.len()), hi.max(value.len())));
            }
            Op::Get { key } => {
                c.gets += 1;
                rep.keys.insert(key.clone());
            }
            Op::Del { key } => {
                c.dels += 1;
                rep.keys.insert(key.clone());
            }
        }
        Pending {
            client,
            read: *read,
            op: op.clone(),
            first_us: t,
            max_attempt: 0,
            lives: BTreeSet::new(),
            result: None,
            unavailable_upto: 0,
            errors: Vec::new(),
        }
    });
    p.max_attempt = p.max_attempt.max(*attempt);
    p.lives.insert(life);
}

fn see_response(
    pending: &mut BTreeMap<RequestId, Pending>,
    clients: &mut BTreeMap<u64, ClientSeen>,
    client: u64,
    msg: Msg,
    t: u64,
) {
    let Msg::Response { id, attempt, result } = msg else { return };
    if id.client.0 != client {
        return;
    }
    let Some(p) = pending.get_mut(&id) else { return };
    if let Some(c) = clients.get_mut(&client) {
        c.last_us = c.last_us.max(t);
    }
    match result {
        Ok(reply) => {
            if p.result.is_none() {
                p.result = Some((t, Ok(reply), attempt));
            }
        }
        Err(e) => {
            if e == OpError::Unavailable {
                p.unavailable_upto = p.unavailable_upto.max(attempt);
            }
            if p.result.is_none() {
                p.errors.push(e);
                if !matches!(p.errors.last(), Some(OpError::Unavailable | OpError::Timeout)) {
                    let e = p.errors.last().cloned().unwrap_or(OpError::Timeout);
                    p.result = Some((t, Err(e), attempt));
                }
            }
        }
    }
}

/// Builds the history and runs the checkers.
fn judge(
    rep: &mut Replay,
    pending: BTreeMap<RequestId, Pending>,
    written: &BTreeSet<u64>,
    finals: &BTreeMap<ReplicaId, Replica>,
    applied_rows: &[Option<(u64, u64)>],
) -> Judged {
    let mut history = Vec::new();
    let mut unfinished_writes = Vec::new();
    let mut unfinished = Vec::new();
    for (id, p) in pending {
        let sent = Time(p.first_us);
        let (completed, result, attempts) = match p.result {
            Some(r) => r,
            None if p.errors.is_empty() => {
                rep.ops_unfinished += 1;
                unfinished.push((p.client, p.op.clone(), p.first_us));
                if p.op.is_write() {
                    unfinished_writes.push((p.client, p.op, sent));
                }
                continue;
            }
            None => {
                // Only `unavailable` and `timeout` answers: certainly not
                // applied only if one balancer saw every attempt and said
                // `unavailable` for all of them.
                let sure = p.lives.len() == 1 && p.unavailable_upto >= p.max_attempt;
                let e = if sure { OpError::Unavailable } else { OpError::Timeout };
                (rep.end_us, Err(e), p.max_attempt)
            }
        };
        let c = Completion {
            seq: id.seq,
            op: p.op,
            invoked: sent,
            sent,
            completed: Time(completed),
            result,
            attempts,
        };
        if c.result.is_ok() {
            rep.ops_ok += 1;
        } else if c.is_ambiguous() {
            rep.ops_ambiguous += 1;
        } else {
            rep.ops_failed += 1;
        }
        history.push(Record { client: p.client, read: p.read, c });
    }
    let replicas: Vec<&Replica> = finals.values().collect();
    let report = check::run_all(&check::Input {
        history: &history,
        written,
        replicas: &replicas,
        disks: &[],
        // A real run ends where it was stopped, not after a quiet period;
        // its timing is the machine's, not a scenario's.
        check_convergence: false,
        liveness_us: 0,
        last_fault_at: Time::ZERO,
        unfinished: &[],
        end: Time(rep.end_us),
        unfinished_writes: &unfinished_writes,
        applied_rows,
    });
    rep.acked_writes = report.acked_writes;
    rep.lost_acked_writes = report.lost_acked_writes;
    rep.lin_ops = report.lin_ops;
    rep.violations.extend(report.violations);
    rep.inconclusive.extend(report.inconclusive);
    Judged { history, unfinished, lin: report.lin_culprit }
}

fn ms(us: u64) -> String {
    format!("{}.{:03}s", us / 1_000_000, (us / 1000) % 1000)
}

impl Replay {
    /// The report `kvsim replay` prints.
    pub fn text(&self) -> String {
        let mut t = String::new();
        let _ = writeln!(t, "-- replay: {}", self.dir.display());
        for n in &self.nodes {
            let lives: Vec<&LifeReport> = self.lives.iter().filter(|l| l.node == *n).collect();
            let inputs: u64 = lives.iter().map(|l| l.inputs).sum();
            let effects: u64 = lives.iter().map(|l| l.effects).sum();
            let s = if lives.len() == 1 { "life" } else { "lives" };
            let _ = writeln!(t, "{n}: {} {s}, {inputs} inputs, {effects} effects", lives.len());
            for (i, l) in lives.iter().enumerate() {
                let ending = match &l.ending {
                    Ending::Stopped => "stopped cleanly".to_string(),
                    Ending::Killed => "killed (no end record)".to_string(),
                    Ending::Torn { file, offset, bytes, why } => format!(
                        "killed mid-write: {} byte {offset}: {bytes} bytes not a whole record ({why}); replay stops there",
                        file.display()
                    ),
                };
                let lead = l.leading_at_end.map(|e| format!(", leading {e}")).unwrap_or_default();
                let _ = writeln!(
                    t,
                    "  life {} (pid {}): {} to {}, {} of {} inputs replayed{lead}; {ending}",
                    i + 1,
                    l.pid,
                    ms(l.start_us),
                    ms(l.end_us),
                    l.replayed,
                    l.inputs
                );
            }
        }
        for n in &self.notes {
            let _ = writeln!(t, "note: {n}");
        }
        if self.divergences.is_empty() {
            let total: u64 = self.lives.iter().map(|l| l.effects).sum();
            let _ = writeln!(t, "effects: all {total} match the recording");
        } else {
            let _ = writeln!(t, "{}", self.divergences[0]);
            if self.divergences.len() > 1 {
                let others: Vec<String> =
                    self.divergences[1..].iter().map(|d| format!("{} life {}", d.node, d.life)).collect();
                let _ = writeln!(t, "also diverged: {}", others.join(", "));
            }
        }
        let _ = writeln!(
            t,
            "ops (as the balancer saw them): {} ok, {} failed, {} ambiguous, {} unfinished; acknowledged writes {}, lost {}",
            self.ops_ok,
            self.ops_failed,
            self.ops_ambiguous,
            self.ops_unfinished,
            self.acked_writes,
            self.lost_acked_writes
        );
        let _ = writeln!(
            t,
            "failovers: {}; {} clients, {} keys; linearizability checked over {} ops",
            self.promotions.saturating_sub(1),
            self.clients.len(),
            self.keys.len(),
            self.lin_ops
        );
        if self.violations.is_empty() && self.inconclusive.is_empty() {
            let _ = writeln!(t, "invariants: all hold");
        }
        if !self.violations.is_empty() {
            let _ = writeln!(t, "VIOLATIONS ({}):", self.violations.len());
            for v in &self.violations {
                let _ = writeln!(t, "  - {v}");
            }
        }
        if !self.inconclusive.is_empty() {
            let _ = writeln!(t, "INCONCLUSIVE ({}):", self.inconclusive.len());
            for v in &self.inconclusive {
                let _ = writeln!(t, "  - {v}");
            }
        }
        t
    }

    /// 0: every effect matched and every invariant held; 1: a divergence
    /// or a violation; 3: only an inconclusive check.
    pub fn exit_status(&self) -> u8 {
        if !self.divergences.is_empty() || !self.violations.is_empty() {
            1
        } else if !self.inconclusive.is_empty() {
            3
        } else {
            0
        }
    }

    /// The recording as a scenario: the cluster's configuration, the
    /// crashes and restarts its lives show, and a workload like the one the
    /// balancer saw. See the header comment it writes.
    pub fn to_scenario(&self) -> crate::Scenario {
        use crate::scenario::{Action, Fault, Group, Mix, Node};
        let mut sc = crate::parse("", "replay", "replay").expect("the empty scenario is valid");
        sc.name = format!(
            "replay-{}",
            self.dir.file_name().and_then(|n| n.to_str()).unwrap_or("recording").replace(['"', '\\'], "")
        );
        if let Some(c) = &self.config {
            let mut c = c.clone();
            c.bugs = Default::default();
            sc.cluster = c;
        }
        let mut about = vec![
            format!(
                "Inferred by `kvsim replay {} --as-scenario` from a kvnode recording:",
                self.dir.display()
            ),
            format!(
                "nodes {}; {} from the first start to the last input.",
                self.nodes.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(", "),
                ms(self.end_us)
            ),
        ];
        // Faults: each life after a node's first is a restart; a life that
        // ends before the recording does (killed, or stopped and started
        // again) is a crash. A replica leading when it died is named
        // `leader` (whichever replica leads in the simulation then).
        let mut faults = Vec::new();
        let mut lines = Vec::new();
        let quiet_end = self.end_us.saturating_sub(500_000);
        for n in &self.nodes {
            let lives: Vec<&LifeReport> = self.lives.iter().filter(|l| l.node == *n).collect();
            let sim_node = match n {
                NodeId::Balancer => Node::Balancer,
                NodeId::Replica(r) => Node::Replica(r.0),
                NodeId::Client(_) => continue,
            };
            let mut crashed_as = None;
            for (i, l) in lives.iter().enumerate() {
                if i > 0 {
                    if let Some(as_node) = crashed_as.take() {
                        faults.push(Fault { at_us: l.start_us, action: Action::Restart(as_node) });
                        lines.push(format!("{n} started again at {}", ms(l.start_us)));
                    }
                }
                let last = i + 1 == lives.len();
                let ended_early = !last || (l.ending != Ending::Stopped && l.end_us < quiet_end);
                if ended_early {
                    let leader = l.leading_at_end.is_some() && matches!(n, NodeId::Replica(_));
                    let as_node = if leader { Node::Leader } else { sim_node };
                    faults.push(Fault { at_us: l.end_us, action: Action::Crash(as_node) });
                    let how = if l.ending == Ending::Stopped { "stopped" } else { "killed" };
                    let lead = if leader { " (the leader)" } else { "" };
                    lines.push(format!("{n}{lead} {how} at {}", ms(l.end_us)));
                    crashed_as = Some(as_node);
                }
            }
        }
        faults.sort_by_key(|f| f.at_us);
        sc.faults = faults;
        if lines.is_empty() {
            about.push("Faults: none (every node ran from start to end).".into());
        } else {
            about.push(format!("Faults: {}.", lines.join("; ")));
        }
        // Workload: one closed-loop group per read mode, as many clients as
        // were seen, each starting and stopping when the first and last of
        // them did, with their mean pause between an answer and the next
        // request; the op mix and key count of the whole run.
        let mut groups = Vec::new();
        let (mut sets, mut gets, mut dels) = (0u64, 0u64, 0u64);
        for mode in [ReadMode::Any, ReadMode::Session, ReadMode::Leader] {
            let cs: Vec<&ClientSeen> = self.clients.values().filter(|c| c.read == mode).collect();
            if cs.is_empty() {
                continue;
            }
            sets += cs.iter().map(|c| c.sets).sum::<u64>();
            gets += cs.iter().map(|c| c.gets).sum::<u64>();
            dels += cs.iter().map(|c| c.dels).sum::<u64>();
            let start = cs.iter().map(|c| c.first_us).min().unwrap_or(0);
            let stop = cs.iter().map(|c| c.last_us).max().unwrap_or(0);
            let (think, n) =
                cs.iter().fold((0u64, 0u64), |(a, b), c| (a.saturating_add(c.think_us), b + c.thinks));
            groups.push(Group {
                clients: u32::try_from(cs.len()).unwrap_or(u32::MAX).min(1000),
                read: mode,
                rate_per_s: None,
                think_us: think.checked_div(n).unwrap_or(0),
                start_us: start,
                stop_us: Some(stop.max(start + 1000)),
                script: None,
            });
        }
        let ops = sets + gets + dels;
        if !groups.is_empty() {
            let pct =
                |x: u64| u32::try_from(x.saturating_mul(100).checked_div(ops).unwrap_or(0)).unwrap_or(100);
            let mut mix = Mix { set: pct(sets), get: pct(gets), del: pct(dels) };
            if mix.set + mix.get + mix.del == 0 {
                mix = Mix { set: 50, get: 50, del: 0 };
            }
            sc.workload.mix = mix;
            sc.workload.groups = groups;
            sc.workload.keys = u32::try_from(self.keys.len()).unwrap_or(u32::MAX).clamp(1, 100_000);
            if let Some((lo, hi)) = self.value_bytes {
                sc.workload.value_bytes_min = lo.clamp(1, kvstore::MAX_VALUE_BYTES);
                sc.workload.value_bytes_max = hi.clamp(sc.workload.value_bytes_min, kvstore::MAX_VALUE_BYTES);
            }
            let stop = sc.workload.groups.iter().filter_map(|g| g.stop_us).max().unwrap_or(0);
            sc.workload.duration_us = stop.max(1000);
            let per_mode: Vec<String> =
                sc.workload.groups.iter().map(|g| format!("{} {} clients", g.clients, g.read)).collect();
            about.push(format!(
                "Workload: {}; {ops} requests (set {}%, get {}%, del {}%) over {} keys.",
                per_mode.join(", "),
                sc.workload.mix.set,
                sc.workload.mix.get,
                sc.workload.mix.del,
                self.keys.len()
            ));
        } else {
            about.push("Workload: no client requests recorded; the default workload.".into());
        }
        about.push(
            "Not inferred: partitions, network and disk latencies, clock drift (defaults); key names".into(),
        );
        about.push("and values are the simulator's own; each node starts at 0 here.".into());
        sc.about = about.join("\n") + "\n";
        sc
    }
}
