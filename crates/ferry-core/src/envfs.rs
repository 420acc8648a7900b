//! An env's files on shared storage, the same for every engine: claiming a
//! name pool-wide, rolling back a failed create, finishing an interrupted
//! one, and removing everything.

use std::fs;
use std::path::Path;

use crate::atomic;
use crate::envdef::{HookCtx, Hooks};
use crate::error::{Error, Result};
use crate::hook::Phase;
use crate::name::Jname;
use crate::rcconf::Definition;
use crate::registry::{EnvRow, Registry};
use crate::runtime;
use crate::workdir::Workdir;

/// Create an env on this node: claim its name, make its dirs, run
/// `populate` between `mnt_start` and `mnt_stop` (phase `create`), then
/// write its definition and registry row. Any failure removes all it made.
pub fn create(
    wd: &Workdir,
    reg: &Registry,
    row: &EnvRow,
    hooks: &Hooks,
    def: &Definition,
    populate: impl FnOnce() -> Result<()>,
) -> Result<()> {
    let j = &row.jname;
    if reg.get(j)?.is_some() {
        return Err(Error::EnvExists(j.clone()));
    }
    hooks.check()?;
    claim(wd, j)?;
    let made = (|| {
        let epoch = crate::lease::acquire(wd, j)?;
        crate::register::write_pool_id(wd, j)?;
        for d in [wd.data_dir(j), wd.fstab_dir(j)] {
            fs::create_dir_all(&d).map_err(Error::io("cannot create", &d))?;
        }
        let ctx = HookCtx {
            wd,
            jname: j,
            epoch,
        };
        hooks.with_mounts(&ctx, Phase::Create, false, populate)?;
        let rc = wd.registered_rcconf(j);
        def.store(&rc, wd.root())
            .map_err(Error::io("cannot write definition", &rc))?;
        reg.insert(row)
    })();
    if let Err(e) = made {
        remove_files(wd, j);
        return Err(e);
    }
    finish_create(wd, j)
}

/// Finish what an interrupted create or remove of `j` left behind, if that
/// is the case; returns whether it was.
pub fn finish_interrupted(wd: &Workdir, reg: &Registry, j: &Jname) -> Result<bool> {
    if reg.get(j)?.is_none() {
        if interrupted_here(wd, j) {
            remove_files(wd, j);
            runtime::clear(wd, j)?;
            return Ok(true);
        }
        return Err(Error::EnvNotFound(j.clone()));
    }
    if !wd.registered_rcconf(j).exists() {
        // The definition is gone: an earlier remove got this far.
        runtime::clear(wd, j)?;
        reg.remove(j)?;
        return Ok(true);
    }
    Ok(false)
}

/// Remove a stopped env's files: its data between `mnt_start` and
/// `mnt_stop` (phase `remove`), then the definition, then the registry row.
/// A crash in between leaves a row without a definition, which
/// [`finish_interrupted`] completes.
pub fn remove(wd: &Workdir, reg: &Registry, j: &Jname, hooks: &Hooks) -> Result<()> {
    let epoch = crate::lease::held(wd, j)?;
    let ctx = HookCtx {
        wd,
        jname: j,
        epoch,
    };
    let data = wd.data_dir(j);
    hooks.with_mounts(&ctx, Phase::Remove, false, || empty_dir(&data))?;
    remove_files(wd, j);
    runtime::clear(wd, j)?;
    reg.remove(j)?;
    Ok(())
}

/// Marker left in the system dir while a create is in progress; it names
/// the node doing it.
pub(crate) const CREATING: &str = ".creating";

/// Claim `j` for a new env, pool-wide: creating its system dir on shared
/// storage is atomic, so two nodes can never both create the same name.
/// A `.creating` marker stays until [`finish_create`].
pub fn claim(wd: &Workdir, j: &Jname) -> Result<()> {
    if wd.data_dir(j).exists() || wd.unregistered_rcconf(j).exists() {
        return Err(Error::EnvExists(j.clone()));
    }
    let sys = wd.system_dir(j);
    match fs::create_dir(&sys) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(if sys.join(CREATING).exists() {
                Error::Refused(format!(
                    "an earlier create of {j} was interrupted; removing {j} cleans it up"
                ))
            } else {
                Error::EnvExists(j.clone())
            });
        }
        Err(e) => return Err(Error::io("cannot create", &sys)(e)),
    }
    // Root's only: the definition may hold password hashes (cloud-init),
    // the logs what the env printed.
    fs::set_permissions(&sys, std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .map_err(Error::io("cannot set mode", &sys))?;
    let marker = sys.join(CREATING);
    // Its bytes are synced now; its name in the dir becomes durable with
    // the next durable write there (a create's definition, a rename's
    // journal): the journal of the file systems ferry runs on never
    // persists a later change without the earlier ones (atomic::write_synced).
    atomic::write_synced(&marker, format!("{}\n", wd.nodename()).as_bytes(), 0o644)
        .map_err(Error::io("cannot write", &marker))
}

/// The create of `j` is complete: drop the marker.
pub fn finish_create(wd: &Workdir, j: &Jname) -> Result<()> {
    let marker = wd.system_dir(j).join(CREATING);
    fs::remove_file(&marker).map_err(Error::io("cannot remove", &marker))
}

/// Whether a create of `j` by this node was interrupted (its files may be
/// left without a registry row).
pub fn interrupted_here(wd: &Workdir, j: &Jname) -> bool {
    fs::read_to_string(wd.system_dir(j).join(CREATING)).is_ok_and(|n| n.trim() == wd.nodename())
}

/// Remove every file of `j` on shared storage (best effort: used to roll
/// back a failed create and to finish a remove).
pub fn remove_files(wd: &Workdir, j: &Jname) {
    for d in [wd.data_dir(j), wd.fstab_dir(j), wd.system_dir(j)] {
        if let Err(e) = fs::remove_dir_all(&d) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(jname = %j, path = %d.display(), error = %e, "cannot remove");
            }
        }
    }
}

/// Remove everything inside `dir` (which may be a mount point), not `dir`.
pub fn empty_dir(dir: &Path) -> Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io("cannot list", dir)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(Error::io("cannot list", dir))?;
        let p = entry.path();
        let ft = entry.file_type().map_err(Error::io("cannot stat", &p))?;
        let r = if ft.is_dir() {
            fs::remove_dir_all(&p)
        } else {
            fs::remove_file(&p)
        };
        r.map_err(Error::io("cannot remove", &p))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_are_exclusive_and_interruptions_are_recognised() {
        let t = tempfile::tempdir().unwrap();
        let wd = Workdir::init(t.path(), Some("n1")).unwrap();
        let j = Jname::new("j").unwrap();
        claim(&wd, &j).unwrap();
        assert!(interrupted_here(&wd, &j));
        assert!(matches!(claim(&wd, &j), Err(Error::Refused(_))));
        finish_create(&wd, &j).unwrap();
        assert!(!interrupted_here(&wd, &j));
        assert!(matches!(claim(&wd, &j), Err(Error::EnvExists(_))));
        remove_files(&wd, &j);
        claim(&wd, &j).unwrap();
    }
}
