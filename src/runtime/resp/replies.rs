//! The node thread's side of a RESP connection: the replies it owes, in
//! the order the commands came, each written once the requests it waits
//! for are answered.

use super::codec;
use super::Flight;
use crate::msg::{Reply, Status};
use crate::types::{Epoch, Lsn, OpError, ReplicaId, RequestId};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

/// What a reader thread tells the node about one command, before the
/// requests the command makes (the clients' channel keeps them in order).
pub enum Item {
    /// An answer ready now.
    Ready(Vec<u8>),
    /// An answer made from the results of the requests feeding tickets
    /// `seqs`, once all came.
    Await { shape: Shape, seqs: Vec<u64> },
    /// `INFO [section]`: made by the node from what the balancer knows now.
    Info(Option<String>),
    /// `WAIT numreplicas`: answered in turn (after the connection's earlier
    /// writes) from the balancer's latest view of the replicas.
    Wait(i64),
    /// Close the connection once everything before it is written.
    Close,
}

/// How a command's results become its reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// GET: the value, or nil.
    Get,
    /// SET, MSET: `+OK` when every write succeeded.
    Ok,
    /// MGET: an array of values or nils.
    Values,
    /// EXISTS: how many of the reads found a value.
    Count,
    /// DEL: the first `reads` requests are leader reads of the keys, the
    /// rest their deletes; the count is of keys the reads found.
    Del { reads: usize },
}

impl Shape {
    fn writes(self) -> bool {
        matches!(self, Shape::Ok | Shape::Del { .. })
    }
}

/// What the balancer machine knows of the cluster, for INFO and WAIT.
#[derive(Clone, Debug, Default)]
pub struct ClusterInfo {
    pub phase: crate::msg::Phase,
    pub leader: Option<(ReplicaId, Epoch)>,
    /// The leader's epoch; while promoting, the one being promoted; while
    /// discovering, the newest seen.
    pub epoch: Epoch,
    pub sync_acks: usize,
    pub pending_requests: usize,
    pub replicas: Vec<ReplicaInfo>,
}

#[derive(Clone, Debug)]
pub struct ReplicaInfo {
    pub id: ReplicaId,
    pub addr: String,
    pub alive: bool,
    /// Milliseconds since its last pong (None: never heard from).
    pub since_pong_ms: Option<u64>,
    pub status: Status,
}

impl ClusterInfo {
    /// Followers (replicas other than the leader) that hold `lsn`, as far
    /// as their latest pongs say; all live followers for `Lsn(0)`.
    fn followers_holding(&self, lsn: Lsn) -> usize {
        let leader = self.leader.map(|(r, _)| r);
        self.replicas.iter().filter(|r| Some(r.id) != leader && r.alive && r.status.last.lsn >= lsn).count()
    }

    fn followers(&self) -> usize {
        let leader = self.leader.map(|(r, _)| r);
        self.replicas.iter().filter(|r| Some(r.id) != leader).count()
    }

    /// The `INFO` text (sections Server, Clients, Replication).
    pub fn render(&self, section: Option<&str>) -> String {
        use std::fmt::Write;
        let want = |s: &str| {
            section.is_none_or(|w| {
                w.eq_ignore_ascii_case(s) || w == "all" || w == "everything" || w == "default"
            })
        };
        let mut t = String::new();
        if want("server") {
            t.push_str("# Server\r\nredis_version:7.0.0\r\nredis_mode:standalone\r\n");
            let _ = write!(t, "kvstore_version:{}\r\n", env!("CARGO_PKG_VERSION"));
            t.push_str("\r\n");
        }
        if want("replication") {
            let leader = self.leader.map(|(r, _)| r);
            t.push_str("# Replication\r\nrole:master\r\n");
            let _ = write!(t, "kvstore_phase:{}\r\n", self.phase);
            let epoch = self.leader.map_or(self.epoch, |(_, e)| e);
            let _ = write!(t, "epoch:{}\r\n", epoch.0);
            match self.leader.and_then(|(l, _)| self.replicas.iter().find(|r| r.id == l)) {
                Some(l) => {
                    let _ = write!(
                        t,
                        "leader:replica{} addr={} lsn={} commit={}\r\n",
                        l.id.0, l.addr, l.status.last.lsn, l.status.commit
                    );
                }
                None => t.push_str("leader:none\r\n"),
            }
            let _ = write!(t, "sync_acks:{}\r\n", self.sync_acks);
            let online = self.replicas.iter().filter(|r| Some(r.id) != leader && r.alive).count();
            let _ = write!(t, "connected_slaves:{online}\r\n");
            let leader_lsn =
                self.replicas.iter().find(|r| Some(r.id) == leader).map_or(Lsn(0), |r| r.status.last.lsn);
            let mut k = 0;
            for r in &self.replicas {
                let lag = leader_lsn.0.saturating_sub(r.status.applied.0);
                let pong = r.since_pong_ms.map_or("never".to_string(), |ms| ms.to_string());
                let role = if Some(r.id) == leader { "leader" } else { "follower" };
                let state = if r.alive { "online" } else { "down" };
                let _ = write!(
                    t,
                    "replica{}:addr={},role={role},state={state},epoch={},lsn={},applied={},lag={lag},last_pong_ms={pong}\r\n",
                    r.id.0, r.addr, r.status.promised.0, r.status.last.lsn, r.status.applied
                );
                if Some(r.id) != leader && r.alive {
                    let (ip, port) = r.addr.rsplit_once(':').unwrap_or((r.addr.as_str(), "0"));
                    let _ = write!(
                        t,
                        "slave{k}:ip={ip},port={port},state=online,offset={},lag={lag}\r\n",
                        r.status.last.lsn
                    );
                    k += 1;
                }
            }
            let _ = write!(t, "master_repl_offset:{}\r\n", leader_lsn.0);
            t.push_str("\r\n");
        }
        if want("clients") {
            let _ = write!(t, "# Clients\r\npending_requests:{}\r\n\r\n", self.pending_requests);
        }
        t
    }
}

/// One RESP connection's owed replies.
pub struct Replies {
    pub(super) flight: Arc<Flight>,
    queue: VecDeque<Item>,
    results: BTreeMap<u64, Result<Reply, OpError>>,
    awaited: BTreeSet<u64>,
    /// The LSN of the connection's newest acknowledged write.
    last_write: Lsn,
    /// A `Close` reached the head: close once the output is written.
    pub closing: bool,
    /// WAITs queued: the node hands the cluster view to a flush then.
    waits: usize,
}

impl Replies {
    pub fn new(flight: Arc<Flight>) -> Replies {
        Replies {
            flight,
            queue: VecDeque::new(),
            results: BTreeMap::new(),
            awaited: BTreeSet::new(),
            last_write: Lsn(0),
            closing: false,
            waits: 0,
        }
    }

    /// A command's item (`Info` already made into `Ready` by the node).
    pub fn push(&mut self, item: Item) {
        if let Item::Await { seqs, .. } = &item {
            self.awaited.extend(seqs.iter().copied());
        }
        if matches!(item, Item::Wait(_)) {
            self.waits += 1;
        }
        self.queue.push_back(item);
    }

    /// The connection is gone: wake its reader.
    pub fn close(&self) {
        self.flight.close();
    }

    /// Whether a WAIT is queued (it needs the cluster view when its turn
    /// comes, perhaps in this flush).
    pub fn wants_info(&self) -> bool {
        self.waits > 0
    }

    /// The balancer answered request `id`.
    pub fn on_response(&mut self, id: RequestId, result: Result<Reply, OpError>) {
        let lsn = result.as_ref().map_or(Lsn(0), |r| r.lsn);
        let Some(ticket) = self.flight.release(id, lsn) else { return };
        if self.awaited.remove(&ticket) {
            self.results.insert(ticket, result);
        }
    }

    /// Encodes every reply now complete at the head of the queue into `out`.
    pub fn pump(&mut self, info: Option<&ClusterInfo>, out: &mut Vec<u8>) {
        let (mut popped, mut ready_bytes) = (0, 0);
        while let Some(head) = self.queue.front() {
            match head {
                Item::Await { seqs, .. } if !seqs.iter().all(|s| self.results.contains_key(s)) => break,
                Item::Wait(_) if info.is_none() => break,
                _ => {}
            }
            let Some(entry) = self.queue.pop_front() else { break };
            popped += 1;
            match entry {
                Item::Ready(bytes) => {
                    ready_bytes += bytes.len();
                    out.extend_from_slice(&bytes)
                }
                Item::Await { shape, seqs } => {
                    let results: Vec<Result<Reply, OpError>> =
                        seqs.iter().filter_map(|s| self.results.remove(s)).collect();
                    self.encode(shape, &results, out);
                }
                Item::Info(_) => codec::error(out, "ERR INFO not available"),
                Item::Wait(_) => {
                    self.waits -= 1;
                    let info = info.expect("checked above");
                    let mut n = info.followers_holding(self.last_write);
                    if self.last_write > Lsn(0) {
                        // Acknowledged: on sync_acks followers' disks at least.
                        n = n.max(info.sync_acks.min(info.followers()));
                    }
                    codec::int(out, n as i64);
                }
                Item::Close => {
                    self.closing = true;
                    self.waits = 0;
                    self.queue.clear();
                }
            }
        }
        if popped > 0 {
            self.flight.release_items(popped, ready_bytes);
        }
    }

    fn encode(&mut self, shape: Shape, results: &[Result<Reply, OpError>], out: &mut Vec<u8>) {
        if shape.writes() {
            for r in results.iter().flatten() {
                self.last_write = self.last_write.max(r.lsn);
            }
        }
        if let Some(e) = results.iter().find_map(|r| r.as_ref().err()) {
            return codec::error(out, &error_text(e));
        }
        let values = || results.iter().map(|r| r.as_ref().ok().and_then(|r| r.value.as_deref()));
        match shape {
            Shape::Get => match values().next().flatten() {
                Some(v) => codec::bulk(out, v.as_bytes()),
                None => codec::nil(out),
            },
            Shape::Ok => codec::simple(out, "OK"),
            Shape::Values => {
                codec::array(out, results.len());
                for v in values() {
                    match v {
                        Some(v) => codec::bulk(out, v.as_bytes()),
                        None => codec::nil(out),
                    }
                }
            }
            Shape::Count => codec::int(out, values().filter(Option::is_some).count() as i64),
            Shape::Del { reads } => {
                codec::int(out, values().take(reads).filter(Option::is_some).count() as i64)
            }
        }
    }
}

/// A failed request as a RESP error: a code word first, as Redis does.
pub fn error_text(e: &OpError) -> String {
    match e {
        OpError::Unavailable => format!("UNAVAILABLE {e} (not applied)"),
        OpError::Timeout => format!("TIMEOUT {e}"),
        OpError::Invalid(_) => format!("ERR {e}"),
        OpError::Overloaded => format!("BUSY {e}"),
    }
}
