//! The cluster over a real beanstalkd: three nodes, each in its own network
//! namespace, their daemons serving their node tubes; `node mode=add`
//! fetching inventories over the broker, liveness from heartbeats, refusals,
//! a malformed request, a broker that goes away and comes back.

use std::time::{Duration, Instant};

use ferry_broker::{Broker, ConnectOptions, Connection};
use ferry_testkit::beanstalkd::Beanstalkd;
use ferry_testkit::{Storage, TestCluster, TestWorkdir};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_ferry");

/// Three nodes in namespaces, a broker on the host's bridge address that
/// they all use.
fn cluster() -> (TestCluster, Beanstalkd) {
    let c = TestCluster::new(BIN, 3, Storage::Plain, true);
    let host = c
        .net()
        .expect("namespaces")
        .host_addr()
        .parse()
        .expect("ip");
    let b = Beanstalkd::builder()
        .bind(host)
        .start()
        .expect("beanstalkd");
    for n in &c.nodes {
        n.ok(&["initenv", &format!("broker={}", b.uri())]);
    }
    (c, b)
}

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

#[test]
fn nodes_are_added_over_the_broker_and_a_dead_one_shows_dead_within_the_lease_time() {
    let (c, _b) = cluster();
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

#[test]
fn bad_requests_and_a_lost_broker_leave_the_daemons_serving() {
    let (c, mut b) = cluster();
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
    let uri = b.uri().parse().expect("uri");
    let mut raw = Connection::connect(&uri, ConnectOptions::default()).expect("connect");
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
    wait_for(
        "the malformed requests buried",
        Duration::from_secs(5),
        || {
            raw.stats_tube("ferry.node.n2")
                .map(|s| s.buried)
                .unwrap_or(0)
                == 4
        },
    );

    // The broker goes away: a clear error; it comes back: the daemon
    // reconnected by itself and answers again.
    b.stop().expect("stop beanstalkd");
    let err = n1.fails(1, &["node", "mode=add", "node=n2", "timeout=2"]);
    assert!(err.contains("broker"), "{err}");
    b.restart().expect("restart beanstalkd");
    wait_for(
        "n2 answers after the broker came back",
        Duration::from_secs(20),
        || n1.run(&["node", "mode=add", "node=n2", "timeout=2"]).code == 0,
    );
}
