//! Durable storage for the real runtime: a write-ahead log of
//! [`PersistOp`]s in segment files, plus snapshots that let old segments go.
//!
//! This module owns every file under one data directory and nothing else. It
//! knows nothing about sockets, peers or clocks; the runtime decides when to
//! write, when to fsync and when to snapshot. The record codec
//! ([`encode_record`], [`decode_records`]) is pure and is shared with the
//! simulator's disk.
//!
//! # Directory layout
//!
//! ```text
//! <dir>/wal-<first_seq:020>.kvlog      log segments, oldest first
//! <dir>/snap-<replay_from:020>.kvsnap  the snapshot (normally one)
//! <dir>/snap-<replay_from:020>.kvsnap.tmp   a snapshot being written
//! ```
//!
//! Every record has a sequence number (`seq`), counted from 0 over the life
//! of the directory; a segment's name and header carry the seq of its first
//! record and the next segment starts where it ends. Any other file name
//! makes [`Wal::open`] refuse the directory, untouched. An open `Wal` holds
//! an exclusive `flock` on the directory, so two processes cannot share one.
//!
//! # Byte layout (format version 1, all integers little-endian)
//!
//! Segment file: a 32-byte header, then records back to back.
//!
//! ```text
//! offset size  field
//!      0    8  magic "KVWAL\0\0\0"
//!      8    4  format version (u32) = 1
//!     12    4  reserved, zero
//!     16    8  first_seq (u64): sequence number of the first record
//!     24    4  crc32c (Castagnoli) of bytes 0..24
//!     28    4  reserved, zero
//! ```
//!
//! Record:
//!
//! ```text
//!      0    4  len (u32): payload bytes, 1..=MAX_RECORD_BYTES (32 MiB)
//!      4    4  crc32c of the payload
//!      8  len  payload: postcard encoding of one PersistOp
//! ```
//!
//! Snapshot file: a 40-byte header, then one payload.
//!
//! ```text
//!      0    8  magic "KVSNAP\0\0"
//!      8    4  format version (u32) = 1
//!     12    4  reserved, zero
//!     16    8  replay_from_seq (u64): records from here on are replayed
//!     24    8  payload_bytes (u64)
//!     32    4  crc32c of the payload
//!     36    4  crc32c of bytes 0..36
//!     40    -  payload: postcard encoding of Snapshot
//!              { promised, last: LogPos, kv: map, sessions: map }
//! ```
//!
//! The first 12 bytes of both headers (magic, version) will never change
//! meaning, so any future version can be recognised and refused.
//!
//! # Recovery
//!
//! [`Wal::open`] loads the newest valid snapshot, then replays every record
//! with `seq >= replay_from_seq` on top of it. A bad record at the very end
//! of the last segment that no valid record follows is a torn write: it is
//! dropped and the file truncated there. Anything else wrong (a bad record
//! with a good one after it, a damaged sealed segment, a missing segment) is
//! [`WalError::Corrupt`]: the replica must not serve from this directory and
//! should be re-synced from its peers.
//!
//! A crash can cut only the last write short, but recovery cannot tell
//! that from a damaged, fsynced last record or a segment cut short: all
//! three are a bad tail with nothing valid after it. [`Wal::open_checked`]
//! lets a runtime record durably that rows are about to be cut before the
//! cut is made, so the replica can start as one that may lack rows it
//! confirmed.
//!
//! # The promise file
//!
//! [`PromiseFile`] keeps the newest promised epoch outside the log
//! directory (two checksummed copies, updated alternately in place; layout
//! in `src/wal/promise.rs`), so it survives the log being set aside as
//! corrupt. [`Wal::salvage_promised`] reads what it can of a log already
//! judged corrupt, for data directories from before promise files.
//!
//! # Group commit
//!
//! [`Wal::append`] only writes; [`Wal::sync`] makes everything written so far
//! durable with one `fdatasync`. A runtime gathers the `Persist` effects of
//! many requests, appends them in one call, syncs once, then reports the
//! highest persist id with `Replica::on_persisted` — which counts every
//! earlier id as done too. [`GroupCommitter`] packages that pattern.
//!
//! # Snapshots and compaction
//!
//! [`Wal::snapshot`] writes the applied state at some LSN `S` (key-value
//! map, at-most-once sessions table, promised epoch). Rows at or before `S`
//! are committed and never truncated, so the log before them is only needed
//! for rows after `S`: the WAL keeps a small index of which segment wrote the
//! current row `S + 1`, and records from that segment's start on are
//! replayed after the snapshot. Segments wholly before that are deleted once
//! the snapshot is durable (temp file, fsync, rename, directory fsync).
//! Replay rules for rows at or below `S` ("already in the snapshot") are in
//! [`Recovered`].

mod codec;
mod promise;

pub use codec::{
    check_magic_and_version, decode_records, decode_segment_header, decode_snapshot_header, encode_record,
    encode_segment_header, encode_snapshot_header, DecodeResult, EncodeError, HeaderFault, RecordFault,
    SnapshotHeader, Tail, FORMAT_VERSION, MAX_RECORD_BYTES, RECORD_HEADER_BYTES, SEGMENT_HEADER_BYTES,
    SEGMENT_MAGIC, SNAPSHOT_HEADER_BYTES, SNAPSHOT_MAGIC, TAIL_SCAN_CRC_BYTES_MAX,
};

pub use promise::{
    decode_slot, encode_file, encode_slot, PromiseFile, PromiseLoad, SlotFault, PROMISE_FILE_BYTES,
    PROMISE_FORMAT_VERSION, PROMISE_MAGIC, PROMISE_SLOT1_OFFSET, PROMISE_SLOT_BYTES,
};

use crate::machine::{PersistOp, Stored};
use crate::types::{ClientId, Epoch, LogPos, Lsn, Row};
use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Default size at which a segment is sealed and a new one started.
pub const SEGMENT_BYTES_DEFAULT: u64 = 64 * 1024 * 1024;
/// Smallest allowed segment size (tests use it to force rollovers).
pub const SEGMENT_BYTES_MIN: u64 = 4 * 1024;
/// Largest allowed segment size: recovery reads a whole segment into memory.
pub const SEGMENT_BYTES_MAX: u64 = 1024 * 1024 * 1024;
/// Largest segment file recovery will read: a segment may pass its size by
/// one record.
const SEGMENT_FILE_BYTES_MAX: u64 = SEGMENT_BYTES_MAX + (RECORD_HEADER_BYTES + MAX_RECORD_BYTES) as u64;
/// Largest snapshot file recovery will read into memory.
pub const SNAPSHOT_FILE_BYTES_MAX: u64 = 8 * 1024 * 1024 * 1024;
/// Directory entries [`Wal::open`] will look at before giving up.
pub const DIR_ENTRIES_MAX: usize = 100_000;
/// The encode buffer is dropped after a batch that grew it past this.
const SCRATCH_BYTES_KEEP_MAX: usize = 4 * 1024 * 1024;

/// Tunables for a [`Wal`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WalConfig {
    /// A segment is sealed before a record would take it past this size
    /// (unless it holds no record yet: one record always fits).
    pub segment_bytes_max: u64,
}

impl Default for WalConfig {
    fn default() -> WalConfig {
        WalConfig { segment_bytes_max: SEGMENT_BYTES_DEFAULT }
    }
}

impl WalConfig {
    fn validate(&self) -> Result<(), WalError> {
        if !(SEGMENT_BYTES_MIN..=SEGMENT_BYTES_MAX).contains(&self.segment_bytes_max) {
            return Err(WalError::Config(format!(
                "segment_bytes_max {} outside {SEGMENT_BYTES_MIN}..={SEGMENT_BYTES_MAX}",
                self.segment_bytes_max
            )));
        }
        Ok(())
    }
}

pub use crate::machine::Snapshot;

/// A borrowed [`Snapshot`] for writing, so taking one needs no copy of the
/// map. Field order matches `Snapshot`: postcard encodes both the same way.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct SnapshotRef<'a> {
    pub promised: Epoch,
    pub last: LogPos,
    pub kv: &'a BTreeMap<String, String>,
    pub sessions: &'a BTreeMap<ClientId, (u64, Lsn)>,
}

impl Snapshot {
    pub fn as_ref(&self) -> SnapshotRef<'_> {
        SnapshotRef { promised: self.promised, last: self.last, kv: &self.kv, sessions: &self.sessions }
    }
}

/// What recovery rebuilt: the snapshot (if any) and the log after it.
///
/// Replay starts from `(snapshot.last, no rows)` and follows
/// [`Stored::apply`], with one addition for rows the snapshot already holds:
/// an `Append` of a row at or before `snapshot.last` empties the tail (it
/// would have truncated everything after itself) and is otherwise skipped,
/// and a `TruncateAfter` at or before `snapshot.last` empties the tail. With
/// no snapshot this is exactly `Stored::apply` from an empty `Stored`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    pub snapshot: Option<Snapshot>,
    /// The newest promise: the snapshot's or any replayed `Promise`.
    pub promised: Epoch,
    /// Rows after `snapshot.last` (from LSN 1 without a snapshot), contiguous.
    pub rows: Vec<Row>,
}

impl Recovered {
    /// The last row position: the last tail row's, else the snapshot's.
    pub fn last(&self) -> LogPos {
        match (self.rows.last(), &self.snapshot) {
            (Some(row), _) => row.pos(),
            (None, Some(s)) => s.last,
            (None, None) => LogPos::default(),
        }
    }

    /// The [`Stored`] that `Replica::recover` takes.
    pub fn into_stored(self) -> Stored {
        Stored { promised: self.promised, snapshot: self.snapshot, rows: self.rows }
    }
}

/// What [`Wal::open`] found and did, for logs and operators.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// The directory had no log yet (it may have been created).
    pub fresh: bool,
    /// The snapshot loaded, and the last row it includes.
    pub snapshot_file: Option<PathBuf>,
    pub snapshot_last: Option<LogPos>,
    /// Newer snapshots that failed to load, and why; left in place.
    pub snapshots_skipped: Vec<(PathBuf, String)>,
    pub segments_replayed: usize,
    pub records_replayed: u64,
    /// A torn write discarded at the end of the last segment.
    pub torn_tail: Option<TornTail>,
    /// Files deleted: unfinished snapshots, segments and snapshots that a
    /// newer snapshot had already covered.
    pub removed: Vec<PathBuf>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TornTail {
    pub file: PathBuf,
    /// Where the file was truncated.
    pub offset: u64,
    pub bytes_discarded: u64,
    pub fault: String,
}

#[derive(Debug)]
pub enum WalError {
    Io {
        path: PathBuf,
        source: io::Error,
    },
    /// Another `Wal` (in this or another process) has the directory open.
    Locked {
        dir: PathBuf,
    },
    /// A file (or the directory itself) that is not ours; nothing was changed.
    Foreign {
        path: PathBuf,
        why: String,
    },
    /// Written by a newer format version; nothing was changed.
    NewerVersion {
        file: PathBuf,
        found: u32,
        supported: u32,
    },
    /// Damage a crash cannot explain. Do not serve from this directory.
    Corrupt {
        file: PathBuf,
        offset: u64,
        why: String,
    },
    Config(String),
    /// A snapshot request that would lose data (e.g. an older position than
    /// the last snapshot).
    InvalidSnapshot(String),
    /// An earlier write or fsync failed; after that nothing is known about
    /// what reached the disk, so the `Wal` refuses everything until reopened.
    Poisoned,
    /// Neither copy in a promise file is valid ([`PromiseFile`]): the newest
    /// promised epoch is unknown, so the replica must not start. Nothing
    /// was changed.
    PromiseLost {
        file: PathBuf,
        why: String,
    },
}

impl fmt::Display for WalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WalError::Io { path, source } => write!(f, "{}: {source}", path.display()),
            WalError::Locked { dir } => {
                write!(f, "{}: in use by another replica (this process or another one holds its lock); stop that one first", dir.display())
            }
            WalError::Foreign { path, why } => {
                write!(f, "{}: {why}; refusing to use this directory (nothing was changed)", path.display())
            }
            WalError::NewerVersion { file, found, supported } => write!(
                f,
                "{}: format version {found} is newer than this build supports ({supported}); \
                 nothing was changed",
                file.display()
            ),
            WalError::Corrupt { file, offset, why } => {
                write!(f, "{}: corrupt at byte {offset}: {why}", file.display())
            }
            WalError::Config(why) => write!(f, "bad WAL config: {why}"),
            WalError::InvalidSnapshot(why) => write!(f, "snapshot refused: {why}"),
            WalError::Poisoned => {
                f.write_str("WAL unusable after an earlier write or fsync failure; reopen it")
            }
            WalError::PromiseLost { file, why } => write!(
                f,
                "{}: both copies of the newest promised epoch are damaged ({why}); refusing to start, \
                 since a replica that forgets a promise could promise an epoch twice. Nothing was \
                 changed. Restore the file from a backup; or, accepting that risk, move it away and the \
                 replica falls back to the epoch its log records",
                file.display()
            ),
        }
    }
}

impl std::error::Error for WalError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            WalError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> WalError + '_ {
    move |source| WalError::Io { path: path.to_path_buf(), source }
}

fn poisoned_io() -> io::Error {
    io::Error::other(WalError::Poisoned.to_string())
}

/// What [`Wal::snapshot`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotReport {
    pub file: PathBuf,
    pub file_bytes: u64,
    pub replay_from_seq: u64,
    /// Segments and older snapshots deleted.
    pub removed: Vec<PathBuf>,
}

/// The write-ahead log over one data directory. See the module docs.
pub struct Wal {
    dir: PathBuf,
    /// Held open for the directory's `flock` and for directory fsyncs.
    dir_file: File,
    config: WalConfig,
    current: Segment,
    /// Older segments, oldest first. Every byte in them is durable.
    sealed: VecDeque<SealedSegment>,
    /// Sequence number the next record gets.
    next_seq: u64,
    /// Newest promise written (durable or not): a snapshot includes it.
    promised: Epoch,
    index: RowIndex,
    snapshot_last: LogPos,
    /// Snapshots installed since open: a job begun before the latest one is
    /// stale.
    snapshots_installed: u64,
    snapshot_files: Vec<PathBuf>,
    /// Reused encode buffer and record boundaries in it.
    scratch: Vec<u8>,
    scratch_ends: Vec<usize>,
    poisoned: bool,
}

struct Segment {
    file: File,
    path: PathBuf,
    first_seq: u64,
    size_bytes: u64,
}

struct SealedSegment {
    path: PathBuf,
    first_seq: u64,
}

impl Wal {
    /// Opens (creating if needed) the log in `dir` with default settings.
    pub fn open(dir: impl AsRef<Path>) -> Result<(Wal, Recovered, RecoveryReport), WalError> {
        Wal::open_with(dir, WalConfig::default())
    }

    pub fn open_with(
        dir: impl AsRef<Path>,
        config: WalConfig,
    ) -> Result<(Wal, Recovered, RecoveryReport), WalError> {
        Wal::open_checked(dir, config, |_| Ok(()))
    }

    /// Like [`Wal::open_with`], calling `before_changes` once everything
    /// has been read and judged and before recovery changes anything (cuts
    /// a torn tail, rewrites a torn segment header, removes covered files).
    /// The report it sees has `torn_tail` set if a tail is about to be cut
    /// (`removed` is still empty). An error from it aborts the open with
    /// the directory untouched. A runtime uses this to record durably that
    /// rows are about to be cut before they are.
    pub fn open_checked(
        dir: impl AsRef<Path>,
        config: WalConfig,
        before_changes: impl FnOnce(&RecoveryReport) -> Result<(), WalError>,
    ) -> Result<(Wal, Recovered, RecoveryReport), WalError> {
        config.validate()?;
        recovery::open(dir.as_ref(), config, before_changes)
    }

    /// Best effort, for a directory already judged corrupt: the newest
    /// epoch anything readable in it shows this replica promised (a
    /// `Promise` record, a row's epoch, a snapshot's promise or last row),
    /// reading every snapshot and every record that still checks out, even
    /// past damage. Never fails; zero when nothing is readable.
    pub fn salvage_promised(dir: impl AsRef<Path>) -> Epoch {
        recovery::salvage_promised(dir.as_ref())
    }

    // ---- getters ----

    pub fn dir(&self) -> &Path {
        &self.dir
    }
    /// Sequence number the next record will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }
    /// Live segment files, including the one being written.
    pub fn segment_count(&self) -> usize {
        self.sealed.len() + 1
    }
    /// The last row the log holds, counting rows a snapshot covers.
    pub fn log_end(&self) -> Lsn {
        self.index.end
    }
    /// The last row of the newest snapshot (zero without one).
    pub fn snapshot_last(&self) -> LogPos {
        self.snapshot_last
    }

    // ---- writing ----

    /// Writes one record per op, in order, rolling to a new segment when the
    /// current one is full. Nothing is durable until [`Wal::sync`]. If an op
    /// is too large, nothing is written. After an I/O error the `Wal` is
    /// poisoned: what reached the disk is unknown, so reopen and recover.
    pub fn append(&mut self, ops: &[PersistOp]) -> io::Result<()> {
        if self.poisoned {
            return Err(poisoned_io());
        }
        // Encode everything first so an oversized op leaves the log untouched.
        self.scratch.clear();
        self.scratch_ends.clear();
        for op in ops {
            encode_record(op, &mut self.scratch)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            self.scratch_ends.push(self.scratch.len());
        }
        let result = self.write_encoded(ops);
        if result.is_err() {
            self.poisoned = true;
        }
        if self.scratch.capacity() > SCRATCH_BYTES_KEEP_MAX {
            // One huge batch should not pin its buffer for the process's life.
            self.scratch = Vec::new();
        }
        result
    }

    /// An alias for [`Wal::append`] that reads better at a group-commit call
    /// site: many requests' ops, then one [`Wal::sync`].
    pub fn append_batch(&mut self, ops: &[PersistOp]) -> io::Result<()> {
        self.append(ops)
    }

    fn write_encoded(&mut self, ops: &[PersistOp]) -> io::Result<()> {
        debug_assert_eq!(ops.len(), self.scratch_ends.len());
        let mut chunk_start = 0; // byte offset in scratch of the unwritten chunk
        let mut record_start = 0;
        for (i, op) in ops.iter().enumerate() {
            let record_end = self.scratch_ends[i];
            let record_bytes = (record_end - record_start) as u64;
            let chunk_bytes = (record_start - chunk_start) as u64;
            let used_bytes = self.current.size_bytes + chunk_bytes;
            let has_records = used_bytes > SEGMENT_HEADER_BYTES as u64;
            if has_records && used_bytes + record_bytes > self.config.segment_bytes_max {
                self.write_chunk(chunk_start, record_start)?;
                chunk_start = record_start;
                self.roll()?;
            }
            self.index.apply(op, self.current.first_seq);
            if let PersistOp::Promise(e) = op {
                self.promised = self.promised.max(*e);
            }
            self.next_seq += 1;
            record_start = record_end;
        }
        self.write_chunk(chunk_start, record_start)
    }

    fn write_chunk(&mut self, from: usize, to: usize) -> io::Result<()> {
        if from == to {
            return Ok(());
        }
        self.current.file.write_all(&self.scratch[from..to])?;
        self.current.size_bytes += (to - from) as u64;
        Ok(())
    }

    /// Seals the current segment (fsynced, since [`Wal::sync`] only syncs
    /// the current one) and starts the next.
    fn roll(&mut self) -> io::Result<()> {
        self.current.file.sync_data()?;
        let next = create_segment(&self.dir, &self.dir_file, self.next_seq)?;
        let old = std::mem::replace(&mut self.current, next);
        self.sealed.push_back(SealedSegment { path: old.path, first_seq: old.first_seq });
        Ok(())
    }

    /// Makes every record appended so far durable (`fdatasync`).
    pub fn sync(&mut self) -> io::Result<()> {
        if self.poisoned {
            return Err(poisoned_io());
        }
        let result = self.current.file.sync_data();
        if result.is_err() {
            // After a failed fsync the kernel may have dropped the dirty
            // pages; retrying can falsely succeed. Only recovery is safe.
            self.poisoned = true;
        }
        result
    }

    // ---- snapshots ----

    /// Writes a snapshot of the applied state up to `snap.last`, then deletes
    /// the segments and older snapshots it makes unnecessary: the three steps
    /// of [`Wal::begin_snapshot`], [`SnapshotJob::write`] and
    /// [`Wal::finish_snapshot`] in a row.
    ///
    /// Every row up to `snap.last` must be committed (so never truncated),
    /// and `snap.last` must not go backwards between snapshots. The rows
    /// themselves need not be in the log yet (a follower applies rows whose
    /// persist is still in flight); replaying them later is harmless.
    ///
    /// This blocks while the map is encoded and written (0.2-0.6 s for
    /// 1,000,000 keys of 64-byte values on the 2-core dev machine, most of it
    /// the write). A caller that must keep serving runs
    /// [`SnapshotJob::write`] on another thread instead.
    pub fn snapshot(&mut self, snap: SnapshotRef<'_>) -> Result<SnapshotReport, WalError> {
        let job = self.begin_snapshot(snap)?;
        let written = job.write()?;
        match self.finish_snapshot(written)? {
            Some(report) => Ok(report),
            None => unreachable!("nothing can overtake a snapshot taken in one call"),
        }
    }

    /// The part of a snapshot that must see the machine's state: makes the
    /// log durable, starts a fresh segment if the snapshot covers every
    /// record, and encodes `snap` into memory (60-100 ms per million keys;
    /// the encoded copy costs the snapshot's size in memory until the job
    /// is finished). The job touches only its own
    /// temporary file: write it anywhere, then hand it to
    /// [`Wal::finish_snapshot`]. Appends and syncs may go on meanwhile.
    pub fn begin_snapshot(&mut self, snap: SnapshotRef<'_>) -> Result<SnapshotJob, WalError> {
        if self.poisoned {
            return Err(WalError::Poisoned);
        }
        if snap.last.lsn < self.snapshot_last.lsn {
            return Err(WalError::InvalidSnapshot(format!(
                "position {} is older than the last snapshot's {}",
                snap.last, self.snapshot_last
            )));
        }
        // Records before `replay_from_seq` must be durable before a snapshot
        // claims to cover them, or a crash could leave the log ending before
        // the snapshot's replay point.
        self.sync().map_err(io_err(&self.current.path))?;
        let mut index = self.index.clone();
        index.rebase(snap.last.lsn);
        if index.first_needed_segment().is_none() && self.current.size_bytes > SEGMENT_HEADER_BYTES as u64 {
            // The snapshot covers every record: start a fresh segment so the
            // current one can go too, instead of lingering until it fills.
            if let Err(e) = self.roll() {
                self.poisoned = true;
                return Err(WalError::Io { path: self.current.path.clone(), source: e });
            }
        }
        // Records appended after this point hold rows after `snap.last` (or
        // rewrite uncommitted ones), so they land in this segment or later:
        // replaying from here stays enough however long the job takes.
        let replay_from_seq = index.first_needed_segment().unwrap_or(self.next_seq);
        debug_assert!(replay_from_seq <= self.next_seq);
        let promised = snap.promised.max(self.promised);
        let to_write = SnapshotRef { promised, ..snap };
        let file = self.dir.join(snapshot_name(replay_from_seq));
        let tmp = self.dir.join(format!("{}.tmp", snapshot_name(replay_from_seq)));
        let bytes = encode_snapshot(&to_write)
            .map_err(|e| WalError::Io { path: tmp.clone(), source: io::Error::other(e) })?;
        Ok(SnapshotJob {
            tmp,
            file,
            bytes,
            replay_from_seq,
            last: snap.last,
            promised,
            keys: snap.kv.len(),
            dir: self.dir.clone(),
            generation: self.snapshots_installed,
            written: false,
        })
    }

    /// Installs a written job: renames its file into place (durably), then
    /// deletes what it makes unnecessary. A job overtaken by a newer
    /// snapshot (an `InstallSnapshot` written meanwhile), or begun on
    /// another directory, is dropped with its file: `Ok(None)`.
    pub fn finish_snapshot(&mut self, job: SnapshotJob) -> Result<Option<SnapshotReport>, WalError> {
        if self.poisoned {
            return Err(WalError::Poisoned);
        }
        if !job.written {
            return Err(WalError::InvalidSnapshot("the snapshot job was never written".into()));
        }
        if job.dir != self.dir || job.generation != self.snapshots_installed {
            return Ok(None); // `job` removes its file when dropped
        }
        self.snapshots_installed += 1;
        let file_bytes = job.bytes.len() as u64;
        fs::rename(&job.tmp, &job.file).map_err(io_err(&job.tmp))?;
        self.dir_file.sync_all().map_err(io_err(&self.dir))?;
        let (file, replay_from_seq, last, promised) = job.installed();

        // The snapshot is durable: from here on it is the truth.
        self.index.rebase(last.lsn);
        self.snapshot_last = last;
        self.promised = self.promised.max(promised);
        let mut removed = Vec::new();
        let old: Vec<PathBuf> = self.snapshot_files.drain(..).filter(|p| *p != file).collect();
        self.snapshot_files.push(file.clone());
        for path in old {
            fs::remove_file(&path).map_err(io_err(&path))?;
            removed.push(path);
        }
        // A sealed segment is covered when the next one starts at or before
        // the replay point.
        while let Some(oldest) = self.sealed.front() {
            let next_first_seq = self.sealed.get(1).map_or(self.current.first_seq, |s| s.first_seq);
            if next_first_seq > replay_from_seq {
                break;
            }
            debug_assert!(oldest.first_seq < next_first_seq);
            let seg = self.sealed.pop_front().expect("checked");
            fs::remove_file(&seg.path).map_err(io_err(&seg.path))?;
            removed.push(seg.path);
        }
        if !removed.is_empty() {
            self.dir_file.sync_all().map_err(io_err(&self.dir))?;
        }
        Ok(Some(SnapshotReport { file, file_bytes, replay_from_seq, removed }))
    }
}

/// A snapshot encoded by [`Wal::begin_snapshot`], to be written (on any
/// thread) and then installed by [`Wal::finish_snapshot`]. Dropped before
/// it is installed, it removes its temporary file; a crash leaves that file
/// to the next open, which removes it.
#[derive(Debug)]
pub struct SnapshotJob {
    tmp: PathBuf,
    file: PathBuf,
    bytes: Vec<u8>,
    replay_from_seq: u64,
    last: LogPos,
    promised: Epoch,
    keys: usize,
    dir: PathBuf,
    /// [`Wal::snapshots_installed`] when the job began.
    generation: u64,
    written: bool,
}

impl SnapshotJob {
    /// Checksums the payload, then writes the temporary file and fsyncs it.
    /// Touches nothing else.
    pub fn write(mut self) -> Result<SnapshotJob, WalError> {
        let payload = &self.bytes[SNAPSHOT_HEADER_BYTES..];
        let header = SnapshotHeader {
            replay_from_seq: self.replay_from_seq,
            payload_bytes: payload.len() as u64,
            payload_crc32c: crc32c::crc32c(payload),
        };
        self.bytes[..SNAPSHOT_HEADER_BYTES].copy_from_slice(&encode_snapshot_header(&header));
        let tmp = self.tmp.clone();
        let result = (|| {
            let mut file = OpenOptions::new().write(true).create(true).truncate(true).open(&tmp)?;
            file.write_all(&self.bytes)?;
            file.sync_all()
        })();
        result.map_err(io_err(&tmp))?;
        self.written = true;
        Ok(self)
    }

    /// The position the snapshot covers up to.
    pub fn last(&self) -> LogPos {
        self.last
    }

    /// Keys in the snapshot.
    pub fn keys(&self) -> usize {
        self.keys
    }

    /// The snapshot file's size once written.
    pub fn file_bytes(&self) -> u64 {
        self.bytes.len() as u64
    }

    /// Hands over what the WAL keeps; the file is no longer the job's.
    fn installed(mut self) -> (PathBuf, u64, LogPos, Epoch) {
        self.written = false;
        self.bytes = Vec::new();
        let file = std::mem::take(&mut self.file);
        self.tmp = PathBuf::new();
        (file, self.replay_from_seq, self.last, self.promised)
    }
}

impl Drop for SnapshotJob {
    fn drop(&mut self) {
        if !self.tmp.as_os_str().is_empty() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// Creates segment `first_seq` with its header, durably: the header and the
/// directory entry are fsynced before any record goes in, so a segment with
/// a bad header can only be one that never held a record.
fn create_segment(dir: &Path, dir_file: &File, first_seq: u64) -> io::Result<Segment> {
    let path = dir.join(segment_name(first_seq));
    let mut file = OpenOptions::new().read(true).write(true).create_new(true).open(&path)?;
    file.write_all(&encode_segment_header(first_seq))?;
    file.sync_all()?;
    dir_file.sync_all()?;
    Ok(Segment { file, path, first_seq, size_bytes: SEGMENT_HEADER_BYTES as u64 })
}

/// Streams the snapshot into `tmp` (header placeholder, payload, then the
/// real header) and fsyncs it. Returns the file size.
/// The snapshot's postcard payload behind room for its header, which
/// [`SnapshotJob::write`] fills in (checksumming off the node thread).
fn encode_snapshot(snap: &SnapshotRef<'_>) -> Result<Vec<u8>, String> {
    postcard::to_extend(snap, vec![0; SNAPSHOT_HEADER_BYTES])
        .map_err(|e| format!("cannot encode snapshot: {e}"))
}

fn segment_name(first_seq: u64) -> String {
    format!("wal-{first_seq:020}.kvlog")
}

fn snapshot_name(replay_from_seq: u64) -> String {
    format!("snap-{replay_from_seq:020}.kvsnap")
}

/// Which of our files a directory entry is, by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FileKind {
    Segment(u64),
    Snapshot(u64),
    SnapshotTmp(u64),
}

fn parse_name(name: &str) -> Option<FileKind> {
    fn seq(digits: &str) -> Option<u64> {
        if digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()) {
            digits.parse().ok()
        } else {
            None
        }
    }
    if let Some(rest) = name.strip_prefix("wal-") {
        return rest.strip_suffix(".kvlog").and_then(seq).map(FileKind::Segment);
    }
    let rest = name.strip_prefix("snap-")?;
    if let Some(digits) = rest.strip_suffix(".kvsnap.tmp") {
        return seq(digits).map(FileKind::SnapshotTmp);
    }
    rest.strip_suffix(".kvsnap").and_then(seq).map(FileKind::Snapshot)
}

/// Which segment wrote each current row after the snapshot: enough to know
/// where replay must start, without keeping the rows.
///
/// Runs are `(first lsn, segment first_seq)`; a new run starts only when
/// the writing segment changes, so there are never more runs than live
/// segments. Mirrors the replay rules of [`Recovered`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct RowIndex {
    /// Rows up to here are in the snapshot.
    base: Lsn,
    /// The last row (>= base).
    end: Lsn,
    runs: Vec<(Lsn, u64)>,
}

impl RowIndex {
    fn apply(&mut self, op: &PersistOp, segment: u64) {
        match op {
            PersistOp::Promise(_) => {}
            PersistOp::Append(rows) => {
                for row in rows {
                    if row.lsn <= self.base {
                        self.truncate_after(self.base);
                        continue;
                    }
                    if row.lsn > self.end.next() {
                        continue; // a gap: ignored, as Stored::apply does
                    }
                    self.truncate_after(row.lsn.prev());
                    if self.runs.last().map(|r| r.1) != Some(segment) {
                        self.runs.push((row.lsn, segment));
                    }
                    self.end = row.lsn;
                }
            }
            PersistOp::TruncateAfter(lsn) => self.truncate_after(*lsn),
            PersistOp::InstallSnapshot(snap) => {
                self.base = snap.last.lsn;
                self.end = snap.last.lsn;
                self.runs.clear();
            }
        }
        debug_assert!(self.end >= self.base);
        debug_assert!(self.runs.first().is_none_or(|r| r.0 == self.base.next()));
    }

    fn truncate_after(&mut self, keep: Lsn) {
        let keep = keep.max(self.base);
        if keep >= self.end {
            return;
        }
        self.end = keep;
        while self.runs.last().is_some_and(|r| r.0 > keep) {
            self.runs.pop();
        }
    }

    /// Forgets rows up to `lsn`: a snapshot now holds them.
    fn rebase(&mut self, lsn: Lsn) {
        debug_assert!(lsn >= self.base);
        self.base = lsn;
        if lsn >= self.end {
            self.end = lsn;
            self.runs.clear();
            return;
        }
        // Keep the run holding lsn + 1, starting it there.
        let keep_from = self.runs.partition_point(|r| r.0 <= lsn.next()).saturating_sub(1);
        self.runs.drain(..keep_from);
        if let Some(first) = self.runs.first_mut() {
            first.0 = lsn.next();
        }
    }

    /// The segment that wrote row `base + 1`, if the log has it.
    fn first_needed_segment(&self) -> Option<u64> {
        self.runs.first().map(|r| r.1)
    }
}

/// Replays ops on top of a snapshot position, as [`Recovered`] documents.
#[derive(Debug)]
struct Replay {
    base: LogPos,
    promised: Epoch,
    rows: Vec<Row>,
    /// A snapshot installed from the leader by a log record: it replaces
    /// the snapshot file's and everything before it.
    installed: Option<Snapshot>,
}

impl Replay {
    fn apply(&mut self, op: &PersistOp) {
        if let Some(snap) = crate::machine::replay_op(self.base.lsn, &mut self.promised, &mut self.rows, op) {
            self.base = snap.last;
            self.installed = Some(snap.clone());
        }
    }

    fn end(&self) -> Lsn {
        Lsn(self.base.lsn.0 + self.rows.len() as u64)
    }
}

/// Collects the `Persist` effects of many requests so they can be written
/// with one fsync.
///
/// ```text
/// loop {
///     // handle every input that is ready, up to committer.is_full()
///     for effect in out.drain() {
///         match effect {
///             Effect::Persist { id, op } => committer.push(id, op),
///             other => ...,
///         }
///     }
///     if let Some(id) = committer.commit(&mut wal)? {
///         replica.on_persisted(now, id, &mut out); // covers every id <= id
///     }
/// }
/// ```
///
/// Persist ids from one replica increase, and `on_persisted(id)` counts all
/// earlier ids as done, so the batch needs to report only its highest id.
#[derive(Debug)]
pub struct GroupCommitter {
    ops: Vec<PersistOp>,
    last_id: Option<u64>,
    ops_max: usize,
}

impl GroupCommitter {
    /// A sensible batch bound: large enough to amortise an fsync over many
    /// writes, small enough that one batch's latency stays low.
    pub const OPS_MAX_DEFAULT: usize = 1024;

    pub fn new(ops_max: usize) -> GroupCommitter {
        assert!(ops_max > 0, "a group commit batch holds at least one op");
        GroupCommitter { ops: Vec::with_capacity(ops_max.min(4096)), last_id: None, ops_max }
    }

    /// Queues one persist effect. Ids must increase.
    pub fn push(&mut self, id: u64, op: PersistOp) {
        assert!(self.last_id.is_none_or(|last| id > last), "persist ids must increase");
        self.last_id = Some(id);
        self.ops.push(op);
    }

    /// Stop gathering and [`GroupCommitter::commit`].
    pub fn is_full(&self) -> bool {
        self.ops.len() >= self.ops_max
    }
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Writes every queued op, fsyncs once, and returns the highest persist
    /// id now durable (None if nothing was queued). On error the batch is
    /// kept, but the `Wal` is poisoned: the process must recover.
    pub fn commit(&mut self, wal: &mut Wal) -> io::Result<Option<u64>> {
        if self.ops.is_empty() {
            return Ok(None);
        }
        wal.append_batch(&self.ops)?;
        wal.sync()?;
        self.ops.clear();
        Ok(self.last_id)
    }
}

mod recovery;

#[cfg(test)]
mod tests;
