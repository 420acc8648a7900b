//! `ferry daemon`, the node daemon (CBSD's cbsdd): the heartbeat and the
//! self-fencing half of the split-brain guard (DESIGN §5, I2), astart, the
//! local task queue ([`Queue`]), the recovery of interrupted migrations,
//! and the router of node messages: each [`NodeRequest`] on this node's
//! tube goes to the code that answers it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_api::command::DaemonArgs;
use ferry_api::Outcome;
use ferry_broker::{Broker, BrokerUri};
use ferry_core::engine::StartOptions;
use ferry_core::inventory::Inventory;
use ferry_core::lease::{self, Lease};
use ferry_core::lock::EnvLock;
use ferry_core::registry::{EnvRow, Registry};
use ferry_core::{fence, heartbeat, EnvState, Error, Result, Workdir};

use crate::context::Context;
use crate::engines::{self, ENGINES};
use crate::rpc::{self, transport, NodeReply, NodeRequest, Reply, TubeEvent, Undecodable};
use crate::tasks::{self, queue::Queue};
use crate::{ha, migrate};

/// How often the task queue is looked at.
const TICK: Duration = Duration::from_millis(100);

pub fn run(ctx: &Context, a: DaemonArgs) -> Result<Outcome> {
    let (wd, reg) = ctx.open()?;
    // What the daemon writes to the registry (dropped rows of fenced envs,
    // finished registers, heartbeat watches) is rebuilt from shared storage
    // if a power loss undoes it: no fsync per write.
    reg.relaxed()?;
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, Arc::clone(&stop))
            .map_err(|e| Error::Failed(format!("cannot handle signal {sig}: {e}")))?;
    }
    let interval = Duration::from_secs(a.heartbeat.max(1));
    let lease_time = Duration::from_secs(a.lease_time.max(1));
    let fence_time = Duration::from_secs(fence::fence_time(
        a.heartbeat.max(1),
        a.lease_time.max(1),
        a.fence_time,
    )?);
    let mut queue = match a.tasks {
        0 => None,
        n => Some(Queue::open(&wd, n as usize)?),
    };
    tracing::info!(
        node = wd.nodename(),
        ?interval,
        ?lease_time,
        ?fence_time,
        tasks = a.tasks,
        "daemon started"
    );
    // The heartbeat and the watchdog's feed, on a thread of their own: no
    // slow work of this loop (a start, a hook) can starve them, and a
    // frozen or dead daemon stops both.
    let beats = Beats::start(&wd, interval, fence_time, &stop)?;
    // Finish what a crash left of registers and unregisters here.
    for (j, e) in ferry_core::register::settle_all(&wd, &reg, &ENGINES) {
        tracing::warn!(jname = %j, error = %e, "cannot finish an interrupted operation");
    }
    // The node tube and the task tube, each on its own thread (they wait
    // on the broker). A task received from another node wakes the queue.
    let (wake, woken) = std::sync::mpsc::channel();
    let broker = rpc::broker_uri(&wd)?;
    let servers: Vec<_> = broker
        .map(|uri| {
            let (wd2, stop2, uri2) = (wd.clone(), Arc::clone(&stop), uri.clone());
            let (wd, stop, wake) = (wd.clone(), Arc::clone(&stop), wake.clone());
            [
                std::thread::spawn(move || serve(&wd, &uri, &stop, &wake)),
                std::thread::spawn(move || tasks::remote::serve(&wd2, &uri2, &stop2, lease_time)),
            ]
        })
        .into_iter()
        .flatten()
        .collect();
    let recovery = migrate::Recovery::default();
    let mut next_beat = Instant::now();
    let mut first = true;
    // Since when this loop has run without a gap longer than fence_time
    // (a freeze): HA restarts this node's own envs only after lease_time of
    // that, when no other node can be taking them over.
    let (mut last_turn, mut steady_since) = (Instant::now(), Instant::now());
    while !stop.load(Ordering::SeqCst) {
        if last_turn.elapsed() > fence_time {
            tracing::warn!(gap = ?last_turn.elapsed(), "this daemon stood still (frozen?)");
            steady_since = Instant::now();
        }
        last_turn = Instant::now();
        if Instant::now() >= next_beat {
            if beats.failing_for() >= fence_time / 2 {
                // The storage takes no heartbeat: stop the envs politely
                // while there is time; the watchdog kills what is left at
                // fence_time.
                fence_all(&wd, &reg);
            }
            recovery.tick(&wd, lease_time);
            fence_superseded(&wd, &reg);
            watch_nodes(&wd, &reg, lease_time);
            ha::tick(&wd, &reg, lease_time, steady_since.elapsed() >= lease_time);
            if first {
                autostart(&wd, &reg);
                first = false;
            }
            next_beat = Instant::now() + interval;
        }
        if let Some(q) = queue.as_mut() {
            if let Err(e) = q.tick(!stop.load(Ordering::SeqCst)) {
                tracing::warn!(error = %e, "task queue");
            }
        }
        // (`wake` lives here, so this waits even without a broker.)
        let _ = woken.recv_timeout(TICK);
    }
    drop(wake);
    for t in servers {
        let _ = t.join();
    }
    beats.stop();
    // Running tasks are left to finish: each runner records its own result.
    let left = queue.as_ref().map_or(0, Queue::running);
    tracing::info!(running_tasks = left, "daemon stopped");
    Ok(Outcome::message(format!(
        "daemon of {} stopped",
        wd.nodename()
    )))
}

/// The heartbeat thread: a beat every `interval`, and after each beat
/// written, a feed of the watchdog (restarted if it died).
struct Beats {
    /// When the last heartbeat was written, and whether the last try failed.
    last: Arc<Mutex<(Instant, bool)>>,
    thread: std::thread::JoinHandle<()>,
}

impl Beats {
    fn start(
        wd: &Workdir,
        interval: Duration,
        fence_time: Duration,
        stop: &Arc<AtomicBool>,
    ) -> Result<Beats> {
        let exe = std::env::current_exe()
            .map_err(Error::io("cannot find the ferry binary", "/proc/self/exe"))?;
        let mut feeder = fence::Feeder::spawn(wd, &exe, fence_time.as_secs())?;
        let last = Arc::new(Mutex::new((Instant::now(), false)));
        let (wd, stop, shared) = (wd.clone(), Arc::clone(stop), Arc::clone(&last));
        let thread = std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                match heartbeat::beat(&wd) {
                    Ok(_) => {
                        *shared.lock().unwrap_or_else(|e| e.into_inner()) = (Instant::now(), false);
                        if let Err(e) = feeder.feed() {
                            tracing::error!(error = %e, "the watchdog is gone: starting it again");
                            match fence::Feeder::spawn(&wd, &exe, fence_time.as_secs()) {
                                Ok(mut f) => {
                                    let _ = f.feed();
                                    feeder = f;
                                }
                                Err(e) => tracing::error!(error = %e, "cannot start the watchdog"),
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot write the heartbeat");
                        shared.lock().unwrap_or_else(|e| e.into_inner()).1 = true;
                    }
                }
                let next = Instant::now() + interval;
                while Instant::now() < next && !stop.load(Ordering::SeqCst) {
                    std::thread::sleep(TICK);
                }
            }
            feeder.disarm();
        });
        Ok(Beats { last, thread })
    }

    /// How long the heartbeat has been failing: the time since the last
    /// one written when the latest try failed, else zero (a beat merely
    /// due is not a failure).
    fn failing_for(&self) -> Duration {
        let (at, failed) = *self.last.lock().unwrap_or_else(|e| e.into_inner());
        if failed {
            at.elapsed()
        } else {
            Duration::ZERO
        }
    }

    /// Wait for the thread (the daemon's stop flag is set): it disarms the
    /// watchdog.
    fn stop(self) {
        let _ = self.thread.join();
    }
}

/// Serve this node's tube until `stop`: every request is routed to the
/// code that answers it. Runs on its own thread; no request can stop it.
fn serve(wd: &Workdir, uri: &BrokerUri, stop: &AtomicBool, wake: &Sender<()>) {
    transport::serve_tube(uri, &rpc::node_tube(wd.nodename()), stop, |b, event| {
        let TubeEvent::Job(job) = event else { return };
        let handled = match rpc::decode_request(&job.body) {
            Ok(req) => route(wd, uri, b, &req, wake).map_err(|e| {
                format!(
                    "cannot answer {} {}: {}",
                    req.body.kind(),
                    req.id,
                    crate::error_chain(&e)
                )
            }),
            Err(Undecodable::Refused { id, reply, why }) => {
                tracing::warn!(job = %job.id, request = %id, %why, "a request this node cannot take; refused");
                let refusal = Reply::error(&id, ferry_api::exit::USAGE, why);
                transport::put_reply(b, &reply, &refusal).map_err(|e| crate::error_chain(&e))
            }
            Err(Undecodable::Unreadable(why)) => {
                tracing::warn!(job = %job.id, why, "a malformed request on the node tube; buried");
                let _ = b.bury(job.id, 1000);
                return;
            }
        };
        match handled {
            // Deleted only once handled: a crash before is redelivered.
            Ok(()) => drop(b.delete(job.id)),
            Err(e) => tracing::warn!("{e}"),
        }
    });
}

/// Answer one request: the router of node messages.
fn route(
    wd: &Workdir,
    uri: &BrokerUri,
    b: &mut impl Broker,
    req: &rpc::Request,
    wake: &Sender<()>,
) -> Result<()> {
    let mut reply = |body: Result<NodeReply>| -> Result<()> {
        let r = match body {
            Ok(body) => Reply::to(&req.id, body),
            Err(e) => {
                tracing::warn!(kind = req.body.kind(), error = %e, "request failed");
                Reply::failed(&req.id, &e)
            }
        };
        Ok(transport::put_reply(b, &req.reply, &r)?)
    };
    match &req.body {
        NodeRequest::Inventory => reply(inventory(wd)),
        NodeRequest::Task(task) => tasks::remote::receive(wd, b, req, task, wake),
        NodeRequest::Cancel => tasks::remote::cancel_received(wd, &req.id),
        NodeRequest::MigrateCheck(m) => reply(migrate::incoming::check(wd, m)),
        NodeRequest::MigratePrepare(m) => reply(migrate::incoming::prepare(wd, uri, m)),
        NodeRequest::MigrateCommit(m) => reply(migrate::incoming::commit(wd, m)),
        NodeRequest::MigrateAbort(m) => reply(migrate::incoming::abort(wd, m)),
    }
}

/// This node's inventory, as `initenv` recorded it.
fn inventory(wd: &Workdir) -> Result<NodeReply> {
    let json = Registry::open(&wd.db_dir())?
        .inventory("node")?
        .ok_or_else(|| Error::Failed("no inventory: run initenv".into()))?;
    let inv: Inventory = serde_json::from_str(&json)
        .map_err(|e| Error::Failed(format!("the inventory recorded here does not read: {e}")))?;
    Ok(NodeReply::Inventory(Box::new(inv)))
}

fn stop_env(wd: &Workdir, row: &EnvRow) -> Result<()> {
    let _lock = EnvLock::acquire(wd, &row.jname)?;
    let engine = engines::of(row.kind);
    if engine.state(wd, &row.jname)? == EnvState::Stopped {
        return Ok(());
    }
    engine.stop(wd, &row.jname)
}

/// Stop every env registered here whose lease now names another node, and
/// forget it locally: the other node owns it.
fn fence_superseded(wd: &Workdir, reg: &Registry) {
    let Ok(rows) = reg.list() else { return };
    for row in rows {
        let superseded = match lease::read(wd, &row.jname) {
            Ok(Some(Lease {
                node: Some(node), ..
            })) => node != wd.nodename(),
            _ => false,
        };
        if !superseded {
            continue;
        }
        // A VM handed over by a live migration: its bmigrate, or the
        // migration's recovery (migrate::Recovery), ends it here.
        if matches!(ferry_core::runtime::read(wd, &row.jname), Ok(Some(rt)) if rt.migration.is_some())
        {
            continue;
        }
        tracing::warn!(jname = %row.jname, "lease taken by another node: stopping (self-fencing)");
        match stop_env(wd, &row) {
            Ok(()) => {
                let _ = reg.remove(&row.jname);
            }
            Err(e) => tracing::error!(jname = %row.jname, error = %e, "self-fencing failed"),
        }
    }
}

/// Look at every other node's heartbeat: `node mode=list` judges them from
/// what the daemon saw.
fn watch_nodes(wd: &Workdir, reg: &Registry, lease_time: Duration) {
    let mut names = ferry_core::node::beating(wd);
    if let Ok(added) = reg.nodes() {
        names.extend(added.into_iter().map(|n| n.name.to_string()));
    }
    names.sort();
    names.dedup();
    for n in names.iter().filter(|n| n.as_str() != wd.nodename()) {
        if let Err(e) = ferry_core::node::observe(wd, reg, n, lease_time) {
            tracing::warn!(node = %n, error = %e, "cannot watch the heartbeat");
        }
    }
}

/// Stop every env here (the heartbeat could not be renewed for the lease time).
fn fence_all(wd: &Workdir, reg: &Registry) {
    let Ok(rows) = reg.list() else { return };
    for row in rows {
        if let Err(e) = stop_env(wd, &row) {
            tracing::error!(jname = %row.jname, error = %e, "self-fencing failed");
        }
    }
}

/// Start the `astart=1` envs this node owns.
fn autostart(wd: &Workdir, reg: &Registry) {
    let Ok(rows) = reg.list() else { return };
    for row in rows.into_iter().filter(|r| r.astart) {
        let Ok(_lock) = EnvLock::acquire(wd, &row.jname) else {
            continue;
        };
        let engine = engines::of(row.kind);
        let r = match engine.state(wd, &row.jname) {
            Ok(EnvState::Stopped) => engine.start(wd, reg, &row.jname, &StartOptions::default()),
            _ => Ok(()),
        };
        if let Err(e) = r {
            tracing::warn!(jname = %row.jname, error = %e, "astart failed");
        }
    }
}

#[cfg(test)]
mod tests;
