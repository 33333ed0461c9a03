//! The real-network runtime behind `kvnode`: the same sans-IO machines the
//! simulator drives, here driven by threads, TCP and the system clock.
//!
//! Threads, per process:
//! - one **node thread** per replica or balancer ([`node::run`]): owns the
//!   machine and the write half of every connection, waits on one crossbeam
//!   channel with a deadline taken from the machine's `next_wakeup` (no busy
//!   loop, no polling), and writes what the machine sends;
//! - one **acceptor** per listening node, and one **reader thread** per
//!   accepted connection, which does the authenticated handshake and decodes
//!   frames into the node's channels, the cluster's or the clients' ([`net`]);
//! - one **dialer** per outgoing peer link (balancer to each replica, replica
//!   to each other replica), which connects, re-connects with backoff, and
//!   reads its own connection;
//! - a client ([`client::SyncClient`]) has a single connection and no node
//!   thread: the calling thread writes a request and reads with a socket
//!   timeout set to the machine's next wakeup.
//!
//! `Time` is microseconds since [`Clock`] was made; nothing outside this
//! module reads the system clock.

// The runtime is the one place that owns clocks and threads: the
// determinism lints in clippy.toml are for the machines, not for it.
#![allow(clippy::disallowed_methods)]

pub mod auth;
pub mod balancer_node;
pub mod bench;
pub mod client;
pub mod cluster_file;
pub mod conns;
pub mod net;
pub mod node;
pub mod record;
pub mod repl;
pub mod replica_node;
pub mod resp;
pub mod status;
pub mod store;

use crate::types::{NodeId, Time};
use crossbeam_channel::Sender;
use node::Control;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use balancer_node::{start_balancer, BalancerOptions};
pub use replica_node::{start_replica, start_replica_on, ReplicaOptions};

/// Maps the system's monotonic clock to machine [`Time`].
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    start: Instant,
}

impl Clock {
    pub fn new() -> Clock {
        Clock { start: Instant::now() }
    }
    pub fn now(&self) -> Time {
        Time(self.start.elapsed().as_micros() as u64)
    }
    /// The instant a machine time falls on.
    pub fn instant(&self, t: Time) -> Instant {
        self.start + Duration::from_micros(t.as_us())
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

/// 64 bits from the operating system's random source, for client ids (a
/// client's id is its session: it must not be guessable).
pub fn random_u64() -> u64 {
    let mut b = [0; 8];
    auth::os_random(&mut b);
    u64::from_le_bytes(b)
}

/// A running replica or balancer.
pub struct NodeHandle {
    pub id: NodeId,
    /// Where it listens (with the port the OS picked for port 0).
    pub addr: SocketAddr,
    /// Where a balancer serves the Redis protocol, if it does.
    pub resp_addr: Option<SocketAddr>,
    control: Sender<Control>,
    waker: Arc<mio::Waker>,
    thread: Option<JoinHandle<()>>,
}

impl NodeHandle {
    fn new(
        id: NodeId,
        addr: SocketAddr,
        control: Sender<Control>,
        waker: Arc<mio::Waker>,
        thread: JoinHandle<()>,
    ) -> NodeHandle {
        NodeHandle { id, addr, resp_addr: None, control, waker, thread: Some(thread) }
    }

    /// Asks the node to stop: it stops accepting, drains, flushes.
    pub fn shutdown(&self) {
        let _ = self.control.send(Control::Shutdown);
        let _ = self.waker.wake();
    }

    /// Waits for the node thread to finish.
    pub fn join(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    pub fn is_finished(&self) -> bool {
        match &self.thread {
            Some(t) => t.is_finished(),
            None => true,
        }
    }
}

/// Set once a line to stdout failed: nothing more is written there.
static STDOUT_GONE: AtomicBool = AtomicBool::new(false);
/// What to do when stdout's reader has gone away (`kvnode cluster | head -2`).
static ON_STDOUT_GONE: OnceLock<Box<dyn Fn() + Send + Sync>> = OnceLock::new();

/// Prints one line on stdout (start-up lines, leadership changes). A closed
/// pipe is no error: nothing more is printed, and the process is asked to
/// stop as it would be by SIGTERM (see [`on_stdout_gone`]), so it exits 0
/// instead of panicking the way `println!` does.
pub fn say(line: &str) {
    if STDOUT_GONE.load(Ordering::SeqCst) {
        return;
    }
    let mut out = std::io::stdout().lock();
    if let Err(e) = writeln!(out, "{line}").and_then(|()| out.flush()) {
        STDOUT_GONE.store(true, Ordering::SeqCst);
        drop(out);
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            tracing::warn!("cannot write to stdout: {e}");
        }
        if let Some(f) = ON_STDOUT_GONE.get() {
            f();
        }
    }
}

/// Whether a line to stdout has failed.
pub fn stdout_gone() -> bool {
    STDOUT_GONE.load(Ordering::SeqCst)
}

/// Calls `f` once stdout cannot be written any more (the first time only).
pub fn on_stdout_gone(f: impl Fn() + Send + Sync + 'static) {
    let _ = ON_STDOUT_GONE.set(Box::new(f));
}

/// Calls `on_signal(n)` on the n-th SIGINT or SIGTERM, from a thread of its own.
pub fn on_stop_signals(on_signal: impl Fn(usize) + Send + 'static) -> std::io::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?;
    std::thread::Builder::new().name("signals".into()).spawn(move || {
        for (n, sig) in signals.forever().enumerate() {
            tracing::info!("signal {sig} received");
            on_signal(n + 1);
        }
    })?;
    Ok(())
}

/// Logs to stderr at `level` and above (`error`, `warn`, `info`, `debug`,
/// `trace`, or `off`).
pub fn init_logging(level: &str) -> Result<(), String> {
    let filter = match level.to_ascii_lowercase().as_str() {
        "off" => tracing_subscriber::filter::LevelFilter::OFF,
        "error" => tracing_subscriber::filter::LevelFilter::ERROR,
        "warn" => tracing_subscriber::filter::LevelFilter::WARN,
        "info" => tracing_subscriber::filter::LevelFilter::INFO,
        "debug" => tracing_subscriber::filter::LevelFilter::DEBUG,
        "trace" => tracing_subscriber::filter::LevelFilter::TRACE,
        other => {
            return Err(format!(
                "unknown log level '{other}' (expected off, error, warn, info, debug or trace)"
            ))
        }
    };
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_max_level(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_target(false)
        .with_thread_names(true)
        .try_init()
        .map_err(|e| e.to_string())
}
