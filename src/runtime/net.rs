//! What a node's connections share, whoever drives them: the handshake
//! (as state machines fed bytes as they arrive, so one event loop can run
//! many at once: see `conns.rs`), the admission rules, addresses, limits.
//!
//! Every connection starts with the authenticated handshake (layout in
//! `wire.rs`): hellos with fresh nonces, then HMAC-SHA256 proofs of the
//! connection's key, the dialer's cluster configuration, and the acceptor's
//! verdict. The acceptor admits a peer only after its proof: one balancer
//! at a time per replica, one live connection per client id, a bounded
//! number of connections (and of handshakes in progress) per process.
//!
//! [`dial_handshake`] runs the dialer's machine on a blocking socket, for
//! clients (`kvnode client`, `kvnode bench`, tests) that have a thread each.

use super::auth::{self, Keys};
use crate::config::ClusterConfig;
use crate::types::NodeId;
use crate::wire::{self, Auth, Frame, FrameDecoder, Hello, Side, WireError};
use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::warn;

/// A peer that has not finished the handshake by then is dropped.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a blocking client (`kvnode client`, `bench`) waits for its
/// socket to take a request. Nodes never wait for a socket: what a peer
/// does not take stays buffered, up to a bound (see `conns.rs`).
pub const WRITE_TIMEOUT: Duration = Duration::from_millis(50);
/// A connection attempt that has not completed by then is abandoned.
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
/// answered); the node stops reading that connection beyond that, so TCP
/// pushes back. `kvnode`'s own clients have one.
pub const MAX_IN_FLIGHT_PER_CLIENT: usize = 16;
/// A request never answered stops counting as in flight after this long
/// (the balancer answers or times out every request within its 1 s request
/// timeout; a duplicate may never be answered).
pub const IN_FLIGHT_EXPIRY: Duration = Duration::from_secs(5);
/// Refused or closed connections logged per second at most per node (an
/// attacker's connection flood must not become a log flood).
const REFUSALS_LOGGED_PER_SECOND: u32 = 50;

pub type ConnId = u64;

/// Connection numbers start above the event loop's fixed tokens.
pub const FIRST_CONN: ConnId = 16;
static NEXT_CONN: AtomicU64 = AtomicU64::new(FIRST_CONN);

/// A fresh connection number (unique in the process).
pub fn new_conn_id() -> ConnId {
    NEXT_CONN.fetch_add(1, Ordering::Relaxed)
}

/// Accepted connections open in this process (every node of it together:
/// they share its descriptors).
static OPEN: AtomicUsize = AtomicUsize::new(0);

/// Counts one more accepted connection, unless `limit` are open already.
pub fn open_one(limit: usize) -> bool {
    OPEN.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| (n < limit).then_some(n + 1)).is_ok()
}

/// An accepted connection counted by [`open_one`] ended.
pub fn close_one() {
    OPEN.fetch_sub(1, Ordering::SeqCst);
}

/// Accepted connections open in this process now.
pub fn open_connections() -> usize {
    OPEN.load(Ordering::SeqCst)
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
/// configuration), their verdict. Fed with [`DialShake::step`] as bytes
/// arrive; what to send goes to `out`.
pub struct DialShake {
    me: NodeId,
    expect: Option<NodeId>,
    keys: Keys,
    config: Option<ClusterConfig>,
    mine_body: Vec<u8>,
    /// Their hello, once it came (then our proof is sent).
    theirs: Option<(Hello, Vec<u8>)>,
}

impl DialShake {
    /// Starts a handshake: our hello goes to `out`.
    pub fn start(d: &DialHello<'_>, out: &mut Vec<u8>) -> DialShake {
        let mine = Hello { observer: d.observer, ..Hello::new(d.me, auth::nonce()) };
        wire::encode_hello(&mine, out);
        DialShake {
            me: d.me,
            expect: d.expect,
            keys: d.keys.clone(),
            config: d.config.cloned(),
            mine_body: wire::hello_body(&mine),
            theirs: None,
        }
    }

    /// Takes what `dec` holds; their hello once the handshake is done (the
    /// decoder's limit is then the one for that peer).
    pub fn step(&mut self, dec: &mut FrameDecoder, out: &mut Vec<u8>) -> Result<Option<Hello>, ConnEnd> {
        if self.theirs.is_none() {
            let Some((theirs, theirs_body)) = dec.next_hello_raw()? else { return Ok(None) };
            if let Some(want) = self.expect {
                if theirs.from != want {
                    return Err(ConnEnd::Refused(format!("expected {want} but {} answered", theirs.from)));
                }
            }
            let key = self.keys.for_link(self.me, theirs.from);
            let mac = wire::proof(key, Side::Dialer, &self.mine_body, &theirs_body);
            wire::encode_auth(&Auth::Proof(mac), out);
            if let Some(config) = &self.config {
                wire::encode_frame(&Frame::Cluster(config.clone()), wire::MAX_CLUSTER_FRAME_BYTES, out)?;
            }
            self.theirs = Some((theirs, theirs_body));
        }
        let Some((theirs, theirs_body)) = &self.theirs else { return Ok(None) };
        let Some(verdict) = dec.next_auth()? else { return Ok(None) };
        match verdict {
            Auth::Refused(why) => {
                Err(ConnEnd::Refused(format!("{} refused the connection: {why}", theirs.from)))
            }
            Auth::Proof(mac) => {
                let key = self.keys.for_link(self.me, theirs.from);
                if !wire::verify_proof(key, Side::Acceptor, &self.mine_body, theirs_body, &mac) {
                    return Err(ConnEnd::Refused(format!(
                        "{} did not prove it knows our {} (it has another one, or none)",
                        theirs.from,
                        Keys::name_for_link(self.me, theirs.from)
                    )));
                }
                dec.set_limit(wire::limit_for(theirs.from));
                Ok(Some(*theirs))
            }
        }
    }
}

/// The dialer's side of the handshake on a blocking socket (clients with a
/// thread of their own). Returns their hello.
pub fn dial_handshake(
    stream: &TcpStream,
    d: &DialHello<'_>,
    dec: &mut FrameDecoder,
    timeout: Duration,
) -> Result<Hello, ConnEnd> {
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    let mut shake = DialShake::start(d, &mut out);
    stream.set_write_timeout(Some(timeout))?;
    loop {
        if !out.is_empty() {
            (&*stream).write_all(&out)?;
            out.clear();
        }
        if let Some(hello) = shake.step(dec, &mut out)? {
            if !out.is_empty() {
                (&*stream).write_all(&out)?;
            }
            stream.set_read_timeout(None)?;
            return Ok(hello);
        }
        if !out.is_empty() {
            continue;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ConnEnd::Refused(format!("no answer to our handshake within {timeout:?}")));
        }
        stream.set_read_timeout(Some(left))?;
        match dec.fill(&mut &*stream) {
            Ok(0) => {
                dec.finish()?;
                return Err(ConnEnd::Eof);
            }
            Ok(_) => {}
            Err(e) if is_timeout(&e) || e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
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
    /// Whether a peer may connect at all (its role, its replica number);
    /// the reason when not.
    pub allowed: Allowed,
    pub keys: Keys,
    /// The configuration a dialing balancer or replica must present (a
    /// replica's own); `None` at the balancer (only clients dial it).
    pub config: Option<ClusterConfig>,
    /// How long a client may stay silent after its hello.
    pub client_idle: Duration,
}

/// The acceptor's side: our hello, theirs, their proof (and configuration),
/// the admission checks, our proof or the reason we refuse.
pub struct AcceptShake {
    mine_body: Vec<u8>,
    theirs: Option<(Hello, Vec<u8>)>,
    /// Their proof was checked (only the configuration may still be due).
    proved: bool,
}

impl AcceptShake {
    /// Starts a handshake: our hello goes to `out`.
    pub fn start(me: NodeId, out: &mut Vec<u8>) -> AcceptShake {
        let mine = Hello::new(me, auth::nonce());
        wire::encode_hello(&mine, out);
        AcceptShake { mine_body: wire::hello_body(&mine), theirs: None, proved: false }
    }

    /// How far the peer got: 0 nothing yet, 1 its hello, 2 its proof
    /// (checked). See [`pick_evictee`].
    pub fn stage(&self) -> u8 {
        match (&self.theirs, self.proved) {
            (None, _) => 0,
            (Some(_), false) => 1,
            (Some(_), true) => 2,
        }
    }

    /// Takes what `dec` holds; their hello once admitted (our proof is then
    /// in `out`). A refusal's reason for the peer is in `out` too.
    pub fn step(
        &mut self,
        a: &Accepting,
        admission: &mut Admission,
        conn: ConnId,
        peer_addr: &str,
        dec: &mut FrameDecoder,
        out: &mut Vec<u8>,
    ) -> Result<Option<Hello>, ConnEnd> {
        let refused = |why: String, out: &mut Vec<u8>| {
            wire::encode_auth(&Auth::Refused(why.clone()), out);
            ConnEnd::Refused(why)
        };
        if self.theirs.is_none() {
            let Some((theirs, body)) = dec.next_hello_raw()? else { return Ok(None) };
            let who = theirs.from;
            if let Err(why) = (a.allowed)(&theirs) {
                return Err(refused(why, out));
            }
            if theirs.observer && who != NodeId::Balancer {
                return Err(refused(format!("{who} may not observe"), out));
            }
            self.theirs = Some((theirs, body));
        }
        let Some((theirs, theirs_body)) = &self.theirs else { return Ok(None) };
        let who = theirs.from;
        let key = a.keys.for_link(a.me, who);
        if !self.proved {
            let Some(auth) = dec.next_auth()? else { return Ok(None) };
            let proof = match auth {
                Auth::Proof(mac) => mac,
                Auth::Refused(why) => return Err(ConnEnd::Refused(format!("{who} gave up: {why}"))),
            };
            if !wire::verify_proof(key, Side::Dialer, theirs_body, &self.mine_body, &proof) {
                wire::encode_auth(&Auth::Refused("authentication failed".into()), out);
                return Err(ConnEnd::Refused(format!(
                    "authentication failed: {who} does not know this node's {}",
                    Keys::name_for_link(a.me, who)
                )));
            }
            self.proved = true;
            dec.set_limit(wire::MAX_CLUSTER_FRAME_BYTES);
        }
        let node_link = !theirs.observer && matches!(who, NodeId::Balancer | NodeId::Replica(_));
        if let (true, Some(mine)) = (node_link, &a.config) {
            let Some(frame) = dec.next_frame()? else { return Ok(None) };
            let Frame::Cluster(theirs_config) = frame else {
                return Err(refused(format!("{who} sent no cluster configuration"), out));
            };
            if &theirs_config != mine {
                return Err(refused(
                    format!(
                        "cluster configuration differs: {who} has {}, {} has {}",
                        describe_config(&theirs_config),
                        a.me,
                        describe_config(mine)
                    ),
                    out,
                ));
            }
        }
        if !theirs.observer {
            if let Err(why) = admission.admit(who, conn, peer_addr) {
                return Err(refused(why, out));
            }
        }
        let mac = wire::proof(key, Side::Acceptor, theirs_body, &self.mine_body);
        wire::encode_auth(&Auth::Proof(mac), out);
        // Observers send only pings and small reads.
        dec.set_limit(if theirs.observer { wire::MAX_CLIENT_FRAME_BYTES } else { wire::limit_for(who) });
        Ok(Some(*theirs))
    }
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
pub struct Admission {
    live: BTreeMap<NodeId, (ConnId, String, Instant)>,
}

impl Admission {
    fn admit(&mut self, peer: NodeId, conn: ConnId, addr: &str) -> Result<(), String> {
        if !matches!(peer, NodeId::Balancer | NodeId::Client(_)) {
            return Ok(());
        }
        if let Some((_, at, since)) = self.live.get(&peer) {
            let age = since.elapsed().as_secs();
            return Err(match peer {
                NodeId::Balancer => format!(
                    "another balancer is connected (from {at}, for {age} s); \
                     a cluster has one balancer: stop the other one first"
                ),
                _ => format!("{peer} is already connected (from {at}): a client id is used by one connection at a time"),
            });
        }
        self.live.insert(peer, (conn, addr.to_string(), Instant::now()));
        Ok(())
    }

    /// Connection `conn` of `peer` closed: another may take its place.
    pub fn release(&mut self, peer: NodeId, conn: ConnId) {
        if self.live.get(&peer).is_some_and(|(c, _, _)| *c == conn) {
            self.live.remove(&peer);
        }
    }
}

/// Rate limit for the log lines about refused and closed connections.
#[derive(Default)]
pub struct Throttle {
    at: Option<Instant>,
    logged: u32,
    left_out: u64,
}

impl Throttle {
    /// Whether to log one more line now; reports lines left out before.
    pub fn allow(&mut self, me: NodeId) -> bool {
        let now = Instant::now();
        if self.at.is_none_or(|at| now.duration_since(at) >= Duration::from_secs(1)) {
            if self.left_out > 0 {
                warn!(node = %me, "{} more refused or closed connections were not logged", self.left_out);
            }
            (self.at, self.logged, self.left_out) = (Some(now), 0, 0);
        }
        if self.logged < REFUSALS_LOGGED_PER_SECOND {
            self.logged += 1;
            true
        } else {
            self.left_out += 1;
            false
        }
    }
}

/// A peer sends its hello as soon as it connects: one silent for this long
/// is not following the protocol.
pub const SILENT_AFTER: Duration = Duration::from_millis(50);

/// Which of the connections in their handshake (oldest first: how far each
/// got, see [`AcceptShake::stage`], and when it connected) to push out for a
/// newcomer: the oldest of those silent since they connected (longer than
/// [`SILENT_AFTER`]), else the oldest that has not proved the key, else the
/// oldest. A hello costs a stranger nothing, so it buys no protection over
/// a newcomer whose hello is still on its way; only the proof does.
pub fn pick_evictee(h: &[(u8, Instant)], now: Instant) -> Option<usize> {
    if h.is_empty() {
        return None;
    }
    let i = h
        .iter()
        .position(|(stage, since)| *stage == 0 && now.saturating_duration_since(*since) >= SILENT_AFTER)
        .or_else(|| h.iter().position(|(stage, _)| *stage < 2))
        .unwrap_or(0);
    Some(i)
}

/// An outgoing connection the node keeps up (re-dialing with backoff).
pub struct DialSpec {
    pub peer: NodeId,
    pub addr: String,
    /// Presented in the handshake (the acceptor refuses one unlike its own).
    pub config: Option<ClusterConfig>,
    /// Report at warn level (seen at the default log level) that the peer
    /// cannot be reached, once, and when it can again: the balancer's links
    /// to replicas, where a wrong address must not go unnoticed.
    pub loud: bool,
}
