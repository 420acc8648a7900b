//! Cloning a stopped env into a new one (`jclone`, `bclone`), the same for
//! every engine: the new env is created as `jcreate`/`bcreate` create one
//! (its name claimed pool-wide, its own lease, rolled back on any failure),
//! and its data is copied from the old one's, by CBSD's custom clone hooks
//! when they say they did it, else by ferry (`cp -a`, which reflinks where
//! the file system can and keeps holes).
//!
//! Clone hooks are the executables of `jails-system/<old>/clone-local.d/`
//! and `$workdir/etc/clone-local.d/`, run in name order with the mount
//! hooks' arguments for the new env (`-d -f -j -r -s`), `FERRY_HOOK=clone`,
//! `FERRY_PHASE=clone`, and `FERRY_CLONE_FROM=<old jname>`,
//! `FERRY_CLONE_SOURCE=<old data dir>`. Exit 0: the hook made no copy;
//! 1: it made the copy (ferry copies nothing); 2: cancel the clone
//! (nothing is left of the new env). Any other ending fails the clone.

use std::path::{Path, PathBuf};

use crate::envdef::{EnvDirs, HookCtx, Hooks};
use crate::error::{Error, Result};
use crate::hook::{self, HookError, HookKind, Phase};
use crate::model::{self, Action};
use crate::name::Jname;
use crate::rcconf::Definition;
use crate::registry::{EnvRow, Registry};
use crate::workdir::Workdir;
use crate::{base, envfs, lease, runtime};

/// How long a clone hook may run (it may copy a whole disk).
const HOOK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3600);

/// The clone hooks of `old`: its own, then the workdir's, each dir in
/// name order.
pub fn hooks(wd: &Workdir, old: &Jname) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for dir in [
        wd.system_dir(old).join("clone-local.d"),
        wd.root().join("etc/clone-local.d"),
    ] {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut here: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                !p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
            })
            .collect();
        here.sort();
        out.extend(here);
    }
    out
}

/// Clone the stopped env `old` (owned here) into the env `row` describes,
/// with definition `def` and mount hooks `new_hooks`.
pub fn clone(
    wd: &Workdir,
    reg: &Registry,
    old: &Jname,
    row: &EnvRow,
    new_hooks: &Hooks,
    def: &Definition,
) -> Result<()> {
    let (st, _) = runtime::state(wd, old)?;
    model::check(old, st, Action::Clone)?;
    lease::held(wd, old)?;
    let hooks = hooks(wd, old);
    for h in &hooks {
        hook::check_as(HookKind::Clone, h)?;
    }
    let new = &row.jname;
    envfs::create(wd, reg, row, new_hooks, def, || {
        let epoch = lease::read(wd, new)?.map_or(0, |l| l.epoch);
        let mut copied = false;
        for h in &hooks {
            copied |= run_hook(wd, h, old, new, epoch)?;
        }
        if !copied {
            copy_dir(&wd.data_dir(old), &wd.data_dir(new))?;
        }
        copy_dir(&wd.fstab_dir(old), &wd.fstab_dir(new))
    })
}

/// Copy what `src` holds into `dst` (made if missing); an empty or
/// missing `src` costs no copy.
fn copy_dir(src: &Path, dst: &Path) -> Result<()> {
    let empty = std::fs::read_dir(src).map_or(true, |mut d| d.next().is_none());
    if empty {
        return Ok(());
    }
    std::fs::create_dir_all(dst).map_err(Error::io("cannot create", dst))?;
    base::copy_tree(src, dst)
}

/// Run one clone hook; whether it made the copy.
fn run_hook(wd: &Workdir, h: &Path, old: &Jname, new: &Jname, epoch: u64) -> Result<bool> {
    let dirs = EnvDirs::of(wd, new);
    if let Some(d) = dirs.log.parent() {
        std::fs::create_dir_all(d).map_err(Error::io("cannot create", d))?;
    }
    let ctx = HookCtx {
        wd,
        jname: new,
        epoch,
    };
    let run = dirs.hook_run(
        &ctx,
        HookKind::Clone,
        Phase::Clone,
        Some(HOOK_TIMEOUT),
        false,
    );
    let source = wd.data_dir(old);
    let env = [
        ("FERRY_CLONE_FROM", old.as_str().to_owned()),
        ("FERRY_CLONE_SOURCE", source.to_string_lossy().into_owned()),
    ];
    match hook::run_with_env(h, &run, &env) {
        Ok(_) => Ok(false),
        Err(HookError::Exit { code: 1, .. }) => Ok(true),
        Err(HookError::Exit { code: 2, .. }) => Err(Error::Refused(format!(
            "the clone of {old} into {new} was cancelled by its hook {}; nothing was made",
            h.display()
        ))),
        Err(e) => Err(e.into()),
    }
}
