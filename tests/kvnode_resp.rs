//! The balancer's Redis port (`--resp`), driven by the real tools:
//! redis-cli (commands, pipes, INFO, a failover under a loop),
//! redis-benchmark (`-P 1` and `-P 16`), the `redis` crate, and arbitrary
//! bytes. The redis-cli/redis-benchmark tests skip with a message when the
//! tools are missing (CI installs them: see `.ci/run`).

// Process tests drive real processes against the wall clock and threads.
#![allow(clippy::disallowed_methods)]

mod common;

use common::{wait_until, TestCluster};
use kvstore::runtime::resp::client::{RespClient, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn have(tool: &str) -> bool {
    let ok = Command::new(tool).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status();
    if ok.is_err() {
        eprintln!("SKIPPED: {tool} is not installed (apt-get install -y redis-tools; .ci/run does)");
    }
    ok.is_ok()
}

/// A cluster whose balancer also serves RESP; the RESP port.
fn cluster(data: bool) -> (TestCluster, u16) {
    let c = TestCluster::start_with(3, data, &[], &["--resp", "127.0.0.1:0"]);
    let at = c.lb.wait_line("kvnode balancer serving RESP at ", Duration::from_secs(10));
    let port = at.rsplit(':').next().unwrap().trim().parse().unwrap();
    (c, port)
}

/// Runs `redis-cli -p PORT args...` (at most 20 s); its stdout.
fn cli(port: u16, args: &[&str]) -> String {
    let mut child = Command::new("redis-cli")
        .arg("-p")
        .arg(port.to_string())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let end = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < end, "redis-cli {args:?} hung");
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut out = String::new();
    child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    out.trim_end().to_string()
}

/// Runs `cmd` with `input` on stdin, bounded in time; (status ok, stdout+stderr).
fn run_with_input(cmd: &mut Command, input: &[u8], limit: Duration) -> (bool, String) {
    let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let end = Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() >= end {
            let _ = child.kill();
            panic!("{cmd:?} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    writer.join().unwrap();
    let text = format!("{}{}", out.join().unwrap(), err.join().unwrap());
    (status.success(), text)
}

#[test]
fn redis_cli_commands() {
    if !have("redis-cli") {
        return;
    }
    let (_c, p) = cluster(false);
    assert_eq!(cli(p, &["ping"]), "PONG");
    assert_eq!(cli(p, &["echo", "hi there"]), "hi there");
    assert_eq!(cli(p, &["set", "stephen", "zerfas"]), "OK");
    assert_eq!(cli(p, &["get", "stephen"]), "zerfas");
    assert_eq!(cli(p, &["get", "nothing"]), "");
    assert_eq!(cli(p, &["exists", "stephen", "nothing", "stephen"]), "2");
    assert_eq!(cli(p, &["mset", "a", "1", "b", "2"]), "OK");
    assert_eq!(cli(p, &["mget", "a", "nothing", "b"]), "1\n\n2");
    assert_eq!(cli(p, &["del", "a", "b", "nothing"]), "2");
    assert_eq!(cli(p, &["exists", "a"]), "0");
    assert_eq!(cli(p, &["set", "k", "v", "NX"]), "ERR syntax error (kvstore supports only SET key value)");
    assert!(cli(p, &["frobnicate", "x"]).starts_with("ERR unknown command 'frobnicate'"));
    assert_eq!(cli(p, &["select", "0"]), "OK");
    assert_eq!(cli(p, &["select", "1"]), "ERR DB index is out of range");
    assert_eq!(cli(p, &["client", "setname", "me"]), "OK");
    assert!(cli(p, &["hello", "2"]).contains("standalone"));
    assert!(cli(p, &["hello", "3"]).starts_with("NOPROTO"));
    assert_eq!(cli(p, &["config", "get", "appendonly"]), "appendonly\nno");
    assert_eq!(cli(p, &["kvstore.readmode", "leader"]), "OK");
    assert!(cli(p, &["kvstore.readmode", "never"]).starts_with("ERR unknown read mode"));
    // One connection: SET then WAIT (semi-sync: at least sync_acks = 1).
    let (ok, out) = run_with_input(
        Command::new("redis-cli").arg("-p").arg(p.to_string()),
        b"set w 1\nwait 1 0\nwait 5 100\n",
        Duration::from_secs(20),
    );
    assert!(ok, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "OK");
    let n: i64 = lines[1].parse().unwrap();
    assert!((1..=2).contains(&n), "WAIT 1 0 answered {n}");
    let n: i64 = lines[2].parse().unwrap();
    assert!(n <= 2, "only two followers exist, WAIT said {n}");
    let info = cli(p, &["info", "replication"]);
    assert!(info.contains("# Replication"), "{info}");
    assert!(info.contains("role:master") && info.contains("kvstore_phase:leading"), "{info}");
    assert!(info.contains("epoch:1") && info.contains("leader:replica1"), "{info}");
    assert!(info.contains("connected_slaves:2"), "{info}");
    assert!(info.contains("replica2:") && info.contains("lag="), "{info}");
    assert!(!cli(p, &["info"]).is_empty());
}

#[test]
fn redis_cli_pipes() {
    if !have("redis-cli") {
        return;
    }
    let (_c, p) = cluster(false);
    // `--pipe`: raw RESP, one write, replies counted.
    let mut input = Vec::new();
    for i in 0..2000 {
        kvstore::runtime::resp::codec::command(
            &mut input,
            &[b"SET", format!("pipe{i}").as_bytes(), format!("v{i}").as_bytes()],
        );
    }
    let (ok, out) = run_with_input(
        Command::new("redis-cli").arg("-p").arg(p.to_string()).arg("--pipe"),
        &input,
        Duration::from_secs(60),
    );
    assert!(ok, "{out}");
    assert!(out.contains("errors: 0, replies: 2000"), "{out}");
    assert_eq!(cli(p, &["get", "pipe1999"]), "v1999");
    // Many commands on stdin, one connection: each reply in order.
    let mut text = String::new();
    for i in 0..200 {
        text.push_str(&format!("set line{i} {i}\nget line{i}\n"));
    }
    let (ok, out) = run_with_input(
        Command::new("redis-cli").arg("-p").arg(p.to_string()),
        text.as_bytes(),
        Duration::from_secs(60),
    );
    assert!(ok, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 400, "{out}");
    for i in 0..200 {
        assert_eq!(lines[2 * i], "OK");
        assert_eq!(lines[2 * i + 1], i.to_string());
    }
}

/// One write holding a mixed pipeline: replies in order, and each read sees
/// the connection's writes before it.
#[test]
fn pipeline_keeps_order() {
    let (_c, p) = cluster(false);
    let mut s = TcpStream::connect(("127.0.0.1", p)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut input = Vec::new();
    let n = 300;
    for i in 0..n {
        let (k, v) = (format!("o{}", i % 7), format!("{i}"));
        kvstore::runtime::resp::codec::command(&mut input, &[b"SET", k.as_bytes(), v.as_bytes()]);
        kvstore::runtime::resp::codec::command(&mut input, &[b"GET", k.as_bytes()]);
        kvstore::runtime::resp::codec::command(&mut input, &[b"PING"]);
    }
    s.write_all(&input).unwrap();
    let mut c = RespClient::from_stream(s).unwrap();
    for i in 0..n {
        assert_eq!(c.read().unwrap(), Value::Simple("OK".into()));
        assert_eq!(c.read().unwrap(), Value::Bulk(Some(format!("{i}").into_bytes())), "reply to GET {i}");
        assert_eq!(c.read().unwrap(), Value::Simple("PONG".into()));
    }
}

#[test]
fn redis_benchmark_runs_clean() {
    if !have("redis-benchmark") {
        return;
    }
    let (_c, p) = cluster(true);
    for pipeline in ["1", "16"] {
        let (ok, out) = run_with_input(
            Command::new("redis-benchmark").args([
                "-p",
                &p.to_string(),
                "-t",
                "set,get",
                "-n",
                "20000",
                "-c",
                "50",
                "-q",
                "-P",
                pipeline,
            ]),
            b"",
            Duration::from_secs(120),
        );
        assert!(ok, "redis-benchmark -P {pipeline}: {out}");
        let out = out.replace('\r', "\n");
        assert!(!out.to_lowercase().contains("error"), "redis-benchmark -P {pipeline}: {out}");
        for t in ["SET:", "GET:"] {
            assert!(out.lines().any(|l| l.starts_with(t) && l.contains("requests per second")), "{out}");
        }
    }
}

/// SIGKILL the leader while a redis-cli loop writes: the loop goes on,
/// writes succeed again under a new leader, INFO shows the new epoch.
#[test]
fn failover_under_a_redis_cli_loop() {
    if !have("redis-cli") {
        return;
    }
    let (mut c, p) = cluster(true);
    assert!(wait_until(Duration::from_secs(10), || c.leader().is_some()));
    let old = c.leader().unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let looper = std::thread::spawn(move || {
        let mut log = Vec::new();
        let mut i = 0;
        let began = Instant::now();
        while !stop2.load(std::sync::atomic::Ordering::SeqCst) && began.elapsed() < Duration::from_secs(60) {
            let out = cli(p, &["set", &format!("f{i}"), &format!("{i}")]);
            log.push((i, Instant::now(), out));
            i += 1;
        }
        log
    });
    std::thread::sleep(Duration::from_millis(500));
    c.replicas[old as usize - 1].kill9();
    let killed = Instant::now();
    assert!(
        wait_until(Duration::from_secs(10), || c.leader().is_some_and(|l| l != old)),
        "no new leader; balancer log:\n{}",
        c.lb.stderr_lines().join("\n")
    );
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let log = looper.join().unwrap();
    let after: Vec<_> =
        log.iter().filter(|(_, t, _)| t.duration_since(killed) > Duration::from_secs(1)).collect();
    assert!(!after.is_empty(), "the loop stalled");
    for (i, _, out) in &after {
        assert_eq!(out, "OK", "set f{i} a second after the failover");
    }
    for (i, _, out) in &log {
        assert!(
            out == "OK" || out.starts_with("TIMEOUT") || out.starts_with("UNAVAILABLE"),
            "set f{i}: {out}"
        );
    }
    // Every acknowledged write is there.
    for (i, _, out) in &log {
        if out == "OK" {
            assert_eq!(cli(p, &["get", &format!("f{i}")]), i.to_string());
        }
    }
    let info = cli(p, &["info", "replication"]);
    assert!(info.contains(&format!("leader:replica{}", c.leader().unwrap())), "{info}");
    assert!(!info.contains("epoch:1\r") && !info.contains("epoch:1\n"), "{info}");
    assert!(info.contains("state=down"), "{info}");
}

/// Arbitrary bytes at the RESP port: each connection gets an error and is
/// closed (or just closed), and the balancer goes on serving.
#[test]
fn protocol_fuzz() {
    let (mut c, p) = cluster(false);
    let mut rng = 0x1234_5678_9abc_def0u64;
    let mut next = move || {
        rng = rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let mut cases: Vec<Vec<u8>> = vec![
        b"*1\r\n".repeat(100_000),
        b"*99999999999\r\n".to_vec(),
        b"*2\r\n$999999999999999999999\r\n".to_vec(),
        b"*1\r\n$-7\r\n".to_vec(),
        b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$100000\r\n".to_vec(),
        vec![b'x'; 200_000],
        b"\x00\xff\r\n\r\n*\r\n$\r\n".to_vec(),
        b"*2\r\n$3\r\nGET\r\n$1\r\n\xff\r\n".to_vec(),
        b"SET k \xc3\x28\r\n".to_vec(),
    ];
    for _ in 0..150 {
        let len = (next() % 3000) as usize;
        let mut b: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        if next() % 2 == 0 && !b.is_empty() {
            // Mostly valid: a command with a byte or two changed.
            let mut v = Vec::new();
            kvstore::runtime::resp::codec::command(&mut v, &[b"SET", b"fz", &b[..b.len().min(50)]]);
            let at = (next() as usize) % v.len();
            v[at] = next() as u8;
            b = v;
        }
        cases.push(b);
    }
    for (i, case) in cases.iter().enumerate() {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", p)) else { panic!("case {i}: cannot connect") };
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = s.write_all(case);
        let _ = s.shutdown(std::net::Shutdown::Write);
        let mut sink = Vec::new();
        // The balancer answers and closes (EOF or an error), within the timeout.
        match s.read_to_end(&mut sink) {
            Ok(_) => {}
            // Closed while bytes we sent were still unread: a reset.
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
                ) => {}
            Err(e) => panic!("case {i}: the balancer neither answered nor closed: {e}"),
        }
    }
    assert!(c.lb.alive(), "the balancer died");
    let mut client = RespClient::connect(&format!("127.0.0.1:{p}"), Duration::from_secs(1)).unwrap();
    assert_eq!(client.call(&[b"PING"]).unwrap(), Value::Simple("PONG".into()));
    assert_eq!(client.call(&[b"SET", b"after", b"fuzz"]).unwrap(), Value::Simple("OK".into()));
    assert_eq!(client.call(&[b"GET", b"after"]).unwrap(), Value::Bulk(Some(b"fuzz".to_vec())));
}

/// The `redis` crate, as an application would use it.
#[test]
fn redis_crate_client() {
    use redis::Commands;
    let (_c, p) = cluster(false);
    let client = redis::Client::open(format!("redis://127.0.0.1:{p}/")).unwrap();
    let mut con = client.get_connection_with_timeout(Duration::from_secs(5)).unwrap();
    let () = con.set("lib", "rs").unwrap();
    let v: String = con.get("lib").unwrap();
    assert_eq!(v, "rs");
    let missing: Option<String> = con.get("no-such-key").unwrap();
    assert_eq!(missing, None);
    let () = con.mset(&[("m1", "a"), ("m2", "b")]).unwrap();
    let vs: Vec<Option<String>> = con.mget(&["m1", "m3", "m2"]).unwrap();
    assert_eq!(vs, vec![Some("a".into()), None, Some("b".into())]);
    let n: i64 = con.exists(&["m1", "m2", "m3"]).unwrap();
    assert_eq!(n, 2);
    let n: i64 = con.del(&["m1", "m3"]).unwrap();
    assert_eq!(n, 1);
    let (a, b): (String, Option<String>) =
        redis::pipe().set("p1", "x").ignore().get("p1").get("m1").query(&mut con).unwrap();
    assert_eq!((a.as_str(), b), ("x", None));
    let pong: String = redis::cmd("PING").query(&mut con).unwrap();
    assert_eq!(pong, "PONG");
    let e = redis::cmd("NOSUCHCMD").query::<String>(&mut con).unwrap_err();
    assert!(e.to_string().contains("unknown command"), "{e}");
}

/// With a client password: nothing before AUTH, then everything.
#[test]
fn auth_with_a_client_password() {
    let dir = tempfile::tempdir().unwrap();
    let pw = common::private_file(dir.path(), "pw", "resp password 1234");
    let c = TestCluster::start_unready(
        3,
        false,
        &[],
        &["--resp", "127.0.0.1:0", "--client-password-file", pw.to_str().unwrap()],
        true,
    );
    let at = c.lb.wait_line("kvnode balancer serving RESP at ", Duration::from_secs(10));
    let mut r = RespClient::connect(at.trim(), Duration::from_secs(1)).unwrap();
    match r.call(&[b"GET", b"k"]).unwrap() {
        Value::Error(e) => assert!(e.starts_with("NOAUTH"), "{e}"),
        other => panic!("{other:?}"),
    }
    match r.call(&[b"AUTH", b"wrong password"]).unwrap() {
        Value::Error(e) => assert!(e.starts_with("WRONGPASS"), "{e}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(r.call(&[b"AUTH", b"resp password 1234"]).unwrap(), Value::Simple("OK".into()));
    let ok = wait_until(Duration::from_secs(20), || {
        r.call(&[b"SET", b"k", b"v"]).is_ok_and(|v| v == Value::Simple("OK".into()))
    });
    assert!(ok, "no write after AUTH");
    assert_eq!(r.call(&[b"GET", b"k"]).unwrap(), Value::Bulk(Some(b"v".to_vec())));
    // After AUTH a command may be as large as the value limit allows.
    let big = vec![b'x'; 60_000];
    assert_eq!(r.call(&[b"SET", b"big", &big]).unwrap(), Value::Simple("OK".into()));

    // Before AUTH a command is refused as soon as its headers say it takes
    // more than 4 KiB: a stranger cannot make the balancer hold the
    // megabytes of a command it would refuse anyway (100 connections each
    // halfway through a 4 MiB command held 400 MB).
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(at.trim()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$60000\r\nxxxx").unwrap();
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    let got = String::from_utf8_lossy(&got);
    assert_eq!(got, "-ERR Protocol error: command of more than 4096 bytes before AUTH\r\n", "{got}");
    // An AUTH at the front of a long pipeline is taken before the rest.
    let mut s = std::net::TcpStream::connect(at.trim()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut pipeline = b"*2\r\n$4\r\nAUTH\r\n$18\r\nresp password 1234\r\n".to_vec();
    pipeline.extend_from_slice(format!("*3\r\n$3\r\nSET\r\n$2\r\nk2\r\n${}\r\n", big.len()).as_bytes());
    pipeline.extend_from_slice(&big);
    pipeline.extend_from_slice(b"\r\n*1\r\n$4\r\nQUIT\r\n");
    s.write_all(&pipeline).unwrap();
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    assert_eq!(String::from_utf8_lossy(&got), "+OK\r\n+OK\r\n+OK\r\n");
}
