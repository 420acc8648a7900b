//! Node-to-node messages (DESIGN §8): every request a node daemon answers
//! on its node tube, `ferry.node.<node>`, and every reply it puts on the
//! tube the request names. This module is the cluster layer's leaf: the
//! types, their decoding, and the broker transport ([`transport`]); it
//! calls nothing of the task queue, the migration or the daemon. The
//! daemon's router maps each [`NodeRequest`] to the code that answers it.
//!
//! A message is one JSON object: `{"v": 1, "id": .., "from": .., "reply":
//! .., "body": {"kind": "task", ..}}`. A request that cannot be read at all
//! is buried; one whose envelope reads but whose body does not (another
//! protocol version, a kind this node does not know) is answered with a
//! typed refusal, [`NodeReply::Error`], so the asker learns why at once.

pub mod transport;

use ferry_api::exit;
use ferry_core::inventory::Inventory;
use ferry_core::ErrorKind;
use ferry_vm::cpu::GuestCpu;
use serde::{Deserialize, Serialize};

pub use transport::{
    broker_uri, node_tube, required_uri, set_broker, tasks_tube, Asker, RpcError, TubeEvent,
};

/// The protocol version this node speaks. A message of another version is
/// refused by name, never half-read.
pub const VERSION: u32 = 1;

/// Largest request a node tube accepts.
pub const MAX_REQUEST: usize = 64 * 1024;

/// A request on a node tube.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    /// The protocol version, [`VERSION`].
    pub v: u32,
    /// Unique per request; the reply carries it back.
    pub id: String,
    /// The asking node.
    pub from: String,
    /// The tube the reply goes to.
    pub reply: String,
    pub body: NodeRequest,
}

/// What one node asks of another.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum NodeRequest {
    /// The node's inventory (`node mode=add`).
    Inventory,
    /// Run this task there and reply with its result (tasks.md).
    Task(TaskRequest),
    /// Cancel the task that the request with this request's id brought.
    Cancel,
    /// `bmigrate`'s prechecks there: could it take the VM?
    MigrateCheck(MigrateCheck),
    /// Start the incoming QEMU, paused, and say where it listens.
    MigratePrepare(MigratePrepare),
    /// The lease is there now: resume the guest, watch it, reply.
    MigrateCommit(MigrateCommit),
    /// Throw the incoming QEMU away.
    MigrateAbort(MigrateAbort),
}

impl NodeRequest {
    /// The request's kind as it travels (`task`, `migrate-check` ...).
    pub fn kind(&self) -> &'static str {
        match self {
            NodeRequest::Inventory => "inventory",
            NodeRequest::Task(_) => "task",
            NodeRequest::Cancel => "cancel",
            NodeRequest::MigrateCheck(_) => "migrate-check",
            NodeRequest::MigratePrepare(_) => "migrate-prepare",
            NodeRequest::MigrateCommit(_) => "migrate-commit",
            NodeRequest::MigrateAbort(_) => "migrate-abort",
        }
    }
}

/// The task a `task` request carries: ferry command words, checked by the
/// receiving node with the same parser as the command line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskRequest {
    pub words: Vec<String>,
    #[serde(default)]
    pub retry: bool,
}

/// What the destination of a live migration must offer, as the source sees
/// the running guest.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MigrateCheck {
    pub jname: String,
    pub arch: String,
    pub accel: String,
    pub ram_mib: u64,
    /// The shared dirs' `dir.id`s, which must be the same file systems there.
    pub dir_ids: Vec<(String, String)>,
    /// The guest's CPU as its QEMU expands it (checked there flag by flag);
    /// absent when the source could not read it (it refuses then itself).
    pub cpu: Option<GuestCpu>,
    /// Move even with a QEMU known to corrupt guests (`force=1`).
    pub force: bool,
}

/// Start the incoming QEMU of `jname` with exactly this CPU.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MigratePrepare {
    pub jname: String,
    pub cpu: GuestCpu,
}

/// Resume `jname` there and watch it for `verify_ms` before replying.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MigrateCommit {
    pub jname: String,
    pub verify_ms: u64,
}

/// Throw away the incoming QEMU of `jname`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MigrateAbort {
    pub jname: String,
}

/// A reply on the tube a [`Request`] named (and a task's result on the
/// asking node's task tube).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reply {
    pub v: u32,
    /// The id of the request answered.
    pub id: String,
    pub body: NodeReply,
}

impl Reply {
    pub fn to(id: &str, body: NodeReply) -> Reply {
        Reply {
            v: VERSION,
            id: id.to_owned(),
            body,
        }
    }

    /// A refusal of request `id`: an exit code and why.
    pub fn error(id: &str, code: i32, message: impl Into<String>) -> Reply {
        Reply::to(
            id,
            NodeReply::Error {
                code,
                message: message.into(),
            },
        )
    }

    /// A refusal of request `id` with an error of this node.
    pub fn failed(id: &str, e: &ferry_core::Error) -> Reply {
        Reply::error(id, exit::for_kind(e.kind()), crate::context::error_chain(e))
    }
}

/// What a node answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum NodeReply {
    /// The request was refused or failed there: one of ferry's exit codes
    /// and why.
    Error {
        code: i32,
        message: String,
    },
    Inventory(Box<Inventory>),
    /// How a task sent there ended.
    TaskResult(TaskResult),
    /// Why it cannot take the VM (empty: it can).
    MigrateCheck {
        problems: Vec<String>,
    },
    /// Where the incoming QEMU listens.
    MigratePrepare {
        uri: String,
    },
    /// The guest runs there; what the watch found wrong, if anything, and
    /// how long ago it was resumed (absent: before this request, by that
    /// node's daemon).
    MigrateCommit {
        fault: Option<String>,
        resumed_us_ago: Option<u64>,
    },
    /// Whether there was an incoming QEMU to throw away.
    MigrateAbort {
        aborted: bool,
    },
}

impl NodeReply {
    /// The reply's kind as it travels.
    pub fn kind(&self) -> &'static str {
        match self {
            NodeReply::Error { .. } => "error",
            NodeReply::Inventory(_) => "inventory",
            NodeReply::TaskResult(_) => "task-result",
            NodeReply::MigrateCheck { .. } => "migrate-check",
            NodeReply::MigratePrepare { .. } => "migrate-prepare",
            NodeReply::MigrateCommit { .. } => "migrate-commit",
            NodeReply::MigrateAbort { .. } => "migrate-abort",
        }
    }

    /// The reply as a result: a refusal becomes [`RpcError::Refused`],
    /// naming `node`.
    pub fn into_result(self, node: &str) -> Result<NodeReply, RpcError> {
        match self {
            NodeReply::Error { code, message } => Err(RpcError::Refused {
                node: node.to_owned(),
                code,
                message,
            }),
            other => Ok(other),
        }
    }
}

/// How a task sent to another node ended there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskResult {
    /// The task's id on the node that ran it.
    pub task: u64,
    /// `done`, `failed`, `cancelled` or `interrupted`.
    pub state: String,
    pub exit_code: Option<i32>,
    pub reason: Option<String>,
    /// The end of the task's log there.
    #[serde(default)]
    pub output: String,
}

/// Why a message could not be taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Undecodable {
    /// Not even its envelope reads: nobody to answer; bury it.
    Unreadable(String),
    /// Its envelope reads but the rest does not (another protocol version,
    /// an unknown kind, a bad field): refuse it on its reply tube.
    Refused {
        id: String,
        reply: String,
        why: String,
    },
}

/// What every message's envelope holds, read before the rest, so that a
/// message this node cannot take is still answered.
#[derive(Deserialize)]
struct Head {
    #[serde(default)]
    v: Option<u32>,
    id: String,
    reply: String,
}

/// Read a request, refusing anything that is not exactly one.
pub fn decode_request(body: &[u8]) -> Result<Request, Undecodable> {
    if body.len() > MAX_REQUEST {
        return Err(Undecodable::Unreadable(format!(
            "{} bytes, more than {MAX_REQUEST}",
            body.len()
        )));
    }
    let head: Head =
        serde_json::from_slice(body).map_err(|e| Undecodable::Unreadable(e.to_string()))?;
    ferry_broker::check_tube(&head.reply)
        .map_err(|e| Undecodable::Unreadable(format!("reply tube: {e}")))?;
    let refuse = |why: String| Undecodable::Refused {
        id: head.id.clone(),
        reply: head.reply.clone(),
        why,
    };
    if head.v != Some(VERSION) {
        return Err(refuse(format!(
            "protocol version {}, this node speaks {VERSION} (ferry {}): run one ferry version across the cluster",
            head.v.map_or("none".into(), |v| v.to_string()),
            crate::VERSION
        )));
    }
    serde_json::from_slice(body)
        .map_err(|e| refuse(format!("a request this node cannot take: {e}")))
}

/// Read a reply (or a task's result).
pub fn decode_reply(body: &[u8]) -> Result<Reply, RpcError> {
    let r: Reply = serde_json::from_slice(body).map_err(RpcError::Malformed)?;
    if r.v != VERSION {
        return Err(RpcError::Version(r.v));
    }
    Ok(r)
}

/// The exit-code kind of a node's refusal.
pub fn kind_of_code(code: i32) -> ErrorKind {
    match code {
        exit::USAGE => ErrorKind::BadInput,
        exit::NOT_FOUND => ErrorKind::NotFound,
        exit::WRONG_STATE => ErrorKind::WrongState,
        exit::NOT_OWNER => ErrorKind::NotOwner,
        exit::REFUSED => ErrorKind::Refused,
        _ => ErrorKind::Failed,
    }
}

#[cfg(test)]
mod tests;
