//! `kvsim`: run scenarios, sweep seeds, measure the simulator's speed.
//!
//! Exit codes, for `run` and `sweep` alike: 0 every invariant holds (every
//! seed, for `sweep`), 1 a violation (or, in a sweep, a seed that panicked),
//! 2 usage or scenario error, 3 no violation but some check inconclusive (it
//! ran out of its budget undecided; see `check_lin::LinBudget`).

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use kvsim::{run, summary_text, Scenario, Summary, TraceLevel};
use std::cell::{Cell, RefCell};
use std::ops::RangeInclusive;
use std::panic::{self, AssertUnwindSafe, PanicHookInfo};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

type PanicHook = Box<dyn Fn(&PanicHookInfo<'_>) + Sync + Send + 'static>;

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
}

#[derive(Clone, Copy, ValueEnum)]
enum Trace {
    None,
    Ops,
    Messages,
    All,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Run { file, seed, json, trace } => {
            let sc = match load(&file) {
                Ok(s) => s,
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
            let out = run(&sc, seed, level);
            if json {
                println!("{}", serde_json::to_string_pretty(&out.summary).expect("summary serializes"));
            } else {
                print!("{}", out.trace);
                print!("{}", summary_text(&out.summary, &file.display().to_string()));
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
                |line| bar.suspend(|| println!("{line}")),
                |tally| {
                    bar.set_message(format!("{} failed, {} inconclusive", tally.failed, tally.inconclusive));
                    bar.inc(1);
                },
            );
            bar.finish_and_clear();
            println!("{tally}");
            tally.exit_code()
        }
        Cmd::Bench { json } => {
            let report = kvsim::bench::run_all();
            if json {
                println!("{}", serde_json::to_string_pretty(&report).expect("serializes"));
            } else {
                print!("{}", kvsim::bench::text(&report));
            }
            ExitCode::SUCCESS
        }
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

thread_local! {
    /// Whether this thread is running a seed of a sweep: its panics are
    /// recorded quietly, not printed.
    static IN_SEED: Cell<bool> = const { Cell::new(false) };
    /// Where and why the last panic of a seed on this thread happened, as
    /// the sweep's quiet panic hook recorded it.
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Runs every scenario with every seed in `seeds`, one at a time. Each
/// failure is reported through `print` the moment it happens, as the exact
/// command that reproduces it and the first violation (or the panic). A seed
/// that panics is caught and counted as failed; while a seed runs, the panic
/// hook, which would print a backtrace per seed, only records where the
/// panic happened, for the failure line (any other panic, say in `print`,
/// is still shown as usual). `progress` sees the tally after every run.
fn sweep<S>(
    scenarios: &[(String, S)],
    seeds: RangeInclusive<u64>,
    mut run_one: impl FnMut(&S, u64) -> SeedResult,
    mut print: impl FnMut(&str),
    mut progress: impl FnMut(&Tally),
) -> Tally {
    let previous_hook: Arc<PanicHook> = panic::take_hook().into();
    let otherwise = Arc::clone(&previous_hook);
    panic::set_hook(Box::new(move |info| {
        if !IN_SEED.get() {
            return otherwise(info);
        }
        let message = panic_message(info.payload());
        let at = info.location().map(|l| format!(" at {}:{}:{}", l.file(), l.line(), l.column()));
        LAST_PANIC.set(Some(format!("panicked{}: {message}", at.unwrap_or_default())));
    }));
    let mut tally = Tally::default();
    for (path, sc) in scenarios {
        for seed in seeds.clone() {
            IN_SEED.set(true);
            let result = panic::catch_unwind(AssertUnwindSafe(|| run_one(sc, seed)));
            IN_SEED.set(false);
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
                Err(payload) => {
                    tally.failed += 1;
                    tally.panicked += 1;
                    let why = LAST_PANIC
                        .take()
                        .unwrap_or_else(|| format!("panicked: {}", panic_message(payload.as_ref())));
                    print(&format!("FAIL {reproduce}   # {}", indent(&why)));
                }
            }
            progress(&tally);
        }
    }
    panic::set_hook(Box::new(move |info| previous_hook(info)));
    tally
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(a panic without a message)".to_owned()
    }
}

/// Indents the lines after the first, so a long account stays with its
/// failure line.
fn indent(text: &str) -> String {
    text.replace('\n', "\n    ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_sweep(
        scenarios: &[(String, u64)],
        seeds: RangeInclusive<u64>,
        run_one: impl FnMut(&u64, u64) -> SeedResult,
    ) -> (Tally, Vec<String>, Vec<u64>) {
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
