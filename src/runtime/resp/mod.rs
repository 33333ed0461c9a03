//! The balancer's Redis (RESP2) port: `kvnode balancer --resp ADDR`.
//!
//! A RESP connection is a client of the balancer machine like a native
//! one, with no extra hop: the node's loop reads its bytes, this module
//! parses commands ([`codec`]) and turns each into requests of a client id
//! of its own (the same `Msg::Request` a native client sends), after an
//! [`Item`] saying how the command's reply is made from their answers. The
//! node writes replies in command order ([`Replies`]), so a pipeline is
//! forwarded as fast as it is read.
//!
//! Lanes: a connection's requests go out under several client ids, each
//! with one request in flight at a time, exactly as native clients do
//! (the machines' at-most-once table and retries assume that: a retried
//! write of a client that has a newer one in flight is refused as
//! superseded). A lane is taken for each request from those with nothing
//! in flight; up to [`MAX_IN_FLIGHT`] lanes, made as the pipeline deepens.
//! The balancer forwards requests in the order they arrive, and the leader
//! appends them in that order.
//!
//! Ordering within one connection: writes go out back to back (the leader
//! applies them in order), reads too; a command of the other kind waits
//! until the connection's requests in flight are answered, so a read sees
//! the connection's earlier writes (its session LSN includes them) and a
//! write never overtakes an earlier read. A connection that must wait (for
//! a lane, for its requests to drain, for room for replies) is not read
//! meanwhile, so TCP pushes back.

pub mod client;
pub mod codec;
pub mod replies;

use super::auth::{self, Keys};
use super::conns::Input;
use super::net::{self, ConnId};
use crate::msg::Msg;
use crate::types::{ClientId, Lsn, NodeId, Op, ReadMode, RequestId};
use crate::wire::Frame;
pub use replies::{ClusterInfo, Item, ReplicaInfo, Replies, Shape};
use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use tracing::info;

/// Requests one RESP connection may have in flight (its pipeline depth at
/// the balancer, and its number of lanes); the connection is not read
/// beyond that, so TCP pushes back.
pub const MAX_IN_FLIGHT: usize = 128;
/// Replies one RESP connection may owe at most (answered or not, not yet
/// written); the connection is not read beyond that.
pub const MAX_QUEUED_REPLIES: usize = 4096;
/// Bytes of ready replies (PING, ECHO, errors...) one RESP connection may
/// have queued behind replies still waiting, at most (one command's reply
/// may go past it).
pub const MAX_QUEUED_REPLY_BYTES: usize = 1 << 20;
/// Bytes read from a socket at a time (the event loop's shared read buffer).
pub const READ_CHUNK: usize = 64 * 1024;

/// What a RESP connection's session and its replies share: the requests
/// in flight, the replies owed, the newest LSN answered. (Both live on the
/// node's thread; the lock is never contended.)
pub struct Flight {
    state: Mutex<FlightState>,
}

#[derive(Default)]
struct FlightState {
    /// Requests in flight: the reply ticket each feeds, and its lane.
    in_flight: BTreeMap<RequestId, (u64, usize)>,
    /// Lanes with nothing in flight, and how many lanes there are.
    free: Vec<usize>,
    lanes: usize,
    replies: usize,
    reply_bytes: usize,
    max_lsn: Lsn,
}

impl Flight {
    fn new() -> Flight {
        Flight { state: Mutex::new(FlightState::default()) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FlightState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A lane with nothing in flight (a new one while fewer than
    /// [`MAX_IN_FLIGHT`] exist: `Err` with its index), if any.
    fn acquire_lane(&self) -> Option<Result<usize, usize>> {
        let mut s = self.lock();
        if let Some(l) = s.free.pop() {
            return Some(Ok(l));
        }
        if s.lanes < MAX_IN_FLIGHT {
            s.lanes += 1;
            return Some(Err(s.lanes - 1));
        }
        None
    }

    fn lane_free(&self) -> bool {
        let s = self.lock();
        !s.free.is_empty() || s.lanes < MAX_IN_FLIGHT
    }

    fn drained(&self) -> bool {
        self.lock().in_flight.is_empty()
    }

    /// Request `id` (on `lane`) goes out, feeding reply `ticket`.
    fn start(&self, id: RequestId, ticket: u64, lane: usize) {
        self.lock().in_flight.insert(id, (ticket, lane));
    }

    /// Room for the replies of one more command.
    fn reply_room(&self) -> bool {
        let s = self.lock();
        s.replies + 2 <= MAX_QUEUED_REPLIES && s.reply_bytes <= MAX_QUEUED_REPLY_BYTES
    }

    fn add_reply(&self, bytes: usize) {
        let mut s = self.lock();
        s.replies += 1;
        s.reply_bytes = s.reply_bytes.saturating_add(bytes);
    }

    fn max_lsn(&self) -> Lsn {
        self.lock().max_lsn
    }

    /// Request `id` was answered: the ticket it fed, if it was ours.
    pub(crate) fn release(&self, id: RequestId, lsn: Lsn) -> Option<u64> {
        let mut s = self.lock();
        let (ticket, lane) = s.in_flight.remove(&id)?;
        s.free.push(lane);
        s.max_lsn = s.max_lsn.max(lsn);
        Some(ticket)
    }

    pub(crate) fn release_items(&self, n: usize, bytes: usize) {
        let mut s = self.lock();
        s.replies = s.replies.saturating_sub(n);
        s.reply_bytes = s.reply_bytes.saturating_sub(bytes);
    }

    pub(crate) fn close(&self) {}
}

/// Binds the RESP listener at `addr` (the balancer's loop accepts on it).
pub fn bind(addr: &str, keys: &Keys, insecure_open: bool) -> io::Result<TcpListener> {
    let listener = net::bind(addr)?;
    let local: SocketAddr = listener.local_addr()?;
    auth::check_listen(local, keys.cluster.is_some(), insecure_open)?;
    Ok(listener)
}

/// One RESP connection on the balancer's loop: its command session and the
/// replies it owes.
pub struct RespConn {
    pub replies: Replies,
    s: Session,
}

/// What [`RespConn::pump`] came to.
pub enum Pumped {
    /// Every complete command taken: read more bytes.
    NeedBytes,
    /// The pass's budget is spent: go on in the next pass.
    Budget,
    /// Waiting for answers (a lane, the other kind's requests) or for room
    /// for replies: go on when [`RespConn::can_go`].
    Blocked,
    /// QUIT, an error, or the end of the stream: no more commands.
    Done,
}

impl RespConn {
    pub fn new(conn: ConnId, client: ClientId, keys: &Keys) -> RespConn {
        let flight = Arc::new(Flight::new());
        RespConn {
            replies: Replies::new(flight.clone()),
            s: Session {
                conn,
                client,
                next_ticket: 1,
                lanes: Vec::new(),
                mode: ReadMode::Session,
                authed: keys.client.is_none(),
                password: keys.client.clone(),
                last_kind: None,
                flight,
                buf: Vec::new(),
                start: 0,
                pending: VecDeque::new(),
                quit: false,
                emit: Vec::new(),
            },
        }
    }

    /// The connection's own client id (its first lane's is another).
    pub fn peer(&self) -> NodeId {
        NodeId::Client(self.s.client)
    }

    /// Whether the connection may send commands (no client password is
    /// set, or it sent AUTH with it).
    pub fn authed(&self) -> bool {
        self.s.authed
    }

    /// Whether a `Close` reached the head of the replies.
    pub fn closing(&self) -> bool {
        self.replies.closing
    }

    /// Appends bytes read elsewhere (the node's shared read buffer).
    pub fn push(&mut self, bytes: &[u8]) {
        let s = &mut self.s;
        if s.start > 0 {
            s.buf.drain(..s.start);
            s.start = 0;
        }
        s.buf.extend_from_slice(bytes);
    }

    /// Frees the command buffer when everything in it was parsed.
    pub fn release_if_empty(&mut self) {
        let s = &mut self.s;
        if s.start == s.buf.len() && s.buf.capacity() > 0 {
            s.buf = Vec::new();
            s.start = 0;
        }
    }

    /// Whether [`RespConn::pump`] would make progress now.
    pub fn can_go(&self) -> bool {
        let s = &self.s;
        if s.quit {
            return !s.pending.is_empty() && s.can_issue();
        }
        match s.pending.front() {
            Some(_) => s.can_issue(),
            None => s.flight.reply_room(),
        }
    }

    /// Issues the requests it can and takes the commands it has, at most
    /// `budget` of them; what they make goes to `inputs`. `eof`: nothing
    /// more comes (what is complete is answered, then the connection closes).
    pub fn pump(&mut self, inputs: &mut Vec<Input>, budget: &mut usize, eof: bool) -> Pumped {
        let flow = self.s.pump(budget, eof);
        inputs.append(&mut self.s.emit);
        flow
    }
}

/// One connection's commands.
struct Session {
    conn: ConnId,
    /// The connection's own id (CLIENT ID, HELLO).
    client: ClientId,
    /// Replies made from requests are numbered by tickets.
    next_ticket: u64,
    /// Each lane's client id and next sequence number.
    lanes: Vec<(ClientId, u64)>,
    mode: ReadMode,
    authed: bool,
    password: Option<auth::Secret>,
    last_kind: Option<Kind>,
    flight: Arc<Flight>,
    /// Bytes read and not yet parsed (from `start`).
    buf: Vec<u8>,
    start: usize,
    /// Requests of the commands taken, not yet sent: (ticket, op, mode).
    pending: VecDeque<(u64, Op, ReadMode)>,
    /// No more commands are taken.
    quit: bool,
    /// What the commands made, for the node.
    emit: Vec<Input>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Read,
    Write,
}

/// A command's outcome.
enum Flow {
    Go,
    /// Take no more commands (QUIT, or a command that cannot be served).
    Stop,
}

impl Session {
    fn pump(&mut self, budget: &mut usize, eof: bool) -> Pumped {
        loop {
            if !self.issue() {
                return Pumped::Blocked;
            }
            if self.quit {
                return Pumped::Done;
            }
            if *budget == 0 {
                return Pumped::Budget;
            }
            if !self.flight.reply_room() {
                return Pumped::Blocked;
            }
            let max_wire = if self.authed { usize::MAX } else { codec::MAX_UNAUTHED_COMMAND_BYTES };
            match codec::parse_within(&self.buf[self.start..], max_wire) {
                Ok(Some((args, used))) => {
                    self.start += used;
                    if args.is_empty() {
                        continue;
                    }
                    *budget -= 1;
                    if let Flow::Stop = self.command(&args) {
                        self.quit = true;
                    }
                }
                Ok(None) => {
                    if eof {
                        // Half-closed (`redis-cli --pipe`, `nc`): answer
                        // what came, then close.
                        self.item(Item::Close);
                        self.quit = true;
                        continue;
                    }
                    return Pumped::NeedBytes;
                }
                Err(e) => {
                    let e = if self.authed { e.to_string() } else { format!("{e} before AUTH") };
                    let mut out = Vec::new();
                    codec::error(&mut out, &format!("ERR {e}"));
                    self.item(Item::Ready(out));
                    self.item(Item::Close);
                    info!("closing a RESP connection: {e}");
                    self.quit = true;
                }
            }
        }
    }

    /// Whether the first pending request can go out now.
    fn can_issue(&self) -> bool {
        let Some((_, op, _)) = self.pending.front() else { return true };
        let kind = if op.is_write() { Kind::Write } else { Kind::Read };
        if self.last_kind.is_some_and(|k| k != kind) && !self.flight.drained() {
            return false;
        }
        self.flight.lane_free()
    }

    /// Sends pending requests while it can; false if some must wait.
    fn issue(&mut self) -> bool {
        while !self.pending.is_empty() {
            if !self.can_issue() {
                return false;
            }
            let Some((ticket, op, read)) = self.pending.pop_front() else { break };
            self.last_kind = Some(if op.is_write() { Kind::Write } else { Kind::Read });
            let min_lsn = self.flight.max_lsn();
            let lane = match self.flight.acquire_lane() {
                None => return false,
                Some(Ok(lane)) => lane,
                Some(Err(new)) => {
                    self.lanes.push((ClientId(super::random_u64()), 1));
                    new
                }
            };
            let Some((client, next)) = self.lanes.get_mut(lane) else { return false };
            let id = RequestId { client: *client, seq: *next };
            *next = next.saturating_add(1);
            self.flight.start(id, ticket, lane);
            let msg = Msg::Request { id, attempt: 1, op, read, min_lsn };
            self.emit.push(Input::Frame {
                conn: self.conn,
                from: NodeId::Client(id.client),
                frame: Frame::Msg(msg),
            });
        }
        true
    }

    /// Queues `item` for the node.
    fn item(&mut self, item: Item) {
        let bytes = match &item {
            Item::Ready(b) => b.len(),
            _ => 0,
        };
        self.flight.add_reply(bytes);
        self.emit.push(Input::Resp { conn: self.conn, item });
    }

    fn ready(&mut self, f: impl FnOnce(&mut Vec<u8>)) -> Flow {
        let mut out = Vec::new();
        f(&mut out);
        self.item(Item::Ready(out));
        Flow::Go
    }

    fn error(&mut self, msg: &str) -> Flow {
        self.ready(|o| codec::error(o, msg))
    }

    fn ok(&mut self) -> Flow {
        self.ready(|o| codec::simple(o, "OK"))
    }

    /// Queues `ops` as requests whose answers make one reply of `shape`.
    fn requests(&mut self, shape: Shape, ops: Vec<(Op, ReadMode)>) -> Flow {
        let first = self.next_ticket;
        let n = ops.len() as u64;
        let Some(end) = first.checked_add(n) else {
            self.error("ERR tickets used up");
            self.item(Item::Close);
            return Flow::Stop;
        };
        self.next_ticket = end;
        self.item(Item::Await { shape, seqs: (first..end).collect() });
        for (i, (op, read)) in ops.into_iter().enumerate() {
            self.pending.push_back((first + i as u64, op, read));
        }
        Flow::Go
    }

    fn command(&mut self, args: &[Vec<u8>]) -> Flow {
        let name = String::from_utf8_lossy(&args[0]).to_ascii_uppercase();
        let rest = &args[1..];
        let arity = |ok: bool| -> Option<String> {
            (!ok)
                .then(|| format!("ERR wrong number of arguments for '{}' command", name.to_ascii_lowercase()))
        };
        if !self.authed && !matches!(name.as_str(), "AUTH" | "HELLO" | "QUIT") {
            return self.error("NOAUTH Authentication required.");
        }
        let check = match name.as_str() {
            "GET" => arity(rest.len() == 1),
            "SET" => arity(rest.len() >= 2),
            "DEL" | "EXISTS" | "MGET" => arity(!rest.is_empty()),
            "MSET" => arity(!rest.is_empty() && rest.len() % 2 == 0),
            "ECHO" => arity(rest.len() == 1),
            "PING" => arity(rest.len() <= 1),
            "WAIT" => arity(rest.len() == 2),
            "AUTH" => arity(rest.len() == 1 || rest.len() == 2),
            "SELECT" => arity(rest.len() == 1),
            "KVSTORE.READMODE" => arity(rest.len() == 1),
            _ => None,
        };
        if let Some(e) = check {
            return self.error(&e);
        }
        match name.as_str() {
            "PING" => match rest.first() {
                Some(m) => self.ready(|o| codec::bulk(o, m)),
                None => self.ready(|o| codec::simple(o, "PONG")),
            },
            "ECHO" => self.ready(|o| codec::bulk(o, &rest[0])),
            "QUIT" => {
                self.ok();
                self.item(Item::Close);
                Flow::Stop
            }
            "AUTH" => self.auth(
                rest.last().map(Vec::as_slice).unwrap_or_default(),
                rest.first().filter(|_| rest.len() == 2),
            ),
            "HELLO" => self.hello(rest),
            "SELECT" => match rest[0].as_slice() {
                b"0" => self.ok(),
                _ => self.error("ERR DB index is out of range"),
            },
            "CLIENT" => self.client_cmd(rest),
            "CONFIG" => self.config(rest),
            "COMMAND" => match rest.first().map(|a| a.to_ascii_uppercase()) {
                Some(s) if s == b"COUNT" => self.ready(|o| codec::int(o, COMMANDS.len() as i64)),
                _ => self.ready(|o| codec::array(o, 0)),
            },
            "INFO" => {
                let section = rest.first().map(|s| String::from_utf8_lossy(s).to_ascii_lowercase());
                self.info(section)
            }
            "WAIT" => match (parse_int(&rest[0]), parse_int(&rest[1])) {
                (Some(n), Some(t)) if n >= 0 && t >= 0 => {
                    self.item(Item::Wait(n));
                    Flow::Go
                }
                (Some(_), Some(_)) => self.error("ERR timeout is negative"),
                _ => self.error("ERR value is not an integer or out of range"),
            },
            "KVSTORE.READMODE" => {
                match String::from_utf8_lossy(&rest[0]).to_ascii_lowercase().parse::<ReadMode>() {
                    Ok(m) => {
                        self.mode = m;
                        self.ok()
                    }
                    Err(e) => self.error(&format!("ERR {e}")),
                }
            }
            "GET" | "SET" | "DEL" | "EXISTS" | "MGET" | "MSET" => self.data(&name, rest),
            _ => {
                let mut shown = String::new();
                for a in rest.iter().take(8) {
                    shown.push('\'');
                    shown.push_str(&String::from_utf8_lossy(&a[..a.len().min(64)]));
                    shown.push_str("' ");
                }
                let cmd = String::from_utf8_lossy(&args[0][..args[0].len().min(64)]).into_owned();
                self.error(&format!("ERR unknown command '{cmd}', with args beginning with: {shown}"))
            }
        }
    }

    fn data(&mut self, name: &str, rest: &[Vec<u8>]) -> Flow {
        let mut text = Vec::with_capacity(rest.len());
        for a in rest {
            match std::str::from_utf8(a) {
                Ok(s) => text.push(s.to_string()),
                Err(_) => return self.error("ERR kvstore keys and values are UTF-8 text"),
            }
        }
        let mode = self.mode;
        match name {
            "GET" => self.requests(Shape::Get, vec![(Op::Get { key: text.swap_remove(0) }, mode)]),
            "SET" if text.len() > 2 => self.error("ERR syntax error (kvstore supports only SET key value)"),
            "SET" => {
                let value = text.pop().unwrap_or_default();
                let key = text.pop().unwrap_or_default();
                self.requests(Shape::Ok, vec![(Op::Set { key, value }, mode)])
            }
            "MGET" => {
                self.requests(Shape::Values, text.into_iter().map(|key| (Op::Get { key }, mode)).collect())
            }
            "EXISTS" => {
                self.requests(Shape::Count, text.into_iter().map(|key| (Op::Get { key }, mode)).collect())
            }
            "MSET" => {
                let mut ops = Vec::with_capacity(text.len() / 2);
                let mut it = text.into_iter();
                while let (Some(key), Some(value)) = (it.next(), it.next()) {
                    ops.push((Op::Set { key, value }, mode));
                }
                self.requests(Shape::Ok, ops)
            }
            "DEL" => {
                // The count: linearizable reads just before the deletes.
                let reads = text.len();
                let mut ops: Vec<(Op, ReadMode)> =
                    text.iter().map(|k| (Op::Get { key: k.clone() }, ReadMode::Leader)).collect();
                ops.extend(text.into_iter().map(|key| (Op::Del { key }, mode)));
                self.requests(Shape::Del { reads }, ops)
            }
            _ => self.error("ERR unknown command"),
        }
    }

    fn auth(&mut self, password: &[u8], user: Option<&Vec<u8>>) -> Flow {
        let Some(expected) = self.password.clone() else {
            return self.error(
                "ERR AUTH <password> called without any password configured for the default user. \
                 Are you sure your configuration is correct?",
            );
        };
        let user_ok = user.is_none_or(|u| u.as_slice() == b"default");
        if user_ok && constant_time_eq(password, expected.bytes()) {
            self.authed = true;
            self.ok()
        } else {
            self.error("WRONGPASS invalid username-password pair or user is disabled.")
        }
    }

    fn hello(&mut self, rest: &[Vec<u8>]) -> Flow {
        let mut i = 0;
        if let Some(v) = rest.first() {
            match parse_int(v) {
                Some(2) => i = 1,
                Some(_) => return self.error("NOPROTO unsupported protocol version (kvstore speaks RESP2)"),
                None => return self.error("ERR Protocol version is not an integer or out of range"),
            }
        }
        while i < rest.len() {
            let opt = rest[i].to_ascii_uppercase();
            if opt == b"AUTH" && i + 2 < rest.len() {
                let (user, pass) = (rest[i + 1].clone(), rest[i + 2].clone());
                let Some(expected) = self.password.clone() else {
                    return self.error("ERR AUTH called without any password configured");
                };
                if user != b"default" || !constant_time_eq(&pass, expected.bytes()) {
                    return self.error("WRONGPASS invalid username-password pair or user is disabled.");
                }
                self.authed = true;
                i += 3;
            } else if opt == b"SETNAME" && i + 1 < rest.len() {
                i += 2;
            } else {
                return self.error("ERR syntax error in HELLO option");
            }
        }
        if !self.authed {
            return self.error("NOAUTH HELLO must be called with the client already authenticated");
        }
        let client = self.client.0;
        self.ready(|o| {
            codec::array(o, 14);
            for (k, v) in [("server", "redis"), ("version", "7.0.0")] {
                codec::bulk(o, k.as_bytes());
                codec::bulk(o, v.as_bytes());
            }
            codec::bulk(o, b"proto");
            codec::int(o, 2);
            codec::bulk(o, b"id");
            codec::int(o, (client >> 1) as i64);
            for (k, v) in [("mode", "standalone"), ("role", "master")] {
                codec::bulk(o, k.as_bytes());
                codec::bulk(o, v.as_bytes());
            }
            codec::bulk(o, b"modules");
            codec::array(o, 0);
        })
    }

    fn client_cmd(&mut self, rest: &[Vec<u8>]) -> Flow {
        let sub = rest.first().map(|s| s.to_ascii_uppercase()).unwrap_or_default();
        match sub.as_slice() {
            b"SETNAME" | b"SETINFO" | b"NO-EVICT" | b"NO-TOUCH" | b"REPLY" => self.ok(),
            b"GETNAME" => self.ready(codec::nil),
            b"ID" => {
                let id = (self.client.0 >> 1) as i64;
                self.ready(|o| codec::int(o, id))
            }
            _ => {
                self.error("ERR unknown subcommand for CLIENT (kvstore knows SETNAME, GETNAME, SETINFO, ID)")
            }
        }
    }

    fn config(&mut self, rest: &[Vec<u8>]) -> Flow {
        let sub = rest.first().map(|s| s.to_ascii_uppercase()).unwrap_or_default();
        if sub.as_slice() != b"GET" {
            return self.error("ERR kvstore supports only CONFIG GET");
        }
        let mut pairs: Vec<(&str, &str)> = Vec::new();
        for p in &rest[1..] {
            let p = String::from_utf8_lossy(p).to_ascii_lowercase();
            for (k, v) in CONFIG {
                if glob(&p, k) && !pairs.iter().any(|(pk, _)| pk == &k) {
                    pairs.push((k, v));
                }
            }
        }
        self.ready(|o| {
            codec::array(o, pairs.len() * 2);
            for (k, v) in &pairs {
                codec::bulk(o, k.as_bytes());
                codec::bulk(o, v.as_bytes());
            }
        })
    }

    fn info(&mut self, section: Option<String>) -> Flow {
        // The node renders it: it holds the balancer machine.
        self.item(Item::Info(section));
        Flow::Go
    }
}

/// What `CONFIG GET` answers (enough for redis-benchmark and redis-cli).
const CONFIG: [(&str, &str); 5] =
    [("save", ""), ("appendonly", "no"), ("databases", "1"), ("maxmemory", "0"), ("timeout", "0")];

/// The commands served (for `COMMAND COUNT`).
const COMMANDS: [&str; 18] = [
    "get",
    "set",
    "del",
    "exists",
    "mget",
    "mset",
    "ping",
    "echo",
    "quit",
    "auth",
    "hello",
    "client",
    "select",
    "wait",
    "info",
    "config",
    "command",
    "kvstore.readmode",
];

/// `*` and `?` globbing, as CONFIG GET patterns use (iterative, with one
/// backtrack point: linear in pattern times name).
fn glob(pattern: &str, name: &str) -> bool {
    let (p, n) = (pattern.as_bytes(), name.as_bytes());
    let (mut i, mut j) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while j < n.len() {
        if i < p.len() && (p[i] == b'?' || p[i] == n[j]) {
            i += 1;
            j += 1;
        } else if i < p.len() && p[i] == b'*' {
            star = Some((i, j));
            i += 1;
        } else if let Some((si, sj)) = star {
            i = si + 1;
            j = sj + 1;
            star = Some((si, sj + 1));
        } else {
            return false;
        }
    }
    p[i..].iter().all(|&c| c == b'*')
}

fn parse_int(b: &[u8]) -> Option<i64> {
    std::str::from_utf8(b).ok()?.parse().ok()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
