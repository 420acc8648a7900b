//! ferry's cluster over a NATS JetStream cluster instead of beanstalkd
//! (issue 18): node requests, remote tasks and a jail's cold move between
//! two nodes in network namespaces, with no change but the broker URI,
//! and a server of the three killed meanwhile; bs_router jobs through
//! `ferry agent` and `ferry client`.

use std::time::{Duration, Instant};

use ferry_broker::Broker;
use ferry_testkit::broker::{TestBroker, Transport};
use ferry_testkit::view::node_alive;
use ferry_testkit::{Storage, TestCluster, TestWorkdir};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_ferry");

fn task_state(t: &TestWorkdir, id: u64) -> String {
    let v: Value = serde_json::from_str(&t.ok(&["task", "mode=list", "--json"])).expect("JSON");
    v.as_array()
        .into_iter()
        .flatten()
        .find(|r| r["id"] == id)
        .and_then(|r| r["state"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

#[track_caller]
fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn nodes_tasks_and_a_cold_move_work_over_nats_and_survive_a_server_killed() {
    let (c, mut b) = TestCluster::with_broker(BIN, 2, Storage::Plain, Transport::Nats, true);
    let TestBroker::Nats(nats) = &mut b else {
        unreachable!("a NATS cluster")
    };
    let (n1, n2) = (&c.nodes[0], &c.nodes[1]);
    let conf = std::fs::read_to_string(n1.root().join("etc/broker.conf")).expect("broker.conf");
    assert!(conf.contains(&nats.uri()), "{conf}");
    let _d1 = n1.daemon(&["heartbeat=1"]);
    let _d2 = n2.daemon(&["heartbeat=1"]);
    // Inventory requests and their replies.
    n1.ok(&["node", "mode=add", "node=n2"]);
    n2.ok(&["node", "mode=add", "node=n1"]);
    wait_for("both alive", Duration::from_secs(15), || {
        node_alive(n1, "n2") && node_alive(n2, "n1")
    });

    // A task run on n2 for n1, its result back on n1.
    let made = n1.submit_task(&["node=n2", "jcreate", "jname=made"]);
    wait_for("the task done", Duration::from_secs(30), || {
        task_state(n1, made) == "done"
    });
    assert!(n2.jls().contains_key("made"));

    // A running jail moved cold to n2 and back (tasks both ways).
    n1.ok(&["jcreate", "jname=mover", "runasap=1"]);
    let out = n1.ok(&["jmigrate", "jname=mover", "node=n2"]);
    assert!(out.contains("moved to n2 and started there"), "{out}");
    assert_eq!(n2.status("mover"), "running");
    n2.ok(&["jmigrate", "jname=mover", "node=n1"]);
    assert_eq!(n1.status("mover"), "running");

    // The meta leader killed: tasks still go through the other two.
    let leader = nats.meta_leader(0).expect("a leader");
    let l = nats.index_of(&leader).expect("ours");
    nats.kill(l);
    let t0 = Instant::now();
    let more = n1.submit_task(&["node=n2", "jcreate", "jname=after"]);
    wait_for(
        "the task done with a server down",
        Duration::from_secs(60),
        || task_state(n1, more) == "done",
    );
    eprintln!(
        "a task through a cluster missing its leader: {:?}",
        t0.elapsed()
    );
    assert!(n2.jls().contains_key("after"));
    nats.restart(l).expect("the server back");
    n1.ok(&["jstop", "jname=mover"]);
}

/// `ferry client -config CONFIG -json -body BODY`: exit code and the last
/// reply's JSON (else what it said on stderr).
fn client(config: &std::path::Path, body: &str) -> (i32, Value) {
    let out = std::process::Command::new(BIN)
        .args(["client", "-config"])
        .arg(config)
        .args(["-json", "-timeout", "60", "-body", body])
        .output()
        .expect("client");
    let last = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| Value::String(String::from_utf8_lossy(&out.stderr).into_owned()));
    (out.status.code().unwrap_or(-1), last)
}

#[test]
fn bs_router_jobs_go_through_a_nats_cluster_also_with_its_leader_down() {
    let mut nats = ferry_testkit::nats::NatsCluster::start(3).expect("nats");
    let t = TestWorkdir::with_base(BIN);
    let config = t.root().join("agent.json");
    std::fs::write(&config, nats.agent_config(t.root(), "cbsd_pool1", "")).expect("config");
    let _agent = Agent::start(&config);
    let (code, reply) = client(
        &config,
        r#"{"Command":"jcreate","CommandArgs":{"jname":"jail1","host_hostname":"jail1.my.domain","astart":"1","runasap":"1"}}"#,
    );
    let log = std::fs::read_to_string(t.root().join("var/log/agent.log")).unwrap_or_default();
    assert_eq!(code, 0, "{reply}\nagent.log:\n{log}");
    assert_eq!(t.status("jail1"), "running");
    // The cluster's leader dies: the next job still gets its reply.
    let leader = nats.meta_leader(0).expect("a leader");
    nats.kill(nats.index_of(&leader).expect("ours"));
    let (code, reply) = client(
        &config,
        r#"{"Command":"jls","CommandArgs":{"header":"0","display":"jname,status"}}"#,
    );
    let log = std::fs::read_to_string(t.root().join("var/log/agent.log")).unwrap_or_default();
    assert_eq!(code, 0, "{reply}\nagent.log:\n{log}");
    assert!(reply.to_string().contains("jail1"), "{reply}");
    let (code, reply) = client(
        &config,
        r#"{"Command":"jstop","CommandArgs":{"jname":"jail1"}}"#,
    );
    assert_eq!(code, 0, "{reply}");
}

/// The agent, killed when the test ends, passed or not.
struct Agent(std::process::Child);

impl Agent {
    /// `ferry agent -config CONFIG`.
    fn start(config: &std::path::Path) -> Agent {
        Agent(
            std::process::Command::new(BIN)
                .args(["agent", "-config"])
                .arg(config)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("agent"),
        )
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Every task of `t` (`task mode=list --json`).
fn task_rows(t: &TestWorkdir) -> Vec<Value> {
    let v: Value = serde_json::from_str(&t.ok(&["task", "mode=list", "--json"])).expect("JSON");
    v.as_array().cloned().unwrap_or_default()
}

/// Every reply on `tube` (all there already), taken: (progress,
/// err_code) of each.
fn replies_on(c: &mut impl Broker, tube: &str) -> Vec<(u8, i32)> {
    c.watch_own(tube).expect("watch");
    c.ignore("default").ok();
    let mut got = Vec::new();
    while let Some(job) = c.reserve(Duration::ZERO).expect("reserve") {
        c.delete(job.id).expect("delete");
        let r = ferry_agent::job::Reply::parse(&job.body).expect("a reply");
        got.push((r.progress, r.err_code));
    }
    c.watch("default").ok();
    c.ignore(tube).ok();
    got
}

/// 500 bs_router jobs through `ferry agent` and 30 remote tasks between two
/// nodes, while the leader of the jobs' stream is killed and later started
/// again: every job is answered, once; every task runs, once.
#[test]
fn a_stream_leader_killed_and_restarted_amid_500_jobs_and_30_tasks_loses_and_repeats_nothing() {
    let (c, mut b) = TestCluster::with_broker(BIN, 2, Storage::Plain, Transport::Nats, true);
    let (n1, n2) = (&c.nodes[0], &c.nodes[1]);
    let _d1 = n1.daemon(&["heartbeat=1"]);
    let _d2 = n2.daemon(&["heartbeat=1"]);
    n1.ok(&["node", "mode=add", "node=n2"]);
    let pool = TestWorkdir::with_base(BIN);
    let config = pool.root().join("agent.json");
    std::fs::write(&config, b.agent_config(pool.root(), "cbsd_load", "")).expect("config");
    let _agent = Agent::start(&config);
    let mut client = b.client();
    client.use_tube("cbsd_load").expect("use");
    const JOBS: usize = 500;
    const TASKS: usize = 30;
    let t0 = Instant::now();
    let mut jobs = Vec::new();
    let mut tasks = Vec::new();
    let mut killed = None;
    for i in 0..JOBS {
        let body = format!(r#"{{"Command":"jcreate","CommandArgs":{{"jname":"l{i}"}}}}"#);
        let id = client
            .put(
                body.as_bytes(),
                1024,
                Duration::ZERO,
                Duration::from_secs(60),
            )
            .expect("put");
        jobs.push(id);
        if i % 16 == 0 && tasks.len() < TASKS {
            tasks.push(n1.submit_task(&["node=n2", "jcreate", &format!("jname=t{i}")]));
        }
        if i == JOBS / 4 {
            let TestBroker::Nats(nats) = &mut b else {
                unreachable!("a NATS cluster")
            };
            let leader = nats.stream_leader("FERRY").expect("the stream's leader");
            let l = nats.index_of(&leader).expect("ours");
            eprintln!("job {i}: the stream's leader {leader} killed");
            nats.kill(l);
            killed = Some(l);
        }
    }
    while tasks.len() < TASKS {
        let i = tasks.len();
        tasks.push(n1.submit_task(&["node=n2", "jcreate", &format!("jname=u{i}")]));
    }
    eprintln!("{JOBS} jobs and {TASKS} tasks sent in {:?}", t0.elapsed());
    let TestBroker::Nats(nats) = &mut b else {
        unreachable!("a NATS cluster")
    };
    nats.restart(killed.expect("one killed"))
        .expect("the server back");
    eprintln!("the server back at {:?}", t0.elapsed());
    wait_for("every job run", Duration::from_secs(240), || {
        pool.jls().len() == JOBS
    });
    wait_for("every task done on n1", Duration::from_secs(120), || {
        let rows = task_rows(n1);
        tasks
            .iter()
            .all(|id| rows.iter().any(|r| r["id"] == *id && r["state"] == "done"))
    });
    eprintln!("all run at {:?}", t0.elapsed());
    // Every job: one final reply, a success (a second run would have found
    // its jail there and failed; a second reply would be here).
    let mut c = b.client();
    for (i, id) in jobs.iter().enumerate() {
        let tube = format!("cbsd_load_result_id{id}");
        let finals: Vec<(u8, i32)> = replies_on(&mut c, &tube)
            .into_iter()
            .filter(|(p, _)| *p == 100)
            .collect();
        assert_eq!(finals, [(100, 0)], "job {i} (id {id})");
    }
    let left = c.stats_tube("cbsd_load").expect("stats");
    assert_eq!(
        (left.ready, left.reserved, left.buried),
        (0, 0, 0),
        "{left:?}"
    );
    // Every task: run once on n2.
    let there = task_rows(n2);
    assert_eq!(there.len(), TASKS, "{there:#?}");
    assert!(there.iter().all(|r| r["runs"] == 1 && r["state"] == "done"));
    let mut origins: Vec<&str> = there.iter().filter_map(|r| r["origin"].as_str()).collect();
    origins.sort();
    origins.dedup();
    assert_eq!(origins.len(), TASKS);
    assert_eq!(n2.jls().len(), TASKS);
}
