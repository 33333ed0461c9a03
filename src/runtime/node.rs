//! The node thread: one per replica or balancer. It owns the machine and the
//! write half of every connection, takes [`Input`]s from one channel, and
//! waits for the next one no longer than the machine's `next_wakeup`.
//!
//! One pass of the loop (the "batch"): handle every input already queued
//! (up to [`MAX_BATCH`]), tick the machine if its time has come, hand the
//! resulting sends to the connections' buffers, write them out, then make the
//! batch's persist operations durable in one step and report them done
//! (which may release more sends). Batching is what turns many small
//! messages into few system calls under load.
//!
//! Inputs from the cluster (pings, promotions, appends, acks, connection
//! events) are taken before clients' frames and the reads and writes a
//! balancer forwards for them ([`Inputs`]), so the cluster's own traffic is
//! never stuck behind a flood of client requests. A reply produced while
//! handling a frame goes back on the connection that frame came in on.
//! Writes to clients never block the node: what a client does not take at
//! once waits in its buffer (at most [`MAX_CLIENT_BACKLOG`] bytes, then the
//! client is dropped).

use super::net::{ConnId, InFlight, Input, Inputs};
use super::resp::{ClusterInfo, Item, Replies};
use super::Clock;
use crate::machine::{Effect, Outbox, PersistOp};
use crate::msg::Msg;
use crate::types::{NodeId, Time};
use crate::wire::{self, Frame};
use crossbeam_channel::RecvTimeoutError;
use std::collections::BTreeMap;
use std::io::{self, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

/// Inputs handled per batch at most, so timers and flushes are never starved.
pub const MAX_BATCH: usize = 1024;
/// Client inputs (and forwarded reads and writes) per batch at most: a
/// batch ends sooner under a client flood, so the cluster's own messages
/// that arrive meanwhile are answered within one short batch.
pub const MAX_CLIENT_BATCH: usize = 128;
/// Bytes buffered for one connection before it is written out mid-batch.
const FLUSH_BYTES: usize = 256 * 1024;
/// Replies a client has not taken, buffered at most before it is dropped.
pub const MAX_CLIENT_BACKLOG: usize = 4 << 20;
/// Replies all clients together have not taken, buffered at most: beyond
/// it the client with the most waiting is dropped (each client's own cap
/// alone let N clients that never read cost N x [`MAX_CLIENT_BACKLOG`]).
pub const MAX_CLIENT_BACKLOG_TOTAL: usize = 32 << 20;
/// How soon a node tries again to write to a client that took nothing.
const BACKLOG_RETRY: Duration = Duration::from_millis(1);

/// What differs between a replica node and a balancer node.
pub trait Role {
    fn me(&self) -> NodeId;
    /// A frame from `from` (already checked by `wire::accepts`).
    fn on_frame(&mut self, now: Time, from: NodeId, frame: Frame, out: &mut Outbox, net: &mut Net);
    fn on_tick(&mut self, now: Time, out: &mut Outbox);
    fn next_wakeup(&self) -> Option<Time>;
    /// An `Effect::Persist`: written in order, durable after `sync`.
    fn persist(&mut self, id: u64, op: PersistOp) {
        let _ = (id, op);
        unreachable!("only replicas persist");
    }
    /// Makes what `persist` wrote durable and tells the machine.
    fn sync(&mut self, now: Time, out: &mut Outbox) {
        let _ = (now, out);
    }
    /// After a batch was synced and its sends flushed: housekeeping that may
    /// block for a while (a replica's periodic snapshot).
    fn maintain(&mut self) {}
    /// A line for stdout about `event`, for the few a user watching the
    /// terminal should see without `--log info` (leadership changes).
    fn notice(&mut self, event: &crate::machine::Event) -> Option<String> {
        let _ = event;
        None
    }
    /// Shutdown began: new work is refused from now on.
    fn on_shutdown(&mut self, now: Time, out: &mut Outbox) {
        let _ = (now, out);
    }
    /// Requests (or rows) still in flight; a stopping node exits at zero.
    fn in_flight(&self) -> usize {
        0
    }
    /// How long a stopping node waits for `drained` at most.
    fn drain_timeout(&self) -> Duration;
    /// What the balancer knows of the cluster, for RESP's INFO and WAIT.
    fn resp_info(&self, now: Time) -> Option<ClusterInfo> {
        let _ = now;
        None
    }
}

/// The write halves of a node's connections and where to send what.
pub struct Net {
    me: NodeId,
    conns: BTreeMap<ConnId, Conn>,
    /// The connection each peer is reached by. A connection this node dialed
    /// is preferred; otherwise the newest one from that peer. (A balancer at
    /// a replica and each client id at the balancer have one connection at
    /// a time: the acceptor admits no second. Observers are never routes.)
    routes: BTreeMap<NodeId, ConnId>,
    dirty: Vec<ConnId>,
    /// Bytes held for clients that did not take their replies at once
    /// (the sum of every connection's `backlog`).
    backlog: usize,
    /// The cluster view RESP replies waiting at their head need (a WAIT),
    /// taken from the role just before a flush.
    info: Option<ClusterInfo>,
}

struct Conn {
    peer: NodeId,
    dialed: bool,
    observer: bool,
    stream: Arc<TcpStream>,
    out: Vec<u8>,
    /// A client's: requests in flight, released as answers are queued.
    in_flight: Option<Arc<InFlight>>,
    /// The buffer's size counted in `Net::backlog` (while replies wait).
    backlog: usize,
    /// A RESP connection's owed replies (its output is RESP, not frames).
    resp: Option<Box<Replies>>,
}

impl Conn {
    /// Clients are written without waiting; cluster peers with a timeout.
    fn nonblocking(&self) -> bool {
        matches!(self.peer, NodeId::Client(_))
    }
}

impl Net {
    pub fn new(me: NodeId) -> Net {
        Net { me, conns: BTreeMap::new(), routes: BTreeMap::new(), dirty: Vec::new(), backlog: 0, info: None }
    }

    fn connected(
        &mut self,
        conn: ConnId,
        peer: NodeId,
        stream: Arc<TcpStream>,
        dialed: bool,
        observer: bool,
        in_flight: Option<Arc<InFlight>>,
    ) {
        if !observer {
            let replace = match self.routes.get(&peer).and_then(|c| self.conns.get(c)) {
                Some(current) => dialed || !current.dialed,
                None => true,
            };
            if replace {
                self.routes.insert(peer, conn);
            }
        }
        self.conns.insert(
            conn,
            Conn { peer, dialed, observer, stream, out: Vec::new(), in_flight, backlog: 0, resp: None },
        );
    }

    fn connected_resp(&mut self, conn: ConnId, peer: NodeId, stream: Arc<TcpStream>, replies: Box<Replies>) {
        self.connected(conn, peer, stream, false, false, None);
        if let Some(c) = self.conns.get_mut(&conn) {
            c.resp = Some(replies);
        }
    }

    fn resp_item(&mut self, conn: ConnId, item: Item) {
        let Some(r) = self.conns.get_mut(&conn).and_then(|c| c.resp.as_mut()) else { return };
        r.push(item);
        if !self.dirty.contains(&conn) {
            self.dirty.push(conn);
        }
    }

    /// A RESP connection's requests come from several client ids (its
    /// lanes): answers to each go back on it.
    fn note_resp_peer(&mut self, conn: ConnId, from: NodeId) {
        if self.routes.get(&from) != Some(&conn) && self.conns.get(&conn).is_some_and(|c| c.resp.is_some()) {
            self.routes.insert(from, conn);
        }
    }

    /// Whether a RESP reply waits for the cluster view (see `info`).
    fn wants_info(&self) -> bool {
        self.dirty
            .iter()
            .any(|id| self.conns.get(id).and_then(|c| c.resp.as_ref()).is_some_and(|r| r.wants_info()))
    }

    fn closed(&mut self, conn: ConnId) {
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        let _ = c.stream.shutdown(std::net::Shutdown::Both);
        self.backlog -= c.backlog;
        if let Some(f) = &c.in_flight {
            f.close();
        }
        if let Some(r) = &c.resp {
            r.close();
            self.routes.retain(|_, id| *id != conn);
        }
        if self.routes.get(&c.peer) == Some(&conn) {
            self.routes.remove(&c.peer);
            let other = self
                .conns
                .iter()
                .filter(|(_, o)| o.peer == c.peer && !o.observer)
                .max_by_key(|(id, o)| (o.dialed, **id))
                .map(|(id, _)| *id);
            if let Some(other) = other {
                self.routes.insert(c.peer, other);
            }
        }
    }

    /// Closes every connection with `peer` (its address changed, say).
    pub fn close_peer(&mut self, peer: NodeId) {
        let ids: Vec<ConnId> = self.conns.iter().filter(|(_, c)| c.peer == peer).map(|(id, _)| *id).collect();
        for id in ids {
            self.closed(id);
        }
    }

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
        if let Some(r) = c.resp.as_mut() {
            if let Frame::Msg(Msg::Response { id: req, result, .. }) = frame {
                r.on_response(req, result);
                if !self.dirty.contains(&id) {
                    self.dirty.push(id);
                }
            }
            return;
        }
        if let Err(e) = wire::encode_frame(&frame, wire::limit_for(to), &mut c.out) {
            warn!(node = %self.me, "not sending {} to {to}: {e}", describe(&frame));
            return;
        }
        if let (Some(f), Frame::Msg(Msg::Response { id, .. })) = (&c.in_flight, &frame) {
            f.release(id.seq);
        }
        if c.out.len() >= FLUSH_BYTES {
            self.write_out(id);
        } else if !self.dirty.contains(&id) {
            self.dirty.push(id);
        }
    }

    /// Writes every buffered frame (what a client does not take now stays
    /// buffered for the next flush).
    pub fn flush(&mut self) {
        let dirty = std::mem::take(&mut self.dirty);
        for id in dirty {
            if let Some(c) = self.conns.get_mut(&id) {
                if let Some(r) = c.resp.as_mut() {
                    r.pump(self.info.as_ref(), &mut c.out);
                    if r.wants_info() && self.info.is_none() {
                        // Flushed without a view (a WAIT): try again soon.
                        self.dirty.push(id);
                    }
                }
            }
            self.write_out(id);
            if let Some(c) = self.conns.get(&id) {
                if c.out.is_empty() && c.resp.as_ref().is_some_and(|r| r.closing) {
                    self.closed(id);
                }
            }
        }
        self.info = None;
    }

    /// Whether some client has replies it did not take yet.
    fn backlogged(&self) -> bool {
        !self.dirty.is_empty()
    }

    fn write_out(&mut self, id: ConnId) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        if c.out.is_empty() {
            return;
        }
        let result = if c.nonblocking() { write_nonblocking(c) } else { (&*c.stream).write_all(&c.out) };
        match result {
            Ok(()) if c.nonblocking() && !c.out.is_empty() => {
                let held = c.out.capacity();
                self.backlog = self.backlog - c.backlog + held;
                c.backlog = held;
                if c.out.len() > MAX_CLIENT_BACKLOG {
                    info!(
                        node = %self.me,
                        "dropping connection to {}: it does not read its replies ({} bytes waiting)",
                        c.peer,
                        c.out.len()
                    );
                    self.closed(id);
                    return;
                }
                if self.backlog > MAX_CLIENT_BACKLOG_TOTAL {
                    self.shed_backlog();
                }
                if self.conns.contains_key(&id) && !self.dirty.contains(&id) {
                    self.dirty.push(id);
                }
            }
            Ok(()) => {
                self.backlog -= c.backlog;
                c.backlog = 0;
                c.out.clear();
                if c.out.capacity() > 4 * FLUSH_BYTES {
                    c.out = Vec::new();
                }
            }
            Err(e) => {
                // A peer that stopped reading (or vanished): drop it; its reader
                // thread notices the shutdown and reports `Closed`.
                info!(node = %self.me, "dropping connection to {}: write failed: {e}", c.peer);
                self.closed(id);
            }
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
                c.peer,
                c.out.len(),
                self.backlog
            );
            self.closed(id);
        }
    }

    fn close_all(&mut self) {
        let ids: Vec<ConnId> = self.conns.keys().copied().collect();
        for id in ids {
            self.closed(id);
        }
    }
}

/// Writes what the socket takes now (`MSG_DONTWAIT`: the socket itself stays
/// blocking for its reader thread) and keeps the rest in `c.out`.
fn write_nonblocking(c: &mut Conn) -> io::Result<()> {
    let mut sent = 0;
    while sent < c.out.len() {
        match rustix::net::send(&*c.stream, &c.out[sent..], rustix::net::SendFlags::DONTWAIT) {
            Ok(0) => return Err(io::Error::new(io::ErrorKind::WriteZero, "wrote nothing")),
            Ok(n) => sent += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(rustix::io::Errno::AGAIN) => break,
            Err(e) => return Err(e.into()),
        }
    }
    c.out.drain(..sent);
    Ok(())
}

fn describe(frame: &Frame) -> &'static str {
    match frame {
        Frame::Msg(m) => m.kind(),
        Frame::Cluster(_) => "Cluster",
    }
}

/// Runs a node until it is told to stop and has drained (or its inputs end).
pub fn run<R: Role>(mut role: R, rx: Inputs, clock: Clock, stop_accepting: impl FnOnce()) {
    let me = role.me();
    let panic_at = test_panic_at();
    let mut net = Net::new(me);
    let mut out = Outbox::new();
    let mut stop_accepting = Some(stop_accepting);
    let mut drain_until: Option<Instant> = None;
    // Guards against a machine that asks to be woken at a time already past
    // after a tick (the busy-loop bug): never wake sooner than this.
    let mut not_before = Time::ZERO;
    let mut warned_spin = false;
    // A tick put off once because inputs were waiting.
    let mut tick_deferred = false;
    loop {
        let now = clock.now();
        let due = role.next_wakeup().is_some_and(|t| t <= now);
        // Inputs that queued up (say, during a slow write) go first: a tick
        // that ran before them would judge on stale news, as a balancer
        // presuming a leader dead whose pongs wait in the queue. Put off
        // once, so a busy queue cannot starve the timers.
        let defer = due && !tick_deferred && !rx.is_empty();
        tick_deferred = defer;
        if due && !defer {
            role.on_tick(now, &mut out);
            apply(&mut role, &mut net, &mut out, None);
            if role.next_wakeup().is_some_and(|t| t <= now) {
                if !warned_spin {
                    warn!(node = %me, "machine wants another tick at {now} right after one: waiting 1ms");
                    warned_spin = true;
                }
                not_before = now + 1000;
            }
        }
        refresh_info(&role, &mut net, now);
        net.flush();
        role.sync(now, &mut out);
        if !out.is_empty() {
            apply(&mut role, &mut net, &mut out, None);
            refresh_info(&role, &mut net, now);
            net.flush();
        }
        role.maintain();
        if panic_at.is_some_and(|at| Instant::now() >= at) {
            panic!("{me}: test panic ({})", super::auth::ENV_TEST_PANIC);
        }
        if let Some(until) = drain_until {
            let left = role.in_flight();
            if left == 0 {
                info!(node = %me, "drained");
                break;
            }
            if Instant::now() >= until {
                warn!(node = %me, "stopping with {left} still in flight after {:?}", role.drain_timeout());
                break;
            }
        }

        // Wait for an input, the machine's next timer, or the drain deadline.
        let mut wake = role.next_wakeup().map(|t| clock.instant(t.max(not_before)));
        let mut soonest = |at: Instant| wake = Some(wake.map_or(at, |w| w.min(at)));
        if net.backlogged() {
            soonest(Instant::now() + BACKLOG_RETRY);
        }
        if let Some(at) = panic_at {
            soonest(at);
        }
        if let Some(until) = drain_until {
            // While draining, look again often enough to notice the end.
            let soon = Instant::now() + Duration::from_millis(10);
            wake = Some(wake.map_or(until.min(soon), |w| w.min(until).min(soon)));
        }
        let first = rx.recv_deadline(wake);
        let mut input = match first {
            Ok(i) => Some(i),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        let mut handled = 0;
        let mut clients_handled = 0;
        while let Some(i) = input.take() {
            let now = clock.now();
            match i {
                Input::Connected { conn, peer, stream, dialed, observer, in_flight } => {
                    net.connected(conn, peer, stream, dialed, observer, in_flight)
                }
                Input::RespConnected { conn, peer, stream, replies } => {
                    net.connected_resp(conn, peer, stream, replies)
                }
                Input::Resp { conn, item: Item::Info(section) } => {
                    let text = role.resp_info(now).map(|i| i.render(section.as_deref())).unwrap_or_default();
                    let mut b = Vec::new();
                    super::resp::codec::bulk(&mut b, text.as_bytes());
                    net.resp_item(conn, Item::Ready(b));
                }
                Input::Resp { conn, item } => net.resp_item(conn, item),
                Input::Closed { conn } => net.closed(conn),
                Input::Frame { conn, from, frame, bytes } => {
                    if matches!(from, NodeId::Client(_)) {
                        net.note_resp_peer(conn, from);
                    }
                    role.on_frame(now, from, frame, &mut out, &mut net);
                    apply(&mut role, &mut net, &mut out, Some((from, conn)));
                    rx.release_client_bytes(bytes);
                }
                Input::Shutdown => {
                    if drain_until.is_some() {
                        info!(node = %me, "second stop request: stopping now");
                        net.flush();
                        role.sync(now, &mut out);
                        net.close_all();
                        return;
                    }
                    info!(node = %me, "stopping: no new connections, draining requests in flight");
                    if let Some(f) = stop_accepting.take() {
                        f();
                    }
                    drain_until = Some(Instant::now() + role.drain_timeout());
                    role.on_shutdown(now, &mut out);
                    apply(&mut role, &mut net, &mut out, None);
                }
            }
            handled += 1;
            if handled < MAX_BATCH {
                input = rx.try_recv_cluster();
                if input.is_none() && clients_handled < MAX_CLIENT_BATCH {
                    input = rx.try_recv_clients();
                    clients_handled += usize::from(input.is_some());
                }
            }
        }
    }
    // Last words: everything buffered goes out, everything written is durable.
    let now = clock.now();
    net.flush();
    role.sync(now, &mut out);
    apply(&mut role, &mut net, &mut out, None);
    net.flush();
    net.close_all();
    debug!(node = %me, "node thread done");
}

/// Gives the connections the cluster view when a RESP reply waits for it.
fn refresh_info<R: Role>(role: &R, net: &mut Net, now: Time) {
    if net.wants_info() {
        net.info = role.resp_info(now);
    }
}

/// When the test hook says this node thread should panic.
fn test_panic_at() -> Option<Instant> {
    let ms: u64 = std::env::var(super::auth::ENV_TEST_PANIC).ok()?.parse().ok()?;
    Some(Instant::now() + Duration::from_millis(ms))
}

/// Carries out a machine's effects in order. `reply`: the peer and the
/// connection of the frame being handled; what goes back to that peer goes
/// on that connection.
fn apply<R: Role>(role: &mut R, net: &mut Net, out: &mut Outbox, reply: Option<(NodeId, ConnId)>) {
    let me = role.me();
    for effect in out.drain() {
        match effect {
            Effect::Send { to, msg } => match reply {
                Some((peer, conn)) if peer == to => net.send_on(conn, to, Frame::Msg(msg)),
                _ => net.send(to, Frame::Msg(msg)),
            },
            Effect::Persist { id, op } => role.persist(id, op),
            Effect::Event(e) => {
                if let Some(line) = role.notice(&e) {
                    super::say(&line);
                }
                info!(node = %me, "{e}")
            }
            Effect::Done(c) => {
                debug!(node = %me, "completion #{} with no application to take it", c.seq)
            }
        }
    }
}
