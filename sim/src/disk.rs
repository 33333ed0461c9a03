//! The simulated disk: a replica's write-ahead log as bytes, in the real
//! record format (`kvstore::wal::encode_record`) and read back with the real
//! decoder, so every simulated crash also tests the encoding.
//!
//! Writes complete one after another; each takes the scenario's write
//! latency (write plus fsync). A crash loses every write not yet complete;
//! with `torn_write_probability` the write in progress leaves a prefix of its
//! bytes behind. `corrupt` flips a byte anywhere in the log, the last record
//! included, which the next recovery must notice.
//!
//! Rows, by far the most frequent record, are encoded by [`encode_append`],
//! which writes the very bytes postcard writes for `PersistOp::Append` (a
//! test compares the two on every shape of row, and debug builds compare
//! every record a run writes) without its per-byte writer; every other
//! record goes through `encode_record` itself. Records in flight wait in
//! the same buffer, after the durable bytes, in the order they complete.
//!
//! The newest promised epoch is also kept apart from the log (kvnode keeps
//! it in its own small file with two checksummed copies): losing the log to
//! corruption must not make a replica forget what it promised, or it could
//! promise an epoch twice or follow a deposed leader.

use kvstore::wal::{decode_records, encode_record, Tail, RECORD_HEADER_BYTES};
use kvstore::{Epoch, PersistOp, Row, RowBody, Stored, Time};
use std::collections::VecDeque;

#[derive(Default)]
pub struct SimDisk {
    /// `bytes[..durable]` is everything completed (synced): it survives a
    /// crash. The rest is the records in flight, in order.
    bytes: Vec<u8>,
    durable: usize,
    /// Issued, not yet complete: (persist id, encoded length, the epoch it
    /// promises, if any).
    inflight: VecDeque<(u64, usize, Option<Epoch>)>,
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

/// Appends one record for `op` to `buf`, byte for byte what
/// `encode_record` appends; returns its length.
pub fn encode(op: &PersistOp, buf: &mut Vec<u8>) -> usize {
    let len = match op {
        PersistOp::Append(rows) => encode_append(rows, buf),
        // Replicas never emit an op over the record limit (a compile-time
        // check in kvstore::wal ties the two); an oversized one is a bug.
        _ => encode_record(op, buf).expect("persist op within the record limit"),
    };
    #[cfg(debug_assertions)]
    {
        let mut real = Vec::new();
        encode_record(op, &mut real).expect("persist op within the record limit");
        debug_assert!(buf[buf.len() - len..] == real[..], "the fast encoding is the real one");
    }
    len
}

/// postcard's unsigned varint (LEB128), as it writes every integer wider
/// than a byte, enum variant indexes and lengths.
fn varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push(v as u8 | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

fn string(buf: &mut Vec<u8>, s: &str) {
    varint(buf, s.len() as u64);
    buf.extend_from_slice(s.as_bytes());
}

/// `PersistOp::Append(rows)` framed as a record: the postcard encoding of
/// the variant (index 1), the row count, and each row's fields in
/// declaration order (`Row { epoch, lsn, body }`; `RowBody::Noop` is 0,
/// `Put { key, value, req: RequestId { client, seq } }` is 1; an `Option`
/// is a 0 or 1 byte), under the length and CRC32C header.
fn encode_append(rows: &[Row], buf: &mut Vec<u8>) -> usize {
    let start = buf.len();
    buf.extend_from_slice(&[0; RECORD_HEADER_BYTES]);
    varint(buf, 1);
    varint(buf, rows.len() as u64);
    for row in rows {
        varint(buf, row.epoch.0);
        varint(buf, row.lsn.0);
        match &row.body {
            RowBody::Noop => varint(buf, 0),
            RowBody::Put { key, value, req } => {
                varint(buf, 1);
                string(buf, key);
                match value {
                    None => buf.push(0),
                    Some(v) => {
                        buf.push(1);
                        string(buf, v);
                    }
                }
                varint(buf, req.client.0);
                varint(buf, req.seq);
            }
        }
    }
    let payload = &buf[start + RECORD_HEADER_BYTES..];
    let (len, crc) = (payload.len() as u32, crc32c::crc32c(payload));
    buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    buf.len() - start
}

impl SimDisk {
    /// Queues a write; returns when it completes.
    pub fn submit(&mut self, id: u64, op: &PersistOp, now: Time, latency_us: u64) -> Time {
        let len = encode(op, &mut self.bytes);
        let promise = match op {
            PersistOp::Promise(e) => Some(*e),
            PersistOp::InstallSnapshot(s) => Some(s.promised),
            _ => None,
        };
        self.inflight.push_back((id, len, promise));
        let done = self.busy_until.max(now) + latency_us;
        self.busy_until = done;
        done
    }

    /// The oldest write completes. Returns false if it was lost in a crash.
    pub fn complete(&mut self, incarnation: u64, id: u64) -> bool {
        if incarnation != self.incarnation {
            return false;
        }
        let Some((first, len, promise)) = self.inflight.pop_front() else { return false };
        debug_assert_eq!(first, id, "disk writes complete in order");
        self.durable += len;
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
        let kept = match (first, torn_keep) {
            (Some((_, len, _)), Some(frac)) => {
                Some(((len as f64 * frac) as usize).clamp(1, len.saturating_sub(1).max(1)))
            }
            _ => None,
        };
        // The first write in flight starts where the durable bytes end.
        self.durable += kept.unwrap_or(0);
        self.bytes.truncate(self.durable);
        kept
    }

    /// Reads the log back, as a restarting replica does; a torn tail is cut
    /// off for good.
    pub fn recover(&mut self) -> Recovery {
        let d = decode_records(&self.bytes[..self.durable]);
        let mut stored = Stored { promised: self.promised, ..Stored::default() };
        match d.tail {
            Tail::Clean => {
                d.ops.iter().for_each(|op| stored.apply(op));
                Recovery::Clean(stored)
            }
            Tail::Torn { .. } => {
                d.ops.iter().for_each(|op| stored.apply(op));
                let dropped = self.durable - d.valid_bytes;
                self.bytes.drain(d.valid_bytes..self.durable);
                self.durable = d.valid_bytes;
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
        self.bytes.clear();
        self.durable = 0;
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
        if self.durable == 0 {
            return None;
        }
        let at = ((pick * self.durable as f64) as usize).min(self.durable - 1);
        self.bytes[at] ^= 0x5a;
        Some(at)
    }

    /// What the disk holds now, read without changing it (for checkers).
    pub fn stored(&self) -> Stored {
        let mut stored = Stored { promised: self.promised, ..Stored::default() };
        decode_records(&self.bytes[..self.durable]).ops.iter().for_each(|op| stored.apply(op));
        stored
    }

    pub fn durable_bytes(&self) -> usize {
        self.durable
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

    /// Every shape of row the fast encoder meets, against the real codec.
    #[test]
    fn append_encoding_is_the_real_codecs() {
        let mut rows = vec![Row { epoch: Epoch(0), lsn: Lsn(0), body: RowBody::Noop }];
        let n = [0u64, 1, 127, 128, 16_383, 16_384, u32::MAX as u64, u64::MAX - 1, u64::MAX];
        for (i, &x) in n.iter().enumerate() {
            let y = n[(i + 3) % n.len()];
            rows.push(Row {
                epoch: Epoch(x),
                lsn: Lsn(y),
                body: RowBody::Put {
                    key: "k".repeat(i * 40 + 1),
                    value: (i % 3 != 0).then(|| "\u{e9}v".repeat(i * 50)),
                    req: RequestId { client: ClientId(y), seq: x },
                },
            });
            rows.push(Row { epoch: Epoch(y), lsn: Lsn(x), body: RowBody::Noop });
        }
        for n in [0, 1, 2, 5, rows.len()] {
            for rows in rows.windows(n.max(1)).map(|w| w[..n].to_vec()) {
                let op = PersistOp::Append(rows);
                let (mut real, mut fast) = (vec![7u8], vec![7u8]);
                let real_len = encode_record(&op, &mut real).expect("encodes");
                assert_eq!(
                    encode_append(
                        match &op {
                            PersistOp::Append(r) => r,
                            _ => unreachable!(),
                        },
                        &mut fast
                    ),
                    real_len
                );
                assert_eq!(fast, real);
            }
        }
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
