//! Helpers shared by the broker's integration tests.

#![allow(dead_code)]

use std::time::Duration;

use ferry_broker::{Broker, BrokerUri, ConnectOptions, Connection, JobId};
use ferry_testkit::beanstalkd::Beanstalkd;

/// Short enough that a hung test fails quickly.
pub fn opts() -> ConnectOptions {
    ConnectOptions {
        connect_timeout: Duration::from_secs(2),
        io_timeout: Duration::from_secs(5),
        max_job_size: 65_535,
        ..ConnectOptions::default()
    }
}

pub fn uri(b: &Beanstalkd) -> BrokerUri {
    b.uri().parse().expect("fixture URI parses")
}

pub fn connect(b: &Beanstalkd) -> Connection {
    Connection::connect(&uri(b), opts()).expect("connect to beanstalkd")
}

pub fn connect_with(b: &Beanstalkd, max_job_size: usize) -> Connection {
    let o = ConnectOptions {
        max_job_size,
        ..opts()
    };
    Connection::connect(&uri(b), o).expect("connect to beanstalkd")
}

/// A connection that puts into and reserves from `tube` only.
pub fn on_tube(b: &Beanstalkd, tube: &str) -> Connection {
    let mut c = connect(b);
    c.use_tube(tube).expect("use");
    c.watch(tube).expect("watch");
    if tube != "default" {
        c.ignore("default").expect("ignore default");
    }
    c
}

pub const TTR: Duration = Duration::from_secs(60);

pub fn put(c: &mut dyn Broker, body: &[u8]) -> JobId {
    c.put(body, 100, Duration::ZERO, TTR).expect("put")
}
