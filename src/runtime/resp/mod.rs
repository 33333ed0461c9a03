//! The balancer's Redis (RESP2) port: `kvnode balancer --resp ADDR`.
//!
//! A RESP connection is a client of the balancer machine like a native
//! one, with no extra hop: its reader thread parses commands ([`codec`]),
//! turns each into requests of a client id of its own (the same
//! `Msg::Request` a native client sends) on the node's clients' channel,
//! and tells the node first how the command's reply is made from their
//! answers ([`Item`]). The node thread writes replies in command order
//! ([`Replies`]), so a pipeline is forwarded as fast as it is read.
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
//! write never overtakes an earlier read.

pub mod client;
pub mod codec;
pub mod replies;

use super::auth::{self, Keys};
use super::net::{self, Inbox, Input};
use crate::msg::Msg;
use crate::types::{ClientId, Lsn, NodeId, Op, ReadMode, RequestId};
use crate::wire::Frame;
pub use replies::{ClusterInfo, Item, ReplicaInfo, Replies, Shape};
use std::collections::BTreeMap;
use std::io::{self, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::Duration;
use tracing::{debug, info, warn};

/// Requests one RESP connection may have in flight (its pipeline depth at
/// the balancer, and its number of lanes); the reader stops reading beyond
/// that, so TCP pushes back.
pub const MAX_IN_FLIGHT: usize = 128;
/// Replies one RESP connection may owe at most (answered or not, not yet
/// written); the reader stops reading beyond that.
pub const MAX_QUEUED_REPLIES: usize = 4096;
/// Bytes of ready replies (PING, ECHO, errors...) one RESP connection may
/// have queued behind replies still waiting, at most.
pub const MAX_QUEUED_REPLY_BYTES: usize = 1 << 20;
/// Bytes read from a RESP socket at a time.
const READ_CHUNK: usize = 64 * 1024;
const READER_STACK_BYTES: usize = 256 * 1024;

/// What a RESP connection's reader and the node thread share: the
/// requests in flight, the replies owed, the newest LSN answered.
pub struct Flight {
    state: Mutex<FlightState>,
    changed: Condvar,
}

#[derive(Default)]
struct FlightState {
    /// Requests in flight: the reply ticket each feeds, and its lane.
    in_flight: BTreeMap<RequestId, (u64, usize)>,
    /// Lanes with nothing in flight, and how many lanes there are.
    free: Vec<usize>,
    lanes: usize,
    lane_of: BTreeMap<ClientId, usize>,
    replies: usize,
    reply_bytes: usize,
    max_lsn: Lsn,
    closed: bool,
    waiting: bool,
}

impl Flight {
    fn new() -> Flight {
        Flight { state: Mutex::new(FlightState::default()), changed: Condvar::new() }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FlightState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until `ready` holds; false once the connection closed.
    fn wait_until(
        &self,
        ready: impl Fn(&FlightState) -> bool,
    ) -> Option<std::sync::MutexGuard<'_, FlightState>> {
        let mut s = self.lock();
        loop {
            if s.closed {
                return None;
            }
            if ready(&s) {
                return Some(s);
            }
            s.waiting = true;
            s = self.changed.wait_timeout(s, Duration::from_millis(100)).unwrap_or_else(|p| p.into_inner()).0;
            s.waiting = false;
        }
    }

    /// A lane with nothing in flight (a new one while fewer than
    /// [`MAX_IN_FLIGHT`] exist: `Err` with its index, to be named with
    /// [`Flight::name_lane`]). None once the connection closed.
    fn acquire_lane(&self) -> Option<Result<usize, usize>> {
        let mut s = self.wait_until(|s| !s.free.is_empty() || s.lanes < MAX_IN_FLIGHT)?;
        if let Some(l) = s.free.pop() {
            return Some(Ok(l));
        }
        s.lanes += 1;
        Some(Err(s.lanes - 1))
    }

    fn name_lane(&self, lane: usize, client: ClientId) {
        self.lock().lane_of.insert(client, lane);
    }

    /// Request `id` (on `lane`) goes out, feeding reply `ticket`.
    fn start(&self, id: RequestId, ticket: u64, lane: usize) {
        self.lock().in_flight.insert(id, (ticket, lane));
    }

    /// Room for one more reply of `bytes` ready bytes (0 for one to be made).
    fn acquire_reply(&self, bytes: usize) -> bool {
        let fits = |s: &FlightState| {
            s.replies < MAX_QUEUED_REPLIES
                && (s.reply_bytes == 0 || s.reply_bytes.saturating_add(bytes) <= MAX_QUEUED_REPLY_BYTES)
        };
        match self.wait_until(fits) {
            Some(mut s) => {
                s.replies += 1;
                s.reply_bytes = s.reply_bytes.saturating_add(bytes);
                true
            }
            None => false,
        }
    }

    /// Waits until nothing is in flight; the newest LSN answered.
    fn drained(&self) -> Option<Lsn> {
        self.wait_until(|s| s.in_flight.is_empty()).map(|s| s.max_lsn)
    }

    fn max_lsn(&self) -> Lsn {
        self.lock().max_lsn
    }

    fn notify(&self, s: &FlightState) {
        if s.waiting {
            self.changed.notify_all();
        }
    }

    /// Request `id` was answered: the ticket it fed, if it was ours.
    pub(crate) fn release(&self, id: RequestId, lsn: Lsn) -> Option<u64> {
        let mut s = self.lock();
        let (ticket, lane) = s.in_flight.remove(&id)?;
        s.free.push(lane);
        s.max_lsn = s.max_lsn.max(lsn);
        self.notify(&s);
        Some(ticket)
    }

    pub(crate) fn release_items(&self, n: usize, bytes: usize) {
        let mut s = self.lock();
        s.replies = s.replies.saturating_sub(n);
        s.reply_bytes = s.reply_bytes.saturating_sub(bytes);
        self.notify(&s);
    }

    pub(crate) fn close(&self) {
        let mut s = self.lock();
        s.closed = true;
        self.changed.notify_all();
    }
}

/// How the RESP port is set up.
#[derive(Clone)]
pub struct RespOptions {
    pub inbox: Inbox,
    pub stopping: Arc<AtomicBool>,
    pub keys: Keys,
    pub client_idle: Duration,
}

/// Opens the RESP listener at `addr` and accepts on a thread of its own.
pub fn start(addr: &str, opts: RespOptions, insecure_open: bool) -> io::Result<SocketAddr> {
    let listener = net::bind(addr)?;
    let local = listener.local_addr()?;
    auth::check_listen(local, opts.keys.cluster.is_some(), insecure_open)?;
    thread::Builder::new().name("lb-resp-accept".into()).spawn(move || accept_loop(listener, opts))?;
    Ok(local)
}

fn accept_loop(listener: TcpListener, opts: RespOptions) {
    let limit = auth::connection_limit();
    for stream in listener.incoming() {
        if opts.stopping.load(Ordering::SeqCst) {
            break;
        }
        let stream = match stream {
            Ok(s) => s,
            Err(e) => {
                debug!("resp accept failed: {e}");
                thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        if !net::open_one(limit) {
            debug!("refusing a RESP connection: {limit} connections open");
            continue;
        }
        let o = opts.clone();
        let spawned =
            thread::Builder::new().name("lb-resp".into()).stack_size(READER_STACK_BYTES).spawn(move || {
                serve(stream, &o);
                net::close_one();
            });
        if let Err(e) = spawned {
            warn!("cannot start a RESP reader thread: {e}");
            net::close_one();
        }
    }
    debug!("stopped accepting RESP connections");
}

fn serve(stream: TcpStream, opts: &RespOptions) {
    let peer_addr = stream.peer_addr().map(|p| p.to_string()).unwrap_or_default();
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(Some(opts.client_idle));
    let stream = Arc::new(stream);
    let conn = net::new_conn_id();
    let client = ClientId(super::random_u64());
    let flight = Arc::new(Flight::new());
    let connected = Input::RespConnected {
        conn,
        peer: NodeId::Client(client),
        stream: stream.clone(),
        replies: Box::new(Replies::new(flight.clone())),
    };
    if opts.inbox.clients.send(connected).is_err() {
        return;
    }
    debug!("RESP connection {conn} from {peer_addr} as {}", NodeId::Client(client));
    let mut s = Session {
        conn,
        client,
        next_ticket: 1,
        lanes: Vec::new(),
        mode: ReadMode::Session,
        authed: opts.keys.client.is_none(),
        last_kind: None,
        flight,
        opts,
    };
    let end = s.run(&stream);
    match end {
        End::Quit => {}
        End::Gone(why) => {
            debug!("RESP connection from {peer_addr} ended: {why}");
            let _ = stream.shutdown(std::net::Shutdown::Both);
            let _ = opts.inbox.clients.send(Input::Closed { conn });
        }
    }
}

enum End {
    /// The node closes the connection once its replies are written.
    Quit,
    /// Close now.
    Gone(String),
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Read,
    Write,
}

struct Session<'a> {
    conn: net::ConnId,
    /// The connection's own id (CLIENT ID, HELLO).
    client: ClientId,
    /// Replies made from requests are numbered by tickets.
    next_ticket: u64,
    /// Each lane's client id and next sequence number.
    lanes: Vec<(ClientId, u64)>,
    mode: ReadMode,
    authed: bool,
    last_kind: Option<Kind>,
    flight: Arc<Flight>,
    opts: &'a RespOptions,
}

/// A command's outcome for the reader loop.
enum Flow {
    Go,
    Stop(End),
}

impl Session<'_> {
    fn run(&mut self, stream: &TcpStream) -> End {
        let mut buf: Vec<u8> = Vec::new();
        let mut start = 0;
        let mut chunk = vec![0u8; READ_CHUNK];
        loop {
            loop {
                match codec::parse(&buf[start..]) {
                    Ok(Some((args, used))) => {
                        start += used;
                        if args.is_empty() {
                            continue;
                        }
                        if let Flow::Stop(end) = self.command(&args) {
                            return end;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        let mut out = Vec::new();
                        codec::error(&mut out, &format!("ERR {e}"));
                        self.item(Item::Ready(out));
                        self.item(Item::Close);
                        info!("closing a RESP connection: {e}");
                        return End::Quit;
                    }
                }
            }
            if start > 0 {
                buf.drain(..start);
                start = 0;
            }
            match (&*stream).read(&mut chunk) {
                Ok(0) => {
                    // Half-closed (`redis-cli --pipe`, `nc`): answer what came.
                    self.item(Item::Close);
                    return End::Quit;
                }
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if net::is_timeout(&e) => {
                    return End::Gone(format!("idle for {:?}", self.opts.client_idle))
                }
                Err(e) => return End::Gone(e.to_string()),
            }
        }
    }

    /// Queues `item` for the node; false when the node or connection is gone.
    fn item(&self, item: Item) -> bool {
        let bytes = match &item {
            Item::Ready(b) => b.len(),
            _ => 0,
        };
        if !self.flight.acquire_reply(bytes) {
            return false;
        }
        self.opts.inbox.clients.send(Input::Resp { conn: self.conn, item }).is_ok()
    }

    fn ready(&self, f: impl FnOnce(&mut Vec<u8>)) -> Flow {
        let mut out = Vec::new();
        f(&mut out);
        if self.item(Item::Ready(out)) {
            Flow::Go
        } else {
            Flow::Stop(End::Gone("node gone".into()))
        }
    }

    fn error(&self, msg: &str) -> Flow {
        self.ready(|o| codec::error(o, msg))
    }

    fn ok(&self) -> Flow {
        self.ready(|o| codec::simple(o, "OK"))
    }

    /// Sends `ops` as requests whose answers make one reply of `shape`.
    fn requests(&mut self, shape: Shape, ops: Vec<(Op, ReadMode)>) -> Flow {
        let first = self.next_ticket;
        let n = ops.len() as u64;
        let Some(end) = first.checked_add(n) else {
            return Flow::Stop(End::Gone("tickets used up".into()));
        };
        self.next_ticket = end;
        if !self.item(Item::Await { shape, seqs: (first..end).collect() }) {
            return Flow::Stop(End::Gone("node gone".into()));
        }
        for (i, (op, read)) in ops.into_iter().enumerate() {
            let ticket = first + i as u64;
            let kind = if op.is_write() { Kind::Write } else { Kind::Read };
            if self.last_kind.is_some_and(|k| k != kind) && self.flight.drained().is_none() {
                return Flow::Stop(End::Gone("connection closed".into()));
            }
            self.last_kind = Some(kind);
            let min_lsn = self.flight.max_lsn();
            let lane = match self.flight.acquire_lane() {
                None => return Flow::Stop(End::Gone("connection closed".into())),
                Some(Ok(lane)) => lane,
                Some(Err(new)) => {
                    let client = ClientId(super::random_u64());
                    self.flight.name_lane(new, client);
                    self.lanes.push((client, 1));
                    new
                }
            };
            let Some((client, next)) = self.lanes.get_mut(lane) else {
                return Flow::Stop(End::Gone("no such lane".into()));
            };
            let id = RequestId { client: *client, seq: *next };
            *next = next.saturating_add(1);
            self.flight.start(id, ticket, lane);
            let bytes = 64 + op_bytes(&op);
            if !self.opts.inbox.reserve_client_bytes(bytes, Duration::from_secs(10)) {
                return Flow::Stop(End::Gone("the node is overloaded: its client queue stayed full".into()));
            }
            let msg = Msg::Request { id, attempt: 1, op, read, min_lsn };
            let input = Input::Frame {
                conn: self.conn,
                from: NodeId::Client(id.client),
                frame: Frame::Msg(msg),
                bytes,
            };
            if self.opts.inbox.clients.send(input).is_err() {
                return Flow::Stop(End::Gone("node gone".into()));
            }
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
                if let Flow::Stop(e) = self.ok() {
                    return Flow::Stop(e);
                }
                self.item(Item::Close);
                Flow::Stop(End::Quit)
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
                    if self.item(Item::Wait(n)) {
                        Flow::Go
                    } else {
                        Flow::Stop(End::Gone("node gone".into()))
                    }
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
        let Some(expected) = &self.opts.keys.client else {
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
                let Some(expected) = &self.opts.keys.client else {
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
        if self.item(Item::Info(section)) {
            Flow::Go
        } else {
            Flow::Stop(End::Gone("node gone".into()))
        }
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

fn op_bytes(op: &Op) -> usize {
    match op {
        Op::Get { key } | Op::Del { key } => key.len(),
        Op::Set { key, value } => key.len() + value.len(),
    }
}
