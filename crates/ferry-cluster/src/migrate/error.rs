//! How a move between nodes fails, beside the errors of what it calls:
//! each case says where the env is now.

use ferry_core::{Error, ErrorKind, Jname};

use crate::rpc::RpcError;

/// How a `jmigrate` or `bmigrate` fails.
#[derive(Debug, thiserror::Error)]
pub enum MoveError {
    /// A precheck refused it (every reason at once); nothing moved.
    #[error("{verb} {jname} to {node} refused, nothing moved: {}", .problems.join("; "))]
    Refused {
        verb: &'static str,
        jname: Jname,
        node: Jname,
        problems: Vec<String>,
    },
    /// The destination could not take the guest.
    #[error("{node} could not prepare")]
    NotPrepared {
        node: Jname,
        #[source]
        cause: RpcError,
    },
    /// A live move failed before the hand-over: the guest runs here.
    #[error("{jname} not moved, it runs here")]
    RunsHere {
        jname: Jname,
        #[source]
        cause: Box<Error>,
    },
    /// A live move failed, and the guest could not be continued here.
    #[error("{jname} not moved ({why}), and it could not be continued here")]
    Stuck {
        jname: Jname,
        why: String,
        #[source]
        cause: Box<Error>,
    },
    /// Moved, but the watch of the guest there found a fault.
    #[error("{jname} moved to {node}, but the guest is not healthy there: {fault}")]
    Unhealthy {
        jname: Jname,
        node: Jname,
        fault: String,
    },
    /// A cold move failed there: the jail is back here.
    #[error("{jname} not moved ({why}); it is back here{}", if *.running { ", running" } else { "" })]
    Back {
        jname: Jname,
        why: String,
        running: bool,
    },
    /// A cold move failed there; back here, but it would not start.
    #[error("{jname} not moved ({why}); registered here again but not started")]
    BackStopped {
        jname: Jname,
        why: String,
        #[source]
        cause: Box<Error>,
    },
    /// A cold move failed there, and it could not be registered here.
    #[error("{jname}: {why}; it could not be registered here again (if {node} took it after all, it is there: see `ferry jls` there)")]
    NotBack {
        jname: Jname,
        node: Jname,
        why: String,
        #[source]
        cause: Box<Error>,
    },
    /// Registered there, did not start there, and could not be
    /// unregistered there.
    #[error("{jname} is registered on {node} but did not start there ({why}), and could not be unregistered there: start it there, or unregister it there and register it here")]
    StrandedThere {
        jname: Jname,
        node: Jname,
        why: String,
    },
    /// This node has no address towards the broker for the source to
    /// send to.
    #[error("no route to the broker {broker}")]
    NoRoute {
        broker: String,
        #[source]
        source: std::io::Error,
    },
}

impl MoveError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            MoveError::Refused { .. } => ErrorKind::Refused,
            _ => ErrorKind::Failed,
        }
    }
}

impl From<MoveError> for Error {
    fn from(e: MoveError) -> Error {
        Error::classified(e.kind(), e)
    }
}
