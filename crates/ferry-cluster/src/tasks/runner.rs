//! `task mode=run`: the runner of one claimed task. It records itself,
//! runs the command in-process through the dispatcher, writes what the
//! command line would have printed to the task's log, and records the
//! exit code itself, so the result survives the daemon.

use std::io::Write;

use ferry_api::{exit, Outcome};
use ferry_core::task::TaskStore;
use ferry_core::{sys, Error, Result, Workdir};

use super::{cancel, log, remote, words, Execute};
use crate::context::{error_chain, Context};

pub(crate) fn run(ctx: &Context, id: u64, run: u32, execute: Execute) -> Result<Outcome> {
    let wd = Workdir::open(&ctx.workdir)?;
    let mut store = TaskStore::open(&wd.db_dir())?;
    // Its own session, so that a cancel reaches whatever it starts.
    let _ = nix::unistd::setsid();
    let me = std::process::id() as i32;
    let start = sys::proc_stat(me)
        .map(|p| p.starttime)
        .ok_or_else(|| Error::Failed("cannot read this process's start time".into()))?;
    if !store.begin_run(id, run, me, start)? {
        return Err(Error::Refused(format!(
            "task {id} is not claimed for run {run} (it is {})",
            cancel::state_of(&store, id)
        )));
    }
    let words = store.get(id)?.ok_or(Error::TaskNotFound(id))?.words;
    let mut out = log::open(&wd, id)?;
    let _ = out.write_all(
        log::stamped(&format!(
            "task {id} run {run} pid {me}: {}",
            words::show(&words)
        ))
        .as_bytes(),
    );
    let (code, text) = match words::check(&words) {
        Ok(cmd) => match execute(ctx, cmd) {
            Ok(outcome) => (outcome.exit_code(), outcome.to_text()),
            Err(e) => (
                exit::for_kind(e.kind()),
                format!("ferry {}: {}", words[0], error_chain(&e)),
            ),
        },
        Err(e) => (exit::USAGE, format!("ferry: {}", error_chain(&e))),
    };
    if !text.is_empty() {
        let _ = writeln!(out, "{text}");
    }
    let _ = out.write_all(log::stamped(&format!("task {id} run {run} exit {code}")).as_bytes());
    drop(out);
    store.finish(id, run, code)?;
    log::remove_if_flushed(&wd, &store, id);
    // A task from another node: its result goes back now.
    remote::reply_now(&wd, &mut store, id);
    Ok(Outcome::Exited { status: code })
}
