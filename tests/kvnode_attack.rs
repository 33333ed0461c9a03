//! A hostile peer on the network, against real processes on loopback (issue
//! 10): strangers without the cluster secret cannot claim any role, replay a
//! recorded handshake, change a replica's configuration, take a dead
//! replica's place, steal a balancer's or a client's replies, or exhaust a
//! node's memory, descriptors or attention; a panicking node stops.

// Process tests drive real processes against the wall clock and threads.
#![allow(clippy::disallowed_methods)]

mod common;

use common::{client_connection, set, wait_until, Proc, TestCluster, SECRET};
use kvstore::config::ClusterConfig;
use kvstore::msg::Msg;
use kvstore::runtime::auth::{Keys, Secret};
use kvstore::runtime::net::{self, ConnEnd, DialHello};
use kvstore::types::{ClientId, NodeId, Op, ReadMode, ReplicaId, RequestId};
use kvstore::wire::{self, Auth, Frame, FrameDecoder, Hello, Side};
use kvstore::Lsn;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The flood tests measure timing under load they make themselves; run side
/// by side on two cores they would measure each other. They take turns.
fn flood_lock() -> std::sync::MutexGuard<'static, ()> {
    static FLOODS: std::sync::Mutex<()> = std::sync::Mutex::new(());
    FLOODS.lock().unwrap_or_else(|e| e.into_inner())
}

// ---- helpers ----

/// A connection that finished a handshake.
struct Peer {
    stream: TcpStream,
}

fn dial(addr: &str, me: NodeId, keys: &Keys, config: Option<&ClusterConfig>) -> Result<Peer, ConnEnd> {
    let stream = net::connect(addr, Duration::from_secs(2))?;
    let mut dec = FrameDecoder::new();
    let hello = DialHello { me, expect: None, observer: false, keys, config };
    net::dial_handshake(&stream, &hello, &mut dec, Duration::from_secs(5))?;
    Ok(Peer { stream })
}

impl Peer {
    fn send(&mut self, f: &Frame) -> std::io::Result<()> {
        let mut buf = Vec::new();
        wire::encode_frame(f, wire::MAX_REPLICA_FRAME_BYTES, &mut buf).unwrap();
        self.stream.write_all(&buf)
    }

    /// Whether the other side closes the connection within `d`.
    fn closed_within(&mut self, d: Duration) -> bool {
        closed_within(&mut self.stream, d)
    }
}

fn closed_within(s: &mut TcpStream, d: Duration) -> bool {
    let end = Instant::now() + d;
    let mut sink = [0u8; 4096];
    loop {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        s.set_read_timeout(Some(left)).unwrap();
        match s.read(&mut sink) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if net::is_timeout(&e) => return false,
            Err(_) => return true,
        }
    }
}

/// Keys that are not the cluster's.
fn wrong_keys() -> Keys {
    let wrong = Secret::new("cluster secret", b"a guess at the secret, 32 bytes!", 16).unwrap();
    Keys { cluster: Some(wrong.clone()), client: Some(wrong) }
}

fn no_keys() -> Keys {
    Keys::default()
}

fn log_has(p: &Proc, needle: &str) -> bool {
    p.stderr_lines().iter().any(|l| l.contains(needle))
}

fn wait_log(p: &Proc, needle: &str, timeout: Duration) -> bool {
    wait_until(timeout, || log_has(p, needle))
}

/// Failover lines of the balancer's log from line `from` on. (The first
/// promotion, for e1, is not one: its line may be collected late, after
/// `from` was taken, on a loaded machine.)
fn failovers_since(lb: &Proc, from: usize) -> Vec<String> {
    lb.stderr_lines()
        .into_iter()
        .skip(from)
        .filter(|l| {
            l.contains("** lost r") || l.contains("promotion for") && !l.contains("promotion for e1 ")
        })
        .collect()
}

/// Resident memory of process `pid` in KiB.
fn vm_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn a_follower(c: &TestCluster) -> u8 {
    let leader = c.leader().expect("a leader");
    (1..=c.replicas.len() as u8).find(|i| *i != leader).unwrap()
}

fn request(client: ClientId, seq: u64, op: Op) -> Frame {
    Frame::Msg(Msg::Request {
        id: RequestId { client, seq },
        attempt: 1,
        op,
        read: ReadMode::Session,
        min_lsn: Lsn(0),
    })
}

// ---- finding 1: no authentication ----

/// Every role, claimed without the secret (none, or a wrong one), at every
/// port: the handshake is refused, and the node says why.
#[test]
fn unauthenticated_hellos_of_every_role_are_refused() {
    let c = TestCluster::start(3, false);
    let config = ClusterConfig::new(3, 1);
    let mut ports = vec![("balancer", c.lb_addr.clone())];
    for (i, a) in c.replica_addrs.iter().enumerate() {
        ports.push(if i == 0 { ("r1", a.clone()) } else { ("replica", a.clone()) });
    }
    let roles = [
        NodeId::Balancer,
        NodeId::Replica(ReplicaId(1)),
        NodeId::Replica(ReplicaId(2)),
        NodeId::Replica(ReplicaId(3)),
    ];
    for keys in [no_keys(), wrong_keys()] {
        for (name, addr) in &ports {
            for role in roles {
                let got = dial(addr, role, &keys, Some(&config));
                assert!(
                    matches!(&got, Err(ConnEnd::Refused(why)) if why.contains("refused the connection")),
                    "{role} at {name} without the secret: {:?}",
                    got.err()
                );
            }
        }
    }
    // A hello and a ping, no proof: the connection is closed.
    for addr in &c.replica_addrs {
        let mut s = net::connect(addr, Duration::from_secs(2)).unwrap();
        let mut bytes = Vec::new();
        wire::encode_hello(&Hello::new(NodeId::Balancer, [1; wire::NONCE_BYTES]), &mut bytes);
        wire::encode_frame(&Frame::Msg(Msg::Ping { nonce: 1 }), 100, &mut bytes).unwrap();
        s.write_all(&bytes).unwrap();
        assert!(
            closed_within(&mut s, Duration::from_secs(6)),
            "a replica kept a connection with no proof open"
        );
    }
    for i in 1..=3 {
        let p = &c.replicas[i - 1];
        assert!(
            wait_log(p, "authentication failed", Duration::from_secs(5)),
            "r{i}:\n{:?}",
            p.stderr_lines()
        );
    }
    // The balancer takes only clients; a replica claims to be one in vain.
    assert!(log_has(&c.lb, "r1 may not connect to the balancer"));
    // With the secret, the same handshake works (an observer, so the real
    // balancer keeps its place).
    let mut probe = c.probe(1);
    assert!(probe.status().last.lsn >= Lsn(1));
}

/// With a client password, a client must prove it; the right one works,
/// through `kvnode client --password-file` too.
#[test]
fn a_client_password_is_checked_both_ways() {
    let c = TestCluster::start(3, false);
    let dir = tempfile::tempdir().unwrap();
    let pw_file = dir.path().join("password");
    std::fs::write(&pw_file, "correct horse battery staple\n").unwrap();
    let pw = pw_file.to_str().unwrap();
    let mut args = vec!["--log", "info", "balancer", "127.0.0.1:0"];
    args.extend(c.replica_addrs.iter().map(String::as_str));
    args.extend(c.secret_args());
    args.extend(["--client-password-file", pw]);
    // A second balancer is refused by the replicas, but its client port
    // works for the password check.
    let lb = Proc::spawn("balancer 2", &args);
    let addr = lb.wait_line("kvnode balancer listening at ", Duration::from_secs(10));
    for password in [None, Some("a wrong password")] {
        let secret = password.map(|p| Secret::new("client password", p.as_bytes(), 8).unwrap());
        let got = client_connection(&addr, ClientId(9), secret);
        assert!(
            matches!(&got, Err(ConnEnd::Refused(why)) if why.contains("authentication failed")),
            "{password:?}: {:?}",
            got.err()
        );
    }
    let right = Secret::new("client password", b"correct horse battery staple", 8).unwrap();
    assert!(client_connection(&addr, ClientId(9), Some(right)).is_ok());
    // The first balancer has no password: a client with one refuses it, as
    // it cannot prove it knows the password.
    let right = Secret::new("client password", b"correct horse battery staple", 8).unwrap();
    let got = client_connection(&c.lb_addr, ClientId(10), Some(right));
    assert!(matches!(&got, Err(ConnEnd::Refused(_))), "{:?}", got.err());
    // `kvnode client` with and without the password file (one-shot commands
    // against the first balancer, which needs none, and the second).
    let out = std::process::Command::new(common::BIN)
        .args(["client", "--connect", &addr, "--password-file", pw, "get", "x"])
        .output()
        .unwrap();
    // The second balancer has no replicas (refused), so the answer is an
    // error, but not an authentication one.
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(!text.contains("authentication"), "{text}");
    let out = std::process::Command::new(common::BIN)
        .args(["client", "--connect", &addr, "get", "x"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{text}");
    assert!(wait_log(&lb, "authentication failed", Duration::from_secs(5)), "{:?}", lb.stderr_lines());
}

/// A recorded handshake, played back byte for byte on a new connection: the
/// replica's nonce is new, so the recorded proof is refused.
#[test]
fn a_replayed_handshake_is_refused() {
    let c = TestCluster::start(3, false);
    let addr = &c.replica_addrs[0];
    let key = c.secret_bytes();
    let key = &key[..];
    // A legitimate observer's handshake, recorded.
    let stream = net::connect(addr, Duration::from_secs(2)).unwrap();
    let mut dec = FrameDecoder::new();
    let mine = Hello { observer: true, ..Hello::new(NodeId::Balancer, kvstore::runtime::auth::nonce()) };
    let mut recorded = Vec::new();
    wire::encode_hello(&mine, &mut recorded);
    (&stream).write_all(&recorded).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let (theirs_body, proof_at) = loop {
        if let Some((_, body)) = dec.next_hello_raw().unwrap() {
            break (body, recorded.len());
        }
        assert!(dec.fill(&mut &stream).unwrap() > 0);
    };
    let mac = wire::proof(key, Side::Dialer, &wire::hello_body(&mine), &theirs_body);
    wire::encode_auth(&Auth::Proof(mac), &mut recorded);
    (&stream).write_all(&recorded[proof_at..]).unwrap();
    let verdict = loop {
        if let Some(a) = dec.next_auth().unwrap() {
            break a;
        }
        assert!(dec.fill(&mut &stream).unwrap() > 0);
    };
    assert!(matches!(verdict, Auth::Proof(_)), "the recorded handshake itself was good: {verdict:?}");
    drop(stream);
    // Played back: refused.
    for _ in 0..3 {
        let mut s = net::connect(addr, Duration::from_secs(2)).unwrap();
        s.write_all(&recorded).unwrap();
        let mut dec = FrameDecoder::new();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut hello = false;
        let verdict = loop {
            if !hello {
                hello = dec.next_hello().unwrap().is_some();
            }
            if hello {
                if let Some(a) = dec.next_auth().unwrap() {
                    break Some(a);
                }
            }
            match dec.fill(&mut &s) {
                Ok(0) | Err(_) => break None,
                Ok(_) => {}
            }
        };
        assert!(
            matches!(&verdict, Some(Auth::Refused(why)) if why == "authentication failed"),
            "a replayed handshake got {verdict:?}"
        );
        assert!(closed_within(&mut s, Duration::from_secs(2)));
    }
    assert!(wait_log(&c.replicas[0], "authentication failed: lb does not know", Duration::from_secs(5)));
}

// ---- finding 2: configuration over the wire ----

/// A peer presenting another configuration (sync_acks 0) is refused, before
/// and after the handshake, and the replicas keep their own: with both
/// followers stopped, no write is acknowledged.
#[test]
fn a_forged_cluster_frame_is_refused() {
    // An open cluster: any local process can connect, which is the case the
    // configuration must survive on its own.
    let mut c = TestCluster::start_open(3, false);
    let forged = ClusterConfig::new(3, 0);
    let keys = no_keys();
    for (i, addr) in c.replica_addrs.iter().enumerate() {
        for role in [NodeId::Balancer, NodeId::Replica(ReplicaId(if i == 0 { 2 } else { 1 }))] {
            let got = dial(addr, role, &keys, Some(&forged));
            assert!(
                matches!(&got, Err(ConnEnd::Refused(why)) if why.contains("cluster configuration differs")),
                "{role} at r{} with sync_acks 0: {:?}",
                i + 1,
                got.err()
            );
        }
    }
    for i in 1..=3u8 {
        let p = &c.replicas[i as usize - 1];
        assert!(wait_log(p, "cluster configuration differs", Duration::from_secs(5)), "r{i}");
    }
    // The right configuration, then a Cluster frame on the open connection:
    // a protocol violation, and the connection is closed.
    let right = ClusterConfig::new(3, 1);
    let mut peer = dial(&c.replica_addrs[0], NodeId::Replica(ReplicaId(2)), &keys, Some(&right)).unwrap();
    peer.send(&Frame::Cluster(forged.clone())).unwrap();
    assert!(peer.closed_within(Duration::from_secs(5)), "a Cluster frame after the handshake was taken");
    assert!(wait_log(&c.replicas[0], "r2 may not send Cluster to r1", Duration::from_secs(5)));

    // Behaviour: sync_acks is still 1. Stop both followers; a write is not
    // acknowledged.
    let leader = c.leader().expect("a leader");
    let followers: Vec<u8> = (1..=3).filter(|i| *i != leader).collect();
    for f in &followers {
        c.replica(*f).signal("STOP");
    }
    let mut client = c.client(ReadMode::Leader);
    let done = client.call(set("forged", "acked without followers?"));
    for f in &followers {
        c.replica(*f).signal("CONT");
    }
    if done.result.is_ok() {
        for (i, r) in c.replicas.iter().enumerate() {
            eprintln!("--- r{}:\n{}", i + 1, r.stderr_lines().join("\n"));
        }
        eprintln!("--- lb:\n{}", c.lb.stderr_lines().join("\n"));
    }
    assert!(
        done.result.is_err(),
        "a write was acknowledged with both followers (not r{leader}) stopped: {:?}",
        done.result
    );
    c.wait_for_a_write(Duration::from_secs(20));
}

/// A balancer started with another sync_acks is refused by every replica,
/// and both sides say so.
#[test]
fn a_balancer_with_another_configuration_is_refused_on_both_sides() {
    let c = TestCluster::start(3, false);
    let mut args = vec!["--log", "info", "balancer", "127.0.0.1:0"];
    args.extend(c.replica_addrs.iter().map(String::as_str));
    args.extend(c.secret_args());
    args.extend(["--sync-acks", "0"]);
    let other = Proc::spawn("balancer 2", &args);
    other.wait_line("kvnode balancer listening at ", Duration::from_secs(10));
    assert!(
        wait_log(&other, "cluster configuration differs", Duration::from_secs(10)),
        "the second balancer's log:\n{}",
        other.stderr_lines().join("\n")
    );
    for p in &c.replicas {
        assert!(wait_log(
            p,
            "cluster configuration differs: lb has 3 replicas, sync_acks 0",
            Duration::from_secs(5)
        ));
    }
}

// ---- finding 3: replies follow the newest connection ----

/// A second balancer (with the secret) is refused with a log line on both
/// sides while the first is alive; the first keeps serving without a
/// failover; once the first is gone, the second takes over.
#[test]
fn a_second_balancer_is_refused_and_takes_over_only_when_the_first_is_gone() {
    let _alone = flood_lock();
    let mut c = TestCluster::start(3, false);
    let from = c.lb.stderr_lines().len();
    let mut args = vec!["--log", "info", "balancer", "127.0.0.1:0"];
    args.extend(c.replica_addrs.iter().map(String::as_str));
    args.extend(c.secret_args());
    let second = Proc::spawn("balancer 2", &args);
    let second_addr = second.wait_line("kvnode balancer listening at ", Duration::from_secs(10));
    // Writes through the first go on meanwhile.
    let mut client = c.client(ReadMode::Session);
    let began = Instant::now();
    let mut n = 0;
    while began.elapsed() < Duration::from_millis(1500) {
        let done = client.call(set(&format!("first{n}"), "v"));
        assert!(done.result.is_ok(), "write {n} through the first balancer: {:?}", done.result);
        n += 1;
    }
    assert!(
        wait_log(&second, "refused the connection: another balancer is connected", Duration::from_secs(5)),
        "second balancer:\n{}",
        second.stderr_lines().join("\n")
    );
    for (i, p) in c.replicas.iter().enumerate() {
        assert!(wait_log(p, "another balancer is connected", Duration::from_secs(5)), "r{}", i + 1);
    }
    assert!(failovers_since(&c.lb, from).is_empty(), "{:?}", failovers_since(&c.lb, from));
    // The first goes away: the second is admitted and serves.
    c.lb.kill9();
    let mut client = kvstore::runtime::client::SyncClient::new(&second_addr, ClientId(77), ReadMode::Session);
    let ok = wait_until(Duration::from_secs(20), || client.call(set("second", "v")).result.is_ok());
    assert!(ok, "the second balancer never took over:\n{}", second.stderr_lines().join("\n"));
}

/// A connection with a client id already connected is refused, so nobody
/// can take a live client's replies or supersede its requests.
#[test]
fn a_live_client_id_cannot_be_taken_over() {
    let c = TestCluster::start(3, false);
    let victim = ClientId(kvstore::runtime::random_u64());
    let mut client = kvstore::runtime::client::SyncClient::new(&c.lb_addr, victim, ReadMode::Session);
    assert!(client.call(set("victim", "1")).result.is_ok());
    // The thief: same id, a request with a huge sequence number.
    let got = client_connection(&c.lb_addr, victim, None);
    assert!(
        matches!(&got, Err(ConnEnd::Refused(why)) if why.contains("already connected")),
        "the thief got in: {:?}",
        got.err()
    );
    assert!(wait_log(&c.lb, "is already connected", Duration::from_secs(5)));
    for i in 2..20 {
        let done = client.call(set("victim", &i.to_string()));
        assert!(done.result.is_ok(), "the victim's write {i}: {:?}", done.result);
    }
    // Once the victim is gone, its id may be used again (a reconnect).
    drop(client);
    let ok = wait_until(Duration::from_secs(5), || client_connection(&c.lb_addr, victim, None).is_ok());
    assert!(ok, "a closed client's id stayed taken");
}

// ---- finding 4: buffers that double per read ----

/// Frames announced huge and trickled a few bytes per read, on many
/// connections: the replica's resident memory stays small.
#[test]
fn the_trickle_attack_is_bounded() {
    let _alone = flood_lock();
    let c = TestCluster::start(3, false);
    let r = &c.replicas[0];
    let before = vm_rss_kib(r.pid());
    let config = ClusterConfig::new(3, 1);
    let mut conns = Vec::new();
    // With the secret (a replica peer may send up to 1 GiB frames) ...
    for _ in 0..8 {
        let mut p =
            dial(&c.replica_addrs[0], NodeId::Replica(ReplicaId(2)), &c.keys(), Some(&config)).unwrap();
        p.stream.write_all(&(1u32 << 30).to_be_bytes()).unwrap();
        conns.push(p.stream);
    }
    // ... and without it (the hello's limit).
    for _ in 0..8 {
        let s = net::connect(&c.replica_addrs[0], Duration::from_secs(2)).unwrap();
        (&s).write_all(&200u32.to_be_bytes()).unwrap();
        conns.push(s);
    }
    for _ in 0..40 {
        for s in &mut conns {
            let _ = s.write_all(&[7]);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(200));
    let after = vm_rss_kib(r.pid());
    eprintln!(
        "r1 resident: {before} KiB before, {after} KiB after 40 bytes on each of 16 trickling connections"
    );
    assert!(after < before + 32 * 1024, "r1 grew from {before} KiB to {after} KiB");
    drop(conns);
}

// ---- finding 6: descriptors and slots ----

/// Client connections that say hello and then nothing are closed after the
/// idle timeout, so they cannot hold every slot.
#[test]
fn idle_hellos_are_evicted() {
    let _alone = flood_lock();
    let c = TestCluster::start_with(3, false, &[], &["--client-idle-timeout", "1s"]);
    let mut idle: Vec<TcpStream> =
        (0..100).map(|i| client_connection(&c.lb_addr, ClientId(5000 + i), None).unwrap().0).collect();
    let began = Instant::now();
    for (i, s) in idle.iter_mut().enumerate() {
        assert!(
            closed_within(s, Duration::from_secs(5)),
            "idle connection {i} still open after {:?}",
            began.elapsed()
        );
    }
    assert!(began.elapsed() < Duration::from_secs(4));
    assert!(wait_log(&c.lb, "idle for 1s", Duration::from_secs(5)));
    // A client that keeps talking is not evicted, and one idle past the
    // timeout reconnects by itself.
    let mut client = c.client(ReadMode::Session);
    for i in 0..3 {
        assert!(client.call(set("busy", &i.to_string())).result.is_ok());
        std::thread::sleep(Duration::from_millis(1500));
    }
}

/// A replica whose open-file limit is low (256), flooded with more
/// connections than that which never finish a handshake, while it writes
/// a log that keeps opening files (small snapshots): it stays up, a
/// restarted balancer reaches it within a few seconds, and it keeps up.
#[test]
fn a_connection_flood_leaves_room_for_the_cluster() {
    let _alone = flood_lock();
    let mut c = TestCluster::start(3, true);
    // Replica 3 again, with at most 256 descriptors (soft and hard).
    c.replica(3).kill9();
    let dir = c.dir.path().to_str().unwrap().to_string();
    let peers = c.replica_addrs.join(",");
    let mut cmd = format!(
        "ulimit -n 256 && exec {} --log info replica 3 --listen {} --peers {peers} --data-dir {dir} \
         --snapshot-log-bytes 4096",
        common::BIN,
        c.replica_addrs[2]
    );
    for a in c.secret_args() {
        cmd.push(' ');
        cmd.push_str(a);
    }
    let mut r3 = {
        let mut child = std::process::Command::new("sh");
        child.args(["-c", &cmd]);
        ShProc::spawn(child)
    };
    assert!(r3.wait_stdout("kvnode replica 3 listening at ", Duration::from_secs(10)));
    c.wait_for_a_write(Duration::from_secs(20));

    // 300 connections kept open (re-opened as they are closed), none
    // finishing a handshake: more than the replica has descriptors.
    let stop = Arc::new(AtomicBool::new(false));
    let opened = Arc::new(AtomicUsize::new(0));
    let mut threads: Vec<_> = (0..2)
        .map(|_| {
            let (stop, opened, addr) = (stop.clone(), opened.clone(), c.replica_addrs[2].clone());
            std::thread::spawn(move || {
                let mut held: Vec<TcpStream> = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    held.retain_mut(|s| {
                        s.set_nonblocking(true).unwrap();
                        let mut b = [0u8; 512];
                        match s.read(&mut b) {
                            Ok(0) => false,
                            Ok(_) => true,
                            Err(e) => net::is_timeout(&e),
                        }
                    });
                    while held.len() < 150 {
                        match TcpStream::connect(&addr) {
                            Ok(s) => {
                                held.push(s);
                                opened.fetch_add(1, Ordering::SeqCst);
                            }
                            Err(_) => break,
                        }
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            })
        })
        .collect();
    // Writes all along: r3's log rolls over to new files again and again.
    let acked = Arc::new(std::sync::Mutex::new(Vec::new()));
    {
        let (stop, acked, mut client) = (stop.clone(), acked.clone(), c.client(ReadMode::Session));
        threads.push(std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                let (k, v) = (format!("flooded{n}"), format!("{n}:{}", "x".repeat(500)));
                if let Ok(r) = client.call(set(&k, &v)).result {
                    acked.lock().unwrap().push((k, v, r.lsn));
                }
                n += 1;
            }
        }));
    }
    std::thread::sleep(Duration::from_secs(2));
    // A new balancer must reach r3 through the flood, soon: sooner than the
    // 5 s a connection may take to say hello.
    c.lb.kill9();
    let restarted = Instant::now();
    c.restart_balancer();
    let r3_connected = wait_until(Duration::from_secs(10), || {
        c.lb.stderr_lines().iter().any(|l| l.contains("connected to r3"))
    });
    let took = restarted.elapsed();
    std::thread::sleep(Duration::from_secs(2));
    let alive = r3.alive();
    // An observer gets through the flood too, and r3 has what was acknowledged.
    let mut probe = c.probe(3);
    stop.store(true, Ordering::SeqCst);
    for t in threads {
        t.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    eprintln!(
        "{} flood connections opened; balancer reached r3 after {took:?}; {} writes acknowledged",
        opened.load(Ordering::SeqCst),
        acked.len()
    );
    assert!(alive, "r3 died: {}", r3.stderr().join("\n"));
    assert!(r3_connected && took < Duration::from_secs(4), "the balancer reached r3 only after {took:?}");
    assert!(r3.stderr().iter().any(|l| l.contains("refusing connection from")), "no refusal logged");
    assert!(acked.len() > 10, "only {} writes acknowledged during the flood", acked.len());
    let top = acked.iter().map(|(_, _, l)| *l).max().unwrap();
    assert!(wait_until(Duration::from_secs(20), || probe.status().applied >= top), "r3 fell behind");
    let (k, v, _) = acked.last().unwrap();
    assert_eq!(probe.read_local(k).value.as_deref(), Some(v.as_str()));
}

/// A `sh -c` child (for `ulimit`), killed when dropped.
struct ShProc {
    child: std::process::Child,
    out: Arc<std::sync::Mutex<Vec<String>>>,
    err: Arc<std::sync::Mutex<Vec<String>>>,
}

impl ShProc {
    fn spawn(mut cmd: std::process::Command) -> ShProc {
        let mut child =
            cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).stdin(Stdio::null()).spawn().unwrap();
        let out = Arc::new(std::sync::Mutex::new(Vec::new()));
        let err = Arc::new(std::sync::Mutex::new(Vec::new()));
        for (r, into) in [
            (Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>, out.clone()),
            (Box::new(child.stderr.take().unwrap()), err.clone()),
        ] {
            std::thread::spawn(move || {
                use std::io::BufRead;
                for line in std::io::BufReader::new(r).lines() {
                    let Ok(line) = line else { break };
                    into.lock().unwrap().push(line);
                }
            });
        }
        ShProc { child, out, err }
    }

    fn wait_stdout(&self, prefix: &str, timeout: Duration) -> bool {
        wait_until(timeout, || self.out.lock().unwrap().iter().any(|l| l.starts_with(prefix)))
    }

    fn stderr(&self) -> Vec<String> {
        self.err.lock().unwrap().clone()
    }

    fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for ShProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---- finding 7: client traffic starving the cluster ----

/// 50 clients pipelining requests as fast as they can for 4 s: no failover
/// (pings, appends and acks go first), and a well-behaved client is served
/// throughout.
#[test]
fn pipelining_clients_do_not_starve_cluster_traffic() {
    let _alone = flood_lock();
    let c = TestCluster::start(3, false);
    let from = c.lb.stderr_lines().len();
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let mut threads = Vec::new();
    for i in 0..50u64 {
        let id = ClientId(kvstore::runtime::random_u64());
        let (stream, _) = client_connection(&c.lb_addr, id, None).unwrap();
        let mut reader = stream.try_clone().unwrap();
        stream.set_write_timeout(Some(Duration::from_secs(1))).unwrap();
        let (stop_w, sent) = (stop.clone(), sent.clone());
        threads.push(std::thread::spawn(move || {
            let mut w = stream;
            let mut seq = 1;
            let value = "x".repeat(100);
            while !stop_w.load(Ordering::SeqCst) {
                let mut buf = Vec::new();
                for _ in 0..64 {
                    let op = Op::Set { key: format!("flood{i}-{}", seq % 100), value: value.clone() };
                    wire::encode_frame(&request(id, seq, op), wire::MAX_CLIENT_FRAME_BYTES, &mut buf)
                        .unwrap();
                    seq += 1;
                }
                if w.write_all(&buf).is_err() {
                    break;
                }
                sent.fetch_add(64, Ordering::Relaxed);
            }
        }));
        let stop = stop.clone();
        threads.push(std::thread::spawn(move || {
            reader.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
            let mut sink = vec![0u8; 1 << 16];
            while !stop.load(Ordering::SeqCst) {
                match reader.read(&mut sink) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) if net::is_timeout(&e) => {}
                    Err(_) => break,
                }
            }
        }));
    }
    let probe_stop = stop.clone();
    let mut probes: Vec<_> = (1..=3).map(|i| c.probe(i)).collect();
    let prober = std::thread::spawn(move || {
        let t0 = Instant::now();
        let mut worst = vec![(Duration::ZERO, Duration::ZERO); 3];
        while !probe_stop.load(Ordering::SeqCst) {
            for (i, p) in probes.iter_mut().enumerate() {
                let t = Instant::now();
                let _ = p.status();
                let rtt = t.elapsed();
                if rtt > worst[i].0 {
                    worst[i] = (rtt, t.duration_since(t0));
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        worst
    });
    let mut client = c.client(ReadMode::Session);
    let began = Instant::now();
    let mut slowest = Duration::ZERO;
    let mut failed = Vec::new();
    let mut n = 0;
    while began.elapsed() < Duration::from_secs(4) {
        let t = Instant::now();
        let done = client.call(set(&format!("polite{n}"), "v"));
        slowest = slowest.max(t.elapsed());
        if let Err(e) = done.result {
            failed.push(format!("{n}: {e:?}"));
        }
        n += 1;
    }
    stop.store(true, Ordering::SeqCst);
    for t in threads {
        t.join().unwrap();
    }
    eprintln!("worst observer ping round trips (rtt, at): {:?}", prober.join().unwrap());
    eprintln!(
        "{} flood requests sent; polite client: {n} writes, {} failed, slowest {slowest:?}",
        sent.load(Ordering::Relaxed),
        failed.len()
    );
    let failovers = failovers_since(&c.lb, from);
    if !failovers.is_empty() {
        for (i, r) in c.replicas.iter().enumerate() {
            eprintln!("--- r{}:\n{}", i + 1, r.stderr_lines().join("\n"));
        }
        eprintln!("--- lb:\n{}", c.lb.stderr_lines().join("\n"));
    }
    assert!(failovers.is_empty(), "failovers during the flood: {failovers:?}");
    assert!(failed.iter().all(|f| f.contains("Overloaded")) && failed.len() < n / 2, "{failed:?}");
    assert!(slowest < Duration::from_secs(2), "a polite write took {slowest:?}");
}

// ---- finding 8: a panic leaves a zombie ----

/// A panic in a node thread ends the process, status 101, with a clear
/// last line (the test hook panics the node thread after 300 ms).
#[test]
fn a_panicking_node_thread_ends_the_process() {
    let peers = lone_peers(common::free_ports(1)[0]);
    let mut p = Proc::spawn_env(
        "replica 1",
        &["replica", "1", "--peers", &peers],
        Stdio::null(),
        &[(kvstore::runtime::auth::ENV_TEST_PANIC, "300")],
    );
    let status = p.wait_exit(Duration::from_secs(10)).expect("the process exits after a panic");
    assert_eq!(status.code(), Some(101), "{status:?}");
    wait_until(Duration::from_secs(2), || log_has(&p, "fatal"));
    let err = p.stderr_lines();
    let last = err.last().cloned().unwrap_or_default();
    assert!(
        last.contains("fatal: thread 'r1' panicked; stopping the process (exit status 101)"),
        "last line {last:?} of {err:?}"
    );
}

// ---- finding 9: port squatting ----

/// While a replica is down, a process without the secret listening on its
/// port is never used by the balancer: it gets no message at all, and the
/// balancer says why.
#[test]
fn a_port_squatter_without_the_secret_is_never_used() {
    let mut c = TestCluster::start(3, true);
    let f = a_follower(&c);
    let addr = c.replica_addrs[f as usize - 1].clone();
    c.replica(f).kill9();
    let listener = wait_bind(&addr);
    let got_frames = Arc::new(AtomicUsize::new(0));
    let handshakes = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let squatter = {
        let (got, hs, stop) = (got_frames.clone(), handshakes.clone(), stop.clone());
        listener.set_nonblocking(true).unwrap();
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let Ok((s, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                s.set_nonblocking(false).unwrap();
                if squat(s, f, &got) {
                    hs.fetch_add(1, Ordering::SeqCst);
                }
            }
        })
    };
    // The balancer tries the squatter again and again; the cluster serves.
    c.wait_for_a_write(Duration::from_secs(10));
    assert!(
        wait_log(&c.lb, &format!("r{f} did not prove it knows our cluster secret"), Duration::from_secs(10)),
        "{}",
        c.lb.stderr_lines().join("\n")
    );
    // The leader dies too: with r{f} squatted, no quorum of real replicas
    // is left, and the squatter must not be promoted.
    let leader = c.leader().unwrap();
    let from = c.lb.stderr_lines().len();
    c.replica(leader).kill9();
    std::thread::sleep(Duration::from_secs(2));
    let promoted: Vec<String> =
        c.lb.stderr_lines()
            .into_iter()
            .skip(from)
            .filter(|l| l.contains(&format!("promotes r{f}")))
            .collect();
    stop.store(true, Ordering::SeqCst);
    squatter.join().unwrap();
    assert!(handshakes.load(Ordering::SeqCst) > 0, "the balancer never dialed the squatter");
    assert_eq!(got_frames.load(Ordering::SeqCst), 0, "the squatter received messages");
    assert!(promoted.is_empty(), "{promoted:?}");
    // The real replicas come back and the cluster serves again.
    c.restart_replica(f);
    c.restart_replica(leader);
    c.wait_for_a_write(Duration::from_secs(30));
}

/// Binds `addr` once its previous owner is gone.
fn wait_bind(addr: &str) -> TcpListener {
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        match TcpListener::bind(addr) {
            Ok(l) => return l,
            Err(e) if Instant::now() < end => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("cannot bind {addr}: {e}"),
        }
    }
}

/// Plays replica `f` without the secret: its hello, the dialer's hello and
/// proof, a made-up proof back, then counts whatever frames arrive. True if
/// the dialer got that far.
fn squat(s: TcpStream, f: u8, got: &AtomicUsize) -> bool {
    let mut dec = FrameDecoder::new();
    let mut out = Vec::new();
    wire::encode_hello(&Hello::new(NodeId::Replica(ReplicaId(f)), [5; wire::NONCE_BYTES]), &mut out);
    if (&s).write_all(&out).is_err() {
        return false;
    }
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut stage = 0;
    loop {
        match stage {
            0 if dec.next_hello().ok().flatten().is_some() => stage = 1,
            1 if dec.next_auth().ok().flatten().is_some() => {
                out.clear();
                wire::encode_auth(&Auth::Proof([0; wire::PROOF_BYTES]), &mut out);
                let _ = (&s).write_all(&out);
                dec.set_limit(wire::MAX_FRAME_BYTES);
                stage = 2;
            }
            2 => {
                while let Ok(Some(frame)) = dec.next_frame() {
                    if matches!(frame, Frame::Msg(_)) {
                        got.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
            _ => {}
        }
        match dec.fill(&mut &s) {
            Ok(0) | Err(_) => return stage >= 2,
            Ok(_) => {}
        }
    }
}

// ---- without a secret ----

/// `--peers` for a replica 1 started alone on `port`: its peers' ports are
/// ones nothing listens on (never a port another test's cluster may have).
fn lone_peers(port: u16) -> String {
    format!("127.0.0.1:{port},127.0.0.1:2,127.0.0.1:3")
}

/// Without a secret a node refuses to listen beyond loopback (unless told
/// to), warns once that the cluster is open; a short secret is refused.
#[test]
fn without_a_secret_nodes_listen_on_loopback_only() {
    let peers = lone_peers(common::free_ports(1)[0]);
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let mut p = Proc::spawn_env("node", args, Stdio::null(), env);
        let status = p.wait_exit(Duration::from_secs(3));
        wait_until(Duration::from_millis(500), || !p.stderr_lines().is_empty());
        std::thread::sleep(Duration::from_millis(50));
        (status.and_then(|s| s.code()), p.stderr_lines(), p.stdout_lines())
    };
    let (code, err, _) = run(&["replica", "1", "--peers", &peers, "--listen", "0.0.0.0:0"], &[]);
    assert_eq!(code, Some(2), "{err:?}");
    assert!(err.iter().any(|l| l.contains("refusing to listen at 0.0.0.0")), "{err:?}");
    let (code, err, _) = run(&["balancer", "0.0.0.0:0", "127.0.0.1:1"], &[]);
    assert_eq!(code, Some(2), "{err:?}");
    // Told to: it starts, with the warning.
    let (code, err, out) =
        run(&["replica", "1", "--peers", &peers, "--listen", "0.0.0.0:0", "--insecure-open"], &[]);
    assert_eq!(code, None, "{err:?}");
    assert!(out.iter().any(|l| l.starts_with("kvnode replica 1 listening at 0.0.0.0:")), "{out:?}");
    assert_eq!(err.iter().filter(|l| l.starts_with("warning: no cluster secret")).count(), 1, "{err:?}");
    // With a secret (from the environment) it may listen anywhere, silently.
    let (code, err, _) =
        run(&["replica", "1", "--peers", &peers, "--listen", "0.0.0.0:0"], &[("KVSTORE_SECRET", SECRET)]);
    assert_eq!(code, None, "{err:?}");
    assert!(err.iter().all(|l| !l.contains("warning")), "{err:?}");
    // A short secret is refused.
    let (code, err, _) = run(&["replica", "1", "--peers", &peers], &[("KVSTORE_SECRET", "short")]);
    assert_eq!(code, Some(2), "{err:?}");
    assert!(err.iter().any(|l| l.contains("at least 16")), "{err:?}");
}

/// A replica keeps its configuration with its data: restarted with another
/// sync_acks it refuses to start; without --peers it uses the stored one.
#[test]
fn a_replica_keeps_its_configuration_with_its_data() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let ports = common::free_ports(1);
    let peers = lone_peers(ports[0]);
    let mut p = Proc::spawn("replica 1", &["replica", "1", "--peers", &peers, "--data-dir", d]);
    p.wait_line("kvnode replica 1 listening at ", Duration::from_secs(10));
    p.signal("TERM");
    p.wait_exit(Duration::from_secs(10)).unwrap();
    let text = std::fs::read_to_string(dir.path().join("replica-1.cluster")).unwrap();
    assert!(text.contains("sync_acks = 1") && text.contains(&peers), "{text}");
    let mut p =
        Proc::spawn("replica 1", &["replica", "1", "--peers", &peers, "--sync-acks", "0", "--data-dir", d]);
    let status = p.wait_exit(Duration::from_secs(10)).unwrap();
    assert_eq!(status.code(), Some(2));
    wait_until(Duration::from_secs(2), || log_has(&p, "--reconfigure"));
    assert!(log_has(&p, "--reconfigure"), "{:?}", p.stderr_lines());
    let p = Proc::spawn("replica 1", &["replica", "1", "--data-dir", d]);
    let at = p.wait_line("kvnode replica 1 listening at ", Duration::from_secs(10));
    assert_eq!(at, format!("127.0.0.1:{}", ports[0]));
}

// ---- found in review ----

/// Clients that ask for a large value again and again and never read the
/// replies: each connection's backlog is capped (4 MiB), but nothing capped
/// them all together, so N such clients cost the balancer N x 4 MiB (64 of
/// them: 150 MB). A client needs no secret, only the client password if
/// there is one. Now all clients' backlogs together are capped (32 MiB).
#[test]
fn clients_that_never_read_cannot_exhaust_the_balancers_memory() {
    let _alone = flood_lock();
    let c = TestCluster::start(3, false);
    let mut client = c.client(ReadMode::Session);
    let big = "v".repeat(60 * 1024);
    assert!(client.call(set("big", &big)).result.is_ok());
    std::thread::sleep(Duration::from_millis(300));
    let before = vm_rss_kib(c.lb.pid());
    let mut conns = Vec::new();
    for i in 0..64u64 {
        let id = ClientId(90_000 + i);
        let Ok((s, _)) = client_connection(&c.lb_addr, id, None) else { continue };
        // Takes almost nothing from the socket.
        rustix::net::sockopt::set_socket_recv_buffer_size(&s, 4096).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut buf = Vec::new();
        // Just under 4 MiB of replies each (with what the sockets hold).
        for seq in 1..=100 {
            let get = request(id, seq, Op::Get { key: "big".into() });
            wire::encode_frame(&get, wire::MAX_CLIENT_FRAME_BYTES, &mut buf).unwrap();
        }
        let _ = (&s).write_all(&buf);
        conns.push(s);
    }
    let mut peak = before;
    let began = Instant::now();
    while began.elapsed() < Duration::from_secs(3) {
        peak = peak.max(vm_rss_kib(c.lb.pid()));
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "balancer resident: {before} KiB before, at most {peak} KiB with {} clients not reading",
        conns.len()
    );
    assert!(conns.len() >= 48, "only {} clients connected", conns.len());
    // The balancer still serves everyone else.
    assert!(client.call(set("other", "1")).result.is_ok());
    // Measured on loopback: 64 clients grew it by about 133 MB before the
    // total cap, by 45 to 80 MB with it (the rest is replies on their way
    // through the balancer, at most 16 per client, and the allocator).
    assert!(
        wait_log(&c.lb, "for all clients", Duration::from_secs(5)),
        "no client was dropped for the total backlog"
    );
    assert!(peak < before + 112 * 1024, "the balancer grew from {before} KiB to {peak} KiB");
    drop(conns);
}

/// A balancer with a client password whose open-file limit is low (200:
/// 72 connections), flooded with more silent RESP connections than that:
/// unauthenticated RESP connections may hold only a quarter of the limit
/// (the oldest is closed for each newcomer), so a client that sends AUTH
/// still gets in, on the RESP port and on the native one. Before, the
/// silent sockets filled the limit until their 60 s idle timeout, and
/// every newcomer was refused.
#[test]
fn silent_resp_connections_do_not_lock_clients_out() {
    let _alone = flood_lock();
    let mut c = TestCluster::start(3, false);
    let dir = tempfile::tempdir().unwrap();
    let pw = common::private_file(dir.path(), "pw", "resp password 1234");
    c.lb.kill9();
    let mut cmd = format!(
        "ulimit -n 200 && exec {} --log info balancer {} {} --resp 127.0.0.1:0 --client-password-file {}",
        common::BIN,
        c.lb_addr,
        c.replica_addrs.join(" "),
        pw.display()
    );
    for a in c.secret_args() {
        cmd.push(' ');
        cmd.push_str(a);
    }
    let lb = {
        let mut child = std::process::Command::new("sh");
        child.args(["-c", &cmd]);
        ShProc::spawn(child)
    };
    let prefix = "kvnode balancer serving RESP at ";
    assert!(lb.wait_stdout(prefix, Duration::from_secs(10)), "no RESP port: {:?}", lb.stderr());
    let at = lb.out.lock().unwrap().iter().find_map(|l| l.strip_prefix(prefix).map(str::to_string)).unwrap();
    let at = at.trim().to_string();
    // AUTH, then a write: `+OK` twice.
    let auth_and_set = |at: &str| -> String {
        let Ok(mut r) = TcpStream::connect(at) else { return "no connection".into() };
        r.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let cmds =
            b"*2\r\n$4\r\nAUTH\r\n$18\r\nresp password 1234\r\n*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n";
        if r.write_all(cmds).is_err() {
            return "write failed".into();
        }
        let mut got = [0u8; 10];
        match r.read_exact(&mut got) {
            Ok(()) => String::from_utf8_lossy(&got).into_owned(),
            Err(e) => e.to_string(),
        }
    };
    let took = wait_until(Duration::from_secs(20), || auth_and_set(&at) == "+OK\r\n+OK\r\n");
    assert!(took, "the new balancer never took a write: {:?}", lb.stderr());

    let silent: Vec<TcpStream> = (0..80).map(|_| TcpStream::connect(&at).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(300));
    let got = auth_and_set(&at);
    eprintln!("the client after 80 silent connections: {got:?}");
    assert_eq!(got, "+OK\r\n+OK\r\n", "a client with the password was locked out");
    // The native port is not full either: a connection there gets the
    // balancer's hello, not a refusal and a close.
    let mut n = TcpStream::connect(&c.lb_addr).unwrap();
    n.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut hello = [0u8; 64];
    let r = n.read(&mut hello);
    assert!(matches!(r, Ok(1..)) && hello[4..8] == wire::MAGIC, "native port: {r:?} {:?}", &hello[..8]);
    let closed = silent
        .iter()
        .filter(|s| {
            s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
            (&**s).read(&mut [0u8; 256]).is_ok()
        })
        .count();
    eprintln!("silent connections closed by the balancer: {closed} of 80");
    assert!(closed >= 80 - 72 / 4, "only {closed} of 80 silent connections were closed");
    assert!(lb.stderr().iter().any(|l| l.contains("have not sent AUTH")), "no eviction logged");
}
