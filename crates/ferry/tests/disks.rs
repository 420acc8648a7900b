//! A VM's disks (CBSD's `bhyve-dsk`) on real QEMU (TCG) with the test
//! guest, which prints the virtio disks it sees: attached, grown and
//! detached live (hot-plug) and while stopped, snapshots over every disk,
//! bad input refused with nothing changed.

use std::time::Duration;

use ferry_testkit::{assert_same, wait_counter, wait_guest_disks, TestWorkdir};
use ferry_vm::qmp::Qmp;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_ferry");

/// dsk1 of the test guest: 16m, 32768 sectors.
const VDA: &str = "vda:32768";

fn disks(t: &TestWorkdir, vm: &str) -> Vec<Value> {
    let out = t.ok(&[
        "bhyve-dsk",
        "mode=list",
        &format!("jname={vm}"),
        "display=jname,dsk_controller,dsk_path,dsk_size,bootable,imgtype,attached",
        "--json",
    ]);
    serde_json::from_str::<Value>(&out)
        .expect("JSON")
        .as_array()
        .expect("rows")
        .clone()
}

/// The block nodes QEMU has open for `vm`'s disks beyond dsk1.
fn qemu_nodes(t: &TestWorkdir, vm: &str) -> Vec<String> {
    let sock = t.root().join("var/run").join(format!("{vm}.qmp"));
    let mut q = Qmp::connect(&sock, Duration::from_secs(10)).expect("QMP");
    let nodes = q
        .execute(
            "query-named-block-nodes",
            Some(serde_json::json!({"flat": true})),
        )
        .expect("query-named-block-nodes");
    let mut names: Vec<String> = nodes
        .as_array()
        .expect("nodes")
        .iter()
        .filter_map(|n| n["node-name"].as_str())
        .filter(|n| n.starts_with("dsk"))
        .map(str::to_owned)
        .collect();
    names.sort();
    names.dedup();
    names
}

fn definition(t: &TestWorkdir, vm: &str) -> String {
    std::fs::read_to_string(t.root().join(format!("jails-system/{vm}/rc.conf_{vm}")))
        .expect("the definition")
}

#[test]
fn bhyve_dsk_hot_plugs_grows_and_unplugs_disks_that_the_guest_sees() {
    let t = TestWorkdir::new(BIN);
    t.bcreate_guest("d1", &[]);
    t.ok(&["bstart", "jname=d1"]);
    wait_counter(&t, "d1", "the guest never counted", |c| !c.is_empty());
    wait_guest_disks(&t, "d1", VDA);

    // Attached live: a new 64m qcow2 disk on the next free slot.
    let out = t.ok(&[
        "bhyve-dsk",
        "mode=attach",
        "jname=d1",
        "dsk_controller=virtio-blk",
        "dsk_size=64m",
    ]);
    assert_eq!(
        out.trim(),
        "dsk2.vhd (virtio-blk, qcow2) attached to d1, hot-plugged"
    );
    wait_guest_disks(&t, "d1", &format!("{VDA} vdb:131072"));
    let rows = disks(&t, "d1");
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(rows[0]["dsk_path"], "dsk1.vhd");
    assert_eq!(rows[0]["bootable"], false, "the test guest boots a kernel");
    assert_eq!(rows[1]["dsk_path"], "dsk2.vhd");
    assert_eq!(rows[1]["dsk_size"], "64m");
    assert_eq!(rows[1]["dsk_controller"], "virtio-blk");
    assert!(definition(&t, "d1").contains("vm_disks=\"dsk2:virtio-blk:qcow2\""));

    // Grown live by +64m (CBSD's form), then refused to shrink.
    let out = t.ok(&[
        "bhyve-dsk",
        "mode=modify",
        "jname=d1",
        "dsk_path=dsk2.vhd",
        "dsk_size=+64m",
    ]);
    assert_eq!(out.trim(), "dsk2.vhd of d1 is 128m");
    wait_guest_disks(&t, "d1", &format!("{VDA} vdb:262144"));
    let e = t.fails(
        6,
        &[
            "bhyve-dsk",
            "mode=modify",
            "jname=d1",
            "dsk_path=dsk2",
            "dsk_size=16m",
        ],
    );
    assert!(e.contains("shrinking"), "{e}");

    // A snapshot covers every disk, taken at one instant.
    t.ok(&["bsnapshot", "mode=create", "jname=d1", "snapname=both"]);
    for f in ["dsk1.vhd", "dsk2.vhd"] {
        let p = t.root().join("jails-data/d1-data").join(f);
        let out = std::process::Command::new("qemu-img")
            .args(["snapshot", "-U", "-l"])
            .arg(&p)
            .output()
            .expect("qemu-img");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("snap:both"),
            "{f}"
        );
    }

    // AHCI has no hot-plug: refused while it runs, nothing made.
    let before = t.snapshot();
    let e = t.fails(
        6,
        &[
            "bhyve-dsk",
            "mode=attach",
            "jname=d1",
            "dsk_controller=ahci-hd",
            "dsk_size=32m",
        ],
    );
    assert!(e.contains("ahci-hd") && e.contains("stop it first"), "{e}");
    assert_same(&before, &t.snapshot(), "a refused AHCI hot-plug");

    // Detached live: the guest lets it go; the image stays, listed as detached.
    let out = t.ok(&["bhyve-dsk", "mode=detach", "jname=d1", "dsk_path=dsk2"]);
    assert_eq!(out.trim(), "dsk2.vhd detached from d1");
    wait_guest_disks(&t, "d1", VDA);
    assert!(
        qemu_nodes(&t, "d1").is_empty(),
        "dsk2's node stayed in QEMU"
    );
    assert!(definition(&t, "d1").contains("vm_disks=\"\""));
    let rows = disks(&t, "d1");
    assert_eq!(rows[1]["attached"], false, "{rows:?}");
    // Attached again as it is, with its data and size.
    t.ok(&["bhyve-dsk", "mode=attach", "jname=d1", "dsk_path=dsk2"]);
    wait_guest_disks(&t, "d1", &format!("{VDA} vdb:262144"));

    // Stopped: an AHCI disk (q35's own controller) takes the next slot, and
    // QEMU opens both at the next start.
    t.ok(&["bstop", "jname=d1"]);
    let out = t.ok(&[
        "bhyve-dsk",
        "mode=attach",
        "jname=d1",
        "dsk_controller=ahci-hd",
        "dsk_size=32m",
        "imgtype=raw",
    ]);
    assert_eq!(out.trim(), "dsk3.vhd (ahci-hd, raw) attached to d1");
    // Grown while stopped, with qemu-img.
    t.ok(&[
        "bhyve-dsk",
        "mode=modify",
        "jname=d1",
        "dsk_path=dsk2",
        "dsk_size=192m",
    ]);
    // A raw disk has no snapshots: refused with the reason.
    let e = t.fails(6, &["bsnapshot", "mode=create", "jname=d1", "snapname=x"]);
    assert!(e.contains("dsk3 is raw"), "{e}");
    t.ok(&["bstart", "jname=d1"]);
    wait_guest_disks(&t, "d1", &format!("{VDA} vdb:393216"));
    assert_eq!(qemu_nodes(&t, "d1"), ["dsk2", "dsk3"]);

    // Deleted live: unplugged and its image gone.
    t.ok(&["bhyve-dsk", "mode=delete", "jname=d1", "dsk_path=dsk2"]);
    wait_guest_disks(&t, "d1", VDA);
    assert!(!t.root().join("jails-data/d1-data/dsk2.vhd").exists());
    t.ok(&["bstop", "jname=d1"]);
    t.ok(&["bhyve-dsk", "mode=remove", "jname=d1", "dsk_path=dsk3"]);
    assert_eq!(disks(&t, "d1").len(), 1);
}

#[test]
fn bad_disk_requests_are_refused_and_change_nothing() {
    let t = TestWorkdir::with_base(BIN);
    t.bcreate_guest("d2", &[]);
    t.bcreate_guest("pc1", &["vm_machine=pc"]);
    t.ok(&["jcreate", "jname=j1"]);
    let before = t.snapshot();
    for (args, code, said) in [
        (
            &[
                "bhyve-dsk",
                "mode=attach",
                "jname=d2",
                "dsk_path=/dev/sda",
                "dsk_size=1g",
            ][..],
            2,
            "dskN",
        ),
        (
            &[
                "bhyve-dsk",
                "mode=attach",
                "jname=d2",
                "dsk_path=../dsk2",
                "dsk_size=1g",
            ],
            2,
            "dskN",
        ),
        (
            &[
                "bhyve-dsk",
                "mode=attach",
                "jname=d2",
                "dsk_path=dsk1",
                "dsk_size=1g",
            ],
            2,
            "dsk1",
        ),
        (
            &["bhyve-dsk", "mode=attach", "jname=d2", "dsk_size=+1g"],
            2,
            "growth",
        ),
        (
            &["bhyve-dsk", "mode=attach", "jname=d2", "dsk_size=1000"],
            2,
            "512",
        ),
        (
            &["bhyve-dsk", "mode=attach", "jname=d2", "dsk_path=dsk4"],
            2,
            "dsk_size",
        ),
        (
            &[
                "bhyve-dsk",
                "mode=attach",
                "jname=d2",
                "dsk_controller=nvme",
                "dsk_size=1g",
            ],
            2,
            "dsk_controller",
        ),
        (
            &[
                "bhyve-dsk",
                "mode=attach",
                "jname=d2",
                "dsk_controller=ahci-hd",
                "dsk_path=dsk8",
                "dsk_size=1g",
            ],
            2,
            "6 ports",
        ),
        (
            &[
                "bhyve-dsk",
                "mode=attach",
                "jname=pc1",
                "dsk_controller=ahci-hd",
                "dsk_size=1g",
            ],
            2,
            "q35",
        ),
        (&["bhyve-dsk", "mode=attach", "dsk_size=1g"], 2, "jname"),
        (
            &["bhyve-dsk", "mode=modify", "jname=d2", "dsk_path=dsk1"],
            2,
            "dsk_size",
        ),
        (
            &["bhyve-dsk", "mode=modify", "jname=d2", "dsk_size=+1g"],
            2,
            "dsk_path",
        ),
        (
            &[
                "bhyve-dsk",
                "mode=modify",
                "jname=d2",
                "dsk_path=dsk5",
                "dsk_size=+1g",
            ],
            3,
            "no disk dsk5",
        ),
        (
            &["bhyve-dsk", "mode=detach", "jname=d2", "dsk_path=dsk5"],
            3,
            "no disk dsk5",
        ),
        (
            &["bhyve-dsk", "mode=detach", "jname=d2", "dsk_path=dsk1"],
            6,
            "stays",
        ),
        (
            &["bhyve-dsk", "mode=attach", "jname=nosuch", "dsk_size=1g"],
            3,
            "nosuch",
        ),
        (
            &["bhyve-dsk", "mode=attach", "jname=j1", "dsk_size=1g"],
            3,
            "jail",
        ),
        (
            &[
                "bhyve-dsk",
                "mode=modify",
                "jname=d2",
                "dsk_path=dsk1",
                "dsk_serial=x",
            ],
            2,
            "dsk_serial",
        ),
    ] {
        let e = t.fails(code, args);
        assert!(e.contains(said), "{args:?}: {e}");
    }
    assert_same(&before, &t.snapshot(), "refused bhyve-dsk requests");
    // dsk1 grows while stopped, and imgsize follows it.
    t.ok(&[
        "bhyve-dsk",
        "mode=modify",
        "jname=d2",
        "dsk_path=dsk1",
        "dsk_size=32m",
    ]);
    assert!(
        definition(&t, "d2").contains("imgsize=\"32m\""),
        "{}",
        definition(&t, "d2")
    );
    // Every VM's disks when no jname is given.
    let all = t.ok(&["bhyve-dsk", "mode=list", "header=0"]);
    assert_eq!(all.lines().count(), 2, "{all}");
}
