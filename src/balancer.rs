//! The balancer state machine: finds or promotes a leader, sends every write
//! to it, spreads reads over the replicas, and fails over when the leader
//! stops answering.
//!
//! It keeps nothing it cannot learn again from the replicas: a restarted
//! balancer pings everyone, adopts the current leader if there is one, and
//! otherwise runs a promotion. It knows nothing about sockets, threads,
//! clocks or files.

use crate::config::ClusterConfig;
use crate::machine::{Event, Outbox};
use crate::msg::{Msg, Refusal, Reply, Status};
use crate::types::{
    validate_op, Epoch, LogPos, Lsn, NodeId, Op, OpError, ReadMode, ReplicaId, RequestId, Time,
};
use std::collections::BTreeMap;

/// Client requests the balancer holds at most; more are refused `Overloaded`.
pub const MAX_PENDING_REQUESTS: usize = 100_000;
/// How often the balancer looks at its timers (microseconds).
pub const TICK_US: u64 = 10_000;

pub struct Balancer {
    cfg: ClusterConfig,
    views: BTreeMap<ReplicaId, View>,
    state: State,
    /// The newest epoch seen anywhere; promotions go above it.
    highest_epoch: Epoch,
    pending: BTreeMap<u64, Pending>,
    by_request: BTreeMap<RequestId, u64>,
    next_tag: u64,
    rr: usize,
    nonce: u64,
    next_ping: Time,
    next_tick: Time,
    /// Promotions in a row that could not gather a quorum: each waits
    /// longer, so a long outage does not burn through epochs.
    stalls: u32,
}

#[derive(Default)]
struct View {
    last_pong: Option<Time>,
    status: Status,
}

enum State {
    /// Just started: pinging to learn who leads.
    Discovering { until: Time },
    /// Gathering promises for `epoch`. `patient`: the first promotion after
    /// start waits (until the deadline) for every replica, so a fresh cluster
    /// promotes the first one listed, as the original did; failovers decide as
    /// soon as a quorum has answered.
    Preparing { epoch: Epoch, promises: BTreeMap<ReplicaId, LogPos>, deadline: Time, patient: bool },
    Leading {
        leader: ReplicaId,
        epoch: Epoch,
        /// When we sent Promote (None: adopted a leader already leading).
        promoted_at: Option<Time>,
    },
}

struct Pending {
    id: RequestId,
    client: NodeId,
    op: Op,
    read: ReadMode,
    min_lsn: Lsn,
    deadline: Time,
    /// Where it was last forwarded, and when to forward again.
    sent_to: Option<ReplicaId>,
    retry_at: Time,
    forwarded: bool,
    /// A session read a follower refused as behind goes to the leader.
    to_leader: bool,
}

impl Balancer {
    /// `incarnation` must differ between runs of the balancer (the driver
    /// draws it at random): request tags start from it, so an answer to a
    /// request of a previous balancer can never be taken for one of ours.
    pub fn new(cfg: ClusterConfig, now: Time, incarnation: u64) -> Balancer {
        let views = cfg.replicas.iter().map(|r| (*r, View::default())).collect();
        Balancer {
            state: State::Discovering { until: now + 2 * cfg.timing.ping_us },
            cfg,
            views,
            highest_epoch: Epoch(0),
            pending: BTreeMap::new(),
            by_request: BTreeMap::new(),
            next_tag: incarnation,
            rr: 0,
            nonce: 0,
            next_ping: now,
            next_tick: now,
            stalls: 0,
        }
    }

    // ---- getters ----

    /// The leader and epoch requests go to, once known.
    pub fn leader(&self) -> Option<(ReplicaId, Epoch)> {
        match self.state {
            State::Leading { leader, epoch, .. } => Some((leader, epoch)),
            _ => None,
        }
    }
    pub fn pending_requests(&self) -> usize {
        self.pending.len()
    }
    pub fn next_wakeup(&self) -> Option<Time> {
        Some(self.next_tick.min(self.next_ping))
    }

    // ---- inputs ----

    pub fn on_tick(&mut self, now: Time, out: &mut Outbox) {
        if now >= self.next_ping {
            self.next_ping = now + self.cfg.timing.ping_us;
            self.nonce += 1;
            for r in self.cfg.replicas.clone() {
                out.send(NodeId::Replica(r), Msg::Ping { nonce: self.nonce });
            }
        }
        if now < self.next_tick {
            return;
        }
        self.next_tick = now + TICK_US;
        match &self.state {
            State::Discovering { until } if now >= *until => self.decide(now, out),
            State::Preparing { promises, deadline, .. }
                if now >= *deadline && promises.len() >= self.cfg.promotion_quorum() =>
            {
                self.conclude(now, out)
            }
            State::Preparing { epoch, promises, deadline, .. } if now >= *deadline => {
                out.event(Event::PromotionStalled {
                    epoch: *epoch,
                    heard: promises.len(),
                    needed: self.cfg.promotion_quorum(),
                });
                self.stalls += 1;
                self.start_promotion(now, out);
            }
            State::Leading { leader, epoch, .. } if !self.alive(*leader, now) => {
                out.event(Event::LeaderLost { leader: *leader, epoch: *epoch });
                self.start_promotion(now, out);
            }
            _ => {}
        }
        self.expire_and_retry(now, out);
    }

    pub fn on_message(&mut self, now: Time, from: NodeId, msg: Msg, out: &mut Outbox) {
        match (from, msg) {
            (_, Msg::Request { id, op, read, min_lsn }) => {
                self.on_request(now, from, id, op, read, min_lsn, out)
            }
            (NodeId::Replica(r), Msg::Pong { status, .. }) => self.on_pong(now, r, status, out),
            (NodeId::Replica(r), Msg::Promise { epoch, last }) => self.on_promise(now, r, epoch, last, out),
            (NodeId::Replica(_), Msg::PrepareRefused { promised, .. }) => {
                self.highest_epoch = self.highest_epoch.max(promised);
            }
            (NodeId::Replica(r), Msg::WriteResult { id, result }) => {
                let Some(&tag) = self.by_request.get(&id) else { return };
                match result {
                    Ok(lsn) => self.respond(tag, Ok(Reply { value: None, lsn }), out),
                    Err(Refusal::Invalid) => {
                        self.respond(tag, Err(OpError::Invalid("refused by leader".into())), out)
                    }
                    Err(Refusal::Superseded) => {
                        self.respond(tag, Err(OpError::Invalid("superseded by a newer request".into())), out)
                    }
                    Err(Refusal::NotLeader | Refusal::Behind) => self.retry_later(tag, r, now),
                }
            }
            (NodeId::Replica(r), Msg::ReadResult { tag, result }) => match result {
                Ok(reply) => {
                    let ours = |p: &Pending| p.sent_to == Some(r) && !p.op.is_write();
                    if self.pending.get(&tag).is_some_and(ours) {
                        self.respond(tag, Ok(reply), out);
                    }
                }
                Err(Refusal::Behind) => {
                    // A follower behind the client's session goes to the
                    // leader at once; a leader still behind (just promoted)
                    // is asked again a tick later, not in a tight loop.
                    let Some(p) = self.pending.get_mut(&tag) else { return };
                    if p.to_leader {
                        self.retry_later(tag, r, now);
                    } else {
                        p.to_leader = true;
                        self.dispatch(now, tag, out);
                    }
                }
                Err(_) => self.retry_later(tag, r, now),
            },
            _ => {}
        }
    }

    // ---- leadership ----

    fn alive(&self, r: ReplicaId, now: Time) -> bool {
        self.views
            .get(&r)
            .and_then(|v| v.last_pong)
            .is_some_and(|t| now.saturating_sub(t) <= self.cfg.timing.dead_after_us)
    }

    fn on_pong(&mut self, now: Time, r: ReplicaId, status: Status, out: &mut Outbox) {
        self.highest_epoch = self.highest_epoch.max(status.promised);
        if let Some(v) = self.views.get_mut(&r) {
            v.last_pong = Some(now);
            v.status = status;
        }
        match self.state {
            State::Leading { leader, epoch, promoted_at } => {
                if let Some(e) = status.leading {
                    if e > epoch {
                        // Someone newer leads (a promotion we had forgotten).
                        self.adopt(now, r, e, out);
                    }
                } else if r == leader {
                    // Not leading. Just promoted: our Promote may have been
                    // lost or be on its way, so say it again. Otherwise the
                    // leader restarted or stepped down; a restarted replica
                    // never leads an epoch twice, so promote anew.
                    let recent =
                        promoted_at.is_some_and(|t| now.saturating_sub(t) <= 2 * self.cfg.timing.ping_us);
                    if status.promised == epoch && recent {
                        out.send(NodeId::Replica(r), Msg::Promote { epoch });
                    } else {
                        out.event(Event::LeaderLost { leader, epoch });
                        self.start_promotion(now, out);
                    }
                }
            }
            State::Discovering { .. } => {
                if self.views.values().all(|v| v.last_pong.is_some()) {
                    self.decide(now, out);
                }
            }
            State::Preparing { .. } => {}
        }
    }

    /// End of discovery: adopt the leader of the newest epoch, or promote.
    fn decide(&mut self, now: Time, out: &mut Outbox) {
        let leading = self
            .views
            .iter()
            .filter(|(r, _)| self.alive(**r, now))
            .filter_map(|(r, v)| v.status.leading.map(|e| (e, *r)))
            .max();
        match leading {
            Some((e, r)) if e >= self.highest_epoch => self.adopt(now, r, e, out),
            _ => self.start_promotion(now, out),
        }
    }

    fn adopt(&mut self, now: Time, leader: ReplicaId, epoch: Epoch, out: &mut Outbox) {
        self.state = State::Leading { leader, epoch, promoted_at: None };
        self.highest_epoch = self.highest_epoch.max(epoch);
        out.event(Event::Adopted { leader, epoch });
        self.flush_waiting(now, out);
    }

    fn start_promotion(&mut self, now: Time, out: &mut Outbox) {
        let epoch = Epoch(self.highest_epoch.0 + 1);
        self.highest_epoch = epoch;
        let patient = matches!(self.state, State::Discovering { .. });
        self.state = State::Preparing {
            epoch,
            patient,
            promises: BTreeMap::new(),
            deadline: now + (self.cfg.timing.promote_timeout_us << self.stalls.min(3)),
        };
        out.event(Event::Promoting { epoch });
        for r in self.cfg.replicas.clone() {
            out.send(NodeId::Replica(r), Msg::Prepare { epoch });
        }
    }

    fn on_promise(&mut self, now: Time, r: ReplicaId, e: Epoch, last: LogPos, out: &mut Outbox) {
        let quorum = self.cfg.promotion_quorum();
        let all = self.cfg.replicas.len();
        let State::Preparing { epoch, promises, patient, .. } = &mut self.state else { return };
        if e != *epoch {
            return;
        }
        promises.insert(r, last);
        if promises.len() < quorum || (*patient && promises.len() < all) {
            return;
        }
        self.conclude(now, out);
    }

    /// Promotes the most up-to-date replica among those that promised.
    fn conclude(&mut self, now: Time, out: &mut Outbox) {
        let State::Preparing { epoch, promises, .. } = &self.state else { return };
        // The most up-to-date log wins; ties go to the lowest id (the first
        // replica listed, as in the original).
        let (winner, last) = promises
            .iter()
            .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))
            .map(|(r, l)| (*r, *l))
            .expect("quorum is at least one");
        let epoch = *epoch;
        let heard = promises.len();
        out.event(Event::Promoted { leader: winner, epoch, last, heard });
        out.send(NodeId::Replica(winner), Msg::Promote { epoch });
        self.state = State::Leading { leader: winner, epoch, promoted_at: Some(now) };
        self.stalls = 0;
        // The new leader has not answered a ping yet; count from now.
        if let Some(v) = self.views.get_mut(&winner) {
            v.last_pong = Some(now);
        }
        self.flush_waiting(now, out);
    }

    // ---- requests ----

    #[allow(clippy::too_many_arguments)]
    fn on_request(
        &mut self,
        now: Time,
        client: NodeId,
        id: RequestId,
        op: Op,
        read: ReadMode,
        min_lsn: Lsn,
        out: &mut Outbox,
    ) {
        if let Err(e) = validate_op(&op) {
            out.send(client, Msg::Response { id, result: Err(e) });
            return;
        }
        if let Some(tag) = self.by_request.get(&id) {
            // A client retry of something still in progress.
            if let Some(p) = self.pending.get_mut(tag) {
                p.client = client;
            }
            return;
        }
        if self.pending.len() >= MAX_PENDING_REQUESTS {
            out.send(client, Msg::Response { id, result: Err(OpError::Overloaded) });
            return;
        }
        let tag = self.next_tag;
        self.next_tag = self.next_tag.wrapping_add(1);
        let deadline = now + self.cfg.timing.request_timeout_us;
        self.pending.insert(
            tag,
            Pending {
                id,
                client,
                op,
                read,
                min_lsn,
                deadline,
                sent_to: None,
                retry_at: Time::MAX,
                forwarded: false,
                to_leader: false,
            },
        );
        self.by_request.insert(id, tag);
        self.dispatch(now, tag, out);
    }

    /// Forwards a pending request to the replica that should serve it, or
    /// leaves it waiting for a leader.
    fn dispatch(&mut self, now: Time, tag: u64, out: &mut Outbox) {
        let leader = self.leader().map(|(r, _)| r);
        let Some(p) = self.pending.get(&tag) else { return };
        let leader_read = p.read == ReadMode::Leader && !self.cfg.bugs.leader_reads_anywhere;
        let target = if p.op.is_write() || leader_read || p.to_leader {
            leader
        } else {
            // (`leader_reads_anywhere` is a deliberate bug: such reads go
            // round robin and may be stale.)
            self.pick_reader(now, p.read, p.min_lsn).or(leader)
        };
        let p = self.pending.get_mut(&tag).expect("checked");
        let Some(target) = target else {
            p.sent_to = None;
            p.retry_at = Time::MAX;
            return;
        };
        let msg = match &p.op {
            Op::Set { key, value } => Msg::Write { id: p.id, key: key.clone(), value: Some(value.clone()) },
            Op::Del { key } => Msg::Write { id: p.id, key: key.clone(), value: None },
            Op::Get { key } => {
                let mode = if leader_read || p.read != ReadMode::Leader { p.read } else { ReadMode::Any };
                Msg::Read { tag, key: key.clone(), mode, min_lsn: p.min_lsn }
            }
        };
        p.sent_to = Some(target);
        p.forwarded = true;
        p.retry_at = now + self.cfg.timing.forward_retry_us;
        out.send(NodeId::Replica(target), msg);
    }

    /// Round robin over live replicas; `session` skips those known to be
    /// behind the client.
    fn pick_reader(&mut self, now: Time, mode: ReadMode, min_lsn: Lsn) -> Option<ReplicaId> {
        let n = self.cfg.replicas.len();
        for i in 0..n {
            let r = self.cfg.replicas[(self.rr + i) % n];
            if !self.alive(r, now) {
                continue;
            }
            let check_session = mode == ReadMode::Session && !self.cfg.bugs.session_ignores_lsn;
            if check_session && self.views[&r].status.applied < min_lsn {
                continue;
            }
            self.rr = (self.rr + i + 1) % n;
            return Some(r);
        }
        None
    }

    fn retry_later(&mut self, tag: u64, from: ReplicaId, now: Time) {
        if let Some(p) = self.pending.get_mut(&tag) {
            if p.sent_to == Some(from) {
                p.retry_at = now + TICK_US;
            }
        }
    }

    fn flush_waiting(&mut self, now: Time, out: &mut Outbox) {
        let waiting: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| p.sent_to.is_none() || p.op.is_write())
            .map(|(t, _)| *t)
            .collect();
        for tag in waiting {
            self.dispatch(now, tag, out);
        }
    }

    fn expire_and_retry(&mut self, now: Time, out: &mut Outbox) {
        let expired: Vec<u64> =
            self.pending.iter().filter(|(_, p)| now >= p.deadline).map(|(t, _)| *t).collect();
        for tag in expired {
            let p = &self.pending[&tag];
            let err = if p.forwarded { OpError::Timeout } else { OpError::Unavailable };
            self.respond(tag, Err(err), out);
        }
        let retry: Vec<u64> =
            self.pending.iter().filter(|(_, p)| now >= p.retry_at).map(|(t, _)| *t).collect();
        for tag in retry {
            self.dispatch(now, tag, out);
        }
    }

    fn respond(&mut self, tag: u64, result: Result<Reply, OpError>, out: &mut Outbox) {
        let Some(p) = self.pending.remove(&tag) else { return };
        self.by_request.remove(&p.id);
        out.send(p.client, Msg::Response { id: p.id, result });
    }
}
