//! Zero-copy registration on shared storage: `jregister`, `junregister`,
//! `bregister`, `bunregister`; and renaming an env's files there
//! (`jrename`, `brename`).

use std::time::Duration;

use ferry_api::Outcome;
use ferry_core::engine::StartOptions;
use ferry_core::lock::EnvLock;
use ferry_core::register::{self, Takeover};
use ferry_core::rename;
use ferry_core::{EnvKind, EnvState, Error, Jname, NameSelector, Result};

use crate::context::{per_env_parallel, select, Context};
use crate::engines::{self, ENGINES};

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
        only_from: None,
    };
    drop(reg);
    let results = per_env_parallel(&wd, names, "registered", |wd, reg, j| {
        match register::register(wd, reg, j, kind, takeover.clone(), &ENGINES) {
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

/// `jrename`/`brename`: under both names' locks; with `restart`, a running
/// env is stopped first and started again under its new name. A rename
/// into `new` that a crash cut short is finished.
pub fn rename(
    ctx: &Context,
    kind: EnvKind,
    old: &Jname,
    new: &Jname,
    changes: &[(String, String)],
    restart: bool,
) -> Result<Outcome> {
    let (wd, reg) = ctx.open()?;
    if old == new {
        return Err(Error::bad_value("new", new.as_str(), "is the old name"));
    }
    let mut names = [old, new];
    names.sort();
    let _locks = (
        EnvLock::acquire(&wd, names[0])?,
        EnvLock::acquire(&wd, names[1])?,
    );
    if rename::interrupted(&wd, new).as_ref() == Some(old) {
        rename::finish(&wd, &reg, &ENGINES, new)?;
        return Ok(Outcome::message(format!(
            "{old} renamed to {new} (an interrupted rename, finished)"
        )));
    }
    select(&reg, kind, &NameSelector::One(old.clone()))?;
    let engine = engines::of(kind);
    let running = engine.state(&wd, old)? == EnvState::Running;
    if running && restart {
        engine.stop(&wd, old)?;
    }
    rename::rename(&wd, &reg, &ENGINES, old, new, changes)?;
    if running && restart {
        engine.start(&wd, &reg, new, &StartOptions::default())?;
    }
    register::sync_shared(&wd);
    Ok(Outcome::message(format!(
        "{old} renamed to {new}{}",
        if running && restart {
            ", restarted"
        } else {
            ""
        }
    )))
}
