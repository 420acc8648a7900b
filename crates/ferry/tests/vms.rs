//! VMs on real QEMU (TCG) booting the project's test guest: lifecycle,
//! live state from QMP, a killed QEMU, hooks, checkpoints, bad input.

use std::fs;
use std::net::TcpListener;
use std::time::{Duration, Instant};

use ferry_testkit::{assert_same, wait_counter, TestWorkdir};
use ferry_vm::qmp::Qmp;

const BIN: &str = env!("CARGO_BIN_EXE_ferry");

fn bcreate(t: &TestWorkdir, jname: &str, extra: &[&str]) {
    t.bcreate_guest(jname, extra);
}

fn bls(t: &TestWorkdir, jname: &str) -> serde_json::Value {
    let v: serde_json::Value = serde_json::from_str(&t.ok(&["bls", "--json"])).expect("bls --json");
    v.as_array()
        .and_then(|rows| rows.iter().find(|r| r["jname"] == jname).cloned())
        .unwrap_or_else(|| panic!("{jname} not in bls: {v}"))
}

/// Wait until the guest handles the power button (it prints this once acpid runs).
fn wait_booted(t: &TestWorkdir, jname: &str) {
    wait_counter(t, jname, "the guest never counted", |c| !c.is_empty());
}

#[test]
fn lifecycle_with_a_counting_guest_and_bls_from_qmp() {
    let t = TestWorkdir::new(BIN);
    bcreate(&t, "vm1", &[]);
    assert!(t.root().join("jails-data/vm1-data/dsk1.vhd").is_file());
    assert_eq!(bls(&t, "vm1")["status"], "stopped");
    t.ok(&["bstart", "jname=vm1"]);
    t.fails(4, &["bstart", "jname=vm1"]);
    t.fails(4, &["bremove", "jname=vm1"]);
    let first = wait_counter(&t, "vm1", "the counter never reached 3", |c| {
        c.last() >= Some(&3)
    });
    wait_counter(&t, "vm1", "the counter stopped advancing", |c| {
        c.last() > first.last()
    });

    let row = bls(&t, "vm1");
    assert_eq!(
        (row["status"].as_str(), row["qemu"].as_str()),
        (Some("running"), Some("running")),
        "{row}"
    );
    assert!(row["accel"] == "tcg" || row["accel"] == "kvm", "{row}");
    // bls reads the live QEMU: pause it behind ferry's back.
    let sock = t.root().join("var/run/vm1.qmp");
    let mut q = Qmp::connect(&sock, Duration::from_secs(5)).expect("qmp");
    q.stop().expect("stop");
    drop(q);
    assert_eq!(bls(&t, "vm1")["qemu"], "paused");
    let mut q = Qmp::connect(&sock, Duration::from_secs(5)).expect("qmp");
    q.cont().expect("cont");
    drop(q);

    let began = Instant::now();
    t.ok(&["bstop", "jname=vm1"]);
    assert!(
        began.elapsed() < Duration::from_secs(20),
        "ACPI power-down took {:?}",
        began.elapsed()
    );
    let log = fs::read_to_string(t.root().join("jails-system/vm1/console.log")).unwrap();
    assert!(
        log.contains("power button"),
        "the guest did not see the ACPI power button"
    );
    assert_eq!(bls(&t, "vm1")["status"], "stopped");
    assert!(!sock.exists() && !t.root().join("var/run/vm1.pid").exists());
    t.fails(4, &["bstop", "jname=vm1"]);
    t.ok(&["bremove", "jname=vm1"]);
    assert!(!t.root().join("jails-data/vm1-data").exists());
    assert!(!t.root().join("jails-system/vm1").exists());
}

#[test]
fn a_qemu_killed_with_sigkill_shows_stopped_and_starts_again() {
    let t = TestWorkdir::new(BIN);
    bcreate(&t, "k1", &[]);
    t.ok(&["bstart", "jname=k1"]);
    let pid = bls(&t, "k1")["jid"].as_i64().expect("jid");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while bls(&t, "k1")["status"] != "stopped" {
        assert!(
            Instant::now() < deadline,
            "bls still shows the killed VM running"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    t.ok(&["bstart", "jname=k1"]);
    assert_eq!(bls(&t, "k1")["status"], "running");
    assert_ne!(bls(&t, "k1")["jid"].as_i64(), Some(pid));
    t.ok(&["bstop", "jname=k1"]);
}

#[test]
fn bstop_stops_hard_when_the_guest_ignores_the_power_button() {
    let t = TestWorkdir::new(BIN);
    // No kernel: SeaBIOS finds no bootable disk and never powers off.
    t.ok(&[
        "bcreate",
        "jname=deaf",
        "vm_ram=64m",
        "imgsize=1m",
        "vm_nic=none",
        "stop_timeout=1",
    ]);
    t.ok(&["bstart", "jname=deaf"]);
    let began = Instant::now();
    t.ok(&["bstop", "jname=deaf"]);
    let took = began.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(10),
        "{took:?}"
    );
    assert_eq!(bls(&t, "deaf")["status"], "stopped");
}

#[test]
fn a_bridged_vm_gets_a_tap_on_its_bridge_while_it_runs() {
    let t = TestWorkdir::new(BIN);
    let br = t.bridge();
    let iface = format!("interface={br}");
    t.ok(&[
        "bcreate",
        "jname=net1",
        "vm_ram=64m",
        "imgsize=1m",
        "vm_nic=bridge",
        &iface,
        "stop_timeout=1",
    ]);
    t.ok(&["bstart", "jname=net1"]);
    let taps: Vec<String> = fs::read_dir(format!("/sys/class/net/{br}/brif"))
        .expect("the bridge exists")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(taps.len(), 1, "{taps:?}");
    let tap = &taps[0];
    assert!(
        fs::read_to_string(format!("/sys/class/net/{tap}/tun_flags")).is_ok(),
        "{tap} is not a tap"
    );
    t.ok(&["bstop", "jname=net1"]);
    assert!(
        !std::path::Path::new("/sys/class/net").join(tap).exists(),
        "{tap} left after stop"
    );
}

#[test]
fn a_checkpoint_restores_a_guest_that_keeps_counting() {
    let t = TestWorkdir::new(BIN);
    bcreate(&t, "ck", &[]);
    t.ok(&["bstart", "jname=ck"]);
    let before = wait_counter(&t, "ck", "no counter before the checkpoint", |c| {
        c.last() >= Some(&5)
    });
    t.ok(&[
        "bcheckpoint",
        "mode=create",
        "jname=ck",
        "name=c1",
        "suspend=1",
    ]);
    assert_eq!(
        bls(&t, "ck")["status"],
        "stopped",
        "suspend=1 left the VM running"
    );
    let at = *ferry_testkit::guest_counters(&t, "ck")
        .last()
        .expect("counter");
    assert!(at >= *before.last().expect("counter"));
    let listed: serde_json::Value =
        serde_json::from_str(&t.ok(&["bcheckpoint", "jname=ck", "--json"])).unwrap();
    assert_eq!(listed[0]["name"], "c1");
    t.fails(4, &["bcheckpoint", "mode=create", "jname=ck", "name=c2"]);

    // Forget the console, restore, and read where the counter goes on.
    fs::write(t.root().join("jails-system/ck/console.log"), "").unwrap();
    t.ok(&["bstart", "jname=ck", "checkpoint=c1"]);
    let after = wait_counter(&t, "ck", "the restored guest does not count", |c| {
        c.len() >= 3
    });
    assert!(after[0] > 1, "the restored guest started over: {after:?}");
    assert!(
        after[0] <= at + 3,
        "the counter jumped: checkpoint at {at}, then {after:?}"
    );
    assert!(after.windows(2).all(|w| w[1] == w[0] + 1), "{after:?}");

    t.fails(6, &["bcheckpoint", "mode=create", "jname=ck", "name=c1"]);
    // A checkpoint of a running VM that keeps running.
    t.ok(&["bcheckpoint", "mode=create", "jname=ck", "name=c2"]);
    let n = ferry_testkit::guest_counters(&t, "ck").len();
    wait_counter(
        &t,
        "ck",
        "the VM did not resume after the checkpoint",
        |c| c.len() > n + 2,
    );
    t.ok(&["bstop", "jname=ck"]);
    t.ok(&["bcheckpoint", "mode=destroyall", "jname=ck"]);
    assert!(t.ok(&["bcheckpoint", "jname=ck", "--json"]).trim() == "[]");
    t.fails(2, &["bstart", "jname=ck", "checkpoint=c1"]);
}

#[test]
fn vm_hooks_mount_storage_while_running_and_a_failing_hook_leaves_nothing_running() {
    let t = TestWorkdir::new(BIN);
    let store = t.root().join("store");
    let log = t.root().join("hooks/calls");
    let start = t.hook(
        "bind-start",
        &format!(
            "while getopts d:f:j:r:s: o; do case $o in d) D=$OPTARG;; j) J=$OPTARG;; *) ;; esac; done\n\
             echo \"mnt_start $FERRY_PHASE $J\" >> {log}\n\
             [ -e {store}/fail ] && [ \"$FERRY_PHASE\" = start ] && exit 4\n\
             mkdir -p {store}/$J\n\
             mountpoint -q \"$D\" || mount --bind {store}/$J \"$D\"",
            log = log.display(),
            store = store.display()
        ),
    );
    let stop = t.hook(
        "bind-stop",
        &format!(
            "while getopts d:f:j:r:s: o; do case $o in d) D=$OPTARG;; *) ;; esac; done\n\
             echo \"mnt_stop $FERRY_PHASE\" >> {log}\n\
             if mountpoint -q \"$D\"; then umount \"$D\"; fi",
            log = log.display()
        ),
    );
    let (s, e) = (
        format!("mnt_start={}", start.display()),
        format!("mnt_stop={}", stop.display()),
    );
    bcreate(&t, "hv", &[&s, &e]);
    let data = t.root().join("jails-data/hv-data");
    assert!(
        store.join("hv/dsk1.vhd").is_file(),
        "the disk was not created on the hook's storage"
    );
    assert!(
        !data.join("dsk1.vhd").exists(),
        "the storage is still mounted after create"
    );
    t.ok(&["bstart", "jname=hv"]);
    assert!(
        data.join("dsk1.vhd").is_file(),
        "the storage is not mounted while the VM runs"
    );
    wait_booted(&t, "hv");
    t.ok(&["bstop", "jname=hv"]);
    assert!(
        !data.join("dsk1.vhd").exists(),
        "the storage is still mounted after stop"
    );
    let calls = fs::read_to_string(&log).unwrap();
    for want in [
        "mnt_start create hv",
        "mnt_stop create",
        "mnt_start start hv",
        "mnt_stop stop",
    ] {
        assert!(calls.contains(want), "{want} missing:\n{calls}");
    }

    fs::write(store.join("fail"), "").unwrap();
    let e = t.fails(1, &["bstart", "jname=hv"]);
    assert!(e.contains("mnt_start") && e.contains("status 4"), "{e}");
    assert_eq!(bls(&t, "hv")["status"], "stopped");
    assert!(
        !t.root().join("var/run/hv.pid").exists(),
        "a QEMU was started despite the hook"
    );
    assert!(!t.root().join("jails/hv").exists(), "runtime record left");
}

#[test]
fn bad_vm_input_is_refused_and_changes_nothing() {
    let t = TestWorkdir::with_base(BIN);
    t.ok(&["jcreate", "jname=taken"]);
    bcreate(&t, "vnc1", &["vm_vnc_port=5987"]);
    let before = t.snapshot();
    for (args, code, key) in [
        (vec!["jname=a", "vm_ram=-1"], 2, "vm_ram"),
        (vec!["jname=a", "vm_ram=1k"], 2, "vm_ram"),
        (vec!["jname=a", "vm_cpus=0"], 2, "vm_cpus"),
        (vec!["jname=a", "imgsize=abc"], 2, "imgsize"),
        (
            vec!["jname=a", "vm_kernel=/nonexistent/vmlinuz"],
            2,
            "vm_kernel",
        ),
        (vec!["jname=a", "vm_machine=nosuchmachine"], 2, "vm_machine"),
        (vec!["jname=a", "vm_vnc_port=5987"], 6, "5987"),
        (vec!["jname=taken"], 4, "taken"),
        (vec!["jname=../a"], 2, "jname"),
    ] {
        let mut a = vec!["bcreate"];
        a.extend(args.iter().copied());
        let e = t.fails(code, &a);
        assert!(e.contains(key), "{args:?}: {e}");
    }
    assert_same(&before, &t.snapshot(), "refused bcreate");
    // A VNC port taken by something else is refused at start, nothing left running.
    let listener = TcpListener::bind(("127.0.0.1", 5987)).expect("bind the test port");
    let e = t.fails(6, &["bstart", "jname=vnc1"]);
    assert!(e.contains("5987"), "{e}");
    drop(listener);
    assert_eq!(bls(&t, "vnc1")["status"], "stopped");
    assert!(!t.root().join("var/run/vnc1.pid").exists());
    t.fails(3, &["bstart", "jname=taken"]);
}

#[test]
fn bset_changes_a_vm_s_settings_and_says_what_waits_for_its_next_start() {
    let t = TestWorkdir::new(BIN);
    bcreate(&t, "b1", &["vm_vnc_port=5981"]);
    bcreate(&t, "b2", &[]);
    let out = t.ok(&["bset", "jname=b2", "vm_ram=192m", "vm_cpus=2", "astart=1"]);
    assert_eq!(out.trim(), "b2: set vm_ram, vm_cpus, astart");
    let row = bls(&t, "b2");
    assert_eq!(
        (row["vm_ram"].as_str(), row["vm_cpus"].as_u64()),
        (Some("192m"), Some(2))
    );
    assert_eq!(t.ok(&["bget", "jname=b2", "vm_ram"]), "vm_ram: 192m\n");
    // A VNC port another VM here uses is refused; nothing changed.
    let before = t.snapshot();
    let e = t.fails(6, &["bset", "jname=b2", "vm_vnc_port=5981"]);
    assert!(e.contains("5981") && e.contains("b1"), "{e}");
    let e = t.fails(2, &["bset", "jname=b2", "vm_cpus=0"]);
    assert!(e.contains("vm_cpus"), "{e}");
    assert_same(&before, &t.snapshot(), "refused bsets");
    // The running guest keeps what it started with until its next start.
    t.ok(&["bstart", "jname=b2"]);
    wait_booted(&t, "b2");
    let out = t.ok(&["bset", "jname=b2", "vm_ram=160m", "stop_timeout=20"]);
    assert!(
        out.contains("vm_ram takes effect at the next start (b2 is running)"),
        "{out}"
    );
    assert!(!out.contains("stop_timeout take"), "{out}");
    t.ok(&["bstop", "jname=b2"]);
    t.ok(&["bstart", "jname=b2"]);
    assert_eq!(bls(&t, "b2")["vm_ram"], "160m");
    t.ok(&["bstop", "jname=b2"]);
}

/// `qemu-io` on a stopped VM's disk: write a pattern, or check one.
fn qemu_io(disk: &std::path::Path, op: &str) -> bool {
    std::process::Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", op])
        .arg(disk)
        .output()
        .map(|o| {
            o.status.success()
                && !String::from_utf8_lossy(&o.stdout).contains("Pattern verification failed")
        })
        .unwrap_or(false)
}

#[test]
fn bsnapshot_takes_lists_destroys_and_rolls_back_disk_snapshots_live_or_stopped() {
    let t = TestWorkdir::new(BIN);
    bcreate(&t, "s1", &[]);
    let disk = t.root().join("jails-data/s1-data/dsk1.vhd");
    assert!(qemu_io(&disk, "write -P 0x11 0 64k"));
    let out = t.ok(&["bsnapshot", "mode=create", "jname=s1", "snapname=before"]);
    assert!(out.starts_with("snapshot before of s1 taken at "), "{out}");
    assert!(qemu_io(&disk, "write -P 0x22 0 64k"));
    // Live, while the guest runs (disk only), and by the time.
    t.ok(&["bstart", "jname=s1"]);
    wait_booted(&t, "s1");
    t.ok(&["bsnapshot", "mode=create", "jname=s1", "snapname=live"]);
    t.ok(&[
        "bsnapshot",
        "mode=create",
        "jname=s1",
        "snapname=gettimeofday",
    ]);
    let listed = |t: &TestWorkdir| -> Vec<String> {
        let v: serde_json::Value =
            serde_json::from_str(&t.ok(&["bsnapshot", "jname=s1", "--json"])).expect("JSON");
        v.as_array()
            .expect("rows")
            .iter()
            .map(|r| r["snapname"].as_str().expect("name").to_owned())
            .collect()
    };
    let names = listed(&t);
    assert_eq!(names.len(), 3, "{names:?}");
    assert_eq!(&names[..2], ["before", "live"]);
    assert!(
        names[2].len() == 14 && names[2].bytes().all(|b| b.is_ascii_digit()),
        "{names:?}"
    );
    t.fails(
        4,
        &["bsnapshot", "mode=rollback", "jname=s1", "snapname=before"],
    );
    t.ok(&["bsnapshot", "mode=destroy", "jname=s1", "snapname=live"]);
    t.ok(&["bstop", "jname=s1"]);
    // Rolled back: the disk holds what it held at "before".
    t.ok(&["bsnapshot", "mode=rollback", "jname=s1", "snapname=before"]);
    assert!(
        qemu_io(&disk, "read -P 0x11 0 64k"),
        "the rollback did not restore the disk"
    );
    assert_eq!(listed(&t).len(), 2);
    assert_eq!(
        t.ok(&["bsnapshot", "mode=destroyall", "jname=s1"]).trim(),
        "2 snapshots of s1 destroyed"
    );
    assert!(listed(&t).is_empty());
    // Refusals, nothing changed: no name, no such snapshot, a raw disk, a jail.
    bcreate(&t, "r1", &["imgtype=raw"]);
    let before = t.snapshot();
    for (args, code, said) in [
        (&["bsnapshot", "mode=create", "jname=s1"][..], 2, "snapname"),
        (
            &["bsnapshot", "mode=destroy", "jname=s1", "snapname=nosuch"],
            3,
            "nosuch",
        ),
        (
            &["bsnapshot", "mode=create", "jname=r1", "snapname=a"],
            6,
            "raw",
        ),
        (
            &["bsnapshot", "mode=create", "jname=s1", "snapname=../a"],
            2,
            "snapname",
        ),
        (&["bsnapshot", "mode=list", "jname=nosuch"], 3, "nosuch"),
    ] {
        let e = t.fails(code, args);
        assert!(e.contains(said), "{args:?}: {e}");
    }
    assert_same(&before, &t.snapshot(), "refused bsnapshots");
}

#[test]
fn bclone_copies_a_stopped_vm_s_disk_and_the_clone_boots() {
    let t = TestWorkdir::new(BIN);
    bcreate(&t, "o1", &["vm_vnc_port=5983", "stop_timeout=3"]);
    let disk = |j: &str| t.root().join(format!("jails-data/{j}-data/dsk1.vhd"));
    assert!(qemu_io(&disk("o1"), "write -P 0x33 1M 64k"));
    t.ok(&["bsnapshot", "mode=create", "jname=o1", "snapname=base"]);
    t.ok(&["bstart", "jname=o1"]);
    t.fails(4, &["bclone", "old=o1", "new=o2"]);
    wait_booted(&t, "o1");
    t.ok(&["bstop", "jname=o1"]);
    t.fails(6, &["bclone", "old=o1", "new=o2", "mac_reinit=0"]);
    t.fails(6, &["bclone", "old=o1", "new=o2", "vm_vnc_port=5983"]);
    assert_eq!(
        t.ok(&["bclone", "old=o1", "new=o2"]).trim(),
        "o1 cloned into o2"
    );
    assert!(
        qemu_io(&disk("o2"), "read -P 0x33 1M 64k"),
        "the disk was not copied"
    );
    // A qcow2 copy keeps its snapshots; the VNC port is not shared.
    assert!(t.ok(&["bsnapshot", "jname=o2"]).contains("base"));
    assert!(bls(&t, "o2")["vnc"].is_null());
    t.ok(&["bstart", "jname=o2"]);
    wait_booted(&t, "o2");
    t.ok(&["bstart", "jname=o1"]);
    wait_booted(&t, "o1");
    assert_eq!(
        (
            bls(&t, "o1")["status"].as_str(),
            bls(&t, "o2")["status"].as_str()
        ),
        (Some("running"), Some("running"))
    );
    t.ok(&["bstop", "jname=o1"]);
    t.ok(&["bstop", "jname=o2"]);
}
