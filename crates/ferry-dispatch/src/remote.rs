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

use std::io::{Read, Seek, SeekFrom, Write};
use std::sync::atomic::AtomicBool;
use std::sync::mpsc::Sender;
use std::time::{Duration, Instant, SystemTime};

use ferry_broker::{Broker, BrokerUri};
use ferry_core::node::{self, Liveness};
use ferry_core::registry::Registry;
use ferry_core::task::{Accepted, Claimer, RemoteClaim, TaskRow, TaskState, TaskStore};
use ferry_core::{sys, Error, Result, Workdir};

use crate::cluster::{self, serve_tube, Answer, Request, TaskRequest, TaskResult, TubeEvent};

/// How much of a task's log travels back with its result.
const OUTPUT_TAIL: u64 = 8 * 1024;

/// How often the daemon puts what was not put and looks for dead targets.
const RETRY_EVERY: Duration = Duration::from_secs(1);

/// The tube a node's task results arrive on.
pub fn tasks_tube(node: &str) -> String {
    format!("ferry.tasks.{node}")
}

// ---- the asking node ----

/// Put the request of one claimed task on its target's tube.
fn send(b: &mut impl Broker, wd: &Workdir, store: &mut TaskStore, c: &RemoteClaim) -> Result<()> {
    let req = Request {
        kind: "task".into(),
        id: c.request.clone(),
        from: wd.nodename().to_owned(),
        reply: tasks_tube(wd.nodename()),
        task: Some(TaskRequest {
            words: c.words.clone(),
            retry: c.retry,
        }),
        migrate: None,
    };
    let body = serde_json::to_vec(&req).map_err(|e| Error::Failed(e.to_string()))?;
    b.use_tube(&cluster::node_tube(&c.node))
        .map_err(cluster::broker_err("broker"))?;
    // An ambiguous put is left unsent: putting it again is harmless, the
    // target stores a request id once.
    b.put(&body, 100, Duration::ZERO, Duration::from_secs(30))
        .map_err(cluster::broker_err("cannot send the task"))?;
    store.mark_sent(c.id, c.run)?;
    log_line(
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
    let uri = cluster::required_uri(wd)?;
    let mut b = cluster::connect(&uri, Duration::from_secs(1))?;
    forward(&mut b, wd, store, &Claimer::of_this_process()?)
}

/// Record a result that arrived on this node's task tube. Returns the
/// task it settled, if it was still waiting for that result.
pub fn receive_result(wd: &Workdir, store: &mut TaskStore, body: &[u8]) -> Result<Option<u64>> {
    let a: Answer = serde_json::from_slice(body)
        .map_err(|e| Error::bad_value("task result", "", e.to_string()))?;
    let (state, code, reason, output) = match &a.task {
        Some(t) => (
            TaskState::parse(&t.state)
                .filter(|s| s.is_final())
                .ok_or_else(|| Error::bad_value("task result state", &t.state, "not final"))?,
            t.exit_code,
            t.reason.clone().unwrap_or_default(),
            Some(t),
        ),
        // Refused there (a command it cannot run): it never ran.
        None => (TaskState::Failed, Some(a.code), a.message.clone(), None),
    };
    let row = store.by_request(&a.id)?;
    let settled = store.settle_remote(&a.id, state, code, &reason)?;
    if let (Some(id), Some(row)) = (settled, row) {
        let there = match output {
            Some(t) => format!("as task {} there", t.task),
            None => format!("refused there: {}", a.message),
        };
        log_line(
            wd,
            id,
            &format!(
                "task {id} run {} ended on node {} {there}: {} (exit {})",
                row.runs,
                row.node.as_deref().unwrap_or("?"),
                state.as_str(),
                code.map_or("-".into(), |c| c.to_string())
            ),
        );
        if let Some(t) = output.filter(|t| !t.output.is_empty()) {
            append_log(wd, id, t.output.as_bytes());
        }
        crate::task::remove_log_if_flushed(wd, store, id);
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
                log_line(wd, row.id, &why);
                crate::task::remove_log_if_flushed(wd, store, row.id);
            }
            Ok(None) => {}
            Err(e) => tracing::error!(task = row.id, error = %e, "cannot settle the task"),
        }
    }
}

/// Ask the node running task `row` (sent from here) to cancel it. Its
/// result (`cancelled`, or how it ended first) comes back as any other.
pub fn send_cancel(wd: &Workdir, row: &TaskRow) -> Result<()> {
    let (Some(node), Some(request)) = (row.node.as_deref(), row.request.as_deref()) else {
        return Err(Error::Failed(format!("task {} was not sent", row.id)));
    };
    let uri = cluster::required_uri(wd)?;
    let mut b = cluster::connect(&uri, Duration::from_secs(2))?;
    let req = Request {
        kind: "cancel".into(),
        id: request.to_owned(),
        from: wd.nodename().to_owned(),
        reply: tasks_tube(wd.nodename()),
        task: None,
        migrate: None,
    };
    let body = serde_json::to_vec(&req).map_err(|e| Error::Failed(e.to_string()))?;
    b.use_tube(&cluster::node_tube(node))
        .map_err(cluster::broker_err("broker"))?;
    b.put(&body, 50, Duration::ZERO, Duration::from_secs(30))
        .map_err(cluster::broker_err("cannot send the cancel"))?;
    Ok(())
}

// ---- the target node ----

/// A `task` request on this node's tube: store it (once), wake the queue.
/// A request seen before whose task has ended gets its result again.
pub fn receive(
    wd: &Workdir,
    b: &mut impl Broker,
    req: &Request,
    wake: &Sender<()>,
) -> std::result::Result<(), String> {
    let Some(task) = &req.task else {
        return Err("a task request without a task".into());
    };
    if let Err(why) = crate::task::check_words(&task.words) {
        tracing::warn!(request = %req.id, from = %req.from, %why, "task refused");
        let a = Answer {
            code: ferry_api::exit::USAGE,
            message: why.to_string(),
            ..Answer::to(&req.id)
        };
        return cluster::put_answer(b, &req.reply, &a);
    }
    let mut store = TaskStore::open(&wd.db_dir()).map_err(|e| e.to_string())?;
    match store
        .accept(wd.nodename(), &req.id, &req.reply, &task.words, task.retry)
        .map_err(|e| e.to_string())?
    {
        Accepted::New(id) => {
            tracing::info!(task = id, request = %req.id, from = %req.from, "task received");
            let _ = wake.send(());
        }
        Accepted::Again(row) if row.state.is_final() => {
            reply(b, wd, &mut store, &row).map_err(|e| e.to_string())?;
        }
        Accepted::Again(_) => {}
    }
    Ok(())
}

/// A `cancel` request: cancel the task that request `req.id` brought,
/// on a thread of its own (stopping a runner takes up to its grace time).
pub fn cancel_received(wd: &Workdir, req: &Request) -> std::result::Result<(), String> {
    let store = TaskStore::open(&wd.db_dir()).map_err(|e| e.to_string())?;
    let Some(row) = store.by_origin(&req.id).map_err(|e| e.to_string())? else {
        tracing::warn!(request = %req.id, "cancel of a task never received; ignored");
        return Ok(());
    };
    if row.state.is_final() {
        return Ok(());
    }
    let wd = wd.clone();
    std::thread::spawn(move || match crate::task::cancel_in(&wd, row.id) {
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
    let a = Answer {
        task: Some(TaskResult {
            task: row.id,
            state: row.state.as_str().to_owned(),
            exit_code: row.exit_code,
            reason: row.reason.clone(),
            output: log_tail(wd, row),
        }),
        ..Answer::to(origin)
    };
    cluster::put_answer(b, tube, &a).map_err(Error::Failed)?;
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
        let uri = cluster::required_uri(wd)?;
        let mut b = cluster::connect(&uri, Duration::from_secs(1))?;
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

// ---- logs ----

fn log_line(wd: &Workdir, id: u64, line: &str) {
    let stamp = sys::utc_timestamp(SystemTime::now());
    append_log(wd, id, format!("--- {stamp} {line}\n").as_bytes());
}

fn append_log(wd: &Workdir, id: u64, bytes: &[u8]) {
    match crate::queue::open_log(wd, id) {
        Ok(mut f) => {
            let _ = f.write_all(bytes);
        }
        Err(e) => tracing::warn!(task = id, error = %e, "cannot write the task log"),
    }
}

/// The last [`OUTPUT_TAIL`] bytes of a task's log (valid UTF-8, lossy).
fn log_tail(wd: &Workdir, row: &TaskRow) -> String {
    let Some(rel) = &row.log else {
        return String::new();
    };
    let Ok(mut f) = std::fs::File::open(wd.root().join(rel)) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(OUTPUT_TAIL)));
    let mut buf = Vec::new();
    let _ = f.take(OUTPUT_TAIL).read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}
