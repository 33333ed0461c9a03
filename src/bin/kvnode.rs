//! `kvnode`: run a replica, the balancer, a client REPL, a whole cluster in
//! one process, or a benchmark, over TCP. Parsing and printing only; the
//! work is in `kvstore::runtime`.

use clap::{Args, Parser, Subcommand};
use kvstore::config::MAX_REPLICAS;
use kvstore::runtime::auth::{self, Keys, Secret};
use kvstore::runtime::bench::{self, BenchOptions, Mix};
use kvstore::runtime::client::SyncClient;
use kvstore::runtime::cluster_file::{self, ReplicaCluster};
use kvstore::runtime::net;
use kvstore::runtime::repl::{self, Outcome};
use kvstore::runtime::status;
use kvstore::runtime::store::{MemStore, Store, SyncMode, WalOptions, WalStore, SNAPSHOT_LOG_BYTES_DEFAULT};
use kvstore::runtime::{self, BalancerOptions, Clock, NodeHandle, ReplicaOptions};
use kvstore::types::MAX_VALUE_BYTES;
use kvstore::types::{ClientId, ReadMode, ReplicaId};
use kvstore::wal::WalError;
use std::io::{self, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(Parser)]
#[command(name = "kvnode", version, about = "A replicated key-value store over TCP", long_about = None)]
struct Cli {
    /// Log level on stderr: off, error, warn, info, debug or trace
    /// [default: warn]. Leadership changes and start-up lines go to stdout
    /// whatever the level.
    #[arg(long, global = true, value_name = "LEVEL")]
    log: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run replica N of the cluster given by --peers (listens at its own
    /// entry there unless --listen says otherwise).
    ///
    /// The replica knows its cluster from its own command line only, and
    /// keeps it with its data (DIR/replica-N.cluster): a balancer or replica
    /// whose configuration differs is refused.
    Replica(ReplicaArgs),
    /// Run the balancer: `kvnode balancer localhost:8080 localhost:8081 localhost:8082 localhost:8083`.
    ///
    /// The first address is where clients connect; then one address per
    /// replica, replica 1 first. The balancer promotes a leader and fails
    /// over by itself.
    Balancer(BalancerArgs),
    /// Talk to the cluster: a REPL reading `set key=value`, `get key`,
    /// `del key`, `status`, `help`, `quit` (from a terminal or a pipe), or
    /// one command given on the command line (`kvnode client get KEY`).
    Client(ClientArgs),
    /// Run N replicas and the balancer in this process.
    Cluster(ClusterArgs),
    /// Measure throughput and latency with many concurrent clients.
    Bench(BenchArgs),
    /// Show the balancer's view of the cluster: the leader, the epoch, and
    /// each replica's address, role, last LSN, lag and health.
    Status(StatusArgs),
}

#[derive(Args)]
struct StatusArgs {
    /// The balancer's address.
    #[arg(long, default_value = "localhost:8080", value_name = "ADDR")]
    connect: String,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    password: PasswordArgs,
}

#[derive(Args)]
struct ReplicaArgs {
    /// Replica number, 1 to 9 (its entry in --peers).
    #[arg(value_parser = clap::value_parser!(u8).range(1..=MAX_REPLICAS as i64))]
    n: u8,
    /// Every replica's address, replica 1 first, this one's included:
    /// ADDR1,ADDR2,ADDR3. Peers are dialed there, and nowhere else. May be
    /// left out when --data-dir already holds the configuration.
    #[arg(long, value_name = "ADDRS", value_delimiter = ',', num_args = 1..)]
    peers: Option<Vec<String>>,
    /// Followers that must have a write on disk before it is acknowledged
    /// (must match the balancer's) [default: 1]
    #[arg(long, value_name = "K", requires = "peers")]
    sync_acks: Option<usize>,
    /// Promote a leader even when it may lack acknowledged writes (must
    /// match the balancer's).
    #[arg(long, requires = "peers")]
    unsafe_failover: bool,
    /// Accept a number of replicas, sync_acks or unsafe_failover other than
    /// the one stored in the data directory (stop every node first).
    #[arg(long, requires = "peers")]
    reconfigure: bool,
    /// Address to listen on [default: this replica's entry in --peers]
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    #[command(flatten)]
    storage: StorageArgs,
    #[command(flatten)]
    security: SecurityArgs,
    #[command(flatten)]
    record: RecordArgs,
}

#[derive(Args)]
struct RecordArgs {
    /// Record what each node's machine receives and does in DIR/<node>
    /// (r1, r2, ..., lb), for `kvsim replay DIR`: at most 4 files of 16 MiB
    /// per node, the oldest removed.
    #[arg(long, value_name = "DIR")]
    record: Option<PathBuf>,
}

#[derive(Args)]
struct SecurityArgs {
    /// File holding the cluster secret (at least 16 bytes, e.g. from
    /// `head -c 32 /dev/urandom | base64`), the same on every node; or
    /// $KVSTORE_SECRET_FILE, or the secret itself in $KVSTORE_SECRET. Every
    /// connection between nodes then proves it. Without one the cluster is
    /// open and its nodes listen on loopback only.
    #[arg(long, value_name = "FILE")]
    secret_file: Option<PathBuf>,
    /// Without a cluster secret, listen beyond loopback anyway (anyone who
    /// can reach a node can then act as the balancer, a replica or a client).
    #[arg(long)]
    insecure_open: bool,
}

#[derive(Args)]
struct ClientAuthArgs {
    /// File holding the password clients must prove (at least 8 bytes); or
    /// $KVSTORE_CLIENT_PASSWORD_FILE, or $KVSTORE_CLIENT_PASSWORD. Without
    /// one any client may connect.
    #[arg(long, value_name = "FILE")]
    client_password_file: Option<PathBuf>,
    /// A client connection that sends nothing for this long after its hello
    /// is closed: 60s, 500ms, 5m.
    #[arg(long, default_value = "60s", value_parser = bench::parse_duration, value_name = "TIME")]
    client_idle_timeout: Duration,
}

#[derive(Args)]
struct PasswordArgs {
    /// File holding the client password, if the balancer wants one; or
    /// $KVSTORE_CLIENT_PASSWORD_FILE, or $KVSTORE_CLIENT_PASSWORD.
    #[arg(long, value_name = "FILE")]
    password_file: Option<PathBuf>,
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
    /// (a snapshot pauses the replica ~0.1 s per million keys while it is
    /// encoded, and holds that much memory again until written).
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
    #[command(flatten)]
    security: SecurityArgs,
    #[command(flatten)]
    clients: ClientAuthArgs,
    #[command(flatten)]
    resp: RespArgs,
    #[command(flatten)]
    record: RecordArgs,
}

#[derive(Args)]
struct RespArgs {
    /// Also serve the Redis protocol (RESP2) here, e.g. 127.0.0.1:6379
    /// (redis-cli, redis-benchmark, any Redis client).
    #[arg(long, value_name = "ADDR")]
    resp: Option<String>,
}

#[derive(Args)]
struct ClusterConfigArgs {
    /// Followers that must have a write on disk before it is acknowledged:
    /// 0 asynchronous, 1 semi-synchronous, N-1 synchronous (at most N-1)
    /// [default: 1, or 0 for a single replica].
    #[arg(long, value_name = "K")]
    sync_acks: Option<usize>,
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
    #[command(flatten)]
    password: PasswordArgs,
    /// One command to run instead of the REPL, e.g. `get KEY` or `set KEY=VALUE`.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, value_name = "COMMAND")]
    command: Vec<String>,
}

#[derive(Args)]
struct ClusterArgs {
    /// Number of replicas, 1 to 9.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..=MAX_REPLICAS as i64))]
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
    /// Accept a number of replicas, sync_acks or unsafe_failover other than
    /// the one stored in --data-dir.
    #[arg(long)]
    reconfigure: bool,
    #[command(flatten)]
    security: SecurityArgs,
    #[command(flatten)]
    clients: ClientAuthArgs,
    #[command(flatten)]
    resp: RespArgs,
    #[command(flatten)]
    record: RecordArgs,
}

#[derive(Args)]
struct BenchArgs {
    /// The balancer's address.
    #[arg(long, default_value = "localhost:8080", value_name = "ADDR")]
    connect: String,
    /// Concurrent clients (one connection and one request in flight each),
    /// 1 to 1000.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=1000u64))]
    clients: u64,
    /// How long to run: 10, 10s, 500ms, 1m (unless --ops is given).
    #[arg(long, default_value = "10s", value_parser = bench::parse_duration, value_name = "TIME")]
    duration: Duration,
    /// Run this many operations in total instead of for a duration.
    #[arg(long)]
    ops: Option<u64>,
    /// Operation weights, e.g. set:50,get:50 or get:100.
    #[arg(long, default_value = "set:50,get:50")]
    mix: Mix,
    /// Bytes per value written, 0 to 65536.
    #[arg(long, default_value_t = 100, value_name = "BYTES",
          value_parser = clap::value_parser!(u64).range(0..=MAX_VALUE_BYTES as u64))]
    value_size: u64,
    /// Number of distinct keys, 1 to 1000000 (with gets in the mix, every
    /// key is written once first: a million take about a minute).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=1_000_000u64))]
    keys: u64,
    /// Read consistency for gets: any, session or leader.
    #[arg(long, default_value = "session", value_name = "MODE")]
    read: ReadMode,
    /// Speak the Redis protocol to ADDR (a balancer's --resp port, or a
    /// Redis server) instead of the native one at --connect.
    #[arg(long, value_name = "ADDR")]
    resp: Option<String>,
    /// With --resp: send WAIT N 0 after every SET (one operation together),
    /// and count a reply below N as an error.
    #[arg(long, value_name = "N", requires = "resp")]
    wait: Option<u32>,
    /// Print the results as one JSON object on stdout.
    #[arg(long)]
    json: bool,
    /// No progress lines on stderr.
    #[arg(long)]
    quiet: bool,
    #[command(flatten)]
    password: PasswordArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = runtime::init_logging(cli.log.as_deref().unwrap_or("warn")) {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    // A panic in any thread stops the process (status 101), never leaves a
    // node listening with a dead machine.
    auth::fail_stop_on_panic();
    let result = match cli.command {
        Command::Replica(a) => replica(a),
        Command::Balancer(a) => balancer(a),
        Command::Client(a) => return client(a),
        Command::Cluster(a) => cluster(a),
        Command::Bench(a) => bench(a),
        Command::Status(a) => status(a),
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
    /// A usage or input error, or a refusal to start (a data directory
    /// that is not ours, or too new): 2.
    Refused(String),
    /// Something failed at run time (a port in use, a cluster that cannot
    /// be reached): 1.
    Io(io::Error),
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Failure {
        let refused =
            e.kind() == io::ErrorKind::PermissionDenied && e.to_string().starts_with("refusing to listen");
        if refused || e.kind() == io::ErrorKind::InvalidInput {
            return Failure::Refused(e.to_string());
        }
        Failure::Io(e)
    }
}

/// The cluster secret and (for the balancer) the client password; warns
/// once, at start-up, when the cluster is open.
fn node_keys(s: &SecurityArgs, clients: Option<&ClientAuthArgs>) -> Result<Keys, Failure> {
    let cluster = Secret::load(
        "cluster secret",
        s.secret_file.as_deref(),
        auth::ENV_SECRET_FILE,
        auth::ENV_SECRET,
        auth::MIN_SECRET_BYTES,
    )
    .map_err(Failure::Refused)?;
    let client = match clients {
        Some(c) => client_password(c.client_password_file.as_deref())?,
        None => None,
    };
    if cluster.is_none() {
        let reach = if s.insecure_open {
            "anyone who can reach its ports (--insecure-open)"
        } else {
            "any process on this machine (nodes listen on loopback only)"
        };
        eprintln!(
            "warning: no cluster secret (--secret-file or ${}): the cluster is open: {reach} can act as \
             its balancer, a replica or a client",
            auth::ENV_SECRET_FILE
        );
    }
    Ok(Keys { cluster, client })
}

fn client_password(file: Option<&std::path::Path>) -> Result<Option<Secret>, Failure> {
    Secret::load(
        "client password",
        file,
        auth::ENV_PASSWORD_FILE,
        auth::ENV_PASSWORD,
        auth::MIN_PASSWORD_BYTES,
    )
    .map_err(Failure::Refused)
}

/// The balancer's client port reachable beyond loopback with no password.
fn warn_if_clients_open(addr: std::net::SocketAddr, keys: &Keys) {
    if keys.client.is_none() && !addr.ip().is_loopback() {
        eprintln!(
            "warning: no client password (--client-password-file): anyone who can reach {addr} can read and \
             write every key"
        );
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
            // A path that cannot be a data directory is the user's to fix.
            let why = match source.kind() {
                io::ErrorKind::NotADirectory => Some("a part of that path is a file, not a directory"),
                io::ErrorKind::NotFound => Some("that path cannot be created (a parent is missing)"),
                io::ErrorKind::PermissionDenied => Some("permission denied"),
                io::ErrorKind::ReadOnlyFilesystem => Some("the file system is read-only"),
                _ => None,
            };
            match why {
                Some(why) => Err(Failure::Refused(format!(
                    "replica {n} cannot use its data directory {}: {} ({why})",
                    dir.display(),
                    path.display()
                ))),
                None => {
                    Err(Failure::Io(io::Error::new(source.kind(), format!("{}: {source}", path.display()))))
                }
            }
        }
        Err(e) => Err(Failure::Io(io::Error::other(e.to_string()))),
    }
}

/// `--sync-acks` when not given: semi-synchronous, or asynchronous for a
/// replica with no followers.
fn default_sync_acks(replicas: usize) -> usize {
    1.min(replicas.saturating_sub(1))
}

/// Runs until SIGINT/SIGTERM, then stops the nodes in order (each drains
/// before the next is asked, so the balancer can still reach the replicas
/// while it answers what is in flight). A second signal exits at once.
fn serve(nodes: Vec<NodeHandle>) -> io::Result<()> {
    let (tx, rx) = crossbeam_channel::bounded(1);
    let gone = tx.clone();
    runtime::on_stop_signals(move |n| {
        if n > 1 {
            eprintln!("kvnode: second signal, exiting now");
            std::process::exit(130);
        }
        let _ = tx.try_send(());
    })?;
    // Whoever read stdout went away (`kvnode cluster | head -2`): stop as
    // for SIGTERM, gracefully, and exit 0.
    runtime::on_stdout_gone(move || {
        let _ = gone.try_send(());
    });
    if !runtime::stdout_gone() {
        let _ = rx.recv();
    }
    for node in nodes {
        node.shutdown();
        node.join();
    }
    Ok(())
}

fn replica(a: ReplicaArgs) -> Result<(), Failure> {
    let id = ReplicaId(a.n);
    let store = open_store(&a.storage, a.n)?;
    let keys = node_keys(&a.security, None)?;
    let cli = match a.peers {
        Some(peers) => Some(
            ReplicaCluster::new(
                id,
                peers.clone(),
                a.sync_acks.unwrap_or(default_sync_acks(peers.len())),
                a.unsafe_failover,
            )
            .map_err(Failure::Refused)?,
        ),
        None => None,
    };
    // After the store is open (it locks the directory), so no other process
    // changes the file meanwhile.
    let cluster = cluster_file::settle(a.storage.data_dir.as_deref(), id, cli, a.reconfigure)
        .map_err(Failure::Refused)?;
    let listen = a.listen.unwrap_or_else(|| cluster.own_addr().to_string());
    let opts = ReplicaOptions {
        id,
        listen,
        config: cluster.config(),
        peers: cluster.peers.clone(),
        store,
        keys,
        insecure_open: a.security.insecure_open,
        record: a.record.record,
    };
    let node = runtime::start_replica(opts, Clock::new())?;
    runtime::say(&format!("kvnode replica {} listening at {}", a.n, node.addr));
    Ok(serve(vec![node])?)
}

fn balancer_options(
    listen: String,
    replicas: Vec<String>,
    c: &ClusterConfigArgs,
    keys: Keys,
    s: &SecurityArgs,
    clients: &ClientAuthArgs,
) -> BalancerOptions {
    let sync_acks = c.sync_acks.unwrap_or(default_sync_acks(replicas.len()));
    BalancerOptions {
        listen,
        replicas,
        sync_acks,
        unsafe_failover: c.unsafe_failover,
        keys,
        insecure_open: s.insecure_open,
        client_idle: clients.client_idle_timeout,
        resp: None,
        record: None,
    }
}

fn balancer(a: BalancerArgs) -> Result<(), Failure> {
    let sync_acks = a.cluster.sync_acks.unwrap_or(default_sync_acks(a.replicas.len()));
    kvstore::config::check_cluster(a.replicas.len(), sync_acks).map_err(Failure::Refused)?;
    let keys = node_keys(&a.security, Some(&a.clients))?;
    let mut opts = balancer_options(a.listen, a.replicas, &a.cluster, keys.clone(), &a.security, &a.clients);
    opts.resp = a.resp.resp;
    opts.record = a.record.record;
    let node = runtime::start_balancer(opts, Clock::new())?;
    warn_if_clients_open(node.addr, &keys);
    runtime::say(&format!("kvnode balancer listening at {}", node.addr));
    print_resp(&node);
    Ok(serve(vec![node])?)
}

fn cluster(a: ClusterArgs) -> Result<(), Failure> {
    let sync_acks = a.cluster.sync_acks.unwrap_or(default_sync_acks(a.replicas as usize));
    kvstore::config::check_cluster(a.replicas as usize, sync_acks).map_err(Failure::Refused)?;
    let clock = Clock::new();
    let keys = node_keys(&a.security, Some(&a.clients))?;
    let port = |i: u16| {
        if a.base_port == 0 {
            0
        } else {
            a.base_port.saturating_add(i)
        }
    };
    // Every replica's port first: each replica is told all of them.
    let mut listeners = Vec::new();
    for n in 1..=a.replicas {
        listeners.push(net::bind(&format!("{}:{}", a.host, port(n as u16)))?);
    }
    let mut addrs = Vec::new();
    for l in &listeners {
        addrs.push(l.local_addr()?.to_string());
    }
    let mut replicas = Vec::new();
    for (i, listener) in listeners.into_iter().enumerate() {
        let n = i as u8 + 1;
        let id = ReplicaId(n);
        let store = open_store(&a.storage, n)?;
        let cli = ReplicaCluster::new(id, addrs.clone(), sync_acks, a.cluster.unsafe_failover)
            .map_err(Failure::Refused)?;
        let cluster = cluster_file::settle(a.storage.data_dir.as_deref(), id, Some(cli), a.reconfigure)
            .map_err(Failure::Refused)?;
        let opts = ReplicaOptions {
            id,
            listen: String::new(),
            config: cluster.config(),
            peers: cluster.peers.clone(),
            store,
            keys: keys.clone(),
            insecure_open: a.security.insecure_open,
            record: a.record.record.clone(),
        };
        let node = runtime::start_replica_on(listener, opts, clock)?;
        runtime::say(&format!("kvnode replica {n} listening at {}", node.addr));
        replicas.push(node);
    }
    let listen = format!("{}:{}", a.host, port(0));
    let mut opts = balancer_options(listen, addrs, &a.cluster, keys.clone(), &a.security, &a.clients);
    opts.resp = a.resp.resp;
    opts.record = a.record.record;
    let lb = runtime::start_balancer(opts, clock)?;
    warn_if_clients_open(lb.addr, &keys);
    runtime::say(&format!("kvnode balancer listening at {}", lb.addr));
    print_resp(&lb);
    let mut nodes = vec![lb];
    nodes.extend(replicas);
    Ok(serve(nodes)?)
}

/// The RESP port's line, for scripts and tests to find it.
fn print_resp(node: &NodeHandle) {
    if let Some(a) = node.resp_addr {
        runtime::say(&format!("kvnode balancer serving RESP at {a}"));
    }
}

fn client(a: ClientArgs) -> ExitCode {
    let default_read = if a.command.is_empty() { ReadMode::Session } else { ReadMode::Leader };
    let read = a.read.unwrap_or(default_read);
    let password = match client_password(a.password.password_file.as_deref()) {
        Ok(p) => p,
        Err(Failure::Refused(e)) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
        Err(Failure::Io(e)) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let mut client =
        SyncClient::new(&a.connect, ClientId(runtime::random_u64()), read).with_password(password);
    let stdout = io::stdout();
    let mut out = stdout.lock();
    if !a.command.is_empty() {
        // One-shot: the words form one command line, so values keep spaces.
        let line = a.command.join(" ");
        let parsed = repl::parse(&line);
        if matches!(parsed, Ok(Some(repl::Command::Op(_) | repl::Command::Status))) {
            if let Err(e) = client.connect() {
                let _ = writeln!(out, "error: {e}");
                return ExitCode::FAILURE;
            }
        }
        return match repl::run_line(&mut client, &line, &mut out) {
            // A line that is not a command is a usage error.
            Ok(Outcome::Failed) if parsed.is_err() => ExitCode::from(2),
            Ok(Outcome::Ok | Outcome::Blank | Outcome::Quit) => ExitCode::SUCCESS,
            Ok(Outcome::Failed) => ExitCode::FAILURE,
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let prompt = io::stdin().is_terminal() && io::stdout().is_terminal();
    // Ctrl-C gives up on the command in flight (printing its error) and the
    // REPL goes on; at the prompt it ends the REPL (as Ctrl-D does), on a
    // line of its own. A second Ctrl-C while a command will not give up
    // exits at once.
    let interrupt = client.interrupt_flag();
    let busy = client.busy_flag();
    let _ = runtime::on_stop_signals(move |_| {
        let again = interrupt.swap(true, Ordering::SeqCst);
        if !busy.load(Ordering::SeqCst) {
            if prompt {
                let _ = std::io::Write::write_all(&mut std::io::stdout(), b"\n");
            }
            std::process::exit(0);
        }
        if again {
            std::process::exit(130);
        }
    });
    if let Err(e) = client.connect() {
        eprintln!("warning: {e} (each command will try again)");
    }
    let stdin = io::stdin().lock();
    let result = repl::run(&mut client, stdin, &mut out, prompt);
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
    let password = client_password(a.password.password_file.as_deref())?;
    let opts = BenchOptions {
        password,
        resp: a.resp.is_some(),
        connect: a.resp.unwrap_or(a.connect),
        clients: a.clients as usize,
        wait: a.wait,
        duration: a.duration,
        ops: a.ops,
        mix: a.mix,
        value_size: a.value_size as usize,
        keys: a.keys,
        read: a.read,
        progress: !a.quiet,
    };
    let report = bench::run(opts, stop)?;
    let text = if a.json { format!("{}\n", report.json()) } else { report.text() };
    let mut out = io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => return Err(Failure::Io(e)),
        _ => {}
    }
    if report.ok == 0 {
        return Err(Failure::Io(io::Error::other(match &report.first_error {
            Some(e) => format!("no operation succeeded (first error: {e})"),
            None => "no operation succeeded".to_string(),
        })));
    }
    Ok(())
}

fn status(a: StatusArgs) -> Result<(), Failure> {
    let password = client_password(a.password.password_file.as_deref())?;
    let mut client =
        SyncClient::new(&a.connect, ClientId(runtime::random_u64()), ReadMode::Any).with_password(password);
    let view = client.status(repl::STATUS_TIMEOUT).map_err(Failure::Io)?;
    let text = if a.json { format!("{}\n", status::json(&view)) } else { status::table(&view) };
    let mut out = io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => Err(Failure::Io(e)),
        _ => Ok(()),
    }
}
