//! One lifecycle for every kind of env. An engine (runc jails, QEMU VMs)
//! implements [`Backend`]: the few steps only it knows (load its settings,
//! write its part of the runtime record, launch, halt, kill, release what
//! it holds, describe an env). The driver here does everything else, the
//! same way for every engine: the state model, the owner lease, the mount
//! hooks, and the runtime record with its phases. Every backend is an
//! [`Engine`], the object-safe face the dispatcher and the daemon use.
//!
//! A new engine is one `impl Backend`, and one entry in [`EngineSet`].

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

pub use crate::model::Columns;

use crate::envdef::{HookCtx, Hooks};
use crate::error::Result;
use crate::hook::Phase as HookPhase;
use crate::model::{self, Action, EnvKind, EnvState};
use crate::name::Jname;
use crate::process::Process;
use crate::rcconf::Definition;
use crate::registry::{EnvRow, Registry};
use crate::runtime::{self, Phase, Runtime};
use crate::workdir::Workdir;
use crate::{envdef, envfs, lease};

/// What the driver needs of an env's settings, whatever its engine.
pub trait EnvConfig: Sized {
    /// The settings a definition file at `path` holds.
    fn from_definition(def: &Definition, wd: &Workdir, path: &Path) -> Result<Self>;
    fn hooks(&self) -> &Hooks;
    /// How long a polite stop may take before it is forced.
    fn stop_timeout(&self) -> Duration;
}

/// How a start begins.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StartOptions {
    /// Restore this checkpoint instead of booting (VMs).
    pub checkpoint: Option<String>,
}

/// The steps an engine provides to the lifecycle driver.
pub trait Backend: Sync {
    type Config: EnvConfig;
    const KIND: EnvKind;
    /// The stop timeout when the definition cannot be read.
    const STOP_TIMEOUT: Duration;

    /// The settings of an env registered here.
    fn load(&self, wd: &Workdir, j: &Jname) -> Result<Self::Config> {
        load(wd, j)
    }
    /// The registry row of an env with these settings, when it can run
    /// here (a jail's base is on this node).
    fn row(&self, wd: &Workdir, cfg: &Self::Config) -> Result<EnvRow>;
    /// The registry row of a definition another node wrote, when it can
    /// run here.
    fn row_of(&self, wd: &Workdir, def: &Definition) -> Result<EnvRow> {
        self.row(wd, &config_of(wd, def)?)
    }
    /// What must hold of an env's changed settings beside their grammar
    /// (a VM's VNC port unused by the others here).
    fn check_settings(&self, _wd: &Workdir, _reg: &Registry, _cfg: &Self::Config) -> Result<()> {
        Ok(())
    }
    /// The settings a running env takes only at its next start.
    const RESTART_KEYS: &'static [&'static str];
    /// What must hold before a start sets anything up (a base, a free
    /// port, a restorable checkpoint).
    fn check_start(
        &self,
        wd: &Workdir,
        reg: &Registry,
        cfg: &Self::Config,
        opts: &StartOptions,
    ) -> Result<()>;
    /// The record of a start about to launch (phase `Starting`), with the
    /// engine's part filled in (network, accelerator).
    fn record(
        &self,
        wd: &Workdir,
        reg: &Registry,
        cfg: &Self::Config,
        epoch: u64,
    ) -> Result<Runtime>;
    /// Launch the env, inside its mounts; on failure it undoes itself.
    fn launch(
        &self,
        wd: &Workdir,
        cfg: &Self::Config,
        rt: &Runtime,
        opts: &StartOptions,
    ) -> Result<Process>;
    /// Bring a running env down politely, forcefully after `timeout`.
    fn halt(&self, wd: &Workdir, j: &Jname, rt: &Runtime, timeout: Duration) -> Result<()>;
    /// Kill a running env now, without asking it.
    fn kill(&self, wd: &Workdir, j: &Jname, rt: &Runtime) -> Result<()>;
    /// Release what a record says may be left of the engine's own (a
    /// container, a QEMU, network), before `mnt_stop` runs.
    fn release(&self, wd: &Workdir, j: &Jname, rt: &Runtime) -> Result<()>;
    /// The listing columns of this kind: all it can show by CBSD's names,
    /// and those shown by default.
    fn columns(&self) -> Columns;
    /// One listing row of an env registered here.
    fn describe(&self, wd: &Workdir, row: &EnvRow) -> Result<Value>;
}

/// An engine as the dispatcher and the daemon use it.
pub trait Engine: Sync {
    fn kind(&self) -> EnvKind;
    fn start(&self, wd: &Workdir, reg: &Registry, j: &Jname, opts: &StartOptions) -> Result<()>;
    fn stop(&self, wd: &Workdir, j: &Jname) -> Result<()>;
    /// Kill (no grace) and tear down: fencing.
    fn kill(&self, wd: &Workdir, j: &Jname) -> Result<()>;
    fn restart(&self, wd: &Workdir, reg: &Registry, j: &Jname) -> Result<()>;
    fn remove(&self, wd: &Workdir, reg: &Registry, j: &Jname) -> Result<()>;
    fn state(&self, wd: &Workdir, j: &Jname) -> Result<EnvState>;
    fn row_of(&self, wd: &Workdir, def: &Definition) -> Result<EnvRow>;
    /// The registry row of a definition about to become an env here (an
    /// import): read, checked as a change of settings is, and its row.
    fn admit(&self, wd: &Workdir, reg: &Registry, def: &Definition) -> Result<EnvRow>;
    /// Change settings of the registered env `j` (`jset`, `bset`): see
    /// [`set`].
    fn set(
        &self,
        wd: &Workdir,
        reg: &Registry,
        j: &Jname,
        changes: &[(String, String)],
    ) -> Result<Vec<String>>;
    fn columns(&self) -> Columns;
    fn describe(&self, wd: &Workdir, row: &EnvRow) -> Result<Value>;
}

impl<B: Backend> Engine for B {
    fn kind(&self) -> EnvKind {
        B::KIND
    }
    fn start(&self, wd: &Workdir, reg: &Registry, j: &Jname, opts: &StartOptions) -> Result<()> {
        start(self, wd, reg, j, opts)
    }
    fn stop(&self, wd: &Workdir, j: &Jname) -> Result<()> {
        stop(self, wd, j)
    }
    fn kill(&self, wd: &Workdir, j: &Jname) -> Result<()> {
        kill(self, wd, j)
    }
    fn restart(&self, wd: &Workdir, reg: &Registry, j: &Jname) -> Result<()> {
        let st = state(wd, j)?;
        model::check(j, st, Action::Restart)?;
        if st != EnvState::Stopped {
            stop(self, wd, j)?;
        }
        start(self, wd, reg, j, &StartOptions::default())
    }
    fn remove(&self, wd: &Workdir, reg: &Registry, j: &Jname) -> Result<()> {
        remove(self, wd, reg, j)
    }
    fn state(&self, wd: &Workdir, j: &Jname) -> Result<EnvState> {
        state(wd, j)
    }
    fn row_of(&self, wd: &Workdir, def: &Definition) -> Result<EnvRow> {
        Backend::row_of(self, wd, def)
    }
    fn admit(&self, wd: &Workdir, reg: &Registry, def: &Definition) -> Result<EnvRow> {
        let cfg: B::Config = config_of(wd, def)?;
        cfg.hooks().check()?;
        self.check_settings(wd, reg, &cfg)?;
        self.row(wd, &cfg)
    }
    fn set(
        &self,
        wd: &Workdir,
        reg: &Registry,
        j: &Jname,
        changes: &[(String, String)],
    ) -> Result<Vec<String>> {
        set(self, wd, reg, j, changes)
    }
    fn columns(&self) -> Columns {
        Backend::columns(self)
    }
    fn describe(&self, wd: &Workdir, row: &EnvRow) -> Result<Value> {
        Backend::describe(self, wd, row)
    }
}

/// The engines of this node, by kind.
#[derive(Clone, Copy)]
pub struct EngineSet {
    pub jail: &'static dyn Engine,
    pub vm: &'static dyn Engine,
}

impl std::fmt::Debug for EngineSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EngineSet")
    }
}

impl EngineSet {
    pub fn of(&self, kind: EnvKind) -> &'static dyn Engine {
        match kind {
            EnvKind::Jail => self.jail,
            EnvKind::Vm => self.vm,
        }
    }

    /// The engine a definition names (CBSD's `emulator`: none or `jail`
    /// for a jail, anything else for a VM).
    pub fn of_definition(&self, def: &Definition) -> &'static dyn Engine {
        self.of(kind_of(def))
    }
}

/// The kind a definition declares.
pub fn kind_of(def: &Definition) -> EnvKind {
    match def.get("emulator") {
        None | Some("jail") => EnvKind::Jail,
        Some(_) => EnvKind::Vm,
    }
}

/// Change settings of the registered env `j`, owned here (the definition
/// lives on shared storage: only the lease holder writes it). The changed
/// definition is read with the engine's grammar and checked before it
/// replaces the old one (atomically); the registry row follows. Returns
/// the keys that a running env takes only at its next start.
pub fn set<B: Backend>(
    b: &B,
    wd: &Workdir,
    reg: &Registry,
    j: &Jname,
    changes: &[(String, String)],
) -> Result<Vec<String>> {
    lease::held(wd, j)?;
    let path = wd.registered_rcconf(j);
    let mut def = envdef::load_registered(wd, j)?;
    for (k, v) in changes {
        def.set(k, v.clone())
            .map_err(|e| crate::error::Error::bad_value(k, v, e.to_string()))?;
    }
    let cfg = B::Config::from_definition(&def, wd, &path)?;
    cfg.hooks().check()?;
    b.check_settings(wd, reg, &cfg)?;
    let row = b.row(wd, &cfg)?;
    def.store(&path, wd.root())
        .map_err(crate::error::Error::io(
            "cannot write the definition",
            &path,
        ))?;
    reg.upsert(&row)?;
    let running = state(wd, j)? == EnvState::Running;
    Ok(changes
        .iter()
        .map(|(k, _)| k.clone())
        .filter(|k| running && B::RESTART_KEYS.contains(&k.as_str()))
        .collect())
}

/// The settings of an env registered here.
pub fn load<C: EnvConfig>(wd: &Workdir, j: &Jname) -> Result<C> {
    let def = envdef::load_registered(wd, j)?;
    C::from_definition(&def, wd, &wd.registered_rcconf(j))
}

/// The settings a definition holds that was read from shared storage (an
/// unregistered env's, under `jails-rcconf/`).
pub fn config_of<C: EnvConfig>(wd: &Workdir, def: &Definition) -> Result<C> {
    let j = def.get("jname").map(crate::error::jname).transpose()?;
    let path = j
        .as_ref()
        .map_or_else(|| wd.rcconf_dir(), |j| wd.unregistered_rcconf(j));
    C::from_definition(def, wd, &path)
}

/// The live state of an env: from its record and `/proc`.
pub fn state(wd: &Workdir, j: &Jname) -> Result<EnvState> {
    runtime::state(wd, j).map(|(s, _)| s)
}

/// Start a registered env: only the lease holder may (DESIGN §5, I2); what
/// a crash left is torn down first; the record is written before anything
/// is set up, so a crash from then on is undone by the next start, stop
/// or remove.
pub fn start<B: Backend>(
    b: &B,
    wd: &Workdir,
    reg: &Registry,
    j: &Jname,
    opts: &StartOptions,
) -> Result<()> {
    let (st, rt) = runtime::state(wd, j)?;
    model::check(j, st, Action::Start)?;
    let cfg = b.load(wd, j)?;
    let epoch = lease::held(wd, j)?;
    crate::fence::check_not_fenced(wd)?;
    cfg.hooks().check()?;
    if let Some(rt) = rt {
        teardown(b, wd, j, Some(&cfg), &rt, HookPhase::Stop)?;
    }
    b.check_start(wd, reg, &cfg, opts)?;
    let mut rt = b.record(wd, reg, &cfg, epoch)?;
    runtime::write(wd, j, &rt)?;
    let ctx = HookCtx {
        wd,
        jname: j,
        epoch,
    };
    let launched = cfg.hooks().with_mounts(&ctx, HookPhase::Start, true, || {
        b.launch(wd, &cfg, &rt, opts)
    });
    match launched {
        Ok(p) => {
            runtime::enter(&mut rt, Phase::Running)?;
            rt.pid = Some(p.pid);
            rt.starttime = Some(p.start);
            runtime::write(wd, j, &rt)
        }
        Err(e) => {
            // The launch cleaned up after itself and mnt_stop has run.
            runtime::clear(wd, j)?;
            Err(e)
        }
    }
}

/// Stop a running env (politely, forcefully after its stop timeout), then
/// tear down. An env whose process died is cleaned up the same way.
pub fn stop<B: Backend>(b: &B, wd: &Workdir, j: &Jname) -> Result<()> {
    let (st, rt) = runtime::begin_stop(wd, j)?;
    let cfg = b.load(wd, j);
    if st == EnvState::Running {
        let timeout = cfg
            .as_ref()
            .map_or(B::STOP_TIMEOUT, EnvConfig::stop_timeout);
        b.halt(wd, j, &rt, timeout)?;
    }
    teardown(b, wd, j, cfg.as_ref().ok(), &rt, HookPhase::Stop)
}

/// Kill a running env at once and tear down (fencing: no grace).
pub fn kill<B: Backend>(b: &B, wd: &Workdir, j: &Jname) -> Result<()> {
    let (st, rt) = runtime::begin_stop(wd, j)?;
    if st == EnvState::Running {
        b.kill(wd, j, &rt)?;
    }
    teardown(b, wd, j, b.load(wd, j).as_ref().ok(), &rt, HookPhase::Stop)
}

/// Remove a stopped env and all its files; also finishes an interrupted
/// create or remove.
pub fn remove<B: Backend>(b: &B, wd: &Workdir, reg: &Registry, j: &Jname) -> Result<()> {
    if envfs::finish_interrupted(wd, reg, j)? {
        return Ok(());
    }
    let (st, rt) = runtime::state(wd, j)?;
    model::check(j, st, Action::Remove)?;
    let cfg = b.load(wd, j)?;
    cfg.hooks().check()?;
    if let Some(rt) = rt {
        teardown(b, wd, j, Some(&cfg), &rt, HookPhase::Stop)?;
    }
    envfs::remove(wd, reg, j, cfg.hooks())
}

/// Undo what a record says may be left: the engine's own resources, then
/// `mnt_stop` (told `phase`, when the env's hooks are known), then the
/// record goes. A failing `mnt_stop` keeps the record, so the next stop
/// tries again.
pub fn teardown<B: Backend>(
    b: &B,
    wd: &Workdir,
    j: &Jname,
    cfg: Option<&B::Config>,
    rt: &Runtime,
    phase: HookPhase,
) -> Result<()> {
    b.release(wd, j, rt)?;
    runtime::finish_teardown_as(wd, j, cfg.map(EnvConfig::hooks), rt, phase)
}
