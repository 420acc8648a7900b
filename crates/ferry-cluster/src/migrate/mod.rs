//! `jmigrate`: a jail moved cold to another node, with zero data copy.
//!
//! 1. Prechecks, all reported at once: the jail is registered and owned
//!    here; the node is another one, added here, and alive; a broker is
//!    configured.
//! 2. Here: `jstop` (if it runs), `junregister` (the definition moves to
//!    `jails-rcconf/`, the lease is released).
//! 3. There, as tasks sent over the broker (tasks.md): `jregister`, then
//!    `jstart` if it ran here. Their results come back to this node's
//!    daemon, which must run.
//! 4. If the other node could not register it, or gave no answer within
//!    `timeout`, it is registered here again (and started if it ran). The
//!    lease decides every race: if the other node took it meanwhile, it
//!    stays there and this says so. If it registered there but did not
//!    start, it is unregistered there and comes back here.
//!
//! A crash of this command at any point leaves the jail registered on one
//! node or unregistered in `jails-rcconf/` (from where `jregister`, on
//! either node, takes it): never lost, never running twice.

use std::time::{Duration, Instant};

use ferry_api::args::Given;
use ferry_api::command::{
    BregisterArgs, BstartArgs, BstopArgs, BunregisterArgs, JmigrateArgs, JregisterArgs, JstartArgs,
    JstopArgs, JunregisterArgs,
};
use ferry_api::{Command, Outcome};
use ferry_core::engine::StartOptions;
use ferry_core::lock::EnvLock;
use ferry_core::node::{self, Liveness};
use ferry_core::register::{self, Takeover};
use ferry_core::registry::Registry;
use ferry_core::task::{Autoflush, NewTask, TaskRow, TaskState, TaskStore};
use ferry_core::{lease, EnvKind, EnvState, Jname, NameSelector, Result, Workdir};

use crate::context::{error_chain, Context};
use crate::engines::{self, ENGINES};
use crate::{rpc, tasks};

mod error;
pub mod incoming;
mod live;
mod recovery;

pub use error::MoveError;

pub use live::bmigrate;
pub use recovery::Recovery;

/// The longest the destination watches a moved guest (`verify_ms=`).
pub(crate) const MAX_VERIFY_MS: u64 = 60_000;

/// The lease time a registration here or there waits for (`jregister`'s
/// default).
const LEASE_TIME: Duration = Duration::from_secs(30);

pub fn jmigrate(ctx: &Context, a: &JmigrateArgs) -> Result<Outcome> {
    cold_move(
        ctx,
        EnvKind::Jail,
        &a.jname,
        &a.node,
        Duration::from_secs(a.timeout.max(1)),
        Duration::from_secs(a.lease_time.max(1)),
    )
}

/// Move env `j` of `kind` cold to `node` (`jmigrate`; a stopped VM moved
/// by an evacuation): the steps at the head of this module.
pub(crate) fn cold_move(
    ctx: &Context,
    kind: EnvKind,
    j: &Jname,
    node: &Jname,
    timeout: Duration,
    lease_time: Duration,
) -> Result<Outcome> {
    let (wd, reg) = ctx.open()?;
    let verb = match kind {
        EnvKind::Jail => "jmigrate",
        EnvKind::Vm => "move",
    };
    let mut problems = target_problems(&wd, &reg, node, lease_time)?;
    match reg.get(j)? {
        None => problems.push(format!("{j} is not registered here")),
        Some(row) if row.kind != kind => problems.push(format!(
            "{j} is a {}: use {}",
            row.kind.as_str(),
            if row.kind == EnvKind::Vm {
                "bmigrate"
            } else {
                "jmigrate"
            }
        )),
        Some(_) => {
            if let Err(e) = lease::held(&wd, j) {
                problems.push(error_chain(&e));
            }
        }
    }
    if !problems.is_empty() {
        return Err(MoveError::Refused {
            verb,
            jname: j.clone(),
            node: node.clone(),
            problems,
        }
        .into());
    }

    let t0 = Instant::now();
    let here = |step: Here| step.run(&wd, &reg, kind, j);
    let was_running = ferry_core::engine::state(&wd, j)? != EnvState::Stopped;
    if was_running {
        here(Here::Stop)?;
    }
    if let Err(e) = here(Here::Unregister) {
        if was_running {
            let _ = here(Here::Start);
        }
        return Err(e);
    }
    let deadline = Instant::now() + timeout;
    let mut store = TaskStore::open(&wd.db_dir())?;
    let registered = remote(&wd, &mut store, node, &there(kind, Here::Register, j))?;
    let outcome_there = wait(&store, registered, deadline)?;
    if outcome_there.as_ref().map(|t| t.state) != Some(TaskState::Done) {
        let why = outcome(outcome_there.as_ref(), node);
        return take_back(&wd, &reg, kind, j, node, was_running, &why);
    }
    if was_running {
        let started = remote(&wd, &mut store, node, &there(kind, Here::Start, j))?;
        let outcome_there = wait(&store, started, deadline)?;
        if outcome_there.as_ref().map(|t| t.state) != Some(TaskState::Done) {
            let why = outcome(outcome_there.as_ref(), node);
            // Registered there but not running: bring it back.
            let back = remote(&wd, &mut store, node, &there(kind, Here::Unregister, j))?;
            let undone = wait(&store, back, Instant::now() + Duration::from_secs(30))?;
            if undone.map(|t| t.state) != Some(TaskState::Done) {
                return Err(MoveError::StrandedThere {
                    jname: j.clone(),
                    node: node.clone(),
                    why,
                }
                .into());
            }
            return take_back(&wd, &reg, kind, j, node, true, &why);
        }
    }
    Ok(Outcome::message(format!(
        "{j} moved to {node}{} in {} ms, zero data copied",
        if was_running {
            " and started there"
        } else {
            ""
        },
        t0.elapsed().as_millis()
    )))
}

/// What refuses `node` as the target of a move: this node, unknown here,
/// not seen alive; and no broker to reach it.
fn target_problems(
    wd: &Workdir,
    reg: &Registry,
    node: &Jname,
    lease_time: Duration,
) -> Result<Vec<String>> {
    let mut problems = Vec::new();
    if node.as_str() == wd.nodename() {
        problems.push(format!("{node} is this node"));
    } else {
        match reg.node(node)? {
            None => problems.push(format!(
                "node {node} is unknown here (add it with `ferry node mode=add node={node}`)"
            )),
            Some(_) if crate::ha::in_maintenance(wd, node.as_str()) => problems.push(format!(
                "node {node} is in maintenance (`node mode=restore` on it ends that)"
            )),
            Some(_) => match node::liveness(reg, node.as_str(), lease_time)? {
                Liveness::Alive => {}
                l => problems.push(format!(
                    "node {node} is {} (its heartbeat, as this node's daemon saw it)",
                    l.as_str()
                )),
            },
        }
    }
    if let Err(e) = rpc::required_uri(wd) {
        problems.push(e.to_string());
    }
    Ok(problems)
}

/// What a cold move does to the env, here or (as a command) there.
#[derive(Debug, Clone, Copy)]
enum Here {
    Stop,
    Start,
    Unregister,
    Register,
}

impl Here {
    /// Do it here, under the env's lock.
    fn run(self, wd: &Workdir, reg: &Registry, kind: EnvKind, j: &Jname) -> Result<()> {
        let _lock = EnvLock::acquire(wd, j)?;
        match self {
            Here::Stop => engines::of(kind).stop(wd, j),
            Here::Start => engines::of(kind).start(wd, reg, j, &StartOptions::default()),
            Here::Unregister => {
                register::unregister(wd, reg, j, kind, &ENGINES)?;
                register::sync_shared(wd);
                Ok(())
            }
            Here::Register => {
                let takeover = Takeover {
                    force: false,
                    lease_time: LEASE_TIME,
                    only_from: None,
                };
                register::register(wd, reg, j, kind, takeover, &ENGINES)?;
                register::sync_shared(wd);
                Ok(())
            }
        }
    }
}

/// The command that does `step` to env `j` of `kind` on another node.
fn there(kind: EnvKind, step: Here, j: &Jname) -> Command {
    let jname = NameSelector::One(j.clone());
    let given = Given::default();
    match (kind, step) {
        (EnvKind::Jail, Here::Register) => Command::Jregister(JregisterArgs {
            jname,
            force: false,
            lease_time: LEASE_TIME.as_secs(),
            given,
        }),
        (EnvKind::Vm, Here::Register) => Command::Bregister(BregisterArgs {
            jname,
            force: false,
            lease_time: LEASE_TIME.as_secs(),
            given,
        }),
        (EnvKind::Jail, Here::Start) => Command::Jstart(JstartArgs { jname, given }),
        (EnvKind::Vm, Here::Start) => Command::Bstart(BstartArgs {
            jname,
            checkpoint: None,
            given,
        }),
        (EnvKind::Jail, Here::Unregister) => Command::Junregister(JunregisterArgs { jname, given }),
        (EnvKind::Vm, Here::Unregister) => Command::Bunregister(BunregisterArgs { jname, given }),
        (EnvKind::Jail, Here::Stop) => Command::Jstop(JstopArgs { jname, given }),
        (EnvKind::Vm, Here::Stop) => Command::Bstop(BstopArgs { jname, given }),
    }
}

/// Queue `cmd` as a task for `node` and send it now.
pub(crate) fn remote(
    wd: &Workdir,
    store: &mut TaskStore,
    node: &Jname,
    cmd: &Command,
) -> Result<u64> {
    let id = store.submit(&NewTask {
        node: Some(node.to_string()),
        after: None,
        autoflush: Autoflush::Keep,
        retry: false,
        words: cmd.to_words(),
    })?;
    if let Err(e) = tasks::remote::send_now(wd, store) {
        tracing::warn!(task = id, error = %e, "left for the daemon to send");
    }
    Ok(id)
}

/// Wait until task `id` ended or `deadline` passed; the task as it is then
/// (`None` if its record is gone).
pub(crate) fn wait(store: &TaskStore, id: u64, deadline: Instant) -> Result<Option<TaskRow>> {
    loop {
        let row = store.get(id)?;
        if row.as_ref().is_none_or(|r| r.state.is_final()) || Instant::now() >= deadline {
            return Ok(row);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub(crate) fn outcome(t: Option<&TaskRow>, node: &Jname) -> String {
    match t {
        None => "its task record is gone".into(),
        Some(t) if !t.state.is_final() => format!(
            "no result from {node} in time (is the daemon running on both nodes?); task {}",
            t.id
        ),
        Some(t) => format!(
            "{} on {node}{}",
            t.state.as_str(),
            t.reason
                .as_deref()
                .map(|r| format!(": {r}"))
                .unwrap_or_default()
        ),
    }
}

/// The move failed there (`why`): register the jail here again, and start
/// it if it ran. The lease decides a race with a late registration there.
fn take_back(
    wd: &Workdir,
    reg: &Registry,
    kind: EnvKind,
    j: &Jname,
    node: &Jname,
    start: bool,
    why: &str,
) -> Result<Outcome> {
    Here::Register
        .run(wd, reg, kind, j)
        .map_err(|e| MoveError::NotBack {
            jname: j.clone(),
            node: node.clone(),
            why: why.to_owned(),
            cause: Box::new(e),
        })?;
    if start {
        Here::Start
            .run(wd, reg, kind, j)
            .map_err(|e| MoveError::BackStopped {
                jname: j.clone(),
                why: why.to_owned(),
                cause: Box::new(e),
            })?;
    }
    Err(MoveError::Back {
        jname: j.clone(),
        why: why.to_owned(),
        running: start,
    }
    .into())
}
