//! A replica node: the [`Replica`] machine, its store, and dialers to its
//! peers.
//!
//! A replica starts knowing only its own number. The balancer's first frame
//! on every connection is a `Cluster` frame (the cluster configuration and
//! every replica's address); the replica builds its machine from it and its
//! store, and dials each peer. So `kvnode replica N` needs no flags beyond
//! where to listen, and replicas learn a moved peer from the next balancer
//! connection.

use super::net::{self, Accepting, DialSpec, Dialer, Input};
use super::node::{self, Net, Role};
use super::store::{Start, Store};
use super::{Clock, NodeHandle};
use crate::machine::{Outbox, PersistOp};
use crate::replica::Replica;
use crate::types::{NodeId, ReplicaId, Time};
use crate::wire::{ClusterInfo, Frame};
use crossbeam_channel::Sender;
use std::collections::BTreeMap;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tracing::{error, info, warn};

/// Inputs queued for a node at most; readers wait beyond that (and TCP pushes
/// back on the peer).
pub const INPUT_QUEUE: usize = 65_536;

pub struct ReplicaNode {
    id: ReplicaId,
    machine: Option<Replica>,
    info: Option<ClusterInfo>,
    store: Box<dyn Store>,
    /// The last persist id handed to the store, and the last made durable.
    written: u64,
    synced: u64,
    dialers: BTreeMap<ReplicaId, (String, Dialer)>,
    tx: Sender<Input>,
}

impl ReplicaNode {
    fn me_node(&self) -> NodeId {
        NodeId::Replica(self.id)
    }

    fn configure(&mut self, info: ClusterInfo, net: &mut Net) {
        if !info.config.replicas.contains(&self.id) {
            warn!(node = %self.me_node(), "ignoring a cluster configuration that does not list this replica");
            return;
        }
        let rebuild = match &self.info {
            None => true,
            Some(old) => old.config != info.config,
        };
        if rebuild {
            if self.machine.is_some() {
                warn!(node = %self.me_node(), "cluster configuration changed: restarting the replica machine from its store");
            }
            // Whatever was written becomes durable before it is read back.
            if let Err(e) = self.store.sync() {
                fail_stop(self.id, "sync", &e);
            }
            let start = match self.store.recover() {
                Ok(s) => s,
                Err(e) => fail_stop(self.id, "recover", &e),
            };
            let (replicas, sync_acks) = (info.config.replicas.len(), info.config.sync_acks);
            let machine = match start {
                Start::Recovered(stored) => {
                    info!(
                        node = %self.me_node(),
                        "replica machine starts: {replicas} replicas, sync_acks {sync_acks}; stored: {}",
                        describe_stored(&stored)
                    );
                    Replica::recover(self.id, info.config.clone(), stored)
                }
                Start::Missing(stored) => {
                    warn!(
                        node = %self.me_node(),
                        "replica machine starts: {replicas} replicas, sync_acks {sync_acks}; stored: {}; \
                         may lack rows it confirmed, so it catches up with a leader before it takes part \
                         in promotions as a whole replica",
                        describe_stored(&stored)
                    );
                    Replica::recover_missing(self.id, info.config.clone(), stored)
                }
                Start::Resync { promised } => {
                    warn!(
                        node = %self.me_node(),
                        "replica machine starts empty and re-syncs: {replicas} replicas, sync_acks {sync_acks}, promised {promised}"
                    );
                    Replica::resync(self.id, info.config.clone(), promised)
                }
            };
            self.machine = Some(machine);
            self.written = 0;
            self.synced = 0;
        }
        // Dial each peer at its (possibly new) address.
        let wanted: BTreeMap<ReplicaId, String> =
            info.addrs.iter().filter(|(r, _)| *r != self.id).cloned().collect();
        let stale: Vec<ReplicaId> = self
            .dialers
            .iter()
            .filter(|(r, (addr, _))| wanted.get(r) != Some(addr))
            .map(|(r, _)| *r)
            .collect();
        for r in stale {
            self.dialers.remove(&r);
            net.close_peer(NodeId::Replica(r));
        }
        for (r, addr) in wanted {
            if self.dialers.contains_key(&r) {
                continue;
            }
            let spec = DialSpec {
                me: self.me_node(),
                peer: NodeId::Replica(r),
                addr: addr.clone(),
                first: None,
                tx: self.tx.clone(),
            };
            match net::spawn_dialer(spec) {
                Ok(d) => {
                    self.dialers.insert(r, (addr, d));
                }
                Err(e) => warn!(node = %self.me_node(), "cannot start a dialer for r{}: {e}", r.0),
            }
        }
        self.info = Some(info);
    }
}

fn describe_stored(stored: &crate::machine::Stored) -> String {
    format!(
        "{}, {} rows after it, log ends {}, promised {}",
        match &stored.snapshot {
            Some(s) => format!("snapshot up to {} ({} keys)", s.last, s.kv.len()),
            None => "no snapshot".to_string(),
        },
        stored.rows.len(),
        stored.last(),
        stored.promised
    )
}

/// A replica that cannot persist must not go on acknowledging anything.
fn fail_stop(id: ReplicaId, what: &str, e: &io::Error) -> ! {
    error!(node = %NodeId::Replica(id), "store {what} failed: {e}; stopping");
    std::process::exit(1);
}

impl Role for ReplicaNode {
    fn me(&self) -> NodeId {
        self.me_node()
    }

    fn on_frame(&mut self, now: Time, from: NodeId, frame: Frame, out: &mut Outbox, net: &mut Net) {
        match frame {
            Frame::Cluster(info) => self.configure(info, net),
            Frame::Msg(msg) => match &mut self.machine {
                Some(m) => m.on_message(now, from, msg, out),
                None => {
                    tracing::debug!(node = %self.me_node(), "no cluster configuration yet; dropping {}", msg.kind())
                }
            },
        }
    }

    fn on_tick(&mut self, now: Time, out: &mut Outbox) {
        if let Some(m) = &mut self.machine {
            m.on_tick(now, out);
        }
    }

    fn next_wakeup(&self) -> Option<Time> {
        self.machine.as_ref().and_then(Replica::next_wakeup)
    }

    fn persist(&mut self, id: u64, op: PersistOp) {
        debug_assert!(id > self.written, "persist ids increase");
        if let Err(e) = self.store.write(op) {
            fail_stop(self.id, "write", &e);
        }
        self.written = id;
    }

    fn sync(&mut self, now: Time, out: &mut Outbox) {
        if self.written == self.synced {
            return;
        }
        if let Err(e) = self.store.sync() {
            fail_stop(self.id, "sync", &e);
        }
        self.synced = self.written;
        if let Some(m) = &mut self.machine {
            m.on_persisted(now, self.synced, out);
        }
    }

    fn maintain(&mut self) {
        if let Some(m) = &self.machine {
            if let Err(e) = self.store.maintain(m) {
                fail_stop(self.id, "snapshot", &e);
            }
        }
    }

    /// A leader waits until every row it has appended is committed (so every
    /// write it took is answered); a follower has nothing in flight.
    fn in_flight(&self) -> usize {
        self.machine.as_ref().map_or(0, |m| {
            let s = m.status();
            match s.leading {
                Some(_) => s.last.lsn.0.saturating_sub(s.commit.0) as usize,
                None => 0,
            }
        })
    }

    fn drain_timeout(&self) -> Duration {
        Duration::from_secs(1)
    }
}

/// How to start a replica node.
pub struct ReplicaOptions {
    pub id: ReplicaId,
    pub listen: String,
    pub store: Box<dyn Store>,
}

/// Binds, starts the acceptor and the node thread; returns once listening.
pub fn start_replica(opts: ReplicaOptions, clock: Clock) -> io::Result<NodeHandle> {
    let me = NodeId::Replica(opts.id);
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
            allowed: |p| matches!(p, NodeId::Balancer | NodeId::Replica(_)),
        },
    )?;
    let role = ReplicaNode {
        id: opts.id,
        machine: None,
        info: None,
        store: opts.store,
        written: 0,
        synced: 0,
        dialers: BTreeMap::new(),
        tx: tx.clone(),
    };
    let thread = std::thread::Builder::new().name(me.to_string()).spawn(move || {
        node::run(role, rx, clock, move || {
            stopping.store(true, Ordering::SeqCst);
            net::wake_acceptor(addr);
        })
    })?;
    Ok(NodeHandle::new(me, addr, tx, thread))
}
