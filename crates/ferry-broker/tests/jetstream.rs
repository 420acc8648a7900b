//! The JetStream transport against a real three-server NATS cluster
//! (issue 18): beanstalkd's words as ferry uses them, and jobs that
//! survive a server killed in the middle.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use ferry_broker::{Broker, Error, JetStream, JetStreamOptions};
use ferry_testkit::nats::NatsCluster;

fn servers(c: &NatsCluster) -> Vec<String> {
    c.uri()
        .trim_start_matches("nats://")
        .split(',')
        .map(str::to_owned)
        .collect()
}

fn connect(c: &NatsCluster, ack_wait: Duration) -> JetStream {
    let opts = JetStreamOptions {
        ack_wait,
        ..JetStreamOptions::default()
    };
    JetStream::connect(&servers(c), opts).expect("connect to the cluster")
}

fn on_tube(c: &NatsCluster, tube: &str, ack_wait: Duration) -> JetStream {
    let mut b = connect(c, ack_wait);
    b.use_tube(tube).expect("use");
    b.watch(tube).expect("watch");
    b.ignore("default").expect("ignore default");
    b
}

const TTR: Duration = Duration::from_secs(60);

#[test]
fn put_reserve_delete_release_bury_and_refusals() {
    let c = NatsCluster::start(3).expect("nats");
    let mut b = on_tube(&c, "cbsd_pool1", Duration::from_secs(30));
    let bodies: Vec<Vec<u8>> = vec![
        b"{\"Command\": \"jls\"}".to_vec(),
        vec![],
        vec![0xff, 0x00, 0xc3, 0x28],
        b"a\r\nb".to_vec(),
    ];
    for body in &bodies {
        let id = b.put(body, 100, Duration::ZERO, TTR).expect("put");
        let job = b
            .reserve(Duration::from_secs(2))
            .expect("reserve")
            .expect("a job");
        assert_eq!((job.id, &job.body), (id, body));
        b.delete(id).expect("delete");
        assert!(matches!(b.delete(id), Err(Error::NotFound(_))));
    }
    // Nothing left: a zero wait answers at once, a short one in time.
    let t = Instant::now();
    assert!(b.reserve(Duration::ZERO).expect("reserve").is_none());
    assert!(b
        .reserve(Duration::from_secs(1))
        .expect("reserve")
        .is_none());
    assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());

    // Released: delivered again.
    let id = b.put(b"again", 100, Duration::ZERO, TTR).expect("put");
    let job = b
        .reserve(Duration::from_secs(2))
        .expect("reserve")
        .expect("job");
    b.release(job.id, 100, Duration::ZERO).expect("release");
    let again = b
        .reserve(Duration::from_secs(2))
        .expect("reserve")
        .expect("again");
    assert_eq!((again.id, again.body.as_slice()), (id, &b"again"[..]));

    // Buried: never delivered again.
    b.bury(again.id, 1000).expect("bury");
    assert!(b
        .reserve(Duration::from_secs(1))
        .expect("reserve")
        .is_none());

    // Two tubes watched: jobs of either come.
    b.watch("other").expect("watch");
    b.use_tube("other").expect("use");
    let other = b.put(b"o", 100, Duration::ZERO, TTR).expect("put");
    let job = b
        .reserve(Duration::from_secs(2))
        .expect("reserve")
        .expect("job");
    assert_eq!(job.id, other);
    b.delete(job.id).expect("delete");

    // What JetStream cannot do is refused by name.
    assert!(matches!(
        b.put(b"later", 100, Duration::from_secs(5), TTR),
        Err(Error::Unsupported(_))
    ));
    assert!(matches!(b.kick(1), Err(Error::Unsupported(_))));
    assert!(matches!(b.use_tube("-bad"), Err(Error::InvalidTube(_))));
    assert!(matches!(
        b.ignore("other").and_then(|_| b.ignore("cbsd_pool1")),
        Err(Error::NotIgnored)
    ));
}

#[test]
fn an_untouched_job_goes_to_another_worker_after_its_ack_wait_and_a_touched_one_stays() {
    let c = NatsCluster::start(3).expect("nats");
    let ack_wait = Duration::from_secs(2);
    let mut producer = on_tube(&c, "ttr", ack_wait);
    let (mut w1, mut w2) = (on_tube(&c, "ttr", ack_wait), on_tube(&c, "ttr", ack_wait));
    let left = producer.put(b"left", 0, Duration::ZERO, TTR).expect("put");
    let job = w1
        .reserve(Duration::from_secs(2))
        .expect("reserve")
        .expect("job");
    assert_eq!(job.id, left);
    // w1 says nothing: after ack_wait the job is w2's.
    let t = Instant::now();
    let again = w2
        .reserve(Duration::from_secs(6))
        .expect("reserve")
        .expect("delivered again");
    assert_eq!(again.id, left);
    assert!(
        t.elapsed() >= Duration::from_millis(1500),
        "{:?}",
        t.elapsed()
    );
    w2.delete(left).expect("delete");

    let touched = producer
        .put(b"touched", 0, Duration::ZERO, TTR)
        .expect("put");
    let job = w1
        .reserve(Duration::from_secs(2))
        .expect("reserve")
        .expect("job");
    assert_eq!(job.id, touched);
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(4500) {
        w1.touch(touched).expect("touch");
        assert!(
            w2.reserve(Duration::from_millis(500))
                .expect("reserve")
                .is_none(),
            "a touched job went to another worker"
        );
    }
    w1.delete(touched).expect("delete");
}

#[test]
fn no_job_is_lost_when_a_server_dies_and_comes_back_mid_stream() {
    no_job_is_lost_when_a_server_dies(Victim::MetaLeader);
}

#[test]
fn no_job_is_lost_when_the_server_holding_the_tube_s_consumer_dies() {
    no_job_is_lost_when_a_server_dies(Victim::ConsumerHost);
}

/// Which server a test kills.
enum Victim {
    /// The JetStream meta leader.
    MetaLeader,
    /// The leader of the worker's consumer.
    ConsumerHost,
}

fn no_job_is_lost_when_a_server_dies(v: Victim) {
    let mut c = NatsCluster::start(3).expect("nats");
    let tube = "cbsd_pool2";
    let mut producer = on_tube(&c, tube, Duration::from_secs(5));
    let mut worker = on_tube(&c, tube, Duration::from_secs(5));
    // The consumer exists once the worker looked.
    assert!(worker.reserve(Duration::ZERO).expect("reserve").is_none());
    let n = 500;
    let mut seen: BTreeMap<String, u32> = BTreeMap::new();
    let victim = match v {
        Victim::MetaLeader => c.meta_leader(0),
        Victim::ConsumerHost => c.consumer_leader("FERRY", &ferry_broker::jetstream::token(tube)),
    }
    .and_then(|l| c.index_of(&l))
    .expect("a server to kill");
    for i in 0..n {
        if i == n / 3 {
            c.kill(victim);
        }
        if i == 2 * n / 3 {
            c.restart(victim).expect("the server back");
        }
        producer
            .put(format!("job-{i}").as_bytes(), 100, Duration::ZERO, TTR)
            .expect("put");
        // The worker takes what is there as it goes.
        while let Some(job) = worker.reserve(Duration::ZERO).unwrap_or(None) {
            *seen
                .entry(String::from_utf8_lossy(&job.body).into_owned())
                .or_default() += 1;
            let _ = worker.delete(job.id);
        }
    }
    let t = Instant::now();
    while seen.len() < n && t.elapsed() < Duration::from_secs(60) {
        if let Ok(Some(job)) = worker.reserve(Duration::from_secs(1)) {
            *seen
                .entry(String::from_utf8_lossy(&job.body).into_owned())
                .or_default() += 1;
            let _ = worker.delete(job.id);
        }
    }
    let missing: Vec<usize> = (0..n)
        .filter(|i| !seen.contains_key(&format!("job-{i}")))
        .collect();
    let twice = seen.values().filter(|v| **v > 1).count();
    eprintln!(
        "{} of {n} jobs received, {twice} more than once",
        seen.len()
    );
    assert!(missing.is_empty(), "lost: {missing:?}");
    assert_eq!(twice, 0, "jobs delivered twice");
}

#[test]
fn an_own_tube_is_read_from_the_stream_with_beanstalkd_s_words() {
    let c = NatsCluster::start(3).expect("nats");
    let tube = "cbsd_pool1_result_id7";
    let mut reader = connect(&c, TTR);
    reader.watch_own(tube).expect("watch");
    reader.ignore("default").expect("ignore");
    let mut writer = connect(&c, TTR);
    writer.use_tube(tube).expect("use");
    // Already there before the wait began, and put during it.
    let first = writer.put(b"one", 0, Duration::ZERO, TTR).expect("put");
    let job = reader
        .reserve(Duration::from_secs(2))
        .expect("reserve")
        .expect("a job");
    assert_eq!((job.id, job.body.as_slice()), (first, &b"one"[..]));
    let put_later = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        writer.put(b"two", 0, Duration::ZERO, TTR).expect("put")
    });
    let t = Instant::now();
    let job2 = reader
        .reserve(Duration::from_secs(5))
        .expect("reserve")
        .expect("a job put during the wait");
    let second = put_later.join().expect("writer");
    assert_eq!(job2.id, second);
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "woken late: {:?}",
        t.elapsed()
    );
    // Held jobs are not handed out again; a released one is.
    assert!(reader.reserve(Duration::ZERO).expect("reserve").is_none());
    reader.release(first, 0, Duration::ZERO).expect("release");
    let again = reader
        .reserve(Duration::ZERO)
        .expect("reserve")
        .expect("the released job");
    assert_eq!(again.id, first);
    // Deleted and buried: gone from the tube, the buried one counted.
    reader.delete(first).expect("delete");
    reader.bury(second, 0).expect("bury");
    assert!(matches!(reader.delete(first), Err(Error::NotFound(_))));
    let stats = reader.stats_tube(tube).expect("stats");
    assert_eq!((stats.ready, stats.reserved, stats.buried), (0, 0, 1));
    // A new reader of the same tube finds nothing left.
    let mut other = connect(&c, TTR);
    other.watch_own(tube).expect("watch");
    other.ignore("default").expect("ignore");
    assert!(other.reserve(Duration::ZERO).expect("reserve").is_none());
}

#[test]
fn a_job_delivered_too_often_is_buried_not_handed_out_again() {
    let c = NatsCluster::start(3).expect("nats");
    let opts = JetStreamOptions {
        max_deliveries: 2,
        ..JetStreamOptions::default()
    };
    let mut b = JetStream::connect(&servers(&c), opts).expect("connect");
    let tube = "cbsd_poison";
    b.use_tube(tube).expect("use");
    b.watch(tube).expect("watch");
    b.ignore("default").expect("ignore");
    let id = b.put(b"poison", 0, Duration::ZERO, TTR).expect("put");
    // Two deliveries given back (as by workers that died on it) ...
    for _ in 0..2 {
        let job = b
            .reserve(Duration::from_secs(5))
            .expect("reserve")
            .expect("the job");
        assert_eq!(job.id, id);
        b.release(id, 0, Duration::ZERO).expect("release");
    }
    // ... and the third is not handed out: it is buried.
    assert!(b
        .reserve(Duration::from_secs(3))
        .expect("reserve")
        .is_none());
    let stats = b.stats_tube(tube).expect("stats");
    assert_eq!((stats.ready, stats.reserved, stats.buried), (0, 0, 1));
}
