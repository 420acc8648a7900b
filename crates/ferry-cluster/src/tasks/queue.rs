//! The daemon's side of the task queue: settle tasks whose runner is gone,
//! claim eligible local tasks up to the limit, and start one runner
//! (`ferry task mode=run id=N run=K`, this very binary, never a shell) per
//! claimed task, its stdout and stderr appended to `var/log/tasks/<id>.log`
//! (mode 0600).
//!
//! The runner records its own result, so a task outlives its daemon: a
//! daemon killed mid-task leaves the runner to finish, and the next daemon
//! never runs it again. A runner that vanished without a result is found
//! by pid and start time (here at the next tick, or by any daemon's
//! recovery) and the task becomes `interrupted` (or `pending` again when
//! it is retryable).

use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use ferry_core::task::{Claim, Claimer, TaskStore};
use ferry_core::{Error, Result, Workdir};

use super::log;
use crate::context::error_chain;

/// How often running tasks of vanished runners are looked for.
const RECOVER_EVERY: Duration = Duration::from_secs(1);

/// One runner this daemon started.
#[derive(Debug)]
struct Runner {
    id: u64,
    run: u32,
    child: Child,
}

/// The task queue as one daemon runs it.
#[derive(Debug)]
pub struct Queue {
    wd: Workdir,
    store: TaskStore,
    me: Claimer,
    limit: usize,
    exe: PathBuf,
    runners: Vec<Runner>,
    last_recover: Option<Instant>,
}

impl Queue {
    /// Open the queue for a daemon that runs at most `limit` tasks at once.
    pub fn open(wd: &Workdir, limit: usize) -> Result<Queue> {
        let exe = std::env::current_exe()
            .map_err(Error::io("cannot find the ferry binary", "/proc/self/exe"))?;
        Ok(Queue {
            wd: wd.clone(),
            store: TaskStore::open(&wd.db_dir())?,
            me: Claimer::of_this_process()?,
            limit,
            exe,
            runners: Vec::new(),
            last_recover: None,
        })
    }

    /// How many runners of this daemon are still running.
    pub fn running(&self) -> usize {
        self.runners.len()
    }

    /// One round: reap finished runners, settle tasks of vanished runners
    /// (at start and every `RECOVER_EVERY`), then, when `claim`, claim
    /// and start tasks up to the limit.
    pub fn tick(&mut self, claim: bool) -> Result<()> {
        self.reap();
        if self
            .last_recover
            .is_none_or(|t| t.elapsed() >= RECOVER_EVERY)
        {
            for (id, state) in self.store.recover(self.wd.nodename())? {
                tracing::warn!(task = id, state = state.as_str(), "task's runner vanished");
                log::remove_if_flushed(&self.wd, &self.store, id);
            }
            self.last_recover = Some(Instant::now());
        }
        while claim && self.runners.len() < self.limit {
            let Some(c) = self.store.claim(self.wd.nodename(), &self.me)? else {
                break;
            };
            self.start(c);
        }
        Ok(())
    }

    /// Start the runner of a claimed task. When it cannot start (no log, no
    /// process), the task fails with the reason; the daemon goes on.
    fn start(&mut self, c: Claim) {
        tracing::info!(task = c.id, run = c.run, "starting task");
        let spawned = log::open(&self.wd, c.id).and_then(|out| {
            let err = out.try_clone().map_err(Error::io(
                "cannot open the task log",
                log::path(&self.wd, c.id),
            ))?;
            std::process::Command::new(&self.exe)
                .arg("--workdir")
                .arg(self.wd.root())
                .arg("task")
                .arg("mode=run")
                .arg(format!("id={}", c.id))
                .arg(format!("run={}", c.run))
                .env_remove("workdir")
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err)
                .spawn()
                .map_err(Error::io("cannot start the task runner", &self.exe))
        });
        match spawned {
            Ok(child) => self.runners.push(Runner {
                id: c.id,
                run: c.run,
                child,
            }),
            Err(e) => {
                let why = error_chain(&e);
                tracing::error!(task = c.id, error = %why, "task not started");
                if let Err(e) = self.store.fail_unstarted(c.id, c.run, &why) {
                    tracing::error!(task = c.id, error = %e, "cannot record the failure");
                }
            }
        }
    }

    /// Reap runners that exited; one that recorded no result (it died, or
    /// failed before the command ran) settles its task here.
    fn reap(&mut self) {
        let mut i = 0;
        while i < self.runners.len() {
            let status = match self.runners[i].child.try_wait() {
                Ok(None) => {
                    i += 1;
                    continue;
                }
                Ok(Some(status)) => status.to_string(),
                Err(e) => format!("cannot be waited for: {e}"),
            };
            let r = self.runners.swap_remove(i);
            let why = format!("its runner ended ({status}) without a result");
            match self.store.end_unrecorded(r.id, r.run, &why) {
                Ok(Some(state)) => {
                    tracing::warn!(task = r.id, state = state.as_str(), %why, "task settled");
                    log::remove_if_flushed(&self.wd, &self.store, r.id);
                }
                Ok(None) => {}
                Err(e) => tracing::error!(task = r.id, error = %e, "cannot settle the task"),
            }
        }
    }
}
