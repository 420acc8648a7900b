//! The dispatcher: one place where a typed [`Command`] is carried out,
//! whichever front door it came through (the CLI, the broker agent).
//! Handlers are short: open, call the engine, shape the outcome.

mod base;
mod cluster;
mod daemon;
mod jail;
mod migrate;
mod node;
mod queue;
mod remote;
mod shared;
mod task;
mod vm;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ferry_api::command::InitenvArgs;
use ferry_api::exit;
use ferry_api::{Command, EnvResult, Outcome};
use ferry_core::inventory::Inventory;
use ferry_core::registry::{Registry, RegistryPool};
use ferry_core::{EnvKind, Error, Jname, NameSelector, Result, Workdir};

/// The ferry version recorded in the node inventory.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Told how far a long command got: percent done (below 100) and one line
/// of text. The CLI sets none; the broker agent turns each call into a
/// progress reply.
pub type Progress = Arc<dyn Fn(u8, &str) + Send + Sync>;

/// Where commands run, and who hears of their progress.
#[derive(Clone)]
pub struct Context {
    pub workdir: PathBuf,
    progress: Option<Progress>,
    registries: Option<RegistryPool>,
}

impl fmt::Debug for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context")
            .field("workdir", &self.workdir)
            .field("progress", &self.progress.is_some())
            .field("pooled", &self.registries.is_some())
            .finish()
    }
}

impl Context {
    pub fn new(workdir: impl Into<PathBuf>) -> Context {
        Context {
            workdir: workdir.into(),
            progress: None,
            registries: None,
        }
    }

    /// The same context, keeping registry connections between commands
    /// (for a long-lived front door that runs many: the broker agent).
    pub fn with_registry_pool(mut self) -> Context {
        self.registries = Some(RegistryPool::default());
        self
    }

    /// The same context, telling `progress` how far long commands got.
    pub fn with_progress(mut self, progress: Progress) -> Context {
        self.progress = Some(progress);
        self
    }

    /// Report progress of the running command (capped at 99: only the
    /// command's end is 100); nothing happens without a listener.
    pub fn progress(&self, percent: u8, message: &str) {
        if let Some(p) = &self.progress {
            p(percent.min(99), message);
        }
    }

    fn open(&self) -> Result<(Workdir, Registry)> {
        let wd = Workdir::open(&self.workdir)?;
        let reg = match &self.registries {
            Some(pool) => Registry::open_pooled(&wd.db_dir(), pool)?,
            None => Registry::open(&wd.db_dir())?,
        };
        Ok((wd, reg))
    }
}

/// Carry out one command.
pub fn dispatch(ctx: &Context, cmd: Command) -> Result<Outcome> {
    tracing::debug!(command = cmd.name(), "dispatch");
    match cmd {
        Command::Initenv(a) => initenv(&ctx.workdir, &a),
        Command::Base(a) => {
            let (wd, reg) = ctx.open()?;
            base::run(&wd, &reg, a)
        }
        Command::Jcreate(a) => {
            let (wd, reg) = ctx.open()?;
            jail::create(&wd, &reg, a)
        }
        Command::Jstart(a) => each(ctx, EnvKind::Jail, &a.jname, "started", |wd, _, j| {
            ferry_jail::start(wd, j)
        }),
        Command::Jstop(a) => each(ctx, EnvKind::Jail, &a.jname, "stopped", |wd, _, j| {
            ferry_jail::stop(wd, j)
        }),
        Command::Jrestart(a) => each(ctx, EnvKind::Jail, &a.jname, "restarted", |wd, _, j| {
            ferry_jail::restart(wd, j)
        }),
        Command::Jremove(a) => each(ctx, EnvKind::Jail, &a.jname, "removed", ferry_jail::remove),
        Command::Jls(a) => {
            let (wd, reg) = ctx.open()?;
            jail::list(&wd, &reg, &a.jname, a.display.as_deref())
        }
        Command::Jexec(a) => {
            let (wd, _) = ctx.open()?;
            let status = ferry_jail::exec(&wd, &a.jname, &a.cmd)?;
            Ok(Outcome::Exited { status })
        }
        Command::Bcreate(a) => vm::create(ctx, a),
        Command::Bstart(a) => {
            let ckp = a.checkpoint.as_ref().map(|w| w.0.as_str());
            each(ctx, EnvKind::Vm, &a.jname, "started", |wd, reg, j| {
                ferry_vm::start(wd, reg, j, ckp)
            })
        }
        Command::Bstop(a) => each(ctx, EnvKind::Vm, &a.jname, "stopped", |wd, _, j| {
            ferry_vm::stop(wd, j)
        }),
        Command::Brestart(a) => each(ctx, EnvKind::Vm, &a.jname, "restarted", ferry_vm::restart),
        Command::Bremove(a) => each(ctx, EnvKind::Vm, &a.jname, "removed", ferry_vm::remove),
        Command::Bls(a) => {
            let (wd, reg) = ctx.open()?;
            vm::list(&wd, &reg, &a.jname, a.display.as_deref())
        }
        Command::Bcheckpoint(a) => vm::checkpoint(ctx, a),
        Command::Daemon(a) => daemon::run(ctx, a),
        Command::Task(a) => task::run(ctx, a),
        Command::Taskls(a) => task::list(ctx, a.display.as_deref()),
        Command::Node(a) => node::run(ctx, a),
        Command::Jmigrate(a) => migrate::jmigrate(ctx, &a),
        Command::Bmigrate(a) => migrate::bmigrate(ctx, &a),
        Command::Junregister(a) => shared::unregister(ctx, &a.jname, EnvKind::Jail),
        Command::Bunregister(a) => shared::unregister(ctx, &a.jname, EnvKind::Vm),
        Command::Jregister(a) => {
            shared::register(ctx, &a.jname, EnvKind::Jail, a.force, a.lease_time)
        }
        Command::Bregister(a) => {
            shared::register(ctx, &a.jname, EnvKind::Vm, a.force, a.lease_time)
        }
    }
}

fn initenv(root: &Path, a: &InitenvArgs) -> Result<Outcome> {
    // Checked before anything is written.
    if let Some(uri) = &a.broker {
        uri.parse::<ferry_broker::BrokerUri>()
            .map_err(|e| Error::bad_value("broker", uri, e.to_string()))?;
    }
    let qemu = a
        .qemu
        .as_deref()
        .map(ferry_vm::qemu::check_binary)
        .transpose()?;
    let wd = Workdir::init(root, a.nodename.as_ref().map(Jname::as_str))?;
    if let Some(uri) = &a.broker {
        cluster::set_broker(&wd, uri)?;
    }
    if let Some(q) = &qemu {
        ferry_vm::qemu::set_binary(&wd, q)?;
    }
    let reg = Registry::open(&wd.db_dir())?;
    let qemu_version = match qemu {
        Some(q) => Some(q.version),
        None => ferry_vm::qemu::binary(&wd)
            .ok()
            .and_then(|b| ferry_vm::qemu::version_of(&b)),
    };
    let mut inv = Inventory::collect(wd.nodename(), VERSION, qemu_version);
    if inv.qemu_version.is_some() {
        inv.accel = ferry_vm::qemu::probe_accel(&wd, &reg, ferry_vm::DEFAULT_CPU_MODEL).ok();
    }
    let json = serde_json::to_string(&inv).map_err(|e| Error::Failed(e.to_string()))?;
    reg.set_inventory("node", &json)?;
    // Said now, not only when a move is refused.
    let corrupts = inv
        .qemu_version
        .as_deref()
        .and_then(ferry_vm::integrity::parse_version_line)
        .zip(inv.accel.as_deref())
        .and_then(|(v, accel)| ferry_vm::integrity::known_to_corrupt(&v, accel));
    if let Some(why) = &corrupts {
        tracing::warn!(%why, "this node's QEMU cannot live-migrate safely");
    }
    Ok(Outcome::message(format!(
        "workdir {} ready for node {} ({}, {} CPUs, {} MiB{}){}",
        wd.root().display(),
        wd.nodename(),
        inv.arch,
        inv.ncpu,
        inv.mem_bytes >> 20,
        inv.qemu_version
            .as_deref()
            .map(|q| format!(", {q}, VMs under {}", inv.accel.as_deref().unwrap_or("?")))
            .unwrap_or_default(),
        corrupts
            .map(|why| format!("; warning: bmigrate refuses this node: {why}"))
            .unwrap_or_default()
    )))
}

/// The registered envs of `kind` a selector names. A single name that is
/// not registered, or a glob that matches nothing, is "not found".
pub fn select(reg: &Registry, kind: EnvKind, sel: &NameSelector) -> Result<Vec<Jname>> {
    if let NameSelector::One(j) = sel {
        return match reg.get(j)? {
            Some(row) if row.kind == kind => Ok(vec![j.clone()]),
            Some(row) => Err(Error::WrongKind {
                jname: j.clone(),
                is: row.kind.as_str(),
                wanted: kind.as_str(),
            }),
            None => Err(Error::EnvNotFound(j.clone())),
        };
    }
    let names: Vec<Jname> = reg
        .list()?
        .into_iter()
        .filter(|r| r.kind == kind && sel.matches(r.jname.as_str()))
        .map(|r| r.jname)
        .collect();
    if names.is_empty() {
        return Err(Error::NoMatch(sel.to_string()));
    }
    Ok(names)
}

/// Apply a lifecycle operation to every env of `kind` the selector names.
fn each(
    ctx: &Context,
    kind: EnvKind,
    sel: &NameSelector,
    done: &str,
    op: impl Fn(&Workdir, &Registry, &Jname) -> Result<()>,
) -> Result<Outcome> {
    let (wd, reg) = ctx.open()?;
    let names = select(&reg, kind, sel)?;
    let total = names.len();
    let mut finished = 0;
    Ok(per_env(&wd, names, done, |wd, j| {
        let r = op(wd, &reg, j);
        finished += 1;
        if total > 1 {
            let pct = u8::try_from(finished * 100 / total).unwrap_or(99);
            ctx.progress(pct, &format!("{j}: {finished} of {total} done"));
        }
        r
    }))
}

/// Run `op` on each env under its lock. One env's failure does not stop the
/// others; a single env's error is returned as is.
fn per_env(
    wd: &Workdir,
    names: Vec<Jname>,
    done: &str,
    mut op: impl FnMut(&Workdir, &Jname) -> Result<()>,
) -> Outcome {
    let results = names
        .iter()
        .map(|j| {
            let r = ferry_core::lock::EnvLock::acquire(wd, j).and_then(|_lock| op(wd, j));
            env_result(j, done, r)
        })
        .collect();
    Outcome::PerEnv { results }
}

/// How many envs [`per_env_parallel`] works on at once.
const WORKERS: usize = 16;

/// Like [`per_env`], `op` running on up to [`WORKERS`] envs at once, each
/// worker with its own registry connection: for operations whose time goes
/// to round trips to shared storage, which overlap. Results keep the order
/// of `names`; an env for which `op` returns `Ok(false)` (not one it
/// applies to) is left out of them.
fn per_env_parallel(
    wd: &Workdir,
    names: Vec<Jname>,
    done: &str,
    op: impl Fn(&Workdir, &Registry, &Jname) -> Result<bool> + Sync,
) -> Vec<EnvResult> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let next = AtomicUsize::new(0);
    let slots: Vec<std::sync::Mutex<Option<EnvResult>>> =
        names.iter().map(|_| std::sync::Mutex::new(None)).collect();
    let work = || {
        let reg = Registry::open(&wd.db_dir()).and_then(|r| r.relaxed().map(|()| r));
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(j) = names.get(i) else { break };
            let r = match &reg {
                Ok(reg) => {
                    ferry_core::lock::EnvLock::acquire(wd, j).and_then(|_lock| op(wd, reg, j))
                }
                Err(e) => Err(Error::Failed(format!("cannot open the registry: {e}"))),
            };
            if let Ok(mut slot) = slots[i].lock() {
                *slot = match r {
                    Ok(false) => None,
                    r => Some(env_result(j, done, r.map(|_| ()))),
                };
            }
        }
    };
    std::thread::scope(|s| {
        for _ in 1..WORKERS.min(names.len()) {
            s.spawn(work);
        }
        work();
    });
    slots
        .into_iter()
        .filter_map(|slot| slot.into_inner().ok().flatten())
        .collect()
}

fn env_result(j: &Jname, done: &str, r: Result<()>) -> EnvResult {
    match r {
        Ok(()) => EnvResult {
            jname: j.to_string(),
            code: exit::OK,
            message: format!("{j} {done}"),
        },
        Err(e) => EnvResult {
            jname: j.to_string(),
            code: exit::for_kind(e.kind()),
            message: error_chain(&e),
        },
    }
}

/// A listing of `columns`, the ones `display=` names (all when `None`).
fn listing(columns: &[&'static str], display: Option<&str>) -> Result<ferry_api::Listing> {
    ferry_api::Listing::new(columns, display)
        .map_err(|reason| Error::bad_value("display", display.unwrap_or(""), reason))
}

/// An error and all its causes on one line, each said once.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}
