//! Losing the broker: binlog durability, reconnecting, stale jobs, and a
//! broker that is down.

mod common;

use std::net::TcpListener;
use std::thread;
use std::time::{Duration, Instant};

use common::{connect, on_tube, opts, put, uri};
use ferry_broker::{Broker, BrokerUri, Connection, Error, JobState, ReconnectPolicy, Reconnecting};
use ferry_testkit::beanstalkd::Beanstalkd;

fn policy(give_up_after: Duration) -> ReconnectPolicy {
    ReconnectPolicy {
        initial_delay: Duration::from_millis(20),
        max_delay: Duration::from_millis(200),
        give_up_after,
    }
}

fn reconnecting(b: &Beanstalkd) -> Reconnecting {
    Reconnecting::connect(uri(b), opts(), policy(Duration::from_secs(5))).expect("connect")
}

/// A loopback port with nothing listening.
fn dead_uri() -> BrokerUri {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    format!("127.0.0.1:{port}").parse().expect("uri")
}

fn binlog_keeps_ready_jobs(crash: bool) {
    let mut b = Beanstalkd::builder().binlog().start().expect("beanstalkd");
    let mut c = on_tube(&b, "durable");
    let bodies: Vec<Vec<u8>> = (0..50u8)
        .map(|i| vec![i; 1 + usize::from(i) * 13])
        .collect();
    let ids: Vec<_> = bodies.iter().map(|body| put(&mut c, body)).collect();
    drop(c);
    if crash {
        b.kill().expect("kill");
        b.restart().expect("start");
    } else {
        b.restart().expect("restart");
    }
    let mut c = on_tube(&b, "durable");
    assert_eq!(c.stats_tube("durable").expect("stats").ready, 50);
    for (id, body) in ids.iter().zip(&bodies) {
        let job = c.reserve(Duration::ZERO).expect("reserve").expect("kept");
        assert_eq!((job.id, &job.body), (*id, body));
        c.delete(job.id).expect("delete");
    }
}

#[test]
fn a_restart_with_binlog_loses_no_ready_job() {
    binlog_keeps_ready_jobs(false);
}

#[test]
fn a_crash_with_binlog_loses_no_ready_job() {
    binlog_keeps_ready_jobs(true);
}

#[test]
fn reconnect_restores_tubes_and_refuses_jobs_reserved_before() {
    let mut b = Beanstalkd::builder().binlog().start().expect("beanstalkd");
    let mut r = reconnecting(&b);
    r.use_tube("out").expect("use");
    r.watch("in").expect("watch");
    r.ignore("default").expect("ignore");
    let mut other = connect(&b);
    put(&mut other, b"decoy in default");
    other.use_tube("in").expect("use");
    let x = put(&mut other, b"x");
    drop(other);
    let job = r.reserve(Duration::ZERO).expect("reserve").expect("job");
    assert_eq!(job.id, x);

    b.restart().expect("restart");

    // Reserved on the lost connection: refused without reaching the server.
    assert!(matches!(r.delete(x), Err(Error::StaleJob(id)) if id == x));
    assert!(matches!(r.touch(x), Err(Error::StaleJob(_))));
    assert!(matches!(
        r.release(x, 0, Duration::ZERO),
        Err(Error::StaleJob(_))
    ));
    assert!(matches!(r.bury(x, 0), Err(Error::StaleJob(_))));
    // The put went into a connection the server had closed: detected before
    // sending, so it is retried, not ambiguous.
    let y = put(&mut r, b"y");
    assert_eq!(r.reconnects(), 1);
    let mut check = connect(&b);
    assert_eq!(check.stats_job(y).expect("stats").tube, "out");
    assert_eq!(check.stats_job(x).expect("stats").state, JobState::Ready);
    // The watch set is back: x again (from "in"), not the decoy in default.
    let again = r
        .reserve(Duration::from_secs(1))
        .expect("reserve")
        .expect("x again");
    assert_eq!(again.id, x);
    r.delete(x)
        .expect("reserved on this connection: ours again");
    assert!(
        r.reserve(Duration::ZERO).expect("reserve").is_none(),
        "default stays ignored"
    );
    assert_eq!((r.using(), r.watched()), ("out", &["in".to_owned()][..]));
}

#[test]
fn a_reserve_waiting_through_a_restart_continues_on_a_new_connection() {
    let mut b = Beanstalkd::start().expect("beanstalkd");
    let mut r = reconnecting(&b);
    r.watch("work").expect("watch");
    let waiter = thread::spawn(move || {
        let job = r.reserve(Duration::from_secs(10));
        (job, r.reconnects())
    });
    thread::sleep(Duration::from_millis(300));
    b.restart().expect("restart");
    let mut p = connect(&b);
    p.use_tube("work").expect("use");
    let id = put(&mut p, b"after the restart");
    let (job, reconnects) = waiter.join().expect("waiter");
    assert_eq!(job.expect("reserve").expect("job").id, id);
    assert_eq!(reconnects, 1);
}

#[test]
fn broker_down_is_a_clear_error_in_bounded_time() {
    let t = Instant::now();
    let e = Connection::connect(&dead_uri(), opts()).expect_err("nothing listens");
    assert!(
        matches!(e, Error::Connect { .. }) && e.is_connection_lost(),
        "{e}"
    );
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());

    let t = Instant::now();
    let e = Reconnecting::connect(dead_uri(), opts(), policy(Duration::from_millis(800)))
        .expect_err("nothing listens");
    let took = t.elapsed();
    assert!(
        matches!(&e, Error::GaveUp { last, .. } if matches!(**last, Error::Connect { .. })),
        "{e}"
    );
    assert!(
        took >= Duration::from_millis(800) && took < Duration::from_secs(3),
        "{took:?}"
    );

    // Lost while connected: the next operation gives up after the policy's time.
    let mut b = Beanstalkd::start().expect("beanstalkd");
    let mut r = Reconnecting::connect(uri(&b), opts(), policy(Duration::from_millis(800)))
        .expect("connect");
    b.stop().expect("stop");
    let t = Instant::now();
    let e = r
        .put(b"lost", 0, Duration::ZERO, Duration::from_secs(5))
        .expect_err("down");
    assert!(matches!(e, Error::GaveUp { .. }), "{e}");
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    // And it comes back once the broker does.
    b.restart().expect("restart");
    put(&mut r, b"back");
}

#[test]
fn a_plain_connection_stays_lost() {
    let mut b = Beanstalkd::start().expect("beanstalkd");
    let mut c = connect(&b);
    b.restart().expect("restart");
    let e = c
        .put(b"x", 0, Duration::ZERO, Duration::from_secs(5))
        .expect_err("lost");
    assert!(matches!(e, Error::Disconnected(_)), "{e}");
    assert!(c.is_lost());
    assert!(matches!(
        c.reserve(Duration::ZERO),
        Err(Error::Disconnected(_))
    ));
}

#[test]
fn a_put_after_a_restart_is_sent_once_on_a_new_connection() {
    let mut b = Beanstalkd::start().expect("beanstalkd");
    let mut r = reconnecting(&b);
    r.use_tube("once").expect("use");
    b.restart().expect("restart");
    let id = put(&mut r, b"exactly once");
    assert_eq!(r.reconnects(), 1);
    let mut check = connect(&b);
    let s = check.stats_tube("once").expect("stats");
    assert_eq!((s.total_jobs, s.ready), (1, 1));
    assert_eq!(check.stats_job(id).expect("stats").tube, "once");
}
