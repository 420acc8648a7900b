use super::*;
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use std::os::unix::fs::PermissionsExt;

/// Dirs and a log for a hook run, in a root-owned 0700 tempdir.
struct Fixture {
    dir: tempfile::TempDir,
    data: PathBuf,
    fstab: PathBuf,
    rcconf: PathBuf,
    system: PathBuf,
    log: PathBuf,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let sub = |name: &str| {
            let p = dir.path().join(name);
            fs::create_dir(&p).expect("mkdir");
            p
        };
        let (data, fstab, rcconf, system) =
            (sub("data"), sub("fstab"), sub("rcconf"), sub("system"));
        let log = system.join("hook.log");
        Fixture {
            dir,
            data,
            fstab,
            rcconf,
            system,
            log,
        }
    }

    /// Write an sh script hook with mode 0755.
    fn hook(&self, name: &str, body: &str) -> PathBuf {
        write_hook(&self.dir.path().join(name), body)
    }

    fn req(&self) -> HookRun<'_> {
        HookRun {
            kind: HookKind::MntStart,
            phase: Phase::Start,
            jname: "j1",
            data_dir: &self.data,
            fstab_dir: &self.fstab,
            rcconf_dir: &self.rcconf,
            system_dir: &self.system,
            node: "n1",
            workdir: Path::new("/usr/jails"),
            epoch: 3,
            log: &self.log,
            timeout: Some(Duration::from_secs(10)),
            grace: Duration::from_millis(500),
            dry_run: false,
        }
    }

    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).expect("read log")
    }

    /// A file in the data dir, where the test hooks write what they saw.
    fn data_file(&self, name: &str) -> String {
        fs::read_to_string(self.data.join(name)).expect("read data file")
    }

    fn pid_in(&self, name: &str) -> i32 {
        self.data_file(name).trim().parse().expect("pid")
    }
}

fn write_hook(path: &Path, body: &str) -> PathBuf {
    fs::write(path, format!("#!/bin/sh\n{body}\n")).expect("write hook");
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).expect("chmod");
    path.to_owned()
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
}

/// Alive and not a zombie (PID 1 here may not reap orphans).
fn alive(pid: i32) -> bool {
    crate::sys::proc_stat(pid).is_some_and(|p| p.is_live())
}

fn kill_stray(pid: i32) {
    let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
}

#[test]
fn passes_cbsd_arguments_exactly() {
    let fx = Fixture::new();
    let hook = fx.hook(
        "h",
        r#"for a in "$@"; do printf '%s\n' "$a"; done > "$2/args""#,
    );
    run(&hook, &fx.req()).expect("hook runs");
    let want = [
        "-d",
        fx.data.to_str().expect("utf8"),
        "-f",
        fx.fstab.to_str().expect("utf8"),
        "-j",
        "j1",
        "-r",
        fx.rcconf.to_str().expect("utf8"),
        "-s",
        fx.system.to_str().expect("utf8"),
    ];
    assert_eq!(fx.data_file("args").lines().collect::<Vec<_>>(), want);
}

#[test]
fn arguments_are_never_shell_parsed() {
    let fx = Fixture::new();
    let hook = fx.hook("h", r#"printf '%s' "$6" > "$2/jname""#);
    let mut req = fx.req();
    let evil = "j; touch /tmp/ferry-hook-pwned $(id)";
    req.jname = evil;
    run(&hook, &req).expect("hook runs");
    assert_eq!(fx.data_file("jname"), evil);
}

#[test]
fn environment_is_clean_apart_from_path_and_ferry_vars() {
    let fx = Fixture::new();
    let hook = fx.hook("h", r#"env > "$2/env""#);
    run(&hook, &fx.req()).expect("hook runs");
    let env = fx.data_file("env");
    let vars: Vec<(&str, &str)> = env.lines().filter_map(|l| l.split_once('=')).collect();
    let get = |k: &str| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| *v);
    assert_eq!(get("PATH"), Some(HOOK_PATH));
    assert_eq!(get("FERRY_NODE"), Some("n1"));
    assert_eq!(get("FERRY_EPOCH"), Some("3"));
    assert_eq!(get("FERRY_PHASE"), Some("start"));
    assert_eq!(get("FERRY_JNAME"), Some("j1"));
    assert_eq!(get("FERRY_HOOK"), Some("mnt_start"));
    assert_eq!(get("FERRY_DRY_RUN"), None);
    // Only what sh itself adds may appear beside ours.
    for (name, _) in &vars {
        assert!(
            name.starts_with("FERRY_") || ["PATH", "PWD", "OLDPWD", "SHLVL", "_"].contains(name),
            "unexpected variable {name} in hook env"
        );
    }
    // The parent has variables of its own (cargo sets some); none leaked.
    for (name, _) in std::env::vars() {
        if name != "PATH" && name != "PWD" && !name.starts_with("FERRY_") {
            assert_eq!(get(&name), None, "{name} leaked into the hook env");
        }
    }
    assert_eq!(get("PWD"), Some("/"));
}

#[test]
fn dry_run_and_phase_and_kind_reach_the_hook() {
    let fx = Fixture::new();
    let hook = fx.hook(
        "h",
        r#"echo "$FERRY_DRY_RUN $FERRY_PHASE $FERRY_HOOK" > "$2/seen""#,
    );
    let mut req = fx.req();
    req.dry_run = true;
    req.phase = Phase::MigrateOut;
    req.kind = HookKind::MntStop;
    run(&hook, &req).expect("hook runs");
    assert_eq!(fx.data_file("seen"), "1 migrate-out mnt_stop\n");
    assert!(fx.log_text().contains(" dry-run "));
}

#[test]
fn stdin_is_dev_null() {
    let fx = Fixture::new();
    let hook = fx.hook(
        "h",
        r#"cat > "$2/stdin"; readlink /proc/self/fd/0 >> "$2/stdin""#,
    );
    run(&hook, &fx.req()).expect("hook runs");
    assert_eq!(fx.data_file("stdin"), "/dev/null\n");
}

#[test]
fn output_lands_in_the_log_between_header_and_footer() {
    let fx = Fixture::new();
    let hook = fx.hook("h", "echo to-stdout; echo to-stderr >&2");
    let outcome = run(&hook, &fx.req()).expect("hook runs");
    assert!(outcome.elapsed < Duration::from_secs(5));
    let mode = fs::metadata(&fx.log).expect("log").mode() & 0o777;
    assert_eq!(mode, LOG_MODE);
    let text = fx.log_text();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    let head = lines[0];
    assert!(
        head.starts_with("--- 20") && head.as_bytes()[23] == b'Z',
        "{head}"
    );
    let want = format!(
        " mnt_start phase=start jname=j1 node=n1 epoch=3 {}",
        hook.display()
    );
    assert!(head.ends_with(&want), "{head}");
    assert_eq!(&lines[1..3], ["to-stdout", "to-stderr"]);
    assert!(lines[3].starts_with("--- exit 0 after ") && lines[3].ends_with(" ms"));

    // A second run appends.
    run(&hook, &fx.req()).expect("hook runs");
    assert_eq!(fx.log_text().lines().count(), 8);
}

#[test]
fn log_that_is_a_symlink_is_not_followed() {
    let fx = Fixture::new();
    let target = fx.dir.path().join("elsewhere");
    std::os::unix::fs::symlink(&target, &fx.log).expect("symlink");
    let hook = fx.hook("h", r#"touch "$2/ran""#);
    let err = run(&hook, &fx.req()).expect_err("refused log");
    assert!(matches!(err, HookError::Log { .. }), "{err:?}");
    assert!(!err.is_refusal());
    assert!(!target.exists());
    assert!(
        !fx.data.join("ran").exists(),
        "hook must not run without its log"
    );
}

#[test]
fn nonzero_exit_is_a_failure() {
    let fx = Fixture::new();
    let hook = fx.hook("h", "exit 3");
    let err = run(&hook, &fx.req()).expect_err("exit 3");
    assert!(
        matches!(
            err,
            HookError::Exit {
                code: 3,
                kind: HookKind::MntStart,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(!err.is_refusal());
    let msg = err.to_string();
    assert_eq!(
        msg,
        format!(
            "mnt_start hook {} exited with status 3; see the hook log",
            hook.display()
        )
    );
    assert!(fx
        .log_text()
        .lines()
        .last()
        .expect("footer")
        .starts_with("--- exit 3 after "));
}

#[test]
fn death_by_signal_is_a_failure() {
    let fx = Fixture::new();
    let hook = fx.hook("h", "kill -9 $$");
    let err = run(&hook, &fx.req()).expect_err("signal");
    assert!(
        matches!(err, HookError::Signal { signal: 9, .. }),
        "{err:?}"
    );
    assert!(fx
        .log_text()
        .lines()
        .last()
        .expect("footer")
        .starts_with("--- exit signal 9 "));
}

#[test]
fn timeout_ends_the_whole_group_with_sigterm() {
    let fx = Fixture::new();
    let hook = fx.hook("h", r#"sleep 1000 & echo $! > "$2/bg"; sleep 1000"#);
    let mut req = fx.req();
    req.timeout = Some(Duration::from_millis(300));
    req.grace = Duration::from_secs(2);
    let t0 = Instant::now();
    let err = run(&hook, &req).expect_err("timeout");
    let took = t0.elapsed();
    let bg = fx.pid_in("bg");
    let bg_alive = alive(bg);
    kill_stray(bg);
    assert!(
        matches!(err, HookError::Timeout { after, .. } if after == Duration::from_millis(300)),
        "{err:?}"
    );
    assert!(!bg_alive, "background child {bg} survived the timeout");
    // sh and sleep die on SIGTERM: no need to sit out the grace.
    assert!(took >= Duration::from_millis(300), "{took:?}");
    assert!(took < Duration::from_millis(300 + 1500), "{took:?}");
    let footer = fx.log_text().lines().last().expect("footer").to_owned();
    assert_eq!(footer, "--- killed by timeout after 300 ms (SIGTERM)");
}

#[test]
fn timeout_sigkills_a_group_that_ignores_sigterm() {
    let fx = Fixture::new();
    let hook = fx.hook(
        "h",
        r#"trap '' TERM; sleep 1000 & echo $! > "$2/bg"; sleep 1000"#,
    );
    let mut req = fx.req();
    req.timeout = Some(Duration::from_millis(300));
    req.grace = Duration::from_millis(500);
    let t0 = Instant::now();
    let err = run(&hook, &req).expect_err("timeout");
    let took = t0.elapsed();
    let bg = fx.pid_in("bg");
    let bg_alive = alive(bg);
    kill_stray(bg);
    assert!(matches!(err, HookError::Timeout { .. }), "{err:?}");
    assert!(!bg_alive, "background child {bg} survived SIGKILL");
    assert!(took >= Duration::from_millis(800), "{took:?}");
    assert!(took < Duration::from_millis(800 + 1500), "{took:?}");
    let footer = fx.log_text().lines().last().expect("footer").to_owned();
    assert_eq!(
        footer,
        "--- killed by timeout after 300 ms (SIGTERM, then SIGKILL after 500 ms)"
    );
}

#[test]
fn no_timeout_means_no_limit() {
    let fx = Fixture::new();
    let hook = fx.hook("h", "sleep 0.3");
    let mut req = fx.req();
    req.timeout = None;
    let outcome = run(&hook, &req).expect("hook runs");
    assert!(outcome.elapsed >= Duration::from_millis(300));
}

#[test]
fn background_process_of_a_successful_hook_is_left_alone() {
    let fx = Fixture::new();
    let hook = fx.hook(
        "h",
        r#"sleep 2 >/dev/null 2>&1 & echo $! > "$2/bg"; exit 0"#,
    );
    let mut req = fx.req();
    req.timeout = Some(Duration::from_secs(1));
    run(&hook, &req).expect("hook runs");
    let bg = fx.pid_in("bg");
    let bg_alive = alive(bg);
    kill_stray(bg);
    assert!(
        bg_alive,
        "background child {bg} of a successful hook was killed"
    );
}

#[test]
fn refuses_group_and_world_writable_hooks() {
    let fx = Fixture::new();
    for mode in [0o757, 0o777, 0o775, 0o775 | 0o1000] {
        let hook = fx.hook("h", "exit 0");
        chmod(&hook, mode);
        let err = run(&hook, &fx.req()).expect_err("writable");
        assert!(
            matches!(err, HookError::Writable { mode: m, .. } if m == mode),
            "{err:?}"
        );
        assert!(err.is_refusal());
        assert!(err.to_string().starts_with("mnt_start hook "), "{err}");
    }
    assert!(!fx.log.exists(), "a refused hook leaves no log entry");
}

#[test]
fn refuses_hooks_not_owned_by_root() {
    let fx = Fixture::new();
    let hook = fx.hook("h", "exit 0");
    std::os::unix::fs::chown(&hook, Some(65534), Some(65534)).expect("chown");
    chmod(&hook, 0o755);
    let err = check(&hook).expect_err("not root");
    assert!(
        matches!(
            err,
            HookError::NotRootOwned {
                uid: 65534,
                kind: None,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.is_refusal());
    assert!(err.to_string().starts_with("hook "), "{err}");
}

#[test]
fn refuses_non_executable_missing_and_non_regular_hooks() {
    let fx = Fixture::new();
    let hook = fx.hook("h", "exit 0");
    chmod(&hook, 0o644);
    let err = check(&hook).expect_err("not executable");
    assert!(matches!(err, HookError::NotExecutable { .. }), "{err:?}");

    let err = check(&fx.dir.path().join("absent")).expect_err("missing");
    assert!(matches!(err, HookError::Missing { .. }), "{err:?}");
    assert!(err.is_refusal());

    let err = check(fx.dir.path()).expect_err("directory");
    assert!(matches!(err, HookError::NotRegularFile { .. }), "{err:?}");

    let err = check(Path::new("relative/hook")).expect_err("relative");
    assert!(matches!(err, HookError::NotAbsolute(_)), "{err:?}");
}

#[test]
fn symlinks_are_judged_by_their_target() {
    let fx = Fixture::new();
    let target = fx.hook("real", "exit 0");
    let link = fx.dir.path().join("link");
    std::os::unix::fs::symlink(&target, &link).expect("symlink");
    check(&link).expect("root-owned target is fine");
    chmod(&target, 0o777);
    let err = check(&link).expect_err("writable target");
    assert!(matches!(err, HookError::Writable { .. }), "{err:?}");
}

#[test]
fn refuses_hook_in_a_world_writable_directory_without_sticky_bit() {
    let fx = Fixture::new();
    let open = fx.dir.path().join("open");
    fs::create_dir(&open).expect("mkdir");
    let hook = write_hook(&open.join("h"), "exit 0");
    chmod(&open, 0o777);
    let err = run(&hook, &fx.req()).expect_err("writable dir");
    assert!(
        matches!(&err, HookError::WritableDir { dir, mode: 0o777, kind: Some(HookKind::MntStart), .. } if *dir == open),
        "{err:?}"
    );
    assert!(err.is_refusal());

    // A sticky dir (like /tmp) is fine: others cannot replace root's file.
    chmod(&open, 0o1777);
    check(&hook).expect("sticky dir is fine");

    // A link in a safe dir does not launder a target in an unsafe one.
    chmod(&open, 0o777);
    let link = fx.dir.path().join("link");
    std::os::unix::fs::symlink(&hook, &link).expect("symlink");
    let err = check(&link).expect_err("target dir writable");
    assert!(matches!(err, HookError::WritableDir { .. }), "{err:?}");
}

#[test]
fn missing_interpreter_is_a_spawn_failure() {
    let fx = Fixture::new();
    let hook = fx.dir.path().join("h");
    fs::write(&hook, "#!/nonexistent/interpreter\n").expect("write");
    chmod(&hook, 0o755);
    let err = run(&hook, &fx.req()).expect_err("spawn");
    assert!(matches!(err, HookError::Spawn { .. }), "{err:?}");
    assert!(!err.is_refusal());
    assert!(fx
        .log_text()
        .lines()
        .last()
        .expect("footer")
        .starts_with("--- cannot start: "));
}

#[test]
fn parses_settings() {
    assert_eq!(parse_setting("0").expect("0"), None);
    assert_eq!(parse_setting("").expect("empty"), None);
    assert_eq!(
        parse_setting("/usr/local/libexec/ferry/nfs").expect("abs"),
        Some(PathBuf::from("/usr/local/libexec/ferry/nfs"))
    );
    for bad in ["hook", "./hook", "bin/hook", " /hook", "00"] {
        let err = parse_setting(bad).expect_err(bad);
        assert!(
            matches!(err, HookError::NotAbsolute(ref v) if v == bad),
            "{err:?}"
        );
        assert!(err.is_refusal());
    }
}

#[test]
fn names_and_display() {
    let all = [
        (Phase::Create, "create"),
        (Phase::Start, "start"),
        (Phase::Stop, "stop"),
        (Phase::Remove, "remove"),
        (Phase::MigrateIn, "migrate-in"),
        (Phase::MigrateOut, "migrate-out"),
    ];
    for (phase, s) in all {
        assert_eq!(phase.as_str(), s);
        assert_eq!(phase.to_string(), s);
    }
    assert_eq!(HookKind::MntStart.to_string(), "mnt_start");
    assert_eq!(HookKind::MntStop.as_str(), "mnt_stop");
}
