//! A task's round trip node1 → node2 → result, against a raw broker round
//! trip (put, reserve, put, reserve) on the same broker in the same run;
//! over beanstalkd, then over a three-server NATS JetStream cluster.
//!
//! The task is `jls` for node n2, queued on n1 through the dispatcher the
//! command line uses (`task mode=new node=n2 jls`, which sends it at once);
//! the round trip ends when n1's record of it is `done`, i.e. n2 stored the
//! request, its daemon started a runner that ran `jls` and recorded the
//! result, the runner put the result on n1's task tube, and n1's daemon
//! recorded it. The raw round trip is two connections: one puts on a tube
//! and waits on another, the other takes the job and puts the answer.
//! Every task is paired with a raw round trip measured right before it.
//!
//! Run as root: `cargo bench -p ferry --bench node_task` (count:
//! `FERRY_BENCH_TASKS`, default 300; brokers:
//! `FERRY_BENCH_BROKER=beanstalkd|nats`, default both).

use std::time::{Duration, Instant};

use ferry_api::Command;
use ferry_broker::Broker;
use ferry_cluster::{dispatch, Context};
use ferry_core::task::TaskStore;
use ferry_testkit::bench::{ms, percentile, setting};
use ferry_testkit::broker::{TestBroker, Transport};
use ferry_testkit::{Storage, TestCluster};

const BIN: &str = env!("CARGO_BIN_EXE_ferry");

fn main() {
    let n = setting("FERRY_BENCH_TASKS", 300);
    for t in Transport::benched() {
        bench(t, n);
    }
}

fn bench(transport: Transport, n: usize) {
    let c = TestCluster::new(BIN, 2, Storage::Plain, false);
    let b = TestBroker::start(transport, false).expect("broker");
    for node in &c.nodes {
        node.ok(&["initenv", &format!("broker={}", b.uri())]);
    }
    let (n1, n2) = (&c.nodes[0], &c.nodes[1]);
    let _d1 = n1.daemon(&["heartbeat=1"]);
    let _d2 = n2.daemon(&["heartbeat=1", "tasks=4"]);
    n1.ok(&["node", "mode=add", "node=n2"]);

    let (mut asker, mut worker) = (b.client(), b.client());
    asker.use_tube("bench.ask").expect("use");
    // The answer tube is the asker's own, as a node's reply tube is.
    asker.watch_own("bench.answer").expect("watch");
    asker.ignore("default").expect("ignore");
    worker.watch("bench.ask").expect("watch");
    worker.ignore("default").expect("ignore");
    worker.use_tube("bench.answer").expect("use");

    let ctx = Context::new(n1.root());
    let store = TaskStore::open(&n1.workdir().db_dir()).expect("store");
    let words: Vec<String> = ["task", "mode=new", "node=n2", "jls"]
        .iter()
        .map(|w| (*w).to_owned())
        .collect();
    let (mut raw, mut task) = (Vec::with_capacity(n), Vec::with_capacity(n));
    // One unmeasured task first: connections, caches, page faults.
    for i in 0..=n {
        let t = Instant::now();
        asker
            .put(b"ping", 0, Duration::ZERO, Duration::from_secs(5))
            .expect("put");
        let job = worker
            .reserve(Duration::from_secs(5))
            .expect("reserve")
            .expect("job");
        worker
            .put(&job.body, 0, Duration::ZERO, Duration::from_secs(5))
            .expect("put");
        worker.delete(job.id).expect("delete");
        let back = asker
            .reserve(Duration::from_secs(5))
            .expect("reserve")
            .expect("job");
        let r = t.elapsed();
        asker.delete(back.id).expect("delete");

        let t = Instant::now();
        let cmd = Command::parse_words(&words).expect("words");
        let id: u64 = match dispatch(&ctx, cmd).expect("task mode=new") {
            ferry_api::Outcome::Message { message } => message.trim().parse().expect("id"),
            o => panic!("{o:?}"),
        };
        loop {
            let row = store.get(id).expect("get").expect("row");
            if row.state.is_final() {
                assert_eq!(row.state.as_str(), "done", "{row:?}");
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "task {id} stuck: {row:?}"
            );
            std::thread::sleep(Duration::from_micros(100));
        }
        let d = t.elapsed();
        if i > 0 {
            raw.push(r);
            task.push(d);
        }
    }
    let p = |v: &[Duration], q| ms(percentile(v.to_vec(), q));
    println!("{n} round trips over {transport} (loopback), two nodes on a plain shared dir:");
    println!(
        "  raw put/reserve/put/reserve  p50 {:8.3} ms  p99 {:8.3} ms",
        p(&raw, 50),
        p(&raw, 99)
    );
    println!(
        "  task node1 -> node2 -> result p50 {:8.3} ms  p99 {:8.3} ms",
        p(&task, 50),
        p(&task, 99)
    );
    println!(
        "  ratio p50 {:.1}x, p99 {:.1}x",
        p(&task, 50) / p(&raw, 50),
        p(&task, 99) / p(&raw, 99)
    );
}
