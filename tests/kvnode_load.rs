//! 200 client connections open at once, each doing sets and gets of its own
//! keys, against real processes: every reply must reach the client that
//! asked, with the right value.

// Process tests drive real processes against the wall clock and threads.
#![allow(clippy::disallowed_methods)]

mod common;

use common::{get, set, TestCluster};
use kvstore::types::ReadMode;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

const CLIENTS: usize = 200;
const ROUNDS: usize = 5;

#[test]
fn two_hundred_concurrent_clients_get_their_own_replies() {
    let mut c = TestCluster::start(3, false);
    let barrier = Arc::new(Barrier::new(CLIENTS));
    let started = Instant::now();
    let threads: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let mut client = c.client(if i % 2 == 0 { ReadMode::Session } else { ReadMode::Leader });
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                client.connect().expect("connects");
                // Every connection is open before anyone sends.
                barrier.wait();
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
    let wrong: Vec<String> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
    assert!(wrong.is_empty(), "{} bad replies, first: {:?}", wrong.len(), &wrong[..wrong.len().min(5)]);
    assert!(started.elapsed() < Duration::from_secs(60));
    assert!(c.all_alive());
}
