//! `node`: the nodes of the cluster as this node knows them.

use std::time::Duration;

use ferry_api::command::{NodeArgs, NodeMode};
use ferry_api::{exit, Columns, EnvResult, Outcome, View};
use ferry_core::inventory::Inventory;
use ferry_core::node::{self, Liveness};
use ferry_core::{EnvKind, EnvState, Error, Jname, Result, Workdir};

use crate::context::Context;
use crate::engines;
use crate::ha::{self, Policy};
use crate::migrate;
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
        NodeMode::Evacuate => evacuate(ctx, a.node.as_ref(), a.lease_time),
        NodeMode::Restore => restore(ctx, a.node.as_ref()),
    }
}

/// What an evacuation wrote in this node's maintenance marker: where each
/// env went, so that `restore` brings it back.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Evacuation {
    since: String,
    moved: Vec<Moved>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Moved {
    jname: String,
    kind: String,
    to: String,
    running: bool,
}

fn marker(wd: &Workdir) -> std::path::PathBuf {
    ha::maintenance_dir(wd).join(wd.nodename())
}

fn read_evacuation(wd: &Workdir) -> Option<Evacuation> {
    std::fs::read(marker(wd))
        .ok()
        .map(|b| serde_json::from_slice(&b).unwrap_or_default())
}

fn write_evacuation(wd: &Workdir, e: &Evacuation) -> Result<()> {
    let p = marker(wd);
    std::fs::create_dir_all(ha::maintenance_dir(wd))
        .map_err(Error::io("cannot create", &ha::maintenance_dir(wd)))?;
    let json = serde_json::to_vec_pretty(e).map_err(Error::encode("the evacuation record"))?;
    ferry_core::atomic::write_atomic(&p, &json, 0o644).map_err(Error::io("cannot write", &p))
}

/// Evacuate and restore run on the node they concern.
fn this_node(wd: &Workdir, node: Option<&Jname>, mode: &str) -> Result<()> {
    match node {
        Some(n) if n.as_str() != wd.nodename() => Err(Error::Refused(format!(
            "node mode={mode} runs on the node it concerns: run it on {n} (through the \
             broker: `ferry task mode=new node={n} node mode={mode}`)"
        ))),
        _ => Ok(()),
    }
}

/// Run a move command (`bmigrate`, `jmigrate`-like) as ferry would.
fn run_words(ctx: &Context, words: &[String]) -> Result<Outcome> {
    let cmd = ferry_api::Command::parse_words(words)
        .map_err(|e| Error::Failed(format!("cannot build {words:?}: {e}")))?;
    crate::dispatch(ctx, cmd)
}

fn per_env(jname: &str, r: Result<String>) -> EnvResult {
    match r {
        Ok(message) => EnvResult {
            jname: jname.to_owned(),
            code: exit::OK,
            message,
        },
        Err(e) => EnvResult {
            jname: jname.to_owned(),
            code: exit::for_kind(e.kind()),
            message: crate::error_chain(&e),
        },
    }
}

/// `node mode=evacuate`: hold this node in maintenance and move every env
/// registered here to the node HA's placement picks (its `ha_nodes=`
/// respected): a running VM live, the others cold. An env that cannot move
/// stays, and says why; the node stays in maintenance.
fn evacuate(ctx: &Context, node: Option<&Jname>, lease_time: u64) -> Result<Outcome> {
    let (wd, reg) = ctx.open()?;
    this_node(&wd, node, "evacuate")?;
    let lease_time = Duration::from_secs(lease_time.max(1));
    let view = ha::View::now(&wd, &reg, lease_time);
    // Moves go through the others' daemons: to added nodes seen alive.
    let added: Vec<String> = reg
        .nodes()?
        .into_iter()
        .map(|n| n.name.to_string())
        .collect();
    let others: Vec<String> = view
        .alive
        .into_iter()
        .filter(|n| n != wd.nodename() && added.contains(n))
        .collect();
    if others.is_empty() {
        return Err(Error::Refused(
            "no other node is added here and alive as this node's daemon watched it (is \
             `ferry daemon` running here and on the others? `node mode=add` them); nothing moved"
                .into(),
        ));
    }
    let mut record = read_evacuation(&wd).unwrap_or_else(|| Evacuation {
        since: ferry_core::sys::utc_timestamp(std::time::SystemTime::now()),
        moved: Vec::new(),
    });
    write_evacuation(&wd, &record)?;
    let mut results = Vec::new();
    for row in reg.list()? {
        let j = row.jname.clone();
        let r = (|| -> Result<String> {
            let def = ferry_core::envdef::load_registered(&wd, &j)?;
            let policy = Policy::of(&def);
            let to = ha::place(&wd, &policy, &others).ok_or_else(|| {
                Error::Refused(format!(
                    "no live node may take it (ha_nodes={})",
                    policy.nodes.join(",")
                ))
            })?;
            let running = engines::of(row.kind).state(&wd, &j)? == EnvState::Running;
            let live = running && row.kind == EnvKind::Vm;
            let out = if live {
                run_words(
                    ctx,
                    &words(&["bmigrate", &format!("jname={j}"), &format!("node={to}")]),
                )?
            } else {
                let to_j =
                    Jname::new(&to).map_err(|e| Error::bad_value("node", &to, e.to_string()))?;
                migrate::cold_move(ctx, row.kind, &j, &to_j, COLD_MOVE_TIMEOUT, lease_time)?
            };
            record.moved.retain(|m| m.jname != j.as_str());
            record.moved.push(Moved {
                jname: j.to_string(),
                kind: row.kind.as_str().to_owned(),
                to: to.clone(),
                running,
            });
            write_evacuation(&wd, &record)?;
            Ok(said(&out).unwrap_or_else(|| format!("{j} moved to {to}")))
        })();
        results.push(per_env(j.as_str(), r));
    }
    Ok(Outcome::PerEnv { results })
}

/// `node mode=restore`: end this node's maintenance and bring back the
/// envs its evacuation moved, each from where it is now, by a task that
/// node's daemon runs (`bmigrate` for a running VM, the cold move else).
fn restore(ctx: &Context, node: Option<&Jname>) -> Result<Outcome> {
    let (wd, reg) = ctx.open()?;
    this_node(&wd, node, "restore")?;
    let Some(record) = read_evacuation(&wd) else {
        return Err(Error::Refused(format!(
            "{} is not in maintenance (no node mode=evacuate ran here)",
            wd.nodename()
        )));
    };
    // Open to new envs again first: the moves back land here.
    std::fs::remove_file(marker(&wd)).map_err(Error::io("cannot remove", &marker(&wd)))?;
    let mut store = ferry_core::task::TaskStore::open(&wd.db_dir())?;
    let mut results = Vec::new();
    for m in &record.moved {
        let r = (|| -> Result<String> {
            let j = Jname::new(&m.jname)
                .map_err(|e| Error::bad_value("jname", &m.jname, e.to_string()))?;
            if reg.get(&j)?.is_some() {
                return Ok(format!("{j} is here already"));
            }
            let holder = match ferry_core::lease::read(&wd, &j)? {
                Some(ferry_core::lease::Lease { node: Some(n), .. }) => n,
                _ => {
                    return Err(Error::Refused(format!(
                        "{j} is registered nowhere: jregister/bregister it"
                    )))
                }
            };
            let holder = Jname::new(&holder)
                .map_err(|e| Error::bad_value("node", &holder, e.to_string()))?;
            let kind = EnvKind::parse(&m.kind)
                .ok_or_else(|| Error::bad_value("kind", &m.kind, "not jail or vm"))?;
            let here = format!("node={}", wd.nodename());
            let name = format!("jname={j}");
            // A running VM comes back live, a jail by jmigrate, a stopped
            // VM as it went: unregistered there, registered here below.
            let (cmd_words, timeout) = match (kind, m.running) {
                (EnvKind::Vm, true) => (words(&["bmigrate", &name, &here]), LIVE_MOVE_TIMEOUT),
                (EnvKind::Jail, _) => (words(&["jmigrate", &name, &here]), COLD_MOVE_TIMEOUT),
                (EnvKind::Vm, false) => (words(&["bunregister", &name]), COLD_MOVE_TIMEOUT),
            };
            let cmd = ferry_api::Command::parse_words(&cmd_words)
                .map_err(|e| Error::Failed(format!("cannot build {cmd_words:?}: {e}")))?;
            let id = migrate::remote(&wd, &mut store, &holder, &cmd)?;
            let done = migrate::wait(&store, id, std::time::Instant::now() + timeout)?;
            if done.as_ref().map(|t| t.state) != Some(ferry_core::task::TaskState::Done) {
                return Err(Error::Failed(migrate::outcome(done.as_ref(), &holder)));
            }
            if kind == EnvKind::Vm && !m.running {
                let takeover = ferry_core::register::Takeover {
                    force: false,
                    lease_time: Duration::from_secs(30),
                    only_from: None,
                };
                let _lock = ferry_core::lock::EnvLock::acquire(&wd, &j)?;
                ferry_core::register::register(
                    &wd,
                    &reg,
                    &j,
                    EnvKind::Vm,
                    takeover,
                    &crate::engines::ENGINES,
                )?;
                ferry_core::register::sync_shared(&wd);
            }
            Ok(format!("{j} is back from {holder}"))
        })();
        results.push(per_env(&m.jname, r));
    }
    Ok(Outcome::PerEnv { results })
}

/// Seconds a cold move waits for the other node.
const COLD_MOVE_TIMEOUT: Duration = Duration::from_secs(60);
/// Seconds a live move may take (`bmigrate`'s default timeout, and some).
const LIVE_MOVE_TIMEOUT: Duration = Duration::from_secs(660);

fn words(w: &[&str]) -> Vec<String> {
    w.iter().map(|s| (*s).to_owned()).collect()
}

/// The one line a move reported.
fn said(o: &Outcome) -> Option<String> {
    match o {
        Outcome::Message { message } => Some(message.clone()),
        Outcome::PerEnv { results } => results.first().map(|r| r.message.clone()),
        _ => None,
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
