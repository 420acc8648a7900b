//! `node`: the nodes of the cluster as this node knows them.

use std::time::Duration;

use ferry_api::command::{NodeArgs, NodeMode};
use ferry_api::Outcome;
use ferry_core::node::{self, Liveness};
use ferry_core::{Error, Jname, Result};

use crate::Context;

const COLUMNS: &[&str] = &[
    "node",
    "state",
    "envs",
    "added",
    "addresses",
    "cpus",
    "memory",
    "accel",
];

pub fn run(ctx: &Context, a: NodeArgs) -> Result<Outcome> {
    let named = || {
        a.node
            .clone()
            .ok_or_else(|| Error::bad_value("node", "", "required for this mode"))
    };
    match a.mode {
        NodeMode::List => list(
            ctx,
            Duration::from_secs(a.lease_time.max(1)),
            a.display.as_deref(),
        ),
        NodeMode::Add => {
            crate::cluster::add_node(ctx, &named()?, Duration::from_secs(a.timeout.max(1)))
        }
        NodeMode::Remove => remove(ctx, &named()?, a.force),
    }
}

fn list(ctx: &Context, lease_time: Duration, display: Option<&str>) -> Result<Outcome> {
    let (wd, reg) = ctx.open()?;
    let mut l = crate::listing(COLUMNS, display)?;
    let added = reg.nodes()?;
    let owned = node::owned_envs(&wd);
    let mut names: Vec<String> = added.iter().map(|n| n.name.to_string()).collect();
    names.extend(node::beating(&wd));
    names.sort();
    names.dedup();
    for name in names {
        let state = if name == wd.nodename() {
            Liveness::Alive
        } else {
            node::liveness(&reg, &name, lease_time)?
        };
        let row = added.iter().find(|n| n.name.as_str() == name);
        let inv: serde_json::Value = row
            .and_then(|r| serde_json::from_str(&r.inventory).ok())
            .unwrap_or(serde_json::Value::Null);
        l.push(serde_json::json!({
            "node": name,
            "state": state.as_str(),
            "envs": owned.get(&name).copied().unwrap_or(0),
            "added": row.map(|r| r.added.clone()),
            "addresses": inv.get("addresses").and_then(|a| a.as_array()).map(|a| {
                a.iter().filter_map(|v| v.as_str()).collect::<Vec<_>>().join(",")
            }),
            "cpus": inv.get("ncpu"),
            "memory": inv.get("mem_bytes"),
            "accel": inv.get("accel"),
        }));
    }
    Ok(Outcome::Listing(l))
}

fn remove(ctx: &Context, name: &Jname, force: bool) -> Result<Outcome> {
    let (wd, reg) = ctx.open()?;
    if reg.node(name)?.is_none() {
        return Err(Error::UnknownNode(
            name.to_string(),
            wd.nodename().to_owned(),
        ));
    }
    let envs = node::owned_envs(&wd)
        .get(name.as_str())
        .copied()
        .unwrap_or(0);
    if envs > 0 && !force {
        return Err(Error::Refused(format!(
            "{name} owns {envs} env(s); move them first, or force=1"
        )));
    }
    reg.remove_node(name)?;
    Ok(Outcome::message(format!("node {name} removed")))
}
