//! Node-local locks that serialize operations on one env (two `jstart`s of
//! the same jail never interleave). Local only: the pool-wide guard is the
//! owner lease on shared storage.

use std::fs::{File, OpenOptions};

use nix::fcntl::{Flock, FlockArg};

use crate::error::{Error, Result};
use crate::name::Jname;
use crate::workdir::Workdir;

/// Held for the duration of one operation on one env; released on drop.
#[derive(Debug)]
pub struct EnvLock {
    _lock: Flock<File>,
}

impl EnvLock {
    /// Block until this node holds the lock of `j`.
    pub fn acquire(wd: &Workdir, j: &Jname) -> Result<EnvLock> {
        let dir = wd.run_dir().join("locks");
        std::fs::create_dir_all(&dir).map_err(Error::io("cannot create", &dir))?;
        let path = dir.join(format!("{j}.lock"));
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(Error::io("cannot open lock", &path))?;
        let lock = Flock::lock(file, FlockArg::LockExclusive)
            .map_err(|(_, e)| Error::io("cannot lock", &path)(e.into()))?;
        Ok(EnvLock { _lock: lock })
    }
}
