//! Invariant checkers run at the end of every simulation. Each one is shown
//! catching a real violation in tests (see `tests/checkers.rs`).
//!
//! - No acknowledged write is lost.
//! - After the quiet period every live replica holds identical data.
//! - No read returns a value that was never written for that key.
//! - Liveness: operations invoked after the last fault succeed in bounded time.
//! - `leader` reads are linearizable (with every write, per key), or, when
//!   the search runs out of its budget, the run is reported inconclusive.
//! - `session` reads give read-your-writes and monotonic reads.
//!
//! An operation starts when its client first sent it (`Completion::sent`),
//! not when the application queued it: nothing can take effect before.

use crate::check_lin::{check_linearizable, check_session, HistOp, Kind, LinVerdict, SessionOp, WrittenAt};
use kvstore::replica::Replica;
use kvstore::{Abbrev, ClientId, Completion, Lsn, Op, ReadMode, Row, RowBody, Stored, Time};
use std::collections::BTreeSet;

/// One finished client operation.
#[derive(Clone, Debug)]
pub struct Record {
    /// The client's id (`ClientId.0`): rows name their writer by it.
    pub client: u64,
    pub read: ReadMode,
    pub c: Completion,
}

pub struct Input<'a> {
    pub history: &'a [Record],
    /// Every (key, value) any client asked to write, whatever the outcome,
    /// as [`pair_hash`]es.
    pub written: &'a BTreeSet<u64>,
    /// Every live replica, in id order.
    pub replicas: &'a [&'a Replica],
    pub disks: &'a [&'a Stored],
    pub check_convergence: bool,
    pub liveness_us: u64,
    pub last_fault_at: Time,
    /// Per client with unfinished operations: when the oldest was submitted.
    pub unfinished: &'a [(u32, Time)],
    pub end: Time,
    /// Writes still unfinished at the end: (client, op, submitted). They may
    /// or may not have taken effect.
    pub unfinished_writes: &'a [(u64, Op, Time)],
    /// The (client, seq) of the row applied at each LSN (index LSN - 1; a
    /// no-op is (0, 0)), where the simulator saw it applied.
    pub applied_rows: &'a [Option<(u64, u64)>],
}

#[derive(Default)]
pub struct Report {
    pub violations: Vec<String>,
    pub acked_writes: u64,
    pub lost_acked_writes: u64,
    /// Operations the linearizability check looked at (0: no `leader` reads).
    pub lin_ops: u64,
    /// Checks that could not decide within their budget, one line each:
    /// neither a pass nor a violation.
    pub inconclusive: Vec<String>,
    /// The linearizability violation's operation, for the HTML view.
    pub lin_culprit: Option<LinCulprit>,
}

/// Where a linearizability violation is: its key, and the operation that
/// could not be placed, as an index into `Input::history` (`None`: an
/// unfinished write).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinCulprit {
    pub key: String,
    pub record: Option<usize>,
}

/// At most this many lines per kind of violation; the count says the rest.
const SHOW: usize = 5;

pub fn run_all(input: &Input<'_>) -> Report {
    let mut report = Report::default();
    acked_writes_survive(input, &mut report);
    if input.check_convergence {
        replicas_converge(input, &mut report);
    }
    reads_come_from_writes(input, &mut report);
    liveness(input, &mut report);
    leader_reads_linearizable(input, &mut report);
    session_guarantees(input, &mut report);
    report
}

/// Every write (all writes go through the leader) together with the reads of
/// `leader` clients must be linearizable, key by key. Reads in other modes
/// may be stale by design and are left out.
fn leader_reads_linearizable(input: &Input<'_>, report: &mut Report) {
    if !input.history.iter().any(|r| r.read == ReadMode::Leader && !r.c.op.is_write()) {
        return;
    }
    let mut ops = Vec::new();
    let write = |client: u64, op: &Op, sent: Time, completed: Option<Time>| {
        let (key, value) = match op {
            Op::Set { key, value } => (key, Some(value.clone())),
            Op::Del { key } => (key, None),
            Op::Get { .. } => return None,
        };
        Some(HistOp {
            client,
            key: key.clone(),
            kind: Kind::Write { value },
            invoked_us: sent.0,
            completed_us: completed.map(|t| t.0),
        })
    };
    // Which record each checked operation came from (`None`: unfinished).
    let mut origin = Vec::new();
    for (i, r) in input.history.iter().enumerate() {
        match (&r.c.op, &r.c.result) {
            (Op::Get { key }, Ok(reply)) if r.read == ReadMode::Leader => ops.push(HistOp {
                client: r.client,
                key: key.clone(),
                kind: Kind::Read { value: reply.value.clone() },
                invoked_us: r.c.sent.0,
                completed_us: Some(r.c.completed.0),
            }),
            (Op::Get { .. }, _) => {}
            (op, Ok(_)) => ops.extend(write(r.client, op, r.c.sent, Some(r.c.completed))),
            // Maybe applied, at any time after it was sent.
            (op, Err(e)) if e.is_ambiguous() => ops.extend(write(r.client, op, r.c.sent, None)),
            // Certainly not applied (refused, unavailable everywhere).
            (_, Err(_)) => {}
        }
        origin.resize(ops.len(), Some(i));
    }
    for (client, op, at) in input.unfinished_writes {
        ops.extend(write(*client, op, *at, None));
    }
    report.lin_ops = ops.len() as u64;
    match check_linearizable(&ops) {
        LinVerdict::Linearizable(_) => {}
        LinVerdict::Violation(v) => {
            let record = origin.get(v.op_index).copied().flatten();
            report.lin_culprit = Some(LinCulprit { key: v.key.clone(), record });
            report.violations.push(format!("linearizability: {v}"));
        }
        LinVerdict::Inconclusive(keys) => {
            report.inconclusive.extend(keys.iter().map(|k| format!("linearizability: {k}")));
        }
    }
}

/// `session` clients: read-your-writes and monotonic reads, in LSNs and in
/// the values read (judged against every client's writes).
fn session_guarantees(input: &Input<'_>, report: &mut Report) {
    if !input.history.iter().any(|r| r.read == ReadMode::Session) {
        return;
    }
    let ops: Vec<SessionOp> = input
        .history
        .iter()
        .filter(|r| r.read == ReadMode::Session)
        .filter_map(|r| {
            let Ok(reply) = &r.c.result else { return None };
            let kind = match &r.c.op {
                Op::Get { .. } => Kind::Read { value: reply.value.clone() },
                Op::Set { value, .. } => Kind::Write { value: Some(value.clone()) },
                Op::Del { .. } => Kind::Write { value: None },
            };
            Some(SessionOp {
                client: r.client,
                key: r.c.op.key().to_string(),
                kind,
                invoked_us: r.c.sent.0,
                completed_us: Some(r.c.completed.0),
                lsn: reply.lsn.0,
            })
        })
        .collect();
    let written = |op: &Op, lsn: Option<Lsn>| match op {
        Op::Set { key, value } => {
            Some(WrittenAt { key: key.clone(), value: Some(value.clone()), lsn: lsn.map(|l| l.0) })
        }
        Op::Del { key } => Some(WrittenAt { key: key.clone(), value: None, lsn: lsn.map(|l| l.0) }),
        Op::Get { .. } => None,
    };
    let mut writes: Vec<WrittenAt> = input
        .history
        .iter()
        .filter_map(|r| match &r.c.result {
            Ok(reply) => written(&r.c.op, Some(reply.lsn)),
            Err(e) if e.is_ambiguous() => written(&r.c.op, None),
            // Certainly not applied.
            Err(_) => None,
        })
        .collect();
    writes.extend(input.unfinished_writes.iter().filter_map(|(_, op, _)| written(op, None)));
    let violations = check_session(&ops, &writes);
    push_limited(report, violations.into_iter().map(|v| format!("session: {v}")).collect());
}

/// Every write a client was told succeeded is in the log at the LSN it was
/// given: in the live leader's log when there is one, otherwise on some disk.
fn acked_writes_survive(input: &Input<'_>, report: &mut Report) {
    let leader = input.replicas.iter().filter(|r| r.is_leader()).max_by_key(|r| r.status().leading);
    let holds = |lsn: Lsn, client: u64, seq: u64| -> bool {
        let in_rows = |rows: &[Row], base: Lsn| {
            rows.get((lsn.0.wrapping_sub(base.0) as usize).wrapping_sub(1)).is_some_and(|r| {
                r.lsn == lsn
                    && matches!(&r.body, RowBody::Put { req, .. } if req.client.0 == client && req.seq == seq)
            })
        };
        // Compacted rows are folded into the applied state: it holds this
        // write if the row applied at its LSN was this write (every replica
        // applies the same row at each LSN: checked online), and the
        // at-most-once table shows it (or a later write) applied.
        let in_replica = |r: &Replica| {
            if lsn <= r.log().base().lsn {
                let applied_here = lsn.0.checked_sub(1).and_then(|i| input.applied_rows.get(i as usize));
                let was_this = !matches!(applied_here, Some(Some(w)) if *w != (client, seq));
                was_this && r.sessions().get(&ClientId(client)).is_some_and(|(s, _)| *s >= seq)
            } else {
                in_rows(r.log().rows(), r.log().base().lsn)
            }
        };
        match leader {
            Some(l) => in_replica(l),
            None => {
                input.disks.iter().any(|d| in_rows(&d.rows, d.base().lsn))
                    || input.replicas.iter().any(|r| in_replica(r))
            }
        }
    };
    let mut lost = Vec::new();
    for r in input.history {
        let (Ok(reply), true) = (&r.c.result, r.c.op.is_write()) else { continue };
        report.acked_writes += 1;
        if !holds(reply.lsn, r.client, r.c.seq) {
            lost.push(format!(
                "acknowledged write lost: c{} #{} `{}` acked at {} with lsn {}",
                r.client, r.c.seq, r.c.op, r.c.completed, reply.lsn
            ));
        }
    }
    report.lost_acked_writes = lost.len() as u64;
    push_limited(report, lost);
}

/// After the quiet period, one leader, and every live replica has applied the
/// same rows to the same data (see [`replicas_differ`]).
fn replicas_converge(input: &Input<'_>, report: &mut Report) {
    if input.replicas.is_empty() {
        report.violations.push("no replica is up at the end".into());
        return;
    }
    if !input.replicas.iter().any(|r| r.is_leader()) {
        report.violations.push("no leader at the end of the quiet period".into());
    }
    let differ = replicas_differ(input.replicas);
    push_limited(report, differ);
}

/// How the replicas differ, one line per difference found (empty: none):
///
/// - applied LSN and data: every replica against the first;
/// - logs, pair by pair: every row both still hold in memory (after their
///   compaction points) must be the same row where their LSN ranges overlap,
///   and a replica's compaction point (committed by construction) must match
///   the epoch of the other's row there; the first differing row is shown;
/// - at-most-once tables: every replica that applied as far as the first
///   must have the same one.
pub fn replicas_differ(replicas: &[&Replica]) -> Vec<String> {
    const PREFIX: &str = "replicas differ after the quiet period";
    let mut found = Vec::new();
    let Some(first) = replicas.first() else { return found };
    for r in &replicas[1..] {
        if r.applied() != first.applied() || r.data() != first.data() {
            let diff = first
                .data()
                .iter()
                .find(|(k, v)| r.data().get(*k) != Some(v))
                .map(|(k, v)| {
                    format!("; key {k}: r{} has {v:?}, r{} has {:?}", first.id().0, r.id().0, r.data().get(k))
                })
                .or_else(|| {
                    r.data()
                        .keys()
                        .find(|k| !first.data().contains_key(*k))
                        .map(|k| format!("; key {k} only on r{}", r.id().0))
                })
                .unwrap_or_default();
            found.push(format!(
                "{PREFIX}: r{} applied {} ({} keys), r{} applied {} ({} keys){diff}",
                first.id().0,
                first.applied(),
                first.data().len(),
                r.id().0,
                r.applied(),
                r.data().len()
            ));
        } else if let Some(diff) = sessions_difference(first, r) {
            found.push(format!("{PREFIX}: {diff}"));
        }
    }
    for (i, a) in replicas.iter().enumerate() {
        for b in &replicas[i + 1..] {
            if let Some(diff) = log_difference(a, b) {
                found.push(format!("{PREFIX}: {diff}"));
            }
        }
    }
    found
}

/// The first position where two replicas' logs disagree, described.
fn log_difference(a: &Replica, b: &Replica) -> Option<String> {
    // A compaction point is a committed row: the other replica, if it still
    // holds that position, must hold a row of the same epoch there.
    for (x, y) in [(a, b), (b, a)] {
        let base = x.log().base();
        if base.lsn == Lsn(0) || base.lsn < y.log().base().lsn {
            continue;
        }
        if let Some(epoch) = y.log().epoch_of(base.lsn).filter(|e| *e != base.epoch) {
            let held =
                y.log().get(base.lsn).map_or_else(|| format!("its compaction point, {epoch}"), show_row);
            return Some(format!(
                "r{} compacted its log through lsn {} of {}, but r{} holds {held} there",
                x.id().0,
                base.lsn,
                base.epoch,
                y.id().0
            ));
        }
    }
    let (la, lb) = (a.log(), b.log());
    let from = la.base().lsn.max(lb.base().lsn).next();
    let to = la.last().lsn.min(lb.last().lsn);
    if from > to {
        return None;
    }
    let (x, y) = la.range(from, to).iter().zip(lb.range(from, to)).find(|(x, y)| x != y)?;
    let lsn = x.lsn;
    let (ca, cb) = (a.status().commit, b.status().commit);
    let committed = match (lsn <= ca, lsn <= cb) {
        (true, true) => "committed on both".to_owned(),
        (true, false) => format!("committed on r{}", a.id().0),
        (false, true) => format!("committed on r{}", b.id().0),
        (false, false) => format!("above both commit points, {ca} and {cb}"),
    };
    Some(format!(
        "r{} and r{} hold different rows at lsn {lsn} ({committed}): r{} has {}, r{} has {}",
        a.id().0,
        b.id().0,
        a.id().0,
        show_row(x),
        b.id().0,
        show_row(y)
    ))
}

/// The first client whose at-most-once entry differs between two replicas.
fn sessions_difference(a: &Replica, b: &Replica) -> Option<String> {
    let (sa, sb) = (a.sessions(), b.sessions());
    if sa == sb {
        return None;
    }
    let client = sa.keys().chain(sb.keys()).filter(|c| sa.get(c) != sb.get(c)).min()?;
    let show = |entry: Option<&(u64, Lsn)>| {
        entry.map_or_else(|| "no entry".to_owned(), |(seq, lsn)| format!("#{seq} applied at lsn {lsn}"))
    };
    Some(format!(
        "at-most-once tables differ ({} and {} clients): for c{}, r{} has {}, r{} has {}",
        sa.len(),
        sb.len(),
        client.0,
        a.id().0,
        show(sa.get(client)),
        b.id().0,
        show(sb.get(client))
    ))
}

/// `e3 set k1=abc (c2 #5)`: a row, briefly.
fn show_row(row: &Row) -> String {
    match &row.body {
        RowBody::Noop => format!("{} noop", row.epoch),
        RowBody::Put { key, value: Some(v), req } => {
            format!("{} set {key}={} (c{} #{})", row.epoch, Abbrev(v), req.client.0, req.seq)
        }
        RowBody::Put { key, value: None, req } => {
            format!("{} del {key} (c{} #{})", row.epoch, req.client.0, req.seq)
        }
    }
}

fn reads_come_from_writes(input: &Input<'_>, report: &mut Report) {
    let mut bad = Vec::new();
    for r in input.history {
        let (Ok(reply), kvstore::Op::Get { key }) = (&r.c.result, &r.c.op) else { continue };
        let Some(v) = &reply.value else { continue };
        if !input.written.contains(&pair_hash(key, v)) {
            bad.push(format!(
                "c{} #{} read `{}` = {v:?}, a value never written to that key",
                r.client, r.c.seq, r.c.op
            ));
        }
    }
    push_limited(report, bad);
}

fn liveness(input: &Input<'_>, report: &mut Report) {
    if input.liveness_us == 0 {
        return;
    }
    // Measured from when the client sent it: time an open-loop client's
    // operation waited in that client's own queue says how fast the
    // workload arrives, not how fast the cluster answers.
    let mut slow = Vec::new();
    for r in input.history {
        if r.c.sent < input.last_fault_at {
            continue;
        }
        let took = r.c.completed.saturating_sub(r.c.sent);
        if r.c.result.is_err() || took > input.liveness_us {
            let what = match &r.c.result {
                Ok(_) => "ok".to_string(),
                Err(e) => e.to_string(),
            };
            slow.push(format!(
                "liveness: c{} #{} `{}` sent at {} after the last fault took {}.{:03}ms ({what})",
                r.client,
                r.c.seq,
                r.c.op,
                r.c.sent,
                took / 1000,
                took % 1000
            ));
        }
    }
    for (client, since) in input.unfinished {
        if *since >= input.last_fault_at && input.end.saturating_sub(*since) > input.liveness_us {
            slow.push(format!("liveness: c{client} has an operation unfinished since {since}"));
        }
    }
    push_limited(report, slow);
}

/// A fixed (FNV-1a, 64-bit) hash of a key and a value: remembering every
/// write as one number keeps the simulator from copying each value again.
/// A collision could only hide a violation, never invent one.
pub fn pair_hash(key: &str, value: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes().chain([0xff]).chain(value.bytes()) {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn push_limited(report: &mut Report, v: Vec<String>) {
    let n = v.len();
    report.violations.extend(v.into_iter().take(SHOW));
    if n > SHOW {
        report.violations.push(format!("... and {} more like the above", n - SHOW));
    }
}
