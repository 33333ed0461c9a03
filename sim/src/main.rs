//! `kvsim`: run scenarios, sweep seeds, fuzz (swarm testing), shrink a
//! failure to a small scenario file, check determinism, measure the
//! simulator's speed.
//!
//! Exit codes, for `run` and `sweep` alike: 0 every invariant holds (every
//! seed, for `sweep`), 1 a violation (or, in a sweep, a seed that panicked),
//! 2 usage or scenario error, 3 no violation but some check inconclusive (it
//! ran out of its budget undecided; see `check_lin::LinBudget`). `fuzz`
//! exits 0 only if every seed passed, 1 otherwise (a panic, an inconclusive
//! check or a run out of its event budget is a failure there);
//! `check-determinism` 0 when the runs match and reversing ties broke
//! nothing, 1 otherwise; `shrink` 0 once it wrote a file, 2 if the run
//! given does not fail.

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use kvsim::fuzz::{self, catching, Profile, QuietPanics, SeedReport, Verdict};
use kvsim::{run, summary_text, Scenario, Summary, TraceLevel};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// A violation.
const EXIT_VIOLATION: u8 = 1;
/// Usage or scenario error (clap's usage errors exit with 2 as well).
const EXIT_USAGE: u8 = 2;
/// No violation, but a check could not decide.
const EXIT_INCONCLUSIVE: u8 = 3;

/// The simulator allocates a little for almost every message (keys and
/// values travel as owned strings); mimalloc makes that markedly cheaper
/// than the system allocator (see `kvsim bench`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "kvsim", version, about = "Deterministic simulator for kvstore")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run one scenario with one seed: a trace, then a summary.
    Run {
        /// Scenario file (TOML), e.g. scenarios/failover.toml
        file: PathBuf,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Print only a JSON summary object.
        #[arg(long)]
        json: bool,
        /// How much of the run to show.
        #[arg(long, value_enum, default_value_t = Trace::Messages)]
        trace: Trace,
        /// Also write the run as one self-contained HTML page: a lane per
        /// node, messages as arrows, faults, roles and client operations.
        #[arg(long, value_name = "OUT.html")]
        html: Option<PathBuf>,
    },
    /// Run scenarios over a range of seeds; print each seed that fails (or
    /// panics, or is inconclusive) as it happens, with the command that
    /// reproduces it.
    Sweep {
        /// Scenario files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// First seed.
        #[arg(long, default_value_t = 1)]
        from: u64,
        /// Last seed (inclusive).
        #[arg(long, default_value_t = 200)]
        to: u64,
    },
    /// Measure simulated events per second and speed-up over real time.
    Bench {
        #[arg(long)]
        json: bool,
    },
    /// Swarm testing: every seed draws its own scenario (which faults are
    /// on, and how hard), runs it and checks it. Each failure is printed as
    /// it happens, and its scenario written to OUT/seed-N.toml.
    Fuzz {
        /// Seeds, inclusive: `1..2000`, `7..7` or `7`.
        #[arg(long, default_value = "1..100", value_parser = parse_seeds)]
        seeds: RangeInclusive<u64>,
        /// Threads; each seed runs on one, start to end.
        #[arg(long, default_value_t = 1)]
        jobs: usize,
        /// A TOML file overriding the generator's ranges (see README).
        #[arg(long)]
        profile: Option<PathBuf>,
        /// Plant a bug (a `[bugs]` name, or `unsafe_failover`); repeatable.
        #[arg(long)]
        bug: Vec<String>,
        /// Print only a JSON object listing the failures.
        #[arg(long)]
        json: bool,
        /// Then shrink every failure (OUT/seed-N.shrunk.toml).
        #[arg(long)]
        shrink: bool,
        /// Where failing scenarios are written.
        #[arg(long, default_value = "fuzz-failures")]
        out: PathBuf,
        /// Runs per shrink, at most.
        #[arg(long, default_value_t = 400)]
        max_runs: usize,
        /// Write every seed's scenario to OUT, not only the failing ones'.
        #[arg(long)]
        write_all: bool,
    },
    /// Reduce a failing run (a scenario file, or a fuzz seed) to a small
    /// scenario that still fails the same way, with the same seed; write it
    /// as a commented scenario file.
    Shrink {
        /// The failing scenario; without it, the scenario `fuzz` draws for
        /// the seed (with --profile and --bug as given to fuzz).
        file: Option<PathBuf>,
        /// The seed the run fails with (kept: the result and this seed
        /// reproduce it together).
        #[arg(long)]
        seed: u64,
        /// The fuzz profile, when shrinking a fuzz seed without a file.
        #[arg(long)]
        profile: Option<PathBuf>,
        /// Plant a bug, as `fuzz --bug` (in FILE too); repeatable.
        #[arg(long)]
        bug: Vec<String>,
        /// Where to write the result (default: beside FILE as
        /// NAME.shrunk.toml, or fuzz-failures/seed-N.shrunk.toml).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Runs, at most.
        #[arg(long, default_value_t = 400)]
        max_runs: usize,
        /// Also write the shrunk scenario's run as an HTML page (see `run
        /// --html`).
        #[arg(long, value_name = "OUT.html")]
        html: Option<PathBuf>,
    },
    /// Run a scenario twice with one seed and compare the traces event by
    /// event; then once with the event queue's ties reversed, which may
    /// change the trace but must not break an invariant.
    CheckDeterminism {
        file: PathBuf,
        #[arg(long, default_value_t = 42)]
        seed: u64,
    },
    /// Replay a real cluster's recording (`kvnode ... --record DIR`): feed
    /// each node's recorded inputs to the same machine and check it does
    /// what it did for real; then check the client operations the balancer
    /// saw. Exit 1 on a divergence or a violation, 2 on a bad recording.
    Replay {
        /// The recording directory (holding lb, r1, r2, ...).
        dir: PathBuf,
        /// Also write the recording as a scenario file (its faults and
        /// workload, inferred), for `kvsim run OUT --seed N`.
        #[arg(long, value_name = "OUT.toml")]
        as_scenario: Option<PathBuf>,
        /// Also write the replay as a self-contained space-time page (as
        /// `kvsim run --html`): messages matched send to receive, lives,
        /// role bands, the operations as the balancer saw them.
        #[arg(long, value_name = "OUT.html")]
        html: Option<PathBuf>,
    },
    /// Model-check the real machines: every interleaving of a small
    /// cluster's inputs within bounds, breadth first (a violation's path is
    /// a shortest one). Exit 1 on a violation, 3 if stopped at --max-states.
    Model {
        /// The bounds: election, workload, write-faults, writes-faults, bug-a.
        #[arg(default_value = "election")]
        preset: String,
        /// Explore paths up to this many actions (default: the preset's).
        #[arg(long)]
        depth: Option<usize>,
        /// Stop after this many distinct states (default: the preset's).
        #[arg(long)]
        max_states: Option<u64>,
        /// Plant a bug in the machines (a `[bugs]` name); repeatable.
        #[arg(long)]
        bug: Vec<String>,
    },
}

/// `A..B` (inclusive), `A..=B` or `N`.
fn parse_seeds(s: &str) -> Result<RangeInclusive<u64>, String> {
    let num = |x: &str| x.trim().parse::<u64>().map_err(|e| format!("`{x}`: {e}"));
    let (a, b) = match s.split_once("..") {
        Some((a, b)) => (num(a)?, num(b.strip_prefix('=').unwrap_or(b))?),
        None => (num(s)?, num(s)?),
    };
    if a > b {
        return Err(format!("{a} is after {b}: no seed to run"));
    }
    Ok(a..=b)
}

#[derive(Clone, Copy, ValueEnum)]
enum Trace {
    None,
    Ops,
    Messages,
    All,
}

/// `println!` that treats a closed stdout (`kvsim run ... | head`) as the
/// reader being done: exit 0 at once, no panic.
macro_rules! outln {
    () => { write_stdout(format_args!("\n")) };
    ($($t:tt)*) => { write_stdout(format_args!("{}\n", format_args!($($t)*))) };
}

/// `print!`, the same way.
macro_rules! out {
    ($($t:tt)*) => { write_stdout(format_args!($($t)*)) };
}

fn write_stdout(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout.write_fmt(args).and_then(|()| stdout.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: cannot write to stdout: {e}");
        std::process::exit(1);
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Run { file, seed, json, trace, html } => {
            let sc = match load(&file) {
                Ok(s) => s,
                Err(code) => return code,
            };
            let page = match html.as_deref().map(HtmlOut::create).transpose() {
                Ok(p) => p,
                Err(code) => return code,
            };
            let level = if json {
                TraceLevel::None
            } else {
                match trace {
                    Trace::None => TraceLevel::None,
                    Trace::Ops => TraceLevel::Ops,
                    Trace::Messages => TraceLevel::Messages,
                    Trace::All => TraceLevel::All,
                }
            };
            let out = match &page {
                Some(_) => kvsim::run_with_timeline(&sc, seed, level, &file.display().to_string()),
                None => run(&sc, seed, level),
            };
            if let (Some(page), Some(t)) = (page, &out.timeline) {
                if let Err(code) = page.write(t) {
                    return code;
                }
            }
            if json {
                outln!("{}", serde_json::to_string_pretty(&out.summary).expect("summary serializes"));
            } else {
                out!("{}", out.trace);
                out!("{}", summary_text(&out.summary, &file.display().to_string()));
            }
            let code = exit_code(&out.summary);
            if json && code != ExitCode::SUCCESS {
                eprintln!("reproduce: kvsim run {} --seed {seed}", file.display());
            }
            code
        }
        Cmd::Sweep { files, from, to } => {
            if from > to {
                let mut cli = Cli::command();
                cli.build();
                let sweep = cli.find_subcommand_mut("sweep").expect("the sweep subcommand exists");
                let why = format!("--from {from} is after --to {to}: no seed to run");
                sweep.error(clap::error::ErrorKind::InvalidValue, why).exit();
            }
            let mut scenarios = Vec::new();
            for f in &files {
                match load(f) {
                    Ok(s) => scenarios.push((f.display().to_string(), s)),
                    Err(code) => return code,
                }
            }
            let total = (scenarios.len() as u64).saturating_mul((to - from).saturating_add(1));
            let bar = ProgressBar::new(total);
            bar.set_style(
                ProgressStyle::with_template("[{bar:30}] {pos}/{len} runs, {msg} ({elapsed})")
                    .expect("a valid template")
                    .progress_chars("#>-"),
            );
            let tally = sweep(
                &scenarios,
                from..=to,
                |sc, seed| judge(&run(sc, seed, TraceLevel::None).summary),
                |line| bar.suspend(|| outln!("{line}")),
                |tally| {
                    bar.set_message(format!("{} failed, {} inconclusive", tally.failed, tally.inconclusive));
                    bar.inc(1);
                },
            );
            bar.finish_and_clear();
            outln!("{tally}");
            tally.exit_code()
        }
        Cmd::Bench { json } => {
            let report = kvsim::bench::run_all();
            if json {
                outln!("{}", serde_json::to_string_pretty(&report).expect("serializes"));
            } else {
                out!("{}", kvsim::bench::text(&report));
            }
            ExitCode::SUCCESS
        }
        Cmd::Fuzz { seeds, jobs, profile, bug, json, shrink, out, max_runs, write_all } => {
            let (profile, profile_args) = match load_profile(profile.as_deref(), &bug) {
                Ok(p) => p,
                Err(code) => return code,
            };
            let opts = FuzzOpts { jobs, json, shrink, write_all, max_runs };
            fuzz_cmd(seeds, &profile, &profile_args, &out, opts)
        }
        Cmd::Shrink { file, seed, profile, bug, out, max_runs, html } => {
            let page = match html.as_deref().map(HtmlOut::create).transpose() {
                Ok(p) => p,
                Err(code) => return code,
            };
            let (sc, origin, default_out) = match &file {
                Some(f) => match load(f) {
                    Ok(mut sc) => {
                        for b in &bug {
                            if let Err(e) = plant(&mut sc, b) {
                                eprintln!("error: {e}");
                                return ExitCode::from(EXIT_USAGE);
                            }
                        }
                        let stem =
                            f.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
                        (sc, f.display().to_string(), f.with_file_name(format!("{stem}.shrunk.toml")))
                    }
                    Err(code) => return code,
                },
                None => {
                    let (p, args) = match load_profile(profile.as_deref(), &bug) {
                        Ok(p) => p,
                        Err(code) => return code,
                    };
                    let origin = format!("`kvsim fuzz --seeds {seed}..{seed}{args}`");
                    (
                        fuzz::generate(seed, &p),
                        origin,
                        PathBuf::from(format!("fuzz-failures/seed-{seed}.shrunk.toml")),
                    )
                }
            };
            let out = out.unwrap_or(default_out);
            let _quiet = QuietPanics::install();
            let (verdict, _) = fuzz::check(&sc, seed);
            if verdict.passed() {
                eprintln!("error: {origin} passes with seed {seed}: nothing to shrink");
                return ExitCode::from(EXIT_USAGE);
            }
            eprintln!(
                "shrinking a failure of kind `{}`: {}",
                verdict.kind().unwrap_or("?"),
                brief(&verdict.first())
            );
            let shrunk = kvsim::shrink::shrink(&sc, seed, &verdict, max_runs, |what, runs| {
                eprintln!("  run {runs:>4}: kept: {what}");
            });
            match write_shrunk(&shrunk, seed, &origin, &sc, &out) {
                Ok(()) => {
                    outln!(
                        "{} faults -> {}, in {} runs; wrote {}\nreproduce: kvsim run {} --seed {seed}",
                        sc.faults.len(),
                        shrunk.scenario.faults.len(),
                        shrunk.runs,
                        out.display(),
                        out.display()
                    );
                    if let Some(page) = page {
                        let path = out.display().to_string();
                        let run = kvsim::run_with_timeline(&shrunk.scenario, seed, TraceLevel::None, &path);
                        if let Some(t) = &run.timeline {
                            if let Err(code) = page.write(t) {
                                return code;
                            }
                        }
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {}: {e}", out.display());
                    ExitCode::from(EXIT_USAGE)
                }
            }
        }
        Cmd::Model { preset, depth, max_states, bug } => model(&preset, depth, max_states, &bug),
        Cmd::Replay { dir, as_scenario, html } => replay_cmd(&dir, as_scenario.as_deref(), html.as_deref()),
        Cmd::CheckDeterminism { file, seed } => {
            let sc = match load(&file) {
                Ok(s) => s,
                Err(code) => return code,
            };
            let _quiet = QuietPanics::install();
            let d = fuzz::check_determinism(&sc, seed);
            let show = |d: &fuzz::TraceDiff| {
                format!(
                    "line {} ({} {}):\n  first:  {}\n  second: {}",
                    d.line,
                    d.time,
                    d.node,
                    d.first.as_deref().unwrap_or("(trace ended)"),
                    d.second.as_deref().unwrap_or("(trace ended)")
                )
            };
            match &d.difference {
                None => outln!("deterministic: two runs with seed {seed} match ({} trace lines)", d.lines),
                Some(diff) => outln!("NOT deterministic: the two runs first differ at {}", show(diff)),
            }
            match &d.reversed_difference {
                None => outln!("ties reversed: the same trace"),
                Some(diff) => outln!(
                    "ties reversed: the trace differs (allowed) from {}",
                    show(diff).replace("first: ", "normal:").replace("second:", "reversed:")
                ),
            }
            if d.reversed_violations.is_empty() {
                outln!("ties reversed: no violation");
            } else {
                let also = if d.violations.is_empty() { "" } else { " (the normal run fails too)" };
                outln!("ties reversed: {} violation(s){also}:", d.reversed_violations.len());
                for v in &d.reversed_violations {
                    outln!("  - {}", indent(v));
                }
            }
            if d.ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EXIT_VIOLATION)
            }
        }
    }
}

/// Plants a bug in a loaded scenario (`unsafe_failover` is a switch of its
/// own).
fn plant(sc: &mut Scenario, bug: &str) -> Result<(), String> {
    if bug == "unsafe_failover" {
        sc.cluster.unsafe_failover = true;
        Ok(())
    } else {
        kvsim::scenario::plant_bug(&mut sc.cluster.bugs, bug)
    }
}

/// The profile, and the arguments that name it in a reproduce command.
fn load_profile(file: Option<&Path>, bugs: &[String]) -> Result<(Profile, String), ExitCode> {
    let mut args = String::new();
    let mut p = match file {
        None => Profile::default(),
        Some(f) => {
            args.push_str(&format!(" --profile {}", f.display()));
            let text = std::fs::read_to_string(f).map_err(|e| {
                eprintln!("error: {}: cannot read: {e}", f.display());
                ExitCode::from(EXIT_USAGE)
            })?;
            Profile::parse(&text).map_err(|e| {
                eprintln!("error: {}: {e}", f.display());
                ExitCode::from(EXIT_USAGE)
            })?
        }
    };
    for b in bugs {
        p.plant(b).map_err(|e| {
            eprintln!("error: --bug: {e}");
            ExitCode::from(EXIT_USAGE)
        })?;
        args.push_str(&format!(" --bug {b}"));
    }
    Ok((p, args))
}

fn write_shrunk(
    shrunk: &kvsim::shrink::Shrunk,
    seed: u64,
    origin: &str,
    original: &Scenario,
    out: &Path,
) -> std::io::Result<()> {
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let text = kvsim::shrink::commented(shrunk, seed, origin, original, &out.display().to_string());
    std::fs::write(out, text)
}

/// One failing seed of a fuzz run, for the report.
struct Failure {
    seed: u64,
    kind: String,
    first: String,
    file: Option<PathBuf>,
    shrunk: Option<(PathBuf, usize)>,
}

struct FuzzOpts {
    jobs: usize,
    json: bool,
    shrink: bool,
    write_all: bool,
    max_runs: usize,
}

fn fuzz_cmd(
    seeds: RangeInclusive<u64>,
    profile: &Profile,
    profile_args: &str,
    out: &Path,
    o: FuzzOpts,
) -> ExitCode {
    let FuzzOpts { jobs, json, shrink, write_all, max_runs } = o;
    let list: Vec<u64> = seeds.clone().collect();
    let bar = if json { ProgressBar::hidden() } else { ProgressBar::new(list.len() as u64) };
    bar.set_style(
        ProgressStyle::with_template("[{bar:30}] {pos}/{len} seeds, {msg} ({elapsed}, {per_sec})")
            .expect("a valid template")
            .progress_chars("#>-"),
    );
    bar.set_message("0 failed");
    let _quiet = QuietPanics::install();
    // Wall time is measured for the report only.
    #[allow(clippy::disallowed_methods)]
    let started = std::time::Instant::now();
    let mut failures: Vec<Failure> = Vec::new();
    let mut failed_scenarios: Vec<(u64, Scenario, Verdict)> = Vec::new();
    let (mut passed, mut panicked, mut inconclusive) = (0u64, 0u64, 0u64);
    let (mut run_ms, mut check_ms, mut events) = (0.0f64, 0.0f64, 0u64);
    fuzz::parallel(
        &list,
        jobs,
        |&seed| fuzz::run_seed(seed, profile),
        |r: SeedReport| {
            run_ms += r.wall_ms;
            check_ms += r.check_wall_ms;
            events += r.events;
            match &r.verdict {
                Verdict::Passed => {
                    passed += 1;
                    if write_all {
                        if let Err(e) = write_failure(out, &r, profile_args) {
                            bar.suspend(|| eprintln!("error: {}: {e}", out.display()));
                        }
                    }
                }
                v => {
                    match v {
                        Verdict::Panicked(_) => panicked += 1,
                        Verdict::Inconclusive { .. } => inconclusive += 1,
                        _ => {}
                    }
                    let file = write_failure(out, &r, profile_args);
                    let kind = v.kind().unwrap_or("?").to_string();
                    let first = v.first();
                    let reproduce = match &file {
                        Ok(f) => format!("kvsim run {} --seed {}", f.display(), r.seed),
                        Err(_) => format!("kvsim fuzz --seeds {}..{}{profile_args}", r.seed, r.seed),
                    };
                    if !json {
                        bar.suspend(|| {
                            outln!("FAIL seed {} [{kind}]: {reproduce}   # {}", r.seed, brief(&first));
                            if let Err(e) = &file {
                                outln!("    (could not write its scenario under {}: {e})", out.display());
                            }
                        });
                    }
                    failures.push(Failure { seed: r.seed, kind, first, file: file.ok(), shrunk: None });
                    failed_scenarios.push((r.seed, r.scenario.clone(), r.verdict.clone()));
                    bar.set_message(format!("{} failed", failures.len()));
                }
            }
            bar.inc(1);
        },
    );
    bar.finish_and_clear();
    let wall_s = started.elapsed().as_secs_f64();
    failures.sort_by_key(|f| f.seed);
    failed_scenarios.sort_by_key(|f| f.0);
    if shrink && !failed_scenarios.is_empty() {
        let shrunk_bar =
            if json { ProgressBar::hidden() } else { ProgressBar::new(failed_scenarios.len() as u64) };
        shrunk_bar.set_style(
            ProgressStyle::with_template("[{bar:30}] {pos}/{len} shrunk ({elapsed})")
                .expect("a valid template")
                .progress_chars("#>-"),
        );
        fuzz::parallel(
            &failed_scenarios,
            jobs,
            |(seed, sc, verdict)| (*seed, kvsim::shrink::shrink(sc, *seed, verdict, max_runs, |_, _| {})),
            |(seed, shrunk)| {
                let f = failures.iter_mut().find(|f| f.seed == seed).expect("a failure per scenario");
                let original = &failed_scenarios.iter().find(|x| x.0 == seed).expect("listed").1;
                let path = out.join(format!("seed-{seed}.shrunk.toml"));
                let origin = f
                    .file
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| format!("`kvsim fuzz --seeds {seed}..{seed}{profile_args}`"));
                match write_shrunk(&shrunk, seed, &origin, original, &path) {
                    Ok(()) => {
                        if !json {
                            shrunk_bar.suspend(|| {
                                outln!(
                                    "SHRUNK seed {seed} [{}]: {} faults -> {}: kvsim run {} --seed {seed}",
                                    shrunk.verdict.kind().unwrap_or("?"),
                                    original.faults.len(),
                                    shrunk.scenario.faults.len(),
                                    path.display()
                                )
                            });
                        }
                        f.shrunk = Some((path, shrunk.scenario.faults.len()));
                    }
                    Err(e) => shrunk_bar.suspend(|| eprintln!("error: {}: {e}", path.display())),
                }
                shrunk_bar.inc(1);
            },
        );
        shrunk_bar.finish_and_clear();
    }
    let runs = list.len() as u64;
    let per_min = runs as f64 / wall_s.max(1e-9) * 60.0;
    let check_share = if run_ms > 0.0 { check_ms / run_ms } else { 0.0 };
    if json {
        let list: Vec<serde_json::Value> = failures
            .iter()
            .map(|f| {
                serde_json::json!({
                    "seed": f.seed,
                    "kind": f.kind,
                    "violation": f.first,
                    "file": f.file.as_ref().map(|p| p.display().to_string()),
                    "reproduce": match &f.file {
                        Some(p) => format!("kvsim run {} --seed {}", p.display(), f.seed),
                        None => format!("kvsim fuzz --seeds {}..{}{profile_args}", f.seed, f.seed),
                    },
                    "shrunk": f.shrunk.as_ref().map(|(p, _)| p.display().to_string()),
                    "shrunk_faults": f.shrunk.as_ref().map(|(_, n)| n),
                })
            })
            .collect();
        let report = serde_json::json!({
            "seeds": { "from": seeds.start(), "to": seeds.end() },
            "runs": runs,
            "passed": passed,
            "failed": failures.len(),
            "panicked": panicked,
            "inconclusive": inconclusive,
            "events": events,
            "wall_s": wall_s,
            "seeds_per_min": per_min,
            "check_share": check_share,
            "failures": list,
        });
        outln!("{}", serde_json::to_string_pretty(&report).expect("serializes"));
    } else {
        let s = if runs == 1 { "" } else { "s" };
        outln!(
            "{runs} seed{s}: {passed} passed, {} failed ({panicked} panicked, {inconclusive} inconclusive); \
             {:.1} s, {per_min:.0} seeds/min, {:.1} M events; checks took {:.1}% of run time",
            failures.len(),
            wall_s,
            events as f64 / 1e6,
            check_share * 100.0
        );
    }
    if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_VIOLATION)
    }
}

/// Writes a failing seed's scenario, with a header saying how it failed;
/// `kvsim run FILE --seed N` replays it exactly.
fn write_failure(out: &Path, r: &SeedReport, profile_args: &str) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(out)?;
    let path = out.join(format!("seed-{}.toml", r.seed));
    let kinds: Vec<&str> = r.kinds.iter().map(|k| k.name()).collect();
    let mut text = format!(
        "# kvsim fuzz seed {seed}{profile_args}: {kind}\n# kinds on: {kinds}\n",
        seed = r.seed,
        kind = r.verdict.kind().unwrap_or("passed"),
        kinds = kinds.join(", "),
    );
    for line in fuzz::shorten(&r.verdict.first()).lines() {
        text.push_str(&format!("#   {line}\n"));
    }
    text.push_str(&format!(
        "# reproduce: kvsim run {} --seed {}   (or: kvsim fuzz --seeds {}..{}{profile_args})\n\n",
        path.display(),
        r.seed,
        r.seed,
        r.seed
    ));
    text.push_str(&r.scenario.to_toml());
    std::fs::write(&path, text)?;
    Ok(path)
}

/// Where `--html` goes: opened before the run, so a path that cannot be
/// written fails at once (exit 2), not after a long run or shrink.
struct HtmlOut {
    path: PathBuf,
    file: std::fs::File,
}

impl HtmlOut {
    fn create(path: &Path) -> Result<HtmlOut, ExitCode> {
        match std::fs::File::create(path) {
            Ok(file) => Ok(HtmlOut { path: path.to_path_buf(), file }),
            Err(e) => {
                eprintln!("error: --html {}: cannot write: {e}", path.display());
                Err(ExitCode::from(EXIT_USAGE))
            }
        }
    }

    fn write(mut self, t: &kvsim::timeline::Timeline) -> Result<(), ExitCode> {
        use std::io::Write;
        let page = kvsim::html::page(t);
        self.file.write_all(page.as_bytes()).and_then(|()| self.file.flush()).map_err(|e| {
            eprintln!("error: --html {}: cannot write: {e}", self.path.display());
            ExitCode::from(EXIT_USAGE)
        })?;
        eprintln!("wrote {} ({} KiB)", self.path.display(), page.len().div_ceil(1024));
        Ok(())
    }
}

fn load(file: &std::path::Path) -> Result<Scenario, ExitCode> {
    kvsim::load(file).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(EXIT_USAGE)
    })
}

/// 0, or 1 for a violation, or 3 when the only trouble is an inconclusive
/// check.
fn exit_code(s: &Summary) -> ExitCode {
    if !s.violations.is_empty() {
        ExitCode::from(EXIT_VIOLATION)
    } else if !s.inconclusive.is_empty() {
        ExitCode::from(EXIT_INCONCLUSIVE)
    } else {
        ExitCode::SUCCESS
    }
}

/// What became of one seed of a sweep.
#[derive(Clone, Debug, PartialEq, Eq)]
enum SeedResult {
    Passed,
    /// The first violation.
    Failed(String),
    /// The first inconclusive check (and no violation).
    Inconclusive(String),
}

fn judge(s: &Summary) -> SeedResult {
    if let Some(v) = s.violations.first() {
        SeedResult::Failed(v.clone())
    } else if let Some(v) = s.inconclusive.first() {
        SeedResult::Inconclusive(v.clone())
    } else {
        SeedResult::Passed
    }
}

/// Counts of a sweep so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Tally {
    runs: u64,
    passed: u64,
    /// Seeds with a violation, or that panicked.
    failed: u64,
    panicked: u64,
    /// Seeds with no violation but an inconclusive check.
    inconclusive: u64,
}

impl Tally {
    /// 0 only if every seed passed.
    fn exit_code(&self) -> ExitCode {
        if self.failed > 0 {
            ExitCode::from(EXIT_VIOLATION)
        } else if self.inconclusive > 0 {
            ExitCode::from(EXIT_INCONCLUSIVE)
        } else {
            ExitCode::SUCCESS
        }
    }
}

impl std::fmt::Display for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = if self.runs == 1 { "" } else { "s" };
        write!(
            f,
            "{} run{s}: {} passed, {} failed ({} panicked), {} inconclusive",
            self.runs, self.passed, self.failed, self.panicked, self.inconclusive
        )
    }
}

/// Runs every scenario with every seed in `seeds`, one at a time. Each
/// failure is reported through `print` the moment it happens, as the exact
/// command that reproduces it and the first violation (or the panic). A seed
/// that panics is caught and counted as failed; while a seed runs, the panic
/// hook, which would print a backtrace per seed, only records where the
/// panic happened, for the failure line (any other panic, say in `print`,
/// is still shown as usual: see `fuzz::QuietPanics`). `progress` sees the
/// tally after every run.
fn sweep<S>(
    scenarios: &[(String, S)],
    seeds: RangeInclusive<u64>,
    mut run_one: impl FnMut(&S, u64) -> SeedResult,
    mut print: impl FnMut(&str),
    mut progress: impl FnMut(&Tally),
) -> Tally {
    let quiet = QuietPanics::install();
    let mut tally = Tally::default();
    for (path, sc) in scenarios {
        for seed in seeds.clone() {
            let result = catching(|| run_one(sc, seed));
            tally.runs += 1;
            let reproduce = format!("kvsim run {path} --seed {seed}");
            match result {
                Ok(SeedResult::Passed) => tally.passed += 1,
                Ok(SeedResult::Failed(v)) => {
                    tally.failed += 1;
                    print(&format!("FAIL {reproduce}   # {}", indent(&v)));
                }
                Ok(SeedResult::Inconclusive(v)) => {
                    tally.inconclusive += 1;
                    print(&format!("INCONCLUSIVE {reproduce}   # {}", indent(&v)));
                }
                Err(why) => {
                    tally.failed += 1;
                    tally.panicked += 1;
                    print(&format!("FAIL {reproduce}   # {}", indent(&why)));
                }
            }
            progress(&tally);
        }
    }
    drop(quiet);
    tally
}

/// Indents the lines after the first, so a long account stays with its
/// failure line.
fn indent(text: &str) -> String {
    text.replace('\n', "\n    ")
}

/// A failure line, shortened: a violation may quote whole 64 KiB values.
fn brief(text: &str) -> String {
    indent(&fuzz::shorten(text))
}

fn replay_cmd(dir: &Path, as_scenario: Option<&Path>, html: Option<&Path>) -> ExitCode {
    if !dir.is_dir() {
        eprintln!("error: {}: not a recording directory (kvnode ... --record DIR makes one)", dir.display());
        return ExitCode::from(EXIT_USAGE);
    }
    let page = match html.map(HtmlOut::create).transpose() {
        Ok(p) => p,
        Err(code) => return code,
    };
    let replayed = match &page {
        Some(_) => kvsim::replay::replay_with_timeline(dir).map(|(r, t)| (r, Some(t))),
        None => kvsim::replay::replay(dir).map(|r| (r, None)),
    };
    let (r, timeline) = match replayed {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    out!("{}", r.text());
    if let (Some(page), Some(t)) = (page, &timeline) {
        if let Err(code) = page.write(t) {
            return code;
        }
    }
    if let Some(path) = as_scenario {
        let sc = r.to_scenario();
        let text = sc.to_toml();
        // What is written must read back as the same scenario.
        if let Err(e) = kvsim::parse(&text, &path.display().to_string(), &sc.name) {
            eprintln!("error: the inferred scenario does not parse back: {e}");
            return ExitCode::from(EXIT_VIOLATION);
        }
        if let Err(e) = std::fs::write(path, text) {
            eprintln!("error: {}: {e}", path.display());
            return ExitCode::from(EXIT_USAGE);
        }
        outln!(
            "wrote {} ({} faults); run it: kvsim run {} --seed 1",
            path.display(),
            sc.faults.len(),
            path.display()
        );
    }
    ExitCode::from(r.exit_status())
}

fn model(preset: &str, depth: Option<usize>, max_states: Option<u64>, bugs: &[String]) -> ExitCode {
    let Some(mut b) = kvsim::model::Bounds::preset(preset) else {
        let names: Vec<&str> = kvsim::model::Bounds::presets().iter().map(|(n, _)| *n).collect();
        eprintln!("error: unknown preset `{preset}` (known: {})", names.join(", "));
        return ExitCode::from(EXIT_USAGE);
    };
    if let Some(d) = depth {
        b.depth = d;
    }
    if let Some(m) = max_states {
        b.max_states = m;
    }
    for name in bugs {
        if let Err(e) = kvsim::scenario::plant_bug(&mut b.cfg.bugs, name) {
            eprintln!("error: --bug: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    }
    b.progress = std::io::IsTerminal::is_terminal(&std::io::stderr());
    outln!("bounds: {b}");
    let r = kvsim::model::check(&b);
    out!("{r}");
    if r.violation.is_some() {
        ExitCode::from(EXIT_VIOLATION)
    } else if r.truncated {
        ExitCode::from(EXIT_INCONCLUSIVE)
    } else {
        ExitCode::SUCCESS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The panic hook is global: two sweeps in parallel tests would put
    /// each other's hook back mid-run (and lose a panic's location).
    static ONE_SWEEP_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

    fn run_sweep(
        scenarios: &[(String, u64)],
        seeds: RangeInclusive<u64>,
        run_one: impl FnMut(&u64, u64) -> SeedResult,
    ) -> (Tally, Vec<String>, Vec<u64>) {
        let _one = ONE_SWEEP_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let mut lines = Vec::new();
        let mut seen = Vec::new();
        let tally = sweep(scenarios, seeds, run_one, |l| lines.push(l.to_owned()), |t| seen.push(t.runs));
        (tally, lines, seen)
    }

    #[test]
    fn a_panicking_seed_is_a_failure_and_the_sweep_goes_on() {
        let scenarios = [("a.toml".to_owned(), 0u64), ("b.toml".to_owned(), 1)];
        let (tally, lines, seen) = run_sweep(&scenarios, 1..=4, |&which, seed| match (which, seed) {
            (0, 2) => panic!("replica r2 fell over"),
            (1, 3) => SeedResult::Failed("acknowledged write lost: c1 #2\nsecond line".into()),
            (1, 4) => SeedResult::Inconclusive("linearizability: key \"k0\" is undecided".into()),
            _ => SeedResult::Passed,
        });
        assert_eq!(tally, Tally { runs: 8, passed: 5, failed: 2, panicked: 1, inconclusive: 1 });
        assert_eq!(seen, (1..=8).collect::<Vec<_>>(), "progress after every run");
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert!(lines[0].starts_with("FAIL kvsim run a.toml --seed 2   # panicked at "), "{lines:?}");
        assert!(lines[0].contains("main.rs") && lines[0].ends_with(": replica r2 fell over"), "{lines:?}");
        assert_eq!(
            lines[1],
            "FAIL kvsim run b.toml --seed 3   # acknowledged write lost: c1 #2\n    second line"
        );
        assert_eq!(
            lines[2],
            "INCONCLUSIVE kvsim run b.toml --seed 4   # linearizability: key \"k0\" is undecided"
        );
        assert_eq!(tally.exit_code(), ExitCode::from(EXIT_VIOLATION));
        assert_eq!(tally.to_string(), "8 runs: 5 passed, 2 failed (1 panicked), 1 inconclusive");
    }

    #[test]
    fn exit_codes_say_what_went_wrong() {
        let all = |r: SeedResult| run_sweep(&[("a.toml".to_owned(), 0)], 1..=2, move |_, _| r.clone()).0;
        assert_eq!(all(SeedResult::Passed).exit_code(), ExitCode::SUCCESS);
        assert_eq!(all(SeedResult::Inconclusive("x".into())).exit_code(), ExitCode::from(EXIT_INCONCLUSIVE));
        assert_eq!(all(SeedResult::Failed("x".into())).exit_code(), ExitCode::from(EXIT_VIOLATION));
    }
}
