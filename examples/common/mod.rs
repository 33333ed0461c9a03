//! Data the storage examples share: the same keys, values and rows, so
//! their figures are comparable.

use kvstore::{ClientId, Epoch, Lsn, RequestId, Row, RowBody};

pub const VALUE_BYTES: usize = 64;
/// Distinct client ids across the rows (sizes the at-most-once table).
pub const CLIENTS: u64 = 1_000;

pub fn key(i: u64) -> String {
    format!("key{i:07}")
}

/// 64 printable bytes that differ per row (no accidental compressibility).
pub fn value(i: u64) -> String {
    let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..VALUE_BYTES)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (b'a' + (x % 26) as u8) as char
        })
        .collect()
}

pub fn row(lsn: u64, key_index: u64) -> Row {
    Row {
        epoch: Epoch(1),
        lsn: Lsn(lsn),
        body: RowBody::Put {
            key: key(key_index),
            value: Some(value(lsn)),
            req: RequestId { client: ClientId(lsn % CLIENTS), seq: lsn },
        },
    }
}
