//! Sockets and the threads that read them: the acceptor, one reader thread
//! per accepted connection, and one dialer thread per outgoing peer (which
//! reads its own connection). Every thread turns bytes into [`Input`]s for
//! its node and never touches the machine.
//!
//! Every connection starts with the authenticated handshake (layout in
//! `wire.rs`): hellos with fresh nonces, then HMAC-SHA256 proofs of the
//! connection's key, the dialer's cluster configuration, and the acceptor's
//! verdict. The acceptor admits a peer only after its proof: one balancer
//! at a time per replica, one live connection per client id, a bounded
//! number of connections (and of handshakes in progress) per process.
//!
//! Writing is the node thread's job (see `node.rs`): it owns the write half of
//! every connection, so replies leave in the order the machine produced them.
//! Frames from clients reach the node on a channel of their own, which the
//! node drains only after the cluster's ([`Inputs`]), and each client
//! connection has at most [`MAX_IN_FLIGHT_PER_CLIENT`] requests in flight.

use super::auth::{self, Keys};
use crate::config::ClusterConfig;
use crate::msg::Msg;
use crate::types::NodeId;
use crate::wire::{self, Auth, Frame, FrameDecoder, Hello, Side, WireError};
use crossbeam_channel::{Receiver, RecvTimeoutError, Select, Sender, TryRecvError};
use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::io::{self, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

/// A peer that has not finished the handshake by then is dropped.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// A peer that takes no bytes for this long is dropped (and re-dialed): the
/// node thread writes to cluster peers itself, so this bounds how long one
/// stalled reader can hold up the whole node. Well below the balancer's
/// 200 ms dead-after, so a stalled follower never makes a healthy leader
/// look dead. (Writes to clients never wait: see `node.rs`.)
pub const WRITE_TIMEOUT: Duration = Duration::from_millis(50);
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Reconnection backoff of a dialer, doubling from the first to the second.
pub const REDIAL_MIN: Duration = Duration::from_millis(20);
pub const REDIAL_MAX: Duration = Duration::from_millis(500);
/// A client connection that sends nothing for this long after its hello is
/// closed (the default; `kvnode balancer --client-idle-timeout`).
pub const CLIENT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// A balancer connection a replica hears nothing on for this long is closed
/// (the balancer pings every 50 ms), so a balancer that vanished without a
/// goodbye does not keep the balancer's place at that replica.
pub const BALANCER_SILENCE_TIMEOUT: Duration = Duration::from_secs(2);
/// Requests one client connection may have in flight (sent and not yet
/// answered); its reader stops reading beyond that, so TCP pushes back.
/// `kvnode`'s own clients have one.
pub const MAX_IN_FLIGHT_PER_CLIENT: usize = 16;
/// A request never answered stops counting as in flight after this long
/// (the balancer answers or times out every request within its 1 s request
/// timeout; a duplicate may never be answered).
pub const IN_FLIGHT_EXPIRY: Duration = Duration::from_secs(5);
/// Bytes of client frames queued for a node at most (all connections
/// together); readers wait beyond that.
pub const MAX_QUEUED_CLIENT_BYTES: usize = 32 << 20;
/// Inputs queued for a node at most: cluster peers' frames and events, and
/// clients' frames. Readers wait beyond that (and TCP pushes back).
pub const CLUSTER_QUEUE: usize = 65_536;
pub const CLIENT_QUEUE: usize = 16_384;
/// Reader threads only decode frames; they need little stack.
const READER_STACK_BYTES: usize = 256 * 1024;
/// Refused or closed connections logged per second at most per node (an
/// attacker's connection flood must not become a log flood).
const REFUSALS_LOGGED_PER_SECOND: u32 = 50;

pub type ConnId = u64;

static NEXT_CONN: AtomicU64 = AtomicU64::new(1);

fn next_conn() -> ConnId {
    NEXT_CONN.fetch_add(1, Ordering::Relaxed)
}

/// A fresh connection number (for the RESP port's connections).
pub fn new_conn_id() -> ConnId {
    next_conn()
}

/// Counts one more accepted connection, unless `limit` are open already.
pub fn open_one(limit: usize) -> bool {
    OPEN.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| (n < limit).then_some(n + 1)).is_ok()
}

/// An accepted connection counted by [`open_one`] ended.
pub fn close_one() {
    OPEN.fetch_sub(1, Ordering::SeqCst);
}

/// What the network threads (and the signal handler) tell a node thread.
pub enum Input {
    /// A connection finished its handshake. The node only writes to
    /// `stream`; its reader thread only reads (one socket, shared).
    Connected {
        conn: ConnId,
        peer: NodeId,
        stream: Arc<TcpStream>,
        dialed: bool,
        /// A balancer that only looks: never a route for the machine's sends.
        observer: bool,
        /// A client connection's requests in flight.
        in_flight: Option<Arc<InFlight>>,
    },
    /// A frame that passed [`wire::accepts`]. `bytes`: its size, for a
    /// client's frame (returned to the queue's byte budget once handled).
    Frame { conn: ConnId, from: NodeId, frame: Frame, bytes: usize },
    /// A RESP connection to the balancer (see `resp`): its replies are
    /// made by `replies`, not framed.
    RespConnected { conn: ConnId, peer: NodeId, stream: Arc<TcpStream>, replies: Box<super::resp::Replies> },
    /// How a RESP command's reply is made (sent before its requests).
    Resp { conn: ConnId, item: super::resp::Item },
    /// The reader of `conn` stopped; the node drops it.
    Closed { conn: ConnId },
    /// Stop accepting, finish or fail what is in flight, flush, and return.
    Shutdown,
}

/// The sending ends of a node's input channels.
#[derive(Clone)]
pub struct Inbox {
    pub cluster: Sender<Input>,
    pub clients: Sender<Input>,
    client_bytes: Arc<AtomicUsize>,
}

/// The node's ends: the cluster's channel is drained first.
pub struct Inputs {
    cluster: Receiver<Input>,
    clients: Receiver<Input>,
    client_bytes: Arc<AtomicUsize>,
}

/// A node's two input channels.
pub fn inbox() -> (Inbox, Inputs) {
    let (ctx, crx) = crossbeam_channel::bounded(CLUSTER_QUEUE);
    let (ktx, krx) = crossbeam_channel::bounded(CLIENT_QUEUE);
    let bytes = Arc::new(AtomicUsize::new(0));
    (
        Inbox { cluster: ctx, clients: ktx, client_bytes: bytes.clone() },
        Inputs { cluster: crx, clients: krx, client_bytes: bytes },
    )
}

impl Inbox {
    /// The channel for a connection's events and frames with `peer`: a
    /// client's all go to the clients' channel (so they stay in order),
    /// a cluster peer's to the cluster's, except the reads and writes a
    /// balancer forwards for clients (see `read_frames`).
    pub fn for_peer(&self, peer: NodeId) -> &Sender<Input> {
        match peer {
            NodeId::Client(_) => &self.clients,
            _ => &self.cluster,
        }
    }

    /// Waits (at most `patience`) until `bytes` more fit in the client
    /// queue's byte budget, then takes them. False: the node is too slow.
    pub(crate) fn reserve_client_bytes(&self, bytes: usize, patience: Duration) -> bool {
        let end = Instant::now() + patience;
        loop {
            let used = self.client_bytes.load(Ordering::Acquire);
            if used == 0 || used + bytes <= MAX_QUEUED_CLIENT_BYTES {
                self.client_bytes.fetch_add(bytes, Ordering::AcqRel);
                return true;
            }
            if Instant::now() >= end {
                return false;
            }
            thread::sleep(Duration::from_millis(1));
        }
    }
}

impl Inputs {
    /// The next input already queued, the cluster's first.
    pub fn try_recv(&self) -> Option<Input> {
        match self.cluster.try_recv() {
            Ok(i) => return Some(i),
            Err(TryRecvError::Empty | TryRecvError::Disconnected) => {}
        }
        self.clients.try_recv().ok()
    }

    /// The next input already queued from the cluster.
    pub fn try_recv_cluster(&self) -> Option<Input> {
        self.cluster.try_recv().ok()
    }

    /// The next client input already queued.
    pub fn try_recv_clients(&self) -> Option<Input> {
        self.clients.try_recv().ok()
    }

    pub fn is_empty(&self) -> bool {
        self.cluster.is_empty() && self.clients.is_empty()
    }

    /// Waits for an input until `deadline` (forever without one). The
    /// cluster's channel closing (every sender gone) ends the node.
    pub fn recv_deadline(&self, deadline: Option<Instant>) -> Result<Input, RecvTimeoutError> {
        loop {
            match self.cluster.try_recv() {
                Ok(i) => return Ok(i),
                Err(TryRecvError::Disconnected) => return Err(RecvTimeoutError::Disconnected),
                Err(TryRecvError::Empty) => {}
            }
            if let Ok(i) = self.clients.try_recv() {
                return Ok(i);
            }
            // Both senders live in every `Inbox`, so the two channels close
            // together: a ready but closed client channel cannot spin here.
            let mut sel = Select::new();
            sel.recv(&self.cluster);
            sel.recv(&self.clients);
            match deadline {
                Some(d) => {
                    if sel.ready_deadline(d).is_err() {
                        return Err(RecvTimeoutError::Timeout);
                    }
                }
                None => {
                    sel.ready();
                }
            }
        }
    }

    /// A client frame of `bytes` was handled: its budget is free again.
    pub fn release_client_bytes(&self, bytes: usize) {
        if bytes > 0 {
            self.client_bytes.fetch_sub(bytes, Ordering::AcqRel);
        }
    }
}

/// The requests in flight on one client connection, by sequence number.
pub struct InFlight {
    state: Mutex<InFlightState>,
    changed: Condvar,
}

struct InFlightState {
    seqs: BTreeMap<u64, Instant>,
    closed: bool,
    /// The reader waits for a slot (only then is it worth a wake-up, a
    /// system call on the node thread).
    waiting: bool,
}

impl InFlight {
    fn new() -> InFlight {
        InFlight {
            state: Mutex::new(InFlightState { seqs: BTreeMap::new(), closed: false, waiting: false }),
            changed: Condvar::new(),
        }
    }

    /// Counts request `seq` as in flight, waiting while the connection has
    /// [`MAX_IN_FLIGHT_PER_CLIENT`] others. False once the connection closed.
    fn acquire(&self, seq: u64) -> bool {
        let mut s = self.state.lock().expect("in-flight lock");
        loop {
            if s.closed {
                return false;
            }
            let now = Instant::now();
            s.seqs.retain(|_, at| now.duration_since(*at) < IN_FLIGHT_EXPIRY);
            if let Some(at) = s.seqs.get_mut(&seq) {
                *at = now;
                return true;
            }
            if s.seqs.len() < MAX_IN_FLIGHT_PER_CLIENT {
                s.seqs.insert(seq, now);
                return true;
            }
            let oldest = s.seqs.values().min().copied().unwrap_or(now);
            let wait =
                (oldest + IN_FLIGHT_EXPIRY).saturating_duration_since(now).max(Duration::from_millis(1));
            s.waiting = true;
            s = self.changed.wait_timeout(s, wait).expect("in-flight lock").0;
            s.waiting = false;
        }
    }

    /// Request `seq` was answered.
    pub fn release(&self, seq: u64) {
        let mut s = self.state.lock().expect("in-flight lock");
        if s.seqs.remove(&seq).is_some() && s.waiting {
            self.changed.notify_one();
        }
    }

    /// The connection is gone: wake its reader.
    pub fn close(&self) {
        self.state.lock().expect("in-flight lock").closed = true;
        self.changed.notify_all();
    }

    pub fn count(&self) -> usize {
        self.state.lock().expect("in-flight lock").seqs.len()
    }
}

/// Why a connection ended.
pub enum ConnEnd {
    Eof,
    Io(io::Error),
    Wire(WireError),
    Refused(String),
    /// Nothing arrived for this long.
    Idle(Duration),
    /// The node thread is gone (the process is stopping).
    NodeGone,
}

impl ConnEnd {
    /// Protocol violations are worth a warning; hang-ups are routine.
    pub fn is_violation(&self) -> bool {
        matches!(self, ConnEnd::Wire(_) | ConnEnd::Refused(_))
    }
}

impl fmt::Display for ConnEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnEnd::Eof => f.write_str("closed by peer"),
            ConnEnd::Io(e) => write!(f, "{e}"),
            ConnEnd::Wire(e) => write!(f, "{e}"),
            ConnEnd::Refused(why) => f.write_str(why),
            ConnEnd::Idle(d) => write!(f, "idle for {d:?}"),
            ConnEnd::NodeGone => f.write_str("node stopped"),
        }
    }
}

impl fmt::Debug for ConnEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl From<io::Error> for ConnEnd {
    fn from(e: io::Error) -> Self {
        ConnEnd::Io(e)
    }
}
impl From<WireError> for ConnEnd {
    fn from(e: WireError) -> Self {
        ConnEnd::Wire(e)
    }
}

/// Binds `addr`, preferring IPv4 when a name resolves to both (so
/// `localhost:8080` listens where `127.0.0.1:8080` reaches).
pub fn bind(addr: &str) -> io::Result<TcpListener> {
    bind_any(addr).map_err(|e| io::Error::new(e.kind(), format!("cannot listen at {addr}: {e}")))
}

fn bind_any(addr: &str) -> io::Result<TcpListener> {
    let mut addrs: Vec<SocketAddr> = addr.to_socket_addrs()?.collect();
    addrs.sort_by_key(|a| !a.is_ipv4());
    let mut last = io::Error::new(io::ErrorKind::InvalidInput, format!("{addr} resolves to nothing"));
    for a in addrs {
        match TcpListener::bind(a) {
            Ok(l) => return Ok(l),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Connects to the first address of `addr` that answers.
pub fn connect(addr: &str, timeout: Duration) -> io::Result<TcpStream> {
    let mut last = io::Error::new(io::ErrorKind::InvalidInput, format!("{addr} resolves to nothing"));
    for a in addr.to_socket_addrs()? {
        match TcpStream::connect_timeout(&a, timeout) {
            Ok(s) => {
                s.set_nodelay(true)?;
                return Ok(s);
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

pub fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)
}

// ---- the handshake ----

/// Reads from `stream` until `next` yields something, `deadline` passes
/// (an error naming `what`), or the connection ends.
fn read_until<T>(
    stream: &TcpStream,
    dec: &mut FrameDecoder,
    deadline: Instant,
    what: &str,
    mut next: impl FnMut(&mut FrameDecoder) -> Result<Option<T>, WireError>,
) -> Result<T, ConnEnd> {
    loop {
        if let Some(t) = next(dec)? {
            return Ok(t);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ConnEnd::Refused(format!("no {what} within {HELLO_TIMEOUT:?}")));
        }
        stream.set_read_timeout(Some(left))?;
        match dec.fill(&mut &*stream) {
            Ok(0) => {
                dec.finish()?;
                return Err(ConnEnd::Eof);
            }
            Ok(_) => {}
            Err(e) if is_timeout(&e) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
}

fn send_raw(stream: &TcpStream, bytes: &[u8]) -> io::Result<()> {
    stream.set_write_timeout(Some(HELLO_TIMEOUT))?;
    (&*stream).write_all(bytes)
}

fn refuse(stream: &TcpStream, why: &str) {
    let mut buf = Vec::new();
    wire::encode_auth(&Auth::Refused(why.to_string()), &mut buf);
    let _ = stream.set_write_timeout(Some(Duration::from_millis(200)));
    let _ = (&*stream).write_all(&buf);
}

/// What a dialer says about itself and expects.
pub struct DialHello<'a> {
    pub me: NodeId,
    /// The peer it means to reach (refused before any proof otherwise).
    pub expect: Option<NodeId>,
    pub observer: bool,
    pub keys: &'a Keys,
    /// Sent after its proof (a balancer or a replica dialing a replica).
    pub config: Option<&'a ClusterConfig>,
}

/// The dialer's side of the handshake: our hello, theirs, our proof (and
/// configuration), their verdict. Returns their hello; the decoder's limit
/// is then the one for that peer.
pub fn dial_handshake(
    stream: &TcpStream,
    d: &DialHello<'_>,
    dec: &mut FrameDecoder,
    timeout: Duration,
) -> Result<Hello, ConnEnd> {
    let deadline = Instant::now() + timeout;
    let mine = Hello { observer: d.observer, ..Hello::new(d.me, auth::nonce()) };
    let mine_body = wire::hello_body(&mine);
    let mut out = Vec::new();
    wire::encode_hello(&mine, &mut out);
    send_raw(stream, &out)?;
    let (theirs, theirs_body) = read_until(stream, dec, deadline, "hello", FrameDecoder::next_hello_raw)?;
    if let Some(want) = d.expect {
        if theirs.from != want {
            return Err(ConnEnd::Refused(format!("expected {want} but {} answered", theirs.from)));
        }
    }
    let key = d.keys.for_link(d.me, theirs.from);
    out.clear();
    wire::encode_auth(&Auth::Proof(wire::proof(key, Side::Dialer, &mine_body, &theirs_body)), &mut out);
    if let Some(config) = d.config {
        wire::encode_frame(&Frame::Cluster(config.clone()), wire::MAX_CLUSTER_FRAME_BYTES, &mut out)?;
    }
    send_raw(stream, &out)?;
    match read_until(stream, dec, deadline, "answer to our proof", FrameDecoder::next_auth)? {
        Auth::Refused(why) => Err(ConnEnd::Refused(format!("{} refused the connection: {why}", theirs.from))),
        Auth::Proof(mac) => {
            if !wire::verify_proof(key, Side::Acceptor, &mine_body, &theirs_body, &mac) {
                return Err(ConnEnd::Refused(format!(
                    "{} did not prove it knows our {} (it has another one, or none)",
                    theirs.from,
                    Keys::name_for_link(d.me, theirs.from)
                )));
            }
            stream.set_read_timeout(None)?;
            dec.set_limit(wire::limit_for(theirs.from));
            Ok(theirs)
        }
    }
}

/// Whether a peer may connect at all (its role, its replica number); the
/// reason when not.
pub type Allowed = Arc<dyn Fn(&Hello) -> Result<(), String> + Send + Sync>;

/// What an acceptor knows about itself and who may connect.
#[derive(Clone)]
pub struct Accepting {
    pub me: NodeId,
    pub inbox: Inbox,
    /// Set by the node when it starts shutting down.
    pub stopping: Arc<AtomicBool>,
    /// Whether a peer may connect at all (its role, its replica number);
    /// the reason when not.
    pub allowed: Allowed,
    pub keys: Keys,
    /// The configuration a dialing balancer or replica must present (a
    /// replica's own); `None` at the balancer (only clients dial it).
    pub config: Option<ClusterConfig>,
    /// How long a client may stay silent after its hello.
    pub client_idle: Duration,
    admission: Arc<Admission>,
    throttle: Arc<Throttle>,
}

impl Accepting {
    pub fn new(
        me: NodeId,
        inbox: Inbox,
        stopping: Arc<AtomicBool>,
        allowed: Allowed,
        keys: Keys,
        config: Option<ClusterConfig>,
        client_idle: Duration,
    ) -> Accepting {
        Accepting {
            me,
            inbox,
            stopping,
            allowed,
            keys,
            config,
            client_idle,
            admission: Arc::new(Admission::default()),
            throttle: Arc::new(Throttle::default()),
        }
    }
}

/// The acceptor's side: our hello, theirs, their proof (and configuration),
/// the admission checks, our proof or the reason we refuse.
fn accept_handshake(
    stream: &TcpStream,
    a: &Accepting,
    conn: ConnId,
    stage: &AtomicU8,
    peer_addr: &str,
    dec: &mut FrameDecoder,
) -> Result<Hello, ConnEnd> {
    let deadline = Instant::now() + HELLO_TIMEOUT;
    let mine = Hello::new(a.me, auth::nonce());
    let mine_body = wire::hello_body(&mine);
    let mut out = Vec::new();
    wire::encode_hello(&mine, &mut out);
    send_raw(stream, &out)?;
    let (theirs, theirs_body) = read_until(stream, dec, deadline, "hello", FrameDecoder::next_hello_raw)?;
    stage.store(1, Ordering::SeqCst);
    let who = theirs.from;
    let refused = |why: String| {
        refuse(stream, &why);
        ConnEnd::Refused(why)
    };
    if let Err(why) = (a.allowed)(&theirs) {
        return Err(refused(why));
    }
    if theirs.observer && who != NodeId::Balancer {
        return Err(refused(format!("{who} may not observe")));
    }
    let key = a.keys.for_link(a.me, who);
    let proof = match read_until(stream, dec, deadline, "proof", FrameDecoder::next_auth)? {
        Auth::Proof(mac) => mac,
        Auth::Refused(why) => return Err(ConnEnd::Refused(format!("{who} gave up: {why}"))),
    };
    if !wire::verify_proof(key, Side::Dialer, &theirs_body, &mine_body, &proof) {
        refuse(stream, "authentication failed");
        return Err(ConnEnd::Refused(format!(
            "authentication failed: {who} does not know this node's {}",
            Keys::name_for_link(a.me, who)
        )));
    }
    stage.store(2, Ordering::SeqCst);
    let node_link = !theirs.observer && matches!(who, NodeId::Balancer | NodeId::Replica(_));
    if let (true, Some(mine)) = (node_link, &a.config) {
        dec.set_limit(wire::MAX_CLUSTER_FRAME_BYTES);
        let frame = read_until(stream, dec, deadline, "cluster configuration", FrameDecoder::next_frame)?;
        let Frame::Cluster(theirs) = frame else {
            return Err(refused(format!("{who} sent no cluster configuration")));
        };
        if &theirs != mine {
            return Err(refused(format!(
                "cluster configuration differs: {who} has {}, {} has {}",
                describe_config(&theirs),
                a.me,
                describe_config(mine)
            )));
        }
    }
    if !theirs.observer {
        if let Err(why) = a.admission.admit(who, conn, peer_addr) {
            return Err(refused(why));
        }
    }
    out.clear();
    wire::encode_auth(&Auth::Proof(wire::proof(key, Side::Acceptor, &theirs_body, &mine_body)), &mut out);
    if let Err(e) = send_raw(stream, &out) {
        a.admission.release(who, conn);
        return Err(e.into());
    }
    Ok(theirs)
}

/// One line for a cluster configuration, to compare two in a log line.
pub fn describe_config(c: &ClusterConfig) -> String {
    let mut s = format!("{} replicas, sync_acks {}", c.replicas.len(), c.sync_acks);
    if c.unsafe_failover {
        s.push_str(", unsafe_failover");
    }
    let defaults = ClusterConfig::new(c.replicas.len() as u8, c.sync_acks);
    if c.log_rows_max != defaults.log_rows_max || c.timing != defaults.timing {
        s.push_str(&format!(", log_rows_max {}, timing {:?}", c.log_rows_max, c.timing));
    }
    s
}

/// Roles with one live connection at a time per node: the balancer at a
/// replica, each client id at the balancer.
#[derive(Default)]
struct Admission {
    live: Mutex<BTreeMap<NodeId, (ConnId, String, Instant)>>,
}

impl Admission {
    fn admit(&self, peer: NodeId, conn: ConnId, addr: &str) -> Result<(), String> {
        if !matches!(peer, NodeId::Balancer | NodeId::Client(_)) {
            return Ok(());
        }
        let mut live = self.live.lock().expect("admission lock");
        if let Some((_, at, since)) = live.get(&peer) {
            let age = since.elapsed().as_secs();
            return Err(match peer {
                NodeId::Balancer => format!(
                    "another balancer is connected (from {at}, for {age} s); \
                     a cluster has one balancer: stop the other one first"
                ),
                _ => format!("{peer} is already connected (from {at}): a client id is used by one connection at a time"),
            });
        }
        live.insert(peer, (conn, addr.to_string(), Instant::now()));
        Ok(())
    }

    fn release(&self, peer: NodeId, conn: ConnId) {
        let mut live = self.live.lock().expect("admission lock");
        if live.get(&peer).is_some_and(|(c, _, _)| *c == conn) {
            live.remove(&peer);
        }
    }
}

/// Rate limit for the log lines about refused and closed connections.
#[derive(Default)]
struct Throttle {
    state: Mutex<(Option<Instant>, u32, u64)>,
}

impl Throttle {
    /// Whether to log one more line now; reports lines left out before.
    fn allow(&self, me: NodeId) -> bool {
        let mut s = self.state.lock().expect("throttle lock");
        let now = Instant::now();
        if s.0.is_none_or(|at| now.duration_since(at) >= Duration::from_secs(1)) {
            if s.2 > 0 {
                warn!(node = %me, "{} more refused or closed connections were not logged", s.2);
            }
            *s = (Some(now), 0, 0);
        }
        if s.1 < REFUSALS_LOGGED_PER_SECOND {
            s.1 += 1;
            true
        } else {
            s.2 += 1;
            false
        }
    }
}

// ---- reading ----

/// What a reader thread needs besides its socket.
struct Reader<'a> {
    me: NodeId,
    from: NodeId,
    conn: ConnId,
    observer: bool,
    inbox: &'a Inbox,
    /// Nothing received for this long closes the connection.
    idle: Option<Duration>,
    in_flight: Option<Arc<InFlight>>,
}

/// Reads frames until the connection ends, handing each to the node.
fn read_frames(stream: &TcpStream, dec: &mut FrameDecoder, r: &Reader<'_>) -> ConnEnd {
    let client = matches!(r.from, NodeId::Client(_));
    if let Err(e) = stream.set_read_timeout(r.idle) {
        return e.into();
    }
    loop {
        loop {
            let before = dec.buffered();
            match dec.next_frame() {
                Ok(Some(frame)) => {
                    let allowed = if r.observer {
                        wire::observer_accepts(&frame)
                    } else {
                        wire::accepts(r.me, r.from, &frame)
                    };
                    if !allowed {
                        let what = match &frame {
                            Frame::Msg(m) => m.kind(),
                            Frame::Cluster(_) => "Cluster",
                        };
                        let who = if r.observer { "an observer".to_string() } else { r.from.to_string() };
                        return ConnEnd::Wire(WireError::Invalid(format!(
                            "{who} may not send {what} to {}",
                            r.me
                        )));
                    }
                    let mut bytes = 0;
                    // Clients' requests, and the reads and writes the
                    // balancer forwards for them, wait behind the cluster's
                    // own traffic (pings, promotions, appends, acks). The
                    // machines take reordering between the two.
                    let forwarded = r.from == NodeId::Balancer
                        && matches!(frame, Frame::Msg(Msg::Write { .. } | Msg::Read { .. }));
                    let tx = if client || forwarded { &r.inbox.clients } else { &r.inbox.cluster };
                    if client || forwarded {
                        if let (Some(f), Frame::Msg(Msg::Request { id, .. })) = (&r.in_flight, &frame) {
                            if !f.acquire(id.seq) {
                                return ConnEnd::NodeGone;
                            }
                        }
                        bytes = before - dec.buffered();
                        if !r.inbox.reserve_client_bytes(bytes, Duration::from_secs(10)) {
                            return ConnEnd::Refused(
                                "the node is overloaded: its client queue stayed full".into(),
                            );
                        }
                    }
                    if tx.send(Input::Frame { conn: r.conn, from: r.from, frame, bytes }).is_err() {
                        return ConnEnd::NodeGone;
                    }
                }
                Ok(None) => break,
                Err(e) => return ConnEnd::Wire(e),
            }
        }
        match dec.fill(&mut &*stream) {
            Ok(0) => {
                return match dec.finish() {
                    Ok(()) => ConnEnd::Eof,
                    Err(e) => ConnEnd::Wire(e),
                }
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if is_timeout(&e) && r.idle.is_some() => return ConnEnd::Idle(r.idle.expect("checked")),
            Err(e) => return ConnEnd::Io(e),
        }
    }
}

// ---- accepting ----

/// Accepted connections open in this process.
static OPEN: AtomicUsize = AtomicUsize::new(0);
/// Accepted connections still in their handshake, oldest first: at most half
/// of the limit. When that many are waiting, a new connection pushes out one
/// of them ([`pick_evictee`]: silent ones first, then those without a proof,
/// oldest first; a peer with the key finishes in a round trip or two), so
/// strangers who never finish a handshake cannot keep the cluster's own
/// peers out.
static HANDSHAKING: Mutex<VecDeque<Handshaking>> = Mutex::new(VecDeque::new());

/// A connection in its handshake, and how far it got: 0 nothing yet, 1 its
/// hello, 2 its proof (checked). See [`pick_evictee`].
struct Handshaking {
    conn: ConnId,
    stream: Arc<TcpStream>,
    stage: Arc<AtomicU8>,
    since: Instant,
}

/// A peer sends its hello as soon as it connects: one silent for this long
/// is not following the protocol.
const SILENT_AFTER: Duration = Duration::from_millis(50);

/// Accepted connections open in this process now.
pub fn open_connections() -> usize {
    OPEN.load(Ordering::SeqCst)
}

fn handshake_done(conn: ConnId) {
    let mut h = HANDSHAKING.lock().expect("handshake list");
    if let Some(i) = h.iter().position(|x| x.conn == conn) {
        h.remove(i);
    }
}

/// Takes out the connection to push out: the oldest of those silent since
/// they connected (longer than [`SILENT_AFTER`]), else the oldest that has
/// not proved the key, else the oldest. A hello costs a stranger nothing, so
/// it buys no protection over a newcomer whose hello is still on its way;
/// only the proof does.
fn pick_evictee(h: &mut VecDeque<Handshaking>, now: Instant) -> Option<Handshaking> {
    let stage = |x: &Handshaking| x.stage.load(Ordering::SeqCst);
    let i = h
        .iter()
        .position(|x| stage(x) == 0 && now.saturating_duration_since(x.since) >= SILENT_AFTER)
        .or_else(|| h.iter().position(|x| stage(x) < 2))
        .unwrap_or(0);
    h.remove(i)
}

/// Accepts connections until `stopping` is set (the node then makes one last
/// connection to wake it), one reader thread each.
pub fn spawn_acceptor(listener: TcpListener, a: Accepting) -> io::Result<JoinHandle<()>> {
    let limit = auth::connection_limit();
    thread::Builder::new().name(format!("{}-accept", a.me)).spawn(move || {
        for stream in listener.incoming() {
            if a.stopping.load(Ordering::SeqCst) {
                break;
            }
            let stream = match stream {
                Ok(s) => s,
                Err(e) => {
                    // Out of descriptors, say: wait a moment rather than spin.
                    if a.throttle.allow(a.me) {
                        warn!(node = %a.me, "accept failed: {e}");
                    }
                    thread::sleep(Duration::from_millis(10));
                    continue;
                }
            };
            let peer_addr = stream.peer_addr().map(|p| p.to_string()).unwrap_or_default();
            let n = OPEN.load(Ordering::SeqCst);
            if n >= limit {
                if a.throttle.allow(a.me) {
                    warn!(node = %a.me, "refusing connection from {peer_addr}: {n} connections open (limit {limit})");
                }
                continue;
            }
            let stream = Arc::new(stream);
            let conn = next_conn();
            let stage = Arc::new(AtomicU8::new(0));
            {
                let mut h = HANDSHAKING.lock().expect("handshake list");
                if h.len() >= limit / 2 {
                    if let Some(Handshaking { stream: oldest, .. }) = pick_evictee(&mut h, Instant::now()) {
                        if a.throttle.allow(a.me) {
                            let from = oldest.peer_addr().map(|p| p.to_string()).unwrap_or_default();
                            warn!(
                                node = %a.me,
                                "refusing connection from {from}: {} connections are in their handshake (limit); \
                                 the oldest makes room for one from {peer_addr}",
                                limit / 2
                            );
                        }
                        let _ = oldest.shutdown(std::net::Shutdown::Both);
                    }
                }
                h.push_back(Handshaking { conn, stream: stream.clone(), stage: stage.clone(), since: Instant::now() });
            }
            OPEN.fetch_add(1, Ordering::SeqCst);
            let a2 = a.clone();
            let spawned = thread::Builder::new()
                .name(format!("{}-conn", a.me))
                .stack_size(READER_STACK_BYTES)
                .spawn(move || {
                    serve_accepted(stream, conn, &stage, &peer_addr, &a2);
                    OPEN.fetch_sub(1, Ordering::SeqCst);
                });
            if let Err(e) = spawned {
                warn!(node = %a.me, "cannot start a reader thread: {e}");
                handshake_done(conn);
                OPEN.fetch_sub(1, Ordering::SeqCst);
            }
        }
        debug!(node = %a.me, "stopped accepting");
    })
}

fn serve_accepted(stream: Arc<TcpStream>, conn: ConnId, stage: &AtomicU8, peer_addr: &str, a: &Accepting) {
    let mut dec = FrameDecoder::new();
    let hello = stream
        .set_nodelay(true)
        .map_err(ConnEnd::from)
        .and_then(|()| accept_handshake(&stream, a, conn, stage, peer_addr, &mut dec));
    handshake_done(conn);
    let hello = match hello {
        Ok(h) => h,
        Err(end) => {
            if end.is_violation() && a.throttle.allow(a.me) {
                warn!(node = %a.me, "refused connection from {peer_addr}: {end}");
            } else {
                debug!(node = %a.me, "connection from {peer_addr} ended in its handshake: {end}");
            }
            let _ = stream.shutdown(std::net::Shutdown::Both);
            return;
        }
    };
    let peer = hello.from;
    let observer = hello.observer;
    let tx = a.inbox.for_peer(peer);
    let in_flight = matches!(peer, NodeId::Client(_)).then(|| Arc::new(InFlight::new()));
    let idle = match peer {
        NodeId::Client(_) => Some(a.client_idle),
        NodeId::Balancer if !observer => Some(BALANCER_SILENCE_TIMEOUT),
        _ => None,
    };
    // Observers send only pings and small reads.
    dec.set_limit(if observer { wire::MAX_CLIENT_FRAME_BYTES } else { wire::limit_for(peer) });
    let end = (|| -> ConnEnd {
        if let Err(e) = stream.set_write_timeout(Some(WRITE_TIMEOUT)) {
            return e.into();
        }
        debug!(node = %a.me, "connection {conn} from {peer}{} at {peer_addr}", if observer { " (observer)" } else { "" });
        let connected = Input::Connected {
            conn,
            peer,
            stream: stream.clone(),
            dialed: false,
            observer,
            in_flight: in_flight.clone(),
        };
        if tx.send(connected).is_err() {
            return ConnEnd::NodeGone;
        }
        let r = Reader {
            me: a.me,
            from: peer,
            conn,
            observer,
            inbox: &a.inbox,
            idle,
            in_flight: in_flight.clone(),
        };
        read_frames(&stream, &mut dec, &r)
    })();
    if end.is_violation() {
        if a.throttle.allow(a.me) {
            warn!(node = %a.me, "closing connection from {peer} at {peer_addr}: {end}");
        }
    } else if matches!(end, ConnEnd::Idle(_)) || peer == NodeId::Balancer {
        info!(node = %a.me, "closing connection from {peer} at {peer_addr}: {end}");
    } else {
        debug!(node = %a.me, "connection from {peer} at {peer_addr} ended: {end}");
    }
    let _ = stream.shutdown(std::net::Shutdown::Both);
    let _ = tx.send(Input::Closed { conn });
    // Only now may another connection take this one's place: the node has
    // been told of the close before it hears of the successor.
    if !observer {
        a.admission.release(peer, conn);
    }
}

/// Wakes an acceptor blocked in `accept` so it sees `stopping`.
pub fn wake_acceptor(addr: SocketAddr) {
    let mut addr = addr;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let _ = TcpStream::connect_timeout(&addr, Duration::from_millis(200));
}

// ---- dialing ----

/// An outgoing connection kept up by its own thread.
pub struct DialSpec {
    pub me: NodeId,
    pub peer: NodeId,
    pub addr: String,
    pub keys: Keys,
    /// Presented in the handshake (the acceptor refuses one unlike its own).
    pub config: Option<ClusterConfig>,
    pub inbox: Inbox,
    /// Report at warn level (seen at the default log level) that the peer
    /// cannot be reached, once, and when it can again: the balancer's links
    /// to replicas, where a wrong address must not go unnoticed.
    pub loud: bool,
}

/// Dropping the handle stops the dialer at its next reconnection attempt; the
/// node closes a live connection itself.
pub struct Dialer {
    _stop: Sender<()>,
}

pub fn spawn_dialer(spec: DialSpec) -> io::Result<Dialer> {
    let (stop, stop_rx) = crossbeam_channel::bounded(1);
    thread::Builder::new()
        .name(format!("{}-to-{}", spec.me, spec.peer))
        .stack_size(READER_STACK_BYTES)
        .spawn(move || dial_loop(spec, stop_rx))?;
    Ok(Dialer { _stop: stop })
}

fn dial_loop(spec: DialSpec, stop: Receiver<()>) {
    let mut backoff = REDIAL_MIN;
    // The last failure logged: a peer that stays down (routine during a
    // failover) or keeps refusing us is reported once, and again when the
    // reason changes.
    let mut last_failure: Option<String> = None;
    let tx = spec.inbox.for_peer(spec.peer).clone();
    loop {
        match dial_once(&spec, &tx) {
            Ok((stream, mut dec, conn)) => {
                if spec.loud && last_failure.is_some() {
                    warn!(node = %spec.me, "connected to {} at {} (reachable again)", spec.peer, spec.addr);
                } else {
                    info!(node = %spec.me, "connected to {} at {}", spec.peer, spec.addr);
                }
                last_failure = None;
                backoff = REDIAL_MIN;
                let r = Reader {
                    me: spec.me,
                    from: spec.peer,
                    conn,
                    observer: false,
                    inbox: &spec.inbox,
                    idle: None,
                    in_flight: None,
                };
                let end = read_frames(&stream, &mut dec, &r);
                let _ = stream.shutdown(std::net::Shutdown::Both);
                if end.is_violation() {
                    warn!(node = %spec.me, "closing connection to {} at {}: {end}", spec.peer, spec.addr);
                } else {
                    info!(node = %spec.me, "lost {} at {}: {end}", spec.peer, spec.addr);
                }
                if tx.send(Input::Closed { conn }).is_err() {
                    return;
                }
            }
            Err(ConnEnd::NodeGone) => return,
            Err(e) => {
                let text = e.to_string();
                if last_failure.as_deref() != Some(text.as_str()) {
                    if e.is_violation() {
                        warn!(node = %spec.me, "cannot use {} at {}: {e}", spec.peer, spec.addr);
                    } else if spec.loud {
                        warn!(node = %spec.me, "cannot reach {} at {}: {e} (trying again)", spec.peer, spec.addr);
                    } else {
                        info!(node = %spec.me, "cannot reach {} at {}: {e}", spec.peer, spec.addr);
                    }
                    last_failure = Some(text);
                }
            }
        }
        match stop.recv_timeout(backoff) {
            Err(RecvTimeoutError::Timeout) => {}
            _ => return,
        }
        backoff = (backoff * 2).min(REDIAL_MAX);
    }
}

fn dial_once(spec: &DialSpec, tx: &Sender<Input>) -> Result<(Arc<TcpStream>, FrameDecoder, ConnId), ConnEnd> {
    let stream = Arc::new(connect(&spec.addr, CONNECT_TIMEOUT)?);
    let mut dec = FrameDecoder::new();
    let hello = DialHello {
        me: spec.me,
        expect: Some(spec.peer),
        observer: false,
        keys: &spec.keys,
        config: spec.config.as_ref(),
    };
    dial_handshake(&stream, &hello, &mut dec, HELLO_TIMEOUT)?;
    stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
    let conn = next_conn();
    let connected = Input::Connected {
        conn,
        peer: spec.peer,
        stream: stream.clone(),
        dialed: true,
        observer: false,
        in_flight: None,
    };
    tx.send(connected).map_err(|_| ConnEnd::NodeGone)?;
    Ok((stream, dec, conn))
}
