//! The contract every machine shares, and the effects they emit.
//!
//! An input (a message from a peer, a timer firing, a persist completing, or
//! an operation submitted to a client) comes in with `now`; effects go out in
//! an [`Outbox`]. A machine says when it next wants to be woken with
//! `next_wakeup`; the driver calls `on_tick` at (or after) that time. After
//! `on_tick(now)`, `next_wakeup()` is strictly later than `now` — a machine
//! that keeps asking to be woken "now" would spin its driver.

use crate::msg::Msg;
use crate::types::{Epoch, LogPos, Lsn, NodeId, Op, OpError, Row, Time};
use serde::{Deserialize, Serialize};

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
}

/// Everything a replica has persisted: what survives a crash. The simulator's
/// disk and the real write-ahead log both rebuild this and hand it to
/// `Replica::recover`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stored {
    pub promised: Epoch,
    pub rows: Vec<Row>,
}

impl Stored {
    /// Applies one persisted operation, as a recovery replay does.
    pub fn apply(&mut self, op: &PersistOp) {
        match op {
            PersistOp::Promise(e) => self.promised = self.promised.max(*e),
            PersistOp::Append(rows) => {
                for row in rows {
                    let expect = self.rows.len() as u64 + 1;
                    let at = row.lsn.0;
                    if at == expect {
                        self.rows.push(row.clone());
                    } else if at >= 1 && at < expect && self.rows[at as usize - 1] != *row {
                        // An overwrite is always preceded by a truncate; be
                        // safe anyway: a different row replaces the suffix.
                        self.rows.truncate(at as usize - 1);
                        self.rows.push(row.clone());
                    }
                    // A repeat of a row already there changes nothing; a gap
                    // (or LSN 0) cannot come from a replica and is ignored.
                }
            }
            PersistOp::TruncateAfter(lsn) => self.rows.truncate(lsn.0 as usize),
        }
    }

    pub fn last(&self) -> LogPos {
        self.rows.last().map(Row::pos).unwrap_or_default()
    }
}

/// A finished client operation, as the application (REPL, workload, checker)
/// sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Completion {
    pub seq: u64,
    pub op: Op,
    pub invoked: Time,
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
    /// A replica that discarded a corrupt disk has caught up with a leader.
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
            Event::Resynced { applied } => {
                write!(f, "** re-synced from the leader up to lsn {applied}; takes part in promotions again")
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
