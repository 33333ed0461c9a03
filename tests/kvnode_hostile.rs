//! Clients that die mid-request and peers that send garbage, before and
//! after the handshake: each bad connection is closed with a logged reason,
//! and the cluster keeps serving.

// Process tests drive real processes against the wall clock and threads.
#![allow(clippy::disallowed_methods)]

mod common;

use common::{client_connection, get, set, wait_until, Proc, TestCluster};
use kvstore::msg::Msg;
use kvstore::types::{ClientId, NodeId, Op, ReadMode, ReplicaId, RequestId};
use kvstore::wire::{self, Frame};
use kvstore::Lsn;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::process::Stdio;
use std::time::Duration;

fn hello(from: NodeId) -> Vec<u8> {
    let mut b = Vec::new();
    wire::encode_hello(&wire::Hello::new(from, [7; wire::NONCE_BYTES]), &mut b);
    b
}

fn frame(f: &Frame) -> Vec<u8> {
    let mut b = Vec::new();
    wire::encode_frame(f, wire::MAX_FRAME_BYTES, &mut b).unwrap();
    b
}

fn request(client: u64, op: Op) -> Frame {
    Frame::Msg(Msg::Request {
        id: RequestId { client: ClientId(client), seq: 1 },
        attempt: 1,
        op,
        read: ReadMode::Session,
        min_lsn: Lsn(0),
    })
}

/// Connects, writes `bytes`, and hangs up (ignoring errors: the node may
/// close first, which is the point).
fn send_raw(addr: &str, bytes: &[u8]) {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return;
    };
    let _ = s.write_all(bytes);
    let _ = s.shutdown(Shutdown::Write);
    // Read until the node closes, briefly: proves it does close.
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut sink = [0u8; 4096];
    while let Ok(n) = s.read(&mut sink) {
        if n == 0 {
            break;
        }
    }
}

fn garbage() -> Vec<u8> {
    let mut x = 0x1234_5678_9abc_def0u64;
    (0..4096)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Every kind of bad input before or inside the handshake, as whole
/// connections.
fn hostile_inputs() -> Vec<(&'static str, Vec<u8>)> {
    let garbage = garbage();
    let client = NodeId::Client(ClientId(77));
    let set_frame = frame(&request(77, Op::Set { key: "k".into(), value: "v".into() }));
    let mut bad_version = hello(client);
    bad_version[9] = 99;
    vec![
        ("nothing", vec![]),
        ("random bytes", garbage.clone()),
        ("http", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ("huge length", vec![0xff, 0xff, 0xff, 0xff, 1, 2, 3]),
        ("zero length", vec![0, 0, 0, 0]),
        ("wrong magic", vec![0, 0, 0, 8, b'H', b'T', b'T', b'P', 0, 1, 0, 0]),
        ("other version", bad_version),
        ("hello then garbage", [hello(client), garbage].concat()),
        (
            "hello then huge frame",
            [hello(client), ((wire::MAX_CLIENT_FRAME_BYTES + 1) as u32).to_be_bytes().to_vec()].concat(),
        ),
        ("hello then truncated frame", [hello(client), set_frame[..set_frame.len() - 3].to_vec()].concat()),
        ("hello then undecodable body", [hello(client), vec![0, 0, 0, 3, 0, 200, 200]].concat()),
        ("hello then a request, no proof", [hello(client), set_frame].concat()),
        (
            "impostor replica",
            [hello(NodeId::Replica(ReplicaId(200))), frame(&Frame::Msg(Msg::Ping { nonce: 1 }))].concat(),
        ),
    ]
}

/// Bad frames from a client that did complete the handshake.
fn hostile_after_handshake() -> Vec<(&'static str, Vec<u8>)> {
    let set_frame = frame(&request(77, Op::Set { key: "k".into(), value: "v".into() }));
    vec![
        ("garbage", garbage()),
        ("huge frame", ((wire::MAX_CLIENT_FRAME_BYTES + 1) as u32).to_be_bytes().to_vec()),
        ("truncated frame", set_frame[..set_frame.len() - 3].to_vec()),
        ("undecodable body", vec![0, 0, 0, 3, 0, 200, 200]),
        ("spoofed client id", frame(&request(78, Op::Get { key: "k".into() }))),
        (
            "client sends replica traffic",
            frame(&Frame::Msg(Msg::Promote { epoch: kvstore::Epoch(99), ballot: 1 })),
        ),
        ("client sends a configuration", frame(&Frame::Cluster(kvstore::config::ClusterConfig::new(3, 0)))),
    ]
}

/// Does a client's handshake with the balancer, writes `bytes`, hangs up.
fn send_after_handshake(addr: &str, client: u64, bytes: &[u8]) {
    let (mut s, _) = client_connection(addr, ClientId(client), None).unwrap();
    let _ = s.write_all(bytes);
    let _ = s.shutdown(Shutdown::Write);
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut sink = [0u8; 4096];
    while let Ok(n) = s.read(&mut sink) {
        if n == 0 {
            break;
        }
    }
}

#[test]
fn killed_clients_and_garbage_leave_the_cluster_serving() {
    let mut c = TestCluster::start(3, false);
    let mut ports = vec![c.lb_addr.clone()];
    ports.extend(c.replica_addrs.iter().cloned());

    // A connection that stalls in the middle of a frame stays open meanwhile.
    let (mut stalled, _) = client_connection(&c.lb_addr, ClientId(5), None).unwrap();
    stalled.write_all(&[0, 0, 1]).unwrap();

    // Clients that vanish with a request in flight: a raw one that hangs up
    // right after sending, and a real `kvnode client` killed mid-stream.
    for i in 0..20u64 {
        let bytes = frame(&request(1000 + i, Op::Set { key: format!("gone{i}"), value: "x".into() }));
        let (mut s, _) = client_connection(&c.lb_addr, ClientId(1000 + i), None).unwrap();
        s.write_all(&bytes).unwrap();
        drop(s);
    }
    let mut doomed = Proc::spawn_with("doomed client", &["client", "--connect", &c.lb_addr], Stdio::piped());
    let script: String = (0..2000).map(|i| format!("set doomed{i}=value {i}\n")).collect();
    let _ = doomed.stdin().write_all(script.as_bytes());
    assert!(
        wait_until(Duration::from_secs(10), || doomed.stdout_lines().len() >= 5),
        "the doomed client never got going"
    );
    doomed.kill9();

    // Garbage, every kind, to every port.
    for addr in &ports {
        for (what, bytes) in hostile_inputs() {
            send_raw(addr, &bytes);
            let _ = what;
        }
    }
    for (i, (what, bytes)) in hostile_after_handshake().into_iter().enumerate() {
        send_after_handshake(&c.lb_addr, 77 + 1000 * i as u64, &bytes);
        let _ = what;
    }

    // Still serving, with the stalled connection still open.
    let mut client = c.client(ReadMode::Leader);
    for i in 0..50 {
        let key = format!("after{i}");
        assert!(client.call(set(&key, "ok")).result.is_ok(), "set {key} failed after the abuse");
        let got = client.call(get(&key)).result.unwrap();
        assert_eq!(got.value.as_deref(), Some("ok"));
    }
    // The largest value there is still travels, both ways (client frames
    // after the handshake have the client limit, not the hello's).
    let big = "v".repeat(kvstore::types::MAX_VALUE_BYTES);
    assert!(client.call(set("big", &big)).result.is_ok(), "a 64 KiB value was refused");
    assert_eq!(client.call(get("big")).result.unwrap().value.as_deref(), Some(big.as_str()));
    assert!(c.all_alive(), "a node died");
    drop(stalled);

    // Each bad connection was closed with a reason in the log.
    let lb_log = c.lb.stderr_lines().join("\n");
    for reason in [
        "exceeds the limit",
        "not a kvnode peer",
        "protocol version mismatch",
        "undecodable frame",
        "connection closed inside a frame",
        "may not send Request",
        "may not send Promote",
        "may not send Cluster",
        "empty frame",
        "not an auth frame",
        "r200 may not connect to the balancer",
    ] {
        assert!(lb_log.contains(reason), "balancer log lacks {reason:?}:\n{lb_log}");
    }
    let r1_log = c.replica(1).stderr_lines().join("\n");
    assert!(r1_log.contains("may not connect to r1"), "replica log lacks the refused client:\n{r1_log}");
}

/// A TCP urgent byte (`MSG_OOB`) makes a read stop at the urgent mark with
/// more bytes still queued behind it. A loop that takes such a short read
/// for "socket drained" waits for an edge that never comes, and the
/// connection's later commands sit unanswered until the peer sends again.
/// The balancer is stopped while the bytes arrive so that one read meets
/// them all.
#[test]
fn an_urgent_byte_does_not_stall_a_connection() {
    use std::io::{BufRead, BufReader};
    let mut c = TestCluster::start_with(3, false, &[], &["--resp", "127.0.0.1:0"]);
    let at = c.lb.wait_line("kvnode balancer serving RESP at ", Duration::from_secs(10));
    let port: u16 = at.rsplit(':').next().unwrap().trim().parse().unwrap();
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s.write_all(b"*1\r\n$4\r\nPING\r\n").unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert_eq!(line, "+PONG\r\n");
    c.lb.signal("STOP");
    s.write_all(b"*1\r\n$4\r\nPING\r\n").unwrap();
    rustix::net::send(&s, b"!", rustix::net::SendFlags::OOB).unwrap();
    s.write_all(b"*2\r\n$4\r\nECHO\r\n$5\r\nafter\r\n").unwrap();
    std::thread::sleep(Duration::from_millis(200));
    c.lb.signal("CONT");
    let mut replies = Vec::new();
    for _ in 0..3 {
        line.clear();
        match r.read_line(&mut line) {
            Ok(1..) => replies.push(line.trim_end().to_string()),
            _ => break,
        }
        if line.starts_with("after") {
            break;
        }
    }
    eprintln!("replies after the urgent byte: {replies:?}");
    assert_eq!(replies, ["+PONG", "$5", "after"], "the command behind the urgent mark was not answered");
    assert!(c.lb.alive(), "the balancer died");
}
