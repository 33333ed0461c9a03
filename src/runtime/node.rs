//! The node thread: one per replica or balancer. It owns the machine and
//! every socket of the node ([`Net`], in `conns.rs`), and waits for
//! readiness no longer than the machine's `next_wakeup`.
//!
//! One pass of the loop: wait for readiness (or the next timer); read what
//! came and hand it to the machine (the cluster's connections first, then
//! clients', a bounded number of theirs per pass); tick the machine if its
//! time has come (after the pass's inputs, so it never judges on stale
//! news, as a balancer presuming a leader dead whose pongs were already
//! read); write every connection's buffered sends once; then make the
//! pass's persist operations durable in one step and report them done
//! (which may release more sends: group commit). Batching is what turns
//! many small messages into few system calls under load.
//!
//! A reply produced while handling a frame goes back on the connection
//! that frame came in on. Writes never block the node: what a peer does
//! not take waits in its buffer, up to a bound, then the peer is dropped.

use super::conns::Input;
pub use super::conns::{Net, NetOptions};
use super::net::ConnId;
use super::resp::{ClusterInfo, Item};
use super::{Clock, NodeHandle};
use crate::machine::{Effect, Outbox, PersistOp};
use crate::types::{NodeId, Time};
use crate::wire::Frame;
use crossbeam_channel::Receiver;
use std::io;
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

/// What other threads tell a node's thread (waking its loop).
pub enum Control {
    /// Stop accepting, finish or fail what is in flight, flush, and return.
    Shutdown,
}

/// How soon the loop looks again at RESP replies waiting for a cluster
/// view (a WAIT) that the last flush could not bring.
const VIEW_RETRY: Duration = Duration::from_millis(1);

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

/// Starts the node's thread: `role`'s machine and every socket of `o`.
pub(super) fn start<R: Role + Send + 'static>(
    role: R,
    o: NetOptions,
    clock: Clock,
) -> io::Result<NodeHandle> {
    let me = role.me();
    let addr = o.listener.local_addr()?;
    let resp_addr = o.resp_listener.as_ref().map(|l| l.local_addr()).transpose()?;
    let (net, waker) = Net::new(o)?;
    let (tx, rx) = crossbeam_channel::unbounded();
    let thread = std::thread::Builder::new().name(me.to_string()).spawn(move || run(role, net, rx, clock))?;
    let mut handle = NodeHandle::new(me, addr, tx, waker, thread);
    handle.resp_addr = resp_addr;
    Ok(handle)
}

/// Runs a node until it is told to stop and has drained.
pub fn run<R: Role>(mut role: R, mut net: Net, control: Receiver<Control>, clock: Clock) {
    let me = role.me();
    let panic_at = test_panic_at();
    let mut out = Outbox::new();
    let mut drain_until: Option<Instant> = None;
    // Guards against a machine that asks to be woken at a time already past
    // after a tick (the busy-loop bug): never wake sooner than this.
    let mut not_before = Time::ZERO;
    let mut warned_spin = false;
    let mut inputs: Vec<Input> = Vec::new();
    loop {
        // Wait for readiness, the machine's next timer, or the drain deadline.
        let mut wake = role.next_wakeup().map(|t| clock.instant(t.max(not_before)));
        let mut soonest = |at: Instant| wake = Some(wake.map_or(at, |w| w.min(at)));
        if net.has_dirty() {
            soonest(Instant::now() + VIEW_RETRY);
        }
        if let Some(at) = panic_at {
            soonest(at);
        }
        if let Some(until) = drain_until {
            // While draining, look again often enough to notice the end.
            soonest(until.min(Instant::now() + Duration::from_millis(10)));
        }
        net.poll(wake);
        if std::mem::take(&mut net.woken) {
            while let Ok(Control::Shutdown) = control.try_recv() {
                let now = clock.now();
                if drain_until.is_some() {
                    info!(node = %me, "second stop request: stopping now");
                    net.flush();
                    role.sync(now, &mut out);
                    net.close_all();
                    return;
                }
                info!(node = %me, "stopping: no new connections, draining requests in flight");
                net.stop_accepting();
                drain_until = Some(Instant::now() + role.drain_timeout());
                role.on_shutdown(now, &mut out);
                apply(&mut role, &mut net, &mut out, None);
            }
        }

        net.read(&mut inputs);
        for input in inputs.drain(..) {
            let now = clock.now();
            match input {
                Input::Resp { conn, item: Item::Info(section) } => {
                    let text = role.resp_info(now).map(|i| i.render(section.as_deref())).unwrap_or_default();
                    let mut b = Vec::new();
                    super::resp::codec::bulk(&mut b, text.as_bytes());
                    net.resp_item(conn, Item::Ready(b));
                }
                Input::Resp { conn, item } => net.resp_item(conn, item),
                Input::Frame { conn, from, frame } => {
                    if matches!(from, NodeId::Client(_)) {
                        net.note_resp_peer(conn, from);
                    }
                    role.on_frame(now, from, frame, &mut out, &mut net);
                    apply(&mut role, &mut net, &mut out, Some((from, conn)));
                }
            }
        }

        let now = clock.now();
        if role.next_wakeup().is_some_and(|t| t <= now) {
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
