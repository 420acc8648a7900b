//! `task` and `taskls`: the local task queue (CBSD's `task`, DESIGN §4).
//! The daemon's side (claiming and starting runners) is in `queue.rs`;
//! `task mode=run` is the runner itself.

use std::io::Write;
use std::time::{Duration, Instant, SystemTime};

use ferry_api::command::{TaskArgs, TaskAutoflush, TaskMode};
use ferry_api::{exit, Command, Outcome};
use ferry_core::task::{self, Autoflush, CancelStep, NewTask, TaskRow, TaskStore};
use ferry_core::{sys, Error, Result, Workdir};
use nix::sys::signal::Signal;

use crate::{dispatch, error_chain, Context};

/// How long a cancelled runner may take to end after SIGTERM before its
/// whole session gets SIGKILL.
pub const CANCEL_GRACE: Duration = Duration::from_secs(10);

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
];

/// Commands a task may not run: the queue's own and the daemon.
const NOT_QUEUEABLE: &[&str] = &["task", "taskls", "daemon"];

fn open(ctx: &Context) -> Result<(Workdir, TaskStore)> {
    let wd = Workdir::open(&ctx.workdir)?;
    let store = TaskStore::open(&wd.db_dir())?;
    Ok((wd, store))
}

pub fn run(ctx: &Context, a: TaskArgs) -> Result<Outcome> {
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
            list(ctx, a.display.as_deref())
        }
        TaskMode::Cancel => cancel(ctx, required_id(a.id, "cancel")?),
        TaskMode::Flush => flush(ctx, a.id),
        TaskMode::Run => {
            let run = a
                .run
                .ok_or_else(|| Error::bad_value("run", "", "required with mode=run"))?;
            run_claimed(ctx, required_id(a.id, "run")?, run)
        }
    }
}

fn required_id(id: Option<u64>, mode: &str) -> Result<u64> {
    id.ok_or_else(|| Error::bad_value("id", "", format!("required with mode={mode}")))
}

/// The seam to node membership: whether `node` may be named as a task's
/// target. Until `node mode=add` keeps a table of nodes, the only node
/// known is this one; tasks for other nodes are refused here and, once
/// nodes are known, stored here for the broker to deliver.
pub fn check_node(wd: &Workdir, node: &str) -> Result<()> {
    if node == wd.nodename() {
        Ok(())
    } else {
        Err(Error::UnknownNode(
            node.to_owned(),
            wd.nodename().to_owned(),
        ))
    }
}

fn submit(ctx: &Context, a: &TaskArgs) -> Result<Outcome> {
    let words = &a.cmd;
    let joined = show(words);
    let Some(first) = words.first() else {
        return Err(Error::bad_value(
            "cmd",
            "",
            "mode=new needs the ferry command to queue, e.g. `task mode=new jstart jname=web1`",
        ));
    };
    if NOT_QUEUEABLE.contains(&first.as_str()) {
        return Err(Error::bad_value(
            "cmd",
            &joined,
            format!("a task cannot run `{first}`"),
        ));
    }
    Command::parse_words(words).map_err(|e| Error::bad_value("cmd", &joined, e.to_string()))?;
    let (wd, mut store) = open(ctx)?;
    if let Some(node) = &a.node {
        check_node(&wd, node.as_str())?;
    }
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
    Ok(Outcome::message(id.to_string()))
}

/// `task mode=list` and `taskls`.
pub fn list(ctx: &Context, display: Option<&str>) -> Result<Outcome> {
    let (_, store) = open(ctx)?;
    let mut l = crate::listing(COLUMNS, display)?;
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
        "command": show(&t.words),
        "reason": t.reason,
        "log": t.log,
    })
}

/// Cancel a task. A running one is stopped here, by the cancelling
/// command: its runner leads its own session, and every process of that
/// session (the runner and the hooks it started) gets SIGTERM, then
/// SIGKILL after [`CANCEL_GRACE`]. The runner is named by pid and start
/// time, so a recycled pid is never signalled.
fn cancel(ctx: &Context, id: u64) -> Result<Outcome> {
    let (wd, mut store) = open(ctx)?;
    let (run, runner) = match store.request_cancel(id)? {
        CancelStep::Cancelled => {
            remove_log_if_flushed(&wd, &store, id);
            return Ok(Outcome::message(format!("task {id} cancelled")));
        }
        CancelStep::Running { run, runner } => (run, runner),
    };
    if let Some((pid, start)) = runner {
        stop_runner(pid, start);
        let settled = store.end_unrecorded(id, run, "cancelled while running")?;
        remove_log_if_flushed(&wd, &store, id);
        return Ok(Outcome::message(match settled {
            Some(_) => format!("task {id} cancelled while running"),
            None => format!(
                "task {id} finished before it could be cancelled: {}",
                state_of(&store, id)
            ),
        }));
    }
    // Claimed, but its runner has not started the command: it will see the
    // cancel and not start it (or, if its daemon died, recovery settles it).
    let until = Instant::now() + CANCEL_GRACE;
    while Instant::now() < until && state_of(&store, id) == "running" {
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(Outcome::message(format!(
        "task {id} cancelled before it ran (now {})",
        state_of(&store, id)
    )))
}

fn stop_runner(pid: i32, start: u64) {
    if !sys::is_alive(pid, start) {
        return;
    }
    // Only a runner that leads its own session has its session signalled.
    if sys::proc_stat(pid).is_some_and(|p| p.session == pid) {
        sys::signal_session(pid, Signal::SIGTERM);
        if !sys::wait_session_gone(pid, CANCEL_GRACE) {
            sys::signal_session(pid, Signal::SIGKILL);
            sys::wait_session_gone(pid, Duration::from_secs(5));
        }
    } else {
        sys::signal(pid, start, Signal::SIGTERM);
        if !sys::wait_gone(pid, Some(start), CANCEL_GRACE) {
            sys::signal(pid, start, Signal::SIGKILL);
            sys::wait_gone(pid, Some(start), Duration::from_secs(5));
        }
    }
}

fn state_of(store: &TaskStore, id: u64) -> &'static str {
    match store.get(id) {
        Ok(Some(t)) => t.state.as_str(),
        Ok(None) => "flushed",
        Err(_) => "unknown",
    }
}

/// `task mode=flush`: remove the records of finished tasks (all, or `id`)
/// and their logs. Pending and running tasks stay.
fn flush(ctx: &Context, id: Option<u64>) -> Result<Outcome> {
    let (wd, mut store) = open(ctx)?;
    let ids = store.flush(id)?;
    for id in &ids {
        remove_log(&wd, *id);
    }
    Ok(Outcome::message(format!(
        "{} finished task record(s) flushed",
        ids.len()
    )))
}

/// Remove the log of a task whose record is gone (autoflush).
pub(crate) fn remove_log_if_flushed(wd: &Workdir, store: &TaskStore, id: u64) {
    if matches!(store.get(id), Ok(None)) {
        remove_log(wd, id);
    }
}

fn remove_log(wd: &Workdir, id: u64) {
    let _ = std::fs::remove_file(wd.root().join(task::log_rel(id)));
}

/// `task mode=run`: the runner of one claimed task. It records itself,
/// runs the command in-process through the dispatcher (its output goes to
/// the task's log, which the daemon made its stdout and stderr), and
/// records the exit code itself, so the result survives the daemon.
fn run_claimed(ctx: &Context, id: u64, run: u32) -> Result<Outcome> {
    let (wd, mut store) = open(ctx)?;
    // Its own session, so that a cancel reaches whatever it starts.
    let _ = nix::unistd::setsid();
    let me = std::process::id() as i32;
    let start = sys::proc_stat(me)
        .map(|p| p.starttime)
        .ok_or_else(|| Error::Failed("cannot read this process's start time".into()))?;
    if !store.begin_run(id, run, me, start)? {
        return Err(Error::Refused(format!(
            "task {id} is not claimed for run {run} (it is {})",
            state_of(&store, id)
        )));
    }
    let words = store.get(id)?.ok_or(Error::TaskNotFound(id))?.words;
    let stamp = || sys::utc_timestamp(SystemTime::now());
    println!(
        "--- {} task {id} run {run} pid {me}: {}",
        stamp(),
        show(&words)
    );
    let code = match Command::parse_words(&words) {
        Ok(cmd) if !NOT_QUEUEABLE.contains(&cmd.name()) => match dispatch(ctx, cmd) {
            Ok(outcome) => {
                print_outcome(&outcome);
                outcome.exit_code()
            }
            Err(e) => {
                eprintln!("ferry {}: {}", words[0], error_chain(&e));
                exit::for_kind(e.kind())
            }
        },
        Ok(_) => {
            eprintln!("ferry: a task cannot run `{}`", words[0]);
            exit::USAGE
        }
        Err(e) => {
            eprintln!("ferry: {e}");
            exit::USAGE
        }
    };
    println!("--- {} task {id} run {run} exit {code}", stamp());
    let _ = std::io::stdout().flush();
    store.finish(id, run, code)?;
    remove_log_if_flushed(&wd, &store, id);
    Ok(Outcome::Exited { status: code })
}

/// A command line for people: words joined by spaces, quoted only where
/// a word would otherwise read wrongly.
fn show(words: &[String]) -> String {
    let plain = |w: &str| {
        !w.is_empty()
            && !w
                .chars()
                .any(|c| c.is_whitespace() || "'\"\\$`;&|<>()*?[]#~".contains(c))
    };
    words
        .iter()
        .map(|w| {
            if plain(w) {
                w.clone()
            } else {
                shell_words::quote(w).into_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The outcome as the CLI would print it, into the task's log.
fn print_outcome(o: &Outcome) {
    match o {
        Outcome::Message { message } => println!("{message}"),
        Outcome::Listing(l) => print!("{}", l.to_text(true)),
        Outcome::PerEnv { results } => {
            for r in results {
                println!("{}: {}", r.jname, r.message);
            }
        }
        Outcome::Exited { .. } => {}
    }
}
