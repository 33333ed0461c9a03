//! Scenario files: TOML describing a cluster, its network and disks, a client
//! workload, and faults at given times. Every optional field has a default
//! (documented in README.md). Errors name the file, line and field.

use kvstore::config::{ClusterConfig, Timing};
use kvstore::{Op, ReadMode};
use serde::Deserialize;
use std::fmt;
use std::path::Path;
use toml::Spanned;

/// A scenario after validation: everything the simulator needs.
/// [`Scenario::to_toml`] writes it back as a file that parses to an equal
/// scenario.
#[derive(Clone, Debug, PartialEq)]
pub struct Scenario {
    pub name: String,
    /// What the scenario shows: the file's leading comment, without the
    /// `#` marks (a trace opens with it). Empty when the file has none.
    pub about: String,
    pub cluster: ClusterConfig,
    pub network: Network,
    pub disk: Disk,
    pub clock: Clock,
    pub workload: Workload,
    pub faults: Vec<Fault>,
    pub run: Run,
}

/// How far the replicas' and the balancer's clocks stray from simulated
/// time: each draws a rate in `1 ± drift_max_ppm / 10^6` and an offset in
/// `0..=skew_max_us` from the seed, so its timers fire early or late.
/// Clients keep true time: their observations are the history the
/// checkers judge.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Clock {
    pub drift_max_ppm: u32,
    pub skew_max_us: u64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Network {
    pub delay_min_us: u64,
    pub delay_mean_us: u64,
    pub distribution: Distribution,
    pub drop_probability: f64,
    pub duplicate_probability: f64,
    /// Random drops and duplicates stop at this simulated time (`None`:
    /// never). Partitions are faults of their own and end with a `heal`.
    pub faults_until_us: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Distribution {
    Constant,
    Uniform,
    Exponential,
    /// Long-tailed: Pareto with shape 2 (finite mean, heavy tail).
    Pareto,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Disk {
    pub write_min_us: u64,
    pub write_mean_us: u64,
    /// Chance that a crash leaves part of the write in progress on disk.
    pub torn_write_probability: f64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Workload {
    pub duration_us: u64,
    pub keys: u32,
    pub zipf_exponent: Option<f64>,
    pub value_bytes_min: usize,
    pub value_bytes_max: usize,
    pub mix: Mix,
    pub groups: Vec<Group>,
}

#[derive(Clone, Copy, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mix {
    #[serde(default = "d50")]
    pub set: u32,
    #[serde(default = "d50")]
    pub get: u32,
    #[serde(default)]
    pub del: u32,
}

fn d50() -> u32 {
    50
}

#[derive(Clone, Debug, PartialEq)]
pub struct Group {
    pub clients: u32,
    pub read: ReadMode,
    /// Open loop: operations per second per client (Poisson arrivals).
    /// `None`: closed loop, next operation after the previous one finishes.
    pub rate_per_s: Option<f64>,
    pub think_us: u64,
    pub start_us: u64,
    /// No new operation starts at or after this (the workload's end when
    /// not given).
    pub stop_us: Option<u64>,
    pub script: Option<Vec<Op>>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Fault {
    pub at_us: u64,
    pub action: Action,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Crash(Node),
    Restart(Node),
    /// Nodes in different groups cannot reach each other; nodes not named
    /// stay connected to everyone.
    Partition(Vec<Vec<Node>>),
    /// Messages from `from` to `to` are lost; the other way works.
    PartitionOneWay {
        from: Vec<Node>,
        to: Vec<Node>,
    },
    Heal,
    /// Flip a byte anywhere in a replica's stored log; noticed at its next
    /// restart.
    Corrupt(u8),
    /// Flip a byte of the last record of a replica's stored log (which
    /// then looks just like a torn write); noticed at its next restart.
    CorruptLast(u8),
    /// The node handles nothing for `for_us` (a stopped process, a long GC
    /// pause), then resumes with its state: what arrived meanwhile is
    /// handled then, in order; its disk writes complete meanwhile.
    Pause {
        node: Node,
        for_us: u64,
    },
}

/// A node named in a scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Node {
    Balancer,
    Replica(u8),
    Client(u32),
    /// Every client.
    Clients,
    /// The replica leading the newest epoch when the fault happens (none
    /// leading: the fault touches no replica). In `restart`: the replica
    /// most recently crashed as `leader` and still down.
    Leader,
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Node::Balancer => write!(f, "lb"),
            Node::Replica(r) => write!(f, "r{r}"),
            Node::Client(c) => write!(f, "c{c}"),
            Node::Clients => write!(f, "clients"),
            Node::Leader => write!(f, "leader"),
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |g: &[Node]| g.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(",");
        match self {
            Action::Crash(n) => write!(f, "crash {n}"),
            Action::Restart(n) => write!(f, "restart {n}"),
            Action::Partition(groups) => {
                let gs: Vec<String> = groups.iter().map(|g| format!("[{}]", list(g))).collect();
                write!(f, "partition {}", gs.join(" | "))
            }
            Action::PartitionOneWay { from, to } => {
                write!(f, "partition one-way [{}] -> [{}]", list(from), list(to))
            }
            Action::Heal => write!(f, "heal all partitions"),
            Action::Corrupt(r) => write!(f, "corrupt the disk of r{r}"),
            Action::CorruptLast(r) => write!(f, "corrupt the last record on the disk of r{r}"),
            Action::Pause { node, for_us } => {
                write!(f, "pause {node} for {}.{:03}ms", for_us / 1000, for_us % 1000)
            }
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Run {
    /// After the workload stops: time for the cluster to settle before the
    /// convergence check.
    pub quiet_us: u64,
    /// Every client operation invoked after the last fault heals must finish
    /// within this long.
    pub liveness_us: u64,
    pub check_convergence: bool,
    /// A run that handles this many events stops there and is reported
    /// inconclusive (`None`: no limit): a storm of events is found, not
    /// waited out.
    pub max_events: Option<u64>,
}

/// A scenario file that could not be used.
#[derive(Debug)]
pub struct ScenarioError {
    pub file: String,
    pub line: usize,
    pub col: usize,
    pub msg: String,
}

impl fmt::Display for ScenarioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file, self.msg)
        } else {
            write!(f, "{}:{}:{}: {}", self.file, self.line, self.col, self.msg)
        }
    }
}

impl std::error::Error for ScenarioError {}

// ---- the file format, as written ----

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct File {
    name: Option<String>,
    #[serde(default)]
    cluster: ClusterFile,
    #[serde(default)]
    network: NetworkFile,
    #[serde(default)]
    disk: DiskFile,
    #[serde(default)]
    clock: ClockFile,
    #[serde(default)]
    workload: WorkloadFile,
    #[serde(default)]
    faults: Vec<FaultFile>,
    #[serde(default)]
    run: RunFile,
    #[serde(default)]
    bugs: kvstore::config::Bugs,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ClusterFile {
    replicas: Option<Spanned<u8>>,
    sync_acks: Option<Spanned<SyncAcks>>,
    unsafe_failover: Option<bool>,
    log_rows_max: Option<Spanned<usize>>,
    heartbeat_ms: Option<f64>,
    ping_ms: Option<f64>,
    dead_after_ms: Option<f64>,
    promote_timeout_ms: Option<f64>,
    forward_retry_ms: Option<f64>,
    request_timeout_ms: Option<f64>,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(untagged)]
enum SyncAcks {
    Count(u8),
    Word(AllWord),
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum AllWord {
    All,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct NetworkFile {
    delay_min_ms: Option<Spanned<f64>>,
    delay_mean_ms: Option<Spanned<f64>>,
    distribution: Option<Distribution>,
    drop_probability: Option<Spanned<f64>>,
    duplicate_probability: Option<Spanned<f64>>,
    faults_until_ms: Option<f64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct DiskFile {
    write_min_ms: Option<f64>,
    write_mean_ms: Option<f64>,
    torn_write_probability: Option<Spanned<f64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct WorkloadFile {
    duration_ms: Option<f64>,
    keys: Option<Spanned<u32>>,
    zipf_exponent: Option<f64>,
    value_bytes_min: Option<usize>,
    value_bytes_max: Option<usize>,
    mix: Option<Spanned<Mix>>,
    /// Shortcut for one closed-loop group of this many clients.
    clients: Option<u32>,
    read: Option<ReadModeFile>,
    #[serde(default)]
    groups: Vec<GroupFile>,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum ReadModeFile {
    Any,
    Session,
    Leader,
}

impl From<ReadModeFile> for ReadMode {
    fn from(r: ReadModeFile) -> ReadMode {
        match r {
            ReadModeFile::Any => ReadMode::Any,
            ReadModeFile::Session => ReadMode::Session,
            ReadModeFile::Leader => ReadMode::Leader,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupFile {
    clients: Option<u32>,
    read: Option<ReadModeFile>,
    rate_per_s: Option<f64>,
    think_ms: Option<f64>,
    start_ms: Option<f64>,
    stop_ms: Option<f64>,
    script: Option<Vec<Spanned<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FaultFile {
    at_ms: f64,
    action: Spanned<String>,
    node: Option<Spanned<String>>,
    for_ms: Option<f64>,
    last_record: Option<bool>,
    groups: Option<Vec<Vec<Spanned<String>>>>,
    from: Option<Vec<Spanned<String>>>,
    to: Option<Vec<Spanned<String>>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ClockFile {
    /// Largest rate error, as a fraction (0.05: 5% fast or slow).
    drift_max: Option<f64>,
    skew_max_ms: Option<f64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RunFile {
    quiet_ms: Option<f64>,
    liveness_ms: Option<f64>,
    check_convergence: Option<bool>,
    max_events: Option<Spanned<u64>>,
}

fn ms(v: f64) -> u64 {
    (v * 1000.0).round().max(0.0) as u64
}

/// Reads and validates a scenario file.
pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ScenarioError {
        file: file.clone(),
        line: 0,
        col: 0,
        msg: format!("cannot read: {e}"),
    })?;
    let default_name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    parse(&text, &file, &default_name)
}

/// Parses scenario text; `file` names it in errors.
pub fn parse(text: &str, file: &str, default_name: &str) -> Result<Scenario, ScenarioError> {
    let at = |span: Option<std::ops::Range<usize>>, msg: String| {
        let (line, col) = span.map(|s| line_col(text, s.start)).unwrap_or((0, 0));
        ScenarioError { file: file.to_string(), line, col, msg }
    };
    let raw: File = toml::from_str(text).map_err(|e| {
        let mut msg = e.message().trim().to_string();
        if let Some(field) = e.span().and_then(|s| field_at(text, s.start)) {
            if !msg.contains(&format!("`{field}`")) {
                msg = format!("field `{field}`: {msg}");
            }
        }
        at(e.span(), msg)
    })?;

    // cluster
    let c = raw.cluster;
    let replicas = c.replicas.as_ref().map(|s| *s.get_ref()).unwrap_or(3);
    if !(1..=9).contains(&replicas) {
        return Err(at(c.replicas.map(|s| s.span()), "field `replicas`: must be 1 to 9".into()));
    }
    let sync_acks = match c.sync_acks.as_ref().map(|s| *s.get_ref()) {
        None => 1,
        Some(SyncAcks::Word(AllWord::All)) => replicas as usize - 1,
        Some(SyncAcks::Count(k)) if (k as usize) < replicas as usize => k as usize,
        Some(SyncAcks::Count(k)) => {
            return Err(at(
                c.sync_acks.map(|s| s.span()),
                format!(
                    "field `sync_acks`: {k} but only {} follower(s); use 0 to {} or \"all\"",
                    replicas - 1,
                    replicas - 1
                ),
            ))
        }
    };
    let d = Timing::default();
    let t = |v: Option<f64>, dflt: u64| v.map(ms).unwrap_or(dflt);
    let timing = Timing {
        heartbeat_us: t(c.heartbeat_ms, d.heartbeat_us).max(1),
        ping_us: t(c.ping_ms, d.ping_us).max(1),
        dead_after_us: t(c.dead_after_ms, d.dead_after_us),
        promote_timeout_us: t(c.promote_timeout_ms, d.promote_timeout_us),
        forward_retry_us: t(c.forward_retry_ms, d.forward_retry_us),
        request_timeout_us: t(c.request_timeout_ms, d.request_timeout_us),
    };
    let mut cluster = ClusterConfig::new(replicas, sync_acks);
    cluster.unsafe_failover = c.unsafe_failover.unwrap_or(false);
    if let Some(m) = c.log_rows_max {
        if *m.get_ref() < 16 {
            return Err(at(Some(m.span()), "field `log_rows_max`: must be at least 16".into()));
        }
        cluster.log_rows_max = *m.get_ref();
    }
    cluster.timing = timing;

    // network
    let n = raw.network;
    let prob = |v: Option<Spanned<f64>>, name: &str| -> Result<f64, ScenarioError> {
        match v {
            None => Ok(0.0),
            Some(s) if (0.0..=1.0).contains(s.get_ref()) => Ok(*s.get_ref()),
            Some(s) => Err(at(Some(s.span()), format!("field `{name}`: must be between 0 and 1"))),
        }
    };
    let delay_min_ms = n.delay_min_ms.as_ref().map(|s| *s.get_ref()).unwrap_or(0.1);
    let delay_mean_ms = n.delay_mean_ms.as_ref().map(|s| *s.get_ref()).unwrap_or(0.5);
    if delay_min_ms < 0.0 {
        return Err(at(
            n.delay_min_ms.map(|s| s.span()),
            "field `delay_min_ms`: must not be negative".into(),
        ));
    }
    if delay_mean_ms < delay_min_ms {
        return Err(at(
            n.delay_mean_ms.map(|s| s.span()),
            format!("field `delay_mean_ms`: {delay_mean_ms} is below delay_min_ms ({delay_min_ms})"),
        ));
    }
    let network = Network {
        delay_min_us: ms(delay_min_ms),
        delay_mean_us: ms(delay_mean_ms),
        distribution: n.distribution.unwrap_or(Distribution::Exponential),
        drop_probability: prob(n.drop_probability, "drop_probability")?,
        duplicate_probability: prob(n.duplicate_probability, "duplicate_probability")?,
        faults_until_us: n.faults_until_ms.map(ms),
    };
    let disk = Disk {
        write_min_us: raw.disk.write_min_ms.map(ms).unwrap_or(50),
        write_mean_us: raw.disk.write_mean_ms.map(ms).unwrap_or(100),
        torn_write_probability: prob(raw.disk.torn_write_probability, "torn_write_probability")?,
    };
    let drift_max = raw.clock.drift_max.unwrap_or(0.0);
    if !(0.0..=0.5).contains(&drift_max) {
        return Err(at(None, format!("field `clock.drift_max`: {drift_max} is not between 0 and 0.5")));
    }
    let skew_max_ms = raw.clock.skew_max_ms.unwrap_or(0.0);
    if !(0.0..=60_000.0).contains(&skew_max_ms) {
        return Err(at(None, format!("field `clock.skew_max_ms`: {skew_max_ms} is not between 0 and 60000")));
    }
    let clock = Clock { drift_max_ppm: (drift_max * 1e6).round() as u32, skew_max_us: ms(skew_max_ms) };

    // workload
    let w = raw.workload;
    let keys = w.keys.as_ref().map(|s| *s.get_ref()).unwrap_or(10);
    if keys == 0 {
        return Err(at(w.keys.map(|s| s.span()), "field `keys`: must be at least 1".into()));
    }
    let mix = match w.mix {
        None => Mix { set: 50, get: 50, del: 0 },
        Some(m) if m.get_ref().set + m.get_ref().get + m.get_ref().del == 0 => {
            return Err(at(Some(m.span()), "field `mix`: all weights are zero".into()))
        }
        Some(m) => *m.get_ref(),
    };
    let value_bytes_min = w.value_bytes_min.unwrap_or(4).max(1);
    let value_bytes_max = w.value_bytes_max.unwrap_or(16).max(value_bytes_min);
    let read_default: ReadMode = w.read.map(Into::into).unwrap_or_default();
    let mut groups = Vec::new();
    for g in w.groups {
        let script = match g.script {
            None => None,
            Some(lines) => {
                let mut ops = Vec::new();
                for l in lines {
                    let op = parse_command(l.get_ref())
                        .map_err(|e| at(Some(l.span()), format!("field `script`: {e}")))?;
                    ops.push(op);
                }
                Some(ops)
            }
        };
        groups.push(Group {
            clients: g.clients.unwrap_or(1),
            read: g.read.map(Into::into).unwrap_or(read_default),
            rate_per_s: g.rate_per_s.filter(|r| *r > 0.0),
            think_us: g.think_ms.map(ms).unwrap_or(0),
            start_us: g.start_ms.map(ms).unwrap_or(0),
            stop_us: g.stop_ms.map(ms),
            script,
        });
    }
    if groups.is_empty() {
        groups.push(Group {
            clients: w.clients.unwrap_or(3),
            read: read_default,
            rate_per_s: None,
            think_us: 0,
            start_us: 0,
            stop_us: None,
            script: None,
        });
    }
    let workload = Workload {
        duration_us: w.duration_ms.map(ms).unwrap_or(2_000_000),
        keys,
        zipf_exponent: w.zipf_exponent,
        value_bytes_min,
        value_bytes_max,
        mix,
        groups,
    };
    let client_count: u32 = workload.groups.iter().map(|g| g.clients).sum();

    // faults
    let node = |s: &Spanned<String>| -> Result<Node, ScenarioError> {
        parse_node(s.get_ref(), replicas, client_count).map_err(|e| at(Some(s.span()), e))
    };
    let nodes = |v: &[Spanned<String>]| v.iter().map(node).collect::<Result<Vec<_>, _>>();
    let mut faults = Vec::new();
    for f in raw.faults {
        let a = f.action.get_ref().as_str();
        let need_node = || -> Result<Node, ScenarioError> {
            match &f.node {
                Some(n) => node(n),
                None => Err(at(Some(f.action.span()), format!("field `node`: action `{a}` needs a node"))),
            }
        };
        let action = match a {
            "crash" => Action::Crash(need_node()?),
            "restart" => Action::Restart(need_node()?),
            "partition" => {
                let Some(gs) = &f.groups else {
                    return Err(at(Some(f.action.span()), "field `groups`: a partition needs groups".into()));
                };
                Action::Partition(gs.iter().map(|g| nodes(g)).collect::<Result<_, _>>()?)
            }
            "partition_one_way" => match (&f.from, &f.to) {
                (Some(from), Some(to)) => Action::PartitionOneWay { from: nodes(from)?, to: nodes(to)? },
                _ => {
                    return Err(at(Some(f.action.span()), "fields `from` and `to`: a one-way partition needs both".into()))
                }
            },
            "heal" => Action::Heal,
            "corrupt" => match need_node()? {
                Node::Replica(r) if f.last_record == Some(true) => Action::CorruptLast(r),
                Node::Replica(r) => Action::Corrupt(r),
                _ => return Err(at(f.node.as_ref().map(|n| n.span()), "field `node`: only a replica's disk can be corrupted".into())),
            },
            "pause" => {
                let node = need_node()?;
                if !matches!(node, Node::Replica(_) | Node::Balancer | Node::Leader) {
                    return Err(at(f.node.as_ref().map(|n| n.span()), "field `node`: only a replica or the balancer can be paused".into()));
                }
                let Some(for_ms) = f.for_ms.filter(|v| v.is_finite() && *v > 0.0 && *v <= 600_000.0) else {
                    return Err(at(Some(f.action.span()), "field `for_ms`: a pause needs a length in milliseconds (0 to 600000)".into()));
                };
                Action::Pause { node, for_us: ms(for_ms) }
            }
            other => {
                return Err(at(
                    Some(f.action.span()),
                    format!("field `action`: unknown action `{other}` (expected crash, restart, partition, partition_one_way, heal, corrupt or pause)"),
                ))
            }
        };
        if let Action::Crash(Node::Clients | Node::Client(_))
        | Action::Restart(Node::Clients | Node::Client(_)) = action
        {
            return Err(at(
                Some(f.action.span()),
                "field `node`: only replicas and the balancer (lb) crash".into(),
            ));
        }
        faults.push(Fault { at_us: ms(f.at_ms), action });
    }
    faults.sort_by_key(|f| f.at_us);

    let run = Run {
        quiet_us: raw.run.quiet_ms.map(ms).unwrap_or(2_000_000),
        liveness_us: raw.run.liveness_ms.map(ms).unwrap_or(5_000_000),
        check_convergence: raw.run.check_convergence.unwrap_or(true),
        max_events: match raw.run.max_events {
            Some(m) if *m.get_ref() == 0 => {
                return Err(at(Some(m.span()), "field `max_events`: must be at least 1".into()))
            }
            m => m.map(|m| *m.get_ref()),
        },
    };
    cluster.bugs = raw.bugs;
    Ok(Scenario {
        name: raw.name.unwrap_or_else(|| default_name.to_string()),
        about: leading_comment(text),
        cluster,
        network,
        disk,
        clock,
        workload,
        faults,
        run,
    })
}

/// The comment lines a file opens with (before its first blank line or
/// setting), `#` and one space taken off each.
fn leading_comment(text: &str) -> String {
    let mut about = String::new();
    for line in text.lines() {
        let Some(c) = line.trim_start().strip_prefix('#') else { break };
        about.push_str(c.strip_prefix(' ').unwrap_or(c).trim_end());
        about.push('\n');
    }
    about
}

impl Scenario {
    /// The scenario as a scenario file: [`parse`] reads it back to an equal
    /// `Scenario`. Every field is written out, defaults included, so the
    /// file keeps meaning the same if a default changes.
    pub fn to_toml(&self) -> String {
        self.write_toml(false)
    }

    /// The same, leaving out every field at its default (what `kvsim
    /// shrink` writes: short files to read and check in). It parses back
    /// to an equal `Scenario` as long as the defaults stay as they are.
    pub fn to_toml_compact(&self) -> String {
        self.write_toml(true)
    }

    fn write_toml(&self, compact: bool) -> String {
        use std::fmt::Write as _;
        let d = parse("", "defaults", "").expect("the empty scenario is valid");
        let mut t = String::new();
        if !compact {
            // The leading comment comes back as the same `about`.
            for l in self.about.lines() {
                let _ = writeln!(t, "{}", if l.is_empty() { "#".to_string() } else { format!("# {l}") });
            }
        }
        // A section: its lines, each kept unless compact and at its default.
        let section = |t: &mut String, header: &str, lines: Vec<(String, bool)>| {
            let kept: Vec<String> =
                lines.into_iter().filter(|(_, dflt)| !compact || !dflt).map(|(l, _)| l).collect();
            if !kept.is_empty() || (!compact && !header.is_empty()) {
                let _ = writeln!(t, "\n{header}");
                for l in kept {
                    let _ = writeln!(t, "{l}");
                }
            }
        };
        let line = |l: String, dflt: bool| (l, dflt);
        let _ = writeln!(t, "name = {}", quote(&self.name));
        let (c, dc) = (&self.cluster, &d.cluster);
        let (tm, dt) = (&c.timing, &dc.timing);
        section(
            &mut t,
            "[cluster]",
            vec![
                line(format!("replicas = {}", c.replicas.len()), c.replicas == dc.replicas),
                line(format!("sync_acks = {}", c.sync_acks), c.sync_acks == dc.sync_acks),
                line(
                    format!("unsafe_failover = {}", c.unsafe_failover),
                    c.unsafe_failover == dc.unsafe_failover,
                ),
                line(format!("log_rows_max = {}", c.log_rows_max), c.log_rows_max == dc.log_rows_max),
                line(
                    format!("heartbeat_ms = {}", ms_text(tm.heartbeat_us)),
                    tm.heartbeat_us == dt.heartbeat_us,
                ),
                line(format!("ping_ms = {}", ms_text(tm.ping_us)), tm.ping_us == dt.ping_us),
                line(
                    format!("dead_after_ms = {}", ms_text(tm.dead_after_us)),
                    tm.dead_after_us == dt.dead_after_us,
                ),
                line(
                    format!("promote_timeout_ms = {}", ms_text(tm.promote_timeout_us)),
                    tm.promote_timeout_us == dt.promote_timeout_us,
                ),
                line(
                    format!("forward_retry_ms = {}", ms_text(tm.forward_retry_us)),
                    tm.forward_retry_us == dt.forward_retry_us,
                ),
                line(
                    format!("request_timeout_ms = {}", ms_text(tm.request_timeout_us)),
                    tm.request_timeout_us == dt.request_timeout_us,
                ),
            ],
        );
        let (n, dn) = (&self.network, &d.network);
        let dist = match n.distribution {
            Distribution::Constant => "constant",
            Distribution::Uniform => "uniform",
            Distribution::Exponential => "exponential",
            Distribution::Pareto => "pareto",
        };
        let mut lines = vec![
            line(format!("delay_min_ms = {}", ms_text(n.delay_min_us)), n.delay_min_us == dn.delay_min_us),
            line(
                format!("delay_mean_ms = {}", ms_text(n.delay_mean_us)),
                n.delay_mean_us == dn.delay_mean_us,
            ),
            line(format!("distribution = \"{dist}\""), n.distribution == dn.distribution),
            line(
                format!("drop_probability = {}", n.drop_probability),
                n.drop_probability == dn.drop_probability,
            ),
            line(
                format!("duplicate_probability = {}", n.duplicate_probability),
                n.duplicate_probability == dn.duplicate_probability,
            ),
        ];
        if let Some(u) = n.faults_until_us {
            lines.push(line(format!("faults_until_ms = {}", ms_text(u)), false));
        }
        section(&mut t, "[network]", lines);
        let (k, dk) = (&self.disk, &d.disk);
        section(
            &mut t,
            "[disk]",
            vec![
                line(
                    format!("write_min_ms = {}", ms_text(k.write_min_us)),
                    k.write_min_us == dk.write_min_us,
                ),
                line(
                    format!("write_mean_ms = {}", ms_text(k.write_mean_us)),
                    k.write_mean_us == dk.write_mean_us,
                ),
                line(
                    format!("torn_write_probability = {}", k.torn_write_probability),
                    k.torn_write_probability == dk.torn_write_probability,
                ),
            ],
        );
        section(
            &mut t,
            "[clock]",
            vec![
                line(
                    format!("drift_max = {}", self.clock.drift_max_ppm as f64 / 1e6),
                    self.clock.drift_max_ppm == 0,
                ),
                line(
                    format!("skew_max_ms = {}", ms_text(self.clock.skew_max_us)),
                    self.clock.skew_max_us == 0,
                ),
            ],
        );
        let (w, dw) = (&self.workload, &d.workload);
        let mut lines = vec![
            line(format!("duration_ms = {}", ms_text(w.duration_us)), w.duration_us == dw.duration_us),
            line(format!("keys = {}", w.keys), w.keys == dw.keys),
        ];
        if let Some(z) = w.zipf_exponent {
            lines.push(line(format!("zipf_exponent = {z}"), false));
        }
        lines.extend([
            line(format!("value_bytes_min = {}", w.value_bytes_min), w.value_bytes_min == dw.value_bytes_min),
            line(format!("value_bytes_max = {}", w.value_bytes_max), w.value_bytes_max == dw.value_bytes_max),
            line(
                format!("mix = {{ set = {}, get = {}, del = {} }}", w.mix.set, w.mix.get, w.mix.del),
                w.mix == dw.mix,
            ),
        ]);
        section(&mut t, "[workload]", lines);
        for g in &w.groups {
            let read = match g.read {
                ReadMode::Any => "any",
                ReadMode::Session => "session",
                ReadMode::Leader => "leader",
            };
            let mut lines = vec![
                line(format!("clients = {}", g.clients), g.clients == 1),
                line(format!("read = \"{read}\""), g.read == ReadMode::default()),
            ];
            if let Some(r) = g.rate_per_s {
                lines.push(line(format!("rate_per_s = {r}"), false));
            }
            lines.push(line(format!("think_ms = {}", ms_text(g.think_us)), g.think_us == 0));
            lines.push(line(format!("start_ms = {}", ms_text(g.start_us)), g.start_us == 0));
            if let Some(s) = g.stop_us {
                lines.push(line(format!("stop_ms = {}", ms_text(s)), false));
            }
            if let Some(script) = &g.script {
                let ops: Vec<String> = script
                    .iter()
                    .map(|op| match op {
                        Op::Get { key } => quote(&format!("get {key}")),
                        Op::Set { key, value } => quote(&format!("set {key}={value}")),
                        Op::Del { key } => quote(&format!("del {key}")),
                    })
                    .collect();
                lines.push(line(format!("script = [{}]", ops.join(", ")), false));
            }
            // A group is always written: groups replace the default one.
            let _ = writeln!(t, "\n[[workload.groups]]");
            for (l, dflt) in lines {
                if !compact || !dflt {
                    let _ = writeln!(t, "{l}");
                }
            }
        }
        let nodes = |v: &[Node]| v.iter().map(|n| format!("\"{n}\"")).collect::<Vec<_>>().join(", ");
        for f in &self.faults {
            let _ = writeln!(t, "\n[[faults]]");
            let _ = writeln!(t, "at_ms = {}", ms_text(f.at_us));
            match &f.action {
                Action::Crash(n) => {
                    let _ = writeln!(t, "action = \"crash\"\nnode = \"{n}\"");
                }
                Action::Restart(n) => {
                    let _ = writeln!(t, "action = \"restart\"\nnode = \"{n}\"");
                }
                Action::Partition(groups) => {
                    let gs: Vec<String> = groups.iter().map(|g| format!("[{}]", nodes(g))).collect();
                    let _ = writeln!(t, "action = \"partition\"\ngroups = [{}]", gs.join(", "));
                }
                Action::PartitionOneWay { from, to } => {
                    let _ = writeln!(
                        t,
                        "action = \"partition_one_way\"\nfrom = [{}]\nto = [{}]",
                        nodes(from),
                        nodes(to)
                    );
                }
                Action::Heal => {
                    let _ = writeln!(t, "action = \"heal\"");
                }
                Action::Corrupt(r) => {
                    let _ = writeln!(t, "action = \"corrupt\"\nnode = \"r{r}\"");
                }
                Action::CorruptLast(r) => {
                    let _ = writeln!(t, "action = \"corrupt\"\nnode = \"r{r}\"\nlast_record = true");
                }
                Action::Pause { node, for_us } => {
                    let _ =
                        writeln!(t, "action = \"pause\"\nnode = \"{node}\"\nfor_ms = {}", ms_text(*for_us));
                }
            }
        }
        let (r, dr) = (&self.run, &d.run);
        let mut lines = vec![
            line(format!("quiet_ms = {}", ms_text(r.quiet_us)), r.quiet_us == dr.quiet_us),
            line(format!("liveness_ms = {}", ms_text(r.liveness_us)), r.liveness_us == dr.liveness_us),
            line(
                format!("check_convergence = {}", r.check_convergence),
                r.check_convergence == dr.check_convergence,
            ),
        ];
        if let Some(m) = r.max_events {
            lines.push(line(format!("max_events = {m}"), false));
        }
        section(&mut t, "[run]", lines);
        let bugs = bugs_on(&c.bugs);
        if !bugs.is_empty() {
            let _ = writeln!(t, "\n[bugs]");
            for b in bugs {
                let _ = writeln!(t, "{b} = true");
            }
        }
        t
    }
}

/// The names of the bugs switched on, as in a scenario's `[bugs]` table.
pub fn bugs_on(bugs: &kvstore::config::Bugs) -> Vec<String> {
    match toml::Value::try_from(bugs) {
        Ok(toml::Value::Table(table)) => {
            table.into_iter().filter(|(_, v)| v.as_bool() == Some(true)).map(|(k, _)| k).collect()
        }
        _ => Vec::new(),
    }
}

/// Switches on the bug named as in a scenario's `[bugs]` table; an unknown
/// name is an error listing the known ones.
pub fn plant_bug(bugs: &mut kvstore::config::Bugs, name: &str) -> Result<(), String> {
    let mut table = match toml::Value::try_from(&*bugs) {
        Ok(toml::Value::Table(t)) => t,
        _ => return Err("bugs do not serialize".into()),
    };
    if !table.contains_key(name) {
        let known: Vec<&str> = table.keys().map(String::as_str).collect();
        return Err(format!("unknown bug `{name}` (known: {})", known.join(", ")));
    }
    table.insert(name.to_string(), toml::Value::Boolean(true));
    *bugs = toml::Value::Table(table).try_into().map_err(|e| format!("bug `{name}`: {e}"))?;
    Ok(())
}

/// Microseconds as milliseconds, exactly (`1.5`, `30`, `0.001`).
fn ms_text(us: u64) -> String {
    if us % 1000 == 0 {
        format!("{}", us / 1000)
    } else {
        let frac = format!("{:03}", us % 1000);
        format!("{}.{}", us / 1000, frac.trim_end_matches('0'))
    }
}

/// A TOML basic string.
fn quote(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// `r1`, `lb`, `c3`, `clients` or `leader`.
fn parse_node(s: &str, replicas: u8, clients: u32) -> Result<Node, String> {
    let bad =
        || format!("unknown node `{s}` (expected lb, r1..r{replicas}, c1..c{clients}, clients or leader)");
    match s {
        "lb" | "balancer" => return Ok(Node::Balancer),
        "clients" => return Ok(Node::Clients),
        "leader" => return Ok(Node::Leader),
        _ => {}
    }
    if let Some(n) = s.strip_prefix('r') {
        let n: u8 = n.parse().map_err(|_| bad())?;
        if n >= 1 && n <= replicas {
            return Ok(Node::Replica(n));
        }
    }
    if let Some(n) = s.strip_prefix('c') {
        let n: u32 = n.parse().map_err(|_| bad())?;
        if n >= 1 && n <= clients {
            return Ok(Node::Client(n));
        }
    }
    Err(bad())
}

/// The original client's command language: `set key=value`, `get key`,
/// `del key`. Values may contain spaces and `=`.
pub fn parse_command(line: &str) -> Result<Op, String> {
    let line = line.trim();
    let (cmd, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
    let rest = rest.trim_start();
    let op = match cmd.to_ascii_lowercase().as_str() {
        "set" => {
            let Some((k, v)) = rest.split_once('=') else {
                return Err(format!("`{line}`: expected set key=value"));
            };
            Op::Set { key: k.trim().to_string(), value: v.to_string() }
        }
        "get" => Op::Get { key: rest.trim().to_string() },
        "del" => Op::Del { key: rest.trim().to_string() },
        "" => return Err("empty command".into()),
        other => return Err(format!("unknown command `{other}` (expected set, get or del)")),
    };
    kvstore::validate_op(&op).map_err(|e| format!("`{line}`: {e}"))?;
    Ok(op)
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.len() - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
    (line, col)
}

/// The key on the line holding `offset`, if that line is `key = ...`.
fn field_at(text: &str, offset: usize) -> Option<String> {
    let start = text[..offset.min(text.len())].rfind('\n').map(|i| i + 1).unwrap_or(0);
    let line = text[start..].lines().next()?;
    let (k, _) = line.split_once('=')?;
    let k = k.trim();
    (!k.is_empty() && k.chars().all(|c| c.is_alphanumeric() || c == '_')).then(|| k.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        parse(text, "t.toml", "t").unwrap_err().to_string()
    }

    #[test]
    fn empty_file_is_all_defaults() {
        let s = parse("", "t.toml", "t").unwrap();
        assert_eq!(s.cluster.replicas.len(), 3);
        assert_eq!(s.cluster.sync_acks, 1);
        assert_eq!(s.workload.groups.len(), 1);
        assert_eq!(s.workload.groups[0].read, ReadMode::Session);
    }

    #[test]
    fn errors_name_line_and_field() {
        let e = err("[network]\ndelay_mean_ms = \"slow\"\n");
        assert!(e.starts_with("t.toml:2:"), "{e}");
        assert!(e.contains("delay_mean_ms"), "{e}");
        let e = err("[cluster]\nreplicas = 3\nsyncacks = 1\n");
        assert!(e.starts_with("t.toml:3:"), "{e}");
        assert!(e.contains("syncacks"), "{e}");
        let e = err("[[faults]]\nat_ms = 5\naction = \"crash\"\nnode = \"r7\"\n");
        assert!(e.starts_with("t.toml:4:"), "{e}");
        assert!(e.contains("r7"), "{e}");
        let e = err("[cluster]\nsync_acks = 3\n");
        assert!(e.contains("sync_acks"), "{e}");
        let e = err("[network]\ndrop_probability = 1.5\n");
        assert!(e.starts_with("t.toml:2:") && e.contains("drop_probability"), "{e}");
        let e = err("[[workload.groups]]\nscript = [\"set a=1\", \"fly away\"]\n");
        assert!(e.starts_with("t.toml:2:") && e.contains("fly"), "{e}");
        let e = err("this is not toml at all");
        assert!(e.starts_with("t.toml:1:"), "{e}");
    }

    #[test]
    fn every_scenario_file_survives_the_round_trip_through_to_toml() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios");
        let mut files = Vec::new();
        for dir in [root.clone(), root.join("regressions")] {
            for e in std::fs::read_dir(&dir).unwrap() {
                let p = e.unwrap().path();
                if p.extension().is_some_and(|x| x == "toml") {
                    files.push(p);
                }
            }
        }
        assert!(files.len() >= 20, "{files:?}");
        for f in files {
            let sc = load(&f).unwrap_or_else(|e| panic!("{e}"));
            let text = sc.to_toml();
            let back =
                parse(&text, "back.toml", "back").unwrap_or_else(|e| panic!("{}: {e}\n{text}", f.display()));
            assert_eq!(back, sc, "{}:\n{text}", f.display());
        }
    }

    #[test]
    fn scripts_odd_values_and_bugs_survive_the_round_trip() {
        let text = r#"
name = "odd \"one\""
[cluster]
replicas = 5
sync_acks = "all"
[network]
delay_mean_ms = 0.3333
drop_probability = 0.1
faults_until_ms = 1234.5
[clock]
drift_max = 0.012345
[workload]
zipf_exponent = 1.25
[[workload.groups]]
rate_per_s = 33.3
script = ["set a=b = c 'd' \"e\"", "get a", "del a"]
[[faults]]
at_ms = 10.001
action = "pause"
node = "lb"
for_ms = 0.5
[[faults]]
at_ms = 15
action = "corrupt"
node = "r2"
last_record = true
[[faults]]
at_ms = 20
action = "partition_one_way"
from = ["r1", "c1"]
to = ["clients"]
[run]
max_events = 1000
[bugs]
cut_tail_trusted = true
"#;
        let sc = parse(text, "t.toml", "t").unwrap();
        assert_eq!(sc.network.faults_until_us, Some(1_234_500));
        assert_eq!(sc.run.max_events, Some(1000));
        let again = parse(&sc.to_toml(), "t.toml", "t").unwrap();
        assert_eq!(again, sc, "{}", sc.to_toml());
        let again = parse(&sc.to_toml_compact(), "t.toml", "t").unwrap();
        assert_eq!(again, sc, "{}", sc.to_toml_compact());
        assert!(!sc.to_toml_compact().contains("heartbeat_ms"));
        assert_eq!(bugs_on(&sc.cluster.bugs), vec!["cut_tail_trusted".to_string()]);
        assert!(err("[run]\nmax_events = 0\n").contains("max_events"));
        let mut b = kvstore::config::Bugs::default();
        plant_bug(&mut b, "epochs_promised_twice").unwrap();
        assert!(b.epochs_promised_twice);
        assert!(plant_bug(&mut b, "no_such_bug").unwrap_err().contains("epochs_promised_twice"));
    }

    #[test]
    fn commands_parse_like_the_original() {
        assert_eq!(
            parse_command("set stephen=zerfas").unwrap(),
            Op::Set { key: "stephen".into(), value: "zerfas".into() }
        );
        assert_eq!(
            parse_command("set a=b = c d").unwrap(),
            Op::Set { key: "a".into(), value: "b = c d".into() }
        );
        assert_eq!(parse_command("get stephen").unwrap(), Op::Get { key: "stephen".into() });
        assert!(parse_command("").is_err());
        assert!(parse_command("set novalue").is_err());
        assert!(parse_command("get").is_err());
    }
}
