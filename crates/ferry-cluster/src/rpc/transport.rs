//! How node messages travel: over the broker (beanstalkd) that
//! `etc/broker.conf` of the workdir names (`uri=host:port`, written by
//! `initenv broker=`). Without one, the node works alone. An [`Asker`]
//! puts requests on another node's tube and waits for the replies on a
//! reply tube of its own; [`serve_tube`] serves one tube through broker
//! outages.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ferry_broker::{Broker, BrokerUri, ConnectOptions, Job, ReconnectPolicy, Reconnecting};
use ferry_core::{Error, ErrorKind, Jname, Workdir};

use super::{decode_reply, NodeReply, NodeRequest, Reply, Request, VERSION};

/// What went wrong between nodes.
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    #[error("no broker configured for this node ({}); run `ferry initenv broker=HOST:PORT`", .0.display())]
    NoBroker(PathBuf),
    #[error("invalid broker uri {uri:?}")]
    BadUri {
        uri: String,
        #[source]
        source: ferry_broker::Error,
    },
    #[error("{what}")]
    Broker {
        what: &'static str,
        #[source]
        source: ferry_broker::Error,
    },
    #[error("node {node} did not answer within {secs}s: is its daemon running, with this broker ({uri})?")]
    NoAnswer {
        node: String,
        secs: u64,
        uri: String,
    },
    #[error("node {node}: {message}")]
    Refused {
        node: String,
        code: i32,
        message: String,
    },
    #[error("node {node} answered {got} to {asked}")]
    Unexpected {
        node: String,
        asked: &'static str,
        got: String,
    },
    #[error("a malformed message")]
    Malformed(#[source] serde_json::Error),
    #[error("a message of protocol version {0}, this node speaks {VERSION}")]
    Version(u32),
    #[error("cannot encode a message")]
    Encode(#[source] serde_json::Error),
}

impl RpcError {
    /// How a caller should report it: a refusal there keeps its kind.
    pub fn kind(&self) -> ErrorKind {
        match self {
            RpcError::NoBroker(_) => ErrorKind::Refused,
            RpcError::BadUri { .. } | RpcError::Malformed(_) | RpcError::Version(_) => {
                ErrorKind::BadInput
            }
            RpcError::Refused { code, .. } => super::kind_of_code(*code),
            RpcError::Broker { .. }
            | RpcError::NoAnswer { .. }
            | RpcError::Unexpected { .. }
            | RpcError::Encode(_) => ErrorKind::Failed,
        }
    }

    pub(crate) fn broker(what: &'static str) -> impl Fn(ferry_broker::Error) -> RpcError {
        move |source| RpcError::Broker { what, source }
    }
}

impl From<RpcError> for Error {
    fn from(e: RpcError) -> Error {
        Error::classified(e.kind(), e)
    }
}

pub type Result<T, E = RpcError> = std::result::Result<T, E>;

/// The broker this node uses, if it has one (`etc/broker.conf`).
pub fn broker_uri(wd: &Workdir) -> ferry_core::Result<Option<BrokerUri>> {
    let Some(uri) = wd.setting("broker.conf", "uri")? else {
        return Ok(None);
    };
    uri.parse()
        .map(Some)
        .map_err(|source| RpcError::BadUri { uri, source }.into())
}

/// The broker this node uses; without one, a refusal that says how to set it.
pub fn required_uri(wd: &Workdir) -> ferry_core::Result<BrokerUri> {
    broker_uri(wd)?.ok_or_else(|| RpcError::NoBroker(wd.root().join("etc/broker.conf")).into())
}

/// Record the broker this node uses (`initenv broker=`).
pub fn set_broker(wd: &Workdir, uri: &str) -> ferry_core::Result<()> {
    let parsed: BrokerUri = uri.parse().map_err(|source| RpcError::BadUri {
        uri: uri.to_owned(),
        source,
    })?;
    wd.set_setting(
        "broker.conf",
        "uri",
        &parsed.to_string(),
        "the broker of this node (ferry initenv broker=)",
    )
}

/// The tube a node daemon watches.
pub fn node_tube(node: &str) -> String {
    format!("ferry.node.{node}")
}

/// The tube a node's task results arrive on.
pub fn tasks_tube(node: &str) -> String {
    format!("ferry.tasks.{node}")
}

/// A connection that reconnects (giving up after `give_up_after`).
pub(crate) fn connect(uri: &BrokerUri, give_up_after: Duration) -> Result<Reconnecting> {
    let policy = ReconnectPolicy {
        give_up_after,
        ..ReconnectPolicy::default()
    };
    Reconnecting::connect(uri.clone(), ConnectOptions::default(), policy)
        .map_err(RpcError::broker("cannot reach the broker"))
}

/// Put `request` on `node`'s tube (a fresh connection's worth of use).
pub(crate) fn put_request(
    b: &mut impl Broker,
    node: &str,
    request: &Request,
    priority: u32,
) -> Result<()> {
    let body = serde_json::to_vec(request).map_err(RpcError::Encode)?;
    b.use_tube(&node_tube(node))
        .map_err(RpcError::broker("broker"))?;
    b.put(&body, priority, Duration::ZERO, Duration::from_secs(30))
        .map_err(RpcError::broker("cannot send the request"))?;
    Ok(())
}

/// Put `reply` on `tube`.
pub(crate) fn put_reply(b: &mut impl Broker, tube: &str, reply: &Reply) -> Result<()> {
    let body = serde_json::to_vec(reply).map_err(RpcError::Encode)?;
    b.use_tube(tube).map_err(RpcError::broker("broker"))?;
    b.put(&body, 100, Duration::ZERO, Duration::from_secs(30))
        .map_err(RpcError::broker("cannot put the reply"))?;
    Ok(())
}

/// One connection to ask one node several things, each answered on this
/// asker's own reply tube. A live migration keeps one from its prepare to
/// its commit, so that the commit, in the guest's downtime, costs one put
/// and one reserve.
pub struct Asker {
    b: Reconnecting,
    node: Jname,
    from: String,
    reply: String,
}

impl std::fmt::Debug for Asker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Asker")
            .field("node", &self.node)
            .field("reply", &self.reply)
            .finish()
    }
}

impl Asker {
    /// Connect (giving up after `timeout`), watch a fresh reply tube and
    /// use `node`'s tube.
    pub fn open(wd: &Workdir, node: &Jname, timeout: Duration) -> ferry_core::Result<Asker> {
        let uri = required_uri(wd)?;
        let mut b = connect(&uri, timeout)?;
        let reply = format!("ferry.reply.{}.{}", wd.nodename(), uuid::Uuid::new_v4());
        let setup = |b: &mut Reconnecting| -> Result<()> {
            b.watch_own(&reply).map_err(RpcError::broker("broker"))?;
            b.ignore("default").map_err(RpcError::broker("broker"))?;
            b.use_tube(&node_tube(node.as_str()))
                .map_err(RpcError::broker("broker"))
        };
        setup(&mut b)?;
        Ok(Asker {
            b,
            node: node.clone(),
            from: wd.nodename().to_owned(),
            reply,
        })
    }

    /// Open an asker and ask one thing.
    pub fn ask_once(
        wd: &Workdir,
        node: &Jname,
        body: NodeRequest,
        timeout: Duration,
    ) -> ferry_core::Result<NodeReply> {
        Ok(Asker::open(wd, node, timeout)?.ask(body, timeout)?)
    }

    /// Send a request and wait up to `timeout` for its reply (replies to
    /// earlier requests that came too late are dropped). A refusal there
    /// is an error, [`RpcError::Refused`].
    pub fn ask(&mut self, body: NodeRequest, timeout: Duration) -> Result<NodeReply> {
        let id = uuid::Uuid::new_v4().to_string();
        let req = Request {
            v: VERSION,
            id: id.clone(),
            from: self.from.clone(),
            reply: self.reply.clone(),
            body,
        };
        let body = serde_json::to_vec(&req).map_err(RpcError::Encode)?;
        self.b
            .put(
                &body,
                100,
                Duration::ZERO,
                timeout.max(Duration::from_secs(1)),
            )
            .map_err(RpcError::broker("cannot send the request"))?;
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(RpcError::NoAnswer {
                    node: self.node.to_string(),
                    secs: timeout.as_secs(),
                    uri: self.b.uri().to_string(),
                });
            }
            let Some(job) = self.b.reserve(left).map_err(RpcError::broker("broker"))? else {
                continue;
            };
            let _ = self.b.delete(job.id);
            match decode_reply(&job.body) {
                Ok(r) if r.id == id => return r.body.into_result(self.node.as_str()),
                _ => tracing::warn!(job = %job.id, "a reply that is not ours; dropped"),
            }
        }
    }
}

/// What [`serve_tube`] hands its handler.
#[derive(Debug)]
pub enum TubeEvent {
    /// About to wait (up to a second) for the next job.
    Tick,
    Job(Job),
}

/// Serve `tube` until `stop`, on a connection of its own: broker outages
/// are waited out (reconnecting with backoff, watching the tube again),
/// and `on` sees every job, and a [`TubeEvent::Tick`] before each wait.
pub fn serve_tube(
    uri: &BrokerUri,
    tube: &str,
    stop: &AtomicBool,
    mut on: impl FnMut(&mut Reconnecting, TubeEvent),
) {
    let mut b = Reconnecting::lazy(
        uri.clone(),
        ConnectOptions::default(),
        ReconnectPolicy {
            give_up_after: Duration::from_secs(5),
            ..ReconnectPolicy::default()
        },
    );
    let mut ready = false;
    while !stop.load(Ordering::SeqCst) {
        if !ready {
            ready = b.watch(tube).is_ok() && b.ignore("default").is_ok();
            if !ready {
                tracing::warn!(broker = %uri, tube, "cannot watch the tube; retrying");
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
        }
        on(&mut b, TubeEvent::Tick);
        match b.reserve(Duration::from_secs(1)) {
            Ok(Some(job)) => on(&mut b, TubeEvent::Job(job)),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, tube, "broker");
                if e.is_connection_lost() {
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
    }
}
