//! Automatic failover (issue 16): an `ha=1` env of a node whose daemon is
//! frozen or killed, whose storage client dies or whose network is cut,
//! runs on another node within `lease_time` + 10 s, never on two at once,
//! and stays where it is when the broker dies; HA's placement (`ha_nodes=`) and its limit
//! (`ha_max_restart=`); a dead env restarted on its own node; a node
//! evacuated for maintenance and restored.

use std::time::Duration;

use ferry_testkit::broker::Transport;
use ferry_testkit::failover::{running_on, runs, table, Fault, Rig};
use ferry_testkit::trials::Rng;
use ferry_testkit::view::{bls_row, node_alive, wait_until};
use ferry_testkit::{wait_counter, Daemon, Storage, TestCluster, TestWorkdir};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_ferry");
const DAEMON: [&str; 3] = ["heartbeat=1", "lease_time=4", "fence_time=2"];
const LEASE_TIME: Duration = Duration::from_secs(4);

fn name(i: usize) -> String {
    format!("n{}", i + 1)
}

/// Every node's daemon running, each seeing every other alive.
fn daemons(c: &TestCluster) -> Vec<Option<Daemon>> {
    let d = c.nodes.iter().map(|n| Some(n.daemon(&DAEMON))).collect();
    all_alive(c);
    d
}

fn all_alive(c: &TestCluster) {
    wait_until(
        "every daemon sees every other node alive",
        Duration::from_secs(20),
        || {
            (0..c.nodes.len()).all(|i| {
                (0..c.nodes.len())
                    .filter(|k| *k != i)
                    .all(|k| node_alive(&c.nodes[i], &name(k)))
            })
        },
    );
}

/// `ferry ha --json` on `t`, the row of `j`.
fn ha_row(t: &TestWorkdir, j: &str) -> Value {
    let v: Value =
        serde_json::from_str(&t.ok(&["ha", "lease_time=4", "--json"])).expect("ha --json");
    v.as_array()
        .into_iter()
        .flatten()
        .find(|r| r["jname"] == j)
        .cloned()
        .unwrap_or(Value::Null)
}

/// The status `jls` or `bls` shows for `j` on `t`.
fn status(t: &TestWorkdir, j: &str) -> String {
    let row = t
        .jls()
        .remove(j)
        .or_else(|| bls_row(t, j))
        .unwrap_or(Value::Null);
    row["status"].as_str().unwrap_or("absent").to_owned()
}

/// Whether `j` (a jail or a VM) is registered on `t`.
fn holds(t: &TestWorkdir, j: &str) -> bool {
    t.jls().contains_key(j) || bls_row(t, j).is_some()
}

/// Five faults of one kind at random moments on the node that runs an
/// `ha=1` jail (three nodes on GlusterFS, each reaching it through its own
/// network namespace): the jail never runs twice, runs elsewhere within
/// `lease_time` + 10 s when its node is lost, and stays put when only the
/// broker is.
fn fault_trials(fault: Fault) {
    let mut rig = Rig::new(BIN, LEASE_TIME.as_secs());
    let mut rng = Rng::from_env();
    let mut trials = Vec::new();
    for n in 0..5 {
        let t = rig.trial(fault, &mut rng);
        eprintln!("trial {n}: {t}");
        assert!(t.failure.is_none(), "{fault:?} trial {n}: {:?}", t.failure);
        if fault.moves() {
            let took = t.failover.expect("failover time");
            assert!(
                took <= LEASE_TIME + Duration::from_secs(10),
                "{fault:?} trial {n}: {took:?}"
            );
        }
        trials.push(t);
    }
    eprintln!("{}", table(&trials));
}

#[test]
fn ha_survives_a_frozen_daemon() {
    fault_trials(Fault::FreezeDaemon);
}

#[test]
fn ha_survives_a_killed_daemon() {
    fault_trials(Fault::KillDaemon);
}

#[test]
fn ha_survives_a_lost_storage_client() {
    fault_trials(Fault::CutStorage);
}

#[test]
fn ha_moves_nothing_when_the_broker_dies() {
    fault_trials(Fault::KillBroker);
}

#[test]
fn ha_survives_a_node_cut_off_the_network() {
    fault_trials(Fault::CutNetwork);
}

#[test]
fn ha_goes_only_to_ha_nodes_gives_up_after_ha_max_restart_and_leaves_others_alone() {
    let c = TestCluster::plain(BIN, 3);
    let mut ds = daemons(&c);
    let (n1, n3) = (&c.nodes[0], &c.nodes[2]);
    n1.ok(&[
        "jcreate",
        "jname=pinned",
        "ha=1",
        "ha_nodes=n3",
        "ha_max_restart=1",
        "runasap=1",
    ]);
    n1.ok(&["jcreate", "jname=plain1", "runasap=1"]);
    // Bad HA values are refused by name.
    let e = n1.fails(2, &["jcreate", "jname=bad", "ha_nodes=../x"]);
    assert!(e.contains("ha_nodes"), "{e}");
    let e = n1.fails(2, &["jset", "jname=plain1", "ha=maybe"]);
    assert!(e.contains("ha"), "{e}");

    let d1 = ds[0].take().expect("n1's daemon");
    d1.kill();
    // n2 owns nothing and comes first by name: ha_nodes sends it to n3.
    wait_until("pinned runs on n3", LEASE_TIME * 4, || runs(n3, "pinned"));
    assert!(!c.nodes[1].jls().contains_key("pinned"));
    // Without ha=1, an env stays with its dead node.
    std::thread::sleep(LEASE_TIME);
    assert!(
        (1..3).all(|i| !c.nodes[i].jls().contains_key("plain1")),
        "an unprotected env was moved"
    );
    assert_eq!(ha_row(n3, "pinned")["attempts"], 1);

    // n3 dies too: one attempt an hour was allowed, so HA gives up.
    ds[0] = Some(n1.daemon(&DAEMON));
    let d3 = ds[2].take().expect("n3's daemon");
    d3.kill();
    std::thread::sleep(LEASE_TIME * 3);
    assert_eq!(running_on(&c.nodes, "pinned"), None, "HA did not give up");
    let row = ha_row(n1, "pinned");
    assert_eq!(
        (
            row["node"].as_str(),
            row["attempts"].as_u64(),
            row["max_restart"].as_u64()
        ),
        (Some("n3"), Some(1), Some(1)),
        "{row}"
    );
}

#[test]
fn a_dead_ha_jail_is_started_again_on_its_own_node() {
    let c = TestCluster::plain(BIN, 2);
    let _ds = daemons(&c);
    let n1 = &c.nodes[0];
    n1.ok(&["jcreate", "jname=phoenix", "ha=1", "runasap=1"]);
    n1.ok(&["jcreate", "jname=mortal", "runasap=1"]);
    // Both die (their init killed); a deliberately stopped one stays so.
    let pid_of = |j: &str| ferry_testkit::view::runtime_of(n1, j).and_then(|rt| rt["pid"].as_i64());
    let old = pid_of("phoenix");
    for j in ["phoenix", "mortal"] {
        let pid = Pid::from_raw(pid_of(j).expect("pid") as i32);
        kill(pid, Signal::SIGKILL).expect("SIGKILL");
    }
    wait_until("both are dead", Duration::from_secs(5), || {
        !runs(n1, "phoenix") && !runs(n1, "mortal")
    });
    wait_until(
        "HA starts phoenix again",
        LEASE_TIME + Duration::from_secs(10),
        || runs(n1, "phoenix"),
    );
    assert_ne!(pid_of("phoenix"), old);
    let row = ha_row(n1, "phoenix");
    assert_eq!(
        (row["last"].as_str(), row["last_result"].as_str()),
        (Some("restart"), Some("running")),
        "{row}"
    );
    assert!(!runs(n1, "mortal"), "an unprotected env was restarted");
    n1.ok(&["jstop", "jname=phoenix"]);
    std::thread::sleep(LEASE_TIME);
    assert!(
        !runs(n1, "phoenix"),
        "HA restarted a jail stopped on purpose"
    );
}

#[test]
fn a_node_evacuated_for_maintenance_is_emptied_refuses_arrivals_and_gets_its_envs_back() {
    let (c, _b) = TestCluster::with_broker(BIN, 3, Storage::Plain, Transport::Beanstalkd, false);
    let ds: Vec<Daemon> = c.nodes.iter().map(|n| n.daemon(&DAEMON)).collect();
    for (i, n) in c.nodes.iter().enumerate() {
        for k in (0..3).filter(|k| *k != i) {
            n.ok(&["node", "mode=add", &format!("node={}", name(k))]);
        }
    }
    all_alive(&c);
    let (n1, n2) = (&c.nodes[0], &c.nodes[1]);
    n1.ok(&["jcreate", "jname=ej1", "runasap=1"]);
    n1.ok(&["jcreate", "jname=ej2"]);
    n1.bcreate_guest("ev1", &[]);
    n1.ok(&["bstart", "jname=ev1"]);
    wait_counter(n1, "ev1", "the guest never counted", |c| c.len() >= 2);
    n1.bcreate_guest("ev2", &[]);

    let e = n2.fails(6, &["node", "mode=evacuate", "node=n1"]);
    assert!(e.contains("run it on n1"), "{e}");
    let out = n1.ok(&["node", "mode=evacuate", "lease_time=4"]);
    eprintln!("{out}");
    for j in ["ej1", "ej2", "ev1", "ev2"] {
        assert!(!holds(n1, j), "n1 still holds {j}");
    }
    let where_ = |j: &str| (1..3).find(|i| holds(&c.nodes[*i], j));
    for j in ["ej1", "ej2", "ev1", "ev2"] {
        assert!(where_(j).is_some(), "{j} is on no other node");
    }
    // The placement spreads them: each of n2 and n3 took some.
    let on_n2 = ["ej1", "ej2", "ev1", "ev2"]
        .iter()
        .filter(|j| where_(j) == Some(1))
        .count();
    assert!((1..=3).contains(&on_n2), "{on_n2} of 4 went to n2");
    let ev1_on = where_("ev1").expect("ev1 moved");
    assert_eq!(status(&c.nodes[ev1_on], "ev1"), "running");
    wait_counter(&c.nodes[ev1_on], "ev1", "the guest stopped counting", |c| {
        c.len() >= 2
    });
    assert!(runs(&c.nodes[where_("ej1").expect("ej1")], "ej1"));
    assert!(!runs(&c.nodes[where_("ej2").expect("ej2")], "ej2"));

    // Nothing lands on n1 meanwhile.
    let e = c.nodes[ev1_on].fails(6, &["bmigrate", "jname=ev1", "node=n1"]);
    assert!(e.contains("maintenance"), "{e}");

    let out = n1.ok(&["node", "mode=restore"]);
    eprintln!("{out}");
    assert_eq!(status(n1, "ej1"), "running");
    assert_eq!(status(n1, "ej2"), "stopped");
    assert_eq!(status(n1, "ev1"), "running");
    assert_eq!(status(n1, "ev2"), "stopped");
    wait_counter(n1, "ev1", "the guest stopped counting", |c| c.len() >= 2);
    n1.fails(6, &["node", "mode=restore"]);
    for j in ["ej1", "ej2", "ev1", "ev2"] {
        assert!(
            (1..3).all(|i| !holds(&c.nodes[i], j)),
            "{j} is still elsewhere"
        );
    }
    n1.ok(&["jstop", "jname=ej1"]);
    n1.ok(&["bstop", "jname=ev1"]);
    drop(ds);
}
