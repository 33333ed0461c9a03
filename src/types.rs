//! Plain data shared by every machine: identities, clocks-as-numbers, log rows
//! and client operations. Nothing here does anything; it only names things.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Simulated or real time in microseconds since the driver started.
///
/// Machines never read a clock: the driver passes `now` into every call. Time
/// handed to one machine never goes backwards.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Time(pub u64);

impl Time {
    pub const ZERO: Time = Time(0);
    pub const MAX: Time = Time(u64::MAX);

    pub fn as_us(self) -> u64 {
        self.0
    }
    pub fn saturating_sub(self, other: Time) -> Micros {
        self.0.saturating_sub(other.0)
    }
}

impl std::ops::Add<Micros> for Time {
    type Output = Time;
    fn add(self, rhs: Micros) -> Time {
        Time(self.0.saturating_add(rhs))
    }
}

impl fmt::Display for Time {
    /// `1234.567ms`: milliseconds with microsecond precision, fixed width
    /// friendly for traces.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = format!("{}.{:03}ms", self.0 / 1000, self.0 % 1000);
        f.pad(&s)
    }
}

/// A duration in microseconds.
pub type Micros = u64;

/// Who a message is from or to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum NodeId {
    Balancer,
    Replica(ReplicaId),
    Client(ClientId),
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            NodeId::Balancer => "lb".to_string(),
            NodeId::Replica(r) => format!("r{}", r.0),
            NodeId::Client(c) => format!("c{}", c.0),
        };
        f.pad(&s)
    }
}

/// A replica's number, as in `kvnode replica N` (port 808N by default).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ReplicaId(pub u8);

/// A client's identity; with a per-client sequence number it names every
/// request, so a retried write is applied at most once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ClientId(pub u64);

/// A leadership term. Every promotion starts a new epoch; replicas refuse rows
/// and leaders from an older epoch than the one they promised.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Epoch(pub u64);

/// Log sequence number: the position of a row in the replicated log, from 1.
/// `Lsn(0)` means "nothing".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Lsn(pub u64);

impl Lsn {
    /// The next position. Saturates: LSNs from the wire may be anything,
    /// and a log never gets near `u64::MAX` rows.
    pub fn next(self) -> Lsn {
        Lsn(self.0.saturating_add(1))
    }
    pub fn prev(self) -> Lsn {
        Lsn(self.0.saturating_sub(1))
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "e{}", self.0)
    }
}

/// A position in the log together with the epoch of the row there; logs are
/// compared by this pair (epoch first) to decide who is most up to date.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct LogPos {
    pub epoch: Epoch,
    pub lsn: Lsn,
}

impl fmt::Display for LogPos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.lsn.0, self.epoch.0)
    }
}

/// Names one client request; retries reuse it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RequestId {
    pub client: ClientId,
    pub seq: u64,
}

/// One replicated row: the *result* of a write (row-based replication), never
/// the client's text.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Row {
    pub epoch: Epoch,
    pub lsn: Lsn,
    pub body: RowBody,
}

impl Row {
    pub fn pos(&self) -> LogPos {
        LogPos { epoch: self.epoch, lsn: self.lsn }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RowBody {
    /// The first row of every epoch. A leader counts earlier rows as committed
    /// only once a row of its own epoch is (the Raft rule that prevents a
    /// committed-looking row from being overwritten later).
    Noop,
    /// `value: None` is a tombstone (a delete).
    Put { key: String, value: Option<String>, req: RequestId },
}

/// What a client asks for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    Get { key: String },
    Set { key: String, value: String },
    Del { key: String },
}

impl Op {
    pub fn key(&self) -> &str {
        match self {
            Op::Get { key } | Op::Set { key, .. } | Op::Del { key } => key,
        }
    }
    pub fn is_write(&self) -> bool {
        !matches!(self, Op::Get { .. })
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Get { key } => write!(f, "get {key}"),
            Op::Set { key, value } => write!(f, "set {key}={}", Abbrev(value)),
            Op::Del { key } => write!(f, "del {key}"),
        }
    }
}

/// Shows a value in a trace, shortened when long so lines stay readable.
pub struct Abbrev<'a>(pub &'a str);

impl fmt::Display for Abbrev<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SHOW: usize = 12;
        if self.0.len() <= SHOW + 3 {
            f.write_str(self.0)
        } else {
            let cut = (0..=SHOW).rev().find(|i| self.0.is_char_boundary(*i)).unwrap_or(0);
            write!(f, "{}..({}B)", &self.0[..cut], self.0.len())
        }
    }
}

/// Read consistency a client chooses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReadMode {
    /// Round robin over replicas, like the original; may be stale.
    Any,
    /// Read-your-writes and monotonic reads: only replicas that have applied
    /// the client's last seen LSN answer.
    #[default]
    Session,
    /// Linearizable: the leader answers after confirming it still leads.
    Leader,
}

impl fmt::Display for ReadMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ReadMode::Any => "any",
            ReadMode::Session => "session",
            ReadMode::Leader => "leader",
        })
    }
}

impl std::str::FromStr for ReadMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "any" => Ok(ReadMode::Any),
            "session" => Ok(ReadMode::Session),
            "leader" => Ok(ReadMode::Leader),
            _ => Err(format!("unknown read mode '{s}' (expected any, session or leader)")),
        }
    }
}

/// Why a request failed. `Timeout` on a write is *ambiguous*: it may or may
/// not have been applied.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OpError {
    /// No leader can be promoted safely right now; nothing was applied.
    Unavailable,
    /// Not enough sync followers confirmed in time, or no answer came back;
    /// the write may still be applied later.
    Timeout,
    /// The request was refused before doing anything (bad key, too large...).
    Invalid(String),
    /// The client's own queue is full; nothing was sent.
    Overloaded,
}

impl OpError {
    /// Whether a write that failed this way may still have been applied.
    pub fn is_ambiguous(&self) -> bool {
        matches!(self, OpError::Timeout)
    }
}

impl fmt::Display for OpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpError::Unavailable => f.write_str("unavailable: no leader can be promoted safely"),
            OpError::Timeout => f.write_str("timed out (a write may or may not have been applied)"),
            OpError::Invalid(why) => write!(f, "invalid request: {why}"),
            OpError::Overloaded => f.write_str("overloaded: too many requests queued"),
        }
    }
}

/// Limits every machine enforces on client data.
pub const MAX_KEY_BYTES: usize = 1024;
pub const MAX_VALUE_BYTES: usize = 64 * 1024;

/// Checks a client operation against the documented limits.
pub fn validate_op(op: &Op) -> Result<(), OpError> {
    let key = op.key();
    if key.is_empty() {
        return Err(OpError::Invalid("empty key".into()));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(OpError::Invalid(format!("key is {} bytes, limit {MAX_KEY_BYTES}", key.len())));
    }
    if key.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(OpError::Invalid("key contains whitespace or control characters".into()));
    }
    if let Op::Set { value, .. } = op {
        if value.len() > MAX_VALUE_BYTES {
            return Err(OpError::Invalid(format!("value is {} bytes, limit {MAX_VALUE_BYTES}", value.len())));
        }
    }
    Ok(())
}
