//! `kvnode --record DIR` on a real three-replica cluster through a SIGKILL
//! failover (and the killed replica's restart), then `kvsim replay DIR`:
//! every machine does, given its recorded inputs, exactly what it did for
//! real, and the operations the balancer saw pass the simulator's checkers.
//! The recording also becomes a scenario that `kvsim run` runs, and a
//! self-contained space-time page (`kvsim replay --html`).
//!
//! `kvsim` is the workspace's other binary, found beside `kvnode` (built by
//! `cargo test --workspace`, or `cargo build -p kvsim`).

// Process tests drive real processes against the wall clock and threads.
#![allow(clippy::disallowed_methods)]

mod common;

use common::{get, set, wait_until, TestCluster, BIN};
use kvstore::types::ReadMode;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// No client thread runs longer than this, whatever happens.
const CLIENT_LIMIT: Duration = Duration::from_secs(30);

fn kvsim() -> PathBuf {
    let p = Path::new(BIN).with_file_name("kvsim");
    assert!(
        p.exists(),
        "{} is missing: build it with `cargo build -p kvsim` (`cargo test --workspace` does)",
        p.display()
    );
    p
}

/// Runs kvsim with a deadline; returns (exit code, stdout, stderr).
fn run_kvsim(args: &[&str], limit: Duration) -> (Option<i32>, String, String) {
    let mut child = Command::new(kvsim())
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("kvsim starts");
    let end = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() >= end {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "kvsim {args:?} ran longer than {limit:?}; stdout:\n{}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn a_recorded_failover_replays_without_divergence() {
    let rec_dir = tempfile::tempdir().unwrap();
    let rec = rec_dir.path().join("rec");
    let rec_arg = rec.to_str().unwrap();
    let mut c = TestCluster::start_with(3, true, &["--record", rec_arg], &["--record", rec_arg]);
    assert!(wait_until(Duration::from_secs(10), || c.leader().is_some()), "no leader: {}", c.diagnostics());
    let old = c.leader().unwrap();

    // Writers (session) and a linearizable reader, closed loop.
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let mut threads = Vec::new();
    for i in 0..4 {
        let mut client = c.client(ReadMode::Session);
        let (stop, acked) = (stop.clone(), acked.clone());
        threads.push(std::thread::spawn(move || {
            let began = Instant::now();
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) && began.elapsed() < CLIENT_LIMIT {
                let done = client.call(set(&format!("k{}", n % 20), &format!("w{i}-{n}")));
                if done.result.is_ok() {
                    acked.fetch_add(1, Ordering::SeqCst);
                }
                n += 1;
            }
        }));
    }
    for _ in 0..2 {
        let mut client = c.client(ReadMode::Leader);
        let stop = stop.clone();
        threads.push(std::thread::spawn(move || {
            let began = Instant::now();
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) && began.elapsed() < CLIENT_LIMIT {
                let _ = client.call(get(&format!("k{}", n % 20)));
                n += 1;
                std::thread::sleep(Duration::from_millis(2));
            }
        }));
    }

    std::thread::sleep(Duration::from_millis(800));
    c.replica(old).kill9();
    let promoted = wait_until(Duration::from_secs(10), || c.leader().is_some_and(|l| l != old));
    assert!(promoted, "no new leader after killing r{old}: {}", c.diagnostics());
    // Writes go on under the new leader until some are acknowledged.
    let before = acked.load(Ordering::SeqCst);
    assert!(
        wait_until(Duration::from_secs(10), || acked.load(Ordering::SeqCst) >= before + 20),
        "writes did not resume under the new leader: {}",
        c.diagnostics()
    );
    // The old leader comes back on its data and recording directories: a
    // second life in its recording.
    c.restart_replica(old);
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::SeqCst);
    for t in threads {
        t.join().unwrap();
    }
    eprintln!("{} writes acknowledged; r{old} killed and restarted", acked.load(Ordering::SeqCst));

    // Stop everything cleanly (the balancer first, so it drains while the
    // replicas still answer).
    c.lb.signal("TERM");
    assert!(c.lb.wait_exit(Duration::from_secs(10)).is_some(), "the balancer did not stop");
    for i in 1..=3 {
        let p = c.replica(i);
        p.signal("TERM");
        assert!(p.wait_exit(Duration::from_secs(10)).is_some(), "replica {i} did not stop");
    }
    let mut bytes = 0;
    for node in ["lb", "r1", "r2", "r3"] {
        let dir = rec.join(node);
        let size: u64 = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum();
        bytes += size;
    }

    let scenario = rec_dir.path().join("replayed.toml");
    let page = rec_dir.path().join("replay.html");
    let (code, out, err) = run_kvsim(
        &["replay", rec_arg, "--as-scenario", scenario.to_str().unwrap(), "--html", page.to_str().unwrap()],
        Duration::from_secs(60),
    );
    eprintln!("{out}{err}recording: {bytes} bytes");
    assert_eq!(code, Some(0), "kvsim replay failed:\n{out}{err}");
    assert!(out.contains("effects: all "), "{out}");
    assert!(out.contains("invariants: all hold"), "{out}");
    assert!(out.contains(", lost 0"), "{out}");
    assert!(out.contains(&format!("r{old}: 2 lives")), "the killed replica's two lives:\n{out}");
    assert!(!out.contains("DIVERGENCE"), "{out}");
    let ok: u64 = out
        .lines()
        .find_map(|l| l.strip_prefix("ops (as the balancer saw them): "))
        .and_then(|l| l.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(ok >= 40, "few operations in the history:\n{out}");
    let crash_ms = check_page(&page, old);
    // The whole run (counted per column), then around the crash (one by
    // one, chatter too): messages to the dead replica end in a cross.
    if let Some(view) = draw_page(&page, "") {
        assert!(view.contains("data-leader-epochs=\""), "{view}");
    }
    // A window narrow enough to draw messages one by one (above 3,000 in
    // view the page draws counts per column instead; a fast machine fits
    // that many into 200 ms): the crash, and the messages lost to it.
    let around = format!("#t={},{}&chatter=1", crash_ms.saturating_sub(5), crash_ms + 60);
    if let Some(view) = draw_page(&page, &around) {
        let number = |name: &str| -> u64 {
            let at = view.find(&format!(" {name}=\"")).unwrap_or_else(|| panic!("no {name}: {view}"));
            let rest = &view[at + name.len() + 3..];
            rest[..rest.find('"').unwrap()].parse().unwrap()
        };
        if view.contains("data-mode=\"aggregate\"") {
            assert!(number("data-rendered-agg") > 0, "nothing drawn around the crash: {view}");
        } else {
            assert!(number("data-rendered-arrows") > 0, "arrows around the crash: {view}");
            assert!(number("data-rendered-crosses") > 0, "lost messages around the crash: {view}");
        }
    }

    // The inferred scenario parses and runs.
    let text = std::fs::read_to_string(&scenario).unwrap();
    assert!(text.starts_with("# Inferred by `kvsim replay"), "{text}");
    assert!(text.contains("action = \"crash\""), "the SIGKILL is a crash:\n{text}");
    let (code, out, err) = run_kvsim(
        &["run", scenario.to_str().unwrap(), "--seed", "1", "--trace", "none"],
        Duration::from_secs(60),
    );
    assert_eq!(code, Some(0), "kvsim run of the inferred scenario:\n{text}\n{out}{err}");
    assert!(out.contains("invariants: all hold"), "{out}");
}

/// The replay's page: self-contained, and its data shows the cluster, the
/// traffic, the operations and the failover.
/// Returns the crash's time, in ms.
fn check_page(page: &Path, old: u8) -> u64 {
    let html = std::fs::read_to_string(page).unwrap_or_else(|e| panic!("{}: {e}", page.display()));
    let lower = html.to_ascii_lowercase();
    for attr in ["src=", "href="] {
        for quote in ["\"", "'", ""] {
            for scheme in ["http://", "https://", "//"] {
                let link = format!("{attr}{quote}{scheme}");
                assert!(!lower.contains(&link), "the page loads something from the network: {link}");
            }
        }
    }
    assert!(!lower.contains("<link"), "the page links a stylesheet");
    let open = "<script type=\"application/json\" id=\"kvsim-data\">";
    let from = html.find(open).expect("the page's data block") + open.len();
    let to = from + html[from..].find("</script>").expect("the data block's end");
    let data: serde_json::Value = serde_json::from_str(&html[from..to]).expect("the data is JSON");
    let list = |name: &str| data[name].as_array().unwrap_or_else(|| panic!("no list {name}")).clone();
    let (lanes, messages, ops, spans, marks) =
        (list("lanes"), list("messages"), list("ops"), list("spans"), list("marks"));
    let summary = format!(
        "{} lanes, {} messages, {} ops, {} spans, {} marks",
        lanes.len(),
        messages.len(),
        ops.len(),
        spans.len(),
        marks.len()
    );
    let mut fates = std::collections::BTreeMap::new();
    for m in &messages {
        *fates.entry(m["fate"].as_str().unwrap_or("?").to_string()).or_insert(0) += 1;
    }
    let summary = format!("{summary} (by fate {fates:?})");
    eprintln!("page: {} KiB: {summary}", html.len() / 1024);
    assert_eq!(data["recorded"], true, "{summary}");
    let replicas = lanes.iter().filter(|l| l["kind"] == "replica").count();
    assert!(replicas >= 3, "replica lanes: {replicas}");
    assert!(lanes.iter().filter(|l| l["kind"] == "client").count() >= 6, "a lane per client: {summary}");
    assert!(messages.len() > 100, "{summary}");
    let delivered = messages.iter().filter(|m| m["fate"] == "delivered").count();
    assert!(delivered * 2 > messages.len(), "most messages matched a receive: {delivered} of {summary}");
    assert!(
        messages.iter().any(|m| m["kind"] == "Write" && m["fate"] == "delivered"),
        "balancer to replica traffic"
    );
    assert!(messages.windows(2).all(|w| w[0]["sent"].as_u64() <= w[1]["sent"].as_u64()), "sorted by send");
    assert!(messages.iter().all(|m| m["at"].as_u64() >= m["sent"].as_u64()), "none arrives before it leaves");
    assert!(ops.len() > 10, "{summary}");
    assert!(ops.iter().any(|o| o["outcome"] == "ok"), "{summary}");
    // The failover: two leaders, of different epochs.
    let leaders: Vec<(String, u64)> = spans
        .iter()
        .filter(|s| s["kind"] == "role" && s["state"] == "leader")
        .map(|s| {
            (lanes[s["lane"].as_u64().unwrap() as usize]["name"].to_string(), s["epoch"].as_u64().unwrap())
        })
        .collect();
    let epochs: std::collections::BTreeSet<u64> = leaders.iter().map(|l| l.1).collect();
    assert!(epochs.len() >= 2, "leader bands of one epoch only: {leaders:?}");
    let name = format!("\"r{old}\"");
    let crash = marks.iter().find(|m| m["kind"] == "crash").expect("a crash mark");
    let lane = crash["lane"].as_u64().unwrap() as usize;
    assert_eq!(lanes[lane]["name"].to_string(), name, "the killed replica's crash: {crash}");
    assert!(
        marks.iter().any(|m| m["kind"] == "restart" && m["lane"].as_u64() == Some(lane as u64)),
        "its restart"
    );
    crash["t"].as_u64().unwrap() / 1000
}

/// Headless Chromium draws the page without a script error (as
/// `sim/tests/html.rs` checks `kvsim run --html` pages). Chromium is
/// needed: `apt-get install -y chromium`, or `KVSTORE_CHROMIUM` names it;
/// `KVSTORE_SKIP_BROWSER=1` skips this (`None`). `fragment`: the page's
/// `#t=FROM,TO` (ms) window. Returns the drawn `#view` element's tag.
fn draw_page(page: &Path, fragment: &str) -> Option<String> {
    if std::env::var("KVSTORE_SKIP_BROWSER").is_ok_and(|v| v == "1") {
        eprintln!("KVSTORE_SKIP_BROWSER=1: the page is not drawn");
        return None;
    }
    let browser = std::env::var_os("KVSTORE_CHROMIUM").map(PathBuf::from).or_else(|| {
        let path = std::env::var_os("PATH").unwrap_or_default();
        ["chromium", "chromium-browser", "google-chrome"]
            .iter()
            .flat_map(|name| std::env::split_paths(&path).map(move |d| d.join(name)))
            .find(|p| p.is_file())
    });
    let Some(browser) = browser else {
        panic!(
            "headless Chromium is needed to draw the replay's page and was not found (chromium, \
             chromium-browser or google-chrome on PATH, or KVSTORE_CHROMIUM): install it with \
             `apt-get install -y chromium`, or set KVSTORE_SKIP_BROWSER=1 to skip this check"
        );
    };
    let dir = tempfile::tempdir().unwrap();
    let (dom_path, log_path) = (dir.path().join("dom.html"), dir.path().join("log.txt"));
    let mut cmd = Command::new(&browser);
    cmd.args([
        "--headless",
        "--disable-gpu",
        "--no-sandbox",
        "--no-first-run",
        "--enable-logging=stderr",
        "--v=0",
    ])
    .arg(format!("--user-data-dir={}", dir.path().join("profile").display()))
    .args(["--window-size=1400,800", "--dump-dom"])
    .arg(format!("file://{}{fragment}", page.display()))
    .stdin(std::process::Stdio::null())
    .stdout(std::fs::File::create(&dom_path).unwrap())
    .stderr(std::fs::File::create(&log_path).unwrap());
    // Its own process group, so a hung browser goes with its children.
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {}: {e}", browser.display()));
    let end = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() >= end {
            let _ = Command::new("kill").args(["-KILL", "--", &format!("-{}", child.id())]).status();
            let _ = child.wait();
            panic!("{} did not draw {} within 60 s", browser.display(), page.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let dom = std::fs::read_to_string(&dom_path).unwrap();
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    assert!(status.success(), "{} exited {status}; its log:\n{log}", browser.display());
    let view = dom.find("id=\"view\"").map(|at| &dom[at..at + dom[at..].find('>').unwrap_or(0)]);
    let view = view.unwrap_or_else(|| panic!("no #view in the DOM; log:\n{log}"));
    assert!(view.contains("data-ready=\"1\""), "the page's script did not finish: {view}\nlog:\n{log}");
    assert!(!dom.contains("data-js-errors=\""), "the page caught script errors");
    let uncaught: Vec<&str> = log.lines().filter(|l| l.contains("Uncaught")).collect();
    assert!(uncaught.is_empty(), "script errors in Chromium's log:\n{}", uncaught.join("\n"));
    eprintln!("chromium drew the page{fragment}: {}", &view[..view.len().min(600)]);
    Some(view.to_string())
}
