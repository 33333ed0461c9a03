//! `kvsim`: run scenarios, sweep seeds, measure the simulator's speed.
//! Exit codes: 0 every invariant holds, 1 a violation, 2 usage or scenario error.

use clap::{Parser, Subcommand, ValueEnum};
use kvsim::{run, summary_text, Scenario, TraceLevel};
use std::path::PathBuf;
use std::process::ExitCode;

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
    /// Run scenarios over a range of seeds; report any seed that fails.
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
            if out.summary.violations.is_empty() {
                ExitCode::SUCCESS
            } else {
                if json {
                    eprintln!("reproduce: kvsim run {} --seed {seed}", file.display());
                }
                ExitCode::from(1)
            }
        }
        Cmd::Sweep { files, from, to } => {
            let mut scenarios = Vec::new();
            for f in &files {
                match load(f) {
                    Ok(s) => scenarios.push((f.display().to_string(), s)),
                    Err(code) => return code,
                }
            }
            let total = scenarios.len() as u64 * (to.saturating_sub(from) + 1);
            let mut done = 0u64;
            let mut failed = Vec::new();
            for (path, sc) in &scenarios {
                for seed in from..=to {
                    let out = run(sc, seed, TraceLevel::None);
                    done += 1;
                    if !out.summary.violations.is_empty() {
                        failed.push(format!(
                            "kvsim run {path} --seed {seed}   # {}",
                            out.summary.violations[0]
                        ));
                    }
                    eprint!("\r[{:<30}] {done}/{total} runs, {} failed", bar(done, total, 30), failed.len());
                }
            }
            eprintln!();
            for f in &failed {
                println!("FAIL {f}");
            }
            println!("{} runs, {} failed", total, failed.len());
            if failed.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
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
        ExitCode::from(2)
    })
}

fn bar(done: u64, total: u64, width: u64) -> String {
    "#".repeat((done * width / total.max(1)) as usize)
}
