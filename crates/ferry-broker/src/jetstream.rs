//! [`Broker`] over a NATS JetStream cluster (issue 18), beside beanstalkd.
//!
//! How beanstalkd's words map:
//!
//! - a **tube** is a subject, `ferry.tube.<tube>`, of one work-queue
//!   stream, `FERRY` (file storage, replicated on up to three servers).
//!   A tube that workers reserve from has one durable pull consumer of
//!   its own (named after the tube, filtered on its subject, replicated as
//!   the stream is): each job goes to one worker. The server removes a
//!   consumer nobody pulled from for 5 minutes; its jobs stay;
//! - an **own tube** ([`Broker::watch_own`], a reply tube with one reader)
//!   has no consumer: it is read from the stream by subject and sequence,
//!   and a read job is removed by its sequence. One stream and no consumer
//!   per reply tube, because each reply has a tube of its own and a stream
//!   or consumer each would make a Raft group each;
//! - **put** publishes with a message id (`Nats-Msg-Id`) and waits for the
//!   stream's acknowledgement; a put whose acknowledgement is lost (a
//!   server died meanwhile) is published again with the same id, which
//!   the stream's duplicate window drops, so a job is stored once. The job
//!   id is its sequence in the stream;
//! - **reserve** fetches one message from the watched tubes; **delete**
//!   acknowledges it (waiting for the server's confirmation), **release**
//!   asks for redelivery after the delay, **touch** is an in-progress
//!   acknowledgement (the consumer's `ack_wait`, the TTR of every job,
//!   starts again), **bury** moves the job's body to `ferry.buried.<tube>`
//!   (stream `FERRY_BURIED`) and terminates its delivery; a job delivered
//!   more than `max_deliveries` times is buried instead of handed out;
//! - **stats-tube** tells ready, reserved and buried jobs from the streams;
//! - what has no JetStream counterpart is refused with
//!   [`Error::Unsupported`]: a delayed put, a per-job TTR other than the
//!   consumer's, priorities (taken, ignored: a stream is first in, first
//!   out), peek, kick and stats-job, which ferry itself does not use.
//!
//! The client is async (`async-nats`); its runtime lives inside this type,
//! which blocks on each call, so the transport stays the synchronous trait
//! every caller uses. The client reconnects by itself after a server is
//! lost, to any server of the list.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream, AckKind};
use futures_util::StreamExt;

use crate::{Broker, Error, Job, JobId, JobStats, Peek, Result, TubeStats};

/// The stream of every tube's jobs.
const STREAM: &str = "FERRY";
/// The stream that holds buried jobs.
const BURIED: &str = "FERRY_BURIED";
/// How long each try to create a stream or consumer waits for its answer
/// (the meta leader's election after its server died took up to 12 s in
/// the tests here).
const ATTEMPTS: [Duration; 5] = [
    Duration::from_secs(2),
    Duration::from_secs(5),
    Duration::from_secs(10),
    Duration::from_secs(10),
    Duration::from_secs(10),
];
/// How long one read of an own tube waits for its answer before it is
/// asked again (a request lost while a server died gets none).
const READ_WAIT: Duration = Duration::from_secs(2);
/// The longest one pull request waits for a job.
const PULL_SLICE: Duration = Duration::from_secs(1);
/// The least time a JetStream request is given.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);
/// A tube's consumer that nobody pulled from for this long is removed by
/// the server (a reply tube, once read, is never pulled again); its jobs
/// stay in the stream, and the next reserve creates the consumer again.
const INACTIVE: Duration = Duration::from_secs(300);

/// How a [`JetStream`] connects and what it creates.
#[derive(Debug, Clone)]
pub struct JetStreamOptions {
    /// For the first connection to any server of the list.
    pub connect_timeout: Duration,
    /// For each request (a publish's acknowledgement, a stream's creation).
    pub io_timeout: Duration,
    /// How long a reserved job stays with its worker without a touch
    /// before it is delivered again (beanstalkd's TTR, one for all jobs).
    pub ack_wait: Duration,
    /// Copies of each stream (at most the cluster's size; 3 for a
    /// three-server cluster).
    pub replicas: usize,
    /// A job delivered more often than this (each worker that took it
    /// died or let its time run out) is a poison message: it is buried
    /// instead of handed out again.
    pub max_deliveries: i64,
    /// The largest job body handed out; a larger one is held and
    /// reported as [`Error::BodyTooLarge`] (to be buried), as over
    /// beanstalkd.
    pub max_job_size: usize,
}

impl Default for JetStreamOptions {
    fn default() -> Self {
        JetStreamOptions {
            connect_timeout: Duration::from_secs(5),
            io_timeout: Duration::from_secs(10),
            ack_wait: Duration::from_secs(60),
            replicas: 3,
            max_deliveries: 10,
            max_job_size: 65_535,
        }
    }
}

/// A job handed out and not finished yet.
struct Held {
    tube: String,
    how: HeldHow,
}

/// Where a held job came from.
enum HeldHow {
    /// Delivered by the tube's consumer: acknowledged through it.
    Delivered(Box<jetstream::Message>),
    /// Read from the stream (an own tube): removed from it by sequence.
    Read(bytes::Bytes),
}

impl Held {
    fn payload(&self) -> &bytes::Bytes {
        match &self.how {
            HeldHow::Delivered(m) => &m.payload,
            HeldHow::Read(p) => p,
        }
    }
}

/// An own tube: read from the stream, with a core subscription to its
/// subject that wakes a waiting reserve when a job arrives.
struct Own {
    /// Jobs below this sequence were read already (held or released:
    /// a release lowers it again).
    next: u64,
    wake: async_nats::Subscriber,
}

/// One connection to a JetStream cluster, with beanstalkd's semantics.
pub struct JetStream {
    rt: tokio::runtime::Runtime,
    js: jetstream::Context,
    opts: JetStreamOptions,
    used: String,
    watched: BTreeSet<String>,
    streams: HashMap<&'static str, stream::Stream>,
    consumers: HashMap<String, consumer::PullConsumer>,
    /// Tubes watched with `watch_own`.
    own: HashMap<String, Own>,
    held: HashMap<JobId, Held>,
}

impl std::fmt::Debug for JetStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JetStream")
            .field("used", &self.used)
            .field("watched", &self.watched)
            .field("held", &self.held.len())
            .finish()
    }
}

fn nats_err(what: &'static str) -> impl Fn(&dyn std::fmt::Display) -> Error {
    move |e| Error::JetStream {
        what,
        detail: e.to_string(),
    }
}

/// A tube name as a stream name and subject token: letters, digits, `-`
/// kept, every other byte `_` and two hex digits (so `.`, `/` and `_`
/// stay apart and nothing breaks a subject).
pub fn token(tube: &str) -> String {
    let mut out = String::with_capacity(tube.len());
    for b in tube.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' {
            out.push(b as char);
        } else {
            out.push_str(&format!("_{b:02X}"));
        }
    }
    out
}

fn subject(tube: &str) -> String {
    format!("ferry.tube.{}", token(tube))
}

/// Where a tube's buried jobs are kept, in stream `FERRY_BURIED`.
fn buried_subject(tube: &str) -> String {
    format!("ferry.buried.{}", token(tube))
}

impl JetStream {
    /// Connect to the cluster at `servers` (`host:port` each; the client
    /// tries them in turn and reconnects to any).
    pub fn connect(servers: &[String], opts: JetStreamOptions) -> Result<JetStream> {
        // One worker thread of its own: the client's connection task keeps
        // running (pings, flushes, reconnects) between calls.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("ferry-nats")
            .enable_all()
            .build()
            .map_err(|e| Error::Connect {
                addr: servers.join(","),
                source: e,
            })?;
        let addrs: Vec<async_nats::ServerAddr> = servers
            .iter()
            .map(|s| s.parse())
            .collect::<std::result::Result<_, _>>()
            .map_err(|e: std::io::Error| Error::Connect {
                addr: servers.join(","),
                source: e,
            })?;
        let connect = async_nats::ConnectOptions::new()
            .connection_timeout(opts.connect_timeout)
            .request_timeout(Some(opts.io_timeout.max(ADMIN_TIMEOUT)))
            .connect(addrs);
        let client = rt
            .block_on(async { tokio::time::timeout(opts.connect_timeout * 2, connect).await })
            .map_err(|_| Error::Connect {
                addr: servers.join(","),
                source: std::io::Error::new(std::io::ErrorKind::TimedOut, "no server answered"),
            })?
            .map_err(|e| Error::Connect {
                addr: servers.join(","),
                source: std::io::Error::other(e.to_string()),
            })?;
        let mut js = {
            let _in_runtime = rt.enter();
            jetstream::new(client)
        };
        // Creating a replicated stream or consumer can take seconds while
        // the cluster forms its Raft group: never less than ADMIN_TIMEOUT.
        js.set_timeout(opts.io_timeout.max(ADMIN_TIMEOUT));
        Ok(JetStream {
            rt,
            js,
            opts,
            used: "default".into(),
            watched: BTreeSet::from(["default".to_owned()]),
            streams: HashMap::new(),
            consumers: HashMap::new(),
            own: HashMap::new(),
            held: HashMap::new(),
        })
    }

    /// The stream `name` (`STREAM` or `BURIED`), created if missing.
    fn stream(&mut self, name: &'static str) -> Result<stream::Stream> {
        if let Some(s) = self.streams.get(name) {
            return Ok(s.clone());
        }
        let config = if name == STREAM {
            stream::Config {
                name: STREAM.into(),
                subjects: vec!["ferry.tube.>".into()],
                retention: stream::RetentionPolicy::WorkQueue,
                storage: stream::StorageType::File,
                num_replicas: self.opts.replicas.max(1),
                ..Default::default()
            }
        } else {
            stream::Config {
                name: BURIED.into(),
                subjects: vec!["ferry.buried.>".into()],
                storage: stream::StorageType::File,
                num_replicas: self.opts.replicas.max(1),
                ..Default::default()
            }
        };
        let js = self.js.clone();
        let s = self.admin("cannot create the stream", || {
            js.get_or_create_stream(config.clone())
        })?;
        self.streams.insert(name, s.clone());
        Ok(s)
    }

    fn consumer(&mut self, tube: &str) -> Result<consumer::PullConsumer> {
        if let Some(c) = self.consumers.get(tube) {
            return Ok(c.clone());
        }
        let s = self.stream(STREAM)?;
        // A worker buries: its stream is made before the first job, not at
        // the first bury, which comes with a reply waited for (making a
        // replicated stream takes a while). Clients, which only put and
        // read replies, never make it.
        self.stream(BURIED)?;
        let name = token(tube);
        // Replicated as its stream is (a consumer of a work queue keeps
        // which jobs are done; one copy would lose that with its server).
        let config = consumer::pull::Config {
            durable_name: Some(name.clone()),
            filter_subject: subject(tube),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: self.opts.ack_wait,
            inactive_threshold: INACTIVE,
            ..Default::default()
        };
        let c = self.admin("cannot create the tube's consumer", || {
            s.get_or_create_consumer(&name, config.clone())
        })?;
        self.consumers.insert(tube.to_owned(), c.clone());
        Ok(c)
    }

    /// The next job of `tube`, waiting up to `wait`, held.
    fn take_one(&mut self, tube: &str, wait: Duration) -> Result<Option<Job>> {
        if self.own.contains_key(tube) {
            return self.read_own(tube, wait);
        }
        let Some(m) = self.fetch_one(tube, wait)? else {
            return Ok(None);
        };
        let info = m
            .info()
            .map_err(|e| nats_err("a job without its metadata")(&e))?;
        let id = JobId(info.stream_sequence);
        let delivered = info.delivered;
        let body = m.payload.to_vec();
        self.held.insert(
            id,
            Held {
                tube: tube.to_owned(),
                how: HeldHow::Delivered(Box::new(m)),
            },
        );
        if delivered > self.opts.max_deliveries {
            tracing::warn!(job = %id, tube, delivered, "a job delivered too often is buried");
            self.bury(id, 0)?;
            return Ok(None);
        }
        self.handed(id, body)
    }

    /// A held job handed out, unless its body is too large.
    fn handed(&self, id: JobId, body: Vec<u8>) -> Result<Option<Job>> {
        if body.len() > self.opts.max_job_size {
            return Err(Error::BodyTooLarge {
                id,
                size: body.len() as u64,
                max: self.opts.max_job_size,
            });
        }
        Ok(Some(Job { id, body }))
    }

    /// The next job of own tube `tube` not held yet, read from the stream
    /// by sequence; waits up to `wait` for a put on its subject.
    fn read_own(&mut self, tube: &str, wait: Duration) -> Result<Option<Job>> {
        let s = self.stream(STREAM)?;
        let subject = subject(tube);
        let deadline = std::time::Instant::now() + wait;
        let mut pause = Duration::from_millis(2);
        loop {
            let from = self.own.get(tube).map_or(1, |o| o.next.max(1));
            let read = self.rt.block_on(async {
                tokio::time::timeout(
                    READ_WAIT,
                    s.raw_message_builder()
                        .sequence(from)
                        .next_by_subject(subject.clone())
                        .send(),
                )
                .await
            });
            match read {
                Ok(Ok(m)) => {
                    let id = JobId(m.sequence);
                    if let Some(o) = self.own.get_mut(tube) {
                        o.next = m.sequence + 1;
                    }
                    let body = m.payload.to_vec();
                    self.held.insert(
                        id,
                        Held {
                            tube: tube.to_owned(),
                            how: HeldHow::Read(m.payload),
                        },
                    );
                    return self.handed(id, body);
                }
                Ok(Err(e)) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => {}
                failed => {
                    let e = match failed {
                        Ok(Err(e)) => nats_err("cannot read the tube")(&e),
                        _ => Error::JetStream {
                            what: "cannot read the tube",
                            detail: format!("no answer in {READ_WAIT:?}"),
                        },
                    };
                    // The cluster may be electing a leader or coming back:
                    // read again while the wait lasts; the tube reads as
                    // empty until then (the caller's own timeout tells).
                    tracing::debug!(tube, error = %e, "reading again");
                    std::thread::sleep(Duration::from_millis(200));
                    if std::time::Instant::now() >= deadline {
                        return Ok(None);
                    }
                    continue;
                }
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            // Woken by a put on the subject, else read again after a pause
            // that doubles up to a second: a put made on another server
            // before it learnt of this subscription, or while this client
            // reconnected, wakes nobody.
            let rt = &self.rt;
            if let Some(o) = self.own.get_mut(tube) {
                let woken = rt
                    .block_on(async { tokio::time::timeout(left.min(pause), o.wake.next()).await });
                if woken.is_err() {
                    pause = (pause * 2).min(PULL_SLICE);
                }
            }
        }
    }

    /// Remove a job read from an own tube from the stream.
    fn remove_read(&mut self, id: JobId) -> Result<()> {
        let s = self.stream(STREAM)?;
        let io = self.opts.io_timeout;
        match self
            .rt
            .block_on(async { tokio::time::timeout(io, s.delete_message(id.0)).await })
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(nats_err("the broker did not confirm the delete")(&e)),
            Err(_) => Err(Error::JetStream {
                what: "the broker did not confirm the delete",
                detail: format!("no answer in {io:?}"),
            }),
        }
    }

    /// Publish `payload` on `subject` and wait for a stream to store it;
    /// again with the same message id until one does (its duplicate
    /// window keeps one copy), for up to three `io_timeout`s: a stream
    /// just made, or whose leader just died, answers nobody for a moment.
    /// Its sequence, or the last error.
    fn publish(&self, subject: String, payload: bytes::Bytes) -> std::result::Result<u64, String> {
        let id = uuid::Uuid::new_v4().to_string();
        let deadline = std::time::Instant::now() + self.opts.io_timeout * 3;
        let mut last = String::new();
        while std::time::Instant::now() < deadline {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", id.as_str());
            let r = self.rt.block_on(async {
                let ack = self
                    .js
                    .publish_with_headers(subject.clone(), headers, payload.clone())
                    .await?;
                ack.await.map_err(async_nats::Error::from)
            });
            match r {
                Ok(ack) => return Ok(ack.sequence),
                Err(e) => {
                    last = e.to_string();
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
        Err(last)
    }

    /// How many messages stream `name` holds on `subject`.
    fn count(&mut self, name: &'static str, subject: &str) -> Result<u64> {
        // Asked directly: a stream not made yet holds nothing, and reading
        // must not race another client making it.
        let request = serde_json::json!({ "subjects_filter": subject });
        let js = self.js.clone();
        let v: serde_json::Value = self
            .rt
            .block_on(js.request(format!("STREAM.INFO.{name}"), &request))
            .map_err(|e| nats_err("cannot read the stream's info")(&e))?;
        if v["error"]["code"] == 404 {
            return Ok(0);
        }
        if !v["error"].is_null() {
            return Err(Error::JetStream {
                what: "cannot read the stream's info",
                detail: v["error"].to_string(),
            });
        }
        Ok(v["state"]["subjects"][subject].as_u64().unwrap_or(0))
    }

    /// Run a request of JetStream's API again until it is answered, each
    /// try given longer ([`ATTEMPTS`]). Two clients creating one
    /// replicated stream at once can leave one without an answer
    /// (nats-server 2.9), and while the cluster elects a new meta leader
    /// (seconds after the old one died) no creation is answered at all.
    /// The bound is put on each try from outside, so that the handle it
    /// returns keeps the context's full timeout for its own later use (a
    /// message's acknowledgement takes its timeout from its consumer).
    fn admin<T, E, F>(&self, what: &'static str, op: impl Fn() -> F) -> Result<T>
    where
        F: std::future::Future<Output = std::result::Result<T, E>>,
        E: std::fmt::Display,
    {
        let mut last = String::new();
        for wait in ATTEMPTS {
            match self
                .rt
                .block_on(async { tokio::time::timeout(wait, op()).await })
            {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) => last = e.to_string(),
                Err(_) => last = format!("no answer in {wait:?}"),
            }
            tracing::debug!(what, error = %last, "JetStream request not answered; trying again");
            std::thread::sleep(Duration::from_millis(500));
        }
        Err(Error::JetStream { what, detail: last })
    }

    /// Fetch one message of `tube`, waiting up to `wait` (zero: only one
    /// already there).
    fn fetch_one(&mut self, tube: &str, wait: Duration) -> Result<Option<jetstream::Message>> {
        let c = self.consumer(tube)?;
        let io = self.opts.io_timeout;
        let r = self.rt.block_on(async {
            let batch = if wait.is_zero() {
                c.fetch().max_messages(1).messages().await
            } else {
                c.batch()
                    .max_messages(1)
                    .expires(wait.max(Duration::from_millis(10)))
                    .messages()
                    .await
            };
            let mut batch = batch.map_err(|e| nats_err("cannot fetch a job")(&e))?;
            // A live consumer always answers a pull: a message, or "none"
            // at once (no wait) or when the pull expires.
            match tokio::time::timeout(wait + io.min(Duration::from_secs(2)), batch.next()).await {
                Ok(Some(Ok(m))) => Ok(Some(m)),
                Ok(Some(Err(e))) => Err(nats_err("cannot fetch a job")(&e)),
                Ok(None) => Ok(None),
                Err(_) => Err(Error::JetStream {
                    what: "the tube's consumer did not answer",
                    detail: format!(
                        "no answer to a pull in {:?}",
                        wait + io.min(Duration::from_secs(2))
                    ),
                }),
            }
        });
        match r {
            Err(e) => {
                // The consumer may be gone (removed while unused) or on a
                // server that died: looked at again on the next try.
                tracing::debug!(tube, error = %e, "looking for the tube's consumer again");
                self.consumers.remove(tube);
                Ok(None)
            }
            ok => ok,
        }
    }

    fn take_held(&mut self, id: JobId) -> Result<Held> {
        self.held.remove(&id).ok_or(Error::NotFound(id))
    }
}

impl Broker for JetStream {
    fn use_tube(&mut self, tube: &str) -> Result<()> {
        crate::check_tube(tube)?;
        self.used = tube.to_owned();
        Ok(())
    }

    fn watch(&mut self, tube: &str) -> Result<u32> {
        crate::check_tube(tube)?;
        self.watched.insert(tube.to_owned());
        Ok(self.watched.len() as u32)
    }

    /// The tube is read from the stream by sequence, with no consumer:
    /// creating a consumer costs a Raft group of its own (0.3-0.8 s on a
    /// three-server cluster here), too much for one reply.
    fn watch_own(&mut self, tube: &str) -> Result<u32> {
        crate::check_tube(tube)?;
        if !self.own.contains_key(tube) {
            let client = self.js.client();
            let wake = self
                .rt
                .block_on(async {
                    let wake = client.subscribe(subject(tube)).await?;
                    // The subscription is at the server before the first read.
                    client.flush().await?;
                    Ok::<_, async_nats::Error>(wake)
                })
                .map_err(|e| nats_err("cannot subscribe to the tube")(&e))?;
            self.own.insert(tube.to_owned(), Own { next: 0, wake });
        }
        self.watch(tube)
    }

    fn ignore(&mut self, tube: &str) -> Result<u32> {
        if self.watched.len() == 1 && self.watched.contains(tube) {
            return Err(Error::NotIgnored);
        }
        self.watched.remove(tube);
        if let Some(mut own) = self.own.remove(tube) {
            let _ = self.rt.block_on(own.wake.unsubscribe());
        }
        Ok(self.watched.len() as u32)
    }

    fn put(
        &mut self,
        body: &[u8],
        _priority: u32,
        delay: Duration,
        ttr: Duration,
    ) -> Result<JobId> {
        if !delay.is_zero() {
            return Err(Error::Unsupported(
                "a delayed put (JetStream 2.9 has no delayed message)",
            ));
        }
        let _ = ttr; // one TTR for all: the consumer's ack_wait
        let tube = self.used.clone();
        self.stream(STREAM)?;
        let payload = bytes::Bytes::copy_from_slice(body);
        self.publish(subject(&tube), payload)
            .map(JobId)
            .map_err(|last| {
                Error::AmbiguousPut(Box::new(Error::JetStream {
                    what: "no acknowledgement of the put",
                    detail: last,
                }))
            })
    }

    fn reserve(&mut self, timeout: Duration) -> Result<Option<Job>> {
        let tubes: Vec<String> = self.watched.iter().cloned().collect();
        let deadline = std::time::Instant::now() + timeout;
        loop {
            // One tube waits (a second at a time: a pull request lost with
            // a server that died must not hold the wait); several take
            // turns.
            let slice = if tubes.len() == 1 {
                deadline
                    .saturating_duration_since(std::time::Instant::now())
                    .min(PULL_SLICE)
            } else {
                Duration::ZERO
            };
            for tube in &tubes {
                if let Some(job) = self.take_one(tube, slice)? {
                    return Ok(Some(job));
                }
            }
            if std::time::Instant::now() >= deadline {
                return Ok(None);
            }
            if tubes.len() > 1 {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    fn delete(&mut self, id: JobId) -> Result<()> {
        let h = self.take_held(id)?;
        match h.how {
            HeldHow::Delivered(m) => self
                .rt
                .block_on(m.double_ack())
                .map_err(|e| nats_err("the broker did not confirm the delete")(&e)),
            HeldHow::Read(_) => self.remove_read(id),
        }
    }

    fn release(&mut self, id: JobId, _priority: u32, delay: Duration) -> Result<()> {
        let h = self.take_held(id)?;
        match h.how {
            HeldHow::Delivered(m) => {
                let delay = (!delay.is_zero()).then_some(delay);
                self.rt
                    .block_on(m.ack_with(AckKind::Nak(delay)))
                    .map_err(|e| nats_err("cannot release the job")(&e))
            }
            HeldHow::Read(_) => {
                // Read again from here on.
                if let Some(o) = self.own.get_mut(&h.tube) {
                    o.next = o.next.min(id.0);
                }
                Ok(())
            }
        }
    }

    fn bury(&mut self, id: JobId, _priority: u32) -> Result<()> {
        let h = self.take_held(id)?;
        self.stream(BURIED)?;
        let payload = h.payload().clone();
        self.publish(buried_subject(&h.tube), payload)
            .map_err(|detail| Error::JetStream {
                what: "cannot bury the job",
                detail,
            })?;
        match h.how {
            HeldHow::Delivered(m) => self
                .rt
                .block_on(m.double_ack_with(AckKind::Term))
                .map_err(|e| nats_err("cannot bury the job")(&e)),
            HeldHow::Read(_) => self.remove_read(id),
        }
    }

    fn touch(&mut self, id: JobId) -> Result<()> {
        let h = self.held.get(&id).ok_or(Error::NotFound(id))?;
        match &h.how {
            HeldHow::Delivered(m) => self
                .rt
                .block_on(m.ack_with(AckKind::Progress))
                .map_err(|e| nats_err("cannot touch the job")(&e)),
            // Nobody else reads an own tube: no time runs out.
            HeldHow::Read(_) => Ok(()),
        }
    }

    fn peek(&mut self, _which: Peek) -> Result<Option<Job>> {
        Err(Error::Unsupported(
            "peek (read the stream with the nats tool)",
        ))
    }

    fn kick(&mut self, _bound: u32) -> Result<u32> {
        Err(Error::Unsupported(
            "kick (buried jobs are in stream FERRY_BURIED)",
        ))
    }

    fn kick_job(&mut self, _id: JobId) -> Result<()> {
        Err(Error::Unsupported(
            "kick-job (buried jobs are in stream FERRY_BURIED)",
        ))
    }

    fn stats_job(&mut self, _id: JobId) -> Result<JobStats> {
        Err(Error::Unsupported("stats-job (see the consumer's info)"))
    }

    /// What the streams know: jobs waiting or held (the tube's messages
    /// in `FERRY`), held ones (its consumer's unacknowledged deliveries)
    /// and buried ones (its messages in `FERRY_BURIED`). JetStream keeps no
    /// priorities, delays, totals or per-connection counts: those are 0.
    fn stats_tube(&mut self, tube: &str) -> Result<TubeStats> {
        crate::check_tube(tube)?;
        let queued = self.count(STREAM, &subject(tube))?;
        let buried = self.count(BURIED, &buried_subject(tube))?;
        let s = self.stream(STREAM)?;
        let name = token(tube);
        let info = self.rt.block_on(s.consumer_info(&name));
        let reserved = match info {
            Ok(i) => i.num_ack_pending as u64,
            Err(e)
                if e.kind() == async_nats::jetstream::context::ConsumerInfoErrorKind::NotFound =>
            {
                0
            }
            Err(e) => return Err(nats_err("cannot read the tube's consumer")(&e)),
        };
        Ok(TubeStats {
            name: tube.to_owned(),
            ready: queued.saturating_sub(reserved),
            reserved,
            buried,
            ..TubeStats::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tube_names_become_tokens_nothing_can_confuse() {
        assert_eq!(token("cbsd_pool1"), "cbsd_5Fpool1");
        assert_eq!(token("ferry.node.n1"), "ferry_2Enode_2En1");
        assert_eq!(token("a/b"), "a_2Fb");
        assert_ne!(token("a.b"), token("a_b"));
        assert_eq!(subject("x.y"), "ferry.tube.x_2Ey");
    }
}
