//! What a test sees of a VM across the nodes of a [`crate::TestCluster`]:
//! listings, runtime records, the lease, its QEMU processes.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{TestCluster, TestWorkdir};

/// Whether `t`'s `node --json` shows `node` alive.
pub fn node_alive(t: &TestWorkdir, node: &str) -> bool {
    let v: Value = serde_json::from_str(&t.ok(&["node", "--json"])).expect("JSON");
    v.as_array()
        .into_iter()
        .flatten()
        .any(|n| n["node"] == node && n["state"] == "alive")
}

/// `bls --json` of `t`, the row of `vm` if listed.
pub fn bls_row(t: &TestWorkdir, vm: &str) -> Option<Value> {
    let v: Value = serde_json::from_str(&t.ok(&["bls", "--json"])).expect("JSON");
    v.as_array()
        .into_iter()
        .flatten()
        .find(|r| r["jname"] == vm)
        .cloned()
}

/// The runtime record of `vm` on `t`, if there is one.
pub fn runtime_of(t: &TestWorkdir, vm: &str) -> Option<Value> {
    serde_json::from_slice(&std::fs::read(t.root().join(format!("jails/{vm}/runtime.json"))).ok()?)
        .ok()
}

/// The pid of the incoming QEMU of `vm` on `t`, once it is prepared.
pub fn incoming_pid(t: &TestWorkdir, vm: &str) -> Option<i32> {
    let rt = runtime_of(t, vm)?;
    (rt["phase"] == "incoming")
        .then(|| rt["pid"].as_i64())??
        .try_into()
        .ok()
}

/// Which node (index) the owner lease of `vm` names.
pub fn lease_owner(c: &TestCluster, vm: &str) -> Option<usize> {
    let owner =
        std::fs::read_to_string(c.shared().join(format!("jails-system/{vm}/owner"))).ok()?;
    let node = owner.lines().find_map(|l| l.strip_prefix("node=n"))?;
    node.trim().parse::<usize>().ok()?.checked_sub(1)
}

/// The QEMU processes of `vm` on this machine.
pub fn qemu_pids_of(vm: &str) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
            let cmd = String::from_utf8_lossy(&cmd);
            (cmd.contains("qemu-system") && cmd.contains(&format!("guest={vm},"))).then_some(pid)
        })
        .collect()
}

/// Poll `f` until it holds or `limit` passes; whether it held.
pub fn wait_for(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let t0 = Instant::now();
    loop {
        if f() {
            return true;
        }
        if t0.elapsed() >= limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Poll `f` until it holds; panics after `limit`.
#[track_caller]
pub fn wait_until(what: &str, limit: Duration, f: impl FnMut() -> bool) {
    assert!(wait_for(limit, f), "{what}: not within {limit:?}");
}
