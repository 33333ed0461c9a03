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

use super::net::{ConnId, Input};
use super::Clock;
use crate::machine::{Effect, Outbox, PersistOp};
use crate::types::{NodeId, Time};
use crate::wire::{self, Frame};
use crossbeam_channel::{Receiver, RecvTimeoutError};
use std::collections::BTreeMap;
use std::io::Write;
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

/// Inputs handled per batch at most, so timers and flushes are never starved.
pub const MAX_BATCH: usize = 1024;
/// Bytes buffered for one connection before it is written out mid-batch.
const FLUSH_BYTES: usize = 256 * 1024;

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
}

/// The write halves of a node's connections and where to send what.
pub struct Net {
    me: NodeId,
    conns: BTreeMap<ConnId, Conn>,
    /// The connection each peer is reached by. A connection this node dialed
    /// is preferred; otherwise the newest one from that peer (a client that
    /// reconnected is answered on its new connection).
    routes: BTreeMap<NodeId, ConnId>,
    dirty: Vec<ConnId>,
}

struct Conn {
    peer: NodeId,
    dialed: bool,
    stream: Arc<TcpStream>,
    out: Vec<u8>,
}

impl Net {
    pub fn new(me: NodeId) -> Net {
        Net { me, conns: BTreeMap::new(), routes: BTreeMap::new(), dirty: Vec::new() }
    }

    fn connected(&mut self, conn: ConnId, peer: NodeId, stream: Arc<TcpStream>, dialed: bool) {
        let replace = match self.routes.get(&peer).and_then(|c| self.conns.get(c)) {
            Some(current) => dialed || !current.dialed,
            None => true,
        };
        if replace {
            if let (NodeId::Balancer, Some(old)) = (peer, self.routes.get(&peer)) {
                // One balancer per cluster: replies follow the newest
                // connection, so a second live balancer starves the first.
                // (A restarted balancer also lands here until its old
                // connection is noticed closed.)
                warn!(
                    node = %self.me,
                    "a balancer connected while another is connected (conn {old:?}): replies now go to the new one; \
                     two balancers must not share these replicas"
                );
            }
            self.routes.insert(peer, conn);
        }
        self.conns.insert(conn, Conn { peer, dialed, stream, out: Vec::new() });
    }

    fn closed(&mut self, conn: ConnId) {
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        let _ = c.stream.shutdown(std::net::Shutdown::Both);
        if self.routes.get(&c.peer) == Some(&conn) {
            self.routes.remove(&c.peer);
            let other = self
                .conns
                .iter()
                .filter(|(_, o)| o.peer == c.peer)
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
        let c = self.conns.get_mut(&id).expect("routes name open connections");
        if let Err(e) = wire::encode_frame(&frame, wire::limit_for(to), &mut c.out) {
            warn!(node = %self.me, "not sending {} to {to}: {e}", describe(&frame));
            return;
        }
        if c.out.len() >= FLUSH_BYTES {
            self.write_out(id);
        } else if !self.dirty.contains(&id) {
            self.dirty.push(id);
        }
    }

    /// Writes every buffered frame.
    pub fn flush(&mut self) {
        let dirty = std::mem::take(&mut self.dirty);
        for id in dirty {
            self.write_out(id);
        }
    }

    fn write_out(&mut self, id: ConnId) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        if c.out.is_empty() {
            return;
        }
        let result = (&*c.stream).write_all(&c.out);
        c.out.clear();
        if c.out.capacity() > 4 * FLUSH_BYTES {
            c.out = Vec::new();
        }
        if let Err(e) = result {
            // A peer that stopped reading (or vanished): drop it; its reader
            // thread notices the shutdown and reports `Closed`.
            info!(node = %self.me, "dropping connection to {}: write failed: {e}", c.peer);
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

fn describe(frame: &Frame) -> &'static str {
    match frame {
        Frame::Msg(m) => m.kind(),
        Frame::Cluster(_) => "Cluster",
    }
}

/// Runs a node until it is told to stop and has drained (or its inputs end).
pub fn run<R: Role>(mut role: R, rx: Receiver<Input>, clock: Clock, stop_accepting: impl FnOnce()) {
    let me = role.me();
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
            apply(&mut role, &mut net, &mut out);
            if role.next_wakeup().is_some_and(|t| t <= now) {
                if !warned_spin {
                    warn!(node = %me, "machine wants another tick at {now} right after one: waiting 1ms");
                    warned_spin = true;
                }
                not_before = now + 1000;
            }
        }
        net.flush();
        role.sync(now, &mut out);
        if !out.is_empty() {
            apply(&mut role, &mut net, &mut out);
            net.flush();
        }
        role.maintain();
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
        if let Some(until) = drain_until {
            // While draining, look again often enough to notice the end.
            let soon = Instant::now() + Duration::from_millis(10);
            wake = Some(wake.map_or(until.min(soon), |w| w.min(until).min(soon)));
        }
        let first = match wake {
            Some(w) => rx.recv_deadline(w),
            None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        let mut input = match first {
            Ok(i) => Some(i),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        let mut handled = 0;
        while let Some(i) = input.take() {
            let now = clock.now();
            match i {
                Input::Connected { conn, peer, stream, dialed } => net.connected(conn, peer, stream, dialed),
                Input::Closed { conn } => net.closed(conn),
                Input::Frame { conn: _, from, frame } => {
                    role.on_frame(now, from, frame, &mut out, &mut net);
                    apply(&mut role, &mut net, &mut out);
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
                    apply(&mut role, &mut net, &mut out);
                }
            }
            handled += 1;
            if handled < MAX_BATCH {
                input = rx.try_recv().ok();
            }
        }
    }
    // Last words: everything buffered goes out, everything written is durable.
    let now = clock.now();
    net.flush();
    role.sync(now, &mut out);
    apply(&mut role, &mut net, &mut out);
    net.flush();
    net.close_all();
    debug!(node = %me, "node thread done");
}

/// Carries out a machine's effects in order.
fn apply<R: Role>(role: &mut R, net: &mut Net, out: &mut Outbox) {
    let me = role.me();
    for effect in out.drain() {
        match effect {
            Effect::Send { to, msg } => net.send(to, Frame::Msg(msg)),
            Effect::Persist { id, op } => role.persist(id, op),
            Effect::Event(e) => info!(node = %me, "{e}"),
            Effect::Done(c) => {
                debug!(node = %me, "completion #{} with no application to take it", c.seq)
            }
        }
    }
}
