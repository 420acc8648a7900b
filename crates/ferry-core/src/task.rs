//! The node-local task queue (CBSD's `task` table, DESIGN §4/§8): deferred
//! ferry commands that `ferry daemon` runs, stored in SQLite under `var/db`
//! (never on shared storage).
//!
//! Every change of state is one transaction, and every transition is
//! guarded by the state (and the run number) it starts from, so that two
//! daemons, a runner and a `task mode=cancel` racing on one task agree on
//! one outcome:
//!
//! - [`TaskStore::claim`]: `pending` → `running`, recording the claimer
//!   (daemon instance, pid, start time) and bumping the run number, in one
//!   `BEGIN IMMEDIATE` transaction: a task is never claimed twice.
//! - [`TaskStore::begin_run`]: the runner records its own pid and start
//!   time; refused unless the claim of that run number still stands.
//! - [`TaskStore::finish`]: the runner records its exit code: `done` or
//!   `failed`.
//! - [`TaskStore::end_unrecorded`]: the runner is gone without a result:
//!   `interrupted`, `pending` again when retryable, or `cancelled` when a
//!   cancel was asked for.
//!
//! A task that ends in any state but `done` cancels the pending tasks
//! `after=` it, transitively, in the same transaction. So a pending task
//! whose `after` record is gone (flushed) waited for a task that succeeded.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension, Transaction, TransactionBehavior};

use crate::error::{Error, Result};
use crate::sys;

mod record;
mod remote;
mod settle;

use settle::{end, end_unrecorded_in, get_in, is_running, now, sql};

pub use record::{Autoflush, Claimer, NewTask, TaskRow, TaskState};
pub use remote::{Accepted, RemoteClaim};

/// How often a retryable task may run in all (its first run included).
pub const MAX_RUNS: u32 = 3;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS tasks (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    node             TEXT,
    after            INTEGER,
    autoflush        INTEGER NOT NULL DEFAULT 0,
    retry            INTEGER NOT NULL DEFAULT 0,
    command          TEXT NOT NULL,
    state            TEXT NOT NULL,
    exit_code        INTEGER,
    reason           TEXT,
    runs             INTEGER NOT NULL DEFAULT 0,
    created          TEXT NOT NULL,
    started          TEXT,
    finished         TEXT,
    log              TEXT,
    claimer          TEXT,
    claimer_pid      INTEGER,
    claimer_start    INTEGER,
    runner_pid       INTEGER,
    runner_start     INTEGER,
    cancel_requested INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS tasks_state ON tasks(state);
CREATE INDEX IF NOT EXISTS tasks_after ON tasks(after);
";

/// Columns added since the first schema, by `PRAGMA user_version`: the
/// node-to-node fields (1).
const MIGRATIONS: &[&str] = &["
ALTER TABLE tasks ADD COLUMN request TEXT;
ALTER TABLE tasks ADD COLUMN sent INTEGER NOT NULL DEFAULT 0;
ALTER TABLE tasks ADD COLUMN origin TEXT;
ALTER TABLE tasks ADD COLUMN reply TEXT;
ALTER TABLE tasks ADD COLUMN replied INTEGER NOT NULL DEFAULT 0;
CREATE UNIQUE INDEX tasks_request ON tasks(request) WHERE request IS NOT NULL;
CREATE UNIQUE INDEX tasks_origin ON tasks(origin) WHERE origin IS NOT NULL;
"];

const COLUMNS: &str = "id, node, after, autoflush, retry, command, state, exit_code, reason, \
     runs, created, started, finished, log, claimer, claimer_pid, claimer_start, runner_pid, \
     runner_start, cancel_requested, request, sent, origin, reply, replied";

/// What [`TaskStore::claim`] hands the daemon: the task to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub id: u64,
    /// The run number this claim is for (1 for the first run).
    pub run: u32,
    pub words: Vec<String>,
}

/// What [`TaskStore::request_cancel`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CancelStep {
    /// The task was pending and is now cancelled.
    Cancelled,
    /// The task is running: its runner (when it has recorded itself) must
    /// be stopped; the cancel is recorded and the runner will not start
    /// the command if it has not yet.
    Running {
        run: u32,
        runner: Option<(i32, u64)>,
    },
}

/// An open task store.
#[derive(Debug)]
pub struct TaskStore {
    conn: Connection,
    path: PathBuf,
}

impl TaskStore {
    /// Open (creating if needed) the task store in `db_dir`.
    pub fn open(db_dir: &Path) -> Result<TaskStore> {
        let path = db_dir.join("tasks.sqlite");
        let err = |source| Error::TaskStore {
            path: path.clone(),
            source,
        };
        let conn = Connection::open(&path).map_err(err)?;
        conn.busy_timeout(Duration::from_secs(30)).map_err(err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(err)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(err)?;
        conn.execute_batch(SCHEMA).map_err(err)?;
        let mut store = TaskStore { conn, path };
        store.migrate()?;
        Ok(store)
    }

    /// Bring an older store up to this schema, in one transaction (two
    /// processes opening it at once migrate it once).
    fn migrate(&mut self) -> Result<()> {
        let version: usize = self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(self.err())?;
        if version >= MIGRATIONS.len() {
            // Up to date: no write lock taken on every open.
            return Ok(());
        }
        self.write(|tx| {
            let version: usize = tx
                .query_row("PRAGMA user_version", [], |r| r.get(0))
                .map_err(sql)?;
            for m in MIGRATIONS.iter().skip(version) {
                tx.execute_batch(m).map_err(sql)?;
            }
            if version < MIGRATIONS.len() {
                tx.pragma_update(None, "user_version", MIGRATIONS.len())
                    .map_err(sql)?;
            }
            Ok(())
        })
    }

    fn err(&self) -> impl Fn(rusqlite::Error) -> Error + '_ {
        move |source| Error::TaskStore {
            path: self.path.clone(),
            source,
        }
    }

    /// Run `f` in one `BEGIN IMMEDIATE` transaction (the write lock is
    /// taken first, so what `f` reads cannot change before it writes).
    fn write<T>(&mut self, f: impl FnOnce(&Transaction<'_>) -> Result<T>) -> Result<T> {
        let path = self.path.clone();
        let err = move |source| Error::TaskStore {
            path: path.clone(),
            source,
        };
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(&err)?;
        let v = f(&tx)?;
        tx.commit().map_err(err)?;
        Ok(v)
    }

    /// Store a new task; returns its id. `after` must name a task that
    /// exists and has not ended in failure.
    pub fn submit(&mut self, t: &NewTask) -> Result<u64> {
        let words = serde_json::to_string(&t.words).map_err(Error::encode("a task's words"))?;
        self.write(|tx| {
            if let Some(after) = t.after {
                match get_in(tx, after)? {
                    None => return Err(Error::TaskNotFound(after)),
                    Some(a) if a.state.is_final() && a.state != TaskState::Done => {
                        return Err(Error::TaskState {
                            id: after,
                            state: a.state.as_str(),
                            action: "a task after it",
                            needs: "pending, running or done",
                        })
                    }
                    Some(_) => {}
                }
            }
            tx.execute(
                "INSERT INTO tasks (node, after, autoflush, retry, command, state, created)
                 VALUES (?1, ?2, ?3, ?4, ?5, 'pending', ?6)",
                params![t.node, t.after, t.autoflush as u8, t.retry, words, now()],
            )
            .map_err(sql)?;
            Ok(tx.last_insert_rowid() as u64)
        })
    }

    /// One task.
    pub fn get(&self, id: u64) -> Result<Option<TaskRow>> {
        get_in(&self.conn, id)
    }

    /// Every task, by id.
    pub fn list(&self) -> Result<Vec<TaskRow>> {
        self.select("1", &[])
    }

    /// The tasks matching `filter` (SQL over the table's columns, with
    /// `params`), by id.
    fn select(&self, filter: &str, params: &[&dyn rusqlite::ToSql]) -> Result<Vec<TaskRow>> {
        let mut stmt = self
            .conn
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM tasks WHERE {filter} ORDER BY id"
            ))
            .map_err(self.err())?;
        let rows = stmt
            .query_map(params, record::from_sql)
            .map_err(self.err())?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(self.err())?;
        rows.into_iter().collect()
    }

    /// Claim the oldest pending task that is to run on node `own` (no
    /// node, or `own`) and whose `after` task is done (or flushed after
    /// success). Tasks for other nodes are [`TaskStore::claim_remote`]'s.
    pub fn claim(&mut self, own: &str, by: &Claimer) -> Result<Option<Claim>> {
        self.write(|tx| Ok(claim_in(tx, own, false, by)?.map(|(c, _)| c)))
    }

    /// The runner of run `run` records itself. Refused (returns the state
    /// it found) unless that claim still stands and no cancel was asked
    /// for; a cancel asked for before the runner started ends the task
    /// `cancelled` here, and the command never runs.
    pub fn begin_run(&mut self, id: u64, run: u32, pid: i32, start: u64) -> Result<bool> {
        self.write(|tx| {
            let row = get_in(tx, id)?.ok_or(Error::TaskNotFound(id))?;
            if row.state != TaskState::Running || row.runs != run || row.runner.is_some() {
                return Ok(false);
            }
            if row.cancel_requested {
                end(
                    tx,
                    id,
                    TaskState::Cancelled,
                    None,
                    "cancelled before it ran",
                )?;
                return Ok(false);
            }
            tx.execute(
                "UPDATE tasks SET runner_pid = ?2, runner_start = ?3 WHERE id = ?1",
                params![id, pid, start as i64],
            )
            .map_err(sql)?;
            Ok(true)
        })
    }

    /// The runner of run `run` records the command's exit code: `done` on
    /// 0, else `failed`. Returns whether the record was still this run's
    /// to write (a cancel may have ended it first).
    pub fn finish(&mut self, id: u64, run: u32, code: i32) -> Result<bool> {
        let r = self.write(|tx| {
            if !is_running(tx, id, run)? {
                return Ok(None);
            }
            let state = if code == 0 {
                TaskState::Done
            } else {
                TaskState::Failed
            };
            let reason = (code != 0).then(|| format!("exit code {code}"));
            end(tx, id, state, Some(code), reason.as_deref().unwrap_or(""))
        })?;
        Ok(r.is_some())
    }

    /// Run `run` of a task ended without recording a result (its runner
    /// died, or could not start). A cancel asked for makes it `cancelled`;
    /// a retryable task with runs left goes back to `pending`; any other
    /// becomes `interrupted`. Returns the state written, if the record was
    /// still this run's.
    pub fn end_unrecorded(&mut self, id: u64, run: u32, why: &str) -> Result<Option<TaskState>> {
        self.write(|tx| end_unrecorded_in(tx, id, run, why))
    }

    /// A task that ends without running (its runner could not be started):
    /// `failed`, whatever its retry setting.
    pub fn fail_unstarted(&mut self, id: u64, run: u32, why: &str) -> Result<()> {
        self.write(|tx| {
            if is_running(tx, id, run)? {
                end(tx, id, TaskState::Failed, None, why)?;
            }
            Ok(())
        })
    }

    /// Settle every `running` local task whose runner is gone (or, before
    /// the runner recorded itself, whose claiming daemon is gone), judged
    /// by pid and start time in `/proc`, never by clocks. Returns the ids
    /// settled with the state they got.
    pub fn recover(&mut self, own: &str) -> Result<Vec<(u64, TaskState)>> {
        self.write(|tx| {
            let mut stmt = tx
                .prepare(&format!(
                    "SELECT {COLUMNS} FROM tasks WHERE state = 'running'
                     AND (node IS NULL OR node = ?1)"
                ))
                .map_err(sql)?;
            let rows = stmt
                .query_map([own], record::from_sql)
                .map_err(sql)?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(sql)?;
            drop(stmt);
            let mut settled = Vec::new();
            for row in rows {
                let row = row?;
                let (alive, who) = match (row.runner, &row.claimer) {
                    (Some((pid, start)), _) => (sys::is_alive(pid, start), "runner"),
                    (None, Some(c)) => (sys::is_alive(c.pid, c.start), "claiming daemon"),
                    (None, None) => (false, "claimer"),
                };
                if alive {
                    continue;
                }
                let why = format!("its {who} is gone without a result");
                if let Some(s) = end_unrecorded_in(tx, row.id, row.runs, &why)? {
                    settled.push((row.id, s));
                }
            }
            Ok(settled)
        })
    }

    /// Ask to cancel a task: a pending one is cancelled at once; a running
    /// one is marked, and the caller stops its runner.
    pub fn request_cancel(&mut self, id: u64) -> Result<CancelStep> {
        self.write(|tx| {
            let row = get_in(tx, id)?.ok_or(Error::TaskNotFound(id))?;
            match row.state {
                TaskState::Pending => {
                    end(
                        tx,
                        id,
                        TaskState::Cancelled,
                        None,
                        "cancelled while pending",
                    )?;
                    Ok(CancelStep::Cancelled)
                }
                TaskState::Running => {
                    tx.execute("UPDATE tasks SET cancel_requested = 1 WHERE id = ?1", [id])
                        .map_err(sql)?;
                    Ok(CancelStep::Running {
                        run: row.runs,
                        runner: row.runner,
                    })
                }
                s => Err(Error::TaskState {
                    id,
                    state: s.as_str(),
                    action: "cancel",
                    needs: "pending or running",
                }),
            }
        })
    }

    /// Remove finished records (`done`, `failed`, `cancelled`,
    /// `interrupted`): all of them, or only task `id` (which must be
    /// finished). Returns the removed ids; their logs are the caller's.
    pub fn flush(&mut self, id: Option<u64>) -> Result<Vec<u64>> {
        self.write(|tx| {
            let ids: Vec<u64> = match id {
                Some(id) => {
                    let row = get_in(tx, id)?.ok_or(Error::TaskNotFound(id))?;
                    if !row.state.is_final() {
                        return Err(Error::TaskState {
                            id,
                            state: row.state.as_str(),
                            action: "flush",
                            needs: "finished",
                        });
                    }
                    vec![id]
                }
                None => {
                    let mut stmt = tx
                        .prepare("SELECT id FROM tasks WHERE state IN ('done', 'failed', 'cancelled', 'interrupted') ORDER BY id")
                        .map_err(sql)?;
                    let ids = stmt
                        .query_map([], |r| r.get(0))
                        .map_err(sql)?
                        .collect::<rusqlite::Result<Vec<u64>>>()
                        .map_err(sql)?;
                    ids
                }
            };
            for id in &ids {
                tx.execute("DELETE FROM tasks WHERE id = ?1", [id])
                    .map_err(sql)?;
            }
            Ok(ids)
        })
    }
}

/// Claim the oldest pending task whose `after` task is done (or flushed
/// after success): one for node `own` (no node, or `own`), or, when
/// `remote`, one for another node. Returns the claim and the task's node.
fn claim_in(
    tx: &Transaction<'_>,
    own: &str,
    remote: bool,
    by: &Claimer,
) -> Result<Option<(Claim, Option<String>)>> {
    let nodes = if remote {
        "t.node IS NOT NULL AND t.node != ?1"
    } else {
        "(t.node IS NULL OR t.node = ?1)"
    };
    let found: Option<(u64, u32, String, Option<String>)> = tx
        .query_row(
            &format!(
                "SELECT t.id, t.runs, t.command, t.node FROM tasks t
                 WHERE t.state = 'pending' AND {nodes}
                   AND (t.after IS NULL
                        OR NOT EXISTS (SELECT 1 FROM tasks a WHERE a.id = t.after)
                        OR EXISTS (SELECT 1 FROM tasks a WHERE a.id = t.after AND a.state = 'done'))
                 ORDER BY t.id LIMIT 1"
            ),
            [own],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .optional()
        .map_err(sql)?;
    let Some((id, runs, command, node)) = found else {
        return Ok(None);
    };
    let run = runs + 1;
    tx.execute(
        "UPDATE tasks SET state = 'running', runs = ?2, started = ?3, finished = NULL,
             log = ?4, claimer = ?5, claimer_pid = ?6, claimer_start = ?7,
             runner_pid = NULL, runner_start = NULL, exit_code = NULL, reason = NULL
         WHERE id = ?1",
        params![
            id,
            run,
            now(),
            log_rel(id),
            by.instance,
            by.pid,
            by.start as i64
        ],
    )
    .map_err(sql)?;
    let words = serde_json::from_str(&command)
        .map_err(|e| Error::bad_value("command", &command, e.to_string()))?;
    Ok(Some((Claim { id, run, words }, node)))
}

/// A task's log, relative to the workdir.
pub fn log_rel(id: u64) -> String {
    format!("var/log/tasks/{id}.log")
}

#[cfg(test)]
mod tests;
