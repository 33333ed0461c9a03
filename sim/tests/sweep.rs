//! `kvsim sweep` and `kvsim run` as a user meets them: the binary, its
//! output and its exit status, on tiny scenarios written to a temporary
//! directory. (A seed that panics is shown in the binary's own tests, with a
//! stand-in for the simulator: no scenario panics on purpose.)

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A few hundred operations with deletes: a run takes milliseconds.
const TINY: &str = r#"
[workload]
duration_ms = 300
keys = 4
clients = 3
mix = { set = 50, get = 20, del = 30 }
[run]
quiet_ms = 500
"#;

/// Followers skip deletes: the replicas diverge on every seed tried here.
fn diverging() -> String {
    format!("{TINY}\n[bugs]\nfollower_skips_deletes = true\n")
}

fn kvsim(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kvsim")).args(args).output().expect("kvsim runs")
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("scenario written");
    path
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn a_clean_sweep_exits_0_and_counts_every_run() {
    let dir = tempfile::tempdir().unwrap();
    let tiny = write(dir.path(), "tiny.toml", TINY);
    let out = kvsim(&["sweep", tiny.to_str().unwrap(), "--from", "1", "--to", "3"]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    assert_eq!(stdout, "3 runs: 3 passed, 0 failed (0 panicked), 0 inconclusive\n");
}

#[test]
fn each_failing_seed_is_printed_with_the_command_that_reproduces_it() {
    let dir = tempfile::tempdir().unwrap();
    let tiny = write(dir.path(), "tiny.toml", TINY);
    let bad = write(dir.path(), "bad.toml", &diverging());
    let (tiny, bad) = (tiny.to_str().unwrap(), bad.to_str().unwrap());
    let out = kvsim(&["sweep", tiny, bad, "--from", "2", "--to", "4"]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}{}", text(&out.stderr));
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{stdout}");
    for (line, seed) in lines.iter().zip(2..=4) {
        let expected =
            format!("FAIL kvsim run {bad} --seed {seed}   # replicas differ after the quiet period: ");
        assert!(line.starts_with(&expected), "{line}");
    }
    assert_eq!(lines[3], "6 runs: 3 passed, 3 failed (0 panicked), 0 inconclusive");

    // The command printed reproduces the failure.
    let out = kvsim(&["run", bad, "--seed", "2", "--trace", "none"]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("VIOLATIONS"), "{stdout}");
    assert!(stdout.contains(&format!("reproduce: kvsim run {bad} --seed 2")), "{stdout}");
    let out = kvsim(&["run", tiny, "--seed", "2", "--trace", "none"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
}

#[test]
fn a_backwards_seed_range_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let tiny = write(dir.path(), "tiny.toml", TINY);
    let out = kvsim(&["sweep", tiny.to_str().unwrap(), "--from", "10", "--to", "5"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(text(&out.stdout), "");
    let stderr = text(&out.stderr);
    assert!(stderr.starts_with("error: --from 10 is after --to 5: no seed to run"), "{stderr}");
    assert!(stderr.contains("Usage: kvsim sweep"), "{stderr}");
    // One seed is a range.
    let out = kvsim(&["sweep", tiny.to_str().unwrap(), "--from", "5", "--to", "5"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "1 run: 1 passed, 0 failed (0 panicked), 0 inconclusive\n");
}

#[test]
fn a_scenario_that_does_not_parse_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let broken = write(dir.path(), "broken.toml", "[workload]\nduration_ms = \"soon\"\n");
    let out = kvsim(&["sweep", broken.to_str().unwrap(), "--from", "1", "--to", "2"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).starts_with("error: "), "{}", text(&out.stderr));
}

/// `kvsim run ... | head -2`: the reader goes away; kvsim stops quietly
/// with status 0 (no "failed printing to stdout" panic, no backtrace).
#[test]
fn a_closed_stdout_is_a_clean_exit() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    let file = concat!(env!("CARGO_MANIFEST_DIR"), "/../scenarios/failover.toml");
    let mut child = Command::new(env!("CARGO_BIN_EXE_kvsim"))
        .args(["run", file, "--seed", "42"])
        .env("RUST_BACKTRACE", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    assert!(first.starts_with("# The leader (r1) crashes"), "{first}");
    drop(out);
    let done = child.wait_with_output().unwrap();
    assert_eq!(done.status.code(), Some(0), "stderr: {}", text(&done.stderr));
    assert_eq!(text(&done.stderr), "", "nothing on stderr");
}
