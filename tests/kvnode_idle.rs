//! One thread per node: a balancer holding 2,000 idle client connections
//! (each past its handshake) runs on the same few threads as an idle one,
//! and each connection costs it a few KiB. The figures are printed (run
//! with `--nocapture`); the bounds asserted are loose on purpose: a
//! thread per connection, or a 32 KiB buffer kept per idle connection,
//! fails them.

// Process tests drive real processes against the wall clock and threads.
#![allow(clippy::disallowed_methods)]

mod common;

use common::{get, set, TestCluster};
use kvstore::types::ReadMode;
use std::time::{Duration, Instant};

/// Idle connections held (fewer when the open-file limit leaves fewer).
const IDLE: usize = 2000;

fn status_field(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap_or_else(|| panic!("no {field}"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn two_thousand_idle_connections_cost_no_threads_and_little_memory() {
    let limit = kvstore::runtime::auth::connection_limit();
    let n = IDLE.min(limit.saturating_sub(64));
    assert!(n >= 32, "the open-file limit leaves only {limit} connections\n{}", common::process_limits());
    if n < IDLE {
        eprintln!(
            "the open-file limit leaves the balancer {limit} connections: {n} idle clients instead of {IDLE}"
        );
    }
    let c = TestCluster::start(3, false);
    let pid = c.lb.pid();
    let threads_before = status_field(pid, "Threads:");
    let rss_before = status_field(pid, "VmRSS:");

    let started = Instant::now();
    let mut clients = Vec::with_capacity(n);
    for i in 0..n {
        let mut client = c.client(ReadMode::Session);
        if let Err(e) = client.connect() {
            panic!("client {i} of {n}: {e}\n{}", c.diagnostics());
        }
        clients.push(client);
        assert!(started.elapsed() < Duration::from_secs(60), "connecting took over 60 s");
    }
    // Every connection proved it works once (so each has been read).
    for (i, client) in clients.iter_mut().enumerate().step_by(97) {
        let key = format!("idle-{i}");
        assert!(client.call(set(&key, "v")).result.is_ok(), "set on connection {i}");
        assert!(client.call(get(&key)).result.is_ok(), "get on connection {i}");
    }
    std::thread::sleep(Duration::from_millis(300));
    let threads = status_field(pid, "Threads:");
    let rss = status_field(pid, "VmRSS:");
    let per_conn = (rss.saturating_sub(rss_before) * 1024) / n as u64;
    println!(
        "balancer with {n} idle client connections: {threads} threads (idle: {threads_before}), \
         RSS {rss} KiB (idle: {rss_before} KiB), about {per_conn} bytes per connection"
    );
    assert_eq!(threads, threads_before, "threads grew with connections");
    assert!(threads <= 4, "{threads} threads: main, signals, the node and no more");
    // Resident memory moves in pages and arenas: per connection it says
    // something only over many connections.
    if n >= 500 {
        assert!(per_conn < 16 * 1024, "{per_conn} bytes per idle connection");
    }
    drop(clients);
}
