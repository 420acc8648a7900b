//! The value types of command arguments that are words of their own:
//! modes, keywords, interface names.

use crate::args::{ArgError, FromArg};

crate::keyword_enum! {
    /// What `base` does.
    pub enum BaseMode { Create = "create", List = "list", Remove = "remove" }
}

crate::keyword_enum! {
    /// What a base is built from.
    pub enum BaseFrom { Busybox = "busybox", Dir = "dir" }
}

/// A host network interface name (a bridge), at most 15 bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IfName(pub String);

impl FromArg for IfName {
    const TYPE: &'static str = "IFNAME";
    fn from_arg(key: &str, v: &str) -> Result<Self, ArgError> {
        let ok = !v.is_empty()
            && v.len() <= 15
            && v.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
            && !v.starts_with(['-', '.']);
        if ok {
            Ok(IfName(v.to_owned()))
        } else {
            Err(ArgError::invalid(
                key,
                v,
                "not an interface name (1-15 of A-Z a-z 0-9 _ - .)",
            ))
        }
    }
    fn to_arg(&self) -> String {
        self.0.clone()
    }
}

crate::keyword_enum! {
    /// Disk image format.
    pub enum ImgType { Qcow2 = "qcow2", Raw = "raw" }
}

crate::keyword_enum! {
    /// How a VM's NIC is connected.
    pub enum NicKind { User = "user", Bridge = "bridge", None = "none" }
}

crate::keyword_enum! {
    /// What `bcheckpoint` does.
    pub enum CheckpointMode { Create = "create", List = "list", Destroyall = "destroyall" }
}

crate::keyword_enum! {
    /// What `task` does.
    pub enum TaskMode { New = "new", List = "list", Cancel = "cancel", Flush = "flush", Run = "run" }
}

crate::keyword_enum! {
    /// What `node` does.
    pub enum NodeMode { Add = "add", List = "list", Remove = "remove" }
}

crate::keyword_enum! {
    /// CBSD's `autoflush`: 0 keep the record, 1 remove it once the task is
    /// done, 2 remove it once the task finished whatever the result.
    pub enum TaskAutoflush { Keep = "0", OnSuccess = "1", Always = "2" }
}

crate::keyword_enum! {
    /// What `bsnapshot` and `jsnapshot` do (CBSD's modes).
    pub enum SnapshotMode {
        Create = "create",
        List = "list",
        Destroy = "destroy",
        Destroyall = "destroyall",
        Rollback = "rollback",
    }
}
