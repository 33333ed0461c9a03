//! A replica node: the [`Replica`] machine, its store, and dialers to its
//! peers.
//!
//! A replica knows its cluster from its own command line (every replica's
//! address, `sync_acks`), kept with its data in `DIR/replica-N.cluster`
//! ([`super::cluster_file`]). Nothing a peer sends changes it: a balancer or
//! replica presents its own configuration in the handshake and is refused
//! when it differs, and peers are dialed only at the addresses given here.

use super::auth::Keys;
use super::net::{self, Accepting, DialSpec};
use super::node::{self, Net, NetOptions, Role};
use super::store::{Start, Store};
use super::{Clock, NodeHandle};
use crate::config::ClusterConfig;
use crate::machine::{Event, Outbox, PersistOp};
use crate::replica::Replica;
use crate::types::{NodeId, ReplicaId, Time};
use crate::wire::Frame;
use std::io;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;
use tracing::{error, info, warn};

pub struct ReplicaNode {
    id: ReplicaId,
    machine: super::record::Recorded<Replica>,
    store: Box<dyn Store>,
    /// The last persist id handed to the store, and the last made durable.
    written: u64,
    synced: u64,
}

impl ReplicaNode {
    fn me_node(&self) -> NodeId {
        NodeId::Replica(self.id)
    }
}

/// The replica machine, from what the store recovered; with `record`, its
/// recording starts there.
fn start_machine(
    id: ReplicaId,
    config: &ClusterConfig,
    store: &mut dyn Store,
    record: Option<&std::path::Path>,
    now: Time,
) -> io::Result<super::record::Recorded<Replica>> {
    let me = NodeId::Replica(id);
    let start = match store.recover() {
        Ok(s) => s,
        Err(e) => fail_stop(id, "recover", &e),
    };
    let incarnation = super::random_u64();
    let rec = super::record::Recorder::replica(record, id, config, &start, incarnation, now)?;
    let (replicas, sync_acks) = (config.replicas.len(), config.sync_acks);
    let machine = match start {
        Start::Recovered(stored) => {
            info!(
                node = %me,
                "replica machine starts: {replicas} replicas, sync_acks {sync_acks}; stored: {}",
                describe_stored(&stored)
            );
            Replica::recover(id, config.clone(), stored)
        }
        Start::Missing(stored) => {
            warn!(
                node = %me,
                "replica machine starts: {replicas} replicas, sync_acks {sync_acks}; stored: {}; \
                 may lack rows it confirmed, so it catches up with a leader before it takes part \
                 in promotions as a whole replica",
                describe_stored(&stored)
            );
            Replica::recover_missing(id, config.clone(), stored)
        }
        Start::Resync { promised } => {
            warn!(
                node = %me,
                "replica machine starts empty and re-syncs: {replicas} replicas, sync_acks {sync_acks}, promised {promised}"
            );
            Replica::resync(id, config.clone(), promised)
        }
    };
    // A new life: acknowledgements name it, so catching up is judged
    // against appends sent to this process, not to the one before.
    Ok(super::record::Recorded::new(machine.with_incarnation(incarnation), rec))
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

    fn on_frame(&mut self, now: Time, from: NodeId, frame: Frame, out: &mut Outbox, _net: &mut Net) {
        match frame {
            // Refused by the readers (`wire::accepts`): the configuration
            // belongs to the handshake.
            Frame::Cluster(_) => warn!(node = %self.me_node(), "ignoring a Cluster frame from {from}"),
            Frame::Msg(msg) => self.machine.on_message(now, from, msg, out),
        }
    }

    fn on_tick(&mut self, now: Time, out: &mut Outbox) {
        self.machine.on_tick(now, out);
    }

    fn notice(&mut self, e: &Event) -> Option<String> {
        let text = match e {
            Event::BecameLeader { epoch, last } => format!("leader of {epoch} (its log ends at {last})"),
            Event::SteppedDown { epoch, newer } => format!("no longer the leader of {epoch} (saw {newer})"),
            _ => return None,
        };
        Some(format!("kvnode replica {}: {text}", self.id.0))
    }

    fn next_wakeup(&self) -> Option<Time> {
        self.machine.next_wakeup()
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
            return self.machine.flush_record();
        }
        if let Err(e) = self.store.sync() {
            fail_stop(self.id, "sync", &e);
        }
        self.synced = self.written;
        self.machine.on_persisted(now, self.synced, out);
        self.machine.flush_record();
    }

    fn maintain(&mut self) {
        if let Err(e) = self.store.maintain(&self.machine) {
            fail_stop(self.id, "snapshot", &e);
        }
    }

    /// A leader waits until every row it has appended is committed (so every
    /// write it took is answered); a follower has nothing in flight.
    fn in_flight(&self) -> usize {
        let s = self.machine.status();
        match s.leading {
            Some(_) => s.last.lsn.0.saturating_sub(s.commit.0) as usize,
            None => 0,
        }
    }

    fn drain_timeout(&self) -> Duration {
        Duration::from_secs(1)
    }
}

/// How to start a replica node.
pub struct ReplicaOptions {
    pub id: ReplicaId,
    /// Where to listen (ignored when a listener is given to
    /// [`start_replica_on`]).
    pub listen: String,
    /// Every replica's address, replica 1 first (this one's included).
    pub peers: Vec<String>,
    pub config: ClusterConfig,
    pub store: Box<dyn Store>,
    pub keys: Keys,
    /// Listen beyond loopback without a cluster secret.
    pub insecure_open: bool,
    /// `--record DIR`: write DIR/rN (see [`super::record`]).
    pub record: Option<std::path::PathBuf>,
}

/// Binds, recovers the store, starts the acceptor, the dialers and the node
/// thread; returns once listening.
pub fn start_replica(opts: ReplicaOptions, clock: Clock) -> io::Result<NodeHandle> {
    let listener = net::bind(&opts.listen)?;
    start_replica_on(listener, opts, clock)
}

/// Like [`start_replica`], on a listener already bound (so that a process
/// running several replicas can learn every port before it starts any).
pub fn start_replica_on(listener: TcpListener, opts: ReplicaOptions, clock: Clock) -> io::Result<NodeHandle> {
    let me = NodeId::Replica(opts.id);
    let addr = listener.local_addr()?;
    super::auth::check_listen(addr, opts.keys.cluster.is_some(), opts.insecure_open)?;
    let n = opts.config.replicas.len();
    if opts.peers.len() != n || !opts.config.replicas.contains(&opts.id) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("replica {} in a cluster of {n} replicas with {} addresses", opts.id.0, opts.peers.len()),
        ));
    }
    let mut store = opts.store;
    let machine = start_machine(opts.id, &opts.config, store.as_mut(), opts.record.as_deref(), clock.now())?;
    let members = opts.config.replicas.clone();
    let id = opts.id;
    let allowed = Arc::new(move |h: &crate::wire::Hello| match h.from {
        NodeId::Balancer => Ok(()),
        NodeId::Replica(r) if r != id && members.contains(&r) => Ok(()),
        other => Err(format!("{other} may not connect to {}", NodeId::Replica(id))),
    });
    let dials = opts
        .peers
        .iter()
        .enumerate()
        .filter(|(i, _)| ReplicaId(*i as u8 + 1) != opts.id)
        .map(|(i, peer_addr)| DialSpec {
            peer: NodeId::Replica(ReplicaId(i as u8 + 1)),
            addr: peer_addr.clone(),
            config: Some(opts.config.clone()),
            loud: false,
        })
        .collect();
    let accepting = Accepting {
        me,
        allowed,
        keys: opts.keys.clone(),
        config: Some(opts.config.clone()),
        client_idle: net::CLIENT_IDLE_TIMEOUT,
    };
    let role = ReplicaNode { id: opts.id, machine, store, written: 0, synced: 0 };
    node::start(role, NetOptions { me, listener, resp_listener: None, accepting, dials }, clock)
}
