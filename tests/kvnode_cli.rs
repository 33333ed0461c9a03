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
            "Successfully deleted key 'eq'",
            "(nil)",
            "commands: set KEY=VALUE | get KEY | del KEY | help | quit",
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
    // Quiet by default: only the start-up lines, and (no secret) one warning
    // that the cluster is open.
    assert_eq!(p.stdout_lines().len(), 4);
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
