//! Zero-copy registration (DESIGN §3, §5): an env moves between nodes by
//! moving only its definition between `jails-system/<jname>/` (registered)
//! and `jails-rcconf/` (unregistered), taking or releasing its owner lease
//! and its registry row. Data, system dir and fstab never move.
//!
//! Both operations are journaled in `jails-system/<jname>/.journal` before
//! their first step, and every step is idempotent, so after a crash at any
//! instant the next operation on the env (on the node that wrote the
//! journal) rolls it forward.

use std::path::Path;
use std::time::Duration;

use crate::atomic;
use crate::error::{Error, Result};
use crate::heartbeat;
use crate::lease::{self, Lease};
use crate::model::{self, Action, EnvKind};
use crate::name::Jname;
use crate::rcconf::Definition;
use crate::registry::{EnvRow, Registry};
use crate::runtime;
use crate::workdir::Workdir;

/// What only the engine can tell: whether a definition is valid for this
/// node, and the registry row it makes.
pub type RowOf<'a> = &'a dyn Fn(&Workdir, &Definition) -> Result<EnvRow>;

/// How `register` treats a lease held by another node.
#[derive(Debug, Clone, Copy)]
pub struct Takeover {
    /// Take over from an owner whose heartbeat stays still for `lease_time`.
    pub force: bool,
    pub lease_time: Duration,
}

/// Test-only crash injection: with `FERRY_CRASH_AT=<op>:<step>` in the
/// environment, the process aborts (as if killed) at that step.
fn crashpoint(op: &str, step: u32) {
    if let Ok(at) = std::env::var("FERRY_CRASH_AT") {
        if at == format!("{op}:{step}") {
            std::process::abort();
        }
    }
}

fn journal_path(wd: &Workdir, j: &Jname) -> std::path::PathBuf {
    wd.system_dir(j).join(".journal")
}

fn write_journal(wd: &Workdir, j: &Jname, op: &str) -> Result<()> {
    let p = journal_path(wd, j);
    atomic::write_atomic(
        &p,
        format!("op={op}\nnode={}\n", wd.nodename()).as_bytes(),
        0o644,
    )
    .map_err(Error::io("cannot write journal", &p))
}

fn read_journal(wd: &Workdir, j: &Jname) -> Option<(String, String)> {
    let text = std::fs::read_to_string(journal_path(wd, j)).ok()?;
    let field = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(k))
            .map(str::to_owned)
    };
    Some((field("op=")?, field("node=")?))
}

fn remove(p: &Path) -> Result<()> {
    match std::fs::remove_file(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("cannot remove", p)(e)),
    }
}

/// Copy a definition byte for byte, durably (the copy is complete or absent).
fn copy_definition(from: &Path, to: &Path) -> Result<()> {
    let bytes = std::fs::read(from).map_err(Error::io("cannot read definition", from))?;
    atomic::write_atomic(to, &bytes, 0o644).map_err(Error::io("cannot write definition", to))
}

/// Finish a register or unregister of `j` that this node started and did
/// not complete. Another node's journal is left alone.
pub fn recover(wd: &Workdir, reg: &Registry, j: &Jname, row_of: RowOf<'_>) -> Result<()> {
    let Some((op, node)) = read_journal(wd, j) else {
        return Ok(());
    };
    if node != wd.nodename() {
        return Ok(());
    }
    tracing::info!(jname = %j, op, "finishing an interrupted operation");
    match op.as_str() {
        "unregister" => unregister_steps(wd, reg, j),
        "register" => match lease::acquire(wd, j) {
            Ok(_) => register_steps(wd, reg, j, row_of),
            // Someone else holds it now: our register never happened.
            Err(Error::NotOwner { .. }) => remove(&journal_path(wd, j)),
            Err(e) => Err(e),
        },
        other => Err(Error::bad_value("journal", other, "unknown operation")),
    }
}

/// Why `j` is not registered here.
fn not_here(wd: &Workdir, j: &Jname) -> Result<Error> {
    if wd.unregistered_rcconf(j).exists() {
        return Ok(Error::WrongState {
            jname: j.clone(),
            state: "unregistered",
            action: "unregister",
            needs: "registered here",
        });
    }
    match lease::read(wd, j)? {
        Some(Lease {
            node: Some(node),
            epoch,
        }) if node != wd.nodename() => Ok(Error::NotOwner {
            jname: j.clone(),
            node,
            epoch,
        }),
        _ => Ok(Error::EnvNotFound(j.clone())),
    }
}

/// Unregister a stopped env registered on this node.
pub fn unregister(
    wd: &Workdir,
    reg: &Registry,
    j: &Jname,
    kind: EnvKind,
    row_of: RowOf<'_>,
) -> Result<()> {
    recover(wd, reg, j, row_of)?;
    let Some(row) = reg.get(j)? else {
        return Err(not_here(wd, j)?);
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
    lease::held(wd, j)?;
    write_journal(wd, j, "unregister")?;
    crashpoint("unregister", 1);
    unregister_steps(wd, reg, j)
}

fn unregister_steps(wd: &Workdir, reg: &Registry, j: &Jname) -> Result<()> {
    let (registered, unregistered) = (wd.registered_rcconf(j), wd.unregistered_rcconf(j));
    if registered.exists() {
        copy_definition(&registered, &unregistered)?;
    }
    crashpoint("unregister", 2);
    reg.remove(j)?;
    crashpoint("unregister", 3);
    match lease::release(wd, j) {
        Ok(()) | Err(Error::NotOwner { .. }) => {}
        Err(e) => return Err(e),
    }
    crashpoint("unregister", 4);
    remove(&registered)?;
    crashpoint("unregister", 5);
    runtime::clear(wd, j)?;
    remove(&journal_path(wd, j))
}

/// Register an unregistered env on this node, taking its lease.
pub fn register(
    wd: &Workdir,
    reg: &Registry,
    j: &Jname,
    kind: EnvKind,
    takeover: Takeover,
    row_of: RowOf<'_>,
) -> Result<u64> {
    recover(wd, reg, j, row_of)?;
    if reg.get(j)?.is_some() {
        return Err(Error::WrongState {
            jname: j.clone(),
            state: "registered here",
            action: "register",
            needs: "unregistered",
        });
    }
    let unregistered = wd.unregistered_rcconf(j);
    let lease_now = lease::read(wd, j)?;
    let owner = lease_now.as_ref().and_then(|l| l.node.clone());
    let forced = match (&owner, takeover.force) {
        (Some(node), _) if node == wd.nodename() => None,
        (Some(node), true) => Some(node.clone()),
        (Some(node), false) => {
            let epoch = lease_now.as_ref().map_or(0, |l| l.epoch);
            return Err(Error::NotOwner {
                jname: j.clone(),
                node: node.clone(),
                epoch,
            });
        }
        (None, _) => None,
    };
    // The definition: unregistered, or (forced takeover) left registered by the dead owner.
    let source = if unregistered.exists() {
        unregistered.clone()
    } else if forced.is_some() && wd.registered_rcconf(j).exists() {
        wd.registered_rcconf(j)
    } else {
        return Err(Error::EnvNotFound(j.clone()));
    };
    check_pool(wd, j)?;
    let def = crate::envdef::load(wd, j, &source)?;
    let row = row_of(wd, &def)?;
    if row.kind != kind {
        return Err(Error::WrongKind {
            jname: j.clone(),
            is: row.kind.as_str(),
            wanted: kind.as_str(),
        });
    }
    if let Some(node) = &forced {
        if !heartbeat::still_for(wd, node, takeover.lease_time)? {
            return Err(Error::NotOwner {
                jname: j.clone(),
                node: format!(
                    "{node} (alive: its heartbeat moved within {}s)",
                    takeover.lease_time.as_secs()
                ),
                epoch: lease_now.as_ref().map_or(0, |l| l.epoch),
            });
        }
    }
    write_journal(wd, j, "register")?;
    crashpoint("register", 1);
    let epoch = match (&forced, &lease_now) {
        (Some(_), Some(from)) => lease::take_over(wd, j, from),
        _ => lease::acquire(wd, j),
    };
    let epoch = match epoch {
        Ok(e) => e,
        Err(e) => {
            remove(&journal_path(wd, j))?;
            return Err(e);
        }
    };
    crashpoint("register", 2);
    register_steps(wd, reg, j, row_of)?;
    Ok(epoch)
}

fn register_steps(wd: &Workdir, reg: &Registry, j: &Jname, row_of: RowOf<'_>) -> Result<()> {
    let (registered, unregistered) = (wd.registered_rcconf(j), wd.unregistered_rcconf(j));
    if unregistered.exists() {
        copy_definition(&unregistered, &registered)?;
    }
    crashpoint("register", 3);
    let def = crate::envdef::load(wd, j, &registered)?;
    reg.upsert(&row_of(wd, &def)?)?;
    crashpoint("register", 4);
    remove(&unregistered)?;
    crashpoint("register", 5);
    remove(&journal_path(wd, j))
}

/// The pool ids an env was created with, stored in its system dir.
pub fn write_pool_id(wd: &Workdir, j: &Jname) -> Result<()> {
    let ids: String = wd
        .dir_ids()?
        .into_iter()
        .map(|(d, id)| format!("{d}={id}\n"))
        .collect();
    let p = wd.system_dir(j).join("pool.id");
    atomic::write_atomic(&p, ids.as_bytes(), 0o644).map_err(Error::io("cannot write", &p))
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
