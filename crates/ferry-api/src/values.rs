//! The value types of command arguments that are words of their own:
//! modes, keywords, interface names.

use std::net::Ipv4Addr;

use crate::args::{ArgError, FromArg};

crate::keyword_enum! {
    /// What `base` does.
    pub enum BaseMode { Create = "create", List = "list", Remove = "remove" }
}

crate::keyword_enum! {
    /// What a base is built from.
    pub enum BaseFrom { Busybox = "busybox", Dir = "dir" }
}

/// Node names, comma-separated (`ha_nodes=`); empty or `0` for any node.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NodeList(pub Vec<ferry_core::Jname>);

impl FromArg for NodeList {
    const TYPE: &'static str = "0|NODE[,...]";
    fn from_arg(key: &str, v: &str) -> Result<Self, ArgError> {
        if v.is_empty() || v == "0" {
            return Ok(NodeList(Vec::new()));
        }
        let mut nodes = v
            .split(',')
            .map(|n| ferry_core::Jname::new(n.trim()).map_err(|e| ArgError::invalid(key, v, e)))
            .collect::<Result<Vec<_>, _>>()?;
        nodes.sort();
        nodes.dedup();
        Ok(NodeList(nodes))
    }
    fn to_arg(&self) -> String {
        if self.0.is_empty() {
            return "0".into();
        }
        let names: Vec<&str> = self.0.iter().map(|n| n.as_str()).collect();
        names.join(",")
    }
}

/// The HA keys a create writes into a definition: none while they hold
/// their defaults (`ha=0`, any node, 3 restarts), so definitions of
/// unprotected envs stay as they were.
pub fn ha_definition(ha: bool, nodes: &NodeList, max_restart: u32) -> Vec<(&'static str, String)> {
    if !ha && nodes.0.is_empty() && max_restart == 3 {
        return Vec::new();
    }
    vec![
        ("ha", if ha { "1" } else { "0" }.to_owned()),
        ("ha_nodes", nodes.to_arg()),
        ("ha_max_restart", max_restart.to_string()),
    ]
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
    pub enum NodeMode {
        Add = "add", List = "list", Remove = "remove", Evacuate = "evacuate", Restore = "restore"
    }
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

crate::keyword_enum! {
    /// What `image` does.
    pub enum ImageMode { Add = "add", List = "list", Remove = "remove" }
}

crate::keyword_enum! {
    /// What `bhyve-dsk` does (CBSD's modes; `remove` is `delete`).
    pub enum DiskMode {
        Attach = "attach",
        Detach = "detach",
        Delete = "delete",
        Remove = "remove",
        Modify = "modify",
        List = "list",
    }
}

crate::keyword_enum! {
    /// The controller a VM's disk hangs on (CBSD's `dsk_controller`).
    pub enum DiskController { VirtioBlk = "virtio-blk", AhciHd = "ahci-hd" }
}

/// A disk's new size (CBSD's `dsk_size=`): `40g` is the size to reach,
/// `+30g` the growth.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SizeChange {
    To(Size),
    By(Size),
}

impl SizeChange {
    /// The size a disk of `now` bytes gets.
    pub fn applied_to(self, now: u64) -> Option<u64> {
        match self {
            SizeChange::To(s) => Some(s.0),
            SizeChange::By(s) => now.checked_add(s.0),
        }
    }
}

impl FromArg for SizeChange {
    const TYPE: &'static str = "[+]SIZE";
    fn from_arg(key: &str, v: &str) -> Result<Self, ArgError> {
        let (grow, t) = match v.strip_prefix('+') {
            Some(rest) => (true, rest),
            None => (false, v),
        };
        let s = Size::parse(t).map_err(|e| ArgError::invalid(key, v, e))?;
        Ok(if grow {
            SizeChange::By(s)
        } else {
            SizeChange::To(s)
        })
    }
    fn to_arg(&self) -> String {
        match self {
            SizeChange::To(s) => s.render(),
            SizeChange::By(s) => format!("+{}", s.render()),
        }
    }
}

/// Why a text is not a size.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    #[error("not a size such as 512m or 10g")]
    NotASize,
    #[error("unknown size unit {0:?} (use k, m, g or t)")]
    Unit(String),
    #[error("too large")]
    TooLarge,
}

/// Why a text is not a list of IPv4 addresses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Ip4Error {
    #[error("{0:?} is not an IPv4 address")]
    NotAnAddress(String),
    #[error("{0}")]
    Prefix(#[from] ipnet::PrefixLenError),
}

/// A size in bytes, written as a number with an optional suffix:
/// `b`, `k`, `m`, `g`, `t` (powers of 1024; CBSD's `1g`, `512m`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size(pub u64);

impl Size {
    pub fn parse(v: &str) -> Result<Size, SizeError> {
        let t = v.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: u64 = num.parse().map_err(|_| SizeError::NotASize)?;
        let mult: u64 = match unit.to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" => 1 << 10,
            "m" | "mb" => 1 << 20,
            "g" | "gb" => 1 << 30,
            "t" | "tb" => 1 << 40,
            _ => return Err(SizeError::Unit(unit.to_owned())),
        };
        n.checked_mul(mult).map(Size).ok_or(SizeError::TooLarge)
    }

    pub fn mib(self) -> u64 {
        self.0 >> 20
    }

    /// The shortest exact text form (`1g`, `512m`, `1536k`, `7`).
    pub fn render(self) -> String {
        for (shift, unit) in [(40, "t"), (30, "g"), (20, "m"), (10, "k")] {
            if self.0 != 0 && self.0.is_multiple_of(1u64 << shift) {
                return format!("{}{unit}", self.0 >> shift);
            }
        }
        self.0.to_string()
    }
}

impl FromArg for Size {
    const TYPE: &'static str = "SIZE";
    fn from_arg(key: &str, v: &str) -> Result<Self, ArgError> {
        Size::parse(v).map_err(|e| ArgError::invalid(key, v, e))
    }
    fn to_arg(&self) -> String {
        self.render()
    }
}

/// IPv4 addresses of a jail: `0` for none, else a comma-separated list of
/// `a.b.c.d/prefix` (prefix defaults to 24).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Ip4List(pub Vec<ipnet::Ipv4Net>);

impl Ip4List {
    pub fn parse(v: &str) -> Result<Self, Ip4Error> {
        if v.is_empty() || v == "0" {
            return Ok(Ip4List(Vec::new()));
        }
        v.split(',')
            .map(|item| {
                let item = item.trim();
                if let Ok(net) = item.parse::<ipnet::Ipv4Net>() {
                    return Ok(net);
                }
                let addr: Ipv4Addr = item
                    .parse()
                    .map_err(|_| Ip4Error::NotAnAddress(item.to_owned()))?;
                Ok(ipnet::Ipv4Net::new(addr, 24)?)
            })
            .collect::<Result<_, _>>()
            .map(Ip4List)
    }

    /// The text form stored in a definition.
    pub fn render(&self) -> String {
        if self.0.is_empty() {
            return "0".into();
        }
        self.0
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl FromArg for Ip4List {
    const TYPE: &'static str = "0|ADDR/PREFIX[,...]";
    fn from_arg(key: &str, v: &str) -> Result<Self, ArgError> {
        Ip4List::parse(v).map_err(|e| ArgError::invalid(key, v, e))
    }
    fn to_arg(&self) -> String {
        self.render()
    }
}
