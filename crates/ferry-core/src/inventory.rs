//! The node inventory recorded by `initenv`: what a migration precheck or a
//! controller needs to know about a node.

use std::collections::BTreeSet;
use std::fs;

use serde::{Deserialize, Serialize};

/// Facts about this node.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Inventory {
    pub nodename: String,
    pub addresses: Vec<String>,
    pub arch: String,
    pub cpu_vendor: String,
    pub cpu_model: String,
    pub cpu_flags: Vec<String>,
    pub ncpu: usize,
    pub mem_bytes: u64,
    /// The node's QEMU (`qemu-system-<arch>` or `initenv qemu=`) `--version`,
    /// first line; absent when it does not run.
    pub qemu_version: Option<String>,
    /// The accelerator VMs with the default CPU model get (`kvm`, `tcg`),
    /// found by booting guest code; absent without QEMU.
    #[serde(default)]
    pub accel: Option<String>,
    pub ferry_version: String,
}

impl Inventory {
    /// Gather the inventory of the machine this runs on; `qemu_version` is
    /// the node's QEMU's, as its caller found it.
    pub fn collect(nodename: &str, ferry_version: &str, qemu_version: Option<String>) -> Inventory {
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let field = |name: &str| {
            cpuinfo
                .lines()
                .filter_map(|l| l.split_once(':'))
                .find(|(k, _)| k.trim() == name)
                .map(|(_, v)| v.trim().to_owned())
                .unwrap_or_default()
        };
        let cpu_flags: BTreeSet<String> = field("flags")
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        let ncpu = cpuinfo
            .lines()
            .filter(|l| l.starts_with("processor"))
            .count();
        Inventory {
            nodename: nodename.to_owned(),
            addresses: addresses(),
            arch: std::env::consts::ARCH.to_owned(),
            cpu_vendor: field("vendor_id"),
            cpu_model: field("model name"),
            cpu_flags: cpu_flags.into_iter().collect(),
            ncpu,
            mem_bytes: mem_total(),
            qemu_version,
            accel: None,
            ferry_version: ferry_version.to_owned(),
        }
    }
}

fn addresses() -> Vec<String> {
    let Ok(ifaddrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    let mut out: BTreeSet<String> = BTreeSet::new();
    for ifa in ifaddrs {
        if ifa.interface_name == "lo" {
            continue;
        }
        let Some(addr) = ifa.address else { continue };
        if let Some(v4) = addr.as_sockaddr_in() {
            out.insert(v4.ip().to_string());
        } else if let Some(v6) = addr.as_sockaddr_in6() {
            if !v6.ip().is_loopback() {
                out.insert(v6.ip().to_string());
            }
        }
    }
    out.into_iter().collect()
}

fn mem_total() -> u64 {
    fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collects_this_machine() {
        let inv = Inventory::collect("n1", "0.0.0", None);
        assert_eq!(inv.nodename, "n1");
        assert!(!inv.cpu_flags.is_empty());
        assert!(inv.mem_bytes > 0 && inv.ncpu > 0);
        assert_eq!(inv.arch, std::env::consts::ARCH);
    }
}
