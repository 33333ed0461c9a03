//! `kvnode bench`: closed-loop load from many clients, one thread and one
//! connection each, with latencies in HDR histograms.

use super::client::{describe_error, SyncClient};
use super::random_u64;
use super::resp::client::{RespClient, Value};
use crate::types::{ClientId, Op, ReadMode};
use hdrhistogram::Histogram;
use std::fmt::Write as _;
use std::io;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

/// Latencies are recorded in microseconds up to this (an hour).
const MAX_LATENCY_US: u64 = 3_600_000_000;
/// Keys prefilled at most before a benchmark that reads.
const MAX_PREFILL_KEYS: u64 = 1_000_000;

#[derive(Clone, Debug)]
pub struct BenchOptions {
    pub connect: String,
    pub clients: usize,
    /// Run this long (ignored when `ops` is set).
    pub duration: Duration,
    /// Run exactly this many operations in total.
    pub ops: Option<u64>,
    pub mix: Mix,
    pub value_size: usize,
    pub keys: u64,
    pub read: ReadMode,
    /// Print a progress line to stderr every second.
    pub progress: bool,
    /// The client password, if the balancer wants one.
    pub password: Option<super::auth::Secret>,
    /// Speak RESP2 to `connect` (a kvstore balancer's RESP port, or Redis)
    /// instead of the native protocol.
    pub resp: bool,
    /// With `resp`: send `WAIT n 0` after every SET (Redis's way to wait
    /// for replicas), counting the pair as one operation.
    pub wait: Option<u32>,
}

/// Parses `10`, `2.5`, `10s`, `500ms` or `1m` (a bare number is seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, scale) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else {
        (s, 1.0)
    };
    let secs =
        num.trim().parse::<f64>().map_err(|_| format!("'{s}' is not a duration (try 10s or 500ms)"))? * scale;
    if !secs.is_finite() || secs <= 0.0 || secs > 1e7 {
        return Err(format!("'{s}' is not a positive duration"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Weights of each kind of operation, e.g. `set:50,get:50`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mix {
    pub set: u32,
    pub get: u32,
    pub del: u32,
}

impl FromStr for Mix {
    type Err = String;
    fn from_str(s: &str) -> Result<Mix, String> {
        let mut mix = Mix { set: 0, get: 0, del: 0 };
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (kind, weight) =
                part.split_once(':').ok_or_else(|| format!("'{part}' is not KIND:WEIGHT"))?;
            let weight: u32 = weight.trim().parse().map_err(|_| format!("bad weight in '{part}'"))?;
            let slot = match kind.trim() {
                "set" => &mut mix.set,
                "get" => &mut mix.get,
                "del" => &mut mix.del,
                k => return Err(format!("unknown operation '{k}' (expected set, get or del)")),
            };
            *slot = slot.checked_add(weight).ok_or_else(|| too_heavy(s))?;
        }
        mix.set.checked_add(mix.get).and_then(|t| t.checked_add(mix.del)).ok_or_else(|| too_heavy(s))?;
        if mix.total() == 0 {
            return Err("the mix has no operations".into());
        }
        Ok(mix)
    }
}

fn too_heavy(s: &str) -> String {
    format!("the weights in '{s}' add up to more than {} (try percentages, e.g. set:50,get:50)", u32::MAX)
}

impl std::fmt::Display for Mix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = [("set", self.set), ("get", self.get), ("del", self.del)]
            .iter()
            .filter(|(_, w)| *w > 0)
            .map(|(k, w)| format!("{k}:{w}"))
            .collect();
        f.write_str(&parts.join(","))
    }
}

impl Mix {
    fn total(&self) -> u32 {
        self.set + self.get + self.del
    }
    fn pick(&self, r: u64) -> Kind {
        let x = (r % self.total() as u64) as u32;
        if x < self.set {
            Kind::Set
        } else if x < self.set + self.get {
            Kind::Get
        } else {
            Kind::Del
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Set = 0,
    Get = 1,
    Del = 2,
}
const KINDS: [(&str, Kind); 3] = [("set", Kind::Set), ("get", Kind::Get), ("del", Kind::Del)];

/// splitmix64: small, fast, good enough to pick keys.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid bounds")
}

/// What one client thread measured.
struct Tally {
    hist: [Histogram<u64>; 3],
    errors: u64,
    first_error: Option<String>,
}

pub struct Report {
    pub opts: BenchOptions,
    pub elapsed: Duration,
    pub ok: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    all: Histogram<u64>,
    by_kind: Vec<(&'static str, Histogram<u64>)>,
}

/// Runs the benchmark; `stop` ends it early (a signal), letting every call
/// in flight finish.
pub fn run(opts: BenchOptions, stop: Arc<AtomicBool>) -> io::Result<Report> {
    if opts.clients == 0 || opts.keys == 0 {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "need at least one client and one key"));
    }
    let value: Arc<str> = "x".repeat(opts.value_size).into();
    let mut clients = Vec::with_capacity(opts.clients);
    for _ in 0..opts.clients {
        let cannot =
            |e: io::Error| io::Error::new(e.kind(), format!("cannot connect to {}: {e}", opts.connect));
        if opts.resp {
            let mut c = RespClient::connect(&opts.connect, Duration::from_secs(1)).map_err(cannot)?;
            if let Some(p) = &opts.password {
                resp_ok(c.call(&[b"AUTH", p.bytes()]))?;
            }
            if opts.read != ReadMode::Session {
                resp_ok(c.call(&[b"KVSTORE.READMODE", opts.read.to_string().as_bytes()]))?;
            }
            clients.push(BenchClient::Resp(c, opts.wait));
            continue;
        }
        let mut c = SyncClient::new(&opts.connect, ClientId(random_u64()), opts.read)
            .with_password(opts.password.clone());
        c.connect().map_err(cannot)?;
        clients.push(BenchClient::Native(Box::new(c)));
    }

    let prefill = if opts.mix.get > 0 { opts.keys.min(MAX_PREFILL_KEYS) } else { 0 };
    let barrier = Arc::new(Barrier::new(opts.clients + 1));
    let budget = Arc::new(AtomicI64::new(opts.ops.map_or(i64::MAX, |n| n as i64)));
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    // Every thread holds a sender; the channel disconnects when all are done.
    let (running, all_done) = crossbeam_channel::bounded::<()>(0);
    let n = opts.clients as u64;

    let mut threads = Vec::new();
    for (i, mut client) in clients.into_iter().enumerate() {
        let (opts, value, barrier, budget, done, failed, stop, running) = (
            opts.clone(),
            value.clone(),
            barrier.clone(),
            budget.clone(),
            done.clone(),
            failed.clone(),
            stop.clone(),
            running.clone(),
        );
        threads.push(std::thread::Builder::new().name(format!("bench-{i}")).spawn(move || {
            // Reads of keys nobody wrote would measure nothing: write them first.
            let mut k = i as u64;
            while k < prefill && !stop.load(Ordering::Relaxed) {
                let _ = client.call(Op::Set { key: format!("key{k}"), value: value.to_string() });
                k += n;
            }
            barrier.wait();
            let end = Instant::now() + opts.duration;
            let mut rng = Rng(random_u64());
            let mut t = Tally { hist: [new_hist(), new_hist(), new_hist()], errors: 0, first_error: None };
            loop {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                if opts.ops.is_some() {
                    if budget.fetch_sub(1, Ordering::Relaxed) <= 0 {
                        break;
                    }
                } else if Instant::now() >= end {
                    break;
                }
                let kind = opts.mix.pick(rng.next());
                let key = format!("key{}", rng.next() % opts.keys);
                let op = match kind {
                    Kind::Set => Op::Set { key, value: value.to_string() },
                    Kind::Get => Op::Get { key },
                    Kind::Del => Op::Del { key },
                };
                let began = Instant::now();
                let result = client.call(op);
                let us = began.elapsed().as_micros() as u64;
                match result {
                    Ok(()) => {
                        t.hist[kind as usize].saturating_record(us.max(1));
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        t.errors += 1;
                        failed.fetch_add(1, Ordering::Relaxed);
                        t.first_error.get_or_insert(e);
                    }
                }
            }
            drop(running);
            t
        })?);
    }

    if prefill > 0 && opts.progress {
        eprintln!("prefilling {prefill} keys...");
    }
    drop(running);
    barrier.wait();
    let started = Instant::now();
    if opts.progress {
        let mut last = (started, 0u64);
        let mut tick = started + Duration::from_secs(1);
        // One line per second until every client thread has finished.
        while let Err(crossbeam_channel::RecvTimeoutError::Timeout) = all_done.recv_deadline(tick) {
            let now = Instant::now();
            let ops = done.load(Ordering::Relaxed);
            let rate = (ops - last.1) as f64 / now.duration_since(last.0).as_secs_f64();
            eprintln!(
                "[{:5.1}s] {:>8.0} ops/s  {:>9} ops  {} errors",
                now.duration_since(started).as_secs_f64(),
                rate,
                ops,
                failed.load(Ordering::Relaxed)
            );
            last = (now, ops);
            tick += Duration::from_secs(1);
        }
    }
    let mut tallies = Vec::new();
    for t in threads {
        tallies.push(t.join().map_err(|_| io::Error::other("a bench thread panicked"))?);
    }
    let elapsed = started.elapsed();

    let mut all = new_hist();
    let mut by_kind: Vec<(&'static str, Histogram<u64>)> =
        KINDS.iter().map(|(name, _)| (*name, new_hist())).collect();
    let (mut errors, mut first_error) = (0, None);
    for t in tallies {
        for (i, h) in t.hist.iter().enumerate() {
            all.add(h).expect("same bounds");
            by_kind[i].1.add(h).expect("same bounds");
        }
        errors += t.errors;
        first_error = first_error.or(t.first_error);
    }
    by_kind.retain(|(_, h)| !h.is_empty());
    Ok(Report { ok: all.len(), errors, first_error, elapsed, all, by_kind, opts })
}

/// One benchmark connection, either protocol.
enum BenchClient {
    Native(Box<SyncClient>),
    /// With the `WAIT n` to send after each SET.
    Resp(RespClient, Option<u32>),
}

impl BenchClient {
    /// One operation; the error as a line for the report.
    fn call(&mut self, op: Op) -> Result<(), String> {
        match self {
            BenchClient::Native(c) => {
                let c = c.call(op);
                c.result.as_ref().map(|_| ()).map_err(|e| format!("{} -> {}", c.op, describe_error(&c.op, e)))
            }
            BenchClient::Resp(c, wait) => {
                let shown = op.to_string();
                let fail = |e: String| format!("{shown} -> {e}");
                let reply = match &op {
                    Op::Set { key, value } => {
                        c.send(&[b"SET", key.as_bytes(), value.as_bytes()])
                            .map_err(|e| fail(e.to_string()))?;
                        if let Some(n) = wait {
                            c.send(&[b"WAIT", n.to_string().as_bytes(), b"0"])
                                .map_err(|e| fail(e.to_string()))?;
                        }
                        c.flush().and_then(|()| c.read()).map_err(|e| fail(e.to_string()))?
                    }
                    Op::Get { key } => c.call(&[b"GET", key.as_bytes()]).map_err(|e| fail(e.to_string()))?,
                    Op::Del { key } => c.call(&[b"DEL", key.as_bytes()]).map_err(|e| fail(e.to_string()))?,
                };
                if let Value::Error(e) = reply {
                    return Err(fail(e));
                }
                if let (Op::Set { .. }, Some(n)) = (&op, wait) {
                    match c.read().map_err(|e| fail(e.to_string()))? {
                        Value::Int(got) if got >= i64::from(*n) => {}
                        other => return Err(fail(format!("WAIT {n} answered {other:?}"))),
                    }
                }
                Ok(())
            }
        }
    }
}

/// An `+OK` reply, or the error it is.
fn resp_ok(r: io::Result<Value>) -> io::Result<()> {
    match r? {
        Value::Simple(_) => Ok(()),
        other => Err(io::Error::other(format!("refused: {other:?}"))),
    }
}

const PERCENTILES: [(&str, f64); 4] = [("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p99.9", 99.9)];

fn show_us(us: u64) -> String {
    if us < 1000 {
        format!("{us}µs")
    } else if us < 1_000_000 {
        format!("{:.2}ms", us as f64 / 1000.0)
    } else {
        format!("{:.2}s", us as f64 / 1e6)
    }
}

impl Report {
    pub fn throughput(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn percentile_us(&self, p: f64) -> u64 {
        self.all.value_at_quantile(p / 100.0)
    }

    fn latency_line(h: &Histogram<u64>) -> String {
        let mut s = String::new();
        for (name, p) in PERCENTILES {
            let _ = write!(s, "{name} {:<9} ", show_us(h.value_at_quantile(p / 100.0)));
        }
        let _ = write!(s, "max {}", show_us(h.max()));
        s
    }

    pub fn text(&self) -> String {
        let o = &self.opts;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "kvnode bench{}: {} clients, mix {}, read {}, {}-byte values, {} keys, {:.1}s",
            match (o.resp, o.wait) {
                (true, Some(n)) => format!(" (RESP, WAIT {n} after each SET)"),
                (true, None) => " (RESP)".to_string(),
                _ => String::new(),
            },
            o.clients,
            o.mix,
            o.read,
            o.value_size,
            o.keys,
            self.elapsed.as_secs_f64()
        );
        let _ = writeln!(s, "ops         {} ok, {} errors", self.ok, self.errors);
        if let Some(e) = &self.first_error {
            let _ = writeln!(s, "first error {e}");
        }
        let _ = writeln!(s, "throughput  {:.0} ops/s", self.throughput());
        let _ = writeln!(s, "latency     {}", Self::latency_line(&self.all));
        if self.by_kind.len() > 1 {
            for (name, h) in &self.by_kind {
                let _ = writeln!(s, "  {name:<9} {}  ({} ops)", Self::latency_line(h), h.len());
            }
        }
        s
    }

    pub fn json(&self) -> String {
        let o = &self.opts;
        let lat = |h: &Histogram<u64>| {
            let mut s = String::from("{");
            for (name, p) in PERCENTILES {
                let _ = write!(s, "\"{name}\":{},", h.value_at_quantile(p / 100.0));
            }
            let _ = write!(s, "\"max\":{},\"mean\":{:.1},\"count\":{}}}", h.max(), h.mean(), h.len());
            s
        };
        let mut kinds = String::new();
        for (i, (name, h)) in self.by_kind.iter().enumerate() {
            let _ = write!(kinds, "{}\"{name}\":{}", if i > 0 { "," } else { "" }, lat(h));
        }
        format!(
            "{{\"clients\":{},\"mix\":\"{}\",\"read\":\"{}\",\"value_size\":{},\"keys\":{},\"elapsed_s\":{:.3},\"ok\":{},\"errors\":{},\"throughput_ops_s\":{:.1},\"latency_us\":{},\"by_op\":{{{kinds}}}}}",
            o.clients,
            o.mix,
            o.read,
            o.value_size,
            o.keys,
            self.elapsed.as_secs_f64(),
            self.ok,
            self.errors,
            self.throughput(),
            lat(&self.all)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mix_weights_never_overflow() {
        assert!(Mix::from_str("set:4294967295,get:1").unwrap_err().contains("add up to more than"));
        assert!(Mix::from_str("set:4294967295,set:1").unwrap_err().contains("add up to more than"));
        assert_eq!(Mix::from_str("set:4294967295").unwrap().set, u32::MAX);
    }

    #[test]
    fn parses_durations() {
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2.5s"), Ok(Duration::from_millis(2500)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert!(parse_duration("0").is_err());
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn parses_mixes() {
        assert_eq!("set:50,get:50".parse::<Mix>(), Ok(Mix { set: 50, get: 50, del: 0 }));
        assert_eq!("get:1".parse::<Mix>().unwrap().to_string(), "get:1");
        assert!("put:1".parse::<Mix>().is_err());
        assert!("set:0".parse::<Mix>().is_err());
        let m = Mix { set: 1, get: 3, del: 0 };
        let picks: Vec<Kind> = (0..4).map(|r| m.pick(r)).collect();
        assert_eq!(picks, [Kind::Set, Kind::Get, Kind::Get, Kind::Get]);
    }
}
