//! ferry's one place for talking to a message broker.
//!
//! [`Broker`] is the small set of operations ferry needs (the node daemon's
//! node tube, the `ferry agent` serving bs_router-compatible jobs, `ferry
//! client`). [`Connection`] implements it over one beanstalkd connection with
//! our own strict client of the text protocol; [`Reconnecting`] wraps it,
//! reconnects with exponential backoff after the broker was lost, and restores
//! the `use` tube and the watched set. [`JetStream`] implements it over a
//! NATS JetStream cluster (issue 18; not yet selectable by URI).
//!
//! ```no_run
//! use std::time::Duration;
//! use ferry_broker::{Broker, BrokerUri, ConnectOptions, Reconnecting, ReconnectPolicy};
//!
//! # fn main() -> Result<(), ferry_broker::Error> {
//! let uri: BrokerUri = "beanstalk://127.0.0.1:11300".parse()?;
//! let mut b = Reconnecting::connect(uri, ConnectOptions::default(), ReconnectPolicy::default())?;
//! b.use_tube("cbsd_pool1")?;
//! let id = b.put(b"{\"Command\": \"jls\"}", 1024, Duration::ZERO, Duration::from_secs(60))?;
//! b.watch("cbsd_pool1")?;
//! if let Some(job) = b.reserve(Duration::from_secs(5))? {
//!     assert_eq!(job.id, id);
//!     b.delete(job.id)?;
//! }
//! # Ok(()) }
//! ```
//!
//! Durations are sent to beanstalkd in whole seconds, rounded up (a TTR of
//! 300 ms is 1 s), and capped at `u32::MAX` seconds.

mod conn;
mod error;
pub mod jetstream;
mod proto;
mod reconnect;
mod uri;

use std::fmt;
use std::time::Duration;

pub use conn::{ConnectOptions, Connection};
pub use error::{Error, ServerError};
pub use jetstream::{JetStream, JetStreamOptions};
pub use proto::check_tube;
pub use reconnect::{ReconnectPolicy, Reconnecting};
pub use uri::{BrokerUri, Scheme};

/// The result of a broker operation.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A job's id, unique on one broker (a broker restarted without a binlog
/// starts counting again from 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct JobId(pub u64);

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A job as the broker handed it out: its id and its body, as raw bytes
/// (bodies need not be UTF-8).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    /// The broker's id of the job.
    pub id: JobId,
    /// The body exactly as it was put.
    pub body: Vec<u8>,
}

/// Where a job is in its life on the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobState {
    /// Waiting to be reserved.
    Ready,
    /// Put or released with a delay that has not passed yet.
    Delayed,
    /// Handed to a worker, which must delete, release, bury or touch it
    /// within its TTR.
    Reserved,
    /// Set aside until kicked.
    Buried,
}

/// Which job [`Broker::peek`] looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peek {
    /// The job with this id, whatever its tube and state.
    Id(JobId),
    /// The next ready job in the used tube.
    Ready,
    /// The delayed job in the used tube that is ready soonest.
    Delayed,
    /// The oldest buried job in the used tube.
    Buried,
}

/// What `stats-job` tells about a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobStats {
    /// The job's id.
    pub id: JobId,
    /// The tube the job is in.
    pub tube: String,
    /// Its state.
    pub state: JobState,
    /// Its priority (0 is most urgent).
    pub priority: u32,
    /// Time since it was put.
    pub age: Duration,
    /// The delay it was put or released with.
    pub delay: Duration,
    /// Its time to run.
    pub ttr: Duration,
    /// Until the server releases it (reserved) or makes it ready (delayed).
    pub time_left: Duration,
    /// How often it was reserved.
    pub reserves: u64,
    /// How often its TTR ran out while reserved.
    pub timeouts: u64,
    /// How often it was released.
    pub releases: u64,
    /// How often it was buried.
    pub buries: u64,
    /// How often it was kicked.
    pub kicks: u64,
}

/// What `stats-tube` tells about a tube.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TubeStats {
    /// The tube's name.
    pub name: String,
    /// Ready jobs with priority below 1024.
    pub urgent: u64,
    /// Ready jobs.
    pub ready: u64,
    /// Reserved jobs.
    pub reserved: u64,
    /// Delayed jobs.
    pub delayed: u64,
    /// Buried jobs.
    pub buried: u64,
    /// Jobs put into the tube since the server started.
    pub total_jobs: u64,
    /// Connections using the tube.
    pub using: u64,
    /// Connections watching the tube.
    pub watching: u64,
    /// Connections waiting in a reserve on the tube.
    pub waiting: u64,
}

/// What ferry needs from a message broker, modelled on beanstalkd.
///
/// A connection *uses* one tube (where [`put`](Broker::put) goes, initially
/// `default`) and *watches* a set of tubes (where
/// [`reserve`](Broker::reserve) takes jobs from, initially `default`). A
/// reserved job belongs to this connection until it is deleted, released or
/// buried, or until its TTR runs out or the connection is lost; then the
/// server makes it ready again.
pub trait Broker: Send {
    /// Puts the following jobs into `tube`.
    fn use_tube(&mut self, tube: &str) -> Result<()>;

    /// Adds `tube` to the watched set; returns how many tubes are watched.
    fn watch(&mut self, tube: &str) -> Result<u32>;

    /// [`watch`](Broker::watch) a tube that only this connection reads and
    /// nobody else reserves from: a reply tube. A transport may read such a
    /// tube more cheaply (JetStream reads it from the stream without a
    /// consumer); beanstalkd watches it as any other.
    fn watch_own(&mut self, tube: &str) -> Result<u32> {
        self.watch(tube)
    }

    /// Removes `tube` from the watched set; returns how many remain. The
    /// last watched tube cannot be ignored ([`Error::NotIgnored`]).
    fn ignore(&mut self, tube: &str) -> Result<u32>;

    /// Puts a job into the used tube. `priority` 0 is most urgent; the job
    /// is ready after `delay`; once reserved it must be finished or touched
    /// within `ttr`. [`Error::AmbiguousPut`] means the job may or may not
    /// exist.
    fn put(&mut self, body: &[u8], priority: u32, delay: Duration, ttr: Duration) -> Result<JobId>;

    /// Reserves a job from the watched tubes, waiting up to `timeout`
    /// (whole seconds, rounded up; zero does not wait); `None` when none
    /// came.
    fn reserve(&mut self, timeout: Duration) -> Result<Option<Job>>;

    /// Deletes a job reserved by this connection, or a ready, delayed or
    /// buried one.
    fn delete(&mut self, id: JobId) -> Result<()>;

    /// Gives a reserved job back: ready again after `delay`, with
    /// `priority`.
    fn release(&mut self, id: JobId, priority: u32, delay: Duration) -> Result<()>;

    /// Sets a reserved job aside (buried) with `priority`, until kicked.
    fn bury(&mut self, id: JobId, priority: u32) -> Result<()>;

    /// Asks for a reserved job's full TTR again, counted from now.
    fn touch(&mut self, id: JobId) -> Result<()>;

    /// Looks at a job without reserving it; `None` when there is none.
    fn peek(&mut self, which: Peek) -> Result<Option<Job>>;

    /// Moves up to `bound` buried (else delayed) jobs of the used tube to
    /// ready; returns how many moved.
    fn kick(&mut self, bound: u32) -> Result<u32>;

    /// Moves one buried or delayed job to ready.
    fn kick_job(&mut self, id: JobId) -> Result<()>;

    /// The server's statistics of one job.
    fn stats_job(&mut self, id: JobId) -> Result<JobStats>;

    /// The server's statistics of one tube.
    fn stats_tube(&mut self, tube: &str) -> Result<TubeStats>;
}

/// A boxed broker (`Box<dyn Broker>`) is a broker too.
impl<B: Broker + ?Sized> Broker for Box<B> {
    fn use_tube(&mut self, tube: &str) -> Result<()> {
        (**self).use_tube(tube)
    }
    fn watch(&mut self, tube: &str) -> Result<u32> {
        (**self).watch(tube)
    }
    fn watch_own(&mut self, tube: &str) -> Result<u32> {
        (**self).watch_own(tube)
    }
    fn ignore(&mut self, tube: &str) -> Result<u32> {
        (**self).ignore(tube)
    }
    fn put(&mut self, body: &[u8], priority: u32, delay: Duration, ttr: Duration) -> Result<JobId> {
        (**self).put(body, priority, delay, ttr)
    }
    fn reserve(&mut self, timeout: Duration) -> Result<Option<Job>> {
        (**self).reserve(timeout)
    }
    fn delete(&mut self, id: JobId) -> Result<()> {
        (**self).delete(id)
    }
    fn release(&mut self, id: JobId, priority: u32, delay: Duration) -> Result<()> {
        (**self).release(id, priority, delay)
    }
    fn bury(&mut self, id: JobId, priority: u32) -> Result<()> {
        (**self).bury(id, priority)
    }
    fn touch(&mut self, id: JobId) -> Result<()> {
        (**self).touch(id)
    }
    fn peek(&mut self, which: Peek) -> Result<Option<Job>> {
        (**self).peek(which)
    }
    fn kick(&mut self, bound: u32) -> Result<u32> {
        (**self).kick(bound)
    }
    fn kick_job(&mut self, id: JobId) -> Result<()> {
        (**self).kick_job(id)
    }
    fn stats_job(&mut self, id: JobId) -> Result<JobStats> {
        (**self).stats_job(id)
    }
    fn stats_tube(&mut self, tube: &str) -> Result<TubeStats> {
        (**self).stats_tube(tube)
    }
}

#[doc(hidden)]
/// Entry points for the fuzz targets; not part of the API.
pub mod fuzzing {
    /// Parses one reply line (without `\r\n`) as the client would;
    /// returns whether it was accepted.
    pub fn parse_reply(line: &[u8]) -> bool {
        crate::proto::parse_reply(line).is_ok()
    }

    /// Parses a `stats-job` and a `stats-tube` body as the client would.
    pub fn parse_stats(body: &[u8]) {
        let _ = crate::proto::parse_job_stats(body);
        let _ = crate::proto::parse_tube_stats(body);
    }
}
