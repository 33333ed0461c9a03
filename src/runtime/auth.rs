//! Who may connect, and what a node may use: the cluster secret and the
//! client password, the OS random source for nonces, where a node without a
//! secret may listen, the descriptor limit, and fail-stop on panic.
//!
//! The handshake itself (hellos with nonces, HMAC-SHA256 proofs) is in
//! `wire.rs` (the bytes) and `net.rs` (the exchange).

use crate::types::NodeId;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use tracing::{info, warn};

/// A cluster secret shorter than this is refused: a recorded handshake lets
/// anyone guess at it offline.
pub const MIN_SECRET_BYTES: usize = 16;
/// A client password shorter than this is refused (the same applies: make
/// it long and random if clients cross a network you do not trust).
pub const MIN_PASSWORD_BYTES: usize = 8;

/// Environment variables read when no file is given on the command line
/// (a secret on the command line would show in `ps`).
pub const ENV_SECRET_FILE: &str = "KVSTORE_SECRET_FILE";
pub const ENV_SECRET: &str = "KVSTORE_SECRET";
pub const ENV_PASSWORD_FILE: &str = "KVSTORE_CLIENT_PASSWORD_FILE";
pub const ENV_PASSWORD: &str = "KVSTORE_CLIENT_PASSWORD";

/// Key bytes, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Arc<[u8]>);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({} bytes)", self.0.len())
    }
}

impl Secret {
    /// `bytes` without trailing whitespace (a file written by `echo` ends in
    /// a newline), at least `min` bytes of it.
    pub fn new(what: &str, bytes: &[u8], min: usize) -> Result<Secret, String> {
        let end = bytes.iter().rposition(|b| !b.is_ascii_whitespace()).map_or(0, |i| i + 1);
        let bytes = &bytes[..end];
        if bytes.len() > MAX_SECRET_BYTES {
            return Err(format!(
                "the {what} is {} bytes; at most {MAX_SECRET_BYTES} are allowed",
                bytes.len()
            ));
        }
        if bytes.len() < min {
            return Err(format!(
                "the {what} is {} bytes; at least {min} are needed \
                 (make one with: head -c 32 /dev/urandom | base64 > FILE; chmod 600 FILE)",
                bytes.len()
            ));
        }
        Ok(Secret(bytes.into()))
    }

    pub fn bytes(&self) -> &[u8] {
        &self.0
    }

    /// Reads a secret from `file`, else from the file named by `env_file`,
    /// else from `env_value` itself; `None` when none is given.
    pub fn load(
        what: &str,
        file: Option<&Path>,
        env_file: &str,
        env_value: &str,
        min: usize,
    ) -> Result<Option<Secret>, String> {
        let from_env = std::env::var_os(env_file).filter(|v| !v.is_empty());
        let path = file.map(Path::to_path_buf).or(from_env.map(Into::into));
        if let Some(path) = path {
            let bytes = std::fs::read(&path)
                .map_err(|e| format!("cannot read the {what} from {}: {e}", path.display()))?;
            warn_if_readable_by_others(what, &path);
            return Secret::new(what, &bytes, min).map(Some).map_err(|e| format!("{}: {e}", path.display()));
        }
        match std::env::var_os(env_value).filter(|v| !v.is_empty()) {
            Some(v) => {
                use std::os::unix::ffi::OsStrExt;
                Secret::new(what, v.as_bytes(), min).map(Some).map_err(|e| format!("{env_value}: {e}"))
            }
            None => Ok(None),
        }
    }
}

fn warn_if_readable_by_others(what: &str, path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path) {
        let mode = meta.permissions().mode();
        if mode & 0o077 != 0 {
            eprintln!(
                "warning: {} holds the {what} and can be read by other users (mode {:o}); chmod 600 it",
                path.display(),
                mode & 0o777
            );
        }
    }
}

/// The keys of a node or a client.
#[derive(Clone, Debug, Default)]
pub struct Keys {
    /// Between the balancer and replicas, and between replicas.
    pub cluster: Option<Secret>,
    /// Between clients and the balancer.
    pub client: Option<Secret>,
}

impl Keys {
    /// The key a connection between `a` and `b` is proven with: the client
    /// password when a client is on either end, else the cluster secret;
    /// empty when that one is not configured (then anyone can prove it).
    pub fn for_link(&self, a: NodeId, b: NodeId) -> &[u8] {
        let key = if matches!(a, NodeId::Client(_)) || matches!(b, NodeId::Client(_)) {
            &self.client
        } else {
            &self.cluster
        };
        key.as_ref().map_or(&[][..], Secret::bytes)
    }

    /// What the key of that link is called, for log lines.
    pub fn name_for_link(a: NodeId, b: NodeId) -> &'static str {
        if matches!(a, NodeId::Client(_)) || matches!(b, NodeId::Client(_)) {
            "client password"
        } else {
            "cluster secret"
        }
    }
}

/// Fills `buf` from the operating system's random source (`getrandom(2)`).
pub fn os_random(buf: &mut [u8]) {
    let mut filled = 0;
    while filled < buf.len() {
        match rustix::rand::getrandom(&mut buf[filled..], rustix::rand::GetRandomFlags::empty()) {
            Ok(n) => filled += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => panic!("the operating system's random source failed: {e}"),
        }
    }
}

/// A fresh nonce for a hello.
pub fn nonce() -> [u8; crate::wire::NONCE_BYTES] {
    let mut n = [0; crate::wire::NONCE_BYTES];
    os_random(&mut n);
    n
}

/// Without a cluster secret a node listens on loopback only, unless told
/// otherwise: anyone who can reach an open node can act as any role.
pub fn check_listen(addr: SocketAddr, secured: bool, insecure_open: bool) -> io::Result<()> {
    if secured || insecure_open || addr.ip().is_loopback() {
        return Ok(());
    }
    Err(io::Error::new(
        io::ErrorKind::PermissionDenied,
        format!(
            "refusing to listen at {addr} without a cluster secret: anyone who can reach it could act as \
             the balancer, a replica or a client. Give --secret-file FILE (or {ENV_SECRET_FILE}), listen on \
             a loopback address, or pass --insecure-open"
        ),
    ))
}

/// Descriptors kept free for everything but accepted connections (the log,
/// snapshots, dialed peers, the listener).
pub const RESERVED_FDS: usize = 128;
/// Bytes of a cluster secret or client password, at most (the RESP port
/// takes at most [`super::resp::codec::MAX_UNAUTHED_COMMAND_BYTES`] before
/// AUTH).
pub const MAX_SECRET_BYTES: usize = 1024;
/// Accepted connections per process at most, whatever the descriptor limit
/// (a descriptor each, and a little memory: about 1.2 KB when idle).
pub const MAX_CONNECTIONS_CEILING: usize = 4096;
/// Accepted connections per process at least.
pub const MIN_CONNECTIONS: usize = 16;

/// How many accepted connections this process keeps open at most: the soft
/// open-file limit (raised to the hard limit first, where allowed) minus
/// [`RESERVED_FDS`], at most [`MAX_CONNECTIONS_CEILING`]. Computed once.
pub fn connection_limit() -> usize {
    static LIMIT: OnceLock<usize> = OnceLock::new();
    *LIMIT.get_or_init(|| {
        let soft = raise_fd_limit();
        soft.saturating_sub(RESERVED_FDS).clamp(MIN_CONNECTIONS, MAX_CONNECTIONS_CEILING)
    })
}

/// Raises the soft `RLIMIT_NOFILE` toward the hard limit (enough for the
/// connection ceiling); returns the soft limit in force afterwards.
fn raise_fd_limit() -> usize {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let lim = getrlimit(Resource::Nofile);
    let want = (MAX_CONNECTIONS_CEILING + RESERVED_FDS) as u64;
    let soft = lim.current.unwrap_or(u64::MAX);
    if soft >= want {
        return soft.min(usize::MAX as u64) as usize;
    }
    let target = match lim.maximum {
        None => want,
        Some(hard) => hard.min(want),
    };
    if target > soft {
        match setrlimit(Resource::Nofile, Rlimit { current: Some(target), maximum: lim.maximum }) {
            Ok(()) => {
                info!("raised the open-file limit from {soft} to {target}");
                return target as usize;
            }
            Err(e) => warn!("cannot raise the open-file limit from {soft} to {target}: {e}"),
        }
    }
    soft as usize
}

/// Test hook: a node thread panics this many milliseconds after it starts
/// (`KVSTORE_TEST_PANIC_AFTER_MS`), to show that the process then stops.
pub const ENV_TEST_PANIC: &str = "KVSTORE_TEST_PANIC_AFTER_MS";

/// Makes a panic in any thread end the process with status 101 and a clear
/// last line, instead of leaving a process that listens with a dead machine
/// (a supervisor restarts it; the write-ahead log makes that safe).
pub fn fail_stop_on_panic() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        let thread = std::thread::current();
        let name = thread.name().unwrap_or("unnamed");
        eprintln!("kvnode: fatal: thread '{name}' panicked; stopping the process (exit status 101)");
        std::process::exit(101);
    }));
}
