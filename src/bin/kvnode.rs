//! `kvnode`: run a replica, the balancer, a client REPL, a whole cluster in
//! one process, or a benchmark, over TCP. Parsing and printing only; the
//! work is in `kvstore::runtime`.

use clap::{Args, Parser, Subcommand};
use kvstore::runtime::bench::{self, BenchOptions, Mix};
use kvstore::runtime::client::SyncClient;
use kvstore::runtime::repl::{self, Outcome};
use kvstore::runtime::store::{MemStore, Store, SyncMode, WalOptions, WalStore, SNAPSHOT_LOG_BYTES_DEFAULT};
use kvstore::runtime::{self, BalancerOptions, Clock, NodeHandle, ReplicaOptions};
use kvstore::types::{ClientId, ReadMode, ReplicaId};
use kvstore::wal::WalError;
use std::io::{self, IsTerminal};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(Parser)]
#[command(name = "kvnode", version, about = "A replicated key-value store over TCP", long_about = None)]
struct Cli {
    /// Log level on stderr: off, error, warn, info, debug or trace.
    #[arg(long, global = true, default_value = "warn", value_name = "LEVEL")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run replica N (listens on 127.0.0.1:808N unless --listen says otherwise).
    ///
    /// The replica learns the cluster (its peers and their addresses) from
    /// the balancer when the balancer connects.
    Replica(ReplicaArgs),
    /// Run the balancer: `kvnode balancer localhost:8080 localhost:8081 localhost:8082 localhost:8083`.
    ///
    /// The first address is where clients connect; then one address per
    /// replica, replica 1 first. The balancer promotes a leader and fails
    /// over by itself.
    Balancer(BalancerArgs),
    /// Talk to the cluster: a REPL reading `set key=value`, `get key`,
    /// `del key`, `help`, `quit` (from a terminal or a pipe), or one command
    /// given on the command line (`kvnode client get KEY`).
    Client(ClientArgs),
    /// Run N replicas and the balancer in this process.
    Cluster(ClusterArgs),
    /// Measure throughput and latency with many concurrent clients.
    Bench(BenchArgs),
}

#[derive(Args)]
struct ReplicaArgs {
    /// Replica number, 1 to 255.
    #[arg(value_parser = clap::value_parser!(u8).range(1..))]
    n: u8,
    /// Address to listen on [default: 127.0.0.1:808N]
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    #[command(flatten)]
    storage: StorageArgs,
}

#[derive(Args)]
struct StorageArgs {
    /// Keep replica N's write-ahead log in DIR/replica-N (several replicas
    /// may share one DIR). Without it the log is in memory only and a
    /// restarted replica starts empty.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Do not fsync the log (faster; survives a process crash, not a power loss).
    #[arg(long, conflicts_with = "sync_every_op", requires = "data_dir")]
    no_fsync: bool,
    /// fsync after every persisted operation instead of once per batch
    /// (no group commit). Slower; for comparing.
    #[arg(long, requires = "data_dir")]
    sync_every_op: bool,
    /// Snapshot the applied state (deleting the log it covers) once this
    /// much log was written since the last snapshot, or the last snapshot's
    /// size if larger. Replica N waits 1 + ((N-1) mod 4)/4 times that, so
    /// replicas do not all pause at once, and a leader 4 times longer still
    /// (a snapshot blocks the replica, ~0.6 s per million keys).
    #[arg(long, default_value_t = SNAPSHOT_LOG_BYTES_DEFAULT, value_name = "BYTES",
          value_parser = clap::value_parser!(u64).range(4096..))]
    snapshot_log_bytes: u64,
}

#[derive(Args)]
struct BalancerArgs {
    /// Where clients connect, e.g. localhost:8080.
    listen: String,
    /// Replica addresses, replica 1 first.
    #[arg(required = true, value_name = "REPLICA")]
    replicas: Vec<String>,
    #[command(flatten)]
    cluster: ClusterConfigArgs,
}

#[derive(Args)]
struct ClusterConfigArgs {
    /// Followers that must have a write on disk before it is acknowledged:
    /// 0 asynchronous, 1 semi-synchronous, N-1 synchronous.
    #[arg(long, default_value_t = 1, value_name = "K")]
    sync_acks: usize,
    /// Promote a leader even when it may lack acknowledged writes.
    #[arg(long)]
    unsafe_failover: bool,
}

#[derive(Args)]
struct ClientArgs {
    /// The balancer's address.
    #[arg(long, default_value = "localhost:8080", value_name = "ADDR")]
    connect: String,
    /// Read consistency: any (round robin, may be stale), session
    /// (read-your-writes) or leader (linearizable). Default: session in the
    /// REPL; leader for a one-shot command, which has no session of its own
    /// to read after (so `get` sees what another process just set).
    #[arg(long, value_name = "MODE")]
    read: Option<ReadMode>,
    /// One command to run instead of the REPL, e.g. `get KEY` or `set KEY=VALUE`.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, value_name = "COMMAND")]
    command: Vec<String>,
}

#[derive(Args)]
struct ClusterArgs {
    /// Number of replicas.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..))]
    replicas: u8,
    /// The balancer listens on this port and replica N on port + N; 0 picks
    /// free ports (the addresses are printed).
    #[arg(long, default_value_t = 8080)]
    base_port: u16,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[command(flatten)]
    storage: StorageArgs,
    #[command(flatten)]
    cluster: ClusterConfigArgs,
}

#[derive(Args)]
struct BenchArgs {
    /// The balancer's address.
    #[arg(long, default_value = "localhost:8080", value_name = "ADDR")]
    connect: String,
    /// Concurrent clients (one connection and one request in flight each).
    #[arg(long, default_value_t = 50)]
    clients: usize,
    /// How long to run: 10, 10s, 500ms, 1m (unless --ops is given).
    #[arg(long, default_value = "10s", value_parser = bench::parse_duration, value_name = "TIME")]
    duration: Duration,
    /// Run this many operations in total instead of for a duration.
    #[arg(long)]
    ops: Option<u64>,
    /// Operation weights, e.g. set:50,get:50 or get:100.
    #[arg(long, default_value = "set:50,get:50")]
    mix: Mix,
    /// Bytes per value written.
    #[arg(long, default_value_t = 100, value_name = "BYTES")]
    value_size: usize,
    /// Number of distinct keys.
    #[arg(long, default_value_t = 1000)]
    keys: u64,
    /// Read consistency for gets: any, session or leader.
    #[arg(long, default_value = "session", value_name = "MODE")]
    read: ReadMode,
    /// Print the results as one JSON object on stdout.
    #[arg(long)]
    json: bool,
    /// No progress lines on stderr.
    #[arg(long)]
    quiet: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = runtime::init_logging(&cli.log) {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    let result = match cli.command {
        Command::Replica(a) => replica(a),
        Command::Balancer(a) => balancer(a),
        Command::Client(a) => return client(a),
        Command::Cluster(a) => cluster(a),
        Command::Bench(a) => bench(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Refused(why)) => {
            eprintln!("error: {why}");
            ExitCode::from(2)
        }
        Err(Failure::Io(e)) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Why `kvnode` gave up, and with which exit status.
enum Failure {
    /// Refused to start (a data directory that is not ours, or too new): 2.
    Refused(String),
    Io(io::Error),
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Failure {
        Failure::Io(e)
    }
}

fn open_store(s: &StorageArgs, n: u8) -> Result<Box<dyn Store>, Failure> {
    let Some(dir) = &s.data_dir else {
        return Ok(Box::new(MemStore::default()));
    };
    let sync = match (s.no_fsync, s.sync_every_op) {
        (true, _) => SyncMode::Off,
        (false, true) => SyncMode::EveryOp,
        (false, false) => SyncMode::Group,
    };
    let opts = WalOptions { sync, snapshot_log_bytes: s.snapshot_log_bytes };
    match WalStore::open(dir, ReplicaId(n), opts) {
        Ok(store) => Ok(Box::new(store)),
        Err(
            e @ (WalError::Foreign { .. }
            | WalError::NewerVersion { .. }
            | WalError::Locked { .. }
            | WalError::PromiseLost { .. }),
        ) => Err(Failure::Refused(format!("replica {n} cannot use its data directory: {e}"))),
        Err(WalError::Io { path, source }) => {
            Err(Failure::Io(io::Error::new(source.kind(), format!("{}: {source}", path.display()))))
        }
        Err(e) => Err(Failure::Io(io::Error::other(e.to_string()))),
    }
}

/// Runs until SIGINT/SIGTERM, then stops the nodes in order (each drains
/// before the next is asked, so the balancer can still reach the replicas
/// while it answers what is in flight). A second signal exits at once.
fn serve(nodes: Vec<NodeHandle>) -> io::Result<()> {
    let (tx, rx) = crossbeam_channel::bounded(1);
    runtime::on_stop_signals(move |n| {
        if n > 1 {
            eprintln!("kvnode: second signal, exiting now");
            std::process::exit(130);
        }
        let _ = tx.try_send(());
    })?;
    let _ = rx.recv();
    for node in nodes {
        node.shutdown();
        node.join();
    }
    Ok(())
}

fn replica(a: ReplicaArgs) -> Result<(), Failure> {
    let listen = a.listen.unwrap_or_else(|| format!("127.0.0.1:{}", 8080 + a.n as u16));
    let store = open_store(&a.storage, a.n)?;
    let node = runtime::start_replica(ReplicaOptions { id: ReplicaId(a.n), listen, store }, Clock::new())?;
    println!("kvnode replica {} listening at {}", a.n, node.addr);
    Ok(serve(vec![node])?)
}

fn balancer_options(listen: String, replicas: Vec<String>, c: &ClusterConfigArgs) -> BalancerOptions {
    BalancerOptions { listen, replicas, sync_acks: c.sync_acks, unsafe_failover: c.unsafe_failover }
}

fn balancer(a: BalancerArgs) -> Result<(), Failure> {
    let node = runtime::start_balancer(balancer_options(a.listen, a.replicas, &a.cluster), Clock::new())?;
    println!("kvnode balancer listening at {}", node.addr);
    Ok(serve(vec![node])?)
}

fn cluster(a: ClusterArgs) -> Result<(), Failure> {
    let clock = Clock::new();
    let port = |i: u16| {
        if a.base_port == 0 {
            0
        } else {
            a.base_port.saturating_add(i)
        }
    };
    let mut replicas = Vec::new();
    for n in 1..=a.replicas {
        let listen = format!("{}:{}", a.host, port(n as u16));
        let store = open_store(&a.storage, n)?;
        let node = runtime::start_replica(ReplicaOptions { id: ReplicaId(n), listen, store }, clock)?;
        println!("kvnode replica {n} listening at {}", node.addr);
        replicas.push(node);
    }
    let addrs = replicas.iter().map(|r| r.addr.to_string()).collect();
    let listen = format!("{}:{}", a.host, port(0));
    let lb = runtime::start_balancer(balancer_options(listen, addrs, &a.cluster), clock)?;
    println!("kvnode balancer listening at {}", lb.addr);
    let mut nodes = vec![lb];
    nodes.extend(replicas);
    Ok(serve(nodes)?)
}

fn client(a: ClientArgs) -> ExitCode {
    let default_read = if a.command.is_empty() { ReadMode::Session } else { ReadMode::Leader };
    let read = a.read.unwrap_or(default_read);
    let mut client = SyncClient::new(&a.connect, ClientId(runtime::random_u64()), read);
    let stdout = io::stdout();
    let mut out = stdout.lock();
    if !a.command.is_empty() {
        // One-shot: the words form one command line, so values keep spaces.
        let line = a.command.join(" ");
        if matches!(repl::parse(&line), Ok(Some(repl::Command::Op(_)))) {
            if let Err(e) = client.connect() {
                println!("error: {e}");
                return ExitCode::FAILURE;
            }
        }
        return match repl::run_line(&mut client, &line, &mut out) {
            Ok(Outcome::Ok | Outcome::Blank | Outcome::Quit) => ExitCode::SUCCESS,
            Ok(Outcome::Failed) => ExitCode::FAILURE,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        };
    }
    // Ctrl-C ends an idle REPL at once, or gives up on the command in
    // flight (printing its error) and then ends.
    let interrupt = client.interrupt_flag();
    let busy = client.busy_flag();
    let _ = runtime::on_stop_signals(move |n| {
        interrupt.store(true, Ordering::SeqCst);
        if n > 1 || !busy.load(Ordering::SeqCst) {
            std::process::exit(if n > 1 { 130 } else { 0 });
        }
    });
    if let Err(e) = client.connect() {
        eprintln!("warning: {e} (each command will try again)");
    }
    let prompt = io::stdin().is_terminal() && io::stdout().is_terminal();
    let interrupt = client.interrupt_flag();
    let stdin = io::stdin().lock();
    let result = repl::run(&mut client, stdin, &mut out, prompt, &interrupt);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn bench(a: BenchArgs) -> Result<(), Failure> {
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    runtime::on_stop_signals(move |n| {
        if n > 1 {
            std::process::exit(130);
        }
        stop2.store(true, Ordering::SeqCst);
    })?;
    let opts = BenchOptions {
        connect: a.connect,
        clients: a.clients,
        duration: a.duration,
        ops: a.ops,
        mix: a.mix,
        value_size: a.value_size,
        keys: a.keys,
        read: a.read,
        progress: !a.quiet,
    };
    let report = bench::run(opts, stop)?;
    if a.json {
        println!("{}", report.json());
    } else {
        print!("{}", report.text());
    }
    Ok(())
}
