//! The command grammar, exit codes and refusal of bad input, through the
//! real binary. Bad input must change nothing: the workdir is compared
//! byte for byte before and after.

use std::fs;

use ferry_testkit::{assert_same, TestWorkdir};

const BIN: &str = env!("CARGO_BIN_EXE_ferry");

#[test]
fn help_is_generated_from_the_declarations() {
    let t = TestWorkdir::new(BIN);
    let top = t.ok(&["--help"]);
    for word in [
        "initenv", "base", "jcreate", "jstart", "jstop", "jrestart", "jremove", "jls", "jexec",
    ] {
        assert!(top.contains(word), "{word} missing from help:\n{top}");
    }
    assert!(top.contains("Exit codes"));
    let h = t.ok(&["jcreate", "--help"]);
    assert!(
        h.contains("ip4_addr=") && h.contains("mnt_timeout=") && h.contains("default 60"),
        "{h}"
    );
    let h = t.ok(&["jls", "jname=x", "--help"]);
    assert!(h.contains("display="), "{h}");
}

#[test]
fn unknown_commands_keys_and_values_are_usage_errors_naming_the_problem() {
    let t = TestWorkdir::with_base(BIN);
    let before = t.snapshot();
    t.fails(2, &["jstrat", "jname=a"]);
    let e = t.fails(2, &["jcreate", "jname=a", "colour=red"]);
    assert!(e.contains("colour"), "{e}");
    for (arg, key) in [
        ("mnt_timeout=abc", "mnt_timeout"),
        ("astart=2", "astart"),
        ("ip4_addr=10.0.0.300", "ip4_addr"),
        ("baserw=maybe", "baserw"),
        ("interface=a/b", "interface"),
        ("mnt_start=relative/hook", "mnt_start"),
        ("exec_start=", "exec_start"),
    ] {
        let e = t.fails(2, &["jcreate", "jname=a", arg]);
        assert!(e.contains(key), "{arg}: {e}");
    }
    let e = t.fails(2, &["jstart"]);
    assert!(e.contains("jname is required"), "{e}");
    let e = t.fails(2, &["jls", "display=jname,colour"]);
    assert!(e.contains("colour"), "{e}");
    assert_same(&before, &t.snapshot(), "bad input changed the workdir");
}

#[test]
fn hostile_jnames_are_refused_and_change_nothing() {
    let t = TestWorkdir::with_base(BIN);
    t.ok(&["jcreate", "jname=victim"]);
    let before = t.snapshot();
    let long = "x".repeat(200);
    for name in [
        "../x",
        "a;rm -rf /",
        &long,
        "-rf",
        ".hidden",
        "a/b",
        "a b",
        "$(touch /tmp/pwned)",
        "`id`",
        "",
    ] {
        for cmd in ["jcreate", "jstart", "jstop", "jremove", "jexec"] {
            let arg = format!("jname={name}");
            let e = t.fails(2, &[cmd, &arg]);
            assert!(e.contains("jname"), "{cmd} {arg}: {e}");
        }
    }
    assert_same(&before, &t.snapshot(), "a hostile name changed the workdir");
    assert!(!std::path::Path::new("/tmp/pwned").exists());
}

#[test]
fn malformed_definition_files_are_refused_and_kept() {
    let t = TestWorkdir::with_base(BIN);
    t.ok(&["jcreate", "jname=j1"]);
    let rc = t.root().join("jails-system/j1/rc.conf_j1");
    let good = fs::read_to_string(&rc).unwrap();
    for bad in [
        good.replace(
            "exec_start=\"/bin/sh /etc/rc\";",
            "exec_start=\"$(reboot)\";",
        ),
        good.replace("ip4_addr=\"0\";", "ip4_addr=\"not-an-ip\";"),
        good.replace("astart=\"0\";", "astart=\"0"),
        good.replace("baserw=\"0\";", "baserw = \"0\";"),
        good[..good.len() / 2].to_owned(),
    ] {
        fs::write(&rc, &bad).unwrap();
        let before = t.snapshot();
        let e = t.fails(2, &["jstart", "jname=j1"]);
        assert!(e.contains("rc.conf_j1") || e.contains("definition"), "{e}");
        assert_same(
            &before,
            &t.snapshot(),
            "a bad definition changed the workdir",
        );
        assert_eq!(t.status("j1"), "stopped");
    }
    fs::write(&rc, &good).unwrap();
}

#[test]
fn not_found_and_wrong_state_have_their_own_codes() {
    let t = TestWorkdir::with_base(BIN);
    t.fails(3, &["jstart", "jname=nope"]);
    t.fails(3, &["jstart", "jname=nope*"]);
    t.fails(3, &["jcreate", "jname=a", "base=nobase"]);
    t.ok(&["jcreate", "jname=a"]);
    t.fails(4, &["jcreate", "jname=a"]);
    t.fails(4, &["jstop", "jname=a"]);
    t.fails(4, &["jexec", "jname=a", "true"]);
    t.fails(4, &["base", "mode=remove", "name=busybox"]);
    t.ok(&["jremove", "jname=a"]);
    t.ok(&["base", "mode=remove", "name=busybox"]);
    t.fails(3, &["base", "mode=remove", "name=busybox"]);
}

#[test]
fn initenv_is_idempotent_and_workdirs_are_independent() {
    let a = TestWorkdir::with_base(BIN);
    let ids = |t: &TestWorkdir| t.workdir().dir_ids().unwrap();
    let first = ids(&a);
    a.ok(&["jcreate", "jname=same"]);
    a.ok(&["initenv"]);
    a.ok(&["initenv", "nodename=t1"]);
    assert_eq!(ids(&a), first, "initenv rewrote dir.id");
    assert!(a.jls().contains_key("same"), "initenv lost the registry");

    let b = TestWorkdir::with_base(BIN);
    assert_ne!(ids(&b), first);
    b.ok(&["jcreate", "jname=same"]);
    a.ok(&["jstart", "jname=same"]);
    b.ok(&["jstart", "jname=same"]);
    assert_eq!(a.status("same"), "running");
    assert_eq!(b.status("same"), "running");
    a.ok(&["jstop", "jname=same"]);
    assert_eq!(a.status("same"), "stopped");
    assert_eq!(
        b.status("same"),
        "running",
        "stopping in one workdir touched the other"
    );
    b.ok(&["jstop", "jname=same"]);
}

#[test]
fn commands_need_an_initialized_workdir() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(BIN)
        .args(["--workdir", dir.path().to_str().unwrap(), "jls"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(6));
    assert!(String::from_utf8_lossy(&out.stderr).contains("initenv"));
    assert_eq!(
        fs::read_dir(dir.path()).unwrap().count(),
        0,
        "jls created files"
    );
}
