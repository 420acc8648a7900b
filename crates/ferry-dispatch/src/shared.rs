//! Zero-copy registration on shared storage: `jregister`, `junregister`,
//! `bregister`, `bunregister`.

use std::time::Duration;

use ferry_api::Outcome;
use ferry_core::register::{self, Takeover};
use ferry_core::{EnvKind, Error, NameSelector, Result};

use crate::{per_env_parallel, select, Context};

/// The kind a definition declares (CBSD's `emulator`).
fn kind_of(def: &ferry_core::rcconf::Definition) -> EnvKind {
    match def.get("emulator") {
        None | Some("jail") => EnvKind::Jail,
        Some(_) => EnvKind::Vm,
    }
}

/// The row of a definition of either kind.
pub(crate) fn row_any(
    wd: &ferry_core::Workdir,
    def: &ferry_core::rcconf::Definition,
) -> Result<ferry_core::registry::EnvRow> {
    match kind_of(def) {
        EnvKind::Jail => ferry_jail::row_of(wd, def),
        EnvKind::Vm => ferry_vm::row_of(wd, def),
    }
}

/// Push what a batch changed on shared storage to disk with one `syncfs`
/// per file system, where the file system implements it (FUSE mounts
/// such as GlusterFS's may not; their bricks' journals order the changes).
fn flush(wd: &ferry_core::Workdir) {
    for d in [wd.rcconf_dir(), wd.root().join("jails-system")] {
        if let Err(e) = ferry_core::atomic::sync_fs(&d) {
            tracing::warn!(dir = %d.display(), error = %e, "syncfs failed");
        }
    }
}

pub fn unregister(ctx: &Context, sel: &NameSelector, kind: EnvKind) -> Result<Outcome> {
    let (wd, reg) = ctx.open()?;
    let names = match sel {
        // A single name is looked up by the operation itself, which tells
        // "unregistered already", "owned elsewhere" and "not found" apart.
        NameSelector::One(j) => vec![j.clone()],
        NameSelector::Glob(_) => select(&reg, kind, sel)?,
    };
    drop(reg);
    let results = per_env_parallel(&wd, names, "unregistered", |wd, reg, j| {
        register::unregister(wd, reg, j, kind, &row_any).map(|()| true)
    });
    flush(&wd);
    Ok(Outcome::PerEnv { results })
}

pub fn register(
    ctx: &Context,
    sel: &NameSelector,
    kind: EnvKind,
    force: bool,
    lease_time: u64,
) -> Result<Outcome> {
    let (wd, reg) = ctx.open()?;
    let glob = matches!(sel, NameSelector::Glob(_));
    let names = match sel {
        NameSelector::One(j) => vec![j.clone()],
        NameSelector::Glob(_) => register::unregistered_names(&wd, |name| sel.matches(name))?,
    };
    let takeover = Takeover {
        force,
        lease_time: Duration::from_secs(lease_time),
    };
    drop(reg);
    let results = per_env_parallel(&wd, names, "registered", |wd, reg, j| {
        match register::register(wd, reg, j, kind, takeover, &row_any) {
            // A glob of jails passes over the VMs, and the other way round.
            Err(Error::WrongKind { .. }) if glob => Ok(false),
            r => r.map(|_| true),
        }
    });
    flush(&wd);
    if results.is_empty() {
        return Err(Error::NoMatch(sel.to_string()));
    }
    Ok(Outcome::PerEnv { results })
}
