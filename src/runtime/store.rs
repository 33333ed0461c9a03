//! Where a replica's `Effect::Persist` operations go.
//!
//! The node thread calls [`Store::write`] for each persist effect in the order
//! the machine issued them, then [`Store::sync`] once per batch (group
//! commit), then `Replica::on_persisted` with the last id written. A store
//! therefore completes ids strictly in order, which is what the machine
//! requires. The proper write-ahead log (`src/wal.rs`) plugs in here by
//! implementing [`Store`].
//!
//! Two stores live here for now: [`MemStore`] (no `--data-dir`: a restarted
//! replica comes back empty and catches up from the leader, but its promises
//! are forgotten, which failover safety assumes never happens) and
//! [`FileStore`], an append-only file of checksummed records.

use crate::machine::{PersistOp, Stored};
use crate::wire::MAX_FRAME_BYTES;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use tracing::warn;

pub trait Store: Send {
    /// Everything durable so far. Called at start-up, and again if the
    /// replica machine has to be rebuilt (after a `sync`).
    fn recover(&mut self) -> io::Result<Stored>;
    /// Appends one operation; durable only after the next `sync`.
    fn write(&mut self, op: &PersistOp) -> io::Result<()>;
    fn sync(&mut self) -> io::Result<()>;
}

/// Keeps persisted state in memory only.
#[derive(Default)]
pub struct MemStore {
    stored: Stored,
}

impl Store for MemStore {
    fn recover(&mut self) -> io::Result<Stored> {
        Ok(self.stored.clone())
    }
    fn write(&mut self, op: &PersistOp) -> io::Result<()> {
        self.stored.apply(op);
        Ok(())
    }
    fn sync(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// An append-only file of records `len: u32 BE | crc32: u32 BE | postcard(PersistOp)`.
///
/// Recovery replays records up to the first torn or corrupt one and cuts the
/// file there (a crash mid-write leaves at most the last record torn). It
/// never compacts: the write-ahead log being written separately will.
pub struct FileStore {
    path: PathBuf,
    file: BufWriter<File>,
    fsync: bool,
    /// What `open` read, handed out by the first `recover`.
    loaded: Option<Stored>,
    scratch: Vec<u8>,
}

const RECORD_HEADER_BYTES: usize = 8;

impl FileStore {
    /// Opens (or creates) `dir/replica-N.log`. With `fsync` off, `sync` only
    /// hands the bytes to the OS: fast, and lost if the machine (not just the
    /// process) crashes.
    pub fn open(dir: &Path, replica: u8, fsync: bool) -> io::Result<FileStore> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(format!("replica-{replica}.log"));
        let mut file = OpenOptions::new().read(true).append(true).create(true).open(&path)?;
        let (stored, good) = replay(&mut file)?;
        let len = file.metadata()?.len();
        if good < len {
            warn!(
                "{}: dropping {} bytes after the last whole record (a write cut short)",
                path.display(),
                len - good
            );
            file.set_len(good)?;
            file.sync_all()?;
        }
        file.seek(SeekFrom::End(0))?;
        Ok(FileStore {
            path,
            file: BufWriter::with_capacity(256 * 1024, file),
            fsync,
            loaded: Some(stored),
            scratch: Vec::new(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Store for FileStore {
    fn recover(&mut self) -> io::Result<Stored> {
        if let Some(s) = self.loaded.take() {
            return Ok(s);
        }
        self.file.flush()?;
        let mut f = File::open(&self.path)?;
        Ok(replay(&mut f)?.0)
    }

    fn write(&mut self, op: &PersistOp) -> io::Result<()> {
        self.scratch.clear();
        self.scratch.extend_from_slice(&[0; RECORD_HEADER_BYTES]);
        let buf = std::mem::take(&mut self.scratch);
        self.scratch = postcard::to_extend(op, buf).map_err(io::Error::other)?;
        let body = &self.scratch[RECORD_HEADER_BYTES..];
        let len = body.len() as u32;
        let crc = crc32(body);
        self.scratch[..4].copy_from_slice(&len.to_be_bytes());
        self.scratch[4..8].copy_from_slice(&crc.to_be_bytes());
        self.file.write_all(&self.scratch)
    }

    fn sync(&mut self) -> io::Result<()> {
        self.file.flush()?;
        if self.fsync {
            self.file.get_ref().sync_data()?;
        }
        Ok(())
    }
}

/// Replays every whole record; returns the state and the length of the
/// valid prefix.
fn replay(file: &mut File) -> io::Result<(Stored, u64)> {
    file.seek(SeekFrom::Start(0))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    let mut stored = Stored::default();
    let mut at = 0usize;
    while bytes.len() - at >= RECORD_HEADER_BYTES {
        let len = u32::from_be_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_be_bytes(bytes[at + 4..at + 8].try_into().expect("4 bytes"));
        if len > MAX_FRAME_BYTES || bytes.len() - at - RECORD_HEADER_BYTES < len {
            break;
        }
        let body = &bytes[at + RECORD_HEADER_BYTES..at + RECORD_HEADER_BYTES + len];
        if crc32(body) != crc {
            break;
        }
        let Ok(op) = postcard::from_bytes::<PersistOp>(body) else {
            break;
        };
        stored.apply(&op);
        at += RECORD_HEADER_BYTES + len;
    }
    Ok((stored, at as u64))
}

/// CRC-32 (IEEE), table-driven.
pub fn crc32(bytes: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut t = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
                k += 1;
            }
            t[i] = c;
            i += 1;
        }
        t
    };
    let mut c = !0u32;
    for &b in bytes {
        c = TABLE[((c ^ b as u32) & 0xff) as usize] ^ (c >> 8);
    }
    !c
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{ClientId, Epoch, Lsn, RequestId, Row, RowBody};

    fn row(lsn: u64) -> Row {
        Row {
            epoch: Epoch(1),
            lsn: Lsn(lsn),
            body: RowBody::Put {
                key: format!("k{lsn}"),
                value: Some("v".into()),
                req: RequestId { client: ClientId(1), seq: lsn },
            },
        }
    }

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn file_store_survives_reopen_and_cuts_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = FileStore::open(dir.path(), 1, true).unwrap();
            assert_eq!(s.recover().unwrap(), Stored::default());
            s.write(&PersistOp::Promise(Epoch(1))).unwrap();
            s.write(&PersistOp::Append(vec![row(1), row(2), row(3)])).unwrap();
            s.write(&PersistOp::TruncateAfter(Lsn(2))).unwrap();
            s.sync().unwrap();
            let again = s.recover().unwrap();
            assert_eq!(again.rows.len(), 2);
        }
        let path = dir.path().join("replica-1.log");
        let mut bytes = std::fs::read(&path).unwrap();
        let whole = bytes.len();
        bytes.extend_from_slice(&[0, 0, 0, 50, 1, 2, 3]);
        std::fs::write(&path, &bytes).unwrap();
        let mut s = FileStore::open(dir.path(), 1, true).unwrap();
        let stored = s.recover().unwrap();
        assert_eq!(stored.promised, Epoch(1));
        assert_eq!(stored.rows, vec![row(1), row(2)]);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), whole as u64);
        s.write(&PersistOp::Append(vec![row(3)])).unwrap();
        s.sync().unwrap();
        drop(s);
        let mut s = FileStore::open(dir.path(), 1, false).unwrap();
        assert_eq!(s.recover().unwrap().rows.len(), 3);
    }
}
