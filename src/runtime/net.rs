//! Sockets and the threads that read them: the acceptor, one reader thread
//! per accepted connection, and one dialer thread per outgoing peer (which
//! reads its own connection). Every thread turns bytes into [`Input`]s for
//! its node and never touches the machine.
//!
//! Writing is the node thread's job (see `node.rs`): it owns the write half of
//! every connection, so replies leave in the order the machine produced them.

use crate::types::NodeId;
use crate::wire::{self, Frame, FrameDecoder, Hello, WireError};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use std::fmt;
use std::io::{self, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

/// Connections one node keeps open at most; more are accepted and closed at
/// once (with a log line), so a flood cannot exhaust threads or descriptors.
pub const MAX_CONNECTIONS: usize = 2048;
/// A peer that has not said hello by then is dropped.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// A peer that does not read what we send for this long is dropped: the node
/// thread writes directly, so this bounds how long one stuck peer can stall it.
/// A peer that takes no bytes for this long is dropped (and re-dialed): the
/// node thread writes itself, so this bounds how long one stalled reader can
/// hold up the whole node. Well below the balancer's 200 ms dead-after, so a
/// stalled follower or client never makes a healthy leader look dead.
pub const WRITE_TIMEOUT: Duration = Duration::from_millis(50);
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Reconnection backoff of a dialer, doubling from the first to the second.
pub const REDIAL_MIN: Duration = Duration::from_millis(20);
pub const REDIAL_MAX: Duration = Duration::from_millis(500);
/// Reader threads only decode frames; they need little stack.
const READER_STACK_BYTES: usize = 256 * 1024;

pub type ConnId = u64;

static NEXT_CONN: AtomicU64 = AtomicU64::new(1);

fn next_conn() -> ConnId {
    NEXT_CONN.fetch_add(1, Ordering::Relaxed)
}

/// What the network threads (and the signal handler) tell a node thread.
pub enum Input {
    /// A connection finished its handshake. The node only writes to
    /// `stream`; its reader thread only reads (one socket, shared).
    Connected { conn: ConnId, peer: NodeId, stream: Arc<TcpStream>, dialed: bool },
    /// A frame that passed [`wire::accepts`].
    Frame { conn: ConnId, from: NodeId, frame: Frame },
    /// The reader of `conn` stopped; the node drops it.
    Closed { conn: ConnId },
    /// Stop accepting, finish or fail what is in flight, flush, and return.
    Shutdown,
}

/// Why a connection ended.
pub enum ConnEnd {
    Eof,
    Io(io::Error),
    Wire(WireError),
    Refused(String),
    /// The node thread is gone (the process is stopping).
    NodeGone,
}

impl ConnEnd {
    /// Protocol violations are worth a warning; hang-ups are routine.
    fn is_violation(&self) -> bool {
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
            ConnEnd::NodeGone => f.write_str("node stopped"),
        }
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

/// Sends our hello and waits (at most `timeout`) for the peer's.
pub fn handshake(
    stream: &TcpStream,
    me: NodeId,
    dec: &mut FrameDecoder,
    timeout: Duration,
) -> Result<Hello, ConnEnd> {
    let mut hello = Vec::new();
    wire::encode_hello(me, &mut hello);
    (&*stream).write_all(&hello)?;
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(h) = dec.next_hello()? {
            stream.set_read_timeout(None)?;
            return Ok(h);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ConnEnd::Refused(format!("no hello within {timeout:?}")));
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

pub fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)
}

/// Reads frames until the connection ends, handing each to the node.
fn read_frames(
    stream: &TcpStream,
    dec: &mut FrameDecoder,
    me: NodeId,
    from: NodeId,
    conn: ConnId,
    tx: &Sender<Input>,
) -> ConnEnd {
    loop {
        loop {
            match dec.next_frame() {
                Ok(Some(frame)) => {
                    if !wire::accepts(me, from, &frame) {
                        let what = match &frame {
                            Frame::Msg(m) => m.kind(),
                            Frame::Cluster(_) => "Cluster",
                        };
                        return ConnEnd::Wire(WireError::Invalid(format!(
                            "{from} may not send {what} to {me}"
                        )));
                    }
                    if tx.send(Input::Frame { conn, from, frame }).is_err() {
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
            Err(e) => return ConnEnd::Io(e),
        }
    }
}

// ---- accepting ----

/// What an acceptor needs to know about its node.
#[derive(Clone)]
pub struct Accepting {
    pub me: NodeId,
    pub tx: Sender<Input>,
    /// Set by the node when it starts shutting down.
    pub stopping: Arc<AtomicBool>,
    /// Which peers may connect to this node at all.
    pub allowed: fn(NodeId) -> bool,
}

/// Accepts connections until `stopping` is set (the node then makes one last
/// connection to wake it), one reader thread each.
pub fn spawn_acceptor(listener: TcpListener, a: Accepting) -> io::Result<JoinHandle<()>> {
    let open = Arc::new(AtomicUsize::new(0));
    thread::Builder::new().name(format!("{}-accept", a.me)).spawn(move || {
        for stream in listener.incoming() {
            if a.stopping.load(Ordering::SeqCst) {
                break;
            }
            let stream = match stream {
                Ok(s) => s,
                Err(e) => {
                    // Out of descriptors, say: wait a moment rather than spin.
                    warn!(node = %a.me, "accept failed: {e}");
                    thread::sleep(Duration::from_millis(10));
                    continue;
                }
            };
            let peer_addr = stream.peer_addr().map(|p| p.to_string()).unwrap_or_default();
            let n = open.load(Ordering::SeqCst);
            if n >= MAX_CONNECTIONS {
                warn!(node = %a.me, "refusing connection from {peer_addr}: {n} connections open (limit {MAX_CONNECTIONS})");
                continue;
            }
            open.fetch_add(1, Ordering::SeqCst);
            let a2 = a.clone();
            let open2 = open.clone();
            let spawned = thread::Builder::new()
                .name(format!("{}-conn", a.me))
                .stack_size(READER_STACK_BYTES)
                .spawn(move || {
                    serve_accepted(stream, &peer_addr, &a2);
                    open2.fetch_sub(1, Ordering::SeqCst);
                });
            if let Err(e) = spawned {
                warn!(node = %a.me, "cannot start a reader thread: {e}");
                open.fetch_sub(1, Ordering::SeqCst);
            }
        }
        debug!(node = %a.me, "stopped accepting");
    })
}

fn serve_accepted(stream: TcpStream, peer_addr: &str, a: &Accepting) {
    let stream = Arc::new(stream);
    let conn = next_conn();
    let mut peer = None;
    let end = (|| -> ConnEnd {
        if let Err(e) = stream.set_nodelay(true) {
            return e.into();
        }
        let mut dec = FrameDecoder::new();
        let hello = match handshake(&stream, a.me, &mut dec, HELLO_TIMEOUT) {
            Ok(h) => h,
            Err(e) => return e,
        };
        if !(a.allowed)(hello.from) {
            return ConnEnd::Refused(format!("{} may not connect to {}", hello.from, a.me));
        }
        peer = Some(hello.from);
        dec.set_limit(wire::limit_for(hello.from));
        if let Err(e) = stream.set_write_timeout(Some(WRITE_TIMEOUT)) {
            return e.into();
        }
        debug!(node = %a.me, "connection {conn} from {} at {peer_addr}", hello.from);
        if a.tx
            .send(Input::Connected { conn, peer: hello.from, stream: stream.clone(), dialed: false })
            .is_err()
        {
            return ConnEnd::NodeGone;
        }
        read_frames(&stream, &mut dec, a.me, hello.from, conn, &a.tx)
    })();
    let who = peer.map_or_else(|| "unknown peer".to_string(), |p| p.to_string());
    if end.is_violation() {
        warn!(node = %a.me, "closing connection from {who} at {peer_addr}: {end}");
    } else {
        debug!(node = %a.me, "connection from {who} at {peer_addr} ended: {end}");
    }
    let _ = stream.shutdown(std::net::Shutdown::Both);
    if peer.is_some() {
        let _ = a.tx.send(Input::Closed { conn });
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
    /// Sent right after the handshake, before the node may write.
    pub first: Option<Frame>,
    pub tx: Sender<Input>,
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
    let mut failing = false;
    loop {
        match dial_once(&spec) {
            Ok((stream, mut dec, conn)) => {
                info!(node = %spec.me, "connected to {} at {}", spec.peer, spec.addr);
                failing = false;
                backoff = REDIAL_MIN;
                let end = read_frames(&stream, &mut dec, spec.me, spec.peer, conn, &spec.tx);
                let _ = stream.shutdown(std::net::Shutdown::Both);
                if end.is_violation() {
                    warn!(node = %spec.me, "closing connection to {} at {}: {end}", spec.peer, spec.addr);
                } else {
                    info!(node = %spec.me, "lost {} at {}: {end}", spec.peer, spec.addr);
                }
                if spec.tx.send(Input::Closed { conn }).is_err() {
                    return;
                }
            }
            Err(ConnEnd::NodeGone) => return,
            Err(e) => {
                // A peer that is down is routine during failover: say so once.
                if !failing {
                    if e.is_violation() {
                        warn!(node = %spec.me, "cannot use {} at {}: {e}", spec.peer, spec.addr);
                    } else {
                        info!(node = %spec.me, "cannot reach {} at {}: {e}", spec.peer, spec.addr);
                    }
                }
                failing = true;
            }
        }
        match stop.recv_timeout(backoff) {
            Err(RecvTimeoutError::Timeout) => {}
            _ => return,
        }
        backoff = (backoff * 2).min(REDIAL_MAX);
    }
}

fn dial_once(spec: &DialSpec) -> Result<(Arc<TcpStream>, FrameDecoder, ConnId), ConnEnd> {
    let stream = Arc::new(connect(&spec.addr, CONNECT_TIMEOUT)?);
    let mut dec = FrameDecoder::new();
    let hello = handshake(&stream, spec.me, &mut dec, HELLO_TIMEOUT)?;
    if hello.from != spec.peer {
        return Err(ConnEnd::Refused(format!("expected {} but {} answered", spec.peer, hello.from)));
    }
    dec.set_limit(wire::limit_for(spec.peer));
    if let Some(first) = &spec.first {
        let mut buf = Vec::new();
        wire::encode_frame(first, wire::limit_for(spec.peer), &mut buf)?;
        (&*stream).write_all(&buf)?;
    }
    stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
    let conn = next_conn();
    spec.tx
        .send(Input::Connected { conn, peer: spec.peer, stream: stream.clone(), dialed: true })
        .map_err(|_| ConnEnd::NodeGone)?;
    Ok((stream, dec, conn))
}
