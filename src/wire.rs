//! The binary protocol between `kvnode` processes: framing, the hello
//! handshake, and the limits every frame is checked against.
//!
//! This file owns the bytes on the wire and nothing else: it never opens a
//! socket, starts a thread or reads a clock (the runtime does). It is
//! deliberately usable from tests with plain byte slices.
//!
//! # Frame layout
//!
//! Every frame, in both directions, on every connection:
//!
//! ```text
//! +---------------------+------------------------------+
//! | len: u32 big-endian | body: `len` bytes            |
//! +---------------------+------------------------------+
//!   1 <= len <= limit, where limit is
//!     MAX_HELLO_BYTES        (256)       for the hello and the auth frames
//!     MAX_CLUSTER_FRAME_BYTES (4,096)    for the dialer's Cluster frame
//!     MAX_CLIENT_FRAME_BYTES (66,688)    after a client's hello: one request
//!                                        or response (key 1 KiB + value 64 KiB)
//!     MAX_FRAME_BYTES        (~16.3 MiB) after the balancer's:
//!                                        an Append of 256 rows of that size
//!     MAX_REPLICA_FRAME_BYTES (1 GiB)    after a replica's: a whole snapshot
//! ```
//!
//! # The handshake
//!
//! The first frame each side sends, as soon as the connection is up, is the
//! **hello**; its body is not postcard so that any future version can read it:
//!
//! ```text
//! +--------+-------------------+----------+-------------+---------------------------+
//! | "KVST" | version: u16 b-e  | flags u8 | nonce: 32 B | postcard(NodeId): who I am|
//! +--------+-------------------+----------+-------------+---------------------------+
//!   flags: bit 0 "observer" (a balancer that only looks: Ping and `any`
//!          reads, answered on its own connection); other bits zero
//!   nonce: 32 bytes fresh from the operating system's random source
//!   NodeId: tag 0 Balancer | tag 1 Replica, then its number (1 byte)
//!         | tag 2 Client, then its id (varint)
//! ```
//!
//! Both sides check the magic and the version ([`PROTOCOL_VERSION`]) and close
//! the connection on a mismatch. Then each side proves it knows the key of
//! the connection (the cluster secret between balancer and replicas, the
//! client password between a client and the balancer; an empty key when none
//! is configured) with an **auth frame**:
//!
//! ```text
//! proof:   tag 1 | HMAC-SHA256(key, transcript(side))          (33 bytes)
//! refused: tag 2 | reason, UTF-8, at most 200 bytes
//!
//! transcript(side) = "kvstore handshake" | side ('D' dialer, 'A' acceptor)
//!                    | u16 b-e len | dialer's hello body
//!                    | u16 b-e len | acceptor's hello body
//! ```
//!
//! The dialer sends its proof first; a dialing balancer or replica then sends
//! one [`Frame::Cluster`] with its cluster configuration. The acceptor checks
//! the proof, the configuration (a replica refuses one that differs from its
//! own) and whether it admits the peer at all (a second balancer, a client id
//! already connected, no free slot), and answers with its own proof or a
//! refusal. The dialer checks the acceptor's proof. Both hellos, so both
//! nonces, both identities and the version are inside every proof: a recorded
//! handshake cannot be replayed (the other side's nonce is new), a proof for
//! one identity or direction is worthless for another, and nobody without the
//! key can claim a role. Every later frame on the connection is checked
//! against the role so authenticated ([`accepts`]).
//!
//! Every later frame's body is `postcard(Frame)`: a varint variant tag
//! followed by the fields in declaration order. `Frame::Msg` carries a
//! [`Msg`] exactly as the simulator delivers it. Because postcard encodes
//! enum variants by position, reordering the variants of `Msg`, `Op`,
//! `NodeId`... is a protocol change and must bump [`PROTOCOL_VERSION`].
//!
//! A decoded frame must also respect the data limits: keys at most
//! [`MAX_KEY_BYTES`], values at most [`MAX_VALUE_BYTES`], at most
//! [`MAX_ROWS_PER_APPEND`] rows per append, nothing after the postcard value.
//! A frame that is too large, truncated, undecodable, over a limit, or a
//! message the sender's role never sends ([`accepts`]) is a [`WireError`]: the
//! runtime logs it and closes that one connection.

use crate::config::ClusterConfig;
use crate::msg::Msg;
use crate::replica::MAX_ROWS_PER_APPEND;
use crate::types::{NodeId, Op, ReadMode, RowBody, MAX_KEY_BYTES, MAX_VALUE_BYTES};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use std::fmt;
use std::io::{self, Read};

/// The first four bytes of every hello.
pub const MAGIC: [u8; 4] = *b"KVST";
/// Bumped on any change to the frame layout or to the encoding of `Frame`.
/// 4: nonces and proofs in the handshake, the Cluster frame inside it.
/// 5: `StatusQuery` and `StatusAnswer` (client and balancer).
pub const PROTOCOL_VERSION: u16 = 5;

/// Bytes of the length prefix.
pub const LEN_BYTES: usize = 4;
/// The hello body (magic, version, flags, nonce and a `NodeId`: at most 50
/// bytes) and the auth frames (a proof, or a refusal and its reason).
pub const MAX_HELLO_BYTES: usize = 256;
/// The dialer's `Cluster` frame, inside the handshake.
pub const MAX_CLUSTER_FRAME_BYTES: usize = 4096;
/// Longest replica address a status answer may carry (a status of
/// `MAX_REPLICAS` such entries fits a client frame easily).
pub const MAX_STATUS_ADDR_BYTES: usize = 255;
/// Bytes of a hello's nonce.
pub const NONCE_BYTES: usize = 32;
/// Bytes of a proof (HMAC-SHA256).
pub const PROOF_BYTES: usize = 32;
/// Longest reason in a refusal.
pub const MAX_REASON_BYTES: usize = 200;
const FLAG_OBSERVER: u8 = 1;
const AUTH_PROOF: u8 = 1;
const AUTH_REFUSED: u8 = 2;
const TRANSCRIPT_LABEL: &[u8] = b"kvstore handshake";
/// Room for a row's or a message's fixed fields besides key and value.
const OVERHEAD_BYTES: usize = 128;
/// Largest frame a client may send or be sent: one request or response.
pub const MAX_CLIENT_FRAME_BYTES: usize = MAX_KEY_BYTES + MAX_VALUE_BYTES + OVERHEAD_BYTES;
/// Largest frame between replicas and the balancer: a full `Append`.
pub const MAX_FRAME_BYTES: usize =
    MAX_ROWS_PER_APPEND * (MAX_KEY_BYTES + MAX_VALUE_BYTES + OVERHEAD_BYTES) + OVERHEAD_BYTES;
/// Frames from a replica: as large as a snapshot of the whole store may be
/// (`InstallSnapshot` to a follower too far behind for the leader's log).
/// Buffers grow only as bytes arrive, so the limit costs nothing until used.
pub const MAX_REPLICA_FRAME_BYTES: usize = 1 << 30;

/// Everything sent after the hello and the auth frames.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Frame {
    Msg(Msg),
    /// A dialing balancer or replica's cluster configuration, once, inside
    /// the handshake: a replica refuses a peer whose configuration differs
    /// from its own. Never accepted later on a connection.
    Cluster(ClusterConfig),
}

/// The first frame of a connection: who is speaking, in which version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hello {
    pub version: u16,
    pub from: NodeId,
    /// Fresh from the OS for every connection: what makes each proof new.
    pub nonce: [u8; NONCE_BYTES],
    /// A balancer that only looks at a replica (Ping, `any` reads).
    pub observer: bool,
}

impl Hello {
    pub fn new(from: NodeId, nonce: [u8; NONCE_BYTES]) -> Hello {
        Hello { version: PROTOCOL_VERSION, from, nonce, observer: false }
    }
}

/// The second frame of each side: a proof of the key, or why not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Auth {
    Proof([u8; PROOF_BYTES]),
    Refused(String),
}

/// Which side of a connection a proof is from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The side that connected.
    Dialer,
    /// The side that accepted.
    Acceptor,
}

/// Why a connection is closed.
#[derive(Debug, PartialEq, Eq)]
pub enum WireError {
    /// A frame announced more bytes than the limit for this connection.
    TooLarge { len: usize, max: usize },
    /// A frame announced zero bytes.
    Empty,
    /// The connection ended in the middle of a frame.
    Truncated { have: usize, need: usize },
    /// The hello does not start with `KVST`.
    BadMagic([u8; 4]),
    /// The peer speaks another protocol version.
    Version { theirs: u16 },
    /// The body is not a valid postcard value of the expected type.
    Decode(String),
    /// Decoded, but over a data limit or not something this sender may send.
    Invalid(String),
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::TooLarge { len, max } => {
                write!(f, "frame of {len} bytes exceeds the limit of {max}")
            }
            WireError::Empty => f.write_str("empty frame"),
            WireError::Truncated { have, need } => {
                write!(f, "connection closed inside a frame ({have} of {need} bytes)")
            }
            WireError::BadMagic(m) => write!(f, "not a kvnode peer (hello starts {m:02x?})"),
            WireError::Version { theirs } => {
                write!(f, "protocol version mismatch: peer speaks {theirs}, we speak {PROTOCOL_VERSION}")
            }
            WireError::Decode(e) => write!(f, "undecodable frame: {e}"),
            WireError::Invalid(why) => write!(f, "invalid frame: {why}"),
        }
    }
}

impl std::error::Error for WireError {}

// ---- encoding ----

/// The body of `hello`, as sent (and as it enters the proofs).
pub fn hello_body(hello: &Hello) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&hello.version.to_be_bytes());
    out.push(if hello.observer { FLAG_OBSERVER } else { 0 });
    out.extend_from_slice(&hello.nonce);
    postcard::to_extend(&hello.from, out).expect("a NodeId always encodes")
}

/// Appends the hello frame to `out`.
pub fn encode_hello(hello: &Hello, out: &mut Vec<u8>) {
    encode_raw(&hello_body(hello), out);
}

/// Appends one length-prefixed frame with this body.
fn encode_raw(body: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(body);
}

/// Appends an auth frame (a refusal's reason is cut to [`MAX_REASON_BYTES`]).
pub fn encode_auth(auth: &Auth, out: &mut Vec<u8>) {
    let mut body = Vec::with_capacity(1 + PROOF_BYTES);
    match auth {
        Auth::Proof(mac) => {
            body.push(AUTH_PROOF);
            body.extend_from_slice(mac);
        }
        Auth::Refused(why) => {
            body.push(AUTH_REFUSED);
            let mut end = why.len().min(MAX_REASON_BYTES);
            while !why.is_char_boundary(end) {
                end -= 1;
            }
            body.extend_from_slice(&why.as_bytes()[..end]);
        }
    }
    encode_raw(&body, out);
}

/// The proof `side` sends: HMAC-SHA256 under `key` of both hello bodies.
pub fn proof(key: &[u8], side: Side, dialer_hello: &[u8], acceptor_hello: &[u8]) -> [u8; PROOF_BYTES] {
    transcript_mac(key, side, dialer_hello, acceptor_hello).finalize().into_bytes().into()
}

/// Whether `mac` is the proof `side` owes (compared in constant time).
pub fn verify_proof(key: &[u8], side: Side, dialer_hello: &[u8], acceptor_hello: &[u8], mac: &[u8]) -> bool {
    transcript_mac(key, side, dialer_hello, acceptor_hello).verify_slice(mac).is_ok()
}

fn transcript_mac(key: &[u8], side: Side, dialer_hello: &[u8], acceptor_hello: &[u8]) -> Hmac<Sha256> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(TRANSCRIPT_LABEL);
    mac.update(match side {
        Side::Dialer => b"D",
        Side::Acceptor => b"A",
    });
    for hello in [dialer_hello, acceptor_hello] {
        mac.update(&(hello.len() as u16).to_be_bytes());
        mac.update(hello);
    }
    mac
}

/// Appends one length-prefixed frame to `out`. A frame over `max` bytes is
/// refused (and nothing is appended): the caller logs and drops it.
pub fn encode_frame(frame: &Frame, max: usize, out: &mut Vec<u8>) -> Result<(), WireError> {
    let at = out.len();
    out.extend_from_slice(&[0; LEN_BYTES]);
    let buf = std::mem::take(out);
    match postcard::to_extend(frame, buf) {
        Ok(buf) => *out = buf,
        Err(e) => unreachable!("every Frame encodes: {e}"),
    }
    let len = out.len() - at - LEN_BYTES;
    if len > max {
        out.truncate(at);
        return Err(WireError::TooLarge { len, max });
    }
    patch_len(out, at);
    Ok(())
}

fn patch_len(out: &mut [u8], at: usize) {
    let len = (out.len() - at - LEN_BYTES) as u32;
    out[at..at + LEN_BYTES].copy_from_slice(&len.to_be_bytes());
}

// ---- decoding ----

/// Reassembles frames from a byte stream that arrives in arbitrary pieces.
///
/// The buffer starts small and grows only as far as the frame being read
/// needs, never past the limit, so a peer announcing a huge frame costs
/// nothing: the announcement alone is an error.
pub struct FrameDecoder {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    max_body: usize,
}

/// Bytes asked of the socket per read at least.
const MIN_READ_BYTES: usize = 4096;
const INITIAL_BUFFER_BYTES: usize = 32 * 1024;

impl FrameDecoder {
    /// A decoder expecting a hello first.
    pub fn new() -> FrameDecoder {
        FrameDecoder::with_limit(MAX_HELLO_BYTES)
    }

    pub fn with_limit(max_body: usize) -> FrameDecoder {
        FrameDecoder { buf: Vec::new(), start: 0, end: 0, max_body }
    }

    /// Changes the frame limit (after the hello, once the peer is known).
    pub fn set_limit(&mut self, max_body: usize) {
        self.max_body = max_body;
    }

    /// Bytes received and not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.end - self.start
    }

    /// Reads once from `r` into the buffer. `Ok(0)` is end of stream.
    pub fn fill(&mut self, r: &mut impl Read) -> io::Result<usize> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        let want = self.pending_len().map_or(0, |len| LEN_BYTES + len);
        // Move what is held to the front when the room behind it is short,
        // or when the frame it begins would not fit where it starts.
        if self.start > 0
            && (self.buf.len() - self.end < MIN_READ_BYTES || self.start + want > self.buf.len())
        {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.buf.len() - self.end < MIN_READ_BYTES {
            // Grow with the bytes held, never with the number of reads nor
            // straight to the announced length: room for one more read, or
            // twice what is buffered (so copying stays amortized), and never
            // past one whole frame plus one read's worth. A peer that
            // announces a huge frame and trickles it a byte at a time costs
            // about twice the bytes it sent.
            let cap = LEN_BYTES + self.max_body + MIN_READ_BYTES;
            let doubled = (2 * self.end).max(INITIAL_BUFFER_BYTES).min(cap);
            let len = doubled.max(self.end + MIN_READ_BYTES);
            // `resize` alone may double the capacity again; ask for exactly this.
            self.buf.reserve_exact(len - self.buf.len());
            self.buf.resize(len, 0);
        }
        let n = r.read(&mut self.buf[self.end..])?;
        self.end += n;
        Ok(n)
    }

    /// Appends bytes read elsewhere (the event loop's shared read buffer),
    /// growing by what arrives: the buffer holds at most twice the bytes
    /// buffered, and what [`FrameDecoder::buffered`] reports is bounded
    /// by one frame past the limit plus one read, as with `fill`.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.start > 0 && self.end + bytes.len() > self.buf.capacity() {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let end = self.end + bytes.len();
        if end <= self.buf.len() {
            self.buf[self.end..end].copy_from_slice(bytes);
        } else {
            self.buf.truncate(self.end);
            self.buf.extend_from_slice(bytes);
        }
        self.end = end;
    }

    /// Frees the buffer when it holds nothing (an idle connection then
    /// costs no buffer; the next read allocates one again).
    pub fn release_if_empty(&mut self) {
        if self.start == self.end && !self.buf.is_empty() {
            self.buf = Vec::new();
            self.start = 0;
            self.end = 0;
        }
    }

    /// Appends bytes directly (tests, and data read elsewhere).
    pub fn feed(&mut self, bytes: &[u8]) {
        let mut r = bytes;
        while !r.is_empty() {
            self.fill(&mut r).expect("reading a slice cannot fail");
        }
    }

    /// At end of stream: an error if a frame was cut short.
    pub fn finish(&self) -> Result<(), WireError> {
        let have = self.buffered();
        if have == 0 {
            return Ok(());
        }
        let need = self.pending_len().map_or(LEN_BYTES, |len| LEN_BYTES + len);
        Err(WireError::Truncated { have, need })
    }

    /// The next complete hello, if buffered.
    pub fn next_hello(&mut self) -> Result<Option<Hello>, WireError> {
        Ok(self.next_hello_raw()?.map(|(h, _)| h))
    }

    /// The next complete hello and its body as received (for the proofs).
    pub fn next_hello_raw(&mut self) -> Result<Option<(Hello, Vec<u8>)>, WireError> {
        let Some(body) = self.next_body()? else {
            return Ok(None);
        };
        let raw = &self.buf[body];
        decode_hello(raw).map(|h| Some((h, raw.to_vec())))
    }

    /// The next complete auth frame, if buffered.
    pub fn next_auth(&mut self) -> Result<Option<Auth>, WireError> {
        let Some(body) = self.next_body()? else {
            return Ok(None);
        };
        decode_auth(&self.buf[body]).map(Some)
    }

    /// The next complete frame, if buffered.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, WireError> {
        let Some(body) = self.next_body()? else {
            return Ok(None);
        };
        decode_frame(&self.buf[body]).map(Some)
    }

    /// The length announced by the frame at the front, if its prefix is here.
    fn pending_len(&self) -> Option<usize> {
        let avail = &self.buf[self.start..self.end];
        let prefix: [u8; LEN_BYTES] = avail.get(..LEN_BYTES)?.try_into().expect("4 bytes");
        Some(u32::from_be_bytes(prefix) as usize)
    }

    fn next_body(&mut self) -> Result<Option<std::ops::Range<usize>>, WireError> {
        let Some(len) = self.pending_len() else {
            return Ok(None);
        };
        if len == 0 {
            return Err(WireError::Empty);
        }
        if len > self.max_body {
            return Err(WireError::TooLarge { len, max: self.max_body });
        }
        if self.buffered() < LEN_BYTES + len {
            return Ok(None);
        }
        let body = self.start + LEN_BYTES..self.start + LEN_BYTES + len;
        self.start = body.end;
        Ok(Some(body))
    }
}

impl Default for FrameDecoder {
    fn default() -> Self {
        FrameDecoder::new()
    }
}

/// Parses a hello body.
pub fn decode_hello(body: &[u8]) -> Result<Hello, WireError> {
    if body.len() < 6 {
        return Err(WireError::Truncated { have: body.len(), need: 7 });
    }
    let magic: [u8; 4] = body[..4].try_into().expect("4 bytes");
    if magic != MAGIC {
        return Err(WireError::BadMagic(magic));
    }
    let version = u16::from_be_bytes([body[4], body[5]]);
    if version != PROTOCOL_VERSION {
        return Err(WireError::Version { theirs: version });
    }
    let fixed = 7 + NONCE_BYTES;
    if body.len() <= fixed {
        return Err(WireError::Truncated { have: body.len(), need: fixed + 1 });
    }
    let flags = body[6];
    if flags & !FLAG_OBSERVER != 0 {
        return Err(WireError::Invalid(format!("unknown hello flags {flags:#04x}")));
    }
    let nonce: [u8; NONCE_BYTES] = body[7..fixed].try_into().expect("32 bytes");
    let from: NodeId = decode_exact(&body[fixed..])?;
    Ok(Hello { version, from, nonce, observer: flags & FLAG_OBSERVER != 0 })
}

/// Parses an auth frame body.
pub fn decode_auth(body: &[u8]) -> Result<Auth, WireError> {
    match body.split_first() {
        Some((&AUTH_PROOF, mac)) if mac.len() == PROOF_BYTES => {
            Ok(Auth::Proof(mac.try_into().expect("32 bytes")))
        }
        Some((&AUTH_REFUSED, why)) if why.len() <= MAX_REASON_BYTES => {
            Ok(Auth::Refused(String::from_utf8_lossy(why).into_owned()))
        }
        _ => Err(WireError::Decode(format!("not an auth frame ({} bytes)", body.len()))),
    }
}

/// Parses a frame body and checks it against the data limits.
pub fn decode_frame(body: &[u8]) -> Result<Frame, WireError> {
    let frame: Frame = decode_exact(body)?;
    check_limits(&frame)?;
    Ok(frame)
}

fn decode_exact<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, WireError> {
    let (value, rest) = postcard::take_from_bytes(body).map_err(|e| WireError::Decode(e.to_string()))?;
    if !rest.is_empty() {
        return Err(WireError::Decode(format!("{} trailing bytes", rest.len())));
    }
    Ok(value)
}

// ---- limits ----

/// Checks every key, value and row count against the documented limits.
pub fn check_limits(frame: &Frame) -> Result<(), WireError> {
    match frame {
        Frame::Msg(msg) => check_msg(msg),
        Frame::Cluster(config) => {
            let n = config.replicas.len();
            if n == 0 || n > crate::config::MAX_REPLICAS as usize {
                return Err(WireError::Invalid(format!("cluster of {n} replicas")));
            }
            Ok(())
        }
    }
}

fn check_msg(msg: &Msg) -> Result<(), WireError> {
    match msg {
        Msg::Request { op, .. } => check_op(op),
        Msg::Response { result: Ok(reply), .. } | Msg::ReadResult { result: Ok(reply), .. } => {
            check_value(reply.value.as_deref())
        }
        Msg::Write { key, value, .. } => {
            check_key(key)?;
            check_value(value.as_deref())
        }
        Msg::Read { key, .. } => check_key(key),
        Msg::StatusAnswer { view, .. } => {
            if view.replicas.len() > crate::config::MAX_REPLICAS as usize {
                return Err(WireError::Invalid(format!("status of {} replicas", view.replicas.len())));
            }
            match view.replicas.iter().find(|r| r.addr.len() > MAX_STATUS_ADDR_BYTES) {
                Some(r) => Err(WireError::Invalid(format!("address of {} bytes in a status", r.addr.len()))),
                None => Ok(()),
            }
        }
        Msg::InstallSnapshot { snapshot, .. } => {
            for (key, value) in &snapshot.kv {
                check_key(key)?;
                check_value(Some(value))?;
            }
            Ok(())
        }
        Msg::Append { rows, .. } => {
            if rows.len() > MAX_ROWS_PER_APPEND {
                return Err(WireError::Invalid(format!(
                    "{} rows in one append, limit {MAX_ROWS_PER_APPEND}",
                    rows.len()
                )));
            }
            for row in rows {
                if let RowBody::Put { key, value, .. } = &row.body {
                    check_key(key)?;
                    check_value(value.as_deref())?;
                }
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

fn check_op(op: &Op) -> Result<(), WireError> {
    check_key(op.key())?;
    match op {
        Op::Set { value, .. } => check_value(Some(value)),
        _ => Ok(()),
    }
}

fn check_key(key: &str) -> Result<(), WireError> {
    if key.len() > MAX_KEY_BYTES {
        return Err(WireError::Invalid(format!("key of {} bytes, limit {MAX_KEY_BYTES}", key.len())));
    }
    Ok(())
}

fn check_value(value: Option<&str>) -> Result<(), WireError> {
    match value {
        Some(v) if v.len() > MAX_VALUE_BYTES => {
            Err(WireError::Invalid(format!("value of {} bytes, limit {MAX_VALUE_BYTES}", v.len())))
        }
        _ => Ok(()),
    }
}

/// The largest frame a connection with `peer` may carry after the hello.
pub fn limit_for(peer: NodeId) -> usize {
    match peer {
        NodeId::Client(_) => MAX_CLIENT_FRAME_BYTES,
        NodeId::Balancer => MAX_FRAME_BYTES,
        // Replicas ship whole snapshots to each other (InstallSnapshot).
        NodeId::Replica(_) => MAX_REPLICA_FRAME_BYTES,
    }
}

/// Whether a node of kind `local` takes `frame` from `from`: each role sends
/// only its own kinds of message, and anything else on a connection is a
/// protocol error (which also keeps a confused or hostile peer from, say,
/// promoting a replica while claiming to be a client).
/// A `Cluster` frame is never accepted here: it belongs to the handshake.
pub fn accepts(local: NodeId, from: NodeId, frame: &Frame) -> bool {
    use NodeId::{Balancer, Client, Replica};
    let Frame::Msg(msg) = frame else {
        return false;
    };
    match (local, from) {
        (Balancer, Client(c)) => {
            matches!(msg, Msg::Request { id, .. } if id.client == c) || matches!(msg, Msg::StatusQuery { .. })
        }
        (Balancer, Replica(_)) => matches!(
            msg,
            Msg::Pong { .. }
                | Msg::Promise { .. }
                | Msg::PrepareRefused { .. }
                | Msg::WriteResult { .. }
                | Msg::ReadResult { .. }
        ),
        (Replica(_), Balancer) => matches!(
            msg,
            Msg::Ping { .. }
                | Msg::Prepare { .. }
                | Msg::Promote { .. }
                | Msg::Write { .. }
                | Msg::Read { .. }
        ),
        (Replica(_), Replica(_)) => {
            matches!(msg, Msg::Append { .. } | Msg::AppendAck { .. } | Msg::InstallSnapshot { .. })
        }
        (Client(_), Balancer) => matches!(msg, Msg::Response { .. } | Msg::StatusAnswer { .. }),
        _ => false,
    }
}

/// Whether an observer (a balancer connection flagged so in its hello) may
/// send `frame`: only pings and `any` reads, which a replica answers at once
/// on the observer's own connection.
pub fn observer_accepts(frame: &Frame) -> bool {
    matches!(frame, Frame::Msg(Msg::Ping { .. } | Msg::Read { mode: ReadMode::Any, .. }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msg::Reply;
    use crate::types::{ClientId, Epoch, LogPos, Lsn, ReadMode, ReplicaId, RequestId, Row};

    fn hello(from: NodeId) -> Hello {
        Hello::new(from, [9; NONCE_BYTES])
    }

    fn request(key: &str, value: &str) -> Frame {
        Frame::Msg(Msg::Request {
            id: RequestId { client: ClientId(u64::MAX), seq: 7 },
            attempt: 2,
            op: Op::Set { key: key.into(), value: value.into() },
            read: ReadMode::Session,
            min_lsn: Lsn(3),
        })
    }

    fn samples() -> Vec<Frame> {
        let row = |lsn| Row {
            epoch: Epoch(2),
            lsn: Lsn(lsn),
            body: RowBody::Put {
                key: "k".into(),
                value: Some("v = with spaces".into()),
                req: RequestId { client: ClientId(1), seq: lsn },
            },
        };
        vec![
            request("stephen", "zerfas"),
            Frame::Msg(Msg::Response {
                id: RequestId { client: ClientId(9), seq: 1 },
                attempt: 1,
                result: Ok(Reply { value: None, lsn: Lsn(4) }),
            }),
            Frame::Msg(Msg::Append {
                epoch: Epoch(2),
                prev: LogPos { epoch: Epoch(1), lsn: Lsn(4) },
                rows: vec![row(5), row(6)],
                commit: Lsn(4),
                probe: 3,
                end: Lsn(6),
                echo: 77,
            }),
            Frame::Cluster(ClusterConfig::new(3, 1)),
        ]
    }

    #[test]
    fn frames_round_trip_through_arbitrary_splits() {
        let mut bytes = Vec::new();
        encode_hello(&hello(NodeId::Client(ClientId(42))), &mut bytes);
        for f in samples() {
            encode_frame(&f, MAX_FRAME_BYTES, &mut bytes).unwrap();
        }
        for chunk in [1, 2, 3, 5, 64, bytes.len()] {
            let mut dec = FrameDecoder::new();
            let mut got = Vec::new();
            let mut got_hello = None;
            for piece in bytes.chunks(chunk) {
                dec.feed(piece);
                if got_hello.is_none() {
                    got_hello = dec.next_hello().unwrap();
                    if got_hello.is_some() {
                        dec.set_limit(MAX_FRAME_BYTES);
                    } else {
                        continue;
                    }
                }
                while let Some(f) = dec.next_frame().unwrap() {
                    got.push(f);
                }
            }
            assert_eq!(got_hello, Some(Hello::new(NodeId::Client(ClientId(42)), [9; NONCE_BYTES])));
            assert_eq!(got, samples(), "chunk size {chunk}");
            assert_eq!(dec.finish(), Ok(()));
        }
    }

    #[test]
    fn frame_layout_is_length_then_postcard() {
        let mut bytes = Vec::new();
        let mut h = hello(NodeId::Replica(ReplicaId(3)));
        h.observer = true;
        encode_hello(&h, &mut bytes);
        // len=41: "KVST", version 5, flags 1 (observer), 32 nonce bytes,
        // NodeId::Replica tag 1, id 3
        let mut want = vec![0, 0, 0, 41, b'K', b'V', b'S', b'T', 0, 5, 1];
        want.extend_from_slice(&[9; NONCE_BYTES]);
        want.extend_from_slice(&[1, 3]);
        assert_eq!(bytes, want);
        let mut dec = FrameDecoder::new();
        dec.feed(&bytes);
        assert_eq!(dec.next_hello(), Ok(Some(h)));
        // Auth frames: tag 1 and 32 bytes of proof, or tag 2 and a reason.
        let mut bytes = Vec::new();
        encode_auth(&Auth::Proof([7; PROOF_BYTES]), &mut bytes);
        encode_auth(&Auth::Refused("no".into()), &mut bytes);
        let mut want = vec![0, 0, 0, 33, 1];
        want.extend_from_slice(&[7; PROOF_BYTES]);
        want.extend_from_slice(&[0, 0, 0, 3, 2, b'n', b'o']);
        assert_eq!(bytes, want);
        let mut bytes = Vec::new();
        encode_frame(&Frame::Msg(Msg::Ping { nonce: 5 }), MAX_FRAME_BYTES, &mut bytes).unwrap();
        // Frame::Msg tag 0, Msg::Ping tag 6, nonce 5
        assert_eq!(bytes, [0, 0, 0, 3, 0, 6, 5]);
    }

    #[test]
    fn oversized_frames_are_refused_before_reading_them() {
        let mut dec = FrameDecoder::with_limit(MAX_CLIENT_FRAME_BYTES);
        dec.feed(&u32::MAX.to_be_bytes());
        assert_eq!(
            dec.next_frame(),
            Err(WireError::TooLarge { len: u32::MAX as usize, max: MAX_CLIENT_FRAME_BYTES })
        );
        // The sender refuses too, and leaves its buffer as it was.
        let big = request("k", &"x".repeat(MAX_VALUE_BYTES));
        let mut out = vec![1, 2];
        assert!(matches!(encode_frame(&big, 1000, &mut out), Err(WireError::TooLarge { .. })));
        assert_eq!(out, [1, 2]);
        // A value just within the limit fits a client frame.
        encode_frame(&big, MAX_CLIENT_FRAME_BYTES, &mut out).unwrap();
    }

    #[test]
    fn over_limit_keys_and_values_are_invalid_even_in_a_large_frame() {
        for f in
            [request(&"k".repeat(MAX_KEY_BYTES + 1), "v"), request("k", &"v".repeat(MAX_VALUE_BYTES + 1))]
        {
            let mut bytes = Vec::new();
            encode_frame(&f, MAX_FRAME_BYTES, &mut bytes).unwrap();
            let mut dec = FrameDecoder::with_limit(MAX_FRAME_BYTES);
            dec.feed(&bytes);
            assert!(matches!(dec.next_frame(), Err(WireError::Invalid(_))));
        }
    }

    #[test]
    fn truncated_input_is_reported_at_end_of_stream() {
        let mut bytes = Vec::new();
        encode_frame(&request("a", "b"), MAX_FRAME_BYTES, &mut bytes).unwrap();
        for cut in 1..bytes.len() {
            let mut dec = FrameDecoder::with_limit(MAX_FRAME_BYTES);
            dec.feed(&bytes[..cut]);
            assert_eq!(dec.next_frame(), Ok(None));
            assert!(matches!(dec.finish(), Err(WireError::Truncated { have, .. }) if have == cut));
        }
        // A frame whose own body ends early cannot decode.
        let mut short = bytes.clone();
        short.truncate(short.len() - 2);
        let len = (short.len() - LEN_BYTES) as u32;
        short[..4].copy_from_slice(&len.to_be_bytes());
        let mut dec = FrameDecoder::with_limit(MAX_FRAME_BYTES);
        dec.feed(&short);
        assert!(matches!(dec.next_frame(), Err(WireError::Decode(_))));
    }

    #[test]
    fn garbage_is_an_error_never_a_panic() {
        // A deterministic pseudo-random byte stream (splitmix64).
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        let mut errors = 0;
        for round in 0..2000 {
            let len = 1 + (next() % 300) as usize;
            let mut bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if round % 2 == 0 && bytes.len() > 4 {
                // A plausible length prefix, so the body itself gets decoded.
                let body = (bytes.len() - 4) as u32;
                bytes[..4].copy_from_slice(&body.to_be_bytes());
            }
            let mut dec = FrameDecoder::with_limit(MAX_FRAME_BYTES);
            dec.feed(&bytes);
            loop {
                match dec.next_frame() {
                    Ok(Some(_)) => continue,
                    Ok(None) => break,
                    Err(_) => {
                        errors += 1;
                        break;
                    }
                }
            }
            let mut hello = FrameDecoder::new();
            hello.feed(&bytes);
            let _ = hello.next_hello();
        }
        assert!(errors > 500, "garbage should mostly be rejected, got {errors} errors");
        // HTTP is not a kvnode peer.
        let mut dec = FrameDecoder::new();
        dec.feed(b"GET / HTTP/1.1\r\n\r\n");
        assert!(matches!(dec.next_hello(), Err(WireError::TooLarge { .. })));
        let mut dec = FrameDecoder::new();
        dec.feed(&[0, 0, 0, 8, b'H', b'T', b'T', b'P', 0, 1, 0, 0]);
        assert!(matches!(dec.next_hello(), Err(WireError::BadMagic(_))));
        let mut dec = FrameDecoder::new();
        dec.feed(&[0, 0, 0, 0]);
        assert_eq!(dec.next_hello(), Err(WireError::Empty));
    }

    #[test]
    fn a_huge_announced_frame_costs_only_the_bytes_sent() {
        let mut dec = FrameDecoder::with_limit(MAX_REPLICA_FRAME_BYTES);
        let mut bytes = (17_000_000u32).to_be_bytes().to_vec();
        bytes.extend_from_slice(&[7; 10]);
        dec.feed(&bytes);
        assert_eq!(dec.next_frame(), Ok(None), "incomplete, not an error");
        assert!(dec.buf.len() <= 1 << 20, "buffer grew to {} bytes for 14 received", dec.buf.len());
    }

    #[test]
    fn a_frame_trickled_a_byte_at_a_time_costs_about_its_bytes() {
        // Issue 10, finding 4: the buffer used to double on every read of an
        // incomplete frame, so 29 bytes after a hello cost 1 GiB.
        let mut dec = FrameDecoder::with_limit(MAX_REPLICA_FRAME_BYTES);
        let body = 300_000usize;
        let mut bytes = (body as u32).to_be_bytes().to_vec();
        bytes.extend((0..body).map(|i| i as u8));
        for (i, b) in bytes.iter().enumerate() {
            let n = dec.fill(&mut &[*b][..]).unwrap();
            assert_eq!(n, 1);
            let received = i + 1;
            assert!(
                dec.buf.capacity() <= 2 * received + INITIAL_BUFFER_BYTES + MIN_READ_BYTES,
                "{} bytes of buffer after {received} bytes received",
                dec.buf.capacity()
            );
            if received < bytes.len() {
                assert_eq!(dec.next_frame(), Ok(None));
            }
        }
        // The same holds for a frame that arrives in reads of a few bytes.
        let mut dec = FrameDecoder::with_limit(MAX_REPLICA_FRAME_BYTES);
        for (i, piece) in bytes.chunks(7).enumerate() {
            dec.feed(piece);
            let received = (i + 1) * 7;
            assert!(dec.buf.capacity() <= 2 * received + INITIAL_BUFFER_BYTES + MIN_READ_BYTES);
        }
    }

    #[test]
    fn pushed_pieces_decode_as_fed_and_cost_about_their_bytes() {
        // The event loop pushes whatever one read brought, mixed with frames
        // taken in between: the same frames come out, and a trickled frame
        // costs at most about twice its bytes.
        let frames: Vec<Frame> = samples();
        let mut bytes = Vec::new();
        for f in &frames {
            encode_frame(f, MAX_REPLICA_FRAME_BYTES, &mut bytes).unwrap();
        }
        for piece in [1, 3, 7, 64, 4096, bytes.len()] {
            let mut dec = FrameDecoder::with_limit(MAX_REPLICA_FRAME_BYTES);
            let mut got = Vec::new();
            for chunk in bytes.chunks(piece) {
                dec.push(chunk);
                while let Some(f) = dec.next_frame().unwrap() {
                    got.push(f);
                }
            }
            assert_eq!(got, frames, "pieces of {piece}");
            assert_eq!(dec.buffered(), 0);
        }
        let body = 300_000usize;
        let mut big = (body as u32).to_be_bytes().to_vec();
        big.extend((0..body).map(|i| i as u8));
        let mut dec = FrameDecoder::with_limit(MAX_REPLICA_FRAME_BYTES);
        for (i, b) in big.iter().enumerate() {
            dec.push(&[*b]);
            let received = i + 1;
            assert!(dec.buf.capacity() <= 2 * received + 64, "{} after {received}", dec.buf.capacity());
        }
        assert_eq!(dec.buffered(), big.len());
    }

    #[test]
    fn other_versions_are_refused() {
        let mut bytes = Vec::new();
        encode_hello(&hello(NodeId::Balancer), &mut bytes);
        bytes[9] = PROTOCOL_VERSION as u8 + 1;
        let mut dec = FrameDecoder::new();
        dec.feed(&bytes);
        assert_eq!(dec.next_hello(), Err(WireError::Version { theirs: PROTOCOL_VERSION + 1 }));
    }

    #[test]
    fn each_role_sends_only_its_own_messages() {
        let c = NodeId::Client(ClientId(u64::MAX));
        let r = NodeId::Replica(ReplicaId(1));
        let b = NodeId::Balancer;
        let req = request("k", "v");
        assert!(accepts(b, c, &req));
        assert!(!accepts(b, NodeId::Client(ClientId(1)), &req), "request names another client");
        assert!(!accepts(r, c, &req));
        let promote = Frame::Msg(Msg::Promote { epoch: Epoch(1), ballot: 7 });
        assert!(accepts(r, b, &promote));
        assert!(!accepts(r, c, &promote));
        assert!(!accepts(r, r, &promote));
        // The configuration belongs to the handshake, never later.
        let cluster = samples().pop().unwrap();
        assert!(!accepts(r, b, &cluster));
        assert!(!accepts(r, r, &cluster));
        // An observer only pings and reads `any`.
        assert!(observer_accepts(&Frame::Msg(Msg::Ping { nonce: 1 })));
        let read = |mode| Frame::Msg(Msg::Read { tag: 1, key: "k".into(), mode, min_lsn: Lsn(0) });
        assert!(observer_accepts(&read(ReadMode::Any)));
        assert!(!observer_accepts(&read(ReadMode::Leader)));
        assert!(!observer_accepts(&promote));
        // Status: a client asks the balancer, only the balancer answers.
        let query = Frame::Msg(Msg::StatusQuery { tag: 1 });
        let answer = Frame::Msg(Msg::StatusAnswer { tag: 1, view: crate::msg::ClusterView::default() });
        assert!(accepts(b, c, &query));
        assert!(!accepts(r, b, &query) && !accepts(r, r, &query) && !accepts(r, c, &query));
        assert!(!accepts(c, b, &query));
        assert!(accepts(c, b, &answer));
        assert!(!accepts(b, c, &answer) && !accepts(b, r, &answer) && !accepts(r, b, &answer));
        assert!(!observer_accepts(&query));
    }

    #[test]
    fn a_status_answer_is_checked_against_its_limits() {
        use crate::msg::{ClusterView, ReplicaView, Status};
        let view = |n: u8, addr: usize| ClusterView {
            replicas: (1..=n)
                .map(|i| ReplicaView {
                    id: ReplicaId(i),
                    addr: "a".repeat(addr),
                    heard_us_ago: Some(1),
                    alive: true,
                    status: Status::default(),
                })
                .collect(),
            ..ClusterView::default()
        };
        let frame = |v| Frame::Msg(Msg::StatusAnswer { tag: 9, view: v });
        let full = frame(view(crate::config::MAX_REPLICAS, MAX_STATUS_ADDR_BYTES));
        assert_eq!(check_limits(&full), Ok(()));
        let mut bytes = Vec::new();
        encode_frame(&full, MAX_CLIENT_FRAME_BYTES, &mut bytes)
            .expect("the largest status fits a client frame");
        let mut dec = FrameDecoder::with_limit(MAX_CLIENT_FRAME_BYTES);
        dec.feed(&bytes);
        assert_eq!(dec.next_frame(), Ok(Some(full)));
        assert!(check_limits(&frame(view(10, 1))).is_err());
        assert!(check_limits(&frame(view(3, MAX_STATUS_ADDR_BYTES + 1))).is_err());
    }

    #[test]
    fn proofs_bind_the_key_both_hellos_and_the_side() {
        let d = hello_body(&hello(NodeId::Balancer));
        let mut other = hello(NodeId::Replica(ReplicaId(1)));
        let a = hello_body(&other);
        let key = b"0123456789abcdef0123456789abcdef";
        let p = proof(key, Side::Dialer, &d, &a);
        assert!(verify_proof(key, Side::Dialer, &d, &a, &p));
        assert!(!verify_proof(b"another key, just as long .......", Side::Dialer, &d, &a, &p));
        assert!(!verify_proof(key, Side::Acceptor, &d, &a, &p), "a reflected proof");
        assert!(!verify_proof(key, Side::Dialer, &a, &d, &p));
        // A fresh nonce on the other side makes a recorded proof worthless.
        other.nonce[0] ^= 1;
        assert!(!verify_proof(key, Side::Dialer, &d, &hello_body(&other), &p));
        // So does another identity with the same nonce.
        let r2 = hello_body(&hello(NodeId::Replica(ReplicaId(2))));
        assert!(!verify_proof(key, Side::Dialer, &d, &r2, &p));
        assert!(!verify_proof(key, Side::Dialer, &d, &a, &p[..31]));
    }

    #[test]
    fn auth_frames_round_trip_and_garbage_is_refused() {
        for auth in [Auth::Proof([3; PROOF_BYTES]), Auth::Refused("another balancer is connected".into())] {
            let mut bytes = Vec::new();
            encode_auth(&auth, &mut bytes);
            let mut dec = FrameDecoder::new();
            dec.feed(&bytes);
            assert_eq!(dec.next_auth(), Ok(Some(auth)));
        }
        let long = "é".repeat(300);
        let mut bytes = Vec::new();
        encode_auth(&Auth::Refused(long), &mut bytes);
        let mut dec = FrameDecoder::new();
        dec.feed(&bytes);
        assert_eq!(dec.next_auth(), Ok(Some(Auth::Refused("é".repeat(MAX_REASON_BYTES / 2)))));
        for body in [&[][..], &[1, 2, 3], &[9; 33], &[2; 250]] {
            assert!(decode_auth(body).is_err(), "{body:?}");
        }
        // A hello with unknown flags, or cut inside its nonce, is refused.
        let mut body = hello_body(&hello(NodeId::Balancer));
        body[6] = 2;
        assert!(matches!(decode_hello(&body), Err(WireError::Invalid(_))));
        let body = hello_body(&hello(NodeId::Balancer));
        assert!(matches!(decode_hello(&body[..20]), Err(WireError::Truncated { .. })));
    }

    #[test]
    fn decoder_buffer_stays_bounded_by_the_limit() {
        let mut dec = FrameDecoder::with_limit(100);
        let mut bytes = Vec::new();
        for _ in 0..10_000 {
            encode_frame(&Frame::Msg(Msg::Ping { nonce: 1 }), 100, &mut bytes).unwrap();
        }
        let mut r = &bytes[..];
        let mut n = 0;
        while dec.fill(&mut r).unwrap() > 0 {
            while dec.next_frame().unwrap().is_some() {
                n += 1;
            }
            assert!(dec.buf.len() <= INITIAL_BUFFER_BYTES);
        }
        assert_eq!(n, 10_000);
    }
}
