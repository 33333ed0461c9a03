//! Real files in temporary directories. No timing assertions.

use super::*;
use crate::types::{RequestId, RowBody};
use std::collections::BTreeMap;

/// SplitMix64: a tiny seeded generator, so the tests need no RNG crate and
/// every run sees the same workload.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn put(epoch: u64, lsn: u64, key: &str, value: Option<&str>, client: u64, seq: u64) -> Row {
    Row {
        epoch: Epoch(epoch),
        lsn: Lsn(lsn),
        body: RowBody::Put {
            key: key.into(),
            value: value.map(Into::into),
            req: RequestId { client: ClientId(client), seq },
        },
    }
}

/// Generates ops the way a replica does (contiguous appends, promises,
/// truncation of uncommitted rows only) and keeps the expected state.
struct Workload {
    rng: Rng,
    model: Stored,
    epoch: u64,
    commit: u64,
    client_seq: BTreeMap<u64, u64>,
}

impl Workload {
    fn new(seed: u64) -> Workload {
        Workload {
            rng: Rng(seed),
            model: Stored::default(),
            epoch: 1,
            commit: 0,
            client_seq: BTreeMap::new(),
        }
    }

    fn end(&self) -> u64 {
        self.model.rows.len() as u64
    }

    fn next_op(&mut self) -> PersistOp {
        let op = match self.rng.below(20) {
            0 => {
                self.epoch += 1;
                PersistOp::Promise(Epoch(self.epoch))
            }
            1 if self.end() > self.commit => {
                let keep = self.commit + self.rng.below(self.end() - self.commit);
                PersistOp::TruncateAfter(Lsn(keep))
            }
            _ => {
                let n = 1 + self.rng.below(4);
                let rows = (0..n)
                    .map(|i| {
                        let client = self.rng.below(5);
                        let seq = self.client_seq.entry(client).or_insert(0);
                        *seq += 1;
                        let seq = *seq;
                        let key = format!("k{}", self.rng.below(40));
                        let value = (self.rng.below(5) != 0).then(|| format!("v{}", self.rng.next()));
                        put(self.epoch, self.end() + 1 + i, &key, value.as_deref(), client, seq)
                    })
                    .collect();
                PersistOp::Append(rows)
            }
        };
        self.model.apply(&op);
        if self.rng.below(3) == 0 && self.end() > self.commit {
            self.commit += 1 + self.rng.below(self.end() - self.commit);
        }
        op
    }

    /// The applied state at the commit point, as a replica holds it.
    fn snapshot(&self) -> Snapshot {
        self.snapshot_at(self.commit)
    }

    /// The applied state at a committed LSN.
    fn snapshot_at(&self, lsn: u64) -> Snapshot {
        assert!(lsn <= self.commit);
        let mut snap = Snapshot { promised: Epoch(self.epoch), ..Snapshot::default() };
        for row in &self.model.rows[..lsn as usize] {
            if let RowBody::Put { key, value, req } = &row.body {
                match value {
                    Some(v) => snap.kv.insert(key.clone(), v.clone()),
                    None => snap.kv.remove(key),
                };
                snap.sessions.insert(req.client, (req.seq, row.lsn));
            }
            snap.last = row.pos();
        }
        snap
    }
}

fn small_segments() -> WalConfig {
    WalConfig { segment_bytes_max: SEGMENT_BYTES_MIN }
}

fn open_small(dir: &Path) -> (Wal, Recovered, RecoveryReport) {
    Wal::open_with(dir, small_segments()).expect("open")
}

/// Every file name and its bytes, to prove a refusal changed nothing.
fn dir_contents(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fs::read_dir(dir)
        .expect("read dir")
        .map(|e| {
            let e = e.expect("entry");
            (e.file_name().to_string_lossy().into_owned(), fs::read(e.path()).expect("read"))
        })
        .collect()
}

fn segment_paths(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "kvlog"))
        .collect();
    v.sort();
    v
}

fn sample_ops() -> Vec<PersistOp> {
    vec![
        PersistOp::Promise(Epoch(1)),
        PersistOp::Append(vec![Row { epoch: Epoch(1), lsn: Lsn(1), body: RowBody::Noop }]),
        PersistOp::Append(vec![put(1, 2, "a", Some("1"), 7, 1), put(1, 3, "b", None, 7, 2)]),
        PersistOp::TruncateAfter(Lsn(2)),
        PersistOp::Append(vec![put(2, 3, "c", Some("ü"), 8, 1)]),
    ]
}

fn encode_all(ops: &[PersistOp]) -> Vec<u8> {
    let mut buf = Vec::new();
    for op in ops {
        encode_record(op, &mut buf).expect("encode");
    }
    buf
}

// ---- codec ----

#[test]
fn codec_round_trip() {
    let ops = sample_ops();
    let bytes = encode_all(&ops);
    let d = decode_records(&bytes);
    assert_eq!(d.ops, ops);
    assert_eq!(d.valid_bytes, bytes.len());
    assert_eq!(d.tail, Tail::Clean);
    assert_eq!(decode_records(&[]).tail, Tail::Clean);
}

#[test]
fn codec_every_cut_is_a_torn_tail_keeping_the_prefix() {
    let ops = sample_ops();
    let bytes = encode_all(&ops);
    let mut ends = Vec::new();
    let mut buf = Vec::new();
    for op in &ops {
        encode_record(op, &mut buf).expect("encode");
        ends.push(buf.len());
    }
    for cut in 0..bytes.len() {
        let d = decode_records(&bytes[..cut]);
        let whole = ends.iter().filter(|e| **e <= cut).count();
        assert_eq!(d.ops, ops[..whole], "cut at {cut}");
        if ends.contains(&cut) || cut == 0 {
            assert_eq!(d.tail, Tail::Clean, "cut at {cut}");
        } else {
            assert!(matches!(d.tail, Tail::Torn { .. }), "cut at {cut}: {:?}", d.tail);
        }
    }
    // A zero-filled tail (size extended, data never written) is torn too.
    let mut zeros = bytes.clone();
    zeros.extend_from_slice(&[0; 100]);
    let d = decode_records(&zeros);
    assert_eq!(d.ops, ops);
    assert!(matches!(d.tail, Tail::Torn { fault: RecordFault::BadLength { payload_bytes: 0 } }));
}

#[test]
fn codec_damage_before_a_good_record_is_corruption() {
    let ops = sample_ops();
    let bytes = encode_all(&ops);
    // Flip a payload byte, then a length byte, of the first record.
    for at in [RECORD_HEADER_BYTES, 0, 2] {
        let mut bad = bytes.clone();
        bad[at] ^= 0x40;
        let d = decode_records(&bad);
        assert_eq!(d.valid_bytes, 0);
        assert!(d.ops.is_empty());
        assert!(matches!(d.tail, Tail::Corrupt { next_valid: Some(_), .. }), "flip at {at}: {:?}", d.tail);
    }
    // A bad last record is indistinguishable from a torn write.
    let mut bad = bytes.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    let d = decode_records(&bad);
    assert_eq!(d.ops, ops[..ops.len() - 1]);
    assert_eq!(d.tail, Tail::Torn { fault: RecordFault::Checksum });
}

#[test]
fn codec_checksummed_garbage_is_corrupt_not_torn() {
    let payload = [0xFFu8; 5];
    let mut bytes = (payload.len() as u32).to_le_bytes().to_vec();
    bytes.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
    bytes.extend_from_slice(&payload);
    let d = decode_records(&bytes);
    assert_eq!(d.tail, Tail::Corrupt { fault: RecordFault::Undecodable, next_valid: None });
}

#[test]
fn codec_garbage_never_panics() {
    let mut rng = Rng(42);
    let valid = encode_all(&sample_ops());
    for round in 0..3000 {
        let bytes: Vec<u8> = if round % 2 == 0 {
            (0..rng.below(200)).map(|_| rng.next() as u8).collect()
        } else {
            let mut b = valid.clone();
            for _ in 0..1 + rng.below(4) {
                let i = rng.below(b.len() as u64) as usize;
                b[i] = rng.next() as u8;
            }
            b.truncate(rng.below(b.len() as u64 + 1) as usize);
            b
        };
        let d = decode_records(&bytes);
        assert!(d.valid_bytes <= bytes.len());
        let _ = decode_segment_header(&bytes);
        let _ = decode_snapshot_header(&bytes);
    }
}

#[test]
fn codec_headers_round_trip_and_refuse_newer_versions() {
    let h = encode_segment_header(12345);
    assert_eq!(decode_segment_header(&h), Ok(12345));
    let mut newer = h;
    newer[8..12].copy_from_slice(&2u32.to_le_bytes());
    assert_eq!(decode_segment_header(&newer), Err(HeaderFault::NewerVersion { found: 2 }));
    let mut bad = h;
    bad[20] ^= 1;
    assert_eq!(decode_segment_header(&bad), Err(HeaderFault::Checksum));
    assert_eq!(decode_segment_header(b"PK\x03\x04 zip file.."), Err(HeaderFault::Magic));

    let s = SnapshotHeader { replay_from_seq: 9, payload_bytes: 1 << 40, payload_crc32c: 77 };
    assert_eq!(decode_snapshot_header(&encode_snapshot_header(&s)), Ok(s));
}

#[test]
fn codec_refuses_oversized_records_and_leaves_the_buffer() {
    let big = "x".repeat(MAX_RECORD_BYTES);
    let op = PersistOp::Append(vec![put(1, 1, "k", Some(&big), 1, 1)]);
    let mut buf = vec![1, 2, 3];
    assert!(matches!(encode_record(&op, &mut buf), Err(EncodeError::TooLarge { .. })));
    assert_eq!(buf, [1, 2, 3]);
}

#[test]
fn snapshot_ref_encodes_like_snapshot() {
    let mut w = Workload::new(3);
    for _ in 0..200 {
        w.next_op();
    }
    let snap = w.snapshot();
    assert!(!snap.kv.is_empty());
    let owned = postcard::to_stdvec(&snap).expect("encode");
    let borrowed = postcard::to_stdvec(&snap.as_ref()).expect("encode");
    assert_eq!(owned, borrowed);
}

// ---- the log ----

#[test]
fn round_trip() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let (mut wal, rec, report) = Wal::open(&dir).expect("open");
    assert!(report.fresh);
    assert_eq!(rec, Recovered::default());
    let ops = sample_ops();
    wal.append(&ops).expect("append");
    wal.sync().expect("sync");
    drop(wal);

    let (_wal, rec, report) = Wal::open(&dir).expect("reopen");
    assert!(!report.fresh);
    assert_eq!(report.records_replayed, ops.len() as u64);
    let mut expected = Stored::default();
    ops.iter().for_each(|op| expected.apply(op));
    assert_eq!(rec.last(), expected.last());
    assert_eq!(rec.into_stored(), expected);
}

#[test]
fn replay_matches_stored_apply_across_rollovers_and_reopens() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut w = Workload::new(7);
    for round in 0..5 {
        let (mut wal, rec, _) = open_small(tmp.path());
        assert_eq!(rec.into_stored(), w.model, "round {round}");
        for _ in 0..60 {
            let batch: Vec<PersistOp> = (0..1 + w.rng.below(5)).map(|_| w.next_op()).collect();
            wal.append(&batch).expect("append");
            wal.sync().expect("sync");
        }
        assert_eq!(wal.log_end(), w.model.last().lsn);
    }
    let (wal, rec, report) = open_small(tmp.path());
    assert!(wal.segment_count() > 3, "expected rollovers, got {}", wal.segment_count());
    assert_eq!(report.segments_replayed, wal.segment_count());
    assert_eq!(rec.into_stored(), w.model);
}

#[test]
fn segment_rollover_respects_the_size_limit() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (mut wal, _, _) = open_small(tmp.path());
    let value = "v".repeat(500);
    let ops: Vec<PersistOp> =
        (1..=40).map(|i| PersistOp::Append(vec![put(1, i, "k", Some(&value), 1, i)])).collect();
    wal.append(&ops).expect("append");
    wal.sync().expect("sync");
    assert_eq!(wal.next_seq(), 40);
    let paths = segment_paths(tmp.path());
    assert!(paths.len() >= 5, "{} segments", paths.len());
    assert_eq!(paths.len(), wal.segment_count());
    for p in &paths {
        assert!(fs::metadata(p).expect("meta").len() <= SEGMENT_BYTES_MIN);
    }
    // Names carry the first record's sequence number, contiguously.
    assert!(paths[0].ends_with(segment_name(0)));
    drop(wal);
    let (_, rec, _) = open_small(tmp.path());
    assert_eq!(rec.rows.len(), 40);
}

#[test]
fn torn_tail_is_dropped_and_the_file_truncated() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (mut wal, _, _) = Wal::open(tmp.path()).expect("open");
    let ops: Vec<PersistOp> =
        (1..=10).map(|i| PersistOp::Append(vec![put(1, i, "k", Some("value"), 1, i)])).collect();
    wal.append(&ops).expect("append");
    wal.sync().expect("sync");
    drop(wal);

    let seg = &segment_paths(tmp.path())[0];
    let full_bytes = fs::metadata(seg).expect("meta").len();
    let last_record_bytes = encode_all(&ops[9..]).len() as u64;
    let cut_bytes = full_bytes - 3; // mid-way through the last record
    OpenOptions::new().write(true).open(seg).expect("open").set_len(cut_bytes).expect("cut");

    let (mut wal, rec, report) = Wal::open(tmp.path()).expect("reopen");
    let rows = rec.rows.clone();
    assert_eq!(rows.len(), 9, "earlier records intact, torn one gone");
    assert_eq!(rows.last().map(|r| r.lsn), Some(Lsn(9)));
    let torn = report.torn_tail.expect("torn tail reported");
    assert_eq!(torn.offset, full_bytes - last_record_bytes);
    assert_eq!(torn.bytes_discarded, last_record_bytes - 3);
    assert_eq!(fs::metadata(seg).expect("meta").len(), torn.offset, "file truncated");

    // The log goes on from there.
    wal.append(&[PersistOp::Append(vec![put(1, 10, "k", Some("again"), 1, 10)])]).expect("append");
    wal.sync().expect("sync");
    drop(wal);
    let (_, rec, report) = Wal::open(tmp.path()).expect("reopen");
    assert!(report.torn_tail.is_none());
    assert_eq!(rec.rows.len(), 10);
}

#[test]
fn unfinished_segment_creation_is_repaired() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (mut wal, _, _) = Wal::open(tmp.path()).expect("open");
    wal.append(&sample_ops()).expect("append");
    wal.sync().expect("sync");
    let next = wal.next_seq();
    drop(wal);
    // A crash during rollover: the new file exists with half a header.
    let path = tmp.path().join(segment_name(next));
    fs::write(&path, &encode_segment_header(next)[..10]).expect("write");

    let (mut wal, rec, _) = Wal::open(tmp.path()).expect("reopen");
    assert_eq!(rec.rows.len(), 3);
    assert_eq!(wal.segment_count(), 2);
    assert_eq!(fs::read(&path).expect("read"), encode_segment_header(next));
    wal.append(&[PersistOp::Promise(Epoch(9))]).expect("append");
    wal.sync().expect("sync");
    drop(wal);
    let (_, rec, _) = Wal::open(tmp.path()).expect("reopen");
    assert_eq!(rec.promised, Epoch(9));
}

#[test]
fn corruption_mid_log_names_file_and_offset_and_changes_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (mut wal, _, _) = Wal::open(tmp.path()).expect("open");
    wal.append(&sample_ops()).expect("append");
    wal.sync().expect("sync");
    drop(wal);
    let seg = segment_paths(tmp.path())[0].clone();
    let mut bytes = fs::read(&seg).expect("read");
    let first_record_bytes = encode_all(&sample_ops()[..1]).len();
    // A byte inside the second record's payload.
    let at = SEGMENT_HEADER_BYTES + first_record_bytes + RECORD_HEADER_BYTES + 1;
    bytes[at] ^= 0x01;
    fs::write(&seg, &bytes).expect("write");
    let before = dir_contents(tmp.path());

    match Wal::open(tmp.path()) {
        Err(WalError::Corrupt { file, offset, why }) => {
            assert_eq!(file, seg);
            assert_eq!(offset, (SEGMENT_HEADER_BYTES + first_record_bytes) as u64);
            assert!(why.contains("checksum"), "{why}");
        }
        Err(e) => panic!("expected Corrupt, got {e}"),
        Ok(_) => panic!("expected Corrupt, got a log"),
    }
    assert_eq!(dir_contents(tmp.path()), before);
}

#[test]
fn torn_sealed_segment_is_corruption() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (mut wal, _, _) = open_small(tmp.path());
    let value = "v".repeat(500);
    let ops: Vec<PersistOp> =
        (1..=20).map(|i| PersistOp::Append(vec![put(1, i, "k", Some(&value), 1, i)])).collect();
    wal.append(&ops).expect("append");
    wal.sync().expect("sync");
    drop(wal);
    let first = segment_paths(tmp.path())[0].clone();
    let len = fs::metadata(&first).expect("meta").len();
    OpenOptions::new().write(true).open(&first).expect("open").set_len(len - 1).expect("cut");
    assert!(
        matches!(Wal::open_with(tmp.path(), small_segments()), Err(WalError::Corrupt { file, .. }) if file == first)
    );
}

#[test]
fn missing_segment_is_corruption() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (mut wal, _, _) = open_small(tmp.path());
    let value = "v".repeat(500);
    let ops: Vec<PersistOp> =
        (1..=30).map(|i| PersistOp::Append(vec![put(1, i, "k", Some(&value), 1, i)])).collect();
    wal.append(&ops).expect("append");
    wal.sync().expect("sync");
    drop(wal);
    let segs = segment_paths(tmp.path());
    fs::remove_file(&segs[1]).expect("remove");
    assert!(
        matches!(Wal::open_with(tmp.path(), small_segments()), Err(WalError::Corrupt { file, .. }) if file == segs[2])
    );
}

#[test]
fn newer_version_is_refused_untouched() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (mut wal, _, _) = Wal::open(tmp.path()).expect("open");
    wal.append(&sample_ops()).expect("append");
    wal.sync().expect("sync");
    drop(wal);
    let seg = segment_paths(tmp.path())[0].clone();
    let mut bytes = fs::read(&seg).expect("read");
    bytes[8..12].copy_from_slice(&(FORMAT_VERSION + 1).to_le_bytes());
    bytes.truncate(bytes.len() - 2); // would look torn to this version
    fs::write(&seg, &bytes).expect("write");
    let before = dir_contents(tmp.path());

    match Wal::open(tmp.path()) {
        Err(WalError::NewerVersion { file, found, supported }) => {
            assert_eq!(file, seg);
            assert_eq!(found, FORMAT_VERSION + 1);
            assert_eq!(supported, FORMAT_VERSION);
        }
        Err(e) => panic!("expected NewerVersion, got {e}"),
        Ok(_) => panic!("expected NewerVersion, got a log"),
    }
    assert_eq!(dir_contents(tmp.path()), before);
}

#[test]
fn foreign_directory_is_refused_untouched() {
    let tmp = tempfile::tempdir().expect("tempdir");
    fs::write(tmp.path().join("notes.txt"), "my thesis").expect("write");
    fs::create_dir(tmp.path().join("photos")).expect("mkdir");
    let before = dir_contents_shallow(tmp.path());
    match Wal::open(tmp.path()) {
        Err(WalError::Foreign { path, why }) => {
            assert!(path.starts_with(tmp.path()), "{}", path.display());
            assert!(!why.is_empty());
        }
        Err(e) => panic!("expected Foreign, got {e}"),
        Ok(_) => panic!("expected Foreign, got a log"),
    }
    assert_eq!(dir_contents_shallow(tmp.path()), before);

    // A file where the directory should be.
    let file = tmp.path().join("notes.txt");
    assert!(matches!(Wal::open(&file), Err(WalError::Foreign { .. })));
    assert_eq!(fs::read(&file).expect("read"), b"my thesis");
}

fn dir_contents_shallow(dir: &Path) -> BTreeMap<String, Option<Vec<u8>>> {
    fs::read_dir(dir)
        .expect("read dir")
        .map(|e| {
            let e = e.expect("entry");
            let bytes = fs::read(e.path()).ok();
            (e.file_name().to_string_lossy().into_owned(), bytes)
        })
        .collect()
}

#[test]
fn second_open_is_refused_while_locked() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (wal, _, _) = Wal::open(tmp.path()).expect("open");
    assert!(matches!(Wal::open(tmp.path()), Err(WalError::Locked { .. })));
    drop(wal);
    Wal::open(tmp.path()).expect("reopen after close");
}

#[test]
fn oversized_op_writes_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (mut wal, _, _) = Wal::open(tmp.path()).expect("open");
    let big = "x".repeat(MAX_RECORD_BYTES);
    let ops = [PersistOp::Promise(Epoch(1)), PersistOp::Append(vec![put(1, 1, "k", Some(&big), 1, 1)])];
    let err = wal.append(&ops).expect_err("too large");
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    assert_eq!(wal.next_seq(), 0);
    // Not poisoned: the log is still usable.
    wal.append(&ops[..1]).expect("append");
    wal.sync().expect("sync");
}

#[test]
fn group_committer_reports_the_highest_durable_id() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (mut wal, _, _) = Wal::open(tmp.path()).expect("open");
    let mut gc = GroupCommitter::new(50);
    assert_eq!(gc.commit(&mut wal).expect("empty commit"), None);
    for i in 1..=50 {
        assert!(!gc.is_full());
        gc.push(100 + i, PersistOp::Append(vec![put(1, i, "k", Some("v"), 1, i)]));
    }
    assert!(gc.is_full());
    assert_eq!(gc.commit(&mut wal).expect("commit"), Some(150));
    assert!(gc.is_empty());
    drop(wal);
    let (_, rec, _) = Wal::open(tmp.path()).expect("reopen");
    assert_eq!(rec.rows.len(), 50);
}

// ---- snapshots ----

#[test]
fn snapshot_and_compaction_recover_the_same_state() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut w = Workload::new(11);
    let (mut wal, _, _) = open_small(tmp.path());
    let mut last_snapshot = None;
    let mut segments_removed = 0;
    for round in 0..6 {
        for _ in 0..80 {
            let batch: Vec<PersistOp> = (0..1 + w.rng.below(4)).map(|_| w.next_op()).collect();
            wal.append(&batch).expect("append");
        }
        wal.sync().expect("sync");
        let segments_before = wal.segment_count();
        // Lagging behind the commit point leaves a tail of several segments.
        let at = w
            .commit
            .saturating_sub(150)
            .max(last_snapshot.as_ref().map_or(0, |s: &(Snapshot, SnapshotReport)| s.0.last.lsn.0));
        let snap = w.snapshot_at(at);
        let report = wal.snapshot(snap.as_ref()).expect("snapshot");
        assert!(report.file.exists());
        assert!(wal.segment_count() <= segments_before, "round {round}");
        segments_removed +=
            report.removed.iter().filter(|p| p.extension().is_some_and(|x| x == "kvlog")).count();
        last_snapshot = Some((snap, report));
    }
    let (snap, _) = last_snapshot.expect("took snapshots");
    assert!(segments_removed > 0, "compaction deleted no segment");
    let live_segments = wal.segment_count();
    drop(wal);

    // Exactly one snapshot file, and only live segments, remain.
    let names: Vec<String> = dir_contents(tmp.path()).into_keys().collect();
    assert_eq!(names.iter().filter(|n| n.ends_with(".kvsnap")).count(), 1, "{names:?}");
    assert_eq!(segment_paths(tmp.path()).len(), live_segments);
    assert!(segment_paths(tmp.path())[0] > tmp.path().join(segment_name(0)), "old segments deleted");

    for _ in 0..2 {
        let (_, rec, rep) = open_small(tmp.path());
        let got = rec.snapshot.clone().expect("snapshot loaded");
        assert_eq!(got, snap);
        assert_eq!(rep.snapshot_last, Some(snap.last));
        assert_eq!(rec.rows, w.model.rows[snap.last.lsn.0 as usize..]);
        assert_eq!(rec.promised, w.model.promised.max(Epoch(w.epoch)));
        assert_eq!(rec.last(), w.model.last());
        let stored = rec.into_stored();
        assert_eq!(stored.snapshot.as_ref(), Some(&snap), "the snapshot is carried into Stored");
        assert_eq!(stored.last(), w.model.last());
    }
}

#[test]
fn log_after_snapshot_replays_truncation_of_its_tail() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (mut wal, _, _) = Wal::open(tmp.path()).expect("open");
    let rows: Vec<Row> = (1..=10).map(|i| put(1, i, &format!("k{i}"), Some("old"), 1, i)).collect();
    wal.append(&[PersistOp::Append(rows.clone())]).expect("append");
    // Rows 1..=7 committed and applied.
    let kv: BTreeMap<String, String> = (1..=7).map(|i| (format!("k{i}"), "old".to_string())).collect();
    let sessions = BTreeMap::from([(ClientId(1), (7, Lsn(7)))]);
    let snap = SnapshotRef { promised: Epoch(1), last: rows[6].pos(), kv: &kv, sessions: &sessions };
    let report = wal.snapshot(snap).expect("snapshot");
    assert_eq!(report.replay_from_seq, 0, "rows 8.. live in the first segment");
    // A new leader drops 9 and 10 and writes its own.
    let new = vec![put(2, 9, "x", Some("new"), 2, 1), put(2, 10, "y", None, 2, 2)];
    wal.append(&[
        PersistOp::Promise(Epoch(2)),
        PersistOp::TruncateAfter(Lsn(8)),
        PersistOp::Append(new.clone()),
    ])
    .expect("append");
    wal.sync().expect("sync");
    drop(wal);

    let (_, rec, _) = Wal::open(tmp.path()).expect("reopen");
    assert_eq!(rec.snapshot.as_ref().map(|s| s.last), Some(rows[6].pos()));
    assert_eq!(rec.rows, vec![rows[7].clone(), new[0].clone(), new[1].clone()]);
    assert_eq!(rec.promised, Epoch(2));
}

#[test]
fn snapshot_ahead_of_the_log_skips_rows_it_holds() {
    // A follower applies rows whose persist is still in flight.
    let tmp = tempfile::tempdir().expect("tempdir");
    let (mut wal, _, _) = Wal::open(tmp.path()).expect("open");
    let rows: Vec<Row> = (1..=15).map(|i| put(1, i, "k", Some("v"), 1, i)).collect();
    wal.append(&[PersistOp::Append(rows[..10].to_vec())]).expect("append");
    let kv = BTreeMap::from([("k".to_string(), "v".to_string())]);
    let sessions = BTreeMap::new();
    let snap = SnapshotRef { promised: Epoch(1), last: rows[11].pos(), kv: &kv, sessions: &sessions };
    let report = wal.snapshot(snap).expect("snapshot");
    assert_eq!(report.replay_from_seq, 1, "nothing before the snapshot is needed");
    wal.append(&[PersistOp::Append(rows[10..].to_vec())]).expect("append");
    wal.sync().expect("sync");
    drop(wal);
    let (_, rec, _) = Wal::open(tmp.path()).expect("reopen");
    assert_eq!(rec.rows, rows[12..]);
    assert_eq!(rec.last(), rows[14].pos());
}

#[test]
fn snapshot_cannot_go_backwards() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (mut wal, _, _) = Wal::open(tmp.path()).expect("open");
    let kv = BTreeMap::new();
    let sessions = BTreeMap::new();
    let at = |lsn| SnapshotRef {
        promised: Epoch(1),
        last: LogPos { epoch: Epoch(1), lsn: Lsn(lsn) },
        kv: &kv,
        sessions: &sessions,
    };
    wal.snapshot(at(5)).expect("snapshot");
    assert!(matches!(wal.snapshot(at(4)), Err(WalError::InvalidSnapshot(_))));
    wal.snapshot(at(5)).expect("same position again is fine");
}

#[test]
fn corrupt_snapshot_falls_back_to_a_whole_log_or_refuses() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (mut wal, _, _) = Wal::open(tmp.path()).expect("open");
    let ops = sample_ops();
    wal.append(&ops).expect("append");
    // Nothing committed: the snapshot covers no row, so no segment goes.
    let kv = BTreeMap::new();
    let sessions = BTreeMap::new();
    let snap = SnapshotRef { promised: Epoch(1), last: LogPos::default(), kv: &kv, sessions: &sessions };
    let report = wal.snapshot(snap).expect("snapshot");
    drop(wal);
    let mut bytes = fs::read(&report.file).expect("read");
    let last = bytes.len() - 1;
    bytes[last] ^= 0xFF;
    fs::write(&report.file, &bytes).expect("write");

    let (_, rec, rep) = Wal::open(tmp.path()).expect("falls back to the whole log");
    assert_eq!(rep.snapshots_skipped.len(), 1);
    assert!(rec.snapshot.is_none());
    let mut expected = Stored::default();
    ops.iter().for_each(|op| expected.apply(op));
    assert_eq!(rec.into_stored(), expected);
    assert!(report.file.exists(), "the bad snapshot is kept as evidence");

    // Once the log before a snapshot is gone, a bad snapshot is fatal.
    let tmp2 = tempfile::tempdir().expect("tempdir");
    let (mut wal, _, _) = open_small(tmp2.path());
    let value = "v".repeat(500);
    let rows: Vec<Row> = (1..=30).map(|i| put(1, i, "k", Some(&value), 1, i)).collect();
    for r in &rows {
        wal.append(&[PersistOp::Append(vec![r.clone()])]).expect("append");
    }
    let kv = BTreeMap::from([("k".to_string(), value.clone())]);
    let snap = SnapshotRef { promised: Epoch(1), last: rows[29].pos(), kv: &kv, sessions: &sessions };
    let report = wal.snapshot(snap).expect("snapshot");
    assert!(!report.removed.is_empty());
    drop(wal);
    let mut bytes = fs::read(&report.file).expect("read");
    bytes[SNAPSHOT_HEADER_BYTES + 2] ^= 0x10;
    fs::write(&report.file, &bytes).expect("write");
    let before = dir_contents(tmp2.path());
    assert!(
        matches!(Wal::open_with(tmp2.path(), small_segments()), Err(WalError::Corrupt { file, .. }) if file == report.file)
    );
    assert_eq!(dir_contents(tmp2.path()), before);
}

#[test]
fn leftover_snapshot_temp_file_is_removed() {
    let tmp = tempfile::tempdir().expect("tempdir");
    drop(Wal::open(tmp.path()).expect("open"));
    let stray = tmp.path().join(format!("{}.tmp", snapshot_name(0)));
    fs::write(&stray, b"half a snapshot").expect("write");
    let (_, _, report) = Wal::open(tmp.path()).expect("reopen");
    assert_eq!(report.removed, vec![stray.clone()]);
    assert!(!stray.exists());
}

#[test]
fn row_index_tracks_the_segment_of_the_first_row_after_the_base() {
    let mut ix = RowIndex::default();
    let app =
        |from: u64, to: u64| PersistOp::Append((from..=to).map(|i| put(1, i, "k", None, 1, i)).collect());
    ix.apply(&app(1, 5), 0);
    ix.apply(&app(6, 9), 10);
    ix.apply(&app(10, 12), 20);
    assert_eq!(ix.runs, vec![(Lsn(1), 0), (Lsn(6), 10), (Lsn(10), 20)]);
    ix.apply(&PersistOp::TruncateAfter(Lsn(7)), 20);
    assert_eq!((ix.end, ix.runs.len()), (Lsn(7), 2));
    ix.apply(&app(8, 8), 20);
    assert_eq!(ix.runs, vec![(Lsn(1), 0), (Lsn(6), 10), (Lsn(8), 20)]);
    ix.rebase(Lsn(6));
    assert_eq!(ix.runs, vec![(Lsn(7), 10), (Lsn(8), 20)]);
    assert_eq!(ix.first_needed_segment(), Some(10));
    ix.rebase(Lsn(8));
    assert_eq!(ix.first_needed_segment(), None);
    assert_eq!(ix.end, Lsn(8));
}

#[test]
fn crash_between_snapshot_and_cleanup_is_finished_on_open() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut w = Workload::new(5);
    let (mut wal, _, _) = open_small(tmp.path());
    for _ in 0..150 {
        let op = w.next_op();
        wal.append(&[op]).expect("append");
    }
    let first = w.snapshot_at(w.commit / 2);
    let first_report = wal.snapshot(first.as_ref()).expect("snapshot");
    for _ in 0..150 {
        let op = w.next_op();
        wal.append(&[op]).expect("append");
    }
    wal.sync().expect("sync");
    // Keep what the second snapshot is about to delete.
    let kept = dir_contents(tmp.path());
    let snap = w.snapshot();
    let report = wal.snapshot(snap.as_ref()).expect("snapshot");
    assert!(report.removed.contains(&first_report.file));
    assert!(report.removed.len() >= 2, "{:?}", report.removed);
    drop(wal);
    // As if the process died right after the rename: put them back.
    for (name, bytes) in &kept {
        if report.removed.contains(&tmp.path().join(name)) {
            fs::write(tmp.path().join(name), bytes).expect("restore");
        }
    }
    let (_, rec, rep) = open_small(tmp.path());
    let mut removed = rep.removed.clone();
    removed.sort();
    let mut expected = report.removed.clone();
    expected.sort();
    assert_eq!(removed, expected);
    assert_eq!(
        rec.snapshot,
        Some(Snapshot { promised: snap.promised.max(w.model.promised), ..snap.clone() })
    );
    assert_eq!(rec.rows, w.model.rows[snap.last.lsn.0 as usize..]);
}

// ---- open_checked and salvage ----

#[test]
fn open_checked_sees_the_cut_before_it_is_made_and_can_stop_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (mut wal, _, _) = Wal::open(tmp.path()).expect("open");
    wal.append(&sample_ops()).expect("append");
    wal.sync().expect("sync");
    drop(wal);
    let seg = segment_paths(tmp.path())[0].clone();
    let len = fs::metadata(&seg).expect("meta").len();
    OpenOptions::new().write(true).open(&seg).expect("open").set_len(len - 2).expect("cut");
    let before = dir_contents(tmp.path());

    // The hook sees the cut while the file is still whole, and its error
    // leaves the directory untouched.
    let mut seen = None;
    let refused = Wal::open_checked(tmp.path(), WalConfig::default(), |report| {
        seen = report.torn_tail.clone();
        assert_eq!(fs::metadata(&seg).expect("meta").len(), len - 2, "nothing cut yet");
        Err(WalError::Config("stop".into()))
    });
    assert!(matches!(refused, Err(WalError::Config(_))));
    assert_eq!(seen.as_ref().map(|t| &t.file), Some(&seg));
    assert_eq!(dir_contents(tmp.path()), before);

    // Allowed, the cut is made as in a plain open.
    let mut calls = 0;
    let (_, rec, report) = Wal::open_checked(tmp.path(), WalConfig::default(), |r| {
        calls += 1;
        assert!(r.torn_tail.is_some());
        Ok(())
    })
    .expect("open");
    assert_eq!(calls, 1);
    assert_eq!(report.torn_tail, seen);
    assert_eq!(rec.rows.len(), 2, "the last append (row 3 of e2) was cut");

    // A clean log: called once, with nothing to cut.
    let (_, _, _) = Wal::open_checked(tmp.path(), WalConfig::default(), |r| {
        assert!(r.torn_tail.is_none());
        Ok(())
    })
    .expect("open");
}

#[test]
fn salvage_reads_promises_past_damage() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (mut wal, _, _) = Wal::open_with(tmp.path(), small_segments()).expect("open");
    let mut ops = vec![PersistOp::Append(vec![put(1, 1, "a", Some("1"), 1, 1)])];
    ops.push(PersistOp::Promise(Epoch(4)));
    ops.push(PersistOp::Append(vec![put(3, 2, "b", Some("2"), 1, 2)]));
    wal.append(&ops).expect("append");
    wal.sync().expect("sync");
    drop(wal);
    assert_eq!(Wal::salvage_promised(tmp.path()), Epoch(4));
    // Damage the first record: the promise after it still counts.
    let seg = segment_paths(tmp.path())[0].clone();
    let mut bytes = fs::read(&seg).expect("read");
    bytes[SEGMENT_HEADER_BYTES + RECORD_HEADER_BYTES + 1] ^= 0x01;
    bytes[3] ^= 0x01; // and the segment header
    fs::write(&seg, &bytes).expect("write");
    assert!(matches!(Wal::open(tmp.path()), Err(WalError::Corrupt { .. })));
    assert_eq!(Wal::salvage_promised(tmp.path()), Epoch(4));
    // Nothing readable, or no directory at all: zero, never an error.
    fs::write(&seg, [0xAB; 100]).expect("write");
    assert_eq!(Wal::salvage_promised(tmp.path()), Epoch(0));
    assert_eq!(Wal::salvage_promised(tmp.path().join("absent")), Epoch(0));
}

#[test]
fn a_snapshot_written_while_the_log_grows_recovers_both() {
    // The node thread begins the snapshot, goes on appending (rolling
    // segments) while another thread writes it, then installs it.
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut w = Workload::new(23);
    let (mut wal, _, _) = open_small(tmp.path());
    for _ in 0..300 {
        let op = w.next_op();
        wal.append(&[op]).expect("append");
    }
    wal.sync().expect("sync");
    let snap = w.snapshot_at(w.commit.saturating_sub(40));
    let job = wal.begin_snapshot(snap.as_ref()).expect("begin");
    let tmp_file = tmp.path().join(format!("{}.tmp", snapshot_name(job.replay_from_seq)));
    let segments_at_begin = wal.segment_count();
    let writer = std::thread::Builder::new().spawn(move || job.write()).expect("thread");
    for _ in 0..300 {
        let op = w.next_op();
        wal.append(&[op]).expect("append");
    }
    wal.sync().expect("sync");
    assert!(wal.segment_count() > segments_at_begin, "the log rolled while the job was out");
    let job = writer.join().expect("writer").expect("write");
    assert!(tmp_file.exists(), "written to its temporary file only");
    let report = wal.finish_snapshot(job).expect("finish").expect("installed");
    assert!(!tmp_file.exists());
    assert!(report.removed.iter().any(|p| p.extension().is_some_and(|x| x == "kvlog")), "{report:?}");
    assert_eq!(wal.snapshot_last(), snap.last);
    drop(wal);

    let (_, rec, _) = open_small(tmp.path());
    assert_eq!(rec.snapshot.as_ref(), Some(&snap));
    assert_eq!(
        rec.rows,
        w.model.rows[snap.last.lsn.0 as usize..],
        "every row after it, old segments and new"
    );
    assert_eq!(rec.last(), w.model.last());
}

#[test]
fn a_snapshot_job_overtaken_by_another_is_dropped_with_its_file() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut w = Workload::new(29);
    let (mut wal, _, _) = open_small(tmp.path());
    for _ in 0..200 {
        let op = w.next_op();
        wal.append(&[op]).expect("append");
    }
    wal.sync().expect("sync");
    let older = w.snapshot_at(w.commit / 2);
    let job = wal.begin_snapshot(older.as_ref()).expect("begin").write().expect("write");
    let stale_tmp = tmp.path().join(format!("{}.tmp", snapshot_name(job.replay_from_seq)));
    assert!(stale_tmp.exists());
    // An InstallSnapshot (or another job) lands first.
    let newer = w.snapshot();
    wal.snapshot(newer.as_ref()).expect("snapshot");
    assert_eq!(
        wal.finish_snapshot(job).expect("finish"),
        None,
        "the older job must not replace the newer snapshot"
    );
    assert!(!stale_tmp.exists(), "its file is removed");
    assert_eq!(wal.snapshot_last(), newer.last);
    // A job never written is refused, and an abandoned one cleans up too.
    let unwritten = wal.begin_snapshot(newer.as_ref()).expect("begin");
    assert!(matches!(wal.finish_snapshot(unwritten), Err(WalError::InvalidSnapshot(_))));
    drop(wal);
    let names: Vec<String> = dir_contents(tmp.path()).into_keys().collect();
    assert!(!names.iter().any(|n| n.ends_with(".tmp")), "{names:?}");
    let (_, rec, _) = open_small(tmp.path());
    assert_eq!(rec.snapshot.as_ref(), Some(&newer));
}
