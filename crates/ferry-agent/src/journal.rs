//! The agent's journal (`var/db/agent.sqlite`): which jobs it started and
//! how they ended, so that a job the broker hands out again is never run
//! twice.
//!
//! A job is named by its tube and its broker id. beanstalkd keeps ids in
//! its binlog, and after a restart with the binlog it goes on counting from
//! the highest id it recovered, so the pair names one job for good. A
//! broker restarted *without* its binlog starts again at 1; the body's
//! SHA-256 is kept too, and a known id arriving with another body is a new
//! job. (The same body under a reused id is then taken for a redelivery:
//! run beanstalkd with `-b`.)

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

/// How long finished jobs are remembered.
const KEEP: Duration = Duration::from_secs(7 * 24 * 3600);

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS jobs (
    tube        TEXT    NOT NULL,
    job_id      INTEGER NOT NULL,
    body_sha256 TEXT    NOT NULL,
    command     TEXT    NOT NULL,
    nonce       TEXT    UNIQUE,
    state       TEXT    NOT NULL CHECK (state IN ('started', 'done', 'replied')),
    pid         INTEGER NOT NULL,
    pid_start   INTEGER NOT NULL,
    reply       TEXT,
    started_at  INTEGER NOT NULL,
    finished_at INTEGER,
    PRIMARY KEY (tube, job_id)
);
CREATE INDEX IF NOT EXISTS jobs_finished ON jobs (finished_at);
";

/// A journal error.
#[derive(Debug, thiserror::Error)]
#[error("agent journal {path}")]
pub struct JournalError {
    path: PathBuf,
    #[source]
    source: rusqlite::Error,
}

/// What the journal says about a job about to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Begin {
    /// Never seen: recorded as started by us; run it.
    Run,
    /// Finished; this is its final reply, not yet known to be put.
    Finished(String),
    /// Finished and its final reply was put: only delete it.
    Replied,
    /// Still being run by a live agent (this one or another on the same
    /// workdir): leave it.
    Running,
    /// Started by an agent that is gone, before it finished: it may have
    /// done part of its work, so it is not run again.
    Interrupted { pid: i32 },
    /// A signed job whose nonce another job already carried.
    Replayed { tube: String, job_id: u64 },
}

/// Who runs a job: a process, named for good by its pid and start time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub pid: i32,
    pub start: u64,
}

impl Owner {
    /// This process.
    pub fn me() -> Owner {
        let pid = i32::try_from(std::process::id()).unwrap_or(i32::MAX);
        let start = ferry_core::sys::proc_stat(pid).map_or(0, |s| s.starttime);
        Owner { pid, start }
    }
}

/// The journal of one workdir.
#[derive(Debug)]
pub struct Journal {
    conn: Connection,
    path: PathBuf,
}

/// One job, as the journal keys it.
#[derive(Debug, Clone, Copy)]
pub struct JobKey<'a> {
    pub tube: &'a str,
    pub id: u64,
    pub body_sha256: &'a str,
}

impl Journal {
    /// Open (creating if needed) `agent.sqlite` in `db_dir`.
    pub fn open(db_dir: &Path) -> Result<Journal, JournalError> {
        let path = db_dir.join("agent.sqlite");
        let err = |source| JournalError {
            path: path.clone(),
            source,
        };
        let conn = ferry_core::registry::open_sqlite(&path, Duration::from_secs(30), &[SCHEMA])
            .map_err(err)?;
        Ok(Journal { conn, path })
    }

    fn err(&self) -> impl Fn(rusqlite::Error) -> JournalError + '_ {
        move |source| JournalError {
            path: self.path.clone(),
            source,
        }
    }

    /// Decide what to do with a job, and record it as started by `me` when
    /// it is to run; one transaction, so two agents on one workdir never
    /// both run a job.
    pub fn begin(
        &mut self,
        job: JobKey<'_>,
        command: &str,
        nonce: Option<&str>,
        me: Owner,
        now: u64,
    ) -> Result<Begin, JournalError> {
        // Split borrows: the transaction holds the connection.
        let Journal { conn, path } = self;
        let err = |source| JournalError {
            path: path.clone(),
            source,
        };
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err)?;
        let id = i64::try_from(job.id).unwrap_or(i64::MAX);
        let row: Option<(String, String, i32, i64, Option<String>)> = tx
            .query_row(
                "SELECT body_sha256, state, pid, pid_start, reply FROM jobs
                 WHERE tube = ?1 AND job_id = ?2",
                params![job.tube, id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
            )
            .optional()
            .map_err(&err)?;
        let same = row.as_ref().filter(|r| r.0 == job.body_sha256);
        let decided = match same {
            Some((_, state, _, _, Some(reply))) if state == "done" => {
                Some(Begin::Finished(reply.clone()))
            }
            Some((_, state, ..)) if state == "replied" => Some(Begin::Replied),
            Some((_, _, pid, start, _)) => {
                let start = u64::try_from(*start).unwrap_or(0);
                let alive =
                    (Owner { pid: *pid, start } == me) || ferry_core::sys::is_alive(*pid, start);
                Some(if alive {
                    Begin::Running
                } else {
                    Begin::Interrupted { pid: *pid }
                })
            }
            None => None,
        };
        if let Some(d) = decided {
            return Ok(d);
        }
        if let Some(n) = nonce {
            let other: Option<(String, i64)> = tx
                .query_row(
                    "SELECT tube, job_id FROM jobs WHERE nonce = ?1",
                    params![n],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()
                .map_err(&err)?;
            if let Some((tube, job_id)) = other {
                return Ok(Begin::Replayed {
                    tube,
                    job_id: u64::try_from(job_id).unwrap_or(0),
                });
            }
        }
        tx.execute(
            "INSERT OR REPLACE INTO jobs
                 (tube, job_id, body_sha256, command, nonce, state, pid, pid_start, started_at)
             VALUES (?1, ?2, ?3, ?4, ?5, 'started', ?6, ?7, ?8)",
            params![
                job.tube,
                id,
                job.body_sha256,
                command,
                nonce,
                me.pid,
                i64::try_from(me.start).unwrap_or(i64::MAX),
                i64::try_from(now).unwrap_or(i64::MAX),
            ],
        )
        .map_err(&err)?;
        tx.commit().map_err(&err)?;
        Ok(Begin::Run)
    }

    /// Record a job's final reply (before it is put).
    pub fn finish(&self, tube: &str, id: u64, reply: &str, now: u64) -> Result<(), JournalError> {
        self.conn
            .execute(
                "UPDATE jobs SET state = 'done', reply = ?3, finished_at = ?4
                 WHERE tube = ?1 AND job_id = ?2",
                params![
                    tube,
                    i64::try_from(id).unwrap_or(i64::MAX),
                    reply,
                    i64::try_from(now).unwrap_or(i64::MAX)
                ],
            )
            .map_err(self.err())?;
        Ok(())
    }

    /// Record that a job's final reply is on its reply tube.
    pub fn replied(&self, tube: &str, id: u64) -> Result<(), JournalError> {
        self.conn
            .execute(
                "UPDATE jobs SET state = 'replied' WHERE tube = ?1 AND job_id = ?2",
                params![tube, i64::try_from(id).unwrap_or(i64::MAX)],
            )
            .map_err(self.err())?;
        Ok(())
    }

    /// Forget jobs finished more than a week ago; returns how many.
    pub fn prune(&self, now: u64) -> Result<usize, JournalError> {
        let before = now.saturating_sub(KEEP.as_secs());
        self.conn
            .execute(
                "DELETE FROM jobs WHERE finished_at IS NOT NULL AND finished_at < ?1",
                params![i64::try_from(before).unwrap_or(0)],
            )
            .map_err(self.err())
    }

    /// How many times each state occurs (for tests and logs).
    pub fn count(&self, state: &str) -> Result<u64, JournalError> {
        self.conn
            .query_row(
                "SELECT count(*) FROM jobs WHERE state = ?1",
                params![state],
                |r| r.get(0),
            )
            .map_err(self.err())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: u64, sha: &str) -> JobKey<'_> {
        JobKey {
            tube: "t",
            id,
            body_sha256: sha,
        }
    }

    fn begin(j: &mut Journal, id: u64, sha: &str, now: u64) -> Begin {
        j.begin(key(id, sha), "jstart", None, Owner::me(), now)
            .unwrap()
    }

    #[test]
    fn a_job_runs_once_and_is_then_answered_from_the_journal() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::open(dir.path()).unwrap();
        assert_eq!(begin(&mut j, 1, "a", 10), Begin::Run);
        // Redelivered while we still run it.
        assert_eq!(begin(&mut j, 1, "a", 11), Begin::Running);
        j.finish("t", 1, "{\"ErrCode\":0}", 12).unwrap();
        assert_eq!(
            begin(&mut j, 1, "a", 13),
            Begin::Finished("{\"ErrCode\":0}".into())
        );
        j.replied("t", 1).unwrap();
        assert_eq!(begin(&mut j, 1, "a", 14), Begin::Replied);
        // The same id with another body: a broker that lost its binlog.
        assert_eq!(begin(&mut j, 1, "b", 15), Begin::Run);
    }

    #[test]
    fn a_job_started_by_a_dead_agent_is_interrupted() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::open(dir.path()).unwrap();
        let gone = Owner {
            pid: i32::MAX - 1,
            start: 1,
        };
        assert_eq!(
            j.begin(key(2, "a"), "jstart", None, gone, 1).unwrap(),
            Begin::Run
        );
        assert_eq!(
            j.begin(key(2, "a"), "jstart", None, Owner::me(), 2)
                .unwrap(),
            Begin::Interrupted { pid: i32::MAX - 1 }
        );
    }

    #[test]
    fn a_nonce_is_accepted_once_and_old_jobs_are_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::open(dir.path()).unwrap();
        let me = Owner::me();
        assert_eq!(
            j.begin(key(3, "a"), "jls", Some("n1"), me, 1).unwrap(),
            Begin::Run
        );
        assert_eq!(
            j.begin(key(4, "a"), "jls", Some("n1"), me, 2).unwrap(),
            Begin::Replayed {
                tube: "t".into(),
                job_id: 3
            }
        );
        j.finish("t", 3, "{}", 3).unwrap();
        assert_eq!(j.prune(3 + KEEP.as_secs() + 1).unwrap(), 1);
        assert_eq!(j.count("done").unwrap(), 0);
    }
}
