//! `ha`: the envs HA protects and what it did for them.

use std::time::Duration;

use ferry_api::command::HaArgs;
use ferry_api::{Columns, Outcome};
use ferry_core::lease::{self, Lease};
use ferry_core::node::{self, Liveness};
use ferry_core::{envdef, Result};

use crate::context::{listing, view, Context};
use crate::engines;
use crate::ha::{self, Policy, Record};

const COLUMNS: &[&str] = &[
    "jname",
    "kind",
    "node",
    "node_state",
    "status",
    "ha_nodes",
    "attempts",
    "max_restart",
    "last",
    "last_from",
    "last_to",
    "last_at",
    "last_seconds",
    "last_result",
];

pub fn run(ctx: &Context, a: &HaArgs) -> Result<Outcome> {
    let (wd, reg) = ctx.open()?;
    let lease_time = Duration::from_secs(a.lease_time.max(1));
    let mut l = listing(Columns::all(COLUMNS), &view(&a.display, a.header))?;
    for j in ha::shared_envs(&wd) {
        let Ok(def) = envdef::load_registered(&wd, &j) else {
            continue;
        };
        let policy = Policy::of(&def);
        if !policy.ha {
            continue;
        }
        let owner = match lease::read(&wd, &j) {
            Ok(Some(Lease { node: Some(n), .. })) => n,
            _ => continue,
        };
        let node_state = if owner == wd.nodename() {
            Liveness::Alive
        } else {
            node::liveness(&reg, &owner, lease_time)?
        };
        let kind = engines::ENGINES.of_definition(&def).kind();
        // The state of an env is known only on the node that runs it.
        let status = (owner == wd.nodename())
            .then(|| engines::of(kind).state(&wd, &j).ok())
            .flatten()
            .map(|s| s.display());
        let record = Record::read(&wd, &j);
        let last = record.last.as_ref();
        l.push(serde_json::json!({
            "jname": j.as_str(),
            "kind": kind.as_str(),
            "node": owner,
            "node_state": node_state.as_str(),
            "status": status,
            "ha_nodes": if policy.nodes.is_empty() { "any".to_owned() } else { policy.nodes.join(",") },
            "attempts": record.recent(),
            "max_restart": policy.max_restart,
            "last": last.map(|e| e.kind.clone()),
            "last_from": last.map(|e| e.from.clone()),
            "last_to": last.map(|e| e.to.clone()),
            "last_at": last.map(|e| e.done_at.clone()),
            "last_seconds": last.map(|e| (e.seconds * 10.0).round() / 10.0),
            "last_result": last.map(|e| e.result.clone()),
        }));
    }
    Ok(Outcome::Listing(l))
}
