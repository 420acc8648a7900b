//! Automatic failover (HA): the envs marked `ha=1` of a node judged dead
//! are taken over by a surviving node and started there; an `ha=1` env of
//! this node that died (killed by the watchdog, crashed) is started again
//! here. Run by every node daemon after each heartbeat.
//!
//! One decision per env, made without a coordinator: every survivor
//! computes the same placement from what all of them read on shared
//! storage (the leases: fewest envs owned, then the node's name) and only
//! the chosen node acts; the lease's compare-and-swap under its lock
//! (`lease::take_over`) makes one winner even when two survivors' views
//! differ. If the chosen node does not act within another `lease_time`,
//! any survivor may.
//!
//! Each env's HA record (`jails-system/<jname>/ha.json`, shared) keeps its
//! failovers and restarts of the last hour (at most `ha_max_restart`, then
//! HA gives up on it until a person starts it) and the last event.

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use ferry_api::args::FromArg;
use ferry_api::values::NodeList;
use ferry_core::engine::StartOptions;
use ferry_core::lease::{self, Lease};
use ferry_core::lock::EnvLock;
use ferry_core::node::{self, Liveness};
use ferry_core::rcconf::Definition;
use ferry_core::register::{self, Takeover};
use ferry_core::registry::Registry;
use ferry_core::{envdef, sys, EnvState, Error, Jname, Result, Workdir};
use serde::{Deserialize, Serialize};

use crate::engines::{self, ENGINES};

/// How long the attempts HA counts against `ha_max_restart` are kept.
const WINDOW: Duration = Duration::from_secs(3600);

/// An env's HA settings, read from its definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub ha: bool,
    /// The nodes it may go to (empty: any).
    pub nodes: Vec<String>,
    pub max_restart: u32,
}

impl Policy {
    /// From a definition: keys absent hold their defaults (not protected,
    /// any node, 3 attempts an hour); a value that does not read is not
    /// protected (the create and set commands check them).
    pub fn of(def: &Definition) -> Policy {
        let nodes = def
            .get("ha_nodes")
            .and_then(|v| NodeList::from_arg("ha_nodes", v).ok())
            .map(|l| l.0.iter().map(ToString::to_string).collect())
            .unwrap_or_default();
        Policy {
            ha: def.get("ha") == Some("1"),
            nodes,
            max_restart: def
                .get("ha_max_restart")
                .and_then(|v| v.parse().ok())
                .unwrap_or(3),
        }
    }

    fn allows(&self, node: &str) -> bool {
        self.nodes.is_empty() || self.nodes.iter().any(|n| n == node)
    }
}

/// One failover or restart, as the node that made it saw it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// `failover` (taken from a dead node) or `restart` (on its own node).
    pub kind: String,
    pub from: String,
    pub to: String,
    /// When the fault was (the dead node's heartbeat last moved, or the
    /// env was found dead), UTC on the acting node's clock.
    pub fault_at: String,
    /// When the env ran again (or the attempt failed).
    pub done_at: String,
    /// Seconds from the fault to the env running again.
    pub seconds: f64,
    /// `running`, or why the attempt failed.
    pub result: String,
}

/// An env's HA record.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Attempts of the last hour, in seconds since the Unix epoch.
    pub attempts: Vec<u64>,
    pub last: Option<Event>,
}

fn record_path(wd: &Workdir, j: &Jname) -> PathBuf {
    wd.system_dir(j).join("ha.json")
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Record {
    pub fn read(wd: &Workdir, j: &Jname) -> Record {
        std::fs::read(record_path(wd, j))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    fn write(&self, wd: &Workdir, j: &Jname) -> Result<()> {
        let p = record_path(wd, j);
        let json = serde_json::to_vec_pretty(self).map_err(Error::encode("the HA record"))?;
        ferry_core::atomic::replace(&p, &json, 0o644).map_err(Error::io("cannot write", &p))
    }

    /// Attempts within the window.
    pub fn recent(&self) -> usize {
        let since = unix_now().saturating_sub(WINDOW.as_secs());
        self.attempts.iter().filter(|t| **t >= since).count()
    }

    fn note(&mut self, event: Event) {
        let since = unix_now().saturating_sub(WINDOW.as_secs());
        self.attempts.retain(|t| *t >= since);
        self.attempts.push(unix_now());
        self.last = Some(event);
    }
}

/// The nodes held in maintenance (`node mode=evacuate`): nothing lands
/// there. A marker per node in `jails-system/.maintenance/`.
pub fn maintenance_dir(wd: &Workdir) -> PathBuf {
    wd.root().join("jails-system/.maintenance")
}

pub fn in_maintenance(wd: &Workdir, node: &str) -> bool {
    maintenance_dir(wd).join(node).exists()
}

/// Where an env of `policy` goes among the live nodes `alive`: the one
/// that owns the fewest envs (by the leases), then by name. `None` when
/// no node may take it.
pub fn place(wd: &Workdir, policy: &Policy, alive: &[String]) -> Option<String> {
    let owned = node::owned_envs(wd);
    alive
        .iter()
        .filter(|n| policy.allows(n) && !in_maintenance(wd, n))
        .min_by_key(|n| (owned.get(n.as_str()).copied().unwrap_or(0), (*n).clone()))
        .cloned()
}

/// What this node sees of the others: the live ones (itself included)
/// and the dead ones with how long their heartbeat has been still.
#[derive(Debug)]
pub struct View {
    pub alive: Vec<String>,
    pub dead: Vec<(String, Duration)>,
}

impl View {
    pub fn now(wd: &Workdir, reg: &Registry, lease_time: Duration) -> View {
        let mut names = node::beating(wd);
        if let Ok(added) = reg.nodes() {
            names.extend(added.into_iter().map(|n| n.name.to_string()));
        }
        names.sort();
        names.dedup();
        let mut view = View {
            alive: vec![wd.nodename().to_owned()],
            dead: Vec::new(),
        };
        for n in names.into_iter().filter(|n| n != wd.nodename()) {
            match node::liveness(reg, &n, lease_time) {
                Ok(Liveness::Alive) => view.alive.push(n),
                Ok(Liveness::Dead) => {
                    let still = node::still(reg, &n).ok().flatten().unwrap_or(lease_time);
                    view.dead.push((n, still));
                }
                _ => {}
            }
        }
        view.alive.sort();
        view
    }
}

/// One round of HA on this node: failovers from dead nodes, then, when
/// `restarts` (the daemon has beaten without a gap for `lease_time`, so no
/// other node can be taking its envs over), restarts of this node's own
/// dead `ha=1` envs.
pub fn tick(wd: &Workdir, reg: &Registry, lease_time: Duration, restarts: bool) {
    if ferry_core::fence::check_not_fenced(wd).is_err() {
        return;
    }
    let view = View::now(wd, reg, lease_time);
    if !view.dead.is_empty() {
        for j in shared_envs(wd) {
            failover(wd, reg, &j, &view, lease_time);
        }
    }
    if restarts {
        restart_own(wd, reg);
    }
}

/// Every env with a system dir in the pool.
pub fn shared_envs(wd: &Workdir) -> Vec<Jname> {
    let mut out: Vec<Jname> = std::fs::read_dir(wd.root().join("jails-system"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Jname::new(e.file_name().to_str()?).ok())
        .collect();
    out.sort();
    out
}

/// Take `j` over if its owner is dead, it is protected, and this node is
/// where it goes.
fn failover(wd: &Workdir, reg: &Registry, j: &Jname, view: &View, lease_time: Duration) {
    let Ok(Some(judged)) = lease::read(wd, j) else {
        return;
    };
    let Some(owner) = judged.node.clone() else {
        return;
    };
    let Some((_, still)) = view.dead.iter().find(|(n, _)| *n == owner) else {
        return;
    };
    let Ok(def) = envdef::load_registered(wd, j) else {
        return;
    };
    let policy = Policy::of(&def);
    if !policy.ha {
        return;
    }
    let mut record = Record::read(wd, j);
    if record.recent() >= policy.max_restart as usize {
        tracing::warn!(jname = %j, from = %owner, max = policy.max_restart,
            "HA gave up: ha_max_restart attempts within the hour");
        return;
    }
    let target = place(wd, &policy, &view.alive);
    let me = wd.nodename();
    // The chosen node acts; if it has not after another lease_time, any.
    if target.as_deref() != Some(me) && (*still < lease_time * 2 || !policy.allows(me)) {
        return;
    }
    if in_maintenance(wd, me) {
        return;
    }
    // Read the owner's counter once more right before the lease's
    // compare-and-swap: a node that came back since the view was taken is
    // alive, and keeps its env.
    if !matches!(
        node::observe(wd, reg, &owner, lease_time),
        Ok(Liveness::Dead)
    ) {
        return;
    }
    let fault_at = SystemTime::now() - *still;
    let t0 = Instant::now();
    tracing::warn!(jname = %j, from = %owner, still = ?still, "HA: the owner is dead; taking over");
    let kind = engines::ENGINES.of_definition(&def).kind();
    let took = EnvLock::acquire(wd, j).and_then(|_lock| {
        let takeover = Takeover {
            force: true,
            // Judged dead already by this daemon's own watch: that lease,
            // and no other (a survivor may have taken it a moment ago).
            lease_time: Duration::ZERO,
            only_from: Some(judged.clone()),
        };
        register::register(wd, reg, j, kind, takeover, &ENGINES)?;
        engines::of(kind).start(wd, reg, j, &StartOptions::default())
    });
    let result = match &took {
        Ok(()) => "running".to_owned(),
        // Another survivor won the lease: nothing of ours to record.
        Err(e) if lease_lost(wd, j) => {
            tracing::info!(jname = %j, error = %e, "HA: another node took it over");
            return;
        }
        Err(e) => format!("failed: {}", crate::error_chain(e)),
    };
    let seconds = (*still + t0.elapsed()).as_secs_f64();
    tracing::warn!(jname = %j, from = %owner, seconds, %result, "HA: failover");
    record.note(Event {
        kind: "failover".into(),
        from: owner,
        to: me.to_owned(),
        fault_at: sys::utc_timestamp(fault_at),
        done_at: sys::utc_timestamp(SystemTime::now()),
        seconds,
        result,
    });
    if let Err(e) = record.write(wd, j) {
        tracing::warn!(jname = %j, error = %e, "cannot write the HA record");
    }
}

/// Whether the lease of `j` names another node now.
fn lease_lost(wd: &Workdir, j: &Jname) -> bool {
    matches!(lease::read(wd, j), Ok(Some(Lease { node: Some(n), .. })) if n != wd.nodename())
}

/// Start again the `ha=1` envs registered here that died (their process
/// is gone without a stop), or that a failover here could not start.
fn restart_own(wd: &Workdir, reg: &Registry) {
    let Ok(rows) = reg.list() else { return };
    for row in rows {
        let j = &row.jname;
        let Ok(def) = envdef::load_registered(wd, j) else {
            continue;
        };
        let policy = Policy::of(&def);
        if !policy.ha || lease_lost(wd, j) {
            continue;
        }
        let engine = engines::of(row.kind);
        let mut record = Record::read(wd, j);
        let failed_here = record
            .last
            .as_ref()
            .is_some_and(|e| e.to == wd.nodename() && e.result != "running");
        let migrating = matches!(ferry_core::runtime::read(wd, j),
            Ok(Some(rt)) if rt.migration.is_some());
        let dead = match engine.state(wd, j) {
            Ok(EnvState::Crashed) => true,
            Ok(EnvState::Stopped) => failed_here,
            _ => false,
        };
        if !dead || migrating {
            continue;
        }
        if record.recent() >= policy.max_restart as usize {
            continue;
        }
        let fault_at = SystemTime::now();
        let t0 = Instant::now();
        let r = EnvLock::acquire(wd, j).and_then(|_lock| {
            if engine.state(wd, j)? == EnvState::Running {
                return Ok(());
            }
            engine.start(wd, reg, j, &StartOptions::default())
        });
        let result = match &r {
            Ok(()) => "running".to_owned(),
            Err(e) => format!("failed: {}", crate::error_chain(e)),
        };
        tracing::warn!(jname = %j, %result, "HA: restarted here");
        record.note(Event {
            kind: "restart".into(),
            from: wd.nodename().to_owned(),
            to: wd.nodename().to_owned(),
            fault_at: sys::utc_timestamp(fault_at),
            done_at: sys::utc_timestamp(SystemTime::now()),
            seconds: t0.elapsed().as_secs_f64(),
            result,
        });
        if let Err(e) = record.write(wd, j) {
            tracing::warn!(jname = %j, error = %e, "cannot write the HA record");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_policy_reads_its_keys_and_defaults() {
        let t = std::path::Path::new("/w");
        let def = Definition::parse("jname=\"a\"\n", t).unwrap();
        assert_eq!(
            Policy::of(&def),
            Policy {
                ha: false,
                nodes: vec![],
                max_restart: 3
            }
        );
        let def =
            Definition::parse("ha=\"1\"\nha_nodes=\"n3,n2\"\nha_max_restart=\"5\"\n", t).unwrap();
        let p = Policy::of(&def);
        assert_eq!((p.ha, p.max_restart), (true, 5));
        assert_eq!(p.nodes, vec!["n2".to_owned(), "n3".to_owned()]);
        assert!(p.allows("n2") && !p.allows("n1"));
    }

    #[test]
    fn placement_takes_the_least_loaded_allowed_node_not_in_maintenance() {
        let t = tempfile::tempdir().unwrap();
        let wd = Workdir::init(t.path(), Some("n1")).unwrap();
        for (j, node) in [("a", "n2"), ("b", "n2"), ("c", "n3")] {
            let j = Jname::new(j).unwrap();
            std::fs::create_dir_all(wd.system_dir(&j)).unwrap();
            lease::acquire(&wd.clone().with_nodename(node), &j).unwrap();
        }
        let alive: Vec<String> = ["n1", "n2", "n3"].map(String::from).to_vec();
        let any = Policy {
            ha: true,
            nodes: vec![],
            max_restart: 3,
        };
        assert_eq!(place(&wd, &any, &alive).as_deref(), Some("n1"));
        std::fs::create_dir_all(maintenance_dir(&wd)).unwrap();
        std::fs::write(maintenance_dir(&wd).join("n1"), "").unwrap();
        assert_eq!(place(&wd, &any, &alive).as_deref(), Some("n3"));
        let only_n2 = Policy {
            nodes: vec!["n2".into()],
            ..any.clone()
        };
        assert_eq!(place(&wd, &only_n2, &alive).as_deref(), Some("n2"));
        let nowhere = Policy {
            nodes: vec!["n9".into()],
            ..any
        };
        assert_eq!(place(&wd, &nowhere, &alive), None);
    }

    #[test]
    fn attempts_older_than_the_window_do_not_count() {
        let mut r = Record {
            attempts: vec![1, 2, unix_now() - 10],
            last: None,
        };
        assert_eq!(r.recent(), 1);
        let e = Event {
            kind: "restart".into(),
            from: "n1".into(),
            to: "n1".into(),
            fault_at: String::new(),
            done_at: String::new(),
            seconds: 0.0,
            result: "running".into(),
        };
        r.note(e);
        assert_eq!((r.attempts.len(), r.recent()), (2, 2));
    }
}
