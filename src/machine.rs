//! The contract every machine shares, and the effects they emit.
//!
//! An input (a message from a peer, a timer firing, a persist completing, or
//! an operation submitted to a client) comes in with `now`; effects go out in
//! an [`Outbox`]. A machine says when it next wants to be woken with
//! `next_wakeup`; the driver calls `on_tick` at (or after) that time. After
//! `on_tick(now)`, `next_wakeup()` is strictly later than `now` — a machine
//! that keeps asking to be woken "now" would spin its driver.

use crate::msg::Msg;
use crate::types::{ClientId, Epoch, LogPos, Lsn, NodeId, Op, OpError, Row, Time};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What a machine wants done.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    Send {
        to: NodeId,
        msg: Msg,
    },
    /// Make `op` durable. Persist operations complete in the order issued;
    /// the driver reports completion with `Replica::on_persisted(id)`.
    Persist {
        id: u64,
        op: PersistOp,
    },
    /// A client operation finished: handed to the application.
    Done(Completion),
    /// A notable state change, for traces and checkers.
    Event(Event),
}

/// The effects of one input, in order.
#[derive(Debug, Default)]
pub struct Outbox {
    pub effects: Vec<Effect>,
}

impl Outbox {
    pub fn new() -> Outbox {
        Outbox::default()
    }
    pub fn send(&mut self, to: NodeId, msg: Msg) {
        self.effects.push(Effect::Send { to, msg });
    }
    pub fn event(&mut self, e: Event) {
        self.effects.push(Effect::Event(e));
    }
    pub fn drain(&mut self) -> std::vec::Drain<'_, Effect> {
        self.effects.drain(..)
    }
    pub fn is_empty(&self) -> bool {
        self.effects.is_empty()
    }
}

/// A durable change to a replica's stored state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PersistOp {
    /// Never accept anything from an epoch older than this.
    Promise(Epoch),
    /// Rows that extend the log, contiguous after its current end.
    Append(Vec<Row>),
    /// Drop every row after this LSN (an uncommitted suffix the new leader
    /// does not have).
    TruncateAfter(Lsn),
    /// Replace the whole log with the leader's state (a follower too far
    /// behind for the leader's log). The real runtime writes this as a
    /// snapshot file, not a log record.
    InstallSnapshot(Box<Snapshot>),
}

/// Everything a replica has persisted: what survives a crash. The simulator's
/// disk and the real write-ahead log both rebuild this and hand it to
/// `Replica::recover`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stored {
    pub promised: Epoch,
    /// The applied state up to some position, if the log was compacted or
    /// a snapshot was installed from the leader.
    pub snapshot: Option<Snapshot>,
    /// Rows after the snapshot (from LSN 1 without one), contiguous.
    pub rows: Vec<Row>,
}

impl Stored {
    /// The position the rows follow.
    pub fn base(&self) -> LogPos {
        self.snapshot.as_ref().map(|s| s.last).unwrap_or_default()
    }

    /// Applies one persisted operation, as a recovery replay does.
    pub fn apply(&mut self, op: &PersistOp) {
        if let Some(snap) = replay_op(self.base().lsn, &mut self.promised, &mut self.rows, op) {
            self.snapshot = Some(snap.clone());
        }
    }

    pub fn last(&self) -> LogPos {
        self.rows.last().map(Row::pos).unwrap_or(self.base())
    }
}

/// The applied state at a log position, as written to a snapshot file and
/// read back by recovery.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The newest epoch promised when the snapshot was taken.
    pub promised: Epoch,
    /// The last row included: every row up to here is applied in `kv`.
    pub last: LogPos,
    #[serde(deserialize_with = "deserialize_map_bulk")]
    pub kv: BTreeMap<String, String>,
    /// The at-most-once table: each client's last applied (seq, lsn).
    #[serde(deserialize_with = "deserialize_map_bulk")]
    pub sessions: BTreeMap<ClientId, (u64, Lsn)>,
}

/// Reads a map as a list of pairs and builds the `BTreeMap` in one go.
/// postcard encodes a map and a list of pairs identically (a length, then
/// the pairs), so the bytes are the same; but inserting 1,000,000 keys one
/// by one, as serde's map visitor does, took 1.1 s here against 0.3 s for
/// decoding pairs and bulk-building from sorted input. Duplicate keys (never
/// written) keep the last value.
pub(crate) fn deserialize_map_bulk<'de, D, K, V>(d: D) -> Result<BTreeMap<K, V>, D::Error>
where
    D: serde::Deserializer<'de>,
    K: Ord + Deserialize<'de>,
    V: Deserialize<'de>,
{
    let pairs: Vec<(K, V)> = Vec::deserialize(d)?;
    Ok(pairs.into_iter().collect())
}

/// The replay rule, shared by [`Stored::apply`] and the WAL's recovery:
/// applies `op` to the `rows` that follow `base`. Rows at or before `base`
/// are already in the snapshot: such an append empties the tail (it would
/// have truncated everything after itself). Returns the snapshot an
/// `InstallSnapshot` brings (the caller adopts it as the new base; the rows
/// are already cleared).
pub fn replay_op<'a>(
    base: Lsn,
    promised: &mut Epoch,
    rows: &mut Vec<Row>,
    op: &'a PersistOp,
) -> Option<&'a Snapshot> {
    let base = base.0;
    match op {
        PersistOp::Promise(e) => *promised = (*promised).max(*e),
        PersistOp::Append(new) => {
            for row in new {
                if row.lsn.0 <= base {
                    rows.clear();
                    continue;
                }
                let at = (row.lsn.0 - base - 1) as usize;
                if at == rows.len() {
                    rows.push(row.clone());
                } else if at < rows.len() && rows[at] != *row {
                    // An overwrite is always preceded by a truncate; be safe
                    // anyway: a different row replaces the suffix.
                    rows.truncate(at);
                    rows.push(row.clone());
                }
                // A repeat of a row already there changes nothing; a gap
                // cannot come from a replica and is ignored.
            }
        }
        PersistOp::TruncateAfter(lsn) => rows.truncate(lsn.0.saturating_sub(base) as usize),
        PersistOp::InstallSnapshot(snap) => {
            *promised = (*promised).max(snap.promised);
            rows.clear();
            return Some(snap);
        }
    }
    None
}

/// A finished client operation, as the application (REPL, workload, checker)
/// sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Completion {
    pub seq: u64,
    pub op: Op,
    /// When the application submitted it (it may have waited in the queue).
    pub invoked: Time,
    /// When the client first sent it: nothing it asks can take effect
    /// before. Checkers use this, not `invoked`, as the start of the
    /// operation (an open-loop client queues operations behind each other).
    pub sent: Time,
    pub completed: Time,
    pub result: Result<crate::msg::Reply, OpError>,
    /// How many times the request was sent.
    pub attempts: u32,
}

impl Completion {
    /// A write whose outcome the client cannot know.
    pub fn is_ambiguous(&self) -> bool {
        self.op.is_write() && matches!(&self.result, Err(e) if e.is_ambiguous())
    }
}

/// Notable state changes, emitted for traces (and, later, the space-time view).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    BecameLeader {
        epoch: Epoch,
        last: LogPos,
    },
    SteppedDown {
        epoch: Epoch,
        newer: Epoch,
    },
    /// A leader sent its state to a follower too far behind for its log.
    SnapshotSent {
        to: crate::types::ReplicaId,
        last: LogPos,
        keys: u64,
    },
    /// A follower replaced its log with the leader's state.
    SnapshotInstalled {
        last: LogPos,
        keys: u64,
    },
    /// A replica that may have lacked rows it confirmed (a cut or discarded
    /// log) holds them all again: up to `applied`, durably.
    Resynced {
        applied: Lsn,
    },
    /// A replica follows `leader` in `epoch` (at start, or rejoining).
    Following {
        leader: crate::types::ReplicaId,
        epoch: Epoch,
        last: LogPos,
    },
    /// Dropped rows after `after`; `committed` of them had been committed
    /// (only possible with `unsafe_failover`).
    Truncated {
        after: Lsn,
        dropped: u64,
        committed: u64,
    },
    /// A leader asked to drop rows this replica knows are committed (or
    /// folded into its applied state); refused, nothing changed.
    TruncateRefused {
        after: Lsn,
        commit: Lsn,
    },
    /// Balancer: started a promotion for `epoch`.
    Promoting {
        epoch: Epoch,
    },
    /// Balancer: promoted `leader` for `epoch` from these promises.
    Promoted {
        leader: crate::types::ReplicaId,
        epoch: Epoch,
        last: LogPos,
        heard: usize,
    },
    /// Balancer: adopted an existing leader found by pinging.
    Adopted {
        leader: crate::types::ReplicaId,
        epoch: Epoch,
    },
    /// Balancer: the leader stopped answering.
    LeaderLost {
        leader: crate::types::ReplicaId,
        epoch: Epoch,
    },
    /// Balancer: could not hear from enough replicas to promote safely.
    PromotionStalled {
        epoch: Epoch,
        heard: usize,
        needed: usize,
    },
}

impl std::fmt::Display for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Event::BecameLeader { epoch, last } => write!(f, "** leader of {epoch} (log ends {last})"),
            Event::SteppedDown { epoch, newer } => {
                write!(f, "** steps down as leader of {epoch}: saw {newer}")
            }
            Event::SnapshotSent { to, last, keys } => {
                write!(f, "** sends r{} a snapshot up to {last} ({keys} keys): its log was compacted", to.0)
            }
            Event::SnapshotInstalled { last, keys } => {
                write!(f, "** installs the leader's snapshot up to {last} ({keys} keys)")
            }
            Event::Resynced { applied } => {
                write!(f, "** whole again (holds every row it confirmed, up to lsn {applied}): its promises count on their own")
            }
            Event::Following { leader, epoch, last } => {
                write!(f, "** follows r{} in {epoch} (log ends {last})", leader.0)
            }
            Event::Truncated { after, dropped, committed: 0 } => {
                write!(f, "** drops {dropped} uncommitted row(s) after lsn {after}")
            }
            Event::Truncated { after, dropped, committed } => write!(
                f,
                "** drops {dropped} row(s) after lsn {after}, {committed} of them COMMITTED (unsafe failover)"
            ),
            Event::TruncateRefused { after, commit } => {
                write!(f, "** REFUSES to drop rows after lsn {after}: rows up to {commit} are committed")
            }
            Event::Promoting { epoch } => write!(f, "** promotion for {epoch} starts"),
            Event::Promoted { leader, epoch, last, heard } => {
                write!(f, "** promotes r{} for {epoch} (log ends {last}, heard from {heard})", leader.0)
            }
            Event::Adopted { leader, epoch } => write!(f, "** found r{} leading {epoch}", leader.0),
            Event::LeaderLost { leader, epoch } => {
                write!(f, "** lost r{} (leader of {epoch})", leader.0)
            }
            Event::PromotionStalled { epoch, heard, needed } => {
                write!(f, "** cannot promote for {epoch} safely: heard from {heard} of {needed} needed")
            }
        }
    }
}
