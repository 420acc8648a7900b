//! Zero-copy registration on shared storage: `jregister`, `junregister`,
//! `bregister`, `bunregister`.

use std::time::Duration;

use ferry_api::Outcome;
use ferry_core::register::{self, Takeover};
use ferry_core::{EnvKind, Error, NameSelector, Result};

use crate::context::{per_env_parallel, select, Context};
use crate::engines::ENGINES;

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
        register::unregister(wd, reg, j, kind, &ENGINES).map(|()| true)
    });
    register::sync_shared(&wd);
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
        match register::register(wd, reg, j, kind, takeover, &ENGINES) {
            // A glob of jails passes over the VMs, and the other way round.
            Err(Error::WrongKind { .. }) if glob => Ok(false),
            r => r.map(|_| true),
        }
    });
    register::sync_shared(&wd);
    if results.is_empty() {
        return Err(Error::NoMatch(sel.to_string()));
    }
    Ok(Outcome::PerEnv { results })
}
