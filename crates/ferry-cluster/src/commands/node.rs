//! `node`: the nodes of the cluster as this node knows them.

use std::time::Duration;

use ferry_api::command::{NodeArgs, NodeMode};
use ferry_api::{Columns, Outcome, View};
use ferry_core::inventory::Inventory;
use ferry_core::node::{self, Liveness};
use ferry_core::{Error, Jname, Result};

use crate::context::Context;
use crate::rpc::{Asker, NodeReply, NodeRequest, RpcError};

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
            &crate::context::view(&a.display, a.header),
        ),
        NodeMode::Add => add(ctx, &named()?, Duration::from_secs(a.timeout.max(1))),
        NodeMode::Remove => remove(ctx, &named()?, a.force),
    }
}

/// `node mode=add`: fetch the node's inventory over the broker and keep it.
fn add(ctx: &Context, node: &Jname, timeout: Duration) -> Result<Outcome> {
    let (wd, reg) = ctx.open()?;
    if node.as_str() == wd.nodename() {
        return Err(Error::Refused(format!("{node} is this node")));
    }
    let inv = match Asker::ask_once(&wd, node, NodeRequest::Inventory, timeout)? {
        NodeReply::Inventory(inv) => inv,
        other => {
            return Err(RpcError::Unexpected {
                node: node.to_string(),
                asked: "inventory",
                got: other.kind().to_owned(),
            }
            .into())
        }
    };
    if inv.nodename != node.as_str() {
        return Err(Error::Failed(format!(
            "the daemon on {node}'s tube says it is {:?}",
            inv.nodename
        )));
    }
    let json = serde_json::to_string(&inv).map_err(Error::encode("the inventory"))?;
    reg.add_node(node, &json)?;
    Ok(Outcome::message(format!("node {node} added")))
}

fn list(ctx: &Context, lease_time: Duration, view: &View) -> Result<Outcome> {
    let (wd, reg) = ctx.open()?;
    let mut l = crate::context::listing(Columns::all(COLUMNS), view)?;
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
        let inv: Option<Inventory> = row.and_then(|r| serde_json::from_str(&r.inventory).ok());
        l.push(serde_json::json!({
            "node": name,
            "state": state.as_str(),
            "envs": owned.get(&name).copied().unwrap_or(0),
            "added": row.map(|r| r.added.clone()),
            "addresses": inv.as_ref().map(|i| i.addresses.join(",")),
            "cpus": inv.as_ref().map(|i| i.ncpu),
            "memory": inv.as_ref().map(|i| i.mem_bytes),
            "accel": inv.as_ref().and_then(|i| i.accel.clone()),
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
