//! 200 client connections open at once, each doing sets and gets of its own
//! keys, against real processes: every reply must reach the client that
//! asked, with the right value.

// Process tests drive real processes against the wall clock and threads.
#![allow(clippy::disallowed_methods)]

mod common;

use common::{get, set, TestCluster};
use kvstore::types::ReadMode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Connections open at once (fewer where the open-file limit leaves the
/// balancer fewer: see `clients`).
const CLIENTS: usize = 200;
const ROUNDS: usize = 5;
/// The whole test fails (never hangs) past this.
const BUDGET: Duration = Duration::from_secs(60);

#[test]
fn two_hundred_concurrent_clients_get_their_own_replies() {
    let clients = clients();
    let mut c = TestCluster::start(3, false);
    let started = Instant::now();
    // Every connection is opened here, before any thread starts, so a
    // refused connection fails the test with its reason instead of leaving
    // the others waiting for it.
    let clients: Vec<_> = (0..clients)
        .map(|i| {
            let mut client = c.client(if i % 2 == 0 { ReadMode::Session } else { ReadMode::Leader });
            if let Err(e) = client.connect() {
                panic!("client {i} of {clients}: {e}\n{}", c.diagnostics());
            }
            client
        })
        .collect();
    let go = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, mut client)| {
            let go = go.clone();
            std::thread::spawn(move || {
                // All start together (bounded: the main thread sets `go`
                // right after spawning, or has panicked, which ends the test).
                let until = Instant::now() + BUDGET;
                while !go.load(Ordering::SeqCst) && Instant::now() < until {
                    std::thread::sleep(Duration::from_millis(1));
                }
                let mut wrong = Vec::new();
                for j in 0..ROUNDS {
                    let key = format!("c{i}-k{j}");
                    let value = format!("value of client {i} round {j}");
                    let w = client.call(set(&key, &value));
                    if w.result.is_err() {
                        wrong.push(format!("{key}: set {:?}", w.result));
                        continue;
                    }
                    let r = client.call(get(&key));
                    match r.result {
                        Ok(reply) if reply.value.as_deref() == Some(value.as_str()) => {}
                        other => wrong.push(format!("{key}: get {other:?}")),
                    }
                }
                wrong
            })
        })
        .collect();
    go.store(true, Ordering::SeqCst);
    let wrong: Vec<String> = threads.into_iter().flat_map(|t| t.join().expect("client thread")).collect();
    assert!(wrong.is_empty(), "{} bad replies, first: {:?}", wrong.len(), &wrong[..wrong.len().min(5)]);
    assert!(started.elapsed() < BUDGET, "took {:?}", started.elapsed());
    assert!(c.all_alive());
}

/// [`CLIENTS`], or fewer when this machine's open-file limit leaves the
/// balancer fewer connections (the nodes inherit this process's limits;
/// `connection_limit` raises the soft limit to the hard one as they do).
fn clients() -> usize {
    let limit = kvstore::runtime::auth::connection_limit();
    let n = CLIENTS.min(limit.saturating_sub(16));
    if n < CLIENTS {
        eprintln!(
            "the open-file limit leaves the balancer {limit} connections: {n} clients instead of {CLIENTS}"
        );
    }
    assert!(n >= 32, "the open-file limit leaves only {limit} connections\n{}", common::process_limits());
    n
}
