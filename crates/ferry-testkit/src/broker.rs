//! One broker for a test, of either transport: a beanstalkd, or a
//! three-server NATS JetStream cluster. The broker, cluster and migration
//! tests run over both through [`over_both_brokers!`](crate::over_both_brokers):
//! each test takes a [`Transport`] and starts its broker with
//! [`TestBroker::start_at`].

use std::io;
use std::net::Ipv4Addr;
use std::path::Path;

use crate::beanstalkd::Beanstalkd;
use crate::nats::NatsCluster;

/// Which broker a test runs over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// One beanstalkd (ferry's default).
    Beanstalkd,
    /// A three-server NATS JetStream cluster.
    Nats,
}

impl Transport {
    /// The brokers a benchmark runs over: `FERRY_BENCH_BROKER` names one
    /// (`beanstalkd` or `nats`); both by default.
    pub fn benched() -> Vec<Transport> {
        match std::env::var("FERRY_BENCH_BROKER").as_deref() {
            Ok("beanstalkd") => vec![Transport::Beanstalkd],
            Ok("nats") => vec![Transport::Nats],
            _ => vec![Transport::Beanstalkd, Transport::Nats],
        }
    }
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Transport::Beanstalkd => "beanstalkd",
            Transport::Nats => "nats",
        })
    }
}

/// A running broker of either transport; stopped on drop.
#[derive(Debug)]
pub enum TestBroker {
    /// One beanstalkd.
    Beanstalkd(Beanstalkd),
    /// Three NATS servers with JetStream.
    Nats(NatsCluster),
}

impl TestBroker {
    /// A broker of `transport` on `ip`. `durable`: its jobs survive
    /// [`TestBroker::kill`] and [`TestBroker::start_again`] (a beanstalkd
    /// gets a binlog; JetStream's streams are always on disk).
    pub fn start_at(transport: Transport, ip: Ipv4Addr, durable: bool) -> io::Result<TestBroker> {
        Ok(match transport {
            Transport::Beanstalkd => {
                let mut b = Beanstalkd::builder().bind(ip.into());
                if durable {
                    b = b.binlog();
                }
                TestBroker::Beanstalkd(b.start()?)
            }
            Transport::Nats => TestBroker::Nats(NatsCluster::start_at(ip, 3)?),
        })
    }

    /// [`TestBroker::start_at`] on loopback.
    pub fn start(transport: Transport, durable: bool) -> io::Result<TestBroker> {
        TestBroker::start_at(transport, Ipv4Addr::LOCALHOST, durable)
    }

    /// Which transport this is.
    pub fn transport(&self) -> Transport {
        match self {
            TestBroker::Beanstalkd(_) => Transport::Beanstalkd,
            TestBroker::Nats(_) => Transport::Nats,
        }
    }

    /// The URI ferry is given (`beanstalk://...` or `nats://a,b,c`).
    pub fn uri(&self) -> String {
        match self {
            TestBroker::Beanstalkd(b) => b.uri(),
            TestBroker::Nats(n) => n.uri(),
        }
    }

    /// A bs_router config for an agent serving `cbsdenv` on `tube`; see
    /// [`crate::agent_config`].
    pub fn agent_config(&self, cbsdenv: &Path, tube: &str, extra: &str) -> String {
        match self {
            TestBroker::Beanstalkd(b) => b.agent_config(cbsdenv, tube, extra),
            TestBroker::Nats(n) => n.agent_config(cbsdenv, tube, extra),
        }
    }

    /// A client of this broker for the test itself (the transport ferry
    /// uses, chosen by the URI), reading jobs up to 32 MiB.
    pub fn client(&self) -> ferry_broker::Reconnecting {
        ferry_broker::Reconnecting::lazy(
            self.uri().parse().expect("a broker URI"),
            ferry_broker::ConnectOptions {
                max_job_size: 32 << 20,
                ..ferry_broker::ConnectOptions::default()
            },
            ferry_broker::ReconnectPolicy::default(),
        )
    }

    /// Every server killed (`kill -9`: a crash, not a clean stop).
    pub fn kill(&mut self) -> io::Result<()> {
        match self {
            TestBroker::Beanstalkd(b) => b.kill(),
            TestBroker::Nats(n) => {
                for i in 0..n.len() {
                    n.kill(i);
                }
                Ok(())
            }
        }
    }

    /// Every server up again on its address and store; ready when this
    /// returns.
    pub fn start_again(&mut self) -> io::Result<()> {
        match self {
            TestBroker::Beanstalkd(b) => b.restart(),
            TestBroker::Nats(n) => n.restart_all(),
        }
    }
}

/// Run each named test function (`fn name(t: Transport)`) once per
/// transport: a module `name` with the tests `beanstalkd` and `nats`.
/// Attributes before a name (`#[cfg_attr(..., ignore = "...")]`) go on
/// both tests.
#[macro_export]
macro_rules! over_both_brokers {
    ($($(#[$attr:meta])* $name:ident),* $(,)?) => {
        $(
            mod $name {
                #[test]
                $(#[$attr])*
                fn beanstalkd() {
                    super::$name($crate::broker::Transport::Beanstalkd)
                }

                #[test]
                $(#[$attr])*
                fn nats() {
                    super::$name($crate::broker::Transport::Nats)
                }
            }
        )*
    };
}
