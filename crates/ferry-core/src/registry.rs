//! The node-local registry (SQLite under `var/db`, never on shared storage).
//!
//! A row means "this env is registered on this node". The definition file on
//! shared storage stays the source of truth; the row caches the few fields a
//! listing shows, so `jls` over thousands of envs reads one table.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::model::EnvKind;
use crate::name::Jname;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS envs (
    jname         TEXT PRIMARY KEY NOT NULL,
    kind          TEXT NOT NULL,
    base          TEXT,
    host_hostname TEXT NOT NULL DEFAULT '',
    ip4_addr      TEXT NOT NULL DEFAULT '',
    astart        INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS envs_base ON envs(base);
CREATE TABLE IF NOT EXISTS inventory (
    key   TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
);
";

/// One registered env as the registry knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EnvRow {
    pub jname: Jname,
    pub kind: EnvKind,
    pub base: Option<String>,
    pub host_hostname: String,
    pub ip4_addr: String,
    pub astart: bool,
}

/// Open (creating if needed) one of ferry's local SQLite files the way
/// they all are: WAL, `synchronous=FULL` (a commit is on disk when it
/// returns), waiting up to `busy` for another writer, `schemas` applied.
///
/// The schemas' digest is kept in `user_version`: a file that already has
/// them is not sent the DDL again, which would cost more than the rest of
/// a quick command's open (parsing every `CREATE ... IF NOT EXISTS`).
pub fn open_sqlite(path: &Path, busy: Duration, schemas: &[&str]) -> rusqlite::Result<Connection> {
    let stamp = schemas.iter().fold(0u64, |h, s| {
        h ^ crate::workdir::fnv1a(s.as_bytes()).rotate_left(1)
    });
    // A positive i32 that is never 0, SQLite's value for a new file.
    let stamp = i64::try_from(stamp % (i32::MAX as u64 - 1) + 1).unwrap_or(1);
    let conn = Connection::open(path)?;
    // Each ferry command is a short process: checkpointing the WAL into
    // the database as it closes would cost two more fsyncs every time.
    // The WAL is as durable as the database; SQLite checkpoints it when it
    // grows (every 1,000 pages) and reads it at the next open.
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
        true,
    )?;
    conn.busy_timeout(busy)?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    let have: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if have != stamp {
        conn.pragma_update(None, "journal_mode", "WAL")?;
        for schema in schemas {
            conn.execute_batch(schema)?;
        }
        conn.pragma_update(None, "user_version", stamp)?;
    }
    Ok(conn)
}

/// An open registry connection.
#[derive(Debug)]
pub struct Registry {
    conn: Held,
    path: PathBuf,
    /// Where the connection goes back when dropped, if anywhere.
    pool: Option<RegistryPool>,
}

/// The connection of a [`Registry`]; taken out only when it is dropped.
#[derive(Debug)]
struct Held(Option<Connection>);

impl std::ops::Deref for Held {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        self.0
            .as_ref()
            .expect("a registry's connection is taken only on drop")
    }
}

impl std::ops::DerefMut for Held {
    fn deref_mut(&mut self) -> &mut Connection {
        self.0
            .as_mut()
            .expect("a registry's connection is taken only on drop")
    }
}

/// Registry connections a long-lived front door (the broker agent) keeps
/// for its next commands: opening one costs more than a quick listing. A
/// connection goes back when its [`Registry`] is dropped outside a
/// transaction, and is set to `synchronous=FULL` again when taken.
#[derive(Debug, Clone, Default)]
pub struct RegistryPool(Arc<Mutex<Vec<(PathBuf, Connection)>>>);

/// How many connections a pool keeps.
const POOL_MAX: usize = 4;

impl RegistryPool {
    fn take(&self, path: &Path) -> Option<Connection> {
        let mut v = self.0.lock().ok()?;
        let i = v.iter().position(|(p, _)| p == path)?;
        Some(v.swap_remove(i).1)
    }

    fn put(&self, path: PathBuf, conn: Connection) {
        if let Ok(mut v) = self.0.lock() {
            if v.len() < POOL_MAX {
                v.push((path, conn));
            }
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        if let (Some(pool), Some(conn)) = (self.pool.take(), self.conn.0.take()) {
            if conn.is_autocommit() {
                pool.put(std::mem::take(&mut self.path), conn);
            }
        }
    }
}

impl Registry {
    /// Open the registry in `db_dir` with a connection from `pool` when it
    /// has one; the connection goes back to `pool` when this is dropped.
    pub fn open_pooled(db_dir: &Path, pool: &RegistryPool) -> Result<Registry> {
        let path = db_dir.join("local.sqlite");
        let mut reg = match pool.take(&path) {
            Some(conn) => {
                conn.pragma_update(None, "synchronous", "FULL")
                    .map_err(|source| Error::Registry {
                        path: path.clone(),
                        source,
                    })?;
                Registry {
                    conn: Held(Some(conn)),
                    path,
                    pool: None,
                }
            }
            None => Registry::open(db_dir)?,
        };
        reg.pool = Some(pool.clone());
        Ok(reg)
    }

    /// Open (creating if needed) the registry in `db_dir`.
    pub fn open(db_dir: &Path) -> Result<Registry> {
        let path = db_dir.join("local.sqlite");
        let err = |source| Error::Registry {
            path: path.clone(),
            source,
        };
        let conn = open_sqlite(
            &path,
            Duration::from_secs(10),
            &[SCHEMA, crate::node::SCHEMA],
        )
        .map_err(err)?;
        Ok(Registry {
            conn: Held(Some(conn)),
            path,
            pool: None,
        })
    }

    /// Commit without waiting for the disk (SQLite `synchronous=NORMAL`
    /// in WAL mode: a power loss may undo the last commits, never tear
    /// one). For rows that can be rebuilt from shared storage, as
    /// registration's are (see `register::settle`).
    pub fn relaxed(&self) -> Result<()> {
        self.conn
            .pragma_update(None, "synchronous", "NORMAL")
            .map_err(self.err())
    }

    pub(crate) fn conn(&self) -> &Connection {
        &self.conn
    }

    pub(crate) fn err(&self) -> impl Fn(rusqlite::Error) -> Error + '_ {
        move |source| Error::Registry {
            path: self.path.clone(),
            source,
        }
    }

    /// Add a row; an existing row for the name is an error.
    pub fn insert(&self, row: &EnvRow) -> Result<()> {
        if self.get(&row.jname)?.is_some() {
            return Err(Error::EnvExists(row.jname.clone()));
        }
        self.upsert(row)
    }

    /// Add or replace a row.
    pub fn upsert(&self, row: &EnvRow) -> Result<()> {
        self.conn
            .execute(
                "INSERT OR REPLACE INTO envs (jname, kind, base, host_hostname, ip4_addr, astart)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    row.jname.as_str(),
                    row.kind.as_str(),
                    row.base,
                    row.host_hostname,
                    row.ip4_addr,
                    row.astart
                ],
            )
            .map_err(self.err())?;
        Ok(())
    }

    /// Add many rows in one transaction (bulk registration, benchmarks).
    pub fn upsert_many(&mut self, rows: &[EnvRow]) -> Result<()> {
        let path = self.path.clone();
        let err = |source| Error::Registry {
            path: path.clone(),
            source,
        };
        let tx = self.conn.transaction().map_err(err)?;
        {
            let mut stmt = tx
                .prepare(
                    "INSERT OR REPLACE INTO envs (jname, kind, base, host_hostname, ip4_addr, astart)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )
                .map_err(err)?;
            for row in rows {
                stmt.execute(params![
                    row.jname.as_str(),
                    row.kind.as_str(),
                    row.base,
                    row.host_hostname,
                    row.ip4_addr,
                    row.astart
                ])
                .map_err(err)?;
            }
        }
        tx.commit().map_err(err)
    }

    /// Remove a row; returns whether one existed.
    pub fn remove(&self, jname: &Jname) -> Result<bool> {
        let n = self
            .conn
            .execute("DELETE FROM envs WHERE jname = ?1", [jname.as_str()])
            .map_err(self.err())?;
        Ok(n > 0)
    }

    pub fn get(&self, jname: &Jname) -> Result<Option<EnvRow>> {
        self.conn
            .query_row(
                "SELECT jname, kind, base, host_hostname, ip4_addr, astart FROM envs WHERE jname = ?1",
                [jname.as_str()],
                row_from_sql,
            )
            .optional()
            .map_err(self.err())?
            .transpose()
    }

    /// All rows, ordered by name.
    pub fn list(&self) -> Result<Vec<EnvRow>> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT jname, kind, base, host_hostname, ip4_addr, astart FROM envs ORDER BY jname",
            )
            .map_err(self.err())?;
        let rows = stmt
            .query_map([], row_from_sql)
            .map_err(self.err())?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(self.err())?;
        rows.into_iter().collect()
    }

    /// Names of the registered envs built on `base`.
    pub fn users_of_base(&self, base: &str) -> Result<Vec<String>> {
        let mut stmt = self
            .conn
            .prepare("SELECT jname FROM envs WHERE base = ?1 ORDER BY jname")
            .map_err(self.err())?;
        let names = stmt
            .query_map([base], |r| r.get(0))
            .map_err(self.err())?
            .collect::<rusqlite::Result<Vec<String>>>()
            .map_err(self.err())?;
        Ok(names)
    }

    pub fn set_inventory(&self, key: &str, value: &str) -> Result<()> {
        self.conn
            .execute(
                "INSERT OR REPLACE INTO inventory (key, value) VALUES (?1, ?2)",
                [key, value],
            )
            .map_err(self.err())?;
        Ok(())
    }

    pub fn inventory(&self, key: &str) -> Result<Option<String>> {
        self.conn
            .query_row("SELECT value FROM inventory WHERE key = ?1", [key], |r| {
                r.get(0)
            })
            .optional()
            .map_err(self.err())
    }
}

type SqlRow = (String, String, Option<String>, String, String, bool);

fn row_from_sql(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<EnvRow>> {
    let (jname, kind, base, host_hostname, ip4_addr, astart): SqlRow = (
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
    );
    Ok((|| {
        Ok(EnvRow {
            jname: crate::error::jname(&jname)?,
            kind: EnvKind::parse(&kind)
                .ok_or_else(|| Error::bad_value("kind", &kind, "unknown kind"))?,
            base,
            host_hostname,
            ip4_addr,
            astart,
        })
    })())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pooled_connection_is_reused_and_made_durable_again() {
        let dir = tempfile::tempdir().unwrap();
        let pool = RegistryPool::default();
        let sync = |r: &Registry| -> i64 {
            r.conn()
                .pragma_query_value(None, "synchronous", |v| v.get(0))
                .unwrap()
        };
        let reg = Registry::open_pooled(dir.path(), &pool).unwrap();
        reg.upsert(&row("a")).unwrap();
        reg.relaxed().unwrap();
        assert_eq!(sync(&reg), 1);
        drop(reg);
        assert_eq!(pool.0.lock().unwrap().len(), 1);
        let reg = Registry::open_pooled(dir.path(), &pool).unwrap();
        assert!(pool.0.lock().unwrap().is_empty(), "not taken from the pool");
        assert_eq!((sync(&reg), reg.list().unwrap().len()), (2, 1));
        // A plain open leaves the pool alone.
        drop(Registry::open(dir.path()).unwrap());
        drop(reg);
        assert_eq!(pool.0.lock().unwrap().len(), 1);
    }

    #[test]
    fn a_changed_schema_is_applied_to_an_existing_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.sqlite");
        let a = "CREATE TABLE IF NOT EXISTS a (x);";
        let b = "CREATE TABLE IF NOT EXISTS b (y);";
        let tables = |c: &Connection| -> i64 {
            c.query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table'",
                [],
                |r| r.get(0),
            )
            .unwrap()
        };
        let c = open_sqlite(&p, Duration::from_secs(1), &[a]).unwrap();
        let mode: String = c
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .unwrap();
        assert_eq!((tables(&c), mode.as_str()), (1, "wal"));
        drop(c);
        // Reopened as it is, then with one more table.
        assert_eq!(
            tables(&open_sqlite(&p, Duration::from_secs(1), &[a]).unwrap()),
            1
        );
        assert_eq!(
            tables(&open_sqlite(&p, Duration::from_secs(1), &[a, b]).unwrap()),
            2
        );
    }

    fn row(name: &str) -> EnvRow {
        EnvRow {
            jname: Jname::new(name).unwrap(),
            kind: EnvKind::Jail,
            base: Some("busybox".into()),
            host_hostname: format!("{name}.example"),
            ip4_addr: String::new(),
            astart: false,
        }
    }

    #[test]
    fn insert_get_list_remove() {
        let t = tempfile::tempdir().unwrap();
        let mut reg = Registry::open(t.path()).unwrap();
        reg.insert(&row("b")).unwrap();
        reg.insert(&row("a")).unwrap();
        assert!(matches!(reg.insert(&row("a")), Err(Error::EnvExists(_))));
        assert_eq!(reg.get(&Jname::new("a").unwrap()).unwrap(), Some(row("a")));
        let names: Vec<_> = reg
            .list()
            .unwrap()
            .into_iter()
            .map(|r| r.jname.to_string())
            .collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(reg.users_of_base("busybox").unwrap(), ["a", "b"]);
        assert!(reg.remove(&Jname::new("a").unwrap()).unwrap());
        assert!(!reg.remove(&Jname::new("a").unwrap()).unwrap());
        let many: Vec<_> = (0..100).map(|i| row(&format!("j{i}"))).collect();
        reg.upsert_many(&many).unwrap();
        assert_eq!(reg.list().unwrap().len(), 101);
        drop(reg);
        // Reopening keeps everything.
        assert_eq!(Registry::open(t.path()).unwrap().list().unwrap().len(), 101);
    }
}
