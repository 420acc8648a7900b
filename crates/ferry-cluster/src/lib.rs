//! ferry's cluster layer: the dispatcher that carries out a typed
//! [`Command`](ferry_api::Command) whichever front door it came through,
//! and everything between nodes. Modules, from the leaf up (each uses only
//! those before it):
//!
//! - [`context`]: where a command runs, progress, per-env helpers;
//! - [`rpc`]: node-to-node messages and their transport over the broker;
//! - [`tasks`]: the task queue, local and across nodes;
//! - [`migrate`]: moving envs between nodes, cold (`jmigrate`) and live
//!   (`bmigrate`), and finishing moves a crash interrupted;
//! - [`ha`]: automatic failover and restart of `ha=1` envs;
//! - [`daemon`]: the node daemon, which routes node messages;
//! - [`commands`]: the command handlers and [`dispatch`].
//!
//! docs/architecture.md draws the whole picture.

pub mod commands;
pub mod context;
pub mod daemon;
mod engines;
pub mod ha;
pub mod migrate;
pub mod rpc;
pub mod tasks;

pub use commands::dispatch;
pub use context::{error_chain, select, Context, ProgressSink};

/// The ferry version recorded in the node inventory.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
