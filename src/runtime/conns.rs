//! Every socket of one node, driven by that node's one thread: listeners,
//! handshakes in progress, connections, outgoing dials, all non-blocking and
//! waited on together with `epoll` (through `mio`), the machine's next timer
//! as the wait's timeout (see `node.rs`).
//!
//! One pass of the node's loop asks [`Net::poll`] what is ready, then
//! [`Net::read`] turns the bytes that came into [`Input`]s: the cluster's
//! connections first, every frame they have, then clients' up to
//! [`MAX_CLIENT_FRAMES_PER_PASS`] (the rest wait for the next pass, which
//! then does not wait), so the cluster's own traffic is never stuck behind
//! a flood of client requests. What the machine sends is buffered per
//! connection and written once per pass ([`Net::flush`]): a burst of
//! requests becomes one write to each peer. A peer that does not take what
//! it is sent is never waited for: its bytes stay buffered, up to
//! [`MAX_CLIENT_BACKLOG`] for a client and [`MAX_PEER_BACKLOG`] for a
//! cluster peer, then it is dropped.
//!
//! Limits: accepted connections per process ([`auth::connection_limit`]),
//! half of them at most in their handshake (a newcomer pushes out the
//! stalest, [`net::pick_evictee`]); each handshake must finish within
//! [`net::HELLO_TIMEOUT`]; a client may have [`net::MAX_IN_FLIGHT_PER_CLIENT`]
//! requests in flight (its socket is not read beyond that).

use super::auth::{self, Keys};
use super::net::{
    self, AcceptShake, Accepting, Admission, ConnEnd, ConnId, DialHello, DialShake, DialSpec, Throttle,
};
use super::resp::{ClusterInfo, Item, Pumped, RespConn, READ_CHUNK};
use crate::msg::Msg;
use crate::types::NodeId;
use crate::wire::{self, Frame, FrameDecoder, WireError};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

/// What the sockets hand the node's machine.
pub enum Input {
    /// A frame that passed [`wire::accepts`], from `from` on `conn`.
    Frame { conn: ConnId, from: NodeId, frame: Frame },
    /// How a RESP command's reply is made (given before its requests).
    Resp { conn: ConnId, item: Item },
}

/// Bytes read from one connection per pass at most (then the others get
/// their turn; the rest is read in the next pass).
const READ_BYTES_PER_PASS: usize = 1 << 20;
/// Frames (or RESP commands) taken from clients per pass at most, all
/// clients together.
pub const MAX_CLIENT_FRAMES_PER_PASS: usize = 512;
/// Client frames a client may have handled per pass at least (its share of
/// [`MAX_CLIENT_FRAMES_PER_PASS`] when few are busy is larger).
const MIN_CLIENT_SHARE: usize = 16;
/// A cluster peer that takes none of the bytes waiting for it for this long
/// is dropped (and re-dialed): a stopped or partitioned peer must not hold
/// its bytes, and through them every client (see [`CONGESTED_BYTES`]).
pub const PEER_STALL: Duration = Duration::from_millis(500);
/// Bytes buffered for one connection before it is written out mid-pass.
const FLUSH_BYTES: usize = 256 * 1024;
/// Replies a client has not taken, buffered at most before it is dropped.
pub const MAX_CLIENT_BACKLOG: usize = 4 << 20;
/// Replies all clients together have not taken, buffered at most: beyond
/// it the client with the most waiting is dropped (each client's own cap
/// alone let N clients that never read cost N x [`MAX_CLIENT_BACKLOG`]).
pub const MAX_CLIENT_BACKLOG_TOTAL: usize = 32 << 20;
/// Bytes a cluster peer (replica, balancer) has not taken, at most, before
/// it is dropped (and re-dialed): a follower that stopped reading must not
/// cost its leader unbounded memory. One frame bigger than this (a whole
/// snapshot) may wait alone.
pub const MAX_PEER_BACKLOG: usize = 64 << 20;
/// Bytes waiting for a cluster peer beyond which clients are not read (and
/// so not forwarded) until it takes them: the node's own messages to that
/// peer (a balancer's pings, say) must not queue behind megabytes of
/// forwarded writes. TCP then pushes back on the clients.
pub const CONGESTED_BYTES: usize = 256 * 1024;
/// The kernel's send buffer on a balancer's connections to replicas.
const BALANCER_SEND_BUFFER: usize = 256 * 1024;
/// How often idle, handshake and in-flight deadlines are looked at.
const SWEEP_EVERY: Duration = Duration::from_millis(50);
/// Connections accepted per pass at most, so handshakes in progress are
/// read between bursts of a connection flood.
const ACCEPTS_PER_PASS: usize = 64;
/// After a failed `accept` (out of descriptors, say), wait this long.
const ACCEPT_RETRY: Duration = Duration::from_millis(10);

/// What every connection is watched for. Priority is the urgent byte: see
/// [`Conn::read_to_block`].
#[cfg(any(target_os = "linux", target_os = "android"))]
const CONN_INTEREST: Interest = Interest::READABLE.add(Interest::WRITABLE).add(Interest::PRIORITY);
#[cfg(not(any(target_os = "linux", target_os = "android")))]
const CONN_INTEREST: Interest = Interest::READABLE.add(Interest::WRITABLE);
const LISTENER: Token = Token(0);
const RESP_LISTENER: Token = Token(1);
pub const WAKER: Token = Token(2);

/// The connection for `conn`'s token.
fn token(conn: ConnId) -> Token {
    Token(conn as usize)
}

struct Conn {
    stream: TcpStream,
    peer_addr: String,
    dec: FrameDecoder,
    out: Vec<u8>,
    state: State,
    /// Counted in the process's accepted connections.
    accepted: bool,
    since: Instant,
    last_read: Instant,
    /// The last read met the end of the stream: nothing more comes.
    eof: bool,
    /// A short read does not mean drained: read until `WouldBlock`. Set
    /// once epoll says the peer closed its side or the socket failed, and
    /// once the peer sends a TCP urgent byte (`MSG_OOB`), because a read
    /// stops short at the urgent mark with more bytes queued behind it and
    /// epoll reports no new edge for them. Never cleared.
    read_to_block: bool,
    /// The buffer's size counted in `Net::backlog` (a client's replies it
    /// did not take yet).
    backlog: usize,
    /// The largest frame queued since `out` was last empty (a snapshot may
    /// exceed [`MAX_PEER_BACKLOG`] alone).
    big: usize,
    /// While bytes wait: when the peer last took some (or they began to
    /// wait). See [`PEER_STALL`].
    progress: Option<Instant>,
}

enum State {
    Accepting(AcceptShake),
    /// Our non-blocking connect is in progress (then `Dialing`).
    Connecting {
        peer: NodeId,
        shake: DialShake,
    },
    Dialing {
        peer: NodeId,
        shake: DialShake,
    },
    Open(Open),
    /// A RESP client of the balancer.
    Resp(Box<RespConn>),
    /// Refused: the reason is written (if the peer takes it), then closed.
    Closing,
}

struct Open {
    peer: NodeId,
    dialed: bool,
    /// A balancer that only looks: never a route for the machine's sends.
    observer: bool,
    /// Nothing received for this long closes the connection.
    idle: Option<Duration>,
    /// A client's requests in flight, by sequence number, since when.
    in_flight: Option<BTreeMap<u64, Instant>>,
}

impl Conn {
    fn new(
        stream: TcpStream,
        peer_addr: String,
        out: Vec<u8>,
        state: State,
        accepted: bool,
        now: Instant,
    ) -> Conn {
        Conn {
            stream,
            peer_addr,
            dec: FrameDecoder::new(),
            out,
            state,
            accepted,
            since: now,
            last_read: now,
            eof: false,
            read_to_block: false,
            backlog: 0,
            big: 0,
            progress: None,
        }
    }

    fn peer(&self) -> Option<NodeId> {
        match &self.state {
            State::Open(o) => Some(o.peer),
            State::Resp(r) => Some(r.peer()),
            State::Connecting { peer, .. } | State::Dialing { peer, .. } => Some(*peer),
            _ => None,
        }
    }

    fn is_client(&self) -> bool {
        match &self.state {
            State::Open(o) => matches!(o.peer, NodeId::Client(_)),
            State::Resp(_) => true,
            _ => false,
        }
    }
}

/// An outgoing connection kept up: when to try next, how long to wait after.
struct Dial {
    spec: DialSpec,
    conn: Option<ConnId>,
    next_attempt: Instant,
    backoff: Duration,
    /// The last failure logged: a peer that stays down (routine during a
    /// failover) or keeps refusing us is reported once, and again when the
    /// reason changes.
    last_failure: Option<String>,
    /// Attempts so far (which of the peer's addresses is next).
    tries: usize,
}

/// How a node's sockets are set up.
pub struct NetOptions {
    pub me: NodeId,
    pub listener: std::net::TcpListener,
    /// The balancer's RESP port, if it serves one.
    pub resp_listener: Option<std::net::TcpListener>,
    pub accepting: Accepting,
    pub dials: Vec<DialSpec>,
}

/// A node's sockets, and where to send what.
pub struct Net {
    me: NodeId,
    poll: Poll,
    events: Events,
    listener: Option<TcpListener>,
    resp_listener: Option<TcpListener>,
    accepting: Accepting,
    admission: Admission,
    throttle: Throttle,
    limit: usize,
    conns: BTreeMap<ConnId, Conn>,
    /// The connection each peer is reached by. A connection this node dialed
    /// is preferred; otherwise the newest one from that peer. (A balancer at
    /// a replica and each client id at the balancer have one connection at
    /// a time: the acceptor admits no second. Observers are never routes.)
    routes: BTreeMap<NodeId, ConnId>,
    dials: BTreeMap<NodeId, Dial>,
    /// Accepted connections in their handshake, oldest first.
    handshaking: Vec<ConnId>,
    /// RESP connections accepted while a client password is set, oldest
    /// first, that may not have sent AUTH yet (pruned at each accept):
    /// at most [`Net::max_unauthed_resp`], a newcomer pushes out the oldest.
    resp_unauthed: VecDeque<ConnId>,
    /// Connections to read in this pass: readiness came, or a previous pass
    /// left bytes unread (edge-triggered readiness will not tell again).
    readable: BTreeSet<ConnId>,
    /// Connections with bytes to write.
    dirty: BTreeSet<ConnId>,
    /// Bytes held for clients that did not take their replies at once
    /// (the sum of every connection's `backlog`).
    backlog: usize,
    /// The cluster view RESP replies waiting at their head need (a WAIT),
    /// taken from the role just before a flush.
    pub info: Option<ClusterInfo>,
    /// RESP connections that stopped taking commands until their requests
    /// in flight are answered or their replies written.
    resp_waiting: BTreeSet<ConnId>,
    /// Cluster connections with more than [`CONGESTED_BYTES`] waiting.
    congested: BTreeSet<ConnId>,
    /// The client read last (round robin, see [`Net::read`]).
    client_cursor: ConnId,
    next_sweep: Instant,
    accept_retry: Option<Instant>,
    /// The handshakes were read during this burst of accepts.
    progressed: bool,
    /// Handshakes read again during this burst before an eviction.
    reread: BTreeSet<ConnId>,
    /// Inputs read early (a handshake finished while reading them before
    /// an eviction), handed over by the next [`Net::read`].
    early: Vec<Input>,
    /// The waker's token fired: the node's control channel has something.
    pub woken: bool,
    keys: Keys,
    /// Every socket read lands here first (zeroed once, [`READ_CHUNK`]
    /// bytes); a connection's own buffer then takes only the bytes that
    /// came, so an idle one keeps none and a busy one is never re-zeroed.
    scratch: Box<[u8]>,
}

impl Net {
    pub fn new(o: NetOptions) -> io::Result<(Net, Arc<Waker>)> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        o.listener.set_nonblocking(true)?;
        let mut listener = TcpListener::from_std(o.listener);
        poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
        let resp_listener = match o.resp_listener {
            Some(l) => {
                l.set_nonblocking(true)?;
                let mut l = TcpListener::from_std(l);
                poll.registry().register(&mut l, RESP_LISTENER, Interest::READABLE)?;
                Some(l)
            }
            None => None,
        };
        let now = Instant::now();
        let dials = o
            .dials
            .into_iter()
            .map(|spec| {
                (
                    spec.peer,
                    Dial {
                        spec,
                        conn: None,
                        next_attempt: now,
                        backoff: net::REDIAL_MIN,
                        last_failure: None,
                        tries: 0,
                    },
                )
            })
            .collect();
        let keys = o.accepting.keys.clone();
        let net = Net {
            me: o.me,
            poll,
            events: Events::with_capacity(1024),
            listener: Some(listener),
            resp_listener,
            accepting: o.accepting,
            admission: Admission::default(),
            throttle: Throttle::default(),
            limit: auth::connection_limit(),
            conns: BTreeMap::new(),
            routes: BTreeMap::new(),
            dials,
            handshaking: Vec::new(),
            resp_unauthed: VecDeque::new(),
            readable: BTreeSet::new(),
            dirty: BTreeSet::new(),
            backlog: 0,
            info: None,
            resp_waiting: BTreeSet::new(),
            congested: BTreeSet::new(),
            client_cursor: 0,
            next_sweep: now,
            accept_retry: None,
            progressed: false,
            scratch: vec![0; READ_CHUNK].into_boxed_slice(),
            reread: BTreeSet::new(),
            early: Vec::new(),
            woken: false,
            keys,
        };
        Ok((net, waker))
    }

    /// When the sockets need the loop next without any readiness: a dial
    /// due, a deadline to look at, a retried accept; now when a previous
    /// pass left input unread.
    pub fn next_deadline(&self) -> Instant {
        // Clients left unread wait while a cluster peer is congested (its
        // writable edge wakes the loop); anything else left unread is now.
        let unread = if self.congested.is_empty() {
            !self.readable.is_empty() || !self.resp_waiting.is_empty() && self.resp_can_go()
        } else {
            self.readable.iter().any(|id| self.conns.get(id).is_some_and(|c| !c.is_client()))
        };
        if unread || !self.early.is_empty() {
            return Instant::now();
        }
        let mut at = self.next_sweep;
        for d in self.dials.values().filter(|d| d.conn.is_none()) {
            at = at.min(d.next_attempt);
        }
        if let Some(r) = self.accept_retry {
            at = at.min(r);
        }
        at
    }

    fn resp_can_go(&self) -> bool {
        self.resp_waiting.iter().any(|id| match self.conns.get(id).map(|c| &c.state) {
            Some(State::Resp(r)) => r.can_go(),
            _ => false,
        })
    }

    /// Waits until something is ready or `deadline` passes, and notes what.
    pub fn poll(&mut self, deadline: Option<Instant>) {
        let now = Instant::now();
        let own = self.next_deadline();
        let until = deadline.map_or(own, |d| d.min(own));
        let timeout = until.saturating_duration_since(now);
        if let Err(e) = self.poll.poll(&mut self.events, Some(timeout)) {
            if e.kind() != io::ErrorKind::Interrupted {
                warn!(node = %self.me, "poll failed: {e}");
            }
            return;
        }
        let mut accept = [false; 2];
        let mut ready: Vec<(ConnId, bool, bool, bool)> = Vec::new();
        for ev in self.events.iter() {
            match ev.token() {
                LISTENER => accept[0] = true,
                RESP_LISTENER => accept[1] = true,
                WAKER => self.woken = true,
                Token(t) => ready.push((
                    t as ConnId,
                    ev.is_readable() || ev.is_read_closed() || ev.is_error() || ev.is_priority(),
                    ev.is_read_closed() || ev.is_error() || ev.is_priority(),
                    ev.is_writable(),
                )),
            }
        }
        if self.accept_retry.is_some_and(|r| Instant::now() >= r) {
            self.accept_retry = None;
            accept = [true, self.resp_listener.is_some()];
        }
        self.progressed = false;
        self.reread.clear();
        if accept[0] {
            self.accept(false);
        }
        if accept[1] {
            self.accept(true);
        }
        for (id, readable, to_block, writable) in ready {
            if writable {
                self.on_writable(id);
            }
            if let Some(c) = self.conns.get_mut(&id) {
                c.read_to_block |= to_block;
                if readable {
                    self.readable.insert(id);
                }
            }
        }
        let now = Instant::now();
        self.dial_due(now);
        if now >= self.next_sweep {
            self.sweep(now);
        }
    }

    // ---- accepting ----

    fn accept(&mut self, resp: bool) {
        for _ in 0..ACCEPTS_PER_PASS {
            let l = if resp { self.resp_listener.as_ref() } else { self.listener.as_ref() };
            let Some(l) = l else { return };
            let (stream, peer) = match l.accept() {
                Ok(s) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // Out of descriptors, say: wait a moment rather than spin.
                    if self.throttle.allow(self.me) {
                        warn!(node = %self.me, "accept failed: {e}");
                    }
                    self.accept_retry = Some(Instant::now() + ACCEPT_RETRY);
                    return;
                }
            };
            self.accepted(stream, peer, resp);
        }
        // More may wait: go on after this pass's reads (the listener's
        // readiness edge will not come again for them).
        self.accept_retry = Some(Instant::now());
    }

    fn accepted(&mut self, mut stream: TcpStream, peer: SocketAddr, resp: bool) {
        let peer_addr = peer.to_string();
        if !net::open_one(self.limit) {
            if self.throttle.allow(self.me) {
                warn!(
                    node = %self.me,
                    "refusing connection from {peer_addr}: {} connections open (limit {})",
                    net::open_connections(),
                    self.limit
                );
            }
            return;
        }
        let _ = stream.set_nodelay(true);
        let conn = net::new_conn_id();
        if let Err(e) = self.poll.registry().register(&mut stream, token(conn), CONN_INTEREST) {
            warn!(node = %self.me, "cannot watch a connection from {peer_addr}: {e}");
            net::close_one();
            return;
        }
        let now = Instant::now();
        let mut c = Conn::new(stream, peer_addr, Vec::new(), State::Closing, true, now);
        if resp {
            let client = crate::types::ClientId(super::random_u64());
            debug!(node = %self.me, "RESP connection {conn} from {} as {}", c.peer_addr, NodeId::Client(client));
            c.state = State::Resp(Box::new(RespConn::new(conn, client, &self.keys)));
            self.conns.insert(conn, c);
            self.readable.insert(conn);
            if self.keys.client.is_some() {
                self.admit_unauthed_resp(conn);
            }
            return;
        }
        if self.handshaking.len() >= self.limit / 2 {
            if !self.progressed {
                // Judge each by what it sent, not by what this loop has
                // read yet: take in what the handshakes have (once per
                // burst of accepts).
                self.progressed = true;
                let mut early = std::mem::take(&mut self.early);
                for id in self.handshaking.clone() {
                    let mut budget = 0;
                    self.read_conn(id, &mut early, &mut budget);
                }
                self.early = early;
            }
            let staged = self.staged(now);
            if let Some(mut i) = net::pick_evictee(&staged, now) {
                // One that said hello may have sent its proof since: read
                // it before pushing it out (once each per burst).
                let mut staged = staged;
                for _ in 0..4 {
                    let id = self.handshaking[i];
                    if staged[i].0 != 1 || !self.reread.insert(id) {
                        break;
                    }
                    let mut early = std::mem::take(&mut self.early);
                    let mut budget = 0;
                    self.read_conn(id, &mut early, &mut budget);
                    self.early = early;
                    staged = self.staged(now);
                    match net::pick_evictee(&staged, now) {
                        Some(j) => i = j,
                        None => break,
                    }
                }
                if self.handshaking.len() >= self.limit / 2 {
                    let old = self.handshaking.remove(i);
                    if self.throttle.allow(self.me) {
                        let from = self.conns.get(&old).map(|c| c.peer_addr.clone()).unwrap_or_default();
                        warn!(
                            node = %self.me,
                            "refusing connection from {from}: {} connections are in their handshake (limit); \
                             the oldest makes room for one from {}",
                            self.limit / 2,
                            c.peer_addr
                        );
                    }
                    self.close(old, None);
                }
            }
        }
        c.state = State::Accepting(AcceptShake::start(self.me, &mut c.out));
        self.conns.insert(conn, c);
        self.handshaking.push(conn);
        self.dirty.insert(conn);
        self.readable.insert(conn);
    }

    /// How far each handshake got, and since when (see [`net::pick_evictee`]).
    fn staged(&self, now: Instant) -> Vec<(u8, Instant)> {
        self.handshaking
            .iter()
            .map(|id| match self.conns.get(id) {
                Some(Conn { state: State::Accepting(s), since, .. }) => (s.stage(), *since),
                _ => (2, now),
            })
            .collect()
    }

    /// Stops accepting: the listeners close (new connections are refused).
    pub fn stop_accepting(&mut self) {
        if let Some(mut l) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut l);
        }
        if let Some(mut l) = self.resp_listener.take() {
            let _ = self.poll.registry().deregister(&mut l);
        }
    }

    // ---- dialing ----

    fn dial_due(&mut self, now: Instant) {
        let due: Vec<NodeId> = self
            .dials
            .iter()
            .filter(|(_, d)| d.conn.is_none() && d.next_attempt <= now)
            .map(|(p, _)| *p)
            .collect();
        for peer in due {
            if let Err(e) = self.dial(peer) {
                self.dial_failed(peer, &ConnEnd::Io(e));
            }
        }
    }

    fn dial(&mut self, peer: NodeId) -> io::Result<()> {
        let Some(d) = self.dials.get(&peer) else { return Ok(()) };
        // Name resolution blocks; addresses are names from the command
        // line, resolved again at each attempt (a replica may have moved).
        // Every address a name resolves to, in turn (IPv4 first, as nodes
        // listen there when a name resolves to both: see `net::bind`).
        let mut addrs: Vec<SocketAddr> = d.spec.addr.to_socket_addrs()?.collect();
        addrs.sort_by_key(|a| !a.is_ipv4());
        let Some(&addr) = addrs.get(d.tries % addrs.len().max(1)) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} resolves to nothing", d.spec.addr),
            ));
        };
        let mut stream = TcpStream::connect(addr)?;
        let _ = stream.set_nodelay(true);
        if self.me == NodeId::Balancer {
            // A small kernel buffer toward each replica: what the replica
            // has not taken then waits here, where it is seen (and stops
            // client reads, see CONGESTED_BYTES), instead of megabytes of
            // forwarded writes queueing in the kernel ahead of the pings.
            let _ = rustix::net::sockopt::set_socket_send_buffer_size(&stream, BALANCER_SEND_BUFFER);
        }
        let conn = net::new_conn_id();
        self.poll.registry().register(&mut stream, token(conn), CONN_INTEREST)?;
        let mut out = Vec::new();
        let hello = DialHello {
            me: self.me,
            expect: Some(peer),
            observer: false,
            keys: &self.keys,
            config: d.spec.config.as_ref(),
        };
        let shake = DialShake::start(&hello, &mut out);
        let now = Instant::now();
        self.conns.insert(
            conn,
            Conn::new(stream, d.spec.addr.clone(), out, State::Connecting { peer, shake }, false, now),
        );
        if let Some(d) = self.dials.get_mut(&peer) {
            d.conn = Some(conn);
            d.tries = d.tries.wrapping_add(1);
        }
        Ok(())
    }

    fn dial_failed(&mut self, peer: NodeId, e: &ConnEnd) {
        let me = self.me;
        let Some(d) = self.dials.get_mut(&peer) else { return };
        d.conn = None;
        let text = e.to_string();
        if d.last_failure.as_deref() != Some(text.as_str()) {
            if e.is_violation() {
                warn!(node = %me, "cannot use {peer} at {}: {e}", d.spec.addr);
            } else if d.spec.loud {
                warn!(node = %me, "cannot reach {peer} at {}: {e} (trying again)", d.spec.addr);
            } else {
                info!(node = %me, "cannot reach {peer} at {}: {e}", d.spec.addr);
            }
            d.last_failure = Some(text);
        }
        d.next_attempt = Instant::now() + d.backoff;
        d.backoff = (d.backoff * 2).min(net::REDIAL_MAX);
    }

    fn on_writable(&mut self, id: ConnId) {
        let Some(c) = self.conns.get_mut(&id) else { return };
        if let State::Connecting { .. } = c.state {
            let failed = match c.stream.take_error() {
                Ok(Some(e)) | Err(e) => Some(e),
                Ok(None) => match c.stream.peer_addr() {
                    Ok(_) => None,
                    Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
                    Err(e) => Some(e),
                },
            };
            if let Some(e) = failed {
                return self.close(id, Some(ConnEnd::Io(e)));
            }
            let State::Connecting { peer, shake } = std::mem::replace(&mut c.state, State::Closing) else {
                unreachable!("matched above")
            };
            c.state = State::Dialing { peer, shake };
            self.readable.insert(id);
        }
        self.dirty.insert(id);
        self.write_out(id);
    }

    // ---- reading ----

    /// Reads what is ready and turns it into inputs: cluster connections
    /// first, then clients, at most [`MAX_CLIENT_FRAMES_PER_PASS`] of theirs.
    pub fn read(&mut self, inputs: &mut Vec<Input>) {
        inputs.append(&mut self.early);
        let ids: Vec<ConnId> = self.readable.iter().copied().collect();
        let (clients, cluster): (Vec<ConnId>, Vec<ConnId>) =
            ids.into_iter().partition(|id| self.conns.get(id).is_some_and(Conn::is_client));
        for id in cluster {
            self.readable.remove(&id);
            let mut budget = usize::MAX;
            self.read_conn(id, inputs, &mut budget);
        }
        if !self.congested.is_empty() {
            // Clients wait until the cluster peers take what is queued.
            return;
        }
        // Round robin from where the last pass stopped, each client at most
        // its share, so one that always has more cannot starve the others.
        let share = (MAX_CLIENT_FRAMES_PER_PASS / clients.len().max(1)).max(MIN_CLIENT_SHARE);
        let start = clients.partition_point(|id| *id <= self.client_cursor);
        let mut total = MAX_CLIENT_FRAMES_PER_PASS;
        for &id in clients[start..].iter().chain(&clients[..start]) {
            if total == 0 {
                break;
            }
            self.readable.remove(&id);
            let mut budget = share.min(total);
            let given = budget;
            self.read_conn(id, inputs, &mut budget);
            total -= given - budget;
            self.client_cursor = id;
        }
        self.resume_resp(inputs);
    }

    /// Reads one connection: decodes what is buffered, reads more while the
    /// connection may take more (its budget, its requests in flight).
    fn read_conn(&mut self, id: ConnId, inputs: &mut Vec<Input>, budget: &mut usize) {
        let mut read = 0;
        let mut drained = false;
        loop {
            match self.decode(id, inputs, budget) {
                Ok(true) => {}
                Ok(false) => return,
                Err(end) => return self.close(id, Some(end)),
            }
            let Some(c) = self.conns.get_mut(&id) else { return };
            if c.eof {
                return;
            }
            if read >= READ_BYTES_PER_PASS {
                self.readable.insert(id);
                return;
            }
            if drained {
                // A short read emptied the socket: epoll reports the next
                // bytes as a new edge, so no read is owed to WouldBlock.
                match &mut c.state {
                    State::Resp(r) => r.release_if_empty(),
                    _ => c.dec.release_if_empty(),
                }
                return;
            }
            let got = c.stream.read(&mut self.scratch);
            if let Ok(n @ 1..) = got {
                let bytes = &self.scratch[..n];
                match &mut c.state {
                    State::Resp(r) => r.push(bytes),
                    _ => c.dec.push(bytes),
                }
                drained = n < self.scratch.len() && !c.read_to_block;
            }
            match got {
                Ok(0) => {
                    c.eof = true;
                    if let State::Resp(_) = c.state {
                        // Half-closed (`redis-cli --pipe`, `nc`): answer
                        // what came, then close.
                        continue;
                    }
                    let end = match c.dec.finish() {
                        Ok(()) => ConnEnd::Eof,
                        Err(e) => ConnEnd::Wire(e),
                    };
                    return self.close(id, Some(end));
                }
                Ok(n) => {
                    read += n;
                    c.last_read = Instant::now();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // All read: an idle connection keeps no buffer.
                    match &mut c.state {
                        State::Resp(r) => r.release_if_empty(),
                        _ => c.dec.release_if_empty(),
                    }
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return self.close(id, Some(ConnEnd::Io(e))),
            }
        }
    }

    /// Takes the frames (or commands) `id` has buffered. `Ok(true)`: read
    /// more; `Ok(false)`: not now (budget spent, requests in flight at the
    /// cap, or a handshake that waits for our bytes).
    fn decode(&mut self, id: ConnId, inputs: &mut Vec<Input>, budget: &mut usize) -> Result<bool, ConnEnd> {
        let me = self.me;
        let Some(c) = self.conns.get_mut(&id) else { return Ok(false) };
        match &mut c.state {
            State::Closing | State::Connecting { .. } => Ok(false),
            State::Accepting(shake) => {
                let done = shake.step(
                    &self.accepting,
                    &mut self.admission,
                    id,
                    &c.peer_addr,
                    &mut c.dec,
                    &mut c.out,
                );
                self.dirty.insert(id);
                match done {
                    Ok(None) => Ok(true),
                    Ok(Some(hello)) => {
                        self.handshaking.retain(|h| *h != id);
                        self.opened(id, hello.from, false, hello.observer);
                        Ok(true)
                    }
                    Err(end) => {
                        self.handshaking.retain(|h| *h != id);
                        if let Some(c) = self.conns.get_mut(&id) {
                            c.state = State::Closing;
                        }
                        self.write_out(id);
                        Err(end)
                    }
                }
            }
            State::Dialing { shake, .. } => match shake.step(&mut c.dec, &mut c.out)? {
                None => {
                    self.dirty.insert(id);
                    Ok(true)
                }
                Some(hello) => {
                    self.dirty.insert(id);
                    self.opened(id, hello.from, true, false);
                    Ok(true)
                }
            },
            State::Resp(r) => {
                let pumped = r.pump(inputs, budget, c.eof);
                self.dirty.insert(id);
                match pumped {
                    Pumped::NeedBytes => Ok(!c.eof),
                    Pumped::Budget => {
                        self.readable.insert(id);
                        Ok(false)
                    }
                    Pumped::Blocked => {
                        self.resp_waiting.insert(id);
                        Ok(false)
                    }
                    Pumped::Done => Ok(false),
                }
            }
            State::Open(o) => {
                loop {
                    let client = matches!(o.peer, NodeId::Client(_));
                    if client {
                        if *budget == 0 {
                            self.readable.insert(id);
                            return Ok(false);
                        }
                        if let Some(f) = &mut o.in_flight {
                            let now = Instant::now();
                            f.retain(|_, at| now.duration_since(*at) < net::IN_FLIGHT_EXPIRY);
                            if f.len() >= net::MAX_IN_FLIGHT_PER_CLIENT {
                                // Read again when an answer goes out (or at
                                // the sweep, for the expiry).
                                return Ok(false);
                            }
                        }
                    }
                    let Some(frame) = c.dec.next_frame().map_err(ConnEnd::Wire)? else { return Ok(true) };
                    let allowed = if o.observer {
                        wire::observer_accepts(&frame)
                    } else {
                        wire::accepts(me, o.peer, &frame)
                    };
                    if !allowed {
                        let what = match &frame {
                            Frame::Msg(m) => m.kind(),
                            Frame::Cluster(_) => "Cluster",
                        };
                        let who = if o.observer { "an observer".to_string() } else { o.peer.to_string() };
                        return Err(ConnEnd::Wire(WireError::Invalid(format!(
                            "{who} may not send {what} to {me}"
                        ))));
                    }
                    if client {
                        *budget -= 1;
                        if let (Some(f), Frame::Msg(Msg::Request { id: req, .. })) =
                            (&mut o.in_flight, &frame)
                        {
                            f.insert(req.seq, Instant::now());
                        }
                    }
                    inputs.push(Input::Frame { conn: id, from: o.peer, frame });
                }
            }
        }
    }

    /// A handshake finished: the connection carries frames from now on.
    fn opened(&mut self, id: ConnId, peer: NodeId, dialed: bool, observer: bool) {
        let Some(c) = self.conns.get_mut(&id) else { return };
        let idle = match peer {
            NodeId::Client(_) => Some(self.accepting.client_idle),
            NodeId::Balancer if !observer && !dialed => Some(net::BALANCER_SILENCE_TIMEOUT),
            _ => None,
        };
        let in_flight = matches!(peer, NodeId::Client(_)).then(BTreeMap::new);
        c.state = State::Open(Open { peer, dialed, observer, idle, in_flight });
        c.last_read = Instant::now();
        if dialed {
            let d = self.dials.get_mut(&peer);
            if let Some(d) = d {
                if d.spec.loud && d.last_failure.is_some() {
                    warn!(node = %self.me, "connected to {peer} at {} (reachable again)", d.spec.addr);
                } else {
                    info!(node = %self.me, "connected to {peer} at {}", d.spec.addr);
                }
                d.last_failure = None;
                d.backoff = net::REDIAL_MIN;
            }
        } else {
            debug!(
                node = %self.me,
                "connection {id} from {peer}{} at {}",
                if observer { " (observer)" } else { "" },
                c.peer_addr
            );
        }
        if !observer {
            let replace = match self.routes.get(&peer).and_then(|r| self.conns.get(r)) {
                Some(Conn { state: State::Open(current), .. }) => dialed || !current.dialed,
                _ => true,
            };
            if replace {
                self.routes.insert(peer, id);
            }
        }
    }

    /// RESP connections that stopped for their requests or replies: those
    /// that can go on take commands again.
    fn resume_resp(&mut self, inputs: &mut Vec<Input>) {
        let waiting: Vec<ConnId> = self.resp_waiting.iter().copied().collect();
        for id in waiting {
            let go = matches!(self.conns.get(&id).map(|c| &c.state), Some(State::Resp(r)) if r.can_go());
            if go {
                self.resp_waiting.remove(&id);
                let mut budget = MIN_CLIENT_SHARE;
                self.read_conn(id, inputs, &mut budget);
            } else if !self.conns.contains_key(&id) {
                self.resp_waiting.remove(&id);
            }
        }
    }

    /// Unauthenticated RESP connections may hold a quarter of the
    /// connection limit: native handshakes may hold half, so clients that
    /// proved themselves always have a quarter left.
    fn max_unauthed_resp(&self) -> usize {
        (self.limit / 4).max(1)
    }

    /// Counts a new RESP connection among those that have not sent AUTH;
    /// past [`Net::max_unauthed_resp`] the oldest of them is closed, so a
    /// flood of silent connections cannot lock clients out (each newcomer
    /// gets as long as the flood takes to fill the quota to send AUTH).
    fn admit_unauthed_resp(&mut self, conn: ConnId) {
        let conns = &self.conns;
        self.resp_unauthed
            .retain(|id| matches!(conns.get(id), Some(Conn { state: State::Resp(r), .. }) if !r.authed()));
        if self.resp_unauthed.len() >= self.max_unauthed_resp() {
            if let Some(old) = self.resp_unauthed.pop_front() {
                if self.throttle.allow(self.me) {
                    let from = self.conns.get(&old).map(|c| c.peer_addr.clone()).unwrap_or_default();
                    warn!(
                        node = %self.me,
                        "closing the RESP connection from {from}: {} RESP connections have not sent AUTH \
                         (limit); the oldest makes room for a new one",
                        self.max_unauthed_resp()
                    );
                }
                self.close(
                    old,
                    Some(ConnEnd::Refused("no AUTH before newer connections needed the room".into())),
                );
            }
        }
        self.resp_unauthed.push_back(conn);
    }

    // ---- timers ----

    /// Closes handshakes past their deadline and connections idle too long;
    /// reads again clients whose in-flight requests expired.
    fn sweep(&mut self, now: Instant) {
        self.next_sweep = now + SWEEP_EVERY;
        let mut ends = Vec::new();
        for (id, c) in &self.conns {
            let end = match &c.state {
                State::Accepting(_) | State::Dialing { .. } | State::Closing
                    if now.duration_since(c.since) >= net::HELLO_TIMEOUT =>
                {
                    Some(ConnEnd::Refused(format!("no handshake within {:?}", net::HELLO_TIMEOUT)))
                }
                State::Connecting { .. } if now.duration_since(c.since) >= net::CONNECT_TIMEOUT => {
                    Some(ConnEnd::Io(io::Error::new(io::ErrorKind::TimedOut, "connection timed out")))
                }
                State::Open(o)
                    if !matches!(o.peer, NodeId::Client(_))
                        && c.progress.is_some_and(|p| now.duration_since(p) >= PEER_STALL) =>
                {
                    Some(ConnEnd::Io(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("took none of {} bytes for {PEER_STALL:?}", c.out.len()),
                    )))
                }
                // Idle: nothing received, nothing held back unread, nothing
                // in flight.
                State::Open(Open { idle: Some(idle), in_flight, .. })
                    if now.duration_since(c.last_read) >= *idle
                        && !self.readable.contains(id)
                        && in_flight.as_ref().is_none_or(BTreeMap::is_empty) =>
                {
                    Some(ConnEnd::Idle(*idle))
                }
                State::Resp(_)
                    if now.duration_since(c.last_read) >= self.accepting.client_idle
                        && !self.readable.contains(id)
                        && !self.resp_waiting.contains(id) =>
                {
                    Some(ConnEnd::Idle(self.accepting.client_idle))
                }
                _ => None,
            };
            if let Some(end) = end {
                ends.push((*id, end));
            } else if let State::Open(Open { in_flight: Some(f), .. }) = &c.state {
                if f.len() >= net::MAX_IN_FLIGHT_PER_CLIENT {
                    self.readable.insert(*id);
                }
            }
        }
        for (id, end) in ends {
            self.close(id, Some(end));
        }
    }

    // ---- closing ----

    /// Drops connection `id` (`why`: for the log).
    fn close(&mut self, id: ConnId, why: Option<ConnEnd>) {
        let Some(mut c) = self.conns.remove(&id) else { return };
        let _ = self.poll.registry().deregister(&mut c.stream);
        let _ = c.stream.shutdown(std::net::Shutdown::Both);
        if c.accepted {
            net::close_one();
        }
        self.backlog -= c.backlog;
        self.readable.remove(&id);
        self.dirty.remove(&id);
        self.resp_waiting.remove(&id);
        self.congested.remove(&id);
        self.handshaking.retain(|h| *h != id);
        let peer = c.peer();
        let me = self.me;
        let throttle = &mut self.throttle;
        let mut log = |end: &ConnEnd, who: &str| {
            if end.is_violation() {
                if throttle.allow(me) {
                    warn!(node = %me, "closing connection {who}: {end}");
                }
            } else if matches!(end, ConnEnd::Idle(_)) || peer == Some(NodeId::Balancer) {
                info!(node = %me, "closing connection {who}: {end}");
            } else {
                debug!(node = %me, "connection {who} ended: {end}");
            }
        };
        match &c.state {
            State::Connecting { peer, .. } | State::Dialing { peer, .. } => {
                let end = why.unwrap_or(ConnEnd::Eof);
                self.dial_failed(*peer, &end);
            }
            State::Open(o) => {
                if let Some(end) = &why {
                    if o.dialed {
                        if end.is_violation() {
                            warn!(node = %me, "closing connection to {} at {}: {end}", o.peer, c.peer_addr);
                        } else {
                            info!(node = %me, "lost {} at {}: {end}", o.peer, c.peer_addr);
                        }
                    } else {
                        log(end, &format!("from {} at {}", o.peer, c.peer_addr));
                    }
                }
                if o.dialed {
                    if let Some(d) = self.dials.get_mut(&o.peer) {
                        d.conn = None;
                        d.next_attempt = Instant::now() + d.backoff;
                    }
                }
                if !o.observer {
                    self.admission.release(o.peer, id);
                }
            }
            State::Accepting(_) | State::Closing => {
                if let Some(end) = &why {
                    if end.is_violation() {
                        if self.throttle.allow(me) {
                            warn!(node = %me, "refused connection from {}: {end}", c.peer_addr);
                        }
                    } else {
                        debug!(node = %me, "connection from {} ended in its handshake: {end}", c.peer_addr);
                    }
                }
            }
            State::Resp(_) => {
                if let Some(end) = &why {
                    debug!(node = %me, "RESP connection from {} ended: {end}", c.peer_addr);
                }
                self.routes.retain(|_, r| *r != id);
            }
        }
        if let Some(peer) = peer {
            if self.routes.get(&peer) == Some(&id) {
                self.routes.remove(&peer);
                let other = self
                    .conns
                    .iter()
                    .filter_map(|(cid, o)| match &o.state {
                        State::Open(op) if op.peer == peer && !op.observer => Some((op.dialed, *cid)),
                        _ => None,
                    })
                    .max()
                    .map(|(_, cid)| cid);
                if let Some(other) = other {
                    self.routes.insert(peer, other);
                }
            }
        }
    }

    /// Closes every connection (the node is stopping).
    pub fn close_all(&mut self) {
        let ids: Vec<ConnId> = self.conns.keys().copied().collect();
        for id in ids {
            self.close(id, None);
        }
        self.dials.clear();
    }

    // ---- sending ----

    /// Queues `frame` for `to`; dropped (like a lost packet) when `to` is not
    /// connected. The machines retry what matters.
    pub fn send(&mut self, to: NodeId, frame: Frame) {
        let Some(&id) = self.routes.get(&to) else {
            debug!(node = %self.me, "no connection to {to}; dropping {}", describe(&frame));
            return;
        };
        self.send_on(id, to, frame);
    }

    /// Queues `frame` for `to` on connection `id` (where `to` sent the frame
    /// this answers), or by route if that connection is gone.
    pub fn send_on(&mut self, id: ConnId, to: NodeId, frame: Frame) {
        let Some(c) = self.conns.get_mut(&id) else {
            return self.send(to, frame);
        };
        match &mut c.state {
            State::Resp(r) => {
                if let Frame::Msg(Msg::Response { id: req, result, .. }) = frame {
                    r.replies.on_response(req, result);
                    self.dirty.insert(id);
                }
            }
            State::Open(o) => {
                let before = c.out.len();
                if let Err(e) = wire::encode_frame(&frame, wire::limit_for(to), &mut c.out) {
                    warn!(node = %self.me, "not sending {} to {to}: {e}", describe(&frame));
                    return;
                }
                c.big = c.big.max(c.out.len() - before);
                if let (Some(f), Frame::Msg(Msg::Response { id: req, .. })) = (&mut o.in_flight, &frame) {
                    if f.remove(&req.seq).is_some() && f.len() + 1 == net::MAX_IN_FLIGHT_PER_CLIENT {
                        // It stopped reading at the cap: read it again.
                        self.readable.insert(id);
                    }
                }
                if c.out.len() >= FLUSH_BYTES {
                    self.write_out(id);
                } else {
                    self.dirty.insert(id);
                }
            }
            _ => {}
        }
    }

    /// A RESP command's item: its reply's place in the connection's order.
    pub fn resp_item(&mut self, conn: ConnId, item: Item) {
        if let Some(Conn { state: State::Resp(r), .. }) = self.conns.get_mut(&conn) {
            r.replies.push(item);
            self.dirty.insert(conn);
        }
    }

    /// A RESP connection's requests come from several client ids (its
    /// lanes): answers to each go back on it.
    pub fn note_resp_peer(&mut self, conn: ConnId, from: NodeId) {
        if self.routes.get(&from) != Some(&conn)
            && matches!(self.conns.get(&conn).map(|c| &c.state), Some(State::Resp(_)))
        {
            self.routes.insert(from, conn);
        }
    }

    /// Whether a RESP reply waits for the cluster view (see `info`).
    pub fn wants_info(&self) -> bool {
        self.dirty.iter().any(|id| matches!(self.conns.get(id).map(|c| &c.state), Some(State::Resp(r)) if r.replies.wants_info()))
    }

    /// Writes every buffered frame (what a peer does not take now stays
    /// buffered until its socket is writable again).
    pub fn flush(&mut self) {
        let dirty = std::mem::take(&mut self.dirty);
        for id in dirty {
            if let Some(Conn { state: State::Resp(r), out, .. }) = self.conns.get_mut(&id) {
                r.replies.pump(self.info.as_ref(), out);
                if r.replies.wants_info() && self.info.is_none() {
                    // Flushed without a view (a WAIT): try again soon.
                    self.dirty.insert(id);
                }
                if r.can_go() && self.resp_waiting.contains(&id) {
                    self.readable.insert(id);
                }
            }
            self.write_out(id);
            if let Some(c) = self.conns.get(&id) {
                let done = match &c.state {
                    State::Resp(r) => r.replies.closing,
                    State::Closing => true,
                    _ => false,
                };
                if done && c.out.is_empty() {
                    self.close(id, None);
                }
            }
        }
        self.info = None;
    }

    /// Whether replies wait for a cluster view (a WAIT) the next flush must
    /// bring: the loop then comes back soon.
    pub fn has_dirty(&self) -> bool {
        !self.dirty.is_empty()
    }

    fn write_out(&mut self, id: ConnId) {
        let Some(c) = self.conns.get_mut(&id) else { return };
        if c.out.is_empty() || matches!(c.state, State::Connecting { .. }) {
            return;
        }
        let mut sent = 0;
        let mut failed = None;
        while sent < c.out.len() {
            match c.stream.write(&c.out[sent..]) {
                Ok(0) => {
                    failed = Some(io::Error::new(io::ErrorKind::WriteZero, "wrote nothing"));
                    break;
                }
                Ok(n) => sent += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        c.out.drain(..sent);
        c.progress = match (c.out.is_empty(), c.progress) {
            (true, _) => None,
            (false, None) => Some(Instant::now()),
            (false, Some(_)) if sent > 0 => Some(Instant::now()),
            (false, p) => p,
        };
        if let Some(e) = failed {
            if !matches!(c.state, State::Closing) {
                info!(node = %self.me, "dropping connection to {}: write failed: {e}", c.peer_addr);
            }
            return self.close(id, Some(ConnEnd::Io(e)));
        }
        if c.out.len() < CONGESTED_BYTES {
            self.congested.remove(&id);
        } else if !c.is_client() {
            self.congested.insert(id);
        }
        if c.out.is_empty() {
            self.backlog -= c.backlog;
            c.backlog = 0;
            c.big = 0;
            if c.out.capacity() > 4 * FLUSH_BYTES {
                c.out = Vec::new();
            }
            return;
        }
        // The rest waits for the socket's next writable edge.
        if c.is_client() {
            let held = c.out.capacity();
            self.backlog = self.backlog - c.backlog + held;
            c.backlog = held;
            if c.out.len() > MAX_CLIENT_BACKLOG {
                let who = c.peer().map(|p| p.to_string()).unwrap_or_default();
                info!(
                    node = %self.me,
                    "dropping connection to {who}: it does not read its replies ({} bytes waiting)",
                    c.out.len()
                );
                return self.close(id, None);
            }
            if self.backlog > MAX_CLIENT_BACKLOG_TOTAL {
                self.shed_backlog();
            }
        } else if c.out.len() > MAX_PEER_BACKLOG.saturating_add(c.big) {
            let who = c.peer().map(|p| p.to_string()).unwrap_or_default();
            info!(node = %self.me, "dropping connection to {who}: it does not read ({} bytes waiting)", c.out.len());
            self.close(id, Some(ConnEnd::Io(io::Error::new(io::ErrorKind::TimedOut, "peer does not read"))));
        }
    }

    /// Drops the clients with the most replies waiting until all of them
    /// together hold at most [`MAX_CLIENT_BACKLOG_TOTAL`].
    fn shed_backlog(&mut self) {
        while self.backlog > MAX_CLIENT_BACKLOG_TOTAL {
            let Some((&id, c)) =
                self.conns.iter().filter(|(_, c)| c.backlog > 0).max_by_key(|(_, c)| c.backlog)
            else {
                return;
            };
            info!(
                node = %self.me,
                "dropping connection to {}: it does not read its replies ({} bytes waiting; {} for all clients)",
                c.peer().map(|p| p.to_string()).unwrap_or_default(),
                c.out.len(),
                self.backlog
            );
            self.close(id, None);
        }
    }

    /// Connections open now, and how many are in their handshake.
    pub fn counts(&self) -> (usize, usize) {
        (self.conns.len(), self.handshaking.len())
    }
}

fn describe(frame: &Frame) -> &'static str {
    match frame {
        Frame::Msg(m) => m.kind(),
        Frame::Cluster(_) => "Cluster",
    }
}
