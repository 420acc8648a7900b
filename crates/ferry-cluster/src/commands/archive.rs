//! `jexport`/`bexport` and `jimport`/`bimport` (CBSD's words): one
//! archive of a stopped env, and an env made of one ([`ferry_core::archive`]).

use std::path::{Path, PathBuf};

use ferry_api::Outcome;
use ferry_core::archive;
use ferry_core::envdef::{self, Hooks};
use ferry_core::lock::EnvLock;
use ferry_core::model::{self, Action};
use ferry_core::rcconf::Definition;
use ferry_core::{envfs, lease, rename, runtime};
use ferry_core::{EnvKind, Error, Jname, NameSelector, Result};

use crate::context::{select, Context};
use crate::engines;

/// The highest zstd level `compress=` takes.
const MAX_LEVEL: u32 = 19;

/// Progress as a step: how many MiB of how many are done.
fn told<'a>(ctx: &'a Context, verb: &'static str) -> impl Fn(u64, u64) + 'a {
    move |done, total| {
        let percent = (done * 99).checked_div(total).unwrap_or(0);
        ctx.step(
            percent as u8,
            format!("{} MiB of {} MiB {verb}", done >> 20, total >> 20),
        );
    }
}

/// `jexport`/`bexport`: the stopped env `j` (owned here), under its lock.
pub fn export(
    ctx: &Context,
    kind: EnvKind,
    j: &Jname,
    dstdir: Option<&Path>,
    compress: u32,
) -> Result<Outcome> {
    let (wd, reg) = ctx.open()?;
    if compress > MAX_LEVEL {
        return Err(Error::bad_value(
            "compress",
            &compress.to_string(),
            format!("must be from 0 (none) to {MAX_LEVEL} (zstd's levels)"),
        ));
    }
    let dir = match dstdir {
        Some(d) if !d.is_absolute() => {
            return Err(Error::bad_value(
                "dstdir",
                &d.to_string_lossy(),
                "must be an absolute path",
            ))
        }
        Some(d) => d.to_path_buf(),
        None => wd.root().join("export"),
    };
    select(&reg, kind, &NameSelector::One(j.clone()))?;
    let _lock = EnvLock::acquire(&wd, j)?;
    let (st, _) = runtime::state(&wd, j)?;
    model::check(j, st, Action::Export)?;
    lease::held(&wd, j)?;
    std::fs::create_dir_all(&dir).map_err(Error::io("cannot create", &dir))?;
    let definition = envdef::load_registered(&wd, j)?.render(wd.root());
    let dst = dir.join(format!("{j}.img"));
    let progress = told(ctx, "archived");
    // compress is at most 19: it fits.
    let level = i32::try_from(compress).unwrap_or(MAX_LEVEL as i32);
    let e = archive::export(&wd, j, kind, definition, &dst, level, &progress)?;
    Ok(Outcome::message(format!(
        "{j} exported to {} ({} MiB of files in {} MiB, {} files, sha256 {})",
        e.path.display(),
        e.content >> 20,
        e.bytes >> 20,
        e.files,
        e.sha256
    )))
}

/// Where `jname=` of an import points: a path, or `$workdir/import/NAME`
/// (`.img` added when missing).
fn archive_path(root: &Path, arg: &str) -> Result<PathBuf> {
    if arg.contains('/') {
        return Ok(PathBuf::from(arg));
    }
    let name = Jname::new(arg.strip_suffix(".img").unwrap_or(arg))
        .map_err(|e| Error::bad_value("jname", arg, e.to_string()))?;
    Ok(root.join("import").join(format!("{name}.img")))
}

/// `jimport`/`bimport`: make an env here of the archive, under its own
/// name or `new_jname`, with `changes` to its definition; created as
/// `jcreate` creates (the name claimed pool-wide, a new lease), rolled
/// back on any failure.
pub fn import(
    ctx: &Context,
    kind: EnvKind,
    arg: &str,
    new_jname: Option<&Jname>,
    changes: &[(String, String)],
) -> Result<Outcome> {
    let (wd, reg) = ctx.open()?;
    let path = archive_path(wd.root(), arg)?;
    if !path.is_file() {
        return Err(Error::bad_value(
            "jname",
            arg,
            format!("no archive at {}", path.display()),
        ));
    }
    let header = archive::read_header(&path)?;
    if header.kind != kind.as_str() {
        return Err(Error::bad_value(
            "jname",
            arg,
            format!(
                "{} is an export of a {}; use {}import",
                path.display(),
                header.kind,
                if header.kind == "vm" { "b" } else { "j" }
            ),
        ));
    }
    let name = match new_jname {
        Some(n) => n.clone(),
        None => Jname::new(&header.jname)
            .map_err(|e| Error::bad_value("jname", &header.jname, e.to_string()))?,
    };
    let def =
        Definition::parse(&header.definition, wd.root()).map_err(|e| Error::BadDefinition {
            path: path.clone(),
            reason: e.to_string(),
        })?;
    let def = rename::renamed(&wd, &def, &name, changes)?;
    let _lock = EnvLock::acquire(&wd, &name)?;
    let row = engines::of(kind).admit(&wd, &reg, &def)?;
    let hooks = Hooks::from_definition(&def, wd.root())?;
    let progress = told(ctx, "read");
    let mut files = 0;
    envfs::create(&wd, &reg, &row, &hooks, &def, || {
        files = archive::unpack(&wd, &path, &name, &progress)?;
        Ok(())
    })?;
    Ok(Outcome::message(format!(
        "{name} imported from {} ({files} files, every one checked)",
        path.display()
    )))
}
