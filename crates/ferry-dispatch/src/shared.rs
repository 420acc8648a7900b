//! Zero-copy registration on shared storage: `jregister`, `junregister`,
//! `bregister`, `bunregister`.

use std::time::Duration;

use ferry_api::Outcome;
use ferry_core::register::{self, RowOf, Takeover};
use ferry_core::{EnvKind, Error, Jname, NameSelector, Result};

use crate::{per_env, select, Context};

fn row_of(kind: EnvKind) -> RowOf<'static> {
    match kind {
        EnvKind::Jail => &ferry_jail::row_of,
        EnvKind::Vm => &ferry_vm::row_of,
    }
}

/// The kind an unregistered definition declares (CBSD's `emulator`);
/// `None` when it cannot be read, so that a glob reports it as an error
/// instead of skipping it.
fn emulator_kind(wd: &ferry_core::Workdir, j: &Jname) -> Option<EnvKind> {
    let def = ferry_core::rcconf::Definition::load(&wd.unregistered_rcconf(j), wd.root()).ok()?;
    match def.get("emulator") {
        None | Some("jail") => Some(EnvKind::Jail),
        Some(_) => Some(EnvKind::Vm),
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
    Ok(per_env(&wd, names, "unregistered", |wd, j| {
        register::unregister(wd, &reg, j, kind, row_of(kind))
    }))
}

pub fn register(
    ctx: &Context,
    sel: &NameSelector,
    kind: EnvKind,
    force: bool,
    lease_time: u64,
) -> Result<Outcome> {
    let (wd, reg) = ctx.open()?;
    let names: Vec<Jname> = match sel {
        NameSelector::One(j) => vec![j.clone()],
        NameSelector::Glob(_) => {
            let n: Vec<Jname> = register::unregistered_names(&wd, |name| sel.matches(name))?
                .into_iter()
                .filter(|j| emulator_kind(&wd, j).is_none_or(|k| k == kind))
                .collect();
            if n.is_empty() {
                return Err(Error::NoMatch(sel.to_string()));
            }
            n
        }
    };
    let takeover = Takeover {
        force,
        lease_time: Duration::from_secs(lease_time),
    };
    Ok(per_env(&wd, names, "registered", |wd, j| {
        register::register(wd, &reg, j, kind, takeover, row_of(kind)).map(|_| ())
    }))
}
