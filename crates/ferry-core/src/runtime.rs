//! The local runtime record of an env (`jails/<jname>/runtime.json`) and the
//! live state derived from it, for every engine.
//!
//! The record is written before anything is set up and removed only after
//! everything is torn down, so after a crash at any instant it tells what
//! may be left (mounts, network, a container or a QEMU) and must be undone.

use std::fs;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::EnvState;
use crate::name::Jname;
use crate::net::Attachment;
use crate::workdir::Workdir;
use crate::{atomic, sys};

/// Where a start or stop got to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Starting,
    Running,
    Stopping,
    /// A VM waiting, paused, for a live migration from another node: not
    /// this node's to run until the lease names this node.
    Incoming,
}

/// A live migration of this env to another node, in progress: who runs it
/// (a `bmigrate` process, by pid and start time) and where to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outbound {
    pub node: String,
    pub pid: i32,
    pub start: u64,
}

/// The network a running env holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetRecord {
    pub netns: String,
    pub host_if: String,
    pub bridge: String,
}

impl NetRecord {
    pub fn attachment(&self) -> Attachment {
        Attachment {
            netns: self.netns.clone(),
            host_if: self.host_if.clone(),
            bridge: self.bridge.clone(),
            addrs: Vec::new(),
            gateway: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Runtime {
    pub phase: Phase,
    pub pid: Option<i32>,
    /// Start time of `pid` in clock ticks since boot (`/proc/<pid>/stat`
    /// field 22), so a recycled pid is never taken for the jail.
    pub starttime: Option<u64>,
    pub net: Option<NetRecord>,
    pub epoch: u64,
    /// The accelerator a VM runs under (`kvm`, `tcg`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accel: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration: Option<Outbound>,
    /// The guest CPU a VM that came by live migration was started with
    /// (QEMU's static expansion, model `base`), not its definition's model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<std::collections::BTreeMap<String, serde_json::Value>>,
}

/// Move a record to phase `to`: the one place a phase changes, and the
/// transitions it may make. Entering the phase it is in is allowed (a
/// stop tried again).
pub fn enter(rt: &mut Runtime, to: Phase) -> Result<()> {
    use Phase::*;
    let allowed = rt.phase == to
        || matches!(
            (rt.phase, to),
            (Starting, Running) | (Running, Stopping) | (Incoming, Running)
        );
    if !allowed {
        return Err(Error::Failed(format!(
            "the runtime record cannot go from {:?} to {to:?}",
            rt.phase
        )));
    }
    rt.phase = to;
    Ok(())
}

impl Runtime {
    /// A record for an env about to start.
    pub fn starting(epoch: u64) -> Runtime {
        Runtime {
            phase: Phase::Starting,
            pid: None,
            starttime: None,
            net: None,
            epoch,
            accel: None,
            migration: None,
            cpu: None,
        }
    }
}

pub fn record_path(wd: &Workdir, j: &Jname) -> PathBuf {
    wd.runtime_dir(j).join("runtime.json")
}

pub fn read(wd: &Workdir, j: &Jname) -> Result<Option<Runtime>> {
    let p = record_path(wd, j);
    match fs::read(&p) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| Error::bad_value("runtime record", &p.to_string_lossy(), e.to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("cannot read", &p)(e)),
    }
}

pub fn write(wd: &Workdir, j: &Jname, rt: &Runtime) -> Result<()> {
    let dir = wd.runtime_dir(j);
    fs::create_dir_all(&dir).map_err(Error::io("cannot create", &dir))?;
    let p = record_path(wd, j);
    let json = serde_json::to_vec(rt).map_err(Error::encode("the runtime record"))?;
    // Atomic, not synced: the record describes running processes, which a
    // power loss ends too (a lost or stale record then reads as stopped or
    // crashed, and both are handled).
    atomic::replace(&p, &json, 0o600).map_err(Error::io("cannot write", &p))
}

pub fn clear(wd: &Workdir, j: &Jname) -> Result<()> {
    let dir = wd.runtime_dir(j);
    match fs::remove_dir_all(&dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("cannot remove", &dir)(e)),
    }
}

/// The live state of an env: from its record and `/proc`, without asking
/// the engine (so listing thousands of envs stays cheap).
pub fn state(wd: &Workdir, j: &Jname) -> Result<(EnvState, Option<Runtime>)> {
    let Some(rt) = read(wd, j)? else {
        return Ok((EnvState::Stopped, None));
    };
    if rt.phase == Phase::Incoming {
        return Ok((EnvState::Incoming, Some(rt)));
    }
    let alive = match (rt.phase, rt.pid, rt.starttime) {
        (Phase::Running | Phase::Stopping, Some(pid), Some(start)) => sys::is_alive(pid, start),
        _ => false,
    };
    let state = if alive && rt.phase == Phase::Running {
        EnvState::Running
    } else {
        EnvState::Crashed
    };
    // A jail being stopped whose process still lives counts as running.
    let state = if alive && rt.phase == Phase::Stopping {
        EnvState::Running
    } else {
        state
    };
    Ok((state, Some(rt)))
}

/// Begin stopping `j`: it must be running or crashed. A running env's
/// record is marked `Stopping` first. Returns the state it was in and its
/// record.
pub fn begin_stop(wd: &Workdir, j: &Jname) -> Result<(EnvState, Runtime)> {
    let (st, rt) = state(wd, j)?;
    crate::model::check(j, st, crate::model::Action::Stop)?;
    let mut rt = rt.ok_or_else(|| Error::Failed(format!("{j} has no runtime record")))?;
    if st == EnvState::Running {
        enter(&mut rt, Phase::Stopping)?;
        write(wd, j, &rt)?;
    }
    Ok((st, rt))
}

/// The last steps of every teardown, once the engine's own resources are
/// gone: `mnt_stop` (phase `stop`, when the env's hooks are known), then
/// the record goes. A failing `mnt_stop` keeps the record, so the next
/// stop tries again.
pub fn finish_teardown(
    wd: &Workdir,
    j: &Jname,
    hooks: Option<&crate::envdef::Hooks>,
    rt: &Runtime,
) -> Result<()> {
    finish_teardown_as(wd, j, hooks, rt, crate::hook::Phase::Stop)
}

/// [`finish_teardown`], with `mnt_stop` told `phase` (`migrate-out` on the
/// source of a live migration, `migrate-in` when an incoming one is undone).
pub fn finish_teardown_as(
    wd: &Workdir,
    j: &Jname,
    hooks: Option<&crate::envdef::Hooks>,
    rt: &Runtime,
    phase: crate::hook::Phase,
) -> Result<()> {
    if let Some(hooks) = hooks {
        let ctx = crate::envdef::HookCtx {
            wd,
            jname: j,
            epoch: rt.epoch,
        };
        hooks.run(&ctx, crate::hook::HookKind::MntStop, phase)?;
    }
    clear(wd, j)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trip_and_state() {
        let t = tempfile::tempdir().unwrap();
        let wd = Workdir::init(t.path(), Some("n1")).unwrap();
        let j = Jname::new("j").unwrap();
        assert_eq!(state(&wd, &j).unwrap().0, EnvState::Stopped);
        let rt = Runtime::starting(0);
        write(&wd, &j, &rt).unwrap();
        assert_eq!(read(&wd, &j).unwrap(), Some(rt));
        assert_eq!(state(&wd, &j).unwrap().0, EnvState::Crashed);
        clear(&wd, &j).unwrap();
        assert_eq!(state(&wd, &j).unwrap().0, EnvState::Stopped);
        // An incoming VM is neither running nor crashed here.
        let incoming = Runtime {
            phase: Phase::Incoming,
            ..Runtime::starting(0)
        };
        write(&wd, &j, &incoming).unwrap();
        assert_eq!(state(&wd, &j).unwrap().0, EnvState::Incoming);
    }

    #[test]
    fn phases_move_only_forward() {
        let mut rt = Runtime::starting(1);
        enter(&mut rt, Phase::Running).unwrap();
        enter(&mut rt, Phase::Stopping).unwrap();
        enter(&mut rt, Phase::Stopping).unwrap();
        assert!(enter(&mut rt, Phase::Running).is_err());
        assert!(enter(&mut rt, Phase::Incoming).is_err());
        let mut arriving = Runtime {
            phase: Phase::Incoming,
            ..Runtime::starting(1)
        };
        assert!(enter(&mut arriving, Phase::Stopping).is_err());
        enter(&mut arriving, Phase::Running).unwrap();
        assert_eq!(arriving.phase, Phase::Running);
    }
}
