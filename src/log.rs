//! A replica's log in memory: rows after a compaction point (`base`).
//!
//! Rows at or before `base` have been folded into the applied state (and, on
//! disk, into a snapshot); they are committed, so they match every leader's
//! log by construction.

use crate::types::{Epoch, LogPos, Lsn, Row};

#[derive(Clone, Debug, Default)]
pub struct Log {
    base: LogPos,
    rows: Vec<Row>,
}

impl Log {
    pub fn new(base: LogPos, rows: Vec<Row>) -> Log {
        debug_assert!(rows.first().is_none_or(|r| r.lsn == base.lsn.next()), "rows follow the base");
        Log { base, rows }
    }

    /// The last position compacted away (`0@0` when nothing was).
    pub fn base(&self) -> LogPos {
        self.base
    }

    pub fn last(&self) -> LogPos {
        self.rows.last().map(Row::pos).unwrap_or(self.base)
    }

    /// The rows held, after `base`.
    pub fn rows(&self) -> &[Row] {
        &self.rows
    }

    fn index(&self, lsn: Lsn) -> Option<usize> {
        (lsn > self.base.lsn).then(|| (lsn.0 - self.base.lsn.0 - 1) as usize)
    }

    pub fn get(&self, lsn: Lsn) -> Option<&Row> {
        self.index(lsn).and_then(|i| self.rows.get(i))
    }

    /// The epoch of the row at `lsn`; `None` past the end. Compacted rows are
    /// committed and so match any leader: they report `Compacted`.
    pub fn epoch_at(&self, lsn: Lsn) -> At {
        if lsn == self.base.lsn {
            return At::Epoch(self.base.epoch);
        }
        if lsn < self.base.lsn {
            return At::Compacted;
        }
        match self.get(lsn) {
            Some(r) => At::Epoch(r.epoch),
            None => At::Missing,
        }
    }

    /// Whether our log holds the row at `pos` (or a compacted one there).
    pub fn matches(&self, pos: LogPos) -> bool {
        match self.epoch_at(pos.lsn) {
            At::Epoch(e) => e == pos.epoch,
            At::Compacted => true,
            At::Missing => false,
        }
    }

    pub fn push(&mut self, row: Row) {
        debug_assert_eq!(row.lsn, self.last().lsn.next());
        self.rows.push(row);
    }

    /// Rows with LSN in `from..=to` that are held (empty if compacted).
    pub fn range(&self, from: Lsn, to: Lsn) -> &[Row] {
        match (self.index(from), self.index(to)) {
            (Some(a), Some(b)) if a <= b && b < self.rows.len() => &self.rows[a..=b],
            _ => &[],
        }
    }

    /// Drops rows after `keep` (never below `base`); returns how many.
    pub fn truncate_after(&mut self, keep: Lsn) -> u64 {
        let keep = keep.max(self.base.lsn);
        let n = (keep.0 - self.base.lsn.0) as usize;
        let dropped = self.rows.len().saturating_sub(n) as u64;
        self.rows.truncate(n);
        dropped
    }

    /// Forgets rows up to `upto` (which must be held).
    pub fn compact(&mut self, upto: Lsn) {
        let Some(row) = self.get(upto) else { return };
        let base = row.pos();
        let n = (upto.0 - self.base.lsn.0) as usize;
        self.rows.drain(..n);
        self.base = base;
    }

    /// Starts over from a snapshot: no rows, `base` at its last position.
    pub fn reset(&mut self, base: LogPos) {
        self.rows.clear();
        self.base = base;
    }

    pub fn epoch_of(&self, lsn: Lsn) -> Option<Epoch> {
        match self.epoch_at(lsn) {
            At::Epoch(e) => Some(e),
            _ => None,
        }
    }
}

/// What is at a position in the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum At {
    Epoch(Epoch),
    Compacted,
    Missing,
}
