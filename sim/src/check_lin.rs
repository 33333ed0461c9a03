//! Offline consistency checkers for recorded client histories.
//!
//! This file owns two checks over what clients *observed*:
//!
//! - [`check_linearizable`]: every key behaves as one atomic register
//!   (Wing & Gong search with Lowe's memoization, shaped like porcupine).
//! - [`check_session`]: per-client session guarantees stated in log positions
//!   and in the values read (read-your-writes, monotonic reads).
//!
//! The linearizability search is exponential in the worst case, so it runs
//! within a [`LinBudget`]: a number of search steps and an estimate of the
//! memory its states hold, both counted, never timed, so a verdict depends on
//! the history alone. A key that exhausts either is reported as undecided
//! ([`LinVerdict::Inconclusive`]), never as a pass.
//!
//! It must never know the kvstore core types, a clock, a socket or an RNG:
//! histories come in as plain data defined here, and every output is built
//! from ordered containers so the same history always yields the same bytes.
//!
//! Real-time order: operation A precedes B only if `A.completed_us <
//! B.invoked_us`, where `invoked_us` is when the operation was first *sent*
//! (nothing it asks can take effect before), not when the application queued
//! it. Operations that touch at the same microsecond count as
//! concurrent, which is the lenient reading (porcupine orders a call before a
//! return at equal times for the same reason).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};

/// What an operation did and what it saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A read that returned `value` (`None`: the key was missing).
    Read { value: Option<String> },
    /// A write of `value` (`None`: a delete).
    Write { value: Option<String> },
}

/// One client operation as recorded at the client.
///
/// Operations known to have failed without effect must not be passed in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistOp {
    pub client: u64,
    pub key: String,
    pub kind: Kind,
    /// When the client first sent it: the earliest it can take effect.
    pub invoked_us: u64,
    /// `None`: outcome unknown. For a write this means it may have taken
    /// effect at any time after `invoked_us`, or never. A read without a
    /// completion constrains nothing and is ignored.
    pub completed_us: Option<u64>,
}

/// Figures from a successful check.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinStats {
    /// Operations that took part in the search (after the pruning below).
    pub ops_checked: usize,
    pub keys_checked: usize,
    /// Largest number of search states (linearized set, register value,
    /// ambiguous writes used) one key needed, counting both searches if the
    /// sweep ran.
    pub states_explored_max: usize,
    pub states_explored_total: usize,
    /// Keys whose depth-first search ran past its state budget and were
    /// decided by the exhaustive sweep instead (see `sweep`).
    pub keys_swept: usize,
    /// The most search steps one key took (see [`LinBudget`]).
    pub steps_max: u64,
    /// The most one key's search states were estimated to hold at once.
    pub memory_bytes_max: usize,
    /// Ambiguous writes left out because no read ever returned their value:
    /// such a write can always be placed last, or never, without effect.
    pub ambiguous_writes_dropped: usize,
    /// Ambiguous writes given a completion time because they are the only
    /// writer of a value some read returned: they must precede that read.
    pub ambiguous_writes_bounded: usize,
}

/// Why a history is not linearizable: the first key (in key order) that
/// failed, and a short account written for a person.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinViolation {
    pub key: String,
    /// Index into the checked history of the operation that could not be
    /// placed (see `explanation`).
    pub op_index: usize,
    pub explanation: String,
}

impl fmt::Display for LinViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "key {:?} is not linearizable: {}", self.key, self.explanation)
    }
}

impl std::error::Error for LinViolation {}

/// Limits on the work the linearizability check does for one key. Both are
/// counted, never timed: the simulator must give the same verdict for the
/// same history on any machine, under any load.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinBudget {
    /// Search steps per key: one per move of the depth-first search (a try
    /// or an undo) and one per state the breadth-first sweep generates.
    pub steps: u64,
    /// Estimated bytes the search states of one key may hold at once (the
    /// depth-first memo, or the sweep's two layers; see `Memo::remember`).
    pub memory_bytes: usize,
}

/// Default step budget per key: 50 million, about 5 to 15 seconds of
/// checking. The heaviest shape in the `figures` test that is still decided
/// (10,000 operations on one key from 12 clients with one stale read, so the
/// search must be exhaustive) takes between 4 and 8.4 million steps, and
/// simulator histories far fewer (seconds of traffic, a few hundred
/// operations per key): six times that shape is room for any history a
/// person could still read, and a stop for sweeps that stay small in memory
/// but go on for very many layers.
pub const LIN_STEPS_MAX: u64 = 50_000_000;

/// Default memory budget per key: 128 MiB of estimated search states, four
/// times the most the heaviest decided `figures` shape holds (30 MiB).
/// Before there was a budget, histories of 60 to 80 mutually overlapping
/// operations on one key (long-tailed network delays, `leader` readers) made
/// the sweep hold over 12 GB until the whole `kvsim sweep` was killed. The
/// estimate counts each state's words and a fixed overhead per entry (see
/// `Memo::remember`); at budgets of 64 MiB to 1 GiB it came within 1% of the
/// process's peak resident set under glibc's allocator (see the
/// `memory_figures` test). Filling 128 MiB takes a fraction of a second, so
/// the exponential histories end quickly, as `Inconclusive`.
pub const LIN_MEMORY_BYTES_MAX: usize = 128 << 20;

impl LinBudget {
    /// The budget [`check_linearizable`] runs with.
    pub const DEFAULT: LinBudget = LinBudget { steps: LIN_STEPS_MAX, memory_bytes: LIN_MEMORY_BYTES_MAX };
}

impl Default for LinBudget {
    fn default() -> LinBudget {
        LinBudget::DEFAULT
    }
}

/// Which part of a [`LinBudget`] ran out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BudgetKind {
    Steps,
    Memory,
}

/// A key the check could not decide within its budget.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinUndecided {
    pub key: String,
    /// Operations on the key that took part in the search.
    pub ops: usize,
    pub exhausted: BudgetKind,
    pub budget: LinBudget,
    /// Steps taken before giving up.
    pub steps: u64,
    /// The most the search states were estimated to hold at once.
    pub memory_bytes_peak: usize,
    /// The most operations any partial linearization placed: how far the
    /// search got.
    pub placed_max: usize,
}

impl fmt::Display for LinUndecided {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.exhausted {
            BudgetKind::Steps => format!("its step budget ({} steps)", self.budget.steps),
            BudgetKind::Memory => {
                format!("its memory budget ({} MiB of search states)", self.budget.memory_bytes >> 20)
            }
        };
        write!(
            f,
            "key {:?} is undecided: the search ran out of {what} after {} steps, holding at most \
             {} MiB, with at most {} of {} operations linearized",
            self.key,
            self.steps,
            self.memory_bytes_peak >> 20,
            self.placed_max,
            self.ops
        )
    }
}

/// The outcome of [`check_linearizable`].
#[must_use]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinVerdict {
    /// Every key is linearizable.
    Linearizable(LinStats),
    /// The first key (in key order) found not to be linearizable.
    Violation(LinViolation),
    /// No key was found not linearizable, but these keys (in key order) ran
    /// out of budget undecided. Not a pass.
    Inconclusive(Vec<LinUndecided>),
}

impl LinVerdict {
    pub fn is_linearizable(&self) -> bool {
        matches!(self, LinVerdict::Linearizable(_))
    }

    pub fn is_violation(&self) -> bool {
        matches!(self, LinVerdict::Violation(_))
    }

    /// The figures of a passing check.
    ///
    /// # Panics
    ///
    /// If the verdict is not [`LinVerdict::Linearizable`].
    pub fn expect_linearizable(self) -> LinStats {
        match self {
            LinVerdict::Linearizable(stats) => stats,
            other => panic!("expected a linearizable history, got {other}"),
        }
    }

    /// The violation found.
    ///
    /// # Panics
    ///
    /// If the verdict is not [`LinVerdict::Violation`].
    pub fn expect_violation(self) -> LinViolation {
        match self {
            LinVerdict::Violation(violation) => violation,
            other => panic!("expected a violation, got {other}"),
        }
    }

    /// The keys left undecided.
    ///
    /// # Panics
    ///
    /// If the verdict is not [`LinVerdict::Inconclusive`].
    pub fn expect_inconclusive(self) -> Vec<LinUndecided> {
        match self {
            LinVerdict::Inconclusive(undecided) => undecided,
            other => panic!("expected an inconclusive check, got {other}"),
        }
    }
}

impl fmt::Display for LinVerdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinVerdict::Linearizable(stats) => write!(f, "linearizable ({stats:?})"),
            LinVerdict::Violation(violation) => violation.fmt(f),
            LinVerdict::Inconclusive(undecided) => {
                for (i, key) in undecided.iter().enumerate() {
                    if i > 0 {
                        f.write_str("; ")?;
                    }
                    key.fmt(f)?;
                }
                Ok(())
            }
        }
    }
}

/// Checks that every key of `history` behaves as a linearizable register whose
/// initial value is `None`, within [`LinBudget::DEFAULT`].
///
/// Keys are independent (P-compositionality), so each key is searched on its
/// own; the first failing key in key order is reported. A key that runs out
/// of budget is set aside as undecided and the other keys are still checked:
/// a violation elsewhere is still found.
///
/// Each key is decided by a porcupine-style depth-first search (see
/// `search`); past a state budget of a few states per operation, that key is
/// decided instead by an exhaustive breadth-first sweep (see `sweep`), which
/// visits each reachable state at most once. Both are exact within the
/// budget. The cost grows exponentially with how many operations on one key
/// overlap in time; it does not grow with history length beyond linearly.
///
/// # Panics
///
/// If an operation completes before it was invoked: that is a recording bug,
/// not a consistency verdict.
pub fn check_linearizable(history: &[HistOp]) -> LinVerdict {
    check_linearizable_within(history, LinBudget::DEFAULT)
}

/// [`check_linearizable`] with another budget.
pub fn check_linearizable_within(history: &[HistOp], budget: LinBudget) -> LinVerdict {
    check_linearizable_with(history, Strategy::Default, budget)
}

/// Which search decides each key. Only tests choose anything but `Default`,
/// to hold both searches to the same verdicts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Strategy {
    /// Depth-first, falling back to the sweep past a state budget.
    Default,
    #[cfg(test)]
    SearchOnly,
    #[cfg(test)]
    SweepOnly,
}

impl Strategy {
    /// Whether a search that ran out of memory may give way to the sweep.
    fn may_sweep(self) -> bool {
        match self {
            Strategy::Default => true,
            #[cfg(test)]
            Strategy::SearchOnly => false,
            #[cfg(test)]
            Strategy::SweepOnly => true,
        }
    }

    /// States the depth-first search may visit on a key of `ops` operations
    /// before giving way to the sweep. Passing histories need a few per
    /// operation; a failing search needs every reachable state, which the
    /// sweep visits at most once each.
    fn search_states_max(self, ops: usize) -> usize {
        const SEARCH_STATES_PER_OP: usize = 16;
        const SEARCH_STATES_MIN: usize = 4_096;
        match self {
            Strategy::Default => SEARCH_STATES_MIN + SEARCH_STATES_PER_OP * ops,
            #[cfg(test)]
            Strategy::SearchOnly => usize::MAX,
            #[cfg(test)]
            Strategy::SweepOnly => 0,
        }
    }
}

fn check_linearizable_with(history: &[HistOp], strategy: Strategy, budget: LinBudget) -> LinVerdict {
    let mut by_key: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (index, op) in history.iter().enumerate() {
        if let Some(completed_us) = op.completed_us {
            assert!(
                completed_us >= op.invoked_us,
                "history[{index}] completes at {completed_us}us before its invocation at {}us",
                op.invoked_us
            );
        }
        by_key.entry(op.key.as_str()).or_default().push(index);
    }

    let mut stats = LinStats::default();
    let mut undecided = Vec::new();
    for (key, indexes) in &by_key {
        let key_stats = match check_key(key, history, indexes, strategy, budget) {
            Ok(key_stats) => key_stats,
            Err(KeyFailure::Violation(violation)) => return LinVerdict::Violation(violation),
            Err(KeyFailure::Undecided(key)) => {
                undecided.push(key);
                continue;
            }
        };
        stats.keys_swept += usize::from(key_stats.swept);
        stats.keys_checked += 1;
        stats.ops_checked += key_stats.ops_checked;
        stats.states_explored_max = stats.states_explored_max.max(key_stats.states_explored);
        stats.states_explored_total += key_stats.states_explored;
        stats.steps_max = stats.steps_max.max(key_stats.steps);
        stats.memory_bytes_max = stats.memory_bytes_max.max(key_stats.memory_bytes_peak);
        stats.ambiguous_writes_dropped += key_stats.ambiguous_writes_dropped;
        stats.ambiguous_writes_bounded += key_stats.ambiguous_writes_bounded;
    }
    if undecided.is_empty() {
        LinVerdict::Linearizable(stats)
    } else {
        LinVerdict::Inconclusive(undecided)
    }
}

/// A client operation with the log position its answer reflects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionOp {
    pub client: u64,
    pub key: String,
    pub kind: Kind,
    /// When the client first sent it.
    pub invoked_us: u64,
    /// `None`: outcome unknown; such an operation neither counts as a write
    /// the client saw acknowledged nor as a read it observed.
    pub completed_us: Option<u64>,
    /// For a write, the row's LSN; for a read, the replica's applied LSN.
    pub lsn: u64,
}

/// A write by any client, in any read mode, that may have taken effect, with
/// the log position it took: what the value checks of [`check_session`] use
/// to tell how new the value a read returned is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WrittenAt {
    pub key: String,
    /// `None`: a delete.
    pub value: Option<String>,
    /// The row's LSN from the write's acknowledgement; `None` when unknown
    /// (the outcome was ambiguous, or the write was still unfinished).
    pub lsn: Option<u64>,
}

/// The LSNs at which one value was written to one key.
#[derive(Clone, Copy, Debug)]
struct Writers {
    min: u64,
    max: u64,
    /// Some write of it has an unknown LSN: nothing can be concluded.
    unknown: bool,
}

impl Writers {
    fn add(&mut self, lsn: Option<u64>) {
        match lsn {
            Some(lsn) => {
                self.min = self.min.min(lsn);
                self.max = self.max.max(lsn);
            }
            None => self.unknown = true,
        }
    }
}

/// A map only ever looked up, never iterated, so its order cannot reach an
/// output; hashed with the memo's cheap fixed hasher (keys and values here
/// are the checker's own data, not an adversary's).
type Lookup<K, V> = HashMap<K, V, BuildHasherDefault<WordHasher>>;

/// Where each (key, value) was written, for the value checks: `known(key,
/// value)` is the (lowest, highest) LSN that wrote it, when every write of
/// it has a known LSN and there is at least one.
struct WriteIndex<'a> {
    by_value: Lookup<(&'a str, Option<&'a str>), Writers>,
}

impl<'a> WriteIndex<'a> {
    fn new(writes: &'a [WrittenAt]) -> WriteIndex<'a> {
        let mut by_value: Lookup<(&str, Option<&str>), Writers> = Lookup::default();
        for w in writes {
            // Every key starts missing, as if deleted at LSN 0.
            let initial = Writers { min: 0, max: 0, unknown: false };
            let empty = Writers { min: u64::MAX, max: 0, unknown: false };
            let start = if w.value.is_none() { initial } else { empty };
            by_value.entry((w.key.as_str(), w.value.as_deref())).or_insert(start).add(w.lsn);
        }
        WriteIndex { by_value }
    }

    fn known(&self, key: &str, value: &Option<String>) -> Option<(u64, u64)> {
        match self.by_value.get(&(key, value.as_deref())) {
            Some(w) if w.unknown => None,
            Some(w) => Some((w.min, w.max)),
            // Missing with no delete anywhere: only the initial state.
            None if value.is_none() => Some((0, 0)),
            // Never written: `reads_come_from_writes` reports that.
            None => None,
        }
    }
}

/// `Some("a") (written at lsn 3)`, for the value checks' messages.
fn show_written(value: &Option<String>, (min, max): (u64, u64)) -> String {
    let at = match (value, min, max) {
        (None, _, 0) => "missing since the start".to_owned(),
        (None, 0, max) => format!("missing since the start or a delete at lsn {max} at the latest"),
        (_, min, max) if min == max => format!("written at lsn {max}"),
        (_, min, max) => format!("written at lsns {min} to {max}"),
    };
    format!("{} ({at})", show_value(value))
}

/// Checks per-client session guarantees and returns one line per violation
/// (empty: none found). `history` holds the operations of session clients;
/// `writes` every write of any client that may have taken effect.
///
/// In log positions:
///
/// - Read-your-writes: a read sent at or after the completion of the
///   client's own write to the same key reflects an LSN at least that write's.
/// - Monotonic reads: a read sent at or after the completion of an earlier
///   read by the same client, on any key (LSNs are positions in one log),
///   reflects an LSN at least that earlier read's.
///
/// In values, per key, since a replica can claim a new enough LSN and still
/// answer from old data: the value a read returns must have been written at
/// an LSN no lower than the client's own last completed write to that key,
/// and no lower than the lowest LSN that could have written the value an
/// earlier read of the key returned. A value with any write of unknown LSN
/// (an ambiguous or unfinished write) is never judged, so writes of equal
/// values, and timeouts, make the check weaker, never wrong. LSNs order
/// writes only while acknowledged rows are never truncated: a run that loses
/// acknowledged writes (reported as such) may also report reads that missed
/// them here.
///
/// "At or after" is program order: a client may send its next request in the
/// microsecond its previous answer arrived.
pub fn check_session(history: &[SessionOp], writes: &[WrittenAt]) -> Vec<String> {
    let written_at = WriteIndex::new(writes);
    let mut by_client: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
    for (index, op) in history.iter().enumerate() {
        by_client.entry(op.client).or_default().push(index);
    }

    let mut violations = Vec::new();
    for (client, indexes) in &by_client {
        // Sweep the client's events in time order. At equal times a
        // completion comes before an invocation (program order, see above);
        // the history index breaks the remaining ties deterministically.
        const COMPLETION: u8 = 0;
        const INVOCATION: u8 = 1;
        let mut events: Vec<(u64, u8, usize)> = Vec::new();
        for &index in indexes {
            let op = &history[index];
            let Some(completed_us) = op.completed_us else {
                continue;
            };
            events.push((completed_us, COMPLETION, index));
            if matches!(op.kind, Kind::Read { .. }) {
                events.push((op.invoked_us, INVOCATION, index));
            }
        }
        events.sort_unstable();

        // Highest acknowledged write LSN per key, and highest read LSN seen,
        // each with the operation that set it (for the message).
        let mut writes_seen: Lookup<&str, (u64, usize)> = Lookup::default();
        let mut read_seen: Option<(u64, usize)> = None;
        // Per key, the lowest LSN a value read from now on may have been
        // written at, and the operation that set it: the client's own write,
        // or a read whose value was written at that LSN or later.
        let mut value_floor: Lookup<&str, (u64, usize)> = Lookup::default();
        for (_, event, index) in events {
            let op = &history[index];
            match (event, &op.kind) {
                (COMPLETION, Kind::Write { .. }) => {
                    let seen = writes_seen.entry(op.key.as_str()).or_insert((op.lsn, index));
                    if op.lsn > seen.0 {
                        *seen = (op.lsn, index);
                    }
                    let floor = value_floor.entry(op.key.as_str()).or_insert((op.lsn, index));
                    if op.lsn > floor.0 {
                        *floor = (op.lsn, index);
                    }
                }
                (COMPLETION, Kind::Read { value }) => {
                    if read_seen.is_none_or(|(lsn, _)| op.lsn > lsn) {
                        read_seen = Some((op.lsn, index));
                    }
                    if let Some((min, _)) = written_at.known(&op.key, value) {
                        let floor = value_floor.entry(op.key.as_str()).or_insert((min, index));
                        if min > floor.0 {
                            *floor = (min, index);
                        }
                    }
                }
                (_, Kind::Read { value }) => {
                    let reported = violations.len();
                    if let Some(&(lsn, w)) = writes_seen.get(op.key.as_str()) {
                        if op.lsn < lsn {
                            let write = &history[w];
                            violations.push(format!(
                                "client {client}: read-your-writes violated on key {:?}: read \
                                 sent at {}us returned {} at lsn {}, but the client's own \
                                 write of {} completed at {}us with lsn {lsn}",
                                op.key,
                                op.invoked_us,
                                show_value(value),
                                op.lsn,
                                show_value(kind_value(&write.kind)),
                                write.completed_us.unwrap_or_default(),
                            ));
                        }
                    }
                    if let Some((lsn, r)) = read_seen {
                        if op.lsn < lsn {
                            let earlier = &history[r];
                            violations.push(format!(
                                "client {client}: monotonic reads violated: read of key {:?} \
                                 sent at {}us returned {} at lsn {}, but an earlier read of \
                                 key {:?} completed at {}us at lsn {lsn}",
                                op.key,
                                op.invoked_us,
                                show_value(value),
                                op.lsn,
                                earlier.key,
                                earlier.completed_us.unwrap_or_default(),
                            ));
                        }
                    }
                    if violations.len() > reported {
                        continue; // One account of a read is enough.
                    }
                    let (Some(&(floor, by)), Some(written)) =
                        (value_floor.get(op.key.as_str()), written_at.known(&op.key, value))
                    else {
                        continue;
                    };
                    if written.1 >= floor {
                        continue;
                    }
                    let cause = &history[by];
                    let why = match &cause.kind {
                        Kind::Write { value: own } => format!(
                            "read-your-writes violated on key {:?}: read sent at {}us at lsn {} \
                             returned {}, older than the client's own write of {} that \
                             completed at {}us with lsn {floor}",
                            op.key,
                            op.invoked_us,
                            op.lsn,
                            show_written(value, written),
                            show_value(own),
                            cause.completed_us.unwrap_or_default(),
                        ),
                        Kind::Read { value: seen } => format!(
                            "monotonic reads violated on key {:?}: read sent at {}us at lsn {} \
                             returned {}, older than {} an earlier read of the key returned, \
                             completing at {}us",
                            op.key,
                            op.invoked_us,
                            op.lsn,
                            show_written(value, written),
                            show_written(seen, written_at.known(&cause.key, seen).unwrap_or((floor, floor))),
                            cause.completed_us.unwrap_or_default(),
                        ),
                    };
                    violations.push(format!("client {client}: {why}"));
                }
                (_, Kind::Write { .. }) => unreachable!("write invocations are not swept"),
            }
        }
    }
    violations
}

// ---------------------------------------------------------------------------
// One key's search.

/// Interned register value: 0 is `None` (missing), `n > 0` is the n-th
/// distinct `Some` value of this key.
type ValueId = u32;
const MISSING: ValueId = 0;
/// Any value no read returned (see `check_key`).
const UNREAD: ValueId = ValueId::MAX;

/// One operation of one key, in the search's terms.
#[derive(Clone, Copy, Debug)]
struct KeyOp {
    /// Index into the caller's history.
    hist: usize,
    call_us: u64,
    /// `u64::MAX` for an ambiguous write: it may take effect at any later time.
    ret_us: u64,
    ambiguous: bool,
    read: bool,
    value: ValueId,
}

struct KeyStats {
    ops_checked: usize,
    states_explored: usize,
    steps: u64,
    memory_bytes_peak: usize,
    ambiguous_writes_dropped: usize,
    ambiguous_writes_bounded: usize,
    swept: bool,
}

/// Why one key did not pass.
enum KeyFailure {
    Violation(LinViolation),
    Undecided(LinUndecided),
}

/// Counts one key's search against its budget.
struct Meter {
    budget: LinBudget,
    steps: u64,
    /// Estimated bytes the states of the running search hold.
    held: usize,
    held_peak: usize,
    /// The most operations any partial linearization placed so far.
    placed_max: usize,
}

impl Meter {
    fn new(budget: LinBudget) -> Meter {
        Meter { budget, steps: 0, held: 0, held_peak: 0, placed_max: 0 }
    }

    /// Counts one step; `Err` once past the budget.
    fn step(&mut self) -> Result<(), BudgetKind> {
        self.steps += 1;
        if self.steps > self.budget.steps {
            Err(BudgetKind::Steps)
        } else {
            Ok(())
        }
    }

    /// Notes that the running search now holds `bytes`; `Err` past the budget.
    fn hold(&mut self, bytes: usize) -> Result<(), BudgetKind> {
        self.held = bytes;
        self.held_peak = self.held_peak.max(bytes);
        if bytes > self.budget.memory_bytes {
            Err(BudgetKind::Memory)
        } else {
            Ok(())
        }
    }
}

/// How a search ended.
enum SearchEnd {
    Decided(Result<(), Partial>),
    /// Out of the budget.
    Exhausted(BudgetKind),
}

/// The deepest point the search reached: the most operations it managed to
/// linearize, and the register value after them.
struct Partial {
    placed: Vec<bool>,
    value: ValueId,
    count: usize,
}

fn check_key(
    key: &str,
    history: &[HistOp],
    indexes: &[usize],
    strategy: Strategy,
    budget: LinBudget,
) -> Result<KeyStats, KeyFailure> {
    // Intern values. Ids follow string order, not history order, so nothing
    // downstream depends on how the history was arranged.
    let mut values: BTreeMap<&str, ValueId> = BTreeMap::new();
    for &index in indexes {
        if let Some(v) = kind_value(&history[index].kind) {
            values.insert(v.as_str(), 0);
        }
    }
    for (id, slot) in values.values_mut().enumerate() {
        *slot = ValueId::try_from(id + 1).expect("fewer than 2^32 distinct values per key");
    }
    let intern = |v: &Option<String>| v.as_deref().map_or(MISSING, |s| values[s]);

    let mut ops: Vec<KeyOp> = Vec::with_capacity(indexes.len());
    for &index in indexes {
        let op = &history[index];
        let (read, value) = match &op.kind {
            Kind::Read { value } => (true, intern(value)),
            Kind::Write { value } => (false, intern(value)),
        };
        if read && op.completed_us.is_none() {
            continue; // An unanswered read constrains nothing.
        }
        ops.push(KeyOp {
            hist: index,
            call_us: op.invoked_us,
            ret_us: op.completed_us.unwrap_or(u64::MAX),
            ambiguous: op.completed_us.is_none(),
            read,
            value,
        });
    }

    // A read of a value no write ever wrote needs no search, and deserves a
    // plainer message than the search would give. Report the earliest.
    let mut written = vec![false; values.len() + 1];
    written[MISSING as usize] = true; // the initial value
    for op in ops.iter().filter(|op| !op.read) {
        written[op.value as usize] = true;
    }
    if let Some(bad) =
        ops.iter().filter(|op| op.read && !written[op.value as usize]).min_by_key(|op| (op.call_us, op.hist))
    {
        return Err(KeyFailure::Violation(LinViolation {
            key: key.to_owned(),
            op_index: bad.hist,
            explanation: format!(
                "{} returned a value no write to this key ever wrote",
                show_op(history, bad.hist)
            ),
        }));
    }

    let (ambiguous_writes_dropped, ambiguous_writes_bounded) = prune_ambiguous(&mut ops, values.len());
    let ops_checked = ops.len();

    // Values no read returned are all alike to the search: while the register
    // holds one, no read can go next. One id for them all shrinks the state
    // space a failing search must exhaust.
    let mut read_back = vec![false; values.len() + 1];
    for op in ops.iter().filter(|op| op.read) {
        read_back[op.value as usize] = true;
    }
    for op in ops.iter_mut().filter(|op| !read_back[op.value as usize]) {
        op.value = UNREAD;
    }

    let states_max = strategy.search_states_max(ops.len());
    let mut meter = Meter::new(budget);
    let (mut states_explored, mut outcome) = search(&ops, states_max, &mut meter);
    // The depth-first memo keeps every state it visits, the sweep only two
    // layers: a search out of memory gives way to the sweep too.
    let swept = match outcome {
        None => true,
        Some(SearchEnd::Exhausted(BudgetKind::Memory)) => strategy.may_sweep(),
        Some(_) => false,
    };
    if swept {
        // The search's memo is gone: the sweep starts from nothing held.
        meter.held = 0;
        let (swept_states, swept_outcome) = sweep(&ops, &mut meter);
        states_explored += swept_states;
        outcome = Some(swept_outcome);
    }
    match outcome.expect("the sweep always ends") {
        SearchEnd::Decided(Ok(())) => Ok(KeyStats {
            ops_checked,
            states_explored,
            steps: meter.steps,
            memory_bytes_peak: meter.held_peak,
            ambiguous_writes_dropped,
            ambiguous_writes_bounded,
            swept,
        }),
        SearchEnd::Decided(Err(partial)) => Err(KeyFailure::Violation(explain(key, history, &ops, &partial))),
        SearchEnd::Exhausted(exhausted) => Err(KeyFailure::Undecided(LinUndecided {
            key: key.to_owned(),
            ops: ops_checked,
            exhausted,
            budget,
            steps: meter.steps.min(budget.steps),
            memory_bytes_peak: meter.held_peak,
            placed_max: meter.placed_max,
        })),
    }
}

/// Shrinks the search without changing its verdict.
///
/// - An ambiguous write whose value no read returned is dropped: placed last
///   (or never) it changes nothing anyone saw, and wherever else a
///   linearization put it, no read sits between it and the next write, so it
///   can be cut out of that linearization too.
/// - An ambiguous write that is the only writer of a `Some` value some read
///   returned must precede every such read, so it completes, at the latest,
///   when the first of them completes. Otherwise it would stay a candidate
///   for the rest of the history and double the states of every failing
///   search.
///
/// Returns (dropped, bounded).
fn prune_ambiguous(ops: &mut Vec<KeyOp>, value_count: usize) -> (usize, usize) {
    let mut writers = vec![0usize; value_count + 1];
    let mut first_read_ret = vec![None::<u64>; value_count + 1];
    for op in ops.iter() {
        if op.read {
            let slot = &mut first_read_ret[op.value as usize];
            *slot = Some(slot.map_or(op.ret_us, |t: u64| t.min(op.ret_us)));
        } else {
            writers[op.value as usize] += 1;
        }
    }

    let before = ops.len();
    ops.retain(|op| !(op.ambiguous && first_read_ret[op.value as usize].is_none()));
    let dropped = before - ops.len();

    let mut bounded = 0;
    for op in ops.iter_mut().filter(|op| op.ambiguous) {
        if op.value == MISSING || writers[op.value as usize] != 1 {
            continue;
        }
        let ret_us = first_read_ret[op.value as usize].expect("kept ambiguous writes were read");
        if ret_us >= op.call_us {
            op.ret_us = ret_us;
            op.ambiguous = false;
            bounded += 1;
        }
    }
    (dropped, bounded)
}

/// Wing & Gong depth-first search over the operations that may go next,
/// memoizing visited states as Lowe and porcupine do.
///
/// Call and return entries of definite operations sit in one doubly linked
/// list ordered by time. An operation may be linearized next exactly when its
/// call entry comes before the first remaining return entry. Reaching a
/// return entry means its operation can no longer be placed on this path:
/// backtrack.
///
/// Refinements over the textbook search, each keeping its verdict:
///
/// - A candidate read that matches the register is placed at once, with no
///   alternatives tried: any linearization placing it later stays legal with
///   it moved here, since a read changes nothing and everything that must
///   precede it is already placed. If that fails, the state fails.
/// - Ambiguous writes stay out of the list, pooled by value. Once invoked,
///   writes of one value that may take effect at any later time are
///   interchangeable, so a state records how many of each pool it used, not
///   which.
/// - An ambiguous write is used only right before a read of its value that
///   could go next. In any linearization, an ambiguous write not followed at
///   once by such a read is overwritten or last, and can be cut out.
///   Definite candidates are tried first.
/// - The memo subsumes rather than matches: a state is pruned when a visited
///   state has the same definite set and register value and used no more of
///   any pool. That state can do everything this one can, since spare
///   ambiguous writes can always go last, or never.
/// - The definite set is keyed compactly (see [`Frontier`]), so a state costs
///   the width of the concurrency window, not the length of the history.
///
/// Returns the number of states visited, and on failure the deepest partial
/// linearization found; or no verdict once more than `states_max` states
/// were visited (the sweep takes over); or that the budget ran out (out of
/// memory, the sweep may take over too: it holds less).
fn search(ops: &[KeyOp], states_max: usize, meter: &mut Meter) -> (usize, Option<SearchEnd>) {
    let n = ops.len();
    let mut entries: Vec<(u64, bool, usize)> = Vec::with_capacity(2 * n);
    for (i, op) in ops.iter().enumerate().filter(|(_, op)| !op.ambiguous) {
        // `false < true`: a call sorts before a return at the same time.
        entries.push((op.call_us, false, i));
        entries.push((op.ret_us, true, i));
    }
    entries.sort_unstable();

    // Circular list with a sentinel at index `head`.
    let head = entries.len();
    let mut next: Vec<usize> = (1..=head).chain([0]).collect();
    let mut prev: Vec<usize> = [head].into_iter().chain(0..head).collect();
    let mut call_pos = vec![0; n];
    let mut ret_pos = vec![0; n];
    for (pos, &(_, is_ret, op)) in entries.iter().enumerate() {
        if is_ret {
            ret_pos[op] = pos;
        } else {
            call_pos[op] = pos;
        }
    }

    let pools = Pool::all(ops);
    let mut used = vec![0u32; pools.len()];
    let mut frontier = Frontier::new(ops);
    let mut memo = Memo::default();
    let mut key: Vec<u64> = Vec::new();
    let mut value = MISSING;

    let mut stack: Vec<Step> = Vec::new();
    // The deepest stack seen, kept up to date cheaply: `best[..low_water]`
    // still equals `stack[..low_water]`.
    let mut best: Vec<Step> = Vec::new();
    let mut best_value = MISSING;
    let mut low_water = 0;

    // Ambiguous writes are never required: done once every definite
    // operation is placed.
    let mut definite_left = head / 2;
    let mut phase = Phase::Definite;
    let mut entry = head;
    // True on arriving at a state: look for a forced read first.
    let mut fresh = true;

    loop {
        if definite_left == 0 {
            return (memo.states, Some(SearchEnd::Decided(Ok(()))));
        }
        if memo.states > states_max {
            return (memo.states, None);
        }
        if let Err(kind) = meter.step() {
            return (memo.states, Some(SearchEnd::Exhausted(kind)));
        }

        // Choose the next step to try, or find there is none.
        let mut choice: Option<Step> = None;
        if fresh {
            fresh = false;
            phase = Phase::Definite;
            entry = next[head];
            let mut scan = next[head];
            while let (_, false, i) = entries[scan] {
                if ops[i].read && ops[i].value == value {
                    choice = Some(Step::Place { op: i, before: value, forced: true });
                    break;
                }
                scan = next[scan];
            }
        }
        while choice.is_none() {
            match phase {
                Phase::Definite => {
                    let (time_us, is_ret, i) = entries[entry];
                    if is_ret {
                        // Definite candidates exhausted; `time_us` bounds
                        // which ambiguous writes are invoked.
                        phase = Phase::Pools { bound_us: time_us, pool: 0 };
                    } else if ops[i].read && ops[i].value != value {
                        entry = next[entry];
                    } else {
                        choice = Some(Step::Place { op: i, before: value, forced: false });
                    }
                }
                Phase::Pools { bound_us, pool } => {
                    let Some(p) = pools.get(pool) else {
                        break;
                    };
                    phase = Phase::Pools { bound_us, pool: pool + 1 };
                    let invoked = p.calls_us.partition_point(|&t| t <= bound_us);
                    let read_waits = || {
                        let mut scan = next[head];
                        while let (_, false, i) = entries[scan] {
                            if ops[i].read && ops[i].value == p.value {
                                return true;
                            }
                            scan = next[scan];
                        }
                        false
                    };
                    if p.value != value && invoked > used[pool] as usize && read_waits() {
                        choice = Some(Step::Use { pool, before: value, bound_us });
                    }
                }
            }
        }

        if let Some(step) = choice {
            let value_after = match step {
                Step::Place { op, .. } => {
                    frontier.place(op);
                    if ops[op].read {
                        value
                    } else {
                        ops[op].value
                    }
                }
                Step::Use { pool, .. } => {
                    used[pool] += 1;
                    pools[pool].value
                }
            };
            frontier.key(value_after, &mut key);
            if memo.remember(&key, &used) {
                if let Err(kind) = meter.hold(memo.bytes) {
                    return (memo.states, Some(SearchEnd::Exhausted(kind)));
                }
                stack.push(step);
                value = value_after;
                if let Step::Place { op, .. } = step {
                    unlink(&mut next, &mut prev, call_pos[op], ret_pos[op], true);
                    definite_left -= 1;
                }
                if stack.len() > best.len() {
                    best.truncate(low_water);
                    best.extend_from_slice(&stack[low_water..]);
                    best_value = value;
                    low_water = stack.len();
                    meter.placed_max = meter.placed_max.max(best.len());
                }
                fresh = true;
                continue;
            }
            match step {
                Step::Place { op, forced, .. } => {
                    frontier.unplace(op);
                    if !forced {
                        entry = next[entry];
                        continue;
                    }
                    // A forced read whose state was seen: this state is as
                    // good as that one, which failed. Backtrack.
                }
                Step::Use { pool, .. } => {
                    used[pool] -= 1;
                    continue; // `phase` already points at the next pool
                }
            }
        }

        // Nothing can go next on this path: undo steps until one has an
        // alternative (a forced read has none), and resume after it.
        loop {
            let Some(step) = stack.pop() else {
                let partial = Partial::from_steps(ops, &pools, &best, best_value);
                return (memo.states, Some(SearchEnd::Decided(Err(partial))));
            };
            low_water = low_water.min(stack.len());
            match step {
                Step::Place { op, before, forced } => {
                    frontier.unplace(op);
                    unlink(&mut next, &mut prev, call_pos[op], ret_pos[op], false);
                    definite_left += 1;
                    value = before;
                    if !forced {
                        phase = Phase::Definite;
                        entry = next[call_pos[op]];
                        break;
                    }
                }
                Step::Use { pool, before, bound_us } => {
                    used[pool] -= 1;
                    value = before;
                    phase = Phase::Pools { bound_us, pool: pool + 1 };
                    break;
                }
            }
        }
    }
}

/// One choice on the search path, with what undoing it needs.
#[derive(Clone, Copy, Debug)]
enum Step {
    /// Linearize a definite operation; `forced` reads have no alternatives.
    Place { op: usize, before: ValueId, forced: bool },
    /// Let one ambiguous write from `pool` take effect.
    Use { pool: usize, before: ValueId, bound_us: u64 },
}

/// Where the scan for the next candidate stands in the current state.
#[derive(Clone, Copy, Debug)]
enum Phase {
    /// Walking the list's call entries.
    Definite,
    /// Trying pools from `pool` on; writes invoked by `bound_us` are usable.
    Pools { bound_us: u64, pool: usize },
}

/// The ambiguous writes of one value.
struct Pool {
    value: ValueId,
    /// Operation indexes and invocation times, by invocation.
    ops: Vec<usize>,
    calls_us: Vec<u64>,
}

impl Pool {
    /// One pool per value with an ambiguous write, in value order.
    fn all(ops: &[KeyOp]) -> Vec<Pool> {
        let mut by_value: BTreeMap<ValueId, Vec<usize>> = BTreeMap::new();
        for (i, op) in ops.iter().enumerate().filter(|(_, op)| op.ambiguous) {
            by_value.entry(op.value).or_default().push(i);
        }
        by_value
            .into_iter()
            .map(|(value, mut members)| {
                members.sort_unstable_by_key(|&i| (ops[i].call_us, ops[i].hist));
                let calls_us = members.iter().map(|&i| ops[i].call_us).collect();
                Pool { value, ops: members, calls_us }
            })
            .collect()
    }
}

impl Partial {
    /// The partial linearization `steps` describe. Which writes of a pool
    /// took effect is not recorded; the earliest invoked stand for them.
    fn from_steps(ops: &[KeyOp], pools: &[Pool], steps: &[Step], value: ValueId) -> Partial {
        let mut placed = vec![false; ops.len()];
        let mut used = vec![0; pools.len()];
        for step in steps {
            match *step {
                Step::Place { op, .. } => placed[op] = true,
                Step::Use { pool, .. } => used[pool] += 1,
            }
        }
        for (pool, &count) in pools.iter().zip(&used) {
            for &op in &pool.ops[..count] {
                placed[op] = true;
            }
        }
        Partial { placed, value, count: steps.len() }
    }
}

/// The exhaustive fallback: a breadth-first sweep over the same states as
/// [`search`], a layer per number of definite operations placed.
///
/// Every path to a given set of definite operations has the same length, so
/// by the time a layer is expanded every way of reaching each of its states
/// is known, and only the usages no other one subsumes are expanded. The
/// depth-first search has no such order: a failing search may reach a state
/// having used some ambiguous writes, exhaust it, and meet it again later
/// having used fewer, once per count. The sweep never does, and holds only
/// two layers in memory, but explores every reachable state even when a
/// linearization is easy to find, which is why it is the fallback.
///
/// Returns the number of states kept, and on failure the deepest partial
/// linearization (the smallest state of the last non-empty layer); or, once
/// the budget ran out, how deep it got.
fn sweep(ops: &[KeyOp], meter: &mut Meter) -> (usize, SearchEnd) {
    let mut states = 0;
    let mut depth = 0;
    match sweep_layers(ops, meter, &mut states, &mut depth) {
        Ok(outcome) => (states, SearchEnd::Decided(outcome)),
        Err(kind) => {
            meter.placed_max = meter.placed_max.max(depth);
            (states, SearchEnd::Exhausted(kind))
        }
    }
}

/// Adds a successor to the next layer, counting it against the budget
/// (`held` is what the current layer holds). True if it was added.
fn admit(
    next_layer: &mut Layer,
    held: usize,
    key: &[u64],
    used: &[u32],
    meter: &mut Meter,
) -> Result<bool, BudgetKind> {
    meter.step()?;
    let added = next_layer.insert(key, used);
    meter.hold(held + next_layer.bytes)?;
    Ok(added)
}

/// The sweep proper; `states` and `depth` (layers completed) are kept up to
/// date for when the budget runs out.
fn sweep_layers(
    ops: &[KeyOp],
    meter: &mut Meter,
    states: &mut usize,
    depth: &mut usize,
) -> Result<Result<(), Partial>, BudgetKind> {
    let mut order: Vec<usize> = (0..ops.len()).filter(|&i| !ops[i].ambiguous).collect();
    order.sort_unstable_by_key(|&i| (ops[i].call_us, i));
    let definite_count = order.len();
    // Earliest return among the ranks from `r` on.
    let mut ret_min_from = vec![u64::MAX; definite_count + 1];
    for r in (0..definite_count).rev() {
        ret_min_from[r] = ret_min_from[r + 1].min(ops[order[r]].ret_us);
    }
    let pools = Pool::all(ops);

    let start = vec![u64::from(MISSING), 0];
    let mut layer = Layer::default();
    layer.insert(&start, &vec![0; pools.len()]);
    *states = 1;
    let mut candidates: Vec<usize> = Vec::new();
    let mut successor: Vec<u64> = Vec::new();
    for layer_index in 0..definite_count {
        *depth = layer_index;
        let held = layer.bytes;
        let mut next_layer = Layer::default();
        for key in &layer.order {
            let value = key[0] as ValueId;
            let end = key[1] as usize;
            let holes = &key[2..];
            // Every hole is a candidate (see `Frontier`); so is each later
            // rank invoked by the first pending return.
            let bound_us =
                holes.iter().map(|&h| ops[order[h as usize]].ret_us).fold(ret_min_from[end], u64::min);
            candidates.clear();
            candidates.extend(holes.iter().map(|&h| h as usize));
            candidates.extend((end..definite_count).take_while(|&r| ops[order[r]].call_us <= bound_us));

            let forced = candidates.iter().find(|&&r| ops[order[r]].read && ops[order[r]].value == value);
            for used in layer.usages(key) {
                if let Some(&r) = forced {
                    place_rank(key, r, value, &mut successor);
                    *states += usize::from(admit(&mut next_layer, held, &successor, used, meter)?);
                    continue;
                }
                for &r in candidates.iter().filter(|&&r| !ops[order[r]].read) {
                    place_rank(key, r, ops[order[r]].value, &mut successor);
                    *states += usize::from(admit(&mut next_layer, held, &successor, used, meter)?);
                }
                // An ambiguous write, fused with the read it is for.
                for (p, pool) in pools.iter().enumerate() {
                    let invoked = pool.calls_us.partition_point(|&t| t <= bound_us);
                    if pool.value == value || invoked <= used[p] as usize {
                        continue;
                    }
                    let Some(&r) =
                        candidates.iter().find(|&&r| ops[order[r]].read && ops[order[r]].value == pool.value)
                    else {
                        continue;
                    };
                    let mut used_after = used.to_vec();
                    used_after[p] += 1;
                    place_rank(key, r, pool.value, &mut successor);
                    *states += usize::from(admit(&mut next_layer, held, &successor, &used_after, meter)?);
                }
            }
        }
        if next_layer.order.is_empty() {
            // Report the smallest state of the deepest layer reached.
            let key = layer.order.iter().min().expect("layers are never empty");
            let used = layer.usages(key).min().expect("kept keys have usages");
            let mut placed = vec![false; ops.len()];
            let (end, holes) = (key[1] as usize, &key[2..]);
            for (r, &i) in order.iter().enumerate().take(end) {
                placed[i] = holes.binary_search(&(r as u64)).is_err();
            }
            for (pool, &count) in pools.iter().zip(used) {
                for &i in &pool.ops[..count as usize] {
                    placed[i] = true;
                }
            }
            let count = placed.iter().filter(|&&p| p).count();
            let partial = Partial { placed, value: key[0] as ValueId, count };
            return Ok(Err(partial));
        }
        layer = next_layer;
    }
    Ok(Ok(()))
}

/// Writes into `out` the key for `key`'s state with rank `r` placed and the
/// register then holding `value`.
fn place_rank(key: &[u64], r: usize, value: ValueId, out: &mut Vec<u64>) {
    let (end, holes) = (key[1] as usize, &key[2..]);
    let r64 = r as u64;
    out.clear();
    out.push(u64::from(value));
    if r >= end {
        out.push(r64 + 1);
        out.extend_from_slice(holes);
        out.extend(end as u64..r64);
    } else {
        out.push(end as u64);
        out.extend(holes.iter().copied().filter(|&h| h != r64));
    }
}

/// One layer of the sweep: its states, with the keys in insertion order so
/// that expanding a layer never iterates the hash map.
#[derive(Default)]
struct Layer {
    memo: Memo,
    order: Vec<Vec<u64>>,
    /// Estimated bytes held: the memo's, and the keys in `order`.
    bytes: usize,
}

impl Layer {
    /// Adds the state unless one in the layer subsumes it; true if added.
    fn insert(&mut self, key: &[u64], used: &[u32]) -> bool {
        let memo_before = self.memo.bytes;
        let noted = self.memo.note(key, used);
        self.bytes += self.memo.bytes - memo_before;
        if noted == Noted::NewKey {
            self.order.push(key.to_vec());
            self.bytes += VEC_BYTES + WORD_BYTES * key.len();
        }
        noted != Noted::Subsumed
    }

    /// The usages kept for `key`: none subsumes another.
    fn usages(&self, key: &[u64]) -> impl Iterator<Item = &[u32]> + '_ {
        self.memo.seen.get(key).into_iter().flat_map(|usages| usages.iter().map(Vec::as_slice))
    }
}

/// The set of placed definite operations, in a form whose size is the
/// concurrency window rather than the history.
///
/// Rank definite operations by invocation, and let `end` be one past the
/// highest placed rank. An unplaced rank below `end` (a hole) is pending
/// across the invocation of a placed operation: a placed operation was a
/// candidate, so everything that returned before it was invoked is placed.
/// Holes are therefore few (about one per concurrent client), and the set is
/// `end` minus the holes. (Keeping the placed ranks above the first unplaced
/// one instead is as small in the common case, but one long-pending operation
/// makes it as wide as everything invoked while it pends.)
struct Frontier {
    /// Rank of each operation (ambiguous ones: unused).
    rank: Vec<usize>,
    placed: Vec<bool>,
    /// One past the highest placed rank.
    end: usize,
    /// Unplaced ranks below `end`, ascending.
    holes: Vec<usize>,
}

impl Frontier {
    fn new(ops: &[KeyOp]) -> Frontier {
        let mut order: Vec<usize> = (0..ops.len()).filter(|&i| !ops[i].ambiguous).collect();
        order.sort_unstable_by_key(|&i| (ops[i].call_us, i));
        let mut rank = vec![usize::MAX; ops.len()];
        for (r, &i) in order.iter().enumerate() {
            rank[i] = r;
        }
        Frontier { rank, placed: vec![false; order.len()], end: 0, holes: Vec::new() }
    }

    fn place(&mut self, op: usize) {
        let r = self.rank[op];
        debug_assert!(!self.placed[r]);
        self.placed[r] = true;
        if r >= self.end {
            // Everything invoked between the old end and `r` is pending.
            self.holes.extend(self.end..r);
            self.end = r + 1;
        } else {
            let at = self.holes.binary_search(&r).expect("unplaced ranks below end are holes");
            self.holes.remove(at);
        }
    }

    fn unplace(&mut self, op: usize) {
        let r = self.rank[op];
        debug_assert!(self.placed[r]);
        self.placed[r] = false;
        if r + 1 == self.end {
            // Pull `end` back past the trailing holes, which stop being holes.
            self.end = r;
            while self.end > 0 && self.holes.last() == Some(&(self.end - 1)) {
                self.holes.pop();
                self.end -= 1;
            }
        } else {
            let at = self.holes.partition_point(|&h| h < r);
            self.holes.insert(at, r);
        }
    }

    /// Writes the memo key for this set and register value into `key`.
    fn key(&self, value: ValueId, key: &mut Vec<u64>) {
        key.clear();
        key.push(u64::from(value));
        key.push(self.end as u64);
        key.extend(self.holes.iter().map(|&r| r as u64));
    }
}

/// Visited states, keyed by (register value, definite set), each holding the
/// minimal ambiguous-write usages (counts per value) seen with it. Only ever
/// looked up, never iterated, so the hash order cannot reach any output.
#[derive(Default)]
struct Memo {
    seen: HashMap<Vec<u64>, Vec<Vec<u32>>, BuildHasherDefault<WordHasher>>,
    states: usize,
    /// Estimated bytes held (see `remember`).
    bytes: usize,
}

/// A `Vec`'s own size (pointer, capacity, length).
const VEC_BYTES: usize = 24;
const WORD_BYTES: usize = 8;
/// What a memo entry costs beyond its key's words: its slot in the hash
/// table (a key and a list of usages, two `Vec`s, at a load factor between
/// 7/16 and 7/8), one control byte, and the allocator's rounding of the key.
const MEMO_ENTRY_OVERHEAD_BYTES: usize = 96;
/// What one kept usage costs beyond its counts: its `Vec` in the entry's
/// list (lists grow by doubling) and the allocator's rounding.
const MEMO_USAGE_OVERHEAD_BYTES: usize = 48;

impl Memo {
    /// Records the state and returns true, unless a visited state subsumes it.
    ///
    /// Keeps `bytes` up to date: a new key costs its words and
    /// `MEMO_ENTRY_OVERHEAD_BYTES`, each kept usage its counts and
    /// `MEMO_USAGE_OVERHEAD_BYTES`. Usages dropped as redundant are not
    /// subtracted (their list keeps its capacity), so the estimate only
    /// grows while the memo lives.
    fn remember(&mut self, key: &[u64], used: &[u32]) -> bool {
        self.note(key, used) != Noted::Subsumed
    }

    /// [`Memo::remember`], saying whether the key itself was new.
    fn note(&mut self, key: &[u64], used: &[u32]) -> Noted {
        let within = |small: &[u32], large: &[u32]| small.iter().zip(large).all(|(s, l)| s <= l);
        let noted = match self.seen.get_mut(key) {
            Some(usages) => {
                if usages.iter().any(|seen| within(seen, used)) {
                    return Noted::Subsumed;
                }
                // Usages this one is within are now redundant: drop them to
                // keep the scan short.
                usages.retain(|seen| !within(used, seen));
                usages.push(used.to_vec());
                Noted::Added
            }
            None => {
                self.seen.insert(key.to_vec(), vec![used.to_vec()]);
                self.bytes += MEMO_ENTRY_OVERHEAD_BYTES + WORD_BYTES * key.len();
                Noted::NewKey
            }
        };
        self.bytes += MEMO_USAGE_OVERHEAD_BYTES + std::mem::size_of_val(used);
        self.states += 1;
        noted
    }
}

/// What [`Memo::note`] did with a state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Noted {
    /// A visited state subsumes it: nothing recorded.
    Subsumed,
    /// Recorded, with a key already present.
    Added,
    /// Recorded under a new key.
    NewKey,
}

/// The memo's hasher: unkeyed, so the memo does the same work on every run,
/// and cheap, since every state hashes a short slice of words. (Multiply and
/// rotate per word as in rustc's FxHash, then a final mix so hashbrown's
/// top-bit tags are well spread.)
#[derive(Default)]
struct WordHasher(u64);

impl Hasher for WordHasher {
    fn write(&mut self, bytes: &[u8]) {
        // Memo keys are `[u64]`, which std hashes as one byte slice; the
        // session check's keys are strings.
        let mut words = bytes.chunks_exact(8);
        for word in &mut words {
            self.write_u64(u64::from_le_bytes(word.try_into().expect("8 bytes")));
        }
        let rest = words.remainder();
        if !rest.is_empty() {
            let mut last = [0u8; 8];
            last[..rest.len()].copy_from_slice(rest);
            self.write_u64(u64::from_le_bytes(last) ^ ((rest.len() as u64) << 56));
        }
    }

    fn write_u64(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x517c_c1b7_2722_0a95);
    }

    fn write_usize(&mut self, word: usize) {
        self.write_u64(word as u64);
    }

    fn finish(&self) -> u64 {
        let mut z = self.0;
        z = (z ^ (z >> 33)).wrapping_mul(0xff51_afd7_ed55_8ccd);
        z ^ (z >> 33)
    }
}

/// Removes (`lift`) or restores an operation's call and return entries.
/// Restoring undoes removals in reverse order, so the entries' own links,
/// left untouched while they were out, are still right (dancing links).
fn unlink(next: &mut [usize], prev: &mut [usize], call: usize, ret: usize, lift: bool) {
    if lift {
        for x in [call, ret] {
            next[prev[x]] = next[x];
            prev[next[x]] = prev[x];
        }
    } else {
        for x in [ret, call] {
            next[prev[x]] = x;
            prev[next[x]] = x;
        }
    }
}

/// How many operations an explanation lists per section before eliding.
const EXPLAIN_OPS_MAX: usize = 8;

/// Builds the account of a failed search from its deepest partial
/// linearization: the operation that blocked it (the earliest-completing one
/// left over), the register value at that point, the writes that could have
/// produced what the blocked operation saw, and the other operations that
/// were still free to go around it.
fn explain(key: &str, history: &[HistOp], ops: &[KeyOp], partial: &Partial) -> LinViolation {
    let stuck = (0..ops.len())
        .filter(|&i| !partial.placed[i] && !ops[i].ambiguous)
        .min_by_key(|&i| (ops[i].ret_us, ops[i].call_us, ops[i].hist))
        .expect("a failed search leaves a definite operation unplaced");
    let stuck_op = &ops[stuck];
    let value_name = |id: ValueId| -> String {
        if id == MISSING {
            return "None".to_owned();
        }
        if id == UNREAD {
            return "a value no read returned".to_owned();
        }
        let any = ops.iter().find(|op| op.value == id).expect("interned values occur");
        show_value(kind_value(&history[any.hist].kind))
    };

    let mut text = format!(
        "the longest linearizable prefix found places {} of {} operations (register then {}); \
         no order of the rest lets this one complete:\n  {}",
        partial.count,
        ops.len(),
        value_name(partial.value),
        show_op(history, stuck_op.hist),
    );

    if stuck_op.read {
        // For each way the read's value could have got there, say why it
        // does not fit when a plain reason exists: a definite write of
        // another value that ran wholly between the candidate and the read.
        let superseded_after = |after_us: Option<u64>| -> Option<usize> {
            ops.iter()
                .filter(|x| !x.read && !x.ambiguous && x.value != stuck_op.value)
                .filter(|x| after_us.is_none_or(|t| x.call_us > t) && x.ret_us < stuck_op.call_us)
                .min_by_key(|x| (x.ret_us, x.hist))
                .map(|x| x.hist)
        };
        let reason = |label: String, after_us: Option<u64>| match superseded_after(after_us) {
            Some(x) => format!("{label}, overwritten before the read began by {}", show_op(history, x)),
            None => label,
        };

        let mut writers: Vec<String> = Vec::new();
        if stuck_op.value == MISSING {
            writers.push(reason("the initial value".to_owned(), None));
        }
        let mut candidates: Vec<(usize, &KeyOp)> =
            ops.iter().enumerate().filter(|(_, op)| !op.read && op.value == stuck_op.value).collect();
        candidates.sort_by_key(|(_, op)| (op.call_us, op.hist));
        for (i, op) in candidates {
            let shown = show_op(history, op.hist);
            let line = if op.call_us > stuck_op.ret_us {
                format!("{shown}, invoked after the read completed")
            } else if op.ambiguous {
                // It may take effect at any time: nothing supersedes it.
                format!("{shown}, outcome unknown")
            } else {
                let placed = if partial.placed[i] { "placed" } else { "unplaced" };
                reason(format!("{shown} ({placed})"), Some(op.ret_us))
            };
            writers.push(line);
        }
        push_section(&mut text, "where the value it returned could come from", &writers);
    }

    // Operations that overlap the stuck one in real time: the only ones the
    // search could order on either side of it.
    let mut window: Vec<(usize, &KeyOp)> = ops
        .iter()
        .enumerate()
        .filter(|&(i, op)| i != stuck && op.call_us <= stuck_op.ret_us && op.ret_us >= stuck_op.call_us)
        .collect();
    window.sort_by_key(|(_, op)| (op.call_us, op.hist));
    let lines: Vec<String> = window
        .iter()
        .map(|&(i, op)| {
            let placed = if partial.placed[i] { "placed" } else { "unplaced" };
            format!("{} ({placed})", show_op(history, op.hist))
        })
        .collect();
    push_section(&mut text, "operations concurrent with it", &lines);

    LinViolation { key: key.to_owned(), op_index: stuck_op.hist, explanation: text }
}

fn push_section(text: &mut String, title: &str, lines: &[String]) {
    use fmt::Write as _;
    if lines.is_empty() {
        let _ = write!(text, "\n{title}: none");
        return;
    }
    let _ = write!(text, "\n{title}:");
    for line in lines.iter().take(EXPLAIN_OPS_MAX) {
        let _ = write!(text, "\n  {line}");
    }
    if lines.len() > EXPLAIN_OPS_MAX {
        let _ = write!(text, "\n  ... and {} more", lines.len() - EXPLAIN_OPS_MAX);
    }
}

fn kind_value(kind: &Kind) -> &Option<String> {
    match kind {
        Kind::Read { value } | Kind::Write { value } => value,
    }
}

fn show_value(value: &Option<String>) -> String {
    match value {
        Some(v) => format!("Some({v:?})"),
        None => "None".to_owned(),
    }
}

/// `client 2 read -> None [150us..160us]`, with `..?` for an unknown outcome.
fn show_op(history: &[HistOp], index: usize) -> String {
    let op = &history[index];
    let completed = op.completed_us.map_or_else(|| "?".to_owned(), |t| format!("{t}us"));
    let what = match &op.kind {
        Kind::Read { value } => format!("read -> {}", show_value(value)),
        Kind::Write { value } => format!("write {}", show_value(value)),
    };
    format!("client {} {what} [{}us..{completed}] (history[{index}])", op.client, op.invoked_us)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn some(v: &str) -> Option<String> {
        Some(v.to_owned())
    }

    fn w(
        client: u64,
        key: &str,
        value: Option<String>,
        invoked_us: u64,
        completed_us: Option<u64>,
    ) -> HistOp {
        HistOp { client, key: key.to_owned(), kind: Kind::Write { value }, invoked_us, completed_us }
    }

    fn r(client: u64, key: &str, value: Option<String>, invoked_us: u64, completed_us: u64) -> HistOp {
        HistOp {
            client,
            key: key.to_owned(),
            kind: Kind::Read { value },
            invoked_us,
            completed_us: Some(completed_us),
        }
    }

    #[test]
    fn empty_history_is_linearizable() {
        assert_eq!(check_linearizable(&[]), LinVerdict::Linearizable(LinStats::default()));
    }

    #[test]
    fn stale_read_after_completed_write_is_rejected() {
        let history = [w(1, "x", some("1"), 0, Some(10)), r(2, "x", None, 20, 30)];
        let violation = check_linearizable(&history).expect_violation();
        assert_eq!(violation.key, "x");
        assert_eq!(violation.op_index, 1);
        assert!(violation.explanation.contains("client 2 read -> None"), "{violation}");
        assert!(violation.explanation.contains("the initial value"), "{violation}");
    }

    #[test]
    fn read_concurrent_with_write_may_see_either_value() {
        for seen in [None, some("1")] {
            let history = [w(1, "x", some("1"), 0, Some(10)), r(2, "x", seen, 5, 30)];
            assert!(check_linearizable(&history).is_linearizable());
        }
    }

    #[test]
    fn ops_touching_at_the_same_microsecond_are_concurrent() {
        let history = [w(1, "x", some("1"), 0, Some(10)), r(2, "x", None, 10, 30)];
        assert!(check_linearizable(&history).is_linearizable());
    }

    #[test]
    fn concurrent_overlapping_ops_needing_backtracking_pass() {
        // w1 and w2 overlap. r1 sees 2, so w2 goes first; r2 then sees 1, so
        // w1 goes after r1. Trying w1 first (invocation order) must backtrack.
        let history = [
            w(1, "x", some("1"), 0, Some(100)),
            w(2, "x", some("2"), 10, Some(110)),
            r(3, "x", some("2"), 20, 30),
            r(3, "x", some("1"), 40, 50),
            r(4, "x", some("1"), 120, 130),
        ];
        let stats = check_linearizable(&history).expect_linearizable();
        assert_eq!(stats.ops_checked, 5);
        assert_eq!(stats.keys_checked, 1);
    }

    #[test]
    fn reads_cannot_flip_back_once_ordered() {
        // As above, but a later read sees 2 again: no order of two writes
        // gives 2, 1, 2.
        let history = [
            w(1, "x", some("1"), 0, Some(100)),
            w(2, "x", some("2"), 10, Some(110)),
            r(3, "x", some("2"), 20, 30),
            r(3, "x", some("1"), 40, 50),
            r(4, "x", some("2"), 120, 130),
        ];
        let violation = check_linearizable(&history).expect_violation();
        assert_eq!(violation.op_index, 4, "{violation}");
    }

    #[test]
    fn ambiguous_write_that_took_effect_is_accepted() {
        let history = [
            w(1, "x", some("1"), 0, None),
            r(2, "x", None, 10, 20),
            // Took effect late, long after its client gave up.
            r(2, "x", some("1"), 500, 510),
            r(3, "x", some("1"), 600, 610),
        ];
        let stats = check_linearizable(&history).expect_linearizable();
        assert_eq!(stats.ambiguous_writes_bounded, 1);
    }

    #[test]
    fn ambiguous_write_that_did_not_take_effect_is_accepted() {
        let history = [w(1, "x", some("1"), 0, None), r(2, "x", None, 10, 20), r(2, "x", None, 500, 510)];
        let stats = check_linearizable(&history).expect_linearizable();
        assert_eq!(stats.ambiguous_writes_dropped, 1);
        assert_eq!(stats.ops_checked, 2);
    }

    #[test]
    fn ambiguous_writes_sharing_a_value_are_searched_not_pruned() {
        // Two ambiguous writes of the same value: neither is bounded; either
        // may explain the read, or both may take effect.
        let history = [
            w(1, "x", some("1"), 0, None),
            w(2, "x", some("1"), 5, None),
            w(3, "x", some("2"), 10, Some(45)),
            r(4, "x", some("1"), 30, 40),
            r(4, "x", some("2"), 50, 60),
            r(4, "x", some("1"), 70, 80),
        ];
        let stats = check_linearizable(&history).expect_linearizable();
        assert_eq!(stats.ambiguous_writes_bounded, 0);
        assert_eq!(stats.ambiguous_writes_dropped, 0);
        // One ambiguous write cannot take effect twice.
        let mut once = history.to_vec();
        once.remove(1);
        assert!(check_linearizable(&once).is_violation());
    }

    #[test]
    fn ambiguous_write_cannot_take_effect_before_its_invocation() {
        let history = [r(2, "x", some("1"), 0, 10), w(1, "x", some("1"), 20, None)];
        let violation = check_linearizable(&history).expect_violation();
        assert_eq!(violation.op_index, 0, "{violation}");
    }

    #[test]
    fn ambiguous_delete_is_handled() {
        let took_effect =
            [w(1, "x", some("1"), 0, Some(10)), w(1, "x", None, 20, None), r(2, "x", None, 30, 40)];
        assert!(check_linearizable(&took_effect).is_linearizable());
        let overwritten = [
            w(1, "x", some("1"), 0, Some(10)),
            w(1, "x", None, 20, None),
            r(2, "x", None, 30, 40),
            w(1, "x", some("2"), 50, Some(60)),
            r(2, "x", None, 70, 80),
        ];
        assert!(check_linearizable(&overwritten).is_violation());
    }

    #[test]
    fn read_of_a_value_never_written_is_rejected() {
        let history = [w(1, "x", some("1"), 0, Some(10)), r(2, "x", some("7"), 20, 30)];
        let violation = check_linearizable(&history).expect_violation();
        assert_eq!(violation.op_index, 1);
        assert!(violation.explanation.contains("no write to this key ever wrote"), "{violation}");
        // A value written to another key does not count.
        let other_key = [w(1, "y", some("7"), 0, Some(10)), r(2, "x", some("7"), 20, 30)];
        assert_eq!(check_linearizable(&other_key).expect_violation().key, "x");
    }

    #[test]
    fn keys_are_independent_and_the_failing_key_is_named() {
        let history = [
            w(1, "a", some("1"), 0, Some(10)),
            w(1, "b", some("1"), 0, Some(10)),
            r(2, "a", some("1"), 20, 30),
            r(2, "b", None, 20, 30),
            // Each key alone is fine for this read: it only sees its own key.
            r(3, "c", None, 20, 30),
        ];
        let violation = check_linearizable(&history).expect_violation();
        assert_eq!(violation.key, "b");
        assert_eq!(violation.op_index, 3);
        assert!(violation.to_string().starts_with("key \"b\" is not linearizable"));
    }

    #[test]
    fn reads_with_unknown_outcome_are_ignored() {
        let history = [
            w(1, "x", some("1"), 0, Some(10)),
            HistOp {
                client: 2,
                key: "x".to_owned(),
                kind: Kind::Read { value: None },
                invoked_us: 20,
                completed_us: None,
            },
        ];
        assert_eq!(check_linearizable(&history).expect_linearizable().ops_checked, 1);
    }

    #[test]
    #[should_panic(expected = "before its invocation")]
    fn completion_before_invocation_is_a_recording_bug() {
        let _ = check_linearizable(&[w(1, "x", None, 10, Some(5))]);
    }

    #[test]
    fn explanation_names_the_stale_read_and_what_overwrote_it() {
        let history = [
            w(1, "x", some("1"), 0, Some(10)),
            w(1, "x", some("2"), 20, Some(30)),
            w(3, "x", some("3"), 35, Some(90)),
            r(2, "x", some("1"), 40, 50),
        ];
        let violation = check_linearizable(&history).expect_violation();
        assert_eq!(violation.op_index, 3);
        let text = &violation.explanation;
        assert!(text.contains("\n  client 2 read -> Some(\"1\") [40us..50us] (history[3])\n"), "{text}");
        assert!(
            text.contains(
                "client 1 write Some(\"1\") [0us..10us] (history[0]) (placed), overwritten before \
                 the read began by client 1 write Some(\"2\") [20us..30us] (history[1])"
            ),
            "{text}"
        );
        assert!(text.contains("client 3 write Some(\"3\") [35us..90us] (history[2]) ("), "{text}");
    }

    // -----------------------------------------------------------------------
    // Generated histories.

    /// splitmix64: a tiny deterministic generator so tests need no RNG crate.
    struct Mix(u64);

    impl Mix {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }

        fn chance_per_mille(&mut self, p: u64) -> bool {
            self.below(1000) < p
        }
    }

    struct GenConfig {
        seed: u64,
        clients: u64,
        keys: u64,
        ops: usize,
        /// Share of writes whose client times out, per mille.
        ambiguous_per_mille: u64,
    }

    /// A linearizable history from a simulated atomic register per key: each
    /// client runs ops back to back with jittered latency; each op takes
    /// effect at a point strictly inside its interval (or, for a timed-out
    /// write, at some later point or never), and reads return what the
    /// register held at their point.
    fn generate(cfg: &GenConfig) -> Vec<HistOp> {
        const OP_LATENCY_US_MAX: u64 = 300;
        const THINK_US_MAX: u64 = 50;
        const TIMEOUT_US: u64 = 1_000;
        const HOT_KEYS: u64 = 4;

        let mut rng = Mix(cfg.seed);
        let mut history = Vec::with_capacity(cfg.ops);
        // (effect time, client, history index) for each op that takes effect.
        let mut effects: Vec<(u64, u64, usize)> = Vec::new();
        let mut clock_us: Vec<u64> = (0..cfg.clients).map(|_| rng.below(100)).collect();
        for n in 0..cfg.ops {
            let client = n as u64 % cfg.clients;
            // Half the traffic goes to a few hot keys, so they see real
            // concurrency.
            let key = if rng.below(2) == 0 { rng.below(HOT_KEYS.min(cfg.keys)) } else { rng.below(cfg.keys) };
            let invoked_us = clock_us[client as usize];
            let effect_us = invoked_us + 1 + rng.below(OP_LATENCY_US_MAX);
            let completed_us = effect_us + 1 + rng.below(OP_LATENCY_US_MAX);
            let read = rng.below(2) == 0;
            let index = history.len();
            let mut op = HistOp {
                client,
                key: format!("k{key}"),
                kind: Kind::Read { value: None },
                invoked_us,
                completed_us: Some(completed_us),
            };
            if read {
                effects.push((effect_us, client, index));
            } else {
                let value = if rng.chance_per_mille(100) { None } else { Some(format!("c{client}n{n}")) };
                op.kind = Kind::Write { value };
                if rng.chance_per_mille(cfg.ambiguous_per_mille) {
                    op.completed_us = None;
                    if rng.below(2) == 0 {
                        // Takes effect, possibly well after the client moved on.
                        effects.push((invoked_us + 1 + rng.below(4 * TIMEOUT_US), client, index));
                    }
                } else {
                    effects.push((effect_us, client, index));
                }
            }
            clock_us[client as usize] =
                op.completed_us.unwrap_or(invoked_us + TIMEOUT_US) + rng.below(THINK_US_MAX);
            history.push(op);
        }

        effects.sort_unstable();
        let mut registers: BTreeMap<String, Option<String>> = BTreeMap::new();
        for (_, _, index) in effects {
            let op = &mut history[index];
            let register = registers.entry(op.key.clone()).or_default();
            match &mut op.kind {
                Kind::Read { value } => value.clone_from(register),
                Kind::Write { value } => register.clone_from(value),
            }
        }
        history
    }

    const LARGE: GenConfig =
        GenConfig { seed: 7, clients: 8, keys: 50, ops: 10_000, ambiguous_per_mille: 30 };

    #[test]
    fn generated_small_histories_pass() {
        for seed in 0..50 {
            let history =
                generate(&GenConfig { seed, clients: 4, keys: 3, ops: 300, ambiguous_per_mille: 100 });
            for strategy in [Strategy::SearchOnly, Strategy::SweepOnly] {
                let verdict = check_linearizable_with(&history, strategy, LinBudget::DEFAULT);
                assert!(verdict.is_linearizable(), "seed {seed}, {strategy:?}: {verdict}");
            }
        }
    }

    #[test]
    fn large_history_passes() {
        let history = generate(&LARGE);
        let ambiguous = history.iter().filter(|op| op.completed_us.is_none()).count();
        let started = std::time::Instant::now();
        let stats = check_linearizable(&history).expect_linearizable();
        let elapsed = started.elapsed();
        // A benchmark figure, not an assertion: run with --release --nocapture.
        println!(
            "check_lin: {} ops ({ambiguous} ambiguous writes), {} keys: {elapsed:?}; {stats:?}",
            history.len(),
            stats.keys_checked
        );
        assert_eq!(stats.keys_checked, 50);
        assert!(ambiguous > 0);
    }

    /// Turns the last read of `key` that can be made stale into one: it
    /// returns the value of a definite write that another definite write
    /// overwrote before the read began. Returns the read's index.
    fn make_stale_read(history: &mut [HistOp], key: &str) -> usize {
        let done = |op: &HistOp| op.completed_us.unwrap_or(u64::MAX);
        let is_write = |op: &HistOp| matches!(op.kind, Kind::Write { .. });
        let target = (0..history.len()).rev().find_map(|ri| {
            let read = &history[ri];
            if is_write(read) || read.key != key {
                return None;
            }
            let w2 = history.iter().rposition(|op| {
                op.key == key && is_write(op) && op.completed_us.is_some() && done(op) < read.invoked_us
            })?;
            let w1 = history.iter().rposition(|op| {
                op.key == key
                    && is_write(op)
                    && kind_value(&op.kind).is_some()
                    && done(op) < history[w2].invoked_us
            })?;
            Some((ri, w1))
        });
        let (ri, w1) = target.expect("a long history has a stale-read candidate");
        // Generated write values are unique, so nothing else explains it.
        let stale = kind_value(&history[w1].kind).clone();
        history[ri].kind = Kind::Read { value: stale };
        ri
    }

    #[test]
    fn large_history_with_one_stale_read_fails() {
        let mut history = generate(&LARGE);
        // A hot key: its failing search is the longest.
        let ri = make_stale_read(&mut history, "k0");
        let started = std::time::Instant::now();
        let violation = check_linearizable(&history).expect_violation();
        // A benchmark figure, not an assertion: the failing search is the
        // exhaustive one.
        println!("check_lin: stale read found in {:?}:\n{violation}", started.elapsed());
        assert_eq!(violation.key, "k0");
        assert_eq!(violation.op_index, ri, "{violation}");
        for strategy in [Strategy::SearchOnly, Strategy::SweepOnly] {
            let violation =
                check_linearizable_with(&history, strategy, LinBudget::DEFAULT).expect_violation();
            assert_eq!((violation.key.as_str(), violation.op_index), ("k0", ri), "{strategy:?}");
        }
    }

    /// The obvious search, with none of the pruning: try every operation no
    /// pending one must precede, and let ambiguous writes be left out.
    fn brute_force(history: &[HistOp]) -> bool {
        fn go(ops: &[&HistOp], placed: &mut Vec<bool>, value: &Option<String>) -> bool {
            let pending: Vec<usize> = (0..ops.len()).filter(|&j| !placed[j]).collect();
            if pending.iter().all(|&j| ops[j].completed_us.is_none()) {
                return true;
            }
            for &i in &pending {
                let blocked =
                    pending.iter().any(|&j| ops[j].completed_us.is_some_and(|done| done < ops[i].invoked_us));
                let after = match &ops[i].kind {
                    Kind::Read { value: seen } if seen != value => continue,
                    Kind::Read { .. } => value.clone(),
                    Kind::Write { value: written } => written.clone(),
                };
                if blocked {
                    continue;
                }
                placed[i] = true;
                let ok = go(ops, placed, &after);
                placed[i] = false;
                if ok {
                    return true;
                }
            }
            false
        }
        let keys: std::collections::BTreeSet<&str> = history.iter().map(|op| op.key.as_str()).collect();
        keys.into_iter().all(|key| {
            let ops: Vec<&HistOp> = history.iter().filter(|op| op.key == key).collect();
            go(&ops, &mut vec![false; ops.len()], &None)
        })
    }

    #[test]
    fn agrees_with_brute_force_on_small_random_histories() {
        // Few values and keys, lots of overlap and ambiguity, so the pruning
        // paths (shared values, ambiguous deletes, forced reads) all fire and
        // a good share of the histories are violations.
        let mut rng = Mix(11);
        let pick = |rng: &mut Mix| match rng.below(3) {
            0 => None,
            1 => some("a"),
            _ => some("b"),
        };
        let (mut pass, mut fail) = (0, 0);
        for case in 0..3000 {
            let len = 1 + rng.below(8) as usize;
            let history: Vec<HistOp> = (0..len)
                .map(|_| {
                    let client = rng.below(3);
                    let key = if rng.below(4) == 0 { "y" } else { "x" };
                    let invoked_us = rng.below(20);
                    let completed_us = invoked_us + rng.below(10);
                    let value = pick(&mut rng);
                    if rng.below(2) == 0 {
                        r(client, key, value, invoked_us, completed_us)
                    } else {
                        let ambiguous = rng.below(3) == 0;
                        w(client, key, value, invoked_us, Some(completed_us).filter(|_| !ambiguous))
                    }
                })
                .collect();
            let expected = brute_force(&history);
            for strategy in [Strategy::Default, Strategy::SearchOnly, Strategy::SweepOnly] {
                let verdict = check_linearizable_with(&history, strategy, LinBudget::DEFAULT);
                assert_eq!(
                    verdict.is_linearizable(),
                    expected,
                    "case {case}, {strategy:?}: {history:#?}\n{verdict:?}"
                );
            }
            if expected {
                pass += 1;
            } else {
                fail += 1;
            }
        }
        assert!(pass > 500 && fail > 500, "{pass} linearizable, {fail} not");
    }

    #[test]
    fn checking_is_deterministic() {
        let mut history =
            generate(&GenConfig { seed: 3, clients: 4, keys: 5, ops: 400, ambiguous_per_mille: 50 });
        let read = history.iter().rposition(|op| matches!(op.kind, Kind::Read { .. })).unwrap();
        history[read].kind = Kind::Read { value: Some("c0n0".to_owned()) };
        let first = check_linearizable(&history);
        assert!(first.is_violation());
        assert_eq!(first, check_linearizable(&history));
        let clean = generate(&GenConfig { seed: 3, clients: 4, keys: 5, ops: 400, ambiguous_per_mille: 50 });
        assert_eq!(check_linearizable(&clean), check_linearizable(&clean));
    }

    /// Figures for heavier shapes than the default suite runs. Run with
    /// `cargo test --release -p kvsim check_lin::tests::figures -- --ignored --nocapture`.
    #[test]
    #[ignore = "benchmark figures, not a check"]
    fn figures() {
        let shapes = [
            ("10k ops, 50 keys, 3% ambiguous", false, GenConfig { ..LARGE }),
            ("10k ops, 50 keys, 30% ambiguous", false, GenConfig { ambiguous_per_mille: 300, ..LARGE }),
            ("10k ops, 50 keys, 32 clients", false, GenConfig { clients: 32, ..LARGE }),
            ("10k ops, 1 key", false, GenConfig { keys: 1, ..LARGE }),
            (
                "10k ops, 1 key, 10% ambiguous",
                false,
                GenConfig { keys: 1, ambiguous_per_mille: 100, ..LARGE },
            ),
            ("100k ops, 500 keys", false, GenConfig { ops: 100_000, keys: 500, ..LARGE }),
            ("10k ops, 50 keys, stale read", true, GenConfig { ..LARGE }),
            ("10k ops, 1 key, stale read", true, GenConfig { keys: 1, ..LARGE }),
            (
                "10k ops, 1 key, 30% ambiguous, stale read",
                true,
                GenConfig { keys: 1, ambiguous_per_mille: 300, ..LARGE },
            ),
            ("10k ops, 1 key, 12 clients, stale read", true, GenConfig { keys: 1, clients: 12, ..LARGE }),
        ];
        for (name, stale, cfg) in shapes {
            let mut history = generate(&cfg);
            if stale {
                make_stale_read(&mut history, "k0");
            }
            for strategy in [Strategy::Default, Strategy::SweepOnly] {
                let started = std::time::Instant::now();
                let verdict = check_linearizable_with(&history, strategy, LinBudget::DEFAULT);
                let elapsed = started.elapsed();
                let summary = match verdict {
                    LinVerdict::Linearizable(stats) => format!(
                        "ok, states max {} total {}, steps max {}, memory max {} KiB, keys swept {}",
                        stats.states_explored_max,
                        stats.states_explored_total,
                        stats.steps_max,
                        stats.memory_bytes_max >> 10,
                        stats.keys_swept
                    ),
                    LinVerdict::Violation(violation) => {
                        format!("violation at history[{}]", violation.op_index)
                    }
                    LinVerdict::Inconclusive(keys) => format!("inconclusive: {}", keys[0]),
                };
                println!("{name:<45} {strategy:<10?} {elapsed:>12.1?}  {summary}");
            }
        }
    }

    // -----------------------------------------------------------------------
    // Session guarantees.

    fn sw(client: u64, key: &str, lsn: u64, invoked_us: u64, completed_us: Option<u64>) -> SessionOp {
        SessionOp {
            client,
            key: key.to_owned(),
            kind: Kind::Write { value: some("v") },
            invoked_us,
            completed_us,
            lsn,
        }
    }

    fn sr(client: u64, key: &str, lsn: u64, invoked_us: u64, completed_us: u64) -> SessionOp {
        SessionOp {
            client,
            key: key.to_owned(),
            kind: Kind::Read { value: some("v") },
            invoked_us,
            completed_us: Some(completed_us),
            lsn,
        }
    }

    /// The writes of `history` as the value checks see them.
    fn writes_of(history: &[SessionOp]) -> Vec<WrittenAt> {
        history
            .iter()
            .filter_map(|op| match &op.kind {
                Kind::Write { value } => Some(WrittenAt {
                    key: op.key.clone(),
                    value: value.clone(),
                    lsn: op.completed_us.map(|_| op.lsn),
                }),
                Kind::Read { .. } => None,
            })
            .collect()
    }

    fn session(history: &[SessionOp]) -> Vec<String> {
        check_session(history, &writes_of(history))
    }

    fn with_value(mut op: SessionOp, value: Option<&str>) -> SessionOp {
        let value = value.map(str::to_owned);
        op.kind = match op.kind {
            Kind::Read { .. } => Kind::Read { value },
            Kind::Write { .. } => Kind::Write { value },
        };
        op
    }

    #[test]
    fn read_of_a_value_older_than_the_clients_own_write_is_detected() {
        // The replica claims lsn 7, past the client's last write at 5, yet
        // answers with the value that write replaced.
        let history = [
            with_value(sw(1, "x", 3, 0, Some(10)), Some("old")),
            with_value(sw(1, "x", 5, 20, Some(30)), Some("new")),
            with_value(sr(1, "x", 7, 40, 50), Some("old")),
        ];
        let violations = session(&history);
        assert_eq!(
            violations,
            ["client 1: read-your-writes violated on key \"x\": read sent at 40us at lsn 7 returned \
              Some(\"old\") (written at lsn 3), older than the client's own write of Some(\"new\") \
              that completed at 30us with lsn 5"],
        );
    }

    #[test]
    fn values_written_later_by_anyone_explain_a_read() {
        let history = [
            with_value(sw(1, "x", 3, 0, Some(10)), Some("a")),
            with_value(sw(2, "x", 6, 0, Some(15)), Some("b")),
            with_value(sw(2, "y", 7, 20, Some(25)), None),
            // Client 1 sees client 2's later write, then its own (lsn 3 is
            // no older than its own last write), then a delete of y.
            with_value(sr(1, "x", 6, 20, 30), Some("b")),
            with_value(sr(1, "y", 8, 40, 50), None),
            // Client 3 is bound by nothing it did not see.
            with_value(sr(3, "x", 8, 40, 50), Some("a")),
        ];
        assert_eq!(session(&history), Vec::<String>::new());
    }

    #[test]
    fn values_with_a_write_of_unknown_lsn_are_not_judged() {
        let history = [
            with_value(sw(1, "x", 3, 0, Some(10)), Some("old")),
            with_value(sw(1, "x", 5, 20, Some(30)), Some("new")),
            // Someone else's timed-out write of the same value: it may have
            // landed after lsn 5.
            with_value(sw(2, "x", 0, 0, None), Some("old")),
            with_value(sr(1, "x", 7, 40, 50), Some("old")),
        ];
        assert_eq!(session(&history), Vec::<String>::new());
    }

    #[test]
    fn a_missing_key_after_the_clients_own_write_is_detected_unless_deleted_later() {
        let set = with_value(sw(1, "x", 5, 0, Some(10)), Some("a"));
        let missing = with_value(sr(1, "x", 9, 20, 30), None);
        let violations = session(&[set.clone(), missing.clone()]);
        assert_eq!(violations.len(), 1, "{violations:?}");
        assert!(violations[0].contains("returned None (missing since the start)"), "{violations:?}");
        let delete = with_value(sw(2, "x", 7, 0, Some(15)), None);
        assert_eq!(session(&[set, delete, missing]), Vec::<String>::new());
    }

    #[test]
    fn a_read_older_than_an_earlier_read_of_the_key_is_detected() {
        let history = [
            with_value(sw(2, "x", 3, 0, Some(5)), Some("a")),
            with_value(sw(2, "x", 6, 6, Some(9)), Some("b")),
            with_value(sr(1, "x", 6, 10, 20), Some("b")),
            with_value(sr(1, "x", 8, 30, 40), Some("a")),
        ];
        let violations = session(&history);
        assert_eq!(violations.len(), 1, "{violations:?}");
        assert!(
            violations[0].starts_with(
                "client 1: monotonic reads violated on key \"x\": read sent at 30us at lsn 8 returned \
                 Some(\"a\") (written at lsn 3), older than Some(\"b\") (written at lsn 6)"
            ),
            "{violations:?}"
        );
        // Pipelined, the two reads are not ordered.
        let mut overlapping = history.to_vec();
        overlapping[3].invoked_us = 15;
        assert_eq!(session(&overlapping), Vec::<String>::new());
    }

    #[test]
    fn clean_session_has_no_violations() {
        let history = [
            sw(1, "x", 5, 0, Some(10)),
            sr(1, "x", 5, 10, 20), // same microsecond as the ack: program order
            sr(1, "y", 7, 30, 40),
            sr(1, "x", 7, 50, 60),
            // Other clients are not bound by client 1's session.
            sr(2, "x", 1, 70, 80),
        ];
        assert_eq!(session(&history), Vec::<String>::new());
    }

    #[test]
    fn read_your_writes_violation_is_detected() {
        let history = [sw(1, "x", 5, 0, Some(10)), sr(1, "x", 4, 20, 30)];
        let violations = session(&history);
        assert_eq!(violations.len(), 1, "{violations:?}");
        assert!(
            violations[0].starts_with("client 1: read-your-writes violated on key \"x\""),
            "{violations:?}"
        );
        assert!(violations[0].contains("lsn 4") && violations[0].contains("lsn 5"), "{violations:?}");
    }

    #[test]
    fn read_your_writes_only_binds_after_the_ack_and_on_the_same_key() {
        let history = [
            sw(1, "x", 5, 0, Some(100)),
            sr(1, "x", 4, 10, 20),    // issued before the write was acknowledged
            sr(1, "y", 3, 110, 120),  // another key (and lsn 3 < 4 is a monotonic-reads issue, see below)
            sw(1, "z", 9, 200, None), // never acknowledged
            sr(1, "z", 4, 1200, 1210),
        ];
        let violations = session(&history);
        assert_eq!(violations.len(), 1, "{violations:?}");
        assert!(violations[0].contains("monotonic reads"), "{violations:?}");
    }

    #[test]
    fn monotonic_reads_violation_is_detected_across_keys() {
        let history = [sr(1, "x", 9, 0, 10), sr(1, "y", 3, 20, 30), sr(1, "y", 9, 40, 50)];
        let violations = session(&history);
        assert_eq!(violations.len(), 1, "{violations:?}");
        assert!(
            violations[0].starts_with("client 1: monotonic reads violated: read of key \"y\""),
            "{violations:?}"
        );
        assert!(violations[0].contains("earlier read of key \"x\""), "{violations:?}");
    }

    #[test]
    fn overlapping_reads_of_one_client_are_not_ordered() {
        // A pipelining client: the second read was issued before the first
        // answered, so they may reflect LSNs in either order.
        let history = [sr(1, "x", 9, 0, 50), sr(1, "y", 3, 20, 30)];
        assert_eq!(session(&history), Vec::<String>::new());
    }

    /// `writes` writes of distinct values and `reads` reads of them, all
    /// overlapping in time on key `k`, then a write and a read of a value it
    /// overwrote: not linearizable, but only an exhaustive search can tell,
    /// and the states it must visit grow as 2^writes. This is the shape that
    /// needed over 12 GB before there was a budget (tens of operations on
    /// one key under long-tailed delays).
    fn pathological(writes: u64, reads: u64) -> Vec<HistOp> {
        let mut history = Vec::new();
        for i in 0..writes {
            history.push(w(i, "k", Some(format!("v{i}")), i, Some(10_000 + i)));
        }
        for j in 0..reads {
            history.push(r(writes + j, "k", Some(format!("v{}", j % writes)), j, 10_000 + j));
        }
        history.push(w(0, "k", some("last"), 20_000, Some(20_001)));
        history.push(r(1, "k", some("v0"), 20_002, 20_003));
        history
    }

    #[test]
    fn pathological_history_runs_out_of_the_default_memory_budget_and_is_inconclusive() {
        let history = pathological(48, 24);
        #[allow(clippy::disallowed_methods)] // a figure for the log, not asserted
        let started = std::time::Instant::now();
        let undecided = check_linearizable(&history).expect_inconclusive();
        println!("pathological: {:?}: {}", started.elapsed(), undecided[0]);
        assert_eq!(undecided.len(), 1);
        let key = &undecided[0];
        assert_eq!((key.key.as_str(), key.ops, key.exhausted), ("k", 74, BudgetKind::Memory), "{key}");
        assert!(key.memory_bytes_peak > LIN_MEMORY_BYTES_MAX && key.steps < LIN_STEPS_MAX, "{key}");
        assert!(key.placed_max < key.ops, "{key}");
        assert!(
            key.to_string().starts_with(
                "key \"k\" is undecided: the search ran out of its memory budget (128 MiB of search states)"
            ),
            "{key}"
        );
    }

    #[test]
    fn pathological_history_runs_out_of_step_budget_and_is_inconclusive() {
        let budget = LinBudget { steps: 100_000, memory_bytes: LIN_MEMORY_BYTES_MAX };
        for strategy in [Strategy::Default, Strategy::SearchOnly, Strategy::SweepOnly] {
            let verdict = check_linearizable_with(&pathological(48, 24), strategy, budget);
            let undecided = verdict.expect_inconclusive();
            assert_eq!(undecided.len(), 1, "{strategy:?}");
            assert_eq!(undecided[0].exhausted, BudgetKind::Steps, "{strategy:?}: {}", undecided[0]);
            assert_eq!(undecided[0].steps, 100_000, "{strategy:?}");
        }
    }

    #[test]
    fn a_search_out_of_memory_gives_way_to_the_sweep() {
        // The depth-first memo keeps every state; the sweep two layers.
        let history =
            generate(&GenConfig { seed: 5, clients: 4, keys: 1, ops: 2_000, ambiguous_per_mille: 0 });
        let roomy = check_linearizable(&history).expect_linearizable();
        assert_eq!(roomy.keys_swept, 0);
        let memory_bytes = 64 << 10;
        assert!(roomy.memory_bytes_max > memory_bytes, "{roomy:?}");
        let tight = LinBudget { memory_bytes, ..LinBudget::DEFAULT };
        let stats = check_linearizable_within(&history, tight).expect_linearizable();
        assert_eq!(stats.keys_swept, 1, "{stats:?}");
        let undecided = check_linearizable_with(&history, Strategy::SearchOnly, tight).expect_inconclusive();
        assert_eq!(undecided[0].exhausted, BudgetKind::Memory);
    }

    #[test]
    fn an_undecided_key_hides_no_violation_elsewhere() {
        let budget = LinBudget { steps: 100_000, memory_bytes: LIN_MEMORY_BYTES_MAX };
        let mut history = pathological(48, 24);
        // Keys on both sides of "k" in key order.
        history.push(w(1, "a", some("1"), 0, Some(10)));
        history.push(r(2, "a", some("1"), 20, 30));
        history.push(w(1, "z", some("1"), 0, Some(10)));
        let clean = history.clone();
        let undecided = check_linearizable_within(&clean, budget).expect_inconclusive();
        assert_eq!(undecided.iter().map(|k| k.key.as_str()).collect::<Vec<_>>(), ["k"]);
        history.push(r(2, "z", None, 20, 30));
        let violation = check_linearizable_within(&history, budget).expect_violation();
        assert_eq!(violation.key, "z");
    }

    /// How the memory estimate compares with what the allocator holds, on
    /// the pathological shape. Linux only (reads the peak resident set).
    /// Run with `cargo test --release -p kvsim check_lin::tests::memory_figures
    /// -- --ignored --nocapture --test-threads 1`.
    #[test]
    #[ignore = "figures, not a check"]
    fn memory_figures() {
        let peak_kib = || -> u64 {
            let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
            let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap_or("VmHWM: 0 kB");
            line.split_whitespace().nth(1).and_then(|n| n.parse().ok()).unwrap_or(0)
        };
        for mib in [64usize, 256, 1024] {
            let before = peak_kib();
            let budget = LinBudget { steps: u64::MAX, memory_bytes: mib << 20 };
            #[allow(clippy::disallowed_methods)] // a figure, not asserted
            let started = std::time::Instant::now();
            let undecided = check_linearizable_within(&pathological(48, 24), budget).expect_inconclusive();
            let after = peak_kib();
            println!(
                "budget {mib} MiB: estimated peak {} MiB, process resident peak {} MiB (was {} MiB), \
                 {} steps, {:?}",
                undecided[0].memory_bytes_peak >> 20,
                after >> 10,
                before >> 10,
                undecided[0].steps,
                started.elapsed()
            );
        }
    }
}
