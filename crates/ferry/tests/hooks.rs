//! Mount hooks on real jails (DESIGN §6): arguments, environment, log
//! capture, abort and undo, timeouts, refusal of unsafe hooks.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use ferry_testkit::{assert_same, TestWorkdir};

const BIN: &str = env!("CARGO_BIN_EXE_ferry");

/// A jail main process that exits on SIGTERM and needs nothing from /etc.
const EXEC: &str =
    "exec_start=/bin/sh -c 'trap \"exit 0\" TERM; while :; do sleep 1 & wait $!; done'";

/// Parse the CBSD hook arguments the way the NFSv4 sample does.
const GETOPTS: &str = r#"while getopts d:f:j:r:s: o; do
  case $o in d) D=$OPTARG;; f) F=$OPTARG;; j) J=$OPTARG;; r) R=$OPTARG;; s) S=$OPTARG;; *) exit 2;; esac
done"#;

fn calls(t: &TestWorkdir) -> String {
    fs::read_to_string(t.root().join("hooks/calls")).unwrap_or_default()
}

fn tmpfs_hooks(t: &TestWorkdir) -> (String, String) {
    let log = t.root().join("hooks/calls");
    let start = t.hook(
        "tmpfs-start",
        &format!(
            "{GETOPTS}\necho \"mnt_start $FERRY_PHASE $FERRY_NODE $FERRY_EPOCH j=$J d=$D f=$F r=$R s=$S\" >> {log}\n\
             echo hello from the hook\n\
             mountpoint -q \"$D\" || mount -t tmpfs -o size=16m ferrytest \"$D\"",
            log = log.display()
        ),
    );
    let stop = t.hook(
        "tmpfs-stop",
        &format!(
            "{GETOPTS}\necho \"mnt_stop $FERRY_PHASE\" >> {log}\n\
             if mountpoint -q \"$D\"; then umount \"$D\"; fi",
            log = log.display()
        ),
    );
    (
        format!("mnt_start={}", start.display()),
        format!("mnt_stop={}", stop.display()),
    )
}

fn is_mounted(p: &Path) -> bool {
    TestWorkdir::mounts_under(p).iter().any(|m| m == p)
}

#[test]
fn a_tmpfs_hook_is_mounted_while_the_jail_runs_and_unmounted_after_stop() {
    let t = TestWorkdir::with_base(BIN);
    let (start, stop) = tmpfs_hooks(&t);
    let data = t.root().join("jails-data/hk-data");
    t.ok(&["jcreate", "jname=hk", &start, &stop, EXEC]);
    let c = calls(&t);
    assert!(
        c.contains("mnt_start create t1") && c.contains("mnt_stop create"),
        "{c}"
    );
    assert!(!is_mounted(&data), "mounted after create");

    for round in 0..2 {
        t.ok(&["jstart", "jname=hk"]);
        assert!(
            is_mounted(&data),
            "round {round}: data dir not mounted while running"
        );
        t.ok(&["jexec", "jname=hk", "sh", "-c", "echo x > /root/f"]);
        assert!(
            data.join("root/f").exists(),
            "the jail does not write to the mounted data dir"
        );
        t.ok(&["jstop", "jname=hk"]);
        assert!(
            !is_mounted(&data),
            "round {round}: still mounted after stop"
        );
    }
    let c = calls(&t);
    let sys = t.root().join("jails-system/hk");
    let want = format!(
        "mnt_start start t1 1 j=hk d={} f={} r={} s={}",
        data.display(),
        t.root().join("jails-fstab/hk").display(),
        t.root().join("jails-rcconf").display(),
        sys.display()
    );
    assert!(c.contains(&want), "hook arguments: want {want}\n{c}");
    assert_eq!(c.matches("mnt_stop stop").count(), 2, "{c}");
    let log = fs::read_to_string(sys.join("hook.log")).unwrap();
    assert!(
        log.contains("hello from the hook") && log.contains("phase=start"),
        "{log}"
    );
    t.ok(&["jremove", "jname=hk"]);
    assert!(!is_mounted(&data));
    assert!(calls(&t).contains("mnt_start remove"));
}

#[test]
fn a_failing_hook_refuses_the_start_and_leaves_nothing_behind() {
    let t = TestWorkdir::with_base(BIN);
    let (_, stop) = tmpfs_hooks(&t);
    let start = t.hook(
        "fails-on-start",
        &format!("{GETOPTS}\nmount -t tmpfs ferrytest \"$D\"\n[ \"$FERRY_PHASE\" = start ] && {{ echo refusing >&2; exit 3; }}\nexit 0"),
    );
    let data = t.root().join("jails-data/bad-data");
    t.ok(&[
        "jcreate",
        "jname=bad",
        &format!("mnt_start={}", start.display()),
        &stop,
        EXEC,
    ]);
    let e = t.fails(1, &["jstart", "jname=bad"]);
    assert!(e.contains("mnt_start") && e.contains("status 3"), "{e}");
    assert_eq!(t.status("bad"), "stopped");
    assert!(
        !is_mounted(&data),
        "mnt_stop did not undo the partial mount"
    );
    assert!(!t.root().join("jails/bad").exists(), "runtime record left");
    assert!(
        t.workdir().runc_root().read_dir().unwrap().next().is_none(),
        "a runc container was left"
    );
    assert!(
        fs::read_to_string(t.root().join("jails-system/bad/hook.log"))
            .unwrap()
            .contains("refusing")
    );

    // A hook failing at create: nothing is created.
    let never = t.hook("never", "exit 1");
    let before = t.snapshot();
    let e = t.fails(
        1,
        &[
            "jcreate",
            "jname=nope",
            &format!("mnt_start={}", never.display()),
        ],
    );
    assert!(e.contains("mnt_start"), "{e}");
    assert_same(&before, &t.snapshot(), "a failed create");
}

#[test]
fn a_hanging_hook_is_killed_at_mnt_timeout() {
    let t = TestWorkdir::with_base(BIN);
    let pids = t.root().join("hooks/pids");
    let hang = t.hook(
        "hang",
        &format!(
            "[ \"$FERRY_PHASE\" = start ] || exit 0\nsleep 1000 &\necho $! > {}\nwait",
            pids.display()
        ),
    );
    t.ok(&[
        "jcreate",
        "jname=slow",
        &format!("mnt_start={}", hang.display()),
        "mnt_timeout=1",
        EXEC,
    ]);
    let began = Instant::now();
    let e = t.fails(1, &["jstart", "jname=slow"]);
    let took = began.elapsed();
    assert!(e.contains("did not finish within 1s"), "{e}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(6),
        "{took:?}"
    );
    let child: i32 = fs::read_to_string(&pids).unwrap().trim().parse().unwrap();
    let alive = fs::read_to_string(format!("/proc/{child}/stat")).is_ok_and(|s| !s.contains(") Z"));
    assert!(!alive, "the hook's child {child} survived the timeout");
    assert_eq!(t.status("slow"), "stopped");
}

#[test]
fn unsafe_hooks_are_refused_before_anything_changes() {
    let t = TestWorkdir::with_base(BIN);
    let h = t.hook("ww", "exit 0");
    fs::set_permissions(&h, fs::Permissions::from_mode(0o777)).unwrap();
    let before = t.snapshot();
    let e = t.fails(
        6,
        &["jcreate", "jname=w", &format!("mnt_start={}", h.display())],
    );
    assert!(e.contains("writable"), "{e}");
    assert_same(&before, &t.snapshot(), "a refused hook");

    fs::set_permissions(&h, fs::Permissions::from_mode(0o755)).unwrap();
    t.ok(&[
        "jcreate",
        "jname=w",
        &format!("mnt_stop={}", h.display()),
        EXEC,
    ]);
    fs::set_permissions(&h, fs::Permissions::from_mode(0o775)).unwrap();
    t.fails(6, &["jstart", "jname=w"]);
    assert_eq!(t.status("w"), "stopped");
    std::os::unix::fs::chown(&h, Some(65534), None).unwrap();
    fs::set_permissions(&h, fs::Permissions::from_mode(0o755)).unwrap();
    let e = t.fails(6, &["jstart", "jname=w"]);
    assert!(e.contains("owned"), "{e}");
    std::os::unix::fs::chown(&h, Some(0), None).unwrap();
    t.ok(&["jstart", "jname=w"]);
    t.ok(&["jstop", "jname=w"]);
}
