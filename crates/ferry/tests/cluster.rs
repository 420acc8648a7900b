//! The cluster over a real broker, beanstalkd and a NATS JetStream cluster: three nodes, each in its own network
//! namespace, their daemons serving their node tubes; `node mode=add`
//! fetching inventories over the broker, liveness from heartbeats, refusals,
//! a malformed request, a broker that goes away and comes back.

use std::time::{Duration, Instant};

use ferry_broker::Broker;
use ferry_testkit::broker::{TestBroker, Transport};
use ferry_testkit::{Storage, TestCluster, TestWorkdir};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_ferry");

/// Three nodes in namespaces, a broker on the host's bridge address that
/// they all use.
fn cluster(t: Transport) -> (TestCluster, TestBroker) {
    TestCluster::with_broker(BIN, 3, Storage::Plain, t, false)
}

ferry_testkit::over_both_brokers!(
    nodes_are_added_over_the_broker_and_a_dead_one_shows_dead_within_the_lease_time,
    bad_requests_and_a_lost_broker_leave_the_daemons_serving,
    a_task_sent_to_another_node_runs_there_and_its_result_comes_back,
    a_task_sent_to_another_node_is_cancelled_there,
    a_broker_crashed_and_restarted_mid_stream_loses_no_task,
    a_task_whose_node_dies_is_interrupted_and_a_late_result_changes_nothing,
    jmigrate_moves_a_running_jail_and_back_and_a_failure_there_brings_it_back,
    a_result_that_arrives_while_the_asking_daemon_is_down_is_recorded_when_it_restarts,
);

fn nodes(t: &TestWorkdir) -> Vec<Value> {
    let out = t.ok(&["node", "mode=list", "lease_time=3", "--json"]);
    let v: Value = serde_json::from_str(&out).expect("JSON");
    v.as_array().cloned().unwrap_or_default()
}

fn state_of(t: &TestWorkdir, node: &str) -> Option<String> {
    nodes(t)
        .into_iter()
        .find(|n| n["node"] == node)
        .and_then(|n| n["state"].as_str().map(str::to_owned))
}

#[track_caller]
fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    t0.elapsed()
}

fn nodes_are_added_over_the_broker_and_a_dead_one_shows_dead_within_the_lease_time(t: Transport) {
    let (c, _b) = cluster(t);
    let (n1, n2, n3) = (&c.nodes[0], &c.nodes[1], &c.nodes[2]);
    let args = ["heartbeat=1", "lease_time=3"];
    let _d1 = n1.daemon(&args);
    let _d2 = n2.daemon(&args);
    let d3 = n3.daemon(&args);

    n1.ok(&["node", "mode=add", "node=n2"]);
    n1.ok(&["node", "mode=add", "node=n3"]);
    let net = c.net().expect("namespaces");
    for (i, name) in [(1, "n2"), (2, "n3")] {
        let row = nodes(n1)
            .into_iter()
            .find(|n| n["node"] == name)
            .expect("listed");
        let addrs = row["addresses"].as_str().unwrap_or_default().to_owned();
        assert!(
            addrs.contains(&net.node(i).addr),
            "{name}'s inventory came from elsewhere: {addrs}"
        );
        assert!(row["added"].is_string());
    }
    wait_for("n2 and n3 alive", Duration::from_secs(10), || {
        state_of(n1, "n2").as_deref() == Some("alive")
            && state_of(n1, "n3").as_deref() == Some("alive")
    });

    // n3 dies: n1 sees it dead within the lease time (plus one beat).
    d3.kill();
    let took = wait_for("n3 dead", Duration::from_secs(3 + 2 + 2), || {
        state_of(n1, "n3").as_deref() == Some("dead")
    });
    eprintln!("n3 seen dead {took:?} after its daemon died");
    assert_eq!(state_of(n1, "n2").as_deref(), Some("alive"));

    // A node that owns envs is not removed unless forced.
    n2.ok(&["jcreate", "jname=kept"]);
    let envs = nodes(n1)
        .into_iter()
        .find(|n| n["node"] == "n2")
        .expect("n2")["envs"]
        .clone();
    assert_eq!(envs, 1);
    n1.fails(6, &["node", "mode=remove", "node=n2"]);
    n1.ok(&["node", "mode=remove", "node=n2", "force=1"]);
    n1.fails(3, &["node", "mode=remove", "node=n2"]);
    assert!(
        nodes(n1)
            .iter()
            .all(|n| n["node"] != "n2" || n["added"].is_null()),
        "n2 is still added"
    );
}

fn bad_requests_and_a_lost_broker_leave_the_daemons_serving(t: Transport) {
    let (c, mut b) = cluster(t);
    let (n1, n2) = (&c.nodes[0], &c.nodes[1]);
    let _d2 = n2.daemon(&["heartbeat=1"]);

    // Nobody serves n3, and n1 is itself: clear refusals, nothing stored.
    wait_for("n2's first beat", Duration::from_secs(5), || {
        state_of(n1, "n2").is_some()
    });
    let before = n1.ok(&["node", "--json"]);
    let err = n1.fails(1, &["node", "mode=add", "node=n3", "timeout=2"]);
    assert!(err.contains("did not answer"), "{err}");
    n1.fails(6, &["node", "mode=add", "node=n1"]);
    n1.fails(2, &["node", "mode=add"]);
    n1.fails(2, &["node", "mode=add", "node=../x"]);
    assert_eq!(n1.ok(&["node", "--json"]), before);

    // Garbage on n2's tube is buried; n2 keeps answering.
    let mut raw = b.client();
    raw.use_tube("ferry.node.n2").expect("use");
    for body in [
        &b"not json"[..],
        b"{\"kind\":\"inventory\"}",
        b"\xff\xfe",
        b"[1,2]",
    ] {
        raw.put(body, 0, Duration::ZERO, Duration::from_secs(5))
            .expect("put");
    }
    n1.ok(&["node", "mode=add", "node=n2"]);
    // The first bury over a loaded NATS cluster may take seconds.
    wait_for(
        "the malformed requests buried",
        Duration::from_secs(20),
        || {
            raw.stats_tube("ferry.node.n2")
                .map(|s| s.buried)
                .unwrap_or(0)
                == 4
        },
    );

    // The broker goes away: a clear error; it comes back: the daemon
    // reconnected by itself and answers again.
    b.kill().expect("kill the broker");
    let err = n1.fails(1, &["node", "mode=add", "node=n2", "timeout=2"]);
    assert!(err.contains("broker"), "{err}");
    b.start_again().expect("restart the broker");
    wait_for(
        "n2 answers after the broker came back",
        Duration::from_secs(20),
        || n1.run(&["node", "mode=add", "node=n2", "timeout=2"]).code == 0,
    );
}

/// Queue a task on `t`; returns its id.
#[track_caller]
/// `task mode=list --json` of `t`.
fn tasks(t: &TestWorkdir) -> Vec<Value> {
    let v: Value = serde_json::from_str(&t.ok(&["task", "mode=list", "--json"])).expect("JSON");
    v.as_array().cloned().unwrap_or_default()
}

fn task(t: &TestWorkdir, id: u64) -> Value {
    tasks(t)
        .into_iter()
        .find(|r| r["id"] == id)
        .unwrap_or(Value::Null)
}

fn task_log(t: &TestWorkdir, id: u64) -> String {
    std::fs::read_to_string(t.root().join(format!("var/log/tasks/{id}.log"))).unwrap_or_default()
}

fn a_task_sent_to_another_node_runs_there_and_its_result_comes_back(t: Transport) {
    let (c, b) = cluster(t);
    let (n1, n2) = (&c.nodes[0], &c.nodes[1]);
    let _d1 = n1.daemon(&["heartbeat=1"]);
    let _d2 = n2.daemon(&["heartbeat=1"]);
    n1.ok(&["node", "mode=add", "node=n2"]);

    // Runs on n2, in n2's workdir; the result and its output come back.
    let made = n1.submit_task(&["node=n2", "jcreate", "jname=made"]);
    wait_for("the task done on n1", Duration::from_secs(20), || {
        task(n1, made)["state"] == "done"
    });
    assert!(n2.ok(&["jls"]).contains("made"), "not created on n2");
    assert!(!n1.ok(&["jls"]).contains("made"), "created on n1");
    let there: Vec<Value> = tasks(n2);
    assert_eq!(there.len(), 1, "{there:#?}");
    assert_eq!(there[0]["state"], "done");
    assert_eq!(there[0]["origin"], task(n1, made)["request"]);
    assert!(task(n1, made)["request"].is_string());
    let log = task_log(n1, made);
    assert!(
        log.contains("sent to node n2") && log.contains("ended on node n2") && log.contains("made"),
        "{log}"
    );

    // A failure comes back with its exit code, and cancels what is after it.
    // n1's daemon, which records results, is held meanwhile: else the
    // failure may be back before the second task is submitted, which is
    // then refused instead.
    let signal = |sig: &str| {
        let st = std::process::Command::new("kill")
            .args([sig, &_d1.pid().to_string()])
            .status()
            .expect("kill");
        assert!(st.success(), "kill {sig}");
    };
    // Frozen holding the task store's lock, it would refuse the
    // submission (the store is busy): then it goes on a moment first.
    let fails = loop {
        signal("-STOP");
        let r = n1.run(&["task", "mode=new", "node=n2", "jstart", "jname=absent"]);
        if r.code == 0 {
            break r.stdout.trim().parse::<u64>().expect("the id");
        }
        assert!(r.stderr.contains("database is locked"), "{}", r.stderr);
        signal("-CONT");
        std::thread::sleep(Duration::from_millis(100));
    };
    let after = n1.submit_task(&["node=n2", &format!("after={fails}"), "jls"]);
    signal("-CONT");
    wait_for("the failure on n1", Duration::from_secs(20), || {
        task(n1, fails)["state"] == "failed"
    });
    assert_eq!(task(n1, fails)["exit_code"], 3, "{:#?}", task(n1, fails));
    assert_eq!(task(n1, after)["state"], "cancelled");
    // A local task after a remote one waits for it.
    let first = n1.submit_task(&["node=n2", "jls"]);
    let then = n1.submit_task(&[&format!("after={first}"), "jls"]);
    wait_for("both done", Duration::from_secs(20), || {
        task(n1, then)["state"] == "done"
    });
    assert_eq!(task(n1, first)["state"], "done");

    // Unknown nodes are refused and nothing is stored.
    let before = tasks(n1).len();
    let err = n1.fails(3, &["task", "mode=new", "node=n3", "jls"]);
    assert!(err.contains("unknown node"), "{err}");
    n1.fails(2, &["task", "mode=new", "node=../n2", "jls"]);
    assert_eq!(tasks(n1).len(), before);

    // Hostile messages: a request n2 must not run gets a refusal; garbage
    // on n1's task tube is buried. Both daemons go on.
    let mut raw = b.client();
    raw.watch("probe.reply").expect("watch");
    raw.use_tube("ferry.node.n2").expect("use");
    let mut refusal = |req: Value| {
        raw.use_tube("ferry.node.n2").expect("use");
        raw.put(
            req.to_string().as_bytes(),
            0,
            Duration::ZERO,
            Duration::from_secs(5),
        )
        .expect("put");
        let answer = raw
            .reserve(Duration::from_secs(10))
            .expect("reserve")
            .expect("an answer");
        raw.delete(answer.id).expect("delete");
        let answer: Value = serde_json::from_slice(&answer.body).expect("JSON");
        assert_eq!(answer["id"], req["id"], "{answer}");
        assert_eq!(answer["body"]["kind"], "error", "{answer}");
        assert_eq!(answer["body"]["code"], 2, "{answer}");
        answer["body"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    let why = refusal(serde_json::json!({
        "v": 1, "id": "probe-1", "from": "n1", "reply": "probe.reply",
        "body": {"kind": "task", "words": ["daemon"]}
    }));
    assert!(why.contains("cannot run"), "{why}");
    // Another protocol version, or a kind n2 does not know: refused by name.
    let why = refusal(serde_json::json!({
        "id": "probe-2", "from": "n1", "reply": "probe.reply",
        "kind": "task", "task": {"words": ["jls"]}
    }));
    assert!(why.contains("protocol version none"), "{why}");
    let why = refusal(serde_json::json!({
        "v": 1, "id": "probe-3", "from": "n1", "reply": "probe.reply",
        "body": {"kind": "reboot"}
    }));
    assert!(why.contains("reboot"), "{why}");
    raw.use_tube("ferry.tasks.n1").expect("use");
    for body in [&b"not json"[..], br#"{"v":1,"id":"x","body":{"kind":"task-result","task":1,"state":"running","exit_code":null,"reason":null}}"#] {
        raw.put(body, 0, Duration::ZERO, Duration::from_secs(5)).expect("put");
    }
    let t0 = Instant::now();
    let mut last = None;
    while last
        .as_ref()
        .is_none_or(|s: &ferry_broker::Result<ferry_broker::TubeStats>| {
            s.as_ref().map_or(true, |s| s.buried != 2)
        })
    {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "garbage not buried: {last:?}\nn1's daemon.log:\n{}",
            std::fs::read_to_string(n1.root().join("var/log/daemon.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
        last = Some(raw.stats_tube("ferry.tasks.n1"));
    }
    // made, fails and first; `after` never left n1.
    assert_eq!(tasks(n2).len(), 3, "the refused request was stored");
    let again = n1.submit_task(&["node=n2", "jls"]);
    wait_for("still served", Duration::from_secs(20), || {
        task(n1, again)["state"] == "done"
    });
}

fn a_task_sent_to_another_node_is_cancelled_there(t: Transport) {
    let (c, _b) = cluster(t);
    let (n1, n2) = (&c.nodes[0], &c.nodes[1]);
    let _d1 = n1.daemon(&["heartbeat=1"]);
    let _d2 = n2.daemon(&["heartbeat=1"]);
    n1.ok(&["node", "mode=add", "node=n2"]);
    let hooks = n2.root().join("hooks");
    let hook = n2.hook(
        "slow",
        &format!(
            "echo $$ > {d}/$FERRY_JNAME.pid\n[ \"$FERRY_PHASE\" = start ] && exec sleep 60\nexit 0",
            d = hooks.display()
        ),
    );
    n2.ok(&[
        "jcreate",
        "jname=slow",
        &format!("mnt_start={}", hook.display()),
        "mnt_timeout=0",
    ]);
    let long = n1.submit_task(&["node=n2", "jstart", "jname=slow"]);
    wait_for("the hook runs on n2", Duration::from_secs(20), || {
        hooks.join("slow.pid").exists()
    });
    let hook_pid: i32 = std::fs::read_to_string(hooks.join("slow.pid"))
        .expect("pid")
        .trim()
        .parse()
        .expect("pid");
    let out = n1.ok(&["task", "mode=cancel", &format!("id={long}")]);
    assert!(out.contains("now cancelled"), "{out}");
    assert_eq!(tasks(n2)[0]["state"], "cancelled");
    assert!(
        ferry_core::sys::proc_stat(hook_pid).is_none_or(|p| !p.is_live()),
        "the hook on n2 still runs"
    );
}

fn a_broker_crashed_and_restarted_mid_stream_loses_no_task(t: Transport) {
    let (c, mut b) = TestCluster::with_broker(BIN, 2, Storage::Plain, t, true);
    let (n1, n2) = (&c.nodes[0], &c.nodes[1]);
    let _d1 = n1.daemon(&["heartbeat=1"]);
    let _d2 = n2.daemon(&["heartbeat=1"]);
    n1.ok(&["node", "mode=add", "node=n2"]);

    const N: usize = 30;
    let mut ids = Vec::new();
    for i in 0..N {
        if i == N / 3 {
            // A crash (every server): what was put and not yet taken is in
            // the binlog, or in JetStream's stores.
            b.kill().expect("kill the broker");
        }
        if i == N / 2 {
            b.start_again().expect("restart the broker");
        }
        ids.push(n1.submit_task(&["node=n2", "jls"]));
    }
    wait_for("every task done on n1", Duration::from_secs(60), || {
        let l = tasks(n1);
        ids.iter()
            .all(|id| l.iter().any(|r| r["id"] == *id && r["state"] == "done"))
    });
    // Each ran exactly once on n2.
    let there = tasks(n2);
    assert_eq!(there.len(), N, "{there:#?}");
    let mut origins: Vec<String> = there
        .iter()
        .map(|r| r["origin"].as_str().expect("origin").to_owned())
        .collect();
    origins.sort();
    origins.dedup();
    assert_eq!(origins.len(), N);
    assert!(there.iter().all(|r| r["runs"] == 1 && r["state"] == "done"));
}

fn a_task_whose_node_dies_is_interrupted_and_a_late_result_changes_nothing(t: Transport) {
    let (c, _b) = cluster(t);
    let (n1, n2) = (&c.nodes[0], &c.nodes[1]);
    let _d1 = n1.daemon(&["heartbeat=1", "lease_time=3"]);
    let d2 = n2.daemon(&["heartbeat=1", "tasks=0"]);
    n1.ok(&["node", "mode=add", "node=n2"]);
    // n2 takes the request but runs nothing (tasks=0), then dies.
    let id = n1.submit_task(&["node=n2", "jcreate", "jname=late"]);
    wait_for("stored on n2", Duration::from_secs(10), || {
        tasks(n2).len() == 1
    });
    assert_eq!(task(n1, id)["state"], "running");
    d2.kill();
    let took = wait_for("interrupted on n1", Duration::from_secs(3 + 2 + 3), || {
        task(n1, id)["state"] == "interrupted"
    });
    eprintln!("interrupted {took:?} after n2 died");
    assert!(task(n1, id)["reason"]
        .as_str()
        .unwrap_or_default()
        .contains("node n2 is dead"));
    // n2 comes back and runs it after all: its result arrives and is
    // ignored; n1's record stays what it said.
    let _d2 = n2.daemon(&["heartbeat=1"]);
    wait_for("run on n2", Duration::from_secs(20), || {
        tasks(n2)[0]["state"] == "done"
    });
    wait_for("the late result taken", Duration::from_secs(10), || {
        tasks(n2)[0]["state"] == "done" && n2.ok(&["jls"]).contains("late")
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(task(n1, id)["state"], "interrupted");
}

fn jmigrate_moves_a_running_jail_and_back_and_a_failure_there_brings_it_back(t: Transport) {
    use std::os::unix::fs::MetadataExt;
    let (c, _b) = cluster(t);
    let (n1, n2) = (&c.nodes[0], &c.nodes[1]);
    let _d1 = n1.daemon(&["heartbeat=1"]);
    let _d2 = n2.daemon(&["heartbeat=1"]);
    n1.ok(&["node", "mode=add", "node=n2"]);
    n2.ok(&["node", "mode=add", "node=n1"]);
    wait_for("both see each other alive", Duration::from_secs(10), || {
        state_of(n1, "n2").as_deref() == Some("alive")
            && state_of(n2, "n1").as_deref() == Some("alive")
    });
    n1.ok(&["jcreate", "jname=mover", "runasap=1"]);
    n1.ok(&[
        "jexec",
        "jname=mover",
        "sh",
        "-c",
        "echo from-n1 > /root/proof",
    ]);
    let proof = |t: &TestWorkdir| t.root().join("jails-data/mover-data/root/proof");
    let inode = std::fs::metadata(proof(n1)).expect("proof").ino();

    // Refusals: all reasons at once, nothing moved.
    let err = n1.fails(6, &["jmigrate", "jname=nothere", "node=n1"]);
    assert!(
        err.contains("n1 is this node") && err.contains("not registered here"),
        "{err}"
    );
    let err = n1.fails(6, &["jmigrate", "jname=mover", "node=n3"]);
    assert!(err.contains("unknown here"), "{err}");
    n1.fails(2, &["jmigrate", "jname=mover", "node=../n2"]);
    n1.fails(2, &["jmigrate", "jname=mover", "node=n2", "timeout=abc"]);
    assert_eq!(n1.status("mover"), "running");

    // There, running, the same files; and back.
    let out = n1.ok(&["jmigrate", "jname=mover", "node=n2"]);
    assert!(out.contains("moved to n2 and started there"), "{out}");
    eprintln!("{}", out.trim());
    assert!(!n1.jls().contains_key("mover"));
    assert_eq!(n2.status("mover"), "running");
    assert_eq!(std::fs::metadata(proof(n2)).expect("proof").ino(), inode);
    assert_eq!(
        n2.ok(&["jexec", "jname=mover", "cat", "/root/proof"]),
        "from-n1\n"
    );
    n2.ok(&["jmigrate", "jname=mover", "node=n1"]);
    assert_eq!(n1.status("mover"), "running");

    // n2 cannot start it (its base is gone): it comes back here, running.
    std::fs::rename(
        n2.root().join("bases/busybox"),
        n2.root().join("bases/busybox.away"),
    )
    .expect("hide n2's base");
    let err = n1.fails(1, &["jmigrate", "jname=mover", "node=n2"]);
    assert!(
        err.contains("not moved") && err.contains("back here, running"),
        "{err}"
    );
    assert_eq!(n1.status("mover"), "running");
    assert!(!n2.jls().contains_key("mover"));
    assert_eq!(
        n1.ok(&["jexec", "jname=mover", "cat", "/root/proof"]),
        "from-n1\n"
    );
    n1.ok(&["jstop", "jname=mover"]);
}

fn a_result_that_arrives_while_the_asking_daemon_is_down_is_recorded_when_it_restarts(
    t: Transport,
) {
    let (c, _b) = cluster(t);
    let (n1, n2) = (&c.nodes[0], &c.nodes[1]);
    let d1 = n1.daemon(&["heartbeat=1"]);
    let _d2 = n2.daemon(&["heartbeat=1"]);
    n1.ok(&["node", "mode=add", "node=n2"]);
    d1.kill();
    // Sent by the command itself; run on n2; the result waits in the tube.
    let id = n1.submit_task(&["node=n2", "jcreate", "jname=waiting"]);
    wait_for("done on n2", Duration::from_secs(20), || {
        tasks(n2).first().is_some_and(|t| t["state"] == "done")
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(task(n1, id)["state"], "running");
    let _d1 = n1.daemon(&["heartbeat=1"]);
    wait_for("recorded on n1", Duration::from_secs(10), || {
        task(n1, id)["state"] == "done"
    });
    assert_eq!(tasks(n2).len(), 1, "run twice");
}
