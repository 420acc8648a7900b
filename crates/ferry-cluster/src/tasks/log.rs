//! A task's log, `var/log/tasks/<id>.log` (mode 0600 in a 0700 dir): the
//! runner's output and the queue's notes of what happened to the task.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;
use std::time::SystemTime;

use ferry_core::task::{self, TaskRow, TaskStore};
use ferry_core::{sys, Error, Result, Workdir};

/// How much of a task's log travels back with its result.
const OUTPUT_TAIL: u64 = 8 * 1024;

pub(crate) fn path(wd: &Workdir, id: u64) -> PathBuf {
    wd.root().join(task::log_rel(id))
}

/// The task's log, opened for appending (a retried run adds to it),
/// created 0600 in a 0700 dir; a symlink is refused.
pub(crate) fn open(wd: &Workdir, id: u64) -> Result<File> {
    let path = path(wd, id);
    let dir = wd.log_dir().join("tasks");
    fs::create_dir_all(&dir).map_err(Error::io("cannot create the task log dir", &dir))?;
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
        .map_err(Error::io("cannot protect the task log dir", &dir))?;
    let f = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
        .open(&path)
        .map_err(Error::io("cannot open the task log", &path))?;
    f.set_permissions(fs::Permissions::from_mode(0o600))
        .map_err(Error::io("cannot protect the task log", &path))?;
    Ok(f)
}

/// A note of the queue's, time-stamped, in task `id`'s log.
pub(crate) fn note(wd: &Workdir, id: u64, line: &str) {
    append(wd, id, stamped(line).as_bytes());
}

/// `--- <UTC time> <line>`, newline-terminated.
pub(crate) fn stamped(line: &str) -> String {
    format!("--- {} {line}\n", sys::utc_timestamp(SystemTime::now()))
}

pub(crate) fn append(wd: &Workdir, id: u64, bytes: &[u8]) {
    match open(wd, id) {
        Ok(mut f) => {
            let _ = f.write_all(bytes);
        }
        Err(e) => tracing::warn!(task = id, error = %e, "cannot write the task log"),
    }
}

/// The last [`OUTPUT_TAIL`] bytes of a task's log (valid UTF-8, lossy).
pub(crate) fn tail(wd: &Workdir, row: &TaskRow) -> String {
    let Some(rel) = &row.log else {
        return String::new();
    };
    let Ok(mut f) = File::open(wd.root().join(rel)) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(OUTPUT_TAIL)));
    let mut buf = Vec::new();
    let _ = f.take(OUTPUT_TAIL).read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

/// Remove the log of a task whose record is gone (autoflush).
pub(crate) fn remove_if_flushed(wd: &Workdir, store: &TaskStore, id: u64) {
    if matches!(store.get(id), Ok(None)) {
        remove(wd, id);
    }
}

pub(crate) fn remove(wd: &Workdir, id: u64) {
    let _ = fs::remove_file(path(wd, id));
}
