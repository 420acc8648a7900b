//! ferry's domain core: the workdir and its layout, env names, the
//! definition codec, the local registry, the env lifecycle model, mount
//! hooks, bases and the node inventory. Engines (runc, QEMU) and front doors
//! (CLI, broker) build on this crate; it starts no environment itself.

pub mod archive;
pub mod atomic;
pub mod base;
pub mod clone;
pub mod engine;
pub mod envdef;
pub mod envfs;
pub mod error;
pub mod fence;
pub mod heartbeat;
pub mod hook;
pub mod inventory;
pub mod lease;
pub mod lock;
pub mod model;
pub mod name;
pub mod net;
pub mod node;
pub mod process;
pub mod rcconf;
pub mod register;
pub mod registry;
pub mod rename;
pub mod runtime;
pub mod sys;
pub mod task;
pub mod workdir;

pub use error::{Error, ErrorKind, Result};
pub use model::{Action, EnvKind, EnvState};
pub use name::{Jname, NameSelector};
pub use workdir::Workdir;
