//! The command handlers: one place where a typed [`Command`] is carried
//! out, whichever front door it came through (the CLI, the broker agent,
//! a task runner). Handlers are short: open, call the engine or the
//! cluster code, shape the outcome.

mod archive;
mod base;
mod ha;
mod image;
mod jail;
mod node;
mod settings;
mod shared;
mod vm;

use std::path::Path;

use ferry_api::command::InitenvArgs;
use ferry_api::{Command, Outcome, View};
use ferry_core::engine::StartOptions;
use ferry_core::inventory::Inventory;
use ferry_core::registry::Registry;
use ferry_core::{EnvKind, Error, Jname, NameSelector, Result, Workdir};

use crate::context::{listing, per_env, select, view, Context};
use crate::{daemon, engines, migrate, rpc, tasks, VERSION};

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
        Command::Jstart(a) => lifecycle(ctx, EnvKind::Jail, &a.jname, Op::Start(None)),
        Command::Jstop(a) => lifecycle(ctx, EnvKind::Jail, &a.jname, Op::Stop),
        Command::Jrestart(a) => lifecycle(ctx, EnvKind::Jail, &a.jname, Op::Restart),
        Command::Jremove(a) => lifecycle(ctx, EnvKind::Jail, &a.jname, Op::Remove),
        Command::Jls(a) => list(ctx, EnvKind::Jail, &a.jname, &view(&a.display, a.header)),
        Command::Jset(ref a) => {
            let changes = settings::changes(&cmd);
            settings::set(ctx, EnvKind::Jail, &a.jname, &changes)
        }
        Command::Jget(a) => settings::get(ctx, EnvKind::Jail, &a.jname, &a.keys),
        Command::Bset(ref a) => {
            // Passwords are kept only as hashes.
            let changes = settings::changes(&cmd)
                .into_iter()
                .map(|(k, v)| {
                    let v = if k.starts_with("ci_user_pw") {
                        ferry_vm::cloud::hashed(&k, &v)?
                    } else {
                        v
                    };
                    Ok((k, v))
                })
                .collect::<Result<Vec<_>>>()?;
            settings::set(ctx, EnvKind::Vm, &a.jname, &changes)
        }
        Command::Bget(a) => settings::get(ctx, EnvKind::Vm, &a.jname, &a.keys),
        Command::Jclone(a) => {
            let (wd, reg) = ctx.open()?;
            jail::clone(&wd, &reg, a)
        }
        Command::Bclone(a) => {
            let (wd, reg) = ctx.open()?;
            vm::clone(&wd, &reg, a)
        }
        Command::Jrename(ref a) => {
            let changes = settings::changes(&cmd);
            shared::rename(ctx, EnvKind::Jail, &a.old, &a.new, &changes, a.restart)
        }
        Command::Brename(a) => shared::rename(ctx, EnvKind::Vm, &a.old, &a.new, &[], a.restart),
        Command::Jexport(a) => archive::export(
            ctx,
            EnvKind::Jail,
            &a.jname,
            a.dstdir.as_deref(),
            a.compress,
        ),
        Command::Bexport(a) => {
            archive::export(ctx, EnvKind::Vm, &a.jname, a.dstdir.as_deref(), a.compress)
        }
        Command::Jimport(a) => {
            let mut changes = Vec::new();
            if let Some(h) = &a.new_host_hostname {
                changes.push(("host_hostname".to_owned(), h.clone()));
            }
            if let Some(ip) = &a.new_ip4_addr {
                changes.push(("ip4_addr".to_owned(), ip.render()));
            }
            archive::import(ctx, EnvKind::Jail, &a.jname, a.new_jname.as_ref(), &changes)
        }
        Command::Bimport(a) => {
            archive::import(ctx, EnvKind::Vm, &a.jname, a.new_jname.as_ref(), &[])
        }
        Command::Jexec(a) => {
            let (wd, _) = ctx.open()?;
            let status = ferry_jail::exec(&wd, &a.jname, &a.cmd)?;
            Ok(Outcome::Exited { status })
        }
        Command::Bcreate(a) => vm::create(ctx, a),
        Command::Bstart(a) => {
            let checkpoint = a.checkpoint.map(|w| w.0);
            lifecycle(ctx, EnvKind::Vm, &a.jname, Op::Start(checkpoint))
        }
        Command::Bstop(a) => lifecycle(ctx, EnvKind::Vm, &a.jname, Op::Stop),
        Command::Brestart(a) => lifecycle(ctx, EnvKind::Vm, &a.jname, Op::Restart),
        Command::Bremove(a) => lifecycle(ctx, EnvKind::Vm, &a.jname, Op::Remove),
        Command::Bls(a) => list(ctx, EnvKind::Vm, &a.jname, &view(&a.display, a.header)),
        Command::Bcheckpoint(a) => vm::checkpoint(ctx, a),
        Command::Bsnapshot(a) => vm::snapshot(ctx, a),
        Command::BhyveDsk(a) => vm::disk(ctx, a),
        Command::Image(a) => image::run(ctx, a),
        Command::Jsnapshot(a) => {
            let (wd, reg) = ctx.open()?;
            jail::snapshot(&wd, &reg, &a)
        }
        Command::Daemon(a) => daemon::run(ctx, a),
        Command::Watchdog(a) => {
            let wd = ctx.workdir()?;
            ferry_core::fence::watch(&wd, std::time::Duration::from_secs(a.fence_time.max(1)))?;
            Ok(Outcome::message("watchdog stopped"))
        }
        Command::Task(a) => tasks::run(ctx, a, dispatch),
        Command::Taskls(a) => tasks::list(ctx, &view(&a.display, a.header)),
        Command::Node(a) => node::run(ctx, a),
        Command::Ha(a) => ha::run(ctx, &a),
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
    let mirror = a
        .pkg_mirror
        .as_deref()
        .map(ferry_jail::pkg::Mirror::parse)
        .transpose()?;
    let wd = Workdir::init(root, a.nodename.as_ref().map(Jname::as_str))?;
    if let Some(uri) = &a.broker {
        rpc::set_broker(&wd, uri)?;
    }
    if let Some(q) = &qemu {
        ferry_vm::qemu::set_binary(&wd, q)?;
    }
    if let Some(m) = &mirror {
        m.set(&wd)?;
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
    let json = serde_json::to_string(&inv).map_err(Error::encode("the inventory"))?;
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

/// A lifecycle operation of an engine.
#[derive(Debug, Clone)]
enum Op {
    /// Start, restoring this checkpoint (VMs) or booting.
    Start(Option<String>),
    Stop,
    Restart,
    Remove,
}

impl Op {
    fn done(&self) -> &'static str {
        match self {
            Op::Start(_) => "started",
            Op::Stop => "stopped",
            Op::Restart => "restarted",
            Op::Remove => "removed",
        }
    }
}

/// Apply a lifecycle operation to every env of `kind` the selector names,
/// through its engine.
fn lifecycle(ctx: &Context, kind: EnvKind, sel: &NameSelector, op: Op) -> Result<Outcome> {
    let (wd, reg) = ctx.open()?;
    let names = select(&reg, kind, sel)?;
    let engine = engines::of(kind);
    let start = StartOptions {
        checkpoint: match &op {
            Op::Start(c) => c.clone(),
            _ => None,
        },
    };
    let total = names.len();
    let mut finished = 0;
    let results = per_env(&wd, names, op.done(), |wd, j| {
        let r = match op {
            Op::Start(_) => engine.start(wd, &reg, j, &start),
            Op::Stop => engine.stop(wd, j),
            Op::Restart => engine.restart(wd, &reg, j),
            Op::Remove => engine.remove(wd, &reg, j),
        };
        finished += 1;
        if total > 1 {
            let pct = u8::try_from(finished * 100 / total).unwrap_or(99);
            ctx.step(pct, format!("{j}: {finished} of {total} done"));
        }
        r
    });
    Ok(Outcome::PerEnv { results })
}

/// `jls`, `bls`: the envs of `kind` registered here, with their live
/// state, as their engine describes them.
fn list(ctx: &Context, kind: EnvKind, sel: &NameSelector, view: &View) -> Result<Outcome> {
    let (wd, reg) = ctx.open()?;
    let engine = engines::of(kind);
    let mut l = listing(engine.columns(), view)?;
    for row in reg.list()? {
        if row.kind == kind && sel.matches(row.jname.as_str()) {
            l.push(engine.describe(&wd, &row)?);
        }
    }
    Ok(Outcome::Listing(l))
}
