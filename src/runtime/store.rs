//! Where a replica's `Effect::Persist` operations go.
//!
//! The node thread calls [`Store::write`] for each persist effect in the order
//! the machine issued them, then [`Store::sync`] once per batch (group
//! commit), then `Replica::on_persisted` with the last id written. A store
//! therefore completes ids strictly in order, which is what the machine
//! requires. After the batch's sends are flushed it calls
//! [`Store::maintain`], where a store may take a snapshot.
//!
//! Two stores live here: [`MemStore`] (no `--data-dir`: a restarted replica
//! comes back empty and catches up from the leader, but its promises are
//! forgotten, which failover safety assumes never happens) and [`WalStore`],
//! the write-ahead log of [`crate::wal`].
//!
//! # A replica's files under `--data-dir DIR`
//!
//! ```text
//! DIR/replica-N/              the WAL directory (segments and snapshot; see crate::wal)
//! DIR/replica-N.promise       the newest promised epoch, two checksummed copies
//!                             (crate::wal::PromiseFile); also the replica's lock
//! DIR/replica-N.missing       present while rows cut off the log tail at a
//!                             recovery may still be missing (text: what was cut)
//! DIR/replica-N.resyncing     present while a re-sync after corruption is unfinished
//! DIR/replica-N.corrupt-K/    a WAL directory found corrupt, set aside (never deleted)
//! DIR/replica-N.resync-partial-K/  a re-sync's partial copy, set aside at the next start
//! ```
//!
//! Several replicas may share one `DIR`. Nothing here ever deletes a
//! directory: what is set aside stays for an operator to look at and remove.
//!
//! # The promised epoch survives the log
//!
//! Every `PersistOp::Promise` goes to the log as before, and the newest one
//! also to `replica-N.promise`, inside the same [`Store::sync`] that makes
//! the batch durable, so before the machine hears `on_persisted` and sends
//! its `Promise` or acknowledgement. At open the replica takes the larger
//! of the file's epoch and whatever its log (or, for a log set aside, what
//! can still be read of it) shows, and raises the file to that. A data
//! directory from before promise files has none: the file is created from
//! the log's value. A file with no valid copy refuses the start
//! ([`crate::wal::WalError::PromiseLost`]).
//!
//! # Markers: a replica that may lack rows it confirmed
//!
//! A marker is a small file whose *presence* is what counts (its text is
//! for people); it is created and fsynced, and the directory fsynced,
//! before the replica machine starts, and removed only once the machine
//! reports it has caught up (`Replica::is_resyncing` turns false).
//!
//! - `replica-N.missing`: recovery cut something off the log's tail (a torn
//!   write; but a fsynced last record that was damaged, or a segment cut
//!   short, looks the same). Written before the cut. Starts with
//!   `Replica::recover_missing` on what the log holds, at this and every
//!   later start until caught up.
//! - `replica-N.resyncing`: the log was set aside as corrupt. Starts with
//!   `Replica::resync` and the promised epoch, at this and every later start
//!   (each setting aside the partial copy) until caught up.

use crate::machine::{PersistOp, Snapshot, Stored};
use crate::replica::Replica;
use crate::types::{Epoch, NodeId, ReplicaId, RowBody};
use crate::wal::{
    PromiseFile, RecoveryReport, SnapshotJob, TornTail, Wal, WalConfig, WalError, SEGMENT_BYTES_DEFAULT,
    SEGMENT_BYTES_MIN,
};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tracing::{error, info, warn};

/// What a replica machine starts from.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Start {
    /// Everything durable: `Replica::recover`.
    Recovered(Stored),
    /// Recovery cut rows off the log's tail (now, or at an earlier start
    /// since which the replica has not caught up): `Replica::recover_missing`,
    /// since the rows cut may include some it confirmed.
    Missing(Stored),
    /// The disk was found corrupt (now, or at an earlier start whose re-sync
    /// never finished): start empty with `Replica::resync`, which takes no
    /// part in promotions until it has caught up with a leader. `promised`
    /// is the newest epoch it ever promised (kept apart from the log).
    Resync { promised: Epoch },
}

pub trait Store: Send {
    /// What the machine starts from. Called at start-up, and again if the
    /// replica machine has to be rebuilt (after a `sync`).
    fn recover(&mut self) -> io::Result<Start>;
    /// Appends one operation; durable only after the next `sync`.
    fn write(&mut self, op: PersistOp) -> io::Result<()>;
    fn sync(&mut self) -> io::Result<()>;
    /// Housekeeping after a batch, with everything written durable: a store
    /// may snapshot the machine's applied state here, or install a snapshot
    /// written meanwhile. Should not block for long: the node thread calls
    /// it every pass.
    fn maintain(&mut self, replica: &Replica) -> io::Result<()> {
        let _ = replica;
        Ok(())
    }
}

/// Keeps persisted state in memory only.
#[derive(Default)]
pub struct MemStore {
    stored: Stored,
}

impl Store for MemStore {
    fn recover(&mut self) -> io::Result<Start> {
        Ok(Start::Recovered(self.stored.clone()))
    }
    fn write(&mut self, op: PersistOp) -> io::Result<()> {
        self.stored.apply(&op);
        Ok(())
    }
    fn sync(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// When [`WalStore::sync`] calls `fdatasync`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncMode {
    /// Once per batch of persist operations (group commit). The default.
    Group,
    /// Once per operation, before the next is written: what a log without
    /// group commit does. Only for comparing (`--sync-every-op`).
    EveryOp,
    /// Never: the bytes reach the OS, so a killed process loses nothing, but
    /// a power loss can (`--no-fsync`).
    Off,
}

/// Snapshot once about this much log was written since the last snapshot
/// (or the last snapshot's size, if larger).
pub const SNAPSHOT_LOG_BYTES_DEFAULT: u64 = 64 * 1024 * 1024;

/// A leader snapshots only after this many times a follower's threshold.
pub const LEADER_SNAPSHOT_DEFER: u64 = 4;

#[derive(Clone, Debug)]
pub struct WalOptions {
    pub sync: SyncMode,
    /// A snapshot is taken once the log written since the last one reaches
    /// `max(snapshot_log_bytes, size of the last snapshot)`, scaled per
    /// replica and role (see [`WalStore::snapshot_threshold`]). The second
    /// term keeps the cost of rewriting a large map proportional to the log
    /// it retires: every byte of log causes at most about one byte of
    /// snapshot writing. Segments are a quarter of `snapshot_log_bytes`
    /// (within the WAL's limits) so a snapshot frees most of the log.
    pub snapshot_log_bytes: u64,
}

impl Default for WalOptions {
    fn default() -> WalOptions {
        WalOptions { sync: SyncMode::Group, snapshot_log_bytes: SNAPSHOT_LOG_BYTES_DEFAULT }
    }
}

/// A [`Store`] over the write-ahead log in `DIR/replica-N`.
///
/// Group commit: `write` only queues; `sync` appends the whole batch with
/// one `write` and makes it durable with one `fdatasync`. An
/// `InstallSnapshot` (the leader's state, possibly larger than a log record
/// may be) becomes a snapshot file with `Wal::snapshot`, followed by a
/// `TruncateAfter` record so the log after it replays exactly as
/// `Stored::apply` would.
pub struct WalStore {
    id: ReplicaId,
    dir: PathBuf,
    /// `DIR/replica-N.resyncing`: the log was discarded, a re-sync is unfinished.
    resync_marker: PathBuf,
    /// `DIR/replica-N.missing`: rows cut off the log tail may be missing.
    missing_marker: PathBuf,
    /// `DIR/replica-N.promise`, open and locked for the store's life.
    promise: PromiseFile,
    /// The newest promise written (queued or in the log), at least the file's.
    promise_written: Epoch,
    opts: WalOptions,
    wal: Option<Wal>,
    /// What the last open found, until the machine takes it.
    start: Option<Start>,
    /// The machine started from `Start::Resync` or `Start::Missing` and has
    /// not caught up yet: the markers stay until it has.
    catching_up: bool,
    pending: Vec<PersistOp>,
    /// Log bytes (estimated from the rows) written since the last snapshot.
    log_bytes: u64,
    /// The last snapshot's size, for the snapshot threshold.
    snapshot_bytes: u64,
    /// A periodic snapshot being written off the node thread.
    snapshot: Option<SnapshotInFlight>,
    stats: WalStats,
}

/// Counters, logged when the store is dropped (the node stopped).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WalStats {
    pub ops: u64,
    /// Log fsyncs (promise file writes are counted apart).
    pub fsyncs: u64,
    pub promise_writes: u64,
    pub snapshots: u64,
    /// Longest snapshot, begin to installed.
    pub snapshot_ms_max: u64,
    /// Longest time a snapshot held the node thread (encoding it).
    pub snapshot_held_ms_max: u64,
}

impl WalStore {
    /// Opens (creating if needed) `data_dir/replica-N` and its promise file,
    /// recovering what they hold. A directory that is not ours or has a
    /// newer format, a promise file with no valid copy, or a replica already
    /// open elsewhere is refused untouched (`WalError::Foreign`,
    /// `NewerVersion`, `PromiseLost`, `Locked`); a log found corrupt is set
    /// aside and replaced by an empty one, and the replica will re-sync (see
    /// [`Start::Resync`]); a log whose tail recovery cut starts the replica
    /// as [`Start::Missing`].
    pub fn open(data_dir: &Path, replica: ReplicaId, opts: WalOptions) -> Result<WalStore, WalError> {
        let n = replica.0;
        let dir = data_dir.join(format!("replica-{n}"));
        ensure_data_dir(data_dir)?;
        // The promise file first: it is also the lock that keeps a second
        // process from touching anything of this replica's.
        let (promise, load) = PromiseFile::open(&data_dir.join(format!("replica-{n}.promise")))?;
        let node = NodeId::Replica(replica);
        if let Some((slot, fault)) = load.repaired {
            warn!(
                node = %node,
                "promise file {}: copy {slot} was damaged ({fault}); rewrote it from the other copy ({})",
                promise.path().display(),
                promise.epoch()
            );
        }
        let created = load.created;
        let mut store = WalStore {
            id: replica,
            dir,
            resync_marker: data_dir.join(format!("replica-{n}.resyncing")),
            missing_marker: data_dir.join(format!("replica-{n}.missing")),
            promise_written: promise.epoch(),
            promise,
            opts,
            wal: None,
            start: None,
            catching_up: false,
            pending: Vec::new(),
            log_bytes: 0,
            snapshot_bytes: 0,
            snapshot: None,
            stats: WalStats::default(),
        };
        if let Err(e) = store.open_wal() {
            let refused = matches!(
                e,
                WalError::Foreign { .. } | WalError::NewerVersion { .. } | WalError::Locked { .. }
            );
            if created && refused {
                // Refused before anything was changed: leave the data
                // directory as found. (After other errors the file stays:
                // it may already hold what a set-aside log showed.)
                if let Err(rm) = store.promise.remove_created() {
                    warn!(node = %node, "could not remove {}: {rm}", store.promise.path().display());
                }
            }
            return Err(e);
        }
        if created {
            info!(
                node = %node,
                "no promise file yet (a new replica, or a data directory from before promise files): \
                 created {} with the epoch the log records ({})",
                store.promise.path().display(),
                store.promise.epoch()
            );
        }
        Ok(store)
    }

    /// The promise file (`DIR/replica-N.promise`).
    pub fn promise_path(&self) -> &Path {
        self.promise.path()
    }

    /// The WAL directory (`DIR/replica-N`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn stats(&self) -> WalStats {
        self.stats
    }

    fn node(&self) -> NodeId {
        NodeId::Replica(self.id)
    }

    fn wal_config(&self) -> WalConfig {
        let segment = (self.opts.snapshot_log_bytes / 4).clamp(SEGMENT_BYTES_MIN, SEGMENT_BYTES_DEFAULT);
        WalConfig { segment_bytes_max: segment }
    }

    fn open_wal(&mut self) -> Result<(), WalError> {
        debug_assert!(self.wal.is_none() && self.pending.is_empty());
        let began = Instant::now();
        let node = self.node();
        if self.resync_marker.exists() {
            // A re-sync after corruption was cut short: what the directory
            // holds is a partial copy from a leader, and the rows this
            // replica confirmed before the corruption are still lost, so it
            // must not start as a trustworthy replica. Start the re-sync over.
            let mut salvaged = Epoch(0);
            if self.dir.exists() {
                let aside = set_aside(&self.dir, "resync-partial")?;
                salvaged = Wal::salvage_promised(&aside);
                warn!(
                    node = %node,
                    "a re-sync from the leader did not finish before the last stop ({} exists); \
                     its partial copy is set aside at {} (safe to delete) and the re-sync starts over",
                    self.resync_marker.display(),
                    aside.display()
                );
            }
            let (wal, _, _) = Wal::open_with(&self.dir, self.wal_config())?;
            let promised = self.settle_promise(salvaged)?;
            return self.opened(wal, Start::Resync { promised }, 0);
        }
        let missing_marker = self.missing_marker.clone();
        let opened = Wal::open_checked(&self.dir, self.wal_config(), |report| match &report.torn_tail {
            // Recorded before the cut: should we stop in between, the next
            // start still knows rows may be missing.
            Some(t) => add_to_marker(&missing_marker, &describe_cut(t)),
            None => Ok(()),
        });
        match opened {
            Ok((wal, recovered, report)) => {
                log_recovery(node, &self.dir, &report, began);
                let snapshot_bytes =
                    report.snapshot_file.as_ref().and_then(|p| fs::metadata(p).ok()).map_or(0, |m| m.len());
                self.snapshot_bytes = snapshot_bytes;
                let log_bytes = segment_bytes_on_disk(&self.dir);
                let mut stored = recovered.into_stored();
                let in_log = stored_promised(&stored);
                let promised = self.settle_promise(in_log)?;
                if promised > in_log {
                    // A promise the log lost (or never had, under --no-fsync).
                    info!(
                        node = %node,
                        "promised {promised} (from {}; the log records {in_log})",
                        self.promise.path().display()
                    );
                    stored.promised = promised;
                }
                let start = if let Some(t) = &report.torn_tail {
                    warn!(
                        node = %node,
                        "recovery {}. This is what a crash mid-write leaves, but a damaged last record \
                         or a segment cut short look the same, so this replica may lack rows it \
                         confirmed: it takes part in promotions as a whole replica only once it has \
                         caught up with a leader ({} records this until then)",
                        describe_cut(t),
                        self.missing_marker.display()
                    );
                    Start::Missing(stored)
                } else if self.missing_marker.exists() {
                    warn!(
                        node = %node,
                        "{} exists: rows cut off the log at an earlier recovery may still be missing ({}); \
                         this replica catches up with a leader before it takes part in promotions as whole",
                        self.missing_marker.display(),
                        marker_text(&self.missing_marker)
                    );
                    Start::Missing(stored)
                } else {
                    Start::Recovered(stored)
                };
                self.opened(wal, start, log_bytes)
            }
            Err(e @ WalError::Corrupt { .. }) => {
                error!(
                    node = %node,
                    "write-ahead log damaged: {e}. This replica may have lost rows it had confirmed, \
                     so it starts empty and re-syncs from the leader, taking no part in promotions \
                     until it has caught up"
                );
                // The marker goes first: should we stop between the two, the
                // next start still knows not to trust this directory.
                add_to_marker(&self.resync_marker, &format!("log set aside as corrupt: {e}"))?;
                let aside = set_aside(&self.dir, "corrupt")?;
                error!(node = %node, "the damaged directory is kept at {} for inspection", aside.display());
                let salvaged = Wal::salvage_promised(&aside);
                let (wal, _, _) = Wal::open_with(&self.dir, self.wal_config())?;
                let promised = self.settle_promise(salvaged)?;
                warn!(
                    node = %node,
                    "keeps its promised epoch {promised} ({} holds {}, the readable rest of the damaged log shows {salvaged})",
                    self.promise.path().display(),
                    self.promise.epoch()
                );
                self.opened(wal, Start::Resync { promised }, 0)
            }
            Err(e) => Err(e),
        }
    }

    /// The newest promised epoch: the promise file's or `in_log`, whichever
    /// is larger; the file is raised to it (durably, unless `--no-fsync`).
    fn settle_promise(&mut self, in_log: Epoch) -> Result<Epoch, WalError> {
        let durable = self.opts.sync != SyncMode::Off;
        let path = self.promise.path().to_path_buf();
        if self.promise.store(in_log, durable).map_err(|source| WalError::Io { path, source })? {
            self.stats.promise_writes += 1;
        }
        self.promise_written = self.promise_written.max(self.promise.epoch());
        Ok(self.promise.epoch())
    }

    fn opened(&mut self, wal: Wal, start: Start, log_bytes: u64) -> Result<(), WalError> {
        self.catching_up = matches!(start, Start::Resync { .. } | Start::Missing(_));
        self.wal = Some(wal);
        self.start = Some(start);
        self.log_bytes = log_bytes;
        Ok(())
    }

    /// Makes the newest promise written durable in the promise file, if it
    /// is newer than what the file holds. Part of every sync.
    fn sync_promise(&mut self) -> io::Result<()> {
        if self.promise.store(self.promise_written, self.opts.sync != SyncMode::Off)? {
            self.stats.promise_writes += 1;
        }
        Ok(())
    }

    fn wal(&mut self) -> &mut Wal {
        self.wal.as_mut().expect("the WAL is open except inside recover")
    }

    /// Writes the queued ops (no fsync).
    fn append_pending(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let pending = std::mem::take(&mut self.pending);
        self.wal().append(&pending)?;
        self.stats.ops += pending.len() as u64;
        self.log_bytes += pending.iter().map(approx_record_bytes).sum::<u64>();
        // Keep the allocation for the next batch.
        self.pending = pending;
        self.pending.clear();
        Ok(())
    }

    fn fsync(&mut self) -> io::Result<()> {
        if self.opts.sync != SyncMode::Off {
            self.wal().sync()?;
            self.stats.fsyncs += 1;
        }
        self.sync_promise()
    }

    /// Log bytes since the last snapshot at which the next one is taken.
    ///
    /// A snapshot pauses the node thread while it is encoded (about 0.1 s
    /// per million keys; the file is written by a thread of its own) and
    /// holds the encoded copy in memory until it is installed. A leader
    /// waits for [`LEADER_SNAPSHOT_DEFER`] times the log (its followers
    /// snapshot meanwhile), and replica N's threshold is scaled by
    /// `1 + ((N - 1) % 4) / 4`, so replicas fed the same log do not pause,
    /// or double their memory, at the same moment.
    pub fn snapshot_threshold(&self, leading: bool) -> u64 {
        let base = self.opts.snapshot_log_bytes.max(self.snapshot_bytes);
        let stagger = base / 4 * ((u64::from(self.id.0) + 3) % 4);
        let threshold = base.saturating_add(stagger);
        if leading {
            threshold.saturating_mul(LEADER_SNAPSHOT_DEFER)
        } else {
            threshold
        }
    }
}

fn wal_io(e: WalError) -> io::Error {
    match e {
        WalError::Io { source, path } => {
            io::Error::new(source.kind(), format!("{}: {source}", path.display()))
        }
        other => io::Error::other(other.to_string()),
    }
}

impl Store for WalStore {
    fn recover(&mut self) -> io::Result<Start> {
        if let Some(start) = self.start.take() {
            return Ok(start);
        }
        // A rebuild: read the directory again, as a restart would.
        self.sync()?;
        self.settle_snapshot(true)?;
        self.wal = None; // releases the directory lock
        self.open_wal().map_err(wal_io)?;
        Ok(self.start.take().expect("open_wal sets it"))
    }

    fn write(&mut self, op: PersistOp) -> io::Result<()> {
        match &op {
            PersistOp::Promise(e) => self.promise_written = self.promise_written.max(*e),
            PersistOp::InstallSnapshot(snap) => {
                self.promise_written = self.promise_written.max(snap.promised)
            }
            _ => {}
        }
        match op {
            PersistOp::InstallSnapshot(snap) => {
                // Everything before it goes first (Wal::snapshot syncs it),
                // and a periodic snapshot in flight is installed (or dropped).
                self.append_pending()?;
                self.settle_snapshot(true)?;
                let began = Instant::now();
                let report = self.wal().snapshot(Snapshot::as_ref(&snap)).map_err(wal_io)?;
                self.stats.snapshots += 1;
                self.stats.fsyncs += 1;
                self.snapshot_bytes = report.file_bytes;
                self.log_bytes = 0;
                info!(
                    node = %self.node(),
                    "installed the leader's snapshot up to {} ({} keys, {} bytes) in {:?}; removed {} old files",
                    snap.last,
                    snap.kv.len(),
                    report.file_bytes,
                    began.elapsed(),
                    report.removed.len()
                );
                // Rows after the snapshot that the log still holds came from a
                // deposed leader; the machine dropped them, and so does replay.
                self.pending.push(PersistOp::TruncateAfter(snap.last.lsn));
            }
            op => self.pending.push(op),
        }
        if self.opts.sync == SyncMode::EveryOp {
            self.append_pending()?;
            self.fsync()?;
        }
        Ok(())
    }

    /// Makes everything written durable: the log's new records (one
    /// `fdatasync`), then the promise file if a newer promise was written.
    /// Both before returning, so before the machine hears `on_persisted`
    /// and releases the batch's acknowledgements and promises.
    fn sync(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            // EveryOp mode wrote and synced each op already; otherwise there
            // is nothing new in the log (the promise file may still be behind
            // after a write error; sync_promise is a no-op otherwise).
            return self.sync_promise();
        }
        self.append_pending()?;
        self.fsync()
    }

    fn maintain(&mut self, replica: &Replica) -> io::Result<()> {
        if self.catching_up && !replica.is_resyncing() {
            // Caught up: what the directory holds is now a trustworthy copy.
            self.sync()?;
            let mut removed = Vec::new();
            // The stronger marker first: stopped in between, the next start
            // only catches up from the log instead of re-syncing in full.
            for marker in [&self.resync_marker, &self.missing_marker] {
                if remove_marker(marker)? {
                    removed.push(marker.display().to_string());
                }
            }
            self.catching_up = false;
            info!(
                node = %self.node(),
                "caught up: holds every row it may have lost (or was promoted on every replica's promise); removed {}",
                if removed.is_empty() { "no marker".to_string() } else { removed.join(", ") }
            );
        }
        if self.snapshot.is_some() {
            return self.settle_snapshot(false);
        }
        if self.log_bytes < self.snapshot_threshold(replica.is_leader()) || !self.pending.is_empty() {
            return Ok(());
        }
        let snap = replica.snapshot_ref();
        if snap.last.lsn <= self.wal().snapshot_last().lsn {
            return Ok(()); // nothing applied since: the log is not ours to drop yet
        }
        // Only the encoding holds the node thread (about a sixth of the
        // whole); the file is written and fsynced by a thread of its own, and
        // a later pass installs it (`settle_snapshot`).
        let began = Instant::now();
        let job = self.wal().begin_snapshot(snap).map_err(wal_io)?;
        let held = began.elapsed();
        let (tx, rx) = crossbeam_channel::bounded(1);
        let delay = test_snapshot_delay();
        let name = format!("{}-snapshot", self.node());
        // The writer owns only the job (its temporary file), never the WAL.
        let spawned = std::thread::Builder::new().name(name).spawn(move || {
            if let Some(d) = delay {
                std::thread::sleep(d);
            }
            let _ = tx.send(job.write());
        });
        if let Err(e) = spawned {
            return Err(io::Error::new(e.kind(), format!("cannot start the snapshot writer thread: {e}")));
        }
        self.snapshot = Some(SnapshotInFlight { done: rx, began, held, log_bytes: self.log_bytes });
        self.log_bytes = 0;
        if std::env::var_os(ENV_BUG_SNAPSHOT_ON_LOOP).is_some() {
            // The planted bug: wait here, as the node thread used to.
            return self.settle_snapshot(true);
        }
        Ok(())
    }
}

/// A snapshot being written by its thread.
struct SnapshotInFlight {
    done: crossbeam_channel::Receiver<Result<SnapshotJob, WalError>>,
    began: Instant,
    /// How long encoding it held the node thread.
    held: Duration,
    /// Log bytes written since the previous snapshot, when it began.
    log_bytes: u64,
}

/// `KVSTORE_TEST_SNAPSHOT_DELAY_MS`: the snapshot writer waits this long
/// before writing (tests use it to hold a snapshot in flight).
pub const ENV_TEST_SNAPSHOT_DELAY: &str = "KVSTORE_TEST_SNAPSHOT_DELAY_MS";

/// `KVSTORE_BUG_SNAPSHOT_ON_LOOP`: re-plants the old behaviour, the node
/// thread waiting while the snapshot is written, so a test can show that it
/// notices (tests/kvnode_snapshot.rs).
pub const ENV_BUG_SNAPSHOT_ON_LOOP: &str = "KVSTORE_BUG_SNAPSHOT_ON_LOOP";

fn test_snapshot_delay() -> Option<Duration> {
    let ms: u64 = std::env::var(ENV_TEST_SNAPSHOT_DELAY).ok()?.parse().ok()?;
    Some(Duration::from_millis(ms))
}

impl WalStore {
    /// Installs the snapshot in flight once its thread has written it; with
    /// `wait`, waits for that first (before an `InstallSnapshot`, a reopen,
    /// or a stop, none of which may overlap it).
    fn settle_snapshot(&mut self, wait: bool) -> io::Result<()> {
        let Some(flight) = &self.snapshot else { return Ok(()) };
        let result = if wait {
            flight.done.recv().map_err(|_| ())
        } else {
            match flight.done.try_recv() {
                Ok(r) => Ok(r),
                Err(crossbeam_channel::TryRecvError::Empty) => return Ok(()),
                Err(crossbeam_channel::TryRecvError::Disconnected) => Err(()),
            }
        };
        let flight = self.snapshot.take().expect("checked");
        let Ok(written) = result else {
            return Err(io::Error::other("the snapshot writer thread ended without an answer"));
        };
        let job = written.map_err(wal_io)?;
        let (last, keys) = (job.last(), job.keys());
        let Some(wal) = self.wal.as_mut() else { return Ok(()) }; // closed meanwhile: the job removes its file
        let Some(report) = wal.finish_snapshot(job).map_err(wal_io)? else {
            info!(node = %self.node(), "snapshot up to {last} dropped: a newer one was installed while it was written");
            return Ok(());
        };
        let took = flight.began.elapsed();
        self.stats.snapshots += 1;
        self.stats.fsyncs += 1;
        self.stats.snapshot_ms_max = self.stats.snapshot_ms_max.max(took.as_millis() as u64);
        self.stats.snapshot_held_ms_max = self.stats.snapshot_held_ms_max.max(flight.held.as_millis() as u64);
        self.snapshot_bytes = report.file_bytes;
        info!(
            node = %self.node(),
            "snapshot up to {last} ({keys} keys, {} bytes) after ~{} bytes of log, in {:?} (the node thread held for {:?} of it); removed {} old files",
            report.file_bytes,
            flight.log_bytes,
            took,
            flight.held,
            report.removed.len()
        );
        Ok(())
    }
}

impl Drop for WalStore {
    fn drop(&mut self) {
        // A stop waits for the snapshot in flight, so it does not leave a
        // temporary file behind (a crash does; the next open removes it).
        if let Err(e) = self.settle_snapshot(true) {
            warn!(node = %self.node(), "snapshot in flight at stop not installed: {e}");
        }
        let s = self.stats;
        if s.ops > 0 {
            let fsyncs = match self.opts.sync {
                SyncMode::Off => "no fsyncs (--no-fsync)".to_string(),
                _ => format!(
                    "{} fsyncs ({:.1} ops per fsync)",
                    s.fsyncs,
                    s.ops as f64 / s.fsyncs.max(1) as f64
                ),
            };
            info!(
                node = %self.node(),
                "WAL: {} ops in {fsyncs}, {} snapshots (longest {} ms, holding the node thread at most {} ms), {} promise file writes",
                s.ops,
                s.snapshots,
                s.snapshot_ms_max,
                s.snapshot_held_ms_max,
                s.promise_writes
            );
        }
    }
}

fn log_recovery(node: NodeId, dir: &Path, r: &RecoveryReport, began: Instant) {
    if r.fresh {
        info!(node = %node, "new write-ahead log in {}", dir.display());
        return;
    }
    let snapshot = match (&r.snapshot_file, r.snapshot_last) {
        (Some(_), Some(last)) => format!("snapshot up to {last}"),
        _ => "no snapshot".to_string(),
    };
    info!(
        node = %node,
        "recovered {} in {:?}: {snapshot}, {} replayed from {}",
        dir.display(),
        began.elapsed(),
        plural(r.records_replayed, "record"),
        plural(r.segments_replayed as u64, "segment")
    );
    for (path, why) in &r.snapshots_skipped {
        warn!(node = %node, "snapshot {} unreadable ({why}); recovered from an older one and the log", path.display());
    }
}

/// Bytes in the directory's segment files (the log a snapshot would retire).
fn segment_bytes_on_disk(dir: &Path) -> u64 {
    let Ok(entries) = fs::read_dir(dir) else { return 0 };
    entries
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_str().is_some_and(|n| n.starts_with("wal-")))
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

/// Roughly the bytes an op takes in the log: payload plus record header.
/// Used only to decide when to snapshot, so it need not be exact.
fn approx_record_bytes(op: &PersistOp) -> u64 {
    const RECORD_OVERHEAD: u64 = 12;
    const ROW_OVERHEAD: u64 = 32; // epoch, lsn, request id, lengths, tags
    match op {
        PersistOp::Append(rows) => {
            RECORD_OVERHEAD
                + rows
                    .iter()
                    .map(|r| match &r.body {
                        RowBody::Noop => ROW_OVERHEAD,
                        RowBody::Put { key, value, .. } => {
                            ROW_OVERHEAD + key.len() as u64 + value.as_ref().map_or(0, |v| v.len() as u64)
                        }
                    })
                    .sum::<u64>()
        }
        PersistOp::Promise(_) | PersistOp::TruncateAfter(_) => RECORD_OVERHEAD + 10,
        PersistOp::InstallSnapshot(_) => RECORD_OVERHEAD,
    }
}

fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

fn sync_dir(dir: &Path) -> Result<(), WalError> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|source| WalError::Io { path: dir.to_path_buf(), source })
}

/// `1 segment`, `2 segments`.
fn plural(n: u64, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

/// Creates `DIR` (and its parents) if missing, with its entry made durable.
fn ensure_data_dir(data_dir: &Path) -> Result<(), WalError> {
    match fs::metadata(data_dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(WalError::Foreign { path: data_dir.to_path_buf(), why: "not a directory".into() }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::create_dir_all(data_dir)
                .map_err(|source| WalError::Io { path: data_dir.to_path_buf(), source })?;
            sync_dir(parent_of(data_dir))
        }
        Err(source) => Err(WalError::Io { path: data_dir.to_path_buf(), source }),
    }
}

/// Renames `dir` to `dir.TAG-K` with the first free K, durably.
fn set_aside(dir: &Path, tag: &str) -> Result<PathBuf, WalError> {
    const TRIES_MAX: u32 = 10_000;
    let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or("wal");
    for k in 1..=TRIES_MAX {
        let aside = dir.with_file_name(format!("{name}.{tag}-{k}"));
        if aside.symlink_metadata().is_ok() {
            continue;
        }
        fs::rename(dir, &aside).map_err(|source| WalError::Io { path: dir.to_path_buf(), source })?;
        sync_dir(parent_of(dir))?;
        return Ok(aside);
    }
    Err(WalError::Io {
        path: dir.to_path_buf(),
        source: io::Error::other(format!(
            "{TRIES_MAX} directories already set aside; clean up {name}.{tag}-*"
        )),
    })
}

/// The newest epoch a recovered log shows was promised (what
/// `Replica::recover` would take).
fn stored_promised(stored: &Stored) -> Epoch {
    let snap = stored.snapshot.as_ref().map_or(Epoch(0), |s| s.promised);
    stored.promised.max(stored.last().epoch).max(snap)
}

fn describe_cut(t: &TornTail) -> String {
    format!(
        "cut {} bytes off the end of {} at byte {} ({})",
        t.bytes_discarded,
        t.file.display(),
        t.offset,
        t.fault
    )
}

/// Longest marker text kept (older lines are dropped first).
const MARKER_TEXT_BYTES_MAX: usize = 16 * 1024;

/// Creates `marker` (or adds to it) with one more line of `text`, durably:
/// the file and its directory entry are fsynced before this returns. What
/// counts is that the file exists; the text is for people.
fn add_to_marker(marker: &Path, text: &str) -> Result<(), WalError> {
    let io_err = |source| WalError::Io { path: marker.to_path_buf(), source };
    let mut content = fs::read(marker).unwrap_or_default();
    content.extend_from_slice(format!("{}: {text}\n", unix_seconds()).as_bytes());
    if content.len() > MARKER_TEXT_BYTES_MAX {
        let cut = content.len() - MARKER_TEXT_BYTES_MAX;
        let from = content[cut..].iter().position(|b| *b == b'\n').map_or(cut, |p| cut + p + 1);
        content.drain(..from);
    }
    // Rewritten in place: the file exists throughout, and a torn rewrite
    // still leaves a marker.
    let mut f = OpenOptions::new().write(true).create(true).truncate(false).open(marker).map_err(io_err)?;
    f.write_all(&content).map_err(io_err)?;
    f.set_len(content.len() as u64).map_err(io_err)?;
    f.sync_all().map_err(io_err)?;
    sync_dir(parent_of(marker))
}

/// The marker's text, for a log line (lines joined, at most ~1 KiB).
fn marker_text(marker: &Path) -> String {
    let text = fs::read(marker).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
    let joined = text.lines().collect::<Vec<_>>().join("; ");
    match joined.char_indices().nth(1024) {
        Some((at, _)) => format!("{}...", &joined[..at]),
        None if joined.is_empty() => "no details recorded".to_string(),
        None => joined,
    }
}

#[allow(clippy::disallowed_methods)] // a timestamp for people reading a marker, not for the machine
fn unix_seconds() -> String {
    match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => format!("unix time {}", d.as_secs()),
        Err(_) => "unix time unknown".to_string(),
    }
}

/// Removes `marker` if present (durably); returns whether it was there.
fn remove_marker(marker: &Path) -> io::Result<bool> {
    match fs::remove_file(marker) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    }
    File::open(parent_of(marker))?.sync_all()?;
    Ok(true)
}

#[cfg(test)]
mod tests;
