//! kvstore: a replicated key-value store built from sans-IO state machines.
//!
//! The [`replica::Replica`], [`balancer::Balancer`] and [`client::Client`]
//! consume messages and timer ticks with `now` passed in and emit
//! [`machine::Effect`]s. Drivers (the `kvsim` simulator, the `kvnode` runtime)
//! own every clock, socket, thread and file.

pub mod balancer;
pub mod client;
pub mod config;
pub mod log;
pub mod machine;
pub mod msg;
pub mod replica;
pub mod runtime;
pub mod types;
pub mod wal;
pub mod wire;

pub use config::ClusterConfig;
pub use machine::{Completion, Effect, Event, Outbox, PersistOp, Stored};
pub use msg::{Msg, Reply};
pub use types::*;
