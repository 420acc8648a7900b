//! `task` and `taskls`: the local task queue (CBSD's `task`, DESIGN §4).
//! The daemon's side (claiming and starting runners) is in `queue.rs`;
//! `task mode=run` is the runner itself.

use std::io::Write;
use std::time::{Duration, Instant, SystemTime};

use ferry_api::command::{TaskArgs, TaskAutoflush, TaskMode};
use ferry_api::{exit, Command, Outcome};
use ferry_core::registry::Registry;
use ferry_core::task::{self, Autoflush, CancelStep, NewTask, TaskRow, TaskStore};
use ferry_core::{sys, Error, Jname, Result, Workdir};
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
    "request",
    "origin",
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
    crate::cluster::required_uri(wd)?;
    Ok(true)
}

/// Whether `words` is a command a task may run: parsed by the command
/// line's own parser, and not the queue's own commands.
pub fn check_words(words: &[String]) -> Result<()> {
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
    Ok(())
}

fn submit(ctx: &Context, a: &TaskArgs) -> Result<Outcome> {
    let words = &a.cmd;
    check_words(words)?;
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
        if let Err(e) = crate::remote::send_now(&wd, &mut store) {
            tracing::info!(task = id, error = %e, "left for the daemon to send");
        }
    }
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
        "request": t.request,
        "origin": t.origin,
    })
}

/// Cancel a task. A running one is stopped here, by the cancelling
/// command: its runner leads its own session, and every process of that
/// session (the runner and the hooks it started) gets SIGTERM, then
/// SIGKILL after [`CANCEL_GRACE`]. The runner is named by pid and start
/// time, so a recycled pid is never signalled.
fn cancel(ctx: &Context, id: u64) -> Result<Outcome> {
    let wd = Workdir::open(&ctx.workdir)?;
    cancel_in(&wd, id).map(Outcome::message)
}

/// Cancel task `id` of `wd`; returns what happened. A task sent to another
/// node is cancelled there, and its result comes back as any other.
pub(crate) fn cancel_in(wd: &Workdir, id: u64) -> Result<String> {
    let mut store = TaskStore::open(&wd.db_dir())?;
    let (run, runner) = match store.request_cancel(id)? {
        CancelStep::Cancelled => {
            remove_log_if_flushed(wd, &store, id);
            return Ok(format!("task {id} cancelled"));
        }
        CancelStep::Running { run, runner } => (run, runner),
    };
    if let Some((pid, start)) = runner {
        stop_runner(pid, start);
        let settled = store.end_unrecorded(id, run, "cancelled while running")?;
        remove_log_if_flushed(wd, &store, id);
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
        crate::remote::send_cancel(wd, &row)?;
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
    // A task from another node: its result goes back now.
    crate::remote::reply_now(&wd, &mut store, id);
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
