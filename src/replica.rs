//! The replica state machine: log, applied key-value state, leadership.
//!
//! A replica is a follower until the balancer promotes it. As leader it gives
//! every write the next LSN, sends the row to every follower, and answers the
//! write once `sync_acks` followers have confirmed the row durable. Followers
//! apply rows strictly in LSN order, hold rows that arrive early, and ask the
//! leader for what they miss.
//!
//! This file knows nothing about sockets, threads, clocks, files or global
//! randomness: time comes in as `now`, durability goes out as
//! [`Effect::Persist`](crate::machine::Effect) and comes back as
//! [`Replica::on_persisted`].

use crate::config::ClusterConfig;
use crate::log::{At, Log};
use crate::machine::{Event, Outbox, PersistOp, Snapshot, Stored};
use crate::msg::{Msg, Refusal, Reply, Status};
use crate::types::{
    validate_op, ClientId, Epoch, LogPos, Lsn, NodeId, Op, ReadMode, ReplicaId, RequestId, Row, RowBody, Time,
};
use std::collections::{BTreeMap, VecDeque};

/// The highest LSN a replica accepts from a peer: far beyond any real log,
/// and low enough that arithmetic on it never overflows.
pub const MAX_LSN: Lsn = Lsn(u64::MAX / 2);
/// Rows per `Append` message at most.
pub const MAX_ROWS_PER_APPEND: usize = 256;
/// Early (out-of-order) appends a follower holds at most, by count and by
/// the bytes of their keys and values (a peer must not be able to park
/// gigabytes in a follower's memory).
pub const MAX_HELD_APPENDS: usize = 1024;
pub const MAX_HELD_BYTES: usize = 32 << 20;
/// Linearizable reads a leader keeps waiting at most.
pub const MAX_PENDING_READS: usize = 65_536;

pub use crate::config::Bugs;

pub struct Replica {
    id: ReplicaId,
    cfg: ClusterConfig,
    /// The newest epoch this replica has promised (or seen); older epochs are
    /// refused.
    promised: Epoch,
    log: Log,
    /// Rows up to here are on disk.
    durable: Lsn,
    commit: Lsn,
    applied: Lsn,
    kv: BTreeMap<String, String>,
    /// The last write applied for each client: the at-most-once table. It is
    /// derived from applied rows, so it is replicated with them.
    sessions: BTreeMap<ClientId, (u64, Lsn)>,
    role: Role,
    next_persist: u64,
    /// Persist ids not yet complete, with the log end each one makes durable.
    persisting: VecDeque<(u64, Lsn)>,
    /// Messages that may only leave once a persist id is complete.
    after_persist: VecDeque<(u64, NodeId, Msg)>,
    /// Appends that arrived before the rows they follow, by `prev.lsn`.
    held: Held,
    /// The newest (epoch, matched, probe) this follower has acknowledged.
    last_ack: (Epoch, Lsn, u64),
    /// The epoch and ballot this process (not its disk) promised in answer
    /// to a Prepare: the only one it may be promoted to lead, and the only
    /// Prepare it answers again (with the same promise) if repeated.
    prepared: Option<(Epoch, u64)>,
    /// Rows skipped by the last commit advance (leader only; see `set_commit`).
    skipped: Vec<Lsn>,
    /// Set while this replica may lack rows it once confirmed (its disk was
    /// discarded as corrupt, or recovery cut rows off its log's tail): its
    /// promises say so (`missing`), and count only when every replica
    /// promises, until it has caught up with a leader of an epoch at least
    /// the one it had promised. `Some(target)`: the end of that leader's log
    /// when it first reached us; holding everything up to there, we hold
    /// every row we could have confirmed.
    resync: Option<Option<Lsn>>,
    /// Names this process among the replica's lives (drawn at random by the
    /// driver: `with_incarnation`); 0 when the driver gives none.
    incarnation: u64,
}

enum Role {
    Follower { leader: Option<ReplicaId> },
    Leader(Box<Leading>),
}

struct Leading {
    epoch: Epoch,
    peers: BTreeMap<ReplicaId, Peer>,
    /// Writes waiting for their row to commit: lsn -> (who asked, which request).
    writes: BTreeMap<Lsn, (NodeId, RequestId)>,
    /// Linearizable reads waiting for confirmation.
    reads: VecDeque<PendingRead>,
    /// Confirmation round counter, carried in heartbeats.
    probe: u64,
    /// The latest time this leader was told (inputs carry `now`).
    now: Time,
    /// When it became leader: followers count as heard from then.
    since: Time,
    next_heartbeat: Time,
}

struct Peer {
    /// Highest LSN known to match and be durable on the peer.
    matched: Lsn,
    /// Next LSN to send.
    next: Lsn,
    /// Highest confirmation round the peer has answered in this epoch.
    probe_acked: u64,
    /// The peer has answered in this epoch.
    heard: bool,
    /// When the peer last answered in this epoch.
    heard_at: Time,
    /// The incarnation its last acknowledgement named (echoed in appends).
    incarnation: u64,
    /// `matched` at the previous heartbeat: no progress since means resend.
    matched_at_tick: Lsn,
    /// When a snapshot was last sent and not yet acknowledged: they are big,
    /// so one goes out per `SNAPSHOT_RESEND_HEARTBEATS` heartbeats at most.
    snapshot_sent: Option<Time>,
}

/// Heartbeats to wait for a snapshot's acknowledgement before sending again.
pub const SNAPSHOT_RESEND_HEARTBEATS: u64 = 10;

/// The fields of a `Msg::Append`, as a follower handles (or holds) them.
struct Append {
    epoch: Epoch,
    prev: LogPos,
    rows: Vec<Row>,
    commit: Lsn,
    probe: u64,
    end: Lsn,
    echo: u64,
}

/// Early appends, by `prev.lsn`, with the bytes they hold.
#[derive(Default)]
struct Held {
    appends: BTreeMap<Lsn, Append>,
    bytes: usize,
}

impl Held {
    fn size(a: &Append) -> usize {
        let row = |r: &Row| match &r.body {
            RowBody::Put { key, value, .. } => 64 + key.len() + value.as_ref().map_or(0, String::len),
            RowBody::Noop => 64,
        };
        a.rows.iter().map(row).sum()
    }

    /// Holds `a`, dropping the furthest-ahead appends to stay within the
    /// limits (they are asked for again later). One too big to fit is not
    /// held at all.
    fn insert(&mut self, at: Lsn, a: Append) {
        let size = Held::size(&a);
        if size > MAX_HELD_BYTES {
            return;
        }
        if let Some(old) = self.appends.remove(&at) {
            self.bytes -= Held::size(&old);
        }
        while self.appends.len() >= MAX_HELD_APPENDS || self.bytes + size > MAX_HELD_BYTES {
            // The furthest ahead goes first: the new one, if it is that.
            match self.appends.last_key_value() {
                Some((last, _)) if *last > at => {
                    let (_, dropped) = self.appends.pop_last().expect("not empty");
                    self.bytes -= Held::size(&dropped);
                }
                _ => return,
            }
        }
        self.bytes += size;
        self.appends.insert(at, a);
    }

    fn remove(&mut self, at: &Lsn) -> Option<Append> {
        let a = self.appends.remove(at)?;
        self.bytes -= Held::size(&a);
        Some(a)
    }

    /// Forgets appends that follow a position at or before `lsn`.
    fn keep_after(&mut self, lsn: Lsn) {
        let later = self.appends.split_off(&lsn.next());
        let earlier = std::mem::replace(&mut self.appends, later);
        self.bytes -= earlier.values().map(Held::size).sum::<usize>();
    }

    fn clear(&mut self) {
        self.appends.clear();
        self.bytes = 0;
    }
}

/// Whether an append is one a leader could have sent: at most
/// `MAX_ROWS_PER_APPEND` rows, numbered on from `prev` without a gap, epochs
/// never going down and never above the leader's own, and the leader's log
/// reaching at least as far. Anything else is refused whole.
fn valid_append(a: &Append) -> bool {
    if a.rows.len() > MAX_ROWS_PER_APPEND || a.prev.epoch > a.epoch {
        return false;
    }
    let Some(last) = a.prev.lsn.0.checked_add(a.rows.len() as u64) else { return false };
    let mut at = a.prev;
    for row in &a.rows {
        if row.lsn.0 != at.lsn.0 + 1 || row.epoch < at.epoch || row.epoch > a.epoch {
            return false;
        }
        at = row.pos();
    }
    a.end.0 >= last && a.end <= MAX_LSN
}

struct PendingRead {
    from: NodeId,
    tag: u64,
    key: String,
    probe: u64,
    read_index: Lsn,
    arrived: Time,
}

impl Replica {
    /// A replica with nothing on disk.
    pub fn new(id: ReplicaId, cfg: ClusterConfig) -> Replica {
        Replica::recover(id, cfg, Stored::default())
    }

    /// A replica restarted from what it persisted. Memory (applied state,
    /// commit point, leadership) is gone and is learned again.
    pub fn recover(id: ReplicaId, cfg: ClusterConfig, stored: Stored) -> Replica {
        let last = stored.last();
        let base = stored.base();
        let mut promised = stored.promised.max(last.epoch);
        let (kv, sessions) = match stored.snapshot {
            Some(s) => {
                promised = promised.max(s.promised);
                (s.kv, s.sessions)
            }
            None => (BTreeMap::new(), BTreeMap::new()),
        };
        Replica {
            id,
            cfg,
            promised,
            durable: last.lsn,
            log: Log::new(base, stored.rows),
            // A snapshot holds only committed rows.
            commit: base.lsn,
            applied: base.lsn,
            kv,
            sessions,
            role: Role::Follower { leader: None },
            next_persist: 1,
            persisting: VecDeque::new(),
            after_persist: VecDeque::new(),
            held: Held::default(),
            last_ack: (Epoch(0), Lsn(0), 0),
            prepared: None,
            skipped: Vec::new(),
            resync: None,
            incarnation: 0,
        }
    }

    /// A replica whose stored log was found corrupt and discarded. It starts
    /// empty, keeping only the epoch it had promised (stored apart from the
    /// log, so it survives the log's loss), and re-syncs from the leader;
    /// until then its promises say it may lack confirmed rows.
    pub fn resync(id: ReplicaId, cfg: ClusterConfig, promised: Epoch) -> Replica {
        let promised = if cfg.bugs.resync_forgets_promise { Epoch(0) } else { promised };
        Replica::recover_missing(id, cfg, Stored { promised, ..Stored::default() })
    }

    /// A replica restarted from a log that recovery had to cut (a torn or
    /// damaged tail): the rows cut off may include some it confirmed, so it
    /// must not vote as if it still had them (see `resync`).
    pub fn recover_missing(id: ReplicaId, cfg: ClusterConfig, stored: Stored) -> Replica {
        let mut r = Replica::recover(id, cfg, stored);
        r.resync = Some(None);
        r
    }

    /// Names this process (the driver draws it at random at every start):
    /// acknowledgements carry it and the leader echoes it, so a replica
    /// catching up can tell an append sent to it from one sent to its
    /// previous life.
    pub fn with_incarnation(mut self, incarnation: u64) -> Replica {
        self.incarnation = incarnation;
        self
    }

    /// Still re-syncing after discarding a corrupt disk.
    pub fn is_resyncing(&self) -> bool {
        self.resync.is_some()
    }

    // ---- getters ----

    pub fn id(&self) -> ReplicaId {
        self.id
    }
    pub fn is_leader(&self) -> bool {
        matches!(self.role, Role::Leader(_))
    }
    pub fn status(&self) -> Status {
        let (leading, cut_off) = match &self.role {
            Role::Leader(l) => (Some(l.epoch), self.cut_off(l)),
            Role::Follower { .. } => (None, false),
        };
        Status {
            promised: self.promised,
            leading,
            last: self.last_pos(),
            commit: self.commit,
            applied: self.applied,
            cut_off,
            missing: self.resync.is_some(),
        }
    }

    /// Fewer than `sync_acks` followers have answered within `dead_after`
    /// (counting from the promotion): nothing new can commit.
    fn cut_off(&self, l: &Leading) -> bool {
        let k = self.cfg.sync_acks();
        let window = self.cfg.timing.dead_after_us;
        let heard =
            l.peers.values().filter(|p| l.now.saturating_sub(p.heard_at.max(l.since)) <= window).count();
        k > 0 && heard < k
    }
    pub fn applied(&self) -> Lsn {
        self.applied
    }
    /// The applied key-value state, in key order.
    pub fn data(&self) -> &BTreeMap<String, String> {
        &self.kv
    }
    /// The log held in memory (rows after the compaction point).
    pub fn log(&self) -> &Log {
        &self.log
    }
    /// The at-most-once table: each client's last applied (seq, lsn).
    pub fn sessions(&self) -> &BTreeMap<ClientId, (u64, Lsn)> {
        &self.sessions
    }
    /// The applied state as a snapshot, for a driver to write to disk.
    pub fn snapshot_ref(&self) -> crate::wal::SnapshotRef<'_> {
        let last = LogPos { lsn: self.applied, epoch: self.log.epoch_of(self.applied).unwrap_or_default() };
        crate::wal::SnapshotRef { promised: self.promised, last, kv: &self.kv, sessions: &self.sessions }
    }
    pub fn last_pos(&self) -> LogPos {
        self.log.last()
    }

    /// When this replica next needs `on_tick`.
    pub fn next_wakeup(&self) -> Option<Time> {
        match &self.role {
            Role::Leader(l) => Some(l.next_heartbeat),
            Role::Follower { .. } => None,
        }
    }

    // ---- inputs ----

    pub fn on_tick(&mut self, now: Time, out: &mut Outbox) {
        let Role::Leader(l) = &mut self.role else { return };
        if now < l.next_heartbeat {
            return;
        }
        l.next_heartbeat = now + self.cfg.timing.heartbeat_us;
        l.now = l.now.max(now);
        // Reads that waited too long are dropped: the balancer has given up
        // on them and will retry.
        let timeout = self.cfg.timing.request_timeout_us;
        while l.reads.front().is_some_and(|r| now.saturating_sub(r.arrived) > timeout) {
            l.reads.pop_front();
        }
        // Reads still waiting: start a fresh confirmation round, in case an
        // acknowledgement of the last one was lost (followers answer a
        // probe number once).
        // A follower that has not answered for half of `dead_after` is asked
        // to (followers answer a new probe number even with nothing new), so
        // an idle leader still knows whether it is cut off.
        let quiet = self.cfg.timing.dead_after_us / 2;
        let stale = l.peers.values().any(|p| now.saturating_sub(p.heard_at) > quiet);
        if (!l.reads.is_empty() && self.cfg.read_confirmations() > 0) || stale {
            l.probe += 1;
        }
        // Go back to what each follower has confirmed: anything sent since and
        // not confirmed may have been lost.
        // A follower not heard from in this epoch is probed at the end of
        // the log instead: its answer says where it really is.
        // Rows sent but unconfirmed since the last heartbeat are presumed
        // lost and sent again; if acks are merely in flight, matched has moved.
        let end = self.log.last().lsn.next();
        for peer in l.peers.values_mut() {
            if !peer.heard {
                peer.next = end;
            } else if peer.matched == peer.matched_at_tick {
                peer.next = peer.matched.next();
            }
            peer.matched_at_tick = peer.matched;
        }
        self.broadcast(out);
    }

    /// Persist operations up to and including `id` are durable.
    /// (`_now` is part of the input contract; nothing here depends on time.)
    pub fn on_persisted(&mut self, _now: Time, id: u64, out: &mut Outbox) {
        while let Some(&(pid, lsn)) = self.persisting.front() {
            if pid > id {
                break;
            }
            self.persisting.pop_front();
            self.durable = self.durable.max(lsn).min(self.last_pos().lsn);
        }
        while self.after_persist.front().is_some_and(|(pid, _, _)| *pid <= id) {
            let (_, to, msg) = self.after_persist.pop_front().expect("checked");
            out.send(to, msg);
        }
        if self.is_leader() {
            self.advance_commit(out);
        }
        self.check_resynced(out);
    }

    pub fn on_message(&mut self, now: Time, from: NodeId, msg: Msg, out: &mut Outbox) {
        if let Role::Leader(l) = &mut self.role {
            l.now = l.now.max(now);
        }
        match msg {
            Msg::Ping { nonce } => out.send(from, Msg::Pong { nonce, status: self.status() }),
            Msg::Prepare { epoch, ballot } => self.on_prepare(from, epoch, ballot, out),
            Msg::Promote { epoch, ballot } => self.on_promote(now, epoch, ballot, out),
            Msg::Write { id, key, value } => self.on_write(from, id, key, value, out),
            Msg::Read { tag, key, mode, min_lsn } => self.on_read(now, from, tag, key, mode, min_lsn, out),
            Msg::Append { epoch, prev, rows, commit, probe, end, echo } => {
                let NodeId::Replica(leader) = from else { return };
                let append = Append { epoch, prev, rows, commit, probe, end, echo };
                self.on_append(leader, append, out);
            }
            Msg::InstallSnapshot { epoch, snapshot, commit } => {
                let NodeId::Replica(leader) = from else { return };
                self.on_install_snapshot(leader, epoch, snapshot, commit, out);
            }
            Msg::AppendAck { epoch, ok, last, probe, incarnation } => {
                let NodeId::Replica(peer) = from else { return };
                self.on_append_ack(peer, epoch, ok, last, probe, incarnation, out);
            }
            // Messages meant for other machines are ignored.
            Msg::Request { .. }
            | Msg::Response { .. }
            | Msg::WriteResult { .. }
            | Msg::ReadResult { .. }
            | Msg::Pong { .. }
            | Msg::Promise { .. }
            | Msg::PrepareRefused { .. }
            | Msg::StatusQuery { .. }
            | Msg::StatusAnswer { .. } => {}
        }
    }

    // ---- promotion ----

    fn on_prepare(&mut self, from: NodeId, epoch: Epoch, ballot: u64, out: &mut Outbox) {
        // Each epoch is promised at most once, ever (the promise is durable):
        // two promotion attempts that picked the same epoch can never both
        // gather a quorum, since any two quorums share a replica. A repeat of
        // the very Prepare this process answered, while nothing has happened
        // since, gets the same promise again (it was lost, or is slow).
        let same_ballot = self.prepared == Some((epoch, ballot)) || self.cfg.bugs.epochs_promised_twice;
        let repeat =
            same_ballot && epoch == self.promised && matches!(self.role, Role::Follower { leader: None });
        if repeat && self.cfg.bugs.epochs_promised_twice {
            self.prepared = Some((epoch, ballot));
        }
        if !repeat {
            if epoch <= self.promised || epoch > crate::balancer::MAX_EPOCH {
                out.send(from, Msg::PrepareRefused { epoch, ballot, promised: self.promised });
                return;
            }
            self.adopt_epoch(epoch, out);
            self.role = Role::Follower { leader: None };
            self.prepared = Some((epoch, ballot));
            // The promise must be durable before the balancer may count on it.
            self.persist(PersistOp::Promise(epoch), out);
        }
        let promise = Msg::Promise { epoch, ballot, last: self.last_pos(), missing: self.resync.is_some() };
        self.send_when_durable(from, promise, out);
    }

    fn on_promote(&mut self, now: Time, epoch: Epoch, ballot: u64, out: &mut Outbox) {
        // Only the epoch and ballot this very process promised: a restarted
        // replica that once led `epoch` must never lead it again, since the
        // log it would build could differ from what its followers hold for
        // that epoch (rows it lost in the crash).
        if epoch != self.promised || self.prepared != Some((epoch, ballot)) || self.is_leader() {
            return;
        }
        if !matches!(self.role, Role::Follower { leader: None }) {
            return; // already following a leader of this epoch
        }
        let last = self.last_pos();
        let Some(next) = last.lsn.0.checked_add(1).map(Lsn) else { return };
        let peers = self
            .cfg
            .replicas
            .iter()
            .filter(|r| **r != self.id)
            .map(|r| {
                (
                    *r,
                    Peer {
                        matched: Lsn(0),
                        next,
                        probe_acked: 0,
                        heard: false,
                        heard_at: now,
                        incarnation: 0,
                        matched_at_tick: Lsn(0),
                        snapshot_sent: None,
                    },
                )
            })
            .collect();
        self.role = Role::Leader(Box::new(Leading {
            epoch,
            peers,
            writes: BTreeMap::new(),
            reads: VecDeque::new(),
            probe: 0,
            now,
            since: now,
            next_heartbeat: now + self.cfg.timing.heartbeat_us,
        }));
        self.held.clear();
        out.event(Event::BecameLeader { epoch, last });
        if self.resync.is_some() {
            // Promoted from promises of every replica (or a quorum that
            // holds every row): whatever we lost, no acknowledged row is
            // missing from the most up-to-date log, which is ours. We are
            // whole once that log is on our own disk: rows still being
            // written would be lost again by a crash now, and a restart
            // that forgot it was missing would promise as if it held them.
            self.resync = Some(Some(last.lsn));
            if self.cfg.bugs.resynced_at_promotion {
                self.resync = None;
                out.event(Event::Resynced { applied: last.lsn });
            }
            self.check_resynced(out);
        }
        // A row of our own epoch: once it commits, everything before it has.
        let row = Row { epoch, lsn: next, body: RowBody::Noop };
        self.append_local(row, out);
        self.broadcast(out);
        self.advance_commit(out);
    }

    /// Moves to a newer epoch, stepping down if leading.
    fn adopt_epoch(&mut self, epoch: Epoch, out: &mut Outbox) {
        if epoch <= self.promised && !matches!(&self.role, Role::Leader(l) if l.epoch < epoch) {
            return;
        }
        if let Role::Leader(l) = &self.role {
            out.event(Event::SteppedDown { epoch: l.epoch, newer: epoch });
            // Waiting writes are not answered: their outcome is unknown until
            // the new leader has them or not; the balancer retries them there.
            self.role = Role::Follower { leader: None };
        }
        self.promised = self.promised.max(epoch);
    }

    // ---- client traffic ----

    fn on_write(
        &mut self,
        from: NodeId,
        id: RequestId,
        key: String,
        value: Option<String>,
        out: &mut Outbox,
    ) {
        let Role::Leader(l) = &self.role else {
            out.send(from, Msg::WriteResult { id, result: Err(Refusal::NotLeader) });
            return;
        };
        let epoch = l.epoch;
        let op = match &value {
            Some(v) => Op::Set { key: key.clone(), value: v.clone() },
            None => Op::Del { key: key.clone() },
        };
        if validate_op(&op).is_err() {
            out.send(from, Msg::WriteResult { id, result: Err(Refusal::Invalid) });
            return;
        }
        // At most once: already applied, superseded, or already in the log.
        if let Some(&(seq, lsn)) = self.sessions.get(&id.client) {
            if seq == id.seq {
                out.send(from, Msg::WriteResult { id, result: Ok(lsn) });
                return;
            }
            if seq > id.seq {
                out.send(from, Msg::WriteResult { id, result: Err(Refusal::Superseded) });
                return;
            }
        }
        // The newest row from this client not yet applied: the same request
        // (wait for it), or a newer one (this retry is stale: never apply it
        // after its successor).
        let mut in_tail = None;
        for r in self.log.range(self.applied.next(), self.log.last().lsn).iter().rev() {
            if let RowBody::Put { req, .. } = &r.body {
                if req.client == id.client {
                    if req.seq > id.seq {
                        out.send(from, Msg::WriteResult { id, result: Err(Refusal::Superseded) });
                        return;
                    }
                    if req.seq == id.seq {
                        in_tail = Some(r.lsn);
                        break;
                    }
                }
            }
        }
        let lsn = in_tail.unwrap_or(self.last_pos().lsn.next());
        let Role::Leader(l) = &mut self.role else { return };
        l.writes.insert(lsn, (from, id));
        if in_tail.is_some() {
            return;
        }
        let row = Row { epoch, lsn, body: RowBody::Put { key, value, req: id } };
        self.append_local(row, out);
        self.broadcast(out);
        if self.cfg.bugs.ack_before_durable {
            self.advance_commit(out);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn on_read(
        &mut self,
        now: Time,
        from: NodeId,
        tag: u64,
        key: String,
        mode: ReadMode,
        min_lsn: Lsn,
        out: &mut Outbox,
    ) {
        match mode {
            ReadMode::Any => self.answer_read(from, tag, &key, out),
            ReadMode::Session => {
                if self.applied >= min_lsn || self.cfg.bugs.session_ignores_lsn {
                    self.answer_read(from, tag, &key, out);
                } else {
                    out.send(from, Msg::ReadResult { tag, result: Err(Refusal::Behind) });
                }
            }
            ReadMode::Leader => {
                let need = self.cfg.read_confirmations();
                let commit = self.commit;
                let Role::Leader(l) = &mut self.role else {
                    out.send(from, Msg::ReadResult { tag, result: Err(Refusal::NotLeader) });
                    return;
                };
                if l.reads.len() >= MAX_PENDING_READS {
                    return; // the balancer times it out
                }
                // Confirm leadership with a fresh round unless none is needed.
                let probe = if need == 0 { 0 } else { l.probe + 1 };
                l.reads.push_back(PendingRead { from, tag, key, probe, read_index: commit, arrived: now });
                if need > 0 {
                    l.probe = probe;
                    self.broadcast(out);
                }
                self.answer_confirmed_reads(out);
            }
        }
    }

    fn answer_read(&self, to: NodeId, tag: u64, key: &str, out: &mut Outbox) {
        let value = if self.cfg.bugs.reads_wrong_key {
            self.log.range(self.log.base().lsn.next(), self.applied).iter().rev().find_map(|r| {
                match &r.body {
                    RowBody::Put { value: Some(v), .. } => Some(v.clone()),
                    _ => None,
                }
            })
        } else {
            self.kv.get(key).cloned()
        };
        out.send(to, Msg::ReadResult { tag, result: Ok(Reply { value, lsn: self.applied }) });
    }

    /// Answers leader reads whose confirmation round has been acknowledged by
    /// enough followers and whose read index has been applied.
    fn answer_confirmed_reads(&mut self, out: &mut Outbox) {
        let need = self.cfg.read_confirmations();
        let Role::Leader(l) = &self.role else { return };
        // A leader that has not committed a row of its own epoch does not yet
        // know the full commit point.
        let own_commit = self.log.epoch_of(self.commit) == Some(l.epoch);
        if !own_commit {
            return;
        }
        let mut acks: Vec<u64> = l.peers.values().map(|p| p.probe_acked).collect();
        acks.sort_unstable_by(|a, b| b.cmp(a));
        let confirmed = if need == 0 { u64::MAX } else { acks.get(need - 1).copied().unwrap_or(0) };
        let mut ready = Vec::new();
        if let Role::Leader(l) = &mut self.role {
            while let Some(r) = l.reads.front() {
                if r.probe > confirmed || r.read_index > self.applied {
                    break;
                }
                ready.push(l.reads.pop_front().expect("checked"));
            }
        }
        for r in ready {
            self.answer_read(r.from, r.tag, &r.key, out);
        }
    }

    // ---- replication, follower side ----

    fn on_append(&mut self, leader: ReplicaId, a: Append, out: &mut Outbox) {
        let to = NodeId::Replica(leader);
        let Append { epoch, prev, commit, probe, end, .. } = a;
        if !valid_append(&a) {
            return; // rows that no leader sends: refuse them, change nothing
        }
        if !self.accept_leader(leader, epoch, probe, out) {
            return;
        }
        let to_us = a.echo == self.incarnation || self.cfg.bugs.resync_target_from_any_append;
        if self.resync == Some(None) && to_us {
            // The first word from a leader of an epoch at least the one we
            // promised, sent after it heard from this very process (so its
            // log had every row our previous life confirmed): we are whole
            // once we hold its log up to here.
            self.resync = Some(Some(end));
        }
        let last = self.last_pos().lsn;
        if prev.lsn > last {
            // Early: hold it and ask for what is missing.
            if !a.rows.is_empty() {
                self.held.insert(prev.lsn, a);
            }
            out.send(to, Msg::AppendAck { epoch, ok: false, last, probe, incarnation: self.incarnation });
            return;
        }
        if !self.log.matches(prev) {
            // Our row at `prev` came from a deposed leader: drop it and after.
            let keep = prev.lsn.prev();
            if self.truncate_after(keep, out) {
                out.send(
                    to,
                    Msg::AppendAck { epoch, ok: false, last: keep, probe, incarnation: self.incarnation },
                );
            }
            return;
        }
        let mut new_rows = Vec::new();
        let covered = a.rows.len() as u64;
        for row in a.rows {
            match self.log.epoch_at(row.lsn) {
                At::Compacted => continue,
                At::Epoch(e) if e == row.epoch => continue,
                At::Epoch(_) => {
                    if !self.truncate_after(row.lsn.prev(), out) {
                        break;
                    }
                }
                At::Missing => {}
            }
            self.log.push(row.clone());
            new_rows.push(row);
        }
        // Only what this append covered is known to match the leader; rows
        // beyond it may be a deposed leader's and are fixed by later appends.
        let matched = Lsn(prev.lsn.0 + covered).min(self.last_pos().lsn);
        if !new_rows.is_empty() {
            self.persist(PersistOp::Append(new_rows), out);
        }
        self.set_commit(commit.min(matched));
        self.check_resynced(out);
        self.maybe_compact();
        // A heartbeat that tells the leader nothing new goes unanswered: the
        // leader only learns from acks that move `matched` or confirm a probe.
        // (A lost ack is repaired by the leader resending rows, which are
        // always answered.)
        let (e, m, p) = self.last_ack;
        if covered > 0 || epoch != e || matched > m || probe > p {
            self.last_ack =
                if epoch == e { (epoch, matched.max(m), probe.max(p)) } else { (epoch, matched, probe) };
            let ack = Msg::AppendAck { epoch, ok: true, last: matched, probe, incarnation: self.incarnation };
            self.send_when_durable(to, ack, out);
        }
        // Held appends that now fit.
        if let Some(next) = self.held.remove(&self.last_pos().lsn) {
            self.on_append(leader, next, out);
        }
        self.held.keep_after(last);
    }

    /// Checks the sender may lead us in `epoch`, adopting the epoch and the
    /// leader if so. Refuses (with our newer epoch) if not.
    fn accept_leader(&mut self, leader: ReplicaId, epoch: Epoch, probe: u64, out: &mut Outbox) -> bool {
        let to = NodeId::Replica(leader);
        // No leader has epoch 0 (promotions start at 1) or one past the limit.
        let valid = epoch > Epoch(0) && epoch <= crate::balancer::MAX_EPOCH;
        if leader == self.id || !self.cfg.replicas.contains(&leader) || !valid {
            return false;
        }
        if epoch < self.promised && !self.cfg.bugs.accepts_older_epochs {
            out.send(
                to,
                Msg::AppendAck {
                    epoch: self.promised,
                    ok: false,
                    last: Lsn(0),
                    probe,
                    incarnation: self.incarnation,
                },
            );
            return false;
        }
        if epoch > self.promised || matches!(&self.role, Role::Leader(l) if l.epoch < epoch) {
            self.adopt_epoch(epoch, out);
            self.persist(PersistOp::Promise(epoch), out);
        }
        if self.is_leader() {
            // Two leaders of one epoch cannot exist; refuse rather than mix logs.
            return false;
        }
        if !matches!(self.role, Role::Follower { leader: Some(l) } if l == leader) {
            self.role = Role::Follower { leader: Some(leader) };
            self.held.clear();
            if self.resync.is_some() {
                // A catch-up target belongs to one leader's log.
                self.resync = Some(None);
            }
            out.event(Event::Following { leader, epoch, last: self.last_pos() });
        }
        true
    }

    /// The leader's log no longer has the rows we need: take its state.
    fn on_install_snapshot(
        &mut self,
        leader: ReplicaId,
        epoch: Epoch,
        snapshot: Box<Snapshot>,
        commit: Lsn,
        out: &mut Outbox,
    ) {
        if !self.accept_leader(leader, epoch, 0, out) {
            return;
        }
        let last = snapshot.last;
        if last.epoch > epoch || last.lsn > MAX_LSN {
            return; // no leader holds rows from a later epoch than its own
        }
        // Already holding the snapshot's last row (a stale request for it
        // crossed our progress): keep the log, rows after it included: they
        // may be ones we confirmed.
        let held = self.log.epoch_at(last.lsn) == At::Epoch(last.epoch)
            && last.lsn > self.log.base().lsn
            && !self.cfg.bugs.snapshot_over_confirmed;
        if last.lsn > self.commit && !held {
            self.log.reset(last);
            for p in self.persisting.iter_mut() {
                p.1 = p.1.min(last.lsn);
            }
            self.kv = snapshot.kv.clone();
            self.sessions = snapshot.sessions.clone();
            self.commit = last.lsn;
            self.applied = last.lsn;
            self.durable = self.durable.min(last.lsn);
            self.held.clear();
            out.event(Event::SnapshotInstalled { last, keys: self.kv.len() as u64 });
            self.persist(PersistOp::InstallSnapshot(snapshot), out);
        }
        self.set_commit(commit.min(last.lsn));
        self.check_resynced(out);
        let ack = Msg::AppendAck { epoch, ok: true, last: last.lsn, probe: 0, incarnation: self.incarnation };
        let to = NodeId::Replica(leader);
        self.send_when_durable(to, ack, out);
    }

    fn check_resynced(&mut self, out: &mut Outbox) {
        if let Some(Some(target)) = self.resync {
            // Applied (so it matches the leader's log) and on our own disk
            // (so a crash now cannot lose it again). A leader's own log is
            // the one to match: its disk is enough.
            let leader = self.is_leader();
            if (leader || self.applied >= target) && self.durable >= target {
                self.resync = None;
                let upto = if leader { target } else { self.applied.min(self.durable) };
                out.event(Event::Resynced { applied: upto });
            }
        }
    }

    /// Keeps the in-memory log bounded: rows well behind the applied point
    /// are dropped (they are in the applied state; a follower that still
    /// needs them gets a snapshot).
    fn maybe_compact(&mut self) {
        let max = self.cfg.log_rows_max as u64;
        if (self.log.rows().len() as u64) <= max {
            return;
        }
        let upto = Lsn(self.log.last().lsn.0.saturating_sub(max / 2)).min(self.applied);
        if upto > self.log.base().lsn {
            self.log.compact(upto);
        }
    }

    // ---- replication, leader side ----

    #[allow(clippy::too_many_arguments)]
    fn on_append_ack(
        &mut self,
        peer: ReplicaId,
        epoch: Epoch,
        ok: bool,
        last: Lsn,
        probe: u64,
        incarnation: u64,
        out: &mut Outbox,
    ) {
        let Role::Leader(l) = &mut self.role else { return };
        if epoch > crate::balancer::MAX_EPOCH {
            return; // no promotion can use it: a broken or lying peer
        }
        if epoch > l.epoch {
            self.adopt_epoch(epoch, out);
            return;
        }
        if epoch < l.epoch {
            return;
        }
        let leader_last = self.log.last().lsn.0;
        let Some(p) = l.peers.get_mut(&peer) else { return };
        p.probe_acked = p.probe_acked.max(probe);
        p.heard = true;
        p.heard_at = l.now;
        if p.incarnation != incarnation {
            // Another life of the peer: what its previous one confirmed may
            // be gone (a cut or discarded log), so start from what it says.
            p.incarnation = incarnation;
            p.matched = Lsn(0);
            p.matched_at_tick = Lsn(0);
        }
        if ok {
            p.snapshot_sent = None;
            p.matched = p.matched.max(last.min(Lsn(leader_last)));
            p.next = p.next.max(p.matched.next());
            let behind = p.next.0 <= leader_last;
            self.advance_commit(out);
            self.answer_confirmed_reads(out);
            if behind {
                // Catching up: the next batch follows the ack at once.
                self.send_append(peer, out);
            }
        } else {
            // Never back to or below what the peer confirmed in this epoch:
            // a late "need" from before its progress must not send it a
            // snapshot it does not need.
            let floor = if self.cfg.bugs.snapshot_over_confirmed { Lsn(0) } else { p.matched.next() };
            p.next = last.next().max(floor).min(Lsn(leader_last + 1));
            self.send_append(peer, out);
        }
    }

    /// Sends every follower what it has not been sent (or a heartbeat).
    fn broadcast(&mut self, out: &mut Outbox) {
        for i in 0..self.cfg.replicas.len() {
            let p = self.cfg.replicas[i];
            if p != self.id {
                self.send_append(p, out);
            }
        }
    }

    /// Sends the rows a peer has not been sent yet (or a heartbeat).
    fn send_append(&mut self, peer: ReplicaId, out: &mut Outbox) {
        let commit = self.commit;
        let Role::Leader(l) = &mut self.role else { return };
        let Some(p) = l.peers.get_mut(&peer) else { return };
        let last = self.log.last().lsn.0;
        let base = self.log.base();
        let from = p.next.0.clamp(1, last + 1);
        if from - 1 < base.lsn.0 {
            // The rows it needs were compacted away: send the applied state.
            let wait = SNAPSHOT_RESEND_HEARTBEATS * self.cfg.timing.heartbeat_us;
            if p.snapshot_sent.is_some_and(|t| l.now.saturating_sub(t) < wait) {
                return;
            }
            p.snapshot_sent = Some(l.now);
            let snapshot = Snapshot {
                promised: l.epoch,
                last: LogPos {
                    lsn: self.applied,
                    epoch: self.log.epoch_of(self.applied).unwrap_or(base.epoch),
                },
                kv: self.kv.clone(),
                sessions: self.sessions.clone(),
            };
            p.next = self.applied.next();
            out.event(Event::SnapshotSent { to: peer, last: snapshot.last, keys: snapshot.kv.len() as u64 });
            let msg = Msg::InstallSnapshot { epoch: l.epoch, snapshot: Box::new(snapshot), commit };
            out.send(NodeId::Replica(peer), msg);
            return;
        }
        let upto = (from + MAX_ROWS_PER_APPEND as u64 - 1).min(last);
        let rows: Vec<Row> = self.log.range(Lsn(from), Lsn(upto)).to_vec();
        let prev_lsn = Lsn(from - 1);
        let prev = LogPos { lsn: prev_lsn, epoch: self.log.epoch_of(prev_lsn).unwrap_or_default() };
        p.next = Lsn(upto.max(from - 1) + 1);
        let end = Lsn(last);
        let msg =
            Msg::Append { epoch: l.epoch, prev, rows, commit, probe: l.probe, end, echo: p.incarnation };
        out.send(NodeId::Replica(peer), msg);
    }

    /// Commits the highest row that `sync_acks` followers and the leader hold
    /// durably, if it is of the leader's own epoch; answers the writes it covers.
    fn advance_commit(&mut self, out: &mut Outbox) {
        let k = self.cfg.sync_acks();
        let own = if self.cfg.bugs.ack_before_durable { self.last_pos().lsn } else { self.durable };
        let Role::Leader(l) = &self.role else { return };
        let candidate = if k == 0 {
            own
        } else {
            let mut m: Vec<Lsn> = l.peers.values().map(|p| p.matched).collect();
            m.sort_unstable_by(|a, b| b.cmp(a));
            // Fewer peers than `sync_acks` (a configuration listing a
            // replica twice): nothing can commit.
            let Some(kth) = m.get(k - 1) else { return };
            (*kth).min(own)
        };
        if candidate <= self.commit || self.epoch_at(candidate) != Some(l.epoch) {
            return;
        }
        self.skipped.clear();
        self.set_commit(candidate);
        // Tell followers at once, so reads they serve are not needlessly stale.
        self.broadcast(out);
        let Role::Leader(l) = &mut self.role else { return };
        while let Some(entry) = l.writes.first_entry() {
            if *entry.key() > candidate {
                break;
            }
            let (lsn, (to, id)) = entry.remove_entry();
            // A row skipped when applied (see `set_commit`) is no success:
            // name where the request really was applied, or refuse it.
            let result = if self.skipped.contains(&lsn) {
                match self.sessions.get(&id.client) {
                    Some(&(seq, at)) if seq == id.seq => Ok(at),
                    _ => Err(Refusal::Superseded),
                }
            } else {
                Ok(lsn)
            };
            out.send(to, Msg::WriteResult { id, result });
        }
        self.answer_confirmed_reads(out);
    }

    // ---- log and state ----

    fn epoch_at(&self, lsn: Lsn) -> Option<Epoch> {
        self.log.epoch_of(lsn)
    }

    fn append_local(&mut self, row: Row, out: &mut Outbox) {
        debug_assert_eq!(row.lsn, self.last_pos().lsn.next());
        self.log.push(row.clone());
        self.persist(PersistOp::Append(vec![row]), out);
        self.maybe_compact();
    }

    /// Drops the rows after `keep`. Refuses (returns false, changing
    /// nothing) to drop a committed row or one folded into the applied
    /// state, unless in unsafe mode: a safe promotion guarantees the new
    /// leader holds every committed row, so a leader asking for that is
    /// wrong or lying, and obeying would destroy acknowledged data.
    fn truncate_after(&mut self, keep: Lsn, out: &mut Outbox) -> bool {
        let len = self.log.last().lsn.0;
        if keep.0 >= len {
            return true;
        }
        let committed_lost = self.commit.0.saturating_sub(keep.0);
        let may = self.cfg.unsafe_failover || self.cfg.bugs.truncates_committed;
        if keep < self.log.base().lsn || (committed_lost > 0 && !may) {
            out.event(Event::TruncateRefused { after: keep, commit: self.commit });
            return false;
        }
        self.log.truncate_after(keep);
        // Writes still in flight were issued for a longer log: once they
        // complete they make durable only what is left of it, never the
        // rows that will replace the ones dropped.
        for p in self.persisting.iter_mut() {
            p.1 = p.1.min(keep);
        }
        self.durable = self.durable.min(keep);
        out.event(Event::Truncated { after: keep, dropped: len - keep.0, committed: committed_lost });
        if committed_lost > 0 {
            // Follow the new leader's history: rebuild the state from the rows kept.
            self.kv.clear();
            self.sessions.clear();
            self.applied = Lsn(0);
            self.commit = Lsn(0);
            self.set_commit(keep);
        }
        self.persist(PersistOp::TruncateAfter(keep), out);
        true
    }

    fn persist(&mut self, op: PersistOp, out: &mut Outbox) -> u64 {
        let id = self.next_persist;
        self.next_persist += 1;
        self.persisting.push_back((id, self.last_pos().lsn));
        out.effects.push(crate::machine::Effect::Persist { id, op });
        id
    }

    /// Sends `msg` once everything persisted so far is durable (at once if
    /// nothing is pending): acknowledgements and promises never get ahead of
    /// the disk.
    fn send_when_durable(&mut self, to: NodeId, msg: Msg, out: &mut Outbox) {
        match self.persisting.back() {
            Some(&(id, _)) => self.after_persist.push_back((id, to, msg)),
            None => out.send(to, msg),
        }
    }

    fn set_commit(&mut self, lsn: Lsn) {
        let lsn = lsn.min(self.last_pos().lsn);
        if lsn <= self.commit {
            return;
        }
        self.commit = lsn;
        while self.applied < self.commit {
            // Commit never passes the log's end (above), and rows between
            // the base and the end are held; should that ever not hold,
            // stop applying rather than apply out of order.
            let Some(row) = self.log.get(self.applied.next()) else { break };
            let stale = match &row.body {
                RowBody::Put { req, .. } => {
                    self.sessions.get(&req.client).is_some_and(|(s, _)| *s >= req.seq)
                }
                RowBody::Noop => false,
            };
            // A request is applied once, and never after a newer one from
            // the same client (all replicas skip the same rows). A leader
            // remembers what it skipped until it has answered the writes.
            if stale && self.is_leader() {
                self.skipped.push(row.lsn);
            }
            if let (RowBody::Put { key, value, req }, false) = (&row.body, stale) {
                match value {
                    Some(v) => {
                        self.kv.insert(key.clone(), v.clone());
                    }
                    None if self.cfg.bugs.follower_skips_deletes && !self.is_leader() => {}
                    None => {
                        self.kv.remove(key);
                    }
                }
                self.sessions.insert(req.client, (req.seq, row.lsn));
            }
            self.applied = row.lsn;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::ClientId;

    fn append(prev: u64, rows: usize, value_bytes: usize) -> Append {
        let rows = (0..rows as u64)
            .map(|i| Row {
                epoch: Epoch(1),
                lsn: Lsn(prev + 1 + i),
                body: RowBody::Put {
                    key: "k".into(),
                    value: Some("v".repeat(value_bytes)),
                    req: RequestId { client: ClientId(1), seq: prev + 1 + i },
                },
            })
            .collect();
        let prev = LogPos { epoch: Epoch(1), lsn: Lsn(prev) };
        Append { epoch: Epoch(1), prev, rows, commit: Lsn(0), probe: 0, end: Lsn(u64::MAX), echo: 0 }
    }

    #[test]
    fn held_appends_are_bounded_in_bytes_and_keep_the_nearest() {
        let mut h = Held::default();
        // 64 appends of 256 rows of 64 KiB would be a gigabyte.
        for i in 0..64u64 {
            h.insert(Lsn(10 + i * 256), append(10 + i * 256, 256, 64 * 1024));
            assert!(h.bytes <= MAX_HELD_BYTES, "{} bytes held", h.bytes);
        }
        assert!(!h.appends.is_empty(), "the nearest appends are still held");
        assert!(h.appends.contains_key(&Lsn(10)), "the nearest append is the one kept");
        assert_eq!(h.bytes, h.appends.values().map(Held::size).sum::<usize>());
        h.keep_after(Lsn(10));
        assert!(!h.appends.contains_key(&Lsn(10)));
        assert_eq!(h.bytes, h.appends.values().map(Held::size).sum::<usize>());
        h.clear();
        assert_eq!(h.bytes, 0);
    }

    #[test]
    fn held_appends_are_bounded_in_count() {
        let mut h = Held::default();
        for i in 0..(MAX_HELD_APPENDS as u64 + 50) {
            h.insert(Lsn(100 + i), append(100 + i, 1, 1));
        }
        assert_eq!(h.appends.len(), MAX_HELD_APPENDS);
        assert!(h.remove(&Lsn(100)).is_some());
        assert_eq!(h.bytes, h.appends.values().map(Held::size).sum::<usize>());
    }
}
