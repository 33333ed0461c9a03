//! `kvsim replay DIR --html OUT.html`: a replayed recording as a
//! [`Timeline`], for the same space-time page as `kvsim run --html`.
//!
//! The nodes are replayed one at a time, so the replay hands this module
//! what each machine received and sent (at the input's time on the
//! recording's common clock) and it matches the two afterwards, link by
//! link:
//!
//! - Messages: every send a replayed machine made, matched to a receive on
//!   the same directed link. What arrives on a link is what was sent, less
//!   what was lost, in order but for two connections' interleaving (two
//!   nodes may hold one each way). So each receive takes the first send not
//!   yet taken on its link with the same digest (kind, length and checksum
//!   of the encoded message, as the recording keeps for effects), looking
//!   from [`LOOKBACK`] before the furthest send taken so far to
//!   [`LOOKAHEAD`] after it; the sends never taken were lost. A receive
//!   recorded before its send (the lives' clocks are lined up by their
//!   wall-clock starts, so only to within a fraction of a millisecond) is
//!   drawn at the send's time. A lost send is `down` when the receiver was not
//!   running then, or its life got nothing later on that link and ended
//!   within [`DOWN_WINDOW_US`] of the send; else `dropped`. A receive with
//!   no send (its sender's life diverged, or was not recorded) is drawn
//!   arriving at once.
//! - Clients are not recorded: a request is drawn at its arrival at the
//!   balancer, an answer at its sending, both taking no time. The balancer
//!   knows the clients; the first [`CLIENT_LANES`] it heard from (by first
//!   request, then id) get a lane each, the rest share one (`c*`).
//! - Operations: as the balancer saw them (the replay's history, which its
//!   checkers judged), from a request's first arrival to its answer.
//! - Lives: a `crash` mark where a life ends before the recording does (or
//!   without its end record), a `restart` mark where the next begins; the
//!   node is `down` between.
//! - Role bands: each replica's status and the balancer's leader after
//!   every input, as `kvsim run --html` draws them.
//! - Violations: the replay's checkers' (at the end), and each life's
//!   divergence where it happened.
//!
//! Bounded: at most [`MESSAGES_MAX`] messages (the earliest sent) and
//! [`EVENT_MARKS_MAX`] state-change marks go on the page; the page says
//! when more were left out.

use crate::check::{LinCulprit, Record};
use crate::replay::{Divergence, LifeReport, Replay};
use crate::timeline::{self, shorten, Lane, Message, Recorder, Role, Violation};
use kvstore::runtime::record::{self, Ending, Fx};
use kvstore::{ClientId, Effect, Event, Msg, NodeId, Op, ReplicaId, Time};
use std::collections::{BTreeMap, BTreeSet};

/// Client ids below this name their lanes (`c77`); longer ones are
/// numbered by first request (`c#3`).
const SHORT_ID: u64 = 100_000;
/// Clients with a lane of their own; later ones share one.
pub const CLIENT_LANES: usize = 32;
/// Most messages on the page: beyond, only the earliest sent are kept.
pub const MESSAGES_MAX: usize = 200_000;
/// Most sends, and most receives, collected from the replay (memory).
const COLLECT_MAX: usize = 1_000_000;
/// Most state-change (`event`) marks on the page.
pub const EVENT_MARKS_MAX: usize = 20_000;
/// How far past the furthest matched send on a link a receive looks for
/// its own: bounds the matching's work on a link that lost much.
pub const LOOKAHEAD: usize = 4096;
/// How far before it: two nodes may hold two connections to each other (each
/// dialed one; an answer goes back where its question came from), so
/// a link's messages may arrive out of their sending order.
pub const LOOKBACK: usize = 1024;
/// A message is not received before it is sent, give or take this much
/// (the lives' clocks are lined up by their wall-clock start times).
pub const SKEW_US: u64 = 1_000_000;
/// A message never received, sent this close to the end of the receiver's
/// life (with nothing later on its link received in that life), is lost to
/// that end (`down`) rather than `dropped`.
pub const DOWN_WINDOW_US: u64 = 1_000_000;

/// A message as one side saw it.
struct Wire {
    from: NodeId,
    to: NodeId,
    t: u64,
    fx: Fx,
    kind: &'static str,
    chatter: bool,
    text: String,
}

/// What the replay saw, for [`View::finish`].
#[derive(Default)]
pub struct View {
    sends: Vec<Wire>,
    recvs: Vec<Wire>,
    /// Left out past [`COLLECT_MAX`].
    uncollected: u64,
    /// Role changes per node, in time order.
    roles: BTreeMap<NodeId, Vec<(u64, Role)>>,
    /// (time, node, kind, line).
    marks: Vec<(u64, NodeId, &'static str, String)>,
    events: usize,
    /// Clients by id: when first heard of.
    clients: BTreeMap<u64, u64>,
    divergences: Vec<(u64, String)>,
    scratch: Vec<u8>,
}

/// What the replay's judge built, for the page.
pub struct Judged {
    pub history: Vec<Record>,
    /// Requests never answered: (client, op, first arrival).
    pub unfinished: Vec<(u64, Op, u64)>,
    pub lin: Option<LinCulprit>,
}

pub fn replica_role(s: &kvstore::msg::Status) -> Role {
    match s.leading {
        Some(e) => Role { state: "leader", epoch: Some(e.0), missing: s.missing, leader: None },
        None => Role { state: "follower", epoch: Some(s.promised.0), missing: s.missing, leader: None },
    }
}

pub fn balancer_role(leader: Option<(ReplicaId, kvstore::Epoch)>) -> Role {
    match leader {
        None => Role { state: "searching", epoch: None, missing: false, leader: None },
        Some((r, e)) => Role { state: "routing", epoch: Some(e.0), missing: false, leader: Some(r.0) },
    }
}

const DOWN: Role = Role { state: "down", epoch: None, missing: false, leader: None };

impl View {
    fn client_seen(&mut self, n: NodeId, t: u64) {
        if let NodeId::Client(c) = n {
            let first = self.clients.entry(c.0).or_insert(t);
            *first = (*first).min(t);
        }
    }

    /// `to` was given `msg` from `from` at `t`.
    pub fn received(&mut self, to: NodeId, from: NodeId, msg: &Msg, t: u64) {
        self.client_seen(from, t);
        if self.recvs.len() >= COLLECT_MAX {
            self.uncollected += 1;
            return;
        }
        let fx = record::digest(&Effect::Send { to, msg: msg.clone() }, &mut self.scratch);
        let text = shorten(&msg.to_string());
        self.recvs.push(Wire { from, to, t, fx, kind: msg.kind(), chatter: msg.is_chatter(), text });
    }

    /// `n`'s effect `e` (digest `fx`) of its input at `t`.
    pub fn effect(&mut self, n: NodeId, e: &Effect, fx: &Fx, t: u64) {
        match e {
            Effect::Send { to, msg } => {
                self.client_seen(*to, t);
                if self.sends.len() >= COLLECT_MAX {
                    self.uncollected += 1;
                    return;
                }
                let text = shorten(&msg.to_string());
                self.sends.push(Wire {
                    from: n,
                    to: *to,
                    t,
                    fx: fx.clone(),
                    kind: msg.kind(),
                    chatter: msg.is_chatter(),
                    text,
                });
            }
            Effect::Event(ev) => self.event(n, ev, t),
            Effect::Persist { .. } | Effect::Done(_) => {}
        }
    }

    fn event(&mut self, n: NodeId, ev: &Event, t: u64) {
        self.events += 1;
        if self.events <= EVENT_MARKS_MAX {
            let line = timeline::line(Time(t), &n.to_string(), format_args!("{ev}"));
            self.marks.push((t, n, "event", line));
        }
    }

    /// `n`'s role after its input at `t`.
    pub fn role(&mut self, n: NodeId, t: u64, role: Role) {
        let list = self.roles.entry(n).or_default();
        if list.last().is_none_or(|(_, r)| *r != role) {
            list.push((t, role));
        }
    }

    /// `n`'s life `index` (from 0) begins at `t`.
    pub fn life_start(&mut self, n: NodeId, index: usize, t: u64, pid: u32) {
        if index > 0 {
            let line = timeline::line(
                Time(t),
                &n.to_string(),
                format_args!("started again: life {} (pid {pid})", index + 1),
            );
            self.marks.push((t, n, "restart", line));
        }
    }

    /// A life is over; `last`: the node's last life.
    pub fn life_end(&mut self, l: &LifeReport, index: usize, last: bool) {
        let n = l.node;
        let how = match &l.ending {
            Ending::Stopped => "stopped cleanly".to_string(),
            Ending::Killed => "killed (no end record)".to_string(),
            Ending::Torn { .. } => "killed mid-write (its last record cut short)".to_string(),
        };
        let kind = if last && l.ending == Ending::Stopped { "event" } else { "crash" };
        let line = timeline::line(
            Time(l.end_us),
            &n.to_string(),
            format_args!("life {} (pid {}) {how}: its last input", index + 1, l.pid),
        );
        self.marks.push((l.end_us, n, kind, line));
        self.role(n, l.end_us, DOWN);
    }

    /// A life diverged at `t` (the recording's clock).
    pub fn divergence(&mut self, t: u64, d: &Divergence) {
        self.divergences.push((t, d.to_string()));
    }

    /// The page's data.
    pub fn finish(mut self, rep: &Replay, j: &Judged) -> timeline::Timeline {
        let mut notes = Vec::new();
        // Lanes: the balancer, the replicas, the clients.
        let mut replicas: BTreeSet<ReplicaId> = BTreeSet::new();
        if let Some(c) = &rep.config {
            replicas.extend(c.replicas.iter().copied());
        }
        for w in self.sends.iter().chain(&self.recvs) {
            for n in [w.from, w.to] {
                if let NodeId::Replica(r) = n {
                    replicas.insert(r);
                }
            }
        }
        replicas.extend(rep.nodes.iter().filter_map(|n| match n {
            NodeId::Replica(r) => Some(*r),
            _ => None,
        }));
        for r in &j.history {
            let t = r.c.sent.0;
            self.clients.entry(r.client).and_modify(|f| *f = (*f).min(t)).or_insert(t);
        }
        let mut lanes = Vec::new();
        let mut lane_of = BTreeMap::new();
        let mut add = |n: NodeId, lane: Lane| {
            lane_of.insert(n, lanes.len());
            lanes.push(lane);
        };
        add(NodeId::Balancer, Lane { name: "lb".into(), kind: "balancer", read: None });
        for r in &replicas {
            add(
                NodeId::Replica(*r),
                Lane { name: NodeId::Replica(*r).to_string(), kind: "replica", read: None },
            );
        }
        let mut by_first: Vec<(u64, u64)> = self.clients.iter().map(|(c, t)| (*t, *c)).collect();
        by_first.sort_unstable();
        // A real client's id is random (64 bits): too long for a lane's
        // label, so a client with a long one is named by when it was
        // first heard from (`c#3`), in the lanes and the lines alike.
        let mut names: BTreeMap<NodeId, String> = BTreeMap::new();
        let mut renamed = Vec::new();
        for (i, (_, c)) in by_first.iter().take(CLIENT_LANES).enumerate() {
            let name = if *c < SHORT_ID { format!("c{c}") } else { format!("c#{}", i + 1) };
            if *c >= SHORT_ID {
                renamed.push(format!("{name} = c{c}"));
            }
            names.insert(NodeId::Client(ClientId(*c)), name.clone());
            let read = rep.clients.get(c).map(|s| s.read.to_string());
            add(NodeId::Client(ClientId(*c)), Lane { name, kind: "client", read });
        }
        if !renamed.is_empty() {
            notes.push(format!("client lanes (by first request): {}.", renamed.join(", ")));
        }
        let rest = by_first.len().saturating_sub(CLIENT_LANES);
        if rest > 0 {
            let shared = lanes.len();
            lanes.push(Lane { name: format!("c* ({rest} more)"), kind: "client", read: None });
            for (_, c) in by_first.iter().skip(CLIENT_LANES) {
                lane_of.insert(NodeId::Client(ClientId(*c)), shared);
            }
            notes.push(format!(
                "{} clients: the first {CLIENT_LANES} the balancer heard from have a lane each, the other {rest} share the lane c*.",
                by_first.len()
            ));
        }

        let mut messages = self.messages(rep, &lane_of, &names);
        messages.sort_by_key(|m| (m.sent, m.from, m.to));
        if messages.len() > MESSAGES_MAX {
            let cut = messages[MESSAGES_MAX].sent;
            notes.push(format!(
                "{} messages: only the first {MESSAGES_MAX} sent are shown (up to {}).",
                messages.len(),
                Time(cut)
            ));
            messages.truncate(MESSAGES_MAX);
        }
        if self.uncollected > 0 {
            notes.push(format!(
                "{} sends or receives past the first {COLLECT_MAX} of each were not collected.",
                self.uncollected
            ));
        }
        if self.events > EVENT_MARKS_MAX {
            notes
                .push(format!("{} state changes: only the first {EVENT_MARKS_MAX} are marked.", self.events));
        }

        let about = about(rep, &notes);
        let mut rec = Recorder::with_lanes(&rep.dir.display().to_string(), &about, lanes, lane_of);
        for m in messages {
            rec.message(m);
        }
        for (n, changes) in &self.roles {
            for (t, role) in changes {
                rec.role(Time(*t), *n, *role);
            }
        }
        self.marks.sort_by_key(|a| (a.0, a.1));
        for (t, n, kind, line) in self.marks {
            rec.mark(Time(t), Some(n), kind, line);
        }
        // An operation's client, as a number: its id, or its lane's (`c#3`).
        let number = |c: u64| -> u32 {
            let name = names.get(&NodeId::Client(ClientId(c)));
            match name.and_then(|n| n.strip_prefix("c#")).and_then(|n| n.parse().ok()) {
                Some(k) => k,
                None => u32::try_from(c).unwrap_or(u32::MAX),
            }
        };
        for r in &j.history {
            let c = &r.c;
            let id = NodeId::Client(ClientId(r.client));
            let who = names.get(&id).cloned().unwrap_or_else(|| id.to_string());
            let took = c.completed.saturating_sub(c.sent);
            let what = match &c.result {
                Ok(x) if c.op.is_write() => format!("ok lsn={}", x.lsn),
                Ok(x) => format!("{} lsn={}", kvstore::msg::ShowValue(&x.value), x.lsn),
                Err(e) if c.is_ambiguous() => format!("ambiguous: {e}"),
                Err(e) => format!("error: {}", kvstore::runtime::client::describe_error(&c.op, e)),
            };
            let line = timeline::line(
                c.completed,
                &who,
                format_args!(
                    "done {} -> {what} ({}.{:03}ms, as the balancer saw it)",
                    c.op,
                    took / 1000,
                    took % 1000
                ),
            );
            rec.completed(number(r.client), id, c, line);
        }
        for (client, op, t) in &j.unfinished {
            rec.unfinished(number(*client), NodeId::Client(ClientId(*client)), op, Time(*t));
        }
        let mut t = rec.finish(Time(rep.end_us), &rep.violations, j.lin.as_ref());
        for (at, text) in self.divergences {
            t.violations.push(Violation {
                t: at,
                checker: "divergence".into(),
                text: shorten(&text),
                key: None,
                culprit: None,
                ops: Vec::new(),
            });
        }
        t.recorded = true;
        t.summary = rep.text();
        t
    }

    /// Every message, matched (see the module's comment).
    fn messages(
        &mut self,
        rep: &Replay,
        lane_of: &BTreeMap<NodeId, usize>,
        names: &BTreeMap<NodeId, String>,
    ) -> Vec<Message> {
        let lane = |n: NodeId| lane_of.get(&n).copied().unwrap_or(0);
        let recorded: BTreeSet<NodeId> = rep.nodes.iter().copied().collect();
        let mut lives: BTreeMap<NodeId, Vec<(u64, u64)>> = BTreeMap::new();
        for l in &rep.lives {
            lives.entry(l.node).or_default().push((l.start_us, l.end_us));
        }
        let mut links: BTreeMap<(NodeId, NodeId), (Vec<usize>, Vec<usize>)> = BTreeMap::new();
        for (i, w) in self.sends.iter().enumerate() {
            links.entry((w.from, w.to)).or_default().0.push(i);
        }
        for (i, w) in self.recvs.iter().enumerate() {
            links.entry((w.from, w.to)).or_default().1.push(i);
        }
        let sends = std::mem::take(&mut self.sends);
        let recvs = std::mem::take(&mut self.recvs);
        let mut out = Vec::with_capacity(sends.len() + recvs.len() / 8);
        let msg = |w: &Wire, sent: u64, at: u64, fate: &'static str, line: String| Message {
            from: lane(w.from),
            to: lane(w.to),
            sent,
            at: Some(at),
            fate,
            kind: w.kind,
            chatter: w.chatter,
            dup: false,
            line,
        };
        for ((from, to), (s, r)) in links {
            let name = |n: NodeId| names.get(&n).cloned().unwrap_or_else(|| n.to_string());
            let (fname, tname) = (name(from), name(to));
            if !recorded.contains(&from) || !recorded.contains(&to) {
                // A client (or a node not recorded): one side only.
                for &i in &s {
                    let w = &sends[i];
                    let line = timeline::line(
                        Time(w.t),
                        &fname,
                        format_args!("-> {tname} {} ({tname} is not recorded)", w.text),
                    );
                    out.push(msg(w, w.t, w.t, "delivered", line));
                }
                for &i in &r {
                    let w = &recvs[i];
                    let line = timeline::line(Time(w.t), &tname, format_args!("<- {fname} {}", w.text));
                    out.push(msg(w, w.t, w.t, "delivered", line));
                }
                continue;
            }
            // Each receive takes the first untaken send with its digest,
            // from [`LOOKBACK`] before the last one taken to [`LOOKAHEAD`]
            // after it, sent no later than [`SKEW_US`] after the receive.
            let mut taken: Vec<Option<u64>> = vec![None; s.len()];
            let (mut first, mut next) = (0usize, 0usize);
            for &ri in &r {
                let w = &recvs[ri];
                while first < s.len() && taken[first].is_some() {
                    first += 1;
                }
                let begin = first.max(next.saturating_sub(LOOKBACK));
                let end = next.saturating_add(LOOKAHEAD).min(s.len());
                let found = (begin..end).find(|&j| {
                    let sw = &sends[s[j]];
                    taken[j].is_none() && sw.t <= w.t.saturating_add(SKEW_US) && sw.fx == w.fx
                });
                match found {
                    Some(j) => {
                        taken[j] = Some(w.t);
                        next = next.max(j + 1);
                    }
                    None => {
                        let line = timeline::line(
                            Time(w.t),
                            &tname,
                            format_args!("<- {fname} {} (its sending is not in the replay)", w.text),
                        );
                        out.push(msg(w, w.t, w.t, "delivered", line));
                    }
                }
            }
            // For each send, when the next send on the link was received.
            let mut later: Vec<Option<u64>> = vec![None; s.len()];
            let mut seen = None;
            for j in (0..s.len()).rev() {
                later[j] = seen;
                if taken[j].is_some() {
                    seen = taken[j];
                }
            }
            let to_lives = lives.get(&to).map(Vec::as_slice).unwrap_or(&[]);
            for (j, &si) in s.iter().enumerate() {
                let w = &sends[si];
                if let Some(at) = taken[j] {
                    let line = timeline::line(Time(at), &tname, format_args!("<- {fname} {}", w.text));
                    // Received "before" it was sent: the two lives' clocks
                    // are lined up only so well. Drawn arriving as sent (the
                    // line keeps the recorded time).
                    out.push(msg(w, w.t, at.max(w.t), "delivered", line));
                    continue;
                }
                let life =
                    to_lives.iter().rev().find(|(start, _)| *start <= w.t).filter(|(_, end)| *end >= w.t);
                let (fate, at, why) = match life {
                    None => ("down", w.t, format!("lost: {tname} was not running")),
                    Some(&(_, end)) => {
                        let reached_later = later[j].is_some_and(|t| t <= end);
                        if !reached_later && end.saturating_sub(w.t) <= DOWN_WINDOW_US {
                            ("down", end, format!("lost: {tname}'s life ended at {}", Time(end)))
                        } else {
                            ("dropped", w.t, "never received".to_string())
                        }
                    }
                };
                let line = timeline::line(Time(w.t), &fname, format_args!("-x {tname} {} ({why})", w.text));
                out.push(msg(w, w.t, at, fate, line));
            }
        }
        out
    }
}

fn about(rep: &Replay, notes: &[String]) -> String {
    let mut lines = vec![
        format!("kvsim replay {} --html: a real cluster's recording, replayed.", rep.dir.display()),
        "Times are microseconds from the recording's first start; each life's clock is placed by its".into(),
        "start's wall-clock time, to within some 0.1 ms: a message received \"before\" it was sent is".into(),
        "drawn arriving as it is sent (its line keeps the time recorded).".into(),
        "Messages: each send a replayed machine made, matched in order to a receive on its link (by".into(),
        "kind and content digest); one never received is lost: `down` if the receiver's life ended".into(),
        "first (or it was not running), else `dropped`. Clients are not recorded: a request shows at".into(),
        "its arrival at the balancer, an answer at its sending.".into(),
        "Operations: as the balancer saw them, from a request's first arrival to its answer.".into(),
        format!(
            "Lanes: the balancer, the replicas and the first {CLIENT_LANES} clients the balancer heard from; later clients share one."
        ),
        format!("Limits: at most {MESSAGES_MAX} messages (the earliest) and {EVENT_MARKS_MAX} state-change marks."),
    ];
    lines.extend(notes.iter().map(|n| format!("Note: {n}")));
    lines.join("\n") + "\n"
}
