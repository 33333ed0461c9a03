//! The balancer node: the [`Balancer`] machine, clients' connections, and
//! one dialer per replica.
//!
//! Replicas are numbered by their position on the command line (the first
//! address is replica 1), as in the original where `server 1` listened on
//! 8081. Each dialer checks that the replica it reached says it is that
//! number, then sends it the `Cluster` frame (configuration and every
//! replica's address) before anything else.

use super::net::{self, Accepting, DialSpec, Dialer};
use super::node::{self, Net, Role};
use super::replica_node::INPUT_QUEUE;
use super::{Clock, NodeHandle};
use crate::balancer::Balancer;
use crate::config::ClusterConfig;
use crate::machine::Outbox;
use crate::types::{NodeId, ReplicaId, Time};
use crate::wire::{ClusterInfo, Frame};
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub struct BalancerNode {
    machine: Balancer,
    drain: Duration,
    _dialers: Vec<Dialer>,
}

impl Role for BalancerNode {
    fn me(&self) -> NodeId {
        NodeId::Balancer
    }

    fn on_frame(&mut self, now: Time, from: NodeId, frame: Frame, out: &mut Outbox, _net: &mut Net) {
        let Frame::Msg(msg) = frame else { return };
        self.machine.on_message(now, from, msg, out);
    }

    fn on_tick(&mut self, now: Time, out: &mut Outbox) {
        self.machine.on_tick(now, out);
    }

    fn next_wakeup(&self) -> Option<Time> {
        self.machine.next_wakeup()
    }

    fn on_shutdown(&mut self, _now: Time, _out: &mut Outbox) {
        // New requests are answered at once (`unavailable` where certain).
        self.machine.stop_accepting();
    }

    /// Every request taken has been answered (the machine times out what
    /// the replicas do not answer, so this comes within its request timeout).
    fn in_flight(&self) -> usize {
        self.machine.pending_requests()
    }

    fn drain_timeout(&self) -> Duration {
        self.drain
    }
}

pub struct BalancerOptions {
    pub listen: String,
    /// Replica `i + 1` listens at `replicas[i]`.
    pub replicas: Vec<String>,
    pub sync_acks: usize,
    pub unsafe_failover: bool,
}

impl BalancerOptions {
    pub fn cluster(&self) -> io::Result<ClusterInfo> {
        let n = self.replicas.len();
        if n == 0 || n > u8::MAX as usize {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("need 1 to 255 replicas, got {n}"),
            ));
        }
        let mut config = ClusterConfig::new(n as u8, self.sync_acks);
        config.unsafe_failover = self.unsafe_failover;
        let addrs =
            self.replicas.iter().enumerate().map(|(i, a)| (ReplicaId(i as u8 + 1), a.clone())).collect();
        Ok(ClusterInfo { config, addrs })
    }
}

pub fn start_balancer(opts: BalancerOptions, clock: Clock) -> io::Result<NodeHandle> {
    let me = NodeId::Balancer;
    let info = opts.cluster()?;
    let listener = net::bind(&opts.listen)?;
    let addr = listener.local_addr()?;
    let (tx, rx) = crossbeam_channel::bounded(INPUT_QUEUE);
    let stopping = Arc::new(AtomicBool::new(false));
    net::spawn_acceptor(
        listener,
        Accepting {
            me,
            tx: tx.clone(),
            stopping: stopping.clone(),
            allowed: |p| matches!(p, NodeId::Client(_)),
        },
    )?;
    let mut dialers = Vec::new();
    for (r, a) in &info.addrs {
        dialers.push(net::spawn_dialer(DialSpec {
            me,
            peer: NodeId::Replica(*r),
            addr: a.clone(),
            first: Some(Frame::Cluster(info.clone())),
            tx: tx.clone(),
        })?);
    }
    let timing = &info.config.timing;
    // Long enough for the machine to answer or time out every request.
    let drain = Duration::from_micros(timing.request_timeout_us + 2 * crate::balancer::TICK_US);
    let role = BalancerNode {
        machine: Balancer::new(info.config.clone(), clock.now(), incarnation()),
        drain,
        _dialers: dialers,
    };
    let thread = std::thread::Builder::new().name(me.to_string()).spawn(move || {
        node::run(role, rx, clock, move || {
            stopping.store(true, Ordering::SeqCst);
            net::wake_acceptor(addr);
        })
    })?;
    Ok(NodeHandle::new(me, addr, tx, thread))
}

/// A number that differs between runs of this balancer process: request tags
/// start from it, so a late answer to a previous run's request is never taken
/// for one of ours.
fn incarnation() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    nanos ^ ((std::process::id() as u64) << 40)
}
