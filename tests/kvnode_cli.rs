//! The original README's walk-through, through `kvnode client` with stdin
//! piped, against real replica and balancer processes; one-shot commands;
//! the in-process `kvnode cluster`; graceful stop; `--help` everywhere.

// Process tests drive real processes against the wall clock and threads.
#![allow(clippy::disallowed_methods)]

mod common;

use common::{wait_until, Proc, TestCluster};
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

fn client_session(addr: &str, input: &str) -> Vec<String> {
    let mut p = Proc::spawn_with("client", &["client", "--connect", addr], Stdio::piped());
    p.stdin().write_all(input.as_bytes()).unwrap();
    p.close_stdin();
    let status = p.wait_exit(Duration::from_secs(30)).expect("client finishes");
    assert!(status.success(), "client exit {status:?}; stderr: {:?}", p.stderr_lines());
    // Let the stdout collector catch the last lines.
    let n = input.lines().count();
    wait_until(Duration::from_secs(2), || p.stdout_lines().len() >= n);
    p.stdout_lines()
}

fn one_shot(addr: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(common::BIN).args(["client", "--connect", addr]).args(args).output().unwrap();
    (out.status.success(), String::from_utf8(out.stdout).unwrap())
}

#[test]
fn readme_walkthrough_then_graceful_stop() {
    let mut c = TestCluster::start(3, false);
    let input = "set stephen=zerfas\n\nget stephen\n\nget stephen\n\nget stephen\n\nget stephen\n\nset val=pal\n\nget val\n";
    assert_eq!(
        client_session(&c.lb_addr, input),
        [
            "Successfully set key 'stephen' with value 'zerfas'",
            "zerfas",
            "zerfas",
            "zerfas",
            "zerfas",
            "Successfully set key 'val' with value 'pal'",
            "pal",
        ]
    );

    // Mistakes print an error line and the session goes on.
    let input = "frobnicate\nset novalue\nget missing-key\nset eq=a = b=c d\nget eq\ndel eq\nget eq\nhelp\nquit\nget val\n";
    let lines = client_session(&c.lb_addr, input);
    assert!(lines[0].starts_with("error: unknown command 'frobnicate'"), "{lines:?}");
    assert!(lines[1].starts_with("error: usage: set KEY=VALUE"), "{lines:?}");
    assert_eq!(
        lines[2..],
        [
            "(nil)",
            "Successfully set key 'eq' with value 'a = b=c d'",
            "a = b=c d",
            "Deleted key 'eq' (if it was there)",
            "(nil)",
            "commands: set KEY=VALUE | get KEY | del KEY | status | help | quit",
        ],
        "nothing runs after quit"
    );

    // One-shot commands; the words after `set` form the value.
    assert_eq!(one_shot(&c.lb_addr, &["get", "stephen"]), (true, "zerfas\n".into()));
    assert_eq!(
        one_shot(&c.lb_addr, &["set", "greeting=hello", "world"]),
        (true, "Successfully set key 'greeting' with value 'hello world'\n".into())
    );
    // A new process has no session: one-shot gets read from the leader, so
    // they see what another process just set.
    assert_eq!(one_shot(&c.lb_addr, &["get", "greeting"]), (true, "hello world\n".into()));
    assert_eq!(one_shot(&c.lb_addr, &["get", "nobody"]), (true, "(nil)\n".into()));
    let (ok, out) = one_shot(&c.lb_addr, &["get", &"k".repeat(2000)]);
    assert!(!ok && out.starts_with("error: invalid request"), "{out}");

    // Graceful stop: SIGTERM to every process, each exits 0 promptly.
    c.lb.signal("TERM");
    let st = c.lb.wait_exit(Duration::from_secs(10)).expect("balancer exits on SIGTERM");
    assert!(st.success(), "balancer: {st:?}");
    for i in 1..=3 {
        let r = c.replica(i);
        r.signal("INT");
        let st = r.wait_exit(Duration::from_secs(10)).expect("replica exits on SIGINT");
        assert!(st.success(), "replica {i}: {st:?}");
    }
}

#[test]
fn cluster_command_with_free_ports() {
    let mut p = Proc::spawn("cluster", &["cluster", "--replicas", "3", "--base-port", "0"]);
    for i in 1..=3 {
        p.wait_line(&format!("kvnode replica {i} listening at 127.0.0.1:"), Duration::from_secs(10));
    }
    let addr = p.wait_line("kvnode balancer listening at ", Duration::from_secs(10));
    let ok = wait_until(Duration::from_secs(20), || one_shot(&addr, &["set", "a=1"]).0);
    assert!(ok, "cluster took no write; stderr: {:?}", p.stderr_lines());
    assert_eq!(one_shot(&addr, &["get", "a"]), (true, "1\n".into()));
    // Quiet by default: only the start-up lines, who leads (from the
    // balancer and from the leader), and (no secret) one warning that the
    // cluster is open.
    let out = p.stdout_lines();
    assert_eq!(out.len(), 6, "{out:?}");
    assert!(
        out.iter().any(|l| l.starts_with("kvnode balancer: r1 is the leader of e1 (promoted")),
        "{out:?}"
    );
    assert!(out.iter().any(|l| l.starts_with("kvnode replica 1: leader of e1")), "{out:?}");
    let err = p.stderr_lines();
    assert_eq!(err.len(), 1, "{err:?}");
    assert!(err[0].starts_with("warning: no cluster secret") && err[0].contains("loopback only"), "{err:?}");
    p.signal("INT");
    let st = p.wait_exit(Duration::from_secs(10)).expect("cluster exits on SIGINT");
    assert!(st.success(), "{st:?}");
}

#[test]
fn every_command_has_help() {
    for cmd in [&[][..], &["replica"], &["balancer"], &["client"], &["cluster"], &["bench"]] {
        let out = Command::new(common::BIN).args(cmd).arg("--help").output().unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(out.status.success() && text.contains("Usage: kvnode"), "{cmd:?}: {text}");
    }
    let out = Command::new(common::BIN).args(["replica", "0"]).output().unwrap();
    assert!(!out.status.success(), "replica 0 is refused");
}

/// Every limit agrees with the README (1 to 9 replicas, sync_acks below the
/// replica count, bench values up to 64 KiB, weights that fit, at most a
/// million keys), and breaking one is a usage error: status 2, one clear
/// line, nothing started.
#[test]
fn limits_are_usage_errors() {
    let cases: &[(&[&str], &str)] = &[
        (&["replica", "10", "--peers", "a:1"], "10 is not in 1..=9"),
        (&["cluster", "--replicas", "10"], "10 is not in 1..=9"),
        (
            &["replica", "1", "--peers", "127.0.0.1:1,127.0.0.1:2,127.0.0.1:3", "--sync-acks", "5"],
            "--sync-acks 5",
        ),
        (
            &["balancer", "127.0.0.1:0", "127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3", "--sync-acks", "3"],
            "only 2 follower(s)",
        ),
        (&["balancer", "127.0.0.1:0", "127.0.0.1:1", "--sync-acks", "100"], "--sync-acks 100"),
        (
            &[
                "balancer",
                "127.0.0.1:0",
                "a:1",
                "a:2",
                "a:3",
                "a:4",
                "a:5",
                "a:6",
                "a:7",
                "a:8",
                "a:9",
                "a:10",
            ],
            "1 to 9 replicas, not 10",
        ),
        (&["cluster", "--replicas", "3", "--sync-acks", "3"], "only 2 follower(s)"),
        (&["bench", "--value-size", "100000"], "100000 is not in 0..=65536"),
        (&["bench", "--mix", "set:4294967295,get:1"], "add up to more than 4294967295"),
        (&["bench", "--keys", "100000000"], "is not in 1..=1000000"),
        (&["bench", "--clients", "0"], "0 is not in 1..=1000"),
        (&["client", "--connect", "127.0.0.1:1", "frobnicate"], "unknown command 'frobnicate'"),
    ];
    for (args, why) in cases {
        let out = Command::new(common::BIN).args(*args).output().unwrap();
        let text =
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert_eq!(out.status.code(), Some(2), "{args:?}: {text}");
        assert!(text.contains(why), "{args:?}: {text}");
    }
}

/// `kvnode cluster ... | head -2`: once its stdout is gone the cluster
/// stops as for SIGTERM and exits 0, without a panic.
#[test]
fn a_closed_stdout_stops_the_cluster_cleanly() {
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(common::BIN)
        .args(["cluster", "--replicas", "3", "--base-port", "0"])
        .env("RUST_BACKTRACE", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    for _ in 0..2 {
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert!(line.starts_with("kvnode replica"), "{line}");
    }
    drop(out);
    let mut status = None;
    wait_until(Duration::from_secs(15), || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    let Some(status) = status else {
        let _ = child.kill();
        panic!("the cluster kept running with its stdout closed");
    };
    let err = child.wait_with_output().unwrap().stderr;
    let err = String::from_utf8_lossy(&err);
    assert_eq!(status.code(), Some(0), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

/// `kvnode status` (and `--json`, and the REPL's `status`) shows the leader
/// and each replica; a killed follower shows as down, the balancer warns that
/// it cannot reach it, and says so again when it is back; a killed leader is
/// replaced and the balancer says so on stdout, one line each.
#[test]
fn status_shows_who_leads_and_failover_is_announced() {
    let mut c = TestCluster::start(3, true);
    let lb_addr = c.lb_addr.clone();
    let status = |json: bool| {
        let mut cmd = Command::new(common::BIN);
        cmd.args(["status", "--connect", &lb_addr]);
        if json {
            cmd.arg("--json");
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    // The table is as fresh as the balancer's last pings (every 50 ms).
    let ok = wait_until(Duration::from_secs(5), || !status(true).contains(r#""last_lsn":0,"#));
    assert!(ok, "{}", status(false));
    let table = status(false);
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("leader r1 in e1 (3 replicas)"), "{table}");
    assert!(lines[1].starts_with("replica  address"), "{table}");
    for i in 1..=3usize {
        let row = lines[1 + i];
        assert!(row.starts_with(&format!("r{i} ")) && row.contains(&c.replica_addrs[i - 1]), "{table}");
        assert!(
            row.contains(if i == 1 { " leader " } else { " follower " }) && row.contains(" ok "),
            "{table}"
        );
    }
    let json = status(true);
    assert!(json.starts_with(r#"{"phase":"leading","leader":1,"epoch":1,"replicas":[{"id":1,"#), "{json}");
    assert_eq!(json.matches(r#""health":"ok""#).count(), 3, "{json}");
    let repl = client_session(
        &c.lb_addr, "status
",
    );
    assert!(repl[0].starts_with("leader r1 in e1"), "{repl:?}");

    // A follower killed: down in the table, one warning, then back.
    c.replica(3).kill9();
    let ok = wait_until(Duration::from_secs(10), || {
        status(false)
            .lines()
            .any(|l| l.starts_with("r3 ") && (l.contains(" down ") || l.contains("unreachable")))
    });
    assert!(ok, "{}", status(false));
    let warned = |c: &TestCluster| {
        c.lb.stderr_lines().iter().filter(|l| l.contains("WARN") && l.contains("cannot reach r3 at")).count()
    };
    assert!(wait_until(Duration::from_secs(10), || warned(&c) == 1), "{:?}", c.lb.stderr_lines());
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(warned(&c), 1, "reported once: {:?}", c.lb.stderr_lines());
    c.restart_replica(3);
    let back = wait_until(Duration::from_secs(10), || {
        c.lb.stderr_lines()
            .iter()
            .any(|l| l.contains("WARN") && l.contains("connected to r3 at") && l.contains("again"))
    });
    assert!(back, "{:?}", c.lb.stderr_lines());

    // The leader killed: the balancer says so and names the new one.
    c.replica(1).kill9();
    let said = |c: &TestCluster, what: &str| c.lb.stdout_lines().iter().any(|l| l.starts_with(what));
    let ok = wait_until(Duration::from_secs(10), || {
        said(&c, "kvnode balancer: lost the leader r1 of e1")
            && (said(&c, "kvnode balancer: r2 is the leader of e2")
                || said(&c, "kvnode balancer: r3 is the leader of e2"))
    });
    assert!(ok, "{:?}", c.lb.stdout_lines());
    assert!(wait_until(Duration::from_secs(5), || status(false).contains(" in e2 ")), "{}", status(false));
}

/// A replica address nobody listens at is reported at the default log level.
#[test]
fn an_unreachable_replica_address_is_reported() {
    let ports = common::free_ports(2);
    let lb = format!("127.0.0.1:{}", ports[0]);
    let wrong = format!("127.0.0.1:{}", ports[1]);
    let mut p = Proc::spawn("balancer", &["balancer", &lb, &wrong]);
    p.wait_line("kvnode balancer listening at ", Duration::from_secs(10));
    let reported = |p: &Proc| {
        p.stderr_lines().iter().filter(|l| l.contains(&format!("cannot reach r1 at {wrong}"))).count()
    };
    assert!(wait_until(Duration::from_secs(5), || reported(&p) == 1), "{:?}", p.stderr_lines());
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(reported(&p), 1, "once: {:?}", p.stderr_lines());
    p.signal("TERM");
    assert!(p.wait_exit(Duration::from_secs(10)).is_some_and(|s| s.success()));
}

/// Ctrl-C (SIGINT) while a command waits gives up on that command only:
/// the REPL says so and reads the next line.
#[test]
fn an_interrupt_cancels_the_command_in_flight_not_the_repl() {
    let nobody = format!("127.0.0.1:{}", common::free_ports(1)[0]);
    let mut p = Proc::spawn_with("client", &["client", "--connect", &nobody], Stdio::piped());
    assert!(wait_until(Duration::from_secs(10), || !p.stderr_lines().is_empty()), "no start-up warning");
    p.stdin().write_all(b"set a=1\n").unwrap();
    p.stdin().flush().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(p.alive(), "the set is still waiting (nobody listens)");
    p.signal("INT");
    assert!(wait_until(Duration::from_secs(5), || !p.stdout_lines().is_empty()), "{:?}", p.stderr_lines());
    p.stdin().write_all(b"help\n").unwrap();
    p.close_stdin();
    let st = p.wait_exit(Duration::from_secs(10)).expect("the REPL ends at end of input");
    assert!(st.success(), "{st:?}");
    wait_until(Duration::from_secs(2), || p.stdout_lines().len() >= 2);
    assert_eq!(
        p.stdout_lines(),
        ["error: interrupted (the write may or may not have been applied)", repl_help()],
        "{:?}",
        p.stderr_lines()
    );
}

fn repl_help() -> &'static str {
    kvstore::runtime::repl::HELP
}
