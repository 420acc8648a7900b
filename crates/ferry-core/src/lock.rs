//! Node-local locks that serialize operations on one env (two `jstart`s of
//! the same jail never interleave). Local only: the pool-wide guard is the
//! owner lease on shared storage.
//!
//! All envs share one lock file, `var/run/envs.lock`, created by
//! `initenv`; each env locks one byte of it, at an offset derived from its
//! name, with an open-file-description lock (`F_OFD_SETLKW`). So taking a
//! lock creates no file (refused input leaves the workdir as it was), and
//! the lock excludes other threads of the same process too (the broker
//! agent runs commands in-process), which classic POSIX locks do not.

use std::fs::{File, OpenOptions};
use std::path::PathBuf;

use nix::fcntl::{fcntl, FcntlArg};

use crate::error::{Error, Result};
use crate::name::Jname;
use crate::workdir::{fnv1a, Workdir};

/// The lock file of a workdir.
pub fn lock_file(wd: &Workdir) -> PathBuf {
    wd.run_dir().join("envs.lock")
}

/// Held for the duration of one operation on one env; released when
/// dropped (closing the file releases the lock).
#[derive(Debug)]
pub struct EnvLock {
    _file: File,
}

impl EnvLock {
    /// Block until this process holds the lock of `j`.
    pub fn acquire(wd: &Workdir, j: &Jname) -> Result<EnvLock> {
        let path = lock_file(wd);
        let file = open_lock_file(&path).map_err(Error::io("cannot open lock file", &path))?;
        // 2^40 slots: a collision only makes two envs wait for each other.
        let offset = (fnv1a(j.as_str().as_bytes()) & ((1 << 40) - 1)) as i64;
        lock_range(&file, Kind::Ofd, offset, 1).map_err(Error::io("cannot lock", &path))?;
        Ok(EnvLock { _file: file })
    }
}

/// Open (creating if needed) a file that exists only to be locked.
pub(crate) fn open_lock_file(path: &std::path::Path) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
}

/// Which kind of fcntl record lock.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Kind {
    /// Classic POSIX lock (per process; what network file systems honour).
    Posix,
    /// Open-file-description lock (per open file; excludes threads too).
    Ofd,
}

/// Block until an exclusive record lock on `len` bytes at `start` of
/// `file` is held (`len` 0: to the end of the file, however large).
pub(crate) fn lock_range(file: &File, kind: Kind, start: i64, len: i64) -> std::io::Result<()> {
    let fl = libc::flock {
        l_type: libc::F_WRLCK as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: start as libc::off_t,
        l_len: len as libc::off_t,
        l_pid: 0,
    };
    loop {
        let r = match kind {
            Kind::Posix => fcntl(file, FcntlArg::F_SETLKW(&fl)),
            Kind::Ofd => fcntl(file, FcntlArg::F_OFD_SETLKW(&fl)),
        };
        match r {
            Ok(_) => return Ok(()),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn excludes_threads_of_one_process_and_not_other_envs() {
        let t = tempfile::tempdir().unwrap();
        let wd = Workdir::init(t.path(), Some("n1")).unwrap();
        let a = Jname::new("a").unwrap();
        let held = EnvLock::acquire(&wd, &a).unwrap();
        // Another env is not blocked.
        drop(EnvLock::acquire(&wd, &Jname::new("b").unwrap()).unwrap());
        let got = Arc::new(AtomicBool::new(false));
        let (wd2, a2, got2) = (wd.clone(), a.clone(), got.clone());
        let h = std::thread::spawn(move || {
            let _l = EnvLock::acquire(&wd2, &a2).unwrap();
            got2.store(true, Ordering::SeqCst);
        });
        std::thread::sleep(Duration::from_millis(200));
        assert!(!got.load(Ordering::SeqCst), "a second holder got the lock");
        drop(held);
        h.join().unwrap();
        assert!(got.load(Ordering::SeqCst));
    }
}
