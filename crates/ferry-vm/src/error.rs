//! What fails in the VM engine, beside the core's errors.

use std::path::PathBuf;

use ferry_core::{Error, ErrorKind, Jname};

use crate::qmp::QmpError;

/// How the VM engine fails.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("QMP of {jname}")]
    Qmp {
        jname: Jname,
        #[source]
        source: QmpError,
    },
    #[error("QEMU did not start {jname}: {said}")]
    NotStarted { jname: Jname, said: String },
    #[error("QEMU wrote no pid file for {0}")]
    NoPidFile(Jname),
    #[error("the incoming QEMU of {0} exited at once")]
    ExitedAtOnce(Jname),
    #[error("QEMU of {jname} (pid {pid}) did not die after SIGKILL")]
    Unkillable { jname: Jname, pid: i32 },
    #[error("qemu-img {args} failed: {said}")]
    Img { args: String, said: String },
    #[error("QMP socket path {} is longer than 107 bytes; use a shorter workdir or name", .0.display())]
    SocketPathTooLong(PathBuf),
    #[error("{qemu} cannot boot CPU model {cpu_model} with KVM or TCG")]
    NoAccelerator { qemu: String, cpu_model: String },
    #[error("VNC port {0} is taken")]
    VncTaken(u16),
    #[error("VNC port {port} is already used by {by}")]
    VncUsed { port: u16, by: Jname },
    #[error("{jname} cannot have snapshots: {why}")]
    NoSnapshots { jname: Jname, why: String },
    #[error("{jname} has no snapshot {name}")]
    NoSuchSnapshot { jname: Jname, name: String },
    #[error("{jname} has no disk {disk} attached")]
    NoSuchDisk { jname: Jname, disk: String },
    #[error("{what}")]
    Probe {
        what: String,
        #[source]
        source: crate::cpu::ProbeError,
    },
    /// A QEMU here would not run the guest as asked.
    #[error("{what}")]
    ProbeRefused {
        what: String,
        #[source]
        source: crate::cpu::ProbeError,
    },
    #[error("{0} is not waiting for a migration here")]
    NotIncoming(Jname),
    #[error("the lease of {jname} does not name {node} ({lease}): the guest stays paused")]
    LeaseNotHere {
        jname: Jname,
        node: String,
        lease: String,
    },
    #[error("the lease of {jname} moved to {node} (epoch {epoch}): it runs here now, not aborted")]
    LeaseArrived {
        jname: Jname,
        node: String,
        epoch: u64,
    },
    #[error("the incoming QEMU of {jname} is {status}, not done loading")]
    NotLoaded { jname: Jname, status: String },
    #[error("the transfer of {jname} stalled: nothing sent for {secs} s (is the link to the destination cut?); cancelled")]
    Stalled { jname: Jname, secs: u64 },
    #[error("the transfer of {jname} did not complete within {secs} s; cancelled")]
    TransferTimedOut { jname: Jname, secs: u64 },
    #[error("the transfer of {jname} {status}: {why}")]
    TransferEnded {
        jname: Jname,
        status: String,
        why: String,
    },
    #[error("{jname} is {status} here, not running again")]
    NotRunningAgain { jname: Jname, status: String },
}

impl VmError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            VmError::SocketPathTooLong(_)
            | VmError::NoAccelerator { .. }
            | VmError::VncTaken(_)
            | VmError::VncUsed { .. }
            | VmError::NotIncoming(_)
            | VmError::ProbeRefused { .. }
            | VmError::NoSnapshots { .. }
            | VmError::LeaseNotHere { .. }
            | VmError::LeaseArrived { .. } => ErrorKind::Refused,
            VmError::NoSuchSnapshot { .. } | VmError::NoSuchDisk { .. } => ErrorKind::NotFound,
            _ => ErrorKind::Failed,
        }
    }
}

impl From<VmError> for Error {
    fn from(e: VmError) -> Error {
        Error::classified(e.kind(), e)
    }
}
