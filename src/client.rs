//! The client state machine: queues operations, sends one at a time to the
//! balancer, retries with the same request id (so a write is applied at most
//! once), and reports each outcome — ambiguous when it cannot know.
//!
//! It knows nothing about sockets, threads, clocks or terminals; the REPL and
//! the simulator's workload drive it.

use crate::machine::{Completion, Effect, Outbox};
use crate::msg::Msg;
use crate::types::{validate_op, ClientId, Lsn, Micros, NodeId, Op, OpError, ReadMode, RequestId, Time};
use std::collections::VecDeque;

#[derive(Clone, Debug)]
pub struct ClientConfig {
    pub id: ClientId,
    pub read: ReadMode,
    /// Resend an unanswered request after this long.
    pub retry_us: Micros,
    /// Give up on a request after this long (a write is then ambiguous).
    pub timeout_us: Micros,
    /// Operations waiting behind the one in flight, at most.
    pub max_queue: usize,
    /// Bug D, re-planted for tests (`Bugs::unavailable_counts_answers`).
    pub bug_counts_unavailable_answers: bool,
}

impl ClientConfig {
    pub fn new(id: ClientId, read: ReadMode) -> ClientConfig {
        ClientConfig {
            id,
            read,
            retry_us: 400_000,
            timeout_us: 2_000_000,
            max_queue: 1024,
            bug_counts_unavailable_answers: false,
        }
    }
}

pub struct Client {
    cfg: ClientConfig,
    next_seq: u64,
    queue: VecDeque<(Op, Time)>,
    inflight: Option<Inflight>,
    /// The highest LSN this client has seen: session reads wait for it.
    last_lsn: Lsn,
}

struct Inflight {
    seq: u64,
    op: Op,
    invoked: Time,
    sent: Time,
    deadline: Time,
    retry_at: Time,
    attempts: u32,
    /// The highest attempt a balancer has answered `Unavailable` for: it
    /// promises that none of attempts 1 to this one was ever forwarded.
    unavailable_upto: u32,
}

impl Inflight {
    /// The error to report when giving up: `Unavailable` only when every
    /// attempt sent is covered by an `Unavailable` answer (certainly not
    /// applied); otherwise the outcome is unknown.
    fn give_up_error(&self) -> OpError {
        if self.unavailable_upto >= self.attempts {
            OpError::Unavailable
        } else {
            OpError::Timeout
        }
    }
}

impl Client {
    pub fn new(cfg: ClientConfig) -> Client {
        Client { cfg, next_seq: 1, queue: VecDeque::new(), inflight: None, last_lsn: Lsn(0) }
    }

    pub fn id(&self) -> ClientId {
        self.cfg.id
    }
    pub fn read_mode(&self) -> ReadMode {
        self.cfg.read
    }
    pub fn last_lsn(&self) -> Lsn {
        self.last_lsn
    }
    /// When the oldest unfinished operation was submitted.
    pub fn oldest_unfinished(&self) -> Option<Time> {
        self.inflight.as_ref().map(|f| f.invoked).or(self.queue.front().map(|q| q.1))
    }
    /// The operations submitted, not yet finished, that may still take
    /// effect, each with when it was sent: only the one in flight (those
    /// still queued were never sent).
    pub fn unfinished_ops(&self) -> Vec<(&Op, Time)> {
        self.inflight.iter().map(|f| (&f.op, f.sent)).collect()
    }
    /// Operations submitted and not yet finished.
    pub fn unfinished(&self) -> usize {
        self.queue.len() + usize::from(self.inflight.is_some())
    }
    /// Nothing in flight and nothing queued.
    pub fn is_idle(&self) -> bool {
        self.inflight.is_none() && self.queue.is_empty()
    }
    pub fn next_wakeup(&self) -> Option<Time> {
        self.inflight.as_ref().map(|f| f.retry_at.min(f.deadline))
    }

    /// Queues an operation; its outcome comes back as an [`Effect::Done`].
    pub fn submit(&mut self, now: Time, op: Op, out: &mut Outbox) {
        if let Err(e) = validate_op(&op) {
            self.complete_now(now, op, Err(e), out);
            return;
        }
        if self.queue.len() >= self.cfg.max_queue {
            self.complete_now(now, op, Err(OpError::Overloaded), out);
            return;
        }
        self.queue.push_back((op, now));
        self.start_next(now, out);
    }

    pub fn on_message(&mut self, now: Time, _from: NodeId, msg: Msg, out: &mut Outbox) {
        let Msg::Response { id, attempt, result } = msg else { return };
        let Some(f) = &mut self.inflight else { return };
        if id.seq != f.seq || id.client != self.cfg.id || attempt == 0 || attempt > f.attempts {
            return; // an answer to an earlier request we gave up on, or forged
        }
        let retryable = matches!(result, Err(OpError::Unavailable | OpError::Timeout));
        if retryable {
            // The balancer gave up on this attempt; the request id makes a
            // retry safe, so try again while our own deadline leaves time to
            // hear the answer (an attempt sent and never answered makes the
            // outcome unknown).
            if matches!(result, Err(OpError::Unavailable)) {
                f.unavailable_upto = if self.cfg.bug_counts_unavailable_answers {
                    f.unavailable_upto + 1
                } else {
                    f.unavailable_upto.max(attempt)
                };
            }
            let again = now + self.cfg.retry_us / 4;
            if again + self.cfg.retry_us / 4 < f.deadline {
                f.retry_at = f.retry_at.min(again);
                return;
            }
        }
        let f = self.inflight.take().expect("checked");
        let result = match result {
            Err(OpError::Unavailable | OpError::Timeout) => Err(f.give_up_error()),
            r => r,
        };
        self.finish(now, f, result, out);
    }

    pub fn on_tick(&mut self, now: Time, out: &mut Outbox) {
        let Some(f) = &mut self.inflight else { return };
        if now >= f.deadline {
            let f = self.inflight.take().expect("checked");
            let err = f.give_up_error();
            self.finish(now, f, Err(err), out);
        } else if now >= f.retry_at {
            f.retry_at = now + self.cfg.retry_us;
            f.attempts += 1;
            let msg = request(&self.cfg, self.last_lsn, f.seq, f.attempts, &f.op);
            out.send(NodeId::Balancer, msg);
        }
    }

    fn finish(
        &mut self,
        now: Time,
        f: Inflight,
        result: Result<crate::msg::Reply, OpError>,
        out: &mut Outbox,
    ) {
        if let Ok(reply) = &result {
            self.last_lsn = self.last_lsn.max(reply.lsn);
        }
        out.effects.push(Effect::Done(Completion {
            seq: f.seq,
            op: f.op,
            invoked: f.invoked,
            sent: f.sent,
            completed: now,
            result,
            attempts: f.attempts,
        }));
        self.start_next(now, out);
    }

    fn start_next(&mut self, now: Time, out: &mut Outbox) {
        if self.inflight.is_some() {
            return;
        }
        let Some((op, invoked)) = self.queue.pop_front() else { return };
        let seq = self.next_seq;
        self.next_seq += 1;
        let msg = request(&self.cfg, self.last_lsn, seq, 1, &op);
        self.inflight = Some(Inflight {
            seq,
            op,
            invoked,
            sent: now,
            deadline: now + self.cfg.timeout_us,
            retry_at: now + self.cfg.retry_us,
            attempts: 1,
            unavailable_upto: 0,
        });
        out.send(NodeId::Balancer, msg);
    }

    fn complete_now(
        &mut self,
        now: Time,
        op: Op,
        result: Result<crate::msg::Reply, OpError>,
        out: &mut Outbox,
    ) {
        let seq = 0;
        out.effects.push(Effect::Done(Completion {
            seq,
            op,
            invoked: now,
            sent: now,
            completed: now,
            result,
            attempts: 0,
        }));
    }
}

fn request(cfg: &ClientConfig, min_lsn: Lsn, seq: u64, attempt: u32, op: &Op) -> Msg {
    Msg::Request { id: RequestId { client: cfg.id, seq }, attempt, op: op.clone(), read: cfg.read, min_lsn }
}
