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
use crate::msg::{ClusterView, Msg, Phase, Refusal, ReplicaView, Reply, Status};
use crate::types::{
    validate_op, ClientId, Epoch, LogPos, Lsn, NodeId, Op, OpError, ReadMode, ReplicaId, RequestId, Time,
};
use std::collections::BTreeMap;

/// Client requests the balancer holds at most; more are refused `Overloaded`.
pub const MAX_PENDING_REQUESTS: usize = 100_000;
/// ... and the bytes of their keys and values, at most.
pub const MAX_PENDING_BYTES: usize = 64 << 20;
/// How often the balancer looks at its timers (microseconds).
pub const TICK_US: u64 = 10_000;
/// Clients whose newest request the balancer remembers at most; when full,
/// those idle for ten request timeouts are forgotten, and a new client is
/// refused `Overloaded` if none is.
pub const MAX_CLIENT_RECORDS: usize = 100_000;
/// The highest epoch a promotion may use: far beyond any real cluster's
/// failovers, and low enough that `epoch + 1` can never overflow. A replica
/// refuses a Prepare above it.
pub const MAX_EPOCH: Epoch = Epoch(u64::MAX / 2);

/// A client's newest request, as this balancer has seen it.
#[derive(Clone, Copy, Debug)]
struct Seen {
    seq: u64,
    /// The first and highest attempt numbers that arrived.
    first_attempt: u32,
    max_attempt: u32,
    /// Some copy of it was sent to a replica.
    forwarded: bool,
    /// When a copy last arrived.
    touched: Time,
}

pub struct Balancer {
    cfg: ClusterConfig,
    views: BTreeMap<ReplicaId, View>,
    state: State,
    /// The newest epoch seen anywhere; promotions go above it.
    highest_epoch: Epoch,
    /// Names this balancer's promotions (its incarnation): with the epoch it
    /// makes a ballot no other promotion attempt shares.
    ballot: u64,
    /// What this balancer has seen of each client's newest request, so a
    /// stale copy is never forwarded and `Unavailable` is only said when it
    /// is certain. Bounded by `MAX_CLIENT_RECORDS`.
    seen: BTreeMap<ClientId, Seen>,
    /// Set when the node shuts down: new requests are answered at once.
    stopping: bool,
    /// When `seen` may next be swept for idle clients (it is full).
    next_forget: Time,
    pending: BTreeMap<u64, Pending>,
    /// Key and value bytes held in `pending`.
    pending_bytes: usize,
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
    ///
    /// `excluded`: replicas whose promises do not count (a leader deposed
    /// because it was cut off from its followers: promoting it again would
    /// change nothing). `resend_at`: Prepare goes again to those that have
    /// not answered, so one lost message does not cost a whole timeout.
    Preparing {
        epoch: Epoch,
        promises: BTreeMap<ReplicaId, (LogPos, bool)>,
        deadline: Time,
        patient: bool,
        excluded: Option<ReplicaId>,
        resend_at: Time,
    },
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
    /// This entry was sent to a replica (only bug D judges by it).
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
            ballot: incarnation,
            seen: BTreeMap::new(),
            stopping: false,
            next_forget: now,
            pending_bytes: 0,
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
    /// What this balancer knows of the cluster at `now`, for status
    /// reports (addresses left empty: the driver knows them). Read only.
    pub fn view(&self, now: Time) -> ClusterView {
        let (phase, leader, epoch) = match &self.state {
            State::Discovering { .. } => (Phase::Discovering, None, self.highest_epoch),
            State::Preparing { epoch, .. } => (Phase::Promoting, None, *epoch),
            State::Leading { leader, epoch, .. } => (Phase::Leading, Some(*leader), *epoch),
        };
        let replicas = self
            .views
            .iter()
            .map(|(r, v)| ReplicaView {
                id: *r,
                addr: String::new(),
                heard_us_ago: v.last_pong.map(|t| now.saturating_sub(t)),
                alive: self.alive(*r, now),
                status: v.status,
            })
            .collect();
        ClusterView { phase, leader, epoch, replicas }
    }
    pub fn pending_requests(&self) -> usize {
        self.pending.len()
    }
    /// The configuration this balancer runs.
    pub fn config(&self) -> &ClusterConfig {
        &self.cfg
    }
    pub fn next_wakeup(&self) -> Option<Time> {
        Some(self.next_tick.min(self.next_ping))
    }

    /// The node is shutting down: requests not yet taken are answered at
    /// once (`Unavailable` where that is certain), and none is forwarded.
    pub fn stop_accepting(&mut self) {
        self.stopping = true;
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
        // Woken long after the tick was due (the process was paused, or
        // starved): pongs that arrived meanwhile have not been read yet, so
        // the silence is ours, not the replicas'. Credit it to every view
        // instead of failing over a leader that answered all along.
        let late = now.saturating_sub(self.next_tick);
        if late > self.cfg.timing.dead_after_us / 4 {
            for v in self.views.values_mut() {
                v.last_pong = v.last_pong.map(|t| t + late);
            }
        }
        self.next_tick = now + TICK_US;
        let quorum_met = self.quorum_met();
        let leader_dead = self.leader().is_some_and(|(l, _)| !self.alive(l, now));
        let (replicas, ballot, ping_us) = (&self.cfg.replicas, self.ballot, self.cfg.timing.ping_us);
        match &mut self.state {
            State::Discovering { until } if now >= *until => self.decide(now, out),
            State::Preparing { deadline, .. } if now >= *deadline && quorum_met => self.conclude(now, out),
            State::Preparing { epoch, promises, deadline, .. } if now >= *deadline => {
                let (epoch, heard) = (*epoch, promises.len());
                out.event(Event::PromotionStalled { epoch, heard, needed: self.cfg.promotion_quorum() });
                self.stalls = self.stalls.saturating_add(1);
                // Nobody can be promoted right now: say so to the requests
                // that were never forwarded rather than keep them waiting.
                self.fail_unforwarded(out);
                // The next attempt counts every replica again: a leader
                // excluded for being cut off may be the only way to a quorum
                // (if it is still cut off once promoted, it is failed over
                // again).
                self.start_promotion(now, None, out);
            }
            State::Preparing { epoch, promises, resend_at, .. } if now >= *resend_at => {
                // Prepare again to whoever has not answered: a lost Prepare
                // or Promise must not cost the whole promotion timeout. (A
                // replica answers a repeat of the same ballot with the same
                // promise; it never promises an epoch twice.)
                *resend_at = now + ping_us;
                for r in replicas.iter().filter(|r| !promises.contains_key(r)) {
                    out.send(NodeId::Replica(*r), Msg::Prepare { epoch: *epoch, ballot });
                }
            }
            State::Leading { leader, epoch, .. } if leader_dead => {
                out.event(Event::LeaderLost { leader: *leader, epoch: *epoch });
                self.start_promotion(now, None, out);
            }
            _ => {}
        }
        self.expire_and_retry(now, out);
    }

    pub fn on_message(&mut self, now: Time, from: NodeId, msg: Msg, out: &mut Outbox) {
        match (from, msg) {
            (NodeId::Client(_), Msg::Request { id, attempt, op, read, min_lsn }) => {
                self.on_request(now, from, id, attempt, op, read, min_lsn, out)
            }
            (NodeId::Replica(r), Msg::Pong { status, .. }) => self.on_pong(now, r, status, out),
            (NodeId::Replica(r), Msg::Promise { epoch, ballot, last, missing }) => {
                self.on_promise(now, r, epoch, ballot, last, missing, out)
            }
            (NodeId::Replica(_), Msg::PrepareRefused { epoch, ballot, promised }) => {
                self.note_epoch(promised);
                // Our epoch is taken (or passed): a promotion never goes on
                // in an epoch some replica has refused; it moves above it.
                let ours = matches!(self.state, State::Preparing { epoch: e, .. } if e == epoch);
                if ours && ballot == self.ballot && promised >= epoch && !self.cfg.bugs.epochs_promised_twice
                {
                    let excluded = match self.state {
                        State::Preparing { excluded, .. } => excluded,
                        _ => None,
                    };
                    self.start_promotion(now, excluded, out);
                }
            }
            (NodeId::Replica(r), Msg::WriteResult { id, result }) => {
                let Some(&tag) = self.by_request.get(&id) else { return };
                if self.pending.get(&tag).is_none_or(|p| !p.op.is_write()) {
                    return;
                }
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
                    if p.op.is_write() || p.sent_to != Some(r) {
                        return;
                    }
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

    /// Raises the newest epoch seen, ignoring any above `MAX_EPOCH` (no
    /// promotion may use one; a replica reporting it is lying or broken).
    fn note_epoch(&mut self, e: Epoch) {
        if e <= MAX_EPOCH {
            self.highest_epoch = self.highest_epoch.max(e);
        }
    }

    fn on_pong(&mut self, now: Time, r: ReplicaId, status: Status, out: &mut Outbox) {
        if !self.views.contains_key(&r) {
            return;
        }
        self.note_epoch(status.promised);
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
                    } else if r == leader
                        && e == epoch
                        && status.cut_off
                        && !self.cfg.bugs.leader_judged_by_pongs
                    {
                        // Alive but cut off from its followers: it cannot
                        // commit anything. Promote another, without it.
                        out.event(Event::LeaderLost { leader, epoch });
                        self.start_promotion(now, Some(leader), out);
                    }
                } else if r == leader {
                    // Not leading. Just promoted: our Promote may have been
                    // lost or be on its way, so say it again. Otherwise the
                    // leader restarted or stepped down; a restarted replica
                    // never leads an epoch twice, so promote anew.
                    let recent =
                        promoted_at.is_some_and(|t| now.saturating_sub(t) <= 2 * self.cfg.timing.ping_us);
                    if status.promised == epoch && recent {
                        out.send(NodeId::Replica(r), Msg::Promote { epoch, ballot: self.ballot });
                    } else {
                        out.event(Event::LeaderLost { leader, epoch });
                        self.start_promotion(now, None, out);
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
            .filter(|(r, v)| self.alive(**r, now) && !v.status.cut_off)
            .filter_map(|(r, v)| v.status.leading.map(|e| (e, *r)))
            .max();
        match leading {
            Some((e, r)) if e >= self.highest_epoch => self.adopt(now, r, e, out),
            _ => self.start_promotion(now, None, out),
        }
    }

    fn adopt(&mut self, now: Time, leader: ReplicaId, epoch: Epoch, out: &mut Outbox) {
        self.state = State::Leading { leader, epoch, promoted_at: None };
        self.note_epoch(epoch);
        self.stalls = 0;
        out.event(Event::Adopted { leader, epoch });
        self.flush_waiting(now, out);
    }

    /// Starts a promotion in an epoch above every one seen. `excluded`: a
    /// replica whose promise must not count (see `State::Preparing`).
    fn start_promotion(&mut self, now: Time, excluded: Option<ReplicaId>, out: &mut Outbox) {
        let patient = matches!(self.state, State::Discovering { .. });
        // Checked: epochs come from the wire. At the limit the cluster stays
        // without a leader (writes unavailable) rather than wrap to an epoch
        // replicas have already promised.
        let Some(epoch) = self.highest_epoch.0.checked_add(1).map(Epoch).filter(|e| *e <= MAX_EPOCH) else {
            out.event(Event::PromotionStalled { epoch: self.highest_epoch, heard: 0, needed: 1 });
            self.state = State::Preparing {
                epoch: self.highest_epoch,
                patient,
                promises: BTreeMap::new(),
                deadline: Time::MAX,
                excluded,
                resend_at: Time::MAX,
            };
            return;
        };
        self.highest_epoch = epoch;
        self.state = State::Preparing {
            epoch,
            patient,
            promises: BTreeMap::new(),
            deadline: now + (self.cfg.timing.promote_timeout_us << self.stalls.min(2)),
            excluded,
            resend_at: now + self.cfg.timing.ping_us,
        };
        out.event(Event::Promoting { epoch });
        for r in self.cfg.replicas.clone() {
            out.send(NodeId::Replica(r), Msg::Prepare { epoch, ballot: self.ballot });
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn on_promise(
        &mut self,
        now: Time,
        r: ReplicaId,
        e: Epoch,
        ballot: u64,
        last: LogPos,
        missing: bool,
        out: &mut Outbox,
    ) {
        let all = self.cfg.replicas.len();
        if !self.views.contains_key(&r) || ballot != self.ballot {
            return;
        }
        let State::Preparing { epoch, promises, patient, .. } = &mut self.state else { return };
        if e != *epoch {
            return;
        }
        promises.insert(r, (last, missing));
        let patient = *patient && promises.len() < all;
        if patient || !self.quorum_met() {
            return;
        }
        self.conclude(now, out);
    }

    /// Whether the promises gathered so far prove a promotion safe. A
    /// quorum of replicas holding every row they confirmed always does; a
    /// promise from a replica that may have lost confirmed rows counts only
    /// when every replica has promised (then every acknowledged write still
    /// held anywhere is held by the most up-to-date log). The excluded
    /// replica never counts.
    fn quorum_met(&self) -> bool {
        let State::Preparing { promises, excluded, .. } = &self.state else { return false };
        let counted = promises.iter().filter(|(r, _)| Some(**r) != *excluded);
        let whole = counted.clone().filter(|(_, (_, missing))| !missing).count();
        whole >= self.cfg.promotion_quorum()
            || (excluded.is_none() && promises.len() == self.cfg.replicas.len())
    }

    /// Promotes the most up-to-date replica among those that promised.
    fn conclude(&mut self, now: Time, out: &mut Outbox) {
        let State::Preparing { epoch, promises, excluded, .. } = &self.state else { return };
        // The most up-to-date log wins; ties go to the lowest id (the first
        // replica listed, as in the original).
        let Some((winner, last)) = promises
            .iter()
            .filter(|(r, _)| Some(**r) != *excluded)
            .max_by(|a, b| (a.1).0.cmp(&(b.1).0).then(b.0.cmp(a.0)))
            .map(|(r, (l, _))| (*r, *l))
        else {
            return;
        };
        let epoch = *epoch;
        let heard = promises.len();
        out.event(Event::Promoted { leader: winner, epoch, last, heard });
        out.send(NodeId::Replica(winner), Msg::Promote { epoch, ballot: self.ballot });
        self.state = State::Leading { leader: winner, epoch, promoted_at: Some(now) };
        self.stalls = 0;
        // The new leader has not answered a ping yet; count from now.
        if let Some(v) = self.views.get_mut(&winner) {
            v.last_pong = Some(now);
            v.status.cut_off = false;
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
        attempt: u32,
        op: Op,
        read: ReadMode,
        min_lsn: Lsn,
        out: &mut Outbox,
    ) {
        if NodeId::Client(id.client) != client || attempt == 0 {
            return; // not this client's request to make
        }
        if let Err(e) = validate_op(&op) {
            out.send(client, Msg::Response { id, attempt, result: Err(e) });
            return;
        }
        // Stale copies (an older request, or an older attempt of this one)
        // are never forwarded: an `Unavailable` answered for them must stay
        // true. A repeat of the newest attempt joins it if still pending.
        let seen = self.seen.get(&id.client).copied();
        let drop_stale = !self.cfg.bugs.unavailable_counts_answers;
        match seen {
            Some(s) if drop_stale && (s.seq > id.seq || (s.seq == id.seq && attempt < s.max_attempt)) => {
                return
            }
            Some(s)
                if drop_stale
                    && s.seq == id.seq
                    && attempt == s.max_attempt
                    && !self.by_request.contains_key(&id) =>
            {
                return
            }
            Some(s) if s.seq == id.seq => {
                self.seen.insert(id.client, Seen { max_attempt: attempt, touched: now, ..s });
            }
            _ => {
                if self.seen.len() >= MAX_CLIENT_RECORDS && now >= self.next_forget {
                    // Forget clients idle for ten request timeouts: no
                    // retry of theirs is still coming.
                    self.next_forget = now + self.cfg.timing.request_timeout_us;
                    let horizon = now.0.saturating_sub(10 * self.cfg.timing.request_timeout_us);
                    let pending = &self.by_request;
                    self.seen.retain(|c, s| {
                        s.touched.0 >= horizon || pending.contains_key(&RequestId { client: *c, seq: s.seq })
                    });
                }
                if self.seen.len() >= MAX_CLIENT_RECORDS {
                    // Not recorded, not forwarded: certainly not applied here.
                    out.send(client, Msg::Response { id, attempt, result: Err(OpError::Overloaded) });
                    return;
                }
                let fresh = Seen {
                    seq: id.seq,
                    first_attempt: attempt,
                    max_attempt: attempt,
                    forwarded: false,
                    touched: now,
                };
                self.seen.insert(id.client, fresh);
            }
        }
        if let Some(tag) = self.by_request.get(&id) {
            // A client retry of something still in progress.
            if let Some(p) = self.pending.get_mut(tag) {
                p.client = client;
            }
            return;
        }
        let bytes = op_bytes(&op);
        let full =
            self.pending.len() >= MAX_PENDING_REQUESTS || self.pending_bytes + bytes > MAX_PENDING_BYTES;
        if self.stopping || full {
            // Refused now; but an earlier attempt may have been forwarded,
            // and then the outcome is unknown, not a certain failure.
            let e = match self.unforwarded_error(id) {
                OpError::Unavailable if !self.stopping => OpError::Overloaded,
                e => e,
            };
            out.send(client, Msg::Response { id, attempt, result: Err(e) });
            return;
        }
        let tag = self.next_tag;
        self.next_tag = self.next_tag.wrapping_add(1);
        let deadline = now + self.cfg.timing.request_timeout_us;
        self.pending_bytes += bytes;
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
        // A promotion that has already stalled will not promote soon: a
        // write that cannot be forwarded is refused at once, not held.
        let stalled = self.stalls > 0 && matches!(self.state, State::Preparing { .. });
        self.dispatch(now, tag, out);
        let unsent = self.pending.get(&tag).is_some_and(|p| p.sent_to.is_none());
        if stalled && unsent && self.unforwarded_error(id) == OpError::Unavailable {
            self.respond(tag, Err(OpError::Unavailable), out);
        }
    }

    /// The answer for a request this balancer gives up on: `Unavailable`
    /// only if it saw the request's first attempt and never forwarded any
    /// copy (so no copy can have been applied); otherwise the outcome is
    /// unknown.
    fn unforwarded_error(&self, id: RequestId) -> OpError {
        if self.cfg.bugs.unavailable_counts_answers {
            // Bug D as it was: judged by the one pending entry alone.
            let forwarded =
                self.by_request.get(&id).and_then(|t| self.pending.get(t)).is_some_and(|p| p.forwarded);
            return if forwarded { OpError::Timeout } else { OpError::Unavailable };
        }
        match self.seen.get(&id.client) {
            Some(s) if s.seq == id.seq && s.first_attempt == 1 && !s.forwarded => OpError::Unavailable,
            _ => OpError::Timeout,
        }
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
        let id = p.id;
        if let Some(s) = self.seen.get_mut(&id.client).filter(|s| s.seq == id.seq) {
            s.forwarded = true;
        }
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

    /// A promotion stalled: answers `Unavailable` to every request that was
    /// never forwarded anywhere (certainly not applied). Requests forwarded
    /// before stay, for the next leader: answering them now could only say
    /// "timed out", which helps no one.
    fn fail_unforwarded(&mut self, out: &mut Outbox) {
        let waiting: Vec<(u64, RequestId)> =
            self.pending.iter().filter(|(_, p)| p.sent_to.is_none()).map(|(t, p)| (*t, p.id)).collect();
        for (tag, id) in waiting {
            if self.unforwarded_error(id) == OpError::Unavailable {
                self.respond(tag, Err(OpError::Unavailable), out);
            }
        }
    }

    fn expire_and_retry(&mut self, now: Time, out: &mut Outbox) {
        let expired: Vec<(u64, RequestId)> =
            self.pending.iter().filter(|(_, p)| now >= p.deadline).map(|(t, p)| (*t, p.id)).collect();
        for (tag, id) in expired {
            let e = self.unforwarded_error(id);
            self.respond(tag, Err(e), out);
        }
        let retry: Vec<u64> =
            self.pending.iter().filter(|(_, p)| now >= p.retry_at).map(|(t, _)| *t).collect();
        for tag in retry {
            self.dispatch(now, tag, out);
        }
    }

    fn respond(&mut self, tag: u64, result: Result<Reply, OpError>, out: &mut Outbox) {
        let Some(p) = self.pending.remove(&tag) else { return };
        self.pending_bytes -= op_bytes(&p.op);
        self.by_request.remove(&p.id);
        let attempt = self.seen.get(&p.id.client).filter(|s| s.seq == p.id.seq).map_or(1, |s| s.max_attempt);
        out.send(p.client, Msg::Response { id: p.id, attempt, result });
    }
}

/// The bytes a pending request holds (its key and value).
fn op_bytes(op: &Op) -> usize {
    match op {
        Op::Get { key } | Op::Del { key } => key.len(),
        Op::Set { key, value } => key.len() + value.len(),
    }
}
