//! Renaming a stopped env (`jrename`, `brename`), the same for every
//! engine. An env's name is in the names of its files on shared storage
//! (`jails-data/<j>-data`, `jails-fstab/<j>`, `jails-system/<j>` with its
//! definition `rc.conf_<j>` and owner lease), in its definition and in the
//! registry row: no one step renames them all, so a rename is journaled.
//!
//! 1. Checks, before anything changes: `old` stopped and owned here, the
//!    new definition (`jname`, `path`, `data` and the keys given) valid.
//! 2. The new name is claimed pool-wide as a create claims it
//!    ([`envfs::claim`]: `jails-system/<new>` made atomically), and the
//!    journal `jails-system/<new>/.renaming` written (from which name, on
//!    which node, with which changed keys) before the create marker goes.
//! 3. [`finish`] rolls forward, each step done only if not yet done: the
//!    data and fstab dirs renamed, the new definition written and the old
//!    one removed, the rest of the system dir (lease, logs, checkpoints)
//!    moved, the registry row replaced, the journal removed.
//!
//! A crash anywhere after the journal is written is finished by the next
//! `jrename`/`brename` of the same names or by this node's daemon when it
//! starts; before it, nothing moved, and the claim is dropped. No step
//! ever removes data: the worst a crash leaves is the env under its new
//! name, not yet in the registry, until the journal is finished.

use std::fs;
use std::path::Path;

use crate::atomic;
use crate::engine::EngineSet;
use crate::error::{Error, Result};
use crate::model::{self, Action};
use crate::name::Jname;
use crate::rcconf::Definition;
use crate::registry::Registry;
use crate::workdir::Workdir;
use crate::{envdef, envfs, lease, runtime};

/// The journal of a rename, in the new name's system dir.
const JOURNAL: &str = ".renaming";

/// Keys of the journal beside the changed definition keys (`set_<key>`).
const FROM: &str = "from";
const NODE: &str = "node";
const SET: &str = "set_";

/// Rename the stopped env `old` (registered and owned here) to `new`,
/// changing these definition keys too (`host_hostname`, `ip4_addr`).
pub fn rename(
    wd: &Workdir,
    reg: &Registry,
    engines: &EngineSet,
    old: &Jname,
    new: &Jname,
    changes: &[(String, String)],
) -> Result<()> {
    if old == new {
        return Err(Error::bad_value("new", new.as_str(), "is the old name"));
    }
    if reg.get(old)?.is_none() {
        return Err(Error::EnvNotFound(old.clone()));
    }
    if reg.get(new)?.is_some() {
        return Err(Error::EnvExists(new.clone()));
    }
    let (st, _) = runtime::state(wd, old)?;
    model::check(old, st, Action::Rename)?;
    lease::held(wd, old)?;
    // The new definition must read before anything moves.
    let def = renamed(wd, &envdef::load_registered(wd, old)?, new, changes)?;
    engines.of_definition(&def).row_of(wd, &def)?;
    envfs::claim(wd, new)?;
    let journaled = (|| {
        let mut j = Definition::new();
        let set = |j: &mut Definition, k: &str, v: &str| {
            j.set(k, v.to_owned())
                .map_err(|e| Error::bad_value(k, v, e.to_string()))
        };
        set(&mut j, FROM, old.as_str())?;
        set(&mut j, NODE, wd.nodename())?;
        for (k, v) in changes {
            set(&mut j, &format!("{SET}{k}"), v)?;
        }
        let path = journal(wd, new);
        j.store(&path, wd.root())
            .map_err(Error::io("cannot write the rename journal", &path))
    })();
    if let Err(e) = journaled {
        envfs::remove_files(wd, new);
        return Err(e);
    }
    envfs::finish_create(wd, new)?;
    crate::sys::crashpoint("rename", 1);
    finish(wd, reg, engines, new)
}

fn journal(wd: &Workdir, new: &Jname) -> std::path::PathBuf {
    wd.system_dir(new).join(JOURNAL)
}

/// The definition `def` of the env renamed to `new`, with `changes`
/// (also an import's, under its new name).
pub fn renamed(
    wd: &Workdir,
    def: &Definition,
    new: &Jname,
    changes: &[(String, String)],
) -> Result<Definition> {
    let mut def = def.clone();
    let root = wd.root().to_string_lossy();
    if def.get("mount_fstab").is_some() {
        let p = format!("{root}/jails-fstab/{new}/fstab");
        def.set("mount_fstab", p.clone())
            .map_err(|e| Error::bad_value("mount_fstab", &p, e.to_string()))?;
    }
    let pairs = [
        ("jname", new.as_str().to_owned()),
        ("path", format!("{root}/jails/{new}")),
        ("data", format!("{root}/jails-data/{new}-data")),
    ];
    for (k, v) in pairs
        .iter()
        .map(|(k, v)| (*k, v.as_str()))
        .chain(changes.iter().map(|(k, v)| (k.as_str(), v.as_str())))
    {
        def.set(k, v.to_owned())
            .map_err(|e| Error::bad_value(k, v, e.to_string()))?;
    }
    Ok(def)
}

/// Whether a rename into `new` was left unfinished (its journal is there).
pub fn interrupted(wd: &Workdir, new: &Jname) -> Option<Jname> {
    let def = Definition::load(&journal(wd, new), wd.root()).ok()?;
    def.get(FROM).and_then(|f| Jname::new(f).ok())
}

/// Roll the journaled rename into `new` forward to its end.
pub fn finish(wd: &Workdir, reg: &Registry, engines: &EngineSet, new: &Jname) -> Result<()> {
    let path = journal(wd, new);
    let j = Definition::load(&path, wd.root()).map_err(|e| {
        Error::Failed(format!(
            "cannot read the rename journal {}: {e}",
            path.display()
        ))
    })?;
    let old = j
        .get(FROM)
        .map(Jname::new)
        .transpose()
        .map_err(|e| {
            Error::Failed(format!(
                "the rename journal {} names no env: {e}",
                path.display()
            ))
        })?
        .ok_or_else(|| {
            Error::Failed(format!(
                "the rename journal {} names no env",
                path.display()
            ))
        })?;
    // A create marker left beside the journal must not make the new name
    // look like an interrupted create (whose files are removed).
    remove_file(&wd.system_dir(new).join(envfs::CREATING))?;
    let changes: Vec<(String, String)> = j
        .iter()
        .filter_map(|(k, v)| k.strip_prefix(SET).map(|k| (k.to_owned(), v.to_owned())))
        .collect();
    move_dir(&wd.data_dir(&old), &wd.data_dir(new))?;
    move_dir(&wd.fstab_dir(&old), &wd.fstab_dir(new))?;
    crate::sys::crashpoint("rename", 2);
    let (old_rc, new_rc) = (wd.registered_rcconf(&old), wd.registered_rcconf(new));
    if !new_rc.exists() {
        let def = Definition::load(&old_rc, wd.root()).map_err(|e| {
            Error::Failed(format!(
                "cannot read {} to rename it: {e}",
                old_rc.display()
            ))
        })?;
        renamed(wd, &def, new, &changes)?
            .store(&new_rc, wd.root())
            .map_err(Error::io("cannot write definition", &new_rc))?;
    }
    remove_file(&old_rc)?;
    // The rest of the system dir: the lease, logs, checkpoints, hooks.
    let old_sys = wd.system_dir(&old);
    if let Ok(entries) = fs::read_dir(&old_sys) {
        for e in entries {
            let e = e.map_err(Error::io("cannot list", &old_sys))?;
            let to = wd.system_dir(new).join(e.file_name());
            fs::rename(e.path(), &to).map_err(Error::io("cannot move", e.path()))?;
        }
    }
    match fs::remove_dir(&old_sys) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(Error::io("cannot remove", &old_sys)(e))
        }
        _ => {}
    }
    crate::sys::crashpoint("rename", 3);
    let def = Definition::load(&new_rc, wd.root())
        .map_err(|e| Error::Failed(format!("cannot read {}: {e}", new_rc.display())))?;
    let row = engines.of_definition(&def).row_of(wd, &def)?;
    reg.upsert(&row)?;
    reg.remove(&old)?;
    runtime::clear(wd, &old)?;
    let bundle = wd.runtime_dir(&old);
    if bundle.exists() {
        fs::remove_dir_all(&bundle).map_err(Error::io("cannot remove", &bundle))?;
    }
    remove_file(&path)?;
    atomic::sync_dir(&wd.system_dir(new)).map_err(Error::io("cannot sync", wd.system_dir(new)))
}

/// Finish every rename this node left unfinished (the daemon does this
/// first when it starts). Returns the errors met, by new name.
pub fn finish_all(wd: &Workdir, reg: &Registry, engines: &EngineSet) -> Vec<(Jname, Error)> {
    let system = wd.root().join("jails-system");
    let mut out = Vec::new();
    for e in fs::read_dir(&system).into_iter().flatten().flatten() {
        let Some(new) = e.file_name().to_str().and_then(|n| Jname::new(n).ok()) else {
            continue;
        };
        let Ok(j) = Definition::load(&journal(wd, &new), wd.root()) else {
            continue;
        };
        if j.get(NODE) != Some(wd.nodename()) {
            continue;
        }
        tracing::info!(jname = %new, "finishing an interrupted rename");
        let r =
            crate::lock::EnvLock::acquire(wd, &new).and_then(|_l| finish(wd, reg, engines, &new));
        if let Err(err) = r {
            out.push((new, err));
        }
    }
    out
}

/// Rename `from` to `to` unless that was done (`from` gone) already.
fn move_dir(from: &Path, to: &Path) -> Result<()> {
    if !from.exists() {
        return Ok(());
    }
    if to.exists() {
        // An empty dir a hook or a create left: the old one wins.
        fs::remove_dir(to).map_err(Error::io("cannot replace", to))?;
    }
    fs::rename(from, to).map_err(Error::io("cannot rename", from))
}

fn remove_file(p: &Path) -> Result<()> {
    match fs::remove_file(p) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io("cannot remove", p)(e)),
        _ => Ok(()),
    }
}
