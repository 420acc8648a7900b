//! The core error type and the classification callers use to choose an exit
//! code or a broker `ErrCode`.

use std::io;
use std::path::PathBuf;

use crate::name::{Jname, NameError};

/// How an error should be reported to a caller who must tell cases apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The operation was attempted and failed.
    Failed,
    /// The request itself is malformed: bad name, bad value, bad file.
    BadInput,
    /// The named env, base or file does not exist.
    NotFound,
    /// The env is in a state that does not allow the operation
    /// (already running, still running, already exists ...).
    WrongState,
    /// Another node holds the env's owner lease.
    NotOwner,
    /// A precheck refused the operation before anything changed.
    Refused,
}

/// Errors of ferry's domain core.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid name {name:?}")]
    Name {
        name: String,
        #[source]
        source: NameError,
    },
    #[error("{what} at {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("workdir {0} is not initialized; run `ferry initenv` first")]
    NotInitialized(PathBuf),
    #[error("invalid definition file {path}")]
    Definition {
        path: PathBuf,
        #[source]
        source: crate::rcconf::ParseError,
    },
    #[error("invalid definition {path}: {reason}")]
    BadDefinition { path: PathBuf, reason: String },
    #[error("invalid value {value:?} for {key}: {reason}")]
    BadValue {
        key: String,
        value: String,
        reason: String,
    },
    #[error("no env named {0}")]
    EnvNotFound(Jname),
    #[error("{jname} is a {is}, not a {wanted}")]
    WrongKind {
        jname: Jname,
        is: &'static str,
        wanted: &'static str,
    },
    #[error("no env matches {0}")]
    NoMatch(String),
    #[error("an env named {0} already exists")]
    EnvExists(Jname),
    #[error("{jname} is {state}; {action} needs it {needs}")]
    WrongState {
        jname: Jname,
        state: &'static str,
        action: &'static str,
        needs: &'static str,
    },
    #[error("{jname} is owned by node {node} (epoch {epoch})")]
    NotOwner {
        jname: Jname,
        node: String,
        epoch: u64,
    },
    #[error("no base named {0}")]
    BaseNotFound(String),
    #[error("base {0} already exists")]
    BaseExists(String),
    #[error("base {base} is used by {users}")]
    BaseInUse { base: String, users: String },
    #[error("registry {path}")]
    Registry {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error(transparent)]
    Hook(#[from] crate::hook::HookError),
    #[error("no task {0}")]
    TaskNotFound(u64),
    #[error("task {id} is {state}; {action} needs it {needs}")]
    TaskState {
        id: u64,
        state: &'static str,
        action: &'static str,
        needs: &'static str,
    },
    #[error(
        "unknown node {0:?}; this node is {1:?} (other nodes become known with `node mode=add`)"
    )]
    UnknownNode(String, String),
    #[error("task store {path}")]
    TaskStore {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("cannot encode {what}")]
    Encode {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Failed(String),
    /// An error of an engine or of the cluster layer, with the kind it
    /// says it is.
    #[error(transparent)]
    Classified(Classified),
}

/// An error of another crate carried by [`Error`]: shown as itself (its
/// causes after it), reported as the kind it was given.
#[derive(Debug)]
pub struct Classified {
    kind: ErrorKind,
    error: Box<dyn std::error::Error + Send + Sync>,
}

impl Classified {
    /// The error carried, to look at what it is.
    pub fn error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        self.error.as_ref()
    }
}

impl std::fmt::Display for Classified {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.error.fmt(f)
    }
}

impl std::error::Error for Classified {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.error.source()
    }
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Name { .. }
            | Error::BadValue { .. }
            | Error::Definition { .. }
            | Error::BadDefinition { .. } => ErrorKind::BadInput,
            Error::Hook(h) if h.is_refusal() => ErrorKind::Refused,
            Error::EnvNotFound(_)
            | Error::WrongKind { .. }
            | Error::NoMatch(_)
            | Error::BaseNotFound(_)
            | Error::TaskNotFound(_)
            | Error::UnknownNode(..) => ErrorKind::NotFound,
            Error::EnvExists(_)
            | Error::WrongState { .. }
            | Error::BaseExists(_)
            | Error::BaseInUse { .. }
            | Error::TaskState { .. } => ErrorKind::WrongState,
            Error::NotOwner { .. } => ErrorKind::NotOwner,
            Error::NotInitialized(_) | Error::Refused(_) => ErrorKind::Refused,
            Error::Io { .. }
            | Error::Registry { .. }
            | Error::TaskStore { .. }
            | Error::Hook(_)
            | Error::Encode { .. }
            | Error::Failed(_) => ErrorKind::Failed,
            Error::Classified(c) => c.kind,
        }
    }

    /// Carry an error of another crate, reported as `kind`: what that
    /// crate's `From<ItsError> for Error` builds.
    pub fn classified(
        kind: ErrorKind,
        error: impl std::error::Error + Send + Sync + 'static,
    ) -> Error {
        Error::Classified(Classified {
            kind,
            error: Box::new(error),
        })
    }

    /// Attach what was being done and where to an I/O error.
    pub fn io(what: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { what, path, source }
    }

    /// Attach what was being encoded to a JSON error.
    pub fn encode(what: &'static str) -> impl FnOnce(serde_json::Error) -> Error {
        move |source| Error::Encode { what, source }
    }

    pub fn bad_value(key: &str, value: &str, reason: impl Into<String>) -> Self {
        Error::BadValue {
            key: key.to_owned(),
            value: value.to_owned(),
            reason: reason.into(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Validate a name, turning the failure into a core error naming the input.
pub fn jname(s: &str) -> Result<Jname> {
    Jname::new(s).map_err(|source| Error::Name {
        name: s.to_owned(),
        source,
    })
}
