//! Tasks that cross nodes. On the asking node a task for another node is
//! claimed like a local one, but instead of a runner it gets a request id
//! (one per run) and is put on the target's node tube; it stays `running`
//! until the target's result arrives, or until the target is judged dead.
//! On the target the request becomes a local task keyed by that request id
//! (`origin`), so a request delivered twice is stored once; its result is
//! put on the asker's tube and marked `replied`.

use rusqlite::params;

use super::settle::{end, get_by, get_in, now, sql};
use super::{claim_in, Claimer, TaskRow, TaskState, TaskStore};
use crate::error::{Error, Result};

/// A claimed task for another node, to be sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteClaim {
    pub id: u64,
    pub run: u32,
    pub node: String,
    /// Unique per run: the target stores the task under it.
    pub request: String,
    pub words: Vec<String>,
    pub retry: bool,
}

/// What [`TaskStore::accept`] did with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Accepted {
    /// Stored as a new local task.
    New(u64),
    /// Delivered before: the task stored then.
    Again(Box<TaskRow>),
}

impl TaskStore {
    /// Claim the oldest eligible pending task for another node and give
    /// its run a request id. It is `running`, not yet sent.
    pub fn claim_remote(&mut self, own: &str, by: &Claimer) -> Result<Option<RemoteClaim>> {
        self.write(|tx| {
            let Some((c, Some(node))) = claim_in(tx, own, true, by)? else {
                return Ok(None);
            };
            let request = uuid::Uuid::new_v4().to_string();
            tx.execute(
                "UPDATE tasks SET request = ?2, sent = 0 WHERE id = ?1",
                params![c.id, request],
            )
            .map_err(sql)?;
            let retry = get_in(tx, c.id)?.is_some_and(|r| r.retry);
            Ok(Some(RemoteClaim {
                id: c.id,
                run: c.run,
                node,
                request,
                words: c.words,
                retry,
            }))
        })
    }

    /// Running tasks for other nodes whose request was not put yet (the
    /// broker was down, or the claimer died before it could put it).
    pub fn unsent(&self, own: &str) -> Result<Vec<RemoteClaim>> {
        Ok(self
            .remote_running(own)?
            .into_iter()
            .filter(|r| !r.sent)
            .filter_map(|r| {
                Some(RemoteClaim {
                    id: r.id,
                    run: r.runs,
                    node: r.node?,
                    request: r.request?,
                    words: r.words,
                    retry: r.retry,
                })
            })
            .collect())
    }

    /// Running tasks for other nodes.
    pub fn remote_running(&self, own: &str) -> Result<Vec<TaskRow>> {
        self.select(
            "state = 'running' AND node IS NOT NULL AND node != ?1",
            &[&own],
        )
    }

    /// The request of run `run` was put.
    pub fn mark_sent(&mut self, id: u64, run: u32) -> Result<()> {
        self.write(|tx| {
            tx.execute(
                "UPDATE tasks SET sent = 1 WHERE id = ?1 AND runs = ?2 AND state = 'running'",
                params![id, run],
            )
            .map_err(sql)?;
            Ok(())
        })
    }

    /// The task that request `request` carried, on the asking node.
    pub fn by_request(&self, request: &str) -> Result<Option<TaskRow>> {
        self.select("request = ?1", &[&request])
            .map(|rows| rows.into_iter().next())
    }

    /// The target's result of request `request` arrived: end the task with
    /// it, if that request is still the task's current run. Returns the
    /// task's id when it was.
    pub fn settle_remote(
        &mut self,
        request: &str,
        state: TaskState,
        code: Option<i32>,
        reason: &str,
    ) -> Result<Option<u64>> {
        if !state.is_final() {
            return Err(Error::bad_value(
                "state",
                state.as_str(),
                "a result must be a final state",
            ));
        }
        self.write(|tx| {
            let Some(row) = get_by(tx, "request", &request)? else {
                return Ok(None);
            };
            if row.state != TaskState::Running {
                return Ok(None);
            }
            end(tx, row.id, state, code, reason)?;
            Ok(Some(row.id))
        })
    }

    /// Store a task that node `from` sent with request id `origin`, its
    /// result to go to tube `reply`, as a pending task for this node
    /// `own`. A request seen before is not stored again.
    pub fn accept(
        &mut self,
        own: &str,
        origin: &str,
        reply: &str,
        words: &[String],
        retry: bool,
    ) -> Result<Accepted> {
        let command = serde_json::to_string(words).map_err(Error::encode("a task's words"))?;
        self.write(|tx| {
            let seen = get_by(tx, "origin", &origin)?;
            if let Some(row) = seen {
                return Ok(Accepted::Again(Box::new(row)));
            }
            tx.execute(
                "INSERT INTO tasks (node, retry, command, state, created, origin, reply)
                 VALUES (?1, ?2, ?3, 'pending', ?4, ?5, ?6)",
                params![own, retry, command, now(), origin, reply],
            )
            .map_err(sql)?;
            Ok(Accepted::New(tx.last_insert_rowid() as u64))
        })
    }

    /// The task received with request id `origin`.
    pub fn by_origin(&self, origin: &str) -> Result<Option<TaskRow>> {
        self.select("origin = ?1", &[&origin])
            .map(|rows| rows.into_iter().next())
    }

    /// Finished tasks from other nodes whose result was not put yet.
    pub fn unreplied(&self) -> Result<Vec<TaskRow>> {
        self.select(
            "origin IS NOT NULL AND replied = 0
             AND state IN ('done', 'failed', 'cancelled', 'interrupted')",
            &[],
        )
    }

    /// The result of task `id` was put on its asker's tube.
    pub fn mark_replied(&mut self, id: u64) -> Result<()> {
        self.write(|tx| {
            tx.execute("UPDATE tasks SET replied = 1 WHERE id = ?1", [id])
                .map_err(sql)?;
            Ok(())
        })
    }
}
