//! The local task queue run by `ferry daemon` (DESIGN §4/§5/§8): real
//! commands as tasks, dependencies, cancel, crashes of the daemon and of
//! runners, two daemons on one workdir, bad input, the concurrency limit.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use ferry_testkit::{Daemon, TestWorkdir};
use nix::sys::signal::Signal;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_ferry");

/// A jail main process that exits on SIGTERM and needs nothing from /etc.
const EXEC: &str =
    "exec_start=/bin/sh -c 'trap \"exit 0\" TERM; while :; do sleep 1 & wait $!; done'";

/// A workdir with a busybox base whose task runners are killed on drop,
/// also when the test failed.
struct Queue(TestWorkdir);

impl Drop for Queue {
    fn drop(&mut self) {
        kill_runners(&self.0);
    }
}

impl std::ops::Deref for Queue {
    type Target = TestWorkdir;
    fn deref(&self) -> &TestWorkdir {
        &self.0
    }
}

fn queue() -> Queue {
    Queue(TestWorkdir::with_base(BIN))
}

/// Every `task mode=run` of this workdir, with everything in its session.
fn kill_runners(t: &TestWorkdir) {
    let root = t.root().as_os_str().as_encoded_bytes().to_vec();
    for e in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let has = |n: &[u8]| cmdline.windows(n.len()).any(|w| w == n);
        if has(&root) && has(b"mode=run") {
            ferry_core::sys::signal_session(pid, Signal::SIGKILL);
        }
    }
}

fn daemon(t: &TestWorkdir, tasks: u32) -> Daemon {
    t.daemon(&["heartbeat=1", &format!("tasks={tasks}")])
}

/// `task mode=list --json`, keyed by id.
fn tasks(t: &TestWorkdir) -> BTreeMap<u64, Value> {
    let v: Value = serde_json::from_str(&t.ok(&["task", "mode=list", "--json"])).expect("JSON");
    v.as_array()
        .expect("array")
        .iter()
        .map(|r| (r["id"].as_u64().expect("id"), r.clone()))
        .collect()
}

fn state(t: &TestWorkdir, id: u64) -> String {
    tasks(t)[&id]["state"].as_str().expect("state").to_owned()
}

/// Wait until `pred` holds for the listing.
#[track_caller]
fn wait_for(t: &TestWorkdir, what: &str, secs: u64, pred: impl Fn(&BTreeMap<u64, Value>) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let l = tasks(t);
        if pred(&l) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}; tasks: {l:#?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn is(l: &BTreeMap<u64, Value>, id: u64, s: &str) -> bool {
    l.get(&id).is_some_and(|r| r["state"] == s)
}

/// A task's log, and how many runs wrote a header into it.
fn log(t: &TestWorkdir, id: u64) -> (String, usize) {
    let text =
        fs::read_to_string(t.root().join(format!("var/log/tasks/{id}.log"))).unwrap_or_default();
    let runs = text
        .lines()
        .filter(|l| l.starts_with("--- ") && l.contains(": "))
        .count();
    (text, runs)
}

/// A mount hook that records each call in `hooks/calls` and sleeps
/// `secs` in phase `start`, its pid in `hooks/<jname>.pid`.
fn slow_hook(t: &TestWorkdir, secs: u32) -> String {
    let dir = t.root().join("hooks");
    let p = t.hook(
        "slow",
        &format!(
            "echo \"$FERRY_PHASE $FERRY_JNAME\" >> {d}/calls\n\
             echo $$ > {d}/$FERRY_JNAME.pid\n\
             [ \"$FERRY_PHASE\" = start ] && exec sleep {secs}\nexit 0",
            d = dir.display()
        ),
    );
    format!("mnt_start={}", p.display())
}

fn calls(t: &TestWorkdir) -> Vec<String> {
    fs::read_to_string(t.root().join("hooks/calls"))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn a_task_runs_a_real_command_and_its_dependent_runs_after_it() {
    let t = queue();
    let create = t.submit_task(&["jcreate", "jname=tj", EXEC]);
    let start = t.submit_task(&[&format!("after={create}"), "jstart", "jname=tj"]);
    let d = daemon(&t, 2);
    wait_for(&t, "both tasks done", 30, |l| {
        is(l, create, "done") && is(l, start, "done")
    });
    assert_eq!(t.status("tj"), "running");
    let l = tasks(&t);
    for id in [create, start] {
        assert_eq!(l[&id]["exit_code"], 0);
        assert_eq!(l[&id]["runs"], 1);
        assert_eq!(l[&id]["log"], format!("var/log/tasks/{id}.log"));
        let path = t.root().join(format!("var/log/tasks/{id}.log"));
        let mode = fs::metadata(&path).expect("log").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "log mode");
    }
    let (text, runs) = log(&t, start);
    assert_eq!(runs, 1, "{text}");
    assert!(
        text.contains("jstart jname=tj") && text.contains("tj started"),
        "{text}"
    );
    assert!(l[&start]["started"].as_str() >= l[&create]["finished"].as_str());
    // taskls is the same listing.
    assert_eq!(t.ok(&["taskls", "--json"]), t.ok(&["task", "--json"]));
    d.terminate();
    t.ok(&["jstop", "jname=tj"]);
}

#[test]
fn a_failing_task_fails_with_its_exit_code_and_cancels_its_dependents() {
    let t = queue();
    let bad = t.submit_task(&["jstart", "jname=nosuch"]);
    let dep = t.submit_task(&[&format!("after={bad}"), "jcreate", "jname=never"]);
    let dep2 = t.submit_task(&[&format!("after={dep}"), "jstart", "jname=never"]);
    let d = daemon(&t, 2);
    wait_for(&t, "the failure settles", 30, |l| {
        is(l, bad, "failed") && is(l, dep, "cancelled") && is(l, dep2, "cancelled")
    });
    let l = tasks(&t);
    assert_eq!(l[&bad]["exit_code"], 3, "not found");
    assert!(l[&dep]["reason"]
        .as_str()
        .expect("reason")
        .contains(&bad.to_string()));
    assert_eq!(l[&dep]["runs"], 0, "a cancelled dependent never ran");
    assert!(log(&t, bad).0.contains("no env named nosuch"));
    assert!(!t.jls().contains_key("never"));
    // Nothing can be queued after a failed task.
    t.fails(4, &["task", "mode=new", &format!("after={bad}"), "jls"]);
    d.terminate();
}

#[test]
fn cancel_stops_a_running_task_and_cancels_a_pending_one() {
    let t = queue();
    let hook = slow_hook(&t, 60);
    t.ok(&["jcreate", "jname=slow", &hook, "mnt_timeout=0", EXEC]);
    let long = t.submit_task(&["jstart", "jname=slow"]);
    let waiting = t.submit_task(&["jls"]);
    let d = daemon(&t, 1);
    wait_for(&t, "the long task runs its hook", 30, |_| {
        t.root().join("hooks/slow.pid").exists() && calls(&t).iter().any(|c| c == "start slow")
    });
    assert_eq!(state(&t, waiting), "pending", "the limit is 1");
    let out = t.ok(&["task", "mode=cancel", &format!("id={waiting}")]);
    assert!(out.contains("cancelled"), "{out}");
    let hook_pid: i32 = fs::read_to_string(t.root().join("hooks/slow.pid"))
        .expect("pid")
        .trim()
        .parse()
        .expect("pid");
    let began = Instant::now();
    let out = t.ok(&["task", "mode=cancel", &format!("id={long}")]);
    assert!(out.contains("cancelled while running"), "{out}");
    assert!(
        began.elapsed() < Duration::from_secs(5),
        "SIGTERM was enough"
    );
    assert!(
        ferry_core::sys::proc_stat(hook_pid).is_none_or(|p| !p.is_live()),
        "the hook the task started is still running"
    );
    let l = tasks(&t);
    assert_eq!(l[&long]["state"], "cancelled");
    assert_eq!(l[&waiting]["state"], "cancelled");
    // A finished task cannot be cancelled; an unknown one is not found.
    t.fails(4, &["task", "mode=cancel", &format!("id={long}")]);
    t.fails(3, &["task", "mode=cancel", "id=999"]);
    // The daemon is not confused by it and keeps running tasks.
    let next = t.submit_task(&["jls"]);
    wait_for(&t, "the next task runs", 30, |l| is(l, next, "done"));
    d.terminate();
}

#[test]
fn a_killed_daemon_leaves_its_runner_to_finish_and_nothing_runs_twice() {
    let t = queue();
    let hook = slow_hook(&t, 3);
    t.ok(&["jcreate", "jname=k1", &hook, EXEC]);
    let id = t.submit_task(&["jstart", "jname=k1"]);
    let d = daemon(&t, 2);
    wait_for(&t, "the task runs", 30, |l| l[&id]["pid"].is_i64());
    d.kill();
    // No daemon: the runner finishes and records its own result.
    wait_for(&t, "the orphaned runner records its result", 30, |l| {
        is(l, id, "done")
    });
    let d = daemon(&t, 2);
    std::thread::sleep(Duration::from_secs(2));
    let l = tasks(&t);
    assert_eq!(
        (l[&id]["state"].as_str(), l[&id]["runs"].as_u64()),
        (Some("done"), Some(1))
    );
    assert_eq!(log(&t, id).1, 1);
    assert_eq!(calls(&t).iter().filter(|c| *c == "start k1").count(), 1);
    assert_eq!(t.status("k1"), "running");

    // SIGTERM: the daemon stops at once and leaves the running task be.
    t.ok(&["jstop", "jname=k1"]);
    let id2 = t.submit_task(&["jstart", "jname=k1"]);
    wait_for(&t, "the second task runs", 30, |l| l[&id2]["pid"].is_i64());
    d.terminate();
    assert_eq!(state(&t, id2), "running");
    wait_for(&t, "it finishes on its own", 30, |l| is(l, id2, "done"));
    t.ok(&["jstop", "jname=k1"]);
}

#[test]
fn a_killed_runner_is_interrupted_and_a_retryable_task_runs_again_once() {
    let t = queue();
    let hook = slow_hook(&t, 3);
    t.ok(&["jcreate", "jname=once", &hook, EXEC]);
    t.ok(&["jcreate", "jname=again", &hook, EXEC]);
    let once = t.submit_task(&["jstart", "jname=once"]);
    let again = t.submit_task(&["retry=1", "jstart", "jname=again"]);
    let d = daemon(&t, 2);
    wait_for(&t, "both run", 30, |l| {
        l[&once]["pid"].is_i64() && l[&again]["pid"].is_i64()
    });
    // The node loses the daemon and the runners at once.
    d.kill();
    kill_runners(&t);
    let d = daemon(&t, 2);
    wait_for(&t, "recovery settles both", 30, |l| {
        is(l, once, "interrupted") && is(l, again, "done")
    });
    std::thread::sleep(Duration::from_secs(1));
    let l = tasks(&t);
    assert!(l[&once]["reason"]
        .as_str()
        .expect("reason")
        .contains("gone"));
    assert_eq!(l[&once]["runs"], 1);
    assert_eq!(l[&again]["runs"], 2, "run again exactly once");
    assert_eq!(log(&t, again).1, 2);
    let starts = |j: &str| {
        calls(&t)
            .iter()
            .filter(|c| **c == format!("start {j}"))
            .count()
    };
    assert_eq!((starts("once"), starts("again")), (1, 2));
    assert_eq!(t.status("again"), "running");
    d.terminate();
    t.ok(&["jstop", "jname=again"]);
}

#[test]
fn two_daemons_on_one_workdir_run_every_task_exactly_once() {
    let t = queue();
    let hook = slow_hook(&t, 0);
    let ids: Vec<u64> = (0..50)
        .map(|i| t.submit_task(&["jcreate", &format!("jname=m{i}"), &hook]))
        .collect();
    let a = daemon(&t, 2);
    let b = daemon(&t, 2);
    wait_for(&t, "all 50 done", 240, |l| {
        ids.iter().all(|id| is(l, *id, "done"))
    });
    let l = tasks(&t);
    let creates = calls(&t);
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(l[id]["runs"], 1, "task {id}");
        assert_eq!(log(&t, *id).1, 1, "task {id} ran more than once");
        let line = format!("create m{i}");
        assert_eq!(creates.iter().filter(|c| **c == line).count(), 1, "{line}");
    }
    assert_eq!(t.jls().len(), 50);
    let by: std::collections::BTreeSet<u32> = l
        .values()
        .map(|r| r["daemon"].as_u64().expect("claimer") as u32)
        .collect();
    let both: std::collections::BTreeSet<u32> = [a.pid(), b.pid()].into();
    assert_eq!(by, both, "both daemons ran tasks");
    a.terminate();
    b.terminate();
}

#[test]
fn bad_input_is_refused_and_the_queue_is_unchanged() {
    let t = queue();
    t.submit_task(&["jls"]);
    let before = t.ok(&["task", "mode=list", "--json"]);
    for (code, args, needle) in [
        (2, &["task", "mode=new", "jstrat", "jname=a"][..], "jstrat"),
        (2, &["task", "mode=new", "jstart", "colour=red"], "colour"),
        (2, &["task", "mode=new"], "needs the ferry command"),
        (2, &["task", "mode=new", "task", "mode=list"], "cannot run"),
        (2, &["task", "mode=new", "daemon"], "cannot run"),
        (3, &["task", "mode=new", "after=999", "jls"], "no task 999"),
        (2, &["task", "mode=new", "after=x", "jls"], "after"),
        (
            3,
            &["task", "mode=new", "node=other", "jls"],
            "unknown node",
        ),
        (2, &["task", "mode=new", "node=../x", "jls"], "node"),
        (2, &["task", "mode=new", "autoflush=3", "jls"], "autoflush"),
        (2, &["task", "mode=cancel", "id=abc"], "id"),
        (2, &["task", "mode=cancel"], "id"),
        (3, &["task", "mode=cancel", "id=999"], "no task 999"),
        (2, &["task", "mode=list", "jls"], "cmd"),
        (2, &["taskls", "display=id,colour"], "colour"),
    ] {
        let e = t.fails(code, args);
        assert!(e.contains(needle), "{args:?}: {e}");
    }
    assert_eq!(t.ok(&["task", "mode=list", "--json"]), before);
    // This node's own name is accepted.
    t.submit_task(&["node=t1", "jls"]);
    let h = t.ok(&["task", "--help"]);
    assert!(h.contains("autoflush=") && h.contains("internal"), "{h}");
    assert!(t.ok(&["--help"]).contains("taskls"));
}

#[test]
fn the_concurrency_limit_is_respected_and_flush_removes_finished_records() {
    let t = queue();
    let hook = slow_hook(&t, 1);
    for i in 0..5 {
        t.ok(&["jcreate", &format!("jname=c{i}"), &hook, EXEC]);
    }
    let ids: Vec<u64> = (0..5)
        .map(|i| t.submit_task(&["autoflush=1", "jstart", &format!("jname=c{i}")]))
        .collect();
    let kept = t.submit_task(&["jstart", "jname=nosuch"]);
    let d = daemon(&t, 2);
    let mut most = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let l = tasks(&t);
        let running = l.values().filter(|r| r["state"] == "running").count();
        most = most.max(running);
        assert!(running <= 2, "{running} tasks run at once: {l:#?}");
        if l.len() == 1 && is(&l, kept, "failed") {
            break;
        }
        assert!(Instant::now() < deadline, "{l:#?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(most, 2, "the daemon ran tasks in parallel");
    // autoflush=1 removed the successful records and their logs.
    for id in &ids {
        assert!(!t.root().join(format!("var/log/tasks/{id}.log")).exists());
    }
    d.terminate();
    let out = t.ok(&["task", "mode=flush"]);
    assert!(out.starts_with('1'), "{out}");
    assert!(tasks(&t).is_empty());
    assert!(!t.root().join(format!("var/log/tasks/{kept}.log")).exists());
    for i in 0..5 {
        t.ok(&["jstop", &format!("jname=c{i}")]);
    }
}
