//! The README's "What survives what", row "more than n - q replicas down",
//! as the one-shot `kvnode client` answers it, against real processes:
//! with two of three replicas SIGKILLed a write sent after the promotion
//! stalled prints `error: unavailable...` and exits 1 within a few seconds,
//! and it is certainly not applied: once the replicas are back and a leader
//! is promoted (without anyone stepping in), a leader read says `(nil)`, no
//! replica holds the key, and writes succeed again.
//!
//! Two shapes: the two followers die (the leader lives on, cut off from its
//! followers, reports so and is failed over; the promotion stalls), and the
//! leader dies with one follower (the promotion stalls at once).

// Process tests drive real processes against the wall clock and threads.
#![allow(clippy::disallowed_methods)]

mod common;

use common::{wait_until, Proc, TestCluster};
use kvstore::msg::Msg;
use kvstore::runtime::net;
use kvstore::types::{ClientId, Op, OpError, ReadMode, RequestId};
use kvstore::wire::{self, Frame};
use kvstore::Lsn;
use std::io::Write;
use std::time::{Duration, Instant};

/// The longest a refused write may take to be answered ("within a few
/// seconds"; the client gives up on its own after 2 s, and that would be an
/// ambiguous answer, not `unavailable`).
const ANSWER_WITHIN: Duration = Duration::from_secs(3);
/// Writes tried while the cluster is down, each a key of its own.
const REFUSED_WRITES: usize = 3;

/// What one `kvnode client --connect ADDR ARGS...` printed and returned.
struct Run {
    code: Option<i32>,
    stdout: Vec<String>,
    stderr: Vec<String>,
    took: Duration,
}

/// Runs a one-shot client command, waiting at most 15 s for it to exit.
fn one_shot(addr: &str, args: &[&str]) -> Run {
    let mut cmd = vec!["client", "--connect", addr];
    cmd.extend_from_slice(args);
    let began = Instant::now();
    let mut p = Proc::spawn("client", &cmd);
    let status = p.wait_exit(Duration::from_secs(15));
    let took = began.elapsed();
    let Some(status) = status else {
        panic!("`kvnode client {}` still running after 15 s; stdout {:?}", args.join(" "), p.stdout_lines());
    };
    // Let the collectors catch the last lines (the pipes are closed now).
    wait_until(Duration::from_secs(2), || !p.stdout_lines().is_empty());
    std::thread::sleep(Duration::from_millis(50));
    Run { code: status.code(), stdout: p.stdout_lines(), stderr: p.stderr_lines(), took }
}

/// Sends the balancer one write, attempt 1, as a client would, and waits
/// (at most 5 s) for its answer to that attempt: the balancer's own answer,
/// without the client's retries around it. Returns it and how long it took.
fn balancer_answer(addr: &str, key: &str) -> (Result<kvstore::Reply, OpError>, Duration) {
    let client = ClientId(kvstore::runtime::random_u64());
    let (stream, mut dec) = common::client_connection(addr, client, None)
        .unwrap_or_else(|e| panic!("handshake with the balancer: {e}"));
    stream.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let id = RequestId { client, seq: 1 };
    let op = Op::Set { key: key.into(), value: "lost value".into() };
    let mut buf = Vec::new();
    let req = Msg::Request { id, attempt: 1, op, read: ReadMode::Leader, min_lsn: Lsn(0) };
    wire::encode_frame(&Frame::Msg(req), wire::MAX_FRAME_BYTES, &mut buf).unwrap();
    let began = Instant::now();
    (&stream).write_all(&buf).unwrap();
    loop {
        while let Some(f) = dec.next_frame().unwrap() {
            if let Frame::Msg(Msg::Response { id: i, attempt: 1, result }) = f {
                if i == id {
                    return (result, began.elapsed());
                }
            }
        }
        assert!(began.elapsed() < Duration::from_secs(5), "the balancer did not answer attempt 1 within 5 s");
        match dec.fill(&mut &stream) {
            Ok(0) => panic!("the balancer closed the connection"),
            Ok(_) => {}
            Err(e) if net::is_timeout(&e) => {}
            Err(e) => panic!("reading the balancer's answer: {e}"),
        }
    }
}

/// The balancer's log from line `from` on.
fn log_since(c: &TestCluster, from: usize) -> Vec<String> {
    c.lb.stderr_lines().into_iter().skip(from).collect()
}

/// Waits until the balancer logs, after line `from`, a line containing
/// `needle`; returns how long that took.
fn wait_log(c: &TestCluster, from: usize, needle: &str, timeout: Duration, what: &str) -> Duration {
    let began = Instant::now();
    let ok = wait_until(timeout, || log_since(c, from).iter().any(|l| l.contains(needle)));
    assert!(
        ok,
        "{what}: no {needle:?} in the balancer log within {timeout:?}; log:\n{}",
        log_since(c, 0).join("\n")
    );
    began.elapsed()
}

/// A one-shot command, repeated (at most for 10 s) while it prints an
/// `error:` line, which is reported; returns the first other answer.
fn first_answer(c: &TestCluster, args: &[&str], what: &str) -> Run {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let run = one_shot(&c.lb_addr, args);
        let failed = run.stdout.iter().any(|l| l.starts_with("error:"));
        if !failed {
            return run;
        }
        eprintln!(
            "  {what}: `{}` answered {:?} (exit {:?}); trying again",
            args.join(" "),
            run.stdout,
            run.code
        );
        assert!(
            Instant::now() < end,
            "{what}: `{}` kept failing, last {:?}; balancer log:\n{}",
            args.join(" "),
            run.stdout,
            log_since(c, 0).join("\n")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn two_down(kill_leader: bool) {
    let shape = if kill_leader { "leader + one follower killed" } else { "both followers killed" };
    let mut c = TestCluster::start(3, true);
    assert!(wait_until(Duration::from_secs(10), || c.leader().is_some()), "no leader in the balancer log");
    let leader = c.leader().unwrap();
    let followers: Vec<u8> = (1..=3).filter(|&i| i != leader).collect();
    let victims: Vec<u8> = if kill_leader { vec![leader, followers[0]] } else { followers.clone() };
    let survivor = (1..=3).find(|i| !victims.contains(i)).unwrap();

    let mark = c.lb.stderr_lines().len();
    let killed_at = Instant::now();
    for &v in &victims {
        c.replica(v).kill9();
    }
    // The balancer notices: it loses the leader (dead, or alive but cut off
    // from its followers), and the promotion cannot gather a quorum.
    let lost = wait_log(&c, mark, &format!("** lost r{leader} "), Duration::from_secs(10), shape);
    let stalled = wait_log(&c, mark, "** cannot promote", Duration::from_secs(10), shape);
    eprintln!(
        "[{shape}] r{leader} led; killed {victims:?}, r{survivor} lives; balancer lost r{leader} after {lost:?}, \
         promotion stalled after {stalled:?}"
    );
    assert!(
        !log_since(&c, mark).iter().any(|l| l.contains("** promotes r") || l.contains("** found r")),
        "{shape}: a leader was promoted with two of three replicas down; log:\n{}",
        log_since(&c, mark).join("\n")
    );

    // Writes now: each is refused, exactly, promptly.
    let keys: Vec<String> = (0..REFUSED_WRITES).map(|i| format!("never-{i}")).collect();
    let mut took = Vec::new();
    for key in &keys {
        let since_kill = killed_at.elapsed();
        let run = one_shot(&c.lb_addr, &["set", &format!("{key}=lost value")]);
        eprintln!(
            "[{shape}] `set {key}=...` {since_kill:?} after the kill: {:?}, exit {:?}, answered in {:?}",
            run.stdout, run.code, run.took
        );
        let exact = run.stdout.len() == 1 && run.stdout[0].starts_with("error: unavailable");
        assert!(
            exact && run.code == Some(1) && run.took < ANSWER_WITHIN,
            "{shape}: `set {key}=...` should print one `error: unavailable` line and exit 1 within \
             {ANSWER_WITHIN:?}; it printed {:?} (stderr {:?}), exit {:?}, after {:?}; balancer log since the kill:\n{}",
            run.stdout,
            run.stderr,
            run.code,
            run.took,
            log_since(&c, mark).join("\n")
        );
        took.push(run.took);
    }
    eprintln!("[{shape}] unavailable answered in {took:?}");

    // The balancer itself refuses at once; the client's ~2 s above is its
    // own retrying (each retry is refused too) until its deadline nears.
    let (answer, raw_took) = balancer_answer(&c.lb_addr, "never-raw");
    eprintln!("[{shape}] the balancer answered a bare attempt 1 with {answer:?} in {raw_took:?}");
    assert!(
        matches!(answer, Err(OpError::Unavailable)) && raw_took < Duration::from_millis(500),
        "{shape}: the balancer answered {answer:?} after {raw_took:?}"
    );
    let mut keys = keys;
    keys.push("never-raw".into());

    // What the balancer said meanwhile, for the record: the loss, the
    // first stall, and how many stalled attempts followed.
    let during = log_since(&c, mark);
    let said = |needle: &str| -> Vec<String> {
        let lines = during.iter().filter(|l| l.contains(needle));
        lines.map(|l| l.split(" ** ").last().unwrap().to_string()).collect()
    };
    let stalls = said("** cannot promote");
    eprintln!(
        "[{shape}] balancer while two were down: {:?}, then {:?}; {} stalled attempts in all",
        said("** lost r").first(),
        stalls.first(),
        stalls.len()
    );

    // The replicas come back on their data directories; the balancer
    // promotes a leader by itself (as soon as the first one is back: two of
    // three make a quorum).
    let mark = c.lb.stderr_lines().len();
    let back_at = Instant::now();
    for &v in &victims {
        c.restart_replica(v);
    }
    let restarted = back_at.elapsed();
    wait_log(&c, mark, "** promotes r", Duration::from_secs(20), shape);
    eprintln!(
        "[{shape}] replicas restarted in {restarted:?}; a leader promoted within {:?} of the first restart ({})",
        back_at.elapsed(),
        log_since(&c, mark).iter().rev().find(|l| l.contains("** promotes r")).unwrap()
    );

    // The refused writes never appear: a leader read says (nil).
    for key in &keys {
        let run = first_answer(&c, &["get", key], shape);
        assert!(
            run.stdout == ["(nil)"] && run.code == Some(0),
            "{shape}: `get {key}` after recovery printed {:?}, exit {:?}; the write was answered unavailable",
            run.stdout,
            run.code
        );
    }

    // A write succeeds again, and is read back.
    let began = Instant::now();
    let run = first_answer(&c, &["set", "after=recovered"], shape);
    assert!(
        run.stdout == ["Successfully set key 'after' with value 'recovered'"] && run.code == Some(0),
        "{shape}: write after recovery printed {:?}, exit {:?}",
        run.stdout,
        run.code
    );
    eprintln!("[{shape}] write after recovery succeeded in {:?}", began.elapsed());
    let run = one_shot(&c.lb_addr, &["get", "after"]);
    assert!(run.stdout == ["recovered"] && run.code == Some(0), "{shape}: read back {:?}", run.stdout);

    // No replica holds a refused write either, once it has caught up past
    // the write just made.
    for i in 1..=3u8 {
        let mut probe = c.probe(i);
        let caught_up = wait_until(Duration::from_secs(20), || {
            probe.read_local("after").value.as_deref() == Some("recovered")
        });
        assert!(caught_up, "{shape}: r{i} never applied the write made after recovery");
        for key in &keys {
            let held = probe.read_local(key).value;
            assert!(held.is_none(), "{shape}: r{i} holds {key} = {held:?}, a write answered unavailable");
        }
    }
    assert!(c.all_alive(), "{shape}: a process died");
}

#[test]
fn two_followers_down_writes_unavailable_then_recover() {
    two_down(false);
}

#[test]
fn leader_and_a_follower_down_writes_unavailable_then_recover() {
    two_down(true);
}
