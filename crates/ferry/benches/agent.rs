//! Broker round trips: a trivial job (`jls` on an empty workdir) from an
//! in-process client through `ferry agent` (a separate process, as in
//! production) and back, against the raw broker round trip on the same
//! broker in the same run; over beanstalkd, then over a three-server NATS
//! JetStream cluster on loopback.
//!
//! Both sides make the very same broker calls: the client puts the job,
//! watches `<prefix><id>`, reserves the reply and deletes it; the worker
//! reserves the job, puts the reply and deletes the job. On the raw side
//! the worker is a thread that answers every job with a constant reply at
//! once; on ferry's side it is the agent, which decodes the job, runs
//! `jls` through the dispatcher (opening the workdir and its registry) and
//! logs it. Latency: sequential round trips, in blocks that alternate
//! which side goes first; p50 and p99. Throughput: 1, 2, 4, 8 clients at
//! once against as many workers as the agent has (`concurrency`).
//!
//! Run as root: `cargo bench -p ferry --bench agent` (round trips per
//! side: `FERRY_BENCH_JOBS`, default 10000; agent workers:
//! `FERRY_BENCH_CONCURRENCY`, default 4, the agent's default; brokers:
//! `FERRY_BENCH_BROKER=beanstalkd|nats`, default both).

use std::fs;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_agent::{Client, Config};
use ferry_broker::{Broker, ConnectOptions, ReconnectPolicy, Reconnecting};
use ferry_testkit::bench::{ms, setting};
use ferry_testkit::broker::{TestBroker, Transport};
use ferry_testkit::TestWorkdir;

const BIN: &str = env!("CARGO_BIN_EXE_ferry");
const JOB: &[u8] = br#"{"Command":"jls"}"#;
const RAW_REPLY: &[u8] =
    br#"{"ErrCode":0,"Message":"","Progress":100,"Guid":"","DskGuid":"","Vnc":""}"#;

fn main() {
    let jobs = setting("FERRY_BENCH_JOBS", 10000);
    let workers = setting("FERRY_BENCH_CONCURRENCY", 4);
    for t in Transport::benched() {
        bench(t, jobs, workers);
    }
}

fn bench(transport: Transport, jobs: usize, workers: usize) {
    let b = TestBroker::start(transport, false).expect("broker");
    let t = TestWorkdir::new(BIN);
    let config = |tube: &str, dir: &Path| {
        let path = dir.join(format!("{tube}.json"));
        let text = b.agent_config(t.root(), tube, &format!(r#""concurrency": {workers},"#));
        fs::write(&path, text).expect("config");
        (Config::load(&path).expect("config"), path)
    };
    let (ferry_cfg, ferry_path) = config("bench_ferry", t.root());
    let (raw_cfg, _) = config("bench_raw", t.root());
    let _agent = Agent::start(&ferry_path);
    let stop = Arc::new(AtomicBool::new(false));
    let raw_workers: Vec<_> = (0..workers)
        .map(|_| {
            let (cfg, stop) = (raw_cfg.clone(), Arc::clone(&stop));
            std::thread::spawn(move || echo_worker(&cfg, &stop))
        })
        .collect();

    // Warm up both sides (connections, page cache, the agent's workers).
    for cfg in [&ferry_cfg, &raw_cfg] {
        let mut c = Client::connect(cfg).expect("client");
        for _ in 0..200 {
            call(&mut c);
        }
    }

    let (mut f, mut r) = (Vec::with_capacity(jobs), Vec::with_capacity(jobs));
    let mut cf = Client::connect(&ferry_cfg).expect("client");
    let mut cr = Client::connect(&raw_cfg).expect("client");
    let blocks = 20;
    for block in 0..blocks {
        let n = jobs / blocks;
        let side = |c: &mut Client, into: &mut Vec<Duration>| {
            for _ in 0..n {
                let t0 = Instant::now();
                call(c);
                into.push(t0.elapsed());
            }
        };
        if block % 2 == 0 {
            side(&mut cf, &mut f);
            side(&mut cr, &mut r);
        } else {
            side(&mut cr, &mut r);
            side(&mut cf, &mut f);
        }
    }
    let (fp50, fp99) = percentiles(f);
    let (rp50, rp99) = percentiles(r);
    println!(
        "over {transport}: round trip of jls, {jobs} sequential jobs per side, agent concurrency {workers}:"
    );
    println!("  ferry  p50 {:.3} ms  p99 {:.3} ms", ms(fp50), ms(fp99));
    println!("  raw    p50 {:.3} ms  p99 {:.3} ms", ms(rp50), ms(rp99));
    println!(
        "  p50 ratio {:.2} (goal <= 1.5)",
        fp50.as_secs_f64() / rp50.as_secs_f64()
    );
    println!("throughput, {jobs} jobs per run:");
    for clients in [1, 2, 4, 8] {
        let fr = throughput(&ferry_cfg, clients, jobs);
        let rr = throughput(&raw_cfg, clients, jobs);
        println!(
            "  {clients} client(s): ferry {fr:7.0} jobs/s   raw {rr:7.0} jobs/s   ({:.2} of raw)",
            fr / rr
        );
    }
    stop.store(true, Ordering::SeqCst);
    for w in raw_workers {
        let _ = w.join();
    }
}

#[track_caller]
fn call(c: &mut Client) {
    let r = c
        .call(JOB, Duration::from_secs(10), |_| {})
        .expect("round trip");
    assert_eq!(r.err_code, 0, "{r:?}");
}

/// p50 and p99.
fn percentiles(mut v: Vec<Duration>) -> (Duration, Duration) {
    v.sort();
    (v[v.len() / 2], v[v.len() * 99 / 100])
}

/// Jobs per second with `clients` clients sending `jobs` jobs in all.
fn throughput(cfg: &Config, clients: usize, jobs: usize) -> f64 {
    let per = jobs / clients;
    let mut conns: Vec<Client> = (0..clients)
        .map(|_| Client::connect(cfg).expect("client"))
        .collect();
    let t0 = Instant::now();
    std::thread::scope(|s| {
        for c in &mut conns {
            s.spawn(move || {
                for _ in 0..per {
                    call(c);
                }
            });
        }
    });
    (per * clients) as f64 / t0.elapsed().as_secs_f64()
}

/// The raw worker: reserve, put a constant reply, delete.
fn echo_worker(cfg: &Config, stop: &AtomicBool) {
    let mut c = Reconnecting::connect(
        cfg.uri.clone(),
        ConnectOptions::default(),
        ReconnectPolicy::default(),
    )
    .expect("connect");
    c.watch(&cfg.tube).expect("watch");
    c.ignore("default").expect("ignore");
    while !stop.load(Ordering::SeqCst) {
        let Some(job) = c.reserve(Duration::from_secs(1)).expect("reserve") else {
            continue;
        };
        c.use_tube(&cfg.reply_tube(job.id)).expect("use");
        c.put(RAW_REPLY, 1, Duration::ZERO, cfg.publish_timeout)
            .expect("put");
        c.delete(job.id).expect("delete");
    }
}

/// `ferry agent`, killed on drop.
struct Agent(Child);

impl Agent {
    fn start(config: &Path) -> Agent {
        let child = Command::new(BIN)
            .args(["agent", "-config"])
            .arg(config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the agent");
        Agent(child)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
