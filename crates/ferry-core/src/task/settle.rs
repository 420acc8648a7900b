//! The transitions every store operation shares, inside its transaction:
//! reading a row, ending a task (with its dependents and autoflush), and
//! settling a run that recorded no result.

use std::path::PathBuf;
use std::time::SystemTime;

use rusqlite::{params, Connection, OptionalExtension, Transaction};

use super::{record, Autoflush, TaskRow, TaskState, COLUMNS, MAX_RUNS};
use crate::error::{Error, Result};
use crate::sys;

pub(super) fn now() -> String {
    sys::utc_timestamp(SystemTime::now())
}

/// Errors inside a transaction; the caller's context names the file.
pub(super) fn sql(source: rusqlite::Error) -> Error {
    Error::TaskStore {
        path: PathBuf::from("tasks.sqlite"),
        source,
    }
}

pub(super) fn get_in(conn: &Connection, id: u64) -> Result<Option<TaskRow>> {
    get_by(conn, "id", &id)
}

/// The task whose (unique) `column` is `value`.
pub(super) fn get_by(
    conn: &Connection,
    column: &str,
    value: &dyn rusqlite::ToSql,
) -> Result<Option<TaskRow>> {
    conn.query_row(
        &format!("SELECT {COLUMNS} FROM tasks WHERE {column} = ?1"),
        [value],
        record::from_sql,
    )
    .optional()
    .map_err(sql)?
    .transpose()
}

pub(super) fn is_running(tx: &Transaction<'_>, id: u64, run: u32) -> Result<bool> {
    Ok(get_in(tx, id)?.is_some_and(|r| r.state == TaskState::Running && r.runs == run))
}

pub(super) fn end_unrecorded_in(
    tx: &Transaction<'_>,
    id: u64,
    run: u32,
    why: &str,
) -> Result<Option<TaskState>> {
    let Some(row) = get_in(tx, id)?.filter(|r| r.state == TaskState::Running && r.runs == run)
    else {
        return Ok(None);
    };
    if row.cancel_requested {
        return end(
            tx,
            id,
            TaskState::Cancelled,
            None,
            "cancelled while running",
        );
    }
    if row.retry && row.runs < MAX_RUNS {
        tx.execute(
            "UPDATE tasks SET state = 'pending', reason = ?2, claimer = NULL,
                 claimer_pid = NULL, claimer_start = NULL, runner_pid = NULL, runner_start = NULL
             WHERE id = ?1",
            params![id, format!("run {run} interrupted ({why}); queued again")],
        )
        .map_err(sql)?;
        return Ok(Some(TaskState::Pending));
    }
    end(tx, id, TaskState::Interrupted, None, why)
}

/// Write a final state, cancel the dependents of a task that did not
/// succeed (transitively), and apply autoflush.
pub(super) fn end(
    tx: &Transaction<'_>,
    id: u64,
    state: TaskState,
    code: Option<i32>,
    reason: &str,
) -> Result<Option<TaskState>> {
    let at = now();
    tx.execute(
        "UPDATE tasks SET state = ?2, exit_code = ?3, reason = NULLIF(?4, ''), finished = ?5
         WHERE id = ?1",
        params![id, state.as_str(), code, reason, at],
    )
    .map_err(sql)?;
    if state != TaskState::Done {
        let mut ended = vec![id];
        while let Some(parent) = ended.pop() {
            let mut stmt = tx
                .prepare("SELECT id FROM tasks WHERE after = ?1 AND state = 'pending'")
                .map_err(sql)?;
            let deps = stmt
                .query_map([parent], |r| r.get::<_, u64>(0))
                .map_err(sql)?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(sql)?;
            for dep in deps {
                tx.execute(
                    "UPDATE tasks SET state = 'cancelled', finished = ?2, reason = ?3 WHERE id = ?1",
                    params![dep, at, format!("task {parent} did not succeed")],
                )
                .map_err(sql)?;
                tx.execute("DELETE FROM tasks WHERE id = ?1 AND autoflush = 2", [dep])
                    .map_err(sql)?;
                ended.push(dep);
            }
        }
    }
    let flush: u8 = tx
        .query_row("SELECT autoflush FROM tasks WHERE id = ?1", [id], |r| {
            r.get(0)
        })
        .map_err(sql)?;
    if Autoflush::from_u8(flush).removes(state) {
        tx.execute("DELETE FROM tasks WHERE id = ?1", [id])
            .map_err(sql)?;
    }
    Ok(Some(state))
}
