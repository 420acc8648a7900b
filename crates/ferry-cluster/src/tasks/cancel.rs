//! Cancelling a task. A running one is stopped by the cancelling command:
//! its runner leads its own session, and every process of that session
//! (the runner and the hooks it started) gets SIGTERM, then SIGKILL after
//! [`CANCEL_GRACE`]. The runner is named by pid and start time, so a
//! recycled pid is never signalled. A task sent to another node is
//! cancelled there, and its result comes back as any other.

use std::time::{Duration, Instant};

use ferry_core::process::Process;
use ferry_core::task::{CancelStep, TaskRow, TaskStore};
use ferry_core::{Error, Result, Workdir};

use super::log;
use crate::rpc::{self, transport, NodeRequest, Request, VERSION};

/// How long a cancelled runner may take to end after SIGTERM before its
/// whole session gets SIGKILL.
pub const CANCEL_GRACE: Duration = Duration::from_secs(10);

/// Cancel task `id` of `wd`; returns what happened.
pub(crate) fn cancel(wd: &Workdir, id: u64) -> Result<String> {
    let mut store = TaskStore::open(&wd.db_dir())?;
    let (run, runner) = match store.request_cancel(id)? {
        CancelStep::Cancelled => {
            log::remove_if_flushed(wd, &store, id);
            return Ok(format!("task {id} cancelled"));
        }
        CancelStep::Running { run, runner } => (run, runner),
    };
    if let Some((pid, start)) = runner {
        stop_runner(pid, start);
        let settled = store.end_unrecorded(id, run, "cancelled while running")?;
        log::remove_if_flushed(wd, &store, id);
        return Ok(match settled {
            Some(_) => format!("task {id} cancelled while running"),
            None => format!(
                "task {id} finished before it could be cancelled: {}",
                state_of(&store, id)
            ),
        });
    }
    let row = store.get(id)?.ok_or(Error::TaskNotFound(id))?;
    let elsewhere = row.node.as_deref().filter(|n| *n != wd.nodename());
    if let Some(node) = elsewhere {
        send_cancel(wd, &row)?;
        // Its runner there gets the same grace as one here.
        let until = Instant::now() + CANCEL_GRACE + Duration::from_secs(5);
        while Instant::now() < until && state_of(&store, id) == "running" {
            std::thread::sleep(Duration::from_millis(50));
        }
        return Ok(format!(
            "task {id} asked to cancel on node {node} (now {})",
            state_of(&store, id)
        ));
    }
    // Claimed, but its runner has not started the command: it will see the
    // cancel and not start it (or, if its daemon died, recovery settles it).
    let until = Instant::now() + CANCEL_GRACE;
    while Instant::now() < until && state_of(&store, id) == "running" {
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(format!(
        "task {id} cancelled before it ran (now {})",
        state_of(&store, id)
    ))
}

/// Ask the node running task `row` (sent from here) to cancel it. Its
/// result (`cancelled`, or how it ended first) comes back as any other.
fn send_cancel(wd: &Workdir, row: &TaskRow) -> Result<()> {
    let (Some(node), Some(request)) = (row.node.as_deref(), row.request.as_deref()) else {
        return Err(Error::Failed(format!("task {} was not sent", row.id)));
    };
    let uri = rpc::required_uri(wd)?;
    let mut b = transport::connect(&uri, Duration::from_secs(2))?;
    let req = Request {
        v: VERSION,
        id: request.to_owned(),
        from: wd.nodename().to_owned(),
        reply: rpc::tasks_tube(wd.nodename()),
        body: NodeRequest::Cancel,
    };
    transport::put_request(&mut b, node, &req, 50)?;
    Ok(())
}

/// Stop a runner and what it started: its whole session when it leads
/// one, else the runner alone.
fn stop_runner(pid: i32, start: u64) {
    let runner = Process { pid, start };
    if !runner.alive() {
        return;
    }
    if runner.leads_session() {
        runner.terminate_session(CANCEL_GRACE);
    } else {
        runner.terminate(CANCEL_GRACE);
    }
}

pub(crate) fn state_of(store: &TaskStore, id: u64) -> &'static str {
    match store.get(id) {
        Ok(Some(t)) => t.state.as_str(),
        Ok(None) => "flushed",
        Err(_) => "unknown",
    }
}
