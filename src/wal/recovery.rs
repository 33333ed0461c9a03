//! [`Wal::open`]: validate the whole directory first, change it only after.
//!
//! Nothing is written, truncated or deleted until every file has been read
//! and judged, so a refused directory (foreign files, a newer version,
//! corruption) is left exactly as it was found.

use super::*;
use rustix::fs::{flock, FlockOperation};

/// A change recovery decided on, made only once everything has been read.
enum Fix {
    /// The last segment's creation never finished: write its header again.
    RewriteHeader {
        path: PathBuf,
        first_seq: u64,
    },
    /// Cut a torn write off the end of the last segment.
    Truncate {
        path: PathBuf,
        len_bytes: u64,
    },
    Remove(PathBuf),
}

pub(super) fn open(
    dir: &Path,
    config: WalConfig,
    before_changes: impl FnOnce(&RecoveryReport) -> Result<(), WalError>,
) -> Result<(Wal, Recovered, RecoveryReport), WalError> {
    let mut report = RecoveryReport::default();
    ensure_dir(dir)?;
    let dir_file = File::open(dir).map_err(io_err(dir))?;
    match flock(&dir_file, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {}
        Err(e) if e == rustix::io::Errno::WOULDBLOCK => {
            return Err(WalError::Locked { dir: dir.to_path_buf() })
        }
        Err(e) => return Err(WalError::Io { path: dir.to_path_buf(), source: e.into() }),
    }

    let listing = list(dir)?;
    // A newer version is reported before anything else: its layout after
    // the version field is not ours to judge.
    let segments = listing.segments.iter().map(|s| (&s.1, &SEGMENT_MAGIC));
    let snapshots = listing.snapshots.iter().map(|s| (&s.1, &SNAPSHOT_MAGIC));
    for (path, magic) in segments.chain(snapshots) {
        let head = read_head(path, 12)?;
        if let Err(HeaderFault::NewerVersion { found }) = check_magic_and_version(&head, magic) {
            return Err(WalError::NewerVersion { file: path.clone(), found, supported: FORMAT_VERSION });
        }
    }
    report.fresh = listing.segments.is_empty() && listing.snapshots.is_empty();

    let mut fixes: Vec<Fix> = listing.tmps.iter().cloned().map(Fix::Remove).collect();
    let mut snapshot_files = Vec::new();

    // ---- the snapshot: newest that loads ----
    let mut chosen: Option<(Snapshot, u64, PathBuf)> = None;
    for (seq, path) in listing.snapshots.iter().rev() {
        if chosen.is_some() {
            // Older than the one in use: covered by it.
            fixes.push(Fix::Remove(path.clone()));
            continue;
        }
        match load_snapshot(path, *seq)? {
            Ok(snap) => chosen = Some((snap, *seq, path.clone())),
            Err((offset, why)) => {
                report.snapshots_skipped.push((path.clone(), format!("byte {offset}: {why}")));
                // Kept as evidence until a newer snapshot replaces it.
                snapshot_files.push(path.clone());
            }
        }
    }
    let replay_from_seq = chosen.as_ref().map_or(0, |c| c.1);
    if chosen.is_none() && !report.snapshots_skipped.is_empty() {
        // Without a snapshot the log must be whole from its first record.
        let whole = listing.segments.first().is_some_and(|s| s.0 == 0);
        if !whole {
            let (file, why) = report.snapshots_skipped[0].clone();
            return Err(WalError::Corrupt { file, offset: 0, why });
        }
    }

    // ---- segments: skip the covered ones, replay the rest ----
    let segments = &listing.segments;
    // Segment i is covered when the next one starts at or before the replay
    // point; the last segment is never covered.
    let first_live = (0..segments.len())
        .find(|&i| segments.get(i + 1).is_none_or(|next| next.0 > replay_from_seq))
        .unwrap_or(segments.len());
    for (_, path) in &segments[..first_live] {
        fixes.push(Fix::Remove(path.clone()));
    }
    let live = &segments[first_live..];
    if let Some((seq, path)) = live.first() {
        if *seq > replay_from_seq {
            return Err(WalError::Corrupt {
                file: path.clone(),
                offset: 0,
                why: format!("records {replay_from_seq}..{seq} are missing (a segment file is gone)"),
            });
        }
    }

    let base = chosen.as_ref().map(|c| c.0.last).unwrap_or_default();
    let promised = chosen.as_ref().map(|c| c.0.promised).unwrap_or_default();
    let mut replay = Replay { base, promised, rows: Vec::new(), installed: None };
    let mut index = RowIndex { base: base.lsn, end: base.lsn, runs: Vec::new() };
    let mut expected_seq = live.first().map_or(replay_from_seq, |s| s.0);
    let mut last_len_bytes = SEGMENT_HEADER_BYTES as u64;
    for (i, (seq, path)) in live.iter().enumerate() {
        let is_last = i + 1 == live.len();
        let bytes = read_limited(path, SEGMENT_FILE_BYTES_MAX)?;
        let corrupt = |offset: u64, why: String| WalError::Corrupt { file: path.clone(), offset, why };
        if *seq != expected_seq {
            return Err(corrupt(0, format!("expected a segment starting at record {expected_seq}")));
        }
        let first_seq = match decode_segment_header(&bytes) {
            Ok(first) => first,
            Err(_) if is_last && is_torn_header(&bytes, *seq) => {
                // Created but never synced, so it never held a record.
                fixes.push(Fix::RewriteHeader { path: path.clone(), first_seq: *seq });
                report.torn_tail = Some(TornTail {
                    file: path.clone(),
                    offset: 0,
                    bytes_discarded: bytes.len() as u64,
                    fault: "segment header cut short while the segment was created".into(),
                });
                report.segments_replayed += 1;
                last_len_bytes = SEGMENT_HEADER_BYTES as u64;
                continue;
            }
            Err(HeaderFault::NewerVersion { found }) => {
                return Err(WalError::NewerVersion { file: path.clone(), found, supported: FORMAT_VERSION })
            }
            Err(fault) => return Err(corrupt(0, format!("segment header: {fault}"))),
        };
        if first_seq != *seq {
            return Err(corrupt(16, format!("header says first record {first_seq}, file name says {seq}")));
        }
        let decoded = decode_records(&bytes[SEGMENT_HEADER_BYTES..]);
        let tail_offset = (SEGMENT_HEADER_BYTES + decoded.valid_bytes) as u64;
        match decoded.tail {
            Tail::Clean => {}
            Tail::Torn { fault } if is_last => {
                fixes.push(Fix::Truncate { path: path.clone(), len_bytes: tail_offset });
                report.torn_tail = Some(TornTail {
                    file: path.clone(),
                    offset: tail_offset,
                    bytes_discarded: bytes.len() as u64 - tail_offset,
                    fault: fault.to_string(),
                });
            }
            Tail::Torn { fault } => {
                return Err(corrupt(
                    tail_offset,
                    format!("{fault}, in a sealed segment (sealed segments are fsynced whole)"),
                ))
            }
            Tail::Corrupt { fault, next_valid } => {
                let why = match next_valid {
                    Some(at) => {
                        format!("{fault}; a valid record follows at byte {}", SEGMENT_HEADER_BYTES + at)
                    }
                    None => fault.to_string(),
                };
                return Err(corrupt(tail_offset, why));
            }
        }
        for (k, op) in decoded.ops.iter().enumerate() {
            if first_seq + k as u64 >= replay_from_seq {
                replay.apply(op);
                index.apply(op, first_seq);
                debug_assert_eq!(index.end, replay.end());
                report.records_replayed += 1;
            }
        }
        expected_seq = first_seq + decoded.ops.len() as u64;
        last_len_bytes = tail_offset;
        report.segments_replayed += 1;
    }
    if expected_seq < replay_from_seq {
        let file = live.last().map(|s| s.1.clone()).unwrap_or_else(|| dir.to_path_buf());
        return Err(WalError::Corrupt {
            file,
            offset: last_len_bytes,
            why: format!(
                "the log ends at record {expected_seq}, before the snapshot's replay point {replay_from_seq}"
            ),
        });
    }

    // ---- everything judged: now change things ----
    before_changes(&report)?;
    let mut removed_any = false;
    for fix in fixes {
        match fix {
            Fix::RewriteHeader { path, first_seq } => {
                let mut f = OpenOptions::new().write(true).open(&path).map_err(io_err(&path))?;
                f.set_len(0).map_err(io_err(&path))?;
                f.write_all(&encode_segment_header(first_seq)).map_err(io_err(&path))?;
                f.sync_all().map_err(io_err(&path))?;
            }
            Fix::Truncate { path, len_bytes } => {
                let f = OpenOptions::new().write(true).open(&path).map_err(io_err(&path))?;
                f.set_len(len_bytes).map_err(io_err(&path))?;
                f.sync_all().map_err(io_err(&path))?;
            }
            Fix::Remove(path) => {
                fs::remove_file(&path).map_err(io_err(&path))?;
                report.removed.push(path);
                removed_any = true;
            }
        }
    }
    if removed_any {
        dir_file.sync_all().map_err(io_err(dir))?;
    }

    let mut sealed: VecDeque<SealedSegment> =
        live.iter().map(|(seq, path)| SealedSegment { path: path.clone(), first_seq: *seq }).collect();
    let current = match sealed.pop_back() {
        Some(last) => {
            let mut file =
                OpenOptions::new().read(true).write(true).open(&last.path).map_err(io_err(&last.path))?;
            let size_bytes = file.seek(SeekFrom::End(0)).map_err(io_err(&last.path))?;
            debug_assert_eq!(size_bytes, last_len_bytes);
            Segment { file, path: last.path, first_seq: last.first_seq, size_bytes }
        }
        None => create_segment(dir, &dir_file, expected_seq).map_err(io_err(dir))?,
    };

    let (snapshot, snapshot_last) = match chosen {
        Some((snap, _, path)) => {
            report.snapshot_file = Some(path.clone());
            report.snapshot_last = Some(snap.last);
            snapshot_files.push(path);
            let last = snap.last;
            (Some(snap), last)
        }
        None => (None, LogPos::default()),
    };
    let wal = Wal {
        dir: dir.to_path_buf(),
        dir_file,
        config,
        current,
        sealed,
        next_seq: expected_seq,
        promised: replay.promised,
        index,
        snapshot_last,
        snapshots_installed: 0,
        snapshot_files,
        scratch: Vec::new(),
        scratch_ends: Vec::new(),
        poisoned: false,
    };
    let snapshot = replay.installed.or(snapshot);
    let recovered = Recovered { snapshot, promised: replay.promised, rows: replay.rows };
    Ok((wal, recovered, report))
}

/// Creates the directory if missing (and makes its entry durable); refuses
/// a path that exists and is not a directory.
fn ensure_dir(dir: &Path) -> Result<(), WalError> {
    match fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(WalError::Foreign { path: dir.to_path_buf(), why: "not a directory".into() }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::create_dir_all(dir).map_err(io_err(dir))?;
            let parent = match dir.parent() {
                Some(p) if !p.as_os_str().is_empty() => p,
                _ => Path::new("."),
            };
            File::open(parent).and_then(|f| f.sync_all()).map_err(io_err(parent))
        }
        Err(e) => Err(WalError::Io { path: dir.to_path_buf(), source: e }),
    }
}

struct Listing {
    /// (first_seq, path), sorted.
    segments: Vec<(u64, PathBuf)>,
    /// (replay_from_seq, path), sorted.
    snapshots: Vec<(u64, PathBuf)>,
    tmps: Vec<PathBuf>,
}

fn list(dir: &Path) -> Result<Listing, WalError> {
    let mut listing = Listing { segments: Vec::new(), snapshots: Vec::new(), tmps: Vec::new() };
    for (count, entry) in fs::read_dir(dir).map_err(io_err(dir))?.enumerate() {
        if count >= DIR_ENTRIES_MAX {
            return Err(WalError::Foreign {
                path: dir.to_path_buf(),
                why: format!("more than {DIR_ENTRIES_MAX} entries"),
            });
        }
        let entry = entry.map_err(io_err(dir))?;
        let path = entry.path();
        let kind = entry.file_name().to_str().and_then(parse_name);
        let Some(kind) = kind else {
            return Err(WalError::Foreign { path, why: "not a kvstore WAL file".into() });
        };
        if !entry.file_type().map_err(io_err(&path))?.is_file() {
            return Err(WalError::Foreign { path, why: "not a regular file".into() });
        }
        match kind {
            FileKind::Segment(seq) => listing.segments.push((seq, path)),
            FileKind::Snapshot(seq) => listing.snapshots.push((seq, path)),
            FileKind::SnapshotTmp(_) => listing.tmps.push(path),
        }
    }
    listing.segments.sort();
    listing.snapshots.sort();
    Ok(listing)
}

/// Up to `bytes` from the start of a file.
fn read_head(path: &Path, bytes: u64) -> Result<Vec<u8>, WalError> {
    let mut head = Vec::new();
    File::open(path).and_then(|f| f.take(bytes).read_to_end(&mut head)).map_err(io_err(path))?;
    Ok(head)
}

/// A whole file, refusing one larger than `limit_bytes` before reading it.
fn read_limited(path: &Path, limit_bytes: u64) -> Result<Vec<u8>, WalError> {
    let len = fs::metadata(path).map_err(io_err(path))?.len();
    if len > limit_bytes {
        return Err(WalError::Corrupt {
            file: path.to_path_buf(),
            offset: limit_bytes,
            why: format!("file is {len} bytes, more than any kvstore writes ({limit_bytes})"),
        });
    }
    fs::read(path).map_err(io_err(path))
}

/// A header that a crash cut short while the segment was being created:
/// no longer than a header, and each byte either what we would have written
/// or zero (blocks not yet written read as zeros).
fn is_torn_header(bytes: &[u8], first_seq: u64) -> bool {
    let expected = encode_segment_header(first_seq);
    bytes.len() <= SEGMENT_HEADER_BYTES && bytes.iter().zip(expected.iter()).all(|(b, e)| b == e || *b == 0)
}

/// Loads and checks a snapshot file. The inner error is (offset, why): a
/// snapshot that does not load is skipped in favour of an older one, if the
/// log allows.
fn load_snapshot(path: &Path, name_seq: u64) -> Result<Result<Snapshot, (u64, String)>, WalError> {
    let len = fs::metadata(path).map_err(io_err(path))?.len();
    if len > SNAPSHOT_FILE_BYTES_MAX {
        return Ok(Err((0, format!("file is {len} bytes, limit {SNAPSHOT_FILE_BYTES_MAX}"))));
    }
    let bytes = fs::read(path).map_err(io_err(path))?;
    let header = match decode_snapshot_header(&bytes) {
        Ok(h) => h,
        Err(fault) => return Ok(Err((0, format!("snapshot header: {fault}")))),
    };
    if header.replay_from_seq != name_seq {
        return Ok(Err((
            16,
            format!("header says replay from {}, file name says {name_seq}", header.replay_from_seq),
        )));
    }
    let payload = &bytes[SNAPSHOT_HEADER_BYTES..];
    let at = SNAPSHOT_HEADER_BYTES as u64;
    if payload.len() as u64 != header.payload_bytes {
        return Ok(Err((
            at,
            format!("payload is {} bytes, header says {}", payload.len(), header.payload_bytes),
        )));
    }
    if crc32c::crc32c(payload) != header.payload_crc32c {
        return Ok(Err((at, "payload checksum mismatch".into())));
    }
    match postcard::take_from_bytes::<Snapshot>(payload) {
        Ok((snap, [])) => Ok(Ok(snap)),
        Ok(_) => Ok(Err((at, "payload has trailing bytes".into()))),
        Err(e) => Ok(Err((at, format!("payload does not decode: {e}")))),
    }
}

/// See [`Wal::salvage_promised`]. Reads without a lock and changes nothing.
pub(super) fn salvage_promised(dir: &Path) -> Epoch {
    let mut promised = Epoch(0);
    let Ok(entries) = fs::read_dir(dir) else { return promised };
    for entry in entries.filter_map(Result::ok).take(DIR_ENTRIES_MAX) {
        let path = entry.path();
        match entry.file_name().to_str().and_then(parse_name) {
            Some(FileKind::Snapshot(seq)) => {
                if let Ok(Ok(snap)) = load_snapshot(&path, seq) {
                    promised = promised.max(snap.promised).max(snap.last.epoch);
                }
            }
            Some(FileKind::Segment(_)) => {
                let Ok(bytes) = read_limited(&path, SEGMENT_FILE_BYTES_MAX) else { continue };
                // Records may still check out behind a damaged header.
                let mut at = SEGMENT_HEADER_BYTES.min(bytes.len());
                while at < bytes.len() {
                    let decoded = decode_records(&bytes[at..]);
                    for op in &decoded.ops {
                        promised = promised.max(op_promised(op));
                    }
                    match decoded.tail {
                        Tail::Corrupt { next_valid: Some(next), .. } if next > 0 => at += next,
                        _ => break,
                    }
                }
            }
            _ => {}
        }
    }
    promised
}

/// The newest epoch one persisted op shows its replica had promised.
fn op_promised(op: &PersistOp) -> Epoch {
    match op {
        PersistOp::Promise(e) => *e,
        PersistOp::Append(rows) => rows.iter().map(|r| r.epoch).max().unwrap_or_default(),
        PersistOp::TruncateAfter(_) => Epoch(0),
        PersistOp::InstallSnapshot(s) => s.promised.max(s.last.epoch),
    }
}
