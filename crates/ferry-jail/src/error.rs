//! What fails in the jail engine, beside the core's errors.

use std::path::PathBuf;

use ferry_core::{Error, ErrorKind, Jname};

/// How the jail engine fails.
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    /// runc refused or failed; what it said.
    #[error("runc {what} failed ({status}): {said}")]
    Runc {
        what: String,
        status: String,
        said: String,
    },
    #[error("runc wrote no pid to {}", .0.display())]
    NoPid(PathBuf),
    #[error("{jname} exited as soon as it started; see {}", .console.display())]
    ExitedAtOnce { jname: Jname, console: PathBuf },
    #[error("{jname} (pid {pid}) did not die after SIGKILL")]
    Unkillable { jname: Jname, pid: i32 },
    #[error("{jname} needs base {base}, which this node does not have")]
    BaseMissing { jname: Jname, base: String },
    #[error("{0} is a jail: jails have no checkpoints")]
    NoCheckpoints(Jname),
    #[error("cannot install {pkgs:?}: {why}")]
    NoPackages { pkgs: String, why: String },
    #[error("installing {pkgs} into {jname} failed at apt-get {step} ({how}); see {}:\n{tail}", .log.display())]
    Install {
        jname: Jname,
        pkgs: String,
        step: String,
        how: String,
        log: PathBuf,
        tail: String,
    },
    #[error("cannot write the OCI spec")]
    Spec(#[source] serde_json::Error),
}

impl JailError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            JailError::BaseMissing { .. }
            | JailError::NoCheckpoints(_)
            | JailError::NoPackages { .. } => ErrorKind::Refused,
            _ => ErrorKind::Failed,
        }
    }
}

impl From<JailError> for Error {
    fn from(e: JailError) -> Error {
        Error::classified(e.kind(), e)
    }
}
