//! A task record and its states.

use serde::Serialize;

use crate::error::{Error, Result};

/// The life of a task. `pending` → `running` → one of the final states;
/// a retryable `running` task whose runner vanished goes back to
/// `pending`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    /// Waiting to be claimed (and for its `after` task to be done).
    Pending,
    /// Claimed by a daemon; its runner runs the command.
    Running,
    /// The command exited 0.
    Done,
    /// The command exited non-zero (or its runner could not start).
    Failed,
    /// Cancelled by `task mode=cancel`, or because its `after` task did
    /// not succeed.
    Cancelled,
    /// Its runner vanished without recording a result.
    Interrupted,
}

impl TaskState {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Pending => "pending",
            TaskState::Running => "running",
            TaskState::Done => "done",
            TaskState::Failed => "failed",
            TaskState::Cancelled => "cancelled",
            TaskState::Interrupted => "interrupted",
        }
    }

    pub fn parse(s: &str) -> Option<TaskState> {
        Some(match s {
            "pending" => TaskState::Pending,
            "running" => TaskState::Running,
            "done" => TaskState::Done,
            "failed" => TaskState::Failed,
            "cancelled" => TaskState::Cancelled,
            "interrupted" => TaskState::Interrupted,
            _ => return None,
        })
    }

    /// Whether the task has finished for good (nothing will change it).
    pub fn is_final(self) -> bool {
        match self {
            TaskState::Pending | TaskState::Running => false,
            TaskState::Done | TaskState::Failed | TaskState::Cancelled | TaskState::Interrupted => {
                true
            }
        }
    }
}

/// CBSD's `autoflush`: what happens to a record once its task finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[repr(u8)]
pub enum Autoflush {
    /// 0: keep the record until `task mode=flush`.
    Keep = 0,
    /// 1: remove it when the task is `done`; keep failures to look at.
    OnSuccess = 1,
    /// 2: remove it whatever the task's final state.
    Always = 2,
}

impl Autoflush {
    /// From the stored number (unknown numbers keep the record).
    pub fn from_u8(n: u8) -> Autoflush {
        match n {
            1 => Autoflush::OnSuccess,
            2 => Autoflush::Always,
            _ => Autoflush::Keep,
        }
    }

    /// Whether a task that ended in `state` loses its record.
    pub fn removes(self, state: TaskState) -> bool {
        match self {
            Autoflush::Keep => false,
            Autoflush::OnSuccess => state == TaskState::Done,
            Autoflush::Always => state.is_final(),
        }
    }
}

/// Who claimed a task: the daemon instance and its process, named by pid
/// and start time so that its liveness can be checked without clocks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Claimer {
    /// A random id of one daemon run.
    pub instance: String,
    pub pid: i32,
    /// Start time of `pid` in clock ticks since boot.
    pub start: u64,
}

/// A task to store.
impl Claimer {
    /// This process, under a fresh instance id.
    pub fn of_this_process() -> Result<Claimer> {
        let pid = std::process::id() as i32;
        let start = crate::sys::proc_stat(pid)
            .map(|p| p.starttime)
            .ok_or_else(|| Error::Failed("cannot read this process's start time".into()))?;
        Ok(Claimer {
            instance: uuid::Uuid::new_v4().to_string(),
            pid,
            start,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTask {
    /// The node to run on; `None` is this node.
    pub node: Option<String>,
    /// A task that must be `done` first.
    pub after: Option<u64>,
    pub autoflush: Autoflush,
    /// Whether an interrupted run may be run again.
    pub retry: bool,
    /// The ferry command line, word by word (never a shell string).
    pub words: Vec<String>,
}

/// One stored task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TaskRow {
    pub id: u64,
    pub node: Option<String>,
    pub after: Option<u64>,
    pub autoflush: u8,
    pub retry: bool,
    pub words: Vec<String>,
    pub state: TaskState,
    pub exit_code: Option<i32>,
    pub reason: Option<String>,
    /// How many runs were claimed.
    pub runs: u32,
    pub created: String,
    pub started: Option<String>,
    pub finished: Option<String>,
    /// The log, relative to the workdir.
    pub log: Option<String>,
    pub claimer: Option<Claimer>,
    /// The runner's pid and start time, once it recorded itself.
    pub runner: Option<(i32, u64)>,
    pub cancel_requested: bool,
    /// For a task sent to another node: the id of the request that
    /// carried it (one per run), and whether the request was put.
    pub request: Option<String>,
    pub sent: bool,
    /// For a task received from another node: the request id it came
    /// with (a redelivered request is recognised by it), the tube its
    /// result goes to, and whether the result was put there.
    pub origin: Option<String>,
    pub reply: Option<String>,
    pub replied: bool,
}

pub(super) fn from_sql(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<TaskRow>> {
    let command: String = r.get(5)?;
    let state: String = r.get(6)?;
    let claimer = match (
        r.get::<_, Option<String>>(14)?,
        r.get::<_, Option<i32>>(15)?,
        r.get::<_, Option<i64>>(16)?,
    ) {
        (Some(instance), Some(pid), Some(start)) => Some(Claimer {
            instance,
            pid,
            start: start as u64,
        }),
        _ => None,
    };
    let runner = match (r.get::<_, Option<i32>>(17)?, r.get::<_, Option<i64>>(18)?) {
        (Some(pid), Some(start)) => Some((pid, start as u64)),
        _ => None,
    };
    let words = serde_json::from_str(&command)
        .map_err(|e| Error::bad_value("command", &command, e.to_string()));
    let state = TaskState::parse(&state)
        .ok_or_else(|| Error::bad_value("state", &state, "unknown task state"));
    let (words, state) = match (words, state) {
        (Ok(w), Ok(s)) => (w, s),
        (Err(e), _) | (_, Err(e)) => return Ok(Err(e)),
    };
    Ok(Ok(TaskRow {
        id: r.get(0)?,
        node: r.get(1)?,
        after: r.get(2)?,
        autoflush: r.get(3)?,
        retry: r.get(4)?,
        words,
        state,
        exit_code: r.get(7)?,
        reason: r.get(8)?,
        runs: r.get(9)?,
        created: r.get(10)?,
        started: r.get(11)?,
        finished: r.get(12)?,
        log: r.get(13)?,
        claimer,
        runner,
        cancel_requested: r.get(19)?,
        request: r.get(20)?,
        sent: r.get(21)?,
        origin: r.get(22)?,
        reply: r.get(23)?,
        replied: r.get(24)?,
    }))
}
