//! `task` and `taskls`: the task queue (CBSD's `task`, DESIGN §4, and
//! docs/tasks.md). Its parts, from the leaf up: [`words`] (what a task
//! runs), `log`, `cancel`, [`remote`] (tasks across nodes), [`queue`]
//! (the daemon's side: claiming and starting runners) and `runner`
//! (`task mode=run`, the runner itself).

mod cancel;
mod log;
pub mod queue;
pub mod remote;
mod runner;
pub mod words;

use ferry_api::command::{TaskArgs, TaskAutoflush, TaskMode};
use ferry_api::{Columns, Command, Outcome, View};
use ferry_core::registry::Registry;
use ferry_core::task::{Autoflush, NewTask, TaskRow, TaskStore};
use ferry_core::{Error, Jname, Result, Workdir};

pub use cancel::CANCEL_GRACE;

use crate::context::{listing, view, Context};
use crate::rpc;

/// How a runner carries out its task's command: the dispatcher, handed
/// down by it (the queue sits below the command handlers).
pub type Execute = fn(&Context, Command) -> Result<Outcome>;

const COLUMNS: &[&str] = &[
    "id",
    "node",
    "state",
    "exit_code",
    "after",
    "autoflush",
    "retry",
    "runs",
    "created",
    "started",
    "finished",
    "daemon",
    "pid",
    "command",
    "reason",
    "log",
    "request",
    "origin",
];

fn open(ctx: &Context) -> Result<(Workdir, TaskStore)> {
    let wd = Workdir::open(&ctx.workdir)?;
    let store = TaskStore::open(&wd.db_dir())?;
    Ok((wd, store))
}

pub fn run(ctx: &Context, a: TaskArgs, execute: Execute) -> Result<Outcome> {
    let unused = |key: &str, given: bool| {
        if given {
            Err(Error::bad_value(
                key,
                "",
                format!("not used with mode={}", a.mode.as_str()),
            ))
        } else {
            Ok(())
        }
    };
    if a.mode != TaskMode::New {
        unused("cmd", !a.cmd.is_empty())?;
    }
    match a.mode {
        TaskMode::New => {
            unused("id", a.id.is_some())?;
            submit(ctx, &a)
        }
        TaskMode::List => {
            unused("id", a.id.is_some())?;
            list(ctx, &view(&a.display, a.header))
        }
        TaskMode::Cancel => {
            let wd = Workdir::open(&ctx.workdir)?;
            cancel::cancel(&wd, required_id(a.id, "cancel")?).map(Outcome::message)
        }
        TaskMode::Flush => flush(ctx, a.id),
        TaskMode::Run => {
            let run = a
                .run
                .ok_or_else(|| Error::bad_value("run", "", "required with mode=run"))?;
            runner::run(ctx, required_id(a.id, "run")?, run, execute)
        }
    }
}

fn required_id(id: Option<u64>, mode: &str) -> Result<u64> {
    id.ok_or_else(|| Error::bad_value("id", "", format!("required with mode={mode}")))
}

/// Whether `node` may be named as a task's target: this node, or one
/// added with `node mode=add` when this node has a broker to reach it.
/// Returns whether it is another node.
pub fn check_node(wd: &Workdir, reg: &Registry, node: &Jname) -> Result<bool> {
    if node.as_str() == wd.nodename() {
        return Ok(false);
    }
    if reg.node(node)?.is_none() {
        return Err(Error::UnknownNode(
            node.to_string(),
            wd.nodename().to_owned(),
        ));
    }
    rpc::required_uri(wd)?;
    Ok(true)
}

fn submit(ctx: &Context, a: &TaskArgs) -> Result<Outcome> {
    let words = &a.cmd;
    words::check(words)?;
    let (wd, mut store) = open(ctx)?;
    let remote = match &a.node {
        Some(node) => check_node(&wd, &Registry::open(&wd.db_dir())?, node)?,
        None => false,
    };
    let id = store.submit(&NewTask {
        node: a.node.as_ref().map(|n| n.as_str().to_owned()),
        after: a.after,
        autoflush: match a.autoflush {
            TaskAutoflush::Keep => Autoflush::Keep,
            TaskAutoflush::OnSuccess => Autoflush::OnSuccess,
            TaskAutoflush::Always => Autoflush::Always,
        },
        retry: a.retry,
        words: words.clone(),
    })?;
    if remote {
        // Sent now if it can be; else the daemon sends it.
        if let Err(e) = remote::send_now(&wd, &mut store) {
            tracing::info!(task = id, error = %e, "left for the daemon to send");
        }
    }
    Ok(Outcome::message(id.to_string()))
}

/// `task mode=list` and `taskls`.
pub fn list(ctx: &Context, view: &View) -> Result<Outcome> {
    let (_, store) = open(ctx)?;
    let mut l = listing(Columns::all(COLUMNS), view)?;
    for t in store.list()? {
        l.push(row(&t));
    }
    Ok(Outcome::Listing(l))
}

fn row(t: &TaskRow) -> serde_json::Value {
    serde_json::json!({
        "id": t.id,
        "node": t.node,
        "state": t.state.as_str(),
        "exit_code": t.exit_code,
        "after": t.after,
        "autoflush": t.autoflush,
        "retry": t.retry,
        "runs": t.runs,
        "created": t.created,
        "started": t.started,
        "finished": t.finished,
        "daemon": t.claimer.as_ref().map(|c| c.pid),
        "pid": t.runner.map(|(pid, _)| pid),
        "command": words::show(&t.words),
        "reason": t.reason,
        "log": t.log,
        "request": t.request,
        "origin": t.origin,
    })
}

/// `task mode=flush`: remove the records of finished tasks (all, or `id`)
/// and their logs. Pending and running tasks stay.
fn flush(ctx: &Context, id: Option<u64>) -> Result<Outcome> {
    let (wd, mut store) = open(ctx)?;
    let ids = store.flush(id)?;
    for id in &ids {
        log::remove(&wd, *id);
    }
    Ok(Outcome::message(format!(
        "{} finished task record(s) flushed",
        ids.len()
    )))
}
