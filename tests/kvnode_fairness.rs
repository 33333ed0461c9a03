//! The event loop's fairness, found by an adversarial review of it: a
//! stalled cluster peer must not hold every client back (the balancer stops
//! reading clients while a replica has much queued, and a SIGSTOPped old
//! leader never takes it: it is dropped after `PEER_STALL`), and one
//! pipelining client must not starve the others (clients are read round
//! robin, each at most its share per pass).

// Process tests drive real processes against the wall clock and threads.
#![allow(clippy::disallowed_methods)]
mod common;
use common::*;
use kvstore::types::ReadMode;
use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

#[test]
fn stalled_old_leader_freezes_clients_after_failover() {
    let mut c = TestCluster::start_with(3, false, &[], &["--resp", "127.0.0.1:0"]);
    let at = c.lb.wait_line("kvnode balancer serving RESP at ", Duration::from_secs(10));
    let port: u16 = at.rsplit(':').next().unwrap().trim().parse().unwrap();
    let leader = c.leader().expect("a leader");
    eprintln!("leader r{leader}");
    c.replica(leader).signal("STOP");
    // ~12 MB of SETs, 60 KB each, pipelined on one RESP connection.
    let value = "v".repeat(60_000);
    let mut buf = Vec::new();
    let n: usize = std::env::var("REVIEW_N").ok().and_then(|v| v.parse().ok()).unwrap_or(200);
    for i in 0..n {
        let k = format!("k{i}");
        buf.extend_from_slice(
            format!("*3\r\n$3\r\nSET\r\n${}\r\n{k}\r\n${}\r\n{value}\r\n", k.len(), value.len()).as_bytes(),
        );
    }
    let blaster = std::thread::spawn(move || {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(15))).unwrap();
        let _ = s.write_all(&buf);
        std::thread::sleep(Duration::from_secs(20));
    });
    let failed_over = wait_until(Duration::from_secs(10), || c.leader().is_some_and(|l| l != leader));
    assert!(failed_over, "no failover");
    eprintln!("new leader r{:?}", c.leader());
    std::thread::sleep(Duration::from_millis(500));
    let mut client = c.client(ReadMode::Session);
    let t = Instant::now();
    let ok = wait_until(Duration::from_secs(8), || client.call(set("after", "1")).result.is_ok());
    eprintln!("write after failover: ok={ok} after {:?}", t.elapsed());
    // Causality: let the old leader read again; the same client then works.
    c.replica(leader).signal("CONT");
    let t = Instant::now();
    let ok2 = wait_until(Duration::from_secs(8), || client.call(set("after2", "1")).result.is_ok());
    eprintln!("write after SIGCONT: ok={ok2} after {:?}", t.elapsed());
    let lines = c.lb.stderr_lines();
    for l in lines.iter().rev().take(25).rev() {
        eprintln!("lb| {l}");
    }
    drop(blaster);
    assert!(ok, "no client write served for 8 s after failover while the old leader is stalled");
}

/// One RESP connection that always has more than 512 commands buffered takes
/// the whole per-pass client budget every pass; `Net::read` walks clients in
/// id order, so every connection opened after it is never read.
#[test]
fn one_pipelining_resp_client_starves_later_clients() {
    use std::io::{BufRead, BufReader, Read};
    let c = TestCluster::start_with(3, false, &[], &["--resp", "127.0.0.1:0"]);
    let at = c.lb.wait_line("kvnode balancer serving RESP at ", Duration::from_secs(10));
    let port: u16 = at.rsplit(':').next().unwrap().trim().parse().unwrap();
    let early = std::env::var("REVIEW_EARLY").is_ok();
    let mut pre: Vec<TcpStream> = if early {
        (0..5).map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap()).collect()
    } else {
        Vec::new()
    };
    let ping = b"*1\r\n$4\r\nPING\r\n".repeat(4096);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut flooders = Vec::new();
    for _ in 0..2 {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let mut r = s.try_clone().unwrap();
        let st = stop.clone();
        std::thread::spawn(move || {
            let mut b = vec![0u8; 1 << 16];
            while !st.load(std::sync::atomic::Ordering::Relaxed) {
                if matches!(r.read(&mut b), Ok(0) | Err(_)) {
                    break;
                }
            }
        });
        let st = stop.clone();
        let ping = ping.clone();
        flooders.push(std::thread::spawn(move || {
            let mut s = s;
            while !st.load(std::sync::atomic::Ordering::Relaxed) {
                if s.write_all(&ping).is_err() {
                    break;
                }
            }
        }));
    }
    std::thread::sleep(Duration::from_millis(500));
    let mut worst = Duration::ZERO;
    let mut answered = 0;
    for _ in 0..5 {
        let mut v = if early { pre.pop().unwrap() } else { TcpStream::connect(("127.0.0.1", port)).unwrap() };
        v.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let t = Instant::now();
        v.write_all(b"*1\r\n$4\r\nPING\r\n").unwrap();
        let mut line = String::new();
        let got = BufReader::new(&v).read_line(&mut line).is_ok() && line.starts_with("+PONG");
        worst = worst.max(t.elapsed());
        answered += got as u32;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    eprintln!("late clients answered: {answered}/5, worst wait {worst:?}");
    assert_eq!(answered, 5, "a newer RESP client was starved by an older pipelining one");
}
