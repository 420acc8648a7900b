//! A [`Broker`] that survives losing the broker: it reconnects with
//! exponential backoff and restores the used tube and the watched set.
//!
//! What a lost connection means, and what this wrapper does about it:
//!
//! - **Jobs reserved on the lost connection** were released by the server
//!   (another worker may hold them now). Their ids are remembered as stale:
//!   `delete`, `release`, `bury` and `touch` of such an id fail with
//!   [`Error::StaleJob`] without sending anything, so they can never act on
//!   a job that is no longer ours. The same error ends such an operation
//!   when the loss is found while it runs (a `delete` cut off midway may
//!   have taken effect). A job reserved again on the new connection is ours
//!   again.
//! - **A put whose reply was lost** fails with [`Error::AmbiguousPut`] and is
//!   not retried: the job may exist. A put that certainly did not reach the
//!   server (the connection was found closed before sending, or the write
//!   failed) is retried once on a new connection.
//! - **Operations without effect or with an idempotent one** (`use`,
//!   `watch`, `ignore`, `reserve`, `peek`, stats) are retried once on a new
//!   connection. A job operation or kick cut off midway returns the error:
//!   whether it took effect is unknown.
//! - **Reconnecting** tries at once, then after `initial_delay`, doubling up
//!   to `max_delay`, and gives up with [`Error::GaveUp`] once
//!   `give_up_after` has passed; the next operation starts over.
//! - A **protocol violation** is not retried: a server that spoke garbage
//!   once is not trusted to do better.
//!
//! A `nats://` URI makes it a [`JetStream`] connection instead, made on
//! first use: the NATS client reconnects by itself, to any server of the
//! cluster, so every operation goes straight to it.

use std::collections::{BTreeSet, HashSet};
use std::thread::sleep;
use std::time::{Duration, Instant};

use crate::proto::check_tube;
use crate::{
    Broker, BrokerUri, ConnectOptions, Connection, Error, JetStream, JetStreamOptions, Job, JobId,
    JobStats, Peek, Result, Scheme, TubeStats,
};

/// How many stale job ids are remembered.
const MAX_STALE: usize = 4096;

/// When and how long [`Reconnecting`] tries to reconnect.
#[derive(Debug, Clone)]
pub struct ReconnectPolicy {
    /// The wait after the first failed attempt.
    pub initial_delay: Duration,
    /// The longest wait between attempts.
    pub max_delay: Duration,
    /// How long to keep trying (bs_router's `reconnect_timeout`).
    pub give_up_after: Duration,
}

impl Default for ReconnectPolicy {
    fn default() -> ReconnectPolicy {
        ReconnectPolicy {
            initial_delay: Duration::from_millis(50),
            max_delay: Duration::from_secs(2),
            give_up_after: Duration::from_secs(30),
        }
    }
}

/// A [`Connection`] that is replaced when lost; see the module docs for
/// the semantics.
#[derive(Debug)]
pub struct Reconnecting {
    uri: BrokerUri,
    opts: ConnectOptions,
    policy: ReconnectPolicy,
    conn: Option<Connection>,
    using: String,
    watched: Vec<String>,
    /// Jobs reserved on the current connection and not yet given back.
    reserved: HashSet<JobId>,
    /// Jobs reserved on a lost connection.
    stale: BTreeSet<JobId>,
    reconnects: u64,
    connected_once: bool,
    /// The connection of a `nats://` URI.
    nats: Option<JetStream>,
}

impl Reconnecting {
    /// Connects (retrying per `policy`).
    pub fn connect(
        uri: BrokerUri,
        opts: ConnectOptions,
        policy: ReconnectPolicy,
    ) -> Result<Reconnecting> {
        let mut r = Reconnecting::lazy(uri, opts, policy);
        r.reconnect()?;
        Ok(r)
    }

    /// Connects on first use.
    pub fn lazy(uri: BrokerUri, opts: ConnectOptions, policy: ReconnectPolicy) -> Reconnecting {
        Reconnecting {
            uri,
            opts,
            policy,
            conn: None,
            using: "default".to_owned(),
            watched: vec!["default".to_owned()],
            reserved: HashSet::new(),
            stale: BTreeSet::new(),
            reconnects: 0,
            connected_once: false,
            nats: None,
        }
    }

    /// The JetStream connection of a `nats://` URI (made on first use),
    /// `None` for beanstalkd.
    fn nats(&mut self) -> Result<Option<&mut JetStream>> {
        if self.uri.scheme != Scheme::Nats {
            return Ok(None);
        }
        if self.nats.is_none() {
            let opts = JetStreamOptions {
                connect_timeout: self.opts.connect_timeout,
                io_timeout: self.opts.io_timeout,
                ack_wait: self.opts.ack_wait,
                max_job_size: self.opts.max_job_size,
                ..JetStreamOptions::default()
            };
            self.nats = Some(JetStream::connect(&self.uri.servers(), opts)?);
        }
        Ok(self.nats.as_mut())
    }

    /// The broker's address.
    pub fn uri(&self) -> &BrokerUri {
        &self.uri
    }

    /// How often a lost connection was replaced.
    pub fn reconnects(&self) -> u64 {
        self.reconnects
    }

    /// The used tube, restored after a reconnect.
    pub fn using(&self) -> &str {
        &self.using
    }

    /// The watched tubes, restored after a reconnect.
    pub fn watched(&self) -> &[String] {
        &self.watched
    }

    /// Adds `tube` to the watched set restored after a reconnect.
    fn remember_watched(&mut self, tube: &str) {
        if !self.watched.iter().any(|t| t == tube) {
            self.watched.push(tube.to_owned());
        }
    }

    /// Forgets the connection; its reserved jobs become stale.
    fn lose(&mut self) {
        self.conn = None;
        self.stale.extend(self.reserved.drain());
        while self.stale.len() > MAX_STALE {
            self.stale.pop_first();
        }
    }

    fn reconnect(&mut self) -> Result<()> {
        if self.nats()?.is_some() {
            return Ok(());
        }
        let first = !self.connected_once;
        self.lose();
        let start = Instant::now();
        let mut delay = self.policy.initial_delay.max(Duration::from_millis(1));
        loop {
            let left = self.policy.give_up_after.saturating_sub(start.elapsed());
            let opts = ConnectOptions {
                connect_timeout: self
                    .opts
                    .connect_timeout
                    .min(left)
                    .max(Duration::from_millis(10)),
                ..self.opts.clone()
            };
            let last = match Connection::connect(&self.uri, opts) {
                Ok(mut c) => match self.restore(&mut c) {
                    Ok(()) => {
                        self.conn = Some(c);
                        self.connected_once = true;
                        if !first {
                            self.reconnects += 1;
                            tracing::info!(uri = %self.uri, after = ?start.elapsed(), "reconnected to the broker");
                        }
                        return Ok(());
                    }
                    Err(e) if retryable(&e) => e,
                    Err(e) => return Err(e),
                },
                Err(e) => e,
            };
            let elapsed = start.elapsed();
            if elapsed >= self.policy.give_up_after {
                return Err(Error::GaveUp {
                    after: elapsed,
                    last: Box::new(last),
                });
            }
            sleep(delay.min(self.policy.give_up_after - elapsed));
            delay = (delay * 2).min(self.policy.max_delay);
        }
    }

    /// Re-establishes the used tube and the watched set on a new connection.
    fn restore(&self, c: &mut Connection) -> Result<()> {
        if self.using != "default" {
            c.use_tube(&self.using)?;
        }
        for t in &self.watched {
            if t != "default" {
                c.watch(t)?;
            }
        }
        if !self.watched.iter().any(|t| t == "default") {
            c.ignore("default")?;
        }
        Ok(())
    }

    /// The live connection, reconnecting if there is none.
    fn conn(&mut self) -> Result<&mut Connection> {
        if self.conn.as_ref().is_none_or(Connection::is_lost) {
            self.reconnect()?;
        }
        self.conn
            .as_mut()
            .ok_or_else(|| Error::Protocol("no connection after reconnecting".into()))
    }

    /// Runs `op`; if the connection is lost (not by a protocol violation or
    /// an ambiguous put), reconnects and runs it once more.
    fn retried<T>(&mut self, mut op: impl FnMut(&mut Connection) -> Result<T>) -> Result<T> {
        match op(self.conn()?) {
            Err(e) if retryable(&e) => {
                tracing::debug!(error = %e, "broker connection lost; reconnecting");
                self.lose();
                let r = op(self.conn()?);
                self.settle(r)
            }
            r => self.settle(r),
        }
    }

    /// Runs `op` once; a lost connection is returned as is.
    fn once<T>(&mut self, op: impl FnOnce(&mut Connection) -> Result<T>) -> Result<T> {
        let r = op(self.conn()?);
        self.settle(r)
    }

    fn settle<T>(&mut self, r: Result<T>) -> Result<T> {
        if self.conn.as_ref().is_some_and(Connection::is_lost) {
            self.lose();
        }
        r
    }

    /// A job operation: refused for stale jobs; the job is no longer ours
    /// once it succeeded (if `ends` says so) or was not found.
    fn job_op(
        &mut self,
        id: JobId,
        ends: bool,
        op: impl FnOnce(&mut Connection) -> Result<()>,
    ) -> Result<()> {
        let ours = self.reserved.contains(&id);
        if !ours && self.stale.contains(&id) {
            return Err(Error::StaleJob(id));
        }
        if ours {
            // A connection the server closed while we held the job (a
            // restart) is found here, before anything is sent.
            if let Some(c) = self.conn.as_mut() {
                if c.probe().is_err() {
                    self.lose();
                    return Err(Error::StaleJob(id));
                }
            }
        }
        let r = self.once(op);
        match &r {
            Ok(()) if ends => {
                self.reserved.remove(&id);
            }
            Err(Error::NotFound(_)) => {
                self.reserved.remove(&id);
            }
            // Cut off midway: the server released the job, whatever the
            // command did.
            Err(e) if ours && e.is_connection_lost() => return Err(Error::StaleJob(id)),
            _ => {}
        }
        r
    }

    fn track_reserved(&mut self, id: JobId) {
        self.stale.remove(&id);
        if self.conn.is_some() {
            self.reserved.insert(id);
        }
    }
}

/// Whether a new connection may succeed where this error happened.
fn retryable(e: &Error) -> bool {
    matches!(
        e,
        Error::Disconnected(_) | Error::TimedOut(_) | Error::Connect { .. }
    )
}

impl Broker for Reconnecting {
    fn use_tube(&mut self, tube: &str) -> Result<()> {
        if let Some(js) = self.nats()? {
            js.use_tube(tube)?;
            tube.clone_into(&mut self.using);
            return Ok(());
        }
        check_tube(tube)?;
        self.retried(|c| c.use_tube(tube))?;
        tube.clone_into(&mut self.using);
        Ok(())
    }

    fn watch_own(&mut self, tube: &str) -> Result<u32> {
        if let Some(js) = self.nats()? {
            let n = js.watch_own(tube)?;
            self.remember_watched(tube);
            return Ok(n);
        }
        self.watch(tube)
    }

    fn watch(&mut self, tube: &str) -> Result<u32> {
        if let Some(js) = self.nats()? {
            let n = js.watch(tube)?;
            self.remember_watched(tube);
            return Ok(n);
        }
        check_tube(tube)?;
        let n = self.retried(|c| c.watch(tube))?;
        self.remember_watched(tube);
        Ok(n)
    }

    fn ignore(&mut self, tube: &str) -> Result<u32> {
        if let Some(js) = self.nats()? {
            let n = js.ignore(tube)?;
            self.watched.retain(|t| t != tube);
            return Ok(n);
        }
        check_tube(tube)?;
        let n = self.retried(|c| c.ignore(tube))?;
        self.watched.retain(|t| t != tube);
        Ok(n)
    }

    fn put(&mut self, body: &[u8], priority: u32, delay: Duration, ttr: Duration) -> Result<JobId> {
        if let Some(js) = self.nats()? {
            return js.put(body, priority, delay, ttr);
        }
        self.retried(|c| c.put(body, priority, delay, ttr))
    }

    fn reserve(&mut self, timeout: Duration) -> Result<Option<Job>> {
        if let Some(js) = self.nats()? {
            return js.reserve(timeout);
        }
        let r = self.retried(|c| c.reserve(timeout));
        match &r {
            Ok(Some(job)) => self.track_reserved(job.id),
            Err(Error::BodyTooLarge { id, .. }) => self.track_reserved(*id),
            _ => {}
        }
        r
    }

    fn delete(&mut self, id: JobId) -> Result<()> {
        if let Some(js) = self.nats()? {
            return js.delete(id);
        }
        self.job_op(id, true, |c| c.delete(id))
    }

    fn release(&mut self, id: JobId, priority: u32, delay: Duration) -> Result<()> {
        if let Some(js) = self.nats()? {
            return js.release(id, priority, delay);
        }
        self.job_op(id, true, |c| c.release(id, priority, delay))
    }

    fn bury(&mut self, id: JobId, priority: u32) -> Result<()> {
        if let Some(js) = self.nats()? {
            return js.bury(id, priority);
        }
        self.job_op(id, true, |c| c.bury(id, priority))
    }

    fn touch(&mut self, id: JobId) -> Result<()> {
        if let Some(js) = self.nats()? {
            return js.touch(id);
        }
        self.job_op(id, false, |c| c.touch(id))
    }

    fn peek(&mut self, which: Peek) -> Result<Option<Job>> {
        if let Some(js) = self.nats()? {
            return js.peek(which);
        }
        self.retried(|c| c.peek(which))
    }

    fn kick(&mut self, bound: u32) -> Result<u32> {
        if let Some(js) = self.nats()? {
            return js.kick(bound);
        }
        self.once(|c| c.kick(bound))
    }

    fn kick_job(&mut self, id: JobId) -> Result<()> {
        if let Some(js) = self.nats()? {
            return js.kick_job(id);
        }
        self.once(|c| c.kick_job(id))
    }

    fn stats_job(&mut self, id: JobId) -> Result<JobStats> {
        if let Some(js) = self.nats()? {
            return js.stats_job(id);
        }
        self.retried(|c| c.stats_job(id))
    }

    fn stats_tube(&mut self, tube: &str) -> Result<TubeStats> {
        if let Some(js) = self.nats()? {
            return js.stats_tube(tube);
        }
        self.retried(|c| c.stats_tube(tube))
    }
}
