//! Node-to-node work over the broker (DESIGN §8): every node daemon
//! watches its own node tube, `ferry.node.<node>`; a request names the tube
//! its answer goes to. Requests and answers are small JSON objects; a
//! request that cannot be read is buried, never run, and the daemon goes
//! on.
//!
//! The broker a node uses is in `etc/broker.conf` of its workdir
//! (`uri=host:port`, written by `initenv broker=`). Without one, the node
//! works alone (the embedded default).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::time::{Duration, Instant};

use ferry_api::Outcome;
use ferry_broker::{Broker, BrokerUri, ConnectOptions, Job, ReconnectPolicy, Reconnecting};
use ferry_core::registry::Registry;
use ferry_core::{Error, Jname, Result, Workdir};
use serde::{Deserialize, Serialize};

use crate::Context;

/// A request on a node tube.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    /// What is asked: `inventory`; `task` (run [`Request::task`] here and
    /// answer with its result); `cancel` (cancel the task of request `id`).
    pub kind: String,
    /// Unique per request; the answer carries it back.
    pub id: String,
    /// The asking node.
    pub from: String,
    /// The tube the answer goes to.
    pub reply: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<TaskRequest>,
    /// What a `migrate-*` request is about (see `migrate.rs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migrate: Option<crate::migrate::MigrateRequest>,
}

/// The task a `task` request carries: ferry command words, checked by
/// the receiving node with the same parser as the command line.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskRequest {
    pub words: Vec<String>,
    #[serde(default)]
    pub retry: bool,
}

/// How a task sent to another node ended there.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskResult {
    /// The task's id on the node that ran it.
    pub task: u64,
    /// `done`, `failed`, `cancelled` or `interrupted`.
    pub state: String,
    pub exit_code: Option<i32>,
    pub reason: Option<String>,
    /// The end of the task's log there.
    #[serde(default)]
    pub output: String,
}

/// The answer to a [`Request`].
#[derive(Debug, Serialize, Deserialize)]
pub struct Answer {
    pub id: String,
    /// 0 on success, else one of ferry's exit codes.
    pub code: i32,
    pub message: String,
    #[serde(default)]
    pub inventory: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<TaskResult>,
    /// What a `migrate-*` request found or did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migrate: Option<crate::migrate::MigrateAnswer>,
}

impl Answer {
    /// A successful answer to request `id`, to be filled in.
    pub fn to(id: &str) -> Answer {
        Answer {
            id: id.to_owned(),
            code: 0,
            message: String::new(),
            inventory: None,
            task: None,
            migrate: None,
        }
    }

    /// A failed answer to request `id`.
    pub fn error(id: &str, e: &Error) -> Answer {
        Answer {
            code: ferry_api::exit::for_kind(e.kind()),
            message: crate::error_chain(e),
            ..Answer::to(id)
        }
    }
}

/// Largest request a node tube accepts.
const MAX_REQUEST: usize = 64 * 1024;

/// The broker this node uses, if it has one (`etc/broker.conf`).
pub fn broker_uri(wd: &Workdir) -> Result<Option<BrokerUri>> {
    let Some(uri) = wd.setting("broker.conf", "uri")? else {
        return Ok(None);
    };
    uri.parse()
        .map(Some)
        .map_err(|e: ferry_broker::Error| Error::bad_value("broker uri", &uri, e.to_string()))
}

/// Record the broker this node uses (`initenv broker=`).
pub fn set_broker(wd: &Workdir, uri: &str) -> Result<()> {
    let parsed: BrokerUri = uri
        .parse()
        .map_err(|e: ferry_broker::Error| Error::bad_value("broker", uri, e.to_string()))?;
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

pub(crate) fn broker_err(what: &str) -> impl Fn(ferry_broker::Error) -> Error + '_ {
    move |e| Error::Failed(format!("{what}: {e}"))
}

pub(crate) fn connect(uri: &BrokerUri, give_up_after: Duration) -> Result<Reconnecting> {
    let policy = ReconnectPolicy {
        give_up_after,
        ..ReconnectPolicy::default()
    };
    Reconnecting::connect(uri.clone(), ConnectOptions::default(), policy)
        .map_err(broker_err("cannot reach the broker"))
}

pub(crate) fn required_uri(wd: &Workdir) -> Result<BrokerUri> {
    broker_uri(wd)?.ok_or_else(|| {
        Error::Refused(format!(
            "no broker configured for this node ({}); run `ferry initenv broker=HOST:PORT`",
            wd.root().join("etc/broker.conf").display()
        ))
    })
}

/// Ask `node` for something over its node tube and wait for its answer.
fn ask(wd: &Workdir, node: &Jname, kind: &str, timeout: Duration) -> Result<Answer> {
    ask_with(wd, node, kind, None, timeout)
}

/// [`ask`], with what a `migrate-*` request is about.
pub(crate) fn ask_with(
    wd: &Workdir,
    node: &Jname,
    kind: &str,
    migrate: Option<crate::migrate::MigrateRequest>,
    timeout: Duration,
) -> Result<Answer> {
    Asker::open(wd, node, timeout)?.ask(kind, migrate, timeout)
}

/// One connection to ask one node several things, each answered on this
/// asker's own reply tube. A live migration keeps one from its prepare to
/// its commit, so that the commit, in the guest's downtime, costs one put
/// and one reserve.
pub(crate) struct Asker {
    b: Reconnecting,
    node: Jname,
    from: String,
    reply: String,
}

impl Asker {
    /// Connect (giving up after `timeout`), watch a fresh reply tube and
    /// use `node`'s tube.
    pub(crate) fn open(wd: &Workdir, node: &Jname, timeout: Duration) -> Result<Asker> {
        let uri = required_uri(wd)?;
        let mut b = connect(&uri, timeout)?;
        let reply = format!("ferry.reply.{}.{}", wd.nodename(), uuid::Uuid::new_v4());
        b.watch(&reply).map_err(broker_err("broker"))?;
        b.ignore("default").map_err(broker_err("broker"))?;
        b.use_tube(&node_tube(node.as_str()))
            .map_err(broker_err("broker"))?;
        Ok(Asker {
            b,
            node: node.clone(),
            from: wd.nodename().to_owned(),
            reply,
        })
    }

    /// Send a request and wait up to `timeout` for its answer (answers to
    /// earlier requests that came too late are dropped).
    pub(crate) fn ask(
        &mut self,
        kind: &str,
        migrate: Option<crate::migrate::MigrateRequest>,
        timeout: Duration,
    ) -> Result<Answer> {
        let id = uuid::Uuid::new_v4().to_string();
        let req = Request {
            kind: kind.to_owned(),
            id: id.clone(),
            from: self.from.clone(),
            reply: self.reply.clone(),
            task: None,
            migrate,
        };
        let body = serde_json::to_vec(&req).map_err(|e| Error::Failed(e.to_string()))?;
        self.b
            .put(
                &body,
                100,
                Duration::ZERO,
                timeout.max(Duration::from_secs(1)),
            )
            .map_err(broker_err("cannot send the request"))?;
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::Failed(format!(
                    "node {} did not answer within {}s: is its daemon running, with this broker ({})?",
                    self.node,
                    timeout.as_secs(),
                    self.b.uri()
                )));
            }
            let Some(job) = self.b.reserve(left).map_err(broker_err("broker"))? else {
                continue;
            };
            let _ = self.b.delete(job.id);
            match serde_json::from_slice::<Answer>(&job.body) {
                Ok(a) if a.id == id => return Ok(a),
                _ => tracing::warn!(job = %job.id, "an answer that is not ours; dropped"),
            }
        }
    }
}

/// `node mode=add`: fetch the node's inventory over the broker and keep it.
pub fn add_node(ctx: &Context, node: &Jname, timeout: Duration) -> Result<Outcome> {
    let (wd, reg) = ctx.open()?;
    if node.as_str() == wd.nodename() {
        return Err(Error::Refused(format!("{node} is this node")));
    }
    let a = ask(&wd, node, "inventory", timeout)?;
    let inv = match (a.code, a.inventory) {
        (0, Some(inv)) => inv,
        (_, _) => return Err(Error::Failed(format!("node {node} refused: {}", a.message))),
    };
    if inv.get("nodename").and_then(|n| n.as_str()) != Some(node.as_str()) {
        return Err(Error::Failed(format!(
            "the daemon on {node}'s tube says it is {}",
            inv.get("nodename").unwrap_or(&serde_json::Value::Null)
        )));
    }
    reg.add_node(node, &inv.to_string())?;
    Ok(Outcome::message(format!("node {node} added")))
}

/// What [`serve_tube`] hands its handler.
pub(crate) enum TubeEvent {
    /// About to wait (up to a second) for the next job.
    Tick,
    Job(Job),
}

/// Serve `tube` until `stop`, on a connection of its own: broker outages
/// are waited out (reconnecting with backoff, watching the tube again),
/// and `on` sees every job, and a [`TubeEvent::Tick`] before each wait.
pub(crate) fn serve_tube(
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

/// The daemon's side: serve this node's tube until `stop`. Runs on its
/// own thread; no request can stop it.
pub fn serve(wd: &Workdir, uri: &BrokerUri, stop: &AtomicBool, wake: &Sender<()>) {
    serve_tube(uri, &node_tube(wd.nodename()), stop, |b, event| {
        let TubeEvent::Job(job) = event else { return };
        match parse_request(&job.body) {
            Ok(req) => {
                let handled = match req.kind.as_str() {
                    "task" => crate::remote::receive(wd, b, &req, wake),
                    "cancel" => crate::remote::cancel_received(wd, &req),
                    k if k.starts_with("migrate-") => {
                        put_answer(b, &req.reply, &crate::migrate::answer(wd, uri, &req))
                    }
                    _ => put_answer(b, &req.reply, &answer(wd, &req)),
                };
                match handled {
                    // Deleted only once handled: a crash before is redelivered.
                    Ok(()) => drop(b.delete(job.id)),
                    Err(e) => tracing::warn!(error = %e, "cannot answer {}", req.id),
                }
            }
            Err(why) => {
                tracing::warn!(job = %job.id, why, "a malformed request on the node tube; buried");
                let _ = b.bury(job.id, 1000);
            }
        }
    });
}

/// Read a request, refusing anything that is not exactly one.
pub fn parse_request(body: &[u8]) -> std::result::Result<Request, String> {
    if body.len() > MAX_REQUEST {
        return Err(format!("{} bytes, more than {MAX_REQUEST}", body.len()));
    }
    let req: Request = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    ferry_broker::check_tube(&req.reply).map_err(|e| format!("reply tube: {e}"))?;
    if req.kind.starts_with("migrate-") != req.migrate.is_some() {
        return Err(format!(
            "a request of kind {:?} {} a migration",
            req.kind,
            if req.migrate.is_some() {
                "names"
            } else {
                "lacks"
            }
        ));
    }
    if (req.kind == "task") != req.task.is_some() {
        return Err(format!(
            "a request of kind {:?} {} a task",
            req.kind,
            if req.task.is_some() {
                "carries"
            } else {
                "lacks"
            }
        ));
    }
    Ok(req)
}

/// Put `answer` on `tube`.
pub(crate) fn put_answer(
    b: &mut impl Broker,
    tube: &str,
    answer: &Answer,
) -> std::result::Result<(), String> {
    let body = serde_json::to_vec(answer).map_err(|e| e.to_string())?;
    b.use_tube(tube).map_err(|e| e.to_string())?;
    b.put(&body, 100, Duration::ZERO, Duration::from_secs(30))
        .map_err(|e| e.to_string())?;
    Ok(())
}

fn answer(wd: &Workdir, req: &Request) -> Answer {
    let mut a = Answer::to(&req.id);
    match req.kind.as_str() {
        "inventory" => {
            let inv = Registry::open(&wd.db_dir())
                .and_then(|r| r.inventory("node"))
                .ok()
                .flatten()
                .and_then(|j| serde_json::from_str(&j).ok());
            match inv {
                Some(inv) => a.inventory = Some(inv),
                None => {
                    a.code = ferry_api::exit::FAILED;
                    a.message = "no inventory: run initenv".into();
                }
            }
        }
        other => {
            a.code = ferry_api::exit::USAGE;
            a.message = format!("unknown request {other:?}");
        }
    }
    a
}
