//! `WalStore` over real files in temporary directories. No timing assertions.

use super::*;
use crate::config::ClusterConfig;
use crate::machine::Snapshot;
use crate::types::{ClientId, Epoch, LogPos, Lsn, RequestId, Row, RowBody};
use std::collections::BTreeMap;

const R1: ReplicaId = ReplicaId(1);

fn row(epoch: u64, lsn: u64) -> Row {
    Row {
        epoch: Epoch(epoch),
        lsn: Lsn(lsn),
        body: RowBody::Put {
            key: format!("k{lsn}"),
            value: Some(format!("value of row {lsn}")),
            req: RequestId { client: ClientId(7), seq: lsn },
        },
    }
}

fn appends(epoch: u64, lsns: std::ops::RangeInclusive<u64>) -> Vec<PersistOp> {
    lsns.map(|l| PersistOp::Append(vec![row(epoch, l)])).collect()
}

fn open(dir: &Path, opts: WalOptions) -> WalStore {
    WalStore::open(dir, R1, opts).expect("open")
}

fn recovered(store: &mut WalStore) -> Stored {
    match store.recover().expect("recover") {
        Start::Recovered(s) => s,
        other => panic!("expected a recovered store, got {other:?}"),
    }
}

fn model(ops: &[PersistOp]) -> Stored {
    let mut s = Stored::default();
    ops.iter().for_each(|op| s.apply(op));
    s
}

fn write_all(store: &mut WalStore, ops: &[PersistOp]) {
    for op in ops {
        store.write(op.clone()).expect("write");
    }
    store.sync().expect("sync");
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

fn snapshot_at(lsn: u64) -> Snapshot {
    let mut kv = BTreeMap::new();
    for l in 1..=lsn {
        kv.insert(format!("k{l}"), format!("value of row {l}"));
    }
    let sessions = BTreeMap::from([(ClientId(7), (lsn, Lsn(lsn)))]);
    Snapshot { promised: Epoch(2), last: LogPos { epoch: Epoch(2), lsn: Lsn(lsn) }, kv, sessions }
}

#[test]
fn writes_survive_reopen_with_one_fsync_per_batch() {
    let tmp = tempfile::tempdir().unwrap();
    let mut ops = vec![PersistOp::Promise(Epoch(1))];
    ops.extend(appends(1, 1..=50));
    ops.push(PersistOp::TruncateAfter(Lsn(45)));
    {
        let mut s = open(tmp.path(), WalOptions::default());
        assert_eq!(recovered(&mut s), Stored::default());
        write_all(&mut s, &ops[..20]);
        write_all(&mut s, &ops[20..]);
        assert_eq!(s.stats().ops, ops.len() as u64);
        assert_eq!(s.stats().fsyncs, 2, "group commit: one fsync per sync call");
    }
    assert_eq!(names(tmp.path()), ["replica-1", "replica-1.promise"]);
    let mut s = open(tmp.path(), WalOptions::default());
    assert_eq!(recovered(&mut s), model(&ops));
}

#[test]
fn sync_every_op_fsyncs_each_op() {
    let tmp = tempfile::tempdir().unwrap();
    let ops = appends(1, 1..=10);
    let mut s = open(tmp.path(), WalOptions { sync: SyncMode::EveryOp, ..WalOptions::default() });
    write_all(&mut s, &ops);
    assert_eq!(s.stats().fsyncs, 10);
    drop(s);
    let mut s = open(tmp.path(), WalOptions::default());
    assert_eq!(recovered(&mut s), model(&ops));
}

#[test]
fn a_rebuild_reads_back_everything_written() {
    let tmp = tempfile::tempdir().unwrap();
    let mut s = open(tmp.path(), WalOptions::default());
    recovered(&mut s);
    let ops = appends(1, 1..=5);
    for op in &ops {
        s.write(op.clone()).unwrap();
    }
    // Not synced yet: recover syncs first, then reopens the directory.
    assert_eq!(recovered(&mut s), model(&ops));
}

#[test]
fn installed_snapshot_is_a_snapshot_file_and_drops_the_stale_tail() {
    let tmp = tempfile::tempdir().unwrap();
    let snap = snapshot_at(30);
    // Rows 1..=40 of a deposed epoch-1 leader, then the epoch-2 leader's
    // snapshot up to 30, then its rows 31..=33.
    let mut ops = appends(1, 1..=40);
    ops.push(PersistOp::Promise(Epoch(2)));
    ops.push(PersistOp::InstallSnapshot(Box::new(snap.clone())));
    ops.extend(appends(2, 31..=33));
    {
        let mut s = open(tmp.path(), WalOptions::default());
        recovered(&mut s);
        write_all(&mut s, &ops);
        assert_eq!(s.stats().snapshots, 1);
    }
    let wal_dir = tmp.path().join("replica-1");
    assert!(names(&wal_dir).iter().any(|n| n.ends_with(".kvsnap")), "{:?}", names(&wal_dir));
    let mut s = open(tmp.path(), WalOptions::default());
    let got = recovered(&mut s);
    assert_eq!(got, model(&ops));
    assert_eq!(got.snapshot.as_ref().map(|s| s.last.lsn), Some(Lsn(30)));
    assert_eq!(got.rows, vec![row(2, 31), row(2, 32), row(2, 33)]);
}

#[test]
// Waits, boundedly, for the snapshot writer thread.
#[allow(clippy::disallowed_methods)]
fn periodic_snapshot_deletes_old_segments_and_recovers_the_same_state() {
    let tmp = tempfile::tempdir().unwrap();
    let opts = WalOptions { snapshot_log_bytes: 16 * 1024, ..WalOptions::default() };
    let cfg = ClusterConfig::new(3, 1);
    let ops = appends(2, 1..=600);
    {
        let mut s = open(tmp.path(), opts.clone());
        recovered(&mut s);
        write_all(&mut s, &ops);
        let wal_dir = tmp.path().join("replica-1");
        let segments_before = names(&wal_dir).len();
        assert!(segments_before > 4, "small segments: {:?}", names(&wal_dir));
        // A replica that has applied rows up to 500 (from a snapshot, so the
        // test needs no leader to commit them).
        let mut stored = model(&ops);
        stored.rows.drain(..500);
        stored.snapshot = Some(snapshot_at(500));
        let replica = Replica::recover(R1, cfg.clone(), stored);
        assert_eq!(replica.applied(), Lsn(500));
        s.maintain(&replica).unwrap();
        assert!(s.snapshot.is_some(), "the snapshot is written by its own thread");
        assert_eq!(s.stats().snapshots, 0, "installed only once written");
        // The next passes install it once the writer is done.
        let waited = std::time::Instant::now();
        while s.snapshot.is_some() && waited.elapsed() < std::time::Duration::from_secs(20) {
            std::thread::sleep(std::time::Duration::from_millis(5));
            s.maintain(&replica).unwrap();
        }
        assert_eq!(s.stats().snapshots, 1);
        let after = names(&wal_dir);
        assert!(after.len() < segments_before, "{after:?}");
        assert_eq!(after.iter().filter(|n| n.ends_with(".kvsnap")).count(), 1);
        // Nothing new was applied: no second snapshot however often it runs.
        s.log_bytes = u64::MAX / 2;
        s.maintain(&replica).unwrap();
        assert_eq!(s.stats().snapshots, 1);
    }
    let mut s = open(tmp.path(), opts);
    let got = recovered(&mut s);
    assert_eq!(got.snapshot.as_ref().map(|s| s.last.lsn), Some(Lsn(500)));
    assert_eq!(got.last().lsn, Lsn(600));
    assert_eq!(got.rows.first().map(|r| r.lsn), Some(Lsn(501)));
}

#[test]
fn foreign_file_or_newer_version_is_refused_untouched() {
    let tmp = tempfile::tempdir().unwrap();
    let wal_dir = tmp.path().join("replica-1");
    fs::create_dir_all(&wal_dir).unwrap();
    fs::write(wal_dir.join("notes.txt"), b"mine").unwrap();
    match WalStore::open(tmp.path(), R1, WalOptions::default()) {
        Err(WalError::Foreign { path, .. }) => assert!(path.ends_with("notes.txt")),
        Err(e) => panic!("expected Foreign, got {e}"),
        Ok(_) => panic!("expected Foreign, got a store"),
    }
    assert_eq!(names(&wal_dir), ["notes.txt"]);
    assert_eq!(names(tmp.path()), ["replica-1"]);

    let tmp = tempfile::tempdir().unwrap();
    drop(open(tmp.path(), WalOptions::default()));
    let seg = fs::read_dir(tmp.path().join("replica-1")).unwrap().next().unwrap().unwrap().path();
    let mut bytes = fs::read(&seg).unwrap();
    bytes[8..12].copy_from_slice(&2u32.to_le_bytes());
    fs::write(&seg, &bytes).unwrap();
    assert!(matches!(
        WalStore::open(tmp.path(), R1, WalOptions::default()),
        Err(WalError::NewerVersion { found: 2, .. })
    ));
    assert_eq!(fs::read(&seg).unwrap(), bytes);
}

/// Flips a byte in the first of many records, so the damage is not a torn tail.
fn corrupt_first_record(data_dir: &Path) {
    let wal_dir = data_dir.join("replica-1");
    let seg = fs::read_dir(&wal_dir).unwrap().next().unwrap().unwrap().path();
    let mut bytes = fs::read(&seg).unwrap();
    bytes[crate::wal::SEGMENT_HEADER_BYTES + crate::wal::RECORD_HEADER_BYTES + 2] ^= 0x40;
    fs::write(&seg, &bytes).unwrap();
}

#[test]
fn corruption_sets_the_directory_aside_and_resyncs_until_caught_up() {
    let tmp = tempfile::tempdir().unwrap();
    let ops = appends(1, 1..=20);
    {
        let mut s = open(tmp.path(), WalOptions::default());
        recovered(&mut s);
        write_all(&mut s, &ops);
    }
    corrupt_first_record(tmp.path());
    let damaged = fs::read_dir(tmp.path().join("replica-1")).unwrap().count();

    let mut s = open(tmp.path(), WalOptions::default());
    assert!(matches!(s.recover().unwrap(), Start::Resync { promised: Epoch(1) }));
    assert_eq!(
        names(tmp.path()),
        ["replica-1", "replica-1.corrupt-1", "replica-1.promise", "replica-1.resyncing"]
    );
    assert_eq!(fs::read_dir(tmp.path().join("replica-1.corrupt-1")).unwrap().count(), damaged);
    // The re-sync copies a little, then the process stops before catching up.
    write_all(&mut s, &appends(1, 1..=3));
    drop(s);

    // The next start does not trust the partial copy either.
    let mut s = open(tmp.path(), WalOptions::default());
    assert!(matches!(s.recover().unwrap(), Start::Resync { promised: Epoch(1) }));
    assert_eq!(
        names(tmp.path()),
        [
            "replica-1",
            "replica-1.corrupt-1",
            "replica-1.promise",
            "replica-1.resync-partial-1",
            "replica-1.resyncing"
        ]
    );
    let cfg = ClusterConfig::new(3, 1);
    // Still re-syncing: the marker stays.
    s.maintain(&Replica::resync(R1, cfg.clone(), Epoch(1))).unwrap();
    assert!(tmp.path().join("replica-1.resyncing").exists());
    // Caught up: the marker goes, and the next start trusts the directory.
    write_all(&mut s, &appends(1, 1..=20));
    s.maintain(&Replica::new(R1, cfg)).unwrap();
    assert!(!tmp.path().join("replica-1.resyncing").exists());
    drop(s);
    let mut s = open(tmp.path(), WalOptions::default());
    assert_eq!(recovered(&mut s), model(&ops));
}

#[test]
fn snapshot_thresholds_are_staggered_and_deferred_on_a_leader() {
    let opts = WalOptions { snapshot_log_bytes: 64 * 1024, ..WalOptions::default() };
    let tmp = tempfile::tempdir().unwrap();
    let thresholds: Vec<(u64, u64)> = (1..=5)
        .map(|n| {
            let s = WalStore::open(tmp.path(), ReplicaId(n), opts.clone()).unwrap();
            (s.snapshot_threshold(false) / 1024, s.snapshot_threshold(true) / 1024)
        })
        .collect();
    assert_eq!(thresholds, [(64, 256), (80, 320), (96, 384), (112, 448), (64, 256)]);
}

fn start(store: &mut WalStore) -> Start {
    store.recover().expect("recover")
}

fn promise_file_epoch(data_dir: &Path) -> Epoch {
    let bytes = fs::read(data_dir.join("replica-1.promise")).unwrap();
    let copies = [crate::wal::decode_slot(&bytes, 0), crate::wal::decode_slot(&bytes, 1)];
    copies.iter().filter_map(|c| c.ok()).max().expect("a valid copy").1
}

fn wal_segments(data_dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(data_dir.join("replica-1"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "kvlog"))
        .collect();
    v.sort();
    v
}

/// Small segments (4 KiB), so a log of a few hundred rows spans many files.
fn small() -> WalOptions {
    WalOptions { snapshot_log_bytes: 16 * 1024, ..WalOptions::default() }
}

#[test]
fn a_promise_is_in_the_promise_file_once_sync_returns() {
    for sync in [SyncMode::Group, SyncMode::EveryOp] {
        let tmp = tempfile::tempdir().unwrap();
        let opts = WalOptions { sync, ..WalOptions::default() };
        let mut s = open(tmp.path(), opts.clone());
        recovered(&mut s);
        assert_eq!(promise_file_epoch(tmp.path()), Epoch(0));
        s.write(PersistOp::Promise(Epoch(4))).unwrap();
        s.write(PersistOp::Append(vec![row(4, 1)])).unwrap();
        s.sync().unwrap();
        assert_eq!(promise_file_epoch(tmp.path()), Epoch(4), "{sync:?}");
        // A promise on its own (a Prepare, no rows) is made durable too.
        s.write(PersistOp::Promise(Epoch(6))).unwrap();
        s.sync().unwrap();
        assert_eq!(promise_file_epoch(tmp.path()), Epoch(6), "{sync:?}");
        assert_eq!(s.stats().promise_writes, 2);
        drop(s);
        let mut s = open(tmp.path(), opts);
        assert_eq!(recovered(&mut s).promised, Epoch(6));
    }
}

#[test]
fn a_corrupt_log_keeps_the_promised_epoch() {
    let tmp = tempfile::tempdir().unwrap();
    // Epoch 7 promised early on (a Prepare that led nowhere), then rows of
    // epoch 1 over many segments; then the first segment, which holds the
    // only Promise record, is lost.
    let mut ops = vec![PersistOp::Promise(Epoch(7))];
    ops.extend(appends(1, 1..=600));
    {
        let mut s = open(tmp.path(), small());
        recovered(&mut s);
        write_all(&mut s, &ops);
    }
    let segments = wal_segments(tmp.path());
    assert!(segments.len() > 3, "{segments:?}");
    fs::remove_file(&segments[0]).unwrap();
    assert_eq!(Wal::salvage_promised(tmp.path().join("replica-1")), Epoch(1), "the log alone says e1");

    let mut s = open(tmp.path(), small());
    match start(&mut s) {
        Start::Resync { promised } => assert_eq!(promised, Epoch(7)),
        other => panic!("expected a re-sync, got {other:?}"),
    }
    assert!(tmp.path().join("replica-1.corrupt-1").is_dir());
    // The machine built from it refuses anything older than e7.
    let cfg = ClusterConfig::new(3, 1);
    let r = Replica::resync(R1, cfg, Epoch(7));
    assert_eq!(r.status().promised, Epoch(7));
    // A restart mid re-sync (the partial copy holds nothing of e7) keeps it too.
    write_all(&mut s, &appends(1, 1..=3));
    drop(s);
    let mut s = open(tmp.path(), small());
    assert!(matches!(start(&mut s), Start::Resync { promised: Epoch(7) }));
    assert_eq!(promise_file_epoch(tmp.path()), Epoch(7));
}

#[test]
fn without_a_promise_file_a_corrupt_log_yields_what_can_still_be_read() {
    let tmp = tempfile::tempdir().unwrap();
    let mut ops = appends(2, 1..=5);
    ops.push(PersistOp::Promise(Epoch(5)));
    ops.extend(appends(2, 6..=10));
    {
        let mut s = open(tmp.path(), WalOptions::default());
        recovered(&mut s);
        write_all(&mut s, &ops);
    }
    // A data directory from before promise files, with a damaged record.
    fs::remove_file(tmp.path().join("replica-1.promise")).unwrap();
    corrupt_first_record(tmp.path());
    let mut s = open(tmp.path(), WalOptions::default());
    assert!(matches!(start(&mut s), Start::Resync { promised: Epoch(5) }));
    assert_eq!(promise_file_epoch(tmp.path()), Epoch(5));
}

#[test]
fn without_a_promise_file_the_log_value_is_taken_and_recorded() {
    let tmp = tempfile::tempdir().unwrap();
    let mut ops = vec![PersistOp::Promise(Epoch(3))];
    ops.extend(appends(3, 1..=5));
    {
        let mut s = open(tmp.path(), WalOptions::default());
        recovered(&mut s);
        write_all(&mut s, &ops);
    }
    fs::remove_file(tmp.path().join("replica-1.promise")).unwrap();
    let mut s = open(tmp.path(), WalOptions::default());
    assert_eq!(recovered(&mut s), model(&ops));
    assert_eq!(promise_file_epoch(tmp.path()), Epoch(3));
}

#[test]
fn a_promise_file_newer_than_the_log_wins() {
    let tmp = tempfile::tempdir().unwrap();
    let ops = appends(1, 1..=5);
    {
        let mut s = open(tmp.path(), WalOptions::default());
        recovered(&mut s);
        write_all(&mut s, &ops);
    }
    // The log lost its newest Promise record (say, cut at a record boundary);
    // the file still has it.
    {
        let (mut f, _) = crate::wal::PromiseFile::open(&tmp.path().join("replica-1.promise")).unwrap();
        f.store(Epoch(9), true).unwrap();
    }
    let mut s = open(tmp.path(), WalOptions::default());
    let got = recovered(&mut s);
    assert_eq!(got.promised, Epoch(9));
    assert_eq!(got.rows, model(&ops).rows);
}

#[test]
fn a_damaged_promise_file_is_refused_and_nothing_changes() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let mut s = open(tmp.path(), WalOptions::default());
        recovered(&mut s);
        write_all(&mut s, &[PersistOp::Promise(Epoch(2))]);
    }
    let p = tmp.path().join("replica-1.promise");
    let mut bytes = fs::read(&p).unwrap();
    bytes[20] ^= 1;
    bytes[crate::wal::PROMISE_SLOT1_OFFSET as usize + 20] ^= 1;
    fs::write(&p, &bytes).unwrap();
    let before = names(tmp.path());
    match WalStore::open(tmp.path(), R1, WalOptions::default()) {
        Err(e @ WalError::PromiseLost { .. }) => assert!(e.to_string().contains("replica-1.promise"), "{e}"),
        Err(e) => panic!("expected PromiseLost, got {e}"),
        Ok(_) => panic!("expected PromiseLost, got a store"),
    }
    assert_eq!(names(tmp.path()), before);
    assert_eq!(fs::read(&p).unwrap(), bytes);
}

#[test]
fn a_second_open_is_refused_before_anything_is_set_aside() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let mut s = open(tmp.path(), WalOptions::default());
        recovered(&mut s);
        write_all(&mut s, &appends(1, 1..=20));
    }
    corrupt_first_record(tmp.path());
    let mut first = open(tmp.path(), WalOptions::default());
    assert!(matches!(start(&mut first), Start::Resync { .. }));
    // The re-sync marker is there now: a second process would set aside the
    // first one's live directory, were it not refused first.
    let before = names(tmp.path());
    assert!(matches!(WalStore::open(tmp.path(), R1, WalOptions::default()), Err(WalError::Locked { .. })));
    assert_eq!(names(tmp.path()), before);
}

#[test]
fn a_torn_tail_starts_missing_and_stays_so_across_restarts_until_caught_up() {
    let tmp = tempfile::tempdir().unwrap();
    let ops = appends(1, 1..=20);
    {
        let mut s = open(tmp.path(), WalOptions::default());
        recovered(&mut s);
        write_all(&mut s, &ops);
    }
    // Cut the last record short: exactly what a torn write leaves, and what
    // a damaged last record or a truncated segment look like.
    let last = wal_segments(tmp.path()).pop().unwrap();
    let len = fs::metadata(&last).unwrap().len();
    OpenOptions::new().write(true).open(&last).unwrap().set_len(len - 3).unwrap();
    let marker = tmp.path().join("replica-1.missing");

    let cfg = ClusterConfig::new(3, 1);
    let mut s = open(tmp.path(), WalOptions::default());
    let stored = match start(&mut s) {
        Start::Missing(stored) => stored,
        other => panic!("expected a start with rows missing, got {other:?}"),
    };
    assert_eq!(stored, model(&ops[..19]));
    let text = fs::read_to_string(&marker).expect("the marker exists");
    assert!(text.contains("cut") && text.contains(last.file_name().unwrap().to_str().unwrap()), "{text}");
    // The machine it starts is one that may lack rows.
    let r = Replica::recover_missing(R1, cfg.clone(), stored.clone());
    assert!(r.is_resyncing() && r.status().missing);
    s.maintain(&r).unwrap();
    assert!(marker.exists(), "not caught up yet");
    drop(s);

    // Restarted before catching up: the log is clean now, but still missing.
    let mut s = open(tmp.path(), WalOptions::default());
    match start(&mut s) {
        Start::Missing(again) => assert_eq!(again, stored),
        other => panic!("expected a start with rows missing again, got {other:?}"),
    }
    // Caught up (the machine no longer resyncing): the marker goes.
    write_all(&mut s, &appends(1, 20..=20));
    s.maintain(&Replica::recover(R1, cfg, model(&ops))).unwrap();
    assert!(!marker.exists());
    drop(s);
    let mut s = open(tmp.path(), WalOptions::default());
    assert_eq!(recovered(&mut s), model(&ops));
    assert_eq!(names(tmp.path()), ["replica-1", "replica-1.promise"]);
}

#[test]
fn a_rebuild_of_a_missing_replica_stays_missing() {
    let tmp = tempfile::tempdir().unwrap();
    let ops = appends(1, 1..=5);
    {
        let mut s = open(tmp.path(), WalOptions::default());
        recovered(&mut s);
        write_all(&mut s, &ops);
    }
    let last = wal_segments(tmp.path()).pop().unwrap();
    let mut f = OpenOptions::new().append(true).open(&last).unwrap();
    f.write_all(&[9, 0, 0, 0, 1, 2]).unwrap(); // a record header cut short
    drop(f);
    let mut s = open(tmp.path(), WalOptions::default());
    assert!(matches!(start(&mut s), Start::Missing(_)));
    // The machine is rebuilt (a new cluster configuration) before it caught up.
    assert!(matches!(start(&mut s), Start::Missing(_)));
}

#[test]
fn a_missing_data_dir_is_created() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("a/b");
    let mut s = open(&data, WalOptions::default());
    assert_eq!(recovered(&mut s), Stored::default());
    assert_eq!(names(&data), ["replica-1", "replica-1.promise"]);
    // A file where the directory should be is refused.
    fs::write(tmp.path().join("file"), b"x").unwrap();
    assert!(matches!(
        WalStore::open(&tmp.path().join("file"), R1, WalOptions::default()),
        Err(WalError::Foreign { .. })
    ));
}
