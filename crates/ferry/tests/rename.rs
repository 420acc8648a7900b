//! `jrename` and `brename` (CBSD's words) on real runc and QEMU: the env's
//! files, definition, lease and row follow the new name; a crash at each
//! step of the journaled rename is finished, never lost; bad input is
//! refused with nothing changed.

use ferry_testkit::{assert_same, wait_counter, wait_guest_disks, TestWorkdir};

const BIN: &str = env!("CARGO_BIN_EXE_ferry");

/// What a renamed jail must be: listed under its new name only, its data,
/// definition and lease there, and nothing left under the old name.
#[track_caller]
fn renamed(t: &TestWorkdir, old: &str, new: &str) {
    let jls = t.jls();
    assert!(jls.contains_key(new) && !jls.contains_key(old), "{jls:?}");
    let root = t.root();
    for gone in [
        format!("jails-data/{old}-data"),
        format!("jails-system/{old}"),
        format!("jails-fstab/{old}"),
    ] {
        assert!(!root.join(&gone).exists(), "{gone} is left");
    }
    let def = std::fs::read_to_string(root.join(format!("jails-system/{new}/rc.conf_{new}")))
        .expect("the new definition");
    assert!(def.contains(&format!("jname=\"{new}\"")), "{def}");
    assert!(def.contains(&format!("jails-data/{new}-data")), "{def}");
    let owner =
        std::fs::read_to_string(root.join(format!("jails-system/{new}/owner"))).expect("the lease");
    assert!(owner.contains("node=t1"), "{owner}");
    assert!(!root.join(format!("jails-system/{new}/.renaming")).exists());
}

#[test]
fn jrename_moves_a_jail_s_data_definition_and_lease_to_its_new_name() {
    let t = TestWorkdir::with_base(BIN);
    t.ok(&["jcreate", "jname=old1", "host_hostname=old1.example.org"]);
    t.ok(&["jstart", "jname=old1"]);
    t.ok(&["jexec", "jname=old1", "sh", "-c", "echo kept > /root/note"]);
    // Running: refused without restart=1, nothing changed.
    let before = t.snapshot();
    let e = t.fails(4, &["jrename", "old=old1", "new=new1"]);
    assert!(e.contains("stopped"), "{e}");
    assert_same(&before, &t.snapshot(), "a refused rename of a running jail");
    let out = t.ok(&[
        "jrename",
        "old=old1",
        "new=new1",
        "host_hostname=new1.example.org",
        "restart=1",
    ]);
    assert_eq!(out.trim(), "old1 renamed to new1, restarted");
    renamed(&t, "old1", "new1");
    assert_eq!(t.status("new1"), "running");
    assert_eq!(
        t.ok(&["jexec", "jname=new1", "cat", "/root/note"]).trim(),
        "kept"
    );
    assert_eq!(
        t.ok(&["jexec", "jname=new1", "hostname"]).trim(),
        "new1.example.org"
    );
    t.ok(&["jstop", "jname=new1"]);
    t.ok(&["jrename", "old=new1", "new=new2"]);
    renamed(&t, "new1", "new2");
    t.ok(&["jremove", "jname=new2"]);
}

#[test]
fn bad_renames_are_refused_and_change_nothing() {
    let t = TestWorkdir::with_base(BIN);
    t.ok(&["jcreate", "jname=a1"]);
    t.ok(&["jcreate", "jname=a2"]);
    t.bcreate_guest("v1", &[]);
    let before = t.snapshot();
    for (args, code, said) in [
        (&["jrename", "old=a1", "new=a2"][..], 4, "a2"),
        (&["jrename", "old=a1", "new=a1"], 2, "old name"),
        (&["jrename", "old=a1", "new=../x"], 2, "new"),
        (&["jrename", "old=a1", "new=a;rm"], 2, "new"),
        (&["jrename", "old=nosuch", "new=b1"], 3, "nosuch"),
        (&["jrename", "old=v1", "new=b1"], 3, "v1"),
        (&["brename", "old=a1", "new=b1"], 3, "a1"),
        (
            &["jrename", "old=a1", "new=b1", "ip4_addr=300.1.1.1"],
            2,
            "ip4_addr",
        ),
        (&["jrename", "old=a1", "new=b1", "colour=red"], 2, "colour"),
    ] {
        let e = t.fails(code, args);
        assert!(e.contains(said), "{args:?}: {e}");
    }
    assert_same(&before, &t.snapshot(), "refused renames");
}

#[test]
fn brename_carries_a_vm_s_disks_and_snapshots_and_it_boots_under_the_new_name() {
    let t = TestWorkdir::new(BIN);
    t.bcreate_guest("vm1", &[]);
    t.ok(&["bhyve-dsk", "mode=attach", "jname=vm1", "dsk_size=64m"]);
    t.ok(&["bsnapshot", "mode=create", "jname=vm1", "snapname=s1"]);
    t.ok(&["brename", "old=vm1", "new=vm2"]);
    let bls = t.ok(&["bls", "header=0", "display=jname"]);
    assert_eq!(bls.trim(), "vm2");
    assert!(t.root().join("jails-data/vm2-data/dsk2.vhd").is_file());
    let snaps = t.ok(&["bsnapshot", "jname=vm2", "header=0", "display=snapname"]);
    assert_eq!(snaps.trim(), "s1");
    t.ok(&["bstart", "jname=vm2"]);
    wait_counter(&t, "vm2", "the renamed VM never counted", |c| !c.is_empty());
    wait_guest_disks(&t, "vm2", "vda:32768 vdb:131072");
    t.ok(&["bstop", "jname=vm2"]);
}

#[test]
#[cfg_attr(
    not(feature = "crashpoints"),
    ignore = "needs the crashpoints feature (./run-tests builds with it)"
)]
fn a_rename_cut_short_at_any_step_is_finished_by_the_next_rename_or_the_daemon() {
    let t = TestWorkdir::with_base(BIN);
    for step in 1..=3 {
        let (old, new) = (format!("c{step}"), format!("d{step}"));
        t.ok(&["jcreate", &format!("jname={old}")]);
        t.ok(&["jstart", &format!("jname={old}")]);
        t.ok(&[
            "jexec",
            &format!("jname={old}"),
            "sh",
            "-c",
            "echo kept > /root/note",
        ]);
        t.ok(&["jstop", &format!("jname={old}")]);
        let args = ["jrename", &format!("old={old}"), &format!("new={new}")];
        let r = t.run_env(&args, &[("FERRY_CRASH_AT", &format!("rename:{step}"))]);
        assert_ne!(r.code, 0, "step {step}: the crash point was not reached");
        // The data is somewhere, never lost.
        let data = |j: &str| t.root().join(format!("jails-data/{j}-data"));
        assert!(data(&old).exists() != data(&new).exists(), "step {step}");
        if step < 3 {
            let out = t.ok(&args);
            assert!(out.contains("interrupted rename, finished"), "{out}");
        } else {
            // The daemon finishes it when it starts.
            let d = t.daemon(&["heartbeat=1"]);
            ferry_testkit::view::wait_until(
                "the daemon finished the rename",
                std::time::Duration::from_secs(20),
                || t.jls().contains_key(&new),
            );
            d.terminate();
        }
        renamed(&t, &old, &new);
        t.ok(&["jstart", &format!("jname={new}")]);
        let note = t.ok(&["jexec", &format!("jname={new}"), "cat", "/root/note"]);
        assert_eq!(note.trim(), "kept", "step {step}");
        t.ok(&["jstop", &format!("jname={new}")]);
    }
}
