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
}

impl ClientConfig {
    pub fn new(id: ClientId, read: ReadMode) -> ClientConfig {
        ClientConfig { id, read, retry_us: 400_000, timeout_us: 2_000_000, max_queue: 1024 }
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
    deadline: Time,
    retry_at: Time,
    attempts: u32,
    /// Answers saying "not forwarded anywhere": if every attempt got one,
    /// the request certainly was not applied.
    unavailable_answers: u32,
}

impl Inflight {
    /// The error to report when the deadline passes: `Unavailable` only when
    /// every attempt was answered so; otherwise the outcome is unknown.
    fn give_up_error(&self) -> OpError {
        if self.unavailable_answers >= self.attempts {
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
    /// Every operation submitted and not yet finished, with when it was
    /// submitted: the one in flight first, then the queue.
    pub fn unfinished_ops(&self) -> Vec<(&Op, Time)> {
        let inflight = self.inflight.iter().map(|f| (&f.op, f.invoked));
        inflight.chain(self.queue.iter().map(|(op, t)| (op, *t))).collect()
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
        let Msg::Response { id, result } = msg else { return };
        let Some(f) = &self.inflight else { return };
        if id.seq != f.seq || id.client != self.cfg.id {
            return; // an answer to an earlier attempt we gave up on
        }
        let retryable = matches!(result, Err(OpError::Unavailable | OpError::Timeout));
        if retryable {
            // The balancer gave up on this attempt; the request id makes a
            // retry safe, so try again while our own deadline allows.
            let f = self.inflight.as_mut().expect("checked");
            // At most one "unavailable" per attempt sent so far: a duplicated
            // answer must not make an attempt that was forwarded look
            // refused. (Answers carry no attempt number, so a duplicate
            // arriving after the next attempt still counts; the window is
            // one retry interval.)
            if matches!(result, Err(OpError::Unavailable)) && f.unavailable_answers < f.attempts {
                f.unavailable_answers += 1;
            }
            let again = now + self.cfg.retry_us / 4;
            if again < f.deadline {
                f.retry_at = again;
                return;
            }
        }
        let f = self.inflight.take().expect("checked");
        let result = match result {
            Err(OpError::Unavailable | OpError::Timeout) => Err(f.give_up_error()),
            r => r,
        };
        if let Ok(reply) = &result {
            self.last_lsn = self.last_lsn.max(reply.lsn);
        }
        out.effects.push(Effect::Done(Completion {
            seq: f.seq,
            op: f.op,
            invoked: f.invoked,
            completed: now,
            result,
            attempts: f.attempts,
        }));
        self.start_next(now, out);
    }

    pub fn on_tick(&mut self, now: Time, out: &mut Outbox) {
        let Some(f) = &mut self.inflight else { return };
        if now >= f.deadline {
            let f = self.inflight.take().expect("checked");
            let err = f.give_up_error();
            out.effects.push(Effect::Done(Completion {
                seq: f.seq,
                op: f.op,
                invoked: f.invoked,
                completed: now,
                result: Err(err),
                attempts: f.attempts,
            }));
            self.start_next(now, out);
        } else if now >= f.retry_at {
            f.retry_at = now + self.cfg.retry_us;
            f.attempts += 1;
            let msg = request(&self.cfg, self.last_lsn, f.seq, &f.op);
            out.send(NodeId::Balancer, msg);
        }
    }

    fn start_next(&mut self, now: Time, out: &mut Outbox) {
        if self.inflight.is_some() {
            return;
        }
        let Some((op, invoked)) = self.queue.pop_front() else { return };
        let seq = self.next_seq;
        self.next_seq += 1;
        let msg = request(&self.cfg, self.last_lsn, seq, &op);
        self.inflight = Some(Inflight {
            seq,
            op,
            invoked,
            deadline: now + self.cfg.timeout_us,
            retry_at: now + self.cfg.retry_us,
            attempts: 1,
            unavailable_answers: 0,
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
            completed: now,
            result,
            attempts: 0,
        }));
    }
}

fn request(cfg: &ClientConfig, min_lsn: Lsn, seq: u64, op: &Op) -> Msg {
    Msg::Request { id: RequestId { client: cfg.id, seq }, op: op.clone(), read: cfg.read, min_lsn }
}
