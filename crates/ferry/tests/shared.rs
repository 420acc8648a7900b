//! Zero-copy registration between nodes sharing their shared dirs (the
//! plain shared directory variant): moving jails and VMs, owner leases,
//! distinct refusals, crashes at every step, forced takeover.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

use ferry_core::heartbeat;
use ferry_testkit::{assert_same, snapshot, Storage, TestCluster, TestWorkdir};

const BIN: &str = env!("CARGO_BIN_EXE_ferry");

fn owner(t: &TestWorkdir, j: &str) -> String {
    fs::read_to_string(t.root().join("jails-system").join(j).join("owner")).unwrap_or_default()
}

#[test]
fn a_jail_moves_between_nodes_without_copying() {
    let c = TestCluster::plain(BIN, 2);
    let (n1, n2) = (&c.nodes[0], &c.nodes[1]);
    n1.ok(&["jcreate", "jname=mover", "runasap=1"]);
    n1.ok(&[
        "jexec",
        "jname=mover",
        "sh",
        "-c",
        "echo written-on-n1 > /root/proof",
    ]);
    let proof = n1.root().join("jails-data/mover-data/root/proof");
    let inode = fs::metadata(&proof).unwrap().ino();
    assert_eq!(owner(n1, "mover"), "node=n1\nepoch=1\n");

    n1.fails(4, &["junregister", "jname=mover"]); // running
    n1.ok(&["jstop", "jname=mover"]);
    n2.fails(5, &["jregister", "jname=mover"]); // still registered, owned by n1
    n2.fails(5, &["junregister", "jname=mover"]);
    let data_before = snapshot(&n1.root().join("jails-data"));
    n1.ok(&["junregister", "jname=mover"]);
    assert!(n1.root().join("jails-rcconf/rc.conf_mover").is_file());
    assert!(!n1.root().join("jails-system/mover/rc.conf_mover").exists());
    assert!(n1.jls().is_empty());
    assert_eq!(owner(n1, "mover"), "node=\nepoch=1\n");
    n1.fails(4, &["junregister", "jname=mover"]); // already unregistered
    n1.fails(3, &["jstart", "jname=mover"]);

    n2.ok(&["jregister", "jname=mover"]);
    n2.fails(4, &["jregister", "jname=mover"]); // already registered
    assert_eq!(owner(n2, "mover"), "node=n2\nepoch=2\n");
    assert!(!n2.root().join("jails-rcconf/rc.conf_mover").exists());
    assert_same(
        &data_before,
        &snapshot(&n2.root().join("jails-data")),
        "registering",
    );
    assert_eq!(
        fs::metadata(n2.root().join("jails-data/mover-data/root/proof"))
            .unwrap()
            .ino(),
        inode
    );
    n2.ok(&["jstart", "jname=mover"]);
    assert_eq!(
        n2.ok(&["jexec", "jname=mover", "cat", "/root/proof"]),
        "written-on-n1\n"
    );
    n1.fails(5, &["jregister", "jname=mover"]);
    n2.ok(&["jstop", "jname=mover"]);
    n2.ok(&["jremove", "jname=mover"]);
    n1.fails(3, &["jregister", "jname=mover"]);
    n1.fails(3, &["jregister", "jname=nothing*"]);
}

#[test]
fn globs_move_many_and_one_failure_does_not_stop_the_others() {
    let c = TestCluster::plain(BIN, 2);
    let (n1, n2) = (&c.nodes[0], &c.nodes[1]);
    for j in ["w1", "w2", "w3"] {
        n1.ok(&["jcreate", &format!("jname={j}")]);
    }
    n1.ok(&["jstart", "jname=w2"]);
    let r = n1.run(&["junregister", "jname=w*", "--json"]);
    assert_eq!(r.code, 4, "{}{}", r.stdout, r.stderr);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let codes: Vec<i64> = v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["code"].as_i64().unwrap())
        .collect();
    assert_eq!(codes, [0, 4, 0]);
    // Garble one unregistered definition: its register fails, the other goes through.
    let rc = n1.root().join("jails-rcconf/rc.conf_w3");
    let garbled = fs::read_to_string(&rc)
        .unwrap()
        .replace("baserw=\"0\";", "baserw=\"$(reboot)\";");
    fs::write(&rc, &garbled).unwrap();
    let before = snapshot(&c.shared());
    let r = n2.run(&["jregister", "jname=w*", "--json"]);
    assert_eq!(r.code, 2, "{}{}", r.stdout, r.stderr);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let res = v["results"].as_array().unwrap();
    assert_eq!(
        (res[0]["jname"].as_str(), res[0]["code"].as_i64()),
        (Some("w1"), Some(0))
    );
    assert_eq!(
        (res[1]["jname"].as_str(), res[1]["code"].as_i64()),
        (Some("w3"), Some(2))
    );
    assert_eq!(
        fs::read_to_string(&rc).unwrap(),
        garbled,
        "the garbled definition was changed"
    );
    assert!(before.contains_key("jails-rcconf/rc.conf_w3"));
    assert!(n2.jls().contains_key("w1") && !n2.jls().contains_key("w3"));
    n1.ok(&["jstop", "jname=w2"]);
}

#[test]
#[cfg_attr(
    not(feature = "crashpoints"),
    ignore = "needs the crash points: cargo test --features ferry/crashpoints"
)]
fn a_crash_at_any_step_of_register_or_unregister_is_finished_by_the_next_command() {
    let c = TestCluster::plain(BIN, 2);
    let (n1, n2) = (&c.nodes[0], &c.nodes[1]);
    n1.ok(&["jcreate", "jname=c1"]);
    let defs = |t: &TestWorkdir| {
        (
            t.root().join("jails-system/c1/rc.conf_c1").exists(),
            t.root().join("jails-rcconf/rc.conf_c1").exists(),
        )
    };
    for step in 1..=4 {
        let at = format!("unregister:{step}");
        let r = n1.run_env(&["junregister", "jname=c1"], &[("FERRY_CRASH_AT", &at)]);
        assert_ne!(r.code, 0, "{at}: no crash");
        let (reg, unreg) = defs(n1);
        assert!(reg || unreg, "{at}: the definition is lost");
        // The next command on the env finishes the interrupted one.
        let r = n1.run(&["junregister", "jname=c1"]);
        assert!(r.code == 0 || r.code == 4, "{at}: {}{}", r.stdout, r.stderr);
        assert_eq!(defs(n1), (false, true), "{at}");
        assert!(n1.jls().is_empty(), "{at}: row left");
        assert!(
            owner(n1, "c1").starts_with("node=\n"),
            "{at}: lease not released"
        );

        if step > 3 {
            continue;
        }
        let at = format!("register:{step}");
        let r = n2.run_env(&["jregister", "jname=c1"], &[("FERRY_CRASH_AT", &at)]);
        assert_ne!(r.code, 0, "{at}: no crash");
        let (reg, unreg) = defs(n2);
        assert!(reg || unreg, "{at}: the definition is lost");
        // n2 took the lease before it crashed: nobody else may register.
        n1.fails(5, &["jregister", "jname=c1"]);
        let r = n2.run(&["jregister", "jname=c1"]);
        assert!(r.code == 0 || r.code == 4, "{at}: {}{}", r.stdout, r.stderr);
        assert_eq!(defs(n2), (true, false), "{at}");
        assert!(n2.jls().contains_key("c1"), "{at}: no row");
        assert!(owner(n2, "c1").starts_with("node=n2\n"), "{at}");
        n2.ok(&["junregister", "jname=c1"]);
        n1.ok(&["jregister", "jname=c1"]);
    }
}

#[test]
#[cfg_attr(
    not(feature = "crashpoints"),
    ignore = "needs the crash points: cargo test --features ferry/crashpoints"
)]
fn a_crash_in_the_middle_of_a_glob_loses_nothing_and_the_daemon_finishes_it() {
    let c = TestCluster::plain(BIN, 2);
    let (n1, n2) = (&c.nodes[0], &c.nodes[1]);
    let names = ["g1", "g2", "g3", "g4", "g5", "g6"];
    for j in names {
        n1.ok(&["jcreate", &format!("jname={j}")]);
    }
    for step in 1..=4 {
        let at = format!("unregister:{step}:4");
        let r = n1.run_env(&["junregister", "jname=g*"], &[("FERRY_CRASH_AT", &at)]);
        assert_ne!(r.code, 0, "{at}: no crash");
        // Every env is registered on n1 or has its definition in jails-rcconf.
        for j in names {
            let unreg = n1.root().join(format!("jails-rcconf/rc.conf_{j}")).exists();
            assert!(unreg || n1.jls().contains_key(j), "{at}: {j} is lost");
        }
        // The glob again finishes the rest; n2 then takes all of them.
        let r = n1.run(&["junregister", "jname=g*"]);
        assert!(r.code == 0 || r.code == 3, "{at}: {}{}", r.stdout, r.stderr);
        assert!(n1.jls().is_empty(), "{at}");
        n2.ok(&["jregister", "jname=g*"]);
        assert_eq!(n2.jls().len(), names.len(), "{at}");
        n2.ok(&["junregister", "jname=g*"]);
        n1.ok(&["jregister", "jname=g*"]);
    }
    // A register glob cut short: the daemon's start finishes it.
    n1.ok(&["junregister", "jname=g*"]);
    let r = n2.run_env(
        &["jregister", "jname=g*"],
        &[("FERRY_CRASH_AT", "register:3:3")],
    );
    assert_ne!(r.code, 0, "no crash");
    let held = names
        .iter()
        .filter(|j| owner(n2, j).starts_with("node=n2\n"))
        .count();
    assert!(held > n2.jls().len(), "no register was left half done");
    let d = n2.daemon(&["heartbeat=1", "lease_time=5"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while n2.jls().len() < held && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    d.terminate();
    assert_eq!(
        n2.jls().len(),
        held,
        "the daemon did not finish the registers"
    );
    for j in n2.jls().keys() {
        assert!(!n2.root().join(format!("jails-rcconf/rc.conf_{j}")).exists());
        assert!(n2
            .root()
            .join(format!("jails-system/{j}/rc.conf_{j}"))
            .exists());
    }
}

#[test]
fn concurrent_registers_of_one_env_have_exactly_one_winner() {
    let c = TestCluster::plain(BIN, 2);
    let (n1, n2) = (&c.nodes[0], &c.nodes[1]);
    n1.ok(&["jcreate", "jname=race"]);
    n1.ok(&["junregister", "jname=race"]);
    for round in 0..15 {
        let (a, b) = std::thread::scope(|s| {
            let a = s.spawn(|| n1.run(&["jregister", "jname=race"]).code);
            let b = s.spawn(|| n2.run(&["jregister", "jname=race"]).code);
            (a.join().unwrap(), b.join().unwrap())
        });
        let winners = [a, b].iter().filter(|c| **c == 0).count();
        assert_eq!(winners, 1, "round {round}: codes {a} {b}");
        let winner = if a == 0 { n1 } else { n2 };
        assert!(winner.jls().contains_key("race"));
        let loser = if a == 0 { n2 } else { n1 };
        assert!(!loser.jls().contains_key("race"));
        winner.ok(&["junregister", "jname=race"]);
    }
}

#[test]
fn force_takes_over_only_from_a_node_whose_heartbeat_is_still() {
    let c = TestCluster::plain(BIN, 2);
    let (n1, n2) = (&c.nodes[0], &c.nodes[1]);
    n1.ok(&["jcreate", "jname=orphan"]);
    n2.fails(5, &["jregister", "jname=orphan"]);
    // n1 is alive: its heartbeat moves while n2 watches.
    let w1 = n1.workdir();
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                heartbeat::beat(&w1).unwrap();
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let e = n2.fails(5, &["jregister", "jname=orphan", "force=1", "lease_time=2"]);
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        assert!(e.contains("alive"), "{e}");
    });
    assert!(owner(n1, "orphan").starts_with("node=n1\n"));
    // n1 is dead now: its heartbeat stays still for the lease time.
    let began = Instant::now();
    n2.ok(&["jregister", "jname=orphan", "force=1", "lease_time=1"]);
    assert!(began.elapsed() >= Duration::from_secs(1));
    assert_eq!(owner(n2, "orphan"), "node=n2\nepoch=2\n");
    n2.ok(&["jstart", "jname=orphan"]);
    // The old owner still has its registry row, but not the lease: it may not start the env.
    let e = n1.fails(5, &["jstart", "jname=orphan"]);
    assert!(e.contains("owned by node n2"), "{e}");
    n2.ok(&["jstop", "jname=orphan"]);
}

#[test]
fn a_node_whose_shared_dirs_are_not_the_pools_is_refused() {
    let c = TestCluster::plain(BIN, 1);
    let n1 = &c.nodes[0];
    n1.ok(&["jcreate", "jname=pooled"]);
    n1.ok(&["junregister", "jname=pooled"]);
    // A node that sees jails-system and jails-rcconf but has its own jails-data.
    let other = tempfile::Builder::new()
        .prefix("ferry-o")
        .tempdir_in("/tmp")
        .unwrap();
    let rogue = TestWorkdir::node(BIN, "rogue", other.path());
    for d in ["jails-system", "jails-rcconf"] {
        nix::mount::umount2(&rogue.root().join(d), nix::mount::MntFlags::MNT_DETACH).unwrap();
        nix::mount::mount(
            Some(&c.shared().join(d)),
            &rogue.root().join(d),
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )
        .unwrap();
    }
    let before = snapshot(&c.shared());
    let e = rogue.fails(6, &["jregister", "jname=pooled"]);
    assert!(e.contains("jails-data") && e.contains("mounted"), "{e}");
    assert_same(&before, &snapshot(&c.shared()), "a refused register");
    n1.ok(&["jregister", "jname=pooled"]);
}

#[test]
fn a_vm_moves_between_nodes_and_boots_from_the_same_disk() {
    let c = TestCluster::plain(BIN, 2);
    let (n1, n2) = (&c.nodes[0], &c.nodes[1]);
    n1.bcreate_guest("vmove", &[]);
    let disk = n1.root().join("jails-data/vmove-data/dsk1.vhd");
    let inode = fs::metadata(&disk).unwrap().ino();
    n1.fails(3, &["junregister", "jname=vmove"]); // a VM, not a jail
    n1.ok(&["bunregister", "jname=vmove"]);
    n2.fails(3, &["jregister", "jname=vmove*"]); // the glob skips VMs
    n2.ok(&["bregister", "jname=vmove"]);
    assert_eq!(owner(n2, "vmove"), "node=n2\nepoch=2\n");
    assert_eq!(
        fs::metadata(n2.root().join("jails-data/vmove-data/dsk1.vhd"))
            .unwrap()
            .ino(),
        inode
    );
    n2.ok(&["bstart", "jname=vmove"]);
    ferry_testkit::wait_counter(n2, "vmove", "the moved VM does not count", |c| {
        !c.is_empty()
    });
    n1.fails(5, &["bregister", "jname=vmove"]);
    n2.ok(&["bstop", "jname=vmove"]);
}

#[test]
fn on_glusterfs_a_jail_and_a_vm_move_without_copying_and_one_register_wins() {
    // Each node in its own network namespace, as the cluster tests run them.
    let c = TestCluster::new(BIN, 2, Storage::GlusterFS, true);
    let (n1, n2) = (&c.nodes[0], &c.nodes[1]);
    let net = c.net().expect("namespaces");
    for (i, n) in [n1, n2].into_iter().enumerate() {
        let inv = ferry_core::registry::Registry::open(&n.workdir().db_dir())
            .and_then(|r| r.inventory("node"))
            .expect("inventory")
            .unwrap_or_default();
        assert!(
            inv.contains(&net.node(i).addr) && !inv.contains(&net.node(1 - i).addr),
            "node {} records {inv}",
            i + 1
        );
    }
    n1.ok(&["jcreate", "jname=gj", "runasap=1"]);
    n1.ok(&[
        "jexec",
        "jname=gj",
        "sh",
        "-c",
        "echo on-gluster > /root/proof",
    ]);
    n1.ok(&["jstop", "jname=gj"]);
    let inode = fs::metadata(n1.root().join("jails-data/gj-data/root/proof"))
        .unwrap()
        .ino();
    n1.ok(&["junregister", "jname=gj"]);
    n2.ok(&["jregister", "jname=gj"]);
    assert_eq!(
        fs::metadata(n2.root().join("jails-data/gj-data/root/proof"))
            .unwrap()
            .ino(),
        inode
    );
    n2.ok(&["jstart", "jname=gj"]);
    assert_eq!(
        n2.ok(&["jexec", "jname=gj", "cat", "/root/proof"]),
        "on-gluster\n"
    );
    n1.fails(5, &["jregister", "jname=gj"]);
    n2.ok(&["jstop", "jname=gj"]);

    n1.bcreate_guest("gv", &[]);
    n1.ok(&["bunregister", "jname=gv"]);
    n2.ok(&["bregister", "jname=gv"]);
    n2.ok(&["bstart", "jname=gv"]);
    ferry_testkit::wait_counter(
        n2,
        "gv",
        "the VM moved onto GlusterFS does not count",
        |c| !c.is_empty(),
    );
    n2.ok(&["bstop", "jname=gv"]);

    n2.ok(&["junregister", "jname=gj"]);
    for round in 0..10 {
        let (a, b) = std::thread::scope(|s| {
            let a = s.spawn(|| n1.run(&["jregister", "jname=gj"]).code);
            let b = s.spawn(|| n2.run(&["jregister", "jname=gj"]).code);
            (a.join().unwrap(), b.join().unwrap())
        });
        assert_eq!(
            [a, b].iter().filter(|c| **c == 0).count(),
            1,
            "round {round}: codes {a} {b}"
        );
        let winner = if a == 0 { n1 } else { n2 };
        winner.ok(&["junregister", "jname=gj"]);
    }
}

#[test]
fn a_dead_owner_is_taken_over_and_fences_itself_when_it_comes_back() {
    dead_owner_is_taken_over(&TestCluster::plain(BIN, 2));
}

#[test]
fn on_glusterfs_a_dead_owner_is_taken_over_and_fences_itself() {
    dead_owner_is_taken_over(&TestCluster::glusterfs(BIN, 2));
}

fn dead_owner_is_taken_over(c: &TestCluster) {
    let (n1, n2) = (&c.nodes[0], &c.nodes[1]);
    n1.ok(&["jcreate", "jname=guarded", "astart=1"]);
    // The daemon starts astart envs and beats the heartbeat.
    let d = n1.daemon(&["heartbeat=1", "lease_time=5"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while n1.status("guarded") != "running" {
        assert!(
            Instant::now() < deadline,
            "the daemon did not start the astart jail"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let e = n2.fails(
        5,
        &["jregister", "jname=guarded", "force=1", "lease_time=3"],
    );
    assert!(e.contains("alive"), "{e}");

    // n1's daemon dies (the node is gone): its heartbeat stops moving.
    d.kill();
    n2.ok(&["jregister", "jname=guarded", "force=1", "lease_time=3"]);
    assert_eq!(owner(n2, "guarded"), "node=n2\nepoch=2\n");
    n2.ok(&["jstart", "jname=guarded"]);

    // n1 comes back: its daemon sees the lease superseded and stops its copy.
    let d = n1.daemon(&["heartbeat=1", "lease_time=5"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while n1.jls().contains_key("guarded") {
        assert!(Instant::now() < deadline, "n1 did not fence itself");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        !n1.root().join("jails/guarded").exists(),
        "n1's copy is still set up"
    );
    assert_eq!(
        n2.status("guarded"),
        "running",
        "fencing touched the new owner's copy"
    );
    assert_eq!(owner(n2, "guarded"), "node=n2\nepoch=2\n");
    d.terminate();
    n2.ok(&["jstop", "jname=guarded"]);
}
