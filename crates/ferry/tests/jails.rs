//! Jails on real runc: lifecycle, the state machine, live state, the two
//! root layouts, extra mounts, networking and globs.

use std::fs;
use std::time::Duration;

use ferry_testkit::{assert_same, TestWorkdir};

const BIN: &str = env!("CARGO_BIN_EXE_ferry");

fn pid_of(t: &TestWorkdir, j: &str) -> i32 {
    let v = &t.jls()[j];
    v["jid"]
        .as_i64()
        .map(|p| i32::try_from(p).expect("pid fits i32"))
        .unwrap_or_else(|| panic!("{j} has no jid: {v}"))
}

#[test]
fn lifecycle_and_state_machine() {
    let t = TestWorkdir::with_base(BIN);
    t.ok(&["jcreate", "jname=j1", "host_hostname=j1.example.org"]);
    assert_eq!(t.status("j1"), "stopped");
    t.ok(&["jstart", "jname=j1"]);
    assert_eq!(t.status("j1"), "running");
    assert_eq!(
        t.ok(&["jexec", "jname=j1", "hostname"]).trim(),
        "j1.example.org"
    );

    // The base is read-only; the jail's own dirs are writable and live in its data dir.
    let r = t.run(&["jexec", "jname=j1", "touch", "/bin/x"]);
    assert_ne!(r.code, 0, "the base is writable from the jail");
    t.ok(&["jexec", "jname=j1", "sh", "-c", "echo kept > /root/note"]);
    let note = t.root().join("jails-data/j1-data/root/note");
    assert_eq!(fs::read_to_string(&note).unwrap(), "kept\n");
    assert!(!t.root().join("bases/busybox/root/note").exists());

    // jexec passes the command's status through.
    assert_eq!(t.run(&["jexec", "jname=j1", "sh", "-c", "exit 7"]).code, 7);

    // Refusals with their own code, nothing changed.
    t.fails(4, &["jstart", "jname=j1"]);
    t.fails(4, &["jremove", "jname=j1"]);
    assert_eq!(t.status("j1"), "running");

    t.ok(&["jrestart", "jname=j1"]);
    assert_eq!(t.status("j1"), "running");
    t.ok(&["jstop", "jname=j1"]);
    assert_eq!(t.status("j1"), "stopped");
    t.fails(4, &["jstop", "jname=j1"]);
    assert!(
        !t.root().join("jails/j1").exists(),
        "runtime dir left after stop"
    );

    // Data survives a stop and a start.
    t.ok(&["jstart", "jname=j1"]);
    assert_eq!(t.ok(&["jexec", "jname=j1", "cat", "/root/note"]), "kept\n");
    t.ok(&["jstop", "jname=j1"]);

    t.ok(&["jremove", "jname=j1"]);
    for p in [
        "jails-data/j1-data",
        "jails-system/j1",
        "jails-fstab/j1",
        "jails/j1",
    ] {
        assert!(!t.root().join(p).exists(), "{p} left after jremove");
    }
    assert!(t.jls().is_empty());
}

#[test]
fn a_jail_whose_process_died_shows_stopped_and_starts_again() {
    let t = TestWorkdir::with_base(BIN);
    t.ok(&["jcreate", "jname=dies", "runasap=1"]);
    let pid = pid_of(&t, "dies");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while t.status("dies") != "stopped" {
        assert!(
            std::time::Instant::now() < deadline,
            "jls still shows the dead jail running"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    t.fails(4, &["jexec", "jname=dies", "true"]);
    t.ok(&["jstart", "jname=dies"]);
    assert_eq!(t.status("dies"), "running");
    assert_ne!(pid_of(&t, "dies"), pid);
    t.ok(&["jstop", "jname=dies"]);
}

#[test]
fn stop_kills_a_jail_that_ignores_sigterm_after_stop_timeout() {
    let t = TestWorkdir::with_base(BIN);
    // PID 1 of a pid namespace without a TERM handler ignores SIGTERM.
    t.ok(&[
        "jcreate",
        "jname=stubborn",
        "exec_start=/bin/sleep 100000",
        "stop_timeout=1",
        "runasap=1",
    ]);
    let began = std::time::Instant::now();
    t.ok(&["jstop", "jname=stubborn"]);
    let took = began.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(8),
        "{took:?}"
    );
    assert_eq!(t.status("stubborn"), "stopped");
}

#[test]
fn baserw_gives_the_jail_its_own_whole_root() {
    let t = TestWorkdir::with_base(BIN);
    t.ok(&["jcreate", "jname=rw", "baserw=1", "runasap=1"]);
    t.ok(&["jexec", "jname=rw", "touch", "/bin/mine"]);
    assert!(t.root().join("jails-data/rw-data/bin/mine").exists());
    assert!(!t.root().join("bases/busybox/bin/mine").exists());
    t.ok(&["jstop", "jname=rw"]);
    // A jail with its own root does not hold its base.
    t.ok(&["jremove", "jname=rw"]);
}

#[test]
fn fstab_adds_bind_and_tmpfs_mounts() {
    let t = TestWorkdir::with_base(BIN);
    let shared = t.root().join("srv");
    fs::create_dir_all(&shared).unwrap();
    fs::write(shared.join("hello"), "from the host\n").unwrap();
    t.ok(&["jcreate", "jname=fs"]);
    let fstab = t.root().join("jails-fstab/fs/fstab");
    fs::write(
        &fstab,
        format!(
            "{} /var/www nullfs ro 0 0\ntmpfs /tmp/scratch tmpfs rw,size=8m 0 0\n",
            shared.display()
        ),
    )
    .unwrap();
    t.ok(&["jstart", "jname=fs"]);
    assert_eq!(
        t.ok(&["jexec", "jname=fs", "cat", "/var/www/hello"]),
        "from the host\n"
    );
    assert_ne!(
        t.run(&["jexec", "jname=fs", "touch", "/var/www/x"]).code,
        0,
        "ro mount is writable"
    );
    t.ok(&["jexec", "jname=fs", "touch", "/tmp/scratch/x"]);
    t.ok(&["jstop", "jname=fs"]);

    // A mount point outside the jail's own dirs must exist in the base; the base is never written.
    fs::write(
        &fstab,
        format!("{} /opt/app nullfs ro 0 0\n", shared.display()),
    )
    .unwrap();
    let e = t.fails(2, &["jstart", "jname=fs"]);
    assert!(e.contains("/opt/app"), "{e}");
    assert!(!t.root().join("bases/busybox/opt").exists());
    fs::write(&fstab, "/etc /etc/../../x nullfs rw 0 0\n").unwrap();
    t.fails(2, &["jstart", "jname=fs"]);
    assert_eq!(t.status("fs"), "stopped");
    assert!(
        !t.root().join("jails/fs").exists(),
        "a refused start left a runtime record"
    );
}

#[test]
fn ip4_addr_puts_the_jail_on_a_bridge_in_its_own_netns() {
    let t = TestWorkdir::with_base(BIN);
    let br = t.bridge();
    let iface = format!("interface={br}");
    t.ok(&[
        "jcreate",
        "jname=a",
        "ip4_addr=10.231.7.2/24",
        &iface,
        "runasap=1",
    ]);
    t.ok(&[
        "jcreate",
        "jname=b",
        "ip4_addr=10.231.7.3/24",
        &iface,
        "runasap=1",
    ]);
    let addr = t.ok(&["jexec", "jname=a", "ip", "-4", "addr", "show", "eth0"]);
    assert!(addr.contains("10.231.7.2/24"), "{addr}");
    // Traffic stays between the two jails' namespaces on the test's own bridge.
    t.ok(&[
        "jexec",
        "jname=a",
        "ping",
        "-c",
        "1",
        "-W",
        "5",
        "10.231.7.3",
    ]);
    t.ok(&["jstop", "jname=*"]);
    let tag = t.workdir().pool_tag();
    let left: Vec<_> = fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(&format!("ferry-{tag}-"))
        })
        .collect();
    assert!(
        left.is_empty(),
        "network namespaces left after stop: {left:?}"
    );
}

#[test]
fn globs_report_one_result_per_jail_and_one_failure_does_not_stop_the_others() {
    let t = TestWorkdir::with_base(BIN);
    for j in ["g1", "g2", "g3", "other"] {
        t.ok(&["jcreate", &format!("jname={j}")]);
    }
    t.ok(&["jstart", "jname=g2"]);
    let r = t.run(&["jstart", "jname=g*", "--json"]);
    assert_eq!(r.code, 4, "{}{}", r.stdout, r.stderr);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), 3);
    let codes: Vec<i64> = results
        .iter()
        .map(|r| r["code"].as_i64().unwrap())
        .collect();
    assert_eq!(codes, [0, 4, 0]);
    let jls = t.jls();
    assert!(["g1", "g2", "g3"]
        .iter()
        .all(|j| jls[*j]["status"] == "running"));
    assert_eq!(jls["other"]["status"], "stopped");
    let listed = t.ok(&["jls", "jname=g*", "display=jname,status"]);
    assert!(
        listed.contains("g3") && !listed.contains("other"),
        "{listed}"
    );
    t.ok(&["jstop", "jname=g*"]);
    t.ok(&["jremove", "jname=*"]);
    assert!(t.jls().is_empty());
}

#[test]
fn bases_from_a_directory_tree_and_removal_refused_while_used() {
    let t = TestWorkdir::with_base(BIN);
    let tree = t.root().join("bases/busybox");
    t.ok(&[
        "base",
        "mode=create",
        "name=copy",
        "from=dir",
        &format!("path={}", tree.display()),
    ]);
    t.fails(
        4,
        &[
            "base",
            "mode=create",
            "name=copy",
            "from=dir",
            &format!("path={}", tree.display()),
        ],
    );
    let listed: serde_json::Value = serde_json::from_str(&t.ok(&["base", "--json"])).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 2);
    t.ok(&["jcreate", "jname=user", "base=copy", "runasap=1"]);
    t.ok(&["jexec", "jname=user", "true"]);
    let e = t.fails(4, &["base", "mode=remove", "name=copy"]);
    assert!(e.contains("user"), "{e}");
    t.ok(&["jstop", "jname=user"]);
    t.ok(&["jremove", "jname=user"]);
    t.ok(&["base", "mode=remove", "name=copy"]);
}

#[test]
fn listings_take_cbsd_s_header_and_display_keys_and_refuse_unknown_columns() {
    let t = TestWorkdir::with_base(BIN);
    t.ok(&["jcreate", "jname=j1", "host_hostname=j1.example.org"]);
    t.ok(&["jcreate", "jname=j2", "ip4_addr=10.9.0.2/24"]);
    // CBSD's header=0: the rows alone, aligned, `-` for nothing.
    let out = t.ok(&["jls", "header=0", "display=jname,ip4_addr,status,vm_ram"]);
    assert_eq!(
        out,
        "j1  0            stopped  -\nj2  10.9.0.2/24  stopped  -\n"
    );
    // The default header, and CBSD's node columns.
    let out = t.ok(&["jls", "display=nodename,jname"]);
    let header: Vec<&str> = out
        .lines()
        .next()
        .expect("a header")
        .split_whitespace()
        .collect();
    assert_eq!(header, ["NODENAME", "JNAME"], "{out}");
    let json: serde_json::Value =
        serde_json::from_str(&t.ok(&["jls", "--json", "display=jname,node,host_hostname"]))
            .expect("JSON");
    assert_eq!(
        json,
        serde_json::json!([
            {"jname": "j1", "node": json[0]["node"], "host_hostname": "j1.example.org"},
            {"jname": "j2", "node": json[0]["node"], "host_hostname": "j2"},
        ])
    );
    assert!(json[0]["node"].as_str().is_some_and(|n| !n.is_empty()));
    // Every listing takes them.
    for cmd in [
        &["bls", "header=0"][..],
        &["base", "header=0", "display=name"],
        &["taskls", "header=0"],
        &["task", "mode=list", "header=0", "display=id,state"],
        &["node", "header=0", "display=node,state"],
    ] {
        let out = t.ok(cmd);
        assert!(
            !out.lines().any(|l| l
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_whitespace() || c == '_')
                && !l.is_empty()),
            "{cmd:?} printed a header: {out}"
        );
    }
    assert_eq!(t.ok(&["base", "header=0", "display=name"]), "busybox\n");
    // An unknown column is refused by name, nothing printed.
    let err = t.fails(2, &["jls", "display=jname,colour"]);
    assert!(err.contains("colour") && err.contains("display"), "{err}");
    t.fails(2, &["bls", "display=jname,base"]);
    t.fails(2, &["jls", "header=maybe"]);
}

#[test]
fn jail_profiles_fill_in_what_jcreate_was_not_given() {
    let t = TestWorkdir::with_base(BIN);
    let profiles = t.root().join("etc/profiles");
    fs::create_dir_all(&profiles).unwrap();
    fs::write(
        profiles.join("web.conf"),
        "# not a profile: the file name lacks jail-\n",
    )
    .unwrap();
    fs::write(
        profiles.join("jail-web.conf"),
        "long_description=\"web jails\"\ndefault_domain=\"my.domain\"\nstop_timeout=\"3\"\nastart=\"1\"\n",
    )
    .unwrap();
    t.ok(&["jcreate", "jname=w1", "jail_profile=web", "astart=0"]);
    let jls = t.jls();
    assert_eq!(jls["w1"]["host_hostname"], "w1.my.domain");
    assert_eq!(jls["w1"]["astart"], false, "jcreate's own astart=0 wins");
    t.ok(&["jstart", "jname=w1"]);
    assert_eq!(
        t.ok(&["jexec", "jname=w1", "hostname"]).trim(),
        "w1.my.domain"
    );
    t.ok(&["jstop", "jname=w1"]);
    // The default profile is the defaults jcreate always had.
    t.ok(&["jcreate", "jname=d1"]);
    assert_eq!(t.jls()["d1"]["host_hostname"], "d1");
    // An unknown profile, or a bad value in one, changes nothing.
    let before = t.snapshot();
    let err = t.fails(2, &["jcreate", "jname=x1", "jail_profile=nosuch"]);
    assert!(err.contains("nosuch"), "{err}");
    fs::write(profiles.join("jail-bad.conf"), "stop_timeout=\"soon\"\n").unwrap();
    let err = t.fails(2, &["jcreate", "jname=x1", "jail_profile=bad"]);
    assert!(
        err.contains("stop_timeout") && err.contains("jail-bad.conf"),
        "{err}"
    );
    fs::remove_file(profiles.join("jail-bad.conf")).unwrap();
    let err = t.fails(6, &["jcreate", "jname=x1", "pkglist=mc git"]);
    assert!(err.contains("package manager"), "{err}");
    assert_same(&before, &t.snapshot(), "refused jcreates");
}

#[test]
fn jset_changes_settings_with_jcreate_s_validation_and_jget_reads_them_back() {
    let t = TestWorkdir::with_base(BIN);
    t.ok(&["jcreate", "jname=s1"]);
    t.ok(&["jcreate", "jname=s2"]);
    let out = t.ok(&[
        "jset",
        "jname=s1",
        "host_hostname=s1.example.org",
        "astart=1",
    ]);
    assert_eq!(out.trim(), "s1: set host_hostname, astart");
    let jls = t.jls();
    assert_eq!(jls["s1"]["host_hostname"], "s1.example.org");
    assert_eq!(jls["s1"]["astart"], true);
    assert_eq!(
        t.ok(&["jget", "jname=s1", "host_hostname", "astart"]),
        "host_hostname: s1.example.org\nastart: 1\n"
    );
    assert!(t
        .ok(&["jget", "jname=s1"])
        .contains("exec_start: /bin/sh /etc/rc\n"));
    // A glob sets each; a running jail is told what waits for its start.
    t.ok(&["jstart", "jname=s1"]);
    let out = t.ok(&["jset", "jname=s*", "stop_timeout=3", "ip4_addr=10.9.1.2/24"]);
    assert!(
        out.contains("s1: set ip4_addr, stop_timeout; ip4_addr takes effect at the next start"),
        "{out}"
    );
    assert!(out.contains("s2: set ip4_addr, stop_timeout\n"), "{out}");
    assert_eq!(
        t.ok(&["jexec", "jname=s1", "hostname"]).trim(),
        "s1.example.org"
    );
    t.ok(&["jstop", "jname=s1"]);
    assert_eq!(t.jls()["s2"]["ip4_addr"], "10.9.1.2/24");
    // Bad input changes nothing: the grammar, an unknown key, nothing to set,
    // a missing jail or key.
    let before = t.snapshot();
    for (args, code, said) in [
        (
            &["jset", "jname=s1", "stop_timeout=soon"][..],
            2,
            "stop_timeout",
        ),
        (&["jset", "jname=s1", "ip4_addr=10.0.0.300"], 2, "ip4_addr"),
        (
            &["jset", "jname=s1", "exec_start=relative/rc"],
            2,
            "exec_start",
        ),
        (&["jset", "jname=s1", "base=other"], 2, "base"),
        (&["jset", "jname=s1"], 2, "nothing to set"),
        (&["jset", "jname=nosuch", "astart=1"], 3, "nosuch"),
        (&["jget", "jname=s1", "colour"], 2, "colour"),
        (&["bset", "jname=s1", "vm_ram=1g"], 3, "jail"),
    ] {
        let e = t.fails(code, args);
        assert!(e.contains(said), "{args:?}: {e}");
    }
    assert_same(&before, &t.snapshot(), "refused jsets");
}

#[test]
fn jsnapshot_is_refused_with_the_reason() {
    let t = TestWorkdir::with_base(BIN);
    t.ok(&["jcreate", "jname=j1"]);
    let e = t.fails(6, &["jsnapshot", "mode=create", "jname=j1", "snapname=a"]);
    assert!(
        e.contains("shared storage") && e.contains("bsnapshot"),
        "{e}"
    );
    t.fails(3, &["jsnapshot", "jname=nosuch"]);
}

#[test]
fn jclone_copies_a_stopped_jail_into_a_new_one_and_clone_hooks_may_copy_or_cancel() {
    use std::os::unix::fs::PermissionsExt;
    let t = TestWorkdir::with_base(BIN);
    t.ok(&["jcreate", "jname=c1", "host_hostname=c1.example.org"]);
    t.ok(&["jstart", "jname=c1"]);
    t.ok(&["jexec", "jname=c1", "sh", "-c", "echo kept > /root/note"]);
    t.fails(4, &["jclone", "old=c1", "new=c2"]);
    t.ok(&["jstop", "jname=c1"]);
    assert_eq!(
        t.ok(&["jclone", "old=c1", "new=c2"]).trim(),
        "c1 cloned into c2"
    );
    let jls = t.jls();
    assert_eq!(jls["c2"]["host_hostname"], "c2");
    assert_eq!(jls["c1"]["host_hostname"], "c1.example.org");
    t.ok(&["jstart", "jname=c2"]);
    assert_eq!(t.ok(&["jexec", "jname=c2", "cat", "/root/note"]), "kept\n");
    assert_eq!(t.ok(&["jexec", "jname=c2", "hostname"]).trim(), "c2");
    t.ok(&["jexec", "jname=c2", "sh", "-c", "echo changed > /root/note"]);
    t.ok(&["jstop", "jname=c2"]);
    let note =
        |j: &str| fs::read_to_string(t.root().join(format!("jails-data/{j}-data/root/note")));
    assert_eq!(
        note("c1").unwrap(),
        "kept\n",
        "the clone shares nothing with its source"
    );
    // Refused, nothing made: the name is taken, the source is missing.
    t.fails(4, &["jclone", "old=c1", "new=c2"]);
    t.fails(3, &["jclone", "old=nosuch", "new=c9"]);
    t.fails(2, &["jclone", "old=c1", "new=../x"]);

    // A clone hook that makes the copy itself (exit 1): ferry copies nothing.
    let hooks = t.root().join("jails-system/c1/clone-local.d");
    fs::create_dir_all(&hooks).unwrap();
    let hook = hooks.join("10-storage");
    let write_hook = |exit: u8| {
        fs::write(
            &hook,
            format!(
                "#!/bin/sh\nwhile [ $# -gt 0 ]; do case \"$1\" in -d) d=\"$2\"; shift 2;; *) shift;; esac; done\n\
                 mkdir -p \"$d/root\" && echo \"made by the storage from $FERRY_CLONE_FROM\" > \"$d/root/hooked\"\nexit {exit}\n"
            ),
        )
        .unwrap();
        fs::set_permissions(&hook, fs::Permissions::from_mode(0o755)).unwrap();
    };
    write_hook(1);
    t.ok(&["jclone", "old=c1", "new=c3", "ip4_addr=10.9.2.3/24"]);
    assert_eq!(
        fs::read_to_string(t.root().join("jails-data/c3-data/root/hooked")).unwrap(),
        "made by the storage from c1\n"
    );
    assert!(note("c3").is_err(), "ferry copied although the hook did");
    assert_eq!(t.jls()["c3"]["ip4_addr"], "10.9.2.3/24");
    // Exit 2 cancels the clone: nothing is left of it.
    write_hook(2);
    let before = t.snapshot();
    let e = t.fails(6, &["jclone", "old=c1", "new=c4"]);
    assert!(e.contains("cancelled by its hook"), "{e}");
    assert!(!t.root().join("jails-data/c4-data").exists());
    assert!(!t.jls().contains_key("c4"));
    assert_same(&before, &t.snapshot(), "a cancelled clone");
}
