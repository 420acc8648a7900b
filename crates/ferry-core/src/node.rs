//! The nodes of the cluster as this node knows them (CBSD's `node`): a
//! table in the local registry with each node's inventory, fetched from
//! that node over the broker, and liveness judged from heartbeat counters
//! watched from here (DESIGN §5): a node is dead when its counter has not
//! moved for the lease time, measured on this node's own monotonic clock.
//! No clock of another node is ever read.

use std::time::Duration;

use rusqlite::{params, OptionalExtension};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::lease;
use crate::name::Jname;
use crate::registry::Registry;
use crate::workdir::Workdir;

pub(crate) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS nodes (
    name      TEXT PRIMARY KEY NOT NULL,
    inventory TEXT NOT NULL,
    added     TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS node_watch (
    name     TEXT PRIMARY KEY NOT NULL,
    boot     TEXT NOT NULL,
    counter  INTEGER,
    since_ms INTEGER NOT NULL,
    moved_ms INTEGER NOT NULL
);
";

/// A node added with `node mode=add`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRow {
    pub name: Jname,
    /// Its inventory as it sent it (JSON).
    pub inventory: String,
    /// When it was added (UTC, this node's clock; shown, never compared).
    pub added: String,
}

/// What this node has seen of a node's heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Watch {
    counter: Option<u64>,
    /// When this node began watching, on its own boot clock.
    since: Duration,
    /// When the counter last moved (or watching began), on that clock.
    moved: Duration,
}

/// Whether a node is alive, as far as this node can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Liveness {
    /// Its counter moved within the lease time.
    Alive,
    /// Its counter has been still for at least the lease time.
    Dead,
    /// Watched for less than the lease time without a move yet, or not
    /// watched at all (no daemon runs here).
    Unknown,
}

impl Liveness {
    pub fn as_str(self) -> &'static str {
        match self {
            Liveness::Alive => "alive",
            Liveness::Dead => "dead",
            Liveness::Unknown => "unknown",
        }
    }
}

/// This boot's id and the time on its monotonic clock (which counts
/// suspended time, and starts again at each boot).
fn boot_clock() -> Result<(String, Duration)> {
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map_err(|e| Error::Failed(format!("cannot read the boot id: {e}")))?;
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map_err(|e| Error::Failed(format!("cannot read the boot clock: {e}")))?;
    Ok((boot.trim().to_owned(), Duration::from(t)))
}

impl Registry {
    /// Add a node, or refresh the inventory of one already added.
    pub fn add_node(&self, name: &Jname, inventory: &str) -> Result<()> {
        let added = crate::sys::utc_timestamp(std::time::SystemTime::now());
        self.conn()
            .execute(
                "INSERT INTO nodes (name, inventory, added) VALUES (?1, ?2, ?3)
                 ON CONFLICT(name) DO UPDATE SET inventory = excluded.inventory",
                params![name.as_str(), inventory, added],
            )
            .map_err(self.err())?;
        Ok(())
    }

    /// Forget a node; returns whether it was known.
    pub fn remove_node(&self, name: &Jname) -> Result<bool> {
        let n = self
            .conn()
            .execute("DELETE FROM nodes WHERE name = ?1", [name.as_str()])
            .map_err(self.err())?;
        self.conn()
            .execute("DELETE FROM node_watch WHERE name = ?1", [name.as_str()])
            .map_err(self.err())?;
        Ok(n > 0)
    }

    /// The nodes added here, by name.
    pub fn nodes(&self) -> Result<Vec<NodeRow>> {
        let mut stmt = self
            .conn()
            .prepare("SELECT name, inventory, added FROM nodes ORDER BY name")
            .map_err(self.err())?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get(1)?, r.get(2)?)))
            .map_err(self.err())?
            .collect::<rusqlite::Result<Vec<(String, String, String)>>>()
            .map_err(self.err())?;
        rows.into_iter()
            .map(|(name, inventory, added)| {
                Ok(NodeRow {
                    name: crate::error::jname(&name)?,
                    inventory,
                    added,
                })
            })
            .collect()
    }

    /// One node, if added here.
    pub fn node(&self, name: &Jname) -> Result<Option<NodeRow>> {
        Ok(self.nodes()?.into_iter().find(|n| &n.name == name))
    }

    fn watch(&self, name: &str, boot: &str) -> Result<Option<Watch>> {
        self.conn()
            .query_row(
                "SELECT counter, since_ms, moved_ms FROM node_watch WHERE name = ?1 AND boot = ?2",
                params![name, boot],
                |r| {
                    let counter: Option<i64> = r.get(0)?;
                    let ms = |v: i64| Duration::from_millis(u64::try_from(v).unwrap_or(0));
                    Ok(Watch {
                        counter: counter.and_then(|c| u64::try_from(c).ok()),
                        since: ms(r.get(1)?),
                        moved: ms(r.get(2)?),
                    })
                },
            )
            .optional()
            .map_err(self.err())
    }

    fn set_watch(&self, name: &str, boot: &str, w: Watch) -> Result<()> {
        let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        self.conn()
            .execute(
                "INSERT OR REPLACE INTO node_watch (name, boot, counter, since_ms, moved_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    name,
                    boot,
                    w.counter.and_then(|c| i64::try_from(c).ok()),
                    ms(w.since),
                    ms(w.moved)
                ],
            )
            .map_err(self.err())?;
        Ok(())
    }
}

/// Look at `node`'s heartbeat counter now and remember when it last moved
/// (the daemon does this at every beat of its own). Returns its liveness.
pub fn observe(wd: &Workdir, reg: &Registry, node: &str, lease_time: Duration) -> Result<Liveness> {
    let (boot, now) = boot_clock()?;
    let counter = crate::heartbeat::read(wd, node)?;
    let w = match reg.watch(node, &boot)? {
        // Still: nothing to remember.
        Some(w) if w.counter == counter => w,
        seen => {
            let w = Watch {
                counter,
                since: seen.map_or(now, |w| w.since),
                moved: now,
            };
            reg.set_watch(node, &boot, w)?;
            w
        }
    };
    Ok(judge(Some(w), now, lease_time))
}

/// `node`'s liveness from what this node has seen, without looking again.
pub fn liveness(reg: &Registry, node: &str, lease_time: Duration) -> Result<Liveness> {
    let (boot, now) = boot_clock()?;
    Ok(judge(reg.watch(node, &boot)?, now, lease_time))
}

/// How long `node`'s counter has stood still as this node saw it (`None`:
/// never watched here): the time since it last moved, or since watching
/// began if it never did.
pub fn still(reg: &Registry, node: &str) -> Result<Option<Duration>> {
    let (boot, now) = boot_clock()?;
    Ok(reg.watch(node, &boot)?.map(|w| now.saturating_sub(w.moved)))
}

fn judge(w: Option<Watch>, now: Duration, lease_time: Duration) -> Liveness {
    let Some(w) = w else {
        return Liveness::Unknown;
    };
    let still = now.saturating_sub(w.moved);
    if still >= lease_time {
        Liveness::Dead
    } else if w.moved > w.since {
        Liveness::Alive
    } else {
        // No move seen yet: alive or dead cannot be told apart so far.
        Liveness::Unknown
    }
}

/// Every node with a heartbeat in the pool (`jails-system/.nodes/`).
pub fn beating(wd: &Workdir) -> Vec<String> {
    let dir = wd.root().join("jails-system/.nodes");
    let mut out: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .filter(|n| Jname::new(n).is_ok())
        .collect();
    out.sort();
    out
}

/// How many envs each node owns, from the leases in `jails-system/`.
pub fn owned_envs(wd: &Workdir) -> std::collections::BTreeMap<String, usize> {
    let mut out = std::collections::BTreeMap::new();
    let dir = wd.root().join("jails-system");
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let Some(j) = e.file_name().to_str().and_then(|n| Jname::new(n).ok()) else {
            continue;
        };
        if let Ok(Some(lease::Lease {
            node: Some(node), ..
        })) = lease::read(wd, &j)
        {
            *out.entry(node).or_insert(0) += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_counter_still_for_the_lease_time_is_dead_and_a_moving_one_alive() {
        let t = tempfile::tempdir().unwrap();
        let wd = Workdir::init(t.path(), Some("n1")).unwrap();
        let reg = Registry::open(&wd.db_dir()).unwrap();
        let lease = Duration::from_millis(400);
        assert_eq!(liveness(&reg, "n1", lease).unwrap(), Liveness::Unknown);
        crate::heartbeat::beat(&wd).unwrap();
        assert_eq!(observe(&wd, &reg, "n1", lease).unwrap(), Liveness::Unknown);
        crate::heartbeat::beat(&wd).unwrap();
        assert_eq!(observe(&wd, &reg, "n1", lease).unwrap(), Liveness::Alive);
        std::thread::sleep(lease);
        assert_eq!(liveness(&reg, "n1", lease).unwrap(), Liveness::Dead);
        assert_eq!(observe(&wd, &reg, "n1", lease).unwrap(), Liveness::Dead);
        crate::heartbeat::beat(&wd).unwrap();
        assert_eq!(observe(&wd, &reg, "n1", lease).unwrap(), Liveness::Alive);
        // A node that never beat stays unknown until the lease time passes.
        assert_eq!(observe(&wd, &reg, "n9", lease).unwrap(), Liveness::Unknown);
        std::thread::sleep(lease);
        assert_eq!(observe(&wd, &reg, "n9", lease).unwrap(), Liveness::Dead);
    }

    #[test]
    fn nodes_are_added_refreshed_and_removed() {
        let t = tempfile::tempdir().unwrap();
        let wd = Workdir::init(t.path(), Some("n1")).unwrap();
        let reg = Registry::open(&wd.db_dir()).unwrap();
        let n2 = Jname::new("n2").unwrap();
        reg.add_node(&n2, "{}").unwrap();
        reg.add_node(&n2, "{\"cpus\":2}").unwrap();
        let rows = reg.nodes().unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].inventory, "{\"cpus\":2}");
        assert!(reg.remove_node(&n2).unwrap());
        assert!(!reg.remove_node(&n2).unwrap());
        assert!(reg.node(&n2).unwrap().is_none());
    }
}
