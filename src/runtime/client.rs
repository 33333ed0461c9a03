//! A client's driver: the [`Client`] machine over one TCP connection to the
//! balancer, in the caller's thread (a client has one connection, so the
//! thread that waits for the answer is its reader: no other threads).
//!
//! The socket's read timeout is set to the machine's next wakeup, as in
//! stateright's spawn. A lost connection is re-dialed when the machine next
//! sends (its retry uses the same request id, so a write is applied at most
//! once).
//!
//! The client's id is its session (at-most-once across reconnects depends on
//! it): 64 random bits from the OS, so nobody who does not see the traffic
//! can guess it. The balancer lets one live connection use an id at a time.
//! With a client password, the handshake proves it both ways.

use super::auth::{Keys, Secret};
use super::net::{self, is_timeout, ConnEnd};
use super::Clock;
use crate::client::{Client, ClientConfig};
use crate::machine::{Completion, Effect, Outbox};
use crate::msg::{ClusterView, Msg};
use crate::types::{ClientId, NodeId, Op, OpError, ReadMode, Time};
use crate::wire::{self, Frame, FrameDecoder};
use std::io::{self, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{debug, info};

pub struct SyncClient {
    addr: String,
    machine: Client,
    clock: Clock,
    conn: Option<Conn>,
    out: Outbox,
    /// Set from another thread (a signal) to give up on the call in flight.
    interrupt: Arc<AtomicBool>,
    /// True while `call` runs.
    busy: Arc<AtomicBool>,
    keys: Keys,
    /// Numbers status requests.
    status_tag: u64,
}

struct Conn {
    stream: TcpStream,
    dec: FrameDecoder,
    wbuf: Vec<u8>,
    read_timeout: Option<Duration>,
    /// When a frame last went out or came in.
    active: Instant,
}

/// A connection quiet for this long is checked for a close (the balancer's
/// idle timeout, say) before a request is sent on it.
const CHECK_AFTER_IDLE: Duration = Duration::from_secs(1);

impl SyncClient {
    pub fn new(addr: &str, id: ClientId, read: ReadMode) -> SyncClient {
        SyncClient::with_config(addr, ClientConfig::new(id, read))
    }

    pub fn with_config(addr: &str, cfg: ClientConfig) -> SyncClient {
        SyncClient {
            addr: addr.to_string(),
            machine: Client::new(cfg),
            clock: Clock::new(),
            conn: None,
            out: Outbox::new(),
            interrupt: Arc::new(AtomicBool::new(false)),
            busy: Arc::new(AtomicBool::new(false)),
            keys: Keys::default(),
            status_tag: 0,
        }
    }

    /// Proves `password` to the balancer (and checks that it knows it).
    pub fn with_password(mut self, password: Option<Secret>) -> SyncClient {
        self.keys.client = password;
        self
    }

    pub fn id(&self) -> ClientId {
        self.machine.id()
    }

    /// A flag that, once set, makes the call in flight (and every later one)
    /// finish at once with an error.
    pub fn interrupt_flag(&self) -> Arc<AtomicBool> {
        self.interrupt.clone()
    }

    /// Whether the interrupt flag was set, clearing it: the REPL gives up on
    /// one command per Ctrl-C and goes on.
    pub fn take_interrupt(&self) -> bool {
        self.interrupt.swap(false, Ordering::SeqCst)
    }

    /// A flag that is true while a call is in flight (so a signal handler
    /// can tell an idle REPL, which may simply exit, from a busy one).
    pub fn busy_flag(&self) -> Arc<AtomicBool> {
        self.busy.clone()
    }

    /// Connects now (calls connect lazily otherwise), to report a bad address
    /// early.
    pub fn connect(&mut self) -> io::Result<()> {
        if self.conn.is_none() {
            let conn =
                self.dial().map_err(|e| io::Error::other(format!("cannot connect to {}: {e}", self.addr)))?;
            self.conn = Some(conn);
        }
        Ok(())
    }

    fn dial(&self) -> Result<Conn, ConnEnd> {
        let stream = net::connect(&self.addr, net::CONNECT_TIMEOUT)?;
        let mut dec = FrameDecoder::new();
        let hello = net::DialHello {
            me: NodeId::Client(self.id()),
            expect: Some(NodeId::Balancer),
            observer: false,
            keys: &self.keys,
            config: None,
        };
        net::dial_handshake(&stream, &hello, &mut dec, net::HELLO_TIMEOUT)?;
        dec.set_limit(wire::MAX_CLIENT_FRAME_BYTES);
        stream.set_write_timeout(Some(net::WRITE_TIMEOUT))?;
        debug!("client {} connected to {}", self.id().0, self.addr);
        Ok(Conn { stream, dec, wbuf: Vec::new(), read_timeout: None, active: Instant::now() })
    }

    /// Whether a connection quiet for a while was closed by the balancer
    /// (read without waiting: what is there stays in the decoder).
    fn closed_while_idle(c: &mut Conn) -> bool {
        if c.active.elapsed() < CHECK_AFTER_IDLE {
            return false;
        }
        if c.stream.set_nonblocking(true).is_err() {
            return true;
        }
        let closed = loop {
            match c.dec.fill(&mut &c.stream) {
                Ok(0) => break true,
                Ok(_) => continue,
                Err(e) if is_timeout(&e) => break false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break true,
            }
        };
        closed || c.stream.set_nonblocking(false).is_err()
    }

    /// Asks the balancer for its view of the cluster; waits at most
    /// `timeout` for the answer. Changes nothing anywhere.
    pub fn status(&mut self, timeout: Duration) -> io::Result<ClusterView> {
        self.connect()?;
        self.status_tag = self.status_tag.wrapping_add(1);
        let tag = self.status_tag;
        let c = self.conn.as_mut().expect("just connected");
        c.wbuf.clear();
        wire::encode_frame(&Frame::Msg(Msg::StatusQuery { tag }), wire::MAX_CLIENT_FRAME_BYTES, &mut c.wbuf)
            .map_err(|e| io::Error::other(e.to_string()))?;
        if let Err(e) = (&c.stream).write_all(&c.wbuf) {
            self.conn = None;
            return Err(io::Error::new(e.kind(), format!("status request to {} failed: {e}", self.addr)));
        }
        c.active = Instant::now();
        let deadline = Instant::now() + timeout;
        loop {
            match self.recv_until(deadline) {
                Ok(Some(Msg::StatusAnswer { tag: t, view })) if t == tag => return Ok(view),
                // A late answer to an earlier request: not ours now.
                Ok(Some(_)) => {}
                Ok(None) => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("no status from the balancer at {} within {timeout:?}", self.addr),
                    ))
                }
                Err(e) => {
                    self.conn = None;
                    return Err(io::Error::other(format!("connection to {} lost: {e}", self.addr)));
                }
            }
        }
    }

    /// Runs one operation to its outcome: the reply, or an error (a `Timeout`
    /// write may or may not have been applied).
    pub fn call(&mut self, op: Op) -> Completion {
        self.busy.store(true, Ordering::SeqCst);
        let done = self.run_call(op);
        self.busy.store(false, Ordering::SeqCst);
        done
    }

    fn run_call(&mut self, op: Op) -> Completion {
        let now = self.clock.now();
        self.machine.submit(now, op, &mut self.out);
        loop {
            if let Some(done) = self.apply() {
                return done;
            }
            let Some(wake) = self.machine.next_wakeup() else {
                unreachable!("a client with a request in flight has a timer");
            };
            if self.interrupt.load(Ordering::SeqCst) {
                // Give up: the machine's own timeout path reports the outcome.
                self.conn = None;
                self.machine.on_tick(Time::MAX, &mut self.out);
                continue;
            }
            let deadline = self.clock.instant(wake);
            if self.conn.is_none() {
                // Nothing can arrive until the machine resends (and that
                // re-dials): wait for its timer.
                std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
                let now = self.clock.now();
                self.machine.on_tick(now, &mut self.out);
                continue;
            }
            match self.recv_until(deadline) {
                Ok(Some(msg)) => {
                    let now = self.clock.now();
                    self.machine.on_message(now, NodeId::Balancer, msg, &mut self.out);
                }
                Ok(None) => {
                    let now = self.clock.now();
                    self.machine.on_tick(now, &mut self.out);
                }
                Err(e) => {
                    info!("client {}: connection to {} lost: {e}", self.id().0, self.addr);
                    self.conn = None;
                }
            }
        }
    }

    /// Carries out queued effects; returns the completion if one came.
    fn apply(&mut self) -> Option<Completion> {
        let mut done = None;
        let effects: Vec<Effect> = self.out.drain().collect();
        for e in effects {
            match e {
                Effect::Send { msg, .. } => self.send(msg),
                Effect::Done(c) => done = Some(c),
                Effect::Persist { .. } | Effect::Event(_) => {}
            }
        }
        done
    }

    fn send(&mut self, msg: Msg) {
        if self.conn.as_mut().is_some_and(Self::closed_while_idle) {
            debug!(
                "client {}: the connection to {} was closed while idle; reconnecting",
                self.id().0,
                self.addr
            );
            self.conn = None;
        }
        if self.conn.is_none() {
            match self.dial() {
                Ok(c) => self.conn = Some(c),
                Err(e) => {
                    info!("client {}: cannot reach {}: {e}", self.id().0, self.addr);
                    return;
                }
            }
        }
        let c = self.conn.as_mut().expect("just connected");
        c.wbuf.clear();
        if let Err(e) = wire::encode_frame(&Frame::Msg(msg), wire::MAX_CLIENT_FRAME_BYTES, &mut c.wbuf) {
            info!("client {}: not sending: {e}", self.id().0);
            return;
        }
        if let Err(e) = (&c.stream).write_all(&c.wbuf) {
            info!("client {}: send to {} failed: {e}", self.id().0, self.addr);
            self.conn = None;
            return;
        }
        c.active = Instant::now();
    }

    /// The next message from the balancer, or `None` at `deadline`.
    fn recv_until(&mut self, deadline: Instant) -> Result<Option<Msg>, ConnEnd> {
        let Some(c) = self.conn.as_mut() else {
            return Err(ConnEnd::Refused("not connected".into()));
        };
        loop {
            match c.dec.next_frame()? {
                Some(Frame::Msg(msg)) => {
                    c.active = Instant::now();
                    return Ok(Some(msg));
                }
                Some(Frame::Cluster(_)) => return Err(ConnEnd::Refused("unexpected Cluster frame".into())),
                None => {}
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            // Keep the timeout already set when it is close enough (waking a
            // little early only costs a no-op tick; at most 1ms late is
            // harmless): saves a system call per request.
            let keep =
                c.read_timeout.is_some_and(|cur| cur <= left + Duration::from_millis(1) && cur * 2 >= left);
            if !keep {
                // Round up so a short wait does not become a zero (infinite) one.
                let timeout = Some(left.max(Duration::from_micros(100)));
                c.stream.set_read_timeout(timeout)?;
                c.read_timeout = timeout;
            }
            match c.dec.fill(&mut &c.stream) {
                Ok(0) => {
                    c.dec.finish()?;
                    return Err(ConnEnd::Eof);
                }
                Ok(_) => {}
                Err(e) if is_timeout(&e) => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// One line for an outcome, as the REPL prints it.
pub fn describe_error(op: &Op, e: &OpError) -> String {
    match e {
        OpError::Timeout if !op.is_write() => "timed out".to_string(),
        e => e.to_string(),
    }
}
