//! `kvnode --record DIR`: what each node's machine was given, and what it
//! did, so `kvsim replay DIR` can feed the same inputs to the same machine
//! and check that it does the same again.
//!
//! Each node writes `DIR/<node>/` (`r1`, `r2`, `lb`): numbered files
//! `rec-00000001.kvrec`, ... Every start of the process (an *incarnation*,
//! or life) opens a new file whose first record is the machine's start
//! state: its configuration, what the store recovered from disk (a replica),
//! the random incarnation number or ballot the runtime drew, the time it was
//! made at. Then one record per machine input (a message and its sender, a
//! tick, a persist made durable, the balancer told to stop accepting), each
//! with the `now` the machine was given and a digest of every effect it
//! produced (kind, destination, length and crc32c of the encoded message or
//! persist operation; events in full). A clean stop ends the life with an
//! `End` record; a killed process simply stops.
//!
//! File: a 40-byte header (`KVREC\0\0\0`, format version, header length,
//! file number, the number of the file its life began in, crc32c), then
//! records framed like the write-ahead log's (`len: u32 | crc32c: u32 |
//! postcard payload`). Bounded: a file is closed at [`FILE_BYTES_DEFAULT`]
//! and the oldest files are removed beyond [`FILES_DEFAULT`] per node (64
//! MiB per node at most, plus one record). A life whose first file was
//! removed can no longer be replayed (replay says so).
//!
//! Writes are buffered and handed to the OS once per pass of the node loop
//! (`Role::sync`), never fsynced: a SIGKILL loses nothing already handed
//! over, a power loss may cut the tail, and the reader stops cleanly at a
//! torn last record. A failure to write only stops the recording (logged
//! once); the node goes on.

use crate::balancer::Balancer;
use crate::config::ClusterConfig;
use crate::machine::{Effect, Outbox, PersistOp};
use crate::msg::Msg;
use crate::replica::Replica;
use crate::runtime::store::Start;
use crate::types::{NodeId, ReplicaId, Time};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use tracing::warn;

pub const MAGIC: [u8; 8] = *b"KVREC\0\0\0";
/// The format this code writes and the newest it reads.
pub const VERSION: u32 = 1;
pub const HEADER_BYTES: usize = 40;
/// `len: u32 LE | crc32c: u32 LE`, as in the write-ahead log.
pub const RECORD_HEADER_BYTES: usize = 8;
/// A file is closed once it holds this much (one record may overshoot).
pub const FILE_BYTES_DEFAULT: u64 = 16 << 20;
/// Files kept per node; the oldest beyond this are removed.
pub const FILES_DEFAULT: usize = 4;
/// The largest file the reader takes (a start state with a big snapshot
/// may exceed the rotation size; nothing sane is this large).
pub const FILE_BYTES_READ_MAX: u64 = 4 << 30;
/// A pass's entries are framed early once they reach this much.
const BATCH_BYTES_MAX: usize = 1 << 20;
const FILE_PREFIX: &str = "rec-";
const FILE_SUFFIX: &str = ".kvrec";

/// Message kinds, by [`Msg::kind`]; an effect digest names its message by
/// position here (255: not listed).
pub const MSG_KINDS: [&str; 17] = [
    "Request",
    "Response",
    "Write",
    "WriteResult",
    "Read",
    "ReadResult",
    "Ping",
    "Pong",
    "Prepare",
    "Promise",
    "PrepareRefused",
    "Promote",
    "Append",
    "AppendAck",
    "InstallSnapshot",
    "StatusQuery",
    "StatusAnswer",
];
const PERSIST_KINDS: [&str; 4] = ["Promise", "Append", "TruncateAfter", "InstallSnapshot"];

/// How a life began: everything the machine was built from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StartInfo {
    pub node: NodeId,
    /// The wall clock at the start, in microseconds since the Unix epoch:
    /// only for lining up the nodes' clocks (never given to a machine).
    pub wall_us: u64,
    /// The machine time at that moment.
    pub now: Time,
    pub pid: u32,
    pub machine: MachineStart,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum MachineStart {
    /// `Replica::recover`/`recover_missing`/`resync` from `start`, then
    /// `with_incarnation(incarnation)`.
    Replica { id: ReplicaId, config: ClusterConfig, start: Start, incarnation: u64 },
    /// `Balancer::new(config, now, incarnation)`.
    Balancer { config: ClusterConfig, now: Time, incarnation: u64 },
}

impl MachineStart {
    pub fn config(&self) -> &ClusterConfig {
        match self {
            MachineStart::Replica { config, .. } | MachineStart::Balancer { config, .. } => config,
        }
    }
}

/// The same as [`StartInfo`], borrowed, for writing (serde encodes a
/// reference as the value: the bytes are the same).
#[derive(Serialize)]
struct StartInfoRef<'a> {
    node: NodeId,
    wall_us: u64,
    now: Time,
    pid: u32,
    machine: MachineStartRef<'a>,
}

#[derive(Serialize)]
enum MachineStartRef<'a> {
    Replica { id: ReplicaId, config: &'a ClusterConfig, start: &'a Start, incarnation: u64 },
    Balancer { config: &'a ClusterConfig, now: Time, incarnation: u64 },
}

/// One input to a machine, with the `now` it was given.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum In {
    Message {
        now: Time,
        from: NodeId,
        msg: Msg,
    },
    Tick {
        now: Time,
    },
    /// `Replica::on_persisted(now, id)`: every persist up to `id` is durable.
    Persisted {
        now: Time,
        id: u64,
    },
    /// `Balancer::stop_accepting()` (the node began to stop); `now`: the
    /// latest time an input carried before (the machine is given none).
    StopAccepting {
        now: Time,
    },
}

impl In {
    pub fn now(&self) -> Time {
        match self {
            In::Message { now, .. }
            | In::Tick { now }
            | In::Persisted { now, .. }
            | In::StopAccepting { now } => *now,
        }
    }
}

impl fmt::Display for In {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            In::Message { from, msg, .. } => write!(f, "<- {from} {msg}"),
            In::Tick { .. } => f.write_str("tick"),
            In::Persisted { id, .. } => write!(f, "persisted up to #{id}"),
            In::StopAccepting { .. } => f.write_str("stop accepting"),
        }
    }
}

#[derive(Serialize)]
enum InRef<'a> {
    Message { now: Time, from: NodeId, msg: &'a Msg },
    Tick { now: Time },
    Persisted { now: Time, id: u64 },
    StopAccepting { now: Time },
}

/// What is kept of one effect: enough to tell whether a replayed machine
/// did the same, and to say readably what differs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Fx {
    /// `kind`: the position in [`MSG_KINDS`]; `bytes` and `crc`: of the
    /// message's postcard encoding.
    Send {
        to: NodeId,
        kind: u8,
        bytes: u32,
        crc: u32,
    },
    Persist {
        id: u64,
        kind: u8,
        bytes: u32,
        crc: u32,
    },
    /// The event, as `{:?}` shows it.
    Event(String),
    /// A completion (no replica or balancer emits one), `{:?}`'s crc32c.
    Done {
        crc: u32,
    },
}

impl fmt::Display for Fx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = |table: &[&'static str], k: u8| table.get(k as usize).copied().unwrap_or("?");
        match self {
            Fx::Send { to, kind, bytes, crc } => {
                write!(f, "send {} to {to} ({bytes} bytes, crc {crc:08x})", name(&MSG_KINDS, *kind))
            }
            Fx::Persist { id, kind, bytes, crc } => {
                write!(f, "persist #{id} {} ({bytes} bytes, crc {crc:08x})", name(&PERSIST_KINDS, *kind))
            }
            Fx::Event(e) => write!(f, "event {e}"),
            Fx::Done { crc } => write!(f, "completion (crc {crc:08x})"),
        }
    }
}

/// The digest of `e`; `scratch` is a buffer to encode into.
pub fn digest(e: &Effect, scratch: &mut Vec<u8>) -> Fx {
    match e {
        Effect::Send { to, msg } => {
            let kind = MSG_KINDS.iter().position(|k| *k == msg.kind()).map_or(255, |p| p as u8);
            let (bytes, crc) = encoded(msg, scratch);
            Fx::Send { to: *to, kind, bytes, crc }
        }
        Effect::Persist { id, op } => {
            let kind = match op {
                PersistOp::Promise(_) => 0,
                PersistOp::Append(_) => 1,
                PersistOp::TruncateAfter(_) => 2,
                PersistOp::InstallSnapshot(_) => 3,
            };
            let (bytes, crc) = encoded(op, scratch);
            Fx::Persist { id: *id, kind, bytes, crc }
        }
        Effect::Event(ev) => Fx::Event(format!("{ev:?}")),
        Effect::Done(c) => Fx::Done { crc: crc32c::crc32c(format!("{c:?}").as_bytes()) },
    }
}

/// The length and crc32c of `v`'s postcard encoding.
fn encoded<T: Serialize>(v: &T, scratch: &mut Vec<u8>) -> (u32, u32) {
    scratch.clear();
    // Into a Vec: cannot fail for these types.
    let _ = postcard::to_io(v, &mut *scratch);
    (u32::try_from(scratch.len()).unwrap_or(u32::MAX), crc32c::crc32c(scratch))
}

/// One record, as read back.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Entry {
    Start(Box<StartInfo>),
    /// An input and the digests of the effects it produced, in order.
    Step(In, Vec<Fx>),
    /// The node stopped cleanly.
    End,
}

const TAG_START: u8 = 0;
const TAG_STEP: u8 = 1;
const TAG_END: u8 = 2;

/// A machine and its recording, as a node holds it: reading goes straight
/// to the machine (`Deref`); every input goes through the methods below,
/// named as the machine's own, which record it with its effects. There is
/// no `DerefMut`: an input that bypassed the recording would not compile.
pub struct Recorded<M> {
    machine: M,
    rec: Recorder,
    /// The latest `now` an input carried (`stop_accepting` has none).
    last_now: Time,
}

impl<M> std::ops::Deref for Recorded<M> {
    type Target = M;
    fn deref(&self) -> &M {
        &self.machine
    }
}

impl<M> Recorded<M> {
    pub fn new(machine: M, rec: Recorder) -> Recorded<M> {
        Recorded { machine, rec, last_now: Time::ZERO }
    }

    /// Hands this pass's records to the OS (no fsync): once per loop pass.
    pub fn flush_record(&mut self) {
        self.rec.flush();
    }
}

impl Recorded<Replica> {
    pub fn on_message(&mut self, now: Time, from: NodeId, msg: Msg, out: &mut Outbox) {
        self.last_now = now;
        let m = &mut self.machine;
        self.rec.message(now, from, msg, out, |msg, out| m.on_message(now, from, msg, out));
    }

    pub fn on_tick(&mut self, now: Time, out: &mut Outbox) {
        self.last_now = now;
        let m = &mut self.machine;
        self.rec.tick(now, out, |out| m.on_tick(now, out));
    }

    pub fn on_persisted(&mut self, now: Time, id: u64, out: &mut Outbox) {
        self.last_now = now;
        let m = &mut self.machine;
        self.rec.persisted(now, id, out, |out| m.on_persisted(now, id, out));
    }
}

impl Recorded<Balancer> {
    pub fn on_message(&mut self, now: Time, from: NodeId, msg: Msg, out: &mut Outbox) {
        self.last_now = now;
        let m = &mut self.machine;
        self.rec.message(now, from, msg, out, |msg, out| m.on_message(now, from, msg, out));
    }

    pub fn on_tick(&mut self, now: Time, out: &mut Outbox) {
        self.last_now = now;
        let m = &mut self.machine;
        self.rec.tick(now, out, |out| m.on_tick(now, out));
    }

    /// Recorded with the latest time seen (the machine is given none).
    pub fn stop_accepting(&mut self) {
        let m = &mut self.machine;
        self.rec.stop_accepting(self.last_now, &mut Outbox::new(), || m.stop_accepting());
    }
}

/// Writes a node's recording; does nothing when recording is off.
pub struct Recorder {
    inner: Option<Inner>,
}

struct Inner {
    dir: PathBuf,
    file: BufWriter<File>,
    /// Bytes in the current file.
    written: u64,
    seq: u64,
    life: u64,
    file_bytes: u64,
    files: usize,
    payload: Vec<u8>,
    scratch: Vec<u8>,
    fx: Vec<Fx>,
}

/// The wall clock, for [`StartInfo::wall_us`].
fn wall_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl Recorder {
    /// Recording off.
    pub fn off() -> Recorder {
        Recorder { inner: None }
    }

    /// Starts a replica's new life in `dir/<node>/` (`None`: recording off).
    pub fn replica(
        dir: Option<&Path>,
        id: ReplicaId,
        config: &ClusterConfig,
        start: &Start,
        incarnation: u64,
        now: Time,
    ) -> io::Result<Recorder> {
        let machine = MachineStartRef::Replica { id, config, start, incarnation };
        Recorder::open(dir, NodeId::Replica(id), now, machine)
    }

    /// Starts the balancer's new life in `dir/lb/` (`None`: recording off).
    pub fn balancer(
        dir: Option<&Path>,
        config: &ClusterConfig,
        now: Time,
        incarnation: u64,
    ) -> io::Result<Recorder> {
        Recorder::open(dir, NodeId::Balancer, now, MachineStartRef::Balancer { config, now, incarnation })
    }

    fn open(
        dir: Option<&Path>,
        node: NodeId,
        now: Time,
        machine: MachineStartRef<'_>,
    ) -> io::Result<Recorder> {
        Recorder::open_with(dir, node, now, machine, FILE_BYTES_DEFAULT, FILES_DEFAULT)
    }

    /// Opens a new file in `dir/<node>/` (numbered after the newest there),
    /// writes the start record and hands it to the OS; `file_bytes` and
    /// `files` bound the recording (smaller in tests).
    fn open_with(
        dir: Option<&Path>,
        node: NodeId,
        now: Time,
        machine: MachineStartRef<'_>,
        file_bytes: u64,
        files: usize,
    ) -> io::Result<Recorder> {
        let Some(dir) = dir else { return Ok(Recorder::off()) };
        let dir = dir.join(node.to_string());
        let with_path =
            |p: &Path, e: io::Error| io::Error::new(e.kind(), format!("--record: {}: {e}", p.display()));
        fs::create_dir_all(&dir).map_err(|e| with_path(&dir, e))?;
        let seq = list_files(&dir)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("--record: {e}")))?
            .last()
            .map_or(1, |(s, _)| s.saturating_add(1));
        let (file, written) = new_file(&dir, seq, seq).map_err(|e| with_path(&dir, e))?;
        let mut inner = Inner {
            dir,
            file,
            written,
            seq,
            life: seq,
            file_bytes: file_bytes.max(HEADER_BYTES as u64),
            files: files.max(1),
            payload: Vec::new(),
            scratch: Vec::new(),
            fx: Vec::new(),
        };
        let info = StartInfoRef { node, wall_us: wall_us(), now, pid: std::process::id(), machine };
        inner.payload.push(TAG_START);
        postcard::to_io(&info, &mut inner.payload).map_err(|e| io::Error::other(e.to_string()))?;
        inner.write_record()?;
        inner.file.flush()?;
        inner.prune();
        Ok(Recorder { inner: Some(inner) })
    }

    pub fn is_on(&self) -> bool {
        self.inner.is_some()
    }

    /// `f` hands `msg` to the machine.
    pub fn message(
        &mut self,
        now: Time,
        from: NodeId,
        msg: Msg,
        out: &mut Outbox,
        f: impl FnOnce(Msg, &mut Outbox),
    ) {
        let mark = self.begin(InRef::Message { now, from, msg: &msg }, out);
        f(msg, out);
        self.end(out, mark);
    }

    pub fn tick(&mut self, now: Time, out: &mut Outbox, f: impl FnOnce(&mut Outbox)) {
        let mark = self.begin(InRef::Tick { now }, out);
        f(out);
        self.end(out, mark);
    }

    pub fn persisted(&mut self, now: Time, id: u64, out: &mut Outbox, f: impl FnOnce(&mut Outbox)) {
        let mark = self.begin(InRef::Persisted { now, id }, out);
        f(out);
        self.end(out, mark);
    }

    pub fn stop_accepting(&mut self, now: Time, out: &mut Outbox, f: impl FnOnce()) {
        let mark = self.begin(InRef::StopAccepting { now }, out);
        f();
        self.end(out, mark);
    }

    /// Frames the pass's steps into one record and hands it to the OS (no
    /// fsync); once per loop pass.
    pub fn flush(&mut self) {
        if let Some(inner) = &mut self.inner {
            let done = if inner.payload.is_empty() { Ok(()) } else { inner.write_record() };
            if let Err(e) = done.and_then(|()| inner.file.flush()) {
                self.fail(&e);
            }
        }
    }

    fn begin(&mut self, input: InRef<'_>, out: &Outbox) -> usize {
        if let Some(inner) = &mut self.inner {
            inner.payload.push(TAG_STEP);
            if let Err(e) = postcard::to_io(&input, &mut inner.payload) {
                self.fail(&io::Error::other(e.to_string()));
            }
        }
        out.effects.len()
    }

    fn end(&mut self, out: &Outbox, mark: usize) {
        let Some(inner) = &mut self.inner else { return };
        inner.fx.clear();
        for e in out.effects.get(mark..).unwrap_or_default() {
            let fx = digest(e, &mut inner.scratch);
            inner.fx.push(fx);
        }
        let encoded = postcard::to_io(&inner.fx, &mut inner.payload).map(|_| ());
        let mut result = encoded.map_err(|e| io::Error::other(e.to_string()));
        if result.is_ok() && inner.payload.len() >= BATCH_BYTES_MAX {
            result = inner.write_record();
        }
        if let Err(e) = result {
            self.fail(&e);
        }
    }

    fn fail(&mut self, e: &io::Error) {
        if let Some(inner) = self.inner.take() {
            warn!("recording to {} stopped: {e}", inner.dir.display());
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        if let Some(inner) = &mut self.inner {
            inner.payload.push(TAG_END);
            let _ = inner.write_record().and_then(|()| inner.file.flush());
        }
    }
}

impl Inner {
    /// Frames `payload` (the entries since the last record) into the
    /// current file, opening the next file first if this one is full.
    fn write_record(&mut self) -> io::Result<()> {
        let len = u32::try_from(self.payload.len())
            .map_err(|_| io::Error::other(format!("a record of {} bytes", self.payload.len())))?;
        let framed = (RECORD_HEADER_BYTES + self.payload.len()) as u64;
        if self.written > HEADER_BYTES as u64 && self.written.saturating_add(framed) > self.file_bytes {
            self.rotate()?;
        }
        let crc = crc32c::crc32c(&self.payload);
        self.file.write_all(&len.to_le_bytes())?;
        self.file.write_all(&crc.to_le_bytes())?;
        self.file.write_all(&self.payload)?;
        self.written = self.written.saturating_add(framed);
        self.payload.clear();
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.file.flush()?;
        self.seq = self.seq.saturating_add(1);
        let (file, written) = new_file(&self.dir, self.seq, self.life)?;
        self.file = file;
        self.written = written;
        self.prune();
        Ok(())
    }

    /// Removes the oldest files beyond the limit.
    fn prune(&mut self) {
        let Ok(list) = list_files(&self.dir) else { return };
        let extra = list.len().saturating_sub(self.files);
        for (_, path) in list.into_iter().take(extra) {
            if let Err(e) = fs::remove_file(&path) {
                warn!("recording: cannot remove {}: {e}", path.display());
            }
        }
    }
}

fn file_name(seq: u64) -> String {
    format!("{FILE_PREFIX}{seq:08}{FILE_SUFFIX}")
}

fn header(seq: u64, life: u64) -> [u8; HEADER_BYTES] {
    let mut h = [0u8; HEADER_BYTES];
    h[0..8].copy_from_slice(&MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h[12..16].copy_from_slice(&(HEADER_BYTES as u32).to_le_bytes());
    h[16..24].copy_from_slice(&seq.to_le_bytes());
    h[24..32].copy_from_slice(&life.to_le_bytes());
    let crc = crc32c::crc32c(&h[0..32]);
    h[32..36].copy_from_slice(&crc.to_le_bytes());
    h
}

fn new_file(dir: &Path, seq: u64, life: u64) -> io::Result<(BufWriter<File>, u64)> {
    let path = dir.join(file_name(seq));
    let file = fs::OpenOptions::new().write(true).create_new(true).open(&path)?;
    let mut w = BufWriter::with_capacity(256 << 10, file);
    w.write_all(&header(seq, life))?;
    Ok((w, HEADER_BYTES as u64))
}

// ---- reading ----

/// A recording that cannot be read: which file, where, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordError {
    pub path: PathBuf,
    pub offset: Option<u64>,
    pub msg: String,
}

impl fmt::Display for RecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.offset {
            Some(o) => write!(f, "{} at byte {o}: {}", self.path.display(), self.msg),
            None => write!(f, "{}: {}", self.path.display(), self.msg),
        }
    }
}

impl std::error::Error for RecordError {}

fn err(path: &Path, offset: Option<u64>, msg: impl Into<String>) -> RecordError {
    RecordError { path: path.to_path_buf(), offset, msg: msg.into() }
}

/// The recording files in a node's directory, oldest first.
pub fn list_files(dir: &Path) -> Result<Vec<(u64, PathBuf)>, RecordError> {
    let entries = fs::read_dir(dir).map_err(|e| err(dir, None, format!("cannot list: {e}")))?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| err(dir, None, format!("cannot list: {e}")))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(num) = name.strip_prefix(FILE_PREFIX).and_then(|n| n.strip_suffix(FILE_SUFFIX)) else {
            continue;
        };
        let Ok(seq) = num.parse::<u64>() else { continue };
        files.push((seq, entry.path()));
    }
    files.sort();
    Ok(files)
}

/// How a file's records end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FileEnd {
    /// The last record ends at the end of the file.
    Clean,
    /// The last record was cut short (a process killed mid-write, a power
    /// loss): the bytes from `offset` on are not a whole record.
    Torn { offset: u64, bytes: u64, why: String },
}

/// One file, read.
#[derive(Clone, Debug)]
pub struct FileRead {
    pub path: PathBuf,
    pub seq: u64,
    /// The number of the file its life began in.
    pub life: u64,
    /// Each record with the offset it starts at.
    pub entries: Vec<(u64, Entry)>,
    pub end: FileEnd,
}

/// Reads one recording file. A bad record followed by more bytes, a bad
/// header or a newer format is an error; a cut-short last record is not
/// (see [`FileEnd::Torn`]).
pub fn read_file(path: &Path) -> Result<FileRead, RecordError> {
    let meta = fs::metadata(path).map_err(|e| err(path, None, format!("cannot read: {e}")))?;
    if meta.len() > FILE_BYTES_READ_MAX {
        return Err(err(path, None, format!("{} bytes: larger than any recording file", meta.len())));
    }
    let bytes = fs::read(path).map_err(|e| err(path, None, format!("cannot read: {e}")))?;
    decode(path, &bytes, false)
}

/// The start of the life that begins in file `path`, if one does (its
/// first record; the rest of the file is not decoded).
pub fn life_start(path: &Path) -> Result<Option<StartInfo>, RecordError> {
    let bytes = fs::read(path).map_err(|e| err(path, None, format!("cannot read: {e}")))?;
    let f = decode(path, &bytes, true)?;
    Ok(match f.entries.into_iter().next() {
        Some((_, Entry::Start(s))) if f.seq == f.life => Some(*s),
        _ => None,
    })
}

/// [`read_file`] on bytes already read; `path` names them in errors.
pub fn decode_file(path: &Path, bytes: &[u8]) -> Result<FileRead, RecordError> {
    decode(path, bytes, false)
}

/// `first_only`: stop after the first record.
fn decode(path: &Path, bytes: &[u8], first_only: bool) -> Result<FileRead, RecordError> {
    let magic_len = bytes.len().min(MAGIC.len());
    if bytes[..magic_len] != MAGIC[..magic_len] {
        return Err(err(path, Some(0), "not a kvstore recording (bad magic)"));
    }
    if bytes.len() < HEADER_BYTES {
        // Created, then the process died before its header was written out.
        let end = FileEnd::Torn {
            offset: 0,
            bytes: bytes.len() as u64,
            why: format!("the file ends inside its header ({} of {HEADER_BYTES} bytes)", bytes.len()),
        };
        return Ok(FileRead { path: path.to_path_buf(), seq: 0, life: 0, entries: Vec::new(), end });
    }
    let u32_at = |at: usize| u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
    let u64_at = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&bytes[at..at + 8]);
        u64::from_le_bytes(b)
    };
    let version = u32_at(8);
    if version > VERSION {
        return Err(err(
            path,
            Some(8),
            format!(
                "recording format {version} is newer than this kvsim reads ({VERSION}): use a newer kvsim"
            ),
        ));
    }
    if version == 0 {
        return Err(err(path, Some(8), "recording format 0 does not exist"));
    }
    if crc32c::crc32c(&bytes[0..32]) != u32_at(32) {
        return Err(err(path, Some(32), "header checksum mismatch"));
    }
    let header_len = u32_at(12) as usize;
    if header_len < HEADER_BYTES || header_len > bytes.len() {
        return Err(err(path, Some(12), format!("header length {header_len} out of range")));
    }
    let (seq, life) = (u64_at(16), u64_at(24));
    let mut entries = Vec::new();
    let mut at = header_len;
    let total = bytes.len();
    let end = loop {
        if at == total {
            break FileEnd::Clean;
        }
        let left = total - at;
        let torn = |why: String| FileEnd::Torn { offset: at as u64, bytes: left as u64, why };
        if left < RECORD_HEADER_BYTES {
            break torn(format!("a record header cut short ({left} of {RECORD_HEADER_BYTES} bytes)"));
        }
        let len = u32_at(at) as usize;
        let crc = u32_at(at + 4);
        if len == 0 {
            if bytes[at..].iter().all(|b| *b == 0) {
                break torn(format!("{left} zero bytes after the last record"));
            }
            return Err(err(path, Some(at as u64), "a record of length 0"));
        }
        let Some(stop) = (at + RECORD_HEADER_BYTES).checked_add(len).filter(|s| *s <= total) else {
            break torn(format!(
                "a record of {len} bytes cut short ({} bytes left)",
                left - RECORD_HEADER_BYTES
            ));
        };
        let payload = &bytes[at + RECORD_HEADER_BYTES..stop];
        if crc32c::crc32c(payload) != crc {
            if stop == total {
                break torn("the last record's checksum does not match (written in part)".to_string());
            }
            return Err(err(path, Some(at as u64), "record checksum mismatch, with more records after it"));
        }
        // One record holds the entries of one pass of the node loop.
        let mut rest = payload;
        while !rest.is_empty() {
            match postcard::take_from_bytes::<Entry>(rest) {
                Ok((e, more)) => {
                    entries.push((at as u64, e));
                    rest = more;
                }
                Err(e) => {
                    let within = payload.len() - rest.len();
                    return Err(err(
                        path,
                        Some(at as u64),
                        format!(
                            "a record whose checksum matches does not decode at its byte {within} ({e}): \
                             a newer or damaged format"
                        ),
                    ));
                }
            }
        }
        at = stop;
        if first_only {
            break FileEnd::Clean;
        }
    };
    Ok(FileRead { path: path.to_path_buf(), seq, life, entries, end })
}

/// One life of a node: its start and every input after it.
#[derive(Clone, Debug)]
pub struct Life {
    pub start: StartInfo,
    /// The file it began in.
    pub first_file: PathBuf,
    /// Each input with its effects, and where it was read (file, offset).
    pub steps: Vec<(In, Vec<Fx>, usize, u64)>,
    /// The files, as indexed in `steps`.
    pub files: Vec<PathBuf>,
    pub ending: Ending,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ending {
    /// An `End` record: it stopped cleanly.
    Stopped,
    /// No `End` record: killed (or still running).
    Killed,
    /// It ends in a cut-short record (killed mid-write).
    Torn { file: PathBuf, offset: u64, bytes: u64, why: String },
}

/// A node's recording: its lives, oldest first, and notes on what could
/// not be used (a life whose start was rotated away).
#[derive(Clone, Debug)]
pub struct NodeRecording {
    pub dir: PathBuf,
    pub lives: Vec<Life>,
    pub notes: Vec<String>,
}

/// Reads `dir` (one node's directory: `DIR/r1`, say).
pub fn read_node(dir: &Path) -> Result<NodeRecording, RecordError> {
    let files = list_files(dir)?;
    if files.is_empty() {
        return Err(err(dir, None, format!("no recording files ({FILE_PREFIX}N{FILE_SUFFIX}) here")));
    }
    let mut rec = NodeRecording { dir: dir.to_path_buf(), lives: Vec::new(), notes: Vec::new() };
    // The life being read, if its start was seen.
    let mut current: Option<Life> = None;
    for (name_seq, path) in files {
        let f = read_file(&path)?;
        if f.entries.is_empty() && f.seq == 0 {
            // A header cut short: a life that never wrote its start.
            if let Some(l) = current.take() {
                rec.lives.push(l);
            }
            rec.notes.push(format!("{}: cut short before its start record; ignored", path.display()));
            continue;
        }
        if f.seq != name_seq {
            return Err(err(&path, Some(16), format!("its header says file {}, its name {name_seq}", f.seq)));
        }
        let mut entries = f.entries.into_iter();
        if f.life == f.seq {
            if let Some(l) = current.take() {
                rec.lives.push(l);
            }
            match entries.next() {
                Some((_, Entry::Start(start))) => {
                    current = Some(Life {
                        start: *start,
                        first_file: path.clone(),
                        steps: Vec::new(),
                        files: Vec::new(),
                        ending: Ending::Killed,
                    })
                }
                Some((at, _)) => {
                    return Err(err(&path, Some(at), "a life's first file must open with its start"))
                }
                None => {
                    rec.notes.push(format!(
                        "{}: a life with no start record (cut short); ignored",
                        path.display()
                    ));
                    continue;
                }
            }
        } else if !current.as_ref().is_some_and(|l| {
            file_seq(&l.first_file) == Some(f.life)
                && l.files.last().and_then(|p| file_seq(p)) == f.seq.checked_sub(1)
        }) {
            // Continues a life whose start (or an earlier file) was removed
            // by rotation: nothing to rebuild its machine from.
            if let Some(l) = current.take() {
                rec.lives.push(l);
            }
            rec.notes.push(format!(
                "{}: continues a life that began in {} (removed by rotation): its {} records are not replayed",
                path.display(),
                file_name(f.life),
                entries.len()
            ));
            continue;
        }
        let life = current.as_mut().expect("checked above");
        life.files.push(path.clone());
        let fi = life.files.len() - 1;
        for (at, e) in entries {
            match e {
                Entry::Step(input, fx) => life.steps.push((input, fx, fi, at)),
                Entry::End => life.ending = Ending::Stopped,
                Entry::Start(_) => {
                    return Err(err(&path, Some(at), "a start record in the middle of a file"))
                }
            }
        }
        if let FileEnd::Torn { offset, bytes, why } = f.end {
            life.ending = Ending::Torn { file: path.clone(), offset, bytes, why };
        }
    }
    if let Some(l) = current.take() {
        rec.lives.push(l);
    }
    Ok(rec)
}

fn file_seq(path: &Path) -> Option<u64> {
    let name = path.file_name()?.to_str()?;
    name.strip_prefix(FILE_PREFIX)?.strip_suffix(FILE_SUFFIX)?.parse().ok()
}

/// Every node directory under a recording directory (`DIR/lb`, `DIR/r1`...).
/// `dir` itself when it is one node's directory.
pub fn node_dirs(dir: &Path) -> Result<Vec<PathBuf>, RecordError> {
    if list_files(dir).is_ok_and(|f| !f.is_empty()) {
        return Ok(vec![dir.to_path_buf()]);
    }
    let entries = fs::read_dir(dir).map_err(|e| err(dir, None, format!("cannot read the recording: {e}")))?;
    let mut dirs = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| err(dir, None, format!("cannot list: {e}")))?;
        let path = entry.path();
        if path.is_dir() && list_files(&path).is_ok_and(|f| !f.is_empty()) {
            dirs.push(path);
        }
    }
    dirs.sort();
    if dirs.is_empty() {
        return Err(err(
            dir,
            None,
            "no node recordings here (expected DIR/lb, DIR/r1, ... from kvnode --record DIR)",
        ));
    }
    Ok(dirs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::Stored;
    use crate::types::{ClientId, Epoch};

    fn cfg() -> ClusterConfig {
        ClusterConfig::new(3, 1)
    }

    fn msg() -> Msg {
        Msg::Ping { nonce: 7 }
    }

    #[test]
    fn a_recording_reads_back_as_written() {
        let dir = tempfile::tempdir().unwrap();
        let start = Start::Recovered(Stored { promised: Epoch(2), ..Stored::default() });
        {
            let mut rec =
                Recorder::replica(Some(dir.path()), ReplicaId(2), &cfg(), &start, 99, Time(5)).unwrap();
            let mut out = Outbox::new();
            rec.message(Time(10), NodeId::Balancer, msg(), &mut out, |m, out| {
                out.send(NodeId::Balancer, m);
            });
            rec.tick(Time(20), &mut out, |_| {});
            rec.flush();
        }
        let node = read_node(&dir.path().join("r2")).unwrap();
        assert_eq!(node.lives.len(), 1);
        let life = &node.lives[0];
        assert_eq!(life.ending, Ending::Stopped);
        match &life.start.machine {
            MachineStart::Replica { id, incarnation, start: Start::Recovered(s), .. } => {
                assert_eq!((*id, *incarnation, s.promised), (ReplicaId(2), 99, Epoch(2)));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(life.steps.len(), 2);
        assert_eq!(life.steps[0].0, In::Message { now: Time(10), from: NodeId::Balancer, msg: msg() });
        let mut scratch = Vec::new();
        let want = digest(&Effect::Send { to: NodeId::Balancer, msg: msg() }, &mut scratch);
        assert_eq!(life.steps[0].1, vec![want]);
        assert_eq!(life.steps[1].0, In::Tick { now: Time(20) });
    }

    #[test]
    fn files_rotate_and_the_oldest_go() {
        let dir = tempfile::tempdir().unwrap();
        let c = cfg();
        let m = MachineStartRef::Balancer { config: &c, now: Time(0), incarnation: 1 };
        let mut rec = Recorder::open_with(Some(dir.path()), NodeId::Balancer, Time(0), m, 4096, 3).unwrap();
        let mut out = Outbox::new();
        for i in 0..2000u64 {
            let m = Msg::Request {
                id: crate::types::RequestId { client: ClientId(1), seq: i },
                attempt: 1,
                op: crate::types::Op::Get { key: format!("k{i}") },
                read: crate::types::ReadMode::Leader,
                min_lsn: crate::types::Lsn(0),
            };
            rec.message(Time(i), NodeId::Client(ClientId(1)), m, &mut out, |_, _| {});
            rec.flush();
        }
        drop(rec);
        let files = list_files(&dir.path().join("lb")).unwrap();
        assert_eq!(files.len(), 3, "{files:?}");
        for (_, p) in &files {
            assert!(fs::metadata(p).unwrap().len() <= 4096 + 64);
        }
        let node = read_node(&dir.path().join("lb")).unwrap();
        assert!(node.lives.is_empty(), "its start was rotated away");
        assert_eq!(node.notes.len(), 3, "{:?}", node.notes);
    }

    #[test]
    fn a_torn_tail_is_tolerated_and_garbage_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let start = Start::Resync { promised: Epoch(1) };
        {
            let mut rec =
                Recorder::replica(Some(dir.path()), ReplicaId(1), &cfg(), &start, 1, Time(0)).unwrap();
            let mut out = Outbox::new();
            for t in 0..10 {
                rec.tick(Time(t), &mut out, |_| {});
                // One record per pass of the node loop.
                rec.flush();
            }
        }
        let node_dir = dir.path().join("r1");
        let (_, path) = list_files(&node_dir).unwrap().pop().unwrap();
        let bytes = fs::read(&path).unwrap();
        // Cut into the End record: torn, and all 10 ticks remain.
        fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
        let node = read_node(&node_dir).unwrap();
        assert!(matches!(node.lives[0].ending, Ending::Torn { .. }), "{:?}", node.lives[0].ending);
        assert_eq!(node.lives[0].steps.len(), 10);
        // A flipped byte in the middle: an error naming the file and offset.
        let mut bad = bytes.clone();
        bad[HEADER_BYTES + 20] ^= 0xff;
        fs::write(&path, &bad).unwrap();
        let e = read_node(&node_dir).unwrap_err();
        assert!(e.offset.is_some() && e.path == path, "{e}");
        // A newer format.
        let mut newer = bytes.clone();
        newer[8] = 9;
        fs::write(&path, &newer).unwrap();
        let e = read_node(&node_dir).unwrap_err();
        assert!(e.to_string().contains("newer"), "{e}");
        // Not a recording at all.
        fs::write(&path, b"hello, world; this is not a recording at all!").unwrap();
        let e = read_node(&node_dir).unwrap_err();
        assert!(e.to_string().contains("bad magic"), "{e}");
    }
}
