//! The HTML view (`kvsim run --html`): its data is a reviewed snapshot,
//! recording leaves the run and its trace untouched, and headless Chromium
//! draws the page (lanes, arrows, the failover's role bands, operation
//! bars) without a JavaScript error.
//!
//! The browser tests need Debian's `chromium` (`apt-get install -y
//! chromium`; `KVSTORE_CHROMIUM` names another binary). Without it they
//! fail, saying so, unless `KVSTORE_SKIP_BROWSER=1` is set.

use kvsim::timeline::Timeline;
use kvsim::{load, parse, run, run_with_timeline, summary_text, TraceLevel};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn scenario(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios").join(name)
}

fn timeline(name: &str, seed: u64) -> Timeline {
    let sc = load(&scenario(name)).unwrap_or_else(|e| panic!("{e}"));
    let out = run_with_timeline(&sc, seed, TraceLevel::None, &format!("scenarios/{name}"));
    out.timeline.expect("asked for a timeline")
}

fn count<'a>(items: impl Iterator<Item = &'a str>) -> BTreeMap<&'a str, usize> {
    let mut m = BTreeMap::new();
    for k in items {
        *m.entry(k).or_insert(0) += 1;
    }
    m
}

/// The page's data for failover seed 42, in short: counts per kind, the
/// lanes, every role band, mark and partition, and the first items of the
/// long lists.
#[test]
fn failover_page_data_matches_snapshot() {
    let t = timeline("failover.toml", 42);
    let v: Value = serde_json::from_str(&kvsim::html::data_json(&t)).unwrap();
    let first = |list: &str, n: usize| -> Value {
        Value::Array(v[list].as_array().unwrap().iter().take(n).cloned().collect())
    };
    let summary = json!({
        "scenario": v["scenario"],
        "seed": v["seed"],
        "end_us": v["end_us"],
        "lanes": v["lanes"],
        "counts": {
            "messages": t.messages.len(),
            "messages_by_kind": count(t.messages.iter().map(|m| m.kind)),
            "messages_by_fate": count(t.messages.iter().map(|m| m.fate)),
            "chatter": t.messages.iter().filter(|m| m.chatter).count(),
            "marks_by_kind": count(t.marks.iter().map(|m| m.kind)),
            "spans_by_state": count(t.spans.iter().map(|s| s.state.unwrap_or(s.kind))),
            "ops_by_outcome": count(t.ops.iter().map(|o| o.outcome)),
            "partitions": t.partitions.len(),
            "violations": t.violations.len(),
        },
        "spans": v["spans"],
        "marks": v["marks"],
        "partitions": v["partitions"],
        "violations": v["violations"],
        "first_messages": first("messages", 12),
        "first_ops": first("ops", 6),
        "summary": v["summary"],
    });
    insta::assert_snapshot!(serde_json::to_string_pretty(&summary).unwrap());
}

/// Recording is only looking: the same run, byte for byte, with or without
/// it, and the recorded counts agree with the summary's.
#[test]
fn recording_changes_nothing() {
    for name in ["failover.toml", "lossy.toml", "partition-leader.toml", "torn-write.toml", "flapping.toml"] {
        let sc = load(&scenario(name)).unwrap();
        let plain = run(&sc, 42, TraceLevel::All);
        let rec = run_with_timeline(&sc, 42, TraceLevel::All, name);
        assert!(plain.timeline.is_none());
        assert_eq!(plain.trace, rec.trace, "{name}: recording changed the trace");
        assert_eq!(summary_text(&plain.summary, name), summary_text(&rec.summary, name), "{name}");
        let t = rec.timeline.unwrap();
        let s = &rec.summary;
        assert_eq!(
            t.messages.len() as u64,
            s.messages_sent + t.messages.iter().filter(|m| m.dup).count() as u64
        );
        let dropped = t.messages.iter().filter(|m| matches!(m.fate, "partitioned" | "dropped")).count();
        assert_eq!(dropped as u64, s.messages_dropped, "{name}");
        let ok = t.ops.iter().filter(|o| o.outcome == "ok").count() as u64;
        assert_eq!(ok, s.ops_ok, "{name}");
        assert_eq!(t.ops.iter().filter(|o| o.outcome == "unfinished").count() as u64, s.ops_unfinished);
        assert!(t.messages.iter().all(|m| m.fate != "inflight" || m.at.is_none()));
        assert!(t.messages.iter().all(|m| !m.line.is_empty()), "{name}: a message without its trace line");
        assert!(t.messages.windows(2).all(|w| w[0].sent <= w[1].sent), "sorted by send time");
        // Every message `--trace all` shows as delivered or lost is a line
        // of the trace, as recorded.
        for m in t.messages.iter().filter(|m| m.fate != "inflight" && !m.line.contains("... (")).take(300) {
            assert!(rec.trace.contains(&m.line), "{name}: {:?} is not in the trace", m.line);
        }
    }
}

/// A linearizability violation is marked where the check found it, with
/// the operation that could not be placed and those on its key.
#[test]
fn a_linearizability_violation_names_its_operations() {
    let text = std::fs::read_to_string(scenario("stale-reads.toml")).unwrap();
    let sc = parse(&format!("{text}\n[bugs]\nleader_reads_anywhere = true\n"), "bad.toml", "bad").unwrap();
    let out = run_with_timeline(&sc, 1, TraceLevel::None, "bad.toml");
    let t = out.timeline.unwrap();
    let v =
        t.violations.iter().find(|v| v.checker == "linearizability").expect("a linearizability violation");
    let culprit = v.culprit.expect("the operation that could not be placed");
    let key = v.key.as_deref().unwrap();
    assert_eq!(t.ops[culprit].key, key);
    assert_eq!(t.ops[culprit].done, Some(v.t), "marked at that operation's completion");
    assert!(v.ops.contains(&culprit) && v.ops.iter().all(|i| t.ops[*i].key == key));
    assert!(v.text.starts_with("linearizability: key"), "{}", v.text);
}

#[test]
fn an_unwritable_html_path_is_a_clear_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_kvsim"))
        .args(["run", scenario("basic.toml").to_str().unwrap(), "--html", "/nonexistent-dir/x.html"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("error: --html /nonexistent-dir/x.html: cannot write"), "{err}");
    assert!(out.stdout.is_empty(), "failed before running");
}

// ---------------------------------------------------------------------------
// Headless Chromium.

fn browser() -> Option<PathBuf> {
    if std::env::var("KVSTORE_SKIP_BROWSER").is_ok_and(|v| v == "1") {
        eprintln!("KVSTORE_SKIP_BROWSER=1: browser test skipped");
        return None;
    }
    if let Some(p) = std::env::var_os("KVSTORE_CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        for dir in std::env::split_paths(&path) {
            let p = dir.join(name);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    panic!(
        "headless Chromium is needed for this test and was not found (chromium, chromium-browser or \
         google-chrome on PATH, or KVSTORE_CHROMIUM): install it with `apt-get install -y chromium`, \
         or set KVSTORE_SKIP_BROWSER=1 to skip the browser tests"
    );
}

/// What Chromium made of a page: the DOM after the page's script ran, and
/// its log (console messages included).
struct Rendered {
    dom: String,
    log: String,
}

/// Opens `page` (with `#fragment`) in headless Chromium and dumps the DOM;
/// killed, and the test failed, if it takes over 30 s.
fn render(browser: &Path, page: &Path, fragment: &str) -> Rendered {
    render_with(browser, page, fragment, &[])
}

fn render_with(browser: &Path, page: &Path, fragment: &str, extra: &[&str]) -> Rendered {
    let dir = tempfile::tempdir().unwrap();
    let (dom_path, log_path) = (dir.path().join("dom.html"), dir.path().join("log.txt"));
    let url = format!("file://{}{fragment}", page.display());
    let mut cmd = Command::new(browser);
    cmd.args([
        "--headless",
        "--disable-gpu",
        "--no-sandbox",
        "--no-first-run",
        "--enable-logging=stderr",
        "--v=0",
    ])
    .arg(format!("--user-data-dir={}", dir.path().join("profile").display()))
    .args(["--window-size=1400,800"])
    .args(extra)
    .args(["--dump-dom", &url])
    .stdin(Stdio::null())
    .stdout(std::fs::File::create(&dom_path).unwrap())
    .stderr(std::fs::File::create(&log_path).unwrap());
    // Its own process group, so a hung browser goes with all its children.
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {}: {e}", browser.display()));
    // Measured only, to bound the test.
    #[allow(clippy::disallowed_methods)]
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if started.elapsed() > Duration::from_secs(30) {
            let _ = Command::new("kill").args(["-KILL", "--", &format!("-{}", child.id())]).status();
            let _ = child.kill();
            let _ = child.wait();
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            panic!("{} did not finish with {url} within 30 s; its log:\n{log}", browser.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let dom = std::fs::read_to_string(&dom_path).unwrap();
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    assert!(status.success(), "{} exited {status} on {url}; its log:\n{log}", browser.display());
    assert!(dom.contains("</html>"), "no DOM dumped for {url}; log:\n{log}");
    Rendered { dom, log }
}

/// The value of `attr` on the element with `id` in a dumped DOM.
fn attr(dom: &str, id: &str, attr: &str) -> Option<String> {
    let at = dom.find(&format!("id=\"{id}\""))?;
    let start = dom[..at].rfind('<')?;
    let end = at + dom[at..].find('>')?;
    let tag = &dom[start..end];
    let from = tag.find(&format!(" {attr}=\""))? + attr.len() + 3;
    Some(tag[from..from + tag[from..].find('"')?].to_string())
}

fn number(dom: &str, name: &str) -> u64 {
    attr(dom, "view", name).and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("#view has no {name}"))
}

/// No JavaScript error: none caught by the page (into `#errors`), none in
/// Chromium's console log.
fn no_script_errors(r: &Rendered, what: &str) {
    let errors = r.dom.find("<pre id=\"errors\"").map(|at| &r.dom[at..]).unwrap_or("");
    let body = &errors[errors.find('>').map_or(0, |i| i + 1)..];
    assert!(body.starts_with("</pre>"), "{what}: the page caught errors: {}", &body[..body.len().min(2000)]);
    assert!(!r.dom.contains("data-js-errors=\""), "{what}: the page counted JavaScript errors");
    let uncaught: Vec<&str> = r.log.lines().filter(|l| l.contains("Uncaught")).collect();
    assert!(uncaught.is_empty(), "{what}: JavaScript errors in Chromium's log:\n{}", uncaught.join("\n"));
}

fn write_page(dir: &Path, name: &str, t: &Timeline) -> PathBuf {
    let p = dir.join(name);
    kvsim::html::write(&p, t).unwrap();
    p
}

#[test]
fn chromium_draws_the_failover() {
    let Some(browser) = browser() else { return };
    let dir = tempfile::tempdir().unwrap();
    let page = write_page(dir.path(), "failover.html", &timeline("failover.toml", 42));

    // The whole run, as the page opens.
    let r = render(&browser, &page, "");
    no_script_errors(&r, "failover, whole run");
    let dom = &r.dom;
    assert_eq!(attr(dom, "view", "data-ready").as_deref(), Some("1"), "the script did not finish");
    assert_eq!(number(dom, "data-rendered-lanes"), 10, "3 replicas, the balancer, 6 clients");
    assert!(dom.matches("class=\"lane\"").count() == 10);
    for lane in ["r1", "r2", "r3", "lb", "c1", "c6"] {
        assert!(dom.contains(&format!("data-lane=\"{lane}\"")), "no lane {lane}");
    }
    assert!(number(dom, "data-rendered-arrows") > 500, "arrows drawn one by one");
    assert!(dom.contains("class=\"arrow delivered"), "a delivered message's arrow");
    assert!(number(dom, "data-rendered-crosses") > 0, "messages lost to the crash end in a cross");
    assert_eq!(number(dom, "data-rendered-ops"), 350, "an operation bar each");
    assert!(dom.contains("class=\"op ok\""));
    // Failover: r1 leads e1, is down, r2 leads e2.
    assert_eq!(attr(dom, "view", "data-leader-epochs").as_deref(), Some("1 2"));
    assert!(dom.contains("class=\"band role-leader\""));
    assert!(dom.contains("class=\"band role-down\""), "r1 down between crash and restart");
    assert!(dom.contains("class=\"mark kind-crash\"") && dom.contains("class=\"mark kind-restart\""));
    assert_eq!(attr(dom, "view", "data-mode").as_deref(), Some("detail"));

    // Around the failover, chatter shown: fewer messages in view, all drawn.
    let r = render(&browser, &page, "#t=1150,1175&chatter=1");
    no_script_errors(&r, "failover, zoomed");
    assert_eq!(attr(&r.dom, "view", "data-window").as_deref(), Some("1150000,1175000"));
    let visible = number(&r.dom, "data-rendered-visible-messages");
    assert!(visible > 20 && number(&r.dom, "data-rendered-arrows") == visible, "{visible}");
    assert!(r.dom.contains("data-kind=\"Prepare\"") && r.dom.contains("data-kind=\"Promise\""));
}

/// A page with a linearizability violation marks it and its operations;
/// one with markup in keys and values shows it as text.
#[test]
fn chromium_marks_violations_and_escapes_text() {
    let Some(browser) = browser() else { return };
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(scenario("stale-reads.toml")).unwrap();
    let sc = parse(&format!("{text}\n[bugs]\nleader_reads_anywhere = true\n"), "bad.toml", "bad").unwrap();
    let t = run_with_timeline(&sc, 1, TraceLevel::None, "bad.toml").timeline.unwrap();
    let page = write_page(dir.path(), "bad.html", &t);
    let r = render(&browser, &page, "");
    no_script_errors(&r, "linearizability violation");
    assert!(number(&r.dom, "data-rendered-violations") >= 1);
    assert!(r.dom.contains("class=\"violation\""));
    assert!(r.dom.contains(" culprit\""), "the operation that could not be placed is highlighted");
    assert!(r.dom.contains(" involved"), "so are the others on its key");

    let nasty = parse(
        r#"
[workload]
duration_ms = 300
[[workload.groups]]
clients = 1
script = ["set </script><!--k=<b id=\"injected\">v</b> & \"'", "get </script><!--k"]
"#,
        "nasty.toml",
        "<i id=\"name\">nasty</i>",
    )
    .unwrap();
    let t = run_with_timeline(&nasty, 1, TraceLevel::None, "nasty.toml").timeline.unwrap();
    let html = kvsim::html::page(&t);
    assert_eq!(html.matches("</script>").count(), 2, "only the page's own script blocks end");
    let page = dir.path().join("nasty.html");
    std::fs::write(&page, html).unwrap();
    let r = render(&browser, &page, "");
    no_script_errors(&r, "markup in keys and values");
    assert!(
        !r.dom.contains("<b id=\"injected\"") && !r.dom.contains("<i id="),
        "markup from the run became elements"
    );
    assert_eq!(number(&r.dom, "data-rendered-ops"), 2);
    assert!(r.dom.contains("&lt;i id=\"name\"&gt;nasty&lt;/i&gt;"), "the name shows as text");
}

/// The test's own check: a page script error is seen in Chromium's log.
#[test]
fn chromium_reports_a_script_error() {
    let Some(browser) = browser() else { return };
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("broken.html");
    std::fs::write(
        &page,
        "<!DOCTYPE html><html><body><pre id=\"errors\"></pre><script>nope();</script></body></html>",
    )
    .unwrap();
    let r = render(&browser, &page, "");
    assert!(r.log.contains("Uncaught ReferenceError: nope is not defined"), "log:\n{}", r.log);
}

/// Wheel, drag, a click on an arrow and the chatter box, as a person would
/// use them (events dispatched by a script appended to the page).
#[test]
fn chromium_zooms_pans_selects_and_filters() {
    let Some(browser) = browser() else { return };
    let dir = tempfile::tempdir().unwrap();
    let html = kvsim::html::page(&timeline("failover.toml", 42));
    let script = r#"<script>
(function () {
  var view = document.getElementById('view');
  var log = [];
  function note(what) { log.push(what + '=' + view.getAttribute('data-window') + '/' + view.getAttribute('data-rendered-visible-messages')); }
  note('start');
  var r = view.getBoundingClientRect();
  view.dispatchEvent(new WheelEvent('wheel', { deltaY: -100, clientX: r.left + 500, clientY: r.top + 100, bubbles: true, cancelable: true }));
  setTimeout(function () {
    note('wheel');
    view.dispatchEvent(new MouseEvent('mousedown', { button: 0, clientX: 700, clientY: 150, bubbles: true }));
    window.dispatchEvent(new MouseEvent('mousemove', { clientX: 600, clientY: 150, bubbles: true }));
    window.dispatchEvent(new MouseEvent('mouseup', { clientX: 600, clientY: 150, bubbles: true }));
    setTimeout(function () {
      note('drag');
      var arrow = document.querySelector('line.arrow');
      arrow.dispatchEvent(new MouseEvent('mousedown', { button: 0, clientX: 10, clientY: 10, bubbles: true }));
      arrow.dispatchEvent(new MouseEvent('mouseup', { clientX: 10, clientY: 10, bubbles: true }));
      document.getElementById('hide-chatter').click();
      setTimeout(function () {
        note('chatter');
        document.getElementById('reset').click();
        setTimeout(function () {
          note('reset');
          document.body.setAttribute('data-test-log', log.join(' '));
          document.body.setAttribute('data-test-mode', view.getAttribute('data-mode') + '/' +
            view.getAttribute('data-rendered-agg') + '/' + view.getAttribute('data-rendered-arrows'));
        }, 200);
      }, 200);
    }, 200);
  }, 200);
})();
</script>
</body>"#;
    let page = dir.path().join("interact.html");
    std::fs::write(&page, html.replace("</body>", script)).unwrap();
    let r = render_with(&browser, &page, "", &["--virtual-time-budget=5000"]);
    no_script_errors(&r, "interaction");
    let body = &r.dom[r.dom.find("<body").unwrap()..];
    let body = &body[..body.find('>').unwrap()];
    let log = body
        .split_once("data-test-log=\"")
        .map(|(_, rest)| rest[..rest.find('"').unwrap()].to_string())
        .unwrap_or_default();
    let steps: BTreeMap<&str, (f64, f64, u64)> = log
        .split(' ')
        .filter_map(|s| {
            let (name, rest) = s.split_once('=')?;
            let (w, n) = rest.split_once('/')?;
            let (a, b) = w.split_once(',')?;
            Some((name, (a.parse().ok()?, b.parse().ok()?, n.parse().ok()?)))
        })
        .collect();
    assert_eq!(steps.len(), 5, "every step ran: {log:?}\n{}", r.log);
    let (start, wheel, drag, chatter, reset) =
        (steps["start"], steps["wheel"], steps["drag"], steps["chatter"], steps["reset"]);
    assert_eq!((start.0, start.1), (0.0, 4_500_000.0));
    assert!(wheel.1 - wheel.0 < start.1 - start.0, "the wheel zoomed in: {log}");
    assert!(wheel.2 < start.2, "fewer messages in view: {log}");
    assert!(
        (drag.1 - drag.0 - (wheel.1 - wheel.0)).abs() < 1.0 && drag.0 > wheel.0,
        "dragging left moved later: {log}"
    );
    assert!(chatter.2 > drag.2, "showing chatter shows more messages: {log}");
    assert_eq!((reset.0, reset.1), (0.0, 4_500_000.0), "{log}");
    // The whole run with chatter: 3,623 messages, over the 3,000 drawn one
    // by one, so they are counted per column instead.
    assert_eq!(reset.2, 3623, "{log}");
    let mode = body
        .split_once("data-test-mode=\"")
        .map(|(_, rest)| rest[..rest.find('"').unwrap()].to_string())
        .unwrap_or_default();
    let mode: Vec<&str> = mode.split('/').collect();
    assert_eq!(mode[0], "aggregate", "{mode:?}");
    assert!(mode[1].parse::<u64>().unwrap() > 0 && mode[2] == "0", "columns, not arrows: {mode:?}");
    let detail = r.dom.find("<div id=\"detail\">").map(|i| &r.dom[i..]).unwrap();
    assert!(
        detail[..detail.find("</div>").unwrap()].contains("ms "),
        "a click shows the trace line: {detail:.300}"
    );
}

/// Partitions become periods with the links they cut; disk faults and
/// recoveries become marks on the replica's lane.
#[test]
fn partitions_and_disk_faults_are_recorded() {
    let t = timeline("partition-leader.toml", 42);
    assert_eq!(t.partitions.len(), 1, "{:?}", t.partitions);
    let p = &t.partitions[0];
    assert_eq!((p.from, p.to), (1_000_000, 2_200_000));
    let r1 = t.lanes.iter().position(|l| l.name == "r1").unwrap();
    assert!(p.links.iter().any(|l| l.0 == r1) && p.links.iter().any(|l| l.1 == r1));
    assert!(t.marks.iter().any(|m| m.kind == "partition" && m.t == 1_000_000 && m.lane.is_none()));
    assert!(t.marks.iter().any(|m| m.kind == "heal" && m.t == 2_200_000));
    assert!(t.messages.iter().any(|m| m.fate == "partitioned" && (m.from == r1 || m.to == r1)));

    let t = timeline("corrupt-follower.toml", 42);
    let lane = |i: Option<usize>| i.map(|i| t.lanes[i].name.as_str());
    let corrupt = t.marks.iter().find(|m| m.kind == "corrupt").expect("the flipped byte");
    assert!(lane(corrupt.lane).is_some_and(|n| n.starts_with('r')));
    assert!(t.marks.iter().any(|m| m.kind == "recovery" && m.lane == corrupt.lane), "{:?}", t.marks);
}
