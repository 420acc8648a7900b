//! The broker's errors: one variant per case a caller handles differently.

use std::fmt;
use std::io;
use std::time::Duration;

use crate::JobId;

/// Why a broker operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The broker URI is not `host:port`, `beanstalk://host:port` or
    /// `nats://host:port,...`.
    #[error("invalid broker URI {uri:?}: {reason}")]
    InvalidUri {
        /// The URI as given.
        uri: String,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// A tube name the server would refuse (or that could break the
    /// protocol); checked before anything is sent.
    #[error(
        "invalid tube name {0:?}: 1 to 200 of A-Z a-z 0-9 - + / ; . $ _ ( ), not starting with -"
    )]
    InvalidTube(String),

    /// The broker could not be reached (refused, unreachable, unresolvable,
    /// or no answer within the connect timeout).
    #[error("cannot connect to the broker at {addr}")]
    Connect {
        /// The address tried last.
        addr: String,
        /// Why the last attempt failed.
        #[source]
        source: io::Error,
    },

    /// The connection was lost (closed by the server, reset, or given up
    /// after an earlier error). Nothing is known about the command that was
    /// being sent, except for a put, which is [`Error::AmbiguousPut`].
    #[error("lost the connection to the broker")]
    Disconnected(#[source] io::Error),

    /// The server did not answer within the I/O timeout. The connection is
    /// given up, since the late reply would be taken for the next one's.
    #[error("the broker did not answer within {0:?}")]
    TimedOut(Duration),

    /// The connection was lost after a put was sent, before its reply came:
    /// the job may or may not exist. Putting it again may duplicate it.
    #[error(
        "a put may or may not have reached the broker: the connection failed before its reply"
    )]
    AmbiguousPut(#[source] Box<Error>),

    /// The job was reserved on a connection that has since been lost, so
    /// the server released it (another worker may hold it now); nothing
    /// was sent.
    #[error("job {0} was reserved on a lost connection; the broker has released it")]
    StaleJob(JobId),

    /// No such job, or not reserved by this connection (deleted, TTR
    /// expired, or reserved by another worker).
    #[error("job {0} not found (gone, or not reserved by this connection)")]
    NotFound(JobId),

    /// The server refused a put: the body is larger than its max job size.
    #[error("the broker refused a job body of {0} bytes as too big")]
    JobTooBig(usize),

    /// The server handed out a job whose body is larger than this client's
    /// configured maximum; the body was read and dropped, the job is still
    /// reserved by this connection.
    #[error("job {id} has a body of {size} bytes, above the configured maximum of {max}")]
    BodyTooLarge {
        /// The job, still reserved.
        id: JobId,
        /// The size the server announced.
        size: u64,
        /// [`ConnectOptions::max_job_size`](crate::ConnectOptions).
        max: usize,
    },

    /// The server is draining and takes no new jobs.
    #[error("the broker is draining and takes no new jobs")]
    Draining,

    /// The server accepted a put but buried the job (it ran out of memory
    /// to queue it); the job exists.
    #[error("the broker buried job {0} on put (out of memory)")]
    PutBuried(JobId),

    /// A job reserved by this connection reaches its TTR within a second;
    /// finish or touch it before reserving more.
    #[error("a job reserved by this connection is about to reach its TTR")]
    DeadlineSoon,

    /// Ignoring the last watched tube was refused.
    #[error("cannot ignore the last watched tube")]
    NotIgnored,

    /// The server reported an error for the command.
    #[error("the broker refused the command: {0}")]
    Server(ServerError),

    /// The server's reply is not valid protocol (unknown word, bad number,
    /// line or body too long, missing terminator). The connection is given
    /// up.
    #[error("broker protocol violation: {0}")]
    Protocol(crate::proto::Violation),

    /// A NATS JetStream request failed (the client reconnects by itself;
    /// a later call may succeed).
    #[error("JetStream: {what}: {detail}")]
    JetStream {
        /// What was being done.
        what: &'static str,
        /// What the client said.
        detail: String,
    },

    /// The operation has no counterpart on this broker.
    #[error("not supported on NATS JetStream: {0}")]
    Unsupported(&'static str),

    /// [`Reconnecting`](crate::Reconnecting) could not reconnect within its
    /// policy's `give_up_after`.
    #[error("gave up reconnecting to the broker after {after:?}")]
    GaveUp {
        /// How long it tried.
        after: Duration,
        /// The last attempt's error.
        #[source]
        last: Box<Error>,
    },
}

impl Error {
    /// Whether the connection is gone (lost, timed out, unreachable, out of
    /// step): a new connection may succeed where this one failed.
    pub fn is_connection_lost(&self) -> bool {
        matches!(
            self,
            Error::Connect { .. }
                | Error::Disconnected(_)
                | Error::TimedOut(_)
                | Error::AmbiguousPut(_)
                | Error::Protocol(_)
                | Error::JetStream { .. }
                | Error::GaveUp { .. }
        )
    }
}

/// An error word the server sent instead of a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerError {
    /// `BAD_FORMAT`: the server could not parse the command.
    BadFormat,
    /// `UNKNOWN_COMMAND`.
    UnknownCommand,
    /// `EXPECTED_CRLF`: a job body was not followed by `\r\n`.
    ExpectedCrlf,
    /// `OUT_OF_MEMORY`.
    OutOfMemory,
    /// `INTERNAL_ERROR`: a bug in the server.
    InternalError,
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ServerError::BadFormat => "BAD_FORMAT",
            ServerError::UnknownCommand => "UNKNOWN_COMMAND",
            ServerError::ExpectedCrlf => "EXPECTED_CRLF",
            ServerError::OutOfMemory => "OUT_OF_MEMORY",
            ServerError::InternalError => "INTERNAL_ERROR",
        })
    }
}
