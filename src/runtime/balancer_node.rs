//! The balancer node: the [`Balancer`] machine, clients' connections, and
//! a connection it keeps up to each replica, all on one thread.
//!
//! Replicas are numbered by their position on the command line (the first
//! address is replica 1), as in the original where `server 1` listened on
//! 8081. Each dialer checks, in the handshake, that the replica it reached
//! proves the cluster secret and says it is that number, and presents the
//! balancer's configuration (the replica refuses one unlike its own).

use super::auth::Keys;
use super::net::{self, Accepting, DialSpec};
use super::node::{self, Net, NetOptions, Role};
use super::{Clock, NodeHandle};
use crate::balancer::Balancer;
use crate::config::ClusterConfig;
use crate::machine::{Event, Outbox};
use crate::msg::{ClusterView, Msg};
use crate::types::{NodeId, ReplicaId, Time};
use crate::wire::Frame;
use std::io;
use std::sync::Arc;
use std::time::Duration;

pub struct BalancerNode {
    machine: super::record::Recorded<Balancer>,
    drain: Duration,
    /// Replica `i + 1`'s address, for status answers and INFO.
    addrs: Vec<String>,
    /// The last notice said promotions stall: the next stall is not news.
    stalled: bool,
}

impl BalancerNode {
    /// The machine's view with every replica's address.
    fn view(&self, now: Time) -> ClusterView {
        let mut view = self.machine.view(now);
        for r in &mut view.replicas {
            if let Some(a) = self.addrs.get(usize::from(r.id.0).wrapping_sub(1)) {
                r.addr = a.clone();
            }
        }
        view
    }
}

/// One line about a leadership change, as `kvnode balancer` prints it.
pub fn leadership_notice(e: &Event, replicas: usize) -> Option<String> {
    let text = match e {
        Event::Promoted { leader, epoch, last, heard } => format!(
            "r{} is the leader of {epoch} (promoted; its log ends at {last}; promises from {heard} of {replicas} replicas)",
            leader.0
        ),
        Event::Adopted { leader, epoch } => {
            format!("r{} is the leader of {epoch} (found it leading)", leader.0)
        }
        Event::LeaderLost { leader, epoch } => {
            format!("lost the leader r{} of {epoch}; promoting another replica", leader.0)
        }
        Event::PromotionStalled { epoch, heard, needed } => format!(
            "no leader: promoting for {epoch} needs promises from {needed} replicas, heard from {heard}; \
             writes are unavailable until enough replicas answer (trying again)"
        ),
        _ => return None,
    };
    Some(format!("kvnode balancer: {text}"))
}

impl Role for BalancerNode {
    fn me(&self) -> NodeId {
        NodeId::Balancer
    }

    fn on_frame(&mut self, now: Time, from: NodeId, frame: Frame, out: &mut Outbox, _net: &mut Net) {
        let Frame::Msg(msg) = frame else { return };
        if let Msg::StatusQuery { tag } = msg {
            // Answered here, not by the machine: only the node knows the
            // addresses. Reading the view changes nothing in the machine.
            out.send(from, Msg::StatusAnswer { tag, view: self.view(now) });
            return;
        }
        self.machine.on_message(now, from, msg, out);
    }

    fn notice(&mut self, e: &Event) -> Option<String> {
        let stall = matches!(e, Event::PromotionStalled { .. });
        match e {
            Event::PromotionStalled { .. } if self.stalled => return None,
            Event::Promoted { .. }
            | Event::Adopted { .. }
            | Event::LeaderLost { .. }
            | Event::PromotionStalled { .. } => self.stalled = stall,
            _ => return None,
        }
        leadership_notice(e, self.addrs.len())
    }

    fn on_tick(&mut self, now: Time, out: &mut Outbox) {
        self.machine.on_tick(now, out);
    }

    fn next_wakeup(&self) -> Option<Time> {
        self.machine.next_wakeup()
    }

    fn sync(&mut self, _now: Time, _out: &mut Outbox) {
        self.machine.flush_record();
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

    fn resp_info(&self, now: Time) -> Option<super::resp::ClusterInfo> {
        let view = self.view(now);
        let replicas = view
            .replicas
            .into_iter()
            .map(|r| super::resp::ReplicaInfo {
                id: r.id,
                addr: r.addr,
                alive: r.alive,
                since_pong_ms: r.heard_us_ago.map(|us| us / 1000),
                status: r.status,
            })
            .collect();
        Some(super::resp::ClusterInfo {
            phase: view.phase,
            leader: self.machine.leader(),
            epoch: view.epoch,
            sync_acks: self.machine.config().sync_acks,
            pending_requests: self.machine.pending_requests(),
            replicas,
        })
    }
}

pub struct BalancerOptions {
    pub listen: String,
    /// Replica `i + 1` listens at `replicas[i]`.
    pub replicas: Vec<String>,
    pub sync_acks: usize,
    pub unsafe_failover: bool,
    pub keys: Keys,
    /// Listen beyond loopback without a cluster secret.
    pub insecure_open: bool,
    /// A client connection silent this long after its hello is closed.
    pub client_idle: Duration,
    /// Where to serve the Redis protocol (RESP2) too, if anywhere.
    pub resp: Option<String>,
    /// `--record DIR`: write DIR/lb (see [`super::record`]).
    pub record: Option<std::path::PathBuf>,
}

impl BalancerOptions {
    pub fn config(&self) -> io::Result<ClusterConfig> {
        let n = self.replicas.len();
        crate::config::check_cluster(n, self.sync_acks)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        if let Some(a) = self.replicas.iter().find(|a| a.len() > crate::wire::MAX_STATUS_ADDR_BYTES) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "a replica address of {} bytes (at most {})",
                    a.len(),
                    crate::wire::MAX_STATUS_ADDR_BYTES
                ),
            ));
        }
        let mut config = ClusterConfig::new(n as u8, self.sync_acks);
        config.unsafe_failover = self.unsafe_failover;
        Ok(config)
    }
}

pub fn start_balancer(opts: BalancerOptions, clock: Clock) -> io::Result<NodeHandle> {
    let me = NodeId::Balancer;
    let config = opts.config()?;
    let listener = net::bind(&opts.listen)?;
    let addr = listener.local_addr()?;
    super::auth::check_listen(addr, opts.keys.cluster.is_some(), opts.insecure_open)?;
    let allowed = Arc::new(|h: &crate::wire::Hello| match h.from {
        NodeId::Client(_) => Ok(()),
        other => Err(format!("{other} may not connect to the balancer")),
    });
    let dials = opts
        .replicas
        .iter()
        .enumerate()
        .map(|(i, a)| DialSpec {
            peer: NodeId::Replica(ReplicaId(i as u8 + 1)),
            addr: a.clone(),
            config: Some(config.clone()),
            loud: true,
        })
        .collect();
    let resp_listener = match &opts.resp {
        Some(at) => Some(super::resp::bind(at, &opts.keys, opts.insecure_open)?),
        None => None,
    };
    let timing = &config.timing;
    let (now, incarnation) = (clock.now(), incarnation());
    let rec = super::record::Recorder::balancer(opts.record.as_deref(), &config, now, incarnation)?;
    // Long enough for the machine to answer or time out every request.
    let drain = Duration::from_micros(timing.request_timeout_us + 2 * crate::balancer::TICK_US);
    let role = BalancerNode {
        machine: super::record::Recorded::new(Balancer::new(config.clone(), now, incarnation), rec),
        drain,
        addrs: opts.replicas.clone(),
        stalled: false,
    };
    let accepting =
        Accepting { me, allowed, keys: opts.keys.clone(), config: None, client_idle: opts.client_idle };
    node::start(role, NetOptions { me, listener, resp_listener, accepting, dials }, clock)
}

/// A number that differs between runs of this balancer process: request tags
/// start from it, so a late answer to a previous run's request is never taken
/// for one of ours.
/// The balancer's incarnation, which is also its promotions' ballot: 64
/// random bits from the OS, so no two runs share one (two attempts with one
/// ballot in one epoch would break promise-once).
fn incarnation() -> u64 {
    super::random_u64()
}
