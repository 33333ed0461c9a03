//! Unit tests of each machine through a tiny synchronous driver: messages
//! are delivered in FIFO order, persists complete when the driver says so.

use kvstore::balancer::Balancer;
use kvstore::client::{Client, ClientConfig};
use kvstore::replica::Replica;
use kvstore::*;
use std::collections::VecDeque;

fn cfg() -> ClusterConfig {
    ClusterConfig::new(3, 1)
}

type Sends = Vec<(NodeId, Msg)>;
type Persists = Vec<(u64, PersistOp)>;

/// Splits one machine's outbox into its sends and its persist operations.
fn split(out: &mut Outbox) -> (Sends, Persists) {
    let mut sends = Vec::new();
    let mut persists = Vec::new();
    for e in out.drain() {
        match e {
            Effect::Send { to, msg } => sends.push((to, msg)),
            Effect::Persist { id, op } => persists.push((id, op)),
            _ => {}
        }
    }
    (sends, persists)
}

fn put(epoch: u64, lsn: u64, key: &str, value: &str, client: u64, seq: u64) -> Row {
    Row {
        epoch: Epoch(epoch),
        lsn: Lsn(lsn),
        body: RowBody::Put {
            key: key.into(),
            value: Some(value.into()),
            req: RequestId { client: ClientId(client), seq },
        },
    }
}

/// An append as a leader sends it: `end`, the end of the leader's log, is
/// the last row it carries; `echo` names the follower's process (0, as
/// `Replica::new` gives).
fn append(epoch: u64, prev: (u64, u64), rows: Vec<Row>, commit: u64) -> Msg {
    let end = Lsn(prev.0 + rows.len() as u64);
    Msg::Append {
        epoch: Epoch(epoch),
        prev: LogPos { lsn: Lsn(prev.0), epoch: Epoch(prev.1) },
        rows,
        commit: Lsn(commit),
        probe: 0,
        end,
        echo: 0,
    }
}

/// The ballot of the balancer these tests play.
const BALLOT: u64 = 0xb0;

fn prepare(epoch: u64) -> Msg {
    Msg::Prepare { epoch: Epoch(epoch), ballot: BALLOT }
}

fn promote(epoch: u64) -> Msg {
    Msg::Promote { epoch: Epoch(epoch), ballot: BALLOT }
}

const R1: NodeId = NodeId::Replica(ReplicaId(1));
const T: Time = Time(1000);

#[test]
fn prepare_is_answered_only_after_the_promise_is_durable() {
    let mut r = Replica::new(ReplicaId(2), cfg());
    let mut out = Outbox::new();
    r.on_message(T, NodeId::Balancer, prepare(1), &mut out);
    let (sends, persists) = split(&mut out);
    assert!(sends.is_empty(), "answered before the promise was durable: {sends:?}");
    assert_eq!(persists, vec![(1, PersistOp::Promise(Epoch(1)))]);
    r.on_persisted(T, 1, &mut out);
    let (sends, _) = split(&mut out);
    assert!(
        matches!(&sends[..], [(NodeId::Balancer, Msg::Promise { epoch: Epoch(1), ballot: BALLOT, .. })]),
        "{sends:?}"
    );
    // An older epoch from elsewhere is refused once promised.
    r.on_message(T, NodeId::Balancer, prepare(0), &mut out);
    let (sends, _) = split(&mut out);
    assert!(matches!(&sends[..], [(_, Msg::PrepareRefused { promised: Epoch(1), .. })]), "{sends:?}");
}

/// Each epoch is promised at most once: the same epoch under another ballot
/// is refused, while a repeat of the very Prepare answered (its Promise was
/// lost) gets the same promise again, without a second persist.
#[test]
fn an_epoch_is_promised_once_except_to_a_repeat_of_the_same_ballot() {
    let mut r = Replica::new(ReplicaId(2), cfg());
    let mut out = Outbox::new();
    r.on_message(T, NodeId::Balancer, prepare(1), &mut out);
    r.on_persisted(T, 1, &mut out);
    out.drain();
    // The same epoch from another promotion attempt: refused.
    let other = Msg::Prepare { epoch: Epoch(1), ballot: BALLOT + 1 };
    r.on_message(T, NodeId::Balancer, other, &mut out);
    let (sends, persists) = split(&mut out);
    assert!(persists.is_empty(), "{persists:?}");
    assert!(
        matches!(
            &sends[..],
            [(_, Msg::PrepareRefused { epoch: Epoch(1), ballot, promised: Epoch(1) })] if *ballot == BALLOT + 1
        ),
        "{sends:?}"
    );
    // A repeat of the Prepare it answered: the same promise again.
    r.on_message(T, NodeId::Balancer, prepare(1), &mut out);
    let (sends, persists) = split(&mut out);
    assert!(persists.is_empty(), "a repeat persists nothing new: {persists:?}");
    assert!(
        matches!(&sends[..], [(NodeId::Balancer, Msg::Promise { epoch: Epoch(1), ballot: BALLOT, .. })]),
        "{sends:?}"
    );
    // Once something has happened in that epoch (here: it follows a
    // leader of it), a repeat is refused too.
    r.on_message(T, R1, append(1, (0, 0), vec![], 0), &mut out);
    out.drain();
    r.on_message(T, NodeId::Balancer, prepare(1), &mut out);
    let (sends, _) = split(&mut out);
    assert!(matches!(&sends[..], [(_, Msg::PrepareRefused { promised: Epoch(1), .. })]), "{sends:?}");
    // A promise the disk kept but this process did not make is not repeated
    // either: a restarted replica refuses the epoch it had promised.
    let stored = Stored { promised: Epoch(1), ..Stored::default() };
    let mut r = Replica::recover(ReplicaId(2), cfg(), stored);
    r.on_message(T, NodeId::Balancer, prepare(1), &mut out);
    let (sends, _) = split(&mut out);
    assert!(matches!(&sends[..], [(_, Msg::PrepareRefused { promised: Epoch(1), .. })]), "{sends:?}");
}

#[test]
fn follower_acknowledges_only_durable_rows_and_holds_early_ones() {
    let mut r = Replica::new(ReplicaId(2), cfg());
    let mut out = Outbox::new();
    // Row 2 arrives before row 1: held, and the follower asks from lsn 1.
    r.on_message(T, R1, append(1, (1, 1), vec![put(1, 2, "b", "2", 9, 2)], 0), &mut out);
    let (sends, persists) = split(&mut out);
    assert!(persists.iter().all(|(_, op)| !matches!(op, PersistOp::Append(_))));
    assert!(
        sends.iter().any(|(to, m)| *to == R1 && matches!(m, Msg::AppendAck { ok: false, last: Lsn(0), .. })),
        "{sends:?}"
    );
    // Row 1 arrives: both rows are written, and acknowledged only once durable.
    r.on_message(T, R1, append(1, (0, 0), vec![put(1, 1, "a", "1", 9, 1)], 0), &mut out);
    let (sends, persists) = split(&mut out);
    assert!(sends.iter().all(|(_, m)| !matches!(m, Msg::AppendAck { ok: true, .. })), "{sends:?}");
    let last_id = persists.iter().map(|(id, _)| *id).max().unwrap();
    assert_eq!(r.last_pos().lsn, Lsn(2));
    r.on_persisted(T, last_id, &mut out);
    let (sends, _) = split(&mut out);
    assert!(
        sends.iter().any(|(_, m)| matches!(m, Msg::AppendAck { ok: true, last: Lsn(2), .. })),
        "{sends:?}"
    );
    // Nothing is applied until the leader says it is committed.
    assert!(r.data().is_empty());
    r.on_message(T, R1, append(1, (2, 1), vec![], 2), &mut out);
    assert_eq!(r.data().get("a").map(String::as_str), Some("1"));
    assert_eq!(r.data().get("b").map(String::as_str), Some("2"));
}

#[test]
fn rows_from_an_older_epoch_are_refused() {
    let mut r = Replica::new(ReplicaId(2), cfg());
    let mut out = Outbox::new();
    r.on_message(T, NodeId::Balancer, prepare(3), &mut out);
    out.drain();
    r.on_message(T, R1, append(2, (0, 0), vec![put(2, 1, "a", "x", 9, 1)], 0), &mut out);
    let (sends, _) = split(&mut out);
    assert!(matches!(&sends[..], [(_, Msg::AppendAck { epoch: Epoch(3), ok: false, .. })]), "{sends:?}");
    assert_eq!(r.last_pos().lsn, Lsn(0));
}

#[test]
fn a_deposed_leaders_uncommitted_suffix_is_dropped() {
    let stored = Stored {
        promised: Epoch(1),
        snapshot: None,
        rows: vec![put(1, 1, "a", "1", 9, 1), put(1, 2, "a", "lost", 9, 2)],
    };
    let mut r = Replica::recover(ReplicaId(1), cfg(), stored);
    let mut out = Outbox::new();
    // The new leader of epoch 2 has row 1 and its own row 2.
    let new_row = Row { epoch: Epoch(2), lsn: Lsn(2), body: RowBody::Noop };
    r.on_message(T, NodeId::Replica(ReplicaId(2)), append(2, (1, 1), vec![new_row.clone()], 2), &mut out);
    let (_, persists) = split(&mut out);
    assert!(persists.contains(&(persists[1].0, PersistOp::TruncateAfter(Lsn(1)))), "{persists:?}");
    assert_eq!(r.log().get(Lsn(2)), Some(&new_row));
    assert_eq!(r.data().get("a").map(String::as_str), Some("1"));
}

/// Drives one leader and its two followers with instant, reliable delivery.
struct Trio {
    r: Vec<Replica>,
    to_lb: Vec<Msg>,
}

impl Trio {
    fn new() -> Trio {
        let mut t = Trio { r: (1..=3).map(|i| Replica::new(ReplicaId(i), cfg())).collect(), to_lb: vec![] };
        for i in 0..3 {
            t.input(i, NodeId::Balancer, prepare(1));
        }
        t.to_lb.clear();
        t.input(0, NodeId::Balancer, promote(1));
        t
    }

    fn input(&mut self, i: usize, from: NodeId, msg: Msg) {
        let mut q = VecDeque::from([(i, from, msg)]);
        while let Some((i, from, msg)) = q.pop_front() {
            let mut out = Outbox::new();
            self.r[i].on_message(T, from, msg, &mut out);
            let mut pending = out.effects;
            while !pending.is_empty() {
                let mut next = Vec::new();
                for e in pending {
                    match e {
                        Effect::Send { to: NodeId::Replica(r), msg } => {
                            q.push_back((r.0 as usize - 1, NodeId::Replica(ReplicaId(i as u8 + 1)), msg))
                        }
                        Effect::Send { msg, .. } => self.to_lb.push(msg),
                        Effect::Persist { id, .. } => {
                            let mut o = Outbox::new();
                            self.r[i].on_persisted(T, id, &mut o);
                            next.extend(o.effects);
                        }
                        _ => {}
                    }
                }
                pending = next;
            }
        }
    }

    fn write(&mut self, client: u64, seq: u64, key: &str, value: &str) {
        let id = RequestId { client: ClientId(client), seq };
        self.input(0, NodeId::Balancer, Msg::Write { id, key: key.into(), value: Some(value.into()) });
    }
}

#[test]
fn a_retried_write_is_applied_once() {
    let mut t = Trio::new();
    t.write(7, 1, "k", "v1");
    t.write(7, 1, "k", "v1"); // the same request again
    let results: Vec<_> = t.to_lb.iter().filter(|m| matches!(m, Msg::WriteResult { .. })).cloned().collect();
    assert_eq!(results.len(), 2);
    assert_eq!(results[0], results[1], "both answers name the same row");
    let puts = t.r[0].log().rows().iter().filter(|r| matches!(r.body, RowBody::Put { .. })).count();
    assert_eq!(puts, 1);
    // An older sequence number after a newer one is never applied.
    t.write(7, 2, "k", "v2");
    t.to_lb.clear();
    t.write(7, 1, "k", "v1");
    assert!(matches!(
        &t.to_lb[..],
        [Msg::WriteResult { result: Err(kvstore::msg::Refusal::Superseded), .. }]
    ));
    assert_eq!(t.r[0].data().get("k").map(String::as_str), Some("v2"));
}

#[test]
fn writes_replicate_and_followers_converge() {
    let mut t = Trio::new();
    for i in 0..20 {
        t.write(1, i + 1, &format!("k{}", i % 5), &format!("v{i}"));
    }
    // A heartbeat carries the final commit point.
    let mut out = Outbox::new();
    t.r[0].on_tick(Time(1_000_000), &mut out);
    for e in out.effects {
        if let Effect::Send { to: NodeId::Replica(r), msg } = e {
            t.input(r.0 as usize - 1, R1, msg);
        }
    }
    assert_eq!(t.r[0].applied(), Lsn(21)); // the no-op plus 20 writes
    for r in &t.r[1..] {
        assert_eq!(r.applied(), t.r[0].applied());
        assert_eq!(r.data(), t.r[0].data());
    }
}

#[test]
fn leader_reads_wait_for_confirmation_from_a_follower() {
    let mut t = Trio::new();
    t.write(1, 1, "k", "v");
    let mut out = Outbox::new();
    let read = Msg::Read { tag: 5, key: "k".into(), mode: ReadMode::Leader, min_lsn: Lsn(0) };
    t.r[0].on_message(T, NodeId::Balancer, read, &mut out);
    let (sends, _) = split(&mut out);
    assert!(sends.iter().all(|(_, m)| !matches!(m, Msg::ReadResult { .. })), "answered without confirmation");
    let probe = sends
        .iter()
        .find_map(|(to, m)| matches!(m, Msg::Append { .. }).then(|| (*to, m.clone())))
        .expect("a confirmation round goes out");
    t.to_lb.clear();
    t.input(probe.0.replica_index(), R1, probe.1);
    assert!(
        t.to_lb.iter().any(
            |m| matches!(m, Msg::ReadResult { tag: 5, result: Ok(r) } if r.value.as_deref() == Some("v"))
        ),
        "{:?}",
        t.to_lb
    );
}

trait ReplicaIndex {
    fn replica_index(&self) -> usize;
}
impl ReplicaIndex for NodeId {
    fn replica_index(&self) -> usize {
        match self {
            NodeId::Replica(r) => r.0 as usize - 1,
            _ => panic!("not a replica"),
        }
    }
}

#[test]
fn client_reports_an_unanswered_write_as_ambiguous() {
    let mut c = Client::new(ClientConfig::new(ClientId(1), ReadMode::Session));
    let mut out = Outbox::new();
    c.submit(Time(0), Op::Set { key: "k".into(), value: "v".into() }, &mut out);
    assert!(matches!(&out.effects[..], [Effect::Send { to: NodeId::Balancer, msg: Msg::Request { .. } }]));
    out.drain();
    let mut now = Time(0);
    let mut sends = 0;
    for _ in 0..100 {
        let Some(w) = c.next_wakeup() else { break };
        assert!(w > now, "client asked to be woken in the past");
        now = w;
        c.on_tick(now, &mut out);
        sends += out.effects.iter().filter(|e| matches!(e, Effect::Send { .. })).count();
        if let Some(Effect::Done(d)) = out.effects.iter().find(|e| matches!(e, Effect::Done(_))) {
            assert!(d.is_ambiguous(), "{d:?}");
            assert!(sends >= 2, "it retried before giving up");
            return;
        }
        out.drain();
    }
    panic!("client never gave up");
}

#[test]
fn client_rejects_bad_input_without_sending() {
    let mut c = Client::new(ClientConfig::new(ClientId(1), ReadMode::Session));
    let mut out = Outbox::new();
    c.submit(Time(0), Op::Get { key: String::new() }, &mut out);
    c.submit(Time(0), Op::Set { key: "k".into(), value: "x".repeat(MAX_VALUE_BYTES + 1) }, &mut out);
    let done: Vec<_> = out
        .effects
        .iter()
        .filter(|e| matches!(e, Effect::Done(d) if matches!(d.result, Err(OpError::Invalid(_)))))
        .collect();
    assert_eq!(done.len(), 2);
    assert!(out.effects.iter().all(|e| !matches!(e, Effect::Send { .. })));
}

#[test]
fn balancer_refuses_to_promote_without_a_safe_quorum() {
    let mut b = Balancer::new(cfg(), Time(0), 1);
    let mut out = Outbox::new();
    let mut now = Time(0);
    let mut promoted = false;
    // Only r3 ever answers.
    for _ in 0..200 {
        now = b.next_wakeup().unwrap().max(now);
        b.on_tick(now, &mut out);
        for e in out.drain().collect::<Vec<_>>() {
            let Effect::Send { to: NodeId::Replica(ReplicaId(3)), msg } = e else { continue };
            let reply = match msg {
                Msg::Ping { nonce } => Msg::Pong { nonce, status: Default::default() },
                Msg::Prepare { epoch, ballot } => {
                    Msg::Promise { epoch, ballot, last: LogPos::default(), missing: false }
                }
                Msg::Promote { .. } => {
                    promoted = true;
                    continue;
                }
                _ => continue,
            };
            b.on_message(now, NodeId::Replica(ReplicaId(3)), reply, &mut out);
        }
        assert!(out.effects.iter().all(|e| !matches!(e, Effect::Send { msg: Msg::Promote { .. }, .. })));
    }
    assert!(!promoted && b.leader().is_none(), "promoted with one promise of three");
}

#[test]
fn quorum_sizes() {
    assert_eq!(ClusterConfig::new(3, 1).promotion_quorum(), 2);
    assert_eq!(ClusterConfig::new(3, 0).promotion_quorum(), 3);
    assert_eq!(ClusterConfig::new(5, 1).promotion_quorum(), 4);
    assert_eq!(ClusterConfig::new(5, 2).promotion_quorum(), 3);
    assert_eq!(ClusterConfig::new(3, 2).promotion_quorum(), 2);
}

/// A stale retry (seq 1) arriving after its successor (seq 2) is in the log
/// but not yet committed is refused, and a later duplicate of seq 2 is not
/// applied again (found in review: the at-most-once table went backwards).
#[test]
fn a_stale_retry_behind_its_successor_is_never_applied() {
    let mut t = Trio::new();
    let mut out = Outbox::new();
    let write = |seq: u64, value: &str| Msg::Write {
        id: RequestId { client: ClientId(7), seq },
        key: "k".into(),
        value: Some(value.into()),
    };
    // Leader only: seq 2 goes into the log, seq 1 arrives before it commits.
    t.r[0].on_message(T, NodeId::Balancer, write(2, "new"), &mut out);
    t.r[0].on_message(T, NodeId::Balancer, write(1, "old"), &mut out);
    let (sends, persists) = split(&mut out);
    assert!(
        sends.iter().any(|(_, m)| matches!(
            m,
            Msg::WriteResult { id, result: Err(kvstore::msg::Refusal::Superseded) } if id.seq == 1
        )),
        "{sends:?}"
    );
    // Now the leader's disk and the followers catch up, and seq 2 commits.
    let last_id = persists.iter().map(|(id, _)| *id).max().unwrap();
    t.r[0].on_persisted(T, last_id, &mut out);
    let (more, _) = split(&mut out);
    for (to, msg) in sends.into_iter().chain(more) {
        if let NodeId::Replica(r) = to {
            t.input(r.0 as usize - 1, R1, msg);
        }
    }
    // The same request again is answered from the table, not applied twice.
    t.write(7, 2, "k", "new");
    let puts: Vec<_> = t.r[0]
        .log()
        .rows()
        .iter()
        .filter_map(|r| match &r.body {
            RowBody::Put { req, .. } => Some(req.seq),
            _ => None,
        })
        .collect();
    assert_eq!(puts, vec![2], "seq 1 never entered the log and seq 2 is there once");
    assert_eq!(t.r[0].data().get("k").map(String::as_str), Some("new"));
    assert_eq!(t.r[0].sessions().get(&ClientId(7)).map(|s| s.0), Some(2));
}

#[test]
fn a_restarted_replica_never_leads_an_epoch_it_led_before() {
    let mut t = Trio::new();
    t.write(1, 1, "k", "v");
    // r1 restarts from its disk: it promised e1 there, but not in this process.
    let stored = Stored { promised: Epoch(1), snapshot: None, rows: t.r[0].log().rows().to_vec() };
    let mut r1 = Replica::recover(ReplicaId(1), cfg(), stored);
    let mut out = Outbox::new();
    r1.on_message(T, NodeId::Balancer, promote(1), &mut out);
    assert!(!r1.is_leader(), "led e1 a second time");
    // A fresh Prepare for a newer epoch, then Promote under another ballot
    // than the one promised: refused.
    r1.on_message(T, NodeId::Balancer, prepare(2), &mut out);
    r1.on_message(T, NodeId::Balancer, Msg::Promote { epoch: Epoch(2), ballot: BALLOT + 1 }, &mut out);
    assert!(!r1.is_leader(), "promoted under a ballot it never promised");
    // Promote with the ballot that was promised is fine.
    r1.on_message(T, NodeId::Balancer, promote(2), &mut out);
    assert!(r1.is_leader());
}
