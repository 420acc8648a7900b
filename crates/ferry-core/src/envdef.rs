//! What every env's definition shares, whatever its engine: where the
//! definition lives, and the mount hooks (`mnt_start`, `mnt_stop`,
//! `mnt_timeout`) with their abort-and-undo rule (DESIGN §6).

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::hook::{self, HookKind, HookRun, Phase};
use crate::name::Jname;
use crate::rcconf::{Definition, LoadError};
use crate::workdir::Workdir;

/// Load the definition of an env registered on this node.
pub fn load_registered(wd: &Workdir, j: &Jname) -> Result<Definition> {
    load(wd, j, &wd.registered_rcconf(j))
}

/// Load a definition file, mapping a missing file to "not found".
pub fn load(wd: &Workdir, j: &Jname, path: &Path) -> Result<Definition> {
    load_raw(wd, j, path).map(|(_, def)| def)
}

/// Load a definition file and keep its bytes, mapping a missing file to
/// "not found".
pub fn load_raw(wd: &Workdir, j: &Jname, path: &Path) -> Result<(Vec<u8>, Definition)> {
    match Definition::load_raw(path, wd.root()) {
        Ok(d) => Ok(d),
        Err(LoadError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            Err(Error::EnvNotFound(j.clone()))
        }
        Err(LoadError::Io { path, source }) => Err(Error::Io {
            what: "cannot read definition",
            path,
            source,
        }),
        Err(LoadError::Parse { path, source }) => Err(Error::Definition { path, source }),
    }
}

/// The paths a hook of an env is told about (`-d -f -r -s`) and its log.
#[derive(Debug, Clone)]
pub struct EnvDirs {
    pub data: PathBuf,
    pub fstab: PathBuf,
    pub system: PathBuf,
    pub rcconf: PathBuf,
    pub log: PathBuf,
}

impl EnvDirs {
    pub fn of(wd: &Workdir, j: &Jname) -> EnvDirs {
        EnvDirs {
            data: wd.data_dir(j),
            fstab: wd.fstab_dir(j),
            system: wd.system_dir(j),
            rcconf: wd.rcconf_dir(),
            log: wd.hook_log(j),
        }
    }

    /// A run of a hook of `kind` for the env of `ctx`.
    pub fn hook_run<'a>(
        &'a self,
        ctx: &HookCtx<'a>,
        kind: HookKind,
        phase: Phase,
        timeout: Option<Duration>,
        dry_run: bool,
    ) -> HookRun<'a> {
        HookRun {
            kind,
            phase,
            jname: ctx.jname.as_str(),
            data_dir: &self.data,
            fstab_dir: &self.fstab,
            rcconf_dir: &self.rcconf,
            system_dir: &self.system,
            node: ctx.wd.nodename(),
            workdir: ctx.wd.root(),
            epoch: ctx.epoch,
            log: &self.log,
            timeout,
            grace: hook::DEFAULT_GRACE,
            dry_run,
        }
    }
}

/// The mount hooks of one env.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hooks {
    pub mnt_start: Option<PathBuf>,
    pub mnt_stop: Option<PathBuf>,
    /// `None`: no limit (`mnt_timeout="0"`).
    pub timeout: Option<Duration>,
}

impl Hooks {
    /// Read `mnt_start`, `mnt_stop` and `mnt_timeout` from a definition.
    pub fn from_definition(def: &Definition, workdir: &Path) -> Result<Hooks> {
        let hook = |key: &str| -> Result<Option<PathBuf>> {
            match def.get(key) {
                None | Some("" | "0") => Ok(None),
                Some(_) => Ok(def.resolve_path(key, workdir)),
            }
        };
        let timeout = match def.get("mnt_timeout") {
            None => Some(hook::DEFAULT_TIMEOUT),
            Some(v) => match v.parse::<u64>() {
                Ok(0) => None,
                Ok(s) => Some(Duration::from_secs(s)),
                Err(_) => {
                    return Err(Error::bad_value(
                        "mnt_timeout",
                        v,
                        "not a whole number of seconds",
                    ))
                }
            },
        };
        Ok(Hooks {
            mnt_start: hook("mnt_start")?,
            mnt_stop: hook("mnt_stop")?,
            timeout,
        })
    }

    /// Refuse unsafe hooks up front (not root-owned, writable by others).
    pub fn check(&self) -> Result<()> {
        if let Some(p) = &self.mnt_start {
            hook::check_as(HookKind::MntStart, p)?;
        }
        if let Some(p) = &self.mnt_stop {
            hook::check_as(HookKind::MntStop, p)?;
        }
        Ok(())
    }

    /// Run one hook if it is set.
    pub fn run(&self, ctx: &HookCtx<'_>, kind: HookKind, phase: Phase) -> Result<()> {
        self.run_as(ctx, kind, phase, false)
    }

    /// Run one hook if it is set, as a dry run (`FERRY_DRY_RUN=1`): it
    /// checks that it could do its work, and changes nothing.
    pub fn dry_run(&self, ctx: &HookCtx<'_>, kind: HookKind, phase: Phase) -> Result<()> {
        self.run_as(ctx, kind, phase, true)
    }

    fn run_as(&self, ctx: &HookCtx<'_>, kind: HookKind, phase: Phase, dry_run: bool) -> Result<()> {
        let path = match kind {
            HookKind::MntStart => &self.mnt_start,
            HookKind::MntStop => &self.mnt_stop,
            HookKind::Clone => &None,
        };
        let Some(path) = path else { return Ok(()) };
        let dirs = EnvDirs::of(ctx.wd, ctx.jname);
        hook::run(
            path,
            &dirs.hook_run(ctx, kind, phase, self.timeout, dry_run),
        )?;
        Ok(())
    }

    /// `mnt_start`, then `body`; when either fails, `mnt_stop` undoes
    /// partial mounts and the first error is returned. When `keep_mounted`
    /// is false, `mnt_stop` also runs after a successful body.
    pub fn with_mounts<T>(
        &self,
        ctx: &HookCtx<'_>,
        phase: Phase,
        keep_mounted: bool,
        body: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        let result = self
            .run(ctx, HookKind::MntStart, phase)
            .and_then(|()| body());
        match result {
            Ok(v) if keep_mounted => Ok(v),
            Ok(v) => self.run(ctx, HookKind::MntStop, phase).map(|()| v),
            Err(e) => {
                if let Err(undo) = self.run(ctx, HookKind::MntStop, phase) {
                    tracing::warn!(jname = %ctx.jname, error = %undo, "mnt_stop after a failed operation failed too");
                }
                Err(e)
            }
        }
    }
}

/// Who runs a hook: the workdir, the env, and the owner epoch.
#[derive(Debug, Clone, Copy)]
pub struct HookCtx<'a> {
    pub wd: &'a Workdir,
    pub jname: &'a Jname,
    pub epoch: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hooks_from_definition() {
        let mut d = Definition::new();
        assert_eq!(
            Hooks::from_definition(&d, Path::new("/w")).unwrap().timeout,
            Some(hook::DEFAULT_TIMEOUT)
        );
        d.set("mnt_start", "/usr/local/bin/h").unwrap();
        d.set("mnt_stop", "0").unwrap();
        d.set("mnt_timeout", "0").unwrap();
        let h = Hooks::from_definition(&d, Path::new("/w")).unwrap();
        assert_eq!(h.mnt_start.as_deref(), Some(Path::new("/usr/local/bin/h")));
        assert_eq!((h.mnt_stop, h.timeout), (None, None));
        d.set("mnt_timeout", "soon").unwrap();
        assert!(Hooks::from_definition(&d, Path::new("/w")).is_err());
    }
}
