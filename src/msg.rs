//! Every message that crosses between machines. The simulator delivers these
//! values directly; the real runtime encodes them into frames.
//!
//! The wire codec (postcard) encodes enum variants by position: reordering or
//! inserting variants here, in `types.rs` or in `machine.rs` changes the
//! protocol and must bump `wire::PROTOCOL_VERSION`.

use crate::machine::Snapshot;
use crate::types::{Epoch, LogPos, Lsn, Op, OpError, ReadMode, ReplicaId, RequestId, Row};
use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Msg {
    // ---- client <-> balancer ----
    /// A client operation. `min_lsn` is the highest LSN the client has seen,
    /// used by `session` reads.
    /// `attempt` counts the client's sends of this request (from 1); the
    /// balancer's answer names the attempt it covers, so a duplicated or
    /// late answer is never mistaken for the answer to a later attempt.
    Request {
        id: RequestId,
        attempt: u32,
        op: Op,
        read: ReadMode,
        min_lsn: Lsn,
    },
    /// `attempt`: the highest attempt of `id` the answer covers. An
    /// `Unavailable` answer promises that this balancer saw attempt 1 and
    /// has never forwarded, and never will forward, any attempt up to
    /// `attempt`: none of them can have been applied.
    Response {
        id: RequestId,
        attempt: u32,
        result: Result<Reply, OpError>,
    },

    // ---- balancer <-> replicas ----
    /// A write forwarded to the leader. `value: None` deletes.
    Write {
        id: RequestId,
        key: String,
        value: Option<String>,
    },
    WriteResult {
        id: RequestId,
        result: Result<Lsn, Refusal>,
    },
    /// A read forwarded to one replica; `tag` is the balancer's own number.
    Read {
        tag: u64,
        key: String,
        mode: ReadMode,
        min_lsn: Lsn,
    },
    ReadResult {
        tag: u64,
        result: Result<Reply, Refusal>,
    },
    /// Liveness probe; the answer carries what the balancer needs to rebuild
    /// its view of the cluster.
    Ping {
        nonce: u64,
    },
    Pong {
        nonce: u64,
        status: Status,
    },
    /// Phase one of a promotion: promise to refuse anything older than `epoch`
    /// (persisted before answering) and report the end of the log. `ballot`
    /// names the promotion attempt (the balancer's incarnation): a replica
    /// promises each epoch at most once, ever, so two attempts that picked
    /// the same epoch can never both gather a quorum.
    Prepare {
        epoch: Epoch,
        ballot: u64,
    },
    /// `missing`: this replica cut rows off its log (a torn or damaged tail,
    /// a discarded disk) and has not caught up with a leader since, so it may
    /// lack rows it once confirmed. Such a promise counts toward a quorum
    /// only when every replica has promised.
    Promise {
        epoch: Epoch,
        ballot: u64,
        last: LogPos,
        missing: bool,
    },
    /// The replica has already promised `promised` (at or above `epoch`).
    PrepareRefused {
        epoch: Epoch,
        ballot: u64,
        promised: Epoch,
    },
    /// Phase two: become leader of `epoch`, as promised to `ballot`.
    Promote {
        epoch: Epoch,
        ballot: u64,
    },

    // ---- leader <-> followers ----
    /// Rows after `prev`, plus the leader's commit LSN. Empty `rows` is a
    /// heartbeat. `probe` numbers the leader's confirmation rounds for
    /// linearizable reads. `end` is the end of the leader's log when sent: a
    /// replica catching up after losing rows is whole again once it holds
    /// everything up to there. `echo` is the incarnation of the follower
    /// the leader last heard from: `end` counts for catching up only when it
    /// names the follower's current process (a message sent before it
    /// restarted may predate rows its previous process confirmed).
    Append {
        epoch: Epoch,
        prev: LogPos,
        rows: Vec<Row>,
        commit: Lsn,
        probe: u64,
        end: Lsn,
        echo: u64,
    },
    /// `ok`: the follower's log matches the leader's up to `last` and those rows
    /// are durable. Not ok: it needs rows from `last + 1`, or (with a newer
    /// `epoch`) the sender is no longer leader.
    AppendAck {
        epoch: Epoch,
        ok: bool,
        last: Lsn,
        probe: u64,
        /// The sending process's incarnation (see `Append::echo`).
        incarnation: u64,
    },
    /// The leader's applied state, for a follower that needs rows the
    /// leader has compacted away. Answered with an `AppendAck`.
    InstallSnapshot {
        epoch: Epoch,
        snapshot: Box<Snapshot>,
        commit: Lsn,
    },

    // ---- client <-> balancer: looking, not touching (protocol 5) ----
    /// What does the balancer know of the cluster? Changes nothing.
    StatusQuery {
        tag: u64,
    },
    /// The balancer's view, answering the query with the same `tag`.
    StatusAnswer {
        tag: u64,
        view: ClusterView,
    },
}

/// What a balancer knows of its cluster, for `kvnode status`: built from the
/// pongs it has had, so it is as fresh as the last ping (50 ms by default).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterView {
    pub phase: Phase,
    /// The replica requests go to, once there is one.
    pub leader: Option<ReplicaId>,
    /// The leader's epoch; while promoting, the epoch being promoted; while
    /// discovering, the newest epoch seen.
    pub epoch: Epoch,
    /// Every replica, replica 1 first.
    pub replicas: Vec<ReplicaView>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    /// Just started: pinging to learn who leads.
    #[default]
    Discovering,
    /// Gathering promises for a new epoch.
    Promoting,
    /// A leader takes the writes.
    Leading,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Discovering => "discovering",
            Phase::Promoting => "promoting",
            Phase::Leading => "leading",
        })
    }
}

/// One replica as the balancer sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaView {
    pub id: ReplicaId,
    /// Where the balancer dials it (filled in by the runtime; the machine
    /// knows no addresses).
    pub addr: String,
    /// Microseconds since its last pong; `None`: never heard from.
    pub heard_us_ago: Option<u64>,
    /// Heard from within `dead_after`.
    pub alive: bool,
    /// What its last pong said.
    pub status: Status,
}

impl ReplicaView {
    /// `leader` (the one the balancer sends writes to: a pong from before
    /// its promotion may not say so yet), `old leader` (its last pong says
    /// it leads an epoch the balancer has moved past), `follower`, or `-`
    /// when never heard from.
    pub fn role(&self, leader: Option<ReplicaId>) -> &'static str {
        match (self.heard_us_ago, self.status.leading) {
            _ if leader == Some(self.id) => "leader",
            (None, _) => "-",
            (Some(_), Some(_)) => "old leader",
            (Some(_), None) => "follower",
        }
    }

    /// `ok`, `down` (silent for longer than `dead_after`), `unreachable`
    /// (never heard from), `cut off` (a leader without enough followers) or
    /// `missing rows` (may lack rows it confirmed, catching up).
    pub fn health(&self) -> &'static str {
        if self.heard_us_ago.is_none() {
            "unreachable"
        } else if !self.alive {
            "down"
        } else if self.status.cut_off {
            "cut off"
        } else if self.status.missing {
            "missing rows"
        } else {
            "ok"
        }
    }
}

/// The answer to a completed operation: the value read (`None` is missing),
/// and the LSN the answer reflects (the row written, or the state read).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    pub value: Option<String>,
    pub lsn: Lsn,
}

/// Why a replica did not serve a forwarded request; the balancer reroutes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Refusal {
    NotLeader,
    /// Not yet caught up to the client's session LSN.
    Behind,
    /// A write with the same client and a lower sequence number: the client
    /// has already moved on, so it is never applied.
    Superseded,
    Invalid,
}

/// What a replica says about itself in a `Pong`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub promised: Epoch,
    /// `Some(epoch)` while this replica leads `epoch`.
    pub leading: Option<Epoch>,
    pub last: LogPos,
    pub commit: Lsn,
    pub applied: Lsn,
    /// Leading, but fewer than `sync_acks` followers have answered within
    /// `dead_after`: writes cannot commit, so the balancer fails it over.
    pub cut_off: bool,
    /// May lack rows it confirmed (see `Msg::Promise`).
    pub missing: bool,
}

impl Msg {
    /// Periodic traffic that carries no new data: traces may leave it out.
    pub fn is_chatter(&self) -> bool {
        match self {
            Msg::Ping { .. } | Msg::Pong { .. } => true,
            Msg::Append { rows, .. } => rows.is_empty(),
            Msg::AppendAck { ok, .. } => *ok,
            _ => false,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Msg::Request { .. } => "Request",
            Msg::Response { .. } => "Response",
            Msg::Write { .. } => "Write",
            Msg::WriteResult { .. } => "WriteResult",
            Msg::Read { .. } => "Read",
            Msg::ReadResult { .. } => "ReadResult",
            Msg::Ping { .. } => "Ping",
            Msg::Pong { .. } => "Pong",
            Msg::Prepare { .. } => "Prepare",
            Msg::Promise { .. } => "Promise",
            Msg::PrepareRefused { .. } => "PrepareRefused",
            Msg::Promote { .. } => "Promote",
            Msg::Append { .. } => "Append",
            Msg::AppendAck { .. } => "AppendAck",
            Msg::InstallSnapshot { .. } => "InstallSnapshot",
            Msg::StatusQuery { .. } => "StatusQuery",
            Msg::StatusAnswer { .. } => "StatusAnswer",
        }
    }
}

/// One line per message, for traces: terse but complete enough to follow.
impl fmt::Display for Msg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use crate::types::Abbrev;
        match self {
            Msg::Request { id, attempt, op, read, min_lsn } => {
                write!(f, "Request #{}", id.seq)?;
                if *attempt > 1 {
                    write!(f, " try {attempt}")?;
                }
                write!(f, " {op} read={read} min_lsn={min_lsn}")
            }
            Msg::Response { id, attempt, result } => match result {
                // A set or del is answered with no value: nothing to show
                // (the client's `done` line says what a get found).
                Ok(Reply { value: None, lsn }) => write!(f, "Response #{} ok lsn={lsn}", id.seq),
                Ok(r) => write!(f, "Response #{} ok {} lsn={}", id.seq, ShowValue(&r.value), r.lsn),
                Err(e) => write!(f, "Response #{} error {} (tries 1..{attempt})", id.seq, ErrorName(e)),
            },
            Msg::Write { id, key, value } => match value {
                Some(v) => write!(f, "Write c{}#{} set {key}={}", id.client.0, id.seq, Abbrev(v)),
                None => write!(f, "Write c{}#{} del {key}", id.client.0, id.seq),
            },
            Msg::WriteResult { id, result } => match result {
                Ok(lsn) => write!(f, "WriteResult c{}#{} ok lsn={lsn}", id.client.0, id.seq),
                Err(r) => write!(f, "WriteResult c{}#{} refused {r}", id.client.0, id.seq),
            },
            Msg::Read { tag, key, mode, min_lsn } => {
                write!(f, "Read t{} get {key} read={mode} min_lsn={min_lsn}", Tag(*tag))
            }
            Msg::ReadResult { tag, result } => match result {
                Ok(r) => write!(f, "ReadResult t{} {} lsn={}", Tag(*tag), ShowValue(&r.value), r.lsn),
                Err(r) => write!(f, "ReadResult t{} refused {r}", Tag(*tag)),
            },
            Msg::Ping { nonce } => write!(f, "Ping {nonce}"),
            Msg::Pong { nonce, status } => write!(
                f,
                "Pong {nonce} promised={} leading={} last={} commit={}",
                status.promised,
                status.leading.map_or("-".to_string(), |e| e.to_string()),
                status.last,
                status.commit
            ),
            Msg::Prepare { epoch, ballot } => write!(f, "Prepare {epoch} b{}", Ballot(*ballot)),
            Msg::Promise { epoch, ballot, last, missing } => {
                write!(f, "Promise {epoch} b{} last={last}", Ballot(*ballot))?;
                if *missing {
                    write!(f, " MISSING-ROWS")?;
                }
                Ok(())
            }
            Msg::PrepareRefused { epoch, ballot, promised } => {
                write!(f, "PrepareRefused {epoch} b{} promised={promised}", Ballot(*ballot))
            }
            Msg::Promote { epoch, ballot } => write!(f, "Promote {epoch} b{}", Ballot(*ballot)),
            Msg::Append { epoch, prev, rows, commit, probe, .. } => {
                write!(f, "Append {epoch} prev={prev} commit={commit}")?;
                if *probe > 0 {
                    write!(f, " probe={probe}")?;
                }
                if !rows.is_empty() {
                    let first = rows[0].lsn;
                    let last = rows[rows.len() - 1].lsn;
                    if first == last {
                        write!(f, " rows=[{first}]")?;
                    } else {
                        write!(f, " rows=[{first}..{last}]")?;
                    }
                }
                Ok(())
            }
            Msg::InstallSnapshot { epoch, snapshot, commit } => write!(
                f,
                "InstallSnapshot {epoch} last={} keys={} commit={commit}",
                snapshot.last,
                snapshot.kv.len()
            ),
            Msg::StatusQuery { tag } => write!(f, "StatusQuery {tag}"),
            Msg::StatusAnswer { tag, view } => {
                write!(f, "StatusAnswer {tag} {} {}", view.phase, view.epoch)?;
                if let Some(l) = view.leader {
                    write!(f, " leader=r{}", l.0)?;
                }
                Ok(())
            }
            Msg::AppendAck { epoch, ok, last, probe, .. } => {
                write!(f, "AppendAck {epoch} {} last={last}", if *ok { "ok" } else { "need" })?;
                if *probe > 0 {
                    write!(f, " probe={probe}")?;
                }
                Ok(())
            }
        }
    }
}

/// A balancer's read tag in a trace: its last four hex digits (tags count
/// up from a random start, so neighbours differ there).
struct Tag(u64);

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04x}", self.0 & 0xffff)
    }
}

/// An error's short name in a trace.
struct ErrorName<'a>(&'a OpError);

impl fmt::Display for ErrorName<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            OpError::Unavailable => f.write_str("unavailable"),
            OpError::Timeout => f.write_str("timeout"),
            OpError::Overloaded => f.write_str("overloaded"),
            OpError::Invalid(why) => write!(f, "invalid ({why})"),
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Refusal::NotLeader => "not-leader",
            Refusal::Behind => "behind",
            Refusal::Superseded => "superseded",
            Refusal::Invalid => "invalid",
        })
    }
}

/// A ballot in a trace: its last four hex digits are enough to tell
/// attempts apart by eye.
struct Ballot(u64);

impl fmt::Display for Ballot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04x}", self.0 & 0xffff)
    }
}

/// `"value"` or `(nil)`.
pub struct ShowValue<'a>(pub &'a Option<String>);

impl fmt::Display for ShowValue<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(v) => write!(f, "{:?}", crate::types::Abbrev(v).to_string()),
            None => f.write_str("(nil)"),
        }
    }
}
