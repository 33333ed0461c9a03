//! The simulated disk: a replica's write-ahead log as bytes, written with
//! the real record format (`kvstore::wal::encode_record`) and read back with
//! the real decoder, so every simulated crash also tests the encoding.
//!
//! Writes complete one after another; each takes the scenario's write
//! latency (write plus fsync). A crash loses every write not yet complete;
//! with `torn_write_probability` the write in progress leaves a prefix of its
//! bytes behind. `corrupt` flips a byte anywhere in the log, the last record
//! included, which the next recovery must notice.
//!
//! The newest promised epoch is also kept apart from the log (kvnode keeps
//! it in its own small file with two checksummed copies): losing the log to
//! corruption must not make a replica forget what it promised, or it could
//! promise an epoch twice or follow a deposed leader.

use kvstore::wal::{decode_records, encode_record, Tail};
use kvstore::{Epoch, PersistOp, Stored, Time};
use std::collections::VecDeque;

#[derive(Default)]
pub struct SimDisk {
    /// Everything completed (synced): survives a crash.
    durable: Vec<u8>,
    /// Issued, not yet complete: (persist id, encoded bytes, the epoch it
    /// promises, if any).
    inflight: VecDeque<(u64, Vec<u8>, Option<Epoch>)>,
    busy_until: Time,
    /// Bumped by every crash, so completions from before it are ignored.
    pub incarnation: u64,
    /// Set when a corrupt log was discarded, until the replica reports it
    /// has caught up: a restart before then must not trust the partial copy
    /// (kvnode keeps the same fact in a durable marker file).
    pub resyncing: bool,
    /// Set whenever recovery cut rows off the log (torn or damaged tail),
    /// or discarded it, until the replica reports it has caught up: the
    /// replica may lack rows it once confirmed, across restarts too.
    pub missing: bool,
    /// The newest epoch promised, stored apart from the log.
    promised: Epoch,
}

/// What a restarting replica finds on its disk.
pub enum Recovery {
    Clean(Stored),
    /// A torn last write was found and cut off (bytes dropped).
    TornTail(Stored, usize),
    /// Damage a crash cannot explain: the replica must not trust this disk.
    Corrupt {
        offset: usize,
        why: String,
    },
}

impl SimDisk {
    /// Queues a write; returns when it completes.
    pub fn submit(&mut self, id: u64, op: &PersistOp, now: Time, latency_us: u64) -> Time {
        let mut bytes = Vec::new();
        // Replicas never emit an op over the record limit (a compile-time
        // check in kvstore::wal ties the two); an oversized one is a bug.
        encode_record(op, &mut bytes).expect("persist op within the record limit");
        let promise = match op {
            PersistOp::Promise(e) => Some(*e),
            PersistOp::InstallSnapshot(s) => Some(s.promised),
            _ => None,
        };
        self.inflight.push_back((id, bytes, promise));
        let done = self.busy_until.max(now) + latency_us;
        self.busy_until = done;
        done
    }

    /// The oldest write completes. Returns false if it was lost in a crash.
    pub fn complete(&mut self, incarnation: u64, id: u64) -> bool {
        if incarnation != self.incarnation {
            return false;
        }
        let Some((first, bytes, promise)) = self.inflight.pop_front() else { return false };
        debug_assert_eq!(first, id, "disk writes complete in order");
        self.durable.extend_from_slice(&bytes);
        if let Some(e) = promise {
            self.promised = self.promised.max(e);
        }
        true
    }

    /// Power is lost: writes in progress vanish, or (torn) leave `keep` of
    /// the first one's bytes.
    pub fn crash(&mut self, now: Time, torn_keep: Option<f64>) -> Option<usize> {
        self.incarnation += 1;
        self.busy_until = now;
        let first = self.inflight.pop_front();
        self.inflight.clear();
        let (_, bytes, _) = first?;
        let frac = torn_keep?;
        let keep = ((bytes.len() as f64 * frac) as usize).clamp(1, bytes.len().saturating_sub(1).max(1));
        self.durable.extend_from_slice(&bytes[..keep]);
        Some(keep)
    }

    /// Reads the log back, as a restarting replica does; a torn tail is cut
    /// off for good.
    pub fn recover(&mut self) -> Recovery {
        let d = decode_records(&self.durable);
        let mut stored = Stored { promised: self.promised, ..Stored::default() };
        match d.tail {
            Tail::Clean => {
                d.ops.iter().for_each(|op| stored.apply(op));
                Recovery::Clean(stored)
            }
            Tail::Torn { .. } => {
                d.ops.iter().for_each(|op| stored.apply(op));
                let dropped = self.durable.len() - d.valid_bytes;
                self.durable.truncate(d.valid_bytes);
                // A damaged last record looks just like a torn one, and it
                // may hold rows this replica confirmed.
                self.missing = true;
                Recovery::TornTail(stored, dropped)
            }
            Tail::Corrupt { fault, .. } => {
                Recovery::Corrupt { offset: d.valid_bytes, why: fault.to_string() }
            }
        }
    }

    /// The replica re-syncs from scratch: its old log is discarded.
    pub fn wipe(&mut self) {
        self.durable.clear();
        self.inflight.clear();
        self.incarnation += 1;
        self.resyncing = true;
        self.missing = true;
    }

    /// The epoch promised, as stored apart from the log.
    pub fn promised(&self) -> Epoch {
        self.promised
    }

    /// Flips one byte anywhere in the log, the last record included (there
    /// it looks like a torn write). Returns the offset.
    pub fn corrupt(&mut self, pick: f64) -> Option<usize> {
        if self.durable.is_empty() {
            return None;
        }
        let at = ((pick * self.durable.len() as f64) as usize).min(self.durable.len() - 1);
        self.durable[at] ^= 0x5a;
        Some(at)
    }

    /// What the disk holds now, read without changing it (for checkers).
    pub fn stored(&self) -> Stored {
        let mut stored = Stored { promised: self.promised, ..Stored::default() };
        decode_records(&self.durable).ops.iter().for_each(|op| stored.apply(op));
        stored
    }

    pub fn durable_bytes(&self) -> usize {
        self.durable.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvstore::{ClientId, Epoch, Lsn, RequestId, Row, RowBody};

    fn row(lsn: u64) -> PersistOp {
        PersistOp::Append(vec![Row {
            epoch: Epoch(1),
            lsn: Lsn(lsn),
            body: RowBody::Put {
                key: format!("k{lsn}"),
                value: Some("v".repeat(20)),
                req: RequestId { client: ClientId(1), seq: lsn },
            },
        }])
    }

    #[test]
    fn crash_keeps_completed_writes_and_loses_the_rest() {
        let mut d = SimDisk::default();
        for i in 1..=3 {
            d.submit(i, &row(i), Time(0), 10);
        }
        assert!(d.complete(0, 1));
        assert!(d.complete(0, 2));
        d.crash(Time(25), None);
        assert!(!d.complete(0, 3), "a write from before the crash must not land");
        let Recovery::Clean(s) = d.recover() else { panic!("expected a clean log") };
        assert_eq!(s.rows.len(), 2);
    }

    #[test]
    fn torn_write_is_cut_off_and_earlier_rows_survive() {
        let mut d = SimDisk::default();
        d.submit(1, &row(1), Time(0), 10);
        d.complete(0, 1);
        d.submit(2, &row(2), Time(0), 10);
        assert!(d.crash(Time(15), Some(0.5)).is_some());
        let Recovery::TornTail(s, dropped) = d.recover() else { panic!("expected a torn tail") };
        assert!(dropped > 0);
        assert_eq!(s.rows.len(), 1);
        // Cut for good: a second recovery finds a clean log.
        assert!(matches!(d.recover(), Recovery::Clean(_)));
    }

    #[test]
    fn corruption_in_the_middle_is_not_mistaken_for_a_torn_write() {
        let mut d = SimDisk::default();
        for i in 1..=10 {
            d.submit(i, &row(i), Time(0), 10);
            d.complete(0, i);
        }
        d.corrupt(0.3).expect("log is long enough");
        assert!(matches!(d.recover(), Recovery::Corrupt { .. }));
    }
}
