//! Tasks for other nodes (`task mode=new node=NAME`), over the broker.
//!
//! The asking node claims the task like a local one, gives the run a
//! request id, and puts a `task` request on the target's node tube; the
//! task stays `running` here until the result arrives on this node's task
//! tube, `ferry.tasks.<node>`. The target stores the request as a local
//! task keyed by the request id (a redelivered request is stored once),
//! runs it like any other, and puts the result back; its runner puts it
//! as soon as it has recorded it, and the daemon puts whatever a runner
//! could not.
//!
//! Every step survives a crash or a lost broker: a request not yet put is
//! put again (by the daemon, with the same request id); a request is
//! deleted from the tube only once stored; a result is marked replied only
//! once put, and a result that arrives twice settles the task once. A task
//! whose target is judged dead (its heartbeat still for the lease time)
//! ends `interrupted` here (or is queued again when retryable): its
//! result is unknown.

use std::sync::atomic::AtomicBool;
use std::sync::mpsc::Sender;
use std::time::{Duration, Instant};

use ferry_api::exit;
use ferry_broker::{Broker, BrokerUri};
use ferry_core::node::{self, Liveness};
use ferry_core::registry::Registry;
use ferry_core::task::{Accepted, Claimer, RemoteClaim, TaskRow, TaskState, TaskStore};
use ferry_core::{Error, Result, Workdir};

use super::{cancel, log, words};
use crate::context::error_chain;
use crate::rpc::transport::{self, serve_tube, TubeEvent};
use crate::rpc::{
    self, tasks_tube, NodeReply, NodeRequest, Reply, Request, TaskRequest, TaskResult,
};

/// How often the daemon puts what was not put and looks for dead targets.
const RETRY_EVERY: Duration = Duration::from_secs(1);

// ---- the asking node ----

/// Put the request of one claimed task on its target's tube.
fn send(b: &mut impl Broker, wd: &Workdir, store: &mut TaskStore, c: &RemoteClaim) -> Result<()> {
    let req = Request {
        v: rpc::VERSION,
        id: c.request.clone(),
        from: wd.nodename().to_owned(),
        reply: tasks_tube(wd.nodename()),
        body: NodeRequest::Task(TaskRequest {
            words: c.words.clone(),
            retry: c.retry,
        }),
    };
    // An ambiguous put is left unsent: putting it again is harmless, the
    // target stores a request id once.
    transport::put_request(b, &c.node, &req, 100)?;
    store.mark_sent(c.id, c.run)?;
    log::note(
        wd,
        c.id,
        &format!(
            "task {} run {} sent to node {} (request {})",
            c.id, c.run, c.node, c.request
        ),
    );
    Ok(())
}

/// Put every unsent request, then claim and send eligible tasks for other
/// nodes. Stops at the first failure (the broker is down): what is left
/// is sent later.
fn forward(
    b: &mut impl Broker,
    wd: &Workdir,
    store: &mut TaskStore,
    me: &Claimer,
) -> Result<usize> {
    let mut sent = 0;
    for c in store.unsent(wd.nodename())? {
        send(b, wd, store, &c)?;
        sent += 1;
    }
    while let Some(c) = store.claim_remote(wd.nodename(), me)? {
        send(b, wd, store, &c)?;
        sent += 1;
    }
    Ok(sent)
}

/// Right after `task mode=new node=OTHER`: send what can be sent now, so
/// the task does not wait for the daemon. Anything that fails here is
/// left to the daemon, which sends it within a second of being able to.
pub fn send_now(wd: &Workdir, store: &mut TaskStore) -> Result<usize> {
    let uri = rpc::required_uri(wd)?;
    let mut b = transport::connect(&uri, Duration::from_secs(1))?;
    forward(&mut b, wd, store, &Claimer::of_this_process()?)
}

/// How a task sent to another node ended, as its result says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Settlement {
    pub state: TaskState,
    pub code: Option<i32>,
    pub reason: String,
    /// Where it ran there (`as task 7 there`, or why it was refused).
    pub there: String,
    /// The end of its log there.
    pub output: String,
}

/// Read a task's result: a final state of a task run there, or a refusal
/// (a command it cannot run: the task failed without running).
pub(crate) fn settlement(body: NodeReply) -> Result<Settlement> {
    match body {
        NodeReply::TaskResult(t) => Ok(Settlement {
            state: TaskState::parse(&t.state)
                .filter(|s| s.is_final())
                .ok_or_else(|| Error::bad_value("task result state", &t.state, "not final"))?,
            code: t.exit_code,
            reason: t.reason.unwrap_or_default(),
            there: format!("as task {} there", t.task),
            output: t.output,
        }),
        NodeReply::Error { code, message } => Ok(Settlement {
            state: TaskState::Failed,
            code: Some(code),
            there: format!("refused there: {message}"),
            reason: message,
            output: String::new(),
        }),
        other => Err(Error::bad_value(
            "task result",
            "",
            format!("a {} reply is not a task's result", other.kind()),
        )),
    }
}

/// Record a result that arrived on this node's task tube. Returns the
/// task it settled, if it was still waiting for that result.
pub fn receive_result(wd: &Workdir, store: &mut TaskStore, body: &[u8]) -> Result<Option<u64>> {
    let reply = rpc::decode_reply(body)
        .map_err(|e| Error::bad_value("task result", "", error_chain(&e)))?;
    let s = settlement(reply.body)?;
    let row = store.by_request(&reply.id)?;
    let settled = store.settle_remote(&reply.id, s.state, s.code, &s.reason)?;
    if let (Some(id), Some(row)) = (settled, row) {
        log::note(
            wd,
            id,
            &format!(
                "task {id} run {} ended on node {} {}: {} (exit {})",
                row.runs,
                row.node.as_deref().unwrap_or("?"),
                s.there,
                s.state.as_str(),
                s.code.map_or("-".into(), |c| c.to_string())
            ),
        );
        if !s.output.is_empty() {
            log::append(wd, id, s.output.as_bytes());
        }
        log::remove_if_flushed(wd, store, id);
    }
    Ok(settled)
}

/// End the runs of tasks whose target node is dead: their result is
/// unknown (`interrupted`, or pending again when retryable).
fn settle_dead(wd: &Workdir, store: &mut TaskStore, reg: &Registry, lease_time: Duration) {
    let Ok(rows) = store.remote_running(wd.nodename()) else {
        return;
    };
    for row in rows {
        let Some(target) = row.node.as_deref() else {
            continue;
        };
        if node::liveness(reg, target, lease_time).ok() != Some(Liveness::Dead) {
            continue;
        }
        let why = format!("node {target} is dead; the task's result there is unknown");
        match store.end_unrecorded(row.id, row.runs, &why) {
            Ok(Some(s)) => {
                tracing::warn!(
                    task = row.id,
                    node = target,
                    state = s.as_str(),
                    "target node dead"
                );
                log::note(wd, row.id, &why);
                log::remove_if_flushed(wd, store, row.id);
            }
            Ok(None) => {}
            Err(e) => tracing::error!(task = row.id, error = %e, "cannot settle the task"),
        }
    }
}

// ---- the target node ----

/// A `task` request on this node's tube: store it (once), wake the queue.
/// A request seen before whose task has ended gets its result again; one
/// this node cannot run is refused on the asker's tube.
pub fn receive(
    wd: &Workdir,
    b: &mut impl Broker,
    req: &Request,
    task: &TaskRequest,
    wake: &Sender<()>,
) -> Result<()> {
    if let Err(why) = words::check(&task.words) {
        tracing::warn!(request = %req.id, from = %req.from, %why, "task refused");
        let refusal = Reply::error(&req.id, exit::USAGE, why.to_string());
        return Ok(transport::put_reply(b, &req.reply, &refusal)?);
    }
    let mut store = TaskStore::open(&wd.db_dir())?;
    match store.accept(wd.nodename(), &req.id, &req.reply, &task.words, task.retry)? {
        Accepted::New(id) => {
            tracing::info!(task = id, request = %req.id, from = %req.from, "task received");
            let _ = wake.send(());
        }
        Accepted::Again(row) if row.state.is_final() => reply(b, wd, &mut store, &row)?,
        Accepted::Again(_) => {}
    }
    Ok(())
}

/// A `cancel` request: cancel the task that request `request` brought,
/// on a thread of its own (stopping a runner takes up to its grace time).
pub fn cancel_received(wd: &Workdir, request: &str) -> Result<()> {
    let store = TaskStore::open(&wd.db_dir())?;
    let Some(row) = store.by_origin(request)? else {
        tracing::warn!(request, "cancel of a task never received; ignored");
        return Ok(());
    };
    if row.state.is_final() {
        return Ok(());
    }
    let wd = wd.clone();
    std::thread::spawn(move || match cancel::cancel(&wd, row.id) {
        Ok(m) => {
            tracing::info!(task = row.id, "{m}");
            match TaskStore::open(&wd.db_dir()) {
                Ok(mut store) => reply_now(&wd, &mut store, row.id),
                Err(e) => tracing::warn!(task = row.id, error = %e, "result left to the daemon"),
            }
        }
        Err(e) => tracing::warn!(task = row.id, error = %e, "cannot cancel"),
    });
    Ok(())
}

/// Put the result of task `row` (received from another node) on its
/// asker's tube, and remember it was put.
fn reply(b: &mut impl Broker, wd: &Workdir, store: &mut TaskStore, row: &TaskRow) -> Result<()> {
    let (Some(origin), Some(tube)) = (&row.origin, &row.reply) else {
        return Ok(());
    };
    let result = Reply::to(
        origin,
        NodeReply::TaskResult(TaskResult {
            task: row.id,
            state: row.state.as_str().to_owned(),
            exit_code: row.exit_code,
            reason: row.reason.clone(),
            output: log::tail(wd, row),
        }),
    );
    transport::put_reply(b, tube, &result)?;
    store.mark_replied(row.id)
}

/// The runner's side: right after recording the result of task `id`, put
/// it for the asker if the task came from another node. A failure is left
/// to the daemon.
pub fn reply_now(wd: &Workdir, store: &mut TaskStore, id: u64) {
    let mut attempt = || -> Result<()> {
        let Some(row) = store.get(id)? else {
            return Ok(());
        };
        if row.origin.is_none() || row.replied || !row.state.is_final() {
            return Ok(());
        }
        let uri = rpc::required_uri(wd)?;
        let mut b = transport::connect(&uri, Duration::from_secs(1))?;
        reply(&mut b, wd, store, &row)
    };
    if let Err(e) = attempt() {
        tracing::warn!(task = id, error = %e, "result not sent yet; the daemon will send it");
    }
}

// ---- the daemon ----

/// The daemon's thread for tasks that cross nodes: sends this node's
/// tasks for other nodes, records the results that come back, puts the
/// results of tasks received here that no runner could put, and ends the
/// runs of tasks whose target died. Runs until `stop`.
pub fn serve(wd: &Workdir, uri: &BrokerUri, stop: &AtomicBool, lease_time: Duration) {
    let opened = TaskStore::open(&wd.db_dir()).and_then(|s| {
        Ok((
            s,
            Registry::open(&wd.db_dir())?,
            Claimer::of_this_process()?,
        ))
    });
    let (mut store, reg, me) = match opened {
        Ok(o) => o,
        Err(e) => {
            tracing::error!(error = %e, "tasks for other nodes cannot be served");
            return;
        }
    };
    let mut last_round: Option<Instant> = None;
    serve_tube(
        uri,
        &tasks_tube(wd.nodename()),
        stop,
        |b, event| match event {
            TubeEvent::Tick => {
                if last_round.is_some_and(|t| t.elapsed() < RETRY_EVERY) {
                    return;
                }
                if let Err(e) = forward(b, wd, &mut store, &me) {
                    tracing::warn!(error = %e, "tasks for other nodes not sent yet");
                }
                for row in store.unreplied().unwrap_or_default() {
                    if let Err(e) = reply(b, wd, &mut store, &row) {
                        tracing::warn!(task = row.id, error = %e, "result not sent yet");
                        break;
                    }
                }
                settle_dead(wd, &mut store, &reg, lease_time);
                last_round = Some(Instant::now());
            }
            TubeEvent::Job(job) => match receive_result(wd, &mut store, &job.body) {
                Ok(settled) => {
                    let _ = b.delete(job.id);
                    // A task after this one may now be sent.
                    if settled.is_some() {
                        last_round = None;
                    }
                }
                Err(Error::BadValue { .. }) => {
                    tracing::warn!(job = %job.id, "a malformed result on the task tube; buried");
                    let _ = b.bury(job.id, 1000);
                }
                // The store is busy or broken: leave the job to come back.
                Err(e) => {
                    tracing::warn!(job = %job.id, error = %e, "cannot record a result");
                    let _ = b.release(job.id, 100, Duration::from_secs(1));
                }
            },
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(state: &str) -> NodeReply {
        NodeReply::TaskResult(TaskResult {
            task: 4,
            state: state.into(),
            exit_code: Some(0),
            reason: None,
            output: "ok\n".into(),
        })
    }

    #[test]
    fn a_final_result_settles_its_task_and_a_refusal_fails_it_without_a_run() {
        let s = settlement(result("done")).expect("settles");
        assert_eq!((s.state, s.code), (TaskState::Done, Some(0)));
        assert_eq!(s.there, "as task 4 there");
        assert_eq!(s.output, "ok\n");
        let refused = settlement(NodeReply::Error {
            code: exit::USAGE,
            message: "a task cannot run `daemon`".into(),
        })
        .expect("settles");
        assert_eq!((refused.state, refused.code), (TaskState::Failed, Some(2)));
        assert!(refused.there.starts_with("refused there"));
    }

    #[test]
    fn a_result_that_is_not_final_or_not_a_result_is_refused() {
        assert!(settlement(result("running")).is_err());
        assert!(settlement(result("pending")).is_err());
        assert!(settlement(NodeReply::MigrateAbort { aborted: true }).is_err());
    }
}
