//! Live migration of VMs (real QEMU under TCG, the counting test guest)
//! between nodes in network namespaces, over a real beanstalkd: the guest
//! keeps counting on the destination, back and forth; prechecks refuse
//! with every reason at once; failures leave exactly one running copy.

use std::time::{Duration, Instant};

use ferry_testkit::beanstalkd::Beanstalkd;
use ferry_testkit::{guest_counters, wait_counter, Daemon, Storage, TestCluster, TestWorkdir};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_ferry");

struct Pair {
    c: TestCluster,
    _b: Beanstalkd,
    _daemons: Vec<Daemon>,
}

/// Two nodes in namespaces that know each other, daemons running, and a
/// running counting guest `vm` on n1.
fn pair(storage: Storage, vm: &str) -> Pair {
    let (c, b) = TestCluster::with_broker(BIN, 2, storage, false);
    let daemons = c.nodes.iter().map(|n| n.daemon(&["heartbeat=1"])).collect();
    let (n1, n2) = (&c.nodes[0], &c.nodes[1]);
    n1.ok(&["node", "mode=add", "node=n2"]);
    n2.ok(&["node", "mode=add", "node=n1"]);
    let t0 = Instant::now();
    while !(alive(n1, "n2") && alive(n2, "n1")) {
        assert!(t0.elapsed() < Duration::from_secs(15), "nodes not alive");
        std::thread::sleep(Duration::from_millis(200));
    }
    n1.bcreate_guest(vm, &[]);
    n1.ok(&["bstart", &format!("jname={vm}")]);
    wait_counter(n1, vm, "the guest never counted", |c| c.len() >= 2);
    Pair {
        c,
        _b: b,
        _daemons: daemons,
    }
}

fn alive(t: &TestWorkdir, node: &str) -> bool {
    let v: Value = serde_json::from_str(&t.ok(&["node", "--json"])).expect("JSON");
    v.as_array()
        .into_iter()
        .flatten()
        .any(|n| n["node"] == node && n["state"] == "alive")
}

/// `bls --json` of `t`, the row of `vm` if listed.
fn row(t: &TestWorkdir, vm: &str) -> Option<Value> {
    let v: Value = serde_json::from_str(&t.ok(&["bls", "--json"])).expect("JSON");
    v.as_array()
        .into_iter()
        .flatten()
        .find(|r| r["jname"] == vm)
        .cloned()
}

/// Where `vm` runs: exactly one node lists it, running, and owns it.
#[track_caller]
fn runs_only_on(c: &TestCluster, vm: &str, on: usize) {
    for (i, n) in c.nodes.iter().enumerate() {
        let r = row(n, vm);
        if i == on {
            let r = r.unwrap_or_else(|| panic!("{vm} not listed on n{}", i + 1));
            assert_eq!(r["status"], "running", "on n{}: {r}", i + 1);
        } else {
            assert!(r.is_none(), "{vm} still listed on n{}: {r:?}", i + 1);
        }
    }
    let owner = std::fs::read_to_string(c.shared().join(format!("jails-system/{vm}/owner")))
        .expect("lease");
    assert!(owner.starts_with(&format!("node=n{}\n", on + 1)), "{owner}");
    // One QEMU of it in the whole machine.
    let qemus = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            std::fs::read(e.path().join("cmdline"))
                .map(|c| {
                    let c = String::from_utf8_lossy(&c);
                    c.contains("qemu-system") && c.contains(&format!("guest={vm},"))
                })
                .unwrap_or(false)
        })
        .count();
    assert_eq!(qemus, 1, "QEMUs of {vm}");
}

/// The guest counted on across a move: no restart (the counter never went
/// back), and it advanced after it.
#[track_caller]
fn kept_counting(t: &TestWorkdir, vm: &str, before: u64) {
    let after = wait_counter(t, vm, "the guest stopped counting", |c| {
        c.last().is_some_and(|l| *l > before + 1)
    });
    let seq: Vec<u64> = after.iter().copied().skip_while(|c| *c < before).collect();
    assert!(
        seq.windows(2).all(|w| w[1] > w[0]),
        "the counter went back (a reboot?): {seq:?}"
    );
}

#[test]
fn a_running_vm_moves_live_back_and_forth_and_keeps_counting() {
    let p = pair(Storage::Plain, "lm");
    let (n1, n2) = (&p.c.nodes[0], &p.c.nodes[1]);
    let out = n1.ok(&["bmigrate", "jname=lm", "node=n2", "check=1"]);
    assert!(out.contains("every precheck passed"), "{out}");
    runs_only_on(&p.c, "lm", 0);
    let mut on = 0;
    for round in 0..4 {
        let (from, to) = (&p.c.nodes[on], &p.c.nodes[1 - on]);
        let before = *guest_counters(from, "lm").last().expect("counter");
        let out = from.ok(&["bmigrate", "jname=lm", &format!("node=n{}", 2 - on)]);
        eprintln!("round {round}: {}", out.trim());
        assert!(out.contains("live-migrated"), "{out}");
        on = 1 - on;
        runs_only_on(&p.c, "lm", on);
        kept_counting(to, "lm", before);
    }
    let _ = (n1, n2);
}
