//! The promise file: the newest epoch a replica has promised, kept apart
//! from its log so that losing the log (set aside as corrupt, or cut at a
//! damaged tail) never makes the replica forget a promise. Forgetting one
//! would let it promise the same epoch twice, or follow a deposed leader.
//!
//! # Layout (format version 1, integers little-endian)
//!
//! Two copies ("slots") of one 40-byte record, slot 0 at byte 0 and slot 1
//! at byte 4096, so that no single sector or page write can damage both:
//!
//! ```text
//! offset size  field
//!      0    8  magic "KVPROM\0\0"
//!      8    4  format version (u32) = 1
//!     12    4  reserved, zero
//!     16    8  seq (u64): this copy's write number; slot = seq % 2
//!     24    8  epoch (u64): the newest epoch promised
//!     32    4  crc32c (Castagnoli) of bytes 0..32
//!     36    4  reserved, zero
//! ```
//!
//! The file is 4,136 bytes and never changes size after it is created.
//!
//! # Writing
//!
//! Created whole: both slots (seq 0 and 1, the same epoch) go to a
//! temporary file, which is fsynced and then hard-linked into place (so a
//! concurrent creator cannot clobber it), and the directory is fsynced; a
//! crash leaves either no file or a whole one. An update writes the slot
//! that does *not* hold the newest valid copy (seq + 1, in place) and
//! `fdatasync`s; a torn update can only damage that slot, and the other
//! still holds the previous epoch, which is correct because nothing was
//! acknowledged on the strength of the update before its fsync returned.
//!
//! # Reading
//!
//! A copy is valid when its magic, version, checksum and reserved bytes are
//! right and its seq matches its slot. The newest valid copy (highest seq)
//! wins; if one copy is damaged it is rewritten from the other at open. If
//! neither is valid the file is refused ([`WalError::PromiseLost`]) and left
//! untouched: starting anyway would mean guessing the epoch.
//!
//! An open `PromiseFile` holds an exclusive `flock` on the file. Since the
//! file is never renamed or replaced after creation, that lock is the
//! replica's lock across everything it does to its data directory,
//! including setting the log directory aside.

use super::WalError;
use crate::types::Epoch;
use rustix::fs::{flock, FlockOperation};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

pub const PROMISE_MAGIC: [u8; 8] = *b"KVPROM\0\0";
pub const PROMISE_FORMAT_VERSION: u32 = 1;
/// Bytes of one copy.
pub const PROMISE_SLOT_BYTES: usize = 40;
/// Where slot 1 starts: a page away from slot 0.
pub const PROMISE_SLOT1_OFFSET: u64 = 4096;
/// The whole file.
pub const PROMISE_FILE_BYTES: u64 = PROMISE_SLOT1_OFFSET + PROMISE_SLOT_BYTES as u64;

/// What is wrong with one copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotFault {
    /// The file ends before this copy does.
    Short {
        available_bytes: usize,
    },
    Magic,
    NewerVersion {
        found: u32,
    },
    UnknownVersion {
        found: u32,
    },
    Checksum,
    Reserved,
    /// A valid copy in the wrong slot.
    WrongSlot {
        seq: u64,
    },
}

impl std::fmt::Display for SlotFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SlotFault::Short { available_bytes } => {
                write!(f, "cut short ({available_bytes} of {PROMISE_SLOT_BYTES} bytes)")
            }
            SlotFault::Magic => f.write_str("bad magic (not a kvstore promise file, or damaged)"),
            SlotFault::NewerVersion { found } => write!(f, "format version {found} is newer than supported"),
            SlotFault::UnknownVersion { found } => write!(f, "unknown format version {found}"),
            SlotFault::Checksum => f.write_str("checksum mismatch"),
            SlotFault::Reserved => f.write_str("reserved bytes are not zero"),
            SlotFault::WrongSlot { seq } => write!(f, "copy number {seq} does not belong in this slot"),
        }
    }
}

/// The bytes of one copy.
pub fn encode_slot(seq: u64, epoch: Epoch) -> [u8; PROMISE_SLOT_BYTES] {
    let mut b = [0u8; PROMISE_SLOT_BYTES];
    b[0..8].copy_from_slice(&PROMISE_MAGIC);
    b[8..12].copy_from_slice(&PROMISE_FORMAT_VERSION.to_le_bytes());
    b[16..24].copy_from_slice(&seq.to_le_bytes());
    b[24..32].copy_from_slice(&epoch.0.to_le_bytes());
    let crc = crc32c::crc32c(&b[0..32]);
    b[32..36].copy_from_slice(&crc.to_le_bytes());
    b
}

/// Decodes copy `slot` (0 or 1) from the whole file's bytes: (seq, epoch).
pub fn decode_slot(file: &[u8], slot: usize) -> Result<(u64, Epoch), SlotFault> {
    let at = slot_offset(slot) as usize;
    let b = file.get(at..).unwrap_or(&[]);
    if b.len() < PROMISE_SLOT_BYTES {
        return Err(SlotFault::Short { available_bytes: b.len() });
    }
    let b = &b[..PROMISE_SLOT_BYTES];
    let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
    let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
    if b[0..8] != PROMISE_MAGIC {
        return Err(SlotFault::Magic);
    }
    let version = u32_at(8);
    if version > PROMISE_FORMAT_VERSION {
        return Err(SlotFault::NewerVersion { found: version });
    }
    if version != PROMISE_FORMAT_VERSION {
        return Err(SlotFault::UnknownVersion { found: version });
    }
    if crc32c::crc32c(&b[0..32]) != u32_at(32) {
        return Err(SlotFault::Checksum);
    }
    if u32_at(12) != 0 || u32_at(36) != 0 {
        return Err(SlotFault::Reserved);
    }
    let seq = u64_at(16);
    if seq % 2 != slot as u64 {
        return Err(SlotFault::WrongSlot { seq });
    }
    Ok((seq, Epoch(u64_at(24))))
}

fn slot_offset(slot: usize) -> u64 {
    if slot == 0 {
        0
    } else {
        PROMISE_SLOT1_OFFSET
    }
}

/// The whole file for a fresh start at `epoch`: copies 0 and 1.
pub fn encode_file(epoch: Epoch) -> Vec<u8> {
    let mut b = vec![0u8; PROMISE_FILE_BYTES as usize];
    b[..PROMISE_SLOT_BYTES].copy_from_slice(&encode_slot(0, epoch));
    b[PROMISE_SLOT1_OFFSET as usize..].copy_from_slice(&encode_slot(1, epoch));
    b
}

/// What [`PromiseFile::open`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PromiseLoad {
    /// There was no file: it was created, holding epoch 0 (the caller
    /// raises it to what the log says).
    pub created: bool,
    /// One copy was damaged (which, and why) and has been rewritten from
    /// the other.
    pub repaired: Option<(usize, SlotFault)>,
}

/// An open, locked promise file. See the module docs.
#[derive(Debug)]
pub struct PromiseFile {
    path: PathBuf,
    file: File,
    /// The newest valid copy's seq and epoch (what the disk holds).
    seq: u64,
    epoch: Epoch,
    /// A write or fsync failed: what the slot holds is unknown.
    poisoned: bool,
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl PromiseFile {
    /// Opens the promise file at `path`, creating it (holding epoch 0) if
    /// there is none, and locks it. Refuses (changing nothing) a file
    /// locked by another `PromiseFile` ([`WalError::Locked`]), one of a
    /// newer format ([`WalError::NewerVersion`]) and one with no valid copy
    /// ([`WalError::PromiseLost`]).
    pub fn open(path: &Path) -> Result<(PromiseFile, PromiseLoad), WalError> {
        let io_err = |source| WalError::Io { path: path.to_path_buf(), source };
        let mut load = PromiseLoad::default();
        let file = match OpenOptions::new().read(true).write(true).open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                load.created = create(path)?;
                OpenOptions::new().read(true).write(true).open(path).map_err(io_err)?
            }
            Err(e) => return Err(io_err(e)),
        };
        match flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(e) if e == rustix::io::Errno::WOULDBLOCK => {
                return Err(WalError::Locked { dir: path.to_path_buf() })
            }
            Err(e) => return Err(io_err(e.into())),
        }
        let mut bytes = Vec::new();
        (&file).take(PROMISE_FILE_BYTES + 1).read_to_end(&mut bytes).map_err(io_err)?;
        let slots = [decode_slot(&bytes, 0), decode_slot(&bytes, 1)];
        for s in &slots {
            if let Err(SlotFault::NewerVersion { found }) = s {
                return Err(WalError::NewerVersion {
                    file: path.to_path_buf(),
                    found: *found,
                    supported: PROMISE_FORMAT_VERSION,
                });
            }
        }
        let (seq, epoch, damaged) = match slots {
            [Ok((s0, e0)), Ok((s1, e1))] => {
                // Epochs only grow, so the newer copy holds the larger one;
                // take the larger anyway.
                (s0.max(s1), e0.max(e1), None)
            }
            [Ok((s, e)), Err(f)] => (s, e, Some((1, f))),
            [Err(f), Ok((s, e))] => (s, e, Some((0, f))),
            [Err(f0), Err(f1)] => {
                return Err(WalError::PromiseLost {
                    file: path.to_path_buf(),
                    why: format!("copy 0 at byte 0: {f0}; copy 1 at byte {PROMISE_SLOT1_OFFSET}: {f1}"),
                })
            }
        };
        let mut pf = PromiseFile { path: path.to_path_buf(), file, seq, epoch, poisoned: false };
        if let Some((slot, fault)) = damaged {
            // The next write goes to the damaged slot (seq + 1 is its
            // parity): make it now, so both copies are good again.
            debug_assert_eq!((seq + 1) % 2, slot as u64);
            pf.write_copy(epoch, true).map_err(io_err)?;
            load.repaired = Some((slot, fault));
        }
        Ok((pf, load))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The newest epoch the file holds.
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// Records `epoch` if it is newer than what the file holds: writes the
    /// other copy in place and, if `durable`, `fdatasync`s before returning.
    /// Returns whether anything was written. After an error the file
    /// refuses further writes (the other copy still holds the old epoch).
    pub fn store(&mut self, epoch: Epoch, durable: bool) -> io::Result<bool> {
        if epoch <= self.epoch {
            return Ok(false);
        }
        self.write_copy(epoch, durable)?;
        Ok(true)
    }

    fn write_copy(&mut self, epoch: Epoch, durable: bool) -> io::Result<()> {
        if self.poisoned {
            return Err(io::Error::other(format!(
                "{}: an earlier write failed; restart to recover the promise file",
                self.path.display()
            )));
        }
        let seq = self.seq + 1;
        let slot = (seq % 2) as usize;
        let result = self.file.write_all_at(&encode_slot(seq, epoch), slot_offset(slot)).and_then(|()| {
            if durable {
                self.file.sync_data()
            } else {
                Ok(())
            }
        });
        if let Err(e) = result {
            self.poisoned = true;
            return Err(io::Error::new(e.kind(), format!("{}: {e}", self.path.display())));
        }
        self.seq = seq;
        self.epoch = epoch;
        Ok(())
    }

    /// Deletes a file that [`PromiseFile::open`] just created, for a start
    /// that was refused afterwards (so a refused directory is left as it
    /// was found). The lock is held until `self` is dropped.
    pub fn remove_created(&self) -> io::Result<()> {
        fs::remove_file(&self.path)?;
        sync_parent(&self.path)
    }
}

/// Creates `path` whole: a temporary file, fsynced, hard-linked into place,
/// the directory fsynced. Returns false if another process created it first.
fn create(path: &Path) -> Result<bool, WalError> {
    let io_err = |p: &Path| {
        let p = p.to_path_buf();
        move |source| WalError::Io { path: p, source }
    };
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("promise");
    let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    let tmp = path.with_file_name(format!("{name}.tmp-{}-{n}", std::process::id()));
    let written = (|| {
        let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        f.write_all(&encode_file(Epoch(0)))?;
        f.sync_all()
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(io_err(&tmp)(e));
    }
    let linked = match fs::hard_link(&tmp, path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        // A file system without hard links: a rename is atomic too, it only
        // cannot tell that another process got there first.
        Err(_) => fs::rename(&tmp, path).map(|()| true),
    };
    let _ = fs::remove_file(&tmp);
    let created = linked.map_err(io_err(path))?;
    sync_parent(path).map_err(io_err(path))?;
    Ok(created)
}

fn sync_parent(path: &Path) -> io::Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(parent)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(dir: &tempfile::TempDir) -> PathBuf {
        dir.path().join("replica-1.promise")
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    fn flip(p: &Path, at: u64) {
        let mut b = fs::read(p).unwrap();
        b[at as usize] ^= 0x10;
        fs::write(p, &b).unwrap();
    }

    #[test]
    fn round_trip_and_alternating_copies() {
        let tmp = tempfile::tempdir().unwrap();
        let p = path(&tmp);
        {
            let (mut f, load) = PromiseFile::open(&p).unwrap();
            assert_eq!(load, PromiseLoad { created: true, repaired: None });
            assert_eq!(f.epoch(), Epoch(0));
            assert_eq!(fs::metadata(&p).unwrap().len(), PROMISE_FILE_BYTES);
            assert!(f.store(Epoch(3), true).unwrap());
            assert!(!f.store(Epoch(3), true).unwrap(), "not newer: nothing written");
            assert!(!f.store(Epoch(2), true).unwrap(), "older: nothing written");
        }
        let bytes = fs::read(&p).unwrap();
        // seq 2 went to slot 0; slot 1 still holds seq 1, epoch 0.
        assert_eq!(decode_slot(&bytes, 0), Ok((2, Epoch(3))));
        assert_eq!(decode_slot(&bytes, 1), Ok((1, Epoch(0))));
        {
            let (mut f, load) = PromiseFile::open(&p).unwrap();
            assert_eq!(load, PromiseLoad::default());
            assert_eq!(f.epoch(), Epoch(3));
            f.store(Epoch(9), true).unwrap();
        }
        let bytes = fs::read(&p).unwrap();
        assert_eq!(decode_slot(&bytes, 0), Ok((2, Epoch(3))));
        assert_eq!(decode_slot(&bytes, 1), Ok((3, Epoch(9))));
        assert_eq!(PromiseFile::open(&p).unwrap().0.epoch(), Epoch(9));
        assert_eq!(names(tmp.path()), ["replica-1.promise"], "no temporary file left");
        assert_eq!(fs::metadata(&p).unwrap().len(), PROMISE_FILE_BYTES, "updates are in place");
    }

    #[test]
    fn a_second_open_is_refused_while_the_first_holds_the_lock() {
        let tmp = tempfile::tempdir().unwrap();
        let p = path(&tmp);
        let first = PromiseFile::open(&p).unwrap();
        assert!(matches!(PromiseFile::open(&p), Err(WalError::Locked { .. })));
        drop(first);
        PromiseFile::open(&p).unwrap();
    }

    #[test]
    fn one_damaged_copy_loses_to_the_other_and_is_repaired() {
        for damaged in [0usize, 1] {
            let tmp = tempfile::tempdir().unwrap();
            let p = path(&tmp);
            {
                let (mut f, _) = PromiseFile::open(&p).unwrap();
                f.store(Epoch(4), true).unwrap(); // seq 2, slot 0
                f.store(Epoch(5), true).unwrap(); // seq 3, slot 1
            }
            // A flipped byte in the epoch of one copy.
            flip(&p, slot_offset(damaged) + 25);
            let (f, load) = PromiseFile::open(&p).unwrap();
            let want = if damaged == 1 { Epoch(4) } else { Epoch(5) };
            assert_eq!(f.epoch(), want, "damaged copy {damaged}");
            assert_eq!(load.repaired, Some((damaged, SlotFault::Checksum)));
            drop(f);
            // Repaired: both copies valid, the newest one holding `want`.
            let bytes = fs::read(&p).unwrap();
            assert!(decode_slot(&bytes, 0).is_ok() && decode_slot(&bytes, 1).is_ok());
            let (f, load) = PromiseFile::open(&p).unwrap();
            assert_eq!((f.epoch(), load.repaired), (want, None));
        }
    }

    #[test]
    fn a_torn_update_keeps_the_previous_epoch() {
        let tmp = tempfile::tempdir().unwrap();
        let p = path(&tmp);
        {
            let (mut f, _) = PromiseFile::open(&p).unwrap();
            f.store(Epoch(6), true).unwrap(); // seq 2, slot 0
        }
        // The update to epoch 7 would write seq 3 to slot 1; a crash tore it
        // after its first 20 bytes (the rest is still the old copy).
        let mut b = fs::read(&p).unwrap();
        let new = encode_slot(3, Epoch(7));
        let at = PROMISE_SLOT1_OFFSET as usize;
        b[at..at + 20].copy_from_slice(&new[..20]);
        fs::write(&p, &b).unwrap();
        let (mut f, load) = PromiseFile::open(&p).unwrap();
        assert_eq!(f.epoch(), Epoch(6), "the update never completed, so it was never acknowledged");
        assert_eq!(load.repaired, Some((1, SlotFault::Checksum)));
        // Writing goes on normally, never over the only good copy.
        f.store(Epoch(7), true).unwrap();
        drop(f);
        assert_eq!(PromiseFile::open(&p).unwrap().0.epoch(), Epoch(7));
        // Also torn: a file cut short (slot 1 missing entirely).
        let b = fs::read(&p).unwrap();
        fs::write(&p, &b[..100]).unwrap();
        let (f, load) = PromiseFile::open(&p).unwrap();
        let newest_in_slot0 = decode_slot(&b, 0).unwrap();
        assert_eq!(f.epoch(), newest_in_slot0.1);
        assert!(matches!(load.repaired, Some((1, SlotFault::Short { .. }))));
    }

    #[test]
    fn both_copies_damaged_is_refused_untouched() {
        let tmp = tempfile::tempdir().unwrap();
        let p = path(&tmp);
        {
            let (mut f, _) = PromiseFile::open(&p).unwrap();
            f.store(Epoch(8), true).unwrap();
        }
        flip(&p, 30);
        flip(&p, PROMISE_SLOT1_OFFSET + 2);
        let before = fs::read(&p).unwrap();
        match PromiseFile::open(&p) {
            Err(e @ WalError::PromiseLost { .. }) => {
                let msg = e.to_string();
                assert!(msg.contains("replica-1.promise"), "{msg}");
                assert!(msg.contains("copy 0 at byte 0: checksum mismatch"), "{msg}");
                assert!(msg.contains("copy 1 at byte 4096: bad magic"), "{msg}");
            }
            other => panic!("expected PromiseLost, got {other:?}"),
        }
        assert_eq!(fs::read(&p).unwrap(), before, "nothing was changed");
        // An empty file (not ours, or zeroed) is refused too, not taken as new.
        fs::write(&p, b"").unwrap();
        assert!(matches!(PromiseFile::open(&p), Err(WalError::PromiseLost { .. })));
        assert_eq!(fs::read(&p).unwrap(), b"");
    }

    #[test]
    fn a_newer_format_is_refused_untouched() {
        let tmp = tempfile::tempdir().unwrap();
        let p = path(&tmp);
        drop(PromiseFile::open(&p).unwrap());
        let mut b = fs::read(&p).unwrap();
        b[8..12].copy_from_slice(&2u32.to_le_bytes());
        fs::write(&p, &b).unwrap();
        assert!(matches!(PromiseFile::open(&p), Err(WalError::NewerVersion { found: 2, supported: 1, .. })));
        assert_eq!(fs::read(&p).unwrap(), b);
    }

    #[test]
    fn a_created_file_can_be_removed_again() {
        let tmp = tempfile::tempdir().unwrap();
        let p = path(&tmp);
        let (f, load) = PromiseFile::open(&p).unwrap();
        assert!(load.created);
        f.remove_created().unwrap();
        assert!(names(tmp.path()).is_empty());
    }
}
