//! Live migrations a crash interrupted, finished by the daemons: what is
//! done is decided by [`decide`] from what is known of the move, one pure
//! function, and carried out by [`recover_one`].

use std::time::Duration;

use ferry_core::lock::EnvLock;
use ferry_core::node::{self, Liveness};
use ferry_core::registry::Registry;
use ferry_core::runtime::{self, Phase, Runtime};
use ferry_core::{lease, sys, Jname, Result, Workdir};
use ferry_vm::migrate as engine;

use super::live::{set_outbound, ABORT_TIMEOUT};
use crate::context::error_chain;
use crate::rpc::{Asker, MigrateAbort, MigrateCommit, NodeRequest};

/// How long the daemon watches a guest it committed itself.
const RECOVERY_VERIFY: Duration = Duration::from_secs(1);

/// The daemon's part: finish live migrations whose `bmigrate` is gone. A
/// source VM whose lease is still this node's is continued here (the
/// destination aborted); one whose lease moved is committed there and
/// ended here; a destination whose lease arrived is committed; one whose
/// source is dead, or whose QEMU died, is aborted.
///
/// Each such env is watched by a thread of its own, which waits for the
/// env's lock: a `bmigrate` (or a prepare) in progress holds it, so the
/// heartbeat never waits for a migration, and a `bmigrate` that dies lets
/// its watcher act at once.
#[derive(Debug, Default, Clone)]
pub struct Recovery {
    watched: std::sync::Arc<std::sync::Mutex<std::collections::BTreeSet<Jname>>>,
}

impl Recovery {
    /// Every beat: a watcher for each env of this node in a migration
    /// that has none yet.
    pub fn tick(&self, wd: &Workdir, lease_time: Duration) {
        let Ok(entries) = std::fs::read_dir(wd.root().join("jails")) else {
            return;
        };
        for e in entries.flatten() {
            let Some(j) = e.file_name().to_str().and_then(|n| Jname::new(n).ok()) else {
                continue;
            };
            let Ok(Some(rt)) = runtime::read(wd, &j) else {
                continue;
            };
            if rt.phase != Phase::Incoming && rt.migration.is_none() {
                continue;
            }
            let mut watched = self.watched.lock().unwrap_or_else(|e| e.into_inner());
            if !watched.insert(j.clone()) {
                continue;
            }
            drop(watched);
            let (wd, set) = (wd.clone(), std::sync::Arc::clone(&self.watched));
            std::thread::spawn(move || {
                if let Err(e) = recover_one(&wd, &j, lease_time) {
                    tracing::warn!(jname = %j, error = %e, "cannot finish an interrupted migration");
                }
                set.lock().unwrap_or_else(|e| e.into_inner()).remove(&j);
            });
        }
    }
}

/// What is known of an env left in a migration, on one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Seen {
    /// The source: its `bmigrate` process is (or is not) alive; the lease
    /// is (or is no longer) this node's.
    Outbound {
        bmigrate_alive: bool,
        lease_here: bool,
    },
    /// The destination: the lease arrived (it names this node, with an
    /// epoch newer than the record's); the incoming QEMU lives; the
    /// source's node is judged dead.
    Incoming {
        lease_arrived: bool,
        qemu_alive: bool,
        source_dead: bool,
    },
}

/// What the daemon does about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Nothing yet: the move is still going, or may still finish.
    Wait,
    /// Source, before the hand-over: abort there, continue the guest here.
    ContinueHere,
    /// Source, after the hand-over: ask the destination to commit, end
    /// the guest here.
    EndHere,
    /// Destination, the lease arrived: resume the guest here.
    CommitHere,
    /// Destination, the move cannot finish: throw the incoming QEMU away.
    AbortHere,
}

/// The migration state machine's recovery step: the lease decides.
pub(crate) fn decide(seen: Seen) -> Decision {
    match seen {
        Seen::Outbound {
            bmigrate_alive: true,
            ..
        } => Decision::Wait,
        Seen::Outbound {
            lease_here: true, ..
        } => Decision::ContinueHere,
        Seen::Outbound { .. } => Decision::EndHere,
        Seen::Incoming {
            lease_arrived: true,
            qemu_alive: true,
            ..
        } => Decision::CommitHere,
        Seen::Incoming {
            qemu_alive: false, ..
        }
        | Seen::Incoming {
            lease_arrived: false,
            source_dead: true,
            ..
        } => Decision::AbortHere,
        Seen::Incoming { .. } => Decision::Wait,
    }
}

/// What this node sees of `j`'s migration, from its record, the lease and
/// the heartbeats.
fn seen(
    wd: &Workdir,
    reg: &Registry,
    j: &Jname,
    rt: &Runtime,
    lease_time: Duration,
) -> Result<Option<Seen>> {
    let lease = lease::read(wd, j)?;
    let here = |l: &lease::Lease| l.node.as_deref() == Some(wd.nodename());
    if rt.phase == Phase::Incoming {
        let source_dead = lease
            .as_ref()
            .and_then(|l| l.node.as_deref())
            .is_none_or(|n| node::liveness(reg, n, lease_time).ok() == Some(Liveness::Dead));
        return Ok(Some(Seen::Incoming {
            lease_arrived: lease
                .as_ref()
                .is_some_and(|l| here(l) && l.epoch > rt.epoch),
            qemu_alive: matches!((rt.pid, rt.starttime), (Some(p), Some(s)) if sys::is_alive(p, s)),
            source_dead,
        }));
    }
    Ok(rt.migration.as_ref().map(|ob| Seen::Outbound {
        bmigrate_alive: sys::is_alive(ob.pid, ob.start),
        lease_here: lease.as_ref().is_some_and(here),
    }))
}

/// Under the env's lock (waited for), with its record read again: a
/// prepare or a bmigrate in progress holds it, and its record is only
/// whole once it is done.
fn recover_one(wd: &Workdir, j: &Jname, lease_time: Duration) -> Result<()> {
    let _lock = EnvLock::acquire(wd, j)?;
    let Some(rt) = runtime::read(wd, j)? else {
        return Ok(());
    };
    let reg = Registry::open(&wd.db_dir())?;
    let Some(seen) = seen(wd, &reg, j, &rt, lease_time)? else {
        return Ok(());
    };
    let to = rt
        .migration
        .as_ref()
        .and_then(|ob| Jname::new(&ob.node).ok());
    let tell = |body: NodeRequest| {
        if let Some(node) = &to {
            let _ = Asker::ask_once(wd, node, body, ABORT_TIMEOUT);
        }
    };
    match decide(seen) {
        Decision::Wait => Ok(()),
        Decision::EndHere => {
            tracing::warn!(jname = %j, to = ?to, "bmigrate died after the hand-over: committed there, ended here");
            // The destination's daemon commits by itself at its next beat;
            // asked, it does now (a commit is idempotent).
            tell(NodeRequest::MigrateCommit(MigrateCommit {
                jname: j.to_string(),
                verify_ms: 0,
            }));
            engine::outgoing_finish(wd, j)?;
            reg.remove(j).map(drop)
        }
        Decision::ContinueHere => {
            tracing::warn!(jname = %j, to = ?to, "bmigrate died before the hand-over: the guest stays here");
            tell(NodeRequest::MigrateAbort(MigrateAbort {
                jname: j.to_string(),
            }));
            engine::outgoing_undo(wd, j)?;
            set_outbound(wd, j, None)
        }
        Decision::CommitHere => {
            tracing::warn!(jname = %j, "the lease arrived without a commit: running it here");
            let c = engine::incoming_commit(wd, &reg, j)?;
            // No bmigrate is left to say it: the log does.
            if let Err(e) =
                ferry_vm::integrity::verify_resumed(wd, j, c.console_from, RECOVERY_VERIFY)
            {
                tracing::error!(event = "migrated-faulty", jname = %j, fault = %error_chain(&e), "the guest is not healthy after the move");
            }
            Ok(())
        }
        Decision::AbortHere => {
            tracing::warn!(jname = %j, "an incoming migration that cannot finish: aborted");
            engine::incoming_abort(wd, j).map(drop)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn incoming(lease_arrived: bool, qemu_alive: bool, source_dead: bool) -> Decision {
        decide(Seen::Incoming {
            lease_arrived,
            qemu_alive,
            source_dead,
        })
    }

    #[test]
    fn a_source_whose_bmigrate_lives_waits_and_one_whose_bmigrate_died_follows_the_lease() {
        let out = |bmigrate_alive, lease_here| {
            decide(Seen::Outbound {
                bmigrate_alive,
                lease_here,
            })
        };
        assert_eq!(out(true, true), Decision::Wait);
        assert_eq!(out(true, false), Decision::Wait);
        assert_eq!(out(false, true), Decision::ContinueHere);
        assert_eq!(out(false, false), Decision::EndHere);
    }

    #[test]
    fn a_destination_commits_only_with_the_lease_and_a_live_qemu() {
        assert_eq!(incoming(true, true, false), Decision::CommitHere);
        assert_eq!(incoming(true, true, true), Decision::CommitHere);
        // Its QEMU died: nothing to resume, whoever has the lease.
        assert_eq!(incoming(true, false, false), Decision::AbortHere);
        assert_eq!(incoming(false, false, false), Decision::AbortHere);
        // The source may still hand over: wait, unless it is dead.
        assert_eq!(incoming(false, true, false), Decision::Wait);
        assert_eq!(incoming(false, true, true), Decision::AbortHere);
    }
}
