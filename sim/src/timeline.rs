//! What a run did, as data for the HTML space-time view (`kvsim run
//! --html`): every message with its fate, faults, each replica's role and
//! epoch over time, client operations and violations.
//!
//! The simulator keeps a [`Recorder`] only when asked
//! (`Sim::with_timeline`), so ordinary runs, sweeps and fuzzing pay one
//! `Option` test per message and nothing else. Recording never draws from a
//! random generator and never writes to the trace: a run's trace is the
//! same bytes with or without it.

use kvstore::{Completion, Msg, NodeId, Op, ReadMode, Time};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

/// Longest text kept for one item (a trace line, a value): values may be
/// 64 KiB, and a 10,000-message page must stay small.
const TEXT_MAX: usize = 240;

/// The whole run, as embedded in the page.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Timeline {
    /// Bumped when the page's data changes shape.
    pub version: u32,
    pub scenario: String,
    pub seed: u64,
    /// The scenario file's leading comment.
    pub about: String,
    /// A real cluster's recording replayed (`kvsim replay --html`), not a
    /// simulated run: `scenario` names the recording, `seed` is 0.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub recorded: bool,
    /// Simulated time at the end of the run, microseconds.
    pub end_us: u64,
    /// The closing summary, as `kvsim run` prints it.
    pub summary: String,
    /// The balancer, then replicas, then clients; other items name lanes by
    /// index into this list.
    pub lanes: Vec<Lane>,
    pub messages: Vec<Message>,
    /// Faults, state changes and disk notes: instants on a lane (or on no
    /// lane: a heal, a partition).
    pub marks: Vec<Mark>,
    /// Time spans on a lane: role bands, pauses, down times.
    pub spans: Vec<Span>,
    /// Periods during which some links lost everything.
    pub partitions: Vec<Partition>,
    pub ops: Vec<OpBar>,
    pub violations: Vec<Violation>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Lane {
    /// As in a trace: `lb`, `r1`, `c3`.
    pub name: String,
    /// `balancer`, `replica` or `client`.
    pub kind: &'static str,
    /// Clients only: the read mode (`any`, `session`, `leader`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Message {
    pub from: usize,
    pub to: usize,
    pub sent: u64,
    /// When it was delivered, or lost (a crash, a balancer restart); for a
    /// message dropped on sending (partition, random loss) the send time;
    /// `None` while still in flight at the end.
    pub at: Option<u64>,
    /// `delivered`, `partitioned`, `dropped` (random loss), `down` (the
    /// receiver was down when it arrived), `stale` (sent to a balancer that
    /// has restarted since) or `inflight`.
    pub fate: &'static str,
    pub kind: &'static str,
    /// Periodic chatter, as `--trace messages` leaves out (`Msg::is_chatter`).
    pub chatter: bool,
    /// A copy made by the network's duplication.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub dup: bool,
    /// The trace line for it (as `--trace all` prints it).
    pub line: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct Mark {
    pub t: u64,
    pub lane: Option<usize>,
    /// `crash`, `restart`, `pause`, `partition`, `heal`, `corrupt`, `disk`
    /// (a torn write), `recovery`, `event` (a state change), `fault` (a
    /// fault that touched nothing).
    pub kind: &'static str,
    pub line: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct Span {
    pub lane: usize,
    pub from: u64,
    pub to: u64,
    /// `role` (a band: `state` and `epoch` say which), `pause`.
    pub kind: &'static str,
    /// For role bands: replicas `leader`, `follower`, `down`; the balancer
    /// `routing` (it knows a leader), `searching`, `down`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<&'static str>,
    /// The epoch led, or promised (a follower), or routed to (the balancer).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
    /// Replicas: the replica may lack rows it confirmed (catching up).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub missing: bool,
    /// The balancer: the replica it routes writes to (its lane).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leader: Option<usize>,
    pub line: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct Partition {
    pub from: u64,
    pub to: u64,
    /// Directed links that lose everything: (from lane, to lane).
    pub links: Vec<(usize, usize)>,
    pub line: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct OpBar {
    pub lane: usize,
    pub client: u32,
    pub seq: u64,
    /// `get`, `set`, `del`.
    pub op: &'static str,
    pub key: String,
    /// The value written (`set`) or read (`get`, when it succeeded; `None`
    /// for a missing key).
    pub value: Option<String>,
    /// The value's full length in bytes (it is shortened past 240).
    pub value_len: usize,
    pub invoked: u64,
    pub sent: u64,
    /// `None`: unfinished at the end of the run.
    pub done: Option<u64>,
    /// `ok`, `failed`, `ambiguous` or `unfinished`.
    pub outcome: &'static str,
    /// The trace's `done` line (or `invoke`, when unfinished).
    pub line: String,
    pub attempts: u32,
}

#[derive(Clone, Debug, Serialize)]
pub struct Violation {
    /// Where it was detected: for an online check the moment it fired; for
    /// an end-of-run check the end (or, for linearizability, the completion
    /// of the operation that could not be placed).
    pub t: u64,
    /// `online` (found during the run), or the end-of-run checker's name
    /// (`linearizability`, `session`, ...).
    pub checker: String,
    pub text: String,
    /// Linearizability: the key, the operation that could not be placed
    /// (index into `ops`) and every operation on that key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub culprit: Option<usize>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ops: Vec<usize>,
}

/// The role band a replica or the balancer is in now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Role {
    pub state: &'static str,
    pub epoch: Option<u64>,
    pub missing: bool,
    /// The balancer: the replica it routes writes to.
    pub leader: Option<u8>,
}

/// Collects a [`Timeline`] while the simulator runs.
#[derive(Debug, Default)]
pub struct Recorder {
    t: Timeline,
    lane_of: BTreeMap<NodeId, usize>,
    /// Open role bands per lane: (since, role).
    roles: BTreeMap<usize, (u64, Role)>,
    /// The blocked links now, and since when.
    blocked: (u64, BTreeSet<(usize, usize)>),
    /// Messages' text until their fate is known (index as `messages`).
    texts: Vec<String>,
    /// `history` index -> `ops` index.
    op_of_record: Vec<usize>,
}

/// `s`, cut to at most [`TEXT_MAX`] bytes on a character boundary.
pub fn shorten(s: &str) -> String {
    if s.len() <= TEXT_MAX {
        return s.to_string();
    }
    let mut end = TEXT_MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes)", &s[..end], s.len())
}

/// A line as the trace prints it: time, node, what.
pub fn line(t: Time, who: &str, what: std::fmt::Arguments<'_>) -> String {
    shorten(&format!("{:>12} {:<4} {}", t, who, what))
}

impl Recorder {
    /// Lanes for the balancer, `replicas` replicas and the clients (with
    /// their read modes).
    pub fn new(
        scenario: &str,
        seed: u64,
        about: &str,
        replicas: &[kvstore::ReplicaId],
        clients: &[ReadMode],
    ) -> Recorder {
        let mut r = Recorder::default();
        r.t.version = 1;
        r.t.scenario = scenario.to_string();
        r.t.seed = seed;
        r.t.about = about.to_string();
        let add = |r: &mut Recorder, n: NodeId, kind: &'static str, read: Option<String>| {
            r.lane_of.insert(n, r.t.lanes.len());
            r.t.lanes.push(Lane { name: n.to_string(), kind, read });
        };
        add(&mut r, NodeId::Balancer, "balancer", None);
        for id in replicas {
            add(&mut r, NodeId::Replica(*id), "replica", None);
        }
        for (i, mode) in clients.iter().enumerate() {
            add(&mut r, NodeId::Client(kvstore::ClientId(i as u64 + 1)), "client", Some(mode.to_string()));
        }
        r
    }

    /// Lanes given whole (`kvsim replay`): `lane_of` may send several
    /// nodes to one lane; a node it lacks is drawn on lane 0.
    pub fn with_lanes(
        scenario: &str,
        about: &str,
        lanes: Vec<Lane>,
        lane_of: BTreeMap<NodeId, usize>,
    ) -> Recorder {
        let mut r = Recorder::default();
        r.t.version = 1;
        r.t.scenario = scenario.to_string();
        r.t.about = about.to_string();
        r.t.lanes = lanes;
        r.lane_of = lane_of;
        r
    }

    /// A message whose fate and trace line are already known; messages
    /// must come in order of their send times.
    pub fn message(&mut self, m: Message) {
        self.t.messages.push(m);
        self.texts.push(String::new());
    }

    pub fn lane(&self, n: NodeId) -> usize {
        self.lane_of.get(&n).copied().unwrap_or(0)
    }

    /// A message leaves `from`; returns its id for [`Recorder::fate`].
    pub fn send(&mut self, t: Time, from: NodeId, to: NodeId, msg: &Msg, dup: bool) -> u32 {
        let id = self.t.messages.len() as u32;
        self.t.messages.push(Message {
            from: self.lane(from),
            to: self.lane(to),
            sent: t.0,
            at: None,
            fate: "inflight",
            kind: msg.kind(),
            chatter: msg.is_chatter(),
            dup,
            line: String::new(),
        });
        self.texts.push(shorten(&msg.to_string()));
        id
    }

    /// What became of message `id` at `t`: `delivered`, `partitioned`,
    /// `dropped`, `down` or `stale`.
    pub fn fate(&mut self, id: u32, t: Time, fate: &'static str) {
        let Some(m) = self.t.messages.get_mut(id as usize) else { return };
        let text = std::mem::take(&mut self.texts[id as usize]);
        let (from, to) = (&self.t.lanes[m.from].name, &self.t.lanes[m.to].name);
        m.at = Some(t.0);
        m.fate = fate;
        m.line = match fate {
            "delivered" => line(t, to, format_args!("<- {from} {text}")),
            "partitioned" => line(t, from, format_args!("-x {to} {text} (partitioned)")),
            "dropped" => line(t, from, format_args!("-x {to} {text} (dropped)")),
            "down" => line(t, from, format_args!("-x {to} {text} (lost: {to} is down)")),
            _ => line(t, from, format_args!("-x {to} {text} (lost: sent to a balancer since restarted)")),
        };
    }

    pub fn mark(&mut self, t: Time, lane: Option<NodeId>, kind: &'static str, line: String) {
        let lane = lane.map(|n| self.lane(n));
        self.t.marks.push(Mark { t: t.0, lane, kind, line });
    }

    pub fn pause(&mut self, lane: NodeId, from: Time, to: Time, line: String) {
        let lane = self.lane(lane);
        self.t.spans.push(Span {
            lane,
            from: from.0,
            to: to.0,
            kind: "pause",
            state: None,
            epoch: None,
            missing: false,
            leader: None,
            line,
        });
    }

    /// `n`'s role now; a change closes its band and opens another.
    pub fn role(&mut self, t: Time, n: NodeId, role: Role) {
        let lane = self.lane(n);
        match self.roles.get(&lane) {
            Some((_, r)) if *r == role => {}
            _ => {
                self.close_role(lane, t);
                self.roles.insert(lane, (t.0, role));
            }
        }
    }

    fn close_role(&mut self, lane: usize, t: Time) {
        let Some((since, r)) = self.roles.remove(&lane) else { return };
        if t.0 <= since {
            return; // replaced at the same instant: nothing to show
        }
        let name = &self.t.lanes[lane].name;
        let epoch = r.epoch.map(|e| format!(" e{e}")).unwrap_or_default();
        let missing = if r.missing { ", may lack rows it confirmed" } else { "" };
        let leader = r.leader.map(|l| format!(" (writes to r{l})")).unwrap_or_default();
        let line = format!("{name} {}{epoch}{leader}{missing} from {} to {t}", r.state, Time(since));
        let leader = r.leader.map(|l| self.lane(NodeId::Replica(kvstore::ReplicaId(l))));
        self.t.spans.push(Span {
            lane,
            from: since,
            to: t.0,
            kind: "role",
            state: Some(r.state),
            epoch: r.epoch,
            missing: r.missing,
            leader,
            line,
        });
    }

    /// The links blocked now (after a fault).
    pub fn blocked(&mut self, t: Time, links: &BTreeSet<(NodeId, NodeId)>) {
        let now: BTreeSet<(usize, usize)> =
            links.iter().map(|(a, b)| (self.lane(*a), self.lane(*b))).collect();
        if now == self.blocked.1 {
            return;
        }
        self.close_partition(t);
        self.blocked = (t.0, now);
    }

    fn close_partition(&mut self, t: Time) {
        let (since, links) = std::mem::take(&mut self.blocked);
        if links.is_empty() || t.0 < since {
            return;
        }
        let names: Vec<String> = links
            .iter()
            .map(|(a, b)| format!("{}->{}", self.t.lanes[*a].name, self.t.lanes[*b].name))
            .collect();
        let line = format!("links cut from {} to {}: {}", Time(since), t, names.join(" "));
        self.t.partitions.push(Partition { from: since, to: t.0, links: links.into_iter().collect(), line });
    }

    /// A client operation finished; `record` is its index in the history.
    pub fn completed(&mut self, client: u32, lane: NodeId, c: &Completion, line: String) {
        let (value, outcome) = match &c.result {
            Ok(r) if !c.op.is_write() => (r.value.clone(), "ok"),
            Ok(_) => (written(&c.op), "ok"),
            Err(_) if c.is_ambiguous() => (written(&c.op), "ambiguous"),
            Err(_) => (written(&c.op), "failed"),
        };
        let bar =
            self.bar(client, lane, &c.op, c.seq, value, (c.invoked, c.sent, Some(c.completed)), outcome);
        self.op_of_record.push(self.t.ops.len());
        self.t.ops.push(OpBar { line, attempts: c.attempts, ..bar });
    }

    /// An operation still unfinished at the end.
    pub fn unfinished(&mut self, client: u32, lane: NodeId, op: &Op, invoked: Time) {
        let bar = self.bar(client, lane, op, 0, written(op), (invoked, invoked, None), "unfinished");
        let who = lane.to_string();
        self.t
            .ops
            .push(OpBar { line: line(invoked, &who, format_args!("invoke {op} (never finished)")), ..bar });
    }

    #[allow(clippy::too_many_arguments)]
    fn bar(
        &self,
        client: u32,
        lane: NodeId,
        op: &Op,
        seq: u64,
        value: Option<String>,
        (invoked, sent, done): (Time, Time, Option<Time>),
        outcome: &'static str,
    ) -> OpBar {
        let name = match op {
            Op::Get { .. } => "get",
            Op::Set { .. } => "set",
            Op::Del { .. } => "del",
        };
        OpBar {
            lane: self.lane(lane),
            client,
            seq,
            op: name,
            key: shorten(op.key()),
            value_len: value.as_ref().map_or(0, String::len),
            value: value.as_deref().map(shorten),
            invoked: invoked.0,
            sent: sent.0,
            done: done.map(|t| t.0),
            outcome,
            line: String::new(),
            attempts: 0,
        }
    }

    /// A violation found during the run.
    pub fn violation(&mut self, t: Time, text: &str) {
        self.t.violations.push(Violation {
            t: t.0,
            checker: "online".into(),
            text: shorten(text),
            key: None,
            culprit: None,
            ops: Vec::new(),
        });
    }

    /// Closes everything open at `end` and hands over the timeline; the
    /// end-of-run checks' violations come with `report`.
    pub fn finish(
        mut self,
        end: Time,
        report: &[String],
        lin: Option<&crate::check::LinCulprit>,
    ) -> Timeline {
        let lanes: Vec<usize> = self.roles.keys().copied().collect();
        for lane in lanes {
            self.close_role(lane, end);
        }
        self.close_partition(end);
        self.t.end_us = end.0;
        for (m, text) in self.t.messages.iter_mut().zip(&self.texts) {
            if m.fate == "inflight" {
                let (from, to) = (&self.t.lanes[m.from].name, &self.t.lanes[m.to].name);
                m.line =
                    line(Time(m.sent), from, format_args!("-> {to} {text} (still in flight at the end)"));
            }
        }
        for v in report {
            let checker =
                v.split_once(':').map(|(c, _)| c).filter(|c| !c.contains(' ')).unwrap_or("end of run");
            let mut row = Violation {
                t: end.0,
                checker: checker.to_string(),
                text: shorten(v),
                key: None,
                culprit: None,
                ops: Vec::new(),
            };
            if let (Some(l), "linearizability") = (lin, checker) {
                row.key = Some(shorten(&l.key));
                row.culprit = l.record.and_then(|i| self.op_of_record.get(i).copied());
                if let Some(done) = row.culprit.and_then(|i| self.t.ops[i].done) {
                    row.t = done;
                }
                let key = shorten(&l.key);
                row.ops = (0..self.t.ops.len()).filter(|i| self.t.ops[*i].key == key).collect();
            }
            self.t.violations.push(row);
        }
        self.t.spans.sort_by_key(|s| (s.lane, s.from));
        self.t
    }
}

fn written(op: &Op) -> Option<String> {
    match op {
        Op::Set { value, .. } => Some(value.clone()),
        _ => None,
    }
}
