//! Exhaustive bounded model checking of the real machines.
//!
//! A breadth-first search over every interleaving of a small cluster's
//! inputs, up to a number of actions, driving the very `Replica`, `Balancer`
//! and `Client` that the simulator and kvnode run (nothing is copied or
//! abstracted: each action is one call into a machine). It stops at the
//! first violation, and breadth first means its path is a shortest one.
//!
//! **State.** The machines are neither `Clone` nor `Hash`, so a state keeps,
//! for each node, what it was started from (a replica's `Stored`, a
//! balancer's start time and incarnation) and the inputs it has had since,
//! and rebuilds a machine by replaying them. Replays are rare: machines are
//! deterministic, so what one input does to one node state is memoized
//! under (node, hash chain of its inputs, input), and the same local step
//! recurs in many global states (that recurrence is what makes the state
//! space large). Around the machines: the messages in flight, each replica's
//! disk (what completed, and the persists still pending), fault counters,
//! and what the properties need.
//!
//! **Actions**, each one step of a path: deliver a message in flight (any
//! of them, or with `fifo` the oldest on its link), possibly leaving a
//! duplicate in flight (a duplicate only matters once one copy arrives, so
//! every path that duplicates earlier is equivalent to one doing it there);
//! drop the message at the head of a link (`fifo` only: without it, a
//! message never delivered is as good as lost); complete a replica's oldest
//! pending persist (or, with `instant_disk`, persists complete within the
//! step that issued them); tick a node (its clock jumps to its
//! `next_wakeup`: each node has a clock of its own that only goes forward,
//! and the machines only compare times they were given); crash a replica
//! (memory and unsynced persists are lost; it comes back at once through
//! `Stored::apply` over what completed and `Replica::recover`: staying
//! down is the same as never being scheduled, except that messages sent to
//! it stay in flight, as they do in the simulator); crash and restart the
//! balancer (a new incarnation, so a new ballot; client requests in flight
//! to the old one are lost, as in the simulator); submit a client's next
//! scripted operation.
//!
//! **Fingerprint**, for deduplication: per node, a hash chain of the inputs
//! it has had (a crash or restart is an input too, so the chain covers past
//! incarnations); the multiset of messages in flight, by content; the
//! budgets used that no chain records (duplicates, drops, pongs); and the
//! order of client invocations and completions (what linearizability
//! depends on). Machines being deterministic, equal fingerprints are equal
//! states, and everything the properties look at (who led which epoch,
//! committed rows, acknowledged writes, client results) is a function of
//! them. One input is taken as changing nothing: a `Ping` delivered to a
//! replica (`Replica::on_message` only answers it), and only when the
//! replica's status and next wake-up are the same after and its only
//! effect is the `Pong`. Pings and pongs on one link supersede each other
//! (an older one still in flight is lost, which the network may do).
//!
//! **Properties**, checked after every action: an epoch is led by one
//! replica incarnation at most, over the whole path (every
//! `Event::BecameLeader`, with the replica's incarnation); a log position
//! once committed anywhere holds the same row wherever and whenever it is
//! committed (so logs agree up to the smaller commit point, and a later
//! leader that committed past an acknowledged write holds it); a write
//! acknowledged at an LSN is the row committed there; the client results
//! are linearizable (brute force over the few operations: a write that
//! timed out or is unfinished may take effect or not, one refused did
//! not); no machine asks to be woken at or before `now` after a tick; no
//! machine panics.
//!
//! **Bounds**: the depth, a budget per fault (duplicates, drops, replica
//! crashes, balancer restarts), timer ticks per role, and pongs the
//! balancer hears (pings and pongs are most of the state space: each
//! balancer tick sends three, and every order of their answers is a state).
//! A search may start from a fresh cluster or from one that a fixed
//! fault-free setup brought to r1's election (`Origin`); the setup heads
//! the counterexample's trace.

// The visited set is a HashSet of fingerprints: membership only, never
// iterated into output. The search's wall time is measured for the report,
// never fed to a machine.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use kvstore::balancer::Balancer;
use kvstore::client::{Client, ClientConfig};
use kvstore::config::Timing;
use kvstore::msg::{Reply, ShowValue, Status};
use kvstore::replica::Replica;
use kvstore::{
    ClientId, ClusterConfig, Effect, Epoch, Event, Lsn, Msg, NodeId, Op, OpError, Outbox, ReadMode,
    ReplicaId, RequestId, Row, RowBody, Stored, Time,
};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt::{self, Write as _};
use std::hash::{BuildHasherDefault, Hasher};
use std::rc::Rc;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------- bounds

/// One client: its read mode and the operations it submits, in order (one
/// at a time: the next only once the previous finished).
#[derive(Clone, Debug)]
pub struct ClientSpec {
    pub read: ReadMode,
    pub ops: Vec<Op>,
}

/// Where the search starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Nothing on any disk, every clock at zero, nothing in flight.
    Fresh,
    /// From `Fresh`, a fault-free run (oldest message first, then the
    /// oldest persist, then the earliest timer) up to the moment r1 has
    /// become leader of e1 and the balancer sends it requests: r1's first
    /// appends and its no-op row's persist are still under way, r2 and r3
    /// have promised e1 and follow no one yet. The setup's actions head the
    /// counterexample's trace.
    Elected,
    /// From `Elected`, on (fault-free, same order) until r1's no-op row is
    /// committed on every replica and nothing is in flight or pending: a
    /// cluster at rest, r2 and r3 following r1.
    Settled,
}

/// Timer ticks per path at most, by role (each role's nodes together).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ticks {
    pub balancer: u32,
    pub replicas: u32,
    pub clients: u32,
}

impl Ticks {
    pub const UNBOUNDED: Ticks = Ticks { balancer: u32::MAX, replicas: u32::MAX, clients: u32::MAX };
}

/// What the search explores.
#[derive(Clone, Debug)]
pub struct Bounds {
    pub origin: Origin,
    /// Actions per path at most (after the setup).
    pub depth: usize,
    /// The cluster (its replicas, timing and `[bugs]`).
    pub cfg: ClusterConfig,
    pub clients: Vec<ClientSpec>,
    pub client_retry_us: u64,
    pub client_timeout_us: u64,
    /// Fault budgets, per path.
    pub max_duplicates: u32,
    pub max_drops: u32,
    pub max_replica_crashes: u32,
    pub max_balancer_restarts: u32,
    /// Timer ticks per path at most.
    pub max_ticks: Ticks,
    /// Pongs the balancer hears per path at most (a ping is delivered only
    /// while its pong could be). Once spent, pings and pongs are as good as
    /// lost: replicas look silent to the balancer, which the fault model
    /// allows (a slow or lossy link), and the balancer acts on that.
    pub max_pongs: u32,
    /// Messages on one link arrive in the order sent (TCP, as in kvnode);
    /// otherwise any message in flight may arrive next (the simulator).
    /// Pings and pongs are never held up behind each other or others.
    pub fifo: bool,
    /// Persists complete within the step that issued them (a disk with no
    /// latency: a crash then never loses an unsynced write), instead of
    /// each being an action of its own.
    pub instant_disk: bool,
    /// Stop (inconclusive) after this many distinct states (memory: about
    /// a kilobyte for each state of the deepest level kept).
    pub max_states: u64,
    /// Print a line per depth level to stderr.
    pub progress: bool,
}

/// Small timeouts: the balancer looks at its timers every 10 ms
/// (`balancer::TICK_US`), so a fresh balancer decides after 3 ticks, a
/// promotion times out after 1 more, and a leader is presumed dead 3 ticks
/// after its last pong.
pub fn small_timing() -> Timing {
    Timing {
        heartbeat_us: 10_000,
        ping_us: 10_000,
        dead_after_us: 20_000,
        promote_timeout_us: 10_000,
        forward_retry_us: 20_000,
        request_timeout_us: 40_000,
    }
}

fn set(key: &str, value: &str) -> Op {
    Op::Set { key: key.into(), value: value.into() }
}

impl Bounds {
    /// Three replicas (semi-synchronous), one balancer, no clients.
    pub fn cluster(depth: usize) -> Bounds {
        let mut cfg = ClusterConfig::new(3, 1);
        cfg.timing = small_timing();
        Bounds {
            origin: Origin::Fresh,
            depth,
            cfg,
            clients: Vec::new(),
            client_retry_us: 30_000,
            client_timeout_us: 60_000,
            max_duplicates: 0,
            max_drops: 0,
            max_replica_crashes: 0,
            max_balancer_restarts: 0,
            max_ticks: Ticks::UNBOUNDED,
            max_pongs: u32::MAX,
            fifo: false,
            instant_disk: false,
            max_states: 5_000_000,
            progress: false,
        }
    }

    /// The workload of the issue: two clients set the same key, and the
    /// first then reads it in `leader` mode.
    pub fn with_workload(mut self) -> Bounds {
        self.clients = vec![
            ClientSpec { read: ReadMode::Leader, ops: vec![set("x", "a"), Op::Get { key: "x".into() }] },
            ClientSpec { read: ReadMode::Leader, ops: vec![set("x", "b")] },
        ];
        self
    }

    /// Election under every fault: a fresh cluster, no clients; one
    /// duplicate, one replica crash, one balancer restart; the balancer
    /// hears 3 pongs and ticks 5 times, replicas tick once.
    pub fn election() -> Bounds {
        let mut b = Bounds::cluster(7);
        b.max_duplicates = 1;
        b.max_replica_crashes = 1;
        b.max_balancer_restarts = 1;
        b.max_pongs = 3;
        b.max_ticks = Ticks { balancer: 5, replicas: 1, clients: 0 };
        b
    }

    /// The workload on a settled cluster, every order of its messages on
    /// FIFO links, no faults and no timers (so nothing times out): small
    /// enough to exhaust, so every interleaving of the two writes and the
    /// read is checked for linearizability.
    pub fn workload() -> Bounds {
        let mut b = Bounds::cluster(60).with_workload();
        b.origin = Origin::Settled;
        b.fifo = true;
        b.instant_disk = true;
        b.max_ticks = Ticks { balancer: 0, replicas: 0, clients: 0 };
        b
    }

    /// c1's write on a settled cluster under every fault: one duplicate,
    /// one lost message, one replica crash, one balancer restart; the
    /// balancer hears 2 pongs; 2 balancer ticks, one replica tick, one
    /// client tick (a retry). FIFO links, instant disks.
    pub fn write_faults() -> Bounds {
        let mut b = Bounds::workload();
        b.depth = 8;
        b.clients.truncate(1);
        b.clients[0].ops.truncate(1);
        b.max_duplicates = 1;
        b.max_drops = 1;
        b.max_replica_crashes = 1;
        b.max_balancer_restarts = 1;
        b.max_pongs = 2;
        b.max_ticks = Ticks { balancer: 2, replicas: 1, clients: 1 };
        b
    }

    /// As `write_faults`, with c2's write of the same key concurrent.
    pub fn writes_faults() -> Bounds {
        let mut b = Bounds::write_faults();
        b.depth = 6;
        b.clients = Bounds::workload().clients;
        b.clients[0].ops.truncate(1);
        b
    }

    /// Bug A re-planted (`[bugs] epochs_promised_twice`) just after r1's
    /// election: one balancer restart, 4 balancer ticks, no pongs heard,
    /// no replica ticks.
    pub fn bug_a() -> Bounds {
        let mut b = Bounds::cluster(10);
        b.origin = Origin::Elected;
        b.cfg.bugs.epochs_promised_twice = true;
        b.max_balancer_restarts = 1;
        b.max_pongs = 0;
        b.max_ticks = Ticks { balancer: 4, replicas: 0, clients: 0 };
        b
    }

    /// Named bounds, for `kvsim model`: (name, bounds).
    pub fn presets() -> Vec<(&'static str, Bounds)> {
        vec![
            ("election", Bounds::election()),
            ("workload", Bounds::workload()),
            ("write-faults", Bounds::write_faults()),
            ("writes-faults", Bounds::writes_faults()),
            ("bug-a", Bounds::bug_a()),
        ]
    }

    pub fn preset(name: &str) -> Option<Bounds> {
        Bounds::presets().into_iter().find(|(n, _)| *n == name).map(|(_, b)| b)
    }
}

impl fmt::Display for Bounds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = |x: u32| if x == u32::MAX { "any".to_string() } else { x.to_string() };
        let origin = match self.origin {
            Origin::Fresh => "a fresh cluster",
            Origin::Elected => "r1 just elected for e1",
            Origin::Settled => "r1 leading e1, at rest",
        };
        write!(
            f,
            "{} replicas (sync_acks {}) from {origin}; depth {}",
            self.cfg.replicas.len(),
            self.cfg.sync_acks,
            self.depth
        )?;
        for (i, c) in self.clients.iter().enumerate() {
            let ops: Vec<String> = c.ops.iter().map(|o| o.to_string()).collect();
            write!(f, "; c{} ({} reads): {}", i + 1, c.read, ops.join(", "))?;
        }
        write!(
            f,
            "; at most {} duplicate(s), {} drop(s), {} replica crash(es), {} balancer restart(s), {} pong(s); ticks: balancer {}, replicas {}, clients {}",
            self.max_duplicates,
            if self.fifo { self.max_drops } else { 0 },
            self.max_replica_crashes,
            self.max_balancer_restarts,
            n(self.max_pongs),
            n(self.max_ticks.balancer),
            n(self.max_ticks.replicas),
            n(self.max_ticks.clients)
        )?;
        write!(f, "; {} links", if self.fifo { "FIFO" } else { "reordering" })?;
        if self.instant_disk {
            write!(f, "; instant disks")?;
        }
        if let Ok(serde_json::Value::Object(bugs)) = serde_json::to_value(&self.cfg.bugs) {
            let on: Vec<&str> = bugs.iter().filter(|(_, v)| **v == true).map(|(k, _)| k.as_str()).collect();
            if !on.is_empty() {
                write!(f, "; BUGS: {}", on.join(", "))?;
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------- report

/// A violation and the shortest path to it.
#[derive(Clone, Debug)]
pub struct Counterexample {
    pub violation: String,
    /// One line per action (numbered), with its notable effects on lines
    /// of their own below it.
    pub trace: Vec<String>,
    /// Actions on the path.
    pub depth: usize,
}

#[derive(Clone, Debug)]
pub struct Report {
    /// Distinct states reached (the initial one included).
    pub states: u64,
    /// Actions taken (each an edge of the state graph).
    pub transitions: u64,
    /// Inputs actually fed to a machine: every other step was memoized.
    pub machine_steps: u64,
    /// Fault-free actions of the setup before the search (`Origin`).
    pub setup: usize,
    /// Every path this long was explored (or ended earlier); with a
    /// violation, its depth (no shorter path to any violation exists).
    pub depth: usize,
    pub max_depth: usize,
    /// New states per depth level.
    pub levels: Vec<u64>,
    /// No state was left with an action to explore: every reachable state
    /// within the budgets was seen, whatever the depth bound.
    pub exhausted: bool,
    /// Stopped at `max_states`: inconclusive beyond `depth`.
    pub truncated: bool,
    pub elapsed: Duration,
    pub violation: Option<Counterexample>,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "model: {} distinct states, {} transitions ({} machine steps), depth {} of {}{}{}, {:.2?}",
            self.states,
            self.transitions,
            self.machine_steps,
            self.depth,
            self.max_depth,
            if self.exhausted { " (state space exhausted)" } else { "" },
            if self.truncated { " (TRUNCATED at the state cap)" } else { "" },
            self.elapsed
        )?;
        if self.setup > 0 {
            writeln!(f, "(after a fault-free setup of {} actions)", self.setup)?;
        }
        writeln!(f, "states per depth: {:?}", self.levels)?;
        match &self.violation {
            None => writeln!(f, "no violation"),
            Some(c) => {
                writeln!(f, "VIOLATION after {} actions: {}", c.depth, c.violation)?;
                for l in &c.trace {
                    writeln!(f, "{l}")?;
                }
                Ok(())
            }
        }
    }
}

// ---------------------------------------------------------------- hashing

/// A fast 128-bit hash (two multiply-rotate lanes, murmur3's finalizer):
/// fingerprints need to be well spread and the same on every run, not
/// resistant to an adversary; SipHash over every message's text was a
/// fifth of the search's time.
struct H2 {
    a: u64,
    b: u64,
    tail: u64,
    n: u32,
    len: u64,
}

impl H2 {
    fn new(salt: u64) -> H2 {
        H2 { a: salt ^ 0x243f_6a88_85a3_08d3, b: !salt ^ 0x1319_8a2e_0370_7344, tail: 0, n: 0, len: 0 }
    }
    fn block(&mut self, w: u64) {
        self.a = (self.a ^ w).wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(29);
        self.b = (self.b ^ w.rotate_left(32)).wrapping_mul(0xc2b2_ae3d_27d4_eb4f).rotate_left(31);
    }
    fn bytes(&mut self, mut bytes: &[u8]) {
        self.len += bytes.len() as u64;
        while self.n != 0 && !bytes.is_empty() {
            self.tail |= u64::from(bytes[0]) << (8 * self.n);
            self.n += 1;
            bytes = &bytes[1..];
            if self.n == 8 {
                let t = std::mem::take(&mut self.tail);
                self.block(t);
                self.n = 0;
            }
        }
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.block(u64::from_le_bytes(c.try_into().expect("8 bytes")));
        }
        for (i, b) in chunks.remainder().iter().enumerate() {
            self.tail |= u64::from(*b) << (8 * i);
        }
        self.n = chunks.remainder().len() as u32;
    }
    fn u128(&mut self, x: u128) -> &mut H2 {
        self.u64(x as u64).u64((x >> 64) as u64)
    }
    fn u64(&mut self, x: u64) -> &mut H2 {
        if self.n == 0 {
            self.len += 8;
            self.block(x);
        } else {
            self.bytes(&x.to_le_bytes());
        }
        self
    }
    fn finish(&self) -> u128 {
        fn fmix(mut k: u64) -> u64 {
            k ^= k >> 33;
            k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
            k ^= k >> 33;
            k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
            k ^ (k >> 33)
        }
        let mut h = H2 { ..*self };
        h.block(h.tail ^ h.len.rotate_left(56));
        let a = fmix(h.a ^ h.len);
        let b = fmix(h.b ^ a);
        (u128::from(a) << 64) | u128::from(b)
    }
}

impl fmt::Write for H2 {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.bytes(s.as_bytes());
        Ok(())
    }
}

/// Fingerprints are hashes already: the visited set uses their low bits.
#[derive(Default)]
struct Identity(u64);

impl Hasher for Identity {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u128(&mut self, x: u128) {
        self.0 = x as u64;
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

type Visited = HashSet<u128, BuildHasherDefault<Identity>>;

fn node_code(n: NodeId) -> u64 {
    match n {
        NodeId::Balancer => 0,
        NodeId::Replica(r) => 0x100 + u64::from(r.0),
        NodeId::Client(c) => 0x10000 + c.0,
    }
}

/// A message's content, hashed from its `Debug` text (with sender,
/// receiver and link it names an entry in flight).
fn msg_hash(msg: &Msg) -> u128 {
    thread_local! {
        static TEXT: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
    }
    TEXT.with(|t| {
        let mut t = t.borrow_mut();
        t.clear();
        let _ = write!(t, "{msg:?}");
        let mut h = H2::new(1);
        h.bytes(t.as_bytes());
        h.finish()
    })
}

/// Memoized steps at most (then the memo starts over).
const CACHE_MAX: usize = 2_000_000;

/// What one input did to one node state (see `Model::step`).
struct StepResult {
    effects: Vec<Out>,
    wake: Option<Time>,
    status: Status,
    leader: Option<(ReplicaId, Epoch)>,
    idle: bool,
    /// Replicas: the rows newly committed (above the commit point before).
    rows: Vec<Row>,
    neutral: bool,
}

/// An effect, shareable between states.
enum Out {
    Send { to: NodeId, hash: u128, msg: Rc<Msg> },
    Persist { id: u64, op: Rc<kvstore::PersistOp> },
    Done(kvstore::Completion),
    Event(Event),
}

// ---------------------------------------------------------------- state

/// An input a machine has had, as it is replayed.
#[derive(Clone)]
enum Input {
    Msg { now: Time, from: NodeId, msg: Rc<Msg> },
    Tick(Time),
    Persisted { now: Time, id: u64 },
    Submit { now: Time, op: Op },
}

/// A node's inputs since it started, newest first, shared between states.
struct Cons {
    input: Input,
    prev: Option<Rc<Cons>>,
}

#[derive(Clone)]
enum Start {
    /// What survived on disk, and which life of the replica this is.
    Replica(Rc<Stored>, u32),
    Balancer {
        at: Time,
        incarnation: u64,
    },
    Client,
}

#[derive(Clone)]
struct NodeBook {
    chain: u128,
    clock: Time,
    start: Start,
    inputs: Option<Rc<Cons>>,
    wake: Option<Time>,
    /// Replicas: the status after the last input.
    status: Status,
    /// Balancer: who it sends requests to.
    leader: Option<(ReplicaId, Epoch)>,
    /// Clients: nothing in flight or queued.
    idle: bool,
}

#[derive(Clone)]
struct InFlight {
    /// This entry's identity: the content's, or its complement for the
    /// duplicate copies `fifo` lets arrive at any time.
    key: u128,
    /// Sender, receiver, the client's balancer incarnation, the message.
    content: u128,
    copy: bool,
    from: NodeId,
    to: NodeId,
    msg: Rc<Msg>,
    count: u32,
}

#[derive(Clone, Default)]
struct Disk {
    stored: Rc<Stored>,
    pending: VecDeque<(u64, Rc<kvstore::PersistOp>)>,
}

/// A client operation, for the linearizability check; times are action
/// numbers along the path.
#[derive(Clone)]
struct OpRec {
    client: usize,
    op: Op,
    /// A write, or a read of a `leader` client: what must be linearizable
    /// (`any` and `session` reads may be stale by design).
    judged: bool,
    invoked: u32,
    done: Option<(u32, Result<Reply, OpError>)>,
}

/// Everything about a state except the live machines: cheap to clone.
#[derive(Clone)]
struct Book {
    nodes: Vec<Rc<NodeBook>>,
    net: Vec<InFlight>,
    disks: Vec<Rc<Disk>>,
    dups_used: u32,
    drops_used: u32,
    crashes_used: u32,
    restarts_used: u32,
    /// Ticks taken by the balancer, the replicas, the clients.
    ticks_used: [u32; 3],
    pongs_used: u32,
    /// The balancer's incarnation (0 first).
    lb_incarnation: u32,
    replica_incarnation: Vec<u32>,
    /// Hash of the order of client invocations and completions.
    client_log: u128,
    /// Actions since the search began (the setup's do not count).
    step: u32,
    next_op: Vec<usize>,
    history: Rc<Vec<OpRec>>,
    /// (epoch, replica, incarnation) of every `BecameLeader` on the path.
    leaders: Rc<Vec<(Epoch, ReplicaId, u32)>>,
    /// Every position ever committed by any replica, with its row and who
    /// committed it first.
    committed: Rc<BTreeMap<u64, (Row, ReplicaId)>>,
}

enum Machine {
    R(Replica),
    B(Balancer),
    C(Client),
}

impl Machine {
    fn input(&mut self, i: &Input, out: &mut Outbox) {
        match (self, i) {
            (Machine::R(r), Input::Msg { now, from, msg }) => r.on_message(*now, *from, (**msg).clone(), out),
            (Machine::R(r), Input::Tick(t)) => r.on_tick(*t, out),
            (Machine::R(r), Input::Persisted { now, id }) => r.on_persisted(*now, *id, out),
            (Machine::B(b), Input::Msg { now, from, msg }) => b.on_message(*now, *from, (**msg).clone(), out),
            (Machine::B(b), Input::Tick(t)) => b.on_tick(*t, out),
            (Machine::C(c), Input::Msg { now, from, msg }) => c.on_message(*now, *from, (**msg).clone(), out),
            (Machine::C(c), Input::Tick(t)) => c.on_tick(*t, out),
            (Machine::C(c), Input::Submit { now, op }) => c.submit(*now, op.clone(), out),
            _ => unreachable!("an input this machine does not take"),
        }
    }
    fn wake(&self) -> Option<Time> {
        match self {
            Machine::R(r) => r.next_wakeup(),
            Machine::B(b) => b.next_wakeup(),
            Machine::C(c) => c.next_wakeup(),
        }
    }
}

/// What one step of a path does.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Action {
    Deliver(u128),
    /// Delivers, and a duplicate stays in flight (the only point where a
    /// duplicate matters is when one copy arrives: any path that
    /// duplicates a message earlier is equivalent to one doing it here).
    DeliverKeep(u128),
    /// `fifo` only: the message at the head of its link is lost, so the
    /// ones behind it may arrive. (Without `fifo`, a message never
    /// delivered is as good as lost.)
    Drop(u128),
    /// The oldest pending persist of replica index i completes.
    Persist(usize),
    /// Node index (0 balancer, then replicas, then clients).
    Tick(usize),
    Submit(usize),
    Crash(usize),
    RestartBalancer,
}

/// Balancer incarnations: distinct, their ballots read `b0001`, `b0002`,
/// and their request tags (which start at the incarnation) do not meet
/// within 65,535 requests.
fn incarnation(k: u32) -> u64 {
    let k = u64::from(k) + 1;
    (k << 16) | k
}

/// A replica's incarnation (`Replica::with_incarnation`, drawn at random by
/// the simulator at every start): distinct for every life of every replica.
fn replica_life(x: usize, life: u32) -> u64 {
    ((x as u64) << 32) | (u64::from(life) + 1)
}

struct Model<'a> {
    b: &'a Bounds,
    n: usize,
    /// (node, chain, input) -> what the step did.
    cache: std::cell::RefCell<HashMap<u128, Rc<StepResult>, BuildHasherDefault<Identity>>>,
    /// Steps actually run on a machine (memo misses).
    runs: std::cell::Cell<u64>,
}

impl Model<'_> {
    fn node_id(&self, x: usize) -> NodeId {
        if x == 0 {
            NodeId::Balancer
        } else if x <= self.n {
            NodeId::Replica(ReplicaId(x as u8))
        } else {
            NodeId::Client(ClientId((x - self.n) as u64))
        }
    }
    /// 0 balancer, 1 replica, 2 client.
    fn role(&self, x: usize) -> usize {
        if x == 0 {
            0
        } else if x <= self.n {
            1
        } else {
            2
        }
    }
    fn index(&self, id: NodeId) -> usize {
        match id {
            NodeId::Balancer => 0,
            NodeId::Replica(r) => r.0 as usize,
            NodeId::Client(c) => self.n + c.0 as usize,
        }
    }
    fn client_cfg(&self, c: usize) -> ClientConfig {
        let spec = &self.b.clients[c];
        let mut cfg = ClientConfig::new(ClientId(c as u64 + 1), spec.read);
        cfg.retry_us = self.b.client_retry_us;
        cfg.timeout_us = self.b.client_timeout_us;
        cfg.bug_counts_unavailable_answers = self.b.cfg.bugs.unavailable_counts_answers;
        cfg
    }

    /// Node `x` as it is in `book`: started afresh and replayed.
    fn build(&self, book: &Book, x: usize) -> Machine {
        let nb = &book.nodes[x];
        let mut m = match &nb.start {
            Start::Replica(stored, life) => {
                let r = Replica::recover(ReplicaId(x as u8), self.b.cfg.clone(), (**stored).clone());
                Machine::R(r.with_incarnation(replica_life(x, *life)))
            }
            Start::Balancer { at, incarnation } => {
                Machine::B(Balancer::new(self.b.cfg.clone(), *at, *incarnation))
            }
            Start::Client => Machine::C(Client::new(self.client_cfg(x - self.n - 1))),
        };
        let mut inputs = Vec::new();
        let mut p = nb.inputs.as_deref();
        while let Some(c) = p {
            inputs.push(&c.input);
            p = c.prev.as_deref();
        }
        let mut out = Outbox::new();
        for i in inputs.into_iter().rev() {
            m.input(i, &mut out);
            out.effects.clear();
        }
        m
    }

    fn initial(&self) -> Book {
        let nodes_n = 1 + self.n + self.b.clients.len();
        let mut nodes = Vec::new();
        for x in 0..nodes_n {
            let start = if x == 0 {
                Start::Balancer { at: Time::ZERO, incarnation: incarnation(0) }
            } else if x <= self.n {
                Start::Replica(Rc::new(Stored::default()), 0)
            } else {
                Start::Client
            };
            nodes.push(Rc::new(NodeBook {
                chain: H2::new(2).u64(x as u64).finish(),
                clock: Time::ZERO,
                start,
                inputs: None,
                wake: None,
                status: Status::default(),
                leader: None,
                idle: true,
            }));
        }
        let mut book = Book {
            nodes,
            net: Vec::new(),
            disks: (0..self.n).map(|_| Rc::new(Disk::default())).collect(),
            dups_used: 0,
            drops_used: 0,
            crashes_used: 0,
            restarts_used: 0,
            ticks_used: [0; 3],
            pongs_used: 0,
            lb_incarnation: 0,
            replica_incarnation: vec![0; self.n],
            client_log: 0,
            step: 0,
            next_op: vec![0; self.b.clients.len()],
            history: Rc::new(Vec::new()),
            leaders: Rc::new(Vec::new()),
            committed: Rc::new(BTreeMap::new()),
        };
        for x in 0..nodes_n {
            let m = self.build(&book, x);
            self.observe(&mut book, x, &m);
        }
        book
    }

    fn observe(&self, book: &mut Book, x: usize, m: &Machine) {
        let nb = Rc::make_mut(&mut book.nodes[x]);
        nb.wake = m.wake();
        match m {
            Machine::R(r) => nb.status = r.status(),
            Machine::B(b) => nb.leader = b.leader(),
            Machine::C(c) => nb.idle = c.is_idle(),
        }
    }

    fn fingerprint(&self, book: &Book) -> u128 {
        let mut h = H2::new(3);
        for nb in &book.nodes {
            h.u128(nb.chain);
        }
        let net =
            book.net.iter().fold(0u128, |acc, m| acc.wrapping_add(m.key.wrapping_mul(u128::from(m.count))));
        h.u128(net);
        h.u64(u64::from(book.dups_used) | u64::from(book.drops_used) << 32);
        h.u64(u64::from(book.pongs_used));
        h.u128(book.client_log);
        h.finish()
    }

    /// Every action enabled in `book`, in a fixed order.
    fn actions(&self, book: &Book) -> Vec<Action> {
        let b = self.b;
        let mut v = Vec::new();
        let mut keeps = Vec::new();
        let mut drops = Vec::new();
        for (i, m) in book.net.iter().enumerate() {
            let chatter = is_chatter(&m.msg);
            if chatter {
                if book.pongs_used >= b.max_pongs {
                    continue;
                }
            } else if b.fifo && !m.copy {
                let ahead = |o: &InFlight| o.from == m.from && o.to == m.to && !o.copy && !is_chatter(&o.msg);
                if book.net[..i].iter().any(ahead) {
                    continue;
                }
                if book.drops_used < b.max_drops {
                    drops.push(Action::Drop(m.key));
                }
            }
            v.push(Action::Deliver(m.key));
            if book.dups_used < b.max_duplicates {
                keeps.push(Action::DeliverKeep(m.key));
            }
        }
        for (i, d) in book.disks.iter().enumerate() {
            if !d.pending.is_empty() {
                v.push(Action::Persist(i));
            }
        }
        let t = b.max_ticks;
        let budget = [t.balancer, t.replicas, t.clients];
        for (x, nb) in book.nodes.iter().enumerate() {
            let role = self.role(x);
            if book.ticks_used[role] < budget[role] && nb.wake.is_some() {
                v.push(Action::Tick(x));
            }
        }
        for (c, spec) in b.clients.iter().enumerate() {
            if book.nodes[1 + self.n + c].idle && book.next_op[c] < spec.ops.len() {
                v.push(Action::Submit(c));
            }
        }
        if book.crashes_used < b.max_replica_crashes {
            v.extend((0..self.n).map(Action::Crash));
        }
        if book.restarts_used < b.max_balancer_restarts {
            v.push(Action::RestartBalancer);
        }
        v.extend(keeps);
        v.extend(drops);
        v
    }

    fn chain(nb: &mut NodeBook, what: impl FnOnce(&mut H2)) {
        let mut h = H2::new(4);
        h.u128(nb.chain);
        what(&mut h);
        nb.chain = h.finish();
    }

    /// Takes action `a` in `book`. `Err` is a violation. With `log`, writes
    /// the action's trace lines.
    fn apply(&self, book: &mut Book, a: &Action, mut log: Option<&mut Vec<String>>) -> Result<(), String> {
        book.step += 1;
        match a {
            Action::Deliver(key) | Action::DeliverKeep(key) => {
                let keep = matches!(a, Action::DeliverKeep(_));
                let i = book.net.iter().position(|m| m.key == *key).expect("enabled");
                let m = book.net[i].clone();
                if keep {
                    book.dups_used += 1;
                }
                if keep && !self.b.fifo {
                    // The copy stays where it is.
                } else if m.count > 1 {
                    book.net[i].count -= 1;
                } else {
                    book.net.remove(i);
                }
                if keep && self.b.fifo {
                    let ck = !m.content;
                    match book.net.iter_mut().find(|o| o.key == ck) {
                        Some(o) => o.count += 1,
                        None => book.net.push(InFlight { key: ck, copy: true, count: 1, ..m.clone() }),
                    }
                }
                let x = self.index(m.to);
                if matches!(*m.msg, Msg::Pong { .. }) {
                    book.pongs_used += 1;
                }
                if let Some(l) = log.as_deref_mut() {
                    let dup = if keep { "   (duplicated: a copy stays in flight)" } else { "" };
                    l.push(format!("{:<4} -> {:<4} {}{dup}", m.from.to_string(), m.to.to_string(), m.msg));
                }
                let now = book.nodes[x].clock;
                let input = Input::Msg { now, from: m.from, msg: m.msg.clone() };
                let neutral_candidate = matches!(*m.msg, Msg::Ping { .. }) && x >= 1 && x <= self.n;
                let content = m.content;
                self.step(book, x, input, H2::new(1).u128(content).finish(), neutral_candidate, log)
            }
            Action::Drop(key) => {
                let i = book.net.iter().position(|m| m.key == *key).expect("enabled");
                let m = book.net[i].clone();
                if m.count > 1 {
                    book.net[i].count -= 1;
                } else {
                    book.net.remove(i);
                }
                book.drops_used += 1;
                if let Some(l) = log {
                    l.push(format!("net  drops {} -> {} {}", m.from, m.to, m.msg));
                }
                Ok(())
            }
            Action::Persist(r) => {
                let disk = Rc::make_mut(&mut book.disks[*r]);
                let (id, op) = disk.pending.pop_front().expect("enabled");
                Rc::make_mut(&mut disk.stored).apply(&op);
                let x = r + 1;
                if let Some(l) = log.as_deref_mut() {
                    l.push(format!(
                        "{:<12} disk: persist #{id} durable: {}",
                        self.node_id(x).to_string(),
                        show_op(&op)
                    ));
                }
                let now = book.nodes[x].clock;
                self.step(book, x, Input::Persisted { now, id }, H2::new(2).u64(id).finish(), false, log)
            }
            Action::Tick(x) => {
                let x = *x;
                book.ticks_used[self.role(x)] += 1;
                let nb = Rc::make_mut(&mut book.nodes[x]);
                let now = nb.clock.max(nb.wake.expect("enabled"));
                nb.clock = now;
                if let Some(l) = log.as_deref_mut() {
                    l.push(format!("{:<12} tick, clock {now}", self.node_id(x).to_string()));
                }
                self.step(book, x, Input::Tick(now), H2::new(3).u64(now.0).finish(), false, log)?;
                let nb = &book.nodes[x];
                if nb.wake.is_some_and(|w| w <= now) {
                    return Err(format!(
                        "{} asked to be woken at or before now after a tick (busy loop)",
                        self.node_id(x)
                    ));
                }
                Ok(())
            }
            Action::Submit(c) => {
                let c = *c;
                let op = self.b.clients[c].ops[book.next_op[c]].clone();
                book.next_op[c] += 1;
                let x = 1 + self.n + c;
                if let Some(l) = log.as_deref_mut() {
                    l.push(format!("{:<12} invoke {op}", self.node_id(x).to_string()));
                }
                book.client_log = H2::new(5).u128(book.client_log).u64(c as u64).u64(0).finish();
                let judged = op.is_write() || self.b.clients[c].read == ReadMode::Leader;
                Rc::make_mut(&mut book.history).push(OpRec {
                    client: c,
                    op: op.clone(),
                    judged,
                    invoked: book.step,
                    done: None,
                });
                let now = book.nodes[x].clock;
                let idx = book.next_op[c] as u64;
                self.step(book, x, Input::Submit { now, op }, H2::new(4).u64(idx).finish(), false, log)
            }
            Action::Crash(r) => {
                let r = *r;
                let x = r + 1;
                book.crashes_used += 1;
                book.replica_incarnation[r] += 1;
                let lost = book.disks[r].pending.len();
                Rc::make_mut(&mut book.disks[r]).pending.clear();
                let nb = Rc::make_mut(&mut book.nodes[x]);
                Self::chain(nb, |h| {
                    h.u64(5);
                });
                nb.start = Start::Replica(book.disks[r].stored.clone(), book.replica_incarnation[r]);
                nb.inputs = None;
                let m = self.build(book, x);
                self.observe(book, x, &m);
                let Machine::R(rep) = &m else { unreachable!() };
                if let Some(l) = log {
                    let s = rep.status();
                    l.push(format!(
                        "{:<12} CRASH + restart: {lost} unsynced persist(s) lost; recovers promised={} last={}",
                        self.node_id(x).to_string(),
                        s.promised,
                        s.last
                    ));
                }
                Ok(())
            }
            Action::RestartBalancer => {
                book.restarts_used += 1;
                book.lb_incarnation += 1;
                let before = book.net.len();
                book.net.retain(|m| !matches!((m.from, m.to), (NodeId::Client(_), NodeId::Balancer)));
                let lost = before - book.net.len();
                let inc = incarnation(book.lb_incarnation);
                let nb = Rc::make_mut(&mut book.nodes[0]);
                Self::chain(nb, |h| {
                    h.u64(6);
                });
                nb.start = Start::Balancer { at: nb.clock, incarnation: inc };
                nb.inputs = None;
                let m = self.build(book, 0);
                self.observe(book, 0, &m);
                if let Some(l) = log {
                    l.push(format!(
                        "lb           CRASH + restart as incarnation b{:04x}; {lost} client request(s) in flight to it lost",
                        inc & 0xffff
                    ));
                }
                Ok(())
            }
        }
    }

    /// Feeds `input` (named `id`) to node `x`, records it, and carries out
    /// the effects. The machine is rebuilt by replay only the first time
    /// this node state meets this input: the outcome is memoized under
    /// (node, chain, input), as the machines are deterministic.
    fn step(
        &self,
        book: &mut Book,
        x: usize,
        input: Input,
        id: u128,
        neutral_candidate: bool,
        mut log: Option<&mut Vec<String>>,
    ) -> Result<(), String> {
        let key = H2::new(7).u64(x as u64).u128(book.nodes[x].chain).u128(id).finish();
        let hit = self.cache.borrow().get(&key).cloned();
        let res = match hit {
            Some(r) => r,
            None => {
                self.runs.set(self.runs.get() + 1);
                let r = Rc::new(self.run(book, x, &input, neutral_candidate)?);
                let mut cache = self.cache.borrow_mut();
                if cache.len() >= CACHE_MAX {
                    cache.clear();
                }
                cache.insert(key, r.clone());
                r
            }
        };
        let before = book.nodes[x].status.commit;
        let nb = Rc::make_mut(&mut book.nodes[x]);
        nb.wake = res.wake;
        nb.status = res.status;
        nb.leader = res.leader;
        nb.idle = res.idle;
        if !res.neutral {
            let mut h = H2::new(4);
            h.u128(nb.chain).u128(id);
            nb.chain = h.finish();
            let prev = nb.inputs.take();
            nb.inputs = Some(Rc::new(Cons { input, prev }));
        }
        self.handle(book, x, &res, before, log.as_deref_mut())?;
        if self.b.instant_disk && x >= 1 && x <= self.n {
            while let Some((pid, op)) = Rc::make_mut(&mut book.disks[x - 1]).pending.pop_front() {
                Rc::make_mut(&mut Rc::make_mut(&mut book.disks[x - 1]).stored).apply(&op);
                if let Some(l) = log.as_deref_mut() {
                    l.push(format!(
                        "              {} disk: persist #{pid} durable: {}",
                        self.node_id(x),
                        show_op(&op)
                    ));
                }
                let input = Input::Persisted { now: book.nodes[x].clock, id: pid };
                let id = H2::new(2).u64(pid).finish();
                self.step(book, x, input, id, false, log.as_deref_mut())?;
            }
        }
        Ok(())
    }

    /// Rebuilds node `x` and feeds it `input`: what it does, and what can be
    /// seen of it after.
    fn run(
        &self,
        book: &Book,
        x: usize,
        input: &Input,
        neutral_candidate: bool,
    ) -> Result<StepResult, String> {
        let mut m = self.build(book, x);
        let mut out = Outbox::new();
        let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            m.input(input, &mut out);
            m
        }));
        let m = match ran {
            Ok(m) => m,
            Err(p) => {
                let what = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                return Err(format!("{} panicked: {what}", self.node_id(x)));
            }
        };
        let nb = &book.nodes[x];
        let mut res = StepResult {
            effects: Vec::new(),
            wake: m.wake(),
            status: nb.status,
            leader: nb.leader,
            idle: nb.idle,
            rows: Vec::new(),
            neutral: false,
        };
        match &m {
            Machine::R(r) => {
                res.status = r.status();
                let (from, to) = (nb.status.commit.0 + 1, res.status.commit.0);
                res.rows = (from..=to).filter_map(|l| r.log().get(Lsn(l)).cloned()).collect();
            }
            Machine::B(b) => res.leader = b.leader(),
            Machine::C(c) => res.idle = c.is_idle(),
        }
        res.neutral = neutral_candidate
            && (res.status, res.wake) == (nb.status, nb.wake)
            && matches!(&out.effects[..], [Effect::Send { msg: Msg::Pong { .. }, .. }]);
        res.effects = out
            .effects
            .into_iter()
            .map(|e| match e {
                Effect::Send { to, msg } => Out::Send { to, hash: msg_hash(&msg), msg: Rc::new(msg) },
                Effect::Persist { id, op } => Out::Persist { id, op: Rc::new(op) },
                Effect::Done(c) => Out::Done(c),
                Effect::Event(e) => Out::Event(e),
            })
            .collect();
        Ok(res)
    }

    /// Carries out a step's effects and checks what they show. `before`:
    /// the replica's commit point before the step.
    fn handle(
        &self,
        book: &mut Book,
        x: usize,
        res: &StepResult,
        before: Lsn,
        mut log: Option<&mut Vec<String>>,
    ) -> Result<(), String> {
        let me = self.node_id(x);
        let mut violation = None;
        for e in &res.effects {
            match e {
                Out::Send { to, hash, msg } => self.send(book, me, *to, msg.clone(), *hash),
                Out::Persist { id, op } => {
                    let NodeId::Replica(r) = me else { continue };
                    Rc::make_mut(&mut book.disks[r.0 as usize - 1]).pending.push_back((*id, op.clone()));
                }
                Out::Event(ev) => {
                    if let Some(l) = log.as_deref_mut() {
                        l.push(format!("              {me} {ev}"));
                    }
                    if let (Event::BecameLeader { epoch, .. }, NodeId::Replica(r)) = (ev, me) {
                        let inc = book.replica_incarnation[r.0 as usize - 1];
                        let twice =
                            book.leaders.iter().find(|(e, rr, i)| e == epoch && (*rr, *i) != (r, inc));
                        if let Some((_, r0, i0)) = twice {
                            violation.get_or_insert(format!(
                                "{epoch} led twice: by r{} (life {}) and by r{} (life {})",
                                r0.0,
                                i0 + 1,
                                r.0,
                                inc + 1
                            ));
                        }
                        Rc::make_mut(&mut book.leaders).push((*epoch, r, inc));
                    }
                }
                Out::Done(c) => {
                    let ci = x - self.n - 1;
                    if let Some(l) = log.as_deref_mut() {
                        let what = match &c.result {
                            Ok(r) if c.op.is_write() => format!("ok lsn={}", r.lsn),
                            Ok(r) => format!("{} lsn={}", ShowValue(&r.value), r.lsn),
                            Err(e) if c.is_ambiguous() => format!("ambiguous: {e}"),
                            Err(e) => format!("error: {e}"),
                        };
                        l.push(format!("              {me} done {} -> {what}", c.op));
                    }
                    book.client_log = H2::new(5).u128(book.client_log).u64(ci as u64).u64(1).finish();
                    let at = book.step;
                    let history = Rc::make_mut(&mut book.history);
                    if let Some(rec) = history.iter_mut().find(|h| h.client == ci && h.done.is_none()) {
                        rec.done = Some((at, c.result.clone()));
                    }
                    if let (Ok(reply), true) = (&c.result, c.op.is_write()) {
                        let id = RequestId { client: ClientId(ci as u64 + 1), seq: c.seq };
                        let held = book.committed.get(&reply.lsn.0);
                        let ok = held.is_some_and(
                            |(row, _)| matches!(&row.body, RowBody::Put { req, .. } if *req == id),
                        );
                        if !ok {
                            let now = held.map_or("nothing committed".to_string(), |(r, by)| {
                                format!("{} committed (first by r{})", show_row(r), by.0)
                            });
                            violation.get_or_insert(format!(
                                "acknowledged write lost: c{}#{} ({}) acknowledged at lsn {}, where {now}",
                                ci + 1,
                                c.seq,
                                c.op,
                                reply.lsn
                            ));
                        }
                    }
                    if let Err(v) = linearizable(&book.history) {
                        violation.get_or_insert(v);
                    }
                }
            }
        }
        if let NodeId::Replica(id) = me {
            // Rows newly committed here: the same row wherever and whenever
            // that position is committed.
            for row in res.rows.iter().filter(|r| r.lsn > before) {
                match book.committed.get(&row.lsn.0) {
                    None => {
                        Rc::make_mut(&mut book.committed).insert(row.lsn.0, (row.clone(), id));
                    }
                    Some((first, by)) if first != row => {
                        violation.get_or_insert(format!(
                            "lsn {} committed as {} by r{} and as {} by r{}",
                            row.lsn,
                            show_row(first),
                            by.0,
                            show_row(row),
                            id.0
                        ));
                    }
                    Some(_) => {}
                }
            }
        }
        match violation {
            Some(v) => Err(v),
            None => Ok(()),
        }
    }

    fn send(&self, book: &mut Book, from: NodeId, to: NodeId, msg: Rc<Msg>, hash: u128) {
        let link =
            if matches!((from, to), (NodeId::Client(_), NodeId::Balancer)) { book.lb_incarnation } else { 0 };
        if is_chatter(&msg) {
            let kind = msg.kind();
            book.net.retain(|m| !(m.from == from && m.to == to && m.msg.kind() == kind));
        }
        let key = H2::new(1).u64(node_code(from)).u64(node_code(to)).u64(u64::from(link)).u128(hash).finish();
        match book.net.iter_mut().find(|m| m.key == key) {
            Some(m) => m.count += 1,
            None => book.net.push(InFlight { key, content: key, copy: false, from, to, msg, count: 1 }),
        }
    }
}

/// Pings and pongs: superseded on their link by a newer one, budgeted by
/// `max_pongs`, never ordered by `fifo`.
fn is_chatter(m: &Msg) -> bool {
    matches!(m, Msg::Ping { .. } | Msg::Pong { .. })
}

fn show_op(op: &kvstore::PersistOp) -> String {
    match op {
        kvstore::PersistOp::Promise(e) => format!("Promise({e})"),
        kvstore::PersistOp::Append(rows) => {
            let rows: Vec<String> = rows.iter().map(show_row).collect();
            format!("Append[{}]", rows.join(", "))
        }
        kvstore::PersistOp::TruncateAfter(l) => format!("TruncateAfter({l})"),
        kvstore::PersistOp::InstallSnapshot(s) => format!("InstallSnapshot(last={})", s.last),
    }
}

fn show_row(r: &Row) -> String {
    match &r.body {
        RowBody::Noop => format!("{}:noop", r.pos()),
        RowBody::Put { key, value: Some(v), req } => {
            format!("{}:set {key}={v} (c{}#{})", r.pos(), req.client.0, req.seq)
        }
        RowBody::Put { key, value: None, req } => {
            format!("{}:del {key} (c{}#{})", r.pos(), req.client.0, req.seq)
        }
    }
}

// ---------------------------------------------------------------- linearizability

/// Whether the client operations so far (writes, and the reads of `leader`
/// clients) fit one order that respects real time (an operation that
/// finished before another began comes first) and a register per key.
/// Writes that finished ok took effect; writes that timed out or have not
/// finished may or may not have; writes refused (unavailable, invalid) did
/// not. Reads that did not finish ok say nothing.
fn linearizable(history: &[OpRec]) -> Result<(), String> {
    let mut keys: Vec<&str> = history.iter().map(|h| h.op.key()).collect();
    keys.sort_unstable();
    keys.dedup();
    for key in keys {
        let ops: Vec<&OpRec> = history.iter().filter(|h| h.judged && h.op.key() == key).collect();
        let mut must = Vec::new();
        let mut maybe = Vec::new();
        for h in &ops {
            match (&h.done, h.op.is_write()) {
                (Some((_, Ok(_))), _) => must.push(*h),
                (Some((_, Err(e))), true) if e.is_ambiguous() => maybe.push(*h),
                (None, true) => maybe.push(*h),
                _ => {}
            }
        }
        let found = (0u32..1 << maybe.len()).any(|mask| {
            let mut set: Vec<&OpRec> = must.clone();
            set.extend(maybe.iter().enumerate().filter(|(i, _)| mask & (1 << i) != 0).map(|(_, h)| *h));
            let mut used = vec![false; set.len()];
            order_exists(&set, &mut used, None)
        });
        if !found {
            let lines: Vec<String> = ops
                .iter()
                .map(|h| {
                    let res = match &h.done {
                        None => "unfinished".to_string(),
                        Some((at, Ok(r))) if h.op.is_write() => format!("ok lsn={} at {at}", r.lsn),
                        Some((at, Ok(r))) => format!("{} at {at}", ShowValue(&r.value)),
                        Some((at, Err(e))) => format!("{e} at {at}"),
                    };
                    format!("c{} {} from {} -> {res}", h.client + 1, h.op, h.invoked)
                })
                .collect();
            return Err(format!("not linearizable on key {key}: {}", lines.join("; ")));
        }
    }
    Ok(())
}

/// Depth-first over orders of `set`: the next operation must have no
/// unplaced operation that finished before it was invoked, and a read must
/// see the value of the last write placed.
fn order_exists(set: &[&OpRec], used: &mut [bool], value: Option<&str>) -> bool {
    if used.iter().all(|u| *u) {
        return true;
    }
    for i in 0..set.len() {
        if used[i] {
            continue;
        }
        let blocked = (0..set.len())
            .any(|j| !used[j] && j != i && set[j].done.as_ref().is_some_and(|(d, _)| *d < set[i].invoked));
        if blocked {
            continue;
        }
        let next = match &set[i].op {
            Op::Set { value: v, .. } => Some(v.as_str()),
            Op::Del { .. } => None,
            Op::Get { .. } => {
                let seen = match &set[i].done {
                    Some((_, Ok(r))) => r.value.as_deref(),
                    _ => None,
                };
                if seen != value {
                    continue;
                }
                value
            }
        };
        used[i] = true;
        if order_exists(set, used, next) {
            used[i] = false;
            return true;
        }
        used[i] = false;
    }
    false
}

// ---------------------------------------------------------------- search

/// Explores every path of at most `bounds.depth` actions from a fresh
/// cluster (nothing on any disk, every clock at zero), breadth first, and
/// stops at the first violation: its path is a shortest one.
pub fn check(bounds: &Bounds) -> Report {
    let started = Instant::now();
    let model = Model {
        b: bounds,
        n: bounds.cfg.replicas.len(),
        cache: Default::default(),
        runs: Default::default(),
    };
    let mut report = Report {
        states: 1,
        transitions: 0,
        machine_steps: 0,
        setup: 0,
        depth: 0,
        max_depth: bounds.depth,
        levels: vec![1],
        exhausted: false,
        truncated: false,
        elapsed: Duration::ZERO,
        violation: None,
    };
    let (init, setup) = match model.setup() {
        Ok(x) => x,
        Err(v) => {
            report.violation = Some(Counterexample { violation: v, trace: Vec::new(), depth: 0 });
            report.elapsed = started.elapsed();
            return report;
        }
    };
    report.setup = setup.len();
    let mut visited = Visited::default();
    visited.insert(model.fingerprint(&init));
    // Every state reached: its parent and the action that reached it.
    let mut arena: Vec<(u32, Action)> = vec![(u32::MAX, Action::RestartBalancer)];
    let mut frontier: Vec<(u32, Book)> = vec![(0, init)];
    'levels: while report.depth < bounds.depth && !frontier.is_empty() {
        let last_level = report.depth + 1 == bounds.depth;
        let mut next = Vec::new();
        let mut new = 0u64;
        for (idx, book) in frontier.drain(..) {
            for a in model.actions(&book) {
                let mut child = book.clone();
                let res = model.apply(&mut child, &a, None);
                report.transitions += 1;
                if res.is_ok() && !visited.insert(model.fingerprint(&child)) {
                    continue;
                }
                arena.push((idx, a));
                report.states += 1;
                new += 1;
                if let Err(v) = res {
                    report.depth += 1;
                    report.levels.push(new);
                    report.violation = Some(model.counterexample(&setup, &arena, arena.len() - 1, v));
                    break 'levels;
                }
                if !last_level {
                    next.push((arena.len() as u32 - 1, child));
                }
                if report.states >= bounds.max_states {
                    // This level is incomplete: `depth` stays at the last
                    // complete one.
                    report.truncated = true;
                    report.levels.push(new);
                    break 'levels;
                }
            }
        }
        report.depth += 1;
        report.levels.push(new);
        if bounds.progress {
            eprintln!(
                "model: depth {} done: {new} new states ({} in all), {:.1?}",
                report.depth,
                report.states,
                started.elapsed()
            );
        }
        if new == 0 {
            report.exhausted = true;
        }
        frontier = next;
    }
    report.machine_steps = model.runs.get();
    report.elapsed = started.elapsed();
    report
}

impl Model<'_> {
    /// The start state of the search, and the actions of the setup that
    /// led to it (none from `Origin::Fresh`).
    fn setup(&self) -> Result<(Book, Vec<Action>), String> {
        let mut book = self.initial();
        let mut done = Vec::new();
        if self.b.origin == Origin::Fresh {
            return Ok((book, done));
        }
        let r1 = ReplicaId(1);
        let elected = |book: &Book| {
            book.nodes[0].leader == Some((r1, Epoch(1))) && book.nodes[1].status.leading == Some(Epoch(1))
        };
        let settled = |book: &Book| {
            elected(book)
                && book.net.is_empty()
                && book.disks.iter().all(|d| d.pending.is_empty())
                && (1..=self.n).all(|x| book.nodes[x].status.commit == Lsn(1))
        };
        let goal = |book: &Book| if self.b.origin == Origin::Settled { settled(book) } else { elected(book) };
        while !goal(&book) {
            if done.len() > 1000 {
                return Err("setup: r1 was not elected within 1000 fault-free actions".into());
            }
            let a = if let Some(m) = book.net.first() {
                Action::Deliver(m.key)
            } else if let Some(r) = book.disks.iter().position(|d| !d.pending.is_empty()) {
                Action::Persist(r)
            } else {
                let x = (0..book.nodes.len())
                    .filter(|x| book.nodes[*x].wake.is_some())
                    .min_by_key(|x| book.nodes[*x].wake)
                    .ok_or("setup: nothing to do and r1 not elected")?;
                Action::Tick(x)
            };
            self.apply(&mut book, &a, None).map_err(|v| format!("setup: {v}"))?;
            done.push(a);
        }
        Self::begin_search(&mut book);
        Ok((book, done))
    }

    /// The setup's actions, ticks and pongs do not count against the
    /// search's bounds.
    fn begin_search(book: &mut Book) {
        book.step = 0;
        book.ticks_used = [0; 3];
        book.pongs_used = 0;
    }

    /// Replays the setup and the path to `at`, writing one numbered line per
    /// action.
    fn counterexample(
        &self,
        setup: &[Action],
        arena: &[(u32, Action)],
        at: usize,
        violation: String,
    ) -> Counterexample {
        let mut path = Vec::new();
        let mut i = at;
        while i != 0 {
            path.push(arena[i].1.clone());
            i = arena[i].0 as usize;
        }
        path.reverse();
        let mut book = self.initial();
        let mut trace = Vec::new();
        if !setup.is_empty() {
            trace.push(format!("setup ({} fault-free actions, not part of the search):", setup.len()));
        }
        for (n, a) in setup.iter().enumerate() {
            let mut lines = Vec::new();
            let _ = self.apply(&mut book, a, Some(&mut lines));
            for (k, l) in lines.into_iter().enumerate() {
                trace.push(if k == 0 { format!("  s{:<3} {l}", n + 1) } else { format!("        {l}") });
            }
        }
        if !setup.is_empty() {
            trace.push("search:".into());
            Self::begin_search(&mut book);
        }
        for (n, a) in path.iter().enumerate() {
            let mut lines = Vec::new();
            let res = self.apply(&mut book, a, Some(&mut lines));
            for (k, l) in lines.into_iter().enumerate() {
                trace.push(if k == 0 { format!("  {:>3}. {l}", n + 1) } else { format!("        {l}") });
            }
            if let Err(v) = res {
                trace.push(format!("        !!! {v}"));
            }
        }
        Counterexample { violation, trace, depth: path.len() }
    }
}
