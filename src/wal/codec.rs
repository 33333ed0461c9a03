//! Bytes only: record framing, segment and snapshot headers. Shared by the
//! real write-ahead log ([`super::Wal`]) and the simulator's disk, so both
//! agree on what a torn tail and a corrupt record look like.
//!
//! This file knows nothing about files, directories or fsync; it turns
//! [`PersistOp`]s into bytes and back, and never panics on bad bytes.

use crate::machine::PersistOp;
use crate::replica::MAX_ROWS_PER_APPEND;
use crate::types::{MAX_KEY_BYTES, MAX_VALUE_BYTES};
use std::fmt;

/// The on-disk format this code writes and the newest it reads. Files with a
/// newer version are refused, never rewritten.
pub const FORMAT_VERSION: u32 = 1;

pub const SEGMENT_MAGIC: [u8; 8] = *b"KVWAL\0\0\0";
pub const SNAPSHOT_MAGIC: [u8; 8] = *b"KVSNAP\0\0";

pub const SEGMENT_HEADER_BYTES: usize = 32;
pub const SNAPSHOT_HEADER_BYTES: usize = 40;
/// `len: u32 LE | crc32c: u32 LE`.
pub const RECORD_HEADER_BYTES: usize = 8;

/// Largest payload a record may carry. Big enough for the largest op a
/// replica emits (see the assertion below), small enough that a corrupt
/// length cannot make a reader allocate much.
pub const MAX_RECORD_BYTES: usize = 32 * 1024 * 1024;

/// Upper bound on the postcard encoding of one row beyond its key and value:
/// epoch, lsn, client and seq varints (10 bytes each at most), enum tags and
/// two string lengths.
const ROW_OVERHEAD_BYTES_MAX: usize = 64;
const _: () = assert!(
    MAX_ROWS_PER_APPEND * (MAX_KEY_BYTES + MAX_VALUE_BYTES + ROW_OVERHEAD_BYTES_MAX) + 16 <= MAX_RECORD_BYTES,
    "the largest Append a replica emits must fit one record"
);

/// How many payload bytes [`decode_records`] may checksum while deciding
/// whether a bad record is a torn tail. Past this the tail is reported
/// corrupt: refusing to serve is safe, silently dropping records is not.
pub const TAIL_SCAN_CRC_BYTES_MAX: u64 = 256 * 1024 * 1024;

// ---- records ----

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EncodeError {
    /// The op encodes to more than [`MAX_RECORD_BYTES`].
    TooLarge { payload_bytes: usize },
    /// postcard refused the value (cannot happen for `PersistOp` today).
    Serialize(String),
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EncodeError::TooLarge { payload_bytes } => {
                write!(f, "record payload is {payload_bytes} bytes, limit {MAX_RECORD_BYTES}")
            }
            EncodeError::Serialize(why) => write!(f, "cannot encode record: {why}"),
        }
    }
}

impl std::error::Error for EncodeError {}

/// Appends one framed record for `op` to `buf` and returns its length in
/// bytes. On error `buf` is left as it was.
pub fn encode_record(op: &PersistOp, buf: &mut Vec<u8>) -> Result<usize, EncodeError> {
    let start = buf.len();
    buf.extend_from_slice(&[0; RECORD_HEADER_BYTES]);
    // `to_io` writes into the Vec in place, so a failure leaves it ours to
    // roll back (`to_extend` would consume it).
    let encoded = postcard::to_io(op, &mut *buf).map(|_| ());
    let payload_bytes = buf.len() - start - RECORD_HEADER_BYTES;
    if let Err(e) = encoded {
        buf.truncate(start);
        return Err(EncodeError::Serialize(e.to_string()));
    }
    if payload_bytes > MAX_RECORD_BYTES {
        buf.truncate(start);
        return Err(EncodeError::TooLarge { payload_bytes });
    }
    debug_assert!(payload_bytes > 0, "every PersistOp has an enum tag");
    let crc = crc32c::crc32c(&buf[start + RECORD_HEADER_BYTES..]);
    buf[start..start + 4].copy_from_slice(&(payload_bytes as u32).to_le_bytes());
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    Ok(buf.len() - start)
}

/// What [`decode_records`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodeResult {
    /// Every whole, valid record before the tail, in order.
    pub ops: Vec<PersistOp>,
    /// Bytes from the start covered by `ops`: where a bad tail begins.
    pub valid_bytes: usize,
    pub tail: Tail,
}

/// How a record stream ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tail {
    /// The last record ends exactly at the end of the bytes.
    Clean,
    /// The bytes from `valid_bytes` on hold no valid record: the last write
    /// was cut short by a crash. Safe to discard, since a write is only
    /// acknowledged after fsync and an fsynced write is never torn.
    Torn { fault: RecordFault },
    /// Damage that a crash cannot explain: a bad record followed by a valid
    /// one (at `next_valid`), a payload that passes its checksum but does not
    /// decode, or a tail too large to classify (`next_valid: None`).
    Corrupt { fault: RecordFault, next_valid: Option<usize> },
}

/// What is wrong with the record at `valid_bytes`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordFault {
    /// Fewer than [`RECORD_HEADER_BYTES`] bytes left.
    ShortHeader { available_bytes: usize },
    /// Length 0 or over [`MAX_RECORD_BYTES`].
    BadLength { payload_bytes: u32 },
    /// The length runs past the end of the bytes.
    ShortPayload { payload_bytes: u32, available_bytes: usize },
    /// The payload does not match its crc32c.
    Checksum,
    /// The checksum matches but the payload is not a `PersistOp`.
    Undecodable,
}

impl fmt::Display for RecordFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecordFault::ShortHeader { available_bytes } => {
                write!(f, "record header cut short ({available_bytes} of {RECORD_HEADER_BYTES} bytes)")
            }
            RecordFault::BadLength { payload_bytes } => {
                write!(f, "record length {payload_bytes} outside 1..={MAX_RECORD_BYTES}")
            }
            RecordFault::ShortPayload { payload_bytes, available_bytes } => {
                write!(f, "record payload cut short ({available_bytes} of {payload_bytes} bytes)")
            }
            RecordFault::Checksum => f.write_str("record checksum mismatch"),
            RecordFault::Undecodable => {
                f.write_str("record checksum matches but the payload is not a PersistOp")
            }
        }
    }
}

/// Decodes a stream of framed records (no segment header). Stops at the first
/// bad record and says whether it looks like a torn tail or corruption.
pub fn decode_records(bytes: &[u8]) -> DecodeResult {
    let mut ops = Vec::new();
    let mut offset = 0;
    loop {
        if offset == bytes.len() {
            return DecodeResult { ops, valid_bytes: offset, tail: Tail::Clean };
        }
        match record_at(bytes, offset) {
            Ok((op, next)) => {
                debug_assert!(next > offset && next <= bytes.len());
                ops.push(op);
                offset = next;
            }
            Err(fault) => {
                let tail = classify_tail(bytes, offset, fault);
                return DecodeResult { ops, valid_bytes: offset, tail };
            }
        }
    }
}

/// Decodes the record starting at `offset`; returns it and where the next
/// one starts.
fn record_at(bytes: &[u8], offset: usize) -> Result<(PersistOp, usize), RecordFault> {
    let rest = &bytes[offset..];
    if rest.len() < RECORD_HEADER_BYTES {
        return Err(RecordFault::ShortHeader { available_bytes: rest.len() });
    }
    let payload_bytes = u32::from_le_bytes(rest[0..4].try_into().expect("4 bytes"));
    let crc = u32::from_le_bytes(rest[4..8].try_into().expect("4 bytes"));
    let len = payload_bytes as usize;
    if len == 0 || len > MAX_RECORD_BYTES {
        return Err(RecordFault::BadLength { payload_bytes });
    }
    let available_bytes = rest.len() - RECORD_HEADER_BYTES;
    if len > available_bytes {
        return Err(RecordFault::ShortPayload { payload_bytes, available_bytes });
    }
    let payload = &rest[RECORD_HEADER_BYTES..RECORD_HEADER_BYTES + len];
    if crc32c::crc32c(payload) != crc {
        return Err(RecordFault::Checksum);
    }
    match postcard::take_from_bytes::<PersistOp>(payload) {
        Ok((op, [])) => Ok((op, offset + RECORD_HEADER_BYTES + len)),
        // Trailing bytes inside a checksummed payload are as wrong as
        // undecodable ones: the writer never produces them.
        Ok(_) | Err(_) => Err(RecordFault::Undecodable),
    }
}

/// A bad record is a torn tail only if nothing valid follows it. A crash can
/// cut the last write short, or leave it zero-filled, but it cannot produce
/// a good record *after* a bad one; such a record proves that data once
/// written whole was damaged.
fn classify_tail(bytes: &[u8], offset: usize, fault: RecordFault) -> Tail {
    if fault == RecordFault::Undecodable {
        return Tail::Corrupt { fault, next_valid: None };
    }
    let mut crc_bytes_budget = TAIL_SCAN_CRC_BYTES_MAX;
    // The smallest record is a header and one payload byte.
    let last_start = bytes.len().saturating_sub(RECORD_HEADER_BYTES + 1);
    for candidate in offset + 1..=last_start {
        let rest = &bytes[candidate..];
        let len = u32::from_le_bytes(rest[0..4].try_into().expect("4 bytes")) as usize;
        // Cheap filter first: most offsets cannot be a record start.
        if len == 0 || len > MAX_RECORD_BYTES || len > rest.len() - RECORD_HEADER_BYTES {
            continue;
        }
        if crc_bytes_budget < len as u64 {
            return Tail::Corrupt { fault, next_valid: None };
        }
        crc_bytes_budget -= len as u64;
        if record_at(bytes, candidate).is_ok() {
            return Tail::Corrupt { fault, next_valid: Some(candidate) };
        }
    }
    Tail::Torn { fault }
}

// ---- headers ----

/// What is wrong with a segment or snapshot header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderFault {
    Short {
        available_bytes: usize,
    },
    /// Not one of our files (or its first bytes are damaged).
    Magic,
    /// Written by a newer kvstore: refuse, do not touch.
    NewerVersion {
        found: u32,
    },
    /// Version 0: never written by any kvstore.
    UnknownVersion {
        found: u32,
    },
    Checksum,
    /// A reserved field is not zero.
    Reserved,
}

impl fmt::Display for HeaderFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeaderFault::Short { available_bytes } => {
                write!(f, "header cut short ({available_bytes} bytes)")
            }
            HeaderFault::Magic => f.write_str("bad magic bytes"),
            HeaderFault::NewerVersion { found } => {
                write!(f, "format version {found} is newer than {FORMAT_VERSION}")
            }
            HeaderFault::UnknownVersion { found } => write!(f, "unknown format version {found}"),
            HeaderFault::Checksum => f.write_str("header checksum mismatch"),
            HeaderFault::Reserved => f.write_str("reserved header field is not zero"),
        }
    }
}

/// Checks the part of a header that never changes between versions: 8 magic
/// bytes then a u32 LE version. Everything after the version may change
/// layout in a later version, so a newer version is reported before
/// anything else is looked at.
pub fn check_magic_and_version(bytes: &[u8], magic: &[u8; 8]) -> Result<(), HeaderFault> {
    if bytes.len() < 12 {
        return Err(HeaderFault::Short { available_bytes: bytes.len() });
    }
    if &bytes[0..8] != magic {
        return Err(HeaderFault::Magic);
    }
    let found = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if found > FORMAT_VERSION {
        return Err(HeaderFault::NewerVersion { found });
    }
    if found == 0 {
        return Err(HeaderFault::UnknownVersion { found });
    }
    Ok(())
}

pub fn encode_segment_header(first_seq: u64) -> [u8; SEGMENT_HEADER_BYTES] {
    let mut h = [0u8; SEGMENT_HEADER_BYTES];
    h[0..8].copy_from_slice(&SEGMENT_MAGIC);
    h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    // 12..16 reserved, zero.
    h[16..24].copy_from_slice(&first_seq.to_le_bytes());
    let crc = crc32c::crc32c(&h[0..24]);
    h[24..28].copy_from_slice(&crc.to_le_bytes());
    // 28..32 reserved, zero.
    h
}

/// Returns the segment's first sequence number.
pub fn decode_segment_header(bytes: &[u8]) -> Result<u64, HeaderFault> {
    check_magic_and_version(bytes, &SEGMENT_MAGIC)?;
    if bytes.len() < SEGMENT_HEADER_BYTES {
        return Err(HeaderFault::Short { available_bytes: bytes.len() });
    }
    let h = &bytes[..SEGMENT_HEADER_BYTES];
    let crc = u32::from_le_bytes(h[24..28].try_into().expect("4 bytes"));
    if crc32c::crc32c(&h[0..24]) != crc {
        return Err(HeaderFault::Checksum);
    }
    if h[12..16] != [0; 4] || h[28..32] != [0; 4] {
        return Err(HeaderFault::Reserved);
    }
    Ok(u64::from_le_bytes(h[16..24].try_into().expect("8 bytes")))
}

/// The fixed part of a snapshot file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotHeader {
    /// Log records with this sequence number and later are replayed on top
    /// of the snapshot; earlier ones are covered by it.
    pub replay_from_seq: u64,
    pub payload_bytes: u64,
    pub payload_crc32c: u32,
}

pub fn encode_snapshot_header(s: &SnapshotHeader) -> [u8; SNAPSHOT_HEADER_BYTES] {
    let mut h = [0u8; SNAPSHOT_HEADER_BYTES];
    h[0..8].copy_from_slice(&SNAPSHOT_MAGIC);
    h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    // 12..16 reserved, zero.
    h[16..24].copy_from_slice(&s.replay_from_seq.to_le_bytes());
    h[24..32].copy_from_slice(&s.payload_bytes.to_le_bytes());
    h[32..36].copy_from_slice(&s.payload_crc32c.to_le_bytes());
    let crc = crc32c::crc32c(&h[0..36]);
    h[36..40].copy_from_slice(&crc.to_le_bytes());
    h
}

pub fn decode_snapshot_header(bytes: &[u8]) -> Result<SnapshotHeader, HeaderFault> {
    check_magic_and_version(bytes, &SNAPSHOT_MAGIC)?;
    if bytes.len() < SNAPSHOT_HEADER_BYTES {
        return Err(HeaderFault::Short { available_bytes: bytes.len() });
    }
    let h = &bytes[..SNAPSHOT_HEADER_BYTES];
    let crc = u32::from_le_bytes(h[36..40].try_into().expect("4 bytes"));
    if crc32c::crc32c(&h[0..36]) != crc {
        return Err(HeaderFault::Checksum);
    }
    if h[12..16] != [0; 4] {
        return Err(HeaderFault::Reserved);
    }
    Ok(SnapshotHeader {
        replay_from_seq: u64::from_le_bytes(h[16..24].try_into().expect("8 bytes")),
        payload_bytes: u64::from_le_bytes(h[24..32].try_into().expect("8 bytes")),
        payload_crc32c: u32::from_le_bytes(h[32..36].try_into().expect("4 bytes")),
    })
}
