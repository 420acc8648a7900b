//! Zero-copy registration (DESIGN §3, §5): an env moves between nodes by
//! moving only its definition between `jails-system/<jname>/` (registered,
//! "S") and `jails-rcconf/` (unregistered, "U"), taking or releasing its
//! owner lease ("L") and its row in this node's registry ("R"). Data,
//! system dir and fstab never move.
//!
//! There is no journal. The two operations go through states that are told
//! apart by what is on disk, and never through the same one:
//!
//! ```text
//! register:    take L → copy U to S → remove U → insert R
//! unregister:  copy S to U → release L → remove R → remove S
//!
//!  L        R  S  U   left by                           finished by
//!  ours     -  -  U   register, after taking L          copy, remove U, insert R
//!  ours     -  S  U   register, after the copy          the same (copied again from U)
//!  ours     -  S  -   register, after removing U        insert R
//!  ours     R  S  U   unregister, after the copy        release, remove R, remove S
//!  free     R  S  U   unregister, after releasing L     remove R, remove S
//!  free     -  S  U   unregister, after removing R      remove S (or any node's register)
//! ```
//!
//! So after a crash at any instant the next register or unregister of the
//! env on this node, or [`settle`] when the daemon starts, finishes the
//! operation that was interrupted. A row whose lease another node holds is
//! stale (that node took the env over) and is dropped.
//!
//! Only two writes per operation are forced to disk: the definition copy
//! and the lease. Their renames, and the removals, are not: they are
//! ordered by the file system's journal (see [`atomic::write_synced`]).

use std::path::Path;
use std::time::Duration;

use crate::atomic;
use crate::engine::EngineSet;
use crate::error::{Error, Result};
use crate::heartbeat;
use crate::lease::{self, Lease};
use crate::model::{self, Action, EnvKind};
use crate::name::Jname;
use crate::rcconf::Definition;
use crate::registry::Registry;
use crate::runtime;
use crate::workdir::Workdir;

/// How `register` treats a lease held by another node.
#[derive(Debug, Clone)]
pub struct Takeover {
    /// Take over from an owner whose heartbeat stays still for `lease_time`.
    pub force: bool,
    pub lease_time: Duration,
    /// Take over only from this very lease (HA: the one it judged dead,
    /// having watched that owner itself; `lease_time` is then zero). Any
    /// other lease found is refused: it may be a survivor's that took the
    /// env a moment before.
    pub only_from: Option<Lease>,
}

fn remove(p: &Path) -> Result<()> {
    match std::fs::remove_file(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("cannot remove", p)(e)),
    }
}

/// Read a definition, `None` if the file does not exist.
fn read_definition(wd: &Workdir, j: &Jname, p: &Path) -> Result<Option<(Vec<u8>, Definition)>> {
    match crate::envdef::load_raw(wd, j, p) {
        Ok(d) => Ok(Some(d)),
        Err(Error::EnvNotFound(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Write a definition copy: whole or absent, its bytes on disk.
fn write_definition(to: &Path, bytes: &[u8]) -> Result<()> {
    atomic::write_synced(to, bytes, 0o644).map_err(Error::io("cannot write definition", to))
}

fn ours(wd: &Workdir, lease: Option<&Lease>) -> bool {
    lease.and_then(|l| l.node.as_deref()) == Some(wd.nodename())
}

fn theirs(wd: &Workdir, lease: Option<&Lease>) -> bool {
    lease
        .and_then(|l| l.node.as_deref())
        .is_some_and(|n| n != wd.nodename())
}

fn released(lease: Option<&Lease>) -> bool {
    lease.is_some_and(|l| l.node.is_none())
}

/// Why `j` is not registered here.
fn not_here(wd: &Workdir, j: &Jname, lease: Option<Lease>) -> Error {
    match lease {
        Some(Lease {
            node: Some(node),
            epoch,
        }) if node != wd.nodename() => Error::NotOwner {
            jname: j.clone(),
            node,
            epoch,
        },
        _ if wd.unregistered_rcconf(j).exists() => Error::WrongState {
            jname: j.clone(),
            state: "unregistered",
            action: "unregister",
            needs: "registered here",
        },
        _ => Error::EnvNotFound(j.clone()),
    }
}

/// Finish whatever register or unregister of `j` this node left
/// interrupted, if any (see the module's table). Returns whether `j` is
/// registered here afterwards.
pub fn settle(wd: &Workdir, reg: &Registry, j: &Jname, engines: &EngineSet) -> Result<bool> {
    let lease = lease::read(wd, j)?;
    let rc = wd.unregistered_rcconf(j);
    if reg.get(j)?.is_some() {
        if theirs(wd, lease.as_ref()) {
            // Taken over: the daemon stops the env if it runs, then drops the row.
            return Ok(false);
        }
        if !rc.exists() {
            return Ok(true);
        }
        tracing::info!(jname = %j, "finishing an interrupted unregister");
        finish_unregister(wd, reg, j)?;
        return Ok(false);
    }
    if ours(wd, lease.as_ref()) {
        tracing::info!(jname = %j, "finishing an interrupted register");
        finish_register(wd, reg, j, engines)?;
        return Ok(true);
    }
    if released(lease.as_ref()) && rc.exists() && wd.registered_rcconf(j).exists() {
        remove(&wd.registered_rcconf(j))?;
    }
    Ok(false)
}

/// Finish every interrupted operation of this node: envs with a row here,
/// and envs whose lease names this node without a row (the daemon does
/// this when it starts). Returns the errors met, by env.
pub fn settle_all(wd: &Workdir, reg: &Registry, engines: &EngineSet) -> Vec<(Jname, Error)> {
    // Renames first: a half-renamed env's lease names this node under its
    // new name before its row does.
    let mut failed = crate::rename::finish_all(wd, reg, engines);
    let mut names: Vec<Jname> = reg
        .list()
        .map(|rows| rows.into_iter().map(|r| r.jname).collect())
        .unwrap_or_default();
    let system = wd.root().join("jails-system");
    for e in std::fs::read_dir(&system).into_iter().flatten().flatten() {
        let Some(j) = e.file_name().to_str().and_then(|n| Jname::new(n).ok()) else {
            continue;
        };
        if !names.contains(&j) && ours(wd, lease::read(wd, &j).ok().flatten().as_ref()) {
            names.push(j);
        }
    }
    // A rename that could not be finished is left as it is, for the
    // next try: it is not an interrupted register.
    names.retain(|j| crate::rename::interrupted(wd, j).is_none());
    failed.extend(names.into_iter().filter_map(|j| {
        let r =
            crate::lock::EnvLock::acquire(wd, &j).and_then(|_lock| settle(wd, reg, &j, engines));
        r.err().map(|e| (j, e))
    }));
    failed
}

/// Unregister a stopped env registered on this node.
pub fn unregister(
    wd: &Workdir,
    reg: &Registry,
    j: &Jname,
    kind: EnvKind,
    engines: &EngineSet,
) -> Result<()> {
    let (sys, rc) = (wd.registered_rcconf(j), wd.unregistered_rcconf(j));
    let Some(row) = reg.get(j)? else {
        // No row: an operation of ours may have been cut short.
        if settle(wd, reg, j, engines)? {
            return unregister(wd, reg, j, kind, engines);
        }
        return Err(not_here(wd, j, lease::read(wd, j)?));
    };
    if row.kind != kind {
        return Err(Error::WrongKind {
            jname: j.clone(),
            is: row.kind.as_str(),
            wanted: kind.as_str(),
        });
    }
    let (state, _) = runtime::state(wd, j)?;
    model::check(j, state, Action::Unregister)?;
    let lease = lease::read(wd, j)?;
    if theirs(wd, lease.as_ref()) {
        // Taken over by another node: our row is stale.
        reg.remove(j)?;
        return Err(not_here(wd, j, lease));
    }
    match read_definition(wd, j, &sys)? {
        Some((bytes, _)) => write_definition(&rc, &bytes)?,
        None if rc.exists() => {}
        None => return Err(Error::EnvNotFound(j.clone())),
    }
    crate::sys::crashpoint("unregister", 1);
    finish_unregister(wd, reg, j)
}

/// The rest of an unregister once the definition is in `jails-rcconf/`.
/// If another node holds the lease, only the stale row goes.
fn finish_unregister(wd: &Workdir, reg: &Registry, j: &Jname) -> Result<()> {
    let theirs = match lease::release(wd, j) {
        Ok(()) => None,
        Err(e @ Error::NotOwner { .. }) => Some(e),
        Err(e) => return Err(e),
    };
    crate::sys::crashpoint("unregister", 2);
    reg.remove(j)?;
    crate::sys::crashpoint("unregister", 3);
    if let Some(e) = theirs {
        return Err(e);
    }
    if wd.unregistered_rcconf(j).exists() {
        remove(&wd.registered_rcconf(j))?;
    }
    crate::sys::crashpoint("unregister", 4);
    runtime::clear(wd, j)
}

/// Register an unregistered env on this node, taking its lease. Returns
/// the epoch this node holds.
pub fn register(
    wd: &Workdir,
    reg: &Registry,
    j: &Jname,
    kind: EnvKind,
    takeover: Takeover,
    engines: &EngineSet,
) -> Result<u64> {
    let (sys, rc) = (wd.registered_rcconf(j), wd.unregistered_rcconf(j));
    if reg.get(j)?.is_some() && settle(wd, reg, j, engines)? {
        return Err(Error::WrongState {
            jname: j.clone(),
            state: "registered here",
            action: "register",
            needs: "unregistered",
        });
    }
    // The definition: unregistered, or left registered by a dead owner
    // (forced takeover), or already in place (our own register, interrupted).
    let (source, forced) = match read_definition(wd, j, &rc)? {
        Some((_, def)) => (def, None),
        None => {
            let lease = lease::read(wd, j)?;
            if ours(wd, lease.as_ref()) && sys.exists() {
                finish_register(wd, reg, j, engines)?;
                return Ok(lease.map_or(0, |l| l.epoch));
            }
            match lease {
                Some(l) if theirs(wd, Some(&l)) => {
                    if !takeover.force {
                        return Err(not_here(wd, j, Some(l)));
                    }
                    let (_, def) = read_definition(wd, j, &sys)?
                        .ok_or_else(|| Error::EnvNotFound(j.clone()))?;
                    (def, Some(l))
                }
                _ => return Err(Error::EnvNotFound(j.clone())),
            }
        }
    };
    check_pool(wd, j)?;
    let row = engines.of_definition(&source).row_of(wd, &source)?;
    if row.kind != kind {
        return Err(Error::WrongKind {
            jname: j.clone(),
            is: row.kind.as_str(),
            wanted: kind.as_str(),
        });
    }
    let epoch = match forced {
        Some(from) => take_from_dead(wd, j, &from, &takeover)?,
        None => match lease::acquire(wd, j) {
            // Held by another node whose copy is in jails-rcconf: an
            // unregister of theirs was interrupted before the release.
            Err(Error::NotOwner { node, epoch, .. }) if takeover.force => {
                let from = Lease {
                    node: Some(node),
                    epoch,
                };
                take_from_dead(wd, j, &from, &takeover)?
            }
            r => r?,
        },
    };
    crate::sys::crashpoint("register", 1);
    finish_register(wd, reg, j, engines)?;
    Ok(epoch)
}

/// Take the lease from its owner, once that owner's heartbeat has been
/// still for `lease_time`; with `only_from`, only if it is that lease.
fn take_from_dead(wd: &Workdir, j: &Jname, from: &Lease, takeover: &Takeover) -> Result<u64> {
    if let Some(expected) = &takeover.only_from {
        if expected != from {
            return Err(Error::Refused(format!(
                "the lease of {j} is no longer the one judged dead ({} now)",
                from.node.as_deref().unwrap_or("released")
            )));
        }
    }
    let lease_time = takeover.lease_time;
    let node = from.node.clone().unwrap_or_default();
    if !heartbeat::still_for(wd, &node, lease_time)? {
        return Err(Error::NotOwner {
            jname: j.clone(),
            node: format!(
                "{node} (alive: its heartbeat moved within {}s)",
                lease_time.as_secs()
            ),
            epoch: from.epoch,
        });
    }
    lease::take_over(wd, j, from)
}

/// The rest of a register once this node holds the lease: the definition
/// copied from `jails-rcconf/` (when it is still there), then removed from
/// it, then the row.
fn finish_register(wd: &Workdir, reg: &Registry, j: &Jname, engines: &EngineSet) -> Result<()> {
    let (sys, rc) = (wd.registered_rcconf(j), wd.unregistered_rcconf(j));
    let def = match read_definition(wd, j, &rc)? {
        Some((bytes, def)) => {
            write_definition(&sys, &bytes)?;
            crate::sys::crashpoint("register", 2);
            remove(&rc)?;
            def
        }
        None => crate::envdef::load(wd, j, &sys)?,
    };
    crate::sys::crashpoint("register", 3);
    reg.upsert(&engines.of_definition(&def).row_of(wd, &def)?)
}

/// The pool ids an env was created with, stored in its system dir.
pub fn write_pool_id(wd: &Workdir, j: &Jname) -> Result<()> {
    let ids: String = wd
        .dir_ids()?
        .into_iter()
        .map(|(d, id)| format!("{d}={id}\n"))
        .collect();
    let p = wd.system_dir(j).join("pool.id");
    // Synced, its name made durable with the definition written beside it
    // (atomic::write_synced).
    atomic::write_synced(&p, ids.as_bytes(), 0o644).map_err(Error::io("cannot write", &p))
}

/// Refuse to register an env whose shared dirs this node does not see as
/// the pool's: each `dir.id` here must be the one the env was created with.
fn check_pool(wd: &Workdir, j: &Jname) -> Result<()> {
    let p = wd.system_dir(j).join("pool.id");
    let Ok(text) = std::fs::read_to_string(&p) else {
        return Ok(());
    };
    for (dir, id) in wd.dir_ids()? {
        let want = text
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{dir}=")))
            .unwrap_or("");
        if want != id {
            return Err(Error::Refused(format!(
                "{dir} on this node is not the pool's (dir.id {id}, {j} was created with {want}); is the shared storage mounted?"
            )));
        }
    }
    Ok(())
}

/// Push what a batch of registers or unregisters changed on shared
/// storage to disk with one `syncfs` per file system, where the file
/// system implements it (FUSE mounts such as GlusterFS's may not; their
/// bricks' journals order the changes).
pub fn sync_shared(wd: &Workdir) {
    for d in [wd.rcconf_dir(), wd.root().join("jails-system")] {
        if let Err(e) = crate::atomic::sync_fs(&d) {
            tracing::warn!(dir = %d.display(), error = %e, "syncfs failed");
        }
    }
}

/// Unregistered envs whose name matches, from `jails-rcconf/`.
pub fn unregistered_names(wd: &Workdir, matches: impl Fn(&str) -> bool) -> Result<Vec<Jname>> {
    let dir = wd.rcconf_dir();
    let mut out = Vec::new();
    for e in std::fs::read_dir(&dir)
        .map_err(Error::io("cannot list", &dir))?
        .flatten()
    {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(j) = name
            .strip_prefix("rc.conf_")
            .and_then(|n| Jname::new(n).ok())
        {
            if matches(j.as_str()) {
                out.push(j);
            }
        }
    }
    out.sort();
    Ok(out)
}
